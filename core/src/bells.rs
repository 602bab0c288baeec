//! Idle readers woken by doorbells: a sans-io machine.
//!
//! A cluster cannot merge reads of two slots, and a blocked command would stall the node's
//! command connection; on one server, a merged blocking read ([`crate::mux`]) names every
//! idle queue of the process each time it is sent, so its cost grows with the queues. So a
//! blocking read is turned into this (on a cluster, and on one server by default):
//!
//! 1. Subscribe to the read's doorbell ([`crate::cluster::read_bell`]: a sharded channel in
//!    its queue's slot), once per channel, and wait for the subscription to be confirmed.
//! 2. Read *without* `BLOCK` ([`BellCommand::Read`], on the command connection). Entries (or
//!    an error, or an unknown outcome) are the answer.
//! 3. Nothing: wait until the bell rings, then read again; nil once the read's own `BLOCK`
//!    has passed, or at once when it is [cancelled](Bells::cancel).
//!
//! No ring is missed: each channel counts its rings (its *epoch*), a read notes the epoch
//! it was sent at, and a read that comes back empty after a ring is sent again at once. A
//! lost subscription (the connection dropped, the slot moved: [`Bells::handle_lost`]) counts
//! as a ring and subscribes again. Every command that may add what a reader waits for rings
//! its bell ([`crate::cluster::rings`]) after it ran, in the same pipeline.
//!
//! A channel stays subscribed while readers use it, and for [`LINGER_MS`] after the last
//! one left (an idle reader's next read comes after its `BLOCK`; unsubscribing and
//! subscribing again every few seconds would double the commands).
//!
//! The same rules as the engine's machines: feed inputs, drain [`Bells::poll_command`] and
//! [`Bells::poll_answer`], call [`Bells::handle_timeout`] at [`Bells::poll_timeout`]. Time
//! may go backwards; a spurious timeout is a no-op. Every submitted read is answered exactly
//! once. No step scans every read or every channel: a ring touches its channel's readers,
//! a timeout the reads and channels that are due (a process of a thousand idle queues has
//! two thousand readers).

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::cluster::read_bell;
use crate::command::{CommandKind, OpId, Reply};
use crate::mux::{Answer, ReadService, Ticket};
use crate::time::Instant;
use crate::timers::Timers;
use crate::value::Value;

/// The doorbells' timers ([`Bells::timers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BellTimer {
    /// The earliest deadline of a parked read: it is answered (nil).
    ReadDeadline,
    /// The earliest end of an idle channel's linger: it is unsubscribed.
    Linger,
}

/// How long a channel stays subscribed after its last reader left (ms).
pub const LINGER_MS: u64 = 60_000;

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BellCommand {
    /// `SSUBSCRIBE <channel>` on the subscription connection of the channel's node; the
    /// outcome goes to [`Bells::handle_subscribed`].
    Subscribe(String),
    /// `SUNSUBSCRIBE <channel>` (no answer expected).
    Unsubscribe(String),
    /// This read (its `BLOCK` removed), on the command connection; the reply goes to
    /// [`Bells::handle_read_reply`] with the ticket.
    Read {
        /// The read.
        ticket: Ticket,
        /// The command.
        kind: CommandKind,
    },
}

/// What the IO of [`Bells`] reports back ([`ReadService::handle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BellInput {
    /// The outcome of a [`BellCommand::Subscribe`] ([`Bells::handle_subscribed`]).
    Subscribed {
        /// The channel.
        channel: String,
        /// Whether the server confirmed it.
        ok: bool,
    },
    /// The reply of a [`BellCommand::Read`] ([`Bells::handle_read_reply`]).
    Read {
        /// The read.
        ticket: Ticket,
        /// Its reply.
        reply: Reply,
    },
    /// A channel rang ([`Bells::handle_ring`]).
    Ring(String),
    /// These subscriptions are gone ([`Bells::handle_lost`]).
    Lost(Vec<String>),
}

impl ReadService for Bells {
    type Command = BellCommand;
    type Input = BellInput;

    fn submit(&mut self, now: Instant, op: OpId, kind: CommandKind) -> Ticket {
        Bells::submit(self, now, op, kind)
    }
    fn cancel(&mut self, now: Instant, ticket: Ticket) {
        Bells::cancel(self, now, ticket);
    }
    fn handle(&mut self, now: Instant, input: BellInput) {
        match input {
            BellInput::Subscribed { channel, ok } => self.handle_subscribed(now, &channel, ok),
            BellInput::Read { ticket, reply } => self.handle_read_reply(now, ticket, reply),
            BellInput::Ring(channel) => self.handle_ring(&channel),
            BellInput::Lost(channels) => self.handle_lost(channels.iter().map(String::as_str)),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        Bells::handle_timeout(self, now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Bells::poll_timeout(self)
    }
    fn poll_command(&mut self) -> Option<BellCommand> {
        Bells::poll_command(self)
    }
    fn poll_answer(&mut self) -> Option<Answer> {
        Bells::poll_answer(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    /// Not subscribed (nor asked).
    No,
    /// `SSUBSCRIBE` is out.
    Asking,
    /// Confirmed.
    Yes,
}

#[derive(Debug)]
struct Channel {
    sub: Sub,
    epoch: u64,
    /// Its reads.
    readers: BTreeSet<Ticket>,
    /// When the last reader left (for the linger).
    idle_since_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for its channel's subscription.
    Subscribing,
    /// A read is out, sent at this epoch.
    Reading { epoch: u64 },
    /// Read empty: waiting for a ring.
    Parked,
}

#[derive(Debug)]
struct Waiting {
    op: OpId,
    /// The read without `BLOCK`.
    kind: CommandKind,
    channel: String,
    deadline_ms: u64,
    state: State,
    cancelled: bool,
}

/// The doorbell readers of one process.
#[derive(Debug, Default)]
pub struct Bells {
    next_ticket: u64,
    reads: HashMap<Ticket, Waiting>,
    /// Every read's deadline.
    deadlines: BTreeSet<(u64, Ticket)>,
    channels: HashMap<String, Channel>,
    /// The end of each channel's linger (no reader left).
    lingering: BTreeSet<(u64, String)>,
    commands: VecDeque<BellCommand>,
    answers: VecDeque<Answer>,
}

impl Bells {
    /// No reader, no subscription.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many reads wait for their answer.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.reads.len()
    }

    /// The channels subscribed (or being subscribed).
    #[must_use]
    pub fn subscribed(&self) -> usize {
        self.channels.values().filter(|c| c.sub != Sub::No).count()
    }

    /// Takes a blocking read (`op`: the reader's op id, given back with the answer); its
    /// deadline is `now` plus its `BLOCK`. Anything but a read is answered at once with an
    /// error reply.
    pub fn submit(&mut self, now: Instant, op: OpId, kind: CommandKind) -> Ticket {
        let now_ms = now.unix_ms();
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        let mut kind = kind;
        let channel = read_bell(&kind).map(str::to_owned);
        let (block, channel) = match (&mut kind, channel) {
            (
                CommandKind::Read { block_ms, .. } | CommandKind::ReadEvents { block_ms, .. },
                Some(channel),
            ) => (block_ms.take().unwrap_or(0), channel),
            _ => {
                self.answers.push_back(Answer {
                    ticket,
                    op,
                    reply: Reply::Value(Value::Error("ERR not a read".into())),
                });
                return ticket;
            }
        };
        let ch = self.channels.entry(channel.clone()).or_insert(Channel {
            sub: Sub::No,
            epoch: 0,
            readers: BTreeSet::new(),
            idle_since_ms: None,
        });
        ch.readers.insert(ticket);
        if let Some(since) = ch.idle_since_ms.take() {
            self.lingering
                .remove(&(since.saturating_add(LINGER_MS), channel.clone()));
        }
        let deadline_ms = now_ms.saturating_add(block);
        self.deadlines.insert((deadline_ms, ticket));
        self.reads.insert(
            ticket,
            Waiting {
                op,
                kind,
                channel,
                deadline_ms,
                state: State::Subscribing,
                cancelled: false,
            },
        );
        self.advance(ticket);
        ticket
    }

    /// Ends the read's wait now: answered nil at once unless its read is out (then with what
    /// that read brings). A read already answered is a no-op.
    pub fn cancel(&mut self, now: Instant, ticket: Ticket) {
        let now_ms = now.unix_ms();
        let Some(w) = self.reads.get_mut(&ticket) else {
            return;
        };
        w.cancelled = true;
        if !matches!(w.state, State::Reading { .. }) {
            self.answer(now_ms, ticket, Reply::Value(Value::Nil));
        }
    }

    /// The outcome of a [`BellCommand::Subscribe`]: confirmed, or failed (nothing is known
    /// to be subscribed: its readers are answered [`Reply::NotSent`], nothing having been
    /// read, and their machines read again after a backoff).
    pub fn handle_subscribed(&mut self, now: Instant, channel: &str, ok: bool) {
        let now_ms = now.unix_ms();
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        if ch.sub != Sub::Asking {
            return;
        }
        ch.sub = if ok { Sub::Yes } else { Sub::No };
        let waiting: Vec<Ticket> = self.readers_of(channel, |s| s == State::Subscribing);
        for t in waiting {
            if ok {
                self.advance(t);
            } else {
                self.answer(now_ms, t, Reply::NotSent);
            }
        }
    }

    /// A ring of `channel`: its parked readers read again.
    pub fn handle_ring(&mut self, channel: &str) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        ch.epoch += 1;
        for t in self.readers_of(channel, |s| s == State::Parked) {
            self.advance(t);
        }
    }

    /// These channels' subscriptions are gone (the connection dropped, the slot moved, the
    /// node was demoted): rings may have been missed, so it counts as a ring, and they are
    /// subscribed again (where the slot lives now).
    pub fn handle_lost<'a>(&mut self, channels: impl IntoIterator<Item = &'a str>) {
        for channel in channels {
            let Some(ch) = self.channels.get_mut(channel) else {
                continue;
            };
            ch.epoch += 1;
            if ch.sub == Sub::Asking {
                // The subscription's answer is still to come.
                continue;
            }
            ch.sub = Sub::No;
            for t in self.readers_of(channel, |s| s == State::Parked) {
                if let Some(w) = self.reads.get_mut(&t) {
                    w.state = State::Subscribing;
                }
                self.advance(t);
            }
        }
    }

    /// Every channel subscribed or being subscribed (for a lost connection of unknown
    /// scope).
    #[must_use]
    pub fn channels(&self) -> Vec<String> {
        self.channels
            .iter()
            .filter(|(_, c)| c.sub != Sub::No)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The reply of a [`BellCommand::Read`].
    pub fn handle_read_reply(&mut self, now: Instant, ticket: Ticket, reply: Reply) {
        let now_ms = now.unix_ms();
        let Some(w) = self.reads.get_mut(&ticket) else {
            return;
        };
        let State::Reading { epoch } = w.state else {
            return;
        };
        // Nothing came: nil (an events read), or a worker's `[nil, 0]` (not paused; a
        // paused queue's answer goes back at once, so that its worker stops waiting).
        let empty = match &reply {
            Reply::Value(Value::Nil) => true,
            Reply::Value(Value::Array(pair)) => pair[..] == [Value::Nil, Value::Int(0)],
            _ => false,
        };
        if !empty || w.cancelled || w.deadline_ms <= now_ms {
            self.answer(now_ms, ticket, reply);
            return;
        }
        let (sub, now_epoch) = self
            .channels
            .get(&w.channel)
            .map_or((Sub::No, epoch), |c| (c.sub, c.epoch));
        if sub == Sub::Yes && now_epoch == epoch {
            w.state = State::Parked;
        } else {
            // Rung meanwhile: read again at once; or the subscription was lost: again first.
            w.state = State::Subscribing;
            self.advance(ticket);
        }
    }

    /// Time passed: parked reads past their deadline are answered (nil); channels idle past
    /// the linger are unsubscribed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now_ms = now.unix_ms();
        let due: Vec<Ticket> = self
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= now_ms)
            .map(|(_, t)| *t)
            .filter(|t| {
                self.reads
                    .get(t)
                    .is_some_and(|w| !matches!(w.state, State::Reading { .. }))
            })
            .collect();
        for t in due {
            self.answer(now_ms, t, Reply::Value(Value::Nil));
        }
        // A channel whose subscription is still being asked for stays until it is answered.
        let idle: Vec<(u64, String)> = self
            .lingering
            .iter()
            .take_while(|(end, _)| *end <= now_ms)
            .filter(|(_, name)| self.channels.get(name).is_none_or(|c| c.sub != Sub::Asking))
            .cloned()
            .collect();
        for (end, name) in idle {
            self.lingering.remove(&(end, name.clone()));
            if let Some(c) = self.channels.remove(&name) {
                if c.sub == Sub::Yes {
                    self.commands.push_back(BellCommand::Unsubscribe(name));
                }
            }
        }
    }

    /// When to call [`Bells::handle_timeout`]: the earliest of [`Bells::timers`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers().next_at()
    }

    /// The doorbells' timers (see [`crate::timers`]): the earliest deadline of a read not
    /// out, and the earliest end of a channel's linger.
    #[must_use]
    pub fn timers(&self) -> Timers<BellTimer> {
        let mut t = Timers::new();
        let read = self.deadlines.iter().find(|(_, t)| {
            self.reads
                .get(t)
                .is_some_and(|w| !matches!(w.state, State::Reading { .. }))
        });
        if let Some((deadline, _)) = read {
            t.set(BellTimer::ReadDeadline, Instant::from_unix_ms(*deadline));
        }
        let linger = self
            .lingering
            .iter()
            .find(|(_, name)| self.channels.get(name).is_none_or(|c| c.sub != Sub::Asking));
        if let Some((end, _)) = linger {
            t.set(BellTimer::Linger, Instant::from_unix_ms(*end));
        }
        t
    }

    /// The next command to send.
    pub fn poll_command(&mut self) -> Option<BellCommand> {
        self.commands.pop_front()
    }

    /// The next answer for a reader.
    pub fn poll_answer(&mut self) -> Option<Answer> {
        self.answers.pop_front()
    }

    fn readers_of(&self, channel: &str, state: impl Fn(State) -> bool) -> Vec<Ticket> {
        self.channels.get(channel).map_or_else(Vec::new, |c| {
            c.readers
                .iter()
                .filter(|t| self.reads.get(t).is_some_and(|w| state(w.state)))
                .copied()
                .collect()
        })
    }

    /// The next step of a read that is not out: read if its channel is subscribed, else
    /// subscribe it (once).
    fn advance(&mut self, ticket: Ticket) {
        let Some(w) = self.reads.get_mut(&ticket) else {
            return;
        };
        let Some(ch) = self.channels.get_mut(&w.channel) else {
            return;
        };
        match ch.sub {
            Sub::Yes => {
                w.state = State::Reading { epoch: ch.epoch };
                self.commands.push_back(BellCommand::Read {
                    ticket,
                    kind: w.kind.clone(),
                });
            }
            Sub::Asking => w.state = State::Subscribing,
            Sub::No => {
                w.state = State::Subscribing;
                ch.sub = Sub::Asking;
                self.commands
                    .push_back(BellCommand::Subscribe(w.channel.clone()));
            }
        }
    }

    fn answer(&mut self, now_ms: u64, ticket: Ticket, reply: Reply) {
        let Some(w) = self.reads.remove(&ticket) else {
            return;
        };
        self.deadlines.remove(&(w.deadline_ms, ticket));
        if let Some(ch) = self.channels.get_mut(&w.channel) {
            ch.readers.remove(&ticket);
            if ch.readers.is_empty() && ch.idle_since_ms.is_none() {
                ch.idle_since_ms = Some(now_ms);
                self.lingering
                    .insert((now_ms.saturating_add(LINGER_MS), w.channel.clone()));
            }
        }
        self.answers.push_back(Answer {
            ticket,
            op: w.op,
            reply,
        });
    }
}

/// One subscription connection's exchange (RESP2, sharded pub/sub only): what was asked of
/// it, in order, and what each value that arrives on it means for the [`Bells`].
///
/// On such a connection replies and pushes share one stream: a ring (`smessage`) may come
/// between a command and its confirmation, and the server may end a subscription on its
/// own (`sunsubscribe` when the slot moved away or the node was demoted). Confirmations and
/// error replies come in the order the commands went, so each one answers the oldest
/// command still waiting for one.
#[derive(Debug, Default)]
pub struct Subscription {
    asked: VecDeque<(bool, String)>,
}

impl Subscription {
    /// Encodes `SSUBSCRIBE channel` into `out`; its outcome comes back as a
    /// [`BellInput::Subscribed`] from [`Subscription::heard`].
    pub fn subscribe(&mut self, out: &mut Vec<u8>, channel: &str) {
        crate::resp::encode_command(out, [&b"SSUBSCRIBE"[..], channel.as_bytes()]);
        self.asked.push_back((true, channel.to_owned()));
    }

    /// Encodes `SUNSUBSCRIBE channel` into `out` (its confirmation means nothing to the
    /// machine, which forgot the channel).
    pub fn unsubscribe(&mut self, out: &mut Vec<u8>, channel: &str) {
        crate::resp::encode_command(out, [&b"SUNSUBSCRIBE"[..], channel.as_bytes()]);
        self.asked.push_back((false, channel.to_owned()));
    }

    /// What `value`, arrived on the connection, means to the machine: a ring, the outcome of
    /// a subscription, a subscription the server ended; `None` for what means nothing (the
    /// confirmation of an unsubscribe, a value of no known shape).
    pub fn heard(&mut self, value: Value) -> Option<BellInput> {
        let items = match value {
            Value::Error(_) => {
                // The oldest command failed (MOVED: the slot lives elsewhere).
                let (subscribe, channel) = self.asked.pop_front()?;
                return subscribe.then_some(BellInput::Subscribed { channel, ok: false });
            }
            Value::Array(items) => items,
            _ => return None,
        };
        let mut items = items.into_iter();
        let (Some(Value::Bulk(kind)), Some(Value::Bulk(channel))) = (items.next(), items.next())
        else {
            return None;
        };
        let channel = String::from_utf8(channel).ok()?;
        match kind.as_slice() {
            b"smessage" => Some(BellInput::Ring(channel)),
            b"ssubscribe" => {
                let at = self.asked.iter().position(|(s, c)| *s && *c == channel)?;
                self.asked.remove(at);
                Some(BellInput::Subscribed { channel, ok: true })
            }
            b"sunsubscribe" => match self.asked.iter().position(|(s, c)| !*s && *c == channel) {
                Some(at) => {
                    self.asked.remove(at);
                    None
                }
                // Not ours: the server ended it.
                None => Some(BellInput::Lost(vec![channel])),
            },
            _ => None,
        }
    }

    /// The connection is gone: the subscriptions still waiting for their confirmation
    /// failed.
    pub fn abandon(&mut self) -> Vec<BellInput> {
        self.asked
            .drain(..)
            .filter(|(subscribe, _)| *subscribe)
            .map(|(_, channel)| BellInput::Subscribed { channel, ok: false })
            .collect()
    }
}

#[cfg(test)]
mod tests;
