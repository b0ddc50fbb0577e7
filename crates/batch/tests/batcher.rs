//! Behaviour of the threaded batcher: routing, priorities, failures,
//! deadlines, cancellation, coalescing, scaling and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Action, Job, Recorder, block_on};
use switchyard_batch::{
    BatchError, Batcher, Handle, QueueConfig, QueueScope, Request, ShutdownMode,
};
use switchyard_core::{ManualClock, Priority};

fn batcher(handler: Arc<Recorder>, workers: usize, size: usize) -> Batcher<Arc<Recorder>> {
    Batcher::builder(handler)
        .workers(workers)
        .fixed(size)
        .max_wait(Duration::from_millis(1))
        .build()
        .unwrap()
}

#[test]
fn every_caller_gets_its_own_result() {
    let rec = Recorder::open();
    let b = batcher(rec.clone(), 2, 8);
    let handles: Vec<_> = (0..200)
        .map(|n| b.submit(Job::double(n)).unwrap())
        .collect();
    for (n, h) in handles.into_iter().enumerate() {
        assert_eq!(h.wait(), Ok(n as u64 * 2));
    }
    let m = b.metrics();
    assert_eq!((m.submitted, m.succeeded, m.failed), (200, 200, 0));
    assert!(m.batch_size.max <= 8);
    assert!(m.batches >= 25);
    assert_eq!(m.end_to_end.count, 200);
    assert!(m.throughput_per_sec > 0.0);
}

#[test]
fn handles_are_futures_and_can_be_polled() {
    let rec = Recorder::gated();
    let b = batcher(rec.clone(), 1, 4);
    let mut h = b.submit(Job::double(21)).unwrap();
    assert!(h.try_get().is_none());
    assert!(h.wait_timeout(Duration::from_millis(5)).is_none());
    rec.gate.open();
    assert_eq!(block_on(&mut h), Ok(42));
    assert_eq!(h.try_get(), Some(Err(BatchError::AlreadyTaken)));
    let h2 = b.submit(Job::double(5)).unwrap();
    assert_eq!(block_on(h2), Ok(10));
}

#[test]
fn batches_form_in_priority_order_fifo_within_a_level() {
    let rec = Recorder::open();
    let b = Batcher::builder(rec.clone())
        .workers(0)
        .fixed(3)
        .queue(QueueConfig {
            aging: None,
            ..QueueConfig::default()
        })
        .build()
        .unwrap();
    let plan = [
        (0, Priority::Low),
        (1, Priority::Normal),
        (2, Priority::Urgent),
        (3, Priority::Low),
        (4, Priority::High),
        (5, Priority::Normal),
        (6, Priority::Urgent),
    ];
    let handles: Vec<_> = plan
        .iter()
        .map(|&(n, p)| {
            b.submit(Request::new(Job::double(n)).with_priority(p))
                .unwrap()
        })
        .collect();
    b.scale_workers(1);
    for h in handles {
        h.wait().unwrap();
    }
    assert_eq!(
        *rec.batches.lock(),
        vec![vec![2, 6, 4], vec![1, 5, 0], vec![3]]
    );
}

#[test]
fn requests_with_different_keys_never_share_a_batch() {
    let rec = Recorder::open();
    let b = batcher(rec.clone(), 1, 16);
    let handles: Vec<_> = (0..60)
        .map(|n| {
            b.submit(Job {
                n,
                class: n % 3,
                action: Action::Double,
            })
            .unwrap()
        })
        .collect();
    for h in handles {
        h.wait().unwrap();
    }
    for batch in rec.batches.lock().iter() {
        assert!(batch.iter().all(|n| n % 3 == batch[0] % 3), "{batch:?}");
    }
    assert_eq!(b.metrics().controllers.len(), 3);
}

#[test]
fn a_panicking_handler_fails_its_batch_and_the_worker_survives() {
    let rec = Recorder::open();
    let b = batcher(rec.clone(), 1, 4);
    let bad = b
        .submit(Job {
            n: 1,
            class: 0,
            action: Action::Panic,
        })
        .unwrap();
    match bad.wait() {
        Err(BatchError::HandlerPanicked { message }) => assert!(message.contains("boom on 1")),
        other => panic!("{other:?}"),
    }
    assert_eq!(b.process(Job::double(4)), Ok(8));
    let m = b.metrics();
    assert_eq!((m.panics, m.workers), (1, 1));
    let failing = b
        .submit(Job {
            n: 3,
            class: 0,
            action: Action::Fail,
        })
        .unwrap();
    assert_eq!(failing.wait(), Err(BatchError::Handler("refused 3".into())));
}

#[test]
fn a_wrong_result_count_is_a_typed_error() {
    struct Short;
    impl switchyard_batch::BatchHandler for Short {
        type Input = u8;
        type Output = u8;
        type Error = ();
        fn run(
            &self,
            batch: &mut [u8],
            _: &switchyard_batch::BatchContext<'_>,
        ) -> Vec<Result<u8, ()>> {
            batch.iter().skip(1).map(|x| Ok(*x)).collect()
        }
    }
    let b = Batcher::builder(Short).build().unwrap();
    assert_eq!(
        b.process(7),
        Err(BatchError::ResultCount {
            expected: 1,
            got: 0
        })
    );
    assert_eq!(b.metrics().miscounted, 1);
}

#[test]
fn a_full_queue_refuses_at_once_and_hands_the_request_back() {
    let rec = Recorder::gated();
    let b = Batcher::builder(rec.clone())
        .workers(0)
        .queue(QueueConfig {
            capacity: 3,
            per_key_capacity: 2,
            aging: None,
        })
        .build()
        .unwrap();
    let _a = b.submit(Job::double(1)).unwrap();
    let _b = b.submit(Job::double(2)).unwrap();
    let refused = b
        .submit(Request::new(Job::double(3)).with_priority(Priority::High))
        .unwrap_err();
    assert_eq!(
        refused.error,
        BatchError::QueueFull {
            scope: QueueScope::Key,
            capacity: 2
        }
    );
    assert_eq!(refused.request.input().n, 3);
    assert_eq!(refused.request.priority(), Priority::High);
    let _c = b
        .submit(Job {
            n: 4,
            class: 1,
            action: Action::Double,
        })
        .unwrap();
    let refused = b
        .submit(Job {
            n: 5,
            class: 2,
            action: Action::Double,
        })
        .unwrap_err();
    assert_eq!(
        refused.error,
        BatchError::QueueFull {
            scope: QueueScope::Global,
            capacity: 3
        }
    );
    assert_eq!(b.metrics().rejected, 2);
}

#[test]
fn expired_requests_time_out_and_never_run() {
    let clock = ManualClock::new();
    let rec = Recorder::gated();
    let b = Batcher::builder(rec.clone())
        .clock(clock.shared())
        .workers(1)
        .fixed(1)
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    // The first request occupies the only worker at the gate.
    let first = b.submit(Job::double(1)).unwrap();
    rec.gate.await_waiting(1);
    let late = b
        .submit(Request::new(Job::double(2)).with_timeout(Duration::from_millis(50)))
        .unwrap();
    let fine = b
        .submit(Request::new(Job::double(3)).with_timeout(Duration::from_secs(60)))
        .unwrap();
    clock.advance(Duration::from_millis(100));
    rec.gate.open();
    assert_eq!(first.wait(), Ok(2));
    assert_eq!(late.wait(), Err(BatchError::TimedOut));
    assert_eq!(fine.wait(), Ok(6));
    assert!(!rec.seen().contains(&2));
    assert_eq!(b.metrics().timed_out, 1);
    // Already expired at submission: refused, handed back.
    let refused = b
        .submit(Request::new(Job::double(9)).with_timeout(Duration::ZERO))
        .unwrap_err();
    assert_eq!(refused.error, BatchError::TimedOut);
}

#[test]
fn a_blocking_wait_fails_at_the_deadline_while_workers_are_busy() {
    let rec = Recorder::gated();
    let b = batcher(rec.clone(), 1, 1);
    let first = b.submit(Job::double(1)).unwrap();
    rec.gate.await_waiting(1);
    let late = b
        .submit(Request::new(Job::double(2)).with_timeout(Duration::from_millis(20)))
        .unwrap();
    assert_eq!(late.wait(), Err(BatchError::TimedOut));
    rec.gate.open();
    assert_eq!(first.wait(), Ok(2));
    assert_eq!(b.process(Job::double(3)), Ok(6));
    assert!(!rec.seen().contains(&2));
}

#[test]
fn cancelling_queued_requests_by_handle_id_or_drop() {
    let rec = Recorder::open();
    let b = Batcher::builder(rec.clone()).workers(0).build().unwrap();
    let by_handle = b.submit(Job::double(1)).unwrap();
    let by_id = b.submit(Job::double(2)).unwrap();
    let dropped = b.submit(Job::double(3)).unwrap();
    let kept = b.submit(Job::double(4)).unwrap();
    by_handle.cancel();
    assert!(b.cancel(by_id.id()));
    drop(dropped);
    assert_eq!(b.queue_stats().depth, 1);
    b.scale_workers(1);
    assert_eq!(kept.wait(), Ok(8));
    assert_eq!(by_handle.wait(), Err(BatchError::Cancelled));
    assert_eq!(by_id.wait(), Err(BatchError::Cancelled));
    assert_eq!(rec.seen(), vec![4]);
    assert_eq!(b.metrics().cancelled, 3);
}

#[test]
fn cancelling_a_running_request_sets_its_token() {
    let rec = Recorder::open();
    let b = batcher(rec.clone(), 1, 1);
    let h = b
        .submit(Job {
            n: 1,
            class: 0,
            action: Action::Slow(5_000),
        })
        .unwrap();
    while rec.running.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(b.cancel(h.id()));
    assert_eq!(h.wait(), Err(BatchError::Handler("stopped".into())));
    assert_eq!(rec.cancelled_seen.load(Ordering::SeqCst), 1);
    // Dropping the handle of a running request cancels it too.
    let h = b
        .submit(Job {
            n: 2,
            class: 0,
            action: Action::Slow(5_000),
        })
        .unwrap();
    while rec.running.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(h);
    assert_eq!(b.process(Job::double(3)), Ok(6));
    assert_eq!(rec.cancelled_seen.load(Ordering::SeqCst), 2);
}

#[test]
fn identical_queued_requests_coalesce_into_one_run() {
    let rec = Recorder::open();
    let b = Batcher::builder(rec.clone())
        .workers(0)
        .fixed(8)
        .coalescing()
        .build()
        .unwrap();
    let same: Vec<Handle<u64, String>> = (0..5)
        .map(|_| {
            b.submit(Request::new(Job::double(7)).with_coalescing(77))
                .unwrap()
        })
        .collect();
    let other = b
        .submit(Request::new(Job::double(8)).with_coalescing(88))
        .unwrap();
    let plain = b.submit(Job::double(7)).unwrap();
    // One follower leaves before the run; the others still get the result.
    let mut same = same.into_iter();
    let leader = same.next().unwrap();
    leader.cancel();
    b.scale_workers(1);
    assert_eq!(leader.wait(), Err(BatchError::Cancelled));
    for h in same {
        assert_eq!(h.wait(), Ok(14));
    }
    assert_eq!(other.wait(), Ok(16));
    assert_eq!(plain.wait(), Ok(14));
    let mut seen = rec.seen();
    seen.sort();
    assert_eq!(seen, vec![7, 7, 8]);
    assert_eq!(b.metrics().coalesced, 4);
}

#[test]
fn scale_workers_up_and_down_under_load() {
    let rec = Recorder::open();
    let b = batcher(rec.clone(), 1, 2);
    let slow = |n| Job {
        n,
        class: 0,
        action: Action::Slow(3),
    };
    let mut handles: Vec<_> = (0..40).map(|n| b.submit(slow(n)).unwrap()).collect();
    b.scale_workers(4);
    handles.extend((40..80).map(|n| b.submit(slow(n)).unwrap()));
    for h in handles.drain(..) {
        h.wait().unwrap();
    }
    assert!(rec.peak_running.load(Ordering::SeqCst) >= 2);
    b.scale_workers(1);
    while b.workers() > 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    rec.peak_running.store(0, Ordering::SeqCst);
    let handles: Vec<_> = (80..100).map(|n| b.submit(slow(n)).unwrap()).collect();
    for h in handles {
        h.wait().unwrap();
    }
    assert_eq!(rec.peak_running.load(Ordering::SeqCst), 1);
    assert_eq!(b.metrics().succeeded, 100);
}

#[test]
fn shutdown_fails_queued_work_or_drains_it() {
    let rec = Recorder::gated();
    let b = batcher(rec.clone(), 1, 1);
    let running = b.submit(Job::double(1)).unwrap();
    rec.gate.await_waiting(1);
    let queued = b.submit(Job::double(2)).unwrap();
    let opener = {
        let rec = rec.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            rec.gate.open();
        })
    };
    b.shutdown(ShutdownMode::FailQueued);
    opener.join().unwrap();
    assert_eq!(running.wait(), Ok(2));
    assert_eq!(queued.wait(), Err(BatchError::ShuttingDown));
    let refused = b.submit(Job::double(3)).unwrap_err();
    assert_eq!(refused.error, BatchError::ShuttingDown);

    let rec = Recorder::open();
    let b = Batcher::builder(rec.clone()).workers(0).build().unwrap();
    let handles: Vec<_> = (0..10).map(|n| b.submit(Job::double(n)).unwrap()).collect();
    b.scale_workers(1);
    b.shutdown(ShutdownMode::Drain);
    for (n, h) in handles.into_iter().enumerate() {
        assert_eq!(h.wait(), Ok(n as u64 * 2));
    }
}

#[test]
fn a_lone_request_runs_after_max_wait_without_company() {
    let rec = Recorder::open();
    let b = Batcher::builder(rec.clone())
        .fixed(64)
        .max_wait(Duration::from_millis(3))
        .build()
        .unwrap();
    assert_eq!(b.process(Job::double(11)), Ok(22));
    assert_eq!(b.metrics().batch_size.max, 1);
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Batcher<Arc<Recorder>>>();
    check::<Handle<u64, String>>();
    check::<BatchError<String>>();
    check::<switchyard_batch::MetricsSnapshot>();
    check::<switchyard_batch::PriorityQueue<u64>>();
}

#[test]
fn a_yield_gate_holds_less_urgent_batches_while_urgent_work_is_under_way() {
    use switchyard_batch::YieldGate;
    let gate = YieldGate::new(Priority::Urgent);
    let rec = Recorder::open();
    let b = Batcher::builder(rec.clone())
        .workers(1)
        .fixed(4)
        .max_wait(Duration::from_millis(1))
        .yield_gate(Arc::clone(&gate))
        .build()
        .unwrap();
    // Urgent work elsewhere on the device (another model's request).
    let elsewhere = gate.enter(Priority::Urgent);
    let low = b
        .submit(Request::new(Job::double(1)).with_priority(Priority::Low))
        .unwrap();
    let normal = b
        .submit(Request::new(Job::double(2)).with_priority(Priority::Normal))
        .unwrap();
    // Urgent requests still run at once.
    let urgent = b
        .submit(Request::new(Job::double(3)).with_priority(Priority::Urgent))
        .unwrap();
    assert_eq!(urgent.wait().unwrap(), 6);
    std::thread::sleep(Duration::from_millis(50));
    // Queued requests count on the gate until answered.
    assert_eq!(gate.active(), [1, 0, 1, 1]);
    assert_eq!(
        rec.seen(),
        vec![3],
        "held while the urgent work is under way"
    );
    drop(elsewhere);
    assert_eq!(normal.wait().unwrap(), 4);
    assert_eq!(low.wait().unwrap(), 2);
    assert_eq!(rec.seen(), vec![3, 2, 1]);
    assert_eq!(gate.active(), [0; 4]);
}

#[test]
fn a_long_batch_pauses_at_its_yield_points_for_other_pipelines_only() {
    use switchyard_batch::YieldGate;
    let gate = YieldGate::new(Priority::Urgent);
    let rec = Recorder::open();
    let b = Batcher::builder(rec.clone())
        .workers(1)
        .fixed(1)
        .max_wait(Duration::from_millis(1))
        .yield_gate(Arc::clone(&gate))
        .build()
        .unwrap();
    let slow = |n, ms| Job {
        n,
        class: 0,
        action: Action::Slow(ms),
    };
    // Urgent work of another pipeline arrives mid-batch: the batch stops
    // at its next step until that ends.
    let low = b
        .submit(Request::new(slow(1, 40)).with_priority(Priority::Low))
        .unwrap();
    while rec.running.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elsewhere = gate.enter(Priority::Urgent);
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        !low.is_finished(),
        "paused while the other pipeline's work ran"
    );
    drop(elsewhere);
    assert_eq!(low.wait().unwrap(), 2);
    // An Urgent request queued on this batcher runs at once on the
    // batcher's urgent lane, beside the running batch (which does not
    // pause for work of its own pipeline).
    let low = b
        .submit(Request::new(slow(2, 400)).with_priority(Priority::Low))
        .unwrap();
    while rec.running.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let urgent = b
        .submit(Request::new(Job::double(3)).with_priority(Priority::Urgent))
        .unwrap();
    assert_eq!(urgent.wait().unwrap(), 6);
    assert!(!low.is_finished(), "the urgent request did not wait");
    assert_eq!(low.wait().unwrap(), 4);
    assert_eq!(gate.active(), [0; 4]);
}

#[test]
fn batches_the_gate_may_hold_run_on_background_threads() {
    use switchyard_batch::YieldGate;
    let batcher = |gate: &Arc<YieldGate>| {
        let rec = Recorder::open();
        let b = Batcher::builder(rec.clone())
            .workers(1)
            .fixed(1)
            .max_wait(Duration::from_millis(1))
            .yield_gate(Arc::clone(gate))
            .build()
            .unwrap();
        (rec, b)
    };
    let gate = YieldGate::new(Priority::Urgent);
    let (rec, b) = batcher(&gate);
    // Before any urgent request, everything runs on the workers.
    let low = Request::new(Job::double(9)).with_priority(Priority::Low);
    assert_eq!(b.process(low), Ok(18));
    assert!(rec.threads.lock().remove(0).starts_with("switchyard-batch"));
    drop(gate.enter(Priority::Urgent));
    for (n, p) in [
        (1, Priority::Low),
        (2, Priority::Urgent),
        (3, Priority::Normal),
    ] {
        assert_eq!(
            b.process(Request::new(Job::double(n)).with_priority(p)),
            Ok(n * 2)
        );
    }
    let threads = rec.threads.lock().clone();
    assert!(threads[0].starts_with("switchyard-bg-"), "{threads:?}");
    assert!(threads[1].starts_with("switchyard-batch"), "{threads:?}");
    assert!(threads[2].starts_with("switchyard-bg-"), "{threads:?}");
    // A gate at Normal holds only Low work; a gate without background
    // threads keeps everything on the workers.
    let gate = YieldGate::new(Priority::Normal);
    drop(gate.enter(Priority::Normal));
    let (rec, b) = batcher(&gate);
    assert_eq!(
        b.process(Request::new(Job::double(1)).with_priority(Priority::Normal)),
        Ok(2)
    );
    assert_eq!(
        b.process(Request::new(Job::double(2)).with_priority(Priority::Low)),
        Ok(4)
    );
    let threads = rec.threads.lock().clone();
    assert!(threads[0].starts_with("switchyard-batch") && threads[1].starts_with("switchyard-bg-"));
    let gate = YieldGate::with_background(Priority::Urgent, false);
    drop(gate.enter(Priority::Urgent));
    let (rec, b) = batcher(&gate);
    assert_eq!(
        b.process(Request::new(Job::double(1)).with_priority(Priority::Low)),
        Ok(2)
    );
    assert!(rec.threads.lock()[0].starts_with("switchyard-batch"));
}
