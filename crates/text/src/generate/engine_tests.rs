#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use switchyard_core::{Deadline, DeviceId, Priority, SplitMix64};
use switchyard_testkit::tiny::{self, GgufQuant, TinyLlama};

use super::*;
use crate::{Completion, FinishReason, Prompt, SamplingParams};

fn tiny_generator() -> (tempfile::TempDir, Generator) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    tiny::write_llama_gguf(&path, &TinyLlama::default(), GgufQuant::Q8_0, 11).unwrap();
    let generator = Generator::load(&path, DeviceId::Cpu).unwrap();
    (dir, generator)
}

fn request(prompt: Vec<u32>, max_new: usize, seed: Option<u64>) -> GenerateRequest {
    let params = match seed {
        None => SamplingParams::greedy(max_new),
        Some(seed) => SamplingParams {
            temperature: 1.2,
            top_k: Some(30),
            seed,
            max_tokens: max_new,
            ..SamplingParams::default()
        },
    };
    GenerateRequest::new(
        Prompt::Tokens(prompt),
        SamplingParams {
            ignore_eos: true,
            ..params
        },
    )
}

fn prompt(rng: &mut SplitMix64, len: usize) -> Vec<u32> {
    (0..len)
        .map(|_| 3 + (rng.next_u64() % 200) as u32)
        .collect()
}

/// The stats once `done` holds of them (for ends no stream reports).
fn settled(engine: &GenerationEngine, done: impl Fn(&GenerationStats) -> bool) -> GenerationStats {
    let start = Instant::now();
    loop {
        let stats = engine.stats();
        if done(&stats) {
            return stats;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{stats:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An engine that runs one sequence at a time (the rest queue).
fn one_at_a_time(generator: Generator) -> GenerationEngine {
    let config = GenerationEngineConfig {
        max_running: 1,
        ..small(512)
    };
    generator.serve(config).unwrap()
}

fn small(kv_tokens: usize) -> GenerationEngineConfig {
    GenerationEngineConfig {
        kv_tokens,
        block_size: 4,
        step_tokens: 24,
        max_running: 16,
        ..GenerationEngineConfig::default()
    }
}

#[test]
fn requests_arriving_at_random_times_match_each_run_alone() {
    let (_dir, generator) = tiny_generator();
    let mut rng = SplitMix64::new(3);
    let requests: Vec<GenerateRequest> = (0..16)
        .map(|i| {
            let len = 1 + (rng.next_u64() % 30) as usize;
            let seed = (i % 3 == 0).then_some(100 + i as u64);
            request(
                prompt(&mut rng, len),
                4 + (rng.next_u64() % 20) as usize,
                seed,
            )
        })
        .collect();
    let alone: Vec<Completion> = requests
        .iter()
        .map(|r| generator.generate(r).unwrap())
        .collect();
    // A cache too small for all at once: some are preempted or wait.
    let engine = generator.serve(small(160)).unwrap();
    let mut streams = Vec::new();
    for r in &requests {
        streams.push(engine.submit(r).unwrap());
        std::thread::sleep(Duration::from_micros(rng.next_u64() % 3000));
    }
    for (stream, want) in streams.into_iter().zip(&alone) {
        let got = stream.collect_completion().unwrap();
        assert_eq!(&got, want);
    }
    // Counted before each stream's last item went out.
    let stats = engine.stats();
    assert_eq!(stats.finished, 16);
    assert_eq!(stats.running + stats.waiting, 0);
    assert_eq!(stats.kv.used, 0);
    let total: usize = alone.iter().map(|c| c.usage.completion_tokens).sum();
    assert_eq!(stats.generated_tokens, total as u64);
}

#[test]
fn a_shared_prefix_is_computed_once() {
    let (_dir, generator) = tiny_generator();
    let mut rng = SplitMix64::new(9);
    let system = prompt(&mut rng, 32);
    let engine = generator.clone().serve(small(1024)).unwrap();
    let first = request([system.clone(), vec![7, 8]].concat(), 3, None);
    let want = generator.generate(&first).unwrap();
    assert_eq!(
        engine.submit(&first).unwrap().collect_completion().unwrap(),
        want
    );
    for tail in 0..4u32 {
        let r = request([system.clone(), vec![10 + tail, 9]].concat(), 3, None);
        let alone = generator.generate(&r).unwrap();
        assert_eq!(
            engine.submit(&r).unwrap().collect_completion().unwrap(),
            alone
        );
    }
    let stats = engine.stats();
    assert_eq!(stats.finished, 5);
    // 32 shared tokens = 8 whole blocks, found by each of the four later
    // requests.
    assert_eq!(stats.cached_prompt_tokens, 4 * 32);
    assert_eq!(stats.prefill_tokens, 34 + 4 * 2);
    assert!(stats.prefix_hit_rate() > 0.7, "{stats:?}");
    assert!(stats.kv.prefix_hits >= 4 * 8);
}

#[test]
fn bad_requests_are_refused_at_submit() {
    let (_dir, generator) = tiny_generator();
    let engine = generator.serve(small(64)).unwrap();
    let too_long = request(vec![5; 40], 40, None);
    assert!(matches!(
        engine.submit(&too_long),
        Err(TextError::InvalidInput {
            field: "max_tokens",
            ..
        })
    ));
    let outside = request(vec![1_000_000], 4, None);
    assert!(matches!(
        engine.submit(&outside),
        Err(TextError::InvalidInput {
            field: "prompt",
            ..
        })
    ));
    // The engine still serves.
    let ok = engine.submit(&request(vec![5, 6], 3, None)).unwrap();
    assert_eq!(ok.collect_completion().unwrap().tokens.len(), 3);
}

#[test]
fn too_many_unfinished_requests_are_refused_then_accepted_again() {
    let (_dir, generator) = tiny_generator();
    let engine = generator
        .serve(GenerationEngineConfig {
            max_pending: 2,
            ..small(512)
        })
        .unwrap();
    let a = engine.submit(&request(vec![5], 40, None)).unwrap();
    let b = engine.submit(&request(vec![6], 40, None)).unwrap();
    assert!(matches!(
        engine.submit(&request(vec![7], 4, None)),
        Err(TextError::QueueFull { capacity: 2 })
    ));
    a.collect_completion().unwrap();
    b.collect_completion().unwrap();
    let c = engine.submit(&request(vec![7], 4, None)).unwrap();
    assert_eq!(c.collect_completion().unwrap().usage.completion_tokens, 4);
}

#[test]
fn a_dropped_stream_frees_its_blocks() {
    let (_dir, generator) = tiny_generator();
    let engine = generator.serve(small(512)).unwrap();
    let mut stream = engine.submit(&request(vec![5, 6, 7], 400, None)).unwrap();
    stream.next().unwrap().unwrap();
    drop(stream);
    settled(&engine, |s| s.finished == 1 && s.kv.used == 0);
}

#[test]
fn shutdown_refusing_waiting_work_finishes_what_streams() {
    let (_dir, generator) = tiny_generator();
    let engine = one_at_a_time(generator);
    let running = engine.submit(&request(vec![5, 6], 30, None)).unwrap();
    let mut running = running.peekable();
    // It streams before the shutdown, so it runs to the end.
    running.peek().unwrap().as_ref().unwrap();
    let waiting = engine.submit(&request(vec![8, 9], 30, None)).unwrap();
    engine.shutdown(ShutdownMode::RefuseWaiting);
    let items: Vec<_> = running.collect();
    let last = items.last().unwrap().as_ref().unwrap();
    assert_eq!(last.finish.unwrap().reason, FinishReason::Length);
    let refused: Vec<_> = waiting.collect();
    assert_eq!(refused.len(), 1);
    assert!(matches!(refused[0], Err(TextError::ShuttingDown)));
    assert!(matches!(
        engine.submit(&request(vec![5], 2, None)),
        Err(TextError::ShuttingDown)
    ));
}

#[test]
fn shutdown_draining_finishes_everything() {
    let (_dir, generator) = tiny_generator();
    let engine = one_at_a_time(generator);
    let streams: Vec<_> = (0..3)
        .map(|i| engine.submit(&request(vec![5 + i], 10, None)).unwrap())
        .collect();
    engine.shutdown(ShutdownMode::Drain);
    for s in streams {
        assert_eq!(s.collect_completion().unwrap().usage.completion_tokens, 10);
    }
}

#[test]
fn the_controller_lowers_the_cap_when_latency_is_over_target() {
    let (_dir, generator) = tiny_generator();
    let control = |p95: Duration| {
        let mut latency = LatencyControl::new(p95, 8);
        latency.window_steps = 2;
        latency.pid.max_step = 8;
        GenerationEngineConfig {
            latency: Some(latency),
            max_running: 8,
            ..small(2048)
        }
    };
    let run = |config: GenerationEngineConfig| {
        let engine = generator.clone().serve(config).unwrap();
        let streams: Vec<_> = (0..8)
            .map(|i| engine.submit(&request(vec![5 + i], 40, None)).unwrap())
            .collect();
        for s in streams {
            s.collect_completion().unwrap();
        }
        engine.stats()
    };
    // A target no step can meet: the cap falls to its minimum.
    let strict = run(control(Duration::from_nanos(1)));
    assert_eq!(strict.max_running, 1, "{strict:?}");
    let state = strict.controller.unwrap();
    assert!(state.observations > 0);
    // A target every step meets: the cap stays at its maximum.
    let loose = run(control(Duration::from_secs(60)));
    assert_eq!(loose.max_running, 8, "{loose:?}");
    assert!(loose.itl_p95_secs > 0.0);
    assert!(loose.itl_p50_secs <= loose.itl_p95_secs);
}

#[test]
fn priorities_order_admission() {
    let (_dir, generator) = tiny_generator();
    let engine = one_at_a_time(generator);
    // Keep the only slot busy while the others queue.
    let mut first = engine.submit(&request(vec![5], 200, None)).unwrap();
    first.next().unwrap().unwrap();
    let submit = |token: u32, priority, deadline| {
        let options = RequestOptions { priority, deadline };
        engine
            .submit_with(&request(vec![token], 2, None), options)
            .unwrap()
    };
    let low = submit(6, Priority::Low, None);
    let urgent = submit(7, Priority::Urgent, None);
    let expired = submit(8, Priority::Normal, Some(Deadline::at(Instant::now())));
    // One sequence at a time: by the time Low streams its first token,
    // Urgent has ended.
    let mut low = low;
    low.next().unwrap().unwrap();
    assert!(urgent.is_finished());
    assert_eq!(urgent.collect_completion().unwrap().tokens.len(), 2);
    let items: Vec<_> = expired.collect();
    assert!(matches!(items[..], [Err(TextError::DeadlineExpired)]));
    drop(first);
}
