//! One request inside the scheduler: its state, and how a sampled token
//! reaches its stream.

use switchyard_batch::YieldGuard;
use switchyard_pool::SeqId;

use super::run::{DeltaSink, Prepared};
use super::scheduler::Admission;
use super::{Finished, TextDelta};
use crate::{FinishReason, Result, Usage};

/// A request's state from submission to its last delta.
pub(super) struct Seq {
    /// Its index for the sink.
    pub(super) id: usize,
    pub(super) job: Prepared,
    /// Prompt and generated tokens.
    pub(super) tokens: Vec<u32>,
    /// Tokens whose keys and values are in the cache.
    pub(super) computed: usize,
    pub(super) generated: usize,
    pub(super) admission: Admission,
    /// Admission number (for choosing whom to preempt); 0 before admission.
    pub(super) admitted: u64,
    /// Its last delta went out.
    pub(super) done: bool,
    /// Counts it on the device's gate until it ends.
    pub(super) _yield: Option<YieldGuard>,
}

impl Seq {
    pub(super) fn pool_id(&self) -> SeqId {
        SeqId(self.id as u64)
    }
}

/// The last delta of `s`: `text`, `tokens` and why it ended.
pub(super) fn send_last(
    s: &Seq,
    reason: FinishReason,
    (text, tokens): (String, Vec<u32>),
    sink: &mut dyn DeltaSink,
) {
    let usage = Usage {
        prompt_tokens: s.job.prompt.len(),
        completion_tokens: s.generated,
    };
    sink.send(
        s.id,
        Ok(TextDelta {
            text,
            tokens,
            finish: Some(Finished { reason, usage }),
        }),
    );
}

/// Sample the next token of `s` from its logits and stream it. Returns the
/// token when the sequence goes on; a finished one is marked `done` for
/// the scheduler's `retire`.
pub(super) fn sample(s: &mut Seq, logits: &[f32], sink: &mut dyn DeltaSink) -> Result<Option<u32>> {
    let token = s.job.sampler.sample_from(logits)?;
    s.generated += 1;
    let mut done = |s: &mut Seq, reason, text: String| {
        send_last(s, reason, (text, vec![token]), sink);
        s.done = true;
        Ok(None)
    };
    if s.job.stop_ids.contains(&token) {
        let held = s.job.stops.finish();
        return done(s, FinishReason::Stop, held);
    }
    let piece = s.job.decoder.step(token)?.unwrap_or_default();
    let (mut text, stopped) = s.job.stops.push(&piece);
    if stopped {
        return done(s, FinishReason::Stop, text);
    }
    if s.generated >= s.job.max_new {
        text.push_str(&s.job.stops.finish());
        return done(s, FinishReason::Length, text);
    }
    sink.send(
        s.id,
        Ok(TextDelta {
            text,
            tokens: vec![token],
            finish: None,
        }),
    );
    s.tokens.push(token);
    Ok(Some(token))
}
