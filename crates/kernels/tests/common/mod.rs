//! Random GGUF blocks and candle's dequantization, the independent reference.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use proptest::prelude::*;
use switchyard_kernels::QuantFormat;

/// Where a format's f16 scales sit in its block.
fn scale_offsets(format: QuantFormat) -> &'static [usize] {
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q5_0 | QuantFormat::Q8_0 => &[0],
        QuantFormat::Q6K => &[208],
        _ => &[0, 2],
    }
}

/// candle's name for a format.
pub fn ggml(format: QuantFormat) -> GgmlDType {
    match format {
        QuantFormat::Q4_0 => GgmlDType::Q4_0,
        QuantFormat::Q4_1 => GgmlDType::Q4_1,
        QuantFormat::Q5_0 => GgmlDType::Q5_0,
        QuantFormat::Q5_1 => GgmlDType::Q5_1,
        QuantFormat::Q8_0 => GgmlDType::Q8_0,
        QuantFormat::Q4K => GgmlDType::Q4K,
        QuantFormat::Q5K => GgmlDType::Q5K,
        QuantFormat::Q6K => GgmlDType::Q6K,
        other => panic!("no candle type for {other}"),
    }
}

/// `blocks` random blocks of `format`: random bytes with finite f16 scales
/// of magnitude up to 0.05 (either sign).
pub fn random_blocks(format: QuantFormat, blocks: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut data: Vec<u8> = (0..blocks * format.block_bytes())
        .map(|_| next() as u8)
        .collect();
    for block in data.chunks_exact_mut(format.block_bytes()) {
        for &at in scale_offsets(format) {
            let v = ((next() % 2001) as f32 - 1000.0) / 20000.0;
            block[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    data
}

/// `len` random activations in [-2, 2) with a few larger outliers.
pub fn random_activations(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_add(0x1234_5678) | 1;
    (0..len)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let v = (state % 40_000) as f32 / 10_000.0 - 2.0;
            if i % 37 == 5 { v * 8.0 } else { v }
        })
        .collect()
}

/// candle's dequantization of `rows x cols` weights.
pub fn candle_dequantize(format: QuantFormat, rows: usize, cols: usize, data: &[u8]) -> Vec<f32> {
    let storage =
        QStorage::from_data(Cow::Borrowed(data), &Device::Cpu, ggml(format)).expect("storage");
    let t = QTensor::new(storage, (rows, cols)).expect("qtensor");
    let d: Tensor = t.dequantize(&Device::Cpu).expect("dequantize");
    d.flatten_all()
        .expect("flatten")
        .to_vec1::<f32>()
        .expect("to_vec1")
}

/// Strategy: one of the formats.
pub fn any_format() -> impl Strategy<Value = QuantFormat> {
    prop::sample::select(QuantFormat::ALL.to_vec())
}
