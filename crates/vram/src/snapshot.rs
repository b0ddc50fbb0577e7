//! What a monitor reports: the [`MemoryMonitor`] trait and its [`MemorySnapshot`].

use std::sync::Arc;

use switchyard_core::DeviceId;

use crate::Result;

/// One device's memory at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemorySnapshot {
    /// The device.
    pub device: DeviceId,
    /// Bytes the device has (for the host: the lower of RAM and the
    /// container limit).
    pub total: u64,
    /// Bytes in use, by anyone.
    pub used: u64,
    /// Bytes that may still be allocated (`total - used`, or what the
    /// system reports as available where that is more precise).
    pub free: u64,
    /// Bytes this process uses, where known.
    pub process_used: Option<u64>,
    /// Compute utilisation in `0.0..=1.0`, where known.
    pub utilisation: Option<f32>,
}

impl MemorySnapshot {
    /// A snapshot with `used` of `total` in use and nothing else known.
    pub fn new(device: DeviceId, total: u64, used: u64) -> Self {
        let used = used.min(total);
        Self {
            device,
            total,
            used,
            free: total - used,
            process_used: None,
            utilisation: None,
        }
    }

    /// Share of the device in use, `0.0..=1.0` (1.0 for a device of size 0).
    pub fn used_fraction(&self) -> f64 {
        if self.total == 0 {
            return 1.0;
        }
        (self.used as f64 / self.total as f64).clamp(0.0, 1.0)
    }
}

/// Reads how much memory devices have. Implementations: [`HostMonitor`],
/// [`BudgetMonitor`], [`SimulatedMonitor`], and `CudaMonitor` (feature
/// `cuda`).
///
/// [`HostMonitor`]: crate::HostMonitor
/// [`BudgetMonitor`]: crate::BudgetMonitor
/// [`SimulatedMonitor`]: crate::SimulatedMonitor
pub trait MemoryMonitor: Send + Sync {
    /// The devices this monitor can report on.
    fn devices(&self) -> Vec<DeviceId>;

    /// `device`'s memory now.
    fn snapshot(&self, device: DeviceId) -> Result<MemorySnapshot>;
}

impl<M: MemoryMonitor + ?Sized> MemoryMonitor for Arc<M> {
    fn devices(&self) -> Vec<DeviceId> {
        (**self).devices()
    }

    fn snapshot(&self, device: DeviceId) -> Result<MemorySnapshot> {
        (**self).snapshot(device)
    }
}

impl<M: MemoryMonitor + ?Sized> MemoryMonitor for Box<M> {
    fn devices(&self) -> Vec<DeviceId> {
        (**self).devices()
    }

    fn snapshot(&self, device: DeviceId) -> Result<MemorySnapshot> {
        (**self).snapshot(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_is_capped_at_total_and_free_is_the_rest() {
        let s = MemorySnapshot::new(DeviceId::Cpu, 100, 150);
        assert_eq!((s.used, s.free), (100, 0));
        assert!((s.used_fraction() - 1.0).abs() < 1e-12);
        let s = MemorySnapshot::new(DeviceId::Cpu, 200, 50);
        assert_eq!(s.free, 150);
        assert!((s.used_fraction() - 0.25).abs() < 1e-12);
        assert!((MemorySnapshot::new(DeviceId::Cpu, 0, 0).used_fraction() - 1.0).abs() < 1e-12);
    }
}
