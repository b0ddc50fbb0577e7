//! A tiny Stable Diffusion pipeline in the diffusers folder layout.
//!
//! The tensor names and shapes come from candle-transformers' own UNet,
//! AutoencoderKL and CLIP text model, built once over a recording
//! [`SimpleBackend`]: the files hold exactly what the real loaders ask for,
//! under the names diffusers and transformers write. The values are drawn
//! here from the seed, following each tensor's initialiser hint (ones for
//! norm scales, Kaiming-normal for convolutions, ...), so activations keep a
//! sensible scale through the deep UNet.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig, ClipTextTransformer,
};
use candle_transformers::models::stable_diffusion::embeddings::TimestepEmbedding;
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModel, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use serde_json::{Value, json};
use switchyard_core::SplitMix64;

use super::clip_tokenizer::TinyClipBpe;
use super::sdxl::{TinyTextEncoder2, write_second_text_encoder};
use super::{Result, TinyError, tensor_err, write_file, write_json};

/// Which scheduler `scheduler/scheduler_config.json` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinySchedulerSpec {
    /// diffusers class, e.g. `DDIMScheduler`, `EulerDiscreteScheduler`.
    pub class: String,
    /// `epsilon` or `v_prediction`.
    pub prediction_type: String,
    /// `leading`, `trailing` or `linspace`.
    pub timestep_spacing: String,
}

impl Default for TinySchedulerSpec {
    fn default() -> Self {
        Self {
            class: "DDIMScheduler".into(),
            prediction_type: "epsilon".into(),
            timestep_spacing: "leading".into(),
        }
    }
}

/// The shape of a tiny Stable Diffusion pipeline.
///
/// The defaults follow diffusers' own tiny test pipeline: two UNet blocks
/// (32 and 64 channels, the first without cross-attention), a two-block VAE
/// (so latents are half the image size, not an eighth), and a two-layer CLIP
/// text encoder of width 32.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyStableDiffusion {
    /// UNet channels per block (each a multiple of 32, the norm groups).
    pub unet_channels: Vec<usize>,
    /// Whether each down block has cross-attention (up blocks mirror it).
    pub cross_attention: Vec<bool>,
    /// Attention heads per block (diffusers' `attention_head_dim`).
    pub heads: Vec<usize>,
    /// ResNet layers per down block.
    pub layers_per_block: usize,
    /// UNet input channels: 4, or 9 for an inpainting UNet.
    pub unet_in_channels: usize,
    /// SD 2.x style linear projections in the transformer blocks.
    pub use_linear_projection: bool,
    /// Transformer blocks in each cross-attention block (SDXL has 1, 2, 10).
    pub transformer_layers_per_block: usize,
    /// SDXL's added text/time conditioning on the UNet, if any.
    pub text_time: Option<TinyTextTime>,
    /// SDXL's second text encoder (`text_encoder_2/`, `tokenizer_2/`), if
    /// any; the UNet then cross-attends to both encoders' features.
    pub text_encoder_2: Option<TinyTextEncoder2>,
    /// Text encoder width (also the UNet's cross-attention width).
    pub text_hidden: usize,
    /// Text encoder layers.
    pub text_layers: usize,
    /// Text encoder heads.
    pub text_heads: usize,
    /// Text encoder MLP width.
    pub text_intermediate: usize,
    /// VAE channels per block.
    pub vae_channels: Vec<usize>,
    /// VAE latent scaling factor.
    pub scaling_factor: f64,
    /// The scheduler config.
    pub scheduler: TinySchedulerSpec,
    /// Weight dtype on disk (F32, F16 or BF16).
    pub dtype: DType,
}

impl Default for TinyStableDiffusion {
    fn default() -> Self {
        Self {
            unet_channels: vec![32, 64],
            cross_attention: vec![false, true],
            heads: vec![2, 4],
            layers_per_block: 1,
            unet_in_channels: 4,
            use_linear_projection: false,
            transformer_layers_per_block: 1,
            text_time: None,
            text_encoder_2: None,
            text_hidden: 32,
            text_layers: 2,
            text_heads: 4,
            text_intermediate: 37,
            vae_channels: vec![32, 64],
            scaling_factor: 0.18215,
            scheduler: TinySchedulerSpec::default(),
            dtype: DType::F32,
        }
    }
}

/// The sizes of SDXL's added conditioning (`addition_embed_type:
/// "text_time"`) on a tiny UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinyTextTime {
    /// Width of the pooled text embedding.
    pub pooled_dim: usize,
    /// Sinusoidal width of each of the six time ids.
    pub time_dim: usize,
}

impl TinyTextTime {
    /// `projection_class_embeddings_input_dim`.
    pub fn input_dim(&self) -> usize {
        self.pooled_dim + 6 * self.time_dim
    }
}

/// CLIP's context length.
pub(super) const MAX_POSITIONS: usize = 77;

impl TinyStableDiffusion {
    /// An inpainting pipeline: the UNet takes 9 channels (latents, mask,
    /// masked-image latents).
    pub fn inpainting() -> Self {
        Self {
            unet_in_channels: 9,
            ..Self::default()
        }
    }

    /// The UNet's `cross_attention_dim`: the text encoder's width, plus
    /// the second encoder's for SDXL.
    pub fn context_dim(&self) -> usize {
        self.text_hidden + self.text_encoder_2.map_or(0, |t| t.hidden)
    }

    fn check(&self) -> Result<()> {
        let n = self.unet_channels.len();
        if n == 0 || self.cross_attention.len() != n || self.heads.len() != n {
            return Err(TinyError::InvalidSpec(
                "unet_channels, cross_attention and heads need one entry per block".into(),
            ));
        }
        if self
            .unet_channels
            .iter()
            .chain(&self.vae_channels)
            .any(|c| c % 32 != 0)
        {
            return Err(TinyError::InvalidSpec(
                "channels must be multiples of 32 (the norm groups)".into(),
            ));
        }
        if self.text_heads == 0 || !self.text_hidden.is_multiple_of(self.text_heads) {
            return Err(TinyError::InvalidSpec(
                "text_hidden must divide by text_heads".into(),
            ));
        }
        Ok(())
    }

    fn down_block_types(&self) -> Vec<&'static str> {
        self.cross_attention
            .iter()
            .map(|&x| {
                if x {
                    "CrossAttnDownBlock2D"
                } else {
                    "DownBlock2D"
                }
            })
            .collect()
    }

    fn up_block_types(&self) -> Vec<&'static str> {
        self.cross_attention
            .iter()
            .rev()
            .map(|&x| if x { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
            .collect()
    }

    /// `unet/config.json`.
    pub fn unet_config_json(&self) -> Value {
        json!({
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": "0.30.0",
            "act_fn": "silu",
            "attention_head_dim": self.heads,
            "block_out_channels": self.unet_channels,
            "center_input_sample": false,
            "cross_attention_dim": self.context_dim(),
            "down_block_types": self.down_block_types(),
            "downsample_padding": 1,
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "in_channels": self.unet_in_channels,
            "layers_per_block": self.layers_per_block,
            "mid_block_scale_factor": 1,
            "norm_eps": 1e-5,
            "norm_num_groups": 32,
            "out_channels": 4,
            "sample_size": 16,
            "up_block_types": self.up_block_types(),
            "use_linear_projection": self.use_linear_projection,
            "transformer_layers_per_block": self.transformer_layers_per_block,
            "addition_embed_type": self.text_time.map(|_| "text_time"),
            "addition_time_embed_dim": self.text_time.map(|t| t.time_dim),
            "projection_class_embeddings_input_dim": self.text_time.map(|t| t.input_dim()),
        })
    }

    /// `vae/config.json`.
    pub fn vae_config_json(&self) -> Value {
        let n = self.vae_channels.len();
        json!({
            "_class_name": "AutoencoderKL",
            "_diffusers_version": "0.30.0",
            "act_fn": "silu",
            "block_out_channels": self.vae_channels,
            "down_block_types": vec!["DownEncoderBlock2D"; n],
            "in_channels": 3,
            "latent_channels": 4,
            "layers_per_block": 1,
            "norm_num_groups": 32,
            "out_channels": 3,
            "sample_size": 32,
            "scaling_factor": self.scaling_factor,
            "up_block_types": vec!["UpDecoderBlock2D"; n],
        })
    }

    /// `text_encoder/config.json` (transformers' CLIPTextModel).
    pub fn text_encoder_config_json(&self, tokenizer: &TinyClipBpe) -> Value {
        json!({
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "hidden_act": "quick_gelu",
            "hidden_size": self.text_hidden,
            "intermediate_size": self.text_intermediate,
            "num_hidden_layers": self.text_layers,
            "num_attention_heads": self.text_heads,
            "max_position_embeddings": MAX_POSITIONS,
            "vocab_size": tokenizer.vocab_size(),
            "layer_norm_eps": 1e-5,
            "projection_dim": self.text_hidden,
            "bos_token_id": tokenizer.bos_id(),
            "eos_token_id": tokenizer.eos_id(),
            "pad_token_id": 1,
            "torch_dtype": "float32",
        })
    }

    /// `scheduler/scheduler_config.json`.
    pub fn scheduler_config_json(&self) -> Value {
        json!({
            "_class_name": self.scheduler.class,
            "_diffusers_version": "0.30.0",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000,
            "prediction_type": self.scheduler.prediction_type,
            "timestep_spacing": self.scheduler.timestep_spacing,
            "set_alpha_to_one": false,
            "steps_offset": 1,
            "clip_sample": false,
        })
    }

    /// `model_index.json` (SDXL's names its second encoder and tokenizer
    /// and sets `force_zeros_for_empty_prompt`, as the released one does).
    pub fn model_index_json(&self) -> Value {
        let xl = self.text_encoder_2.is_some();
        let class = match (xl, self.unet_in_channels == 9) {
            (false, false) => "StableDiffusionPipeline",
            (false, true) => "StableDiffusionInpaintPipeline",
            (true, false) => "StableDiffusionXLPipeline",
            (true, true) => "StableDiffusionXLInpaintPipeline",
        };
        let mut index = json!({
            "_class_name": class,
            "_diffusers_version": "0.30.0",
            "feature_extractor": [null, null],
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "scheduler": ["diffusers", self.scheduler.class],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        });
        if xl {
            index["text_encoder_2"] = json!(["transformers", "CLIPTextModelWithProjection"]);
            index["tokenizer_2"] = json!(["transformers", "CLIPTokenizer"]);
            index["force_zeros_for_empty_prompt"] = json!(true);
        }
        index
    }
}

/// Records every tensor a model asks for (name, shape, initialiser) and
/// hands back zeros.
struct Recorder {
    wanted: Mutex<Vec<(String, Shape, Init)>>,
}

impl SimpleBackend for &Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.to_owned(), s.clone(), h));
        Tensor::zeros(s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("the recorder needs a shape for {name}")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        // The VAE's attention probes for the current diffusers names
        // (`to_q`, ...) before the legacy ones (`query`, ...): answer yes,
        // so the files use the names diffusers writes today.
        name.ends_with("to_q.weight")
    }
}

/// Builds a model over a [`Recorder`] and returns what it asked for, by name.
pub(super) fn record(
    what: &str,
    build: impl FnOnce(VarBuilder<'_>) -> candle_core::Result<()>,
) -> Result<Vec<(String, Shape, Init)>> {
    let recorder = Recorder {
        wanted: Mutex::new(Vec::new()),
    };
    let vb = VarBuilder::from_backend(Box::new(&recorder), DType::F32, Device::Cpu);
    build(vb).map_err(tensor_err(what))?;
    let mut wanted = recorder
        .wanted
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    wanted.sort_by(|a, b| a.0.cmp(&b.0));
    wanted.dedup_by(|a, b| a.0 == b.0);
    Ok(wanted)
}

/// Values for one tensor from its initialiser hint.
fn values(rng: &mut SplitMix64, shape: &Shape, init: &Init) -> Vec<f32> {
    let n = shape.elem_count();
    match *init {
        Init::Const(v) => vec![v as f32; n],
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| mean as f32 + stdev as f32 * rng.next_normal())
            .collect(),
        Init::Uniform { lo, up } => (0..n)
            .map(|_| (lo + (up - lo) * rng.next_f64()) as f32)
            .collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => rng.normal_vec(n, std as f32),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n)
                        .map(|_| (bound * (2.0 * rng.next_f64() - 1.0)) as f32)
                        .collect()
                }
            }
        }
    }
}

/// Writes one safetensors file with values for every recorded tensor.
pub(super) fn write_weights(
    path: &Path,
    wanted: &[(String, Shape, Init)],
    dtype: DType,
    seed: u64,
) -> Result<()> {
    let mut rng = SplitMix64::new(seed);
    let mut tensors = HashMap::new();
    for (name, shape, init) in wanted {
        let data = values(&mut rng, shape, init);
        let t = Tensor::from_vec(data, shape.clone(), &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(tensor_err(name))?;
        tensors.insert(name.clone(), t);
    }
    super::ensure_parent(path)?;
    candle_core::safetensors::save(&tensors, path).map_err(tensor_err("safetensors"))
}

impl TinyStableDiffusion {
    /// The UNet's config as candle-transformers takes it (for benchmarks
    /// that call its UNet directly on the written weights).
    pub fn candle_unet_config(&self) -> UNet2DConditionModelConfig {
        UNet2DConditionModelConfig {
            blocks: self
                .unet_channels
                .iter()
                .zip(&self.cross_attention)
                .zip(&self.heads)
                .map(|((&out_channels, &cross), &heads)| BlockConfig {
                    out_channels,
                    use_cross_attn: cross.then_some(self.transformer_layers_per_block),
                    attention_head_dim: heads,
                })
                .collect(),
            layers_per_block: self.layers_per_block,
            cross_attention_dim: self.context_dim(),
            use_linear_projection: self.use_linear_projection,
            norm_num_groups: 32,
            ..UNet2DConditionModelConfig::default()
        }
    }
}

/// Writes a tiny UNet folder (`config.json` and
/// `diffusion_pytorch_model.safetensors`) into `dir`: SD 1.x / 2.x shaped,
/// or SDXL shaped when the spec has [`TinyStableDiffusion::text_time`].
pub fn write_unet(dir: &Path, spec: &TinyStableDiffusion, seed: u64) -> Result<()> {
    spec.check()?;
    let time_embed_dim = 4 * spec.unet_channels[0];
    let unet = record("unet", |vb| {
        if let Some(t) = spec.text_time {
            TimestepEmbedding::new(vb.pp("add_embedding"), t.input_dim(), time_embed_dim)?;
        }
        UNet2DConditionModel::new(
            vb,
            spec.unet_in_channels,
            4,
            false,
            spec.candle_unet_config(),
        )
        .map(drop)
    })?;
    write_json(&dir.join("config.json"), &spec.unet_config_json())?;
    write_weights(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &unet,
        spec.dtype,
        seed,
    )
}

/// Writes a tiny Stable Diffusion pipeline into `dir` in the diffusers
/// layout: `model_index.json`, `unet/`, `vae/`, `text_encoder/`,
/// `tokenizer/` and `scheduler/`, plus `text_encoder_2/` and `tokenizer_2/`
/// for SDXL ([`TinyStableDiffusion::sdxl`]). The same spec and seed always give
/// byte-identical files.
pub fn write_stable_diffusion(dir: &Path, spec: &TinyStableDiffusion, seed: u64) -> Result<()> {
    spec.check()?;
    let tokenizer = TinyClipBpe::default();
    write_json(&dir.join("model_index.json"), &spec.model_index_json())?;

    write_unet(&dir.join("unet"), spec, seed)?;

    let vae_config = AutoEncoderKLConfig {
        block_out_channels: spec.vae_channels.clone(),
        layers_per_block: 1,
        latent_channels: 4,
        norm_num_groups: 32,
        use_quant_conv: true,
        use_post_quant_conv: true,
    };
    let vae = record("vae", |vb| {
        AutoEncoderKL::new(vb, 3, 3, vae_config).map(drop)
    })?;
    write_json(&dir.join("vae/config.json"), &spec.vae_config_json())?;
    let vae_path = dir.join("vae/diffusion_pytorch_model.safetensors");
    write_weights(&vae_path, &vae, spec.dtype, seed ^ 0x5641_4500)?;

    let text_config = ClipTextConfig {
        vocab_size: tokenizer.vocab_size(),
        embed_dim: spec.text_hidden,
        activation: Activation::QuickGelu,
        intermediate_size: spec.text_intermediate,
        max_position_embeddings: MAX_POSITIONS,
        pad_with: None,
        num_hidden_layers: spec.text_layers,
        num_attention_heads: spec.text_heads,
        projection_dim: spec.text_hidden,
    };
    let text = record("text_encoder", |vb| {
        ClipTextTransformer::new(vb.pp("text_model"), &text_config).map(drop)
    })?;
    write_json(
        &dir.join("text_encoder/config.json"),
        &spec.text_encoder_config_json(&tokenizer),
    )?;
    let text_path = dir.join("text_encoder/model.safetensors");
    write_weights(&text_path, &text, spec.dtype, seed ^ 0x5445_5854)?;

    write_json(&dir.join("tokenizer/vocab.json"), &tokenizer.vocab_json())?;
    write_file(&dir.join("tokenizer/merges.txt"), tokenizer.merges_txt())?;
    write_json(
        &dir.join("tokenizer/special_tokens_map.json"),
        &tokenizer.special_tokens_map_json(),
    )?;
    write_json(
        &dir.join("tokenizer/tokenizer_config.json"),
        &tokenizer.tokenizer_config_json(MAX_POSITIONS),
    )?;
    write_json(
        &dir.join("scheduler/scheduler_config.json"),
        &spec.scheduler_config_json(),
    )?;
    if let Some(second) = &spec.text_encoder_2 {
        write_second_text_encoder(dir, second, spec.dtype, seed ^ 0x5445_5832)?;
    }
    Ok(())
}
