//! The fixed-batch generation loop: sequences started together and run to
//! the end by a [`Scheduler`] whose KV cache holds all of them whole.

use switchyard_core::CancellationToken;
use switchyard_pool::KvStats;

use super::TextDelta;
use super::scheduler::{Admission, Scheduler, SchedulerConfig};
use crate::llama::LlamaModel;
use crate::{Result, Sampler, StopMatcher, StreamDecoder, TextError};

/// One request, ready to run.
pub(crate) struct Prepared {
    pub(crate) prompt: Vec<u32>,
    pub(crate) sampler: Sampler,
    pub(crate) stops: StopMatcher,
    pub(crate) decoder: StreamDecoder,
    pub(crate) stop_ids: Vec<u32>,
    /// Tokens it may generate (the request's `max_tokens`, cut to the context).
    pub(crate) max_new: usize,
    pub(crate) cancel: CancellationToken,
}

/// Where the loop sends each sequence's deltas.
pub(crate) trait DeltaSink {
    fn send(&mut self, index: usize, item: Result<TextDelta>);
    /// Called after every step with the KV pool's counters.
    fn after_step(&mut self, _kv: &KvStats) {}
}

impl<F: FnMut(usize, Result<TextDelta>)> DeltaSink for F {
    fn send(&mut self, index: usize, item: Result<TextDelta>) {
        self(index, item);
    }
}

/// Remembers which sequences have had their last delta.
struct Tracking<'a> {
    finished: Vec<bool>,
    inner: &'a mut dyn DeltaSink,
}

impl DeltaSink for Tracking<'_> {
    fn send(&mut self, index: usize, item: Result<TextDelta>) {
        if matches!(&item, Ok(d) if d.finish.is_some()) {
            self.finished[index] = true;
        }
        self.inner.send(index, item);
    }

    fn after_step(&mut self, kv: &KvStats) {
        self.inner.after_step(kv);
    }
}

/// Knobs of the loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoopConfig {
    pub(crate) block_size: usize,
    /// Prompt tokens one step may prefill, over all sequences.
    pub(crate) prefill_chunk: usize,
}

/// Run `jobs` to the end, sending deltas to `sink` by job index.
pub(crate) fn run(
    model: &LlamaModel,
    jobs: Vec<Prepared>,
    config: LoopConfig,
    sink: &mut dyn DeltaSink,
) {
    let mut tracking = Tracking {
        finished: vec![false; jobs.len()],
        inner: sink,
    };
    if let Err(e) = run_inner(model, jobs, config, &mut tracking) {
        // A failure of the model (not of one request) ends every stream that
        // is still open; the message is the same for all.
        let message = e.to_string();
        let open: Vec<usize> = (0..tracking.finished.len())
            .filter(|&i| !tracking.finished[i])
            .collect();
        for i in open {
            tracking.inner.send(
                i,
                Err(TextError::Generation {
                    reason: message.clone(),
                }),
            );
        }
    }
}

fn run_inner(
    model: &LlamaModel,
    jobs: Vec<Prepared>,
    config: LoopConfig,
    sink: &mut dyn DeltaSink,
) -> Result<()> {
    // Room for every request's whole length: nothing is ever preempted.
    let bs = config.block_size;
    let blocks: usize = jobs
        .iter()
        .map(|j| (j.prompt.len() + j.max_new).div_ceil(bs))
        .sum();
    let mut scheduler = Scheduler::new(
        model,
        SchedulerConfig {
            num_blocks: blocks.max(1),
            block_size: bs,
            step_tokens: config.prefill_chunk,
            max_running: jobs.len(),
            prefix_caching: false,
            urgent_preempts_low: false,
        },
    )?;
    for (i, job) in jobs.into_iter().enumerate() {
        scheduler.submit(i, job, Admission::default())?;
    }
    while scheduler.step(sink)? {}
    Ok(())
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
