//! One connection handle's reconnects, without IO: when the next attempt may go, and which
//! retired connections a new one must kill before it serves anything (fencing).
//!
//! **Pacing.** While attempts fail, a command that finds no connection fails at once (it is
//! not sent) until the next attempt is due: 20 ms after the first failure, doubling up to
//! the handle's maximum, rather than every driver of the process dialing a Redis that is
//! down. A success resets it.
//!
//! **Fencing.** A connection retired after a timeout or an I/O error may still have
//! commands that Redis has not read yet; they could run *after* the engine sent them again
//! on the new connection (and a fresh add, whose `MULTI`/`EXEC` has no duplicate check,
//! would enqueue its job twice). So before a new connection serves a command, it kills the
//! retired ones by client id (`CLIENT KILL ID`) on the same server process (same
//! `run_id`: a restarted server reuses client ids, and those of another run are left
//! alone). Redis runs one command at a time: whatever of theirs has not run by then never
//! will.
//!
//! ```
//! use std::time::Duration;
//! use datalayer_core::reconnect::{Identity, Reconnects};
//! use datalayer_core::time::Instant;
//!
//! let t0 = Instant::from_unix_ms(1_000);
//! let mut r = Reconnects::new(Duration::from_secs(1));
//! assert!(r.may_attempt(t0));
//! r.connected(Identity { run_id: "a".into(), client_id: 7 }, &[]);
//! r.retired(); // its commands' fate unknown: fenced
//! assert_eq!(r.to_kill("a"), vec![7]);
//! assert!(r.to_kill("b").is_empty()); // another server run
//! assert_eq!(r.failed(t0), Duration::from_millis(20));
//! assert!(!r.may_attempt(t0 + Duration::from_millis(19)));
//! assert_eq!(r.failed(t0), Duration::from_millis(40));
//! let fenced = r.fenced();
//! r.connected(Identity { run_id: "a".into(), client_id: 9 }, &fenced);
//! assert!(r.to_kill("a").is_empty() && r.may_attempt(t0));
//! ```

use std::time::Duration;

use crate::time::Instant;

/// The first delay after a failed attempt.
pub const MIN_DELAY: Duration = Duration::from_millis(20);

/// The most retired connections remembered for fencing: a long outage retires at most one
/// per attempt, and each is forgotten once a connection to a server is made.
pub const MAX_FENCED: usize = 64;

/// Which server process a connection is on (`run_id` of `INFO server`), and its client id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The server process's `run_id` (empty when unknown: nothing is then fenced by it).
    pub run_id: String,
    /// The connection's `CLIENT ID`.
    pub client_id: i64,
}

/// The `run_id` line of `INFO server`.
#[must_use]
pub fn run_id(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
}

/// A handle's reconnect state.
#[derive(Debug, Clone)]
pub struct Reconnects {
    max_delay: Duration,
    current: Option<Identity>,
    fence: Vec<Identity>,
    /// After a failed attempt: no other before this instant, and the delay that led to it.
    retry_at: Option<(Instant, Duration)>,
}

impl Reconnects {
    /// No connection yet; delays between failed attempts double up to `max_delay` (at
    /// least [`MIN_DELAY`]).
    #[must_use]
    pub fn new(max_delay: Duration) -> Self {
        Self {
            max_delay: max_delay.max(MIN_DELAY),
            current: None,
            fence: Vec::new(),
            retry_at: None,
        }
    }

    /// Whether an attempt to connect may go at `now` (none is due before the delay after a
    /// failed one). A clock that went back holds attempts off no longer than the delay.
    #[must_use]
    pub fn may_attempt(&self, now: Instant) -> bool {
        self.retry_at
            .is_none_or(|(at, delay)| now >= at || at.saturating_duration_since(now) > delay)
    }

    /// The retired connections fenced off so far (to hand back to [`Reconnects::connected`]
    /// once those of them on the new connection's server are killed).
    #[must_use]
    pub fn fenced(&self) -> Vec<Identity> {
        self.fence.clone()
    }

    /// The client ids to kill on a server of `run_id` before a connection to it serves.
    #[must_use]
    pub fn to_kill(&self, run_id: &str) -> Vec<i64> {
        if run_id.is_empty() {
            return Vec::new();
        }
        self.fence
            .iter()
            .filter(|f| f.run_id == run_id)
            .map(|f| f.client_id)
            .collect()
    }

    /// A connection was made (`me`), and `fenced` (what [`Reconnects::fenced`] said before
    /// the attempt) was dealt with: those on its server killed, those of other server runs
    /// harmless. They are forgotten, and the pacing is reset.
    pub fn connected(&mut self, me: Identity, fenced: &[Identity]) {
        self.current = Some(me);
        self.fence.retain(|f| !fenced.contains(f));
        self.retry_at = None;
    }

    /// An attempt failed at `now`: the delay before the next one.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let delay = self
            .retry_at
            .map_or(MIN_DELAY, |(_, d)| (d * 2).min(self.max_delay));
        self.retry_at = Some((now + delay, delay));
        delay
    }

    /// The current connection was retired (its commands' fate unknown): it is fenced.
    pub fn retired(&mut self) {
        if let Some(me) = self.current.take() {
            if self.fence.len() < MAX_FENCED {
                self.fence.push(me);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(run: &str, client_id: i64) -> Identity {
        Identity {
            run_id: run.into(),
            client_id,
        }
    }

    #[test]
    fn delays_double_to_the_maximum_and_reset_on_success() {
        let t = Instant::from_unix_ms(0);
        let mut r = Reconnects::new(Duration::from_millis(100));
        let delays: Vec<u128> = (0..5).map(|_| r.failed(t).as_millis()).collect();
        assert_eq!(delays, vec![20, 40, 80, 100, 100]);
        assert!(!r.may_attempt(t + Duration::from_millis(99)));
        assert!(r.may_attempt(t + Duration::from_millis(100)));
        // The clock went back an hour: not an hour without attempts.
        let later = Instant::from_unix_ms(3_600_000);
        r.failed(later);
        assert!(!r.may_attempt(later));
        assert!(r.may_attempt(Instant::from_unix_ms(1_000)));
        r.connected(id("a", 1), &[]);
        assert_eq!(r.failed(t), MIN_DELAY);
    }

    #[test]
    fn only_retired_connections_of_the_same_run_are_killed_and_the_fence_is_bounded() {
        let mut r = Reconnects::new(Duration::from_secs(1));
        for i in 0..100 {
            r.connected(id(if i % 2 == 0 { "a" } else { "b" }, i), &[]);
            r.retired();
        }
        assert_eq!(r.fenced().len(), MAX_FENCED);
        assert!(r.to_kill("a").iter().all(|c| c % 2 == 0));
        assert!(r.to_kill("").is_empty());
        // Retiring with no current connection fences nothing more.
        r.retired();
        assert_eq!(r.fenced().len(), MAX_FENCED);
        // Fenced after the snapshot: kept for the next connection.
        let snapshot = r.fenced();
        r.connected(id("a", 500), &snapshot);
        r.retired();
        assert_eq!(r.to_kill("a"), vec![500]);
        assert_eq!(run_id("# Server\r\nrun_id:abc \r\n"), Some("abc".into()));
    }
}
