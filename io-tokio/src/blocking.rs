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
//! What goes out when, and who gets which part of a reply, is decided by the core's
//! [`ReadMux`] (merging, deadlines, re-sending, NOGROUP routing, the CLIENT UNBLOCK retries;
//! tested on the model with faults); this module only owns the connection, sends, and
//! hands answers to the drivers. A read's reply is what a read of its stream alone would
//! have had; a read that saw nothing by its deadline gets nil. A failed connection makes
//! the outcome of every read of the command unknown ([`Reply::Unknown`]): the machines
//! back off and read again, and the blocker connects anew for the next command.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use datalayer_core::command::{CommandKind, OpId, Reply};
use datalayer_core::mux::{self, MuxCommand, MuxInput, ReadMux, ReadService};
use datalayer_core::scripts;
use datalayer_core::value::Value;

use crate::connection::Conn;
use tokio::sync::mpsc;

use crate::clock::now;
use crate::wire::Link;

/// How long an idle reader's read blocks in Redis (ms).
pub(crate) const BLOCK_MS: u64 = 5_000;

/// How long an idle reader waits for its doorbell on a cluster before it reads anyway (ms):
/// the read at the end is only a safety net (every command that adds rings the bell), and
/// each costs a command, so it is rare.
pub(crate) const BELL_WAIT_MS: u64 = 30_000;

/// Where a blocking read's reply goes: the driver's channel, with the op to reply to.
pub(crate) type ReplyTx = mpsc::UnboundedSender<(OpId, Reply)>;

/// A ticket names one submitted read, to cancel it.
pub(crate) type Ticket = u64;

static TICKETS: AtomicU64 = AtomicU64::new(1);

/// What a driver asks of a blocking-read task.
enum Req {
    Read {
        ticket: Ticket,
        op: OpId,
        kind: CommandKind,
        reply: ReplyTx,
    },
    Cancel(Ticket),
}

/// The IO of a [`ReadService`]: it sends the machine's commands and reports what comes
/// back. [`serve`] runs one with its machine.
pub(crate) trait Line: Send + 'static {
    /// The machine whose IO this is.
    type S: ReadService<Command: Send, Input: Send> + Send + 'static;
    /// Sends the commands the machine asked for, in order.
    fn send(&mut self, cmds: Vec<<Self::S as ReadService>::Command>);
    /// The next input for the machine. Cancel safe: the loop waits on it beside the
    /// drivers' requests and the timer.
    fn next(&mut self) -> impl Future<Output = <Self::S as ReadService>::Input> + Send;
}

/// Starts the task that serves blocking reads with `service` over `line`: the one loop of
/// every blocking-read task. It decides nothing: the machine does.
pub(crate) fn serve<L: Line>(mut service: L::S, mut line: L, span: tracing::Span) -> Blocker {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = async move {
        let mut waiters = Waiters::default();
        loop {
            let cmds: Vec<_> = std::iter::from_fn(|| service.poll_command()).collect();
            if !cmds.is_empty() {
                line.send(cmds);
            }
            waiters.answer(&mut service);
            let wake = service.poll_timeout();
            tokio::select! {
                req = rx.recv() => match req {
                    Some(req) => waiters.apply(&mut service, req),
                    // Every handle is gone, so is every driver: nobody waits for an answer.
                    None => return,
                },
                input = line.next() => service.handle(now(), input),
                () = crate::clock::sleep_until(wake) => service.handle_timeout(now()),
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(task, span));
    Blocker::from_sender(tx)
}

/// The reads a blocking-read task holds for its drivers: where each read's answer goes
/// (and the driver's ticket for it), by the machine's ticket; the driver's tickets to the
/// machine's.
#[derive(Default)]
struct Waiters {
    replies: HashMap<mux::Ticket, (Ticket, ReplyTx)>,
    tickets: HashMap<Ticket, mux::Ticket>,
}

impl Waiters {
    /// A driver's request, given to `machine`.
    fn apply(&mut self, machine: &mut impl ReadService, req: Req) {
        let now = now();
        match req {
            Req::Read {
                ticket,
                op,
                kind,
                reply,
            } => {
                let t = machine.submit(now, op, kind);
                self.tickets.insert(ticket, t);
                self.replies.insert(t, (ticket, reply));
            }
            Req::Cancel(ticket) => {
                if let Some(t) = self.tickets.get(&ticket) {
                    machine.cancel(now, *t);
                }
            }
        }
    }

    /// Hands each of `machine`'s answers to its driver.
    fn answer(&mut self, machine: &mut impl ReadService) {
        while let Some(a) = machine.poll_answer() {
            if let Some((ticket, tx)) = self.replies.remove(&a.ticket) {
                self.tickets.remove(&ticket);
                let _ = tx.send((a.op, a.reply));
            }
        }
    }
}

/// A handle on one blocking-read task (cheap to clone), and with [`crate::IdleReads::Auto`]
/// the doorbell task its reads overflow to.
#[derive(Clone)]
pub(crate) struct Blocker {
    tx: mpsc::UnboundedSender<Req>,
    /// The reads submitted to `tx` and not answered yet (counted by the [`Reads`]).
    merged: Arc<AtomicUsize>,
    /// Where a read goes when `tx`'s merged command is full ([`mux::merges`]).
    overflow: Option<mpsc::UnboundedSender<Req>>,
}

impl Blocker {
    /// Starts the task. Its dedicated connection goes to `shared`'s server; `shared`
    /// carries the `CLIENT UNBLOCK`s; `response_timeout` is added to each command's `BLOCK`.
    pub(crate) fn start(shared: Conn, response_timeout: Duration) -> Self {
        Self::spawn(Target::Redis(Box::new(RedisLine {
            shared,
            response_timeout,
            conn: None,
            client_id: Arc::new(AtomicI64::new(0)),
        })))
    }

    /// Starts the task that serves blocking reads on the in-process backend.
    #[cfg(feature = "memory")]
    pub(crate) fn start_in_memory(memory: Arc<crate::memory::Memory>) -> Self {
        Self::spawn(Target::Memory {
            memory,
            unblock: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// A handle on a task that serves `Req`s its own way (a cluster's doorbells).
    fn from_sender(tx: mpsc::UnboundedSender<Req>) -> Self {
        Self {
            tx,
            merged: Arc::default(),
            overflow: None,
        }
    }

    /// This merged-read task, its reads beyond [`mux::MERGE_LIMIT`] going to `bells`.
    pub(crate) fn overflowing_to(&self, bells: &Blocker) -> Blocker {
        Blocker {
            overflow: Some(bells.tx.clone()),
            ..self.clone()
        }
    }

    fn spawn(target: Target) -> Self {
        let (unblocked_tx, unblocked_rx) = mpsc::unbounded_channel();
        let line = MergedLine {
            target,
            out: None,
            unblocked_tx,
            unblocked_rx,
        };
        serve(ReadMux::new(), line, tracing::debug_span!("blocker"))
    }

    /// Hands a blocking read to the task (or, the merged command being full, to the
    /// doorbells); its reply comes on `reply`, exactly once (unless the task is gone, in
    /// which case the reply is `Unknown` at once). With the count of merged reads to give
    /// back once the reply came, when it went to the merged command.
    fn submit(
        &self,
        op: OpId,
        kind: CommandKind,
        reply: &ReplyTx,
    ) -> (Ticket, Option<Arc<AtomicUsize>>) {
        let ticket = TICKETS.fetch_add(1, Ordering::Relaxed);
        let req = Req::Read {
            ticket,
            op,
            kind,
            reply: reply.clone(),
        };
        let (tx, counted) = match &self.overflow {
            Some(bells) if !mux::merges(self.merged.load(Ordering::Relaxed)) => (bells, None),
            _ => {
                self.merged.fetch_add(1, Ordering::Relaxed);
                (&self.tx, Some(self.merged.clone()))
            }
        };
        if tx.send(req).is_err() {
            let _ = reply.send((op, Reply::Unknown));
        }
        (ticket, counted)
    }

    /// Ends the read's wait now: it is answered with what the current command brings (nil if
    /// nothing came).
    pub(crate) fn cancel(&self, ticket: Ticket) {
        let _ = self.tx.send(Req::Cancel(ticket));
        if let Some(bells) = &self.overflow {
            let _ = bells.send(Req::Cancel(ticket));
        }
    }
}

/// The merged read that is out: the connection it went on (kept for the next command when
/// it is still good), its reply, and its pause check's (`NotSent` when none was asked).
type ReadOut = Pin<Box<dyn Future<Output = (Option<Link>, Reply, Reply)> + Send>>;

/// What is out: a merged read, or the pause check of the workers' reads that took entries.
enum Out {
    Read(ReadOut),
    Check(Pin<Box<dyn Future<Output = Reply> + Send>>),
}

/// A blocking connection to Redis.
struct RedisLine {
    shared: Conn,
    response_timeout: Duration,
    /// The dedicated connection, while no command is out on it.
    conn: Option<Link>,
    /// Its client id (for CLIENT UNBLOCK); 0 while unknown.
    client_id: Arc<AtomicI64>,
}

/// Where the merged reads go.
enum Target {
    Redis(Box<RedisLine>),
    /// The in-process backend: a read waits for a pipeline to change the model, its
    /// `BLOCK` to end, or an unblock.
    #[cfg(feature = "memory")]
    Memory {
        memory: Arc<crate::memory::Memory>,
        unblock: Arc<tokio::sync::Notify>,
    },
}

/// The IO of one blocking connection; every decision is the [`ReadMux`]'s.
struct MergedLine {
    target: Target,
    /// The command that is out (one at a time).
    out: Option<Out>,
    unblocked_tx: mpsc::UnboundedSender<Option<bool>>,
    unblocked_rx: mpsc::UnboundedReceiver<Option<bool>>,
}

impl Line for MergedLine {
    type S = ReadMux;

    /// Sends what the mux asks for: the merged read or its pause check, unblocks.
    fn send(&mut self, cmds: Vec<MuxCommand>) {
        for cmd in cmds {
            match (cmd, &mut self.target) {
                (MuxCommand::Check { reads }, Target::Redis(line)) => {
                    self.out = Some(Out::Check(line.check(reads)));
                }
                (
                    MuxCommand::Read {
                        reads,
                        block_ms,
                        check,
                    },
                    Target::Redis(line),
                ) => {
                    self.out = Some(Out::Read(line.read(reads, block_ms, check)));
                }
                (MuxCommand::Unblock, Target::Redis(line)) => {
                    line.unblock(self.unblocked_tx.clone());
                }
                #[cfg(feature = "memory")]
                (MuxCommand::Check { reads }, Target::Memory { memory, .. }) => {
                    let reply = Reply::Value(memory.pause_check(&reads));
                    self.out = Some(Out::Check(Box::pin(async move { reply })));
                }
                #[cfg(feature = "memory")]
                (
                    MuxCommand::Read {
                        reads,
                        block_ms,
                        check,
                    },
                    Target::Memory { memory, unblock },
                ) => {
                    let (memory, unblock) = (memory.clone(), unblock.clone());
                    self.out = Some(Out::Read(read_in_memory(
                        memory, unblock, reads, block_ms, check,
                    )));
                }
                #[cfg(feature = "memory")]
                (MuxCommand::Unblock, Target::Memory { unblock, .. }) => {
                    unblock.notify_one();
                    let _ = self.unblocked_tx.send(Some(true));
                }
            }
        }
    }

    async fn next(&mut self) -> MuxInput {
        tokio::select! {
            done = async {
                match self.out.as_mut() {
                    Some(Out::Read(read)) => Ok(read.await),
                    Some(Out::Check(check)) => Err(check.await),
                    None => std::future::pending().await,
                }
            } => {
                self.out = None;
                match done {
                    Err(reply) => MuxInput::Check(reply),
                    Ok((conn, reply, check)) => {
                        #[allow(irrefutable_let_patterns)] // without the memory feature
                        if let Target::Redis(line) = &mut self.target {
                            if conn.is_none() {
                                line.client_id.store(0, Ordering::Relaxed);
                            }
                            line.conn = conn;
                        }
                        MuxInput::Read { reply, check }
                    }
                }
            }
            Some(unblocked) = self.unblocked_rx.recv() => MuxInput::Unblocked(unblocked),
        }
    }
}

impl RedisLine {
    /// The merged read, on the dedicated connection (connecting first when there is none),
    /// and with `check` its pause check right behind it, in the same write: Redis runs it
    /// once the read returns.
    fn read(&mut self, reads: Vec<CommandKind>, block_ms: u64, check: bool) -> ReadOut {
        let conn = self.conn.take().filter(|c| !c.is_closed());
        let dial = self.shared.dial().clone();
        let client_id = self.client_id.clone();
        let limit = Duration::from_millis(block_ms) + self.response_timeout;
        Box::pin(async move {
            let refs: Vec<&CommandKind> = reads.iter().collect();
            let Some(invocation) = scripts::merged_read(&refs, block_ms) else {
                let e = Value::Error("ERR reads that do not merge".into());
                return (conn, Reply::Value(e), Reply::NotSent);
            };
            let mut out = Vec::new();
            let mut replies = invocation.encode(&mut out);
            if let Some(c) = scripts::pause_check(&refs).filter(|_| check) {
                replies += c.encode(&mut out);
            }
            let conn = match conn {
                Some(c) => c,
                None => match dial.open("datalayer-blocker").await {
                    Ok((c, id)) => {
                        client_id.store(id, Ordering::Relaxed);
                        c
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "blocking connection failed: reads unknown");
                        return (None, Reply::Unknown, Reply::NotSent);
                    }
                },
            };
            match conn.request(out, replies, Some(limit)).await {
                Ok(values) if values.len() == replies => {
                    let mut values = values.into_iter();
                    let read = values.next().unwrap_or(Value::Nil);
                    // The check's reply is EXEC's, the last one.
                    let check = match values.next_back() {
                        Some(v) => Reply::Value(v),
                        None => Reply::NotSent,
                    };
                    (Some(conn), Reply::Value(read), check)
                }
                Ok(_) => {
                    conn.close();
                    (None, Reply::Unknown, Reply::NotSent)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "blocking read failed: outcomes unknown");
                    (None, Reply::Unknown, Reply::NotSent)
                }
            }
        })
    }

    /// The pause check ([`scripts::pause_check`]) of reads that took entries, on the shared
    /// connection: it runs after the read, whose reply came (that order is all it needs).
    fn check(&self, reads: Vec<CommandKind>) -> Pin<Box<dyn Future<Output = Reply> + Send>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let refs: Vec<&CommandKind> = reads.iter().collect();
            let Some(check) = scripts::pause_check(&refs) else {
                return Reply::Value(Value::Error("ERR not workers' reads".into()));
            };
            let mut out = Vec::new();
            let n = check.encode(&mut out);
            match shared.round_trip(out, n).await {
                // EXEC's array is the last reply.
                Ok(mut values) if values.len() == n => {
                    Reply::Value(values.pop().unwrap_or(Value::Nil))
                }
                Ok(_) | Err(_) => Reply::Unknown,
            }
        })
    }

    /// `CLIENT UNBLOCK` of the dedicated connection, on the shared one; its answer comes
    /// back to the mux.
    fn unblock(&self, tx: mpsc::UnboundedSender<Option<bool>>) {
        let shared = self.shared.clone();
        let id = self.client_id.load(Ordering::Relaxed);
        tokio::spawn(async move {
            let unblocked = if id == 0 {
                None
            } else {
                match shared
                    .command(&["CLIENT", "UNBLOCK", &id.to_string()])
                    .await
                {
                    Ok(Value::Int(n)) => Some(n == 1),
                    _ => None,
                }
            };
            let _ = tx.send(unblocked);
        });
    }
}

/// A merged read on the in-process backend: run at once, and again whenever a pipeline
/// changed the model, until it finds something, its `BLOCK` ends, or it is unblocked.
#[cfg(feature = "memory")]
fn read_in_memory(
    memory: Arc<crate::memory::Memory>,
    unblock: Arc<tokio::sync::Notify>,
    reads: Vec<CommandKind>,
    block_ms: u64,
    check: bool,
) -> ReadOut {
    Box::pin(async move {
        let deadline = now() + Duration::from_millis(block_ms);
        let mut changes = memory.changes();
        let checked = |value: Value| {
            let check = if check {
                Reply::Value(memory.pause_check(&reads))
            } else {
                Reply::NotSent
            };
            (None, Reply::Value(value), check)
        };
        loop {
            changes.borrow_and_update();
            let value = memory.read_merged(&reads);
            if value != Value::Nil || now() >= deadline {
                return checked(value);
            }
            tokio::select! {
                _ = changes.changed() => {}
                () = unblock.notified() => return checked(Value::Nil),
                () = crate::clock::sleep_until(Some(deadline)) => {}
            }
        }
    })
}

/// A driver's side of blocking reads: at most one read in flight (the machines never send
/// two), its ticket for cancelling, and the channel its reply comes back on.
pub(crate) struct Reads {
    blocker: Blocker,
    tx: ReplyTx,
    rx: mpsc::UnboundedReceiver<(OpId, Reply)>,
    ticket: Option<Ticket>,
    /// The merged reads' count the read in flight is part of, if it went there.
    counted: Option<Arc<AtomicUsize>>,
}

impl std::fmt::Debug for Reads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reads")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl Drop for Reads {
    fn drop(&mut self) {
        self.uncount();
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
            counted: None,
        }
    }

    /// The read in flight was answered (or its reader is gone): it is out of the merged
    /// command's count.
    fn uncount(&mut self) {
        if let Some(c) = self.counted.take() {
            c.fetch_sub(1, Ordering::Relaxed);
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
                self.uncount();
                let (ticket, counted) = self.blocker.submit(cmd.op, cmd.kind, &self.tx);
                self.ticket = Some(ticket);
                self.counted = counted;
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
                self.uncount();
                r
            }
            // `self.tx` lives as long as `self`, so the channel never closes.
            None => std::future::pending().await,
        }
    }
}
