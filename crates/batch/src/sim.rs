//! A deterministic simulator: the real [`PriorityQueue`] and a real
//! [`BatchSizeController`] on virtual time, with a service-time model
//! `t(n) = a + b * n` and Poisson arrivals whose rate may step.
//!
//! Nothing sleeps: a run of minutes of virtual traffic takes milliseconds,
//! and the same seed gives the same trace, so controllers can be compared on
//! exactly the same arrivals.
//!
//! ```
//! use std::time::Duration;
//! use switchyard_batch::Fixed;
//! use switchyard_batch::sim::{Arrivals, ServiceModel, SimConfig, simulate};
//!
//! let config = SimConfig {
//!     service: ServiceModel::new(Duration::from_millis(10), Duration::from_millis(1)),
//!     arrivals: Arrivals::Poisson { rate: 200.0 },
//!     duration: Duration::from_secs(20),
//!     ..SimConfig::default()
//! };
//! let report = simulate(&config, &mut Fixed::new(8));
//! // 200 requests/s arrive; batches of 8 take 18 ms, so all are served.
//! assert!((report.throughput_per_sec - 200.0).abs() < 15.0, "{report:?}");
//! assert_eq!(report.batch_latency.max, Duration::from_millis(18));
//! ```

use std::time::{Duration, Instant};

use switchyard_core::{Priority, RequestId, SplitMix64};

use crate::metrics::nanos;
use crate::{
    BatchKey, BatchObservation, BatchSizeController, Histogram, PriorityQueue, QueueConfig, Queued,
    Summary,
};

/// How long a batch of `n` takes: `fixed + per_item * n`, optionally
/// jittered by a uniform factor in `[1 - jitter, 1 + jitter]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceModel {
    /// `a`: the cost of any batch (weights streamed, kernel launches).
    pub fixed: Duration,
    /// `b`: the cost of each item.
    pub per_item: Duration,
    /// Relative jitter, 0 for none.
    pub jitter: f64,
}

impl ServiceModel {
    /// `t(n) = fixed + per_item * n`, no jitter.
    pub fn new(fixed: Duration, per_item: Duration) -> Self {
        Self {
            fixed,
            per_item,
            jitter: 0.0,
        }
    }

    /// The time for a batch of `n` with no jitter.
    pub fn time(&self, n: usize) -> Duration {
        self.fixed + self.per_item * u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Largest batch that finishes within `latency` (at least 1).
    pub fn largest_within(&self, latency: Duration) -> usize {
        let spare = latency.saturating_sub(self.fixed).as_nanos();
        let per = self.per_item.as_nanos().max(1);
        usize::try_from(spare / per).unwrap_or(usize::MAX).max(1)
    }
}

/// When requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// Poisson arrivals at `rate` per second.
    Poisson {
        /// Requests per second.
        rate: f64,
    },
    /// Poisson at `before` per second, then at `after` from `at` on.
    Step {
        /// Rate before the step.
        before: f64,
        /// Rate after it.
        after: f64,
        /// When it steps.
        at: Duration,
    },
}

impl Arrivals {
    fn rate_at(&self, t: Duration) -> f64 {
        match *self {
            Arrivals::Poisson { rate } => rate,
            Arrivals::Step { before, after, at } => {
                if t < at {
                    before
                } else {
                    after
                }
            }
        }
    }

    /// The arrival times over `duration`, from `seed`.
    pub fn trace(&self, duration: Duration, seed: u64) -> Vec<Duration> {
        let mut rng = SplitMix64::new(seed);
        let mut t = 0.0f64;
        let end = duration.as_secs_f64();
        let mut out = Vec::new();
        loop {
            let rate = self.rate_at(Duration::from_secs_f64(t));
            if rate <= 0.0 {
                break;
            }
            t += -(1.0 - rng.next_f64()).ln() / rate;
            if t >= end {
                break;
            }
            out.push(Duration::from_secs_f64(t));
        }
        out
    }
}

/// One simulation's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// How long batches take.
    pub service: ServiceModel,
    /// When requests arrive.
    pub arrivals: Arrivals,
    /// Virtual time simulated.
    pub duration: Duration,
    /// How long the oldest request may wait for its batch to fill.
    pub max_wait: Duration,
    /// Seed of the arrival trace and the jitter.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            service: ServiceModel::new(Duration::from_millis(20), Duration::from_millis(2)),
            arrivals: Arrivals::Poisson { rate: 100.0 },
            duration: Duration::from_secs(60),
            max_wait: Duration::from_millis(5),
            seed: 7,
        }
    }
}

/// What a simulation measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Requests that arrived.
    pub arrived: usize,
    /// Requests completed within the simulated time.
    pub completed: usize,
    /// Completed per second of simulated time.
    pub throughput_per_sec: f64,
    /// Handler time per batch.
    pub batch_latency: Summary<Duration>,
    /// Per phase (before and after a step; one entry without a step): p99 batch latency.
    pub batch_latency_p99_by_phase: Vec<Duration>,
    /// Arrival to completion.
    pub end_to_end: Summary<Duration>,
    /// Requests per batch.
    pub batch_size: Summary<u64>,
    /// The controller's target after each batch: (virtual time, target).
    pub targets: Vec<(Duration, usize)>,
}

/// Run `config` with `controller` deciding batch sizes; one server runs one
/// batch at a time.
pub fn simulate(config: &SimConfig, controller: &mut dyn BatchSizeController) -> SimReport {
    let arrivals = config.arrivals.trace(config.duration, config.seed);
    let origin = Instant::now();
    let at = |d: Duration| origin + d;
    let key = BatchKey::default();
    let mut queue: PriorityQueue<Duration> = PriorityQueue::new(QueueConfig {
        capacity: usize::MAX,
        per_key_capacity: usize::MAX,
        aging: None,
    });
    let step_at = match config.arrivals {
        Arrivals::Step { at, .. } => Some(at),
        Arrivals::Poisson { .. } => None,
    };
    let mut phases = vec![Histogram::new(); if step_at.is_some() { 2 } else { 1 }];
    let mut jitter = SplitMix64::new(config.seed ^ 0x9e37_79b9_7f4a_7c15);
    let (mut batch_latency, mut end_to_end, mut batch_size) =
        (Histogram::new(), Histogram::new(), Histogram::new());
    let mut targets = Vec::new();
    let mut next = 0usize;
    let mut now = Duration::ZERO;
    let mut completed = 0usize;
    let mut busy_until: Option<(Duration, Duration, BatchObservation, Vec<Duration>)> = None;

    while now < config.duration {
        while next < arrivals.len() && arrivals[next] <= now {
            let entry = Queued::new(
                RequestId::from_u64(next as u64),
                Priority::Normal,
                1,
                at(arrivals[next]),
                arrivals[next],
            );
            // Unbounded queue: a push cannot fail.
            let _ = queue.push(&key, entry);
            next += 1;
        }
        let next_arrival = arrivals.get(next).copied().unwrap_or(config.duration);
        if let Some((done, started, obs, members)) = busy_until.take() {
            if done > now {
                busy_until = Some((done, started, obs, members));
                now = done.min(next_arrival);
                continue;
            }
            for arrived in &members {
                end_to_end.record(nanos(done - *arrived));
            }
            completed += members.len();
            let phase = usize::from(step_at.is_some_and(|s| started >= s));
            phases[phase].record(nanos(obs.latency));
            controller.observe(&obs);
            targets.push((done, controller.target()));
        }
        let Some(summary) = queue.summary(&key, at(now)) else {
            now = next_arrival.max(now);
            if next >= arrivals.len() {
                break;
            }
            continue;
        };
        let target = controller.target().max(1);
        let fill_by = summary.oldest.saturating_duration_since(origin) + config.max_wait;
        if summary.len < target && now < fill_by {
            now = next_arrival.min(fill_by);
            continue;
        }
        let taken = queue.take_batch(&key, target, u64::MAX, at(now));
        let n = taken.batch.len();
        let mut service = config.service.time(n).as_secs_f64();
        if config.service.jitter > 0.0 {
            service *= 1.0 + config.service.jitter * (2.0 * jitter.next_f64() - 1.0);
        }
        let service = Duration::from_secs_f64(service);
        batch_latency.record(nanos(service));
        batch_size.record(n as u64);
        let obs = BatchObservation {
            size: n,
            cost: n as u64,
            latency: service,
            target,
            queued_after: queue.len(),
        };
        let members = taken.batch.into_iter().map(|e| e.payload).collect();
        busy_until = Some((now + service, now, obs, members));
    }
    let secs = config.duration.as_secs_f64();
    SimReport {
        arrived: arrivals.len(),
        completed,
        throughput_per_sec: completed as f64 / secs,
        batch_latency: batch_latency.duration_summary(),
        batch_latency_p99_by_phase: phases
            .iter()
            .map(|h| Duration::from_nanos(h.quantile(0.99)))
            .collect(),
        end_to_end: end_to_end.duration_summary(),
        batch_size: batch_size.summary(),
        targets,
    }
}

#[cfg(test)]
#[path = "sim_tests.rs"]
mod tests;
