//! Helpers shared by the diffusion crate's end-to-end tests.
// Each test file uses a subset.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use image::RgbImage;
use switchyard_diffusion::{GeneratedImage, RunOptions, StableDiffusion, TextToImage};

/// A small, quick text-to-image request: 32 x 32, 3 steps, guidance 5.
pub(crate) fn request(prompt: &str, seed: u64) -> TextToImage {
    TextToImage {
        width: 32,
        height: 32,
        steps: 3,
        seed,
        guidance_scale: 5.0,
        ..TextToImage::new(prompt)
    }
}

/// Text-to-image with the default run options.
pub(crate) fn run(sd: &StableDiffusion, requests: &[TextToImage]) -> Vec<GeneratedImage> {
    sd.text_to_image(requests, RunOptions::default()).unwrap()
}

/// The largest per-channel difference between two images.
pub(crate) fn max_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

/// Rewrites the JSON file at `path` through `edit`.
pub(crate) fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, value.to_string()).unwrap();
}
