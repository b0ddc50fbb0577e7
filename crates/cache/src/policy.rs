//! Which entry goes first when something must.

use std::time::Duration;

/// How victims are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvictionPolicy {
    /// Least recently used first.
    #[default]
    Lru,
    /// GreedyDual-Size-Frequency: lowest `L + frequency x cost / size`
    /// first, where `L` rises to each victim's priority (so old entries age
    /// out). Keeps what is expensive to reload and often used.
    Gdsf,
}

/// Why an entry left the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvictReason {
    /// Over the entry-count or byte limit.
    Capacity,
    /// Device memory at High pressure, or a load needed the room.
    Pressure,
    /// Idle longer than its keep-alive.
    Idle,
    /// Not among the keys a plan asked for.
    Plan,
    /// `clear` or `evict` was called.
    Manual,
}

/// What the policy sees of an entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) last_used: u64,
    pub(crate) priority: f64,
    pub(crate) in_use: bool,
}

/// GDSF priority of an entry.
pub(crate) fn gdsf_priority(inflation: f64, frequency: u64, cost: f64, bytes: u64) -> f64 {
    inflation + frequency as f64 * cost.max(1e-9) / (bytes.max(1) as f64)
}

/// Cost from a measured load time.
pub(crate) fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The better victim of two: idle ones before ones in use, then by policy.
pub(crate) fn worse(policy: EvictionPolicy, a: &Candidate, b: &Candidate) -> bool {
    if a.in_use != b.in_use {
        return !a.in_use;
    }
    match policy {
        EvictionPolicy::Lru => a.last_used < b.last_used,
        EvictionPolicy::Gdsf => a.priority < b.priority,
    }
}
