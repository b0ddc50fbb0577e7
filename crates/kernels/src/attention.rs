//! f32 attention of a few query rows over cached keys and values: the inner
//! loop of decoding, vectorised for the CPU at run time.
//!
//! The keys and values stay where the cache keeps them (one row per slot,
//! any order), several query heads that share a key/value head read each
//! cached row once, and the exponential is a polynomial the compiler can
//! vectorise (within 4 ulp of `f32::exp` over softmax's range).

use crate::{KernelError, Result};

/// Accumulator lanes: fixed, so every instruction set adds in one order.
const LANES: usize = 16;

/// Where one sequence's cached keys and values are.
#[derive(Debug, Clone, Copy)]
pub struct CachedKv<'a> {
    /// Key storage: `stride` values per slot.
    pub keys: &'a [f32],
    /// Value storage, laid out as `keys`.
    pub values: &'a [f32],
    /// Values per slot (all key/value heads of one position).
    pub stride: usize,
    /// The slot of each position of the sequence, in order.
    pub slots: &'a [u32],
}

/// Query heads that share one key/value head, at one position.
#[derive(Debug, Clone, Copy)]
pub struct HeadQuery<'a> {
    /// The heads' queries, `heads x head_dim`.
    pub q: &'a [f32],
    /// Values per head.
    pub head_dim: usize,
    /// Where the shared key/value head starts within a slot.
    pub kv_offset: usize,
    /// Positions `0..visible` are attended (causal: up to the query's own).
    pub visible: usize,
    /// Factor on the scores, usually `1 / sqrt(head_dim)`.
    pub scale: f32,
}

fn bad(reason: String) -> KernelError {
    KernelError::BadAttention { reason }
}

/// `out[h] = sum_t softmax_t(scale * q[h] . k_t) * v_t` over the first
/// `visible` positions, for every head `h` of `query`; `scores` is scratch
/// space reused across calls.
///
/// # Errors
/// [`KernelError::BadAttention`] when the shapes disagree, `visible` is 0 or
/// past the slots, or a slot lies outside the storage.
pub fn attend(
    query: &HeadQuery<'_>,
    kv: &CachedKv<'_>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<()> {
    let hd = query.head_dim;
    if hd == 0 || !query.q.len().is_multiple_of(hd) || out.len() != query.q.len() {
        return Err(bad(format!(
            "{} query and {} output values for heads of {hd}",
            query.q.len(),
            out.len()
        )));
    }
    if query.visible == 0 || query.visible > kv.slots.len() {
        return Err(bad(format!(
            "{} visible positions of {}",
            query.visible,
            kv.slots.len()
        )));
    }
    if query.kv_offset + hd > kv.stride {
        return Err(bad(format!(
            "head at {} + {hd} past a slot of {}",
            query.kv_offset, kv.stride
        )));
    }
    let rows = kv.keys.len().min(kv.values.len()) / kv.stride.max(1);
    if let Some(s) = kv.slots[..query.visible]
        .iter()
        .find(|&&s| s as usize >= rows)
    {
        return Err(bad(format!("slot {s} is outside the {rows} stored")));
    }
    attend_checked(query, kv, scores, out);
    Ok(())
}

/// A dot product of f32 slices over `LANES` partial sums (lane `l` adds
/// the products at `l, l + LANES, ...` in order), reduced by halving, then
/// the tail: every implementation gives the same bits.
trait Dot {
    fn dot(a: &[f32], b: &[f32]) -> f32;
}

/// Plain Rust.
struct Portable;

impl Dot for Portable {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let (ca, ta) = a.as_chunks::<LANES>();
        let (cb, tb) = b.as_chunks::<LANES>();
        for (x, y) in ca.iter().zip(cb) {
            for l in 0..LANES {
                acc[l] += x[l] * y[l];
            }
        }
        horizontal_sum(acc) + tail_dot(ta, tb)
    }
}

#[inline(always)]
fn tail_dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[allow(unsafe_code)]
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{CachedKv, Dot, HeadQuery, LANES, attend_body, tail_dot};

    /// Eight lanes of an `__m256` summed as `horizontal_sum` does lanes
    /// `0..8` after its first halving.
    #[inline(always)]
    unsafe fn sum8(v: __m256) -> f32 {
        // SAFETY: only inlined into functions compiled with AVX2.
        unsafe {
            let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
            _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)))
        }
    }

    /// Two 256-bit accumulators: lanes 0..8 and 8..16.
    pub(super) struct Avx2;

    impl Dot for Avx2 {
        #[inline(always)]
        fn dot(a: &[f32], b: &[f32]) -> f32 {
            let n = a.len().min(b.len()) / LANES * LANES;
            // SAFETY: only inlined into `attend_avx2`, compiled with AVX2;
            // every load reads 8 floats below `n`.
            unsafe {
                let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let (pa, pb) = (a.as_ptr(), b.as_ptr());
                let mut i = 0;
                while i < n {
                    let x = _mm256_mul_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
                    lo = _mm256_add_ps(lo, x);
                    let y = _mm256_mul_ps(
                        _mm256_loadu_ps(pa.add(i + 8)),
                        _mm256_loadu_ps(pb.add(i + 8)),
                    );
                    hi = _mm256_add_ps(hi, y);
                    i += LANES;
                }
                sum8(_mm256_add_ps(lo, hi)) + tail_dot(&a[n..], &b[n..])
            }
        }
    }

    /// One 512-bit accumulator.
    pub(super) struct Avx512;

    impl Dot for Avx512 {
        #[inline(always)]
        fn dot(a: &[f32], b: &[f32]) -> f32 {
            let n = a.len().min(b.len()) / LANES * LANES;
            // SAFETY: only inlined into `attend_avx512`, compiled with
            // AVX-512F; every load reads 16 floats below `n`.
            unsafe {
                let mut acc = _mm512_setzero_ps();
                let (pa, pb) = (a.as_ptr(), b.as_ptr());
                let mut i = 0;
                while i < n {
                    let x = _mm512_mul_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
                    acc = _mm512_add_ps(acc, x);
                    i += LANES;
                }
                let halves = _mm256_add_ps(
                    _mm512_castps512_ps256(acc),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)),
                );
                sum8(halves) + tail_dot(&a[n..], &b[n..])
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend_avx2(
        query: &HeadQuery<'_>,
        kv: &CachedKv<'_>,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        attend_body::<Avx2>(query, kv, scores, out);
    }

    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    pub(super) unsafe fn attend_avx512(
        query: &HeadQuery<'_>,
        kv: &CachedKv<'_>,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        attend_body::<Avx512>(query, kv, scores, out);
    }
}

/// [`attend_body`] built for the best instruction set this CPU has.
#[allow(unsafe_code)]
fn attend_checked(
    query: &HeadQuery<'_>,
    kv: &CachedKv<'_>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match crate::Isa::best() {
        // SAFETY: `best` names only paths whose features this CPU reports.
        crate::Isa::Avx512Vnni => return unsafe { x86::attend_avx512(query, kv, scores, out) },
        // SAFETY: as above.
        crate::Isa::Avx2 => return unsafe { x86::attend_avx2(query, kv, scores, out) },
        _ => {}
    }
    attend_body::<Portable>(query, kv, scores, out);
}

/// The lanes' sum, halving (a few shuffles rather than a chain of adds).
#[inline(always)]
fn horizontal_sum(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0]
}

/// `e^x` for `x <= 0` (softmax after subtracting the maximum): `2^n * p(r)`
/// with `x = n ln2 + r`, `|r| <= ln2 / 2`, `p` of degree 6; 0 below -87.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-87.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n is in -126..=0, so the exponent field stays normal.
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Softmax of `s` in place.
#[inline(always)]
fn softmax(s: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = s.chunks_exact(LANES);
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for c in chunks {
        for l in 0..LANES {
            m[l] = m[l].max(c[l]);
        }
    }
    max = m.iter().fold(max, |a, &b| a.max(b));
    let mut acc = [0f32; LANES];
    let mut chunks = s.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            c[l] = exp_nonpositive(c[l] - max);
            acc[l] += c[l];
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - max);
        sum += *v;
    }
    let inv = 1.0 / (horizontal_sum(acc) + sum);
    for v in s.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
fn attend_body<D: Dot>(
    query: &HeadQuery<'_>,
    kv: &CachedKv<'_>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd, vis) = (query.head_dim, query.visible);
    let heads = query.q.len() / hd;
    scores.clear();
    scores.resize(heads * vis, 0.0);
    let row = |t: usize| kv.slots[t] as usize * kv.stride + query.kv_offset;
    for t in 0..vis {
        if t + PREFETCH_AHEAD < vis {
            // Values too: the weighted sum below reads them after the
            // softmax, from cache by then.
            let ahead = row(t + PREFETCH_AHEAD);
            prefetch(&kv.keys[ahead..][..hd]);
            prefetch(&kv.values[ahead..][..hd]);
        }
        let k = &kv.keys[row(t)..][..hd];
        for (h, q) in query.q.chunks_exact(hd).enumerate() {
            scores[h * vis + t] = D::dot(q, k) * query.scale;
        }
    }
    for s in scores.chunks_exact_mut(vis) {
        softmax(s);
    }
    // Per head, up to 64 output values at a time stay in registers while
    // the positions stream past (each output adds in position order).
    for (h, o) in out.chunks_exact_mut(hd).enumerate() {
        let p = &scores[h * vis..(h + 1) * vis];
        let mut c0 = 0;
        while c0 < hd {
            let width = (hd - c0).min(WIDE);
            let mut acc = [0f32; WIDE];
            if width == WIDE {
                for (t, &p) in p.iter().enumerate() {
                    let v: &[f32; WIDE] = kv.values[row(t) + c0..][..WIDE]
                        .as_chunks()
                        .0
                        .first()
                        .unwrap_or(&[0.0; WIDE]);
                    for l in 0..WIDE {
                        acc[l] += p * v[l];
                    }
                }
            } else {
                for (t, &p) in p.iter().enumerate() {
                    let v = &kv.values[row(t) + c0..][..width];
                    for (a, &v) in acc.iter_mut().zip(v) {
                        *a += p * v;
                    }
                }
            }
            o[c0..c0 + width].copy_from_slice(&acc[..width]);
            c0 += width;
        }
    }
}

/// Output values a head accumulates at once.
const WIDE: usize = 64;

/// Positions ahead of the one in use whose cached row is prefetched: the
/// slots may be in any order (paged blocks), which the hardware
/// prefetcher cannot follow, and at a few sequences the rows come from
/// memory rather than cache.
const PREFETCH_AHEAD: usize = 12;

/// Asks for the cache lines of `row` (a no-op where there is no prefetch
/// instruction); never changes a result.
#[inline(always)]
fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let mut at = 0;
        while at < row.len() {
            // SAFETY: SSE is baseline on x86-64; a prefetch reads nothing
            // architecturally, and the address lies inside `row`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(row[at..].as_ptr().cast()) };
            at += 16;
        }
        if let Some(last) = row.last() {
            // SAFETY: as above.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(last).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exponential_is_within_four_ulp_of_std() {
        let mut x = 0f32;
        let mut worst = 0;
        while x > -87.0 {
            let (got, want) = (exp_nonpositive(x), x.exp());
            let ulp = (want.to_bits() as i64 - got.to_bits() as i64).abs();
            worst = worst.max(ulp);
            assert!(ulp <= 4, "exp({x}) = {got}, std {want}");
            x -= 0.000_731;
        }
        eprintln!("worst {worst} ulp");
        assert_eq!(exp_nonpositive(-200.0), exp_nonpositive(-87.0));
    }

    /// The textbook formula in f64, positions in order.
    fn reference(q: &[f32], k: &[Vec<f32>], v: &[Vec<f32>], hd: usize) -> Vec<f64> {
        let scale = 1.0 / (hd as f64).sqrt();
        let mut out = Vec::new();
        for qh in q.chunks_exact(hd) {
            let s: Vec<f64> = k
                .iter()
                .map(|k| {
                    qh.iter()
                        .zip(k)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
            for d in 0..hd {
                out.push(
                    s.iter()
                        .zip(v)
                        .map(|(x, v)| (x - max).exp() / sum * f64::from(v[d]))
                        .sum(),
                );
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn matches_the_formula_and_the_portable_build(
            heads in 1usize..4,
            hd in 1usize..70,
            kv_heads in 1usize..3,
            visible in 1usize..120,
            extra in 0usize..5,
            seed in 0u32..1000,
        ) {
            let noise = |i: usize, salt: u32| {
                ((i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(97) ^ salt) % 2001
            };
            let val = |i: usize, salt: u32| noise(i, salt) as f32 / 500.0 - 2.0;
            let stride = kv_heads * hd;
            let stored = visible + extra;
            // Position t lives in slot (t * 7 + 3) % stored when that is a
            // permutation, else in reverse order.
            let slots: Vec<u32> = if stored % 7 != 0 {
                (0..stored).map(|t| ((t * 7 + 3) % stored) as u32).collect()
            } else {
                (0..stored as u32).rev().collect()
            };
            let keys: Vec<f32> = (0..stored * stride).map(|i| val(i, 1)).collect();
            let values: Vec<f32> = (0..stored * stride).map(|i| val(i, 2)).collect();
            let q: Vec<f32> = (0..heads * hd).map(|i| val(i, 3)).collect();
            let kh = kv_heads - 1;
            let query = HeadQuery {
                q: &q,
                head_dim: hd,
                kv_offset: kh * hd,
                visible,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let kv = CachedKv { keys: &keys, values: &values, stride, slots: &slots };
            let (mut scores, mut out) = (Vec::new(), vec![0f32; q.len()]);
            attend(&query, &kv, &mut scores, &mut out).unwrap();
            let mut portable = vec![0f32; q.len()];
            attend_body::<Portable>(&query, &kv, &mut scores, &mut portable);
            proptest::prop_assert_eq!(&out, &portable);
            let row = |from: &[f32], t: usize| {
                let at = slots[t] as usize * stride + kh * hd;
                from[at..at + hd].to_vec()
            };
            let k: Vec<Vec<f32>> = (0..visible).map(|t| row(&keys, t)).collect();
            let v: Vec<Vec<f32>> = (0..visible).map(|t| row(&values, t)).collect();
            for (got, want) in out.iter().zip(reference(&q, &k, &v, hd)) {
                proptest::prop_assert!((f64::from(*got) - want).abs() < 1e-5, "{} vs {}", got, want);
            }
        }
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        let keys = vec![0f32; 8];
        let slots = [0u32, 1, 5];
        let kv = CachedKv {
            keys: &keys,
            values: &keys,
            stride: 4,
            slots: &slots,
        };
        let q = [1f32; 4];
        let ok = HeadQuery {
            q: &q,
            head_dim: 4,
            kv_offset: 0,
            visible: 2,
            scale: 0.5,
        };
        let mut out = [0f32; 4];
        assert!(attend(&ok, &kv, &mut Vec::new(), &mut out).is_ok());
        for bad in [
            HeadQuery { visible: 0, ..ok },
            HeadQuery { visible: 4, ..ok },
            HeadQuery { visible: 3, ..ok }, // slot 5 is past the 2 stored
            HeadQuery { kv_offset: 1, ..ok },
            HeadQuery { head_dim: 3, ..ok },
            HeadQuery { head_dim: 0, ..ok },
        ] {
            let err = attend(&bad, &kv, &mut Vec::new(), &mut out).unwrap_err();
            assert!(matches!(err, KernelError::BadAttention { .. }), "{err}");
        }
        let mut short = [0f32; 3];
        assert!(attend(&ok, &kv, &mut Vec::new(), &mut short).is_err());
    }
}
