//! A tiny ControlNet for a tiny Stable Diffusion pipeline, in diffusers'
//! `ControlNetModel` folder layout (`config.json`,
//! `diffusion_pytorch_model.safetensors`).
//!
//! The encoder's tensors (`conv_in`, `time_embedding`, `down_blocks`,
//! `mid_block`) are the ones candle-transformers' UNet asks for under the
//! same names; the ControlNet's own tensors (the conditioning-image
//! embedding and the zero convolutions) are laid out as diffusers' model
//! names and shapes them. The zero convolutions get random values, not
//! zeros, so a ControlNet visibly changes the output (as a trained one
//! does).

use std::path::Path;

use candle_core::Shape;
use candle_nn::Init;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use serde_json::{Value, json};

use super::diffusion::{TinyStableDiffusion, record, write_weights};
use super::{Result, TinyError, write_json};

/// The parts of a tiny ControlNet that are its own; the rest mirrors the
/// pipeline's UNet.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyControlNet {
    /// Widths of the conditioning-image embedding's stages; each stage after
    /// the first halves the size, so `2^(len - 1)` must be the VAE's scale
    /// (2 for the tiny pipeline's two-block VAE; 8 for SD's `[16, 32, 96,
    /// 256]`).
    pub conditioning_channels: Vec<usize>,
    /// `controlnet_conditioning_channel_order` is `bgr` rather than `rgb`.
    pub bgr: bool,
    /// `global_pool_conditions` (ControlNet 1.1 "shuffle"): residuals are
    /// averaged over the image.
    pub global_pool: bool,
}

impl Default for TinyControlNet {
    fn default() -> Self {
        Self {
            conditioning_channels: vec![16, 32],
            bgr: false,
            global_pool: false,
        }
    }
}

impl TinyControlNet {
    /// `config.json` for a ControlNet of `sd`'s UNet.
    pub fn config_json(&self, sd: &TinyStableDiffusion) -> Value {
        let unet = sd.unet_config_json();
        json!({
            "_class_name": "ControlNetModel",
            "_diffusers_version": "0.30.0",
            "act_fn": "silu",
            "attention_head_dim": unet["attention_head_dim"],
            "block_out_channels": unet["block_out_channels"],
            "class_embed_type": null,
            "conditioning_channels": 3,
            "conditioning_embedding_out_channels": self.conditioning_channels,
            "controlnet_conditioning_channel_order": if self.bgr { "bgr" } else { "rgb" },
            "cross_attention_dim": unet["cross_attention_dim"],
            "down_block_types": unet["down_block_types"],
            "downsample_padding": 1,
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "global_pool_conditions": self.global_pool,
            "in_channels": 4,
            "layers_per_block": unet["layers_per_block"],
            "mid_block_scale_factor": 1,
            "norm_eps": 1e-5,
            "norm_num_groups": 32,
            "only_cross_attention": false,
            "use_linear_projection": unet["use_linear_projection"],
        })
    }

    /// Every tensor of diffusers' ControlNet that is not a copy of the
    /// UNet's encoder: name, shape, initialiser.
    fn own_tensors(&self, sd: &TinyStableDiffusion) -> Vec<(String, Shape, Init)> {
        let mut out = Vec::new();
        let mut conv = |name: String, c_out: usize, c_in: usize, k: usize| {
            let fan_in = (c_in * k * k) as f64;
            out.push((
                format!("{name}.weight"),
                Shape::from((c_out, c_in, k, k)),
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            ));
            let bound = 1.0 / fan_in.sqrt();
            out.push((
                format!("{name}.bias"),
                Shape::from(c_out),
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ));
        };
        let e = &self.conditioning_channels;
        let prefix = "controlnet_cond_embedding";
        conv(format!("{prefix}.conv_in"), e[0], 3, 3);
        for (i, pair) in e.windows(2).enumerate() {
            conv(format!("{prefix}.blocks.{}", 2 * i), pair[0], pair[0], 3);
            conv(
                format!("{prefix}.blocks.{}", 2 * i + 1),
                pair[1],
                pair[0],
                3,
            );
        }
        let channels = &sd.unet_channels;
        conv(format!("{prefix}.conv_out"), channels[0], e[e.len() - 1], 3);
        let mut residuals = vec![channels[0]];
        for (i, &c) in channels.iter().enumerate() {
            residuals.extend(std::iter::repeat_n(c, sd.layers_per_block));
            if i + 1 < channels.len() {
                residuals.push(c);
            }
        }
        for (j, c) in residuals.into_iter().enumerate() {
            conv(format!("controlnet_down_blocks.{j}"), c, c, 1);
        }
        let last = channels[channels.len() - 1];
        conv("controlnet_mid_block".into(), last, last, 1);
        out
    }
}

/// Writes a tiny ControlNet for the pipeline `sd` describes into `dir`.
/// The same specs and seed always give byte-identical files.
pub fn write_controlnet(
    dir: &Path,
    sd: &TinyStableDiffusion,
    spec: &TinyControlNet,
    seed: u64,
) -> Result<()> {
    if spec.conditioning_channels.is_empty() {
        return Err(TinyError::InvalidSpec(
            "conditioning_channels needs at least one stage".into(),
        ));
    }
    let encoder = ["conv_in.", "time_embedding.", "down_blocks.", "mid_block."];
    let unet = record("controlnet", |vb| {
        UNet2DConditionModel::new(vb, 4, 4, false, sd.candle_unet_config()).map(drop)
    })?;
    let mut tensors: Vec<_> = unet
        .into_iter()
        .filter(|(name, _, _)| encoder.iter().any(|p| name.starts_with(p)))
        .collect();
    tensors.extend(spec.own_tensors(sd));
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    write_json(&dir.join("config.json"), &spec.config_json(sd))?;
    write_weights(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &tensors,
        sd.dtype,
        seed,
    )
}
