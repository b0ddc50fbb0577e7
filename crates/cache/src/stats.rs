//! What the cache reports about itself.

use std::time::Duration;

/// One model's history in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ModelStats {
    /// Successful loads.
    pub loads: u64,
    /// Failed loads.
    pub failures: u64,
    /// `get`s served without loading.
    pub hits: u64,
    /// Bytes it weighed when last loaded.
    pub bytes: u64,
    /// How long the last load took.
    pub last_load_time: Option<Duration>,
    /// All loads together.
    pub total_load_time: Duration,
}

/// Counters and gauges of a [`ModelCache`](crate::ModelCache).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStats<K> {
    /// `get`s served from the cache (including those that waited on a load
    /// another caller started).
    pub hits: u64,
    /// `get`s that started a load.
    pub misses: u64,
    /// Successful loads.
    pub loads: u64,
    /// Failed loads (not cached).
    pub failures: u64,
    /// Loads refused before they started because the model could not fit.
    pub refused: u64,
    /// Entries evicted, for any reason.
    pub evictions: u64,
    /// Models held now.
    pub entries: usize,
    /// Loads under way now.
    pub loading: usize,
    /// Bytes held now (as the loader weighed them).
    pub bytes: u64,
    /// Per model, in no particular order.
    pub models: Vec<(K, ModelStats)>,
}

impl<K> Default for CacheStats<K> {
    fn default() -> Self {
        Self {
            hits: 0,
            misses: 0,
            loads: 0,
            failures: 0,
            refused: 0,
            evictions: 0,
            entries: 0,
            loading: 0,
            bytes: 0,
            models: Vec::new(),
        }
    }
}

impl<K> CacheStats<K> {
    /// Share of `get`s served without a load of their own.
    pub fn hit_rate(&self) -> f64 {
        let all = self.hits + self.misses;
        if all == 0 {
            0.0
        } else {
            self.hits as f64 / all as f64
        }
    }

    /// The same counters with each model's key turned into another (for a
    /// cache keyed by a composite key, reported by name).
    ///
    /// ```
    /// use switchyard_cache::{CacheStats, ModelStats};
    /// let mut stats = CacheStats::<u32>::default();
    /// stats.models.push((7, ModelStats::default()));
    /// assert_eq!(stats.map_keys(|k| format!("model-{k}")).models[0].0, "model-7");
    /// ```
    pub fn map_keys<J>(self, mut f: impl FnMut(K) -> J) -> CacheStats<J> {
        CacheStats {
            hits: self.hits,
            misses: self.misses,
            loads: self.loads,
            failures: self.failures,
            refused: self.refused,
            evictions: self.evictions,
            entries: self.entries,
            loading: self.loading,
            bytes: self.bytes,
            models: self.models.into_iter().map(|(k, m)| (f(k), m)).collect(),
        }
    }
}
