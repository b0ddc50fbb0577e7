//! Single-flight loading, failures, panics, preloading, stats.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{Model, TestLoader, k};
use switchyard_cache::{CacheConfig, CacheError, ModelCache};
use switchyard_core::SystemClock;

fn cache(loader: &Arc<TestLoader>, config: CacheConfig) -> ModelCache<String, Model> {
    ModelCache::build(loader.clone(), config, SystemClock::shared(), None)
}

#[test]
fn sixteen_threads_asking_for_one_cold_key_run_exactly_one_load() {
    let loader = Arc::new(TestLoader {
        delay: Duration::from_millis(50),
        ..TestLoader::default()
    });
    let cache = cache(&loader, CacheConfig::default());
    let start = Barrier::new(16);
    let models: Vec<Arc<Model>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    cache.get(&k("smollm2")).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(loader.loads(), 1);
    assert!(models.iter().all(|m| Arc::ptr_eq(m, &models[0])));
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.hits, stats.loads), (1, 15, 1));
}

#[test]
fn a_failed_load_reaches_every_waiter_and_is_not_cached() {
    let loader = Arc::new(TestLoader {
        delay: Duration::from_millis(30),
        ..TestLoader::default()
    });
    loader.fail_times.lock().insert(k("bad"), 1);
    let cache = cache(&loader, CacheConfig::default());
    let start = Barrier::new(8);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    cache.get(&k("bad")).map(drop)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(loader.loads(), 1);
    for r in &results {
        match r {
            Err(CacheError::Load { model, source }) => {
                assert!(model.contains("bad"));
                assert!(source.to_string().contains("corrupt"));
            }
            other => panic!("expected a load error, got {other:?}"),
        }
    }
    assert!(!cache.contains(&k("bad")));
    // Not cached: the next get loads again, and this time it works.
    assert_eq!(cache.get(&k("bad")).unwrap().name, "bad");
    assert_eq!(loader.loads(), 2);
    let stats = cache.stats();
    assert_eq!((stats.failures, stats.loads), (1, 1));
}

#[test]
fn a_panicking_loader_is_a_typed_error_and_the_cache_carries_on() {
    let loader = Arc::new(TestLoader {
        panic_on: vec![k("cursed")],
        ..TestLoader::default()
    });
    let cache = cache(&loader, CacheConfig::default());
    assert!(matches!(
        cache.get(&k("cursed")),
        Err(CacheError::LoaderPanicked { message, .. }) if message.contains("loader bug")
    ));
    assert_eq!(cache.stats().loading, 0);
    assert!(cache.get(&k("fine")).is_ok());
}

#[test]
fn preload_loads_in_the_background_and_stats_keep_per_model_history() {
    let loader = Arc::new(TestLoader {
        delay: Duration::from_millis(5),
        ..TestLoader::weighing(&[("a", 10), ("b", 20)])
    });
    let cache = cache(&loader, CacheConfig::default());
    let handle = cache.preload(k("a"));
    assert!(handle.join().unwrap().is_ok());
    assert!(cache.contains(&k("a")));
    cache.get(&k("a")).unwrap();
    cache.get(&k("b")).unwrap();
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.bytes), (2, 30));
    let a = stats.models.iter().find(|(key, _)| key == "a").unwrap().1;
    assert_eq!((a.loads, a.hits, a.bytes), (1, 1, 10));
    assert!(a.last_load_time.unwrap() >= Duration::from_millis(5));
    assert!((stats.hit_rate() - 1.0 / 3.0).abs() < 1e-9);
}
