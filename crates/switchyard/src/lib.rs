//! Switchyard: an inference engine that sorts requests by model into batches,
//! keeps the right models loaded in the memory it has, and runs them.
//!
//! This facade re-exports each Switchyard crate as a module, so an
//! application depends on `switchyard` alone and picks pipelines by feature
//! (`text`, on by default; `diffusion`; `full`). It owns no algorithm of its
//! own. Besides the modules it has:
//!
//! - [`config`]: the model [`Registry`], read from `models.json` or
//!   `models.toml` (or built in code), with errors that name the file, the
//!   model and the field;
//! - the [`Engine`] (feature `text`): every registered model behind one
//!   `submit`, with a priority queue, a model cache per device under an
//!   optional memory budget, the text crate's continuous batching for
//!   generation and the batcher for embeddings; [`Handle`]s wait, stream
//!   tokens ([`TokenStream`]) or are `.await`ed; `sessions`, `capabilities`,
//!   `validate`, `health`, `metrics`, `cancel`, `shutdown`. Image processing
//!   ([`ImageOp`]s through `switchyard-image`) is always served; with the
//!   `diffusion` feature the engine also runs text-to-image, image-to-image
//!   and inpainting on Stable Diffusion folders (`ImageInput`,
//!   `ImageOptions`), batching compatible requests and reporting each
//!   denoising step as the request's progress. Priority crosses models:
//!   while an Urgent request is under way on a device, less urgent work
//!   there pauses between batches and decoding steps and runs on
//!   background threads the OS preempts for it, and each model has an
//!   urgent lane ([`EngineBuilder::yield_to`], through
//!   `switchyard_batch::YieldGate`).
//! - [`journal`]: an optional crash journal; an engine built with one
//!   re-queues (or reports failed) the requests a crash left unfinished;
//! - observability: `tracing` spans `request` (id, model, task, priority;
//!   open until the request ends), `load` (cache), `batch` (batcher) and
//!   `step` (generation and denoising steps), for any subscriber the
//!   application installs; [`EngineMetrics::to_prometheus`] writes the
//!   metrics in Prometheus' text format.
//!
//! | module | crate | owns |
//! |---|---|---|
//! | [`core`] | `switchyard-core` | priorities, request ids, deadlines, devices, clocks, cancellation |
//! | [`vram`] | `switchyard-vram` | device memory monitors and pressure levels |
//! | [`pool`] | `switchyard-pool` | buffer and KV-block pools |
//! | [`cache`] | `switchyard-cache` | which models stay loaded |
//! | [`batch`] | `switchyard-batch` | priority queue, dynamic batcher, controllers |
//! | `text` | `switchyard-text` | tokenizers, embeddings, generation (feature `text`) |
//! | [`image`] | `switchyard-image` | image decoding within limits, encoding, resizing |
//! | `diffusion` | `switchyard-diffusion` | image pipelines (feature `diffusion`) |
//!
//! # Example
//!
//! ```
//! use switchyard::core::{DeviceId, Priority, RequestId};
//!
//! let id = RequestId::next();
//! let device: DeviceId = "cpu".parse()?;
//! assert!(device.is_cpu());
//! assert!(Priority::High > Priority::Low);
//! println!("{id} runs on {device}");
//! # Ok::<(), switchyard::core::CoreError>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

pub mod config;
#[cfg(feature = "text")]
mod engine;
pub mod journal;

pub use config::{Balance, ConfigError, ModelKind, ModelSource, ModelSpec, Registry};
#[cfg(feature = "text")]
pub use engine::{
    Batching, Capabilities, DEFAULT_MAX_TOKENS, DeviceMemory, Embeddings, Engine, EngineBuilder,
    EngineError, EngineMetrics, GenerationOptions, GenerationSettings, Handle, Health, ImageOp,
    Latency, MAX_EMBEDDING_INPUTS, MAX_IMAGE_OPS, MemorySaving, ModelInfo, ModelMetrics,
    ModelOptimisations, Optimisations, Recovered, RecoveredOutcome, RecoveryPolicy, ReplicaMetrics,
    Request, Response, Result, ResultCacheStats, SessionInfo, SessionState, ShutdownMode, Task,
    TokenStream, journaled_request,
};
#[cfg(feature = "diffusion")]
pub use engine::{
    DEFAULT_GUIDANCE_SCALE, DEFAULT_SIDE, DEFAULT_STEPS, DEFAULT_STRENGTH, ImageInput, ImageOptions,
};
pub use switchyard_batch as batch;
pub use switchyard_cache as cache;
pub use switchyard_core as core;
pub use switchyard_image as image;
pub use switchyard_pool as pool;
pub use switchyard_vram as vram;

#[cfg(feature = "diffusion")]
pub use switchyard_diffusion as diffusion;
#[cfg(feature = "text")]
pub use switchyard_text as text;
