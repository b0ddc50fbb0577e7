//! Quickstart: real sentence embeddings with all-MiniLM-L6-v2.
//!
//! Fetches the model into `$SWITCHYARD_MODELS` or `models/` on first use,
//! embeds a few sentences on the CPU and prints each vector's start and the
//! cosine similarity of every pair.
//!
//! ```text
//! cargo run --release --example quickstart
//! cargo run --release --example quickstart -- "a cat sat on the mat" "a kitten rested on the rug"
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use switchyard::core::DeviceId;
use switchyard::text::{BertEmbedder, Embedder, cosine_similarity};
use switchyard_examples::preview;
use switchyard_testkit::fetch;

#[derive(Parser, Debug)]
#[command(about = "Embed sentences with all-MiniLM-L6-v2 and compare them")]
struct Args {
    /// A sentence-transformers folder to use instead of the fetched MiniLM.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Device to run on: cpu, cuda:N or metal:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceId,
    /// Sentences to embed (defaults to a small built-in set).
    sentences: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = match args.model_dir {
        Some(dir) => dir,
        None => fetch::minilm_dir().context("fetching all-MiniLM-L6-v2")?,
    };
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

    let started = Instant::now();
    let embedder = BertEmbedder::load(&dir, args.device)
        .with_context(|| format!("loading {}", dir.display()))?;
    println!(
        "loaded {} on {} in {:.0} ms (dimension {}, max {} tokens)",
        dir.display(),
        args.device,
        started.elapsed().as_secs_f64() * 1e3,
        embedder.dimension(),
        embedder.max_tokens()
    );

    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let started = Instant::now();
    let vectors = embedder.embed(&texts)?;
    println!(
        "embedded {} sentences in {:.1} ms\n",
        texts.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    for (text, v) in texts.iter().zip(&vectors) {
        println!("{text:40} {}", preview(v, 6));
    }
    println!("\ncosine similarity:");
    for i in 0..texts.len() {
        for j in i + 1..texts.len() {
            let sim = cosine_similarity(&vectors[i], &vectors[j]);
            println!("  {sim:+.4}  {:?} vs {:?}", texts[i], texts[j]);
        }
    }
    Ok(())
}
