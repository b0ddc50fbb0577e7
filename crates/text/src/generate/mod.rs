//! Text generation: [`Generator`] runs one request, or a fixed batch started
//! together, on a [`LlamaModel`] and streams text as it is produced;
//! [`GenerationEngine`] serves requests that arrive at any time with
//! continuous batching (preemption, prefix caching, latency control).

mod engine;
mod latency;
mod run;
mod scheduler;
mod sequence;
mod stats;
mod stream;

use std::path::Path;
use std::sync::Arc;

use switchyard_core::{CancellationToken, DeviceId};

pub use engine::{
    GenerationEngine, GenerationEngineConfig, GenerationStats, LatencyControl, RequestOptions,
    ShutdownMode,
};
pub use stream::GenerationStream;

use crate::llama::{LlamaModel, LoadOptions, PagedKvCache};
use crate::{
    ChatMessage, ChatTemplate, FinishReason, Result, Sampler, SamplingParams, StopMatcher,
    TextError, TextTokenizer, Usage,
};
use run::{LoopConfig, Prepared};

/// What to continue.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Plain text, tokenised with the model's BOS/EOS rules.
    Text(String),
    /// Token ids as they are.
    Tokens(Vec<u32>),
    /// A conversation, rendered with the model's chat template and an open
    /// assistant turn.
    Chat(Vec<ChatMessage>),
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// What to continue.
    pub prompt: Prompt,
    /// How to pick tokens and when to stop.
    pub params: SamplingParams,
    /// Cancels the request (a child of it is watched, so cancelling the
    /// stream does not cancel this token's other users).
    pub cancel: CancellationToken,
}

impl GenerateRequest {
    /// A request for `prompt` with `params` and a fresh token.
    pub fn new(prompt: Prompt, params: SamplingParams) -> Self {
        Self {
            prompt,
            params,
            cancel: CancellationToken::new(),
        }
    }
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Why it ended.
    pub reason: FinishReason,
    /// Tokens in and out.
    pub usage: Usage,
}

/// A piece of generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextDelta {
    /// New text (complete characters only; stop strings never shown).
    pub text: String,
    /// The tokens sampled for it (a stop token included; its text is not).
    pub tokens: Vec<u32>,
    /// On the last delta: why and with what usage the generation ended.
    pub finish: Option<Finished>,
}

/// A whole generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The generated text.
    pub text: String,
    /// Every sampled token.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Tokens in and out.
    pub usage: Usage,
}

/// A model, its tokenizer and chat template, ready to generate.
///
/// Cheap to clone (the model is shared). Each call gets a KV cache sized
/// for its requests, taken from the model's device and returned when the
/// requests end.
#[derive(Debug, Clone)]
pub struct Generator {
    model: Arc<LlamaModel>,
    tokenizer: TextTokenizer,
    template: Option<Arc<ChatTemplate>>,
    config: LoopConfig,
}

impl Generator {
    /// Load a `.gguf` file (tokenizer and chat template from its metadata)
    /// or a Hugging Face folder (`tokenizer.json`, `tokenizer_config.json`).
    pub fn load(path: &Path, device: DeviceId) -> Result<Self> {
        Self::load_with(path, device, LoadOptions::default())
    }

    /// [`Generator::load`] with model-loading options.
    pub fn load_with(path: &Path, device: DeviceId, options: LoadOptions) -> Result<Self> {
        let tokenizer = if path.is_dir() {
            TextTokenizer::from_hf_dir(path)?
        } else {
            TextTokenizer::from_gguf(path)?
        };
        let model = LlamaModel::load_with(path, device, options)?;
        Self::new(Arc::new(model), tokenizer)
    }

    /// Pair a loaded model with its tokenizer.
    pub fn new(model: Arc<LlamaModel>, tokenizer: TextTokenizer) -> Result<Self> {
        let template = match tokenizer.chat_template() {
            Some(source) => {
                let text =
                    |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
                let bos = text(tokenizer.bos());
                let eos = text(tokenizer.eos().first().copied());
                Some(Arc::new(ChatTemplate::new(source, &bos, &eos)?))
            }
            None => None,
        };
        Ok(Self {
            model,
            tokenizer,
            template,
            config: LoopConfig {
                block_size: 16,
                prefill_chunk: 512,
            },
        })
    }

    /// Prompt tokens one step may prefill over all sequences (default 512).
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Self {
        self.config.prefill_chunk = tokens.max(1);
        self
    }

    /// Tokens per KV block (default 16).
    pub fn with_block_size(mut self, tokens: usize) -> Self {
        self.config.block_size = tokens.max(1);
        self
    }

    /// Serve requests that arrive at any time with continuous batching
    /// (see [`GenerationEngine`]).
    pub fn serve(self, config: GenerationEngineConfig) -> Result<GenerationEngine> {
        GenerationEngine::start(self, config)
    }

    /// The model.
    pub fn model(&self) -> &Arc<LlamaModel> {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The prompt's tokens as the model will see them.
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let ids = match prompt {
            Prompt::Text(text) => self.tokenizer.encode(text, true)?,
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Chat(messages) => {
                let template = self.template.as_ref().ok_or_else(|| {
                    TextError::Template("the model has no chat template; send plain text".into())
                })?;
                let text = template.render(messages, true)?;
                self.tokenizer.encode(&text, false)?
            }
        };
        Ok(ids)
    }

    /// Bytes of KV cache one request of `tokens` tokens (prompt plus output)
    /// takes.
    pub fn kv_bytes(&self, tokens: usize) -> usize {
        tokens * PagedKvCache::bytes_per_token(self.model.config(), self.model.kv_dtype())
    }

    fn prepare(&self, request: &GenerateRequest, cancel: CancellationToken) -> Result<Prepared> {
        let config = self.model.config();
        let mut prompt = self.prompt_tokens(&request.prompt)?;
        if prompt.is_empty() {
            match self.tokenizer.bos() {
                Some(bos) => prompt.push(bos),
                None => {
                    return Err(TextError::InvalidInput {
                        field: "prompt",
                        reason: "empty, and the model has no BOS token to start from".into(),
                    });
                }
            }
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= config.vocab) {
            return Err(TextError::InvalidInput {
                field: "prompt",
                reason: format!("token {bad} is outside the vocabulary of {}", config.vocab),
            });
        }
        if prompt.len() >= config.context {
            return Err(TextError::InvalidInput {
                field: "prompt",
                reason: format!(
                    "{} tokens leave no room in the context of {}",
                    prompt.len(),
                    config.context
                ),
            });
        }
        let params = request.params.clone();
        let max_new = params.max_tokens.min(config.context - prompt.len());
        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend_from_slice(self.tokenizer.eos());
        }
        Ok(Prepared {
            sampler: Sampler::new(params.clone(), &prompt)?,
            stops: StopMatcher::new(params.stop),
            decoder: self.tokenizer.stream(true),
            stop_ids,
            max_new,
            prompt,
            cancel,
        })
    }

    /// Generate for `request` on the calling thread and return the result.
    pub fn generate(&self, request: &GenerateRequest) -> Result<Completion> {
        let mut all = self.generate_batch(std::slice::from_ref(request))?;
        all.pop().ok_or_else(|| TextError::Generation {
            reason: "no result".into(),
        })?
    }

    /// Generate for a fixed batch started together, on the calling thread.
    /// The outer error is for the batch as a whole (a bad request refuses
    /// the batch before anything runs); each inner result is one request's.
    pub fn generate_batch(&self, requests: &[GenerateRequest]) -> Result<Vec<Result<Completion>>> {
        let jobs = requests
            .iter()
            .map(|r| self.prepare(r, r.cancel.clone()))
            .collect::<Result<Vec<_>>>()?;
        let mut partial: Vec<(String, Vec<u32>)> = vec![Default::default(); jobs.len()];
        let mut results: Vec<Option<Result<Completion>>> = (0..jobs.len()).map(|_| None).collect();
        let mut sink = |i: usize, item: Result<crate::TextDelta>| match item {
            Ok(delta) => {
                partial[i].0.push_str(&delta.text);
                partial[i].1.extend_from_slice(&delta.tokens);
                if let Some(done) = delta.finish {
                    let (text, tokens) = std::mem::take(&mut partial[i]);
                    results[i] = Some(Ok(Completion {
                        text,
                        tokens,
                        finish_reason: done.reason,
                        usage: done.usage,
                    }));
                }
            }
            Err(e) => results[i] = Some(Err(e)),
        };
        run::run(&self.model, jobs, self.config, &mut sink);
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(TextError::Generation {
                        reason: "the loop ended without finishing this request".into(),
                    })
                })
            })
            .collect())
    }

    /// Start generating for `request` on a thread of its own; read the text
    /// from the returned stream as it is produced.
    pub fn stream(&self, request: &GenerateRequest) -> Result<GenerationStream> {
        let mut all = self.stream_batch(std::slice::from_ref(request))?;
        all.pop().ok_or_else(|| TextError::Generation {
            reason: "no stream".into(),
        })
    }

    /// Start a fixed batch together on a thread of its own: one stream per
    /// request, in order. Every request is checked before anything starts.
    pub fn stream_batch(&self, requests: &[GenerateRequest]) -> Result<Vec<GenerationStream>> {
        let mut jobs = Vec::with_capacity(requests.len());
        let mut senders = Vec::with_capacity(requests.len());
        let mut streams = Vec::with_capacity(requests.len());
        for r in requests {
            let cancel = r.cancel.child_token();
            jobs.push(self.prepare(r, cancel.clone())?);
            let (tx, rx) = stream::channel(cancel);
            senders.push(tx);
            streams.push(rx);
        }
        let this = self.clone();
        std::thread::Builder::new()
            .name("switchyard-generate".into())
            .spawn(move || {
                let mut sink = |i: usize, item| senders[i].send(item);
                run::run(&this.model, jobs, this.config, &mut sink);
            })
            .map_err(|e| TextError::Generation {
                reason: format!("cannot start the generation thread: {e}"),
            })?;
        Ok(streams)
    }
}
