//! A tiny CLIP tokenizer in the files a diffusers folder ships:
//! `tokenizer/vocab.json`, `tokenizer/merges.txt`, `special_tokens_map.json`
//! and `tokenizer_config.json`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::tokenizer::{byte_chars, learn_merges};

/// Prompts the tiny CLIP BPE learns its merges from.
const CORPUS: &str = "a photo of a red train in a switchyard at dawn. \
    a painting of a blue locomotive, highly detailed. \
    an astronaut riding a horse on the moon. a cat sitting on a chair. \
    a photo of a dog in the snow, a photo of a train on a bridge.";

/// A CLIP-style BPE: lower-cased words of byte-level symbols whose last
/// symbol carries the `</w>` end-of-word suffix.
///
/// Ids as in OpenAI's CLIP vocabulary: the 256 byte symbols, the same with
/// `</w>`, one token per merge, then `<|startoftext|>` and `<|endoftext|>`.
#[derive(Debug, Clone)]
pub struct TinyClipBpe {
    /// Every token, by id.
    pub tokens: Vec<String>,
    /// Merges in rank order.
    pub merges: Vec<(String, String)>,
}

impl Default for TinyClipBpe {
    fn default() -> Self {
        Self::train(64)
    }
}

impl TinyClipBpe {
    /// The start-of-text token.
    pub const BOS: &'static str = "<|startoftext|>";
    /// The end-of-text token (also padding and unknown, as in SD 1.x).
    pub const EOS: &'static str = "<|endoftext|>";

    /// Learn up to `merges` merges from the built-in corpus (deterministic).
    pub fn train(merges: usize) -> Self {
        let chars = byte_chars();
        let mut word_counts: BTreeMap<Vec<String>, usize> = BTreeMap::new();
        for word in CORPUS.split(|c: char| !c.is_alphanumeric()) {
            if word.is_empty() {
                continue;
            }
            let mut symbols: Vec<String> = word
                .to_lowercase()
                .bytes()
                .map(|b| chars[b as usize].to_string())
                .collect();
            if let Some(last) = symbols.last_mut() {
                last.push_str("</w>");
            }
            *word_counts.entry(symbols).or_default() += 1;
        }
        let learned = learn_merges(word_counts, merges);
        let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        tokens.extend(chars.iter().map(|c| format!("{c}</w>")));
        for (a, b) in &learned {
            let joined = format!("{a}{b}");
            if !tokens.contains(&joined) {
                tokens.push(joined);
            }
        }
        tokens.push(Self::BOS.to_owned());
        tokens.push(Self::EOS.to_owned());
        Self {
            tokens,
            merges: learned,
        }
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of `<|startoftext|>`.
    pub fn bos_id(&self) -> u32 {
        (self.tokens.len() - 2) as u32
    }

    /// The id of `<|endoftext|>`.
    pub fn eos_id(&self) -> u32 {
        (self.tokens.len() - 1) as u32
    }

    /// `vocab.json`: token -> id.
    pub fn vocab_json(&self) -> Value {
        let map: serde_json::Map<String, Value> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), json!(id)))
            .collect();
        Value::Object(map)
    }

    /// `merges.txt`, with the version header CLIP's file has.
    pub fn merges_txt(&self) -> String {
        let mut text = String::from("#version: 0.2\n");
        for (a, b) in &self.merges {
            text.push_str(a);
            text.push(' ');
            text.push_str(b);
            text.push('\n');
        }
        text
    }

    /// `special_tokens_map.json`.
    pub fn special_tokens_map_json(&self) -> Value {
        json!({
            "bos_token": Self::BOS,
            "eos_token": Self::EOS,
            "pad_token": Self::EOS,
            "unk_token": Self::EOS,
        })
    }

    /// `tokenizer_config.json` as transformers writes it for CLIPTokenizer.
    pub fn tokenizer_config_json(&self, max_length: usize) -> Value {
        json!({
            "tokenizer_class": "CLIPTokenizer",
            "do_lower_case": true,
            "model_max_length": max_length,
            "bos_token": Self::BOS,
            "eos_token": Self::EOS,
            "pad_token": Self::EOS,
            "unk_token": Self::EOS,
            "errors": "replace",
        })
    }
}
