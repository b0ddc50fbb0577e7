//! [`EngineMetrics::to_prometheus`]: the metrics snapshot in Prometheus'
//! text exposition format (version 0.0.4), for a `/metrics` endpoint.

use std::fmt::Write;

use crate::engine::status::EngineMetrics;

/// One metric family being written: its `# HELP` and `# TYPE` lines go
/// out before its first sample, and only if it has one.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    started: bool,
}

impl<'a> Family<'a> {
    fn new(
        out: &'a mut String,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
    ) -> Self {
        Self {
            out,
            name,
            help,
            kind,
            started: false,
        }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        if !self.started {
            self.started = true;
            let _ = writeln!(self.out, "# HELP {} {}", self.name, self.help);
            let _ = writeln!(self.out, "# TYPE {} {}", self.name, self.kind);
        }
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

impl EngineMetrics {
    /// The snapshot in Prometheus' text format: per model request counts by
    /// outcome, latency quantiles, throughput and generation state; the
    /// queue depth; per device the model cache's counters and bytes. Lines
    /// are in a stable order (models and devices sorted).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut models: Vec<(&String, _)> = self.models.iter().collect();
        models.sort_by(|a, b| a.0.cmp(b.0));

        let mut f = Family::new(
            &mut out,
            "switchyard_requests_submitted_total",
            "Requests accepted by the engine.",
            "counter",
        );
        for (model, m) in &models {
            f.sample(&[("model", model)], m.submitted as f64);
        }
        let mut f = Family::new(
            &mut out,
            "switchyard_requests_finished_total",
            "Requests ended, by outcome.",
            "counter",
        );
        for (model, m) in &models {
            for (outcome, n) in [
                ("succeeded", m.succeeded),
                ("failed", m.failed),
                ("cancelled", m.cancelled),
                ("timed_out", m.timed_out),
            ] {
                f.sample(&[("model", model), ("outcome", outcome)], n as f64);
            }
        }
        let mut f = Family::new(
            &mut out,
            "switchyard_request_latency_seconds",
            "Latency of recent successful requests, submission to end.",
            "gauge",
        );
        for (model, m) in models.iter().filter(|(_, m)| m.succeeded > 0) {
            for (q, v) in [
                ("0.5", m.latency.p50),
                ("0.95", m.latency.p95),
                ("0.99", m.latency.p99),
            ] {
                f.sample(&[("model", model), ("quantile", q)], v);
            }
        }
        let mut f = Family::new(
            &mut out,
            "switchyard_request_throughput",
            "Units (tokens, inputs, steps) per second of one request, smoothed.",
            "gauge",
        );
        for (model, m) in &models {
            if let Some(t) = m.throughput {
                f.sample(&[("model", model)], t);
            }
        }
        let generation: Vec<_> = models
            .iter()
            .filter_map(|(model, m)| Some((*model, m.generation.as_ref()?)))
            .collect();
        for (name, help, kind, read) in [
            (
                "switchyard_generation_running",
                "Sequences running in the generation engine.",
                "gauge",
                (|g| g.running as f64) as fn(&switchyard_text::GenerationStats) -> f64,
            ),
            (
                "switchyard_generation_waiting",
                "Sequences waiting for room in the generation engine.",
                "gauge",
                |g| g.waiting as f64,
            ),
            (
                "switchyard_generation_tokens_total",
                "Tokens generated.",
                "counter",
                |g| g.generated_tokens as f64,
            ),
            (
                "switchyard_generation_prefill_tokens_total",
                "Prompt tokens computed.",
                "counter",
                |g| g.prefill_tokens as f64,
            ),
            (
                "switchyard_generation_cached_prompt_tokens_total",
                "Prompt tokens served from the prefix cache.",
                "counter",
                |g| g.cached_prompt_tokens as f64,
            ),
            (
                "switchyard_generation_preemptions_total",
                "Sequences preempted for lack of KV blocks.",
                "counter",
                |g| g.preemptions as f64,
            ),
            (
                "switchyard_generation_inter_token_p95_seconds",
                "95th percentile of the time between tokens.",
                "gauge",
                |g| g.itl_p95_secs,
            ),
        ] {
            let mut f = Family::new(&mut out, name, help, kind);
            for (model, g) in &generation {
                f.sample(&[("model", model)], read(g));
            }
        }
        for (name, help, kind, read) in [
            (
                "switchyard_replica_dispatched_total",
                "Requests sent to each replica.",
                "counter",
                (|r| r.dispatched as f64) as fn(&crate::engine::ReplicaMetrics) -> f64,
            ),
            (
                "switchyard_replica_outstanding_units",
                "Units sent to each replica that have not ended.",
                "gauge",
                |r| r.outstanding_units as f64,
            ),
        ] {
            let mut f = Family::new(&mut out, name, help, kind);
            for (model, m) in &models {
                for r in &m.replicas {
                    let (device, slot) = (r.device.to_string(), r.slot.to_string());
                    let labels = [
                        ("model", model.as_str()),
                        ("device", &device),
                        ("slot", &slot),
                    ];
                    f.sample(&labels, read(r));
                }
            }
        }
        Family::new(
            &mut out,
            "switchyard_queue_depth",
            "Requests waiting in the engine's queue.",
            "gauge",
        )
        .sample(&[], self.queued as f64);

        if let Some(r) = &self.results {
            for (name, help, kind, value) in [
                (
                    "switchyard_result_cache_hits_total",
                    "Requests answered from the result cache.",
                    "counter",
                    r.hits as f64,
                ),
                (
                    "switchyard_result_cache_misses_total",
                    "Requests the result cache could not answer.",
                    "counter",
                    r.misses as f64,
                ),
                (
                    "switchyard_result_cache_entries",
                    "Results kept.",
                    "gauge",
                    r.entries as f64,
                ),
            ] {
                Family::new(&mut out, name, help, kind).sample(&[], value);
            }
        }

        let mut devices: Vec<_> = self.cache.iter().collect();
        devices.sort_by_key(|(d, _)| d.to_string());
        for (name, help, kind, read) in [
            (
                "switchyard_cache_hits_total",
                "Model lookups that found the model loaded.",
                "counter",
                (|c| c.hits as f64) as fn(&switchyard_cache::CacheStats<String>) -> f64,
            ),
            (
                "switchyard_cache_misses_total",
                "Model lookups that had to load.",
                "counter",
                |c| c.misses as f64,
            ),
            (
                "switchyard_cache_loads_total",
                "Models loaded.",
                "counter",
                |c| c.loads as f64,
            ),
            (
                "switchyard_cache_load_failures_total",
                "Model loads that failed.",
                "counter",
                |c| c.failures as f64,
            ),
            (
                "switchyard_cache_evictions_total",
                "Models evicted to make room.",
                "counter",
                |c| c.evictions as f64,
            ),
            (
                "switchyard_cache_models",
                "Models loaded now.",
                "gauge",
                |c| c.entries as f64,
            ),
            (
                "switchyard_cache_bytes",
                "Bytes the loaded models take.",
                "gauge",
                |c| c.bytes as f64,
            ),
        ] {
            let mut f = Family::new(&mut out, name, help, kind);
            for (device, stats) in &devices {
                f.sample(&[("device", &device.to_string())], read(stats));
            }
        }
        self.write_memory(&mut out, &generation);
        out
    }

    /// Device memory and pressure, and the generation models' KV pools.
    fn write_memory(
        &self,
        out: &mut String,
        generation: &[(&String, &switchyard_text::GenerationStats)],
    ) {
        let mut memory: Vec<_> = self.memory.iter().collect();
        memory.sort_by_key(|m| m.device.to_string());
        let mut f = Family::new(
            out,
            "switchyard_device_memory_bytes",
            "Device memory: total, used and free as read, the budget, and the loaded models' share.",
            "gauge",
        );
        for m in &memory {
            let device = m.device.to_string();
            let s = m.snapshot.as_ref();
            for (kind, value) in [
                ("total", s.map(|s| s.total)),
                ("used", s.map(|s| s.used)),
                ("free", s.map(|s| s.free)),
                ("budget", m.budget),
                ("models", Some(m.models_bytes)),
            ] {
                if let Some(v) = value {
                    f.sample(&[("device", &device), ("kind", kind)], v as f64);
                }
            }
        }
        let mut f = Family::new(
            out,
            "switchyard_device_memory_pressure",
            "Memory pressure level: 0 low, 1 moderate, 2 high, 3 critical.",
            "gauge",
        );
        for m in &memory {
            if let Some(level) = m.pressure {
                let device = m.device.to_string();
                f.sample(&[("device", &device)], f64::from(level as u8));
            }
        }
        let mut f = Family::new(
            out,
            "switchyard_kv_blocks",
            "KV cache blocks of each generation model's pool, by state.",
            "gauge",
        );
        for (model, g) in generation {
            for (state, n) in [
                ("used", g.kv.used),
                ("cached", g.kv.cached),
                ("free", g.kv.free),
            ] {
                f.sample(&[("model", model), ("state", state)], n as f64);
            }
        }
        let mut f = Family::new(
            out,
            "switchyard_kv_prefix_hits_total",
            "Prompt prefix lookups that found cached KV blocks.",
            "counter",
        );
        for (model, g) in generation {
            f.sample(&[("model", model)], g.kv.prefix_hits as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::status::ModelMetrics;

    #[test]
    fn label_values_are_escaped_and_families_have_one_header() {
        let mut m = EngineMetrics::default();
        m.models.insert(
            "we\"ird\\name\n".into(),
            ModelMetrics {
                submitted: 3,
                succeeded: 2,
                ..ModelMetrics::default()
            },
        );
        m.models.insert("a".into(), ModelMetrics::default());
        let text = m.to_prometheus();
        assert!(
            text.contains(r#"switchyard_requests_submitted_total{model="we\"ird\\name\n"} 3"#),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE switchyard_requests_finished_total counter")
                .count(),
            1
        );
        // Latency only for models with a success; sorted by model.
        assert_eq!(
            text.matches("switchyard_request_latency_seconds{").count(),
            3
        );
        let a = text.find("{model=\"a\"}").unwrap_or(usize::MAX);
        let w = text.find("{model=\"we").unwrap_or(0);
        assert!(a < w);
        assert!(text.contains("switchyard_queue_depth 0\n"));
        assert!(text.ends_with('\n'));
    }
}
