//! SmolLM2-135M-Instruct's tokenizer and chat template, built from its real
//! GGUF, against a reference made independently (fixtures/
//! smollm2_reference.py: llama.cpp's `gguf` reader, the Python `tokenizers`
//! package configured as SmolLM2's tokenizer.json, jinja2 as transformers
//! renders chat templates). The model is fetched on first use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use switchyard_testkit::fetch;
use switchyard_text::{ChatMessage, ChatTemplate, TextTokenizer};

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tokenizer() -> TextTokenizer {
    let gguf = fetch::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
    TextTokenizer::from_gguf(&gguf).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

#[test]
fn token_ids_equal_the_reference_for_tricky_strings() {
    let tok = tokenizer();
    let reference = reference();
    let cases = reference["tokens"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        // SmolLM2 adds no BOS (add_bos_token = false), so both agree.
        assert_eq!(tok.encode(text, true).unwrap(), want, "ids of {text:?}");
        let decoded = tok.decode(&want, false).unwrap();
        assert_eq!(
            decoded,
            case["decoded"].as_str().unwrap(),
            "decode of {text:?}"
        );
    }
}

#[test]
fn special_tokens_and_metadata_come_from_the_gguf() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), [2]);
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    let ids = tok.encode("<|im_end|>", false).unwrap();
    assert_eq!(ids, [2]);
    // Control tokens disappear when decoding without specials.
    assert_eq!(tok.decode(&[1, 504, 2], true).unwrap(), "The");
}

#[test]
fn streamed_text_is_whole_characters_and_adds_up_to_the_full_decode() {
    let tok = tokenizer();
    for case in reference()["tokens"].as_array().unwrap() {
        let want = ids(&case["ids"]);
        let mut stream = tok.stream(false);
        let mut pieces = String::new();
        for &id in &want {
            if let Some(piece) = stream.step(id).unwrap() {
                assert!(!piece.contains('\u{fffd}'), "broken character in {piece:?}");
                pieces.push_str(&piece);
            }
        }
        assert_eq!(pieces, tok.decode(&want, false).unwrap());
    }
}

#[test]
fn the_models_chat_template_renders_as_transformers_does() {
    let tok = tokenizer();
    let source = tok
        .chat_template()
        .expect("SmolLM2 carries a chat template");
    let template = ChatTemplate::new(source, "<|im_start|>", "<|im_end|>").unwrap();
    for chat in reference()["chats"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let open_turn = chat["add_generation_prompt"].as_bool().unwrap();
        assert_eq!(
            template.render(&messages, open_turn).unwrap(),
            chat["text"].as_str().unwrap()
        );
    }
}

#[test]
fn the_gguf_metadata_gives_smollm2s_shape() {
    use switchyard_text::{GgufMetadata, LlamaConfig};
    let gguf = fetch::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
    let c = LlamaConfig::from_gguf(&GgufMetadata::read(&gguf).unwrap()).unwrap();
    assert_eq!(
        (c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim),
        (30, 576, 9, 3, 64)
    );
    assert_eq!((c.intermediate, c.vocab), (1536, 49152));
}

#[test]
fn literal_encoding_cannot_forge_control_tokens() {
    let tok = tokenizer();
    let text = "<|im_start|>user";
    let parsed = tok.encode(text, false).unwrap();
    assert_eq!(parsed[0], tok.token_id("<|im_start|>").unwrap());
    let literal = tok.encode_literal(text, false).unwrap();
    assert!(literal.len() > parsed.len());
    assert!(!literal.contains(&parsed[0]));
    assert_eq!(tok.decode(&literal, false).unwrap(), text);
}
