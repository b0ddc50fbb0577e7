//! The OpenAI-compatible endpoints: `/v1/models`, `/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`, `/v1/images/generations`, and
//! `/health`.

pub(crate) mod completions;
pub(crate) mod embeddings;
pub(crate) mod images;
mod stream;
pub mod types;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use switchyard::Health;
use switchyard::config::ModelSpec;

use crate::error::ApiError;
use crate::state::AppState;
pub(crate) use completions::{chat_completions, completions, finish_name};
pub(crate) use embeddings::embeddings;
pub(crate) use images::generations;
pub use images::{ImageData, ImageGenerationRequest, ImageGenerationResponse};
use types::{ModelList, ModelObject};

/// Reads a JSON request body: an unreadable or oversized body and JSON
/// that does not fit `T` are [`ApiError`]s, never panics.
///
/// # Errors
/// 413 for a body over the limit, 400 for anything else wrong.
pub fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| ApiError {
        status: rejection.status(),
        ..ApiError::bad_body(rejection.body_text())
    })?;
    serde_json::from_slice(&bytes).map_err(ApiError::bad_body)
}

fn model_object(spec: &ModelSpec, created: u64) -> ModelObject {
    ModelObject {
        id: spec.id.clone(),
        object: "model",
        created,
        owned_by: "switchyard",
    }
}

#[utoipa::path(get, path = "/v1/models", tag = "openai", responses((status = 200, description = "The registered models", body = ModelList)))]
/// `GET /v1/models`: every registered model.
pub(crate) async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    let data = state
        .engine
        .registry()
        .models()
        .iter()
        .map(|spec| model_object(spec, state.started))
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

/// `GET /v1/models/{id}`: one model, or 404.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "openai", params(("id" = String, Path, description = "model id")), responses((status = 200, description = "The model", body = ModelObject), (status = 404, description = "Unknown model", body = inline(crate::openapi::ErrorDoc))))]
pub(crate) async fn get_model(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.engine.registry().get(&id) {
        Some(spec) => Json(model_object(spec, state.started)).into_response(),
        None => ApiError::from(switchyard::EngineError::UnknownModel { model: id }).into_response(),
    }
}

/// `GET /health`: 200 while serving (`ok` or `degraded` with a reason),
/// 503 when not.
#[utoipa::path(get, path = "/health", tag = "system", responses((status = 200, description = "Serving", body = crate::openapi::HealthDoc), (status = 503, description = "Not serving", body = crate::openapi::HealthDoc)))]
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let (status, body) = match state.engine.health() {
        Health::Healthy => (StatusCode::OK, serde_json::json!({ "status": "ok" })),
        Health::Degraded { reason } => (
            StatusCode::OK,
            serde_json::json!({ "status": "degraded", "reason": reason }),
        ),
        Health::Unhealthy { reason } => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "unhealthy", "reason": reason }),
        ),
    };
    (status, Json(body)).into_response()
}
