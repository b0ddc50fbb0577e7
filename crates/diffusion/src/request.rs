//! Requests, their validation, and the key that says which can share a batch.

use crate::error::{Result, invalid};
use crate::scheduler::SchedulerKind;

/// The largest side accepted, in pixels.
pub const MAX_SIDE: usize = 4096;
/// The most images one request may ask for.
pub const MAX_IMAGES: usize = 16;

/// A text-to-image request.
#[derive(Debug, Clone, PartialEq)]
pub struct TextToImage {
    /// What to draw.
    pub prompt: String,
    /// What to steer away from (the unconditional prompt of guidance).
    pub negative_prompt: String,
    /// Width in pixels, a multiple of 8.
    pub width: usize,
    /// Height in pixels, a multiple of 8.
    pub height: usize,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale; at or below 1 guidance is skipped
    /// (one UNet pass per step, as SD-Turbo wants).
    pub guidance_scale: f64,
    /// Seed of the first image's noise; image `k` uses `seed + k`.
    pub seed: u64,
    /// Images for this prompt.
    pub images: usize,
    /// The sampler; `None` uses the folder's default.
    pub scheduler: Option<SchedulerKind>,
}

impl Default for TextToImage {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            width: 512,
            height: 512,
            steps: 30,
            guidance_scale: 7.5,
            seed: 0,
            images: 1,
            scheduler: None,
        }
    }
}

/// Requests with equal keys run as one UNet batch: same size, steps,
/// sampler, and guidance on or off (the scale itself may differ per image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchKey {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Denoising steps.
    pub steps: usize,
    /// The sampler.
    pub scheduler: SchedulerKind,
    /// Whether classifier-free guidance runs (doubling the UNet batch).
    pub guided: bool,
}

impl TextToImage {
    /// A request for `prompt` with the defaults (512 x 512, 30 steps,
    /// guidance 7.5, one image, seed 0).
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            ..Self::default()
        }
    }

    /// The batch key, given the model's default sampler.
    pub fn batch_key(&self, default: SchedulerKind) -> BatchKey {
        BatchKey {
            width: self.width,
            height: self.height,
            steps: self.steps,
            scheduler: self.scheduler.unwrap_or(default),
            guided: self.guidance_scale > 1.0,
        }
    }

    /// The batcher's cost of this request: pixels x steps x images, doubled
    /// with guidance (two UNet rows per image).
    pub fn cost(&self) -> u64 {
        let rows = if self.guidance_scale > 1.0 { 2 } else { 1 };
        (self.width * self.height * self.steps * self.images * rows) as u64
    }

    /// Checks every field; `vae_scale` is the model's pixels per latent.
    pub fn validate(&self, vae_scale: usize) -> Result<()> {
        let multiple = vae_scale.max(8);
        for (field, side) in [("width", self.width), ("height", self.height)] {
            if side == 0 || side % multiple != 0 || side > MAX_SIDE {
                return Err(invalid(
                    field,
                    format!("{side} must be a positive multiple of {multiple} up to {MAX_SIDE}"),
                ));
            }
        }
        if self.steps == 0 {
            return Err(invalid("steps", "must be at least 1"));
        }
        if !self.guidance_scale.is_finite() || self.guidance_scale < 0.0 {
            return Err(invalid(
                "guidance_scale",
                format!("{} must be a finite number >= 0", self.guidance_scale),
            ));
        }
        if self.images == 0 || self.images > MAX_IMAGES {
            return Err(invalid("images", format!("must be 1..={MAX_IMAGES}")));
        }
        Ok(())
    }
}
