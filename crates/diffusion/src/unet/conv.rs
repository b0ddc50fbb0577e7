//! [`Conv`]: a 2-D convolution whose f32 CPU forward is one im2col copy
//! and one matrix product per image. candle's own CPU `conv2d` multiplies
//! tiles of at most 512 output pixels per image, each a small product
//! (about 4% of this machine's f32 peak on the tiny UNet's layers); the
//! whole-image product runs 2-3x faster. Other devices, dtypes and 1x1
//! kernels (already a single product in candle) keep candle's path.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

/// Most im2col values built for one product (2 MB of f32): a chunk of
/// images whose columns fit in the caches, rather than the whole batch.
const CHUNK_VALUES: usize = 1 << 19;

/// A convolution with candle's weights (`weight`, `bias`) under the same
/// names as `candle_nn::conv2d` reads them.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    /// candle's convolution: the fallback, and the weights' owner.
    inner: Conv2d,
    /// The weight as `[out, in * k * k]`.
    flat: Tensor,
    /// Kernel side.
    k: usize,
}

impl Conv {
    /// A `k` x `k` convolution from `from` to `to` channels.
    pub(crate) fn new(
        from: usize,
        to: usize,
        k: usize,
        config: Conv2dConfig,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        Ok(Self::wrap(candle_nn::conv2d(from, to, k, config, vb)?))
    }

    /// Wraps candle's convolution.
    pub(crate) fn wrap(inner: Conv2d) -> Self {
        let w = inner.weight();
        let (to, k) = (w.dim(0).unwrap_or(0), w.dim(3).unwrap_or(0));
        let flat = w
            .reshape((to, w.elem_count() / to.max(1)))
            .unwrap_or(w.clone());
        Self { inner, flat, k }
    }

    /// Whether the im2col path takes `x`.
    fn takes(&self, x: &Tensor) -> bool {
        let c = self.inner.config();
        x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.flat.dtype() == DType::F32
            && self.flat.rank() == 2
            && self.k > 1
            && c.groups == 1
            && c.dilation == 1
            && x.rank() == 4
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.takes(x) {
            return self.inner.forward(x);
        }
        let c = self.inner.config();
        let (b, ch, h, w) = x.dims4()?;
        let (k, s, p) = (self.k, c.stride, c.padding);
        if h + 2 * p < k || w + 2 * p < k || s == 0 {
            return self.inner.forward(x);
        }
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let data = x.flatten_all()?.to_vec1::<f32>()?;
        let (rows, n) = (ch * k * k, oh * ow);
        // Images a product takes at once: their columns stay in cache.
        let chunk = (CHUNK_VALUES / (rows * n).max(1)).clamp(1, b.max(1));
        let mut parts = Vec::with_capacity(b.div_ceil(chunk));
        for (i, images) in data.chunks(chunk * ch * h * w).enumerate() {
            let m = chunk.min(b - i * chunk);
            let cols = im2col(images, [m, ch, h, w], k, s, p, [oh, ow]);
            let cols = Tensor::from_vec(cols, (m, rows, n), x.device())?;
            parts.push(self.flat.broadcast_left(m)?.matmul(&cols)?);
        }
        let out = match parts.len() {
            1 => parts.remove(0),
            _ => Tensor::cat(&parts, 0)?,
        };
        let out = out.reshape((b, self.flat.dim(0)?, oh, ow))?;
        match self.inner.bias() {
            Some(bias) => out.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?),
            None => Ok(out),
        }
    }
}

/// The columns of every image of `x` (`[b, c, h, w]`, row-major): for
/// image `i`, row `(c * k + kh) * k + kw` holds the input each output
/// pixel sees at kernel offset (`kh`, `kw`) of channel `c`, zero where that
/// falls in the padding. The rows follow the weight's `[in, k, k]` order.
fn im2col(
    x: &[f32],
    [b, ch, h, w]: [usize; 4],
    k: usize,
    s: usize,
    p: usize,
    [oh, ow]: [usize; 2],
) -> Vec<f32> {
    let n = oh * ow;
    let mut cols = vec![0f32; b * ch * k * k * n];
    let planes = x.chunks_exact(h * w);
    for (plane, rows) in planes.zip(cols.chunks_exact_mut(k * k * n)) {
        for (r, dst) in rows.chunks_exact_mut(n).enumerate() {
            let (kh, kw) = (r / k, r % k);
            for (oy, out) in dst.chunks_exact_mut(ow).enumerate() {
                let Some(iy) = (oy * s + kh).checked_sub(p).filter(|&iy| iy < h) else {
                    continue;
                };
                let src = &plane[iy * w..][..w];
                if s == 1 {
                    // ix = ox + kw - p, inside 0..w for ox in lo..hi.
                    let lo = p.saturating_sub(kw);
                    let hi = (w + p).saturating_sub(kw).min(ow);
                    if lo < hi {
                        out[lo..hi].copy_from_slice(&src[lo + kw - p..hi + kw - p]);
                    }
                } else {
                    for (ox, o) in out.iter_mut().enumerate() {
                        if let Some(&v) = (ox * s + kw).checked_sub(p).and_then(|ix| src.get(ix)) {
                            *o = v;
                        }
                    }
                }
            }
        }
    }
    cols
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_nn::VarMap;

    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn matches_candle_conv2d() {
        let dev = Device::Cpu;
        // (batch, in, out, k, stride, padding, h, w)
        let cases = [
            (1, 3, 5, 3, 1, 1, 7, 9),
            (4, 8, 6, 3, 1, 1, 16, 16),
            (2, 4, 4, 3, 2, 1, 9, 8),
            (3, 2, 3, 3, 1, 0, 5, 6),
            (2, 5, 7, 5, 1, 2, 6, 11),
            (1, 4, 4, 3, 2, 0, 8, 8),
            (2, 3, 4, 1, 1, 0, 4, 4),
            // Columns past CHUNK_VALUES: one product per image.
            (3, 16, 4, 3, 1, 1, 64, 64),
        ];
        for (b, from, to, k, stride, padding, h, w) in cases {
            let vars = VarMap::new();
            let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
            let config = Conv2dConfig {
                stride,
                padding,
                ..Default::default()
            };
            let conv = Conv::new(from, to, k, config, vb).unwrap();
            let x = Tensor::randn(0f32, 1.0, (b, from, h, w), &dev).unwrap();
            let want = conv.inner.forward(&x).unwrap();
            let got = conv.forward(&x).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want).unwrap().abs().unwrap();
            let worst = diff.max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(
                worst < 1e-5,
                "{b} {from}->{to} k{k} s{stride} p{padding}: {worst}"
            );
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn an_image_gets_the_same_values_alone_and_in_a_batch() {
        let dev = Device::Cpu;
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
        let same = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv::new(4, 6, 3, same, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 4, 8, 8), &dev).unwrap();
        let all = conv.forward(&x).unwrap();
        for i in 0..5 {
            let one = conv.forward(&x.narrow(0, i, 1).unwrap()).unwrap();
            let diff = (one - all.narrow(0, i, 1).unwrap()).unwrap().abs().unwrap();
            assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
        }
    }
}
