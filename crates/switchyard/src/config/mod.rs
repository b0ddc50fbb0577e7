//! The model registry: which models the engine serves, read from a
//! `models.json` or `models.toml` file (or built in code).
//!
//! ```toml
//! [[models]]
//! id = "smollm2"                      # what requests name
//! kind = "text-generation"            # see ModelKind
//! path = "models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf"  # relative to this file
//! devices = ["cpu"]                   # default ["cpu"]; several = replicas
//! replicas = 1                        # copies on each device (default 1)
//! balance = "least-loaded"            # or "round-robin", "fastest"
//! priority = "high"                   # default for its requests
//! max_batch_size = 16
//! keep_alive_secs = 300               # unload after 5 idle minutes
//! defaults = { max_tokens = 256, temperature = 0.7 }
//!
//! [[models]]
//! id = "minilm"
//! kind = "embedding"
//! hf_repo = "sentence-transformers/all-MiniLM-L6-v2"  # from the hf-hub cache
//! ```
//!
//! The JSON form is the same document: `{"models": [{"id": ...}, ...]}`.
//! Every mistake is a [`ConfigError`] naming the file, the model and the
//! field. A `[server]` table may sit beside the models: the registry
//! ignores it and [`server_section`] hands it to the program that serves
//! the file (switchyard-server reads its address and request limits
//! there).

mod parse;
mod source;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use switchyard_core::{DeviceId, Priority};

pub use source::{ModelSource, hf_cache_dir};

/// What a model does, and so which requests it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelKind {
    /// Chat and completion on a Llama-family GGUF or safetensors model.
    TextGeneration,
    /// Sentence embeddings (a sentence-transformers folder).
    Embedding,
    /// Stable Diffusion text-to-image (a diffusers folder).
    TextToImage,
    /// Stable Diffusion image-to-image.
    ImageToImage,
    /// Stable Diffusion inpainting.
    Inpainting,
    /// Image operations (resize, crop, pad, upscale) with no weights.
    ImageProcessing,
    /// Sequence-to-sequence text (T5); recognised, not served yet.
    TextToText,
    /// Captioning (BLIP); recognised, not served yet.
    ImageToText,
}

impl ModelKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [ModelKind; 8] = [
        ModelKind::TextGeneration,
        ModelKind::Embedding,
        ModelKind::TextToImage,
        ModelKind::ImageToImage,
        ModelKind::Inpainting,
        ModelKind::ImageProcessing,
        ModelKind::TextToText,
        ModelKind::ImageToText,
    ];

    /// The name config files use.
    pub const fn as_str(self) -> &'static str {
        match self {
            ModelKind::TextGeneration => "text-generation",
            ModelKind::Embedding => "embedding",
            ModelKind::TextToImage => "text-to-image",
            ModelKind::ImageToImage => "image-to-image",
            ModelKind::Inpainting => "inpainting",
            ModelKind::ImageProcessing => "image-processing",
            ModelKind::TextToText => "text-to-text",
            ModelKind::ImageToText => "image-to-text",
        }
    }

    /// Whether the kind runs a diffusion pipeline.
    pub const fn is_diffusion(self) -> bool {
        matches!(
            self,
            ModelKind::TextToImage | ModelKind::ImageToImage | ModelKind::Inpainting
        )
    }

    /// Whether the kind reads weights (all but image processing).
    pub const fn has_weights(self) -> bool {
        !matches!(self, ModelKind::ImageProcessing)
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.trim().to_ascii_lowercase().replace('_', "-");
        ModelKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<_> = ModelKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown kind {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// The element type weights are computed in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum WeightDtype {
    /// 32-bit floats (the only choice for quantized GGUF on the CPU).
    #[default]
    F32,
    /// 16-bit floats.
    F16,
    /// bfloat16.
    Bf16,
}

impl WeightDtype {
    /// The name config files use.
    pub const fn as_str(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
        }
    }
}

impl FromStr for WeightDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(WeightDtype::F32),
            "f16" | "float16" | "half" => Ok(WeightDtype::F16),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            _ => Err(format!("unknown dtype {s:?}; expected f32, f16 or bf16")),
        }
    }
}

/// How requests are spread over a model's replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Balance {
    /// Each replica in turn.
    RoundRobin,
    /// The replica with the least work dispatched and not yet ended.
    #[default]
    LeastLoaded,
    /// The replica expected to finish the request first: its outstanding
    /// work times its measured seconds per unit (replicas not measured yet
    /// are tried first).
    Fastest,
}

impl Balance {
    /// The name config files use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastLoaded => "least-loaded",
            Balance::Fastest => "fastest",
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Balance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "round-robin" => Ok(Balance::RoundRobin),
            "least-loaded" => Ok(Balance::LeastLoaded),
            "fastest" | "measured-speed" => Ok(Balance::Fastest),
            _ => Err(format!(
                "unknown balance {s:?}; expected round-robin, least-loaded or fastest"
            )),
        }
    }
}

/// Parameters a model's requests get when they leave them out. Each field
/// applies to some kinds only; the registry refuses the others.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Defaults {
    /// Generation: most new tokens.
    pub max_tokens: Option<usize>,
    /// Generation: sampling temperature (0 is greedy).
    pub temperature: Option<f32>,
    /// Generation: nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Generation: keep the `k` likeliest tokens.
    pub top_k: Option<usize>,
    /// Generation: CTRL repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// Generation and images: the seed of requests that give none.
    pub seed: Option<u64>,
    /// Generation: stop strings.
    pub stop: Option<Vec<String>>,
    /// Embeddings: scale vectors to unit length.
    pub normalize: Option<bool>,
    /// Images: denoising steps.
    pub steps: Option<usize>,
    /// Images: classifier-free guidance scale.
    pub guidance_scale: Option<f64>,
    /// Images: width in pixels (a multiple of 8).
    pub width: Option<usize>,
    /// Images: height in pixels (a multiple of 8).
    pub height: Option<usize>,
    /// Image-to-image: how much of the input is noised away (0..=1).
    pub strength: Option<f64>,
}

/// One model the engine may serve.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The name requests use.
    pub id: String,
    /// What it does.
    pub kind: ModelKind,
    /// Where its files are.
    pub source: ModelSource,
    /// Devices it runs on; never empty, no device twice.
    pub devices: Vec<DeviceId>,
    /// Replicas on each device (1 to 64; default 1): several copies on one
    /// device serve requests side by side.
    pub replicas: usize,
    /// How requests are spread over the replicas.
    pub balance: Balance,
    /// Compute dtype.
    pub dtype: WeightDtype,
    /// Priority of requests that name none.
    pub priority: Priority,
    /// Most requests per batch (generation: most sequences running).
    pub max_batch_size: usize,
    /// Bytes a loaded replica takes, when known ahead (else measured after
    /// loading, estimated from file sizes before).
    pub memory_bytes: Option<u64>,
    /// Unload after this long unused; `None` keeps it loaded.
    pub keep_alive: Option<Duration>,
    /// Parameters its requests get by default.
    pub defaults: Defaults,
}

impl ModelSpec {
    /// A spec with the defaults: one CPU replica (least-loaded balance), f32, Normal priority,
    /// batches of up to 16, kept loaded.
    pub fn new(id: impl Into<String>, kind: ModelKind, source: ModelSource) -> Self {
        Self {
            id: id.into(),
            kind,
            source,
            devices: vec![DeviceId::Cpu],
            replicas: 1,
            balance: Balance::default(),
            dtype: WeightDtype::F32,
            priority: Priority::Normal,
            max_batch_size: 16,
            memory_bytes: None,
            keep_alive: None,
            defaults: Defaults::default(),
        }
    }
}

/// A problem in a model configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ConfigError {
    /// The file read, when the config came from one.
    pub file: Option<PathBuf>,
    /// The model entry (its `id`, or `#N` for an entry without one).
    pub model: Option<String>,
    /// The field, dotted for nested ones (`defaults.steps`).
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self {
            file: None,
            model: None,
            field: None,
            reason: reason.into(),
        }
    }

    pub(crate) fn in_model(mut self, model: &str) -> Self {
        self.model.get_or_insert_with(|| model.to_owned());
        self
    }

    pub(crate) fn at_field(mut self, field: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(inner) => format!("{field}.{inner}"),
            None => field.to_owned(),
        });
        self
    }

    fn in_file(mut self, file: &Path) -> Self {
        self.file.get_or_insert_with(|| file.to_owned());
        self
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(file) = &self.file {
            parts.push(file.display().to_string());
        }
        if let Some(model) = &self.model {
            parts.push(format!("model `{model}`"));
        }
        if let Some(field) = &self.field {
            parts.push(format!("field `{field}`"));
        }
        parts.push(self.reason.clone());
        parts.join(": ")
    }
}

/// The format of a config document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    /// `models.json`.
    Json,
    /// `models.toml`.
    Toml,
}

/// The models an engine serves, in the order they were listed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    models: Vec<ModelSpec>,
}

/// Config files larger than this are refused before parsing.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `path` (`.json` or `.toml`, by extension); relative model
    /// paths are taken from the file's folder.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file (and the model and field where the
    /// problem is in one).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let (text, format) = read_file(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, format, Some(base)).map_err(|e| e.in_file(path))
    }

    /// Parses a config document; relative paths are resolved against
    /// `base` when given (else kept as written).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the model and field.
    pub fn parse(
        text: &str,
        format: ConfigFormat,
        base: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let value = parse::document(text, format)?;
        let models = parse::models(&value, base)?;
        let mut registry = Registry::new();
        for spec in models {
            registry.add(spec)?;
        }
        Ok(registry)
    }

    /// Adds a model.
    ///
    /// # Errors
    /// When its id is taken, empty or has characters other than letters,
    /// digits and `-_.:/`, or its settings contradict each other.
    pub fn add(&mut self, spec: ModelSpec) -> Result<(), ConfigError> {
        parse::check_spec(&spec).map_err(|e| e.in_model(&spec.id))?;
        if self.get(&spec.id).is_some() {
            return Err(ConfigError::new("a model with this id is listed twice")
                .in_model(&spec.id)
                .at_field("id"));
        }
        self.models.push(spec);
        Ok(())
    }

    /// The model named `id`.
    pub fn get(&self, id: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.id == id)
    }

    /// Every model, in listing order.
    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }

    /// How many models are listed.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

/// Reads config file `path`: its text and format (by extension), refusing
/// files over [`MAX_CONFIG_BYTES`].
fn read_file(path: &Path) -> Result<(String, ConfigFormat), ConfigError> {
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("json") => ConfigFormat::Json,
        Some(e) if e.eq_ignore_ascii_case("toml") => ConfigFormat::Toml,
        _ => {
            return Err(ConfigError::new("the file name must end in .json or .toml").in_file(path));
        }
    };
    let read = || -> Result<String, ConfigError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| ConfigError::new(format!("cannot read it: {e}")))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::new(format!(
                "{} bytes is more than the {MAX_CONFIG_BYTES} a config may have",
                meta.len()
            )));
        }
        std::fs::read_to_string(path).map_err(|e| ConfigError::new(format!("cannot read it: {e}")))
    };
    let text = read().map_err(|e| e.in_file(path))?;
    Ok((text, format))
}

/// The `[server]` table of config file `path` as JSON, for the program
/// that serves the file's models (switchyard-server reads its limits
/// there); `None` when the file has none. The registry itself ignores the
/// table.
///
/// # Errors
/// A [`ConfigError`] naming the file when it cannot be read or parsed, or
/// when `server` is not a table.
pub fn server_section(path: &Path) -> Result<Option<serde_json::Value>, ConfigError> {
    let (text, format) = read_file(path)?;
    let doc = parse::document(&text, format).map_err(|e| e.in_file(path))?;
    match doc.get(parse::SERVER_SECTION) {
        None => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => Ok(Some(v.clone())),
        Some(_) => Err(ConfigError::new("must be a table")
            .at_field(parse::SERVER_SECTION)
            .in_file(path)),
    }
}
