//! [`GenerationEngine`]: continuous batching as a service. A thread of its
//! own runs the iteration-level scheduler over one model and one paged KV
//! cache; requests join at any time and read their text from a
//! [`GenerationStream`]. A PID controller may hold the p95 inter-token
//! latency at a target by moving the cap on running sequences.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;
use switchyard_batch::{
    BatchObservation, BatchSizeController, Pid, YIELD_POLL, YieldGate, YieldGuard,
};
use switchyard_core::{Deadline, Priority};

pub use super::latency::LatencyControl;
use super::latency::LatencyWindow;
use super::run::{DeltaSink, Prepared};
use super::scheduler::{Admission, Scheduler, SchedulerConfig};
pub use super::stats::GenerationStats;
use super::stream::{self, DeltaSender};
use super::{GenerateRequest, GenerationStream, Generator, TextDelta};
use crate::{Result, TextError};

/// Settings of a [`GenerationEngine`].
#[derive(Debug, Clone)]
pub struct GenerationEngineConfig {
    /// Tokens the KV cache holds over all sequences (rounded up to whole
    /// blocks). Its memory is `kv_tokens` x
    /// [`Generator::kv_bytes`]`(1)`, taken when the engine starts.
    pub kv_tokens: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Tokens one forward step may compute over all sequences: every
    /// decode row, then prompt chunks up to the rest. Smaller keeps
    /// inter-token latency lower while long prompts arrive.
    pub step_tokens: usize,
    /// Most sequences running at once (the controller moves below it).
    pub max_running: usize,
    /// Requests accepted but not finished beyond which
    /// [`GenerationEngine::submit`] answers [`TextError::QueueFull`].
    pub max_pending: usize,
    /// Reuse the keys and values of prompt prefixes computed before.
    pub prefix_caching: bool,
    /// Let an Urgent request that does not fit preempt a running Low one.
    pub urgent_preempts_low: bool,
    /// PID control of the running cap from measured inter-token latency;
    /// `None` keeps the cap at `max_running`.
    pub latency: Option<LatencyControl>,
    /// The device's gate, shared with its other pipelines: while it holds
    /// a priority, running sequences of that priority skip steps (keeping
    /// their blocks) and do not count against `max_running`.
    pub yield_gate: Option<Arc<YieldGate>>,
}

impl Default for GenerationEngineConfig {
    fn default() -> Self {
        Self {
            kv_tokens: 16 * 1024,
            block_size: 16,
            step_tokens: 256,
            max_running: 16,
            max_pending: 1024,
            prefix_caching: true,
            urgent_preempts_low: true,
            latency: None,
            yield_gate: None,
        }
    }
}

/// How one request queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// Urgent first; waiting requests age upwards.
    pub priority: Priority,
    /// When it must have started by: a request still waiting then ends
    /// with [`TextError::DeadlineExpired`] and never runs.
    pub deadline: Option<Deadline>,
}

/// What happens to unfinished work when the engine stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Finish everything accepted, queued requests included.
    #[default]
    Drain,
    /// Finish what is streaming; requests that have not started end with
    /// [`TextError::ShuttingDown`].
    RefuseWaiting,
}

enum Command {
    Submit(Box<Submission>),
    SetMaxRunning(usize),
    Shutdown(ShutdownMode),
}

struct Submission {
    id: usize,
    job: Prepared,
    admission: Admission,
    sender: DeltaSender,
    /// The request counted on the yield gate from the moment it is
    /// accepted, so that a held step under way stops for it at once.
    counted: Option<YieldGuard>,
}

struct Shared {
    stats: Mutex<GenerationStats>,
    /// Accepted and not yet ended.
    pending: AtomicUsize,
}

/// Continuous batching over one model: submit requests at any time from
/// any thread; each gets a [`GenerationStream`]. A thread of its own runs
/// one forward step at a time over every running sequence, admitting and
/// retiring requests between steps, preempting (and later recomputing) the
/// least important one when KV blocks run out, and reusing cached prompt
/// prefixes.
///
/// Dropping the engine stops it the way [`ShutdownMode::Drain`] does,
/// without waiting: accepted requests still finish.
///
/// ```
/// use switchyard_core::DeviceId;
/// use switchyard_text::{GenerateRequest, GenerationEngineConfig, Generator, Prompt, SamplingParams};
/// use switchyard_testkit::tiny::{self, GgufQuant, TinyLlama};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("tiny.gguf");
/// tiny::write_llama_gguf(&path, &TinyLlama::default(), GgufQuant::Q8_0, 7)?;
/// let engine = Generator::load(&path, DeviceId::Cpu)?.serve(GenerationEngineConfig::default())?;
///
/// let ask = |text: &str| {
///     let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(6) };
///     engine.submit(&GenerateRequest::new(Prompt::Text(text.into()), params))
/// };
/// // Both run in the same forward steps.
/// let (a, b) = (ask("Once upon a time")?, ask("The capital of France is")?);
/// assert_eq!(a.collect_completion()?.usage.completion_tokens, 6);
/// assert_eq!(b.collect_completion()?.usage.completion_tokens, 6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct GenerationEngine {
    generator: Generator,
    config: GenerationEngineConfig,
    num_blocks: usize,
    commands: Mutex<Option<Sender<Command>>>,
    shared: Arc<Shared>,
    next_id: AtomicUsize,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for GenerationEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationEngine")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl GenerationEngine {
    /// Start an engine for `generator` with `config`: allocates the KV
    /// cache and starts the scheduling thread.
    pub fn start(generator: Generator, config: GenerationEngineConfig) -> Result<Self> {
        let block_size = config.block_size.max(1);
        let num_blocks = config.kv_tokens.div_ceil(block_size).max(1);
        let ceiling = config.max_running.max(1);
        let controller = match &config.latency {
            Some(control) => {
                let mut pid = control.pid.clone();
                pid.max = pid.max.min(ceiling).max(1);
                pid.min = pid.min.min(pid.max);
                pid.initial = pid.initial.clamp(pid.min, pid.max);
                let pid = Pid::new(pid).map_err(|e| TextError::InvalidInput {
                    field: "latency",
                    reason: e.to_string(),
                })?;
                Some((pid, control.window_steps.max(1)))
            }
            None => None,
        };
        let scheduler_config = SchedulerConfig {
            num_blocks,
            block_size,
            step_tokens: config.step_tokens.max(1),
            max_running: controller.as_ref().map_or(ceiling, |(p, _)| p.target()),
            prefix_caching: config.prefix_caching,
            urgent_preempts_low: config.urgent_preempts_low,
        };
        let shared = Arc::new(Shared {
            stats: Mutex::new(GenerationStats {
                max_running: scheduler_config.max_running,
                ..GenerationStats::default()
            }),
            pending: AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let model = generator.model().clone();
        let thread_shared = shared.clone();
        let gate = config.yield_gate.clone();
        let thread = std::thread::Builder::new()
            .name("switchyard-engine".into())
            .spawn(move || {
                let started = Scheduler::new(&model, scheduler_config).and_then(|mut s| {
                    s.set_yield_gate(gate)?;
                    Ok(s)
                });
                let scheduler = match started {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                Loop {
                    scheduler,
                    senders: HashMap::new(),
                    finals: Vec::new(),
                    shared: thread_shared,
                    controller,
                    ceiling,
                    window: LatencyWindow::new(256),
                    shutdown: None,
                }
                .run(&rx);
            })
            .map_err(|e| TextError::Generation {
                reason: format!("cannot start the engine thread: {e}"),
            })?;
        ready_rx.recv().map_err(|_| TextError::Generation {
            reason: "the engine thread ended while starting".into(),
        })??;
        Ok(Self {
            generator,
            config,
            num_blocks,
            commands: Mutex::new(Some(tx)),
            shared,
            next_id: AtomicUsize::new(0),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The generator (model, tokenizer, template) it serves.
    pub fn generator(&self) -> &Generator {
        &self.generator
    }

    /// Its settings.
    pub fn config(&self) -> &GenerationEngineConfig {
        &self.config
    }

    /// Queue `request` with default options.
    pub fn submit(&self, request: &GenerateRequest) -> Result<GenerationStream> {
        self.submit_with(request, RequestOptions::default())
    }

    /// Queue `request`; its text arrives on the returned stream. Bad input
    /// (and a request that could never fit the KV cache) is refused here,
    /// before anything runs; so is any request while
    /// [`GenerationEngineConfig::max_pending`] are unfinished
    /// ([`TextError::QueueFull`]) or after shutdown
    /// ([`TextError::ShuttingDown`]). Dropping the stream cancels it.
    pub fn submit_with(
        &self,
        request: &GenerateRequest,
        options: RequestOptions,
    ) -> Result<GenerationStream> {
        let cancel = request.cancel.child_token();
        let job = self.generator.prepare(request, cancel.clone())?;
        let whole = job.prompt.len() + job.max_new;
        let needed = whole.div_ceil(self.config.block_size.max(1));
        if needed > self.num_blocks {
            return Err(TextError::InvalidInput {
                field: "max_tokens",
                reason: format!(
                    "{whole} tokens need {needed} KV blocks; the cache has {}",
                    self.num_blocks
                ),
            });
        }
        let limit = self.config.max_pending.max(1);
        let accepted = self
            .shared
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        if accepted.is_err() {
            return Err(TextError::QueueFull { capacity: limit });
        }
        let (sender, stream) = stream::channel(cancel);
        let submission = Submission {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            job,
            admission: Admission {
                priority: options.priority,
                deadline: options.deadline,
            },
            sender,
            counted: self
                .config
                .yield_gate
                .as_ref()
                .map(|g| g.enter(options.priority)),
        };
        let sent = self
            .commands
            .lock()
            .as_ref()
            .map(|tx| tx.send(Command::Submit(Box::new(submission))).is_ok());
        if sent != Some(true) {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(TextError::ShuttingDown);
        }
        Ok(stream)
    }

    /// Changes the most sequences that run at once (at least 1). Running
    /// ones over a lower cap finish; none is cut short. With latency control
    /// the controller moves under this cap (never over its own `max`).
    /// Returns whether the engine was still running to take it.
    pub fn set_max_running(&self, n: usize) -> bool {
        self.commands
            .lock()
            .as_ref()
            .is_some_and(|tx| tx.send(Command::SetMaxRunning(n)).is_ok())
    }

    /// The counters now.
    pub fn stats(&self) -> GenerationStats {
        *self.shared.stats.lock()
    }

    /// Stop taking requests and end the engine as `mode` says, waiting for
    /// the thread to finish the work it keeps.
    pub fn shutdown(&self, mode: ShutdownMode) {
        if let Some(tx) = self.commands.lock().take() {
            let _ = tx.send(Command::Shutdown(mode));
        }
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GenerationEngine {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish what it holds and end.
        self.commands.lock().take();
    }
}

/// A stream's last item, held back until the stats count it.
type Final = (DeltaSender, Result<TextDelta>);

/// Sends each sequence's deltas to its stream; its last item is held in
/// `finals` (see [`Loop::flush`]) and the stream forgotten.
struct Streams<'a> {
    senders: &'a mut HashMap<usize, DeltaSender>,
    finals: &'a mut Vec<Final>,
}

impl DeltaSink for Streams<'_> {
    fn send(&mut self, index: usize, item: Result<TextDelta>) {
        let last = !matches!(&item, Ok(d) if d.finish.is_none());
        if !last {
            if let Some(sender) = self.senders.get(&index) {
                sender.send(item);
            }
        } else if let Some(sender) = self.senders.remove(&index) {
            self.finals.push((sender, item));
        }
    }
}

/// The engine thread's state.
struct Loop<'m> {
    scheduler: Scheduler<'m>,
    senders: HashMap<usize, DeltaSender>,
    finals: Vec<Final>,
    shared: Arc<Shared>,
    controller: Option<(Pid, usize)>,
    /// Most running sequences (set at start, changed by `set_max_running`).
    ceiling: usize,
    window: LatencyWindow,
    shutdown: Option<ShutdownMode>,
}

impl Loop<'_> {
    fn run(mut self, rx: &Receiver<Command>) {
        loop {
            if self.scheduler.is_idle() {
                if self.shutdown.is_some() {
                    return;
                }
                match rx.recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(command) => self.handle(command),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.shutdown.get_or_insert(ShutdownMode::Drain);
                        break;
                    }
                }
            }
            if self.shutdown == Some(ShutdownMode::RefuseWaiting) {
                let mut sink = Streams {
                    senders: &mut self.senders,
                    finals: &mut self.finals,
                };
                self.scheduler
                    .refuse_waiting(|| TextError::ShuttingDown, &mut sink);
            }
            self.step();
            if self.scheduler.holding() {
                // Every running sequence yields to urgent work elsewhere:
                // look again soon, or at once when a request arrives.
                match rx.recv_timeout(YIELD_POLL) {
                    Ok(command) => self.handle(command),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        self.shutdown.get_or_insert(ShutdownMode::Drain);
                    }
                }
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit(submission) => {
                let Submission {
                    id,
                    job,
                    admission,
                    sender,
                    counted,
                } = *submission;
                self.senders.insert(id, sender);
                if let Err(e) = self.scheduler.submit_counted(id, job, admission, counted) {
                    let mut sink = Streams {
                        senders: &mut self.senders,
                        finals: &mut self.finals,
                    };
                    sink.send(id, Err(e));
                    self.flush();
                }
            }
            Command::SetMaxRunning(n) => {
                self.ceiling = n.max(1);
                let now = match &self.controller {
                    Some((pid, _)) => pid.target().min(self.ceiling),
                    None => self.ceiling,
                };
                self.scheduler.set_max_running(now);
                self.publish();
            }
            Command::Shutdown(mode) => {
                self.shutdown = Some(mode);
            }
        }
    }

    fn step(&mut self) {
        let before = self.scheduler.stats().decode_steps;
        let started = Instant::now();
        let mut sink = Streams {
            senders: &mut self.senders,
            finals: &mut self.finals,
        };
        let span = tracing::trace_span!("step", running = self.scheduler.running());
        let outcome = span.in_scope(|| self.scheduler.step(&mut sink));
        let elapsed = started.elapsed();
        if let Err(e) = outcome {
            self.fail_all(e);
            return;
        }
        if self.scheduler.stats().decode_steps > before {
            self.window.record(elapsed);
            self.control();
        }
        self.flush();
    }

    /// After `window_steps` inter-token gaps, let the PID move the cap.
    fn control(&mut self) {
        let Some((pid, every)) = &mut self.controller else {
            return;
        };
        if self.window.since_mark() < *every {
            return;
        }
        let p95 = self.window.recent_quantile(*every, 0.95);
        self.window.mark();
        let target = self.scheduler.max_running();
        let observation = BatchObservation {
            size: self.scheduler.running(),
            cost: self.scheduler.running() as u64,
            latency: p95,
            target,
            queued_after: self.scheduler.waiting(),
        };
        let next = pid.observe(&observation);
        self.scheduler.set_max_running(next.min(self.ceiling));
    }

    /// A failure of the model ends every open stream; the engine starts
    /// over with an empty cache.
    fn fail_all(&mut self, error: TextError) {
        let message = error.to_string();
        let open: Vec<usize> = self.senders.keys().copied().collect();
        let mut sink = Streams {
            senders: &mut self.senders,
            finals: &mut self.finals,
        };
        for id in open {
            sink.send(
                id,
                Err(TextError::Generation {
                    reason: message.clone(),
                }),
            );
        }
        self.scheduler.reset();
        self.flush();
    }

    /// Publish the stats, then hand out the last items of the streams that
    /// ended: a reader who has seen its stream end finds it counted, and its
    /// slot under `max_pending` free.
    fn flush(&mut self) {
        self.publish();
        if self.finals.is_empty() {
            return;
        }
        self.shared
            .pending
            .fetch_sub(self.finals.len(), Ordering::AcqRel);
        for (sender, item) in self.finals.drain(..) {
            sender.send(item);
        }
    }

    fn publish(&self) {
        let s = self.scheduler.stats();
        let [p50, p95] = self.window.quantiles([0.50, 0.95]);
        let stats = GenerationStats {
            running: self.scheduler.running(),
            waiting: self.scheduler.waiting(),
            max_running: self.scheduler.max_running(),
            steps: s.steps,
            generated_tokens: s.generated_tokens,
            prefill_tokens: s.prefill_tokens,
            cached_prompt_tokens: s.cached_tokens,
            preemptions: s.preemptions,
            interrupted_steps: s.interrupted_steps,
            finished: s.finished,
            itl_p50_secs: p50.as_secs_f64(),
            itl_p95_secs: p95.as_secs_f64(),
            kv: self.scheduler.kv_stats(),
            controller: self.controller.as_ref().map(|(pid, _)| pid.state()),
        };
        *self.shared.stats.lock() = stats;
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
