//! Activations quantized on the fly to 8-bit blocks of 32 (llama.cpp's
//! q8_0, plus q8_1's block sums), once per matmul and shared by all columns.

use crate::multiversion::multiversion;
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
        if let Some(b) = quantize_blocks(x, &mut self.q, &mut self.qu, &mut self.d, &mut self.s) {
            return Err(KernelError::BadActivations {
                reason: format!("non-finite value in row {}", b * QBLOCK / cols.max(1)),
            });
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

multiversion! {
    /// Quantizes every block of `x` into `q`, `qu`, `d`, `s` (sized by the
    /// caller); returns the first block holding a non-finite value.
    fn quantize_blocks(
        x: &[f32],
        q: &mut [i8],
        qu: &mut [u8],
        d: &mut [f32],
        s: &mut [f32],
    ) -> Option<usize> => quantize_body
}

#[inline(always)]
fn quantize_body(
    x: &[f32],
    q: &mut [i8],
    qu: &mut [u8],
    d: &mut [f32],
    s: &mut [f32],
) -> Option<usize> {
    // Fixed-size blocks: no bounds checks inside, so the loops vectorise.
    let blocks = x.as_chunks::<QBLOCK>().0.iter();
    let blocks = blocks
        .zip(q.as_chunks_mut::<QBLOCK>().0)
        .zip(qu.as_chunks_mut::<QBLOCK>().0)
        .zip(d.iter_mut().zip(s));
    for (b, (((xs, qs), us), (d, s))) in blocks.enumerate() {
        // |x| as bits: for non-negative floats the integer order is the
        // float order, infinities and NaN sort above every finite value, and
        // an integer maximum vectorises (its order does not matter).
        let amax = xs
            .iter()
            .map(|v| v.to_bits() & 0x7FFF_FFFF)
            .max()
            .unwrap_or(0);
        if amax >= f32::INFINITY.to_bits() {
            return Some(b);
        }
        let amax = f32::from_bits(amax);
        let scale = amax / 127.0;
        let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
        // Round to nearest, ties to even, by adding 1.5 * 2^23: for
        // |v| <= 2^22 the f32 sum keeps no fraction and its low mantissa
        // bits are the integer (the rounding the SIMD instructions do, and
        // `round_ties_even`), all in plain integer lanes that vectorise.
        // |x * inv| <= 127 up to rounding; the clamp keeps it exact.
        const MAGIC: f32 = 12_582_912.0;
        let mut sum = 0i32;
        for i in 0..QBLOCK {
            let r = ((xs[i] * inv + MAGIC).to_bits() as i32)
                .wrapping_sub(MAGIC.to_bits() as i32)
                .clamp(-127, 127);
            qs[i] = r as i8;
            us[i] = (r as u8) ^ 0x80;
            sum += r;
        }
        *d = scale;
        *s = scale * sum as f32;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The build for this CPU's best instruction set gives the portable
        /// build's bits.
        #[test]
        fn every_build_agrees(blocks in 1usize..6, seed in 0u32..10_000, big in 0f32..1e4) {
            let x: Vec<f32> = (0..blocks * QBLOCK)
                .map(|i| {
                    let n = (i as u32).wrapping_mul(2_654_435_761) ^ seed;
                    // Every fifth seed gives all-zero blocks.
                    if seed % 5 == 0 { 0.0 } else { (n % 2001) as f32 / 1000.0 * big - big }
                })
                .collect();
            let n = x.len();
            let mut a = (vec![0i8; n], vec![0u8; n], vec![0f32; blocks], vec![0f32; blocks]);
            let mut b = a.clone();
            proptest::prop_assert_eq!(quantize_blocks(&x, &mut a.0, &mut a.1, &mut a.2, &mut a.3), None);
            proptest::prop_assert_eq!(quantize_body(&x, &mut b.0, &mut b.1, &mut b.2, &mut b.3), None);
            proptest::prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn values_round_to_nearest_with_ties_to_even() {
        // A block whose maximum is 127 has scale 1, so x * inv is x itself:
        // halves are ties, and the signs are covered both ways.
        for start in [-127.0f32, -64.25, 0.5] {
            let mut x: Vec<f32> = (0..QBLOCK).map(|i| start + i as f32 * 0.5).collect();
            x[QBLOCK - 1] = 127.0;
            let mut rows = QuantizedRows::new();
            rows.quantize(&x, 1, QBLOCK).unwrap();
            assert_eq!(rows.d, [1.0]);
            let want: Vec<i8> = x.iter().map(|v| v.round_ties_even() as i8).collect();
            assert_eq!(rows.q, want);
            let sum: i32 = want.iter().map(|&v| i32::from(v)).sum();
            assert_eq!(rows.s, [sum as f32]);
            assert!(
                rows.qu
                    .iter()
                    .zip(&want)
                    .all(|(&u, &q)| u == (q as u8) ^ 0x80)
            );
        }
    }

    #[test]
    fn non_finite_values_are_refused_with_their_row() {
        let mut rows = QuantizedRows::new();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![1.0f32; 96];
            x[70] = bad;
            let err = rows.quantize(&x, 3, 32).unwrap_err();
            assert!(err.to_string().contains("row 2"), "{err}");
        }
        rows.quantize(&[0.0; 64], 2, 32).unwrap();
        assert_eq!(rows.d, [0.0, 0.0]);
    }
}
