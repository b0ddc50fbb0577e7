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
//! [`enter`]: YieldGate::enter
//! [`allows`]: YieldGate::allows

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use switchyard_core::Priority;

/// How long a pipeline that holds all its work sleeps before it looks
/// again (a gate that opens wakes [`YieldGate::wait`]ers at once).
pub const YIELD_POLL: Duration = Duration::from_millis(5);

/// Counts the requests under way per priority on one device; work below
/// the level yields while any request at or above it is counted.
#[derive(Debug)]
pub struct YieldGate {
    level: Priority,
    active: Mutex<[usize; 4]>,
    opened: Condvar,
}

impl YieldGate {
    /// A gate where requests at `level` or above make less urgent work wait.
    pub fn new(level: Priority) -> Arc<Self> {
        Arc::new(Self {
            level,
            active: Mutex::new([0; 4]),
            opened: Condvar::new(),
        })
    }

    /// The level that holds less urgent work.
    pub fn level(&self) -> Priority {
        self.level
    }

    /// Count a request of `priority` as under way until the guard drops.
    pub fn enter(self: &Arc<Self>, priority: Priority) -> YieldGuard {
        self.active.lock()[priority.rank()] += 1;
        YieldGuard {
            gate: Arc::clone(self),
            priority,
        }
    }

    /// Requests of each priority under way, Urgent first.
    pub fn active(&self) -> [usize; 4] {
        *self.active.lock()
    }

    /// Whether work of `priority` may run now: it is at or above the level,
    /// or nothing at or above the level is under way.
    pub fn allows(&self, priority: Priority) -> bool {
        priority.rank() <= self.level.rank() || !self.holding(&self.active.lock())
    }

    /// The least urgent priority that may run now.
    pub fn floor(&self) -> Priority {
        if self.holding(&self.active.lock()) {
            self.level
        } else {
            Priority::Low
        }
    }

    /// Block until work of `priority` may run, or `max` has passed; whether
    /// it may run.
    pub fn wait(&self, priority: Priority, max: Duration) -> bool {
        if priority.rank() <= self.level.rank() {
            return true;
        }
        let until = Instant::now() + max;
        let mut active = self.active.lock();
        while self.holding(&active) {
            if self.opened.wait_until(&mut active, until).timed_out() {
                return !self.holding(&active);
            }
        }
        true
    }

    fn holding(&self, active: &[usize; 4]) -> bool {
        active[..=self.level.rank()].iter().any(|&n| n > 0)
    }

    fn leave(&self, priority: Priority) {
        let mut active = self.active.lock();
        let n = &mut active[priority.rank()];
        *n = n.saturating_sub(1);
        if !self.holding(&active) {
            self.opened.notify_all();
        }
    }
}

/// A request counted by a [`YieldGate`]; dropping it ends the count.
#[derive(Debug)]
pub struct YieldGuard {
    gate: Arc<YieldGate>,
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
        self.gate.leave(self.priority);
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
