//! The crate's error type.

/// Errors from parsing or converting core vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A priority name that is not one of `urgent`, `high`, `normal`, `low`.
    #[error("unknown priority {given:?}: expected one of urgent, high, normal, low")]
    UnknownPriority {
        /// The text that was given.
        given: String,
    },
    /// A device name that does not parse (`cpu`, `cuda`, `cuda:N`, `metal`, `metal:N`).
    #[error("invalid device {given:?}: {reason}")]
    InvalidDevice {
        /// The text that was given.
        given: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A request id that does not parse.
    #[error("invalid request id {given:?}: expected a number, optionally prefixed by `req-`")]
    InvalidRequestId {
        /// The text that was given.
        given: String,
    },
    /// The device exists as a name but cannot be opened in this build or on this machine.
    #[error("device {device} is unavailable: {reason}")]
    DeviceUnavailable {
        /// The device that was asked for.
        device: crate::DeviceId,
        /// Why it could not be opened (e.g. the crate was built without CUDA).
        reason: String,
    },
}

/// Result with [`CoreError`].
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
