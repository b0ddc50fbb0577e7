#![allow(clippy::unwrap_used)]

use super::*;
use crate::{FinishReason, SamplingParams, TextTokenizer};
use switchyard_core::DeviceId;
use switchyard_testkit::tiny::{self, GgufQuant, TinyLlama};

fn tiny_model() -> (tempfile::TempDir, LlamaModel, TextTokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    tiny::write_llama_gguf(&path, &TinyLlama::default(), GgufQuant::Q8_0, 11).unwrap();
    let model = LlamaModel::load(&path, DeviceId::Cpu).unwrap();
    let tok = TextTokenizer::from_gguf(&path).unwrap();
    (dir, model, tok)
}

fn job(tok: &TextTokenizer, prompt: Vec<u32>, max_new: usize) -> Prepared {
    Prepared {
        sampler: Sampler::new(SamplingParams::greedy(max_new), &prompt).unwrap(),
        stops: StopMatcher::new(Vec::new()),
        decoder: tok.stream(true),
        stop_ids: Vec::new(),
        max_new,
        prompt,
        cancel: CancellationToken::new(),
    }
}

#[derive(Default)]
struct Recorder {
    deltas: Vec<Vec<TextDelta>>,
    used_after_step: Vec<usize>,
    cancel_first_of: Option<(usize, CancellationToken)>,
    /// Step after which the cancel was requested.
    cancelled_at: Option<usize>,
}

impl DeltaSink for Recorder {
    fn send(&mut self, index: usize, item: Result<TextDelta>) {
        let delta = item.unwrap();
        if let Some((who, token)) = &self.cancel_first_of
            && *who == index
            && self.deltas[index].is_empty()
        {
            token.cancel();
            self.cancelled_at = Some(self.used_after_step.len());
        }
        self.deltas[index].push(delta);
    }

    fn after_step(&mut self, kv: &KvStats) {
        self.used_after_step.push(kv.used);
    }
}

#[test]
fn cancellation_ends_the_sequence_within_one_step_and_frees_its_blocks() {
    let (_dir, model, tok) = tiny_model();
    let config = LoopConfig {
        block_size: 4,
        prefill_chunk: 512,
    };
    // Sequence 0: 10 prompt tokens + 30 new = 10 blocks; sequence 1: 6 + 30.
    let a = job(&tok, (1..=10).collect(), 30);
    let b = job(&tok, (20..26).collect(), 30);
    let mut rec = Recorder {
        deltas: vec![Vec::new(), Vec::new()],
        cancel_first_of: Some((0, a.cancel.clone())),
        ..Recorder::default()
    };
    run(&model, vec![a, b], config, &mut rec);

    // Sequence 0 got its first token, then nothing but the Cancelled finish.
    let d0 = &rec.deltas[0];
    assert_eq!(d0.len(), 2, "{d0:?}");
    assert_eq!(d0[0].tokens.len(), 1);
    let done = d0[1].finish.unwrap();
    assert_eq!(done.reason, FinishReason::Cancelled);
    assert!(d0[1].tokens.is_empty());
    assert_eq!(done.usage.completion_tokens, 1);
    assert_eq!(done.usage.prompt_tokens, 10);

    // Sequence 1 ran to its length.
    let d1 = &rec.deltas[1];
    let done = d1.last().unwrap().finish.unwrap();
    assert_eq!(done.reason, FinishReason::Length);
    assert_eq!(done.usage.completion_tokens, 30);
    let tokens: usize = d1.iter().map(|d| d.tokens.len()).sum();
    assert_eq!(tokens, 30);

    // In the step that produced sequence 0's first token both hold blocks
    // (11 + 7 tokens in blocks of 4); the next step holds only sequence 1's
    // (8 tokens).
    let at = rec.cancelled_at.unwrap();
    assert_eq!(rec.used_after_step[at], 5, "{:?}", rec.used_after_step);
    assert_eq!(rec.used_after_step[at + 1], 2, "{:?}", rec.used_after_step);
    assert_eq!(*rec.used_after_step.last().unwrap(), 0);
}

#[test]
fn an_already_cancelled_request_generates_nothing() {
    let (_dir, model, tok) = tiny_model();
    let a = job(&tok, vec![1, 2, 3], 5);
    a.cancel.cancel();
    let mut rec = Recorder {
        deltas: vec![Vec::new()],
        ..Recorder::default()
    };
    run(
        &model,
        vec![a],
        LoopConfig {
            block_size: 4,
            prefill_chunk: 8,
        },
        &mut rec,
    );
    assert_eq!(rec.deltas[0].len(), 1);
    let done = rec.deltas[0][0].finish.unwrap();
    assert_eq!(done.reason, FinishReason::Cancelled);
    assert_eq!(done.usage.completion_tokens, 0);
}

#[test]
fn small_prefill_chunks_give_the_same_tokens() {
    let (_dir, model, tok) = tiny_model();
    let prompt: Vec<u32> = (30..57).collect();
    let tokens = |chunk: usize| {
        let mut rec = Recorder {
            deltas: vec![Vec::new(), Vec::new()],
            ..Recorder::default()
        };
        let jobs = vec![job(&tok, prompt.clone(), 8), job(&tok, vec![3, 4], 8)];
        run(
            &model,
            jobs,
            LoopConfig {
                block_size: 4,
                prefill_chunk: chunk,
            },
            &mut rec,
        );
        rec.deltas
            .iter()
            .map(|d| {
                d.iter()
                    .flat_map(|x| x.tokens.clone())
                    .collect::<Vec<u32>>()
            })
            .collect::<Vec<_>>()
    };
    let whole = tokens(512);
    assert_eq!(whole[0].len(), 8);
    assert_eq!(tokens(5), whole);
    assert_eq!(tokens(1), whole);
}
