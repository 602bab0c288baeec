//! The model's semantics, command by command (the same sequences were checked by hand on
//! redis-server 7.0; the adapter's differential test checks them mechanically).

use std::sync::Arc;

use super::*;
use crate::command::{DeadJob, NewJob, NextAttempt, Settle};
use crate::naming::{GROUP, ProducerKeys, QueueKeys};
use crate::scripts::TRIM_WINDOW_MS;
#[allow(unused_imports)]
use crate::time::Duration;
use crate::time::testing::inst;
use crate::value::{StreamEntry, decode_read, split_paused};

fn keys() -> Arc<QueueKeys> {
    Arc::new(QueueKeys::new("dl", "q").unwrap())
}

/// Producer `p` of queue `q`.
fn pk() -> Arc<ProducerKeys> {
    Arc::new(ProducerKeys::new(&keys(), "p").unwrap())
}

/// The counts of `stats` (the six integers before the oldest entries' ids).
fn stats_of(sim: &mut Sim) -> Vec<i64> {
    let reply = sim.execute(&CommandKind::Stats {
        keys: keys(),
        producer: pk(),
    });
    let mut items = reply.into_array("stats").unwrap();
    items.truncate(6);
    ints(Value::Array(items))
}

fn register(sim: &mut Sim, producer: &str, until_ms: u64) -> Value {
    let now_ms = sim.now().unix_ms();
    sim.execute(&CommandKind::Register {
        token: "0".into(),
        claim: true,
        keys: keys(),
        producer: Arc::new(ProducerKeys::new(&keys(), producer).unwrap()),
        now_ms,
        until_ms,
    })
}

fn job(id: &str, due_ms: Option<u64>) -> NewJob {
    NewJob {
        id: id.into(),
        due_ms,
        envelope: Arc::from(format!("ENV-{id}").as_bytes()),
    }
}

fn settle(entry: EntryId, job: &str) -> Settle {
    Settle {
        entry,
        job: Some(job.into()),
        instance: Some(crate::job::Instance([3; 16])),
        value: Arc::from(&b"V"[..]),
        attempt: 1,
        read: Arc::from(format!("ENV-{job}").as_bytes()),
        then: (),
    }
}

/// [`settle`] as a burial of what the worker read.
fn burial(entry: EntryId, job: &str) -> Settle<DeadJob> {
    let s = settle(entry, job);
    let envelope = s.read.clone();
    s.with(DeadJob { envelope })
}

fn ints(v: Value) -> Vec<i64> {
    v.into_array("ints")
        .unwrap()
        .iter()
        .map(|x| x.as_int("int").unwrap())
        .collect()
}

fn read(sim: &mut Sim, consumer: &str, count: u32) -> Vec<StreamEntry> {
    let (paused, reply) = split_paused(sim.execute(&CommandKind::Read {
        keys: keys(),
        consumer: consumer.into(),
        count,
        block_ms: None,
    }))
    .unwrap();
    assert_eq!(paused, Some(false));
    decode_read(reply).unwrap()
}

/// An add by producer `p` (registered until far ahead).
fn enqueue(sim: &mut Sim, jobs: Vec<NewJob>) -> Value {
    let now_ms = sim.now().unix_ms();
    register(sim, "p", u64::MAX >> 12);
    sim.execute(&CommandKind::Enqueue {
        keys: keys(),
        now_ms,
        marker: "p".into(),
        jobs,
        fresh: false,
        register_until_ms: None,
    })
}

#[test]
fn group_creation_is_idempotent_and_reads_need_it() {
    let mut sim = Sim::new(inst(1000));
    // The transaction runs; the read's error is in its place.
    assert!(matches!(
        sim.execute(&CommandKind::Read {
            keys: keys(),
            consumer: "c".into(),
            count: 1,
            block_ms: None
        }),
        Value::Array(pair) if matches!(&pair[..], [Value::Error(e), Value::Int(0)] if e.starts_with("NOGROUP"))
    ));
    let ensure = CommandKind::EnsureGroup { keys: keys() };
    assert_eq!(sim.execute(&ensure), Value::Status("OK".into()));
    assert!(matches!(sim.execute(&ensure), Value::Error(e) if e.starts_with("BUSYGROUP")));
    assert_eq!(read(&mut sim, "c", 5), vec![]);
}

#[test]
fn enqueue_dedups_and_delays() {
    let mut sim = Sim::new(inst(1000));
    sim.execute(&CommandKind::EnsureGroup { keys: keys() });
    let reply = enqueue(
        &mut sim,
        vec![job("a", None), job("b", Some(5000)), job("a", None)],
    )
    .into_array("reply")
    .unwrap();
    assert_eq!(reply[0], Value::Bulk(b"1000-0".to_vec()));
    assert_eq!(reply[1], Value::Int(1));
    assert_eq!(reply[2], Value::Int(0));
    let got = read(&mut sim, "c1", 10);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].field(b"j"), Some(&b"a"[..]));
    assert_eq!(got[0].field(b"e"), Some(&b"ENV-a"[..]));
    // Same millisecond: the next id bumps the sequence; a clock jump back keeps ids rising.
    let r = enqueue(&mut sim, vec![job("c", None)]);
    assert_eq!(r, Value::Array(vec![Value::Bulk(b"1000-1".to_vec())]));
    sim.set_time(inst(10));
    let r = enqueue(&mut sim, vec![job("d", None)]);
    assert_eq!(r, Value::Array(vec![Value::Bulk(b"1000-2".to_vec())]));
}

#[test]
fn complete_acks_deletes_and_reports_once() {
    let mut sim = Sim::new(inst(1000));
    sim.execute(&CommandKind::EnsureGroup { keys: keys() });
    enqueue(&mut sim, vec![job("a", None)]);
    let e = read(&mut sim, "c1", 1)[0].id;
    let complete = CommandKind::Complete {
        keys: keys(),
        min_event_ms: 0,
        consumer: "c1".into(),
        items: vec![settle(e, "a")],
    };
    assert_eq!(ints(sim.execute(&complete)), [1]);
    // Sent again after an unknown outcome: nothing happens twice.
    assert_eq!(ints(sim.execute(&complete)), [0]);
    let k = keys();
    assert_eq!(sim.stream(&k.jobs).unwrap().entries.len(), 0);
    assert_eq!(sim.stream(&pk().events).unwrap().entries.len(), 1);
    // The marker waits for its producer, who has not read the result yet.
    assert_eq!(ints(enqueue(&mut sim, vec![job("a", None)])), [0]);
    let forget = CommandKind::AckEvents {
        keys: keys(),
        producer: pk(),
        token: "0".into(),
        through: None,
        forget: vec!["a".into()],
        check: None,
    };
    assert_eq!(sim.execute(&forget), Value::Int(0));
    assert!(
        sim.get(&k.ids).is_none(),
        "the ids hash vanished when empty"
    );
    // The id is free again once the job is gone.
    assert!(ints_or_ids(enqueue(&mut sim, vec![job("a", None)]))[0].is_some());
    let stats = stats_of(&mut sim);
    assert_eq!(stats, [1, 0, 0, 0, 1, 0]);
}

fn ints_or_ids(v: Value) -> Vec<Option<Vec<u8>>> {
    v.into_array("r")
        .unwrap()
        .into_iter()
        .map(|x| x.into_bytes("id").ok())
        .collect()
}

#[test]
fn retry_delays_then_promote_moves_due_jobs() {
    let mut sim = Sim::new(inst(1000));
    sim.execute(&CommandKind::EnsureGroup { keys: keys() });
    enqueue(&mut sim, vec![job("a", None)]);
    let e = read(&mut sim, "c1", 1)[0].id;
    let item = settle(e, "a").with(NextAttempt {
        envelope: Arc::from(&b"ENV2"[..]),
        due_ms: 3000,
    });
    let retry = CommandKind::Retry {
        keys: keys(),
        now_ms: 2000,
        min_event_ms: 0,
        consumer: "c1".into(),
        items: vec![item],
    };
    assert_eq!(ints(sim.execute(&retry)), [1]);
    assert_eq!(ints(sim.execute(&retry)), [0]);
    let promote = |now_ms| CommandKind::Promote {
        keys: keys(),
        now_ms,
        limit: 10,
    };
    assert_eq!(ints(sim.execute(&promote(2500))), [0, 3000]);
    sim.set_time(inst(3000));
    assert_eq!(ints(sim.execute(&promote(3000))), [1, -1]);
    let got = read(&mut sim, "c1", 10);
    assert_eq!(got[0].field(b"e"), Some(&b"ENV2"[..]));
    let k = keys();
    assert!(sim.get(&k.delayed).is_none() && sim.get(&k.payloads).is_none());
    assert!(sim.get(&k.ids).is_some(), "the job lives on");
}

#[test]
fn bury_moves_to_dead_letters() {
    let mut sim = Sim::new(inst(1000));
    sim.execute(&CommandKind::EnsureGroup { keys: keys() });
    let k = keys();
    let garbage = sim
        .xadd_raw(&k.jobs, vec![(b"x".to_vec(), b"y".to_vec())])
        .unwrap();
    enqueue(&mut sim, vec![job("a", None)]);
    let got = read(&mut sim, "c1", 10);
    assert_eq!(got.len(), 2);
    let mut g = burial(garbage, "");
    g.job = None;
    // The worker read no `e` there.
    g.read = Arc::from(&b""[..]);
    let bury = CommandKind::Bury {
        keys: keys(),
        min_event_ms: 0,
        min_dead_ms: 0,
        consumer: "c1".into(),
        items: vec![g, burial(got[1].id, "a")],
    };
    assert_eq!(ints(sim.execute(&bury)), [1, 1]);
    assert_eq!(sim.stream(&k.dead).unwrap().entries.len(), 2);
    // Only the job with an id produces an event.
    assert_eq!(sim.stream(&pk().events).unwrap().entries.len(), 1);
    assert_eq!(sim.stream(&k.jobs).unwrap().entries.len(), 0);
}

#[test]
fn reclaim_counts_deliveries_and_drops_deleted() {
    let mut sim = Sim::new(inst(1000));
    sim.execute(&CommandKind::EnsureGroup { keys: keys() });
    enqueue(
        &mut sim,
        vec![job("a", None), job("b", None), job("c", None)],
    );
    let got = read(&mut sim, "dead-worker", 10);
    let k = keys();
    let deleted = got[1].id;
    let stream = match sim.db.get_mut(&k.jobs) {
        Some(Data::Stream(s)) => s,
        _ => panic!("stream"),
    };
    stream.entries.remove(&deleted);
    let reclaim = |cursor, count| CommandKind::Reclaim {
        keys: keys(),
        consumer: "c2".into(),
        min_idle_ms: 500,
        cursor,
        count,
        now_ms: 1000,
        interval_ms: 1000,
        jitter: 1000,
        promote_limit: 10,
    };
    // Not idle long enough yet; the deleted entry leaves the PEL regardless.
    let r = sim
        .execute(&reclaim(EntryId::ZERO, 10))
        .into_array("r")
        .unwrap();
    assert_eq!(r[1], Value::Array(vec![]));
    assert_eq!(r[2], Value::Array(vec![id_bulk(deleted)]));
    assert_eq!(r[0], id_bulk(EntryId::ZERO));
    sim.set_time(inst(1500));
    // COUNT 1: one claimed, and the cursor points at the next pending entry.
    let r = sim
        .execute(&reclaim(EntryId::ZERO, 1))
        .into_array("r")
        .unwrap();
    assert_eq!(r[0], id_bulk(got[2].id));
    let claimed = r[1].clone().into_array("c").unwrap();
    let first = claimed[0].clone().into_array("e").unwrap();
    assert_eq!(first[2], Value::Int(2), "a second delivery");
    let p = sim
        .stream(&k.jobs)
        .unwrap()
        .pending(GROUP, got[0].id)
        .unwrap();
    assert_eq!((p.consumer.as_str(), p.delivered_at), ("c2", 1500));
    let r = sim
        .execute(&reclaim(got[2].id, 10))
        .into_array("r")
        .unwrap();
    assert_eq!(r[0], id_bulk(EntryId::ZERO));
    assert_eq!(r[1].clone().into_array("c").unwrap().len(), 1);
}

fn id_bulk(id: EntryId) -> Value {
    Value::Bulk(id.to_string().into_bytes())
}

#[test]
fn heartbeat_extends_only_owned_leases() {
    let mut sim = Sim::new(inst(1000));
    sim.execute(&CommandKind::EnsureGroup { keys: keys() });
    enqueue(&mut sim, vec![job("a", None)]);
    let e = read(&mut sim, "c1", 1)[0].id;
    sim.set_time(inst(1900));
    let beat = |consumer: &str| CommandKind::Heartbeat {
        keys: keys(),
        consumer: consumer.into(),
        idle_ms: 0,
        unstarted: false,
        entries: vec![e, EntryId::new(9, 9)],
    };
    assert_eq!(ints(sim.execute(&beat("c1"))), [1, 0]);
    assert_eq!(ints(sim.execute(&beat("c2"))), [0, 0]);
    let k = keys();
    let p = sim.stream(&k.jobs).unwrap().pending(GROUP, e).unwrap();
    assert_eq!(
        (p.consumer.as_str(), p.delivered_at, p.deliveries),
        ("c1", 1900, 1)
    );
    // Handing back: idle as long as the lease, so the next reclaim takes it at once.
    let hand_back = CommandKind::Heartbeat {
        keys: keys(),
        consumer: "c1".into(),
        idle_ms: 30_000,
        unstarted: false,
        entries: vec![e],
    };
    assert_eq!(ints(sim.execute(&hand_back)), [1]);
    let p = sim.stream(&k.jobs).unwrap().pending(GROUP, e).unwrap();
    assert_eq!(p.delivered_at, 1900, "before the epoch: now, as in Redis");
    sim.set_time(inst(100_000));
    assert_eq!(ints(sim.execute(&hand_back)), [1]);
    let reclaim = CommandKind::Reclaim {
        keys: keys(),
        consumer: "c2".into(),
        min_idle_ms: 30_000,
        cursor: EntryId::ZERO,
        count: 5,
        now_ms: 100_000,
        interval_ms: 1000,
        jitter: 1000,
        promote_limit: 10,
    };
    let r = sim.execute(&reclaim).into_array("r").unwrap();
    assert_eq!(r[1].clone().into_array("c").unwrap().len(), 1);
    // Given back unstarted: idle as long as the lease, its delivery taken back.
    let p = sim.stream(&k.jobs).unwrap().pending(GROUP, e).unwrap();
    assert_eq!(p.deliveries, 2);
    let give_back = CommandKind::Heartbeat {
        keys: keys(),
        consumer: "c2".into(),
        idle_ms: 30_000,
        unstarted: true,
        entries: vec![e],
    };
    assert_eq!(ints(sim.execute(&give_back)), [1]);
    let p = sim.stream(&k.jobs).unwrap().pending(GROUP, e).unwrap();
    assert_eq!((p.deliveries, p.consumer.as_str()), (1, "c2"));
}

#[test]
fn events_read_after_a_cursor_and_trim_by_age() {
    let mut sim = Sim::new(inst(1000));
    sim.execute(&CommandKind::EnsureGroup { keys: keys() });
    enqueue(&mut sim, vec![job("a", None), job("b", None)]);
    let got = read(&mut sim, "c1", 10);
    let complete = |entry, job, min_event_ms| CommandKind::Complete {
        keys: keys(),
        min_event_ms,
        consumer: "c1".into(),
        items: vec![settle(entry, job)],
    };
    sim.execute(&complete(got[0].id, "a", 0));
    let events = |after| CommandKind::ReadEvents {
        keys: keys(),
        producer: pk(),
        after,
        count: 10,
        block_ms: None,
    };
    let first = decode_read(sim.execute(&events(EntryId::ZERO))).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        decode_read(sim.execute(&events(first[0].id))).unwrap(),
        vec![]
    );
    sim.set_time(inst(5000));
    sim.execute(&complete(got[1].id, "b", 4000));
    let all = decode_read(sim.execute(&events(EntryId::ZERO))).unwrap();
    assert_eq!(all.len(), 1, "the old event was trimmed by MINID");
    assert_eq!(all[0].field(b"j"), Some(&b"b"[..]));
    let at = |cursor: EntryId, seen: &[u8]| CommandKind::AckEvents {
        keys: keys(),
        producer: pk(),
        token: "0".into(),
        through: Some(all[0].id),
        forget: vec![],
        check: Some((cursor, Arc::from(seen))),
    };
    let ack = |seen: &[u8]| at(all[0].id, seen);
    // Another event than the one read at the cursor (a failover gave its id again): no
    // trim, -1.
    assert_eq!(sim.execute(&ack(b"other")), Value::Int(-1));
    let v = all[0].field(b"v").unwrap().to_vec();
    assert_eq!(sim.execute(&ack(&v)), Value::Int(1));
    // Sent again: the cursor is gone, trimmed by the first (the stream's last id is past it).
    assert_eq!(sim.execute(&ack(&v)), Value::Int(0));
    // A cursor beyond the stream's last id: its tail was lost.
    assert_eq!(
        sim.execute(&at(EntryId::new(9_000, 0), b"")),
        Value::Int(-1)
    );
    assert_eq!(
        sim.execute(&CommandKind::Destroy { keys: keys() }),
        Value::Int(5),
        "jobs, ids, owners, producers, events:p"
    );
    assert!(sim.keys().is_empty());
}

#[test]
fn network_faults_are_seeded() {
    let faults = Faults {
        lose_command: 300,
        lose_reply: 300,
        ..Faults::default()
    };
    let run = |seed| {
        let mut net = Network::new(Sim::new(inst(1)), faults, seed);
        let cmd = Command {
            op: crate::command::OpId(1),
            kind: CommandKind::EnsureGroup { keys: keys() },
            replicas: None,
        };
        (0..50)
            .map(|_| matches!(net.send(&cmd), Reply::Unknown | Reply::NotSent))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(3), run(3));
    let lost = run(3).iter().filter(|u| **u).count();
    assert!((10..40).contains(&lost), "{lost} of 50 lost");
}

#[test]
fn settled_entries_are_trimmed_behind_the_oldest_running_job() {
    let mut sim = Sim::new(inst(10_000));
    sim.execute(&CommandKind::EnsureGroup { keys: keys() });
    let k = keys();
    let ids = |sim: &Sim| -> Vec<EntryId> {
        sim.stream(&k.jobs)
            .map(|s| s.entries.keys().copied().collect())
            .unwrap_or_default()
    };
    enqueue(&mut sim, vec![job("slow", None), job("a", None)]);
    sim.set_time(inst(10_000 + TRIM_WINDOW_MS + 1));
    enqueue(&mut sim, vec![job("b", None)]);
    let got = read(&mut sim, "c1", 3);
    let (slow, a, b) = (got[0].id, got[1].id, got[2].id);
    let complete = |entry, job: &str| CommandKind::Complete {
        keys: keys(),
        min_event_ms: 0,
        consumer: "c1".into(),
        items: vec![settle(entry, job)],
    };
    // `slow` still runs: `a` (within the window) waits for the trim, `b` (beyond) goes now.
    assert_eq!(ints(sim.execute(&complete(a, "a"))), [1]);
    assert_eq!(ids(&sim), [slow, a, b]);
    assert_eq!(ints(sim.execute(&complete(b, "b"))), [1]);
    assert_eq!(ids(&sim), [slow, a]);
    let stats = stats_of(&mut sim);
    assert_eq!(stats[..2], [1, 1], "done entries are not counted as jobs");
    // The oldest job ends: everything up to the last delivered entry goes.
    assert_eq!(ints(sim.execute(&complete(slow, "slow"))), [1]);
    assert_eq!(ids(&sim), []);
    // Waiting entries are never trimmed.
    enqueue(&mut sim, vec![job("c", None), job("d", None)]);
    let c = read(&mut sim, "c1", 1)[0].id;
    assert_eq!(ints(sim.execute(&complete(c, "c"))), [1]);
    assert_eq!(ids(&sim).len(), 1);
    let stats = stats_of(&mut sim);
    assert_eq!(stats[..2], [1, 0]);
}

#[test]
fn huge_last_delivered_ids_trim_as_the_script_does() {
    let mut sim = Sim::new(inst(1000));
    sim.execute(&CommandKind::EnsureGroup { keys: keys() });
    enqueue(&mut sim, vec![job("a", None), job("b", None)]);
    let got = read(&mut sim, "c1", 10);
    let k = keys();
    // As after XGROUP SETID to an id with a 20-digit sequence number.
    let huge = EntryId::new(1000, u64::MAX - 1);
    match sim.db.get_mut(&k.jobs) {
        Some(Data::Stream(s)) => s.groups.get_mut(GROUP).unwrap().last_delivered = huge,
        _ => panic!("stream"),
    }
    let complete = CommandKind::Complete {
        keys: keys(),
        min_event_ms: 0,
        consumer: "c1".into(),
        items: vec![settle(got[0].id, "a"), settle(got[1].id, "b")],
    };
    assert_eq!(ints(sim.execute(&complete)), [1, 1]);
    // The floor is the last delivered id itself (no seq + 1 beyond 15 digits): both
    // entries are below it and go.
    assert_eq!(sim.stream(&k.jobs).unwrap().entries.len(), 0);
}
