//! Continuous batching on the real SmolLM2-135M-Instruct (Q4_1 GGUF): a
//! request's tokens do not depend on what else runs beside it, on being
//! preempted and recomputed, or on finding its prefix in the cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use switchyard_core::{DeviceId, SplitMix64};
use switchyard_testkit::fetch;
use switchyard_text::{
    ChatMessage, Completion, GenerateRequest, GenerationEngineConfig, Generator, Prompt,
    SamplingParams,
};

fn smollm2() -> Generator {
    let gguf = fetch::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
    Generator::load(&gguf, DeviceId::Cpu).unwrap()
}

/// Greedy, or sampled with `seed`; never stops early on EOS so the lengths
/// are the ones asked for.
fn request(prompt: &str, max_new: usize, seed: Option<u64>) -> GenerateRequest {
    let params = match seed {
        None => SamplingParams::greedy(max_new),
        Some(seed) => SamplingParams {
            temperature: 0.9,
            top_p: Some(0.95),
            seed,
            max_tokens: max_new,
            ..SamplingParams::default()
        },
    };
    GenerateRequest::new(
        Prompt::Text(prompt.into()),
        SamplingParams {
            ignore_eos: true,
            ..params
        },
    )
}

/// Each request run by itself, outside any engine.
fn each_alone(generator: &Generator, requests: &[GenerateRequest]) -> Vec<Completion> {
    requests
        .iter()
        .map(|r| generator.generate(r).unwrap())
        .collect()
}

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Water boils at",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived",
    "The three primary colours are",
    "To make a cup of tea, first",
    "In 1969, the first people to walk on the Moon",
    "A list of prime numbers: 2, 3, 5,",
];

#[test]
fn sixteen_requests_arriving_at_random_steps_match_each_alone() {
    let generator = smollm2();
    let mut rng = SplitMix64::new(17);
    let requests: Vec<GenerateRequest> = (0..16)
        .map(|i| {
            let seed = (i % 4 == 1).then_some(1000 + i as u64);
            let max_new = 4 + (rng.next_u64() % 13) as usize;
            request(PROMPTS[i % PROMPTS.len()], max_new, seed)
        })
        .collect();
    let alone = each_alone(&generator, &requests);
    let engine = generator
        .serve(GenerationEngineConfig {
            kv_tokens: 4096,
            ..GenerationEngineConfig::default()
        })
        .unwrap();
    let mut streams = Vec::new();
    for r in &requests {
        streams.push(engine.submit(r).unwrap());
        // Arrive at random steps (a decode step takes a few milliseconds).
        std::thread::sleep(Duration::from_millis(rng.next_u64() % 12));
    }
    for (i, (stream, want)) in streams.into_iter().zip(&alone).enumerate() {
        assert_eq!(&stream.collect_completion().unwrap(), want, "request {i}");
    }
    let stats = engine.stats();
    assert_eq!(stats.finished, 16);
    assert_eq!(stats.kv.used, 0);
}

#[test]
fn a_preempted_request_continues_with_the_same_tokens() {
    let generator = smollm2();
    let requests = [
        request(PROMPTS[3], 40, None),
        request(PROMPTS[6], 40, Some(7)),
    ];
    let alone = each_alone(&generator, &requests);
    // Six blocks of 16: room for one whole request (4 blocks) and part of
    // the other, so the later one is preempted and recomputed.
    let engine = generator
        .serve(GenerationEngineConfig {
            kv_tokens: 96,
            prefix_caching: false,
            ..GenerationEngineConfig::default()
        })
        .unwrap();
    let streams: Vec<_> = requests.iter().map(|r| engine.submit(r).unwrap()).collect();
    for (stream, want) in streams.into_iter().zip(&alone) {
        assert_eq!(&stream.collect_completion().unwrap(), want);
    }
    let stats = engine.stats();
    assert_eq!(stats.finished, 2);
    assert!(stats.preemptions >= 1, "{stats:?}");
}

#[test]
fn a_prefix_cache_hit_gives_the_same_tokens() {
    let generator = smollm2();
    let system = ChatMessage::new(
        "system",
        "You are a careful assistant for a railway company. You answer questions about \
         timetables, tickets and stations briefly and politely, and you never invent facts.",
    );
    let chat = |question: &str, seed: Option<u64>| {
        let mut r = request("", 10, seed);
        r.prompt = Prompt::Chat(vec![system.clone(), ChatMessage::new("user", question)]);
        r
    };
    let questions = [
        chat("When does the first train leave?", None),
        chat("Can I bring a bicycle?", None),
        chat("Where do I buy a ticket?", Some(3)),
    ];
    let alone = each_alone(&generator, &questions);
    let engine = generator
        .clone()
        .serve(GenerationEngineConfig::default())
        .unwrap();
    for (r, want) in questions.iter().zip(&alone) {
        assert_eq!(
            &engine.submit(r).unwrap().collect_completion().unwrap(),
            want
        );
    }
    let stats = engine.stats();
    assert_eq!(stats.finished, 3);
    let system_tokens = generator
        .prompt_tokens(&Prompt::Chat(vec![system.clone()]))
        .unwrap()
        .len();
    // The two later requests each found the system prompt's whole blocks
    // (less the few tokens of the assistant header its own rendering ends
    // with).
    let whole_blocks = (system_tokens.saturating_sub(5) / 16) * 16;
    assert!(whole_blocks >= 32, "system prompt {system_tokens} tokens");
    assert!(
        stats.cached_prompt_tokens >= 2 * whole_blocks as u64,
        "{stats:?} (system prompt {system_tokens} tokens)"
    );
}
