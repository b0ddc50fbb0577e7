//! Generate text with a Llama-family model, streaming it as it comes.
//!
//! ```text
//! cargo run --release --example generate -- --prompt "The capital of France is"
//! cargo run --release --example generate -- --chat --prompt "Write a haiku about trains"
//! cargo run --release --example generate -- --model FILE.gguf --json --max-tokens 32 --prompt "..."
//! cargo run --release --example generate -- --tokenize "<|im_start|>user" --special --json
//! ```
//!
//! Without `--model` it fetches SmolLM2-135M-Instruct (Q4_1 GGUF). `--model`
//! takes a `.gguf` file or a Hugging Face folder (`config.json`,
//! safetensors, `tokenizer.json`). By default the prompt goes through the
//! model's chat template when it has one (`--chat`), or as plain text with
//! `--raw`. `--json` prints one object at the end instead of streaming:
//! `{"text", "tokens", "prompt_tokens", "finish_reason", "usage"}`.
//! `--tokenize` prints the prompt's token ids and pieces and exits
//! (`--special` parses special tokens written in the text, as chat prompts
//! need).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use switchyard::core::DeviceId;
use switchyard::text::{ChatMessage, GenerateRequest, Generator, Prompt, SamplingParams};
use switchyard_testkit::fetch;

#[derive(Parser, Debug)]
#[command(about = "Generate text with a Llama-family model")]
struct Args {
    /// A .gguf file or a Hugging Face folder (defaults to the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Device to run on: cpu, cuda:N or metal:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceId,
    /// The prompt.
    #[arg(long, required_unless_present = "tokenize")]
    prompt: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A string that ends generation (may be given several times).
    #[arg(long)]
    stop: Vec<String>,
    /// Send the prompt through the model's chat template as one user turn.
    #[arg(long, conflicts_with = "raw")]
    chat: bool,
    /// Send the prompt as plain text (the default when the model has no template).
    #[arg(long)]
    raw: bool,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Print the token ids of this text and exit.
    #[arg(long, value_name = "TEXT")]
    tokenize: Option<String>,
    /// With --tokenize: add the model's BOS/EOS and parse special tokens (without it,
    /// `<|im_start|>` is read as plain characters).
    #[arg(long)]
    special: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = match &args.model {
        Some(p) => p.clone(),
        None => fetch::smollm2_gguf().context("fetching SmolLM2-135M-Instruct")?,
    };
    let started = Instant::now();
    let generator = Generator::load(&path, args.device)
        .with_context(|| format!("loading {}", path.display()))?;
    let load = started.elapsed();

    if let Some(text) = &args.tokenize {
        let tok = generator.tokenizer();
        let ids = if args.special {
            tok.encode(text, true)?
        } else {
            tok.encode_literal(text, false)?
        };
        let pieces: Vec<String> = ids
            .iter()
            .map(|&i| tok.token_text(i).unwrap_or_default())
            .collect();
        if args.json {
            println!("{}", json!({ "ids": ids, "pieces": pieces }));
        } else {
            for (id, piece) in ids.iter().zip(&pieces) {
                println!("{id:>8} {piece:?}");
            }
        }
        return Ok(());
    }
    let prompt_text = args.prompt.clone().unwrap_or_default();

    let use_chat = args.chat || (!args.raw && generator.tokenizer().chat_template().is_some());
    let prompt = if use_chat {
        Prompt::Chat(vec![ChatMessage::new("user", prompt_text)])
    } else {
        Prompt::Text(prompt_text)
    };
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        ..SamplingParams::default()
    };
    let request = GenerateRequest::new(prompt, params);
    let prompt_tokens = generator.prompt_tokens(&request.prompt)?;

    let started = Instant::now();
    let mut first_token = None;
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut finish = None;
    let mut out = std::io::stdout().lock();
    for delta in generator.stream(&request)? {
        let delta = delta?;
        first_token.get_or_insert_with(|| started.elapsed());
        if !args.json {
            write!(out, "{}", delta.text)?;
            out.flush()?;
        }
        text.push_str(&delta.text);
        tokens.extend_from_slice(&delta.tokens);
        finish = delta.finish.or(finish);
    }
    let total = started.elapsed();
    let done = finish.context("the generation ended without a finish reason")?;
    if args.json {
        println!(
            "{}",
            json!({
                "prompt_ids": prompt_tokens,
                "ids": tokens,
                "text": text,
                "finish_reason": done.reason.as_str(),
                "usage": {
                    "prompt_tokens": done.usage.prompt_tokens,
                    "completion_tokens": done.usage.completion_tokens,
                },
            })
        );
    } else {
        let ttft = first_token.unwrap_or(total);
        let decode = total.saturating_sub(ttft).as_secs_f64();
        let rate = (done.usage.completion_tokens.saturating_sub(1)) as f64 / decode.max(1e-9);
        writeln!(out)?;
        eprintln!(
            "[{} prompt + {} generated tokens, finish: {}; load {:.0} ms, first token {:.0} ms, {:.1} tokens/s after it]",
            done.usage.prompt_tokens,
            done.usage.completion_tokens,
            done.reason.as_str(),
            load.as_secs_f64() * 1e3,
            ttft.as_secs_f64() * 1e3,
            rate
        );
    }
    Ok(())
}
