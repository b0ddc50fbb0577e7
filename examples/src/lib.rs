//! Helpers shared by Switchyard's example programs.
//!
//! The programs themselves live beside this crate and run with
//! `cargo run --release --example NAME`:
//!
//! - `quickstart`: fetches SmolLM2-135M-Instruct and all-MiniLM-L6-v2 if
//!   missing, runs both through one `switchyard::Engine`: a streamed chat
//!   answer, a batch of embeddings compared by cosine similarity, a picture
//!   from a tiny random-weight Stable Diffusion model written to a PNG, and
//!   the engine's metrics.
//! - `chat`: an interactive conversation with SmolLM2 (or any Llama-family
//!   GGUF or Hugging Face folder) through the engine, streamed.
//! - `embed`: sentence embeddings of the given texts, as text or JSON.
//! - `generate`: one generation straight from the text pipeline, streamed
//!   or as JSON (and tokenising, for comparisons with other tools).
//! - `generate-image`: text-to-image, image-to-image or inpainting on a
//!   diffusers folder through the engine, with a progress bar; `--tiny`
//!   uses a tiny random-weight model.
//!
//! # Example
//!
//! ```
//! use switchyard_examples::preview;
//! assert_eq!(preview(&[0.5, -0.25, 1.0], 2), "[0.5000, -0.2500, ...] (3 values)");
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

/// The first `n` values of a vector, four decimals each, and its length.
pub fn preview(values: &[f32], n: usize) -> String {
    let shown: Vec<String> = values.iter().take(n).map(|v| format!("{v:.4}")).collect();
    let more = if values.len() > n { ", ..." } else { "" };
    format!("[{}{more}] ({} values)", shown.join(", "), values.len())
}
