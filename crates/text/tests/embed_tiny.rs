//! BertEmbedder on tiny random BERTs written in the sentence-transformers layout.

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchyard_core::DeviceId;
use switchyard_testkit::tiny::{self, TinyBert};
use switchyard_text::{BertEmbedder, Embedder, EmbeddingHandler, Packing, Pooling, TextError};

fn tiny_embedder(spec: &TinyBert) -> (tempfile::TempDir, BertEmbedder) {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_bert(dir.path(), spec, 11).unwrap();
    let embedder = BertEmbedder::load(dir.path(), DeviceId::Cpu).unwrap();
    (dir, embedder)
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[test]
fn reads_pooling_normalisation_and_length_from_the_folder() {
    let (_dir, e) = tiny_embedder(&TinyBert::default());
    assert_eq!(e.pooling(), Pooling::Mean);
    assert!(e.normalizes());
    assert_eq!(e.dimension(), 32);
    assert_eq!(e.max_tokens(), 64);
    let v = e.embed(&["hello world"]).unwrap();
    assert!((norm(&v[0]) - 1.0).abs() < 1e-5);

    let (_dir, raw) = tiny_embedder(&TinyBert {
        normalize: false,
        ..TinyBert::default()
    });
    assert!(!raw.normalizes());
    let v = raw.embed(&["hello world"]).unwrap();
    assert!(
        (norm(&v[0]) - 1.0).abs() > 1e-3,
        "not normalised: {}",
        norm(&v[0])
    );
}

#[test]
fn batched_equals_one_at_a_time_despite_padding() {
    let (_dir, e) = tiny_embedder(&TinyBert::default());
    let texts = [
        "hi",
        "the quick brown fox jumps over the lazy dog",
        "",
        "models stay loaded in memory while the memory lasts",
    ];
    let batched = e.embed(&texts).unwrap();
    assert_eq!(batched.len(), texts.len());
    for (text, row) in texts.iter().zip(&batched) {
        let alone = e.embed(&[text]).unwrap().remove(0);
        let diff = row
            .iter()
            .zip(&alone)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "{text:?} differs by {diff}");
    }
    assert!(e.embed(&[]).unwrap().is_empty());
}

#[test]
fn long_inputs_are_truncated_not_rejected() {
    let (_dir, e) = tiny_embedder(&TinyBert::default());
    let long = "the engine batches requests ".repeat(200);
    let v = e.embed(&[&long]).unwrap();
    assert_eq!(v[0].len(), e.dimension());
    assert!(v[0].iter().all(|x| x.is_finite()));
}

#[test]
fn missing_or_broken_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = BertEmbedder::load(dir.path(), DeviceId::Cpu).unwrap_err();
    assert!(matches!(err, TextError::Io { .. }), "{err}");

    tiny::write_bert(dir.path(), &TinyBert::default(), 1).unwrap();
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let err = BertEmbedder::load(dir.path(), DeviceId::Cpu).unwrap_err();
    assert!(matches!(err, TextError::Config { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    tiny::write_bert(dir.path(), &TinyBert::default(), 1).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x08\0\0\0\0\0\0\0{}",
    )
    .unwrap();
    let err = BertEmbedder::load(dir.path(), DeviceId::Cpu).unwrap_err();
    assert!(matches!(err, TextError::ModelLoad { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    tiny::write_bert(dir.path(), &TinyBert::default(), 1).unwrap();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = BertEmbedder::load(dir.path(), DeviceId::Cpu).unwrap_err();
    assert!(matches!(err, TextError::Tokenizer(_)), "{err}");

    let err = BertEmbedder::load(dir.path(), DeviceId::Cuda(0)).unwrap_err();
    assert!(matches!(err, TextError::Device(_)), "{err}");
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn packing_into_small_batches_keeps_values_and_input_order() {
    let (dir, whole) = tiny_embedder(&TinyBert::default());
    let packed = BertEmbedder::load(dir.path(), DeviceId::Cpu)
        .unwrap()
        .with_packing(Packing {
            max_batch_tokens: 24,
            max_batch_size: 3,
        });
    let texts: Vec<String> = (0..11)
        .map(|i| "word ".repeat((i * 7) % 13) + &format!("item {i}"))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let a = whole.embed(&refs).unwrap();
    let b = packed.embed(&refs).unwrap();
    for (i, text) in refs.iter().enumerate() {
        let alone = whole.embed(&[text]).unwrap().remove(0);
        assert!(max_diff(&a[i], &alone) < 1e-5, "{text:?}");
        assert!(max_diff(&b[i], &alone) < 1e-5, "{text:?} packed");
    }
}

#[test]
fn the_embedding_handler_runs_under_the_batcher() {
    use std::sync::Arc;
    use switchyard_batch::Batcher;

    let (_dir, e) = tiny_embedder(&TinyBert::default());
    let e = Arc::new(e);
    let batcher = Batcher::builder(EmbeddingHandler::new(e.clone()))
        .max_wait(std::time::Duration::from_millis(20))
        .build()
        .unwrap();
    let texts = ["one", "two words", "three words here", ""];
    let handles: Vec<_> = texts
        .iter()
        .map(|t| batcher.submit((*t).to_owned()).unwrap())
        .collect();
    for (text, h) in texts.iter().zip(handles) {
        let got = h.wait().unwrap();
        let want = e.embed(&[text]).unwrap().remove(0);
        assert!(max_diff(&got.vector, &want) < 1e-5, "{text:?}");
        assert_eq!(got.tokens, Some(e.token_ids(text).unwrap().len()));
    }
    assert!(batcher.metrics().batches >= 1);
}

/// Wraps an embedder: its first pause blocks until the test lets it go,
/// then defers to the batcher's pause; every pause is counted.
struct GatedEmbedder {
    inner: BertEmbedder,
    started: std::sync::mpsc::SyncSender<()>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    pauses: std::sync::atomic::AtomicUsize,
}

impl Embedder for GatedEmbedder {
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }
    fn max_tokens(&self) -> usize {
        self.inner.max_tokens()
    }
    fn embed(&self, texts: &[&str]) -> switchyard_text::Result<Vec<Vec<f32>>> {
        self.embed_pausing(texts, &|| {})
    }
    fn embed_pausing(
        &self,
        texts: &[&str],
        pause: &dyn Fn(),
    ) -> switchyard_text::Result<Vec<Vec<f32>>> {
        use std::sync::atomic::Ordering;
        self.inner.embed_pausing(texts, &|| {
            if self.pauses.fetch_add(1, Ordering::SeqCst) == 0 {
                self.started.send(()).unwrap();
                self.go.lock().unwrap().recv().unwrap();
            }
            pause();
        })
    }
}

#[test]
fn an_embedding_batch_pauses_between_layers_for_urgent_work_elsewhere() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use switchyard_batch::{Batcher, Request, YieldGate};
    use switchyard_core::Priority;

    let spec = TinyBert::default();
    let (_dir, inner) = tiny_embedder(&spec);
    let want = inner.embed(&["held for a while"]).unwrap().remove(0);
    let (started_tx, started) = std::sync::mpsc::sync_channel(1);
    let (go, go_rx) = std::sync::mpsc::sync_channel(1);
    let embedder = Arc::new(GatedEmbedder {
        inner,
        started: started_tx,
        go: std::sync::Mutex::new(go_rx),
        pauses: AtomicUsize::new(0),
    });
    let gate = YieldGate::with_background(Priority::Urgent, false);
    let batcher = Batcher::builder(EmbeddingHandler::new(embedder.clone()))
        .max_wait(Duration::from_millis(1))
        .yield_gate(Arc::clone(&gate))
        .build()
        .unwrap();
    let low = batcher
        .submit(Request::new("held for a while".to_owned()).with_priority(Priority::Low))
        .unwrap();
    // The batch is inside its forward pass when urgent work of another
    // pipeline on the device arrives.
    started.recv().unwrap();
    let elsewhere = gate.enter(Priority::Urgent);
    go.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!low.is_finished(), "paused while the urgent work ran");
    assert_eq!(embedder.pauses.load(Ordering::SeqCst), 1);
    drop(elsewhere);
    let got = low.wait().unwrap();
    assert!(max_diff(&got.vector, &want) < 1e-5);
    // The wrapper overrides only `embed_pausing`: no count.
    assert_eq!(got.tokens, None);
    // One pause before each layer of the one forward pass.
    assert_eq!(embedder.pauses.load(Ordering::SeqCst), spec.num_layers);
}

/// An embedder that only implements `embed`, as a wrapper of a remote
/// service would.
struct PlainEmbedder(BertEmbedder);

impl Embedder for PlainEmbedder {
    fn dimension(&self) -> usize {
        self.0.dimension()
    }
    fn max_tokens(&self) -> usize {
        self.0.max_tokens()
    }
    fn embed(&self, texts: &[&str]) -> switchyard_text::Result<Vec<Vec<f32>>> {
        self.0.embed(texts)
    }
}

#[test]
fn an_embedder_that_cannot_pause_runs_without_pausing() {
    let (_dir, e) = tiny_embedder(&TinyBert::default());
    let want = e.embed(&["no pauses here"]).unwrap();
    let plain = PlainEmbedder(e);
    let pauses = std::cell::Cell::new(0);
    let got = plain
        .embed_pausing(&["no pauses here"], &|| pauses.set(pauses.get() + 1))
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(pauses.get(), 0);
}

#[test]
fn counted_embeddings_tell_the_tokens_read_truncation_included() {
    let (_dir, e) = tiny_embedder(&TinyBert::default());
    let long = "word ".repeat(4 * e.max_tokens());
    let texts = ["hi", long.as_str()];
    let counted = e.embed_counted(&texts, &|| {}).unwrap();
    assert_eq!(counted[0].tokens, Some(e.token_ids("hi").unwrap().len()));
    assert_eq!(counted[1].tokens, Some(e.max_tokens()));
    let vectors: Vec<Vec<f32>> = counted.into_iter().map(|c| c.vector).collect();
    assert_eq!(vectors, e.embed(&texts).unwrap());
}
