//! Element-wise activation functions between kernel calls, vectorised per
//! instruction set at run time like the rest of the crate.

use crate::attention::{LANES, exp_nonpositive, horizontal_sum};
use crate::multiversion::multiversion;
use crate::{KernelError, Result};

/// `out[i] = silu(gate[i]) * up[i]`, `silu(g) = g / (1 + e^-g)`: the gated
/// feed-forward of Llama-family models. Within a few ulp of the formula in
/// `f32` with `f32::exp` (the exponential is a polynomial).
///
/// # Errors
/// [`KernelError::ShapeMismatch`] when the three lengths differ.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
    if gate.len() != up.len() || gate.len() != out.len() {
        return Err(KernelError::ShapeMismatch {
            expected: gate.len(),
            got: if up.len() != gate.len() {
                up.len()
            } else {
                out.len()
            },
        });
    }
    silu_mul_checked(gate, up, out);
    Ok(())
}

multiversion! {
    fn silu_mul_checked(gate: &[f32], up: &[f32], out: &mut [f32]) -> () => silu_mul_body
}

#[inline(always)]
fn silu_mul_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_lanes(gate, up, out);
}

/// The arithmetic of [`silu_mul`], inlined into its callers' builds.
#[inline(always)]
pub(crate) fn silu_mul_lanes(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        // e^-|g| <= 1 never overflows: g / (1 + e^-g) for g >= 0, and
        // g e^g / (1 + e^g) (the same value) below.
        let e = exp_nonpositive(-g.abs());
        let s = if g >= 0.0 {
            g / (1.0 + e)
        } else {
            g * e / (1.0 + e)
        };
        *o = s * u;
    }
}

/// `out = x / sqrt(mean(x^2) + eps) * w` for every row of `x` (rows of
/// `w.len()` values): the RMS norm of Llama-family models. The squares add
/// up in 16 fixed lanes, then halving, then the tail, so the sum vectorises
/// and every build gives the same bits.
///
/// # Errors
/// [`KernelError::ShapeMismatch`] when `out` and `x` differ in length or
/// `x` is not whole rows of `w.len()`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    let d = w.len().max(1);
    if out.len() != x.len() || !x.len().is_multiple_of(d) {
        return Err(KernelError::ShapeMismatch {
            expected: x.len().next_multiple_of(d),
            got: if out.len() != x.len() {
                out.len()
            } else {
                x.len()
            },
        });
    }
    rms_norm_checked(x, w, eps, out);
    Ok(())
}

multiversion! {
    fn rms_norm_checked(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> () => rms_norm_body
}

#[inline(always)]
fn rms_norm_body(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (x, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mut lanes = [0f32; LANES];
        let (chunks, tail) = x.as_chunks::<LANES>();
        for c in chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += v * v;
            }
        }
        let sum2 = horizontal_sum(lanes) + tail.iter().map(|v| v * v).sum::<f32>();
        let inv = 1.0 / (sum2 / d as f32 + eps).sqrt();
        for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
            *o = x * inv * w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula_and_the_portable_build() {
        let gate: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 7.0).collect();
        let up: Vec<f32> = (0..1000).map(|i| 1.0 + (i % 13) as f32 / 10.0).collect();
        let mut out = vec![0f32; 1000];
        silu_mul(&gate, &up, &mut out).unwrap();
        let mut portable = vec![0f32; 1000];
        silu_mul_body(&gate, &up, &mut portable);
        assert_eq!(out, portable);
        for ((&o, &g), &u) in out.iter().zip(&gate).zip(&up) {
            let want = g / (1.0 + (-g).exp()) * u;
            assert!(
                (o - want).abs() <= 4.0 * f32::EPSILON * want.abs().max(1e-30),
                "{g}: {o} vs {want}"
            );
        }
        assert!(silu_mul(&gate, &up[1..], &mut out).is_err());
        assert!(silu_mul(&gate, &up, &mut out[1..]).is_err());
    }

    #[test]
    fn rms_norm_matches_the_portable_build_and_checks_shapes() {
        let (rows, d) = (3, 37);
        let x: Vec<f32> = (0..rows * d)
            .map(|i| (i as f32 * 0.37).sin() * 4.0)
            .collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 / 40.0).collect();
        let mut out = vec![0f32; rows * d];
        rms_norm(&x, &w, 1e-5, &mut out).unwrap();
        let mut portable = vec![0f32; rows * d];
        rms_norm_body(&x, &w, 1e-5, &mut portable);
        assert_eq!(out, portable);
        assert!(rms_norm(&x, &w, 1e-5, &mut portable[1..]).is_err());
        assert!(rms_norm(&x[1..], &w, 1e-5, &mut out[1..]).is_err());
    }
}
