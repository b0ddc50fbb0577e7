//! LoRA adapters: reading kohya and diffusers/PEFT files, and merging them
//! into the UNet and text encoder.
//!
//! Both naming schemes are read:
//!
//! | scheme | a module's keys |
//! |---|---|
//! | kohya (sd-scripts, A1111, ComfyUI) | `lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight`, `.lora_up.weight`, `.alpha`; text encoder `lora_te_text_model_encoder_layers_0_self_attn_q_proj...` (`lora_te1_` / `lora_te2_` for SDXL's two) |
//! | diffusers / PEFT | `unet.down_blocks.0.attentions.0.proj_in.lora_A.weight`, `.lora_B.weight` (or `.lora.down.weight` / `.lora.up.weight`, and the older `...attn1.processor.to_q_lora.down.weight`); text encoder `text_encoder.text_model...` (`text_encoder_2.` for SDXL's second) |
//!
//! A module's delta is `scale x (alpha / rank) x up @ down`, reshaped to the
//! weight it targets (linear layers and 1x1 or kxk convolutions); without an
//! `.alpha` the factor is 1. Keys of neither scheme (LoHa, LoKr, DoRA
//! scales, SDXL's second text encoder) are kept in
//! [`Lora::unknown_keys`], and modules that name no weight of the model in
//! the [`LoraReport`] of [`crate::StableDiffusion::set_loras`]: nothing is
//! dropped silently.

mod merge;

pub(crate) use merge::LoraPatch;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{DiffusionError, Result};

pub use merge::LoraReport;

/// Which model a LoRA module adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraComponent {
    /// The denoising UNet.
    Unet,
    /// The CLIP text encoder.
    TextEncoder,
    /// SDXL's second text encoder (kohya `lora_te2_`, diffusers
    /// `text_encoder_2.`).
    TextEncoder2,
}

/// How a module names the layer it adapts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum LayerName {
    /// The layer's path with dots (`down_blocks.0.attentions.0.proj_in`).
    Dotted(String),
    /// kohya's path with every dot made an underscore.
    Flattened(String),
}

impl std::fmt::Display for LayerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dotted(s) | Self::Flattened(s) => f.write_str(s),
        }
    }
}

/// One adapted layer: the low-rank pair and its alpha.
#[derive(Debug, Clone)]
pub(crate) struct LoraModule {
    pub(crate) component: LoraComponent,
    pub(crate) layer: LayerName,
    /// `[rank, in, ...]`, F32 on the CPU.
    pub(crate) down: Tensor,
    /// `[out, rank, ...]`, F32 on the CPU.
    pub(crate) up: Tensor,
    pub(crate) alpha: Option<f64>,
}

impl LoraModule {
    pub(crate) fn rank(&self) -> usize {
        self.down.dims().first().copied().unwrap_or(0)
    }

    /// `alpha / rank`, or 1 without an alpha.
    pub(crate) fn factor(&self) -> f64 {
        self.alpha.map_or(1.0, |a| a / self.rank() as f64)
    }
}

/// A LoRA adapter read from a safetensors file.
#[derive(Debug, Clone)]
pub struct Lora {
    name: String,
    modules: Vec<LoraModule>,
    unknown_keys: Vec<String>,
}

/// Which part of a module a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    Alpha,
}

/// The (component, layer, part) a key names, in either scheme.
fn parse_key(key: &str) -> Option<(LoraComponent, LayerName, Part)> {
    const SUFFIXES: [(&str, Part); 7] = [
        (".lora_down.weight", Part::Down),
        (".lora_up.weight", Part::Up),
        (".lora_A.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        (".lora.down.weight", Part::Down),
        (".lora.up.weight", Part::Up),
        (".alpha", Part::Alpha),
    ];
    const LEGACY: [(&str, Part); 2] = [(".down.weight", Part::Down), (".up.weight", Part::Up)];
    let strip = |table: &[(&str, Part)]| {
        table
            .iter()
            .find_map(|(suffix, part)| key.strip_suffix(suffix).map(|stem| (stem, *part)))
    };
    let (stem, part, legacy) = match strip(&SUFFIXES) {
        Some((stem, part)) => (stem, part, false),
        None => {
            let (stem, part) = strip(&LEGACY)?;
            (stem, part, true)
        }
    };
    if let Some(rest) = stem.strip_prefix("lora_unet_") {
        return Some((LoraComponent::Unet, LayerName::Flattened(rest.into()), part));
    }
    if let Some(rest) = stem
        .strip_prefix("lora_te_")
        .or_else(|| stem.strip_prefix("lora_te1_"))
    {
        return Some((
            LoraComponent::TextEncoder,
            LayerName::Flattened(rest.into()),
            part,
        ));
    }
    if let Some(rest) = stem.strip_prefix("lora_te2_") {
        return Some((
            LoraComponent::TextEncoder2,
            LayerName::Flattened(rest.into()),
            part,
        ));
    }
    let (component, path) = if let Some(rest) = stem.strip_prefix("unet.") {
        (LoraComponent::Unet, rest)
    } else if let Some(rest) = stem.strip_prefix("text_encoder_2.") {
        (LoraComponent::TextEncoder2, rest)
    } else if let Some(rest) = stem.strip_prefix("text_encoder.") {
        (LoraComponent::TextEncoder, rest)
    } else {
        return None;
    };
    match path.split_once(".processor.") {
        Some((block, processor)) => {
            let layer = match processor {
                "to_q_lora" => "to_q",
                "to_k_lora" => "to_k",
                "to_v_lora" => "to_v",
                "to_out_lora" => "to_out.0",
                _ => return None,
            };
            Some((
                component,
                LayerName::Dotted(format!("{block}.{layer}")),
                part,
            ))
        }
        // `.down.weight` alone is only diffusers' old processor form.
        None if legacy => None,
        None => Some((component, LayerName::Dotted(path.into()), part)),
    }
}

fn lora_error(name: &str, reason: impl std::fmt::Display) -> DiffusionError {
    DiffusionError::Lora(format!("{name}: {reason}"))
}

impl Lora {
    /// Reads a LoRA safetensors file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| DiffusionError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let name = path
            .file_stem()
            .map_or_else(|| "lora".into(), |s| s.to_string_lossy().into_owned());
        Self::from_bytes(name, &bytes)
    }

    /// Reads a LoRA from the bytes of a safetensors file.
    pub fn from_bytes(name: impl Into<String>, bytes: &[u8]) -> Result<Self> {
        let name = name.into();
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| lora_error(&name, e))?;
        Self::from_tensors(name, tensors)
    }

    /// Builds a LoRA from named tensors (keys in either scheme).
    pub fn from_tensors(
        name: impl Into<String>,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<Self> {
        let name = name.into();
        type Parts = (Option<Tensor>, Option<Tensor>, Option<f64>, Vec<String>);
        let mut grouped: BTreeMap<(LoraComponent, LayerName), Parts> = BTreeMap::new();
        let mut unknown_keys = Vec::new();
        for (key, tensor) in tensors {
            let Some((component, layer, part)) = parse_key(&key) else {
                unknown_keys.push(key);
                continue;
            };
            let entry = grouped.entry((component, layer)).or_default();
            entry.3.push(key.clone());
            match part {
                Part::Down => entry.0 = Some(tensor.to_dtype(DType::F32)?),
                Part::Up => entry.1 = Some(tensor.to_dtype(DType::F32)?),
                Part::Alpha => {
                    let values = tensor
                        .to_dtype(DType::F64)?
                        .flatten_all()?
                        .to_vec1::<f64>()?;
                    match values.as_slice() {
                        [alpha] if alpha.is_finite() => entry.2 = Some(*alpha),
                        _ => {
                            return Err(lora_error(
                                &name,
                                format!("{key} is not one finite number"),
                            ));
                        }
                    }
                }
            }
        }
        let mut modules = Vec::new();
        for ((component, layer), (down, up, alpha, keys)) in grouped {
            let (Some(down), Some(up)) = (down, up) else {
                // Half a pair cannot be applied: report its keys.
                unknown_keys.extend(keys);
                continue;
            };
            let rank = down.dims().first().copied().unwrap_or(0);
            if rank == 0 || down.rank() < 2 || up.rank() < 2 || up.dims()[1] != rank {
                return Err(lora_error(
                    &name,
                    format!(
                        "{layer}: down {:?} and up {:?} are not a low-rank pair",
                        down.dims(),
                        up.dims()
                    ),
                ));
            }
            if up.dims()[2..].iter().any(|&d| d != 1) {
                return Err(lora_error(
                    &name,
                    format!(
                        "{layer}: an up matrix of shape {:?} (only 1x1 up kernels)",
                        up.dims()
                    ),
                ));
            }
            modules.push(LoraModule {
                component,
                layer,
                down,
                up,
                alpha,
            });
        }
        unknown_keys.sort();
        Ok(Self {
            name,
            modules,
            unknown_keys,
        })
    }

    /// The adapter's name (the file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many layers it adapts.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether it adapts no layer.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Layers adapted per component.
    pub fn count(&self, component: LoraComponent) -> usize {
        self.modules
            .iter()
            .filter(|m| m.component == component)
            .count()
    }

    /// Keys the file holds that no scheme here reads (or halves of a pair),
    /// sorted.
    pub fn unknown_keys(&self) -> &[String] {
        &self.unknown_keys
    }

    pub(crate) fn modules(&self) -> &[LoraModule] {
        &self.modules
    }
}

#[cfg(test)]
mod tests;
