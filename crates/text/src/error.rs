//! The crate's error type.

use std::path::PathBuf;

/// Errors from the text pipelines.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// A model file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A configuration file is not valid JSON of the expected shape.
    #[error("invalid config {path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What serde found wrong.
        source: serde_json::Error,
    },
    /// The model's files are present but cannot be loaded.
    #[error("cannot load model {model}: {reason}")]
    ModelLoad {
        /// The model folder or file.
        model: PathBuf,
        /// Why.
        reason: String,
    },
    /// The tokenizer failed to load or to encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A GGUF file's header or metadata is malformed.
    #[error("invalid GGUF: {0}")]
    Gguf(String),
    /// A tokenizer kind or pre-tokenizer this crate does not build.
    #[error("unsupported tokenizer: {0}")]
    UnsupportedTokenizer(String),
    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A request parameter is not acceptable.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The parameter.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Generation failed part-way (the model or the KV storage failed); the
    /// streams that were open end with this.
    #[error("generation failed: {reason}")]
    Generation {
        /// What failed.
        reason: String,
    },
    /// A queued request's deadline passed before it started; it never ran.
    #[error("the request's deadline passed before it started")]
    DeadlineExpired,
    /// The engine holds as many unfinished requests as it accepts; try
    /// again later.
    #[error("the engine is full ({capacity} requests unfinished)")]
    QueueFull {
        /// Unfinished requests it accepts.
        capacity: usize,
    },
    /// The engine is stopping and takes no more work (or did not start
    /// this request before it stopped).
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The device could not be opened.
    #[error(transparent)]
    Device(#[from] switchyard_core::CoreError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result with [`TextError`].
pub type Result<T, E = TextError> = std::result::Result<T, E>;
