//! The crate's error type.

use std::path::PathBuf;

/// Errors from the image pipelines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiffusionError {
    /// A request parameter is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The parameter's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A file of the model folder could not be read.
    #[error("reading {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's message.
        reason: String,
    },
    /// A config file of the model folder is malformed.
    #[error("config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The model folder asks for something this crate does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The tokenizer could not be built or failed on a prompt.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation of the model failed (shape, dtype, device).
    #[error("model: {0}")]
    Model(String),
    /// A LoRA file could not be read or does not hold low-rank pairs.
    #[error("LoRA {0}")]
    Lora(String),
    /// An input image could not be decoded (corrupt, unsupported, or over
    /// the limits).
    #[error("input image: {0}")]
    Image(String),
    /// The request's cancellation token fired; nothing was returned.
    #[error("cancelled")]
    Cancelled,
}

impl From<candle_core::Error> for DiffusionError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(e.to_string())
    }
}

/// Result with [`DiffusionError`].
pub type Result<T, E = DiffusionError> = std::result::Result<T, E>;

/// An `InvalidInput` error.
pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> DiffusionError {
    DiffusionError::InvalidInput {
        field,
        reason: reason.into(),
    }
}
