//! Redis Cluster facts as data: which node serves a slot (the slot table, from `CLUSTER
//! SLOTS`), what a redirect says (`MOVED`, `ASK`), which slot a command goes to, and the
//! doorbells that wake idle readers on a cluster.
//!
//! The adapter owns one connection per primary and routes each command to the node of its
//! slot; everything it decides with is here, pure and total: a reply of any shape gives a
//! table or a [`ClusterError`], never a panic.
//!
//! **Doorbells.** On one server, idle readers block (`XREADGROUP BLOCK`, merged across
//! queues: [`crate::mux`]). A cluster cannot merge reads of two slots (`CROSSSLOT`, even on
//! one node), and blocking on the command connection would stall it, so there an idle reader
//! waits on its queue's doorbell instead ([`crate::bells`]): a sharded pub/sub channel in the
//! queue's slot, rung (`SPUBLISH`, in the same pipeline, after the command) by every command
//! that may add what the reader waits for ([`rings`]).

use std::fmt;

use crate::command::{CommandKind, Reply};
use crate::value::Value;

/// The number of hash slots.
pub const SLOTS: usize = 16_384;

/// A node's address as the cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    /// Host name or IP.
    pub host: String,
    /// Port (the TLS port on a TLS cluster).
    pub port: u16,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl NodeAddr {
    /// Parses `host:port` (the last colon splits, so an IPv6 host keeps its colons).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let (host, port) = s.rsplit_once(':')?;
        let port = port.parse().ok()?;
        (!host.is_empty()).then(|| Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        })
    }
}

/// Why a `CLUSTER SLOTS` reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The reply is not of `CLUSTER SLOTS`' shape.
    #[error("CLUSTER SLOTS answered something else: {0}")]
    Shape(String),
    /// Redis refused (for instance: cluster support is disabled).
    #[error("CLUSTER SLOTS refused: {0}")]
    Refused(String),
}

/// Which primary serves each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    /// The primaries, each once.
    nodes: Vec<NodeAddr>,
    /// Per slot, its primary's index in `nodes` (`u16::MAX`: no node serves it).
    slots: Vec<u16>,
}

const NONE: u16 = u16::MAX;

impl Default for SlotTable {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            slots: vec![NONE; SLOTS],
        }
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::Status(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Bulk(b) => String::from_utf8(b.clone()).ok(),
        Value::Status(s) => Some(s.clone()),
        _ => None,
    }
}

impl SlotTable {
    /// The table of a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ..],
    /// replicas..], ..]`. `asked` is the node that answered: an empty host (a node that
    /// does not know its own address) means that one's.
    pub fn from_cluster_slots(reply: &Value, asked: &NodeAddr) -> Result<Self, ClusterError> {
        let shape = |what: &str| ClusterError::Shape(what.to_owned());
        let ranges = match reply {
            Value::Array(a) => a,
            Value::Error(e) => return Err(ClusterError::Refused(e.clone())),
            _ => return Err(shape("not an array")),
        };
        let mut table = Self::default();
        for range in ranges {
            let Value::Array(parts) = range else {
                return Err(shape("a range is not an array"));
            };
            let (Some(start), Some(end), Some(Value::Array(primary))) = (
                parts.first().and_then(int),
                parts.get(1).and_then(int),
                parts.get(2),
            ) else {
                return Err(shape("a range lacks start, end or primary"));
            };
            let in_range = |n: i64| usize::try_from(n).ok().filter(|n| *n < SLOTS);
            let (Some(start), Some(end)) = (in_range(start), in_range(end)) else {
                return Err(shape("a slot out of range"));
            };
            let host = primary.first().and_then(text).unwrap_or_default();
            let port = primary
                .get(1)
                .and_then(int)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| shape("a node without a port"))?;
            let host = if host.is_empty() || host == "?" {
                asked.host.clone()
            } else {
                host
            };
            let index = table.index_of(NodeAddr { host, port });
            for slot in start..=end.max(start) {
                if let Some(s) = table.slots.get_mut(slot) {
                    *s = index;
                }
            }
        }
        Ok(table)
    }

    fn index_of(&mut self, addr: NodeAddr) -> u16 {
        match self.nodes.iter().position(|n| *n == addr) {
            Some(i) => u16::try_from(i).unwrap_or(NONE),
            None => {
                self.nodes.push(addr);
                u16::try_from(self.nodes.len() - 1).unwrap_or(NONE)
            }
        }
    }

    /// The primary serving `slot`, if the table knows one.
    #[must_use]
    pub fn node_of(&self, slot: u16) -> Option<&NodeAddr> {
        let i = *self.slots.get(usize::from(slot))?;
        self.nodes.get(usize::from(i))
    }

    /// The primaries that serve at least one slot.
    #[must_use]
    pub fn primaries(&self) -> Vec<&NodeAddr> {
        let mut used = vec![false; self.nodes.len()];
        for &i in &self.slots {
            if let Some(u) = used.get_mut(usize::from(i)) {
                *u = true;
            }
        }
        self.nodes
            .iter()
            .zip(used)
            .filter_map(|(n, u)| u.then_some(n))
            .collect()
    }

    /// Whether every slot has a primary.
    #[must_use]
    pub fn covers_all(&self) -> bool {
        self.slots.iter().all(|&i| i != NONE)
    }

    /// Records a `MOVED`: `slot` is served by `addr` now.
    pub fn moved(&mut self, slot: u16, addr: NodeAddr) {
        let index = self.index_of(addr);
        if let Some(s) = self.slots.get_mut(usize::from(slot)) {
            *s = index;
        }
    }

    /// Whether this table, just read from a node, replaces `best`, the best read so far in
    /// one reading of the layout: any table beats none, then the one that knows more
    /// primaries. (A table that covers every slot ends the reading: ask no further node.)
    #[must_use]
    pub fn beats(&self, best: Option<&SlotTable>) -> bool {
        best.is_none_or(|b| b.primaries().len() < self.primaries().len())
    }

    /// Where a pipeline's invocations go, given each one's slot (`None`: keyless):
    /// the groups of their indexes per node, in order of first appearance (one pipeline
    /// per node). A keyed invocation goes to its slot's primary (`None`: the table knows
    /// none); a keyless one (a `WAIT`, which must follow its command on its connection)
    /// goes with the one before it, and one that starts the pipeline to `first`.
    #[must_use]
    pub fn route(
        &self,
        slots: impl IntoIterator<Item = Option<u16>>,
        first: Option<&NodeAddr>,
    ) -> Vec<(Option<NodeAddr>, Vec<usize>)> {
        let mut groups: Vec<(Option<NodeAddr>, Vec<usize>)> = Vec::new();
        let mut previous = first.cloned();
        for (i, slot) in slots.into_iter().enumerate() {
            if let Some(slot) = slot {
                previous = self.node_of(slot).cloned();
            }
            match groups.iter_mut().find(|(n, _)| *n == previous) {
                Some((_, members)) => members.push(i),
                None => groups.push((previous.clone(), vec![i])),
            }
        }
        groups
    }

    /// Learns from the replies of a pipeline sent to one node: each `MOVED` is recorded;
    /// whether the layout must be read again (a redirect, `CLUSTERDOWN`, `TRYAGAIN`, ...,
    /// or a node that did not answer).
    pub fn learn(&mut self, replies: &[Reply]) -> bool {
        let mut stale = false;
        for reply in replies {
            match reply {
                Reply::Value(Value::Error(e)) if is_topology_error(e) => {
                    if let Some(Redirect::Moved { slot, addr }) = redirect(e) {
                        self.moved(slot, addr);
                    }
                    stale = true;
                }
                Reply::Unknown | Reply::NotSent => stale = true,
                Reply::Value(_) => {}
            }
        }
        stale
    }
}

/// The nodes to ask for the layout, each once, in this order: the primaries the table
/// knows, the other nodes connected to, the seeds.
#[must_use]
pub fn layout_sources<'a>(
    primaries: impl IntoIterator<Item = &'a NodeAddr>,
    connected: impl IntoIterator<Item = &'a NodeAddr>,
    seeds: impl IntoIterator<Item = &'a NodeAddr>,
) -> Vec<NodeAddr> {
    let mut out: Vec<NodeAddr> = Vec::new();
    for addr in primaries.into_iter().chain(connected).chain(seeds) {
        if !out.contains(addr) {
            out.push(addr.clone());
        }
    }
    out
}

/// A redirect: the command did not run on the node it was sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `MOVED <slot> <addr>`: the slot lives on `addr` now.
    Moved {
        /// The slot.
        slot: u16,
        /// Its node.
        addr: NodeAddr,
    },
    /// `ASK <slot> <addr>`: the slot is migrating and this key is on `addr` already.
    Ask {
        /// The slot.
        slot: u16,
        /// The importing node.
        addr: NodeAddr,
    },
}

/// The redirect an error reply carries, if it is one.
#[must_use]
pub fn redirect(error: &str) -> Option<Redirect> {
    let mut words = error.split(' ');
    let kind = words.next()?;
    let slot = words
        .next()?
        .parse()
        .ok()
        .filter(|s| usize::from(*s) < SLOTS)?;
    let addr = NodeAddr::parse(words.next()?)?;
    match kind {
        "MOVED" => Some(Redirect::Moved { slot, addr }),
        "ASK" => Some(Redirect::Ask { slot, addr }),
        _ => None,
    }
}

/// Whether an error reply tells that the cluster's layout changed under the command (it did
/// not run): the slot table should be read again.
#[must_use]
pub fn is_topology_error(error: &str) -> bool {
    let code = error.split(' ').next().unwrap_or_default();
    matches!(
        code,
        "MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN" | "READONLY" | "MASTERDOWN"
    )
}

/// The doorbell channel an idle blocking read of `kind` waits on: its queue's jobs bell for
/// a worker's read, events bell for a producer's.
#[must_use]
pub fn read_bell(kind: &CommandKind) -> Option<&str> {
    match kind {
        CommandKind::Read { keys, .. } => Some(&keys.bell_jobs),
        CommandKind::ReadEvents { keys, .. } => Some(&keys.bell_events),
        _ => None,
    }
}

/// The doorbells to ring after `kind` ran: every channel whose readers may find something
/// new. Jobs: what may add to the work stream (adds, retries due now, promotions by the
/// upkeep, revived dead letters, a delayed job run now). Events: the settles (each may write
/// an outcome). A bell rung for nothing costs a reader one read, never a missed entry.
#[must_use]
pub fn rings(kind: &CommandKind) -> (Option<&str>, Option<&str>) {
    match kind {
        CommandKind::Enqueue { keys, .. }
        | CommandKind::Promote { keys, .. }
        | CommandKind::Reclaim { keys, .. }
        | CommandKind::Revive { keys, .. }
        | CommandKind::DelayedJob { keys, .. } => (Some(&keys.bell_jobs), None),
        CommandKind::Retry { keys, .. } => (Some(&keys.bell_jobs), Some(&keys.bell_events)),
        CommandKind::Complete { keys, .. } | CommandKind::Bury { keys, .. } => {
            (None, Some(&keys.bell_events))
        }
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::{QueueKeys, hash_slot};
    use std::sync::Arc;

    fn bulk(s: &str) -> Value {
        Value::Bulk(s.as_bytes().to_vec())
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![bulk(host), Value::Int(port), bulk("id")])
    }

    #[test]
    fn a_cluster_slots_reply_maps_every_slot() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("", 7001)]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("127.0.0.1", 7002),
            ]),
        ]);
        let asked = NodeAddr::parse("127.0.0.1:7000").unwrap();
        let mut t = SlotTable::from_cluster_slots(&reply, &asked).unwrap();
        assert!(t.covers_all());
        assert_eq!(t.primaries().len(), 3);
        assert_eq!(t.node_of(0).unwrap().port, 7000);
        assert_eq!(t.node_of(6000).unwrap().to_string(), "127.0.0.1:7001");
        assert_eq!(t.node_of(16383).unwrap().port, 7002);
        t.moved(0, NodeAddr::parse("127.0.0.1:7003").unwrap());
        assert_eq!(t.node_of(0).unwrap().port, 7003);
        assert_eq!(t.primaries().len(), 4);
    }

    #[test]
    fn bad_replies_are_errors_not_panics() {
        let asked = NodeAddr::parse("h:1").unwrap();
        for bad in [
            Value::Nil,
            Value::Error("ERR This instance has cluster support disabled".into()),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(99_999),
                node("h", 1),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(-1),
                Value::Int(3),
                node("h", 1),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(3),
                node("h", 70_000),
            ])]),
        ] {
            assert!(
                SlotTable::from_cluster_slots(&bad, &asked).is_err(),
                "{bad:?}"
            );
        }
        // An end before its start maps the start only; an empty reply maps nothing.
        let t = SlotTable::from_cluster_slots(&Value::Array(vec![]), &asked).unwrap();
        assert!(!t.covers_all() && t.node_of(5).is_none());
    }

    #[test]
    fn redirects_are_read() {
        assert_eq!(
            redirect("MOVED 3999 127.0.0.1:6381"),
            Some(Redirect::Moved {
                slot: 3999,
                addr: NodeAddr::parse("127.0.0.1:6381").unwrap()
            })
        );
        assert!(matches!(
            redirect("ASK 1 [::1]:7000"),
            Some(Redirect::Ask { slot: 1, addr }) if addr.host == "::1"
        ));
        for other in [
            "MOVED",
            "MOVED x h:1",
            "MOVED 16384 h:1",
            "ERR x",
            "ASK 1 h",
        ] {
            assert_eq!(redirect(other), None, "{other}");
        }
        assert!(is_topology_error("CLUSTERDOWN The cluster is down"));
        assert!(!is_topology_error("NOSCRIPT No matching script"));
    }

    #[test]
    fn bells_live_in_their_queues_slot() {
        let keys = Arc::new(QueueKeys::new("dl", "irc").unwrap());
        let slot = hash_slot(keys.jobs.as_bytes());
        assert_eq!(hash_slot(keys.bell_jobs.as_bytes()), slot);
        assert_eq!(hash_slot(keys.bell_events.as_bytes()), slot);
        let read = CommandKind::Read {
            keys: keys.clone(),
            consumer: "c".into(),
            count: 1,
            block_ms: Some(5),
        };
        assert_eq!(read_bell(&read), Some(keys.bell_jobs.as_str()));
        let enqueue = CommandKind::Enqueue {
            keys: keys.clone(),
            now_ms: 0,
            marker: "w".into(),
            jobs: vec![],
            fresh: true,
            register_until_ms: None,
        };
        assert_eq!(rings(&enqueue), (Some(keys.bell_jobs.as_str()), None));
        assert_eq!(rings(&CommandKind::Ping), (None, None));
    }
}

#[cfg(test)]
mod routing_tests {
    use super::*;

    fn addr(port: u16) -> NodeAddr {
        NodeAddr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    /// Slots 0..=8191 on port 1, 8192..=16383 on port 2.
    fn halves() -> SlotTable {
        let range = |start: i64, end: i64, port: i64| {
            Value::Array(vec![
                Value::Int(start),
                Value::Int(end),
                Value::Array(vec![Value::Bulk(b"127.0.0.1".to_vec()), Value::Int(port)]),
            ])
        };
        let reply = Value::Array(vec![range(0, 8191, 1), range(8192, 16383, 2)]);
        SlotTable::from_cluster_slots(&reply, &addr(1)).unwrap()
    }

    #[test]
    fn a_pipeline_is_split_per_node_and_keyless_commands_follow_the_one_before() {
        let t = halves();
        let slots = [None, Some(10), None, Some(9000), Some(11), None];
        let groups = t.route(slots, Some(&addr(3)));
        assert_eq!(
            groups,
            vec![
                (Some(addr(3)), vec![0]),
                (Some(addr(1)), vec![1, 2, 4, 5]),
                (Some(addr(2)), vec![3]),
            ]
        );
        // A slot the table has no node for is its own group, with no node.
        let empty = SlotTable::default();
        assert_eq!(empty.route([Some(1), None], None), vec![(None, vec![0, 1])]);
    }

    #[test]
    fn replies_teach_the_table_and_say_when_to_read_it_again() {
        let mut t = halves();
        let ok = Reply::Value(Value::Int(1));
        assert!(!t.learn(&[ok.clone(), Reply::Value(Value::Error("ERR x".into()))]));
        let moved = Reply::Value(Value::Error("MOVED 10 127.0.0.1:2".into()));
        assert!(t.learn(&[ok.clone(), moved]));
        assert_eq!(t.node_of(10), Some(&addr(2)));
        let ask = Reply::Value(Value::Error("ASK 11 127.0.0.1:2".into()));
        assert!(t.learn(&[ask]));
        assert_eq!(t.node_of(11), Some(&addr(1)), "an ASK moves nothing");
        assert!(t.learn(&[Reply::Unknown]));
        assert!(t.learn(&[Reply::NotSent]));
        assert!(t.learn(&[Reply::Value(Value::Error("CLUSTERDOWN".into()))]));
    }

    #[test]
    fn the_reading_keeps_the_table_that_knows_more_primaries() {
        let two = halves();
        let mut one = SlotTable::default();
        one.moved(0, addr(1));
        assert!(one.beats(None));
        assert!(two.beats(Some(&one)));
        assert!(!one.beats(Some(&two)));
        assert!(!two.beats(Some(&two)), "a tie keeps the first");
        let sources = layout_sources(
            &[addr(1), addr(2)],
            &[addr(2), addr(4)],
            &[addr(4), addr(5)],
        );
        assert_eq!(sources, vec![addr(1), addr(2), addr(4), addr(5)]);
    }
}
