//! Criterion benches of the batcher: round trips through a no-op handler in
//! batches of 64 against a bare crossbeam channel and against the floor (a
//! clock read and a result cell per request, one bare hop), and one PID
//! simulation.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchyard::batch::sim::simulate;
use switchyard::batch::{Pid, PidConfig};
use switchyard_benches::batch_suites::{
    PID_TARGET, batcher_round_trips, channel_round_trips, echo_batcher, floor_round_trips,
    pid_scenario,
};

fn round_trips(c: &mut Criterion) {
    const N: u64 = 100_000;
    let batcher = echo_batcher();
    let mut group = c.benchmark_group("round_trips_100k");
    group.throughput(Throughput::Elements(N));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("batcher_noop_batch64", |b| {
        b.iter(|| batcher_round_trips(&batcher, N))
    });
    group.bench_function("crossbeam_channel", |b| b.iter(|| channel_round_trips(N)));
    group.bench_function("floor_clock_cell_hop", |b| b.iter(|| floor_round_trips(N)));
    group.finish();
}

fn pid_simulation(c: &mut Criterion) {
    let config = pid_scenario();
    c.bench_function("pid_sim_120s_virtual", |b| {
        b.iter(|| {
            let mut pid =
                Pid::new(PidConfig::new(PID_TARGET, 64)).unwrap_or_else(|e| unreachable!("{e}"));
            simulate(&config, &mut pid)
        })
    });
}

criterion_group!(benches, round_trips, pid_simulation);
criterion_main!(benches);
