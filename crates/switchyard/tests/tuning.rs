//! Changing batch size and worker threads while the engine serves: loaded
//! replicas follow at once, replicas loaded later start with the change,
//! and bad settings are typed errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use switchyard::{Engine, EngineError, GenerationOptions, ReplicaMetrics, Request};

fn replica(engine: &Engine, model: &str) -> ReplicaMetrics {
    engine.metrics().models[model].replicas[0].clone()
}

fn generate(engine: &Engine) {
    let request = Request::complete("llama", "hello").with_options(GenerationOptions {
        max_tokens: Some(3),
        ..GenerationOptions::default()
    });
    engine.process_sync(request).unwrap();
}

fn embed(engine: &Engine, n: usize) {
    let inputs = (0..n).map(|i| format!("sentence {i}")).collect();
    let vectors = engine.process_sync(Request::embed("bert", inputs)).unwrap();
    assert_eq!(vectors.into_embeddings().unwrap().len(), n);
}

#[test]
fn batch_size_and_workers_change_while_serving_and_survive_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::tiny_text_engine(dir.path(), 7).build().unwrap();
    generate(&engine);
    embed(&engine, 4);
    assert_eq!(
        replica(&engine, "llama").generation.unwrap().max_running,
        16
    );
    let batch = replica(&engine, "bert").batch.unwrap();
    assert_eq!(batch.workers, 1);

    engine.set_batch_size("llama", 2).unwrap();
    engine.set_batch_size("bert", 3).unwrap();
    engine.scale_workers("bert", 3).unwrap();
    generate(&engine);
    embed(&engine, 12);
    assert_eq!(replica(&engine, "llama").generation.unwrap().max_running, 2);
    let batch = replica(&engine, "bert").batch.unwrap();
    assert_eq!(batch.workers, 3);
    // The 4 inputs before the change ran in batches of up to 16; after it
    // none has more than 3.
    assert!(batch.batch_size.max <= 4, "{:?}", batch.batch_size);
    assert!(
        batch.batches >= 5,
        "one batch before, 12 inputs in batches of 3 or fewer after"
    );

    // Unloaded and loaded again: the pipelines start with the new settings.
    assert_eq!(engine.clear_cache(), 2);
    generate(&engine);
    embed(&engine, 6);
    assert_eq!(replica(&engine, "llama").generation.unwrap().max_running, 2);
    let batch = replica(&engine, "bert").batch.unwrap();
    assert_eq!(batch.workers, 3);
    assert!(batch.batch_size.max <= 3, "{:?}", batch.batch_size);

    assert!(matches!(
        engine.set_batch_size("nope", 2),
        Err(EngineError::UnknownModel { .. })
    ));
    assert!(matches!(
        engine.set_batch_size("bert", 0),
        Err(EngineError::InvalidInput { .. })
    ));
    assert!(matches!(
        engine.scale_workers("llama", 2),
        Err(EngineError::Unsupported { .. })
    ));
}
