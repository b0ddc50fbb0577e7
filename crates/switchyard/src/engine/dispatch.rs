//! The dispatchers: taking requests from the queue in order, getting
//! their model from the device's cache, and handing them to its pipeline;
//! and the checks a request passes before it is queued.

use std::sync::Arc;
use std::time::Instant;

use switchyard_cache::{CacheError, Loader, ModelCache};
use switchyard_core::Priority;
use switchyard_text::{GenerateRequest, Prompt, RequestOptions};

use super::image_ops::{self, ImageJob};
#[cfg(feature = "diffusion")]
use super::images::ImageInput;
use super::models::{LoadedModel, Runner};
use super::replicas::{Replica, ReplicaKey};
use super::slot::Started;
use super::{
    EngineError, Inner, Job, MAX_EMBEDDING_INPUTS, Request, Result, ShutdownMode, Task, Work,
    serves,
};
use crate::config::ModelSpec;

/// `monitor`'s whole budget for `device` (unlimited without one).
fn device_budget(
    monitor: &switchyard_vram::BudgetMonitor,
    device: switchyard_core::DeviceId,
) -> u64 {
    use switchyard_vram::MemoryMonitor;
    monitor.snapshot(device).map_or(u64::MAX, |s| s.total)
}

fn cache_error(model: &str, e: CacheError) -> EngineError {
    match e {
        CacheError::InsufficientMemory { needed, free, .. } => EngineError::InsufficientMemory {
            model: model.to_owned(),
            needed,
            free,
        },
        CacheError::Load { source, .. } => match source.downcast_ref::<EngineError>() {
            Some(e) => e.clone(),
            None => EngineError::ModelLoad {
                model: model.to_owned(),
                reason: source.to_string(),
            },
        },
        other => EngineError::ModelLoad {
            model: model.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// Why a model's batcher refused a request.
fn submit_error(e: switchyard_batch::BatchError) -> EngineError {
    match e {
        switchyard_batch::BatchError::QueueFull { capacity, .. } => {
            EngineError::QueueFull { capacity }
        }
        _ => EngineError::ShuttingDown,
    }
}

impl Inner {
    pub(super) fn dispatch_loop(self: Arc<Self>) {
        loop {
            let job = {
                let mut q = self.queue.lock();
                loop {
                    if q.stopping == Some(ShutdownMode::FailQueued) {
                        break None;
                    }
                    if let Some((_, job)) = q.waiting.pop_first() {
                        break Some(job);
                    }
                    if q.stopping.is_some() {
                        break None;
                    }
                    self.wake.wait(&mut q);
                }
            };
            let Some(job) = job else { return };
            let span = job.span.clone();
            span.in_scope(|| self.dispatch(job));
        }
    }

    fn dispatch(self: &Arc<Self>, job: Job) {
        if job.slot.cancel.is_cancelled() {
            return job.slot.fail(EngineError::Cancelled);
        }
        if job.deadline.is_some_and(|d| Instant::now() >= d) {
            return job.slot.fail(EngineError::TimedOut);
        }
        let Some(replica) = self
            .replicas
            .get(&job.spec.id)
            .map(|set| Arc::clone(set.pick(job.slot.total_units)))
        else {
            return job.slot.fail(EngineError::UnknownModel {
                model: job.spec.id.clone(),
            });
        };
        let Some(cache) = self.caches.get(&replica.device) else {
            return job.slot.fail(EngineError::Failed {
                model: job.spec.id.clone(),
                reason: format!("no cache for {}", replica.device),
            });
        };
        // From here the request counts against the replica until its
        // handle reports the end (unless it already ended: cancelled).
        if let Some(session) = self.sessions.lock().get_mut(&job.id) {
            replica.begin(job.slot.total_units);
            session.replica = Some((Arc::clone(&replica), Instant::now()));
        }
        let model = match self.load(cache, &replica, &job.spec.id) {
            Ok(m) => m,
            Err(e) => {
                *self.last_load_error.lock() = Some((job.spec.id.clone(), e.clone()));
                return job.slot.fail(e);
            }
        };
        {
            let mut last = self.last_load_error.lock();
            if last.as_ref().is_some_and(|(m, _)| *m == job.spec.id) {
                *last = None;
            }
        }
        replica.set_live(&model);
        let started = match (&model.runner, job.work) {
            (Runner::Generation(engine), Work::Generate(prompt, params)) => {
                let request = GenerateRequest {
                    prompt,
                    params,
                    cancel: job.slot.cancel.clone(),
                };
                let options = RequestOptions {
                    priority: job.priority,
                    deadline: None,
                };
                engine
                    .submit_with(&request, options)
                    .map(Started::Stream)
                    .map_err(|e| EngineError::from_text(&job.spec.id, &e))
            }
            (Runner::Embedding(batcher), Work::Embed(inputs)) => {
                start_embeddings(batcher, inputs, job.priority)
            }
            (Runner::ImageOps(batcher), Work::Process(image)) => {
                let r = switchyard_batch::Request::new(image)
                    .with_id(job.id)
                    .with_priority(job.priority);
                batcher
                    .submit(r)
                    .map(Started::Image)
                    .map_err(|e| submit_error(e.error))
            }
            #[cfg(feature = "diffusion")]
            (Runner::Diffusion(batcher), Work::Diffuse(request)) => {
                let r = switchyard_batch::Request::new(request)
                    .with_id(job.id)
                    .with_priority(job.priority);
                batcher
                    .submit(r)
                    .map(Started::Images)
                    .map_err(|e| submit_error(e.error))
            }
            _ => Err(EngineError::Failed {
                model: job.spec.id.clone(),
                reason: "the loaded pipeline does not match the request".into(),
            }),
        };
        match started {
            Ok(s) => {
                let ids = s.batch_ids();
                if !ids.is_empty() {
                    // Cancelling the engine's request reaches the batcher
                    // at once, even while nobody polls the handle.
                    let weak = Arc::downgrade(&model);
                    job.slot.on_cancel(Box::new(move || {
                        if let Some(model) = weak.upgrade() {
                            ids.into_iter().for_each(|id| model.runner.cancel(id));
                        }
                    }));
                }
                job.slot.start(s, model);
            }
            Err(e) => job.slot.fail(e),
        }
    }

    /// `replica` from its device's cache, loading it if need be. A load that
    /// fails for lack of memory evicts the device's unused models and tries
    /// once more; a second such failure is [`EngineError::InsufficientMemory`].
    fn load(
        &self,
        cache: &ModelCache<ReplicaKey, LoadedModel>,
        replica: &Replica,
        model: &str,
    ) -> Result<Arc<LoadedModel>> {
        let first = match cache.get(&replica.key) {
            Ok(m) => return Ok(m),
            Err(e) => cache_error(model, e),
        };
        if !first.is_out_of_memory() {
            return Err(first);
        }
        self.free_memory(replica.device);
        cache
            .get(&replica.key)
            .map_err(|e| match cache_error(model, e) {
                e @ EngineError::InsufficientMemory { .. } => e,
                e if e.is_out_of_memory() => EngineError::InsufficientMemory {
                    model: model.to_owned(),
                    needed: self
                        .loader
                        .estimate_bytes(&replica.key, replica.device)
                        .unwrap_or(0),
                    free: 0,
                },
                e => e,
            })
    }

    /// Checks `request` and turns it into a job's parts.
    pub(super) fn check(&self, request: &Request) -> Result<(ModelSpec, Work, Priority, u64)> {
        let spec = self
            .registry
            .get(&request.model)
            .ok_or_else(|| EngineError::UnknownModel {
                model: request.model.clone(),
            })?;
        if !serves(spec.kind, request.task.kind()) {
            return Err(EngineError::WrongKind {
                model: spec.id.clone(),
                kind: spec.kind,
                request: request.task.name(),
            });
        }
        let priority = request.priority.unwrap_or(spec.priority);
        let (work, units) = match &request.task {
            Task::Generate { prompt, options } => {
                let empty = match prompt {
                    Prompt::Text(t) => t.is_empty(),
                    Prompt::Tokens(t) => t.is_empty(),
                    Prompt::Chat(m) => m.is_empty(),
                };
                if empty {
                    return Err(EngineError::invalid("prompt", "is empty"));
                }
                let params = options.resolve(&spec.defaults)?;
                let units = params.max_tokens as u64;
                (Work::Generate(prompt.clone(), params), units)
            }
            Task::Embed { inputs } => {
                if inputs.is_empty() {
                    return Err(EngineError::invalid("inputs", "is empty"));
                }
                if inputs.len() > MAX_EMBEDDING_INPUTS {
                    return Err(EngineError::invalid(
                        "inputs",
                        format!("{} inputs; at most {MAX_EMBEDDING_INPUTS}", inputs.len()),
                    ));
                }
                (Work::Embed(inputs.clone()), inputs.len() as u64)
            }
            Task::ProcessImage { image, ops } => {
                image_ops::check_ops(image, ops)?;
                let job = ImageJob {
                    image: image.clone(),
                    ops: ops.clone(),
                };
                (Work::Process(job), 1)
            }
            #[cfg(feature = "diffusion")]
            Task::Image {
                prompt,
                input,
                options,
            } => {
                let request = options.resolve(prompt, input, &spec.defaults)?;
                let steps = request.params().steps;
                let run = match input {
                    ImageInput::Noise => steps,
                    _ => ((steps as f64 * request.strength()).floor() as usize).min(steps),
                };
                (Work::Diffuse(request), run as u64)
            }
        };
        let budget = match (self.memory_budget, &self.monitor) {
            (Some(b), Some(m)) => Some(b.min(device_budget(m, spec.devices[0]))),
            (Some(b), None) => Some(b),
            (None, Some(m)) => Some(device_budget(m, spec.devices[0])),
            (None, None) => None,
        };
        if let Some(budget) = budget {
            let estimate = self.replicas.get(&spec.id).and_then(|set| {
                let first = set.all().first()?;
                let cache = self.caches.get(&first.device)?;
                if cache.contains(&first.key) {
                    None
                } else {
                    self.loader.estimate_bytes(&first.key, first.device)
                }
            });
            if let Some(needed) = estimate.filter(|&n| n > budget) {
                return Err(EngineError::InsufficientMemory {
                    model: spec.id.clone(),
                    needed,
                    free: budget,
                });
            }
        }
        Ok((spec.clone(), work, priority, units))
    }
}

/// Queues each input on the model's batcher (which tokenises it and tells
/// the count with its vector); on a refusal the ones queued are cancelled.
fn start_embeddings(
    batcher: &switchyard_batch::Batcher<switchyard_text::EmbeddingHandler>,
    inputs: Vec<String>,
    priority: Priority,
) -> Result<Started> {
    let mut handles = Vec::with_capacity(inputs.len());
    for text in inputs {
        let r = switchyard_batch::Request::new(text).with_priority(priority);
        match batcher.submit(r) {
            Ok(h) => handles.push(h),
            Err(e) => {
                handles.iter().for_each(|h| h.cancel());
                return Err(submit_error(e.error));
            }
        }
    }
    Ok(Started::Embeddings(handles))
}
