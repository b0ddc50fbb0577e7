//! An arbitrary Jinja chat template and message text: compiling and
//! rendering give a string or a typed error, never a panic or a hang (the
//! renderer runs on bounded fuel).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_text::{ChatMessage, ChatTemplate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (source, content) = text.split_once('\0').unwrap_or((text, "hello"));
    let Ok(template) = ChatTemplate::new(source, "<s>", "</s>") else {
        return;
    };
    let messages = [
        ChatMessage::new("system", "be brief"),
        ChatMessage::new("user", content),
    ];
    let _ = template.render(&messages, true);
});
