//! [`DiffusionHandler`]: the pipeline as a `switchyard-batch` handler.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::RwLock;
use switchyard_batch::{BatchContext, BatchHandler, BatchKey};

use crate::error::DiffusionError;
use crate::pipeline::{GeneratedImage, RunOptions, StableDiffusion};
use crate::request::DiffusionRequest;

/// Runs batches of diffusion requests on one pipeline. Requests share a
/// batch only when their [`crate::BatchKey`]s are equal (pipeline, size,
/// steps, first step, sampler, guidance on/off); a request's cost is
/// [`DiffusionRequest::cost`] (pixels x steps that run x images, doubled with
/// guidance), so the batcher's `max_batch_cost` bounds a batch's work.
///
/// An invalid request fails alone with its typed error; the others of its
/// batch still run. The run stops between steps once every request of the
/// batch is cancelled; a request cancelled while the others go on gets
/// [`DiffusionError::Cancelled`] and its images are dropped. The pipeline
/// sits behind a lock so LoRA or memory settings can change between batches.
///
/// ```
/// use std::sync::Arc;
/// use parking_lot::RwLock;
/// use switchyard_batch::Batcher;
/// use switchyard_diffusion::{
///     DiffusionHandler, DiffusionRequest, LoadOptions, StableDiffusion, TextToImage,
/// };
/// use switchyard_testkit::tiny::{self, TinyStableDiffusion};
///
/// let dir = tempfile::tempdir()?;
/// tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::default(), 7)?;
/// let sd = StableDiffusion::load(dir.path(), &LoadOptions::default())?;
/// let handler = DiffusionHandler::new("tiny-sd", Arc::new(RwLock::new(sd)));
/// let batcher = Batcher::builder(handler).build()?;
/// let request = TextToImage { width: 32, height: 32, steps: 2, ..TextToImage::new("a train") };
/// let images = batcher.process(DiffusionRequest::from(request))?;
/// assert_eq!(images.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct DiffusionHandler {
    model: Arc<str>,
    pipeline: Arc<RwLock<StableDiffusion>>,
}

impl DiffusionHandler {
    /// A handler running `pipeline`, its batch keys named `model`.
    pub fn new(model: impl Into<Arc<str>>, pipeline: Arc<RwLock<StableDiffusion>>) -> Self {
        Self {
            model: model.into(),
            pipeline,
        }
    }

    /// The pipeline (lock it to change LoRA or memory settings).
    pub fn pipeline(&self) -> &Arc<RwLock<StableDiffusion>> {
        &self.pipeline
    }
}

impl BatchHandler for DiffusionHandler {
    type Input = DiffusionRequest;
    type Output = Vec<GeneratedImage>;
    type Error = Arc<DiffusionError>;

    fn run(
        &self,
        batch: &mut [DiffusionRequest],
        context: &BatchContext<'_>,
    ) -> Vec<Result<Vec<GeneratedImage>, Arc<DiffusionError>>> {
        let sd = self.pipeline.read();
        let mut results: Vec<Result<Vec<GeneratedImage>, Arc<DiffusionError>>> = batch
            .iter()
            .map(|r| {
                r.validate(sd.vae_scale_factor())
                    .map(|()| Vec::new())
                    .map_err(Arc::new)
            })
            .collect();
        let valid: Vec<usize> = (0..batch.len()).filter(|&i| results[i].is_ok()).collect();
        if valid.is_empty() {
            return results;
        }
        let requests: Vec<DiffusionRequest> = valid.iter().map(|&i| batch[i].clone()).collect();
        let all_cancelled = || valid.iter().all(|&i| context.is_cancelled(i));
        let run = RunOptions {
            cancel_when: Some(&all_cancelled),
            ..RunOptions::default()
        };
        match sd.generate(&requests, run) {
            Ok(images) => {
                for image in images {
                    let slot = valid[image.request];
                    if let Ok(out) = &mut results[slot] {
                        out.push(GeneratedImage {
                            request: 0,
                            ..image
                        });
                    }
                }
                for &i in &valid {
                    if context.is_cancelled(i) {
                        results[i] = Err(Arc::new(DiffusionError::Cancelled));
                    }
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for &i in &valid {
                    results[i] = Err(Arc::clone(&e));
                }
            }
        }
        results
    }

    fn key(&self, input: &DiffusionRequest) -> BatchKey {
        let key = input.batch_key(self.pipeline.read().default_scheduler());
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        BatchKey::new(Arc::clone(&self.model), hasher.finish())
    }

    fn cost(&self, input: &DiffusionRequest) -> u64 {
        input.cost()
    }
}
