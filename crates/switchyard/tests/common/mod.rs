//! Set-up shared by the engine's behaviour tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::Path;

use switchyard::EngineBuilder;
use switchyard::config::{ModelKind, ModelSource, ModelSpec};
use switchyard_testkit::tiny;

/// An engine builder serving the tiny `llama` (text generation) and `bert`
/// (embedding) models, written to `dir` with weights from `seed`.
pub fn tiny_text_engine(dir: &Path, seed: u64) -> EngineBuilder {
    let tiny::TextModels { llama, bert } = tiny::write_text_models(dir, seed).unwrap();
    let spec = |id: &str, kind, path| ModelSpec::new(id, kind, ModelSource::Path(path));
    EngineBuilder::default()
        .model(spec("llama", ModelKind::TextGeneration, llama))
        .unwrap()
        .model(spec("bert", ModelKind::Embedding, bert))
        .unwrap()
}
