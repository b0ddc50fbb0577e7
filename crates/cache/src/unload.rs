//! Unloading many models at once: everything, the idle-too-long, and
//! everything nobody uses (to free memory after an out-of-memory failure).

use std::fmt;
use std::hash::Hash;

use crate::cache::Slot;
use crate::{EvictReason, ModelCache};

impl<K, V> ModelCache<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Evict every model that is not pinned. Returns how many went.
    pub fn clear(&self) -> usize {
        let evicted: Vec<_> = {
            let mut st = self.inner.state.lock();
            let keys: Vec<K> = st
                .slots
                .iter()
                .filter(|(_, s)| matches!(s, Slot::Ready(e) if !e.pinned))
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter()
                .filter_map(|k| self.remove_entry(&mut st, k, EvictReason::Manual))
                .collect()
        };
        let n = evicted.len();
        self.notify(evicted);
        n
    }

    /// Unload every model that nobody uses, that is not pinned, and that
    /// has been idle for its keep-alive. Returns how many went.
    pub fn expire_idle(&self) -> usize {
        let now = self.inner.clock.now();
        let default = self.inner.config.keep_alive;
        let evicted: Vec<_> = {
            let mut st = self.inner.state.lock();
            let idle: Vec<K> = st
                .slots
                .iter()
                .filter_map(|(k, s)| match s {
                    Slot::Ready(e) if !e.pinned && !e.in_use() => {
                        let keep = st.keep_alive.get(k).copied().unwrap_or(default)?;
                        (now.saturating_duration_since(e.last_access) >= keep).then(|| k.clone())
                    }
                    _ => None,
                })
                .collect();
            idle.iter()
                .filter_map(|k| self.remove_entry(&mut st, k, EvictReason::Idle))
                .collect()
        };
        let n = evicted.len();
        self.notify(evicted);
        n
    }

    /// Evict every model that nobody uses and that is not pinned: what
    /// frees memory at once (a model in use lives on with its users). Call
    /// it when something failed for lack of memory. Returns how many went.
    pub fn evict_unused(&self) -> usize {
        let evicted: Vec<_> = {
            let mut st = self.inner.state.lock();
            let unused: Vec<K> = st
                .slots
                .iter()
                .filter(|(_, s)| matches!(s, Slot::Ready(e) if !e.pinned && !e.in_use()))
                .map(|(k, _)| k.clone())
                .collect();
            unused
                .iter()
                .filter_map(|k| self.remove_entry(&mut st, k, EvictReason::Pressure))
                .collect()
        };
        let n = evicted.len();
        self.notify(evicted);
        n
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use switchyard_core::DeviceId;

    use crate::{CacheConfig, LoadError, Loaded, Loader, ModelCache};

    struct Sized;

    impl Loader<u32, u32> for Sized {
        fn load(&self, key: &u32, _: DeviceId) -> Result<Loaded<u32>, LoadError> {
            Ok(Loaded {
                value: *key,
                bytes: u64::from(*key),
            })
        }
    }

    #[test]
    fn evict_unused_spares_models_in_use_and_pinned() {
        let cache = ModelCache::new(Sized, CacheConfig::default());
        let held = cache.get(&1).unwrap();
        cache.get(&2).unwrap();
        cache.get(&3).unwrap();
        cache.pin(&3).unwrap();
        assert_eq!(cache.evict_unused(), 1);
        assert!(cache.contains(&1), "in use");
        assert!(!cache.contains(&2), "unused: evicted");
        assert!(cache.contains(&3), "pinned");
        assert_eq!(cache.stats().bytes, 4);
        drop(held);
        assert_eq!(cache.evict_unused(), 1);
        assert!(!cache.contains(&1));
        assert_eq!(Arc::strong_count(&cache.get(&1).unwrap()), 2);
    }
}
