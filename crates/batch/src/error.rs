//! The crate's error type.

use std::convert::Infallible;
use std::fmt;

use crate::Request;

/// Which bound a rejected request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueScope {
    /// The queue's total capacity, over all keys.
    Global,
    /// The capacity of one [`BatchKey`](crate::BatchKey)'s sub-queue.
    Key,
}

impl fmt::Display for QueueScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueScope::Global => "queue",
            QueueScope::Key => "per-key queue",
        })
    }
}

/// Why a request did not produce a result.
///
/// `E` is the handler's own error type; queue-level failures that happen
/// before any handler is involved use the default, [`Infallible`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError<E = Infallible> {
    /// The queue (or the request's key) is at capacity; nothing was queued.
    #[error("{scope} full (capacity {capacity})")]
    QueueFull {
        /// Which bound was reached.
        scope: QueueScope,
        /// The capacity that was reached.
        capacity: usize,
    },
    /// The request's deadline passed before it ran; it never ran.
    #[error("the request's deadline passed before it ran")]
    TimedOut,
    /// The request was cancelled (by its handle, by id, or by dropping the handle).
    #[error("the request was cancelled")]
    Cancelled,
    /// The batcher is shutting down and no longer runs queued work.
    #[error("the batcher is shutting down")]
    ShuttingDown,
    /// The handler panicked while running this request's batch.
    #[error("the handler panicked: {message}")]
    HandlerPanicked {
        /// The panic's message, when it was a string.
        message: String,
    },
    /// The handler returned a different number of results than it was given inputs.
    #[error("the handler returned {got} results for a batch of {expected}")]
    ResultCount {
        /// The batch size.
        expected: usize,
        /// The number of results returned.
        got: usize,
    },
    /// The result was already taken from this handle.
    #[error("the result was already taken from this handle")]
    AlreadyTaken,
    /// A configuration value is out of range.
    #[error("invalid configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The threads for held work could not be started.
    #[error("could not start background threads: {reason}")]
    Background {
        /// What the OS said.
        reason: String,
    },
    /// The handler failed this request.
    #[error("handler error: {0}")]
    Handler(#[source] E),
}

impl BatchError<Infallible> {
    /// The same queue-level error, typed for a handler's error type.
    pub fn widen<E>(self) -> BatchError<E> {
        match self {
            BatchError::QueueFull { scope, capacity } => BatchError::QueueFull { scope, capacity },
            BatchError::TimedOut => BatchError::TimedOut,
            BatchError::Cancelled => BatchError::Cancelled,
            BatchError::ShuttingDown => BatchError::ShuttingDown,
            BatchError::HandlerPanicked { message } => BatchError::HandlerPanicked { message },
            BatchError::ResultCount { expected, got } => BatchError::ResultCount { expected, got },
            BatchError::AlreadyTaken => BatchError::AlreadyTaken,
            BatchError::InvalidConfig { field, reason } => {
                BatchError::InvalidConfig { field, reason }
            }
            BatchError::Background { reason } => BatchError::Background { reason },
            BatchError::Handler(never) => match never {},
        }
    }
}

/// A request the batcher refused at submission, handed back with the reason.
///
/// Nothing is lost at the boundary: the caller gets its request back and may
/// retry it later, send it elsewhere, or report the error.
#[derive(Debug)]
pub struct SubmitError<I> {
    /// Why it was refused: [`BatchError::QueueFull`], [`BatchError::ShuttingDown`]
    /// or [`BatchError::TimedOut`] (its deadline had already passed).
    pub error: BatchError,
    /// The request, unchanged.
    pub request: Request<I>,
}

impl<I> SubmitError<I> {
    /// The request, for a retry.
    pub fn into_request(self) -> Request<I> {
        self.request
    }
}

impl<I> fmt::Display for SubmitError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request refused: {}", self.error)
    }
}

impl<I: fmt::Debug> std::error::Error for SubmitError<I> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Result with [`BatchError`].
pub type Result<T, E = BatchError> = std::result::Result<T, E>;
