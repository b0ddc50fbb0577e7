//! ControlNet: a trainable copy of the UNet's encoder that reads a
//! conditioning image (edges, depth, pose, ...) and adds its features to the
//! UNet's skip connections and mid block.
//!
//! candle-transformers has no ControlNet, so the model is put together here
//! from this crate's UNet encoder (the same blocks as the UNet's, attention
//! slicing included), under diffusers' `ControlNetModel` names: the conditioning-image embedding
//! (`controlnet_cond_embedding.*`), the UNet's `conv_in`, `time_embedding`,
//! `down_blocks` and `mid_block`, and the zero convolutions
//! (`controlnet_down_blocks.N`, `controlnet_mid_block`).

mod attach;
mod config;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder, conv2d};

use crate::config::{read_json, weight_files};
use crate::error::{DiffusionError, Result};
use crate::memory::AttentionSlicing;
use crate::unet::Encoder;
use crate::weights;
pub(crate) use attach::{AttachedControlNet, ControlInput};
pub(crate) use config::ControlNetJson;
use config::ControlNetSpec;

/// The conditioning image to feature map: 3x3 convolutions with SiLU, each
/// pair halving the size, then a (zero-initialised) 3x3 convolution to the
/// UNet's first block width.
#[derive(Debug)]
struct CondEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

impl CondEmbedding {
    fn new(vb: VarBuilder<'_>, json: &ControlNetJson) -> candle_core::Result<Self> {
        let same = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let halve = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let channels = &json.conditioning_embedding_out_channels;
        let conv_in = conv2d(
            json.conditioning_channels,
            channels[0],
            3,
            same,
            vb.pp("conv_in"),
        )?;
        let mut blocks = Vec::new();
        let vb_blocks = vb.pp("blocks");
        for (i, pair) in channels.windows(2).enumerate() {
            let (c_in, c_out) = (pair[0], pair[1]);
            blocks.push(conv2d(c_in, c_in, 3, same, vb_blocks.pp(2 * i))?);
            blocks.push(conv2d(c_in, c_out, 3, halve, vb_blocks.pp(2 * i + 1))?);
        }
        let last = channels[channels.len() - 1];
        let conv_out = conv2d(
            last,
            json.encoder.block_out_channels[0],
            3,
            same,
            vb.pp("conv_out"),
        )?;
        Ok(Self {
            conv_in,
            blocks,
            conv_out,
        })
    }

    fn forward(&self, cond: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = candle_nn::ops::silu(&self.conv_in.forward(cond)?)?;
        for block in &self.blocks {
            x = candle_nn::ops::silu(&block.forward(&x)?)?;
        }
        self.conv_out.forward(&x)
    }
}

/// What a ControlNet adds to the UNet at one step: one residual per skip
/// connection (in the UNet's order) and one for the mid block.
#[derive(Debug, Clone)]
pub struct ControlResiduals {
    /// The skip connections' residuals.
    pub down: Vec<Tensor>,
    /// The mid block's residual.
    pub mid: Tensor,
}

impl ControlResiduals {
    /// The element-wise sum of two ControlNets' residuals (several
    /// ControlNets at once add up, as in diffusers' `MultiControlNetModel`).
    pub fn add(&self, other: &Self) -> Result<Self> {
        if self.down.len() != other.down.len() {
            return Err(DiffusionError::Model(format!(
                "{} and {} residuals do not add up",
                self.down.len(),
                other.down.len()
            )));
        }
        let down = self
            .down
            .iter()
            .zip(&other.down)
            .map(|(a, b)| a + b)
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            down,
            mid: (&self.mid + &other.mid)?,
        })
    }
}

/// A ControlNet loaded from a diffusers folder (`config.json` and
/// `diffusion_pytorch_model[.fp16].safetensors`, for example
/// `lllyasviel/sd-controlnet-canny` or `lllyasviel/control_v11p_sd15_canny`).
#[derive(Debug)]
pub struct ControlNet {
    dir: PathBuf,
    json: ControlNetJson,
    spec: ControlNetSpec,
    dtype: DType,
    device: Device,
    encoder: Encoder,
    cond_embedding: CondEmbedding,
    zero_down: Vec<Conv2d>,
    zero_mid: Conv2d,
}

impl ControlNet {
    /// Loads the ControlNet in `dir` onto `device` with `dtype` weights
    /// (use the pipeline's: [`crate::StableDiffusion::load_controlnet`] does).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        crate::pipeline::check_compute_dtype(dtype, device)?;
        let config_path = dir.join("config.json");
        let json: ControlNetJson = read_json(&config_path)?;
        let spec = json.spec(&config_path)?;
        let files = weight_files(dir, "diffusion_pytorch_model")?;
        let vb = weights::open(&files, dtype, device, None)?;
        Self::build(vb, dir, json, spec, dtype).map_err(|e| DiffusionError::Config {
            path: config_path,
            reason: format!("weights do not match config.json: {e}"),
        })
    }

    fn build(
        vb: VarBuilder<'_>,
        dir: &Path,
        json: ControlNetJson,
        spec: ControlNetSpec,
        dtype: DType,
    ) -> candle_core::Result<Self> {
        let encoder = Encoder::new(&vb, json.encoder.in_channels, &spec.blocks)?;
        let cond_embedding = CondEmbedding::new(vb.pp("controlnet_cond_embedding"), &json)?;
        let channels = &json.encoder.block_out_channels;
        let last = channels[channels.len() - 1];
        let vb_zero = vb.pp("controlnet_down_blocks");
        let zero_down = spec
            .residual_channels
            .iter()
            .enumerate()
            .map(|(j, &c)| conv2d(c, c, 1, Conv2dConfig::default(), vb_zero.pp(j)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let zero_mid = conv2d(
            last,
            last,
            1,
            Conv2dConfig::default(),
            vb.pp("controlnet_mid_block"),
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            json,
            spec,
            dtype,
            device: vb.device().clone(),
            encoder,
            cond_embedding,
            zero_down,
            zero_mid,
        })
    }

    /// The folder it came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Latent channels it reads (the UNet's 4; an inpainting UNet's extra
    /// channels are not shown to it, as in diffusers).
    pub fn in_channels(&self) -> usize {
        self.json.encoder.in_channels
    }

    /// Channels of the UNet blocks it mirrors.
    pub fn block_out_channels(&self) -> &[usize] {
        &self.json.encoder.block_out_channels
    }

    /// ResNet layers per down block of the UNet it mirrors.
    pub fn layers_per_block(&self) -> usize {
        self.json.encoder.layers_per_block
    }

    /// Pixels per feature cell of the conditioning embedding on a side: it
    /// must equal the VAE's, so the image's features land on the latents.
    pub fn conditioning_scale_factor(&self) -> usize {
        1 << (self.json.conditioning_embedding_out_channels.len() - 1)
    }

    /// Width of the text conditioning it attends to.
    pub fn cross_attention_dim(&self) -> usize {
        self.json.encoder.cross_attention_dim
    }

    /// Its weights' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device its weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The conditioning images' embedding, `[rows, c0, h, w]` at the
    /// latents' size, in the weights' dtype.
    ///
    /// `cond` holds the conditioning images `[rows, 3, h x s, w x s]`, RGB in
    /// 0..=1 (as diffusers' control image processor makes them). The
    /// embedding does not depend on the step, so a pipeline computes it once
    /// per batch and passes it to [`ControlNet::forward_embedded`] at every
    /// step.
    pub fn embed_condition(&self, cond: &Tensor) -> Result<Tensor> {
        let cond = if self.spec.bgr {
            cond.flip(&[1])?
        } else {
            cond.clone()
        };
        Ok(self.cond_embedding.forward(&cond.to_dtype(self.dtype)?)?)
    }

    /// The residuals for a UNet step.
    ///
    /// - `sample`: the UNet's (scaled) latent input `[rows, in_channels, h, w]`;
    /// - `timestep`: the step's timestep;
    /// - `context`: the text conditioning `[rows, seq, dim]`;
    /// - `cond`: the conditioning images `[rows, 3, h x s, w x s]`, RGB in
    ///   0..=1 (as diffusers' control image processor makes them);
    /// - `scale`: the conditioning scale of each row, `[rows, 1, 1, 1]`;
    /// - `slicing`: how its attention is sliced (as the UNet's, see
    ///   [`crate::MemoryOptions::attention_slicing`]).
    ///
    /// Everything is computed in the weights' dtype; the residuals come back
    /// in it. Equal to [`ControlNet::embed_condition`] followed by
    /// [`ControlNet::forward_embedded`].
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        cond: &Tensor,
        scale: &Tensor,
        slicing: Option<AttentionSlicing>,
    ) -> Result<ControlResiduals> {
        let embedded = self.embed_condition(cond)?;
        self.forward_embedded(sample, timestep, context, &embedded, scale, slicing)
    }

    /// The residuals for a UNet step from an already embedded condition
    /// (see [`ControlNet::embed_condition`]); the other arguments are those
    /// of [`ControlNet::forward`].
    pub fn forward_embedded(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        embedded: &Tensor,
        scale: &Tensor,
        slicing: Option<AttentionSlicing>,
    ) -> Result<ControlResiduals> {
        let dtype = self.dtype;
        let sample = sample.to_dtype(dtype)?;
        let (rows, _, _, _) = sample.dims4()?;
        let temb = self.encoder.time(rows, timestep, &sample)?;
        let context = context.to_dtype(dtype)?;
        let stem = self.encoder.stem(&sample, Some(embedded))?;
        let (x, skips) = self
            .encoder
            .encode(stem, &temb, &context, slicing, &|| {})?;
        let scale = scale.to_dtype(dtype)?;
        let finish = |t: Tensor| -> candle_core::Result<Tensor> {
            let t = if self.json.global_pool_conditions {
                // The UNet adds residuals of its own shape.
                t.mean_keepdim(2)?
                    .mean_keepdim(3)?
                    .broadcast_as(t.shape())?
            } else {
                t
            };
            t.broadcast_mul(&scale)
        };
        let down = skips
            .iter()
            .zip(&self.zero_down)
            .map(|(s, conv)| finish(conv.forward(s)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mid = finish(self.zero_mid.forward(&x)?)?;
        Ok(ControlResiduals { down, mid })
    }
}

#[cfg(test)]
mod tests;
