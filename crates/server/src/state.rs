//! What every handler shares: the engine and the service's limits.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use switchyard::Engine;

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_tokens: 4096,
            max_choices: 8,
            max_inputs: 256,
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
}

impl AppState {
    /// State over `engine` with `limits`, started now.
    pub fn new(engine: Arc<Engine>, limits: Limits) -> Self {
        Self {
            engine,
            limits,
            started: unix_now(),
        }
    }
}

/// Seconds since the Unix epoch (0 on a clock before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
