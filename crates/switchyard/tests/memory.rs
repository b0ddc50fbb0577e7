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

mod engine_budget {
    //! The engine's loads held against a `BudgetMonitor`: a load the budget
    //! refuses evicts unused models and tries once more; with nothing to
    //! evict it fails with `InsufficientMemory` and the engine keeps serving.
    use switchyard::config::{ModelKind, ModelSource, ModelSpec};
    use switchyard::core::DeviceId;
    use switchyard::vram::{BudgetMonitor, PressureLevel};
    use switchyard::{Engine, EngineError, GenerationOptions, Request};
    use switchyard_testkit::tiny;

    fn sized(id: &str, kind: ModelKind, path: std::path::PathBuf, bytes: u64) -> ModelSpec {
        let mut spec = ModelSpec::new(id, kind, ModelSource::Path(path));
        spec.memory_bytes = Some(bytes);
        spec
    }

    fn ask(n: usize) -> Request {
        Request::complete("llama", "once upon a time").with_options(GenerationOptions {
            max_tokens: Some(n),
            ..GenerationOptions::default()
        })
    }

    fn embed() -> Request {
        Request::embed("bert", vec!["hello".into()])
    }

    #[test]
    fn a_refused_load_evicts_unused_models_and_retries_once() {
        let dir = tempfile::tempdir().unwrap();
        let tiny::TextModels { llama, bert } = tiny::write_text_models(dir.path(), 7).unwrap();
        // Either model fits the budget; both together do not. The engine
        // has no byte limit of its own, so only the monitor refuses.
        let budget = BudgetMonitor::new().with_budget(DeviceId::Cpu, 1000);
        let engine = Engine::builder()
            .memory_monitor(budget.clone())
            .model(sized("llama", ModelKind::TextGeneration, llama, 600))
            .unwrap()
            .model(sized("bert", ModelKind::Embedding, bert, 600))
            .unwrap()
            .model(sized(
                "huge",
                ModelKind::Embedding,
                dir.path().join("bert"),
                2000,
            ))
            .unwrap()
            .build()
            .unwrap();

        engine.process_sync(ask(4)).unwrap();
        assert_eq!(budget.reserved(DeviceId::Cpu), 600);
        // bert's load is refused, llama (unused) is evicted, bert loads.
        engine.process_sync(embed()).unwrap();
        assert_eq!(budget.reserved(DeviceId::Cpu), 600);
        let stats = &engine.metrics().cache[0].1;
        assert_eq!((stats.loads, stats.evictions, stats.entries), (2, 1, 1));

        // A running generation holds llama (bert is evicted for it): now
        // bert cannot load, and its request fails with a typed error.
        let mut stream = engine.submit(ask(64)).unwrap().into_stream();
        assert!(stream.next().unwrap().is_ok(), "llama runs");
        match engine.process_sync(embed()) {
            Err(EngineError::InsufficientMemory {
                model,
                needed,
                free,
            }) => assert_eq!((model.as_str(), needed, free), ("bert", 600, 400)),
            other => panic!("expected InsufficientMemory, got {other:?}"),
        }
        // The generation was not disturbed, and once it ends bert serves.
        assert!(stream.all(|d| d.is_ok()));
        let vectors = engine.process_sync(embed()).unwrap().into_embeddings();
        assert_eq!(vectors.unwrap().len(), 1);
        assert_eq!(budget.reserved(DeviceId::Cpu), 600);

        // A model that can never fit is refused before it queues.
        let huge = Request::embed("huge", vec!["x".into()]);
        assert!(matches!(
            engine.validate(&huge),
            Err(EngineError::InsufficientMemory {
                needed: 2000,
                free: 1000,
                ..
            })
        ));
    }

    #[test]
    fn metrics_report_each_devices_memory_and_pressure() {
        let dir = tempfile::tempdir().unwrap();
        let tiny::TextModels { llama, bert } = tiny::write_text_models(dir.path(), 7).unwrap();

        // Without a monitor: the host's memory for the CPU.
        let engine = Engine::builder()
            .model(ModelSpec::new(
                "bert",
                ModelKind::Embedding,
                ModelSource::Path(bert.clone()),
            ))
            .unwrap()
            .build()
            .unwrap();
        engine.process_sync(embed()).unwrap();
        let metrics = engine.metrics();
        let [cpu] = metrics.memory.as_slice() else {
            panic!("one device: {:?}", metrics.memory)
        };
        assert_eq!(cpu.device, DeviceId::Cpu);
        assert!(cpu.models_bytes > 0);
        assert_eq!(cpu.budget, None);
        let host = cpu
            .snapshot
            .as_ref()
            .expect("the host's memory is readable");
        assert!(host.total > 0 && host.used <= host.total);
        assert!(cpu.pressure.is_some());
        drop(engine);

        // With a budget monitor: its budget, its reservations, its pressure.
        let budget = BudgetMonitor::new().with_budget(DeviceId::Cpu, 1000);
        let engine = Engine::builder()
            .memory_monitor(budget.clone())
            .model(sized("llama", ModelKind::TextGeneration, llama, 800))
            .unwrap()
            .build()
            .unwrap();
        engine.process_sync(ask(4)).unwrap();
        let metrics = engine.metrics();
        let cpu = &metrics.memory[0];
        assert_eq!(cpu.budget, Some(1000));
        let reading = cpu.snapshot.as_ref().unwrap();
        assert_eq!(
            (reading.total, reading.used, reading.free),
            (1000, 800, 200)
        );
        assert_eq!(cpu.pressure, Some(PressureLevel::High));
        let text = metrics.to_prometheus();
        for line in [
            "switchyard_device_memory_bytes{device=\"cpu\",kind=\"budget\"} 1000",
            "switchyard_device_memory_bytes{device=\"cpu\",kind=\"used\"} 800",
            "switchyard_device_memory_pressure{device=\"cpu\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // The generation model's KV pool, by state.
        let kv = metrics.models["llama"].generation.unwrap().kv;
        assert!(kv.total > 0);
        let free = format!(
            "switchyard_kv_blocks{{model=\"llama\",state=\"free\"}} {}",
            kv.free
        );
        assert!(text.contains(&free), "{free} missing from:\n{text}");
    }
}
