//! The weights of a Llama-family model, read from a GGUF file (quantised
//! matrices stay quantised) or from a Hugging Face safetensors folder.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::{LlamaConfig, LlamaFlavor};
use super::linear::{Linear, LoadOptions, Mlp, Qkv, Weight};
use crate::json_file::read_optional_json;
use crate::{Result, TextError};

/// One transformer block's weights.
#[derive(Debug)]
pub(crate) struct LayerWeights {
    pub(crate) attn_norm: Tensor,
    pub(crate) qkv: Qkv,
    pub(crate) o: Linear,
    pub(crate) ffn_norm: Tensor,
    pub(crate) mlp: Mlp,
}

/// How the query/key halves are paired for rotary embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RopeStyle {
    /// Pairs (0, 1), (2, 3), ...: llama.cpp's converter permutes Llama's
    /// query and key rows into this order.
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face checkpoints, and Qwen2 in GGUF.
    Halves,
}

/// Everything the forward pass reads.
#[derive(Debug)]
pub(crate) struct ModelWeights {
    /// Token embedding, `[vocab, hidden]`, in the compute dtype.
    pub(crate) embed: Tensor,
    pub(crate) layers: Vec<LayerWeights>,
    pub(crate) norm: Tensor,
    pub(crate) head: Linear,
    pub(crate) rope: RopeStyle,
    /// Per-frequency RoPE divisors (GGUF `rope_freqs.weight`, Llama 3.1).
    pub(crate) rope_freq_factors: Option<Vec<f32>>,
    /// Whether the head reuses the embedding (the file has no head of its own).
    pub(crate) tied: bool,
    /// Activations, norms and the KV cache use this element type.
    pub(crate) dtype: DType,
}

/// A tensor as a file holds it.
enum Param {
    Quantized(QTensor),
    Dense(Tensor),
}

/// Where tensors come from, by the file's own names.
trait TensorSource {
    /// The tensor called `name`, or `None` if the file has none.
    fn take(&mut self, name: &str) -> Result<Option<Param>>;
    /// The file (for messages).
    fn path(&self) -> &Path;
}

/// Names of one role in each layout.
#[derive(Clone, Copy)]
enum Role {
    Embed,
    Norm,
    Head,
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

fn gguf_name(role: Role, layer: usize, suffix: &str) -> String {
    let part = match role {
        Role::Embed => return format!("token_embd.{suffix}"),
        Role::Norm => return format!("output_norm.{suffix}"),
        Role::Head => return format!("output.{suffix}"),
        Role::AttnNorm => "attn_norm",
        Role::Q => "attn_q",
        Role::K => "attn_k",
        Role::V => "attn_v",
        Role::O => "attn_output",
        Role::FfnNorm => "ffn_norm",
        Role::Gate => "ffn_gate",
        Role::Up => "ffn_up",
        Role::Down => "ffn_down",
    };
    format!("blk.{layer}.{part}.{suffix}")
}

fn hf_name(role: Role, layer: usize, suffix: &str) -> String {
    let part = match role {
        Role::Embed => return format!("model.embed_tokens.{suffix}"),
        Role::Norm => return format!("model.norm.{suffix}"),
        Role::Head => return format!("lm_head.{suffix}"),
        Role::AttnNorm => "input_layernorm",
        Role::Q => "self_attn.q_proj",
        Role::K => "self_attn.k_proj",
        Role::V => "self_attn.v_proj",
        Role::O => "self_attn.o_proj",
        Role::FfnNorm => "post_attention_layernorm",
        Role::Gate => "mlp.gate_proj",
        Role::Up => "mlp.up_proj",
        Role::Down => "mlp.down_proj",
    };
    format!("model.layers.{layer}.{part}.{suffix}")
}

struct Builder<'a> {
    source: &'a mut dyn TensorSource,
    name: fn(Role, usize, &str) -> String,
    config: &'a LlamaConfig,
    device: Device,
    dtype: DType,
    options: LoadOptions,
}

impl Builder<'_> {
    fn load_err(&self, reason: String) -> TextError {
        TextError::ModelLoad {
            model: self.source.path().to_path_buf(),
            reason,
        }
    }

    fn required(&mut self, role: Role, layer: usize, suffix: &str) -> Result<Param> {
        let name = (self.name)(role, layer, suffix);
        self.source
            .take(&name)?
            .ok_or_else(|| self.load_err(format!("tensor {name} is missing")))
    }

    fn check_shape(&self, role: Role, layer: usize, got: &[usize], want: &[usize]) -> Result<()> {
        if got == want {
            Ok(())
        } else {
            let name = (self.name)(role, layer, "weight");
            Err(self.load_err(format!(
                "tensor {name} has shape {got:?}, the config says {want:?}"
            )))
        }
    }

    /// A dense tensor in the compute dtype on the device.
    fn dense(&self, p: Param) -> Result<Tensor> {
        match p {
            Param::Quantized(q) => self.dequantized(&q),
            Param::Dense(t) => Ok(t.to_device(&self.device)?.to_dtype(self.dtype)?),
        }
    }

    /// A quantised tensor dequantised into the compute dtype on the device.
    fn dequantized(&self, q: &QTensor) -> Result<Tensor> {
        Ok(q.dequantize(&self.device)?.to_dtype(self.dtype)?)
    }

    fn vector(&mut self, role: Role, layer: usize, len: usize) -> Result<Tensor> {
        let p = self.required(role, layer, "weight")?;
        let t = self.dense(p)?;
        self.check_shape(role, layer, t.dims(), &[len])?;
        Ok(t)
    }

    fn matmul(&self, p: Param) -> Result<Weight> {
        Ok(match p {
            Param::Quantized(q) => Weight::quantized(q, &self.options)?,
            Param::Dense(t) => Weight::Candle(QMatMul::Tensor(self.dense(Param::Dense(t))?)),
        })
    }

    fn linear(&mut self, role: Role, layer: usize, out: usize, inp: usize) -> Result<Linear> {
        let p = self.required(role, layer, "weight")?;
        let dims = match &p {
            Param::Quantized(q) => q.shape().dims().to_vec(),
            Param::Dense(t) => t.dims().to_vec(),
        };
        self.check_shape(role, layer, &dims, &[out, inp])?;
        let weight = self.matmul(p)?;
        let with_bias =
            self.config.flavor == LlamaFlavor::Qwen2 && matches!(role, Role::Q | Role::K | Role::V);
        let bias = if with_bias {
            let p = self.required(role, layer, "bias")?;
            let b = self.dense(p)?;
            self.check_shape(role, layer, b.dims(), &[out])?;
            Some(b)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    fn build(mut self, rope: RopeStyle) -> Result<ModelWeights> {
        let c = self.config.clone();
        let (h, q_out, kv_out) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let embed_param = self.required(Role::Embed, 0, "weight")?;
        // A quantised embedding is dequantised for lookups and, when the
        // head is tied to it, also kept quantised for the head's matmul.
        let (embed, tied_head) = match embed_param {
            Param::Quantized(q) => {
                let dense = self.dequantized(&q)?;
                (dense, Weight::quantized(q, &self.options)?)
            }
            Param::Dense(t) => {
                let dense = self.dense(Param::Dense(t))?;
                (dense.clone(), Weight::Candle(QMatMul::Tensor(dense)))
            }
        };
        self.check_shape(Role::Embed, 0, embed.dims(), &[c.vocab, h])?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            layers.push(LayerWeights {
                attn_norm: self.vector(Role::AttnNorm, l, h)?,
                qkv: Qkv::new(
                    self.linear(Role::Q, l, q_out, h)?,
                    self.linear(Role::K, l, kv_out, h)?,
                    self.linear(Role::V, l, kv_out, h)?,
                ),
                o: self.linear(Role::O, l, h, q_out)?,
                ffn_norm: self.vector(Role::FfnNorm, l, h)?,
                mlp: Mlp::new(
                    self.linear(Role::Gate, l, c.intermediate, h)?,
                    self.linear(Role::Up, l, c.intermediate, h)?,
                    self.linear(Role::Down, l, h, c.intermediate)?,
                ),
            });
        }
        let norm = self.vector(Role::Norm, 0, h)?;
        let head_name = (self.name)(Role::Head, 0, "weight");
        let (head, tied) = match self.source.take(&head_name)? {
            Some(p) if !c.tied_embeddings => {
                let weight = self.matmul(p)?;
                (Linear { weight, bias: None }, false)
            }
            _ => (
                Linear {
                    weight: tied_head,
                    bias: None,
                },
                true,
            ),
        };
        let rope_freq_factors = match self.source.take("rope_freqs.weight")? {
            Some(p) => Some(
                self.dense(p)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1()?,
            ),
            None => None,
        };
        Ok(ModelWeights {
            rope_freq_factors,
            embed,
            layers,
            norm,
            head,
            rope,
            tied,
            dtype: self.dtype,
        })
    }
}

/// GGUF tensors, read on demand from the file.
struct GgufSource {
    path: PathBuf,
    content: gguf_file::Content,
    reader: BufReader<File>,
    device: Device,
}

impl TensorSource for GgufSource {
    fn take(&mut self, name: &str) -> Result<Option<Param>> {
        if !self.content.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        let q = self
            .content
            .tensor(&mut self.reader, name, &self.device)
            .map_err(|e| TextError::ModelLoad {
                model: self.path.clone(),
                reason: format!("tensor {name}: {e}"),
            })?;
        Ok(Some(Param::Quantized(q)))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// Safetensors tensors through candle's memory-mapped reader.
struct SafetensorsSource {
    path: PathBuf,
    vb: VarBuilder<'static>,
}

impl TensorSource for SafetensorsSource {
    fn take(&mut self, name: &str) -> Result<Option<Param>> {
        if !self.vb.contains_tensor(name) {
            return Ok(None);
        }
        let t = self
            .vb
            .get_unchecked(name)
            .map_err(|e| TextError::ModelLoad {
                model: self.path.clone(),
                reason: format!("tensor {name}: {e}"),
            })?;
        Ok(Some(Param::Dense(t)))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// Load from an open GGUF file whose config was already read.
pub(crate) fn load_gguf(
    path: &Path,
    config: &LlamaConfig,
    device: &Device,
    options: LoadOptions,
) -> Result<ModelWeights> {
    let io = |source| TextError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let content =
        gguf_file::Content::read(&mut reader).map_err(|e| TextError::Gguf(e.to_string()))?;
    let mut source = GgufSource {
        path: path.to_path_buf(),
        content,
        reader,
        device: device.clone(),
    };
    // llama.cpp permutes Llama's q/k rows for interleaved RoPE; Qwen2 keeps
    // the Hugging Face order (NEOX-style RoPE).
    let rope = match config.flavor {
        LlamaFlavor::Llama => RopeStyle::Interleaved,
        LlamaFlavor::Qwen2 => RopeStyle::Halves,
    };
    Builder {
        source: &mut source,
        name: gguf_name,
        config,
        device: device.clone(),
        dtype: DType::F32,
        options,
    }
    .build(rope)
}

/// The safetensors files of a folder: `model.safetensors`, or the shards
/// listed in `model.safetensors.index.json`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let index: serde_json::Value =
        read_optional_json(&index_path)?.ok_or_else(|| TextError::ModelLoad {
            model: dir.to_path_buf(),
            reason: "neither model.safetensors nor model.safetensors.index.json is present".into(),
        })?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| TextError::ModelLoad {
            model: index_path.clone(),
            reason: "no weight_map".into(),
        })?;
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|v| v.as_str())
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Load a Hugging Face folder's safetensors. Weights keep their file dtype
/// on GPUs; on the CPU everything runs in f32.
pub(crate) fn load_safetensors(
    dir: &Path,
    config: &LlamaConfig,
    file_dtype: DType,
    device: &Device,
) -> Result<ModelWeights> {
    let files = safetensors_files(dir)?;
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        file_dtype
    };
    // SAFETY: the files are mapped read-only and only read while loading;
    // callers must not truncate or rewrite model files in place while a
    // model loads from them (as with any mmap-based loader).
    #[allow(unsafe_code)]
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }.map_err(|e| {
            TextError::ModelLoad {
                model: dir.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
    let mut source = SafetensorsSource {
        path: dir.to_path_buf(),
        vb,
    };
    Builder {
        source: &mut source,
        name: hf_name,
        config,
        device: device.clone(),
        dtype,
        options: LoadOptions::default(),
    }
    .build(RopeStyle::Halves)
}
