//! Request priorities and the order in which queued work is served.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::CoreError;

/// How urgently a request should run.
///
/// Priorities are totally ordered: `Urgent > High > Normal > Low`. Within one
/// level, work is served first-in first-out; [`QueueOrder`] encodes both rules
/// in one sortable key.
///
/// ```
/// use switchyard_core::Priority;
/// let mut levels = vec![Priority::Low, Priority::Urgent, Priority::Normal];
/// levels.sort();
/// assert_eq!(levels, [Priority::Low, Priority::Normal, Priority::Urgent]);
/// assert_eq!("high".parse::<Priority>().unwrap(), Priority::High);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    /// Served before everything else (interactive, health checks).
    Urgent,
    /// Served before normal work.
    High,
    /// The default.
    #[default]
    Normal,
    /// Background work; served when nothing else waits.
    Low,
}

impl Priority {
    /// All levels, most urgent first. `Priority::ALL[p.rank()] == p`.
    pub const ALL: [Priority; 4] = [
        Priority::Urgent,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// Number of levels.
    pub const COUNT: usize = 4;

    /// Position in [`Priority::ALL`]: 0 for `Urgent` up to 3 for `Low`.
    /// Handy for indexing one queue per level.
    pub const fn rank(self) -> usize {
        match self {
            Priority::Urgent => 0,
            Priority::High => 1,
            Priority::Normal => 2,
            Priority::Low => 3,
        }
    }

    /// The level at `rank`, or `None` if `rank >= Priority::COUNT`.
    pub const fn from_rank(rank: usize) -> Option<Priority> {
        match rank {
            0 => Some(Priority::Urgent),
            1 => Some(Priority::High),
            2 => Some(Priority::Normal),
            3 => Some(Priority::Low),
            _ => None,
        }
    }

    /// One level more urgent (used to age waiting requests); `Urgent` stays `Urgent`.
    pub const fn promoted(self) -> Priority {
        match self {
            Priority::Urgent | Priority::High => Priority::Urgent,
            Priority::Normal => Priority::High,
            Priority::Low => Priority::Normal,
        }
    }

    /// The lowercase name: `urgent`, `high`, `normal` or `low`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl Ord for Priority {
    fn cmp(&self, other: &Self) -> Ordering {
        // A lower rank is more urgent, so it compares greater.
        other.rank().cmp(&self.rank())
    }
}

impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = CoreError;

    /// Parses a level name, ignoring ASCII case and surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| CoreError::UnknownPriority {
                given: s.to_owned(),
            })
    }
}

/// The key that orders queued work: priority first, then arrival (FIFO).
///
/// A greater `QueueOrder` is served sooner, so it can be pushed straight into a
/// `std::collections::BinaryHeap` (a max-heap). `sequence` is the arrival
/// number handed out by the queue; lower numbers arrived earlier.
///
/// ```
/// use std::collections::BinaryHeap;
/// use switchyard_core::{Priority, QueueOrder};
///
/// let mut heap = BinaryHeap::new();
/// heap.push(QueueOrder::new(Priority::Normal, 0));
/// heap.push(QueueOrder::new(Priority::Urgent, 1));
/// heap.push(QueueOrder::new(Priority::Normal, 2));
/// let served: Vec<u64> = std::iter::from_fn(|| heap.pop()).map(|o| o.sequence).collect();
/// assert_eq!(served, [1, 0, 2]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueOrder {
    /// The request's priority.
    pub priority: Priority,
    /// Arrival number; lower arrived earlier.
    pub sequence: u64,
}

impl QueueOrder {
    /// A key for work of `priority` that arrived as number `sequence`.
    pub const fn new(priority: Priority, sequence: u64) -> Self {
        Self { priority, sequence }
    }
}

impl Ord for QueueOrder {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.sequence.cmp(&self.sequence))
    }
}

impl PartialOrd for QueueOrder {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BinaryHeap;

    #[test]
    fn ranks_round_trip_and_order() {
        for (i, p) in Priority::ALL.into_iter().enumerate() {
            assert_eq!(p.rank(), i);
            assert_eq!(Priority::from_rank(i), Some(p));
        }
        assert_eq!(Priority::from_rank(4), None);
        assert!(Priority::Urgent > Priority::High);
        assert!(Priority::High > Priority::Normal);
        assert!(Priority::Normal > Priority::Low);
        assert_eq!(Priority::default(), Priority::Normal);
    }

    #[test]
    fn promotion_climbs_one_level_and_stops_at_urgent() {
        assert_eq!(Priority::Low.promoted(), Priority::Normal);
        assert_eq!(Priority::Normal.promoted(), Priority::High);
        assert_eq!(Priority::High.promoted(), Priority::Urgent);
        assert_eq!(Priority::Urgent.promoted(), Priority::Urgent);
    }

    #[test]
    fn parses_names_case_insensitively_and_rejects_others() {
        assert_eq!(" URGENT ".parse::<Priority>(), Ok(Priority::Urgent));
        assert_eq!("Low".parse::<Priority>(), Ok(Priority::Low));
        let err = "soon".parse::<Priority>().unwrap_err();
        assert_eq!(
            err,
            CoreError::UnknownPriority {
                given: "soon".into()
            }
        );
        for p in Priority::ALL {
            assert_eq!(p.to_string().parse::<Priority>(), Ok(p));
        }
    }

    fn priority() -> impl Strategy<Value = Priority> {
        (0usize..4).prop_map(|r| Priority::from_rank(r).unwrap())
    }

    proptest! {
        /// A heap of QueueOrder serves by priority, and FIFO within a level.
        #[test]
        fn heap_serves_priority_then_fifo(levels in prop::collection::vec(priority(), 0..200)) {
            let mut heap: BinaryHeap<QueueOrder> = levels
                .iter()
                .enumerate()
                .map(|(i, p)| QueueOrder::new(*p, i as u64))
                .collect();
            let served: Vec<QueueOrder> = std::iter::from_fn(|| heap.pop()).collect();
            prop_assert_eq!(served.len(), levels.len());
            for pair in served.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                prop_assert!(a.priority >= b.priority);
                if a.priority == b.priority {
                    prop_assert!(a.sequence < b.sequence);
                }
            }
        }
    }
}
