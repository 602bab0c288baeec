//! The process-wide command connection: one [`Link`] (datalayer's own connection, see
//! [`crate::wire`]), replaced as soon as it is known to be dead.
//!
//! When replies stop coming on a connection that stays open (a half-open TCP connection, a
//! proxy that swallows them), a request times out and its link closes; so does a link the
//! server closed, or one whose bytes stopped making sense. The next command then goes on a
//! fresh connection instead of one already known to be dead.
//!
//! Connecting is serialized (one attempt at a time) and paced, and a new connection kills
//! the retired ones of the same server before it serves a command: the rules are the
//! core's ([`datalayer_core::reconnect`]). A command that finds no connection while no
//! attempt is due fails at once, not sent ([`WireError::NotSent`]), which `exec` turns into
//! `Reply::NotSent`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use datalayer_core::reconnect::{self, Identity, Reconnects};

use datalayer_core::value::Value;
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, RedisFuture};

use crate::options::{Error, Options};
use crate::wire::{Dial, Link, WireError};

/// A cheap handle on the shared connection (clone it per command or pipeline).
#[derive(Clone)]
pub struct Conn {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

struct Inner {
    dial: Dial,
    response_timeout: Duration,
    state: Mutex<State>,
    /// Held while connecting: one attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

struct State {
    current: Option<(Link, u64)>,
    generation: u64,
    reconnects: Reconnects,
}

/// This connection's identity, then a kill of every fenced connection of the same server.
async fn fence(
    link: &Link,
    client_id: i64,
    reconnects: &Reconnects,
    timeout: Duration,
) -> Result<Identity, WireError> {
    let mut out = Vec::new();
    datalayer_core::resp::encode_command(&mut out, [&b"INFO"[..], b"server"]);
    let info = match link.request(out, 1, Some(timeout)).await?.pop() {
        Some(Value::Bulk(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => return Err(WireError::NotSent(format!("INFO answered {other:?}"))),
    };
    let me = Identity {
        run_id: reconnect::run_id(&info).unwrap_or_default(),
        client_id,
    };
    let kills = reconnects.to_kill(&me.run_id);
    if !kills.is_empty() {
        let mut out = Vec::new();
        for id in &kills {
            let id = id.to_string();
            datalayer_core::resp::encode_command(
                &mut out,
                [&b"CLIENT"[..], b"KILL", b"ID", id.as_bytes()],
            );
        }
        // "No such client" (it is gone already) is an answer too: only a failed
        // connection fails.
        link.request(out, kills.len(), Some(timeout)).await?;
    }
    Ok(me)
}

impl Conn {
    /// Connects to the server `dial` names (the first connection is made here, so that a
    /// wrong address fails `connect`).
    pub(crate) async fn connect(
        dial: Dial,
        response_timeout: Duration,
        max_delay: Duration,
    ) -> Result<Self, WireError> {
        let conn = Self::lazy(dial, response_timeout, max_delay);
        conn.get().await?;
        Ok(conn)
    }

    /// A handle that connects when its first command needs it (a cluster node's).
    pub(crate) fn lazy(dial: Dial, response_timeout: Duration, max_delay: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                dial,
                response_timeout,
                state: Mutex::new(State {
                    current: None,
                    generation: 0,
                    reconnects: Reconnects::new(max_delay),
                }),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// A connection to the server of `url` (`redis://`, `rediss://`, `unix://`), with the
    /// default [`Options`]' timeouts: datalayer's own connection, for tools and
    /// tests that send the core's commands themselves (the `exec` module).
    ///
    /// # Errors
    /// A URL that does not parse, or no connection.
    pub async fn open(url: &str) -> Result<Self, Error> {
        let options = Options::default();
        let info = crate::options::connection_info(url, &options)?;
        Self::with_options(&info, &options).await
    }

    /// Connects to the server `info` names, with `options`' TLS root and timeouts.
    pub(crate) async fn with_options(
        info: &redis::ConnectionInfo,
        options: &Options,
    ) -> Result<Self, Error> {
        let dial = Dial::new(
            info,
            options.tls_root_cert.as_deref(),
            options.connect_timeout,
        )
        .map_err(Error::Config)?;
        Self::connect(dial, options.response_timeout, options.max_reconnect_delay)
            .await
            .map_err(|e| Error::Redis(redis_error(&e)))
    }

    /// Where this connection's server is (to open other connections to it).
    pub(crate) fn dial(&self) -> &Dial {
        &self.inner.dial
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The live connection and its generation, connecting if there is none (and an attempt
    /// is due).
    async fn get(&self) -> Result<(Link, u64), WireError> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _one = self.inner.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let reconnects = {
            let state = self.state();
            if !state.reconnects.may_attempt(crate::clock::now()) {
                return Err(WireError::NotSent(
                    "not connected to Redis (the last attempt failed)".into(),
                ));
            }
            // A snapshot: what is fenced after it waits for the next connection.
            state.reconnects.clone()
        };
        let connected = match self.inner.dial.open("datalayer").await {
            Ok((link, id)) => {
                match fence(&link, id, &reconnects, self.inner.response_timeout).await {
                    Ok(me) => Ok((link, me)),
                    Err(e) => {
                        link.close();
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        };
        let mut state = self.state();
        match connected {
            Ok((link, me)) => {
                if state.generation > 0 {
                    crate::telemetry::reconnect();
                }
                state.generation += 1;
                state.current = Some((link.clone(), state.generation));
                state.reconnects.connected(me, &reconnects.fenced());
                Ok((link, state.generation))
            }
            Err(e) => {
                let delay = state.reconnects.failed(crate::clock::now());
                tracing::debug!(error = %e, ?delay, "connecting to Redis failed");
                Err(WireError::NotSent(format!("not connected to Redis ({e})")))
            }
        }
    }

    /// The current connection while it is open; one the server closed (CLIENT KILL, a
    /// restart) or that failed is retired here.
    fn live(&self) -> Option<(Link, u64)> {
        let current = self.state().current.clone()?;
        if current.0.is_closed() {
            self.retire(current.1);
            return None;
        }
        Some(current)
    }

    /// Drops connection `generation` if it is still the current one: the next command
    /// connects anew, after fencing this one off (see the module's docs).
    fn retire(&self, generation: u64) {
        let mut state = self.state();
        if state
            .current
            .as_ref()
            .is_some_and(|(_, g)| *g == generation)
        {
            if let Some((link, _)) = state.current.take() {
                link.close();
            }
            state.reconnects.retired();
        }
    }

    /// Sends `bytes` (encoded commands taking `replies` replies) on the live connection;
    /// their replies in order. A connection that failed or timed out is retired.
    pub(crate) async fn round_trip(
        &self,
        bytes: Vec<u8>,
        replies: usize,
    ) -> Result<Vec<Value>, WireError> {
        let (link, generation) = self.get().await?;
        let result = link
            .request(bytes, replies, Some(self.inner.response_timeout))
            .await;
        if result.is_err() {
            self.retire(generation);
        }
        result
    }
}

/// A refusal: nothing was sent (`RedisError::is_connection_refusal`).
fn refused(why: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        why.to_owned(),
    ))
}

/// A failure as redis-rs's error: a refusal when nothing was sent, an I/O error otherwise.
pub(crate) fn redis_error(e: &WireError) -> RedisError {
    match e {
        WireError::NotSent(why) => refused(why),
        WireError::Lost(why) => RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            why.clone(),
        )),
    }
}

/// A core value as redis-rs's (for the typed queries of [`ConnectionLike`]).
fn to_redis(v: Value) -> redis::Value {
    match v {
        Value::Nil => redis::Value::Nil,
        Value::Int(i) => redis::Value::Int(i),
        Value::Bulk(b) => redis::Value::BulkString(b),
        Value::Status(s) if s == "OK" => redis::Value::Okay,
        Value::Status(s) => redis::Value::SimpleString(s),
        Value::Array(a) => redis::Value::Array(a.into_iter().map(to_redis).collect()),
        Value::Error(e) => {
            let line = format!("-{}\r\n", e.replace(['\r', '\n'], " "));
            redis::parse_redis_value(line.as_bytes())
                .unwrap_or_else(|_| redis::Value::SimpleString(e))
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

/// redis-rs's typed commands (`redis::cmd(..).query_async(&mut conn)`) over the same
/// connection.
impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            match self.round_trip(cmd.get_packed_command(), 1).await {
                Ok(mut values) => Ok(values.pop().map_or(redis::Value::Nil, to_redis)),
                Err(e) => Err(redis_error(&e)),
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            match self
                .round_trip(cmd.get_packed_pipeline(), offset + count)
                .await
            {
                Ok(values) => Ok(values.into_iter().skip(offset).map(to_redis).collect()),
                Err(e) => Err(redis_error(&e)),
            }
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_meaning_through_redis_rs() {
        let v = Value::Array(vec![
            Value::Nil,
            Value::Int(-3),
            Value::Bulk(b"b".to_vec()),
            Value::Status("OK".into()),
            Value::Status("QUEUED".into()),
        ]);
        assert_eq!(to_value(to_redis(v.clone())), v);
        let e = Value::Error("NOSCRIPT No matching script".into());
        assert_eq!(to_value(to_redis(e.clone())), e);
        assert!(redis_error(&WireError::NotSent("x".into())).is_connection_refusal());
        assert!(!redis_error(&WireError::Lost("x".into())).is_connection_refusal());
    }
}
