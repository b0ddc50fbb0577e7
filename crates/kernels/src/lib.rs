//! Quantized CPU matrix multiplication for GGUF block formats.
//!
//! `switchyard-kernels` will own matrix x activation products for Q4_0, Q4_1,
//! Q5_x, Q8_0 and the K-quants, with activations quantized on the fly, SIMD
//! paths chosen at run time (AVX2, AVX-512 VNNI, NEON, scalar), batching over
//! activation rows and weight repacking. Pure compute: no model code, no
//! threads of its own.
//!
//! For now the crate holds its error type; the kernels arrive with their issue.
//!
//! # Example
//!
//! ```
//! use switchyard_kernels::KernelError;
//!
//! let err = KernelError::ShapeMismatch { expected: 64, got: 48 };
//! assert_eq!(err.to_string(), "shape mismatch: expected inner dimension 64, got 48");
//! ```
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

/// Errors from the kernels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// Weight and activation inner dimensions disagree.
    #[error("shape mismatch: expected inner dimension {expected}, got {got}")]
    ShapeMismatch {
        /// The weight's inner dimension.
        expected: usize,
        /// The activation's inner dimension.
        got: usize,
    },
}

/// Result with [`KernelError`].
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
