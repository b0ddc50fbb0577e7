//! The `embed` suite: all-MiniLM-L6-v2 sentences per second through
//! `BertEmbedder` against candle-transformers' BERT called directly, same
//! run, same inputs.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use switchyard::core::DeviceId;
use switchyard::text::{BertEmbedder, Embedder};
use switchyard_testkit::fetch;
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::suites::SuiteResult;
use crate::{Report, median, time_runs};

/// candle-transformers' BERT as a user would call it: the tokenizer pads the
/// batch, one forward, mean pooling over the mask, L2 normalisation.
pub struct DirectBert {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl std::fmt::Debug for DirectBert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectBert").finish_non_exhaustive()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl DirectBert {
    /// Load a sentence-transformers folder the plain way.
    pub fn load(dir: &Path) -> Result<Self, BoxError> {
        let device = Device::Cpu;
        let config: Config =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
        let weights = std::fs::read(dir.join("model.safetensors"))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
        let model = BertModel::load(vb, &config)?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer.with_truncation(Some(TruncationParams {
            max_length: 256,
            ..Default::default()
        }))?;
        Ok(Self {
            model,
            tokenizer,
            device,
        })
    }

    /// Embed `texts` in one padded batch.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BoxError> {
        let enc = self.tokenizer.encode_batch(texts.to_vec(), true)?;
        let rows = |f: fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor, BoxError> {
            let t: Vec<Tensor> = enc
                .iter()
                .map(|e| Tensor::new(f(e), &self.device))
                .collect::<candle_core::Result<_>>()?;
            Ok(Tensor::stack(&t, 0)?)
        };
        let ids = rows(|e| e.get_ids())?;
        let types = rows(|e| e.get_type_ids())?;
        let mask = rows(|e| e.get_attention_mask())?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let pooled = hidden
            .broadcast_mul(&m)?
            .sum(1)?
            .broadcast_div(&m.sum(1)?)?;
        let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
        Ok(pooled.broadcast_div(&norm)?.to_vec2()?)
    }
}

/// About 12 tokens.
pub const SHORT: &str = "The train leaves the yard at dawn with twelve cars.";

/// About 128 tokens.
pub fn long_text() -> String {
    "Switchyard sorts incoming inference requests by model into batches, keeps the right \
     models loaded in the memory it has, and runs them on the devices it is given. "
        .repeat(4)
}

/// `embed`.
pub fn embed() -> SuiteResult {
    let dir = fetch::minilm_dir()?;
    let ours = BertEmbedder::load(&dir, DeviceId::Cpu)?;
    let direct = DirectBert::load(&dir)?;
    let long = long_text();
    let mut report = Report::new("embed");
    report.figure(
        "long_text_tokens",
        ours.token_ids(&long)?.len() as f64,
        "tokens (short text: see short_text_tokens)",
    );
    report.figure(
        "short_text_tokens",
        ours.token_ids(SHORT)?.len() as f64,
        "tokens",
    );
    println!(
        "{:<8} {:>6} {:>12} {:>12} {:>7}",
        "text", "batch", "ours/s", "candle/s", "ratio"
    );
    for (name, text) in [("short", SHORT), ("long", long.as_str())] {
        for batch in [1usize, 8, 32] {
            let texts: Vec<&str> = std::iter::repeat_n(text, batch).collect();
            let runs = if name == "long" && batch == 32 { 5 } else { 11 };
            let mut a: Vec<f64> = time_runs(1, runs, || ours.embed(&texts).map(drop))?
                .iter()
                .map(|d| batch as f64 / d.as_secs_f64())
                .collect();
            let mut b: Vec<f64> = time_runs(1, runs, || direct.embed(&texts).map(drop))?
                .iter()
                .map(|d| batch as f64 / d.as_secs_f64())
                .collect();
            let (a, b) = (median(&mut a), median(&mut b));
            println!("{name:<8} {batch:>6} {a:>12.1} {b:>12.1} {:>7.3}", a / b);
            report.figure(
                &format!("{name}_batch{batch}_sentences_per_sec"),
                a,
                "sentences/s (ours, median)",
            );
            report.figure(
                &format!("{name}_batch{batch}_candle_sentences_per_sec"),
                b,
                "sentences/s (candle-transformers BERT directly, median)",
            );
            if batch == 32 {
                report.goal(
                    &format!("{name}_batch32_vs_candle"),
                    ">= 1.0x of candle-transformers' BERT called directly",
                    a / b,
                    a >= b,
                );
            }
        }
    }
    Ok(report)
}
