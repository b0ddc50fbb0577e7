//! What an operator sees: `tracing` spans for each request, model load,
//! batch and step (recorded by a subscriber of the test's own), and the
//! metrics in Prometheus' text format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use switchyard::{GenerationOptions, Request};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Counts the spans opened, by name.
#[derive(Default)]
struct SpanCounter {
    next: AtomicU64,
    seen: Mutex<BTreeMap<&'static str, usize>>,
}

impl Subscriber for &'static SpanCounter {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        *self.seen.lock().entry(span.metadata().name()).or_default() += 1;
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn requests_loads_batches_and_steps_are_traced_and_metrics_export() {
    let counter: &'static SpanCounter = Box::leak(Box::default());
    tracing::subscriber::set_global_default(counter).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let engine = common::tiny_text_engine(dir.path(), 3).build().unwrap();
    let options = GenerationOptions {
        max_tokens: Some(4),
        ignore_eos: true,
        ..GenerationOptions::default()
    };
    for _ in 0..2 {
        engine
            .process_sync(Request::complete("llama", "Once upon").with_options(options.clone()))
            .unwrap();
    }
    engine
        .process_sync(Request::embed("bert", vec!["a".into(), "b".into()]))
        .unwrap();

    let seen = counter.seen.lock().clone();
    assert_eq!(seen.get("request"), Some(&3), "{seen:?}");
    assert_eq!(seen.get("load"), Some(&2), "{seen:?}");
    assert!(seen.get("batch").is_some_and(|&n| n >= 1), "{seen:?}");
    assert!(seen.get("step").is_some_and(|&n| n >= 8), "{seen:?}");

    let text = engine.metrics().to_prometheus();
    assert!(text.contains("switchyard_requests_submitted_total{model=\"llama\"} 2\n"));
    assert!(
        text.contains(
            "switchyard_requests_finished_total{model=\"bert\",outcome=\"succeeded\"} 1\n"
        )
    );
    assert!(
        text.contains("switchyard_generation_tokens_total{model=\"llama\"} 8\n"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_cache_loads_total{device=\"cpu\"} 2\n"),
        "{text}"
    );
    // Every line is a comment or `name{labels} value` with a number.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}
