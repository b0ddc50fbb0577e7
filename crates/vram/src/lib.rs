//! How much memory each device has, and how pressed it is.
//!
//! `switchyard-vram` will own the `MemoryMonitor` trait and its host
//! (`/proc/meminfo` + cgroup v2), CUDA (feature `cuda`, dynamic loading),
//! budget and simulated implementations, pressure levels with hysteresis, a
//! sampler thread and listeners. It decides nothing about what to evict or how
//! large a batch is: the cache and the batcher read its answers.
//!
//! For now the crate holds its error type; the monitors arrive with the
//! memory work.
//!
//! # Example
//!
//! ```
//! use switchyard_core::DeviceId;
//! use switchyard_vram::VramError;
//!
//! let err = VramError::NoDevice { device: DeviceId::Cuda(0), reason: "no driver".into() };
//! assert_eq!(err.to_string(), "no device cuda:0: no driver");
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

use switchyard_core::DeviceId;

/// Errors from reading device memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VramError {
    /// The device does not exist or its driver cannot be loaded.
    #[error("no device {device}: {reason}")]
    NoDevice {
        /// The device that was asked for.
        device: DeviceId,
        /// Why it is not there.
        reason: String,
    },
}

/// Result with [`VramError`].
pub type Result<T, E = VramError> = std::result::Result<T, E>;
