//! Property: under random interleavings of submit, cancel, drop, clock
//! advances and runs, every request ends exactly once, with its own result,
//! and batches form in priority order, FIFO within a level.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Job, Recorder};
use proptest::prelude::*;
use switchyard_batch::{BatchError, Batcher, Handle, QueueConfig, Request};
use switchyard_core::{ManualClock, Priority};

#[derive(Debug, Clone)]
enum Op {
    Submit {
        level: u8,
        class: u8,
        timeout_ms: Option<u8>,
    },
    Cancel(usize),
    Drop(usize),
    CancelById(usize),
    Advance(u8),
    Run,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 0u8..2, proptest::option::of(1u8..40))
            .prop_map(|(level, class, timeout_ms)| Op::Submit { level, class, timeout_ms }),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => any::<usize>().prop_map(Op::CancelById),
        1 => (1u8..30).prop_map(Op::Advance),
        1 => Just(Op::Run),
    ]
}

#[derive(Debug, PartialEq)]
enum End {
    Value(u64),
    Cancelled,
    TimedOut,
    Rejected,
}

struct Live {
    n: u64,
    class: u8,
    handle: Option<Handle<u64, String>>,
    deadline_ms: Option<u64>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn every_request_ends_exactly_once(ops in proptest::collection::vec(op(), 1..80)) {
        let clock = ManualClock::new();
        let rec = Recorder::open();
        let b = Batcher::builder(rec.clone())
            .clock(clock.shared())
            .workers(0)
            .fixed(3)
            .max_wait(Duration::ZERO)
            .queue(QueueConfig { capacity: 12, per_key_capacity: 8, aging: None })
            .build()
            .unwrap();
        let mut now_ms = 0u64;
        let mut next = 0u64;
        let mut live: Vec<Live> = Vec::new();
        let mut ends: HashMap<u64, End> = HashMap::new();
        let mut expected: HashMap<u64, End> = HashMap::new();
        let mut meta: HashMap<u64, (u8, u8)> = HashMap::new();

        let run = |live: &mut Vec<Live>, ends: &mut HashMap<u64, End>, expected: &mut HashMap<u64, End>, now_ms: u64| {
            let before = rec.batches.lock().len();
            b.scale_workers(1);
            for l in live.drain(..) {
                let outcome = l.handle.unwrap().wait();
                let end = match outcome {
                    Ok(v) => End::Value(v),
                    Err(BatchError::Cancelled) => End::Cancelled,
                    Err(BatchError::TimedOut) => End::TimedOut,
                    Err(e) => panic!("unexpected {e:?}"),
                };
                let want = if l.deadline_ms.is_some_and(|d| now_ms >= d) { End::TimedOut } else { End::Value(l.n * 2) };
                assert!(ends.insert(l.n, end).is_none());
                expected.insert(l.n, want);
            }
            b.scale_workers(0);
            while b.workers() > 0 {
                std::thread::yield_now();
            }
            before
        };

        for op in ops {
            match op {
                Op::Submit { level, class, timeout_ms } => {
                    let n = next;
                    next += 1;
                    let p = Priority::from_rank(level as usize).unwrap();
                    let mut req = Request::new(Job { n, class: class as u64, action: common::Action::Double }).with_priority(p);
                    if let Some(t) = timeout_ms {
                        req = req.with_timeout(Duration::from_millis(t as u64));
                    }
                    let per_key = live.iter().filter(|l| l.class == class).count();
                    match b.submit(req) {
                        Ok(handle) => {
                            prop_assert!(live.len() < 12 && per_key < 8);
                            meta.insert(n, (class, level));
                            live.push(Live { n, class, handle: Some(handle), deadline_ms: timeout_ms.map(|t| now_ms + t as u64) });
                        }
                        Err(refused) => {
                            prop_assert!(live.len() >= 12 || per_key >= 8, "{:?}", refused.error);
                            prop_assert_eq!(refused.request.input().n, n);
                            ends.insert(n, End::Rejected);
                            expected.insert(n, End::Rejected);
                        }
                    }
                }
                Op::Cancel(i) | Op::Drop(i) | Op::CancelById(i) if !live.is_empty() => {
                    let l = live.remove(i % live.len());
                    let handle = l.handle.unwrap();
                    match op {
                        Op::Cancel(_) => {
                            handle.cancel();
                            let end = match handle.wait() {
                                Err(BatchError::Cancelled) => End::Cancelled,
                                other => panic!("{other:?}"),
                            };
                            ends.insert(l.n, end);
                        }
                        Op::CancelById(_) => {
                            prop_assert!(b.cancel(handle.id()));
                            prop_assert_eq!(handle.wait(), Err(BatchError::Cancelled));
                            ends.insert(l.n, End::Cancelled);
                        }
                        _ => {
                            drop(handle);
                            ends.insert(l.n, End::Cancelled);
                        }
                    }
                    expected.insert(l.n, End::Cancelled);
                }
                Op::Advance(ms) => {
                    clock.advance(Duration::from_millis(ms as u64));
                    now_ms += ms as u64;
                }
                Op::Run => {
                    let before = run(&mut live, &mut ends, &mut expected, now_ms);
                    // Within one run (nothing arrives meanwhile) each key's
                    // requests are served in (priority, arrival) order.
                    let batches = rec.batches.lock();
                    let mut by_class: HashMap<u8, Vec<(u8, u64)>> = HashMap::new();
                    for batch in &batches[before..] {
                        prop_assert!(batch.len() <= 3);
                        let class = meta[&batch[0]].0;
                        for n in batch {
                            let (c, level) = meta[n];
                            prop_assert_eq!(c, class, "keys mixed in {:?}", batch);
                            by_class.entry(c).or_default().push((level, *n));
                        }
                    }
                    for order in by_class.values() {
                        prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "{:?}", order);
                    }
                    drop(batches);
                }
                _ => {}
            }
        }
        run(&mut live, &mut ends, &mut expected, now_ms);
        prop_assert_eq!(ends.len() as u64, next);
        prop_assert_eq!(&ends, &expected);
        // Nothing ran twice, and nothing that was cancelled, refused or timed out ran.
        let seen = rec.seen();
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), seen.len());
        for n in seen {
            prop_assert!(matches!(expected[&n], End::Value(_)), "{} ran but ended {:?}", n, expected[&n]);
        }
        let m = b.metrics();
        let by_kind = |k: fn(&End) -> bool| expected.values().filter(|e| k(e)).count() as u64;
        prop_assert_eq!(m.succeeded, by_kind(|e| matches!(e, End::Value(_))));
        prop_assert_eq!(m.rejected, by_kind(|e| matches!(e, End::Rejected)));
        prop_assert_eq!(m.timed_out, by_kind(|e| matches!(e, End::TimedOut)));
        prop_assert_eq!(m.cancelled, by_kind(|e| matches!(e, End::Cancelled)));
    }
}
