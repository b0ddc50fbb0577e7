//! `POST /api/inference/execute` and `POST /api/inference/validate`: any
//! request kind in one body. `execute` answers when the request is done,
//! or at once with `?async=true` (202 and the request id, whose result
//! `GET /api/inference/sessions/{id}` then gives).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchyard::core::RequestId;
use switchyard::image::{DynamicImage, ImageFormat, encode};
use switchyard::text::ChatMessage;
use switchyard::{GenerationOptions, ImageOptions, Request};

use crate::error::ApiError;
use crate::openai::parse_body;
use crate::scheduling::{Scheduling, SchedulingFields, within};
use crate::state::{AppState, Limits};

/// Finished asynchronous results kept for `GET /api/inference/sessions/{id}`.
pub const KEPT_RESULTS: usize = 1024;

/// A chat message of a native request.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NativeMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// What a native request asks for.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum NativeTask {
    /// Continue `prompt` on a text-generation model.
    Generate {
        /// The text to continue.
        prompt: String,
    },
    /// Answer `messages` on a text-generation model (its chat template).
    Chat {
        /// The conversation.
        messages: Vec<NativeMessage>,
    },
    /// Embed `inputs` on an embedding model.
    Embed {
        /// The texts.
        inputs: Vec<String>,
    },
    /// Draw `prompt` on a diffusion model.
    Image {
        /// What to draw.
        prompt: String,
    },
}

/// Settings of any task; each task reads its own.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NativeOptions {
    /// Generation: most new tokens.
    pub max_tokens: Option<u64>,
    /// Generation: 0 is greedy.
    pub temperature: Option<f32>,
    /// Generation: nucleus mass.
    pub top_p: Option<f32>,
    /// Generation: keep the `k` likeliest tokens.
    pub top_k: Option<usize>,
    /// Generation: CTRL repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// Generation and images: the seed.
    pub seed: Option<u64>,
    /// Generation: stop strings.
    pub stop: Option<Vec<String>>,
    /// Images: width in pixels.
    pub width: Option<usize>,
    /// Images: height in pixels.
    pub height: Option<usize>,
    /// Images: denoising steps.
    pub steps: Option<u64>,
    /// Images: guidance scale.
    pub guidance_scale: Option<f64>,
    /// Images: what to steer away from.
    pub negative_prompt: Option<String>,
    /// Images: how many.
    pub images: Option<u64>,
}

/// `POST /api/inference/execute` and `/validate`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct NativeRequest {
    /// The model id.
    pub model: String,
    /// What to do.
    #[serde(flatten)]
    pub task: NativeTask,
    /// How.
    #[serde(default)]
    pub options: NativeOptions,
    /// Priority and timeout.
    #[serde(flatten)]
    pub scheduling: SchedulingFields,
}

fn bounded(value: Option<u64>, max: u64, field: &str) -> Result<Option<usize>, ApiError> {
    match value {
        Some(v) if v == 0 || v > max => Err(ApiError::invalid(
            field,
            format!("{field} must be between 1 and {max}"),
        )),
        other => Ok(other.map(|v| v as usize)),
    }
}

impl NativeRequest {
    /// The engine request.
    ///
    /// # Errors
    /// 400 for values over the service's limits.
    pub fn to_request(&self, limits: &Limits) -> Result<Request, ApiError> {
        let o = &self.options;
        let generation = || -> Result<GenerationOptions, ApiError> {
            Ok(GenerationOptions {
                max_tokens: bounded(o.max_tokens, limits.max_tokens, "max_tokens")?,
                temperature: o.temperature,
                top_p: o.top_p,
                top_k: o.top_k,
                repetition_penalty: o.repetition_penalty,
                seed: o.seed,
                stop: o.stop.clone(),
                ignore_eos: false,
            })
        };
        let model = self.model.clone();
        Ok(match &self.task {
            NativeTask::Generate { prompt } => {
                Request::complete(model, prompt.clone()).with_options(generation()?)
            }
            NativeTask::Chat { messages } => {
                let messages = messages
                    .iter()
                    .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
                    .collect();
                Request::chat(model, messages).with_options(generation()?)
            }
            NativeTask::Embed { inputs } => {
                if inputs.is_empty() || inputs.len() > limits.max_inputs {
                    return Err(ApiError::invalid(
                        "inputs",
                        format!("give between 1 and {} inputs", limits.max_inputs),
                    ));
                }
                Request::embed(model, inputs.clone())
            }
            NativeTask::Image { prompt } => {
                for (side, field) in [(o.width, "width"), (o.height, "height")] {
                    if side.is_some_and(|s| s > limits.max_image_side) {
                        return Err(ApiError::invalid(
                            field,
                            format!("{field} must be at most {}", limits.max_image_side),
                        ));
                    }
                }
                Request::image(model, prompt.clone()).with_image_options(ImageOptions {
                    negative_prompt: o.negative_prompt.clone(),
                    width: o.width,
                    height: o.height,
                    steps: bounded(o.steps, limits.max_steps, "steps")?,
                    guidance_scale: o.guidance_scale,
                    seed: o.seed,
                    images: bounded(o.images, limits.max_images, "images")?,
                    ..ImageOptions::default()
                })
            }
        })
    }
}

/// One generated image of a native answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NativeImage {
    /// The PNG, base64.
    pub png_base64: String,
    /// Its seed.
    pub seed: u64,
}

/// What a request produced.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NativeResult {
    /// A generation.
    Text {
        /// The text.
        text: String,
        /// `stop` or `length`.
        finish_reason: &'static str,
        /// Tokens read.
        prompt_tokens: usize,
        /// Tokens written.
        completion_tokens: usize,
    },
    /// Embeddings, one per input.
    Embeddings {
        /// The vectors.
        vectors: Vec<Vec<f32>>,
        /// Tokens read.
        prompt_tokens: usize,
    },
    /// Images.
    Images {
        /// The pictures.
        images: Vec<NativeImage>,
    },
}

/// The wire form of a finished request's response.
pub(crate) fn to_result(response: switchyard::Response) -> Result<NativeResult, ApiError> {
    let failed = |reason: String| {
        ApiError::from(switchyard::EngineError::Failed {
            model: String::new(),
            reason,
        })
    };
    match response {
        switchyard::Response::Completion(c) => Ok(NativeResult::Text {
            text: c.text,
            finish_reason: crate::openai::finish_name(c.finish_reason),
            prompt_tokens: c.usage.prompt_tokens,
            completion_tokens: c.usage.completion_tokens,
        }),
        switchyard::Response::Embeddings(e) => Ok(NativeResult::Embeddings {
            vectors: e.vectors,
            prompt_tokens: e.prompt_tokens,
        }),
        switchyard::Response::Images(images) => {
            let images = images
                .into_iter()
                .map(|g| {
                    let png = encode(&DynamicImage::ImageRgb8(g.image), ImageFormat::Png)
                        .map_err(|e| failed(format!("encoding a PNG: {e}")))?;
                    Ok(NativeImage {
                        png_base64: base64::engine::general_purpose::STANDARD.encode(png),
                        seed: g.seed,
                    })
                })
                .collect::<Result<_, ApiError>>()?;
            Ok(NativeResult::Images { images })
        }
        _ => Err(failed("the engine answered with an unexpected kind".into())),
    }
}

/// A finished request: its id and result.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Executed {
    /// The request id (`req-N`).
    pub id: String,
    /// The model.
    pub model: String,
    /// `finished`.
    pub state: &'static str,
    /// What it produced.
    pub result: NativeResult,
}

/// Asynchronous requests from acceptance (`None`: not ended) to their
/// outcome; the newest [`KEPT_RESULTS`] are kept, the oldest dropped.
#[derive(Debug, Default)]
pub struct AsyncResults {
    inner: Mutex<Kept>,
}

/// Each request's outcome so far, and the order they were accepted in.
type Kept = (HashMap<RequestId, Option<Outcome>>, VecDeque<RequestId>);

/// How an asynchronous request ended.
pub type Outcome = Result<Executed, ApiError>;

impl AsyncResults {
    /// Records that `id` was accepted.
    fn accept(&self, id: RequestId) {
        let mut guard = self.inner.lock();
        let (map, order) = &mut *guard;
        map.insert(id, None);
        order.push_back(id);
        while order.len() > KEPT_RESULTS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// Records how `id` ended (unless it was already dropped as old).
    fn finish(&self, id: RequestId, outcome: Outcome) {
        if let Some(slot) = self.inner.lock().0.get_mut(&id) {
            *slot = Some(outcome);
        }
    }

    /// Asynchronous request `id`: `Some(None)` while it runs, its outcome
    /// once it has ended, `None` when it is unknown.
    pub fn get(&self, id: RequestId) -> Option<Option<Outcome>> {
        self.inner.lock().0.get(&id).cloned()
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub(crate) struct ExecuteQuery {
    #[serde(default, rename = "async")]
    run_async: bool,
}

#[utoipa::path(post, path = "/api/inference/execute", tag = "native", request_body = NativeRequest, params(("async" = Option<bool>, Query, description = "answer 202 at once"), ("X-Priority" = Option<String>, Header, description = "urgent, high, normal or low"), ("X-Request-Timeout" = Option<f64>, Header, description = "seconds")), responses((status = 200, description = "The finished request", body = Executed), (status = 202, description = "Accepted; follow the id", body = crate::openapi::AcceptedDoc), (status = 400, description = "Bad request", body = inline(crate::openapi::ErrorDoc)), (status = 404, description = "Unknown model", body = inline(crate::openapi::ErrorDoc)), (status = 413, description = "Body over the limit", body = inline(crate::openapi::ErrorDoc)), (status = 429, description = "Queue full; see Retry-After", body = inline(crate::openapi::ErrorDoc)), (status = 504, description = "Past its timeout", body = inline(crate::openapi::ErrorDoc)), (status = 503, description = "Shutting down or out of memory", body = inline(crate::openapi::ErrorDoc)), (status = 500, description = "The pipeline failed", body = inline(crate::openapi::ErrorDoc))))]
/// `POST /api/inference/execute[?async=true]`.
pub(crate) async fn execute(
    State(state): State<AppState>,
    query: Result<Query<ExecuteQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run_async = match query {
        Ok(Query(q)) => q.run_async,
        Err(e) => return ApiError::invalid("async", e.body_text()).into_response(),
    };
    match run(state, run_async, headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn run(
    state: AppState,
    run_async: bool,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: NativeRequest = parse_body(body)?;
    let scheduling = Scheduling::resolve(&headers, &request.scheduling)?;
    let handle = state
        .engine
        .submit(scheduling.apply(request.to_request(&state.limits)?))?;
    let id = handle.id();
    let model = request.model.clone();
    let finish = async move {
        let response = within(scheduling.deadline(), async { Ok(handle.await?) }).await?;
        let result = tokio::task::spawn_blocking(move || to_result(response))
            .await
            .map_err(|e| {
                ApiError::from(switchyard::EngineError::Failed {
                    model: model.clone(),
                    reason: e.to_string(),
                })
            })??;
        Ok(Executed {
            id: id.to_string(),
            model,
            state: "finished",
            result,
        })
    };
    if !run_async {
        return Ok(Json(finish.await?).into_response());
    }
    let results = Arc::clone(&state.results);
    results.accept(id);
    tokio::spawn(async move {
        let outcome = finish.await;
        results.finish(id, outcome);
    });
    let body = serde_json::json!({
        "id": id.to_string(),
        "state": "accepted",
        "status_url": format!("/api/inference/sessions/{id}"),
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[utoipa::path(post, path = "/api/inference/validate", tag = "native", request_body = NativeRequest, params(("X-Priority" = Option<String>, Header, description = "urgent, high, normal or low"), ("X-Request-Timeout" = Option<f64>, Header, description = "seconds")), responses((status = 200, description = "The engine would accept it", body = crate::openapi::ValidDoc), (status = 400, description = "Bad request", body = inline(crate::openapi::ErrorDoc)), (status = 404, description = "Unknown model", body = inline(crate::openapi::ErrorDoc)), (status = 413, description = "Body over the limit", body = inline(crate::openapi::ErrorDoc)), (status = 429, description = "Queue full; see Retry-After", body = inline(crate::openapi::ErrorDoc)), (status = 504, description = "Past its timeout", body = inline(crate::openapi::ErrorDoc)), (status = 503, description = "Shutting down or out of memory", body = inline(crate::openapi::ErrorDoc)), (status = 500, description = "The pipeline failed", body = inline(crate::openapi::ErrorDoc))))]
/// `POST /api/inference/validate`: 200 `{"valid": true}` when the engine
/// would accept the request, else the error it would get.
pub(crate) async fn validate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let checked = (|| {
        let request: NativeRequest = parse_body(body)?;
        Scheduling::resolve(&headers, &request.scheduling)?;
        let engine_request = request.to_request(&state.limits)?;
        state.engine.validate(&engine_request)?;
        Ok::<_, ApiError>(())
    })();
    match checked {
        Ok(()) => Json(serde_json::json!({ "valid": true })).into_response(),
        Err(e) => e.into_response(),
    }
}
