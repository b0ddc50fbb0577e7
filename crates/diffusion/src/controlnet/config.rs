//! A ControlNet folder's `config.json` (diffusers' `ControlNetModel`).

use std::path::Path;

use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    CrossAttnDownBlock2DConfig, DownBlock2DConfig, UNetMidBlock2DCrossAttnConfig,
};
use serde::Deserialize;

use crate::config::{EncoderJson, EncoderLayout, config_error};
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
    /// The fields shared with the UNet it mirrors.
    #[serde(flatten)]
    pub(crate) encoder: EncoderJson,
    #[serde(default = "three")]
    pub(crate) conditioning_channels: usize,
    #[serde(default = "embedding_channels")]
    pub(crate) conditioning_embedding_out_channels: Vec<usize>,
    #[serde(default = "rgb")]
    controlnet_conditioning_channel_order: String,
    #[serde(default)]
    pub(crate) global_pool_conditions: bool,
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
        let e = &self.encoder;
        let EncoderLayout {
            heads,
            layers,
            cross,
        } = e.layout(path, "ControlNet")?;
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
        if self.conditioning_embedding_out_channels.is_empty() {
            return Err(config_error(
                path,
                "conditioning_embedding_out_channels is empty",
            ));
        }
        let n = e.block_out_channels.len();
        let mut down = Vec::with_capacity(n);
        let mut residual_channels = vec![e.block_out_channels[0]];
        for i in 0..n {
            let basic = DownBlock2DConfig {
                num_layers: e.layers_per_block,
                resnet_eps: e.norm_eps,
                resnet_groups: e.norm_num_groups,
                add_downsample: i + 1 < n,
                downsample_padding: e.downsample_padding,
                ..Default::default()
            };
            let out = e.block_out_channels[i];
            residual_channels.extend(std::iter::repeat_n(out, e.layers_per_block));
            if i + 1 < n {
                residual_channels.push(out);
            }
            down.push(if cross[i] {
                DownBlockSpec::CrossAttn(CrossAttnDownBlock2DConfig {
                    downblock: basic,
                    attn_num_head_channels: heads[i],
                    cross_attention_dim: e.cross_attention_dim,
                    sliced_attention_size: None,
                    use_linear_projection: e.use_linear_projection,
                    transformer_layers_per_block: layers[i],
                })
            } else {
                DownBlockSpec::Basic(basic)
            });
        }
        // As candle-transformers' UNet: the mid block takes the last
        // block's heads and transformer depth.
        let mid_layers = match down.last() {
            Some(DownBlockSpec::CrossAttn(c)) => c.transformer_layers_per_block,
            _ => 1,
        };
        let mid = UNetMidBlock2DCrossAttnConfig {
            resnet_eps: e.norm_eps,
            output_scale_factor: e.mid_block_scale_factor,
            cross_attn_dim: e.cross_attention_dim,
            attn_num_head_channels: heads[n - 1],
            resnet_groups: Some(e.norm_num_groups),
            use_linear_projection: e.use_linear_projection,
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
