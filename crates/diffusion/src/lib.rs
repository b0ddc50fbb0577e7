//! Image pipelines on candle: Stable Diffusion from a diffusers folder.
//!
//! [`StableDiffusion::load`] reads the folder a user downloads from the
//! Hugging Face hub for SD 1.x, SD 2.x, SD-Turbo, SDXL base or SDXL-Turbo
//! (for example `stable-diffusion-v1-5/stable-diffusion-v1-5`,
//! `stabilityai/sd-turbo`, `stabilityai/stable-diffusion-xl-base-1.0`):
//!
//! ```text
//! model_index.json
//! unet/config.json           unet/diffusion_pytorch_model[.fp16].safetensors
//! vae/config.json            vae/diffusion_pytorch_model[.fp16].safetensors
//! text_encoder/config.json   text_encoder/model[.fp16].safetensors
//! tokenizer/vocab.json       tokenizer/merges.txt   (or tokenizer/tokenizer.json)
//! scheduler/scheduler_config.json
//! text_encoder_2/config.json text_encoder_2/model[.fp16].safetensors   (SDXL only)
//! tokenizer_2/vocab.json     tokenizer_2/merges.txt                    (SDXL only)
//! ```
//!
//! Point it at the folder holding `model_index.json` (in the hub cache, the
//! `snapshots/<revision>/` folder). Sharded weights
//! (`*.safetensors.index.json`) load too; PyTorch `.bin` weights are refused
//! with a typed error.
//!
//! SDXL runs as diffusers' `StableDiffusionXLPipeline` does: the UNet
//! cross-attends to both text encoders' penultimate hidden states joined,
//! and takes the second encoder's projected pooled output with the time ids
//! (original size, crop corner (0, 0), target size: the generated size).
//! With `force_zeros_for_empty_prompt` (SDXL's `model_index.json` sets it)
//! an empty negative prompt conditions on zeros. The SDXL refiner
//! (aesthetic-score time ids, no first text encoder) is refused with a
//! typed error, as are folders whose encoders and UNet do not fit together.
//!
//! Pipelines, all through [`StableDiffusion::generate`] (or the typed
//! [`StableDiffusion::text_to_image`], [`StableDiffusion::image_to_image`],
//! [`StableDiffusion::inpaint`]):
//!
//! - **text-to-image** from seeded noise;
//! - **image-to-image**: the input is encoded (the VAE posterior's mean)
//!   and noised to `strength`; the last `floor(steps x strength)` steps run,
//!   so strength 0 returns the input through the VAE;
//! - **inpainting**: with an inpainting UNet (9 input channels) the mask and
//!   masked image condition every step; with an ordinary UNet the unmasked
//!   latents are blended back after every step. By default the unmasked
//!   pixels are pasted back after decoding, so they are exactly the input.
//!
//! A batch of compatible requests (equal [`BatchKey`]: pipeline, size,
//! steps, first step, sampler, guidance on/off) runs as one UNet batch, with
//! classifier-free guidance when the scale is above 1; each image's noise
//! comes from its own seed, so a batched image equals the same request run
//! alone. Samplers ([`SchedulerKind`]): DDIM, Euler, Euler ancestral, DPM++
//! 2M (with Karras sigmas), behind the small [`Scheduler`] trait. The crate
//! does not queue requests: the batcher hands it compatible batches, and
//! [`DiffusionRequest::cost`] tells it what each weighs.
//!
//! [`ControlNet`]s (a diffusers `ControlNetModel` folder: `config.json` and
//! `diffusion_pytorch_model[.fp16].safetensors`, for example
//! `lllyasviel/control_v11p_sd15_canny`) attach to a pipeline by name with
//! [`StableDiffusion::load_controlnet`]; a request's [`Control`]s name them,
//! each with its conditioning image and scale, and their residuals add up.
//! They work with every pipeline above; scale 0 gives exactly the plain
//! pipeline's output.
//!
//! Memory: [`MemoryOptions`] slices the UNet's attention
//! ([`AttentionSlicing`]) and slices and tiles the VAE; [`Offload`]
//! releases the text encoders after encoding, the UNet and ControlNets
//! after denoising and the VAE after each use (always, or only while a
//! `switchyard-vram` monitor reports pressure, [`PressureTrigger`]) and
//! rebuilds them from their memory-mapped files, LoRA deltas included,
//! when a run next needs them;
//! [`StableDiffusion::release_weights`] does it on demand. [`Placement`]
//! puts the text encoder and the VAE on other devices than the UNet
//! (tensors move at the stage boundaries).
//!
//! [`Lora`] adapters (kohya or diffusers/PEFT files) merge into the UNet and
//! the text encoder(s) with [`StableDiffusion::set_loras`], several at once with
//! their own scales, and unapply exactly; what cannot be merged is listed in
//! the [`LoraReport`]. Input images from outside bytes go through
//! [`decode_image`] / [`decode_mask`] with decompression-bomb limits.
//!
//! # Example
//!
//! A tiny pipeline with random weights (the test kit writes it in the
//! diffusers layout), two images in one batch:
//!
//! ```
//! use switchyard_diffusion::{LoadOptions, RunOptions, StableDiffusion, TextToImage};
//! use switchyard_testkit::tiny::{self, TinyStableDiffusion};
//!
//! let dir = tempfile::tempdir()?;
//! tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::default(), 7)?;
//! let sd = StableDiffusion::load(dir.path(), &LoadOptions::default())?;
//!
//! let request = TextToImage {
//!     width: 32,
//!     height: 32,
//!     steps: 2,
//!     images: 2,
//!     seed: 42,
//!     ..TextToImage::new("a red train in a switchyard")
//! };
//! let images = sd.text_to_image(&[request], RunOptions::default())?;
//! assert_eq!(images.len(), 2);
//! assert_eq!(images[1].seed, 43);
//! assert_eq!(images[0].image.dimensions(), (32, 32));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod clip;
mod config;
mod controlnet;
mod error;
mod generate;
mod handler;
mod input;
mod lora;
mod memory;
mod noise;
mod offload;
mod pipeline;
mod request;
pub mod scheduler;
mod sdxl;
mod tiling;
mod unet;
mod vae;
mod weights;

pub use clip::{ClipOutput, ClipTextEncoder, ClipTokenizer};
pub use controlnet::{ControlNet, ControlResiduals};
pub use error::{DiffusionError, Result};
pub use handler::{DiffusionHandler, StepObserver};
pub use input::{decode_image, decode_mask};
pub use lora::{Lora, LoraComponent, LoraReport};
pub use memory::{AttentionSlicing, MemoryOptions, VaeTiling};
pub use offload::{Offload, PressureTrigger, Residency};
pub use pipeline::{
    Denoised, GeneratedImage, ImageOrigin, LoadOptions, Placement, PreviewCallback, RunOptions,
    StableDiffusion, StepProgress,
};
pub use request::{
    BatchKey, Control, DiffusionRequest, ImageToImage, Inpaint, MAX_CONTROLS, MAX_IMAGES, MAX_SIDE,
    Mode, TextToImage,
};
pub use scheduler::{Scheduler, SchedulerConfig, SchedulerKind};
