//! Arbitrary bytes as a GGUF tensor's blocks: repacking, dequantizing and
//! multiplying must give typed errors or finite-or-not numbers, never a
//! panic or an out-of-bounds read, on every format and path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_kernels::{Inline, Isa, PackedMatrix, QuantFormat, QuantizedRows, dequantize, matmul_with};

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let format = QuantFormat::ALL[usize::from(head) % QuantFormat::ALL.len()];
    let rows = usize::from(head >> 4) + 1;
    let mut out = Vec::new();
    let _ = dequantize(format, rest, &mut out);
    let cols = format.block_len() * (1 + usize::from(head >> 3 & 1));
    let Ok(w) = PackedMatrix::from_gguf(format, rows, cols, rest) else {
        return;
    };
    let x: Vec<f32> = (0..2 * cols).map(|i| (i % 7) as f32 - 3.0).collect();
    let mut q = QuantizedRows::new();
    if q.quantize(&x, 2, cols).is_err() {
        return;
    }
    let mut y = vec![0f32; 2 * rows];
    for isa in Isa::available() {
        let _ = matmul_with(isa, &w, &q, &mut y, &Inline);
    }
});
