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
