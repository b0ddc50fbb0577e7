//! [`Engine`]: the registry's models behind one submit call.
//!
//! Requests wait in one priority queue (Urgent first, FIFO within a level).
//! Dispatcher threads take them in order, choose one of the model's
//! replicas (a copy on one of its devices; `replicas` copies per device,
//! spread by its [`Balance`](crate::config::Balance)), get that replica from
//! its device's model cache (loading it, once, if it is cold; evicting idle
//! models when the memory budget is reached) and hand the request to the
//! model's pipeline: the text crate's continuous-batching
//! [`GenerationEngine`](switchyard_text::GenerationEngine) for generation, a
//! [`Batcher`](switchyard_batch::Batcher) of embedding inputs for
//! embeddings. The caller's [`Handle`] follows it from there.

mod builder;
mod dispatch;
mod error;
mod handle;
mod image_ops;
#[cfg(feature = "diffusion")]
mod images;
mod models;
mod optimisations;
mod prometheus;
mod recovery;
mod replicas;
mod request;
mod results;
mod slot;
mod status;
mod tuning;

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use switchyard_cache::ModelCache;
use switchyard_core::{DeviceId, Priority, QueueOrder, RequestId};
use switchyard_text::{Prompt, SamplingParams};

pub use builder::EngineBuilder;
pub use error::{EngineError, Result};
pub use handle::{Handle, TokenStream};
pub use image_ops::{ImageOp, MAX_IMAGE_OPS};
#[cfg(feature = "diffusion")]
pub use images::{
    DEFAULT_GUIDANCE_SCALE, DEFAULT_SIDE, DEFAULT_STEPS, DEFAULT_STRENGTH, ImageInput, ImageOptions,
};
pub use optimisations::{
    Batching, GenerationSettings, MemorySaving, ModelOptimisations, Optimisations,
};
pub use recovery::{Recovered, RecoveredOutcome, RecoveryPolicy, journaled_request};
pub use replicas::ReplicaMetrics;
pub use request::{DEFAULT_MAX_TOKENS, Embeddings, GenerationOptions, Request, Response, Task};
pub use results::ResultCacheStats;
pub use status::{
    Capabilities, DeviceMemory, EngineMetrics, Health, Latency, ModelInfo, ModelMetrics,
    SessionInfo, SessionState,
};

use crate::config::{ModelKind, ModelSpec, Registry};
use image_ops::ImageJob;
use models::{LoadedModel, ModelLoader, Runner};
use replicas::{Replica, ReplicaKey, ReplicaSet};
use results::ResultCache;
use slot::{Reporter, Slot};
use status::Tally;

/// Most inputs one embedding request may carry.
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// What happens to waiting requests at [`Engine::shutdown`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Requests still queued end with [`EngineError::ShuttingDown`];
    /// running ones finish.
    #[default]
    FailQueued,
    /// Run everything accepted, queued requests included.
    DrainAll,
}

/// Whether this build serves `kind`.
fn served(kind: ModelKind) -> bool {
    match kind {
        ModelKind::TextGeneration | ModelKind::Embedding | ModelKind::ImageProcessing => true,
        k if k.is_diffusion() => cfg!(feature = "diffusion"),
        _ => false,
    }
}

/// Whether a model of kind `model` serves requests of kind `request`: the
/// same kind, or any diffusion kind on any diffusion model (one Stable
/// Diffusion folder runs all three pipelines).
fn serves(model: ModelKind, request: ModelKind) -> bool {
    model == request || (model.is_diffusion() && request.is_diffusion())
}

/// A request waiting in the queue.
struct Job {
    id: RequestId,
    spec: ModelSpec,
    work: Work,
    priority: Priority,
    deadline: Option<Instant>,
    slot: Arc<Slot>,
    /// The request's `tracing` span (dispatch and load run inside it).
    span: tracing::Span,
}

/// A checked task, ready to hand to a pipeline.
enum Work {
    Generate(Prompt, SamplingParams),
    Embed(Vec<String>),
    Process(ImageJob),
    #[cfg(feature = "diffusion")]
    Diffuse(switchyard_diffusion::DiffusionRequest),
}

#[derive(Default)]
struct Queue {
    /// By order: priority, then arrival.
    waiting: BTreeMap<Reverse<QueueOrder>, Job>,
    next_sequence: u64,
    stopping: Option<ShutdownMode>,
}

/// The sessions, shared with the loader (diffusion steps become progress).
type Sessions = Arc<Mutex<HashMap<RequestId, Session>>>;

/// A session's bookkeeping.
struct Session {
    model: String,
    task: &'static str,
    priority: Priority,
    submitted: Instant,
    slot: Arc<Slot>,
    /// The replica it was sent to, and when.
    replica: Option<(Arc<Replica>, Instant)>,
    /// Open until the request ends.
    _span: tracing::Span,
}

struct Inner {
    registry: Arc<Registry>,
    loader: Arc<ModelLoader>,
    caches: HashMap<DeviceId, ModelCache<ReplicaKey, LoadedModel>>,
    /// Per model id.
    replicas: HashMap<String, ReplicaSet>,
    devices: Vec<DeviceId>,
    memory_budget: Option<u64>,
    queue_capacity: usize,
    queue: Mutex<Queue>,
    wake: Condvar,
    sessions: Sessions,
    tallies: Mutex<BTreeMap<String, Tally>>,
    last_load_error: Mutex<Option<(String, EngineError)>>,
    /// Answers to repeated requests, when enabled.
    results: Option<ResultCache>,
    /// Batch sizes and worker counts changed at run time.
    tunings: tuning::Tunings,
    /// The memory budget loaded models are held against, when set.
    monitor: Option<switchyard_vram::BudgetMonitor>,
    /// Where accepted requests and their ends are recorded, when set.
    journal: Option<Arc<crate::journal::Journal>>,
}

impl Reporter for Inner {
    fn ended(&self, id: RequestId, outcome: &Result<()>, latency: Duration) {
        if let Some(journal) = &self.journal
            && let Err(e) = journal.finish(id, recovery::outcome_of(outcome))
        {
            tracing::warn!(error = %e, %id, "crash journal: cannot record an end");
        }
        let Some(session) = self.sessions.lock().remove(&id) else {
            return;
        };
        let units = session.slot.done_units.load(Ordering::Relaxed);
        if let Some((replica, started)) = &session.replica {
            let done = if units > 0 {
                units
            } else {
                session.slot.total_units
            };
            let measured = outcome.is_ok().then(|| (done, started.elapsed()));
            replica.end(session.slot.total_units, measured);
        }
        self.tallies
            .lock()
            .entry(session.model)
            .or_default()
            .record(outcome, latency, units);
    }

    fn remember(&self, key: results::ResultKey, response: &Response) {
        if let Some(cache) = &self.results {
            cache.put(key, response.clone());
        }
    }
}

/// The engine: submit requests for any registered model from any thread.
///
/// ```
/// use switchyard::config::{ModelKind, ModelSource, ModelSpec};
/// use switchyard::{Engine, Request};
/// use switchyard_testkit::tiny::{self, TinyBert};
///
/// let dir = tempfile::tempdir()?;
/// tiny::write_bert(dir.path(), &TinyBert::default(), 7)?;
/// let spec = ModelSpec::new("bert", ModelKind::Embedding, ModelSource::Path(dir.path().into()));
/// let engine = Engine::builder().model(spec)?.build()?;
///
/// let request = Request::embed("bert", vec!["hello".into(), "world".into()]);
/// let vectors = engine.submit(request)?.wait()?.into_embeddings().unwrap();
/// assert_eq!(vectors.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Engine {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// What the journal held unfinished at start, until taken.
    recovered: Mutex<Vec<Recovered>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("models", &self.inner.registry.len())
            .field("devices", &self.inner.devices)
            .finish()
    }
}

impl Engine {
    /// A builder with the defaults.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The registered models.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Queues `request`; its [`Handle`] follows it. Never blocks on
    /// models (they load on the engine's threads); with a journal, returns
    /// once the request is on disk.
    ///
    /// # Errors
    /// Bad requests ([`EngineError::UnknownModel`], `WrongKind`,
    /// `InvalidInput`, `InsufficientMemory` when the model can never fit),
    /// [`EngineError::QueueFull`], [`EngineError::ShuttingDown`],
    /// [`EngineError::Journal`] when it cannot be recorded.
    pub fn submit(&self, request: Request) -> Result<Handle> {
        self.enqueue(request, false)
    }

    /// Queues a request read back from the journal: already recorded, and
    /// taken past a full queue (it was accepted once).
    fn submit_recovered(&self, request: Request) -> Result<Handle> {
        self.enqueue(request, true)
    }

    fn enqueue(&self, request: Request, recovered: bool) -> Result<Handle> {
        let (spec, work, priority, units) = self.inner.check(&request)?;
        let id = request.id.unwrap_or_else(RequestId::next);
        let reporter: Arc<dyn Reporter> = self.inner.clone();
        let key = self
            .inner
            .results
            .as_ref()
            .map(|_| results::key_of(&spec.id, &work));
        if let Some(response) = key.and_then(|k| self.inner.results.as_ref()?.get(k)) {
            let slot = Arc::new(Slot::new(units));
            slot.done_units.store(units, Ordering::Relaxed);
            slot.ready(response);
            self.tally(&spec.id, |m| m.submitted += 1);
            self.inner
                .tallies
                .lock()
                .entry(spec.id.clone())
                .or_default()
                .record(&Ok(()), Duration::ZERO, 0);
            return Ok(Handle::new(id, spec.id, slot, reporter));
        }
        let slot = Arc::new(Slot::new(units));
        let model = spec.id.clone();
        let span = tracing::info_span!(
            "request",
            id = %id,
            model = %model,
            task = request.task.name(),
            priority = ?priority,
        );
        let journal = self.inner.journal.as_ref().filter(|_| !recovered);
        if let Some(journal) = journal {
            journal.accept(id, &recovery::to_payload(&request))?;
        }
        {
            let mut q = self.inner.queue.lock();
            let refused = if q.stopping.is_some() {
                Some(EngineError::ShuttingDown)
            } else if q.waiting.len() >= self.inner.queue_capacity && !recovered {
                Some(EngineError::QueueFull {
                    capacity: self.inner.queue_capacity,
                })
            } else {
                None
            };
            if let Some(e) = refused {
                if let Some(journal) = journal {
                    let _ = journal.finish(id, crate::journal::Outcome::Failed);
                }
                return Err(e);
            }
            let order = QueueOrder::new(priority, q.next_sequence);
            q.next_sequence += 1;
            self.inner.sessions.lock().insert(
                id,
                Session {
                    model: model.clone(),
                    task: request.task.name(),
                    priority,
                    submitted: Instant::now(),
                    slot: Arc::clone(&slot),
                    replica: None,
                    _span: span.clone(),
                },
            );
            q.waiting.insert(
                Reverse(order),
                Job {
                    id,
                    spec,
                    work,
                    priority,
                    deadline: request.timeout.map(|t| Instant::now() + t),
                    slot: Arc::clone(&slot),
                    span,
                },
            );
        }
        self.tally(&model, |m| m.submitted += 1);
        self.inner.wake.notify_one();
        Ok(Handle::new(id, model, slot, reporter).remembering(key))
    }

    /// Submits and waits: the blocking one-call form.
    ///
    /// # Errors
    /// As [`Engine::submit`] and [`Handle::wait`].
    pub fn process_sync(&self, request: Request) -> Result<Response> {
        self.submit(request)?.wait()
    }

    /// Checks a request without running it: the model exists and serves
    /// it, its parameters are valid, and its model can fit in the memory
    /// budget.
    ///
    /// # Errors
    /// What [`Engine::submit`] would refuse it with.
    pub fn validate(&self, request: &Request) -> Result<()> {
        self.inner.check(request).map(drop)
    }

    /// Cancels request `id`, queued or running. Returns whether it was
    /// found.
    pub fn cancel(&self, id: RequestId) -> bool {
        let slot = self
            .inner
            .sessions
            .lock()
            .get(&id)
            .map(|s| Arc::clone(&s.slot));
        let Some(slot) = slot else { return false };
        slot.cancel_now();
        // A queued one ends now rather than when a dispatcher reaches it.
        let mut q = self.inner.queue.lock();
        let key = q
            .waiting
            .iter()
            .find(|(_, job)| job.id == id)
            .map(|(k, _)| *k);
        if let Some(job) = key.and_then(|k| q.waiting.remove(&k)) {
            job.slot.fail(EngineError::Cancelled);
        }
        true
    }

    /// Queued and running requests, most urgent first.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        // Queue position and the work queued ahead on the same model, in
        // one pass over the queue in order.
        let queued: HashMap<RequestId, (usize, u64)> = {
            let q = self.inner.queue.lock();
            let mut ahead: HashMap<&str, u64> = HashMap::new();
            q.waiting
                .values()
                .enumerate()
                .map(|(i, job)| {
                    let before = ahead.entry(job.spec.id.as_str()).or_default();
                    let entry = (job.id, (i, *before));
                    *before += job.slot.total_units;
                    entry
                })
                .collect()
        };
        let rates: HashMap<String, f64> = self
            .inner
            .tallies
            .lock()
            .iter()
            .filter_map(|(m, t)| Some((m.clone(), t.metrics.throughput?)))
            .collect();
        let sessions = self.inner.sessions.lock();
        let mut out: Vec<SessionInfo> = sessions
            .iter()
            .map(|(&id, s)| {
                let done = s.slot.done_units.load(Ordering::Relaxed);
                let total = s.slot.total_units;
                let rate = rates.get(&s.model).copied();
                let (state, ahead_units) = match queued.get(&id) {
                    Some(&(position, ahead)) => (SessionState::Queued { position }, ahead),
                    None => (SessionState::Running, 0),
                };
                let left = (total.saturating_sub(done) + ahead_units) as f64;
                SessionInfo {
                    id,
                    model: s.model.clone(),
                    task: s.task,
                    priority: s.priority,
                    state,
                    age: s.submitted.elapsed(),
                    progress: (done, total),
                    eta: rate
                        .filter(|r| *r > 0.0)
                        .map(|r| Duration::from_secs_f64(left / r)),
                }
            })
            .collect();
        out.sort_by_key(|s| match s.state {
            SessionState::Running => (0, 0, Reverse(s.age)),
            SessionState::Queued { position } => (1, position, Reverse(s.age)),
        });
        out
    }

    /// Request `id`'s progress, `(done, total)` units, while it is queued
    /// or running (as in [`Engine::sessions`]); `None` once the engine has
    /// let it go. One lookup: no queue walk, for callers that poll.
    pub fn progress(&self, id: RequestId) -> Option<(u64, u64)> {
        let sessions = self.inner.sessions.lock();
        let s = sessions.get(&id)?;
        Some((
            s.slot.done_units.load(Ordering::Relaxed),
            s.slot.total_units,
        ))
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> EngineMetrics {
        let mut models: HashMap<String, ModelMetrics> = self
            .inner
            .tallies
            .lock()
            .iter()
            .map(|(m, t)| (m.clone(), t.snapshot()))
            .collect();
        for (id, set) in &self.inner.replicas {
            let replicas: Vec<ReplicaMetrics> = set
                .all()
                .iter()
                .map(|r| {
                    let mut m = r.metrics();
                    m.loaded = self.inner.is_loaded(r);
                    if let Some(model) = r.live().filter(|_| m.loaded) {
                        if let Runner::Generation(engine) = &model.runner {
                            m.generation = Some(engine.stats());
                        }
                        m.batch = model.runner.batch_metrics();
                    }
                    m
                })
                .collect();
            let entry = models.entry(id.clone()).or_default();
            entry.generation = replicas.iter().find_map(|r| r.generation);
            entry.replicas = replicas;
        }
        let cache: Vec<_> = self
            .inner
            .devices
            .iter()
            .filter_map(|d| {
                let stats = self.inner.caches.get(d)?.stats();
                // Replicas by name: `model`, `model#1`.
                Some((*d, stats.map_keys(|k| k.to_string())))
            })
            .collect();
        let memory = cache
            .iter()
            .map(|(d, c)| {
                let monitor = self.inner.monitor.as_ref();
                DeviceMemory::read(*d, c.bytes, self.inner.memory_budget, monitor)
            })
            .collect();
        EngineMetrics {
            results: self.inner.results.as_ref().map(ResultCache::stats),
            models,
            queued: self.inner.queue.lock().waiting.len(),
            cache,
            memory,
        }
    }

    /// Unloads every idle model (running requests keep theirs until they
    /// end). Returns how many were unloaded.
    pub fn clear_cache(&self) -> usize {
        self.inner.caches.values().map(ModelCache::clear).sum()
    }

    /// Stops taking requests. With [`ShutdownMode::FailQueued`] queued
    /// requests end with [`EngineError::ShuttingDown`]; with
    /// [`ShutdownMode::DrainAll`] they are dispatched first. Running
    /// requests always finish. Returns when the dispatchers have stopped.
    pub fn shutdown(&self, mode: ShutdownMode) {
        let failed: Vec<Job> = {
            let mut q = self.inner.queue.lock();
            q.stopping.get_or_insert(mode);
            if mode == ShutdownMode::FailQueued {
                std::mem::take(&mut q.waiting).into_values().collect()
            } else {
                Vec::new()
            }
        };
        for job in failed {
            job.slot.fail(EngineError::ShuttingDown);
        }
        self.inner.wake.notify_all();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }

    fn tally(&self, model: &str, f: impl FnOnce(&mut ModelMetrics)) {
        f(&mut self
            .inner
            .tallies
            .lock()
            .entry(model.to_owned())
            .or_default()
            .metrics);
    }
}

impl Inner {
    /// Evicts `device`'s unused models (after something failed for lack of
    /// memory there). Returns how many went.
    fn free_memory(&self, device: DeviceId) -> usize {
        let n = self.caches.get(&device).map_or(0, ModelCache::evict_unused);
        tracing::warn!(%device, evicted = n, "out of memory: evicted unused models");
        n
    }

    /// Whether `replica` is in its device's cache now (without counting a
    /// lookup).
    fn is_loaded(&self, replica: &Replica) -> bool {
        self.caches
            .get(&replica.device)
            .is_some_and(|c| c.contains(&replica.key))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(ShutdownMode::DrainAll);
    }
}
