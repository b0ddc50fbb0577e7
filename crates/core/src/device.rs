//! Devices that models run on.

use std::fmt;
use std::str::FromStr;

use crate::CoreError;

/// The family of a device, without its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKind {
    /// The host processor.
    Cpu,
    /// An NVIDIA GPU.
    Cuda,
    /// An Apple GPU.
    Metal,
}

impl DeviceKind {
    /// The lowercase name: `cpu`, `cuda` or `metal`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Metal => "metal",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One device: the CPU, or a GPU by its ordinal.
///
/// Shown and parsed as `cpu`, `cuda:N` or `metal:N` (`cuda` alone means
/// `cuda:0`). With the `candle` feature, [`DeviceId::to_candle`] opens the
/// matching `candle_core::Device`.
///
/// ```
/// use switchyard_core::{DeviceId, DeviceKind};
/// let gpu: DeviceId = "cuda:1".parse().unwrap();
/// assert_eq!(gpu, DeviceId::Cuda(1));
/// assert_eq!(gpu.kind(), DeviceKind::Cuda);
/// assert_eq!(gpu.to_string(), "cuda:1");
/// assert!(DeviceId::Cpu.is_cpu());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum DeviceId {
    /// The host processor.
    #[default]
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
    /// Metal device with this ordinal.
    Metal(usize),
}

impl DeviceId {
    /// The device's family.
    pub const fn kind(self) -> DeviceKind {
        match self {
            DeviceId::Cpu => DeviceKind::Cpu,
            DeviceId::Cuda(_) => DeviceKind::Cuda,
            DeviceId::Metal(_) => DeviceKind::Metal,
        }
    }

    /// The GPU ordinal, `None` for the CPU.
    pub const fn ordinal(self) -> Option<usize> {
        match self {
            DeviceId::Cpu => None,
            DeviceId::Cuda(n) | DeviceId::Metal(n) => Some(n),
        }
    }

    /// Whether this is the host processor.
    pub const fn is_cpu(self) -> bool {
        matches!(self, DeviceId::Cpu)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Cpu => f.write_str("cpu"),
            DeviceId::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceId::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl FromStr for DeviceId {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| CoreError::InvalidDevice {
            given: s.to_owned(),
            reason: reason.to_owned(),
        };
        let text = s.trim().to_ascii_lowercase();
        let (name, ordinal) = match text.split_once(':') {
            Some((name, n)) => {
                let n = n
                    .parse::<usize>()
                    .map_err(|_| invalid("the ordinal after ':' must be a number"))?;
                (name.to_owned(), Some(n))
            }
            None => (text, None),
        };
        match (name.as_str(), ordinal) {
            ("cpu", None) => Ok(DeviceId::Cpu),
            ("cpu", Some(_)) => Err(invalid("the cpu takes no ordinal")),
            ("cuda" | "gpu", n) => Ok(DeviceId::Cuda(n.unwrap_or(0))),
            ("metal", n) => Ok(DeviceId::Metal(n.unwrap_or(0))),
            _ => Err(invalid("expected cpu, cuda[:N] or metal[:N]")),
        }
    }
}

#[cfg(feature = "candle")]
mod candle_conv {
    use super::DeviceId;
    use crate::CoreError;
    use candle_core::{Device, DeviceLocation};

    impl DeviceId {
        /// Open the candle device for this id.
        ///
        /// Fails with [`CoreError::DeviceUnavailable`] when candle was built
        /// without the backend or the device cannot be opened.
        pub fn to_candle(self) -> Result<Device, CoreError> {
            let opened = match self {
                DeviceId::Cpu => return Ok(Device::Cpu),
                DeviceId::Cuda(n) => Device::new_cuda(n),
                DeviceId::Metal(n) => Device::new_metal(n),
            };
            opened.map_err(|e| CoreError::DeviceUnavailable {
                device: self,
                reason: e.to_string(),
            })
        }
    }

    impl From<DeviceLocation> for DeviceId {
        fn from(location: DeviceLocation) -> Self {
            match location {
                DeviceLocation::Cpu => DeviceId::Cpu,
                DeviceLocation::Cuda { gpu_id } => DeviceId::Cuda(gpu_id),
                DeviceLocation::Metal { gpu_id } => DeviceId::Metal(gpu_id),
            }
        }
    }

    impl From<&Device> for DeviceId {
        fn from(device: &Device) -> Self {
            device.location().into()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn cpu_round_trips_through_candle() {
            let device = DeviceId::Cpu.to_candle().unwrap();
            assert!(device.is_cpu());
            assert_eq!(DeviceId::from(&device), DeviceId::Cpu);
            assert_eq!(
                DeviceId::from(DeviceLocation::Cuda { gpu_id: 3 }),
                DeviceId::Cuda(3)
            );
        }

        #[test]
        fn missing_backends_are_typed_errors() {
            // This crate is built without candle's cuda/metal features.
            for id in [DeviceId::Cuda(0), DeviceId::Metal(0)] {
                match id.to_candle() {
                    Err(CoreError::DeviceUnavailable { device, .. }) => assert_eq!(device, id),
                    other => panic!("expected DeviceUnavailable, got {other:?}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        for (text, id) in [
            ("cpu", DeviceId::Cpu),
            ("CUDA", DeviceId::Cuda(0)),
            ("cuda:2", DeviceId::Cuda(2)),
            ("gpu:1", DeviceId::Cuda(1)),
            ("metal", DeviceId::Metal(0)),
            (" metal:3 ", DeviceId::Metal(3)),
        ] {
            assert_eq!(text.parse::<DeviceId>(), Ok(id), "{text}");
        }
        for id in [DeviceId::Cpu, DeviceId::Cuda(4), DeviceId::Metal(0)] {
            assert_eq!(id.to_string().parse::<DeviceId>(), Ok(id));
        }
        assert_eq!(DeviceId::Cuda(4).ordinal(), Some(4));
        assert_eq!(DeviceId::Cpu.ordinal(), None);
        assert_eq!(DeviceKind::Metal.to_string(), "metal");
    }

    #[test]
    fn rejects_bad_names_with_reasons() {
        for bad in ["tpu", "cuda:x", "cpu:0", "", "cuda:-1"] {
            assert!(
                matches!(
                    bad.parse::<DeviceId>(),
                    Err(CoreError::InvalidDevice { .. })
                ),
                "{bad}"
            );
        }
    }
}
