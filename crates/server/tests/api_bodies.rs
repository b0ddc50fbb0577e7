//! Any bytes as the body of any POST endpoint get a 4xx and an OpenAI error
//! object, never a panic or a 5xx (the `api_bodies` fuzz target checks the
//! same under libFuzzer). The engine serves no models here, so a body that
//! parses and passes the service's own checks ends at `model_not_found`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use proptest::prelude::*;
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
        .unwrap();
    let engine = Arc::new(Engine::builder().build().unwrap());
    let limits = Limits {
        max_body_bytes: 4096,
        ..Limits::default()
    };
    (runtime, router(AppState::new(engine, limits)))
});

/// Posts `body` to `path`: the status and the parsed error object.
fn post(path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let (runtime, service) = &*SERVICE;
    runtime.block_on(async {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    })
}

fn assert_error_object(status: u16, json: &serde_json::Value, shown: &str) {
    assert!((400..500).contains(&status), "{status} for {shown}");
    let error = &json["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no error message for {shown}: {json}"
    );
    assert!(
        error["type"].is_string(),
        "no error type for {shown}: {json}"
    );
}

/// JSON that is nearly a valid request: the shapes the parsers see most.
fn near_valid() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}")),
        "[a-z ]{0,12}".prop_map(|s| format!("\"{s}\"")),
        Just("[]".to_owned()),
        Just(r#"[{"role":"user","content":"hi"}]"#.to_owned()),
        Just(r#"[{"role":"user","content":[{"type":"image_url"}]}]"#.to_owned()),
        Just(r#"["a", 1]"#.to_owned()),
        Just("{}".to_owned()),
        Just(r#""generate""#.to_owned()),
        Just(r#""embed""#.to_owned()),
        Just(r#"{"max_tokens": 0}"#.to_owned()),
        Just(r#"{"steps": 99999, "width": 7}"#.to_owned()),
    ];
    let key = prop_oneof![
        Just("model"),
        Just("messages"),
        Just("prompt"),
        Just("input"),
        Just("n"),
        Just("max_tokens"),
        Just("max_completion_tokens"),
        Just("temperature"),
        Just("top_p"),
        Just("stop"),
        Just("seed"),
        Just("stream"),
        Just("stream_options"),
        Just("encoding_format"),
        Just("size"),
        Just("response_format"),
        Just("steps"),
        Just("guidance_scale"),
        Just("negative_prompt"),
        Just("priority"),
        Just("timeout"),
        Just("task"),
        Just("inputs"),
        Just("options"),
    ];
    prop::collection::vec((key, value), 0..8).prop_map(|fields| {
        let body: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("\"{k}\": {v}"))
            .collect();
        format!("{{{}}}", body.join(", "))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_get_an_error_object(path in 0..POSTS.len(), body in prop::collection::vec(any::<u8>(), 0..600)) {
        let (status, json) = post(POSTS[path], body.clone());
        assert_error_object(status, &json, &String::from_utf8_lossy(&body));
    }

    #[test]
    fn near_valid_json_gets_an_error_object(path in 0..POSTS.len(), body in near_valid()) {
        let (status, json) = post(POSTS[path], body.clone().into_bytes());
        assert_error_object(status, &json, &body);
    }
}

#[test]
fn an_oversized_body_is_413_with_an_error_object() {
    let (status, json) = post(POSTS[2], vec![b'x'; 5000]);
    assert_eq!(status, 413);
    assert_error_object(status, &json, "5000 bytes");
}

#[test]
fn a_valid_request_for_no_model_is_model_not_found() {
    let body = br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#;
    let (status, json) = post(POSTS[0], body.to_vec());
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
}
