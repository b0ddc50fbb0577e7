//! The memory monitor meets the batcher and the pool: a `MemoryWatch`'s
//! headroom, handed to the PID controller as its `MemoryHeadroom`, caps the
//! batch size as the engine reserves memory and lifts the cap when it is
//! released; a level-change listener trims the buffer pool at High.

use std::sync::Arc;
use std::time::Duration;

use switchyard::batch::{
    BatchObservation, BatchSizeController, MemoryClamp, MemoryHeadroom, Pid, PidConfig,
};
use switchyard::core::DeviceId;
use switchyard::pool::BufferPool;
use switchyard::vram::{BudgetMonitor, MemoryWatch, PressureLevel, SimulatedMonitor, WatchConfig};

const MIB: u64 = 1 << 20;

fn fast_batch(size: usize) -> BatchObservation {
    BatchObservation {
        size,
        cost: size as u64,
        latency: Duration::from_millis(1),
        target: size,
        queued_after: 1000,
    }
}

#[test]
fn reservations_shrink_the_batch_and_releases_grow_it_back() {
    let budget = Arc::new(BudgetMonitor::new().with_budget(DeviceId::Cpu, 1000 * MIB));
    let watch =
        Arc::new(MemoryWatch::new(budget.clone(), DeviceId::Cpu, WatchConfig::default()).unwrap());
    let source = Arc::clone(&watch);
    let headroom: Arc<dyn MemoryHeadroom> = Arc::new(move || source.headroom());
    let clamp = MemoryClamp::new(headroom, 50 * MIB);
    // 80 % of 1000 MiB free: 16 items of 50 MiB.
    assert_eq!(clamp.cap(), 16);

    let mut config = PidConfig::new(Duration::from_millis(100), 64);
    config.memory = Some(clamp.clone());
    let mut pid = Pid::new(config).unwrap();
    // Batches far under the latency target push the size up to the cap.
    for _ in 0..200 {
        let t = pid.target();
        pid.observe(&fast_batch(t));
    }
    assert_eq!(pid.target(), 16);

    let weights = budget.reserve(DeviceId::Cpu, 650 * MIB).unwrap();
    watch.sample().unwrap();
    assert_eq!(watch.level(), PressureLevel::Moderate);
    assert_eq!(clamp.cap(), 3); // (800 - 650) / 50
    let t = pid.target();
    pid.observe(&fast_batch(t));
    assert!(pid.target() <= 3, "target {} over the cap", pid.target());

    drop(weights);
    watch.sample().unwrap();
    assert_eq!(watch.level(), PressureLevel::Low);
    for _ in 0..200 {
        let t = pid.target();
        pid.observe(&fast_batch(t));
    }
    assert_eq!(pid.target(), 16);
}

#[test]
fn high_pressure_trims_the_buffer_pool() {
    let gpu = DeviceId::Cuda(0);
    let sim = Arc::new(SimulatedMonitor::new().with_device(gpu, 1000, 100));
    let watch = MemoryWatch::new(sim.clone(), gpu, WatchConfig::default()).unwrap();
    let pool = BufferPool::new(64 * MIB);
    drop((
        pool.acquire(MIB as usize).unwrap(),
        pool.acquire(4096).unwrap(),
    ));
    assert_eq!(pool.stats().bytes_cached, MIB + 4096);
    let trimmed = pool.clone();
    watch.on_level_change(move |change| {
        if change.to >= PressureLevel::High {
            trimmed.trim_all();
        }
    });
    sim.set_used(gpu, 600);
    watch.sample().unwrap();
    assert_eq!(
        pool.stats().bytes_cached,
        MIB + 4096,
        "moderate keeps the cache"
    );
    sim.set_used(gpu, 800);
    watch.sample().unwrap();
    assert_eq!(pool.stats().bytes_cached, 0);
    assert_eq!(pool.stats().bytes_released, MIB + 4096);
}
