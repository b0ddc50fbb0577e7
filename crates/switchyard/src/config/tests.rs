use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_core::{DeviceId, Priority};

use super::*;

const TOML: &str = r#"
[[models]]
id = "smollm2"
kind = "text-generation"
path = "weights/smollm2.gguf"
devices = ["cpu", "cuda:1"]
replicas = 2
balance = "round-robin"
priority = "high"
max_batch_size = 8
keep_alive_secs = 1.5
memory_bytes = 200000000
defaults = { max_tokens = 64, temperature = 0.7, stop = ["\n\n"] }

[[models]]
model_id = "minilm"
kind = "embedding"
hf_repo = "sentence-transformers/all-MiniLM-L6-v2"
defaults = { normalize = true }

[[models]]
id = "resize"
kind = "image-processing"
"#;

fn toml_err(text: &str) -> ConfigError {
    match Registry::parse(text, ConfigFormat::Toml, None) {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => e,
    }
}

#[test]
fn reads_every_field_from_toml() {
    let r = Registry::parse(TOML, ConfigFormat::Toml, Some(Path::new("/etc/sy"))).unwrap();
    assert_eq!(r.len(), 3);
    let s = r.get("smollm2").unwrap();
    assert_eq!(s.kind, ModelKind::TextGeneration);
    assert_eq!(
        s.source,
        ModelSource::Path(PathBuf::from("/etc/sy/weights/smollm2.gguf"))
    );
    assert_eq!(s.devices, vec![DeviceId::Cpu, DeviceId::Cuda(1)]);
    assert_eq!(s.replicas, 2);
    assert_eq!(s.balance, Balance::RoundRobin);
    assert_eq!(s.priority, Priority::High);
    assert_eq!(s.max_batch_size, 8);
    assert_eq!(s.keep_alive, Some(Duration::from_millis(1500)));
    assert_eq!(s.memory_bytes, Some(200_000_000));
    assert_eq!(s.defaults.max_tokens, Some(64));
    assert_eq!(s.defaults.temperature, Some(0.7));
    assert_eq!(s.defaults.stop, Some(vec!["\n\n".to_owned()]));
    let m = r.get("minilm").unwrap();
    assert_eq!(
        m.source,
        ModelSource::HuggingFace {
            repo: "sentence-transformers/all-MiniLM-L6-v2".into(),
            revision: "main".into(),
            file: None
        }
    );
    assert_eq!(m.devices, vec![DeviceId::Cpu]);
    assert_eq!((m.replicas, m.balance), (1, Balance::LeastLoaded));
    assert_eq!(m.priority, Priority::Normal);
    assert_eq!(m.defaults.normalize, Some(true));
    assert_eq!(r.get("resize").unwrap().source, ModelSource::None);
    let ids: Vec<_> = r.models().iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["smollm2", "minilm", "resize"]);
}

#[test]
fn json_and_toml_give_the_same_registry() {
    let json = r#"{"models": [
        {"id": "smollm2", "kind": "text-generation", "path": "weights/smollm2.gguf",
         "devices": ["cpu", "cuda:1"], "replicas": 2, "balance": "round_robin",
         "priority": "high", "max_batch_size": 8,
         "keep_alive_secs": 1.5, "memory_bytes": 200000000,
         "defaults": {"max_tokens": 64, "temperature": 0.7, "stop": ["\n\n"]}},
        {"model_id": "minilm", "kind": "embedding",
         "hf_repo": "sentence-transformers/all-MiniLM-L6-v2", "defaults": {"normalize": true}},
        {"id": "resize", "kind": "image-processing"}
    ]}"#;
    let base = Some(Path::new("/etc/sy"));
    assert_eq!(
        Registry::parse(json, ConfigFormat::Json, base).unwrap(),
        Registry::parse(TOML, ConfigFormat::Toml, base).unwrap()
    );
}

#[test]
fn errors_name_the_file_the_model_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.toml");
    std::fs::write(
        &file,
        "[[models]]\nid = \"a\"\nkind = \"embedding\"\npath = \"x\"\n\n\
         [[models]]\nid = \"b\"\nkind = \"text-generation\"\npath = \"y\"\nmax_batch_size = -3\n",
    )
    .unwrap();
    let e = Registry::from_file(&file).unwrap_err();
    assert_eq!(e.file.as_deref(), Some(file.as_path()));
    assert_eq!(e.model.as_deref(), Some("b"));
    assert_eq!(e.field.as_deref(), Some("max_batch_size"));
    let shown = e.to_string();
    assert!(
        shown.contains("models.toml") && shown.contains("`b`"),
        "{shown}"
    );
}

#[test]
fn unknown_fields_are_reported_with_their_place() {
    let e = toml_err("[[models]]\nid = \"a\"\nkind = \"embedding\"\npath = \"x\"\nbatch = 3\n");
    assert_eq!(
        (e.model.as_deref(), e.field.as_deref()),
        (Some("a"), Some("batch"))
    );
    let e = toml_err(
        "[[models]]\nid = \"a\"\nkind = \"embedding\"\npath = \"x\"\ndefaults = { colour = 1 }\n",
    );
    assert_eq!(e.field.as_deref(), Some("defaults.colour"));
    let e = toml_err("modles = []\n");
    assert_eq!(e.field.as_deref(), Some("modles"));
    // An entry without an id is named by its place.
    let e =
        toml_err("[[models]]\nkind = \"embedding\"\npath = \"x\"\n\n[[models]]\nkind = \"x\"\n");
    assert_eq!(
        (e.model.as_deref(), e.field.as_deref()),
        (Some("#1"), Some("id"))
    );
}

#[test]
fn bad_values_are_typed_errors() {
    let entry = |extra: &str| format!("[[models]]\nid = \"a\"\n{extra}\n");
    let cases = [
        ("kind = \"painting\"\npath = \"x\"", "kind"),
        ("kind = \"embedding\"", "path"),
        (
            "kind = \"embedding\"\npath = \"x\"\nhf_repo = \"a/b\"",
            "hf_repo",
        ),
        ("kind = \"embedding\"\nhf_repo = \"not-a-repo\"", "hf_repo"),
        (
            "kind = \"embedding\"\nhf_repo = \"a/b\"\nhf_file = \"../../etc/passwd\"",
            "hf_file",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\nhf_file = \"f\"",
            "hf_file",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\ndevices = [\"tpu\"]",
            "devices",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\ndevices = []",
            "devices",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\ndevices = [\"cpu\", \"cpu\"]",
            "devices",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\ndevice = \"cpu\"\ndevices = [\"cpu\"]",
            "devices",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\nreplicas = 0",
            "replicas",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\nreplicas = 65",
            "replicas",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\nbalance = \"random\"",
            "balance",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\ndtype = \"f8\"",
            "dtype",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\npriority = \"asap\"",
            "priority",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\nmax_batch_size = 0",
            "max_batch_size",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\nkeep_alive_secs = -1",
            "keep_alive_secs",
        ),
        (
            "kind = \"embedding\"\npath = \"x\"\ndefaults = { max_tokens = 5 }",
            "defaults.max_tokens",
        ),
        (
            "kind = \"text-generation\"\npath = \"x\"\ndefaults = { top_p = 1.5 }",
            "defaults.top_p",
        ),
        (
            "kind = \"text-generation\"\npath = \"x\"\ndefaults = { temperature = \"hot\" }",
            "defaults.temperature",
        ),
        (
            "kind = \"text-to-image\"\npath = \"x\"\ndefaults = { width = 100 }",
            "defaults.width",
        ),
        (
            "kind = \"text-to-image\"\npath = \"x\"\ndefaults = { strength = 0.5 }",
            "defaults.strength",
        ),
        (
            "kind = \"image-to-image\"\npath = \"x\"\ndefaults = { strength = 1.5 }",
            "defaults.strength",
        ),
        ("kind = \"image-processing\"\npath = \"x\"", "path"),
    ];
    for (extra, field) in cases {
        let e = toml_err(&entry(extra));
        assert_eq!(e.model.as_deref(), Some("a"), "{extra}: {e}");
        assert_eq!(e.field.as_deref(), Some(field), "{extra}: {e}");
    }
    let e = toml_err("[[models]]\nid = \"bad id\"\nkind = \"embedding\"\npath = \"x\"\n");
    assert_eq!(e.field.as_deref(), Some("id"));
    let twice = "[[models]]\nid = \"a\"\nkind = \"embedding\"\npath = \"x\"\n".repeat(2);
    let e = toml_err(&twice);
    assert_eq!(
        (e.model.as_deref(), e.field.as_deref()),
        (Some("a"), Some("id"))
    );
}

#[test]
fn malformed_documents_are_errors_not_panics() {
    for text in [
        "{",
        "[1, 2]",
        "{\"models\": 3}",
        "{\"models\": [3]}",
        "null",
    ] {
        assert!(
            Registry::parse(text, ConfigFormat::Json, None).is_err(),
            "{text}"
        );
    }
    for text in ["[[models]\n", "models = 3\n", "models = [1]\n"] {
        assert!(
            Registry::parse(text, ConfigFormat::Toml, None).is_err(),
            "{text}"
        );
    }
    assert!(
        Registry::parse("", ConfigFormat::Toml, None)
            .unwrap()
            .is_empty()
    );
    let e = Registry::from_file(Path::new("/no/such/models.yaml")).unwrap_err();
    assert!(e.reason.contains(".json or .toml"));
    let e = Registry::from_file(Path::new("/no/such/models.json")).unwrap_err();
    assert!(e.reason.contains("cannot read"));
}

#[test]
fn hugging_face_sources_resolve_offline_from_the_cache_layout() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--acme--tiny");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    std::fs::write(snap.join("config.json"), "{}").unwrap();
    std::fs::write(snap.join("model.gguf"), "GGUF").unwrap();
    let source = |revision: &str, file: Option<&str>| ModelSource::HuggingFace {
        repo: "acme/tiny".into(),
        revision: revision.into(),
        file: file.map(str::to_owned),
    };
    assert_eq!(source("main", None).resolve(cache.path()).unwrap(), snap);
    assert_eq!(
        source("main", Some("model.gguf"))
            .resolve(cache.path())
            .unwrap(),
        snap.join("model.gguf")
    );
    assert_eq!(source(commit, None).resolve(cache.path()).unwrap(), snap);
    let e = source("v2", None).resolve(cache.path()).unwrap_err();
    assert!(
        e.reason.contains("huggingface-cli download acme/tiny"),
        "{e}"
    );
    let e = source("main", Some("other.gguf"))
        .resolve(cache.path())
        .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("hf_repo"));
    let e = ModelSource::Path("/no/such/file".into())
        .resolve(cache.path())
        .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("path"));
}

#[test]
fn a_server_table_is_left_to_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.toml");
    std::fs::write(
        &file,
        "[server]\nmax_tokens = 7\n\n[[models]]\nid = \"a\"\nkind = \"embedding\"\npath = \"x\"\n",
    )
    .unwrap();
    assert_eq!(Registry::from_file(&file).unwrap().len(), 1);
    let section = server_section(&file).unwrap().unwrap();
    assert_eq!(section["max_tokens"], 7);

    let json = dir.path().join("models.json");
    std::fs::write(&json, r#"{"models": []}"#).unwrap();
    assert_eq!(server_section(&json).unwrap(), None);

    std::fs::write(&json, r#"{"server": 3}"#).unwrap();
    let e = server_section(&json).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("server"));
    assert!(e.to_string().contains("models.json"), "{e}");
    assert!(
        Registry::from_file(&json).is_ok(),
        "the registry ignores it"
    );
}
