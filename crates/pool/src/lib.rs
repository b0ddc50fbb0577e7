//! Reuse of memory instead of allocating it.
//!
//! `switchyard-pool` will own `BufferPool` (host buffers in size classes,
//! handed out behind RAII guards) and `KvBlockPool` (fixed-size KV-cache blocks
//! with reference counts, block tables and a prefix index), plus the
//! `KvStorage` trait through which a model says where blocks physically live.
//! It knows nothing of models or devices beyond that trait.
//!
//! For now the crate holds its error type; the pools arrive with the memory
//! work.
//!
//! # Example
//!
//! ```
//! use switchyard_pool::PoolError;
//!
//! let err = PoolError::OutOfBlocks { requested: 4, free: 1 };
//! assert_eq!(err.to_string(), "out of KV blocks: requested 4, free 1");
//! ```
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

/// Errors from the pools.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Not enough free KV blocks for a request.
    #[error("out of KV blocks: requested {requested}, free {free}")]
    OutOfBlocks {
        /// Blocks asked for.
        requested: usize,
        /// Blocks free at the time.
        free: usize,
    },
}

/// Result with [`PoolError`].
pub type Result<T, E = PoolError> = std::result::Result<T, E>;
