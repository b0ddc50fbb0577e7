//! Sentence embeddings with BERT-family encoders in the sentence-transformers layout.

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde::Deserialize;
use switchyard_core::DeviceId;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::{Result, TextError};

/// Something that turns texts into fixed-size vectors.
pub trait Embedder: Send + Sync {
    /// Length of every vector [`embed`](Embedder::embed) returns.
    fn dimension(&self) -> usize;

    /// Longest input in tokens; longer inputs are truncated.
    fn max_tokens(&self) -> usize;

    /// One vector per text, in order. An empty slice gives an empty result.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
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
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dimension: usize,
    max_tokens: usize,
    pooling: Pooling,
    normalize: bool,
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

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| TextError::Config {
        path: path.to_path_buf(),
        source,
    })
}

fn read_optional_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
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

        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), &config, max_tokens)?;
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
        let model = BertModel::load(vb, &config).map_err(load_err)?;
        Ok(Self {
            model,
            tokenizer,
            device,
            dimension: config.hidden_size,
            max_tokens,
            pooling,
            normalize,
        })
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

fn load_tokenizer(path: &PathBuf, config: &BertConfig, max_tokens: usize) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| TextError::Tokenizer(format!("{}: {e}", path.display())))?;
    let pad_id = config.pad_token_id as u32;
    let pad_token = tokenizer
        .id_to_token(pad_id)
        .unwrap_or_else(|| "[PAD]".to_owned());
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_id,
        pad_token,
        ..Default::default()
    }));
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
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        let rows = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor> {
            let data: Vec<Tensor> = encodings
                .iter()
                .map(|e| Tensor::new(f(e), &self.device))
                .collect::<candle_core::Result<_>>()?;
            Ok(Tensor::stack(&data, 0)?)
        };
        let ids = rows(&|e| e.get_ids())?;
        let type_ids = rows(&|e| e.get_type_ids())?;
        let mask = rows(&|e| e.get_attention_mask())?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
        let pooled = self.pool(&hidden, &mask)?;
        Ok(pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?)
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
