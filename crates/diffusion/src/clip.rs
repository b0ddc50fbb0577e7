//! The prompt side: the CLIP tokenizer of a diffusers `tokenizer/` folder and
//! the CLIP text encoder of its `text_encoder/` folder.
//!
//! candle-transformers' Stable Diffusion CLIP keeps its config private (only
//! the released sizes can be built) and its general CLIP text model knows
//! only `quick_gelu`, while SD 2.x's OpenCLIP encoder uses `gelu`. The encoder
//! here reads any size and activation from `config.json`, on the weight
//! names transformers' `CLIPTextModel` writes.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, Module, VarBuilder};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::config::{config_error, read_json};
use crate::error::{DiffusionError, Result};

/// CLIP's start and end tokens.
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// CLIP's word splitter (transformers' CLIPTokenizerFast uses the same).
const SPLIT_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A CLIP tokenizer that pads and truncates every prompt to the encoder's
/// context (77 tokens for every SD text encoder).
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    max_len: usize,
    pad_id: u32,
    eos_id: u32,
}

#[derive(Debug, Deserialize, Default)]
struct TokenizerConfigJson {
    #[serde(default)]
    pad_token: Option<Value>,
}

impl ClipTokenizer {
    /// Loads `tokenizer.json` when the folder has one, else builds CLIP's
    /// byte-level BPE from `vocab.json` and `merges.txt`. Padding follows
    /// `tokenizer_config.json`'s `pad_token` (`<|endoftext|>` in SD 1.x,
    /// `!` in SD 2.x).
    pub fn load(dir: &Path, max_len: usize) -> Result<Self> {
        let json_path = dir.join("tokenizer.json");
        let inner = if json_path.is_file() {
            Tokenizer::from_file(&json_path)
                .map_err(|e| DiffusionError::Tokenizer(e.to_string()))?
        } else {
            from_vocab_and_merges(dir)?
        };
        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfigJson = if config_path.is_file() {
            read_json(&config_path)?
        } else {
            TokenizerConfigJson::default()
        };
        let pad = match &config.pad_token {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => o
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or(EOS)
                .to_owned(),
            _ => EOS.to_owned(),
        };
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| DiffusionError::Tokenizer(format!("the vocabulary lacks {token}")))
        };
        let eos_id = id(EOS)?;
        let pad_id = id(&pad)?;
        if max_len < 2 {
            return Err(DiffusionError::Tokenizer(format!(
                "a context of {max_len} tokens cannot hold start and end"
            )));
        }
        Ok(Self {
            inner,
            max_len,
            pad_id,
            eos_id,
        })
    }

    /// The end-of-text token's id (the pooled output is read there).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The context length every prompt is padded to.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids of `prompt`: start token, the prompt's tokens (truncated so
    /// the end token fits), end token, then padding to [`Self::max_len`].
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(prompt, true)
            .map_err(|e| DiffusionError::Tokenizer(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > self.max_len {
            ids.truncate(self.max_len - 1);
            ids.push(self.eos_id);
        }
        ids.resize(self.max_len, self.pad_id);
        Ok(ids)
    }
}

/// CLIP's tokenizer in the `tokenizers` crate's own JSON form, the
/// components transformers' converter uses for `CLIPTokenizerFast`.
fn from_vocab_and_merges(dir: &Path) -> Result<Tokenizer> {
    let vocab_path = dir.join("vocab.json");
    let vocab: serde_json::Map<String, Value> = read_json(&vocab_path)?;
    let merges_path = dir.join("merges.txt");
    let merges_text = std::fs::read_to_string(&merges_path).map_err(|e| DiffusionError::Io {
        path: merges_path.clone(),
        reason: e.to_string(),
    })?;
    let merges: Vec<&str> = merges_text
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .collect();
    let id_of = |token: &str| {
        vocab
            .get(token)
            .and_then(Value::as_u64)
            .ok_or_else(|| config_error(&vocab_path, format!("no id for {token}")))
    };
    let (bos, eos) = (id_of(BOS)?, id_of(EOS)?);
    let special = |content: &str, id: u64| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": true, "special": true})
    };
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(BOS, bos), special(EOS, eos)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": false}
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [EOS, eos], "cls": [BOS, bos],
                           "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": EOS,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                  "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": merges}
    });
    spec.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| DiffusionError::Tokenizer(format!("{}: {e}", dir.display())))
}

/// `text_encoder/config.json` (transformers' `CLIPTextConfig`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ClipTextJson {
    vocab_size: usize,
    pub(crate) hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "default_positions")]
    pub(crate) max_position_embeddings: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    /// Width of `text_projection` (CLIPTextModelWithProjection only).
    #[serde(default)]
    pub(crate) projection_dim: Option<usize>,
}

fn default_positions() -> usize {
    77
}
fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
    GeluTanh,
}

impl Activation {
    fn apply(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
        }
    }
}

#[derive(Debug)]
struct EncoderLayer {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// What one pass of a [`ClipTextEncoder`] gives.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// The last layer's hidden states after the final layer norm
    /// `[batch, seq, hidden]` (what SD 1.x / 2.x cross-attend to).
    pub last_hidden: Tensor,
    /// The input of the last layer, without the final norm `[batch, seq,
    /// hidden]` (transformers' `hidden_states[-2]`, what SDXL takes).
    pub penultimate: Tensor,
    /// `last_hidden` at each row's end token `[batch, hidden]`, through
    /// `text_projection` when the encoder has one (`[batch, projection]`).
    pub pooled: Tensor,
}

/// A CLIP text encoder (transformers' `CLIPTextModel`, or
/// `CLIPTextModelWithProjection` with its `text_projection`).
#[derive(Debug)]
pub struct ClipTextEncoder {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_norm: LayerNorm,
    heads: usize,
    activation: Activation,
    max_positions: usize,
    projection: Option<Linear>,
}

impl ClipTextEncoder {
    /// Builds the encoder from `config.json` over `vb` (rooted at the file,
    /// the weights under `text_model.`), with the top-level
    /// `text_projection` when `with_projection` is set.
    pub(crate) fn new(
        config: &ClipTextJson,
        path: &Path,
        vb: VarBuilder<'_>,
        with_projection: bool,
    ) -> Result<Self> {
        let activation = match config.hidden_act.as_str() {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            other => {
                return Err(DiffusionError::Unsupported(format!(
                    "text encoder activation {other:?}"
                )));
            }
        };
        let d = config.hidden_size;
        if config.num_attention_heads == 0 || !d.is_multiple_of(config.num_attention_heads) {
            return Err(config_error(
                path,
                "hidden_size does not divide into the heads",
            ));
        }
        let projection = if with_projection {
            let dim = config.projection_dim.ok_or_else(|| {
                config_error(path, "a text encoder with projection needs projection_dim")
            })?;
            Some(candle_nn::linear_no_bias(d, dim, vb.pp("text_projection"))?)
        } else {
            None
        };
        let vb = vb.pp("text_model");
        let emb = vb.pp("embeddings");
        let token_embedding =
            candle_nn::embedding(config.vocab_size, d, emb.pp("token_embedding"))?;
        let position_embedding = candle_nn::embedding(
            config.max_position_embeddings,
            d,
            emb.pp("position_embedding"),
        )?;
        let ln = |vb: VarBuilder<'_>| candle_nn::layer_norm(d, config.layer_norm_eps, vb);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp("encoder.layers").pp(i.to_string());
                let attn = vb.pp("self_attn");
                Ok(EncoderLayer {
                    norm1: ln(vb.pp("layer_norm1"))?,
                    q: candle_nn::linear(d, d, attn.pp("q_proj"))?,
                    k: candle_nn::linear(d, d, attn.pp("k_proj"))?,
                    v: candle_nn::linear(d, d, attn.pp("v_proj"))?,
                    out: candle_nn::linear(d, d, attn.pp("out_proj"))?,
                    norm2: ln(vb.pp("layer_norm2"))?,
                    fc1: candle_nn::linear(d, config.intermediate_size, vb.pp("mlp.fc1"))?,
                    fc2: candle_nn::linear(config.intermediate_size, d, vb.pp("mlp.fc2"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_norm = ln(vb.pp("final_layer_norm"))?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_norm,
            heads: config.num_attention_heads,
            activation,
            max_positions: config.max_position_embeddings,
            projection,
        })
    }

    /// The context length of the position table.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Hidden states `[batch, seq, hidden]` of token ids `[batch, seq]`
    /// (after the final layer norm).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.run(ids)?.1)
    }

    /// The last and penultimate hidden states and the pooled output of
    /// token ids `[batch, seq]`, pooled at each row's first `eos_id` (the
    /// last position when a row has none).
    pub fn forward_all(&self, ids: &Tensor, eos_id: u32) -> Result<ClipOutput> {
        let (penultimate, last_hidden) = self.run(ids)?;
        let (batch, seq) = ids.dims2()?;
        let rows: Vec<Vec<u32>> = ids.to_vec2()?;
        let at: Vec<u32> = rows
            .iter()
            .enumerate()
            .map(|(r, row)| {
                let p = row.iter().position(|&t| t == eos_id).unwrap_or(seq - 1);
                (r * seq + p) as u32
            })
            .collect();
        let at = Tensor::from_vec(at, batch, ids.device())?;
        let pooled = last_hidden.flatten_to(1)?.index_select(&at, 0)?;
        let pooled = match &self.projection {
            Some(projection) => projection.forward(&pooled)?,
            None => pooled,
        };
        Ok(ClipOutput {
            last_hidden,
            penultimate,
            pooled,
        })
    }

    /// (penultimate hidden states, final-normed last hidden states).
    fn run(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (batch, seq) = ids.dims2()?;
        if seq > self.max_positions {
            return Err(DiffusionError::InvalidInput {
                field: "prompt",
                reason: format!("{seq} tokens exceed the encoder's {}", self.max_positions),
            });
        }
        let device = ids.device();
        let positions = Tensor::arange(0u32, seq as u32, device)?;
        let mut xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(seq, xs.dtype(), device)?;
        let d = xs.dim(D::Minus1)?;
        let head_dim = d / self.heads;
        let scale = (head_dim as f64).powf(-0.5);
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, seq, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let mut penultimate = xs.clone();
        for layer in &self.layers {
            penultimate = xs.clone();
            let h = layer.norm1.forward(&xs)?;
            let q = split((layer.q.forward(&h)? * scale)?)?;
            let k = split(layer.k.forward(&h)?)?;
            let v = split(layer.v.forward(&h)?)?;
            let scores = q.matmul(&k.t()?)?.broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let attended = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((batch, seq, d))?;
            xs = (xs + layer.out.forward(&attended)?)?;
            let h = layer.norm2.forward(&xs)?;
            let h = layer
                .fc2
                .forward(&self.activation.apply(&layer.fc1.forward(&h)?)?)?;
            xs = (xs + h)?;
        }
        Ok((penultimate, self.final_norm.forward(&xs)?))
    }
}

/// `[seq, seq]` with `-inf` above the diagonal.
fn causal_mask(seq: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (seq, seq), device)?.to_dtype(dtype)
}
