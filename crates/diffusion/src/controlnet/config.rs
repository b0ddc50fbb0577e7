//! A ControlNet folder's `config.json` (diffusers' `ControlNetModel`).

use std::path::Path;

use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    CrossAttnDownBlock2DConfig, DownBlock2DConfig, UNetMidBlock2DCrossAttnConfig,
};
use serde::Deserialize;

use crate::config::{
    PerBlock, config_error, default_true, eight, eps, four, groups, heads_and_layers, one, one_f64,
    one_usize, two,
};
use crate::error::{DiffusionError, Result};

fn three() -> usize {
    3
}

fn embedding_channels() -> Vec<usize> {
    vec![16, 32, 96, 256]
}

fn rgb() -> String {
    "rgb".into()
}

/// `config.json` of a ControlNet folder. Only the fields that shape the
/// network are read; values this crate cannot honour are refused.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ControlNetJson {
    #[serde(default = "four")]
    pub(crate) in_channels: usize,
    #[serde(default = "three")]
    pub(crate) conditioning_channels: usize,
    pub(crate) block_out_channels: Vec<usize>,
    down_block_types: Vec<String>,
    #[serde(default = "two")]
    pub(crate) layers_per_block: usize,
    #[serde(default = "eight")]
    attention_head_dim: PerBlock,
    #[serde(default)]
    num_attention_heads: Option<PerBlock>,
    #[serde(default = "one")]
    transformer_layers_per_block: PerBlock,
    pub(crate) cross_attention_dim: usize,
    #[serde(default = "groups")]
    pub(crate) norm_num_groups: usize,
    #[serde(default = "eps")]
    pub(crate) norm_eps: f64,
    #[serde(default = "default_true")]
    pub(crate) flip_sin_to_cos: bool,
    #[serde(default)]
    pub(crate) freq_shift: f64,
    #[serde(default = "one_usize")]
    downsample_padding: usize,
    #[serde(default = "one_f64")]
    mid_block_scale_factor: f64,
    #[serde(default)]
    use_linear_projection: bool,
    #[serde(default = "embedding_channels")]
    pub(crate) conditioning_embedding_out_channels: Vec<usize>,
    #[serde(default = "rgb")]
    controlnet_conditioning_channel_order: String,
    #[serde(default)]
    pub(crate) global_pool_conditions: bool,
    #[serde(default)]
    addition_embed_type: Option<String>,
    #[serde(default)]
    class_embed_type: Option<String>,
    #[serde(default)]
    mid_block_type: Option<String>,
    #[serde(default)]
    only_cross_attention: serde_json::Value,
}

/// One down block, as candle-transformers builds it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DownBlockSpec {
    Basic(DownBlock2DConfig),
    CrossAttn(CrossAttnDownBlock2DConfig),
}

/// The checked architecture.
#[derive(Debug, Clone)]
pub(crate) struct ControlNetSpec {
    pub(crate) down: Vec<DownBlockSpec>,
    pub(crate) mid: UNetMidBlock2DCrossAttnConfig,
    /// Channels of every residual, in the order the UNet adds them.
    pub(crate) residual_channels: Vec<usize>,
    /// The conditioning image's channels are in BGR order.
    pub(crate) bgr: bool,
}

impl ControlNetJson {
    /// Checks the config and lays out the blocks.
    pub(crate) fn spec(&self, path: &Path) -> Result<ControlNetSpec> {
        for (field, value) in [
            ("addition_embed_type", &self.addition_embed_type),
            ("class_embed_type", &self.class_embed_type),
        ] {
            if let Some(v) = value {
                return Err(DiffusionError::Unsupported(format!(
                    "ControlNet {field} {v:?} (SDXL-style added conditioning)"
                )));
            }
        }
        if let Some(mid) = self.mid_block_type.as_deref()
            && mid != "UNetMidBlock2DCrossAttn"
        {
            return Err(DiffusionError::Unsupported(format!(
                "ControlNet mid block {mid:?}"
            )));
        }
        let only_cross = match &self.only_cross_attention {
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::Array(v) => v.iter().any(|b| b.as_bool() == Some(true)),
            _ => false,
        };
        if only_cross {
            return Err(DiffusionError::Unsupported(
                "ControlNet only_cross_attention blocks".into(),
            ));
        }
        let bgr = match self.controlnet_conditioning_channel_order.as_str() {
            "rgb" => false,
            "bgr" => true,
            other => {
                return Err(config_error(
                    path,
                    format!("controlnet_conditioning_channel_order {other:?} (rgb or bgr)"),
                ));
            }
        };
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n {
            return Err(config_error(
                path,
                "block_out_channels and down_block_types need one entry per block",
            ));
        }
        if self.conditioning_embedding_out_channels.is_empty() {
            return Err(config_error(
                path,
                "conditioning_embedding_out_channels is empty",
            ));
        }
        if self.layers_per_block == 0 {
            return Err(config_error(path, "layers_per_block must be at least 1"));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(config_error(
                path,
                format!(
                    "{c} channels do not divide into {} groups",
                    self.norm_num_groups
                ),
            ));
        }
        let (heads, layers) = heads_and_layers(
            self.num_attention_heads.as_ref(),
            &self.attention_head_dim,
            &self.transformer_layers_per_block,
            n,
            path,
        )?;
        let mut down = Vec::with_capacity(n);
        let mut residual_channels = vec![self.block_out_channels[0]];
        for i in 0..n {
            let basic = DownBlock2DConfig {
                num_layers: self.layers_per_block,
                resnet_eps: self.norm_eps,
                resnet_groups: self.norm_num_groups,
                add_downsample: i + 1 < n,
                downsample_padding: self.downsample_padding,
                ..Default::default()
            };
            let out = self.block_out_channels[i];
            residual_channels.extend(std::iter::repeat_n(out, self.layers_per_block));
            if i + 1 < n {
                residual_channels.push(out);
            }
            down.push(match self.down_block_types[i].as_str() {
                "DownBlock2D" => DownBlockSpec::Basic(basic),
                "CrossAttnDownBlock2D" => DownBlockSpec::CrossAttn(CrossAttnDownBlock2DConfig {
                    downblock: basic,
                    attn_num_head_channels: heads[i],
                    cross_attention_dim: self.cross_attention_dim,
                    sliced_attention_size: None,
                    use_linear_projection: self.use_linear_projection,
                    transformer_layers_per_block: layers[i],
                }),
                other => {
                    return Err(DiffusionError::Unsupported(format!(
                        "ControlNet down block {other:?}"
                    )));
                }
            });
        }
        // As candle-transformers' UNet: the mid block takes the last
        // block's heads and transformer depth.
        let mid_layers = match down.last() {
            Some(DownBlockSpec::CrossAttn(c)) => c.transformer_layers_per_block,
            _ => 1,
        };
        let mid = UNetMidBlock2DCrossAttnConfig {
            resnet_eps: self.norm_eps,
            output_scale_factor: self.mid_block_scale_factor,
            cross_attn_dim: self.cross_attention_dim,
            attn_num_head_channels: heads[n - 1],
            resnet_groups: Some(self.norm_num_groups),
            use_linear_projection: self.use_linear_projection,
            transformer_layers_per_block: mid_layers,
            ..Default::default()
        };
        Ok(ControlNetSpec {
            down,
            mid,
            residual_channels,
            bgr,
        })
    }
}
