use std::path::Path;

use serde_json::json;

use super::config::{ControlNetJson, DownBlockSpec};
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
    assert!(matches!(spec.down[0], DownBlockSpec::CrossAttn(c) if c.attn_num_head_channels == 8));
    assert!(matches!(spec.down[3], DownBlockSpec::Basic(c) if !c.add_downsample));
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
