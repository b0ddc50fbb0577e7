//! Image pipelines on candle: Stable Diffusion and friends.
//!
//! `switchyard-diffusion` will own text-to-image, image-to-image and
//! inpainting pipelines loaded from diffusers folders, the `Scheduler` trait
//! and its DDIM / Euler / Euler Ancestral / DPM++ 2M implementations, LoRA,
//! VAE slicing and tiling, and image pre- and post-processing. It does not
//! queue or batch requests by itself: the batcher hands it compatible batches.
//!
//! For now the crate holds its error type; the pipelines arrive with their issue.
//!
//! # Example
//!
//! ```
//! use switchyard_diffusion::DiffusionError;
//!
//! let err = DiffusionError::InvalidInput { field: "width", reason: "must be a multiple of 8".into() };
//! assert_eq!(err.to_string(), "invalid width: must be a multiple of 8");
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

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
}

/// Result with [`DiffusionError`].
pub type Result<T, E = DiffusionError> = std::result::Result<T, E>;
