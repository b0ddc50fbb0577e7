//! `GET /openapi.json`: the service's OpenAPI 3.1 description, generated
//! by utoipa from the handlers' and wire types' own definitions, so it
//! cannot drift from them. (`/api/ws` is described in words: OpenAPI has
//! no WebSocket messages.) The `*Doc` types exist only to describe
//! bodies built as JSON values; nothing constructs them.
#![allow(dead_code)]

use axum::Json;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::native::{
    self, CapabilitiesOut, CleanupOut, Executed, NativeRequest, SessionOut, StatsOut,
};
use crate::openai::{self, types};

/// An OpenAI error object: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDoc {
    error: ErrorObjectDoc,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorObjectDoc {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    param: Option<String>,
    code: Option<String>,
}

/// `/health`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HealthDoc {
    /// `ok`, `degraded` or `unhealthy`.
    status: String,
    /// Why, when not ok.
    reason: Option<String>,
}

/// `execute?async=true`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AcceptedDoc {
    id: String,
    /// `accepted`.
    state: String,
    status_url: String,
}

/// `validate`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ValidDoc {
    valid: bool,
}

/// `DELETE /api/inference/sessions/{id}`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CancelledDoc {
    id: String,
    cancelled: bool,
}

/// What `GET /api/inference/sessions/{id}` gives: a session, or an
/// asynchronous execution's state (`running`, `finished` with `result`,
/// `failed` with `status` and `error`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum SessionDoc {
    /// Queued or running.
    Session(SessionOut),
    /// Finished.
    Finished(Executed),
    /// Running or failed.
    Other {
        id: String,
        state: String,
        status: Option<u16>,
        error: Option<ErrorObjectDoc>,
    },
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard",
        description = "OpenAI-compatible and native inference endpoints over the Switchyard engine. \
            `GET /api/ws` upgrades to a WebSocket of JSON messages: `execute`, `subscribe`, `cancel` \
            (see the server crate's documentation)."
    ),
    paths(
        openai::health,
        openai::list_models,
        openai::get_model,
        openai::completions::chat_completions,
        openai::completions::completions,
        openai::embeddings::embeddings,
        openai::images::generations,
        native::execute::execute,
        native::execute::validate,
        native::capabilities,
        native::sessions,
        native::session,
        native::cancel_session,
        native::stats,
        native::cleanup,
        native::metrics,
    ),
    components(schemas(
        ErrorDoc,
        types::ChatCompletionRequest,
        types::CompletionRequest,
        types::EmbeddingRequest,
        NativeRequest,
        CapabilitiesOut,
        CleanupOut,
        StatsOut
    ))
)]
struct ApiDoc;

/// The service's OpenAPI description.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi.json`.
pub(crate) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_http_route_is_described() {
        let doc = document();
        let described: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        for path in [
            "/health",
            "/v1/models",
            "/v1/models/{id}",
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/images/generations",
            "/api/inference/execute",
            "/api/inference/validate",
            "/api/inference/capabilities",
            "/api/inference/sessions",
            "/api/inference/sessions/{id}",
            "/api/system/stats",
            "/api/system/cleanup",
            "/metrics",
        ] {
            assert!(described.contains(&path), "{path} is not described");
        }
        assert_eq!(described.len(), 15, "{described:?}");
        let json = serde_json::to_value(&doc).unwrap_or_default();
        assert_eq!(json["openapi"], "3.1.0");
        let schemas = &json["components"]["schemas"];
        for name in [
            "ChatCompletionRequest",
            "ChatCompletion",
            "NativeRequest",
            "StatsOut",
        ] {
            assert!(schemas.get(name).is_some(), "no schema {name}");
        }
    }
}
