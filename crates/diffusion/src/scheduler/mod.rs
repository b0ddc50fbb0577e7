//! Noise schedulers behind one small trait.
//!
//! candle-transformers' schedulers draw their ancestral noise from the
//! device's global generator, so a batched image could not reproduce the
//! same request run alone; DDPM does not fit its trait at all. These take the
//! noise from the caller (one generator per image, seeded by the request)
//! and index steps by position, so every sampler plugs into one pipeline.
//!
//! | [`SchedulerKind`] | diffusers class | noise per step |
//! |---|---|---|
//! | `Ddim` | `DDIMScheduler` (eta 0) | no |
//! | `Euler` | `EulerDiscreteScheduler` | no |
//! | `EulerAncestral` | `EulerAncestralDiscreteScheduler` | yes |
//! | `DpmPp2m` / `DpmPp2mKarras` | `DPMSolverMultistepScheduler` (DPM++ 2M, midpoint-free k-diffusion form) | no |

mod ddim;
mod sigmas;

use std::path::Path;

use candle_core::Tensor;
use serde::Deserialize;

pub use ddim::Ddim;
pub use sigmas::{DpmPp2m, Euler, EulerAncestral};

use crate::config::config_error;
use crate::error::{DiffusionError, Result};

/// One sampler's walk from noise to a clean latent.
///
/// Steps are indexed `0..timesteps().len()`; the pipeline calls
/// [`Scheduler::scale_model_input`], runs the UNet at `timesteps()[i]`, then
/// [`Scheduler::step`], for each `i` in order.
pub trait Scheduler: Send + std::fmt::Debug {
    /// The UNet timestep of each step, first to last.
    fn timesteps(&self) -> &[f64];
    /// How much the initial unit-variance noise is scaled by.
    fn init_noise_sigma(&self) -> f64;
    /// The UNet's input at step `i`.
    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor>;
    /// The latent after step `i`, from the UNet's output. `noise` (unit
    /// variance, the sample's shape) is required when
    /// [`Scheduler::needs_noise`].
    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor>;
    /// Whether [`Scheduler::step`] adds fresh noise (ancestral samplers).
    fn needs_noise(&self) -> bool {
        false
    }
    /// `original` noised to the level the walk has at step `i`
    /// (image-to-image starts there).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor>;
}

/// The samplers this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SchedulerKind {
    /// DDIM, deterministic (eta 0).
    Ddim,
    /// Euler (k-diffusion).
    Euler,
    /// Euler ancestral: adds noise every step.
    EulerAncestral,
    /// DPM++ 2M on the config's sigmas.
    DpmPp2m,
    /// DPM++ 2M on Karras sigmas.
    DpmPp2mKarras,
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise (SD 1.x, SD 2.x base).
    Epsilon,
    /// The velocity (SD 2.x 768, SD-Turbo's parent).
    V,
    /// The clean sample.
    Sample,
}

/// How the inference timesteps are spread over the training ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// `0, r, 2r, ...` plus `steps_offset` (diffusers' default).
    Leading,
    /// Counting down from the last training step (SD-Turbo).
    Trailing,
    /// Evenly from the last to the first.
    Linspace,
}

/// `scheduler/scheduler_config.json`, and the defaults diffusers applies.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    /// The diffusers class the folder names.
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
    /// First beta.
    #[serde(default = "beta_start")]
    pub beta_start: f64,
    /// Last beta.
    #[serde(default = "beta_end")]
    pub beta_end: f64,
    /// `linear`, `scaled_linear` or `squaredcos_cap_v2`.
    #[serde(default = "beta_schedule")]
    pub beta_schedule: String,
    /// Training steps.
    #[serde(default = "train_steps")]
    pub num_train_timesteps: usize,
    /// `epsilon`, `v_prediction` or `sample`.
    #[serde(default = "prediction")]
    pub prediction_type: String,
    /// `leading`, `trailing` or `linspace`.
    #[serde(default = "spacing")]
    pub timestep_spacing: String,
    /// Added to leading timesteps.
    #[serde(default)]
    pub steps_offset: usize,
    /// DDIM: the final step's "previous" alpha is 1 (else alpha 0's).
    #[serde(default = "yes")]
    pub set_alpha_to_one: bool,
    /// Euler / DPM: Karras sigmas.
    #[serde(default)]
    pub use_karras_sigmas: bool,
}

fn beta_start() -> f64 {
    0.00085
}
fn beta_end() -> f64 {
    0.012
}
fn beta_schedule() -> String {
    "scaled_linear".into()
}
fn train_steps() -> usize {
    1000
}
fn prediction() -> String {
    "epsilon".into()
}
fn spacing() -> String {
    "leading".into()
}
fn yes() -> bool {
    true
}

impl SchedulerConfig {
    /// Reads and checks a `scheduler_config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let config: Self = crate::config::read_json(path)?;
        config.prediction().map_err(|r| config_error(path, r))?;
        config.spacing().map_err(|r| config_error(path, r))?;
        config.alphas_cumprod().map_err(|r| config_error(path, r))?;
        Ok(config)
    }

    /// The sampler the folder's class maps to. Classes without their own
    /// implementation here (SD 1.5's `PNDMScheduler`, `LMSDiscreteScheduler`,
    /// ...) map to Euler, a sampler of the same noise schedule.
    pub fn default_kind(&self) -> SchedulerKind {
        match self.class_name.as_str() {
            "DDIMScheduler" => SchedulerKind::Ddim,
            "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerAncestral,
            "DPMSolverMultistepScheduler" if self.use_karras_sigmas => SchedulerKind::DpmPp2mKarras,
            "DPMSolverMultistepScheduler" => SchedulerKind::DpmPp2m,
            _ => SchedulerKind::Euler,
        }
    }

    /// A sampler of `kind` for `steps` steps.
    pub fn build(&self, kind: SchedulerKind, steps: usize) -> Result<Box<dyn Scheduler>> {
        if steps == 0 || steps > self.num_train_timesteps {
            return Err(DiffusionError::InvalidInput {
                field: "steps",
                reason: format!("{steps} is outside 1..={}", self.num_train_timesteps),
            });
        }
        let fail = |r: String| DiffusionError::Config {
            path: "scheduler_config.json".into(),
            reason: r,
        };
        let prediction = self.prediction().map_err(fail)?;
        let spacing = self.spacing().map_err(fail)?;
        let alphas = self.alphas_cumprod().map_err(fail)?;
        Ok(match kind {
            SchedulerKind::Ddim => Box::new(Ddim::new(
                alphas,
                steps,
                spacing,
                self.steps_offset,
                prediction,
                self.set_alpha_to_one,
            )),
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let table = sigmas::SigmaTable::new(
                    &alphas,
                    steps,
                    spacing,
                    self.steps_offset,
                    self.use_karras_sigmas,
                );
                if kind == SchedulerKind::Euler {
                    Box::new(Euler::new(table, prediction))
                } else {
                    Box::new(EulerAncestral::new(table, prediction))
                }
            }
            SchedulerKind::DpmPp2m | SchedulerKind::DpmPp2mKarras => {
                let karras = kind == SchedulerKind::DpmPp2mKarras || self.use_karras_sigmas;
                let table =
                    sigmas::SigmaTable::new(&alphas, steps, spacing, self.steps_offset, karras);
                Box::new(DpmPp2m::new(table, prediction))
            }
        })
    }

    fn prediction(&self) -> Result<Prediction, String> {
        match self.prediction_type.as_str() {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::V),
            "sample" => Ok(Prediction::Sample),
            other => Err(format!("unknown prediction_type {other:?}")),
        }
    }

    fn spacing(&self) -> Result<Spacing, String> {
        match self.timestep_spacing.as_str() {
            "leading" => Ok(Spacing::Leading),
            "trailing" => Ok(Spacing::Trailing),
            "linspace" => Ok(Spacing::Linspace),
            other => Err(format!("unknown timestep_spacing {other:?}")),
        }
    }

    /// `alpha_bar[t]` for every training step.
    fn alphas_cumprod(&self) -> Result<Vec<f64>, String> {
        let n = self.num_train_timesteps;
        if n < 2 {
            return Err(format!("num_train_timesteps {n} is below 2"));
        }
        let lerp = |a: f64, b: f64, i: usize| a + (b - a) * i as f64 / (n - 1) as f64;
        let betas: Vec<f64> = match self.beta_schedule.as_str() {
            "linear" => (0..n)
                .map(|i| lerp(self.beta_start, self.beta_end, i))
                .collect(),
            "scaled_linear" => (0..n)
                .map(|i| lerp(self.beta_start.sqrt(), self.beta_end.sqrt(), i).powi(2))
                .collect(),
            "squaredcos_cap_v2" => {
                let bar = |t: f64| {
                    ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - bar(t2) / bar(t1)).min(0.999)
                    })
                    .collect()
            }
            other => return Err(format!("unknown beta_schedule {other:?}")),
        };
        if betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err("betas must lie in [0, 1)".into());
        }
        let mut product = 1.0;
        Ok(betas
            .iter()
            .map(|b| {
                product *= 1.0 - b;
                product
            })
            .collect())
    }
}

/// The training timesteps `spacing` picks for `steps` steps, first to last.
pub(crate) fn spaced_timesteps(
    train: usize,
    steps: usize,
    spacing: Spacing,
    offset: usize,
) -> Vec<f64> {
    match spacing {
        Spacing::Leading => {
            let ratio = train / steps;
            (0..steps)
                .rev()
                .map(|i| ((i * ratio + offset).min(train - 1)) as f64)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = train as f64 / steps as f64;
            (0..steps)
                .map(|i| ((train as f64 - i as f64 * ratio).round() - 1.0).max(0.0))
                .collect()
        }
        Spacing::Linspace => (0..steps)
            .rev()
            .map(|i| {
                if steps == 1 {
                    0.0
                } else {
                    i as f64 * (train - 1) as f64 / (steps - 1) as f64
                }
            })
            .collect(),
    }
}

/// `x0` from the UNet output in the variance-preserving form
/// (`x = sqrt(a) x0 + sqrt(1 - a) eps`), with the noise estimate too.
pub(crate) fn vp_prediction(
    prediction: Prediction,
    output: &Tensor,
    sample: &Tensor,
    alpha_bar: f64,
) -> Result<(Tensor, Tensor)> {
    let (a, b) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
    Ok(match prediction {
        Prediction::Epsilon => {
            let x0 = ((sample - (output * b)?)? / a)?;
            (x0, output.clone())
        }
        Prediction::V => {
            let x0 = ((sample * a)? - (output * b)?)?;
            let eps = ((output * a)? + (sample * b)?)?;
            (x0, eps)
        }
        Prediction::Sample => {
            let eps = ((sample - (output * a)?)? / b)?;
            (output.clone(), eps)
        }
    })
}

#[cfg(test)]
mod tests;
