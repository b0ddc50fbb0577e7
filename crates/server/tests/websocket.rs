//! `GET /api/ws` over loopback on tiny real-format models: executions
//! stream their text and end with their result, subscriptions follow
//! progress, cancel works by id, bad messages get error objects, and a
//! closed socket cancels what it started.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Served, engine_completion, greedy, serve_tiny};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard::Request;
use switchyard_server::Limits;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn served() -> (tempfile::TempDir, Served) {
    let dir = tempfile::tempdir().unwrap();
    let served = serve_tiny(dir.path(), Limits::default());
    (dir, served)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(s: &Served) -> Socket {
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/ws", s.addr))
        .await
        .unwrap();
    socket
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

async fn receive(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .expect("a message within a minute")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = message {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Messages until (and with) the first of `kind`.
async fn until(socket: &mut Socket, kind: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let m = receive(socket).await;
        let last = m["type"] == kind;
        seen.push(m);
        if last {
            return seen;
        }
    }
}

#[test]
fn an_execution_streams_its_text_and_ends_with_its_result() {
    let (_dir, s) = served();
    let direct = engine_completion(
        &s.engine,
        Request::complete("llama", "Once upon a time").with_options(greedy(8)),
    );
    runtime().block_on(async {
        let mut socket = connect(&s).await;
        send(
            &mut socket,
            json!({"type": "execute", "request": {
                "model": "llama", "task": "generate", "prompt": "Once upon a time",
                "options": {"max_tokens": 8, "temperature": 0},
            }}),
        )
        .await;
        let messages = until(&mut socket, "done").await;
        assert_eq!(messages[0]["type"], "accepted");
        let id = messages[0]["id"].as_str().unwrap().to_owned();
        assert!(messages.iter().all(|m| m["id"] == id.as_str()));
        let streamed: String = messages
            .iter()
            .filter(|m| m["type"] == "delta")
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        let done = messages.last().unwrap();
        assert_eq!(streamed, direct.text);
        assert_eq!(done["result"]["text"], direct.text.as_str());
        assert_eq!(done["result"]["completion_tokens"], direct.usage.completion_tokens);

        send(
            &mut socket,
            json!({"type": "execute", "request": {"model": "bert", "task": "embed", "inputs": ["a", "b"]}}),
        )
        .await;
        let done = until(&mut socket, "done").await.pop().unwrap();
        assert_eq!(done["result"]["kind"], "embeddings");

        send(&mut socket, json!({"type": "dance"})).await;
        let error = receive(&mut socket).await;
        assert_eq!(error["type"], "error");
        assert!(error["error"]["message"].is_string());
        send(
            &mut socket,
            json!({"type": "execute", "request": {"model": "nope", "task": "generate", "prompt": "x"}}),
        )
        .await;
        let error = receive(&mut socket).await;
        assert_eq!((error["type"].clone(), error["status"].clone()), (json!("error"), json!(404)));
        send(&mut socket, json!({"type": "subscribe", "id": "req-999999"})).await;
        assert_eq!(receive(&mut socket).await["type"], "error");
    });
}

#[test]
fn a_subscription_follows_progress_and_cancel_ends_it() {
    let (_dir, s) = served();
    // A long generation, streamed over plain HTTP by another client.
    let _http = common::open_long_stream(s.addr);
    let id = s.engine.sessions()[0].id.to_string();
    runtime().block_on(async {
        let mut socket = connect(&s).await;
        send(&mut socket, json!({"type": "subscribe", "id": id})).await;
        let (a, b) = (receive(&mut socket).await, receive(&mut socket).await);
        for m in [&a, &b] {
            assert_eq!(
                (m["type"].clone(), m["id"].clone()),
                (json!("progress"), json!(id))
            );
            assert_eq!(m["total"], 4000);
        }
        assert!(b["done"].as_u64() > a["done"].as_u64(), "{a} then {b}");
        send(&mut socket, json!({"type": "cancel", "id": id})).await;
        let rest = until(&mut socket, "ended").await;
        assert!(
            rest.iter()
                .any(|m| m["type"] == "cancelled" && m["found"] == true),
            "{rest:?}"
        );
    });
    assert!(s.engine.sessions().is_empty());
}

#[test]
fn closing_the_socket_cancels_what_it_started() {
    let (_dir, s) = served();
    runtime().block_on(async {
        let mut socket = connect(&s).await;
        send(
            &mut socket,
            json!({"type": "execute", "request": {
                "model": "llama", "task": "chat",
                "messages": [{"role": "user", "content": "Tell me a long story."}],
                "options": {"max_tokens": 4000, "temperature": 0},
            }}),
        )
        .await;
        until(&mut socket, "delta").await;
        assert_eq!(s.engine.sessions().len(), 1);
        socket.close(None).await.unwrap();
    });
    let start = Instant::now();
    while !s.engine.sessions().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(1), "still running");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.engine.metrics().models["llama"].cancelled, 1);
}
