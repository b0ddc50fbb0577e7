use std::collections::HashMap;

use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use super::*;

fn strs(items: &[&str]) -> MetaValue {
    MetaValue::Array(
        items
            .iter()
            .map(|s| MetaValue::Str((*s).to_owned()))
            .collect(),
    )
}

fn meta(pairs: Vec<(&str, MetaValue)>) -> GgufMetadata {
    GgufMetadata {
        version: 3,
        tensor_count: 0,
        values: pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<HashMap<_, _>>(),
    }
}

/// A SentencePiece-style vocabulary: specials, a few pieces, all 256 bytes.
fn spm() -> GgufMetadata {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "▁hello", "▁world", "▁"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut scores = vec![0.0, 0.0, 0.0, -1.0, -1.0, -3.0];
    let mut types = vec![2u64, 3, 3, 1, 1, 1];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(-10.0);
        types.push(6);
    }
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    meta(vec![
        ("tokenizer.ggml.model", MetaValue::Str("llama".into())),
        ("tokenizer.ggml.tokens", strs(&tokens)),
        (
            "tokenizer.ggml.scores",
            MetaValue::Array(scores.into_iter().map(MetaValue::Float).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            MetaValue::Array(types.into_iter().map(MetaValue::Uint).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", MetaValue::Uint(1)),
        ("tokenizer.ggml.eos_token_id", MetaValue::Uint(2)),
    ])
}

#[test]
fn llama_kind_uses_pieces_then_byte_fallback_and_adds_bos() {
    let (tok, info) = tokenizer_from_gguf(&spm()).unwrap();
    assert!(info.add_bos);
    assert_eq!((info.bos, info.eos), (Some(1), Some(2)));
    let enc = tok.encode("hello world", false).unwrap();
    assert_eq!(enc.get_ids(), [3, 4]);
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "hello world");
    // "é" has no piece: its two UTF-8 bytes come back through byte fallback.
    let enc = tok.encode("hello é", false).unwrap();
    let bytes: Vec<u32> = [0xC3u32, 0xA9].iter().map(|b| 6 + b).collect();
    assert_eq!(enc.get_ids(), [&[3, 5][..], &bytes[..]].concat());
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "hello é");
}

fn splits(pre: &str, text: &str) -> Vec<String> {
    let p = pre_tokenizer(pre).unwrap();
    let mut s = PreTokenizedString::from(text);
    p.pre_tokenize(&mut s).unwrap();
    s.get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(piece, _, _)| piece.to_owned())
        .collect()
}

#[test]
fn each_pre_tokenizer_splits_digits_its_own_way() {
    assert_eq!(splits("llama-bpe", "12345"), ["123", "45"]);
    assert_eq!(splits("qwen2", "12345"), ["1", "2", "3", "4", "5"]);
    assert_eq!(splits("smollm", "12345"), ["1", "2", "3", "4", "5"]);
    assert_eq!(splits("default", "12345"), ["12345"]);
    // Llama 3 keeps a leading space with the word, as GPT-2 does.
    assert_eq!(splits("llama-bpe", "hi there"), ["hi", "Ġthere"]);
    assert!(matches!(
        pre_tokenizer("mystery"),
        Err(TextError::UnsupportedTokenizer(_))
    ));
}

#[test]
fn unknown_kinds_and_broken_metadata_are_typed_errors() {
    let mut m = spm();
    m.values
        .insert("tokenizer.ggml.model".into(), MetaValue::Str("rwkv".into()));
    assert!(matches!(
        tokenizer_from_gguf(&m),
        Err(TextError::UnsupportedTokenizer(_))
    ));
    let mut m = spm();
    m.values.remove("tokenizer.ggml.tokens");
    assert!(matches!(tokenizer_from_gguf(&m), Err(TextError::Gguf(_))));
    let bpe_without_merges = meta(vec![
        ("tokenizer.ggml.model", MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.tokens", strs(&["a", "b"])),
    ]);
    assert!(matches!(
        tokenizer_from_gguf(&bpe_without_merges),
        Err(TextError::Gguf(_))
    ));
    let bad_merge = meta(vec![
        ("tokenizer.ggml.model", MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.tokens", strs(&["a", "b", "ab"])),
        ("tokenizer.ggml.merges", strs(&["ab"])),
    ]);
    assert!(tokenizer_from_gguf(&bad_merge).is_err());
}
