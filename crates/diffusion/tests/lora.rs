//! LoRA merging end to end on a tiny Stable Diffusion folder: a LoRA whose
//! delta is known must produce exactly the model whose weights were changed
//! by that delta on disk, in both naming schemes, and unapply exactly.

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use switchyard_diffusion::{
    DiffusionError, LoadOptions, Lora, LoraReport, RunOptions, StableDiffusion, TextToImage,
};
use switchyard_testkit::tiny::{self, TinyStableDiffusion};

const UNET_FILE: &str = "unet/diffusion_pytorch_model.safetensors";
const TEXT_FILE: &str = "text_encoder/model.safetensors";
/// A 3x3 convolution, a cross-attention linear and a text-encoder linear.
const CONV: &str = "conv_in";
const LINEAR: &str = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k";
const TEXT: &str = "text_model.encoder.layers.0.self_attn.q_proj";

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn images(sd: &StableDiffusion) -> Vec<Vec<u8>> {
    let request = TextToImage {
        width: 32,
        height: 32,
        steps: 2,
        seed: 5,
        guidance_scale: 3.0,
        ..TextToImage::new("a red train on a bridge")
    };
    sd.text_to_image(&[request], RunOptions::default())
        .unwrap()
        .into_iter()
        .map(|g| g.image.into_raw())
        .collect()
}

/// A rank-`in` pair whose `up @ down` is the weight itself: `down` is the
/// identity, `up` the weight flattened to `[out, in, 1, 1]` (or `[out, in]`).
fn identity_pair(weight: &Tensor) -> (Tensor, Tensor) {
    let dims = weight.dims();
    let out = dims[0];
    let inputs: usize = dims[1..].iter().product();
    let mut down_dims = vec![inputs];
    down_dims.extend_from_slice(&dims[1..]);
    let down = Tensor::eye(inputs, DType::F32, &Device::Cpu)
        .unwrap()
        .reshape(down_dims)
        .unwrap();
    let up_shape: Vec<usize> = if dims.len() == 4 {
        vec![out, inputs, 1, 1]
    } else {
        vec![out, inputs]
    };
    (down, weight.reshape(up_shape).unwrap())
}

/// Which layers a test LoRA adapts: (component file, layer).
fn targets(unet: bool, text: bool) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if unet {
        out.push((UNET_FILE, CONV));
        out.push((UNET_FILE, LINEAR));
    }
    if text {
        out.push((TEXT_FILE, TEXT));
    }
    out
}

/// A kohya file whose delta at scale 2 is each target's weight (alpha is
/// half the rank).
fn kohya(dir: &Path, layers: &[(&str, &str)]) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (file, layer) in layers {
        let weight = tensors(&dir.join(file))[&format!("{layer}.weight")].clone();
        let (down, up) = identity_pair(&weight);
        let rank = down.dims()[0] as f32;
        let prefix = if *file == UNET_FILE {
            "lora_unet"
        } else {
            "lora_te"
        };
        let stem = format!("{prefix}_{}", layer.replace('.', "_"));
        out.insert(format!("{stem}.lora_down.weight"), down);
        out.insert(format!("{stem}.lora_up.weight"), up);
        out.insert(
            format!("{stem}.alpha"),
            Tensor::new(rank / 2.0, &Device::Cpu).unwrap(),
        );
    }
    out
}

/// The same deltas in PEFT naming without alpha: scale 1 gives the weight.
fn peft(dir: &Path, layers: &[(&str, &str)]) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (file, layer) in layers {
        let weight = tensors(&dir.join(file))[&format!("{layer}.weight")].clone();
        let (down, up) = identity_pair(&weight);
        let prefix = if *file == UNET_FILE {
            "unet"
        } else {
            "text_encoder"
        };
        out.insert(format!("{prefix}.{layer}.lora_A.weight"), down);
        out.insert(format!("{prefix}.{layer}.lora_B.weight"), up);
    }
    out
}

fn save(path: &Path, tensors: &HashMap<String, Tensor>) -> Lora {
    candle_core::safetensors::save(tensors, path).unwrap();
    Lora::load(path).unwrap()
}

/// A copy of `dir` with every target's weight doubled on disk.
fn doubled(dir: &Path, layers: &[(&str, &str)]) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(copy.path(), &TinyStableDiffusion::default(), 11).unwrap();
    for file in [UNET_FILE, TEXT_FILE] {
        let mut all = tensors(&dir.join(file));
        for (f, layer) in layers {
            if *f == file {
                let name = format!("{layer}.weight");
                let w = all[&name].clone();
                all.insert(name, (&w + &w).unwrap());
            }
        }
        candle_core::safetensors::save(&all, copy.path().join(file)).unwrap();
    }
    copy
}

fn setup() -> (tempfile::TempDir, StableDiffusion, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::default(), 11).unwrap();
    let sd = StableDiffusion::load(dir.path(), &LoadOptions::default()).unwrap();
    let baseline = images(&sd);
    (dir, sd, baseline)
}

fn load(dir: &Path) -> StableDiffusion {
    StableDiffusion::load(dir, &LoadOptions::default()).unwrap()
}

#[test]
fn a_known_delta_merges_exactly_and_unapplies_exactly() {
    let (dir, mut sd, baseline) = setup();
    let layers = targets(true, true);
    let lora = save(
        &dir.path().join("known.safetensors"),
        &kohya(dir.path(), &layers),
    );
    assert_eq!((lora.len(), lora.name()), (3, "known"));
    let report = sd.set_loras(&[(&lora, 2.0)]).unwrap();
    assert_eq!(
        report,
        LoraReport {
            unet_layers: 2,
            text_encoder_layers: 1,
            ..LoraReport::default()
        }
    );
    assert!(report.is_complete());
    let expected = images(&load(doubled(dir.path(), &layers).path()));
    let merged = images(&sd);
    assert_ne!(merged, baseline);
    assert_eq!(merged, expected, "W + 2 x (r/2)/r x W@I must be 2W exactly");

    sd.set_loras(&[]).unwrap();
    assert_eq!(images(&sd), baseline, "unapplied: the original weights");
}

#[test]
fn both_naming_schemes_merge_the_same_weights() {
    let (dir, mut sd, _) = setup();
    let layers = targets(true, true);
    let kohya = save(
        &dir.path().join("k.safetensors"),
        &kohya(dir.path(), &layers),
    );
    let peft = save(
        &dir.path().join("p.safetensors"),
        &peft(dir.path(), &layers),
    );
    sd.set_loras(&[(&kohya, 2.0)]).unwrap();
    let from_kohya = images(&sd);
    let report = sd.set_loras(&[(&peft, 1.0)]).unwrap();
    assert_eq!((report.unet_layers, report.text_encoder_layers), (2, 1));
    assert_eq!(images(&sd), from_kohya);
}

#[test]
fn scale_zero_leaves_outputs_unchanged() {
    let (dir, mut sd, baseline) = setup();
    let lora = save(
        &dir.path().join("zero.safetensors"),
        &kohya(dir.path(), &targets(true, true)),
    );
    sd.set_loras(&[(&lora, 0.0)]).unwrap();
    assert_eq!(images(&sd), baseline);
}

#[test]
fn several_adapters_apply_at_once_with_their_own_scales() {
    let (dir, mut sd, baseline) = setup();
    let unet = save(
        &dir.path().join("u.safetensors"),
        &kohya(dir.path(), &targets(true, false)),
    );
    let text = save(
        &dir.path().join("t.safetensors"),
        &peft(dir.path(), &targets(false, true)),
    );
    let report = sd.set_loras(&[(&unet, 2.0), (&text, 1.0)]).unwrap();
    assert_eq!((report.unet_layers, report.text_encoder_layers), (2, 1));
    let expected = images(&load(doubled(dir.path(), &targets(true, true)).path()));
    assert_eq!(images(&sd), expected);
    // Dropping one adapter rebuilds from the files with the other alone.
    sd.set_loras(&[(&text, 1.0)]).unwrap();
    let text_only = images(&load(doubled(dir.path(), &targets(false, true)).path()));
    assert_eq!(images(&sd), text_only);
    sd.set_loras(&[]).unwrap();
    assert_eq!(images(&sd), baseline);
}

#[test]
fn keys_that_cannot_be_merged_are_reported() {
    let (dir, mut sd, baseline) = setup();
    let mut file = kohya(dir.path(), &targets(false, true));
    let pair = |r: usize, i: usize, o: usize| {
        (
            Tensor::zeros((r, i), DType::F32, &Device::Cpu).unwrap(),
            Tensor::zeros((o, r), DType::F32, &Device::Cpu).unwrap(),
        )
    };
    // A layer this model does not have, and one whose shape is wrong.
    let (down, up) = pair(2, 8, 8);
    file.insert("lora_unet_no_such_layer.lora_down.weight".into(), down);
    file.insert("lora_unet_no_such_layer.lora_up.weight".into(), up);
    let (down, up) = pair(2, 5, 7);
    file.insert("unet.conv_out.lora_A.weight".into(), down);
    file.insert("unet.conv_out.lora_B.weight".into(), up);
    // SDXL's second text encoder and a LoHa key.
    let one = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
    file.insert(
        "lora_te2_text_model_final_layer_norm.lora_down.weight".into(),
        one.clone(),
    );
    file.insert("lora_unet_conv_in.hada_w1_a".into(), one);
    let lora = save(&dir.path().join("mixed.safetensors"), &file);
    let report = sd.set_loras(&[(&lora, 1.0)]).unwrap();
    assert!(!report.is_complete());
    assert_eq!(report.text_encoder_layers, 1);
    assert_eq!(report.unet_layers, 0);
    assert_eq!(report.unmatched.len(), 2, "{:?}", report.unmatched);
    assert!(report.unmatched.iter().any(|u| u.contains("no_such_layer")));
    assert!(
        report
            .unmatched
            .iter()
            .any(|u| u.contains("conv_out") && u.contains("does not fit"))
    );
    assert_eq!(
        report.unknown_keys,
        [
            "mixed: lora_te2_text_model_final_layer_norm.lora_down.weight",
            "mixed: lora_unet_conv_in.hada_w1_a"
        ]
    );
    assert_ne!(images(&sd), baseline, "what could be merged was");

    assert!(matches!(
        sd.set_loras(&[(&lora, f64::NAN)]),
        Err(DiffusionError::InvalidInput { field: "scale", .. })
    ));
    assert!(matches!(
        Lora::load(&dir.path().join("missing.safetensors")),
        Err(DiffusionError::Io { .. })
    ));
}
