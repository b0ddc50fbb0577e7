//! A `tokenizers::Tokenizer` built from GGUF metadata, as llama.cpp and
//! mistral.rs build one: `tokenizer.ggml.model` chooses the model (`gpt2`:
//! byte-level BPE from tokens and merges; `llama`: SentencePiece-style
//! pieces with scores and byte fallback), `tokenizer.ggml.pre` the
//! pre-tokenizer split, `tokenizer.ggml.token_type` the special tokens.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

use crate::gguf_meta::{GgufMetadata, MetaValue};
use crate::{Result, TextError};

/// llama.cpp's token types.
const TYPE_CONTROL: u64 = 3;
const TYPE_USER_DEFINED: u64 = 4;
const TYPE_UNUSED: u64 = 5;

/// Llama 3's split (llama.cpp `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: like Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What the metadata says about the tokenizer beyond the model itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTokenizerInfo {
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// Whether encoding with special tokens adds BOS.
    pub add_bos: bool,
    /// Whether encoding with special tokens adds EOS.
    pub add_eos: bool,
    /// The model's Jinja chat template.
    pub chat_template: Option<String>,
    /// Ids of control tokens (never shown when decoding without specials).
    pub control: Vec<u32>,
}

fn strings(meta: &GgufMetadata, key: &str) -> Result<Vec<String>> {
    meta.get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| TextError::Gguf(format!("{key} missing or not an array")))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| TextError::Gguf(format!("{key} holds a non-string")))
        })
        .collect()
}

fn tok_err(e: impl std::fmt::Display) -> TextError {
    TextError::Tokenizer(e.to_string())
}

/// The pre-tokenizer for `tokenizer.ggml.pre` (gpt2 models).
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level =
        |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        let s = Split::new(
            SplitPattern::Regex(re.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?;
        Ok(PreTokenizerWrapper::Split(s))
    };
    Ok(match pre {
        // GPT-2's own split, which ByteLevel applies itself.
        "default" | "gpt2" => byte_level(true),
        // SmolLM / StarCoder: every digit alone, then GPT-2's split.
        "smollm" | "starcoder" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level(true),
        ])),
        "llama-bpe" | "llama3" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(LLAMA3_SPLIT)?,
            byte_level(false),
        ])),
        "qwen2" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(QWEN2_SPLIT)?,
            byte_level(false),
        ])),
        other => {
            return Err(TextError::UnsupportedTokenizer(format!(
                "pre-tokenizer {other:?} (known: default, smollm, llama-bpe, qwen2)"
            )));
        }
    })
}

/// Build the tokenizer in `meta`.
pub fn tokenizer_from_gguf(meta: &GgufMetadata) -> Result<(Tokenizer, GgufTokenizerInfo)> {
    let kind = meta
        .str("tokenizer.ggml.model")
        .ok_or_else(|| TextError::Gguf("tokenizer.ggml.model missing".into()))?;
    let tokens = strings(meta, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
        return Err(TextError::Gguf(format!("{} tokens", tokens.len())));
    }
    let types: Vec<u64> = match meta.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(v)) => v.iter().map(|t| t.as_u64().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let id_of = |key: &str| {
        meta.u64(key)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&v| (v as usize) < tokens.len())
    };
    let mut tokenizer = match kind {
        "gpt2" => {
            let vocab: tokenizers::models::bpe::Vocab = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i as u32))
                .collect();
            let merges = strings(meta, "tokenizer.ggml.merges")?
                .into_iter()
                .map(|m| {
                    m.split_once(' ')
                        .map(|(a, b)| (a.to_owned(), b.to_owned()))
                        .ok_or_else(|| TextError::Gguf(format!("merge {m:?} has no space")))
                })
                .collect::<Result<Vec<_>>>()?;
            let bpe = BPE::builder()
                .vocab_and_merges(vocab, merges)
                .build()
                .map_err(tok_err)?;
            let pre = meta.str("tokenizer.ggml.pre").unwrap_or("default");
            let mut t = Tokenizer::new(bpe);
            t.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
            t.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
            t
        }
        "llama" => {
            let scores: Vec<f64> = match meta.get("tokenizer.ggml.scores") {
                Some(MetaValue::Array(v)) => v.iter().map(|s| s.as_f64().unwrap_or(0.0)).collect(),
                _ => vec![0.0; tokens.len()],
            };
            let vocab: Vec<(String, f64)> = tokens
                .iter()
                .cloned()
                .zip(scores.into_iter().chain(std::iter::repeat(0.0)))
                .collect();
            let unk = id_of("tokenizer.ggml.unknown_token_id").unwrap_or(0) as usize;
            let model = Unigram::from(vocab, Some(unk), true).map_err(tok_err)?;
            let mut t = Tokenizer::new(model);
            let add_prefix = meta.bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let replace = Replace::new(" ", "▁").map_err(tok_err)?;
            let normalizer = if add_prefix {
                NormalizerWrapper::Sequence(tokenizers::normalizers::Sequence::new(vec![
                    NormalizerWrapper::Prepend(Prepend::new("▁".into())),
                    NormalizerWrapper::Replace(replace),
                ]))
            } else {
                NormalizerWrapper::Replace(replace)
            };
            t.with_normalizer(Some(normalizer)).map_err(tok_err)?;
            let space = tokenizers::decoders::DecoderWrapper::Replace(
                Replace::new("▁", " ").map_err(tok_err)?,
            );
            let mut decoders = vec![
                space,
                DecoderWrapper::ByteFallback(ByteFallback::new()),
                DecoderWrapper::Fuse(Fuse::new()),
            ];
            if add_prefix {
                decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
            }
            t.with_decoder(Some(DecoderSequence::new(decoders)));
            t
        }
        other => {
            return Err(TextError::UnsupportedTokenizer(format!(
                "tokenizer.ggml.model {other:?} (known: gpt2, llama)"
            )));
        }
    };
    // Control and user-defined tokens are matched whole before the model
    // splits text; control ones are special (skipped when decoding without
    // specials), user-defined ones are ordinary text.
    let mut control = Vec::new();
    let mut special = Vec::new();
    let mut added = Vec::new();
    for (id, (token, &ty)) in tokens.iter().zip(&types).enumerate() {
        match ty {
            TYPE_CONTROL => {
                control.push(id as u32);
                special.push(AddedToken::from(token.clone(), true));
            }
            TYPE_USER_DEFINED => added.push(AddedToken::from(token.clone(), false)),
            TYPE_UNUSED => {}
            _ => {}
        }
    }
    tokenizer.add_special_tokens(special).map_err(tok_err)?;
    tokenizer.add_tokens(added).map_err(tok_err)?;
    let info = GgufTokenizerInfo {
        bos: id_of("tokenizer.ggml.bos_token_id"),
        eos: id_of("tokenizer.ggml.eos_token_id"),
        add_bos: meta
            .bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(kind == "llama"),
        add_eos: meta.bool("tokenizer.ggml.add_eos_token").unwrap_or(false),
        chat_template: meta.str("tokenizer.chat_template").map(str::to_owned),
        control,
    };
    Ok((tokenizer, info))
}

#[cfg(test)]
#[path = "gguf_tokenizer_tests.rs"]
mod tests;
