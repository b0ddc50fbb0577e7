//! The OpenAI request and response bodies the service reads and writes.
//! Fields a client may send that the service does not act on are read and
//! ignored, as OpenAI's own clients send several by default.

use serde::{Deserialize, Serialize};

use crate::scheduling::SchedulingFields;

/// One string or several (`stop`, `input`, `prompt`).
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single string.
    One(String),
    /// An array of strings.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings, in order.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A chat message's content: a string, or an array of parts of which the
/// text parts are read.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": ...}`).
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct ContentPart {
    /// The part's type; only `text` is served.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// One message of a chat request.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct ChatMessageIn {
    /// `system`, `user`, `assistant` (`developer` is read as `system`).
    pub role: String,
    /// What it says; `null` reads as empty.
    #[serde(default)]
    pub content: Option<MessageContent>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with the token usage and no choices.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields chat and text completions share.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct Sampling {
    /// Most new tokens per choice.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Chat's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// 0 is greedy.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Choices to make for each prompt.
    #[serde(default)]
    pub n: Option<u64>,
    /// Strings that end a choice (not included).
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    /// Same seed, same prompt: same text. Choice `i` uses `seed + i`.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// What streaming adds.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequest {
    /// The model id.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessageIn>,
    /// How to sample.
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Priority and timeout.
    #[serde(flatten)]
    pub scheduling: SchedulingFields,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    /// The model id.
    pub model: String,
    /// One prompt or several; each gets `n` choices.
    pub prompt: OneOrMany,
    /// How to sample.
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Priority and timeout.
    #[serde(flatten)]
    pub scheduling: SchedulingFields,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingRequest {
    /// The model id.
    pub model: String,
    /// The texts.
    pub input: OneOrMany,
    /// `float` (the default) or `base64` (little-endian f32 bytes).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Priority and timeout.
    #[serde(flatten)]
    pub scheduling: SchedulingFields,
}

/// Token counts of a response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageOut {
    /// Tokens read.
    pub prompt_tokens: usize,
    /// Tokens written.
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
}

impl UsageOut {
    /// Adds one choice's counts.
    pub fn add(&mut self, prompt: usize, completion: usize) {
        self.prompt_tokens += prompt;
        self.completion_tokens += completion;
        self.total_tokens = self.prompt_tokens + self.completion_tokens;
    }
}

/// The assistant's message in a chat choice.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatMessageOut {
    /// Always `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatChoice {
    /// Which choice.
    pub index: usize,
    /// The answer.
    pub message: ChatMessageOut,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
}

/// A chat completion (`object: "chat.completion"`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
    /// The answers.
    pub choices: Vec<ChatChoice>,
    /// Token counts over all choices.
    pub usage: UsageOut,
}

/// One choice of a text completion.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TextChoice {
    /// Which choice (prompt-major: prompt `p`, choice `c` is `p * n + c`).
    pub index: usize,
    /// The continuation.
    pub text: String,
    /// Always `null`: log-probabilities are not served.
    pub logprobs: Option<()>,
    /// `stop` or `length` (`null` in a stream's middle chunks).
    pub finish_reason: Option<&'static str>,
}

/// A text completion (`object: "text_completion"`), whole or one chunk of
/// a stream.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TextCompletion {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
    /// The continuations.
    pub choices: Vec<TextChoice>,
    /// Token counts (whole responses, and a stream's usage chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
}

/// What a chat stream chunk adds to a choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatDelta {
    /// `assistant`, in each choice's first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice's part of a chat stream chunk.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatChunkChoice {
    /// Which choice.
    pub index: usize,
    /// What is new.
    pub delta: ChatDelta,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<&'static str>,
}

/// A chat stream chunk (`object: "chat.completion.chunk"`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatChunk {
    /// The completion's id, the same in every chunk.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
    /// Empty in the usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// Only in the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
}

/// One embedding: floats, or base64 of their little-endian bytes.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// `encoding_format: "float"`.
    Float(Vec<f32>),
    /// `encoding_format: "base64"`.
    Base64(String),
}

/// One input's embedding.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EmbeddingData {
    /// `embedding`.
    pub object: &'static str,
    /// Which input.
    pub index: usize,
    /// The vector.
    pub embedding: EmbeddingVector,
}

/// Token counts of an embedding response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EmbeddingUsage {
    /// Tokens read.
    pub prompt_tokens: usize,
    /// The same.
    pub total_tokens: usize,
}

/// `POST /v1/embeddings`' answer (`object: "list"`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EmbeddingResponse {
    /// `list`.
    pub object: &'static str,
    /// One per input, in order.
    pub data: Vec<EmbeddingData>,
    /// The model id.
    pub model: String,
    /// Token counts.
    pub usage: EmbeddingUsage,
}

/// One served model in `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelObject {
    /// The model id.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds the service started.
    pub created: u64,
    /// `switchyard`.
    pub owned_by: &'static str,
}

/// `GET /v1/models`' answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// The models.
    pub data: Vec<ModelObject>,
}
