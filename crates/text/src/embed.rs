//! Sentence embeddings with BERT-family encoders in the sentence-transformers layout.

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config as BertConfig;
use serde::Deserialize;
use switchyard_core::DeviceId;
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert_encoder::LayeredBert;
use crate::json_file::{read_json, read_optional_json};
use crate::{Result, TextError};

/// Something that turns texts into fixed-size vectors.
pub trait Embedder: Send + Sync {
    /// Length of every vector [`embed`](Embedder::embed) returns.
    fn dimension(&self) -> usize;

    /// Longest input in tokens; longer inputs are truncated.
    fn max_tokens(&self) -> usize;

    /// One vector per text, in order. An empty slice gives an empty result.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;

    /// As [`embed`](Embedder::embed), calling `pause` between the steps of
    /// the work (a BERT encoder: before each layer of each forward pass).
    /// `pause` may block; a batch runner passes one that waits while more
    /// urgent work holds the device. The default cannot pause: it ignores
    /// `pause` and calls `embed`.
    fn embed_pausing(&self, texts: &[&str], pause: &dyn Fn()) -> Result<Vec<Vec<f32>>> {
        let _ = pause;
        self.embed(texts)
    }

    /// As [`embed_pausing`](Embedder::embed_pausing), also telling how
    /// many tokens the model read for each text (special tokens included,
    /// after truncation): what OpenAI's `usage` counts, known without
    /// tokenising twice. The default cannot count: it calls
    /// `embed_pausing` and leaves [`Embedded::tokens`] `None`.
    fn embed_counted(&self, texts: &[&str], pause: &dyn Fn()) -> Result<Vec<Embedded>> {
        Ok(self
            .embed_pausing(texts, pause)?
            .into_iter()
            .map(|vector| Embedded {
                vector,
                tokens: None,
            })
            .collect())
    }
}

/// One text's vector and the tokens it was read as.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// The embedding.
    pub vector: Vec<f32>,
    /// Tokens the model read (special tokens included, after truncation);
    /// `None` when the embedder cannot tell.
    pub tokens: Option<usize>,
}

/// How token vectors become one sentence vector (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over real (unpadded) tokens; all-MiniLM-L6-v2's choice.
    Mean,
    /// The first (`[CLS]`) token.
    Cls,
    /// Element-wise maximum over real tokens.
    Max,
}

#[derive(Debug, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
}

/// A BERT encoder with sentence-transformers pooling and normalisation.
///
/// [`load`](BertEmbedder::load) reads a sentence-transformers folder:
/// `config.json`, `model.safetensors` (memory-mapped), `tokenizer.json`, and
/// where present `1_Pooling/config.json` (pooling mode, default mean),
/// `modules.json` (a `Normalize` module turns on L2 normalisation) and
/// `sentence_bert_config.json` (`max_seq_length`).
pub struct BertEmbedder {
    model: LayeredBert,
    tokenizer: Tokenizer,
    device: Device,
    dimension: usize,
    max_tokens: usize,
    pooling: Pooling,
    normalize: bool,
    pad_id: u32,
    packing: Packing,
}

/// How [`BertEmbedder::embed`] groups texts into forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    /// Most padded tokens (rows x longest row) in one forward pass, like
    /// TEI's `max_batch_tokens`.
    pub max_batch_tokens: usize,
    /// Most texts in one forward pass.
    pub max_batch_size: usize,
}

impl Default for Packing {
    fn default() -> Self {
        Self {
            max_batch_tokens: 8192,
            max_batch_size: 64,
        }
    }
}

/// Group `lens` (token counts, by input index) into batches: sorted by
/// length so texts of similar length share a batch and little is padding,
/// each batch within the token budget and size. Returns input indices.
pub fn pack_by_length(lens: &[usize], packing: Packing) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (lens[i], i));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending: the newcomer is the longest row of the batch.
        let rows = current.len() + 1;
        let fits = rows <= packing.max_batch_size.max(1)
            && rows.saturating_mul(lens[i]) <= packing.max_batch_tokens;
        if !fits && !current.is_empty() {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

impl fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BertEmbedder")
            .field("device", &DeviceId::from(&self.device))
            .field("dimension", &self.dimension)
            .field("max_tokens", &self.max_tokens)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .finish()
    }
}

impl BertEmbedder {
    /// Load a sentence-transformers folder onto `device`.
    pub fn load(dir: &Path, device: DeviceId) -> Result<Self> {
        let device = device.to_candle()?;
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        let pooling = match read_optional_json::<PoolingConfig>(&dir.join("1_Pooling/config.json"))?
        {
            Some(p) if p.pooling_mode_cls_token => Pooling::Cls,
            Some(p) if p.pooling_mode_max_tokens => Pooling::Max,
            _ => Pooling::Mean,
        };
        let normalize = read_optional_json::<Vec<ModuleEntry>>(&dir.join("modules.json"))?
            .is_some_and(|m| m.iter().any(|e| e.kind.ends_with(".Normalize")));
        let max_seq =
            read_optional_json::<SentenceBertConfig>(&dir.join("sentence_bert_config.json"))?
                .and_then(|c| c.max_seq_length);
        let max_tokens = max_seq
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);

        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), max_tokens)?;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(TextError::ModelLoad {
                model: dir.to_path_buf(),
                reason: "model.safetensors is missing".into(),
            });
        }
        let load_err = |e: candle_core::Error| TextError::ModelLoad {
            model: dir.to_path_buf(),
            reason: e.to_string(),
        };
        // SAFETY: the weights file is mapped read-only and only read while
        // loading; callers must not truncate or rewrite model files in place
        // while a model is loading from them (as with any mmap-based loader).
        #[allow(unsafe_code)]
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .map_err(load_err)?;
        let model = LayeredBert::load(vb, &config).map_err(load_err)?;
        Ok(Self {
            model,
            tokenizer,
            device,
            dimension: config.hidden_size,
            max_tokens,
            pooling,
            normalize,
            pad_id: u32::try_from(config.pad_token_id).unwrap_or(0),
            packing: Packing::default(),
        })
    }

    /// Group texts into forward passes by `packing` instead of the default.
    pub fn with_packing(mut self, packing: Packing) -> Self {
        self.packing = packing;
        self
    }

    /// Token ids of `text` as the model sees them (special tokens added,
    /// truncated to [`Embedder::max_tokens`]).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let e = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        Ok(e.get_ids().to_vec())
    }

    /// One forward pass over `rows` (token ids), padded to the longest,
    /// calling `pause` before each layer.
    fn forward_rows(&self, rows: &[&[u32]], pause: &dyn Fn()) -> Result<Vec<Vec<f32>>> {
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * longest);
        let mut mask = Vec::with_capacity(rows.len() * longest);
        for r in rows {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat_n(self.pad_id, longest - r.len()));
            mask.extend(std::iter::repeat_n(1u32, r.len()));
            mask.extend(std::iter::repeat_n(0u32, longest - r.len()));
        }
        let shape = (rows.len(), longest);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &type_ids, &mask, pause)?;
        let pooled = self.pool(&hidden, &mask)?;
        Ok(pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }

    /// The pooling mode read from the folder.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether vectors are L2-normalised.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    fn pool(&self, hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, seq, 1)
        let pooled = match self.pooling {
            Pooling::Cls => hidden.i((.., 0))?,
            Pooling::Mean => {
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                summed.broadcast_div(&counts)?
            }
            Pooling::Max => {
                // Padded positions are pushed far below any real value.
                let penalty = ((mask - 1.0)? * 1e9)?;
                hidden.broadcast_add(&penalty)?.max(1)?
            }
        };
        if self.normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12f32, f32::MAX)?;
            Ok(pooled.broadcast_div(&norm)?)
        } else {
            Ok(pooled)
        }
    }
}

fn load_tokenizer(path: &PathBuf, max_tokens: usize) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| TextError::Tokenizer(format!("{}: {e}", path.display())))?;
    // Padding is ours: each packed batch pads to its own longest row.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|e| TextError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}

impl Embedder for BertEmbedder {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_pausing(texts, &|| {})
    }

    fn embed_pausing(&self, texts: &[&str], pause: &dyn Fn()) -> Result<Vec<Vec<f32>>> {
        let embedded = self.embed_counted(texts, pause)?;
        Ok(embedded.into_iter().map(|e| e.vector).collect())
    }

    fn embed_counted(&self, texts: &[&str], pause: &dyn Fn()) -> Result<Vec<Embedded>> {
        // Tokenise one text at a time: tokenizers' batch encoding starts its
        // own thread pool, which would fight candle's for the same cores.
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<_>>()?;
        let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let mut out: Vec<Embedded> = lens
            .iter()
            .map(|&n| Embedded {
                vector: Vec::new(),
                tokens: Some(n),
            })
            .collect();
        for batch in pack_by_length(&lens, self.packing) {
            let rows: Vec<&[u32]> = batch.iter().map(|&i| ids[i].as_slice()).collect();
            for (i, vector) in batch.into_iter().zip(self.forward_rows(&rows, pause)?) {
                out[i].vector = vector;
            }
        }
        Ok(out)
    }
}

/// Cosine of the angle between two vectors; 0 when either is all zeros or
/// their lengths differ.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_edge_cases() {
        assert_eq!(cosine_similarity(&[1.0, 0.0], &[0.0, 1.0]), 0.0);
        assert!((cosine_similarity(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
        assert_eq!(cosine_similarity(&[1.0], &[1.0, 2.0]), 0.0);
    }
}

#[cfg(test)]
mod packing_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_text_lands_in_exactly_one_batch_within_budget(
            lens in proptest::collection::vec(0usize..300, 0..60),
            tokens in 1usize..2000,
            size in 1usize..16,
        ) {
            let packing = Packing { max_batch_tokens: tokens, max_batch_size: size };
            let batches = pack_by_length(&lens, packing);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
            for b in &batches {
                prop_assert!(!b.is_empty());
                prop_assert!(b.len() <= size);
                let longest = b.iter().map(|&i| lens[i]).max().unwrap_or(0);
                // A single text over the budget still runs, alone.
                prop_assert!(b.len() == 1 || b.len() * longest <= tokens);
                prop_assert!(b.windows(2).all(|w| lens[w[0]] <= lens[w[1]]));
            }
        }
    }
}
