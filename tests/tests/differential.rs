//! Differential test: random sequences of the core's commands run on the in-memory model
//! (`sim`) and on a real redis-server must give the same replies.
//!
//! Commands are generated symbolically: an entry is "the i-th entry id this side has seen", a
//! time is "the side's base time plus an offset", so each side gets the same command in its
//! own terms (Redis makes ids from its own clock). Replies are compared after entry ids are
//! renamed by order of first appearance. Idle-time conditions use 0, 3 s (met only by entries
//! handed back with an idle time of 5 s: the whole run takes well under 3 s) or a billion ms,
//! so the wall clock cannot make the two sides differ.

use std::sync::Arc;

use datalayer_core::command::{
    Command, CommandKind, DeadJob, NewJob, NextAttempt, OpId, Reply, Settle,
};
use datalayer_core::job::Instance;
use datalayer_core::naming::{ProducerKeys, QueueKeys};
use datalayer_core::producer::EnvelopeSource;
use datalayer_core::random::{Random, SeededRandom};
use datalayer_core::sim::Sim;
use datalayer_core::time::{Duration, Instant};
use datalayer_core::value::{EntryId, Value};
use datalayer_tests::{Persistence, RedisServer};

/// One side's view: the ids it has seen, per stream (ids are unique within a stream only),
/// and its base time.
struct Side {
    ids: [Vec<EntryId>; 5],
    base: u64,
}

impl Side {
    fn new(base: u64) -> Self {
        Self {
            ids: Default::default(),
            base,
        }
    }
}

/// Id namespaces: the work stream, then the events stream of each of [`PRODUCERS`].
const JOBS_NS: usize = 0;
const EVENTS_NS: usize = 1;
/// The dead letters' ids (after the two events namespaces).
const DEAD_NS: usize = 3;
/// The outcome log's ids.
const LOG_NS: usize = 4;

/// The producers of the queue (ids), and the markers an add may carry (`w`: none reads).
const PRODUCERS: [&str; 2] = ["pa", "pb"];
const MARKERS: [&str; 3] = ["w", "pa", "pb"];
/// Two instances' tokens (a producer id taken over by another instance).
const TOKENS: [&str; 2] = ["ta", "tb"];

fn producer(keys: &QueueKeys, p: usize) -> Arc<ProducerKeys> {
    Arc::new(ProducerKeys::new(keys, PRODUCERS[p]).expect("producer"))
}

/// The keys compared: the queue's keys of fixed name and every producer's events stream.
fn diff_keys(keys: &QueueKeys) -> Vec<String> {
    let mut all: Vec<String> = keys.all().iter().map(|k| k.to_string()).collect();
    all.extend(PRODUCERS.iter().map(|p| keys.events_of(p)));
    all
}

impl Side {
    fn pick(&self, ns: usize, pick: usize) -> EntryId {
        let ids = &self.ids[ns];
        if ids.is_empty() || pick == usize::MAX {
            return EntryId::new(1, 1); // an id that never exists
        }
        ids[pick % ids.len()]
    }

    fn id(&self, pick: usize) -> EntryId {
        self.pick(JOBS_NS, pick)
    }

    fn event(&self, producer: usize, pick: usize) -> EntryId {
        self.pick(EVENTS_NS + producer, pick)
    }

    /// A `peek_events` reply: each producer's entries in its events stream's namespace.
    fn normalize_peek(&mut self, v: Value) -> Value {
        let Value::Array(pairs) = v else {
            return self.normalize(JOBS_NS, v);
        };
        let pairs = pairs
            .into_iter()
            .map(|pair| match pair {
                Value::Array(mut parts) if parts.len() == 2 => {
                    let p = match &parts[0] {
                        Value::Bulk(b) => PRODUCERS.iter().position(|x| x.as_bytes() == &b[..]),
                        _ => None,
                    };
                    let entries = parts.pop().unwrap_or(Value::Nil);
                    let ns = EVENTS_NS + p.unwrap_or(0);
                    parts.push(self.normalize(ns, entries));
                    Value::Array(parts)
                }
                other => self.normalize(JOBS_NS, other),
            })
            .collect();
        Value::Array(pairs)
    }

    /// A `find_job` reply: its dead letter (last part) in the dead letters' namespace, the
    /// rest in the work stream's.
    fn normalize_find(&mut self, v: Value) -> Value {
        match v {
            Value::Array(mut parts) if parts.len() == 5 => {
                let dead = parts.pop().unwrap_or(Value::Nil);
                let mut out: Vec<Value> = parts
                    .into_iter()
                    .map(|p| self.normalize(JOBS_NS, p))
                    .collect();
                out.push(self.normalize(DEAD_NS, dead));
                Value::Array(out)
            }
            other => self.normalize(JOBS_NS, other),
        }
    }

    /// Renames entry ids of namespace `ns` (by first appearance) and base-relative times,
    /// recursively.
    fn normalize(&mut self, ns: usize, v: Value) -> Value {
        match v {
            Value::Bulk(b) => match EntryId::parse(&b) {
                Ok(id) if id.ms >= 1_000_000_000_000 => {
                    let ids = &mut self.ids[ns];
                    let i = match ids.iter().position(|x| *x == id) {
                        Some(i) => i,
                        None => {
                            ids.push(id);
                            ids.len() - 1
                        }
                    };
                    Value::Status(format!("id#{i}"))
                }
                _ => Value::Bulk(b),
            },
            Value::Array(a) => Value::Array(a.into_iter().map(|x| self.normalize(ns, x)).collect()),
            Value::Int(i) if i >= 1_000_000_000_000 => {
                Value::Status(format!("t+{}", i - self.base as i64))
            }
            Value::Error(e) => Value::Error(e.split(' ').next().unwrap_or_default().to_owned()),
            other => other,
        }
    }
}

/// A job's "envelope": for even jobs a header of key id `j / 2 + 1` and a body (what
/// `key_usage` counts), for odd ones bytes that are not an envelope.
fn fake_envelope(j: usize) -> Vec<u8> {
    if j % 2 == 1 {
        return format!("env-{j}").into_bytes();
    }
    let mut v = b"DL\x02\x00".to_vec();
    v.extend_from_slice(&(j as u32 / 2 + 1).to_le_bytes());
    v.extend_from_slice(&[b'x'; 32]);
    v
}

/// A command in symbolic form.
#[derive(Debug, Clone)]
enum Op {
    EnsureGroup,
    /// Jobs (id, due offset), marker (of [`MARKERS`]), fresh (MULTI/EXEC, no check).
    Enqueue(Vec<(usize, Option<i64>)>, usize, bool),
    Read(usize, u32),
    Settle(u8, usize, Vec<(usize, usize, i64)>),
    Promote(u64, u32),
    /// Consumer, min idle, cursor, count, time offset, jitter.
    Reclaim(usize, u64, usize, u32, u64, u32),
    Heartbeat(usize, u64, bool, Vec<usize>),
    /// Producer, after (pick), count.
    ReadEvents(usize, usize, u32),
    /// Producer, token, through (pick), jobs forgotten.
    /// Producer, token, through (an event), forget (jobs), check (an event, and whether
    /// with its own fingerprint).
    AckEvents(
        usize,
        usize,
        Option<usize>,
        Vec<usize>,
        Option<(usize, bool)>,
    ),
    /// Producer.
    /// The last id producer `p`'s events stream generated.
    EventsTail(usize),
    Stats(usize),
    /// Producer, token, claim, time offset, promise offset.
    Register(usize, usize, bool, u64, i64),
    /// After (pick of the dead letters seen), count.
    ReadDead(usize, u32),
    /// Marker, items: (dead letter pick, job).
    Revive(usize, Vec<(usize, usize)>),
    /// Dead letter picks.
    DeleteDead(Vec<usize>),
    /// Job, limit.
    FindJob(usize, u32),
    /// Job, the marker to withdraw as (`None`: promote).
    DelayedJob(usize, Option<usize>),
    Workers,
    /// Since (`None`: 0-0; else a pick of producer 0's events), cursors (producer, pick),
    /// count.
    PeekEvents(Option<usize>, Vec<(usize, usize)>, u32),
    /// Source (jobs, delayed, dead), after (a pick of that stream; `usize::MAX`: 0-0),
    /// offset, count.
    KeyUsage(usize, usize, u64, u32),
    /// Pause (true) or resume the queue.
    SetPaused(bool),
    /// A paused worker's question.
    IsPaused,
    /// Read the outcome log after (a pick of it; `usize::MAX`: 0-0), count.
    TailLog(usize, u32),
    Garbage,
    Destroy,
    Ping,
}

/// Sequences per run (80 commands each).
const SEEDS: u64 = 200;

const JOBS: [&str; 6] = ["j0", "j1", "j2", "j3", "j4", "j5"];
const CONSUMERS: [&str; 3] = ["c0", "c1", "c2"];

fn random_op(rng: &mut SeededRandom) -> Op {
    let mut r = |n: u64| (rng.next_u64() % n) as usize;
    match r(44) {
        0 => Op::EnsureGroup,
        39 => Op::SetPaused(r(2) == 0),
        40 => Op::IsPaused,
        41..=43 => Op::TailLog([usize::MAX, r(64)][r(2)], 1 + r(4) as u32),
        1..=4 => {
            let jobs = (0..=r(3))
                .map(|_| (r(6), [None, Some(-1), Some(1_000_000)][r(3)]))
                .collect();
            Op::Enqueue(jobs, r(3), r(3) == 0)
        }
        5..=7 => Op::Read(r(3), 1 + r(3) as u32),
        8..=11 => {
            let items = (0..=r(2))
                .map(|_| (r(64), r(6), [-1, 1_000_000][r(2)]))
                .collect();
            Op::Settle(r(3) as u8, r(3), items)
        }
        12 => Op::Promote([0, 2_000_000][r(2)], 1 + r(3) as u32),
        13 | 14 => Op::Reclaim(
            r(3),
            [0, 3_000, 1_000_000_000][r(3)],
            [usize::MAX, r(64)][r(2)],
            r(4) as u32,
            [0, 30_000, 2_000_000][r(3)] as u64,
            [500, 1000, 1500, 500 + r(1001) as u32][r(4)],
        ),
        15 => Op::Heartbeat(
            r(3),
            [0, 5_000][r(2)],
            r(2) == 0,
            (0..=r(2)).map(|_| r(64)).collect(),
        ),
        16 | 17 => Op::ReadEvents(r(2), [usize::MAX, r(64)][r(2)], 1 + r(4) as u32),
        18 => Op::AckEvents(
            r(2),
            r(2),
            [None, Some(r(64))][r(2)],
            (0..r(3)).map(|_| r(6)).collect(),
            [None, Some((r(64), r(2) == 0))][r(2)],
        ),
        19 => Op::Stats(r(2)),
        26 => Op::ReadDead([usize::MAX, r(64)][r(2)], 1 + r(3) as u32),
        27 => Op::Revive(r(3), (0..=r(2)).map(|_| (r(64), r(6))).collect()),
        28 => Op::DeleteDead((0..=r(2)).map(|_| r(64)).collect()),
        29 | 30 => Op::FindJob(r(6), [1, 2, 1000][r(3)]),
        31 | 32 => Op::DelayedJob(r(6), [None, Some(r(3))][r(2)]),
        33 => Op::Workers,
        34 => Op::EventsTail(r(2)),
        37 | 38 => Op::KeyUsage(
            r(3),
            [usize::MAX, r(64)][r(2)],
            r(3) as u64,
            1 + r(4) as u32,
        ),
        35 | 36 => Op::PeekEvents(
            [None, Some(r(64))][r(2)],
            (0..r(3)).map(|_| (r(2), r(64))).collect(),
            [0, 1, 2, 100][r(4)],
        ),
        23 | 24 => Op::Register(
            r(2),
            r(2),
            r(2) == 0,
            [0, 2_000_000][r(2)],
            [-1, 1_000_000, 10_000_000][r(3)],
        ),
        20 => Op::Garbage,
        21 if r(4) == 0 => Op::Destroy,
        22 if r(3) == 0 => Op::Ping,
        _ => Op::Read(r(3), 2),
    }
}

fn at(base: u64, offset: i64) -> u64 {
    base.saturating_add_signed(offset)
}

fn build(op: &Op, side: &Side, keys: &Arc<QueueKeys>) -> Option<CommandKind> {
    let keys = keys.clone();
    let base = side.base;
    Some(match op {
        Op::EnsureGroup => CommandKind::EnsureGroup { keys },
        Op::Enqueue(jobs, marker, fresh) => CommandKind::Enqueue {
            keys,
            now_ms: base,
            marker: MARKERS[*marker].into(),
            jobs: jobs
                .iter()
                .map(|(j, due)| NewJob {
                    id: JOBS[*j].into(),
                    due_ms: due.map(|d| at(base, d)),
                    envelope: Arc::from(fake_envelope(*j)),
                })
                .collect(),
            fresh: *fresh,
            // A producer's add asserts its registration (the model and Redis must agree on
            // the registry too); `w` has none.
            register_until_ms: (MARKERS[*marker] != "w").then(|| at(base, 3_600_000)),
        },
        Op::Read(c, count) => CommandKind::Read {
            keys,
            consumer: CONSUMERS[*c].into(),
            count: *count,
            block_ms: None,
        },
        Op::Settle(kind, c, items) => {
            let items: Vec<(Settle, u64)> = items
                .iter()
                .map(|(e, j, due)| {
                    let settle = Settle {
                        entry: side.id(*e),
                        job: Some(JOBS[*j].into()),
                        // Some items without an instance (an entry that did not open).
                        instance: (*j % 3 != 2).then_some(Instance([*j as u8; 16])),
                        value: Arc::from(
                            &b"DL\x02\x00\x07\x00\x00\x00reason-of-thirty-six-bytes-at-least"[..],
                        ),
                        attempt: 1,
                        // What the worker read there: for jobs 4 and 5 their envelope (the
                        // settle applies only if the entry holds that job), for the others
                        // nothing (an empty fingerprint: any entry matches).
                        read: match *j >= 4 {
                            true => Arc::from(fake_envelope(*j)),
                            false => Arc::from(&b""[..]),
                        },
                        then: (),
                    };
                    (settle, at(base, *due))
                })
                .collect();
            let again = || Arc::from(&b"env-again"[..]);
            let consumer = CONSUMERS[*c].to_owned();
            let min_event_ms = base - 3_600_000;
            match kind {
                0 => CommandKind::Complete {
                    keys,
                    min_event_ms,
                    consumer,
                    items: items.into_iter().map(|(s, _)| s).collect(),
                },
                1 => CommandKind::Retry {
                    keys,
                    now_ms: base,
                    min_event_ms,
                    consumer,
                    items: items
                        .into_iter()
                        .map(|(s, due_ms)| {
                            s.with(NextAttempt {
                                envelope: again(),
                                due_ms,
                            })
                        })
                        .collect(),
                },
                _ => CommandKind::Bury {
                    keys,
                    min_event_ms,
                    // Ids differ in ms between the sides: a trim by age is the model's test.
                    min_dead_ms: 0,
                    consumer,
                    items: items
                        .into_iter()
                        .map(|(s, _)| s.with(DeadJob { envelope: again() }))
                        .collect(),
                },
            }
        }
        Op::Promote(offset, limit) => CommandKind::Promote {
            keys,
            now_ms: base + offset,
            limit: *limit,
        },
        Op::Reclaim(c, min_idle_ms, cursor, count, offset, jitter) => CommandKind::Reclaim {
            keys,
            consumer: CONSUMERS[*c].into(),
            min_idle_ms: *min_idle_ms,
            cursor: if *cursor == usize::MAX {
                EntryId::ZERO
            } else {
                side.id(*cursor)
            },
            count: *count,
            now_ms: base + offset,
            interval_ms: 15_000,
            jitter: *jitter,
            promote_limit: 2,
        },
        Op::Heartbeat(c, idle_ms, unstarted, entries) => CommandKind::Heartbeat {
            keys,
            consumer: CONSUMERS[*c].into(),
            idle_ms: *idle_ms,
            unstarted: *unstarted,
            entries: entries.iter().map(|e| side.id(*e)).collect(),
        },
        Op::ReadEvents(p, after, count) => CommandKind::ReadEvents {
            producer: producer(&keys, *p),
            keys,
            after: if *after == usize::MAX {
                EntryId::ZERO
            } else {
                side.event(*p, *after)
            },
            count: *count,
            block_ms: None,
        },
        Op::AckEvents(p, token, through, forget, check) => CommandKind::AckEvents {
            producer: producer(&keys, *p),
            token: TOKENS[*token].into(),
            keys,
            through: through.map(|e| side.event(*p, e)),
            forget: forget.iter().map(|j| JOBS[*j].to_owned()).collect(),
            // Every event's `v` starts so (the settles' sealed value): the fingerprint
            // matches an event there, or never.
            check: check.map(|(e, own)| {
                let seen: &[u8] = if own {
                    b"DL\x02\x00\x07\x00"
                } else {
                    b"DL\x02\x00\x08"
                };
                (side.event(*p, e), Arc::from(seen))
            }),
        },
        Op::EventsTail(p) => CommandKind::EventsTail {
            producer: producer(&keys, *p),
            keys,
        },
        Op::Stats(p) => CommandKind::Stats {
            producer: producer(&keys, *p),
            keys,
        },
        Op::ReadDead(after, count) => CommandKind::ReadDead {
            keys,
            after: if *after == usize::MAX {
                EntryId::ZERO
            } else {
                side.pick(DEAD_NS, *after)
            },
            count: *count,
        },
        Op::Revive(marker, items) => CommandKind::Revive {
            keys,
            marker: MARKERS[*marker].into(),
            items: items
                .iter()
                .map(|(e, j)| {
                    let env: Arc<[u8]> = Arc::from(format!("revived-{j}").as_bytes());
                    (side.pick(DEAD_NS, *e), JOBS[*j].to_owned(), env)
                })
                .collect(),
        },
        Op::Workers => CommandKind::Workers { keys },
        Op::IsPaused => CommandKind::IsPaused { keys },
        Op::TailLog(after, count) => CommandKind::TailLog {
            keys,
            after: if *after == usize::MAX {
                EntryId::ZERO
            } else {
                side.pick(LOG_NS, *after)
            },
            count: *count,
            keep_ms: 60_000,
        },
        Op::SetPaused(paused) => CommandKind::SetPaused {
            keys,
            paused: *paused,
            // The same on both sides: the dump of the keys shows it.
            now_ms: 1_000,
        },
        Op::KeyUsage(source, after, offset, count) => {
            let source = EnvelopeSource::ALL[*source];
            let ns = if source == EnvelopeSource::Dead {
                DEAD_NS
            } else {
                JOBS_NS
            };
            CommandKind::KeyUsage {
                keys,
                source,
                after: if *after == usize::MAX {
                    EntryId::ZERO
                } else {
                    side.pick(ns, *after)
                },
                offset: *offset,
                count: *count,
            }
        }
        Op::PeekEvents(since, cursors, count) => CommandKind::PeekEvents {
            keys,
            since: since.map_or(EntryId::ZERO, |e| side.event(0, e)),
            cursors: cursors
                .iter()
                .map(|(p, e)| (PRODUCERS[*p].to_owned(), side.event(*p, *e)))
                .collect(),
            count: *count,
        },
        Op::DelayedJob(j, marker) => CommandKind::DelayedJob {
            keys,
            job: JOBS[*j].into(),
            withdraw_as: marker.map(|m| MARKERS[m].into()),
        },
        Op::FindJob(j, limit) => CommandKind::FindJob {
            keys,
            job: JOBS[*j].into(),
            limit: *limit,
        },
        Op::DeleteDead(picks) => CommandKind::DeleteDead {
            keys,
            entries: picks.iter().map(|e| side.pick(DEAD_NS, *e)).collect(),
        },
        Op::Register(p, token, claim, now, until) => CommandKind::Register {
            producer: producer(&keys, *p),
            token: TOKENS[*token].into(),
            claim: *claim,
            keys,
            now_ms: base + now,
            until_ms: at(base, *until),
        },
        Op::Destroy => CommandKind::Destroy { keys },
        Op::Ping => CommandKind::Ping,
        Op::Garbage => return None,
    })
}

fn bulk(s: String) -> Value {
    Value::Bulk(s.into_bytes())
}

/// The ids of every entry of stream `key` on the real server (XRANGE - +).
async fn entry_ids(conn: &mut Conn, key: &str) -> Value {
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("xrange");
    let ids = match to_value(v) {
        Value::Array(entries) => entries
            .into_iter()
            .filter_map(|e| match e {
                Value::Array(mut parts) if !parts.is_empty() => Some(parts.swap_remove(0)),
                _ => None,
            })
            .collect(),
        other => panic!("XRANGE: {other:?}"),
    };
    Value::Array(ids)
}

/// Two connections to one server: datalayer's own (what the engine's commands go on), and
/// redis-rs's (for the test's own typed queries). Each step awaits its replies before the
/// next, so the two never race.
struct Conn {
    ours: datalayer_tokio::exec::Connection,
    raw: redis::aio::MultiplexedConnection,
}

impl std::ops::Deref for Conn {
    type Target = datalayer_tokio::exec::Connection;
    fn deref(&self) -> &Self::Target {
        &self.ours
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.raw.req_packed_command(cmd)
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.raw.req_packed_commands(cmd, offset, count)
    }
    fn get_db(&self) -> i64 {
        0
    }
}

/// A redis-rs value (RESP2) as the core's.
fn to_value(v: redis::Value) -> Value {
    use redis::Value as R;
    match v {
        R::Nil => Value::Nil,
        R::Int(i) => Value::Int(i),
        R::BulkString(b) => Value::Bulk(b),
        R::Array(a) | R::Set(a) => Value::Array(a.into_iter().map(to_value).collect()),
        R::SimpleString(s) => Value::Status(s),
        R::Okay => Value::Status("OK".into()),
        R::ServerError(e) => Value::Error(match e.details() {
            Some(d) => format!("{} {d}", e.code()),
            None => e.code().to_owned(),
        }),
        other => panic!("a RESP3 reply on a RESP2 connection: {other:?}"),
    }
}

/// Connections to `server`.
async fn connect(server: &RedisServer) -> Conn {
    let ours = datalayer_tokio::exec::Connection::open(&server.url())
        .await
        .expect("connect");
    let raw = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    Conn { ours, raw }
}

/// Runs one command on the real server; its reply.
async fn on_redis(conn: &mut Conn, op: u64, kind: CommandKind) -> Value {
    let cmd = Command {
        op: OpId(op),
        kind,
        replicas: None,
    };
    match datalayer_tokio::exec::execute(conn, &[cmd]).await.pop() {
        Some(Reply::Value(v)) => v,
        other => panic!("no reply from redis: {other:?}"),
    }
}

/// Runs `op` on both sides; both replies, normalized.
async fn on_both(
    sim: &mut Sim,
    conn: &mut Conn,
    (model, real): (&mut Side, &mut Side),
    keys: &Arc<QueueKeys>,
    step: u64,
    op: &Op,
) -> (Value, Value) {
    let m = sim.execute(&build(op, model, keys).expect("op"));
    let r = on_redis(conn, step, build(op, real, keys).expect("same op")).await;
    (model.normalize(JOBS_NS, m), real.normalize(JOBS_NS, r))
}

/// The ids of the work stream's entries on both sides, normalized (settled entries leave it
/// by trimming, which no reply shows).
async fn work_streams(
    sim: &Sim,
    conn: &mut Conn,
    (model, real): (&mut Side, &mut Side),
    keys: &QueueKeys,
) -> (Value, Value) {
    let m = Value::Array(
        sim.stream(&keys.jobs)
            .map(|s| s.entries.keys().map(|id| bulk(id.to_string())).collect())
            .unwrap_or_default(),
    );
    let r = entry_ids(conn, &keys.jobs).await;
    (model.normalize(JOBS_NS, m), real.normalize(JOBS_NS, r))
}

/// Every key of the queue, as one value: per key its type and whole content (a stream's
/// entries and fields, each group's last delivered id and pending entries with owner and
/// delivery count; a hash's fields; a sorted set's members and scores), in one canonical
/// order. Idle times (wall clock) are left out.
fn model_keyspace(sim: &Sim, keys: &QueueKeys) -> Value {
    use datalayer_core::sim::Data;
    let id = |id: &EntryId| bulk(id.to_string());
    let flat = |fields: &datalayer_core::value::Fields| {
        Value::Array(
            fields
                .iter()
                .flat_map(|(k, v)| [Value::Bulk(k.clone()), Value::Bulk(v.clone())])
                .collect(),
        )
    };
    Value::Array(
        diff_keys(keys)
            .iter()
            .map(|key| match sim.get(key) {
                None => Value::Nil,
                Some(Data::Stream(st)) => Value::Array(vec![
                    bulk("stream".into()),
                    Value::Array(
                        st.entries
                            .iter()
                            .map(|(i, f)| Value::Array(vec![id(i), flat(f)]))
                            .collect(),
                    ),
                    Value::Array(
                        st.groups
                            .iter()
                            .map(|(name, g)| {
                                let pel = g
                                    .pel
                                    .iter()
                                    .map(|(i, p)| {
                                        Value::Array(vec![
                                            id(i),
                                            bulk(p.consumer.clone()),
                                            Value::Int(p.deliveries as i64),
                                        ])
                                    })
                                    .collect();
                                Value::Array(vec![
                                    bulk(name.clone()),
                                    id(&g.last_delivered),
                                    Value::Array(pel),
                                    Value::Array(
                                        g.consumers.iter().map(|c| bulk(c.clone())).collect(),
                                    ),
                                ])
                            })
                            .collect(),
                    ),
                ]),
                Some(Data::Hash(h)) => Value::Array(vec![
                    bulk("hash".into()),
                    Value::Array(
                        h.iter()
                            .flat_map(|(k, v)| [Value::Bulk(k.clone()), Value::Bulk(v.clone())])
                            .collect(),
                    ),
                ]),
                Some(Data::ZSet(z)) => {
                    let mut members: Vec<(u64, Vec<u8>)> = z
                        .range_to(u64::MAX, usize::MAX)
                        .into_iter()
                        .map(|m| (z.score(&m).unwrap_or_default(), m))
                        .collect();
                    members.sort();
                    Value::Array(vec![
                        bulk("zset".into()),
                        Value::Array(
                            members
                                .into_iter()
                                .flat_map(|(s, m)| [Value::Bulk(m), Value::Int(s as i64)])
                                .collect(),
                        ),
                    ])
                }
            })
            .collect(),
    )
}

/// XRANGE's reply: (id, field/value pairs) per entry.
type RawEntries = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

/// The same value read from redis-server (TYPE, XRANGE, XINFO GROUPS, XPENDING, HGETALL,
/// ZRANGE WITHSCORES).
async fn redis_keyspace(conn: &mut Conn, keys: &QueueKeys) -> Value {
    let mut out = Vec::new();
    for key in &diff_keys(keys) {
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(conn)
            .await
            .expect("TYPE");
        out.push(match kind.as_str() {
            "none" => Value::Nil,
            "stream" => {
                let entries: RawEntries = redis::cmd("XRANGE")
                    .arg(key)
                    .arg("-")
                    .arg("+")
                    .query_async(conn)
                    .await
                    .expect("XRANGE");
                let entries = entries
                    .into_iter()
                    .map(|(i, f)| {
                        let flat = f
                            .into_iter()
                            .flat_map(|(k, v)| [Value::Bulk(k), Value::Bulk(v)])
                            .collect();
                        Value::Array(vec![bulk(i), Value::Array(flat)])
                    })
                    .collect();
                let infos: Vec<std::collections::HashMap<String, redis::Value>> =
                    redis::cmd("XINFO")
                        .arg("GROUPS")
                        .arg(key)
                        .query_async(conn)
                        .await
                        .expect("XINFO GROUPS");
                let mut groups = Vec::new();
                for info in infos {
                    let text = |v: Option<&redis::Value>| match v {
                        Some(redis::Value::BulkString(b)) => {
                            String::from_utf8_lossy(b).into_owned()
                        }
                        Some(redis::Value::SimpleString(s)) => s.clone(),
                        other => panic!("XINFO GROUPS field {other:?}"),
                    };
                    let name = text(info.get("name"));
                    let last = text(info.get("last-delivered-id"));
                    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                        .arg(key)
                        .arg(&name)
                        .arg("-")
                        .arg("+")
                        .arg(100_000)
                        .query_async(conn)
                        .await
                        .expect("XPENDING");
                    let pel = pending
                        .into_iter()
                        .map(|(i, c, _idle, n)| {
                            Value::Array(vec![bulk(i), bulk(c), Value::Int(n as i64)])
                        })
                        .collect();
                    let infos: Vec<std::collections::HashMap<String, redis::Value>> =
                        redis::cmd("XINFO")
                            .arg("CONSUMERS")
                            .arg(key)
                            .arg(&name)
                            .query_async(conn)
                            .await
                            .expect("XINFO CONSUMERS");
                    let mut consumers: Vec<String> =
                        infos.iter().map(|c| text(c.get("name"))).collect();
                    consumers.sort();
                    let consumers = consumers.into_iter().map(bulk).collect();
                    groups.push((name, last, pel, consumers));
                }
                groups.sort_by(|a, b| a.0.cmp(&b.0));
                let groups = groups
                    .into_iter()
                    .map(|(n, l, p, c)| {
                        Value::Array(vec![bulk(n), bulk(l), Value::Array(p), Value::Array(c)])
                    })
                    .collect();
                Value::Array(vec![
                    bulk("stream".into()),
                    Value::Array(entries),
                    Value::Array(groups),
                ])
            }
            "hash" => {
                let h: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(conn)
                    .await
                    .expect("HGETALL");
                Value::Array(vec![
                    bulk("hash".into()),
                    Value::Array(
                        h.into_iter()
                            .flat_map(|(k, v)| [Value::Bulk(k), Value::Bulk(v)])
                            .collect(),
                    ),
                ])
            }
            "zset" => {
                let z: Vec<(Vec<u8>, u64)> = redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(conn)
                    .await
                    .expect("ZRANGE");
                let mut z: Vec<(u64, Vec<u8>)> = z.into_iter().map(|(m, s)| (s, m)).collect();
                z.sort();
                Value::Array(vec![
                    bulk("zset".into()),
                    Value::Array(
                        z.into_iter()
                            .flat_map(|(s, m)| [Value::Bulk(m), Value::Int(s as i64)])
                            .collect(),
                    ),
                ])
            }
            other => panic!("{key} is a {other}"),
        });
    }
    Value::Array(out)
}

/// Both keyspaces, with entry ids renamed by first appearance (per key: ids are unique
/// within a stream only) and times made base-relative.
async fn keyspaces(
    sim: &Sim,
    conn: &mut Conn,
    (model_base, real_base): (u64, u64),
    keys: &QueueKeys,
) -> (Value, Value) {
    let per_key = |v: Value, base: u64| match v {
        Value::Array(keys) => Value::Array(
            keys.into_iter()
                .map(|k| Side::new(base).normalize(JOBS_NS, k))
                .collect(),
        ),
        other => other,
    };
    let mv = model_keyspace(sim, keys);
    let rv = redis_keyspace(conn, keys).await;
    (per_key(mv, model_base), per_key(rv, real_base))
}

/// The model at `now_ms`, behaving as the server's version does where versions differ.
async fn model_of(conn: &mut Conn, now_ms: u64) -> Sim {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .expect("INFO");
    let version: Vec<u32> = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("0")
        .trim()
        .split('.')
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let at_least_7_2 = version.as_slice() >= [7, 2].as_slice();
    let mut sim = Sim::new(Instant::from_unix_ms(now_ms));
    sim.set_consumers_on_any_read(at_least_7_2);
    sim
}

async fn redis_time(conn: &mut Conn) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs * 1000 + micros / 1000
}

#[tokio::test]
async fn model_and_redis_agree() {
    let server = RedisServer::start(Persistence::None);
    let mut conn = connect(&server).await;
    let mut ops_run = 0;
    for seed in 0..SEEDS {
        let keys = Arc::new(QueueKeys::new("dl", &format!("diff{seed}")).expect("keys"));
        let mut rng = SeededRandom::new(seed);
        let real_base = redis_time(&mut conn).await;
        let mut sim = model_of(&mut conn, 1_700_000_000_000).await;
        let mut model = Side::new(sim.now().unix_ms());
        let mut real = Side::new(real_base);
        for step in 0..80 {
            // The model's clock moves like Redis' does, so a recreated stream gets new ids.
            sim.set_time(sim.now() + Duration::from_millis(1));
            let op = random_op(&mut rng);
            let (m, r) = match build(&op, &model, &keys) {
                Some(kind) => {
                    let m = sim.execute(&kind);
                    let kind = build(&op, &real, &keys).expect("same op");
                    (m, on_redis(&mut conn, step, kind).await)
                }
                None => {
                    let fields = vec![(b"x".to_vec(), b"garbage".to_vec())];
                    let m = match sim.xadd_raw(&keys.jobs, fields) {
                        Ok(id) => Value::Bulk(id.to_string().into_bytes()),
                        Err(e) => Value::Error(e),
                    };
                    let r: redis::Value = redis::cmd("XADD")
                        .arg(&keys.jobs)
                        .arg("*")
                        .arg("x")
                        .arg("garbage")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_else(|e| redis::Value::SimpleString(format!("ERR {e}")));
                    (m, to_value(r))
                }
            };
            let ns = match op {
                Op::ReadEvents(p, ..) | Op::EventsTail(p) => EVENTS_NS + p,
                Op::ReadDead(..) => DEAD_NS,
                Op::KeyUsage(2, ..) => DEAD_NS,
                Op::TailLog(..) => LOG_NS,
                _ => JOBS_NS,
            };
            // The workers' promises are times as text: as numbers, they compare base-relative.
            let scores = |v: Value| match v {
                Value::Array(flat) if matches!(op, Op::Workers) => Value::Array(
                    flat.into_iter()
                        .enumerate()
                        .map(|(i, x)| match x {
                            Value::Bulk(b) if i % 2 == 1 => String::from_utf8_lossy(&b)
                                .parse::<i64>()
                                .map_or(Value::Bulk(b), Value::Int),
                            other => other,
                        })
                        .collect(),
                ),
                other => other,
            };
            let (m, r) = (scores(m), scores(r));
            let (m, r) = if matches!(op, Op::FindJob(..)) {
                // Its last part names a dead letter: ids of another stream.
                (model.normalize_find(m), real.normalize_find(r))
            } else if matches!(op, Op::PeekEvents(..)) {
                // Each producer's entries are ids of its own events stream.
                (model.normalize_peek(m), real.normalize_peek(r))
            } else {
                (model.normalize(ns, m), real.normalize(ns, r))
            };
            assert_eq!(m, r, "seed {seed} step {step}: {op:?}");
            let (m, r) = work_streams(&sim, &mut conn, (&mut model, &mut real), &keys).await;
            assert_eq!(m, r, "seed {seed} step {step}: work stream after {op:?}");
            let (m, r) = keyspaces(&sim, &mut conn, (model.base, real.base), &keys).await;
            assert_eq!(
                m, r,
                "seed {seed} step {step}: the queue's keys after {op:?}"
            );
            if matches!(op, Op::Destroy) {
                // New streams may reuse ids of the deleted ones (Redis does, within a ms).
                model.ids = Default::default();
                real.ids = Default::default();
            }
            ops_run += 1;
        }
    }
    assert_eq!(ops_run, SEEDS * 80);
}

/// The settle scripts' trim window needs entries seconds apart, which the random sequences
/// (well under 3 s in all) never make: two entries are written with ids 5 s in the past on
/// both sides, then the same commands run on each and the work stream is compared.
#[tokio::test]
async fn trim_window_agrees_with_the_model() {
    let server = RedisServer::start(Persistence::None);
    let mut conn = connect(&server).await;
    let keys = Arc::new(QueueKeys::new("dl", "window").expect("keys"));
    let now = redis_time(&mut conn).await;
    let old = now - 5_000;
    let mut sim = model_of(&mut conn, old).await;
    let (mut model, mut real) = (Side::new(old), Side::new(old));
    on_both(
        &mut sim,
        &mut conn,
        (&mut model, &mut real),
        &keys,
        0,
        &Op::EnsureGroup,
    )
    .await;
    for (seq, job) in ["slow", "a"].into_iter().enumerate() {
        let fields = vec![
            (b"j".to_vec(), job.as_bytes().to_vec()),
            (b"e".to_vec(), b"x".to_vec()),
        ];
        let m = sim.xadd_raw(&keys.jobs, fields).expect("sim xadd");
        model.ids[JOBS_NS].push(m);
        let r: String = redis::cmd("XADD")
            .arg(&keys.jobs)
            .arg(format!("{old}-{seq}"))
            .arg("j")
            .arg(job)
            .arg("e")
            .arg("x")
            .query_async(&mut conn)
            .await
            .expect("xadd");
        real.ids[JOBS_NS].push(EntryId::parse(r.as_bytes()).expect("id"));
    }
    sim.set_time(Instant::from_unix_ms(now));
    let steps = [
        Op::Enqueue(vec![(2, None)], 0, false),
        Op::Read(0, 3),
        // Complete "a" (within the window of the running "slow"), then "b" (beyond it).
        Op::Settle(0, 0, vec![(1, 1, -1)]),
        Op::Settle(0, 0, vec![(2, 2, -1)]),
        Op::Stats(0),
        Op::Settle(0, 0, vec![(0, 0, -1)]),
        Op::Stats(0),
    ];
    for (step, op) in steps.iter().enumerate() {
        let sides = (&mut model, &mut real);
        let (m, r) = on_both(&mut sim, &mut conn, sides, &keys, step as u64 + 1, op).await;
        assert_eq!(m, r, "step {step}: {op:?}");
        let (m, r) = work_streams(&sim, &mut conn, (&mut model, &mut real), &keys).await;
        assert_eq!(m, r, "step {step}: work stream after {op:?}");
        let left = match &m {
            Value::Array(ids) => ids.len(),
            other => panic!("work stream: {other:?}"),
        };
        match step {
            2 => assert_eq!(left, 3, "\"a\" is held back by \"slow\": {m:?}"),
            3 => assert_eq!(left, 2, "\"b\" is deleted by id: {m:?}"),
            5 => assert_eq!(left, 0, "\"slow\" ends, the trim takes it and \"a\": {m:?}"),
            _ => {}
        }
    }
}

/// Outcomes nobody read for the retention time (the settle's `min_event_ms`: an hour
/// before the step here) go as the next outcome is written to their producer's stream, on
/// the model and on redis-server alike; younger ones stay.
#[tokio::test]
async fn unread_outcomes_past_their_retention_go_with_the_next_one() {
    let server = RedisServer::start(Persistence::None);
    let mut conn = connect(&server).await;
    let keys = Arc::new(QueueKeys::new("dl", "retention").expect("keys"));
    let now = redis_time(&mut conn).await;
    let mut sim = model_of(&mut conn, now).await;
    let (mut model, mut real) = (Side::new(now), Side::new(now));
    let events = keys.events_of(PRODUCERS[0]);
    // Two outcomes of producer "pa" nobody read: one two hours old, one half an hour old.
    for (seq, age) in [7_200_000u64, 1_800_000].into_iter().enumerate() {
        let fields = vec![
            (b"j".to_vec(), b"old".to_vec()),
            (b"k".to_vec(), b"c".to_vec()),
        ];
        sim.set_time(Instant::from_unix_ms(now - age));
        sim.xadd_raw(&events, fields).expect("sim xadd");
        let _: String = redis::cmd("XADD")
            .arg(&events)
            .arg(format!("{}-{seq}", now - age))
            .arg("j")
            .arg("old")
            .arg("k")
            .arg("c")
            .query_async(&mut conn)
            .await
            .expect("xadd");
    }
    sim.set_time(Instant::from_unix_ms(now));
    let steps = [
        Op::EnsureGroup,
        // Jobs 0 and 1 of producer "pa" (marker 1).
        Op::Enqueue(vec![(0, None), (1, None)], 1, false),
        Op::Read(0, 2),
        Op::Settle(0, 0, vec![(0, 0, -1)]),
    ];
    for (step, op) in steps.iter().enumerate() {
        let sides = (&mut model, &mut real);
        let (m, r) = on_both(&mut sim, &mut conn, sides, &keys, step as u64 + 1, op).await;
        assert_eq!(m, r, "step {step}: {op:?}");
    }
    let (m, r) = keyspaces(&sim, &mut conn, (now, now), &keys).await;
    assert_eq!(m, r, "the keyspaces after the settle");
    let left: Vec<Vec<u8>> = redis::cmd("XRANGE")
        .arg(&events)
        .arg("-")
        .arg("+")
        .query_async::<Vec<(String, Vec<Vec<u8>>)>>(&mut conn)
        .await
        .expect("xrange")
        .into_iter()
        .map(|(_, f)| f.get(1).cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        left,
        vec![b"old".to_vec(), JOBS[0].as_bytes().to_vec()],
        "the two-hour-old outcome is gone, the younger one and the new one stay"
    );
}

/// A group whose last delivered id has a huge sequence number (entries added with explicit
/// ids, or `XGROUP SETID`): the settle's trim did `seq + 1` in a Lua double and failed with
/// "Invalid stream ID" after its writes. Now no arithmetic beyond 15 digits (the model's
/// side: `sim::tests::huge_last_delivered_ids_trim_as_the_script_does`).
#[tokio::test]
async fn huge_stream_ids_settle_and_trim_without_error() {
    let server = RedisServer::start(Persistence::None);
    let mut conn = connect(&server).await;
    let keys = Arc::new(QueueKeys::new("dl", "huge").expect("keys"));
    let now = redis_time(&mut conn).await;
    let mut real = Side::new(now);
    on_redis(
        &mut conn,
        0,
        build(&Op::EnsureGroup, &real, &keys).expect("group"),
    )
    .await;
    for (i, id) in [EntryId::new(now, 1), EntryId::new(now, u64::MAX - 1)]
        .into_iter()
        .enumerate()
    {
        let r: String = redis::cmd("XADD")
            .arg(&keys.jobs)
            .arg(id.to_string())
            .arg("j")
            .arg(format!("j{i}"))
            .arg("e")
            .arg("x")
            .query_async(&mut conn)
            .await
            .expect("xadd");
        real.ids[JOBS_NS].push(EntryId::parse(r.as_bytes()).expect("id"));
    }
    let read = on_redis(
        &mut conn,
        1,
        build(&Op::Read(0, 2), &real, &keys).expect("read"),
    )
    .await;
    assert!(matches!(read, Value::Array(_)), "{read:?}");
    // Both delivered: the last delivered id is the huge one. Settle both.
    let settle = Op::Settle(0, 0, vec![(0, 0, -1), (1, 1, -1)]);
    let r = on_redis(&mut conn, 2, build(&settle, &real, &keys).expect("settle")).await;
    assert_eq!(
        r,
        Value::Array(vec![Value::Int(1), Value::Int(1)]),
        "settled, no error"
    );
    let left: u64 = redis::cmd("XLEN")
        .arg(&keys.jobs)
        .query_async(&mut conn)
        .await
        .expect("xlen");
    // The floor is the huge entry itself: it stays for the next trim; the other is gone.
    assert_eq!(left, 1);
}

/// An enqueue of more jobs than one HMGET/HSET chunk of the script (1,000), with repeats
/// within a chunk and across chunks: the same replies and stream as the model.
#[tokio::test]
async fn large_enqueue_batches_agree_with_the_model() {
    let server = RedisServer::start(Persistence::None);
    let mut conn = connect(&server).await;
    let keys = Arc::new(QueueKeys::new("dl", "large").expect("keys"));
    let now = redis_time(&mut conn).await;
    let mut sim = model_of(&mut conn, now).await;
    let (mut model, mut real) = (Side::new(now), Side::new(now));
    let jobs: Vec<NewJob> = (0..2_500u32)
        .map(|i| {
            // 0..1800 once each, then 1800..2500 repeats ids of both chunks.
            let n = if i < 1_800 { i } else { (i * 7) % 1_900 };
            NewJob {
                id: datalayer_core::job::JobId(format!("job-{n}")),
                due_ms: (n % 5 == 0).then_some(now + 60_000),
                envelope: Arc::from(format!("env-{n}").as_bytes()),
            }
        })
        .collect();
    let distinct = jobs
        .iter()
        .map(|j| &j.id)
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert!(distinct < 2_400, "the batch repeats ids");
    let kind = CommandKind::Enqueue {
        keys: keys.clone(),
        now_ms: now,
        marker: "w".into(),
        jobs,
        fresh: false,
        register_until_ms: None,
    };
    let m = model.normalize(JOBS_NS, sim.execute(&kind));
    let r = real.normalize(JOBS_NS, on_redis(&mut conn, 1, kind).await);
    assert_eq!(m, r);
    let Value::Array(items) = &m else {
        panic!("enqueue reply: {m:?}")
    };
    let refused = items.iter().filter(|v| **v == Value::Int(0)).count();
    assert_eq!(refused, 2_500 - distinct);
    let (m, r) = work_streams(&sim, &mut conn, (&mut model, &mut real), &keys).await;
    assert_eq!(m, r);
    // The largest settle batch (MAX_SETTLE_BATCH) in one complete, two of its entries
    // repeated: the script's single calls (XPENDING, HMGET, HDEL, XACK) take all of it.
    let steps = [
        Op::EnsureGroup,
        Op::Read(0, 1_200),
        Op::Settle(
            0,
            0,
            (0..datalayer_core::worker::MAX_SETTLE_BATCH)
                .map(|i| (i % 998 + 1, 0, -1))
                .collect(),
        ),
        Op::Stats(0),
    ];
    for (step, op) in steps.iter().enumerate() {
        let sides = (&mut model, &mut real);
        let (m, r) = on_both(&mut sim, &mut conn, sides, &keys, 10 + step as u64, op).await;
        assert_eq!(m, r, "step {step}: {op:?}");
        if step == 2 {
            let Value::Array(done) = &m else {
                panic!("complete: {m:?}")
            };
            let settled = done.iter().filter(|v| **v == Value::Int(1)).count();
            assert_eq!(settled, 998, "each pending entry once");
        }
    }
    let (m, r) = work_streams(&sim, &mut conn, (&mut model, &mut real), &keys).await;
    assert_eq!(m, r);
}

/// After a deletion Redis no longer knows a group's lag; the stats script then counted the
/// whole undelivered backlog with one XRANGE (every envelope materialized in Lua). Now at
/// most 10,000 entries, then an upper bound.
#[tokio::test]
async fn stats_of_a_large_backlog_without_a_lag_are_bounded() {
    let server = RedisServer::start(Persistence::None);
    let mut conn = connect(&server).await;
    let keys = Arc::new(QueueKeys::new("dl", "backlog").expect("keys"));
    let side = Side::new(0);
    on_redis(
        &mut conn,
        0,
        build(&Op::EnsureGroup, &side, &keys).expect("group"),
    )
    .await;
    let mut pipe = redis::pipe();
    for i in 0..12_000 {
        pipe.cmd("XADD")
            .arg(&keys.jobs)
            .arg("*")
            .arg("j")
            .arg(i)
            .arg("e")
            .arg("x")
            .ignore();
    }
    let () = pipe.query_async(&mut conn).await.expect("xadd");
    // Five delivered (pending), then one undelivered entry deleted: the lag is unknown.
    on_redis(
        &mut conn,
        1,
        build(&Op::Read(0, 5), &side, &keys).expect("read"),
    )
    .await;
    let first: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&keys.jobs)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(100)
        .query_async(&mut conn)
        .await
        .expect("xrange");
    let _: i64 = redis::cmd("XDEL")
        .arg(&keys.jobs)
        .arg(&first[99].0)
        .query_async(&mut conn)
        .await
        .expect("xdel");
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&keys.jobs)
        .query_async(&mut conn)
        .await
        .expect("xinfo");
    assert_eq!(
        groups[0].get("lag"),
        Some(&redis::Value::Nil),
        "the lag is unknown"
    );
    let stats = on_redis(
        &mut conn,
        2,
        build(&Op::Stats(0), &side, &keys).expect("stats"),
    )
    .await;
    let Value::Array(counts) = stats else {
        panic!("{stats:?}")
    };
    // 11,994 waiting (counted as "more than 10,000": every entry not pending) + 5 running.
    assert_eq!(counts[0], Value::Int(11_999), "{counts:?}");
    assert_eq!(counts[1], Value::Int(5), "{counts:?}");
}

/// Runs one invocation on the real server; its reply.
async fn invoke_on_redis(
    conn: &mut Conn,
    invocation: &datalayer_core::scripts::Invocation<'_>,
) -> Value {
    datalayer_tokio::exec::run_one(conn, invocation)
        .await
        .expect("a reply")
}

/// The credentials store's invocations (save, get, teardown, a purge's SCAN, and PTTL) in
/// random sequences over two sessions, each opened with its own and with a wrong secret,
/// and a ring rotated mid-way: the model and redis-server give the same replies, the same
/// stored hashes, and the same expiry (PTTL's sign: none, gone, or a positive ttl).
#[tokio::test]
async fn credentials_on_the_model_and_redis_agree() {
    use datalayer_core::credentials::{CredentialStore, scan};
    use datalayer_core::keys::{KeyId, Secret, SecretRing};
    use datalayer_core::scripts::Invocation;
    use std::borrow::Cow;

    let server = RedisServer::start(Persistence::None);
    let mut conn = connect(&server).await;
    let secret = |b: u8| Secret::from_bytes([b; 32]);
    let mut ring = SecretRing::new(KeyId(1), secret(1));
    let old_root = ring.credentials_root();
    ring.insert(KeyId(2), secret(2));
    ring.set_active(KeyId(2)).expect("a key");
    let roots = [old_root, ring.credentials_root()];
    let mut rng = SeededRandom::new(5);
    let mut sim = Sim::new(Instant::from_unix_ms(1_700_000_000_000));
    let mut steps = 0;
    for seed in 0..40u64 {
        let mut pick = SeededRandom::new(seed);
        let mut r = |n: u64| (pick.next_u64() % n) as usize;
        for step in 0..40 {
            let session = ["s-a", "s-b"][r(2)];
            let root = &roots[r(2)];
            let session_secret = secret([7, 8][r(2)]);
            let ttl = Duration::from_millis([0, 1_000_000_000][r(2)]);
            let store =
                CredentialStore::new("dl", session, root, &session_secret, ttl).expect("a store");
            let key = ["irc:a", "irc:b", "xmpp:c"][r(3)];
            let key_name: Vec<u8> = store.redis_key().as_bytes().to_vec();
            let invocation: Invocation<'_> = match r(6) {
                0 | 1 => store
                    .save(key, &serde_json::json!({ "n": step }), &mut rng)
                    .expect("seals"),
                2 | 3 => store.get(key).expect("a key"),
                4 => match r(3) {
                    0 => store.teardown(),
                    1 => Invocation::Plain(vec![Cow::Borrowed(b"PTTL"), Cow::Owned(key_name)]),
                    _ => scan("dl:{s-*}:creds", b"0", 1000),
                },
                _ => Invocation::Plain(vec![Cow::Borrowed(b"EXISTS"), Cow::Owned(key_name)]),
            };
            let m = sim.invoke(&invocation);
            let r_ = invoke_on_redis(&mut conn, &invocation).await;
            let scan = matches!(&invocation, Invocation::Plain(a) if a[0].as_ref() == b"SCAN");
            let coarse = |v: Value| match v {
                // PTTL: only its sign is the same on two clocks.
                Value::Int(n) if n > 1 => Value::Int(1),
                // SCAN's order is Redis' hash table's (seeded per process): compare sorted.
                Value::Array(mut page) if scan && page.len() == 2 => {
                    if let Value::Array(keys) = &mut page[1] {
                        keys.sort_by_key(|k| format!("{k:?}"));
                    }
                    Value::Array(page)
                }
                Value::Error(e) => Value::Error(e.split(' ').next().unwrap_or_default().into()),
                other => other,
            };
            assert_eq!(
                coarse(m),
                coarse(r_),
                "seed {seed} step {step}: {invocation:?}"
            );
            // The stored hashes are the same, field by field.
            let stored: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = redis::cmd("HGETALL")
                .arg(store.redis_key())
                .query_async(&mut conn)
                .await
                .expect("HGETALL");
            let modelled = match sim.get(store.redis_key()) {
                Some(datalayer_core::sim::Data::Hash(h)) => h.clone(),
                None => Default::default(),
                Some(other) => panic!("not a hash: {other:?}"),
            };
            assert_eq!(modelled, stored, "seed {seed} step {step}: the store");
            steps += 1;
        }
    }
    assert_eq!(steps, 40 * 40);

    // A short ttl runs out on both clocks alike.
    let store = CredentialStore::new(
        "dl",
        "s-ttl",
        &roots[1],
        &secret(7),
        Duration::from_millis(50),
    )
    .expect("a store");
    let save = store
        .save("irc:a", &serde_json::json!({ "p": 1 }), &mut rng)
        .expect("seals");
    assert_eq!(sim.invoke(&save), invoke_on_redis(&mut conn, &save).await);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    sim.set_time(sim.now() + Duration::from_millis(200));
    let get = store.get("irc:a").expect("a key");
    let (m, real) = (sim.invoke(&get), invoke_on_redis(&mut conn, &get).await);
    assert_eq!(m, real);
    assert!(
        matches!(&m, Value::Array(v) if v.iter().all(|x| *x == Value::Nil)),
        "{m:?}"
    );
}

/// The merged blocking reads (`scripts::merged_read`: one XREADGROUP over several work
/// streams, one XREAD over several events streams) on the model (`Sim::execute_merged`,
/// what the in-process backend runs) and on redis-server, in random sequences with a
/// stream whose group is missing (NOGROUP), entries added, and COUNTs that differ: the
/// same replies (BLOCK 1 ms on Redis, nothing blocks on the model).
#[tokio::test]
async fn merged_reads_on_the_model_and_redis_agree() {
    let server = RedisServer::start(Persistence::None);
    let mut conn = connect(&server).await;
    let mut steps = 0;
    // Redis ends a BLOCK that found nothing on its cron (10 Hz): few, long sequences.
    for seed in 0..12u64 {
        let queues: Vec<Arc<QueueKeys>> = (0..3)
            .map(|q| Arc::new(QueueKeys::new("dl", &format!("m{seed}-{q}")).expect("keys")))
            .collect();
        let now = redis_time(&mut conn).await;
        let mut sim = model_of(&mut conn, now).await;
        // Per stream, per side: the ids seen (ids are unique within a stream only).
        let mut model: Vec<Side> = (0..6).map(|_| Side::new(0)).collect();
        let mut real: Vec<Side> = (0..6).map(|_| Side::new(0)).collect();
        let mut rng = SeededRandom::new(seed);
        for step in 0..60 {
            sim.set_time(sim.now() + Duration::from_millis(1));
            let mut r = |n: u64| (rng.next_u64() % n) as usize;
            let q = r(3);
            match r(5) {
                1 if r(3) == 0 => {
                    // A queue paused or resumed.
                    let kind = CommandKind::SetPaused {
                        keys: queues[q].clone(),
                        paused: r(2) == 0,
                        now_ms: sim.now().unix_ms(),
                    };
                    let m = sim.execute(&kind);
                    let rr = on_redis(&mut conn, step, kind).await;
                    assert_eq!(m, rr, "seed {seed} step {step}: pause");
                }
                0 if q < 2 => {
                    let kind = CommandKind::EnsureGroup {
                        keys: queues[q].clone(),
                    };
                    sim.execute(&kind);
                    on_redis(&mut conn, step, kind).await;
                }
                0 | 1 => {
                    // An entry in a work stream or in an events stream.
                    let events = queues[q].events_of("pa");
                    let key = if r(2) == 0 { &queues[q].jobs } else { &events };
                    let fields = vec![(b"j".to_vec(), format!("{step}").into_bytes())];
                    sim.xadd_raw(key, fields).expect("xadd");
                    let _: String = redis::cmd("XADD")
                        .arg(key)
                        .arg("*")
                        .arg("j")
                        .arg(step.to_string())
                        .query_async(&mut conn)
                        .await
                        .expect("xadd");
                }
                kind => {
                    let picked: Vec<usize> = (0..3).filter(|_| r(2) == 0).collect();
                    if picked.is_empty() {
                        continue;
                    }
                    let reads: Vec<CommandKind> = picked
                        .iter()
                        .map(|&q| {
                            if kind == 4 {
                                CommandKind::ReadEvents {
                                    keys: queues[q].clone(),
                                    producer: producer(&queues[q], 0),
                                    after: EntryId::ZERO,
                                    count: 1 + r(3) as u32,
                                    block_ms: Some(1),
                                }
                            } else {
                                CommandKind::Read {
                                    keys: queues[q].clone(),
                                    consumer: "c".into(),
                                    count: 1 + r(3) as u32,
                                    block_ms: Some(1),
                                }
                            }
                        })
                        .collect();
                    let refs: Vec<&CommandKind> = reads.iter().collect();
                    let invocation =
                        datalayer_core::scripts::merged_read(&refs, 1).expect("they merge");
                    let m = sim.execute_merged(&reads);
                    let real_reply = invoke_on_redis(&mut conn, &invocation).await;
                    if let Some(check) = datalayer_core::scripts::pause_check(&refs) {
                        // Workers' reads: their pause check (after reads that took entries).
                        let m = sim.execute_pause_check(&reads);
                        let rr = invoke_on_redis(&mut conn, &check).await;
                        assert_eq!(m, rr, "seed {seed} step {step}: pauses of {reads:?}");
                    }
                    // Each stream's part, normalized in that stream's namespace.
                    let streams: Vec<Vec<u8>> = picked
                        .iter()
                        .map(|&q| {
                            if kind == 4 {
                                queues[q].events_of("pa").into_bytes()
                            } else {
                                queues[q].jobs.as_bytes().to_vec()
                            }
                        })
                        .collect();
                    let split = |v: Value| match v {
                        Value::Error(e) => Err(e.split(' ').next().unwrap_or_default().to_owned()),
                        v => Ok(datalayer_core::value::split_read(
                            v,
                            &streams.iter().map(Vec::as_slice).collect::<Vec<_>>(),
                        )
                        .expect("a merged reply")),
                    };
                    let (m, rr) = (split(m), split(real_reply));
                    let ns = |i: usize| picked[i] + if kind == 4 { 3 } else { 0 };
                    let m = m.map(|parts| {
                        parts
                            .into_iter()
                            .enumerate()
                            .map(|(i, p)| model[ns(i)].normalize(JOBS_NS, p))
                            .collect::<Vec<_>>()
                    });
                    let rr = rr.map(|parts| {
                        parts
                            .into_iter()
                            .enumerate()
                            .map(|(i, p)| real[ns(i)].normalize(JOBS_NS, p))
                            .collect::<Vec<_>>()
                    });
                    assert_eq!(m, rr, "seed {seed} step {step}: {reads:?}");
                    steps += 1;
                }
            }
        }
    }
    assert!(steps > 200, "{steps} merged reads compared");
}

/// The last id an events stream generated (`events_tail`), on both sides: no stream yet
/// (`0-0`), then after two outcomes were written to producer "pa"'s stream.
#[tokio::test]
async fn events_tail_agrees_with_the_model() {
    let server = RedisServer::start(Persistence::None);
    let mut conn = connect(&server).await;
    let keys = Arc::new(QueueKeys::new("dl", "tail").expect("keys"));
    let now = redis_time(&mut conn).await;
    let mut sim = model_of(&mut conn, now).await;
    let (mut model, mut real) = (Side::new(now), Side::new(now));
    let steps = [
        Op::EnsureGroup,
        Op::EventsTail(0),
        Op::Register(0, 0, true, 0, 1_000_000),
        // Two jobs of producer "pa" (marker 1), read by consumer 0, completed: two events.
        Op::Enqueue(vec![(0, None), (1, None)], 1, false),
        Op::Read(0, 5),
        Op::Settle(0, 0, vec![(0, 0, -1), (1, 1, -1)]),
        Op::EventsTail(0),
        Op::ReadEvents(0, usize::MAX, 10),
        Op::EventsTail(0),
    ];
    let mut tails = Vec::new();
    for (step, op) in steps.iter().enumerate() {
        // Ids of the events stream in its own namespace: ids of two streams can coincide
        // on one side only (each side's clock makes them).
        let ns = match op {
            Op::EventsTail(p) | Op::ReadEvents(p, ..) => EVENTS_NS + p,
            _ => JOBS_NS,
        };
        let m = sim.execute(&build(op, &model, &keys).expect("op"));
        let r = on_redis(
            &mut conn,
            step as u64 + 1,
            build(op, &real, &keys).expect("op"),
        )
        .await;
        let (m, r) = (model.normalize(ns, m), real.normalize(ns, r));
        assert_eq!(m, r, "step {step}: {op:?}");
        if matches!(op, Op::EventsTail(_)) {
            tails.push(m);
        }
    }
    assert_eq!(tails[0], Value::Bulk(b"0-0".to_vec()), "no stream yet");
    assert!(
        matches!(&tails[1], Value::Status(s) if s.starts_with("id#")),
        "an id once events were written: {tails:?}"
    );
    assert_eq!(tails[1], tails[2], "reading changes nothing");
}
