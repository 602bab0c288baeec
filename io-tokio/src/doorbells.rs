//! Idle readers woken by doorbells: the IO of the core's [`Bells`] machine, on a Redis
//! Cluster, and on one server with [`crate::IdleReads::Doorbells`].
//!
//! One task per process serves every idle reader of every queue. It holds one subscription
//! connection per primary that has a bell in use (one server: one; datalayer's own
//! connection, RESP2, sharded pub/sub only: `SSUBSCRIBE`, `SUNSUBSCRIBE` and `PING`, nothing else),
//! sends the machine's reads (without `BLOCK`) through the command connections, and feeds
//! back rings (`smessage`), lost subscriptions (`sunsubscribe` from the server when a slot
//! moves or a primary is demoted, a dropped connection) and replies. Every decision is the
//! core's: what each value on a subscription connection means
//! ([`datalayer_core::bells::Subscription`]), what to subscribe, when to read again, when a
//! read ends. So a process holds two connections per primary, however
//! many queues it serves, and no command blocks. A subscription connection silent for the
//! response timeout is sent a `PING`, and replaced when that goes unanswered as long (a
//! half-open connection would otherwise wait for rings forever).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use datalayer_core::bells::{BellCommand, BellInput, Bells, Subscription};
use datalayer_core::cluster::NodeAddr;
use datalayer_core::command::{Command, CommandKind, OpId, Reply};
use datalayer_core::mux::Ticket as BellTicket;
use datalayer_core::naming::hash_slot;
use datalayer_core::value::Value;
use tokio::sync::mpsc;

use crate::blocking::{Blocker, Line, serve};
use crate::cluster::Cluster;
use crate::connection::Conn;
use crate::wire::{Dial, SubLink};

/// Where the task reads and subscribes: the nodes of a cluster, or one server.
#[derive(Clone)]
pub(crate) enum Nodes {
    /// A cluster: each channel on the primary of its slot.
    Cluster(Arc<Cluster>),
    /// One server: reads on the process's command connection, subscriptions on a
    /// connection of their own to the same server.
    Single(Conn),
}

/// The one server's name in the task's tables.
fn single_addr() -> NodeAddr {
    NodeAddr {
        host: String::new(),
        port: 0,
    }
}

impl Nodes {
    fn node_of(&self, channel: &str) -> Option<NodeAddr> {
        match self {
            Nodes::Cluster(c) => c.node_of(hash_slot(channel.as_bytes())),
            Nodes::Single(_) => Some(single_addr()),
        }
    }

    fn refresh_soon(&self) {
        if let Nodes::Cluster(c) = self {
            c.refresh_soon();
        }
    }

    async fn execute(&self, commands: &[Command]) -> Vec<Reply> {
        match self {
            Nodes::Cluster(c) => c.execute(commands).await,
            Nodes::Single(conn) => crate::exec::execute(conn, commands).await,
        }
    }

    /// How to reach the node at `addr`, and how long its connections may stay silent.
    fn dial(&self, addr: &NodeAddr) -> (Dial, Duration) {
        match self {
            Nodes::Cluster(c) => (c.settings().dial(addr), c.settings().response_timeout),
            Nodes::Single(conn) => (conn.dial().clone(), conn.response_timeout()),
        }
    }
}

/// What the task's helpers report back.
enum Ev {
    Read(BellTicket, Reply),
    /// A value from a subscription connection (`None`: the connection is gone).
    Heard(NodeAddr, u64, Option<Value>),
    Connected(NodeAddr, u64, Option<SubLink>),
}

/// A subscription connection: made once per node (generation `gen`), or being made.
enum SubConn {
    Connecting { queued: Vec<String> },
    Up(SubLink, Subscription),
}

/// The IO of the [`Bells`]: subscription connections, reads on the command connections.
struct BellLine {
    nodes: Nodes,
    ev_tx: mpsc::UnboundedSender<Ev>,
    ev_rx: mpsc::UnboundedReceiver<Ev>,
    subs: HashMap<NodeAddr, (u64, SubConn)>,
    /// The node each channel was subscribed on.
    homes: HashMap<String, NodeAddr>,
    generation: u64,
    /// Inputs for the machine found while handling another.
    pending: VecDeque<BellInput>,
}

/// Starts the doorbell task of a cluster, or of one server.
pub(crate) fn start(nodes: Nodes) -> Blocker {
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let line = BellLine {
        nodes,
        ev_tx,
        ev_rx,
        subs: HashMap::new(),
        homes: HashMap::new(),
        generation: 0,
        pending: VecDeque::new(),
    };
    serve(Bells::new(), line, tracing::debug_span!("doorbells"))
}

impl Line for BellLine {
    type S = Bells;

    fn send(&mut self, cmds: Vec<BellCommand>) {
        let mut reads = Vec::new();
        for cmd in cmds {
            match cmd {
                BellCommand::Subscribe(channel) => self.subscribe(channel),
                BellCommand::Unsubscribe(channel) => {
                    if let Some(addr) = self.homes.remove(&channel) {
                        if let Some((_, SubConn::Up(link, sub))) = self.subs.get_mut(&addr) {
                            let mut out = Vec::new();
                            sub.unsubscribe(&mut out, &channel);
                            link.send(out);
                        }
                    }
                }
                BellCommand::Read { ticket, kind } => reads.push((ticket, kind)),
            }
        }
        if !reads.is_empty() {
            self.read(reads);
        }
    }

    async fn next(&mut self) -> BellInput {
        loop {
            if let Some(input) = self.pending.pop_front() {
                return input;
            }
            // `ev_tx` lives in `self`: the channel never closes.
            let Some(ev) = self.ev_rx.recv().await else {
                return std::future::pending().await;
            };
            match ev {
                Ev::Read(ticket, reply) => return BellInput::Read { ticket, reply },
                Ev::Connected(addr, generation, link) => self.connected(addr, generation, link),
                Ev::Heard(addr, generation, value) => self.heard(&addr, generation, value),
            }
        }
    }
}

impl BellLine {
    /// A subscription connection is made (or failed): subscribe what waited for it.
    fn connected(&mut self, addr: NodeAddr, generation: u64, link: Option<SubLink>) {
        let Some((g, sub)) = self.subs.get_mut(&addr) else {
            return;
        };
        if *g != generation {
            return;
        }
        let queued = match sub {
            SubConn::Connecting { queued } => std::mem::take(queued),
            SubConn::Up(..) => return,
        };
        match link {
            Some(link) => {
                let mut subscription = Subscription::default();
                let mut out = Vec::new();
                for channel in &queued {
                    subscription.subscribe(&mut out, channel);
                }
                if !out.is_empty() {
                    link.send(out);
                }
                *sub = SubConn::Up(link, subscription);
            }
            None => {
                self.subs.remove(&addr);
                self.failed(queued);
            }
        }
    }

    /// Subscriptions that could not be asked for: the machine hears they failed.
    fn failed(&mut self, channels: Vec<String>) {
        for channel in channels {
            self.subscribed(channel, false);
        }
    }

    fn subscribed(&mut self, channel: String, ok: bool) {
        if !ok {
            // MOVED (the slot moved), a dead node: where does it live now?
            tracing::debug!(channel, "doorbell subscription failed");
            self.homes.remove(&channel);
            self.nodes.refresh_soon();
        }
        self.pending
            .push_back(BellInput::Subscribed { channel, ok });
    }

    /// A value from a subscription connection (what it means is the core's
    /// [`Subscription::heard`]), or its end.
    fn heard(&mut self, addr: &NodeAddr, generation: u64, value: Option<Value>) {
        if self.subs.get(addr).is_none_or(|(g, _)| *g != generation) {
            return;
        }
        let Some(value) = value else {
            return self.lost(addr);
        };
        let Some((_, SubConn::Up(_, sub))) = self.subs.get_mut(addr) else {
            return;
        };
        match sub.heard(value) {
            Some(BellInput::Subscribed { channel, ok }) => self.subscribed(channel, ok),
            // The server ended a subscription (its slot moved away, the node was demoted):
            // subscribe again where the slot lives now. A channel this task unsubscribed,
            // or moved to another node since, is not lost.
            Some(BellInput::Lost(channels)) => {
                let lost: Vec<String> = channels
                    .into_iter()
                    .filter(|c| self.homes.get(c) == Some(addr))
                    .collect();
                if !lost.is_empty() {
                    for c in &lost {
                        self.homes.remove(c);
                    }
                    self.nodes.refresh_soon();
                    self.pending.push_back(BellInput::Lost(lost));
                }
            }
            Some(input) => self.pending.push_back(input),
            None => {}
        }
    }

    /// The subscription connection to `addr` is gone: every channel on it is lost.
    fn lost(&mut self, addr: &NodeAddr) {
        let Some((_, sub)) = self.subs.remove(addr) else {
            return;
        };
        let lost: Vec<String> = self
            .homes
            .iter()
            .filter(|(_, home)| *home == addr)
            .map(|(c, _)| c.clone())
            .collect();
        for c in &lost {
            self.homes.remove(c);
        }
        tracing::debug!(node = %addr, channels = lost.len(), "doorbell connection lost");
        self.nodes.refresh_soon();
        self.pending.push_back(BellInput::Lost(lost));
        match sub {
            SubConn::Connecting { queued } => self.failed(queued),
            SubConn::Up(_, mut subscription) => self.pending.extend(subscription.abandon()),
        }
    }

    /// The machine's reads, one batch through the command connections.
    fn read(&self, reads: Vec<(BellTicket, CommandKind)>) {
        let nodes = self.nodes.clone();
        let tx = self.ev_tx.clone();
        tokio::spawn(async move {
            let (tickets, commands): (Vec<BellTicket>, Vec<Command>) = reads
                .into_iter()
                .map(|(t, kind)| {
                    (
                        t,
                        Command {
                            op: OpId(t.0),
                            kind,
                            replicas: None,
                        },
                    )
                })
                .unzip();
            let replies = nodes.execute(&commands).await;
            for (t, reply) in tickets.into_iter().zip(replies) {
                let _ = tx.send(Ev::Read(t, reply));
            }
        });
    }

    /// `SSUBSCRIBE channel` on the subscription connection of its slot's node (made first
    /// when there is none).
    fn subscribe(&mut self, channel: String) {
        let Some(addr) = self.nodes.node_of(&channel) else {
            // No node known for its slot yet.
            return self.subscribed(channel, false);
        };
        self.homes.insert(channel.clone(), addr.clone());
        match self.subs.get_mut(&addr) {
            Some((_, SubConn::Up(link, sub))) => {
                let mut out = Vec::new();
                sub.subscribe(&mut out, &channel);
                link.send(out);
            }
            Some((_, SubConn::Connecting { queued })) => queued.push(channel),
            None => {
                self.generation += 1;
                let generation = self.generation;
                self.subs.insert(
                    addr.clone(),
                    (
                        generation,
                        SubConn::Connecting {
                            queued: vec![channel],
                        },
                    ),
                );
                self.connect(addr, generation);
            }
        }
    }

    fn connect(&self, addr: NodeAddr, generation: u64) {
        let (dial, silence) = self.nodes.dial(&addr);
        let tx = self.ev_tx.clone();
        tokio::spawn(async move {
            let heard = {
                let (tx, addr) = (tx.clone(), addr.clone());
                move |value| {
                    let _ = tx.send(Ev::Heard(addr.clone(), generation, value));
                }
            };
            let link = dial
                .subscriber("datalayer-doorbells", silence, heard)
                .await
                .map_err(|e| tracing::warn!(error = %e, node = %addr, "doorbell connection failed"))
                .ok();
            let _ = tx.send(Ev::Connected(addr, generation, link));
        });
    }
}
