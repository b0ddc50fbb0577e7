//! Tiny models with real architectures and random weights, in real formats.
//!
//! Each writer takes a seed; the same seed always gives byte-identical files.
//! Weights are drawn from a normal distribution (std 0.02, like the models'
//! own initialisers) by a small self-contained generator, so the files do not
//! change when a dependency's random number generator does.
//!
//! | writer | files | read back by |
//! |---|---|---|
//! | [`write_llama_safetensors`] | `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` | candle-transformers `llama`, tokenizers |
//! | [`write_llama_gguf`] | one `.gguf` (Q4_0 / Q8_0 / F32 weights, byte-level BPE tokenizer and chat template in metadata) | candle `gguf_file`, `quantized_llama` |
//! | [`write_stable_diffusion`] | diffusers folder: `model_index.json`, `unet/`, `vae/` (`config.json` + `diffusion_pytorch_model.safetensors`), `text_encoder/` (`config.json` + `model.safetensors`), `tokenizer/` (`vocab.json`, `merges.txt`, ...), `scheduler/scheduler_config.json`; for SDXL ([`TinyStableDiffusion::sdxl`]) also `text_encoder_2/` (with `text_projection`) and `tokenizer_2/` | candle-transformers `stable_diffusion` UNet and VAE, switchyard-diffusion |
//! | [`write_unet`] | a `unet/` folder alone, SD or SDXL shaped ([`TinyTextTime`]) | switchyard-diffusion's UNet |
//! | [`write_controlnet`] | diffusers ControlNet folder for a tiny pipeline: `config.json` + `diffusion_pytorch_model.safetensors` | switchyard-diffusion |
//! | [`write_text_models`] | a tiny Llama `.gguf` and a tiny BERT folder side by side | the engine's text pipelines |
//! | [`write_bert`] | sentence-transformers folder: `config.json`, `model.safetensors`, `tokenizer.json`, `modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json` | candle-transformers `bert`, tokenizers |
//!
//! The GGUF writer permutes the query and key projections the way llama.cpp's
//! converter does, so a GGUF and a safetensors model written with the same seed
//! are the same model.

mod bert;
mod clip_tokenizer;
mod controlnet;
mod diffusion;
mod llama;
mod sdxl;
mod tokenizer;

use std::io;
use std::path::{Path, PathBuf};

pub use bert::{TinyBert, write_bert};
pub use clip_tokenizer::TinyClipBpe;
pub use controlnet::{TinyControlNet, write_controlnet};
pub use diffusion::{
    TinySchedulerSpec, TinyStableDiffusion, TinyTextTime, write_stable_diffusion, write_unet,
};
pub use llama::{GgufQuant, LlamaFiles, TinyLlama, write_llama_gguf, write_llama_safetensors};
pub use sdxl::TinyTextEncoder2;
pub use switchyard_core::SplitMix64;
pub use tokenizer::{CHAT_TEMPLATE, TinyBpe, TinyWordPiece};

/// Errors from writing tiny models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TinyError {
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Building or serialising a tensor failed.
    #[error("tensor {name}: {source}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// candle's error.
        source: candle_core::Error,
    },
    /// The requested shape cannot be built (e.g. a dimension not divisible by the heads).
    #[error("invalid tiny model: {0}")]
    InvalidSpec(String),
}

/// Result with [`TinyError`].
pub type Result<T, E = TinyError> = std::result::Result<T, E>;

/// Where [`write_text_models`] put its two models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextModels {
    /// The tiny Llama: one `.gguf` file with Q8_0 weights.
    pub llama: PathBuf,
    /// The tiny BERT: a sentence-transformers folder.
    pub bert: PathBuf,
}

/// A tiny generation model (`tiny.gguf`, [`TinyLlama::default`], Q8_0) and
/// a tiny embedding model (`bert/`, [`TinyBert::default`]) in `dir`, both
/// from `seed`: the pair an engine serving text needs.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let models = switchyard_testkit::tiny::write_text_models(dir.path(), 7)?;
/// assert!(models.llama.is_file() && models.bert.join("config.json").is_file());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// When a file cannot be written.
pub fn write_text_models(dir: &Path, seed: u64) -> Result<TextModels> {
    let models = TextModels {
        llama: dir.join("tiny.gguf"),
        bert: dir.join("bert"),
    };
    write_llama_gguf(&models.llama, &TinyLlama::default(), GgufQuant::Q8_0, seed)?;
    write_bert(&models.bert, &TinyBert::default(), seed)?;
    Ok(models)
}

fn ensure_parent(path: &Path) -> Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::create_dir_all(parent).map_err(|source| TinyError::Io {
            path: parent.to_path_buf(),
            source,
        }),
        None => Ok(()),
    }
}

fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    ensure_parent(path)?;
    std::fs::write(path, contents).map_err(|source| TinyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TinyError::Io {
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    write_file(path, text)
}

fn tensor_err(name: &str) -> impl FnOnce(candle_core::Error) -> TinyError + '_ {
    move |source| TinyError::Tensor {
        name: name.to_owned(),
        source,
    }
}
