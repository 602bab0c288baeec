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

use datalayer_core::url::ServerUrl;
use datalayer_core::value::Value;

use crate::options::{Error, Options, RedisError};
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

    /// A connection to the server of `url` (`redis://`, `rediss://`, `unix://`; the first
    /// host of several), with the default [`Options`]' timeouts: datalayer's own connection,
    /// for tools and tests that send the core's commands themselves (the `exec` module) or
    /// commands of their own ([`Conn::command`]).
    ///
    /// # Errors
    /// A URL that does not parse, or no connection.
    pub async fn open(url: &str) -> Result<Self, Error> {
        let options = Options::default();
        let dial = Dial::new(&ServerUrl::parse(url)?, None, options.connect_timeout)
            .map_err(Error::Config)?;
        Self::with_options(dial, &options).await
    }

    /// Connects to the server `dial` names, with `options`' timeouts.
    pub(crate) async fn with_options(dial: Dial, options: &Options) -> Result<Self, Error> {
        Self::connect(dial, options.response_timeout, options.max_reconnect_delay)
            .await
            .map_err(|e| Error::Redis(e.into()))
    }

    /// Runs one command (`args`: its name and arguments) and returns its reply; an error
    /// reply is [`RedisError::Reply`].
    ///
    /// # Errors
    /// The connection failed ([`RedisError::NotSent`], [`RedisError::Lost`]), or Redis
    /// answered with an error.
    pub async fn command<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Value, RedisError> {
        let mut out = Vec::new();
        datalayer_core::resp::encode_command(&mut out, args.iter().map(AsRef::as_ref));
        match self.round_trip(out, 1).await?.pop() {
            Some(Value::Error(e)) => Err(RedisError::Reply(e)),
            Some(v) => Ok(v),
            None => Err(RedisError::Lost("no reply".into())),
        }
    }

    /// [`Conn::command`] whose reply is text (a bulk or status reply: `INFO`, `PING`).
    pub(crate) async fn text<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<String, RedisError> {
        match self.command(args).await? {
            Value::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Value::Status(s) => Ok(s),
            other => Err(RedisError::Reply(format!("expected text, got {other:?}"))),
        }
    }

    /// The value of setting `name` (`CONFIG GET`), if Redis tells it.
    pub(crate) async fn config(&self, name: &str) -> Option<String> {
        match self.command(&["CONFIG", "GET", name]).await {
            Ok(Value::Array(pair)) => match pair.get(1) {
                Some(Value::Bulk(v)) => Some(String::from_utf8_lossy(v).into_owned()),
                _ => None,
            },
            _ => None,
        }
    }

    /// How long a command may take before its outcome is unknown.
    pub(crate) fn response_timeout(&self) -> Duration {
        self.inner.response_timeout
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

impl From<WireError> for RedisError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotSent(why) => RedisError::NotSent(why),
            WireError::Lost(why) => RedisError::Lost(why),
        }
    }
}
