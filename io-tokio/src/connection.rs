//! The process-wide command connection: one multiplexed connection, replaced as soon as it is
//! known to be dead.
//!
//! redis-rs's `ConnectionManager` reconnects when a command fails with a dropped
//! connection, but not after a response timeout: when replies stop coming on a connection
//! that stays open (a half-open TCP connection, a proxy that swallows them), every later
//! command waits behind the missing replies and times out too, forever. Here any I/O error
//! or timeout retires the connection it happened on, and so does the server closing it
//! (RESP3 tells: the connection's push channel reports the disconnection), so the next
//! command goes on a fresh connection instead of one already known to be dead.
//!
//! Connecting is serialized and paced: while attempts fail, a command that finds no
//! connection fails at once until the next attempt is due (20 ms doubling to
//! `max_reconnect_delay`), rather than every driver of the process dialing a Redis that is
//! down. Such a failure means nothing was written: it is reported as a connection refusal
//! (`RedisError::is_connection_refusal`), which `exec` turns into `Reply::NotSent`.
//!
//! **Fencing.** A connection retired after a timeout or an I/O error may still have commands
//! that Redis has not read yet (a stalled server, a slow network): they could run *after*
//! the engine resent them on the new connection, and a fresh add (its `MULTI`/`EXEC` has no
//! duplicate check) would then enqueue its job a second time. So before a replacement
//! serves any command, it kills the retired connections by client id (`CLIENT KILL ID`) on
//! the same server (same `run_id`): Redis runs one command at a time, so whatever of theirs
//! has not run by then never will, and a resend finds whatever did.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, PushKind, RedisError, RedisFuture, RedisResult, Value};

/// A cheap handle on the shared connection (clone it per command or pipeline).
#[derive(Clone)]
pub struct Conn {
    inner: Arc<Inner>,
    /// The generation of the connection this handle's last command went on.
    last: u64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

struct Inner {
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    max_delay: Duration,
    state: Mutex<State>,
    /// Held while connecting: one attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    current: Option<(MultiplexedConnection, u64)>,
    /// The current connection's server `run_id` and client id.
    identity: Option<Identity>,
    /// Connections retired while their commands' fate was unknown: killed before the next
    /// connection serves a command.
    fence: Vec<Identity>,
    generation: u64,
    /// After a failed attempt: no other before this instant, and the delay that led to it.
    retry_at: Option<(Instant, Duration)>,
}

const MIN_DELAY: Duration = Duration::from_millis(20);

/// Which server process a connection is on, and its client id there.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    run_id: String,
    client_id: i64,
}

/// The `run_id` line of `INFO server`.
fn run_id(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
}

/// This connection's identity, then a kill of every fenced connection of the same server
/// (a restarted server reuses client ids: those of another run are left alone).
async fn fence(c: &mut MultiplexedConnection, fenced: &[Identity]) -> RedisResult<Identity> {
    let (client_id, info): (i64, String) = redis::pipe()
        .cmd("CLIENT")
        .arg("ID")
        .cmd("INFO")
        .arg("server")
        .query_async(c)
        .await?;
    let me = Identity {
        run_id: run_id(&info).unwrap_or_default(),
        client_id,
    };
    let mut kill = redis::pipe();
    let mut any = false;
    for old in fenced
        .iter()
        .filter(|o| o.run_id == me.run_id && !me.run_id.is_empty())
    {
        kill.cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(old.client_id)
            .ignore();
        any = true;
    }
    if any {
        // "No such client" (it is gone already) is an answer too: only an I/O error fails.
        if let Err(e) = kill.query_async::<()>(c).await {
            if e.is_io_error() || e.is_timeout() {
                return Err(e);
            }
        }
    }
    Ok(me)
}

fn not_connected(why: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        format!("not connected to Redis ({why}): nothing was sent"),
    ))
}

impl Conn {
    /// Connects to `client` (the first connection is made here, so that a wrong address
    /// fails `connect`).
    pub(crate) async fn connect(
        client: redis::Client,
        response_timeout: Duration,
        connect_timeout: Duration,
        max_delay: Duration,
    ) -> RedisResult<Self> {
        let conn = Self::lazy(client, response_timeout, connect_timeout, max_delay);
        conn.get().await?;
        Ok(conn)
    }

    /// A handle that connects when its first command needs it (a cluster node's).
    pub(crate) fn lazy(
        client: redis::Client,
        response_timeout: Duration,
        connect_timeout: Duration,
        max_delay: Duration,
    ) -> Self {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(connect_timeout));
        Self {
            last: 0,
            inner: Arc::new(Inner {
                client,
                config,
                max_delay: max_delay.max(MIN_DELAY),
                state: Mutex::new(State::default()),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The live connection and its generation, connecting if there is none (and an attempt
    /// is due).
    async fn get(&self) -> RedisResult<(MultiplexedConnection, u64)> {
        if let Some(c) = self.state().current.clone() {
            return Ok(c);
        }
        let _one = self.inner.connecting.lock().await;
        let previous = {
            let state = self.state();
            if let Some(c) = state.current.clone() {
                return Ok(c);
            }
            match state.retry_at {
                Some((at, _)) if Instant::now() < at => {
                    return Err(not_connected("the last attempt failed"));
                }
                Some((_, delay)) => Some(delay),
                None => None,
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let config = self.inner.config.clone().set_push_sender(tx);
        let fenced = self.state().fence.clone();
        let connected = match self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(mut c) => fence(&mut c, &fenced).await.map(|me| (c, me)),
            Err(e) => Err(e),
        };
        match connected {
            Ok((c, me)) => {
                let generation = {
                    let mut state = self.state();
                    if state.generation > 0 {
                        crate::telemetry::reconnect();
                    }
                    state.generation += 1;
                    state.current = Some((c.clone(), state.generation));
                    state.identity = Some(me);
                    // Killed (or of another server run): nothing of theirs can run now.
                    state.fence.retain(|f| !fenced.contains(f));
                    state.retry_at = None;
                    state.generation
                };
                // The server closed it (CLIENT KILL, a restart): retire it at once.
                let weak = Arc::downgrade(&self.inner);
                tokio::spawn(async move {
                    while let Some(push) = rx.recv().await {
                        if push.kind == PushKind::Disconnection {
                            break;
                        }
                    }
                    if let Some(inner) = weak.upgrade() {
                        Conn { inner, last: 0 }.retire(generation);
                    }
                });
                Ok((c, generation))
            }
            Err(e) => {
                let delay = previous.map_or(MIN_DELAY, |d| (d * 2).min(self.inner.max_delay));
                self.state().retry_at = Some((Instant::now() + delay, delay));
                tracing::debug!(error = %e, ?delay, "connecting to Redis failed");
                Err(not_connected(&e.to_string()))
            }
        }
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
            state.current = None;
            if let Some(me) = state.identity.take() {
                // Bounded: a long outage retires at most one connection per attempt, and
                // each is forgotten once a connection to a server is made.
                if state.fence.len() < 64 {
                    state.fence.push(me);
                }
            }
        }
    }

    /// After a command on connection `generation`: an I/O error or a timeout retires it
    /// (its replies can no longer be trusted to line up).
    fn check<T>(&self, result: &RedisResult<T>, generation: u64) {
        if let Err(e) = result {
            if e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error() {
                self.retire(generation);
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (mut c, generation) = self.get().await?;
            self.last = generation;
            let result = c.req_packed_command(cmd).await;
            self.check(&result, generation);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (mut c, generation) = self.get().await?;
            self.last = generation;
            let result = c.req_packed_commands(cmd, offset, count).await;
            self.check(&result, generation);
            result
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl crate::exec::Desync for Conn {
    fn desynced(&mut self) {
        self.retire(self.last);
    }
}
