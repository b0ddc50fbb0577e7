//! Arbitrary bytes as a GGUF file, read the way the text crate reads one:
//! the bounded metadata reader, then the model shape and the tokenizer
//! built from it. Any input
//! gives a value or a typed error: no panic, no allocation a forged length
//! asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_text::{GgufMetadata, LlamaConfig, TextTokenizer};

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = GgufMetadata::parse(data) else {
        return;
    };
    if let Ok(config) = LlamaConfig::from_gguf(&meta) {
        assert!(config.heads.is_multiple_of(config.kv_heads));
    }
    if let Ok(tokenizer) = TextTokenizer::from_gguf_metadata(&meta)
        && let Ok(ids) = tokenizer.encode("Hello, wörld 123 <|im_start|>", true)
    {
        let _ = tokenizer.decode(&ids, false);
    }
});
