//! The named comparisons the `report` binary runs.

use std::error::Error;
use std::time::Instant;

use switchyard::core::DeviceId;
use switchyard::text::{BertEmbedder, Embedder};
use switchyard_testkit::fetch;

use crate::{Report, median, millis, time_runs};

/// What a suite returns.
pub type SuiteResult<T = Report> = Result<T, Box<dyn Error + Send + Sync>>;

/// One named suite.
#[derive(Debug, Clone, Copy)]
pub struct Suite {
    /// The name given on the command line.
    pub name: &'static str,
    /// One line on what it measures.
    pub about: &'static str,
    /// Runs it.
    pub run: fn() -> SuiteResult,
}

/// Every suite, in the order `report -- list` shows them.
pub const ALL: &[Suite] = &[
    Suite {
        name: "smoke",
        about: "all-MiniLM-L6-v2: load time and one-sentence embedding latency (median of 20)",
        run: smoke,
    },
    Suite {
        name: "batch-overhead",
        about: "batcher round trips/s vs a bare crossbeam channel; p99 latency at 10% load",
        run: crate::batch_suites::overhead,
    },
    Suite {
        name: "pid-sim",
        about: "simulated load step: PID vs every Fixed size 1..64 vs Triton-style batching",
        run: crate::batch_suites::pid_sim,
    },
    Suite {
        name: "vram",
        about: "cost of one memory snapshot: host (/proc + cgroup), budget, MemoryWatch::sample",
        run: crate::memory_suites::vram,
    },
    Suite {
        name: "pool",
        about: "KvBlockPool allocate+free, append, prefix-hit admission (ns per op)",
        run: crate::memory_suites::pool,
    },
    Suite {
        name: "cache",
        about: "model cache: warm hit cost; loads caused by 16 threads asking for one cold key",
        run: crate::memory_suites::cache,
    },
    Suite {
        name: "embed",
        about: "all-MiniLM-L6-v2 sentences/s at batch 1, 8, 32 (short, long) vs candle's BERT directly",
        run: crate::embed_suite::embed,
    },
    Suite {
        name: "text-decode",
        about: "SmolLM2 Q4_1: 128-token prefill and 128-token decode tokens/s vs candle's quantized llama",
        run: crate::decode_suite::text_decode,
    },
    Suite {
        name: "text-serve",
        about: "SmolLM2 continuous batching: 1-16 streams tok/s, TTFT and ITL at 8, vs llama-server -np 8; prefix caching",
        run: crate::serve_suite::text_serve,
    },
    Suite {
        name: "diffusion",
        about: "tiny SD 64x64: 4 requests batched vs one by one; per-step cost vs candle's UNet directly",
        run: crate::diffusion_suite::diffusion,
    },
    Suite {
        name: "engine",
        about: "facade overhead vs the pipelines (SmolLM2 decode, MiniLM x32); mixed chat+embed+image traffic at three priorities",
        run: crate::engine_suite::engine,
    },
    Suite {
        name: "kernels",
        about: "quantized matmul GB/s and GOP/s on SmolLM2's shapes, m = 1..32, vs candle's QMatMul",
        run: crate::kernels_suite::kernels,
    },
];

/// Find a suite by name.
pub fn find(name: &str) -> Option<&'static Suite> {
    ALL.iter().find(|s| s.name == name)
}

fn smoke() -> SuiteResult {
    let dir = fetch::minilm_dir()?;
    let started = Instant::now();
    let embedder = BertEmbedder::load(&dir, DeviceId::Cpu)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let sentence = ["Switchyard sorts incoming requests by model into batches."];
    let mut one = millis(&time_runs(3, 20, || embedder.embed(&sentence).map(drop))?);
    let batch: Vec<&str> = std::iter::repeat_n(sentence[0], 8).collect();
    let mut eight = millis(&time_runs(2, 10, || embedder.embed(&batch).map(drop))?);
    let mut report = Report::new("smoke");
    report.figure("minilm_load_ms", load_ms, "ms");
    report.figure("minilm_embed_1_median_ms", median(&mut one), "ms");
    report.figure("minilm_embed_8_median_ms", median(&mut eight), "ms");
    Ok(report)
}
