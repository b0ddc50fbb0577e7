//! What runs next, and with whom.
//!
//! `switchyard-batch` will own the priority queue (four levels, FIFO within a
//! level, per-key sub-queues, aging, bounded capacity), the dynamic batcher and
//! its worker threads, the `BatchHandler` trait that pipelines implement, and
//! the batch-size controllers (`Fixed`, `Pid`). It knows no model and no
//! candle: anything that implements the handler trait can be batched.
//!
//! For now the crate holds its error type; the scheduler arrives with its issue.
//!
//! # Example
//!
//! ```
//! use switchyard_batch::BatchError;
//!
//! let err = BatchError::QueueFull { capacity: 128 };
//! assert_eq!(err.to_string(), "queue full (capacity 128)");
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

/// Errors from queueing and batching.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The queue is at capacity; the request was not accepted.
    #[error("queue full (capacity {capacity})")]
    QueueFull {
        /// The capacity that was reached.
        capacity: usize,
    },
}

/// Result with [`BatchError`].
pub type Result<T, E = BatchError> = std::result::Result<T, E>;
