//! Samplers on the noise-level (sigma) form of k-diffusion: Euler, Euler
//! ancestral and DPM++ 2M. Latents live at `x = x0 + sigma * noise`; the UNet
//! sees them scaled by `1 / sqrt(sigma^2 + 1)`.

use candle_core::Tensor;

use super::{Prediction, Scheduler, Spacing, spaced_timesteps};
use crate::error::{DiffusionError, Result};

/// The per-step noise levels (plus a final 0) and their UNet timesteps.
#[derive(Debug, Clone)]
pub(crate) struct SigmaTable {
    sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    init_noise_sigma: f64,
}

impl SigmaTable {
    /// Sigmas at the spaced timesteps, or Karras et al.'s (rho 7) between
    /// the same end points when `karras`.
    pub(crate) fn new(
        alphas_cumprod: &[f64],
        steps: usize,
        spacing: Spacing,
        offset: usize,
        karras: bool,
    ) -> Self {
        let all: Vec<f64> = alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect();
        let mut timesteps = spaced_timesteps(all.len(), steps, spacing, offset);
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interpolate(&all, t)).collect();
        if karras {
            let rho = 7.0;
            let (max, min) = (sigmas[0], sigmas[steps - 1]);
            let (max_inv, min_inv) = (max.powf(1.0 / rho), min.powf(1.0 / rho));
            sigmas = (0..steps)
                .map(|i| {
                    let ramp = if steps == 1 {
                        0.0
                    } else {
                        i as f64 / (steps - 1) as f64
                    };
                    (max_inv + ramp * (min_inv - max_inv)).powf(rho)
                })
                .collect();
            timesteps = sigmas.iter().map(|&s| sigma_to_t(&all, s)).collect();
        }
        let max = sigmas.iter().copied().fold(0.0, f64::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => max,
            Spacing::Leading => (max * max + 1.0).sqrt(),
        };
        sigmas.push(0.0);
        Self {
            sigmas,
            timesteps,
            init_noise_sigma,
        }
    }

    fn scale_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        let s = self.sigmas[i];
        Ok((sample / (s * s + 1.0).sqrt())?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        Ok((original + (noise * self.sigmas[i])?)?)
    }

    /// The clean-latent estimate at step `i`.
    fn x0(
        &self,
        prediction: Prediction,
        output: &Tensor,
        sample: &Tensor,
        i: usize,
    ) -> Result<Tensor> {
        let s = self.sigmas[i];
        Ok(match prediction {
            Prediction::Epsilon => (sample - (output * s)?)?,
            Prediction::V => {
                let c = s * s + 1.0;
                ((output * (-s / c.sqrt()))? + (sample / c)?)?
            }
            Prediction::Sample => output.clone(),
        })
    }
}

/// Linear interpolation of `table` (indexed by training step) at `t`.
fn interpolate(table: &[f64], t: f64) -> f64 {
    let t = t.clamp(0.0, (table.len() - 1) as f64);
    let lo = t.floor() as usize;
    let hi = (lo + 1).min(table.len() - 1);
    let w = t - lo as f64;
    table[lo] * (1.0 - w) + table[hi] * w
}

/// The (fractional) training step whose sigma is `sigma`, interpolating
/// log-sigmas as diffusers does.
fn sigma_to_t(all: &[f64], sigma: f64) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let logs: Vec<f64> = all.iter().map(|s| s.ln()).collect();
    let last = logs.len() - 1;
    let lo = logs
        .iter()
        .rposition(|&l| l <= log_sigma)
        .unwrap_or(0)
        .min(last - 1);
    let (low, high) = (logs[lo], logs[lo + 1]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * lo as f64 + w * (lo + 1) as f64
}

macro_rules! sigma_scheduler_common {
    () => {
        fn timesteps(&self) -> &[f64] {
            &self.table.timesteps
        }

        fn init_noise_sigma(&self) -> f64 {
            self.table.init_noise_sigma
        }

        fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
            self.table.scale_input(sample, i)
        }

        fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
            self.table.add_noise(original, noise, i)
        }
    };
}

/// Euler's method on the probability-flow ODE.
#[derive(Debug, Clone)]
pub struct Euler {
    table: SigmaTable,
    prediction: Prediction,
}

impl Euler {
    pub(crate) fn new(table: SigmaTable, prediction: Prediction) -> Self {
        Self { table, prediction }
    }
}

impl Scheduler for Euler {
    sigma_scheduler_common!();

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        _: Option<&Tensor>,
    ) -> Result<Tensor> {
        let x0 = self.table.x0(self.prediction, output, sample, i)?;
        let (s, next) = (self.table.sigmas[i], self.table.sigmas[i + 1]);
        let derivative = ((sample - x0)? / s)?;
        Ok((sample + (derivative * (next - s))?)?)
    }
}

/// Euler ancestral: steps down past the next level and adds fresh noise
/// back up to it.
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    table: SigmaTable,
    prediction: Prediction,
}

impl EulerAncestral {
    pub(crate) fn new(table: SigmaTable, prediction: Prediction) -> Self {
        Self { table, prediction }
    }
}

impl Scheduler for EulerAncestral {
    sigma_scheduler_common!();

    fn needs_noise(&self) -> bool {
        true
    }

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let noise = noise
            .ok_or_else(|| DiffusionError::Model("an ancestral step needs its noise".into()))?;
        let x0 = self.table.x0(self.prediction, output, sample, i)?;
        let (s, next) = (self.table.sigmas[i], self.table.sigmas[i + 1]);
        let up = (next * next * (s * s - next * next) / (s * s))
            .max(0.0)
            .sqrt();
        let down = (next * next - up * up).max(0.0).sqrt();
        let derivative = ((sample - x0)? / s)?;
        let moved = (sample + (derivative * (down - s))?)?;
        Ok((moved + (noise * up)?)?)
    }
}

/// DPM-Solver++ (2M): second order from the previous step's estimate, first
/// order on the first and last steps.
#[derive(Debug, Clone)]
pub struct DpmPp2m {
    table: SigmaTable,
    prediction: Prediction,
    previous: Option<Tensor>,
}

impl DpmPp2m {
    pub(crate) fn new(table: SigmaTable, prediction: Prediction) -> Self {
        Self {
            table,
            prediction,
            previous: None,
        }
    }
}

impl Scheduler for DpmPp2m {
    sigma_scheduler_common!();

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        _: Option<&Tensor>,
    ) -> Result<Tensor> {
        let x0 = self.table.x0(self.prediction, output, sample, i)?;
        let (s, next) = (self.table.sigmas[i], self.table.sigmas[i + 1]);
        if next == 0.0 {
            self.previous = None;
            return Ok(x0);
        }
        let lambda = |sigma: f64| -sigma.ln();
        let h = lambda(next) - lambda(s);
        let denoised = match (&self.previous, i.checked_sub(1)) {
            (Some(previous), Some(p)) => {
                let r = (lambda(s) - lambda(self.table.sigmas[p])) / h;
                ((&x0 * (1.0 + 1.0 / (2.0 * r)))? - (previous * (1.0 / (2.0 * r)))?)?
            }
            _ => x0.clone(),
        };
        self.previous = Some(x0);
        Ok(((sample * (next / s))? - (denoised * (-h).exp_m1())?)?)
    }
}

#[cfg(test)]
impl SigmaTable {
    pub(crate) fn sigmas_for_tests(&self) -> &[f64] {
        &self.sigmas
    }
}
