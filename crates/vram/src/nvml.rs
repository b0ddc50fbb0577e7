//! [`NvmlMonitor`] (feature `nvml`): memory, utilisation and this process's
//! own use per NVIDIA GPU, through NVML loaded at run time.

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;
use switchyard_core::DeviceId;

use crate::{MemoryMonitor, MemorySnapshot, Result, VramError};

/// NVIDIA GPUs through NVML (`libnvidia-ml`, opened at run time): what
/// `CudaMonitor` reports, plus compute utilisation and the bytes
/// this process holds on each device.
///
/// [`NvmlMonitor::new`] fails with [`VramError::NoDevice`] where the
/// library or the driver is missing.
pub struct NvmlMonitor {
    nvml: Nvml,
    count: u32,
}

impl std::fmt::Debug for NvmlMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlMonitor")
            .field("devices", &self.count)
            .finish()
    }
}

fn no_device(device: DeviceId, reason: impl Into<String>) -> VramError {
    VramError::NoDevice {
        device,
        reason: reason.into(),
    }
}

impl NvmlMonitor {
    /// Open NVML and count the devices.
    pub fn new() -> Result<Self> {
        let any = DeviceId::Cuda(0);
        let nvml = Nvml::init().map_err(|e| no_device(any, format!("NVML: {e}")))?;
        let count = nvml
            .device_count()
            .map_err(|e| no_device(any, format!("NVML device count: {e}")))?;
        if count == 0 {
            return Err(no_device(any, "NVML reports no devices"));
        }
        Ok(Self { nvml, count })
    }
}

impl MemoryMonitor for NvmlMonitor {
    fn devices(&self) -> Vec<DeviceId> {
        (0..self.count as usize).map(DeviceId::Cuda).collect()
    }

    fn snapshot(&self, device: DeviceId) -> Result<MemorySnapshot> {
        let DeviceId::Cuda(ordinal) = device else {
            return Err(no_device(device, "not a CUDA device"));
        };
        let index = u32::try_from(ordinal)
            .ok()
            .filter(|&i| i < self.count)
            .ok_or_else(|| no_device(device, "no such ordinal"))?;
        let gpu = self
            .nvml
            .device_by_index(index)
            .map_err(|e| no_device(device, format!("NVML: {e}")))?;
        let memory = gpu
            .memory_info()
            .map_err(|e| no_device(device, format!("NVML memory info: {e}")))?;
        let mut snapshot = MemorySnapshot::new(device, memory.total, memory.used);
        snapshot.free = memory.free.min(memory.total);
        snapshot.utilisation = gpu
            .utilization_rates()
            .ok()
            .map(|u| (u.gpu.min(100) as f32) / 100.0);
        let pid = std::process::id();
        snapshot.process_used = gpu.running_compute_processes().ok().map(|ps| {
            ps.iter()
                .filter(|p| p.pid == pid)
                .map(|p| match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => bytes,
                    UsedGpuMemory::Unavailable => 0,
                })
                .sum()
        });
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_or_says_why_not() {
        match NvmlMonitor::new() {
            Ok(m) => {
                let s = m.snapshot(m.devices()[0]).unwrap();
                assert!(s.total > 0 && s.used <= s.total);
                assert!(s.utilisation.is_none_or(|u| (0.0..=1.0).contains(&u)));
                assert!(m.snapshot(DeviceId::Cpu).is_err());
            }
            Err(VramError::NoDevice { reason, .. }) => assert!(!reason.is_empty()),
            Err(other) => panic!("unexpected error {other}"),
        }
    }
}
