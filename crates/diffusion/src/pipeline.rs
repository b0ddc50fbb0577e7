//! Loading a diffusers folder, and the types a run takes and returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use switchyard_core::CancellationToken;

use crate::clip::{ClipTextEncoder, ClipTextJson, ClipTokenizer};
use crate::config::{UnetJson, read_json, weight_files};
use crate::controlnet::AttachedControlNet;
use crate::error::{DiffusionError, Result};
use crate::generate::StageEnd;
use crate::lora::LoraPatch;
use crate::memory::MemoryOptions;
use crate::offload::{Offload, Residency, Resident};
use crate::scheduler::{SchedulerConfig, SchedulerKind};
use crate::sdxl::{SecondTextEncoder, load_second, names_component};
use crate::unet::Unet;
use crate::vae::{Vae, image_tensor};
use crate::weights::{self, Patch};

/// Where and how to load the model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The device the UNet (and attached ControlNets) run on, and every
    /// other component unless [`LoadOptions::placement`] says otherwise.
    pub device: Device,
    /// Compute and weight dtype (weights on disk are converted): F32, F16,
    /// or BF16 on an accelerator. `None` picks F32 when the UNet is on the
    /// CPU (its convolutions are fastest there) and F16 elsewhere.
    pub dtype: Option<DType>,
    /// Other devices for the text encoder and the VAE (ComfyUI's and
    /// diffusers' per-component placement: a small GPU keeps the UNet, the
    /// CPU encodes prompts and decodes). Tensors move between devices at
    /// the stage boundaries.
    pub placement: Placement,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            placement: Placement::default(),
        }
    }
}

/// Devices for the components other than the UNet; `None` means
/// [`LoadOptions::device`].
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Where the text encoder runs.
    pub text_encoder: Option<Device>,
    /// Where the VAE encodes and decodes.
    pub vae: Option<Device>,
}

/// Refuses compute dtypes the device's kernels lack: F32, F16 and BF16 run
/// on accelerators; the CPU has F32 and F16 (candle's CPU matmul has no
/// BF16 kernel; BF16 weights on disk load fine into either).
pub(crate) fn check_compute_dtype(dtype: DType, device: &Device) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 => Ok(()),
        DType::BF16 if !device.is_cpu() => Ok(()),
        DType::BF16 => Err(DiffusionError::Unsupported(
            "BF16 compute on the CPU (candle's CPU matmul has no BF16 kernel); load BF16 \
             weights with dtype F16 or F32"
                .into(),
        )),
        other => Err(DiffusionError::Unsupported(format!(
            "{other:?} compute; use F32, F16 or (on an accelerator) BF16"
        ))),
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

/// Receives each step's previews, one per image of the batch.
pub type PreviewCallback<'a> = dyn FnMut(StepProgress, &[RgbImage]) + 'a;

/// Progress reporting and cancellation for one run.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Called after every denoising step.
    pub on_step: Option<&'a mut dyn FnMut(StepProgress)>,
    /// Checked before every step; when it fires the run returns
    /// [`DiffusionError::Cancelled`] and drops its tensors.
    pub cancel: Option<CancellationToken>,
    /// Also checked before every step; returning true cancels like
    /// [`RunOptions::cancel`] (a batcher passes "every request of the batch
    /// was cancelled").
    pub cancel_when: Option<&'a (dyn Fn() -> bool + Sync)>,
    /// Called after every step with a rough preview of each image of the
    /// batch (latent resolution, from a linear latent-to-RGB fit: no VAE
    /// pass). Not called for latents other than SD's 4 channels.
    pub on_preview: Option<&'a mut PreviewCallback<'a>>,
    /// Called inside every denoising step, before each block of the UNet;
    /// it may block, to pause the run in the middle of a step (a batcher
    /// passes [`BatchContext::yield_point`](switchyard_batch::BatchContext::yield_point)).
    pub pause: Option<&'a dyn Fn()>,
}

impl std::fmt::Debug for RunOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("on_step", &self.on_step.is_some())
            .field("cancel", &self.cancel)
            .field("cancel_when", &self.cancel_when.is_some())
            .field("on_preview", &self.on_preview.is_some())
            .field("pause", &self.pause.is_some())
            .finish()
    }
}

/// One generated image.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedImage {
    /// Index of the request in the batch that asked for it.
    pub request: usize,
    /// The seed its noise came from (the request's seed plus its index
    /// among that request's images).
    pub seed: u64,
    /// The pixels.
    pub image: RgbImage,
}

/// The denoised latents of a batch, before decoding.
#[derive(Debug, Clone)]
pub struct Denoised {
    /// Scaled latents `[images, channels, height / s, width / s]`, F32.
    pub latents: Tensor,
    /// Which request and seed each row belongs to.
    pub origins: Vec<ImageOrigin>,
}

/// Where one image of a batch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageOrigin {
    /// Index of the request in the batch.
    pub request: usize,
    /// The seed of its noise (the request's seed plus its index among that
    /// request's images).
    pub seed: u64,
}

/// A Stable Diffusion pipeline (SD 1.x, 2.x, SD-Turbo, SDXL base and
/// SDXL-Turbo) loaded from a diffusers folder.
#[derive(Debug)]
pub struct StableDiffusion {
    dir: PathBuf,
    /// The UNet's device.
    pub(crate) device: Device,
    /// The text encoder's device.
    pub(crate) text_device: Device,
    pub(crate) dtype: DType,
    pub(crate) tokenizer: ClipTokenizer,
    pub(crate) text_encoder: Resident<ClipTextEncoder>,
    pub(crate) text_source: TextEncoderSource,
    /// SDXL's second text encoder.
    pub(crate) second: Option<SecondTextEncoder>,
    pub(crate) unet: Resident<Unet>,
    pub(crate) unet_source: UnetSource,
    pub(crate) vae: Vae,
    pub(crate) scheduler: SchedulerConfig,
    /// The LoRA deltas merged into the UNet and the text encoder (kept to
    /// merge them again when a released component is rebuilt).
    pub(crate) unet_patch: Option<Arc<LoraPatch>>,
    pub(crate) text_patch: Option<Arc<LoraPatch>>,
    pub(crate) text2_patch: Option<Arc<LoraPatch>>,
    pub(crate) memory: MemoryOptions,
    pub(crate) offload: Offload,
    /// Attached ControlNets by name, in attachment order.
    pub(crate) controlnets: Vec<(String, AttachedControlNet)>,
}

/// Where the UNet loads from, kept to rebuild it (with LoRA deltas merged,
/// or without them again).
#[derive(Debug)]
pub(crate) struct UnetSource {
    pub(crate) dir: PathBuf,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) json: UnetJson,
}

impl UnetSource {
    pub(crate) fn build(
        &self,
        dtype: DType,
        device: &Device,
        patch: Option<Arc<dyn Patch>>,
    ) -> Result<Unet> {
        let config = self.json.to_candle(&self.dir.join("config.json"))?;
        let vb = weights::open(&self.files, dtype, device, patch)?;
        let text_time = self.json.text_time(&self.dir.join("config.json"))?;
        Unet::new(
            vb,
            (self.json.encoder.in_channels, self.json.out_channels),
            &config,
            text_time,
        )
        .map_err(|e| DiffusionError::Config {
            path: self.dir.clone(),
            reason: format!("weights do not match config.json: {e}"),
        })
    }
}

/// Where the text encoder loads from, kept to rebuild it.
#[derive(Debug)]
pub(crate) struct TextEncoderSource {
    pub(crate) config_path: PathBuf,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) json: ClipTextJson,
    /// Whether it has a `text_projection` (SDXL's second encoder).
    pub(crate) projection: bool,
}

impl TextEncoderSource {
    pub(crate) fn build(
        &self,
        dtype: DType,
        device: &Device,
        patch: Option<Arc<dyn Patch>>,
    ) -> Result<ClipTextEncoder> {
        let vb = weights::open(&self.files, dtype, device, patch)?;
        ClipTextEncoder::new(&self.json, &self.config_path, vb, self.projection)
    }
}

impl StableDiffusion {
    /// Loads the pipeline from a diffusers folder: `model_index.json`,
    /// `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`, and
    /// for SDXL `text_encoder_2/` and `tokenizer_2/`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let index: serde_json::Value = read_json(&dir.join("model_index.json"))?;
        let xl = names_component(&index, "text_encoder_2");
        if xl && !names_component(&index, "text_encoder") {
            return Err(DiffusionError::Unsupported(
                "an SDXL refiner (only the second text encoder); SDXL base and Turbo folders load"
                    .into(),
            ));
        }
        let device = options.device.clone();
        let dtype = options.dtype.unwrap_or(if device.is_cpu() {
            DType::F32
        } else {
            DType::F16
        });
        let text_device = options.placement.text_encoder.clone();
        let text_device = text_device.unwrap_or_else(|| device.clone());
        let vae_device = options.placement.vae.clone();
        let vae_device = vae_device.unwrap_or_else(|| device.clone());
        for d in [&device, &text_device, &vae_device] {
            check_compute_dtype(dtype, d)?;
        }

        let text_dir = dir.join("text_encoder");
        let config_path = text_dir.join("config.json");
        let text_source = TextEncoderSource {
            json: read_json(&config_path)?,
            config_path,
            files: weight_files(&text_dir, "model")?,
            projection: false,
        };
        let text_encoder = text_source.build(dtype, &text_device, None)?;
        let tokenizer = ClipTokenizer::load(&dir.join("tokenizer"), text_encoder.max_positions())?;

        let unet_dir = dir.join("unet");
        let unet_config = unet_dir.join("config.json");
        let unet_json: UnetJson = read_json(&unet_config)?;
        let cross = unet_json.encoder.cross_attention_dim;
        let second = match (unet_json.text_time(&unet_config)?, xl) {
            (Some(text_time), true) => Some(load_second(
                dir,
                &index,
                &text_source.json,
                (cross, text_time),
                (dtype, &text_device),
            )?),
            (None, false) if cross != text_source.json.hidden_size => {
                return Err(DiffusionError::Config {
                    path: unet_config,
                    reason: format!(
                        "cross_attention_dim {cross} is not the text encoder's width {}",
                        text_source.json.hidden_size
                    ),
                });
            }
            (None, false) => None,
            (Some(_), false) => {
                return Err(DiffusionError::Unsupported(
                    "an SDXL UNet (text_time conditioning) without SDXL's second text encoder \
                     (text_encoder_2/ in model_index.json)"
                        .into(),
                ));
            }
            (None, true) => {
                return Err(DiffusionError::Config {
                    path: unet_config,
                    reason: "model_index.json names text_encoder_2 (SDXL) but the UNet has no \
                             text_time conditioning"
                        .into(),
                });
            }
        };
        let vae = Vae::load(&dir.join("vae"), dtype, &vae_device)?;
        let latent = vae.latent_channels;
        if unet_json.out_channels != latent
            || (unet_json.encoder.in_channels != latent
                && unet_json.encoder.in_channels != 2 * latent + 1)
        {
            return Err(DiffusionError::Config {
                path: unet_dir.join("config.json"),
                reason: format!(
                    "a UNet of {} -> {} channels does not fit a VAE of {latent} latent channels",
                    unet_json.encoder.in_channels, unet_json.out_channels
                ),
            });
        }

        let unet_source = UnetSource {
            files: weight_files(&unet_dir, "diffusion_pytorch_model")?,
            json: unet_json,
            dir: unet_dir,
        };
        let unet = unet_source.build(dtype, &device, None)?;
        let scheduler = SchedulerConfig::load(&dir.join("scheduler/scheduler_config.json"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            device,
            text_device,
            dtype,
            tokenizer,
            text_encoder: Resident::new(text_encoder),
            text_source,
            second,
            unet: Resident::new(unet),
            unet_source,
            vae,
            scheduler,
            unet_patch: None,
            text_patch: None,
            text2_patch: None,
            memory: MemoryOptions::default(),
            offload: Offload::Never,
            controlnets: Vec::new(),
        })
    }

    /// Where the UNet, the text encoder and the VAE run.
    pub fn devices(&self) -> [(&'static str, &Device); 3] {
        [
            ("unet", &self.device),
            ("text_encoder", &self.text_device),
            ("vae", &self.vae.device),
        ]
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

    /// Whether this is an SDXL pipeline (two text encoders, added
    /// text/time conditioning).
    pub fn is_sdxl(&self) -> bool {
        self.second.is_some()
    }

    /// Whether the UNet is an inpainting one (9 input channels).
    pub fn is_inpainting(&self) -> bool {
        self.unet_source.json.encoder.in_channels == 2 * self.vae.latent_channels + 1
    }

    /// Image pixels per latent on a side (8 for every released SD VAE).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.scale
    }

    /// Sets the memory-saving options (checked first); they apply from
    /// the next run.
    pub fn set_memory_options(&mut self, options: MemoryOptions) -> Result<()> {
        options.validate()?;
        self.memory = options;
        Ok(())
    }

    /// The memory-saving options.
    pub fn memory_options(&self) -> MemoryOptions {
        self.memory
    }

    /// Sets when the components' weights are released after use (see
    /// [`Offload`]); a released component is rebuilt from its files, with
    /// the active LoRA deltas, when a run next needs it.
    pub fn set_offload(&mut self, offload: Offload) {
        self.offload = offload;
    }

    /// The offload policy.
    pub fn offload(&self) -> &Offload {
        &self.offload
    }

    /// Which components hold their weights now.
    pub fn residency(&self) -> Residency {
        Residency {
            text_encoder: self.text_encoder.is_loaded()
                && self.second.as_ref().is_none_or(|s| s.encoder.is_loaded()),
            unet: self.unet.is_loaded(),
            vae: self.vae.model.is_loaded(),
            controlnets: self.controlnets.iter().all(|(_, c)| c.model.is_loaded()),
        }
    }

    /// Releases every component's weights now (an engine making room under
    /// memory pressure); runs in progress keep theirs until they end, and
    /// the next run rebuilds what it needs. Returns whether anything was
    /// held.
    pub fn release_weights(&self) -> bool {
        let mut held = self.text_encoder.release();
        held |= self.second.as_ref().is_some_and(|s| s.encoder.release());
        held |= self.unet.release();
        held |= self.vae.model.release();
        for (_, controlnet) in &self.controlnets {
            held |= controlnet.model.release();
        }
        held
    }

    /// The text encoder, rebuilt first if it was released.
    pub(crate) fn text_encoder(&self) -> Result<Arc<ClipTextEncoder>> {
        self.text_encoder.get(|| {
            self.text_source
                .build(self.dtype, &self.text_device, as_patch(&self.text_patch))
        })
    }

    /// The UNet, rebuilt first if it was released.
    pub(crate) fn unet(&self) -> Result<Arc<Unet>> {
        self.unet.get(|| {
            self.unet_source
                .build(self.dtype, &self.device, as_patch(&self.unet_patch))
        })
    }

    /// Releases `component` after its stage when the offload policy says so.
    pub(crate) fn after_stage<T>(&self, component: &Resident<T>) {
        if self.offload.release_now() {
            component.release();
        }
    }

    /// The VAE's scaled latents `[1, c, h / s, w / s]` (F32) of an image,
    /// the posterior's mean (what image-to-image starts from).
    pub fn encode_image(&self, image: &RgbImage) -> Result<Tensor> {
        let _done = StageEnd(self, &self.vae.model);
        self.vae
            .encode(&image_tensor(&[image], &self.device)?, &self.memory)
    }

    /// Decodes scaled latents `[n, c, h, w]` (from [`StableDiffusion::denoise`]
    /// or [`StableDiffusion::encode_image`]) to images.
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        let _done = StageEnd(self, &self.vae.model);
        self.vae.decode(latents, &self.memory)
    }
}

pub(crate) fn as_patch(patch: &Option<Arc<LoraPatch>>) -> Option<Arc<dyn Patch>> {
    patch.clone().map(|p| p as Arc<dyn Patch>)
}
