//! [`MemoryWatch`]: samples one device, tracks its pressure level with
//! hysteresis, keeps a history and the peak, and tells listeners of changes.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use switchyard_core::DeviceId;

use crate::pressure::{batch_size_for, headroom};
use crate::{MemoryMonitor, MemorySnapshot, PressureLevel, Result, Thresholds, VramError};

/// Settings of a [`MemoryWatch`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchConfig {
    /// Level thresholds, hysteresis and the headroom limit.
    pub thresholds: Thresholds,
    /// How often the sampler thread reads the device.
    pub interval: Duration,
    /// Samples kept in the history ring.
    pub history: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            interval: Duration::from_millis(500),
            history: 120,
        }
    }
}

/// One reading in the history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// What the monitor said.
    pub snapshot: MemorySnapshot,
    /// The level after it.
    pub level: PressureLevel,
}

/// A level change, as listeners see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelChange {
    /// The device.
    pub device: DeviceId,
    /// The level before.
    pub from: PressureLevel,
    /// The level now.
    pub to: PressureLevel,
    /// The reading that moved it.
    pub snapshot: MemorySnapshot,
}

/// Names a listener so it can be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

type Listener = Arc<dyn Fn(&LevelChange) + Send + Sync>;

struct WatchState {
    level: PressureLevel,
    latest: MemorySnapshot,
    history: VecDeque<Sample>,
    peak_used: u64,
    failures: u64,
    last_error: Option<String>,
}

struct Inner {
    monitor: Arc<dyn MemoryMonitor>,
    device: DeviceId,
    config: WatchConfig,
    state: Mutex<WatchState>,
    listeners: Mutex<(u64, Vec<(ListenerId, Listener)>)>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// Watches one device's memory.
///
/// [`sample`](Self::sample) reads it now; [`spawn`](Self::spawn) also runs a
/// sampler thread that reads it every `interval` until the watch is dropped.
/// [`headroom`](Self::headroom) and
/// [`recommend_batch_size`](Self::recommend_batch_size) answer from the
/// latest reading; a batcher takes the first through a closure
/// (`move || watch.headroom()` is a `switchyard_batch::MemoryHeadroom`).
///
/// ```
/// use std::sync::Arc;
/// use switchyard_core::DeviceId;
/// use switchyard_vram::{MemoryWatch, PressureLevel, SimulatedMonitor, WatchConfig};
///
/// let gpu = DeviceId::Cuda(0);
/// let sim = Arc::new(SimulatedMonitor::new().with_device(gpu, 1000, 100));
/// let watch = MemoryWatch::new(sim.clone(), gpu, WatchConfig::default())?;
/// assert_eq!(watch.level(), PressureLevel::Low);
/// assert_eq!(watch.headroom(), 700); // up to 80 % of 1000
/// sim.set_used(gpu, 800);
/// watch.sample()?;
/// assert_eq!(watch.level(), PressureLevel::High);
/// assert_eq!(watch.recommend_batch_size(10, 8), 1);
/// # Ok::<(), switchyard_vram::VramError>(())
/// ```
pub struct MemoryWatch {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl MemoryWatch {
    /// Watch `device` of `monitor`, reading it once now. No thread runs.
    pub fn new(
        monitor: Arc<dyn MemoryMonitor>,
        device: DeviceId,
        config: WatchConfig,
    ) -> Result<Self> {
        config.thresholds.validate()?;
        if config.interval.is_zero() {
            return Err(VramError::InvalidConfig {
                field: "interval",
                reason: "must be above zero".to_owned(),
            });
        }
        let first = monitor.snapshot(device)?;
        let level = config.thresholds.level_of(first.used_fraction());
        let mut history = VecDeque::with_capacity(config.history.min(4096));
        if config.history > 0 {
            history.push_back(Sample {
                at: Instant::now(),
                snapshot: first,
                level,
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                monitor,
                device,
                config,
                state: Mutex::new(WatchState {
                    level,
                    latest: first,
                    history,
                    peak_used: first.used,
                    failures: 0,
                    last_error: None,
                }),
                listeners: Mutex::new((0, Vec::new())),
                stop: Mutex::new(false),
                wake: Condvar::new(),
            }),
            thread: Mutex::new(None),
        })
    }

    /// Like [`new`](Self::new), and start the sampler thread.
    pub fn spawn(
        monitor: Arc<dyn MemoryMonitor>,
        device: DeviceId,
        config: WatchConfig,
    ) -> Result<Self> {
        let watch = Self::new(monitor, device, config)?;
        let inner = Arc::clone(&watch.inner);
        let thread = std::thread::Builder::new()
            .name(format!("switchyard-vram-{device}"))
            .spawn(move || sampler(&inner))
            .map_err(|e| VramError::InvalidConfig {
                field: "sampler thread",
                reason: e.to_string(),
            })?;
        *watch.thread.lock() = Some(thread);
        Ok(watch)
    }

    /// The device watched.
    pub fn device(&self) -> DeviceId {
        self.inner.device
    }

    /// The settings.
    pub fn config(&self) -> &WatchConfig {
        &self.inner.config
    }

    /// Read the device now, update level, history and peak, and call the
    /// listeners if the level changed. A failed read keeps the last good one.
    pub fn sample(&self) -> Result<MemorySnapshot> {
        sample(&self.inner)
    }

    /// The current level.
    pub fn level(&self) -> PressureLevel {
        self.inner.state.lock().level
    }

    /// The latest good reading.
    pub fn latest(&self) -> MemorySnapshot {
        self.inner.state.lock().latest
    }

    /// The readings kept, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.inner.state.lock().history.iter().copied().collect()
    }

    /// The most bytes seen in use.
    pub fn peak_used(&self) -> u64 {
        self.inner.state.lock().peak_used
    }

    /// Failed reads so far, and the last one's message.
    pub fn failures(&self) -> (u64, Option<String>) {
        let state = self.inner.state.lock();
        (state.failures, state.last_error.clone())
    }

    /// Bytes that may still be taken before use reaches the headroom limit.
    pub fn headroom(&self) -> u64 {
        headroom(&self.latest(), &self.inner.config.thresholds)
    }

    /// How many items of `per_item_bytes` fit in the headroom, in `1..=max`.
    pub fn recommend_batch_size(&self, per_item_bytes: u64, max: usize) -> usize {
        batch_size_for(self.headroom(), per_item_bytes, max)
    }

    /// Call `listener` on every level change (from whichever thread sampled).
    pub fn on_level_change(
        &self,
        listener: impl Fn(&LevelChange) + Send + Sync + 'static,
    ) -> ListenerId {
        let mut listeners = self.inner.listeners.lock();
        listeners.0 += 1;
        let id = ListenerId(listeners.0);
        listeners.1.push((id, Arc::new(listener)));
        id
    }

    /// Stop calling a listener. Returns whether it was registered.
    pub fn remove_listener(&self, id: ListenerId) -> bool {
        let mut listeners = self.inner.listeners.lock();
        let before = listeners.1.len();
        listeners.1.retain(|(l, _)| *l != id);
        listeners.1.len() != before
    }

    /// Stop the sampler thread (if any) and wait for it. Idempotent.
    pub fn stop(&self) {
        *self.inner.stop.lock() = true;
        self.inner.wake.notify_all();
        if let Some(thread) = self.thread.lock().take() {
            // The sampler contains listener panics; a join error is a bug of ours.
            let _ = thread.join();
        }
    }
}

fn sample(inner: &Inner) -> Result<MemorySnapshot> {
    let reading = inner.monitor.snapshot(inner.device);
    let (snapshot, change) = {
        let mut state = inner.state.lock();
        let snapshot = match reading {
            Ok(s) => s,
            Err(e) => {
                state.failures += 1;
                state.last_error = Some(e.to_string());
                return Err(e);
            }
        };
        let from = state.level;
        let to = inner
            .config
            .thresholds
            .next_level(from, snapshot.used_fraction());
        state.level = to;
        state.latest = snapshot;
        state.peak_used = state.peak_used.max(snapshot.used);
        if inner.config.history > 0 {
            if state.history.len() == inner.config.history {
                state.history.pop_front();
            }
            state.history.push_back(Sample {
                at: Instant::now(),
                snapshot,
                level: to,
            });
        }
        let change = (from != to).then_some(LevelChange {
            device: inner.device,
            from,
            to,
            snapshot,
        });
        (snapshot, change)
    };
    if let Some(change) = change {
        let listeners: Vec<Listener> = inner
            .listeners
            .lock()
            .1
            .iter()
            .map(|(_, l)| Arc::clone(l))
            .collect();
        for listener in listeners {
            // A panicking listener must not take the sampler down with it.
            let _ = catch_unwind(AssertUnwindSafe(|| listener(&change)));
        }
    }
    Ok(snapshot)
}

fn sampler(inner: &Inner) {
    let mut stop = inner.stop.lock();
    while !*stop {
        let _ = inner.wake.wait_for(&mut stop, inner.config.interval);
        if *stop {
            break;
        }
        drop(stop);
        // Failures are counted in the state; the thread keeps sampling.
        let _ = sample(inner);
        stop = inner.stop.lock();
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for MemoryWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryWatch")
            .field("device", &self.inner.device)
            .field("level", &self.level())
            .field("latest", &self.latest())
            .finish()
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
