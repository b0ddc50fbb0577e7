//! f32 attention of a few query rows over cached keys and values: the inner
//! loop of decoding, vectorised for the CPU at run time.
//!
//! The keys and values stay where the cache keeps them (one row per slot,
//! any order), several query heads that share a key/value head read each
//! cached row once, and the exponential is a polynomial the compiler can
//! vectorise (within 4 ulp of `f32::exp` over softmax's range).

use crate::{KernelError, Result};

/// Accumulator lanes: fixed, so every instruction set adds in one order.
pub(crate) const LANES: usize = 16;

/// An element type a cache may keep keys and values in: `f32`, or `f16`
/// (half the memory and the bandwidth; widened to f32 exactly on load, so
/// the arithmetic is the same).
#[allow(unsafe_code)]
pub trait KvElement: Copy + Send + Sync + sealed::Sealed + 'static {
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
    /// The slice itself when the elements are f32 already.
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    /// Eight values at `p` as f32.
    ///
    /// # Safety
    /// `p` points to 8 readable elements; the CPU has AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Sixteen values at `p` as f32.
    ///
    /// # Safety
    /// `p` points to 16 readable elements; the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

#[allow(unsafe_code)]
impl KvElement for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

#[allow(unsafe_code)]
impl KvElement for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }

    #[inline(always)]
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; f16 is 16 bits, as `cvtph` reads.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: as above.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

/// Where one sequence's cached keys and values are, stored as `T`.
#[derive(Debug, Clone, Copy)]
pub struct CachedKv<'a, T: KvElement = f32> {
    /// Key storage: `stride` values per slot.
    pub keys: &'a [T],
    /// Value storage, laid out as `keys`.
    pub values: &'a [T],
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
pub fn attend<T: KvElement>(
    query: &HeadQuery<'_>,
    kv: &CachedKv<'_, T>,
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
    fn dot<T: KvElement>(a: &[f32], b: &[T]) -> f32;
    /// `dst[i] = src[i]` as f32, for equal lengths.
    fn widen<T: KvElement>(src: &[T], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}

/// Plain Rust.
struct Portable;

impl Dot for Portable {
    #[inline(always)]
    fn dot<T: KvElement>(a: &[f32], b: &[T]) -> f32 {
        let mut acc = [0f32; LANES];
        let (ca, ta) = a.as_chunks::<LANES>();
        let (cb, tb) = b.as_chunks::<LANES>();
        for (x, y) in ca.iter().zip(cb) {
            for l in 0..LANES {
                acc[l] += x[l] * y[l].to_f32();
            }
        }
        horizontal_sum(acc) + tail_dot(ta, tb)
    }
}

#[inline(always)]
fn tail_dot<T: KvElement>(a: &[f32], b: &[T]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
}

#[cfg(target_arch = "x86_64")]
mod x86;

/// [`attend_body`] built for the best instruction set this CPU has.
#[allow(unsafe_code)]
fn attend_checked<T: KvElement>(
    query: &HeadQuery<'_>,
    kv: &CachedKv<'_, T>,
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
    attend_body::<Portable, T>(query, kv, scores, out);
}

/// The lanes' sum, halving (a few shuffles rather than a chain of adds).
#[inline(always)]
pub(crate) fn horizontal_sum(mut acc: [f32; LANES]) -> f32 {
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
fn attend_body<D: Dot, T: KvElement>(
    query: &HeadQuery<'_>,
    kv: &CachedKv<'_, T>,
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
    // Up to GROUP heads and WIDE output values at a time: the sums stay in
    // registers while the positions stream past, each cached row widened
    // once for all the heads (each output adds in position order).
    let mut h0 = 0;
    while h0 < heads {
        let n = (heads - h0).min(GROUP);
        let p = &scores[h0 * vis..(h0 + n) * vis];
        let mut c0 = 0;
        while c0 < hd {
            let width = (hd - c0).min(WIDE);
            let o = &mut out[h0 * hd..(h0 + n) * hd];
            let place = |o: &mut [f32], sums: &[[f32; WIDE]]| {
                for (h, sums) in sums.iter().enumerate() {
                    o[h * hd + c0..][..width].copy_from_slice(&sums[..width]);
                }
            };
            match (width == WIDE, n) {
                (true, 1) => place(o, &weigh::<D, T, 1>(p, kv.values, c0, &row)),
                (true, 2) => place(o, &weigh::<D, T, 2>(p, kv.values, c0, &row)),
                (true, 3) => place(o, &weigh::<D, T, 3>(p, kv.values, c0, &row)),
                (true, _) => place(o, &weigh::<D, T, GROUP>(p, kv.values, c0, &row)),
                (false, _) => {
                    let sums: Vec<[f32; WIDE]> = (0..n)
                        .map(|h| {
                            weigh_narrow::<D, T>(&p[h * vis..][..vis], kv.values, c0, width, &row)
                        })
                        .collect();
                    place(o, &sums);
                }
            }
            c0 += width;
        }
        h0 += n;
    }
}

/// Heads whose weighted sums of values run together (4 x 64 sums fill 16
/// 512-bit registers).
const GROUP: usize = 4;

/// `sum_t p[h][t] * v_t[c0..c0 + WIDE]` for `H` heads, `p` holding each
/// head's probabilities over the same positions one after the other; `at`
/// gives a position's row in `values`.
#[inline(always)]
fn weigh<D: Dot, T: KvElement, const H: usize>(
    p: &[f32],
    values: &[T],
    c0: usize,
    at: &impl Fn(usize) -> usize,
) -> [[f32; WIDE]; H] {
    let vis = p.len() / H;
    let mut acc = [[0f32; WIDE]; H];
    let mut v = [0f32; WIDE];
    for t in 0..vis {
        D::widen(&values[at(t) + c0..][..WIDE], &mut v);
        for (h, acc) in acc.iter_mut().enumerate() {
            let p = p[h * vis + t];
            for l in 0..WIDE {
                acc[l] += p * v[l];
            }
        }
    }
    acc
}

/// [`weigh`] for one head and a last column block narrower than `WIDE`.
#[inline(always)]
fn weigh_narrow<D: Dot, T: KvElement>(
    p: &[f32],
    values: &[T],
    c0: usize,
    width: usize,
    at: &impl Fn(usize) -> usize,
) -> [f32; WIDE] {
    let mut acc = [0f32; WIDE];
    let mut v = [0f32; WIDE];
    for (t, &p) in p.iter().enumerate() {
        D::widen(&values[at(t) + c0..][..width], &mut v[..width]);
        for (a, &v) in acc[..width].iter_mut().zip(&v[..width]) {
            *a += p * v;
        }
    }
    acc
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
fn prefetch<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let line = (64 / std::mem::size_of::<T>().max(1)).max(1);
        let mut at = 0;
        while at < row.len() {
            // SAFETY: SSE is baseline on x86-64; a prefetch reads nothing
            // architecturally, and the address lies inside `row`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(row[at..].as_ptr().cast()) };
            at += line;
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
            heads in 1usize..7,
            hd in 1usize..140,
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
            attend_body::<Portable, f32>(&query, &kv, &mut scores, &mut portable);
            proptest::prop_assert_eq!(&out, &portable);
            // f16 storage: the same bits as f32 storage of the same
            // (rounded) values, in every build.
            let half = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x)).collect::<Vec<_>>();
            let (keys16, values16) = (half(&keys), half(&values));
            let wide = |v: &[half::f16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            let (keys_r, values_r) = (wide(&keys16), wide(&values16));
            let kv16 = CachedKv { keys: &keys16, values: &values16, stride, slots: &slots };
            let kv_r = CachedKv { keys: &keys_r, values: &values_r, stride, slots: &slots };
            let (mut out16, mut out_r, mut portable16) =
                (vec![0f32; q.len()], vec![0f32; q.len()], vec![0f32; q.len()]);
            attend(&query, &kv16, &mut scores, &mut out16).unwrap();
            attend(&query, &kv_r, &mut scores, &mut out_r).unwrap();
            attend_body::<Portable, half::f16>(&query, &kv16, &mut scores, &mut portable16);
            proptest::prop_assert_eq!(&out16, &out_r);
            proptest::prop_assert_eq!(&out16, &portable16);
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
