//! Causal attention on the CPU in f32 over plain slices: a step's new
//! queries, of any number of sequences, against their keys and values where
//! the cache keeps them, through switchyard-kernels' vectorised attention.
//! The host forward runs every step through it; the candle forward uses it
//! for decode-sized steps (see [`FEW_QUERIES`]), where it replaces a dozen
//! candle ops per layer.

use parking_lot::Mutex;
use switchyard_kernels::attention::{self, CachedKv, HeadQuery, KvElement};
use switchyard_kernels::{ComputePool, KernelError};

use super::kv_cache::HostLayer;
use crate::CandleComputePool;

/// Most query rows a sequence may have to take this path in the candle
/// forward (longer prefills there keep candle's threaded matmuls).
pub(crate) const FEW_QUERIES: usize = 4;

/// The model's attention heads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    /// Query heads.
    pub(crate) heads: usize,
    /// Key/value heads (each shared by `heads / kv_heads` query heads).
    pub(crate) kv_heads: usize,
    /// Values per head.
    pub(crate) head_dim: usize,
}

/// One sequence's queries in a step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeqQueries<'a> {
    /// Its first row among the step's queries.
    pub(crate) row: usize,
    /// Its new tokens (rows).
    pub(crate) len: usize,
    /// Cache slots of its positions `0..start + len`, in order.
    pub(crate) slots: &'a [u32],
}

/// Whole key and value storage of one layer, `[slots, kv_heads *
/// head_dim]` each, row-major, stored as `T`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerKv<'a, T = f32> {
    pub(crate) k: &'a [T],
    pub(crate) v: &'a [T],
}

/// One call of the kernel: query heads `first..first + count` of step row
/// `row`, which sees `visible` positions of `slots`.
#[derive(Debug, Clone, Copy)]
struct Unit<'a> {
    row: usize,
    first: usize,
    visible: usize,
    slots: &'a [u32],
}

/// Below this many (head, position) pairs in a step the work runs on the
/// calling thread: waking the pool costs more than it saves.
const PARALLEL_FROM: usize = 2048;

/// [`attend_step_into`] over a host cache layer of either element type.
pub(crate) fn attend_host(
    h: &Heads,
    q: &[f32],
    seqs: &[SeqQueries<'_>],
    kv: HostLayer<'_>,
) -> Result<Vec<f32>, KernelError> {
    let mut out = Vec::new();
    attend_host_into(h, q, seqs, kv, &mut out)?;
    Ok(out)
}

/// [`attend_host`] into `out`, resized to `[rows, heads * head_dim]` and
/// every value written (a buffer of the right length is not cleared).
pub(crate) fn attend_host_into(
    h: &Heads,
    q: &[f32],
    seqs: &[SeqQueries<'_>],
    kv: HostLayer<'_>,
    out: &mut Vec<f32>,
) -> Result<(), KernelError> {
    match kv {
        HostLayer::F32(kv) => attend_step_into(h, q, seqs, &kv, out),
        HostLayer::F16(kv) => attend_step_into(h, q, seqs, &kv, out),
    }
}

/// [`attend_step_into`] into a new vector.
#[cfg(test)]
pub(crate) fn attend_step<T: KvElement>(
    h: &Heads,
    q: &[f32],
    seqs: &[SeqQueries<'_>],
    kv: &LayerKv<'_, T>,
) -> Result<Vec<f32>, KernelError> {
    let mut out = Vec::new();
    attend_step_into(h, q, seqs, kv, &mut out)?;
    Ok(out)
}

/// Attention of every sequence's queries in `q` (`[rows, heads,
/// head_dim]`) over its cached positions in `kv`, causal, into `out`
/// (resized to `[rows, heads * head_dim]`, every value written). Work is
/// cut into (row, key/value head) units, each reading its cached rows once
/// for the query heads that share them; large steps spread the units over
/// candle's threads, cut into single heads when there are too few units to
/// keep the pool busy. (Either cut gives a head the same bits.)
///
/// # Errors
/// When a sequence's slots are fewer than its rows or name rows past the
/// cache's end.
fn attend_step_into<T: KvElement>(
    h: &Heads,
    q: &[f32],
    seqs: &[SeqQueries<'_>],
    kv: &LayerKv<'_, T>,
    out: &mut Vec<f32>,
) -> Result<(), KernelError> {
    let hd = h.head_dim;
    let rows: usize = seqs.iter().map(|s| s.len).sum();
    out.resize(rows * h.heads * hd, 0.0);
    if q.len() != out.len() {
        return Err(KernelError::BadAttention {
            reason: format!("{} query values for {rows} rows", q.len()),
        });
    }
    let mut pairs = 0;
    for s in seqs {
        if s.len > s.slots.len() {
            return Err(KernelError::BadAttention {
                reason: format!("{} rows with {} slots", s.len, s.slots.len()),
            });
        }
        // Row i sits at position end - len + i and sees up to it.
        let seen = s.slots.len() - s.len;
        pairs += h.heads * (s.len * seen + s.len * (s.len + 1) / 2);
    }
    let group = h.heads / h.kv_heads.max(1);
    // Heads one at a time only where that is what keeps a pool busy.
    let width = if rows * h.kv_heads >= 8 || pairs < PARALLEL_FROM {
        group
    } else {
        1
    };
    let mut units = Vec::with_capacity(rows * h.heads / width);
    for s in seqs {
        for i in 0..s.len {
            let visible = s.slots.len() - s.len + i + 1;
            units.extend((0..h.heads).step_by(width).map(|first| Unit {
                row: s.row + i,
                first,
                visible,
                slots: s.slots,
            }));
        }
    }
    let run = |u: &Unit<'_>, scores: &mut Vec<f32>, o: &mut [f32]| {
        let query = HeadQuery {
            q: &q[(u.row * h.heads + u.first) * hd..(u.row * h.heads + u.first + width) * hd],
            head_dim: hd,
            kv_offset: u.first / group * hd,
            visible: u.visible,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let cached = CachedKv {
            keys: kv.k,
            values: kv.v,
            stride: h.kv_heads * hd,
            slots: u.slots,
        };
        attention::attend(&query, &cached, scores, o)
    };
    if pairs < PARALLEL_FROM {
        let mut scores = Vec::new();
        for (u, o) in units.iter().zip(out.chunks_mut(width * hd)) {
            run(u, &mut scores, o)?;
        }
        return Ok(());
    }
    let work = Mutex::new(units.iter().zip(out.chunks_mut(width * hd)));
    let failure = Mutex::new(None);
    CandleComputePool.run(&|_| {
        let mut scores = Vec::new();
        loop {
            let Some((u, o)) = work.lock().next() else {
                break;
            };
            if let Err(e) = run(u, &mut scores, o) {
                *failure.lock() = Some(e);
            }
        }
    });
    // The chunks borrow `out`; ending the lock's life hands it back.
    let _ = work.into_inner();
    match failure.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Heads = Heads {
        heads: 6,
        kv_heads: 2,
        head_dim: 20,
    };

    /// The textbook formula in f64 for one sequence of `len` new rows over
    /// `end` positions, keys and values in position order.
    fn reference(len: usize, end: usize, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
        let (hd, group) = (H.head_dim, H.heads / H.kv_heads);
        let mut out = vec![0f64; len * H.heads * hd];
        for i in 0..len {
            for h in 0..H.heads {
                let kh = h / group;
                let visible = end - len + i + 1;
                let scores: Vec<f64> = (0..visible)
                    .map(|t| {
                        (0..hd)
                            .map(|d| {
                                f64::from(q[(i * H.heads + h) * hd + d])
                                    * f64::from(k[(t * H.kv_heads + kh) * hd + d])
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
                        out[(i * H.heads + h) * hd + d] +=
                            p * f64::from(v[(t * H.kv_heads + kh) * hd + d]);
                    }
                }
            }
        }
        out
    }

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Several sequences in one step, each stored in its own slots in
    /// reverse order (as blocks can be), sequence `n`'s values drawn from
    /// seeds `10 n + 1..=3`: the step's outputs and the formula's.
    fn run(step: &[(usize, usize)]) -> (Vec<f32>, Vec<f64>) {
        let row = H.kv_heads * H.head_dim;
        let stored: usize = step.iter().map(|&(_, end)| end).sum();
        let (mut ks, mut vs) = (vec![0f32; stored * row], vec![0f32; stored * row]);
        let (mut q, mut slots, mut wants) = (Vec::new(), Vec::new(), Vec::new());
        let mut base = 0;
        for (n, &(len, end)) in step.iter().enumerate() {
            let seed = 10 * n as u32;
            let sq = noise(len * H.heads * H.head_dim, seed + 1);
            let k = noise(end * row, seed + 2);
            let v = noise(end * row, seed + 3);
            let own: Vec<u32> = (base..base + end as u32).rev().collect();
            for (t, &slot) in own.iter().enumerate() {
                let (from, to) = (t * row, slot as usize * row);
                ks[to..to + row].copy_from_slice(&k[from..from + row]);
                vs[to..to + row].copy_from_slice(&v[from..from + row]);
            }
            wants.extend(reference(len, end, &sq, &k, &v));
            q.extend(sq);
            slots.push(own);
            base += end as u32;
        }
        let mut row_at = 0;
        let seqs: Vec<SeqQueries<'_>> = step
            .iter()
            .zip(&slots)
            .map(|(&(len, _), own)| {
                row_at += len;
                SeqQueries {
                    row: row_at - len,
                    len,
                    slots: own,
                }
            })
            .collect();
        let kv = LayerKv { k: &ks, v: &vs };
        (attend_step(&H, &q, &seqs, &kv).unwrap(), wants)
    }

    /// [`run`] against the formula.
    fn check(step: &[(usize, usize)]) {
        let (got, wants) = run(step);
        let worst = got
            .iter()
            .zip(&wants)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "{step:?}: {worst}");
    }

    #[test]
    fn a_sequence_gets_the_same_bits_alone_and_in_a_batch() {
        // Alone, 400 positions cut into single heads on the pool, 37 into
        // key/value heads on the caller; batched, key/value-head units.
        for first in [(1, 400), (1, 37), (2, 300)] {
            let (alone, _) = run(&[first]);
            let (batched, _) = run(&[first, (1, 5), (1, 9), (2, 20)]);
            assert_eq!(alone, batched[..alone.len()], "{first:?}");
        }
    }

    #[test]
    fn matches_the_formula_with_grouped_heads_and_causal_rows() {
        // One sequence: key/value-head units on the caller, single heads on
        // the pool.
        for one in [(1, 1), (1, 37), (3, 3), (1, 400), (2, 300)] {
            check(&[one]);
        }
        // Several: key/value-head units, serial and pooled, prefill mixed
        // with decode.
        check(&[(1, 5), (4, 21), (1, 9)]);
        check(&[(1, 300), (1, 2), (3, 250), (1, 120)]);
    }

    #[test]
    fn short_slots_and_bad_queries_are_errors() {
        let kv = LayerKv {
            k: &[0.0; 80],
            v: &[0.0; 80],
        };
        let q = vec![0f32; 2 * 6 * 20];
        let seq = SeqQueries {
            row: 0,
            len: 2,
            slots: &[0],
        };
        assert!(attend_step(&H, &q, &[seq], &kv).is_err());
        let far = SeqQueries {
            row: 0,
            len: 2,
            slots: &[0, 9],
        };
        assert!(attend_step(&H, &q, &[far], &kv).is_err());
        assert!(attend_step(&H, &q[1..], &[far], &kv).is_err());
    }
}
