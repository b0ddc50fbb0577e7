//! Attaching ControlNets to a pipeline, and running them at a step.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use image::{DynamicImage, RgbImage};
use switchyard_image::{Filter, resize};

use super::{ControlNet, ControlResiduals};
use crate::error::{DiffusionError, Result, invalid};
use crate::offload::Resident;
use crate::pipeline::StableDiffusion;
use crate::request::DiffusionRequest;

/// A ControlNet attached to a pipeline: its weights may be released after
/// a run (see [`crate::Offload`]) and are loaded again from its folder.
#[derive(Debug)]
pub(crate) struct AttachedControlNet {
    dir: PathBuf,
    pub(crate) model: Resident<ControlNet>,
}

impl StableDiffusion {
    /// Loads the ControlNet in `dir` with the pipeline's device and dtype
    /// and attaches it as `name` (see [`StableDiffusion::attach_controlnet`]).
    pub fn load_controlnet(&mut self, name: &str, dir: &Path) -> Result<()> {
        let controlnet = ControlNet::load(dir, self.dtype, &self.device)?;
        self.attach_controlnet(name, controlnet)
    }

    /// Attaches `controlnet` under `name`, for requests whose
    /// [`crate::Control`]s name it, replacing one of the same name. It must
    /// mirror this pipeline's UNet (block widths, layers, text width, latent
    /// channels), map images to latents at the VAE's scale, and share the
    /// pipeline's dtype; otherwise nothing changes and the error says why.
    pub fn attach_controlnet(&mut self, name: &str, controlnet: ControlNet) -> Result<()> {
        if name.is_empty() {
            return Err(invalid("name", "a ControlNet needs a name"));
        }
        let unet = &self.unet_source.json.encoder;
        let mismatch = |what: String| {
            Err(DiffusionError::Config {
                path: controlnet.dir().join("config.json"),
                reason: format!("does not fit this pipeline: {what}"),
            })
        };
        if controlnet.block_out_channels() != unet.block_out_channels.as_slice()
            || controlnet.layers_per_block() != unet.layers_per_block
        {
            return mismatch(format!(
                "blocks {:?} x {} layers, the UNet's {:?} x {}",
                controlnet.block_out_channels(),
                controlnet.layers_per_block(),
                unet.block_out_channels,
                unet.layers_per_block
            ));
        }
        if controlnet.cross_attention_dim() != unet.cross_attention_dim {
            return mismatch(format!(
                "text width {}, the UNet's {}",
                controlnet.cross_attention_dim(),
                unet.cross_attention_dim
            ));
        }
        if controlnet.in_channels() != self.vae.latent_channels {
            return mismatch(format!(
                "{} input channels for {} latent channels",
                controlnet.in_channels(),
                self.vae.latent_channels
            ));
        }
        if controlnet.conditioning_scale_factor() != self.vae.scale {
            return mismatch(format!(
                "its image embedding shrinks by {}, the VAE by {}",
                controlnet.conditioning_scale_factor(),
                self.vae.scale
            ));
        }
        if controlnet.dtype() != self.dtype {
            return mismatch(format!(
                "{:?} weights in a {:?} pipeline",
                controlnet.dtype(),
                self.dtype
            ));
        }
        if !controlnet.device().same_device(&self.device) {
            return mismatch(format!(
                "weights on {:?}, the UNet on {:?}",
                controlnet.device().location(),
                self.device.location()
            ));
        }
        let attached = AttachedControlNet {
            dir: controlnet.dir().to_path_buf(),
            model: Resident::new(controlnet),
        };
        match self.controlnets.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = attached,
            None => self.controlnets.push((name.to_owned(), attached)),
        }
        Ok(())
    }

    /// Detaches the ControlNet called `name`; returns whether one was
    /// attached. Its weights go when no run uses them any more.
    pub fn detach_controlnet(&mut self, name: &str) -> bool {
        match self.controlnets.iter().position(|(n, _)| n == name) {
            Some(at) => {
                self.controlnets.remove(at);
                true
            }
            None => false,
        }
    }

    /// The names of the attached ControlNets, in attachment order.
    pub fn controlnet_names(&self) -> Vec<&str> {
        self.controlnets.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The batch's ControlNet inputs, checked: every request names the same
    /// ControlNets in the same order, and each is attached.
    pub(crate) fn control_inputs(
        &self,
        requests: &[DiffusionRequest],
        rows: &Tensor,
        guided: bool,
    ) -> Result<Vec<ControlInput>> {
        let Some(first) = requests.first() else {
            return Ok(Vec::new());
        };
        let names: Vec<&str> = first
            .params()
            .controls
            .iter()
            .map(|c| c.controlnet.as_str())
            .collect();
        for request in requests {
            let own = request
                .params()
                .controls
                .iter()
                .map(|c| c.controlnet.as_str());
            if !own.eq(names.iter().copied()) {
                return Err(invalid(
                    "controls",
                    "a batch must use the same ControlNets in the same order",
                ));
            }
        }
        let (width, height) = (first.params().width, first.params().height);
        let double = |t: Tensor| -> candle_core::Result<Tensor> {
            let t = t.index_select(rows, 0)?;
            if guided {
                Tensor::cat(&[&t, &t], 0)
            } else {
                Ok(t)
            }
        };
        names
            .iter()
            .enumerate()
            .map(|(k, &name)| {
                let Some((_, attached)) = self.controlnets.iter().find(|(n, _)| n == name) else {
                    return Err(invalid(
                        "controls",
                        format!("no ControlNet named {name:?} is attached"),
                    ));
                };
                let model = attached
                    .model
                    .get(|| ControlNet::load(&attached.dir, self.dtype, &self.device))?;
                let mut images = Vec::with_capacity(requests.len());
                let mut scales = Vec::with_capacity(requests.len());
                for request in requests {
                    let control = &request.params().controls[k];
                    images.push(control_pixels(&control.image, width, height, &self.device)?);
                    scales.push(control.scale as f32);
                }
                let n = scales.len();
                let scale = Tensor::from_vec(scales, (n, 1, 1, 1), &self.device)?;
                // Embedded once per batch (it does not change between
                // steps), and once per request rather than per guided row.
                let embedded = model.embed_condition(&Tensor::stack(&images, 0)?)?;
                Ok(ControlInput {
                    model,
                    embedded: double(embedded)?,
                    scale: double(scale)?,
                })
            })
            .collect()
    }
}

/// One ControlNet's inputs for a whole batch, one row per UNet row.
pub(crate) struct ControlInput {
    model: Arc<ControlNet>,
    /// The conditioning images' embedding, one row per UNet row.
    embedded: Tensor,
    /// `[rows, 1, 1, 1]`.
    scale: Tensor,
}

impl ControlInput {
    /// The summed residuals of every ControlNet at one step, `None` for none.
    pub(crate) fn run_all(
        inputs: &[Self],
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        slicing: Option<crate::memory::AttentionSlicing>,
    ) -> Result<Option<ControlResiduals>> {
        let mut sum: Option<ControlResiduals> = None;
        for input in inputs {
            let r = input.model.forward_embedded(
                sample,
                timestep,
                context,
                &input.embedded,
                &input.scale,
                slicing,
            )?;
            sum = Some(match sum {
                Some(s) => s.add(&r)?,
                None => r,
            });
        }
        Ok(sum)
    }
}

/// `[3, height, width]` F32 in 0..=1, resized with Lanczos3 if needed.
fn control_pixels(
    image: &RgbImage,
    width: usize,
    height: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let (w, h) = (width as u32, height as u32);
    let resized;
    let image = if image.dimensions() == (w, h) {
        image
    } else {
        let dynamic = DynamicImage::ImageRgb8(image.clone());
        resized = resize(&dynamic, w, h, Filter::Lanczos3)
            .map_err(|e| DiffusionError::Image(e.to_string()))?
            .to_rgb8();
        &resized
    };
    let hwc = Tensor::from_slice(image.as_raw(), (height, width, 3), device)?;
    Ok((hwc.permute((2, 0, 1))?.to_dtype(DType::F32)? / 255.0)?)
}
