//! Image pipelines on candle: Stable Diffusion from a diffusers folder.
//!
//! [`StableDiffusion::load`] reads the folder a user downloads from the
//! Hugging Face hub for SD 1.x, SD 2.x or SD-Turbo (for example
//! `stable-diffusion-v1-5/stable-diffusion-v1-5`, `stabilityai/sd-turbo`):
//!
//! ```text
//! model_index.json
//! unet/config.json           unet/diffusion_pytorch_model[.fp16].safetensors
//! vae/config.json            vae/diffusion_pytorch_model[.fp16].safetensors
//! text_encoder/config.json   text_encoder/model[.fp16].safetensors
//! tokenizer/vocab.json       tokenizer/merges.txt   (or tokenizer/tokenizer.json)
//! scheduler/scheduler_config.json
//! ```
//!
//! Point it at the folder holding `model_index.json` (in the hub cache, the
//! `snapshots/<revision>/` folder). Sharded weights
//! (`*.safetensors.index.json`) load too; PyTorch `.bin` weights are refused
//! with a typed error. SDXL folders (a second text encoder) are refused for
//! now.
//!
//! [`StableDiffusion::text_to_image`] runs a batch of compatible requests
//! (equal [`BatchKey`]) as one UNet batch, with classifier-free guidance
//! when the scale is above 1; each image's noise comes from its own seed.
//! Samplers ([`SchedulerKind`]): DDIM, Euler, Euler ancestral, DPM++ 2M (with
//! Karras sigmas), behind the small [`Scheduler`] trait. The crate does not
//! queue requests: the batcher hands it compatible batches.
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
mod error;
mod noise;
mod pipeline;
mod request;
pub mod scheduler;

pub use clip::{ClipTextEncoder, ClipTokenizer};
pub use error::{DiffusionError, Result};
pub use pipeline::{GeneratedImage, LoadOptions, RunOptions, StableDiffusion, StepProgress};
pub use request::{BatchKey, MAX_IMAGES, MAX_SIDE, TextToImage};
pub use scheduler::{Scheduler, SchedulerConfig, SchedulerKind};
