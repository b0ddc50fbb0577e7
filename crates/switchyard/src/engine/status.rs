//! What the engine reports about itself: sessions, capabilities, health
//! and metrics, and the bookkeeping behind them.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use switchyard_cache::CacheStats;
use switchyard_core::{DeviceId, Priority, RequestId};
use switchyard_text::GenerationStats;
use switchyard_vram::{
    BudgetMonitor, HostMonitor, MemoryMonitor, MemorySnapshot, PressureLevel, Thresholds,
};

use crate::config::ModelKind;
use crate::engine::error::EngineError;
use crate::engine::results::ResultCacheStats;
use crate::engine::{Engine, MAX_EMBEDDING_INPUTS, served};

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Waiting in the engine's queue; `position` 0 is served next.
    Queued {
        /// Requests ahead of it.
        position: usize,
    },
    /// Its model is loading or it runs.
    Running,
}

/// One queued or running request, as [`Engine::sessions`](crate::Engine::sessions)
/// lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// The request.
    pub id: RequestId,
    /// Its model.
    pub model: String,
    /// `generation` or `embedding`.
    pub task: &'static str,
    /// Its priority.
    pub priority: Priority,
    /// Where it is.
    pub state: SessionState,
    /// Time since it was submitted.
    pub age: Duration,
    /// Units done (tokens read, inputs embedded) and asked for.
    pub progress: (u64, u64),
    /// Time to finish, from the model's measured throughput (and, while
    /// queued, the work ahead of it); `None` before anything was measured.
    pub eta: Option<Duration>,
}

/// A registered model, as [`Capabilities`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Its id.
    pub id: String,
    /// What it does.
    pub kind: ModelKind,
    /// Where it runs.
    pub devices: Vec<DeviceId>,
    /// Whether it is loaded now.
    pub loaded: bool,
    /// Most requests per batch.
    pub max_batch_size: usize,
}

/// What the engine can do: [`Engine::capabilities`](crate::Engine::capabilities).
#[derive(Debug, Clone, PartialEq)]
pub struct Capabilities {
    /// Model kinds this build serves.
    pub kinds: Vec<ModelKind>,
    /// The registered models.
    pub models: Vec<ModelInfo>,
    /// Devices models are placed on.
    pub devices: Vec<DeviceId>,
    /// Waiting requests accepted before [`EngineError::QueueFull`].
    pub queue_capacity: usize,
    /// Most inputs in one embedding request.
    pub max_embedding_inputs: usize,
    /// The memory budget for loaded models, when one is set.
    pub memory_budget: Option<u64>,
}

/// The engine's overall state: [`Engine::health`](crate::Engine::health).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Serving normally.
    Healthy,
    /// Serving, with a problem worth knowing.
    Degraded {
        /// What.
        reason: String,
    },
    /// Not serving.
    Unhealthy {
        /// Why.
        reason: String,
    },
}

/// Latency percentiles over recent requests, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// One model's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelMetrics {
    /// Requests accepted.
    pub submitted: u64,
    /// Requests that completed.
    pub succeeded: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Requests cancelled.
    pub cancelled: u64,
    /// Requests that timed out before starting.
    pub timed_out: u64,
    /// Submission to result, over the last 1024 successes.
    pub latency: Latency,
    /// Units (tokens, inputs) per second while running, smoothed.
    pub throughput: Option<f64>,
    /// The generation engine's counters, while the model is loaded (its
    /// first loaded replica's).
    pub generation: Option<GenerationStats>,
    /// Per replica, device by device.
    pub replicas: Vec<crate::engine::ReplicaMetrics>,
}

/// A snapshot of everything the engine counts: [`Engine::metrics`](crate::Engine::metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineMetrics {
    /// Per model id.
    pub models: HashMap<String, ModelMetrics>,
    /// Requests waiting in the engine's queue.
    pub queued: usize,
    /// Per device: the model cache's counters.
    pub cache: Vec<(DeviceId, CacheStats<String>)>,
    /// The result cache's counters, when it is enabled.
    pub results: Option<ResultCacheStats>,
    /// Per device: its memory and how pressed it is.
    pub memory: Vec<DeviceMemory>,
}

/// One device's memory, as [`EngineMetrics::memory`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceMemory {
    /// The device.
    pub device: DeviceId,
    /// Bytes the engine's loaded models take on it (its cache's count).
    pub models_bytes: u64,
    /// The most its models may take: the engine's memory budget, or the
    /// memory monitor's budget for the device; `None` when unlimited.
    pub budget: Option<u64>,
    /// The device's reading: from the engine's
    /// [`BudgetMonitor`](switchyard_vram::BudgetMonitor) where it budgets
    /// the device, else the host's memory for the CPU; `None` where nothing
    /// can be read (a GPU without a monitor).
    pub snapshot: Option<MemorySnapshot>,
    /// The snapshot's pressure level at the default thresholds.
    pub pressure: Option<PressureLevel>,
}

impl DeviceMemory {
    /// `device`'s memory: `models_bytes` loaded, read from `monitor` where
    /// it knows the device, else from the host for the CPU.
    pub(crate) fn read(
        device: DeviceId,
        models_bytes: u64,
        engine_budget: Option<u64>,
        monitor: Option<&BudgetMonitor>,
    ) -> Self {
        let budgeted = monitor.filter(|m| m.devices().contains(&device));
        let snapshot = match budgeted {
            Some(m) => m.snapshot(device).ok(),
            None if device.is_cpu() => HostMonitor::new().snapshot(device).ok(),
            None => None,
        };
        let budget = match (engine_budget, budgeted.and(snapshot.as_ref())) {
            (Some(a), Some(s)) => Some(a.min(s.total)),
            (a, s) => a.or(s.map(|s| s.total)),
        };
        let pressure = snapshot
            .as_ref()
            .filter(|s| s.total > 0)
            .map(|s| Thresholds::default().level_of(s.used as f64 / s.total as f64));
        Self {
            device,
            models_bytes,
            budget,
            snapshot,
            pressure,
        }
    }
}

/// Successes kept for percentiles.
const WINDOW: usize = 1024;

/// Running counters of one model.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) metrics: ModelMetrics,
    latencies: VecDeque<f64>,
}

impl Tally {
    pub(crate) fn record(
        &mut self,
        outcome: &Result<(), EngineError>,
        latency: Duration,
        units: u64,
    ) {
        let m = &mut self.metrics;
        match outcome {
            Ok(()) => {
                m.succeeded += 1;
                if self.latencies.len() == WINDOW {
                    self.latencies.pop_front();
                }
                let secs = latency.as_secs_f64();
                self.latencies.push_back(secs);
                if units > 0 && secs > 0.0 {
                    let rate = units as f64 / secs;
                    m.throughput = Some(match m.throughput {
                        Some(old) => 0.8 * old + 0.2 * rate,
                        None => rate,
                    });
                }
            }
            Err(EngineError::Cancelled) => m.cancelled += 1,
            Err(EngineError::TimedOut) => m.timed_out += 1,
            Err(_) => m.failed += 1,
        }
    }

    /// The counters, with latency percentiles over the recent successes
    /// (sorted here, when asked, rather than on every request).
    pub(crate) fn snapshot(&self) -> ModelMetrics {
        let mut m = self.metrics.clone();
        let mut sorted: Vec<f64> = self.latencies.iter().copied().collect();
        if !sorted.is_empty() {
            sorted.sort_by(f64::total_cmp);
            let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
            m.latency = Latency {
                p50: at(0.5),
                p95: at(0.95),
                p99: at(0.99),
            };
        }
        m
    }
}

impl Engine {
    /// What the engine serves and its limits.
    pub fn capabilities(&self) -> Capabilities {
        let mut kinds: Vec<ModelKind> = ModelKind::ALL.into_iter().filter(|k| served(*k)).collect();
        kinds.sort();
        Capabilities {
            kinds,
            models: self
                .inner
                .registry
                .models()
                .iter()
                .map(|m| ModelInfo {
                    id: m.id.clone(),
                    kind: m.kind,
                    devices: m.devices.clone(),
                    loaded: self
                        .inner
                        .replicas
                        .get(&m.id)
                        .is_some_and(|set| set.all().iter().any(|r| self.inner.is_loaded(r))),
                    max_batch_size: m.max_batch_size,
                })
                .collect(),
            devices: self.inner.devices.clone(),
            queue_capacity: self.inner.queue_capacity,
            max_embedding_inputs: MAX_EMBEDDING_INPUTS,
            memory_budget: self.inner.memory_budget,
        }
    }

    /// Healthy, degraded (a model failed its last load, or the queue is
    /// over 90 % full) or unhealthy (shutting down, or no dispatcher left).
    pub fn health(&self) -> Health {
        let (stopping, waiting) = {
            let q = self.inner.queue.lock();
            (q.stopping.is_some(), q.waiting.len())
        };
        if stopping {
            return Health::Unhealthy {
                reason: "shutting down".into(),
            };
        }
        let threads = self.threads.lock();
        if threads.iter().all(std::thread::JoinHandle::is_finished) {
            return Health::Unhealthy {
                reason: "no dispatcher thread is running".into(),
            };
        }
        drop(threads);
        if let Some((model, e)) = self.inner.last_load_error.lock().as_ref() {
            return Health::Degraded {
                reason: format!("model `{model}` failed to load: {e}"),
            };
        }
        if waiting * 10 > self.inner.queue_capacity * 9 {
            return Health::Degraded {
                reason: format!("queue {waiting} of {}", self.inner.queue_capacity),
            };
        }
        Health::Healthy
    }
}
