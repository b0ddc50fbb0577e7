//! ControlNet end to end: tiny random ControlNets written in diffusers'
//! `ControlNetModel` layout, loaded by the real loader, attached to tiny
//! pipelines and run through every pipeline.

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use image::{GrayImage, Luma, Rgb, RgbImage};
use switchyard_diffusion::{
    AttentionSlicing, Control, DiffusionError, DiffusionRequest, ImageToImage, Inpaint,
    LoadOptions, MemoryOptions, RunOptions, StableDiffusion, TextToImage,
};
use switchyard_testkit::tiny::{self, TinyControlNet, TinyStableDiffusion};
use tempfile::TempDir;

/// A pipeline with the ControlNets `nets` (name, spec, seed) attached.
fn pipeline(
    spec: &TinyStableDiffusion,
    nets: &[(&str, TinyControlNet, u64)],
) -> (TempDir, StableDiffusion) {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(&dir.path().join("sd"), spec, 11).unwrap();
    let mut sd = StableDiffusion::load(&dir.path().join("sd"), &LoadOptions::default()).unwrap();
    for (name, net, seed) in nets {
        let at = dir.path().join(name);
        tiny::write_controlnet(&at, spec, net, *seed).unwrap();
        sd.load_controlnet(name, &at).unwrap();
    }
    (dir, sd)
}

/// A picture with edges: diagonal stripes.
fn edges(seed: u32) -> RgbImage {
    RgbImage::from_fn(32, 32, |x, y| {
        if (x + y + seed) % 8 < 2 {
            Rgb([255, 255, 255])
        } else {
            Rgb([0, (x * 7) as u8, (y * 5) as u8])
        }
    })
}

fn request(seed: u64, controls: Vec<Control>) -> TextToImage {
    TextToImage {
        width: 32,
        height: 32,
        steps: 3,
        seed,
        guidance_scale: 5.0,
        controls,
        ..TextToImage::new("a red train")
    }
}

fn control(name: &str, scale: f64, image: RgbImage) -> Control {
    Control {
        scale,
        ..Control::new(name, image)
    }
}

/// The denoised latents, as bits.
fn latents(sd: &StableDiffusion, requests: &[DiffusionRequest]) -> Vec<u32> {
    let out = sd.denoise(requests, RunOptions::default()).unwrap();
    out.latents
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn worst(a: &[u32], b: &[u32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f32::from_bits(*x) - f32::from_bits(*y)).abs())
        .fold(0.0, f32::max)
}

fn t2i(r: TextToImage) -> DiffusionRequest {
    r.into()
}

#[test]
fn scale_zero_is_exactly_the_plain_pipeline_and_a_scale_changes_it() {
    let (_dir, sd) = pipeline(
        &TinyStableDiffusion::default(),
        &[("canny", TinyControlNet::default(), 3)],
    );
    let plain = latents(&sd, &[t2i(request(5, vec![]))]);
    let zero = latents(
        &sd,
        &[t2i(request(5, vec![control("canny", 0.0, edges(0))]))],
    );
    assert_eq!(plain, zero, "scale 0 must leave the output bit for bit");
    let full = latents(
        &sd,
        &[t2i(request(5, vec![control("canny", 1.0, edges(0))]))],
    );
    assert!(
        worst(&plain, &full) > 1e-3,
        "a ControlNet at scale 1 changes the latents"
    );
    let other = latents(
        &sd,
        &[t2i(request(5, vec![control("canny", 1.0, edges(3))]))],
    );
    assert!(
        worst(&full, &other) > 1e-4,
        "another control image, another result"
    );
    let again = latents(
        &sd,
        &[t2i(request(5, vec![control("canny", 1.0, edges(0))]))],
    );
    assert_eq!(full, again, "deterministic");
}

#[test]
fn sliced_attention_in_the_controlnet_and_unet_keeps_the_result() {
    let spec = TinyStableDiffusion {
        cross_attention: vec![true, true],
        ..TinyStableDiffusion::default()
    };
    let (_dir, mut sd) = pipeline(&spec, &[("canny", TinyControlNet::default(), 3)]);
    let run = |sd: &StableDiffusion| {
        latents(
            sd,
            &[
                t2i(request(5, vec![control("canny", 1.0, edges(0))])),
                t2i(request(6, vec![control("canny", 0.5, edges(2))])),
            ],
        )
    };
    let whole = run(&sd);
    for slicing in [AttentionSlicing::Max, AttentionSlicing::Size(3)] {
        sd.set_memory_options(MemoryOptions {
            attention_slicing: Some(slicing),
            ..MemoryOptions::default()
        })
        .unwrap();
        let sliced = run(&sd);
        assert!(
            worst(&whole, &sliced) <= 1e-5,
            "{slicing:?} changed the latents by {}",
            worst(&whole, &sliced)
        );
    }
}

#[test]
fn several_controlnets_add_their_residuals() {
    let (_dir, sd) = pipeline(
        &TinyStableDiffusion::default(),
        &[
            ("canny", TinyControlNet::default(), 3),
            ("depth", TinyControlNet::default(), 4),
        ],
    );
    assert_eq!(sd.controlnet_names(), ["canny", "depth"]);
    let depth = latents(
        &sd,
        &[t2i(request(5, vec![control("depth", 0.7, edges(1))]))],
    );
    // A ControlNet at scale 0 adds exact zeros to the other's residuals.
    let both_one_off = latents(
        &sd,
        &[t2i(request(
            5,
            vec![
                control("canny", 0.0, edges(0)),
                control("depth", 0.7, edges(1)),
            ],
        ))],
    );
    assert_eq!(depth, both_one_off);
    let both = latents(
        &sd,
        &[t2i(request(
            5,
            vec![
                control("canny", 0.8, edges(0)),
                control("depth", 0.7, edges(1)),
            ],
        ))],
    );
    assert!(worst(&depth, &both) > 1e-4);
}

#[test]
fn batched_requests_with_their_own_scales_and_images_equal_each_alone() {
    let (_dir, sd) = pipeline(
        &TinyStableDiffusion::default(),
        &[("canny", TinyControlNet::default(), 3)],
    );
    let requests = [
        request(5, vec![control("canny", 1.0, edges(0))]),
        TextToImage {
            images: 2,
            ..request(9, vec![control("canny", 0.4, edges(5))])
        },
    ];
    let batched = sd.text_to_image(&requests, RunOptions::default()).unwrap();
    let mut alone = Vec::new();
    for r in &requests {
        alone.extend(
            sd.text_to_image(std::slice::from_ref(r), RunOptions::default())
                .unwrap(),
        );
    }
    assert_eq!(batched.len(), 3);
    for (b, a) in batched.iter().zip(&alone) {
        let diff = b
            .image
            .as_raw()
            .iter()
            .zip(a.image.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap();
        assert!(
            diff <= 1,
            "seed {}: batched differs from alone by {diff}",
            a.seed
        );
    }
}

#[test]
fn works_with_image_to_image_and_both_inpainting_kinds() {
    let picture = edges(2);
    let mask = GrayImage::from_fn(32, 32, |x, _| Luma([if x < 16 { 255 } else { 0 }]));
    for spec in [
        TinyStableDiffusion::default(),
        TinyStableDiffusion::inpainting(),
    ] {
        let (_dir, sd) = pipeline(&spec, &[("canny", TinyControlNet::default(), 3)]);
        let params = |controls| TextToImage {
            width: 32,
            height: 32,
            steps: 4,
            seed: 8,
            guidance_scale: 5.0,
            controls,
            ..TextToImage::new("a train")
        };
        let mut kinds: Vec<Box<dyn Fn(Vec<Control>) -> DiffusionRequest>> =
            vec![Box::new(|controls| {
                Inpaint {
                    params: params(controls),
                    ..Inpaint::new("", picture.clone(), mask.clone())
                }
                .into()
            })];
        if !sd.is_inpainting() {
            kinds.push(Box::new(|controls| {
                ImageToImage {
                    params: params(controls),
                    ..ImageToImage::new("", picture.clone(), 0.75)
                }
                .into()
            }));
        }
        for make in &kinds {
            let plain = latents(&sd, &[make(vec![])]);
            let zero = latents(&sd, &[make(vec![control("canny", 0.0, edges(0))])]);
            assert_eq!(plain, zero, "scale 0 is the plain pipeline");
            let full = latents(&sd, &[make(vec![control("canny", 1.0, edges(0))])]);
            assert!(worst(&plain, &full) > 1e-4, "scale 1 changes it");
        }
    }
}

#[test]
fn control_images_of_another_size_are_resized_and_bgr_models_get_bgr() {
    let spec = TinyStableDiffusion::default();
    let bgr = TinyControlNet {
        bgr: true,
        ..TinyControlNet::default()
    };
    // The same seed writes the same tensors: only the channel order differs.
    let (_dir, sd) = pipeline(
        &spec,
        &[("rgb", TinyControlNet::default(), 3), ("bgr", bgr, 3)],
    );
    let image = edges(4);
    let swapped = RgbImage::from_fn(32, 32, |x, y| {
        let [r, g, b] = image.get_pixel(x, y).0;
        Rgb([b, g, r])
    });
    let via_rgb = latents(
        &sd,
        &[t2i(request(5, vec![control("rgb", 1.0, image.clone())]))],
    );
    let via_bgr = latents(&sd, &[t2i(request(5, vec![control("bgr", 1.0, swapped)]))]);
    assert_eq!(via_rgb, via_bgr);

    let resized = switchyard_image::resize(
        &image::DynamicImage::ImageRgb8(image.clone()),
        32,
        32,
        switchyard_image::Filter::Lanczos3,
    )
    .unwrap();
    assert_eq!(resized.to_rgb8(), image, "same size: unchanged");
    let big = image::imageops::resize(&image, 64, 48, image::imageops::FilterType::Nearest);
    let expected = switchyard_image::resize(
        &image::DynamicImage::ImageRgb8(big.clone()),
        32,
        32,
        switchyard_image::Filter::Lanczos3,
    )
    .unwrap()
    .to_rgb8();
    let from_big = latents(&sd, &[t2i(request(5, vec![control("rgb", 1.0, big)]))]);
    let from_expected = latents(&sd, &[t2i(request(5, vec![control("rgb", 1.0, expected)]))]);
    assert_eq!(from_big, from_expected);
}

#[test]
fn global_pooling_controlnets_run() {
    let pooled = TinyControlNet {
        global_pool: true,
        ..TinyControlNet::default()
    };
    let (_dir, sd) = pipeline(&TinyStableDiffusion::default(), &[("shuffle", pooled, 3)]);
    let plain = latents(&sd, &[t2i(request(5, vec![]))]);
    let pooled = latents(
        &sd,
        &[t2i(request(5, vec![control("shuffle", 1.0, edges(0))]))],
    );
    assert!(worst(&plain, &pooled) > 1e-4);
}

#[test]
fn mismatches_and_bad_requests_are_typed_errors() {
    let (dir, mut sd) = pipeline(
        &TinyStableDiffusion::default(),
        &[("canny", TinyControlNet::default(), 3)],
    );
    // Unknown name.
    let unknown = sd.denoise(
        &[t2i(request(5, vec![control("depth", 1.0, edges(0))]))],
        RunOptions::default(),
    );
    assert!(matches!(
        unknown,
        Err(DiffusionError::InvalidInput {
            field: "controls",
            ..
        })
    ));
    // Requests of one batch using different ControlNets.
    let mixed = sd.denoise(
        &[
            t2i(request(5, vec![control("canny", 1.0, edges(0))])),
            t2i(request(6, vec![])),
        ],
        RunOptions::default(),
    );
    assert!(matches!(mixed, Err(DiffusionError::InvalidInput { .. })));
    // A non-finite scale, an empty image.
    for bad in [
        control("canny", f64::NAN, edges(0)),
        control("canny", 1.0, RgbImage::new(0, 0)),
        control("", 1.0, edges(0)),
    ] {
        let r = sd.denoise(&[t2i(request(5, vec![bad]))], RunOptions::default());
        assert!(matches!(
            r,
            Err(DiffusionError::InvalidInput {
                field: "controls",
                ..
            })
        ));
    }
    // A ControlNet of another UNet does not attach, and changes nothing.
    let other = TinyStableDiffusion {
        unet_channels: vec![32, 96],
        ..TinyStableDiffusion::default()
    };
    let at = dir.path().join("other");
    tiny::write_controlnet(&at, &other, &TinyControlNet::default(), 1).unwrap();
    assert!(matches!(
        sd.load_controlnet("other", &at),
        Err(DiffusionError::Config { .. })
    ));
    // Image embedding at the wrong scale for this VAE.
    let coarse = TinyControlNet {
        conditioning_channels: vec![16, 32, 64],
        ..TinyControlNet::default()
    };
    let at = dir.path().join("coarse");
    tiny::write_controlnet(&at, &TinyStableDiffusion::default(), &coarse, 1).unwrap();
    assert!(matches!(
        sd.load_controlnet("coarse", &at),
        Err(DiffusionError::Config { .. })
    ));
    assert_eq!(sd.controlnet_names(), ["canny"]);
    // Missing weights are an I/O error naming the file.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(
        dir.path().join("canny/config.json"),
        empty.join("config.json"),
    )
    .unwrap();
    assert!(matches!(
        sd.load_controlnet("empty", &empty),
        Err(DiffusionError::Io { .. })
    ));
    assert!(sd.detach_controlnet("canny"));
    assert!(sd.controlnet_names().is_empty());
}

#[test]
fn offloaded_controlnets_are_released_after_a_run_and_rebuilt_the_same() {
    let (_dir, mut sd) = pipeline(
        &TinyStableDiffusion::default(),
        &[("canny", TinyControlNet::default(), 3)],
    );
    let r = request(4, vec![control("canny", 0.8, edges(1))]);
    let kept = sd
        .text_to_image(std::slice::from_ref(&r), RunOptions::default())
        .unwrap();
    assert!(sd.residency().controlnets);
    sd.set_offload(switchyard_diffusion::Offload::Always);
    let first = sd
        .text_to_image(std::slice::from_ref(&r), RunOptions::default())
        .unwrap();
    assert!(!sd.residency().controlnets, "released after the run");
    let rebuilt = sd
        .text_to_image(std::slice::from_ref(&r), RunOptions::default())
        .unwrap();
    assert_eq!(first[0].image.as_raw(), kept[0].image.as_raw());
    assert_eq!(rebuilt[0].image.as_raw(), kept[0].image.as_raw());
    sd.set_offload(switchyard_diffusion::Offload::Never);
    sd.text_to_image(std::slice::from_ref(&r), RunOptions::default())
        .unwrap();
    assert!(sd.residency().controlnets);
    assert!(sd.release_weights());
    assert!(!sd.residency().controlnets && !sd.residency().vae);
}
