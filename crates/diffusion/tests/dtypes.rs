//! Half-precision compute on the CPU: F16 weights and activations give the
//! F32 pipeline's images within half precision's rounding; BF16 weights on
//! disk load into either; BF16 compute on the CPU is a typed refusal.

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{DType, Device};
use switchyard_diffusion::{
    Control, ControlNet, DiffusionError, LoadOptions, RunOptions, StableDiffusion, TextToImage,
};
use switchyard_testkit::tiny::{self, TinyControlNet, TinyStableDiffusion};

fn load(dir: &std::path::Path, dtype: DType) -> StableDiffusion {
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: Some(dtype),
        ..LoadOptions::default()
    };
    let mut sd = StableDiffusion::load(&dir.join("sd"), &options).unwrap();
    sd.load_controlnet("edges", &dir.join("cn")).unwrap();
    sd
}

#[test]
fn f16_and_bf16_compute_track_f32() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinyStableDiffusion::default();
    tiny::write_stable_diffusion(&dir.path().join("sd"), &spec, 11).unwrap();
    tiny::write_controlnet(&dir.path().join("cn"), &spec, &TinyControlNet::default(), 2).unwrap();
    let edges = image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb(if (x + y) % 6 < 2 { [255; 3] } else { [0; 3] })
    });
    let request = TextToImage {
        width: 32,
        height: 32,
        steps: 3,
        seed: 3,
        guidance_scale: 5.0,
        controls: vec![Control::new("edges", edges)],
        ..TextToImage::new("a red train")
    };
    let run = |sd: &StableDiffusion| {
        sd.text_to_image(std::slice::from_ref(&request), RunOptions::default())
            .unwrap()
            .remove(0)
            .image
    };
    let reference = run(&load(dir.path(), DType::F32));
    let bf16_files = tempfile::tempdir().unwrap();
    let bf16_spec = TinyStableDiffusion {
        dtype: DType::BF16,
        ..spec
    };
    tiny::write_stable_diffusion(&bf16_files.path().join("sd"), &bf16_spec, 11).unwrap();
    tiny::write_controlnet(
        &bf16_files.path().join("cn"),
        &bf16_spec,
        &TinyControlNet::default(),
        2,
    )
    .unwrap();
    // (files, compute dtype, bound on the mean pixel difference): F16
    // compute rounds every activation; BF16 files round every weight.
    for (files, dtype, mean_bound) in [
        (dir.path(), DType::F16, 1.0),
        (bf16_files.path(), DType::F32, 2.0),
        (bf16_files.path(), DType::F16, 2.0),
    ] {
        let sd = load(files, dtype);
        let image = run(&sd);
        let diffs: Vec<f64> = image
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .collect();
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        let worst = diffs.iter().copied().fold(0.0, f64::max);
        eprintln!("{dtype:?} compute: mean {mean:.3}, worst {worst}");
        assert!(
            mean <= mean_bound,
            "{dtype:?}: mean difference {mean} over {mean_bound}"
        );
        assert_eq!(image.dimensions(), (32, 32));
    }
    let refused = StableDiffusion::load(
        &dir.path().join("sd"),
        &LoadOptions {
            device: Device::Cpu,
            dtype: Some(DType::BF16),
            ..LoadOptions::default()
        },
    );
    assert!(matches!(refused, Err(DiffusionError::Unsupported(_))));
    let refused = ControlNet::load(&dir.path().join("cn"), DType::BF16, &Device::Cpu);
    assert!(matches!(refused, Err(DiffusionError::Unsupported(_))));
}
