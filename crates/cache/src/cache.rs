//! [`ModelCache`]: which models stay loaded.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchyard_core::{DeviceId, SharedClock, SystemClock, panic_message};
use switchyard_vram::{MemoryWatch, PressureLevel};

use crate::flight::Flight;
use crate::policy::{Candidate, EvictReason, EvictionPolicy, gdsf_priority, seconds, worse};
use crate::{CacheError, CacheStats, Loader, ModelStats, Result};

/// Settings of a [`ModelCache`].
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// The device models are loaded on (one cache per device).
    pub device: DeviceId,
    /// Most models held at once (pinned ones may exceed it).
    pub max_entries: Option<usize>,
    /// Most bytes held at once, as the loader weighs models.
    pub max_bytes: Option<u64>,
    /// How victims are chosen.
    pub policy: EvictionPolicy,
    /// How long an unused model stays loaded (Ollama's `keep_alive`; 5
    /// minutes by default); enforced by [`ModelCache::expire_idle`] and the
    /// reaper thread. `None` keeps models until something else evicts them.
    pub keep_alive: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            device: DeviceId::Cpu,
            max_entries: None,
            max_bytes: None,
            policy: EvictionPolicy::Lru,
            keep_alive: Some(Duration::from_secs(300)),
        }
    }
}

pub(crate) struct Entry<V> {
    pub(crate) value: Arc<V>,
    pub(crate) bytes: u64,
    cost: f64,
    frequency: u64,
    priority: f64,
    last_used: u64,
    pub(crate) last_access: Instant,
    pub(crate) pinned: bool,
}

impl<V> Entry<V> {
    pub(crate) fn in_use(&self) -> bool {
        Arc::strong_count(&self.value) > 1
    }
}

pub(crate) enum Slot<V> {
    Loading(Arc<Flight<V>>),
    Ready(Entry<V>),
}

pub(crate) struct State<K, V> {
    pub(crate) slots: HashMap<K, Slot<V>>,
    tick: u64,
    inflation: f64,
    pub(crate) bytes: u64,
    stats: CacheStats<K>,
    models: HashMap<K, ModelStats>,
    pub(crate) keep_alive: HashMap<K, Option<Duration>>,
}

impl<K, V> State<K, V> {
    /// Models loaded (not counting loads under way).
    pub(crate) fn ready(&self) -> usize {
        self.slots
            .values()
            .filter(|s| matches!(s, Slot::Ready(_)))
            .count()
    }
}

type Listener<K> = Arc<dyn Fn(&K, EvictReason) + Send + Sync>;

pub(crate) struct Inner<K, V> {
    loader: Arc<dyn Loader<K, V>>,
    pub(crate) config: CacheConfig,
    pub(crate) clock: SharedClock,
    memory: Option<Arc<MemoryWatch>>,
    pub(crate) state: Mutex<State<K, V>>,
    listeners: Mutex<Vec<Listener<K>>>,
}

/// A cache of loaded models, keyed by `K`, holding `Arc<V>`s.
///
/// - `get` returns a hit at once; a miss runs the [`Loader`] once however
///   many threads ask at the same time (single flight), and a failed load
///   reaches all of them and is not cached.
/// - Limits by count and by bytes; victims by [`EvictionPolicy`] (LRU, or
///   GDSF), models nobody uses before models in use, pinned ones never.
///   Eviction drops the cache's `Arc`: a model in use stays alive for its
///   users and is freed when the last handle goes.
/// - With a [`MemoryWatch`], a load first evicts while the device is at
///   High pressure (until the watch's hysteresis brings it to Moderate),
///   then evicts until the loader's size estimate fits, and refuses with
///   [`CacheError::InsufficientMemory`] if it still does not.
///
/// ```
/// use std::sync::Arc;
/// use switchyard_cache::{CacheConfig, LoadError, Loaded, Loader, ModelCache};
/// use switchyard_core::DeviceId;
///
/// struct Files;
/// impl Loader<String, Vec<u8>> for Files {
///     fn load(&self, key: &String, _: DeviceId) -> Result<Loaded<Vec<u8>>, LoadError> {
///         let weights = vec![0u8; key.len() * 1000];
///         Ok(Loaded { bytes: weights.len() as u64, value: weights })
///     }
/// }
///
/// let config = CacheConfig { max_entries: Some(1), ..CacheConfig::default() };
/// let cache = ModelCache::new(Files, config);
/// let a = cache.get(&"model-a".to_string())?;
/// let again = cache.get(&"model-a".to_string())?; // a hit
/// assert!(Arc::ptr_eq(&a, &again));
/// cache.get(&"model-bb".to_string())?; // evicts model-a (one entry at most)
/// assert!(!cache.contains(&"model-a".to_string()));
/// assert_eq!(a.len(), 7000); // still alive for its holder
/// # Ok::<(), switchyard_cache::CacheError>(())
/// ```
pub struct ModelCache<K, V> {
    pub(crate) inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for ModelCache<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

fn name<K: fmt::Debug>(key: &K) -> String {
    format!("{key:?}")
}

impl<K, V> ModelCache<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// A cache over `loader`.
    pub fn new(loader: impl Loader<K, V> + 'static, config: CacheConfig) -> Self {
        Self::build(Arc::new(loader), config, SystemClock::shared(), None)
    }

    /// A cache that also watches device memory (see the type's docs).
    pub fn with_memory(
        loader: impl Loader<K, V> + 'static,
        config: CacheConfig,
        memory: Arc<MemoryWatch>,
    ) -> Self {
        Self::build(
            Arc::new(loader),
            config,
            SystemClock::shared(),
            Some(memory),
        )
    }

    /// The general constructor: a shared loader, a clock (a manual one in
    /// tests of keep-alive), and an optional memory watch.
    pub fn build(
        loader: Arc<dyn Loader<K, V>>,
        config: CacheConfig,
        clock: SharedClock,
        memory: Option<Arc<MemoryWatch>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                loader,
                config,
                clock,
                memory,
                state: Mutex::new(State {
                    slots: HashMap::new(),
                    tick: 0,
                    inflation: 0.0,
                    bytes: 0,
                    stats: CacheStats::default(),
                    models: HashMap::new(),
                    keep_alive: HashMap::new(),
                }),
                listeners: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    pub(crate) fn estimate(&self, key: &K) -> Option<u64> {
        self.inner
            .loader
            .estimate_bytes(key, self.inner.config.device)
    }

    /// The model for `key`, loading it if needed.
    pub fn get(&self, key: &K) -> Result<Arc<V>> {
        let flight = {
            let mut st = self.inner.state.lock();
            let now = self.inner.clock.now();
            st.tick += 1;
            let (tick, inflation) = (st.tick, st.inflation);
            match st.slots.get_mut(key) {
                Some(Slot::Ready(e)) => {
                    e.frequency += 1;
                    e.last_used = tick;
                    e.last_access = now;
                    e.priority = gdsf_priority(inflation, e.frequency, e.cost, e.bytes);
                    let value = Arc::clone(&e.value);
                    st.stats.hits += 1;
                    // A loaded model has its stats from the load: no key clone
                    // on the hit path.
                    if let Some(m) = st.models.get_mut(key) {
                        m.hits += 1;
                    }
                    return Ok(value);
                }
                Some(Slot::Loading(f)) => {
                    let f = Arc::clone(f);
                    st.stats.hits += 1;
                    drop(st);
                    return f.wait();
                }
                None => {
                    st.stats.misses += 1;
                    let f = Arc::new(Flight::new());
                    st.slots.insert(key.clone(), Slot::Loading(Arc::clone(&f)));
                    f
                }
            }
        };
        let result = self.load(key);
        if let Err(e) = &result {
            let mut st = self.inner.state.lock();
            st.slots.remove(key);
            if matches!(e, CacheError::InsufficientMemory { .. }) {
                st.stats.refused += 1;
            } else {
                st.stats.failures += 1;
                st.models.entry(key.clone()).or_default().failures += 1;
            }
        }
        flight.finish(result.clone());
        result
    }

    fn load(&self, key: &K) -> Result<Arc<V>> {
        let inner = &self.inner;
        let device = inner.config.device;
        let estimate = inner.loader.estimate_bytes(key, device);
        self.make_room(key, estimate)?;
        let started = inner.clock.now();
        let span = tracing::info_span!("load", model = ?key, device = %device);
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            span.in_scope(|| inner.loader.load(key, device))
        }));
        let took = inner.clock.now().saturating_duration_since(started);
        let loaded = match loaded {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(source)) => {
                return Err(CacheError::Load {
                    model: name(key),
                    source: Arc::from(source),
                });
            }
            Err(payload) => {
                return Err(CacheError::LoaderPanicked {
                    model: name(key),
                    message: panic_message(&*payload),
                });
            }
        };
        let value = Arc::new(loaded.value);
        let cost = inner.loader.cost(key).unwrap_or_else(|| seconds(took));
        let evicted = {
            let mut st = inner.state.lock();
            st.tick += 1;
            let entry = Entry {
                value: Arc::clone(&value),
                bytes: loaded.bytes,
                cost,
                frequency: 1,
                priority: gdsf_priority(st.inflation, 1, cost, loaded.bytes),
                last_used: st.tick,
                last_access: inner.clock.now(),
                pinned: false,
            };
            st.bytes += loaded.bytes;
            st.slots.insert(key.clone(), Slot::Ready(entry));
            st.stats.loads += 1;
            let m = st.models.entry(key.clone()).or_default();
            m.loads += 1;
            m.bytes = loaded.bytes;
            m.last_load_time = Some(took);
            m.total_load_time += took;
            self.evict_over_limits(&mut st, Some(key))
        };
        self.notify(evicted);
        Ok(value)
    }

    fn over_limits(&self, st: &State<K, V>) -> bool {
        let c = &self.inner.config;
        let entries = st.ready();
        c.max_entries.is_some_and(|m| entries > m) || c.max_bytes.is_some_and(|m| st.bytes > m)
    }

    /// Evict the policy's victims (never `protect`) while the cache is over
    /// its limits and a victim is left; the caller notifies outside the lock.
    fn evict_over_limits(
        &self,
        st: &mut State<K, V>,
        protect: Option<&K>,
    ) -> Vec<(K, Arc<V>, EvictReason)> {
        let mut evicted = Vec::new();
        while self.over_limits(st) {
            match self.evict_one(st, protect, EvictReason::Capacity) {
                Some(e) => evicted.push(e),
                None => break,
            }
        }
        evicted
    }

    /// Free room for a load of `key` weighing `estimate`: the byte limit,
    /// then device pressure, then the device's free memory.
    fn make_room(&self, key: &K, estimate: Option<u64>) -> Result<()> {
        let inner = &self.inner;
        if let (Some(limit), Some(needed)) = (inner.config.max_bytes, estimate) {
            loop {
                let evicted = {
                    let mut st = inner.state.lock();
                    if st.bytes.saturating_add(needed) <= limit {
                        break;
                    }
                    match self.evict_one(&mut st, Some(key), EvictReason::Capacity) {
                        Some(e) => e,
                        None => {
                            return Err(CacheError::InsufficientMemory {
                                model: name(key),
                                needed,
                                free: limit.saturating_sub(st.bytes),
                            });
                        }
                    }
                };
                self.notify(vec![evicted]);
            }
        }
        let Some(watch) = &inner.memory else {
            return Ok(());
        };
        // A failed read keeps the last good one: decide on that.
        let _ = watch.sample();
        while watch.level() >= PressureLevel::High {
            if !self.evict_for_pressure(key) {
                break;
            }
        }
        let Some(needed) = estimate else {
            return Ok(());
        };
        loop {
            let free = watch.latest().free;
            if needed <= free {
                return Ok(());
            }
            if !self.evict_for_pressure(key) {
                return Err(CacheError::InsufficientMemory {
                    model: name(key),
                    needed,
                    free,
                });
            }
        }
    }

    /// Evict one entry, let its memory go, and read the device again.
    fn evict_for_pressure(&self, key: &K) -> bool {
        let evicted = {
            let mut st = self.inner.state.lock();
            self.evict_one(&mut st, Some(key), EvictReason::Pressure)
        };
        let Some(evicted) = evicted else {
            return false;
        };
        self.notify(vec![evicted]);
        if let Some(watch) = &self.inner.memory {
            let _ = watch.sample();
        }
        true
    }

    /// Remove the policy's victim (never pinned, never `protect`, never a
    /// loading slot); its value is dropped by the caller outside the lock.
    pub(crate) fn evict_one(
        &self,
        st: &mut State<K, V>,
        protect: Option<&K>,
        reason: EvictReason,
    ) -> Option<(K, Arc<V>, EvictReason)> {
        let policy = self.inner.config.policy;
        let mut best: Option<(&K, Candidate)> = None;
        for (k, slot) in &st.slots {
            let Slot::Ready(e) = slot else { continue };
            if e.pinned || protect == Some(k) {
                continue;
            }
            let c = Candidate {
                last_used: e.last_used,
                priority: e.priority,
                in_use: e.in_use(),
            };
            if best.as_ref().is_none_or(|(_, b)| worse(policy, &c, b)) {
                best = Some((k, c));
            }
        }
        let victim = best?.0.clone();
        self.remove_entry(st, &victim, reason)
    }

    pub(crate) fn remove_entry(
        &self,
        st: &mut State<K, V>,
        key: &K,
        reason: EvictReason,
    ) -> Option<(K, Arc<V>, EvictReason)> {
        let Some(Slot::Ready(entry)) = st.slots.remove(key) else {
            return None;
        };
        st.bytes -= entry.bytes;
        st.stats.evictions += 1;
        if self.inner.config.policy == EvictionPolicy::Gdsf {
            st.inflation = st.inflation.max(entry.priority);
        }
        Some((key.clone(), entry.value, reason))
    }

    /// Call the listeners for evicted entries, then drop the cache's
    /// references (outside the state lock: dropping a model can be slow).
    pub(crate) fn notify(&self, evicted: Vec<(K, Arc<V>, EvictReason)>) {
        if evicted.is_empty() {
            return;
        }
        let listeners: Vec<Listener<K>> = self.inner.listeners.lock().clone();
        for (key, value, reason) in evicted {
            for l in &listeners {
                let _ = catch_unwind(AssertUnwindSafe(|| l(&key, reason)));
            }
            drop(value);
        }
    }

    /// Call `listener` with each evicted key and why.
    pub fn on_evict(&self, listener: impl Fn(&K, EvictReason) + Send + Sync + 'static) {
        self.inner.listeners.lock().push(Arc::new(listener));
    }

    /// Whether `key` is loaded now.
    pub fn contains(&self, key: &K) -> bool {
        matches!(self.inner.state.lock().slots.get(key), Some(Slot::Ready(_)))
    }

    /// Models loaded now.
    pub fn len(&self) -> usize {
        self.inner.state.lock().ready()
    }

    /// Whether no model is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep `key` loaded whatever the limits, pressure or idleness.
    pub fn pin(&self, key: &K) -> Result<()> {
        match self.inner.state.lock().slots.get_mut(key) {
            Some(Slot::Ready(e)) => {
                e.pinned = true;
                Ok(())
            }
            _ => Err(CacheError::NotLoaded { model: name(key) }),
        }
    }

    /// Let `key` be evicted again. Returns whether it was pinned.
    ///
    /// Pinned models may hold the cache above its limits; unpinning one
    /// evicts the policy's victims (possibly `key` itself) until the cache is
    /// back within them.
    pub fn unpin(&self, key: &K) -> bool {
        let (was, evicted) = {
            let mut st = self.inner.state.lock();
            let was = match st.slots.get_mut(key) {
                Some(Slot::Ready(e)) => std::mem::replace(&mut e.pinned, false),
                _ => false,
            };
            let evicted = if was {
                self.evict_over_limits(&mut st, None)
            } else {
                Vec::new()
            };
            (was, evicted)
        };
        self.notify(evicted);
        was
    }

    /// Set `key`'s keep-alive (now and for later loads), overriding the
    /// configured default; `None` keeps it until something else evicts it.
    pub fn set_keep_alive(&self, key: &K, keep_alive: Option<Duration>) {
        self.inner
            .state
            .lock()
            .keep_alive
            .insert(key.clone(), keep_alive);
    }

    /// Evict `key` unless it is pinned. Returns whether it was evicted.
    pub fn evict(&self, key: &K) -> bool {
        let evicted = {
            let mut st = self.inner.state.lock();
            match st.slots.get(key) {
                Some(Slot::Ready(e)) if !e.pinned => {
                    self.remove_entry(&mut st, key, EvictReason::Manual)
                }
                _ => None,
            }
        };
        let found = evicted.is_some();
        self.notify(evicted.into_iter().collect());
        found
    }

    /// Counters, gauges and per-model history.
    pub fn stats(&self) -> CacheStats<K> {
        let st = self.inner.state.lock();
        let mut stats = st.stats.clone();
        stats.entries = st.ready();
        stats.loading = st.slots.len() - stats.entries;
        stats.bytes = st.bytes;
        stats.models = st.models.iter().map(|(k, m)| (k.clone(), *m)).collect();
        stats
    }
}

impl<K, V> fmt::Debug for ModelCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("ModelCache")
            .field("device", &self.inner.config.device)
            .field("slots", &st.slots.len())
            .field("bytes", &st.bytes)
            .finish()
    }
}
