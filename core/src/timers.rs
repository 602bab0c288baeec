//! Named timers: every machine lists its deadlines in one table keyed by an enum of its own
//! ([`crate::worker::WorkerTimer`], [`crate::producer::ProducerTimer`],
//! [`crate::mux::MuxTimer`], [`crate::bells::BellTimer`]), and its `poll_timeout` is the
//! earliest entry of that table.
//!
//! The table is computed from the machine's state each time it is asked for, never stored
//! beside it: a timer cannot outlive what it waits for, nor be forgotten when that state
//! changes. A timer whose action cannot go when it fires (a request of the same kind in
//! flight, no credits, a backoff not over) is not in the table: what unblocks it sets it
//! again. So after a driver has fired every due timer and drained the machine, every timer
//! in the table lies ahead of now (the deterministic world checks that after each step, and
//! names the offending timer).
//!
//! The rules of time, for every machine, are in [`crate::time`]: the clock may go
//! backwards, and a `handle_timeout` before the earliest timer does nothing.

use crate::time::Instant;

/// The most timers a table holds (the worker's kinds, the largest set).
const SLOTS: usize = 8;

/// A machine's timers: at most one deadline per key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Timers<K> {
    slots: [Option<(K, Instant)>; SLOTS],
}

impl<K: Copy + PartialEq> Default for Timers<K> {
    fn default() -> Self {
        Self {
            slots: [None; SLOTS],
        }
    }
}

impl<K: Copy + PartialEq> Timers<K> {
    /// An empty table.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets timer `key` at `at`; a key set twice keeps the earlier time. Every machine has
    /// fewer kinds of timer than the table has slots, so none is ever dropped.
    pub fn set(&mut self, key: K, at: Instant) {
        if let Some(slot) = self.slots.iter_mut().flatten().find(|(k, _)| *k == key) {
            slot.1 = slot.1.min(at);
            return;
        }
        if let Some(free) = self.slots.iter_mut().find(|s| s.is_none()) {
            *free = Some((key, at));
        }
    }

    /// When timer `key` fires, if it is set.
    #[must_use]
    pub fn get(&self, key: K) -> Option<Instant> {
        self.iter().find(|(k, _)| *k == key).map(|(_, at)| at)
    }

    /// Every timer set, in the order set.
    pub fn iter(&self) -> impl Iterator<Item = (K, Instant)> + '_ {
        self.slots.iter().flatten().copied()
    }

    /// The earliest timer (the first set of those tied).
    #[must_use]
    pub fn next(&self) -> Option<(K, Instant)> {
        self.iter()
            .fold(None, |best: Option<(K, Instant)>, (k, at)| match best {
                Some((_, b)) if b <= at => best,
                _ => Some((k, at)),
            })
    }

    /// When the earliest timer fires: a machine's `poll_timeout`.
    #[must_use]
    pub fn next_at(&self) -> Option<Instant> {
        self.next().map(|(_, at)| at)
    }

    /// The timers due at `now` (not later than it).
    pub fn due(&self, now: Instant) -> impl Iterator<Item = K> + '_ {
        self.iter()
            .filter(move |(_, at)| *at <= now)
            .map(|(k, _)| k)
    }

    /// Whether no timer is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }
}

impl<K: Copy> IntoIterator for Timers<K> {
    type Item = (K, Instant);
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<(K, Instant)>, SLOTS>>;

    /// Every timer set, in the order set.
    fn into_iter(self) -> Self::IntoIter {
        self.slots.into_iter().flatten()
    }
}

impl<K: Copy + PartialEq + std::fmt::Debug> std::fmt::Debug for Timers<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Timers;
    use crate::time::Instant;

    fn at(ms: u64) -> Instant {
        Instant::from_unix_ms(ms)
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum T {
        A,
        B,
        C,
    }

    #[test]
    fn the_earliest_timer_is_next_and_a_key_keeps_its_earlier_time() {
        let mut t = Timers::new();
        assert_eq!(t.next(), None);
        assert!(t.is_empty());
        t.set(T::A, at(30));
        t.set(T::B, at(10));
        t.set(T::A, at(20));
        t.set(T::A, at(40));
        t.set(T::C, at(10));
        assert_eq!(t.get(T::A), Some(at(20)));
        assert_eq!(t.next(), Some((T::B, at(10))), "ties go to the first set");
        assert_eq!(t.next_at(), Some(at(10)));
        assert_eq!(t.due(at(15)).collect::<Vec<_>>(), vec![T::B, T::C]);
        assert_eq!(t.due(at(9)).count(), 0);
        assert_eq!(format!("{t:?}"), "{A: @20ms, B: @10ms, C: @10ms}");
    }

    #[test]
    fn the_table_holds_every_slot() {
        let mut t = Timers::new();
        for k in 0..8u64 {
            t.set(k, at(100 - k));
        }
        assert_eq!(t.iter().count(), 8);
        assert_eq!(t.next(), Some((7, at(93))));
        // A ninth key finds no slot: no machine has that many kinds, and nothing panics.
        t.set(8, at(1));
        assert_eq!(t.get(8), None);
    }
}
