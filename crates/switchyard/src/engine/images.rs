//! Image generation requests (text-to-image, image-to-image, inpainting)
//! and how their settings resolve into the diffusion crate's requests.

use image::{GrayImage, RgbImage};
use switchyard_diffusion::{
    DiffusionError, DiffusionRequest, ImageToImage, Inpaint, SchedulerKind, TextToImage,
};

use crate::config::{Defaults, ModelKind};
use crate::engine::error::{EngineError, Result};

/// Steps when neither the request nor the model says.
pub const DEFAULT_STEPS: usize = 30;
/// Guidance scale when neither the request nor the model says.
pub const DEFAULT_GUIDANCE_SCALE: f64 = 7.5;
/// Side of a text-to-image picture when neither the request nor the model
/// says.
pub const DEFAULT_SIDE: usize = 512;
/// Image-to-image strength when neither the request nor the model says
/// (diffusers' default; inpainting defaults to 1).
pub const DEFAULT_STRENGTH: f64 = 0.8;

/// What a diffusion request starts from.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ImageInput {
    /// Seeded noise: text-to-image.
    #[default]
    Noise,
    /// This picture, noised to the strength: image-to-image.
    Image(RgbImage),
    /// Repaint `image` where `mask` is white: inpainting.
    Inpaint {
        /// The picture.
        image: RgbImage,
        /// White where to repaint, black where to keep; the picture's size.
        mask: GrayImage,
    },
}

impl ImageInput {
    /// The model kind that serves it.
    pub fn kind(&self) -> ModelKind {
        match self {
            ImageInput::Noise => ModelKind::TextToImage,
            ImageInput::Image(_) => ModelKind::ImageToImage,
            ImageInput::Inpaint { .. } => ModelKind::Inpainting,
        }
    }

    fn size(&self) -> Option<(usize, usize)> {
        let image = match self {
            ImageInput::Noise => return None,
            ImageInput::Image(image) | ImageInput::Inpaint { image, .. } => image,
        };
        Some((image.width() as usize, image.height() as usize))
    }
}

/// Image generation settings; `None` takes the model's default from the
/// registry, then the input image's size (for width and height), then the
/// engine's ([`DEFAULT_SIDE`], [`DEFAULT_STEPS`],
/// [`DEFAULT_GUIDANCE_SCALE`], [`DEFAULT_STRENGTH`], seed 0, one image).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageOptions {
    /// What to steer away from.
    pub negative_prompt: Option<String>,
    /// Width in pixels, a multiple of 8.
    pub width: Option<usize>,
    /// Height in pixels, a multiple of 8.
    pub height: Option<usize>,
    /// Denoising steps.
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (at or below 1: no guidance).
    pub guidance_scale: Option<f64>,
    /// How far image-to-image and inpainting noise the input (0..=1).
    pub strength: Option<f64>,
    /// Seed of the first image; image `k` uses `seed + k`.
    pub seed: Option<u64>,
    /// Images for the prompt.
    pub images: Option<usize>,
    /// The sampler; `None` takes the model folder's.
    pub scheduler: Option<SchedulerKind>,
}

impl ImageOptions {
    /// The diffusion request for `prompt` from `input`: these settings over
    /// the model's defaults over the engine's. Sizes are checked against a
    /// VAE factor of 8 here; the pipeline checks its own when it runs.
    ///
    /// # Errors
    /// When the result is not a valid request.
    pub fn resolve(
        &self,
        prompt: &str,
        input: &ImageInput,
        defaults: &Defaults,
    ) -> Result<DiffusionRequest> {
        let image_size = input.size();
        let side = |ours: Option<usize>, model: Option<usize>, of_image: Option<usize>| {
            ours.or(of_image).or(model).unwrap_or(DEFAULT_SIDE)
        };
        let params = TextToImage {
            negative_prompt: self.negative_prompt.clone().unwrap_or_default(),
            width: side(self.width, defaults.width, image_size.map(|s| s.0)),
            height: side(self.height, defaults.height, image_size.map(|s| s.1)),
            steps: self.steps.or(defaults.steps).unwrap_or(DEFAULT_STEPS),
            guidance_scale: self
                .guidance_scale
                .or(defaults.guidance_scale)
                .unwrap_or(DEFAULT_GUIDANCE_SCALE),
            seed: self.seed.or(defaults.seed).unwrap_or(0),
            images: self.images.unwrap_or(1),
            scheduler: self.scheduler,
            ..TextToImage::new(prompt)
        };
        let strength = self.strength.or(defaults.strength);
        let request = match input {
            ImageInput::Noise => DiffusionRequest::TextToImage(params),
            ImageInput::Image(image) => DiffusionRequest::ImageToImage(ImageToImage {
                params,
                image: image.clone(),
                strength: strength.unwrap_or(DEFAULT_STRENGTH),
            }),
            ImageInput::Inpaint { image, mask } => DiffusionRequest::Inpaint(Inpaint {
                strength: strength.unwrap_or(1.0),
                params,
                ..Inpaint::new(prompt, image.clone(), mask.clone())
            }),
        };
        request
            .validate(8)
            .map_err(|e| EngineError::from_diffusion("(request)", &e))?;
        Ok(request)
    }
}

impl EngineError {
    /// The engine's reading of a diffusion pipeline's error for `model`.
    pub(crate) fn from_diffusion(model: &str, e: &DiffusionError) -> Self {
        match e {
            DiffusionError::InvalidInput { field, reason } => {
                Self::invalid(field.to_string(), reason.clone())
            }
            DiffusionError::Cancelled => EngineError::Cancelled,
            other => EngineError::Failed {
                model: model.to_owned(),
                reason: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn settings_resolve_request_over_model_over_engine() {
        let defaults = Defaults {
            steps: Some(4),
            width: Some(64),
            guidance_scale: Some(1.0),
            ..Defaults::default()
        };
        let ours = ImageOptions {
            width: Some(32),
            seed: Some(9),
            ..ImageOptions::default()
        };
        let r = ours.resolve("a", &ImageInput::Noise, &defaults).unwrap();
        let p = r.params();
        assert_eq!((p.width, p.height, p.steps), (32, DEFAULT_SIDE, 4));
        assert_eq!((p.guidance_scale, p.seed, p.images), (1.0, 9, 1));

        // An input picture sets the size unless the request does.
        let picture = RgbImage::new(40, 24);
        let r = ImageOptions::default()
            .resolve("a", &ImageInput::Image(picture.clone()), &defaults)
            .unwrap();
        assert_eq!((r.params().width, r.params().height), (40, 24));
        assert_eq!(r.strength(), DEFAULT_STRENGTH);
        let mask = GrayImage::new(40, 24);
        let r = ImageOptions::default()
            .resolve(
                "a",
                &ImageInput::Inpaint {
                    image: picture,
                    mask,
                },
                &defaults,
            )
            .unwrap();
        assert_eq!(r.strength(), 1.0);
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let bad = ImageOptions {
            width: Some(30),
            ..ImageOptions::default()
        };
        let e = bad
            .resolve("a", &ImageInput::Noise, &Defaults::default())
            .unwrap_err();
        assert!(matches!(e, EngineError::InvalidInput { ref field, .. } if field == "width"));
        let bad = ImageOptions {
            strength: Some(1.5),
            ..ImageOptions::default()
        };
        let e = bad
            .resolve(
                "a",
                &ImageInput::Image(RgbImage::new(8, 8)),
                &Defaults::default(),
            )
            .unwrap_err();
        assert!(matches!(e, EngineError::InvalidInput { ref field, .. } if field == "strength"));
    }
}
