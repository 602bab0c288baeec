//! The blocking reads of idle readers, merged onto one connection: a sans-io machine.
//!
//! An idle worker or queue sends its next read with `BLOCK`. Such a read must not sit on the
//! command connection (it would hold every pipeline behind it), so the adapter gives each
//! consumer name (and the queues' events) one blocking connection, and this machine decides
//! what goes on it: the reads of every idle reader it serves, merged into one command
//! ([`crate::scripts::merged_read`]: one `XREADGROUP` for reads that share a consumer name,
//! one `XREAD` for events reads), at most one read per stream per command.
//!
//! - A read is answered with what a read of its stream alone would have had: entries, or
//!   nil once its own `BLOCK` has passed (or it was [cancelled](ReadMux::cancel)); a read
//!   whose part of a merged reply is empty before its deadline stays for the next command.
//! - Workers' reads that took entries are not answered yet: their queues' pauses are
//!   checked first, after the read (a read that took entries after a pause always sees
//!   it), then each is answered `[its entries, paused (0/1)]`; a worker hands back what it
//!   took from a paused queue. A command of at most [`MERGE_LIMIT`] workers' reads carries
//!   the check itself (`check`: sent behind the read in the same write, Redis runs it as
//!   soon as the read returns, so it costs no round trip of its own); a larger one, or one
//!   whose check reply did not come, is followed by a [`MuxCommand::Check`] once its reply
//!   came and took entries.
//! - A read that arrives (or is cancelled) while a command blocks interrupts it
//!   ([`MuxCommand::Unblock`]: `CLIENT UNBLOCK` on another connection), so that the next
//!   command carries it; an unblock that came before the command blocked (`0`) is sent
//!   again, a few ms later, up to [`UNBLOCK_ATTEMPTS`] times, while the command is out.
//! - An error naming one stream (`NOGROUP`: its group is gone) goes to that stream's read
//!   only (its worker makes the group again); the others stay for the next command. Any
//!   other error, and an unknown outcome ([`Reply::Unknown`]: the connection failed, and the
//!   command may have delivered entries nobody saw), goes to every read of the command.
//!
//! Inputs and outputs follow the engine's machines: feed [`ReadMux::submit`],
//! [`ReadMux::cancel`], [`ReadMux::handle_read_reply`], [`ReadMux::handle_check_reply`],
//! [`ReadMux::handle_unblock_reply`] and [`ReadMux::handle_timeout`], then drain [`ReadMux::poll_command`] and
//! [`ReadMux::poll_answer`]; call `handle_timeout` at [`ReadMux::poll_timeout`]. Time may go
//! backwards (deadlines are compared, never subtracted unsaturated); a timeout that finds
//! nothing due is a no-op. Every submitted read is answered exactly once.
//!
//! [`ReadService`] is the shape it shares with the doorbells' [`crate::bells::Bells`]: one
//! driver loop (the adapter's) runs either, its IO reporting back one [`MuxInput`] at a time.

use std::collections::{BTreeMap, HashSet, VecDeque};

use crate::command::{CommandKind, OpId, Reply};
use crate::time::Instant;
use crate::timers::Timers;
use crate::value::{Value, split_read};

/// The multiplexer's timers ([`ReadMux::timers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MuxTimer {
    /// An unblock that found nothing blocked is sent again.
    Unblock,
    /// The earliest deadline of a read not in a command: it is answered (nil).
    ReadDeadline,
}

/// How often an unblock that found nothing blocked is sent again while the command is out.
pub const UNBLOCK_ATTEMPTS: u32 = 50;

/// The longest `BLOCK` of a merged command (ms): reads that wait longer (a doorbell's
/// 30 s) are sent again in a new command when it ends empty, not answered early, so that a
/// blocking connection whose replies stopped is found out within this plus the response
/// timeout.
pub const MAX_BLOCK_MS: u64 = 5_000;

/// How many idle reads one merged command serves before the next idle readers wait on
/// doorbells instead (`IdleReads::Auto` in the adapter): each time a merged command is
/// sent again it names every stream it serves, so its cost grows with them, where a
/// doorbell costs one read of its own queue per ring but a round trip more per job.
pub const MERGE_LIMIT: usize = 16;

/// Whether a new idle read goes into the merged command that already serves `merged`
/// reads ([`MERGE_LIMIT`]); else it waits on its doorbell.
#[must_use]
pub fn merges(merged: usize) -> bool {
    merged < MERGE_LIMIT
}

/// Names one submitted read (to cancel it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxCommand {
    /// Send these reads as one command, `scripts::merged_read(&reads, block_ms)`, on the
    /// blocking connection; its reply goes to [`ReadMux::handle_read_reply`]. At most one is
    /// out at a time.
    Read {
        /// The reads, all of one kind (and consumer), each of another stream.
        reads: Vec<CommandKind>,
        /// Send `scripts::pause_check(&reads)` right behind the read, on the same
        /// connection (it runs when the read returns), and give both replies to
        /// [`ReadMux::handle_checked_read_reply`].
        check: bool,
        /// The command's `BLOCK` (ms, 1 to [`MAX_BLOCK_MS`]): until the earliest deadline of
        /// its reads, at most [`MAX_BLOCK_MS`].
        block_ms: u64,
    },
    /// Interrupt the read command that is out: `CLIENT UNBLOCK <its connection's id>`; the
    /// reply goes to [`ReadMux::handle_unblock_reply`].
    Unblock,
    /// Check the pauses of these workers' reads' queues (they took entries):
    /// `scripts::pause_check(&reads)` on the blocking connection, after the read; its reply
    /// (EXEC's array) goes to [`ReadMux::handle_check_reply`]. Nothing else is sent until
    /// it is answered.
    Check {
        /// The reads (workers'), in the order of the check's replies.
        reads: Vec<CommandKind>,
    },
}

/// What the IO of a [`ReadMux`] reports back ([`ReadService::handle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxInput {
    /// The replies of the [`MuxCommand::Read`] that was out: the read's, and its pause
    /// check's (`NotSent` when none was asked) — [`ReadMux::handle_checked_read_reply`].
    Read {
        /// The merged read's reply.
        reply: Reply,
        /// Its pause check's (EXEC's array).
        check: Reply,
    },
    /// The reply of a [`MuxCommand::Check`] ([`ReadMux::handle_check_reply`]).
    Check(Reply),
    /// The outcome of a [`MuxCommand::Unblock`] ([`ReadMux::handle_unblock_reply`]).
    Unblocked(Option<bool>),
}

/// The one shape of the machines that serve blocking reads — the merging [`ReadMux`] on one
/// server, the doorbells' [`crate::bells::Bells`] — so that one driver loop runs either:
/// submit and cancel reads, feed the IO's inputs and the time, drain commands and answers.
pub trait ReadService {
    /// What to send.
    type Command;
    /// What the IO reports back.
    type Input;

    /// Takes a blocking read (`op`: the reader's, given back with its answer).
    fn submit(&mut self, now: Instant, op: OpId, kind: CommandKind) -> Ticket;
    /// Ends a read's wait now (it is answered exactly once all the same).
    fn cancel(&mut self, now: Instant, ticket: Ticket);
    /// An input from the IO.
    fn handle(&mut self, now: Instant, input: Self::Input);
    /// Time passed (a call before anything is due is a no-op).
    fn handle_timeout(&mut self, now: Instant);
    /// When to call [`ReadService::handle_timeout`] next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next command to send.
    fn poll_command(&mut self) -> Option<Self::Command>;
    /// The next answer for a reader.
    fn poll_answer(&mut self) -> Option<Answer>;
}

impl ReadService for ReadMux {
    type Command = MuxCommand;
    type Input = MuxInput;

    fn submit(&mut self, now: Instant, op: OpId, kind: CommandKind) -> Ticket {
        ReadMux::submit(self, now, op, kind)
    }
    fn cancel(&mut self, now: Instant, ticket: Ticket) {
        ReadMux::cancel(self, now, ticket);
    }
    fn handle(&mut self, now: Instant, input: MuxInput) {
        match input {
            MuxInput::Read { reply, check } => self.handle_checked_read_reply(now, reply, check),
            MuxInput::Check(reply) => self.handle_check_reply(now, reply),
            MuxInput::Unblocked(unblocked) => self.handle_unblock_reply(now, unblocked),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        ReadMux::handle_timeout(self, now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        ReadMux::poll_timeout(self)
    }
    fn poll_command(&mut self) -> Option<MuxCommand> {
        ReadMux::poll_command(self)
    }
    fn poll_answer(&mut self) -> Option<Answer> {
        ReadMux::poll_answer(self)
    }
}

/// A read's reply, for the reader that submitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The read.
    pub ticket: Ticket,
    /// The reader's op id for it.
    pub op: OpId,
    /// What a read of its stream alone would have had.
    pub reply: Reply,
}

#[derive(Debug, Clone)]
struct Waiting {
    ticket: Ticket,
    op: OpId,
    kind: CommandKind,
    deadline_ms: u64,
    /// In the command that is out, or in the pause check after it.
    out: bool,
}

impl Waiting {
    fn stream(&self) -> &[u8] {
        match &self.kind {
            CommandKind::Read { keys, .. } => keys.jobs.as_bytes(),
            CommandKind::ReadEvents { producer, .. } => producer.events.as_bytes(),
            _ => b"",
        }
    }

    /// Whether `other` can go in one command with this read.
    fn merges_with(&self, other: &Waiting) -> bool {
        match (&self.kind, &other.kind) {
            (CommandKind::Read { consumer: a, .. }, CommandKind::Read { consumer: b, .. }) => {
                a == b
            }
            (CommandKind::ReadEvents { .. }, CommandKind::ReadEvents { .. }) => true,
            _ => false,
        }
    }
}

/// Where the interruption of the command that is out stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    /// Not asked for.
    No,
    /// An unblock is out.
    Sent { attempt: u32 },
    /// The last unblock found nothing blocked: send another at this time.
    Again { attempt: u32, at_ms: u64 },
    /// Done (the command was unblocked, or attempts ran out).
    Done,
}

/// The command that is out.
#[derive(Debug, Clone)]
struct InFlight {
    tickets: Vec<Ticket>,
    interrupt: Interrupt,
}

/// Reads whose entries wait for their queues' pause check.
#[derive(Debug, Clone)]
struct Checking {
    items: Vec<(Ticket, Value)>,
}

/// The multiplexer of one blocking connection.
///
/// Its work per event is linear in the reads that wait, at most (a process of a thousand
/// idle queues has a thousand reads on one connection): no step compares every read with
/// every other.
#[derive(Debug, Default)]
pub struct ReadMux {
    next_ticket: u64,
    /// Every read not answered yet, by ticket: in arrival order (those in the command
    /// included).
    waiting: BTreeMap<Ticket, Waiting>,
    in_flight: Option<InFlight>,
    checking: Option<Checking>,
    commands: VecDeque<MuxCommand>,
    answers: VecDeque<Answer>,
}

impl ReadMux {
    /// A multiplexer with nothing to read.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many reads wait for their answer.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Takes a blocking read of a reader (`op`: the reader's op id, given back with the
    /// answer); its deadline is `now` plus its `BLOCK`. Anything but a read is answered at
    /// once with an error reply.
    pub fn submit(&mut self, now: Instant, op: OpId, kind: CommandKind) -> Ticket {
        let now_ms = now.unix_ms();
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        let block = match &kind {
            CommandKind::Read { block_ms, .. } | CommandKind::ReadEvents { block_ms, .. } => {
                block_ms.unwrap_or(0)
            }
            _ => {
                self.answers.push_back(Answer {
                    ticket,
                    op,
                    reply: Reply::Value(Value::Error("ERR not a read".into())),
                });
                return ticket;
            }
        };
        self.waiting.insert(
            ticket,
            Waiting {
                ticket,
                op,
                kind,
                deadline_ms: now_ms.saturating_add(block),
                out: false,
            },
        );
        self.interrupt(now_ms);
        self.pump(now_ms);
        ticket
    }

    /// Ends the read's wait now: it is answered with what the command that is out brings
    /// for it (nil if nothing), or at once with nil if it is not in one. A read already
    /// answered is a no-op.
    pub fn cancel(&mut self, now: Instant, ticket: Ticket) {
        let now_ms = now.unix_ms();
        let Some(w) = self.waiting.get_mut(&ticket) else {
            return;
        };
        if w.out {
            w.deadline_ms = 0;
            self.interrupt(now_ms);
        } else if let Some(w) = self.waiting.remove(&ticket) {
            self.answer(w, Reply::Value(Value::Nil));
        }
        self.pump(now_ms);
    }

    /// The reply of the [`MuxCommand::Read`] that is out (its whole merged reply, or
    /// `Unknown`/`NotSent`), without a pause check: reads that took entries are checked
    /// next ([`MuxCommand::Check`]). A reply when none is out is ignored.
    pub fn handle_read_reply(&mut self, now: Instant, reply: Reply) {
        self.handle_checked_read_reply(now, reply, Reply::NotSent);
    }

    /// The replies of a [`MuxCommand::Read`] with `check`: the read's, and its pause
    /// check's (EXEC's array: one integer per read, 1 when its queue is paused). A check
    /// reply of another shape (lost, failed) is as none: reads that took entries are
    /// checked next ([`MuxCommand::Check`]).
    pub fn handle_checked_read_reply(&mut self, now: Instant, reply: Reply, check: Reply) {
        let now_ms = now.unix_ms();
        let Some(out) = self.in_flight.take() else {
            return;
        };
        let flags: Option<Vec<i64>> = match check {
            Reply::Value(Value::Array(f)) if f.len() == out.tickets.len() => Some(
                f.into_iter()
                    .map(|v| i64::from(!matches!(v, Value::Int(0))))
                    .collect(),
            ),
            _ => None,
        };
        // Out no more, but those whose entries go to the pause check (below).
        let mut streams: Vec<Vec<u8>> = Vec::with_capacity(out.tickets.len());
        for t in &out.tickets {
            if let Some(w) = self.waiting.get_mut(t) {
                w.out = false;
                streams.push(w.stream().to_vec());
            }
        }
        match reply {
            Reply::Value(Value::Error(e)) => {
                // An error that names one of the streams is that read's (NOGROUP).
                let named = streams
                    .iter()
                    .position(|s| !s.is_empty() && e.contains(&*String::from_utf8_lossy(s)));
                for (i, t) in out.tickets.iter().enumerate() {
                    if named.is_none_or(|n| n == i) {
                        self.settle(*t, Reply::Value(Value::Error(e.clone())));
                    }
                }
            }
            Reply::Value(value) => {
                let keys: Vec<&[u8]> = streams.iter().map(Vec::as_slice).collect();
                match split_read(value, &keys) {
                    Ok(parts) => {
                        let mut check = Vec::new();
                        let mut reads = Vec::new();
                        for (i, (t, part)) in out.tickets.iter().zip(parts).enumerate() {
                            let Some(w) = self.waiting.get_mut(t) else {
                                continue;
                            };
                            let due = w.deadline_ms <= now_ms;
                            let worker = matches!(w.kind, CommandKind::Read { .. });
                            if let (true, true, Some(flag)) = (
                                part != Value::Nil,
                                worker,
                                flags.as_ref().and_then(|f| f.get(i)),
                            ) {
                                let answer = Value::Array(vec![part, Value::Int(*flag)]);
                                self.settle(*t, Reply::Value(answer));
                            } else if part != Value::Nil && worker {
                                w.out = true;
                                reads.push(w.kind.clone());
                                check.push((*t, part));
                            } else if part != Value::Nil || due {
                                self.settle(*t, Reply::Value(part));
                            }
                        }
                        if !check.is_empty() {
                            self.commands.push_back(MuxCommand::Check { reads });
                            self.checking = Some(Checking { items: check });
                        }
                    }
                    Err(e) => {
                        let msg = format!("ERR merged read reply: {e}");
                        for t in &out.tickets {
                            self.settle(*t, Reply::Value(Value::Error(msg.clone())));
                        }
                    }
                }
            }
            other => {
                for t in &out.tickets {
                    self.settle(*t, other.clone());
                }
            }
        }
        self.pump(now_ms);
    }

    /// The reply of a [`MuxCommand::Check`]: one integer per read (1: its queue is paused),
    /// or anything else (the check failed: as if every queue were paused, so that nothing
    /// starts unchecked; the workers hand the entries back and ask again). A reply when no
    /// check is out is ignored.
    pub fn handle_check_reply(&mut self, now: Instant, reply: Reply) {
        let now_ms = now.unix_ms();
        let Some(checking) = self.checking.take() else {
            return;
        };
        let flags: Vec<i64> = match reply {
            Reply::Value(Value::Array(f)) if f.len() == checking.items.len() => f
                .into_iter()
                .map(|v| i64::from(!matches!(v, Value::Int(0))))
                .collect(),
            _ => vec![1; checking.items.len()],
        };
        for ((t, part), flag) in checking.items.into_iter().zip(flags) {
            self.settle(t, Reply::Value(Value::Array(vec![part, Value::Int(flag)])));
        }
        self.pump(now_ms);
    }

    /// The reply of a [`MuxCommand::Unblock`]: `Some(true)` it unblocked the command,
    /// `Some(false)` nothing was blocked (the command has not reached Redis yet, or just
    /// returned), `None` it failed. While the command is out, an unblock that did not
    /// unblock is sent again shortly.
    pub fn handle_unblock_reply(&mut self, now: Instant, unblocked: Option<bool>) {
        let now_ms = now.unix_ms();
        let Some(out) = self.in_flight.as_mut() else {
            return;
        };
        if let Interrupt::Sent { attempt } = out.interrupt {
            out.interrupt = match unblocked {
                Some(true) => Interrupt::Done,
                _ if attempt + 1 >= UNBLOCK_ATTEMPTS => Interrupt::Done,
                _ => Interrupt::Again {
                    attempt: attempt + 1,
                    at_ms: now_ms.saturating_add(u64::from(attempt.min(10)) + 1),
                },
            };
        }
    }

    /// Time passed: reads past their deadline that are not in a command are answered (nil),
    /// an unblock due again is sent.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now_ms = now.unix_ms();
        if let Some(out) = self.in_flight.as_mut() {
            if let Interrupt::Again { attempt, at_ms } = out.interrupt {
                if at_ms <= now_ms {
                    out.interrupt = Interrupt::Sent { attempt };
                    self.commands.push_back(MuxCommand::Unblock);
                }
            }
        }
        self.pump(now_ms);
    }

    /// When to call [`ReadMux::handle_timeout`]: the earliest of [`ReadMux::timers`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers().next_at()
    }

    /// The multiplexer's timers (see [`crate::timers`]): the next unblock to send again,
    /// and the earliest deadline of a read not in a command.
    #[must_use]
    pub fn timers(&self) -> Timers<MuxTimer> {
        let mut t = Timers::new();
        if let Some(Interrupt::Again { at_ms, .. }) = self.in_flight.as_ref().map(|o| o.interrupt) {
            t.set(MuxTimer::Unblock, Instant::from_unix_ms(at_ms));
        }
        if let Some(deadline) = self
            .waiting
            .values()
            .filter(|w| !w.out)
            .map(|w| w.deadline_ms)
            .min()
        {
            t.set(MuxTimer::ReadDeadline, Instant::from_unix_ms(deadline));
        }
        t
    }

    /// The next command to send.
    pub fn poll_command(&mut self) -> Option<MuxCommand> {
        self.commands.pop_front()
    }

    /// The next answer for a reader.
    pub fn poll_answer(&mut self) -> Option<Answer> {
        self.answers.pop_front()
    }

    fn answer(&mut self, w: Waiting, reply: Reply) {
        self.answers.push_back(Answer {
            ticket: w.ticket,
            op: w.op,
            reply,
        });
    }

    /// Answers `ticket` (if it still waits).
    fn settle(&mut self, ticket: Ticket, reply: Reply) {
        if let Some(w) = self.waiting.remove(&ticket) {
            self.answer(w, reply);
        }
    }

    /// Asks for the command that is out to be interrupted (once per command).
    fn interrupt(&mut self, _now_ms: u64) {
        if let Some(out) = self.in_flight.as_mut() {
            if out.interrupt == Interrupt::No {
                out.interrupt = Interrupt::Sent { attempt: 0 };
                self.commands.push_back(MuxCommand::Unblock);
            }
        }
    }

    /// With no command out: answers the reads past their deadline, then sends the next
    /// command (the first waiting read, and every later one that merges with it, one per
    /// stream).
    fn pump(&mut self, now_ms: u64) {
        // Reads not in the command (or the check) end at their deadline.
        self.expire(now_ms);
        if self.in_flight.is_some() || self.checking.is_some() {
            return;
        }
        let mut all = self.waiting.values();
        let Some(first) = all.next() else {
            return;
        };
        let mut block_ms = first.deadline_ms.saturating_sub(now_ms);
        let mut tickets = vec![first.ticket];
        let mut reads = vec![first.kind.clone()];
        let mut streams: HashSet<&[u8]> = HashSet::from([first.stream()]);
        for w in all {
            if first.merges_with(w) && streams.insert(w.stream()) {
                block_ms = block_ms.min(w.deadline_ms.saturating_sub(now_ms));
                tickets.push(w.ticket);
                reads.push(w.kind.clone());
            }
        }
        for t in &tickets {
            if let Some(w) = self.waiting.get_mut(t) {
                w.out = true;
            }
        }
        let check = reads.len() <= MERGE_LIMIT
            && reads.iter().all(|r| matches!(r, CommandKind::Read { .. }));
        self.commands.push_back(MuxCommand::Read {
            reads,
            check,
            block_ms: block_ms.clamp(1, MAX_BLOCK_MS),
        });
        self.in_flight = Some(InFlight {
            tickets,
            interrupt: Interrupt::No,
        });
    }

    /// Answers (nil) the reads past their deadline that are not out.
    fn expire(&mut self, now_ms: u64) {
        let due: Vec<Ticket> = self
            .waiting
            .values()
            .filter(|w| w.deadline_ms <= now_ms && !w.out)
            .map(|w| w.ticket)
            .collect();
        for t in due {
            self.settle(t, Reply::Value(Value::Nil));
        }
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests;
