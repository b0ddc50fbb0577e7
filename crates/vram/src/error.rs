//! The crate's error type.

use std::path::PathBuf;

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
    /// A system file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A system file did not say what it should.
    #[error("cannot parse {what}: {reason}")]
    Parse {
        /// Which file or field.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A reservation would go over a [`BudgetMonitor`](crate::BudgetMonitor)'s budget.
    #[error("over budget on {device}: {requested} bytes asked, {available} available")]
    OverBudget {
        /// The device.
        device: DeviceId,
        /// Bytes asked for.
        requested: u64,
        /// Bytes left in the budget.
        available: u64,
    },
    /// A setting is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

/// Result with [`VramError`].
pub type Result<T, E = VramError> = std::result::Result<T, E>;
