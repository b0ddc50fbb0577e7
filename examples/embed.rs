//! Embed texts with a sentence-transformers model, for people and for tools.
//!
//! ```text
//! cargo run --release --example embed -- --model models/all-minilm-l6-v2 "first text" "second"
//! cargo run --release --example embed -- --model DIR --json "first text" "second"
//! ```
//!
//! With `--json` it prints one object, `{"input_ids": [[...]], "embeddings":
//! [[...]]}`, one row per text in input order; without, a line per text.
//! Without `--model` it fetches all-MiniLM-L6-v2.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use switchyard::core::DeviceId;
use switchyard::text::{BertEmbedder, Embedder};
use switchyard_examples::preview;
use switchyard_testkit::fetch;

#[derive(Parser, Debug)]
#[command(about = "Embed texts with a sentence-transformers model")]
struct Args {
    /// A sentence-transformers folder (defaults to the fetched all-MiniLM-L6-v2).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Device to run on: cpu, cuda:N or metal:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceId,
    /// Print one JSON object with the token ids and the vectors.
    #[arg(long)]
    json: bool,
    /// The texts.
    #[arg(required = true)]
    texts: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = match args.model {
        Some(dir) => dir,
        None => fetch::minilm_dir().context("fetching all-MiniLM-L6-v2")?,
    };
    let embedder = BertEmbedder::load(&dir, args.device)
        .with_context(|| format!("loading {}", dir.display()))?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let vectors = embedder.embed(&texts)?;
    if args.json {
        let ids = texts
            .iter()
            .map(|t| embedder.token_ids(t))
            .collect::<Result<Vec<_>, _>>()?;
        println!("{}", json!({ "input_ids": ids, "embeddings": vectors }));
    } else {
        for (text, v) in texts.iter().zip(&vectors) {
            println!("{} {text:?}", preview(v, 4));
        }
    }
    Ok(())
}
