//! Text-to-image end to end on tiny Stable Diffusion folders with random
//! weights, written in the diffusers layout and loaded by the real loader.

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use candle_core::DType;
use switchyard_core::CancellationToken;
use switchyard_diffusion::{
    DiffusionError, GeneratedImage, LoadOptions, RunOptions, SchedulerKind, StableDiffusion,
    StepProgress, TextToImage,
};
use switchyard_testkit::tiny::{self, TinySchedulerSpec, TinyStableDiffusion};
use tempfile::TempDir;

mod common;
use common::{edit_json, request, run};

fn folder(spec: &TinyStableDiffusion) -> (TempDir, StableDiffusion) {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), spec, 11).unwrap();
    let sd = StableDiffusion::load(dir.path(), &LoadOptions::default()).unwrap();
    (dir, sd)
}

/// The largest per-channel difference between two generated images.
fn max_diff(a: &GeneratedImage, b: &GeneratedImage) -> u8 {
    common::max_diff(&a.image, &b.image)
}

fn spread(image: &GeneratedImage) -> u8 {
    let raw = image.image.as_raw();
    raw.iter().max().unwrap() - raw.iter().min().unwrap()
}

#[test]
fn images_have_the_size_asked_and_depend_on_the_seed_only() {
    let (_dir, sd) = folder(&TinyStableDiffusion::default());
    let r = TextToImage {
        width: 48,
        height: 32,
        ..request("a red train", 1)
    };
    let a = run(&sd, std::slice::from_ref(&r));
    let b = run(&sd, std::slice::from_ref(&r));
    assert_eq!(a[0].image.dimensions(), (48, 32));
    assert_eq!(
        a[0].image.as_raw(),
        b[0].image.as_raw(),
        "same seed, same image"
    );
    assert!(spread(&a[0]) > 0, "the image is not flat");
    let c = run(
        &sd,
        &[TextToImage {
            seed: 2,
            ..r.clone()
        }],
    );
    assert!(max_diff(&a[0], &c[0]) > 0, "another seed, another image");
    let d = run(
        &sd,
        &[TextToImage {
            prompt: "a cat on a chair".into(),
            ..r
        }],
    );
    assert!(max_diff(&a[0], &d[0]) > 0, "another prompt, another image");
    // Not saturated: most channels sit strictly between black and white.
    let raw = a[0].image.as_raw();
    let inside = raw.iter().filter(|&&v| v > 0 && v < 255).count();
    assert!(
        inside * 2 > raw.len(),
        "{inside} of {} channels inside (0, 255)",
        raw.len()
    );
}

#[test]
fn a_batched_image_equals_the_same_request_alone() {
    let (_dir, sd) = folder(&TinyStableDiffusion::default());
    let requests = [
        request("a red train", 5),
        TextToImage {
            negative_prompt: "blurry".into(),
            guidance_scale: 9.0,
            images: 2,
            ..request("a blue locomotive at dawn", 77)
        },
        request("a cat sitting on a chair", 123),
    ];
    let batched = run(&sd, &requests);
    assert_eq!(batched.len(), 4);
    let mut alone = Vec::new();
    for r in &requests {
        alone.extend(run(&sd, std::slice::from_ref(r)));
    }
    for (b, a) in batched.iter().zip(&alone) {
        assert_eq!(b.seed, a.seed);
        assert!(
            max_diff(a, b) <= 1,
            "seed {}: batched differs from alone",
            a.seed
        );
    }
    assert_eq!(
        batched
            .iter()
            .map(|i| (i.request, i.seed))
            .collect::<Vec<_>>(),
        vec![(0, 5), (1, 77), (1, 78), (2, 123)]
    );
}

#[test]
fn every_sampler_runs_deterministically() {
    let (_dir, sd) = folder(&TinyStableDiffusion::default());
    assert_eq!(sd.default_scheduler(), SchedulerKind::Ddim);
    let mut outputs = Vec::new();
    for kind in [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmPp2m,
        SchedulerKind::DpmPp2mKarras,
    ] {
        let r = TextToImage {
            scheduler: Some(kind),
            steps: 4,
            ..request("a photo of a dog in the snow", 9)
        };
        let a = run(&sd, std::slice::from_ref(&r));
        let b = run(&sd, std::slice::from_ref(&r));
        assert_eq!(a[0].image.as_raw(), b[0].image.as_raw(), "{kind:?}");
        outputs.push((kind, a.into_iter().next().unwrap()));
    }
    // Euler ancestral adds noise each step: it cannot equal plain Euler.
    assert!(max_diff(&outputs[1].1, &outputs[2].1) > 0);
}

#[test]
fn guidance_at_or_below_one_ignores_the_negative_prompt() {
    let (_dir, sd) = folder(&TinyStableDiffusion::default());
    let with = |scale: f64, negative: &str| {
        run(
            &sd,
            &[TextToImage {
                guidance_scale: scale,
                negative_prompt: negative.into(),
                ..request("a train on a bridge", 3)
            }],
        )
        .remove(0)
    };
    assert_eq!(
        with(1.0, "").image.as_raw(),
        with(1.0, "a horse on the moon").image.as_raw()
    );
    assert!(max_diff(&with(8.0, ""), &with(8.0, "a horse on the moon")) > 0);
}

#[test]
fn progress_is_reported_and_cancellation_stops_the_run() {
    let (_dir, sd) = folder(&TinyStableDiffusion::default());
    let mut seen = Vec::new();
    let pauses = std::cell::Cell::new(0);
    let mut on_step = |p: StepProgress| seen.push((p, pauses.get()));
    let pause = || pauses.set(pauses.get() + 1);
    sd.text_to_image(
        &[request("a red train", 1)],
        RunOptions {
            on_step: Some(&mut on_step),
            cancel: None,
            on_preview: None,
            cancel_when: None,
            pause: Some(&pause),
        },
    )
    .unwrap();
    // The tiny UNet has two down blocks, a mid block and two up blocks:
    // the run may pause before each, in every step.
    assert_eq!(
        seen,
        (1..=3)
            .map(|step| (StepProgress { step, total: 3 }, 5 * step))
            .collect::<Vec<_>>()
    );

    let token = CancellationToken::new();
    let mut steps = 0;
    let mut cancel_after_one = |_: StepProgress| {
        steps += 1;
        token.cancel();
    };
    let result = sd.text_to_image(
        &[request("a red train", 1)],
        RunOptions {
            on_step: Some(&mut cancel_after_one),
            cancel: Some(token.clone()),
            on_preview: None,
            cancel_when: None,
            pause: None,
        },
    );
    assert_eq!(result.unwrap_err(), DiffusionError::Cancelled);
    assert_eq!(steps, 1, "no step runs after the token fires");
}

#[test]
fn bad_requests_are_typed_errors() {
    let (_dir, sd) = folder(&TinyStableDiffusion::default());
    let field = |r: TextToImage| match sd.text_to_image(&[r], RunOptions::default()) {
        Err(DiffusionError::InvalidInput { field, .. }) => field,
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    let ok = request("x", 1);
    assert_eq!(
        field(TextToImage {
            width: 30,
            ..ok.clone()
        }),
        "width"
    );
    assert_eq!(
        field(TextToImage {
            height: 0,
            ..ok.clone()
        }),
        "height"
    );
    assert_eq!(
        field(TextToImage {
            height: 8192,
            ..ok.clone()
        }),
        "height"
    );
    assert_eq!(
        field(TextToImage {
            steps: 0,
            ..ok.clone()
        }),
        "steps"
    );
    assert_eq!(
        field(TextToImage {
            steps: 5000,
            ..ok.clone()
        }),
        "steps"
    );
    assert_eq!(
        field(TextToImage {
            guidance_scale: f64::NAN,
            ..ok.clone()
        }),
        "guidance_scale"
    );
    assert_eq!(
        field(TextToImage {
            images: 0,
            ..ok.clone()
        }),
        "images"
    );
    let mixed = sd.text_to_image(
        &[
            ok.clone(),
            TextToImage {
                steps: 4,
                ..ok.clone()
            },
        ],
        RunOptions::default(),
    );
    assert!(matches!(
        mixed,
        Err(DiffusionError::InvalidInput {
            field: "requests",
            ..
        })
    ));
    assert!(sd.text_to_image(&[], RunOptions::default()).is_err());
}

#[test]
fn sd2_style_folders_load_and_run() {
    // v-prediction, trailing spacing (SD-Turbo's), linear projections, f16
    // weights on disk, and an Euler default.
    let spec = TinyStableDiffusion {
        use_linear_projection: true,
        dtype: DType::F16,
        scheduler: TinySchedulerSpec {
            class: "EulerDiscreteScheduler".into(),
            prediction_type: "v_prediction".into(),
            timestep_spacing: "trailing".into(),
        },
        ..TinyStableDiffusion::default()
    };
    let (_dir, sd) = folder(&spec);
    assert_eq!(sd.default_scheduler(), SchedulerKind::Euler);
    let image = run(
        &sd,
        &[TextToImage {
            guidance_scale: 0.0,
            steps: 1,
            ..request("an astronaut riding a horse", 4)
        }],
    );
    assert!(spread(&image[0]) > 0);
}

#[test]
fn an_inpainting_unet_refuses_text_to_image() {
    let (_dir, sd) = folder(&TinyStableDiffusion::inpainting());
    assert!(sd.is_inpainting());
    assert!(matches!(
        sd.text_to_image(&[request("x", 1)], RunOptions::default()),
        Err(DiffusionError::InvalidInput { field: "model", .. })
    ));
}

#[test]
fn broken_folders_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let load = |p: &Path| StableDiffusion::load(p, &LoadOptions::default()).unwrap_err();
    assert!(matches!(load(dir.path()), DiffusionError::Io { .. }));

    tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::default(), 1).unwrap();
    // A second text encoder (SDXL's) named beside an SD 1.x UNet.
    let index = dir.path().join("model_index.json");
    edit_json(&index, |v| {
        v["text_encoder_2"] = serde_json::json!(["transformers", "CLIPTextModelWithProjection"])
    });
    assert!(matches!(
        load(dir.path()),
        DiffusionError::Config { ref reason, .. } if reason.contains("text_time")
    ));
    edit_json(&index, |v| v["text_encoder_2"] = serde_json::Value::Null);
    assert!(StableDiffusion::load(dir.path(), &LoadOptions::default()).is_ok());

    // A config that disagrees with the weights.
    let unet = dir.path().join("unet/config.json");
    edit_json(&unet, |v| v["cross_attention_dim"] = serde_json::json!(64));
    assert!(matches!(load(dir.path()), DiffusionError::Config { .. }));
    edit_json(&unet, |v| v["cross_attention_dim"] = serde_json::json!(32));

    // An unknown block type, and malformed JSON.
    edit_json(&unet, |v| {
        v["down_block_types"][0] = serde_json::json!("SimpleDownBlock")
    });
    assert!(matches!(load(dir.path()), DiffusionError::Unsupported(_)));
    std::fs::write(&unet, "{ not json").unwrap();
    assert!(matches!(load(dir.path()), DiffusionError::Config { .. }));

    // Pickle weights only.
    let vae = dir.path().join("vae");
    std::fs::remove_file(vae.join("diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(vae.join("diffusion_pytorch_model.bin"), b"pickle").unwrap();
    tiny::write_stable_diffusion(
        &dir.path().join("other"),
        &TinyStableDiffusion::default(),
        1,
    )
    .unwrap();
    std::fs::copy(
        dir.path().join("other/unet/config.json"),
        dir.path().join("unet/config.json"),
    )
    .unwrap();
    assert!(matches!(load(dir.path()), DiffusionError::Unsupported(_)));
}

#[test]
fn the_clip_tokenizer_pads_truncates_and_lowercases() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::default(), 1).unwrap();
    let tokenizer_dir = dir.path().join("tokenizer");
    let clip = tiny::TinyClipBpe::default();
    let (bos, eos) = (clip.bos_id(), clip.eos_id());
    let tokenizer = switchyard_diffusion::ClipTokenizer::load(&tokenizer_dir, 77).unwrap();
    let ids = tokenizer.encode("A Photo of a   TRAIN").unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids, tokenizer.encode("a photo of a train").unwrap());
    assert_eq!(ids[0], bos);
    let end = ids.iter().skip(1).position(|&t| t == eos).unwrap() + 1;
    assert!(
        end > 1 && ids[end..].iter().all(|&t| t == eos),
        "padded with the end token"
    );
    // "train</w>" is learned as one token from the corpus.
    let train = clip.tokens.iter().position(|t| t == "train</w>").unwrap() as u32;
    assert_eq!(ids[end - 1], train);

    let long = tokenizer.encode(&"train ".repeat(200)).unwrap();
    assert_eq!((long.len(), long[0], long[76]), (77, bos, eos));

    // SD 2.x pads with "!".
    edit_json(&tokenizer_dir.join("tokenizer_config.json"), |v| {
        v["pad_token"] = serde_json::json!("!")
    });
    let sd2 = switchyard_diffusion::ClipTokenizer::load(&tokenizer_dir, 77).unwrap();
    let bang = clip.tokens.iter().position(|t| t == "!").unwrap() as u32;
    assert_eq!(*sd2.encode("a train").unwrap().last().unwrap(), bang);
}
