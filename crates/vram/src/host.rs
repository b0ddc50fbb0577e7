//! [`HostMonitor`]: system RAM, capped by the cgroup v2 limit when lower.

use std::path::{Path, PathBuf};

use switchyard_core::DeviceId;

use crate::procfs::{self, MemInfo};
use crate::{MemoryMonitor, MemorySnapshot, Result, VramError};

/// Host memory from `/proc/meminfo`, and the container's cgroup v2 limit
/// (`memory.max` of the process's cgroup and its ancestors) when that is
/// lower: on a server the limit, not the RAM, is what the kernel enforces.
///
/// Under a limit, `used` is the cgroup's `memory.current` less its
/// `inactive_file` (page cache the kernel reclaims first, as the kubelet's
/// working set counts it). `process_used` is this process's `VmRSS`.
///
/// ```no_run
/// use switchyard_core::DeviceId;
/// use switchyard_vram::{HostMonitor, MemoryMonitor};
///
/// let host = HostMonitor::new();
/// let snap = host.snapshot(DeviceId::Cpu)?;
/// println!("{} of {} bytes free", snap.free, snap.total);
/// # Ok::<(), switchyard_vram::VramError>(())
/// ```
#[derive(Debug, Clone)]
pub struct HostMonitor {
    proc_root: PathBuf,
    cgroup_root: PathBuf,
}

impl Default for HostMonitor {
    fn default() -> Self {
        Self::new()
    }
}

/// A cgroup's memory limit and use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CgroupMemory {
    limit: u64,
    working_set: Option<u64>,
}

impl HostMonitor {
    /// Read `/proc` and `/sys/fs/cgroup`.
    pub fn new() -> Self {
        Self::with_roots("/proc", "/sys/fs/cgroup")
    }

    /// Read a `/proc` and a cgroup v2 mount at other places (tests, chroots).
    pub fn with_roots(proc_root: impl Into<PathBuf>, cgroup_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            cgroup_root: cgroup_root.into(),
        }
    }

    fn read(path: &Path) -> Result<String> {
        std::fs::read_to_string(path).map_err(|source| VramError::Read {
            path: path.to_owned(),
            source,
        })
    }

    fn meminfo(&self) -> Result<MemInfo> {
        procfs::parse_meminfo(&Self::read(&self.proc_root.join("meminfo"))?)
    }

    /// The tightest `memory.max` from the process's cgroup up to the root,
    /// with the working set of the cgroup itself; `None` without cgroup v2
    /// or without a limit.
    fn cgroup(&self) -> Option<CgroupMemory> {
        let text = std::fs::read_to_string(self.proc_root.join("self/cgroup")).ok()?;
        let relative = procfs::parse_cgroup_path(&text)?.trim_start_matches('/');
        let leaf = self.cgroup_root.join(relative);
        let mut limit: Option<u64> = None;
        let mut dir = Some(leaf.as_path());
        while let Some(d) = dir {
            if !d.starts_with(&self.cgroup_root) {
                break;
            }
            if let Ok(text) = std::fs::read_to_string(d.join("memory.max"))
                && let Ok(Some(max)) = procfs::parse_limit(&text)
            {
                limit = Some(limit.map_or(max, |l| l.min(max)));
            }
            dir = d.parent();
        }
        let current = std::fs::read_to_string(leaf.join("memory.current"))
            .ok()
            .and_then(|t| procfs::parse_bytes(&t).ok());
        let inactive = std::fs::read_to_string(leaf.join("memory.stat"))
            .ok()
            .and_then(|t| procfs::stat_field(&t, "inactive_file"))
            .unwrap_or(0);
        Some(CgroupMemory {
            limit: limit?,
            working_set: current.map(|c| c.saturating_sub(inactive)),
        })
    }

    fn process_rss(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.proc_root.join("self/status")).ok()?;
        procfs::kb_field(&text, "VmRSS")
    }
}

impl MemoryMonitor for HostMonitor {
    fn devices(&self) -> Vec<DeviceId> {
        vec![DeviceId::Cpu]
    }

    fn snapshot(&self, device: DeviceId) -> Result<MemorySnapshot> {
        if device != DeviceId::Cpu {
            return Err(VramError::NoDevice {
                device,
                reason: "the host monitor reports the CPU's memory only".to_owned(),
            });
        }
        let info = self.meminfo()?;
        let ram_used = info.total - info.available;
        let mut snapshot = match self.cgroup() {
            Some(cg) if cg.limit < info.total => {
                let used = cg.working_set.unwrap_or(ram_used).min(cg.limit);
                let mut s = MemorySnapshot::new(device, cg.limit, used);
                // The host may run short before the container's limit does.
                s.free = s.free.min(info.available);
                s
            }
            _ => MemorySnapshot::new(device, info.total, ram_used),
        };
        snapshot.process_used = self.process_rss();
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(limit: &str, current: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        std::fs::create_dir_all(proc_root.join("self")).unwrap();
        std::fs::write(
            proc_root.join("meminfo"),
            "MemTotal: 16777216 kB\nMemFree: 1 kB\nMemAvailable: 8388608 kB\n",
        )
        .unwrap();
        std::fs::write(proc_root.join("self/cgroup"), "0::/app\n").unwrap();
        std::fs::write(proc_root.join("self/status"), "VmRSS:  1024 kB\n").unwrap();
        let cg = dir.path().join("cgroup");
        std::fs::create_dir_all(cg.join("app")).unwrap();
        std::fs::write(cg.join("memory.max"), "max\n").unwrap();
        std::fs::write(cg.join("app/memory.max"), limit).unwrap();
        std::fs::write(cg.join("app/memory.current"), current).unwrap();
        std::fs::write(cg.join("app/memory.stat"), "inactive_file 1048576\n").unwrap();
        dir
    }

    fn monitor(dir: &tempfile::TempDir) -> HostMonitor {
        HostMonitor::with_roots(dir.path().join("proc"), dir.path().join("cgroup"))
    }

    #[test]
    fn a_lower_cgroup_limit_is_the_total() {
        let dir = fake_root("4294967296\n", "3221225472\n");
        let s = monitor(&dir).snapshot(DeviceId::Cpu).unwrap();
        assert_eq!(s.total, 4 << 30);
        // current less inactive_file.
        assert_eq!(s.used, (3 << 30) - (1 << 20));
        assert_eq!(s.free, (1 << 30) + (1 << 20));
        assert_eq!(s.process_used, Some(1 << 20));
    }

    #[test]
    fn without_a_limit_ram_is_the_total() {
        let dir = fake_root("max\n", "100\n");
        let s = monitor(&dir).snapshot(DeviceId::Cpu).unwrap();
        assert_eq!(s.total, 16 << 30);
        assert_eq!(s.used, 8 << 30);
        assert_eq!(s.free, 8 << 30);
    }

    #[test]
    fn a_limit_above_ram_is_ignored_and_other_devices_are_refused() {
        let dir = fake_root("1099511627776\n", "100\n");
        let m = monitor(&dir);
        assert_eq!(m.snapshot(DeviceId::Cpu).unwrap().total, 16 << 30);
        assert!(matches!(
            m.snapshot(DeviceId::Cuda(0)),
            Err(VramError::NoDevice { .. })
        ));
        assert_eq!(m.devices(), [DeviceId::Cpu]);
    }

    #[test]
    fn a_missing_meminfo_is_a_read_error() {
        let m = HostMonitor::with_roots("/nonexistent-proc", "/nonexistent-cgroup");
        assert!(matches!(
            m.snapshot(DeviceId::Cpu),
            Err(VramError::Read { .. })
        ));
    }

    #[test]
    fn this_machine_reads() {
        let s = HostMonitor::new().snapshot(DeviceId::Cpu).unwrap();
        assert!(s.total > 0 && s.used <= s.total && s.free <= s.total);
        assert!(s.process_used.is_some_and(|r| r > 0));
    }
}
