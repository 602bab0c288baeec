//! The worker machine, by hand against the model and through the world driver.

use std::sync::Arc;

use super::*;
use crate::command::{OpId, Reply};
use crate::keys::{Key, KeyId, Keyring};
use crate::naming::GROUP;
use crate::random::SeededRandom;
use crate::retry::{Backoff, RetryPolicy};
use crate::sim::world::{Answer, World, WorldConfig};
use crate::sim::{Faults, Sim};
#[allow(unused_imports)]
use crate::time::Duration;
use crate::time::testing::{inst, ms_of};
use crate::value::Value;

fn sealer() -> Sealer {
    Sealer::new(Keyring::new(Key::from_bytes(KeyId(1), &[1; 32])))
}

const T0: u64 = 1_700_000_000_000;

#[test]
fn config_is_checked() {
    let bad = WorkerConfig::new("q", "c").concurrency(0);
    assert_eq!(
        Worker::new(bad, sealer(), inst(T0), &mut SeededRandom::new(0)).err(),
        Some(WorkerError::Concurrency(0))
    );
    let err = Worker::new(
        WorkerConfig::new("q", "c").concurrency(0),
        sealer(),
        inst(T0),
        &mut SeededRandom::new(0),
    )
    .err()
    .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("concurrency must be an integer >= 1, got 0")
    );
    assert!(matches!(
        Worker::new(
            WorkerConfig::new("a{b", "c"),
            sealer(),
            inst(T0),
            &mut SeededRandom::new(0)
        ),
        Err(WorkerError::Name(_))
    ));
    assert_eq!(
        Worker::new(
            WorkerConfig::new("q", ""),
            sealer(),
            inst(T0),
            &mut SeededRandom::new(0)
        )
        .err(),
        Some(WorkerError::Consumer)
    );
}

/// Adds `n` jobs to queue `q` through a producer, at the model's time.
fn enqueue(sim: &mut Sim, rng: &mut SeededRandom, n: usize) {
    let now = sim.now().unix_ms();
    let pc = crate::producer::ProducerConfig::new("q").block(None);
    let mut p = crate::producer::Producer::new(pc, sealer(), inst(now), &mut *rng).unwrap();
    for _ in 0..n {
        p.add(inst(now), Default::default()).unwrap();
    }
    while let Some(cmd) = p.poll_command() {
        let v = sim.execute(&cmd.kind);
        p.handle_reply(inst(now), cmd.op, Reply::Value(v)).unwrap();
    }
}

/// Runs every command the worker emits on `sim` and feeds the replies back.
fn drive(w: &mut Worker, sim: &mut Sim) -> Vec<WorkerEvent> {
    let mut events = Vec::new();
    while let Some(cmd) = w.poll_command() {
        let v = sim.execute(&cmd.kind);
        w.handle_reply(inst(sim.now().unix_ms()), cmd.op, Reply::Value(v))
            .unwrap();
        events.extend(std::iter::from_fn(|| w.poll_event()));
    }
    events
}

#[test]
fn garbage_is_dead_lettered_once_and_the_queue_goes_on() {
    let mut rng = SeededRandom::new(1);
    let mut sim = Sim::new(inst(T0));
    let mut w = Worker::new(
        WorkerConfig::new("q", "c").concurrency(4).block(None),
        sealer(),
        inst(T0),
        &mut rng,
    )
    .unwrap();
    drive(&mut w, &mut sim);
    let keys = w.keys().clone();
    sim.xadd_raw(&keys.jobs, vec![(b"x".to_vec(), b"y".to_vec())])
        .unwrap();
    sim.xadd_raw(
        &keys.jobs,
        vec![
            (b"j".to_vec(), b"job-9".to_vec()),
            (b"e".to_vec(), b"DL\x01garbage".to_vec()),
        ],
    )
    .unwrap();
    w.handle_timeout(inst(T0 + 100)).unwrap();
    sim.set_time(inst(T0 + 100));
    let events = drive(&mut w, &mut sim);
    let dead: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::DeadLettered { job, reason, .. } => Some((job.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(dead.len(), 2, "{events:?}");
    assert_eq!(dead[0].0, None);
    assert!(dead[0].1.contains("no job id"), "{}", dead[0].1);
    // The id an unreadable entry claims is not authenticated: it names no job.
    assert_eq!(dead[1].0, None);
    assert!(dead[1].1.contains("unreadable job"), "{}", dead[1].1);
    assert!(
        dead[1].1.contains("claims job id \"job-9\""),
        "{}",
        dead[1].1
    );
    assert_eq!(sim.stream(&keys.dead).unwrap().entries.len(), 2);
    assert_eq!(sim.stream(&keys.jobs).unwrap().entries.len(), 0);
    assert!(sim.stream(&keys.jobs).unwrap().groups[GROUP].pel.is_empty());
    // Nothing more happens on the next rounds: dead-lettered once.
    w.handle_timeout(inst(T0 + 20_000)).unwrap();
    sim.set_time(inst(T0 + 20_000));
    drive(&mut w, &mut sim);
    assert_eq!(sim.stream(&keys.dead).unwrap().entries.len(), 2);
}

#[test]
fn reads_only_what_credits_allow() {
    let mut rng = SeededRandom::new(2);
    let mut sim = Sim::new(inst(T0));
    let mut w = Worker::new(
        WorkerConfig::new("q", "c").concurrency(2).block(None),
        sealer(),
        inst(T0),
        &mut rng,
    )
    .unwrap();
    drive(&mut w, &mut sim);
    // Five jobs wait; a worker with two credits takes two, and no more while they run.
    let keys = w.keys().clone();
    enqueue(&mut sim, &mut rng, 5);
    // The first (empty) read was at T0; the next poll comes after the poll interval.
    sim.set_time(inst(T0 + 100));
    w.handle_timeout(inst(T0 + 100)).unwrap();
    let events = drive(&mut w, &mut sim);
    let jobs: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::Job(d) => Some(d.entry),
            _ => None,
        })
        .collect();
    assert_eq!(jobs.len(), 2);
    let pel = &sim.stream(&keys.jobs).unwrap().groups[GROUP].pel;
    assert_eq!(
        pel.len(),
        2,
        "unread entries are not pending: nobody's lease runs"
    );
    sim.set_time(inst(T0 + 1_000));
    w.handle_timeout(inst(T0 + 1_000)).unwrap();
    assert!(drive(&mut w, &mut sim).is_empty());
    w.complete(inst(T0 + 1_000), jobs[0], b"ok").unwrap();
    let events = drive(&mut w, &mut sim);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, WorkerEvent::Job(_)))
            .count(),
        1
    );
    assert_eq!(
        w.complete(inst(T0), jobs[0], b"again"),
        Err(WorkerError::NotRunning(jobs[0]))
    );
}

#[test]
fn unknown_outcomes_of_settlements_are_sent_again() {
    let mut rng = SeededRandom::new(3);
    let mut sim = Sim::new(inst(T0));
    let mut w = Worker::new(
        WorkerConfig::new("q", "c").block(None),
        sealer(),
        inst(T0),
        &mut rng,
    )
    .unwrap();
    drive(&mut w, &mut sim);
    let keys = w.keys().clone();
    enqueue(&mut sim, &mut rng, 1);
    sim.set_time(inst(T0 + 100));
    w.handle_timeout(inst(T0 + 100)).unwrap();
    let entry = match drive(&mut w, &mut sim).pop() {
        Some(WorkerEvent::Job(d)) => d.entry,
        other => panic!("{other:?}"),
    };
    let t = T0 + 100;
    w.complete(inst(t), entry, b"done").unwrap();
    // The complete runs, but its reply is lost.
    let cmd = w.poll_command().unwrap();
    assert!(matches!(cmd.kind, CommandKind::Complete { .. }));
    sim.execute(&cmd.kind);
    w.handle_reply(inst(t), cmd.op, Reply::Unknown).unwrap();
    assert!(
        !matches!(
            w.poll_command(),
            Some(Command {
                kind: CommandKind::Complete { .. },
                ..
            })
        ),
        "resent only after the backoff"
    );
    w.handle_timeout(inst(t + 50)).unwrap();
    let cmd = w.poll_command().unwrap();
    assert!(matches!(cmd.kind, CommandKind::Complete { .. }));
    let v = sim.execute(&cmd.kind);
    assert_eq!(
        v,
        Value::Array(vec![Value::Int(0)]),
        "idempotent: applied once"
    );
    w.handle_reply(inst(t + 50), cmd.op, Reply::Value(v.clone()))
        .unwrap();
    // The first run's result is the one in the events stream; the resend reports 0, which
    // the worker cannot tell from a lost lease, so it says so.
    assert_eq!(sim.stream(&keys.events_of("p")).unwrap().entries.len(), 1);
    assert_eq!(
        w.handle_reply(inst(t), cmd.op, Reply::Unknown),
        Err(WorkerError::UnknownOp(cmd.op))
    );
}

#[test]
fn world_happy_path_leaves_nothing_behind() {
    let mut world = World::new(WorldConfig {
        queues: 2,
        workers_per_queue: 2,
        ..WorldConfig::default()
    });
    for i in 0..40 {
        world.add(i % 2, Duration::from_millis(0));
    }
    assert!(world.quiesce(20_000), "did not settle: {:?}", world.ledger);
    assert!(world.ledger.errors.is_empty(), "{:?}", world.ledger.errors);
    assert_eq!(world.ledger.completed.len(), 40);
    for q in 0..2 {
        let keys = crate::naming::QueueKeys::new("dl", &format!("q{q}")).unwrap();
        let jobs = world.net.sim.stream(&keys.jobs).unwrap();
        assert!(jobs.entries.is_empty() && jobs.groups[GROUP].pel.is_empty());
        assert!(world.net.sim.get(&keys.ids).is_none());
    }
}

/// A producer replaced mid-run (its state gone; another takes over under the queue's name)
/// receives the outcomes of its predecessor's confirmed jobs, and nothing is left behind.
#[test]
fn a_replacement_producer_gets_what_its_predecessor_was_owed() {
    let mut world = World::new(WorldConfig {
        workers_per_queue: 2,
        ..WorldConfig::default()
    });
    for _ in 0..10 {
        world.add(0, Duration::from_millis(0));
    }
    // The adds are confirmed; a few jobs run and complete; then the producer dies.
    for _ in 0..30 {
        world.deliver(0);
        world.answer(0, 0, Answer::Ok);
    }
    let confirmed = world.ledger.accepted.len();
    world.replace_producer(0);
    assert_eq!(world.ledger.replaced, 1);
    assert!(world.quiesce(20_000), "{}", world.why_not_quiescent());
    assert!(world.ledger.errors.is_empty(), "{:?}", world.ledger.errors);
    // Every confirmed job ended at one of the two producers; the rest were abandoned.
    assert!(confirmed > 0);
    assert_eq!(world.ledger.added.len() + world.ledger.abandoned.len(), 10);
    assert!(
        world
            .ledger
            .added
            .keys()
            .all(|j| world.ledger.completed.contains_key(j))
    );
    world.check_quiescent().expect("nothing left behind");
}

/// Workers shut down, one draining and one handing its jobs back, lose no job; adds to a
/// paused queue are refused, and taken again after resume.
#[test]
fn shut_down_workers_and_a_paused_queue_lose_nothing() {
    let mut world = World::new(WorldConfig {
        workers_per_queue: 2,
        ..WorldConfig::default()
    });
    for _ in 0..6 {
        world.add(0, Duration::from_millis(0));
    }
    for _ in 0..20 {
        world.deliver(0);
    }
    world.shut_down(0, false);
    world.shut_down(1, true);
    world.pause(0, true);
    world.add(0, Duration::from_millis(0));
    for _ in 0..20 {
        world.deliver(0);
    }
    assert_eq!(world.ledger.refused_paused, 1);
    world.pause(0, false);
    world.add(0, Duration::from_millis(0));
    assert!(world.quiesce(20_000), "{}", world.why_not_quiescent());
    assert!(world.ledger.errors.is_empty(), "{:?}", world.ledger.errors);
    assert_eq!(world.ledger.completed.len(), 7);
    world.check_quiescent().expect("nothing left behind");
}

#[test]
fn failures_retry_with_backoff_then_dead_letter() {
    let mut world = World::new(WorldConfig {
        retry: RetryPolicy::new(
            3,
            Backoff::Fixed {
                delay: Duration::from_millis(500),
            },
        ),
        ..WorldConfig::default()
    });
    world.add(0, Duration::from_millis(0));
    for _ in 0..200 {
        world.answer(0, 0, Answer::Err);
        if world.in_flight() > 0 {
            world.deliver(0);
        } else {
            let next = world
                .next_timeout()
                .unwrap_or(world.now + Duration::from_millis(100));
            world.set_time(next.max(world.now + Duration::from_millis(1)));
        }
        if world.all_settled() {
            break;
        }
    }
    let job = JobId::from("job-1");
    assert!(world.ledger.dead.contains(&job), "{:?}", world.ledger);
    assert_eq!(world.ledger.delivered[&job], vec![1, 2, 3]);
    assert_eq!(world.ledger.failed[&job], vec![1, 2]);
    assert!(world.ledger.errors.is_empty(), "{:?}", world.ledger.errors);
}

#[test]
fn a_crashed_workers_job_is_reclaimed_after_the_lease() {
    let mut world = World::new(WorldConfig {
        workers_per_queue: 2,
        ..WorldConfig::default()
    });
    world.add(0, Duration::from_millis(0));
    // Run until someone has the job, then crash every worker that holds one.
    for _ in 0..50 {
        if world.in_flight() == 0 {
            break;
        }
        world.deliver(0);
    }
    assert_eq!(world.ledger.delivered.len(), 1);
    let t_crash = world.now;
    world.crash(0);
    world.crash(1);
    world.restart(1);
    assert!(world.quiesce(20_000), "{:?}", world.ledger);
    let job = JobId::from("job-1");
    assert!(world.ledger.completed.contains_key(&job));
    assert!(
        world.now >= t_crash + Duration::from_secs(3),
        "not before the lease expired"
    );
    assert_eq!(world.ledger.delivered[&job], vec![1, 1]);
}

#[test]
fn faults_lose_nothing() {
    let mut world = World::new(WorldConfig {
        queues: 2,
        workers_per_queue: 2,
        faults: Faults {
            lose_command: 100,
            lose_reply: 100,
            ..Faults::default()
        },
        seed: 7,
        ..WorldConfig::default()
    });
    for i in 0..30 {
        world.add(
            i % 2,
            Duration::from_millis(if i % 5 == 0 { 700 } else { 0 }),
        );
        for _ in 0..3 {
            let pick = world.random() as usize;
            world.deliver(pick);
        }
        world.advance(Duration::from_millis(37));
    }
    assert!(world.quiesce(50_000), "{:?}", world.ledger);
    assert!(world.ledger.errors.is_empty(), "{:?}", world.ledger.errors);
    world.check_quiescent().unwrap();
    // Adds whose callers gave up before they left are not queued; every other job ran.
    let l = &world.ledger;
    assert_eq!(l.completed.len() + l.unavailable.len(), 30, "{l:?}");
    assert!(l.completed.len() >= 20, "{l:?}");
}

/// A worker and a producer on one model, driven by hand.
struct Bench {
    sim: Sim,
    rng: SeededRandom,
    now: u64,
}

impl Bench {
    fn new() -> Self {
        Self {
            sim: Sim::new(inst(T0)),
            rng: SeededRandom::new(9),
            now: T0,
        }
    }

    fn worker(&mut self, consumer: &str, cfg: impl FnOnce(WorkerConfig) -> WorkerConfig) -> Worker {
        let wc = cfg(WorkerConfig::new("q", consumer)
            .block(None)
            .lease(Duration::from_millis(3_000)));
        Worker::new(wc, sealer(), inst(self.now), &mut self.rng).unwrap()
    }

    fn add(&mut self, n: usize) {
        enqueue(&mut self.sim, &mut self.rng, n);
    }

    fn at(&mut self, now: u64, workers: &mut [&mut Worker]) -> Vec<Vec<WorkerEvent>> {
        self.now = now;
        self.sim.set_time(inst(now));
        workers
            .iter_mut()
            .map(|w| {
                w.handle_timeout(inst(now)).unwrap();
                let mut ev: Vec<_> = std::iter::from_fn(|| w.poll_event()).collect();
                ev.extend(self.drive(w));
                ev
            })
            .collect()
    }

    fn drive(&mut self, w: &mut Worker) -> Vec<WorkerEvent> {
        drive(w, &mut self.sim)
    }
}

fn jobs(events: &[WorkerEvent]) -> Vec<EntryId> {
    events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::Job(d) => Some(d.entry),
            _ => None,
        })
        .collect()
}

#[test]
fn heartbeats_keep_a_long_job_from_being_stolen() {
    let mut b = Bench::new();
    let mut a = b.worker("a", |c| c);
    let mut other = b.worker("b", |c| c);
    b.add(1);
    let ev = b.at(T0 + 100, &mut [&mut a, &mut other]);
    let entry = jobs(&ev[0])[0];
    // The job runs for ten leases; heartbeats every third of a lease keep it with `a`.
    let mut t = T0 + 100;
    while t < T0 + 30_000 {
        t += 500;
        let ev = b.at(t, &mut [&mut a, &mut other]);
        assert!(jobs(&ev[1]).is_empty(), "stolen at {t}: {:?}", ev[1]);
        assert!(
            !ev[0]
                .iter()
                .any(|e| matches!(e, WorkerEvent::LeaseLost { .. }))
        );
    }
    a.complete(inst(t), entry, b"done").unwrap();
    let events = b.drive(&mut a);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, WorkerEvent::Discarded { .. }))
    );
}

#[test]
fn a_silent_worker_loses_its_lease_and_is_told() {
    let mut b = Bench::new();
    let mut a = b.worker("a", |c| c);
    let mut other = b.worker("b", |c| c);
    b.add(1);
    let entry = jobs(&b.at(T0 + 100, &mut [&mut a, &mut other])[0])[0];
    // `a` is cut off (no timeouts, no commands) for two leases; `b` reclaims the job.
    let ev = b.at(T0 + 7_000, &mut [&mut other]);
    assert_eq!(jobs(&ev[0]), vec![entry], "{ev:?}");
    match &ev[0].iter().find(|e| matches!(e, WorkerEvent::Job(_))) {
        Some(WorkerEvent::Job(d)) => assert_eq!(d.deliveries, 2),
        other => panic!("{other:?}"),
    }
    // `a` comes back: its heartbeat learns the lease is gone; its result is discarded.
    let ev = b.at(T0 + 7_100, &mut [&mut a]);
    assert!(
        ev[0]
            .iter()
            .any(|e| matches!(e, WorkerEvent::LeaseLost { entry: e, .. } if *e == entry))
    );
    a.complete(inst(T0 + 7_100), entry, b"late").unwrap();
    let ev = b.drive(&mut a);
    assert!(
        ev.iter()
            .any(|e| matches!(e, WorkerEvent::Discarded { .. })),
        "{ev:?}"
    );
    other.complete(inst(T0 + 7_200), entry, b"on time").unwrap();
    b.drive(&mut other);
    let keys = a.keys().clone();
    let events = &b.sim.stream(&keys.events_of("p")).unwrap().entries;
    assert_eq!(events.len(), 1, "one result, the reclaimer's");
}

#[test]
fn drain_finishes_running_jobs_then_reports_drained() {
    let mut b = Bench::new();
    let mut w = b.worker("a", |c| c.concurrency(2));
    b.add(3);
    let running = jobs(&b.at(T0 + 100, &mut [&mut w])[0]);
    assert_eq!(running.len(), 2);
    w.drain(inst(T0 + 200));
    assert!(std::iter::from_fn(|| w.poll_event()).next().is_none());
    w.complete(inst(T0 + 200), running[0], b"1").unwrap();
    let ev = b.drive(&mut w);
    assert!(jobs(&ev).is_empty(), "no new reads while draining");
    assert!(!ev.contains(&WorkerEvent::Drained));
    w.fail(inst(T0 + 300), running[1], "no").unwrap();
    let ev = b.drive(&mut w);
    assert_eq!(ev.last(), Some(&WorkerEvent::Drained));
    let keys = w.keys().clone();
    let stream = b.sim.stream(&keys.jobs).unwrap();
    assert_eq!(
        stream.entries.len(),
        1,
        "the third job waits for another worker"
    );
    assert!(stream.groups[GROUP].pel.is_empty());
}

#[test]
fn hand_back_makes_running_jobs_reclaimable_at_once() {
    let mut b = Bench::new();
    let mut a = b.worker("a", |c| c.concurrency(2));
    b.add(2);
    let running = jobs(&b.at(T0 + 100, &mut [&mut a])[0]);
    a.hand_back(inst(T0 + 200));
    let ev = b.drive(&mut a);
    assert_eq!(ev.last(), Some(&WorkerEvent::Drained));
    assert_eq!(
        a.complete(inst(T0 + 200), running[0], b"x"),
        Err(WorkerError::NotRunning(running[0]))
    );
    // Well before a lease has passed, another worker takes both.
    let mut other = b.worker("b", |c| c.concurrency(2));
    let ev = b.at(T0 + 300, &mut [&mut other]);
    let mut got = jobs(&ev[0]);
    got.sort();
    assert_eq!(got, running);
}

/// A shutdown stops reading at once, lets running jobs finish until its deadline (a
/// timer), then hands back those still running, named in `HandedBack`; what finished before
/// settles as usual. A worker that drains before the deadline has no timer left for it.
#[test]
fn shut_down_hands_back_at_its_deadline_what_still_runs() {
    let mut b = Bench::new();
    let mut a = b.worker("a", |c| c.concurrency(2));
    b.add(2);
    let running = jobs(&b.at(T0 + 100, &mut [&mut a])[0]);
    assert_eq!(running.len(), 2);
    a.shut_down(inst(T0 + 200), inst(T0 + 5_000));
    assert!(ms_of(a.poll_timeout()).is_some_and(|t| t <= T0 + 5_000));
    a.complete(inst(T0 + 300), running[0], b"done").unwrap();
    let ev = b.drive(&mut a);
    assert!(!ev.contains(&WorkerEvent::Drained), "{ev:?}");
    b.add(1);
    let ev = b.at(T0 + 4_999, &mut [&mut a]);
    assert!(jobs(&ev[0]).is_empty(), "no reads while shutting down");
    assert!(
        !ev[0]
            .iter()
            .any(|e| matches!(e, WorkerEvent::HandedBack { .. }))
    );
    let ev = b.at(T0 + 5_000, &mut [&mut a]);
    assert_eq!(
        ev[0].first(),
        Some(&WorkerEvent::HandedBack {
            entries: vec![running[1]]
        }),
        "{:?}",
        ev[0]
    );
    assert_eq!(ev[0].last(), Some(&WorkerEvent::Drained));
    assert_eq!(
        a.complete(inst(T0 + 5_001), running[1], b"late"),
        Err(WorkerError::NotRunning(running[1]))
    );
    // Another worker takes the handed-back job and the new one, well before a lease.
    let mut other = b.worker("b", |c| c.concurrency(2));
    let ev = b.at(T0 + 5_100, &mut [&mut other]);
    assert_eq!(jobs(&ev[0]).len(), 2);
    assert!(jobs(&ev[0]).contains(&running[1]));

    // Drained before its deadline: no timer is left for it.
    let mut c = b.worker("c", |c| {
        c.concurrency(1).block(Some(Duration::from_millis(5_000)))
    });
    c.shut_down(inst(T0 + 6_000), inst(T0 + 60_000));
    let ev = b.drive(&mut c);
    assert_eq!(ev.last(), Some(&WorkerEvent::Drained));
    assert!(ms_of(c.poll_timeout()).is_none_or(|t| t < T0 + 60_000));
}

/// A timer whose action waits for a reply is not a timer: the group's creation, a
/// heartbeat in flight. Else the driver would wake at once, again and again, until the
/// reply came (a busy loop for a round trip). Found by the engine model's check after
/// every step.
#[test]
fn a_worker_waiting_for_a_reply_has_no_timer_due_now() {
    let mut b = Bench::new();
    let mut w = b.worker("a", |c| c.concurrency(1));
    let ensure = w.poll_command().expect("the group's creation");
    assert!(matches!(ensure.kind, CommandKind::EnsureGroup { .. }));
    assert!(w.poll_command().is_none());
    let due_now = |w: &Worker, now: u64| ms_of(w.poll_timeout()).is_some_and(|t| t <= now);
    assert!(!due_now(&w, T0), "{:?}", ms_of(w.poll_timeout()));
    let v = b.sim.execute(&ensure.kind);
    w.handle_reply(inst(T0), ensure.op, Reply::Value(v))
        .unwrap();
    b.add(1);
    let running = jobs(&b.at(T0 + 10, &mut [&mut w])[0]);
    assert_eq!(running.len(), 1);
    // The heartbeat is due; it goes, and its reply is slow.
    let beat_at = w
        .timers()
        .get(WorkerTimer::Heartbeat)
        .expect("a heartbeat timer")
        .unix_ms();
    assert_eq!(ms_of(w.poll_timeout()), Some(beat_at), "{:?}", w.timers());
    w.handle_timeout(inst(beat_at)).unwrap();
    let cmds: Vec<Command> = std::iter::from_fn(|| w.poll_command()).collect();
    assert!(
        cmds.iter()
            .any(|c| matches!(c.kind, CommandKind::Heartbeat { .. })),
        "{cmds:?}"
    );
    assert!(!due_now(&w, beat_at), "{:?}", w.timers());
    assert_eq!(
        w.timers().get(WorkerTimer::Heartbeat),
        None,
        "the beat is out"
    );
}

/// While the group is being created again (Redis lost it: `NOGROUP`), a job still runs
/// but its heartbeat cannot go before the group's creation is answered: no heartbeat timer
/// is due then, else the driver would wake at once, again and again. Found by the engine
/// model's failover property.
#[test]
fn a_heartbeat_waits_for_the_group_created_again() {
    let mut b = Bench::new();
    let mut w = b.worker("a", |c| c.concurrency(2).block(None));
    b.add(1);
    let running = jobs(&b.at(T0, &mut [&mut w])[0]);
    assert_eq!(running.len(), 1);
    let mut lost_group = false;
    let mut ensure_out = false;
    let mut now = T0;
    while now < T0 + 40_000 {
        now += 100;
        w.handle_timeout(inst(now)).unwrap();
        while let Some(c) = w.poll_command() {
            match c.kind {
                CommandKind::Read { .. } if !lost_group => {
                    lost_group = true;
                    let e = Value::Error("NOGROUP No such key or consumer group".into());
                    w.handle_reply(inst(now), c.op, Reply::Value(e)).unwrap();
                }
                // Never answered: the group stays missing.
                CommandKind::EnsureGroup { .. } => ensure_out = true,
                _ => {
                    let v = b.sim.execute(&c.kind);
                    w.handle_reply(inst(now), c.op, Reply::Value(v)).unwrap();
                }
            }
        }
        let due = ms_of(w.poll_timeout()).is_some_and(|t| t <= now);
        assert!(!due, "at {now}: {:?}", w.timers());
    }
    assert!(lost_group && ensure_out);
}

#[test]
fn timeouts_fail_hung_jobs() {
    let mut b = Bench::new();
    let mut w = b.worker("a", |c| c.timeout(Some(Duration::from_millis(1_000))));
    b.add(1);
    let entry = jobs(&b.at(T0 + 100, &mut [&mut w])[0])[0];
    assert_eq!(ms_of(w.poll_timeout()).map(|t| t <= T0 + 1_100), Some(true));
    let ev = b.at(T0 + 1_100, &mut [&mut w]);
    assert!(
        ev[0].contains(&WorkerEvent::TimedOut { entry }),
        "{:?}",
        ev[0]
    );
    assert!(ev[0].iter().any(
        |e| matches!(e, WorkerEvent::DeadLettered { reason, .. } if reason.contains("timed out"))
    ));
    assert_eq!(
        w.complete(inst(T0 + 1_200), entry, b"late"),
        Err(WorkerError::NotRunning(entry))
    );
}

#[test]
fn undrained_events_are_a_typed_error() {
    let mut b = Bench::new();
    let mut w = Worker::new(
        WorkerConfig::new("q", "a").concurrency(1).block(None),
        sealer(),
        inst(T0),
        &mut SeededRandom::new(0),
    )
    .unwrap();
    let keys = w.keys().clone();
    b.sim.execute(&CommandKind::EnsureGroup {
        keys: Arc::new(keys.clone()),
    });
    // Garbage dead-letters pile up events if nobody drains them.
    for _ in 0..2_000 {
        b.sim
            .xadd_raw(&keys.jobs, vec![(b"x".to_vec(), b"y".to_vec())])
            .unwrap();
    }
    let mut err = None;
    for round in 0..100 {
        let now = T0 + 100 * (round + 1);
        b.sim.set_time(inst(now));
        if let Err(e) = w.handle_timeout(inst(now)) {
            err = Some(e);
            break;
        }
        while let Some(cmd) = w.poll_command() {
            let v = b.sim.execute(&cmd.kind);
            if let Err(e) = w.handle_reply(inst(now), cmd.op, Reply::Value(v)) {
                err = Some(e);
                break;
            }
        }
        if err.is_some() {
            break;
        }
    }
    assert!(matches!(err, Some(WorkerError::Undrained(_))), "{err:?}");
}

/// Only an idle worker blocks: the first read and a read after one that found entries go out
/// without BLOCK (with the other commands); a read after an empty one blocks.
#[test]
fn reads_block_only_when_the_stream_was_found_empty() {
    let mut rng = SeededRandom::new(3);
    let mut sim = Sim::new(inst(T0));
    let mut w = Worker::new(
        WorkerConfig::new("q", "c")
            .concurrency(4)
            .block(Some(Duration::from_millis(5_000))),
        sealer(),
        inst(T0),
        &mut rng,
    )
    .unwrap();
    let next_read = |w: &mut Worker, sim: &mut Sim| {
        let mut block = None;
        while let Some(cmd) = w.poll_command() {
            if let CommandKind::Read { block_ms, .. } = &cmd.kind {
                block = Some(*block_ms);
            }
            let v = sim.execute(&cmd.kind);
            w.handle_reply(inst(sim.now().unix_ms()), cmd.op, Reply::Value(v))
                .unwrap();
            while w.poll_event().is_some() {}
            if block.is_some() {
                break;
            }
        }
        block.expect("a read")
    };
    enqueue(&mut sim, &mut rng, 1);
    assert_eq!(next_read(&mut w, &mut sim), None, "first read");
    assert_eq!(next_read(&mut w, &mut sim), None, "after entries");
    assert_eq!(
        next_read(&mut w, &mut sim),
        Some(5_000),
        "after an empty read"
    );
    enqueue(&mut sim, &mut rng, 1);
    assert_eq!(next_read(&mut w, &mut sim), Some(5_000), "still idle");
    assert_eq!(next_read(&mut w, &mut sim), None, "after entries again");
}

/// Runs `workers` idle on one queue for `ms` of model time; returns the commands they sent,
/// by name. A blocking read waits its `BLOCK` and comes back empty, as in Redis.
fn idle_commands(workers: &mut [Worker], sim: &mut Sim, ms: u64) -> Vec<&'static str> {
    let mut sent = Vec::new();
    let mut blocked: Vec<(usize, OpId, u64)> = Vec::new();
    let end = sim.now().unix_ms() + ms;
    loop {
        let now = sim.now().unix_ms();
        for (i, w) in workers.iter_mut().enumerate() {
            for (_, op, _) in blocked.iter().filter(|(j, _, at)| *j == i && *at <= now) {
                w.handle_reply(inst(now), *op, Reply::Value(Value::Nil))
                    .unwrap();
            }
            w.handle_timeout(inst(now)).unwrap();
            while let Some(cmd) = w.poll_command() {
                if let Some(block) = cmd.block_ms() {
                    sent.push("read");
                    blocked.push((i, cmd.op, now + block));
                    continue;
                }
                sent.push(match cmd.kind {
                    CommandKind::Reclaim { .. } => "reclaim",
                    CommandKind::Promote { .. } => "promote",
                    CommandKind::Read { .. } => "read",
                    CommandKind::EnsureGroup { .. } => "group",
                    _ => "other",
                });
                let v = sim.execute(&cmd.kind);
                w.handle_reply(inst(now), cmd.op, Reply::Value(v)).unwrap();
                while w.poll_event().is_some() {}
            }
        }
        blocked.retain(|(_, _, at)| *at > now);
        let next = workers
            .iter()
            .filter_map(|w| ms_of(w.poll_timeout()))
            .chain(blocked.iter().map(|(_, _, at)| *at))
            .min();
        match next {
            Some(t) if t <= end => sim.set_time(inst(t.max(now + 1))),
            _ => return sent,
        }
    }
}

#[test]
fn idle_workers_share_one_upkeep_per_interval_and_promote_nothing() {
    for n in [1usize, 10, 100] {
        let mut sim = Sim::new(inst(T0));
        let mut workers: Vec<Worker> = (0..n)
            .map(|i| {
                // Blocking reads: an idle worker's read waits in Redis (here: never answered
                // with anything, as nothing comes).
                let cfg = WorkerConfig::new("q", &format!("c{i}"));
                Worker::new(cfg, sealer(), inst(T0), &mut SeededRandom::new(0)).unwrap()
            })
            .collect();
        // Everyone's first upkeep (at start), then an hour of idling.
        let sent = idle_commands(&mut workers, &mut sim, 3_600_000);
        let upkeeps = sent.iter().filter(|c| **c == "reclaim").count() - n;
        // One per interval (15 s, half the default lease) for the queue, whatever the number
        // of workers: 240 expected; the spread is random.
        assert!(
            (160..=320).contains(&upkeeps),
            "{n} workers: {upkeeps} upkeeps in an hour"
        );
        assert_eq!(sent.iter().filter(|c| **c == "promote").count(), 0);
        let registered = match sim.get(&keys_of("q").workers) {
            Some(crate::sim::Data::ZSet(z)) => z.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!(registered, n, "every live worker is counted");
    }
}

fn keys_of(queue: &str) -> crate::naming::QueueKeys {
    crate::naming::QueueKeys::new("dl", queue).unwrap()
}

#[test]
fn a_retry_is_promoted_when_due_by_its_worker_and_by_the_upkeep_if_that_worker_died() {
    let retry = RetryPolicy::new(
        3,
        Backoff::Fixed {
            delay: Duration::from_millis(700),
        },
    );
    for crash in [false, true] {
        let mut rng = SeededRandom::new(3);
        let mut sim = Sim::new(inst(T0));
        let cfg = |c: &str| {
            WorkerConfig::new("q", c)
                .block(None)
                .retry(retry)
                .lease(Duration::from_millis(60_000))
        };
        sim.execute(&CommandKind::EnsureGroup {
            keys: Arc::new(keys_of("q")),
        });
        enqueue(&mut sim, &mut rng, 1);
        let mut a = Worker::new(cfg("a"), sealer(), inst(T0), &mut rng).unwrap();
        let events = drive(&mut a, &mut sim);
        let entry = jobs(&events)[0];
        a.fail(inst(sim.now().unix_ms()), entry, "boom").unwrap();
        drive(&mut a, &mut sim);
        let due = T0 + 700;
        let mut b = Worker::new(cfg("b"), sealer(), inst(T0), &mut rng).unwrap();
        drive(&mut b, &mut sim);
        let mut survivors = vec![b];
        if !crash {
            survivors.push(a);
        }
        // Run until the job is in the work stream again.
        let mut promoted_at = None;
        let mut now = sim.now().unix_ms();
        while now < T0 + 600_000 {
            let next = survivors
                .iter()
                .filter_map(|w| ms_of(w.poll_timeout()))
                .min();
            now = next.unwrap_or(now + 1_000).max(now + 1);
            sim.set_time(inst(now));
            for w in &mut survivors {
                w.handle_timeout(inst(now)).unwrap();
                let events = drive(w, &mut sim);
                if !jobs(&events).is_empty() {
                    promoted_at = Some(now);
                }
            }
            if promoted_at.is_some() {
                break;
            }
        }
        let at = promoted_at.expect("the retry ran again");
        assert!(at >= due, "not before it is due");
        if crash {
            // Only the upkeep knows of it: within a few intervals (30 s, half the lease).
            assert!(at <= due + 120_000, "{} ms late", at - due);
        } else {
            assert!(
                at <= due + 50,
                "the retrying worker promotes it on time: {}",
                at - due
            );
        }
    }
}

#[test]
fn a_garbage_entry_naming_a_live_job_ends_nothing_of_it() {
    let mut rng = SeededRandom::new(31);
    let mut sim = Sim::new(inst(T0));
    sim.execute(&CommandKind::EnsureGroup {
        keys: Arc::new(keys_of("q")),
    });
    let pc = crate::producer::ProducerConfig::new("q").block(None);
    let mut p = crate::producer::Producer::new(pc, sealer(), inst(T0), &mut rng).unwrap();
    let live = JobId::from("session-1:msg-7");
    let add = crate::producer::AddJob {
        id: Some(live.clone()),
        payload: b"send".to_vec(),
        ..Default::default()
    };
    p.add(inst(T0), add).unwrap();
    let mut producer_events = Vec::new();
    let mut run_producer = |p: &mut crate::producer::Producer, sim: &mut Sim| {
        while let Some(cmd) = p.poll_command() {
            let v = sim.execute(&cmd.kind);
            p.handle_reply(inst(sim.now().unix_ms()), cmd.op, Reply::Value(v))
                .unwrap();
            producer_events.extend(std::iter::from_fn(|| p.poll_event()));
        }
    };
    run_producer(&mut p, &mut sim);
    // Someone who can write Redis, but has no secret, names the live job.
    let keys = keys_of("q");
    sim.xadd_raw(
        &keys.jobs,
        vec![
            (b"j".to_vec(), live.0.as_bytes().to_vec()),
            (b"e".to_vec(), vec![b'x'; 10_000]),
        ],
    )
    .unwrap();
    let mut w = Worker::new(
        WorkerConfig::new("q", "c").concurrency(4).block(None),
        sealer(),
        inst(T0),
        &mut rng,
    )
    .unwrap();
    let events = drive(&mut w, &mut sim);
    let dead: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::DeadLettered { job, .. } => Some(job.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(dead, [None], "the garbage is buried, naming no job");
    let dead_entry = &sim.stream(&keys.dead).unwrap().entries;
    let copied = dead_entry
        .values()
        .next()
        .unwrap()
        .iter()
        .find(|(k, _)| k == b"e");
    assert_eq!(
        copied.map(|(_, v)| v.len()),
        Some(MAX_GARBAGE_COPY),
        "a capped copy"
    );
    // The marker of the live job is still there, and the real job runs and completes.
    let marked = match sim.get(&keys.ids) {
        Some(crate::sim::Data::Hash(h)) => h.contains_key(live.0.as_bytes()),
        _ => false,
    };
    assert!(marked, "the live job keeps its id marker");
    let entries = jobs(&events);
    assert_eq!(entries.len(), 1, "the real job was delivered");
    w.complete(inst(T0), entries[0], b"done").unwrap();
    drive(&mut w, &mut sim);
    sim.set_time(inst(T0 + 100));
    p.handle_timeout(inst(T0 + 100)).unwrap();
    run_producer(&mut p, &mut sim);
    let outcomes: Vec<_> = producer_events
        .iter()
        .filter(|e| {
            matches!(
                e,
                crate::producer::ProducerEvent::Completed { .. }
                    | crate::producer::ProducerEvent::DeadLettered { .. }
            )
        })
        .collect();
    assert!(
        matches!(outcomes.as_slice(), [crate::producer::ProducerEvent::Completed { job, .. }] if *job == live),
        "{producer_events:?}"
    );
}

#[test]
fn a_job_past_its_max_age_is_dead_lettered_unrun_and_dead_letters_age_out() {
    let mut rng = SeededRandom::new(41);
    let day = 24 * 3600 * 1000;
    let mut sim = Sim::new(inst(T0));
    sim.execute(&CommandKind::EnsureGroup {
        keys: Arc::new(keys_of("q")),
    });
    // A job sealed 8 days ago, copied back into the stream (a replay): it opens, but it is
    // past the 7 days of max_job_age.
    let old = JobRecord {
        id: JobId::from("old"),
        title: String::new(),
        session_id: "s".into(),
        payload: b"transfer".to_vec(),
        attempt: 1,
        created_at_ms: T0 - 8 * day,
        instance: crate::job::Instance([1; 16]),
    };
    let ctx = Context::new(Purpose::Job, "dl:{q}", b"old");
    let envelope = sealer().seal(&ctx, &old, &mut rng).unwrap();
    let keys = keys_of("q");
    sim.xadd_raw(
        &keys.jobs,
        vec![(b"j".to_vec(), b"old".to_vec()), (b"e".to_vec(), envelope)],
    )
    .unwrap();
    enqueue(&mut sim, &mut rng, 1);
    let mut w = Worker::new(
        WorkerConfig::new("q", "c").concurrency(4).block(None),
        sealer(),
        inst(T0),
        &mut rng,
    )
    .unwrap();
    let events = drive(&mut w, &mut sim);
    let dead: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::DeadLettered { job, reason, .. } => Some((job.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(dead.len(), 1, "{events:?}");
    assert_eq!(dead[0].0, None, "a possible replay ends no job");
    assert!(dead[0].1.contains("too old"), "{}", dead[0].1);
    assert_eq!(jobs(&events).len(), 1, "the fresh job runs");
    assert_eq!(sim.stream(&keys.dead).unwrap().entries.len(), 1);
    // Eight days later, the next dead letter trims the first (dead_retention: 7 days).
    let later = T0 + 8 * day;
    sim.set_time(inst(later));
    sim.xadd_raw(&keys.jobs, vec![(b"x".to_vec(), b"garbage".to_vec())])
        .unwrap();
    w.handle_timeout(inst(later)).unwrap();
    drive(&mut w, &mut sim);
    let dead = &sim.stream(&keys.dead).unwrap().entries;
    assert_eq!(dead.len(), 1, "the old dead letter aged out");
    assert!(dead.keys().all(|id| id.ms >= later));
}

#[test]
fn an_entry_reclaimed_by_its_own_worker_while_its_settlement_waits_does_not_run_again() {
    let mut rng = SeededRandom::new(51);
    let mut sim = Sim::new(inst(T0));
    sim.execute(&CommandKind::EnsureGroup {
        keys: Arc::new(keys_of("q")),
    });
    enqueue(&mut sim, &mut rng, 1);
    let cfg = WorkerConfig::new("q", "c")
        .concurrency(2)
        .block(None)
        .lease(Duration::from_millis(2_000));
    let mut w = Worker::new(cfg, sealer(), inst(T0), &mut rng).unwrap();
    let events = drive(&mut w, &mut sim);
    let entry = jobs(&events)[0];
    w.complete(inst(T0), entry, b"done").unwrap();
    // Redis is away: the settlement's outcome is unknown, again and again, past the lease.
    let mut now = T0;
    let mut runs = 1;
    while now < T0 + 20_000 {
        now += 250;
        sim.set_time(inst(now));
        w.handle_timeout(inst(now)).unwrap();
        // One drain goes out as one pipeline: every command first, then the replies.
        let cmds: Vec<Command> = std::iter::from_fn(|| w.poll_command()).collect();
        for cmd in cmds {
            let reply = match cmd.kind {
                // Everything but the upkeep fails; the upkeep reaches Redis and claims the
                // entry (idle past the lease) for this very consumer.
                CommandKind::Reclaim { .. } => Reply::Value(sim.execute(&cmd.kind)),
                _ => Reply::Unknown,
            };
            w.handle_reply(inst(now), cmd.op, reply).unwrap();
            runs += std::iter::from_fn(|| w.poll_event())
                .filter(|e| matches!(e, WorkerEvent::Job(_)))
                .count();
        }
    }
    assert_eq!(runs, 1, "ran once");
    // Redis is back: the settlement lands.
    now += 2_000;
    sim.set_time(inst(now));
    w.handle_timeout(inst(now)).unwrap();
    drive(&mut w, &mut sim);
    let s = sim.stream(&keys_of("q").jobs).unwrap();
    assert!(s.groups[GROUP].pel.is_empty(), "settled");
}

/// Found by the engine model's stale-timer check: a worker backing off after a failed
/// command, with nothing to settle, still reported its due upkeep as its timer, a time in
/// the past. Its driver then woke at once, again and again, doing nothing, until the backoff
/// ended (a busy loop for up to a second per outage). Now every timer lies ahead.
#[test]
fn a_worker_backing_off_has_no_timer_in_the_past() {
    let mut rng = SeededRandom::new(3);
    let t0 = 1_700_000_000_000;
    let mut sim = Sim::new(inst(t0));
    let cfg = WorkerConfig::new("q", "c1").block(None);
    let mut w = Worker::new(cfg, sealer(), inst(t0), &mut rng).expect("a worker");
    drive(&mut w, &mut sim);
    // Time passes past the upkeep's due time; its command's connection fails.
    let now = t0 + 60_000;
    w.handle_timeout(inst(now)).expect("timeout");
    let mut failed = 0;
    for _ in 0..10 {
        let cmds: Vec<_> = std::iter::from_fn(|| w.poll_command()).take(100).collect();
        if cmds.is_empty() {
            break;
        }
        for cmd in cmds {
            w.handle_reply(inst(now), cmd.op, Reply::Unknown)
                .expect("a reply");
            failed += 1;
        }
        while w.poll_event().is_some() {}
    }
    assert!(failed > 0, "something was sent");
    assert!(
        w.poll_command().is_none(),
        "backing off: nothing more is sent"
    );
    let next = ms_of(w.poll_timeout()).expect("a timer: the backoff's end");
    assert!(next > now, "timer {next} is not after now {now}");
}

/// A blocking read that took entries as the queue was paused (its pause check said so)
/// starts none of them: it hands them back, polls without blocking while the pause lasts,
/// and once resumed runs the upkeep at once, which brings them back as jobs.
#[test]
fn a_read_that_met_a_pause_hands_its_entries_back() {
    let mut rng = SeededRandom::new(5);
    let mut sim = Sim::new(inst(T0));
    let mut w = Worker::new(
        WorkerConfig::new("q", "c")
            .concurrency(2)
            .block(Some(Duration::from_millis(5_000))),
        sealer(),
        inst(T0),
        &mut rng,
    )
    .unwrap();
    let keys = Arc::new(w.keys().clone());
    // Until the worker, idle, blocks.
    let blocking = loop {
        let cmd = w.poll_command().expect("a command");
        if cmd.block_ms().is_some() {
            break cmd;
        }
        let v = sim.execute(&cmd.kind);
        w.handle_reply(inst(T0), cmd.op, Reply::Value(v)).unwrap();
        while w.poll_event().is_some() {}
    };
    enqueue(&mut sim, &mut rng, 2);
    let pause = |paused| CommandKind::SetPaused {
        keys: keys.clone(),
        paused,
        now_ms: T0,
    };
    sim.execute(&pause(true));
    // The read takes both entries; the check after it finds the pause.
    let reads = std::slice::from_ref(&blocking.kind);
    let merged = sim.execute_merged(reads);
    assert_eq!(
        sim.execute_pause_check(reads),
        Value::Array(vec![Value::Int(1)])
    );
    // The mux's answer: `[entries, paused]`.
    let answer = Value::Array(vec![merged, Value::Int(1)]);
    w.handle_reply(inst(T0), blocking.op, Reply::Value(answer))
        .unwrap();
    let events: Vec<WorkerEvent> = std::iter::from_fn(|| w.poll_event()).collect();
    assert_eq!(events, [WorkerEvent::PauseSeen { paused: true }]);
    assert!(w.is_paused());
    let cmds: Vec<Command> = std::iter::from_fn(|| w.poll_command()).collect();
    assert!(
        matches!(&cmds[..], [Command { kind: CommandKind::Heartbeat { idle_ms, entries, unstarted: true, .. }, .. }]
            if *idle_ms == crate::time::millis(WorkerConfig::new("q", "c").lease) && entries.len() == 2),
        "handed back: {cmds:?}"
    );
    for c in cmds {
        let v = sim.execute(&c.kind);
        w.handle_reply(inst(T0), c.op, Reply::Value(v)).unwrap();
    }
    // Paused: a second later it asks, and reads nothing.
    assert_eq!(ms_of(w.poll_timeout()), Some(T0 + PAUSED_POLL_MS));
    sim.set_time(inst(T0 + PAUSED_POLL_MS));
    w.handle_timeout(inst(T0 + PAUSED_POLL_MS)).unwrap();
    let read = w.poll_command().expect("a question");
    assert!(
        matches!(read.kind, CommandKind::IsPaused { .. }),
        "{read:?}"
    );
    assert!(w.poll_command().is_none(), "no read while paused");
    let v = sim.execute(&read.kind);
    assert_eq!(v, Value::Int(1));
    w.handle_reply(inst(sim.now().unix_ms()), read.op, Reply::Value(v))
        .unwrap();
    assert!(w.poll_event().is_none());
    // Resumed: the next read says so, and the upkeep brings both back at once.
    sim.execute(&pause(false));
    let t = T0 + 2 * PAUSED_POLL_MS;
    sim.set_time(inst(t));
    w.handle_timeout(inst(t)).unwrap();
    let events = drive(&mut w, &mut sim);
    assert!(
        events.contains(&WorkerEvent::PauseSeen { paused: false }),
        "{events:?}"
    );
    let jobs: Vec<&Delivery> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::Job(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(jobs.len(), 2, "{events:?}");
    // Given back unstarted, their first delivery did not count: not a stall.
    assert!(jobs.iter().all(|d| d.deliveries == 1), "{jobs:?}");
    assert!(!w.is_paused());
}

/// Entries of `stream` its group has not delivered yet.
fn undelivered(sim: &Sim, stream: &str) -> usize {
    sim.stream(stream).map_or(0, |s| {
        let last = s.groups.get(GROUP).map(|g| g.last_delivered);
        s.entries
            .keys()
            .filter(|id| last.is_none_or(|l| **id > l))
            .count()
    })
}

#[test]
fn a_sharded_worker_shares_one_pool_and_no_job_waits_while_credits_are_free() {
    use crate::naming::{shard_of, shard_tags};
    use crate::producer::{Producer, ProducerConfig};
    use std::collections::BTreeMap;

    const C: u32 = 5;
    const SHARDS: u16 = 3;
    assert_eq!(
        ShardedWorker::new(
            WorkerConfig::new("hot", "c").concurrency(2),
            3,
            sealer(),
            inst(T0),
            &mut SeededRandom::new(0),
        )
        .err(),
        Some(WorkerError::Shards {
            concurrency: 2,
            shards: 3
        })
    );
    let zero = WorkerConfig::new("hot", "c").concurrency(0);
    assert_eq!(
        ShardedWorker::new(zero, 3, sealer(), inst(T0), &mut SeededRandom::new(0)).err(),
        Some(WorkerError::Concurrency(0))
    );
    for seed in 0..30 {
        let mut rng = SeededRandom::new(seed);
        let mut sim = Sim::new(inst(T0));
        let cfg = WorkerConfig::new("hot", "c").concurrency(C);
        let mut w = ShardedWorker::new(cfg, SHARDS, sealer(), inst(T0), &mut rng).unwrap();
        let tags = shard_tags("hot", SHARDS).unwrap();
        let mut producers: Vec<Producer> = tags
            .iter()
            .map(|t| {
                Producer::new(
                    ProducerConfig::new(t).block(None),
                    sealer(),
                    inst(T0),
                    &mut rng,
                )
                .unwrap()
            })
            .collect();
        let mut blocked: Vec<Command> = Vec::new();
        let mut running: Vec<(usize, EntryId)> = Vec::new();
        let mut started: BTreeMap<String, u32> = BTreeMap::new();
        let mut added = 0u32;
        let mut most = 0usize;
        for step in 0..3_000u64 {
            let now = T0 + step * 2;
            sim.set_time(inst(now));
            let roll = rng.next_u64() % 8;
            if roll < 3 && added < 400 {
                // Most jobs go to shard 0, which keeps most of the pool busy.
                let shard = if rng.next_u64() % 10 < 8 {
                    0
                } else {
                    (rng.next_u64() % u64::from(SHARDS)) as usize
                };
                let id = (0..)
                    .map(|k| JobId(format!("job-{seed}-{added}-{k}")))
                    .find(|id| shard_of(&id.0, SHARDS) == shard)
                    .unwrap();
                added += 1;
                let p = &mut producers[shard];
                let job = crate::producer::AddJob {
                    id: Some(id),
                    ..Default::default()
                };
                p.add(inst(now), job).unwrap();
                while let Some(cmd) = p.poll_command() {
                    let v = sim.execute(&cmd.kind);
                    p.handle_reply(inst(now), cmd.op, Reply::Value(v)).unwrap();
                }
                while p.poll_event().is_some() {}
            } else if roll < 6 && !running.is_empty() {
                let at = rng.next_u64() as usize % running.len();
                let (shard, entry) = running.swap_remove(at);
                w.complete(inst(now), shard, entry, b"ok", None).unwrap();
            }
            w.handle_timeout(inst(now)).unwrap();
            // Commands are answered one at a time, in random order (so a shard's reply can
            // come after another shard took credits); a blocked read once its stream has
            // something for it. Until only blocked reads are out.
            loop {
                blocked.extend(std::iter::from_fn(|| w.poll_command()));
                let ready: Vec<usize> = (0..blocked.len())
                    .filter(|i| match &blocked[*i].kind {
                        CommandKind::Read {
                            block_ms: Some(_),
                            keys,
                            ..
                        } => undelivered(&sim, &keys.jobs) > 0,
                        _ => true,
                    })
                    .collect();
                if ready.is_empty() {
                    break;
                }
                let cmd = blocked.swap_remove(ready[rng.next_u64() as usize % ready.len()]);
                let v = sim.execute(&cmd.kind);
                w.handle_reply(inst(now), cmd.op, Reply::Value(v)).unwrap();
                while let Some(ev) = w.poll_event() {
                    if let WorkerEvent::Job(d) = ev.event {
                        *started.entry(d.job.id.0.clone()).or_default() += 1;
                        running.push((ev.shard, d.entry));
                    }
                }
                most = most.max(w.running());
                assert!(w.running() <= C as usize, "seed {seed}: pool exceeded");
                assert_eq!(w.running(), running.len());
            }
            // No job waits in any shard while a credit is free.
            let waiting: usize = tags
                .iter()
                .map(|t| undelivered(&sim, &QueueKeys::new("dl", t).unwrap().jobs))
                .sum();
            // No job waits in any shard while a credit is free: every credit runs a job or
            // waits in an idle shard's blocking read (one each).
            let used: u32 = w.shards().iter().map(Worker::used_credits).sum();
            let idle_reads = (used as usize).saturating_sub(running.len());
            assert!(
                waiting == 0 || used == C,
                "seed {seed} step {step}: {waiting} jobs wait with {used} of {C} credits in use"
            );
            assert!(idle_reads <= usize::from(SHARDS), "seed {seed} step {step}");
            // Every idle shard keeps its blocking read out, even while other shards keep
            // the rest of the pool busy: a job added to it starts at once.
            for (shard, sw) in w.shards().iter().enumerate() {
                let out = blocked
                    .iter()
                    .any(|c| c.op.0 % u64::from(SHARDS) == shard as u64);
                assert!(
                    !sw.idle || out,
                    "seed {seed} step {step}: idle shard {shard} has no read"
                );
            }
        }
        assert_eq!(started.len(), added as usize, "seed {seed}");
        assert!(started.values().all(|n| *n == 1), "seed {seed}");
        assert_eq!(most, C as usize, "seed {seed}: the pool was never full");
    }
}

/// A partial reclaim scan that cannot move (no free credits after it claimed its share, or
/// the queue paused under it) waits for the worker's next turn: it once sent the same
/// upkeep again and again (the model test of failovers found it, through a pause a
/// failover brought back).
#[test]
fn a_reclaim_scan_that_cannot_move_waits_for_the_next_turn() {
    let mut rng = SeededRandom::new(9);
    let mut sim = Sim::new(inst(T0));
    enqueue(&mut sim, &mut rng, 6);
    // A worker takes all six and dies.
    let mut dead = Worker::new(
        WorkerConfig::new("q", "dead").concurrency(6).block(None),
        sealer(),
        inst(T0),
        &mut rng,
    )
    .unwrap();
    let taken = drive(&mut dead, &mut sim);
    let jobs = taken
        .iter()
        .filter(|e| matches!(e, WorkerEvent::Job(_)))
        .count();
    assert_eq!(jobs, 6);
    let later = T0 + 60_000;
    sim.set_time(inst(later));
    for paused in [false, true] {
        let keys = Arc::new(QueueKeys::new("dl", "q").unwrap());
        let pause = CommandKind::SetPaused {
            keys: keys.clone(),
            paused,
            now_ms: later,
        };
        sim.execute(&pause);
        let mut w = Worker::new(
            WorkerConfig::new("q", &format!("w{paused}"))
                .concurrency(2)
                .block(None),
            sealer(),
            inst(later),
            &mut rng,
        )
        .unwrap();
        let mut reclaims = 0;
        for _ in 0..50 {
            let Some(cmd) = w.poll_command() else { break };
            if matches!(cmd.kind, CommandKind::Reclaim { .. }) {
                reclaims += 1;
            }
            let v = sim.execute(&cmd.kind);
            w.handle_reply(inst(later), cmd.op, Reply::Value(v))
                .unwrap();
            while w.poll_event().is_some() {}
        }
        // Running: two jobs claimed and nothing more; paused: nothing claimed. Either way
        // one upkeep, then one more that found it cannot move, and no more until the turn.
        assert!(reclaims <= 2, "paused {paused}: {reclaims} upkeeps at once");
        assert_eq!(w.running(), if paused { 0 } else { 2 }, "paused {paused}");
        assert!(
            ms_of(w.poll_timeout()).is_some_and(|t| t > later),
            "paused {paused}"
        );
    }
}

/// A worker running a job when a failover loses its entry (the replica had the group and
/// no job), and the next job added takes the entry's id: the worker, the new master, the
/// first job's delivery. Time: `T0 + 100`.
fn failed_over_under_a_running_job(rng: &mut SeededRandom) -> (Worker, Sim, Delivery) {
    let mut sim = Sim::new(inst(T0));
    let mut w = Worker::new(
        WorkerConfig::new("q", "c").concurrency(2).block(None),
        sealer(),
        inst(T0),
        &mut *rng,
    )
    .unwrap();
    drive(&mut w, &mut sim);
    let t = T0 + 100;
    sim.set_time(inst(t));
    let replica = sim.clone();
    enqueue(&mut sim, rng, 1);
    w.handle_timeout(inst(t)).unwrap();
    let first = match drive(&mut w, &mut sim).as_slice() {
        [WorkerEvent::Job(d)] => d.clone(),
        other => panic!("{other:?}"),
    };
    // The failover: the entry is gone; the next add takes its id.
    let mut sim = replica;
    enqueue(&mut sim, rng, 1);
    let entries: Vec<EntryId> = sim
        .stream(&w.keys().jobs)
        .unwrap()
        .entries
        .keys()
        .copied()
        .collect();
    assert_eq!(entries, vec![first.entry], "the id was given again");
    (w, sim, first)
}

/// After a failover that lost a delivered entry, Redis can give its id to the next job
/// added (the stream's top went back). The worker still running the first job there must
/// neither settle the second with the first's answer (the settle scripts compare what the
/// worker read with what the entry holds) nor take the second for its own reclaimed entry.
#[test]
fn an_entry_id_a_failover_gave_again_is_not_settled_with_another_jobs_answer() {
    let mut rng = SeededRandom::new(9);
    let (mut w, mut sim, first) = failed_over_under_a_running_job(&mut rng);
    let keys = w.keys().clone();
    let t = T0 + 100;

    // The worker's next read delivers the second job at that id; before its reply is
    // seen, the first job's handler answers.
    w.handle_timeout(inst(t + 200)).unwrap();
    let read = w.poll_command().unwrap();
    assert!(matches!(read.kind, CommandKind::Read { .. }), "{read:?}");
    let read_reply = sim.execute(&read.kind);
    w.complete(inst(t + 200), first.entry, b"first").unwrap();
    let complete = w.poll_command().unwrap();
    assert!(matches!(complete.kind, CommandKind::Complete { .. }));
    let v = sim.execute(&complete.kind);
    assert_eq!(
        v,
        Value::Array(vec![Value::Int(0)]),
        "not the entry it read"
    );
    w.handle_reply(inst(t + 200), read.op, Reply::Value(read_reply))
        .unwrap();
    w.handle_reply(inst(t + 200), complete.op, Reply::Value(v))
        .unwrap();
    let events: Vec<_> = std::iter::from_fn(|| w.poll_event()).collect();
    let second = events
        .iter()
        .find_map(|e| match e {
            WorkerEvent::Job(d) => Some(d.clone()),
            _ => None,
        })
        .expect("the second job runs");
    assert_eq!(second.entry, first.entry);
    assert_ne!(second.job.id, first.job.id);
    assert!(events.contains(&WorkerEvent::Discarded { entry: first.entry }));

    // And when the read's reply comes while the first job still runs there: the first
    // run is superseded (its handler is stopped), the second delivered.
    let (mut w2, mut sim2, a) = failed_over_under_a_running_job(&mut rng);
    w2.handle_timeout(inst(t + 200)).unwrap();
    let events = drive(&mut w2, &mut sim2);
    assert_eq!(
        events.first(),
        Some(&WorkerEvent::Superseded {
            entry: a.entry,
            job: a.job.id.clone()
        }),
        "{events:?}"
    );
    let b = match events.get(1) {
        Some(WorkerEvent::Job(d)) => d.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (b.entry, w2.job_id(b.entry)),
        (a.entry, Some(b.job.id.clone()))
    );
    w2.complete(inst(t + 200), b.entry, b"second").unwrap();
    drive(&mut w2, &mut sim2);
    let ev = sim2.stream(&keys.events_of("p")).unwrap();
    assert_eq!(ev.entries.len(), 1, "the second job's result, once");
    let fields = ev.entries.values().next().unwrap();
    assert!(fields.contains(&(b"j".to_vec(), b.job.id.0.clone().into_bytes())));
}

/// At concurrency 1, a job's settle and the read of the next go out together (one round
/// trip per job, not two); settlements Redis has not confirmed stay bounded (one more than
/// may run), so a worker whose settles fail stops taking jobs.
#[test]
fn a_settle_and_the_next_read_go_together_and_unconfirmed_ones_are_bounded() {
    let mut rng = SeededRandom::new(10);
    let mut sim = Sim::new(inst(T0));
    let mut w = Worker::new(
        WorkerConfig::new("q", "c").concurrency(1).block(None),
        sealer(),
        inst(T0),
        &mut rng,
    )
    .unwrap();
    drive(&mut w, &mut sim);
    enqueue(&mut sim, &mut rng, 3);
    let t = T0 + 100;
    sim.set_time(inst(t));
    w.handle_timeout(inst(t)).unwrap();
    let first = match drive(&mut w, &mut sim).as_slice() {
        [WorkerEvent::Job(d)] => d.entry,
        other => panic!("{other:?}"),
    };
    w.complete(inst(t), first, b"1").unwrap();
    let sent: Vec<Command> = std::iter::from_fn(|| w.poll_command()).collect();
    let kinds: Vec<&str> = sent
        .iter()
        .map(|c| match c.kind {
            CommandKind::Complete { .. } => "complete",
            CommandKind::Read { .. } => "read",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["complete", "read"], "{sent:?}");
    // The settle's reply has not come yet; the read brings the second job.
    let (complete, read) = (&sent[0], &sent[1]);
    let v = sim.execute(&read.kind);
    w.handle_reply(inst(t), read.op, Reply::Value(v)).unwrap();
    let second = std::iter::from_fn(|| w.poll_event())
        .find_map(|e| match e {
            WorkerEvent::Job(d) => Some(d.entry),
            _ => None,
        })
        .expect("the second job");
    w.complete(inst(t), second, b"2").unwrap();
    // Two settlements unconfirmed at concurrency 1: no read, however long the first takes.
    let mut held = Vec::new();
    for step in 1..20u64 {
        let now = t + step * 1_000;
        w.handle_timeout(inst(now)).unwrap();
        while let Some(cmd) = w.poll_command() {
            assert!(
                !matches!(cmd.kind, CommandKind::Read { .. }),
                "read with two settlements unconfirmed: {cmd:?}"
            );
            held.push(cmd);
        }
    }
    // The first settle is confirmed: the third job is read.
    let now = t + 30_000;
    sim.set_time(inst(now));
    let v = sim.execute(&complete.kind);
    w.handle_reply(inst(now), complete.op, Reply::Value(v))
        .unwrap();
    for cmd in held {
        let v = sim.execute(&cmd.kind);
        w.handle_reply(inst(now), cmd.op, Reply::Value(v)).unwrap();
    }
    w.handle_timeout(inst(now)).unwrap();
    let events = drive(&mut w, &mut sim);
    assert!(
        events.iter().any(|e| matches!(e, WorkerEvent::Job(_))),
        "{events:?}"
    );
}

/// An idle read waits no longer than the worker's next upkeep, which waits for it (its
/// credits are the read's): a long wait (a doorbell's 30 s) does not put the upkeep off.
#[test]
fn an_idle_read_ends_by_the_next_upkeep() {
    let mut rng = SeededRandom::new(5);
    let mut sim = Sim::new(inst(T0));
    let mut w = Worker::new(
        WorkerConfig::new("q", "c").block(Some(Duration::from_millis(30_000))),
        sealer(),
        inst(T0),
        &mut rng,
    )
    .unwrap();
    // Until the worker goes idle: the first upkeep, an empty read, then a blocking read.
    let (op, block) = loop {
        let cmd = w.poll_command().expect("a command");
        if let CommandKind::Read {
            block_ms: Some(b), ..
        } = cmd.kind
        {
            break (cmd.op, b);
        }
        let v = sim.execute(&cmd.kind);
        w.handle_reply(inst(sim.now().unix_ms()), cmd.op, Reply::Value(v))
            .unwrap();
        while w.poll_event().is_some() {}
    };
    let upkeep_in = w.next_reclaim_ms - sim.now().unix_ms();
    assert!(
        (1..30_000).contains(&upkeep_in),
        "the next upkeep in {upkeep_in} ms"
    );
    assert_eq!(block, upkeep_in, "the read blocks until the upkeep");
    // The read comes back empty then, and the upkeep goes out at once.
    sim.set_time(inst(sim.now().unix_ms() + block));
    w.handle_reply(inst(sim.now().unix_ms()), op, Reply::Value(Value::Nil))
        .unwrap();
    let next = w.poll_command().expect("the upkeep");
    assert!(
        matches!(next.kind, CommandKind::Reclaim { .. }),
        "{:?}",
        next.kind
    );
}

/// Each delivery is a run of its own; only an entry's current run settles it, once.
#[test]
fn only_the_current_run_of_an_entry_settles_it() {
    let mut b = Bench::new();
    let mut w = b.worker("a", |c| c.concurrency(2));
    b.add(2);
    let ev = b.at(T0 + 100, &mut [&mut w]);
    let runs: Vec<(EntryId, u64)> = ev[0]
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::Job(d) => Some((d.entry, d.run)),
            _ => None,
        })
        .collect();
    assert_eq!(runs.len(), 2);
    assert_ne!(runs[0].1, runs[1].1);
    let (entry, run) = runs[0];
    let now = inst(T0 + 200);
    assert_eq!(
        w.finish_run(now, entry, runs[1].1, Ok(b"x"), None),
        Err(WorkerError::NotRunning(entry)),
        "another run's answer"
    );
    assert_eq!(w.running(), 2, "it settled nothing");
    assert_eq!(w.finish_run(now, entry, run, Err("no"), None), Ok(()));
    assert_eq!(w.running(), 1);
    assert_eq!(
        w.finish_run(now, entry, run, Ok(b"x"), None),
        Err(WorkerError::NotRunning(entry)),
        "the same answer again"
    );
    let (other, other_run) = runs[1];
    assert_eq!(w.finish_run(now, other, other_run, Ok(b"x"), None), Ok(()));
    assert_eq!(w.running(), 0);
}

/// A pipeline's settlements are counted by kind, and named by what they all are.
#[test]
fn settlements_are_counted_by_kind() {
    use crate::command::Settlements;
    let mut b = Bench::new();
    let mut w = b.worker("a", |c| c.concurrency(3));
    b.add(3);
    let running = jobs(&b.at(T0 + 100, &mut [&mut w])[0]);
    let now = inst(T0 + 200);
    w.complete(now, running[0], b"x").unwrap();
    let cmds: Vec<_> = std::iter::from_fn(|| w.poll_command()).collect();
    let one = Settlements::of(&cmds);
    assert_eq!((one.total(), one.operation()), (1, "ack"));
    // The default policy has one attempt: a failure is buried.
    w.fail(now, running[1], "no").unwrap();
    w.complete(now, running[2], b"y").unwrap();
    let cmds: Vec<_> = std::iter::from_fn(|| w.poll_command()).collect();
    let s = Settlements::of(&cmds);
    assert_eq!((s.completed, s.retried, s.buried), (1, 0, 1), "{cmds:?}");
    assert_eq!((s.total(), s.operation()), (2, "settle"));
    assert_eq!(Settlements::default().total(), 0);
    // With a second attempt left, a failure is retried.
    let policy = RetryPolicy::new(
        2,
        Backoff::Fixed {
            delay: Duration::from_millis(500),
        },
    );
    let mut r = b.worker("r", |c| c.concurrency(1).retry(policy));
    b.add(1);
    let again = jobs(&b.at(T0 + 300, &mut [&mut r])[0]);
    r.fail(inst(T0 + 400), again[0], "later").unwrap();
    let cmds: Vec<_> = std::iter::from_fn(|| r.poll_command()).collect();
    let s = Settlements::of(&cmds);
    assert_eq!((s.completed, s.retried, s.buried), (0, 1, 0), "{cmds:?}");
    assert_eq!((s.total(), s.operation()), (1, "retry"));
}

/// A first attempt's wait is measured from its add; a retry's is not measured.
#[test]
fn a_delivery_tells_its_first_wait() {
    let mut b = Bench::new();
    let mut w = b.worker("a", |c| c.concurrency(1));
    b.add(1);
    let ev = b.at(T0 + 100, &mut [&mut w]);
    let Some(WorkerEvent::Job(mut d)) = ev[0]
        .iter()
        .find(|e| matches!(e, WorkerEvent::Job(_)))
        .cloned()
    else {
        panic!("no job: {ev:?}");
    };
    let added = d.job.created_at_ms;
    assert_eq!(
        d.waited(inst(added + 250)),
        Some(Duration::from_millis(250))
    );
    assert_eq!(
        d.waited(inst(added.saturating_sub(5))),
        Some(Duration::ZERO),
        "clock behind"
    );
    d.job.attempt = 2;
    assert_eq!(d.waited(inst(added + 250)), None);
}
