//! Time as an input: [`Instant`], a point in time, and [`Duration`] (the standard one), a
//! span of it.
//!
//! The core reads no clock. Every call that depends on time takes the caller's `now` as an
//! [`Instant`]: milliseconds since the Unix epoch, the unit of Redis' stream ids and of the
//! jobs' sealed creation times, so that an instant compares with what Redis and other
//! processes wrote. Durations (a lease, a delay, a retention) are
//! [`std::time::Duration`]s; the core works in whole milliseconds, and drops the rest of a
//! duration finer than that.
//!
//! The rules of time, for every machine (see also [`crate::timers`]):
//! - `now` is the caller's clock. It may go backwards (a clock step): a machine keeps its
//!   deadlines and waits for the clock to reach them again; nothing is lost or repeated.
//! - `handle_timeout` may be called at any time: a call before the earliest timer, or a
//!   second call at the same time, does nothing.
//! - Arithmetic saturates: an instant plus a huge duration is the end of time, an instant
//!   minus a later one is zero.

pub use std::time::Duration;

/// A point in time: milliseconds since the Unix epoch, by the caller's clock.
///
/// ```
/// use datalayer_core::time::{Duration, Instant};
///
/// let now = Instant::from_unix_ms(1_700_000_000_000);
/// let later = now + Duration::from_secs(2);
/// assert_eq!(later.unix_ms(), 1_700_000_002_000);
/// assert_eq!(later.saturating_duration_since(now), Duration::from_secs(2));
/// assert_eq!(now.saturating_duration_since(later), Duration::ZERO);
/// assert_eq!(format!("{later:?}"), "@1700000002000ms");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(0);
    /// The last representable instant (nothing is ever due then).
    pub const MAX: Self = Self(u64::MAX);

    /// The instant `ms` milliseconds after the Unix epoch.
    #[must_use]
    pub const fn from_unix_ms(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub const fn unix_ms(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is (zero if it is not after it).
    #[must_use]
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// This instant plus `ms` milliseconds, saturating.
    #[must_use]
    pub const fn plus_ms(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Self;

    /// Saturating: the result is at most [`Instant::MAX`].
    fn add(self, d: Duration) -> Self {
        self.plus_ms(millis(d))
    }
}

impl std::ops::AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl std::ops::Sub<Duration> for Instant {
    type Output = Self;

    /// Saturating: the result is at least [`Instant::EPOCH`].
    fn sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(millis(d)))
    }
}

impl std::fmt::Debug for Instant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "@{}ms", self.0)
    }
}

/// Shorthands for the crate's tests, whose times are ms literals.
#[cfg(test)]
pub(crate) mod testing {
    use super::Instant;

    /// The instant `ms` after the epoch.
    pub(crate) fn inst(ms: u64) -> Instant {
        Instant::from_unix_ms(ms)
    }

    /// A machine's `poll_timeout` in ms.
    pub(crate) fn ms_of(t: Option<Instant>) -> Option<u64> {
        t.map(Instant::unix_ms)
    }
}

/// A duration in whole milliseconds (the rest dropped), saturating at `u64::MAX`.
#[must_use]
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_drops_sub_millisecond_parts() {
        assert_eq!(Instant::MAX + Duration::from_millis(1), Instant::MAX);
        assert_eq!(Instant::EPOCH - Duration::from_secs(1), Instant::EPOCH);
        assert_eq!(Instant::EPOCH + Duration::MAX, Instant::MAX);
        assert_eq!(millis(Duration::from_micros(1_999)), 1);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        let mut t = Instant::from_unix_ms(5);
        t += Duration::from_millis(5);
        assert_eq!(t, Instant::from_unix_ms(10));
        assert!(Instant::from_unix_ms(9) < t);
    }
}
