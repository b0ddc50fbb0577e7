//! AVX2 and AVX-512 VNNI paths over the repacked layout.
//!
//! One generic tile kernel computes `R` activation rows x `C` column groups:
//! each 32-byte vector of weights is loaded (and for 4-bit values unpacked)
//! once and multiplied with a 4-byte broadcast of every row's activations,
//! so a batch of rows reads each weight once. The two paths differ only in
//! the byte dot product ([`Dot`]): AVX2 widens through `maddubs`/`madd`,
//! VNNI uses `vpdpbusd` on 256-bit registers (AVX-512VL).
#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::ops::Range;

use crate::activations::{QBLOCK, QuantizedRows};
use crate::format::{QuantFormat, ValueKind};
use crate::out::OutView;
use crate::packed::{GROUP, PackedMatrix, RecordLayout, with_record_shape};

/// A byte dot product: four products per 32-bit lane, added to `acc`.
trait Dot {
    /// Whether [`Dot::dot_i8`] reads the unsigned activations (`q + 128`),
    /// in which case its accumulator starts at `-128 * wsum`.
    const UNSIGNED_X: bool;
    /// Whether 4-bit tiles keep two accumulators per cell, one for low and
    /// one for high nibbles, halving the chain of dependent dot products
    /// (integer sums, so the result is the same); it needs the 32 registers
    /// of AVX-512. (8-bit tiles measured no gain from it.)
    const SPLIT: bool;
    /// Whether the path has 32 vector registers, room for tiles of eight
    /// activation rows.
    const REGS32: bool;
    /// `acc + sum(w * x)` for unsigned `w <= 15` and signed `x`. (Only
    /// SPLIT dots use it; the others sum 4-bit products in 16-bit lanes.)
    unsafe fn dot_u4(acc: __m256i, w: __m256i, x: __m256i) -> __m256i;
    /// `acc + sum(w * x)` for signed `w`; `x` signed, `xu = x + 128`.
    unsafe fn dot_i8(acc: __m256i, w: __m256i, x: __m256i, xu: __m256i) -> __m256i;
}

struct Avx2;

impl Dot for Avx2 {
    const UNSIGNED_X: bool = false;
    const SPLIT: bool = false;
    const REGS32: bool = false;

    #[inline(always)]
    unsafe fn dot_u4(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: only inlined into functions compiled with AVX2.
        unsafe {
            let pairs = _mm256_maddubs_epi16(w, x); // |15 * 127 * 2| fits i16
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }

    #[inline(always)]
    unsafe fn dot_i8(acc: __m256i, w: __m256i, x: __m256i, _xu: __m256i) -> __m256i {
        // SAFETY: as above. |w| <= 128 and |x| <= 127, so pairs fit i16.
        unsafe {
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }
}

struct Vnni;

impl Dot for Vnni {
    const UNSIGNED_X: bool = true;
    const SPLIT: bool = true;
    const REGS32: bool = true;

    #[inline(always)]
    unsafe fn dot_u4(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: only inlined into functions compiled with AVX-512 VNNI+VL.
        unsafe { _mm256_dpbusd_epi32(acc, w, x) }
    }

    #[inline(always)]
    unsafe fn dot_i8(acc: __m256i, w: __m256i, _x: __m256i, xu: __m256i) -> __m256i {
        // SAFETY: as above.
        unsafe { _mm256_dpbusd_epi32(acc, xu, w) }
    }
}

/// Loads eight scales (f16 or f32) at `p`.
#[inline(always)]
unsafe fn scales<const H: bool>(p: *const u8) -> __m256 {
    // SAFETY: callers pass a pointer to 16 (f16) or 32 (f32) readable bytes.
    unsafe {
        if H {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        } else {
            _mm256_loadu_ps(p.cast())
        }
    }
}

/// Broadcasts the four bytes at `p` to every 32-bit lane.
#[inline(always)]
unsafe fn splat4(p: *const u8) -> __m256i {
    // SAFETY: callers pass a pointer to 4 readable bytes.
    unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>())) }
}

/// How far ahead of the record in use the first row tile prefetches: about
/// a dozen 4-bit records, a few microseconds of arithmetic at eight rows.
const PREFETCH_AHEAD: usize = 2048;

/// The compile-time shape of a format's records.
struct Shape<const NIB: bool, const SUB: usize, const OFF: bool, const H: bool>;

/// Computes rows `r0..r0 + R` x groups `g0..g0 + C`.
///
/// # Safety
/// The CPU supports `D`'s instructions; `r0 + R <= x.rows()`,
/// `g0 + C <= w.groups()`, `x.cols() == w.cols()`, and `w`'s layout matches
/// `NIB`, `SUB`, `OFF` and `H`.
#[inline(always)]
unsafe fn tile<
    D: Dot,
    const NIB: bool,
    const SUB: usize,
    const OFF: bool,
    const H: bool,
    const R: usize,
    const C: usize,
>(
    w: &PackedMatrix,
    x: &QuantizedRows,
    r0: usize,
    g0: usize,
    out: &OutView<'_>,
) {
    let l: &RecordLayout = w.layout();
    let k = x.cols();
    let xblocks = k / QBLOCK;
    let groups: [*const u8; C] = std::array::from_fn(|j| w.group(g0 + j).as_ptr());
    // SAFETY: the caller's contract keeps every pointer below inside its
    // buffer: records are `l.bytes` long and there are `w.subs()` per group;
    // activation rows are `k` bytes and there are `xblocks` scales per row.
    unsafe {
        let mut facc = [[_mm256_setzero_ps(); C]; R];
        for s in 0..w.subs() {
            let recs: [*const u8; C] = std::array::from_fn(|j| groups[j].add(s * l.bytes));
            if r0 == 0 {
                // The first row tile streams the weights from memory: ask for
                // them ahead of use, so the loads overlap the arithmetic.
                // (A prefetch never faults; the address may pass the end.)
                for &rec in &recs {
                    let ahead = rec.wrapping_add(PREFETCH_AHEAD);
                    let mut line = 0;
                    while line < l.bytes {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
                        line += 64;
                    }
                }
            }
            let mut iacc = [[_mm256_setzero_si256(); C]; R];
            let mut iacc2 = [[_mm256_setzero_si256(); C]; R];
            if !NIB && D::UNSIGNED_X {
                for j in 0..C {
                    let wsum =
                        _mm256_cvtepi16_epi32(_mm_loadu_si128(recs[j].add(l.wsum_at).cast()));
                    let start =
                        _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(wsum, 7));
                    for acc in iacc.iter_mut() {
                        acc[j] = start;
                    }
                }
            }
            let xoff = s * SUB;
            if NIB && !D::SPLIT {
                // The products of a whole sub-block add up in 16-bit lanes:
                // `maddubs` gives pairs of at most 2 x 15 x 128 and a
                // sub-block of 32 values sums eight of them (30720 < 2^15),
                // so one widening `madd` per sub-block replaces one per
                // product (integer sums: the same result, fewer
                // multiplier-port instructions).
                const { assert!(SUB <= 32) };
                let mut acc16 = [[_mm256_setzero_si256(); C]; R];
                for p in 0..SUB / 8 {
                    let (lo, hi) = nibbles::<C>(&recs, l.q_at + 32 * p);
                    for (r, acc) in acc16.iter_mut().enumerate() {
                        let xr = x.q.as_ptr().cast::<u8>().add((r0 + r) * k + xoff + 8 * p);
                        let (x0, x1) = (splat4(xr), splat4(xr.add(4)));
                        for j in 0..C {
                            let both = _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo[j], x0),
                                _mm256_maddubs_epi16(hi[j], x1),
                            );
                            acc[j] = _mm256_add_epi16(acc[j], both);
                        }
                    }
                }
                let ones = _mm256_set1_epi16(1);
                for (iacc, acc16) in iacc.iter_mut().zip(&acc16) {
                    for j in 0..C {
                        iacc[j] = _mm256_madd_epi16(acc16[j], ones);
                    }
                }
            } else if NIB {
                // SPLIT dots: the low and high nibbles accumulate apart.
                for p in 0..SUB / 8 {
                    let (lo, hi) = nibbles::<C>(&recs, l.q_at + 32 * p);
                    for r in 0..R {
                        let xr = x.q.as_ptr().cast::<u8>().add((r0 + r) * k + xoff + 8 * p);
                        let (x0, x1) = (splat4(xr), splat4(xr.add(4)));
                        for j in 0..C {
                            iacc[r][j] = D::dot_u4(iacc[r][j], lo[j], x0);
                            iacc2[r][j] = D::dot_u4(iacc2[r][j], hi[j], x1);
                        }
                    }
                }
            } else {
                for p in 0..SUB / 4 {
                    let mut v = [_mm256_setzero_si256(); C];
                    for j in 0..C {
                        v[j] = _mm256_loadu_si256(recs[j].add(l.q_at + 32 * p).cast());
                    }
                    for (r, acc) in iacc.iter_mut().enumerate() {
                        let at = (r0 + r) * k + xoff + 4 * p;
                        let xs = if D::UNSIGNED_X {
                            _mm256_setzero_si256()
                        } else {
                            splat4(x.q.as_ptr().cast::<u8>().add(at))
                        };
                        let xu = if D::UNSIGNED_X {
                            splat4(x.qu.as_ptr().add(at))
                        } else {
                            xs
                        };
                        for j in 0..C {
                            acc[j] = D::dot_i8(acc[j], v[j], xs, xu);
                        }
                    }
                }
            }
            let blk = xoff / QBLOCK;
            for j in 0..C {
                let dw = scales::<H>(recs[j]);
                let mw = if OFF {
                    scales::<H>(recs[j].add(l.m_at))
                } else {
                    _mm256_setzero_ps()
                };
                for r in 0..R {
                    let xb = (r0 + r) * xblocks + blk;
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*x.d.get_unchecked(xb)));
                    let dot = if D::SPLIT && NIB {
                        _mm256_add_epi32(iacc[r][j], iacc2[r][j])
                    } else {
                        iacc[r][j]
                    };
                    let mut f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, facc[r][j]);
                    if OFF {
                        f = _mm256_fmadd_ps(mw, _mm256_set1_ps(*x.s.get_unchecked(xb)), f);
                    }
                    facc[r][j] = f;
                }
            }
        }
        for (r, row) in facc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                if let Some(dst) = out.whole_group(r0 + r, g0 + j) {
                    _mm256_storeu_ps(dst, *v);
                } else {
                    let mut vals = [0f32; GROUP];
                    _mm256_storeu_ps(vals.as_mut_ptr(), *v);
                    out.write_group(r0 + r, g0 + j, &vals);
                }
            }
        }
    }
}

/// The low and high nibbles of 32 packed bytes at `at` in each of `C`
/// weight records, as unsigned bytes.
#[inline(always)]
unsafe fn nibbles<const C: usize>(
    recs: &[*const u8; C],
    at: usize,
) -> ([__m256i; C], [__m256i; C]) {
    // SAFETY: the caller's records hold 32 packed bytes at `at`.
    unsafe {
        let mask = _mm256_set1_epi8(0x0F);
        let mut lo = [_mm256_setzero_si256(); C];
        let mut hi = [_mm256_setzero_si256(); C];
        for j in 0..C {
            let v = _mm256_loadu_si256(recs[j].add(at).cast());
            lo[j] = _mm256_and_si256(v, mask);
            hi[j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
        }
        (lo, hi)
    }
}

/// Runs `C`-group tiles over every row, in row tiles of up to four, or of
/// eight for one-group tiles on paths with 32 registers.
#[inline(always)]
unsafe fn columns<
    D: Dot,
    const NIB: bool,
    const SUB: usize,
    const OFF: bool,
    const H: bool,
    const C: usize,
>(
    w: &PackedMatrix,
    x: &QuantizedRows,
    g: usize,
    out: &OutView<'_>,
) {
    let rows = x.rows();
    let mut r = 0;
    // SAFETY: forwarded from `gemm`; every tile stays below `rows`.
    unsafe {
        if D::REGS32 && C == 1 {
            while r + 8 <= rows {
                tile::<D, NIB, SUB, OFF, H, 8, 1>(w, x, r, g, out);
                r += 8;
            }
        }
        while r + 4 <= rows {
            tile::<D, NIB, SUB, OFF, H, 4, C>(w, x, r, g, out);
            r += 4;
        }
        match rows - r {
            3 => tile::<D, NIB, SUB, OFF, H, 3, C>(w, x, r, g, out),
            2 => tile::<D, NIB, SUB, OFF, H, 2, C>(w, x, r, g, out),
            1 => tile::<D, NIB, SUB, OFF, H, 1, C>(w, x, r, g, out),
            _ => {}
        }
    }
}

/// All rows x groups `range` for one record shape.
#[inline(always)]
unsafe fn gemm<D: Dot, const NIB: bool, const SUB: usize, const OFF: bool, const H: bool>(
    _: Shape<NIB, SUB, OFF, H>,
    w: &PackedMatrix,
    x: &QuantizedRows,
    range: Range<usize>,
    out: &OutView<'_>,
) {
    // One row: four groups per tile hide the dot-product latency; more rows
    // bring their own independent accumulators, so two groups suffice.
    // From eight rows (with 32 registers) a tile takes eight rows of one
    // group: every row then meets a weight while it streams in from
    // memory, where tiles of four rows left memory idle while the second
    // tile reread the weights from cache (a sweep of SmolLM2's layer
    // matrices at eight rows: 5.2 ms -> 3.9 ms).
    let wide = if x.rows() == 1 {
        4
    } else if D::REGS32 && x.rows() >= 8 {
        1
    } else {
        2
    };
    let mut g = range.start;
    // SAFETY: forwarded from `run`; groups stay below `range.end`.
    unsafe {
        while g < range.end {
            if wide > 1 && range.end - g >= wide {
                if wide == 4 {
                    columns::<D, NIB, SUB, OFF, H, 4>(w, x, g, out);
                } else {
                    columns::<D, NIB, SUB, OFF, H, 2>(w, x, g, out);
                }
                g += wide;
            } else {
                columns::<D, NIB, SUB, OFF, H, 1>(w, x, g, out);
                g += 1;
            }
        }
    }
}

/// Picks the record shape of `w`'s format.
#[inline(always)]
unsafe fn by_format<D: Dot>(
    w: &PackedMatrix,
    x: &QuantizedRows,
    range: Range<usize>,
    out: &OutView<'_>,
) {
    use QuantFormat as F;
    debug_assert_eq!(
        w.layout().kind == ValueKind::Nibble,
        matches!(w.format(), F::Q4_0 | F::Q4_1 | F::Q4K)
    );
    // SAFETY: the macro gives the shape `RecordLayout::of` gives the format.
    unsafe { with_record_shape!(w.format(), gemm::<D>(Shape, w, x, range, out)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2(w: &PackedMatrix, x: &QuantizedRows, range: Range<usize>, out: &OutView<'_>) {
    // SAFETY: forwarded from `gemm_groups`.
    unsafe { by_format::<Avx2>(w, x, range, out) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn run_vnni(w: &PackedMatrix, x: &QuantizedRows, range: Range<usize>, out: &OutView<'_>) {
    // SAFETY: forwarded from `gemm_groups`.
    unsafe { by_format::<Vnni>(w, x, range, out) }
}

/// Whether the AVX2 path can run here.
pub(crate) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Whether the AVX-512 VNNI path can run here.
pub(crate) fn has_vnni() -> bool {
    has_avx2()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Computes groups `range` for every row with AVX2 (`vnni == false`) or
/// AVX-512 VNNI.
///
/// # Panics
/// When the shapes disagree or the CPU lacks the instructions; the
/// dispatcher checks both first.
pub(crate) fn gemm_groups(
    vnni: bool,
    w: &PackedMatrix,
    x: &QuantizedRows,
    range: Range<usize>,
    out: &OutView<'_>,
) {
    w.assert_fits(x, &range);
    if vnni {
        assert!(has_vnni(), "AVX-512 VNNI is not available");
        // SAFETY: shapes and CPU features were checked just above.
        unsafe { run_vnni(w, x, range, out) }
    } else {
        assert!(has_avx2(), "AVX2 is not available");
        // SAFETY: as above.
        unsafe { run_avx2(w, x, range, out) }
    }
}
