//! Which models stay loaded.
//!
//! `switchyard-cache` owns [`ModelCache<K, V>`](ModelCache): models behind
//! `Arc`s, loaded through a [`Loader`] (the only part that knows files and
//! formats; no candle here), with
//!
//! - limits by count and by bytes (the loader weighs each model), eviction
//!   by [`EvictionPolicy::Lru`] or [`EvictionPolicy::Gdsf`]
//!   (GreedyDual-Size-Frequency: keep what is expensive to reload and often
//!   used), idle models before models in use, pinned models never; eviction
//!   only drops the cache's reference, so a model in use is freed when its
//!   last user lets go;
//! - single-flight loading: any number of concurrent `get`s of a cold key
//!   run one load and all wait for it; a failure reaches all of them as one
//!   [`CacheError`] and is not cached; a panicking loader is contained;
//! - [`preload`](ModelCache::preload) on a thread, per-key
//!   [`keep_alive`](ModelCache::set_keep_alive) (idle models unload, as
//!   Ollama's do) enforced by [`expire_idle`](ModelCache::expire_idle) or a
//!   [`Reaper`] thread, [`pin`](ModelCache::pin) / `unpin`, `clear`, an
//!   eviction listener, and [`CacheStats`] (hits, misses, loads, failures,
//!   evictions, bytes, load time per model);
//! - memory-pressure awareness through a `switchyard_vram::MemoryWatch`:
//!   evict at High until the level falls, and refuse a load whose estimated
//!   size cannot fit with [`CacheError::InsufficientMemory`];
//! - [`plan_for`](ModelCache::plan_for): given the models queued requests
//!   need, unload the rest and load those, within the limits.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use switchyard_cache::{CacheConfig, LoadError, Loaded, Loader, ModelCache};
//! use switchyard_core::DeviceId;
//!
//! #[derive(Default)]
//! struct Counting(AtomicUsize);
//! impl Loader<&'static str, String> for Counting {
//!     fn load(&self, key: &&'static str, _: DeviceId) -> Result<Loaded<String>, LoadError> {
//!         self.0.fetch_add(1, Ordering::SeqCst);
//!         Ok(Loaded { value: format!("weights of {key}"), bytes: 100 })
//!     }
//! }
//!
//! let loader = Arc::new(Counting::default());
//! let cache = ModelCache::build(loader.clone(), CacheConfig::default(),
//!     switchyard_core::SystemClock::shared(), None);
//! std::thread::scope(|s| {
//!     for _ in 0..8 {
//!         s.spawn(|| cache.get(&"smollm2").map(drop));
//!     }
//! });
//! assert_eq!(loader.0.load(Ordering::SeqCst), 1); // one load for eight callers
//! assert_eq!(cache.stats().hits + cache.stats().misses, 8);
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod cache;
mod error;
mod flight;
mod loader;
mod plan;
mod policy;
mod stats;
mod unload;

pub use cache::{CacheConfig, ModelCache};
pub use error::{CacheError, LoadError, Result};
pub use loader::{Loaded, Loader};
pub use plan::{PlanReport, Reaper};
pub use policy::{EvictReason, EvictionPolicy};
pub use stats::{CacheStats, ModelStats};
