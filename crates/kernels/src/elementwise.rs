//! Element-wise activation functions between kernel calls, vectorised per
//! instruction set at run time like the rest of the crate.

use crate::attention::exp_nonpositive;
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
}
