//! Generation on the real SmolLM2-135M-Instruct (Q4_1 GGUF), fetched on
//! first use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchyard_core::DeviceId;
use switchyard_testkit::fetch;
use switchyard_text::{
    ChatMessage, FinishReason, GenerateRequest, Generator, Prompt, SamplingParams,
};

fn smollm2() -> Generator {
    let gguf = fetch::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
    Generator::load(&gguf, DeviceId::Cpu).unwrap()
}

fn greedy(prompt: &str, n: usize) -> GenerateRequest {
    GenerateRequest::new(Prompt::Text(prompt.into()), SamplingParams::greedy(n))
}

#[test]
fn the_capital_of_france_is_paris() {
    let generator = smollm2();
    let out = generator
        .generate(&greedy("The capital of France is", 8))
        .unwrap();
    assert!(out.text.contains("Paris"), "{:?}", out.text);

    // And through the chat template, as an instruct model is meant to be used.
    let chat = Prompt::Chat(vec![ChatMessage::new(
        "user",
        "What is the capital of France? Answer in one word.",
    )]);
    let out = generator
        .generate(&GenerateRequest::new(chat, SamplingParams::greedy(16)))
        .unwrap();
    assert!(out.text.contains("Paris"), "{:?}", out.text);
    assert_eq!(out.finish_reason, FinishReason::Stop, "{:?}", out.text);
}

#[test]
fn a_batch_of_four_equals_each_prompt_alone() {
    let generator = smollm2();
    let requests: Vec<GenerateRequest> = [
        "The capital of France is",
        "Water boils at",
        "def fibonacci(n):",
        "Once upon a time, in a small village by the sea, there lived",
    ]
    .iter()
    .map(|p| greedy(p, 12))
    .collect();
    let batched: Vec<_> = generator
        .generate_batch(&requests)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (r, b) in requests.iter().zip(&batched) {
        let alone = generator.generate(r).unwrap();
        assert_eq!(alone.tokens, b.tokens, "{:?} vs {:?}", alone.text, b.text);
        assert_eq!(alone.text, b.text);
    }
}
