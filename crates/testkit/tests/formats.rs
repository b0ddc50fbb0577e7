//! The tiny models load back through candle's and tokenizers' own readers.

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use candle_core::quantized::{GgmlDType, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{bert, llama, quantized_llama};
use switchyard_testkit::tiny::{
    self, GgufQuant, TinyBert, TinyBpe, TinyLlama, TinyWordPiece, write_llama_gguf,
    write_llama_safetensors,
};
use tokenizers::Tokenizer;

const PROMPT: [u32; 6] = [1, 40, 41, 270, 120, 7];

fn safetensors_logits(dir: &Path) -> Vec<f32> {
    let config: llama::LlamaConfig =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let config = config.into_config(false);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).unwrap();
    let model = llama::Llama::load(vb, &config).unwrap();
    let mut cache = llama::Cache::new(true, DType::F32, &config, &Device::Cpu).unwrap();
    let input = Tensor::new(&PROMPT, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&input, 0, &mut cache).unwrap();
    logits.squeeze(0).unwrap().to_vec1().unwrap()
}

fn gguf_logits(path: &Path) -> Vec<f32> {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut model =
        quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let input = Tensor::new(&PROMPT, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&input, 0).unwrap();
    logits.squeeze(0).unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn llama_safetensors_loads_with_candle_llama() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_llama_safetensors(dir.path(), &TinyLlama::default(), 1).unwrap();
    let logits = safetensors_logits(&files.dir);
    assert_eq!(logits.len(), TinyBpe::default().vocab_size());
    assert!(logits.iter().all(|x| x.is_finite()));
    assert!(max_abs_diff(&logits, &vec![0.0; logits.len()]) > 0.0);
}

#[test]
fn llama_half_precision_files_keep_their_dtype() {
    for dtype in [DType::F16, DType::BF16] {
        let dir = tempfile::tempdir().unwrap();
        let spec = TinyLlama {
            dtype,
            tie_word_embeddings: true,
            ..TinyLlama::default()
        };
        let files = write_llama_safetensors(dir.path(), &spec, 3).unwrap();
        let tensors = candle_core::safetensors::load(&files.weights, &Device::Cpu).unwrap();
        assert!(tensors.values().all(|t| t.dtype() == dtype));
        assert!(!tensors.contains_key("lm_head.weight"), "tied embeddings");
        let logits = safetensors_logits(&files.dir);
        assert!(logits.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn gguf_has_real_metadata_and_quantized_tensors() {
    let dir = tempfile::tempdir().unwrap();
    for (quant, ggml) in [
        (GgufQuant::Q4_0, GgmlDType::Q4_0),
        (GgufQuant::Q4_1, GgmlDType::Q4_1),
        (GgufQuant::Q8_0, GgmlDType::Q8_0),
        (GgufQuant::F32, GgmlDType::F32),
    ] {
        let path = dir.path().join(format!("tiny-{quant:?}.gguf"));
        write_llama_gguf(&path, &TinyLlama::default(), quant, 1).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        let md = &content.metadata;
        let text = |k: &str| md[k].to_string().unwrap().clone();
        assert_eq!(text("general.architecture"), "llama");
        assert_eq!(text("tokenizer.ggml.model"), "gpt2");
        assert_eq!(text("tokenizer.ggml.pre"), "smollm");
        assert!(text("tokenizer.chat_template").contains("<|im_start|>"));
        let bpe = TinyBpe::default();
        assert_eq!(
            md["tokenizer.ggml.tokens"].to_vec().unwrap().len(),
            bpe.vocab_size()
        );
        assert_eq!(
            md["tokenizer.ggml.merges"].to_vec().unwrap().len(),
            bpe.merges.len()
        );
        assert_eq!(md["llama.block_count"].to_u32().unwrap(), 2);
        let info = &content.tensor_infos;
        assert_eq!(info["blk.0.attn_q.weight"].ggml_dtype, ggml);
        assert_eq!(info["token_embd.weight"].ggml_dtype, ggml);
        assert_eq!(info["blk.1.ffn_norm.weight"].ggml_dtype, GgmlDType::F32);
        let logits = gguf_logits(&path);
        assert_eq!(logits.len(), bpe.vocab_size());
        assert!(logits.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn gguf_and_safetensors_of_one_seed_are_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinyLlama::default();
    let files = write_llama_safetensors(&dir.path().join("hf"), &spec, 5).unwrap();
    let reference = safetensors_logits(&files.dir);
    let scale = reference.iter().map(|x| x.abs()).fold(0.0, f32::max);

    let f32_path =
        write_llama_gguf(&dir.path().join("f32.gguf"), &spec, GgufQuant::F32, 5).unwrap();
    let diff = max_abs_diff(&reference, &gguf_logits(&f32_path));
    assert!(diff <= 1e-4 * scale.max(1.0), "f32 gguf differs by {diff}");

    let q8_path = write_llama_gguf(&dir.path().join("q8.gguf"), &spec, GgufQuant::Q8_0, 5).unwrap();
    let diff = max_abs_diff(&reference, &gguf_logits(&q8_path));
    assert!(
        diff <= 0.05 * scale,
        "q8_0 gguf differs by {diff} (scale {scale})"
    );

    // A different seed is a different model.
    let other = write_llama_gguf(&dir.path().join("other.gguf"), &spec, GgufQuant::F32, 6).unwrap();
    assert!(max_abs_diff(&reference, &gguf_logits(&other)) > 1e-3 * scale);
}

#[test]
fn writers_are_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinyLlama::default();
    let a = write_llama_gguf(&dir.path().join("a.gguf"), &spec, GgufQuant::Q4_0, 9).unwrap();
    let b = write_llama_gguf(&dir.path().join("b.gguf"), &spec, GgufQuant::Q4_0, 9).unwrap();
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let x = write_llama_safetensors(&dir.path().join("x"), &spec, 9).unwrap();
    let y = write_llama_safetensors(&dir.path().join("y"), &spec, 9).unwrap();
    assert_eq!(
        std::fs::read(x.weights).unwrap(),
        std::fs::read(y.weights).unwrap()
    );
}

#[test]
fn invalid_shapes_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinyLlama {
        num_heads: 5,
        ..TinyLlama::default()
    };
    let err = write_llama_safetensors(dir.path(), &spec, 1).unwrap_err();
    assert!(matches!(err, tiny::TinyError::InvalidSpec(_)), "{err}");
}

#[test]
fn bpe_tokenizer_json_loads_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_llama_safetensors(dir.path(), &TinyLlama::default(), 1).unwrap();
    let tokenizer = Tokenizer::from_file(&files.tokenizer).unwrap();
    let bpe = TinyBpe::default();
    assert_eq!(tokenizer.get_vocab_size(true), bpe.vocab_size());
    let text = "the quick brown fox, naïve café 🚂";
    let enc = tokenizer.encode(text, false).unwrap();
    assert!(
        enc.get_ids().len() < text.len(),
        "merges shorten common words"
    );
    assert_eq!(tokenizer.decode(enc.get_ids(), false).unwrap(), text);
    let chat = tokenizer.encode("<|im_start|>user", false).unwrap();
    assert_eq!(chat.get_ids()[0], bpe.bos_id());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files.tokenizer_config).unwrap()).unwrap();
    assert_eq!(config["chat_template"], tiny::CHAT_TEMPLATE);
}

#[test]
fn bert_folder_loads_with_candle_bert_and_its_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinyBert::default();
    tiny::write_bert(dir.path(), &spec, 2).unwrap();
    for f in [
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let config: bert::Config =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).unwrap();
    let model = bert::BertModel::load(vb, &config).unwrap();

    let tokenizer = Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(
        tokenizer.get_vocab_size(true),
        TinyWordPiece::new().vocab_size()
    );
    let enc = tokenizer.encode("Hello world, zyx!", true).unwrap();
    let ids = enc.get_ids();
    assert_eq!(ids[0], 2, "[CLS]");
    assert_eq!(*ids.last().unwrap(), 3, "[SEP]");
    assert_eq!(tokenizer.decode(ids, true).unwrap(), "hello world, zyx!");

    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let types = input.zeros_like().unwrap();
    let out = model.forward(&input, &types, None).unwrap();
    assert_eq!(out.dims(), &[1, ids.len(), spec.hidden_size]);
    let values: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert!(values.iter().all(|x| x.is_finite()));
}

#[test]
fn tiny_stable_diffusion_is_deterministic_and_uses_diffusers_names() {
    use switchyard_testkit::tiny::{TinyStableDiffusion, write_stable_diffusion};
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let spec = TinyStableDiffusion::default();
    write_stable_diffusion(a.path(), &spec, 5).unwrap();
    write_stable_diffusion(b.path(), &spec, 5).unwrap();
    for file in [
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
    ] {
        let (x, y) = (
            std::fs::read(a.path().join(file)).unwrap(),
            std::fs::read(b.path().join(file)).unwrap(),
        );
        assert!(
            !x.is_empty() && x == y,
            "{file} differs between equal seeds"
        );
    }
    let names = |file: &str| {
        let tensors =
            candle_core::safetensors::load(a.path().join(file), &candle_core::Device::Cpu).unwrap();
        tensors
            .into_keys()
            .collect::<std::collections::BTreeSet<_>>()
    };
    let unet = names("unet/diffusion_pytorch_model.safetensors");
    assert!(unet.contains("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"));
    assert!(unet.contains("conv_in.weight") && unet.contains("time_embedding.linear_1.weight"));
    let vae = names("vae/diffusion_pytorch_model.safetensors");
    assert!(vae.contains("decoder.mid_block.attentions.0.to_q.weight"));
    assert!(vae.contains("quant_conv.weight") && vae.contains("post_quant_conv.weight"));
    let text = names("text_encoder/model.safetensors");
    assert!(text.contains("text_model.encoder.layers.1.self_attn.q_proj.weight"));
    assert!(text.contains("text_model.final_layer_norm.weight"));
}
