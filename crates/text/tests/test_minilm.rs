//! all-MiniLM-L6-v2, the real model: fetched on first use (never skipped).

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchyard_core::DeviceId;
use switchyard_testkit::fetch;
use switchyard_text::{BertEmbedder, Embedder, Pooling, cosine_similarity};

fn minilm() -> BertEmbedder {
    let dir = fetch::minilm_dir().unwrap_or_else(|e| panic!("{e}"));
    BertEmbedder::load(&dir, DeviceId::Cpu).unwrap()
}

#[test]
fn minilm_reads_its_sentence_transformers_layout() {
    let e = minilm();
    assert_eq!(e.dimension(), 384);
    assert_eq!(e.max_tokens(), 256);
    assert_eq!(e.pooling(), Pooling::Mean);
    assert!(e.normalizes());
}

#[test]
fn minilm_ranks_paraphrases_above_unrelated_sentences() {
    let e = minilm();
    let v = e
        .embed(&[
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "A man is riding a horse.",
            "The new movie is awesome.",
        ])
        .unwrap();
    for row in &v {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    let food = cosine_similarity(&v[0], &v[1]);
    let horse = cosine_similarity(&v[0], &v[2]);
    let movie = cosine_similarity(&v[0], &v[3]);
    assert!(food > 0.6, "paraphrase similarity {food}");
    assert!(food > horse && horse > movie, "{food} {horse} {movie}");
    assert!(movie < 0.2, "unrelated similarity {movie}");
}

/// sentence-transformers' own documentation gives 0.7553 for this pair with
/// all-MiniLM-L6-v2 (its `util.cos_sim` example).
#[test]
fn minilm_matches_the_sentence_transformers_reference_similarity() {
    let v = minilm()
        .embed(&["A man is eating food.", "A man is eating a piece of bread."])
        .unwrap();
    let sim = cosine_similarity(&v[0], &v[1]);
    assert!((sim - 0.7553).abs() < 5e-4, "cosine {sim}");
}

/// Golden vectors from `fixtures/minilm_reference.py`, an independent float64
/// numpy implementation fed by the Python tokenizers package, over 12
/// sentences (an empty one, accents, CJK, emoji, whitespace, code, and one
/// far past the 256-token limit). Token ids must be equal; vectors are
/// checked batched (packed and padded) and one sentence at a time.
#[test]
fn minilm_matches_the_reference_embeddings() {
    #[derive(serde::Deserialize)]
    struct Reference {
        sentences: Vec<String>,
        input_ids: Vec<Vec<u32>>,
        embeddings: Vec<Vec<f32>>,
    }
    let reference: Reference =
        serde_json::from_str(include_str!("fixtures/minilm_reference.json")).unwrap();
    let e = minilm();
    let texts: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
    assert!(texts.len() >= 10);
    for (text, ids) in texts.iter().zip(&reference.input_ids) {
        assert_eq!(&e.token_ids(text).unwrap(), ids, "ids of {text:?}");
    }
    assert_eq!(reference.input_ids.iter().map(Vec::len).max(), Some(256));
    let batched = e.embed(&texts).unwrap();
    for (i, expected) in reference.embeddings.iter().enumerate() {
        let alone = e.embed(&texts[i..=i]).unwrap().remove(0);
        for (label, got) in [("batched", &batched[i]), ("alone", &alone)] {
            let max_diff = got
                .iter()
                .zip(expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                max_diff < 1e-5,
                "{label} {:?}: max |diff| {max_diff}",
                texts[i]
            );
            assert!(cosine_similarity(got, expected) > 0.99999);
        }
    }
}

/// Golden vectors from sentence-transformers itself (PyTorch, float32;
/// `scripts/minilm_sentence_transformers.py`), same 12 sentences: equal
/// token ids, cosine >= 0.9999 (the bar; measured far closer).
#[test]
fn minilm_matches_sentence_transformers_itself() {
    #[derive(serde::Deserialize)]
    struct Reference {
        max_seq_length: usize,
        sentences: Vec<String>,
        input_ids: Vec<Vec<u32>>,
        embeddings: Vec<Vec<f32>>,
    }
    let reference: Reference =
        serde_json::from_str(include_str!("fixtures/minilm_sentence_transformers.json")).unwrap();
    assert_eq!(reference.max_seq_length, 256);
    let e = minilm();
    let texts: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
    assert!(texts.len() >= 10);
    for (text, ids) in texts.iter().zip(&reference.input_ids) {
        assert_eq!(&e.token_ids(text).unwrap(), ids, "ids of {text:?}");
    }
    let ours = e.embed(&texts).unwrap();
    let (mut worst, mut widest) = (1.0f32, 0.0f32);
    for (i, (got, expected)) in ours.iter().zip(&reference.embeddings).enumerate() {
        let cos = cosine_similarity(got, expected);
        worst = worst.min(cos);
        let max_diff = got
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        widest = widest.max(max_diff);
        assert!(cos >= 0.9999, "{:?}: cosine {cos}", texts[i]);
        assert!(max_diff < 1e-4, "{:?}: max |diff| {max_diff}", texts[i]);
    }
    eprintln!("vs sentence-transformers: worst cosine {worst}, max |diff| {widest}");
}
