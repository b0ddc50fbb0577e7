//! Chat with a model through the engine, the answer streamed as it comes.
//!
//! ```text
//! cargo run --release --example chat
//! cargo run --release --example chat -- --system "Answer in one sentence." --temperature 0.7
//! cargo run --release --example chat -- --model FILE.gguf --prompt "Hello" --prompt "And then?"
//! ```
//!
//! Without `--model` it fetches SmolLM2-135M-Instruct (Q4_1 GGUF); `--model`
//! takes a `.gguf` file or a Hugging Face folder. Each line you type is a
//! user turn; the conversation is kept, so the model sees what was said.
//! `/reset` forgets it, `/stats` prints the engine's metrics, `/quit` (or
//! end of input) leaves. With `--prompt` (repeatable) it runs those turns
//! and exits, without reading the terminal.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use switchyard::config::{ModelKind, ModelSource, ModelSpec};
use switchyard::core::DeviceId;
use switchyard::text::ChatMessage;
use switchyard::{Engine, GenerationOptions, Request};
use switchyard_testkit::fetch;

#[derive(Parser, Debug)]
#[command(about = "Chat with a Llama-family model through the Switchyard engine")]
struct Args {
    /// A .gguf file or a Hugging Face folder (defaults to the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Device to run on: cpu, cuda:N or metal:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceId,
    /// A system message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long)]
    top_p: Option<f32>,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run these user turns in order and exit, instead of reading the terminal.
    #[arg(long)]
    prompt: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = match &args.model {
        Some(path) => path.clone(),
        None => fetch::smollm2_gguf().context("fetching SmolLM2-135M-Instruct")?,
    };
    let mut spec = ModelSpec::new("chat", ModelKind::TextGeneration, ModelSource::Path(path));
    spec.devices = vec![args.device];
    let engine = Engine::builder().model(spec)?.build()?;
    let opening: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.clone()))
        .collect();
    let mut history = opening.clone();

    let scripted = !args.prompt.is_empty();
    let mut lines: Box<dyn Iterator<Item = std::io::Result<String>>> = if scripted {
        Box::new(args.prompt.clone().into_iter().map(Ok))
    } else {
        eprintln!("type a message; /reset forgets the conversation, /stats, /quit");
        Box::new(std::io::stdin().lock().lines())
    };
    loop {
        if !scripted {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                history.clone_from(&opening);
                eprintln!("(conversation forgotten)");
                continue;
            }
            "/stats" => {
                print_stats(&engine);
                continue;
            }
            _ => {}
        }
        if scripted {
            println!("> {line}");
        }
        history.push(ChatMessage::new("user", line));
        let answer = answer(&engine, &args, &history)?;
        history.push(ChatMessage::new("assistant", answer));
    }
    if scripted {
        print_stats(&engine);
    }
    Ok(())
}

/// Streams the model's answer to `history` to stdout and returns it.
fn answer(engine: &Engine, args: &Args, history: &[ChatMessage]) -> anyhow::Result<String> {
    let request = Request::chat("chat", history.to_vec()).with_options(GenerationOptions {
        max_tokens: Some(args.max_tokens),
        temperature: Some(args.temperature),
        top_p: args.top_p,
        seed: Some(args.seed),
        ..GenerationOptions::default()
    });
    let started = Instant::now();
    let mut text = String::new();
    let mut out = std::io::stdout().lock();
    for delta in engine.submit(request)?.into_stream() {
        let delta = delta?;
        write!(out, "{}", delta.text)?;
        out.flush()?;
        text.push_str(&delta.text);
        if let Some(done) = delta.finish {
            let secs = started.elapsed().as_secs_f64();
            writeln!(out)?;
            eprintln!(
                "[{} tokens, {:?}, {:.1} tokens/s]",
                done.usage.completion_tokens,
                done.reason,
                done.usage.completion_tokens as f64 / secs.max(1e-9)
            );
        }
    }
    Ok(text)
}

fn print_stats(engine: &Engine) {
    let metrics = engine.metrics();
    if let Some(m) = metrics.models.get("chat") {
        eprintln!(
            "requests {} (ok {}, failed {}), latency p50 {:.0} ms p95 {:.0} ms, {}",
            m.submitted,
            m.succeeded,
            m.failed,
            m.latency.p50 * 1e3,
            m.latency.p95 * 1e3,
            m.throughput
                .map(|t| format!("{t:.1} tokens/s per request"))
                .unwrap_or_else(|| "no throughput yet".into())
        );
    }
}
