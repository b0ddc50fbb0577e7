use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::SimulatedMonitor;

const GPU: DeviceId = DeviceId::Cuda(0);

fn sim(used: u64) -> Arc<SimulatedMonitor> {
    Arc::new(SimulatedMonitor::new().with_device(GPU, 1000, used))
}

#[test]
fn listeners_see_each_change_once_and_history_is_a_ring() {
    let sim = sim(100);
    let config = WatchConfig {
        history: 3,
        ..WatchConfig::default()
    };
    let watch = MemoryWatch::new(sim.clone(), GPU, config).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let id = watch.on_level_change(move |c| log.lock().push((c.from, c.to)));
    sim.script(GPU, [600, 620, 950, 870, 300]);
    for _ in 0..5 {
        watch.sample().unwrap();
    }
    use PressureLevel::*;
    assert_eq!(
        *seen.lock(),
        [(Low, Moderate), (Moderate, Critical), (Critical, Low)]
    );
    assert_eq!(watch.peak_used(), 950);
    let history: Vec<u64> = watch.history().iter().map(|s| s.snapshot.used).collect();
    assert_eq!(history, [950, 870, 300]);
    assert!(watch.remove_listener(id));
    assert!(!watch.remove_listener(id));
    sim.set_used(GPU, 990);
    watch.sample().unwrap();
    assert_eq!(seen.lock().len(), 3);
    assert_eq!(watch.level(), Critical);
}

#[test]
fn a_failed_read_is_counted_and_keeps_the_last_reading() {
    let sim = sim(400);
    let watch = MemoryWatch::new(sim.clone(), GPU, WatchConfig::default()).unwrap();
    sim.set_unavailable(GPU, Some("reset"));
    assert!(watch.sample().is_err());
    let (failures, last) = watch.failures();
    assert_eq!(failures, 1);
    assert!(last.unwrap().contains("reset"));
    assert_eq!(watch.latest().used, 400);
    assert_eq!(watch.headroom(), 400);
}

#[test]
fn a_panicking_listener_does_not_stop_the_others() {
    let sim = sim(0);
    let watch = MemoryWatch::new(sim.clone(), GPU, WatchConfig::default()).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    watch.on_level_change(|_| panic!("listener bug"));
    let c = Arc::clone(&calls);
    watch.on_level_change(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    sim.set_used(GPU, 999);
    watch.sample().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn the_sampler_thread_samples_until_stopped() {
    let sim = sim(0);
    let config = WatchConfig {
        interval: Duration::from_millis(2),
        ..WatchConfig::default()
    };
    let watch = MemoryWatch::spawn(sim.clone(), GPU, config).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    watch.on_level_change(move |c| {
        let _ = tx.send(c.to);
    });
    sim.set_used(GPU, 800);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(PressureLevel::High)
    );
    watch.stop();
    let before = watch.history().len();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(watch.history().len(), before);
}

#[test]
fn bad_settings_and_devices_are_refused() {
    let sim = sim(0);
    let zero = WatchConfig {
        interval: Duration::ZERO,
        ..WatchConfig::default()
    };
    assert!(matches!(
        MemoryWatch::new(sim.clone(), GPU, zero),
        Err(VramError::InvalidConfig { .. })
    ));
    assert!(matches!(
        MemoryWatch::new(sim, DeviceId::Cuda(7), WatchConfig::default()),
        Err(VramError::NoDevice { .. })
    ));
}
