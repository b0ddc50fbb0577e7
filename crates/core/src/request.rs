//! Request identifiers.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::CoreError;

/// A process-unique identifier of one request.
///
/// [`RequestId::next`] hands out increasing ids from a global counter; ids are
/// shown as `req-N` and parse back from that form or from the bare number.
///
/// ```
/// use switchyard_core::RequestId;
/// let a = RequestId::next();
/// let b = RequestId::next();
/// assert!(b > a);
/// assert_eq!(a.to_string().parse::<RequestId>().unwrap(), a);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl RequestId {
    /// A fresh id, greater than every id this process handed out before.
    pub fn next() -> Self {
        RequestId(NEXT_ID.fetch_add(1, Ordering::Relaxed))
    }

    /// An id with a chosen value (for ids that come from outside, e.g. a journal).
    pub const fn from_u64(value: u64) -> Self {
        RequestId(value)
    }

    /// The numeric value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Makes every later [`RequestId::next`] greater than `id`: ids read
    /// back from a journal after a restart stay unique in this process.
    pub fn reserve_through(id: RequestId) {
        NEXT_ID.fetch_max(id.0.saturating_add(1), Ordering::Relaxed);
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req-{}", self.0)
    }
}

impl FromStr for RequestId {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("req-").unwrap_or(s);
        digits
            .parse::<u64>()
            .map(RequestId)
            .map_err(|_| CoreError::InvalidRequestId {
                given: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| (0..1000).map(|_| RequestId::next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<RequestId> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn reserved_ids_are_never_handed_out() {
        let seen = RequestId::next();
        let far = RequestId::from_u64(seen.as_u64() + 1_000);
        RequestId::reserve_through(far);
        assert!(RequestId::next() > far);
        // Reserving an id already passed moves nothing back.
        RequestId::reserve_through(seen);
        assert!(RequestId::next() > far);
    }

    #[test]
    fn parses_both_forms_and_rejects_garbage() {
        assert_eq!("req-42".parse::<RequestId>(), Ok(RequestId::from_u64(42)));
        assert_eq!("7".parse::<RequestId>(), Ok(RequestId::from_u64(7)));
        assert!(matches!(
            "req-x".parse::<RequestId>(),
            Err(CoreError::InvalidRequestId { .. })
        ));
        assert!("".parse::<RequestId>().is_err());
        assert_eq!(RequestId::from_u64(9).as_u64(), 9);
    }
}
