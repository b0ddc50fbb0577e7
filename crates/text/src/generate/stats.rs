//! The counters a [`GenerationEngine`](super::GenerationEngine) reports.

use switchyard_batch::ControllerState;
use switchyard_pool::KvStats;

/// A snapshot of a [`GenerationEngine`](super::GenerationEngine)'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationStats {
    /// Sequences running now.
    pub running: usize,
    /// Requests waiting to start (or to resume after a preemption).
    pub waiting: usize,
    /// The cap on running sequences now (moved by the controller).
    pub max_running: usize,
    /// Forward steps run.
    pub steps: u64,
    /// Tokens sampled.
    pub generated_tokens: u64,
    /// Prompt tokens computed (recomputation after preemption included).
    pub prefill_tokens: u64,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_prompt_tokens: u64,
    /// Sequences preempted to free blocks.
    pub preemptions: u64,
    /// Steps of held work abandoned part-way because urgent work arrived
    /// (their sequences run the step again later, unchanged).
    pub interrupted_steps: u64,
    /// Requests that ended, for any reason.
    pub finished: u64,
    /// Median inter-token latency over the recent steps, in seconds.
    pub itl_p50_secs: f64,
    /// 95th percentile of the same.
    pub itl_p95_secs: f64,
    /// The KV block pool's counters (prefix hit rate among them).
    pub kv: KvStats,
    /// The latency controller's state, when there is one.
    pub controller: Option<ControllerState>,
}

impl GenerationStats {
    /// Share of prompt tokens served from the prefix cache.
    pub fn prefix_hit_rate(&self) -> f64 {
        let all = self.prefill_tokens + self.cached_prompt_tokens;
        if all == 0 {
            0.0
        } else {
            self.cached_prompt_tokens as f64 / all as f64
        }
    }
}

/// Counters of a [`Scheduler`](super::scheduler::Scheduler).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SchedulerStats {
    /// Forward steps run.
    pub(crate) steps: u64,
    /// Steps that sampled a token for at least one sequence already
    /// streaming (their duration is an inter-token gap).
    pub(crate) decode_steps: u64,
    /// Tokens sampled (streamed or final).
    pub(crate) generated_tokens: u64,
    /// Sequences preempted (their blocks freed, to be recomputed).
    pub(crate) preemptions: u64,
    /// Background steps abandoned because the gate began to hold them.
    pub(crate) interrupted_steps: u64,
    /// Prompt tokens computed (recomputation included).
    pub(crate) prefill_tokens: u64,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub(crate) cached_tokens: u64,
    /// Requests that ended (any reason, errors included).
    pub(crate) finished: u64,
}
