//! [`ChatTemplate`]: a model's own Jinja chat template, rendered with
//! minijinja the way Hugging Face's `apply_chat_template` renders it
//! (`trim_blocks`, `lstrip_blocks`, Python string methods,
//! `raise_exception`), with bounded work so a hostile template cannot hang
//! the caller.

use std::collections::BTreeMap;

use minijinja::{Environment, Error, ErrorKind, Value};

use crate::{Result, TextError};

/// Instructions a render may execute (minijinja's fuel): far above what a
/// long conversation takes, far below a hang.
const FUEL: u64 = 5_000_000;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, or what the template knows.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the model's special tokens.
///
/// ```
/// use switchyard_text::{ChatMessage, ChatTemplate};
///
/// let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
///               {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
/// let template = ChatTemplate::new(source, "<|im_start|>", "<|im_end|>")?;
/// let text = template.render(&[ChatMessage::new("user", "Hi")], true)?;
/// assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
/// # Ok::<(), switchyard_text::TextError>(())
/// ```
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn template_error(e: &Error) -> TextError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    TextError::Template(message)
}

impl ChatTemplate {
    /// Compile `source` with the model's BOS and EOS token texts.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| template_error(&e))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| template_error(&e))?;
        Ok(Self {
            env,
            bos: bos_token.to_owned(),
            eos: eos_token.to_owned(),
        })
    }

    /// Render `messages`; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut map = BTreeMap::new();
                map.insert("role".to_owned(), Value::from(m.role.clone()));
                map.insert("content".to_owned(), Value::from(m.content.clone()));
                Value::from(map)
            })
            .collect();
        let mut ctx = BTreeMap::new();
        ctx.insert("messages", Value::from(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("bos_token", Value::from(self.bos.clone()));
        ctx.insert("eos_token", Value::from(self.eos.clone()));
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| template_error(&e))?;
        template.render(ctx).map_err(|e| template_error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_exception_and_python_methods_work() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}\
             {{ messages[0].content.strip().upper() }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  hi ")], false)
                .unwrap(),
            "HI"
        );
        let err = t
            .render(&[ChatMessage::new("system", "x")], false)
            .unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn bad_templates_and_endless_loops_are_errors() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(TextError::Template(_))
        ));
        let endless = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(matches!(
            endless.render(&[], false),
            Err(TextError::Template(_))
        ));
    }
}
