//! Llama-family models (work in progress: the configuration first).

mod config;

pub use config::{LlamaConfig, LlamaFlavor};
