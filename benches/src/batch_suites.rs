//! The batcher's suites: `batch-overhead` (what the batcher costs per request
//! against a bare channel) and `pid-sim` (control quality on virtual time).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::thread;
use std::time::{Duration, Instant};

use switchyard::batch::sim::{Arrivals, ServiceModel, SimConfig, SimReport, simulate};
use switchyard::batch::{
    BatchContext, BatchHandler, Batcher, Fixed, Histogram, Pid, PidConfig, QueueConfig,
};

use crate::suites::SuiteResult;
use crate::{Report, median};

/// A handler that returns its inputs: what is left is the batcher's own cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl BatchHandler for Echo {
    type Input = u64;
    type Output = u64;
    type Error = Infallible;

    fn run(&self, batch: &mut [u64], _: &BatchContext<'_>) -> Vec<Result<u64, Infallible>> {
        batch.iter().map(|x| Ok(*x)).collect()
    }
}

/// The batch size the overhead figures use.
pub const BATCH: usize = 64;
/// Requests in flight at once in the throughput runs.
pub const WINDOW: usize = 4096;
/// `max_wait` in the overhead runs.
pub const MAX_WAIT: Duration = Duration::from_millis(1);

/// A batcher over [`Echo`]: one worker, batches of [`BATCH`].
pub fn echo_batcher() -> Batcher<Echo> {
    Batcher::builder(Echo)
        .workers(1)
        .fixed(BATCH)
        .max_wait(MAX_WAIT)
        .queue(QueueConfig {
            capacity: 2 * WINDOW,
            per_key_capacity: 2 * WINDOW,
            aging: None,
        })
        .build()
        .unwrap_or_else(|e| unreachable!("valid config: {e}"))
}

/// Push `n` requests through `batcher` from this thread, keeping [`WINDOW`]
/// in flight; returns the elapsed time. Two threads: this one and the worker.
pub fn batcher_round_trips(batcher: &Batcher<Echo>, n: u64) -> Duration {
    let start = Instant::now();
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    for i in 0..n {
        if in_flight.len() == WINDOW
            && let Some(h) = in_flight.pop_front()
        {
            let _ = std::hint::black_box(switchyard::batch::Handle::wait(h));
        }
        match batcher.submit(i) {
            Ok(h) => in_flight.push_back(h),
            Err(e) => unreachable!("window fits the queue: {e}"),
        }
    }
    for h in in_flight {
        let _ = std::hint::black_box(h.wait());
    }
    start.elapsed()
}

/// The same traffic through a bare crossbeam channel round trip: this thread
/// sends, an echo thread sends back.
pub fn channel_round_trips(n: u64) -> Duration {
    let (to_echo, echo_in) = crossbeam::channel::unbounded::<u64>();
    let (echo_out, back) = crossbeam::channel::unbounded::<u64>();
    let echo = thread::spawn(move || {
        for x in echo_in {
            if echo_out.send(x).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut in_flight = 0usize;
    for i in 0..n {
        if in_flight == WINDOW {
            let _ = std::hint::black_box(back.recv());
            in_flight -= 1;
        }
        let _ = to_echo.send(i);
        in_flight += 1;
    }
    for _ in 0..in_flight {
        let _ = std::hint::black_box(back.recv());
    }
    let elapsed = start.elapsed();
    drop(to_echo);
    let _ = echo.join();
    elapsed
}

/// The least any request round trip can cost that, like the batcher's,
/// stamps each request with its arrival time and gives the caller a result
/// slot of its own: a clock read, one shared cell per request, a bare
/// crossbeam hop to an echo thread that fills the cell. No priorities, no
/// batching, no cancellation: a floor, not a design.
pub fn floor_round_trips(n: u64) -> Duration {
    type Slot = std::sync::Arc<std::sync::OnceLock<u64>>;
    let (to_echo, echo_in) = crossbeam::channel::unbounded::<(u64, Instant, Slot)>();
    let echo = thread::spawn(move || {
        for (x, at, slot) in echo_in {
            let _ = slot.set(x + u64::from(std::hint::black_box(at) < at));
        }
    });
    let take = |slot: Slot| loop {
        if let Some(x) = slot.get() {
            break *x;
        }
        std::hint::spin_loop();
    };
    let start = Instant::now();
    let mut in_flight: VecDeque<Slot> = VecDeque::with_capacity(WINDOW);
    for i in 0..n {
        if in_flight.len() == WINDOW
            && let Some(slot) = in_flight.pop_front()
        {
            let _ = std::hint::black_box(take(slot));
        }
        let slot = Slot::default();
        let _ = to_echo.send((i, Instant::now(), slot.clone()));
        in_flight.push_back(slot);
    }
    for slot in in_flight {
        let _ = std::hint::black_box(take(slot));
    }
    let elapsed = start.elapsed();
    drop(to_echo);
    let _ = echo.join();
    elapsed
}

/// Submit at `rate` per second for `span` (paced by spinning), polling the
/// handles from the same thread; the caller-observed latency of every request.
pub fn paced_latencies(batcher: &Batcher<Echo>, rate: f64, span: Duration) -> Histogram {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut hist = Histogram::new();
    let mut pending = VecDeque::new();
    let start = Instant::now();
    let mut next = start;
    let mut i = 0u64;
    while start.elapsed() < span || !pending.is_empty() {
        let now = Instant::now();
        if now >= next && now.duration_since(start) < span {
            if let Ok(h) = batcher.submit(i) {
                pending.push_back((now, h));
            }
            i += 1;
            next += interval;
        }
        while let Some((at, h)) = pending.front_mut() {
            if h.try_get().is_none() {
                break;
            }
            let latency = at.elapsed();
            hist.record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
            pending.pop_front();
        }
        std::hint::spin_loop();
    }
    hist
}

/// `batch-overhead`.
pub fn overhead() -> SuiteResult {
    const N: u64 = 1_000_000;
    const RUNS: usize = 5;
    let batcher = echo_batcher();
    batcher_round_trips(&batcher, N / 10);
    channel_round_trips(N / 10);
    floor_round_trips(N / 10);
    let mut ours = Vec::new();
    let mut bare = Vec::new();
    let mut least = Vec::new();
    // Not interleaved: each side runs with the machine in the same state.
    for _ in 0..RUNS {
        ours.push(N as f64 / batcher_round_trips(&batcher, N).as_secs_f64());
    }
    for _ in 0..RUNS {
        bare.push(N as f64 / channel_round_trips(N).as_secs_f64());
    }
    for _ in 0..RUNS {
        least.push(N as f64 / floor_round_trips(N).as_secs_f64());
    }
    let ours = median(&mut ours);
    let bare = median(&mut bare);
    let least = median(&mut least);
    let ratio = ours / bare;
    let m = batcher.metrics();

    let light = ours * 0.10;
    let fresh = echo_batcher();
    let hist = paced_latencies(&fresh, light, Duration::from_secs(2));
    let p99_us = hist.quantile(0.99) as f64 / 1e3;
    let p50_us = hist.quantile(0.50) as f64 / 1e3;
    let internal = fresh.metrics().end_to_end;
    let limit_us = MAX_WAIT.as_secs_f64() * 1e6 + 50.0;

    let mut report = Report::new("batch-overhead");
    report.figure(
        "batcher_requests_per_sec",
        ours,
        "req/s (median of 5 x 1M, 2 threads)",
    );
    report.figure(
        "crossbeam_round_trips_per_sec",
        bare,
        "msg/s (median of 5 x 1M, 2 threads)",
    );
    report.figure(
        "floor_round_trips_per_sec",
        least,
        "req/s (clock read + own result cell + bare hop; median of 5 x 1M)",
    );
    report.figure(
        "floor_vs_crossbeam",
        least / bare,
        "what the goal's 0.5 asks is above this",
    );
    report.figure("batcher_vs_floor", ours / least, "ratio");
    report.figure("mean_batch_size", m.batch_size.mean as f64, "requests");
    report.figure("light_load_rate", light, "req/s (10% of measured)");
    report.figure("light_load_p50_us", p50_us, "us caller-observed");
    report.figure("light_load_p99_us", p99_us, "us caller-observed");
    report.figure(
        "light_load_internal_p99_us",
        internal.p99.as_secs_f64() * 1e6,
        "us submit to results ready",
    );
    report.goal(
        "requests_per_sec",
        ">= 1 million requests/s",
        ours,
        ours >= 1e6,
    );
    report.goal(
        "vs_crossbeam",
        ">= 0.5 of the bare crossbeam channel round trip",
        ratio,
        ratio >= 0.5,
    );
    report.goal(
        "p99_added_latency_us_at_10pct_load",
        "< max_wait + 50 us (1050 us)",
        p99_us,
        p99_us < limit_us,
    );
    Ok(report)
}

/// The `pid-sim` scenario: t(n) = 20 ms + 2 ms * n with 3 % jitter, a
/// 100 ms batch-latency target (batches of 40, 400 req/s), Poisson arrivals
/// at 240/s for 60 s, then 480/s for 60 s (load doubles, past capacity).
pub fn pid_scenario() -> SimConfig {
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

/// The PID's setpoint in the scenario.
pub const PID_TARGET: Duration = Duration::from_millis(100);

fn worst_phase_p99(r: &SimReport) -> Duration {
    r.batch_latency_p99_by_phase
        .iter()
        .copied()
        .max()
        .unwrap_or(Duration::ZERO)
}

/// `pid-sim`.
pub fn pid_sim() -> SuiteResult {
    let config = pid_scenario();
    let limit = PID_TARGET.mul_f64(1.10);
    let mut rows: Vec<(String, SimReport)> = Vec::new();
    let mut pid = Pid::new(PidConfig::new(PID_TARGET, 64))?;
    rows.push(("pid(100ms)".into(), simulate(&config, &mut pid)));
    for n in 1..=64 {
        rows.push((format!("fixed({n})"), simulate(&config, &mut Fixed::new(n))));
    }
    // Triton's dynamic batcher: max batch 64, max queue delay 100 us,
    // no latency feedback.
    let triton = SimConfig {
        max_wait: Duration::from_micros(100),
        ..config
    };
    rows.push((
        "triton(64, 100us)".into(),
        simulate(&triton, &mut Fixed::new(64)),
    ));

    println!(
        "{:<18} {:>9} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "policy", "req/s", "p99 ph1", "p99 ph2", "p99 batch", "p99 e2e", "batch"
    );
    for (name, r) in &rows {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let meets = if worst_phase_p99(r) <= limit {
            ""
        } else {
            "  over target"
        };
        println!(
            "{name:<18} {:>9.1} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>8.0}ms {:>7.1}{meets}",
            r.throughput_per_sec,
            ms(r.batch_latency_p99_by_phase[0]),
            ms(r.batch_latency_p99_by_phase
                .get(1)
                .copied()
                .unwrap_or_default()),
            ms(r.batch_latency.p99),
            ms(r.end_to_end.p99),
            r.batch_size.mean as f64,
        );
    }
    let pid = &rows[0].1;
    let (best_name, best) = rows[1..65]
        .iter()
        .filter(|(_, r)| worst_phase_p99(r) <= limit)
        .max_by(|a, b| a.1.throughput_per_sec.total_cmp(&b.1.throughput_per_sec))
        .map(|(n, r)| (n.clone(), r.throughput_per_sec))
        .unwrap_or_else(|| ("none".into(), f64::NAN));
    let pid_ratio = worst_phase_p99(pid).as_secs_f64() / PID_TARGET.as_secs_f64();
    let throughput_ratio = pid.throughput_per_sec / best;
    let mut report = Report::new("pid-sim");
    report.figure("pid_throughput_per_sec", pid.throughput_per_sec, "req/s");
    report.figure(
        "best_fixed_throughput_per_sec",
        best,
        &format!("req/s ({best_name})"),
    );
    report.figure(
        "pid_p99_batch_latency_ms",
        pid.batch_latency.p99.as_secs_f64() * 1e3,
        "ms",
    );
    report.figure(
        "triton_p99_batch_latency_ms",
        rows[65].1.batch_latency.p99.as_secs_f64() * 1e3,
        "ms",
    );
    report.goal(
        "pid_p99_vs_target",
        "p99 batch latency within 10% of the target in both phases (<= 1.10)",
        pid_ratio,
        pid_ratio <= 1.10,
    );
    report.goal(
        "pid_throughput_vs_best_fixed",
        ">= 0.95 of the best Fixed size that meets the target",
        throughput_ratio,
        throughput_ratio >= 0.95,
    );
    Ok(report)
}
