//! What protects the service and its engine: a full queue is 429, priority
//! and timeout per request, API keys, CORS; over real loopback HTTP on tiny
//! real-format models.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Served, get, post, request_with, serve_tiny};
use serde_json::{Value, json};
use switchyard::Request;
use switchyard_server::{ApiKeys, AppState, Limits};

fn served(limits: Limits) -> (tempfile::TempDir, Served) {
    let dir = tempfile::tempdir().unwrap();
    let served = serve_tiny(dir.path(), limits);
    (dir, served)
}

/// A model whose weights are a named pipe: loading it blocks until the
/// pipe is written, holding the engine's single dispatcher and so its
/// queue still.
#[cfg(target_os = "linux")]
#[test]
fn a_full_queue_is_429_with_retry_after() {
    use std::time::{Duration, Instant};
    use switchyard::Engine;
    use switchyard::config::{ModelKind, ModelSource, ModelSpec};
    use switchyard_testkit::tiny::{TinyBert, write_bert};
    let dir = tempfile::tempdir().unwrap();
    let bert = dir.path().join("bert");
    write_bert(&bert, &TinyBert::default(), 3).unwrap();
    let weights = bert.join("model.safetensors");
    let real = std::fs::read(&weights).unwrap();
    std::fs::remove_file(&weights).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&weights)
        .status()
        .unwrap();
    assert!(made.success());
    let engine = Engine::builder()
        .model(ModelSpec::new(
            "bert",
            ModelKind::Embedding,
            ModelSource::Path(bert),
        ))
        .unwrap()
        .queue_capacity(1)
        .dispatchers(1)
        .build()
        .unwrap();
    let s = common::serve_engine(std::sync::Arc::new(engine), Limits::default());
    let embed = || s.engine.submit(Request::embed("bert", vec!["x".into()]));
    // The first request is taken and starts the load, which blocks; the
    // next waits in the queue, which is then full.
    let mut held = vec![embed().unwrap()];
    let start = Instant::now();
    loop {
        match embed() {
            Ok(h) => held.push(h),
            Err(switchyard::EngineError::QueueFull { .. }) if held.len() >= 2 => break,
            Err(switchyard::EngineError::QueueFull { .. }) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the queue never filled"
        );
    }
    let reply = post(
        s.addr,
        "/v1/embeddings",
        &json!({"model": "bert", "input": "y"}),
    );
    reply.assert_status(429);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
    // Feed the pipe until the accepted requests have ended: none is lost.
    // (A pipe cannot be mapped, so the load may fail rather than succeed.)
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::write(&weights, &real);
            }
        })
    };
    for h in held {
        match h.wait() {
            Ok(r) => assert_eq!(r.into_embeddings().map(|v| v.len()), Some(1)),
            Err(e) => assert!(
                matches!(e, switchyard::EngineError::ModelLoad { .. }),
                "{e}"
            ),
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    // Unblock a writer waiting for a reader: a non-blocking open for
    // reading (Linux's O_NONBLOCK) returns at once, with or without one.
    let _ = std::os::unix::fs::OpenOptionsExt::custom_flags(
        std::fs::OpenOptions::new().read(true),
        0o4000,
    )
    .open(dir.path().join("bert/model.safetensors"));
    feeder.join().unwrap();
}

#[test]
fn priorities_and_timeouts_come_from_the_body_or_headers() {
    let (_dir, s) = served(Limits::default());
    let short = json!({"model": "llama", "prompt": "hi", "max_tokens": 2});
    let headers = [("X-Priority", "low"), ("X-Request-Timeout", "30")];
    let ok = request_with(
        s.addr,
        "POST",
        "/v1/completions",
        &headers,
        short.to_string().as_bytes(),
    );
    assert_eq!(ok.status, 200);
    let bad = request_with(
        s.addr,
        "POST",
        "/v1/completions",
        &[("X-Request-Timeout", "soon")],
        short.to_string().as_bytes(),
    );
    assert_eq!(
        (bad.status, bad.json()["error"]["param"].clone()),
        (400, json!("timeout"))
    );

    // A long generation past its timeout: 504, and it stops running.
    let long = json!({
        "model": "llama",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 4000,
        "temperature": 0,
        "timeout": 0.02,
    });
    let late = post(s.addr, "/v1/chat/completions", &long);
    assert_eq!(late.status, 504, "{}", String::from_utf8_lossy(&late.body));
    assert_eq!(late.json()["error"]["type"], "timeout_error");
    // Streamed, the stream ends with the error object, then [DONE].
    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    let events = post(s.addr, "/v1/chat/completions", &streamed).events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "timeout_error", "{events:?}");
    let start = std::time::Instant::now();
    while !s.engine.sessions().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "still running"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The tiny models behind `keys` and `origins`.
fn guarded(keys: &[&str], origins: &[&str]) -> (tempfile::TempDir, Served) {
    let dir = tempfile::tempdir().unwrap();
    let plain = serve_tiny(dir.path(), Limits::default());
    let state = AppState::new(plain.engine.clone(), Limits::default())
        .with_api_keys(ApiKeys::new(keys))
        .with_cors_origins(origins)
        .unwrap();
    drop(plain);
    (dir, common::serve_state(state))
}

#[test]
fn with_api_keys_every_route_but_health_needs_one() {
    let (_dir, s) = guarded(&["k-one", "k-two"], &[]);
    let body = json!({"model": "bert", "input": "x"}).to_string();
    let send = |headers: &[(&str, &str)]| {
        request_with(s.addr, "POST", "/v1/embeddings", headers, body.as_bytes())
    };
    let missing = send(&[]);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(missing.json()["error"]["code"], "invalid_api_key");
    assert_eq!(send(&[("Authorization", "Bearer k-three")]).status, 401);
    assert_eq!(send(&[("Authorization", "Basic k-one")]).status, 401);
    assert_eq!(send(&[("Authorization", "Bearer k-two")]).status, 200);
    assert_eq!(get(s.addr, "/v1/models").status, 401);
    assert_eq!(get(s.addr, "/health").status, 200);
}

#[test]
fn cors_is_off_unless_origins_are_given() {
    let preflight = |s: &Served| {
        request_with(
            s.addr,
            "OPTIONS",
            "/v1/chat/completions",
            &[
                ("Origin", "https://app.example"),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
            b"",
        )
    };
    let (_dir, open) = guarded(&[], &[]);
    assert_eq!(preflight(&open).header("access-control-allow-origin"), None);
    let (_dir2, allowed) = guarded(&["k"], &["https://app.example"]);
    let reply = preflight(&allowed);
    assert_eq!(reply.status, 200, "a preflight needs no key");
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let other = request_with(
        allowed.addr,
        "GET",
        "/health",
        &[("Origin", "https://elsewhere.example")],
        b"",
    );
    assert_eq!(other.header("access-control-allow-origin"), None);
}
