//! Optional bearer API keys: with keys configured, every route but
//! `/health` needs `Authorization: Bearer <key>` naming one of them.
//! Keys are compared as SHA-256 digests, byte by byte without an early
//! exit, so the time taken does not tell how much of a guess was right.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The accepted keys, kept only as digests.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys, not even their digests.
        f.debug_struct("ApiKeys")
            .field("count", &self.digests.len())
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equal without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ApiKeys {
    /// The non-empty keys of `keys` (surrounding whitespace dropped).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(keys: I) -> Self {
        let digests = keys
            .into_iter()
            .map(|k| k.as_ref().trim().to_owned())
            .filter(|k| !k.is_empty())
            .map(|k| digest(&k))
            .collect();
        Self { digests }
    }

    /// Whether any key is configured (and so required).
    pub fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `key` is one of them; every configured key is compared.
    pub fn accepts(&self, key: &str) -> bool {
        let d = digest(key);
        self.digests
            .iter()
            .fold(false, |found, k| found | same(k, &d))
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_owned(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The middleware: passes requests with an accepted key (or any request
/// when no key is configured, or `/health`), answers 401 otherwise.
pub(crate) async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !state.api_keys.required() || request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        None => unauthorized("this server needs an API key: send `Authorization: Bearer <key>`"),
        Some(key) if state.api_keys.accepts(key) => next.run(request).await,
        Some(_) => unauthorized("the API key is not valid"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_keys_are_accepted() {
        let keys = ApiKeys::new(["alpha", " beta ", ""]);
        assert!(keys.required());
        assert!(keys.accepts("alpha") && keys.accepts("beta"));
        assert!(!keys.accepts("alph") && !keys.accepts("") && !keys.accepts("gamma"));
        assert!(!ApiKeys::new(Vec::<String>::new()).required());
        assert!(!ApiKeys::new([" "]).required());
    }

    #[test]
    fn debug_shows_no_key() {
        let shown = format!("{:?}", ApiKeys::new(["secret-key"]));
        assert!(!shown.contains("secret"));
        assert!(shown.contains("count: 1"));
    }
}
