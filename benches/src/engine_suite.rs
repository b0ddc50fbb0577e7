//! The `engine` suite: the facade next to the pipelines it wraps, in one
//! run.
//!
//! 1. What the facade costs per request: SmolLM2 Q4_1 decoding (64 greedy
//!    tokens, one request at a time) through `Engine` against the
//!    `GenerationEngine` it wraps and against `Generator::generate`; a
//!    32-sentence all-MiniLM-L6-v2 batch through `Engine` against
//!    `BertEmbedder::embed`. Runs alternate; the overhead is the median
//!    of each run's ratio to the pipeline run beside it, so that the
//!    machine's drift over the suite cancels out of every pair.
//! 2. Mixed traffic at three priorities on the one CPU: Low clients keep
//!    chat, embedding and image requests queued back to back, Normal ones
//!    come every 250 ms, an Urgent client asks for a chat, an embedding or
//!    a tiny image every 400 ms. Urgent latency is compared with the same
//!    request on an idle engine, p95 with p95 over about as many requests
//!    (a p95 over a median would fail with no load at all: the spread of
//!    one request alone is already 10-15%), with the default
//!    `yield_to(Urgent)` (held work pauses between steps and inside them,
//!    and runs on `SCHED_IDLE` background threads), with pauses between
//!    steps only (`background_threads(false)`), and with yielding off; the
//!    Low figures show what background work got done. Urgent chats are
//!    read as streams, so the suite also reports their time to first text
//!    (a held layer already under way when the chat arrives delays it).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchyard::config::{ModelKind, ModelSource, ModelSpec};
use switchyard::core::{DeviceId, Priority};
use switchyard::text::{
    BertEmbedder, Embedder, GenerateRequest, GenerationEngineConfig, Generator, Prompt,
    SamplingParams,
};
use switchyard::{Engine, GenerationOptions, ImageOptions, Request};
use switchyard_testkit::fetch;
use switchyard_testkit::tiny::{self, TinyStableDiffusion};

use crate::suites::SuiteResult;
use crate::{Report, TempFolder, median, quantile};

const DECODE_TOKENS: usize = 64;
const DECODE_RUNS: usize = 15;
/// Runs of each Urgent request alone, for its idle latency: about as many
/// as the mix answers, so that the two p95s are the same statistic.
const IDLE_RUNS: u64 = 25;
const EMBED_BATCH: usize = 32;
const EMBED_RUNS: usize = 31;
const PROMPT: &str = "Write a short story about a rail switchyard at night, where \
                      the freight cars are sorted into trains by destination.";
/// How long the mixed traffic runs: about 25 Urgent chats, so that their
/// p95 is not simply the slowest one.
const MIXED: Duration = Duration::from_secs(45);
/// The goal: Urgent chats keep their idle latency within this factor (p95).
const URGENT_TARGET: f64 = 1.25;

fn spec(id: &str, kind: ModelKind, path: &Path, batch: usize) -> ModelSpec {
    let mut spec = ModelSpec::new(id, kind, ModelSource::Path(path.to_owned()));
    spec.max_batch_size = batch;
    spec
}

fn sentences(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("Car {i} of the freight train goes to track {}.", i % 7))
        .collect()
}

fn chat(tokens: usize, priority: Priority) -> Request {
    Request::complete("smollm2", PROMPT)
        .with_options(GenerationOptions {
            max_tokens: Some(tokens),
            ignore_eos: true,
            ..GenerationOptions::default()
        })
        .with_priority(priority)
}

fn embed(n: usize, priority: Priority) -> Request {
    Request::embed("minilm", sentences(n)).with_priority(priority)
}

fn image(seed: u64, priority: Priority) -> Request {
    Request::image("tiny-sd", "a red train in a switchyard")
        .with_image_options(ImageOptions {
            width: Some(64),
            height: Some(64),
            steps: Some(4),
            seed: Some(seed),
            ..ImageOptions::default()
        })
        .with_priority(priority)
}

fn timed(f: impl FnOnce() -> SuiteResult<()>) -> SuiteResult<f64> {
    let started = Instant::now();
    f()?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

fn run(engine: &Engine, request: Request) -> SuiteResult<()> {
    engine.submit(request)?.wait()?;
    Ok(())
}

/// Runs `request` on `engine`: milliseconds to the answer, and for a
/// generation (read as a stream) to its first text.
fn timed_request(engine: &Engine, kind: Kind, request: Request) -> SuiteResult<(f64, Option<f64>)> {
    let started = Instant::now();
    let millis = || started.elapsed().as_secs_f64() * 1e3;
    let handle = engine.submit(request)?;
    if kind != Kind::Chat {
        handle.wait()?;
        return Ok((millis(), None));
    }
    let mut first = None;
    for delta in handle.into_stream() {
        delta?;
        first.get_or_insert_with(millis);
    }
    Ok((millis(), first))
}

/// `engine`.
pub fn engine() -> SuiteResult {
    let gguf = fetch::smollm2_gguf()?;
    let minilm = fetch::minilm_dir()?;
    let sd = TempFolder::named("switchyard-engine-bench");
    tiny::write_stable_diffusion(&sd.0, &TinyStableDiffusion::default(), 3)?;
    let build = |yield_to: Option<Priority>, background: bool| -> SuiteResult<Engine> {
        Ok(Engine::builder()
            .model(spec("smollm2", ModelKind::TextGeneration, &gguf, 16))?
            .model(spec("minilm", ModelKind::Embedding, &minilm, EMBED_BATCH))?
            .model(spec("tiny-sd", ModelKind::TextToImage, &sd.0, 4))?
            .yield_to(yield_to)
            .background_threads(background)
            .build()?)
    };
    let mut report = Report::new("engine");
    let engine = build(Some(Priority::Urgent), true)?;
    overhead(&engine, &gguf, &minilm, &mut report)?;
    drop(engine);
    mixed_traffic(&build, &mut report)?;
    Ok(report)
}

fn overhead(engine: &Engine, gguf: &Path, minilm: &Path, report: &mut Report) -> SuiteResult<()> {
    let generator = Generator::load(gguf, DeviceId::Cpu)?;
    let serving = generator.clone().serve(GenerationEngineConfig {
        kv_tokens: 4096,
        max_running: 16,
        ..GenerationEngineConfig::default()
    })?;
    let raw = GenerateRequest::new(
        Prompt::Text(PROMPT.into()),
        SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(DECODE_TOKENS)
        },
    );
    let facade = || chat(DECODE_TOKENS, Priority::Normal);
    // One untimed round of each loads and warms everything.
    let same = engine.submit(facade())?.wait()?.into_completion();
    let alone = generator.generate(&raw)?;
    if same.map(|c| c.tokens) != Some(alone.tokens.clone()) {
        return Err("the engine and the pipeline disagree on greedy tokens".into());
    }
    serving.submit(&raw)?.collect_completion()?;
    let (mut ours, mut served, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..DECODE_RUNS {
        ours.push(timed(|| run(engine, facade()))?);
        served.push(timed(|| {
            serving.submit(&raw)?.collect_completion()?;
            Ok(())
        })?);
        plain.push(timed(|| {
            generator.generate(&raw).map(drop).map_err(Into::into)
        })?);
    }
    let decode = paired_overhead(&ours, &served);
    let (ours, served, plain) = (median(&mut ours), median(&mut served), median(&mut plain));
    println!(
        "SmolLM2 {DECODE_TOKENS} tokens, median of {DECODE_RUNS}: engine {ours:.1} ms, \
         GenerationEngine {served:.1} ms, Generator::generate {plain:.1} ms"
    );
    report.figure("decode_engine_ms", ours, "ms");
    report.figure("decode_generation_engine_ms", served, "ms");
    report.figure("decode_generator_ms", plain, "ms");
    report.figure("decode_vs_generator_ratio", ours / plain, "x");
    report.goal(
        "decode_overhead",
        "facade <= 3% over the pipeline it wraps (SmolLM2 decode)",
        decode * 100.0,
        decode <= 0.03,
    );

    let embedder = BertEmbedder::load(minilm, DeviceId::Cpu)?;
    let texts = sentences(EMBED_BATCH);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    run(engine, embed(EMBED_BATCH, Priority::Normal))?;
    embedder.embed(&refs)?;
    let (mut ours, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..EMBED_RUNS {
        ours.push(timed(|| run(engine, embed(EMBED_BATCH, Priority::Normal)))?);
        plain.push(timed(|| {
            embedder.embed(&refs).map(drop).map_err(Into::into)
        })?);
    }
    let embed = paired_overhead(&ours, &plain);
    let (ours, plain) = (median(&mut ours), median(&mut plain));
    println!(
        "MiniLM {EMBED_BATCH} sentences, median of {EMBED_RUNS}: engine {ours:.2} ms, \
         BertEmbedder::embed {plain:.2} ms"
    );
    report.figure("embed_engine_ms", ours, "ms");
    report.figure("embed_pipeline_ms", plain, "ms");
    report.goal(
        "embed_overhead",
        "facade <= 3% over the pipeline (MiniLM batch of 32)",
        embed * 100.0,
        embed <= 0.03,
    );
    Ok(())
}

/// The facade's overhead as a fraction: the median over runs of each
/// facade run's time over the pipeline run timed beside it.
fn paired_overhead(facade: &[f64], pipeline: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = facade.iter().zip(pipeline).map(|(f, p)| f / p).collect();
    median(&mut ratios) - 1.0
}

/// The three kinds of request in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Embed,
    Image,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Chat, Kind::Embed, Kind::Image];

    fn name(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Embed => "embed",
            Kind::Image => "image",
        }
    }

    /// The request clients at `priority` send.
    fn request(self, priority: Priority, seed: u64) -> Request {
        match (self, priority) {
            (Kind::Chat, Priority::Low) => chat(64, priority),
            (Kind::Chat, _) => chat(32, priority),
            (Kind::Embed, Priority::Low) => embed(EMBED_BATCH, priority),
            (Kind::Embed, _) => embed(8, priority),
            (Kind::Image, _) => image(seed, priority),
        }
    }
}

/// One finished request of the mix.
struct Done {
    priority: Priority,
    kind: Kind,
    millis: f64,
    /// To the first text, for chats.
    first_millis: Option<f64>,
}

/// A client: sends `kinds` in turn at `priority`, pausing `think` after
/// each answer, until `stop`.
fn client(
    engine: &Engine,
    priority: Priority,
    kinds: &[Kind],
    think: Duration,
    stop: &AtomicBool,
    log: &Mutex<Vec<Done>>,
) -> SuiteResult<()> {
    let mut seed = 0;
    while !stop.load(Ordering::Relaxed) {
        for &kind in kinds {
            seed += 1;
            let (millis, first_millis) = timed_request(engine, kind, kind.request(priority, seed))?;
            log.lock().push(Done {
                priority,
                kind,
                millis,
                first_millis,
            });
            std::thread::sleep(think);
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
    Ok(())
}

/// The mix for `MIXED` on `engine`; every finished request, and the time
/// from the start to the last answer.
fn mix(engine: &Engine) -> SuiteResult<(Vec<Done>, Duration)> {
    let stop = AtomicBool::new(false);
    let log = Mutex::new(Vec::new());
    let started = Instant::now();
    let plan: Vec<(Priority, Vec<Kind>, Duration)> = vec![
        (Priority::Low, vec![Kind::Chat], Duration::ZERO),
        (Priority::Low, vec![Kind::Chat], Duration::ZERO),
        (Priority::Low, vec![Kind::Chat], Duration::ZERO),
        (Priority::Low, vec![Kind::Embed], Duration::ZERO),
        (Priority::Low, vec![Kind::Image], Duration::ZERO),
        (
            Priority::Normal,
            vec![Kind::Chat, Kind::Embed],
            Duration::from_millis(250),
        ),
        (
            Priority::Urgent,
            Kind::ALL.to_vec(),
            Duration::from_millis(400),
        ),
    ];
    std::thread::scope(|scope| -> SuiteResult<()> {
        let clients: Vec<_> = plan
            .iter()
            .map(|(priority, kinds, think)| {
                let (stop, log) = (&stop, &log);
                scope.spawn(move || {
                    client(engine, *priority, kinds, *think, stop, log).map_err(|e| e.to_string())
                })
            })
            .collect();
        std::thread::sleep(MIXED);
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().map_err(|_| "a client panicked")??;
        }
        Ok(())
    })?;
    Ok((log.into_inner(), started.elapsed()))
}

fn latencies(done: &[Done], priority: Priority, kind: Kind) -> Vec<f64> {
    done.iter()
        .filter(|d| d.priority == priority && d.kind == kind)
        .map(|d| d.millis)
        .collect()
}

fn mixed_traffic(
    build: &dyn Fn(Option<Priority>, bool) -> SuiteResult<Engine>,
    report: &mut Report,
) -> SuiteResult<()> {
    // Idle: each Urgent request alone on a warm engine.
    let engine = build(Some(Priority::Urgent), true)?;
    // Per kind: (p50, p95) alone.
    let mut idle = Vec::new();
    let mut idle_first = Vec::new();
    for kind in Kind::ALL {
        run(&engine, kind.request(Priority::Urgent, 99))?;
        let mut samples = Vec::new();
        for i in 0..IDLE_RUNS {
            let (millis, first) = timed_request(&engine, kind, kind.request(Priority::Urgent, i))?;
            samples.push(millis);
            idle_first.extend(first);
        }
        let (p50, p95) = (quantile(&mut samples, 0.5), quantile(&mut samples, 0.95));
        report.figure(&format!("idle_urgent_{}_ms", kind.name()), p50, "ms");
        report.figure(&format!("idle_urgent_{}_p95_ms", kind.name()), p95, "ms");
        idle.push((p50, p95));
    }
    let idle_first = median(&mut idle_first);
    report.figure("idle_urgent_chat_first_text_ms", idle_first, "ms");
    println!(
        "\nmixed traffic for {} s: Low (3 chat, 1 embed x{EMBED_BATCH}, 1 image clients, back to \
         back), Normal (chat + embed every 250 ms), Urgent (chat, embed, image every 400 ms)",
        MIXED.as_secs()
    );
    println!(
        "{:10} {:8} {:>6} {:>9} {:>9} {:>10}",
        "yield", "priority", "kind", "requests", "p50 ms", "p95 ms"
    );
    // Per setting: the Urgent chats' (p50, p95) under the mix.
    let mut urgent_chat = [(0.0, 0.0); 3];
    let settings = [
        ("urgent", Some(Priority::Urgent), true),
        ("pauses", Some(Priority::Urgent), false),
        ("off", None, false),
    ];
    for (i, (label, setting, background)) in settings.into_iter().enumerate() {
        let fresh;
        let engine = if i == 0 {
            &engine
        } else {
            fresh = build(setting, background)?;
            Kind::ALL
                .iter()
                .try_for_each(|k| run(&fresh, k.request(Priority::Urgent, 99)))?;
            &fresh
        };
        let (done, wall) = mix(engine)?;
        if i == 0 {
            let starved: Vec<&str> = Kind::ALL
                .iter()
                .filter(|&&k| latencies(&done, Priority::Low, k).is_empty())
                .map(|k| k.name())
                .collect();
            report.goal(
                "low_work_done",
                "Low requests of every kind finish under the mix (count of kinds)",
                (Kind::ALL.len() - starved.len()) as f64,
                starved.is_empty(),
            );
        }
        for priority in [Priority::Urgent, Priority::Normal, Priority::Low] {
            for kind in Kind::ALL {
                let mut l = latencies(&done, priority, kind);
                if l.is_empty() {
                    continue;
                }
                let (p50, p95) = (quantile(&mut l, 0.5), quantile(&mut l, 0.95));
                println!(
                    "{label:10} {:8} {:>6} {:>9} {p50:>9.1} {p95:>10.1}",
                    format!("{priority:?}"),
                    kind.name(),
                    l.len()
                );
                let name = format!("{label}_{priority:?}_{}", kind.name()).to_lowercase();
                report.figure(&format!("{name}_p95_ms"), p95, "ms");
                report.figure(&format!("{name}_requests"), l.len() as f64, "");
                if priority == Priority::Urgent && kind == Kind::Chat {
                    urgent_chat[i] = (p50, p95);
                }
            }
        }
        let mut first: Vec<f64> = done
            .iter()
            .filter(|d| d.priority == Priority::Urgent)
            .filter_map(|d| d.first_millis)
            .collect();
        if !first.is_empty() {
            let (p50, p95) = (quantile(&mut first, 0.5), quantile(&mut first, 0.95));
            println!(
                "{label:10} Urgent chat to first text: p50 {p50:.1} ms, p95 {p95:.1} ms \
                 (idle {idle_first:.1} ms)"
            );
            report.figure(&format!("{label}_urgent_chat_first_text_p50_ms"), p50, "ms");
            report.figure(&format!("{label}_urgent_chat_first_text_p95_ms"), p95, "ms");
        }
        let low_chats = latencies(&done, Priority::Low, Kind::Chat).len();
        let low_tokens = (low_chats * 64) as f64 / wall.as_secs_f64();
        report.figure(
            &format!("{label}_low_chat_tokens_per_sec"),
            low_tokens,
            "tok/s",
        );
        let all = done.len() as f64 / wall.as_secs_f64();
        report.figure(&format!("{label}_requests_per_sec"), all, "req/s");
    }
    let (idle_p50, idle_p95) = idle[0];
    let with = urgent_chat[0].1 / idle_p95;
    let pauses = urgent_chat[1].1 / idle_p95;
    let without = urgent_chat[2].1 / idle_p95;
    let median_with = urgent_chat[0].0 / idle_p50;
    println!(
        "Urgent chat p95 / idle p95: {with:.2}x yielding, {pauses:.2}x pausing between steps \
         only, {without:.2}x not (idle p50 {idle_p50:.1} ms, p95 {idle_p95:.1} ms); \
         p50 / idle p50 yielding: {median_with:.2}x"
    );
    report.figure("urgent_chat_p50_vs_idle", median_with, "x");
    report.figure("urgent_chat_p95_vs_idle_pauses_only", pauses, "x");
    report.figure("urgent_chat_p95_vs_idle_yield_off", without, "x");
    report.figure("urgent_chat_p95_yield_gain", without / with, "x");
    report.goal(
        "urgent_chat_keeps_latency",
        "Urgent chat p95 under mixed load <= 1.25x its p95 alone",
        with,
        with <= URGENT_TARGET,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_overhead_cancels_drift_that_a_ratio_of_medians_keeps() {
        // The machine slows down over the runs; the facade costs 2% in
        // every pair, but the slow pipeline runs land on the other side of
        // the median than the facade's.
        let pipeline = [100.0, 100.0, 100.0, 150.0, 150.0];
        let facade = [102.0, 102.0, 153.0, 153.0, 153.0];
        let paired = paired_overhead(&facade, &pipeline);
        assert!((paired - 0.02).abs() < 1e-9, "{paired}");
        assert!(paired_overhead(&[], &[]).is_nan());
    }
}
