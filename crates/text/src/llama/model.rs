//! [`LlamaModel`]: the forward pass over a batch of sequences, each at its
//! own position, with keys and values in a [`PagedKvCache`].

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use switchyard_core::DeviceId;
use switchyard_pool::BlockId;

use super::attention_cpu::{self, Heads, SeqQueries};
use super::config::LlamaConfig;
use super::host_forward::{HostModel, HostStep, HostWeights, SeqRows};
use super::kv_cache::PagedKvCache;
use super::linear::LoadOptions;
use super::weights::{self, LayerWeights, ModelWeights, RopeStyle};
use crate::gguf_meta::GgufMetadata;
use crate::{Result, TextError};

/// One sequence's share of a forward step.
///
/// A prefill chunk is many tokens of one sequence; a decode step is one
/// token. Both kinds mix freely in one [`LlamaModel::forward`] call.
#[derive(Debug, Clone, Copy)]
pub struct SeqStep<'a> {
    /// The new tokens, at positions `start..start + tokens.len()`.
    pub tokens: &'a [u32],
    /// Position of `tokens[0]` (the number of tokens already in the cache).
    pub start: usize,
    /// The sequence's block table: it must cover every position up to
    /// `start + tokens.len()`.
    pub blocks: &'a [BlockId],
    /// Whether to return the logits after the last of `tokens` (a prefill
    /// chunk that is not the prompt's last needs none).
    pub logits: bool,
}

/// A Llama-family decoder (Llama 2/3, SmolLM, TinyLlama, Mistral, Qwen2),
/// from GGUF or from safetensors + `config.json`.
///
/// The model holds only weights: keys and values live in a
/// [`PagedKvCache`] the caller owns, addressed through block tables, so one
/// model serves any number of sequences.
#[derive(Debug)]
pub struct LlamaModel {
    config: LlamaConfig,
    weights: ModelWeights,
    /// RoPE inverse frequencies, `head_dim / 2` of them.
    inv_freq: Vec<f32>,
    device: Device,
    /// Present when the whole forward can run on host slices (CPU, f32,
    /// every matrix in the kernels).
    host: Option<HostWeights>,
}

/// Per-sequence tensors built once per step and reused by every layer
/// (the candle path).
struct SeqPlan<'a> {
    rows: &'a SeqRows,
    /// Slots of positions `0..start + len`, `[start + len]`.
    slots: Tensor,
    /// Causal mask `[len, start + len]` when `len > 1`.
    mask: Option<Tensor>,
}

fn invalid(field: &'static str, reason: String) -> TextError {
    TextError::InvalidInput { field, reason }
}

/// Where [`LlamaModel::forward_into`] left a step's logits (`[k, vocab]`,
/// f32).
#[derive(Debug)]
pub(crate) enum StepLogits {
    /// In the caller's buffer (the host path).
    Buffer,
    /// In a tensor (the candle path, any device).
    Tensor(Tensor),
}

impl LlamaModel {
    /// Load a model: a `.gguf` file, or a folder with `config.json` and
    /// safetensors.
    pub fn load(path: &Path, device: DeviceId) -> Result<Self> {
        Self::load_with(path, device, LoadOptions::default())
    }

    /// [`LlamaModel::load`] with options (which quantized matmul to use).
    pub fn load_with(path: &Path, device: DeviceId, options: LoadOptions) -> Result<Self> {
        if path.is_dir() {
            Self::load_safetensors(path, device)
        } else {
            Self::load_gguf_with(path, device, options)
        }
    }

    /// Load a GGUF file (architectures `llama`, `mistral`, `qwen2`); its
    /// quantised matrices stay quantised, repacked for switchyard-kernels
    /// on the CPU (see [`QuantMatmul`](crate::QuantMatmul)).
    pub fn load_gguf(path: &Path, device: DeviceId) -> Result<Self> {
        Self::load_gguf_with(path, device, LoadOptions::default())
    }

    /// [`LlamaModel::load_gguf`] with options.
    pub fn load_gguf_with(path: &Path, device: DeviceId, options: LoadOptions) -> Result<Self> {
        let meta = GgufMetadata::read(path)?;
        let mut config = LlamaConfig::from_gguf(&meta)?;
        let device = device.to_candle()?;
        let weights = weights::load_gguf(path, &config, &device, options)?;
        config.tied_embeddings = weights.tied;
        Self::new(config, weights, device)
    }

    /// Whether the quantized matrices (all of them, head included) run
    /// through switchyard-kernels.
    pub fn uses_kernels(&self) -> bool {
        let w = &self.weights;
        w.head.uses_kernels()
            && w.layers
                .iter()
                .all(|l| l.mlp.uses_kernels() && l.qkv.uses_kernels() && l.o.uses_kernels())
    }

    /// Load a Hugging Face folder: `config.json` and `model.safetensors` (or
    /// shards listed in `model.safetensors.index.json`), f32/f16/bf16. On
    /// the CPU the model computes in f32; on a GPU in the file's dtype.
    pub fn load_safetensors(dir: &Path, device: DeviceId) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| TextError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config = LlamaConfig::from_hf_json(&text)?;
        let file_dtype = match serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("torch_dtype")
                    .and_then(|d| d.as_str())
                    .map(str::to_owned)
            })
            .as_deref()
        {
            Some("float16") => DType::F16,
            Some("bfloat16") => DType::BF16,
            _ => DType::F32,
        };
        let device = device.to_candle()?;
        let weights = weights::load_safetensors(dir, &config, file_dtype, &device)?;
        Self::new(config, weights, device)
    }

    fn new(config: LlamaConfig, weights: ModelWeights, device: Device) -> Result<Self> {
        let half = config.head_dim / 2;
        // f32 throughout, as the reference implementations compute it (an
        // f64 table shifts near-tied greedy picks away from theirs).
        let theta = config.rope_theta as f32;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / config.head_dim as f32))
            .collect();
        config.rope_scaling.apply(&mut inv_freq);
        // Llama 3.1 GGUF files carry the scaled-down factors as a tensor.
        if let Some(factors) = &weights.rope_freq_factors {
            if factors.len() != half {
                return Err(invalid(
                    "rope_freqs",
                    format!("{} factors for {half} frequencies", factors.len()),
                ));
            }
            inv_freq.iter_mut().zip(factors).for_each(|(f, d)| *f /= d);
        }
        let host = HostWeights::new(&weights, &device)?;
        Ok(Self {
            config,
            weights,
            inv_freq,
            device,
            host,
        })
    }

    /// RoPE cosines and sines for `positions`, each `[n, 1, head_dim / 2]`
    /// (computed per step, so no context-sized table is kept).
    fn rope_tables(&self, positions: &[u32]) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let n = positions.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let dtype = self.dtype();
        Ok((
            Tensor::from_vec(cos, (n, 1, half), &self.device)?.to_dtype(dtype)?,
            Tensor::from_vec(sin, (n, 1, half), &self.device)?.to_dtype(dtype)?,
        ))
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The candle device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Element type of activations and of the KV cache.
    pub fn dtype(&self) -> DType {
        self.weights.dtype
    }

    /// Element type [`LlamaModel::new_kv_cache`] stores keys and values in:
    /// f16 when the whole forward runs on host slices (half the memory and
    /// the bandwidth attention reads, as llama.cpp's default cache; the
    /// arithmetic stays f32), the activations' type otherwise.
    pub fn kv_dtype(&self) -> DType {
        if self.host.is_some() {
            DType::F16
        } else {
            self.dtype()
        }
    }

    /// A KV cache of `num_blocks` blocks of `block_size` tokens for this
    /// model, on its device, in [`LlamaModel::kv_dtype`].
    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<PagedKvCache> {
        self.new_kv_cache_in(num_blocks, block_size, self.kv_dtype())
    }

    /// [`LlamaModel::new_kv_cache`] storing keys and values as `dtype`
    /// (on the CPU, f32 and f16 caches are read in place by the host
    /// attention; other types go through candle).
    pub fn new_kv_cache_in(
        &self,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
    ) -> Result<PagedKvCache> {
        PagedKvCache::new(&self.config, num_blocks, block_size, dtype, &self.device)
    }

    /// Run one step over `batch`: write every new token's keys and values
    /// into `cache` and return the logits (`[k, vocab]`, f32) after the last
    /// token of each of the `k` sequences that asked for them, in order.
    ///
    /// Linear layers run once over all the batch's rows; attention runs per
    /// sequence over its own blocks.
    pub fn forward(&self, cache: &mut PagedKvCache, batch: &[SeqStep<'_>]) -> Result<Tensor> {
        self.forward_unless(cache, batch, &|| false)?
            .ok_or_else(|| TextError::Generation {
                reason: "a step that cannot stop stopped".into(),
            })
    }

    /// [`forward`](Self::forward), asking `stop` before each layer: when it
    /// answers true the step is abandoned and `Ok(None)` returned, so that
    /// a step of work that may wait gives the cores up within a layer.
    ///
    /// An abandoned step leaves keys and values for some layers in the
    /// slots of the batch's new tokens. Those slots lie past what each
    /// sequence has computed, so nothing reads them; running the same step
    /// again overwrites them, and the sequences go on exactly as if the
    /// abandoned step had never started.
    pub fn forward_unless(
        &self,
        cache: &mut PagedKvCache,
        batch: &[SeqStep<'_>],
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<Tensor>> {
        let mut buffer = Vec::new();
        let logits = self.forward_into(cache, batch, stop, &mut buffer)?;
        Ok(match logits {
            None => None,
            Some(StepLogits::Tensor(t)) => Some(t),
            Some(StepLogits::Buffer) => {
                let rows = buffer.len() / self.config.vocab.max(1);
                Some(Tensor::from_vec(
                    buffer,
                    (rows, self.config.vocab),
                    &self.device,
                )?)
            }
        })
    }

    /// [`forward_unless`](Self::forward_unless) that leaves the logits of
    /// the host path in `buffer` (resized to `[k, vocab]`): a caller that
    /// keeps the buffer from step to step neither allocates nor clears
    /// them (at 8 rows of a 49k vocabulary, 1.5 MB a step).
    pub(crate) fn forward_into(
        &self,
        cache: &mut PagedKvCache,
        batch: &[SeqStep<'_>],
        stop: &(dyn Fn() -> bool + Sync),
        buffer: &mut Vec<f32>,
    ) -> Result<Option<StepLogits>> {
        let (ids, positions, write_slots, seqs) = self.plan(cache, batch)?;
        let n = ids.len();
        let c = &self.config;
        let wanted: Vec<usize> = batch
            .iter()
            .zip(&seqs)
            .filter(|(s, _)| s.logits)
            .map(|(_, p)| p.row + p.len - 1)
            .collect();
        let ids = Tensor::from_vec(ids, n, &self.device)?;
        let x = self.weights.embed.index_select(&ids, 0)?;
        if let Some(host) = &self.host
            && cache.is_host()
        {
            let model = HostModel {
                config: c,
                weights: &self.weights,
                host,
                inv_freq: &self.inv_freq,
            };
            let step = HostStep {
                positions: &positions,
                write_slots: &write_slots,
                seqs: &seqs,
                wanted: &wanted,
            };
            let done = model.forward(x.flatten_all()?.to_vec1()?, cache, &step, stop, buffer)?;
            return Ok(done.then_some(StepLogits::Buffer));
        }
        let (cos, sin) = self.rope_tables(&positions)?;
        let write_index = if cache.is_host() {
            None
        } else {
            let row = cache.row();
            let index: Vec<u32> = write_slots
                .iter()
                .flat_map(|&s| std::iter::repeat_n(s, row))
                .collect();
            Some(Tensor::from_vec(index, (n, row), &self.device)?)
        };
        let plans = seqs
            .iter()
            .map(|s| self.seq_plan(s))
            .collect::<Result<Vec<_>>>()?;
        let mut x = x;
        let slots = (&write_slots[..], write_index.as_ref());
        for (l, layer) in self.weights.layers.iter().enumerate() {
            if stop() {
                return Ok(None);
            }
            x = self.block(l, layer, &x, cache, slots, &plans, (&cos, &sin))?;
        }
        if wanted.is_empty() {
            let none = Tensor::zeros((0, c.vocab), DType::F32, &self.device)?;
            return Ok(Some(StepLogits::Tensor(none)));
        }
        let k = wanted.len();
        let wanted: Vec<u32> = wanted.iter().map(|&r| r as u32).collect();
        let last = x.index_select(&Tensor::from_vec(wanted, k, &self.device)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.weights.norm, c.rms_eps as f32)?;
        let logits = self.weights.head.forward(&last)?.to_dtype(DType::F32)?;
        Ok(Some(StepLogits::Tensor(logits)))
    }

    /// The slot tensor and causal mask of one sequence (candle path).
    fn seq_plan<'a>(&self, s: &'a SeqRows) -> Result<SeqPlan<'a>> {
        let (len, end) = (s.len, s.slots.len());
        let start = end - len;
        let mask = if len > 1 {
            let m: Vec<f32> = (0..len)
                .flat_map(|q| {
                    (0..end).map(move |k| {
                        if k > start + q {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            Some(Tensor::from_vec(m, (len, end), &self.device)?.to_dtype(self.dtype())?)
        } else {
            None
        };
        Ok(SeqPlan {
            rows: s,
            slots: Tensor::from_slice(&s.slots, end, &self.device)?,
            mask,
        })
    }

    /// Check the batch and lay out its rows, positions and slots.
    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        cache: &PagedKvCache,
        batch: &[SeqStep<'_>],
    ) -> Result<(Vec<u32>, Vec<u32>, Vec<u32>, Vec<SeqRows>)> {
        let c = &self.config;
        if batch.is_empty() {
            return Err(invalid("batch", "no sequences".into()));
        }
        if cache.row() != c.kv_heads * c.head_dim || cache.layers() != c.layers {
            return Err(invalid("kv cache", "shaped for another model".into()));
        }
        let (mut ids, mut positions, mut slots, mut plans) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::with_capacity(batch.len()),
        );
        for (i, s) in batch.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(invalid("batch", format!("sequence {i} has no tokens")));
            }
            let end = s.start + s.tokens.len();
            if end > c.context {
                return Err(invalid(
                    "batch",
                    format!(
                        "sequence {i} reaches position {end}, past the context of {}",
                        c.context
                    ),
                ));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(invalid(
                    "batch",
                    format!("token {bad} is outside the vocabulary of {}", c.vocab),
                ));
            }
            let all: Vec<u32> = (0..end)
                .map(|p| cache.slot(s.blocks, p))
                .collect::<Result<_>>()?;
            let row = ids.len();
            ids.extend_from_slice(s.tokens);
            positions.extend((s.start..end).map(|p| p as u32));
            slots.extend_from_slice(&all[s.start..]);
            plans.push(SeqRows {
                row,
                len: s.tokens.len(),
                slots: all,
            });
        }
        let mut seen = std::collections::HashSet::with_capacity(slots.len());
        if let Some(dup) = slots.iter().find(|s| !seen.insert(**s)) {
            return Err(invalid(
                "batch",
                format!("two new tokens would write the same cache slot {dup}"),
            ));
        }
        Ok((ids, positions, slots, plans))
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        l: usize,
        w: &LayerWeights,
        x: &Tensor,
        cache: &mut PagedKvCache,
        (write_slots, write_index): (&[u32], Option<&Tensor>),
        plans: &[SeqPlan<'_>],
        (cos, sin): (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        let c = &self.config;
        let n = x.dim(0)?;
        let eps = c.rms_eps as f32;
        let h = candle_nn::ops::rms_norm(x, &w.attn_norm, eps)?;
        let (q, k, v) = w.qkv.forward(&h)?;
        let q = q.reshape((n, c.heads, 1, c.head_dim))?;
        let k = k.reshape((n, c.kv_heads, 1, c.head_dim))?;
        let (q, k) = match self.weights.rope {
            RopeStyle::Interleaved => (
                candle_nn::rotary_emb::rope_i(&q.contiguous()?, cos, sin)?,
                candle_nn::rotary_emb::rope_i(&k.contiguous()?, cos, sin)?,
            ),
            RopeStyle::Halves => (
                candle_nn::rotary_emb::rope(&q.contiguous()?, cos, sin)?,
                candle_nn::rotary_emb::rope(&k.contiguous()?, cos, sin)?,
            ),
        };
        let row = c.kv_heads * c.head_dim;
        cache.write(l, write_slots, write_index, &k.reshape((n, row))?, &v)?;
        let q = q.reshape((n, c.heads, c.head_dim))?;
        let mut outs = Vec::with_capacity(plans.len());
        for p in plans {
            outs.push(self.attend(l, cache, &q.narrow(0, p.rows.row, p.rows.len)?, p)?);
        }
        let attn = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 0)?
        };
        let x = (x + w.o.forward(&attn)?)?;
        let h = candle_nn::ops::rms_norm(&x, &w.ffn_norm, eps)?;
        Ok((x + w.mlp.forward(&h)?)?)
    }

    /// Attention of one sequence's `q` (`[len, heads, head_dim]`) over its
    /// cached keys and values; returns `[len, heads * head_dim]`.
    fn attend(
        &self,
        l: usize,
        cache: &PagedKvCache,
        q: &Tensor,
        p: &SeqPlan<'_>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (kvh, hd, len) = (c.kv_heads, c.head_dim, p.rows.len);
        let group = c.heads / kvh;
        let end = p.slots.dim(0)?;
        if self.device.is_cpu()
            && q.dtype() == DType::F32
            && len <= attention_cpu::FEW_QUERIES
            && let Some(kv) = cache.host_layer(l)
        {
            let q = q.flatten_all()?.to_vec1::<f32>()?;
            let heads = Heads {
                heads: c.heads,
                kv_heads: kvh,
                head_dim: hd,
            };
            let seq = SeqQueries {
                row: 0,
                len,
                slots: &p.rows.slots,
            };
            let out = attention_cpu::attend_host(&heads, &q, &[seq], kv)
                .map_err(candle_core::Error::wrap)?;
            return Ok(Tensor::from_vec(out, (len, c.heads * hd), &self.device)?);
        }
        let (k, v) = cache.gather(l, &p.slots)?;
        // [end, kvh, hd] -> [kvh, end, hd], in the queries' type.
        let (k, v) = (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?);
        let k = k.reshape((end, kvh, hd))?.transpose(0, 1)?.contiguous()?;
        let v = v.reshape((end, kvh, hd))?.transpose(0, 1)?.contiguous()?;
        // [len, kvh, group, hd] -> [kvh, group * len, hd]: every query head
        // of a group meets its shared key/value head in one matmul.
        let q = q
            .reshape((len, kvh, group, hd))?
            .permute((1, 2, 0, 3))?
            .contiguous()?
            .reshape((kvh, group * len, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = &p.mask {
            scores = scores
                .reshape((kvh, group, len, end))?
                .broadcast_add(mask)?
                .reshape((kvh, group * len, end))?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?; // [kvh, group * len, hd]
        Ok(out
            .reshape((kvh, group, len, hd))?
            .permute((2, 0, 1, 3))?
            .reshape((len, c.heads * hd))?)
    }
}
