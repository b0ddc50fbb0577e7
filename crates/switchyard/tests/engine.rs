//! The engine over tiny real-format models: requests reach the right
//! pipeline and give what the pipeline gives alone; bad requests, bad
//! models, cancellation, timeouts, a memory budget and shutdown end in
//! typed errors while the rest keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

use switchyard::config::{ConfigFormat, ModelKind, ModelSource, ModelSpec, Registry};
use switchyard::core::{DeviceId, Priority};
use switchyard::text::{
    BertEmbedder, Embedder, FinishReason, GenerateRequest, Generator, Prompt, SamplingParams,
};
use switchyard::{
    Engine, EngineError, GenerationOptions, Health, Request, Response, SessionState, ShutdownMode,
};
use switchyard_testkit::tiny::{self, GgufQuant, TinyLlama};

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

fn spec(id: &str, kind: ModelKind, path: &Path) -> ModelSpec {
    ModelSpec::new(id, kind, ModelSource::Path(path.to_owned()))
}

fn engine(m: &Models) -> Engine {
    Engine::builder()
        .model(spec("llama", ModelKind::TextGeneration, &m.llama))
        .unwrap()
        .model(spec("bert", ModelKind::Embedding, &m.bert))
        .unwrap()
        .build()
        .unwrap()
}

fn greedy(n: usize) -> GenerationOptions {
    GenerationOptions {
        max_tokens: Some(n),
        ..GenerationOptions::default()
    }
}

fn ask(prompt: &str, n: usize) -> Request {
    Request::complete("llama", prompt).with_options(greedy(n))
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn generation_through_the_engine_equals_the_pipeline_alone() {
    let m = models();
    let engine = engine(&m);
    let alone = Generator::load(&m.llama, DeviceId::Cpu)
        .unwrap()
        .generate(&GenerateRequest::new(
            Prompt::Text("Once upon a time".into()),
            SamplingParams::greedy(12),
        ))
        .unwrap();
    let waited = engine
        .submit(ask("Once upon a time", 12))
        .unwrap()
        .wait()
        .unwrap()
        .into_completion()
        .unwrap();
    assert_eq!(waited.tokens, alone.tokens);
    assert_eq!(waited.text, alone.text);
    // Streamed, the deltas add up to the same text, the last one finishing.
    let deltas: Vec<_> = engine
        .submit(ask("Once upon a time", 12))
        .unwrap()
        .into_stream()
        .collect::<Result<_, _>>()
        .unwrap();
    let text: String = deltas.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(text, alone.text);
    let last = deltas.last().unwrap().finish.unwrap();
    assert_eq!(last.usage.completion_tokens, alone.tokens.len());
    assert!(
        deltas[..deltas.len() - 1]
            .iter()
            .all(|d| d.finish.is_none())
    );
    // As a future too.
    let polled = block_on(engine.submit(ask("Once upon a time", 12)).unwrap()).unwrap();
    assert_eq!(polled, Response::Completion(alone));
    let metrics = engine.metrics();
    let llama = &metrics.models["llama"];
    assert_eq!((llama.submitted, llama.succeeded, llama.failed), (3, 3, 0));
    assert!(llama.latency.p50 > 0.0 && llama.latency.p99 >= llama.latency.p50);
    assert!(llama.generation.is_some());
    assert!(engine.sessions().is_empty());
}

#[test]
fn embeddings_through_the_engine_equal_the_embedder_alone() {
    let m = models();
    let engine = engine(&m);
    let texts = ["a short one", "a somewhat longer sentence to embed", "x"];
    let embedder = BertEmbedder::load(&m.bert, DeviceId::Cpu).unwrap();
    let alone = embedder.embed(&texts).unwrap();
    let tokens: usize = texts
        .iter()
        .map(|t| embedder.token_ids(t).unwrap().len())
        .sum();
    let inputs: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
    let answer = engine
        .process_sync(Request::embed("bert", inputs.clone()))
        .unwrap()
        .into_embeddings_with_usage()
        .unwrap();
    // The usage is the tokens the model read, special tokens included.
    assert_eq!(answer.prompt_tokens, tokens);
    assert!(tokens > texts.len() * 2);
    let got = answer.vectors;
    assert_eq!(got.len(), alone.len());
    for (g, a) in got.iter().zip(&alone) {
        let worst = g
            .iter()
            .zip(a)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{worst}");
    }
    let polled = block_on(engine.submit(Request::embed("bert", inputs)).unwrap()).unwrap();
    let polled = polled.into_embeddings_with_usage().unwrap();
    assert_eq!((polled.vectors.len(), polled.prompt_tokens), (3, tokens));
    // Embeddings do not stream.
    let mut s = engine
        .submit(Request::embed("bert", vec!["a".into()]))
        .unwrap()
        .into_stream();
    assert!(matches!(
        s.next(),
        Some(Err(EngineError::InvalidInput { .. }))
    ));
    assert!(s.next().is_none());
}

#[test]
fn bad_requests_are_refused_at_submit_and_by_validate() {
    let m = models();
    let engine = engine(&m);
    let cases = [
        (Request::complete("nope", "hi"), "UnknownModel"),
        (Request::embed("llama", vec!["a".into()]), "WrongKind"),
        (Request::complete("bert", "hi"), "WrongKind"),
        (Request::embed("bert", Vec::new()), "InvalidInput"),
        (Request::complete("llama", ""), "InvalidInput"),
        (
            ask("hi", 4).with_options(GenerationOptions {
                top_p: Some(2.0),
                ..GenerationOptions::default()
            }),
            "InvalidInput",
        ),
        (
            Request::embed(
                "bert",
                vec!["a".into(); switchyard::MAX_EMBEDDING_INPUTS + 1],
            ),
            "InvalidInput",
        ),
    ];
    for (request, want) in cases {
        let by_validate = engine.validate(&request).unwrap_err();
        let by_submit = engine.submit(request).unwrap_err();
        assert_eq!(by_validate, by_submit);
        assert!(format!("{by_submit:?}").starts_with(want), "{by_submit:?}");
    }
    assert!(engine.validate(&ask("hi", 4)).is_ok());
    assert!(!engine.metrics().models.contains_key("nope"));
}

#[test]
fn cancelling_by_id_ends_a_running_generation() {
    // A long context, so the generation is still running when cancelled.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.gguf");
    let long = TinyLlama {
        max_position_embeddings: 8192,
        ..TinyLlama::default()
    };
    tiny::write_llama_gguf(&path, &long, GgufQuant::Q8_0, 7).unwrap();
    let engine = Engine::builder()
        .model(spec("llama", ModelKind::TextGeneration, &path))
        .unwrap()
        .kv_tokens(8192)
        .build()
        .unwrap();
    let ask = |n: usize| {
        Request::complete("llama", "Tell me a story").with_options(GenerationOptions {
            max_tokens: Some(n),
            ignore_eos: true,
            ..GenerationOptions::default()
        })
    };
    let handle = engine.submit(ask(8000)).unwrap();
    let id = handle.id();
    let mut stream = handle.into_stream();
    let first = stream.next().unwrap().unwrap();
    assert!(first.finish.is_none());
    let running = engine.sessions();
    assert_eq!(running.len(), 1);
    assert_eq!(
        (running[0].id, running[0].state),
        (id, SessionState::Running)
    );
    assert_eq!(running[0].progress.1, 8000);
    // The one-lookup form agrees: the same total, at least as far along.
    let (done, total) = engine.progress(id).unwrap();
    assert_eq!(total, 8000);
    assert!(done >= running[0].progress.0);
    assert!(engine.cancel(id));
    let rest: Vec<_> = stream.collect();
    let last = rest.last().unwrap();
    assert!(
        matches!(last, Ok(d) if d.finish.map(|f| f.reason) == Some(FinishReason::Cancelled)),
        "{last:?}"
    );
    assert!(engine.sessions().is_empty());
    assert_eq!(engine.progress(id), None);
    assert!(!engine.cancel(id));
    assert_eq!(engine.metrics().models["llama"].cancelled, 1);
    // Cancelling through the handle, waited: Cancelled.
    let h = engine.submit(ask(8000)).unwrap();
    h.cancel();
    assert_eq!(h.wait(), Err(EngineError::Cancelled));
}

#[test]
fn a_timeout_passed_before_starting_is_timed_out() {
    let m = models();
    let engine = engine(&m);
    let e = engine
        .submit(ask("hi", 4).with_timeout(Duration::ZERO))
        .unwrap()
        .wait()
        .unwrap_err();
    assert_eq!(e, EngineError::TimedOut);
    assert_eq!(engine.metrics().models["llama"].timed_out, 1);
}

#[test]
fn a_model_that_fails_to_load_fails_its_requests_and_the_rest_keep_serving() {
    let m = models();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.gguf");
    std::fs::write(&broken, b"GGUF but not really").unwrap();
    let engine = Engine::builder()
        .model(spec("broken", ModelKind::TextGeneration, &broken))
        .unwrap()
        .model(spec("bert", ModelKind::Embedding, &m.bert))
        .unwrap()
        .model(spec(
            "gone",
            ModelKind::Embedding,
            &dir.path().join("missing"),
        ))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(engine.health(), Health::Healthy);
    let e = engine
        .submit(Request::complete("broken", "hi"))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::ModelLoad { model, .. } if model == "broken"),
        "{e:?}"
    );
    assert!(matches!(engine.health(), Health::Degraded { .. }));
    let e = engine
        .submit(Request::embed("gone", vec!["a".into()]))
        .unwrap()
        .wait()
        .unwrap_err();
    match e {
        EngineError::Config(c) => {
            assert_eq!(c.model.as_deref(), Some("gone"));
            assert_eq!(c.field.as_deref(), Some("path"));
        }
        other => panic!("{other:?}"),
    }
    let ok = engine.process_sync(Request::embed("bert", vec!["still here".into()]));
    assert_eq!(ok.unwrap().into_embeddings().unwrap().len(), 1);
    assert_eq!(engine.metrics().models["broken"].failed, 1);
}

#[test]
fn two_models_that_do_not_fit_together_take_turns_under_a_budget() {
    let m = models();
    let probe = engine(&m);
    probe.process_sync(ask("hi", 2)).unwrap();
    probe
        .process_sync(Request::embed("bert", vec!["a".into()]))
        .unwrap();
    let sizes: Vec<u64> = probe.metrics().cache[0]
        .1
        .models
        .iter()
        .map(|(_, s)| s.bytes)
        .collect();
    assert_eq!(sizes.len(), 2);
    drop(probe);
    let (small, large) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
    let engine = Engine::builder()
        .model(spec("llama", ModelKind::TextGeneration, &m.llama))
        .unwrap()
        .model(spec("bert", ModelKind::Embedding, &m.bert))
        .unwrap()
        .memory_budget(large + small / 2)
        .build()
        .unwrap();
    for round in 0..3 {
        let c = engine
            .process_sync(ask("hi", 3))
            .unwrap()
            .into_completion()
            .unwrap();
        assert_eq!(c.tokens.len(), 3, "round {round}");
        let v = engine
            .process_sync(Request::embed("bert", vec!["a".into()]))
            .unwrap();
        assert_eq!(v.into_embeddings().unwrap().len(), 1);
        let loaded = engine
            .capabilities()
            .models
            .iter()
            .filter(|m| m.loaded)
            .count();
        assert_eq!(loaded, 1, "round {round}");
    }
    let stats = &engine.metrics().cache[0].1;
    assert!(stats.evictions >= 5, "{stats:?}");

    // A model larger than the whole budget is refused before it runs.
    let tight = Engine::builder()
        .model(spec("llama", ModelKind::TextGeneration, &m.llama))
        .unwrap()
        .memory_budget(small / 4)
        .build()
        .unwrap();
    let e = tight.submit(ask("hi", 2)).unwrap_err();
    assert!(matches!(e, EngineError::InsufficientMemory { .. }), "{e:?}");
}

#[test]
fn shutdown_refuses_new_work_and_fails_what_waits() {
    let m = models();
    let engine = engine(&m);
    engine.process_sync(ask("hi", 2)).unwrap();
    engine.shutdown(ShutdownMode::FailQueued);
    assert_eq!(
        engine.submit(ask("hi", 2)).unwrap_err(),
        EngineError::ShuttingDown
    );
    assert!(matches!(engine.health(), Health::Unhealthy { .. }));
}

#[test]
fn a_config_file_drives_the_engine() {
    let m = models();
    let dir = m.llama.parent().unwrap();
    let file = dir.join("models.toml");
    std::fs::write(
        &file,
        "[[models]]\nid = \"chat\"\nkind = \"text-generation\"\npath = \"tiny.gguf\"\n\
         priority = \"urgent\"\ndefaults = { max_tokens = 5 }\n\n\
         [[models]]\nid = \"vectors\"\nkind = \"embedding\"\npath = \"bert\"\n",
    )
    .unwrap();
    let engine = Engine::builder()
        .registry(Registry::from_file(&file).unwrap())
        .build()
        .unwrap();
    let c = engine
        .process_sync(Request::complete("chat", "Once"))
        .unwrap()
        .into_completion()
        .unwrap();
    // The model's default max_tokens applies (the tiny model rarely stops).
    assert!(c.usage.completion_tokens <= 5);
    let caps = engine.capabilities();
    assert_eq!(caps.models.len(), 2);
    assert!(caps.kinds.contains(&ModelKind::Embedding));
    assert_eq!(
        engine.registry().get("chat").unwrap().priority,
        Priority::Urgent
    );
    // Kinds this build does not serve are refused when the engine is built.
    let unserved = Registry::parse(
        "[[models]]\nid = \"t5\"\nkind = \"text-to-text\"\npath = \"x\"\n",
        ConfigFormat::Toml,
        None,
    )
    .unwrap();
    let e = Engine::builder().registry(unserved).build().unwrap_err();
    assert!(matches!(e, EngineError::Unsupported { .. }), "{e:?}");
}

#[test]
fn the_result_cache_answers_repeated_requests_and_is_off_by_default() {
    let m = models();
    let off = engine(&m);
    off.process_sync(Request::embed("bert", vec!["x".into()]))
        .unwrap();
    assert_eq!(off.metrics().results, None);

    let engine = Engine::builder()
        .model(spec("llama", ModelKind::TextGeneration, &m.llama))
        .unwrap()
        .model(spec("bert", ModelKind::Embedding, &m.bert))
        .unwrap()
        .result_cache(2)
        .build()
        .unwrap();
    let ask = |seed: u64| {
        Request::complete("llama", "Once upon a time").with_options(GenerationOptions {
            max_tokens: Some(6),
            temperature: Some(0.9),
            seed: Some(seed),
            ignore_eos: true,
            ..GenerationOptions::default()
        })
    };
    let first = engine.process_sync(ask(1)).unwrap();
    // The same seeded request: answered from the cache, identical.
    assert_eq!(engine.process_sync(ask(1)).unwrap(), first);
    // Streamed from the cache: one delta carrying the whole answer.
    let streamed = engine
        .submit(ask(1))
        .unwrap()
        .into_stream()
        .collect_completion()
        .unwrap();
    assert_eq!(Response::Completion(streamed), first);
    // Another seed runs.
    let other = engine.process_sync(ask(2)).unwrap();
    let stats = engine.metrics().results.unwrap();
    assert_eq!((stats.hits, stats.misses, stats.entries), (2, 2, 2));
    assert_ne!(other, first, "a different seed gives a different sample");

    // A streamed run is remembered too; embeddings are cached like the rest.
    let fresh = engine
        .submit(ask(3))
        .unwrap()
        .into_stream()
        .collect_completion()
        .unwrap();
    assert_eq!(
        engine.process_sync(ask(3)).unwrap(),
        Response::Completion(fresh)
    );
    let v = engine
        .process_sync(Request::embed("bert", vec!["y".into()]))
        .unwrap();
    assert_eq!(
        engine
            .process_sync(Request::embed("bert", vec!["y".into()]))
            .unwrap(),
        v
    );
    let stats = engine.metrics().results.unwrap();
    assert_eq!((stats.hits, stats.misses), (4, 4));
    // Capacity 2: the oldest answers were dropped.
    assert_eq!(stats.entries, 2);
    engine.process_sync(ask(1)).unwrap();
    assert_eq!(engine.metrics().results.unwrap().misses, 5);
    let m = &engine.metrics().models["llama"];
    assert_eq!((m.submitted, m.succeeded), (7, 7));
    assert!(
        engine
            .metrics()
            .to_prometheus()
            .contains("switchyard_result_cache_hits_total 4\n")
    );
}
