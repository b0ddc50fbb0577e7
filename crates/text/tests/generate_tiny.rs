//! Generation on tiny random Llamas written in the real formats: streaming,
//! batching, stop rules, seeds and errors through the public API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use switchyard_core::DeviceId;
use switchyard_testkit::tiny::{self, GgufQuant, TinyLlama};
use switchyard_text::{
    ChatMessage, FinishReason, GenerateRequest, Generator, Prompt, SamplingParams, TextError,
};

fn gguf(dir: &std::path::Path, quant: GgufQuant, seed: u64) -> Generator {
    let path = dir.join(format!("{quant:?}-{seed}.gguf"));
    tiny::write_llama_gguf(&path, &TinyLlama::default(), quant, seed).unwrap();
    Generator::load(&path, DeviceId::Cpu).unwrap()
}

/// Greedy decoding of up to `n` tokens (EOS may end it sooner).
fn greedy(prompt: &str, n: usize) -> GenerateRequest {
    GenerateRequest::new(Prompt::Text(prompt.into()), SamplingParams::greedy(n))
}

#[test]
fn gguf_and_safetensors_give_the_same_greedy_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinyLlama::default();
    tiny::write_llama_safetensors(&dir.path().join("st"), &spec, 21).unwrap();
    tiny::write_llama_gguf(&dir.path().join("m.gguf"), &spec, GgufQuant::F32, 21).unwrap();
    let st = Generator::load(&dir.path().join("st"), DeviceId::Cpu).unwrap();
    let gg = Generator::load(&dir.path().join("m.gguf"), DeviceId::Cpu).unwrap();
    let request = greedy("the quick brown fox", 24);
    assert_eq!(
        st.prompt_tokens(&request.prompt).unwrap(),
        gg.prompt_tokens(&request.prompt).unwrap()
    );
    let a = st.generate(&request).unwrap();
    let b = gg.generate(&request).unwrap();
    assert!(!a.tokens.is_empty());
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.text, b.text);
}

#[test]
fn the_stream_adds_up_to_the_blocking_result() {
    let dir = tempfile::tempdir().unwrap();
    let generator = gguf(dir.path(), GgufQuant::Q8_0, 22);
    let request = greedy("hello world", 20);
    let whole = generator.generate(&request).unwrap();
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut finishes = 0;
    for delta in generator.stream(&request).unwrap() {
        let delta = delta.unwrap();
        text.push_str(&delta.text);
        tokens.extend(delta.tokens);
        finishes += usize::from(delta.finish.is_some());
    }
    assert_eq!(finishes, 1);
    assert_eq!((&text, &tokens), (&whole.text, &whole.tokens));
    assert_eq!(whole.usage.completion_tokens, whole.tokens.len());
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Poll a stream to its end on this thread (a minimal executor).
fn collect_async(
    mut s: impl futures_core::Stream<Item = switchyard_text::Result<switchyard_text::TextDelta>> + Unpin,
) -> Vec<u32> {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut tokens = Vec::new();
    loop {
        match Pin::new(&mut s).poll_next(&mut cx) {
            Poll::Ready(Some(d)) => tokens.extend(d.unwrap().tokens),
            Poll::Ready(None) => return tokens,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[test]
fn the_async_stream_yields_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let generator = gguf(dir.path(), GgufQuant::Q4_0, 23);
    let request = greedy("a b c", 16);
    let whole = generator.generate(&request).unwrap();
    assert_eq!(
        collect_async(generator.stream(&request).unwrap()),
        whole.tokens
    );
}

#[test]
fn a_batch_started_together_equals_each_request_alone() {
    let dir = tempfile::tempdir().unwrap();
    let generator = gguf(dir.path(), GgufQuant::Q8_0, 24);
    let requests: Vec<GenerateRequest> = [
        "one",
        "the quick brown fox jumps over",
        "hello",
        "a much longer prompt than the others, to be prefilled beside decodes",
    ]
    .iter()
    .map(|p| greedy(p, 12))
    .collect();
    let streams = generator.stream_batch(&requests).unwrap();
    let batched: Vec<_> = streams
        .into_iter()
        .map(|s| s.collect_completion().unwrap())
        .collect();
    for (r, b) in requests.iter().zip(&batched) {
        assert_eq!(&generator.generate(r).unwrap(), b);
    }
    // The blocking batch call agrees too, with a small prefill chunk that
    // mixes prefill and decode rows in one step.
    let small = generator.clone().with_prefill_chunk(3).with_block_size(4);
    let blocking: Vec<_> = small
        .generate_batch(&requests)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(blocking, batched);
}

#[test]
fn stop_strings_and_stop_tokens_end_the_text_where_they_start() {
    let dir = tempfile::tempdir().unwrap();
    let generator = gguf(dir.path(), GgufQuant::F32, 25);
    let free = generator.generate(&greedy("stop here", 40)).unwrap();
    let chars: Vec<char> = free.text.chars().collect();
    assert!(chars.len() > 12, "{:?}", free.text);
    let stop: String = chars[6..9].iter().collect();
    let cut = &free.text[..free.text.find(&stop).unwrap()];
    let mut params = SamplingParams::greedy(40);
    params.stop = vec![stop.clone()];
    let r = GenerateRequest::new(Prompt::Text("stop here".into()), params);
    let stopped = generator.generate(&r).unwrap();
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert_eq!(stopped.text, cut, "stop {stop:?}");

    let third = free.tokens[2];
    let mut params = SamplingParams::greedy(40);
    params.stop_token_ids = vec![third];
    let r = GenerateRequest::new(Prompt::Text("stop here".into()), params);
    let by_token = generator.generate(&r).unwrap();
    assert_eq!(by_token.finish_reason, FinishReason::Stop);
    assert_eq!(by_token.tokens, free.tokens[..3]);
    assert_eq!(by_token.usage.completion_tokens, 3);
}

#[test]
fn length_finish_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let generator = gguf(dir.path(), GgufQuant::Q8_0, 26);
    let mut params = SamplingParams::greedy(7);
    params.ignore_eos = true;
    let r = GenerateRequest::new(Prompt::Tokens(vec![5, 6, 7]), params);
    let out = generator.generate(&r).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.tokens.len(), 7);
    assert_eq!(out.usage.prompt_tokens, 3);
    assert_eq!(out.usage.completion_tokens, out.tokens.len());
}

#[test]
fn the_same_seed_gives_the_same_sample() {
    let dir = tempfile::tempdir().unwrap();
    let generator = gguf(dir.path(), GgufQuant::Q8_0, 27);
    let sampled = |seed: u64| {
        let params = SamplingParams {
            temperature: 1.5,
            top_k: Some(50),
            top_p: Some(0.95),
            seed,
            max_tokens: 24,
            ..SamplingParams::default()
        };
        generator
            .generate(&GenerateRequest::new(Prompt::Text("seeded".into()), params))
            .unwrap()
            .tokens
    };
    assert_eq!(sampled(7), sampled(7));
    assert_ne!(sampled(7), sampled(8));
}

#[test]
fn chat_prompts_use_the_models_template() {
    let dir = tempfile::tempdir().unwrap();
    let generator = gguf(dir.path(), GgufQuant::Q8_0, 28);
    let chat = Prompt::Chat(vec![ChatMessage::new("user", "hi there")]);
    let ids = generator.prompt_tokens(&chat).unwrap();
    let text = generator.tokenizer().decode(&ids, false).unwrap();
    assert!(text.contains("hi there"), "{text}");
    assert!(text.ends_with("assistant\n"), "{text}");
    let out = generator
        .generate(&GenerateRequest::new(chat, SamplingParams::greedy(5)))
        .unwrap();
    assert!(out.usage.completion_tokens >= 1);
}

#[test]
fn bad_requests_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let generator = gguf(dir.path(), GgufQuant::Q8_0, 29);
    let vocab = generator.model().config().vocab as u32;
    let context = generator.model().config().context;
    let bad = [
        GenerateRequest::new(Prompt::Tokens(vec![vocab + 3]), SamplingParams::greedy(4)),
        GenerateRequest::new(Prompt::Tokens(vec![1; context]), SamplingParams::greedy(4)),
        GenerateRequest::new(
            Prompt::Text("x".into()),
            SamplingParams {
                temperature: -1.0,
                ..SamplingParams::greedy(4)
            },
        ),
        GenerateRequest::new(Prompt::Text("x".into()), SamplingParams::greedy(0)),
    ];
    for r in &bad {
        let err = generator.generate(r).unwrap_err();
        assert!(matches!(err, TextError::InvalidInput { .. }), "{err}");
        assert!(generator.stream(r).is_err());
    }
    // One bad request refuses the whole batch.
    let good = greedy("fine", 3);
    assert!(generator.stream_batch(&[good, bad[0].clone()]).is_err());
}

#[test]
fn cancelling_a_stream_ends_it_early() {
    let dir = tempfile::tempdir().unwrap();
    // A long context, so the run cannot end by itself before the cancel.
    let spec = TinyLlama {
        max_position_embeddings: 4096,
        ..TinyLlama::default()
    };
    let path = dir.path().join("long.gguf");
    tiny::write_llama_gguf(&path, &spec, GgufQuant::Q8_0, 30).unwrap();
    let generator = Generator::load(&path, DeviceId::Cpu).unwrap();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(4000)
    };
    let request = GenerateRequest::new(Prompt::Text("go".into()), params);
    let mut stream = generator.stream(&request).unwrap();
    let first = stream.next().unwrap().unwrap();
    assert!(first.finish.is_none());
    stream.cancel();
    let rest: Vec<_> = stream.map(Result::unwrap).collect();
    let done = rest.last().and_then(|d| d.finish).expect("a last delta");
    assert_eq!(done.reason, FinishReason::Cancelled);
    let received: usize = 1 + rest.iter().map(|d| d.tokens.len()).sum::<usize>();
    assert_eq!(done.usage.completion_tokens, received);
    assert!(received < 4000);
    // The caller's own token is not cancelled by the stream.
    assert!(!request.cancel.is_cancelled());

    // A request whose own token is already cancelled ends at once.
    request.cancel.cancel();
    let out = generator
        .stream(&request)
        .unwrap()
        .collect_completion()
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert_eq!(out.usage.completion_tokens, 0);
    // Dropping a stream unread is fine (it cancels its generation).
    drop(generator.stream(&greedy("bye", 50)).unwrap());
}
