//! Threads at the lowest OS scheduling priority, for work a [`YieldGate`]
//! may hold.
//!
//! The gate pauses less urgent work between steps, and the pipelines
//! check it inside a step too (between a BERT's layers, a UNet's blocks,
//! a language model's layers), but a layer already under way keeps the
//! cores until it ends: on a small CPU an urgent chat arriving meanwhile
//! waits for it, since candle's kernels hand their pieces to one shared
//! rayon pool, first come first served. A [`BackgroundPool`] runs
//! such steps on threads of its own in the weakest scheduling class
//! (`SCHED_IDLE` on Linux, through the thread-priority crate). The OS then gives the cores to urgent work the moment it
//! wants them, in the middle of a held step, and back to the step as soon
//! as they are free: preemption inside a batch without cutting it up. On
//! an idle machine the pool's threads have the cores to themselves, so
//! background work loses nothing when it runs alone.
//!
//! A held step can make an urgent request of its own pipeline wait longer
//! (that request waits for the step, which crawls while other pipelines'
//! urgent work runs): urgent work is short by nature, so this delay is
//! bounded by it.
//!
//! [`YieldGate`]: crate::YieldGate

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A rayon thread pool whose threads run at the lowest OS scheduling
/// priority; candle's CPU kernels called inside [`run`](Self::run) use it.
///
/// ```
/// use switchyard_batch::BackgroundPool;
///
/// let pool = BackgroundPool::new("example", 2)?;
/// let sum: u64 = pool.run(|| (1..=10u64).sum());
/// assert_eq!(sum, 55);
/// # Ok::<(), switchyard_batch::BatchError>(())
/// ```
pub struct BackgroundPool {
    pool: rayon::ThreadPool,
    lowered: Arc<AtomicUsize>,
}

impl fmt::Debug for BackgroundPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundPool")
            .field("threads", &self.pool.current_num_threads())
            .field("lowered", &self.lowered())
            .finish()
    }
}

impl BackgroundPool {
    /// A pool of `threads` threads (at least one) named `switchyard-bg-{name}`.
    pub fn new(name: &str, threads: usize) -> Result<Self, crate::BatchError> {
        let lowered = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&lowered);
        let prefix = format!("switchyard-bg-{name}");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(move |i| format!("{prefix}-{i}"))
            .start_handler(move |_| {
                if lower_this_thread() {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build()
            .map_err(|e| crate::BatchError::Background {
                reason: e.to_string(),
            })?;
        Ok(Self { pool, lowered })
    }

    /// A pool as wide as the global rayon pool candle uses.
    pub fn matching_global(name: &str) -> Result<Self, crate::BatchError> {
        Self::new(name, rayon::current_num_threads())
    }

    /// Run `f` on one of the pool's threads and wait for it; rayon work `f`
    /// starts (candle's kernels) stays in the pool, and `tracing` spans it
    /// opens nest under the caller's current span. A panic in `f` is
    /// resumed here.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let span = tracing::Span::current();
        self.pool.install(move || span.in_scope(f))
    }

    /// How many threads the pool has.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// How many of its threads have started at the lowered priority so far
    /// (0 where the OS has no per-thread niceness: then the pool only
    /// separates the work).
    pub fn lowered(&self) -> usize {
        self.lowered.load(Ordering::Relaxed)
    }
}

/// Give the calling thread the weakest scheduling class the OS offers
/// without privilege: on Linux `SCHED_IDLE` (a waking normal thread
/// preempts it at once), else the lowest priority of its class. Per thread on Linux, and allowed to any process.
fn lower_this_thread() -> bool {
    use thread_priority::ThreadPriority;
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        if set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle).is_ok() {
            return true;
        }
    }
    thread_priority::set_current_thread_priority(ThreadPriority::Min).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The niceness Linux gives the weakest normal threads.
    #[cfg(target_os = "linux")]
    const WEAKEST_NICE: i32 = 19;
    /// Linux's number for the SCHED_IDLE policy.
    #[cfg(target_os = "linux")]
    const SCHED_IDLE: u32 = 5;

    /// The calling thread's niceness and scheduling policy, read from
    /// procfs (Linux).
    #[cfg(target_os = "linux")]
    fn current_scheduling() -> Option<(i32, u32)> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // Fields after the parenthesised command name, from field 3:
        // niceness is field 19, the policy field 41.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
        Some((fields.get(16)?.parse().ok()?, fields.get(38)?.parse().ok()?))
    }

    #[test]
    fn runs_work_on_its_own_lowered_threads() {
        let pool = BackgroundPool::new("test", 2).unwrap();
        assert_eq!(pool.threads(), 2);
        let (name, inner) = pool.run(|| {
            (
                std::thread::current().name().map(str::to_owned),
                rayon::current_num_threads(),
            )
        });
        assert!(name.unwrap().starts_with("switchyard-bg-test-"));
        // Nested rayon work stays in the pool.
        assert_eq!(inner, 2);
        #[cfg(target_os = "linux")]
        {
            // Both threads have started by now on any sane machine; wait
            // for the second one at most a few seconds.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while pool.lowered() < 2 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(pool.lowered(), 2);
            // SCHED_IDLE is policy 5 (its niceness does not matter), else
            // the weakest niceness.
            let (nice, policy) = pool.run(current_scheduling).unwrap();
            assert!(
                policy == SCHED_IDLE || nice == WEAKEST_NICE,
                "{nice} {policy}"
            );
        }
    }

    #[test]
    fn a_panic_inside_reaches_the_caller_and_the_pool_survives() {
        let pool = BackgroundPool::new("panics", 1).unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(|| panic!("inside"));
        }));
        assert!(caught.is_err());
        assert_eq!(pool.run(|| 7), 7);
    }

    /// Records the thread each span is entered on, and knows each
    /// thread's current span (as real subscribers do).
    #[derive(Default)]
    struct EnteredOn {
        entered: parking_lot::Mutex<Vec<(u64, String)>>,
        current: parking_lot::Mutex<HashMap<std::thread::ThreadId, Vec<tracing::span::Id>>>,
        meta: parking_lot::Mutex<Option<&'static tracing::Metadata<'static>>>,
    }

    impl tracing::Subscriber for EnteredOn {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            *self.meta.lock() = Some(span.metadata());
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, span: &tracing::span::Id) {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or_default().to_owned();
            self.entered.lock().push((span.into_u64(), name));
            let mut current = self.current.lock();
            current.entry(thread.id()).or_default().push(span.clone());
        }
        fn exit(&self, _: &tracing::span::Id) {
            let mut current = self.current.lock();
            current
                .entry(std::thread::current().id())
                .or_default()
                .pop();
        }
        fn current_span(&self) -> tracing_core::span::Current {
            let current = self.current.lock();
            let top = current
                .get(&std::thread::current().id())
                .and_then(|s| s.last());
            match (top, *self.meta.lock()) {
                (Some(id), Some(meta)) => tracing_core::span::Current::new(id.clone(), meta),
                _ => tracing_core::span::Current::none(),
            }
        }
    }

    #[test]
    fn the_callers_span_is_entered_on_the_pool_thread() {
        let pool = BackgroundPool::new("spans", 1).unwrap();
        let seen = std::sync::Arc::new(EnteredOn::default());
        let dispatch = tracing::Dispatch::from(std::sync::Arc::clone(&seen));
        tracing::dispatcher::with_default(&dispatch, || {
            let outer = tracing::info_span!("outer");
            outer.in_scope(|| pool.run(|| ()));
        });
        let entered = seen.entered.lock().clone();
        assert!(
            entered
                .iter()
                .any(|(id, thread)| *id == 1 && thread.starts_with("switchyard-bg-spans")),
            "{entered:?}"
        );
    }

    #[test]
    fn zero_threads_means_one() {
        assert_eq!(BackgroundPool::new("one", 0).unwrap().threads(), 1);
    }
}
