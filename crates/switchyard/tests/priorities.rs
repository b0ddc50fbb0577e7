//! A mixed workload at three priorities on one device: while an Urgent
//! chat runs, Low chats pause between steps (keeping their place and their
//! tokens) and less urgent embeddings wait; when it ends, they all finish
//! with what they give alone. With `yield_to(None)` the Low chats share
//! the steps instead, which is what the first test rules out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use switchyard::core::Priority;
use switchyard::{Engine, GenerationOptions, Handle, Request};

const LOW_STREAMS: usize = 4;
const LOW_TOKENS: usize = 200;
const URGENT_TOKENS: usize = 120;

fn engine(dir: &std::path::Path, yield_to: Option<Priority>) -> Engine {
    common::tiny_text_engine(dir, 11)
        .yield_to(yield_to)
        .build()
        .unwrap()
}

fn chat(prompt: &str, tokens: usize, priority: Priority) -> Request {
    Request::complete("llama", prompt)
        .with_options(GenerationOptions {
            max_tokens: Some(tokens),
            ignore_eos: true,
            ..GenerationOptions::default()
        })
        .with_priority(priority)
}

/// Read `handle`'s stream on a thread, counting tokens into `count`;
/// the thread returns the tokens.
fn read(handle: Handle, count: Arc<AtomicUsize>) -> JoinHandle<Vec<u32>> {
    std::thread::spawn(move || {
        let mut tokens = Vec::new();
        for delta in handle.into_stream() {
            let delta = delta.unwrap();
            count.fetch_add(delta.tokens.len(), Ordering::SeqCst);
            tokens.extend(delta.tokens);
        }
        tokens
    })
}

/// Wait on `handle` on a thread; `done` turns true when it answered.
fn watch(handle: Handle, done: Arc<AtomicBool>) -> JoinHandle<Vec<Vec<f32>>> {
    std::thread::spawn(move || {
        let out = handle.wait().unwrap().into_embeddings().unwrap();
        done.store(true, Ordering::SeqCst);
        out
    })
}

fn wait_for(count: &AtomicUsize, at_least: usize) {
    while count.load(Ordering::SeqCst) < at_least {
        std::thread::sleep(Duration::from_micros(200));
    }
}

struct Run {
    /// Tokens the Low chats received while the Urgent one went from its
    /// 5th token to its 60th.
    low_progress: usize,
    /// Whether a Low or a Normal embedding submitted meanwhile was
    /// answered before the Urgent chat's 60th token.
    embeddings_done_early: bool,
    low_tokens: Vec<Vec<u32>>,
    urgent_tokens: Vec<u32>,
}

fn mixed(engine: &Engine) -> Run {
    let counts: Vec<Arc<AtomicUsize>> = (0..LOW_STREAMS).map(|_| Arc::default()).collect();
    let lows: Vec<_> = counts
        .iter()
        .enumerate()
        .map(|(i, count)| {
            let request = chat(&format!("background job {i}"), LOW_TOKENS, Priority::Low);
            read(engine.submit(request).unwrap(), Arc::clone(count))
        })
        .collect();
    counts.iter().for_each(|c| wait_for(c, 2));
    let low_total = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum::<usize>()
    };

    let urgent_count = Arc::<AtomicUsize>::default();
    let urgent = engine
        .submit(chat("answer me now", URGENT_TOKENS, Priority::Urgent))
        .unwrap();
    let urgent = read(urgent, Arc::clone(&urgent_count));
    wait_for(&urgent_count, 5);
    let before = low_total();
    let done = Arc::new(AtomicBool::new(false));
    let inputs = |n: usize| (0..n).map(|i| format!("sentence number {i}")).collect();
    let embeddings = [Priority::Low, Priority::Normal].map(|priority| {
        let request = Request::embed("bert", inputs(8)).with_priority(priority);
        watch(engine.submit(request).unwrap(), Arc::clone(&done))
    });
    wait_for(&urgent_count, 60);
    let low_progress = low_total() - before;
    let embeddings_done_early = done.load(Ordering::SeqCst);

    let urgent_tokens = urgent.join().unwrap();
    for e in embeddings {
        assert_eq!(e.join().unwrap().len(), 8);
    }
    let low_tokens = lows.into_iter().map(|t| t.join().unwrap()).collect();
    Run {
        low_progress,
        embeddings_done_early,
        low_tokens,
        urgent_tokens,
    }
}

#[test]
fn urgent_work_runs_alone_while_low_and_normal_work_waits_then_finishes_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), Some(Priority::Urgent));
    let run = mixed(&engine);
    // At most the tokens already on their way when the Urgent chat came.
    assert!(
        run.low_progress <= LOW_STREAMS,
        "Low chats made {} tokens while the Urgent one ran",
        run.low_progress
    );
    assert!(
        !run.embeddings_done_early,
        "a less urgent embedding was answered while the Urgent chat ran"
    );
    // Paused, not preempted into different text: each got what it gets
    // alone, and so did the Urgent one.
    assert_eq!(run.urgent_tokens.len(), URGENT_TOKENS);
    for (i, tokens) in run.low_tokens.iter().enumerate() {
        let alone = chat(&format!("background job {i}"), LOW_TOKENS, Priority::Low);
        let alone = engine.submit(alone).unwrap().wait().unwrap();
        assert_eq!(*tokens, alone.into_completion().unwrap().tokens);
    }
    let alone = chat("answer me now", URGENT_TOKENS, Priority::Urgent);
    let alone = engine.submit(alone).unwrap().wait().unwrap();
    assert_eq!(run.urgent_tokens, alone.into_completion().unwrap().tokens);
    assert!(engine.sessions().is_empty());
}

#[test]
fn without_yielding_low_chats_share_the_urgent_chats_steps() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), None);
    let run = mixed(&engine);
    // 55 steps of the Urgent chat, each with the Low rows in the batch.
    assert!(
        run.low_progress > 8 * LOW_STREAMS,
        "Low chats made only {} tokens",
        run.low_progress
    );
    assert!(run.low_tokens.iter().all(|t| t.len() == LOW_TOKENS));
}
