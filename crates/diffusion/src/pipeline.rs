//! Loading a diffusers folder and running text-to-image on it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;
use image::RgbImage;
use switchyard_core::{CancellationToken, SplitMix64};

use crate::clip::{ClipTextEncoder, ClipTextJson, ClipTokenizer};
use crate::config::{UnetJson, VaeJson, read_json, weight_files};
use crate::error::{DiffusionError, Result, invalid};
use crate::noise::batch_noise;
use crate::request::{BatchKey, TextToImage};
use crate::scheduler::{SchedulerConfig, SchedulerKind};

/// Where and how to load the model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The device every component runs on.
    pub device: Device,
    /// Weight dtype; `None` picks F32 on CPU (candle's CPU convolutions want
    /// it) and F16 elsewhere.
    pub dtype: Option<DType>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
        }
    }
}

/// One step done, reported to [`RunOptions::on_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepProgress {
    /// Steps finished (1 after the first).
    pub step: usize,
    /// Steps in the run.
    pub total: usize,
}

/// Progress reporting and cancellation for one run.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Called after every denoising step.
    pub on_step: Option<&'a mut dyn FnMut(StepProgress)>,
    /// Checked before every step; when it fires the run returns
    /// [`DiffusionError::Cancelled`] and drops its tensors.
    pub cancel: Option<CancellationToken>,
}

impl std::fmt::Debug for RunOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("on_step", &self.on_step.is_some())
            .field("cancel", &self.cancel)
            .finish()
    }
}

/// One generated image.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    /// Index of the request in the batch that asked for it.
    pub request: usize,
    /// The seed its noise came from (the request's seed plus its index
    /// among that request's images).
    pub seed: u64,
    /// The pixels.
    pub image: RgbImage,
}

/// A Stable Diffusion pipeline (SD 1.x, 2.x, SD-Turbo) loaded from a
/// diffusers folder.
#[derive(Debug)]
pub struct StableDiffusion {
    dir: PathBuf,
    device: Device,
    dtype: DType,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextEncoder,
    unet: UNet2DConditionModel,
    unet_in_channels: usize,
    vae: AutoEncoderKL,
    vae_scale: usize,
    latent_channels: usize,
    scaling_factor: f64,
    scheduler: SchedulerConfig,
}

/// Opens the safetensors files of one component.
fn var_builder<'a>(files: &[PathBuf], dtype: DType, device: &Device) -> Result<VarBuilder<'a>> {
    // SAFETY: the files are mapped read-only and only read while the
    // component loads; callers must not rewrite model files in place while a
    // model loads from them (as with any mmap-based loader).
    #[allow(unsafe_code)]
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) };
    vb.map_err(|e| DiffusionError::Io {
        path: files.first().cloned().unwrap_or_default(),
        reason: e.to_string(),
    })
}

/// Wraps a load failure with the component's folder.
fn in_component(dir: &Path) -> impl FnOnce(candle_core::Error) -> DiffusionError + '_ {
    move |e| DiffusionError::Config {
        path: dir.to_path_buf(),
        reason: format!("weights do not match config.json: {e}"),
    }
}

impl StableDiffusion {
    /// Loads the pipeline from a diffusers folder: `model_index.json`,
    /// `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let index: serde_json::Value = read_json(&dir.join("model_index.json"))?;
        if index.get("text_encoder_2").is_some_and(|v| !v.is_null()) {
            return Err(DiffusionError::Unsupported(
                "a second text encoder (SDXL); SD 1.x, 2.x and SD-Turbo folders load".into(),
            ));
        }
        let device = options.device.clone();
        let dtype = options.dtype.unwrap_or(if device.is_cpu() {
            DType::F32
        } else {
            DType::F16
        });

        let text_dir = dir.join("text_encoder");
        let text_config_path = text_dir.join("config.json");
        let text_config: ClipTextJson = read_json(&text_config_path)?;
        let vb = var_builder(&weight_files(&text_dir, "model")?, dtype, &device)?;
        let text_encoder = ClipTextEncoder::new(&text_config, &text_config_path, vb)?;
        let tokenizer = ClipTokenizer::load(&dir.join("tokenizer"), text_encoder.max_positions())?;

        let unet_dir = dir.join("unet");
        let unet_json: UnetJson = read_json(&unet_dir.join("config.json"))?;
        let unet_config = unet_json.to_candle(&unet_dir.join("config.json"))?;
        if unet_json.out_channels != 4 && unet_json.out_channels != unet_json.in_channels {
            return Err(DiffusionError::Unsupported(format!(
                "a UNet with {} output channels",
                unet_json.out_channels
            )));
        }
        let vb = var_builder(
            &weight_files(&unet_dir, "diffusion_pytorch_model")?,
            dtype,
            &device,
        )?;
        let unet = UNet2DConditionModel::new(
            vb,
            unet_json.in_channels,
            unet_json.out_channels,
            false,
            unet_config,
        )
        .map_err(in_component(&unet_dir))?;

        let vae_dir = dir.join("vae");
        let vae_json: VaeJson = read_json(&vae_dir.join("config.json"))?;
        let vae_config = vae_json.to_candle(&vae_dir.join("config.json"))?;
        let vb = var_builder(
            &weight_files(&vae_dir, "diffusion_pytorch_model")?,
            dtype,
            &device,
        )?;
        let vae = AutoEncoderKL::new(vb, 3, 3, vae_config).map_err(in_component(&vae_dir))?;

        let scheduler = SchedulerConfig::load(&dir.join("scheduler/scheduler_config.json"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            device,
            dtype,
            tokenizer,
            text_encoder,
            unet,
            unet_in_channels: unet_json.in_channels,
            vae,
            vae_scale: vae_json.scale_factor(),
            latent_channels: vae_json.latent_channels,
            scaling_factor: vae_json.scaling_factor,
            scheduler,
        })
    }

    /// The folder the pipeline came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sampler used when a request names none (from
    /// `scheduler_config.json`).
    pub fn default_scheduler(&self) -> SchedulerKind {
        self.scheduler.default_kind()
    }

    /// The scheduler config of the folder.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    /// Whether the UNet is an inpainting one (9 input channels).
    pub fn is_inpainting(&self) -> bool {
        self.unet_in_channels == 2 * self.latent_channels + 1
    }

    /// Image pixels per latent on a side (8 for every released SD VAE).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_scale
    }

    /// Runs a batch of compatible text-to-image requests (equal
    /// [`BatchKey`]s) as one UNet batch, twice as wide with guidance. Each
    /// image's noise comes from its own seed, so it is the image the request
    /// would get alone. Images come back in request order.
    pub fn text_to_image(
        &self,
        requests: &[TextToImage],
        mut run: RunOptions<'_>,
    ) -> Result<Vec<GeneratedImage>> {
        let key = self.check_batch(requests)?;
        if self.unet_in_channels != self.latent_channels {
            return Err(invalid(
                "model",
                "this UNet takes a mask and masked image (an inpainting model); use inpainting",
            ));
        }
        // One entry per image: (request, seed, guidance).
        let mut items = Vec::new();
        for (r, request) in requests.iter().enumerate() {
            for k in 0..request.images {
                items.push((
                    r,
                    request.seed.wrapping_add(k as u64),
                    request.guidance_scale,
                ));
            }
        }
        let context = self.encode_prompts(requests, key.guided)?;
        let mut scheduler = self.scheduler.build(key.scheduler, key.steps)?;
        let (h, w) = (key.height / self.vae_scale, key.width / self.vae_scale);
        let shape = [self.latent_channels, h, w];
        let mut generators: Vec<SplitMix64> = items
            .iter()
            .map(|&(_, seed, _)| SplitMix64::new(seed))
            .collect();
        let mut latents =
            (batch_noise(&mut generators, &shape, &self.device)? * scheduler.init_noise_sigma())?;
        let guidance = Tensor::from_vec(
            items.iter().map(|&(_, _, g)| g as f32).collect::<Vec<_>>(),
            (items.len(), 1, 1, 1),
            &self.device,
        )?;
        let total = scheduler.timesteps().len();
        for i in 0..total {
            if run
                .cancel
                .as_ref()
                .is_some_and(CancellationToken::is_cancelled)
            {
                return Err(DiffusionError::Cancelled);
            }
            let input = scheduler.scale_model_input(&latents, i)?;
            let input = if key.guided {
                Tensor::cat(&[&input, &input], 0)?
            } else {
                input
            };
            let t = scheduler.timesteps()[i];
            let output = self
                .unet
                .forward(&input.to_dtype(self.dtype)?, t, &context)?
                .to_dtype(DType::F32)?;
            let output = if key.guided {
                let n = items.len();
                let (uncond, cond) = (output.narrow(0, 0, n)?, output.narrow(0, n, n)?);
                (&uncond + (cond - &uncond)?.broadcast_mul(&guidance)?)?
            } else {
                output
            };
            let noise = if scheduler.needs_noise() {
                Some(batch_noise(&mut generators, &shape, &self.device)?)
            } else {
                None
            };
            latents = scheduler.step(&output, i, &latents, noise.as_ref())?;
            if let Some(callback) = run.on_step.as_mut() {
                callback(StepProgress { step: i + 1, total });
            }
        }
        let images = self.decode(&latents)?;
        Ok(items
            .into_iter()
            .zip(images)
            .map(|((request, seed, _), image)| GeneratedImage {
                request,
                seed,
                image,
            })
            .collect())
    }

    /// Validates every request and that they share one batch key.
    fn check_batch(&self, requests: &[TextToImage]) -> Result<BatchKey> {
        let first = requests
            .first()
            .ok_or_else(|| invalid("requests", "the batch is empty"))?;
        let default = self.default_scheduler();
        let key = first.batch_key(default);
        for request in requests {
            request.validate(self.vae_scale)?;
            if request.batch_key(default) != key {
                return Err(invalid(
                    "requests",
                    "a batch must share size, steps, scheduler and guidance on/off",
                ));
            }
        }
        Ok(key)
    }

    /// Text conditioning `[2n, seq, d]` (negative prompts first) with
    /// guidance, `[n, seq, d]` without, one row per image.
    fn encode_prompts(&self, requests: &[TextToImage], guided: bool) -> Result<Tensor> {
        let mut rows: Vec<u32> = Vec::new();
        let per_image = |pick: fn(&TextToImage) -> &str, rows: &mut Vec<u32>| -> Result<()> {
            for request in requests {
                let ids = self.tokenizer.encode(pick(request))?;
                for _ in 0..request.images {
                    rows.extend_from_slice(&ids);
                }
            }
            Ok(())
        };
        if guided {
            per_image(|r| &r.negative_prompt, &mut rows)?;
        }
        per_image(|r| &r.prompt, &mut rows)?;
        let seq = self.tokenizer.max_len();
        let n = rows.len() / seq;
        let ids = Tensor::from_vec(rows, (n, seq), &self.device)?;
        Ok(self.text_encoder.forward(&ids)?.to_dtype(self.dtype)?)
    }

    /// Latents to RGB images.
    fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        let scaled = (latents / self.scaling_factor)?.to_dtype(self.dtype)?;
        let pixels = self.vae.decode(&scaled)?.to_dtype(DType::F32)?;
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
}
