//! What every handler shares: the engine and the service's limits.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;
use switchyard::Engine;

use crate::auth::ApiKeys;
use crate::error::ServerError;
use crate::native::AsyncResults;

/// Bounds on what one request may ask, from the command line or config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, in bytes (larger ones get 413).
    pub max_body_bytes: usize,
    /// Most new tokens one choice may ask for.
    pub max_tokens: u64,
    /// Most choices (`n`) per prompt.
    pub max_choices: u64,
    /// Most prompts or embedding inputs in one request.
    pub max_inputs: usize,
    /// Longest image side, in pixels.
    pub max_image_side: usize,
    /// Most images per request.
    pub max_images: u64,
    /// Most denoising steps per image.
    pub max_steps: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_tokens: 4096,
            max_choices: 8,
            max_inputs: 256,
            max_image_side: 1024,
            max_images: 4,
            max_steps: 150,
        }
    }
}

/// The handlers' shared state: cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The engine every request runs on.
    pub engine: Arc<Engine>,
    /// Request bounds.
    pub limits: Limits,
    /// Unix seconds the service started (`created` of `/v1/models`).
    pub started: u64,
    /// Keys a request must name (none: open).
    pub api_keys: ApiKeys,
    /// Browser origins allowed to call (none: CORS off).
    pub cors_origins: Vec<HeaderValue>,
    /// Results of `?async=true` executions.
    pub results: Arc<AsyncResults>,
}

impl AppState {
    /// State over `engine` with `limits`, started now.
    pub fn new(engine: Arc<Engine>, limits: Limits) -> Self {
        Self {
            engine,
            limits,
            started: unix_now(),
            api_keys: ApiKeys::default(),
            cors_origins: Vec::new(),
            results: Arc::default(),
        }
    }

    /// Requires one of `keys` on every route but `/health`.
    pub fn with_api_keys(mut self, keys: ApiKeys) -> Self {
        self.api_keys = keys;
        self
    }

    /// Lets browsers on `origins` (`https://app.example`) call the service;
    /// without any, CORS stays off and browsers refuse cross-origin calls.
    ///
    /// # Errors
    /// [`ServerError::Config`] for an origin that is not a valid header
    /// value.
    pub fn with_cors_origins<S: AsRef<str>>(
        mut self,
        origins: impl IntoIterator<Item = S>,
    ) -> Result<Self, ServerError> {
        for origin in origins {
            let origin = origin.as_ref();
            let value = HeaderValue::from_str(origin.trim()).map_err(|_| ServerError::Config {
                reason: format!("`{origin}` is not an origin"),
            })?;
            self.cors_origins.push(value);
        }
        Ok(self)
    }
}

/// Seconds since the Unix epoch (0 on a clock before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
