//! The denoising loop every pipeline shares: text-to-image, image-to-image
//! and inpainting, batched.

use candle_core::{DType, Tensor};
use image::{GrayImage, RgbImage};
use switchyard_core::{CancellationToken, SplitMix64};

use crate::controlnet::ControlInput;
use crate::error::{DiffusionError, Result, invalid};
use crate::noise::batch_noise;
use crate::offload::Resident;
use crate::pipeline::{
    Denoised, GeneratedImage, ImageOrigin, RunOptions, StableDiffusion, StepProgress,
};
use crate::request::{BatchKey, DiffusionRequest, ImageToImage, Inpaint, Mode, TextToImage};
use crate::sdxl::{Conditioning, prompts, time_ids, to_unet_rows, token_ids};
use crate::unet::TextTimeInputs;
use crate::vae::{image_tensor, latent_mask, mask_tensor, preview};

/// Offers a component for release when a stage ends, however it ends.
pub(crate) struct StageEnd<'a, T>(pub(crate) &'a StableDiffusion, pub(crate) &'a Resident<T>);

impl<T> Drop for StageEnd<'_, T> {
    fn drop(&mut self) {
        self.0.after_stage(self.1);
    }
}

/// What an inpainting batch needs at every step.
struct InpaintState {
    /// `[n, 1, h, w]`: 1 where the latent is repainted.
    mask: Tensor,
    /// The 9-channel UNet's extra input `[rows, 1 + c, h, w]` (mask and
    /// masked-image latents, doubled with guidance); `None` blends instead.
    conditioning: Option<Tensor>,
}

impl StableDiffusion {
    /// Runs a batch of compatible requests (equal [`BatchKey`]s) as one
    /// UNet batch, twice as wide with guidance, and decodes the images.
    /// Each image's noise comes from its own seed, so it is the image the
    /// request would get alone. Images come back in request order.
    pub fn generate(
        &self,
        requests: &[DiffusionRequest],
        run: RunOptions<'_>,
    ) -> Result<Vec<GeneratedImage>> {
        let batch = self.denoise(requests, run)?;
        let images = {
            let _done = StageEnd(self, &self.vae.model);
            self.vae.decode(&batch.latents, &self.memory)?
        };
        Ok(batch
            .origins
            .into_iter()
            .zip(images)
            .map(|(origin, mut image)| {
                if let DiffusionRequest::Inpaint(r) = &requests[origin.request]
                    && r.keep_unmasked
                {
                    paste_unmasked(&mut image, &r.image, &r.mask);
                }
                GeneratedImage {
                    request: origin.request,
                    seed: origin.seed,
                    image,
                }
            })
            .collect())
    }

    /// [`StableDiffusion::generate`] for text-to-image requests.
    pub fn text_to_image(
        &self,
        requests: &[TextToImage],
        run: RunOptions<'_>,
    ) -> Result<Vec<GeneratedImage>> {
        self.generate(&wrap(requests), run)
    }

    /// [`StableDiffusion::generate`] for image-to-image requests.
    pub fn image_to_image(
        &self,
        requests: &[ImageToImage],
        run: RunOptions<'_>,
    ) -> Result<Vec<GeneratedImage>> {
        self.generate(&wrap(requests), run)
    }

    /// [`StableDiffusion::generate`] for inpainting requests.
    pub fn inpaint(
        &self,
        requests: &[Inpaint],
        run: RunOptions<'_>,
    ) -> Result<Vec<GeneratedImage>> {
        self.generate(&wrap(requests), run)
    }

    /// The denoising walk of [`StableDiffusion::generate`] without the
    /// decode: the latents of every image, for callers that post-process
    /// them (upscaling in latent space, previews, a second pass).
    pub fn denoise(
        &self,
        requests: &[DiffusionRequest],
        mut run: RunOptions<'_>,
    ) -> Result<Denoised> {
        let key = self.check_batch(requests)?;
        let origins: Vec<ImageOrigin> = requests
            .iter()
            .enumerate()
            .flat_map(|(r, request)| {
                let params = request.params();
                (0..params.images).map(move |k| ImageOrigin {
                    request: r,
                    seed: params.seed.wrapping_add(k as u64),
                })
            })
            .collect();
        let device = &self.device;
        // Row i of a per-request tensor to row j of a per-image one.
        let rows = Tensor::from_vec(
            origins.iter().map(|o| o.request as u32).collect::<Vec<_>>(),
            origins.len(),
            device,
        )?;
        let per_image = |t: &Tensor| t.index_select(&rows, 0);
        let guidance = Tensor::from_vec(
            requests
                .iter()
                .map(|r| r.params().guidance_scale as f32)
                .collect::<Vec<_>>(),
            (requests.len(), 1, 1, 1),
            device,
        )?;
        let guidance = per_image(&guidance)?;
        // ControlNets are released (if the policy says so) when the run
        // ends, however it ends.
        let _controls_done: Vec<_> = self
            .controlnets
            .iter()
            .map(|(_, c)| StageEnd(self, &c.model))
            .collect();
        let controls = self.control_inputs(requests, &rows, key.guided)?;
        let Conditioning { context, pooled } = {
            let _done = StageEnd(self, &self.text_encoder);
            let _done2 = self.second.as_ref().map(|s| StageEnd(self, &s.encoder));
            self.encode_prompts(requests, &rows, key.guided)?
        };
        let unet_rows = origins.len() * if key.guided { 2 } else { 1 };
        let time_ids = pooled
            .as_ref()
            .map(|_| time_ids(unet_rows, key.height, key.width, device))
            .transpose()?;
        let added = pooled
            .as_ref()
            .zip(time_ids.as_ref())
            .map(|(pooled, time_ids)| TextTimeInputs { pooled, time_ids });
        let mut scheduler = self.scheduler.build(key.scheduler, key.steps)?;
        let total = scheduler.timesteps().len();
        let first = key.first_step;

        let scale = self.vae.scale;
        let shape = [
            self.vae.latent_channels,
            key.height / scale,
            key.width / scale,
        ];
        let mut generators: Vec<SplitMix64> =
            origins.iter().map(|o| SplitMix64::new(o.seed)).collect();
        let noise = batch_noise(&mut generators, &shape, device)?;

        // The VAE encodes the inputs here and is not needed again until
        // the latents are decoded.
        let vae_done = StageEnd(self, &self.vae.model);
        let images: Vec<&RgbImage> = requests
            .iter()
            .filter_map(DiffusionRequest::image)
            .collect();
        let pixels = match key.mode {
            Mode::TextToImage => None,
            _ => Some(image_tensor(&images, device)?),
        };
        let init = match &pixels {
            Some(pixels) => Some(per_image(&self.vae.encode(pixels, &self.memory)?)?),
            None => None,
        };
        let inpaint = match (&pixels, key.mode) {
            (Some(pixels), Mode::Inpaint) => {
                Some(self.inpaint_state(requests, pixels, &rows, key)?)
            }
            _ => None,
        };
        let mut latents = match &init {
            Some(init) if first == total => init.clone(),
            Some(init) if key.mode == Mode::ImageToImage || first > 0 => {
                scheduler.add_noise(init, &noise, first)?
            }
            _ => (&noise * scheduler.init_noise_sigma())?,
        };
        drop(vae_done);

        // Declared first, dropped last: the UNet is released (if the policy
        // says so) after this run's reference is gone, on every way out.
        let _done = StageEnd(self, &self.unet);
        let unet = self.unet()?;
        let slicing = self.memory.attention_slicing;
        for i in first..total {
            if run
                .cancel
                .as_ref()
                .is_some_and(CancellationToken::is_cancelled)
                || run.cancel_when.is_some_and(|cancelled| cancelled())
            {
                return Err(DiffusionError::Cancelled);
            }
            let _step = tracing::trace_span!("step", step = i + 1, total).entered();
            let mut input = scheduler.scale_model_input(&latents, i)?;
            if key.guided {
                input = Tensor::cat(&[&input, &input], 0)?;
            }
            let t = scheduler.timesteps()[i];
            // ControlNets see the latents only, not an inpainting UNet's
            // mask channels (as in diffusers).
            let residuals = ControlInput::run_all(&controls, &input, t, &context, slicing)?;
            if let Some(conditioning) = inpaint.as_ref().and_then(|s| s.conditioning.as_ref()) {
                input = Tensor::cat(&[&input, conditioning], 1)?;
            }
            let output = unet
                .forward_pausing(
                    (&input.to_dtype(self.dtype)?, t),
                    &context,
                    (
                        added,
                        residuals.as_ref().map(|r| (r.down.as_slice(), &r.mid)),
                    ),
                    slicing,
                    run.pause.unwrap_or(&|| {}),
                )?
                .to_dtype(DType::F32)?;
            let output = if key.guided {
                let n = origins.len();
                let (uncond, cond) = (output.narrow(0, 0, n)?, output.narrow(0, n, n)?);
                (&uncond + (cond - &uncond)?.broadcast_mul(&guidance)?)?
            } else {
                output
            };
            let step_noise = if scheduler.needs_noise() {
                Some(batch_noise(&mut generators, &shape, device)?)
            } else {
                None
            };
            latents = scheduler.step(&output, i, &latents, step_noise.as_ref())?;
            if let (Some(state), Some(init)) = (&inpaint, &init)
                && state.conditioning.is_none()
            {
                // Keep the unmasked latents on the original image, noised to
                // the level the walk has reached.
                let kept = if i + 1 < total {
                    scheduler.add_noise(init, &noise, i + 1)?
                } else {
                    init.clone()
                };
                let repaint = state.mask.broadcast_as(latents.shape())?;
                latents = repaint.where_cond(&latents, &kept)?;
            }
            let progress = StepProgress {
                step: i + 1 - first,
                total: total - first,
            };
            if let Some(callback) = run.on_step.as_mut() {
                callback(progress);
            }
            if let Some(callback) = run.on_preview.as_mut()
                && let Some(previews) = preview(&latents)?
            {
                callback(progress, &previews);
            }
        }
        Ok(Denoised { latents, origins })
    }

    /// The latent mask and, for an inpainting UNet, its extra input.
    fn inpaint_state(
        &self,
        requests: &[DiffusionRequest],
        pixels: &Tensor,
        rows: &Tensor,
        key: BatchKey,
    ) -> Result<InpaintState> {
        let masks: Vec<&GrayImage> = requests
            .iter()
            .filter_map(|r| match r {
                DiffusionRequest::Inpaint(r) => Some(&r.mask),
                _ => None,
            })
            .collect();
        let pixel_mask = mask_tensor(&masks, &self.device)?;
        let mask = latent_mask(&pixel_mask, self.vae.scale)?;
        let conditioning = if self.is_inpainting() {
            // The masked image is grey (0) where it will be repainted.
            let masked = pixels.broadcast_mul(&(1.0 - &pixel_mask)?)?;
            let extra = Tensor::cat(&[&mask, &self.vae.encode(&masked, &self.memory)?], 1)?
                .index_select(rows, 0)?;
            let extra = if key.guided {
                Tensor::cat(&[&extra, &extra], 0)?
            } else {
                extra
            };
            Some(extra.to_dtype(DType::F32)?)
        } else {
            None
        };
        Ok(InpaintState {
            mask: mask.index_select(rows, 0)?.to_dtype(DType::U8)?,
            conditioning,
        })
    }

    /// Validates every request and that they share one batch key the model
    /// can run.
    fn check_batch(&self, requests: &[DiffusionRequest]) -> Result<BatchKey> {
        let first = requests
            .first()
            .ok_or_else(|| invalid("requests", "the batch is empty"))?;
        let default = self.default_scheduler();
        let key = first.batch_key(default);
        for request in requests {
            request.validate(self.vae.scale)?;
            if request.batch_key(default) != key {
                return Err(invalid(
                    "requests",
                    "a batch must share pipeline, size, steps, strength's first step, \
                     scheduler and guidance on/off",
                ));
            }
        }
        if self.is_inpainting() && key.mode != Mode::Inpaint {
            return Err(invalid(
                "model",
                "this UNet takes a mask and masked image (an inpainting model); use inpainting",
            ));
        }
        Ok(key)
    }

    /// Text conditioning `[2n, seq, d]` (negative prompts first) with
    /// guidance, `[n, seq, d]` without, one row per image, and SDXL's
    /// pooled embeddings. Each request's prompts are encoded once however
    /// many images it asks for.
    fn encode_prompts(
        &self,
        requests: &[DiffusionRequest],
        rows: &Tensor,
        guided: bool,
    ) -> Result<Conditioning> {
        if let Some(second) = &self.second {
            return self.encode_prompts_xl(second, requests, rows, guided);
        }
        let ids = token_ids(
            &self.tokenizer,
            &prompts(requests, guided),
            &self.text_device,
        )?;
        let encoded = self
            .text_encoder()?
            .forward(&ids)?
            .to_device(&self.device)?;
        let context = to_unet_rows(&encoded, requests.len(), rows, guided)?;
        Ok(Conditioning {
            context: context.to_dtype(self.dtype)?,
            pooled: None,
        })
    }
}

fn wrap<R: Clone + Into<DiffusionRequest>>(requests: &[R]) -> Vec<DiffusionRequest> {
    requests.iter().cloned().map(Into::into).collect()
}

/// Copies `original`'s pixels into `image` wherever `mask` is below 128.
fn paste_unmasked(image: &mut RgbImage, original: &RgbImage, mask: &GrayImage) {
    for ((out, kept), m) in image.pixels_mut().zip(original.pixels()).zip(mask.pixels()) {
        if m.0[0] < 128 {
            *out = *kept;
        }
    }
}
