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

/// Greedy decoding with candle-transformers' own quantized Llama: its
/// tokens and the logits each was picked from.
fn reference_greedy(prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
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
    let (mut tokens, mut all) = (Vec::new(), Vec::new());
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
        tokens.push(next);
        all.push(logits);
        input = vec![next];
    }
    (tokens, all)
}

/// Teacher-forced along candle-transformers' own greedy continuation: at
/// every step no logit of ours is further than 10% of the largest from its
/// (the worst of 49,152; typically 3-5%), and our top token is its top
/// token unless its own logits put the two within 3% of the largest (a near
/// tie, which the 8-bit rounding of activations, in its kernels as in ours,
/// may tip either way); at least 20 of 24 agree exactly. A wrong rotation,
/// norm or cache slot moves logits by far more than this.
#[test]
fn greedy_tokens_follow_candle_transformers_quantized_llama() {
    use switchyard_text::{LlamaModel, SeqStep};
    let generator = smollm2();
    let chat = Prompt::Chat(vec![ChatMessage::new(
        "user",
        "What is the capital of France?",
    )]);
    let prompt = generator.prompt_tokens(&chat).unwrap();
    assert!(prompt.len() > 16, "spans several KV blocks");
    let (want, reference) = reference_greedy(&prompt, 24);

    let model = LlamaModel::load(&fetch::smollm2_gguf().unwrap(), DeviceId::Cpu).unwrap();
    assert!(model.uses_kernels());
    let mut cache = model.new_kv_cache(8, 16).unwrap();
    let blocks: Vec<u32> = (0..8).collect();
    let mut input = prompt.clone();
    let (mut start, mut exact) = (0, 0);
    for (step, (&token, theirs)) in want.iter().zip(&reference).enumerate() {
        let s = SeqStep {
            tokens: &input,
            start,
            blocks: &blocks,
            logits: true,
        };
        let ours: Vec<f32> = model
            .forward(&mut cache, &[s])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        start += input.len();
        let largest = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 0.1 * largest,
            "step {step}: logits differ by {worst} (largest {largest})"
        );
        let pick = switchyard_text::argmax(&ours);
        if pick == token {
            exact += 1;
        } else {
            let gap = theirs[token as usize] - theirs[pick as usize];
            assert!(
                gap <= 0.03 * largest,
                "step {step}: we pick {pick}, candle {token}, {gap} apart in its logits"
            );
        }
        input = vec![token];
    }
    assert!(exact >= 20, "only {exact} of 24 top tokens agree");
}
