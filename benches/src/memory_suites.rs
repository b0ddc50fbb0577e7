//! The memory suites: `vram` (what reading device memory costs).

use std::sync::Arc;

use switchyard::core::DeviceId;
use switchyard::vram::{BudgetMonitor, HostMonitor, MemoryMonitor, MemoryWatch, WatchConfig};

use crate::suites::SuiteResult;
use crate::{Report, median, time_runs};

fn micros(durations: &[std::time::Duration]) -> Vec<f64> {
    durations.iter().map(|d| d.as_secs_f64() * 1e6).collect()
}

/// `vram`: median cost of one snapshot from each monitor and of one
/// [`MemoryWatch::sample`] over the host (1000 runs each).
pub fn vram() -> SuiteResult {
    let host = HostMonitor::new();
    let mut host_us = micros(&time_runs(50, 1000, || {
        host.snapshot(DeviceId::Cpu).map(drop)
    })?);
    let budget = BudgetMonitor::new().with_budget(DeviceId::Cpu, 1 << 30);
    let mut budget_us = micros(&time_runs(50, 1000, || {
        budget.snapshot(DeviceId::Cpu).map(drop)
    })?);
    let watch = MemoryWatch::new(Arc::new(host), DeviceId::Cpu, WatchConfig::default())?;
    let mut watch_us = micros(&time_runs(50, 1000, || watch.sample().map(drop))?);
    let snapshot = watch.latest();

    let mut report = Report::new("vram");
    report.figure(
        "host_snapshot_us",
        median(&mut host_us),
        "us median of 1000 (meminfo + cgroup + status)",
    );
    report.figure(
        "budget_snapshot_us",
        median(&mut budget_us),
        "us median of 1000",
    );
    report.figure(
        "host_watch_sample_us",
        median(&mut watch_us),
        "us median of 1000 (snapshot + level + history)",
    );
    report.figure(
        "host_total_gib",
        snapshot.total as f64 / f64::from(1u32 << 30),
        "GiB (RAM or cgroup limit)",
    );
    report.figure(
        "host_used_fraction",
        snapshot.used_fraction(),
        &format!("level {}", watch.level()),
    );
    Ok(report)
}
