//! The shared vocabulary of Switchyard.
//!
//! Every other Switchyard crate speaks in these types, so that a request's
//! [`Priority`], its [`Deadline`], the [`DeviceId`] it runs on and the
//! [`CancellationToken`] it checks mean the same thing in the batcher, the
//! model cache and the pipelines.
//!
//! This crate owns only vocabulary: no model code, no async runtime, no
//! candle-transformers. The optional `candle` feature adds conversions between
//! [`DeviceId`] and `candle_core::Device`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use switchyard_core::{CancellationToken, Clock, Deadline, ManualClock, Priority};
//!
//! // Urgent work outranks normal work.
//! assert!(Priority::Urgent > Priority::Normal);
//!
//! // Deadlines are read against a clock; tests drive a manual one.
//! let clock = ManualClock::new();
//! let deadline = Deadline::after(&clock, Duration::from_millis(50));
//! assert!(!deadline.is_expired(&clock));
//! clock.advance(Duration::from_millis(60));
//! assert!(deadline.is_expired(&clock));
//!
//! // Long jobs check a cancellation token between steps.
//! let token = CancellationToken::new();
//! let step = token.child_token();
//! token.cancel();
//! assert!(step.check().is_err());
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod cancel;
mod clock;
mod deadline;
mod device;
mod error;
mod priority;
mod request;
mod rng;

pub use cancel::{CancellationToken, Cancelled};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use deadline::Deadline;
pub use device::{DeviceId, DeviceKind};
pub use error::{CoreError, Result};
pub use priority::{Priority, QueueOrder};
pub use request::RequestId;
pub use rng::SplitMix64;

/// The message of a caught panic's payload (`&str` or `String`), for
/// errors that report a panic contained at a worker or loader boundary.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Whether an error's message reports a failed allocation: CUDA's
/// `CUDA_ERROR_OUT_OF_MEMORY`, "out of memory" from cuBLAS, Metal or an
/// allocator. Backends report these as text; this is how the layers above
/// tell them from other failures (to free memory and retry smaller).
pub fn is_out_of_memory_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "out of memory",
        "out_of_memory",
        "outofmemory",
        "failed to allocate",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

#[cfg(test)]
mod oom_messages {
    use super::is_out_of_memory_message;

    #[test]
    fn allocation_failures_are_told_from_other_errors() {
        for yes in [
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "CUDA out of memory. Tried to allocate 2.00 GiB",
            "memory allocation of 1073741824 bytes failed to allocate",
            "Metal: OutOfMemory",
        ] {
            assert!(is_out_of_memory_message(yes), "{yes}");
        }
        for no in ["shape mismatch in matmul", "no such file", "memory layout"] {
            assert!(!is_out_of_memory_message(no), "{no}");
        }
    }
}

#[cfg(test)]
mod send_sync {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<CancellationToken>();
        assert_send_sync::<ManualClock>();
        assert_send_sync::<SystemClock>();
        assert_send_sync::<SharedClock>();
        assert_send_sync::<Deadline>();
        assert_send_sync::<DeviceId>();
        assert_send_sync::<Priority>();
        assert_send_sync::<QueueOrder>();
        assert_send_sync::<RequestId>();
        assert_send_sync::<CoreError>();
    }
}
