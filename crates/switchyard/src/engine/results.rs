//! The result cache (off by default): answers to identical deterministic
//! requests kept in a least-recently-used map.
//!
//! Every request the engine runs is deterministic for a given model:
//! generation is greedy or sampled from an explicit seed (0 by default),
//! embeddings and image operations are pure, and diffusion noise comes
//! from the request's seed. So the key is the model and the whole checked
//! work: prompt or inputs, every sampling or image setting, and the bytes
//! of any input image.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use parking_lot::Mutex;

use crate::engine::Work;
use crate::engine::request::Response;

/// A request's identity in the result cache: 128 bits of two hashes of
/// the model and the work.
pub(crate) type ResultKey = u128;

/// Two SipHash states fed the same bytes with different prefixes.
struct WideHasher(DefaultHasher, DefaultHasher);

impl WideHasher {
    fn new() -> Self {
        let mut second = DefaultHasher::new();
        second.write_u64(0x9e37_79b9_7f4a_7c15);
        Self(DefaultHasher::new(), second)
    }

    fn finish128(&self) -> u128 {
        (u128::from(self.0.finish()) << 64) | u128::from(self.1.finish())
    }
}

impl Hasher for WideHasher {
    fn finish(&self) -> u64 {
        self.0.finish()
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
        self.1.write(bytes);
    }
}

/// The key of `work` on `model`.
pub(crate) fn key_of(model: &str, work: &Work) -> ResultKey {
    let mut h = WideHasher::new();
    model.hash(&mut h);
    match work {
        Work::Generate(prompt, params) => {
            0u8.hash(&mut h);
            format!("{prompt:?}").hash(&mut h);
            format!("{params:?}").hash(&mut h);
        }
        Work::Embed(inputs) => {
            1u8.hash(&mut h);
            inputs.hash(&mut h);
        }
        Work::Process(job) => {
            2u8.hash(&mut h);
            (job.image.width(), job.image.height()).hash(&mut h);
            format!("{:?}", job.image.color()).hash(&mut h);
            job.image.as_bytes().hash(&mut h);
            format!("{:?}", job.ops).hash(&mut h);
        }
        #[cfg(feature = "diffusion")]
        Work::Diffuse(request) => {
            use switchyard_diffusion::DiffusionRequest;
            3u8.hash(&mut h);
            // Through the engine a request has no ControlNets, so its
            // parameters print without image data.
            format!("{:?}", request.params()).hash(&mut h);
            format!("{:?} {}", request.mode(), request.strength()).hash(&mut h);
            if let Some(image) = request.image() {
                image.as_raw().hash(&mut h);
            }
            if let DiffusionRequest::Inpaint(r) = request {
                r.mask.as_raw().hash(&mut h);
                r.keep_unmasked.hash(&mut h);
            }
        }
    }
    h.finish128()
}

/// The result cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResultCacheStats {
    /// Results it keeps at most.
    pub capacity: usize,
    /// Results kept now.
    pub entries: usize,
    /// Requests answered from it.
    pub hits: u64,
    /// Requests it could not answer (they ran).
    pub misses: u64,
}

#[derive(Default)]
struct Lru {
    /// Key to (last use, result).
    entries: HashMap<ResultKey, (u64, Response)>,
    /// Last use to key, oldest first.
    order: BTreeMap<u64, ResultKey>,
    clock: u64,
    hits: u64,
    misses: u64,
}

/// An LRU map of results.
pub(crate) struct ResultCache {
    capacity: usize,
    lru: Mutex<Lru>,
}

impl ResultCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            lru: Mutex::default(),
        }
    }

    /// The result for `key`, counted as a hit or a miss.
    pub(crate) fn get(&self, key: ResultKey) -> Option<Response> {
        let mut lru = self.lru.lock();
        lru.clock += 1;
        let now = lru.clock;
        let Some((used, response)) = lru.entries.get_mut(&key) else {
            lru.misses += 1;
            return None;
        };
        let old = std::mem::replace(used, now);
        let response = response.clone();
        lru.order.remove(&old);
        lru.order.insert(now, key);
        lru.hits += 1;
        Some(response)
    }

    /// Keeps `response` for `key`, dropping the least recently used result
    /// past the capacity.
    pub(crate) fn put(&self, key: ResultKey, response: Response) {
        let mut lru = self.lru.lock();
        lru.clock += 1;
        let now = lru.clock;
        if let Some((old, _)) = lru.entries.insert(key, (now, response)) {
            lru.order.remove(&old);
        }
        lru.order.insert(now, key);
        while lru.entries.len() > self.capacity {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            lru.entries.remove(&oldest);
        }
    }

    pub(crate) fn stats(&self) -> ResultCacheStats {
        let lru = self.lru.lock();
        ResultCacheStats {
            capacity: self.capacity,
            entries: lru.entries.len(),
            hits: lru.hits,
            misses: lru.misses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vectors(n: usize) -> Response {
        Response::Embeddings(crate::engine::request::Embeddings {
            vectors: vec![vec![n as f32]],
            prompt_tokens: n,
        })
    }

    #[test]
    fn keys_tell_models_and_work_apart() {
        let a = Work::Embed(vec!["x".into()]);
        let b = Work::Embed(vec!["y".into()]);
        assert_eq!(key_of("m", &a), key_of("m", &a));
        assert_ne!(key_of("m", &a), key_of("m", &b));
        assert_ne!(key_of("m", &a), key_of("n", &a));
        // Length-prefixed: ["ab"] is not ["a", "b"].
        let joined = Work::Embed(vec!["ab".into()]);
        let split = Work::Embed(vec!["a".into(), "b".into()]);
        assert_ne!(key_of("m", &joined), key_of("m", &split));
    }

    proptest! {
        /// Against a model LRU: same answers, same entries, counts add up.
        #[test]
        fn behaves_like_a_plain_lru(
            capacity in 1usize..6,
            ops in proptest::collection::vec((any::<bool>(), 0u128..10), 1..200),
        ) {
            let cache = ResultCache::new(capacity);
            let mut model: Vec<u128> = Vec::new(); // most recent last
            for (put, key) in ops {
                if put {
                    cache.put(key, vectors(key as usize));
                    model.retain(|k| *k != key);
                    model.push(key);
                    if model.len() > capacity {
                        model.remove(0);
                    }
                } else {
                    let got = cache.get(key);
                    let want = model.contains(&key);
                    prop_assert_eq!(got.is_some(), want);
                    if want {
                        prop_assert_eq!(got, Some(vectors(key as usize)));
                        model.retain(|k| *k != key);
                        model.push(key);
                    }
                }
                prop_assert_eq!(cache.stats().entries, model.len());
            }
        }
    }
}
