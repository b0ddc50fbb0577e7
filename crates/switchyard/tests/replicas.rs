//! Data parallelism: a model with two replicas on the CPU (two worker sets,
//! two loaded copies) answers exactly as one copy does, and the three
//! balance strategies spread requests as they promise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use switchyard::config::{Balance, ModelKind, ModelSource, ModelSpec};
use switchyard::{Engine, GenerationOptions, Request};
use switchyard_testkit::tiny;

struct Models {
    _dir: tempfile::TempDir,
    llama: PathBuf,
    bert: PathBuf,
}

fn models() -> Models {
    let dir = tempfile::tempdir().unwrap();
    let tiny::TextModels { llama, bert } = tiny::write_text_models(dir.path(), 7).unwrap();
    Models {
        _dir: dir,
        llama,
        bert,
    }
}

fn engine(m: &Models, replicas: usize, balance: Balance) -> Engine {
    let mut llama = ModelSpec::new(
        "llama",
        ModelKind::TextGeneration,
        ModelSource::Path(m.llama.clone()),
    );
    llama.replicas = replicas;
    llama.balance = balance;
    let mut bert = ModelSpec::new(
        "bert",
        ModelKind::Embedding,
        ModelSource::Path(m.bert.clone()),
    );
    bert.replicas = replicas;
    bert.balance = balance;
    Engine::builder()
        .model(llama)
        .unwrap()
        .model(bert)
        .unwrap()
        .build()
        .unwrap()
}

fn ask(prompt: &str, n: usize) -> Request {
    Request::complete("llama", prompt).with_options(GenerationOptions {
        max_tokens: Some(n),
        ..GenerationOptions::default()
    })
}

fn dispatched(engine: &Engine, model: &str) -> Vec<u64> {
    engine.metrics().models[model]
        .replicas
        .iter()
        .map(|r| r.dispatched)
        .collect()
}

#[test]
fn two_cpu_replicas_answer_as_one_and_take_turns() {
    let m = models();
    let prompts: Vec<String> = (0..8).map(|i| format!("prompt number {i}")).collect();
    let texts = |engine: &Engine| -> Vec<String> {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| engine.submit(ask(p, 12)).unwrap())
            .collect();
        handles
            .into_iter()
            .map(|h| h.wait().unwrap().into_completion().unwrap().text)
            .collect()
    };
    let single = texts(&engine(&m, 1, Balance::RoundRobin));
    let pair = engine(&m, 2, Balance::RoundRobin);
    assert_eq!(
        texts(&pair),
        single,
        "greedy text is the same on either copy"
    );
    assert_eq!(dispatched(&pair, "llama"), [4, 4]);

    let embed = |engine: &Engine| -> Vec<Vec<f32>> {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                engine
                    .submit(Request::embed("bert", vec![p.clone()]))
                    .unwrap()
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.wait().unwrap().into_embeddings().unwrap())
            .collect()
    };
    assert_eq!(embed(&pair), embed(&engine(&m, 1, Balance::RoundRobin)));
    assert_eq!(dispatched(&pair, "bert"), [4, 4]);

    let metrics = pair.metrics();
    for model in ["llama", "bert"] {
        for r in &metrics.models[model].replicas {
            assert!(r.loaded, "{model} replica {} is loaded", r.slot);
            assert_eq!(r.outstanding_units, 0, "every request ended");
            assert!(r.secs_per_unit.is_some(), "its speed was measured");
        }
    }
    // Two loaded copies of each model in the CPU's cache.
    let (_, cache) = &metrics.cache[0];
    let mut names: Vec<&str> = cache.models.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["bert", "bert#1", "llama", "llama#1"]);
    assert_eq!(cache.loads, 4);
    let text = metrics.to_prometheus();
    assert!(
        text.contains(
            "switchyard_replica_dispatched_total{model=\"llama\",device=\"cpu\",slot=\"1\"} 4"
        ),
        "{text}"
    );
    assert!(pair.capabilities().models.iter().all(|m| m.loaded));
}

#[test]
fn least_loaded_sends_work_past_a_busy_replica() {
    let m = models();
    let engine = engine(&m, 2, Balance::LeastLoaded);
    // A long generation holds 200 units on one replica until its handle
    // ends (whether or not its tokens are done).
    let long = engine.submit(ask("a long story", 200)).unwrap();
    while dispatched(&engine, "llama").iter().sum::<u64>() == 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let busy = dispatched(&engine, "llama")
        .iter()
        .position(|&n| n == 1)
        .unwrap();
    for i in 0..5 {
        let text = engine.process_sync(ask(&format!("short {i}"), 4)).unwrap();
        assert!(text.into_completion().is_some());
    }
    let counts = dispatched(&engine, "llama");
    assert_eq!(counts[busy], 1, "nothing more went to the busy replica");
    assert_eq!(counts[1 - busy], 5);
    long.wait().unwrap();
    // Idle again: work alternates between the two.
    for i in 0..4 {
        engine.process_sync(ask(&format!("again {i}"), 2)).unwrap();
    }
    let after = dispatched(&engine, "llama");
    assert_eq!(after.iter().sum::<u64>(), 10);
    assert!(
        after[busy] > 1,
        "the freed replica takes work again: {after:?}"
    );
}

#[test]
fn fastest_measures_both_replicas_and_keeps_serving() {
    let m = models();
    let engine = engine(&m, 2, Balance::Fastest);
    for i in 0..6 {
        engine
            .process_sync(Request::embed("bert", vec![format!("text {i}")]))
            .unwrap();
    }
    let replicas = &engine.metrics().models["bert"].replicas;
    assert_eq!(replicas.len(), 2);
    assert!(
        replicas
            .iter()
            .all(|r| r.dispatched >= 1 && r.secs_per_unit.is_some()),
        "each replica was tried and measured: {replicas:?}"
    );
    assert_eq!(replicas.iter().map(|r| r.dispatched).sum::<u64>(), 6);
}
