//! `POST /v1/images/generations` over loopback HTTP on a tiny random-weight
//! Stable Diffusion written in the diffusers layout: the PNGs decode to the
//! pixels the engine gives for the same request; bad sizes, formats and
//! counts are 400s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use base64::Engine as _;
use common::{Served, post};
use serde_json::json;
use switchyard::config::{ModelKind, ModelSource, ModelSpec};
use switchyard::{Engine, ImageOptions, Request};
use switchyard_server::Limits;
use switchyard_testkit::tiny::{self, TinyStableDiffusion};

fn served() -> (tempfile::TempDir, Served) {
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().join("sd");
    tiny::write_stable_diffusion(&sd, &TinyStableDiffusion::default(), 5).unwrap();
    let engine = Engine::builder()
        .model(ModelSpec::new(
            "sd",
            ModelKind::TextToImage,
            ModelSource::Path(sd),
        ))
        .unwrap()
        .build()
        .unwrap();
    (
        dir,
        common::serve_engine(Arc::new(engine), Limits::default()),
    )
}

#[test]
fn generated_pngs_hold_the_engines_pixels() {
    let (_dir, s) = served();
    let reply = post(
        s.addr,
        "/v1/images/generations",
        &json!({
            "model": "sd",
            "prompt": "a red train in a switchyard",
            "n": 2,
            "size": "64x32",
            "response_format": "b64_json",
            "steps": 2,
            "seed": 40,
        }),
    );
    reply.assert_status(200);
    let json = reply.json();
    let data = json["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let direct = s
        .engine
        .submit(
            Request::image("sd", "a red train in a switchyard").with_image_options(ImageOptions {
                width: Some(64),
                height: Some(32),
                steps: Some(2),
                seed: Some(40),
                images: Some(2),
                ..ImageOptions::default()
            }),
        )
        .unwrap()
        .wait()
        .unwrap()
        .into_images()
        .unwrap();
    for (k, (item, want)) in data.iter().zip(&direct).enumerate() {
        assert_eq!(item["seed"], 40 + k as u64);
        let png = base64::engine::general_purpose::STANDARD
            .decode(item["b64_json"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let got = switchyard::image::decode(&png, &switchyard::image::ImageLimits::default())
            .unwrap()
            .into_rgb8();
        assert_eq!((got.width(), got.height()), (64, 32));
        assert_eq!(got.as_raw(), want.image.as_raw(), "image {k}");
    }
    assert_ne!(
        data[0]["b64_json"], data[1]["b64_json"],
        "each image has its own seed"
    );
}

#[test]
fn bad_image_requests_are_400s() {
    let (_dir, s) = served();
    for (extra, param) in [
        (json!({"size": "63x64"}), "size"),
        (json!({"size": "4096x4096"}), "size"),
        (json!({"size": "big"}), "size"),
        (json!({"response_format": "url"}), "response_format"),
        (json!({"n": 0}), "n"),
        (json!({"n": 99}), "n"),
        (json!({"steps": 0}), "steps"),
    ] {
        let mut body = json!({"model": "sd", "prompt": "x"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let reply = post(s.addr, "/v1/images/generations", &body);
        assert_eq!(reply.status, 400, "{body}");
        assert_eq!(reply.json()["error"]["param"], param, "{body}");
    }
    let unknown = post(
        s.addr,
        "/v1/images/generations",
        &json!({"model": "nope", "prompt": "x"}),
    );
    assert_eq!(unknown.status, 404);
}

#[test]
fn the_native_execute_draws_too() {
    let (_dir, s) = served();
    let reply = post(
        s.addr,
        "/api/inference/execute",
        &json!({
            "model": "sd",
            "task": "image",
            "prompt": "a signal box at night",
            "options": {"width": 32, "height": 48, "steps": 2, "seed": 9, "images": 1},
        }),
    );
    reply.assert_status(200);
    let json = reply.json();
    assert_eq!(json["result"]["kind"], "images");
    let image = &json["result"]["images"][0];
    assert_eq!(image["seed"], 9);
    let png = base64::engine::general_purpose::STANDARD
        .decode(image["png_base64"].as_str().unwrap())
        .unwrap();
    let got = switchyard::image::decode(&png, &switchyard::image::ImageLimits::default()).unwrap();
    assert_eq!((got.width(), got.height()), (32, 48));
}
