//! Time sources: the real clock and a manual one for deterministic tests.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of the current time, and a way to wait.
///
/// Everything in Switchyard that waits or measures age takes a `Clock`, so
/// tests and simulators can run on a [`ManualClock`] instead of sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;

    /// Wait for `duration`. The real clock blocks the thread; the manual clock
    /// advances its own time instead and returns at once.
    fn sleep(&self, duration: Duration);

    /// Time passed since `earlier`, zero if `earlier` is in the future.
    fn elapsed_since(&self, earlier: Instant) -> Duration {
        self.now().saturating_duration_since(earlier)
    }
}

/// A clock shared between threads and components.
pub type SharedClock = Arc<dyn Clock>;

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
    fn sleep(&self, duration: Duration) {
        (**self).sleep(duration)
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Instant {
        (**self).now()
    }
    fn sleep(&self, duration: Duration) {
        (**self).sleep(duration)
    }
}

/// The operating system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock as a [`SharedClock`].
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration)
    }
}

/// A clock that moves only when told to.
///
/// It starts at the instant it was created and moves forward by
/// [`advance`](ManualClock::advance) or [`sleep`](Clock::sleep) (which advances
/// instead of blocking, like a simulator's virtual time). Clones share the same
/// time, so a test can keep one clone and hand another to the code under test.
///
/// ```
/// use std::time::Duration;
/// use switchyard_core::{Clock, ManualClock};
/// let clock = ManualClock::new();
/// let start = clock.now();
/// clock.sleep(Duration::from_secs(3)); // returns at once
/// assert_eq!(clock.elapsed_since(start), Duration::from_secs(3));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    origin: Instant,
    /// Nanoseconds since `origin`; only ever increases.
    offset_nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock reading the current real instant, frozen there.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            offset_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// This clock as a [`SharedClock`] (sharing time with `self`).
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }

    /// Move time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .offset_nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(old.saturating_add(nanos))
            });
    }

    /// Move time forward to `instant`; does nothing if `instant` is not later
    /// than now (time never goes back).
    pub fn advance_to(&self, instant: Instant) {
        let target = instant.saturating_duration_since(self.origin);
        let target = u64::try_from(target.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_max(target, Ordering::AcqRel);
    }

    /// Total time advanced since the clock was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos.load(Ordering::Acquire))
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.origin + self.elapsed()
    }
    fn sleep(&self, duration: Duration) {
        self.advance(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_millis(5));
        assert_eq!(clock.now() - t0, Duration::from_millis(5));
        clock.sleep(Duration::from_millis(5));
        assert_eq!(clock.elapsed(), Duration::from_millis(10));
    }

    #[test]
    fn clones_share_time_and_time_never_goes_back() {
        let clock = ManualClock::new();
        let other = clock.clone();
        let t0 = clock.now();
        other.advance_to(t0 + Duration::from_secs(2));
        assert_eq!(clock.elapsed(), Duration::from_secs(2));
        clock.advance_to(t0 + Duration::from_secs(1));
        assert_eq!(other.elapsed(), Duration::from_secs(2));
        assert_eq!(
            clock.elapsed_since(t0 + Duration::from_secs(5)),
            Duration::ZERO
        );
    }

    #[test]
    fn shared_clocks_delegate() {
        let clock = ManualClock::new();
        let shared: SharedClock = clock.shared();
        shared.sleep(Duration::from_secs(1));
        assert_eq!(clock.elapsed(), Duration::from_secs(1));
        let system = SystemClock::shared();
        let a = system.now();
        assert!(system.now() >= a);
    }
}
