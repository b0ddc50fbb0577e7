//! The `switchyard-server` binary itself on tiny real-format models: the
//! models file's `[server]` table sets the address and limits, flags
//! override it, and SIGTERM lets an open stream finish before the process
//! exits cleanly.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{open_stream, post};
use serde_json::json;
use switchyard_testkit::tiny;

/// The running binary and the lines it writes to stderr.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the tiny models and a `models.toml` with `server_table` into
/// `dir`, starts the binary on it with `flags`, and waits until it listens.
fn start(dir: &Path, server_table: &str, flags: &[&str]) -> Server {
    let tiny::TextModels { llama, bert } = tiny::write_text_models(dir, 5).unwrap();
    // A context long enough for a stream of hundreds of tokens.
    let spec = tiny::TinyLlama {
        max_position_embeddings: 1024,
        ..tiny::TinyLlama::default()
    };
    tiny::write_llama_gguf(&llama, &spec, tiny::GgufQuant::Q8_0, 5).unwrap();
    let config = dir.join("models.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\n{server_table}\n\n[[models]]\nid = \"llama\"\nkind = \"text-generation\"\npath = {llama:?}\n\n[[models]]\nid = \"bert\"\nkind = \"embedding\"\npath = {bert:?}\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-server"))
        .arg("--config")
        .arg(&config)
        .args(flags)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (send, log) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = log.recv_timeout(left).expect("the server did not start");
        if let Some((_, addr)) = line.split_once(" on http://") {
            break addr.parse().unwrap();
        }
    };
    Server { child, addr, log }
}

fn chat(addr: SocketAddr, extra: serde_json::Value) -> common::Reply {
    let mut body = json!({
        "model": "llama",
        "messages": [{"role": "user", "content": "Hello"}],
        "temperature": 0,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    post(addr, "/v1/chat/completions", &body)
}

fn terminate(server: &Server) {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn exit_status(server: &mut Server) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_files_server_table_sets_limits_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(
        dir.path(),
        "bind = \"127.0.0.1:0\"\nmax_tokens = 5\nmax_choices = 3",
        &["--max-choices", "1"],
    );
    // From the file.
    let over = chat(server.addr, json!({"max_tokens": 6}));
    assert_eq!(over.status, 400);
    let error = over.json();
    assert!(
        error["error"]["message"].as_str().unwrap().contains('5'),
        "{error}"
    );
    assert_eq!(chat(server.addr, json!({"max_tokens": 5})).status, 200);
    // The flag wins over the file's 3.
    assert_eq!(
        chat(server.addr, json!({"max_tokens": 2, "n": 2})).status,
        400
    );
    assert_eq!(
        chat(server.addr, json!({"max_tokens": 2, "n": 1})).status,
        200
    );
    terminate(&server);
    assert!(exit_status(&mut server).success());
}

#[test]
fn a_bad_server_table_stops_the_start_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let tiny::TextModels { bert, .. } = tiny::write_text_models(dir.path(), 5).unwrap();
    let config = dir.path().join("models.toml");
    std::fs::write(
        &config,
        format!("[server]\nmax_tokenz = 3\n\n[[models]]\nid = \"bert\"\nkind = \"embedding\"\npath = {bert:?}\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard-server"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("models.toml") && stderr.contains("max_tokenz"),
        "{stderr}"
    );
}

#[test]
fn sigterm_lets_an_open_stream_finish_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), "bind = \"127.0.0.1:0\"", &[]);
    let mut stream = open_stream(server.addr, 600);
    terminate(&server);
    // The service stops taking connections while the stream goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(server.addr).is_ok() {
        assert!(Instant::now() < deadline, "still listening after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        server.child.try_wait().unwrap(),
        None,
        "exited with a stream open"
    );
    let mut rest = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream.read_to_string(&mut rest).unwrap();
    let events: Vec<&str> = rest
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "the stream was cut short");
    let finish = events.iter().rev().find_map(|e| {
        let v: serde_json::Value = serde_json::from_str(e).ok()?;
        v["choices"][0]["finish_reason"].as_str().map(str::to_owned)
    });
    assert!(
        matches!(finish.as_deref(), Some("length" | "stop")),
        "{finish:?}"
    );
    assert!(exit_status(&mut server).success());
    let said: Vec<String> = server.log.try_iter().collect();
    // The stream was under way when the signal came, and drained.
    let at_signal = said.iter().position(|l| l.contains("SIGTERM or Ctrl-C"));
    let drained = said.iter().position(|l| l.contains("streams drained"));
    assert!(at_signal.is_some() && drained > at_signal, "{said:?}");
    assert!(said[at_signal.unwrap()].contains(" 1 request"), "{said:?}");
}
