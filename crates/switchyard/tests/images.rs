//! Image requests through the engine: a tiny Stable Diffusion folder in the
//! diffusers layout gives what the pipeline gives alone, reports each step
//! as progress, stops when cancelled mid-run, and takes the registry's
//! defaults; image processing runs `switchyard-image`'s operations.
#![cfg(feature = "diffusion")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use switchyard::config::{ConfigFormat, ModelKind, ModelSource, ModelSpec, Registry};
use switchyard::diffusion::{
    DiffusionRequest, ImageToImage, LoadOptions, RunOptions, StableDiffusion, TextToImage,
};
use switchyard::image::{ColorMode, DynamicImage, Filter};
use switchyard::{Engine, EngineError, ImageInput, ImageOp, ImageOptions, Request, SessionState};
use switchyard_testkit::tiny::{self, TinyBert, TinyStableDiffusion};

fn tiny_sd() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::default(), 5).unwrap();
    dir
}

fn engine(sd: &std::path::Path) -> Engine {
    Engine::builder()
        .model(ModelSpec::new(
            "sd",
            ModelKind::TextToImage,
            ModelSource::Path(sd.to_owned()),
        ))
        .unwrap()
        .model(ModelSpec::new(
            "ops",
            ModelKind::ImageProcessing,
            ModelSource::None,
        ))
        .unwrap()
        .build()
        .unwrap()
}

fn small(steps: usize, seed: u64) -> ImageOptions {
    ImageOptions {
        width: Some(32),
        height: Some(32),
        steps: Some(steps),
        guidance_scale: Some(3.0),
        seed: Some(seed),
        ..ImageOptions::default()
    }
}

fn alone(sd: &std::path::Path, request: DiffusionRequest) -> Vec<Vec<u8>> {
    let pipeline = StableDiffusion::load(sd, &LoadOptions::default()).unwrap();
    pipeline
        .generate(&[request], RunOptions::default())
        .unwrap()
        .into_iter()
        .map(|g| g.image.into_raw())
        .collect()
}

#[test]
fn text_to_image_and_image_to_image_match_the_pipeline_alone() {
    let dir = tiny_sd();
    let engine = engine(dir.path());
    let options = ImageOptions {
        images: Some(2),
        ..small(3, 21)
    };
    let request = Request::image("sd", "a red train").with_image_options(options.clone());
    let images = engine.process_sync(request).unwrap().into_images().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!((images[0].seed, images[1].seed), (21, 22));
    let want = alone(
        dir.path(),
        TextToImage {
            width: 32,
            height: 32,
            steps: 3,
            guidance_scale: 3.0,
            seed: 21,
            images: 2,
            ..TextToImage::new("a red train")
        }
        .into(),
    );
    let got: Vec<Vec<u8>> = images.iter().map(|g| g.image.as_raw().clone()).collect();
    assert_eq!(got, want);

    // Image-to-image on the same text-to-image model: the picture sets the
    // size.
    let picture = images[0].image.clone();
    let request = Request::image_from("sd", "a blue train", ImageInput::Image(picture.clone()))
        .with_image_options(ImageOptions {
            strength: Some(0.5),
            width: None,
            height: None,
            ..small(4, 3)
        });
    let got = engine.process_sync(request).unwrap().into_images().unwrap();
    let want = alone(
        dir.path(),
        ImageToImage {
            params: TextToImage {
                width: 32,
                height: 32,
                steps: 4,
                guidance_scale: 3.0,
                seed: 3,
                ..TextToImage::new("a blue train")
            },
            image: picture,
            strength: 0.5,
        }
        .into(),
    );
    assert_eq!(got[0].image.as_raw(), &want[0]);
    let m = engine.metrics();
    assert_eq!(m.models["sd"].succeeded, 2);
}

#[test]
fn steps_show_as_progress_and_cancel_stops_a_running_image() {
    let dir = tiny_sd();
    let engine = engine(dir.path());
    let request = Request::image("sd", "a long walk").with_image_options(small(1000, 1));
    let handle = engine.submit(request).unwrap();
    let id = handle.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    let progress = loop {
        let session = engine.sessions().into_iter().find(|s| s.id == id).unwrap();
        if session.state == SessionState::Running && session.progress.0 >= 2 {
            break session.progress;
        }
        assert!(Instant::now() < deadline, "no progress: {session:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(progress.1, 1000);
    assert!(engine.cancel(id));
    let started = Instant::now();
    assert_eq!(handle.wait().unwrap_err(), EngineError::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the run went on after the cancel"
    );
    assert!(engine.sessions().is_empty());
    assert_eq!(engine.metrics().models["sd"].cancelled, 1);
}

#[test]
fn bad_image_requests_are_refused_before_they_run() {
    let dir = tiny_sd();
    let bert = tempfile::tempdir().unwrap();
    tiny::write_bert(bert.path(), &TinyBert::default(), 1).unwrap();
    let engine = Engine::builder()
        .model(ModelSpec::new(
            "sd",
            ModelKind::TextToImage,
            ModelSource::Path(dir.path().to_owned()),
        ))
        .unwrap()
        .model(ModelSpec::new(
            "bert",
            ModelKind::Embedding,
            ModelSource::Path(bert.path().to_owned()),
        ))
        .unwrap()
        .build()
        .unwrap();
    let field = |r: Request| match engine.validate(&r) {
        Err(EngineError::InvalidInput { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    let odd = Request::image("sd", "x").with_image_options(ImageOptions {
        width: Some(36),
        ..small(2, 0)
    });
    assert_eq!(field(odd.clone()), "width");
    assert!(matches!(
        engine.submit(odd),
        Err(EngineError::InvalidInput { .. })
    ));
    let picture = image::RgbImage::new(32, 32);
    let mask = image::GrayImage::new(16, 16);
    let inpaint = Request::image_from(
        "sd",
        "x",
        ImageInput::Inpaint {
            image: picture,
            mask,
        },
    )
    .with_image_options(small(2, 0));
    assert_eq!(field(inpaint), "mask");
    assert!(matches!(
        engine.validate(&Request::image("bert", "x")),
        Err(EngineError::WrongKind { .. })
    ));
    assert!(matches!(
        engine.validate(&Request::embed("sd", vec!["x".into()])),
        Err(EngineError::WrongKind { .. })
    ));
}

#[test]
fn registry_defaults_shape_image_requests() {
    let dir = tiny_sd();
    let toml = format!(
        r#"
[[models]]
id = "sd"
kind = "text-to-image"
path = "{}"
[models.defaults]
width = 16
height = 24
steps = 2
guidance_scale = 1.0
seed = 77
"#,
        dir.path().display()
    );
    let registry = Registry::parse(&toml, ConfigFormat::Toml, None).unwrap();
    let engine = Engine::builder().registry(registry).build().unwrap();
    let images = engine
        .process_sync(Request::image("sd", "defaults"))
        .unwrap()
        .into_images()
        .unwrap();
    assert_eq!(images[0].image.dimensions(), (16, 24));
    assert_eq!(images[0].seed, 77);
    let want = alone(
        dir.path(),
        TextToImage {
            width: 16,
            height: 24,
            steps: 2,
            guidance_scale: 1.0,
            seed: 77,
            ..TextToImage::new("defaults")
        }
        .into(),
    );
    assert_eq!(images[0].image.as_raw(), &want[0]);
}

#[test]
fn image_processing_runs_the_operations_in_order() {
    let dir = tiny_sd();
    let engine = engine(dir.path());
    let picture = DynamicImage::ImageRgb8(image::RgbImage::from_fn(50, 30, |x, y| {
        image::Rgb([x as u8 * 5, y as u8 * 8, 100])
    }));
    let ops = vec![
        ImageOp::Fit {
            width: 25,
            height: 25,
            filter: Filter::Lanczos3,
        },
        ImageOp::Convert(ColorMode::Gray),
    ];
    let got = engine
        .process_sync(Request::process_image("ops", picture.clone(), ops.clone()))
        .unwrap()
        .into_image()
        .unwrap();
    let mut want = picture;
    for op in &ops {
        want = op.apply(&want).unwrap();
    }
    assert_eq!((got.width(), got.height()), (25, 15));
    assert_eq!(got, want);

    // An operation that does not suit the image fails the request alone.
    let crop = ImageOp::Crop {
        x: 40,
        y: 0,
        width: 20,
        height: 10,
    };
    let picture = DynamicImage::ImageRgb8(image::RgbImage::new(50, 30));
    let e = engine
        .process_sync(Request::process_image("ops", picture, vec![crop]))
        .unwrap_err();
    assert!(matches!(e, EngineError::InvalidInput { .. }), "{e:?}");
    assert!(matches!(
        engine.validate(&Request::process_image(
            "ops",
            DynamicImage::new_rgb8(4, 4),
            vec![]
        )),
        Err(EngineError::InvalidInput { .. })
    ));
}
