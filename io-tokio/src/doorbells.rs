//! Idle readers woken by doorbells: the IO of the core's [`Bells`] machine, on a Redis
//! Cluster, and on one server with [`crate::IdleReads::Doorbells`].
//!
//! One task per process serves every idle reader of every queue. It holds one subscription
//! connection per primary that has a bell in use (one server: one) (RESP3, sharded pub/sub only: `SSUBSCRIBE`
//! and `SUNSUBSCRIBE`, nothing else, so that a push from the server cannot be taken for the
//! reply of another command), sends the machine's reads (without `BLOCK`) through the
//! cluster's command connections, and feeds back rings (`smessage`), lost subscriptions
//! (`sunsubscribe` from the server when a slot moves or a primary is demoted, a dropped
//! connection) and replies. Every decision is the machine's: what to subscribe, when to
//! read again, when a read ends. So a process holds two connections per primary, however
//! many queues it serves, and no command blocks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datalayer_core::bells::{BellCommand, BellInput, Bells};
use datalayer_core::cluster::NodeAddr;
use datalayer_core::command::{Command, CommandKind, OpId, Reply};
use datalayer_core::mux::Ticket as BellTicket;
use datalayer_core::naming::hash_slot;
use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind};
use tokio::sync::mpsc;

use crate::blocking::{Blocker, Line, serve};
use crate::cluster::Cluster;
use crate::connection::Conn;

/// Where the task reads and subscribes: the nodes of a cluster, or one server.
#[derive(Clone)]
pub(crate) enum Nodes {
    /// A cluster: each channel on the primary of its slot.
    Cluster(Arc<Cluster>),
    /// One server: reads on the process's command connection, subscriptions on a
    /// connection of their own made with `client`.
    Single {
        conn: Conn,
        client: Arc<redis::Client>,
        connect_timeout: Duration,
        response_timeout: Duration,
    },
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
            Nodes::Single { .. } => Some(single_addr()),
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
            Nodes::Single { conn, .. } => crate::exec::execute(conn, commands).await,
        }
    }

    /// A subscription connection to `addr`, its pushes to `pushes`.
    async fn subscriber(
        &self,
        addr: &NodeAddr,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> Option<MultiplexedConnection> {
        let (client, connect, response) = match self {
            Nodes::Cluster(c) => {
                let s = c.settings();
                (s.client(addr).ok()?, s.connect_timeout, s.response_timeout)
            }
            Nodes::Single {
                client,
                connect_timeout,
                response_timeout,
                ..
            } => (client.as_ref().clone(), *connect_timeout, *response_timeout),
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(response))
            .set_push_sender(pushes);
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| tracing::warn!(error = %e, node = %addr, "doorbell connection failed"))
            .ok()
    }
}

/// What the task's helpers report back.
enum Ev {
    Subscribed(String, bool),
    Read(BellTicket, Reply),
    Push(NodeAddr, u64, PushInfo),
    Connected(NodeAddr, u64, Option<MultiplexedConnection>),
}

/// A subscription connection: made once per node (generation `gen`), or being made.
enum SubConn {
    Connecting { queued: Vec<String> },
    Up(MultiplexedConnection),
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
                        if let Some((_, SubConn::Up(c))) = self.subs.get(&addr) {
                            let c = c.clone();
                            self.subscribe_on(&c, channel, "SUNSUBSCRIBE");
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
            // `ev_tx` lives in `self`: the channel never closes.
            let Some(ev) = self.ev_rx.recv().await else {
                return std::future::pending().await;
            };
            match ev {
                Ev::Subscribed(channel, ok) => {
                    if !ok {
                        // MOVED (the slot moved), a dead node: where does it live now?
                        self.homes.remove(&channel);
                        self.nodes.refresh_soon();
                    }
                    return BellInput::Subscribed { channel, ok };
                }
                Ev::Read(ticket, reply) => return BellInput::Read { ticket, reply },
                Ev::Connected(addr, generation, conn) => self.connected(addr, generation, conn),
                Ev::Push(addr, generation, push) => {
                    if let Some(input) = self.push(&addr, generation, push) {
                        return input;
                    }
                }
            }
        }
    }
}

impl BellLine {
    /// A subscription connection is made (or failed): subscribe what waited for it.
    fn connected(&mut self, addr: NodeAddr, generation: u64, conn: Option<MultiplexedConnection>) {
        let Some((g, sub)) = self.subs.get_mut(&addr) else {
            return;
        };
        if *g != generation {
            return;
        }
        let queued = match sub {
            SubConn::Connecting { queued } => std::mem::take(queued),
            SubConn::Up(_) => return,
        };
        match conn {
            Some(c) => {
                *sub = SubConn::Up(c.clone());
                for channel in queued {
                    self.subscribe_on(&c, channel, "SSUBSCRIBE");
                }
            }
            None => {
                self.subs.remove(&addr);
                for channel in queued {
                    let _ = self.ev_tx.send(Ev::Subscribed(channel, false));
                }
            }
        }
    }

    /// A push from a subscription connection: a ring, a lost subscription.
    fn push(&mut self, addr: &NodeAddr, generation: u64, push: PushInfo) -> Option<BellInput> {
        let current = self.subs.get(addr).is_some_and(|(g, _)| *g == generation);
        match push.kind {
            PushKind::SMessage => push
                .data
                .first()
                .and_then(channel_name)
                .map(BellInput::Ring),
            // The server ended a subscription (its slot moved away, the node was demoted):
            // subscribe again where the slot lives now. Our own unsubscribes come here too;
            // the machine has forgotten those channels, so they change nothing.
            PushKind::SUnsubscribe if current => {
                let channel = push.data.first().and_then(channel_name)?;
                if self.homes.get(&channel) != Some(addr) {
                    return None;
                }
                self.homes.remove(&channel);
                self.nodes.refresh_soon();
                Some(BellInput::Lost(vec![channel]))
            }
            PushKind::Disconnection if current => {
                self.subs.remove(addr);
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
                Some(BellInput::Lost(lost))
            }
            _ => None,
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
            self.nodes.refresh_soon();
            let _ = self.ev_tx.send(Ev::Subscribed(channel, false));
            return;
        };
        self.homes.insert(channel.clone(), addr.clone());
        match self.subs.get_mut(&addr) {
            Some((_, SubConn::Up(c))) => {
                let c = c.clone();
                self.subscribe_on(&c, channel, "SSUBSCRIBE");
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
        let nodes = self.nodes.clone();
        let tx = self.ev_tx.clone();
        tokio::spawn(async move {
            let (push_tx, mut push_rx) = mpsc::unbounded_channel::<PushInfo>();
            let conn = nodes.subscriber(&addr, push_tx).await;
            let up = conn.is_some();
            let _ = tx.send(Ev::Connected(addr.clone(), generation, conn));
            if up {
                while let Some(push) = push_rx.recv().await {
                    if tx.send(Ev::Push(addr.clone(), generation, push)).is_err() {
                        return;
                    }
                }
            }
        });
    }

    /// One `SSUBSCRIBE` or `SUNSUBSCRIBE` on `conn`; a subscription's outcome goes back to
    /// the machine (its reply must be the confirmation of that channel).
    fn subscribe_on(&self, conn: &MultiplexedConnection, channel: String, verb: &'static str) {
        let mut conn = conn.clone();
        let tx = self.ev_tx.clone();
        tokio::spawn(async move {
            let reply = redis::cmd(verb)
                .arg(&channel)
                .query_async::<redis::Value>(&mut conn)
                .await;
            if verb != "SSUBSCRIBE" {
                return;
            }
            let ok = match &reply {
                Ok(redis::Value::Push { kind, data }) => {
                    *kind == PushKind::SSubscribe
                        && data.first().and_then(channel_name).as_deref() == Some(&channel)
                }
                _ => false,
            };
            if !ok {
                tracing::debug!(?reply, channel, "doorbell subscription failed");
            }
            let _ = tx.send(Ev::Subscribed(channel, ok));
        });
    }
}

fn channel_name(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
