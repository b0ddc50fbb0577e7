//! The cache under device memory pressure, with a budget monitor whose
//! reservations the loaded models really hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{Model, TestLoader, k};
use parking_lot::Mutex;
use switchyard_cache::{CacheConfig, CacheError, EvictReason, ModelCache};
use switchyard_core::{DeviceId, SystemClock};
use switchyard_vram::{BudgetMonitor, MemoryWatch, PressureLevel, WatchConfig};

type EvictionLog = Arc<Mutex<Vec<(String, EvictReason)>>>;

fn setup(weights: &[(&str, u64)]) -> (ModelCache<String, Model>, Arc<MemoryWatch>, EvictionLog) {
    let budget = Arc::new(BudgetMonitor::new().with_budget(DeviceId::Cpu, 1000));
    let watch =
        Arc::new(MemoryWatch::new(budget.clone(), DeviceId::Cpu, WatchConfig::default()).unwrap());
    let loader = TestLoader {
        budget: Some(budget),
        ..TestLoader::weighing(weights)
    };
    let cache = ModelCache::build(
        Arc::new(loader),
        CacheConfig::default(),
        SystemClock::shared(),
        Some(Arc::clone(&watch)),
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    cache.on_evict(move |key, why| sink.lock().push((key.clone(), why)));
    (cache, watch, log)
}

#[test]
fn at_high_pressure_a_load_first_evicts_until_the_level_falls() {
    let (cache, watch, log) = setup(&[("a", 400), ("b", 400), ("c", 100)]);
    drop(cache.get(&k("a")).unwrap());
    drop(cache.get(&k("b")).unwrap());
    watch.sample().unwrap();
    assert_eq!(watch.level(), PressureLevel::High); // 800 of 1000
    drop(cache.get(&k("c")).unwrap());
    assert_eq!(*log.lock(), [(k("a"), EvictReason::Pressure)]);
    assert_eq!(watch.level(), PressureLevel::Low); // 400 of 1000
    assert!(cache.contains(&k("b")) && cache.contains(&k("c")));
}

#[test]
fn a_load_that_cannot_fit_is_refused_after_evicting_what_it_may() {
    let (cache, watch, log) = setup(&[("pinned", 600), ("idle", 100), ("big", 500)]);
    drop(cache.get(&k("pinned")).unwrap());
    cache.pin(&k("pinned")).unwrap();
    drop(cache.get(&k("idle")).unwrap());
    match cache.get(&k("big")) {
        Err(CacheError::InsufficientMemory { needed, free, .. }) => {
            assert_eq!((needed, free), (500, 400));
        }
        other => panic!("expected InsufficientMemory, got {other:?}"),
    }
    assert_eq!(*log.lock(), [(k("idle"), EvictReason::Pressure)]);
    assert!(cache.contains(&k("pinned")));
    assert!(!cache.contains(&k("big")));
    assert_eq!(watch.latest().used, 600);
}

#[test]
fn memory_held_by_a_user_is_freed_when_the_last_handle_goes() {
    let (cache, watch, _) = setup(&[("a", 300)]);
    let a = cache.get(&k("a")).unwrap();
    assert!(cache.evict(&k("a")));
    watch.sample().unwrap();
    assert_eq!(watch.latest().used, 300, "the user still holds it");
    drop(a);
    watch.sample().unwrap();
    assert_eq!(watch.latest().used, 0);
}
