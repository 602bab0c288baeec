//! Wall-clock time: the time the core's machines take as an input.

use std::time::{SystemTime, UNIX_EPOCH};

use datalayer_core::time::{Instant, millis};

/// The wall clock, as the core's machines take it: the engine's clock input (and the `now`
/// to give [`crate::QueueStats::oldest_waiting_age`]).
#[must_use]
pub fn now() -> Instant {
    Instant::from_unix_ms(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, millis),
    )
}

/// Sleeps until the wall-clock time `wake`, a machine's `poll_timeout`; forever if none.
pub(crate) async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => {
            tokio::time::sleep(at.saturating_duration_since(now())).await;
        }
        None => std::future::pending().await,
    }
}
