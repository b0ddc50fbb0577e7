//! Tiled VAE decoding with overlap blending.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::memory::VaeTiling;

/// Tile starts along a side of `len` cells: every `tile - overlap`, the
/// last one flush with the end. One tile when it fits.
pub(crate) fn tile_starts(len: usize, tiling: VaeTiling) -> Vec<usize> {
    if len <= tiling.tile {
        return vec![0];
    }
    let stride = tiling.tile - tiling.overlap;
    let mut starts: Vec<usize> = (0..)
        .map(|k| k * stride)
        .take_while(|&p| p + tiling.tile < len)
        .collect();
    starts.push(len - tiling.tile);
    starts
}

/// Blend weights along one side of a tile of `size` pixels: a ramp up over
/// the first `ramp_in` pixels and down over the last `ramp_out`, 1 between.
fn ramp(size: usize, ramp_in: usize, ramp_out: usize) -> Vec<f32> {
    (0..size)
        .map(|i| {
            let up = if ramp_in > 0 {
                (i as f32 + 0.5) / ramp_in as f32
            } else {
                1.0
            };
            let down = if ramp_out > 0 {
                (size as f32 - i as f32 - 0.5) / ramp_out as f32
            } else {
                1.0
            };
            up.min(down).min(1.0)
        })
        .collect()
}

/// Decodes `latents` `[n, c, h, w]` tile by tile with `decode` (latents to
/// pixels `[n, 3, t*s, t*s]`), blending overlaps with linear ramps towards
/// each neighbour; edges of the image get no ramp. A latent that fits in
/// one tile is decoded in one call, exactly as without tiling.
pub(crate) fn decode_tiled(
    latents: &Tensor,
    tiling: VaeTiling,
    scale: usize,
    decode: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    tiling.validate()?;
    let (n, _, h, w) = latents.dims4()?;
    let (ys, xs) = (tile_starts(h, tiling), tile_starts(w, tiling));
    if ys.len() == 1 && xs.len() == 1 {
        return decode(latents);
    }
    let device = latents.device();
    let (big_h, big_w) = (h * scale, w * scale);
    let mut sum = Tensor::zeros((n, 3, big_h, big_w), DType::F32, device)?;
    let mut weight = Tensor::zeros((1, 1, big_h, big_w), DType::F32, device)?;
    let ramp_px = tiling.overlap * scale;
    for &y in &ys {
        let th = tiling.tile.min(h);
        for &x in &xs {
            let tw = tiling.tile.min(w);
            let pixels = decode(&latents.narrow(2, y, th)?.narrow(3, x, tw)?)?;
            let ramp_y = ramp(th * scale, edge(y > 0, ramp_px), edge(y + th < h, ramp_px));
            let ramp_x = ramp(tw * scale, edge(x > 0, ramp_px), edge(x + tw < w, ramp_px));
            let mask = outer(&ramp_y, &ramp_x, device)?;
            let at = (y * scale, x * scale);
            sum = add_at(&sum, &pixels.broadcast_mul(&mask)?, at)?;
            weight = add_at(&weight, &mask, at)?;
        }
    }
    Ok(sum.broadcast_div(&weight)?)
}

fn edge(has_neighbour: bool, ramp: usize) -> usize {
    if has_neighbour { ramp } else { 0 }
}

/// `ys x xs` as a `[1, 1, len(ys), len(xs)]` tensor.
fn outer(ys: &[f32], xs: &[f32], device: &Device) -> Result<Tensor> {
    let ys = Tensor::from_slice(ys, (ys.len(), 1), device)?;
    let xs = Tensor::from_slice(xs, (1, xs.len()), device)?;
    Ok(ys.broadcast_mul(&xs)?.unsqueeze(0)?.unsqueeze(0)?)
}

/// `base` `[n, c, H, W]` with `addend` added at pixel offset `(y, x)`.
fn add_at(base: &Tensor, addend: &Tensor, (y, x): (usize, usize)) -> Result<Tensor> {
    let (n, c, h, w) = addend.dims4()?;
    let current = base.narrow(2, y, h)?.narrow(3, x, w)?;
    let updated = (current + addend)?;
    Ok(base.slice_assign(&[0..n, 0..c, y..y + h, x..x + w], &updated)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_every_cell_with_the_overlap() {
        let tiling = VaeTiling {
            tile: 16,
            overlap: 4,
        };
        assert_eq!(tile_starts(16, tiling), [0]);
        assert_eq!(tile_starts(10, tiling), [0]);
        assert_eq!(tile_starts(32, tiling), [0, 12, 16]);
        assert_eq!(tile_starts(24, tiling), [0, 8]);
        for len in 17..200 {
            let starts = tile_starts(len, tiling);
            assert_eq!(starts[0], 0);
            assert_eq!(starts.last().copied(), Some(len - 16));
            for pair in starts.windows(2) {
                assert!(
                    pair[1] > pair[0] && pair[1] - pair[0] <= 12,
                    "{len}: {starts:?}"
                );
            }
        }
    }

    #[test]
    fn ramps_rise_and_fall_inside_zero_and_one() {
        let r = ramp(8, 4, 2);
        assert_eq!(r, [0.125, 0.375, 0.625, 0.875, 1.0, 1.0, 0.75, 0.25]);
        assert!(ramp(5, 0, 0).iter().all(|&v| v == 1.0));
    }

    #[test]
    fn blending_is_a_convex_combination() -> Result<()> {
        // Each tile "decodes" to a constant equal to its top-left start, so
        // every output pixel lies between the constants of tiles covering it.
        let latents = Tensor::zeros((1, 4, 20, 28), DType::F32, &Device::Cpu)?;
        let tiling = VaeTiling {
            tile: 12,
            overlap: 3,
        };
        let calls = std::cell::Cell::new(0.0f32);
        let out = decode_tiled(&latents, tiling, 2, |tile| {
            calls.set(calls.get() + 1.0);
            let (n, _, h, w) = tile.dims4()?;
            Ok(Tensor::full(
                calls.get(),
                (n, 3, h * 2, w * 2),
                &Device::Cpu,
            )?)
        })?;
        assert_eq!(out.dims(), [1, 3, 40, 56]);
        let tiles = (tile_starts(20, tiling).len() * tile_starts(28, tiling).len()) as f32;
        let values = out.flatten_all()?.to_vec1::<f32>()?;
        assert!(values.iter().all(|&v| (1.0..=tiles).contains(&v)));
        // The top-left corner is covered by the first tile alone.
        assert_eq!(values[0], 1.0);
        Ok(())
    }
}
