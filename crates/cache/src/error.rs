//! The crate's error type.

use std::sync::Arc;

/// What a [`Loader`](crate::Loader) returns when it fails.
pub type LoadError = Box<dyn std::error::Error + Send + Sync>;

/// Errors from the model cache. Cloneable: a failed single-flight load
/// reaches every waiter as the same error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A model does not fit even after evicting everything evictable.
    #[error("insufficient memory for {model}: needed {needed} bytes, {free} free")]
    InsufficientMemory {
        /// The model.
        model: String,
        /// Bytes the model needs.
        needed: u64,
        /// Bytes free (or left under the cache's byte limit) after evicting.
        free: u64,
    },
    /// The loader failed; nothing was cached.
    #[error("loading {model} failed: {source}")]
    Load {
        /// The model.
        model: String,
        /// The loader's error, shared by every waiter.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The loader panicked; nothing was cached.
    #[error("loading {model} panicked: {message}")]
    LoaderPanicked {
        /// The model.
        model: String,
        /// The panic message.
        message: String,
    },
    /// The key is not loaded (for `pin` and friends).
    #[error("{model} is not loaded")]
    NotLoaded {
        /// The model.
        model: String,
    },
}

/// Result with [`CacheError`].
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
