//! Criterion benches of the pools: a reused 16 MiB buffer against
//! `vec![0u8; 16 MiB]` (each with every page written), KV block allocate +
//! free, append, a prefix-hit admission, and a warm model-cache hit.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard::pool::{BufferPool, KvBlockPool, KvPoolConfig, SeqId};
use switchyard_benches::memory_suites::{fresh_round, pooled_round};

fn buffers(c: &mut Criterion) {
    let pool = BufferPool::new(1 << 30);
    let mut group = c.benchmark_group("buffer_16mib_write_every_page");
    group.bench_function("pooled", |b| b.iter(|| pooled_round(&pool)));
    group.bench_function("vec_zeroed", |b| b.iter(fresh_round));
    group.finish();
}

fn kv_blocks(c: &mut Criterion) {
    let mut config = KvPoolConfig::new(4096, 16);
    config.prefix_caching = false;
    let Ok(mut kv) = KvBlockPool::new(config) else {
        return;
    };
    let one_block: Vec<u32> = (0..16).collect();
    c.bench_function("kv_add_free_1_block", |b| {
        b.iter(|| {
            let _ = black_box(kv.add_sequence(SeqId(1), &one_block));
            let _ = kv.free(SeqId(1));
        })
    });
    let _ = kv.add_sequence(SeqId(1), &one_block);
    let mut token = 0u32;
    c.bench_function("kv_append", |b| {
        b.iter(|| {
            token = token.wrapping_add(1);
            if kv.len(SeqId(1)).unwrap_or(0) > 60_000 {
                let _ = kv.free(SeqId(1));
                let _ = kv.add_sequence(SeqId(1), &one_block);
            }
            black_box(kv.append(SeqId(1), token))
        })
    });
    let Ok(mut cached) = KvBlockPool::new(KvPoolConfig::new(4096, 16)) else {
        return;
    };
    let prompt: Vec<u32> = (0..64).collect();
    if cached.add_sequence(SeqId(0), &prompt).is_ok() && cached.commit(SeqId(0), 64).is_ok() {
        c.bench_function("kv_prefix_hit_64_tokens", |b| {
            b.iter(|| {
                let _ = black_box(cached.add_sequence(SeqId(1), &prompt));
                let _ = cached.free(SeqId(1));
            })
        });
    }
}

fn cache_hits(c: &mut Criterion) {
    use std::sync::Arc;
    use switchyard::cache::{CacheConfig, ModelCache};
    use switchyard_benches::memory_suites::NamedLoader;

    let cache: ModelCache<String, String> = ModelCache::build(
        Arc::new(NamedLoader::default()),
        CacheConfig::default(),
        switchyard::core::SystemClock::shared(),
        None,
    );
    let key = "smollm2-135m-instruct".to_owned();
    if cache.get(&key).is_ok() {
        c.bench_function("cache_warm_hit", |b| b.iter(|| black_box(cache.get(&key))));
    }
}

criterion_group!(benches, buffers, kv_blocks, cache_hits);
criterion_main!(benches);
