use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn obs(size: usize, target: usize, latency_ms: f64) -> BatchObservation {
    BatchObservation {
        size,
        cost: size as u64,
        latency: Duration::from_secs_f64(latency_ms / 1e3),
        target,
        queued_after: 0,
    }
}

/// Batches of n take a + b*n ms; drive `steps` full batches.
fn drive(pid: &mut Pid, a: f64, b: f64, steps: usize) -> Vec<usize> {
    (0..steps)
        .map(|_| {
            let n = pid.target();
            pid.observe(&obs(n, n, a + b * n as f64))
        })
        .collect()
}

#[test]
fn converges_to_the_size_that_meets_the_setpoint() {
    for (a, b, want) in [(20.0, 2.0, 40usize), (0.0, 25.0, 4), (5.0, 0.5, 190)] {
        let mut config = PidConfig::new(Duration::from_millis(100), 256);
        config.max_step = 32;
        let mut pid = Pid::new(config).unwrap();
        let trace = drive(&mut pid, a, b, 200);
        let last = *trace.last().unwrap();
        assert!(last.abs_diff(want) <= 2, "a={a} b={b}: {trace:?}");
    }
}

#[test]
fn rate_limit_bounds_every_step() {
    let mut config = PidConfig::new(Duration::from_millis(100), 64);
    config.max_step = 3;
    config.initial = 1;
    let mut pid = Pid::new(config).unwrap();
    let mut prev = pid.target();
    for n in drive(&mut pid, 1.0, 0.1, 120) {
        assert!(n.abs_diff(prev) <= 3);
        prev = n;
    }
    assert_eq!(prev, 64);
}

#[test]
fn integral_does_not_wind_up_at_max_or_when_demand_limits_batches() {
    let mut pid = Pid::new(PidConfig::new(Duration::from_millis(100), 16)).unwrap();
    // Very fast plant: the output saturates at max for a long time.
    drive(&mut pid, 1.0, 0.1, 500);
    assert_eq!(pid.target(), 16);
    assert!(pid.state().i <= 16.0);
    // Then the plant becomes slow: the target must come down within a few batches.
    let trace = drive(&mut pid, 20.0, 20.0, 12);
    assert!(trace.last().copied().unwrap() <= 5, "{trace:?}");

    // Demand-limited: batches of 2 against a target of 8, far under the setpoint.
    let mut pid = Pid::new(PidConfig::new(Duration::from_millis(100), 64)).unwrap();
    let before = pid.state().i;
    for _ in 0..100 {
        let t = pid.target();
        pid.observe(&obs(2.min(t), t, 5.0));
    }
    assert_eq!(pid.state().i, before, "integral moved while demand-limited");
}

#[test]
fn derivative_acts_on_measurement_so_setpoint_changes_do_not_kick() {
    let mut pid = Pid::new(PidConfig::new(Duration::from_millis(100), 64)).unwrap();
    drive(&mut pid, 20.0, 2.0, 100);
    let settled = pid.state();
    pid.set_setpoint(Duration::from_millis(50));
    let n = pid.target();
    pid.observe(&obs(n, n, 20.0 + 2.0 * n as f64));
    // The measurement did not change, so D stays ~0 although the error jumped.
    assert!(
        pid.state().d.abs() < 1e-9 + settled.d.abs(),
        "{:?}",
        pid.state()
    );
    assert!(pid.state().p < 0.0);
    let trace = drive(&mut pid, 20.0, 2.0, 200);
    assert!(trace.last().unwrap().abs_diff(15) <= 1, "{trace:?}");
}

#[test]
fn memory_clamp_caps_at_once() {
    let headroom = Arc::new(AtomicU64::new(1 << 30));
    let source = Arc::clone(&headroom);
    let mut config = PidConfig::new(Duration::from_millis(100), 64);
    config.memory = Some(MemoryClamp::new(
        Arc::new(move || source.load(Ordering::Relaxed)),
        1 << 20,
    ));
    let mut pid = Pid::new(config).unwrap();
    drive(&mut pid, 1.0, 0.1, 100);
    assert_eq!(pid.target(), 64);
    // Only 5 MiB left: 5 items of 1 MiB, applied past the rate limit.
    headroom.store(5 << 20, Ordering::Relaxed);
    let n = pid.target();
    pid.observe(&obs(n, n, 5.0));
    assert_eq!(pid.target(), 5);
    assert_eq!(pid.state().memory_cap, Some(5));
    assert!(pid.state().i <= 5.0);
}

#[test]
fn per_item_mode_grows_batches_when_items_are_slow() {
    let mut config = PidConfig::new(Duration::from_millis(3), 64);
    config.mode = LatencyMode::PerItem;
    config.initial = 2;
    let mut pid = Pid::new(config).unwrap();
    // Per-item latency (20 + 2n)/n falls towards 2 ms: 3 ms needs n = 20.
    let trace = drive(&mut pid, 20.0, 2.0, 200);
    assert!(trace.last().unwrap().abs_diff(20) <= 2, "{trace:?}");
}

#[test]
fn invalid_configs_are_refused() {
    let base = PidConfig::new(Duration::from_millis(10), 8);
    type Breaker = fn(&mut PidConfig);
    let cases: [(&str, Breaker); 5] = [
        ("setpoint", |c| c.setpoint = Duration::ZERO),
        ("kp", |c| c.kp = f64::NAN),
        ("ewma_alpha", |c| c.ewma_alpha = 0.0),
        ("min", |c| c.min = 9),
        ("max_step", |c| c.max_step = 0),
    ];
    for (field, break_it) in cases {
        let mut c = base.clone();
        break_it(&mut c);
        match Pid::new(c) {
            Err(BatchError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}
