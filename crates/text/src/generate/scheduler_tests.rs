#![allow(clippy::unwrap_used)]

use std::time::Instant;

use proptest::prelude::*;
use switchyard_core::{CancellationToken, DeviceId, SplitMix64};
use switchyard_testkit::tiny::{self, GgufQuant, TinyLlama};

use super::*;
use crate::{Sampler, SamplingParams, StopMatcher, TextDelta, TextTokenizer};

struct Tiny {
    _dir: tempfile::TempDir,
    model: LlamaModel,
    tok: TextTokenizer,
}

fn tiny_model() -> Tiny {
    tiny_model_in(GgufQuant::Q8_0)
}

/// The tiny model with weights stored as `quant` (quantized ones run on
/// the host kernels, floats through candle).
fn tiny_model_in(quant: GgufQuant) -> Tiny {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    tiny::write_llama_gguf(&path, &TinyLlama::default(), quant, 5).unwrap();
    let model = LlamaModel::load(&path, DeviceId::Cpu).unwrap();
    let tok = TextTokenizer::from_gguf(&path).unwrap();
    Tiny {
        _dir: dir,
        model,
        tok,
    }
}

/// A request: greedy, or sampled with `seed`.
#[derive(Debug, Clone)]
struct Spec {
    prompt: Vec<u32>,
    max_new: usize,
    seed: Option<u64>,
}

impl Spec {
    fn job(&self, t: &Tiny, cancel: CancellationToken) -> Prepared {
        let params = match self.seed {
            None => SamplingParams::greedy(self.max_new),
            Some(seed) => SamplingParams {
                temperature: 1.3,
                top_k: Some(40),
                seed,
                max_tokens: self.max_new,
                ..SamplingParams::default()
            },
        };
        Prepared {
            sampler: Sampler::new(params, &self.prompt).unwrap(),
            stops: StopMatcher::new(Vec::new()),
            decoder: t.tok.stream(true),
            stop_ids: Vec::new(),
            max_new: self.max_new,
            prompt: self.prompt.clone(),
            cancel,
        }
    }
}

/// Every item each request received.
#[derive(Default)]
struct Collect {
    tokens: Vec<Vec<u32>>,
    ends: Vec<usize>,
    reasons: Vec<Option<FinishReason>>,
    errors: Vec<Option<String>>,
    /// Step count when each request's first token arrived.
    first_at: Vec<Option<usize>>,
    steps: usize,
}

impl Collect {
    fn new(n: usize) -> Self {
        Self {
            tokens: vec![Vec::new(); n],
            ends: vec![0; n],
            reasons: vec![None; n],
            errors: vec![None; n],
            first_at: vec![None; n],
            steps: 0,
        }
    }
}

impl DeltaSink for Collect {
    fn send(&mut self, i: usize, item: Result<TextDelta>) {
        assert_eq!(self.ends[i], 0, "request {i} got an item after its end");
        match item {
            Ok(d) => {
                if !d.tokens.is_empty() && self.first_at[i].is_none() {
                    self.first_at[i] = Some(self.steps);
                }
                self.tokens[i].extend(d.tokens);
                if let Some(f) = d.finish {
                    self.ends[i] += 1;
                    self.reasons[i] = Some(f.reason);
                    assert_eq!(f.usage.completion_tokens, self.tokens[i].len());
                }
            }
            Err(e) => {
                self.ends[i] += 1;
                self.errors[i] = Some(e.to_string());
            }
        }
    }

    fn after_step(&mut self, _kv: &KvStats) {
        self.steps += 1;
    }
}

fn config(num_blocks: usize, max_running: usize) -> SchedulerConfig {
    SchedulerConfig {
        num_blocks,
        block_size: 4,
        step_tokens: 24,
        max_running,
        prefix_caching: false,
        urgent_preempts_low: true,
    }
}

/// The tokens of `spec` run by itself in a roomy cache.
fn alone(t: &Tiny, spec: &Spec) -> Vec<u32> {
    let mut s = Scheduler::new(&t.model, config(64, 1)).unwrap();
    let mut out = Collect::new(1);
    s.submit(
        0,
        spec.job(t, CancellationToken::new()),
        Admission::default(),
    )
    .unwrap();
    while s.step(&mut out).unwrap() {}
    assert_eq!(out.ends, [1]);
    out.tokens.pop().unwrap()
}

/// Queue `spec` as request `i` at Normal priority.
fn submit(s: &mut Scheduler<'_>, t: &Tiny, i: usize, spec: &Spec) {
    let job = spec.job(t, CancellationToken::new());
    s.submit(i, job, Admission::default()).unwrap();
}

/// Step until idle, checking the blocks after every step.
fn drain(s: &mut Scheduler<'_>, out: &mut Collect) {
    while s.step(out).unwrap() {
        check_blocks(s, 4);
    }
}

fn specs(rng: &mut SplitMix64, n: usize, max_prompt: u64) -> Vec<Spec> {
    (0..n)
        .map(|i| {
            let len = 1 + rng.next_u64() % max_prompt;
            Spec {
                prompt: (0..len)
                    .map(|_| 3 + (rng.next_u64() % 200) as u32)
                    .collect(),
                max_new: 3 + (rng.next_u64() % 14) as usize,
                seed: (i % 3 == 0).then_some(100 + i as u64),
            }
        })
        .collect()
}

/// Free, cached and used blocks add up; a block two running sequences
/// share holds the same tokens in both (a shared prefix), never another
/// sequence's keys.
fn check_blocks(s: &Scheduler<'_>, block_size: usize) {
    let kv = s.kv_stats();
    assert_eq!(kv.free + kv.cached + kv.used, kv.total, "{kv:?}");
    let tables = s.tables();
    for (a, (ta, toks_a)) in tables.iter().enumerate() {
        for (tb, toks_b) in &tables[a + 1..] {
            for (i, block) in ta.iter().enumerate() {
                if tb.get(i) == Some(block) {
                    let end = (i + 1) * block_size;
                    assert!(toks_a.len() >= end && toks_b.len() >= end);
                    assert_eq!(toks_a[..end], toks_b[..end], "block {block} shared");
                } else {
                    assert!(!tb.contains(block), "block {block} at different places");
                }
            }
        }
    }
}

#[test]
fn requests_arriving_and_leaving_at_random_steps_get_their_tokens_alone() {
    let t = tiny_model();
    let mut rng = SplitMix64::new(41);
    let specs = specs(&mut rng, 16, 20);
    let mut s = Scheduler::new(&t.model, config(256, 16)).unwrap();
    let mut out = Collect::new(specs.len());
    let mut next = 0;
    loop {
        // Zero to three arrivals before each step.
        for _ in 0..rng.next_u64() % 4 {
            if let Some(spec) = specs.get(next) {
                let job = spec.job(&t, CancellationToken::new());
                s.submit(next, job, Admission::default()).unwrap();
                next += 1;
            }
        }
        let more = s.step(&mut out).unwrap();
        check_blocks(&s, 4);
        if !more && next == specs.len() {
            break;
        }
    }
    assert!(out.ends.iter().all(|&e| e == 1));
    for (i, spec) in specs.iter().enumerate() {
        assert_eq!(out.tokens[i], alone(&t, spec), "request {i}");
        assert_eq!(out.reasons[i], Some(FinishReason::Length));
    }
}

#[test]
fn preempted_sequences_are_recomputed_and_stream_without_gaps() {
    let t = tiny_model();
    let mut rng = SplitMix64::new(7);
    let specs: Vec<Spec> = specs(&mut rng, 6, 12)
        .into_iter()
        .map(|s| Spec { max_new: 16, ..s })
        .collect();
    // Each needs up to 7 blocks of 4; 12 blocks hold the prompts of all
    // but not their growth.
    let mut s = Scheduler::new(&t.model, config(12, 6)).unwrap();
    let mut out = Collect::new(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        submit(&mut s, &t, i, spec);
    }
    drain(&mut s, &mut out);
    assert!(s.stats().preemptions > 0, "{:?}", s.stats());
    assert!(out.ends.iter().all(|&e| e == 1));
    for (i, spec) in specs.iter().enumerate() {
        assert_eq!(out.tokens[i], alone(&t, spec), "request {i}");
    }
    let kv = s.kv_stats();
    assert_eq!((kv.used, kv.sequences), (0, 0));
}

/// `n` greedy requests (seeded where `seed` says) of `system` followed by
/// `tail(i)`.
fn after_prefix(
    system: &[u32],
    n: u32,
    tail: impl Fn(u32) -> Vec<u32>,
    max_new: usize,
    seed: impl Fn(u32) -> Option<u64>,
) -> Vec<Spec> {
    (0..n)
        .map(|i| Spec {
            prompt: [system, &tail(i)[..]].concat(),
            max_new,
            seed: seed(i),
        })
        .collect()
}

/// A scheduler with prefix caching, 64 blocks of 4 and 4 running at most.
fn caching<'m>(t: &'m Tiny, step_tokens: usize) -> Scheduler<'m> {
    let config = SchedulerConfig {
        prefix_caching: true,
        step_tokens,
        ..config(64, 4)
    };
    Scheduler::new(&t.model, config).unwrap()
}

/// Every request got the tokens it gets alone.
fn assert_each_alone(t: &Tiny, specs: &[Spec], out: &Collect) {
    for (i, spec) in specs.iter().enumerate() {
        assert_eq!(out.tokens[i], alone(t, spec), "request {i}");
    }
}

#[test]
fn a_shared_prefix_is_computed_once() {
    let t = tiny_model();
    let system: Vec<u32> = (10..30).collect();
    let specs = after_prefix(&system, 4, |i| vec![40 + i, 50 + i], 6, |_| None);
    let mut s = caching(&t, 24);
    let mut out = Collect::new(specs.len());
    submit(&mut s, &t, 0, &specs[0]);
    while s.step(&mut out).unwrap() {}
    for (i, spec) in specs.iter().enumerate().skip(1) {
        submit(&mut s, &t, i, spec);
    }
    drain(&mut s, &mut out);
    let stats = s.stats();
    // 20 shared tokens = 5 blocks, of which the later three requests reuse
    // all: only their own 2 tokens (and the first request's 22) computed.
    assert_eq!(stats.cached_tokens, 3 * 20, "{stats:?}");
    assert_eq!(stats.prefill_tokens, 22 + 3 * 2, "{stats:?}");
    assert!(s.kv_stats().hit_rate() > 0.7);
    assert_each_alone(&t, &specs, &out);
}

#[test]
fn a_part_filled_prefix_block_is_reused() {
    let t = tiny_model();
    // 22 shared tokens: five whole blocks of 4 and two more.
    let system: Vec<u32> = (10..32).collect();
    let specs = after_prefix(
        &system,
        3,
        |i| vec![40 + i, 50 + i, 60],
        5,
        |i| (i == 2).then_some(9),
    );
    let mut s = caching(&t, 24);
    let mut out = Collect::new(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        submit(&mut s, &t, i, spec);
        drain(&mut s, &mut out);
    }
    let stats = s.stats();
    assert_eq!(stats.cached_tokens, 2 * 22, "{stats:?}");
    assert_eq!(stats.prefill_tokens, 25 + 2 * 3, "{stats:?}");
    assert_eq!(s.kv_stats().partial_tokens, 2 * 2);
    assert_each_alone(&t, &specs, &out);
}

#[test]
fn requests_arriving_together_wait_for_a_shared_prefix_in_flight() {
    let t = tiny_model();
    let system: Vec<u32> = (10..30).collect();
    let mut specs = after_prefix(&system, 4, |i| vec![40 + i, 50 + i], 6, |_| None);
    // Another prompt, sharing nothing, is not held back.
    specs.push(Spec {
        prompt: (60..80).collect(),
        max_new: 6,
        seed: None,
    });
    // The first prompt takes two steps to prefill.
    let mut s = caching(&t, 12);
    let mut out = Collect::new(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        submit(&mut s, &t, i, spec);
    }
    drain(&mut s, &mut out);
    let stats = s.stats();
    assert_eq!(stats.cached_tokens, 3 * 20, "{stats:?}");
    assert_eq!(stats.prefill_tokens, 22 + 3 * 2 + 20, "{stats:?}");
    assert_each_alone(&t, &specs, &out);
}

#[test]
fn an_expired_request_never_runs_and_cancelled_ones_end_anywhere() {
    let t = tiny_model();
    let spec = Spec {
        prompt: vec![5, 6, 7],
        max_new: 8,
        seed: None,
    };
    let mut s = Scheduler::new(&t.model, config(64, 1)).unwrap();
    let mut out = Collect::new(3);
    let late = Admission {
        deadline: Some(Deadline::at(Instant::now())),
        ..Admission::default()
    };
    s.submit(0, spec.job(&t, CancellationToken::new()), late)
        .unwrap();
    // One running, one queued behind it (max_running 1); both cancelled.
    let (running, queued) = (CancellationToken::new(), CancellationToken::new());
    s.submit(1, spec.job(&t, running.clone()), Admission::default())
        .unwrap();
    s.submit(2, spec.job(&t, queued.clone()), Admission::default())
        .unwrap();
    s.step(&mut out).unwrap();
    assert!(out.errors[0].as_deref().unwrap().contains("deadline"));
    assert!(out.tokens[0].is_empty());
    assert_eq!(out.tokens[1].len(), 1);
    running.cancel();
    queued.cancel();
    assert!(!s.step(&mut out).unwrap());
    assert_eq!(out.ends, [1, 1, 1]);
    assert_eq!(out.reasons[1], Some(FinishReason::Cancelled));
    assert_eq!(out.reasons[2], Some(FinishReason::Cancelled));
    assert_eq!(s.kv_stats().used, 0);
}

#[test]
fn urgent_requests_go_first_and_may_preempt_low_ones() {
    let t = tiny_model();
    let spec = |p: u32| Spec {
        prompt: (p..p + 14).collect(),
        max_new: 10,
        seed: None,
    };
    let level = |priority| Admission {
        priority,
        deadline: None,
    };
    // Six blocks: one 24-token sequence at a time.
    let mut s = Scheduler::new(&t.model, config(6, 4)).unwrap();
    let mut out = Collect::new(3);
    s.submit(
        0,
        spec(10).job(&t, CancellationToken::new()),
        level(Priority::Low),
    )
    .unwrap();
    s.step(&mut out).unwrap();
    s.submit(
        1,
        spec(30).job(&t, CancellationToken::new()),
        level(Priority::Normal),
    )
    .unwrap();
    s.submit(
        2,
        spec(50).job(&t, CancellationToken::new()),
        level(Priority::Urgent),
    )
    .unwrap();
    while s.step(&mut out).unwrap() {}
    assert_eq!(s.stats().preemptions, 1);
    let first = |i: usize| out.first_at[i].unwrap();
    assert!(first(2) < first(1), "{:?}", out.first_at);
    assert!(out.ends.iter().all(|&e| e == 1));
    for (i, p) in [10, 30, 50].into_iter().enumerate() {
        assert_eq!(out.tokens[i], alone(&t, &spec(p)), "request {i}");
    }
}

#[test]
fn a_request_larger_than_the_cache_is_refused() {
    let t = tiny_model();
    let mut s = Scheduler::new(&t.model, config(2, 4)).unwrap();
    let spec = Spec {
        prompt: vec![1; 6],
        max_new: 5,
        seed: None,
    };
    let err = s
        .submit(
            0,
            spec.job(&t, CancellationToken::new()),
            Admission::default(),
        )
        .unwrap_err();
    assert!(matches!(err, TextError::InvalidInput { .. }), "{err}");
    assert!(s.is_idle());
}

#[derive(Debug, Clone)]
enum Event {
    Arrive { prompt: usize, max_new: usize },
    Cancel(usize),
    Step,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (1usize..14, 1usize..12).prop_map(|(prompt, max_new)| Event::Arrive { prompt, max_new }),
        (0usize..32).prop_map(Event::Cancel),
        Just(Event::Step),
        Just(Event::Step),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random arrivals, cancellations and steps over a cache too small for
    /// all: every request ends exactly once and the block accounting holds
    /// after every step.
    #[test]
    fn every_request_ends_exactly_once(
        events in proptest::collection::vec(event(), 1..60),
        caching in any::<bool>(),
    ) {
        let t = tiny();
        let mut s = Scheduler::new(
            &t.model,
            SchedulerConfig { prefix_caching: caching, ..config(8, 5) },
        ).unwrap();
        let mut out = Collect::new(64);
        let mut cancels = Vec::new();
        for e in events {
            match e {
                Event::Arrive { prompt, max_new } => {
                    let id = cancels.len();
                    let spec = Spec {
                        // Shared starts, so cached prefixes get reused.
                        prompt: (0..prompt as u32).map(|p| 3 + p % 9).collect(),
                        max_new,
                        seed: None,
                    };
                    let token = CancellationToken::new();
                    s.submit(id, spec.job(t, token.clone()), Admission::default()).unwrap();
                    cancels.push(token);
                }
                Event::Cancel(i) => {
                    if let Some(c) = cancels.get(i) {
                        c.cancel();
                    }
                }
                Event::Step => {
                    s.step(&mut out).unwrap();
                    check_blocks(&s, 4);
                }
            }
        }
        while s.step(&mut out).unwrap() {
            check_blocks(&s, 4);
        }
        let n = cancels.len();
        prop_assert!(out.ends[..n].iter().all(|&e| e == 1), "{:?}", &out.ends[..n]);
        prop_assert_eq!(s.kv_stats().used, 0);
        prop_assert_eq!(s.stats().finished as usize, n);
    }
}

/// One tiny model shared by the proptest's cases.
fn tiny() -> &'static Tiny {
    static MODEL: std::sync::OnceLock<Tiny> = std::sync::OnceLock::new();
    MODEL.get_or_init(tiny_model)
}

/// Admission at `priority`, no deadline.
fn at(priority: Priority) -> Admission {
    Admission {
        priority,
        deadline: None,
    }
}

/// A scheduler on `t` sharing `gate`.
fn gated<'m>(t: &'m Tiny, config: SchedulerConfig, gate: &Arc<YieldGate>) -> Scheduler<'m> {
    let mut s = Scheduler::new(&t.model, config).unwrap();
    s.set_yield_gate(Some(Arc::clone(gate))).unwrap();
    s
}

#[test]
fn sequences_the_yield_gate_holds_skip_steps_and_resume_unchanged() {
    let t = tiny_model();
    let low = Spec {
        prompt: vec![5, 6, 7, 8, 9],
        max_new: 12,
        seed: None,
    };
    let urgent = Spec {
        prompt: vec![11, 12, 13],
        max_new: 6,
        seed: Some(3),
    };
    let (low_alone, urgent_alone) = (alone(&t, &low), alone(&t, &urgent));
    let gate = YieldGate::new(Priority::Urgent);
    // One running sequence at most: the held Low one must not keep the
    // Urgent one out.
    let mut s = gated(&t, config(64, 1), &gate);
    let mut out = Collect::new(2);
    s.submit(0, low.job(&t, CancellationToken::new()), at(Priority::Low))
        .unwrap();
    for _ in 0..3 {
        s.step(&mut out).unwrap();
    }
    let before = out.tokens[0].len();
    assert!(before > 0 && !s.holding());
    // Urgent work elsewhere on the device: the Low sequence waits.
    let elsewhere = gate.enter(Priority::Urgent);
    assert!(s.step(&mut out).unwrap());
    assert!(s.holding());
    assert_eq!(out.tokens[0].len(), before);
    // An Urgent request here runs to its end past the cap; Low still
    // waits. Requests count on the gate while they live.
    let job = urgent.job(&t, CancellationToken::new());
    s.submit(1, job, at(Priority::Urgent)).unwrap();
    assert_eq!(gate.active(), [2, 0, 0, 1]);
    while out.ends[1] == 0 {
        s.step(&mut out).unwrap();
        assert!(!s.holding());
        check_blocks(&s, 4);
    }
    assert_eq!(gate.active(), [1, 0, 0, 1]);
    assert_eq!(out.tokens[0].len(), before, "held while Urgent work ran");
    assert_eq!(out.tokens[1], urgent_alone);
    drop(elsewhere);
    drain(&mut s, &mut out);
    assert_eq!(out.tokens[0], low_alone, "resumed where it stopped");
    assert_eq!(out.ends, [1, 1]);
    assert_eq!(gate.active(), [0; 4]);
}

#[test]
fn an_abandoned_background_step_runs_again_unchanged() {
    for quant in [GgufQuant::Q8_0, GgufQuant::F32] {
        abandon_steps_of(&tiny_model_in(quant));
    }
}

fn abandon_steps_of(t: &Tiny) {
    let low = Spec {
        prompt: vec![5, 6, 7, 8, 9, 10, 11],
        max_new: 10,
        seed: Some(9),
    };
    let low_alone = alone(t, &low);
    let gate = YieldGate::new(Priority::Urgent);
    // Urgent traffic seen lately: held work runs on background threads.
    drop(gate.enter(Priority::Urgent));
    let mut s = gated(t, config(64, 2), &gate);
    let mut out = Collect::new(1);
    s.submit(0, low.job(t, CancellationToken::new()), at(Priority::Low))
        .unwrap();
    // Abandon the prompt's step and then a decode step, each after a layer.
    for steps_first in [0, 4] {
        for _ in 0..steps_first {
            s.step(&mut out).unwrap();
        }
        let (before, stats) = (out.tokens[0].len(), s.stats());
        s.interrupt_next = true;
        assert!(s.step(&mut out).unwrap(), "work remains");
        assert!(!s.holding());
        let after = s.stats();
        assert_eq!(after.interrupted_steps, stats.interrupted_steps + 1);
        assert_eq!(after.steps, stats.steps, "an abandoned step is not counted");
        assert_eq!(out.tokens[0].len(), before, "nothing sampled");
        check_blocks(&s, 4);
    }
    drain(&mut s, &mut out);
    assert_eq!(out.tokens[0], low_alone, "the same tokens as uninterrupted");
    assert_eq!(out.ends, [1]);
}

#[test]
fn a_step_on_ordinary_threads_is_never_abandoned() {
    let t = tiny_model();
    let spec = Spec {
        prompt: vec![5, 6, 7],
        max_new: 4,
        seed: None,
    };
    // No gate: no background threads, so nothing may stop a step.
    let mut s = Scheduler::new(&t.model, config(64, 2)).unwrap();
    let mut out = Collect::new(1);
    s.submit(
        0,
        spec.job(&t, CancellationToken::new()),
        Admission::default(),
    )
    .unwrap();
    s.interrupt_next = true;
    drain(&mut s, &mut out);
    assert_eq!(s.stats().interrupted_steps, 0);
    assert_eq!(out.tokens[0], alone(&t, &spec));
}

#[test]
fn an_urgent_request_does_not_wait_for_the_prefix_of_a_held_one() {
    let t = tiny_model();
    let prompt: Vec<u32> = (5..15).collect();
    let low = Spec {
        prompt: prompt.clone(),
        max_new: 6,
        seed: None,
    };
    let urgent = Spec {
        prompt,
        max_new: 4,
        seed: Some(2),
    };
    let gate = YieldGate::new(Priority::Urgent);
    drop(gate.enter(Priority::Urgent));
    let caching = SchedulerConfig {
        prefix_caching: true,
        ..config(64, 4)
    };
    let mut s = gated(&t, caching, &gate);
    let mut out = Collect::new(2);
    s.submit(0, low.job(&t, CancellationToken::new()), at(Priority::Low))
        .unwrap();
    // The Low prompt's step is abandoned: it is running with its prompt
    // not computed when an Urgent request with the same prompt comes.
    s.interrupt_next = true;
    s.step(&mut out).unwrap();
    assert_eq!(s.stats().interrupted_steps, 1);
    let job = urgent.job(&t, CancellationToken::new());
    s.submit(1, job, at(Priority::Urgent)).unwrap();
    for _ in 0..100 {
        if out.ends[1] == 1 {
            break;
        }
        s.step(&mut out).unwrap();
    }
    assert_eq!(out.ends[1], 1, "the Urgent request finished");
    assert_eq!(out.tokens[1], alone(&t, &urgent));
    assert!(out.tokens[0].is_empty(), "Low held meanwhile");
    drain(&mut s, &mut out);
    assert_eq!(out.tokens[0], alone(&t, &low));
}
