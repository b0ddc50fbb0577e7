//! A BERT encoder run one layer at a time, so that a long embedding batch
//! can pause between layers for more urgent work on the device.
//!
//! candle's `BertModel` runs its whole stack in one call. The layers are
//! candle's own (`BertEncoder` and its public `layers`); this module owns
//! only the embedding sum, the attention mask and the loop, which calls a
//! hook between layers.

use candle_core::{DType, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder, embedding, layer_norm};
use candle_transformers::models::bert::{BertEncoder, Config as BertConfig};

/// Word, position and token-type embeddings summed and normalised, as in
/// Hugging Face's `BertEmbeddings` (dropout is a no-op at inference).
struct BertInputEmbeddings {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    norm: LayerNorm,
}

impl BertInputEmbeddings {
    fn load(vb: VarBuilder<'_>, config: &BertConfig) -> candle_core::Result<Self> {
        Ok(Self {
            words: embedding(
                config.vocab_size,
                config.hidden_size,
                vb.pp("word_embeddings"),
            )?,
            positions: embedding(
                config.max_position_embeddings,
                config.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_types: embedding(
                config.type_vocab_size,
                config.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            norm: layer_norm(
                config.hidden_size,
                config.layer_norm_eps,
                vb.pp("LayerNorm"),
            )?,
        })
    }

    fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_, seq_len) = ids.dims2()?;
        let end = u32::try_from(seq_len).map_err(candle_core::Error::wrap)?;
        let positions = Tensor::arange(0u32, end, ids.device())?;
        let summed = (self.words.forward(ids)? + self.token_types.forward(type_ids)?)?
            .broadcast_add(&self.positions.forward(&positions)?)?;
        self.norm.forward(&summed)
    }
}

/// A BERT encoder (embeddings and transformer layers, no pooler) whose
/// forward pass calls a hook between layers.
pub(crate) struct LayeredBert {
    embeddings: BertInputEmbeddings,
    /// One single-layer candle encoder per layer, in order.
    layers: Vec<BertEncoder>,
}

impl LayeredBert {
    /// Load from a checkpoint's tensors, with or without a `bert.` (or
    /// `{model_type}.`) prefix, as candle's `BertModel::load` does.
    pub(crate) fn load(vb: VarBuilder<'_>, config: &BertConfig) -> candle_core::Result<Self> {
        let root = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else if let Some(prefix) = config
            .model_type
            .as_deref()
            .filter(|p| vb.contains_tensor(&format!("{p}.embeddings.word_embeddings.weight")))
        {
            vb.pp(prefix)
        } else {
            vb
        };
        let embeddings = BertInputEmbeddings::load(root.pp("embeddings"), config)?;
        let mut encoder = BertEncoder::load(root.pp("encoder"), config)?;
        // Emptied first, so each clone copies no layers.
        let all = std::mem::take(&mut encoder.layers);
        let layers = all
            .into_iter()
            .map(|layer| {
                let mut one = encoder.clone();
                one.layers = vec![layer];
                one
            })
            .collect();
        Ok(Self { embeddings, layers })
    }

    /// Hidden states `(batch, seq, hidden)` for `ids` and `type_ids`
    /// `(batch, seq)`, attending only where `mask` `(batch, seq)` is 1.
    /// `between` runs before each layer (it may block, to pause the pass).
    pub(crate) fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
        between: &dyn Fn(),
    ) -> candle_core::Result<Tensor> {
        let mut hidden = self.embeddings.forward(ids, type_ids)?;
        let bias = attention_bias(mask, hidden.dtype())?;
        for layer in &self.layers {
            between();
            hidden = layer.forward(&hidden, &bias)?;
        }
        Ok(hidden)
    }
}

/// `(batch, 1, 1, seq)`: 0 where the mask is 1, the dtype's most negative
/// value where it is 0 (Hugging Face's extended attention mask).
fn attention_bias(mask: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    let mask = mask.unsqueeze(1)?.unsqueeze(1)?.to_dtype(dtype)?;
    let lowest = Tensor::new(f32::MIN, mask.device())?.to_dtype(dtype)?;
    (mask.ones_like()? - &mask)?.broadcast_mul(&lowest)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::cell::Cell;

    use candle_core::Device;
    use candle_transformers::models::bert::BertModel;
    use switchyard_testkit::tiny::{self, TinyBert};

    use super::*;

    fn tiny_bert() -> (tempfile::TempDir, BertConfig, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        tiny::write_bert(dir.path(), &TinyBert::default(), 3).unwrap();
        let config: BertConfig =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        (dir, config, bytes)
    }

    #[test]
    fn matches_candles_bert_and_pauses_before_every_layer() {
        let (_dir, config, bytes) = tiny_bert();
        let vb = || VarBuilder::from_buffered_safetensors(bytes.clone(), DType::F32, &Device::Cpu);
        let ours = LayeredBert::load(vb().unwrap(), &config).unwrap();
        let theirs = BertModel::load(vb().unwrap(), &config).unwrap();

        let ids = Tensor::new(&[[2u32, 7, 9, 11, 3], [2, 5, 3, 0, 0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 0, 0]], &Device::Cpu).unwrap();
        let types = ids.zeros_like().unwrap();
        let pauses = Cell::new(0);
        let a = ours
            .forward(&ids, &types, &mask, &|| pauses.set(pauses.get() + 1))
            .unwrap();
        let b = theirs.forward(&ids, &types, Some(&mask)).unwrap();
        assert_eq!(pauses.get(), config.num_hidden_layers);
        assert_eq!(a.dims(), b.dims());
        let diff: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-5, "largest difference {diff}");
    }

    #[test]
    fn loads_checkpoints_with_a_bert_prefix() {
        let (_dir, config, bytes) = tiny_bert();
        let plain = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        let prefixed = plain
            .iter()
            .map(|(name, t)| (format!("bert.{name}"), t.clone()))
            .collect();
        let a = LayeredBert::load(
            VarBuilder::from_tensors(plain, DType::F32, &Device::Cpu),
            &config,
        )
        .unwrap();
        let b = LayeredBert::load(
            VarBuilder::from_tensors(prefixed, DType::F32, &Device::Cpu),
            &config,
        )
        .unwrap();
        let ids = Tensor::new(&[[2u32, 9, 3]], &Device::Cpu).unwrap();
        let (types, mask) = (ids.zeros_like().unwrap(), ids.ones_like().unwrap());
        let a = a.forward(&ids, &types, &mask, &|| {}).unwrap();
        let b = b.forward(&ids, &types, &mask, &|| {}).unwrap();
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_missing_tensor_is_an_error() {
        let (_dir, config, _) = tiny_bert();
        let empty = VarBuilder::from_tensors(Default::default(), DType::F32, &Device::Cpu);
        assert!(LayeredBert::load(empty, &config).is_err());
    }
}
