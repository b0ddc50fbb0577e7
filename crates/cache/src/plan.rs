//! Background work over a [`ModelCache`]: preloading, planning for queued
//! requests, and the keep-alive reaper.

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::cache::Slot;
use crate::{CacheError, EvictReason, ModelCache, Result};

/// What [`ModelCache::plan_for`] did.
#[derive(Debug, Clone, Default)]
pub struct PlanReport<K> {
    /// Keys it loaded.
    pub loaded: Vec<K>,
    /// Keys that were loaded already.
    pub present: Vec<K>,
    /// Keys it evicted because no queued request needs them.
    pub evicted: Vec<K>,
    /// Keys it left unloaded because the limits were reached.
    pub skipped: Vec<K>,
    /// Keys whose load failed.
    pub failed: Vec<(K, CacheError)>,
}

/// A thread that calls [`ModelCache::expire_idle`] every interval until
/// dropped.
pub struct Reaper {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Reaper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            // expire_idle contains listener panics; a join error is a bug of ours.
            let _ = t.join();
        }
    }
}

impl<K, V> ModelCache<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Load `key` on a thread of its own; join the handle for the outcome.
    pub fn preload(&self, key: K) -> JoinHandle<Result<()>> {
        let cache = self.clone();
        std::thread::spawn(move || cache.get(&key).map(drop))
    }

    /// Start a thread that unloads idle models every `interval`.
    pub fn spawn_reaper(&self, interval: Duration) -> Reaper {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let cache = self.clone();
        let thread = std::thread::Builder::new()
            .name("switchyard-cache-reaper".to_owned())
            .spawn(move || {
                let (flag, wake) = &*signal;
                let mut stopped = flag.lock();
                while !*stopped {
                    let _ = wake.wait_for(&mut stopped, interval);
                    if *stopped {
                        break;
                    }
                    drop(stopped);
                    cache.expire_idle();
                    stopped = flag.lock();
                }
            })
            .ok();
        Reaper { stop, thread }
    }

    /// Get ready for the queued requests' models `upcoming` (in order of
    /// need, repeats allowed): evict loaded models none of them needs
    /// (unless pinned or in use), then load the missing ones in order while
    /// the limits allow (the seeds' `optimize_loaded_models`).
    pub fn plan_for(&self, upcoming: &[K]) -> PlanReport<K> {
        let mut seen = HashSet::new();
        let wanted: Vec<&K> = upcoming.iter().filter(|k| seen.insert(*k)).collect();
        let mut report = PlanReport {
            loaded: Vec::new(),
            present: Vec::new(),
            evicted: Vec::new(),
            skipped: Vec::new(),
            failed: Vec::new(),
        };
        let evicted: Vec<_> = {
            let mut st = self.inner.state.lock();
            let unwanted: Vec<K> = st
                .slots
                .iter()
                .filter(|(k, s)| {
                    !seen.contains(k) && matches!(s, Slot::Ready(e) if !e.pinned && !e.in_use())
                })
                .map(|(k, _)| k.clone())
                .collect();
            unwanted
                .iter()
                .filter_map(|k| self.remove_entry(&mut st, k, EvictReason::Plan))
                .collect()
        };
        report.evicted = evicted.iter().map(|(k, _, _)| k.clone()).collect();
        self.notify(evicted);
        let config = self.config().clone();
        for key in wanted {
            if self.contains(key) {
                report.present.push(key.clone());
                continue;
            }
            let (entries, bytes) = {
                let st = self.inner.state.lock();
                (st.ready(), st.bytes)
            };
            let estimate = self.estimate(key);
            let full = config.max_entries.is_some_and(|m| entries >= m)
                || matches!((config.max_bytes, estimate), (Some(m), Some(e)) if bytes + e > m);
            if full {
                report.skipped.push(key.clone());
                continue;
            }
            match self.get(key) {
                Ok(_) => report.loaded.push(key.clone()),
                Err(e) => report.failed.push((key.clone(), e)),
            }
        }
        report
    }
}
