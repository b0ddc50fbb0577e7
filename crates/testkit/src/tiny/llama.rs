//! A tiny Llama-architecture model, as safetensors and as GGUF.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::{Result, SplitMix64, TinyBpe, TinyError, ensure_parent, tensor_err, write_json};

/// Shape of the tiny Llama. The vocabulary is [`TinyBpe::default`]'s.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyLlama {
    /// Width of the residual stream (a multiple of 32 for quantized GGUF).
    pub hidden_size: usize,
    /// Width of the MLP (a multiple of 32 for quantized GGUF).
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Longest supported context.
    pub max_position_embeddings: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Share the embedding matrix with the output head (as SmolLM2 does).
    pub tie_word_embeddings: bool,
    /// Element type of the safetensors weights (F32, F16 or BF16).
    pub dtype: DType,
    /// Write a Qwen2 instead: biases on the query, key and value
    /// projections, `model_type` `qwen2`, GGUF architecture `qwen2` (whose
    /// rows llama.cpp does not permute).
    pub qwen2: bool,
}

impl Default for TinyLlama {
    fn default() -> Self {
        Self {
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            max_position_embeddings: 256,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: false,
            dtype: DType::F32,
            qwen2: false,
        }
    }
}

impl TinyLlama {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TinyError::InvalidSpec(m.to_owned()));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_layers == 0 {
            return bad("heads, kv heads and layers must be positive");
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) || !self.head_dim().is_multiple_of(2) {
            return bad("hidden_size / num_heads must be a whole, even head width");
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad("num_heads must be a multiple of num_kv_heads");
        }
        Ok(())
    }

    /// The Hugging Face `config.json` of this model.
    pub fn config_json(&self, tokenizer: &TinyBpe) -> serde_json::Value {
        let dtype = match self.dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        };
        let (arch, model_type) = if self.qwen2 {
            ("Qwen2ForCausalLM", "qwen2")
        } else {
            ("LlamaForCausalLM", "llama")
        };
        json!({
            "architectures": [arch],
            "model_type": model_type,
            "sliding_window": self.max_position_embeddings,
            "max_window_layers": self.num_layers,
            "use_sliding_window": false,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "vocab_size": tokenizer.vocab_size(),
            "bos_token_id": tokenizer.bos_id(),
            "eos_token_id": tokenizer.eos_id(),
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": dtype,
        })
    }
}

/// Files written by [`write_llama_safetensors`].
#[derive(Debug, Clone)]
pub struct LlamaFiles {
    /// The folder.
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// `model.safetensors`.
    pub weights: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `tokenizer_config.json` (with the chat template).
    pub tokenizer_config: PathBuf,
}

/// Weights in Hugging Face naming, f32, in a fixed order.
fn weights(spec: &TinyLlama, vocab: usize, seed: u64) -> Result<Vec<(String, Tensor)>> {
    spec.validate()?;
    let mut rng = SplitMix64::new(seed);
    let (h, i, hd) = (spec.hidden_size, spec.intermediate_size, spec.head_dim());
    let kv = spec.num_kv_heads * hd;
    let mut out = Vec::new();
    let mut push = |name: String, shape: &[usize], rng: &mut SplitMix64, norm: bool| {
        let n = shape.iter().product();
        let data = if norm {
            (0..n).map(|_| 1.0 + 0.1 * rng.next_normal()).collect()
        } else {
            rng.normal_vec(n, 0.02)
        };
        let t = Tensor::from_vec(data, shape, &Device::Cpu).map_err(tensor_err(&name))?;
        out.push((name, t));
        Ok::<(), TinyError>(())
    };
    push(
        "model.embed_tokens.weight".into(),
        &[vocab, h],
        &mut rng,
        false,
    )?;
    for l in 0..spec.num_layers {
        let p = format!("model.layers.{l}");
        push(
            format!("{p}.self_attn.q_proj.weight"),
            &[h, h],
            &mut rng,
            false,
        )?;
        push(
            format!("{p}.self_attn.k_proj.weight"),
            &[kv, h],
            &mut rng,
            false,
        )?;
        push(
            format!("{p}.self_attn.v_proj.weight"),
            &[kv, h],
            &mut rng,
            false,
        )?;
        if spec.qwen2 {
            for (name, len) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv)] {
                push(
                    format!("{p}.self_attn.{name}.bias"),
                    &[len],
                    &mut rng,
                    false,
                )?;
            }
        }
        push(
            format!("{p}.self_attn.o_proj.weight"),
            &[h, h],
            &mut rng,
            false,
        )?;
        push(
            format!("{p}.mlp.gate_proj.weight"),
            &[i, h],
            &mut rng,
            false,
        )?;
        push(format!("{p}.mlp.up_proj.weight"), &[i, h], &mut rng, false)?;
        push(
            format!("{p}.mlp.down_proj.weight"),
            &[h, i],
            &mut rng,
            false,
        )?;
        push(format!("{p}.input_layernorm.weight"), &[h], &mut rng, true)?;
        push(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            &mut rng,
            true,
        )?;
    }
    push("model.norm.weight".into(), &[h], &mut rng, true)?;
    if !spec.tie_word_embeddings {
        push("lm_head.weight".into(), &[vocab, h], &mut rng, false)?;
    }
    Ok(out)
}

/// Write a tiny Llama as a Hugging Face folder: `config.json`,
/// `model.safetensors` (in `spec.dtype`), `tokenizer.json` and
/// `tokenizer_config.json`.
pub fn write_llama_safetensors(dir: &Path, spec: &TinyLlama, seed: u64) -> Result<LlamaFiles> {
    let tokenizer = TinyBpe::default();
    let files = LlamaFiles {
        dir: dir.to_path_buf(),
        config: dir.join("config.json"),
        weights: dir.join("model.safetensors"),
        tokenizer: dir.join("tokenizer.json"),
        tokenizer_config: dir.join("tokenizer_config.json"),
    };
    write_json(&files.config, &spec.config_json(&tokenizer))?;
    write_json(&files.tokenizer, &tokenizer.tokenizer_json())?;
    write_json(&files.tokenizer_config, &tokenizer.tokenizer_config_json())?;
    let mut tensors = HashMap::new();
    for (name, t) in weights(spec, tokenizer.vocab_size(), seed)? {
        let t = t.to_dtype(spec.dtype).map_err(tensor_err(&name))?;
        tensors.insert(name, t);
    }
    ensure_parent(&files.weights)?;
    candle_core::safetensors::save(&tensors, &files.weights)
        .map_err(tensor_err("model.safetensors"))?;
    Ok(files)
}

/// Element type of the matrices in a tiny GGUF (norms are always F32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufQuant {
    /// Unquantized 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// 8-bit blocks of 32 with an f16 scale.
    Q8_0,
    /// 4-bit blocks of 32 with an f16 scale.
    Q4_0,
    /// 4-bit blocks of 32 with an f16 scale and minimum (SmolLM2's format).
    Q4_1,
    /// 5-bit blocks of 32 with an f16 scale.
    Q5_0,
    /// 5-bit blocks of 32 with an f16 scale and minimum.
    Q5_1,
    /// K-quant, 4-bit super-blocks of 256 (rows must be a multiple of 256 wide).
    Q4K,
    /// K-quant, 5-bit super-blocks of 256.
    Q5K,
    /// K-quant, 6-bit super-blocks of 256.
    Q6K,
}

impl GgufQuant {
    fn ggml(self) -> GgmlDType {
        match self {
            GgufQuant::F32 => GgmlDType::F32,
            GgufQuant::F16 => GgmlDType::F16,
            GgufQuant::Q8_0 => GgmlDType::Q8_0,
            GgufQuant::Q4_0 => GgmlDType::Q4_0,
            GgufQuant::Q4_1 => GgmlDType::Q4_1,
            GgufQuant::Q5_0 => GgmlDType::Q5_0,
            GgufQuant::Q5_1 => GgmlDType::Q5_1,
            GgufQuant::Q4K => GgmlDType::Q4K,
            GgufQuant::Q5K => GgmlDType::Q5K,
            GgufQuant::Q6K => GgmlDType::Q6K,
        }
    }

    /// llama.cpp's `general.file_type` number for this format.
    fn file_type(self) -> u32 {
        match self {
            GgufQuant::F32 => 0,
            GgufQuant::F16 => 1,
            GgufQuant::Q4_0 => 2,
            GgufQuant::Q4_1 => 3,
            GgufQuant::Q8_0 => 7,
            GgufQuant::Q5_0 => 8,
            GgufQuant::Q5_1 => 9,
            GgufQuant::Q4K => 15,
            GgufQuant::Q5K => 17,
            GgufQuant::Q6K => 18,
        }
    }
}

/// llama.cpp's converter reorders query/key rows so that its interleaved RoPE
/// equals Hugging Face's half-split RoPE.
fn permute_for_rope(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    t.reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

fn gguf_name(hf: &str) -> String {
    if hf == "model.embed_tokens.weight" {
        return "token_embd.weight".into();
    }
    if hf == "model.norm.weight" {
        return "output_norm.weight".into();
    }
    if hf == "lm_head.weight" {
        return "output.weight".into();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap_or(hf);
    let (layer, part) = rest.split_once('.').unwrap_or(("0", rest));
    let short = match part {
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "self_attn.q_proj.bias" => return format!("blk.{layer}.attn_q.bias"),
        "self_attn.k_proj.bias" => return format!("blk.{layer}.attn_k.bias"),
        "self_attn.v_proj.bias" => return format!("blk.{layer}.attn_v.bias"),
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "ffn_norm",
        other => other,
    };
    format!("blk.{layer}.{short}.weight")
}

/// Write a tiny Llama as one GGUF file, with its byte-level BPE tokenizer and
/// ChatML template in the metadata (`tokenizer.ggml.model = gpt2`,
/// `tokenizer.ggml.pre = smollm`), matrices in `quant` and norms in F32.
pub fn write_llama_gguf(
    path: &Path,
    spec: &TinyLlama,
    quant: GgufQuant,
    seed: u64,
) -> Result<PathBuf> {
    use gguf_file::Value as V;
    let tokenizer = TinyBpe::default();
    let mut qtensors = Vec::new();
    for (hf, t) in weights(spec, tokenizer.vocab_size(), seed)? {
        let name = gguf_name(&hf);
        let t = if spec.qwen2 {
            t
        } else if hf.ends_with("q_proj.weight") {
            permute_for_rope(&t, spec.num_heads).map_err(tensor_err(&hf))?
        } else if hf.ends_with("k_proj.weight") {
            permute_for_rope(&t, spec.num_kv_heads).map_err(tensor_err(&hf))?
        } else {
            t
        };
        let dtype = if t.rank() == 1 {
            GgmlDType::F32
        } else {
            quant.ggml()
        };
        let q = QTensor::quantize(&t, dtype).map_err(tensor_err(&name))?;
        qtensors.push((name, q));
    }
    let u32v = |n: usize| V::U32(n as u32);
    let strings = |v: Vec<String>| V::Array(v.into_iter().map(V::String).collect());
    let arch = if spec.qwen2 { "qwen2" } else { "llama" };
    let key = |k: &str| format!("{arch}.{k}");
    let metadata: Vec<(String, V)> = vec![
        ("general.architecture".to_owned(), V::String(arch.into())),
        (
            "general.name".to_owned(),
            V::String("switchyard-tiny-llama".into()),
        ),
        ("general.file_type".to_owned(), V::U32(quant.file_type())),
        (key("context_length"), u32v(spec.max_position_embeddings)),
        (key("embedding_length"), u32v(spec.hidden_size)),
        (key("block_count"), u32v(spec.num_layers)),
        (key("feed_forward_length"), u32v(spec.intermediate_size)),
        (key("attention.head_count"), u32v(spec.num_heads)),
        (key("attention.head_count_kv"), u32v(spec.num_kv_heads)),
        (key("rope.dimension_count"), u32v(spec.head_dim())),
        (key("rope.freq_base"), V::F32(spec.rope_theta)),
        (
            key("attention.layer_norm_rms_epsilon"),
            V::F32(spec.rms_norm_eps as f32),
        ),
        (key("vocab_size"), u32v(tokenizer.vocab_size())),
        ("tokenizer.ggml.model".to_owned(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_owned(), V::String("smollm".into())),
        (
            "tokenizer.ggml.tokens".to_owned(),
            strings(tokenizer.tokens.clone()),
        ),
        (
            "tokenizer.ggml.token_type".to_owned(),
            V::Array(tokenizer.token_types().into_iter().map(V::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".to_owned(),
            strings(tokenizer.merge_strings()),
        ),
        (
            "tokenizer.ggml.bos_token_id".to_owned(),
            V::U32(tokenizer.bos_id()),
        ),
        (
            "tokenizer.ggml.eos_token_id".to_owned(),
            V::U32(tokenizer.eos_id()),
        ),
        ("tokenizer.ggml.padding_token_id".to_owned(), V::U32(0)),
        ("tokenizer.ggml.add_bos_token".to_owned(), V::Bool(false)),
        (
            "tokenizer.chat_template".to_owned(),
            V::String(super::CHAT_TEMPLATE.into()),
        ),
    ];
    let io = |source| TinyError::Io {
        path: path.to_path_buf(),
        source,
    };
    ensure_parent(path)?;
    let mut out = BufWriter::new(File::create(path).map_err(io)?);
    let md: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &md, &ts).map_err(tensor_err("gguf"))?;
    std::io::Write::flush(&mut out).map_err(io)?;
    Ok(path.to_path_buf())
}
