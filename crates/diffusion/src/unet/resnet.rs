//! [`Resnet`]: diffusers' `ResnetBlock2D` as candle-transformers builds it
//! (same weights, same names, same arithmetic), on this crate's [`Conv`]
//! so that its two 3x3 convolutions, most of a UNet's work, run as whole
//! products on the CPU.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, GroupNorm, Linear, VarBuilder};

use super::conv::Conv;

/// The sizes of one ResNet block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResnetShape {
    /// Input channels.
    pub(crate) from: usize,
    /// Output channels.
    pub(crate) to: usize,
    /// Width of the time embedding.
    pub(crate) time_dim: usize,
    /// Groups of both group norms.
    pub(crate) groups: usize,
    /// Epsilon of both group norms.
    pub(crate) eps: f64,
    /// The output is divided by this.
    pub(crate) scale: f64,
}

/// Norm, silu, 3x3 convolution, plus the projected time embedding; norm,
/// silu, 3x3 convolution; plus the input (through a 1x1 convolution when
/// the widths differ), divided by the output scale.
#[derive(Debug)]
pub(crate) struct Resnet {
    norm1: GroupNorm,
    conv1: Conv,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv,
    shortcut: Option<Conv>,
    scale: f64,
}

impl Resnet {
    /// Reads a block of `shape` from `vb` (`norm1`, `conv1`,
    /// `time_emb_proj`, `norm2`, `conv2`, and `conv_shortcut` when the
    /// widths differ).
    pub(crate) fn new(vb: VarBuilder<'_>, shape: ResnetShape) -> Result<Self> {
        let ResnetShape { from, to, .. } = shape;
        let same = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let norm =
            |channels, name| candle_nn::group_norm(shape.groups, channels, shape.eps, vb.pp(name));
        let shortcut = (from != to)
            .then(|| Conv::new(from, to, 1, Conv2dConfig::default(), vb.pp("conv_shortcut")))
            .transpose()?;
        Ok(Self {
            norm1: norm(from, "norm1")?,
            conv1: Conv::new(from, to, 3, same, vb.pp("conv1"))?,
            time_emb_proj: candle_nn::linear(shape.time_dim, to, vb.pp("time_emb_proj"))?,
            norm2: norm(to, "norm2")?,
            conv2: Conv::new(to, to, 3, same, vb.pp("conv2"))?,
            shortcut,
            scale: shape.scale,
        })
    }

    /// The block over `xs` with time embedding `temb`.
    pub(crate) fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let shortcut = match &self.shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        let h = self
            .conv1
            .forward(&candle_nn::ops::silu(&self.norm1.forward(xs)?)?)?;
        let h = match temb {
            Some(temb) => self
                .time_emb_proj
                .forward(&candle_nn::ops::silu(temb)?)?
                .unsqueeze(D::Minus1)?
                .unsqueeze(D::Minus1)?
                .broadcast_add(&h)?,
            None => h,
        };
        let h = self.norm2.forward(&h)?;
        let h = self.conv2.forward(&candle_nn::ops::silu(&h)?)?;
        (shortcut + h)? / self.scale
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use candle_transformers::models::stable_diffusion::resnet::{
        ResnetBlock2D, ResnetBlock2DConfig,
    };

    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn matches_candle_transformers_resnet_block() {
        let dev = Device::Cpu;
        for (from, to, scale) in [(8, 8, 1.0), (8, 16, 1.0), (16, 8, 2.0)] {
            let vars = VarMap::new();
            let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
            let shape = ResnetShape {
                from,
                to,
                time_dim: 12,
                groups: 4,
                eps: 1e-5,
                scale,
            };
            let ours = Resnet::new(vb.clone(), shape).unwrap();
            let config = ResnetBlock2DConfig {
                out_channels: Some(to),
                temb_channels: Some(12),
                groups: 4,
                eps: 1e-5,
                output_scale_factor: scale,
                ..Default::default()
            };
            let theirs = ResnetBlock2D::new(vb, from, config).unwrap();
            let x = Tensor::randn(0f32, 1.0, (3, from, 6, 5), &dev).unwrap();
            let temb = Tensor::randn(0f32, 1.0, (3, 12), &dev).unwrap();
            for t in [Some(&temb), None] {
                let want = theirs.forward(&x, t).unwrap();
                let got = ours.forward(&x, t).unwrap();
                let worst = (got - want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(worst < 1e-5, "{from}->{to}: {worst}");
            }
        }
    }
}
