//! SDXL's prompt side: a second CLIP text encoder with a projection, and
//! the added conditioning its UNet takes.
//!
//! As diffusers' `StableDiffusionXLPipeline` does, each prompt goes through
//! both tokenizers and both encoders; the UNet cross-attends to the two
//! encoders' penultimate hidden states joined along the feature axis, and
//! takes the second encoder's projected pooled output together with six
//! time ids (original size, crop corner, target size) through its
//! `add_embedding`. With `force_zeros_for_empty_prompt` (set in SDXL's
//! `model_index.json`), an empty negative prompt conditions on zeros rather
//! than on the encoding of "".

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::clip::{ClipTextEncoder, ClipTextJson, ClipTokenizer};
use crate::config::{TextTimeShape, config_error, read_json, weight_files};
use crate::error::{DiffusionError, Result};
use crate::offload::Resident;
use crate::pipeline::{StableDiffusion, TextEncoderSource, as_patch};
use crate::request::DiffusionRequest;

/// SDXL's second text encoder and tokenizer.
#[derive(Debug)]
pub(crate) struct SecondTextEncoder {
    pub(crate) tokenizer: ClipTokenizer,
    pub(crate) encoder: Resident<ClipTextEncoder>,
    pub(crate) source: TextEncoderSource,
    /// Condition an empty negative prompt on zeros.
    pub(crate) force_zeros_for_empty_prompt: bool,
}

/// What the text encoders give one UNet batch, one row per UNet row
/// (negative prompts first with guidance).
#[derive(Debug)]
pub(crate) struct Conditioning {
    /// Cross-attention context `[rows, seq, dim]` in the compute dtype.
    pub(crate) context: Tensor,
    /// SDXL's pooled text embeddings `[rows, pooled]`; `None` for SD 1.x / 2.x.
    pub(crate) pooled: Option<Tensor>,
}

/// Whether `model_index.json` names a component: diffusers writes
/// `[library, class]`, and `[null, null]` (or null) for an absent one.
pub(crate) fn names_component(index: &Value, name: &str) -> bool {
    match index.get(name) {
        None | Some(Value::Null) => false,
        Some(Value::Array(parts)) => parts.iter().any(|p| !p.is_null()),
        Some(_) => true,
    }
}

/// Loads `text_encoder_2/` and `tokenizer_2/` of an SDXL folder and checks
/// that they fit the first encoder and the UNet: the UNet's
/// `cross_attention_dim` is the two widths added, and its pooled input the
/// projection's width.
pub(crate) fn load_second(
    dir: &Path,
    index: &Value,
    first: &ClipTextJson,
    (cross_attention_dim, text_time): (usize, TextTimeShape),
    (dtype, device): (DType, &Device),
) -> Result<SecondTextEncoder> {
    if index
        .get("requires_aesthetics_score")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return Err(DiffusionError::Unsupported(
            "an SDXL refiner (aesthetic-score conditioning); SDXL base and Turbo folders load"
                .into(),
        ));
    }
    let text_dir = dir.join("text_encoder_2");
    let config_path = text_dir.join("config.json");
    let source = TextEncoderSource {
        json: read_json(&config_path)?,
        files: weight_files(&text_dir, "model")?,
        config_path,
        projection: true,
    };
    let joined = first.hidden_size + source.json.hidden_size;
    if joined != cross_attention_dim {
        return Err(config_error(
            &dir.join("unet/config.json"),
            format!(
                "cross_attention_dim {cross_attention_dim} is not the two text encoders' \
                 widths added ({} + {} = {joined})",
                first.hidden_size, source.json.hidden_size
            ),
        ));
    }
    let pooled = source.json.projection_dim.unwrap_or(0);
    if pooled != text_time.pooled_dim() {
        return Err(config_error(
            &dir.join("unet/config.json"),
            format!(
                "the UNet's added conditioning takes {} pooled features, text_encoder_2 \
                 projects to {pooled}",
                text_time.pooled_dim()
            ),
        ));
    }
    let encoder = source.build(dtype, device, None)?;
    let tokenizer = ClipTokenizer::load(&dir.join("tokenizer_2"), encoder.max_positions())?;
    Ok(SecondTextEncoder {
        tokenizer,
        encoder: Resident::new(encoder),
        source,
        force_zeros_for_empty_prompt: index
            .get("force_zeros_for_empty_prompt")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    })
}

/// Token ids `[prompts, seq]` of `prompts`.
pub(crate) fn token_ids(
    tokenizer: &ClipTokenizer,
    prompts: &[&str],
    device: &Device,
) -> Result<Tensor> {
    let mut ids = Vec::with_capacity(prompts.len() * tokenizer.max_len());
    for prompt in prompts {
        ids.extend(tokenizer.encode(prompt)?);
    }
    Ok(Tensor::from_vec(
        ids,
        (prompts.len(), tokenizer.max_len()),
        device,
    )?)
}

/// Rows of prompt encodings (positives, then negatives with guidance) to
/// rows of a UNet batch (negatives first), one per image.
pub(crate) fn to_unet_rows(
    encoded: &Tensor,
    requests: usize,
    rows: &Tensor,
    guided: bool,
) -> Result<Tensor> {
    let positive = encoded.narrow(0, 0, requests)?.index_select(rows, 0)?;
    if !guided {
        return Ok(positive);
    }
    let negative = encoded
        .narrow(0, requests, requests)?
        .index_select(rows, 0)?;
    Ok(Tensor::cat(&[&negative, &positive], 0)?)
}

/// The prompts of a batch in encoding order: every positive, then (with
/// guidance) every negative.
pub(crate) fn prompts(requests: &[DiffusionRequest], guided: bool) -> Vec<&str> {
    let mut prompts: Vec<&str> = requests
        .iter()
        .map(|r| r.params().prompt.as_str())
        .collect();
    if guided {
        prompts.extend(requests.iter().map(|r| r.params().negative_prompt.as_str()));
    }
    prompts
}

/// SDXL's time ids `[rows, 6]`: original size (height, width), crop corner
/// (0, 0), target size (height, width), all the generated size.
pub(crate) fn time_ids(
    rows: usize,
    height: usize,
    width: usize,
    device: &Device,
) -> Result<Tensor> {
    let (h, w) = (height as f32, width as f32);
    let row = [h, w, 0.0, 0.0, h, w];
    let data: Vec<f32> = (0..rows).flat_map(|_| row).collect();
    Ok(Tensor::from_vec(data, (rows, 6), device)?)
}

impl StableDiffusion {
    /// The second text encoder, rebuilt first if it was released.
    pub(crate) fn second_text_encoder(
        &self,
        second: &SecondTextEncoder,
    ) -> Result<Arc<ClipTextEncoder>> {
        second.encoder.get(|| {
            second
                .source
                .build(self.dtype, &self.text_device, as_patch(&self.text2_patch))
        })
    }

    /// SDXL's conditioning of a batch: both encoders' penultimate states
    /// joined, and the second's pooled output.
    pub(crate) fn encode_prompts_xl(
        &self,
        second: &SecondTextEncoder,
        requests: &[DiffusionRequest],
        rows: &Tensor,
        guided: bool,
    ) -> Result<Conditioning> {
        let prompts = prompts(requests, guided);
        let device = &self.text_device;
        let first = self.text_encoder()?.forward_all(
            &token_ids(&self.tokenizer, &prompts, device)?,
            self.tokenizer.eos_id(),
        )?;
        let other = self.second_text_encoder(second)?.forward_all(
            &token_ids(&second.tokenizer, &prompts, device)?,
            second.tokenizer.eos_id(),
        )?;
        let mut context = Tensor::cat(&[&first.penultimate, &other.penultimate], 2)?;
        let mut pooled = other.pooled;
        if guided && second.force_zeros_for_empty_prompt {
            // 1 keeps a row's encoding, 0 zeroes an empty negative's.
            let keep: Vec<f32> = prompts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    if i >= requests.len() && p.is_empty() {
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect();
            let keep =
                Tensor::from_vec(keep, (prompts.len(), 1), device)?.to_dtype(context.dtype())?;
            pooled = pooled.broadcast_mul(&keep)?;
            context = context.broadcast_mul(&keep.unsqueeze(2)?)?;
        }
        let n = requests.len();
        let context = to_unet_rows(&context.to_device(&self.device)?, n, rows, guided)?;
        let pooled = to_unet_rows(&pooled.to_device(&self.device)?, n, rows, guided)?;
        Ok(Conditioning {
            context: context.to_dtype(self.dtype)?,
            pooled: Some(pooled.to_dtype(self.dtype)?),
        })
    }
}

#[cfg(test)]
mod tests;
