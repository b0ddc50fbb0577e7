//! Tiny tokenizers in the real formats: byte-level BPE (GPT-2 / SmolLM style)
//! and WordPiece (BERT style).

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

/// Text the tiny BPE learns its merges from, and the WordPiece its words.
const CORPUS: &str = "the quick brown fox jumps over the lazy dog. \
    a switchyard sorts the cars of the trains by their destination. \
    the engine batches requests for the same model and runs them together. \
    hello world, hello there! the weather is nice and the sun is warm. \
    models stay loaded in memory while the memory lasts.";

/// A ChatML chat template in Jinja, the shape SmolLM2 and Qwen use.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Learns up to `merges` BPE merges from words (as symbol sequences, with
/// their counts): each round merges the most frequent adjacent pair, ties to
/// the smallest pair, and stops when no pair occurs twice. Deterministic.
pub(crate) fn learn_merges(
    word_counts: BTreeMap<Vec<String>, usize>,
    merges: usize,
) -> Vec<(String, String)> {
    let mut words: Vec<(Vec<String>, usize)> = word_counts.into_iter().collect();
    let mut learned = Vec::new();
    for _ in 0..merges {
        let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (symbols, count) in &words {
            for w in symbols.windows(2) {
                *pairs.entry((w[0].as_str(), w[1].as_str())).or_default() += count;
            }
        }
        // Most frequent pair; ties go to the smallest pair (BTreeMap order).
        let Some(((a, b), count)) = pairs.into_iter().fold(
            None,
            |best: Option<((&str, &str), usize)>, (pair, n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((pair, n)),
            },
        ) else {
            break;
        };
        if count < 2 {
            break;
        }
        let (a, b) = (a.to_owned(), b.to_owned());
        for (symbols, _) in &mut words {
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == a && symbols[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(symbols[i].clone());
                    i += 1;
                }
            }
            *symbols = merged;
        }
        learned.push((a, b));
    }
    learned
}

/// GPT-2's byte-to-character table: every byte maps to one printable char.
pub(crate) fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable = (u32::from('!')..=u32::from('~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b);
        let code = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(code).unwrap_or('?');
    }
    table
}

/// A byte-level BPE tokenizer trained on a fixed corpus.
///
/// Ids: the special tokens first (`<|endoftext|>` 0, `<|im_start|>` 1,
/// `<|im_end|>` 2, as in SmolLM2), then the 256 byte symbols, then one token
/// per merge.
#[derive(Debug, Clone)]
pub struct TinyBpe {
    /// Every token, by id.
    pub tokens: Vec<String>,
    /// Merges in rank order.
    pub merges: Vec<(String, String)>,
    /// How many leading ids are special (control) tokens.
    pub special_count: usize,
}

impl Default for TinyBpe {
    fn default() -> Self {
        Self::train(96)
    }
}

impl TinyBpe {
    /// The special tokens, in id order.
    pub const SPECIALS: [&'static str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

    /// Learn up to `merges` merges from the built-in corpus (deterministic).
    pub fn train(merges: usize) -> Self {
        let chars = byte_chars();
        let mut word_counts: BTreeMap<Vec<String>, usize> = BTreeMap::new();
        for word in CORPUS.split_whitespace() {
            let symbols = std::iter::once(b' ')
                .chain(word.bytes())
                .map(|b| chars[b as usize].to_string())
                .collect();
            *word_counts.entry(symbols).or_default() += 1;
        }
        let learned = learn_merges(word_counts, merges);
        let mut tokens: Vec<String> = Self::SPECIALS.iter().map(|s| s.to_string()).collect();
        tokens.extend(chars.iter().map(|c| c.to_string()));
        for (a, b) in &learned {
            let joined = format!("{a}{b}");
            if !tokens.contains(&joined) {
                tokens.push(joined);
            }
        }
        Self {
            tokens,
            merges: learned,
            special_count: Self::SPECIALS.len(),
        }
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Id of `<|im_start|>`, used as the beginning-of-sequence token.
    pub fn bos_id(&self) -> u32 {
        1
    }

    /// Id of `<|im_end|>`, the end of a chat turn.
    pub fn eos_id(&self) -> u32 {
        2
    }

    /// GGUF token types: 3 (control) for the special tokens, 1 (normal) otherwise.
    pub fn token_types(&self) -> Vec<i32> {
        (0..self.tokens.len())
            .map(|i| if i < self.special_count { 3 } else { 1 })
            .collect()
    }

    /// Merges as GGUF and `tokenizer.json` store them: `"left right"`.
    pub fn merge_strings(&self) -> Vec<String> {
        self.merges
            .iter()
            .map(|(a, b)| format!("{a} {b}"))
            .collect()
    }

    /// The `tokenizer.json` document (Hugging Face tokenizers format).
    pub fn tokenizer_json(&self) -> Value {
        let vocab: serde_json::Map<String, Value> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), json!(id)))
            .collect();
        let added: Vec<Value> = Self::SPECIALS
            .iter()
            .enumerate()
            .map(|(id, content)| added_token(id, content))
            .collect();
        let byte_level = json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
        });
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": byte_level,
            "post_processor": byte_level,
            "decoder": byte_level,
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": self.merge_strings(),
            }
        })
    }

    /// `tokenizer_config.json` with the chat template and special tokens.
    pub fn tokenizer_config_json(&self) -> Value {
        json!({
            "add_bos_token": false,
            "add_eos_token": false,
            "bos_token": Self::SPECIALS[1],
            "eos_token": Self::SPECIALS[2],
            "unk_token": Self::SPECIALS[0],
            "pad_token": Self::SPECIALS[0],
            "chat_template": CHAT_TEMPLATE,
            "model_max_length": 2048,
            "tokenizer_class": "GPT2Tokenizer",
        })
    }
}

fn added_token(id: usize, content: &str) -> Value {
    json!({
        "id": id, "content": content, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true
    })
}

/// A BERT-style WordPiece tokenizer over a tiny vocabulary.
///
/// Ids: `[PAD]` 0, `[UNK]` 1, `[CLS]` 2, `[SEP]` 3, `[MASK]` 4, then single
/// characters, their `##` continuations, and the corpus's words.
#[derive(Debug, Clone)]
pub struct TinyWordPiece {
    /// Every token, by id.
    pub tokens: Vec<String>,
}

impl Default for TinyWordPiece {
    fn default() -> Self {
        Self::new()
    }
}

impl TinyWordPiece {
    /// The special tokens, in id order.
    pub const SPECIALS: [&'static str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

    /// Build the vocabulary (deterministic).
    pub fn new() -> Self {
        let mut tokens: Vec<String> = Self::SPECIALS.iter().map(|s| s.to_string()).collect();
        let singles = ('a'..='z').chain('0'..='9');
        tokens.extend(singles.clone().map(String::from));
        tokens.extend(".,!?'-:;".chars().map(String::from));
        tokens.extend(singles.map(|c| format!("##{c}")));
        for word in CORPUS.split(|c: char| !c.is_ascii_alphabetic()) {
            let word = word.to_ascii_lowercase();
            if word.len() > 1 && !tokens.contains(&word) {
                tokens.push(word);
            }
        }
        Self { tokens }
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The `tokenizer.json` document (Hugging Face tokenizers format).
    pub fn tokenizer_json(&self) -> Value {
        let vocab: HashMap<&str, usize> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.as_str(), id))
            .collect();
        let vocab: BTreeMap<_, _> = vocab.into_iter().collect();
        let added: Vec<Value> = Self::SPECIALS
            .iter()
            .enumerate()
            .map(|(id, content)| added_token(id, content))
            .collect();
        let special = |name: &str, id: usize| json!({"id": name, "ids": [id], "tokens": [name]});
        let tok = |name: &str| json!({"SpecialToken": {"id": name, "type_id": 0}});
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {
                "type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                "strip_accents": null, "lowercase": true
            },
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [tok("[CLS]"), {"Sequence": {"id": "A", "type_id": 0}}, tok("[SEP]")],
                "pair": [
                    tok("[CLS]"), {"Sequence": {"id": "A", "type_id": 0}}, tok("[SEP]"),
                    {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}
                ],
                "special_tokens": {"[CLS]": special("[CLS]", 2), "[SEP]": special("[SEP]", 3)}
            },
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {
                "type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100, "vocab": vocab
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_onto_printable_chars() {
        let table = byte_chars();
        let mut seen: Vec<char> = table.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(table[b' ' as usize], '\u{120}'); // 'Ġ'
        assert_eq!(table[b'a' as usize], 'a');
    }

    #[test]
    fn bpe_training_is_deterministic_and_learns_frequent_words() {
        let a = TinyBpe::default();
        let b = TinyBpe::default();
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.merges, b.merges);
        assert!(a.merges.len() > 20, "{}", a.merges.len());
        assert!(
            a.tokens.iter().any(|t| t == "Ġthe"),
            "{:?}",
            &a.tokens[259..]
        );
        assert_eq!(a.token_types()[..4], [3, 3, 3, 1]);
        assert_eq!(a.vocab_size(), 259 + a.merges.len());
    }

    #[test]
    fn wordpiece_vocab_has_unique_tokens() {
        let wp = TinyWordPiece::new();
        let mut tokens = wp.tokens.clone();
        tokens.sort();
        tokens.dedup();
        assert_eq!(tokens.len(), wp.vocab_size());
        assert_eq!(wp.tokens[2], "[CLS]");
    }
}
