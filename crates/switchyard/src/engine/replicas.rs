//! Replicas: a model's copies on its devices (data parallel), their load,
//! and choosing one for each request by the model's [`Balance`].

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use switchyard_core::DeviceId;

use crate::config::{Balance, ModelSpec};
use crate::engine::models::LoadedModel;

/// Weight of a new measurement in the smoothed seconds per unit.
const SPEED_SMOOTHING: f64 = 0.3;

/// A replica's name in its device's model cache: the model and its place
/// among the model's replicas on that device (shown `model`, `model#1`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ReplicaKey {
    pub(crate) model: String,
    pub(crate) slot: usize,
}

impl fmt::Display for ReplicaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.slot {
            0 => f.write_str(&self.model),
            n => write!(f, "{}#{n}", self.model),
        }
    }
}

impl fmt::Debug for ReplicaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One replica's counters, as [`ModelMetrics::replicas`](crate::ModelMetrics)
/// lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaMetrics {
    /// Its device.
    pub device: DeviceId,
    /// Its place among the model's replicas on that device (from 0).
    pub slot: usize,
    /// Whether it is loaded now.
    pub loaded: bool,
    /// Requests sent to it.
    pub dispatched: u64,
    /// Units (tokens, inputs, steps) sent to it that have not ended.
    pub outstanding_units: u64,
    /// Smoothed seconds per unit of its requests (from their start on it to
    /// their end); `None` before one ended.
    pub secs_per_unit: Option<f64>,
    /// The generation engine's counters, while a generation model is loaded.
    pub generation: Option<switchyard_text::GenerationStats>,
    /// The batcher's counters (batch sizes, latencies, workers, queue),
    /// while an embedding, image or diffusion model is loaded.
    pub batch: Option<switchyard_batch::MetricsSnapshot>,
}

/// One copy of a model on one device.
pub(crate) struct Replica {
    pub(crate) device: DeviceId,
    pub(crate) key: ReplicaKey,
    outstanding: AtomicU64,
    dispatched: AtomicU64,
    /// Smoothed seconds per unit as `f64` bits; 0 before a measurement.
    secs_per_unit: AtomicU64,
    /// The pipeline it last ran on, for metrics (read without a cache
    /// lookup, which would count a hit and refresh the LRU order).
    live: Mutex<Weak<LoadedModel>>,
}

impl Replica {
    fn new(device: DeviceId, key: ReplicaKey) -> Self {
        Self {
            device,
            key,
            outstanding: AtomicU64::new(0),
            dispatched: AtomicU64::new(0),
            secs_per_unit: AtomicU64::new(0),
            live: Mutex::new(Weak::new()),
        }
    }

    /// A request of `units` is sent to it.
    pub(crate) fn begin(&self, units: u64) {
        self.dispatched.fetch_add(1, Ordering::Relaxed);
        self.outstanding.fetch_add(units, Ordering::Relaxed);
    }

    /// A request of `units` sent to it ended; a success that did `done`
    /// units in `elapsed` updates the measured speed.
    pub(crate) fn end(&self, units: u64, measured: Option<(u64, Duration)>) {
        let _ = self
            .outstanding
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
                Some(o.saturating_sub(units))
            });
        if let Some((done, elapsed)) = measured.filter(|(d, _)| *d > 0) {
            let sample = elapsed.as_secs_f64() / done as f64;
            let _ = self
                .secs_per_unit
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                    let old = f64::from_bits(bits);
                    let new = if old > 0.0 {
                        old + SPEED_SMOOTHING * (sample - old)
                    } else {
                        sample
                    };
                    Some(new.max(f64::MIN_POSITIVE).to_bits())
                });
        }
    }

    /// Notes the pipeline it runs on.
    pub(crate) fn set_live(&self, model: &Arc<LoadedModel>) {
        *self.live.lock() = Arc::downgrade(model);
    }

    /// The pipeline it last ran on, if that is still alive.
    pub(crate) fn live(&self) -> Option<Arc<LoadedModel>> {
        self.live.lock().upgrade()
    }

    fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    fn speed(&self) -> Option<f64> {
        Some(f64::from_bits(self.secs_per_unit.load(Ordering::Relaxed))).filter(|s| *s > 0.0)
    }

    /// Its counters; `loaded` and `generation` are the caller's to fill.
    pub(crate) fn metrics(&self) -> ReplicaMetrics {
        ReplicaMetrics {
            device: self.device,
            slot: self.key.slot,
            loaded: false,
            dispatched: self.dispatched.load(Ordering::Relaxed),
            outstanding_units: self.outstanding(),
            secs_per_unit: self.speed(),
            generation: None,
            batch: None,
        }
    }
}

/// A model's replicas and how requests are spread over them.
pub(crate) struct ReplicaSet {
    replicas: Vec<Arc<Replica>>,
    balance: Balance,
    /// Round-robin position, and where ties start.
    next: AtomicUsize,
}

impl ReplicaSet {
    /// `spec.replicas` copies on each of `spec.devices`, device by device.
    pub(crate) fn new(spec: &ModelSpec) -> Self {
        let replicas = spec
            .devices
            .iter()
            .flat_map(|&device| {
                (0..spec.replicas.max(1)).map(move |slot| {
                    let key = ReplicaKey {
                        model: spec.id.clone(),
                        slot,
                    };
                    Arc::new(Replica::new(device, key))
                })
            })
            .collect();
        Self {
            replicas,
            balance: spec.balance,
            next: AtomicUsize::new(0),
        }
    }

    /// Every replica, device by device.
    pub(crate) fn all(&self) -> &[Arc<Replica>] {
        &self.replicas
    }

    /// The replica that runs a request of `units` (never fails: a set
    /// always has at least one replica).
    pub(crate) fn pick(&self, units: u64) -> &Arc<Replica> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        // In turn from `start`, so ties are shared out.
        let mut turn = (0..n).map(|i| &self.replicas[(start + i) % n]);
        let chosen = match self.balance {
            Balance::RoundRobin => turn.next(),
            Balance::LeastLoaded => turn.min_by_key(|r| r.outstanding()),
            Balance::Fastest => turn.min_by(|a, b| {
                expected(a, units)
                    .partial_cmp(&expected(b, units))
                    .unwrap_or(std::cmp::Ordering::Equal)
            }),
        };
        chosen.unwrap_or(&self.replicas[0])
    }
}

/// Seconds until a replica would finish a request of `units` after its
/// outstanding work; a replica not measured yet counts as instant (so each
/// gets measured), the least loaded of those first.
fn expected(replica: &Replica, units: u64) -> (u8, f64) {
    let work = (replica.outstanding() + units) as f64;
    match replica.speed() {
        None => (0, work),
        Some(secs_per_unit) => (1, secs_per_unit * work),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{ModelKind, ModelSource};

    fn set(devices: Vec<DeviceId>, replicas: usize, balance: Balance) -> ReplicaSet {
        let mut spec = ModelSpec::new("m", ModelKind::Embedding, ModelSource::Path("x".into()));
        spec.devices = devices;
        spec.replicas = replicas;
        spec.balance = balance;
        ReplicaSet::new(&spec)
    }

    fn names(set: &ReplicaSet) -> Vec<String> {
        set.all()
            .iter()
            .map(|r| format!("{}/{}", r.device, r.key))
            .collect()
    }

    #[test]
    fn replicas_per_device_in_order() {
        let s = set(
            vec![DeviceId::Cpu, DeviceId::Cuda(1)],
            2,
            Balance::default(),
        );
        assert_eq!(names(&s), ["cpu/m", "cpu/m#1", "cuda:1/m", "cuda:1/m#1"]);
    }

    #[test]
    fn round_robin_takes_each_in_turn_whatever_the_load() {
        let s = set(vec![DeviceId::Cpu], 3, Balance::RoundRobin);
        s.all()[0].begin(1000);
        let slots: Vec<usize> = (0..6).map(|_| s.pick(1).key.slot).collect();
        assert_eq!(slots, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_loaded_follows_outstanding_work() {
        let s = set(vec![DeviceId::Cpu], 2, Balance::LeastLoaded);
        let mut counts = [0; 2];
        for _ in 0..10 {
            let r = s.pick(5);
            r.begin(5);
            counts[r.key.slot] += 1;
        }
        assert_eq!(counts, [5, 5], "equal work is shared evenly");
        s.all()[0].end(25, None);
        assert_eq!(s.pick(5).key.slot, 0, "the replica that finished is free");
        s.all()[1].end(25, None);
        s.all()[1].begin(3);
        assert_eq!(s.pick(5).key.slot, 0);
        // Ending more than is outstanding never wraps.
        s.all()[1].end(100, None);
        assert_eq!(s.all()[1].metrics().outstanding_units, 0);
    }

    #[test]
    fn fastest_measures_every_replica_then_prefers_the_quick_one() {
        let s = set(vec![DeviceId::Cpu], 2, Balance::Fastest);
        // Neither is measured: the one with less outstanding work first.
        s.all()[0].begin(1);
        assert_eq!(s.pick(1).key.slot, 1);
        s.all()[0].end(1, Some((10, Duration::from_millis(100)))); // 10 ms a unit
        assert_eq!(s.pick(1).key.slot, 1, "the unmeasured one is tried");
        s.all()[1].end(0, Some((10, Duration::from_millis(400)))); // 40 ms a unit
        let m = s.all()[1].metrics();
        assert!((m.secs_per_unit.unwrap() - 0.04).abs() < 1e-9);
        for _ in 0..4 {
            assert_eq!(s.pick(1).key.slot, 0, "4x quicker");
        }
        // Work piled on the quick one sends the next request elsewhere:
        // 0.01 s x (4 + 1) > 0.04 s x (0 + 1).
        s.all()[0].begin(4);
        assert_eq!(s.pick(1).key.slot, 1);
        // Smoothing: a new sample moves the estimate part of the way.
        s.all()[1].end(0, Some((1, Duration::from_millis(10))));
        let spu = s.all()[1].metrics().secs_per_unit.unwrap();
        assert!((spu - (0.04 + SPEED_SMOOTHING * (0.01 - 0.04))).abs() < 1e-9);
    }
}
