//! Any bytes as the body of each POST endpoint of the HTTP service get a
//! 4xx and an OpenAI error object (`{"error": {"message", "type", ...}}`),
//! never a panic or a 5xx. The engine serves no models, so a body that
//! parses and passes the service's checks ends at `model_not_found`.
#![no_main]

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use libfuzzer_sys::fuzz_target;
use switchyard::Engine;
use switchyard_server::{AppState, Limits, router};
use tower::ServiceExt;

const POSTS: [&str; 7] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/images/generations",
    "/api/inference/execute",
    "/api/inference/execute?async=true",
    "/api/inference/validate",
];

static SERVICE: LazyLock<(tokio::runtime::Runtime, Router)> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let engine = Arc::new(Engine::builder().build().expect("an engine without models"));
    let limits = Limits {
        max_body_bytes: 1 << 16,
        ..Limits::default()
    };
    (runtime, router(AppState::new(engine, limits)))
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let path = POSTS[usize::from(selector) % POSTS.len()];
    let (runtime, service) = &*SERVICE;
    let (status, json) = runtime.block_on(async {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_vec()))
            .expect("a request");
        let response = service.clone().oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        (status, serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default())
    });
    assert!((400..500).contains(&status), "status {status}");
    assert!(json["error"]["message"].is_string(), "no error object: {json}");
    assert!(json["error"]["type"].is_string(), "no error type: {json}");
});
