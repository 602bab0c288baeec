//! Wall-clock time: the time the core's machines take as an input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datalayer_core::time::Instant;

/// The wall clock, as the core's machines take it: the engine's clock input (and the `now`
/// to give [`crate::QueueStats::oldest_waiting_age`]).
#[must_use]
pub fn now() -> Instant {
    Instant::from_unix_ms(now_ms())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
}

/// A duration in whole milliseconds, as the core's machines take it (saturating).
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sleeps until the wall-clock time `wake`, a machine's `poll_timeout`; forever if none.
pub(crate) async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => {
            let wait = at.unix_ms().saturating_sub(now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}
