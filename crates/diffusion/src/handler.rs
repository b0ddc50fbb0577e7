//! [`DiffusionHandler`]: the pipeline as a `switchyard-batch` handler.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::RwLock;
use switchyard_batch::{BatchContext, BatchHandler, BatchKey};
use switchyard_core::RequestId;

use crate::error::DiffusionError;
use crate::pipeline::{GeneratedImage, RunOptions, StableDiffusion, StepProgress};
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
/// A [`StepObserver`] hears of every step with the ids of the batch's
/// requests (an engine turns it into per-request progress).
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
#[derive(Clone)]
pub struct DiffusionHandler {
    model: Arc<str>,
    pipeline: Arc<RwLock<StableDiffusion>>,
    observer: Option<StepObserver>,
}

/// Told after every denoising step of a batch: the ids of the requests
/// running in it (those the batcher assigned or the caller gave with
/// `Request::with_id`) and the step reached.
pub type StepObserver = Arc<dyn Fn(&[RequestId], StepProgress) + Send + Sync>;

impl std::fmt::Debug for DiffusionHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffusionHandler")
            .field("model", &self.model)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl DiffusionHandler {
    /// A handler running `pipeline`, its batch keys named `model`.
    pub fn new(model: impl Into<Arc<str>>, pipeline: Arc<RwLock<StableDiffusion>>) -> Self {
        Self {
            model: model.into(),
            pipeline,
            observer: None,
        }
    }

    /// Reports every step of every batch to `observer`.
    pub fn with_step_observer(mut self, observer: StepObserver) -> Self {
        self.observer = Some(observer);
        self
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
        let ids: Vec<RequestId> = valid.iter().filter_map(|&i| context.id(i)).collect();
        let mut observe = |progress: StepProgress| {
            if let Some(observer) = &self.observer {
                observer(&ids, progress);
            }
            // Between denoising steps, give the device to more urgent work
            // of other models (a no-op outside a batcher with a gate).
            context.yield_point();
        };
        // Inside a step too, between the UNet's blocks.
        let pause = || context.yield_point();
        let run = RunOptions {
            cancel_when: Some(&all_cancelled),
            on_step: Some(&mut observe),
            pause: Some(&pause),
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
    /// Allocation failures (CUDA's out of memory, as candle reports them):
    /// the batcher frees memory and runs the inputs again in halves.
    fn is_out_of_memory(&self, error: &Self::Error) -> bool {
        switchyard_core::is_out_of_memory_message(&error.to_string())
    }
}
