//! The VAE: images to latents and back, and the tensors of images and masks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use image::{GrayImage, RgbImage};

use crate::config::{VaeJson, read_json, weight_files};
use crate::error::{DiffusionError, Result};
use crate::memory::{MemoryOptions, VaeTiling};
use crate::offload::Resident;
use crate::weights::{self, Patch};

/// The autoencoder of a diffusers folder (`vae/`). Its weights may be
/// released between uses (see [`crate::Offload`]) and are read again from
/// the files when next needed.
#[derive(Debug)]
pub(crate) struct Vae {
    pub(crate) model: Resident<AutoEncoderKL>,
    dir: PathBuf,
    files: Vec<PathBuf>,
    config: AutoEncoderKLConfig,
    /// Pixels per latent on a side.
    pub(crate) scale: usize,
    /// Channels of a latent (4 for SD 1.x / 2.x).
    pub(crate) latent_channels: usize,
    scaling_factor: f64,
    dtype: DType,
    /// Where it runs; inputs move here and encoded latents move back.
    pub(crate) device: Device,
}

/// Makes the encoder's posterior a point at its mean. candle-transformers
/// returns the posterior with private fields and only a `sample()` drawn
/// from the global generator, which would make image-to-image depend on
/// more than its seed; with the log-variance rows zeroed and their bias at
/// -1000 the standard deviation is exactly 0, so `sample()` is the mean
/// (diffusers' `argmax` latents). Decoding does not use these tensors.
struct MeanPosterior {
    prefix: &'static str,
    latent_channels: usize,
}

impl Patch for MeanPosterior {
    fn touches(&self, name: &str) -> bool {
        name.strip_prefix(self.prefix)
            .is_some_and(|rest| rest == ".weight" || rest == ".bias")
    }

    fn apply(&self, name: &str, stored: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.latent_channels;
        let mean = stored.narrow(0, 0, n)?;
        let logvar = stored.narrow(0, n, stored.dim(0)? - n)?;
        let replaced = if name.ends_with(".bias") {
            (logvar.zeros_like()? - 1000.0)?
        } else {
            logvar.zeros_like()?
        };
        Tensor::cat(&[&mean, &replaced], 0)
    }
}

impl Vae {
    /// Loads `dir` (a `vae/` folder).
    pub(crate) fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let json: VaeJson = read_json(&config_path)?;
        let config = json.to_candle(&config_path)?;
        let files = weight_files(dir, "diffusion_pytorch_model")?;
        let model = build(dir, &files, &config, json.latent_channels, (dtype, device))?;
        Ok(Self {
            model: Resident::new(model),
            dir: dir.to_path_buf(),
            files,
            config,
            scale: json.scale_factor(),
            latent_channels: json.latent_channels,
            scaling_factor: json.scaling_factor,
            dtype,
            device: device.clone(),
        })
    }

    /// The model, rebuilt from its files first if it was released.
    fn model(&self) -> Result<Arc<AutoEncoderKL>> {
        self.model.get(|| {
            build(
                &self.dir,
                &self.files,
                &self.config,
                self.latent_channels,
                (self.dtype, &self.device),
            )
        })
    }

    /// Pixels `[n, 3, H, W]` in -1..=1 to scaled latents `[n, c, H/s, W/s]`
    /// (F32), the posterior's mean; one image at a time with
    /// `options.vae_slicing`.
    /// The latents come back on the device `pixels` came from.
    pub(crate) fn encode(&self, pixels: &Tensor, options: &MemoryOptions) -> Result<Tensor> {
        let home = pixels.device();
        let pixels = pixels.to_device(&self.device)?;
        let latents = if options.vae_slicing && pixels.dim(0)? > 1 {
            let rows = (0..pixels.dim(0)?)
                .map(|i| self.encode_plain(&pixels.narrow(0, i, 1)?))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&rows, 0)?
        } else {
            self.encode_plain(&pixels)?
        };
        Ok(latents.to_device(home)?)
    }

    fn encode_plain(&self, pixels: &Tensor) -> Result<Tensor> {
        let posterior = self.model()?.encode(&pixels.to_dtype(self.dtype)?)?;
        Ok((posterior.sample()?.to_dtype(DType::F32)? * self.scaling_factor)?)
    }

    /// Scaled latents `[n, c, h, w]` to RGB images, one image at a time
    /// with `options.vae_slicing`, in blended tiles with `options.vae_tiling`.
    pub(crate) fn decode(
        &self,
        latents: &Tensor,
        options: &MemoryOptions,
    ) -> Result<Vec<RgbImage>> {
        let latents = &latents.to_device(&self.device)?;
        let pixels = if options.vae_slicing {
            let rows = (0..latents.dim(0)?)
                .map(|i| self.decode_pixels(&latents.narrow(0, i, 1)?, options.vae_tiling))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&rows, 0)?
        } else {
            self.decode_pixels(latents, options.vae_tiling)?
        };
        to_images(&pixels)
    }

    /// Scaled latents to pixels `[n, 3, H, W]` in about -1..=1 (F32).
    fn decode_pixels(&self, latents: &Tensor, tiling: Option<VaeTiling>) -> Result<Tensor> {
        match tiling {
            Some(tiling) => crate::tiling::decode_tiled(latents, tiling, self.scale, |tile| {
                self.decode_plain(tile)
            }),
            None => self.decode_plain(latents),
        }
    }

    fn decode_plain(&self, latents: &Tensor) -> Result<Tensor> {
        let scaled = (latents / self.scaling_factor)?.to_dtype(self.dtype)?;
        Ok(self.model()?.decode(&scaled)?.to_dtype(DType::F32)?)
    }
}

/// Builds the autoencoder from its files, with the posterior made a point
/// at its mean ([`MeanPosterior`]).
fn build(
    dir: &Path,
    files: &[PathBuf],
    config: &AutoEncoderKLConfig,
    latent_channels: usize,
    (dtype, device): (DType, &Device),
) -> Result<AutoEncoderKL> {
    let patch = MeanPosterior {
        prefix: if config.use_quant_conv {
            "quant_conv"
        } else {
            "encoder.conv_out"
        },
        latent_channels,
    };
    let vb = weights::open(files, dtype, device, Some(Arc::new(patch)))?;
    AutoEncoderKL::new(vb, 3, 3, config.clone()).map_err(|e| DiffusionError::Config {
        path: dir.to_path_buf(),
        reason: format!("weights do not match config.json: {e}"),
    })
}

/// Pixels `[n, 3, H, W]` in -1..=1 to 8-bit images.
fn to_images(pixels: &Tensor) -> Result<Vec<RgbImage>> {
    let pixels = ((pixels / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    let pixels = (pixels * 255.0)?.round()?.to_dtype(DType::U8)?;
    let (n, _, h, w) = pixels.dims4()?;
    (0..n)
        .map(|i| {
            let hwc = pixels
                .get(i)?
                .permute((1, 2, 0))?
                .flatten_all()?
                .to_vec1::<u8>()?;
            RgbImage::from_raw(w as u32, h as u32, hwc)
                .ok_or_else(|| DiffusionError::Model("decoded image has the wrong size".into()))
        })
        .collect()
}

/// SD 1.x / 2.x latent channels to RGB, a linear fit (the widely used
/// "latent2rgb" factors): a preview for the price of one small matmul.
const PREVIEW_FACTORS: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// Rough RGB previews of scaled 4-channel latents, at latent resolution;
/// `None` for latents of another channel count.
pub(crate) fn preview(latents: &Tensor) -> Result<Option<Vec<RgbImage>>> {
    let (n, c, h, w) = latents.dims4()?;
    if c != PREVIEW_FACTORS.len() {
        return Ok(None);
    }
    let factors = Tensor::new(&PREVIEW_FACTORS, latents.device())?;
    // [n, c, h*w] -> [n, h*w, c] @ [c, 3] -> [n, 3, h, w]
    let flat = latents
        .reshape((n, c, h * w))?
        .transpose(1, 2)?
        .contiguous()?;
    let rgb = flat
        .broadcast_matmul(&factors)?
        .transpose(1, 2)?
        .reshape((n, 3, h, w))?;
    Ok(Some(to_images(&rgb)?))
}

/// Images as `[n, 3, H, W]` F32 in -1..=1 (all the same size).
pub(crate) fn image_tensor(images: &[&RgbImage], device: &Device) -> Result<Tensor> {
    let rows = images
        .iter()
        .map(|image| {
            let (w, h) = image.dimensions();
            let hwc = Tensor::from_slice(image.as_raw(), (h as usize, w as usize, 3), device)?;
            hwc.permute((2, 0, 1))?.to_dtype(DType::F32)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(((Tensor::stack(&rows, 0)? / 127.5)? - 1.0)?)
}

/// Masks as `[n, 1, H, W]` F32: 1 where a pixel is >= 128 (repaint), else 0.
pub(crate) fn mask_tensor(masks: &[&GrayImage], device: &Device) -> Result<Tensor> {
    let rows = masks
        .iter()
        .map(|mask| {
            let (w, h) = mask.dimensions();
            let bits: Vec<f32> = mask
                .as_raw()
                .iter()
                .map(|&v| f32::from(u8::from(v >= 128)))
                .collect();
            Tensor::from_vec(bits, (1, h as usize, w as usize), device)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

/// A pixel mask `[n, 1, H, W]` at latent resolution: a latent cell is 1
/// when any pixel of its `scale` x `scale` block is.
pub(crate) fn latent_mask(mask: &Tensor, scale: usize) -> Result<Tensor> {
    if scale == 1 {
        return Ok(mask.clone());
    }
    let (n, c, h, w) = mask.dims4()?;
    let blocks = mask.reshape((n, c, h / scale, scale, w / scale, scale))?;
    Ok(blocks.max(D::Minus1)?.max(3)?)
}
