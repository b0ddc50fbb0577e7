//! What callers send the engine and what they get back.

use std::time::Duration;

use switchyard_core::{Priority, RequestId};
use switchyard_text::{ChatMessage, Completion, Prompt, SamplingParams};

use switchyard_image::DynamicImage;

use crate::config::{Defaults, ModelKind};
use crate::engine::error::{EngineError, Result};
use crate::engine::image_ops::ImageOp;
#[cfg(feature = "diffusion")]
use crate::engine::images::{ImageInput, ImageOptions};

/// Generation settings; `None` takes the model's default from the
/// registry, then the engine's (greedy, 256 tokens).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationOptions {
    /// Most new tokens.
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Keep the `k` likeliest tokens.
    pub top_k: Option<usize>,
    /// CTRL repetition penalty (1 is off).
    pub repetition_penalty: Option<f32>,
    /// Same seed, same prompt, same model: same text.
    pub seed: Option<u64>,
    /// Stop strings (not included in the output).
    pub stop: Option<Vec<String>>,
    /// Keep going past the model's end-of-sequence tokens, to exactly
    /// `max_tokens` (benchmarks).
    pub ignore_eos: bool,
}

/// Tokens a generation makes when neither the request nor the model says.
pub const DEFAULT_MAX_TOKENS: usize = 256;

impl GenerationOptions {
    /// The sampling parameters: the request's settings over the model's
    /// defaults over the engine's.
    ///
    /// # Errors
    /// When the result is not a valid set of parameters.
    pub fn resolve(&self, defaults: &Defaults) -> Result<SamplingParams> {
        let max_tokens = self
            .max_tokens
            .or(defaults.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS);
        let mut p = SamplingParams::greedy(max_tokens);
        p.temperature = self.temperature.or(defaults.temperature).unwrap_or(0.0);
        p.top_p = self.top_p.or(defaults.top_p);
        p.top_k = self.top_k.or(defaults.top_k);
        p.repetition_penalty = self
            .repetition_penalty
            .or(defaults.repetition_penalty)
            .unwrap_or(1.0);
        p.seed = self.seed.or(defaults.seed).unwrap_or(0);
        p.stop = self
            .stop
            .clone()
            .or_else(|| defaults.stop.clone())
            .unwrap_or_default();
        p.ignore_eos = self.ignore_eos;
        p.validate()
            .map_err(|e| EngineError::from_text("(request)", &e))?;
        Ok(p)
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Task {
    /// Continue a prompt (text, tokens or a chat) on a text-generation
    /// model.
    Generate {
        /// What to continue.
        prompt: Prompt,
        /// How.
        options: GenerationOptions,
    },
    /// Embed each input on an embedding model.
    Embed {
        /// The texts, one vector each.
        inputs: Vec<String>,
    },
    /// Run image operations in order on an image-processing model.
    ProcessImage {
        /// The picture.
        image: DynamicImage,
        /// What to do to it, in order.
        ops: Vec<ImageOp>,
    },
    /// Generate images on a diffusion model: from noise, from a picture, or
    /// inpainting, as `input` says.
    #[cfg(feature = "diffusion")]
    Image {
        /// What to draw.
        prompt: String,
        /// What to start from.
        input: ImageInput,
        /// How.
        options: ImageOptions,
    },
}

impl Task {
    /// What the task is called in errors and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Generate { .. } => "generation",
            Task::Embed { .. } => "embedding",
            Task::ProcessImage { .. } => "image-processing",
            #[cfg(feature = "diffusion")]
            Task::Image { input, .. } => input.kind().as_str(),
        }
    }

    /// The model kind that serves it.
    pub fn kind(&self) -> ModelKind {
        match self {
            Task::Generate { .. } => ModelKind::TextGeneration,
            Task::Embed { .. } => ModelKind::Embedding,
            Task::ProcessImage { .. } => ModelKind::ImageProcessing,
            #[cfg(feature = "diffusion")]
            Task::Image { input, .. } => input.kind(),
        }
    }
}

/// One request to the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The registered model that serves it.
    pub model: String,
    /// What it asks for.
    pub task: Task,
    /// Its priority; `None` takes the model's.
    pub priority: Option<Priority>,
    /// How long it may wait before starting; past it, it ends with
    /// [`EngineError::TimedOut`] without running.
    pub timeout: Option<Duration>,
    /// An id from outside (an HTTP request id); a fresh one by default.
    pub id: Option<RequestId>,
}

impl Request {
    /// A request of `task` on `model` with the model's priority.
    pub fn new(model: impl Into<String>, task: Task) -> Self {
        Self {
            model: model.into(),
            task,
            priority: None,
            timeout: None,
            id: None,
        }
    }

    /// A chat turn: `messages` rendered with the model's template.
    pub fn chat(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        Self::new(
            model,
            Task::Generate {
                prompt: Prompt::Chat(messages),
                options: GenerationOptions::default(),
            },
        )
    }

    /// A plain-text completion.
    pub fn complete(model: impl Into<String>, text: impl Into<String>) -> Self {
        Self::new(
            model,
            Task::Generate {
                prompt: Prompt::Text(text.into()),
                options: GenerationOptions::default(),
            },
        )
    }

    /// Embeddings of `inputs`.
    pub fn embed(model: impl Into<String>, inputs: Vec<String>) -> Self {
        Self::new(model, Task::Embed { inputs })
    }

    /// `ops` run in order on `image`.
    pub fn process_image(model: impl Into<String>, image: DynamicImage, ops: Vec<ImageOp>) -> Self {
        Self::new(model, Task::ProcessImage { image, ops })
    }

    /// Text-to-image for `prompt` with the model's settings.
    #[cfg(feature = "diffusion")]
    pub fn image(model: impl Into<String>, prompt: impl Into<String>) -> Self {
        Self::new(
            model,
            Task::Image {
                prompt: prompt.into(),
                input: ImageInput::Noise,
                options: ImageOptions::default(),
            },
        )
    }

    /// Image-to-image (`ImageInput::Image`) or inpainting
    /// (`ImageInput::Inpaint`) for `prompt`.
    #[cfg(feature = "diffusion")]
    pub fn image_from(
        model: impl Into<String>,
        prompt: impl Into<String>,
        input: ImageInput,
    ) -> Self {
        Self::new(
            model,
            Task::Image {
                prompt: prompt.into(),
                input,
                options: ImageOptions::default(),
            },
        )
    }

    /// With image options (no effect on other tasks).
    #[cfg(feature = "diffusion")]
    pub fn with_image_options(mut self, new: ImageOptions) -> Self {
        if let Task::Image { options, .. } = &mut self.task {
            *options = new;
        }
        self
    }

    /// With generation options (no effect on other tasks).
    pub fn with_options(mut self, new: GenerationOptions) -> Self {
        if let Task::Generate { options, .. } = &mut self.task {
            *options = new;
        }
        self
    }

    /// With a priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// With a timeout before starting.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// With an id chosen by the caller.
    pub fn with_id(mut self, id: RequestId) -> Self {
        self.id = Some(id);
        self
    }
}

/// An embedding request's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the model read over all inputs (special tokens included,
    /// after truncation to the model's limit).
    pub prompt_tokens: usize,
}

/// What a finished request gives.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Response {
    /// A whole generation.
    Completion(Completion),
    /// One vector per input, in input order, and the tokens read.
    Embeddings(Embeddings),
    /// A processed image.
    Image(DynamicImage),
    /// Generated images with their seeds, in order.
    #[cfg(feature = "diffusion")]
    Images(Vec<switchyard_diffusion::GeneratedImage>),
}

impl Response {
    /// The completion, if this is one.
    pub fn into_completion(self) -> Option<Completion> {
        match self {
            Response::Completion(c) => Some(c),
            _ => None,
        }
    }

    /// The vectors, if these are embeddings.
    pub fn into_embeddings(self) -> Option<Vec<Vec<f32>>> {
        self.into_embeddings_with_usage().map(|e| e.vectors)
    }

    /// The vectors and the tokens read, if these are embeddings.
    pub fn into_embeddings_with_usage(self) -> Option<Embeddings> {
        match self {
            Response::Embeddings(e) => Some(e),
            _ => None,
        }
    }

    /// The processed image, if this is one.
    pub fn into_image(self) -> Option<DynamicImage> {
        match self {
            Response::Image(i) => Some(i),
            _ => None,
        }
    }

    /// The generated images, if these are.
    #[cfg(feature = "diffusion")]
    pub fn into_images(self) -> Option<Vec<switchyard_diffusion::GeneratedImage>> {
        match self {
            Response::Images(i) => Some(i),
            _ => None,
        }
    }
}
