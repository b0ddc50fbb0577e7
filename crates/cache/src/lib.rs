//! Which models stay loaded.
//!
//! `switchyard-cache` will own `ModelCache<K, V>` over a `Loader` trait: a
//! byte-weighted cache with LRU and cost-aware eviction, single-flight loads,
//! keep-alive, preloading, pinning of models in use and eviction under memory
//! pressure. It knows nothing of candle: values are whatever a loader returns.
//!
//! For now the crate holds its error type; the cache arrives with the memory
//! work.
//!
//! # Example
//!
//! ```
//! use switchyard_cache::CacheError;
//!
//! let err = CacheError::InsufficientMemory { needed: 10, free: 4 };
//! assert_eq!(err.to_string(), "insufficient memory: needed 10 bytes, 4 free");
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

/// Errors from the model cache.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A model does not fit even after evicting everything evictable.
    #[error("insufficient memory: needed {needed} bytes, {free} free")]
    InsufficientMemory {
        /// Bytes the model needs.
        needed: u64,
        /// Bytes that could be freed.
        free: u64,
    },
}

/// Result with [`CacheError`].
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
