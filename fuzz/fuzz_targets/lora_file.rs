//! LoRA parsing: arbitrary bytes as a safetensors file, and arbitrary key
//! names over small tensors, give an adapter or a typed error, never a
//! panic; what parses is consistent.
#![no_main]

use candle_core::{Device, Tensor};
use libfuzzer_sys::fuzz_target;
use switchyard_diffusion::{Lora, LoraComponent};

fuzz_target!(|data: &[u8]| {
    let parsed = match data.split_first() {
        // Keys mode: one key per line, each over a tensor whose shape comes
        // from the key's length, so pairs may or may not line up.
        Some((0, rest)) => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let tensors = text.lines().take(64).filter_map(|key| {
                let (a, b) = (key.len() % 4 + 1, key.len() % 3 + 1);
                Tensor::ones((a, b), candle_core::DType::F32, &Device::Cpu)
                    .ok()
                    .map(|t| (key.to_string(), t))
            });
            Lora::from_tensors("fuzz", tensors.collect::<Vec<_>>())
        }
        _ => Lora::from_bytes("fuzz", data),
    };
    if let Ok(lora) = parsed {
        assert_eq!(
            lora.count(LoraComponent::Unet) + lora.count(LoraComponent::TextEncoder),
            lora.len()
        );
        assert!(lora.unknown_keys().windows(2).all(|w| w[0] <= w[1]));
    }
});
