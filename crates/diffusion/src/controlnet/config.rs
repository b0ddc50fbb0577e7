//! A ControlNet folder's `config.json` (diffusers' `ControlNetModel`).

use std::path::Path;

use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig;
use serde::Deserialize;

use crate::config::{EncoderJson, config_error};
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

/// The checked architecture.
#[derive(Debug, Clone)]
pub(crate) struct ControlNetSpec {
    /// The blocks it copies from the UNet (its up path unused).
    pub(crate) blocks: UNet2DConditionModelConfig,
    /// Channels of every residual, in the order the UNet adds them.
    pub(crate) residual_channels: Vec<usize>,
    /// The conditioning image's channels are in BGR order.
    pub(crate) bgr: bool,
}

impl ControlNetJson {
    /// Checks the config and lays out the blocks.
    pub(crate) fn spec(&self, path: &Path) -> Result<ControlNetSpec> {
        let e = &self.encoder;
        let layout = e.layout(path, "ControlNet")?;
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
        let mut residual_channels = vec![e.block_out_channels[0]];
        for (i, &out) in e.block_out_channels.iter().enumerate() {
            residual_channels.extend(std::iter::repeat_n(out, e.layers_per_block));
            if i + 1 < n {
                residual_channels.push(out);
            }
        }
        Ok(ControlNetSpec {
            blocks: e.blocks_config(&layout),
            residual_channels,
            bgr,
        })
    }
}
