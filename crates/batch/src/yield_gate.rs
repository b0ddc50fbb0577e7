//! Priority across pipelines: while urgent work is under way on a device,
//! less urgent work there pauses between steps.
//!
//! Each pipeline orders its own queue by priority, but pipelines of
//! different models on one device share its compute: a Low image run next
//! to an Urgent chat halves the chat's speed. A [`YieldGate`] is shared by
//! every pipeline of a device. Whoever accepts a request [`enter`]s it for
//! the request's life; pipelines ask [`allows`] before each batch or step
//! and leave the work the gate holds for later. Work at or above the gate's
//! level never waits, so holding cannot deadlock: what is held only waits
//! for work that does not wait for it.
//!
//! Two more things make urgent work keep its idle latency on a busy CPU: a
//! batcher with a gate has an *urgent lane*, one more worker that takes
//! only batches at the level, so an urgent request never waits behind a
//! less urgent batch of its own pipeline; and once urgent traffic has been
//! seen ([`BACKGROUND_WINDOW`]), held work runs on a
//! [`BackgroundPool`](crate::BackgroundPool), whose threads the OS
//! preempts for urgent work even in the middle of a step.
//!
//! [`enter`]: YieldGate::enter
//! [`allows`]: YieldGate::allows

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use switchyard_core::Priority;

/// How long a pipeline that holds all its work sleeps before it looks
/// again (a gate that opens wakes [`YieldGate::wait`]ers at once).
pub const YIELD_POLL: Duration = Duration::from_millis(5);

/// How long after the last request at the level held work still starts on
/// background threads (see [`YieldGate::backgrounds`]).
pub const BACKGROUND_WINDOW: Duration = Duration::from_secs(30);

/// Counts the requests under way per priority on one device; work below
/// the level yields while any request at or above it is counted.
#[derive(Debug)]
pub struct YieldGate {
    level: Priority,
    background: bool,
    active: Mutex<Counts>,
    opened: Condvar,
    next_source: AtomicU64,
}

/// Requests under way per priority rank: in all, and per named source.
#[derive(Debug, Default)]
struct Counts {
    /// When the last request at or above the level arrived.
    last_urgent: Option<Instant>,
    all: [usize; 4],
    by_source: HashMap<u64, [usize; 4]>,
}

impl YieldGate {
    /// A gate where requests at `level` or above make less urgent work
    /// wait, and where pipelines run work below `level` on their
    /// [`BackgroundPool`](crate::BackgroundPool) so that urgent work takes
    /// the cores even in the middle of a step.
    pub fn new(level: Priority) -> Arc<Self> {
        Self::with_background(level, true)
    }

    /// As [`new`](Self::new); `background: false` keeps all work on the
    /// ordinary threads, so less urgent work only pauses between steps.
    pub fn with_background(level: Priority, background: bool) -> Arc<Self> {
        Arc::new(Self {
            level,
            background,
            active: Mutex::new(Counts::default()),
            opened: Condvar::new(),
            next_source: AtomicU64::new(1),
        })
    }

    /// A new source id, for a pipeline whose long batches pause between
    /// steps ([`wait_besides`](Self::wait_besides)).
    pub fn new_source(&self) -> u64 {
        self.next_source.fetch_add(1, Ordering::Relaxed)
    }

    /// The level that holds less urgent work.
    pub fn level(&self) -> Priority {
        self.level
    }

    /// Whether pipelines run work the gate may hold on background threads.
    pub fn background(&self) -> bool {
        self.background
    }

    /// Whether the gate can ever hold work of `priority` (it is below the
    /// level).
    pub fn may_hold(&self, priority: Priority) -> bool {
        priority.rank() > self.level.rank()
    }

    /// Whether work of `priority` should start on background threads now:
    /// the gate has them, may hold that priority, and a request at the
    /// level arrived within [`BACKGROUND_WINDOW`]. Where no urgent traffic
    /// comes, all work keeps ordinary threads (background threads lose to
    /// every other process on the machine).
    pub fn backgrounds(&self, priority: Priority) -> bool {
        self.may_hold(priority) && self.background_now()
    }

    /// Whether held work should start on background threads now, whatever
    /// its priority: the gate has them and a request at the level arrived
    /// within [`BACKGROUND_WINDOW`]. One reading for a whole step.
    pub fn background_now(&self) -> bool {
        self.background
            && self
                .active
                .lock()
                .last_urgent
                .is_some_and(|at| at.elapsed() < BACKGROUND_WINDOW)
    }

    /// Count a request of `priority` as under way until the guard drops.
    pub fn enter(self: &Arc<Self>, priority: Priority) -> YieldGuard {
        self.enter_from(0, priority)
    }

    /// [`enter`](Self::enter) on behalf of `source` (from
    /// [`new_source`](Self::new_source); 0 is no source).
    pub fn enter_from(self: &Arc<Self>, source: u64, priority: Priority) -> YieldGuard {
        let mut counts = self.active.lock();
        counts.all[priority.rank()] += 1;
        if !self.may_hold(priority) {
            counts.last_urgent = Some(Instant::now());
        }
        if source != 0 {
            counts.by_source.entry(source).or_default()[priority.rank()] += 1;
        }
        YieldGuard {
            gate: Arc::clone(self),
            source,
            priority,
        }
    }

    /// Requests of each priority under way, Urgent first.
    pub fn active(&self) -> [usize; 4] {
        self.active.lock().all
    }

    /// Whether work of `priority` may run now: it is at or above the level,
    /// or nothing at or above the level is under way.
    pub fn allows(&self, priority: Priority) -> bool {
        self.allows_besides(priority, 0)
    }

    /// [`allows`](Self::allows), not counting `source`'s own requests: a
    /// pipeline whose urgent requests wait for its running batch must not
    /// hold that batch for them.
    pub fn allows_besides(&self, priority: Priority, source: u64) -> bool {
        priority.rank() <= self.level.rank() || !self.holding(&self.active.lock(), source)
    }

    /// The least urgent priority that may run now.
    pub fn floor(&self) -> Priority {
        if self.holding(&self.active.lock(), 0) {
            self.level
        } else {
            Priority::Low
        }
    }

    /// Block until work of `priority` may run, or `max` has passed; whether
    /// it may run.
    pub fn wait(&self, priority: Priority, max: Duration) -> bool {
        self.wait_besides(priority, 0, max)
    }

    /// [`wait`](Self::wait), not counting `source`'s own requests.
    pub fn wait_besides(&self, priority: Priority, source: u64, max: Duration) -> bool {
        if priority.rank() <= self.level.rank() {
            return true;
        }
        let until = Instant::now() + max;
        let mut active = self.active.lock();
        while self.holding(&active, source) {
            if self.opened.wait_until(&mut active, until).timed_out() {
                return !self.holding(&active, source);
            }
        }
        true
    }

    fn holding(&self, counts: &Counts, source: u64) -> bool {
        let own = counts.by_source.get(&source);
        (0..=self.level.rank()).any(|r| counts.all[r] > own.map_or(0, |o| o[r]))
    }

    fn leave(&self, source: u64, priority: Priority) {
        let mut counts = self.active.lock();
        let n = &mut counts.all[priority.rank()];
        *n = n.saturating_sub(1);
        if let Some(own) = counts.by_source.get_mut(&source) {
            own[priority.rank()] = own[priority.rank()].saturating_sub(1);
            if own.iter().all(|&n| n == 0) {
                counts.by_source.remove(&source);
            }
        }
        // Waiters may wait besides any source: wake them on every leave
        // of work at the level.
        if priority.rank() <= self.level.rank() {
            self.opened.notify_all();
        }
    }
}

/// A request counted by a [`YieldGate`]; dropping it ends the count.
#[derive(Debug)]
pub struct YieldGuard {
    gate: Arc<YieldGate>,
    source: u64,
    priority: Priority,
}

impl YieldGuard {
    /// The priority it counts under.
    pub fn priority(&self) -> Priority {
        self.priority
    }
}

impl Drop for YieldGuard {
    fn drop(&mut self) {
        self.gate.leave(self.source, self.priority);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn urgent_work_holds_less_urgent_work_until_it_ends() {
        let gate = YieldGate::new(Priority::Urgent);
        assert!(Priority::ALL.iter().all(|&p| gate.allows(p)));
        assert_eq!(gate.floor(), Priority::Low);
        let normal = gate.enter(Priority::Normal);
        assert!(gate.allows(Priority::Low), "Normal work holds nothing");
        let urgent = gate.enter(Priority::Urgent);
        assert!(gate.allows(Priority::Urgent));
        assert!(!gate.allows(Priority::High) && !gate.allows(Priority::Low));
        assert_eq!(gate.floor(), Priority::Urgent);
        assert_eq!(gate.active(), [1, 0, 1, 0]);
        drop(urgent);
        assert!(gate.allows(Priority::Low));
        drop(normal);
        assert_eq!(gate.active(), [0; 4]);
    }

    #[test]
    fn a_lower_level_holds_everything_below_it() {
        let gate = YieldGate::new(Priority::Normal);
        let _high = gate.enter(Priority::High);
        assert!(gate.allows(Priority::Normal) && gate.allows(Priority::Urgent));
        assert!(!gate.allows(Priority::Low));
        assert_eq!(gate.level(), Priority::Normal);
    }

    #[test]
    fn wait_returns_when_the_gate_opens_or_the_time_is_up() {
        let gate = YieldGate::new(Priority::Urgent);
        assert!(gate.wait(Priority::Low, Duration::ZERO));
        let urgent = gate.enter(Priority::Urgent);
        assert!(gate.wait(Priority::Urgent, Duration::from_secs(10)));
        let started = Instant::now();
        assert!(!gate.wait(Priority::Low, Duration::from_millis(20)));
        assert!(started.elapsed() >= Duration::from_millis(20));
        let waiter = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || gate.wait(Priority::Low, Duration::from_secs(60)))
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(urgent);
        assert!(waiter.join().unwrap(), "woken when the urgent work ended");
    }

    #[test]
    fn a_source_is_not_held_for_its_own_requests() {
        let gate = YieldGate::new(Priority::Urgent);
        let (a, b) = (gate.new_source(), gate.new_source());
        assert_ne!(a, b);
        let own = gate.enter_from(a, Priority::Urgent);
        assert!(gate.allows_besides(Priority::Low, a));
        assert!(!gate.allows_besides(Priority::Low, b) && !gate.allows(Priority::Low));
        assert!(gate.wait_besides(Priority::Low, a, Duration::ZERO));
        let other = gate.enter_from(b, Priority::Urgent);
        assert!(!gate.allows_besides(Priority::Low, a));
        drop(other);
        assert!(gate.allows_besides(Priority::Low, a));
        drop(own);
        assert!(gate.allows(Priority::Low));
        assert!(gate.active.lock().by_source.is_empty());
    }

    proptest! {
        /// Whatever enters and leaves, in any order, the counts match the
        /// guards alive and `allows` follows them.
        #[test]
        fn counts_follow_the_guards(
            ops in proptest::collection::vec((0usize..4, any::<bool>()), 0..64),
            level in 0usize..4,
        ) {
            let level = Priority::from_rank(level).unwrap();
            let gate = YieldGate::new(level);
            let mut guards: Vec<YieldGuard> = Vec::new();
            for (rank, enter) in ops {
                if enter || guards.is_empty() {
                    guards.push(gate.enter(Priority::from_rank(rank).unwrap()));
                } else {
                    guards.swap_remove(rank % guards.len());
                }
                let mut expected = [0; 4];
                guards.iter().for_each(|g| expected[g.priority().rank()] += 1);
                prop_assert_eq!(gate.active(), expected);
                let holding = expected[..=level.rank()].iter().any(|&n| n > 0);
                for p in Priority::ALL {
                    prop_assert_eq!(gate.allows(p), p.rank() <= level.rank() || !holding);
                }
            }
        }
    }
}
