//! Retry policy: how many attempts a job gets, and how long it waits between them.

use crate::random::Random;
use crate::time::{Duration, millis};

/// The wait before a failed job's next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backoff {
    /// Retry at once.
    None,
    /// Always wait this long.
    Fixed {
        /// The wait.
        delay: Duration,
    },
    /// Wait `base * 2^(attempt - 1)`, at most `max`; with `jitter`, a uniformly random wait
    /// between half of that and all of it (so that jobs that failed together do not retry
    /// together). Whole milliseconds.
    Exponential {
        /// The first wait.
        base: Duration,
        /// The longest wait.
        max: Duration,
        /// Randomize each wait within [half, full].
        jitter: bool,
    },
}

/// What happens to a job that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Run it again after this long.
    RetryAfter(Duration),
    /// No attempts left: dead-letter it.
    Dead,
}

/// How often a job is tried, and how long it waits in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, at least 1. The default, 1, is Sockethub's: a failure is final.
    pub max_attempts: u32,
    /// The wait between attempts.
    pub backoff: Backoff,
    /// How many times a job may be delivered without an answer (its worker died or hung past
    /// the lease) before it is dead-lettered as stalled.
    pub max_stalled: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff: Backoff::Exponential {
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
                jitter: true,
            },
            max_stalled: 3,
        }
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts in all (values below 1 count as 1), with `backoff` between them.
    #[must_use]
    pub fn new(max_attempts: u32, backoff: Backoff) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            backoff,
            ..Self::default()
        }
    }

    /// A policy with this stall limit (values below 1 count as 1).
    #[must_use]
    pub fn max_stalled(mut self, max_stalled: u32) -> Self {
        self.max_stalled = max_stalled.max(1);
        self
    }

    /// Decides the fate of a job whose attempt number `attempt` (from 1) just failed.
    pub fn decide(&self, attempt: u32, rng: &mut impl Random) -> RetryDecision {
        if attempt >= self.max_attempts {
            return RetryDecision::Dead;
        }
        RetryDecision::RetryAfter(self.delay(attempt, rng))
    }

    /// The wait after failed attempt `attempt` (from 1).
    pub fn delay(&self, attempt: u32, rng: &mut impl Random) -> Duration {
        Duration::from_millis(self.delay_ms(attempt, rng))
    }

    fn delay_ms(&self, attempt: u32, rng: &mut impl Random) -> u64 {
        match self.backoff {
            Backoff::None => 0,
            Backoff::Fixed { delay } => millis(delay),
            Backoff::Exponential { base, max, jitter } => {
                let shift = attempt.saturating_sub(1).min(63);
                let full = millis(base).saturating_mul(1u64 << shift).min(millis(max));
                if jitter && full > 1 {
                    let half = full / 2;
                    half + rng.next_u64() % (full - half + 1)
                } else {
                    full
                }
            }
        }
    }
}

/// Without blocking reads, an empty read waits this long before the next (ms).
pub(crate) const POLL_INTERVAL_MS: u64 = 50;

/// When a machine may send again what failed transiently or had an unknown outcome: 50 ms
/// after the first failure, doubling up to 1 s; a success resets the delay.
///
/// A failure's cause matters: an unknown outcome (the connection failed) says nothing about
/// the command, only about the connection, so any reply Redis gives afterwards, to any
/// command, ends that backoff ([`ResendBackoff::reachable`]); an error reply (`LOADING`,
/// `READONLY`, ...) is about this kind of command, and only its own success ends it. So a
/// failure of one kind never leaves another kind waiting at the cap once Redis answers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ResendBackoff {
    delay_ms: u64,
    at_ms: u64,
    /// The last failure was an unknown outcome (the connection, not the command).
    connection: bool,
}

impl ResendBackoff {
    const MIN_MS: u64 = 50;
    const MAX_MS: u64 = 1_000;

    /// An error reply at `now_ms`: returns when to send again.
    pub(crate) fn fail(&mut self, now_ms: u64) -> u64 {
        self.connection = false;
        self.grow(now_ms)
    }

    /// An unknown outcome at `now_ms`: returns when to send again.
    pub(crate) fn fail_unknown(&mut self, now_ms: u64) -> u64 {
        self.connection = true;
        self.grow(now_ms)
    }

    fn grow(&mut self, now_ms: u64) -> u64 {
        self.delay_ms = (self.delay_ms * 2).clamp(Self::MIN_MS, Self::MAX_MS);
        self.at_ms = now_ms.saturating_add(self.delay_ms);
        self.at_ms
    }

    /// A success of this kind: send at once, and the next failure waits the shortest delay.
    pub(crate) fn succeed(&mut self) {
        self.delay_ms = 0;
        self.at_ms = 0;
        self.connection = false;
    }

    /// Redis answered some command: a backoff caused by the connection ends now.
    pub(crate) fn reachable(&mut self) {
        if self.connection {
            self.succeed();
        }
    }

    /// Whether sending again is allowed at `now_ms`.
    pub(crate) fn ready(&self, now_ms: u64) -> bool {
        now_ms >= self.at_ms
    }

    /// When sending again is allowed.
    pub(crate) fn at_ms(&self) -> u64 {
        self.at_ms
    }

    /// Whether the last outcome was a failure.
    pub(crate) fn backing_off(&self) -> bool {
        self.delay_ms > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;
    use proptest::prelude::*;

    #[test]
    fn resend_backoff_doubles_to_a_cap_and_resets() {
        let mut b = ResendBackoff::default();
        assert!(b.ready(0) && !b.backing_off());
        let waits: Vec<u64> = (0..7).map(|_| b.fail(1_000) - 1_000).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1000, 1000]);
        assert!(!b.ready(1_999) && b.ready(2_000) && b.backing_off());
        b.succeed();
        assert!(b.ready(0), "a success ends the wait at once");
        assert_eq!(b.fail(0), 50);
    }

    #[test]
    fn any_reply_ends_a_backoff_the_connection_caused_but_not_an_error_reply_s() {
        let mut b = ResendBackoff::default();
        for _ in 0..10 {
            b.fail_unknown(0);
        }
        assert!(!b.ready(999));
        b.reachable();
        assert!(b.ready(0) && !b.backing_off());
        for _ in 0..10 {
            b.fail(0);
        }
        b.reachable();
        assert!(
            !b.ready(999),
            "LOADING/READONLY: only this kind's success ends it"
        );
        b.succeed();
        assert!(b.ready(0));
    }

    #[test]
    fn default_is_a_single_attempt() {
        let mut rng = SeededRandom::new(1);
        assert_eq!(
            RetryPolicy::default().decide(1, &mut rng),
            RetryDecision::Dead
        );
        assert_eq!(RetryPolicy::new(0, Backoff::None).max_attempts, 1);
    }

    #[test]
    fn exponential_without_jitter_doubles_up_to_the_cap() {
        let p = RetryPolicy::new(
            10,
            Backoff::Exponential {
                base: Duration::from_millis(100),
                max: Duration::from_millis(1_000),
                jitter: false,
            },
        );
        let mut rng = SeededRandom::new(1);
        let waits: Vec<u64> = (1..7).map(|a| p.delay_ms(a, &mut rng)).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            p.decide(9, &mut rng),
            RetryDecision::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(p.decide(10, &mut rng), RetryDecision::Dead);
        let fixed = RetryPolicy::new(
            3,
            Backoff::Fixed {
                delay: Duration::from_millis(7),
            },
        );
        assert_eq!(
            fixed.decide(2, &mut rng),
            RetryDecision::RetryAfter(Duration::from_millis(7))
        );
    }

    proptest! {
        #[test]
        fn jitter_stays_within_half_and_full(
            base in 0u64..1_000_000, max in 0u64..u64::MAX, attempt in 0u32..200, seed: u64,
        ) {
            let p = RetryPolicy::new(u32::MAX, Backoff::Exponential { base: Duration::from_millis(base), max: Duration::from_millis(max), jitter: true });
            let exact = RetryPolicy::new(u32::MAX, Backoff::Exponential { base: Duration::from_millis(base), max: Duration::from_millis(max), jitter: false });
            let mut rng = SeededRandom::new(seed);
            let full = exact.delay_ms(attempt, &mut rng);
            let d = p.delay_ms(attempt, &mut rng);
            prop_assert!(d <= full && d >= full / 2, "{d} not in [{}, {full}]", full / 2);
            prop_assert!(full <= max);
        }
    }
}
