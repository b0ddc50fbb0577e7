//! Text pipelines on candle.
//!
//! `switchyard-text` owns everything that turns text into numbers and back:
//! tokenizers (`tokenizer.json`, and GGUF metadata), chat templates,
//! sentence embeddings, and (in later issues) Llama-family generation with
//! continuous batching over the paged KV cache. It does not queue or schedule
//! requests (that is `switchyard-batch`) and does not decide which models stay
//! loaded (`switchyard-cache`).
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
//!   trait.
//!
//! # Example
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
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod embed;
mod embed_handler;
mod error;
mod gguf_meta;
mod gguf_tokenizer;
mod llama;
mod sampling;
mod stop;
mod template;
mod tokenizer;

pub use embed::{BertEmbedder, Embedder, Packing, Pooling, cosine_similarity, pack_by_length};
pub use embed_handler::EmbeddingHandler;
pub use error::{Result, TextError};
pub use gguf_meta::{GgufMetadata, MetaValue};
pub use gguf_tokenizer::{GgufTokenizerInfo, tokenizer_from_gguf};
pub use llama::{LlamaConfig, LlamaFlavor, LlamaModel, PagedKvCache, SeqStep};
pub use sampling::{Sampler, SamplingParams, argmax};
pub use stop::{FinishReason, StopMatcher, Usage};
pub use template::{ChatMessage, ChatTemplate};
pub use tokenizer::{StreamDecoder, TextTokenizer};
