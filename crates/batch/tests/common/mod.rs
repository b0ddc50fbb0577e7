//! Handlers and helpers shared by the batcher tests.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    missing_debug_implementations
)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

use parking_lot::Mutex;
use switchyard_batch::{BatchContext, BatchHandler, BatchKey};

/// Input of the recording handler: a number, a key class and what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub n: u64,
    pub class: u64,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Double,
    Fail,
    Panic,
    /// Sleep this many ms, checking the request's token every ms.
    Slow(u64),
}

impl Job {
    pub fn double(n: u64) -> Self {
        Job {
            n,
            class: 0,
            action: Action::Double,
        }
    }
}

/// Doubles numbers, fails or panics on request, records every batch it ran.
#[derive(Default)]
pub struct Recorder {
    pub batches: Mutex<Vec<Vec<u64>>>,
    pub running: AtomicUsize,
    pub peak_running: AtomicUsize,
    pub cancelled_seen: AtomicUsize,
    /// When set, every batch blocks until the gate is opened.
    pub gate: Gate,
    /// The name of the thread each batch ran on.
    pub threads: Mutex<Vec<String>>,
}

#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cond: parking_lot::Condvar,
    pub waiting: AtomicUsize,
}

impl Gate {
    pub fn close(&self) {
        *self.open.lock() = false;
    }
    pub fn open(&self) {
        *self.open.lock() = true;
        self.cond.notify_all();
    }
    fn pass(&self) {
        let mut open = self.open.lock();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        while !*open {
            self.cond.wait(&mut open);
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
    /// Block until `n` batches wait at the gate.
    pub fn await_waiting(&self, n: usize) {
        while self.waiting.load(Ordering::SeqCst) < n {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Recorder {
    pub fn gated() -> Arc<Self> {
        let r = Recorder::default();
        r.gate.close();
        Arc::new(r)
    }

    pub fn open() -> Arc<Self> {
        let r = Recorder::default();
        r.gate.open();
        Arc::new(r)
    }

    pub fn seen(&self) -> Vec<u64> {
        self.batches.lock().iter().flatten().copied().collect()
    }
}

impl BatchHandler for Recorder {
    type Input = Job;
    type Output = u64;
    type Error = String;

    fn run(&self, batch: &mut [Job], ctx: &BatchContext<'_>) -> Vec<Result<u64, String>> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_running.fetch_max(now, Ordering::SeqCst);
        self.batches
            .lock()
            .push(batch.iter().map(|j| j.n).collect());
        let thread = std::thread::current();
        self.threads
            .lock()
            .push(thread.name().unwrap_or_default().to_owned());
        self.gate.pass();
        let out = batch
            .iter()
            .enumerate()
            .map(|(i, job)| match job.action {
                Action::Double => Ok(job.n * 2),
                Action::Fail => Err(format!("refused {}", job.n)),
                Action::Panic => {
                    self.running.fetch_sub(1, Ordering::SeqCst);
                    panic!("boom on {}", job.n)
                }
                Action::Slow(ms) => {
                    let token = ctx.token(i);
                    for _ in 0..ms {
                        if token.is_cancelled() {
                            self.cancelled_seen.fetch_add(1, Ordering::SeqCst);
                            return Err("stopped".into());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                        ctx.yield_point();
                    }
                    Ok(job.n * 2)
                }
            })
            .collect();
        self.running.fetch_sub(1, Ordering::SeqCst);
        out
    }

    fn key(&self, job: &Job) -> BatchKey {
        BatchKey::new("recorder", job.class)
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: poll, park until woken, repeat.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
