//! Changing a model's batch size and worker threads while it serves: on
//! every loaded replica now, and on replicas loaded later.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use switchyard_batch::MetricsSnapshot;

use super::models::Runner;
use super::{Engine, EngineError, Result};
use crate::config::ModelSpec;

/// Most batch size or worker threads a call may set.
const MAX_SETTING: usize = 4096;

/// A model's settings changed at run time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tuning {
    batch_size: Option<usize>,
    workers: Option<usize>,
}

/// By model id; shared by the engine (which sets them) and the loader
/// (which builds pipelines with them).
pub(crate) type Tunings = Arc<Mutex<HashMap<String, Tuning>>>;

/// The batch size a new pipeline of `spec` starts with.
pub(crate) fn batch_size(tunings: &Tunings, spec: &ModelSpec) -> usize {
    tunings
        .lock()
        .get(&spec.id)
        .and_then(|t| t.batch_size)
        .unwrap_or(spec.max_batch_size)
}

/// The worker threads a new batcher of `spec` starts with.
pub(crate) fn workers(tunings: &Tunings, spec: &ModelSpec) -> usize {
    tunings
        .lock()
        .get(&spec.id)
        .and_then(|t| t.workers)
        .unwrap_or(1)
}

impl Runner {
    fn set_batch_size(&self, size: usize) {
        match self {
            Runner::Generation(engine) => {
                engine.set_max_running(size);
            }
            Runner::Embedding(b) => b.set_batch_size(size),
            Runner::ImageOps(b) => b.set_batch_size(size),
            #[cfg(feature = "diffusion")]
            Runner::Diffusion(b) => b.set_batch_size(size),
        }
    }

    /// False for generation: one scheduling thread runs all its sequences.
    fn scale_workers(&self, n: usize) -> bool {
        match self {
            Runner::Generation(_) => return false,
            Runner::Embedding(b) => b.scale_workers(n),
            Runner::ImageOps(b) => b.scale_workers(n),
            #[cfg(feature = "diffusion")]
            Runner::Diffusion(b) => b.scale_workers(n),
        }
        true
    }

    /// The batcher's counters (none for generation, which reports
    /// `GenerationStats`).
    pub(crate) fn batch_metrics(&self) -> Option<MetricsSnapshot> {
        match self {
            Runner::Generation(_) => None,
            Runner::Embedding(b) => Some(b.metrics()),
            Runner::ImageOps(b) => Some(b.metrics()),
            #[cfg(feature = "diffusion")]
            Runner::Diffusion(b) => Some(b.metrics()),
        }
    }
}

fn check(name: &'static str, n: usize) -> Result<()> {
    if (1..=MAX_SETTING).contains(&n) {
        Ok(())
    } else {
        Err(EngineError::invalid(
            name,
            format!("{n}; must be between 1 and {MAX_SETTING}"),
        ))
    }
}

impl Engine {
    /// Sets model `model`'s batch size: the most inputs per batch of an
    /// embedding, image or diffusion model, the most sequences running at
    /// once of a generation model. It applies to its loaded replicas now
    /// (running work is not cut short) and to replicas loaded later.
    ///
    /// # Errors
    /// [`EngineError::UnknownModel`]; [`EngineError::InvalidInput`] for 0 or
    /// more than 4096.
    pub fn set_batch_size(&self, model: &str, size: usize) -> Result<()> {
        check("batch_size", size)?;
        self.tune(model, |t| t.batch_size = Some(size))?;
        self.each_live(model, |runner| runner.set_batch_size(size));
        Ok(())
    }

    /// Runs `workers` batch worker threads for each replica of `model`
    /// (an embedding, image or diffusion model), now and for replicas loaded
    /// later.
    ///
    /// # Errors
    /// [`EngineError::UnknownModel`]; [`EngineError::InvalidInput`] for 0 or
    /// more than 4096; [`EngineError::Unsupported`] for a generation model,
    /// whose one scheduling thread steps all its sequences together (give it
    /// more `replicas` instead).
    pub fn scale_workers(&self, model: &str, workers: usize) -> Result<()> {
        check("workers", workers)?;
        let spec = self
            .inner
            .registry
            .get(model)
            .ok_or_else(|| EngineError::UnknownModel {
                model: model.to_owned(),
            })?;
        if spec.kind == crate::config::ModelKind::TextGeneration {
            return Err(EngineError::Unsupported {
                model: model.to_owned(),
                reason: "a generation model runs one scheduling thread per replica; \
                         add replicas to scale it"
                    .into(),
            });
        }
        self.tune(model, |t| t.workers = Some(workers))?;
        self.each_live(model, |runner| {
            runner.scale_workers(workers);
        });
        Ok(())
    }

    fn tune(&self, model: &str, f: impl FnOnce(&mut Tuning)) -> Result<()> {
        if self.inner.registry.get(model).is_none() {
            return Err(EngineError::UnknownModel {
                model: model.to_owned(),
            });
        }
        f(self
            .inner
            .tunings
            .lock()
            .entry(model.to_owned())
            .or_default());
        Ok(())
    }

    fn each_live(&self, model: &str, f: impl Fn(&Runner)) {
        let Some(set) = self.inner.replicas.get(model) else {
            return;
        };
        for replica in set.all() {
            if let Some(loaded) = replica.live() {
                f(&loaded.runner);
            }
        }
    }
}
