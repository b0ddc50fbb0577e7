//! Limits, policies, pinning, keep-alive, planning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Model, TestLoader, k};
use parking_lot::Mutex;
use switchyard_cache::{CacheConfig, CacheError, EvictReason, EvictionPolicy, ModelCache};
use switchyard_core::{ManualClock, SharedClock, SystemClock};

type EvictionLog = Arc<Mutex<Vec<(String, EvictReason)>>>;

fn cache_with(
    loader: TestLoader,
    config: CacheConfig,
    clock: SharedClock,
) -> (ModelCache<String, Model>, EvictionLog) {
    let cache = ModelCache::build(Arc::new(loader), config, clock, None);
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    cache.on_evict(move |key, why| sink.lock().push((key.clone(), why)));
    (cache, log)
}

fn limited(entries: Option<usize>, bytes: Option<u64>, policy: EvictionPolicy) -> CacheConfig {
    CacheConfig {
        max_entries: entries,
        max_bytes: bytes,
        policy,
        ..CacheConfig::default()
    }
}

#[test]
fn lru_by_count_evicts_the_least_recently_used_and_users_keep_theirs() {
    let (cache, log) = cache_with(
        TestLoader::default(),
        limited(Some(2), None, EvictionPolicy::Lru),
        SystemClock::shared(),
    );
    let a = cache.get(&k("a")).unwrap();
    drop(cache.get(&k("b")).unwrap());
    drop(cache.get(&k("a")).unwrap()); // a is now the most recent
    cache.get(&k("c")).unwrap();
    assert_eq!(*log.lock(), [(k("b"), EvictReason::Capacity)]);
    // An idle model goes before one in use, whatever the recency.
    drop(cache.get(&k("d")).unwrap());
    assert!(cache.contains(&k("a")), "a is in use");
    assert_eq!(a.name, "a");
    assert_eq!(cache.len(), 2);
}

#[test]
fn the_byte_limit_makes_room_before_loading_and_refuses_what_cannot_fit() {
    let loader = TestLoader::weighing(&[("a", 600), ("b", 300), ("c", 500), ("huge", 2000)]);
    let (cache, log) = cache_with(
        loader,
        limited(None, Some(1000), EvictionPolicy::Lru),
        SystemClock::shared(),
    );
    drop(cache.get(&k("a")).unwrap());
    drop(cache.get(&k("b")).unwrap());
    drop(cache.get(&k("c")).unwrap()); // 900 + 500 > 1000: a goes first
    assert_eq!(*log.lock(), [(k("a"), EvictReason::Capacity)]);
    assert_eq!(cache.stats().bytes, 800);
    match cache.get(&k("huge")) {
        Err(CacheError::InsufficientMemory { needed, free, .. }) => {
            assert_eq!((needed, free), (2000, 1000));
        }
        other => panic!("expected InsufficientMemory, got {other:?}"),
    }
    assert!(!cache.contains(&k("huge")));
}

#[test]
fn gdsf_keeps_the_expensive_popular_model_where_lru_would_not() {
    let run = |policy| {
        let mut loader = TestLoader::weighing(&[("slow", 100), ("quick", 100), ("new", 100)]);
        loader.costs.insert(k("slow"), 30.0);
        loader.costs.insert(k("quick"), 0.1);
        loader.costs.insert(k("new"), 1.0);
        let (cache, log) = cache_with(
            loader,
            limited(Some(2), None, policy),
            SystemClock::shared(),
        );
        for _ in 0..5 {
            drop(cache.get(&k("slow")).unwrap());
        }
        drop(cache.get(&k("quick")).unwrap());
        drop(cache.get(&k("new")).unwrap());
        log.lock()[0].0.clone()
    };
    assert_eq!(run(EvictionPolicy::Lru), "slow");
    assert_eq!(run(EvictionPolicy::Gdsf), "quick");
}

#[test]
fn pinned_models_stay_through_limits_and_clear() {
    let (cache, _) = cache_with(
        TestLoader::default(),
        limited(Some(1), None, EvictionPolicy::Lru),
        SystemClock::shared(),
    );
    assert!(matches!(
        cache.pin(&k("a")),
        Err(CacheError::NotLoaded { .. })
    ));
    drop(cache.get(&k("a")).unwrap());
    cache.pin(&k("a")).unwrap();
    drop(cache.get(&k("b")).unwrap());
    // The pinned model stays; the model just asked for is kept too, over
    // the limit, until the next load can evict it.
    assert!(cache.contains(&k("a")) && cache.contains(&k("b")));
    drop(cache.get(&k("c")).unwrap());
    assert!(cache.contains(&k("a")) && !cache.contains(&k("b")));
    assert!(!cache.evict(&k("a")));
    assert_eq!(cache.clear(), 1); // c
    assert!(cache.contains(&k("a")));
    assert!(cache.unpin(&k("a")));
    assert!(!cache.unpin(&k("a")));
    assert_eq!(cache.clear(), 1);
    assert!(cache.is_empty());
}

#[test]
fn unpinning_evicts_back_within_the_limits() {
    let (cache, log) = cache_with(
        TestLoader::default(),
        limited(Some(3), None, EvictionPolicy::Lru),
        SystemClock::shared(),
    );
    for name in ["a", "b", "c"] {
        drop(cache.get(&k(name)).unwrap());
        cache.pin(&k(name)).unwrap();
    }
    // Three pinned models leave no victim: the fourth is kept over the limit.
    drop(cache.get(&k("d")).unwrap());
    assert_eq!(cache.len(), 4);
    assert!(log.lock().is_empty());
    // Unpinning one makes a victim, and the cache goes back to its limit at
    // once rather than at the next load (the least recently used goes).
    assert!(cache.unpin(&k("a")));
    assert_eq!(cache.len(), 3);
    assert_eq!(*log.lock(), [(k("a"), EvictReason::Capacity)]);
    assert!(cache.contains(&k("b")) && cache.contains(&k("c")) && cache.contains(&k("d")));
    // Within the limits, unpinning evicts nothing.
    assert!(cache.unpin(&k("b")));
    assert_eq!(cache.len(), 3);
    assert_eq!(log.lock().len(), 1);
}

#[test]
fn idle_models_unload_after_their_keep_alive_unless_in_use() {
    let clock = ManualClock::new();
    let config = CacheConfig {
        keep_alive: Some(Duration::from_secs(60)),
        ..CacheConfig::default()
    };
    let (cache, log) = cache_with(TestLoader::default(), config, clock.shared());
    drop(cache.get(&k("idle")).unwrap());
    let busy = cache.get(&k("busy")).unwrap();
    drop(cache.get(&k("forever")).unwrap());
    cache.set_keep_alive(&k("forever"), None);
    clock.advance(Duration::from_secs(59));
    assert_eq!(cache.expire_idle(), 0);
    clock.advance(Duration::from_secs(2));
    assert_eq!(cache.expire_idle(), 1);
    assert_eq!(*log.lock(), [(k("idle"), EvictReason::Idle)]);
    drop(busy);
    assert_eq!(cache.expire_idle(), 1);
    assert!(cache.contains(&k("forever")));
}

#[test]
fn the_reaper_thread_unloads_idle_models() {
    let config = CacheConfig {
        keep_alive: Some(Duration::from_millis(5)),
        ..CacheConfig::default()
    };
    let (cache, _) = cache_with(TestLoader::default(), config, SystemClock::shared());
    drop(cache.get(&k("a")).unwrap());
    let reaper = cache.spawn_reaper(Duration::from_millis(2));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.contains(&k("a")) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(reaper);
    assert!(!cache.contains(&k("a")));
}

#[test]
fn plan_for_unloads_the_unneeded_and_loads_the_queued_within_limits() {
    let (cache, log) = cache_with(
        TestLoader::default(),
        limited(Some(3), None, EvictionPolicy::Lru),
        SystemClock::shared(),
    );
    for key in ["a", "b", "c"] {
        drop(cache.get(&k(key)).unwrap());
    }
    let report = cache.plan_for(&[k("c"), k("d"), k("d"), k("e"), k("f"), k("g")]);
    assert_eq!(report.present, [k("c")]);
    assert_eq!(report.loaded, [k("d"), k("e")]);
    assert_eq!(report.skipped, [k("f"), k("g")]);
    let mut evicted = report.evicted.clone();
    evicted.sort();
    assert_eq!(evicted, [k("a"), k("b")]);
    assert!(log.lock().iter().all(|(_, why)| *why == EvictReason::Plan));
    assert_eq!(cache.len(), 3);
}
