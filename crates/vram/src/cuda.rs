//! [`CudaMonitor`] (feature `cuda`): free and total memory per CUDA device
//! through the driver API, loaded at run time (no toolkit needed to build).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cudarc::driver::CudaContext;
use switchyard_core::DeviceId;

use crate::{MemoryMonitor, MemorySnapshot, Result, VramError};

/// Memory of every CUDA device, from `cuMemGetInfo`.
///
/// [`CudaMonitor::new`] fails with [`VramError::NoDevice`] on a machine
/// without the driver library or without devices; it never panics (cudarc
/// panics when the library is missing, so its presence is checked first and
/// any panic is contained).
#[derive(Debug)]
pub struct CudaMonitor {
    contexts: Vec<Arc<CudaContext>>,
}

fn no_device(device: DeviceId, reason: impl Into<String>) -> VramError {
    VramError::NoDevice {
        device,
        reason: reason.into(),
    }
}

fn driver_present() -> bool {
    // SAFETY: the call only tries to open the driver library by name with
    // libloading and drops it; it reads or writes no memory of ours.
    #[allow(unsafe_code)]
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    present
}

impl CudaMonitor {
    /// Open every CUDA device.
    pub fn new() -> Result<Self> {
        let any = DeviceId::Cuda(0);
        if !driver_present() {
            return Err(no_device(any, "the CUDA driver library is not installed"));
        }
        let opened = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<Arc<CudaContext>>> {
            let count = CudaContext::device_count()
                .map_err(|e| no_device(any, format!("cuDeviceGetCount: {e}")))?;
            let count = usize::try_from(count).unwrap_or(0);
            (0..count)
                .map(|ordinal| {
                    CudaContext::new(ordinal)
                        .map_err(|e| no_device(DeviceId::Cuda(ordinal), e.to_string()))
                })
                .collect()
        }));
        let contexts = match opened {
            Ok(result) => result?,
            Err(_) => return Err(no_device(any, "the CUDA driver panicked while loading")),
        };
        if contexts.is_empty() {
            return Err(no_device(any, "the driver reports no devices"));
        }
        Ok(Self { contexts })
    }
}

impl MemoryMonitor for CudaMonitor {
    fn devices(&self) -> Vec<DeviceId> {
        (0..self.contexts.len()).map(DeviceId::Cuda).collect()
    }

    fn snapshot(&self, device: DeviceId) -> Result<MemorySnapshot> {
        let DeviceId::Cuda(ordinal) = device else {
            return Err(no_device(device, "not a CUDA device"));
        };
        let context = self
            .contexts
            .get(ordinal)
            .ok_or_else(|| no_device(device, "no such ordinal"))?;
        let (free, total) = context
            .mem_get_info()
            .map_err(|e| no_device(device, format!("cuMemGetInfo: {e}")))?;
        let (free, total) = (free as u64, total as u64);
        let mut snapshot = MemorySnapshot::new(device, total, total.saturating_sub(free));
        snapshot.free = free.min(total);
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_or_says_why_not() {
        match CudaMonitor::new() {
            Ok(m) => {
                let d = m.devices()[0];
                let s = m.snapshot(d).unwrap();
                assert!(s.total > 0 && s.used <= s.total);
                assert!(m.snapshot(DeviceId::Cpu).is_err());
            }
            Err(VramError::NoDevice { reason, .. }) => assert!(!reason.is_empty()),
            Err(other) => panic!("unexpected error {other}"),
        }
    }
}
