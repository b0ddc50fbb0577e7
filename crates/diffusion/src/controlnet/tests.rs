use std::path::Path;

use serde_json::json;

use super::config::ControlNetJson;
use crate::DiffusionError;

fn parse(value: serde_json::Value) -> ControlNetJson {
    serde_json::from_value(value).expect("parses")
}

fn sd15_like() -> serde_json::Value {
    json!({
        "_class_name": "ControlNetModel",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "conditioning_embedding_out_channels": [16, 32, 96, 256],
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "CrossAttnDownBlock2D", "DownBlock2D"],
        "in_channels": 4,
        "layers_per_block": 2,
        "only_cross_attention": false,
        "class_embed_type": null,
    })
}

#[test]
fn sd15_layout_has_twelve_skip_residuals_in_unet_order() {
    let spec = parse(sd15_like()).spec(Path::new("c.json")).expect("spec");
    // conv_in, then 2 resnets + a downsampler per block but the last.
    assert_eq!(
        spec.residual_channels,
        [
            320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280
        ]
    );
    let blocks = &spec.blocks.blocks;
    assert_eq!(blocks.len(), 4);
    assert_eq!(blocks[0].use_cross_attn, Some(1));
    assert_eq!(blocks[0].attention_head_dim, 8);
    assert_eq!(blocks[3].use_cross_attn, None);
    assert!(!spec.bgr);
}

#[test]
fn unsupported_and_malformed_configs_are_typed_errors() {
    let mut sdxl = sd15_like();
    sdxl["addition_embed_type"] = json!("text_time");
    assert!(matches!(
        parse(sdxl).spec(Path::new("c.json")),
        Err(DiffusionError::Unsupported(_))
    ));
    let mut order = sd15_like();
    order["controlnet_conditioning_channel_order"] = json!("hsv");
    assert!(matches!(
        parse(order).spec(Path::new("c.json")),
        Err(DiffusionError::Config { .. })
    ));
    let mut short = sd15_like();
    short["down_block_types"] = json!(["DownBlock2D"]);
    assert!(matches!(
        parse(short).spec(Path::new("c.json")),
        Err(DiffusionError::Config { .. })
    ));
    let mut bgr = sd15_like();
    bgr["controlnet_conditioning_channel_order"] = json!("bgr");
    assert!(parse(bgr).spec(Path::new("c.json")).expect("spec").bgr);
}
