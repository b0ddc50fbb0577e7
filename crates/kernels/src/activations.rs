//! Activations quantized on the fly to 8-bit blocks of 32 (llama.cpp's
//! q8_0, plus q8_1's block sums), once per matmul and shared by all columns.

use std::sync::{Mutex, PoisonError};

use crate::matmul::{ComputePool, Inline};
use crate::multiversion::multiversion;
use crate::{KernelError, Result};

/// Activation values per block.
pub(crate) const QBLOCK: usize = 32;

/// Rows from which [`QuantizedRows::quantize_on`] shares the work out over
/// the pool's threads. Below it the rows stay on the calling thread, which
/// wrote them and has them in its cache: on SmolLM2 at 4 and 8 rows the
/// other threads' cache misses and the wake-up cost more than they saved
/// (decode 0-8% slower), at 16 rows decode was 3-7% faster.
pub const PARALLEL_ROWS: usize = 12;

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
        self.quantize_on(x, rows, cols, &Inline)
    }

    /// [`QuantizedRows::quantize`] with the rows shared out over `pool`'s
    /// threads from [`PARALLEL_ROWS`] rows on (the same bits either way).
    ///
    /// # Errors
    /// As [`QuantizedRows::quantize`].
    pub fn quantize_on(
        &mut self,
        x: &[f32],
        rows: usize,
        cols: usize,
        pool: &dyn ComputePool,
    ) -> Result<()> {
        self.fill(Source::Plain(x), rows, cols, pool)
    }

    /// Quantizes `silu(gate) * up` (as [`silu_mul`](crate::silu_mul)
    /// computes it) for `rows` rows of `gate_up`, each `2 * cols` values:
    /// the gate, then the up projection. The gated feed-forward's hidden
    /// activations go straight to the down projection, never stored as f32;
    /// the rows are shared out over `pool`'s threads as in
    /// [`QuantizedRows::quantize_on`].
    ///
    /// # Errors
    /// As [`QuantizedRows::quantize`], with `gate_up.len()` against
    /// `rows * 2 * cols`.
    pub fn quantize_silu_gated(
        &mut self,
        gate_up: &[f32],
        rows: usize,
        cols: usize,
        pool: &dyn ComputePool,
    ) -> Result<()> {
        self.fill(Source::SiluGated(gate_up), rows, cols, pool)
    }

    /// Quantizes `rows` rows from `src` into this buffer.
    fn fill(
        &mut self,
        src: Source<'_>,
        rows: usize,
        cols: usize,
        pool: &dyn ComputePool,
    ) -> Result<()> {
        if !cols.is_multiple_of(QBLOCK) {
            return Err(KernelError::BadActivations {
                reason: format!("{cols} columns is not a multiple of {QBLOCK}"),
            });
        }
        let len = rows.saturating_mul(cols);
        let (given, want) = match src {
            Source::Plain(x) => (x.len(), len),
            Source::SiluGated(x) => (x.len(), len.saturating_mul(2)),
        };
        if given != want {
            return Err(KernelError::ShapeMismatch {
                expected: want,
                got: given,
            });
        }
        self.rows = rows;
        self.cols = cols;
        self.q.resize(len, 0);
        self.qu.resize(len, 0);
        self.d.resize(len / QBLOCK, 0.0);
        self.s.resize(len / QBLOCK, 0.0);
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let per_row = cols / QBLOCK;
        let src_width = given / rows;
        // A chunk of rows per trip to the shared queue, about two per thread
        // so a late thread is helped by the other.
        let threads = pool.threads().max(1);
        let chunk = rows.div_ceil(2 * threads).max(1);
        let chunks = src
            .values()
            .chunks(chunk * src_width)
            .zip(self.q.chunks_mut(chunk * cols))
            .zip(self.qu.chunks_mut(chunk * cols))
            .zip(
                self.d
                    .chunks_mut(chunk * per_row)
                    .zip(self.s.chunks_mut(chunk * per_row)),
            )
            .enumerate();
        let queue = Mutex::new(chunks);
        let bad = Mutex::new(None::<usize>);
        let job = |_t: usize| {
            loop {
                let Some((c, (((x, q), qu), (d, s)))) =
                    queue.lock().unwrap_or_else(PoisonError::into_inner).next()
                else {
                    break;
                };
                let found = match src {
                    Source::Plain(_) => quantize_blocks(x, q, qu, d, s),
                    Source::SiluGated(_) => quantize_silu_blocks(x, cols, q, qu, d, s),
                };
                if let Some(b) = found {
                    let row = c * chunk + b / per_row;
                    let mut first = bad.lock().unwrap_or_else(PoisonError::into_inner);
                    *first = Some(first.map_or(row, |r| r.min(row)));
                }
            }
        };
        if threads == 1 || rows < PARALLEL_ROWS {
            job(0);
        } else {
            pool.run(&job);
        }
        match bad.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some(row) => Err(KernelError::BadActivations {
                reason: format!("non-finite value in row {row}"),
            }),
            None => Ok(()),
        }
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

/// Where [`QuantizedRows::fill`] reads its values.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// The values themselves.
    Plain(&'a [f32]),
    /// Rows of a gate then an up projection, quantized as `silu(gate) * up`.
    SiluGated(&'a [f32]),
}

impl<'a> Source<'a> {
    fn values(self) -> &'a [f32] {
        match self {
            Self::Plain(x) | Self::SiluGated(x) => x,
        }
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

multiversion! {
    /// Quantizes `silu(gate) * up` for rows of `gate_up` (`2 * cols` values
    /// each, gate first) into `q`, `qu`, `d`, `s` (sized by the caller);
    /// returns the first block holding a non-finite value.
    fn quantize_silu_blocks(
        gate_up: &[f32],
        cols: usize,
        q: &mut [i8],
        qu: &mut [u8],
        d: &mut [f32],
        s: &mut [f32],
    ) -> Option<usize> => quantize_silu_body
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
        if !quantize_block(xs, qs, us, d, s) {
            return Some(b);
        }
    }
    None
}

#[inline(always)]
fn quantize_silu_body(
    gate_up: &[f32],
    cols: usize,
    q: &mut [i8],
    qu: &mut [u8],
    d: &mut [f32],
    s: &mut [f32],
) -> Option<usize> {
    let per_row = cols / QBLOCK;
    let rows = gate_up.chunks_exact(2 * cols);
    for (r, row) in rows.enumerate() {
        let (gate, up) = row.split_at(cols);
        let (gate, up) = (gate.as_chunks::<QBLOCK>().0, up.as_chunks::<QBLOCK>().0);
        let at = r * per_row;
        let out = q[at * QBLOCK..].as_chunks_mut::<QBLOCK>().0.iter_mut();
        let out = out.zip(qu[at * QBLOCK..].as_chunks_mut::<QBLOCK>().0);
        let out = out.zip(d[at..].iter_mut().zip(&mut s[at..]));
        for (b, ((g, u), ((qs, us), (d, s)))) in gate.iter().zip(up).zip(out).enumerate() {
            let mut xs = [0f32; QBLOCK];
            crate::elementwise::silu_mul_lanes(g, u, &mut xs);
            if !quantize_block(&xs, qs, us, d, s) {
                return Some(at + b);
            }
        }
    }
    None
}

/// Quantizes one block; `false` when it holds a non-finite value.
#[inline(always)]
fn quantize_block(
    xs: &[f32; QBLOCK],
    qs: &mut [i8; QBLOCK],
    us: &mut [u8; QBLOCK],
    d: &mut f32,
    s: &mut f32,
) -> bool {
    // |x| as bits: for non-negative floats the integer order is the
    // float order, infinities and NaN sort above every finite value, and
    // an integer maximum vectorises (its order does not matter).
    let amax = xs
        .iter()
        .map(|v| v.to_bits() & 0x7FFF_FFFF)
        .max()
        .unwrap_or(0);
    if amax >= f32::INFINITY.to_bits() {
        return false;
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
    true
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

    /// `n` scoped threads per call.
    struct Scoped(usize);

    impl ComputePool for Scoped {
        fn threads(&self) -> usize {
            self.0
        }

        fn run(&self, job: &(dyn Fn(usize) + Sync)) {
            std::thread::scope(|s| {
                for t in 0..self.0 {
                    s.spawn(move || job(t));
                }
            });
        }
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let n = (i as u32).wrapping_mul(2_654_435_761) ^ seed;
                (n % 4001) as f32 / 400.0 - 5.0
            })
            .collect()
    }

    fn parts(r: &QuantizedRows) -> (Vec<i8>, Vec<u8>, Vec<f32>, Vec<f32>) {
        (r.q.clone(), r.qu.clone(), r.d.clone(), r.s.clone())
    }

    #[test]
    fn rows_shared_over_threads_give_the_same_bits() {
        for rows in [1, PARALLEL_ROWS - 1, PARALLEL_ROWS, 17, 40] {
            for threads in [2, 3] {
                let x = values(rows * 96, rows as u32);
                let mut one = QuantizedRows::new();
                one.quantize(&x, rows, 96).unwrap();
                let mut many = QuantizedRows::new();
                many.quantize_on(&x, rows, 96, &Scoped(threads)).unwrap();
                assert_eq!(parts(&one), parts(&many), "{rows} rows, {threads} threads");
                assert_eq!((many.rows(), many.cols()), (rows, 96));
            }
        }
    }

    #[test]
    fn silu_gated_rows_are_silu_mul_then_quantize() {
        let cols = 64;
        for rows in [1, 3, PARALLEL_ROWS, 21] {
            let gate_up = values(rows * 2 * cols, 7 + rows as u32);
            let mut hidden = vec![0f32; rows * cols];
            for (gu, h) in gate_up
                .chunks_exact(2 * cols)
                .zip(hidden.chunks_exact_mut(cols))
            {
                let (g, u) = gu.split_at(cols);
                crate::silu_mul(g, u, h).unwrap();
            }
            let mut want = QuantizedRows::new();
            want.quantize(&hidden, rows, cols).unwrap();
            for pool in [&Inline as &dyn ComputePool, &Scoped(2)] {
                let mut got = QuantizedRows::new();
                got.quantize_silu_gated(&gate_up, rows, cols, pool).unwrap();
                assert_eq!(parts(&got), parts(&want), "{rows} rows");
            }
        }
        let mut rows = QuantizedRows::new();
        let err = rows
            .quantize_silu_gated(&[0.0; 100], 1, 64, &Inline)
            .unwrap_err();
        assert!(
            matches!(
                err,
                KernelError::ShapeMismatch {
                    expected: 128,
                    got: 100
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_non_finite_value_is_reported_with_its_row_from_any_thread() {
        let rows = 24;
        let mut x = values(rows * 64, 3);
        x[19 * 64 + 5] = f32::NAN;
        x[21 * 64] = f32::INFINITY;
        let mut q = QuantizedRows::new();
        let err = q.quantize_on(&x, rows, 64, &Scoped(2)).unwrap_err();
        assert!(err.to_string().contains("row 19"), "{err}");
        let mut gate_up = values(rows * 128, 4);
        gate_up[13 * 128 + 70] = f32::NEG_INFINITY;
        let err = q
            .quantize_silu_gated(&gate_up, rows, 64, &Scoped(2))
            .unwrap_err();
        assert!(err.to_string().contains("row 13"), "{err}");
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
