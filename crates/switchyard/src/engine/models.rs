//! Loading a registered model into something that runs requests: the
//! model cache's [`Loader`], and the pipelines it builds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "diffusion")]
use parking_lot::RwLock;
use switchyard_batch::{BatchHandler, Batcher, BatcherBuilder, YieldGate};
use switchyard_cache::{LoadError, Loaded, Loader};
use switchyard_core::{DeviceId, Priority};
use switchyard_text::{
    BertEmbedder, EmbeddingHandler, GenerationEngine, GenerationEngineConfig, Generator,
};
use switchyard_vram::{BudgetMonitor, Reservation, VramError};

use crate::config::{ModelKind, ModelSpec, Registry};
use crate::engine::Sessions;
use crate::engine::error::EngineError;
use crate::engine::image_ops::ImageOpsHandler;
use crate::engine::replicas::ReplicaKey;
use crate::engine::tuning;

/// A loaded model's pipeline.
pub(crate) enum Runner {
    /// Continuous batching over a generation model (boxed: it is large).
    Generation(Box<GenerationEngine>),
    /// Dynamic batching of embedding inputs.
    Embedding(Batcher<EmbeddingHandler>),
    /// Image processing on a worker thread.
    ImageOps(Batcher<ImageOpsHandler>),
    /// Stable Diffusion, compatible requests batched.
    #[cfg(feature = "diffusion")]
    Diffusion(Batcher<switchyard_diffusion::DiffusionHandler>),
}

impl Runner {
    /// Cancels batcher request `id` if this runner has it.
    pub(crate) fn cancel(&self, id: switchyard_core::RequestId) {
        match self {
            Runner::Generation(_) => {}
            Runner::Embedding(b) => {
                b.cancel(id);
            }
            Runner::ImageOps(b) => {
                b.cancel(id);
            }
            #[cfg(feature = "diffusion")]
            Runner::Diffusion(b) => {
                b.cancel(id);
            }
        }
    }
}

/// A model the cache holds: its spec and its running pipeline. Requests in
/// flight hold it by `Arc`, so evicting it never cuts them short.
pub(crate) struct LoadedModel {
    pub(crate) spec: ModelSpec,
    pub(crate) runner: Runner,
    /// Its bytes held against the engine's memory monitor, given back when
    /// the last user lets go of it.
    pub(crate) _memory: Option<Reservation>,
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
    /// Longest an embedding or image batch waits to fill.
    pub(crate) batch_max_wait: Duration,
    /// The priority at or above which a request pauses less urgent work
    /// on its device (`None`: priorities do not cross models).
    pub(crate) yield_to: Option<Priority>,
    /// Each device's gate (none when priorities do not cross models).
    pub(crate) yield_gates: HashMap<DeviceId, Arc<YieldGate>>,
}

/// The cache's loader: registry entries to pipelines.
pub(crate) struct ModelLoader {
    pub(crate) registry: Arc<Registry>,
    pub(crate) hf_cache: PathBuf,
    pub(crate) settings: RunnerSettings,
    /// Batch sizes and worker counts changed at run time.
    pub(crate) tunings: super::tuning::Tunings,
    /// Loaded models' bytes are reserved against it, when set.
    pub(crate) monitor: Option<BudgetMonitor>,
    /// Frees memory on a device (evicts its unused models) when a batch
    /// runs out; set once the engine is built.
    pub(crate) free_memory: std::sync::OnceLock<std::sync::Weak<super::Inner>>,
    /// The engine's sessions, for diffusion progress.
    #[cfg_attr(not(feature = "diffusion"), allow(dead_code))]
    pub(crate) sessions: Sessions,
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
    /// `builder` sharing `device`'s yield gate, if it has one.
    fn gated<H: BatchHandler>(
        &self,
        builder: BatcherBuilder<H>,
        device: DeviceId,
    ) -> BatcherBuilder<H> {
        match self.settings.yield_gates.get(&device) {
            Some(gate) => builder.yield_gate(Arc::clone(gate)),
            None => builder,
        }
    }

    /// Holds `bytes` for `spec` against the monitor (nothing to hold
    /// without one, or for a device it has no budget for).
    fn reserve(
        &self,
        spec: &ModelSpec,
        device: DeviceId,
        bytes: u64,
    ) -> Result<Option<Reservation>, EngineError> {
        let Some(monitor) = &self.monitor else {
            return Ok(None);
        };
        match monitor.reserve(device, bytes) {
            Ok(r) => Ok(Some(r)),
            Err(VramError::OverBudget {
                requested,
                available,
                ..
            }) => Err(EngineError::InsufficientMemory {
                model: spec.id.clone(),
                needed: requested,
                free: available,
            }),
            Err(_) => Ok(None),
        }
    }

    /// What a runner's batcher calls when a batch ran out of memory on
    /// `device`: evict the device's unused models.
    fn memory_hook(&self, device: DeviceId) -> impl Fn() + Send + Sync + 'static {
        let engine = self.free_memory.get().cloned().unwrap_or_default();
        move || {
            if let Some(inner) = engine.upgrade() {
                inner.free_memory(device);
            }
        }
    }

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
        let fail = |reason: String| EngineError::ModelLoad {
            model: spec.id.clone(),
            reason,
        };
        if spec.kind == ModelKind::ImageProcessing {
            let bytes = spec.memory_bytes.unwrap_or(0);
            let memory = self.reserve(spec, device, bytes)?;
            let batcher = self
                .gated(Batcher::builder(ImageOpsHandler::new(&spec.id)), device)
                .workers(1)
                .fixed(1)
                .build()
                .map_err(|e| fail(e.to_string()))?;
            return Ok(Loaded {
                value: LoadedModel {
                    spec: spec.clone(),
                    runner: Runner::ImageOps(batcher),
                    _memory: memory,
                },
                bytes,
            });
        }
        let path = self.path(spec)?;
        // Held from before the load, on the estimate; set to the measured
        // size after it.
        let estimate = spec.memory_bytes.unwrap_or_else(|| disk_bytes(&path));
        let mut memory = self.reserve(spec, device, estimate)?;
        let (runner, extra) = match spec.kind {
            ModelKind::TextGeneration => {
                let generator = Generator::load(&path, device).map_err(|e| fail(e.to_string()))?;
                let config = GenerationEngineConfig {
                    yield_gate: self.settings.yield_gates.get(&device).cloned(),
                    kv_tokens: self.settings.kv_tokens,
                    max_running: tuning::batch_size(&self.tunings, spec),
                    ..GenerationEngineConfig::default()
                };
                let kv = generator.kv_bytes(config.kv_tokens) as u64;
                let engine = generator.serve(config).map_err(|e| fail(e.to_string()))?;
                (Runner::Generation(Box::new(engine)), kv)
            }
            ModelKind::Embedding => {
                let embedder =
                    BertEmbedder::load(&path, device).map_err(|e| fail(e.to_string()))?;
                let handler = EmbeddingHandler::new(Arc::new(embedder));
                let batcher = self
                    .gated(Batcher::builder(handler), device)
                    .workers(tuning::workers(&self.tunings, spec))
                    .fixed(tuning::batch_size(&self.tunings, spec))
                    .max_wait(self.settings.batch_max_wait)
                    .on_out_of_memory(self.memory_hook(device))
                    .build()
                    .map_err(|e| fail(e.to_string()))?;
                (Runner::Embedding(batcher), 0)
            }
            #[cfg(feature = "diffusion")]
            kind if kind.is_diffusion() => {
                let batcher = self.diffusion(spec, &path, device).map_err(fail)?;
                (Runner::Diffusion(batcher), 0)
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
        if let Some(r) = &mut memory
            && let Err(e) = r.resize(bytes)
        {
            let free = match e {
                VramError::OverBudget { available, .. } => available,
                _ => 0,
            };
            return Err(EngineError::InsufficientMemory {
                model: spec.id.clone(),
                needed: bytes,
                free: free + r.bytes(),
            });
        }
        Ok(Loaded {
            value: LoadedModel {
                spec: spec.clone(),
                runner,
                _memory: memory,
            },
            bytes,
        })
    }
}

#[cfg(feature = "diffusion")]
impl ModelLoader {
    /// A Stable Diffusion folder behind a batcher whose steps are reported
    /// as its requests' progress.
    fn diffusion(
        &self,
        spec: &ModelSpec,
        path: &Path,
        device: DeviceId,
    ) -> Result<Batcher<switchyard_diffusion::DiffusionHandler>, String> {
        use crate::config::WeightDtype;
        use candle_core::DType;
        use switchyard_diffusion::{DiffusionHandler, LoadOptions, StableDiffusion};

        let options = LoadOptions {
            device: device.to_candle().map_err(|e| e.to_string())?,
            dtype: Some(match spec.dtype {
                WeightDtype::F32 => DType::F32,
                WeightDtype::F16 => DType::F16,
                WeightDtype::Bf16 => DType::BF16,
            }),
            ..LoadOptions::default()
        };
        let sd = StableDiffusion::load(path, &options).map_err(|e| e.to_string())?;
        let sessions = Arc::clone(&self.sessions);
        let observer: switchyard_diffusion::StepObserver = Arc::new(move |ids, progress| {
            let sessions = sessions.lock();
            for id in ids {
                if let Some(s) = sessions.get(id) {
                    s.slot
                        .done_units
                        .store(progress.step as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        let handler = DiffusionHandler::new(spec.id.as_str(), Arc::new(RwLock::new(sd)))
            .with_step_observer(observer);
        self.gated(Batcher::builder(handler), device)
            .workers(tuning::workers(&self.tunings, spec))
            .fixed(tuning::batch_size(&self.tunings, spec))
            .max_wait(self.settings.batch_max_wait)
            .on_out_of_memory(self.memory_hook(device))
            .build()
            .map_err(|e| e.to_string())
    }
}

impl Loader<ReplicaKey, LoadedModel> for ModelLoader {
    fn load(&self, key: &ReplicaKey, device: DeviceId) -> Result<Loaded<LoadedModel>, LoadError> {
        let spec = self.spec(&key.model).map_err(boxed)?;
        self.build(spec, device).map_err(boxed)
    }

    fn estimate_bytes(&self, key: &ReplicaKey, _: DeviceId) -> Option<u64> {
        let spec = self.registry.get(&key.model)?;
        spec.memory_bytes.or_else(|| {
            let path = spec.source.resolve(&self.hf_cache).ok()?;
            Some(disk_bytes(&path))
        })
    }
}
