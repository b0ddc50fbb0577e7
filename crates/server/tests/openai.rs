//! The OpenAI-compatible endpoints over real loopback HTTP, on tiny
//! real-format models: answers equal what the engine gives directly,
//! streams equal whole answers, bad requests get OpenAI error objects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use common::{Served, engine_completion, get, greedy, post, request, serve_tiny};
use serde_json::{Value, json};
use switchyard::text::ChatMessage;
use switchyard::{GenerationOptions, Request};
use switchyard_server::Limits;

fn served(limits: Limits) -> (tempfile::TempDir, Served) {
    let dir = tempfile::tempdir().unwrap();
    let served = serve_tiny(dir.path(), limits);
    (dir, served)
}

/// The text of every streamed chunk per choice, the finish reasons, the
/// usage chunk, and whether the stream ended with `[DONE]`.
fn read_stream(events: &[String], chat: bool) -> (Vec<String>, Vec<Option<String>>, Option<Value>) {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let (mut texts, mut finishes, mut usage) = (Vec::<String>::new(), Vec::new(), None);
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert!(chunk.get("error").is_none(), "{chunk}");
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = Some(u.clone());
        }
        for choice in chunk["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            if texts.len() <= i {
                texts.resize(i + 1, String::new());
                finishes.resize(i + 1, None);
            }
            let piece = if chat {
                choice["delta"]["content"].as_str().unwrap_or("")
            } else {
                choice["text"].as_str().unwrap()
            };
            texts[i].push_str(piece);
            if let Some(f) = choice["finish_reason"].as_str() {
                finishes[i] = Some(f.to_owned());
            }
        }
    }
    (texts, finishes, usage)
}

#[test]
fn models_are_listed_and_unknown_paths_get_error_objects() {
    let (_dir, s) = served(Limits::default());
    let list = get(s.addr, "/v1/models");
    assert_eq!(list.status, 200);
    let ids: Vec<String> = list.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["llama", "bert"]);
    let one = get(s.addr, "/v1/models/bert");
    assert_eq!(
        (one.status, one.json()["object"].clone()),
        (200, json!("model"))
    );
    let missing = get(s.addr, "/v1/models/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "model_not_found");
    let nowhere = get(s.addr, "/v2/everything");
    assert_eq!(nowhere.status, 404);
    assert_eq!(nowhere.json()["error"]["code"], "unknown_url");
    let doc = get(s.addr, "/openapi.json");
    assert_eq!(doc.status, 200);
    assert!(doc.json()["paths"]["/v1/chat/completions"]["post"].is_object());
    let health = get(s.addr, "/health");
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, json!("ok"))
    );
}

#[test]
fn a_chat_answer_equals_the_engines_and_its_stream_equals_it() {
    let (_dir, s) = served(Limits::default());
    let body = json!({
        "model": "llama",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
        "max_tokens": 12,
        "temperature": 0,
    });
    let whole = post(s.addr, "/v1/chat/completions", &body);
    whole.assert_status(200);
    let whole = whole.json();
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &whole["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");

    let direct = engine_completion(
        &s.engine,
        Request::chat(
            "llama",
            vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "Name a colour."),
            ],
        )
        .with_options(greedy(12)),
    );
    assert_eq!(choice["message"]["content"], direct.text.as_str());
    assert_eq!(
        choice["finish_reason"],
        if direct.usage.completion_tokens == 12 {
            "length"
        } else {
            "stop"
        }
    );
    assert_eq!(whole["usage"]["prompt_tokens"], direct.usage.prompt_tokens);
    assert_eq!(
        whole["usage"]["completion_tokens"],
        direct.usage.completion_tokens
    );
    assert_eq!(
        whole["usage"]["total_tokens"],
        direct.usage.prompt_tokens + direct.usage.completion_tokens
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let reply = post(s.addr, "/v1/chat/completions", &streamed);
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = reply.events();
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let (texts, finishes, usage) = read_stream(&events, true);
    assert_eq!(texts, std::slice::from_ref(&direct.text));
    assert_eq!(finishes[0].as_deref(), choice["finish_reason"].as_str());
    assert_eq!(usage, Some(whole["usage"].clone()));
}

#[test]
fn completions_serve_several_prompts_and_seeded_choices() {
    let (_dir, s) = served(Limits::default());
    let body = json!({
        "model": "llama",
        "prompt": ["Once upon a time", "The train"],
        "n": 2,
        "max_tokens": 6,
        "temperature": 0.9,
        "seed": 5,
    });
    let first = post(s.addr, "/v1/completions", &body).json();
    assert_eq!(first["object"], "text_completion");
    let texts: Vec<String> = first["choices"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["index"], i);
            assert!(c["logprobs"].is_null());
            c["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(texts.len(), 4);
    // A seeded request repeats, whole or streamed.
    let again = post(s.addr, "/v1/completions", &body).json();
    assert_eq!(again["choices"], first["choices"]);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (stream_texts, finishes, usage) =
        read_stream(&post(s.addr, "/v1/completions", &streamed).events(), false);
    assert_eq!(stream_texts, texts);
    assert!(finishes.iter().all(Option::is_some));
    assert_eq!(usage, None, "usage comes only when asked for");
    // Choice 1 of a prompt is sampled with seed + 1: what the engine gives.
    let choice_1 = engine_completion(
        &s.engine,
        Request::complete("llama", "The train").with_options(GenerationOptions {
            max_tokens: Some(6),
            temperature: Some(0.9),
            seed: Some(6),
            ..GenerationOptions::default()
        }),
    );
    assert_eq!(texts[3], choice_1.text);
}

/// Embeddings agree to float rounding: the engine's threaded kernels may
/// sum in a different order from one run to the next.
fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-5, "{got:?}\n{want:?}");
    }
}

#[test]
fn embeddings_equal_the_engines_as_floats_and_base64() {
    let (_dir, s) = served(Limits::default());
    let inputs = vec![
        "a switchyard".to_owned(),
        "freight cars in the snow".to_owned(),
    ];
    let direct = s
        .engine
        .submit(Request::embed("bert", inputs.clone()))
        .unwrap()
        .wait()
        .unwrap()
        .into_embeddings_with_usage()
        .unwrap();
    assert!(
        direct.prompt_tokens > 2 * 2,
        "two texts and their special tokens"
    );
    let (direct, tokens) = (direct.vectors, direct.prompt_tokens);
    let floats = post(
        s.addr,
        "/v1/embeddings",
        &json!({"model": "bert", "input": inputs}),
    );
    assert_eq!(floats.status, 200);
    let floats = floats.json();
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["usage"]["prompt_tokens"], tokens);
    assert_eq!(floats["usage"]["total_tokens"], tokens);
    for (i, v) in direct.iter().enumerate() {
        let got: Vec<f32> = floats["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_close(&got, v);
    }
    let encoded = post(
        s.addr,
        "/v1/embeddings",
        &json!({"model": "bert", "input": inputs, "encoding_format": "base64"}),
    )
    .json();
    for (i, v) in direct.iter().enumerate() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded["data"][i]["embedding"].as_str().unwrap())
            .unwrap();
        let got: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_close(&got, v);
    }
    // One string is one input.
    let one = post(
        s.addr,
        "/v1/embeddings",
        &json!({"model": "bert", "input": "a switchyard"}),
    );
    assert_eq!(one.json()["data"].as_array().map(Vec::len), Some(1));
}

#[test]
fn bad_requests_get_openai_error_objects() {
    let limits = Limits {
        max_body_bytes: 2048,
        ..Limits::default()
    };
    let (_dir, s) = served(limits);
    let chat = |extra: Value| {
        let mut body = json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("/v1/chat/completions", b"{not json".to_vec(), 400, None),
        (
            "/v1/chat/completions",
            br#"{"messages": []}"#.to_vec(),
            400,
            None,
        ),
        (
            "/v1/chat/completions",
            chat(json!({"messages": []})).to_string().into_bytes(),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"model": "nope"})).to_string().into_bytes(),
            404,
            Some("model"),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"model": "bert"})).to_string().into_bytes(),
            400,
            Some("model"),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"n": 0})).to_string().into_bytes(),
            400,
            Some("n"),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 1_000_000}))
                .to_string()
                .into_bytes(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"temperature": -1})).to_string().into_bytes(),
            400,
            None,
        ),
        (
            "/v1/completions",
            br#"{"model": "llama", "prompt": []}"#.to_vec(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/embeddings",
            br#"{"model": "bert", "input": "x", "encoding_format": "int8"}"#.to_vec(),
            400,
            Some("encoding_format"),
        ),
        (
            "/v1/embeddings",
            br#"{"model": "bert", "input": [1, 2]}"#.to_vec(),
            400,
            None,
        ),
        ("/v1/embeddings", vec![b' '; 4096], 413, None),
        (
            "/v1/chat/completions",
            chat(json!({"priority": "soon"})).to_string().into_bytes(),
            400,
            Some("priority"),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"timeout": 0})).to_string().into_bytes(),
            400,
            Some("timeout"),
        ),
        (
            "/v1/embeddings",
            br#"{"model": "bert", "input": "x", "timeout": -3}"#.to_vec(),
            400,
            Some("timeout"),
        ),
    ];
    for (path, body, status, param) in cases {
        let reply = request(s.addr, "POST", path, &body);
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        assert_eq!(reply.status, status, "{path} {shown}");
        let error = &reply.json()["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{shown}"
        );
        assert!(error["type"].is_string(), "{shown}");
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{shown}");
        }
    }
}

#[test]
fn a_client_that_leaves_mid_stream_cancels_its_generation() {
    let (_dir, s) = served(Limits::default());
    // Wait for the first event, then hang up.
    let stream = common::open_long_stream(s.addr);
    assert_eq!(s.engine.sessions().len(), 1, "the generation is under way");
    drop(stream);
    let start = std::time::Instant::now();
    let cancelled = || {
        s.engine
            .metrics()
            .models
            .get("llama")
            .is_some_and(|m| m.cancelled == 1)
    };
    while !(cancelled() && s.engine.sessions().is_empty()) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "still running a second after the client left: {:?}",
            s.engine.sessions()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
