//! Batch-size controllers: how many requests the next batch may take.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How many more bytes may be used now. `switchyard-vram` implements it from
/// real device memory; tests use a number.
pub trait MemoryHeadroom: Send + Sync {
    /// Bytes that may still be allocated without pressure.
    fn headroom_bytes(&self) -> u64;
}

impl MemoryHeadroom for u64 {
    fn headroom_bytes(&self) -> u64 {
        *self
    }
}

impl<F: Fn() -> u64 + Send + Sync> MemoryHeadroom for F {
    fn headroom_bytes(&self) -> u64 {
        self()
    }
}

/// Caps batches so that `per_item_bytes x size` stays within the headroom.
#[derive(Clone)]
pub struct MemoryClamp {
    /// Where the headroom comes from.
    pub source: Arc<dyn MemoryHeadroom>,
    /// Bytes one more item in a batch needs (activations, KV, latents).
    pub per_item_bytes: u64,
}

impl MemoryClamp {
    /// A clamp over `source` for items of `per_item_bytes`.
    pub fn new(source: Arc<dyn MemoryHeadroom>, per_item_bytes: u64) -> Self {
        Self {
            source,
            per_item_bytes,
        }
    }

    /// The largest batch the headroom allows now (at least 1: a single item
    /// always runs; refusing it is the admission check's job).
    pub fn cap(&self) -> usize {
        let items = self.source.headroom_bytes() / self.per_item_bytes.max(1);
        usize::try_from(items).unwrap_or(usize::MAX).max(1)
    }
}

impl fmt::Debug for MemoryClamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryClamp")
            .field("per_item_bytes", &self.per_item_bytes)
            .field("cap", &self.cap())
            .finish()
    }
}

/// What one finished batch looked like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchObservation {
    /// Requests in the batch.
    pub size: usize,
    /// Their total cost.
    pub cost: u64,
    /// How long the handler took.
    pub latency: Duration,
    /// The target the batch was formed under.
    pub target: usize,
    /// Requests still queued under the batch's key when it was formed.
    pub queued_after: usize,
}

/// A controller's inner state, for stats and dashboards.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ControllerState {
    /// The batch size the next batch may take.
    pub target: usize,
    /// The setpoint, in seconds, when the controller has one.
    pub setpoint_secs: Option<f64>,
    /// The smoothed measurement, in seconds, when it has one.
    pub measurement_secs: Option<f64>,
    /// Proportional term (batch-size units).
    pub p: f64,
    /// Integral term (batch-size units).
    pub i: f64,
    /// Derivative term (batch-size units).
    pub d: f64,
    /// Unclamped controller output.
    pub output: f64,
    /// The memory cap in force, if any.
    pub memory_cap: Option<usize>,
    /// Batches observed.
    pub observations: u64,
}

/// Decides the size of the next batch from how the last ones went.
pub trait BatchSizeController: Send + fmt::Debug {
    /// The current target batch size (at least 1). Cheap: called on every submit.
    fn target(&self) -> usize;

    /// Learn from a finished batch; returns the new target.
    fn observe(&mut self, observation: &BatchObservation) -> usize;

    /// The controller's state, for stats.
    fn state(&self) -> ControllerState {
        ControllerState {
            target: self.target(),
            ..ControllerState::default()
        }
    }
}

/// Always the same batch size, optionally under a memory clamp.
///
/// ```
/// use switchyard_batch::{BatchSizeController, Fixed};
/// assert_eq!(Fixed::new(8).target(), 8);
/// assert_eq!(Fixed::new(0).target(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct Fixed {
    size: usize,
    memory: Option<MemoryClamp>,
    cap: Option<usize>,
}

impl Fixed {
    /// Batches of `size` (at least 1).
    pub fn new(size: usize) -> Self {
        Self {
            size: size.max(1),
            memory: None,
            cap: None,
        }
    }

    /// Also cap by memory headroom, re-read after every batch.
    pub fn with_memory(mut self, clamp: MemoryClamp) -> Self {
        self.cap = Some(clamp.cap());
        self.memory = Some(clamp);
        self
    }
}

impl BatchSizeController for Fixed {
    fn target(&self) -> usize {
        self.cap.map_or(self.size, |c| c.min(self.size))
    }

    fn observe(&mut self, _observation: &BatchObservation) -> usize {
        self.cap = self.memory.as_ref().map(MemoryClamp::cap);
        self.target()
    }

    fn state(&self) -> ControllerState {
        ControllerState {
            target: self.target(),
            output: self.size as f64,
            memory_cap: self.cap,
            ..ControllerState::default()
        }
    }
}

impl<C: BatchSizeController + ?Sized> BatchSizeController for Box<C> {
    fn target(&self) -> usize {
        (**self).target()
    }
    fn observe(&mut self, observation: &BatchObservation) -> usize {
        (**self).observe(observation)
    }
    fn state(&self) -> ControllerState {
        (**self).state()
    }
}
