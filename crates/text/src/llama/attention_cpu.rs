//! Causal attention on the CPU in f32 over plain slices: one sequence's few
//! new queries against its gathered keys and values. For decode it replaces
//! a dozen candle ops per layer (transposes, two matmuls, scale, mask,
//! softmax) whose fixed costs dominate; long prefills keep candle's
//! threaded matmuls (see [`FEW_QUERIES`]).

use parking_lot::Mutex;
use switchyard_kernels::ComputePool;

use crate::CandleComputePool;

/// Most query rows a sequence may have to take this path.
pub(crate) const FEW_QUERIES: usize = 4;

/// The shape of one sequence's attention.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnShape {
    /// New tokens (query rows).
    pub(crate) len: usize,
    /// Cached positions including the new ones.
    pub(crate) end: usize,
    /// Query heads.
    pub(crate) heads: usize,
    /// Key/value heads (each shared by `heads / kv_heads` query heads).
    pub(crate) kv_heads: usize,
    /// Values per head.
    pub(crate) head_dim: usize,
}

/// Dot product with eight independent partial sums (vectorises).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Where a sequence's keys and values are: `k` and `v` are whole cache
/// tensors (`[slots, kv_heads * head_dim]`) and position `t` of the
/// sequence is row `slots[t]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KvView<'a> {
    pub(crate) k: &'a [f32],
    pub(crate) v: &'a [f32],
    pub(crate) slots: &'a [u32],
}

/// Head `h` of query row `i` into `out` (`head_dim`).
fn head(
    s: &AttnShape,
    (i, h): (usize, usize),
    q: &[f32],
    kv: &KvView<'_>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd, kvh) = (s.head_dim, s.kv_heads);
    let kh = h / (s.heads / kvh);
    let at = |t: usize| (kv.slots[t] as usize * kvh + kh) * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    // Query i sits at position end - len + i and sees positions up to it.
    let visible = s.end - s.len + i + 1;
    scores.resize(visible, 0.0);
    let qh = &q[(i * s.heads + h) * hd..][..hd];
    let mut max = f32::NEG_INFINITY;
    for (t, score) in scores.iter_mut().enumerate() {
        *score = dot(qh, &kv.k[at(t)..][..hd]) * scale;
        max = max.max(*score);
    }
    let mut sum = 0.0;
    for score in scores.iter_mut() {
        *score = (*score - max).exp();
        sum += *score;
    }
    out.fill(0.0);
    for (t, &e) in scores.iter().enumerate() {
        let p = e / sum;
        for (o, &x) in out.iter_mut().zip(&kv.v[at(t)..][..hd]) {
            *o += p * x;
        }
    }
}

/// Below this many (head, position) pairs the heads run on the calling
/// thread: waking the pool costs more than it saves.
const PARALLEL_FROM: usize = 2048;

/// Attention of `q` (`[len, heads, head_dim]`) over the `end` cached
/// positions in `kv`, causal; returns `[len, heads * head_dim]`. Long
/// contexts split the (row, head) pairs over candle's threads.
///
/// # Panics
/// When `kv.slots` has fewer than `end` entries or names rows past the
/// cache's end (callers pass the slots they just wrote).
pub(crate) fn attend(s: &AttnShape, q: &[f32], kv: &KvView<'_>) -> Vec<f32> {
    let mut out = vec![0f32; s.len * s.heads * s.head_dim];
    let pair = |n: usize| (n / s.heads, n % s.heads);
    if s.heads * s.end * s.len < PARALLEL_FROM {
        let mut scores = Vec::new();
        for (n, o) in out.chunks_mut(s.head_dim).enumerate() {
            head(s, pair(n), q, kv, &mut scores, o);
        }
        return out;
    }
    let heads = Mutex::new(out.chunks_mut(s.head_dim).enumerate());
    CandleComputePool.run(&|_| {
        let mut scores = Vec::new();
        loop {
            let Some((n, o)) = heads.lock().next() else {
                break;
            };
            head(s, pair(n), q, kv, &mut scores, o);
        }
    });
    // The chunks borrow `out`; ending the lock's life hands it back.
    let _ = heads.into_inner();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook formula in f64.
    fn reference(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
        let (hd, group) = (s.head_dim, s.heads / s.kv_heads);
        let mut out = vec![0f64; s.len * s.heads * hd];
        for i in 0..s.len {
            for h in 0..s.heads {
                let kh = h / group;
                let visible = s.end - s.len + i + 1;
                let scores: Vec<f64> = (0..visible)
                    .map(|t| {
                        (0..hd)
                            .map(|d| {
                                f64::from(q[(i * s.heads + h) * hd + d])
                                    * f64::from(k[(t * s.kv_heads + kh) * hd + d])
                            })
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                for (t, sc) in scores.iter().enumerate() {
                    let p = (sc - max).exp() / sum;
                    for d in 0..hd {
                        out[(i * s.heads + h) * hd + d] +=
                            p * f64::from(v[(t * s.kv_heads + kh) * hd + d]);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_formula_with_grouped_heads_and_causal_rows() {
        let noise = |n: usize, seed: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
                .collect()
        };
        // The last two are long enough to split over the pool.
        for (len, end) in [(1, 1), (1, 37), (3, 3), (4, 21), (1, 400), (2, 300)] {
            let s = AttnShape {
                len,
                end,
                heads: 6,
                kv_heads: 2,
                head_dim: 20,
            };
            let q = noise(len * 6 * 20, 1);
            let k = noise(end * 2 * 20, 2);
            let v = noise(end * 2 * 20, 3);
            // Positions stored in reverse slot order, as blocks can be.
            let slots: Vec<u32> = (0..end as u32).rev().collect();
            let (mut ks, mut vs) = (vec![0f32; k.len()], vec![0f32; v.len()]);
            let row = 2 * 20;
            for (t, &slot) in slots.iter().enumerate() {
                let (from, to) = (t * row, slot as usize * row);
                ks[to..to + row].copy_from_slice(&k[from..from + row]);
                vs[to..to + row].copy_from_slice(&v[from..from + row]);
            }
            let got = attend(
                &s,
                &q,
                &KvView {
                    k: &ks,
                    v: &vs,
                    slots: &slots,
                },
            );
            let want = reference(&s, &q, &k, &v);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (f64::from(*a) - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-5, "len {len} end {end}: {worst}");
        }
    }
}
