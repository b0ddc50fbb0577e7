//! The pipeline behind switchyard-batch: compatible requests share a UNet
//! batch and get exactly the images they would get alone.

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use switchyard_batch::{BatchError, Batcher};
use switchyard_diffusion::{
    DiffusionError, DiffusionHandler, DiffusionRequest, LoadOptions, RunOptions, StableDiffusion,
    TextToImage,
};
use switchyard_testkit::tiny::{self, TinyStableDiffusion};

fn request(prompt: &str, seed: u64, width: usize) -> DiffusionRequest {
    TextToImage {
        width,
        height: 32,
        steps: 2,
        seed,
        guidance_scale: 4.0,
        ..TextToImage::new(prompt)
    }
    .into()
}

fn handler() -> (tempfile::TempDir, DiffusionHandler) {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_stable_diffusion(dir.path(), &TinyStableDiffusion::default(), 11).unwrap();
    let sd = StableDiffusion::load(dir.path(), &LoadOptions::default()).unwrap();
    (
        dir,
        DiffusionHandler::new("tiny-sd", Arc::new(RwLock::new(sd))),
    )
}

fn alone(handler: &DiffusionHandler, r: &DiffusionRequest) -> Vec<u8> {
    let sd = handler.pipeline().read();
    let mut out = sd
        .generate(std::slice::from_ref(r), RunOptions::default())
        .unwrap();
    out.remove(0).image.into_raw()
}

fn close(a: &[u8], b: &[u8]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(*y) <= 1)
}

#[test]
fn compatible_requests_share_a_batch_and_match_their_solo_images() {
    let (_dir, handler) = handler();
    let requests = [
        request("a red train", 1, 32),
        request("a blue train", 2, 32),
        request("a green train", 3, 32),
        request("a wide train", 4, 48),
    ];
    let expected: Vec<Vec<u8>> = requests.iter().map(|r| alone(&handler, r)).collect();
    let batcher = Batcher::builder(handler)
        .workers(1)
        .fixed(8)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let handles: Vec<_> = requests
        .iter()
        .map(|r| batcher.submit(r.clone()).unwrap())
        .collect();
    for (handle, want) in handles.into_iter().zip(&expected) {
        let images = handle.wait().unwrap();
        assert_eq!(images.len(), 1);
        assert!(close(images[0].image.as_raw(), want));
    }
    let metrics = batcher.metrics();
    assert_eq!(metrics.succeeded, 4);
    assert_eq!(
        metrics.batches, 2,
        "three 32x32 requests in one batch, the 48x32 alone"
    );
}

#[test]
fn an_invalid_request_fails_alone() {
    let (_dir, handler) = handler();
    let good = request("a red train", 1, 32);
    let expected = alone(&handler, &good);
    let mut bad = request("a red train", 1, 32);
    if let DiffusionRequest::TextToImage(r) = &mut bad {
        r.images = 0;
    }
    let batcher = Batcher::builder(handler)
        .workers(1)
        .fixed(8)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let (a, b) = (batcher.submit(good).unwrap(), batcher.submit(bad).unwrap());
    match b.wait() {
        Err(BatchError::Handler(e)) => {
            assert!(matches!(
                *e,
                DiffusionError::InvalidInput {
                    field: "images",
                    ..
                }
            ));
        }
        other => panic!("expected the request's own error, got {other:?}"),
    }
    assert!(close(a.wait().unwrap()[0].image.as_raw(), &expected));
    assert_eq!(batcher.metrics().batches, 1, "both went in one batch");
}

#[test]
fn the_cost_budget_limits_a_batch_by_pixels_and_steps() {
    let (_dir, handler) = handler();
    let one = request("a", 1, 32);
    // 32 x 32 pixels x 2 steps x 2 (guidance).
    assert_eq!(one.cost(), 32 * 32 * 2 * 2);
    let batcher = Batcher::builder(handler)
        .workers(1)
        .fixed(8)
        .max_batch_cost(one.cost())
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let handles: Vec<_> = (0..3)
        .map(|seed| batcher.submit(request("a", seed, 32)).unwrap())
        .collect();
    for handle in handles {
        handle.wait().unwrap();
    }
    assert_eq!(batcher.metrics().batches, 3);
}

#[test]
fn the_step_observer_hears_every_step_with_the_batch_ids() {
    use switchyard_core::RequestId;
    use switchyard_diffusion::StepProgress;

    let (_dir, handler) = handler();
    type Heard = Vec<(Vec<RequestId>, StepProgress)>;
    let heard: Arc<parking_lot::Mutex<Heard>> = Arc::default();
    let sink = Arc::clone(&heard);
    let handler = handler.with_step_observer(Arc::new(move |ids, progress| {
        sink.lock().push((ids.to_vec(), progress));
    }));
    let batcher = Batcher::builder(handler)
        .workers(1)
        .fixed(4)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let ids = [RequestId::next(), RequestId::next()];
    let handles: Vec<_> = ids
        .iter()
        .zip(1..)
        .map(|(&id, seed)| {
            let r = switchyard_batch::Request::new(request("a train", seed, 32)).with_id(id);
            batcher.submit(r).unwrap()
        })
        .collect();
    for h in handles {
        h.wait().unwrap();
    }
    let heard = heard.lock();
    let steps: Vec<(usize, usize)> = heard.iter().map(|(_, p)| (p.step, p.total)).collect();
    assert_eq!(steps, [(1, 2), (2, 2)], "one batch of two steps");
    for (got, _) in heard.iter() {
        let mut got = got.clone();
        got.sort();
        let mut want = ids.to_vec();
        want.sort();
        assert_eq!(got, want);
    }
}
