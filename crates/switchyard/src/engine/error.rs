//! [`EngineError`]: why a request or an engine call failed.

use switchyard_text::TextError;

use crate::config::{ConfigError, ModelKind};

/// Why a request (or an engine call) failed. Each variant is something a
/// caller can act on: fix the request, retry later, or report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The model configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No model of that id is registered.
    #[error("no model `{model}` is registered")]
    UnknownModel {
        /// The id asked for.
        model: String,
    },
    /// The model does not serve this kind of request.
    #[error("model `{model}` is a {kind} model and does not serve {request} requests")]
    WrongKind {
        /// The model.
        model: String,
        /// What it is.
        kind: ModelKind,
        /// What was asked of it.
        request: &'static str,
    },
    /// A request parameter is not acceptable.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The parameter.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The engine holds as many waiting requests as it accepts.
    #[error("the engine's queue is full ({capacity} requests waiting)")]
    QueueFull {
        /// Waiting requests it accepts.
        capacity: usize,
    },
    /// The request's timeout passed before it started; it never ran.
    #[error("the request timed out before it started")]
    TimedOut,
    /// The request was cancelled.
    #[error("the request was cancelled")]
    Cancelled,
    /// The engine is shutting down and did not run the request.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The model does not fit in the memory left, even after evicting idle
    /// models.
    #[error("insufficient memory for `{model}`: needs {needed} bytes, {free} free")]
    InsufficientMemory {
        /// The model.
        model: String,
        /// Bytes it needs.
        needed: u64,
        /// Bytes free after evicting what could be.
        free: u64,
    },
    /// The model's files could not be loaded.
    #[error("model `{model}` failed to load: {reason}")]
    ModelLoad {
        /// The model.
        model: String,
        /// Why.
        reason: String,
    },
    /// The model kind or setting is not served by this build.
    #[error("model `{model}`: {reason}")]
    Unsupported {
        /// The model.
        model: String,
        /// What is missing.
        reason: String,
    },
    /// The pipeline failed while running the request.
    #[error("model `{model}` failed: {reason}")]
    Failed {
        /// The model.
        model: String,
        /// What failed.
        reason: String,
    },
    /// The crash journal could not be read or written; a request it could
    /// not record was not accepted.
    #[error("crash journal: {reason}")]
    Journal {
        /// What went wrong.
        reason: String,
    },
    /// The engine stopped (crashed or was killed) before the request
    /// finished, and it was not run again after the restart.
    #[error("the engine stopped before the request finished; not run again: {reason}")]
    Interrupted {
        /// Why it was not run again.
        reason: String,
    },
}

impl EngineError {
    /// Whether this reports a lack of memory: [`EngineError::InsufficientMemory`],
    /// or a load or run that failed allocating.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            EngineError::InsufficientMemory { .. } => true,
            EngineError::ModelLoad { reason, .. } | EngineError::Failed { reason, .. } => {
                switchyard_core::is_out_of_memory_message(reason)
            }
            _ => false,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        EngineError::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The engine's reading of a text pipeline's error for `model`.
    pub(crate) fn from_text(model: &str, e: &TextError) -> Self {
        match e {
            TextError::InvalidInput { field, reason } => Self::invalid(*field, reason.clone()),
            TextError::DeadlineExpired => EngineError::TimedOut,
            TextError::QueueFull { capacity } => EngineError::QueueFull {
                capacity: *capacity,
            },
            TextError::ShuttingDown => EngineError::ShuttingDown,
            other => EngineError::Failed {
                model: model.to_owned(),
                reason: other.to_string(),
            },
        }
    }
}

impl From<crate::journal::JournalError> for EngineError {
    fn from(e: crate::journal::JournalError) -> Self {
        EngineError::Journal {
            reason: e.to_string(),
        }
    }
}

/// Result with [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
