//! Requests, their validation, and the key that says which can share a batch.

use image::{GrayImage, RgbImage};

use crate::error::{Result, invalid};
use crate::scheduler::SchedulerKind;

/// The largest side accepted, in pixels.
pub const MAX_SIDE: usize = 4096;
/// The most images one request may ask for.
pub const MAX_IMAGES: usize = 16;
/// The most ControlNets one request may use at once.
pub const MAX_CONTROLS: usize = 8;

/// One ControlNet's guidance for a request: which attached ControlNet, its
/// conditioning image, and how strongly its residuals count.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    /// The name the ControlNet was attached under
    /// ([`crate::StableDiffusion::attach_controlnet`]).
    pub controlnet: String,
    /// The conditioning image (edges, depth map, pose, ...); resized to the
    /// request's size with Lanczos3 when it differs, as diffusers does.
    pub image: RgbImage,
    /// The conditioning scale: the ControlNet's residuals are multiplied
    /// by it (0 leaves the plain pipeline's output, 1 is full strength).
    pub scale: f64,
}

impl Control {
    /// Guidance by the ControlNet attached as `controlnet` from `image`, at
    /// scale 1.
    pub fn new(controlnet: impl Into<String>, image: RgbImage) -> Self {
        Self {
            controlnet: controlnet.into(),
            image,
            scale: 1.0,
        }
    }
}

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
    /// ControlNets guiding every step, their residuals summed (empty: none).
    pub controls: Vec<Control>,
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
            controls: Vec::new(),
        }
    }
}

/// Which pipeline a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// From noise.
    TextToImage,
    /// From a noised input image.
    ImageToImage,
    /// Repaint the masked part of an input image.
    Inpaint,
}

/// Requests with equal keys run as one UNet batch: same pipeline, size,
/// steps, first step, sampler, and guidance on or off (the scale itself may
/// differ per image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchKey {
    /// The pipeline.
    pub mode: Mode,
    /// The step the walk starts at: 0 from noise, later for image-to-image
    /// and inpainting below strength 1.
    pub first_step: usize,
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
    /// The ControlNets used, in order: a hash of their names, 0 for none
    /// (the scales and images may differ per request).
    pub controls: u64,
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
            mode: Mode::TextToImage,
            first_step: 0,
            width: self.width,
            height: self.height,
            steps: self.steps,
            scheduler: self.scheduler.unwrap_or(default),
            guided: self.guidance_scale > 1.0,
            controls: controls_hash(&self.controls),
        }
    }

    /// The batcher's cost of this request: pixels x steps x images, doubled
    /// with guidance (two UNet rows per image), and half as much again for
    /// each ControlNet (an encoder half the UNet's size).
    pub fn cost(&self) -> u64 {
        self.cost_of_steps(self.steps)
    }

    fn cost_of_steps(&self, steps: usize) -> u64 {
        let rows = if self.guidance_scale > 1.0 { 2 } else { 1 };
        let plain = self.width * self.height * steps.max(1) * self.images * rows;
        (plain * (2 + self.controls.len()) / 2) as u64
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
        if self.controls.len() > MAX_CONTROLS {
            return Err(invalid(
                "controls",
                format!(
                    "{} ControlNets; at most {MAX_CONTROLS}",
                    self.controls.len()
                ),
            ));
        }
        for control in &self.controls {
            if control.controlnet.is_empty() {
                return Err(invalid("controls", "a control names no ControlNet"));
            }
            if !control.scale.is_finite() {
                return Err(invalid(
                    "controls",
                    format!(
                        "scale {} of {:?} is not finite",
                        control.scale, control.controlnet
                    ),
                ));
            }
            let (w, h) = control.image.dimensions();
            if w == 0 || h == 0 || (w as usize) > MAX_SIDE || (h as usize) > MAX_SIDE {
                return Err(invalid(
                    "controls",
                    format!(
                        "the image of {:?} is {w}x{h}; sides must be 1..={MAX_SIDE}",
                        control.controlnet
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A hash of the names in order (std's `str` hashing closes each name, so
/// `["ab", "c"]` and `["a", "bc"]` differ); never 0, which means none.
fn controls_hash(controls: &[Control]) -> u64 {
    use std::hash::{Hash, Hasher};
    if controls.is_empty() {
        return 0;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for control in controls {
        control.controlnet.hash(&mut hasher);
    }
    hasher.finish() | 1
}

/// An image-to-image request: the input image is encoded, noised to
/// `strength` and denoised under the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageToImage {
    /// Prompt, size (must equal the image's), steps, guidance, seed, images.
    pub params: TextToImage,
    /// The starting image.
    pub image: RgbImage,
    /// How much to change it, 0..=1: the last `floor(steps x strength)`
    /// steps run (diffusers' rule). 0 returns the input through the VAE; 1
    /// keeps only its composition.
    pub strength: f64,
}

impl ImageToImage {
    /// A request to redraw `image` under `prompt` at `strength`, with the
    /// other defaults of [`TextToImage`] and the image's size.
    pub fn new(prompt: impl Into<String>, image: RgbImage, strength: f64) -> Self {
        Self {
            params: sized(prompt.into(), &image),
            image,
            strength,
        }
    }
}

/// An inpainting request: the masked part of the image is repainted, the
/// rest kept. With an inpainting UNet (9 input channels) the mask and the
/// masked image condition every step; with an ordinary UNet the unmasked
/// latents are blended back after every step.
#[derive(Debug, Clone, PartialEq)]
pub struct Inpaint {
    /// Prompt, size (must equal the image's), steps, guidance, seed, images.
    pub params: TextToImage,
    /// The image to repaint.
    pub image: RgbImage,
    /// White (>= 128) where to repaint, black where to keep; the image's
    /// size. A latent cell is repainted when any of its pixels is.
    pub mask: GrayImage,
    /// As for [`ImageToImage::strength`]; at 1 (the default) the masked
    /// region starts from pure noise.
    pub strength: f64,
    /// Paste the original pixels back outside the mask after decoding, so
    /// the kept region is exactly the input (the VAE round trip otherwise
    /// shifts it slightly). Default on.
    pub keep_unmasked: bool,
}

impl Inpaint {
    /// A request to repaint the white part of `mask` in `image` under
    /// `prompt`, at strength 1, keeping the unmasked pixels.
    pub fn new(prompt: impl Into<String>, image: RgbImage, mask: GrayImage) -> Self {
        Self {
            params: sized(prompt.into(), &image),
            image,
            mask,
            strength: 1.0,
            keep_unmasked: true,
        }
    }
}

fn sized(prompt: String, image: &RgbImage) -> TextToImage {
    TextToImage {
        width: image.width() as usize,
        height: image.height() as usize,
        ..TextToImage::new(prompt)
    }
}

/// Any request the diffusion pipelines run.
#[derive(Debug, Clone, PartialEq)]
pub enum DiffusionRequest {
    /// From noise.
    TextToImage(TextToImage),
    /// From an image.
    ImageToImage(ImageToImage),
    /// Repaint a masked region.
    Inpaint(Inpaint),
}

impl From<TextToImage> for DiffusionRequest {
    fn from(r: TextToImage) -> Self {
        Self::TextToImage(r)
    }
}

impl From<ImageToImage> for DiffusionRequest {
    fn from(r: ImageToImage) -> Self {
        Self::ImageToImage(r)
    }
}

impl From<Inpaint> for DiffusionRequest {
    fn from(r: Inpaint) -> Self {
        Self::Inpaint(r)
    }
}

/// The first of `steps` steps that runs at `strength`: the last
/// `floor(steps x strength)` run, as in diffusers.
pub(crate) fn first_step(steps: usize, strength: f64) -> usize {
    let run = ((steps as f64 * strength).floor() as usize).min(steps);
    steps - run
}

impl DiffusionRequest {
    /// Prompt, size, steps, guidance, seed and images.
    pub fn params(&self) -> &TextToImage {
        match self {
            Self::TextToImage(r) => r,
            Self::ImageToImage(r) => &r.params,
            Self::Inpaint(r) => &r.params,
        }
    }

    /// The pipeline it runs.
    pub fn mode(&self) -> Mode {
        match self {
            Self::TextToImage(_) => Mode::TextToImage,
            Self::ImageToImage(_) => Mode::ImageToImage,
            Self::Inpaint(_) => Mode::Inpaint,
        }
    }

    /// The strength (1 for text-to-image).
    pub fn strength(&self) -> f64 {
        match self {
            Self::TextToImage(_) => 1.0,
            Self::ImageToImage(r) => r.strength,
            Self::Inpaint(r) => r.strength,
        }
    }

    /// The input image, if any.
    pub fn image(&self) -> Option<&RgbImage> {
        match self {
            Self::TextToImage(_) => None,
            Self::ImageToImage(r) => Some(&r.image),
            Self::Inpaint(r) => Some(&r.image),
        }
    }

    /// The batch key, given the model's default sampler.
    pub fn batch_key(&self, default: SchedulerKind) -> BatchKey {
        let params = self.params();
        BatchKey {
            mode: self.mode(),
            first_step: first_step(params.steps, self.strength()),
            ..params.batch_key(default)
        }
    }

    /// The batcher's cost: pixels x steps that run x images, doubled with
    /// guidance.
    pub fn cost(&self) -> u64 {
        let params = self.params();
        params.cost_of_steps(params.steps - first_step(params.steps, self.strength()))
    }

    /// Checks every field; `vae_scale` is the model's pixels per latent.
    pub fn validate(&self, vae_scale: usize) -> Result<()> {
        let params = self.params();
        params.validate(vae_scale)?;
        let strength = self.strength();
        if !(0.0..=1.0).contains(&strength) {
            return Err(invalid("strength", format!("{strength} must lie in 0..=1")));
        }
        let size = (params.width as u32, params.height as u32);
        if let Some(image) = self.image()
            && image.dimensions() != size
        {
            let (w, h) = image.dimensions();
            return Err(invalid(
                "image",
                format!("is {w}x{h} but the request asks {}x{}", size.0, size.1),
            ));
        }
        if let Self::Inpaint(r) = self
            && r.mask.dimensions() != size
        {
            let (w, h) = r.mask.dimensions();
            return Err(invalid(
                "mask",
                format!("is {w}x{h} but the image is {}x{}", size.0, size.1),
            ));
        }
        Ok(())
    }
}
