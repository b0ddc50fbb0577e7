//! [`LatencyControl`], the setting that holds a p95 inter-token latency,
//! and [`LatencyWindow`]: the most recent inter-token gaps, for percentiles.

use std::collections::VecDeque;
use std::time::Duration;

use switchyard_batch::PidConfig;

/// Holding the p95 inter-token latency at a target.
#[derive(Debug, Clone)]
pub struct LatencyControl {
    /// The controller; its `setpoint` is the p95 inter-token latency to
    /// hold and its `min`/`max` bound the running sequences (`max` is
    /// further capped by
    /// [`GenerationEngineConfig::max_running`](crate::GenerationEngineConfig::max_running)).
    pub pid: PidConfig,
    /// Forward steps per control decision; the p95 is taken over them.
    pub window_steps: usize,
}

impl LatencyControl {
    /// Hold a p95 inter-token latency of `p95` with at most `max_running`
    /// sequences, deciding every 16 steps.
    pub fn new(p95: Duration, max_running: usize) -> Self {
        let mut pid = PidConfig::new(p95, max_running);
        pid.initial = max_running.max(1);
        Self {
            pid,
            window_steps: 16,
        }
    }
}

/// The last `capacity` latency samples, oldest first, with a mark that
/// counts samples since the last control decision.
#[derive(Debug, Clone)]
pub(crate) struct LatencyWindow {
    samples: VecDeque<Duration>,
    capacity: usize,
    since_mark: usize,
}

impl LatencyWindow {
    /// An empty window keeping at most `capacity` samples (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            samples: VecDeque::with_capacity(capacity),
            capacity,
            since_mark: 0,
        }
    }

    /// Add a sample, forgetting the oldest when full.
    pub(crate) fn record(&mut self, sample: Duration) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.since_mark += 1;
    }

    /// Samples recorded since [`LatencyWindow::mark`].
    pub(crate) fn since_mark(&self) -> usize {
        self.since_mark
    }

    /// Start counting again.
    pub(crate) fn mark(&mut self) {
        self.since_mark = 0;
    }

    /// The `q` quantile (nearest rank) of every kept sample; zero when
    /// empty.
    #[cfg(test)]
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        self.recent_quantile(self.samples.len(), q)
    }

    /// The `q` quantile (nearest rank) of the newest `n` samples.
    pub(crate) fn recent_quantile(&self, n: usize, q: f64) -> Duration {
        let [d] = self.recent_quantiles(n, [q]);
        d
    }

    /// Several quantiles of every kept sample, from one sort.
    pub(crate) fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Duration; N] {
        self.recent_quantiles(self.samples.len(), qs)
    }

    fn recent_quantiles<const N: usize>(&self, n: usize, qs: [f64; N]) -> [Duration; N] {
        let n = n.min(self.samples.len());
        if n == 0 {
            return [Duration::ZERO; N];
        }
        let mut recent: Vec<Duration> = self.samples.iter().rev().take(n).copied().collect();
        recent.sort_unstable();
        qs.map(|q| {
            let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
            recent[rank.clamp(1, n) - 1]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut w = LatencyWindow::new(100);
        assert_eq!(w.quantile(0.95), Duration::ZERO);
        for i in 1..=20 {
            w.record(ms(i));
        }
        assert_eq!(w.quantile(0.5), ms(10));
        assert_eq!(w.quantile(0.95), ms(19));
        assert_eq!(w.quantile(1.0), ms(20));
        assert_eq!(w.quantile(0.0), ms(1));
        // The newest four are 17..=20.
        assert_eq!(w.recent_quantile(4, 0.5), ms(18));
    }

    #[test]
    fn keeps_the_newest_and_counts_since_mark() {
        let mut w = LatencyWindow::new(3);
        for i in 1..=5 {
            w.record(ms(i));
        }
        assert_eq!(w.quantile(0.0), ms(3));
        assert_eq!(w.since_mark(), 5);
        w.mark();
        w.record(ms(9));
        assert_eq!(w.since_mark(), 1);
        assert_eq!(w.quantile(1.0), ms(9));
    }
}
