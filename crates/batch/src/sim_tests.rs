use super::*;
use crate::{Fixed, Pid, PidConfig};

fn step_config() -> SimConfig {
    // a = 20 ms, b = 2 ms: a 100 ms target allows batches of 40 (400 req/s).
    SimConfig {
        service: ServiceModel {
            jitter: 0.03,
            ..ServiceModel::new(Duration::from_millis(20), Duration::from_millis(2))
        },
        arrivals: Arrivals::Step {
            before: 240.0,
            after: 480.0,
            at: Duration::from_secs(60),
        },
        duration: Duration::from_secs(120),
        max_wait: Duration::from_millis(5),
        seed: 11,
    }
}

#[test]
fn traces_are_deterministic_and_follow_the_rate() {
    let a = Arrivals::Step {
        before: 100.0,
        after: 200.0,
        at: Duration::from_secs(50),
    };
    let trace = a.trace(Duration::from_secs(100), 3);
    assert_eq!(trace, a.trace(Duration::from_secs(100), 3));
    assert_ne!(trace, a.trace(Duration::from_secs(100), 4));
    let before = trace
        .iter()
        .filter(|t| **t < Duration::from_secs(50))
        .count();
    let after = trace.len() - before;
    assert!((4500..5500).contains(&before), "{before}");
    assert!((9000..11000).contains(&after), "{after}");
    assert!(trace.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn fixed_size_batches_take_the_model_time() {
    let config = SimConfig {
        arrivals: Arrivals::Poisson { rate: 1000.0 },
        duration: Duration::from_secs(10),
        ..SimConfig::default()
    };
    let report = simulate(&config, &mut Fixed::new(10));
    // Overloaded: every batch is full, 10 per 40 ms = 250/s.
    assert_eq!(report.batch_size.p50, 10);
    assert_eq!(report.batch_latency.p99, Duration::from_millis(40));
    assert!(
        (report.throughput_per_sec - 250.0).abs() < 2.0,
        "{}",
        report.throughput_per_sec
    );
    assert_eq!(report.batch_latency_p99_by_phase.len(), 1);
}

#[test]
fn pid_holds_its_target_through_a_load_step() {
    let config = step_config();
    let target = Duration::from_millis(100);
    let mut pid = Pid::new(PidConfig::new(target, 64)).unwrap();
    let report = simulate(&config, &mut pid);
    let limit = target.mul_f64(1.1);
    for p99 in &report.batch_latency_p99_by_phase {
        assert!(*p99 <= limit, "{report:#?}");
    }
    let best_fixed = (1..=64)
        .map(|n| simulate(&config, &mut Fixed::new(n)))
        .filter(|r| r.batch_latency.p99 <= limit)
        .map(|r| r.throughput_per_sec)
        .fold(0.0, f64::max);
    eprintln!(
        "pid {:.1}/s p99 {:?}, best fixed {best_fixed:.1}/s",
        report.throughput_per_sec, report.batch_latency_p99_by_phase
    );
    assert!(report.throughput_per_sec >= 0.95 * best_fixed);
}
