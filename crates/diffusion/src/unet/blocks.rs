//! The UNet's down, mid and up blocks (diffusers' `DownBlock2D`,
//! `CrossAttnDownBlock2D`, `UNetMidBlock2DCrossAttn`, `UpBlock2D` and
//! `CrossAttnUpBlock2D`), built on this crate's ResNet block and spatial
//! transformer and candle-transformers' public resamplers.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig;
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownBlock2D, DownBlock2DConfig, UpBlock2D, UpBlock2DConfig,
};

use super::attention::{SpatialTransformer, TransformerShape};
use super::resnet::{Resnet, ResnetShape};
use crate::memory::AttentionSlicing;

/// What every block shares: the ResNets' norm and the time embedding's
/// width.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockCommon {
    /// Groups of every group norm.
    pub(crate) groups: usize,
    /// Epsilon of the ResNets' group norms.
    pub(crate) eps: f64,
    /// Width of the time embedding.
    pub(crate) time_dim: usize,
}

impl BlockCommon {
    /// What the blocks of `config` share (the time embedding is four
    /// times the first block's width).
    pub(crate) fn of(config: &UNet2DConditionModelConfig) -> Self {
        Self {
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            time_dim: 4 * config.blocks[0].out_channels,
        }
    }

    fn resnet(&self, vb: VarBuilder<'_>, from: usize, to: usize, scale: f64) -> Result<Resnet> {
        let shape = ResnetShape {
            from,
            to,
            time_dim: self.time_dim,
            groups: self.groups,
            eps: self.eps,
            scale,
        };
        Resnet::new(vb, shape)
    }
}

/// Builds `count` spatial transformers (none without `shape`).
fn transformers(
    vb: VarBuilder<'_>,
    count: usize,
    channels: usize,
    shape: Option<TransformerShape>,
) -> Result<Vec<SpatialTransformer>> {
    let Some(shape) = shape else {
        return Ok(Vec::new());
    };
    let vb = vb.pp("attentions");
    (0..count)
        .map(|i| SpatialTransformer::new(vb.pp(i), channels, shape))
        .collect()
}

/// ResNets, each followed by a spatial transformer in a cross-attention
/// block, then an optional strided-convolution downsampler. Every output
/// is kept for the up path's skip connections.
#[derive(Debug)]
pub(crate) struct DownBlock {
    resnets: Vec<Resnet>,
    attentions: Vec<SpatialTransformer>,
    /// candle's `DownBlock2D` with no ResNets: only its downsampler.
    down: Option<DownBlock2D>,
}

impl DownBlock {
    /// `attention`: the transformers' shape in a cross-attention block.
    pub(crate) fn new(
        vb: VarBuilder<'_>,
        common: BlockCommon,
        (from, to): (usize, usize),
        layers: usize,
        attention: Option<TransformerShape>,
        downsample: Option<usize>,
    ) -> Result<Self> {
        let vb_res = vb.pp("resnets");
        let resnets = (0..layers)
            .map(|i| common.resnet(vb_res.pp(i), if i == 0 { from } else { to }, to, 1.0))
            .collect::<Result<Vec<_>>>()?;
        let attentions = transformers(vb.clone(), layers, to, attention)?;
        let down = downsample
            .map(|padding| {
                let config = DownBlock2DConfig {
                    num_layers: 0,
                    add_downsample: true,
                    downsample_padding: padding,
                    ..Default::default()
                };
                DownBlock2D::new(vb, to, to, Some(common.time_dim), config)
            })
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            down,
        })
    }

    /// The block's output and the states it leaves for the skip
    /// connections.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        slicing: Option<AttentionSlicing>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut xs = xs.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attention) = self.attentions.get(i) {
                xs = attention.forward(&xs, context, slicing)?;
            }
            states.push(xs.clone());
        }
        if let Some(down) = &self.down {
            let (next, _) = down.forward(&xs, Some(temb))?;
            states.push(next.clone());
            xs = next;
        }
        Ok((xs, states))
    }
}

/// ResNet, then (transformer, ResNet) pairs, at the lowest resolution.
#[derive(Debug)]
pub(crate) struct MidBlock {
    first: Resnet,
    pairs: Vec<(SpatialTransformer, Resnet)>,
}

impl MidBlock {
    /// One pair, as every released SD UNet has; `scale` divides the
    /// ResNets' output (`mid_block_scale_factor`).
    pub(crate) fn new(
        vb: VarBuilder<'_>,
        common: BlockCommon,
        channels: usize,
        shape: TransformerShape,
        scale: f64,
    ) -> Result<Self> {
        let vb_res = vb.pp("resnets");
        let vb_attn = vb.pp("attentions");
        Ok(Self {
            first: common.resnet(vb_res.pp(0), channels, channels, scale)?,
            pairs: vec![(
                SpatialTransformer::new(vb_attn.pp(0), channels, shape)?,
                common.resnet(vb_res.pp(1), channels, channels, scale)?,
            )],
        })
    }

    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        slicing: Option<AttentionSlicing>,
    ) -> Result<Tensor> {
        let mut xs = self.first.forward(xs, Some(temb))?;
        for (attention, resnet) in &self.pairs {
            xs = resnet.forward(&attention.forward(&xs, context, slicing)?, Some(temb))?;
        }
        Ok(xs)
    }
}

/// ResNets over the input joined with the matching skip connections, each
/// followed by a spatial transformer in a cross-attention block, then an
/// optional upsampler (nearest neighbour and a 3x3 convolution).
#[derive(Debug)]
pub(crate) struct UpBlock {
    resnets: Vec<Resnet>,
    attentions: Vec<SpatialTransformer>,
    /// candle's `UpBlock2D` with no ResNets: only its upsampler.
    up: Option<UpBlock2D>,
}

/// The channel widths an up block joins.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpWidths {
    /// The matching down block's input width (its first skip).
    pub(crate) skip_in: usize,
    /// Output of the previous up block (or the mid block).
    pub(crate) previous: usize,
    /// This block's width.
    pub(crate) out: usize,
}

impl UpBlock {
    pub(crate) fn new(
        vb: VarBuilder<'_>,
        common: BlockCommon,
        widths: UpWidths,
        layers: usize,
        attention: Option<TransformerShape>,
        upsample: bool,
    ) -> Result<Self> {
        let vb_res = vb.pp("resnets");
        let resnets = (0..layers)
            .map(|i| {
                let skip = if i + 1 == layers {
                    widths.skip_in
                } else {
                    widths.out
                };
                let input = if i == 0 { widths.previous } else { widths.out };
                common.resnet(vb_res.pp(i), input + skip, widths.out, 1.0)
            })
            .collect::<Result<Vec<_>>>()?;
        let attentions = transformers(vb.clone(), layers, widths.out, attention)?;
        let up = if upsample {
            let config = UpBlock2DConfig {
                num_layers: 0,
                add_upsample: true,
                ..Default::default()
            };
            Some(UpBlock2D::new(
                vb,
                widths.out,
                widths.out,
                widths.out,
                Some(common.time_dim),
                config,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            up,
        })
    }

    /// The first transformer's first self-attention (for tests).
    #[cfg(test)]
    pub(crate) fn first_attention(&self) -> Option<&super::attention::Attention> {
        self.attentions.first()?.first_attention()
    }

    /// Skip connections it consumes.
    pub(crate) fn layers(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` holds this block's skip connections, the last one first
    /// used; `size` forces the upsampler's output size.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        (size, slicing): (Option<(usize, usize)>, Option<AttentionSlicing>),
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let joined = Tensor::cat(&[&xs, &skips[skips.len() - 1 - i]], 1)?.contiguous()?;
            xs = resnet.forward(&joined, Some(temb))?;
            if let Some(attention) = self.attentions.get(i) {
                xs = attention.forward(&xs, context, slicing)?;
            }
        }
        match &self.up {
            Some(up) => up.forward(&xs, &[], Some(temb), size),
            None => Ok(xs),
        }
    }
}
