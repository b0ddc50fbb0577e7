//! The diffusers folder's JSON configs, read into candle-transformers'
//! model configs.
//!
//! Only the fields that change the architecture are read; the rest of a
//! diffusers config (versions, sample sizes, ...) is ignored. Fields whose
//! values candle-transformers' models cannot honour are refused with
//! [`DiffusionError::Unsupported`] rather than loaded wrongly.

use std::path::{Path, PathBuf};

use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{DiffusionError, Result};

/// Reads and parses one JSON file.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| config_error(path, e.to_string()))
}

pub(crate) fn config_error(path: &Path, reason: impl Into<String>) -> DiffusionError {
    DiffusionError::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A value diffusers writes either once for all blocks or once per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn for_blocks(&self, n: usize, path: &Path, field: &str) -> Result<Vec<usize>> {
        match self {
            Self::One(v) => Ok(vec![*v; n]),
            Self::Each(v) if v.len() == n => Ok(v.clone()),
            Self::Each(v) => Err(config_error(
                path,
                format!("{field} has {} entries for {n} blocks", v.len()),
            )),
        }
    }
}

/// Attention heads and transformer depth per block. diffusers'
/// `attention_head_dim` holds the head count of SD 1.x/2.x (a historical
/// misnomer, kept by candle-transformers); `num_attention_heads`, when set,
/// is the same number named right.
fn heads_and_layers(
    num_attention_heads: Option<&PerBlock>,
    attention_head_dim: &PerBlock,
    transformer_layers_per_block: &PerBlock,
    n: usize,
    path: &Path,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let heads = match num_attention_heads {
        Some(h) => h.for_blocks(n, path, "num_attention_heads")?,
        None => attention_head_dim.for_blocks(n, path, "attention_head_dim")?,
    };
    let layers =
        transformer_layers_per_block.for_blocks(n, path, "transformer_layers_per_block")?;
    Ok((heads, layers))
}

fn one() -> PerBlock {
    PerBlock::One(1)
}
fn eight() -> PerBlock {
    PerBlock::One(8)
}
fn default_true() -> bool {
    true
}
fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn groups() -> usize {
    32
}
fn eps() -> f64 {
    1e-5
}

/// The fields a UNet and a ControlNet share: the time embedding, the
/// input convolution, the down blocks and the mid block. Both configs
/// flatten it in, so the two read and check them the same way.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct EncoderJson {
    #[serde(default = "four")]
    pub(crate) in_channels: usize,
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
    pub(crate) downsample_padding: usize,
    #[serde(default = "one_f64")]
    pub(crate) mid_block_scale_factor: f64,
    #[serde(default)]
    pub(crate) use_linear_projection: bool,
    #[serde(default)]
    addition_embed_type: Option<String>,
    #[serde(default)]
    class_embed_type: Option<String>,
    #[serde(default)]
    mid_block_type: Option<String>,
}

/// The checked down-block layout of an [`EncoderJson`].
#[derive(Debug, Clone)]
pub(crate) struct EncoderLayout {
    /// Attention heads per block.
    pub(crate) heads: Vec<usize>,
    /// Transformer depth per block.
    pub(crate) layers: Vec<usize>,
    /// Whether each down block has cross-attention.
    pub(crate) cross: Vec<bool>,
}

impl EncoderJson {
    /// Checks the shared fields of `what` ("UNet", "ControlNet") and lays
    /// out its down blocks.
    pub(crate) fn layout(&self, path: &Path, what: &str) -> Result<EncoderLayout> {
        self.layout_with(path, what, false)
    }

    /// [`EncoderJson::layout`], accepting SDXL's `text_time` added
    /// conditioning when `text_time` is set (the UNet checks its sizes).
    pub(crate) fn layout_with(
        &self,
        path: &Path,
        what: &str,
        text_time: bool,
    ) -> Result<EncoderLayout> {
        if let Some(kind) = self
            .addition_embed_type
            .as_ref()
            .filter(|kind| !(text_time && kind.as_str() == "text_time"))
        {
            return Err(DiffusionError::Unsupported(format!(
                "{what} addition_embed_type {kind:?} (SDXL's added text/time conditioning and \
                 second text encoder); SD 1.x, 2.x and SD-Turbo folders load"
            )));
        }
        if let Some(kind) = &self.class_embed_type {
            return Err(DiffusionError::Unsupported(format!(
                "{what} class_embed_type {kind:?}"
            )));
        }
        if let Some(mid) = self.mid_block_type.as_deref()
            && mid != "UNetMidBlock2DCrossAttn"
        {
            return Err(DiffusionError::Unsupported(format!(
                "{what} mid block {mid:?}"
            )));
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n {
            return Err(config_error(
                path,
                "block_out_channels and down_block_types need one entry per block",
            ));
        }
        if self.layers_per_block == 0 {
            return Err(config_error(path, "layers_per_block must be at least 1"));
        }
        if let Some((i, c)) = self
            .block_out_channels
            .iter()
            .enumerate()
            .find(|(_, c)| !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(config_error(
                path,
                format!(
                    "block_out_channels[{i}] = {c} does not divide into {} norm groups",
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
        let cross = self
            .down_block_types
            .iter()
            .map(|kind| match kind.as_str() {
                "CrossAttnDownBlock2D" => Ok(true),
                "DownBlock2D" => Ok(false),
                other => Err(DiffusionError::Unsupported(format!(
                    "{what} down block {other:?}"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EncoderLayout {
            heads,
            layers,
            cross,
        })
    }
}

impl EncoderJson {
    /// The candle-transformers config of the blocks laid out by
    /// [`EncoderJson::layout`] (the UNet's up path mirrors them).
    pub(crate) fn blocks_config(&self, layout: &EncoderLayout) -> UNet2DConditionModelConfig {
        let blocks = (0..self.block_out_channels.len())
            .map(|i| BlockConfig {
                out_channels: self.block_out_channels[i],
                use_cross_attn: layout.cross[i].then_some(layout.layers[i]),
                attention_head_dim: layout.heads[i],
            })
            .collect();
        UNet2DConditionModelConfig {
            center_input_sample: false,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            blocks,
            layers_per_block: self.layers_per_block,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.norm_eps,
            cross_attention_dim: self.cross_attention_dim,
            // This crate's UNet takes slicing per run, not from the config.
            sliced_attention_size: None,
            use_linear_projection: self.use_linear_projection,
        }
    }
}

/// `unet/config.json`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct UnetJson {
    #[serde(flatten)]
    pub(crate) encoder: EncoderJson,
    #[serde(default = "four")]
    pub(crate) out_channels: usize,
    up_block_types: Vec<String>,
    #[serde(default)]
    center_input_sample: bool,
    #[serde(default)]
    time_embedding_type: Option<String>,
    /// SDXL: width of each added time id's sinusoidal embedding.
    #[serde(default)]
    addition_time_embed_dim: Option<usize>,
    /// SDXL: pooled text width plus six time ids' embeddings.
    #[serde(default)]
    projection_class_embeddings_input_dim: Option<usize>,
}

/// The sizes of SDXL's added text/time conditioning (`addition_embed_type:
/// "text_time"`): the pooled text embedding and six time ids (original
/// size, crop corner, target size) join the timestep's embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TextTimeShape {
    /// Sinusoidal width of each time id.
    pub(crate) time_dim: usize,
    /// Pooled text width plus `6 x time_dim`.
    pub(crate) input_dim: usize,
}

impl TextTimeShape {
    /// Width of the pooled text embedding.
    pub(crate) fn pooled_dim(&self) -> usize {
        self.input_dim - 6 * self.time_dim
    }
}

fn one_usize() -> usize {
    1
}
fn one_f64() -> f64 {
    1.0
}

impl UnetJson {
    /// The added text/time conditioning an SDXL UNet takes, `None` for
    /// SD 1.x / 2.x.
    pub(crate) fn text_time(&self, path: &Path) -> Result<Option<TextTimeShape>> {
        if self.encoder.addition_embed_type.as_deref() != Some("text_time") {
            return Ok(None);
        }
        let (Some(time_dim), Some(input_dim)) = (
            self.addition_time_embed_dim,
            self.projection_class_embeddings_input_dim,
        ) else {
            return Err(config_error(
                path,
                "text_time conditioning needs addition_time_embed_dim and \
                 projection_class_embeddings_input_dim",
            ));
        };
        if time_dim == 0 || input_dim <= 6 * time_dim {
            return Err(config_error(
                path,
                format!(
                    "projection_class_embeddings_input_dim {input_dim} leaves no room for a \
                     pooled text embedding beside 6 time ids of {time_dim}"
                ),
            ));
        }
        Ok(Some(TextTimeShape {
            time_dim,
            input_dim,
        }))
    }

    /// The candle-transformers config, or why this UNet cannot be built.
    pub(crate) fn to_candle(&self, path: &Path) -> Result<UNet2DConditionModelConfig> {
        let e = &self.encoder;
        let layout = e.layout_with(path, "UNet", true)?;
        self.text_time(path)?;
        if let Some(kind) = self
            .time_embedding_type
            .as_deref()
            .filter(|&k| k != "positional")
        {
            return Err(DiffusionError::Unsupported(format!(
                "UNet time_embedding_type {kind:?}"
            )));
        }
        let n = e.block_out_channels.len();
        if self.up_block_types.len() != n {
            return Err(config_error(
                path,
                "block_out_channels, down_block_types and up_block_types need one entry per block",
            ));
        }
        for i in 0..n {
            let mirror = match self.up_block_types[n - 1 - i].as_str() {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                other => {
                    return Err(DiffusionError::Unsupported(format!(
                        "UNet up block {other:?}"
                    )));
                }
            };
            if layout.cross[i] != mirror {
                return Err(DiffusionError::Unsupported(
                    "UNet up blocks that do not mirror the down blocks".into(),
                ));
            }
        }
        Ok(UNet2DConditionModelConfig {
            center_input_sample: self.center_input_sample,
            ..e.blocks_config(&layout)
        })
    }
}

/// `vae/config.json`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct VaeJson {
    block_out_channels: Vec<usize>,
    #[serde(default = "one_usize")]
    layers_per_block: usize,
    #[serde(default = "four")]
    pub(crate) latent_channels: usize,
    #[serde(default = "groups")]
    norm_num_groups: usize,
    #[serde(default = "default_scaling")]
    pub(crate) scaling_factor: f64,
    #[serde(default)]
    shift_factor: Option<f64>,
    #[serde(default = "default_true")]
    use_quant_conv: bool,
    #[serde(default = "default_true")]
    use_post_quant_conv: bool,
}

fn default_scaling() -> f64 {
    0.18215
}

impl VaeJson {
    pub(crate) fn to_candle(&self, path: &Path) -> Result<AutoEncoderKLConfig> {
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            return Err(DiffusionError::Unsupported(
                "a VAE with a shift_factor (SD3 / Flux latents)".into(),
            ));
        }
        if self.block_out_channels.is_empty() {
            return Err(config_error(path, "block_out_channels is empty"));
        }
        Ok(AutoEncoderKLConfig {
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            latent_channels: self.latent_channels,
            norm_num_groups: self.norm_num_groups,
            use_quant_conv: self.use_quant_conv,
            use_post_quant_conv: self.use_post_quant_conv,
        })
    }

    /// How many pixels one latent covers on a side: each VAE block after
    /// the first halves the size (8 for every released SD VAE).
    pub(crate) fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// The weight files of one component folder: a single safetensors file, its
/// `fp16` variant, or the shards a `.safetensors.index.json` lists.
pub(crate) fn weight_files(dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    for name in [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
    ] {
        let path = dir.join(&name);
        if path.is_file() {
            return Ok(vec![path]);
        }
    }
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if index.is_file() {
        #[derive(Deserialize)]
        struct Index {
            weight_map: std::collections::BTreeMap<String, String>,
        }
        let parsed: Index = read_json(&index)?;
        let mut files: Vec<PathBuf> = parsed.weight_map.values().map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    if dir.join(format!("{stem}.bin")).is_file() {
        return Err(DiffusionError::Unsupported(format!(
            "{}: PyTorch pickle weights ({stem}.bin); save the model as safetensors",
            dir.display()
        )));
    }
    Err(DiffusionError::Io {
        path: dir.join(format!("{stem}.safetensors")),
        reason: "no safetensors weights in this folder".into(),
    })
}
