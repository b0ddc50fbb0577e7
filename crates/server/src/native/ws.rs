//! `GET /api/ws`: a WebSocket for streaming results and following
//! progress. The client sends JSON messages tagged by `type`:
//!
//! - `{"type": "execute", "request": {...}}`: a native request (as
//!   `POST /api/inference/execute` takes). The server answers `accepted`
//!   (with the id), then for generations a `delta` per new piece of text,
//!   for other tasks a `progress` whenever the count of done units moves,
//!   then `done` with the result (or `error`).
//! - `{"type": "subscribe", "id": "req-N"}`: `progress` of any queued or
//!   running request until it ends, then `ended` (with the result of an
//!   asynchronous execution when there is one).
//! - `{"type": "cancel", "id": "req-N"}`: `cancelled` with `found`.
//!
//! Every server message carries `type` and, where it concerns one
//! request, `id`. A bad message gets an `error` with OpenAI's error
//! object. Closing the socket cancels the requests it started.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard::core::RequestId;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::execute::{NativeRequest, NativeResult, NativeTask, to_result};
use crate::error::ApiError;
use crate::scheduling::{Scheduling, within};
use crate::state::AppState;

/// How often progress is sampled.
const PROGRESS_EVERY: Duration = Duration::from_millis(50);

/// A client's message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Execute { request: Box<NativeRequest> },
    Subscribe { id: String },
    Cancel { id: String },
}

/// `GET /api/ws`.
pub(crate) async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve_socket(socket, state))
}

type Outbox = mpsc::Sender<Value>;

fn error_message(id: Option<&str>, e: &ApiError) -> Value {
    let mut m = json!({ "type": "error", "status": e.status.as_u16(), "error": e.object() });
    if let Some(id) = id {
        m["id"] = json!(id);
    }
    m
}

async fn serve_socket(socket: WebSocket, state: AppState) {
    let (mut sink, mut incoming) = socket.split();
    let (outbox, mut outgoing) = mpsc::channel::<Value>(256);
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if sink
                .send(Message::Text(message.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    // Dropped (aborted) when the socket closes: their handles and streams
    // go with them, which cancels the requests.
    let mut work = JoinSet::new();
    while let Some(Ok(message)) = incoming.next().await {
        let text = match message {
            Message::Text(t) => t.to_string(),
            Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
            Message::Close(_) => break,
            _ => continue,
        };
        match serde_json::from_str::<ClientMessage>(&text) {
            Ok(ClientMessage::Execute { request }) => {
                work.spawn(execute(state.clone(), *request, outbox.clone()));
            }
            Ok(ClientMessage::Subscribe { id }) => {
                work.spawn(subscribe(state.clone(), id, outbox.clone()));
            }
            Ok(ClientMessage::Cancel { id }) => {
                let found = id
                    .parse::<RequestId>()
                    .is_ok_and(|rid| state.engine.cancel(rid));
                let _ = outbox
                    .send(json!({ "type": "cancelled", "id": id, "found": found }))
                    .await;
            }
            Err(e) => {
                let _ = outbox
                    .send(error_message(None, &ApiError::bad_body(e)))
                    .await;
            }
        }
        // Reap finished work so the set does not grow without bound.
        while work.try_join_next().is_some() {}
    }
    work.abort_all();
    drop(outbox);
    let _ = writer.await;
}

async fn execute(state: AppState, request: NativeRequest, outbox: Outbox) {
    let started = (|| {
        let scheduling = Scheduling::resolve(&Default::default(), &request.scheduling)?;
        let engine_request = scheduling.apply(request.to_request(&state.limits)?);
        Ok::<_, ApiError>((scheduling, state.engine.submit(engine_request)?))
    })();
    let (scheduling, handle) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = outbox.send(error_message(None, &e)).await;
            return;
        }
    };
    let id = handle.id().to_string();
    let _ = outbox.send(json!({ "type": "accepted", "id": id })).await;
    let streams_text = matches!(
        request.task,
        NativeTask::Generate { .. } | NativeTask::Chat { .. }
    );
    let outcome = if streams_text {
        let mut stream = handle.into_stream();
        let (mut text, mut result) = (String::new(), None);
        let run = async {
            while let Some(delta) = StreamExt::next(&mut stream).await {
                let delta = delta?;
                if !delta.text.is_empty() {
                    let _ = outbox
                        .send(json!({ "type": "delta", "id": id, "text": delta.text }))
                        .await;
                }
                text.push_str(&delta.text);
                if let Some(f) = delta.finish {
                    result = Some(NativeResult::Text {
                        text: std::mem::take(&mut text),
                        finish_reason: crate::openai::finish_name(f.reason),
                        prompt_tokens: f.usage.prompt_tokens,
                        completion_tokens: f.usage.completion_tokens,
                    });
                    break;
                }
            }
            result.ok_or_else(|| ApiError::from(switchyard::EngineError::Cancelled))
        };
        within(scheduling.deadline(), run).await
    } else {
        let rid = handle.id();
        let progress = follow(&state, rid, &id, &outbox);
        let finished = within(scheduling.deadline(), async { Ok(handle.await?) });
        tokio::pin!(finished);
        tokio::select! {
            outcome = &mut finished => outcome,
            () = progress => finished.await,
        }
        .and_then(to_result)
    };
    let message = match outcome {
        Ok(result) => json!({ "type": "done", "id": id, "result": result }),
        Err(e) => error_message(Some(&id), &e),
    };
    let _ = outbox.send(message).await;
}

/// Sends `progress` for request `rid` whenever its done count moves, until
/// the engine no longer lists it.
async fn follow(state: &AppState, rid: RequestId, id: &str, outbox: &Outbox) {
    let mut last = None;
    loop {
        let Some(progress) = state.engine.progress(rid) else {
            return;
        };
        if last != Some(progress) {
            last = Some(progress);
            let message = json!({
                "type": "progress",
                "id": id,
                "done": progress.0,
                "total": progress.1,
            });
            if outbox.send(message).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
}

async fn subscribe(state: AppState, id: String, outbox: Outbox) {
    let Ok(rid) = id.parse::<RequestId>() else {
        let e = ApiError::invalid("id", format!("`{id}` is not a request id"));
        let _ = outbox.send(error_message(Some(&id), &e)).await;
        return;
    };
    let known = state.engine.progress(rid).is_some();
    if !known && state.results.get(rid).is_none() {
        let e = ApiError::invalid("id", format!("no request `{id}` is queued or running"));
        let _ = outbox.send(error_message(Some(&id), &e)).await;
        return;
    }
    follow(&state, rid, &id, &outbox).await;
    // An asynchronous execution's outcome lands just after the engine lets
    // the request go: wait for it briefly.
    let mut ended = json!({ "type": "ended", "id": id });
    for _ in 0..20 {
        match state.results.get(rid) {
            Some(Some(Ok(done))) => {
                ended["result"] = json!(done.result);
                break;
            }
            Some(Some(Err(e))) => {
                ended["error"] = e.object();
                break;
            }
            Some(None) => tokio::time::sleep(PROGRESS_EVERY).await,
            None => break,
        }
    }
    let _ = outbox.send(ended).await;
}
