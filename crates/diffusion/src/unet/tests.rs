// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use switchyard_testkit::tiny::{self, TinyStableDiffusion};

use super::{TextTimeInputs, Unet};
use crate::config::{UnetJson, read_json, weight_files};
use crate::memory::AttentionSlicing;
use crate::weights;

/// Both UNets over the tiny folder's weights, with a seeded input batch of
/// two rows and a text conditioning.
struct Fixture {
    _dir: tempfile::TempDir,
    ours: Unet,
    candle: UNet2DConditionModel,
    xs: Tensor,
    context: Tensor,
}

fn fixture(spec: &TinyStableDiffusion) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), spec, 5).unwrap();
    let unet_dir = dir.path().join("unet");
    let json: UnetJson = read_json(&unet_dir.join("config.json")).unwrap();
    let config = json.to_candle(&unet_dir.join("config.json")).unwrap();
    let files = weight_files(&unet_dir, "diffusion_pytorch_model").unwrap();
    let vb = || weights::open(&files, DType::F32, &Device::Cpu, None).unwrap();
    let text_time = json.text_time(&unet_dir.join("config.json")).unwrap();
    let ours = Unet::new(vb(), (json.encoder.in_channels, 4), &config, text_time).unwrap();
    let candle =
        UNet2DConditionModel::new(vb(), json.encoder.in_channels, 4, false, config).unwrap();
    let xs = pattern(&[2, json.encoder.in_channels, 8, 8], 1.0);
    let context = pattern(&[2, 7, spec.text_hidden], 2.0);
    Fixture {
        _dir: dir,
        ours,
        candle,
        xs,
        context,
    }
}

/// Deterministic values in -1..=1 that vary along every axis (the CPU
/// device cannot be seeded).
fn pattern(shape: &[usize], phase: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| (i as f32 * 0.731 + phase).sin() * (i as f32 * 0.057).cos())
        .collect::<Vec<_>>();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Our UNet is candle-transformers' architecture under the same weight
/// names; it differs only in the GEGLU's GELU (exact here, as in
/// diffusers; candle-transformers uses the tanh approximation), so the
/// outputs agree to that approximation's error. A miswired block (a skip
/// out of order, a wrong norm) would differ by the output's own size.
#[test]
fn matches_candle_transformers_unet_up_to_the_gelu_approximation() {
    for spec in [
        TinyStableDiffusion::default(),
        TinyStableDiffusion {
            use_linear_projection: true,
            cross_attention: vec![true, true],
            ..TinyStableDiffusion::default()
        },
        TinyStableDiffusion::inpainting(),
    ] {
        let f = fixture(&spec);
        let ours = f
            .ours
            .forward((&f.xs, 500.0), &f.context, None, None, None)
            .unwrap();
        let theirs = f.candle.forward(&f.xs, 500.0, &f.context).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        let (diff, size) = (max_diff(&ours, &theirs), max_abs(&theirs));
        assert!(
            size > 0.1,
            "a degenerate output ({size}) would prove nothing"
        );
        assert!(
            diff <= 1e-3 * size,
            "differs by {diff} on outputs of size {size}"
        );
    }
}

#[test]
fn extra_residuals_add_as_candle_transformers_adds_them() {
    let f = fixture(&TinyStableDiffusion::default());
    let plain = f
        .ours
        .forward((&f.xs, 20.0), &f.context, None, None, None)
        .unwrap();
    // conv_in, one ResNet + downsampler, one ResNet: the tiny UNet's skips.
    let down: Vec<Tensor> = [(32, 8), (32, 8), (32, 4), (64, 4)]
        .iter()
        .enumerate()
        .map(|(i, &(c, s))| pattern(&[2, c, s, s], i as f32))
        .collect();
    let mid = pattern(&[2, 64, 4, 4], 7.0);
    let ours = f
        .ours
        .forward((&f.xs, 20.0), &f.context, None, Some((&down, &mid)), None)
        .unwrap();
    let theirs = f
        .candle
        .forward_with_additional_residuals(&f.xs, 20.0, &f.context, Some(&down), Some(&mid))
        .unwrap();
    let size = max_abs(&theirs);
    assert!(max_diff(&ours, &theirs) <= 1e-3 * size);
    assert!(
        max_diff(&ours, &plain) > 1e-3,
        "the residuals changed nothing"
    );
}

#[test]
fn sliced_attention_gives_the_unsliced_output() {
    let spec = TinyStableDiffusion {
        cross_attention: vec![true, true],
        ..TinyStableDiffusion::default()
    };
    let f = fixture(&spec);
    let whole = f
        .ours
        .forward((&f.xs, 300.0), &f.context, None, None, None)
        .unwrap();
    // 2 rows x 2 or 4 heads: slices of 1, of half the heads, and of 3
    // (which leaves a remainder slice, the case candle-transformers drops).
    for slicing in [
        AttentionSlicing::Max,
        AttentionSlicing::Auto,
        AttentionSlicing::Size(3),
        AttentionSlicing::Size(100),
    ] {
        let sliced = f
            .ours
            .forward((&f.xs, 300.0), &f.context, None, None, Some(slicing))
            .unwrap();
        let diff = max_diff(&whole, &sliced);
        assert!(
            diff <= 1e-6 * max_abs(&whole),
            "{slicing:?} differs by {diff}"
        );
    }
}

#[test]
fn slice_rows_follow_diffusers_sizes() {
    let f = fixture(&TinyStableDiffusion::default());
    // The cross-attention block has 4 heads; with 2 rows, 8 rows attend.
    let attention = f.ours.up_blocks[0].first_attention().unwrap();
    assert_eq!(attention.slice_rows(None, 8), 8);
    assert_eq!(attention.slice_rows(Some(AttentionSlicing::Auto), 8), 2);
    assert_eq!(attention.slice_rows(Some(AttentionSlicing::Max), 8), 1);
    assert_eq!(attention.slice_rows(Some(AttentionSlicing::Size(3)), 8), 3);
    assert_eq!(attention.slice_rows(Some(AttentionSlicing::Size(20)), 8), 8);
}

/// An SDXL-shaped tiny UNet: a plain first block, transformer depth 2,
/// linear projections, and the added text/time conditioning.
/// The test kit's SDXL UNet without the second text encoder, so the UNet
/// cross-attends to the first encoder's width alone.
fn sdxl() -> TinyStableDiffusion {
    TinyStableDiffusion {
        text_encoder_2: None,
        ..TinyStableDiffusion::sdxl()
    }
}

fn time_ids(size: f32) -> Tensor {
    let row = [size, size, 0.0, 0.0, size, size];
    Tensor::from_vec([row, row].concat(), (2, 6), &Device::Cpu).unwrap()
}

#[test]
fn an_sdxl_unet_runs_and_its_added_conditioning_steers_it() {
    let f = fixture(&sdxl());
    let pooled = pattern(&[2, 24], 3.0);
    let run = |pooled: &Tensor, ids: &Tensor| {
        let added = TextTimeInputs {
            pooled,
            time_ids: ids,
        };
        f.ours
            .forward((&f.xs, 400.0), &f.context, Some(added), None, None)
            .unwrap()
    };
    let base = run(&pooled, &time_ids(1024.0));
    assert_eq!(base.dims(), [2, 4, 8, 8]);
    assert_eq!(max_diff(&base, &run(&pooled, &time_ids(1024.0))), 0.0);
    assert!(max_diff(&base, &run(&pooled, &time_ids(512.0))) > 1e-4);
    assert!(max_diff(&base, &run(&pattern(&[2, 24], 5.0), &time_ids(1024.0))) > 1e-4);
    // Missing or misshapen conditioning is an error, not a panic.
    assert!(
        f.ours
            .forward((&f.xs, 400.0), &f.context, None, None, None)
            .is_err()
    );
    let short = pattern(&[2, 20], 3.0);
    let added = TextTimeInputs {
        pooled: &short,
        time_ids: &time_ids(1024.0),
    };
    assert!(
        f.ours
            .forward((&f.xs, 400.0), &f.context, Some(added), None, None)
            .is_err()
    );
}

/// With the added embedding's output layer zeroed, the added conditioning
/// adds nothing, so the SDXL-shaped UNet must equal candle-transformers'
/// UNet of the same blocks (which has no added conditioning): this checks
/// the deeper transformers and the plain first block against it.
#[test]
fn an_sdxl_unet_without_its_added_term_matches_candle_transformers() {
    let spec = sdxl();
    let dir = tempfile::tempdir().unwrap();
    tiny::write_unet(dir.path(), &spec, 8).unwrap();
    let file = dir.path().join("diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    for name in [
        "add_embedding.linear_2.weight",
        "add_embedding.linear_2.bias",
    ] {
        let t = tensors.get_mut(name).expect("written");
        *t = t.zeros_like().unwrap();
    }
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let json: UnetJson = read_json(&dir.path().join("config.json")).unwrap();
    let config = json.to_candle(&dir.path().join("config.json")).unwrap();
    let text_time = json.text_time(&dir.path().join("config.json")).unwrap();
    let vb = || weights::open(std::slice::from_ref(&file), DType::F32, &Device::Cpu, None).unwrap();
    let ours = Unet::new(vb(), (4, 4), &config, text_time).unwrap();
    let candle = UNet2DConditionModel::new(vb(), 4, 4, false, config).unwrap();
    let xs = pattern(&[2, 4, 8, 8], 1.0);
    let context = pattern(&[2, 7, spec.text_hidden], 2.0);
    let pooled = pattern(&[2, 24], 3.0);
    let added = TextTimeInputs {
        pooled: &pooled,
        time_ids: &time_ids(768.0),
    };
    let a = ours
        .forward((&xs, 250.0), &context, Some(added), None, None)
        .unwrap();
    let b = candle.forward(&xs, 250.0, &context).unwrap();
    let size = max_abs(&b);
    assert!(size > 0.1);
    // Twice the transformer blocks, twice the GELU approximation's error
    // (with candle-transformers' tanh GELU swapped in, the two agree bit
    // for bit).
    assert!(
        max_diff(&a, &b) <= 5e-3 * size,
        "differs by {}",
        max_diff(&a, &b)
    );
}

#[test]
fn a_pipeline_refuses_an_sdxl_unet_without_the_second_text_encoder() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), &sdxl(), 1).unwrap();
    let loaded = crate::StableDiffusion::load(dir.path(), &crate::LoadOptions::default());
    assert!(
        matches!(loaded, Err(crate::DiffusionError::Unsupported(ref why)) if why.contains("SDXL")),
        "{loaded:?}"
    );
}
