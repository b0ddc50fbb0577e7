//! Loading a registered model into something that runs requests: the
//! model cache's [`Loader`], and the pipelines it builds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchyard_batch::Batcher;
use switchyard_cache::{LoadError, Loaded, Loader};
use switchyard_core::DeviceId;
use switchyard_text::{
    BertEmbedder, EmbeddingHandler, GenerationEngine, GenerationEngineConfig, Generator,
};

use crate::config::{ModelKind, ModelSpec, Registry};
use crate::engine::error::EngineError;

/// A loaded model's pipeline.
pub(crate) enum Runner {
    /// Continuous batching over a generation model (boxed: it is large).
    Generation(Box<GenerationEngine>),
    /// Dynamic batching of embedding inputs.
    Embedding(Batcher<EmbeddingHandler>),
}

/// A model the cache holds: its spec and its running pipeline. Requests in
/// flight hold it by `Arc`, so evicting it never cuts them short.
pub(crate) struct LoadedModel {
    pub(crate) spec: ModelSpec,
    pub(crate) runner: Runner,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("id", &self.spec.id)
            .field("kind", &self.spec.kind)
            .finish()
    }
}

/// How the pipelines are set up, from the engine's builder.
#[derive(Debug, Clone)]
pub(crate) struct RunnerSettings {
    /// KV cache tokens per generation model.
    pub(crate) kv_tokens: usize,
    /// Longest an embedding batch waits to fill.
    pub(crate) embed_max_wait: Duration,
}

/// The cache's loader: registry entries to pipelines.
pub(crate) struct ModelLoader {
    pub(crate) registry: Arc<Registry>,
    pub(crate) hf_cache: PathBuf,
    pub(crate) settings: RunnerSettings,
}

fn boxed(e: EngineError) -> LoadError {
    Box::new(e)
}

/// Bytes of a file, or of every file in a folder (one level of sub-folders
/// is enough for the layouts served).
pub(crate) fn disk_bytes(path: &Path) -> u64 {
    fn walk(path: &Path, depth: usize) -> u64 {
        let Ok(meta) = std::fs::metadata(path) else {
            return 0;
        };
        if meta.is_file() {
            return meta.len();
        }
        if depth == 0 {
            return 0;
        }
        std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| walk(&e.path(), depth - 1)).sum())
            .unwrap_or(0)
    }
    walk(path, 2)
}

impl ModelLoader {
    fn spec(&self, id: &str) -> Result<&ModelSpec, EngineError> {
        self.registry
            .get(id)
            .ok_or_else(|| EngineError::UnknownModel {
                model: id.to_owned(),
            })
    }

    fn path(&self, spec: &ModelSpec) -> Result<PathBuf, EngineError> {
        spec.source
            .resolve(&self.hf_cache)
            .map_err(|e| EngineError::Config(e.in_model(&spec.id)))
    }

    fn build(
        &self,
        spec: &ModelSpec,
        device: DeviceId,
    ) -> Result<Loaded<LoadedModel>, EngineError> {
        let path = self.path(spec)?;
        let fail = |reason: String| EngineError::ModelLoad {
            model: spec.id.clone(),
            reason,
        };
        let (runner, extra) = match spec.kind {
            ModelKind::TextGeneration => {
                let generator = Generator::load(&path, device).map_err(|e| fail(e.to_string()))?;
                let config = GenerationEngineConfig {
                    kv_tokens: self.settings.kv_tokens,
                    max_running: spec.max_batch_size,
                    ..GenerationEngineConfig::default()
                };
                let kv = generator.kv_bytes(config.kv_tokens) as u64;
                let engine = generator.serve(config).map_err(|e| fail(e.to_string()))?;
                (Runner::Generation(Box::new(engine)), kv)
            }
            ModelKind::Embedding => {
                let embedder =
                    BertEmbedder::load(&path, device).map_err(|e| fail(e.to_string()))?;
                let batcher = Batcher::builder(EmbeddingHandler::new(Arc::new(embedder)))
                    .workers(1)
                    .fixed(spec.max_batch_size)
                    .max_wait(self.settings.embed_max_wait)
                    .build()
                    .map_err(|e| fail(e.to_string()))?;
                (Runner::Embedding(batcher), 0)
            }
            other => {
                return Err(EngineError::Unsupported {
                    model: spec.id.clone(),
                    reason: format!("{other} models are not served by the engine yet"),
                });
            }
        };
        let bytes = spec
            .memory_bytes
            .unwrap_or_else(|| disk_bytes(&path) + extra);
        Ok(Loaded {
            value: LoadedModel {
                spec: spec.clone(),
                runner,
            },
            bytes,
        })
    }
}

impl Loader<String, LoadedModel> for ModelLoader {
    fn load(&self, key: &String, device: DeviceId) -> Result<Loaded<LoadedModel>, LoadError> {
        let spec = self.spec(key).map_err(boxed)?;
        self.build(spec, device).map_err(boxed)
    }

    fn estimate_bytes(&self, key: &String, _: DeviceId) -> Option<u64> {
        let spec = self.registry.get(key)?;
        spec.memory_bytes.or_else(|| {
            let path = spec.source.resolve(&self.hf_cache).ok()?;
            Some(disk_bytes(&path))
        })
    }
}
