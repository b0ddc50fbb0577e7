//! The `kernels` suite: switchyard-kernels' quantized matmul against candle's
//! `QMatMul` on SmolLM2-135M's shapes, same weights, same activations, same
//! threads (candle's pool), in one run.

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use switchyard::text::CandleComputePool;
use switchyard_kernels::{Isa, PackedMatrix, QuantFormat, QuantizedRows, matmul};

use crate::suites::SuiteResult;
use crate::{Report, median};

/// SmolLM2-135M's matmuls: (inputs k, outputs n, format, what).
pub const SHAPES: [(usize, usize, QuantFormat, &str); 5] = [
    (576, 576, QuantFormat::Q4_1, "attn q/o"),
    (576, 1536, QuantFormat::Q4_1, "ffn gate/up"),
    (1536, 576, QuantFormat::Q4_1, "ffn down"),
    (576, 192, QuantFormat::Q4_1, "attn k/v"),
    (576, 49152, QuantFormat::Q8_0, "lm head"),
];

/// Activation rows measured.
pub const ROWS: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// One weight matrix in both libraries' forms.
pub struct Case {
    /// Ours, repacked.
    pub packed: PackedMatrix,
    /// candle's.
    pub qmatmul: QMatMul,
    /// Bytes of the GGUF blocks (what decode streams per token).
    pub gguf_bytes: usize,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("packed", &self.packed)
            .finish()
    }
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Quantizes random `n x k` weights with candle and repacks the same blocks.
pub fn case(k: usize, n: usize, format: QuantFormat) -> SuiteResult<Case> {
    let dtype = match format {
        QuantFormat::Q8_0 => GgmlDType::Q8_0,
        QuantFormat::Q4_0 => GgmlDType::Q4_0,
        QuantFormat::Q4_1 => GgmlDType::Q4_1,
        QuantFormat::Q4K => GgmlDType::Q4K,
        QuantFormat::Q6K => GgmlDType::Q6K,
        other => return Err(format!("no benchmark weights for {other}").into()),
    };
    let w = Tensor::from_vec(noise(n * k, (n * k) as u64), (n, k), &Device::Cpu)?;
    let q = QTensor::quantize(&w, dtype)?;
    let data = q.data()?;
    let packed = PackedMatrix::from_gguf(format, n, k, &data)?;
    Ok(Case {
        packed,
        gguf_bytes: data.len(),
        qmatmul: QMatMul::from_qtensor(q)?,
    })
}

/// Median seconds per call of `f`, over samples of about 20 ms each.
pub fn seconds_per_call(mut f: impl FnMut() -> SuiteResult<()>) -> SuiteResult<f64> {
    f()?;
    let started = Instant::now();
    f()?;
    let one = started.elapsed().max(Duration::from_micros(1));
    let reps =
        (Duration::from_millis(20).as_secs_f64() / one.as_secs_f64()).clamp(1.0, 10_000.0) as usize;
    let mut samples = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        samples.push(started.elapsed().as_secs_f64() / reps as f64);
    }
    Ok(median(&mut samples))
}

/// `kernels`.
pub fn kernels() -> SuiteResult {
    let isa = Isa::best();
    let pool = CandleComputePool;
    println!(
        "path {isa}, {} threads (candle's pool for both)",
        candle_core::utils::get_num_threads()
    );
    println!(
        "{:<12} {:>11} {:>3} {:>9} {:>9} {:>8} {:>8} {:>7}",
        "shape", "k x n", "m", "ours GB/s", "cndl GB/s", "ours GOP", "cndl GOP", "ratio"
    );
    let mut report = Report::new("kernels");
    let mut worst_gemv = f64::INFINITY;
    for (k, n, format, what) in SHAPES {
        let case = case(k, n, format)?;
        for m in ROWS {
            let xf = noise(m * k, 7 + m as u64);
            let xt = Tensor::from_vec(xf.clone(), (m, k), &Device::Cpu)?;
            let mut xq = QuantizedRows::new();
            let mut out = vec![0f32; m * n];
            let ours = seconds_per_call(|| {
                xq.quantize(&xf, m, k)?;
                matmul(&case.packed, &xq, &mut out, &pool)?;
                Ok(())
            })?;
            let theirs = seconds_per_call(|| {
                case.qmatmul.forward(&xt)?;
                Ok(())
            })?;
            let gb = |t: f64| case.gguf_bytes as f64 / t / 1e9;
            let gop = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
            let ratio = theirs / ours;
            println!(
                "{what:<12} {:>11} {m:>3} {:>9.2} {:>9.2} {:>8.2} {:>8.2} {ratio:>7.2}",
                format!("{k}x{n}"),
                gb(ours),
                gb(theirs),
                gop(ours),
                gop(theirs)
            );
            let name = format!("{format}_{k}x{n}_m{m}");
            report.figure(&format!("{name}_gops"), gop(ours), "GOP/s (ours)");
            report.figure(
                &format!("{name}_candle_gops"),
                gop(theirs),
                "GOP/s (candle QMatMul)",
            );
            if m == 1 {
                worst_gemv = worst_gemv.min(ratio);
            }
        }
    }
    report.goal(
        "gemv_vs_candle_worst",
        ">= 1.0x candle's QMatMul on every SmolLM2 shape (m = 1)",
        worst_gemv,
        worst_gemv >= 1.0,
    );
    Ok(report)
}
