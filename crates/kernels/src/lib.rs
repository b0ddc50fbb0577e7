//! Quantized CPU matrix multiplication for GGUF block formats.
//!
//! `switchyard-kernels` multiplies activations by weights kept in the GGUF
//! block formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K:
//!
//! - [`PackedMatrix`] repacks a tensor once, at load time, into groups of
//!   eight output columns with their values interleaved so one broadcast
//!   activation feeds eight columns (llama.cpp's "repack" idea);
//! - [`QuantizedRows`] quantizes activations on the fly to 8-bit blocks of 32
//!   with their sums, so every product is an integer dot product;
//! - [`matmul`] picks the fastest path this CPU has at run time
//!   ([`Isa`]: AVX-512 VNNI or AVX2 on x86-64, NEON with or without the
//!   dot-product extension on aarch64, else portable scalar), tiles rows x column
//!   groups so a batch of rows reads each weight once, and splits column
//!   groups over the [`ComputePool`] it is handed.
//!
//! [`attention`] holds the other inner loop of decoding: f32 attention of a
//! few query heads over keys and values where a paged cache keeps them.
//! Both it and the activation quantizer are written once in portable Rust
//! and built again for AVX-512 and AVX2 (chosen at run time like the
//! matmul), with a fixed order of f32 operations so every build agrees.
//!
//! Every path gives the same bits as the scalar one. Against
//! dequantize-then-f32 the difference is the activation rounding: for each
//! output, `|ours - exact| <= sum over blocks of (d_x / 2) * sum |w|` (plus
//! f32 rounding), `d_x` being the block's activation scale `max|x| / 127`.
//!
//! It owns no model code and no threads. On aarch64 the attention and
//! quantizer loops are the portable builds, which the compiler vectorises
//! for NEON (baseline there); the NEON matmul paths are tested on x86
//! machines under `qemu-aarch64` (see `.ci/run`).
//!
//! # Example
//!
//! ```
//! use switchyard_kernels::{Inline, PackedMatrix, QuantFormat, QuantizedRows, matmul};
//!
//! // Two output features of 32 inputs in Q8_0: scale 0.5 (f16 0x3800), values 1..=32 and all 2.
//! let mut data = Vec::new();
//! data.extend_from_slice(&[0x00, 0x38]);
//! data.extend((1..=32).map(|v: i8| v as u8));
//! data.extend_from_slice(&[0x00, 0x38]);
//! data.extend([2u8; 32]);
//! let w = PackedMatrix::from_gguf(QuantFormat::Q8_0, 2, 32, &data)?;
//!
//! let mut x = QuantizedRows::new();
//! x.quantize(&[1.0; 32], 1, 32)?; // one row of ones
//! let mut out = [0.0f32; 2];
//! matmul(&w, &x, &mut out, &Inline)?;
//! assert_eq!(out, [0.5 * 528.0, 0.5 * 64.0]);
//! # Ok::<(), switchyard_kernels::KernelError>(())
//! ```
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod activations;
pub mod attention;
mod elementwise;
mod format;
mod matmul;
mod multiversion;
#[cfg(target_arch = "aarch64")]
mod neon;
mod out;
mod packed;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use activations::{PARALLEL_ROWS, QuantizedRows};
pub use elementwise::{rms_norm, silu_mul};
pub use format::{QuantFormat, dequantize};
pub use matmul::{ComputePool, Inline, Isa, matmul, matmul_with};
pub use packed::PackedMatrix;

/// Errors from the kernels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// Weight and activation (or output) sizes disagree.
    #[error("shape mismatch: expected {expected}, got {got}")]
    ShapeMismatch {
        /// The size the weights call for.
        expected: usize,
        /// The size given.
        got: usize,
    },
    /// A matrix shape the format cannot hold.
    #[error("{format} matrix with {cols} columns: {reason}")]
    BadShape {
        /// The block format.
        format: QuantFormat,
        /// Columns asked for.
        cols: usize,
        /// What is wrong.
        reason: String,
    },
    /// Quantized bytes that do not fit the format or shape.
    #[error("bad {format} data: {reason}")]
    BadData {
        /// The block format.
        format: QuantFormat,
        /// What is wrong.
        reason: String,
    },
    /// Activations that cannot be quantized.
    #[error("bad activations: {reason}")]
    BadActivations {
        /// What is wrong.
        reason: String,
    },
    /// A row index past the end.
    #[error("row {index} out of range for {len} rows")]
    OutOfRange {
        /// Index asked for.
        index: usize,
        /// Rows held.
        len: usize,
    },
    /// Attention arguments that disagree.
    #[error("bad attention arguments: {reason}")]
    BadAttention {
        /// What is wrong.
        reason: String,
    },
    /// This CPU cannot run the chosen path.
    #[error("the {isa} path is not available on this CPU")]
    Unsupported {
        /// The path asked for.
        isa: Isa,
    },
}

/// Result with [`KernelError`].
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
