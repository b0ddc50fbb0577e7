//! The conditional UNet (diffusers' `UNet2DConditionModel`), built here
//! rather than taken whole from candle-transformers so that its attention
//! can run in slices ([`crate::AttentionSlicing`]): candle-transformers'
//! own slicing fails at run time and its transformer blocks keep their
//! attention private. It reads the same `unet/` weights under the same
//! names. Its ResNet blocks and outer convolutions are this crate's too
//! (their 3x3 convolutions run as one product per image on the CPU, see
//! [`conv`]); the resamplers and time embedding are candle-transformers'
//! public ones.

mod attention;
mod blocks;
mod conv;
mod resnet;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig;

use attention::TransformerShape;
use blocks::{BlockCommon, DownBlock, MidBlock, UpBlock, UpWidths};
use conv::Conv;

use crate::config::TextTimeShape;
use crate::memory::AttentionSlicing;

/// Residuals added to the skip connections and the mid block's output (a
/// ControlNet's), in the UNet's order.
pub(crate) type ExtraResiduals<'a> = Option<(&'a [Tensor], &'a Tensor)>;

/// The transformer shape of a block of `config` with `heads` heads and
/// `depth` transformer blocks.
fn transformer_shape(
    config: &UNet2DConditionModelConfig,
    heads: usize,
    depth: usize,
) -> TransformerShape {
    TransformerShape {
        depth,
        groups: config.norm_num_groups,
        context_dim: config.cross_attention_dim,
        linear_projection: config.use_linear_projection,
        heads,
    }
}

/// The blocks every UNet-shaped encoder shares: `conv_in`, the time
/// embedding, the down blocks and the mid block (a ControlNet copies them).
#[derive(Debug)]
pub(crate) struct Encoder {
    conv_in: Conv,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
}

impl Encoder {
    /// Builds the encoder of `config` reading `in_channels` latent
    /// channels.
    pub(crate) fn new(
        vb: &VarBuilder<'_>,
        in_channels: usize,
        config: &UNet2DConditionModelConfig,
    ) -> Result<Self> {
        let blocks = &config.blocks;
        let first = blocks[0].out_channels;
        let common = BlockCommon::of(config);
        let same = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let vb_down = vb.pp("down_blocks");
        let down_blocks = blocks
            .iter()
            .enumerate()
            .map(|(i, block)| {
                let from = if i == 0 {
                    first
                } else {
                    blocks[i - 1].out_channels
                };
                let attention = block
                    .use_cross_attn
                    .map(|depth| transformer_shape(config, block.attention_head_dim, depth));
                let last = i + 1 == blocks.len();
                DownBlock::new(
                    vb_down.pp(i),
                    common,
                    (from, block.out_channels),
                    config.layers_per_block,
                    attention,
                    (!last).then_some(config.downsample_padding),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let last = blocks[blocks.len() - 1];
        let mid_shape = transformer_shape(
            config,
            last.attention_head_dim,
            last.use_cross_attn.unwrap_or(1),
        );
        Ok(Self {
            conv_in: Conv::new(in_channels, first, 3, same, vb.pp("conv_in"))?,
            time_proj: Timesteps::new(first, config.flip_sin_to_cos, config.freq_shift),
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), first, 4 * first)?,
            down_blocks,
            mid_block: MidBlock::new(
                vb.pp("mid_block"),
                common,
                last.out_channels,
                mid_shape,
                config.mid_block_scale_factor,
            )?,
        })
    }

    /// The time embedding of `timestep` for `rows` rows, in `like`'s dtype.
    pub(crate) fn time(&self, rows: usize, timestep: f64, like: &Tensor) -> Result<Tensor> {
        let t = (Tensor::ones(rows, like.dtype(), like.device())? * timestep)?;
        self.time_embedding.forward(&self.time_proj.forward(&t)?)
    }

    /// `conv_in` of `xs`, plus `added` (a ControlNet's condition) if any.
    pub(crate) fn stem(&self, xs: &Tensor, added: Option<&Tensor>) -> Result<Tensor> {
        let x = self.conv_in.forward(xs)?;
        match added {
            Some(a) => x + a,
            None => Ok(x),
        }
    }

    /// Runs the down blocks and the mid block from the stem's output: the
    /// mid block's output and every skip connection (the stem's first).
    pub(crate) fn encode(
        &self,
        stem: Tensor,
        temb: &Tensor,
        context: &Tensor,
        slicing: Option<AttentionSlicing>,
        pause: &dyn Fn(),
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut skips = vec![stem.clone()];
        let mut x = stem;
        for block in &self.down_blocks {
            pause();
            let (next, states) = block.forward(&x, temb, context, slicing)?;
            skips.extend(states);
            x = next;
        }
        pause();
        Ok((self.mid_block.forward(&x, temb, context, slicing)?, skips))
    }
}

/// SDXL's added conditioning for one UNet batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TextTimeInputs<'a> {
    /// Pooled text embeddings `[b, pooled_dim]`.
    pub(crate) pooled: &'a Tensor,
    /// Time ids `[b, 6]`: original height and width, crop top and left,
    /// target height and width.
    pub(crate) time_ids: &'a Tensor,
}

/// SDXL's `add_time_proj` and `add_embedding`: the time ids' sinusoidal
/// embeddings joined to the pooled text, projected to the time embedding's
/// width and added to it.
#[derive(Debug)]
struct TextTimeEmbedding {
    time_proj: Timesteps,
    embedding: TimestepEmbedding,
    shape: TextTimeShape,
}

impl TextTimeEmbedding {
    fn forward(&self, inputs: TextTimeInputs<'_>, like: &Tensor) -> Result<Tensor> {
        let rows = like.dim(0)?;
        let pooled = inputs.pooled.to_dtype(like.dtype())?;
        if pooled.dims() != [rows, self.shape.pooled_dim()] {
            candle_core::bail!(
                "pooled text embeddings {:?}, expected [{rows}, {}]",
                pooled.dims(),
                self.shape.pooled_dim()
            );
        }
        if inputs.time_ids.dims() != [rows, 6] {
            candle_core::bail!(
                "time ids {:?}, expected [{rows}, 6]",
                inputs.time_ids.dims()
            );
        }
        let ids = inputs.time_ids.to_dtype(like.dtype())?.flatten_all()?;
        let times = self.time_proj.forward(&ids)?.reshape((rows, ()))?;
        self.embedding.forward(&Tensor::cat(&[&pooled, &times], 1)?)
    }
}

/// The denoising UNet of an SD 1.x / 2.x or SDXL pipeline.
#[derive(Debug)]
pub(crate) struct Unet {
    encoder: Encoder,
    text_time: Option<TextTimeEmbedding>,
    up_blocks: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv,
    center_input: bool,
}

impl Unet {
    /// Builds the UNet of `config` from `vb` (the `unet/` weights), with
    /// SDXL's added conditioning when `text_time` gives its shape.
    pub(crate) fn new(
        vb: VarBuilder<'_>,
        (in_channels, out_channels): (usize, usize),
        config: &UNet2DConditionModelConfig,
        text_time: Option<TextTimeShape>,
    ) -> Result<Self> {
        let encoder = Encoder::new(&vb, in_channels, config)?;
        let text_time = text_time
            .map(|shape| -> Result<_> {
                Ok(TextTimeEmbedding {
                    time_proj: Timesteps::new(
                        shape.time_dim,
                        config.flip_sin_to_cos,
                        config.freq_shift,
                    ),
                    embedding: TimestepEmbedding::new(
                        vb.pp("add_embedding"),
                        shape.input_dim,
                        4 * config.blocks[0].out_channels,
                    )?,
                    shape,
                })
            })
            .transpose()?;
        let blocks = &config.blocks;
        let n = blocks.len();
        let first = blocks[0].out_channels;
        let common = BlockCommon::of(config);
        let vb_up = vb.pp("up_blocks");
        let up_blocks = (0..n)
            .map(|i| {
                let block = blocks[n - 1 - i];
                let widths = UpWidths {
                    skip_in: blocks[if i + 1 == n { 0 } else { n - i - 2 }].out_channels,
                    previous: if i == 0 {
                        blocks[n - 1].out_channels
                    } else {
                        blocks[n - i].out_channels
                    },
                    out: block.out_channels,
                };
                let attention = block
                    .use_cross_attn
                    .map(|depth| transformer_shape(config, block.attention_head_dim, depth));
                UpBlock::new(
                    vb_up.pp(i),
                    common,
                    widths,
                    config.layers_per_block + 1,
                    attention,
                    i + 1 < n,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let same = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            encoder,
            text_time,
            up_blocks,
            norm_out: candle_nn::group_norm(
                config.norm_num_groups,
                first,
                config.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: Conv::new(first, out_channels, 3, same, vb.pp("conv_out"))?,
            center_input: config.center_input_sample,
        })
    }

    /// [`forward_pausing`](Self::forward_pausing) without pauses.
    #[cfg(test)]
    pub(crate) fn forward(
        &self,
        xs: (&Tensor, f64),
        context: &Tensor,
        added: Option<TextTimeInputs<'_>>,
        extra: ExtraResiduals<'_>,
        slicing: Option<AttentionSlicing>,
    ) -> Result<Tensor> {
        self.forward_pausing(xs, context, (added, extra), slicing, &|| {})
    }

    /// The predicted noise for `xs` `[b, in_channels, h, w]` at `timestep`
    /// conditioned on `context` `[b, seq, dim]` (and, for SDXL, on
    /// `added`), with a ControlNet's `extra` residuals added and attention
    /// run in slices under `slicing`. `pause` runs before each down block,
    /// the mid block and each up block; it may block, to let more urgent
    /// work on the device go first in the middle of a step.
    pub(crate) fn forward_pausing(
        &self,
        (xs, timestep): (&Tensor, f64),
        context: &Tensor,
        (added, extra): (Option<TextTimeInputs<'_>>, ExtraResiduals<'_>),
        slicing: Option<AttentionSlicing>,
        pause: &dyn Fn(),
    ) -> Result<Tensor> {
        let (rows, _, height, width) = xs.dims4()?;
        let n = self.up_blocks.len();
        let factor = 1usize << (n - 1);
        let odd_size = height % factor != 0 || width % factor != 0;
        let xs = if self.center_input {
            ((xs * 2.0)? - 1.0)?
        } else {
            xs.clone()
        };
        let mut temb = self.encoder.time(rows, timestep, &xs)?;
        match (&self.text_time, added) {
            (Some(embedding), Some(inputs)) => temb = (temb + embedding.forward(inputs, &xs)?)?,
            (None, None) => {}
            (Some(_), None) => {
                candle_core::bail!("this SDXL UNet needs pooled text embeddings and time ids")
            }
            (None, Some(_)) => {
                candle_core::bail!("pooled text embeddings and time ids given to a non-SDXL UNet")
            }
        }
        let stem = self.encoder.stem(&xs, None)?;
        let (mut x, mut skips) = self.encoder.encode(stem, &temb, context, slicing, pause)?;
        if let Some((down, mid)) = extra {
            skips = skips
                .iter()
                .zip(down)
                .map(|(s, r)| s + r)
                .collect::<Result<Vec<_>>>()?;
            x = (mid + x)?;
        }
        for (i, block) in self.up_blocks.iter().enumerate() {
            let own = skips.split_off(skips.len() - block.layers());
            let size = match skips.last() {
                Some(next) if i + 1 < n && odd_size => {
                    let (_, _, h, w) = next.dims4()?;
                    Some((h, w))
                }
                _ => None,
            };
            pause();
            x = block.forward(&x, &own, &temb, context, (size, slicing))?;
        }
        let x = candle_nn::ops::silu(&self.norm_out.forward(&x)?)?;
        self.conv_out.forward(&x)
    }
}

#[cfg(test)]
mod tests;
