//! Llama-family models: configuration, weights from GGUF or safetensors, the
//! batched forward pass over a paged KV cache.

mod attention_cpu;
mod config;
mod host_forward;
mod kv_cache;
mod linear;
mod model;
mod weights;

pub use config::{LlamaConfig, LlamaFlavor, RopeScaling};
pub use kv_cache::PagedKvCache;
pub use linear::{LoadOptions, QuantMatmul};
pub(crate) use model::StepLogits;
pub use model::{LlamaModel, SeqStep};
