//! Errors: [`ServerError`] for running the service, [`ApiError`] for what a
//! request gets back, in OpenAI's error shape.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use switchyard::EngineError;

/// Errors from starting or running the service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// The engine could not be built from the configuration.
    #[error("cannot start the engine: {0}")]
    Engine(#[from] EngineError),
    /// A setting of the service is not valid.
    #[error("invalid setting: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// Serving stopped on an I/O error.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Seconds a client is told to wait after a full queue (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 1;

/// A failed request: an HTTP status and OpenAI's error object,
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// OpenAI's error `type` (`invalid_request_error`, `server_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A short machine-readable code (`model_not_found`, ...).
    pub code: Option<&'static str>,
}

/// The JSON body of an [`ApiError`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// A 400 `invalid_request_error` about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    /// A request body that is not valid JSON for the endpoint.
    pub fn bad_body(reason: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!("the request body is not valid: {reason}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_body"),
        }
    }

    /// A 404 for a path no route serves.
    pub fn no_route(path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("no endpoint at {path}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// The error object as JSON, for a server-sent event.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(&self.body()).unwrap_or_else(|_| "{}".into())
    }

    /// The inner error object (`{"message", "type", "param", "code"}`),
    /// for bodies that nest it under their own `error` field.
    pub(crate) fn object(&self) -> serde_json::Value {
        serde_json::to_value(self.body())
            .map(|mut v| v["error"].take())
            .unwrap_or_default()
    }

    pub(crate) fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        let message = err.to_string();
        let (status, kind, code, param) = match &err {
            EngineError::UnknownModel { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                Some("model"),
            ),
            EngineError::WrongKind { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("wrong_model_kind"),
                Some("model"),
            ),
            EngineError::InvalidInput { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", None, None)
            }
            EngineError::Unsupported { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("unsupported"),
                None,
            ),
            EngineError::QueueFull { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("queue_full"),
                None,
            ),
            EngineError::TimedOut => (
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                Some("timed_out"),
                None,
            ),
            EngineError::Cancelled => (
                StatusCode::REQUEST_TIMEOUT,
                "cancelled_error",
                Some("cancelled"),
                None,
            ),
            EngineError::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("shutting_down"),
                None,
            ),
            EngineError::InsufficientMemory { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("insufficient_memory"),
                None,
            ),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                None,
            ),
        };
        // The field an invalid input names is the request's parameter.
        let param = match &err {
            EngineError::InvalidInput { field, .. } => Some(field.clone()),
            _ => param.map(str::to_owned),
        };
        Self {
            status,
            message,
            kind,
            param,
            code,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_get_openai_statuses() {
        let cases = [
            (
                EngineError::UnknownModel { model: "x".into() },
                StatusCode::NOT_FOUND,
                Some("model_not_found"),
            ),
            (
                EngineError::QueueFull { capacity: 4 },
                StatusCode::TOO_MANY_REQUESTS,
                Some("queue_full"),
            ),
            (
                EngineError::ShuttingDown,
                StatusCode::SERVICE_UNAVAILABLE,
                Some("shutting_down"),
            ),
            (
                EngineError::Failed {
                    model: "m".into(),
                    reason: "r".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
            ),
        ];
        for (err, status, code) in cases {
            let api = ApiError::from(err);
            assert_eq!((api.status, api.code), (status, code));
        }
        let api = ApiError::from(EngineError::InvalidInput {
            field: "temperature".into(),
            reason: "negative".into(),
        });
        assert_eq!(api.param.as_deref(), Some("temperature"));
    }

    #[test]
    fn a_full_queue_says_when_to_retry() {
        let response = ApiError::from(EngineError::QueueFull { capacity: 1 }).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(RETRY_AFTER_SECS))
        );
    }

    #[test]
    fn the_body_has_openais_shape() {
        let json: serde_json::Value =
            serde_json::from_str(&ApiError::invalid("n", "n must be at least 1").to_json())
                .unwrap_or_default();
        assert_eq!(json["error"]["message"], "n must be at least 1");
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert_eq!(json["error"]["param"], "n");
        assert!(json["error"]["code"].is_null());
    }
}
