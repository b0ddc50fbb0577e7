//! The native API: what the engine can do and is doing.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/inference/execute[?async=true]` | any task (`generate`, `chat`, `embed`, `image`) with its `options`, `priority`, `timeout`; the result, or 202 and the id to follow |
//! | `POST /api/inference/validate` | 200 `{"valid": true}` or the error `execute` would give, without running |
//! | `GET /api/inference/capabilities` | request kinds served, models (loaded or not), devices, limits |
//! | `GET /api/inference/sessions` | every queued or running request: state, progress, age, estimate |
//! | `GET /api/inference/sessions/{id}` | one of them, or an asynchronous request's outcome (`finished` with its result, `failed` with its error), or 404 |
//! | `DELETE /api/inference/sessions/{id}` | cancels it (404 when it is not queued or running) |
//! | `GET /api/system/stats` | memory per device with its pressure level, loaded models, queue, caches, per-model counts and latency, optimisations in effect |
//! | `POST /api/system/cleanup` | drops every idle model from memory |
//! | `GET /metrics` | the engine's metrics in Prometheus' text format |
//! | `GET /api/ws` | a WebSocket: execute with streamed text or progress, subscribe to any request's progress, cancel (see the `ws` module's protocol) |

pub(crate) mod execute;
mod types;
mod ws;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use switchyard::EngineError;
use switchyard::core::RequestId;

use crate::error::ApiError;
use crate::state::AppState;
pub use execute::{
    AsyncResults, Executed, KEPT_RESULTS, NativeImage, NativeMessage, NativeOptions, NativeRequest,
    NativeResult, NativeTask, Outcome,
};
pub(crate) use execute::{execute, validate};
pub use types::{
    CapabilitiesOut, CleanupOut, DeviceStatsOut, ModelInfoOut, ModelStatsOut, SessionOut, StatsOut,
};
pub(crate) use ws::upgrade as websocket;

fn unknown_session(id: &str) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::NOT_FOUND,
        message: format!("no request `{id}` is queued or running"),
        kind: "invalid_request_error",
        param: Some("id".into()),
        code: Some("session_not_found"),
    }
}

fn parse_id(id: &str) -> Result<RequestId, ApiError> {
    id.parse::<RequestId>().map_err(|_| unknown_session(id))
}

#[utoipa::path(get, path = "/api/inference/capabilities", tag = "native", responses((status = 200, description = "What is served", body = CapabilitiesOut)))]
/// `GET /api/inference/capabilities`.
pub(crate) async fn capabilities(State(state): State<AppState>) -> Json<CapabilitiesOut> {
    Json(CapabilitiesOut::from(&state.engine.capabilities()))
}

#[utoipa::path(get, path = "/api/inference/sessions", tag = "native", responses((status = 200, description = "Queued and running requests", body = Vec<SessionOut>)))]
/// `GET /api/inference/sessions`.
pub(crate) async fn sessions(State(state): State<AppState>) -> Json<Vec<SessionOut>> {
    Json(
        state
            .engine
            .sessions()
            .iter()
            .map(SessionOut::from)
            .collect(),
    )
}

#[utoipa::path(get, path = "/api/inference/sessions/{id}", tag = "native", params(("id" = String, Path, description = "request id, req-N")), responses((status = 200, description = "The request while it is queued or running (a session), or an asynchronous execution's outcome (finished with its result, failed with its error, running)", body = crate::openapi::SessionDoc), (status = 404, description = "Not queued, running or kept", body = inline(crate::openapi::ErrorDoc))))]
/// `GET /api/inference/sessions/{id}`: a queued or running request, or
/// the outcome of an asynchronous one that has ended.
pub(crate) async fn session(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let rid = match parse_id(&id) {
        Ok(rid) => rid,
        Err(e) => return e.into_response(),
    };
    if let Some(s) = state.engine.sessions().iter().find(|s| s.id == rid) {
        return Json(SessionOut::from(s)).into_response();
    }
    match state.results.get(rid) {
        Some(None) => Json(serde_json::json!({ "id": id, "state": "running" })).into_response(),
        Some(Some(Ok(done))) => Json(done).into_response(),
        Some(Some(Err(e))) => Json(serde_json::json!({
            "id": id,
            "state": "failed",
            "status": e.status.as_u16(),
            "error": e.object(),
        }))
        .into_response(),
        None => unknown_session(&id).into_response(),
    }
}

#[utoipa::path(delete, path = "/api/inference/sessions/{id}", tag = "native", params(("id" = String, Path, description = "request id, req-N")), responses((status = 200, description = "Cancelled", body = crate::openapi::CancelledDoc), (status = 404, description = "Not queued or running", body = inline(crate::openapi::ErrorDoc))))]
/// `DELETE /api/inference/sessions/{id}`: cancels the request.
pub(crate) async fn cancel_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    match parse_id(&id) {
        Ok(rid) if state.engine.cancel(rid) => {
            Json(serde_json::json!({ "id": id, "cancelled": true })).into_response()
        }
        Ok(_) | Err(_) => unknown_session(&id).into_response(),
    }
}

#[utoipa::path(get, path = "/api/system/stats", tag = "system", responses((status = 200, description = "Memory, models and counts", body = StatsOut)))]
/// `GET /api/system/stats`.
pub(crate) async fn stats(State(state): State<AppState>) -> Json<StatsOut> {
    Json(StatsOut::new(
        &state.engine.metrics(),
        &state.engine.optimisations(),
    ))
}

#[utoipa::path(post, path = "/api/system/cleanup", tag = "system", responses((status = 200, description = "Idle models unloaded", body = CleanupOut)))]
/// `POST /api/system/cleanup`.
pub(crate) async fn cleanup(State(state): State<AppState>) -> Response {
    let engine = state.engine.clone();
    // Unloading frees memory synchronously: off the async workers.
    match tokio::task::spawn_blocking(move || engine.clear_cache()).await {
        Ok(unloaded) => Json(CleanupOut { unloaded }).into_response(),
        Err(e) => ApiError::from(EngineError::Failed {
            model: String::new(),
            reason: format!("cleanup did not finish: {e}"),
        })
        .into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
/// `GET /metrics`: Prometheus' text exposition format.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.engine.metrics().to_prometheus().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
