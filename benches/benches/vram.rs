//! Criterion benches of the memory monitors: one snapshot from the host and
//! budget monitors, one `MemoryWatch::sample` over the host.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard::core::DeviceId;
use switchyard::vram::{BudgetMonitor, HostMonitor, MemoryMonitor, MemoryWatch, WatchConfig};

fn snapshots(c: &mut Criterion) {
    let host = HostMonitor::new();
    c.bench_function("host_snapshot", |b| {
        b.iter(|| black_box(host.snapshot(DeviceId::Cpu)))
    });
    let budget = BudgetMonitor::new().with_budget(DeviceId::Cpu, 1 << 30);
    c.bench_function("budget_snapshot", |b| {
        b.iter(|| black_box(budget.snapshot(DeviceId::Cpu)))
    });
    if let Ok(watch) = MemoryWatch::new(
        Arc::new(HostMonitor::new()),
        DeviceId::Cpu,
        WatchConfig::default(),
    ) {
        c.bench_function("host_watch_sample", |b| {
            b.iter(|| black_box(watch.sample()))
        });
    }
}

criterion_group!(benches, snapshots);
criterion_main!(benches);
