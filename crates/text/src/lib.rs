//! Text pipelines on candle.
//!
//! `switchyard-text` owns everything that turns text into numbers and back:
//! tokenizers (`tokenizer.json`, and GGUF metadata), chat templates,
//! sentence embeddings, and Llama-family generation over a paged KV cache
//! with continuous batching on top (its queue and PID controller come from
//! `switchyard-batch`). It does not batch other kinds of requests (that is
//! `switchyard-batch`) and does not decide which models stay loaded
//! (`switchyard-cache`).
//!
//! Today it provides:
//!
//! - [`TextTokenizer`]: a `tokenizer.json`, or the tokenizer a GGUF file
//!   carries (`gpt2` byte-level BPE with the `smollm`, `llama-bpe`, `qwen2`
//!   or `default` split; `llama` SentencePiece-style pieces with byte
//!   fallback; control tokens special; `add_bos_token`/`add_eos_token`
//!   honoured), read through [`GgufMetadata`], a metadata reader that checks
//!   every length against the file so forged counts are errors, not
//!   allocations; [`StreamDecoder`] for streaming text that never splits a
//!   character;
//! - [`ChatTemplate`]: the model's own Jinja chat template rendered with
//!   minijinja as transformers renders it, on bounded fuel;
//! - [`BertEmbedder`], which loads a sentence-transformers folder (such as
//!   all-MiniLM-L6-v2) and embeds batches of texts behind the [`Embedder`]
//!   trait;
//! - [`LlamaModel`]: Llama 2/3, SmolLM, TinyLlama, Mistral and Qwen2 from GGUF
//!   (quantised) or safetensors, whose [`forward`](LlamaModel::forward) runs
//!   a batch of sequences, each at its own position, with keys and values in
//!   a [`PagedKvCache`] addressed through `switchyard-pool` block tables;
//! - [`Generator`]: prompts (text, tokens or chat), per-request
//!   [`SamplingParams`], stop strings and tokens, finish reasons and usage,
//!   streamed as [`TextDelta`]s through a blocking iterator or a
//!   `futures_core::Stream`, cancellable within one step;
//! - [`GenerationEngine`]: continuous batching for requests arriving at any
//!   time — an iteration-level scheduler with chunked prefill, preemption by
//!   recomputation, prefix caching, priorities and deadlines, and PID control
//!   of concurrency from measured inter-token latency.
//!
//! # Example: embeddings
//!
//! ```
//! use switchyard_core::DeviceId;
//! use switchyard_text::{BertEmbedder, Embedder, cosine_similarity};
//! use switchyard_testkit::tiny::{self, TinyBert};
//!
//! // A tiny BERT with random weights, in the sentence-transformers layout.
//! let dir = tempfile::tempdir()?;
//! tiny::write_bert(dir.path(), &TinyBert::default(), 7)?;
//!
//! let embedder = BertEmbedder::load(dir.path(), DeviceId::Cpu)?;
//! let vectors = embedder.embed(&["hello world", "the quick brown fox"])?;
//! assert_eq!(vectors.len(), 2);
//! assert_eq!(vectors[0].len(), embedder.dimension());
//! let same = cosine_similarity(&vectors[0], &vectors[0]);
//! assert!((same - 1.0).abs() < 1e-5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Example: generation
//!
//! ```
//! use switchyard_core::DeviceId;
//! use switchyard_text::{GenerateRequest, Generator, Prompt, SamplingParams};
//! use switchyard_testkit::tiny::{self, GgufQuant, TinyLlama};
//!
//! // A tiny Llama with random weights, as one GGUF file.
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("tiny.gguf");
//! tiny::write_llama_gguf(&path, &TinyLlama::default(), GgufQuant::Q8_0, 7)?;
//!
//! let generator = Generator::load(&path, DeviceId::Cpu)?;
//! let request = GenerateRequest::new(
//!     Prompt::Text("Once upon a time".into()),
//!     SamplingParams { ignore_eos: true, ..SamplingParams::greedy(8) },
//! );
//! let mut text = String::new();
//! for delta in generator.stream(&request)? {
//!     let delta = delta?;
//!     text.push_str(&delta.text);
//!     if let Some(done) = delta.finish {
//!         assert_eq!(done.usage.completion_tokens, 8);
//!     }
//! }
//! assert_eq!(text, generator.generate(&request)?.text);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod bert_encoder;
mod compute_pool;
mod embed;
mod embed_handler;
mod error;
mod generate;
mod gguf_meta;
mod gguf_tokenizer;
mod json_file;
mod llama;
mod sampling;
mod stop;
mod template;
mod tokenizer;

pub use compute_pool::CandleComputePool;
pub use embed::{
    BertEmbedder, Embedded, Embedder, Packing, Pooling, cosine_similarity, pack_by_length,
};
pub use embed_handler::EmbeddingHandler;
pub use error::{Result, TextError};
pub use generate::{
    Completion, Finished, GenerateRequest, GenerationEngine, GenerationEngineConfig,
    GenerationStats, GenerationStream, Generator, LatencyControl, Prompt, RequestOptions,
    ShutdownMode, TextDelta,
};
pub use gguf_meta::{GgufMetadata, MetaValue};
pub use gguf_tokenizer::{GgufTokenizerInfo, tokenizer_from_gguf};
pub use llama::{
    LlamaConfig, LlamaFlavor, LlamaModel, LoadOptions, PagedKvCache, QuantMatmul, RopeScaling,
    SeqStep,
};
pub use sampling::{Sampler, SamplingParams, argmax};
pub use stop::{FinishReason, StopMatcher, Usage};
/// The kernels' thread-pool trait and instruction sets, for callers that
/// report or pick them.
pub use switchyard_kernels::{ComputePool, Isa};
pub use template::{ChatMessage, ChatTemplate};
pub use tokenizer::{StreamDecoder, TextTokenizer};
