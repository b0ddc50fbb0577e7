//! A tiny BERT in the sentence-transformers folder layout.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;

use super::{Result, SplitMix64, TinyWordPiece, tensor_err, write_json};

/// Shape of the tiny BERT. The vocabulary is [`TinyWordPiece::new`]'s.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyBert {
    /// Width of the hidden states (the embedding dimension).
    pub hidden_size: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Longest input in tokens.
    pub max_position_embeddings: usize,
    /// `max_seq_length` in `sentence_bert_config.json`.
    pub max_seq_length: usize,
    /// Whether `modules.json` lists a Normalize module (as all-MiniLM-L6-v2's does).
    pub normalize: bool,
}

impl Default for TinyBert {
    fn default() -> Self {
        Self {
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 4,
            max_position_embeddings: 128,
            max_seq_length: 64,
            normalize: true,
        }
    }
}

/// Write a tiny BERT as a sentence-transformers folder: `config.json`,
/// `model.safetensors`, `tokenizer.json`, `modules.json`,
/// `1_Pooling/config.json` (mean pooling) and `sentence_bert_config.json`.
pub fn write_bert(dir: &Path, spec: &TinyBert, seed: u64) -> Result<()> {
    let tokenizer = TinyWordPiece::new();
    let vocab = tokenizer.vocab_size();
    let (h, i) = (spec.hidden_size, spec.intermediate_size);
    write_json(
        &dir.join("config.json"),
        &json!({
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": vocab,
            "hidden_size": h,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "intermediate_size": i,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": spec.max_position_embeddings,
            "type_vocab_size": 2,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-12,
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
            "torch_dtype": "float32",
        }),
    )?;
    write_json(&dir.join("tokenizer.json"), &tokenizer.tokenizer_json())?;
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if spec.normalize {
        modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
    }
    write_json(&dir.join("modules.json"), &json!(modules))?;
    write_json(
        &dir.join("1_Pooling/config.json"),
        &json!({
            "word_embedding_dimension": h,
            "pooling_mode_cls_token": false,
            "pooling_mode_mean_tokens": true,
            "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false,
        }),
    )?;
    write_json(
        &dir.join("sentence_bert_config.json"),
        &json!({"max_seq_length": spec.max_seq_length, "do_lower_case": false}),
    )?;

    let mut w = Weights {
        rng: SplitMix64::new(seed),
        tensors: HashMap::new(),
    };
    w.add(
        "embeddings.word_embeddings.weight",
        &[vocab, h],
        Init::Weight,
    )?;
    let positions = spec.max_position_embeddings;
    w.add(
        "embeddings.position_embeddings.weight",
        &[positions, h],
        Init::Weight,
    )?;
    w.add(
        "embeddings.token_type_embeddings.weight",
        &[2, h],
        Init::Weight,
    )?;
    w.norm("embeddings.LayerNorm", h)?;
    for l in 0..spec.num_layers {
        let p = format!("encoder.layer.{l}");
        for part in ["query", "key", "value"] {
            w.linear(&format!("{p}.attention.self.{part}"), h, h)?;
        }
        w.linear(&format!("{p}.attention.output.dense"), h, h)?;
        w.norm(&format!("{p}.attention.output.LayerNorm"), h)?;
        w.linear(&format!("{p}.intermediate.dense"), i, h)?;
        w.linear(&format!("{p}.output.dense"), h, i)?;
        w.norm(&format!("{p}.output.LayerNorm"), h)?;
    }
    w.linear("pooler.dense", h, h)?;
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&w.tensors, &path).map_err(tensor_err("model.safetensors"))
}

struct Weights {
    rng: SplitMix64,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    fn add(&mut self, name: &str, shape: &[usize], init: Init) -> Result<()> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match init {
            Init::Weight => self.rng.normal_vec(n, 0.02),
            Init::Gain => (0..n)
                .map(|_| 1.0 + 0.05 * self.rng.next_normal())
                .collect(),
            Init::Bias => self.rng.normal_vec(n, 0.01),
        };
        let t = Tensor::from_vec(data, shape, &Device::Cpu).map_err(tensor_err(name))?;
        self.tensors.insert(name.to_owned(), t);
        Ok(())
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize) -> Result<()> {
        self.add(&format!("{prefix}.weight"), &[out, inp], Init::Weight)?;
        self.add(&format!("{prefix}.bias"), &[out], Init::Bias)
    }

    fn norm(&mut self, prefix: &str, width: usize) -> Result<()> {
        self.add(&format!("{prefix}.weight"), &[width], Init::Gain)?;
        self.add(&format!("{prefix}.bias"), &[width], Init::Bias)
    }
}

#[derive(Clone, Copy)]
enum Init {
    Weight,
    Gain,
    Bias,
}
