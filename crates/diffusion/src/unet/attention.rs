//! The UNet's transformer: multi-head attention that can run in slices,
//! the GEGLU feed-forward, the transformer block and the spatial
//! transformer (diffusers' `Attention`, `FeedForward`,
//! `BasicTransformerBlock` and `Transformer2DModel`), under diffusers'
//! weight names.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, GroupNorm, LayerNorm, Linear, VarBuilder};

use crate::memory::AttentionSlicing;

/// Multi-head attention (self-attention when no context is given).
#[derive(Debug)]
pub(crate) struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn new(
        vb: VarBuilder<'_>,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let context_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
        })
    }

    /// `[b, seq, heads x d]` to `[b x heads, seq, d]`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, seq, dim) = xs.dims3()?;
        xs.reshape((b, seq, self.heads, dim / self.heads))?
            .transpose(1, 2)?
            .reshape((b * self.heads, seq, dim / self.heads))
    }

    /// `[b x heads, seq, d]` to `[b, seq, heads x d]`.
    fn merge_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (bh, seq, d) = xs.dims3()?;
        xs.reshape((bh / self.heads, self.heads, seq, d))?
            .transpose(1, 2)?
            .reshape((bh / self.heads, seq, self.heads * d))
    }

    /// Rows of `b x heads` attended at once under `slicing` (all of them
    /// when slicing is off).
    pub(super) fn slice_rows(&self, slicing: Option<AttentionSlicing>, rows: usize) -> usize {
        let slice = match slicing {
            None => rows,
            Some(AttentionSlicing::Auto) => (self.heads / 2).max(1),
            Some(AttentionSlicing::Max) => 1,
            Some(AttentionSlicing::Size(n)) => n.max(1),
        };
        slice.min(rows)
    }

    /// softmax(q k^T / sqrt(d)) v over `[rows, seq, d]`, in f32, `slice`
    /// rows at a time: the score matrix, the largest tensor of the UNet,
    /// then exists for `slice` rows only.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, slice: usize) -> Result<Tensor> {
        let dtype = q.dtype();
        let (q, k, v) = (
            q.to_dtype(DType::F32)?,
            k.to_dtype(DType::F32)?,
            v.to_dtype(DType::F32)?,
        );
        let rows = q.dim(0)?;
        let one = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
            let scores = q.matmul(&(k.t()? * self.scale)?)?;
            candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
        };
        let out = if slice >= rows {
            one(&q, &k, &v)?
        } else {
            let mut parts = Vec::with_capacity(rows.div_ceil(slice));
            let mut start = 0;
            while start < rows {
                let n = slice.min(rows - start);
                parts.push(one(
                    &q.narrow(0, start, n)?,
                    &k.narrow(0, start, n)?,
                    &v.narrow(0, start, n)?,
                )?);
                start += n;
            }
            Tensor::cat(&parts, 0)?
        };
        out.to_dtype(dtype)
    }

    fn forward(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        slicing: Option<AttentionSlicing>,
    ) -> Result<Tensor> {
        let context = context.unwrap_or(xs).contiguous()?;
        let q = self.split_heads(&self.to_q.forward(xs)?)?;
        let k = self.split_heads(&self.to_k.forward(&context)?)?;
        let v = self.split_heads(&self.to_v.forward(&context)?)?;
        let slice = self.slice_rows(slicing, q.dim(0)?);
        let out = self.attend(&q, &k, &v, slice)?;
        self.to_out.forward(&self.merge_heads(&out)?)
    }
}

/// GEGLU projection and the output linear layer, four times wider inside.
#[derive(Debug)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder<'_>, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        let vb = vb.pp("net");
        Ok(Self {
            proj: candle_nn::linear(dim, 2 * inner, vb.pp("0.proj"))?,
            out: candle_nn::linear(inner, dim, vb.pp("2"))?,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let both = self.proj.forward(xs)?;
        let half = both.dim(candle_core::D::Minus1)? / 2;
        let hidden = both.narrow(candle_core::D::Minus1, 0, half)?;
        let gate = both.narrow(candle_core::D::Minus1, half, half)?;
        // diffusers' GEGLU uses the exact (erf) GELU.
        self.out.forward(&(hidden * gate.gelu_erf()?)?)
    }
}

/// Self-attention, cross-attention on the text, feed-forward; each after a
/// layer norm and with a residual connection.
#[derive(Debug)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl TransformerBlock {
    fn new(
        vb: VarBuilder<'_>,
        dim: usize,
        heads: usize,
        head_dim: usize,
        context_dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, None, heads, head_dim)?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, Some(context_dim), heads, head_dim)?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        context: &Tensor,
        slicing: Option<AttentionSlicing>,
    ) -> Result<Tensor> {
        let xs = (self
            .attn1
            .forward(&self.norm1.forward(xs)?, None, slicing)?
            + xs)?;
        let xs = (self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(context), slicing)?
            + xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

/// The projection in and out of a spatial transformer: a 1x1 convolution
/// (SD 1.x) or a linear layer (`use_linear_projection`, SD 2.x).
#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(vb: VarBuilder<'_>, linear: bool, from: usize, to: usize) -> Result<Self> {
        Ok(if linear {
            Self::Linear(candle_nn::linear(from, to, vb)?)
        } else {
            Self::Conv(candle_nn::conv2d(from, to, 1, Default::default(), vb)?)
        })
    }
}

/// Shape of a spatial transformer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransformerShape {
    /// Transformer blocks in it.
    pub(crate) depth: usize,
    /// Groups of its input group norm.
    pub(crate) groups: usize,
    /// Width of the text conditioning.
    pub(crate) context_dim: usize,
    /// Linear projections instead of 1x1 convolutions.
    pub(crate) linear_projection: bool,
    /// Attention heads.
    pub(crate) heads: usize,
}

/// Attention over the pixels of a feature map: group norm, projection to
/// tokens, transformer blocks, projection back, residual.
#[derive(Debug)]
pub(crate) struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    /// Builds one over `channels`-wide feature maps (`channels / heads` per
    /// head).
    pub(crate) fn new(
        vb: VarBuilder<'_>,
        channels: usize,
        shape: TransformerShape,
    ) -> Result<Self> {
        let head_dim = channels / shape.heads;
        let inner = shape.heads * head_dim;
        let vb_blocks = vb.pp("transformer_blocks");
        let blocks = (0..shape.depth)
            .map(|i| {
                TransformerBlock::new(
                    vb_blocks.pp(i),
                    inner,
                    shape.heads,
                    head_dim,
                    shape.context_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: candle_nn::group_norm(shape.groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: Projection::new(vb.pp("proj_in"), shape.linear_projection, channels, inner)?,
            blocks,
            proj_out: Projection::new(vb.pp("proj_out"), shape.linear_projection, inner, channels)?,
        })
    }

    /// The first block's self-attention (for tests).
    #[cfg(test)]
    pub(super) fn first_attention(&self) -> Option<&Attention> {
        self.blocks.first().map(|b| &b.attn1)
    }

    /// `xs` `[b, c, h, w]`, `context` `[b, seq, context_dim]`.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        context: &Tensor,
        slicing: Option<AttentionSlicing>,
    ) -> Result<Tensor> {
        let (b, _, h, w) = xs.dims4()?;
        let normed = self.norm.forward(xs)?;
        // [b, c, h, w] -> [b, h x w, c]
        let tokens = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(1)?;
            t.transpose(1, 2)?.t()?.reshape((b, h * w, c))
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => tokens(&conv.forward(&normed)?)?,
            Projection::Linear(linear) => linear.forward(&tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context, slicing)?;
        }
        // [b, h x w, c] -> [b, c, h, w]
        let map = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(2)?;
            t.reshape((b, h, w, c))?.t()?.transpose(1, 2)
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&map(&tokens)?)?,
            Projection::Linear(linear) => map(&linear.forward(&tokens)?)?,
        };
        out + xs
    }
}
