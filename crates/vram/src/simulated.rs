//! [`SimulatedMonitor`]: scripted memory readings for tests.

use std::collections::VecDeque;

use parking_lot::Mutex;
use switchyard_core::DeviceId;

use crate::{MemoryMonitor, MemorySnapshot, Result, VramError};

#[derive(Debug)]
struct SimDevice {
    id: DeviceId,
    total: u64,
    used: u64,
    script: VecDeque<u64>,
    unavailable: Option<String>,
}

/// A monitor whose readings a test sets: fixed, or a script of `used`
/// values that successive snapshots step through (the last one stays).
///
/// ```
/// use switchyard_core::DeviceId;
/// use switchyard_vram::{MemoryMonitor, SimulatedMonitor};
///
/// let gpu = DeviceId::Cuda(0);
/// let sim = SimulatedMonitor::new().with_device(gpu, 1000, 100);
/// sim.script(gpu, [500, 950]);
/// let used: Vec<u64> = (0..3).map(|_| sim.snapshot(gpu).unwrap().used).collect();
/// assert_eq!(used, [500, 950, 950]);
/// ```
#[derive(Debug, Default)]
pub struct SimulatedMonitor {
    devices: Mutex<Vec<SimDevice>>,
}

impl SimulatedMonitor {
    /// A monitor with no devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a device of `total` bytes with `used` in use.
    pub fn with_device(self, device: DeviceId, total: u64, used: u64) -> Self {
        {
            let mut devices = self.devices.lock();
            devices.retain(|d| d.id != device);
            devices.push(SimDevice {
                id: device,
                total,
                used,
                script: VecDeque::new(),
                unavailable: None,
            });
        }
        self
    }

    fn with<R>(&self, device: DeviceId, f: impl FnOnce(&mut SimDevice) -> R) -> Option<R> {
        self.devices
            .lock()
            .iter_mut()
            .find(|d| d.id == device)
            .map(f)
    }

    /// Set `device`'s use now (clears its script). Returns whether the
    /// device exists.
    pub fn set_used(&self, device: DeviceId, used: u64) -> bool {
        self.with(device, |d| {
            d.script.clear();
            d.used = used;
        })
        .is_some()
    }

    /// Set `device`'s size.
    pub fn set_total(&self, device: DeviceId, total: u64) -> bool {
        self.with(device, |d| d.total = total).is_some()
    }

    /// Queue `used` readings for the next snapshots of `device`.
    pub fn script(&self, device: DeviceId, used: impl IntoIterator<Item = u64>) -> bool {
        self.with(device, |d| d.script.extend(used)).is_some()
    }

    /// Make `device` fail its snapshots with [`VramError::NoDevice`]
    /// (`Some(reason)`) or work again (`None`).
    pub fn set_unavailable(&self, device: DeviceId, reason: Option<&str>) -> bool {
        self.with(device, |d| d.unavailable = reason.map(str::to_owned))
            .is_some()
    }
}

impl MemoryMonitor for SimulatedMonitor {
    fn devices(&self) -> Vec<DeviceId> {
        self.devices.lock().iter().map(|d| d.id).collect()
    }

    fn snapshot(&self, device: DeviceId) -> Result<MemorySnapshot> {
        let reading = self.with(device, |d| {
            if let Some(reason) = &d.unavailable {
                return Err(reason.clone());
            }
            if let Some(next) = d.script.pop_front() {
                d.used = next;
            }
            Ok(MemorySnapshot::new(device, d.total, d.used))
        });
        match reading {
            Some(Ok(snapshot)) => Ok(snapshot),
            Some(Err(reason)) => Err(VramError::NoDevice { device, reason }),
            None => Err(VramError::NoDevice {
                device,
                reason: "not simulated".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_script_and_fail() {
        let d = DeviceId::Cuda(1);
        let sim = SimulatedMonitor::new().with_device(d, 100, 10);
        assert_eq!(sim.snapshot(d).unwrap().used, 10);
        assert!(sim.script(d, [20, 30]));
        assert!(sim.set_used(d, 40)); // clears the script
        assert_eq!(sim.snapshot(d).unwrap().used, 40);
        assert!(sim.set_total(d, 50));
        assert_eq!(sim.snapshot(d).unwrap().free, 10);
        assert!(sim.set_unavailable(d, Some("driver reset")));
        assert!(matches!(sim.snapshot(d), Err(VramError::NoDevice { .. })));
        assert!(sim.set_unavailable(d, None));
        assert!(sim.snapshot(d).is_ok());
        assert!(!sim.set_used(DeviceId::Cpu, 1));
        assert!(sim.snapshot(DeviceId::Cpu).is_err());
        assert_eq!(sim.devices(), [d]);
    }
}
