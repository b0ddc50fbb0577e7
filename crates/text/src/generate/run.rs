//! The generation loop: a fixed batch of sequences started together, one
//! forward step at a time, over a KV cache sized for the batch.

use switchyard_core::CancellationToken;
use switchyard_pool::{KvBlockPool, KvPoolConfig, KvStats, KvStorage, SeqId};

use super::{Finished, TextDelta};
use crate::llama::{LlamaModel, PagedKvCache, SeqStep};
use crate::{FinishReason, Result, Sampler, StopMatcher, StreamDecoder, TextError, Usage};

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

/// A running sequence.
struct Live {
    job: Prepared,
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    /// Tokens whose keys and values are in the cache.
    computed: usize,
    generated: usize,
    done: bool,
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

/// End sequence `i` with a last delta carrying `text`, `tokens` and why.
fn finish(
    live: &mut Live,
    reason: FinishReason,
    (text, tokens): (String, Vec<u32>),
    sink: &mut dyn DeltaSink,
    i: usize,
) {
    live.done = true;
    let usage = Usage {
        prompt_tokens: live.job.prompt.len(),
        completion_tokens: live.generated,
    };
    sink.send(
        i,
        Ok(TextDelta {
            text,
            tokens,
            finish: Some(Finished { reason, usage }),
        }),
    );
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
    let bs = config.block_size;
    let blocks: usize = jobs
        .iter()
        .map(|j| (j.prompt.len() + j.max_new).div_ceil(bs))
        .sum();
    let pool_config = KvPoolConfig {
        num_blocks: blocks.max(1),
        block_size: bs,
        prefix_caching: false,
    };
    let mut pool = KvBlockPool::new(pool_config).map_err(|e| TextError::Generation {
        reason: e.to_string(),
    })?;
    let mut cache = model.new_kv_cache(pool_config.num_blocks, bs)?;
    let mut live: Vec<Live> = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.into_iter().enumerate() {
        pool.add_sequence(SeqId(i as u64), &job.prompt)
            .map_err(|e| TextError::Generation {
                reason: e.to_string(),
            })?;
        live.push(Live {
            tokens: job.prompt.clone(),
            job,
            computed: 0,
            generated: 0,
            done: false,
        });
    }
    loop {
        // Cancellation takes effect before the next forward.
        for (i, l) in live.iter_mut().enumerate() {
            if !l.done && l.job.cancel.is_cancelled() {
                finish(
                    l,
                    FinishReason::Cancelled,
                    (String::new(), Vec::new()),
                    sink,
                    i,
                );
                release(&mut pool, i);
            }
        }
        let mut budget = config.prefill_chunk.max(1);
        let mut steps: Vec<(usize, usize)> = Vec::new(); // (sequence, tokens)
        for (i, l) in live.iter().enumerate() {
            if l.done {
                continue;
            }
            let pending = l.tokens.len() - l.computed;
            let take = if pending == 1 { 1 } else { pending.min(budget) };
            if take == 0 {
                continue;
            }
            budget = budget.saturating_sub(take);
            steps.push((i, take));
        }
        if steps.is_empty() {
            return Ok(());
        }
        let tables: Vec<Vec<u32>> = steps
            .iter()
            .map(|&(i, _)| pool.block_table(SeqId(i as u64)).map(<[u32]>::to_vec))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| TextError::Generation {
                reason: e.to_string(),
            })?;
        let batch: Vec<SeqStep<'_>> = steps
            .iter()
            .zip(&tables)
            .map(|(&(i, take), table)| {
                let l = &live[i];
                SeqStep {
                    tokens: &l.tokens[l.computed..l.computed + take],
                    start: l.computed,
                    blocks: table,
                    logits: l.computed + take == l.tokens.len(),
                }
            })
            .collect();
        let wants: Vec<bool> = batch.iter().map(|s| s.logits).collect();
        let logits = model.forward(&mut cache, &batch)?;
        drop(batch);
        let mut row = 0;
        for (&(i, take), wants) in steps.iter().zip(wants) {
            live[i].computed += take;
            let _ = pool.commit(SeqId(i as u64), live[i].computed);
            if !wants {
                continue;
            }
            let mut l_row: Vec<f32> = logits.get(row)?.to_vec1()?;
            row += 1;
            step_sequence(&mut live[i], i, &mut l_row, &mut pool, &mut cache, sink)?;
            if live[i].done {
                release(&mut pool, i);
            }
        }
        sink.after_step(&pool.stats());
    }
}

/// Give back the blocks of a sequence that ended, at once, so a long batch
/// does not hold memory for it.
fn release(pool: &mut KvBlockPool, i: usize) {
    let _ = pool.free(SeqId(i as u64));
}

/// Sample the next token of sequence `i` from its logits and stream it.
fn step_sequence(
    l: &mut Live,
    i: usize,
    logits: &mut [f32],
    pool: &mut KvBlockPool,
    cache: &mut PagedKvCache,
    sink: &mut dyn DeltaSink,
) -> Result<()> {
    let token = l.job.sampler.sample(logits)?;
    l.generated += 1;
    if l.job.stop_ids.contains(&token) {
        let held = l.job.stops.finish();
        finish(l, FinishReason::Stop, (held, vec![token]), sink, i);
        return Ok(());
    }
    let piece = l.job.decoder.step(token)?.unwrap_or_default();
    let (text, stopped) = l.job.stops.push(&piece);
    if stopped {
        finish(l, FinishReason::Stop, (text, vec![token]), sink, i);
        return Ok(());
    }
    if l.generated >= l.job.max_new {
        let mut text = text;
        text.push_str(&l.job.stops.finish());
        finish(l, FinishReason::Length, (text, vec![token]), sink, i);
        return Ok(());
    }
    sink.send(
        i,
        Ok(TextDelta {
            text,
            tokens: vec![token],
            finish: None,
        }),
    );
    let seq = SeqId(i as u64);
    if let Some(copy) = pool.append(seq, token).map_err(|e| TextError::Generation {
        reason: e.to_string(),
    })? {
        cache.copy_block(copy.from, copy.to)?;
    }
    l.tokens.push(token);
    Ok(())
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
