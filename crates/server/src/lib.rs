//! The Switchyard HTTP service.
//!
//! `switchyard-server` will own the HTTP layer over the engine: the
//! OpenAI-compatible endpoints (`/v1/chat/completions`, `/v1/embeddings`, ...),
//! the native `/api/inference` and `/api/system` endpoints, streaming, request
//! limits and authentication. It is the only crate that uses an async runtime;
//! everything it serves is computed by the `switchyard` engine.
//!
//! For now the crate holds its error type; the service arrives with its issue.
//!
//! # Example
//!
//! ```
//! use switchyard_server::ServerError;
//!
//! let err = ServerError::Bind { addr: "127.0.0.1:80".into(), reason: "permission denied".into() };
//! assert_eq!(err.to_string(), "cannot listen on 127.0.0.1:80: permission denied");
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

/// Errors from running the service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why it failed.
        reason: String,
    },
}
