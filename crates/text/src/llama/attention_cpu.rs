//! Causal attention on the CPU in f32 over plain slices: one sequence's new
//! queries against its keys and values where the cache keeps them, through
//! switchyard-kernels' vectorised attention. The host forward runs every
//! step through it; the candle forward uses it for decode-sized steps (see
//! [`FEW_QUERIES`]), where it replaces a dozen candle ops per layer.

use parking_lot::Mutex;
use switchyard_kernels::attention::{self, CachedKv, HeadQuery};
use switchyard_kernels::{ComputePool, KernelError};

use crate::CandleComputePool;

/// Most query rows a sequence may have to take this path in the candle
/// forward (longer prefills there keep candle's threaded matmuls).
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

/// Where a sequence's keys and values are: `k` and `v` are whole cache
/// tensors (`[slots, kv_heads * head_dim]`) and position `t` of the
/// sequence is row `slots[t]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KvView<'a> {
    pub(crate) k: &'a [f32],
    pub(crate) v: &'a [f32],
    pub(crate) slots: &'a [u32],
}

/// Query heads `heads` of row `i` into `out` (`heads.len() * head_dim`);
/// the heads share one key/value head.
fn heads(
    s: &AttnShape,
    (i, heads): (usize, std::ops::Range<usize>),
    q: &[f32],
    kv: &KvView<'_>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let hd = s.head_dim;
    let kh = heads.start / (s.heads / s.kv_heads);
    let query = HeadQuery {
        q: &q[(i * s.heads + heads.start) * hd..(i * s.heads + heads.end) * hd],
        head_dim: hd,
        kv_offset: kh * hd,
        // Query i sits at position end - len + i and sees positions up to it.
        visible: s.end - s.len + i + 1,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let cached = CachedKv {
        keys: kv.k,
        values: kv.v,
        stride: s.kv_heads * hd,
        slots: kv.slots,
    };
    attention::attend(&query, &cached, scores, out)
}

/// Below this many (head, position) pairs the heads run on the calling
/// thread: waking the pool costs more than it saves.
const PARALLEL_FROM: usize = 2048;

/// Attention of `q` (`[len, heads, head_dim]`) over the `end` cached
/// positions in `kv`, causal; returns `[len, heads * head_dim]`. Short
/// contexts take the query heads of a key/value head together (each cached
/// row read once for the group); long ones split single heads over candle's
/// threads.
///
/// # Errors
/// When `kv.slots` has fewer than `end` entries or names rows past the
/// cache's end.
pub(crate) fn attend(s: &AttnShape, q: &[f32], kv: &KvView<'_>) -> Result<Vec<f32>, KernelError> {
    let hd = s.head_dim;
    let mut out = vec![0f32; s.len * s.heads * hd];
    if s.heads * s.end * s.len < PARALLEL_FROM {
        let group = s.heads / s.kv_heads;
        let mut scores = Vec::new();
        for (n, o) in out.chunks_mut(group * hd).enumerate() {
            let (i, kh) = (n / s.kv_heads, n % s.kv_heads);
            heads(s, (i, kh * group..(kh + 1) * group), q, kv, &mut scores, o)?;
        }
        return Ok(out);
    }
    let pairs = Mutex::new(out.chunks_mut(hd).enumerate());
    let failure = Mutex::new(None);
    CandleComputePool.run(&|_| {
        let mut scores = Vec::new();
        loop {
            let Some((n, o)) = pairs.lock().next() else {
                break;
            };
            let (i, h) = (n / s.heads, n % s.heads);
            if let Err(e) = heads(s, (i, h..h + 1), q, kv, &mut scores, o) {
                *failure.lock() = Some(e);
            }
        }
    });
    // The chunks borrow `out`; ending the lock's life hands it back.
    let _ = pairs.into_inner();
    match failure.into_inner() {
        Some(e) => Err(e),
        None => Ok(out),
    }
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
            )
            .unwrap();
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
