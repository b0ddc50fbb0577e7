//! A PID controller that sizes batches to hold a latency target.

use std::time::Duration;

use crate::{BatchError, BatchObservation, BatchSizeController, ControllerState, MemoryClamp};

/// Which latency the PID holds at its setpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatencyMode {
    /// The handler's time for a whole batch (grows with batch size).
    #[default]
    Batch,
    /// The handler's time divided by the batch size (falls as fixed costs
    /// amortise over bigger batches, so a measurement above the setpoint
    /// raises the batch size in this mode).
    PerItem,
}

/// Settings of a [`Pid`] controller.
#[derive(Debug, Clone)]
pub struct PidConfig {
    /// The latency to hold.
    pub setpoint: Duration,
    /// Which latency.
    pub mode: LatencyMode,
    /// Proportional gain.
    pub kp: f64,
    /// Integral gain.
    pub ki: f64,
    /// Derivative gain (on the measurement, so a setpoint change gives no kick).
    pub kd: f64,
    /// Weight of the newest sample in the measurement's moving average, in (0, 1].
    pub ewma_alpha: f64,
    /// Smallest target.
    pub min: usize,
    /// Largest target.
    pub max: usize,
    /// Target at start.
    pub initial: usize,
    /// Most the target may move after one batch (output rate limit).
    pub max_step: usize,
    /// Optional memory clamp, re-read after every batch.
    pub memory: Option<MemoryClamp>,
}

impl PidConfig {
    /// Defaults for holding `setpoint` with batches of 1..=`max`.
    ///
    /// The gains are relative to the current batch size (see [`Pid`]), which
    /// keeps one set of defaults stable from batches of 2 to batches of 256.
    pub fn new(setpoint: Duration, max: usize) -> Self {
        let max = max.max(1);
        Self {
            setpoint,
            mode: LatencyMode::Batch,
            kp: 0.4,
            ki: 0.25,
            kd: 0.1,
            ewma_alpha: 0.5,
            min: 1,
            max,
            initial: (max / 4).max(1),
            max_step: (max / 8).max(1),
            memory: None,
        }
    }

    /// Check the values: positive setpoint, gains finite and not negative,
    /// `0 < ewma_alpha <= 1`, `1 <= min <= max`.
    pub fn validate(&self) -> Result<(), BatchError> {
        let bad = |field: &'static str, reason: &str| {
            Err(BatchError::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.setpoint.is_zero() {
            return bad("setpoint", "must be positive");
        }
        for (field, gain) in [("kp", self.kp), ("ki", self.ki), ("kd", self.kd)] {
            if !gain.is_finite() || gain < 0.0 {
                return bad(field, "must be finite and not negative");
            }
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return bad("ewma_alpha", "must be in (0, 1]");
        }
        if self.min == 0 || self.min > self.max {
            return bad("min", "must satisfy 1 <= min <= max");
        }
        if self.max_step == 0 {
            return bad("max_step", "must be at least 1");
        }
        Ok(())
    }
}

/// Sizes batches to hold a latency setpoint.
///
/// After each batch: the latency sample (whole batch, or per item) updates an
/// exponential moving average `m`; the relative error is `e = (setpoint - m) /
/// setpoint` (negated in [`LatencyMode::PerItem`]). The terms are scaled by
/// the current integral `s` (about the batch size), because latency grows
/// roughly in proportion to batch size:
///
/// - `P = kp * e * s`
/// - `I += ki * e * s`, but only up to the point where the output reaches its
///   limit (`max` or the memory cap going up, `min` going down), and not at
///   all when the last batch did not fill its target (demand, not latency,
///   limited it): clamping anti-windup. `I` itself stays within `[min, cap]`.
/// - `D = -kd * (m - m_prev) / setpoint * s`: on the measurement, so changing
///   the setpoint gives no derivative kick.
///
/// The output `P + I + D` is rounded, limited to move at most `max_step` per
/// batch, and clamped to `[min, min(max, memory cap)]`; a falling memory cap
/// applies at once, past the rate limit.
///
/// ```
/// use std::time::Duration;
/// use switchyard_batch::{BatchObservation, BatchSizeController, Pid, PidConfig};
///
/// let mut pid = Pid::new(PidConfig::new(Duration::from_millis(100), 64)).unwrap();
/// // A plant where a batch of n takes 10 + 2n ms: the setpoint needs n = 45.
/// for _ in 0..60 {
///     let n = pid.target();
///     let latency = Duration::from_millis(10 + 2 * n as u64);
///     pid.observe(&BatchObservation { size: n, cost: n as u64, latency, target: n, queued_after: 100 });
/// }
/// assert!((43..=47).contains(&pid.target()), "{}", pid.target());
/// ```
#[derive(Debug, Clone)]
pub struct Pid {
    config: PidConfig,
    measurement: Option<f64>,
    integral: f64,
    p: f64,
    d: f64,
    output: f64,
    target: usize,
    memory_cap: Option<usize>,
    observations: u64,
}

impl Pid {
    /// A controller with `config`, or the reason it is invalid.
    pub fn new(config: PidConfig) -> Result<Self, BatchError> {
        config.validate()?;
        let memory_cap = config.memory.as_ref().map(MemoryClamp::cap);
        let cap = memory_cap
            .map_or(config.max, |c| c.min(config.max))
            .max(config.min);
        let target = config.initial.clamp(config.min, cap);
        Ok(Self {
            integral: target as f64,
            output: target as f64,
            target,
            measurement: None,
            p: 0.0,
            d: 0.0,
            memory_cap,
            observations: 0,
            config,
        })
    }

    /// Change the setpoint (no derivative kick: D acts on the measurement).
    pub fn set_setpoint(&mut self, setpoint: Duration) {
        if !setpoint.is_zero() {
            self.config.setpoint = setpoint;
        }
    }

    /// The settings.
    pub fn config(&self) -> &PidConfig {
        &self.config
    }

    fn cap(&self) -> usize {
        self.memory_cap
            .map_or(self.config.max, |c| c.min(self.config.max))
            .max(self.config.min)
    }
}

impl BatchSizeController for Pid {
    fn target(&self) -> usize {
        self.target
    }

    fn observe(&mut self, obs: &BatchObservation) -> usize {
        self.observations += 1;
        self.memory_cap = self.config.memory.as_ref().map(MemoryClamp::cap);
        let cap = self.cap();
        let min = self.config.min;
        let size = obs.size.max(1);
        let sample = match self.config.mode {
            LatencyMode::Batch => obs.latency.as_secs_f64(),
            LatencyMode::PerItem => obs.latency.as_secs_f64() / size as f64,
        };
        let previous = self.measurement.unwrap_or(sample);
        let alpha = self.config.ewma_alpha;
        let m = alpha * sample + (1.0 - alpha) * previous;
        self.measurement = Some(m);

        let sp = self.config.setpoint.as_secs_f64();
        let sign = match self.config.mode {
            LatencyMode::Batch => 1.0,
            LatencyMode::PerItem => -1.0,
        };
        let error = sign * (sp - m) / sp;
        let scale = self.integral.max(1.0);
        self.p = self.config.kp * error * scale;
        self.d = -sign * self.config.kd * (m - previous) / sp * scale;

        // Clamping anti-windup: integrate only up to the point where the
        // output reaches its limit, and not at all while demand (not latency)
        // keeps batches below target.
        let candidate = self.integral + self.config.ki * error * scale;
        let demand_limited = error > 0.0 && obs.size < obs.target;
        if !demand_limited {
            let room_up = cap as f64 - self.p - self.d;
            let room_down = min as f64 - self.p - self.d;
            self.integral = if error > 0.0 {
                candidate.min(self.integral.max(room_up))
            } else {
                candidate.max(self.integral.min(room_down))
            };
        }
        self.integral = self.integral.clamp(min as f64, cap as f64);
        self.output = self.p + self.integral + self.d;

        let wanted = if self.output.is_finite() {
            self.output.round().clamp(min as f64, cap as f64) as usize
        } else {
            self.target
        };
        let step = self.config.max_step;
        let limited = wanted.clamp(
            self.target.saturating_sub(step),
            self.target.saturating_add(step),
        );
        self.target = limited.clamp(min, cap);
        self.target
    }

    fn state(&self) -> ControllerState {
        ControllerState {
            target: self.target,
            setpoint_secs: Some(self.config.setpoint.as_secs_f64()),
            measurement_secs: self.measurement,
            p: self.p,
            i: self.integral,
            d: self.d,
            output: self.output,
            memory_cap: self.memory_cap,
            observations: self.observations,
        }
    }
}

#[cfg(test)]
#[path = "pid_tests.rs"]
mod tests;
