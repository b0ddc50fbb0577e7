//! The iteration-level scheduler: requests join and leave between forward
//! steps. Every step it drops cancelled and expired requests, admits
//! waiting ones while the KV blocks and the concurrency cap allow, runs one
//! forward over all running sequences (a decode row each, plus prompt
//! chunks within a token budget), streams the sampled tokens and retires
//! finished sequences at once. When a sequence needs a block and none is
//! left, the lowest-priority, most recently admitted sequence is preempted:
//! its blocks are freed and it waits, first in line, to be recomputed
//! (its prompt and the tokens it already streamed, as one prefill) when
//! room returns, so its stream goes on without a gap or a repeat.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{CpuStorage, DType, Storage, Tensor};

use switchyard_batch::{
    BackgroundPool, BatchKey, PriorityQueue, QueueConfig, Queued, YieldGate, YieldGuard,
};
use switchyard_core::{Deadline, Priority, RequestId};
use switchyard_pool::{KvBlockPool, KvPoolConfig, KvStats};

use super::run::{DeltaSink, Prepared};
use super::sequence::{Seq, sample, send_last};
use super::stats::SchedulerStats;
use crate::llama::{LlamaModel, PagedKvCache, SeqStep, StepLogits};
use crate::{FinishReason, Result, TextError};

/// Knobs of a [`Scheduler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SchedulerConfig {
    /// KV blocks in the cache.
    pub(crate) num_blocks: usize,
    /// Tokens per block.
    pub(crate) block_size: usize,
    /// Tokens one step may compute over all sequences: every running decode
    /// row, then prompt chunks up to the rest (at least one block's worth,
    /// so prompts always progress).
    pub(crate) step_tokens: usize,
    /// Most sequences running at once.
    pub(crate) max_running: usize,
    /// Reuse the blocks of prompts computed before.
    pub(crate) prefix_caching: bool,
    /// Let an Urgent request that does not fit preempt a running Low one.
    pub(crate) urgent_preempts_low: bool,
}

/// How a request queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Admission {
    /// Its priority (Urgent first; aging lifts waiting ones).
    pub(crate) priority: Priority,
    /// When it must have started by; past it, it ends with an error
    /// without running.
    pub(crate) deadline: Option<Deadline>,
}

/// Runs many generation requests over one model and one KV cache, a
/// forward step at a time (see the module docs).
pub(crate) struct Scheduler<'m> {
    model: &'m LlamaModel,
    config: SchedulerConfig,
    pool: KvBlockPool,
    cache: PagedKvCache,
    queue: PriorityQueue<Seq>,
    key: BatchKey,
    /// Taken from the queue but not running (preempted, or did not fit):
    /// served before the queue.
    ready: VecDeque<Seq>,
    running: Vec<Seq>,
    admissions: u64,
    stats: SchedulerStats,
    /// The device's gate: running sequences it holds skip steps.
    gate: Option<Arc<YieldGate>>,
    /// Threads for steps whose every row the gate may hold.
    background: Option<BackgroundPool>,
    /// The last step computed nothing because the gate held every row.
    holding: bool,
    /// The host path's logits, kept from step to step.
    logits: Vec<f32>,
    /// Tests: abandon the next background step after its first layer.
    #[cfg(test)]
    pub(crate) interrupt_next: bool,
}

/// Runs `f` over `logits` (`[rows, vocab]`) as one host slice: the CPU
/// tensor's own storage when it is contiguous f32 (no copy of 49k values
/// a row), else a copy.
fn with_host_logits<R>(logits: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        let (storage, layout) = logits.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return f(&v[a..b]);
        }
    }
    f(&logits.flatten_all()?.to_vec1::<f32>()?)
}

fn generation(e: impl std::fmt::Display) -> TextError {
    TextError::Generation {
        reason: e.to_string(),
    }
}

impl<'m> Scheduler<'m> {
    /// An idle scheduler with a fresh cache of `config.num_blocks` blocks.
    pub(crate) fn new(model: &'m LlamaModel, config: SchedulerConfig) -> Result<Self> {
        let pool = KvBlockPool::new(KvPoolConfig {
            num_blocks: config.num_blocks,
            block_size: config.block_size,
            prefix_caching: config.prefix_caching,
        })
        .map_err(generation)?;
        let cache = model.new_kv_cache(config.num_blocks, config.block_size)?;
        Ok(Self {
            model,
            config: SchedulerConfig {
                max_running: config.max_running.max(1),
                step_tokens: config.step_tokens.max(1),
                ..config
            },
            pool,
            cache,
            queue: PriorityQueue::new(QueueConfig {
                capacity: usize::MAX,
                per_key_capacity: usize::MAX,
                ..QueueConfig::default()
            }),
            key: BatchKey::new("generate", 0),
            ready: VecDeque::new(),
            running: Vec::new(),
            admissions: 0,
            stats: SchedulerStats::default(),
            gate: None,
            background: None,
            holding: false,
            logits: Vec::new(),
            #[cfg(test)]
            interrupt_next: false,
        })
    }

    /// Share the device's [`YieldGate`]: requests count on it from
    /// submission to their end; while it holds a priority, those running
    /// sequences skip steps (keeping their blocks), do not count against
    /// the running cap, and no such request is admitted.
    /// Steps whose every row the gate may hold run on background threads
    /// when the gate asks for them.
    pub(crate) fn set_yield_gate(&mut self, gate: Option<Arc<YieldGate>>) -> Result<()> {
        self.background = match &gate {
            Some(g) if g.background() => {
                Some(BackgroundPool::matching_global("text").map_err(generation)?)
            }
            _ => None,
        };
        self.gate = gate;
        Ok(())
    }

    /// Whether the last step ran nothing because the gate held every
    /// running sequence (the caller should wait a little).
    pub(crate) fn holding(&self) -> bool {
        self.holding
    }

    /// The least urgent priority that may compute now.
    fn floor(&self) -> Priority {
        self.gate.as_ref().map_or(Priority::Low, |g| g.floor())
    }

    /// Queue `job` under sink index `id`. Refused when it could never fit
    /// the cache even alone.
    pub(crate) fn submit(&mut self, id: usize, job: Prepared, admission: Admission) -> Result<()> {
        self.submit_counted(id, job, admission, None)
    }

    /// [`submit`](Self::submit) for a request already counted on the
    /// yield gate by `counted` (else it is counted here).
    pub(crate) fn submit_counted(
        &mut self,
        id: usize,
        job: Prepared,
        admission: Admission,
        counted: Option<YieldGuard>,
    ) -> Result<()> {
        let whole = job.prompt.len() + job.max_new;
        let needed = self.pool.blocks_for(whole);
        if needed > self.config.num_blocks {
            return Err(TextError::InvalidInput {
                field: "max_tokens",
                reason: format!(
                    "{whole} tokens need {needed} KV blocks; the cache has {}",
                    self.config.num_blocks
                ),
            });
        }
        let seq = Seq {
            id,
            tokens: job.prompt.clone(),
            job,
            computed: 0,
            generated: 0,
            admission,
            admitted: 0,
            done: false,
            _yield: counted.or_else(|| self.gate.as_ref().map(|g| g.enter(admission.priority))),
        };
        let mut entry = Queued::new(
            RequestId::from_u64(id as u64),
            admission.priority,
            1,
            Instant::now(),
            seq,
        );
        entry.deadline = admission.deadline;
        self.queue
            .push(&self.key, entry)
            .map_err(|(e, _)| generation(e))?;
        Ok(())
    }

    /// Nothing running or waiting.
    pub(crate) fn is_idle(&self) -> bool {
        self.running.is_empty() && self.ready.is_empty() && self.queue.is_empty()
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> SchedulerStats {
        self.stats
    }

    /// The KV pool's counters.
    pub(crate) fn kv_stats(&self) -> KvStats {
        self.pool.stats()
    }

    /// Sequences running now.
    pub(crate) fn running(&self) -> usize {
        self.running.len()
    }

    /// Requests waiting to start or to resume after a preemption.
    pub(crate) fn waiting(&self) -> usize {
        self.ready.len() + self.queue.len()
    }

    /// The concurrency cap now.
    pub(crate) fn max_running(&self) -> usize {
        self.config.max_running
    }

    /// Change the concurrency cap (at least 1). Lowering it below the
    /// running count stops admissions until enough finish; nothing running
    /// is preempted for it.
    pub(crate) fn set_max_running(&mut self, n: usize) {
        self.config.max_running = n.max(1);
    }

    /// Forget every request (after a failure whose error their streams
    /// already got): running sequences free their blocks, and the prefix
    /// cache is emptied, since a failed step may have left partial rows.
    pub(crate) fn reset(&mut self) {
        for s in self.running.drain(..) {
            let _ = self.pool.free(s.pool_id());
            self.stats.finished += 1;
        }
        self.stats.finished += self.take_waiting(|_| true).len() as u64;
        self.pool.clear_cache();
    }

    /// Take every waiting request `pick` chooses out of the ready line and
    /// the queue (in that order); the others keep their places.
    fn take_waiting(&mut self, pick: impl Fn(&Seq) -> bool) -> Vec<Seq> {
        let (mut taken, kept): (Vec<Seq>, Vec<Seq>) = self.ready.drain(..).partition(&pick);
        self.ready = kept.into();
        let mut ids = Vec::new();
        self.queue.for_each(|_, e| {
            if pick(&e.payload) {
                ids.push(e.id);
            }
        });
        taken.extend(
            ids.into_iter()
                .filter_map(|id| self.queue.remove_id(id))
                .map(|e| e.payload),
        );
        taken
    }

    /// End every request that has not started with `error()`; sequences
    /// already streaming (running, or preempted and waiting to resume) go
    /// on.
    pub(crate) fn refuse_waiting(
        &mut self,
        error: impl Fn() -> TextError,
        sink: &mut dyn DeltaSink,
    ) {
        for s in self.take_waiting(|s| s.admitted == 0) {
            self.stats.finished += 1;
            sink.send(s.id, Err(error()));
        }
    }

    /// The block table and tokens of every running sequence (for checks).
    #[cfg(test)]
    pub(crate) fn tables(&self) -> Vec<(Vec<u32>, Vec<u32>)> {
        self.running
            .iter()
            .filter_map(|s| {
                let table = self.pool.block_table(s.pool_id()).ok()?.to_vec();
                Some((table, s.tokens.clone()))
            })
            .collect()
    }

    /// One iteration. Returns whether work remains. A failure of the model
    /// or the cache is returned as is; the caller ends the open streams.
    pub(crate) fn step(&mut self, sink: &mut dyn DeltaSink) -> Result<bool> {
        self.drop_cancelled(sink);
        self.drop_expired(sink);
        self.holding = false;
        let floor = self.floor();
        self.admit(floor, sink)?;
        if self.running.is_empty() {
            return Ok(!self.is_idle());
        }
        let plan = self.plan(floor);
        if plan.is_empty() {
            self.holding = true;
            return Ok(true);
        }
        let tables: Vec<Vec<u32>> = plan
            .iter()
            .map(|&(i, _)| {
                self.pool
                    .block_table(self.running[i].pool_id())
                    .map(<[u32]>::to_vec)
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(generation)?;
        let batch: Vec<SeqStep<'_>> = plan
            .iter()
            .zip(&tables)
            .map(|(&(i, take), table)| {
                let s = &self.running[i];
                SeqStep {
                    tokens: &s.tokens[s.computed..s.computed + take],
                    start: s.computed,
                    blocks: table,
                    logits: s.computed + take == s.tokens.len(),
                }
            })
            .collect();
        let wants: Vec<bool> = batch.iter().map(|s| s.logits).collect();
        // One reading of the gate per step, then a check per row.
        let background = self.background.as_ref().filter(|_| {
            self.gate.as_ref().is_some_and(|g| {
                g.background_now()
                    && plan
                        .iter()
                        .all(|&(i, _)| g.may_hold(self.running[i].admission.priority))
            })
        });
        // A background step gives the cores up within a layer once the
        // gate holds its rows: urgent work, here or elsewhere, has arrived.
        let (gate, held) = (
            self.gate.as_deref(),
            self.running[plan[0].0].admission.priority,
        );
        #[cfg(test)]
        let forced = std::mem::take(&mut self.interrupt_next);
        #[cfg(not(test))]
        let forced = false;
        let checks = std::sync::atomic::AtomicUsize::new(0);
        let stop = || {
            let first = checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
            (forced && !first) || gate.is_some_and(|g| !g.allows(held))
        };
        let (model, cache) = (self.model, &mut self.cache);
        let mut buffer = std::mem::take(&mut self.logits);
        let logits = match background {
            Some(pool) => pool.run(|| model.forward_into(cache, &batch, &stop, &mut buffer)),
            None => model.forward_into(cache, &batch, &|| false, &mut buffer),
        };
        drop(batch);
        let outcome = self.finish_step(logits, &buffer, &plan, &wants, sink);
        // Kept for the next step whatever happened to this one.
        self.logits = buffer;
        outcome
    }

    /// The rest of [`Scheduler::step`] once the forward has run: commit,
    /// sample and stream, retire and append.
    fn finish_step(
        &mut self,
        logits: Result<Option<StepLogits>>,
        buffer: &[f32],
        plan: &[(usize, usize)],
        wants: &[bool],
        sink: &mut dyn DeltaSink,
    ) -> Result<bool> {
        let Some(logits) = logits? else {
            // Nothing advanced: the rows run this step again when the gate
            // lets them.
            self.stats.interrupted_steps += 1;
            return Ok(true);
        };
        self.stats.steps += 1;
        let vocab = self.model.config().vocab;
        let (sampled, streaming) = match logits {
            StepLogits::Buffer => self.advance(plan, wants, buffer, vocab, sink),
            StepLogits::Tensor(t) => {
                with_host_logits(&t, |all| self.advance(plan, wants, all, vocab, sink))
            }
        }?;
        if streaming {
            self.stats.decode_steps += 1;
        }
        self.retire();
        for (id, token) in sampled {
            self.append(id, token)?;
        }
        sink.after_step(&self.pool.stats());
        Ok(!self.is_idle())
    }

    /// Commits the computed tokens of every planned row and samples the
    /// next token of those that asked for logits (row after row of `all`,
    /// `vocab` each); returns (sequence id, token) of the sequences that go
    /// on, and whether any row was a decode row.
    fn advance(
        &mut self,
        plan: &[(usize, usize)],
        wants: &[bool],
        all: &[f32],
        vocab: usize,
        sink: &mut dyn DeltaSink,
    ) -> Result<(Vec<(usize, u32)>, bool)> {
        let mut rows = all.chunks_exact(vocab.max(1));
        let mut sampled = Vec::new();
        let mut streaming = false;
        for (&(i, take), &wants) in plan.iter().zip(wants) {
            let s = &mut self.running[i];
            // Prompt chunks (the last may be a single token) and
            // recomputation after a preemption; not a decode row.
            if s.generated == 0 || s.tokens.len() - s.computed > 1 {
                self.stats.prefill_tokens += take as u64;
            }
            s.computed += take;
            self.pool
                .commit(s.pool_id(), s.computed)
                .map_err(generation)?;
            if !wants {
                continue;
            }
            let Some(logits_row) = rows.next() else {
                return Err(generation(
                    "the model returned fewer logits rows than asked",
                ));
            };
            streaming |= s.generated > 0;
            self.stats.generated_tokens += 1;
            if let Some(token) = sample(s, logits_row, sink)? {
                sampled.push((s.id, token));
            }
        }
        Ok((sampled, streaming))
    }

    /// (running index, tokens) for this step: every decode row, then prompt
    /// chunks in admission order within the budget; none of a priority
    /// below `floor`.
    fn plan(&self, floor: Priority) -> Vec<(usize, usize)> {
        let pending = |s: &Seq| {
            if s.admission.priority.rank() > floor.rank() {
                0
            } else {
                s.tokens.len() - s.computed
            }
        };
        let decodes = self.running.iter().filter(|s| pending(s) == 1).count();
        let mut budget = self
            .config
            .step_tokens
            .saturating_sub(decodes)
            .max(self.config.block_size);
        let mut plan = Vec::with_capacity(self.running.len());
        for (i, s) in self.running.iter().enumerate() {
            match pending(s) {
                0 => {}
                1 => plan.push((i, 1)),
                n if budget > 0 => {
                    let take = n.min(budget);
                    budget -= take;
                    plan.push((i, take));
                }
                _ => {}
            }
        }
        plan
    }

    /// End cancelled requests wherever they are; running ones free their
    /// blocks now.
    fn drop_cancelled(&mut self, sink: &mut dyn DeltaSink) {
        let cancelled = |s: &Seq| s.job.cancel.is_cancelled();
        let mut i = 0;
        while i < self.running.len() {
            if cancelled(&self.running[i]) {
                let s = self.running.remove(i);
                let _ = self.pool.free(s.pool_id());
                self.end(
                    s,
                    FinishReason::Cancelled,
                    (String::new(), Vec::new()),
                    sink,
                );
            } else {
                i += 1;
            }
        }
        for s in self.take_waiting(cancelled) {
            self.end(
                s,
                FinishReason::Cancelled,
                (String::new(), Vec::new()),
                sink,
            );
        }
    }

    /// End queued requests whose deadline passed before they started.
    fn drop_expired(&mut self, sink: &mut dyn DeltaSink) {
        let now = Instant::now();
        for e in self.queue.take_expired(now) {
            self.expire(e.payload, sink);
        }
        let late =
            |s: &Seq| s.admitted == 0 && s.admission.deadline.is_some_and(|d| now >= d.instant());
        let (gone, kept): (Vec<Seq>, Vec<Seq>) = self.ready.drain(..).partition(late);
        self.ready = kept.into();
        for s in gone {
            self.expire(s, sink);
        }
    }

    fn expire(&mut self, s: Seq, sink: &mut dyn DeltaSink) {
        self.stats.finished += 1;
        sink.send(s.id, Err(TextError::DeadlineExpired));
    }

    /// Take finished sequences out of the running set and free their
    /// blocks (their last delta went out when they were sampled).
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].done {
                let s = self.running.remove(i);
                let _ = self.pool.free(s.pool_id());
                self.stats.finished += 1;
            } else {
                i += 1;
            }
        }
    }

    fn end(
        &mut self,
        s: Seq,
        reason: FinishReason,
        last: (String, Vec<u32>),
        sink: &mut dyn DeltaSink,
    ) {
        self.stats.finished += 1;
        send_last(&s, reason, last, sink);
    }
}

#[path = "admission.rs"]
mod admission;

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
