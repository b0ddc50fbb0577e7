//! Image-to-image and inpainting end to end on tiny Stable Diffusion folders
//! with random weights, loaded by the real loader.

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::IndexOp;
use image::{GrayImage, ImageEncoder, Luma, Rgb, RgbImage};
use switchyard_core::CancellationToken;
use switchyard_diffusion::{
    DiffusionError, DiffusionRequest, GeneratedImage, ImageToImage, Inpaint, LoadOptions,
    RunOptions, StableDiffusion, StepProgress, TextToImage,
};
use switchyard_image::{ImageFormat, ImageLimits};
use switchyard_testkit::tiny::{self, TinyStableDiffusion};

mod common;
use common::max_diff;
use tempfile::TempDir;

fn folder(spec: &TinyStableDiffusion) -> (TempDir, StableDiffusion) {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), spec, 11).unwrap();
    let sd = StableDiffusion::load(dir.path(), &LoadOptions::default()).unwrap();
    (dir, sd)
}

fn picture(seed: u32) -> RgbImage {
    RgbImage::from_fn(32, 32, |x, y| {
        Rgb([
            (x * 8) as u8,
            (y * 8) as u8,
            ((x * y + seed * 40) % 256) as u8,
        ])
    })
}

/// White (repaint) on the left `cols` pixel columns, black elsewhere.
fn left_mask(cols: u32) -> GrayImage {
    GrayImage::from_fn(32, 32, |x, _| Luma([if x < cols { 255 } else { 0 }]))
}

fn img2img(prompt: &str, seed: u64, strength: f64) -> ImageToImage {
    let mut r = ImageToImage::new(prompt, picture(1), strength);
    r.params.steps = 4;
    r.params.seed = seed;
    r.params.guidance_scale = 5.0;
    r
}

fn inpaint(prompt: &str, seed: u64) -> Inpaint {
    let mut r = Inpaint::new(prompt, picture(2), left_mask(16));
    r.params.steps = 3;
    r.params.seed = seed;
    r.params.guidance_scale = 4.0;
    r
}

fn steps_of(sd: &StableDiffusion, request: DiffusionRequest) -> Vec<StepProgress> {
    let mut seen = Vec::new();
    let mut on_step = |p: StepProgress| seen.push(p);
    sd.generate(
        &[request],
        RunOptions {
            on_step: Some(&mut on_step),
            cancel: None,
            on_preview: None,
            cancel_when: None,
            pause: None,
        },
    )
    .unwrap();
    seen
}

#[test]
fn strength_zero_returns_the_input_through_the_vae() {
    let (_dir, sd) = folder(&TinyStableDiffusion::default());
    let r = img2img("a red train", 1, 0.0);
    let out = sd
        .image_to_image(std::slice::from_ref(&r), RunOptions::default())
        .unwrap();
    let round_trip = sd
        .decode_latents(&sd.encode_image(&r.image).unwrap())
        .unwrap()
        .remove(0);
    assert_eq!(out[0].image.as_raw(), round_trip.as_raw());
    assert!(
        steps_of(&sd, r.into()).is_empty(),
        "no step runs at strength 0"
    );
}

#[test]
fn strength_sets_how_many_steps_run_and_changes_the_image() {
    let (_dir, sd) = folder(&TinyStableDiffusion::default());
    let run = |strength: f64| {
        let r = img2img("a red train", 1, strength);
        let steps = steps_of(&sd, r.clone().into());
        let image = sd
            .image_to_image(&[r], RunOptions::default())
            .unwrap()
            .remove(0);
        (steps.len(), steps.last().map(|p| p.total), image.image)
    };
    let (none, _, untouched) = run(0.0);
    let (half, total, halfway) = run(0.5);
    let (all, _, full) = run(1.0);
    assert_eq!((none, half, total, all), (0, 2, Some(2), 4));
    assert!(max_diff(&untouched, &halfway) > 0);
    assert!(max_diff(&halfway, &full) > 0);
    // Requests whose strengths start at different steps cannot share a batch.
    let mixed = sd.image_to_image(
        &[img2img("a", 1, 0.5), img2img("a", 1, 0.75)],
        RunOptions::default(),
    );
    assert!(matches!(
        mixed,
        Err(DiffusionError::InvalidInput {
            field: "requests",
            ..
        })
    ));
}

#[test]
fn image_to_image_is_seeded_and_batches_like_alone() {
    let (_dir, sd) = folder(&TinyStableDiffusion::default());
    let mut second = img2img("a blue locomotive", 40, 0.75);
    second.image = picture(3);
    second.params.images = 2;
    second.params.guidance_scale = 8.0;
    let requests = [img2img("a red train", 7, 0.75), second];
    let batched = sd.image_to_image(&requests, RunOptions::default()).unwrap();
    assert_eq!(batched.len(), 3);
    let mut alone: Vec<GeneratedImage> = Vec::new();
    for r in &requests {
        alone.extend(
            sd.image_to_image(std::slice::from_ref(r), RunOptions::default())
                .unwrap(),
        );
    }
    for (b, a) in batched.iter().zip(&alone) {
        assert_eq!(b.seed, a.seed);
        assert!(max_diff(&a.image, &b.image) <= 1, "seed {}", a.seed);
    }
    assert!(
        max_diff(&batched[1].image, &batched[2].image) > 0,
        "two seeds, two images"
    );
    let again = sd
        .image_to_image(&requests[..1], RunOptions::default())
        .unwrap();
    assert_eq!(again[0].image.as_raw(), alone[0].image.as_raw());
}

#[test]
fn blended_inpainting_keeps_the_unmasked_latents_and_pixels() {
    let (_dir, sd) = folder(&TinyStableDiffusion::default());
    let mut r = inpaint("a window", 3);
    r.keep_unmasked = false;
    let denoised = sd
        .denoise(&[r.clone().into()], RunOptions::default())
        .unwrap();
    let original = sd.encode_image(&r.image).unwrap();
    // Latents are half the image size here: columns 8.. are unmasked.
    let kept = denoised.latents.i((.., .., .., 8..)).unwrap();
    let expected = original.i((.., .., .., 8..)).unwrap();
    let diff = (kept - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_keepdim(0)
        .unwrap();
    assert_eq!(
        diff.flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    let repainted = denoised.latents.i((.., .., .., ..8)).unwrap();
    let before = original.i((.., .., .., ..8)).unwrap();
    let moved = (repainted - before)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap();
    assert!(moved.max(0).unwrap().to_scalar::<f32>().unwrap() > 0.01);

    // With the default paste-back the unmasked pixels are the input's.
    r.keep_unmasked = true;
    let out = sd
        .inpaint(&[r.clone()], RunOptions::default())
        .unwrap()
        .remove(0)
        .image;
    for (x, y, p) in out.enumerate_pixels() {
        if x >= 16 {
            assert_eq!(p, r.image.get_pixel(x, y));
        }
    }
    assert!(
        out.enumerate_pixels()
            .any(|(x, y, p)| x < 16 && p != r.image.get_pixel(x, y))
    );
}

#[test]
fn the_inpainting_unet_runs_seeded_and_batched() {
    let (_dir, sd) = folder(&TinyStableDiffusion::inpainting());
    assert!(sd.is_inpainting());
    let mut second = inpaint("a door", 9);
    second.mask = left_mask(24);
    second.params.images = 2;
    let requests = [inpaint("a window", 3), second];
    let batched = sd.inpaint(&requests, RunOptions::default()).unwrap();
    assert_eq!(batched.len(), 3);
    let mut alone = Vec::new();
    for r in &requests {
        alone.extend(
            sd.inpaint(std::slice::from_ref(r), RunOptions::default())
                .unwrap(),
        );
    }
    for (b, a) in batched.iter().zip(&alone) {
        assert!(max_diff(&a.image, &b.image) <= 1, "seed {}", a.seed);
    }
    for (x, y, p) in batched[0].image.enumerate_pixels() {
        if x >= 16 {
            assert_eq!(p, requests[0].image.get_pixel(x, y));
        }
    }
    // The mask is an input of this UNet: another mask, another picture
    // even where both masks repaint.
    let mut wider = requests[0].clone();
    wider.mask = left_mask(24);
    let other = sd
        .inpaint(&[wider], RunOptions::default())
        .unwrap()
        .remove(0);
    let left = |img: &RgbImage| image::imageops::crop_imm(img, 0, 0, 16, 32).to_image();
    assert!(max_diff(&left(&other.image), &left(&batched[0].image)) > 0);
    // Text-to-image on an inpainting UNet is refused.
    let t2i = TextToImage {
        width: 32,
        height: 32,
        steps: 2,
        ..TextToImage::new("x")
    };
    assert!(matches!(
        sd.text_to_image(&[t2i], RunOptions::default()),
        Err(DiffusionError::InvalidInput { field: "model", .. })
    ));
}

#[test]
fn cancellation_stops_image_to_image_and_inpainting() {
    let (_dir, sd) = folder(&TinyStableDiffusion::default());
    for request in [
        DiffusionRequest::from(img2img("a", 1, 1.0)),
        DiffusionRequest::from(inpaint("a", 1)),
    ] {
        let token = CancellationToken::new();
        let mut steps = 0;
        let mut cancel_after_one = |_: StepProgress| {
            steps += 1;
            token.cancel();
        };
        let result = sd.generate(
            &[request],
            RunOptions {
                on_step: Some(&mut cancel_after_one),
                cancel: Some(token.clone()),
                on_preview: None,
                cancel_when: None,
                pause: None,
            },
        );
        assert_eq!(result.unwrap_err(), DiffusionError::Cancelled);
        assert_eq!(steps, 1);
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let (_dir, sd) = folder(&TinyStableDiffusion::default());
    let field = |r: DiffusionRequest| match sd.generate(&[r], RunOptions::default()) {
        Err(DiffusionError::InvalidInput { field, .. }) => field,
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    let mut wrong_size = img2img("a", 1, 0.5);
    wrong_size.params.width = 64;
    assert_eq!(field(wrong_size.into()), "image");
    for strength in [f64::NAN, -0.1, 1.5] {
        assert_eq!(field(img2img("a", 1, strength).into()), "strength");
    }
    let mut bad_mask = inpaint("a", 1);
    bad_mask.mask = GrayImage::new(32, 24);
    assert_eq!(field(bad_mask.into()), "mask");
    let mut odd = ImageToImage::new("a", RgbImage::new(36, 32), 0.5);
    odd.params.steps = 2;
    assert_eq!(field(odd.into()), "width");
    let mut no_steps = img2img("a", 1, 0.5);
    no_steps.params.steps = 0;
    assert_eq!(field(no_steps.into()), "steps");
    let mut nan = inpaint("a", 1);
    nan.params.guidance_scale = f64::NAN;
    assert_eq!(field(nan.into()), "guidance_scale");
    let mixed = sd.generate(
        &[img2img("a", 1, 1.0).into(), inpaint("a", 1).into()],
        RunOptions::default(),
    );
    assert!(matches!(
        mixed,
        Err(DiffusionError::InvalidInput {
            field: "requests",
            ..
        })
    ));

    // Input bytes: corrupt files and decompression bombs are refused.
    let limits = ImageLimits::default();
    let png = switchyard_image::encode(&picture(1).into(), ImageFormat::Png).unwrap();
    assert_eq!(
        switchyard_diffusion::decode_image(&png, &limits).unwrap(),
        picture(1)
    );
    assert!(matches!(
        switchyard_diffusion::decode_image(&png[..png.len() / 2], &limits),
        Err(DiffusionError::Image(_))
    ));
    let mut bomb = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bomb)
        .write_image(
            &vec![0u8; 9000 * 5000],
            9000,
            5000,
            image::ExtendedColorType::L8,
        )
        .unwrap();
    assert!(matches!(
        switchyard_diffusion::decode_mask(&bomb, &limits),
        Err(DiffusionError::Image(reason)) if reason.contains("9000x5000")
    ));
}
