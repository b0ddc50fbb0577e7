use super::*;
use proptest::prelude::*;

fn entry(n: u64, p: Priority, at: Instant) -> Queued<u64> {
    Queued::new(RequestId::from_u64(n), p, 1, at, n)
}

fn ids(taken: &[Queued<u64>]) -> Vec<u64> {
    taken.iter().map(|e| e.payload).collect()
}

#[test]
fn priority_first_then_fifo_within_a_level() {
    let mut q = PriorityQueue::new(QueueConfig {
        aging: None,
        ..QueueConfig::default()
    });
    let key = BatchKey::default();
    let t = Instant::now();
    let levels = [
        Priority::Low,
        Priority::Normal,
        Priority::Urgent,
        Priority::Normal,
        Priority::High,
        Priority::Urgent,
    ];
    for (n, p) in levels.into_iter().enumerate() {
        q.push(&key, entry(n as u64, p, t)).unwrap();
    }
    let taken = q.take_batch(&key, 4, u64::MAX, t);
    assert_eq!(ids(&taken.batch), [2, 5, 4, 1]);
    assert_eq!(ids(&q.take_batch(&key, 9, u64::MAX, t).batch), [3, 0]);
    assert!(q.is_empty());
}

#[test]
fn aging_promotes_a_waiting_low_request() {
    let mut q = PriorityQueue::new(QueueConfig {
        aging: Some(Duration::from_secs(1)),
        ..QueueConfig::default()
    });
    let key = BatchKey::default();
    let t0 = Instant::now();
    q.push(&key, entry(0, Priority::Low, t0)).unwrap();
    let later = t0 + Duration::from_millis(2500);
    q.push(&key, entry(1, Priority::Normal, later)).unwrap();
    // Low waited 2.5 s: promoted twice, to High, ahead of the fresh Normal.
    assert_eq!(ids(&q.take_batch(&key, 1, u64::MAX, later).batch), [0]);
    // Without the wait it would have come last.
    q.push(&key, entry(2, Priority::Low, later)).unwrap();
    assert_eq!(ids(&q.take_batch(&key, 2, u64::MAX, later).batch), [1, 2]);
}

#[test]
fn capacity_global_and_per_key_refuse_and_hand_back() {
    let mut q = PriorityQueue::new(QueueConfig {
        capacity: 3,
        per_key_capacity: 2,
        aging: None,
    });
    let (a, b) = (BatchKey::new("a", 0), BatchKey::new("b", 0));
    let t = Instant::now();
    q.push(&a, entry(0, Priority::Normal, t)).unwrap();
    q.push(&a, entry(1, Priority::Normal, t)).unwrap();
    let (err, back) = q.push(&a, entry(2, Priority::Normal, t)).unwrap_err();
    assert_eq!(
        err,
        BatchError::QueueFull {
            scope: QueueScope::Key,
            capacity: 2
        }
    );
    assert_eq!(back.payload, 2);
    q.push(&b, entry(3, Priority::Normal, t)).unwrap();
    let (err, _) = q.push(&b, entry(4, Priority::Normal, t)).unwrap_err();
    assert_eq!(
        err,
        BatchError::QueueFull {
            scope: QueueScope::Global,
            capacity: 3
        }
    );
    assert_eq!(q.len(), 3);
}

#[test]
fn keys_never_mix_and_best_key_is_the_most_urgent() {
    let mut q = PriorityQueue::new(QueueConfig::default());
    let (a, b) = (BatchKey::new("m", 1), BatchKey::new("m", 2));
    let t = Instant::now();
    q.push(&a, entry(0, Priority::Normal, t)).unwrap();
    q.push(&b, entry(1, Priority::High, t)).unwrap();
    q.push(&a, entry(2, Priority::Urgent, t)).unwrap();
    let (best, summary) = q.best_key(t, |_, _| true).unwrap();
    assert_eq!(best, &a);
    assert_eq!((summary.len, summary.best_rank), (2, 0));
    let (best, _) = q.best_key(t, |k, _| k != &a).unwrap();
    assert_eq!(best, &b);
    assert_eq!(ids(&q.take_batch(&a, 10, u64::MAX, t).batch), [2, 0]);
    assert_eq!(q.key_load(&b), (1, 1));
}

#[test]
fn cost_budget_stops_before_overflow_but_one_big_request_runs() {
    let mut q = PriorityQueue::new(QueueConfig::default());
    let key = BatchKey::default();
    let t = Instant::now();
    for (n, cost) in [(0u64, 60u64), (1, 30), (2, 20), (3, 500)] {
        q.push(
            &key,
            Queued::new(RequestId::from_u64(n), Priority::Normal, cost, t, n),
        )
        .unwrap();
    }
    assert_eq!(ids(&q.take_batch(&key, 10, 100, t).batch), [0, 1]);
    assert_eq!(ids(&q.take_batch(&key, 10, 100, t).batch), [2]);
    assert_eq!(ids(&q.take_batch(&key, 10, 100, t).batch), [3]);
}

#[test]
fn expired_entries_are_taken_out_not_batched() {
    let mut q = PriorityQueue::new(QueueConfig::default());
    let key = BatchKey::default();
    let t = Instant::now();
    let mut late = entry(0, Priority::Normal, t);
    late.deadline = Some(Deadline::at(t + Duration::from_millis(5)));
    q.push(&key, late).unwrap();
    let mut later = entry(1, Priority::Normal, t);
    later.deadline = Some(Deadline::at(t + Duration::from_secs(5)));
    q.push(&key, later).unwrap();
    q.push(&key, entry(2, Priority::Normal, t)).unwrap();
    assert!(q.has_deadlines());
    let now = t + Duration::from_millis(10);
    let taken = q.take_batch(&key, 2, u64::MAX, now);
    assert_eq!(ids(&taken.expired), [0]);
    assert_eq!(ids(&taken.batch), [1, 2]);
    assert!(!q.has_deadlines());

    let mut e = entry(3, Priority::Low, t);
    e.deadline = Some(Deadline::at(t));
    q.push(&key, e).unwrap();
    q.push(&key, entry(4, Priority::Low, t)).unwrap();
    assert_eq!(ids(&q.take_expired(now)), [3]);
    assert_eq!(q.len(), 1);
}

#[test]
fn removal_by_position_and_by_id() {
    let mut q = PriorityQueue::new(QueueConfig::default());
    let (a, b) = (BatchKey::new("a", 0), BatchKey::new("b", 0));
    let t = Instant::now();
    let p0 = q.push(&a, entry(0, Priority::Normal, t)).unwrap();
    let p1 = q.push(&b, entry(1, Priority::Low, t)).unwrap();
    q.push(&a, entry(2, Priority::Normal, t)).unwrap();
    assert_eq!(q.remove_at(p1).map(|e| e.payload), Some(1));
    assert!(q.remove_at(p1).is_none());
    assert_eq!(q.find_at_mut(p0).map(|(k, _)| k.clone()), Some(a.clone()));
    assert_eq!(
        q.remove_id(RequestId::from_u64(2)).map(|e| e.payload),
        Some(2)
    );
    assert!(q.remove_id(RequestId::from_u64(2)).is_none());
    assert_eq!(q.len(), 1);
    let stats = q.stats(t + Duration::from_secs(1));
    assert_eq!(stats.depth, 1);
    assert_eq!(stats.depth_by_priority, [0, 0, 1, 0]);
    assert_eq!(stats.keys.len(), 1);
    assert_eq!(stats.oldest_wait, Some(Duration::from_secs(1)));
    assert_eq!(q.drain().len(), 1);
    assert!(q.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        key: u8,
        level: u8,
        deadline_ms: Option<u8>,
    },
    Remove(usize),
    Take {
        key: u8,
        max: u8,
        cost: u8,
    },
    Expire,
    Tick(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u8..4, proptest::option::of(0u8..50)).prop_map(|(key, level, deadline_ms)| Op::Push { key, level, deadline_ms }),
        1 => any::<usize>().prop_map(Op::Remove),
        2 => (0u8..3, 1u8..6, 1u8..8).prop_map(|(key, max, cost)| Op::Take { key, max, cost }),
        1 => Just(Op::Expire),
        1 => (0u8..30).prop_map(Op::Tick),
    ]
}

proptest! {
    /// Against a trivial oracle (a list): every entry leaves exactly once,
    /// batches follow priority then FIFO, never mix keys, respect size and
    /// cost limits, and never contain an expired entry.
    #[test]
    fn queue_matches_a_list_oracle(ops in proptest::collection::vec(op(), 1..120)) {
        let mut q = PriorityQueue::new(QueueConfig { capacity: 40, per_key_capacity: 20, aging: None });
        let t0 = Instant::now();
        let mut now = t0;
        // Oracle: (id, key, level, seq, deadline)
        let mut live: Vec<(u64, u8, u8, u64, Option<Instant>)> = Vec::new();
        let mut left = std::collections::HashSet::new();
        let mut next = 0u64;
        let mut accepted = 0usize;
        for op in ops {
            match op {
                Op::Push { key, level, deadline_ms } => {
                    let p = Priority::from_rank(level as usize).unwrap();
                    let mut e = Queued::new(RequestId::from_u64(next), p, 1 + next % 3, now, next);
                    let deadline = deadline_ms.map(|ms| now + Duration::from_millis(ms as u64));
                    e.deadline = deadline.map(Deadline::at);
                    let key_count = live.iter().filter(|x| x.1 == key).count();
                    match q.push(&BatchKey::new("k", key as u64), e) {
                        Ok(pos) => {
                            prop_assert!(live.len() < 40 && key_count < 20);
                            live.push((next, key, level, pos.seq, deadline));
                            accepted += 1;
                        }
                        Err((_, back)) => {
                            prop_assert!(live.len() >= 40 || key_count >= 20);
                            prop_assert_eq!(back.payload, next);
                        }
                    }
                    next += 1;
                }
                Op::Remove(i) => {
                    if !live.is_empty() {
                        let (id, ..) = live.remove(i % live.len());
                        let e = q.remove_id(RequestId::from_u64(id));
                        prop_assert_eq!(e.map(|e| e.payload), Some(id));
                        prop_assert!(left.insert(id));
                    }
                }
                Op::Take { key, max, cost } => {
                    let taken = q.take_batch(&BatchKey::new("k", key as u64), max as usize, cost as u64, now);
                    prop_assert!(taken.batch.len() <= max as usize);
                    let total: u64 = taken.batch.iter().map(|e| e.cost).sum();
                    prop_assert!(taken.batch.len() <= 1 || total <= cost as u64);
                    let mut last: Option<(u8, u64)> = None;
                    for e in &taken.batch {
                        let idx = live.iter().position(|x| x.0 == e.payload).unwrap();
                        let (id, k, level, seq, deadline) = live.remove(idx);
                        prop_assert_eq!(k, key);
                        prop_assert!(deadline.is_none_or(|d| now < d));
                        // Nothing more urgent (or older at the same level) was left behind
                        // except entries that come after in service order.
                        prop_assert!(!live.iter().any(|x| x.1 == key && (x.2, x.3) < (level, seq) && x.4.is_none_or(|d| now < d)));
                        if let Some(prev) = last { prop_assert!(prev < (level, seq)); }
                        last = Some((level, seq));
                        prop_assert!(left.insert(id));
                    }
                    for e in &taken.expired {
                        let idx = live.iter().position(|x| x.0 == e.payload).unwrap();
                        let (id, k, _, _, deadline) = live.remove(idx);
                        prop_assert_eq!(k, key);
                        prop_assert!(deadline.is_some_and(|d| now >= d));
                        prop_assert!(left.insert(id));
                    }
                }
                Op::Expire => {
                    for e in q.take_expired(now) {
                        let idx = live.iter().position(|x| x.0 == e.payload).unwrap();
                        let (id, _, _, _, deadline) = live.remove(idx);
                        prop_assert!(deadline.is_some_and(|d| now >= d));
                        prop_assert!(left.insert(id));
                    }
                    prop_assert!(!live.iter().any(|x| x.4.is_some_and(|d| now >= d)));
                }
                Op::Tick(ms) => now += Duration::from_millis(ms as u64),
            }
            prop_assert_eq!(q.len(), live.len());
        }
        let drained = q.drain();
        prop_assert_eq!(drained.len(), live.len());
        for e in drained {
            prop_assert!(left.insert(e.payload));
        }
        prop_assert_eq!(left.len(), accepted);
    }
}
