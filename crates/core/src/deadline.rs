//! Deadlines and timeout helpers.

use std::time::{Duration, Instant};

use crate::Clock;

/// The instant by which a request must have finished.
///
/// A deadline is read against a [`Clock`], never against `Instant::now()`
/// directly, so expiry is deterministic under a [`ManualClock`](crate::ManualClock).
///
/// ```
/// use std::time::Duration;
/// use switchyard_core::{Deadline, ManualClock};
/// let clock = ManualClock::new();
/// let soon = Deadline::after(&clock, Duration::from_secs(1));
/// let later = Deadline::after(&clock, Duration::from_secs(5));
/// assert_eq!(Deadline::earliest(Some(later), Some(soon)), Some(soon));
/// assert_eq!(soon.remaining(&clock), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline at a given instant.
    pub const fn at(instant: Instant) -> Self {
        Self { at: instant }
    }

    /// A deadline `timeout` from the clock's now.
    pub fn after(clock: &impl Clock, timeout: Duration) -> Self {
        let now = clock.now();
        // An absurd timeout saturates to "never in practice" instead of panicking.
        let at = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        Self { at }
    }

    /// An optional timeout turned into an optional deadline.
    pub fn from_timeout(clock: &impl Clock, timeout: Option<Duration>) -> Option<Self> {
        timeout.map(|t| Self::after(clock, t))
    }

    /// The instant of the deadline.
    pub const fn instant(&self) -> Instant {
        self.at
    }

    /// Whether the deadline has passed (an instant equal to it counts as passed).
    pub fn is_expired(&self, clock: &impl Clock) -> bool {
        clock.now() >= self.at
    }

    /// Time left, zero once expired.
    pub fn remaining(&self, clock: &impl Clock) -> Duration {
        self.at.saturating_duration_since(clock.now())
    }

    /// The sooner of two optional deadlines (`None` means no deadline).
    pub fn earliest(a: Option<Deadline>, b: Option<Deadline>) -> Option<Deadline> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, None) => a,
            (None, b) => b,
        }
    }

    /// How long a waiter may block: `max_wait`, cut short by an optional
    /// deadline. Zero if the deadline has passed.
    pub fn bounded_wait(
        deadline: Option<Deadline>,
        clock: &impl Clock,
        max_wait: Duration,
    ) -> Duration {
        match deadline {
            Some(d) => d.remaining(clock).min(max_wait),
            None => max_wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[test]
    fn expires_exactly_at_the_instant() {
        let clock = ManualClock::new();
        let d = Deadline::after(&clock, Duration::from_millis(10));
        clock.advance(Duration::from_millis(9));
        assert!(!d.is_expired(&clock));
        assert_eq!(d.remaining(&clock), Duration::from_millis(1));
        clock.advance(Duration::from_millis(1));
        assert!(d.is_expired(&clock));
        assert_eq!(d.remaining(&clock), Duration::ZERO);
    }

    #[test]
    fn optional_helpers() {
        let clock = ManualClock::new();
        assert_eq!(Deadline::from_timeout(&clock, None), None);
        let d = Deadline::from_timeout(&clock, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(Deadline::earliest(None, None), None);
        assert_eq!(Deadline::earliest(Some(d), None), Some(d));
        assert_eq!(Deadline::earliest(None, Some(d)), Some(d));
        let wait = Deadline::bounded_wait(Some(d), &clock, Duration::from_secs(5));
        assert_eq!(wait, Duration::from_secs(1));
        let wait = Deadline::bounded_wait(None, &clock, Duration::from_secs(5));
        assert_eq!(wait, Duration::from_secs(5));
        assert_eq!(Deadline::at(d.instant()), d);
    }

    #[test]
    fn huge_timeouts_do_not_panic() {
        let clock = ManualClock::new();
        let d = Deadline::after(&clock, Duration::MAX);
        assert!(!d.is_expired(&clock));
    }
}
