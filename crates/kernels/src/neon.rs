//! NEON paths over the repacked layout (aarch64).
//!
//! A 32-byte vector of the layout is two 16-byte registers here: columns
//! 0..4 and 4..8 of the group, four values each. A 4-byte broadcast of the
//! row's activations multiplies both, so as on x86 a batch of rows reads
//! each weight once. Two byte dot products ([`Dot`]):
//!
//! - [`Widening`], baseline NEON: `smull`/`smull2` to 16 bits, then
//!   `sadalp` into pairs of 32-bit lanes, folded per column at the end of
//!   the sub-block;
//! - [`Sdot`], the Armv8.2 dot-product extension (`sdot`), four products
//!   per 32-bit lane. Its intrinsic is not stable Rust yet, so it is one
//!   instruction of inline assembly; the CPU is checked at run time.
//!
//! Integer sums are exact, and the f32 steps are the scalar path's (one
//! fused multiply-add per sub-block and column, then one for the offset),
//! so every path gives the same bits.
#![allow(unsafe_code)]

use std::arch::aarch64::*;
use std::ops::Range;

use half::f16;

use crate::activations::{QBLOCK, QuantizedRows};
use crate::out::OutView;
use crate::packed::{GROUP, PackedMatrix, with_record_shape};

/// A byte dot product over four columns: `acc + sum(w * x)` per column,
/// four products each.
trait Dot {
    /// The running sums of four columns.
    type Acc: Copy;
    fn zero() -> Self::Acc;
    /// Adds `w . x` (signed bytes, four per column) to `acc`.
    unsafe fn dot(acc: Self::Acc, w: int8x16_t, x: int8x16_t) -> Self::Acc;
    /// The four columns' sums.
    unsafe fn finish(acc: Self::Acc) -> int32x4_t;
}

/// Baseline NEON: widening multiplies and pairwise accumulation.
struct Widening;

impl Dot for Widening {
    /// Columns 0 and 1 (two partial sums each), then 2 and 3.
    type Acc = (int32x4_t, int32x4_t);

    #[inline(always)]
    fn zero() -> Self::Acc {
        // SAFETY: NEON is part of every aarch64 CPU.
        unsafe { (vdupq_n_s32(0), vdupq_n_s32(0)) }
    }

    #[inline(always)]
    unsafe fn dot(acc: Self::Acc, w: int8x16_t, x: int8x16_t) -> Self::Acc {
        // SAFETY: baseline NEON. |w * x| <= 128 * 128 fits i16.
        unsafe {
            let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
            let hi = vmull_high_s8(w, x);
            (vpadalq_s16(acc.0, lo), vpadalq_s16(acc.1, hi))
        }
    }

    #[inline(always)]
    unsafe fn finish(acc: Self::Acc) -> int32x4_t {
        // SAFETY: baseline NEON.
        unsafe { vpaddq_s32(acc.0, acc.1) }
    }
}

/// The dot-product extension.
struct Sdot;

impl Dot for Sdot {
    type Acc = int32x4_t;

    #[inline(always)]
    fn zero() -> Self::Acc {
        // SAFETY: NEON is part of every aarch64 CPU.
        unsafe { vdupq_n_s32(0) }
    }

    #[inline(always)]
    unsafe fn dot(mut acc: Self::Acc, w: int8x16_t, x: int8x16_t) -> Self::Acc {
        // SAFETY: only inlined into `run_sdot`, which runs after the CPU
        // reported the dot-product extension; the instruction reads and
        // writes registers only.
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {w:v}.16b, {x:v}.16b",
                acc = inout(vreg) acc,
                w = in(vreg) w,
                x = in(vreg) x,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    }

    #[inline(always)]
    unsafe fn finish(acc: Self::Acc) -> int32x4_t {
        acc
    }
}

/// Eight scales (f16 or f32) at `p`, as columns 0..4 and 4..8.
#[inline(always)]
unsafe fn scales<const H: bool>(p: *const u8) -> [float32x4_t; 2] {
    // SAFETY: callers pass a pointer to 16 (f16) or 32 (f32) readable bytes.
    unsafe {
        if H {
            let mut v = [0f32; GROUP];
            for (c, v) in v.iter_mut().enumerate() {
                let bits = std::ptr::read_unaligned(p.add(2 * c).cast::<u16>());
                *v = f16::from_bits(u16::from_le(bits)).to_f32();
            }
            [vld1q_f32(v.as_ptr()), vld1q_f32(v.as_ptr().add(4))]
        } else {
            let p = p.cast::<f32>();
            [vld1q_f32(p), vld1q_f32(p.add(4))]
        }
    }
}

/// Broadcasts the four bytes at `p` to every 32-bit lane.
#[inline(always)]
unsafe fn splat4(p: *const i8) -> int8x16_t {
    // SAFETY: callers pass a pointer to 4 readable bytes.
    unsafe { vreinterpretq_s8_s32(vdupq_n_s32(std::ptr::read_unaligned(p.cast::<i32>()))) }
}

/// Computes rows `r0..r0 + R` of group `g`.
///
/// # Safety
/// `r0 + R <= x.rows()`, `g < w.groups()`, `x.cols() == w.cols()`, `w`'s
/// layout matches `NIB`, `SUB`, `OFF` and `H`, and `D`'s instructions run
/// on this CPU.
#[inline(always)]
unsafe fn tile<
    D: Dot,
    const NIB: bool,
    const SUB: usize,
    const OFF: bool,
    const H: bool,
    const R: usize,
>(
    w: &PackedMatrix,
    x: &QuantizedRows,
    r0: usize,
    g: usize,
    out: &OutView<'_>,
) {
    let l = w.layout();
    let k = x.cols();
    let xblocks = k / QBLOCK;
    let group = w.group(g).as_ptr();
    // SAFETY: the caller's contract keeps every pointer inside its buffer:
    // records are `l.bytes` long and there are `w.subs()` per group;
    // activation rows are `k` bytes and there are `xblocks` scales per row.
    unsafe {
        let mut facc = [[vdupq_n_f32(0.0); 2]; R];
        for s in 0..w.subs() {
            let rec = group.add(s * l.bytes);
            let mut iacc = [[D::zero(); 2]; R];
            let xoff = s * SUB;
            if NIB {
                let mask = vdupq_n_u8(0x0F);
                for p in 0..SUB / 8 {
                    let v = [
                        vld1q_u8(rec.add(l.q_at + 32 * p)),
                        vld1q_u8(rec.add(l.q_at + 32 * p + 16)),
                    ];
                    // Nibbles are 0..=15: as signed bytes they keep their value.
                    let lo = v.map(|v| vreinterpretq_s8_u8(vandq_u8(v, mask)));
                    let hi = v.map(|v| vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)));
                    for (r, acc) in iacc.iter_mut().enumerate() {
                        let xr = x.q.as_ptr().add((r0 + r) * k + xoff + 8 * p);
                        let (x0, x1) = (splat4(xr), splat4(xr.add(4)));
                        for h in 0..2 {
                            acc[h] = D::dot(D::dot(acc[h], lo[h], x0), hi[h], x1);
                        }
                    }
                }
            } else {
                for p in 0..SUB / 4 {
                    let at = rec.add(l.q_at + 32 * p).cast::<i8>();
                    let v = [vld1q_s8(at), vld1q_s8(at.add(16))];
                    for (r, acc) in iacc.iter_mut().enumerate() {
                        let xs = splat4(x.q.as_ptr().add((r0 + r) * k + xoff + 4 * p));
                        for h in 0..2 {
                            acc[h] = D::dot(acc[h], v[h], xs);
                        }
                    }
                }
            }
            let blk = xoff / QBLOCK;
            let dw = scales::<H>(rec);
            let mw = if OFF {
                scales::<H>(rec.add(l.m_at))
            } else {
                [vdupq_n_f32(0.0); 2]
            };
            for r in 0..R {
                let xb = (r0 + r) * xblocks + blk;
                let dx = *x.d.get_unchecked(xb);
                let sx = *x.s.get_unchecked(xb);
                for h in 0..2 {
                    let dot = vcvtq_f32_s32(D::finish(iacc[r][h]));
                    let mut f = vfmaq_f32(facc[r][h], dot, vmulq_n_f32(dw[h], dx));
                    if OFF {
                        f = vfmaq_n_f32(f, mw[h], sx);
                    }
                    facc[r][h] = f;
                }
            }
        }
        for (r, acc) in facc.iter().enumerate() {
            let mut vals = [0f32; GROUP];
            vst1q_f32(vals.as_mut_ptr(), acc[0]);
            vst1q_f32(vals.as_mut_ptr().add(4), acc[1]);
            out.write_group(r0 + r, g, &vals);
        }
    }
}

/// All rows x groups `range` for one record shape, in row tiles of up to
/// four.
#[inline(always)]
unsafe fn gemm<D: Dot, const NIB: bool, const SUB: usize, const OFF: bool, const H: bool>(
    w: &PackedMatrix,
    x: &QuantizedRows,
    range: Range<usize>,
    out: &OutView<'_>,
) {
    let rows = x.rows();
    // SAFETY: forwarded from `gemm_groups`; tiles stay below `rows` and
    // `range.end`.
    unsafe {
        for g in range {
            let mut r = 0;
            while r + 4 <= rows {
                tile::<D, NIB, SUB, OFF, H, 4>(w, x, r, g, out);
                r += 4;
            }
            match rows - r {
                3 => tile::<D, NIB, SUB, OFF, H, 3>(w, x, r, g, out),
                2 => tile::<D, NIB, SUB, OFF, H, 2>(w, x, r, g, out),
                1 => tile::<D, NIB, SUB, OFF, H, 1>(w, x, r, g, out),
                _ => {}
            }
        }
    }
}

/// Picks the record shape of `w`'s format (as the x86 paths do).
#[inline(always)]
unsafe fn by_format<D: Dot>(
    w: &PackedMatrix,
    x: &QuantizedRows,
    range: Range<usize>,
    out: &OutView<'_>,
) {
    // SAFETY: the macro gives the shape `RecordLayout::of` gives the format.
    unsafe { with_record_shape!(w.format(), gemm::<D>(w, x, range, out)) }
}

#[target_feature(enable = "neon")]
unsafe fn run_widening(
    w: &PackedMatrix,
    x: &QuantizedRows,
    range: Range<usize>,
    out: &OutView<'_>,
) {
    // SAFETY: forwarded from `gemm_groups`.
    unsafe { by_format::<Widening>(w, x, range, out) }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn run_sdot(w: &PackedMatrix, x: &QuantizedRows, range: Range<usize>, out: &OutView<'_>) {
    // SAFETY: forwarded from `gemm_groups`.
    unsafe { by_format::<Sdot>(w, x, range, out) }
}

/// Whether the dot-product path can run here.
pub(crate) fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// Computes groups `range` for every row with baseline NEON
/// (`dotprod == false`) or the dot-product extension.
///
/// # Panics
/// When the shapes disagree or the CPU lacks the instructions; the
/// dispatcher checks both first.
pub(crate) fn gemm_groups(
    dotprod: bool,
    w: &PackedMatrix,
    x: &QuantizedRows,
    range: Range<usize>,
    out: &OutView<'_>,
) {
    w.assert_fits(x, &range);
    if dotprod {
        assert!(has_dotprod(), "the dot-product extension is not available");
        // SAFETY: shapes and CPU features were checked just above.
        unsafe { run_sdot(w, x, range, out) }
    } else {
        // SAFETY: shapes were checked above; NEON is baseline on aarch64.
        unsafe { run_widening(w, x, range, out) }
    }
}
