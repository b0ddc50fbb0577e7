//! Admission and preemption for the [`Scheduler`]: which waiting
//! requests start, where their blocks come from, and who gives blocks up
//! when none is left.

use std::time::Instant;

use switchyard_core::Priority;
use switchyard_pool::{KvStorage, PoolError};

use super::{Scheduler, generation};
use crate::Result;
use crate::generate::run::DeltaSink;
use crate::generate::sequence::Seq;

impl Scheduler<'_> {
    /// Record `token` of request `id` in the pool, preempting others (or
    /// itself) while no block is left for it.
    pub(super) fn append(&mut self, id: usize, token: u32) -> Result<()> {
        loop {
            let Some(at) = self.running.iter().position(|s| s.id == id) else {
                // Preempted earlier in this step: its recomputation covers
                // the token.
                return Ok(());
            };
            match self.pool.append(self.running[at].pool_id(), token) {
                Ok(Some(copy)) => return Ok(self.cache.copy_block(copy.from, copy.to)?),
                Ok(None) => return Ok(()),
                Err(PoolError::OutOfBlocks { .. }) => {
                    let victim = self.victim(None).unwrap_or(at);
                    self.preempt(victim);
                }
                Err(e) => return Err(generation(e)),
            }
        }
    }

    /// The running sequence to preempt: the lowest priority, then the most
    /// recently admitted, among those less urgent than `than` (any, for
    /// `None`).
    pub(super) fn victim(&self, than: Option<Priority>) -> Option<usize> {
        self.running
            .iter()
            .enumerate()
            .filter(|(_, s)| than.is_none_or(|p| s.admission.priority.rank() > p.rank()))
            .max_by_key(|(_, s)| (s.admission.priority.rank(), s.admitted))
            .map(|(i, _)| i)
    }

    /// Free running sequence `at`'s blocks and put it first in line.
    pub(super) fn preempt(&mut self, at: usize) {
        let mut s = self.running.remove(at);
        let _ = self.pool.free(s.pool_id());
        s.computed = 0;
        self.stats.preemptions += 1;
        self.ready.push_front(s);
    }

    /// Move waiting requests into the running set while they fit. A
    /// request whose first block is being prefilled right now by a running
    /// sequence waits a step (with prefix caching), so that it finds those
    /// blocks cached instead of computing them a second time.
    pub(super) fn admit(&mut self, floor: Priority, sink: &mut dyn DeltaSink) -> Result<()> {
        // Parked requests leave `ready` until the loop ends, so each is
        // looked at once. Sequences below `floor` neither count against
        // the cap nor start.
        let allowed = |s: &Seq| s.admission.priority.rank() <= floor.rank();
        let mut parked = Vec::new();
        while self.running.iter().filter(|s| allowed(s)).count() < self.config.max_running {
            let next = match self.ready.iter().position(allowed) {
                Some(at) => self
                    .ready
                    .remove(at)
                    .ok_or_else(|| generation("ready queue"))?,
                None => {
                    let now = Instant::now();
                    let taken = self
                        .queue
                        .take_batch_above(&self.key, 1, u64::MAX, now, floor);
                    for e in taken.expired {
                        self.expire(e.payload, sink);
                    }
                    match taken.batch.into_iter().next() {
                        Some(e) => e.payload,
                        None => break,
                    }
                }
            };
            if self.shares_a_prefix_in_flight(&next, floor) {
                parked.push(next);
                continue;
            }
            if let Some(s) = self.place(next)? {
                self.ready.push_front(s);
                break;
            }
        }
        for s in parked.into_iter().rev() {
            self.ready.push_front(s);
        }
        Ok(())
    }

    /// Whether a running sequence the gate lets compute (priority `floor`
    /// or above) is still computing prompt tokens that `s`'s tokens start
    /// with, a whole block or more (so `s` would find them cached later).
    /// A held one is not waited for: it computes nothing until `s` ends.
    pub(super) fn shares_a_prefix_in_flight(&self, s: &Seq, floor: Priority) -> bool {
        let bs = self.config.block_size;
        if !self.config.prefix_caching || s.tokens.len() <= bs {
            return false;
        }
        // One the gate holds computes nothing while `s` waits.
        let computing = |r: &&Seq| r.admission.priority.rank() <= floor.rank();
        self.running.iter().filter(computing).any(|r| {
            let prompt = &r.job.prompt;
            if r.computed >= prompt.len() || prompt[..bs.min(prompt.len())] != s.tokens[..bs] {
                return false;
            }
            let common = prompt
                .iter()
                .zip(&s.tokens)
                .take_while(|(a, b)| a == b)
                .count();
            // Keep one token for `s` to compute, as the pool does; worth
            // waiting for when at least a whole block is shared (the pool
            // then reuses the part-filled block's matching rows too).
            let reusable = common.min(s.tokens.len() - 1);
            reusable >= bs && r.computed < reusable
        })
    }

    /// Give `s` its blocks and start it; hands it back when it does not
    /// fit (after preempting a Low sequence for an Urgent one, if allowed).
    pub(super) fn place(&mut self, mut s: Seq) -> Result<Option<Seq>> {
        loop {
            match self.pool.start_sequence(s.pool_id(), &s.tokens) {
                Ok(reuse) => {
                    if let Some(copy) = reuse.copy {
                        self.cache.copy_block(copy.from, copy.to)?;
                    }
                    let cached = reuse.cached;
                    s.computed = cached;
                    self.stats.cached_tokens += cached as u64;
                    self.admissions += 1;
                    s.admitted = self.admissions;
                    self.running.push(s);
                    return Ok(None);
                }
                Err(PoolError::OutOfBlocks { .. }) => {
                    let urgent = s.admission.priority == Priority::Urgent;
                    match self.victim(Some(Priority::Normal)) {
                        Some(v) if urgent && self.config.urgent_preempts_low => self.preempt(v),
                        _ => return Ok(Some(s)),
                    }
                }
                Err(e) => return Err(generation(e)),
            }
        }
    }
}
