//! A batch that fails for lack of memory runs once more, smaller, after
//! the out-of-memory hook; a second failure stands as a typed error and the
//! worker keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use switchyard_batch::{BatchContext, BatchError, BatchHandler, Batcher};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    OutOfMemory,
    Other,
}

/// Doubles numbers when the batch fits in `room` items; fails every input
/// with `OutOfMemory` when it does not. Negative numbers fail otherwise.
#[derive(Default)]
struct Tight {
    room: AtomicUsize,
    sizes: Mutex<Vec<usize>>,
}

impl BatchHandler for Tight {
    type Input = i64;
    type Output = i64;
    type Error = Failure;

    fn run(&self, batch: &mut [i64], _: &BatchContext<'_>) -> Vec<Result<i64, Failure>> {
        self.sizes.lock().push(batch.len());
        if batch.len() > self.room.load(Ordering::SeqCst) {
            return batch.iter().map(|_| Err(Failure::OutOfMemory)).collect();
        }
        batch
            .iter()
            .map(|&n| {
                if n < 0 {
                    Err(Failure::Other)
                } else {
                    Ok(n * 2)
                }
            })
            .collect()
    }

    fn is_out_of_memory(&self, error: &Failure) -> bool {
        *error == Failure::OutOfMemory
    }
}

/// Submits `inputs` to a paused batcher, then runs them as one batch.
fn run_batch(
    handler: Arc<Tight>,
    hook: impl Fn() + Send + Sync + 'static,
    inputs: &[i64],
) -> (Vec<Result<i64, Failure>>, Batcher<Arc<Tight>>) {
    let batcher = Batcher::builder(handler)
        .workers(0)
        .fixed(inputs.len())
        .on_out_of_memory(hook)
        .build()
        .unwrap();
    let handles: Vec<_> = inputs
        .iter()
        .map(|&n| batcher.submit(switchyard_batch::Request::new(n)).unwrap())
        .collect();
    batcher.scale_workers(1);
    let results = handles
        .into_iter()
        .map(|h| match h.wait() {
            Ok(v) => Ok(v),
            Err(BatchError::Handler(e)) => Err(e),
            Err(other) => panic!("unexpected {other:?}"),
        })
        .collect();
    (results, batcher)
}

#[test]
fn a_batch_too_big_for_memory_runs_again_in_halves() {
    let handler = Arc::new(Tight::default());
    handler.room.store(4, Ordering::SeqCst);
    let hooked = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hooked);
    let inputs: Vec<i64> = (1..=8).collect();
    let (results, batcher) = run_batch(
        Arc::clone(&handler),
        move || {
            h.fetch_add(1, Ordering::SeqCst);
        },
        &inputs,
    );
    let doubled: Vec<Result<i64, Failure>> = inputs.iter().map(|n| Ok(n * 2)).collect();
    assert_eq!(results, doubled, "every input answered, in order");
    assert_eq!(*handler.sizes.lock(), [8, 4, 4]);
    assert_eq!(hooked.load(Ordering::SeqCst), 1);
    assert_eq!(batcher.metrics().memory_retries, 1);
}

#[test]
fn the_hook_frees_room_for_a_single_input_that_failed() {
    let handler = Arc::new(Tight::default());
    let room = Arc::clone(&handler);
    let (results, batcher) = run_batch(
        Arc::clone(&handler),
        move || room.room.store(1, Ordering::SeqCst),
        &[21],
    );
    assert_eq!(results, [Ok(42)]);
    assert_eq!(*handler.sizes.lock(), [1, 1]);
    assert_eq!(batcher.metrics().memory_retries, 1);
}

#[test]
fn a_second_failure_stands_and_the_worker_keeps_serving() {
    let handler = Arc::new(Tight::default());
    handler.room.store(1, Ordering::SeqCst);
    let (results, batcher) = run_batch(Arc::clone(&handler), || {}, &[1, 2, 3, 4]);
    assert!(results.iter().all(|r| *r == Err(Failure::OutOfMemory)));
    assert_eq!(
        *handler.sizes.lock(),
        [4, 2, 2],
        "retried once, not forever"
    );
    let one = batcher.submit(switchyard_batch::Request::new(5)).unwrap();
    assert_eq!(one.wait().unwrap(), 10);
}

#[test]
fn other_errors_are_not_retried() {
    let handler = Arc::new(Tight::default());
    handler.room.store(8, Ordering::SeqCst);
    let hooked = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hooked);
    let (results, batcher) = run_batch(
        Arc::clone(&handler),
        move || {
            h.fetch_add(1, Ordering::SeqCst);
        },
        &[1, -1, 3],
    );
    assert_eq!(results, [Ok(2), Err(Failure::Other), Ok(6)]);
    assert_eq!(*handler.sizes.lock(), [3]);
    assert_eq!(hooked.load(Ordering::SeqCst), 0);
    assert_eq!(batcher.metrics().memory_retries, 0);
}
