// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig, ClipTextTransformer,
};
use switchyard_testkit::tiny::{self, TinyClipBpe, TinyStableDiffusion};

use crate::clip::{ClipTextJson, ClipTokenizer};
use crate::config::{read_json, weight_files};
use crate::pipeline::TextEncoderSource;
use crate::request::{DiffusionRequest, TextToImage};
use crate::{LoadOptions, StableDiffusion};

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    max_diff(a, &a.zeros_like().unwrap())
}

fn source(dir: &Path, projection: bool) -> TextEncoderSource {
    let config_path = dir.join("config.json");
    TextEncoderSource {
        json: read_json(&config_path).unwrap(),
        files: weight_files(dir, "model").unwrap(),
        config_path,
        projection,
    }
}

fn ids(tokenizer: &ClipTokenizer, prompts: &[&str]) -> Tensor {
    super::token_ids(tokenizer, prompts, &Device::Cpu).unwrap()
}

/// candle-transformers' CLIP text model (quick GELU only) over the same
/// file, with `layers` of its layers.
fn candle_clip(dir: &Path, json: &ClipTextJson, layers: usize) -> ClipTextTransformer {
    let files = weight_files(dir, "model").unwrap();
    let vb = crate::weights::open(&files, DType::F32, &Device::Cpu, None).unwrap();
    let config = ClipTextConfig {
        vocab_size: TinyClipBpe::default().vocab_size(),
        embed_dim: json.hidden_size,
        activation: Activation::QuickGelu,
        intermediate_size: TinyStableDiffusion::default().text_intermediate,
        max_position_embeddings: 77,
        pad_with: None,
        num_hidden_layers: layers,
        num_attention_heads: TinyStableDiffusion::default().text_heads,
        projection_dim: json.hidden_size,
    };
    ClipTextTransformer::new(vb.pp("text_model"), &config).unwrap()
}

#[test]
fn the_text_encoder_outputs_match_candle_transformers_clip() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::default(), 3).unwrap();
    let text_dir = dir.path().join("text_encoder");
    let source = source(&text_dir, false);
    let ours = source.build(DType::F32, &Device::Cpu, None).unwrap();
    let tokenizer = ClipTokenizer::load(&dir.path().join("tokenizer"), 77).unwrap();
    let ids = ids(&tokenizer, &["a red fox", "the quiet sea at night"]);
    let out = ours.forward_all(&ids, tokenizer.eos_id()).unwrap();

    let full = candle_clip(
        &text_dir,
        &source.json,
        TinyStableDiffusion::default().text_layers,
    );
    let last = full.forward_with_mask(&ids, usize::MAX).unwrap();
    assert!(max_diff(&out.last_hidden, &last) < 1e-5);
    // candle pools at the largest id, which is the end token here.
    let pooled = full.forward(&ids).unwrap();
    assert!(max_diff(&out.pooled, &pooled) < 1e-5);
    assert_eq!(out.pooled.dims(), &[2, 32]);

    // The penultimate states, final-normed, are what one layer less gives.
    let shorter = candle_clip(
        &text_dir,
        &source.json,
        TinyStableDiffusion::default().text_layers - 1,
    );
    let files = weight_files(&text_dir, "model").unwrap();
    let vb = crate::weights::open(&files, DType::F32, &Device::Cpu, None).unwrap();
    let norm = candle_nn::layer_norm(32, 1e-5, vb.pp("text_model.final_layer_norm")).unwrap();
    let normed = norm.forward(&out.penultimate).unwrap();
    let expected = shorter.forward_with_mask(&ids, usize::MAX).unwrap();
    assert!(max_diff(&normed, &expected) < 1e-5);
    assert!(max_diff(&out.penultimate, &out.last_hidden) > 1e-2);
}

#[test]
fn the_second_encoder_pools_at_the_end_token_through_its_projection() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::sdxl(), 3).unwrap();
    let text_dir = dir.path().join("text_encoder_2");
    let encoder = source(&text_dir, true)
        .build(DType::F32, &Device::Cpu, None)
        .unwrap();
    // `!` pads, so the end token appears once per row.
    let tokenizer = ClipTokenizer::load(&dir.path().join("tokenizer_2"), 77).unwrap();
    let ids = ids(&tokenizer, &["a red fox", "sea"]);
    let rows: Vec<Vec<u32>> = ids.to_vec2().unwrap();
    let out = encoder.forward_all(&ids, tokenizer.eos_id()).unwrap();
    assert_eq!(out.pooled.dims(), &[2, 24]);

    let tensors =
        candle_core::safetensors::load(text_dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let projection = &tensors["text_projection.weight"];
    for (r, row) in rows.iter().enumerate() {
        let at = row.iter().position(|&t| t == tokenizer.eos_id()).unwrap();
        assert!(
            at < 76,
            "the prompt is short, so padding follows the end token"
        );
        let hidden = out.last_hidden.i((r, at)).unwrap().unsqueeze(0).unwrap();
        let expected = hidden.matmul(&projection.t().unwrap()).unwrap();
        let got = out.pooled.i(r).unwrap().unsqueeze(0).unwrap();
        assert!(max_diff(&got, &expected) < 1e-5);
    }
}

fn guided(prompt: &str, negative: &str) -> DiffusionRequest {
    TextToImage {
        negative_prompt: negative.into(),
        width: 32,
        height: 32,
        ..TextToImage::new(prompt)
    }
    .into()
}

#[test]
fn sdxl_conditioning_joins_both_encoders_penultimate_states() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::sdxl(), 3).unwrap();
    let sd = StableDiffusion::load(dir.path(), &LoadOptions::default()).unwrap();
    assert!(sd.is_sdxl());
    let second = sd.second.as_ref().unwrap();
    let requests = [guided("a red fox", "blurry"), guided("the sea", "")];
    let rows = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let cond = sd
        .encode_prompts_xl(second, &requests, &rows, true)
        .unwrap();
    assert_eq!(cond.context.dims(), &[4, 77, 80]);
    let pooled = cond.pooled.unwrap();
    assert_eq!(pooled.dims(), &[4, 24]);

    // Rows: negatives ("blurry", "") then positives.
    let prompts = ["blurry", "", "a red fox", "the sea"];
    let first = sd
        .text_encoder()
        .unwrap()
        .forward_all(&ids(&sd.tokenizer, &prompts), sd.tokenizer.eos_id())
        .unwrap();
    let other = sd
        .second_text_encoder(second)
        .unwrap()
        .forward_all(&ids(&second.tokenizer, &prompts), second.tokenizer.eos_id())
        .unwrap();
    for row in [0, 2, 3] {
        let ctx = cond.context.i(row).unwrap();
        assert!(
            max_diff(
                &ctx.narrow(1, 0, 32).unwrap(),
                &first.penultimate.i(row).unwrap()
            ) < 1e-6
        );
        assert!(
            max_diff(
                &ctx.narrow(1, 32, 48).unwrap(),
                &other.penultimate.i(row).unwrap()
            ) < 1e-6
        );
        assert!(max_diff(&pooled.i(row).unwrap(), &other.pooled.i(row).unwrap()) < 1e-6);
    }
    // force_zeros_for_empty_prompt: the empty negative conditions on zeros.
    assert_eq!(max_abs(&cond.context.i(1).unwrap()), 0.0);
    assert_eq!(max_abs(&pooled.i(1).unwrap()), 0.0);
    assert!(max_abs(&other.penultimate.i(1).unwrap()) > 0.1);
}

#[test]
fn without_force_zeros_an_empty_negative_is_encoded() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::sdxl(), 3).unwrap();
    let index_path = dir.path().join("model_index.json");
    let mut index: serde_json::Value = read_json(&index_path).unwrap();
    index["force_zeros_for_empty_prompt"] = false.into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    let sd = StableDiffusion::load(dir.path(), &LoadOptions::default()).unwrap();
    let rows = Tensor::new(&[0u32], &Device::Cpu).unwrap();
    let cond = sd
        .encode_prompts_xl(
            sd.second.as_ref().unwrap(),
            &[guided("fox", "")],
            &rows,
            true,
        )
        .unwrap();
    assert!(max_abs(&cond.context.i(0).unwrap()) > 0.1);
    assert!(max_abs(&cond.pooled.unwrap().i(0).unwrap()) > 1e-3);
}

#[test]
fn time_ids_follow_diffusers_order() {
    let ids = super::time_ids(2, 48, 64, &Device::Cpu).unwrap();
    let rows: Vec<Vec<f32>> = ids.to_vec2().unwrap();
    assert_eq!(rows, vec![vec![48.0, 64.0, 0.0, 0.0, 48.0, 64.0]; 2]);
}
