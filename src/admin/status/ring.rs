//! A fixed-capacity ring of samples: pushing past the capacity overwrites the oldest,
//! so memory stays bounded however long the process runs.

/// The last `capacity` values pushed, oldest first when read.
#[derive(Debug, Clone)]
pub(crate) struct Ring<T> {
    items: Vec<T>,
    /// Where the next push goes once `items` is full.
    next: usize,
    capacity: usize,
}

impl<T> Ring<T> {
    /// An empty ring keeping at most `capacity` values (at least one).
    pub(crate) fn new(capacity: usize) -> Ring<T> {
        let capacity = capacity.max(1);
        Ring {
            items: Vec::with_capacity(capacity),
            next: 0,
            capacity,
        }
    }

    /// Adds a value, dropping the oldest when full.
    pub(crate) fn push(&mut self, value: T) {
        if self.items.len() < self.capacity {
            self.items.push(value);
        } else if let Some(slot) = self.items.get_mut(self.next) {
            *slot = value;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    /// Values held.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Values oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        let split = if self.items.len() < self.capacity {
            0
        } else {
            self.next
        };
        let (newer, older) = self.items.split_at(split.min(self.items.len()));
        older.iter().chain(newer.iter())
    }

    /// The newest value.
    pub(crate) fn last(&self) -> Option<&T> {
        self.back(0)
    }

    /// The value pushed `ago` pushes before the newest (`0` = the newest).
    pub(crate) fn back(&self, ago: usize) -> Option<&T> {
        if ago >= self.items.len() {
            return None;
        }
        let newest = (self.next + self.capacity - 1) % self.capacity;
        let index = (newest + self.capacity - ago) % self.capacity;
        // Before the ring is full, `next` == `len` and indices stay below it.
        self.items.get(index)
    }

    /// Forgets every value.
    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_values_in_order() {
        let mut ring = Ring::new(3);
        assert_eq!(ring.len(), 0);
        assert!(ring.last().is_none());
        ring.push(1);
        ring.push(2);
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            (ring.back(0), ring.back(1), ring.back(2)),
            (Some(&2), Some(&1), None)
        );
        for v in 3..=7 {
            ring.push(v);
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(
            (ring.back(0), ring.back(2), ring.back(3)),
            (Some(&7), Some(&5), None)
        );
        ring.clear();
        assert_eq!(ring.iter().count(), 0);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut ring = Ring::new(600);
        for v in 0..100_000u64 {
            ring.push(v);
        }
        assert_eq!(ring.len(), 600);
        assert!(ring.items.capacity() <= 600);
        assert_eq!(ring.iter().next(), Some(&99_400));
        assert_eq!(ring.last(), Some(&99_999));
    }

    #[test]
    fn a_zero_capacity_holds_one() {
        let mut ring = Ring::new(0);
        ring.push('a');
        ring.push('b');
        assert_eq!(ring.iter().copied().collect::<String>(), "b");
    }
}
