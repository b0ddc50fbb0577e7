//! The shape of a Llama-family model, from GGUF metadata or a Hugging Face
//! `config.json`.

use serde::Deserialize;

use crate::gguf_meta::GgufMetadata;
use crate::{Result, TextError};

/// Which variant of the architecture (they differ in small ways).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlamaFlavor {
    /// Llama 2/3, SmolLM, TinyLlama, Mistral: no biases.
    Llama,
    /// Qwen2: biases on the query, key and value projections.
    Qwen2,
}

/// Dimensions and constants of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// The variant.
    pub flavor: LlamaFlavor,
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Feed-forward (SwiGLU) inner size.
    pub intermediate: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest context trained for.
    pub context: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Whether the output head reuses the token embedding.
    pub tied_embeddings: bool,
    /// How RoPE frequencies are stretched for long contexts.
    pub rope_scaling: RopeScaling,
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RopeScaling {
    /// Frequencies as trained.
    #[default]
    None,
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        /// The stretch.
        factor: f32,
    },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a
    /// smooth blend between.
    Llama3 {
        /// The stretch of low frequencies.
        factor: f32,
        /// Wavelengths above `original_context / low_freq_factor` are stretched.
        low_freq_factor: f32,
        /// Wavelengths below `original_context / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// The context trained for before the stretch.
        original_context: usize,
    },
}

impl RopeScaling {
    /// Apply to the inverse frequencies `inv_freq`.
    pub fn apply(&self, inv_freq: &mut [f32]) {
        match *self {
            Self::None => {}
            Self::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => {
                let old = original_context as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in inv_freq {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
    }

    fn from_hf(v: Option<&serde_json::Value>) -> Result<Self> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(Self::None);
        };
        let kind = v
            .get("rope_type")
            .or_else(|| v.get("type"))
            .and_then(|k| k.as_str())
            .unwrap_or("default");
        let num = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .map(|x| x as f32)
        };
        let bad = |reason: String| TextError::InvalidInput {
            field: "rope_scaling",
            reason,
        };
        match kind {
            "default" => Ok(Self::None),
            "linear" => Ok(Self::Linear {
                factor: num("factor").ok_or_else(|| bad("linear without a factor".into()))?,
            }),
            "llama3" => Ok(Self::Llama3 {
                factor: num("factor").ok_or_else(|| bad("llama3 without factor".into()))?,
                low_freq_factor: num("low_freq_factor").unwrap_or(1.0),
                high_freq_factor: num("high_freq_factor").unwrap_or(4.0),
                original_context: v
                    .get("original_max_position_embeddings")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(8192) as usize,
            }),
            other => Err(bad(format!(
                "{other:?} is not supported (default, linear, llama3 are)"
            ))),
        }
    }
}

fn missing(key: &str) -> TextError {
    TextError::Gguf(format!("{key} missing"))
}

impl LlamaConfig {
    /// Read the `{arch}.*` keys of a GGUF file (`llama`, `qwen2`).
    pub fn from_gguf(meta: &GgufMetadata) -> Result<Self> {
        let arch = meta
            .str("general.architecture")
            .ok_or_else(|| missing("general.architecture"))?;
        let flavor = match arch {
            "llama" | "mistral" => LlamaFlavor::Llama,
            "qwen2" => LlamaFlavor::Qwen2,
            other => {
                return Err(TextError::ModelLoad {
                    model: std::path::PathBuf::from(other),
                    reason: format!("architecture {other:?} is not Llama-family"),
                });
            }
        };
        let uint = |k: &str| -> Result<usize> {
            let key = format!("{arch}.{k}");
            meta.u64(&key)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| missing(&key))
        };
        let float = |k: &str, default: f64| {
            meta.get(&format!("{arch}.{k}"))
                .and_then(crate::MetaValue::as_f64)
                .unwrap_or(default)
        };
        let hidden = uint("embedding_length")?;
        let heads = uint("attention.head_count")?;
        let kv_heads = uint("attention.head_count_kv").unwrap_or(heads);
        let head_dim = uint("rope.dimension_count").unwrap_or(hidden / heads.max(1));
        let vocab = match uint("vocab_size") {
            Ok(v) => v,
            Err(_) => meta
                .get("tokenizer.ggml.tokens")
                .and_then(crate::MetaValue::as_array)
                .map(<[_]>::len)
                .ok_or_else(|| missing(&format!("{arch}.vocab_size")))?,
        };
        let config = Self {
            flavor,
            layers: uint("block_count")?,
            hidden,
            intermediate: uint("feed_forward_length")?,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context: uint("context_length").unwrap_or(4096),
            rms_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta: float("rope.freq_base", 10_000.0),
            rope_scaling: match meta.str(&format!("{arch}.rope.scaling.type")) {
                None | Some("none") => RopeScaling::None,
                Some("linear") => RopeScaling::Linear {
                    factor: float("rope.scaling.factor", 1.0) as f32,
                },
                Some(other) => {
                    return Err(TextError::InvalidInput {
                        field: "rope scaling",
                        reason: format!("{other:?} is not supported (none, linear are)"),
                    });
                }
            },
            // GGUF files without an output tensor tie it; the loader decides.
            tied_embeddings: false,
        };
        config.validate()?;
        Ok(config)
    }

    /// Read a Hugging Face `config.json` (LlamaForCausalLM, MistralForCausalLM,
    /// Qwen2ForCausalLM).
    pub fn from_hf_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Hf {
            #[serde(default)]
            model_type: String,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            vocab_size: usize,
            #[serde(default = "default_context")]
            max_position_embeddings: usize,
            #[serde(default = "default_eps")]
            rms_norm_eps: f64,
            #[serde(default = "default_theta")]
            rope_theta: f64,
            #[serde(default)]
            tie_word_embeddings: bool,
            #[serde(default)]
            rope_scaling: Option<serde_json::Value>,
        }
        fn default_context() -> usize {
            4096
        }
        fn default_eps() -> f64 {
            1e-5
        }
        fn default_theta() -> f64 {
            10_000.0
        }
        let hf: Hf = serde_json::from_str(text).map_err(|e| TextError::InvalidInput {
            field: "config.json",
            reason: e.to_string(),
        })?;
        let flavor = if hf.model_type == "qwen2" {
            LlamaFlavor::Qwen2
        } else {
            LlamaFlavor::Llama
        };
        let config = Self {
            flavor,
            layers: hf.num_hidden_layers,
            hidden: hf.hidden_size,
            intermediate: hf.intermediate_size,
            heads: hf.num_attention_heads,
            kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            vocab: hf.vocab_size,
            context: hf.max_position_embeddings,
            rms_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta,
            tied_embeddings: hf.tie_word_embeddings,
            rope_scaling: RopeScaling::from_hf(hf.rope_scaling.as_ref())?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Check the dimensions fit together.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| TextError::InvalidInput {
            field: "model config",
            reason,
        };
        if self.layers == 0 || self.hidden == 0 || self.heads == 0 || self.vocab == 0 {
            return Err(bad(
                "layers, hidden size, heads and vocabulary must be > 0".into()
            ));
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(bad(format!(
                "{} query heads do not group over {} key/value heads",
                self.heads, self.kv_heads
            )));
        }
        if let RopeScaling::Linear { factor } | RopeScaling::Llama3 { factor, .. } =
            self.rope_scaling
            && !(factor.is_finite() && factor > 0.0)
        {
            return Err(bad(format!("rope scaling factor {factor} is not > 0")));
        }
        if let RopeScaling::Llama3 {
            low_freq_factor,
            high_freq_factor,
            ..
        } = self.rope_scaling
            && high_freq_factor.partial_cmp(&low_freq_factor) != Some(std::cmp::Ordering::Greater)
        {
            return Err(bad(
                "llama3 rope scaling needs high_freq_factor > low_freq_factor".into(),
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "head size {} must be even (RoPE)",
                self.head_dim
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetaValue;

    fn smollm2_like() -> GgufMetadata {
        let mut m = GgufMetadata::default();
        let mut put = |k: &str, v: MetaValue| {
            m.values.insert(k.to_owned(), v);
        };
        put("general.architecture", MetaValue::Str("llama".into()));
        for (k, v) in [
            ("llama.block_count", 30),
            ("llama.context_length", 8192),
            ("llama.embedding_length", 576),
            ("llama.feed_forward_length", 1536),
            ("llama.attention.head_count", 9),
            ("llama.attention.head_count_kv", 3),
            ("llama.vocab_size", 49152),
            ("llama.rope.dimension_count", 64),
        ] {
            put(k, MetaValue::Uint(v));
        }
        put("llama.rope.freq_base", MetaValue::Float(100_000.0));
        put(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::Float(1e-5),
        );
        m
    }

    #[test]
    fn smollm2_metadata_gives_its_shape() {
        let c = LlamaConfig::from_gguf(&smollm2_like()).unwrap();
        assert_eq!(
            (c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim),
            (30, 576, 9, 3, 64)
        );
        assert_eq!((c.intermediate, c.vocab, c.context), (1536, 49152, 8192));
        assert!((c.rope_theta - 100_000.0).abs() < 1e-6);
        assert_eq!(c.flavor, LlamaFlavor::Llama);
    }

    #[test]
    fn hf_config_json_and_bad_shapes() {
        let c = LlamaConfig::from_hf_json(
            r#"{"model_type":"qwen2","hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
                "vocab_size":100,"tie_word_embeddings":true}"#,
        )
        .unwrap();
        assert_eq!(
            (c.flavor, c.head_dim, c.tied_embeddings),
            (LlamaFlavor::Qwen2, 16, true)
        );
        let mut m = smollm2_like();
        m.values
            .insert("llama.attention.head_count_kv".into(), MetaValue::Uint(4));
        assert!(LlamaConfig::from_gguf(&m).is_err());
        m.values
            .insert("general.architecture".into(), MetaValue::Str("bert".into()));
        assert!(LlamaConfig::from_gguf(&m).is_err());
        assert!(LlamaConfig::from_hf_json("{}").is_err());
    }

    #[test]
    fn rope_scaling_from_config_json() {
        let base = r#""hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
                "num_attention_heads":4,"vocab_size":100"#;
        let with = |scaling: &str| {
            LlamaConfig::from_hf_json(&format!("{{{base},\"rope_scaling\":{scaling}}}"))
        };
        assert_eq!(with("null").unwrap().rope_scaling, RopeScaling::None);
        assert_eq!(
            with(r#"{"type":"linear","factor":2.0}"#)
                .unwrap()
                .rope_scaling,
            RopeScaling::Linear { factor: 2.0 }
        );
        let l3 = with(
            r#"{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
                "high_freq_factor":4.0,"original_max_position_embeddings":8192}"#,
        )
        .unwrap()
        .rope_scaling;
        // Llama 3.1's numbers: the highest frequency is kept, the lowest
        // divided by 8, one in the band blended.
        let mut f = vec![1.0f32, 2.0 * std::f32::consts::PI / 4096.0, 1e-5];
        l3.apply(&mut f);
        assert_eq!(f[0], 1.0);
        assert!((f[2] - 1e-5 / 8.0).abs() < 1e-12);
        let w = 2.0 * std::f32::consts::PI / 4096.0;
        let smooth = (8192.0 / 4096.0 - 1.0) / 3.0;
        assert!((f[1] - ((1.0 - smooth) * w / 8.0 + smooth * w)).abs() < 1e-9);
        assert!(with(r#"{"type":"yarn","factor":4.0}"#).is_err());
        assert!(with(r#"{"type":"linear","factor":0.0}"#).is_err());
    }
}
