//! DDIM (Song et al. 2020) with eta 0: a deterministic walk.

use candle_core::Tensor;

use super::{Prediction, Scheduler, Spacing, spaced_timesteps, vp_prediction};
use crate::error::Result;

/// DDIM with eta 0, as diffusers' `DDIMScheduler`.
#[derive(Debug, Clone)]
pub struct Ddim {
    alphas_cumprod: Vec<f64>,
    timesteps: Vec<f64>,
    prediction: Prediction,
    /// The "previous" alpha of the last step.
    final_alpha: f64,
}

impl Ddim {
    /// DDIM over `alphas_cumprod` (one per training step) for `steps` steps.
    pub fn new(
        alphas_cumprod: Vec<f64>,
        steps: usize,
        spacing: Spacing,
        offset: usize,
        prediction: Prediction,
        set_alpha_to_one: bool,
    ) -> Self {
        let train = alphas_cumprod.len();
        let timesteps = spaced_timesteps(train, steps, spacing, offset)
            .into_iter()
            .map(f64::round)
            .collect();
        let final_alpha = if set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Self {
            alphas_cumprod,
            timesteps,
            prediction,
            final_alpha,
        }
    }

    fn alpha_at(&self, i: usize) -> f64 {
        self.alphas_cumprod[self.timesteps[i] as usize]
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _i: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        // The next step's level (for leading spacing the same as diffusers'
        // `t - train / steps`; for trailing and linspace it also lands the
        // last step exactly on the final alpha).
        let alpha = self.alpha_at(i);
        let prev = if i + 1 < self.timesteps.len() {
            self.alpha_at(i + 1)
        } else {
            self.final_alpha
        };
        let (x0, eps) = vp_prediction(self.prediction, output, sample, alpha)?;
        Ok(((x0 * prev.sqrt())? + (eps * (1.0 - prev).sqrt())?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        let alpha = self.alpha_at(i);
        Ok(((original * alpha.sqrt())? + (noise * (1.0 - alpha).sqrt())?)?)
    }
}
