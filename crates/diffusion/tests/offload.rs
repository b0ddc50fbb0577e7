//! Offloading and placement on a tiny folder: released components rebuild
//! from their files (with the active LoRA deltas) and give the same images;
//! the pressure policy follows the memory monitor; components placed
//! explicitly run where they are put. (This machine has one device, the
//! CPU: moves between devices are exercised only as same-device moves.)

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use switchyard_core::{CancellationToken, DeviceId};
use switchyard_diffusion::{
    DiffusionError, LoadOptions, Lora, Offload, Placement, PressureTrigger, Residency, RunOptions,
    StableDiffusion, TextToImage,
};
use switchyard_testkit::tiny::{self, TinyStableDiffusion};
use switchyard_vram::SimulatedMonitor;
use tempfile::TempDir;

const LOADED: Residency = Residency {
    text_encoder: true,
    unet: true,
    vae: true,
    controlnets: true,
};
const RELEASED: Residency = Residency {
    text_encoder: false,
    unet: false,
    vae: false,
    controlnets: true,
};

fn folder() -> (TempDir, StableDiffusion) {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::default(), 11).unwrap();
    let sd = StableDiffusion::load(dir.path(), &LoadOptions::default()).unwrap();
    (dir, sd)
}

fn images(sd: &StableDiffusion) -> Vec<Vec<u8>> {
    let request = TextToImage {
        width: 32,
        height: 32,
        steps: 2,
        seed: 9,
        guidance_scale: 2.5,
        ..TextToImage::new("a shunting engine in the rain")
    };
    sd.text_to_image(&[request], RunOptions::default())
        .unwrap()
        .into_iter()
        .map(|g| g.image.into_raw())
        .collect()
}

#[test]
fn always_releases_both_and_rebuilt_components_give_the_same_images() {
    let (_dir, mut sd) = folder();
    let plain = images(&sd);
    assert_eq!(sd.residency(), LOADED, "Never keeps everything");
    sd.set_offload(Offload::Always);
    assert_eq!(images(&sd), plain);
    assert_eq!(sd.residency(), RELEASED);
    // Rebuilt from the files for this run, released again after it.
    assert_eq!(images(&sd), plain);
    assert_eq!(sd.residency(), RELEASED);
    sd.set_offload(Offload::Never);
    assert_eq!(images(&sd), plain);
    assert_eq!(sd.residency(), LOADED);
}

#[test]
fn pressure_policy_releases_only_while_the_monitor_reports_pressure() {
    let (_dir, mut sd) = folder();
    let plain = images(&sd);
    let monitor = Arc::new(SimulatedMonitor::new().with_device(DeviceId::Cpu, 1000, 100));
    sd.set_offload(Offload::UnderPressure(PressureTrigger::high(
        monitor.clone(),
        DeviceId::Cpu,
    )));
    assert_eq!(images(&sd), plain);
    assert_eq!(sd.residency(), LOADED, "low pressure keeps the weights");
    monitor.set_used(DeviceId::Cpu, 800);
    assert_eq!(images(&sd), plain);
    assert_eq!(sd.residency(), RELEASED, "high pressure releases them");
    monitor.set_used(DeviceId::Cpu, 200);
    assert_eq!(images(&sd), plain);
    assert_eq!(sd.residency(), LOADED, "rebuilt and kept once it eases");
    assert!(format!("{:?}", sd.offload()).contains("UnderPressure"));
}

#[test]
fn a_manual_release_rebuilds_with_the_active_lora() {
    let (dir, mut sd) = folder();
    let plain = images(&sd);
    // A rank-2 kohya LoRA on the UNet's input convolution.
    let unet = candle_core::safetensors::load(
        dir.path().join("unet/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (out, inputs) = {
        let d = unet["conv_in.weight"].dims();
        (d[0], d[1])
    };
    let key = "lora_unet_conv_in";
    let tensors: HashMap<String, Tensor> = [
        (
            format!("{key}.lora_down.weight"),
            Tensor::randn(0f32, 0.5, (2, inputs, 3, 3), &Device::Cpu).unwrap(),
        ),
        (
            format!("{key}.lora_up.weight"),
            Tensor::randn(0f32, 0.5, (out, 2, 1, 1), &Device::Cpu).unwrap(),
        ),
        (
            format!("{key}.alpha"),
            Tensor::new(2f32, &Device::Cpu).unwrap(),
        ),
    ]
    .into_iter()
    .collect();
    let path = dir.path().join("conv.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let lora = Lora::load(&path).unwrap();
    let report = sd.set_loras(&[(&lora, 1.0)]).unwrap();
    assert_eq!(report.unet_layers, 1);
    let adapted = images(&sd);
    assert_ne!(adapted, plain, "the LoRA changes the images");
    assert!(sd.release_weights());
    assert_eq!(sd.residency(), RELEASED);
    assert!(!sd.release_weights(), "nothing left to release");
    assert_eq!(images(&sd), adapted, "the rebuild merges the LoRA again");
    sd.set_loras(&[]).unwrap();
    assert_eq!(images(&sd), plain);
}

#[test]
fn a_cancelled_run_still_releases_under_always() {
    let (_dir, mut sd) = folder();
    sd.set_offload(Offload::Always);
    let token = CancellationToken::new();
    token.cancel();
    let run = RunOptions {
        cancel: Some(token),
        ..RunOptions::default()
    };
    let request = TextToImage {
        width: 32,
        height: 32,
        steps: 3,
        ..TextToImage::new("cancelled")
    };
    let err = sd.text_to_image(&[request], run).unwrap_err();
    assert!(matches!(err, DiffusionError::Cancelled), "{err}");
    assert_eq!(sd.residency(), RELEASED);
}

#[test]
fn explicit_placement_runs_each_component_where_it_is_put() {
    let (dir, sd) = folder();
    let plain = images(&sd);
    let options = LoadOptions {
        placement: Placement {
            text_encoder: Some(Device::Cpu),
            vae: Some(Device::Cpu),
        },
        ..LoadOptions::default()
    };
    let placed = StableDiffusion::load(dir.path(), &options).unwrap();
    for (component, device) in placed.devices() {
        assert!(device.is_cpu(), "{component}");
    }
    let names: Vec<&str> = placed.devices().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["unet", "text_encoder", "vae"]);
    assert_eq!(images(&placed), plain);
}

#[test]
fn under_always_only_the_unet_is_resident_while_it_denoises() {
    let (_dir, mut sd) = folder();
    sd.set_offload(Offload::Always);
    let seen = std::cell::RefCell::new(Vec::new());
    let mut on_step =
        |_: switchyard_diffusion::StepProgress| seen.borrow_mut().push(sd.residency());
    let request = TextToImage {
        width: 32,
        height: 32,
        steps: 2,
        ..TextToImage::new("a signal box")
    };
    let run = RunOptions {
        on_step: Some(&mut on_step),
        ..RunOptions::default()
    };
    sd.text_to_image(&[request], run).unwrap();
    let seen = seen.into_inner();
    assert_eq!(seen.len(), 2);
    for residency in seen {
        assert_eq!(
            residency,
            Residency {
                unet: true,
                ..RELEASED
            },
            "the text encoder and the VAE are gone during denoising"
        );
    }
    assert_eq!(sd.residency(), RELEASED);
}
