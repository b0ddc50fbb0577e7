//! `POST /v1/embeddings`: one engine request for all the inputs, which the
//! engine's batcher joins with other requests for the same model.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use switchyard::Request;

use super::parse_body;
use super::types::{
    EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EmbeddingVector,
};
use crate::error::ApiError;
use crate::scheduling::{Scheduling, within};
use crate::state::AppState;

/// How the vectors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Float,
    Base64,
}

fn encoding(format: Option<&str>) -> Result<Encoding, ApiError> {
    match format {
        None | Some("float") => Ok(Encoding::Float),
        Some("base64") => Ok(Encoding::Base64),
        Some(other) => Err(ApiError::invalid(
            "encoding_format",
            format!("encoding_format is `{other}`; use `float` or `base64`"),
        )),
    }
}

/// A vector as OpenAI's base64 form: its f32s' little-endian bytes.
fn to_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", request_body = EmbeddingRequest, params(("X-Priority" = Option<String>, Header, description = "urgent, high, normal or low"), ("X-Request-Timeout" = Option<f64>, Header, description = "seconds")), responses((status = 200, description = "One vector per input", body = EmbeddingResponse), (status = 400, description = "Bad request", body = inline(crate::openapi::ErrorDoc)), (status = 404, description = "Unknown model", body = inline(crate::openapi::ErrorDoc)), (status = 413, description = "Body over the limit", body = inline(crate::openapi::ErrorDoc)), (status = 429, description = "Queue full; see Retry-After", body = inline(crate::openapi::ErrorDoc)), (status = 504, description = "Past its timeout", body = inline(crate::openapi::ErrorDoc)), (status = 503, description = "Shutting down or out of memory", body = inline(crate::openapi::ErrorDoc)), (status = 500, description = "The pipeline failed", body = inline(crate::openapi::ErrorDoc))))]
/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match embed(state, headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn embed(
    state: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: EmbeddingRequest = parse_body(body)?;
    let scheduling = Scheduling::resolve(&headers, &request.scheduling)?;
    let encoding = encoding(request.encoding_format.as_deref())?;
    let inputs = request.input.into_vec();
    if inputs.is_empty() || inputs.len() > state.limits.max_inputs {
        return Err(ApiError::invalid(
            "input",
            format!("give between 1 and {} inputs", state.limits.max_inputs),
        ));
    }
    let handle = state
        .engine
        .submit(scheduling.apply(Request::embed(request.model.clone(), inputs)))?;
    let answer = within(scheduling.deadline(), async { Ok(handle.await?) })
        .await?
        .into_embeddings_with_usage()
        .ok_or_else(|| {
            ApiError::from(switchyard::EngineError::Failed {
                model: request.model.clone(),
                reason: "the engine answered with something other than embeddings".into(),
            })
        })?;
    let data = answer
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding",
            index,
            embedding: match encoding {
                Encoding::Float => EmbeddingVector::Float(v),
                Encoding::Base64 => EmbeddingVector::Base64(to_base64(&v)),
            },
        })
        .collect();
    Ok(Json(EmbeddingResponse {
        object: "list",
        data,
        model: request.model,
        usage: EmbeddingUsage {
            prompt_tokens: answer.prompt_tokens,
            total_tokens: answer.prompt_tokens,
        },
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_holds_the_little_endian_floats() {
        let encoded = to_base64(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_default();
        let back: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(back, vec![1.0, -2.5]);
    }

    #[test]
    fn only_float_and_base64_are_served() {
        assert_eq!(encoding(None).ok(), Some(Encoding::Float));
        assert_eq!(encoding(Some("base64")).ok(), Some(Encoding::Base64));
        assert_eq!(
            encoding(Some("int8")).err().and_then(|e| e.param),
            Some("encoding_format".into())
        );
    }
}
