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
    layer_sweep(&mut report)?;
    report.goal(
        "gemv_vs_candle_worst",
        ">= 1.0x candle's QMatMul on every SmolLM2 shape (m = 1)",
        worst_gemv,
        worst_gemv >= 1.0,
    );
    Ok(report)
}

/// One SmolLM2 layer's matrices as the host forward runs them: fused
/// q/k/v, o, fused gate/up, down (k, n).
const LAYER: [(usize, usize); 4] = [(576, 960), (576, 576), (576, 3072), (1536, 576)];

/// SmolLM2's 30 layers of Q4_1 matrices (about 64 MB, more than the
/// caches hold) run one after the other, as a decode step runs them: the
/// weights come from memory, so this shows what a batch of rows costs over
/// one row when the weights stream in rather than sit in cache.
fn layer_sweep(report: &mut Report) -> SuiteResult<()> {
    let pool = CandleComputePool;
    let layer = LAYER
        .iter()
        .map(|&(k, n)| case(k, n, QuantFormat::Q4_1).map(|c| c.packed))
        .collect::<SuiteResult<Vec<_>>>()?;
    // Distinct copies, so that no layer finds the previous one's weights
    // in cache.
    let mats: Vec<PackedMatrix> = (0..30).flat_map(|_| layer.iter().cloned()).collect();
    let bytes: usize = mats.iter().map(PackedMatrix::size_in_bytes).sum();
    println!(
        "30 layers of SmolLM2 matrices, {:.0} MB of weights from memory:",
        bytes as f64 / 1e6
    );
    let mut single = None;
    for m in [1, 8, 16] {
        let inputs = LAYER
            .iter()
            .map(|&(k, _)| {
                let mut xq = QuantizedRows::new();
                xq.quantize(&noise(m * k, 11 + k as u64), m, k)?;
                Ok(xq)
            })
            .collect::<SuiteResult<Vec<_>>>()?;
        let mut outs: Vec<Vec<f32>> = LAYER.iter().map(|&(_, n)| vec![0f32; m * n]).collect();
        let sweep = seconds_per_call(|| {
            for (i, w) in mats.iter().enumerate() {
                let at = i % LAYER.len();
                matmul(w, &inputs[at], &mut outs[at], &pool)?;
            }
            Ok(())
        })?;
        let vs_one = *single.get_or_insert(sweep);
        println!(
            "  m = {m:>2}: {:>6.2} ms, {:>5.1} GB/s, {:.2}x the time of one row",
            sweep * 1e3,
            bytes as f64 / sweep / 1e9,
            sweep / vs_one
        );
        report.figure(
            &format!("layer_sweep_m{m}_ms"),
            sweep * 1e3,
            "ms for 30 layers' Q4_1 matrices, weights from memory",
        );
    }
    Ok(())
}
