//! Merging LoRA deltas into a rebuilt copy of the UNet and text encoder.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;

use super::{LayerName, Lora, LoraComponent, LoraModule};
use crate::error::{Result, invalid};
use crate::pipeline::StableDiffusion;
use crate::weights::{self, Patch};

/// What [`StableDiffusion::set_loras`] merged and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraReport {
    /// UNet layers that received a delta.
    pub unet_layers: usize,
    /// Text-encoder layers that received a delta.
    pub text_encoder_layers: usize,
    /// Layers of SDXL's second text encoder that received a delta.
    pub text_encoder_2_layers: usize,
    /// Modules that name no layer of this model, or whose shape does not
    /// fit the layer: `"<lora>: <layer>: <why>"`.
    pub unmatched: Vec<String>,
    /// Keys of the files that no scheme reads: `"<lora>: <key>"`.
    pub unknown_keys: Vec<String>,
}

impl LoraReport {
    /// Whether every key of every adapter was merged.
    pub fn is_complete(&self) -> bool {
        self.unmatched.is_empty() && self.unknown_keys.is_empty()
    }
}

/// The deltas to add, by the name of the weight they change.
#[derive(Default)]
pub(crate) struct LoraPatch {
    deltas: HashMap<String, Vec<(LoraModule, f64)>>,
}

impl std::fmt::Debug for LoraPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraPatch")
            .field("weights", &self.deltas.len())
            .finish()
    }
}

impl LoraPatch {
    fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }

    /// Adds `module` at `scale` to the weight called `weight`.
    pub(crate) fn add(&mut self, weight: &str, module: LoraModule, scale: f64) {
        self.deltas
            .entry(weight.to_string())
            .or_default()
            .push((module, scale));
    }
}

/// `up @ down` scaled and shaped like the weight it adds to.
pub(crate) fn delta(
    module: &LoraModule,
    scale: f64,
    shape: &[usize],
) -> candle_core::Result<Tensor> {
    let rank = module.rank();
    let up = module.up.reshape((module.up.dim(0)?, rank))?;
    let down = module.down.reshape((rank, ()))?;
    (up.matmul(&down)? * (scale * module.factor()))?.reshape(shape)
}

impl Patch for LoraPatch {
    fn touches(&self, name: &str) -> bool {
        self.deltas.contains_key(name)
    }

    fn apply(&self, name: &str, stored: &Tensor) -> candle_core::Result<Tensor> {
        let mut weight = stored.clone();
        for (module, scale) in self.deltas.get(name).into_iter().flatten() {
            let d = delta(module, *scale, stored.dims())?.to_device(stored.device())?;
            weight = (weight + d)?;
        }
        Ok(weight)
    }
}

/// The weights of one component, by name, and kohya's flattened names.
struct Layers {
    shapes: HashMap<String, Vec<usize>>,
    flattened: HashMap<String, String>,
}

impl Layers {
    fn new(shapes: HashMap<String, Vec<usize>>) -> Self {
        let flattened = shapes
            .keys()
            .filter_map(|name| name.strip_suffix(".weight"))
            .map(|layer| (layer.replace('.', "_"), format!("{layer}.weight")))
            .collect();
        Self { shapes, flattened }
    }

    /// The weight `module` adapts and its shape, or why none fits.
    fn resolve(&self, module: &LoraModule) -> Result<(String, &[usize]), String> {
        let weight = match &module.layer {
            LayerName::Dotted(path) => format!("{path}.weight"),
            LayerName::Flattened(flat) => self
                .flattened
                .get(flat)
                .cloned()
                .ok_or("no such layer in this model")?,
        };
        let shape = self
            .shapes
            .get(&weight)
            .ok_or("no such layer in this model")?;
        let out = module.up.dims()[0];
        let inputs = module.down.elem_count() / module.rank();
        if shape.first() != Some(&out) || shape.iter().product::<usize>() != out * inputs {
            return Err(format!(
                "a {out} x {inputs} delta does not fit the weight of shape {shape:?}"
            ));
        }
        Ok((weight, shape))
    }
}

impl StableDiffusion {
    /// Makes `loras` (each with its scale) the active adapters: the UNet and
    /// text encoder are rebuilt from their files with every delta merged
    /// (`W + scale x alpha / rank x up @ down`, summed over adapters).
    /// An empty list restores the original weights exactly, since they are
    /// read from the files again rather than having deltas subtracted. The
    /// swap is all or nothing: on an error the previous weights stay.
    /// While the new copy builds, both copies are in memory.
    pub fn set_loras(&mut self, loras: &[(&Lora, f64)]) -> Result<LoraReport> {
        if let Some((lora, scale)) = loras.iter().find(|(_, s)| !s.is_finite()) {
            return Err(invalid(
                "scale",
                format!("{scale} for {} is not a finite number", lora.name()),
            ));
        }
        let unet_layers = Layers::new(weights::tensor_shapes(&self.unet_source.files)?);
        let text_layers = Layers::new(weights::tensor_shapes(&self.text_source.files)?);
        let text2_layers = match &self.second {
            Some(second) => Some(Layers::new(weights::tensor_shapes(&second.source.files)?)),
            None => None,
        };
        let mut report = LoraReport::default();
        let (mut unet_patch, mut text_patch) = (LoraPatch::default(), LoraPatch::default());
        let mut text2_patch = LoraPatch::default();
        for (lora, scale) in loras {
            report.unknown_keys.extend(
                lora.unknown_keys()
                    .iter()
                    .map(|key| format!("{}: {key}", lora.name())),
            );
            for module in lora.modules() {
                let (layers, patch, count) = match module.component {
                    LoraComponent::Unet => (&unet_layers, &mut unet_patch, &mut report.unet_layers),
                    LoraComponent::TextEncoder => (
                        &text_layers,
                        &mut text_patch,
                        &mut report.text_encoder_layers,
                    ),
                    LoraComponent::TextEncoder2 => match &text2_layers {
                        Some(layers) => {
                            (layers, &mut text2_patch, &mut report.text_encoder_2_layers)
                        }
                        None => {
                            report.unmatched.push(format!(
                                "{}: {}: this pipeline has no second text encoder (SDXL's)",
                                lora.name(),
                                module.layer
                            ));
                            continue;
                        }
                    },
                };
                match layers.resolve(module) {
                    Ok((weight, _)) => {
                        *count += 1;
                        if *scale != 0.0 {
                            patch.add(&weight, module.clone(), *scale);
                        }
                    }
                    Err(why) => {
                        report
                            .unmatched
                            .push(format!("{}: {}: {why}", lora.name(), module.layer))
                    }
                }
            }
        }
        let shared = |p: LoraPatch| (!p.is_empty()).then(|| Arc::new(p));
        let (unet_patch, text_patch) = (shared(unet_patch), shared(text_patch));
        let text2_patch = shared(text2_patch);
        let as_dyn = |p: &Option<Arc<LoraPatch>>| p.clone().map(|p| p as Arc<dyn Patch>);
        let rebuild_unet = self.unet_patch.is_some() || unet_patch.is_some();
        let rebuild_text = self.text_patch.is_some() || text_patch.is_some();
        let rebuild_text2 = self.text2_patch.is_some() || text2_patch.is_some();
        let unet = if rebuild_unet {
            Some(
                self.unet_source
                    .build(self.dtype, &self.device, as_dyn(&unet_patch))?,
            )
        } else {
            None
        };
        let text = if rebuild_text {
            Some(
                self.text_source
                    .build(self.dtype, &self.text_device, as_dyn(&text_patch))?,
            )
        } else {
            None
        };
        let text2 = match &self.second {
            Some(second) if rebuild_text2 => Some(second.source.build(
                self.dtype,
                &self.text_device,
                as_dyn(&text2_patch),
            )?),
            _ => None,
        };
        if let Some(unet) = unet {
            self.unet.set(unet);
        }
        if let (Some(text2), Some(second)) = (text2, &self.second) {
            second.encoder.set(text2);
        }
        if let Some(text) = text {
            self.text_encoder.set(text);
        }
        self.unet_patch = unet_patch;
        self.text_patch = text_patch;
        self.text2_patch = text2_patch;
        Ok(report)
    }
}
