//! The `text-serve` suite: continuous batching on SmolLM2-135M-Instruct
//! (Q4_1 GGUF, 2 threads) through the public `GenerationEngine`, requests
//! all submitted at once and read by one thread each, as a server would.
//!
//! - aggregate decode tokens/s with 1, 2, 4, 8 and 16 concurrent streams of
//!   128 new tokens (from the moment every stream has its first token), and
//!   end to end (first submit to last token);
//! - time to first token and p50/p99 inter-token latency at 8 streams;
//! - llama.cpp's `llama-server -np 8` on the same GGUF with the same 8
//!   requests, when it is installed;
//! - a 200-token system prompt shared by 16 requests: prompt tokens
//!   computed with and without prefix caching.

use std::time::{Duration, Instant};

use switchyard::core::DeviceId;
use switchyard::text::{
    GenerateRequest, GenerationEngine, GenerationEngineConfig, GenerationStream, Generator, Prompt,
    SamplingParams,
};
use switchyard_testkit::fetch;

use crate::llama_server::{self, LlamaServer};
use crate::suites::SuiteResult;
use crate::{Report, median, quantile};

const NEW_TOKENS: usize = 128;
const PROMPT_TOKENS: usize = 24;
const STREAMS: [usize; 5] = [1, 2, 4, 8, 16];
const RUNS: usize = 5;
/// The order of the runs in a round: 8 streams right after 1, so that each
/// paired ratio sees one machine state (this machine's neighbours move
/// the 8-stream figure by a third between minutes).
const ORDER: [usize; 5] = [0, 3, 1, 2, 4];
const SYSTEM_TOKENS: usize = 200;
const SHARED_REQUESTS: usize = 16;

/// When each token of each request arrived, from the common submit time.
struct Arrivals {
    sent: Instant,
    per_request: Vec<Vec<Instant>>,
}

impl Arrivals {
    fn tokens(&self) -> usize {
        self.per_request.iter().map(Vec::len).sum()
    }

    fn wall(&self) -> Duration {
        let last = self.per_request.iter().filter_map(|a| a.last()).max();
        last.map_or(Duration::ZERO, |l| *l - self.sent)
    }

    fn tokens_per_sec(&self) -> f64 {
        self.tokens() as f64 / self.wall().as_secs_f64()
    }

    /// Tokens/s once every stream has its first token: the tokens after
    /// that moment over the time to the last one (prefill excluded).
    fn decode_tokens_per_sec(&self) -> f64 {
        let Some(start) = self.per_request.iter().filter_map(|a| a.first()).max() else {
            return 0.0;
        };
        let end = self.sent + self.wall();
        let tokens = self
            .per_request
            .iter()
            .map(|a| a.iter().filter(|t| *t > start).count())
            .sum::<usize>();
        tokens as f64 / (end - *start).as_secs_f64()
    }

    fn ttfts(&self) -> impl Iterator<Item = f64> + '_ {
        self.per_request
            .iter()
            .filter_map(|a| a.first())
            .map(|f| (*f - self.sent).as_secs_f64())
    }

    fn gaps(&self) -> impl Iterator<Item = f64> + '_ {
        self.per_request
            .iter()
            .flat_map(|a| a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()))
    }
}

/// Read every stream on a thread of its own; note each token's arrival.
fn read_all(sent: Instant, streams: Vec<GenerationStream>) -> SuiteResult<Arrivals> {
    let per_request = std::thread::scope(|scope| {
        let readers: Vec<_> = streams
            .into_iter()
            .map(|stream| {
                scope.spawn(move || -> Result<Vec<Instant>, String> {
                    let mut arrivals = Vec::with_capacity(NEW_TOKENS);
                    for delta in stream {
                        let delta = delta.map_err(|e| e.to_string())?;
                        let now = Instant::now();
                        arrivals.extend(std::iter::repeat_n(now, delta.tokens.len()));
                    }
                    Ok(arrivals)
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().map_err(|_| "a reader panicked".to_string())?)
            .collect::<Result<Vec<_>, String>>()
    })?;
    Ok(Arrivals { sent, per_request })
}

fn greedy(prompt: Vec<u32>, new_tokens: usize) -> GenerateRequest {
    GenerateRequest::new(
        Prompt::Tokens(prompt),
        SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(new_tokens)
        },
    )
}

/// Submit every prompt at once and read the streams to the end.
fn ours(engine: &GenerationEngine, prompts: &[Vec<u32>]) -> SuiteResult<Arrivals> {
    let sent = Instant::now();
    let streams = prompts
        .iter()
        .map(|p| engine.submit(&greedy(p.clone(), NEW_TOKENS)))
        .collect::<Result<Vec<_>, _>>()?;
    let arrivals = read_all(sent, streams)?;
    if arrivals.tokens() != prompts.len() * NEW_TOKENS {
        return Err(format!("streams carried {} tokens", arrivals.tokens()).into());
    }
    Ok(arrivals)
}

/// The same requests against `llama-server`, one client thread each.
fn theirs(server: &LlamaServer, prompts: &[Vec<u32>]) -> SuiteResult<Arrivals> {
    let sent = Instant::now();
    let per_request = std::thread::scope(|scope| {
        let clients: Vec<_> = prompts
            .iter()
            .map(|p| scope.spawn(move || server.complete(p, NEW_TOKENS).map_err(|e| e.to_string())))
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().map_err(|_| "a client panicked".to_string())?)
            .collect::<Result<Vec<_>, String>>()
    })?;
    Ok(Arrivals { sent, per_request })
}

/// `n` prompts of `PROMPT_TOKENS` tokens with no common first block:
/// windows of one long text at different offsets.
fn distinct_prompts(text: &[u32], n: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| text[i * 5..i * 5 + PROMPT_TOKENS].to_vec())
        .collect()
}

/// Prompt tokens computed for `SHARED_REQUESTS` requests that share a
/// `SYSTEM_TOKENS`-token system prompt, all submitted at once.
fn shared_prompt_prefill(
    generator: &Generator,
    system: &[u32],
    questions: &[Vec<u32>],
    caching: bool,
) -> SuiteResult<(u64, u64, Duration)> {
    let engine = generator.clone().serve(GenerationEngineConfig {
        prefix_caching: caching,
        ..GenerationEngineConfig::default()
    })?;
    let sent = Instant::now();
    let streams = questions
        .iter()
        .map(|q| engine.submit(&greedy([system, q].concat(), 8)))
        .collect::<Result<Vec<_>, _>>()?;
    let arrivals = read_all(sent, streams)?;
    let stats = engine.stats();
    Ok((
        stats.prefill_tokens,
        stats.cached_prompt_tokens,
        arrivals.wall(),
    ))
}

/// `text-serve`.
pub fn text_serve() -> SuiteResult {
    let path = fetch::smollm2_gguf()?;
    let generator = Generator::load(&path, DeviceId::Cpu)?;
    let text = "Switchyard sorts incoming inference requests by model into batches, keeps the \
                right models loaded in the memory it has, and runs them. A rail switchyard \
                sorts incoming cars by destination into trains. "
        .repeat(12);
    let long = generator.tokenizer().encode(&text, true)?;
    if long.len() < SYSTEM_TOKENS + 16 * 5 + PROMPT_TOKENS {
        return Err("the benchmark text is too short".into());
    }
    let engine = generator.clone().serve(GenerationEngineConfig {
        max_running: 16,
        ..GenerationEngineConfig::default()
    })?;
    let server = match llama_server::find() {
        Some(exe) => match LlamaServer::start(&exe, &path, 8, PROMPT_TOKENS + NEW_TOKENS + 32) {
            Ok(s) => {
                println!("llama-server: {}", exe.display());
                Some(s)
            }
            Err(e) => {
                println!("llama-server did not start ({e}); its comparison is skipped");
                None
            }
        },
        None => {
            println!(
                "llama-server not found (set LLAMA_SERVER, or LLAMA_BENCH to a llama.cpp build \
                 folder, or put it on PATH); its comparison is skipped"
            );
            None
        }
    };

    // Warm-up, untimed.
    ours(&engine, &distinct_prompts(&long, 8))?;
    if let Some(s) = &server {
        theirs(s, &distinct_prompts(&long, 8))?;
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); STREAMS.len()];
    let mut decode_rates: Vec<Vec<f64>> = vec![Vec::new(); STREAMS.len()];
    let (mut ratios8, mut vs_llama, mut llama_rates) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ttft8, mut gaps8) = (Vec::new(), Vec::new());
    let (mut llama_e2e, mut vs_llama_e2e) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        for i in ORDER {
            let n = STREAMS[i];
            let a = ours(&engine, &distinct_prompts(&long, n))?;
            rates[i].push(a.tokens_per_sec());
            decode_rates[i].push(a.decode_tokens_per_sec());
            if n == 8 {
                ttft8.extend(a.ttfts());
                gaps8.extend(a.gaps());
                // Paired: the same run's 1-stream figure, and llama-server
                // right after, so each ratio sees one machine load.
                let single = decode_rates[0][decode_rates[0].len() - 1];
                ratios8.push(a.decode_tokens_per_sec() / single);
                if let Some(s) = &server {
                    let theirs = theirs(s, &distinct_prompts(&long, 8))?;
                    llama_rates.push(theirs.decode_tokens_per_sec());
                    llama_e2e.push(theirs.tokens_per_sec());
                    vs_llama.push(a.decode_tokens_per_sec() / theirs.decode_tokens_per_sec());
                    vs_llama_e2e.push(a.tokens_per_sec() / theirs.tokens_per_sec());
                }
            }
        }
    }
    drop(server);
    let stats = engine.stats();

    println!(
        "{:<34} {:>12} {:>12}",
        "SmolLM2-135M Q4_1, 2 threads", "decode tok/s", "e2e tok/s"
    );
    let mut medians = Vec::new();
    for ((n, runs), decode) in STREAMS.iter().zip(&mut rates).zip(&mut decode_rates) {
        let (m, d) = (median(runs), median(decode));
        medians.push((m, d));
        let label = format!("{n} streams x {NEW_TOKENS} tokens");
        println!("{label:<34} {d:>12.1} {m:>12.1}");
    }
    let each: Vec<String> = ratios8.iter().map(|r| format!("{r:.2}")).collect();
    let ratio8 = median(&mut ratios8);
    let ttft = median(&mut ttft8);
    let (p50, p99) = (quantile(&mut gaps8, 0.50), quantile(&mut gaps8, 0.99));
    println!(
        "8 streams / 1 stream, decode (median of paired runs): {ratio8:.2}x (runs: {})",
        each.join(", ")
    );
    println!(
        "at 8 streams: time to first token {:.1} ms (median), inter-token p50 {:.1} ms, p99 \
         {:.1} ms",
        ttft * 1e3,
        p50 * 1e3,
        p99 * 1e3
    );
    let llama = (!vs_llama.is_empty()).then(|| (median(&mut llama_rates), median(&mut vs_llama)));
    if let Some((rate, ratio)) = llama {
        let e2e = median(&mut llama_e2e);
        let e2e_ratio = median(&mut vs_llama_e2e);
        println!(
            "llama-server -np 8 -t 2, same 8 requests: decode {rate:.1} tok/s, e2e {e2e:.1} tok/s; \
             ours / theirs: decode {ratio:.2}x, e2e {e2e_ratio:.2}x (medians of paired runs)"
        );
    }

    // The shared system prompt.
    let system = &long[..SYSTEM_TOKENS];
    let questions: Vec<Vec<u32>> = (0..SHARED_REQUESTS)
        .map(|i| {
            let q = format!("Question {i}: which train?");
            generator.tokenizer().encode(&q, false)
        })
        .collect::<Result<_, _>>()?;
    let (with, cached, with_wall) = shared_prompt_prefill(&generator, system, &questions, true)?;
    let (without, _, without_wall) = shared_prompt_prefill(&generator, system, &questions, false)?;
    let fewer = without as f64 / with.max(1) as f64;
    println!(
        "{SHARED_REQUESTS} requests sharing a {SYSTEM_TOKENS}-token system prompt: prompt tokens \
         computed {without} without prefix caching, {with} with ({cached} served from the \
         cache): {fewer:.1}x fewer; wall {:.0} ms -> {:.0} ms",
        without_wall.as_secs_f64() * 1e3,
        with_wall.as_secs_f64() * 1e3
    );

    let mut report = Report::new("text-serve");
    for (n, (m, d)) in STREAMS.iter().zip(&medians) {
        report.figure(
            &format!("streams{n}_decode_tokens_per_sec"),
            *d,
            "tokens/s once every stream has its first token (median)",
        );
        report.figure(
            &format!("streams{n}_e2e_tokens_per_sec"),
            *m,
            "tokens/s, first submit to last token (median)",
        );
    }
    report.goal(
        "streams8_vs_single",
        ">= 4x the 1-stream decode rate at 8 streams (median of paired runs)",
        ratio8,
        ratio8 >= 4.0,
    );
    report.figure(
        "streams8_ttft_ms",
        ttft * 1e3,
        "ms, median time to first token",
    );
    report.figure(
        "streams8_itl_p50_ms",
        p50 * 1e3,
        "ms, inter-token latency p50",
    );
    report.figure(
        "streams8_itl_p99_ms",
        p99 * 1e3,
        "ms, inter-token latency p99",
    );
    report.figure(
        "preemptions",
        stats.preemptions as f64,
        "sequences preempted over the suite",
    );
    match llama {
        Some((rate, ratio)) => {
            report.figure(
                "llama_server8_tokens_per_sec",
                rate,
                "tokens/s, llama-server -np 8",
            );
            report.goal(
                "streams8_vs_llama_server",
                ">= 1.0x llama-server -np 8 aggregate tokens/s (same 8 requests)",
                ratio,
                ratio >= 1.0,
            );
        }
        None => report.figure("llama_server_skipped", 1.0, "llama-server not available"),
    }
    report.figure(
        "shared_prompt_prefill_without",
        without as f64,
        "prompt tokens computed",
    );
    report.figure(
        "shared_prompt_prefill_with",
        with as f64,
        "prompt tokens computed",
    );
    report.goal(
        "prefix_caching_fewer_prefill",
        ">= 10x fewer prompt tokens computed with prefix caching (16 x 200-token system prompt)",
        fewer,
        fewer >= 10.0,
    );
    Ok(report)
}
