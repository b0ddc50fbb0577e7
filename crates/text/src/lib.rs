//! Text pipelines on candle.
//!
//! `switchyard-text` owns everything that turns text into numbers and back:
//! tokenizers (`tokenizer.json`, and later GGUF metadata), chat templates,
//! sentence embeddings, and (in later issues) Llama-family generation with
//! continuous batching over the paged KV cache. It does not queue or schedule
//! requests (that is `switchyard-batch`) and does not decide which models stay
//! loaded (`switchyard-cache`).
//!
//! Today it provides [`BertEmbedder`], which loads a sentence-transformers
//! folder (such as all-MiniLM-L6-v2) and embeds batches of texts behind the
//! [`Embedder`] trait.
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
mod error;

pub use embed::{BertEmbedder, Embedder, Pooling, cosine_similarity};
pub use error::{Result, TextError};
