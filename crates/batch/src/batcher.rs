//! The dynamic batcher: a queue, worker threads and a controller per key.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use switchyard_core::{Clock, Deadline, RequestId, SharedClock, SystemClock};

use crate::handle::{Cell, Handle, Outcome, Owner, Withdrawal};
use crate::handler::RunningSet;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::queue::{Position, PriorityQueue, QueueConfig, QueueStats, Queued};
use crate::request::KeyMap;
use crate::{BackgroundPool, YieldGate, YieldGuard};
use crate::{
    BatchError, BatchHandler, BatchKey, BatchSizeController, Fixed, Pid, PidConfig, Request,
    SubmitError,
};

/// Makes the controller for a key the first time the key is seen.
pub type ControllerFactory = Arc<dyn Fn(&BatchKey) -> Box<dyn BatchSizeController> + Send + Sync>;

pub(crate) type CellOf<H> = Cell<<H as BatchHandler>::Output, <H as BatchHandler>::Error>;
pub(crate) type OutcomeOf<H> = Outcome<<H as BatchHandler>::Output, <H as BatchHandler>::Error>;
/// The handle a [`Batcher`] over `H` returns.
pub type HandleOf<H> = Handle<<H as BatchHandler>::Output, <H as BatchHandler>::Error>;
pub(crate) type Cloner<H> = fn(&OutcomeOf<H>) -> OutcomeOf<H>;

/// What happens to queued requests when the batcher stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShutdownMode {
    /// Fail queued requests with [`BatchError::ShuttingDown`]; running
    /// batches finish.
    #[default]
    FailQueued,
    /// Run everything already queued, then stop.
    Drain,
}

/// Settings of a [`Batcher`].
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Queue bounds and aging.
    pub queue: QueueConfig,
    /// Worker threads at start.
    pub workers: usize,
    /// How long the oldest request of a key may wait for its batch to fill.
    pub max_wait: Duration,
    /// Most total cost in one batch (like TEI's `max_batch_tokens`).
    pub max_batch_cost: u64,
    /// The last stretch of a fill wait is spent yielding instead of sleeping,
    /// because a timed sleep overshoots by the kernel's timer slack (~50 us).
    /// Zero turns it off (and it is off with a custom clock).
    pub spin: Duration,
    /// How often idle workers look for queued requests whose deadline passed.
    pub sweep_interval: Duration,
    /// What dropping the batcher does with queued work.
    pub on_drop: ShutdownMode,
    /// Worker thread name prefix.
    pub thread_name: String,
    /// The device's gate: every request counts on it until answered, and a
    /// batch whose most urgent request the gate holds waits (other keys'
    /// batches may run meanwhile). With a gate the batcher also starts an
    /// urgent lane (one more worker for batches at the gate's level) and,
    /// when the gate asks for them, background threads for held batches.
    pub yield_gate: Option<Arc<YieldGate>>,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            queue: QueueConfig::default(),
            workers: 1,
            max_wait: Duration::from_millis(2),
            max_batch_cost: u64::MAX,
            spin: Duration::from_micros(60),
            sweep_interval: Duration::from_millis(10),
            on_drop: ShutdownMode::FailQueued,
            thread_name: "switchyard-batch".to_owned(),
            yield_gate: None,
        }
    }
}

/// One caller waiting on a queued entry.
pub(crate) struct Waiter<H: BatchHandler> {
    pub(crate) id: RequestId,
    pub(crate) cell: Arc<CellOf<H>>,
    pub(crate) deadline: Option<Deadline>,
    pub(crate) enqueued_at: std::time::Instant,
    /// Counts the request on the device's gate until it is answered.
    pub(crate) _yield: Option<YieldGuard>,
}

/// What the queue holds per entry: the input and everyone waiting on it.
pub(crate) struct Payload<H: BatchHandler> {
    pub(crate) input: H::Input,
    pub(crate) first: Waiter<H>,
    pub(crate) followers: Vec<Waiter<H>>,
}

impl<H: BatchHandler> Payload<H> {
    pub(crate) fn waiters(self) -> impl Iterator<Item = Waiter<H>> {
        std::iter::once(self.first).chain(self.followers)
    }
}

pub(crate) struct State<H: BatchHandler> {
    pub(crate) queue: PriorityQueue<Payload<H>>,
    pub(crate) controllers: KeyMap<BatchKey, Box<dyn BatchSizeController>>,
    pub(crate) factory: ControllerFactory,
    pub(crate) coalesce_index: KeyMap<(BatchKey, u64), Position>,
    pub(crate) desired_workers: usize,
    pub(crate) live_workers: usize,
    pub(crate) sleeping: usize,
    pub(crate) spinning: usize,
    pub(crate) submitted: u64,
    pub(crate) stopping: Option<ShutdownMode>,
    pub(crate) workers: Vec<Arc<RunningSet>>,
}

impl<H: BatchHandler> State<H> {
    pub(crate) fn target(&mut self, key: &BatchKey) -> usize {
        controller_target(&mut self.controllers, &self.factory, key)
    }

    /// Forget the coalescing index entry of an entry leaving the queue.
    pub(crate) fn unindex(&mut self, key: &BatchKey, entry: &Queued<Payload<H>>) {
        if let Some(hash) = entry.coalesce {
            let index_key = (key.clone(), hash);
            if self.coalesce_index.get(&index_key) == Some(&entry.position()) {
                self.coalesce_index.remove(&index_key);
            }
        }
    }
}

pub(crate) fn controller_target(
    controllers: &mut KeyMap<BatchKey, Box<dyn BatchSizeController>>,
    factory: &ControllerFactory,
    key: &BatchKey,
) -> usize {
    if let Some(c) = controllers.get(key) {
        return c.target().max(1);
    }
    let c = factory(key);
    let target = c.target().max(1);
    controllers.insert(key.clone(), c);
    target
}

pub(crate) struct Shared<H: BatchHandler> {
    pub(crate) handler: H,
    pub(crate) config: BatcherConfig,
    pub(crate) clock: SharedClock,
    pub(crate) state: Mutex<State<H>>,
    pub(crate) work: Condvar,
    pub(crate) metrics: Mutex<Metrics>,
    /// Set by a submit that makes a batch ready while a worker spins for one;
    /// alone on its cache line, written once per batch, not per request.
    pub(crate) batch_ready: Padded<AtomicBool>,
    pub(crate) rejected: AtomicU64,
    pub(crate) cloner: Option<Cloner<H>>,
    pub(crate) on_out_of_memory: Option<MemoryHook>,
    /// This batcher's source id on its yield gate (0 without one).
    pub(crate) yield_source: u64,
    /// Threads for batches its gate may hold (with a gate that has them).
    pub(crate) background: Option<BackgroundPool>,
}

/// Called before a batch that ran out of memory is run again (see
/// [`BatcherBuilder::on_out_of_memory`]).
pub type MemoryHook = Arc<dyn Fn() + Send + Sync>;

impl<H: BatchHandler> Shared<H> {
    /// Complete every waiter of entries that leave without running.
    pub(crate) fn fail_entries(
        &self,
        entries: Vec<Queued<Payload<H>>>,
        error: fn() -> OutcomeOf<H>,
    ) {
        if entries.is_empty() {
            return;
        }
        let mut count = 0;
        for entry in entries {
            for waiter in entry.payload.waiters() {
                waiter.cell.complete(error());
                count += 1;
            }
        }
        let mut metrics = self.metrics.lock();
        match error() {
            Err(BatchError::TimedOut) => metrics.timed_out += count,
            Err(BatchError::ShuttingDown) => metrics.shut_down += count,
            _ => metrics.cancelled += count,
        }
    }
}

impl<H: BatchHandler> Owner for Shared<H> {
    fn withdraw(&self, pos: Position, id: RequestId, reason: Withdrawal) -> bool {
        let mut state = self.state.lock();
        let Some((key, entry)) = state.queue.find_at_mut(pos) else {
            return false;
        };
        let payload = &mut entry.payload;
        let waiter = if payload.first.id == id {
            match payload.followers.pop() {
                Some(next) => Some(std::mem::replace(&mut payload.first, next)),
                None => None,
            }
        } else {
            match payload.followers.iter().position(|w| w.id == id) {
                Some(i) => Some(payload.followers.swap_remove(i)),
                None => return false,
            }
        };
        let waiter = match waiter {
            Some(w) => w,
            None => {
                // The only waiter leaves: the entry goes.
                let key = key.clone();
                let Some(entry) = state.queue.remove_at(pos) else {
                    return false;
                };
                state.unindex(&key, &entry);
                entry.payload.first
            }
        };
        drop(state);
        let (error, counter) = match reason {
            Withdrawal::Cancelled => (BatchError::Cancelled, 0),
            Withdrawal::TimedOut => (BatchError::TimedOut, 1),
        };
        waiter.cell.complete(Err(error));
        let mut metrics = self.metrics.lock();
        if counter == 0 {
            metrics.cancelled += 1;
        } else {
            metrics.timed_out += 1;
        }
        true
    }

    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }
}

/// A value alone on its cache line(s).
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The batcher as its handles see it.
pub(crate) struct HandleOwner<H: BatchHandler>(Arc<Shared<H>>);

impl<H: BatchHandler> Owner for HandleOwner<H> {
    fn withdraw(&self, pos: Position, id: RequestId, reason: Withdrawal) -> bool {
        self.0.withdraw(pos, id, reason)
    }

    fn clock(&self) -> &dyn Clock {
        &*self.0.clock
    }
}

/// Batches requests by key and runs them on worker threads.
///
/// See the [crate documentation](crate) for an example. Cloning is not
/// offered: share a batcher behind an `Arc`; every method takes `&self`.
pub struct Batcher<H: BatchHandler> {
    shared: Arc<Shared<H>>,
    /// What handles hold: a separate allocation, so that counting handles
    /// does not bounce the cache line workers read the configuration from.
    owner: Arc<HandleOwner<H>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Builds a [`Batcher`].
pub struct BatcherBuilder<H: BatchHandler> {
    handler: H,
    config: BatcherConfig,
    clock: Option<SharedClock>,
    factory: ControllerFactory,
    cloner: Option<Cloner<H>>,
    on_out_of_memory: Option<MemoryHook>,
}

impl<H: BatchHandler> BatcherBuilder<H> {
    /// Run `hook` when a batch fails for lack of memory (as the handler's
    /// [`is_out_of_memory`](BatchHandler::is_out_of_memory) tells), before
    /// its failed inputs run once more in two halves: the place to free
    /// memory (evict idle models, empty pools).
    pub fn on_out_of_memory(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_out_of_memory = Some(Arc::new(hook));
        self
    }

    /// Replace the whole configuration.
    pub fn config(mut self, config: BatcherConfig) -> Self {
        self.config = config;
        self
    }

    /// Worker threads at start (0 starts paused; see [`Batcher::scale_workers`]).
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers;
        self
    }

    /// How long a batch may wait to fill.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = max_wait;
        self
    }

    /// Share `gate` with the device's other pipelines: requests count on it
    /// from submission to answer, and batches the gate holds wait while
    /// more urgent work is under way.
    pub fn yield_gate(mut self, gate: Arc<YieldGate>) -> Self {
        self.config.yield_gate = Some(gate);
        self
    }

    /// Most total cost per batch.
    pub fn max_batch_cost(mut self, cost: u64) -> Self {
        self.config.max_batch_cost = cost.max(1);
        self
    }

    /// Queue bounds and aging.
    pub fn queue(mut self, queue: QueueConfig) -> Self {
        self.config.queue = queue;
        self
    }

    /// Read time from `clock` (a manual clock in tests). Turns spinning off.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self.config.spin = Duration::ZERO;
        self
    }

    /// Every key gets a [`Fixed`] batch size of `size`.
    pub fn fixed(self, size: usize) -> Self {
        self.controller(move |_| Box::new(Fixed::new(size)))
    }

    /// Every key gets its own [`Pid`] with `config` (checked by `build`).
    pub fn pid(self, config: PidConfig) -> Self {
        self.controller(move |_| match Pid::new(config.clone()) {
            Ok(pid) => Box::new(pid),
            // `build` validated the config; fall back to a fixed size if not.
            Err(_) => Box::new(Fixed::new(config.max)),
        })
    }

    /// A controller per key from `factory`.
    pub fn controller(
        mut self,
        factory: impl Fn(&BatchKey) -> Box<dyn BatchSizeController> + Send + Sync + 'static,
    ) -> Self {
        self.factory = Arc::new(factory);
        self
    }

    /// Start the workers.
    pub fn build(self) -> Result<Batcher<H>, BatchError> {
        let config = self.config;
        if config.queue.capacity == 0 || config.queue.per_key_capacity == 0 {
            return Err(BatchError::InvalidConfig {
                field: "queue.capacity",
                reason: "must be at least 1".to_owned(),
            });
        }
        let clock = self.clock.unwrap_or_else(SystemClock::shared);
        let workers = config.workers;
        let state = State {
            queue: PriorityQueue::new(config.queue),
            controllers: KeyMap::default(),
            factory: self.factory,
            coalesce_index: KeyMap::default(),
            desired_workers: 0,
            live_workers: 0,
            sleeping: 0,
            spinning: 0,
            submitted: 0,
            stopping: None,
            workers: Vec::new(),
        };
        let yield_source = config.yield_gate.as_ref().map_or(0, |g| g.new_source());
        let background = match &config.yield_gate {
            Some(gate) if gate.background() => Some(BackgroundPool::matching_global(&format!(
                "b{yield_source}"
            ))?),
            _ => None,
        };
        let shared = Arc::new(Shared {
            handler: self.handler,
            metrics: Mutex::new(Metrics::new(clock.now())),
            clock,
            config,
            state: Mutex::new(state),
            work: Condvar::new(),
            batch_ready: Padded(AtomicBool::new(false)),
            rejected: AtomicU64::new(0),
            cloner: self.cloner,
            on_out_of_memory: self.on_out_of_memory,
            yield_source,
            background,
        });
        let batcher = Batcher {
            owner: Arc::new(HandleOwner(Arc::clone(&shared))),
            shared,
            threads: Mutex::new(Vec::new()),
        };
        batcher.scale_workers(workers);
        if batcher.shared.config.yield_gate.is_some() {
            batcher.start_lane();
        }
        Ok(batcher)
    }
}

fn clone_outcome<O: Clone, E: Clone>(outcome: &Outcome<O, E>) -> Outcome<O, E> {
    outcome.clone()
}

impl<H: BatchHandler> BatcherBuilder<H>
where
    H::Output: Clone,
    H::Error: Clone,
{
    /// Let identical requests (same key, same
    /// [coalescing hash](Request::with_coalescing)) that are queued at the same
    /// time run once, each caller getting a clone of the result. Only for
    /// deterministic handlers.
    pub fn coalescing(mut self) -> Self {
        self.cloner = Some(clone_outcome::<H::Output, H::Error>);
        self
    }
}

impl<H: BatchHandler> Batcher<H> {
    /// A builder over `handler` with the defaults of [`BatcherConfig`] and a
    /// [`Fixed`] batch size of 32.
    pub fn builder(handler: H) -> BatcherBuilder<H> {
        BatcherBuilder {
            handler,
            config: BatcherConfig::default(),
            clock: None,
            factory: Arc::new(|_| Box::new(Fixed::new(32))),
            cloner: None,
            on_out_of_memory: None,
        }
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.shared.handler
    }

    /// The clock the batcher reads.
    pub fn clock(&self) -> &SharedClock {
        &self.shared.clock
    }

    /// Queue a request. A refused request comes back inside the error.
    pub fn submit(
        &self,
        request: impl Into<Request<H::Input>>,
    ) -> Result<HandleOf<H>, SubmitError<H::Input>> {
        let request = request.into();
        let shared = &self.shared;
        let now = shared.clock.now();
        let timeout_deadline = request.timeout.map(|t| Deadline::after(&shared.clock, t));
        let deadline = Deadline::earliest(request.deadline, timeout_deadline);
        if deadline.is_some_and(|d| now >= d.instant()) {
            return Err(self.refuse(BatchError::TimedOut, request));
        }
        let key = shared.handler.key(&request.input);
        let cost = request
            .cost
            .unwrap_or_else(|| shared.handler.cost(&request.input));
        let id = request.id.unwrap_or_else(RequestId::next);
        let cell = Arc::new(Cell::new());
        let mut waiter = Some(Waiter {
            id,
            cell: Arc::clone(&cell),
            deadline,
            enqueued_at: now,
            _yield: shared
                .config
                .yield_gate
                .as_ref()
                .map(|g| g.enter_from(shared.yield_source, request.priority)),
        });
        let coalesce = request.coalesce.filter(|_| shared.cloner.is_some());

        let mut state = shared.state.lock();
        if state.stopping.is_some() {
            drop(state);
            return Err(self.refuse(BatchError::ShuttingDown, request));
        }
        if let Some(hash) = coalesce
            && let Some(&pos) = state.coalesce_index.get(&(key.clone(), hash))
        {
            let joined = state.queue.join(&key, pos, deadline, |payload| {
                if let Some(w) = waiter.take() {
                    payload.followers.push(w);
                }
            });
            if joined {
                state.submitted += 1;
                drop(state);
                shared.metrics.lock().coalesced += 1;
                return Ok(self.handle(id, pos, cell, deadline));
            }
        }

        let Some(waiter) = waiter else {
            // Only a successful join takes the waiter, and that returned above.
            drop(state);
            return Err(self.refuse(BatchError::ShuttingDown, request));
        };
        let Request {
            input,
            id: given_id,
            priority,
            deadline: given_deadline,
            timeout,
            cost: given_cost,
            coalesce: given_coalesce,
        } = request;
        let mut entry = Queued::new(
            id,
            priority,
            cost,
            now,
            Payload {
                input,
                first: waiter,
                followers: Vec::new(),
            },
        );
        entry.deadline = deadline;
        entry.coalesce = coalesce;
        match state.queue.push(&key, entry) {
            Ok(pos) => {
                if let Some(hash) = coalesce {
                    state.coalesce_index.insert((key.clone(), hash), pos);
                }
                state.submitted += 1;
                if state.sleeping > 0 || state.spinning > 0 {
                    let (len, queued_cost) = state.queue.key_load(&key);
                    let full =
                        len >= state.target(&key) || queued_cost >= shared.config.max_batch_cost;
                    if full && state.spinning > 0 {
                        shared.batch_ready.store(true, Ordering::Release);
                    }
                    if state.sleeping > 0 && (full || len == 1) {
                        // With an urgent lane asleep too, one wake-up might
                        // reach the one that cannot take the request.
                        if shared.config.yield_gate.is_some() {
                            shared.work.notify_all();
                        } else {
                            shared.work.notify_one();
                        }
                    }
                }
                drop(state);
                Ok(self.handle(id, pos, cell, deadline))
            }
            Err((error, entry)) => {
                drop(state);
                let request = Request {
                    input: entry.payload.input,
                    id: given_id,
                    priority,
                    deadline: given_deadline,
                    timeout,
                    cost: given_cost,
                    coalesce: given_coalesce,
                };
                Err(self.refuse(error, request))
            }
        }
    }

    fn refuse(&self, error: BatchError, request: Request<H::Input>) -> SubmitError<H::Input> {
        self.shared.rejected.fetch_add(1, Ordering::Relaxed);
        SubmitError { error, request }
    }

    fn handle(
        &self,
        id: RequestId,
        pos: Position,
        cell: Arc<CellOf<H>>,
        deadline: Option<Deadline>,
    ) -> Handle<H::Output, H::Error> {
        let owner: Arc<dyn Owner> = self.owner.clone();
        Handle::new(id, pos, cell, owner, deadline)
    }

    /// Submit and block for the result.
    pub fn process(&self, request: impl Into<Request<H::Input>>) -> OutcomeOf<H> {
        match self.submit(request) {
            Ok(handle) => handle.wait(),
            Err(refused) => Err(refused.error.widen()),
        }
    }

    /// Cancel request `id`: a queued one is removed and fails with
    /// [`BatchError::Cancelled`]; a running one has its token set. Returns
    /// whether the request was found.
    pub fn cancel(&self, id: RequestId) -> bool {
        let shared = &self.shared;
        let mut state = shared.state.lock();
        let found = state.queue.find_mut(|e| {
            e.payload.first.id == id || e.payload.followers.iter().any(|w| w.id == id)
        });
        if let Some(entry) = found {
            let pos = entry.position();
            drop(state);
            return shared.withdraw(pos, id, Withdrawal::Cancelled);
        }
        state.workers.iter().any(|running| running.cancel(id))
    }

    /// Run `n` worker threads (0 pauses the batcher; queued work waits).
    pub fn scale_workers(&self, n: usize) {
        let mut threads = self.threads.lock();
        threads.retain(|t| !t.is_finished());
        let spawn = {
            let mut state = self.shared.state.lock();
            if state.stopping.is_some() {
                return;
            }
            state.desired_workers = n;
            let spawn = n.saturating_sub(state.live_workers);
            state.live_workers += spawn;
            self.shared.work.notify_all();
            spawn
        };
        for _ in 0..spawn {
            let shared = Arc::clone(&self.shared);
            let name = format!("{}-{}", shared.config.thread_name, threads.len());
            match std::thread::Builder::new()
                .name(name)
                .spawn(move || crate::worker::run(&shared, false))
            {
                Ok(t) => threads.push(t),
                Err(_) => {
                    // Could not start a thread: count it as never started.
                    self.shared.state.lock().live_workers -= 1;
                }
            }
        }
    }

    /// Start the urgent lane: one more worker, outside the count, that
    /// takes only batches at the yield gate's level.
    fn start_lane(&self) {
        let shared = Arc::clone(&self.shared);
        let name = format!("{}-urgent", shared.config.thread_name);
        // Without the lane urgent work still runs, after the batch ahead.
        if let Ok(t) = std::thread::Builder::new()
            .name(name)
            .spawn(move || crate::worker::run(&shared, true))
        {
            self.threads.lock().push(t);
        }
    }

    /// Worker threads running now (some may be finishing after a scale-down).
    pub fn workers(&self) -> usize {
        self.shared.state.lock().live_workers
    }

    /// Replace every key's controller (existing ones are dropped; new ones
    /// come from `factory` as keys are next seen).
    pub fn set_controller(
        &self,
        factory: impl Fn(&BatchKey) -> Box<dyn BatchSizeController> + Send + Sync + 'static,
    ) {
        let mut state = self.shared.state.lock();
        state.factory = Arc::new(factory);
        state.controllers.clear();
    }

    /// Fix every key's batch size at `size`.
    pub fn set_batch_size(&self, size: usize) {
        self.set_controller(move |_| Box::new(Fixed::new(size)));
    }

    /// Queue depths and waits now.
    pub fn queue_stats(&self) -> QueueStats {
        let now = self.shared.clock.now();
        self.shared.state.lock().queue.stats(now)
    }

    /// Counters, latency summaries, queue and controller state.
    pub fn metrics(&self) -> MetricsSnapshot {
        let shared = &self.shared;
        let now = shared.clock.now();
        let (queue, mut controllers, workers) = {
            let state = shared.state.lock();
            let controllers: Vec<_> = state
                .controllers
                .iter()
                .map(|(k, c)| (k.clone(), c.state()))
                .collect();
            (state.queue.stats(now), controllers, state.live_workers)
        };
        controllers.sort_by(|a, b| a.0.cmp(&b.0));
        let mut snapshot = shared
            .metrics
            .lock()
            .snapshot(now, workers, queue, controllers);
        snapshot.submitted = shared.state.lock().submitted;
        snapshot.rejected = shared.rejected.load(Ordering::Relaxed);
        snapshot
    }

    /// Stop: refuse new requests, deal with queued ones per `mode`, let running
    /// batches finish, and join the workers. Idempotent.
    pub fn shutdown(&self, mode: ShutdownMode) {
        let drained = {
            let mut state = self.shared.state.lock();
            if state.stopping.is_none() {
                state.stopping = Some(mode);
            }
            self.shared.work.notify_all();
            match state.stopping {
                Some(ShutdownMode::FailQueued) => {
                    state.coalesce_index.clear();
                    state.queue.drain()
                }
                _ => Vec::new(),
            }
        };
        self.shared
            .fail_entries(drained, || Err(BatchError::ShuttingDown));
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            // A worker only panics on a bug of ours; its requests were failed.
            let _ = t.join();
        }
    }
}

impl<H: BatchHandler> Drop for Batcher<H> {
    fn drop(&mut self) {
        self.shutdown(self.shared.config.on_drop);
    }
}

impl<H: BatchHandler> fmt::Debug for Batcher<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("Batcher")
            .field("queued", &state.queue.len())
            .field("workers", &state.live_workers)
            .field("stopping", &state.stopping)
            .finish()
    }
}

impl<H: BatchHandler> fmt::Debug for BatcherBuilder<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatcherBuilder")
            .field("config", &self.config)
            .field("coalescing", &self.cloner.is_some())
            .field("on_out_of_memory", &self.on_out_of_memory.is_some())
            .finish()
    }
}
