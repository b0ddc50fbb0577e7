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

/// Nanoseconds per iteration of `f`, median of 5 runs of `iters`.
fn nanos_per_op(iters: u32, mut f: impl FnMut(u32)) -> f64 {
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let start = std::time::Instant::now();
            for i in 0..iters {
                f(i);
            }
            start.elapsed().as_secs_f64() * 1e9 / f64::from(iters)
        })
        .collect();
    median(&mut runs)
}

/// Bytes of the buffer the `pool` suite reuses.
pub const BUFFER_BYTES: usize = 16 << 20;
const PAGE: usize = 4096;

/// Write one byte in every page, as a model filling an input would.
pub fn touch_pages(bytes: &mut [u8]) {
    for (i, page) in bytes.chunks_mut(PAGE).enumerate() {
        page[0] = i as u8;
    }
}

/// One pooled round: acquire 16 MiB, write every page, release.
pub fn pooled_round(pool: &switchyard::pool::BufferPool) {
    if let Ok(mut b) = pool.acquire(BUFFER_BYTES) {
        touch_pages(b.as_bytes_mut());
        std::hint::black_box(b.as_bytes().as_ptr());
    }
}

/// The same without a pool: `vec![0u8; 16 MiB]`, write every page, drop.
pub fn fresh_round() {
    let mut v = vec![0u8; BUFFER_BYTES];
    touch_pages(&mut v);
    std::hint::black_box(v.as_ptr());
}

/// `pool`: a reused 16 MiB buffer against a fresh allocation, and the KV
/// block pool's operations.
pub fn pool() -> SuiteResult {
    use switchyard::pool::{BufferPool, KvBlockPool, KvPoolConfig, SeqId};

    let buffers = BufferPool::new(1 << 30);
    let mut pooled_us = micros(&time_runs(5, 200, || {
        pooled_round(&buffers);
        Ok::<(), std::convert::Infallible>(())
    })?);
    let mut fresh_us = micros(&time_runs(5, 200, || {
        fresh_round();
        Ok::<(), std::convert::Infallible>(())
    })?);
    let pooled_us = median(&mut pooled_us);
    let fresh_us = median(&mut fresh_us);
    let speedup = fresh_us / pooled_us;

    let mut config = KvPoolConfig::new(4096, 16);
    config.prefix_caching = false;
    let mut kv = KvBlockPool::new(config)?;
    let one_block: Vec<u32> = (0..16).collect();
    let seq = SeqId(1);
    // One block in, one block out: the allocator's round trip.
    let alloc_free = nanos_per_op(1_000_000, |_| {
        let _ = kv.add_sequence(seq, &one_block);
        let _ = kv.free(seq);
    });
    // Decode: one token appended per call; a new block every 16.
    let _ = kv.add_sequence(seq, &one_block);
    let append = nanos_per_op(60_000, |i| {
        let _ = kv.append(seq, i);
    });
    let _ = kv.free(seq);
    // Prefix hit: a 64-token prompt whose first 48 tokens are cached.
    let mut cached = KvBlockPool::new(KvPoolConfig::new(4096, 16))?;
    let prompt: Vec<u32> = (0..64).collect();
    cached.add_sequence(SeqId(0), &prompt)?;
    cached.commit(SeqId(0), 64)?;
    let hit = nanos_per_op(200_000, |_| {
        let _ = cached.add_sequence(seq, &prompt);
        let _ = cached.free(seq);
    });

    let mut report = Report::new("pool");
    report.figure(
        "pooled_16mib_us",
        pooled_us,
        "us median of 200: acquire + write every page + release",
    );
    report.figure(
        "vec_16mib_us",
        fresh_us,
        "us median of 200: vec![0u8; 16 MiB] + write every page + drop",
    );
    report.goal(
        "pool_vs_vec",
        "pool >= 10x faster than a fresh vec",
        speedup,
        speedup >= 10.0,
    );
    report.figure(
        "kv_allocate_free_ns",
        alloc_free,
        "ns per add_sequence(16 tokens = 1 block) + free, median of 5 x 1M",
    );
    report.figure("kv_append_ns", append, "ns per decoded token (block of 16)");
    report.figure(
        "kv_prefix_hit_add_free_ns",
        hit,
        "ns per add_sequence(64 tokens, 3 cached blocks) + free",
    );
    report.goal(
        "kv_allocate_free",
        "KvBlockPool allocate/free < 100 ns",
        alloc_free,
        alloc_free < 100.0,
    );
    Ok(report)
}

/// A loader for the `cache` suite: the "model" is its name, weighed at one
/// byte; loading takes `delay` so concurrent callers overlap.
#[derive(Debug, Default)]
pub struct NamedLoader {
    /// Loads run.
    pub loads: std::sync::atomic::AtomicUsize,
    /// How long each load takes.
    pub delay: std::time::Duration,
}

impl switchyard::cache::Loader<String, String> for NamedLoader {
    fn load(
        &self,
        key: &String,
        _: DeviceId,
    ) -> Result<switchyard::cache::Loaded<String>, switchyard::cache::LoadError> {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(self.delay);
        Ok(switchyard::cache::Loaded {
            value: key.clone(),
            bytes: 1,
        })
    }
}

/// `cache`: a warm hit's cost, and how many loads 16 threads asking for one
/// cold key cause.
pub fn cache() -> SuiteResult {
    use std::sync::atomic::Ordering;
    use switchyard::cache::{CacheConfig, ModelCache};

    let loader = Arc::new(NamedLoader {
        delay: std::time::Duration::from_millis(20),
        ..NamedLoader::default()
    });
    let cache: ModelCache<String, String> = ModelCache::build(
        loader.clone(),
        CacheConfig::default(),
        switchyard::core::SystemClock::shared(),
        None,
    );
    let warm = "smollm2-135m-instruct".to_owned();
    cache.get(&warm)?;
    let hit_ns = nanos_per_op(1_000_000, |_| {
        let _ = std::hint::black_box(cache.get(&warm));
    });

    let cold = "all-minilm-l6-v2".to_owned();
    let before = loader.loads.load(Ordering::SeqCst);
    let start = std::sync::Barrier::new(16);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                start.wait();
                let _ = cache.get(&cold);
            });
        }
    });
    let cold_loads = loader.loads.load(Ordering::SeqCst) - before;

    let mut report = Report::new("cache");
    report.figure(
        "warm_hit_ns",
        hit_ns,
        "ns per get of a loaded model, median of 5 x 1M",
    );
    report.figure(
        "cold_key_loads_16_threads",
        cold_loads as f64,
        "loads when 16 threads ask at once",
    );
    report.goal("warm_hit", "warm hit < 1 us", hit_ns, hit_ns < 1000.0);
    report.goal(
        "single_flight",
        "16 threads, one cold key -> exactly 1 load",
        cold_loads as f64,
        cold_loads == 1,
    );
    Ok(report)
}
