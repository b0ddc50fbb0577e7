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

/// Greedy decoding with candle-transformers' own quantized Llama.
fn reference_greedy(prompt: &[u32], n: usize) -> Vec<u32> {
    use candle_core::{Device, Tensor};
    let path = fetch::smollm2_gguf().unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let mut model = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content,
        &mut f,
        &Device::Cpu,
    )
    .unwrap();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    let mut pos = 0;
    for _ in 0..n {
        let x = Tensor::new(input.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits: Vec<f32> = model
            .forward(&x, pos)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        pos += input.len();
        let next = switchyard_text::argmax(&logits);
        out.push(next);
        input = vec![next];
    }
    out
}

#[test]
fn greedy_tokens_equal_candle_transformers_quantized_llama() {
    let generator = smollm2();
    let chat = Prompt::Chat(vec![ChatMessage::new(
        "user",
        "What is the capital of France?",
    )]);
    let prompt = generator.prompt_tokens(&chat).unwrap();
    assert!(prompt.len() > 16, "spans several KV blocks");
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(24)
    };
    let ours = generator
        .generate(&GenerateRequest::new(chat, params))
        .unwrap();
    assert_eq!(
        ours.tokens,
        reference_greedy(&prompt, 24),
        "{:?}",
        ours.text
    );
}
