//! `POST /v1/chat/completions` and `POST /v1/completions`: each prompt's
//! `n` choices are separate engine requests, batched by the engine with
//! everything else in flight; whole answers are awaited, streamed ones
//! become server-sent events.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use switchyard::text::{ChatMessage, Completion, FinishReason};
use switchyard::{GenerationOptions, Handle, Request};

use super::parse_body;
use super::stream::{Flavor, sse};
use super::types::{
    ChatChoice, ChatCompletion, ChatCompletionRequest, ChatMessageIn, ChatMessageOut,
    CompletionRequest, MessageContent, Sampling, TextChoice, TextCompletion, UsageOut,
};
use crate::error::ApiError;
use crate::scheduling::{Scheduling, within};
use crate::state::{AppState, Limits, unix_now};

/// OpenAI's name for why a choice ended.
pub(crate) fn finish_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

/// The engine's options for choice `choice` of a request, and `n`.
fn options(sampling: &Sampling, limits: &Limits) -> Result<(GenerationOptions, u64), ApiError> {
    let n = sampling.n.unwrap_or(1);
    if n == 0 || n > limits.max_choices {
        return Err(ApiError::invalid(
            "n",
            format!("n must be between 1 and {}", limits.max_choices),
        ));
    }
    let max_tokens = sampling.max_completion_tokens.or(sampling.max_tokens);
    if let Some(m) = max_tokens.filter(|&m| m == 0 || m > limits.max_tokens) {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "max_tokens is {m}; it must be between 1 and {}",
                limits.max_tokens
            ),
        ));
    }
    let options = GenerationOptions {
        max_tokens: max_tokens.map(|m| m as usize),
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        seed: sampling.seed,
        stop: sampling.stop.clone().map(|s| s.into_vec()),
        ..GenerationOptions::default()
    };
    Ok((options, n))
}

/// Choice `index`'s options: choices after the first get their own seed
/// (the request's seed, or 0, plus the index) so that sampled choices
/// differ and a seeded request repeats.
fn for_choice(options: &GenerationOptions, index: u64) -> GenerationOptions {
    let mut options = options.clone();
    if index > 0 {
        options.seed = Some(options.seed.unwrap_or(0).wrapping_add(index));
    }
    options
}

fn chat_messages(messages: Vec<ChatMessageIn>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let text = match m.content {
                None => String::new(),
                Some(MessageContent::Text(t)) => t,
                Some(MessageContent::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content"),
                                    format!("content parts of type `{kind}` are not served"),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            let role = if m.role == "developer" {
                "system".to_owned()
            } else {
                m.role
            };
            Ok(ChatMessage::new(role, text))
        })
        .collect()
}

/// Submits every request; on a refusal the ones already queued are
/// dropped, which cancels them.
fn submit_all(state: &AppState, requests: Vec<Request>) -> Result<Vec<Handle>, ApiError> {
    requests
        .into_iter()
        .map(|r| state.engine.submit(r).map_err(ApiError::from))
        .collect()
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatCompletionRequest, params(("X-Priority" = Option<String>, Header, description = "urgent, high, normal or low"), ("X-Request-Timeout" = Option<f64>, Header, description = "seconds")), responses((status = 200, description = "The answer, or server-sent `chat.completion.chunk` events when `stream` is true", content((ChatCompletion = "application/json"), (String = "text/event-stream"))), (status = 400, description = "Bad request", body = inline(crate::openapi::ErrorDoc)), (status = 404, description = "Unknown model", body = inline(crate::openapi::ErrorDoc)), (status = 413, description = "Body over the limit", body = inline(crate::openapi::ErrorDoc)), (status = 429, description = "Queue full; see Retry-After", body = inline(crate::openapi::ErrorDoc)), (status = 504, description = "Past its timeout", body = inline(crate::openapi::ErrorDoc)), (status = 503, description = "Shutting down or out of memory", body = inline(crate::openapi::ErrorDoc)), (status = 500, description = "The pipeline failed", body = inline(crate::openapi::ErrorDoc))))]
/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match chat(state, headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn chat(
    state: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ChatCompletionRequest = parse_body(body)?;
    let scheduling = Scheduling::resolve(&headers, &request.scheduling)?;
    let (options, n) = options(&request.sampling, &state.limits)?;
    let messages = chat_messages(request.messages)?;
    let requests = (0..n)
        .map(|i| {
            scheduling.apply(
                Request::chat(request.model.clone(), messages.clone())
                    .with_options(for_choice(&options, i)),
            )
        })
        .collect();
    let created = unix_now();
    let (id, completions, usage) = match answer(
        &state,
        requests,
        Flavor::Chat,
        &request.model,
        &request.sampling,
        n,
        &scheduling,
    )
    .await?
    {
        Answered::Streamed(response) => return Ok(response),
        Answered::Whole(id, completions, usage) => (id, completions, usage),
    };
    let choices = completions
        .into_iter()
        .enumerate()
        .map(|(index, completion)| ChatChoice {
            index,
            message: ChatMessageOut {
                role: "assistant",
                content: completion.text,
            },
            finish_reason: finish_name(completion.finish_reason),
        })
        .collect();
    Ok(Json(ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model: request.model,
        choices,
        usage,
    })
    .into_response())
}

/// A request's choices: streamed as events, or awaited in order.
enum Answered {
    Streamed(Response),
    Whole(String, Vec<Completion>, UsageOut),
}

/// Submits `requests`, the choices of prompts of `per_prompt` choices
/// each, prompt-major, then streams or awaits them; a prompt's tokens count
/// once, with its first choice. The completion's id comes from the first
/// request's.
async fn answer(
    state: &AppState,
    requests: Vec<Request>,
    flavor: Flavor,
    model: &str,
    sampling: &Sampling,
    per_prompt: u64,
    scheduling: &Scheduling,
) -> Result<Answered, ApiError> {
    let handles = submit_all(state, requests)?;
    let prefix = match flavor {
        Flavor::Chat => "chatcmpl",
        Flavor::Text => "cmpl",
    };
    let id = handles
        .first()
        .map_or_else(String::new, |h| format!("{prefix}-{}", h.id()));
    let per_prompt = per_prompt.max(1) as usize;
    let first_of_prompt = |i: usize| i.is_multiple_of(per_prompt);
    if sampling.stream.unwrap_or(false) {
        let include_usage = sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let streams = handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| (first_of_prompt(i), h.into_stream()))
            .collect();
        return Ok(Answered::Streamed(sse(
            flavor,
            id,
            model.to_owned(),
            streams,
            include_usage,
            scheduling.deadline(),
        )));
    }
    within(scheduling.deadline(), async move {
        let mut usage = UsageOut::default();
        let mut completions = Vec::with_capacity(handles.len());
        for (i, handle) in handles.into_iter().enumerate() {
            let completion = handle
                .await?
                .into_completion()
                .ok_or_else(|| ApiError::from(wrong_response(model)))?;
            let prompt = if first_of_prompt(i) {
                completion.usage.prompt_tokens
            } else {
                0
            };
            usage.add(prompt, completion.usage.completion_tokens);
            completions.push(completion);
        }
        Ok(Answered::Whole(id, completions, usage))
    })
    .await
}

fn wrong_response(model: &str) -> switchyard::EngineError {
    switchyard::EngineError::Failed {
        model: model.to_owned(),
        reason: "the engine answered with something other than a completion".into(),
    }
}

#[utoipa::path(post, path = "/v1/completions", tag = "openai", request_body = CompletionRequest, params(("X-Priority" = Option<String>, Header, description = "urgent, high, normal or low"), ("X-Request-Timeout" = Option<f64>, Header, description = "seconds")), responses((status = 200, description = "The continuations, or server-sent `text_completion` events when `stream` is true", content((TextCompletion = "application/json"), (String = "text/event-stream"))), (status = 400, description = "Bad request", body = inline(crate::openapi::ErrorDoc)), (status = 404, description = "Unknown model", body = inline(crate::openapi::ErrorDoc)), (status = 413, description = "Body over the limit", body = inline(crate::openapi::ErrorDoc)), (status = 429, description = "Queue full; see Retry-After", body = inline(crate::openapi::ErrorDoc)), (status = 504, description = "Past its timeout", body = inline(crate::openapi::ErrorDoc)), (status = 503, description = "Shutting down or out of memory", body = inline(crate::openapi::ErrorDoc)), (status = 500, description = "The pipeline failed", body = inline(crate::openapi::ErrorDoc))))]
/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match complete(state, headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn complete(
    state: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse_body(body)?;
    let scheduling = Scheduling::resolve(&headers, &request.scheduling)?;
    let (options, n) = options(&request.sampling, &state.limits)?;
    let prompts = request.prompt.into_vec();
    if prompts.is_empty() || prompts.len() > state.limits.max_inputs {
        return Err(ApiError::invalid(
            "prompt",
            format!("give between 1 and {} prompts", state.limits.max_inputs),
        ));
    }
    // Prompt-major: prompt p's choice c is choice p * n + c.
    let mut requests = Vec::new();
    for prompt in &prompts {
        for c in 0..n {
            requests.push(
                scheduling.apply(
                    Request::complete(request.model.clone(), prompt.clone())
                        .with_options(for_choice(&options, c)),
                ),
            );
        }
    }
    let created = unix_now();
    let (id, completions, usage) = match answer(
        &state,
        requests,
        Flavor::Text,
        &request.model,
        &request.sampling,
        n,
        &scheduling,
    )
    .await?
    {
        Answered::Streamed(response) => return Ok(response),
        Answered::Whole(id, completions, usage) => (id, completions, usage),
    };
    let choices = completions
        .into_iter()
        .enumerate()
        .map(|(index, completion)| TextChoice {
            index,
            text: completion.text,
            logprobs: None,
            finish_reason: Some(finish_name(completion.finish_reason)),
        })
        .collect();
    Ok(Json(TextCompletion {
        id,
        object: "text_completion",
        created,
        model: request.model,
        choices,
        usage: Some(usage),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_choices_get_their_own_seeds() {
        let base = GenerationOptions {
            seed: Some(10),
            ..GenerationOptions::default()
        };
        assert_eq!(for_choice(&base, 0).seed, Some(10));
        assert_eq!(for_choice(&base, 2).seed, Some(12));
        assert_eq!(for_choice(&GenerationOptions::default(), 0).seed, None);
        assert_eq!(for_choice(&GenerationOptions::default(), 3).seed, Some(3));
    }

    #[test]
    fn n_and_max_tokens_are_bounded() {
        let limits = Limits::default();
        let bad_n = Sampling {
            n: Some(0),
            ..Sampling::default()
        };
        assert_eq!(
            options(&bad_n, &limits).err().and_then(|e| e.param),
            Some("n".into())
        );
        let too_long = Sampling {
            max_tokens: Some(limits.max_tokens + 1),
            ..Sampling::default()
        };
        assert!(options(&too_long, &limits).is_err());
        let newer_name_wins = Sampling {
            max_tokens: Some(limits.max_tokens + 1),
            max_completion_tokens: Some(5),
            ..Sampling::default()
        };
        assert_eq!(
            options(&newer_name_wins, &limits)
                .ok()
                .and_then(|(o, _)| o.max_tokens),
            Some(5)
        );
    }

    #[test]
    fn only_text_content_parts_are_read() {
        let parts: Vec<ChatMessageIn> = serde_json::from_str(
            r#"[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]"#,
        )
        .unwrap_or_default();
        let messages = chat_messages(parts);
        assert_eq!(messages.ok(), Some(vec![ChatMessage::new("system", "ab")]));
        let image: Vec<ChatMessageIn> = serde_json::from_str(
            r#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]"#,
        )
        .unwrap_or_default();
        assert!(chat_messages(image).is_err());
        assert!(chat_messages(Vec::new()).is_err());
    }
}
