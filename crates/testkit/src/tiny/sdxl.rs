//! SDXL's second text encoder (transformers' `CLIPTextModelWithProjection`)
//! and its tokenizer, for tiny SDXL pipelines.
//!
//! SDXL conditions its UNet on the penultimate hidden states of two CLIP
//! text encoders joined along the feature axis, and on the second encoder's
//! projected pooled output. The tiny second encoder here differs from the
//! first in width, activation and padding token (as OpenCLIP's bigG does
//! from OpenAI's CLIP-L), so a pipeline that mixes the two up fails.

use std::path::Path;

use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig, ClipTextTransformer,
};
use serde_json::{Value, json};

use super::clip_tokenizer::TinyClipBpe;
use super::diffusion::{MAX_POSITIONS, record, write_weights};
use super::{Result, TinyError, TinySchedulerSpec, TinyStableDiffusion, TinyTextTime};
use super::{write_file, write_json};

/// The shape of SDXL's second text encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinyTextEncoder2 {
    /// Hidden width (its share of the UNet's cross-attention width).
    pub hidden: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Width of the projected pooled output (the UNet's pooled input).
    pub projection_dim: usize,
}

impl Default for TinyTextEncoder2 {
    fn default() -> Self {
        Self {
            hidden: 48,
            layers: 2,
            heads: 4,
            intermediate: 53,
            projection_dim: 24,
        }
    }
}

impl TinyTextEncoder2 {
    /// `text_encoder_2/config.json`, as transformers writes SDXL's: GELU,
    /// a projection, and the legacy `eos_token_id` of 2 (the pipeline must
    /// find the end token from the tokenizer, not from this field).
    pub fn config_json(&self, tokenizer: &TinyClipBpe) -> Value {
        json!({
            "architectures": ["CLIPTextModelWithProjection"],
            "model_type": "clip_text_model",
            "hidden_act": "gelu",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "max_position_embeddings": MAX_POSITIONS,
            "vocab_size": tokenizer.vocab_size(),
            "layer_norm_eps": 1e-5,
            "projection_dim": self.projection_dim,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
            "torch_dtype": "float32",
        })
    }

    fn check(&self) -> Result<()> {
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) || self.layers == 0 {
            return Err(TinyError::InvalidSpec(
                "text_encoder_2 needs layers and a hidden width that divides by its heads".into(),
            ));
        }
        Ok(())
    }
}

impl TinyStableDiffusion {
    /// A tiny SDXL base pipeline: a plain first UNet block, two
    /// cross-attention blocks of two transformer layers with linear
    /// projections, the added text/time conditioning, two text encoders
    /// (widths 32 and 48, so the UNet cross-attends to 80 features), SDXL's
    /// VAE scaling factor and its Euler scheduler.
    pub fn sdxl() -> Self {
        let second = TinyTextEncoder2::default();
        Self {
            unet_channels: vec![32, 64, 64],
            cross_attention: vec![false, true, true],
            heads: vec![2, 2, 4],
            use_linear_projection: true,
            transformer_layers_per_block: 2,
            text_time: Some(TinyTextTime {
                pooled_dim: second.projection_dim,
                time_dim: 8,
            }),
            text_encoder_2: Some(second),
            scaling_factor: 0.13025,
            scheduler: TinySchedulerSpec {
                class: "EulerDiscreteScheduler".into(),
                prediction_type: "epsilon".into(),
                timestep_spacing: "leading".into(),
            },
            ..Self::default()
        }
    }
}

/// Writes `text_encoder_2/` and `tokenizer_2/` into the pipeline folder
/// `dir`. The tokenizer pads with `!`, as SDXL's second tokenizer does.
pub(super) fn write_second_text_encoder(
    dir: &Path,
    spec: &TinyTextEncoder2,
    dtype: candle_core::DType,
    seed: u64,
) -> Result<()> {
    spec.check()?;
    let tokenizer = TinyClipBpe::default();
    let config = ClipTextConfig {
        vocab_size: tokenizer.vocab_size(),
        embed_dim: spec.hidden,
        activation: Activation::QuickGelu,
        intermediate_size: spec.intermediate,
        max_position_embeddings: MAX_POSITIONS,
        pad_with: None,
        num_hidden_layers: spec.layers,
        num_attention_heads: spec.heads,
        projection_dim: spec.projection_dim,
    };
    // The activation only matters when running candle's model, not for the
    // tensor names and shapes recorded here.
    let wanted = record("text_encoder_2", |vb| {
        ClipTextTransformer::new(vb.pp("text_model"), &config)?;
        candle_nn::linear_no_bias(spec.hidden, spec.projection_dim, vb.pp("text_projection"))
            .map(drop)
    })?;
    write_json(
        &dir.join("text_encoder_2/config.json"),
        &spec.config_json(&tokenizer),
    )?;
    write_weights(
        &dir.join("text_encoder_2/model.safetensors"),
        &wanted,
        dtype,
        seed,
    )?;

    let tok = dir.join("tokenizer_2");
    write_json(&tok.join("vocab.json"), &tokenizer.vocab_json())?;
    write_file(&tok.join("merges.txt"), tokenizer.merges_txt())?;
    let mut special = tokenizer.special_tokens_map_json();
    special["pad_token"] = json!("!");
    write_json(&tok.join("special_tokens_map.json"), &special)?;
    let mut config = tokenizer.tokenizer_config_json(MAX_POSITIONS);
    config["pad_token"] = json!("!");
    write_json(&tok.join("tokenizer_config.json"), &config)
}
