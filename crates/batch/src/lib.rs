//! What runs next, and with whom.
//!
//! `switchyard-batch` sorts incoming requests into batches and runs them on
//! worker threads. It owns:
//!
//! - the [`PriorityQueue`]: four [`Priority`] levels, FIFO within a level,
//!   a sub-queue per [`BatchKey`] (only requests with the same key share a
//!   batch), aging so Low requests are not starved, bounded capacity that
//!   refuses at once with [`BatchError::QueueFull`];
//! - the [`Batcher`]: workers take the most urgent *ready* key, form a batch
//!   up to the controller's target and a cost budget, waiting at most
//!   `max_wait` for it to fill, and call the [`BatchHandler`]; results come
//!   back through a [`Handle`] (blocking, with timeout, polled, or `.await`ed
//!   under any executor); deadlines, cancellation, coalescing of identical
//!   requests, panic isolation and metrics;
//! - the batch-size controllers behind [`BatchSizeController`]: [`Fixed`] and
//!   [`Pid`] (latency setpoint, anti-windup, derivative on measurement, rate
//!   limit, memory clamp through [`MemoryHeadroom`]);
//! - a deterministic [`sim`]ulator that drives the real queue and controllers
//!   on virtual time.
//!
//! It knows no model and no candle: anything that implements
//! [`BatchHandler`] can be batched, and no async runtime is needed.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use switchyard_batch::{BatchContext, BatchHandler, Batcher, Request};
//! use switchyard_core::Priority;
//!
//! /// Squares numbers, a batch at a time.
//! struct Square;
//!
//! impl BatchHandler for Square {
//!     type Input = u64;
//!     type Output = u64;
//!     type Error = std::convert::Infallible;
//!
//!     fn run(&self, batch: &mut [u64], _: &BatchContext<'_>) -> Vec<Result<u64, Self::Error>> {
//!         batch.iter().map(|x| Ok(x * x)).collect()
//!     }
//! }
//!
//! let batcher = Batcher::builder(Square)
//!     .workers(2)
//!     .fixed(16)
//!     .max_wait(Duration::from_millis(1))
//!     .build()?;
//! let handles: Vec<_> = (0..100u64)
//!     .map(|x| batcher.submit(Request::new(x).with_priority(Priority::High)))
//!     .collect::<Result<_, _>>()?;
//! let squares: Vec<u64> = handles.into_iter().map(|h| h.wait()).collect::<Result<_, _>>()?;
//! assert_eq!(squares[9], 81);
//! assert_eq!(batcher.metrics().succeeded, 100);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod background;
mod batcher;
mod controller;
mod error;
mod handle;
mod handler;
mod metrics;
mod pid;
mod queue;
mod request;
pub mod sim;
mod worker;
mod yield_gate;

pub use background::BackgroundPool;
pub use batcher::{
    Batcher, BatcherBuilder, BatcherConfig, ControllerFactory, HandleOf, MemoryHook, ShutdownMode,
};
pub use controller::{
    BatchObservation, BatchSizeController, ControllerState, Fixed, MemoryClamp, MemoryHeadroom,
};
pub use error::{BatchError, QueueScope, Result, SubmitError};
pub use handle::{Handle, Outcome};
pub use handler::{BatchContext, BatchHandler};
pub use metrics::{Histogram, MetricsSnapshot, Summary};
pub use pid::{LatencyMode, Pid, PidConfig};
pub use queue::{
    KeyStats, KeySummary, Position, PriorityQueue, QueueConfig, QueueStats, Queued, Taken,
};
pub use request::{BatchKey, Request};
pub use switchyard_core::Priority;
pub use yield_gate::{BACKGROUND_WINDOW, YIELD_POLL, YieldGate, YieldGuard};
