//! The native API over loopback HTTP on tiny real-format models:
//! capabilities, sessions (listed, looked up, cancelled), stats, cleanup
//! (with the optimisations in effect) and Prometheus metrics agree with
//! what the engine did.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{Served, engine_completion, get, greedy, post, request, serve_tiny};
use serde_json::json;
use switchyard_server::Limits;

fn served() -> (tempfile::TempDir, Served) {
    let dir = tempfile::tempdir().unwrap();
    let served = serve_tiny(dir.path(), Limits::default());
    (dir, served)
}

fn loaded(s: &Served, model: &str) -> bool {
    let caps = get(s.addr, "/api/inference/capabilities").json();
    caps["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == model)
        .map(|m| m["loaded"] == true)
        .unwrap()
}

#[test]
fn capabilities_stats_cleanup_and_metrics_follow_the_engine() {
    let (_dir, s) = served();
    let caps = get(s.addr, "/api/inference/capabilities");
    assert_eq!(caps.status, 200);
    let caps = caps.json();
    let kinds: Vec<&str> = caps["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"text-generation") && kinds.contains(&"embedding"),
        "{kinds:?}"
    );
    assert_eq!(caps["devices"], json!(["cpu"]));
    assert!(!loaded(&s, "bert"));

    let embedded = post(
        s.addr,
        "/v1/embeddings",
        &json!({"model": "bert", "input": ["a", "b"]}),
    );
    assert_eq!(embedded.status, 200);
    assert!(loaded(&s, "bert"));

    let stats = get(s.addr, "/api/system/stats").json();
    let bert = stats["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "bert")
        .unwrap()
        .clone();
    assert_eq!(
        (bert["submitted"].clone(), bert["succeeded"].clone()),
        (json!(1), json!(1))
    );
    let cpu = &stats["devices"][0];
    assert_eq!(cpu["device"], "cpu");
    assert_eq!(cpu["loaded_models"], json!(["bert"]));
    assert!(cpu["models_bytes"].as_u64().unwrap() > 0);
    assert_eq!(stats["queued"], 0);

    let metrics = get(s.addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("switchyard_requests_submitted_total") && l.contains("bert")),
        "{text}"
    );

    let cleanup = request(s.addr, "POST", "/api/system/cleanup", b"");
    assert_eq!(
        (cleanup.status, cleanup.json()["unloaded"].clone()),
        (200, json!(1))
    );
    assert!(!loaded(&s, "bert"));
}

#[test]
fn a_running_request_is_listed_and_cancelled_by_id() {
    let (_dir, s) = served();
    let mut stream = common::open_long_stream(s.addr);
    let listed = get(s.addr, "/api/inference/sessions").json();
    let sessions = listed.as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{listed}");
    let session = &sessions[0];
    assert_eq!(
        (
            session["model"].clone(),
            session["task"].clone(),
            session["state"].clone()
        ),
        (json!("llama"), json!("generation"), json!("running"))
    );
    assert_eq!(session["total"], 4000);
    let id = session["id"].as_str().unwrap().to_owned();
    let one = get(s.addr, &format!("/api/inference/sessions/{id}"));
    assert_eq!((one.status, one.json()["id"].clone()), (200, json!(id)));

    let cancelled = request(
        s.addr,
        "DELETE",
        &format!("/api/inference/sessions/{id}"),
        b"",
    );
    assert_eq!(
        (cancelled.status, cancelled.json()["cancelled"].clone()),
        (200, json!(true))
    );
    // The stream ends: the rest of it arrives and the connection closes.
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    let start = Instant::now();
    while !get(s.addr, "/api/inference/sessions")
        .json()
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(start.elapsed() < Duration::from_secs(1), "still listed");
        std::thread::sleep(Duration::from_millis(10));
    }
    for missing in [
        format!("/api/inference/sessions/{id}"),
        "/api/inference/sessions/req-x".into(),
    ] {
        let reply = get(s.addr, &missing);
        assert_eq!(reply.status, 404, "{missing}");
        assert_eq!(reply.json()["error"]["code"], "session_not_found");
        assert_eq!(request(s.addr, "DELETE", &missing, b"").status, 404);
    }
}

#[test]
fn execute_runs_any_task_now_or_later_and_validate_checks_without_running() {
    let (_dir, s) = served();
    let generate = json!({
        "model": "llama",
        "task": "generate",
        "prompt": "Once upon a time",
        "options": {"max_tokens": 6, "temperature": 0},
        "priority": "high",
    });
    let now = post(s.addr, "/api/inference/execute", &generate);
    assert_eq!(now.status, 200, "{}", String::from_utf8_lossy(&now.body));
    let now = now.json();
    assert_eq!(
        (now["state"].clone(), now["result"]["kind"].clone()),
        (json!("finished"), json!("text"))
    );
    let direct = engine_completion(
        &s.engine,
        switchyard::Request::complete("llama", "Once upon a time").with_options(greedy(6)),
    );
    assert_eq!(now["result"]["text"], direct.text.as_str());
    assert_eq!(
        now["result"]["completion_tokens"],
        direct.usage.completion_tokens
    );

    // Later: 202 and an id whose session turns into the same result.
    let accepted = post(s.addr, "/api/inference/execute?async=true", &generate);
    assert_eq!(accepted.status, 202);
    let id = accepted.json()["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    let done = loop {
        let reply = get(s.addr, &format!("/api/inference/sessions/{id}"));
        reply.assert_status(200);
        let json = reply.json();
        if json["state"] == "finished" {
            break json;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never finished: {json}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(done["result"], now["result"]);

    let chat = json!({"model": "llama", "task": "chat", "messages": [{"role": "user", "content": "hi"}], "options": {"max_tokens": 3}});
    assert_eq!(
        post(s.addr, "/api/inference/execute", &chat).json()["result"]["kind"],
        "text"
    );
    let embed = post(
        s.addr,
        "/api/inference/execute",
        &json!({"model": "bert", "task": "embed", "inputs": ["a", "b c"]}),
    )
    .json();
    assert_eq!(embed["result"]["kind"], "embeddings");
    assert_eq!(embed["result"]["vectors"].as_array().unwrap().len(), 2);
    assert!(embed["result"]["prompt_tokens"].as_u64().unwrap() >= 4);

    // Validate runs nothing and answers what execute would refuse with.
    let before = get(s.addr, "/api/system/stats").json()["models"].clone();
    let valid = post(s.addr, "/api/inference/validate", &generate);
    assert_eq!(
        (valid.status, valid.json()["valid"].clone()),
        (200, json!(true))
    );
    assert_eq!(get(s.addr, "/api/system/stats").json()["models"], before);
    for (body, status) in [
        (
            json!({"model": "nope", "task": "generate", "prompt": "x"}),
            404,
        ),
        (
            json!({"model": "bert", "task": "generate", "prompt": "x"}),
            400,
        ),
        (
            json!({"model": "llama", "task": "generate", "prompt": "x", "options": {"max_tokenz": 3}}),
            400,
        ),
        (
            json!({"model": "llama", "task": "dance", "prompt": "x"}),
            400,
        ),
        (json!({"model": "llama", "prompt": "x"}), 400),
        (
            json!({"model": "llama", "task": "generate", "prompt": "x", "options": {"temperature": -2}}),
            400,
        ),
        (json!({"model": "bert", "task": "embed", "inputs": []}), 400),
    ] {
        let reply = post(s.addr, "/api/inference/validate", &body);
        assert_eq!(reply.status, status, "{body}");
        assert!(reply.json()["error"]["message"].is_string(), "{body}");
        assert_eq!(
            post(s.addr, "/api/inference/execute", &body).status,
            status,
            "{body}"
        );
    }
}

#[test]
fn an_async_execution_that_fails_reports_its_error() {
    let (_dir, s) = served();
    let late = json!({
        "model": "llama",
        "task": "chat",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "options": {"max_tokens": 4000, "temperature": 0},
        "timeout": 0.02,
    });
    let accepted = post(s.addr, "/api/inference/execute?async=true", &late);
    assert_eq!(accepted.status, 202);
    let id = accepted.json()["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    let failed = loop {
        let json = get(s.addr, &format!("/api/inference/sessions/{id}")).json();
        if json["state"] == "failed" {
            break json;
        }
        assert_ne!(json["state"], "finished");
        assert!(start.elapsed() < Duration::from_secs(10), "{json}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(failed["status"], 504);
    assert_eq!(failed["error"]["type"], "timeout_error");
    assert!(failed["error"]["message"].is_string());
}

#[test]
fn stats_report_the_optimisations_in_effect() {
    let (_dir, s) = served();
    let of = |stats: &serde_json::Value, id: &str| {
        stats["optimisations"]["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()
            .clone()
    };
    let stats = get(s.addr, "/api/system/stats").json();
    let o = &stats["optimisations"];
    assert!(
        ["avx512-vnni", "avx2", "neon-dotprod", "neon", "scalar"]
            .contains(&o["cpu_kernels"].as_str().unwrap()),
        "{o}"
    );
    assert!(o["compute_threads"].as_u64().unwrap() >= 1);
    // The engine builder's defaults: urgent work pauses the rest, no
    // result cache, no memory budget, 2 ms batch wait.
    assert_eq!(o["cross_model_priority"], "urgent");
    assert_eq!(o["result_cache_capacity"], json!(null));
    assert_eq!(o["batch_max_wait_ms"], json!(2.0));
    let llama = of(&stats, "llama");
    assert_eq!(
        (llama["batching"].clone(), llama["workers"].clone()),
        (json!("continuous"), json!(null))
    );
    // Not loaded yet: the KV cache is not known.
    assert_eq!(llama["kv_cache_tokens"], json!(null));
    assert_eq!(of(&stats, "bert")["batching"], "dynamic");
    assert_eq!(of(&stats, "bert")["workers"], 1);

    for _ in 0..2 {
        let chat = post(
            s.addr,
            "/v1/chat/completions",
            &json!({"model": "llama", "max_tokens": 2,
                    "messages": [{"role": "user", "content": "the same long prompt"}]}),
        );
        assert_eq!(chat.status, 200);
    }
    let llama = of(&get(s.addr, "/api/system/stats").json(), "llama");
    assert_eq!(llama["kv_cache_tokens"], 4096, "{llama}");
    assert_eq!(llama["prefix_caching"], true);
    assert!(llama["kv_block_tokens"].as_u64().unwrap() >= 1);
    assert!(llama["prefill_chunk_tokens"].as_u64().unwrap() >= 1);
    let hit_rate = llama["prefix_hit_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&hit_rate), "{hit_rate}");
}
