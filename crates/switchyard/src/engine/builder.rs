//! [`EngineBuilder`]: the engine's settings, and starting it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use switchyard_batch::YieldGate;
use switchyard_cache::{CacheConfig, ModelCache};
use switchyard_core::{DeviceId, Priority};
use switchyard_vram::BudgetMonitor;

use super::models::{ModelLoader, RunnerSettings};
use super::recovery::RecoveryPolicy;
use super::replicas::ReplicaSet;
use super::{Engine, EngineError, Inner, Queue, Result, Sessions, served};
use crate::config::{ModelSpec, Registry, hf_cache_dir};
use crate::journal::Journal;

/// Builds an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    registry: Registry,
    memory_budget: Option<u64>,
    queue_capacity: usize,
    dispatchers: usize,
    kv_tokens: usize,
    batch_max_wait: Duration,
    hf_cache: Option<PathBuf>,
    result_cache: Option<usize>,
    monitor: Option<BudgetMonitor>,
    journal: Option<PathBuf>,
    recovery: RecoveryPolicy,
    yield_to: Option<Priority>,
    background_threads: bool,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self {
            registry: Registry::new(),
            memory_budget: None,
            queue_capacity: 1024,
            dispatchers: 2,
            kv_tokens: 4096,
            batch_max_wait: Duration::from_millis(2),
            hf_cache: None,
            result_cache: None,
            monitor: None,
            journal: None,
            recovery: RecoveryPolicy::default(),
            yield_to: Some(Priority::Urgent),
            background_threads: true,
        }
    }
}

impl EngineBuilder {
    /// Priority across models: while a request at `level` or above is
    /// under way on a device, less urgent work there (other models'
    /// batches, other sequences' decoding steps) pauses between steps, so
    /// that urgent requests keep the latency they have alone. Default
    /// `Some(Priority::Urgent)`; `None` lets every model's work share the
    /// device whatever its priority. Each batcher gets an urgent lane, so
    /// urgent requests do not wait behind a batch of their own model, and
    /// once urgent requests come, work below the level runs on background
    /// threads at the OS's lowest priority (see
    /// [`background_threads`](Self::background_threads)), so urgent work
    /// takes the cores even in the middle of a batch. Queue aging still
    /// lifts work that waited long.
    pub fn yield_to(mut self, level: Option<Priority>) -> Self {
        self.yield_to = level;
        self
    }

    /// Whether work below the [`yield_to`](Self::yield_to) level runs on
    /// background threads at the OS's lowest scheduling priority
    /// (`switchyard_batch::BackgroundPool`, `SCHED_IDLE` on Linux; default
    /// `true`) for `switchyard_batch::BACKGROUND_WINDOW` after each urgent
    /// request. Those threads lose the cores to every other process too. With `false`
    /// a batch that has started keeps its share of the cores until its
    /// next pause between steps (an embedding batch runs to its end).
    pub fn background_threads(mut self, on: bool) -> Self {
        self.background_threads = on;
        self
    }

    /// Serve the models of `registry` (replacing any added before).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Serve one more model.
    ///
    /// # Errors
    /// When the spec is invalid or its id is taken.
    pub fn model(mut self, spec: ModelSpec) -> Result<Self> {
        self.registry.add(spec)?;
        Ok(self)
    }

    /// Bytes loaded models may take on each device together; past it the
    /// least recently used idle model is evicted, and a model that cannot
    /// fit fails its requests with [`EngineError::InsufficientMemory`].
    /// Unlimited by default.
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// Hold each loaded model's bytes against `monitor`'s budget for its
    /// device (devices it has no budget for are not limited). A load the
    /// budget refuses, or a batch that runs out of memory, evicts the
    /// device's unused models and tries once more before failing with
    /// [`EngineError::InsufficientMemory`]; so does a model that can never
    /// fit the budget, at submit.
    pub fn memory_monitor(mut self, monitor: BudgetMonitor) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// Waiting requests accepted before [`EngineError::QueueFull`]
    /// (default 1024).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }

    /// Threads that take requests from the queue and load models
    /// (default 2: one load never holds up loaded models).
    pub fn dispatchers(mut self, n: usize) -> Self {
        self.dispatchers = n.max(1);
        self
    }

    /// KV cache tokens of each generation model (default 4096).
    pub fn kv_tokens(mut self, tokens: usize) -> Self {
        self.kv_tokens = tokens.max(16);
        self
    }

    /// Longest an embedding or image batch waits to fill (default 2 ms).
    pub fn batch_max_wait(mut self, wait: Duration) -> Self {
        self.batch_max_wait = wait;
        self
    }

    /// Where `hf_repo` sources are looked up (default: the hub's own
    /// cache, see [`hf_cache_dir`]).
    pub fn hf_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.hf_cache = Some(dir.into());
        self
    }

    /// Answer identical requests from a cache of the last `capacity`
    /// results (off by default). Every request the engine runs is
    /// deterministic (greedy or seeded sampling, seeded diffusion noise), so
    /// a repeated request gets exactly the answer it would compute; hits and
    /// misses show in [`EngineMetrics::results`](super::EngineMetrics).
    /// Results are kept whole: size `capacity` with image results in mind.
    pub fn result_cache(mut self, capacity: usize) -> Self {
        self.result_cache = Some(capacity);
        self
    }

    /// Record every accepted request, and its end, in a crash journal at
    /// `path` (see [`crate::journal`]; off by default). At build, requests a
    /// previous run accepted and never finished are handled by the
    /// [`recovery`](Self::recovery) policy and listed by
    /// [`Engine::recovered`].
    pub fn journal(mut self, path: impl Into<PathBuf>) -> Self {
        self.journal = Some(path.into());
        self
    }

    /// What to do with the journal's unfinished requests at build (default
    /// [`RecoveryPolicy::Requeue`]).
    pub fn recovery(mut self, policy: RecoveryPolicy) -> Self {
        self.recovery = policy;
        self
    }

    /// Starts the engine. Models load when first asked for.
    ///
    /// # Errors
    /// When a model's kind is not served by this build, or the journal
    /// cannot be opened ([`EngineError::Journal`]: unreadable, or damaged
    /// before its end; a torn last record is dropped, not an error).
    pub fn build(self) -> Result<Engine> {
        for spec in self.registry.models() {
            if !served(spec.kind) {
                return Err(EngineError::Unsupported {
                    model: spec.id.clone(),
                    reason: format!("{} models are not served by the engine yet", spec.kind),
                });
            }
        }
        let journal = match &self.journal {
            Some(path) => Some(Arc::new(Journal::open(path)?)),
            None => None,
        };
        let registry = Arc::new(self.registry);
        let sessions: Sessions = Arc::default();
        let tunings: super::tuning::Tunings = Arc::default();
        let mut devices: Vec<DeviceId> = Vec::new();
        for spec in registry.models() {
            for d in &spec.devices {
                if !devices.contains(d) {
                    devices.push(*d);
                }
            }
        }
        let yield_gates = match self.yield_to {
            Some(level) => devices
                .iter()
                .map(|&d| {
                    let gate = YieldGate::with_background(level, self.background_threads);
                    (d, gate)
                })
                .collect(),
            None => HashMap::new(),
        };
        let loader = Arc::new(ModelLoader {
            registry: Arc::clone(&registry),
            hf_cache: self.hf_cache.unwrap_or_else(hf_cache_dir),
            settings: RunnerSettings {
                kv_tokens: self.kv_tokens,
                batch_max_wait: self.batch_max_wait,
                yield_to: self.yield_to,
                yield_gates,
            },
            monitor: self.monitor.clone(),
            tunings: Arc::clone(&tunings),
            free_memory: std::sync::OnceLock::new(),
            sessions: Arc::clone(&sessions),
        });
        let replicas: HashMap<String, ReplicaSet> = registry
            .models()
            .iter()
            .map(|spec| (spec.id.clone(), ReplicaSet::new(spec)))
            .collect();
        let caches = devices
            .iter()
            .map(|&device| {
                let config = CacheConfig {
                    device,
                    max_bytes: self.memory_budget,
                    ..CacheConfig::default()
                };
                let cache = ModelCache::build(
                    loader.clone(),
                    config,
                    switchyard_core::SystemClock::shared(),
                    None,
                );
                for spec in registry.models().iter().filter(|s| s.keep_alive.is_some()) {
                    let on_device = replicas[&spec.id]
                        .all()
                        .iter()
                        .filter(|r| r.device == device);
                    for replica in on_device {
                        cache.set_keep_alive(&replica.key, spec.keep_alive);
                    }
                }
                (device, cache)
            })
            .collect();
        let inner = Arc::new(Inner {
            registry,
            loader,
            caches,
            replicas,
            devices,
            memory_budget: self.memory_budget,
            queue_capacity: self.queue_capacity,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            sessions,
            tallies: Mutex::new(BTreeMap::new()),
            last_load_error: Mutex::new(None),
            results: self.result_cache.map(super::results::ResultCache::new),
            monitor: self.monitor,
            tunings,
            journal: journal.clone(),
        });
        let _ = inner.loader.free_memory.set(Arc::downgrade(&inner));
        let threads = (0..self.dispatchers)
            .map(|i| {
                let inner = Arc::clone(&inner);
                std::thread::Builder::new()
                    .name(format!("switchyard-dispatch-{i}"))
                    .spawn(move || inner.dispatch_loop())
                    .map_err(|e| EngineError::Failed {
                        model: String::new(),
                        reason: format!("cannot start a dispatcher thread: {e}"),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let engine = Engine {
            inner,
            threads: Mutex::new(threads),
            recovered: Mutex::new(Vec::new()),
        };
        if let Some(journal) = journal {
            let recovered = engine.recover(&journal, self.recovery);
            *engine.recovered.lock() = recovered;
        }
        Ok(engine)
    }
}
