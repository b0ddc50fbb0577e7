//! An intrusive doubly linked list over block ids: O(1) push, remove and
//! pop of the least recently pushed. It orders the cached-but-unused prefix
//! blocks for eviction.

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub(crate) struct LruList {
    prev: Vec<u32>,
    next: Vec<u32>,
    linked: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl LruList {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            prev: vec![NONE; capacity],
            next: vec![NONE; capacity],
            linked: vec![false; capacity],
            head: NONE,
            tail: NONE,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        self.linked.get(id as usize).copied().unwrap_or(false)
    }

    /// Append `id` as the most recently used. No-op if already linked.
    pub(crate) fn push_back(&mut self, id: u32) {
        let i = id as usize;
        if i >= self.linked.len() || self.linked[i] {
            return;
        }
        self.linked[i] = true;
        self.prev[i] = self.tail;
        self.next[i] = NONE;
        if self.tail == NONE {
            self.head = id;
        } else {
            self.next[self.tail as usize] = id;
        }
        self.tail = id;
        self.len += 1;
    }

    /// Unlink `id`; returns whether it was linked.
    pub(crate) fn remove(&mut self, id: u32) -> bool {
        let i = id as usize;
        if !self.contains(id) {
            return false;
        }
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NONE {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NONE {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.linked[i] = false;
        self.prev[i] = NONE;
        self.next[i] = NONE;
        self.len -= 1;
        true
    }

    /// Unlink and return the least recently pushed.
    pub(crate) fn pop_front(&mut self) -> Option<u32> {
        let head = self.head;
        (head != NONE && self.remove(head)).then_some(head)
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mut at = self.head;
        std::iter::from_fn(move || {
            if at == NONE {
                return None;
            }
            let id = at;
            at = self.next[at as usize];
            Some(id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_remove_pop_in_order() {
        let mut l = LruList::new(8);
        for id in [3, 1, 4, 5] {
            l.push_back(id);
        }
        l.push_back(1); // already linked
        assert_eq!(l.iter().collect::<Vec<_>>(), [3, 1, 4, 5]);
        assert!(l.remove(4));
        assert!(!l.remove(4));
        assert!(!l.remove(100));
        assert_eq!(l.pop_front(), Some(3));
        l.push_back(3);
        assert_eq!(l.iter().collect::<Vec<_>>(), [1, 5, 3]);
        assert_eq!(l.len(), 3);
        assert_eq!(
            (l.pop_front(), l.pop_front(), l.pop_front()),
            (Some(1), Some(5), Some(3))
        );
        assert_eq!(l.pop_front(), None);
        assert_eq!(l.len(), 0);
    }
}
