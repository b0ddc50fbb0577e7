//! The Switchyard HTTP service: OpenAI-compatible endpoints over the
//! `switchyard` engine, on axum and tokio.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | 200 `{"status": "ok"}` while serving, 503 when not |
//! | `GET /v1/models`, `GET /v1/models/{id}` | the registered models |
//! | `POST /v1/chat/completions` | chat, whole or streamed (`stream: true`, server-sent events), with `n`, `stop`, `seed`, `temperature`, `top_p`, `max_tokens`, `stream_options.include_usage` |
//! | `POST /v1/completions` | text completion of one prompt or several, the same options |
//! | `POST /v1/embeddings` | one string or several, `encoding_format` `float` or `base64` |
//! | `POST /v1/images/generations` | text-to-image on a diffusion model as base64 PNGs (`b64_json`), `n`, `size`; also `negative_prompt`, `steps`, `guidance_scale`, `seed` |
//! | `POST /api/inference/execute[?async=true]`, `POST /api/inference/validate` | the native API ([`native`]): any task in one body, now or later; checked without running |
//! | `GET /api/inference/capabilities`, `GET /api/inference/sessions[/{id}]`, `DELETE /api/inference/sessions/{id}` | what is served, what runs (and async outcomes), cancel by id |
//! | `GET /api/system/stats`, `POST /api/system/cleanup`, `GET /metrics` | memory and pressure per device, loaded models, counts; unload idle models; Prometheus |
//! | `GET /api/ws` | a WebSocket: execute with streamed text or progress, follow any request's progress, cancel |
//! | `GET /openapi.json` | the OpenAPI 3.1 description of every HTTP route, generated from the handlers and wire types ([`openapi`]) |
//!
//! Errors have OpenAI's shape, `{"error": {"message", "type", "param",
//! "code"}}`, and status: 400 for a bad request, 404 for an unknown model or
//! path, 413 for a body over the limit, 429 with `Retry-After` when the
//! engine's queue is full, 504 past a request's timeout, 503 while shutting
//! down. A client that goes away mid-stream cancels its generations.
//!
//! Every POST takes a `priority` (`urgent`, `high`, `normal`, `low`) and a
//! `timeout` in seconds in its body, or the `X-Priority` and
//! `X-Request-Timeout` headers ([`scheduling`]); the priority orders the
//! engine's queue, the timeout bounds the whole request.
//!
//! Optional API keys ([`ApiKeys`], [`AppState::with_api_keys`]) make every
//! route but `/health` need `Authorization: Bearer <key>` (401 otherwise);
//! CORS is off unless origins are given ([`AppState::with_cors_origins`]).
//!
//! The `switchyard-server` binary serves a model registry file:
//! `cargo run --release -p switchyard-server -- --config models.toml --bind
//! 127.0.0.1:8080`. The file's `[server]` table ([`config`]) sets the
//! address, CORS origins and limits; flags override it. In a program, build the [`router`] over an
//! [`AppState`] and serve it:
//!
//! ```no_run
//! use std::sync::Arc;
//! use switchyard::Engine;
//! use switchyard::config::Registry;
//! use switchyard_server::{AppState, Limits, serve};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::from_file("models.toml".as_ref())?;
//! let engine = Arc::new(Engine::builder().registry(registry).build()?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let state = AppState::new(engine, Limits::default());
//! serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod app;
mod auth;
pub mod config;
mod error;
pub mod native;
pub mod openai;
pub mod openapi;
pub mod scheduling;
mod state;

pub use app::{router, serve};
pub use auth::ApiKeys;
pub use config::{LimitOverrides, ServerConfig};
pub use error::{ApiError, RETRY_AFTER_SECS, ServerError};
pub use state::{AppState, Limits};
