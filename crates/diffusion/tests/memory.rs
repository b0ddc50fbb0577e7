//! Attention slicing, VAE slicing and tiling, and per-step previews, on a
//! tiny folder.

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::IndexOp;
use image::RgbImage;
use switchyard_diffusion::{
    AttentionSlicing, DiffusionError, LoadOptions, MemoryOptions, RunOptions, StableDiffusion,
    StepProgress, TextToImage, VaeTiling,
};
use switchyard_testkit::tiny::{self, TinyStableDiffusion};
use tempfile::TempDir;

fn folder() -> (TempDir, StableDiffusion) {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::default(), 11).unwrap();
    let sd = StableDiffusion::load(dir.path(), &LoadOptions::default()).unwrap();
    (dir, sd)
}

fn request(width: usize, height: usize, images: usize) -> TextToImage {
    TextToImage {
        width,
        height,
        steps: 2,
        seed: 3,
        images,
        guidance_scale: 2.0,
        ..TextToImage::new("a freight yard at night")
    }
}

fn raw(images: Vec<RgbImage>) -> Vec<Vec<u8>> {
    images.into_iter().map(RgbImage::into_raw).collect()
}

#[test]
fn attention_slicing_gives_the_same_images_and_a_zero_slice_is_refused() {
    let (_dir, mut sd) = folder();
    let run = |sd: &StableDiffusion| {
        let out = sd
            .text_to_image(&[request(32, 32, 2)], RunOptions::default())
            .unwrap();
        raw(out.into_iter().map(|g| g.image).collect())
    };
    let whole = run(&sd);
    for slicing in [
        AttentionSlicing::Auto,
        AttentionSlicing::Max,
        AttentionSlicing::Size(3),
    ] {
        let options = MemoryOptions {
            attention_slicing: Some(slicing),
            ..MemoryOptions::default()
        };
        sd.set_memory_options(options).unwrap();
        assert_eq!(sd.memory_options(), options);
        let sliced = run(&sd);
        for (a, b) in whole.iter().zip(&sliced) {
            let worst = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
            assert!(worst <= 1, "{slicing:?} changed a pixel by {worst}");
        }
    }
    let zero = MemoryOptions {
        attention_slicing: Some(AttentionSlicing::Size(0)),
        ..MemoryOptions::default()
    };
    assert!(matches!(
        sd.set_memory_options(zero),
        Err(DiffusionError::InvalidInput { .. })
    ));
    assert_ne!(sd.memory_options(), zero, "a refused option is not kept");
}

#[test]
fn vae_slicing_gives_the_same_images() {
    let (_dir, mut sd) = folder();
    let run = |sd: &StableDiffusion| {
        let out = sd
            .text_to_image(&[request(32, 32, 3)], RunOptions::default())
            .unwrap();
        raw(out.into_iter().map(|g| g.image).collect())
    };
    let whole = run(&sd);
    sd.set_memory_options(MemoryOptions {
        vae_slicing: true,
        ..MemoryOptions::default()
    })
    .unwrap();
    let sliced = run(&sd);
    for (a, b) in whole.iter().zip(&sliced) {
        let worst = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        assert!(worst <= 1, "slicing changed a pixel by {worst}");
    }
}

#[test]
fn a_latent_that_fits_one_tile_decodes_exactly_as_without_tiling() {
    let (_dir, mut sd) = folder();
    let latents = sd
        .denoise(&[request(32, 32, 2).into()], RunOptions::default())
        .unwrap()
        .latents;
    let plain = raw(sd.decode_latents(&latents).unwrap());
    sd.set_memory_options(MemoryOptions {
        vae_tiling: Some(VaeTiling {
            tile: 16,
            overlap: 4,
        }),
        ..MemoryOptions::default()
    })
    .unwrap();
    assert_eq!(raw(sd.decode_latents(&latents).unwrap()), plain);
}

#[test]
fn tiled_decoding_stitches_tiles_and_blends_their_overlaps() {
    let (_dir, mut sd) = folder();
    // 64 x 48 pixels = 32 x 24 latents: 3 x 2 tiles of 16 with overlap 4.
    let latents = sd
        .denoise(&[request(64, 48, 1).into()], RunOptions::default())
        .unwrap()
        .latents;
    let corner = sd
        .decode_latents(&latents.i((.., .., ..16, ..16)).unwrap())
        .unwrap()
        .remove(0);
    let tiling = VaeTiling {
        tile: 16,
        overlap: 4,
    };
    sd.set_memory_options(MemoryOptions {
        vae_tiling: Some(tiling),
        vae_slicing: true,
        ..MemoryOptions::default()
    })
    .unwrap();
    let tiled = sd.decode_latents(&latents).unwrap().remove(0);
    assert_eq!(tiled.dimensions(), (64, 48));
    assert_eq!(
        sd.decode_latents(&latents).unwrap().remove(0),
        tiled,
        "deterministic"
    );
    // Pixels only the top-left tile covers (before the next tiles start at
    // latent 12 across and 8 down, i.e. pixels 24 and 16) are that tile's.
    for y in 0..16 {
        for x in 0..24 {
            assert_eq!(tiled.get_pixel(x, y), corner.get_pixel(x, y), "({x}, {y})");
        }
    }
    // Where tiles overlap the result is blended, not one tile's copy.
    let differs = (24..32).any(|x| tiled.get_pixel(x, 4) != corner.get_pixel(x, 4));
    assert!(differs, "the overlap is blended with the next tile");

    let mut bad = |tile, overlap| {
        sd.set_memory_options(MemoryOptions {
            vae_tiling: Some(VaeTiling { tile, overlap }),
            ..MemoryOptions::default()
        })
    };
    assert!(matches!(
        bad(2, 1),
        Err(DiffusionError::InvalidInput { .. })
    ));
    assert!(matches!(
        bad(16, 0),
        Err(DiffusionError::InvalidInput { .. })
    ));
    assert!(matches!(
        bad(16, 9),
        Err(DiffusionError::InvalidInput { .. })
    ));
    assert_eq!(
        sd.memory_options().vae_tiling,
        Some(tiling),
        "a refused setting changes nothing"
    );
}

#[test]
fn previews_arrive_every_step_for_every_image() {
    let (_dir, sd) = folder();
    let mut seen: Vec<(StepProgress, Vec<(u32, u32)>)> = Vec::new();
    let mut on_preview = |p: StepProgress, images: &[RgbImage]| {
        seen.push((p, images.iter().map(RgbImage::dimensions).collect()));
    };
    sd.text_to_image(
        &[request(32, 32, 2), request(32, 32, 1)],
        RunOptions {
            on_preview: Some(&mut on_preview),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(seen.len(), 2);
    for (i, (progress, sizes)) in seen.iter().enumerate() {
        assert_eq!(
            *progress,
            StepProgress {
                step: i + 1,
                total: 2
            }
        );
        assert_eq!(
            sizes,
            &vec![(16, 16); 3],
            "latent-sized previews of 3 images"
        );
    }
}
