//! Quickstart: the Switchyard engine on two real models.
//!
//! Fetches SmolLM2-135M-Instruct (GGUF, Q4_1) and all-MiniLM-L6-v2 into
//! `$SWITCHYARD_MODELS` or `models/` on first use, registers both with one
//! [`Engine`], streams a chat answer to the terminal, embeds a batch of
//! sentences and compares them, draws a picture with a tiny Stable
//! Diffusion model (the real architecture with random weights, written in
//! the diffusers layout: no real SD weights can be fetched here, so expect
//! coloured noise) into a PNG, then prints the engine's metrics.
//!
//! ```text
//! cargo run --release --example quickstart
//! cargo run --release --example quickstart -- --prompt "Name three rivers." --max-tokens 64
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use switchyard::config::{ModelKind, ModelSource, ModelSpec};
use switchyard::core::{DeviceId, Priority};
use switchyard::text::{ChatMessage, cosine_similarity};
use switchyard::{Engine, GenerationOptions, ImageOptions, Request, SessionState};
use switchyard_examples::preview;
use switchyard_testkit::fetch;
use switchyard_testkit::tiny::{self, TinyStableDiffusion};

#[derive(Parser, Debug)]
#[command(about = "Chat with SmolLM2 and embed sentences with MiniLM through one engine")]
struct Args {
    /// The user's message to SmolLM2.
    #[arg(
        long,
        default_value = "What does a rail switchyard do? Answer in two sentences."
    )]
    prompt: String,
    /// Most tokens of the answer.
    #[arg(long, default_value_t = 96)]
    max_tokens: usize,
    /// Device to run on: cpu, cuda:N or metal:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceId,
    /// Where the tiny model's picture is written (PNG).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("switchyard-quickstart.png"))]
    image_out: PathBuf,
    /// Sentences to embed (defaults to a small built-in set).
    sentences: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    eprintln!("fetching the models if missing (once; a few tens of MB)...");
    let smollm2 = fetch::smollm2_gguf().context("fetching SmolLM2-135M-Instruct")?;
    let minilm = fetch::minilm_dir().context("fetching all-MiniLM-L6-v2")?;

    let mut chat = ModelSpec::new(
        "smollm2",
        ModelKind::TextGeneration,
        ModelSource::Path(smollm2),
    );
    chat.devices = vec![args.device];
    chat.priority = Priority::High;
    let mut embed = ModelSpec::new("minilm", ModelKind::Embedding, ModelSource::Path(minilm));
    embed.devices = vec![args.device];
    let sd_dir = std::env::temp_dir().join("switchyard-quickstart-tiny-sd");
    if !sd_dir.join("model_index.json").exists() {
        tiny::write_stable_diffusion(&sd_dir, &TinyStableDiffusion::default(), 7)
            .context("writing the tiny Stable Diffusion folder")?;
    }
    let mut draw = ModelSpec::new("tiny-sd", ModelKind::TextToImage, ModelSource::Path(sd_dir));
    draw.devices = vec![args.device];
    draw.priority = Priority::Low;
    let engine = Engine::builder()
        .model(chat)?
        .model(embed)?
        .model(draw)?
        .build()?;

    // 1. A chat answer, streamed as it is generated.
    print!("user: {}\nassistant: ", args.prompt);
    let request = Request::chat(
        "smollm2",
        vec![ChatMessage::new("user", args.prompt.clone())],
    )
    .with_options(GenerationOptions {
        max_tokens: Some(args.max_tokens),
        ..GenerationOptions::default()
    });
    let started = Instant::now();
    let mut first_token = None;
    let mut out = std::io::stdout().lock();
    for delta in engine.submit(request)?.into_stream() {
        let delta = delta?;
        first_token.get_or_insert_with(|| started.elapsed());
        write!(out, "{}", delta.text)?;
        out.flush()?;
        if let Some(done) = delta.finish {
            let secs = started.elapsed().as_secs_f64();
            writeln!(
                out,
                "\n\n[{} tokens, {:?}; first token after {:.0} ms (model load included), {:.1} s in all]",
                done.usage.completion_tokens,
                done.reason,
                first_token.unwrap_or_default().as_secs_f64() * 1e3,
                secs
            )?;
        }
    }
    drop(out);

    // 2. A batch of embeddings.
    let sentences: Vec<String> = if args.sentences.is_empty() {
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
            "A man is riding a horse.",
        ]
        .map(String::from)
        .to_vec()
    } else {
        args.sentences
    };
    let vectors = engine
        .process_sync(Request::embed("minilm", sentences.clone()))?
        .into_embeddings()
        .context("an embedding request answers with vectors")?;
    println!("\nembeddings:");
    for (text, v) in sentences.iter().zip(&vectors) {
        println!("  {text:40} {}", preview(v, 4));
    }
    println!("cosine similarity:");
    for i in 0..sentences.len() {
        for j in i + 1..sentences.len() {
            let sim = cosine_similarity(&vectors[i], &vectors[j]);
            println!("  {sim:+.4}  {:?} vs {:?}", sentences[i], sentences[j]);
        }
    }

    // 3. A picture from the tiny diffusion model, its steps followed as
    // progress.
    let request = Request::image("tiny-sd", "a red train in a snowy switchyard")
        .with_image_options(ImageOptions {
            width: Some(64),
            height: Some(64),
            steps: Some(20),
            seed: Some(7),
            ..ImageOptions::default()
        });
    let started = Instant::now();
    let handle = engine.submit(request)?;
    let mut seen = 0;
    while let Some(s) = engine.sessions().into_iter().find(|s| s.id == handle.id()) {
        let (done, total) = s.progress;
        if s.state == SessionState::Running && done > seen {
            seen = done;
            eprint!("\r  denoising step {done}/{total}");
        }
        if done == total {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let images = handle
        .wait()?
        .into_images()
        .context("an image request answers with images")?;
    let image = &images[0];
    image
        .image
        .save(&args.image_out)
        .with_context(|| format!("writing {}", args.image_out.display()))?;
    eprintln!();
    println!(
        "\nimage: {}x{} (seed {}) from the tiny random-weight model in {:.0} ms -> {}",
        image.image.width(),
        image.image.height(),
        image.seed,
        started.elapsed().as_secs_f64() * 1e3,
        args.image_out.display()
    );

    // 4. What the engine measured.
    let metrics = engine.metrics();
    println!("\nmetrics:");
    let mut ids: Vec<_> = metrics.models.keys().cloned().collect();
    ids.sort();
    for id in ids {
        let m = &metrics.models[&id];
        let unit = match engine.registry().get(&id).map(|s| s.kind) {
            Some(ModelKind::TextGeneration) => "tokens",
            Some(ModelKind::TextToImage) => "steps",
            _ => "inputs",
        };
        println!(
            "  {id:8} requests {} ok {} failed {}  latency p50 {:.0} ms  {}",
            m.submitted,
            m.succeeded,
            m.failed,
            m.latency.p50 * 1e3,
            m.throughput
                .map(|t| format!("{t:.1} {unit}/s per request"))
                .unwrap_or_default()
        );
    }
    for (device, cache) in &metrics.cache {
        println!(
            "  cache on {device}: {} models loaded, {} loads, {:.1} MB",
            cache.entries,
            cache.loads,
            cache.bytes as f64 / 1e6
        );
    }
    Ok(())
}
