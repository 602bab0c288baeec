//! A Redis Cluster: one command connection per primary, and the routing of each pipeline
//! to the node of its slot.
//!
//! Each node's connection is a [`Conn`] (reconnect with backoff, fencing, desync checks: the
//! same as on one server). Each invocation of a pipeline goes to the node the slot table
//! names for its slot ([`Invocation::slot`]; an engine's pipelines are of one queue, so of
//! one slot), one pipeline per node. Nothing is retried here: a redirect (`MOVED`, `ASK`), `TRYAGAIN` or
//! `CLUSTERDOWN` is an error reply to the engine, which sends again after a backoff (every
//! command it sends is safe to send again); a failed node is an unknown outcome. Either
//! way the slot table is read again (`CLUSTER SLOTS`, from any node that answers, the seeds
//! last), at most one reading at a time, so the resend goes where the slot lives now.
//! redis-rs's own cluster client is not used: it re-sends whole pipelines on redirects and
//! timeouts, which would run a fresh add's unchecked transaction twice.
//!
//! Which node each invocation goes to, what a reply teaches the table, which table a
//! reading keeps: the core's [`SlotTable`] decides ([`SlotTable::route`],
//! [`SlotTable::learn`], [`SlotTable::beats`]); this module owns the connections.
//!
//! Doorbells: a command that may add what an idle reader waits for is followed, in the
//! same pipeline, by `SPUBLISH` of the bell the core names ([`cluster::rings`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use datalayer_core::cluster::{self, NodeAddr, SlotTable};
use datalayer_core::command::{Command, Reply};
use datalayer_core::scripts::Invocation;

use crate::connection::Conn;
use crate::exec;
use crate::options::RedisError;
use crate::wire::Dial;

/// The settings every node connection is made with.
#[derive(Clone)]
pub(crate) struct NodeSettings {
    /// The first seed's (user, password, database, TLS): a node's is this at the node's
    /// address.
    pub(crate) base: Dial,
    pub(crate) response_timeout: Duration,
    pub(crate) max_reconnect_delay: Duration,
}

impl NodeSettings {
    /// How to open connections to the node at `addr`.
    pub(crate) fn dial(&self, addr: &NodeAddr) -> Dial {
        self.base.at(&addr.host, addr.port)
    }
}

/// The cluster: its slot table and a connection per node.
pub(crate) struct Cluster {
    settings: NodeSettings,
    seeds: Vec<NodeAddr>,
    table: Mutex<SlotTable>,
    nodes: Mutex<HashMap<NodeAddr, Conn>>,
    /// Held while the table is read again; the time the last reading ended.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
}

/// Readings of the table closer together than this are one.
const REFRESH_GAP: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cluster {
    /// Reads the slot table from the seeds; fails when none answers with one.
    pub(crate) async fn connect(
        settings: NodeSettings,
        seeds: Vec<NodeAddr>,
    ) -> Result<Arc<Self>, RedisError> {
        let cluster = Arc::new(Self {
            settings,
            seeds,
            table: Mutex::new(SlotTable::default()),
            nodes: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(None),
        });
        cluster.refresh(true).await?;
        Ok(cluster)
    }

    /// The connection to `addr` (made on first use; it connects when a command needs it).
    pub(crate) fn conn(&self, addr: &NodeAddr) -> Conn {
        let mut nodes = lock(&self.nodes);
        if let Some(c) = nodes.get(addr) {
            return c.clone();
        }
        let s = &self.settings;
        let conn = Conn::lazy(s.dial(addr), s.response_timeout, s.max_reconnect_delay);
        nodes.insert(addr.clone(), conn.clone());
        conn
    }

    /// The settings of node connections (the doorbells' connections are made with them).
    pub(crate) fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// The primary serving `slot`, as far as the table knows.
    pub(crate) fn node_of(&self, slot: u16) -> Option<NodeAddr> {
        lock(&self.table).node_of(slot).cloned()
    }

    /// The primaries the table knows now.
    fn known_primaries(&self) -> Vec<NodeAddr> {
        lock(&self.table).primaries().into_iter().cloned().collect()
    }

    /// Every primary (the table read again first when it knows none).
    pub(crate) async fn primaries(&self) -> Vec<NodeAddr> {
        let known = self.known_primaries();
        if !known.is_empty() {
            return known;
        }
        let _ = self.refresh(true).await;
        self.known_primaries()
    }

    /// Reads the slot table again, from the nodes known and then the seeds; the first
    /// complete table wins (else the most complete). `force`: even right after another
    /// reading.
    pub(crate) async fn refresh(&self, force: bool) -> Result<(), RedisError> {
        let mut last = self.refreshing.lock().await;
        if !force && last.is_some_and(|at| at.elapsed() < REFRESH_GAP) {
            return Ok(());
        }
        let candidates = {
            let (table, nodes) = (lock(&self.table), lock(&self.nodes));
            cluster::layout_sources(table.primaries(), nodes.keys(), &self.seeds)
        };
        let mut best: Option<SlotTable> = None;
        let mut error = None;
        let ask = Invocation::Plain(vec![Cow::Borrowed(b"CLUSTER"), Cow::Borrowed(b"SLOTS")]);
        for addr in candidates {
            let conn = self.conn(&addr);
            match exec::run_one(&conn, &ask).await {
                Ok(reply) => match SlotTable::from_cluster_slots(&reply, &addr) {
                    Ok(t) if t.covers_all() => {
                        best = Some(t);
                        break;
                    }
                    Ok(t) if t.beats(best.as_ref()) => best = Some(t),
                    Ok(_) => {}
                    Err(e) => error = Some(RedisError::Reply(format!("not a cluster: {e}"))),
                },
                Err(e) => error = Some(e),
            }
        }
        *last = Some(Instant::now());
        match best {
            Some(t) if !t.primaries().is_empty() => {
                tracing::debug!(primaries = t.primaries().len(), "cluster slot table read");
                *lock(&self.table) = t;
                Ok(())
            }
            _ => {
                Err(error.unwrap_or_else(|| RedisError::NotSent("no cluster node answered".into())))
            }
        }
    }

    /// Reads the table again in the background (a failed node, a redirect).
    pub(crate) fn refresh_soon(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.refresh(false).await {
                tracing::warn!(error = %e, "reading the cluster's slot table failed");
            }
        });
    }

    /// Runs the engine's commands, each followed by its `WAIT` (when it asks for replicas)
    /// and the doorbells it rings.
    pub(crate) async fn execute(self: &Arc<Self>, commands: &[Command]) -> Vec<Reply> {
        let plan = datalayer_core::pipeline::Plan::new(commands, true);
        let replies = self.run(&plan.invocations).await;
        plan.judge(replies)
    }

    /// Runs `invocations`, each on the node of its slot (one pipeline per node, in order of
    /// first appearance): one reply per invocation, in order. A keyless invocation goes
    /// with the one before it (a `WAIT` must follow its command on its connection); one
    /// that starts the pipeline, on any primary.
    pub(crate) async fn run(self: &Arc<Self>, invocations: &[Invocation<'_>]) -> Vec<Reply> {
        let first = match invocations.first() {
            Some(inv) if inv.slot().is_none() => self.primaries().await.into_iter().next(),
            _ => None,
        };
        let groups =
            lock(&self.table).route(invocations.iter().map(Invocation::slot), first.as_ref());
        let mut replies = vec![Reply::NotSent; invocations.len()];
        for (node, members) in groups {
            let part: Vec<&Invocation<'_>> = members.iter().map(|i| &invocations[*i]).collect();
            let got = match node {
                Some(addr) => self.run_on(&addr, &part).await,
                None => {
                    self.refresh_soon();
                    vec![Reply::NotSent; part.len()]
                }
            };
            for (i, reply) in members.into_iter().zip(got) {
                replies[i] = reply;
            }
        }
        replies
    }

    /// Invocations on one node, as one pipeline; a redirect, a failed node or a cluster in
    /// trouble has the slot table read again.
    async fn run_on(self: &Arc<Self>, addr: &NodeAddr, part: &[&Invocation<'_>]) -> Vec<Reply> {
        let replies = exec::run_refs(&self.conn(addr), part).await;
        let stale = lock(&self.table).learn(&replies);
        if stale {
            self.refresh_soon();
        }
        replies
    }
}
