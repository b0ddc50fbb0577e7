//! [`Engine::optimisations`]: what the engine does to serve faster or in
//! less memory, as set now (the stats endpoint's "optimisations").

use std::time::Duration;

use switchyard_core::Priority;
use switchyard_text::{CandleComputePool, ComputePool, Isa};

use super::models::Runner;
use super::{Engine, tuning};
use crate::config::{ModelKind, WeightDtype};

/// The engine's speed and memory settings in effect, engine-wide and per
/// model. Settings that only a loaded model knows (its KV cache layout,
/// its memory-saving options) are there once a replica is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Optimisations {
    /// The instruction set switchyard-kernels' quantized matmuls use on
    /// this CPU (`avx512-vnni`, `avx2`, `neon-dotprod`, `neon`, `scalar`).
    pub cpu_kernels: String,
    /// Threads the quantized kernels and candle's CPU ops share.
    pub compute_threads: usize,
    /// While a request at this priority or above runs on a device, less
    /// urgent work there pauses between steps; `None`: off.
    pub cross_model_priority: Option<Priority>,
    /// Entries the result cache keeps; `None`: off.
    pub result_cache_capacity: Option<usize>,
    /// The most bytes loaded models may take per device; `None`: no limit
    /// set on the engine (a memory monitor may still budget a device).
    pub memory_budget: Option<u64>,
    /// Longest a dynamic batch waits to fill.
    pub batch_max_wait: Duration,
    /// Per model, by id.
    pub models: Vec<ModelOptimisations>,
}

/// How a model's requests share its forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Sequences join and leave the running batch at every decoding step
    /// (generation models).
    Continuous,
    /// Requests that arrive together run as one batch (embedding, image
    /// and diffusion models).
    Dynamic,
}

impl Batching {
    /// `continuous` or `dynamic`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Batching::Continuous => "continuous",
            Batching::Dynamic => "dynamic",
        }
    }
}

/// One model's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOptimisations {
    /// The model.
    pub id: String,
    /// How its requests are batched.
    pub batching: Batching,
    /// Most sequences running at once (continuous) or inputs per batch
    /// (dynamic), as set now ([`Engine::set_batch_size`] changes it).
    pub batch_size: usize,
    /// Batch worker threads per replica; `None` for generation, which runs
    /// one scheduling thread per replica.
    pub workers: Option<usize>,
    /// Copies of the model serving it.
    pub replicas: usize,
    /// The dtype its weights compute in.
    pub dtype: WeightDtype,
    /// A loaded generation model's KV cache and scheduling settings.
    pub generation: Option<GenerationSettings>,
    /// A loaded diffusion model's memory-saving options.
    pub memory_saving: Option<MemorySaving>,
}

/// A generation model's KV cache and scheduling, as its loaded replica
/// runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationSettings {
    /// Tokens the paged KV cache holds, over all sequences.
    pub kv_cache_tokens: usize,
    /// Tokens per KV cache block.
    pub kv_block_tokens: usize,
    /// Most prompt tokens prefilled in one step (chunked prefill).
    pub prefill_chunk_tokens: usize,
    /// Whether prompts that share a prefix share its KV blocks.
    pub prefix_caching: bool,
    /// Share of prompt tokens served from the prefix cache so far.
    pub prefix_hit_rate: f64,
    /// Whether an urgent request may pause a low-priority sequence.
    pub urgent_preempts_low: bool,
    /// The p95 inter-token latency held by adapting the running batch;
    /// `None`: the batch size is fixed.
    pub latency_target: Option<Duration>,
}

/// A diffusion pipeline's memory-saving options (diffusers' names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySaving {
    /// `auto`, `max` or a slice size of (batch x head) rows; `None`: off.
    pub attention_slicing: Option<String>,
    /// Whether the VAE works one image at a time.
    pub vae_slicing: bool,
    /// Whether the VAE decodes in tiles.
    pub vae_tiling: bool,
}

impl Engine {
    /// The speed and memory settings in effect now.
    pub fn optimisations(&self) -> Optimisations {
        let inner = &self.inner;
        let settings = &inner.loader.settings;
        let mut models: Vec<ModelOptimisations> = inner
            .registry
            .models()
            .iter()
            .map(|spec| {
                let generation = spec.kind == ModelKind::TextGeneration;
                let mut model = ModelOptimisations {
                    id: spec.id.clone(),
                    batching: if generation {
                        Batching::Continuous
                    } else {
                        Batching::Dynamic
                    },
                    batch_size: tuning::batch_size(&inner.tunings, spec),
                    workers: (!generation).then(|| tuning::workers(&inner.tunings, spec)),
                    replicas: spec.replicas,
                    dtype: spec.dtype,
                    generation: None,
                    memory_saving: None,
                };
                let live = inner
                    .replicas
                    .get(&spec.id)
                    .and_then(|set| set.all().iter().find_map(|r| r.live()));
                if let Some(loaded) = live {
                    loaded.runner.describe(&mut model);
                }
                model
            })
            .collect();
        models.sort_by(|a, b| a.id.cmp(&b.id));
        Optimisations {
            cpu_kernels: Isa::best().to_string(),
            compute_threads: CandleComputePool.threads(),
            cross_model_priority: settings.yield_to,
            result_cache_capacity: inner.results.as_ref().map(|r| r.stats().capacity),
            memory_budget: inner.memory_budget,
            batch_max_wait: settings.batch_max_wait,
            models,
        }
    }
}

impl Runner {
    /// Fills in what only the loaded pipeline knows.
    fn describe(&self, model: &mut ModelOptimisations) {
        match self {
            Runner::Generation(engine) => {
                let config = engine.config();
                model.generation = Some(GenerationSettings {
                    kv_cache_tokens: config.kv_tokens,
                    kv_block_tokens: config.block_size,
                    prefill_chunk_tokens: config.step_tokens,
                    prefix_caching: config.prefix_caching,
                    prefix_hit_rate: engine.stats().prefix_hit_rate(),
                    urgent_preempts_low: config.urgent_preempts_low,
                    latency_target: config.latency.as_ref().map(|l| l.pid.setpoint),
                });
            }
            #[cfg(feature = "diffusion")]
            Runner::Diffusion(batcher) => {
                use switchyard_diffusion::AttentionSlicing;
                let options = batcher.handler().pipeline().read().memory_options();
                model.memory_saving = Some(MemorySaving {
                    attention_slicing: options.attention_slicing.map(|s| match s {
                        AttentionSlicing::Auto => "auto".to_owned(),
                        AttentionSlicing::Max => "max".to_owned(),
                        AttentionSlicing::Size(n) => n.to_string(),
                    }),
                    vae_slicing: options.vae_slicing,
                    vae_tiling: options.vae_tiling.is_some(),
                });
            }
            Runner::Embedding(..) | Runner::ImageOps(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelSource, ModelSpec};

    fn engine() -> Engine {
        // Never loaded: the paths need not exist.
        let path = |p: &str| ModelSource::Path(p.into());
        let mut embed = ModelSpec::new("embed", ModelKind::Embedding, path("embed"));
        embed.max_batch_size = 12;
        let mut chat = ModelSpec::new("chat", ModelKind::TextGeneration, path("chat.gguf"));
        chat.max_batch_size = 5;
        chat.replicas = 2;
        Engine::builder()
            .model(embed)
            .and_then(|b| b.model(chat))
            .map(|b| b.result_cache(7).memory_budget(1 << 30).yield_to(None))
            .and_then(|b| b.build())
            .expect("an engine over two unloaded models")
    }

    #[test]
    fn reports_engine_settings_and_each_model_by_id() {
        let engine = engine();
        let o = engine.optimisations();
        assert_eq!(o.cpu_kernels, Isa::best().to_string());
        assert!(o.compute_threads >= 1);
        assert_eq!(o.cross_model_priority, None);
        assert_eq!(o.result_cache_capacity, Some(7));
        assert_eq!(o.memory_budget, Some(1 << 30));
        let ids: Vec<&str> = o.models.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["chat", "embed"]);
        let chat = &o.models[0];
        assert_eq!(chat.batching, Batching::Continuous);
        assert_eq!((chat.batch_size, chat.workers, chat.replicas), (5, None, 2));
        let embed = &o.models[1];
        assert_eq!(embed.batching, Batching::Dynamic);
        assert_eq!((embed.batch_size, embed.workers), (12, Some(1)));
        // Nothing is loaded: what only a pipeline knows is absent.
        assert!(o.models.iter().all(|m| m.generation.is_none()));
    }

    #[test]
    fn follows_run_time_tuning() {
        let engine = engine();
        engine.set_batch_size("embed", 3).expect("a known model");
        engine.scale_workers("embed", 2).expect("a known model");
        let o = engine.optimisations();
        let embed = o.models.iter().find(|m| m.id == "embed").expect("listed");
        assert_eq!((embed.batch_size, embed.workers), (3, Some(2)));
    }
}
