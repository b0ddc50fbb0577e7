//! `POST /v1/images/generations`: text-to-image on a diffusion model,
//! answered as base64 PNGs (`b64_json`). Besides OpenAI's fields it reads
//! `negative_prompt`, `steps`, `guidance_scale` and `seed` (image `k` of
//! the request uses `seed + k`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use switchyard::image::{DynamicImage, ImageFormat, encode};
use switchyard::{ImageOptions, Request};

use super::parse_body;
use crate::error::ApiError;
use crate::scheduling::{Scheduling, SchedulingFields, within};
use crate::state::{AppState, Limits, unix_now};

/// `POST /v1/images/generations`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct ImageGenerationRequest {
    /// The diffusion model's id.
    pub model: String,
    /// What to draw.
    pub prompt: String,
    /// Images to make (default 1).
    #[serde(default)]
    pub n: Option<u64>,
    /// `WIDTHxHEIGHT`, each a multiple of 8 (default: the model's).
    #[serde(default)]
    pub size: Option<String>,
    /// Only `b64_json` is served (no image hosting).
    #[serde(default)]
    pub response_format: Option<String>,
    /// What to steer away from.
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// Denoising steps.
    #[serde(default)]
    pub steps: Option<u64>,
    /// Classifier-free guidance scale (at or below 1: none).
    #[serde(default)]
    pub guidance_scale: Option<f64>,
    /// Seed of the first image.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Priority and timeout.
    #[serde(flatten)]
    pub scheduling: SchedulingFields,
}

/// One generated image.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ImageData {
    /// The PNG, base64.
    pub b64_json: String,
    /// The seed its noise came from.
    pub seed: u64,
}

/// `POST /v1/images/generations`' answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ImageGenerationResponse {
    /// Unix seconds.
    pub created: u64,
    /// The images, in order.
    pub data: Vec<ImageData>,
}

/// `WIDTHxHEIGHT` within `limits`.
fn parse_size(size: &str, limits: &Limits) -> Result<(usize, usize), ApiError> {
    let bad = || {
        ApiError::invalid(
            "size",
            format!(
                "size `{size}` must be WIDTHxHEIGHT, multiples of 8 from 8 to {}",
                limits.max_image_side
            ),
        )
    };
    let (w, h) = size.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let side = |s: &str| -> Result<usize, ApiError> {
        let v: usize = s.trim().parse().map_err(|_| bad())?;
        if v == 0 || !v.is_multiple_of(8) || v > limits.max_image_side {
            return Err(bad());
        }
        Ok(v)
    };
    Ok((side(w)?, side(h)?))
}

fn options(request: &ImageGenerationRequest, limits: &Limits) -> Result<ImageOptions, ApiError> {
    match request.response_format.as_deref() {
        None | Some("b64_json") => {}
        Some(other) => {
            return Err(ApiError::invalid(
                "response_format",
                format!("response_format `{other}` is not served; use `b64_json`"),
            ));
        }
    }
    let n = request.n.unwrap_or(1);
    if n == 0 || n > limits.max_images {
        return Err(ApiError::invalid(
            "n",
            format!("n must be between 1 and {}", limits.max_images),
        ));
    }
    let (width, height) = match &request.size {
        Some(size) => parse_size(size, limits).map(|(w, h)| (Some(w), Some(h)))?,
        None => (None, None),
    };
    let steps = match request.steps {
        Some(s) if s == 0 || s > limits.max_steps => {
            return Err(ApiError::invalid(
                "steps",
                format!("steps must be between 1 and {}", limits.max_steps),
            ));
        }
        other => other.map(|s| s as usize),
    };
    Ok(ImageOptions {
        negative_prompt: request.negative_prompt.clone(),
        width,
        height,
        steps,
        guidance_scale: request.guidance_scale,
        seed: request.seed,
        images: Some(n as usize),
        ..ImageOptions::default()
    })
}

#[utoipa::path(post, path = "/v1/images/generations", tag = "openai", request_body = ImageGenerationRequest, params(("X-Priority" = Option<String>, Header, description = "urgent, high, normal or low"), ("X-Request-Timeout" = Option<f64>, Header, description = "seconds")), responses((status = 200, description = "The images as base64 PNGs", body = ImageGenerationResponse), (status = 400, description = "Bad request", body = inline(crate::openapi::ErrorDoc)), (status = 404, description = "Unknown model", body = inline(crate::openapi::ErrorDoc)), (status = 413, description = "Body over the limit", body = inline(crate::openapi::ErrorDoc)), (status = 429, description = "Queue full; see Retry-After", body = inline(crate::openapi::ErrorDoc)), (status = 504, description = "Past its timeout", body = inline(crate::openapi::ErrorDoc)), (status = 503, description = "Shutting down or out of memory", body = inline(crate::openapi::ErrorDoc)), (status = 500, description = "The pipeline failed", body = inline(crate::openapi::ErrorDoc))))]
/// `POST /v1/images/generations`.
pub(crate) async fn generations(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match generate(state, headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn generate(
    state: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ImageGenerationRequest = parse_body(body)?;
    let scheduling = Scheduling::resolve(&headers, &request.scheduling)?;
    let options = options(&request, &state.limits)?;
    let handle = state.engine.submit(scheduling.apply(
        Request::image(request.model.clone(), request.prompt.clone()).with_image_options(options),
    ))?;
    let images = within(scheduling.deadline(), async { Ok(handle.await?) })
        .await?
        .into_images()
        .ok_or_else(|| {
            ApiError::from(switchyard::EngineError::Failed {
                model: request.model.clone(),
                reason: "the engine answered with something other than images".into(),
            })
        })?;
    // PNG encoding is CPU work: off the async workers.
    let data = tokio::task::spawn_blocking(move || {
        images
            .into_iter()
            .map(|g| {
                let png =
                    encode(&DynamicImage::ImageRgb8(g.image), ImageFormat::Png).map_err(|e| {
                        ApiError::from(switchyard::EngineError::Failed {
                            model: String::new(),
                            reason: format!("encoding a PNG: {e}"),
                        })
                    })?;
                Ok(ImageData {
                    b64_json: base64::engine::general_purpose::STANDARD.encode(png),
                    seed: g.seed,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|e| {
        ApiError::from(switchyard::EngineError::Failed {
            model: request.model.clone(),
            reason: format!("encoding the images: {e}"),
        })
    })??;
    Ok(Json(ImageGenerationResponse {
        created: unix_now(),
        data,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_multiples_of_8_within_the_limit() {
        let limits = Limits::default();
        assert_eq!(parse_size("64x32", &limits).ok(), Some((64, 32)));
        assert_eq!(parse_size(" 8X16 ", &limits).ok(), Some((8, 16)));
        for bad in ["64", "63x64", "0x64", "x", "64x-8", "4096x4096", "axb"] {
            let err = parse_size(bad, &limits).err();
            assert_eq!(err.and_then(|e| e.param), Some("size".into()), "{bad}");
        }
    }
}
