//! Every path against the scalar one (bit for bit) and against
//! dequantize-then-f32 (within the documented activation-rounding bound),
//! over random shapes and blocks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{any_format, candle_dequantize, random_activations, random_blocks};
use proptest::prelude::*;
use switchyard_kernels::{
    ComputePool, Inline, Isa, KernelError, PackedMatrix, QuantFormat, QuantizedRows, matmul,
    matmul_with,
};

/// A test pool: `n` scoped threads per call.
struct Scoped(usize);

impl ComputePool for Scoped {
    fn threads(&self) -> usize {
        self.0
    }

    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        std::thread::scope(|s| {
            for t in 0..self.0 {
                s.spawn(move || job(t));
            }
        });
    }
}

/// Checks one product on every path; returns the scalar result.
fn check(
    format: QuantFormat,
    m: usize,
    n: usize,
    blocks: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let k = blocks * format.block_len();
    let data = random_blocks(format, n * blocks, seed);
    let w = PackedMatrix::from_gguf(format, n, k, &data).expect("pack");
    let xf = random_activations(m * k, seed ^ 0xABCD);
    let mut x = QuantizedRows::new();
    x.quantize(&xf, m, k).expect("quantize");

    let mut scalar = vec![0f32; m * n];
    matmul_with(Isa::Scalar, &w, &x, &mut scalar, &Inline).expect("scalar");

    // Against dequantize-then-f32: error bounded by the activation rounding.
    let wf = candle_dequantize(format, n, k, &data);
    for r in 0..m {
        for c in 0..n {
            let (wr, xr) = (&wf[c * k..(c + 1) * k], &xf[r * k..(r + 1) * k]);
            let exact: f64 = wr
                .iter()
                .zip(xr)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let mut bound = 0f64;
            let mut magnitude = 0f64;
            for (wb, xb) in wr.chunks(32).zip(xr.chunks(32)) {
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let dx = f64::from(amax / 127.0);
                bound += dx / 2.0 * wb.iter().map(|v| f64::from(v.abs())).sum::<f64>();
                magnitude += wb
                    .iter()
                    .zip(xb)
                    .map(|(&a, &b)| f64::from((a * b).abs()))
                    .sum::<f64>();
            }
            let tol = bound * 1.001 + magnitude * 1e-5 + 1e-6;
            let got = f64::from(scalar[r * n + c]);
            prop_assert!(
                (got - exact).abs() <= tol,
                "{format} m={m} n={n} k={k} row {r} col {c}: got {got}, exact {exact}, bound {tol}"
            );
        }
    }

    for isa in Isa::available() {
        for threads in [1, 3] {
            let mut out = vec![f32::NAN; m * n];
            matmul_with(isa, &w, &x, &mut out, &Scoped(threads)).expect("matmul");
            let same = out
                .iter()
                .zip(&scalar)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            prop_assert!(
                same,
                "{isa} with {threads} threads differs from scalar for {format} m={m} n={n} k={k}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_path_matches_scalar_and_dequantized(
        format in any_format(),
        m in 1usize..10,
        n in 1usize..45,
        blocks in 1usize..4,
        seed: u64,
    ) {
        check(format, m, n, blocks, seed)?;
    }
}

#[test]
fn large_batches_and_many_groups() {
    // Row counts through every row tile: eight-row tiles with four-, two-
    // and one-row remainders, and the four-row tiles below eight rows.
    for format in QuantFormat::ALL {
        for (m, n) in [(64, 70), (17, 257), (15, 33), (8, 40), (7, 17)] {
            check(format, m, n, 2, m as u64 * 31 + n as u64).expect("check");
        }
    }
}

#[test]
fn shape_errors_are_typed() {
    let data = random_blocks(QuantFormat::Q8_0, 2, 1);
    let w = PackedMatrix::from_gguf(QuantFormat::Q8_0, 2, 32, &data).expect("pack");
    let mut x = QuantizedRows::new();
    x.quantize(&[0.5; 64], 1, 64).expect("quantize");
    let mut out = [0f32; 2];
    assert!(matches!(
        matmul(&w, &x, &mut out, &Inline),
        Err(KernelError::ShapeMismatch {
            expected: 32,
            got: 64
        })
    ));
    x.quantize(&[0.5; 64], 2, 32).expect("quantize");
    assert!(matches!(
        matmul(&w, &x, &mut out, &Inline),
        Err(KernelError::ShapeMismatch {
            expected: 4,
            got: 2
        })
    ));
    assert!(matches!(
        x.quantize(&[0.5; 48], 1, 48),
        Err(KernelError::BadActivations { .. })
    ));
    assert!(matches!(
        x.quantize(&[0.5; 31], 1, 32),
        Err(KernelError::ShapeMismatch { .. })
    ));
    let mut bad = [0.5f32; 32];
    bad[3] = f32::NAN;
    assert!(matches!(
        x.quantize(&bad, 1, 32),
        Err(KernelError::BadActivations { .. })
    ));
}

#[test]
fn zero_activations_give_exact_zeros() {
    for format in QuantFormat::ALL {
        let k = format.block_len();
        let w = PackedMatrix::from_gguf(format, 9, k, &random_blocks(format, 9, 7)).expect("pack");
        let mut x = QuantizedRows::new();
        x.quantize(&vec![0.0; 2 * k], 2, k).expect("quantize");
        let mut out = vec![1f32; 18];
        matmul(&w, &x, &mut out, &Scoped(2)).expect("matmul");
        assert!(out.iter().all(|&v| v == 0.0), "{format}: {out:?}");
    }
}

#[test]
fn this_cpu_reports_its_paths() {
    let available = Isa::available();
    assert_eq!(available.first(), Some(&Isa::Scalar));
    assert_eq!(Isa::best(), *available.last().expect("scalar at least"));
    eprintln!("paths here: {available:?}");
    if cfg!(target_arch = "aarch64") {
        assert!(available.contains(&Isa::Neon), "{available:?}");
    }
    // CI names the paths its machine (or emulator) must offer, so a path
    // that silently went missing fails rather than going untested.
    if let Ok(expected) = std::env::var("SWITCHYARD_EXPECT_ISAS") {
        for name in expected.split(',').filter(|n| !n.is_empty()) {
            assert!(
                available.iter().any(|i| i.to_string() == name),
                "{name} expected, this CPU offers {available:?}"
            );
        }
    }
}

/// The largest 4-bit products a sub-block can hold: every nibble 15 and
/// every activation at +-127 (constant rows quantize to exactly that), so
/// a path that sums products in narrow lanes would overflow here first.
#[test]
fn saturated_nibbles_and_activations_match_scalar() {
    for format in [QuantFormat::Q4_0, QuantFormat::Q4_1] {
        // f16 1.0 scale (and for Q4_1 a zero offset), then 16 bytes of 0xFF.
        let mut block = vec![0x00, 0x3C];
        if format == QuantFormat::Q4_1 {
            block.extend([0x00, 0x00]);
        }
        block.extend([0xFF; 16]);
        let (n, k) = (16, 64);
        let data: Vec<u8> = block.repeat(n * k / 32);
        let w = PackedMatrix::from_gguf(format, n, k, &data).expect("pack");
        for (m, value) in [(1, 1.0f32), (5, -1.0), (8, 3.5)] {
            let mut x = QuantizedRows::new();
            x.quantize(&vec![value; m * k], m, k).expect("quantize");
            let mut scalar = vec![0f32; m * n];
            matmul_with(Isa::Scalar, &w, &x, &mut scalar, &Inline).expect("scalar");
            let wv = if format == QuantFormat::Q4_0 {
                7.0
            } else {
                15.0
            };
            let expected = wv * value * k as f32;
            assert!(
                scalar
                    .iter()
                    .all(|v| (v - expected).abs() <= expected.abs() * 1e-3),
                "{format}: {} vs {expected}",
                scalar[0]
            );
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; m * n];
                matmul_with(isa, &w, &x, &mut out, &Inline).expect("matmul");
                assert!(
                    out.iter()
                        .zip(&scalar)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa} differs from scalar for saturated {format} m={m}"
                );
            }
        }
    }
}
