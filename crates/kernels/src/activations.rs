//! Activations quantized on the fly to 8-bit blocks of 32 (llama.cpp's
//! q8_0, plus q8_1's block sums), once per matmul and shared by all columns.

use crate::{KernelError, Result};

/// Activation values per block.
pub(crate) const QBLOCK: usize = 32;

/// `m` rows of `k` activations as signed 8-bit blocks of 32, each with a
/// scale `d` (`x ~ d * q`, `|q| <= 127`) and `s = d * sum(q)`.
///
/// An unsigned copy (`q + 128`) is kept too: the VNNI instruction multiplies
/// unsigned by signed bytes, and 8-bit weights are the signed side.
#[derive(Debug, Clone, Default)]
pub struct QuantizedRows {
    rows: usize,
    cols: usize,
    pub(crate) q: Vec<i8>,
    pub(crate) qu: Vec<u8>,
    pub(crate) d: Vec<f32>,
    pub(crate) s: Vec<f32>,
}

impl QuantizedRows {
    /// An empty buffer, to be filled by [`QuantizedRows::quantize`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantizes `x` (`rows` x `cols`, row-major) into this buffer, reusing
    /// its allocations.
    ///
    /// # Errors
    /// [`KernelError::ShapeMismatch`] when `x.len() != rows * cols`;
    /// [`KernelError::BadActivations`] when `cols` is not a multiple of 32
    /// or a value is not finite.
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize) -> Result<()> {
        if !cols.is_multiple_of(QBLOCK) {
            return Err(KernelError::BadActivations {
                reason: format!("{cols} columns is not a multiple of {QBLOCK}"),
            });
        }
        let len = rows.saturating_mul(cols);
        if x.len() != len {
            return Err(KernelError::ShapeMismatch {
                expected: len,
                got: x.len(),
            });
        }
        let blocks = len / QBLOCK;
        self.rows = rows;
        self.cols = cols;
        self.q.resize(len, 0);
        self.qu.resize(len, 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        let chunks = x.chunks_exact(QBLOCK).zip(self.q.chunks_exact_mut(QBLOCK));
        let chunks = chunks.zip(self.qu.chunks_exact_mut(QBLOCK));
        for (b, ((xs, qs), us)) in chunks.enumerate() {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            if !amax.is_finite() || xs.iter().any(|v| v.is_nan()) {
                return Err(KernelError::BadActivations {
                    reason: format!("non-finite value in row {}", b * QBLOCK / cols.max(1)),
                });
            }
            let d = amax / 127.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            let mut sum = 0i32;
            for ((x, q), u) in xs.iter().zip(qs.iter_mut()).zip(us.iter_mut()) {
                // |x * inv| <= 127 (up to rounding), so the cast cannot wrap.
                let v = (x * inv).round().clamp(-127.0, 127.0) as i8;
                *q = v;
                *u = (v as u8) ^ 0x80;
                sum += i32::from(v);
            }
            self.d[b] = d;
            self.s[b] = d * sum as f32;
        }
        Ok(())
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Activations per row.
    pub fn cols(&self) -> usize {
        self.cols
    }
}
