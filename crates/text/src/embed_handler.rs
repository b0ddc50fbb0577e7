//! [`EmbeddingHandler`]: any [`Embedder`] as a `switchyard-batch` handler.

use std::sync::Arc;

use switchyard_batch::{BatchContext, BatchHandler};

use crate::{Embedded, Embedder, TextError};

/// Runs a batch of texts through an [`Embedder`] in one call (which packs
/// them by length itself) and answers each with its [`Embedded`] vector and
/// token count, pausing between its steps while the device's
/// [`YieldGate`](switchyard_batch::YieldGate) holds the batch. A failure fails every request of the batch with
/// the same shared error. Cost is an estimate of tokens (bytes / 4 + 2,
/// capped at the model's limit), so `max_batch_cost` works like TEI's
/// `max_batch_tokens` without tokenising at submit time.
///
/// ```
/// use std::sync::Arc;
/// use switchyard_batch::Batcher;
/// use switchyard_core::DeviceId;
/// use switchyard_testkit::tiny::{self, TinyBert};
/// use switchyard_text::{BertEmbedder, Embedder, EmbeddingHandler};
///
/// let dir = tempfile::tempdir()?;
/// tiny::write_bert(dir.path(), &TinyBert::default(), 7)?;
/// let embedder = Arc::new(BertEmbedder::load(dir.path(), DeviceId::Cpu)?);
/// let batcher = Batcher::builder(EmbeddingHandler::new(embedder.clone())).build()?;
/// let embedded = batcher.process("hello world".to_owned())?;
/// assert_eq!(embedded.vector.len(), embedder.dimension());
/// // [CLS] hello world [SEP], as the model read it.
/// assert_eq!(embedded.tokens, Some(embedder.token_ids("hello world")?.len()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct EmbeddingHandler {
    embedder: Arc<dyn Embedder>,
}

impl std::fmt::Debug for EmbeddingHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingHandler")
            .field("dimension", &self.embedder.dimension())
            .finish()
    }
}

impl EmbeddingHandler {
    /// A handler over `embedder`.
    pub fn new(embedder: Arc<dyn Embedder>) -> Self {
        Self { embedder }
    }
}

impl BatchHandler for EmbeddingHandler {
    type Input = String;
    type Output = Embedded;
    type Error = Arc<TextError>;

    fn run(
        &self,
        batch: &mut [String],
        context: &BatchContext<'_>,
    ) -> Vec<Result<Embedded, Arc<TextError>>> {
        let texts: Vec<&str> = batch.iter().map(String::as_str).collect();
        // Between layers the batch gives way to more urgent work of the
        // device's other pipelines (see `BatchContext::yield_point`).
        match self
            .embedder
            .embed_counted(&texts, &|| context.yield_point())
        {
            Ok(vectors) => vectors.into_iter().map(Ok).collect(),
            Err(e) => {
                let e = Arc::new(e);
                batch.iter().map(|_| Err(Arc::clone(&e))).collect()
            }
        }
    }

    fn cost(&self, input: &String) -> u64 {
        let tokens = (input.len() / 4 + 2).min(self.embedder.max_tokens());
        tokens as u64
    }
    /// Allocation failures (CUDA's out of memory, as candle reports them):
    /// the batcher frees memory and runs the inputs again in halves.
    fn is_out_of_memory(&self, error: &Self::Error) -> bool {
        switchyard_core::is_out_of_memory_message(&error.to_string())
    }
}
