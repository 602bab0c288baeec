//! Runs the core's commands on Redis: everything one drain emitted goes out as one pipeline,
//! and every command gets exactly one reply back as a core [`Value`] (or
//! [`Reply::Unknown`] when the connection failed, [`Reply::NotSent`] when no connection
//! could be made and nothing was written).
//!
//! A transaction (a fresh enqueue) goes out as `MULTI`, its commands and `EXEC` inside the
//! pipeline (one pipeline is one write on the connection, so nothing interleaves), and its
//! reply is EXEC's.
//!
//! Scripts go out as `EVALSHA`. A server that does not know a script (a fresh or restarted
//! Redis) answers `NOSCRIPT` without running anything; the scripts are then loaded and those
//! commands sent again.

use datalayer_core::command::{Command, Reply};
use datalayer_core::pipeline::{self, Plan};
use datalayer_core::resp;
use datalayer_core::scripts::{self, Invocation};
use datalayer_core::value::Value;

pub use crate::connection::Conn as Connection;
use crate::options::RedisError;
use crate::wire::WireError;

/// Loads every script (after which `EVALSHA` finds them).
///
/// # Errors
/// A failed connection, or a script Redis refused.
pub async fn load_scripts(conn: &Connection) -> Result<(), RedisError> {
    let mut out = Vec::new();
    for s in scripts::ALL {
        resp::encode_command(&mut out, [&b"SCRIPT"[..], b"LOAD", s.source.as_bytes()]);
    }
    let values = conn.round_trip(out, scripts::ALL.len()).await?;
    match values.into_iter().find(|v| matches!(v, Value::Error(_))) {
        Some(Value::Error(e)) => Err(RedisError::Reply(format!("SCRIPT LOAD: {e}"))),
        _ => Ok(()),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(commands = invocations.len()))]
async fn run_pipeline(conn: &Connection, invocations: &[&Invocation<'_>]) -> Vec<Reply> {
    let mut out = Vec::with_capacity(256);
    let expected: usize = invocations.iter().map(|inv| inv.encode(&mut out)).sum();
    match conn.round_trip(out, expected).await {
        Ok(values) => pipeline::replies(invocations, values),
        // No connection could be made: the pipeline was never written, nothing ran.
        Err(WireError::NotSent(why)) => {
            tracing::debug!(error = %why, commands = invocations.len(), "pipeline not sent");
            vec![Reply::NotSent; invocations.len()]
        }
        // The connection failed: each command may or may not have run.
        Err(WireError::Lost(why)) => {
            tracing::warn!(error = %why, commands = invocations.len(), "pipeline failed: outcomes unknown");
            vec![Reply::Unknown; invocations.len()]
        }
    }
}

/// Sends `invocations` as one pipeline; returns one reply per invocation, in order. A script
/// Redis does not know (NOSCRIPT: it did not run) is loaded and sent again.
pub(crate) async fn run_invocations(
    conn: &Connection,
    invocations: &[Invocation<'_>],
) -> Vec<Reply> {
    let all: Vec<&Invocation<'_>> = invocations.iter().collect();
    run_refs(conn, &all).await
}

/// [`run_invocations`] of invocations held elsewhere (a cluster's part of a pipeline).
pub(crate) async fn run_refs(conn: &Connection, invocations: &[&Invocation<'_>]) -> Vec<Reply> {
    if invocations.is_empty() {
        return Vec::new();
    }
    let mut replies = run_pipeline(conn, invocations).await;
    let missing: Vec<usize> = (0..replies.len())
        .filter(|i| pipeline::is_noscript(&replies[*i]))
        .collect();
    if missing.is_empty() {
        return replies;
    }
    if load_scripts(conn).await.is_err() {
        for i in missing {
            replies[i] = Reply::Unknown;
        }
        return replies;
    }
    let again: Vec<&Invocation<'_>> = missing.iter().map(|i| invocations[*i]).collect();
    for (i, reply) in missing.into_iter().zip(run_pipeline(conn, &again).await) {
        replies[i] = reply;
    }
    replies
}

/// Sends `commands` as one pipeline; returns one reply per command, in order.
pub async fn execute(conn: &Connection, commands: &[Command]) -> Vec<Reply> {
    execute_ringing(conn, commands, false).await
}

/// [`execute`], each command followed by the doorbells it rings when `rings`
/// ([`datalayer_core::cluster::rings`]).
pub(crate) async fn execute_ringing(
    conn: &Connection,
    commands: &[Command],
    rings: bool,
) -> Vec<Reply> {
    let plan = Plan::new(commands, rings);
    let replies = run_invocations(conn, &plan.invocations).await;
    plan.judge(replies)
}

/// Runs one invocation on its own (no pipeline of the engine's), through the same path as
/// [`execute`]. An error reply is a [`Value::Error`]; a failed connection is an `Err` (the
/// outcome is unknown; the cause is logged).
pub async fn run_one(conn: &Connection, invocation: &Invocation<'_>) -> Result<Value, RedisError> {
    value_of(
        run_invocations(conn, std::slice::from_ref(invocation))
            .await
            .pop(),
    )
}

/// A reply as a value, or why there is none (`None`: no reply came, the outcome is unknown).
pub(crate) fn value_of(reply: Option<Reply>) -> Result<Value, RedisError> {
    match reply {
        Some(Reply::Value(v)) => Ok(v),
        Some(Reply::NotSent) => Err(RedisError::NotSent("no connection".into())),
        _ => Err(RedisError::Lost("the outcome is unknown".into())),
    }
}
