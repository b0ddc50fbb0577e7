//! The `diffusion` suite: a tiny Stable Diffusion (real architecture, random
//! weights, written in the diffusers layout by the test kit) through the
//! pipeline. Batched vs one-by-one requests, the pipeline's cost per
//! denoising step against candle-transformers' UNet called directly on the
//! same weights, and what attention slicing saves in peak memory.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use switchyard_diffusion::{
    AttentionSlicing, DiffusionRequest, LoadOptions, MemoryOptions, RunOptions, StableDiffusion,
    TextToImage,
};
use switchyard_testkit::tiny::{self, TinyStableDiffusion};

use crate::suites::SuiteResult;
use crate::{Report, TempFolder, median, time_runs};

/// Pixels on a side: 32 x 32 latents with the tiny two-block VAE.
const SIDE: usize = 64;

fn request(prompt: &str, seed: u64, steps: usize, side: usize) -> TextToImage {
    TextToImage {
        width: side,
        height: side,
        steps,
        seed,
        guidance_scale: 7.5,
        ..TextToImage::new(prompt)
    }
}

/// candle-transformers' UNet loaded from the folder's weights the plain way.
fn raw_unet(dir: &Path, spec: &TinyStableDiffusion) -> SuiteResult<UNet2DConditionModel> {
    let bytes = std::fs::read(dir.join("unet/diffusion_pytorch_model.safetensors"))?;
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)?;
    Ok(UNet2DConditionModel::new(
        vb,
        spec.unet_in_channels,
        4,
        false,
        spec.candle_unet_config(),
    )?)
}

/// `diffusion`.
pub fn diffusion() -> SuiteResult {
    let dir = TempFolder::named("switchyard-diffusion-bench");
    let spec = TinyStableDiffusion::default();
    tiny::write_stable_diffusion(&dir.0, &spec, 1)?;
    let sd = StableDiffusion::load(&dir.0, &LoadOptions::default())?;
    let mut report = Report::new("diffusion");

    // 4 requests (different prompts and seeds, same size/steps/sampler),
    // at the tests' size and at twice that.
    let steps = 4;
    let prompts = [
        "a red train in a switchyard",
        "a blue locomotive at dawn",
        "freight cars in the snow",
        "a signal box at night",
    ];
    let runs = 7;
    println!("4 requests, {steps} steps, guidance 7.5 (UNet batch 8 vs 4 x 2), median of {runs}:");
    for side in [SIDE / 2, SIDE] {
        let requests: Vec<TextToImage> = prompts
            .iter()
            .zip(1u64..)
            .map(|(prompt, seed)| request(prompt, seed, steps, side))
            .collect();
        let mut batched: Vec<f64> = time_runs(1, runs, || {
            sd.text_to_image(&requests, RunOptions::default()).map(drop)
        })?
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
        let mut alone: Vec<f64> = time_runs(1, runs, || {
            requests.iter().try_for_each(|r| {
                sd.text_to_image(std::slice::from_ref(r), RunOptions::default())
                    .map(drop)
            })
        })?
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
        let (batched, alone) = (median(&mut batched), median(&mut alone));
        let ratio = alone / batched;
        println!(
            "  {side}x{side}: batched {batched:>8.1} ms, one by one {alone:>8.1} ms  ({ratio:.2}x)"
        );
        report.figure(
            &format!("batched_4_requests_{side}px_ms"),
            batched,
            "ms (median)",
        );
        report.figure(
            &format!("one_by_one_4_requests_{side}px_ms"),
            alone,
            "ms (median)",
        );
        report.goal(
            &format!("batched_vs_one_by_one_{side}px"),
            ">= 1.5x: 4 requests batched vs run one by one (CPU)",
            ratio,
            ratio >= 1.5,
        );
    }

    // Per-step cost: the time between two step callbacks of the pipeline
    // (scale input, UNet, guidance, sampler step) against one direct UNet
    // forward at the same batch (2: one request with guidance), the two
    // measured in alternation so host noise hits both alike.
    let unet = raw_unet(&dir.0, &spec)?;
    let latents = Tensor::randn(0f32, 1.0, (2, 4, SIDE / 2, SIDE / 2), &Device::Cpu)?;
    let context = Tensor::randn(0f32, 1.0, (2, 77, spec.text_hidden), &Device::Cpu)?;
    let steps = 9;
    let r = request("a red train in a switchyard", 7, steps, SIDE).into();
    let (mut pipeline, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let mut marks = Vec::new();
        let mut on_step = |_| marks.push(Instant::now());
        sd.denoise(
            std::slice::from_ref(&r),
            RunOptions {
                on_step: Some(&mut on_step),
                ..RunOptions::default()
            },
        )?;
        pipeline.extend(marks.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3));
        for _ in 1..steps {
            let start = Instant::now();
            unet.forward(&latents, 500.0, &context)?;
            raw.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (per_step, raw) = (median(&mut pipeline), median(&mut raw));
    let overhead = per_step / raw - 1.0;
    println!(
        "per denoising step, {SIDE}x{SIDE} (1 request, guidance on = UNet batch 2), median of {}:",
        pipeline.len()
    );
    println!("  pipeline    {per_step:>9.3} ms  (between step callbacks)");
    println!("  raw UNet    {raw:>9.3} ms  (candle-transformers forward)");
    println!("  overhead    {:>9.1} %", overhead * 100.0);
    report.figure("pipeline_ms_per_step", per_step, "ms (median)");
    report.figure("raw_unet_ms_per_forward", raw, "ms (median)");
    report.goal(
        "per_step_overhead",
        "<= 5% over calling the candle-transformers UNet directly",
        overhead * 100.0,
        overhead <= 0.05,
    );
    unet_cost_by_batch(&sd, &mut report)?;
    attention_slicing(&dir.0, &mut report)?;
    Ok(report)
}

/// The pipeline's cost per image and UNet forward at UNet batches 1 (one
/// request, no guidance), 2 (one guided request: what each request of the
/// one-by-one runs above is), 8 and 16, at both sizes. Batching n guided
/// requests can save at most the difference between the batch-2 and the
/// batch-2n figure in the UNet, which is nearly all of the work: where the
/// cost per image is flat, the batched-vs-one-by-one goal has no room.
fn unet_cost_by_batch(sd: &StableDiffusion, report: &mut Report) -> SuiteResult<()> {
    let steps = 6;
    println!("denoising cost per image per UNet forward ({steps} steps, median step of 3 runs):");
    for side in [SIDE / 2, SIDE] {
        let mut line = format!("  {side}x{side}:");
        let mut per_image = Vec::new();
        for (requests, guidance) in [(1usize, 1.0), (1, 7.5), (4, 7.5), (8, 7.5)] {
            let batch: Vec<DiffusionRequest> = (0..requests as u64)
                .map(|seed| {
                    TextToImage {
                        guidance_scale: guidance,
                        ..request("a red train in a switchyard", seed, steps, side)
                    }
                    .into()
                })
                .collect();
            let mut step_ms = Vec::new();
            for _ in 0..3 {
                let mut marks = Vec::new();
                let mut on_step = |_| marks.push(Instant::now());
                sd.denoise(
                    &batch,
                    RunOptions {
                        on_step: Some(&mut on_step),
                        ..RunOptions::default()
                    },
                )?;
                step_ms.extend(marks.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3));
            }
            let unet_batch = if guidance > 1.0 {
                2 * requests
            } else {
                requests
            };
            let ms = median(&mut step_ms) / unet_batch as f64;
            line.push_str(&format!("  batch {unet_batch} {ms:.2} ms"));
            report.figure(
                &format!("per_image_step_{side}px_batch_{unet_batch}_ms"),
                ms,
                "ms per image per step (median)",
            );
            per_image.push(ms);
        }
        let ceiling = per_image[1] / per_image[2];
        println!("{line}  (batch 2 / batch 8: {ceiling:.2}x)");
        report.figure(
            &format!("unet_batching_ceiling_{side}px"),
            ceiling,
            "x (per-image step cost at batch 2 over batch 8)",
        );
    }
    Ok(())
}

/// A `/proc/self/status` field in MiB (Linux only).
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Peak resident memory above the starting point while `run` runs, in
/// MiB, and its time in ms; `None` where the kernel cannot reset the peak.
fn peak_during(run: impl FnOnce() -> SuiteResult<()>) -> SuiteResult<Option<(f64, f64)>> {
    // Writing 5 to clear_refs resets VmHWM to the current VmRSS.
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        return Ok(None);
    }
    let (Some(before), start) = (status_mib("VmRSS:"), Instant::now()) else {
        return Ok(None);
    };
    run()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(status_mib("VmHWM:").map(|peak| (peak - before, ms)))
}

/// One guided denoising step at 128 x 128 pixels (64 x 64 latents: 4096
/// tokens attend to each other in the first block), with and without
/// attention slicing: peak memory above the loaded pipeline, and time.
fn attention_slicing(root: &Path, report: &mut Report) -> SuiteResult<()> {
    let spec = TinyStableDiffusion {
        cross_attention: vec![true, true],
        ..TinyStableDiffusion::default()
    };
    let dir = root.join("full-attention");
    tiny::write_stable_diffusion(&dir, &spec, 2)?;
    let mut sd = StableDiffusion::load(&dir, &LoadOptions::default())?;
    let r = request("a red train in a switchyard", 3, 1, 128).into();
    // Warm up: the first run maps the weights and sizes the allocator.
    sd.denoise(std::slice::from_ref(&r), RunOptions::default())?;
    println!("one guided step at 128x128 (4096 tokens, 2 heads x batch 2 = 4 attention rows):");
    let mut peaks = Vec::new();
    for (label, slicing) in [
        ("off", None),
        ("auto", Some(AttentionSlicing::Auto)),
        ("max", Some(AttentionSlicing::Max)),
    ] {
        sd.set_memory_options(MemoryOptions {
            attention_slicing: slicing,
            ..MemoryOptions::default()
        })?;
        let measured = peak_during(|| {
            sd.denoise(std::slice::from_ref(&r), RunOptions::default())?;
            Ok(())
        })?;
        let Some((peak, ms)) = measured else {
            println!("  skipped: this kernel cannot reset the peak resident size");
            return Ok(());
        };
        println!("  slicing {label:<4}  peak +{peak:>7.1} MiB  {ms:>8.1} ms");
        report.figure(
            &format!("slicing_{label}_peak_mib"),
            peak,
            "MiB above the loaded pipeline",
        );
        report.figure(&format!("slicing_{label}_ms"), ms, "ms (one run)");
        peaks.push(peak);
    }
    let saved = peaks[0] / peaks[2].max(1.0);
    report.goal(
        "attention_slicing_peak_reduction",
        ">= 2x less peak memory with slicing at max than off",
        saved,
        saved >= 2.0,
    );
    Ok(())
}
