//! Streamed completions as server-sent events: one `data:` event per new
//! piece of text of any choice, each choice's last carrying its finish
//! reason, then (when asked) a usage chunk with no choices, then
//! `data: [DONE]`. A choice that fails mid-stream sends an error object
//! and ends the stream. When the client goes away the response stream is
//! dropped, and with it every generation's [`TokenStream`], which cancels
//! them.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};
use serde::Serialize;
use switchyard::TokenStream;
use switchyard::text::TextDelta;

use super::completions::finish_name;
use super::types::{ChatChunk, ChatChunkChoice, ChatDelta, TextChoice, TextCompletion, UsageOut};
use crate::error::ApiError;
use crate::scheduling::timed_out;
use crate::state::unix_now;

/// Which OpenAI chunk shape a stream writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `chat.completion.chunk`.
    Chat,
    /// `text_completion`.
    Text,
}

type Item = (usize, switchyard::Result<TextDelta>);

/// Where a stream is.
enum Phase {
    /// Choices are still producing text.
    Running,
    /// Every choice ended: the usage chunk (if asked) and `[DONE]` remain.
    Finishing,
    /// `[DONE]` remains.
    Done,
    /// Nothing remains.
    Ended,
}

struct Events {
    flavor: Flavor,
    id: String,
    model: String,
    created: u64,
    merged: SelectAll<BoxStream<'static, Item>>,
    /// Per choice: whether its prompt tokens count, whether it has sent a
    /// chunk yet.
    choices: Vec<(bool, bool)>,
    usage: UsageOut,
    include_usage: bool,
    /// When the request must be over.
    deadline: Option<tokio::time::Instant>,
    phase: Phase,
}

impl Events {
    fn json(&self, value: &impl Serialize) -> Event {
        Event::default().data(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
    }

    /// A chunk of the stream's shape with one choice's news, or (`None`)
    /// the usage chunk, which has no choices.
    fn chunk(&self, choice: Option<(usize, String, Option<&'static str>, bool)>) -> Event {
        let usage = choice.is_none().then_some(self.usage);
        match self.flavor {
            Flavor::Chat => self.json(&ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: choice
                    .map(|(index, text, finish, first)| ChatChunkChoice {
                        index,
                        delta: ChatDelta {
                            role: first.then_some("assistant"),
                            content: (!text.is_empty() || first).then_some(text),
                        },
                        finish_reason: finish,
                    })
                    .into_iter()
                    .collect(),
                usage,
            }),
            Flavor::Text => self.json(&TextCompletion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: choice
                    .map(|(index, text, finish, _)| TextChoice {
                        index,
                        text,
                        logprobs: None,
                        finish_reason: finish,
                    })
                    .into_iter()
                    .collect(),
                usage,
            }),
        }
    }

    /// The next piece of any choice: `None` when all ended, an error when
    /// one failed or the deadline passed.
    async fn next_item(&mut self) -> Option<Result<(usize, TextDelta), ApiError>> {
        let next = match self.deadline {
            None => self.merged.next().await,
            Some(at) => match tokio::time::timeout_at(at, self.merged.next()).await {
                Ok(next) => next,
                Err(_) => return Some(Err(timed_out())),
            },
        };
        next.map(|(index, item)| item.map(|delta| (index, delta)).map_err(ApiError::from))
    }

    /// The next event, or `None` at the end.
    async fn next(&mut self) -> Option<Event> {
        loop {
            match self.phase {
                Phase::Running => match self.next_item().await {
                    Some(Ok((index, delta))) => {
                        let (counts_prompt, started) = self.choices[index];
                        self.choices[index].1 = true;
                        let finish = delta.finish.map(|f| {
                            let prompt = if counts_prompt {
                                f.usage.prompt_tokens
                            } else {
                                0
                            };
                            self.usage.add(prompt, f.usage.completion_tokens);
                            finish_name(f.reason)
                        });
                        if delta.text.is_empty() && finish.is_none() {
                            continue;
                        }
                        return Some(self.chunk(Some((index, delta.text, finish, !started))));
                    }
                    Some(Err(e)) => {
                        // The other choices are dropped with the stream.
                        self.phase = Phase::Done;
                        self.merged = SelectAll::new();
                        return Some(Event::default().data(e.to_json()));
                    }
                    None => self.phase = Phase::Finishing,
                },
                Phase::Finishing => {
                    self.phase = Phase::Done;
                    if self.include_usage {
                        return Some(self.chunk(None));
                    }
                }
                Phase::Done => {
                    self.phase = Phase::Ended;
                    return Some(Event::default().data("[DONE]"));
                }
                Phase::Ended => return None,
            }
        }
    }
}

/// The server-sent-event response over `streams` (each with whether its
/// prompt tokens count in the usage; choice `i` is the `i`-th).
pub(crate) fn sse(
    flavor: Flavor,
    id: String,
    model: String,
    streams: Vec<(bool, TokenStream)>,
    include_usage: bool,
    deadline: Option<tokio::time::Instant>,
) -> Response {
    let choices = streams.iter().map(|(counts, _)| (*counts, false)).collect();
    let merged = stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, (_, s))| StreamExt::map(s, move |item| (i, item)).boxed()),
    );
    let events = Events {
        flavor,
        id,
        model,
        created: unix_now(),
        merged,
        choices,
        usage: UsageOut::default(),
        include_usage,
        deadline,
        phase: Phase::Running,
    };
    let body = stream::unfold(events, |mut events| async move {
        let event = events.next().await?;
        Some((Ok::<_, Infallible>(event), events))
    });
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}
