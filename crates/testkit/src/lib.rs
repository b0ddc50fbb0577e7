//! Test kit for Switchyard and for the applications built on it.
//!
//! - [`fetch`]: the real models of the project's tests, examples and benches
//!   (SmolLM2-135M-Instruct Q4_1 GGUF, all-MiniLM-L6-v2), fetched once into
//!   `$SWITCHYARD_MODELS` or `models/`, checked by sha256, under a file lock.
//! - [`tiny`]: tiny models with the real architectures and random weights from
//!   a fixed seed, written in the real on-disk formats (safetensors +
//!   `config.json` + `tokenizer.json`, GGUF with the tokenizer in its
//!   metadata), so tests load them through the same code as a real download.
//! - [`ManualClock`]: the deterministic clock, re-exported from core.
//!
//! The kit holds no mock of a shipped code path: everything it writes is read
//! back by the real loaders.
//!
//! # Example
//!
//! ```
//! use switchyard_testkit::tiny::{self, TinyLlama};
//!
//! let dir = tempfile::tempdir()?;
//! let files = tiny::write_llama_safetensors(dir.path(), &TinyLlama::default(), 42)?;
//! assert!(files.weights.ends_with("model.safetensors"));
//! assert!(files.config.exists() && files.tokenizer.exists());
//!
//! let gguf = tiny::write_llama_gguf(&dir.path().join("tiny.gguf"), &TinyLlama::default(), tiny::GgufQuant::Q8_0, 42)?;
//! assert!(std::fs::metadata(&gguf)?.len() > 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

pub mod fetch;
pub mod tiny;

pub use switchyard_core::ManualClock;
