//! The AVX2 and AVX-512 builds of the attention body.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{CachedKv, Dot, HeadQuery, KvElement, LANES, attend_body, tail_dot};

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

/// `dst = src` as f32: `W` values at a time through `chunk` (handed
/// pointers to `W` readable sources and `W` writable destinations), the
/// tail one by one.
#[inline(always)]
fn widen_by<T: KvElement, const W: usize>(
    src: &[T],
    dst: &mut [f32],
    chunk: impl Fn(*const T, *mut f32),
) {
    let n = src.len().min(dst.len());
    let whole = n / W * W;
    for i in (0..whole).step_by(W) {
        chunk(src[i..].as_ptr(), dst[i..].as_mut_ptr());
    }
    for (d, s) in dst[whole..n].iter_mut().zip(&src[whole..n]) {
        *d = s.to_f32();
    }
}

/// Two 256-bit accumulators: lanes 0..8 and 8..16.
pub(super) struct Avx2;

impl Dot for Avx2 {
    #[inline(always)]
    fn widen<T: KvElement>(src: &[T], dst: &mut [f32]) {
        widen_by::<T, 8>(src, dst, |s, d| {
            // SAFETY: only inlined into functions compiled with AVX2 and
            // F16C; `widen_by` hands 8 readable and writable values.
            unsafe { _mm256_storeu_ps(d, T::load8(s)) }
        });
    }
    #[inline(always)]
    fn dot<T: KvElement>(a: &[f32], b: &[T]) -> f32 {
        let n = a.len().min(b.len()) / LANES * LANES;
        // SAFETY: only inlined into `attend_avx2`, compiled with AVX2
        // and F16C; every load reads 8 values below `n`.
        unsafe {
            let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            let mut i = 0;
            while i < n {
                let x = _mm256_mul_ps(_mm256_loadu_ps(pa.add(i)), T::load8(pb.add(i)));
                lo = _mm256_add_ps(lo, x);
                let y = _mm256_mul_ps(_mm256_loadu_ps(pa.add(i + 8)), T::load8(pb.add(i + 8)));
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
    fn widen<T: KvElement>(src: &[T], dst: &mut [f32]) {
        // As wide as the loads that read `dst` back, so they are forwarded
        // from these stores.
        widen_by::<T, 16>(src, dst, |s, d| {
            // SAFETY: only inlined into `attend_avx512`, compiled with
            // AVX-512F; `widen_by` hands 16 readable and writable values.
            unsafe { _mm512_storeu_ps(d, T::load16(s)) }
        });
    }
    #[inline(always)]
    fn dot<T: KvElement>(a: &[f32], b: &[T]) -> f32 {
        let n = a.len().min(b.len()) / LANES * LANES;
        // SAFETY: only inlined into `attend_avx512`, compiled with
        // AVX-512F; every load reads 16 values below `n`.
        unsafe {
            let mut acc = _mm512_setzero_ps();
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            let mut i = 0;
            while i < n {
                let x = _mm512_mul_ps(_mm512_loadu_ps(pa.add(i)), T::load16(pb.add(i)));
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

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend_avx2<T: KvElement>(
    query: &HeadQuery<'_>,
    kv: &CachedKv<'_, T>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_body::<Avx2, T>(query, kv, scores, out);
}

#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn attend_avx512<T: KvElement>(
    query: &HeadQuery<'_>,
    kv: &CachedKv<'_, T>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_body::<Avx512, T>(query, kv, scores, out);
}
