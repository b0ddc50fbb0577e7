//! Criterion bench: one all-MiniLM-L6-v2 embedding, batch of 1 and of 8.

// A bench that cannot load its model has nothing to measure: failing loudly is right.
#![allow(clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard::core::DeviceId;
use switchyard::text::{BertEmbedder, Embedder};
use switchyard_testkit::fetch;

fn embed(c: &mut Criterion) {
    let dir = fetch::minilm_dir().expect("fetch all-MiniLM-L6-v2");
    let embedder = BertEmbedder::load(&dir, DeviceId::Cpu).expect("load all-MiniLM-L6-v2");
    let one = ["Switchyard sorts incoming requests by model into batches."];
    let eight: Vec<&str> = std::iter::repeat_n(one[0], 8).collect();
    let mut group = c.benchmark_group("minilm_embed");
    group.sample_size(20);
    group.bench_function("batch_1", |b| {
        b.iter(|| embedder.embed(&one).expect("embed"))
    });
    group.bench_function("batch_8", |b| {
        b.iter(|| embedder.embed(&eight).expect("embed"))
    });
    group.finish();
}

criterion_group!(benches, embed);
criterion_main!(benches);
