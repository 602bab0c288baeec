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

use std::collections::HashMap;
use std::sync::OnceLock;

use std::borrow::Cow;

use datalayer_core::command::{Command, Replicas, Reply};
use datalayer_core::resp;
use datalayer_core::scripts::{self, Invocation, Script};
use datalayer_core::value::Value;

pub use crate::connection::Conn as Connection;
use crate::wire::WireError;

/// The SHA1 of every script, computed once.
fn shas() -> &'static HashMap<&'static str, String> {
    static SHAS: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    SHAS.get_or_init(|| {
        scripts::ALL
            .iter()
            .map(|s| (s.name, redis::Script::new(s.source).get_hash().to_owned()))
            .collect()
    })
}

fn sha(script: &Script) -> &'static str {
    shas().get(script.name).map_or("", String::as_str)
}

/// The bytes `args` take encoded, to size the buffer once rather than grow it.
fn encoded_len(args: &[scripts::Arg<'_>]) -> usize {
    args.iter().map(|a| resp::arg_len(a.len())).sum()
}

fn plain(out: &mut Vec<u8>, args: &[scripts::Arg<'_>]) {
    resp::encode_header(out, args.len());
    for a in args {
        resp::encode_arg(out, a);
    }
}

/// Appends an invocation's commands to `out`; returns how many replies they take (a
/// transaction: MULTI, its commands, EXEC, of which EXEC's reply is the invocation's).
pub(crate) fn encode(out: &mut Vec<u8>, invocation: &Invocation<'_>) -> usize {
    match invocation {
        Invocation::Plain(args) => {
            out.reserve(16 + encoded_len(args));
            plain(out, args);
            1
        }
        Invocation::Script { script, keys, args } => {
            out.reserve(96 + encoded_len(keys) + encoded_len(args));
            resp::encode_header(out, 3 + keys.len() + args.len());
            resp::encode_arg(out, b"EVALSHA");
            resp::encode_arg(out, sha(script).as_bytes());
            resp::encode_uint(out, u64::try_from(keys.len()).unwrap_or(u64::MAX));
            for k in keys {
                resp::encode_arg(out, k);
            }
            for a in args {
                resp::encode_arg(out, a);
            }
            1
        }
        Invocation::Transaction(cmds) => {
            resp::encode_command(out, [&b"MULTI"[..]]);
            for c in cmds {
                out.reserve(16 + encoded_len(c));
                plain(out, c);
            }
            resp::encode_command(out, [&b"EXEC"[..]]);
            cmds.len() + 2
        }
    }
}

/// A redis-rs value as the core's value (RESP3 shapes flattened to their RESP2 forms).
#[must_use]
pub fn to_value(v: redis::Value) -> Value {
    use redis::Value as R;
    match v {
        R::Nil => Value::Nil,
        R::Int(i) => Value::Int(i),
        R::BulkString(b) => Value::Bulk(b),
        R::Array(a) | R::Set(a) => Value::Array(a.into_iter().map(to_value).collect()),
        R::SimpleString(s) => Value::Status(s),
        R::Okay => Value::Status("OK".into()),
        // The only maps the command plan gets are XREAD/XREADGROUP's (stream → entries), in
        // RESP2 an array of [stream, entries] pairs: that is their shape here.
        R::Map(m) => Value::Array(
            m.into_iter()
                .map(|(k, v)| Value::Array(vec![to_value(k), to_value(v)]))
                .collect(),
        ),
        R::Attribute { data, .. } => to_value(*data),
        R::Double(d) => Value::Bulk(d.to_string().into_bytes()),
        R::Boolean(b) => Value::Int(i64::from(b)),
        R::VerbatimString { text, .. } => Value::Bulk(text.into_bytes()),
        R::BigNumber(n) => Value::Bulk(format!("{n:?}").into_bytes()),
        R::Push { data, .. } => Value::Array(data.into_iter().map(to_value).collect()),
        R::ServerError(e) => Value::Error(match e.details() {
            Some(d) => format!("{} {d}", e.code()),
            None => e.code().to_owned(),
        }),
        // A future variant: keep its debug form rather than lose the reply.
        #[allow(unreachable_patterns)]
        other => Value::Error(format!("ERR unsupported reply {other:?}")),
    }
}

/// Loads every script (after which `EVALSHA` finds them).
///
/// # Errors
/// A failed connection, or a script Redis refused.
pub async fn load_scripts(conn: &Connection) -> redis::RedisResult<()> {
    let mut out = Vec::new();
    for s in scripts::ALL {
        resp::encode_command(&mut out, [&b"SCRIPT"[..], b"LOAD", s.source.as_bytes()]);
    }
    let values = conn
        .round_trip(out, scripts::ALL.len())
        .await
        .map_err(|e| crate::connection::redis_error(&e))?;
    match values.into_iter().find(|v| matches!(v, Value::Error(_))) {
        Some(Value::Error(e)) => Err(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "SCRIPT LOAD",
            e,
        ))),
        _ => Ok(()),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(commands = invocations.len()))]
async fn run_pipeline(conn: &Connection, invocations: &[&Invocation<'_>]) -> Vec<Reply> {
    let mut out = Vec::with_capacity(256);
    let takes: Vec<usize> = invocations
        .iter()
        .map(|inv| encode(&mut out, inv))
        .collect();
    let expected: usize = takes.iter().sum::<usize>();
    match conn.round_trip(out, expected).await {
        Ok(values) if values.len() == expected => {
            let mut values = values.into_iter();
            takes
                .iter()
                .map(|n| transaction_reply(values.by_ref().take(*n).collect()))
                .collect()
        }
        Ok(values) => {
            tracing::warn!(
                sent = expected,
                got = values.len(),
                "pipeline reply count mismatch"
            );
            vec![Reply::Unknown; invocations.len()]
        }
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

/// An invocation's reply from its part of the pipeline's replies: a transaction's is EXEC's,
/// its last (MULTI's OK and the QUEUEDs go) — but when Redis refused to queue a command
/// (`LOADING` after a restart, `OOM`, ...), EXEC says only `EXECABORT`, and the refusal
/// itself is the reply: the engine tells a transient one from a final one.
fn transaction_reply(mut values: Vec<Value>) -> Reply {
    let Some(last) = values.pop() else {
        return Reply::Unknown;
    };
    if matches!(&last, Value::Error(e) if e.starts_with("EXECABORT")) {
        let cause = values.into_iter().find(|v| matches!(v, Value::Error(_)));
        if let Some(cause) = cause {
            return Reply::Value(cause);
        }
    }
    Reply::Value(last)
}

fn is_noscript(reply: &Reply) -> bool {
    matches!(reply, Reply::Value(Value::Error(e)) if e.starts_with("NOSCRIPT"))
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
        .filter(|i| is_noscript(&replies[*i]))
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
    let (invocations, planned) = plan(commands, rings);
    let replies = run_invocations(conn, &invocations).await;
    judge(&planned, replies)
}

/// Where a command's reply sits among its plan's replies: its own, and its `WAIT`'s.
pub(crate) struct Planned {
    own: usize,
    wait: Option<(usize, Replicas)>,
}

/// The invocations that carry `commands`, in order: each command's, then its `WAIT` when
/// it asks for replicas, then (with `bells`, on a cluster) the `SPUBLISH` of each doorbell
/// it rings ([`datalayer_core::cluster::rings`]).
pub(crate) fn plan(commands: &[Command], bells: bool) -> (Vec<Invocation<'_>>, Vec<Planned>) {
    let mut invocations = Vec::with_capacity(commands.len());
    let mut planned = Vec::with_capacity(commands.len());
    for c in commands {
        let own = invocations.len();
        invocations.push(scripts::invocation(&c.kind));
        let wait = c.replicas.map(|r| {
            invocations.push(wait_invocation(r));
            (invocations.len() - 1, r)
        });
        planned.push(Planned { own, wait });
        if bells {
            let (jobs, events) = datalayer_core::cluster::rings(&c.kind);
            for bell in [jobs, events].into_iter().flatten() {
                invocations.push(Invocation::Plain(vec![
                    Cow::Borrowed(b"SPUBLISH"),
                    Cow::Borrowed(bell.as_bytes()),
                    Cow::Borrowed(b""),
                ]));
            }
        }
    }
    (invocations, planned)
}

/// `WAIT <count> <timeout>`: keyless, so on a cluster it goes with the command before it
/// (the router sends a keyless invocation to the node of the one it follows), on the same
/// connection, where it covers that command's writes.
fn wait_invocation(r: Replicas) -> Invocation<'static> {
    Invocation::Plain(vec![
        Cow::Borrowed(b"WAIT"),
        Cow::Owned(r.count.to_string().into_bytes()),
        Cow::Owned(
            datalayer_core::time::millis(r.timeout)
                .max(1)
                .to_string()
                .into_bytes(),
        ),
    ])
}

/// One reply per command: its own, judged by its `WAIT` when it asked for replicas.
pub(crate) fn judge(planned: &[Planned], mut replies: Vec<Reply>) -> Vec<Reply> {
    planned
        .iter()
        .map(|p| {
            let own = std::mem::replace(&mut replies[p.own], Reply::Unknown);
            match p.wait {
                Some((w, r)) => r.judge(own, &replies[w]),
                None => own,
            }
        })
        .collect()
}

/// Runs one invocation on its own (no pipeline of the engine's), through the same path as
/// [`execute`]. An error reply is a [`Value::Error`]; a failed connection is an `Err` (the
/// outcome is unknown; the cause is logged).
pub async fn run_one(conn: &Connection, invocation: &Invocation<'_>) -> redis::RedisResult<Value> {
    match run_invocations(conn, std::slice::from_ref(invocation))
        .await
        .pop()
    {
        Some(Reply::Value(v)) => Ok(v),
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "the connection to Redis failed: the outcome is unknown",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(text: &str) -> Value {
        Value::Error(text.into())
    }

    #[test]
    fn an_aborted_transaction_replies_with_its_cause() {
        let ok = Value::Status("OK".into());
        let queued = Value::Status("QUEUED".into());
        let loading = server_error("LOADING Redis is loading the dataset in memory");
        let abort = server_error("EXECABORT Transaction discarded because of previous errors.");
        assert_eq!(
            transaction_reply(vec![ok.clone(), loading, queued.clone(), abort.clone()]),
            Reply::Value(Value::Error(
                "LOADING Redis is loading the dataset in memory".into()
            ))
        );
        // EXEC's own reply otherwise (an abort without a cause stays as it is).
        assert_eq!(
            transaction_reply(vec![ok.clone(), queued, Value::Array(vec![])]),
            Reply::Value(Value::Array(vec![]))
        );
        assert!(matches!(
            transaction_reply(vec![ok, abort]),
            Reply::Value(Value::Error(e)) if e.starts_with("EXECABORT")
        ));
        assert_eq!(transaction_reply(vec![]), Reply::Unknown);
    }
}
