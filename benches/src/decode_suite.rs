//! The `text-decode` suite: SmolLM2-135M-Instruct (Q4_1 GGUF) prefill and
//! single-stream decode through our `Generator`, against candle-transformers'
//! own quantized Llama in the same run, same prompt, same token counts.

use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use switchyard::core::DeviceId;
use switchyard::text::{GenerateRequest, Generator, Prompt, SamplingParams, argmax};
use switchyard_testkit::fetch;

use crate::suites::SuiteResult;
use crate::{Report, median};

const PROMPT_TOKENS: usize = 128;
const NEW_TOKENS: usize = 128;
const RUNS: usize = 5;
/// Sequences in the aggregate-decode measurement.
const BATCH: usize = 8;
/// llama.cpp on this machine kind (2 threads), measured when the issue was
/// filed; used when `llama-bench` is not installed.
const LLAMA_CPP_FALLBACK: (f64, f64) = (243.0, 110.0);

/// Prefill and decode times of one run.
struct Timing {
    prefill: Duration,
    /// The remaining `NEW_TOKENS - 1` tokens after the first.
    decode: Duration,
}

impl Timing {
    fn prefill_rate(&self) -> f64 {
        PROMPT_TOKENS as f64 / self.prefill.as_secs_f64()
    }

    fn decode_rate(&self) -> f64 {
        (NEW_TOKENS - 1) as f64 / self.decode.as_secs_f64()
    }
}

fn ours(generator: &Generator, prompt: &[u32]) -> SuiteResult<Timing> {
    let request = GenerateRequest::new(
        Prompt::Tokens(prompt.to_vec()),
        SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(NEW_TOKENS)
        },
    );
    let started = Instant::now();
    let mut first = None;
    let mut tokens = 0;
    for delta in generator.stream(&request)? {
        let delta = delta?;
        tokens += delta.tokens.len();
        if tokens > 0 {
            first.get_or_insert_with(|| started.elapsed());
        }
    }
    let total = started.elapsed();
    if tokens != NEW_TOKENS {
        return Err(format!("generated {tokens} tokens, expected {NEW_TOKENS}").into());
    }
    let prefill = first.unwrap_or(total);
    Ok(Timing {
        prefill,
        decode: total - prefill,
    })
}

fn candle(model: &mut ModelWeights, prompt: &[u32]) -> SuiteResult<Timing> {
    let started = Instant::now();
    let x = Tensor::new(prompt, &Device::Cpu)?.unsqueeze(0)?;
    let logits: Vec<f32> = model.forward(&x, 0)?.squeeze(0)?.to_vec1()?;
    let mut next = argmax(&logits);
    let prefill = started.elapsed();
    let started = Instant::now();
    for i in 0..NEW_TOKENS - 1 {
        let x = Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?;
        let logits: Vec<f32> = model.forward(&x, prompt.len() + i)?.squeeze(0)?.to_vec1()?;
        next = argmax(&logits);
    }
    Ok(Timing {
        prefill,
        decode: started.elapsed(),
    })
}

/// Aggregate decode tokens/s of `BATCH` greedy requests of `NEW_TOKENS`
/// started together: tokens after each stream's first, over the time after
/// the last first token arrived (the single-stream figure leaves out the
/// prefill the same way).
fn batched(generator: &Generator, prompt: &[u32]) -> SuiteResult<f64> {
    let requests: Vec<GenerateRequest> = (0..BATCH)
        .map(|i| {
            // Different prompts: the same text cut at different places.
            let p = prompt[i..i + 16].to_vec();
            GenerateRequest::new(
                Prompt::Tokens(p),
                SamplingParams {
                    ignore_eos: true,
                    ..SamplingParams::greedy(NEW_TOKENS)
                },
            )
        })
        .collect();
    let mut streams = generator.stream_batch(&requests)?;
    let mut counts = vec![0usize; BATCH];
    // Every stream's first token comes from the one prefill step.
    for (stream, count) in streams.iter_mut().zip(&mut counts) {
        while *count == 0 {
            let Some(delta) = stream.next() else {
                return Err("a stream ended before its first token".into());
            };
            *count += delta?.tokens.len();
        }
    }
    let started = Instant::now();
    let firsts: usize = counts.iter().sum();
    for (stream, count) in streams.iter_mut().zip(&mut counts) {
        for delta in stream {
            *count += delta?.tokens.len();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let tokens: usize = counts.iter().sum();
    if tokens != BATCH * NEW_TOKENS {
        return Err(format!("batch generated {tokens} tokens").into());
    }
    Ok((tokens - firsts) as f64 / elapsed)
}

/// llama.cpp's own figures (prefill, decode tokens/s) from `llama-bench`
/// when it is installed (`LLAMA_BENCH`, else `llama-bench` on the PATH).
fn llama_bench(model: &std::path::Path) -> Option<(f64, f64)> {
    let exe = std::env::var("LLAMA_BENCH").unwrap_or_else(|_| "llama-bench".into());
    let out = std::process::Command::new(exe)
        .args(["-t", "2", "-p", "128", "-n", "128", "-o", "json", "-m"])
        .arg(model)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let rate = |prompt: u64| {
        rows.as_array()?
            .iter()
            .find(|r| r["n_prompt"].as_u64() == Some(prompt))?["avg_ts"]
            .as_f64()
    };
    Some((rate(128)?, rate(0)?))
}

/// `text-decode`.
pub fn text_decode() -> SuiteResult {
    let path = fetch::smollm2_gguf()?;
    let generator = Generator::load(&path, DeviceId::Cpu)?;
    let text = "Switchyard sorts incoming inference requests by model into batches, keeps the \
                right models loaded in the memory it has, and runs them. "
        .repeat(8);
    let mut prompt = generator.tokenizer().encode(&text, true)?;
    if prompt.len() < PROMPT_TOKENS {
        return Err("the benchmark text is shorter than 128 tokens".into());
    }
    prompt.truncate(PROMPT_TOKENS);
    let reload = || -> SuiteResult<ModelWeights> {
        let mut f = std::fs::File::open(&path)?;
        let content = gguf_file::Content::read(&mut f)?;
        Ok(ModelWeights::from_gguf(content, &mut f, &Device::Cpu)?)
    };

    // One untimed warm-up each, then alternate so drift hits both alike.
    ours(&generator, &prompt[..16])?;
    candle(&mut reload()?, &prompt[..16])?;
    batched(&generator, &prompt)?;
    let (mut ours_runs, mut candle_runs) = (Vec::new(), Vec::new());
    let (mut batch_runs, mut batch_ratios) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let single = ours(&generator, &prompt)?;
        // The batch right after the single stream it is compared with, so
        // the ratio of each pair sees the same machine load.
        let batch = batched(&generator, &prompt)?;
        batch_ratios.push(batch / single.decode_rate());
        batch_runs.push(batch);
        ours_runs.push(single);
        // candle's model keeps its own KV cache: a fresh one per run.
        let mut model = reload()?;
        candle_runs.push(candle(&mut model, &prompt)?);
    }
    let med = |runs: &[Timing], f: fn(&Timing) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        median(&mut v)
    };
    let (op, od) = (
        med(&ours_runs, Timing::prefill_rate),
        med(&ours_runs, Timing::decode_rate),
    );
    let (cp, cd) = (
        med(&candle_runs, Timing::prefill_rate),
        med(&candle_runs, Timing::decode_rate),
    );
    println!(
        "{:<28} {:>12} {:>12} {:>7}",
        "SmolLM2-135M Q4_1", "ours", "candle", "ratio"
    );
    println!(
        "{:<28} {op:>12.1} {cp:>12.1} {:>7.3}",
        "prefill 128 tok/s",
        op / cp
    );
    println!(
        "{:<28} {od:>12.1} {cd:>12.1} {:>7.3}",
        "decode 128 tok/s",
        od / cd
    );

    let agg = median(&mut batch_runs);
    let batch_ratio = median(&mut batch_ratios);
    println!(
        "{:<28} {agg:>12.1} {:>12} {:>7.3}",
        "8 streams aggregate tok/s", "-", batch_ratio
    );
    let (llama, measured) = match llama_bench(&path) {
        Some(figures) => (figures, true),
        None => (LLAMA_CPP_FALLBACK, false),
    };
    if measured {
        println!(
            "llama.cpp (llama-bench -t 2, this run): prefill {:.1}, decode {:.1} tokens/s",
            llama.0, llama.1
        );
    } else {
        println!(
            "llama-bench not found (set LLAMA_BENCH or put it on PATH); comparing with the \
             issue's figures for this machine kind: prefill {:.0}, decode {:.0} tokens/s",
            llama.0, llama.1
        );
    }
    println!(
        "ratios to llama.cpp: prefill {:.3}, decode {:.3}",
        op / llama.0,
        od / llama.1
    );

    let mut report = Report::new("text-decode");
    report.figure(
        "batch8_aggregate_tokens_per_sec",
        agg,
        "decode tokens/s after the first token (8 sequences, 128 new tokens each, median)",
    );
    report.figure(
        "llama_cpp_prefill_tokens_per_sec",
        llama.0,
        if measured {
            "tokens/s (llama-bench, this run)"
        } else {
            "tokens/s (issue's figure, not measured)"
        },
    );
    report.figure(
        "llama_cpp_decode_tokens_per_sec",
        llama.1,
        if measured {
            "tokens/s (llama-bench, this run)"
        } else {
            "tokens/s (issue's figure, not measured)"
        },
    );
    report.goal(
        "prefill_vs_llama_cpp",
        ">= 1.0x llama.cpp prefill (128 tokens, 2 threads)",
        op / llama.0,
        op >= llama.0,
    );
    report.goal(
        "decode_vs_llama_cpp",
        ">= 1.0x llama.cpp decode (2 threads)",
        od / llama.1,
        od >= llama.1,
    );
    report.goal(
        "batch8_vs_single",
        ">= 4x the single-stream decode rate, aggregate at 8 sequences (median of paired runs)",
        batch_ratio,
        batch_ratio >= 4.0,
    );
    report.figure(
        "prefill_tokens_per_sec",
        op,
        "tokens/s (ours, 128-token prompt, median)",
    );
    report.figure(
        "prefill_candle_tokens_per_sec",
        cp,
        "tokens/s (candle quantized_llama)",
    );
    report.figure(
        "decode_tokens_per_sec",
        od,
        "tokens/s (ours, 128 new tokens, median)",
    );
    report.figure(
        "decode_candle_tokens_per_sec",
        cd,
        "tokens/s (candle quantized_llama)",
    );
    report.goal(
        "prefill_vs_candle",
        ">= 1.0x of candle-transformers' quantized llama",
        op / cp,
        op >= cp,
    );
    report.goal(
        "decode_vs_candle",
        ">= 1.0x of candle-transformers' quantized llama",
        od / cd,
        od >= cd,
    );
    Ok(report)
}
