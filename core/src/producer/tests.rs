//! The producer machine against the model, by hand.

use super::*;
use crate::keys::{Key, KeyId, Keyring};
use crate::random::SeededRandom;
use crate::sim::Sim;
#[allow(unused_imports)]
use crate::time::Duration;
use crate::time::testing::{inst, ms_of};
use crate::worker::{Worker, WorkerConfig, WorkerEvent};

const T0: u64 = 1_700_000_000_000;

fn sealer() -> Sealer {
    Sealer::new(Keyring::new(Key::from_bytes(KeyId(1), &[1; 32])))
}

/// A producer whose registration Redis confirmed (see [`model`]: the tests' model holds it).
fn producer(cfg: impl FnOnce(ProducerConfig) -> ProducerConfig) -> Producer {
    seeded_producer(cfg, 0)
}

/// [`producer`], its generator seeded with `seed`.
fn seeded_producer(cfg: impl FnOnce(ProducerConfig) -> ProducerConfig, seed: u64) -> Producer {
    // Acks at once: the tests of the ack's delay set theirs.
    let cfg = cfg(ProducerConfig::new("q")
        .block(None)
        .ack_delay(Duration::ZERO));
    let mut p = Producer::new(cfg, sealer(), inst(T0), &mut SeededRandom::new(seed)).unwrap();
    if !p.is_registered() {
        let cmd = p.poll_command().unwrap();
        assert!(matches!(cmd.kind, CommandKind::Register { .. }), "{cmd:?}");
        p.handle_reply(inst(T0), cmd.op, Reply::Value(Value::Int(1)))
            .unwrap();
    }
    p
}

/// The model at `now`, with producer `p` of queue `q` registered (as [`producer`] assumes).
fn model(now: u64) -> Sim {
    let mut sim = Sim::new(inst(now));
    let keys = Arc::new(QueueKeys::new("dl", "q").unwrap());
    let reg = CommandKind::Register {
        token: "0".into(),
        claim: true,
        producer: Arc::new(ProducerKeys::new(&keys, "p").unwrap()),
        keys,
        now_ms: now,
        until_ms: now + 3_600_000,
    };
    assert_eq!(sim.execute(&reg), Value::Int(1));
    sim
}

fn job(id: &str) -> AddJob {
    AddJob {
        id: Some(JobId::from(id)),
        payload: id.as_bytes().to_vec(),
        ..AddJob::default()
    }
}

/// Sends every command to `sim`, feeds the replies, returns the events.
fn drive(p: &mut Producer, sim: &mut Sim) -> Vec<ProducerEvent> {
    drive_seen(p, sim).0
}

/// A worker that completes everything it gets with `ok:<payload>`.
fn work(sim: &mut Sim, rng: &mut SeededRandom) {
    work_with(sim, rng, |job| Ok([&b"ok:"[..], &job.payload].concat()));
}

fn completed(events: &[ProducerEvent]) -> Vec<(String, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            ProducerEvent::Completed { job, result, .. } => Some((job.0.clone(), result.clone())),
            _ => None,
        })
        .collect()
}

fn fresh(id: &str) -> AddJob {
    AddJob {
        generated_id: true,
        ..job(id)
    }
}

fn paused_adds(events: &[ProducerEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ProducerEvent::AddPaused { job } => Some(job.0.clone()),
            _ => None,
        })
        .collect()
}

fn accepted(events: &[ProducerEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ProducerEvent::Accepted { job, .. } => Some(job.0.clone()),
            _ => None,
        })
        .collect()
}

/// A pause held in Redis: adds through the script are refused (`AddPaused`, nothing
/// queued) whichever producer adds; a producer that did not know learns it from its
/// unchecked add (queued all the same: no worker starts it) and checks its next adds; an
/// add whose id is marked is answered as queued; resume takes adds again.
#[test]
fn a_pause_in_redis_refuses_every_producers_adds() {
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    let mut other = producer(|c| c.producer("p2"));
    let keys = p.keys().clone();
    assert_eq!(ProducerError::QueueClosed.to_string(), "queue closed");

    p.add(inst(T0), fresh("a")).unwrap();
    assert_eq!(accepted(&drive(&mut p, &mut sim)), ["a"]);
    let request = p.set_paused(inst(T0), true);
    assert!(p.is_paused());
    let events = drive(&mut p, &mut sim);
    assert!(
        events.contains(&ProducerEvent::PauseSet {
            request,
            paused: true
        }),
        "{events:?}"
    );
    assert!(sim.get(&keys.paused).is_some());
    // This producer checks: refused, nothing of it in Redis.
    p.add(inst(T0), fresh("b")).unwrap();
    p.add(inst(T0), job("a")).unwrap();
    let events = drive(&mut p, &mut sim);
    assert_eq!(paused_adds(&events), ["b"]);
    assert_eq!(accepted(&events), ["a"], "a marked id is queued already");
    assert_eq!(sim.stream(&keys.jobs).map(|s| s.entries.len()), Some(1));

    // The other one did not know: its unchecked add lands, and tells it.
    assert!(!other.is_paused());
    other.add(inst(T0), fresh("c")).unwrap();
    assert_eq!(accepted(&drive(&mut other, &mut sim)), ["c"]);
    assert!(other.is_paused());
    other.add(inst(T0), fresh("d")).unwrap();
    assert_eq!(paused_adds(&drive(&mut other, &mut sim)), ["d"]);

    // Stats tell when it was paused.
    other.request_stats();
    let stats = drive(&mut other, &mut sim)
        .into_iter()
        .find_map(|e| match e {
            ProducerEvent::Stats(s) => Some(s),
            _ => None,
        });
    assert_eq!(stats.map(|s| s.paused_at), Some(Some(T0)));

    // Resumed by the first: the other's checked add is taken, and it adds unchecked again.
    p.set_paused(inst(T0 + 1), false);
    drive(&mut p, &mut sim);
    assert!(sim.get(&keys.paused).is_none());
    other.add(inst(T0), fresh("d")).unwrap();
    assert_eq!(accepted(&drive(&mut other, &mut sim)), ["d"]);
    assert!(!other.is_paused());
    other.add(inst(T0), fresh("e")).unwrap();
    let cmd = other.poll_command().unwrap();
    assert!(
        matches!(cmd.kind, CommandKind::Enqueue { fresh: true, .. }),
        "{cmd:?}"
    );
}

#[test]
fn adds_batch_by_count_and_bytes_and_push_back_when_full() {
    let mut p = producer(|mut c| {
        c.max_batch_jobs = 3;
        c.max_batch_bytes = 1_000;
        c.max_pending = 8;
        c.read_events = false;
        c
    });
    for i in 0..7 {
        p.add(inst(T0), job(&format!("j{i}"))).unwrap();
    }
    let big = AddJob {
        payload: vec![7; 900],
        ..job("big")
    };
    p.add(inst(T0), big).unwrap();
    assert_eq!(
        p.add(inst(T0), job("one-too-many")),
        Err(ProducerError::Backpressure(8))
    );
    let sizes: Vec<usize> = std::iter::from_fn(|| p.poll_command())
        .map(|c| match c.kind {
            CommandKind::Enqueue { jobs, .. } => jobs.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sizes,
        [3, 3, 1, 1],
        "by count, then the large job alone by bytes"
    );
}

#[test]
fn an_unknown_add_is_sent_again_and_never_enqueued_twice() {
    let mut rng = SeededRandom::new(3);
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    p.add(inst(T0), job("a")).unwrap();
    let cmd = p.poll_command().unwrap();
    sim.execute(&cmd.kind); // it ran, but the reply is lost
    p.handle_reply(inst(T0), cmd.op, Reply::Unknown).unwrap();
    assert_eq!(p.pending_adds(), 1);
    // The job completes before the resend goes out.
    work(&mut sim, &mut rng);
    sim.set_time(inst(T0 + 1_000));
    p.handle_timeout(inst(T0 + 1_000)).unwrap();
    let events = drive(&mut p, &mut sim);
    assert!(events.contains(&ProducerEvent::Accepted {
        job: JobId::from("a"),
        status: AddStatus::AlreadyQueued
    }));
    assert_eq!(completed(&events), [("a".to_owned(), b"ok:a".to_vec())]);
    // Nothing ran twice, and once the add resolved the marker went with the next ack.
    let keys = p.keys().clone();
    assert_eq!(sim.stream(&keys.jobs).unwrap().entries.len(), 0);
    sim.set_time(inst(T0 + 2_000));
    p.handle_timeout(inst(T0 + 2_000)).unwrap();
    drive(&mut p, &mut sim);
    assert!(sim.get(&keys.ids).is_none());
    assert!(sim.stream(&keys.events_of("p")).unwrap().entries.is_empty());
}

#[test]
fn results_written_while_away_reach_a_replacement() {
    let mut rng = SeededRandom::new(4);
    let mut sim = model(T0);
    let mut first = producer(|c| c);
    for id in ["a", "b", "c"] {
        first.add(inst(T0), job(id)).unwrap();
    }
    drive(&mut first, &mut sim);
    let cursor = first.cursor();
    drop(first); // the producer goes away; workers go on
    work(&mut sim, &mut rng);
    let mut second = producer(|mut c| {
        c.events_after = cursor;
        c
    });
    sim.set_time(inst(sim.now().unix_ms() + 100));
    let mut got = completed(&drive(&mut second, &mut sim));
    got.sort();
    let want: Vec<(String, Vec<u8>)> = ["a", "b", "c"]
        .iter()
        .map(|id| (id.to_string(), format!("ok:{id}").into_bytes()))
        .collect();
    assert_eq!(got, want);
    assert!(second.cursor() > cursor);
}

#[test]
fn unreadable_events_are_reported_and_skipped() {
    let mut rng = SeededRandom::new(5);
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    let keys = p.keys().clone();
    let garbage = sim
        .xadd_raw(&keys.events_of("p"), vec![(b"j".to_vec(), b"x".to_vec())])
        .unwrap();
    let forged = sim
        .xadd_raw(
            &keys.events_of("p"),
            vec![
                (b"j".to_vec(), b"x".to_vec()),
                (b"k".to_vec(), b"c".to_vec()),
                (b"a".to_vec(), b"1".to_vec()),
                (b"v".to_vec(), b"DL\x01\x00not sealed by us".to_vec()),
            ],
        )
        .unwrap();
    p.add(inst(T0), job("a")).unwrap();
    let mut events = drive(&mut p, &mut sim);
    work(&mut sim, &mut rng);
    p.handle_timeout(inst(sim.now().unix_ms())).unwrap();
    events.extend(drive(&mut p, &mut sim));
    let bad: Vec<EntryId> = events
        .iter()
        .filter_map(|e| match e {
            ProducerEvent::BadEvent { event, .. } => Some(*event),
            _ => None,
        })
        .collect();
    assert_eq!(bad, [garbage, forged]);
    assert_eq!(completed(&events).len(), 1, "the good result still arrives");
}

#[test]
fn refused_adds_fail_visibly() {
    let mut p = producer(|c| c);
    p.add(inst(T0), job("a")).unwrap();
    let cmd = p.poll_command().unwrap();
    let oom = Value::Error("OOM command not allowed when used memory > 'maxmemory'.".into());
    p.handle_reply(inst(T0), cmd.op, Reply::Value(oom)).unwrap();
    assert!(matches!(
        p.poll_event(),
        Some(ProducerEvent::AddFailed { job, error }) if job.0 == "a" && error.starts_with("OOM")
    ));
    assert_eq!(p.pending_adds(), 0);
    // A transient error is retried instead.
    p.add(inst(T0), job("b")).unwrap();
    let cmd = p.poll_command().unwrap();
    let loading = Value::Error("LOADING Redis is loading the dataset in memory".into());
    p.handle_reply(inst(T0), cmd.op, Reply::Value(loading))
        .unwrap();
    assert_eq!(p.pending_adds(), 1);
    assert_eq!(
        p.handle_reply(inst(T0), cmd.op, Reply::Unknown),
        Err(ProducerError::UnknownOp(cmd.op))
    );
}

/// Destroy never races an add: unsent adds fail at once, the delete waits for adds in
/// flight, and an add whose outcome was unknown is failed, not sent after the delete.
#[test]
fn destroy_waits_for_adds_in_flight_and_sends_none_after() {
    let mut sim = model(T0);
    let mut p = producer(|mut c| {
        c.read_events = false;
        c.max_batch_jobs = 1;
        c
    });
    for id in ["a", "b", "c"] {
        p.add(inst(T0), job(id)).unwrap();
    }
    // "a" and "b" go out (two commands in flight); "c" too: one job per batch.
    let first = p.poll_command().expect("enqueue a");
    let second = p.poll_command().expect("enqueue b");
    p.destroy();
    // Not yet sent: fails now. In flight: the delete waits for them.
    let mut failed: Vec<String> = Vec::new();
    while let Some(ev) = p.poll_event() {
        if let ProducerEvent::AddFailed { job, error } = ev {
            assert_eq!(error, "queue destroyed");
            failed.push(job.0);
        }
    }
    assert_eq!(failed, ["c"]);
    assert!(
        p.poll_command().is_none(),
        "no delete while adds are in flight"
    );
    // "a" lands; "b"'s outcome is unknown: failed, not sent again.
    let v = sim.execute(&first.kind);
    p.handle_reply(inst(T0), first.op, Reply::Value(v)).unwrap();
    p.handle_reply(inst(T0), second.op, Reply::Unknown).unwrap();
    let mut failed = Vec::new();
    while let Some(ev) = p.poll_event() {
        if let ProducerEvent::AddFailed { job, .. } = ev {
            failed.push(job.0);
        }
    }
    assert_eq!(failed, ["b"]);
    let delete = p.poll_command().expect("the delete");
    assert!(matches!(delete.kind, CommandKind::Destroy { .. }));
    assert!(p.poll_command().is_none(), "nothing after the delete");
    let v = sim.execute(&delete.kind);
    p.handle_reply(inst(T0), delete.op, Reply::Value(v))
        .unwrap();
    assert!(sim.keys().is_empty(), "{:?}", sim.keys());
}

#[test]
fn stats_and_destroy() {
    let mut sim = model(T0);
    let mut p = producer(|mut c| {
        c.read_events = false;
        c
    });
    let keys = Arc::new(QueueKeys::new("dl", "q").unwrap());
    sim.execute(&CommandKind::EnsureGroup { keys: keys.clone() });
    p.add(inst(T0), job("a")).unwrap();
    p.add(
        inst(T0),
        AddJob {
            delay: Duration::from_millis(5_000),
            ..job("b")
        },
    )
    .unwrap();
    drive(&mut p, &mut sim);
    p.request_stats();
    let events = drive(&mut p, &mut sim);
    let waiting = QueueStats {
        jobs: 1,
        pending: 0,
        delayed: 1,
        dead: 0,
        events: 0,
        workers: 0,
        oldest_waiting: Some(EntryId::new(T0, 0)),
        oldest_running: None,
        paused_at: None,
    };
    assert!(
        events.contains(&ProducerEvent::Stats(waiting)),
        "{events:?}"
    );
    assert_eq!(
        waiting.oldest_waiting_age(inst(T0 + 250)),
        Duration::from_millis(250)
    );
    // A worker takes it: running, and nothing waits.
    let read = CommandKind::Read {
        keys,
        consumer: "c".into(),
        count: 1,
        block_ms: None,
    };
    sim.set_time(inst(T0 + 100));
    assert!(matches!(sim.execute(&read), Value::Array(_)));
    p.request_stats();
    let events = drive(&mut p, &mut sim);
    let running = QueueStats {
        pending: 1,
        oldest_waiting: None,
        oldest_running: Some(EntryId::new(T0, 0)),
        ..waiting
    };
    assert!(
        events.contains(&ProducerEvent::Stats(running)),
        "{events:?}"
    );
    assert_eq!(
        running.oldest_running_age(inst(T0 + 100)),
        Duration::from_millis(100)
    );
    p.destroy();
    let events = drive(&mut p, &mut sim);
    assert!(events.contains(&ProducerEvent::Destroyed));
    assert!(sim.keys().is_empty(), "{:?}", sim.keys());
    assert_eq!(p.add(inst(T0), job("c")), Err(ProducerError::QueueClosed));
}

#[test]
fn unsent_adds_can_be_withdrawn() {
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    let generated = |id: &str| AddJob {
        generated_id: true,
        ..job(id)
    };
    p.add(inst(T0), generated("a")).unwrap();
    p.add(inst(T0), generated("b")).unwrap();
    assert_eq!(p.withdraw(&JobId::from("a")), Withdrawal::NotSent);
    assert_eq!(p.withdraw(&JobId::from("a")), Withdrawal::Answered, "once");
    assert_eq!(p.pending_adds(), 1);
    // A caller-chosen id, never sent, may still be in Redis (an earlier add, here or in
    // another process): not withdrawn as "not queued".
    p.add(inst(T0), job("mine")).unwrap();
    assert_eq!(p.withdraw(&JobId::from("mine")), Withdrawal::Unconfirmed);
    assert_eq!(p.pending_adds(), 2);
    let events = drive(&mut p, &mut sim);
    let accepted: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ProducerEvent::Accepted { job, .. } => Some(job.0.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(accepted, ["b", "mine"]);
    assert_eq!(
        p.withdraw(&JobId::from("b")),
        Withdrawal::Answered,
        "sent and answered already"
    );
}

#[test]
fn an_add_sent_once_is_never_withdrawn_as_not_queued() {
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    p.add(inst(T0), job("a")).unwrap();
    let add = p.poll_command().expect("the add");
    assert_eq!(
        p.withdraw(&JobId::from("a")),
        Withdrawal::Unconfirmed,
        "in flight"
    );
    // It ran, but the reply was lost: the job is in Redis, and back among the unsent.
    sim.execute(&add.kind);
    p.handle_reply(inst(T0), add.op, Reply::Unknown).unwrap();
    assert!(!p.is_reachable());
    assert_eq!(p.pending_adds(), 1);
    assert_eq!(
        p.withdraw(&JobId::from("a")),
        Withdrawal::Unconfirmed,
        "sent once: it may be queued"
    );
    assert_eq!(p.pending_adds(), 1, "still being sent");
    // A second add of the same id, never sent, is not withdrawn as not queued either: the
    // job may be in Redis through the first.
    p.add(inst(T0), job("a")).unwrap();
    assert_eq!(p.withdraw(&JobId::from("a")), Withdrawal::Unconfirmed);
    // Redis answers again: the resend finds the job, once.
    let events = drive(&mut p, &mut sim);
    let accepted = events
        .iter()
        .filter(|e| matches!(e, ProducerEvent::Accepted { .. }))
        .count();
    assert_eq!(accepted, 2, "{events:?}");
    assert!(p.is_reachable());
    assert_eq!(sim.stream(&p.keys().jobs).map(|s| s.entries.len()), Some(1));
}

#[test]
fn after_an_unknown_outcome_a_ping_finds_redis_back_and_any_reply_ends_the_backoff() {
    let mut sim = model(T0);
    let mut p = producer(|c| c.block(None));
    p.add(inst(T0), job("a")).unwrap();
    // Redis is away for a while: every add fails and its backoff grows to the cap, while
    // an events read is still out.
    let mut now = T0;
    let mut read = None;
    for _ in 0..10 {
        p.handle_timeout(inst(now)).unwrap();
        while let Some(cmd) = p.poll_command() {
            match cmd.kind {
                // The events read, or (after the first failure) the check of the events
                // stream's tail that goes in its place.
                CommandKind::ReadEvents { .. } | CommandKind::EventsTail { .. }
                    if read.is_none() =>
                {
                    read = Some(cmd)
                }
                _ => p.handle_reply(inst(now), cmd.op, Reply::Unknown).unwrap(),
            }
        }
        while p.poll_event().is_some() {}
        now = ms_of(p.poll_timeout()).expect("a resend is scheduled");
    }
    assert!(!p.is_reachable());
    let backoff = now - T0;
    assert!(backoff >= 2_000, "{backoff}");
    // The read comes back from Redis: the add goes at once, not at the end of its backoff.
    let read = read.expect("the read");
    let at = now - 900;
    let reply = sim.execute(&read.kind);
    p.handle_reply(inst(at), read.op, Reply::Value(reply))
        .unwrap();
    assert!(p.is_reachable());
    let cmds: Vec<_> = std::iter::from_fn(|| p.poll_command()).collect();
    assert!(
        cmds.iter()
            .any(|c| matches!(c.kind, CommandKind::Enqueue { .. })),
        "{cmds:?}"
    );
    // With nothing to send and Redis unreachable, the producer pings.
    let mut q = producer(|c| c.block(None));
    let read = q.poll_command().expect("the events read");
    q.handle_reply(inst(T0), read.op, Reply::Unknown).unwrap();
    let t = ms_of(q.poll_timeout()).expect("a timer to ask again");
    q.handle_timeout(inst(t)).unwrap();
    let cmds: Vec<_> = std::iter::from_fn(|| q.poll_command()).collect();
    assert!(
        cmds.iter().any(|c| matches!(c.kind, CommandKind::Ping)),
        "{cmds:?}"
    );
    for c in cmds {
        let reply = sim.execute(&c.kind);
        q.handle_reply(inst(t), c.op, Reply::Value(reply)).unwrap();
    }
    assert!(q.is_reachable());
}

#[test]
fn fresh_adds_go_unchecked_once_and_through_the_script_after_an_unknown_outcome() {
    let mut sim = model(T0);
    sim.execute(&CommandKind::EnsureGroup {
        keys: Arc::new(QueueKeys::new("dl", "q").unwrap()),
    });
    let mut p = producer(|c| c);
    let fresh_job = |n: u8| AddJob {
        payload: vec![n],
        ..AddJob::default()
    };
    // Generated ids (by the machine, or by the caller with `generated_id`) due now are
    // fresh; a caller's id or a delay needs the check. Batches never mix the two.
    p.add(inst(T0), fresh_job(1)).unwrap();
    let given = AddJob {
        id: Some(JobId::generate(inst(T0), 42)),
        generated_id: true,
        ..fresh_job(2)
    };
    p.add(inst(T0), given).unwrap();
    p.add(inst(T0), job("chosen")).unwrap();
    p.add(
        inst(T0),
        AddJob {
            delay: Duration::from_millis(5),
            ..fresh_job(3)
        },
    )
    .unwrap();
    p.add(inst(T0), fresh_job(4)).unwrap();
    let cmds: Vec<Command> = std::iter::from_fn(|| p.poll_command()).collect();
    let shape: Vec<(usize, bool)> = cmds
        .iter()
        .filter_map(|c| match &c.kind {
            CommandKind::Enqueue { jobs, fresh, .. } => Some((jobs.len(), *fresh)),
            _ => None,
        })
        .collect();
    assert_eq!(shape, [(2, true), (2, false), (1, true)]);
    // The first fresh batch lands but its reply is lost: sent again, it goes through the
    // script, which finds both jobs queued.
    let first = &cmds[0];
    let v = sim.execute(&first.kind);
    // The pause, the markers, two entries, then the registration (`ZADD NX`, `ZREM`).
    assert!(
        matches!(&v, Value::Array(items) if items.len() == 6),
        "{v:?}"
    );
    p.handle_reply(inst(T0), first.op, Reply::Unknown).unwrap();
    for c in &cmds[1..] {
        let v = sim.execute(&c.kind);
        p.handle_reply(inst(T0), c.op, Reply::Value(v)).unwrap();
    }
    p.handle_timeout(inst(T0 + 60_000)).unwrap();
    let resend = p.poll_command().unwrap();
    let CommandKind::Enqueue { jobs, fresh, .. } = &resend.kind else {
        panic!("{resend:?}")
    };
    assert_eq!((jobs.len(), *fresh), (2, false));
    let v = sim.execute(&resend.kind);
    p.handle_reply(inst(T0), resend.op, Reply::Value(v))
        .unwrap();
    let statuses: Vec<AddStatus> = std::iter::from_fn(|| p.poll_event())
        .filter_map(|e| match e {
            ProducerEvent::Accepted { status, .. } => Some(status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses.len(), 5);
    assert_eq!(
        statuses[3..],
        [AddStatus::AlreadyQueued, AddStatus::AlreadyQueued],
        "{statuses:?}"
    );
    let jobs = sim.stream(&p.keys().jobs).unwrap().entries.len();
    assert_eq!(jobs, 4, "each job once (the delayed one waits)");
}

#[test]
fn a_failed_xadd_in_a_fresh_add_fails_that_job() {
    let mut p = producer(|c| c);
    let id = p.add(inst(T0), AddJob::default()).unwrap();
    let second = p.add(inst(T0), AddJob::default()).unwrap();
    let cmd = p.poll_command().unwrap();
    let reply = Value::Array(vec![
        Value::Int(0),
        Value::Int(2),
        Value::Error("OOM command not allowed".into()),
        Value::Bulk(b"1700000000000-0".to_vec()),
    ]);
    p.handle_reply(inst(T0), cmd.op, Reply::Value(reply))
        .unwrap();
    let events: Vec<ProducerEvent> = std::iter::from_fn(|| p.poll_event()).collect();
    assert_eq!(
        events,
        [
            ProducerEvent::AddFailed {
                job: id,
                error: "OOM command not allowed".into()
            },
            ProducerEvent::Accepted {
                job: second,
                status: AddStatus::Added(EntryId::new(T0, 0))
            },
        ]
    );
    assert_eq!(p.pending_adds(), 0);
}

#[test]
fn an_add_that_never_left_is_withdrawn_as_not_queued_and_stays_fresh() {
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    let id = JobId::generate(inst(T0), 7);
    let fresh = AddJob {
        id: Some(id.clone()),
        generated_id: true,
        ..job("x")
    };
    p.add(inst(T0), fresh).unwrap();
    let add = p.poll_command().expect("the add");
    p.handle_reply(inst(T0), add.op, Reply::NotSent).unwrap();
    assert!(!p.is_reachable());
    // Resent after the backoff, still as a fresh add (MULTI/EXEC): it never reached Redis.
    let t = ms_of(p.poll_timeout()).expect("resend timer");
    p.handle_timeout(inst(t)).unwrap();
    let again = p.poll_command().expect("resent");
    assert!(
        matches!(again.kind, CommandKind::Enqueue { fresh: true, .. }),
        "{again:?}"
    );
    p.handle_reply(inst(t), again.op, Reply::NotSent).unwrap();
    assert_eq!(p.withdraw(&id), Withdrawal::NotSent);
    assert_eq!(p.pending_adds(), 0);
    assert!(drive(&mut p, &mut sim).is_empty() || sim.stream(&p.keys().jobs).is_none());
}

#[test]
fn a_transient_error_reply_to_an_add_changes_nothing_about_it() {
    let mut p = producer(|c| c);
    let id = JobId::generate(inst(T0), 9);
    let add = AddJob {
        id: Some(id.clone()),
        generated_id: true,
        ..job("y")
    };
    p.add(inst(T0), add).unwrap();
    let cmd = p.poll_command().expect("the add");
    // Redis is loading its AOF after a restart: the transaction was refused whole.
    let loading = Value::Error("LOADING Redis is loading the dataset in memory".into());
    p.handle_reply(inst(T0), cmd.op, Reply::Value(loading))
        .unwrap();
    assert!(
        std::iter::from_fn(|| p.poll_event())
            .all(|e| !matches!(e, ProducerEvent::AddFailed { .. })),
        "a transient refusal does not fail the add"
    );
    let t = ms_of(p.poll_timeout()).expect("resend timer");
    p.handle_timeout(inst(t)).unwrap();
    let again = p.poll_command().expect("resent");
    assert!(matches!(
        again.kind,
        CommandKind::Enqueue { fresh: true, .. }
    ));
    p.handle_reply(inst(t), again.op, Reply::NotSent).unwrap();
    assert_eq!(p.withdraw(&id), Withdrawal::NotSent, "it never ran");
}

#[test]
fn an_empty_job_id_is_refused() {
    let mut p = producer(|c| c);
    assert_eq!(p.add(inst(T0), job("")), Err(ProducerError::EmptyJobId));
    assert_eq!(p.pending_adds(), 0);
    assert!(p.add(inst(T0), job("x")).is_ok());
}

/// A worker that answers each job with `f`: `Ok(result)` completes, `Err(reason)` fails it
/// (retried at once while attempts remain: 3).
fn work_with(
    sim: &mut Sim,
    rng: &mut SeededRandom,
    mut f: impl FnMut(&JobRecord) -> Result<Vec<u8>, String>,
) {
    use crate::retry::{Backoff, RetryPolicy};
    let wc = WorkerConfig::new("q", "w")
        .concurrency(50)
        .block(None)
        .retry(RetryPolicy::new(3, Backoff::None));
    let mut w = Worker::new(wc, sealer(), inst(sim.now().unix_ms()), &mut *rng).unwrap();
    for _ in 0..3 {
        while let Some(cmd) = w.poll_command() {
            let v = sim.execute(&cmd.kind);
            w.handle_reply(inst(sim.now().unix_ms()), cmd.op, Reply::Value(v))
                .unwrap();
            while let Some(ev) = w.poll_event() {
                if let WorkerEvent::Job(d) = ev {
                    match f(&d.job) {
                        Ok(r) => w.complete(inst(sim.now().unix_ms()), d.entry, &r).unwrap(),
                        Err(e) => w.fail(inst(sim.now().unix_ms()), d.entry, &e).unwrap(),
                    }
                }
            }
        }
        sim.set_time(inst(sim.now().unix_ms() + 100));
        w.handle_timeout(inst(sim.now().unix_ms())).unwrap();
    }
}

/// The events stream's entries as they are now (what a Redis reader can copy).
fn events_now(sim: &Sim, keys: &QueueKeys) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    sim.stream(&keys.events_of("p"))
        .map(|s| s.entries.values().cloned().collect())
        .unwrap_or_default()
}

fn with_field(fields: &[(Vec<u8>, Vec<u8>)], name: &[u8], value: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fields
        .iter()
        .map(|(k, v)| match k == name {
            true => (k.clone(), value.to_vec()),
            false => (k.clone(), v.clone()),
        })
        .collect()
}

fn bad_events(events: &[ProducerEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ProducerEvent::BadEvent { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// Security review, finding 2: a "failed, will retry" event relabelled as a dead letter,
/// or given another attempt number, or another instance, must not pass as an outcome.
#[test]
fn a_relabelled_kind_attempt_or_instance_is_a_bad_event_never_an_outcome() {
    let mut rng = SeededRandom::new(21);
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    let keys = p.keys().clone();
    p.add(inst(T0), job("a")).unwrap();
    drive(&mut p, &mut sim);
    // Attempt 1 fails (and will be retried); nothing else runs yet.
    let mut runs = 0;
    work_with(&mut sim, &mut rng, |_| {
        runs += 1;
        match runs {
            1 => Err("try again".into()),
            _ => Ok(b"late".to_vec()),
        }
    });
    let failed = events_now(&sim, &keys)
        .into_iter()
        .find(|f| f.contains(&(b"k".to_vec(), b"f".to_vec())))
        .expect("a retry event");
    // A Redis writer re-adds it three ways: as a dead letter, as attempt 2, and with
    // another instance id.
    let relabelled = [
        with_field(&failed, b"k", b"d"),
        with_field(&failed, b"a", b"2"),
        with_field(&failed, b"i", &[b'0'; 32]),
        with_field(&failed, b"k", b"c"),
    ];
    for forged in relabelled {
        sim.xadd_raw(&keys.events_of("p"), forged).unwrap();
    }
    sim.set_time(inst(sim.now().unix_ms() + 100));
    p.handle_timeout(inst(sim.now().unix_ms())).unwrap();
    let events = drive(&mut p, &mut sim);
    let dead = events
        .iter()
        .filter(|e| matches!(e, ProducerEvent::DeadLettered { .. }))
        .count();
    let failures = events
        .iter()
        .filter(|e| matches!(e, ProducerEvent::Failed { .. }))
        .count();
    assert_eq!(dead, 0, "a relabelled retry ended the job: {events:?}");
    assert_eq!(failures, 1, "{events:?}");
    assert_eq!(
        completed(&events),
        [("a".to_owned(), b"late".to_vec())],
        "the retry's own result, once: {events:?}"
    );
    assert_eq!(bad_events(&events).len(), 4, "{events:?}");
}

/// Security review, finding 2: a result captured from an earlier job with the same
/// caller-chosen id (ids like `<session>:<counter>` repeat after restarts) must not
/// resolve the new job.
#[test]
fn an_outcome_of_an_earlier_job_with_the_same_id_is_stale() {
    let mut rng = SeededRandom::new(22);
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    let keys = p.keys().clone();
    p.add(inst(T0), job("s:1")).unwrap();
    drive(&mut p, &mut sim);
    work_with(&mut sim, &mut rng, |_| {
        Ok(b"transfer 10 to alice: done".to_vec())
    });
    let old = events_now(&sim, &keys)
        .pop()
        .expect("the first job's result");
    sim.set_time(inst(sim.now().unix_ms() + 100));
    p.handle_timeout(inst(sim.now().unix_ms())).unwrap();
    assert_eq!(completed(&drive(&mut p, &mut sim)).len(), 1);
    // The id comes again, for a new job; before it runs, the old result is replayed.
    p.add(inst(sim.now().unix_ms()), job("s:1")).unwrap();
    let accepted = drive(&mut p, &mut sim);
    assert!(
        accepted.iter().any(|e| matches!(
            e,
            ProducerEvent::Accepted {
                status: AddStatus::Added(_),
                ..
            }
        )),
        "{accepted:?}"
    );
    sim.xadd_raw(&keys.events_of("p"), old).unwrap();
    sim.set_time(inst(sim.now().unix_ms() + 100));
    p.handle_timeout(inst(sim.now().unix_ms())).unwrap();
    let events = drive(&mut p, &mut sim);
    assert!(
        completed(&events).is_empty(),
        "the old result resolved the new job: {events:?}"
    );
    let bad = bad_events(&events);
    assert!(bad.len() == 1 && bad[0].contains("stale"), "{bad:?}");
    // The new job's own result still comes.
    work_with(&mut sim, &mut rng, |_| Ok(b"new".to_vec()));
    sim.set_time(inst(sim.now().unix_ms() + 100));
    p.handle_timeout(inst(sim.now().unix_ms())).unwrap();
    let events = drive(&mut p, &mut sim);
    assert_eq!(completed(&events), [("s:1".to_owned(), b"new".to_vec())]);
}

/// A fresh add goes out; a second add of its id goes too and lands first; the first turns
/// out never to have left (`NotSent`). Its resend must go through the duplicate check, or
/// the job is queued twice. `withdrawn`: the first add's caller was told `Unconfirmed` in
/// between (and re-added, as advised).
fn a_re_add_lands_before_a_fresh_add_that_never_left(withdrawn: bool, seed: u64) {
    let mut sim = model(T0);
    let mut p = seeded_producer(|c| c, seed);
    let jobs = p.keys().jobs.clone();
    let id = p
        .add(
            inst(T0),
            AddJob {
                payload: b"x".to_vec(),
                ..AddJob::default()
            },
        )
        .unwrap();
    let first = p.poll_command().expect("the fresh add");
    assert!(matches!(
        first.kind,
        CommandKind::Enqueue { fresh: true, .. }
    ));
    if withdrawn {
        // The caller's wait ends while it is in flight: it may be in Redis.
        assert_eq!(p.withdraw(&id), Withdrawal::Unconfirmed);
    }
    p.add(inst(T0), job(&id.0)).unwrap();
    let readd = p.poll_command().expect("the re-add");
    let v = sim.execute(&readd.kind);
    p.handle_reply(inst(T0), readd.op, Reply::Value(v)).unwrap();
    // The first add never left after all.
    p.handle_reply(inst(T0), first.op, Reply::NotSent).unwrap();
    let t = ms_of(p.poll_timeout()).expect("resend timer");
    sim.set_time(inst(t));
    p.handle_timeout(inst(t)).unwrap();
    let again = p.poll_command().expect("resent");
    assert!(
        matches!(again.kind, CommandKind::Enqueue { fresh: false, .. }),
        "{again:?}"
    );
    let v = sim.execute(&again.kind);
    p.handle_reply(inst(t), again.op, Reply::Value(v)).unwrap();
    drive(&mut p, &mut sim);
    let entries = sim.stream(&jobs).map_or(0, |s| s.entries.len());
    assert_eq!(entries, 1, "the job was enqueued twice");
}

/// Found by the long chaos run: an add in flight when its caller was told `Unconfirmed`
/// came back `NotSent` and went again unchecked (fresh) after the caller's re-add of the
/// same id had landed: two entries, the job ran twice. Once the caller is told the add may
/// be in Redis, no add of that id goes unchecked.
#[test]
fn an_add_told_unconfirmed_never_goes_unchecked_after_a_re_add() {
    a_re_add_lands_before_a_fresh_add_that_never_left(true, 23);
}

/// Found by the engine model (a caller re-adding an id while its first add was out): the
/// same without a withdrawal (the job was queued twice, and its outcome, bound to the first
/// add's instance, refused as stale).
#[test]
fn a_fresh_add_never_goes_unchecked_once_its_id_is_added_again() {
    a_re_add_lands_before_a_fresh_add_that_never_left(false, 29);
}

#[test]
fn dead_letters_are_read_opened_revived_once_and_deleted() {
    let mut rng = SeededRandom::new(41);
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    p.add(inst(T0), job("doomed")).unwrap();
    drive(&mut p, &mut sim);
    // Every attempt fails: a dead letter.
    for _ in 0..3 {
        work_with(&mut sim, &mut rng, |_| Err("boom".into()));
    }
    later(&mut p, &mut sim);
    let events = drive(&mut p, &mut sim);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProducerEvent::DeadLettered { job, .. } if job.0 == "doomed")),
        "{events:?}"
    );
    // Garbage in the dead letters too (someone without the key).
    let keys = QueueKeys::new("dl", "q").unwrap();
    let garbage = sim
        .xadd_raw(&keys.dead, vec![(b"j".to_vec(), b"x".to_vec())])
        .unwrap();
    let asked = p.read_dead(EntryId::ZERO, 1);
    let events = drive(&mut p, &mut sim);
    let Some(ProducerEvent::DeadPage { request, page }) = events.first() else {
        panic!("{events:?}");
    };
    assert_eq!(*request, asked);
    assert_eq!(page.letters.len(), 1);
    assert!(page.next.is_some(), "a full page has a next");
    let letter = page.letters[0].clone();
    assert_eq!(letter.job, Some(JobId::from("doomed")));
    assert_eq!(letter.attempt, Some(3));
    assert_eq!(letter.reason.as_deref(), Ok("boom"));
    assert_eq!(letter.record.as_ref().map(|r| r.attempt), Ok(3));
    // The second page: the garbage, unreadable, and the end.
    p.read_dead(letter.entry, 10);
    let events = drive(&mut p, &mut sim);
    let Some(ProducerEvent::DeadPage { page: second, .. }) = events.first() else {
        panic!("{events:?}");
    };
    assert_eq!(second.next, None);
    assert_eq!(second.letters.len(), 1);
    assert_eq!(second.letters[0].entry, garbage);
    assert!(second.letters[0].record.is_err());
    // Revived: back as attempt 1, then it completes and its result comes here.
    let both = [letter.clone(), second.letters[0].clone()];
    p.revive(&both);
    let events = drive(&mut p, &mut sim);
    let Some(ProducerEvent::Revived { results, .. }) = events.first() else {
        panic!("{events:?}");
    };
    assert!(matches!(results[0], (e, Revival::Queued(_)) if e == letter.entry));
    assert_eq!(results[1], (garbage, Revival::Unreadable));
    let mut attempts = Vec::new();
    work_with(&mut sim, &mut rng, |job| {
        attempts.push(job.attempt);
        Ok(b"second life".to_vec())
    });
    assert_eq!(attempts, [1]);
    later(&mut p, &mut sim);
    let events = drive(&mut p, &mut sim);
    assert!(events.iter().any(|e| matches!(e,
        ProducerEvent::Completed { job, result, .. } if job.0 == "doomed" && result == b"second life")));
    // Reviving again finds the letter gone; deleting removes the garbage only.
    p.revive(&[letter]);
    let events = drive(&mut p, &mut sim);
    assert!(
        matches!(events.first(), Some(ProducerEvent::Revived { results, .. }) if results[0].1 == Revival::Gone)
    );
    p.delete_dead(&[garbage, EntryId::new(1, 1)]);
    let events = drive(&mut p, &mut sim);
    assert!(matches!(
        events.first(),
        Some(ProducerEvent::DeadDeleted { deleted: 1, .. })
    ));
    assert!(sim.stream(&keys.dead).unwrap().entries.is_empty());
}

#[test]
fn a_revive_whose_job_lives_again_leaves_the_letter_and_an_unknown_outcome_resends() {
    let mut rng = SeededRandom::new(42);
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    p.add(inst(T0), job("twice")).unwrap();
    drive(&mut p, &mut sim);
    for _ in 0..3 {
        work_with(&mut sim, &mut rng, |_| Err("boom".into()));
    }
    drive(&mut p, &mut sim);
    p.read_dead(EntryId::ZERO, 10);
    let events = drive(&mut p, &mut sim);
    let Some(ProducerEvent::DeadPage { page, .. }) = events.first() else {
        panic!("{events:?}");
    };
    let letter = page.letters[0].clone();
    // The job is added again (a caller) before the revive.
    p.add(inst(T0), job("twice")).unwrap();
    drive(&mut p, &mut sim);
    // The revive runs but its reply is lost: sent again, it answers for the first run.
    p.revive(std::slice::from_ref(&letter));
    let cmd = p.poll_command().unwrap();
    let first = sim.execute(&cmd.kind);
    assert_eq!(first, Value::Array(vec![Value::Int(-1)]), "the job lives");
    p.handle_reply(inst(T0), cmd.op, Reply::Unknown).unwrap();
    sim.set_time(inst(T0 + 2_000));
    p.handle_timeout(inst(T0 + 2_000)).unwrap();
    let events = drive(&mut p, &mut sim);
    assert!(events.iter().any(|e| matches!(e,
        ProducerEvent::Revived { results, .. } if results[0].1 == Revival::AlreadyQueued)));
    assert_eq!(sim.stream(&p.keys().dead).unwrap().entries.len(), 1);
}

/// Time passes for the producer and the model (past the producer's poll interval).
fn later(p: &mut Producer, sim: &mut Sim) {
    let now = sim.now().unix_ms() + 2_000;
    sim.set_time(inst(now));
    p.handle_timeout(inst(now)).unwrap();
}

fn instance(token: &str) -> Producer {
    let mut cfg = ProducerConfig::new("q")
        .block(None)
        .ack_delay(Duration::ZERO);
    cfg.token = token.into();
    Producer::new(cfg, sealer(), inst(T0), &mut SeededRandom::new(0)).unwrap()
}

#[test]
fn a_second_instance_under_the_same_id_takes_it_over_and_the_first_is_told() {
    let mut rng = SeededRandom::new(43);
    let mut sim = Sim::new(inst(T0));
    let mut a = instance("a");
    a.add(inst(T0), job("x")).unwrap();
    drive(&mut a, &mut sim);
    work(&mut sim, &mut rng);
    // A replacement starts while the first still runs: it claims the id.
    let mut b = instance("b");
    b.add(inst(T0), job("y")).unwrap();
    let mut seen = drive(&mut b, &mut sim);
    work(&mut sim, &mut rng);
    // The first reads y's result, and its acknowledgement is refused: it is told, it
    // trimmed nothing, and it takes no more adds.
    later(&mut a, &mut sim);
    let first = drive(&mut a, &mut sim);
    assert!(first.contains(&ProducerEvent::Superseded), "{first:?}");
    assert_eq!(a.add(inst(T0), job("z")), Err(ProducerError::Superseded));
    assert!(
        a.poll_command().is_none(),
        "a superseded instance sends nothing"
    );
    assert!(
        first
            .iter()
            .any(|e| matches!(e, ProducerEvent::Completed { job, .. } if job.0 == "y")),
        "{first:?}"
    );
    // The replacement gets every outcome: its predecessor's job's, and its own (which the
    // first saw too, but could not trim).
    later(&mut b, &mut sim);
    seen.extend(drive(&mut b, &mut sim));
    let got: Vec<String> = completed(&seen).into_iter().map(|(j, _)| j).collect();
    assert_eq!(got, ["x", "y"], "{seen:?}");
    assert!(!seen.contains(&ProducerEvent::Superseded));
}

#[test]
fn a_superseded_instance_learns_it_at_its_next_refresh_too() {
    let mut sim = Sim::new(inst(T0));
    let mut a = instance("a");
    a.add(inst(T0), job("x")).unwrap();
    drive(&mut a, &mut sim);
    let mut b = instance("b");
    b.add(inst(T0), job("y")).unwrap();
    drive(&mut b, &mut sim);
    // Nothing for the first to acknowledge; its refresh (a quarter of the ttl) is refused.
    let refresh = T0 + 3_600_000 / 4 + 1;
    sim.set_time(inst(refresh));
    a.handle_timeout(inst(refresh)).unwrap();
    let events = drive(&mut a, &mut sim);
    assert!(events.contains(&ProducerEvent::Superseded), "{events:?}");
    assert_eq!(ms_of(a.poll_timeout()), None, "no timer left");
}

#[test]
fn find_job_says_where_a_job_is_through_its_life() {
    let mut rng = SeededRandom::new(45);
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    let keys = Arc::new(QueueKeys::new("dl", "q").unwrap());
    sim.execute(&CommandKind::EnsureGroup { keys: keys.clone() });
    let ask = |p: &mut Producer, sim: &mut Sim, job: &str| -> JobPlace {
        p.find_job(&JobId::from(job), 100);
        let events = drive(p, sim);
        match events.into_iter().find_map(|e| match e {
            ProducerEvent::JobFound { place, .. } => Some(place),
            _ => None,
        }) {
            Some(place) => place,
            None => panic!("no answer"),
        }
    };
    assert_eq!(ask(&mut p, &mut sim, "nobody").state(), "unknown");
    p.add(inst(T0), job("a")).unwrap();
    let later_job = AddJob {
        delay: Duration::from_millis(5_000),
        ..job("b")
    };
    p.add(inst(T0), later_job).unwrap();
    drive(&mut p, &mut sim);
    let a = ask(&mut p, &mut sim, "a");
    assert_eq!((a.state(), a.marker.as_deref()), ("waiting", Some("p")));
    let b = ask(&mut p, &mut sim, "b");
    assert_eq!((b.state(), b.delayed_until), ("delayed", Some(T0 + 5_000)));
    // A worker takes a: running, on its consumer, delivered once.
    let read = CommandKind::Read {
        keys: keys.clone(),
        consumer: "c1".into(),
        count: 1,
        block_ms: None,
    };
    sim.execute(&read);
    let a = ask(&mut p, &mut sim, "a");
    let (_, consumer, deliveries) = a.running.clone().expect("running");
    assert_eq!(
        (a.state(), consumer.as_str(), deliveries),
        ("running", "c1", 1)
    );
    // A job that died: its dead letter and its attempt.
    for _ in 0..3 {
        work_with(&mut sim, &mut rng, |_| Err("boom".into()));
    }
    sim.set_time(inst(T0 + 60_000));
    for _ in 0..3 {
        work_with(&mut sim, &mut rng, |_| Err("boom".into()));
    }
    let dead = ask(&mut p, &mut sim, "b");
    assert_eq!(dead.state(), "dead", "{dead:?}");
    assert_eq!(dead.dead.map(|(_, a)| a), Some(Some(3)));
}

#[test]
fn a_delayed_job_is_promoted_or_withdrawn_by_its_producer_only() {
    let mut rng = SeededRandom::new(46);
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    let delayed = |id: &str| AddJob {
        delay: Duration::from_millis(60_000),
        ..job(id)
    };
    p.add(inst(T0), delayed("soon")).unwrap();
    p.add(inst(T0), delayed("never")).unwrap();
    drive(&mut p, &mut sim);
    let keys = QueueKeys::new("dl", "q").unwrap();
    // Promoted: in the work stream now, and it runs.
    p.promote_job(&JobId::from("soon"));
    let events = drive(&mut p, &mut sim);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProducerEvent::Promoted { entry: Some(_), .. })),
        "{events:?}"
    );
    assert_eq!(sim.stream(&keys.jobs).map(|s| s.entries.len()), Some(1));
    // Another producer (another marker) cannot withdraw it; its own producer can, once:
    // the lost reply's resend finds the tombstone and answers the same.
    let mut other = Producer::new(
        ProducerConfig::new("q").producer("other").block(None),
        sealer(),
        inst(T0),
        &mut rng,
    )
    .unwrap();
    other.withdraw_delayed(&JobId::from("never"));
    let events = drive(&mut other, &mut sim);
    assert!(events.iter().any(|e| matches!(
        e,
        ProducerEvent::DelayedWithdrawn {
            result: DelayedWithdrawal::NotOurs,
            ..
        }
    )));
    p.withdraw_delayed(&JobId::from("never"));
    let cmd = p.poll_command().unwrap();
    assert_eq!(sim.execute(&cmd.kind), Value::Int(1));
    p.handle_reply(inst(T0), cmd.op, Reply::Unknown).unwrap();
    sim.set_time(inst(T0 + 2_000));
    p.handle_timeout(inst(T0 + 2_000)).unwrap();
    let events = drive(&mut p, &mut sim);
    assert!(
        events.iter().any(|e| matches!(
            e,
            ProducerEvent::DelayedWithdrawn {
                result: DelayedWithdrawal::Withdrawn,
                ..
            }
        )),
        "{events:?}"
    );
    // Nothing of it is left once the producer forgot its tombstone; it never runs.
    assert!(sim.get(&keys.delayed).is_none());
    assert!(sim.get(&keys.payloads).is_none());
    let ids = sim.get(&keys.ids);
    assert!(
        !format!("{ids:?}").contains(&format!("{:?}", b"never")),
        "{ids:?}"
    );
    // Not delayed any more: a second withdrawal finds nothing.
    p.withdraw_delayed(&JobId::from("never"));
    let events = drive(&mut p, &mut sim);
    assert!(events.iter().any(|e| matches!(
        e,
        ProducerEvent::DelayedWithdrawn {
            result: DelayedWithdrawal::NotDelayed,
            ..
        }
    )));
}

/// A failover lost the tail of the producer's events stream, and the new master's clock is
/// behind: a job's result gets an id below the producer's cursor. After the connection
/// failure, the producer checks the stream's last id, finds it behind its cursor, reads
/// the stream again, and the result arrives (without the check it never would).
#[test]
fn a_results_stream_that_moved_backwards_is_read_again() {
    let mut rng = SeededRandom::new(21);
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    p.add(inst(T0), job("a")).unwrap();
    drive(&mut p, &mut sim);
    work(&mut sim, &mut rng);
    p.handle_timeout(inst(sim.now().unix_ms())).unwrap();
    let events = drive(&mut p, &mut sim);
    assert_eq!(completed(&events).len(), 1, "{events:?}");
    let before = p.cursor();
    // The failover: the events stream is gone, the new master's clock 10 s behind.
    assert!(sim.lose(&p.producer_keys().events));
    sim.set_time(inst(T0 - 10_000));
    p.add(inst(sim.now().unix_ms()), job("b")).unwrap();
    drive(&mut p, &mut sim);
    work(&mut sim, &mut rng);
    let tail = sim
        .stream(&p.producer_keys().events)
        .and_then(|s| s.entries.keys().next_back().copied())
        .expect("b's result");
    assert!(tail < before, "the new event sits below the cursor");
    // A plain read misses it.
    p.handle_timeout(inst(sim.now().unix_ms())).unwrap();
    assert!(completed(&drive(&mut p, &mut sim)).is_empty());
    // The connection fails once (the failover), then Redis answers.
    p.handle_timeout(inst(sim.now().unix_ms() + 60_000))
        .unwrap();
    let cmd = p.poll_command().expect("a command");
    p.handle_reply(inst(sim.now().unix_ms()), cmd.op, Reply::Unknown)
        .unwrap();
    let mut events = Vec::new();
    for _ in 0..20 {
        sim.set_time(inst(sim.now().unix_ms() + 1_000));
        p.handle_timeout(inst(sim.now().unix_ms())).unwrap();
        events.extend(drive(&mut p, &mut sim));
        if !completed(&events).is_empty() {
            break;
        }
    }
    assert_eq!(completed(&events), vec![("b".to_owned(), b"ok:b".to_vec())]);
    assert!(
        events.iter().any(
            |e| matches!(e, ProducerEvent::Trouble { message } if message.contains("moved back"))
        ),
        "{events:?}"
    );
}

/// A failover undid a settle after the producer had read its event; the worker sent the
/// settle again, and the same outcome (same job, same instance) is written once more. The
/// producer reported the job's end already: the copy is not a second outcome.
#[test]
fn a_final_outcome_written_again_is_reported_once() {
    let mut rng = SeededRandom::new(22);
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    p.add(inst(T0), job("a")).unwrap();
    drive(&mut p, &mut sim);
    work(&mut sim, &mut rng);
    let events_key = p.producer_keys().events.clone();
    let written = sim
        .stream(&events_key)
        .and_then(|s| s.entries.values().next().cloned())
        .expect("a's result");
    p.handle_timeout(inst(sim.now().unix_ms())).unwrap();
    let events = drive(&mut p, &mut sim);
    assert_eq!(completed(&events).len(), 1, "{events:?}");
    // Written again, at a later id.
    sim.set_time(inst(sim.now().unix_ms() + 10));
    sim.xadd_raw(&events_key, written).unwrap();
    let mut again = Vec::new();
    for _ in 0..5 {
        sim.set_time(inst(sim.now().unix_ms() + 1_000));
        p.handle_timeout(inst(sim.now().unix_ms())).unwrap();
        again.extend(drive(&mut p, &mut sim));
    }
    assert!(completed(&again).is_empty(), "{again:?}");
    assert!(
        !again
            .iter()
            .any(|e| matches!(e, ProducerEvent::BadEvent { .. })),
        "{again:?}"
    );
    // Read and trimmed all the same.
    assert_eq!(sim.stream(&events_key).map(|s| s.entries.len()), Some(0));
}

/// A second withdrawal of a delayed job, asked before the producer's ack removed the first
/// one's tombstone, finds it not delayed (the script alone would take it for a resend of
/// the first and answer `Withdrawn` again: a flake of the cluster scenario under load).
#[test]
fn a_second_withdrawal_before_the_tombstone_is_forgotten_finds_nothing() {
    let mut sim = model(T0);
    let mut p = producer(|c| c);
    let delayed = AddJob {
        delay: Duration::from_millis(60_000),
        ..job("later")
    };
    p.add(inst(T0), delayed).unwrap();
    drive(&mut p, &mut sim);
    let id = JobId::from("later");
    p.withdraw_delayed(&id);
    let cmd = p.poll_command().expect("the withdrawal");
    let v = sim.execute(&cmd.kind);
    assert_eq!(v, Value::Int(1));
    p.handle_reply(inst(T0), cmd.op, Reply::Value(v)).unwrap();
    let result = |events: &[ProducerEvent]| {
        events.iter().find_map(|e| match e {
            ProducerEvent::DelayedWithdrawn { result, .. } => Some(*result),
            _ => None,
        })
    };
    let first: Vec<ProducerEvent> = std::iter::from_fn(|| p.poll_event()).collect();
    assert_eq!(result(&first), Some(DelayedWithdrawal::Withdrawn));
    // The ack that forgets the tombstone has not run: the script would say 1 again.
    p.withdraw_delayed(&id);
    let mut second: Vec<ProducerEvent> = std::iter::from_fn(|| p.poll_event()).collect();
    if result(&second).is_none() {
        let cmd = p.poll_command().expect("the second withdrawal");
        assert!(
            matches!(cmd.kind, CommandKind::DelayedJob { .. }),
            "{cmd:?}"
        );
        let v = sim.execute(&cmd.kind);
        p.handle_reply(inst(T0), cmd.op, Reply::Value(v)).unwrap();
        second.extend(std::iter::from_fn(|| p.poll_event()));
    }
    assert_eq!(result(&second), Some(DelayedWithdrawal::NotDelayed));
    // Once the ack ran, Redis answers the same.
    drive(&mut p, &mut sim);
    p.withdraw_delayed(&id);
    let third = drive(&mut p, &mut sim);
    assert_eq!(result(&third), Some(DelayedWithdrawal::NotDelayed));
}

/// Redis lost everything (a restart without persistence): the producer's registration is
/// gone, and a settle routes an outcome only to a registered producer. The next add (fresh,
/// and through the script) asserts the registration in the same transaction, so the jobs'
/// outcomes arrive, and the producer reports the gap. Without it the outcome is dropped
/// until the registration's renewal (a quarter of the ttl: 15 min by default).
#[test]
fn an_add_after_redis_lost_everything_registers_again_and_gets_its_outcomes() {
    for (name, add) in [("fresh", fresh("f1")), ("checked", job("c1"))] {
        let mut rng = SeededRandom::new(3);
        let mut sim = model(T0);
        let mut p = producer(|c| c);
        for key in sim
            .keys()
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
        {
            sim.lose(&key);
        }
        sim.execute(&CommandKind::EnsureGroup {
            keys: Arc::new(QueueKeys::new("dl", "q").unwrap()),
        });
        let id = p.add(inst(T0), add).unwrap();
        let events = drive(&mut p, &mut sim);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ProducerEvent::Trouble { message }
                if message.contains("not registered when it added"))),
            "{name}: {events:?}"
        );
        assert!(
            sim.get("dl:{q}:producers").is_some(),
            "{name}: registered again"
        );
        work(&mut sim, &mut rng);
        sim.set_time(inst(T0 + 1_000));
        p.handle_timeout(inst(T0 + 1_000)).unwrap();
        let events = drive(&mut p, &mut sim);
        assert_eq!(
            completed(&events).first().map(|c| c.0.clone()),
            Some(id.0.clone()),
            "{name}: {events:?}"
        );
    }
}

/// The answers to add calls among `events`, in order.
fn answers(events: &[ProducerEvent]) -> Vec<(u64, String, AddAnswer)> {
    events
        .iter()
        .filter_map(|e| match e {
            ProducerEvent::AddAnswered { call, job, answer } => {
                Some((call.0, job.0.clone(), answer.clone()))
            }
            _ => None,
        })
        .collect()
}

fn drained(p: &mut Producer) -> Vec<ProducerEvent> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

/// Each call is answered once, by its own add: two calls of one id are both `Taken` (the
/// second through the duplicate check), a refused one at once; none is left open.
#[test]
fn every_add_call_is_answered_once() {
    let mut sim = model(T0);
    let mut p = producer(|c| c.block(None));
    let far = T0 + 10_000;
    p.add_call(inst(T0), Call(1), job("a"), inst(far));
    p.add_call(inst(T0), Call(2), job("a"), inst(far));
    let generated = p.add_call(inst(T0), Call(3), AddJob::default(), inst(far));
    p.add_call(inst(T0), Call(4), job(""), inst(far));
    let mut events = drained(&mut p);
    events.extend(drive(&mut p, &mut sim));
    let mut got = answers(&events);
    got.sort_by_key(|(c, ..)| *c);
    assert_eq!(
        got,
        [
            (1, "a".into(), AddAnswer::Taken),
            (2, "a".into(), AddAnswer::Taken),
            (3, generated.0, AddAnswer::Taken),
            (
                4,
                String::new(),
                AddAnswer::Refused(ProducerError::EmptyJobId)
            ),
        ]
    );
    assert_eq!(p.open_calls(), 0);
    assert_eq!(sim.stream(&p.keys().jobs).map(|s| s.entries.len()), Some(2));
}

/// A call past its deadline whose add never left and whose id was generated for it is
/// withdrawn: `Unavailable`, and the job never reaches Redis. One sent (or of the caller's
/// id) is `Unconfirmed`, and its add goes on until Redis has it, once; its later answer
/// from Redis is not a second answer.
#[test]
fn a_call_past_its_deadline_is_withdrawn_only_if_it_never_left() {
    let mut sim = model(T0);
    let mut p = producer(|c| c.block(None));
    p.add_call(inst(T0), Call(1), AddJob::default(), inst(T0 + 100));
    assert_eq!(
        ms_of(p.poll_timeout()),
        Some(T0 + 100),
        "the deadline is a timer"
    );
    p.handle_timeout(inst(T0 + 100)).unwrap();
    assert_eq!(
        answers(&drained(&mut p))
            .into_iter()
            .map(|a| a.2)
            .collect::<Vec<_>>(),
        [AddAnswer::Unavailable]
    );
    assert!(drive(&mut p, &mut sim).is_empty());
    assert!(sim.stream(&p.keys().jobs).is_none(), "never sent");
    assert_eq!(p.pending_adds(), 0);

    // Sent, the reply lost: at the deadline, unconfirmed; it lands once when Redis is back.
    let id = p.add_call(inst(T0 + 100), Call(2), AddJob::default(), inst(T0 + 200));
    let add = p.poll_command().expect("the add");
    sim.execute(&add.kind);
    p.handle_reply(inst(T0 + 150), add.op, Reply::Unknown)
        .unwrap();
    assert!(
        answers(&drained(&mut p)).is_empty(),
        "no answer before the deadline"
    );
    p.handle_timeout(inst(T0 + 200)).unwrap();
    assert_eq!(
        answers(&drained(&mut p)),
        [(2, id.0.clone(), AddAnswer::Unconfirmed)]
    );
    sim.set_time(inst(T0 + 5_000));
    p.handle_timeout(inst(T0 + 5_000)).unwrap();
    let events = drive(&mut p, &mut sim);
    assert!(answers(&events).is_empty(), "{events:?}");
    assert_eq!(accepted(&events), [id.0]);
    assert_eq!(sim.stream(&p.keys().jobs).map(|s| s.entries.len()), Some(1));
}

/// Fail-fast: once a command's outcome is unknown, the open calls hear at once
/// (`Unconfirmed`: they were sent), and so do new ones while Redis stays away: a new id is
/// `Unavailable` and never sent, a caller-chosen id `Unconfirmed` and sent when Redis is
/// back. Without fail-fast, nothing is answered before the deadline.
#[test]
fn fail_fast_answers_while_redis_is_away() {
    let mut sim = model(T0);
    let mut p = producer(|mut c| {
        c.fail_fast = true;
        c.block(None)
    });
    let far = T0 + 60_000;
    let a = p.add_call(inst(T0), Call(1), AddJob::default(), inst(far));
    let add = p.poll_command().expect("the add");
    p.handle_reply(inst(T0), add.op, Reply::Unknown).unwrap();
    assert_eq!(
        answers(&drained(&mut p)),
        [(1, a.0, AddAnswer::Unconfirmed)]
    );
    let b = p.add_call(inst(T0), Call(2), AddJob::default(), inst(far));
    p.add_call(inst(T0), Call(3), job("mine"), inst(far));
    assert_eq!(
        answers(&drained(&mut p)),
        [
            (2, b.0.clone(), AddAnswer::Unavailable),
            (3, "mine".into(), AddAnswer::Unconfirmed)
        ]
    );
    assert_eq!(p.open_calls(), 0);
    sim.set_time(inst(T0 + 5_000));
    p.handle_timeout(inst(T0 + 5_000)).unwrap();
    drive(&mut p, &mut sim);
    let jobs = sim.stream(&p.keys().jobs).map_or(0, |s| s.entries.len());
    assert_eq!(jobs, 2, "the first add and `mine`, not the unavailable one");

    let mut patient = producer(|c| c.block(None));
    patient.add_call(inst(T0), Call(1), AddJob::default(), inst(far));
    let add = patient.poll_command().expect("the add");
    patient
        .handle_reply(inst(T0), add.op, Reply::Unknown)
        .unwrap();
    assert!(answers(&drained(&mut patient)).is_empty());
    assert_eq!(patient.open_calls(), 1);
}

/// An add of an id whose job ended lately is answered with the end and not sent (its
/// marker is gone: it would run again); past the grace it is a new job. A call whose job
/// ended while Redis' answer to its add was lost hears the end when the resend is answered.
#[test]
fn calls_of_a_job_that_ended_hear_its_end() {
    let mut rng = SeededRandom::new(43);
    let mut sim = model(T0);
    let mut p = producer(|c| c.block(None));
    let far = T0 + 3_600_000;
    // The add ran, its reply was lost; the job completes and its outcome is read before
    // the resend is answered.
    p.add_call(inst(T0), Call(1), job("a"), inst(far));
    let add = p.poll_command().expect("the add");
    sim.execute(&add.kind);
    p.handle_reply(inst(T0), add.op, Reply::Unknown).unwrap();
    work(&mut sim, &mut rng);
    let now = sim.now().unix_ms() + 5_000;
    sim.set_time(inst(now));
    p.handle_timeout(inst(now)).unwrap();
    // Everything but the add's resend runs (the tail check, then the read) until the
    // outcome is in; then the resend.
    let mut events = Vec::new();
    let mut held = Vec::new();
    while completed(&events).is_empty() {
        let cmds: Vec<Command> = std::iter::from_fn(|| p.poll_command()).collect();
        assert!(!cmds.is_empty(), "stuck: {events:?}");
        for cmd in cmds {
            if matches!(cmd.kind, CommandKind::Enqueue { .. }) {
                held.push(cmd);
                continue;
            }
            let v = sim.execute(&cmd.kind);
            p.handle_reply(inst(now), cmd.op, Reply::Value(v)).unwrap();
            events.extend(drained(&mut p));
        }
    }
    assert!(answers(&events).is_empty(), "{events:?}");
    for cmd in held {
        let v = sim.execute(&cmd.kind);
        p.handle_reply(inst(now), cmd.op, Reply::Value(v)).unwrap();
        events.extend(drained(&mut p));
    }
    events.extend(drive(&mut p, &mut sim));
    assert_eq!(completed(&events), [("a".into(), b"ok:a".to_vec())]);
    let end = AddAnswer::Ended(JobEnd::Completed(b"ok:a".to_vec()));
    assert_eq!(answers(&events), [(1, "a".into(), end.clone())]);
    // Added again a moment later: answered with the end, nothing sent.
    p.add_call(inst(now + 1_000), Call(2), job("a"), inst(far));
    assert_eq!(answers(&drained(&mut p)), [(2, "a".into(), end)]);
    let cmds: Vec<Command> = std::iter::from_fn(|| p.poll_command()).collect();
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c.kind, CommandKind::Enqueue { .. })),
        "{cmds:?}"
    );
    for cmd in cmds {
        let v = sim.execute(&cmd.kind);
        p.handle_reply(inst(now + 1_000), cmd.op, Reply::Value(v))
            .unwrap();
    }
    drained(&mut p);
    // Past the grace: a new job of that id.
    let later = now + ENDED_GRACE_MS + 1_000;
    sim.set_time(inst(later));
    p.add_call(inst(later), Call(3), job("a"), inst(far));
    let events = drive(&mut p, &mut sim);
    assert_eq!(answers(&events), [(3, "a".into(), AddAnswer::Taken)]);
}

/// Redis' refusals answer the calls of the adds they refuse: paused, failed.
#[test]
fn refused_add_calls_say_why() {
    let mut sim = model(T0);
    let mut p = producer(|c| c.block(None));
    let far = T0 + 10_000;
    p.set_paused(inst(T0), true);
    drive(&mut p, &mut sim);
    p.add_call(inst(T0), Call(1), job("a"), inst(far));
    let events = drive(&mut p, &mut sim);
    assert_eq!(answers(&events), [(1, "a".into(), AddAnswer::Paused)]);
    p.set_paused(inst(T0), false);
    drive(&mut p, &mut sim);
    p.add_call(inst(T0), Call(2), job("b"), inst(far));
    let add = p.poll_command().expect("the add");
    let oom = "OOM command not allowed when used memory > 'maxmemory'.";
    p.handle_reply(inst(T0), add.op, Reply::Value(Value::Error(oom.into())))
        .unwrap();
    assert_eq!(
        answers(&drained(&mut p)),
        [(2, "b".into(), AddAnswer::Failed(oom.into()))]
    );
    assert_eq!(p.open_calls(), 0);
}

/// A generated id added again by its caller (after `Unconfirmed`, say) is no longer this
/// call's alone: once the re-add landed, the first call, still unsent, is `Unconfirmed` at
/// its deadline, never `Unavailable` (the job is queued). Found by the engine model.
#[test]
fn a_call_whose_id_was_added_again_is_never_unavailable() {
    let mut sim = model(T0);
    let mut p = producer(|c| c.block(None));
    let id = p.add_call(inst(T0), Call(1), AddJob::default(), inst(T0 + 1_000));
    let first = p.poll_command().expect("the first add");
    // While it is out, the caller adds the id again; that add lands.
    p.add_call(inst(T0), Call(2), job(&id.0), inst(T0 + 60_000));
    let second = p.poll_command().expect("the second add");
    assert!(
        matches!(second.kind, CommandKind::Enqueue { .. }),
        "{second:?}"
    );
    let v = sim.execute(&second.kind);
    p.handle_reply(inst(T0), second.op, Reply::Value(v))
        .unwrap();
    assert_eq!(
        answers(&drained(&mut p)),
        [(2, id.0.clone(), AddAnswer::Taken)]
    );
    // The first never left (its connection was down): unsent again, its id generated.
    p.handle_reply(inst(T0), first.op, Reply::NotSent).unwrap();
    drained(&mut p);
    p.handle_timeout(inst(T0 + 1_000)).unwrap();
    assert_eq!(
        answers(&drained(&mut p)),
        [(1, id.0.clone(), AddAnswer::Unconfirmed)]
    );
    assert_eq!(sim.stream(&p.keys().jobs).map(|s| s.entries.len()), Some(1));
}

/// A promotion in flight is not a timer: the next is set when it is answered (else the
/// driver would wake at once, again and again, for a round trip).
#[test]
fn a_producer_promoting_has_no_timer_due_now() {
    let mut sim = model(T0);
    let mut p = producer(|c| c.block(None));
    p.add(
        inst(T0),
        AddJob {
            delay: Duration::from_millis(1_000),
            ..job("later")
        },
    )
    .unwrap();
    drive(&mut p, &mut sim);
    sim.set_time(inst(T0 + 1_000));
    p.handle_timeout(inst(T0 + 1_000)).unwrap();
    let cmds: Vec<Command> = std::iter::from_fn(|| p.poll_command()).collect();
    assert!(
        cmds.iter()
            .any(|c| matches!(c.kind, CommandKind::Promote { .. })),
        "{cmds:?}"
    );
    // Meanwhile another delayed job is taken, due at once.
    p.add(
        inst(T0 + 1_000),
        AddJob {
            delay: Duration::from_millis(1),
            ..job("soon")
        },
    )
    .unwrap();
    let add = p.poll_command().expect("the add");
    let v = sim.execute(&add.kind);
    p.handle_reply(inst(T0 + 1_001), add.op, Reply::Value(v))
        .unwrap();
    drained(&mut p);
    assert!(p.poll_command().is_none(), "one promotion at a time");
    assert!(
        ms_of(p.poll_timeout()).is_none_or(|t| t > T0 + 1_001),
        "{:?}",
        p.timers()
    );
    assert_eq!(
        p.timers().get(ProducerTimer::Promote),
        None,
        "{:?}",
        p.timers()
    );
}

#[test]
fn a_producer_draws_from_the_generator_it_was_made_with() {
    // Job ids (and nonces) come from the machine's own generator, seeded once by its
    // constructor: the same seed gives the same ids, another seed others, and the
    // constructor draws a fresh seed from the generator it is given each time.
    let ids = |p: &mut Producer| -> Vec<JobId> {
        (0..3)
            .map(|_| p.add(inst(T0), AddJob::default()).unwrap())
            .collect()
    };
    let (a, b) = (
        ids(&mut seeded_producer(|c| c, 5)),
        ids(&mut seeded_producer(|c| c, 5)),
    );
    assert_eq!(a, b);
    assert_ne!(a, ids(&mut seeded_producer(|c| c, 6)));
    assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), 3);
    let mut source = SeededRandom::new(5);
    let cfg = || ProducerConfig::new("q").block(None);
    let mut first = Producer::new(cfg(), sealer(), inst(T0), &mut source).unwrap();
    let mut second = Producer::new(cfg(), sealer(), inst(T0), &mut source).unwrap();
    assert_ne!(ids(&mut first), ids(&mut second));
}

/// Sends every command to `sim` like [`drive`], and also returns the commands' kinds.
fn drive_seen(p: &mut Producer, sim: &mut Sim) -> (Vec<ProducerEvent>, Vec<CommandKind>) {
    let mut events = Vec::new();
    let mut kinds = Vec::new();
    while let Some(cmd) = p.poll_command() {
        let v = sim.execute(&cmd.kind);
        p.handle_reply(inst(sim.now().unix_ms()), cmd.op, Reply::Value(v))
            .unwrap();
        events.extend(std::iter::from_fn(|| p.poll_event()));
        kinds.push(cmd.kind);
    }
    (events, kinds)
}

/// The acks among `kinds`: what each trims through and the markers it forgets.
fn acks(kinds: &[CommandKind]) -> Vec<(Option<EntryId>, Vec<String>)> {
    kinds
        .iter()
        .filter_map(|k| match k {
            CommandKind::AckEvents {
                through, forget, ..
            } => Some((*through, forget.clone())),
            _ => None,
        })
        .collect()
}

/// Time passes for the producer and the model, to `ms`.
fn at(p: &mut Producer, sim: &mut Sim, ms: u64) {
    sim.set_time(inst(ms));
    p.handle_timeout(inst(ms)).unwrap();
}

/// The producer's adds go, a worker runs them, the producer reads what came of them (the
/// events, and the commands of that read and what followed it).
fn ended_and_read(
    p: &mut Producer,
    sim: &mut Sim,
    rng: &mut SeededRandom,
) -> (Vec<ProducerEvent>, Vec<CommandKind>) {
    drive(p, sim);
    work(sim, rng);
    let now = sim.now().unix_ms();
    at(p, sim, now);
    drive_seen(p, sim)
}

/// Jobs (of generated ids) that end one at a time share one acknowledgement, `ack_delay`
/// after the first event read: none goes before (the events and markers stay in Redis
/// meanwhile), the producer's `Ack` timer says when, and the one ack trims both events and
/// forgets both markers. An idle producer then has no ack timer left.
#[test]
fn events_read_one_at_a_time_share_one_ack_after_its_delay() {
    let mut rng = SeededRandom::new(5);
    let mut sim = model(T0);
    let mut p = producer(|c| c.ack_delay(Duration::from_secs(1)));
    let keys = p.keys().clone();
    p.add(inst(T0), fresh("a")).unwrap();
    let (seen, kinds) = ended_and_read(&mut p, &mut sim, &mut rng);
    let read_at = sim.now().unix_ms();
    assert_eq!(completed(&seen).len(), 1, "{seen:?}");
    assert_eq!(acks(&kinds), [], "no ack before its delay");
    assert_eq!(
        ms_of(p.timers().get(ProducerTimer::Ack)),
        Some(read_at + 1_000)
    );
    // A second job ends before the ack is due: it waits too.
    p.add(inst(read_at), fresh("b")).unwrap();
    let (seen, kinds) = ended_and_read(&mut p, &mut sim, &mut rng);
    assert!(sim.now().unix_ms() < read_at + 1_000);
    assert_eq!(completed(&seen).len(), 1, "{seen:?}");
    assert_eq!(acks(&kinds), [], "{kinds:?}");
    assert_eq!(
        events_now(&sim, &keys).len(),
        2,
        "both events still in Redis"
    );
    assert_eq!(
        ms_of(p.timers().get(ProducerTimer::Ack)),
        Some(read_at + 1_000),
        "the delay runs from the first event waiting"
    );
    // Due: one ack for both.
    at(&mut p, &mut sim, read_at + 1_000);
    let (_, kinds) = drive_seen(&mut p, &mut sim);
    let sent = acks(&kinds);
    assert_eq!(sent.len(), 1, "{kinds:?}");
    assert!(sent[0].0.is_some(), "it trims");
    assert_eq!(sent[0].1, ["a", "b"]);
    assert!(events_now(&sim, &keys).is_empty());
    let markers = sim.hash(&keys.ids).ok().flatten().map_or(0, |h| h.len());
    assert_eq!(markers, 0);
    assert_eq!(p.timers().get(ProducerTimer::Ack), None);
}

/// An add of an id whose job ended here, while that job's ack waits (its id was generated;
/// the caller reuses it), sends the ack first: the job's marker is gone when the add is
/// checked, so it is queued (not a duplicate of the ended job), and runs again.
#[test]
fn an_add_of_an_id_that_ended_here_goes_after_the_ack_that_forgets_it() {
    let mut rng = SeededRandom::new(6);
    let mut sim = model(T0);
    let mut p = producer(|c| c.ack_delay(Duration::from_secs(60)));
    p.add(inst(T0), fresh("x")).unwrap();
    let (seen, kinds) = ended_and_read(&mut p, &mut sim, &mut rng);
    assert_eq!(completed(&seen).len(), 1, "{seen:?}");
    assert_eq!(acks(&kinds), []);
    let now = sim.now().unix_ms();
    // A job of another id does not hurry the ack.
    p.add(inst(now), fresh("y")).unwrap();
    let (_, kinds) = drive_seen(&mut p, &mut sim);
    assert_eq!(acks(&kinds), [], "{kinds:?}");
    p.add(inst(now), job("x")).unwrap();
    let (seen, kinds) = drive_seen(&mut p, &mut sim);
    let order: Vec<&str> = kinds
        .iter()
        .filter_map(|k| match k {
            CommandKind::AckEvents { .. } => Some("ack"),
            CommandKind::Enqueue { .. } => Some("add"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["ack", "add"], "{kinds:?}");
    assert!(
        seen.iter().any(|e| matches!(e,
            ProducerEvent::Accepted { job, status: AddStatus::Added(_) } if job.0 == "x")),
        "{seen:?}"
    );
    let (seen, _) = ended_and_read(&mut p, &mut sim, &mut rng);
    let got: Vec<String> = completed(&seen).into_iter().map(|(j, _)| j).collect();
    assert_eq!(got, ["y", "x"], "x ran again");
}

/// What needs the ack done sends it at once, its delay notwithstanding: closing, a stats
/// request (its counts include the events), an operator's request (a revival sets a marker
/// again).
#[test]
fn closing_stats_and_requests_send_the_waiting_ack_at_once() {
    type Hurry = fn(&mut Producer);
    let cases: [(&str, Hurry); 3] = [
        ("close", Producer::close),
        ("stats", Producer::request_stats),
        ("request", |p| {
            p.request_workers();
        }),
    ];
    for (name, hurry) in cases {
        let mut rng = SeededRandom::new(7);
        let mut sim = model(T0);
        let mut p = producer(|c| c.ack_delay(Duration::from_secs(60)));
        p.add(inst(T0), fresh("x")).unwrap();
        let (_, kinds) = ended_and_read(&mut p, &mut sim, &mut rng);
        assert_eq!(acks(&kinds), [], "{name}");
        hurry(&mut p);
        let (_, kinds) = drive_seen(&mut p, &mut sim);
        assert!(
            matches!(kinds.first(), Some(CommandKind::AckEvents { .. })),
            "{name}: {kinds:?}"
        );
    }
}

/// The end of a job whose id someone may use again as soon as they see it is acknowledged
/// at once, its delay notwithstanding: a completed job of a caller-chosen id (another
/// producer may add it again), a dead letter (an operator may revive it: the revival
/// needs the marker gone).
#[test]
fn ends_of_chosen_ids_and_dead_letters_are_acknowledged_at_once() {
    for (name, add, fails) in [
        ("chosen id", job("x"), false),
        ("dead letter", fresh("x"), true),
    ] {
        let mut rng = SeededRandom::new(8);
        let mut sim = model(T0);
        let mut p = producer(|c| c.ack_delay(Duration::from_secs(60)));
        p.add(inst(T0), add).unwrap();
        drive(&mut p, &mut sim);
        for _ in 0..3 {
            work_with(&mut sim, &mut rng, |job| match fails {
                true => Err("no".into()),
                false => Ok(job.payload.clone()),
            });
        }
        let now = sim.now().unix_ms();
        at(&mut p, &mut sim, now);
        let (seen, kinds) = drive_seen(&mut p, &mut sim);
        assert!(
            seen.iter().any(|e| matches!(
                e,
                ProducerEvent::Completed { .. } | ProducerEvent::DeadLettered { .. }
            )),
            "{name}: {seen:?}"
        );
        let sent = acks(&kinds);
        assert_eq!(sent.len(), 1, "{name}: {kinds:?}");
        assert_eq!(sent[0].1, ["x"], "{name}");
    }
}

#[test]
fn an_ask_sends_what_its_method_sends() {
    let job = JobId("j1".into());
    type Method = fn(&mut Producer) -> Request;
    let cases: Vec<(Ask, Method)> = vec![
        (Ask::Workers, |p| p.request_workers()),
        (Ask::FindJob(JobId("j1".into()), 7), |p| {
            p.find_job(&JobId("j1".into()), 7)
        }),
        (Ask::ReadDead(EntryId::ZERO, 3), |p| {
            p.read_dead(EntryId::ZERO, 3)
        }),
        (Ask::Promote(job.clone()), |p| {
            p.promote_job(&JobId("j1".into()))
        }),
        (Ask::SetPaused(true), |p| p.set_paused(inst(0), true)),
        (
            Ask::TailLog(EntryId::ZERO, 5, Duration::from_secs(9)),
            |p| p.tail_log(EntryId::ZERO, 5, Duration::from_secs(9)),
        ),
    ];
    for (ask, method) in cases {
        let (mut a, mut b) = (producer(|c| c), producer(|c| c));
        let (ra, rb) = (a.ask(inst(0), ask.clone()), method(&mut b));
        assert_eq!(ra, rb, "{ask:?}");
        let kinds = |p: &mut Producer| -> Vec<CommandKind> {
            std::iter::from_fn(|| p.poll_command())
                .map(|c| c.kind)
                .collect()
        };
        assert_eq!(kinds(&mut a), kinds(&mut b), "{ask:?}");
    }
}

/// A fresh identity is drawn from the generator: ids a key can hold, a token per instance.
#[test]
fn fresh_identities_differ_and_make_valid_producers() {
    let mut rng = SeededRandom::new(3);
    let a = ProducerConfig::new("q").fresh_identity(&mut rng);
    let b = ProducerConfig::new("q").fresh_identity(&mut rng);
    assert_eq!(a.producer.len(), 6);
    assert!(a.producer.bytes().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(a.token.len(), 16);
    assert!(a.token.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!((&a.producer, &a.token), (&b.producer, &b.token));
    let sealer = Sealer::new(Keyring::new(Key::from_bytes(KeyId(1), &[1; 32])));
    assert!(Producer::new(a, sealer, Instant::from_unix_ms(0), &mut rng).is_ok());
}
