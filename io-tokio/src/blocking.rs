//! Blocking reads, on connections of their own, shared by every idle reader of the process.
//!
//! A worker or queue whose last read found nothing sends its next read with `BLOCK` (the
//! core decides that). Such a read must not sit on the multiplexed command connection (it
//! would hold every pipeline behind it, and that connection's response timeout is shorter
//! than `BLOCK`). It goes to a [`Blocker`]: one task with one dedicated connection, which
//! merges the blocking reads of every idle reader it serves into a single command
//! ([`scripts::merged_read`]): one `XREADGROUP` for the workers that share a consumer name,
//! one `XREAD` for the queues' events. When a new read arrives, or a reader cancels, while
//! the command blocks, the blocker interrupts it with `CLIENT UNBLOCK` (sent on the shared
//! connection) and sends the new set. So 1,000 idle workers and 1,000 idle queues block on
//! two connections, and a job reaches an idle worker one round trip after it is added.
//!
//! A read's reply is what a read of its stream alone would have had; a read that saw
//! nothing by its deadline gets nil. A failed connection makes the outcome of every read of
//! the command unknown ([`Reply::Unknown`]): the machines back off and read again, and the
//! blocker connects anew for the next command.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use datalayer_core::command::{CommandKind, OpId, Reply};
use datalayer_core::scripts;
use datalayer_core::value::{Value, split_read};
use redis::aio::MultiplexedConnection;

use crate::connection::Conn;
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::exec::{push, to_value};

/// How long an idle reader's read blocks in Redis (ms).
pub(crate) const BLOCK_MS: u64 = 5_000;

/// Where a blocking read's reply goes: the driver's channel, with the op to reply to.
pub(crate) type ReplyTx = mpsc::UnboundedSender<(OpId, Reply)>;

/// A ticket names one submitted read, to cancel it.
pub(crate) type Ticket = u64;

static TICKETS: AtomicU64 = AtomicU64::new(1);

enum Req {
    Read {
        ticket: Ticket,
        op: OpId,
        kind: CommandKind,
        reply: ReplyTx,
    },
    Cancel(Ticket),
}

/// A handle on one blocking-read task (cheap to clone).
#[derive(Clone)]
pub(crate) struct Blocker {
    tx: mpsc::UnboundedSender<Req>,
}

impl Blocker {
    /// Starts the task. `client` opens its dedicated connection; `shared` carries the
    /// `CLIENT UNBLOCK`s; `response_timeout` is added to each command's `BLOCK`.
    pub(crate) fn start(
        client: redis::Client,
        shared: Conn,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            client,
            shared,
            connect_timeout,
            response_timeout,
            rx,
            conn: None,
            pending: Vec::new(),
        };
        tokio::spawn(tracing::Instrument::instrument(
            task.run(),
            tracing::debug_span!("blocker"),
        ));
        Self { tx }
    }

    /// Starts the task that serves blocking reads on the in-process backend.
    #[cfg(feature = "memory")]
    pub(crate) fn start_in_memory(memory: Arc<crate::memory::Memory>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve_in_memory(memory, rx));
        Self { tx }
    }

    /// Hands a blocking read to the task; its reply comes on `reply`, exactly once (unless
    /// the task is gone, in which case the reply is `Unknown` at once).
    pub(crate) fn submit(&self, op: OpId, kind: CommandKind, reply: &ReplyTx) -> Ticket {
        let ticket = TICKETS.fetch_add(1, Ordering::Relaxed);
        let req = Req::Read {
            ticket,
            op,
            kind,
            reply: reply.clone(),
        };
        if self.tx.send(req).is_err() {
            let _ = reply.send((op, Reply::Unknown));
        }
        ticket
    }

    /// Ends the read's wait now: it is answered with what the current command brings (nil if
    /// nothing came).
    pub(crate) fn cancel(&self, ticket: Ticket) {
        let _ = self.tx.send(Req::Cancel(ticket));
    }
}

struct Pending {
    ticket: Ticket,
    op: OpId,
    kind: CommandKind,
    reply: ReplyTx,
    deadline_ms: u64,
}

impl Pending {
    fn stream(&self) -> &[u8] {
        match &self.kind {
            CommandKind::Read { keys, .. } => keys.jobs.as_bytes(),
            CommandKind::ReadEvents { keys, .. } => keys.events.as_bytes(),
            _ => b"",
        }
    }

    fn answer(self, reply: Reply) {
        let _ = self.reply.send((self.op, reply));
    }
}

/// Takes a request: a read joins `pending` with its deadline; a cancelled read's deadline
/// is now.
fn apply(pending: &mut Vec<Pending>, req: Req) {
    match req {
        Req::Read {
            ticket,
            op,
            kind,
            reply,
        } => {
            let block = match &kind {
                CommandKind::Read { block_ms, .. } | CommandKind::ReadEvents { block_ms, .. } => {
                    block_ms.unwrap_or(0)
                }
                _ => 0,
            };
            pending.push(Pending {
                ticket,
                op,
                kind,
                reply,
                deadline_ms: now_ms().saturating_add(block),
            });
        }
        Req::Cancel(ticket) => {
            if let Some(p) = pending.iter_mut().find(|p| p.ticket == ticket) {
                p.deadline_ms = 0;
            }
        }
    }
}

/// The blocking reads of the in-process backend: each runs whenever a pipeline changed the
/// model, and is answered once it finds something (or an error), or at its deadline.
#[cfg(feature = "memory")]
async fn serve_in_memory(memory: Arc<crate::memory::Memory>, mut rx: mpsc::UnboundedReceiver<Req>) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut changes = memory.changes();
    loop {
        changes.borrow_and_update();
        let now = now_ms();
        let mut i = 0;
        while i < pending.len() {
            let value = memory.read(&pending[i].kind);
            if value != Value::Nil || pending[i].deadline_ms <= now {
                pending.swap_remove(i).answer(Reply::Value(value));
            } else {
                i += 1;
            }
        }
        let deadline = pending.iter().map(|p| p.deadline_ms).min();
        tokio::select! {
            req = rx.recv() => match req {
                Some(req) => apply(&mut pending, req),
                None => {
                    for p in pending {
                        p.answer(Reply::Value(Value::Nil));
                    }
                    return;
                }
            },
            _ = changes.changed() => {}
            () = crate::clock::sleep_until_ms(deadline) => {}
        }
    }
}

struct Task {
    client: redis::Client,
    shared: Conn,
    connect_timeout: Duration,
    response_timeout: Duration,
    rx: mpsc::UnboundedReceiver<Req>,
    /// The dedicated connection and its client id (for CLIENT UNBLOCK).
    conn: Option<(MultiplexedConnection, i64)>,
    pending: Vec<Pending>,
}

impl Task {
    async fn run(mut self) {
        loop {
            if self.pending.is_empty() {
                match self.rx.recv().await {
                    Some(req) => self.apply(req),
                    None => return,
                }
            }
            while let Ok(req) = self.rx.try_recv() {
                self.apply(req);
            }
            if !self.pending.is_empty() {
                self.round().await;
            }
        }
    }

    fn apply(&mut self, req: Req) {
        apply(&mut self.pending, req);
    }

    async fn connect(&mut self) -> redis::RedisResult<(MultiplexedConnection, i64)> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            // The real bound is per command: BLOCK + response_timeout, below.
            .set_response_timeout(None);
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await?;
        let _: () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("datalayer-blocker")
            .query_async(&mut conn)
            .await?;
        Ok((conn, id))
    }

    /// One merged command: sends it, waits for it (interrupting it when the set of reads
    /// changes), and answers the reads it settled.
    async fn round(&mut self) {
        let now = now_ms();
        self.expire(now);
        if self.pending.is_empty() {
            return;
        }
        let (mut conn, client_id) = match self.conn.take() {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "blocking connection failed: reads unknown");
                    for p in std::mem::take(&mut self.pending) {
                        p.answer(Reply::Unknown);
                    }
                    return;
                }
            },
        };
        let batch = self.batch();
        let block_ms = batch
            .iter()
            .map(|&i| self.pending[i].deadline_ms.saturating_sub(now))
            .min()
            .unwrap_or(1);
        let kinds: Vec<&CommandKind> = batch.iter().map(|&i| &self.pending[i].kind).collect();
        let Some(invocation) = scripts::merged_read(&kinds, block_ms) else {
            // Reads that cannot be merged (a bug in whoever made this blocker's key): each
            // fails as unknown rather than blocking forever.
            for p in std::mem::take(&mut self.pending) {
                p.answer(Reply::Unknown);
            }
            self.conn = Some((conn, client_id));
            return;
        };
        let streams: Vec<Vec<u8>> = batch
            .iter()
            .map(|&i| self.pending[i].stream().to_vec())
            .collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        push(&mut pipe, &invocation);
        let limit = Duration::from_millis(block_ms) + self.response_timeout;
        let Some(value) = self.block(&mut conn, client_id, &pipe, limit).await else {
            // The connection is dropped (a new one next round); the batch's reads may have
            // delivered entries nobody saw: the machines treat them as unknown.
            self.settle_batch(&batch, |_| Some(Reply::Unknown));
            return;
        };
        self.conn = Some((conn, client_id));
        self.distribute(&batch, &streams, value);
    }

    /// Answers the reads past their deadline that are not in a command: nothing came.
    fn expire(&mut self, now: u64) {
        let (expired, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.deadline_ms <= now);
        self.pending = rest;
        for p in expired {
            p.answer(Reply::Value(Value::Nil));
        }
    }

    /// The next command's reads: the first of each stream (a second read of one stream,
    /// from a second queue instance in this process, waits for the next round).
    fn batch(&self) -> Vec<usize> {
        let mut batch: Vec<usize> = Vec::new();
        for (i, p) in self.pending.iter().enumerate() {
            if !batch
                .iter()
                .any(|&j| self.pending[j].stream() == p.stream())
            {
                batch.push(i);
            }
        }
        batch
    }

    /// Runs the blocking command, taking requests meanwhile: the first one interrupts it
    /// (`CLIENT UNBLOCK`), later ones wait in the channel. `None`: no usable reply (the
    /// connection is to be dropped).
    async fn block(
        &mut self,
        conn: &mut MultiplexedConnection,
        client_id: i64,
        pipe: &redis::Pipeline,
        limit: Duration,
    ) -> Option<Value> {
        let done = Arc::new(AtomicBool::new(false));
        let result = {
            let query = tokio::time::timeout(limit, pipe.query_async::<Vec<redis::Value>>(conn));
            tokio::pin!(query);
            let mut interrupted = false;
            loop {
                tokio::select! {
                    r = &mut query => break r,
                    req = self.rx.recv(), if !interrupted => {
                        interrupted = true;
                        if let Some(req) = req {
                            self.apply(req);
                            self.unblock(client_id, done.clone());
                        }
                    }
                }
            }
        };
        done.store(true, Ordering::Relaxed);
        match result {
            Ok(Ok(mut values)) if values.len() == 1 => values.pop().map(to_value),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "blocking read failed: outcomes unknown");
                None
            }
            Err(_) => {
                tracing::warn!(?limit, "blocking read timed out: outcomes unknown");
                None
            }
        }
    }

    /// Hands each read of `batch` (on `streams`) its part of the merged reply `value`.
    fn distribute(&mut self, batch: &[usize], streams: &[Vec<u8>], value: Value) {
        let now = now_ms();
        match value {
            Value::Error(e) => {
                // NOGROUP names its stream: that read gets the error (its worker makes the
                // group again), the others go on. Any other error goes to every read.
                let named = streams
                    .iter()
                    .position(|s| e.contains(&*String::from_utf8_lossy(s)));
                self.settle_batch(batch, |i| match named {
                    Some(n) if n != i => None,
                    _ => Some(Reply::Value(Value::Error(e.clone()))),
                });
            }
            value => {
                let keys: Vec<&[u8]> = streams.iter().map(Vec::as_slice).collect();
                match split_read(value, &keys) {
                    Ok(mut parts) => {
                        let deadlines: Vec<u64> =
                            batch.iter().map(|&i| self.pending[i].deadline_ms).collect();
                        // Each read takes its part (entries and their envelopes are not copied).
                        self.settle_batch(batch, |i| match &mut parts[i] {
                            Value::Nil if deadlines[i] > now => None,
                            part => Some(Reply::Value(std::mem::replace(part, Value::Nil))),
                        });
                    }
                    Err(e) => {
                        let msg = format!("ERR merged read reply: {e}");
                        self.settle_batch(batch, |_| Some(Reply::Value(Value::Error(msg.clone()))));
                    }
                }
            }
        }
    }

    fn settle_batch(&mut self, batch: &[usize], mut reply: impl FnMut(usize) -> Option<Reply>) {
        let mut answers: Vec<(usize, Reply)> = batch
            .iter()
            .enumerate()
            .filter_map(|(b, &i)| reply(b).map(|r| (i, r)))
            .collect();
        // Remove from the back so that earlier indices stay valid.
        answers.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, r) in answers {
            self.pending.swap_remove(i).answer(r);
        }
    }

    /// Interrupts the blocked command: `CLIENT UNBLOCK` on the shared connection, again a
    /// few times if it came before the command blocked, until the command has returned.
    fn unblock(&self, client_id: i64, done: Arc<AtomicBool>) {
        let mut shared = self.shared.clone();
        tokio::spawn(async move {
            for attempt in 0..50u32 {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                let unblocked: redis::RedisResult<i64> = redis::cmd("CLIENT")
                    .arg("UNBLOCK")
                    .arg(client_id)
                    .query_async(&mut shared)
                    .await;
                if matches!(unblocked, Ok(1)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(10)) + 1)).await;
            }
        });
    }
}

/// A driver's side of blocking reads: at most one read in flight (the machines never send
/// two), its ticket for cancelling, and the channel its reply comes back on.
pub(crate) struct Reads {
    blocker: Blocker,
    tx: ReplyTx,
    rx: mpsc::UnboundedReceiver<(OpId, Reply)>,
    ticket: Option<Ticket>,
}

impl std::fmt::Debug for Reads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reads")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl Reads {
    pub(crate) fn new(blocker: Blocker) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            blocker,
            tx,
            rx,
            ticket: None,
        }
    }

    /// Takes the blocking reads out of `cmds` (handing them to the blocker); the rest go
    /// out as a pipeline.
    pub(crate) fn take_blocking(
        &mut self,
        cmds: Vec<datalayer_core::command::Command>,
    ) -> Vec<datalayer_core::command::Command> {
        let mut rest = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            if cmd.block_ms().is_some() {
                self.ticket = Some(self.blocker.submit(cmd.op, cmd.kind, &self.tx));
            } else {
                rest.push(cmd);
            }
        }
        rest
    }

    /// Ends the wait of the read in flight, if any (shutdown: the machine waits for it).
    pub(crate) fn cancel(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.blocker.cancel(t);
        }
    }

    /// The next reply of a blocking read.
    pub(crate) async fn recv(&mut self) -> (OpId, Reply) {
        match self.rx.recv().await {
            Some(r) => {
                self.ticket = None;
                r
            }
            // `self.tx` lives as long as `self`, so the channel never closes.
            None => std::future::pending().await,
        }
    }
}
