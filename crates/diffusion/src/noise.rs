//! Seeded Gaussian noise, one generator per image.
//!
//! Noise is drawn on the host from [`SplitMix64`] and moved to the device,
//! so an image's noise depends only on its seed: the same on CPU and GPU, and
//! the same whether the image runs alone or in a batch.

use candle_core::{Device, Tensor};
use switchyard_core::SplitMix64;

use crate::error::Result;

/// Unit-variance noise of `shape` for each generator, stacked on a new
/// leading batch axis: `[generators.len(), shape...]`.
pub(crate) fn batch_noise(
    generators: &mut [SplitMix64],
    shape: &[usize],
    device: &Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut values = Vec::with_capacity(n * generators.len());
    for rng in generators.iter_mut() {
        values.extend(rng.normal_vec(n, 1.0));
    }
    let mut dims = vec![generators.len()];
    dims.extend_from_slice(shape);
    Ok(Tensor::from_vec(values, dims, device)?)
}
