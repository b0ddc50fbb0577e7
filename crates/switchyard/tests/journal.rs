//! Crash recovery, end to end: a child process serves requests with a
//! journal and is killed (SIGKILL) with some unfinished; an engine started
//! on the same journal runs those again with their ids and gets the answers
//! they would have had, or reports why not. Finished and cancelled requests
//! are not run again, and a record torn by the crash is dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard::config::{ModelKind, ModelSource, ModelSpec};
use switchyard::core::{Priority, RequestId};
use switchyard::journal::Journal;
use switchyard::text::ChatMessage;
use switchyard::{
    Engine, EngineError, GenerationOptions, RecoveredOutcome, RecoveryPolicy, Request,
};
use switchyard_testkit::tiny;

const CHILD: &str = "SWITCHYARD_JOURNAL_TEST_DIR";

fn start(dir: &Path, policy: RecoveryPolicy, journal: &Path) -> Engine {
    let spec =
        |id: &str, kind, path: &str| ModelSpec::new(id, kind, ModelSource::Path(dir.join(path)));
    Engine::builder()
        .model(spec("llama", ModelKind::TextGeneration, "tiny.gguf"))
        .unwrap()
        .model(spec("bert", ModelKind::Embedding, "bert"))
        .unwrap()
        .journal(journal)
        .recovery(policy)
        .build()
        .unwrap()
}

fn chat() -> Request {
    Request::chat("llama", vec![ChatMessage::new("user", "where to?")])
        .with_options(GenerationOptions {
            max_tokens: Some(6),
            temperature: Some(0.8),
            seed: Some(99),
            ..GenerationOptions::default()
        })
        .with_priority(Priority::High)
}

fn embed() -> Request {
    Request::embed("bert", vec!["kept a".into(), "kept b".into()])
}

/// The child: run by `crash_leaves_no_request_behind`, never alone.
#[test]
#[ignore = "the child process of crash_leaves_no_request_behind"]
fn child_runs_until_killed() {
    let Ok(dir) = std::env::var(CHILD) else {
        return;
    };
    let dir = Path::new(&dir);
    let engine = start(dir, RecoveryPolicy::Requeue, &dir.join("requests.journal"));
    // Finished: its answer reached its handle.
    let done = engine
        .submit(Request::embed("bert", vec!["done".into()]))
        .unwrap();
    done.wait().unwrap();
    // Cancelled: its handle was dropped.
    drop(
        engine
            .submit(Request::complete("llama", "dropped"))
            .unwrap(),
    );
    // Unfinished when the process dies: nobody has their answers yet.
    let chat = engine.submit(chat()).unwrap();
    let embed = engine.submit(embed()).unwrap();
    let late = engine
        .submit(Request::complete("llama", "late").with_timeout(Duration::from_millis(1)))
        .unwrap();
    let ids = [chat.id(), embed.id(), late.id()].map(|id| id.as_u64().to_string());
    let mut out = std::io::stdout().lock();
    writeln!(out, "IDS {}", ids.join(" ")).unwrap();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    drop(out);
    std::thread::sleep(Duration::from_secs(120));
    drop((chat, embed, late));
}

fn run_child_until_ready(dir: &Path) -> Vec<RequestId> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_runs_until_killed",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut ids = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("IDS ") {
            ids = rest
                .split(' ')
                .map(|n| RequestId::from_u64(n.parse().unwrap()))
                .collect();
        }
        if line == "READY" {
            break;
        }
    }
    assert_eq!(ids.len(), 3, "the child did not report its requests");
    child.kill().unwrap();
    child.wait().unwrap();
    ids
}

#[test]
fn crash_leaves_no_request_behind() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_text_models(dir.path(), 7).unwrap();
    let ids = run_child_until_ready(dir.path());
    let journal = dir.path().join("requests.journal");
    // The crash also cut a write short.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 1]).unwrap();
    drop(f);
    let saved = dir.path().join("copy.journal");
    std::fs::copy(&journal, &saved).unwrap();

    // Restarted: the three come back in order, with their ids.
    let engine = start(dir.path(), RecoveryPolicy::Requeue, &journal);
    let recovered = engine.recovered();
    assert!(engine.recovered().is_empty(), "handed out once");
    let got: Vec<RequestId> = recovered.iter().map(|r| r.id).collect();
    assert_eq!(got, ids);
    let tasks: Vec<(&str, &str)> = recovered
        .iter()
        .map(|r| (r.model.as_str(), r.task.as_str()))
        .collect();
    assert_eq!(
        tasks,
        [
            ("llama", "generation"),
            ("bert", "embedding"),
            ("llama", "generation")
        ]
    );
    // They give what they would have given; the late one had timed out.
    let expect_chat = engine.process_sync(chat()).unwrap();
    let expect_embed = engine.process_sync(embed()).unwrap();
    let mut outcomes = recovered.into_iter().map(|r| r.outcome);
    let RecoveredOutcome::Requeued(h) = outcomes.next().unwrap() else {
        panic!("the chat request was not run again")
    };
    assert_eq!(h.id(), ids[0]);
    assert_eq!(h.wait().unwrap(), expect_chat);
    let RecoveredOutcome::Requeued(h) = outcomes.next().unwrap() else {
        panic!("the embedding request was not run again")
    };
    // The same vectors, up to the last bit: the replay may share its
    // forward pass with other work, and float sums then round differently.
    let (got, want) = (
        h.wait().unwrap().into_embeddings().unwrap(),
        expect_embed.into_embeddings().unwrap(),
    );
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.len(), w.len());
        assert!(
            g.iter().zip(w).all(|(a, b)| (a - b).abs() <= 1e-5),
            "{g:?} vs {w:?}"
        );
    }
    match outcomes.next().unwrap() {
        RecoveredOutcome::Failed(EngineError::TimedOut) => {}
        other => panic!("the late request: {other:?}"),
    }
    // New ids do not collide with the recovered ones.
    let fresh = engine.submit(Request::complete("llama", "new")).unwrap();
    assert!(fresh.id() > *ids.iter().max().unwrap());
    fresh.wait().unwrap();
    drop(engine);
    let reopened = Journal::open(&journal).unwrap();
    assert!(reopened.pending().is_empty(), "{:?}", reopened.pending());
    drop(reopened);

    // The same journal under the other policy: all reported, none run.
    let engine = start(dir.path(), RecoveryPolicy::ReportFailed, &saved);
    let recovered = engine.recovered();
    assert_eq!(recovered.len(), 3);
    for r in &recovered {
        assert!(
            matches!(
                r.outcome,
                RecoveredOutcome::Failed(EngineError::Interrupted { .. } | EngineError::TimedOut)
            ),
            "{r:?}"
        );
    }
    assert_eq!(
        engine
            .metrics()
            .models
            .values()
            .map(|m| m.submitted)
            .sum::<u64>(),
        0
    );
    drop(engine);
    assert!(Journal::open(&saved).unwrap().pending().is_empty());
}

#[test]
fn a_damaged_journal_stops_the_build_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.journal");
    std::fs::write(&path, b"this is not a journal").unwrap();
    let err = Engine::builder().journal(&path).build().unwrap_err();
    assert!(matches!(err, EngineError::Journal { .. }), "{err}");
}
