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
const RUNS: usize = 3;

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
    let (mut ours_runs, mut candle_runs) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        ours_runs.push(ours(&generator, &prompt)?);
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

    let mut report = Report::new("text-decode");
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
