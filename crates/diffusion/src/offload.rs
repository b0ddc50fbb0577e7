//! Releasing each component's weights between its uses (diffusers'
//! `enable_model_cpu_offload`, ComfyUI's low-VRAM mode), always or only
//! while a memory monitor reports pressure.
//!
//! A released component is rebuilt from its memory-mapped safetensors (with
//! the active LoRA deltas merged again) the next time a run needs it, so
//! its weights cost nothing while other stages run: the text encoders are
//! gone during denoising, the UNet and the ControlNets during decoding and
//! between requests, the VAE while the UNet denoises.
//! The files stay mapped by the operating system's page cache, which is
//! the "CPU copy" a rebuild reads; a rebuilt component gives the same bits.

use std::sync::Arc;

use parking_lot::Mutex;
use switchyard_core::DeviceId;
use switchyard_vram::{MemoryMonitor, PressureLevel, Thresholds};

use crate::error::Result;

/// When a pipeline releases a component's weights after using it.
#[derive(Clone, Default)]
pub enum Offload {
    /// Keep every component loaded (the default: fastest).
    #[default]
    Never,
    /// Release the text encoders after encoding, the UNet and ControlNets
    /// after denoising and the VAE after encoding or decoding, every run
    /// (least memory, a rebuild per stage).
    Always,
    /// Release them only while `monitor` reports at least `level` on
    /// `device` (read after each stage); keep them otherwise.
    UnderPressure(PressureTrigger),
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Never => f.write_str("Never"),
            Self::Always => f.write_str("Always"),
            Self::UnderPressure(t) => f.debug_tuple("UnderPressure").field(t).finish(),
        }
    }
}

/// The reading that makes [`Offload::UnderPressure`] release weights.
#[derive(Clone)]
pub struct PressureTrigger {
    /// Reads the device's memory.
    pub monitor: Arc<dyn MemoryMonitor>,
    /// The device whose pressure counts (the one the components run on).
    pub device: DeviceId,
    /// Where the pressure levels start.
    pub thresholds: Thresholds,
    /// The lowest level at which weights are released.
    pub level: PressureLevel,
}

impl std::fmt::Debug for PressureTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PressureTrigger")
            .field("device", &self.device)
            .field("thresholds", &self.thresholds)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl PressureTrigger {
    /// Releases at [`PressureLevel::High`] and above on `device`, with the
    /// default thresholds.
    pub fn high(monitor: Arc<dyn MemoryMonitor>, device: DeviceId) -> Self {
        Self {
            monitor,
            device,
            thresholds: Thresholds::default(),
            level: PressureLevel::High,
        }
    }
}

impl Offload {
    /// Whether a component just used should be released now. A monitor
    /// that cannot be read counts as pressure: releasing costs time,
    /// keeping may cost the process.
    pub(crate) fn release_now(&self) -> bool {
        match self {
            Self::Never => false,
            Self::Always => true,
            Self::UnderPressure(t) => match t.monitor.snapshot(t.device) {
                Ok(s) => t.thresholds.level_of(s.used_fraction()) >= t.level,
                Err(_) => true,
            },
        }
    }
}

/// Which components hold their weights now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Residency {
    /// The text encoder (both of SDXL's) is loaded.
    pub text_encoder: bool,
    /// The UNet is loaded.
    pub unet: bool,
    /// The VAE is loaded.
    pub vae: bool,
    /// Every attached ControlNet is loaded (true with none attached).
    pub controlnets: bool,
}

/// A component that may be released and rebuilt. A run holds an `Arc` for
/// the length of its stage, so releasing never pulls weights from under a
/// run; they go when the last run using them ends.
pub(crate) struct Resident<T> {
    slot: Mutex<Option<Arc<T>>>,
}

impl<T> std::fmt::Debug for Resident<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resident")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl<T> Resident<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            slot: Mutex::new(Some(Arc::new(value))),
        }
    }

    /// The component, built by `build` first if it was released. The lock
    /// is held while building, so concurrent runs build it once.
    pub(crate) fn get(&self, build: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        let mut slot = self.slot.lock();
        if let Some(value) = slot.as_ref() {
            return Ok(Arc::clone(value));
        }
        let value = Arc::new(build()?);
        *slot = Some(Arc::clone(&value));
        Ok(value)
    }

    /// Drops this holder's reference; returns whether one was held.
    pub(crate) fn release(&self) -> bool {
        self.slot.lock().take().is_some()
    }

    /// Replaces the component (a rebuild with other LoRA deltas).
    pub(crate) fn set(&self, value: T) {
        *self.slot.lock() = Some(Arc::new(value));
    }

    pub(crate) fn is_loaded(&self) -> bool {
        self.slot.lock().is_some()
    }
}

#[cfg(test)]
mod tests {
    use switchyard_vram::SimulatedMonitor;

    use super::*;

    #[test]
    fn resident_builds_once_after_a_release_and_keeps_runs_alive() {
        let r = Resident::new(1u32);
        let held = r.get(|| unreachable!()).unwrap();
        assert!(r.release());
        assert!(!r.is_loaded() && !r.release());
        assert_eq!(*held, 1, "a run's reference outlives the release");
        let mut builds = 0;
        for _ in 0..3 {
            let v = r
                .get(|| {
                    builds += 1;
                    Ok(2)
                })
                .unwrap();
            assert_eq!(*v, 2);
        }
        assert_eq!(builds, 1);
        r.set(3);
        assert_eq!(*r.get(|| unreachable!()).unwrap(), 3);
    }

    #[test]
    fn pressure_trigger_follows_the_monitor() {
        let gpu = DeviceId::Cuda(0);
        let monitor = Arc::new(SimulatedMonitor::new().with_device(gpu, 100, 10));
        let offload = Offload::UnderPressure(PressureTrigger::high(monitor.clone(), gpu));
        assert!(!offload.release_now());
        monitor.set_used(gpu, 80);
        assert!(offload.release_now());
        monitor.set_unavailable(gpu, Some("driver gone"));
        assert!(
            offload.release_now(),
            "an unreadable monitor counts as pressure"
        );
        assert!(Offload::Always.release_now() && !Offload::Never.release_now());
        assert!(format!("{offload:?}").contains("High"));
    }
}
