//! [`TextTokenizer`]: a `tokenizers::Tokenizer` with what generation needs
//! beside it (BOS/EOS, whether to add them, the chat template), loaded from
//! `tokenizer.json` or from a GGUF file's metadata; and [`StreamDecoder`]
//! for streaming text out token by token.

use std::path::Path;
use std::sync::Arc;

use tokenizers::Tokenizer;

use crate::gguf_meta::GgufMetadata;
use crate::gguf_tokenizer::tokenizer_from_gguf;
use crate::json_file::read_optional_json;
use crate::{Result, TextError};

/// A tokenizer and its special tokens. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Arc<Tokenizer>,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
    /// A copy that reads special-token text as plain text (made on first use).
    literal: Arc<std::sync::OnceLock<Tokenizer>>,
}

fn tok_err(e: impl std::fmt::Display) -> TextError {
    TextError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// Load a `tokenizer.json` (its post-processor adds special tokens, as
    /// the model's authors configured it).
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| TextError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self {
            inner: Arc::new(inner),
            bos: None,
            eos: Vec::new(),
            add_bos: false,
            add_eos: false,
            chat_template: None,
            literal: Arc::default(),
        })
    }

    /// Load a Hugging Face model folder's tokenizer: `tokenizer.json`, with
    /// the chat template and BOS/EOS tokens from `tokenizer_config.json` and
    /// the end-of-generation ids from `generation_config.json` or
    /// `config.json` (`eos_token_id`, one id or a list), where present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let mut tok = Self::from_file(&dir.join("tokenizer.json"))?;
        let config = read_optional_json::<serde_json::Value>(&dir.join("tokenizer_config.json"))?;
        let special = |key: &str| -> Option<u32> {
            let v = config.as_ref()?.get(key)?;
            let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
            tok.inner.token_to_id(text)
        };
        tok.bos = special("bos_token");
        let eos_text = special("eos_token");
        tok.chat_template = config.as_ref().and_then(|c| match c.get("chat_template")? {
            serde_json::Value::String(s) => Some(s.clone()),
            // A list of named templates: the one called "default".
            serde_json::Value::Array(list) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
            _ => None,
        });
        let mut eos = Vec::new();
        for file in ["generation_config.json", "config.json"] {
            if let Some(v) = read_optional_json::<serde_json::Value>(&dir.join(file))?
                && let Some(ids) = v.get("eos_token_id")
            {
                let list: Vec<&serde_json::Value> = match ids {
                    serde_json::Value::Array(a) => a.iter().collect(),
                    one => vec![one],
                };
                eos.extend(
                    list.iter()
                        .filter_map(|v| v.as_u64())
                        .filter_map(|v| u32::try_from(v).ok()),
                );
                break;
            }
        }
        if let Some(e) = eos_text
            && !eos.contains(&e)
        {
            eos.insert(0, e);
        }
        tok.eos = eos;
        Ok(tok)
    }

    /// The text of a token id, special tokens included.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Build the tokenizer a GGUF file carries in its metadata.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        Self::from_gguf_metadata(&GgufMetadata::read(path)?)
    }

    /// Build the tokenizer from already-read GGUF metadata.
    pub fn from_gguf_metadata(meta: &GgufMetadata) -> Result<Self> {
        let (inner, info) = tokenizer_from_gguf(meta)?;
        Ok(Self {
            inner: Arc::new(inner),
            bos: info.bos,
            eos: info.eos.into_iter().collect(),
            add_bos: info.add_bos,
            add_eos: info.add_eos,
            chat_template: info.chat_template,
            literal: Arc::default(),
        })
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Beginning-of-sequence token, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Tokens that end generation.
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// The model's own Jinja chat template, if it carries one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token's exact text.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of `text`. Special tokens written in the text (e.g.
    /// `<|im_start|>`) become their ids; `add_special` adds BOS/EOS as the
    /// model asks (`add_bos_token`/`add_eos_token` in GGUF).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, add_special).map_err(tok_err)?;
        Ok(self.with_specials(encoding.get_ids(), add_special))
    }

    /// Token ids of `text` with special-token text (such as `<|im_start|>`
    /// typed by a user) read as ordinary characters, so it cannot forge
    /// control tokens; `add_special` as in [`encode`](Self::encode).
    pub fn encode_literal(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let literal = self.literal.get_or_init(|| {
            let mut t = (*self.inner).clone();
            t.set_encode_special_tokens(true);
            t
        });
        let encoding = literal.encode(text, add_special).map_err(tok_err)?;
        Ok(self.with_specials(encoding.get_ids(), add_special))
    }

    /// `body` with the BOS/EOS the model asks for when `add_special`.
    fn with_specials(&self, body: &[u32], add_special: bool) -> Vec<u32> {
        let mut ids = Vec::with_capacity(body.len() + 2);
        if add_special
            && self.add_bos
            && let Some(bos) = self.bos
        {
            ids.push(bos);
        }
        ids.extend_from_slice(body);
        if add_special
            && self.add_eos
            && let Some(&eos) = self.eos.first()
        {
            ids.push(eos);
        }
        ids
    }

    /// Text of `ids`; `skip_special` leaves control tokens out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// A decoder for a stream of generated tokens.
    pub fn stream(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder {
            tokenizer: self.clone(),
            skip_special,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        }
    }
}

/// Turns tokens into text as they arrive: each step returns the new text
/// that is complete, holding back bytes of a character that spans tokens,
/// so no broken UTF-8 is ever emitted and the pieces concatenate to the
/// full decode. (The state machine is `tokenizers`' own decode stream.)
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tokenizer: TextTokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl StreamDecoder {
    /// Feed one token; the text it completes, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        tokenizers::tokenizer::step_decode_stream(
            &**self.tokenizer.inner,
            vec![id],
            self.skip_special,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(tok_err)
    }
}
