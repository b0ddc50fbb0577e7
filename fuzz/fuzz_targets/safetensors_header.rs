//! Arbitrary bytes as a `.safetensors` file, read the way our loaders read one:
//! the header parsed by `safetensors`, then every tensor turned into a candle
//! tensor (what `VarBuilder::from_mmaped_safetensors` does per tensor).
//! Any input must give `Ok` or `Err`, never a panic or an overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tensors) = safetensors::SafeTensors::deserialize(data) else {
        return;
    };
    for (_name, view) in tensors.tensors() {
        let _ = candle_core::safetensors::Load::load(&view, &candle_core::Device::Cpu);
    }
});
