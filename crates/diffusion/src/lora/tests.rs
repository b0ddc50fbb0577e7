use candle_core::{Device, Tensor};

use super::merge::{LoraPatch, delta};
use super::*;
use crate::weights::Patch;

fn t(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
}

#[test]
fn keys_of_both_schemes_parse() {
    use LayerName::{Dotted, Flattened};
    let cases = [
        (
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            Some((
                LoraComponent::Unet,
                Flattened("down_blocks_0_attentions_0_proj_in".into()),
                Part::Down,
            )),
        ),
        (
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha",
            Some((
                LoraComponent::TextEncoder,
                Flattened("text_model_encoder_layers_0_self_attn_q_proj".into()),
                Part::Alpha,
            )),
        ),
        (
            "unet.mid_block.attentions.0.proj_out.lora_B.weight",
            Some((
                LoraComponent::Unet,
                Dotted("mid_block.attentions.0.proj_out".into()),
                Part::Up,
            )),
        ),
        (
            "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora.down.weight",
            Some((
                LoraComponent::TextEncoder,
                Dotted("text_model.encoder.layers.1.mlp.fc1".into()),
                Part::Down,
            )),
        ),
        (
            "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
            Some((
                LoraComponent::Unet,
                Dotted("up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0".into()),
                Part::Up,
            )),
        ),
        ("unet.conv_in.down.weight", None),
        (
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
            Some((
                LoraComponent::TextEncoder2,
                Flattened("text_model_encoder_layers_0_mlp_fc1".into()),
                Part::Down,
            )),
        ),
        (
            "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_B.weight",
            Some((
                LoraComponent::TextEncoder2,
                Dotted("text_model.encoder.layers.0.mlp.fc1".into()),
                Part::Up,
            )),
        ),
        ("lora_unet_conv_in.hada_w1_a", None),
        ("vae.decoder.conv_in.lora_A.weight", None),
    ];
    for (key, expected) in cases {
        assert_eq!(parse_key(key), expected, "{key}");
    }
}

#[test]
fn pairs_group_and_leftovers_are_reported() {
    let lora = Lora::from_tensors(
        "x",
        [
            (
                "lora_unet_conv_in.lora_down.weight".to_string(),
                t(&[1.0; 6], &[2, 3]),
            ),
            (
                "lora_unet_conv_in.lora_up.weight".to_string(),
                t(&[1.0; 8], &[4, 2]),
            ),
            ("lora_unet_conv_in.alpha".to_string(), t(&[1.0], &[])),
            (
                "unet.conv_out.lora_A.weight".to_string(),
                t(&[1.0; 6], &[2, 3]),
            ),
            (
                "lora_unet_time_embedding.hada_w1_a".to_string(),
                t(&[1.0], &[1]),
            ),
        ],
    )
    .unwrap();
    assert_eq!(lora.len(), 1);
    assert_eq!(lora.count(LoraComponent::Unet), 1);
    assert_eq!(lora.modules()[0].factor(), 0.5);
    assert_eq!(
        lora.unknown_keys(),
        [
            "lora_unet_time_embedding.hada_w1_a",
            "unet.conv_out.lora_A.weight"
        ]
    );
}

#[test]
fn malformed_pairs_are_errors() {
    let pair = |down: Tensor, up: Tensor, alpha: Option<Tensor>| {
        let mut tensors = vec![
            ("unet.a.lora_A.weight".to_string(), down),
            ("unet.a.lora_B.weight".to_string(), up),
        ];
        if let Some(alpha) = alpha {
            tensors.push(("unet.a.alpha".to_string(), alpha));
        }
        Lora::from_tensors("bad", tensors)
    };
    let is_lora_error = |r: Result<Lora>| matches!(r, Err(DiffusionError::Lora(_)));
    // Ranks disagree.
    assert!(is_lora_error(pair(
        t(&[1.0; 6], &[2, 3]),
        t(&[1.0; 12], &[4, 3]),
        None
    )));
    // A vector is not a matrix.
    assert!(is_lora_error(pair(
        t(&[1.0; 3], &[3]),
        t(&[1.0; 4], &[4, 1]),
        None
    )));
    // A 3x3 up kernel is not LoRA.
    assert!(is_lora_error(pair(
        t(&[1.0; 6], &[2, 3]),
        t(&[1.0; 72], &[4, 2, 3, 3]),
        None
    )));
    // Alpha must be one finite number.
    let good = || (t(&[1.0; 6], &[2, 3]), t(&[1.0; 8], &[4, 2]));
    let (d, u) = good();
    assert!(is_lora_error(pair(d, u, Some(t(&[1.0, 2.0], &[2])))));
    let (d, u) = good();
    assert!(is_lora_error(pair(d, u, Some(t(&[f32::NAN], &[])))));
    let (d, u) = good();
    assert!(pair(d, u, Some(t(&[4.0], &[1]))).is_ok());
    // Not a safetensors file at all.
    assert!(is_lora_error(Lora::from_bytes(
        "junk",
        b"not a safetensors file"
    )));
}

/// `scale x alpha / rank x up @ down`, by hand.
#[test]
fn the_delta_is_scale_alpha_over_rank_up_down() {
    let module = LoraModule {
        component: LoraComponent::Unet,
        layer: LayerName::Dotted("a".into()),
        down: t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]),
        up: t(&[1.0, 0.0, 0.5, -1.0], &[2, 2]),
        alpha: Some(1.0),
    };
    // up @ down = [[1, 2, 3], [0.5 - 4, 1 - 5, 1.5 - 6]]; x 3 x (1 / 2).
    let d = delta(&module, 3.0, &[2, 3]).unwrap();
    let expected = [1.5, 3.0, 4.5, -5.25, -6.0, -6.75];
    assert_eq!(d.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected);
    // A convolution weight takes the same delta in its own shape.
    let conv = delta(&module, 3.0, &[2, 3, 1, 1]).unwrap();
    assert_eq!(conv.dims(), [2, 3, 1, 1]);
}

#[test]
fn several_adapters_on_one_weight_add_up() {
    let module = |v: f32| LoraModule {
        component: LoraComponent::Unet,
        layer: LayerName::Dotted("a".into()),
        down: t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]),
        up: t(&[v, 0.0, 0.0, v], &[2, 2]),
        alpha: None,
    };
    let mut patch = LoraPatch::default();
    patch.add("a.weight", module(1.0), 1.0);
    patch.add("a.weight", module(2.0), 0.5);
    assert!(patch.touches("a.weight") && !patch.touches("b.weight"));
    let stored = t(&[10.0, 20.0, 30.0, 40.0], &[2, 2]);
    let merged = patch.apply("a.weight", &stored).unwrap();
    assert_eq!(
        merged.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [12.0, 20.0, 30.0, 42.0]
    );
}
