//! The priority queue: four levels, FIFO within a level, one sub-queue per
//! [`BatchKey`], optional aging, bounded capacity.
//!
//! It is a plain data structure (no locks, no threads, no clock of its own):
//! the [`Batcher`](crate::Batcher) wraps it in a mutex, and the
//! [`simulator`](crate::sim) drives it on virtual time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use switchyard_core::{Deadline, Priority, RequestId};

use crate::request::KeyMap;
use crate::{BatchError, BatchKey, QueueScope};

/// Bounds and aging of a [`PriorityQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Most requests queued over all keys.
    pub capacity: usize,
    /// Most requests queued under one key.
    pub per_key_capacity: usize,
    /// A request that has waited this long is served as if one level more
    /// urgent, and another level each further interval (Low reaches Urgent
    /// after three). `None` turns aging off.
    pub aging: Option<Duration>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 4096,
            per_key_capacity: 4096,
            aging: Some(Duration::from_secs(5)),
        }
    }
}

/// Where a queued entry sits: its level and its arrival number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The priority level's rank (0 = Urgent).
    pub level: u8,
    /// Arrival number, unique within the queue and increasing.
    pub seq: u64,
}

/// One queued request.
#[derive(Debug)]
pub struct Queued<T> {
    /// Its id.
    pub id: RequestId,
    /// Its priority at submission.
    pub priority: Priority,
    /// Its cost.
    pub cost: u64,
    /// When it must have started by.
    pub deadline: Option<Deadline>,
    /// When it was queued.
    pub enqueued_at: Instant,
    /// Its coalescing hash.
    pub coalesce: Option<u64>,
    /// What the owner stores with it.
    pub payload: T,
    seq: u64,
}

impl<T> Queued<T> {
    /// A new entry, not yet queued.
    pub fn new(
        id: RequestId,
        priority: Priority,
        cost: u64,
        enqueued_at: Instant,
        payload: T,
    ) -> Self {
        Self {
            id,
            priority,
            cost,
            deadline: None,
            enqueued_at,
            coalesce: None,
            payload,
            seq: 0,
        }
    }

    /// Its arrival number (set when it is queued).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Where it sits in the queue.
    pub fn position(&self) -> Position {
        Position {
            level: self.priority.rank() as u8,
            seq: self.seq,
        }
    }

    fn effective_rank(&self, now: Instant, aging: Option<Duration>) -> usize {
        let rank = self.priority.rank();
        match aging {
            Some(step) if rank > 0 && !step.is_zero() => {
                let waited = now.saturating_duration_since(self.enqueued_at);
                if waited < step {
                    return rank;
                }
                let step = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
                let waited = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
                rank.saturating_sub(usize::try_from(waited / step).unwrap_or(usize::MAX))
            }
            _ => rank,
        }
    }
}

#[derive(Debug)]
struct KeyQueue<T> {
    levels: [VecDeque<Queued<T>>; Priority::COUNT],
    len: usize,
    cost: u64,
}

impl<T> KeyQueue<T> {
    fn new() -> Self {
        Self {
            levels: Default::default(),
            len: 0,
            cost: 0,
        }
    }

    /// The level whose head is served next: lowest effective rank, then oldest.
    fn best_level(&self, now: Instant, aging: Option<Duration>) -> Option<(usize, usize, u64)> {
        let mut best: Option<(usize, usize, u64)> = None;
        for (level, q) in self.levels.iter().enumerate() {
            let Some(head) = q.front() else { continue };
            if aging.is_none() {
                // Without aging the first non-empty level wins outright.
                return Some((level, level, head.seq));
            }
            let candidate = (level, head.effective_rank(now, aging), head.seq);
            if best.is_none_or(|b| (candidate.1, candidate.2) < (b.1, b.2)) {
                best = Some(candidate);
            }
        }
        best
    }

    fn oldest(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|q| q.front().map(|e| e.enqueued_at))
            .min()
    }

    fn take(&mut self, level: usize, index: usize) -> Option<Queued<T>> {
        let entry = self.levels[level].remove(index)?;
        self.len -= 1;
        self.cost = self.cost.saturating_sub(entry.cost);
        Some(entry)
    }
}

/// A summary of one key's sub-queue, for deciding whether its batch is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySummary {
    /// Requests queued.
    pub len: usize,
    /// Their total cost.
    pub cost: u64,
    /// When the oldest arrived.
    pub oldest: Instant,
    /// The effective rank of the request served next (0 = Urgent).
    pub best_rank: usize,
    /// Its arrival number.
    pub best_seq: u64,
}

/// The requests taken for one batch.
#[derive(Debug)]
pub struct Taken<T> {
    /// In service order: effective priority, then arrival.
    pub batch: Vec<Queued<T>>,
    /// Requests met on the way whose deadline had passed: fail them.
    pub expired: Vec<Queued<T>>,
}

/// Queue depths and waits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    /// Requests queued.
    pub depth: usize,
    /// Requests queued per priority level (index = rank, 0 = Urgent), by
    /// submitted priority.
    pub depth_by_priority: [usize; Priority::COUNT],
    /// How long the oldest queued request has waited.
    pub oldest_wait: Option<Duration>,
    /// Per key, in key order.
    pub keys: Vec<KeyStats>,
}

/// One key's share of [`QueueStats`].
#[derive(Debug, Clone, PartialEq)]
pub struct KeyStats {
    /// The key.
    pub key: BatchKey,
    /// Requests queued under it.
    pub depth: usize,
    /// Per priority level.
    pub depth_by_priority: [usize; Priority::COUNT],
    /// Total queued cost.
    pub cost: u64,
    /// How long its oldest request has waited.
    pub oldest_wait: Duration,
}

/// Four priority levels, FIFO within a level, a sub-queue per key.
///
/// ```
/// use std::time::Instant;
/// use switchyard_batch::{BatchKey, PriorityQueue, QueueConfig, Queued};
/// use switchyard_core::{Priority, RequestId};
///
/// let mut queue = PriorityQueue::new(QueueConfig::default());
/// let key = BatchKey::default();
/// let now = Instant::now();
/// for (n, p) in [(1, Priority::Low), (2, Priority::Urgent), (3, Priority::Low)] {
///     let entry = Queued::new(RequestId::from_u64(n), p, 1, now, ());
///     queue.push(&key, entry).unwrap();
/// }
/// let taken = queue.take_batch(&key, 8, u64::MAX, now);
/// let order: Vec<u64> = taken.batch.iter().map(|e| e.id.as_u64()).collect();
/// assert_eq!(order, [2, 1, 3]);
/// ```
#[derive(Debug)]
pub struct PriorityQueue<T> {
    config: QueueConfig,
    keys: KeyMap<BatchKey, KeyQueue<T>>,
    len: usize,
    next_seq: u64,
    with_deadline: usize,
}

impl<T> PriorityQueue<T> {
    /// An empty queue.
    pub fn new(config: QueueConfig) -> Self {
        Self {
            config,
            keys: KeyMap::default(),
            len: 0,
            next_seq: 0,
            with_deadline: 0,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Requests queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queue `entry` under `key`; on a full queue it comes back with the error.
    pub fn push(
        &mut self,
        key: &BatchKey,
        mut entry: Queued<T>,
    ) -> Result<Position, (BatchError, Queued<T>)> {
        if self.len >= self.config.capacity {
            let error = BatchError::QueueFull {
                scope: QueueScope::Global,
                capacity: self.config.capacity,
            };
            return Err((error, entry));
        }
        if !self.keys.contains_key(key) {
            self.keys.insert(key.clone(), KeyQueue::new());
        }
        let Some(sub) = self.keys.get_mut(key) else {
            unreachable!("inserted above")
        };
        if sub.len >= self.config.per_key_capacity {
            let error = BatchError::QueueFull {
                scope: QueueScope::Key,
                capacity: self.config.per_key_capacity,
            };
            return Err((error, entry));
        }
        entry.seq = self.next_seq;
        self.next_seq += 1;
        let level = entry.priority.rank();
        let pos = Position {
            level: level as u8,
            seq: entry.seq,
        };
        sub.len += 1;
        sub.cost = sub.cost.saturating_add(entry.cost);
        if entry.deadline.is_some() {
            self.with_deadline += 1;
        }
        sub.levels[level].push_back(entry);
        self.len += 1;
        Ok(pos)
    }

    /// The queued entry at `pos` and its key.
    pub fn find_at_mut(&mut self, pos: Position) -> Option<(&BatchKey, &mut Queued<T>)> {
        let level = usize::from(pos.level);
        self.keys.iter_mut().find_map(|(key, sub)| {
            let q = sub.levels.get_mut(level)?;
            let index = q.binary_search_by_key(&pos.seq, |e| e.seq).ok()?;
            q.get_mut(index).map(|e| (key, e))
        })
    }

    /// Attach to the queued entry at `pos` under `key` (coalescing): `join`
    /// gets its payload, and its deadline becomes the later of its own and
    /// `deadline` (`None`, no deadline, wins). Returns `false` if it is gone.
    pub fn join(
        &mut self,
        key: &BatchKey,
        pos: Position,
        deadline: Option<Deadline>,
        join: impl FnOnce(&mut T),
    ) -> bool {
        let Some(sub) = self.keys.get_mut(key) else {
            return false;
        };
        let Some(q) = sub.levels.get_mut(usize::from(pos.level)) else {
            return false;
        };
        let Ok(index) = q.binary_search_by_key(&pos.seq, |e| e.seq) else {
            return false;
        };
        let Some(entry) = q.get_mut(index) else {
            return false;
        };
        let had = entry.deadline.is_some();
        entry.deadline = match (entry.deadline, deadline) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        if had && entry.deadline.is_none() {
            self.with_deadline -= 1;
        }
        join(&mut entry.payload);
        true
    }

    /// Requests and total cost queued under `key`.
    pub fn key_load(&self, key: &BatchKey) -> (usize, u64) {
        self.keys.get(key).map_or((0, 0), |s| (s.len, s.cost))
    }

    /// Whether any queued entry has a deadline.
    pub fn has_deadlines(&self) -> bool {
        self.with_deadline > 0
    }

    /// Remove the entry at `pos`, whichever key it is under.
    pub fn remove_at(&mut self, pos: Position) -> Option<Queued<T>> {
        let level = usize::from(pos.level);
        let mut found = None;
        for (key, sub) in &mut self.keys {
            let q = sub.levels.get(level)?;
            if let Ok(index) = q.binary_search_by_key(&pos.seq, |e| e.seq) {
                found = Some((key.clone(), index));
                break;
            }
        }
        let (key, index) = found?;
        self.take_at(&key, level, index)
    }

    /// Remove the entry with `id` (a linear scan: cancellation is rare).
    pub fn remove_id(&mut self, id: RequestId) -> Option<Queued<T>> {
        let (key, level, index) = self.keys.iter().find_map(|(key, sub)| {
            sub.levels.iter().enumerate().find_map(|(level, q)| {
                q.iter()
                    .position(|e| e.id == id)
                    .map(|i| (key.clone(), level, i))
            })
        })?;
        self.take_at(&key, level, index)
    }

    /// Find an entry by a predicate over all queued entries (for coalescing
    /// followers and id lookups the owner keeps in payloads).
    pub fn find_mut(&mut self, mut pred: impl FnMut(&Queued<T>) -> bool) -> Option<&mut Queued<T>> {
        self.keys
            .values_mut()
            .flat_map(|sub| sub.levels.iter_mut().flat_map(|q| q.iter_mut()))
            .find(|e| pred(e))
    }

    fn take_at(&mut self, key: &BatchKey, level: usize, index: usize) -> Option<Queued<T>> {
        let sub = self.keys.get_mut(key)?;
        let entry = sub.take(level, index)?;
        if sub.len == 0 {
            self.keys.remove(key);
        }
        self.len -= 1;
        if entry.deadline.is_some() {
            self.with_deadline -= 1;
        }
        Some(entry)
    }

    /// A summary of `key`'s sub-queue, `None` when it is empty.
    pub fn summary(&self, key: &BatchKey, now: Instant) -> Option<KeySummary> {
        let sub = self.keys.get(key)?;
        let (_, best_rank, best_seq) = sub.best_level(now, self.config.aging)?;
        Some(KeySummary {
            len: sub.len,
            cost: sub.cost,
            oldest: sub.oldest()?,
            best_rank,
            best_seq,
        })
    }

    /// Every non-empty key with its summary.
    pub fn summaries(&self, now: Instant) -> impl Iterator<Item = (&BatchKey, KeySummary)> + '_ {
        self.keys
            .keys()
            .filter_map(move |k| self.summary(k, now).map(|s| (k, s)))
    }

    /// The key whose next request is the most urgent (effective priority,
    /// then arrival), among keys `eligible` accepts.
    pub fn best_key(
        &self,
        now: Instant,
        mut eligible: impl FnMut(&BatchKey, &KeySummary) -> bool,
    ) -> Option<(&BatchKey, KeySummary)> {
        self.summaries(now)
            .filter(|(k, s)| eligible(k, s))
            .min_by_key(|(_, s)| (s.best_rank, s.best_seq))
    }

    /// Take up to `max_items` requests from `key` in service order, stopping
    /// before the first one that would push the batch's cost over `max_cost`
    /// (a single request over budget still runs, alone). Entries whose
    /// deadline has passed are taken out into [`Taken::expired`] instead.
    pub fn take_batch(
        &mut self,
        key: &BatchKey,
        max_items: usize,
        max_cost: u64,
        now: Instant,
    ) -> Taken<T> {
        self.take_batch_above(key, max_items, max_cost, now, Priority::Low)
    }

    /// [`take_batch`](Self::take_batch), stopping at the first request
    /// whose effective priority is below `floor` (what a
    /// [`YieldGate`](crate::YieldGate) holds stays queued).
    pub fn take_batch_above(
        &mut self,
        key: &BatchKey,
        max_items: usize,
        max_cost: u64,
        now: Instant,
        floor: Priority,
    ) -> Taken<T> {
        let mut taken = Taken {
            batch: Vec::with_capacity(max_items.min(self.len)),
            expired: Vec::new(),
        };
        let aging = self.config.aging;
        let Some(sub) = self.keys.get_mut(key) else {
            return taken;
        };
        let mut cost = 0u64;
        while taken.batch.len() < max_items {
            let Some((level, rank, _)) = sub.best_level(now, aging) else {
                break;
            };
            if rank > floor.rank() {
                break;
            }
            let Some(head) = sub.levels[level].front() else {
                break;
            };
            let expired = head.deadline.is_some_and(|d| now >= d.instant());
            if !expired && !taken.batch.is_empty() && cost.saturating_add(head.cost) > max_cost {
                break;
            }
            let Some(entry) = sub.take(level, 0) else {
                break;
            };
            self.len -= 1;
            if entry.deadline.is_some() {
                self.with_deadline -= 1;
            }
            if expired {
                taken.expired.push(entry);
            } else {
                cost = cost.saturating_add(entry.cost);
                taken.batch.push(entry);
            }
        }
        if sub.len == 0 {
            self.keys.remove(key);
        }
        taken
    }

    /// Take out every entry whose deadline has passed.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Queued<T>> {
        let mut out = Vec::new();
        if self.with_deadline == 0 {
            return out;
        }
        for sub in self.keys.values_mut() {
            for q in &mut sub.levels {
                let mut i = 0;
                while i < q.len() {
                    if q[i].deadline.is_some_and(|d| now >= d.instant()) {
                        if let Some(e) = q.remove(i) {
                            sub.len -= 1;
                            sub.cost = sub.cost.saturating_sub(e.cost);
                            out.push(e);
                        }
                    } else {
                        i += 1;
                    }
                }
            }
        }
        self.keys.retain(|_, sub| sub.len > 0);
        self.len -= out.len();
        self.with_deadline -= out.len();
        out
    }

    /// Take out everything (shutdown).
    pub fn drain(&mut self) -> Vec<Queued<T>> {
        let mut out = Vec::with_capacity(self.len);
        for (_, sub) in self.keys.drain() {
            for q in sub.levels {
                out.extend(q);
            }
        }
        self.len = 0;
        self.with_deadline = 0;
        out
    }

    /// Visit every queued entry with its key.
    pub fn for_each(&self, mut visit: impl FnMut(&BatchKey, &Queued<T>)) {
        for (key, sub) in &self.keys {
            for q in &sub.levels {
                for e in q {
                    visit(key, e);
                }
            }
        }
    }

    /// Depths and waits, measured at `now`.
    pub fn stats(&self, now: Instant) -> QueueStats {
        let mut stats = QueueStats {
            depth: self.len,
            ..QueueStats::default()
        };
        for (key, sub) in &self.keys {
            let mut by_priority = [0; Priority::COUNT];
            for (level, q) in sub.levels.iter().enumerate() {
                by_priority[level] = q.len();
                stats.depth_by_priority[level] += q.len();
            }
            let oldest_wait = sub
                .oldest()
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            stats.oldest_wait = Some(
                stats
                    .oldest_wait
                    .map_or(oldest_wait, |w| w.max(oldest_wait)),
            );
            stats.keys.push(KeyStats {
                key: key.clone(),
                depth: sub.len,
                depth_by_priority: by_priority,
                cost: sub.cost,
                oldest_wait,
            });
        }
        stats.keys.sort_by(|a, b| a.key.cmp(&b.key));
        stats
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
