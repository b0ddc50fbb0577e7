//! The router and the serving loop.

use std::future::Future;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::http::{HeaderName, Method, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth;
use crate::error::{ApiError, ServerError};
use crate::scheduling::{PRIORITY_HEADER, TIMEOUT_HEADER};
use crate::state::AppState;
use crate::{native, openai};

/// Every route of the service over `state`.
pub fn router(state: AppState) -> Router {
    let limit = state.limits.max_body_bytes;
    let cors = (!state.cors_origins.is_empty()).then(|| {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(state.cors_origins.clone()))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static(PRIORITY_HEADER),
                HeaderName::from_static(TIMEOUT_HEADER),
            ])
    });
    let routes = Router::new()
        .route("/health", get(openai::health))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{id}", get(openai::get_model))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/images/generations", post(openai::generations))
        .route("/api/inference/capabilities", get(native::capabilities))
        .route("/api/inference/execute", post(native::execute))
        .route("/api/inference/validate", post(native::validate))
        .route("/api/inference/sessions", get(native::sessions))
        .route(
            "/api/inference/sessions/{id}",
            get(native::session).delete(native::cancel_session),
        )
        .route("/api/system/stats", get(native::stats))
        .route("/api/system/cleanup", post(native::cleanup))
        .route("/metrics", get(native::metrics))
        .route("/api/ws", get(native::websocket))
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .with_state(state);
    // Outermost, so that preflight requests need no key.
    match cors {
        Some(cors) => routes.layer(cors),
        None => routes,
    }
}

async fn no_route(uri: Uri) -> Response {
    ApiError::no_route(uri.path()).into_response()
}

/// Serves `state` on `listener` until `shutdown` resolves; streams under
/// way finish first.
///
/// # Errors
/// [`ServerError::Io`] when accepting connections fails.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
