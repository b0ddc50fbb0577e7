//! BertEmbedder on tiny random BERTs written in the sentence-transformers layout.

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchyard_core::DeviceId;
use switchyard_testkit::tiny::{self, TinyBert};
use switchyard_text::{BertEmbedder, Embedder, Pooling, TextError};

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
