//! How much memory each device has, and how pressed it is.
//!
//! `switchyard-vram` owns the [`MemoryMonitor`] trait and its
//! implementations:
//!
//! - [`HostMonitor`]: system RAM from `/proc/meminfo`, capped by the cgroup v2
//!   limit (`memory.max`) when that is lower, as it is on most servers;
//! - `CudaMonitor` (feature `cuda`): `cuMemGetInfo` per device through cudarc
//!   with the driver loaded at run time; a typed [`VramError::NoDevice`], never
//!   a panic, where there is no driver;
//! - `NvmlMonitor` (feature `nvml`): the same through NVML, plus compute
//!   utilisation and this process's own use per device;
//! - [`BudgetMonitor`]: "use at most 6 GiB", counting what the engine
//!   reserved; the same answer on every machine;
//! - [`SimulatedMonitor`]: readings a test scripts.
//!
//! On top of any monitor, [`MemoryWatch`] samples one device (now, or every
//! interval on a thread of its own), tracks its [`PressureLevel`] (Low,
//! Moderate, High, Critical at 50 / 75 / 90 % by default) with hysteresis so
//! the level does not flap, keeps a history ring and the peak, calls
//! listeners on level changes, and answers [`MemoryWatch::headroom`] and
//! [`MemoryWatch::recommend_batch_size`].
//!
//! It decides nothing about what to evict or how large a batch is: the
//! model cache and the batcher read its answers. It does not depend on the
//! batcher; `move || watch.headroom()` is a `switchyard_batch::MemoryHeadroom`.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use switchyard_core::DeviceId;
//! use switchyard_vram::{BudgetMonitor, MemoryWatch, PressureLevel, WatchConfig};
//!
//! let budget = Arc::new(BudgetMonitor::new().with_budget(DeviceId::Cpu, 1 << 30));
//! let watch = MemoryWatch::new(budget.clone(), DeviceId::Cpu, WatchConfig::default())?;
//! assert_eq!(watch.level(), PressureLevel::Low);
//!
//! let _weights = budget.reserve(DeviceId::Cpu, 800 << 20)?; // 800 MiB of 1 GiB
//! watch.sample()?;
//! assert_eq!(watch.level(), PressureLevel::High);
//! // 80 % of 1 GiB is 819.2 MiB: room for one 16 MiB item.
//! assert_eq!(watch.recommend_batch_size(16 << 20, 8), 1);
//! # Ok::<(), switchyard_vram::VramError>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(feature = "cuda"), forbid(unsafe_code))]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod budget;
#[cfg(feature = "cuda")]
mod cuda;
mod error;
mod host;
#[cfg(feature = "nvml")]
mod nvml;
mod pressure;
pub mod procfs;
mod simulated;
mod snapshot;
mod watch;

pub use budget::{BudgetMonitor, Reservation};
#[cfg(feature = "cuda")]
pub use cuda::CudaMonitor;
pub use error::{Result, VramError};
pub use host::HostMonitor;
#[cfg(feature = "nvml")]
pub use nvml::NvmlMonitor;
pub use pressure::{PressureLevel, Thresholds, batch_size_for, headroom};
pub use simulated::SimulatedMonitor;
pub use snapshot::{MemoryMonitor, MemorySnapshot};
pub use watch::{LevelChange, ListenerId, MemoryWatch, Sample, WatchConfig};
