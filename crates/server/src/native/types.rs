//! The native API's response bodies: the engine's status types as JSON.
//! Durations are milliseconds, sizes bytes.

use serde::Serialize;
use switchyard::{Capabilities, EngineMetrics, Optimisations, SessionInfo, SessionState};

/// One registered model.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelInfoOut {
    /// Its id.
    pub id: String,
    /// What it does (`text-generation`, `embedding`, ...).
    pub kind: String,
    /// Where its replicas run.
    pub devices: Vec<String>,
    /// Whether it is in memory now.
    pub loaded: bool,
    /// Largest batch it runs.
    pub max_batch_size: usize,
}

/// `GET /api/inference/capabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CapabilitiesOut {
    /// Request kinds this build serves.
    pub kinds: Vec<String>,
    /// The registered models.
    pub models: Vec<ModelInfoOut>,
    /// The devices models run on.
    pub devices: Vec<String>,
    /// Requests the engine holds waiting before it answers 429.
    pub queue_capacity: usize,
    /// Most inputs of one embedding request.
    pub max_embedding_inputs: usize,
    /// The engine's memory budget, if any.
    pub memory_budget: Option<u64>,
}

impl From<&Capabilities> for CapabilitiesOut {
    fn from(c: &Capabilities) -> Self {
        Self {
            kinds: c.kinds.iter().map(ToString::to_string).collect(),
            models: c
                .models
                .iter()
                .map(|m| ModelInfoOut {
                    id: m.id.clone(),
                    kind: m.kind.to_string(),
                    devices: m.devices.iter().map(ToString::to_string).collect(),
                    loaded: m.loaded,
                    max_batch_size: m.max_batch_size,
                })
                .collect(),
            devices: c.devices.iter().map(ToString::to_string).collect(),
            queue_capacity: c.queue_capacity,
            max_embedding_inputs: c.max_embedding_inputs,
            memory_budget: c.memory_budget,
        }
    }
}

/// One queued or running request.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SessionOut {
    /// Its id (`req-N`).
    pub id: String,
    /// The model.
    pub model: String,
    /// `generation`, `embedding`, ... (the engine's task names)
    pub task: &'static str,
    /// `urgent`, `high`, `normal` or `low`.
    pub priority: String,
    /// `queued` or `running`.
    pub state: &'static str,
    /// Requests ahead of it while queued.
    pub queue_position: Option<usize>,
    /// Since it was submitted.
    pub age_ms: u64,
    /// Units done (tokens, inputs, steps).
    pub done: u64,
    /// Units in all.
    pub total: u64,
    /// Estimated time left, once it can be told.
    pub eta_ms: Option<u64>,
}

impl From<&SessionInfo> for SessionOut {
    fn from(s: &SessionInfo) -> Self {
        let (state, queue_position) = match s.state {
            SessionState::Queued { position } => ("queued", Some(position)),
            SessionState::Running => ("running", None),
        };
        Self {
            id: s.id.to_string(),
            model: s.model.clone(),
            task: s.task,
            priority: s.priority.to_string(),
            state,
            queue_position,
            age_ms: s.age.as_millis() as u64,
            done: s.progress.0,
            total: s.progress.1,
            eta_ms: s.eta.map(|d| d.as_millis() as u64),
        }
    }
}

/// Memory of one device.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeviceStatsOut {
    /// The device (`cpu`, `cuda:0`).
    pub device: String,
    /// Bytes its loaded models take.
    pub models_bytes: u64,
    /// The engine's budget on it, if any.
    pub budget: Option<u64>,
    /// What the device has in all, when measured.
    pub total: Option<u64>,
    /// What is free, when measured.
    pub free: Option<u64>,
    /// `low`, `moderate`, `high` or `critical`, when measured.
    pub pressure: Option<String>,
    /// Models loaded on it.
    pub loaded_models: Vec<String>,
    /// Model-cache hits, misses, loads and evictions.
    pub cache_hits: u64,
    /// Requests that had to load their model.
    pub cache_misses: u64,
    /// Models evicted.
    pub cache_evictions: u64,
}

/// Counts and latency of one model.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelStatsOut {
    /// The model.
    pub id: String,
    /// Requests accepted.
    pub submitted: u64,
    /// Requests that finished well.
    pub succeeded: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Requests cancelled.
    pub cancelled: u64,
    /// Requests that timed out before starting.
    pub timed_out: u64,
    /// Median latency.
    pub latency_p50_ms: f64,
    /// 99th-percentile latency.
    pub latency_p99_ms: f64,
    /// Units (tokens, inputs, images) per second lately, if measured.
    pub throughput: Option<f64>,
}

/// `GET /api/system/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StatsOut {
    /// Requests waiting in the engine's queue.
    pub queued: usize,
    /// Memory and models per device.
    pub devices: Vec<DeviceStatsOut>,
    /// Counts per model, by id.
    pub models: Vec<ModelStatsOut>,
    /// Answers served from the result cache, when it is on.
    pub result_cache_hits: Option<u64>,
    /// What the engine does to serve faster or in less memory.
    pub optimisations: OptimisationsOut,
}

/// The engine's speed and memory settings in effect.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OptimisationsOut {
    /// Instruction set of the quantized CPU matmuls (`avx512-vnni`,
    /// `avx2`, `neon-dotprod`, `neon`, `scalar`).
    pub cpu_kernels: String,
    /// Threads the CPU kernels share.
    pub compute_threads: usize,
    /// Less urgent work pauses while a request at this priority or above
    /// runs on its device; absent: off.
    pub cross_model_priority: Option<String>,
    /// Entries the result cache keeps; absent: off.
    pub result_cache_capacity: Option<usize>,
    /// Most bytes loaded models may take per device; absent: no engine
    /// limit.
    pub memory_budget: Option<u64>,
    /// Longest a dynamic batch waits to fill.
    pub batch_max_wait_ms: f64,
    /// Per model, by id.
    pub models: Vec<ModelOptimisationsOut>,
}

/// One model's speed and memory settings.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelOptimisationsOut {
    /// The model.
    pub id: String,
    /// `continuous` (generation) or `dynamic`.
    pub batching: String,
    /// Most running sequences, or inputs per batch, as set now.
    pub batch_size: usize,
    /// Batch worker threads per replica (absent for generation).
    pub workers: Option<usize>,
    /// Copies serving it.
    pub replicas: usize,
    /// Compute dtype of its weights.
    pub dtype: String,
    /// Paged KV cache tokens of a loaded generation model.
    pub kv_cache_tokens: Option<usize>,
    /// Tokens per KV block.
    pub kv_block_tokens: Option<usize>,
    /// Most prompt tokens prefilled per step (chunked prefill).
    pub prefill_chunk_tokens: Option<usize>,
    /// Whether prompts share the KV blocks of a common prefix.
    pub prefix_caching: Option<bool>,
    /// Share of prompt tokens served from the prefix cache.
    pub prefix_hit_rate: Option<f64>,
    /// Whether urgent requests may pause low-priority sequences.
    pub urgent_preempts_low: Option<bool>,
    /// p95 inter-token latency the running batch adapts to hold.
    pub latency_target_ms: Option<f64>,
    /// Attention slicing of a loaded diffusion model (`auto`, `max`, a
    /// slice size); absent: off or not loaded.
    pub attention_slicing: Option<String>,
    /// Whether a loaded diffusion model's VAE works image by image.
    pub vae_slicing: Option<bool>,
    /// Whether it decodes in tiles.
    pub vae_tiling: Option<bool>,
}

impl OptimisationsOut {
    /// The wire form of `o`.
    pub fn new(o: &Optimisations) -> Self {
        let models = o
            .models
            .iter()
            .map(|m| {
                let g = m.generation.as_ref();
                let s = m.memory_saving.as_ref();
                ModelOptimisationsOut {
                    id: m.id.clone(),
                    batching: m.batching.as_str().to_owned(),
                    batch_size: m.batch_size,
                    workers: m.workers,
                    replicas: m.replicas,
                    dtype: m.dtype.as_str().to_owned(),
                    kv_cache_tokens: g.map(|g| g.kv_cache_tokens),
                    kv_block_tokens: g.map(|g| g.kv_block_tokens),
                    prefill_chunk_tokens: g.map(|g| g.prefill_chunk_tokens),
                    prefix_caching: g.map(|g| g.prefix_caching),
                    prefix_hit_rate: g.map(|g| g.prefix_hit_rate),
                    urgent_preempts_low: g.map(|g| g.urgent_preempts_low),
                    latency_target_ms: g
                        .and_then(|g| g.latency_target)
                        .map(|d| d.as_secs_f64() * 1e3),
                    attention_slicing: s.and_then(|s| s.attention_slicing.clone()),
                    vae_slicing: s.map(|s| s.vae_slicing),
                    vae_tiling: s.map(|s| s.vae_tiling),
                }
            })
            .collect();
        Self {
            cpu_kernels: o.cpu_kernels.clone(),
            compute_threads: o.compute_threads,
            cross_model_priority: o.cross_model_priority.map(|p| p.to_string()),
            result_cache_capacity: o.result_cache_capacity,
            memory_budget: o.memory_budget,
            batch_max_wait_ms: o.batch_max_wait.as_secs_f64() * 1e3,
            models,
        }
    }
}

impl StatsOut {
    /// The stats from the engine's metrics and settings.
    pub fn new(m: &EngineMetrics, o: &Optimisations) -> Self {
        let devices = m
            .memory
            .iter()
            .map(|d| {
                let cache = m
                    .cache
                    .iter()
                    .find(|(dev, _)| *dev == d.device)
                    .map(|(_, c)| c);
                DeviceStatsOut {
                    device: d.device.to_string(),
                    models_bytes: d.models_bytes,
                    budget: d.budget,
                    total: d.snapshot.as_ref().map(|s| s.total),
                    free: d.snapshot.as_ref().map(|s| s.free),
                    pressure: d.pressure.map(|p| p.to_string()),
                    loaded_models: cache
                        .map(|c| c.models.iter().map(|(k, _)| k.clone()).collect())
                        .unwrap_or_default(),
                    cache_hits: cache.map_or(0, |c| c.hits),
                    cache_misses: cache.map_or(0, |c| c.misses),
                    cache_evictions: cache.map_or(0, |c| c.evictions),
                }
            })
            .collect();
        let mut models: Vec<ModelStatsOut> = m
            .models
            .iter()
            .map(|(id, s)| ModelStatsOut {
                id: id.clone(),
                submitted: s.submitted,
                succeeded: s.succeeded,
                failed: s.failed,
                cancelled: s.cancelled,
                timed_out: s.timed_out,
                latency_p50_ms: s.latency.p50 * 1e3,
                latency_p99_ms: s.latency.p99 * 1e3,
                throughput: s.throughput,
            })
            .collect();
        models.sort_by(|a, b| a.id.cmp(&b.id));
        Self {
            queued: m.queued,
            devices,
            models,
            result_cache_hits: m.results.as_ref().map(|r| r.hits),
            optimisations: OptimisationsOut::new(o),
        }
    }
}

/// `POST /api/system/cleanup`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CleanupOut {
    /// Models taken out of memory.
    pub unloaded: usize,
}
