//! Counters and latency histograms, read as a plain snapshot.

use std::time::{Duration, Instant};

use crate::{ControllerState, QueueStats};

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// A log-linear histogram of `u64` values (HDR-style): exact below 32, then
/// 32 buckets per power of two, so any quantile is within about 3 %.
///
/// ```
/// use switchyard_batch::Histogram;
/// let mut h = Histogram::new();
/// for v in 1..=1000 {
///     h.record(v);
/// }
/// let p50 = h.quantile(0.5);
/// assert!((485..=515).contains(&p50), "{p50}");
/// assert_eq!(h.count(), 1000);
/// assert_eq!(h.max(), 1000);
/// ```
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u128,
    max: u64,
}

impl Histogram {
    /// Empty.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            max: 0,
        }
    }

    fn index(value: u64) -> usize {
        if value < SUB as u64 {
            return value as usize;
        }
        let exponent = 63 - value.leading_zeros();
        let shift = exponent - SUB_BITS;
        let mantissa = (value >> shift) as usize - SUB;
        SUB + shift as usize * SUB + mantissa
    }

    /// The midpoint of bucket `index`'s range.
    fn value_at(index: usize) -> u64 {
        if index < SUB {
            return index as u64;
        }
        let shift = ((index - SUB) / SUB) as u32;
        let mantissa = ((index - SUB) % SUB + SUB) as u64;
        let low = mantissa << shift;
        let width = 1u64 << shift;
        low.saturating_add(width / 2)
    }

    /// Count one value.
    pub fn record(&mut self, value: u64) {
        self.counts[Self::index(value)] += 1;
        self.count += 1;
        self.sum += u128::from(value);
        self.max = self.max.max(value);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest value recorded (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean (exact), 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value below which a fraction `q` of values fall (0 when empty).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value_at(index).min(self.max);
            }
        }
        self.max
    }

    /// Count, mean and the usual quantiles.
    pub fn summary(&self) -> Summary<u64> {
        Summary {
            count: self.count,
            mean: self.mean().round() as u64,
            p50: self.quantile(0.50),
            p95: self.quantile(0.95),
            p99: self.quantile(0.99),
            max: self.max,
        }
    }

    /// The same summary with values read as nanoseconds.
    pub fn duration_summary(&self) -> Summary<Duration> {
        let s = self.summary();
        Summary {
            count: s.count,
            mean: Duration::from_nanos(s.mean),
            p50: Duration::from_nanos(s.p50),
            p95: Duration::from_nanos(s.p95),
            p99: Duration::from_nanos(s.p99),
            max: Duration::from_nanos(s.max),
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .field("max", &self.max)
            .finish()
    }
}

/// Count, mean and quantiles of one measured quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary<T> {
    /// Values recorded.
    pub count: u64,
    /// Their mean.
    pub mean: T,
    /// Median.
    pub p50: T,
    /// 95th percentile.
    pub p95: T,
    /// 99th percentile.
    pub p99: T,
    /// Largest.
    pub max: T,
}

/// Everything the batcher counts, at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// Requests accepted into the queue.
    pub submitted: u64,
    /// Requests that ended with the handler's `Ok`.
    pub succeeded: u64,
    /// Requests that ended with the handler's `Err`.
    pub failed: u64,
    /// Requests refused at submission (queue full, shutting down, already expired).
    pub rejected: u64,
    /// Requests whose deadline passed while queued.
    pub timed_out: u64,
    /// Requests cancelled while queued.
    pub cancelled: u64,
    /// Requests that joined an identical queued one instead of running.
    pub coalesced: u64,
    /// Batches whose handler panicked.
    pub panics: u64,
    /// Batches that failed for lack of memory and ran again, smaller.
    pub memory_retries: u64,
    /// Batches whose handler returned the wrong number of results.
    pub miscounted: u64,
    /// Requests failed at shutdown.
    pub shut_down: u64,
    /// Batches run.
    pub batches: u64,
    /// Time from submission to the start of the batch.
    pub queue_wait: Summary<Duration>,
    /// Requests per batch.
    pub batch_size: Summary<u64>,
    /// Handler time per batch.
    pub batch_latency: Summary<Duration>,
    /// Time from submission to the batch's results being ready.
    pub end_to_end: Summary<Duration>,
    /// Results delivered per second since the batcher started.
    pub throughput_per_sec: f64,
    /// Time since the batcher started.
    pub uptime: Duration,
    /// Worker threads running.
    pub workers: usize,
    /// The queue now.
    pub queue: QueueStats,
    /// Each key's controller, in key order.
    pub controllers: Vec<(crate::BatchKey, ControllerState)>,
}

/// The mutable counters behind [`MetricsSnapshot`].
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) started: Instant,
    pub(crate) submitted: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) rejected: u64,
    pub(crate) timed_out: u64,
    pub(crate) cancelled: u64,
    pub(crate) coalesced: u64,
    pub(crate) panics: u64,
    pub(crate) memory_retries: u64,
    pub(crate) miscounted: u64,
    pub(crate) shut_down: u64,
    pub(crate) batches: u64,
    pub(crate) queue_wait: Histogram,
    pub(crate) batch_size: Histogram,
    pub(crate) batch_latency: Histogram,
    pub(crate) end_to_end: Histogram,
}

impl Metrics {
    pub(crate) fn new(started: Instant) -> Self {
        Self {
            started,
            submitted: 0,
            succeeded: 0,
            failed: 0,
            rejected: 0,
            timed_out: 0,
            cancelled: 0,
            coalesced: 0,
            panics: 0,
            memory_retries: 0,
            miscounted: 0,
            shut_down: 0,
            batches: 0,
            queue_wait: Histogram::new(),
            batch_size: Histogram::new(),
            batch_latency: Histogram::new(),
            end_to_end: Histogram::new(),
        }
    }

    pub(crate) fn snapshot(
        &self,
        now: Instant,
        workers: usize,
        queue: QueueStats,
        controllers: Vec<(crate::BatchKey, ControllerState)>,
    ) -> MetricsSnapshot {
        let uptime = now.saturating_duration_since(self.started);
        let delivered = self.succeeded + self.failed;
        let secs = uptime.as_secs_f64();
        MetricsSnapshot {
            submitted: self.submitted,
            succeeded: self.succeeded,
            failed: self.failed,
            rejected: self.rejected,
            timed_out: self.timed_out,
            cancelled: self.cancelled,
            coalesced: self.coalesced,
            panics: self.panics,
            memory_retries: self.memory_retries,
            miscounted: self.miscounted,
            shut_down: self.shut_down,
            batches: self.batches,
            queue_wait: self.queue_wait.duration_summary(),
            batch_size: self.batch_size.summary(),
            batch_latency: self.batch_latency.duration_summary(),
            end_to_end: self.end_to_end.duration_summary(),
            throughput_per_sec: if secs > 0.0 {
                delivered as f64 / secs
            } else {
                0.0
            },
            uptime,
            workers,
            queue,
            controllers,
        }
    }
}

/// Nanoseconds of a duration, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_and_quantiles_are_close() {
        for v in [
            0u64,
            1,
            31,
            32,
            33,
            1000,
            123_456_789,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let index = Histogram::index(v);
            assert!(index < BUCKETS, "{v}");
            let mid = Histogram::value_at(index) as f64;
            let err = (mid - v as f64).abs() / (v as f64).max(1.0);
            assert!(err <= 0.032, "{v}: {mid} ({err})");
        }
        let mut h = Histogram::new();
        for v in 0..10_000u64 {
            h.record(v * 1000);
        }
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 9_900_000.0).abs() / 9_900_000.0 < 0.035, "{p99}");
        assert_eq!(h.quantile(0.0), 0);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }
}
