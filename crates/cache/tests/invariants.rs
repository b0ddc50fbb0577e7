//! proptest: random gets, evictions, pins, clears and idle expiry keep the
//! cache's books straight and its limits held.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Model, TestLoader, k};
use proptest::prelude::*;
use switchyard_cache::{CacheConfig, CacheError, EvictionPolicy, ModelCache};
use switchyard_core::ManualClock;

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Hold(u8),
    Release,
    Evict(u8),
    Pin(u8),
    Unpin(u8),
    Clear,
    Expire(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..8).prop_map(Op::Get),
        2 => (0u8..8).prop_map(Op::Hold),
        2 => Just(Op::Release),
        1 => (0u8..8).prop_map(Op::Evict),
        1 => (0u8..8).prop_map(Op::Pin),
        1 => (0u8..8).prop_map(Op::Unpin),
        1 => Just(Op::Clear),
        1 => (0u8..90).prop_map(Op::Expire),
    ]
}

fn weight(i: u8) -> u64 {
    100 + 50 * u64::from(i)
}

/// Total weight of the models `pick` selects.
fn weight_of(names: &[String], pick: impl Fn(&String) -> bool) -> u64 {
    names
        .iter()
        .enumerate()
        .filter(|(_, n)| pick(n))
        .map(|(i, _)| weight(i as u8))
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn books_balance_and_limits_hold(
        ops in proptest::collection::vec(op(), 1..60),
        gdsf in any::<bool>(),
    ) {
        let names: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
        let pairs: Vec<(&str, u64)> =
            names.iter().enumerate().map(|(i, n)| (n.as_str(), weight(i as u8))).collect();
        let loader = Arc::new(TestLoader::weighing(&pairs));
        let clock = ManualClock::new();
        let config = CacheConfig {
            max_entries: Some(3),
            max_bytes: Some(1000),
            policy: if gdsf { EvictionPolicy::Gdsf } else { EvictionPolicy::Lru },
            keep_alive: Some(Duration::from_secs(60)),
            ..CacheConfig::default()
        };
        let cache: ModelCache<String, Model> =
            ModelCache::build(loader.clone(), config, clock.shared(), None);
        let mut held: Vec<Arc<Model>> = Vec::new();
        let mut pinned: Vec<String> = Vec::new();
        let mut refused = 0u64;
        for op in ops {
            match op.clone() {
                Op::Get(i) | Op::Hold(i) => {
                    match cache.get(&k(&names[i as usize])) {
                        Ok(m) => {
                            prop_assert_eq!(&m.name, &names[i as usize]);
                            if matches!(op, Op::Hold(_)) {
                                held.push(m);
                            }
                        }
                        // Refused only when the pinned models leave no room.
                        Err(CacheError::InsufficientMemory { needed, free, .. }) => {
                            prop_assert_eq!(free, 1000 - weight_of(&names, |n| pinned.contains(n)));
                            prop_assert!(needed > free);
                            refused += 1;
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Release => { held.pop(); }
                Op::Evict(i) => {
                    let key = k(&names[i as usize]);
                    let was = cache.contains(&key);
                    let gone = cache.evict(&key);
                    prop_assert_eq!(gone, was && !pinned.contains(&key));
                }
                Op::Pin(i) => {
                    let key = k(&names[i as usize]);
                    if cache.pin(&key).is_ok() && !pinned.contains(&key) {
                        pinned.push(key);
                    }
                }
                Op::Unpin(i) => {
                    let key = k(&names[i as usize]);
                    if cache.unpin(&key) {
                        pinned.retain(|p| *p != key);
                    }
                }
                Op::Clear => { cache.clear(); }
                Op::Expire(secs) => {
                    clock.advance(Duration::from_secs(secs.into()));
                    cache.expire_idle();
                }
            }
            // Pinned models are never evicted.
            for p in &pinned {
                prop_assert!(cache.contains(p), "pinned {} evicted", p);
            }
            let stats = cache.stats();
            let resident = weight_of(&names, |n| cache.contains(n));
            prop_assert_eq!(stats.bytes, resident);
            prop_assert_eq!(stats.loading, 0);
            prop_assert_eq!(stats.loads as usize, loader.loads());
            prop_assert_eq!(stats.misses, stats.loads + stats.failures + stats.refused);
            prop_assert_eq!(stats.refused, refused);
            // Limits hold, allowing the pinned ones and the model just asked for.
            let slack = pinned.len() + 1;
            prop_assert!(stats.entries <= 3.max(slack));
            let pinned_bytes = weight_of(&names, |n| pinned.contains(n));
            prop_assert!(stats.bytes <= 1000 + pinned_bytes.max(weight(7)));
            // Held handles stay valid whatever was evicted.
            for m in &held {
                prop_assert!(m.name.starts_with('m'));
            }
        }
    }
}
