//! A deterministic in-memory model of the Redis Streams that datalayer uses.
//!
//! [`Sim`] executes the command plan ([`CommandKind`]) with Redis' semantics (those of
//! [`crate::scripts`]): streams with entry ids from the model's clock, consumer groups,
//! pending lists with owners, delivery counts and idle times, XAUTOCLAIM cursors, XDEL,
//! sorted sets and hashes; empty hashes and sorted sets vanish as in Redis; keys with a
//! time to live expire on the model's clock (the credentials store's, [`Sim::invoke`]).
//! `Network` (feature `test-util`) puts faults between a machine and the model: a command
//! lost before it ran, or a reply lost after it ran (both are
//! [`crate::command::Reply::Unknown`] to the machine). Crashing a consumer is dropping
//! its machine (its pending entries stay in the model); jumping the clock is
//! [`Sim::set_time`].

pub(crate) mod credentials;
pub(crate) mod exec;
mod stream;
#[cfg(feature = "test-util")]
pub mod world;

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use stream::{AutoClaim, Group, Pending, Stream};

use crate::command::CommandKind;
#[cfg(feature = "test-util")]
use crate::command::{Command, Reply};
#[cfg(feature = "test-util")]
use crate::random::{Random, SeededRandom};
use crate::value::{EntryId, Fields, Value};

/// A sorted set: members by score, ordered by (score, member) as in Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZSet {
    scores: BTreeMap<Vec<u8>, u64>,
    order: BTreeSet<(u64, Vec<u8>)>,
}

impl ZSet {
    /// ZADD one member.
    pub fn add(&mut self, score: u64, member: &[u8]) {
        if let Some(old) = self.scores.insert(member.to_vec(), score) {
            self.order.remove(&(old, member.to_vec()));
        }
        self.order.insert((score, member.to_vec()));
    }

    /// ZREM one member; whether it was there.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        match self.scores.remove(member) {
            Some(score) => self.order.remove(&(score, member.to_vec())),
            None => false,
        }
    }

    /// Members with a score at most `max`, lowest first, at most `limit`.
    #[must_use]
    pub fn range_to(&self, max: u64, limit: usize) -> Vec<Vec<u8>> {
        self.order
            .iter()
            .take_while(|(s, _)| *s <= max)
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// ZREMRANGEBYSCORE -inf (min: the members scored below `min` go.
    pub fn remove_below(&mut self, min: u64) {
        while let Some((score, member)) = self.order.first().cloned() {
            if score >= min {
                break;
            }
            self.order.pop_first();
            self.scores.remove(&member);
        }
    }

    /// Every member, lowest score first (ZRANGE 0 -1).
    #[must_use]
    pub fn members(&self) -> Vec<Vec<u8>> {
        self.order.iter().map(|(_, m)| m.clone()).collect()
    }

    /// The score of `member`, if it is in the set.
    #[must_use]
    pub fn score(&self, member: &[u8]) -> Option<u64> {
        self.scores.get(member).copied()
    }

    /// Whether `member` is in the set.
    #[must_use]
    pub fn contains(&self, member: &[u8]) -> bool {
        self.scores.contains_key(member)
    }

    /// The lowest score.
    #[must_use]
    pub fn first_score(&self) -> Option<u64> {
        self.order.first().map(|(s, _)| *s)
    }

    /// ZCARD.
    #[must_use]
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

/// A hash: field → value.
pub type Hash = BTreeMap<Vec<u8>, Vec<u8>>;

/// A value in the model's keyspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// A stream.
    Stream(Stream),
    /// A hash.
    Hash(Hash),
    /// A sorted set.
    ZSet(ZSet),
}

/// The model: a keyspace and a clock.
#[derive(Debug, Clone, Default)]
pub struct Sim {
    pub(crate) now_ms: u64,
    db: HashMap<String, Data>,
    /// Keys with a time to live: when they expire (ms; gone once the clock is past it).
    expires: HashMap<String, u64>,
    executed: u64,
    /// Whether a read that gets nothing makes its consumer one of the group's (Redis 7.2
    /// and later; 7.0 does so only when it delivers something).
    pub(crate) consumers_on_any_read: bool,
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

impl Sim {
    /// An empty keyspace at time `now`.
    #[must_use]
    pub fn new(now: crate::time::Instant) -> Self {
        Self {
            now_ms: now.unix_ms(),
            ..Self::default()
        }
    }

    /// Behave as Redis 7.2 and later do (`true`) or as 7.0 does (`false`, the default):
    /// since 7.2 every `XREADGROUP` makes its consumer one of the group's, even a read that
    /// gets nothing (or blocks); 7.0 makes it one only when it delivers an entry. The
    /// engine does not depend on it (the upkeep removes consumers of gone workers either
    /// way); the differential test sets it from the server's version.
    pub fn set_consumers_on_any_read(&mut self, on: bool) {
        self.consumers_on_any_read = on;
    }

    /// The model's clock; new entry ids come from it.
    #[must_use]
    pub fn now(&self) -> crate::time::Instant {
        crate::time::Instant::from_unix_ms(self.now_ms)
    }

    /// Drops `key` as a failover can: its writes never reached the replica that took over
    /// (`test-util`).
    #[cfg(feature = "test-util")]
    pub fn lose(&mut self, key: &str) -> bool {
        self.remove(key)
    }

    /// Sets the clock; it may jump forward or back (ids stay increasing, as in Redis).
    pub fn set_time(&mut self, now: crate::time::Instant) {
        self.now_ms = now.unix_ms();
    }

    /// How many commands ran.
    #[must_use]
    pub fn executed(&self) -> u64 {
        self.executed
    }

    /// Runs one command and returns Redis' reply.
    pub fn execute(&mut self, kind: &CommandKind) -> Value {
        self.executed += 1;
        self.expire_due();
        exec::run(self, kind).unwrap_or_else(Value::Error)
    }

    /// Runs the pause check of workers' reads ([`crate::scripts::pause_check`]): EXEC's
    /// array, `EXISTS` of each read's queue's pause.
    pub fn execute_pause_check(&mut self, reads: &[CommandKind]) -> Value {
        self.executed += 1;
        Value::Array(
            reads
                .iter()
                .map(|r| match r {
                    CommandKind::Read { keys, .. } => {
                        Value::Int(i64::from(self.exists(&keys.paused)))
                    }
                    _ => Value::Error("ERR not a worker's read".into()),
                })
                .collect(),
        )
    }

    /// Runs a merged blocking read ([`crate::scripts::merged_read`] of `reads`) as Redis
    /// runs it, without blocking: every stream's group is checked first (`NOGROUP` before
    /// anything is read), then each stream is read with the command's `COUNT` (the least of
    /// the reads'); the reply names the streams that had entries, nil if none had.
    pub fn execute_merged(&mut self, reads: &[CommandKind]) -> Value {
        let count = reads
            .iter()
            .filter_map(|r| match r {
                CommandKind::Read { count, .. } | CommandKind::ReadEvents { count, .. } => {
                    Some(*count)
                }
                _ => None,
            })
            .min()
            .unwrap_or(1);
        for r in reads {
            if let CommandKind::Read { keys, .. } = r {
                let grouped = self
                    .stream(&keys.jobs)
                    .is_some_and(|s| s.groups.contains_key(crate::naming::GROUP));
                if !grouped {
                    self.executed += 1;
                    return Value::Error(exec::nogroup(&keys.jobs, "XREADGROUP with GROUP option"));
                }
            }
        }
        let mut parts = Vec::new();
        for r in reads {
            let mut r = r.clone();
            match &mut r {
                CommandKind::Read {
                    count: c, block_ms, ..
                }
                | CommandKind::ReadEvents {
                    count: c, block_ms, ..
                } => {
                    *c = count;
                    *block_ms = None;
                }
                _ => return Value::Error("ERR not a read".into()),
            }
            let reply = match &r {
                CommandKind::Read {
                    keys,
                    consumer,
                    count,
                    ..
                } => {
                    self.executed += 1;
                    exec::read_group(self, keys, consumer, *count).unwrap_or_else(Value::Error)
                }
                _ => self.execute(&r),
            };
            match reply {
                Value::Array(a) => parts.extend(a),
                Value::Nil => {}
                other => return other,
            }
        }
        if parts.is_empty() {
            Value::Nil
        } else {
            Value::Array(parts)
        }
    }

    /// The key names, sorted.
    #[must_use]
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.db.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    /// The value of a key.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Data> {
        self.db.get(key)
    }

    /// The value of a key, to change (as an attacker or a bug would).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Data> {
        self.db.get_mut(key)
    }

    /// The stream at `key`, if it is one.
    #[must_use]
    pub fn stream(&self, key: &str) -> Option<&Stream> {
        match self.db.get(key) {
            Some(Data::Stream(s)) => Some(s),
            _ => None,
        }
    }

    /// XADD of arbitrary fields (to write garbage, as an attacker or a bug would).
    pub fn xadd_raw(&mut self, key: &str, fields: Fields) -> Result<EntryId, String> {
        let now = self.now_ms;
        Ok(self
            .stream_mut(key, true)?
            .map_or(EntryId::ZERO, |s| s.add(now, fields)))
    }

    pub(crate) fn stream_mut(
        &mut self,
        key: &str,
        create: bool,
    ) -> Result<Option<&mut Stream>, String> {
        if create && !self.db.contains_key(key) {
            self.db
                .insert(key.to_owned(), Data::Stream(Stream::default()));
        }
        match self.db.get_mut(key) {
            None => Ok(None),
            Some(Data::Stream(s)) => Ok(Some(s)),
            Some(_) => Err(WRONGTYPE.into()),
        }
    }

    /// The hash at `key`, if any (reads never create keys).
    pub(crate) fn hash(&self, key: &str) -> Result<Option<&Hash>, String> {
        match self.db.get(key) {
            None => Ok(None),
            Some(Data::Hash(h)) => Ok(Some(h)),
            Some(_) => Err(WRONGTYPE.into()),
        }
    }

    /// The sorted set at `key`, if any (reads never create keys).
    pub(crate) fn zset(&self, key: &str) -> Result<Option<&ZSet>, String> {
        match self.db.get(key) {
            None => Ok(None),
            Some(Data::ZSet(z)) => Ok(Some(z)),
            Some(_) => Err(WRONGTYPE.into()),
        }
    }

    pub(crate) fn hash_mut(&mut self, key: &str) -> Result<&mut Hash, String> {
        match self
            .db
            .entry(key.to_owned())
            .or_insert_with(|| Data::Hash(BTreeMap::new()))
        {
            Data::Hash(h) => Ok(h),
            _ => Err(WRONGTYPE.into()),
        }
    }

    pub(crate) fn zset_mut(&mut self, key: &str) -> Result<&mut ZSet, String> {
        match self
            .db
            .entry(key.to_owned())
            .or_insert_with(|| Data::ZSet(ZSet::default()))
        {
            Data::ZSet(z) => Ok(z),
            _ => Err(WRONGTYPE.into()),
        }
    }

    /// EXISTS.
    pub(crate) fn exists(&self, key: &str) -> bool {
        self.db.contains_key(key)
    }

    /// Removes `key` (and its time to live); whether it was there.
    pub(crate) fn remove(&mut self, key: &str) -> bool {
        self.expires.remove(key);
        self.db.remove(key).is_some()
    }

    /// Removes the keys whose time to live ran out (Redis: a key expires once the clock is
    /// past its expiry time).
    pub(crate) fn expire_due(&mut self) {
        let now = self.now_ms;
        let due: Vec<String> = self
            .expires
            .iter()
            .filter(|(_, at)| now > **at)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.remove(&key);
        }
    }

    /// PTTL: the time to live left (ms), -1 for a key without one, -2 for no key.
    #[must_use]
    pub fn pttl(&self, key: &str) -> i64 {
        match (self.db.contains_key(key), self.expires.get(key)) {
            (false, _) => -2,
            (true, None) => -1,
            (true, Some(at)) => i64::try_from(at.saturating_sub(self.now_ms)).unwrap_or(i64::MAX),
        }
    }

    /// Redis removes hashes and sorted sets that become empty.
    pub(crate) fn drop_if_empty(&mut self, key: &str) {
        let empty = match self.db.get(key) {
            Some(Data::Hash(h)) => h.is_empty(),
            Some(Data::ZSet(z)) => z.is_empty(),
            _ => false,
        };
        if empty {
            self.remove(key);
        }
    }
}

/// Faults between machines and the model, in parts per thousand of commands (`test-util`).
#[cfg(feature = "test-util")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// The command is lost before it runs (the connection died while sending).
    pub lose_command: u16,
    /// The command runs but its reply is lost (the connection died after sending).
    pub lose_reply: u16,
    /// Redis refuses the command with a transient error: `LOADING` (as after a restart), or
    /// a cluster's `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `READONLY` (a redirect, a
    /// migration, a failover under way): it did not run.
    pub error_reply: u16,
    /// The master fails over before the command runs: its replica takes over with what it
    /// had (the writes not yet replicated are gone), and the command's connection dies (an
    /// unknown outcome; it did not run). Writes reach the replica at a command that asks
    /// for replicas (its `WAIT`, which times out now and then: an unknown outcome) and,
    /// for the others, every other command or so (replication lags).
    pub failover: u16,
}

/// The model behind a faulty connection (`test-util`).
#[cfg(feature = "test-util")]
#[derive(Debug, Clone)]
pub struct Network {
    /// The model.
    pub sim: Sim,
    /// The faults to inject.
    pub faults: Faults,
    /// The master's replica (kept while failovers are injected): what a failover leaves.
    replica: Option<Sim>,
    /// Failovers so far.
    pub failovers: u64,
    rng: SeededRandom,
}

#[cfg(feature = "test-util")]
impl Network {
    /// A network over `sim` injecting `faults`, drawn from `seed`.
    #[must_use]
    pub fn new(sim: Sim, faults: Faults, seed: u64) -> Self {
        Self {
            sim,
            faults,
            replica: None,
            failovers: 0,
            rng: SeededRandom::new(seed),
        }
    }

    fn roll(&mut self, per_mille: u16) -> bool {
        per_mille > 0 && self.rng.next_u64() % 1000 < u64::from(per_mille)
    }

    /// A refusal of `command` that means "not run, try again": a restarted server's, or a
    /// cluster's while its layout changes (a redirect to the command's slot, a migration
    /// under way, a failover).
    fn refusal(&mut self, command: &Command) -> String {
        let slot = crate::scripts::invocation(&command.kind)
            .slot()
            .unwrap_or(0);
        match self.rng.next_u64() % 6 {
            0 => "LOADING Redis is loading the dataset in memory".into(),
            1 => format!("MOVED {slot} 127.0.0.1:7001"),
            2 => format!("ASK {slot} 127.0.0.1:7002"),
            3 => "TRYAGAIN Multiple keys request during rehashing of slot".into(),
            4 => "CLUSTERDOWN The cluster is down".into(),
            _ => "READONLY You can't write against a read only replica.".into(),
        }
    }

    /// Sends one command: its reply, or `Unknown` when a fault struck (`NotSent`, half the
    /// time, for a command lost before it ran: an adapter may know that much).
    pub fn send(&mut self, command: &Command) -> Reply {
        if self.faults.failover > 0 {
            if self.replica.is_none() {
                self.replica = Some(self.sim.clone());
            }
            if let (true, Some(replica)) = (self.roll(self.faults.failover), &self.replica) {
                // The replica takes over on the same clock (ids stay its own: a stream may
                // have lost its tail, and new ids come from the clock).
                let now = self.sim.now_ms;
                self.sim = replica.clone();
                self.sim.now_ms = now;
                self.failovers += 1;
                return Reply::Unknown;
            }
        }
        if self.roll(self.faults.lose_command) {
            return match self.rng.next_u64() % 2 {
                0 => Reply::NotSent,
                _ => Reply::Unknown,
            };
        }
        if self.roll(self.faults.error_reply) {
            return Reply::Value(Value::Error(self.refusal(command)));
        }
        let value = self.sim.execute(&command.kind);
        if self.faults.failover > 0 {
            let replicate = match command.replicas {
                // Its WAIT: the replica has everything so far, or it timed out.
                Some(_) => {
                    if self.rng.next_u64() % 10 == 0 {
                        return Reply::Unknown;
                    }
                    true
                }
                None => self.rng.next_u64() % 2 == 0,
            };
            if replicate {
                self.replica = Some(self.sim.clone());
            }
        }
        if self.roll(self.faults.lose_reply) {
            return Reply::Unknown;
        }
        Reply::Value(value)
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests;
