use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::*;
use crate::naming::{GROUP, QueueKeys};
use crate::random::{Random, SeededRandom};
use crate::sim::Sim;
#[allow(unused_imports)]
use crate::time::Duration;
use crate::time::testing::{inst, ms_of};
use crate::value::EntryId;

fn keys(q: &str) -> Arc<QueueKeys> {
    Arc::new(QueueKeys::new("dl", q).expect("keys"))
}

fn read(q: &str, count: u32, block_ms: u64) -> CommandKind {
    CommandKind::Read {
        keys: keys(q),
        consumer: "c".into(),
        count,
        block_ms: Some(block_ms),
    }
}

/// The entries of a reply: a merged read's, or a worker's answer `[paused, entries]`.
fn entries_of(reply: &Reply) -> Vec<EntryId> {
    let Reply::Value(Value::Array(streams)) = reply else {
        return Vec::new();
    };
    // A worker's answer: `[entries, paused]`.
    let streams = match (streams.first(), streams.get(1)) {
        (Some(Value::Array(s)), Some(Value::Int(_))) => s,
        _ => streams,
    };
    let mut ids = Vec::new();
    for s in streams {
        if let Value::Array(parts) = s {
            if let Some(Value::Array(entries)) = parts.get(1) {
                for e in entries {
                    if let Value::Array(e) = e {
                        if let Some(Value::Bulk(id)) = e.first() {
                            ids.extend(EntryId::parse(id));
                        }
                    }
                }
            }
        }
    }
    ids
}

fn run_merged(sim: &mut Sim, reads: &[CommandKind]) -> Value {
    sim.execute_merged(reads)
}

fn drain(mux: &mut ReadMux) -> (Vec<MuxCommand>, Vec<Answer>) {
    (
        std::iter::from_fn(|| mux.poll_command()).collect(),
        std::iter::from_fn(|| mux.poll_answer()).collect(),
    )
}

#[test]
fn reads_of_different_streams_merge_and_a_second_read_of_one_stream_waits() {
    let mut mux = ReadMux::new();
    let a = mux.submit(inst(0), OpId(1), read("q0", 5, 5_000));
    let (cmds, answers) = drain(&mut mux);
    assert!(answers.is_empty());
    assert_eq!(
        cmds,
        vec![MuxCommand::Read {
            reads: vec![read("q0", 5, 5_000)],
            check: true,
            block_ms: 5_000
        }]
    );
    // A read of another stream interrupts the command; so would a second read of q0.
    let b = mux.submit(inst(10), OpId(2), read("q1", 5, 5_000));
    let c = mux.submit(inst(10), OpId(3), read("q0", 5, 1_000));
    assert_eq!(drain(&mut mux).0, vec![MuxCommand::Unblock]);
    mux.handle_unblock_reply(inst(11), Some(true));
    mux.handle_read_reply(inst(12), Reply::Value(Value::Nil));
    // The next command: a and b (one per stream), until the earliest deadline; c waits.
    let (cmds, answers) = drain(&mut mux);
    assert!(answers.is_empty(), "{answers:?}");
    assert_eq!(
        cmds,
        vec![MuxCommand::Read {
            reads: vec![read("q0", 5, 5_000), read("q1", 5, 5_000)],
            check: true,
            block_ms: 4_988
        }]
    );
    // c's deadline passes while it is not in the command: nil at its deadline.
    assert_eq!(ms_of(mux.poll_timeout()), Some(1_010));
    mux.handle_timeout(inst(1_010));
    let (_, answers) = drain(&mut mux);
    assert_eq!(answers.len(), 1);
    assert_eq!(
        (answers[0].ticket, &answers[0].reply),
        (c, &Reply::Value(Value::Nil))
    );
    // An unknown outcome goes to every read of the command.
    mux.handle_read_reply(inst(1_020), Reply::Unknown);
    let (_, answers) = drain(&mut mux);
    let got: Vec<(Ticket, Reply)> = answers.into_iter().map(|x| (x.ticket, x.reply)).collect();
    assert_eq!(got, vec![(a, Reply::Unknown), (b, Reply::Unknown)]);
    assert_eq!(mux.waiting(), 0);
    assert_eq!(ms_of(mux.poll_timeout()), None);
}

#[test]
fn an_early_unblock_is_sent_again_until_it_lands() {
    let mut mux = ReadMux::new();
    mux.submit(inst(0), OpId(1), read("q0", 1, 5_000));
    drain(&mut mux);
    mux.submit(inst(1), OpId(2), read("q1", 1, 5_000));
    assert_eq!(drain(&mut mux).0, vec![MuxCommand::Unblock]);
    // Nothing was blocked yet: again, 1 ms later, then 2 ms later.
    mux.handle_unblock_reply(inst(2), Some(false));
    assert_eq!(ms_of(mux.poll_timeout()), Some(3));
    mux.handle_timeout(inst(2));
    assert!(drain(&mut mux).0.is_empty(), "not yet due");
    mux.handle_timeout(inst(3));
    assert_eq!(drain(&mut mux).0, vec![MuxCommand::Unblock]);
    mux.handle_unblock_reply(inst(4), None);
    assert_eq!(ms_of(mux.poll_timeout()), Some(6));
    mux.handle_timeout(inst(6));
    assert_eq!(drain(&mut mux).0, vec![MuxCommand::Unblock]);
    mux.handle_unblock_reply(inst(7), Some(true));
    assert_eq!(
        ms_of(mux.poll_timeout()),
        Some(5_001),
        "q1 waits outside the command: its deadline"
    );
    // Late replies of an unblock after the command returned change nothing.
    mux.handle_read_reply(inst(8), Reply::Value(Value::Nil));
    mux.handle_unblock_reply(inst(9), Some(false));
    let (cmds, _) = drain(&mut mux);
    assert!(matches!(cmds.as_slice(), [MuxCommand::Read { reads, .. }] if reads.len() == 2));
}

#[test]
fn nogroup_goes_to_its_stream_only_and_cancel_ends_a_wait() {
    let mut mux = ReadMux::new();
    let a = mux.submit(inst(0), OpId(1), read("q0", 1, 5_000));
    drain(&mut mux);
    mux.submit(inst(0), OpId(2), read("q1", 1, 5_000));
    mux.handle_unblock_reply(inst(0), Some(true));
    mux.handle_read_reply(inst(0), Reply::Value(Value::Nil));
    drain(&mut mux);
    let err = "NOGROUP No such key 'dl:{q1}:jobs' or consumer group 'workers'".to_owned();
    mux.handle_read_reply(inst(5), Reply::Value(Value::Error(err.clone())));
    let (cmds, answers) = drain(&mut mux);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].op, OpId(2));
    assert_eq!(answers[0].reply, Reply::Value(Value::Error(err)));
    // q0's read goes out again on its own; cancelling it interrupts and its nil comes back.
    assert!(matches!(cmds.as_slice(), [MuxCommand::Read { reads, .. }] if reads.len() == 1));
    mux.cancel(inst(6), a);
    assert_eq!(drain(&mut mux).0, vec![MuxCommand::Unblock]);
    mux.handle_read_reply(inst(7), Reply::Value(Value::Nil));
    let (cmds, answers) = drain(&mut mux);
    assert!(cmds.is_empty());
    assert_eq!(
        (answers[0].ticket, &answers[0].reply),
        (a, &Reply::Value(Value::Nil))
    );
    // Cancelling what was answered already, and a reply nobody waits for: no-ops.
    mux.cancel(inst(8), a);
    mux.handle_read_reply(inst(9), Reply::Unknown);
    assert_eq!(drain(&mut mux), (vec![], vec![]));
}

/// The command at "Redis": its reads, when it blocks until, whether it was unblocked.
struct Out {
    reads: Vec<CommandKind>,
    /// Its pause check goes with it.
    check: bool,
    until_ms: u64,
    blocking: bool,
    unblocked: bool,
}

const STREAMS: [&str; 3] = ["q0", "q1", "q2"];
/// The stream each reader reads (two read q0).
const READERS: [usize; 4] = [0, 1, 2, 0];

fn jobs_key(q: usize) -> String {
    format!("dl:{{{}}}:jobs", STREAMS[q])
}

/// The stream of the model that holds entry `id` (ids are unique within a stream only).
fn stream_holding(sim: &Sim, id: EntryId) -> Vec<usize> {
    (0..STREAMS.len())
        .filter(|q| {
            sim.stream(&jobs_key(*q))
                .is_some_and(|s| s.entries.contains_key(&id))
        })
        .collect()
}

/// What the readers and "Redis" know, and the checks on every drain of the mux.
#[derive(Default)]
struct Readers {
    /// Reads not answered: reader, deadline, cancelled.
    outstanding: HashMap<Ticket, (usize, u64, bool)>,
    ticket: [Option<Ticket>; 4],
    out: Option<Out>,
    /// The pause check that is out.
    check: Option<Vec<CommandKind>>,
    /// The last check's reply was lost.
    check_lost: bool,
    unblocks: u32,
    delivered: BTreeSet<(usize, EntryId)>,
}

impl Readers {
    /// Drains the mux at `now`: at most one command out, one read per stream; every answer
    /// for a read that waits, once, never nil before its deadline unless cancelled, with
    /// entries of its own stream only, each delivered once. After `handle_timeout(now)`
    /// (`timed_out`) no timer is due any more (a past timer after another input only says a
    /// timeout is due).
    fn drain(&mut self, mux: &mut ReadMux, sim: &Sim, now: u64, timed_out: bool, at: &str) {
        while let Some(cmd) = mux.poll_command() {
            match cmd {
                MuxCommand::Read {
                    reads,
                    block_ms,
                    check,
                } => {
                    assert!(self.out.is_none(), "{at}: two commands out");
                    assert!(self.check.is_none(), "{at}: a read while a check is out");
                    let streams: BTreeSet<_> = reads
                        .iter()
                        .map(|r| match r {
                            CommandKind::Read { keys, .. } => keys.jobs.clone(),
                            _ => String::new(),
                        })
                        .collect();
                    assert_eq!(streams.len(), reads.len(), "{at}: one read per stream");
                    assert!(block_ms >= 1);
                    assert!(check, "{at}: a few workers' reads carry their check");
                    self.out = Some(Out {
                        reads,
                        check,
                        until_ms: now + block_ms,
                        blocking: false,
                        unblocked: false,
                    });
                }
                MuxCommand::Unblock => self.unblocks += 1,
                MuxCommand::Check { reads } => {
                    assert!(self.check.is_none() && self.out.is_none(), "{at}: two out");
                    assert!(!reads.is_empty(), "{at}: an empty check");
                    self.check = Some(reads);
                }
            }
        }
        while let Some(a) = mux.poll_answer() {
            let (reader, deadline, cancelled) = self
                .outstanding
                .remove(&a.ticket)
                .unwrap_or_else(|| panic!("{at}: {a:?} answered twice or never asked"));
            assert_eq!(a.op, OpId(reader as u64));
            self.ticket[reader] = None;
            if a.reply == Reply::Value(Value::Nil) {
                assert!(
                    cancelled || now >= deadline,
                    "{at}: nil before the deadline"
                );
            }
            if let Reply::Value(Value::Array(pair)) = &a.reply {
                if let (Some(Value::Int(paused)), false) = (pair.get(1), self.check_lost) {
                    // Checked after the read: paused now means paused then or since.
                    let key = format!("dl:{{{}}}:paused", STREAMS[READERS[reader]]);
                    assert_eq!(*paused == 1, sim.get(&key).is_some(), "{at}: {a:?}");
                }
            }
            for id in entries_of(&a.reply) {
                let q = READERS[reader];
                assert!(
                    stream_holding(sim, id).contains(&q),
                    "{at}: an entry of another stream"
                );
                assert!(self.delivered.insert((q, id)), "{at}: delivered twice");
            }
        }
        self.check_lost = false;
        if let Some(t) = ms_of(mux.poll_timeout()).filter(|_| timed_out) {
            assert!(
                t > now,
                "{at}: timer {t} still due after the timeout at {now}"
            );
        }
    }
}

/// Random readers (two of one stream, one of a stream without a group until someone makes
/// it) over the model, with entries added, time passing, unblocks that come early, and
/// replies lost: every read is answered exactly once, never nil before its deadline unless
/// cancelled, each entry reaches at most one read (of its stream), every entry the model
/// delivered reached a read or was in a lost reply, and no timer is still due after a timeout.
#[test]
fn merged_reads_on_the_model_with_faults_answer_every_read_once() {
    for seed in 0..300u64 {
        let mut rng = SeededRandom::new(seed);
        let mut r = |n: u64| rng.next_u64() % n;
        let mut now = 1_000_000u64;
        let mut sim = Sim::new(inst(now));
        for q in &STREAMS[..2] {
            sim.execute(&CommandKind::EnsureGroup { keys: keys(q) });
        }
        let mut mux = ReadMux::new();
        let mut h = Readers::default();
        let mut lost: BTreeSet<(usize, EntryId)> = BTreeSet::new();
        for step in 0..400 {
            let at = format!("seed {seed} step {step}");
            let (mut fed, mut timed_out) = (true, false);
            match r(11) {
                9 => {
                    let q = STREAMS[r(3) as usize];
                    sim.execute(&CommandKind::SetPaused {
                        keys: keys(q),
                        paused: r(2) == 0,
                        now_ms: now,
                    });
                    fed = false;
                }
                10 => {
                    fed = false;
                    if let Some(reads) = h.check.take() {
                        // Lost, sometimes: as if paused (the entries go back).
                        let reply = if r(8) == 0 {
                            Reply::Unknown
                        } else {
                            Reply::Value(sim.execute_pause_check(&reads))
                        };
                        // Lost, its answers come as paused whatever the queue is.
                        h.check_lost = reply == Reply::Unknown;
                        mux.handle_check_reply(inst(now), reply);
                        fed = true;
                    }
                }
                0 | 1 => {
                    let reader = r(4) as usize;
                    if h.ticket[reader].is_none() {
                        let block = [1, 50, 5_000][r(3) as usize];
                        let kind = read(STREAMS[READERS[reader]], 1 + r(3) as u32, block);
                        let t = mux.submit(inst(now), OpId(reader as u64), kind);
                        h.ticket[reader] = Some(t);
                        h.outstanding.insert(t, (reader, now + block, false));
                    }
                }
                2 => {
                    let reader = r(4) as usize;
                    if let Some(t) = h.ticket[reader] {
                        if let Some(o) = h.outstanding.get_mut(&t) {
                            o.2 = true;
                        }
                        mux.cancel(inst(now), t);
                    }
                }
                3 => {
                    let fields = vec![(b"j".to_vec(), format!("{step}").into_bytes())];
                    sim.xadd_raw(&jobs_key(r(3) as usize), fields)
                        .expect("a stream");
                    fed = false;
                }
                4 => {
                    now += [1, 10, 1_000][r(3) as usize];
                    sim.set_time(inst(now));
                    fed = false;
                }
                5 | 6 => {
                    // Redis serves the command: at once when it finds something (or an error),
                    // else when its block ends or it is unblocked.
                    fed = false;
                    if let Some(o) = &mut h.out {
                        let value = run_merged(&mut sim, &o.reads);
                        if value != Value::Nil || o.unblocked || now >= o.until_ms {
                            let lose = r(10) == 0;
                            if lose {
                                for id in entries_of(&Reply::Value(value.clone())) {
                                    lost.extend(
                                        stream_holding(&sim, id).into_iter().map(|q| (q, id)),
                                    );
                                }
                            }
                            let reply = if lose {
                                Reply::Unknown
                            } else {
                                Reply::Value(value)
                            };
                            // The check behind the read: run right after it, its reply
                            // lost sometimes (then a check of its own follows).
                            let check = match (o.check, r(8)) {
                                (false, _) | (true, 0) => Reply::NotSent,
                                (true, _) => Reply::Value(sim.execute_pause_check(&o.reads)),
                            };
                            h.out = None;
                            mux.handle_checked_read_reply(inst(now), reply, check);
                            fed = true;
                        } else {
                            o.blocking = true;
                        }
                    }
                }
                7 => {
                    if h.unblocks > 0 {
                        h.unblocks -= 1;
                        let landed = match h.out.as_mut() {
                            Some(o) if o.blocking => {
                                o.unblocked = true;
                                Some(true)
                            }
                            _ => [Some(false), None][r(2) as usize],
                        };
                        mux.handle_unblock_reply(inst(now), landed);
                    } else {
                        fed = false;
                    }
                }
                _ => {
                    if r(2) == 0 {
                        sim.execute(&CommandKind::EnsureGroup { keys: keys("q2") });
                    }
                    mux.handle_timeout(inst(now));
                    timed_out = true;
                }
            }
            if fed {
                h.drain(&mut mux, &sim, now, timed_out, &at);
            }
        }
        // Quiesce: time passes, Redis answers, unblocks land, until every read is answered.
        for round in 0..200 {
            if h.outstanding.is_empty() {
                break;
            }
            now += 1_000;
            sim.set_time(inst(now));
            let at = format!("seed {seed} quiescing {round}");
            if let Some(o) = h.out.take() {
                let value = run_merged(&mut sim, &o.reads);
                let check = if o.check {
                    Reply::Value(sim.execute_pause_check(&o.reads))
                } else {
                    Reply::NotSent
                };
                mux.handle_checked_read_reply(inst(now), Reply::Value(value), check);
                h.drain(&mut mux, &sim, now, false, &at);
            }
            if let Some(reads) = h.check.take() {
                mux.handle_check_reply(inst(now), Reply::Value(sim.execute_pause_check(&reads)));
                h.drain(&mut mux, &sim, now, false, &at);
            }
            while h.unblocks > 0 {
                h.unblocks -= 1;
                mux.handle_unblock_reply(inst(now), Some(false));
            }
            mux.handle_timeout(inst(now));
            h.drain(&mut mux, &sim, now, true, &at);
        }
        assert!(
            h.outstanding.is_empty(),
            "seed {seed}: reads never answered: {:?}",
            h.outstanding
        );
        // Every entry the model handed out reached a read, or was in a lost reply.
        for (q, name) in STREAMS.iter().enumerate() {
            let Some(s) = sim.stream(&jobs_key(q)) else {
                continue;
            };
            if let Some(g) = s.groups.get(GROUP) {
                for id in g.pel.keys() {
                    assert!(
                        h.delivered.contains(&(q, *id)) || lost.contains(&(q, *id)),
                        "seed {seed}: entry {id} of {name} delivered to nobody"
                    );
                }
            }
        }
    }
}

/// A read that waits longer than a merged command may block (a doorbell's 30 s) goes out
/// in commands of at most `MAX_BLOCK_MS`, sent again while it waits, and is answered nil
/// only at its own deadline.
#[test]
fn a_long_wait_is_served_by_commands_of_at_most_the_longest_block() {
    let mut mux = ReadMux::new();
    mux.submit(inst(0), OpId(1), read("q0", 1, 12_000));
    let mut now = 0;
    let mut sent = Vec::new();
    loop {
        let (cmds, answers) = drain(&mut mux);
        if let Some(a) = answers.first() {
            assert_eq!(a.reply, Reply::Value(Value::Nil));
            break;
        }
        let [MuxCommand::Read { block_ms, .. }] = cmds.as_slice() else {
            panic!("one read at a time: {cmds:?}");
        };
        sent.push(*block_ms);
        now += block_ms;
        mux.handle_read_reply(inst(now), Reply::Value(Value::Nil));
    }
    assert_eq!(sent, vec![MAX_BLOCK_MS, MAX_BLOCK_MS, 2_000]);
    assert_eq!(now, 12_000, "answered at its deadline, not before");
}

/// A command of a few workers' reads carries their pause check: a read that took entries
/// is answered with its queue's flag at once, no check of its own after it; when that
/// reply is missing, a check follows as for a command without one. A command of more
/// than `MERGE_LIMIT` reads carries none.
#[test]
fn a_few_workers_reads_carry_their_pause_check() {
    let mut sim = Sim::new(inst(1_000));
    for q in ["q0", "q1"] {
        sim.execute(&CommandKind::EnsureGroup { keys: keys(q) });
    }
    sim.execute(&CommandKind::SetPaused {
        keys: keys("q1"),
        paused: true,
        now_ms: 1_000,
    });
    let mut mux = ReadMux::new();
    let a = mux.submit(inst(1_000), OpId(1), read("q0", 5, 5_000));
    drain(&mut mux);
    let b = mux.submit(inst(1_000), OpId(2), read("q1", 5, 5_000));
    assert_eq!(drain(&mut mux).0, vec![MuxCommand::Unblock]);
    mux.handle_unblock_reply(inst(1_001), Some(true));
    mux.handle_read_reply(inst(1_001), Reply::Value(Value::Nil));
    let (cmds, _) = drain(&mut mux);
    let [MuxCommand::Read { reads, check, .. }] = cmds.as_slice() else {
        panic!("{cmds:?}");
    };
    assert!(*check);
    for q in [0, 1] {
        let fields = vec![(b"j".to_vec(), b"x".to_vec())];
        sim.xadd_raw(&jobs_key(q), fields).expect("a stream");
    }
    let value = run_merged(&mut sim, reads);
    let flags = sim.execute_pause_check(reads);
    mux.handle_checked_read_reply(inst(1_002), Reply::Value(value), Reply::Value(flags));
    let (cmds, answers) = drain(&mut mux);
    assert!(
        !cmds.iter().any(|c| matches!(c, MuxCommand::Check { .. })),
        "{cmds:?}"
    );
    let paused: Vec<(Ticket, Option<Value>)> = answers
        .iter()
        .map(|x| match &x.reply {
            Reply::Value(Value::Array(pair)) => (x.ticket, pair.get(1).cloned()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        paused,
        vec![(a, Some(Value::Int(0))), (b, Some(Value::Int(1)))]
    );
    // Again, the check's reply lost: a check of their own follows.
    mux.submit(inst(1_003), OpId(3), read("q0", 5, 5_000));
    let (cmds, _) = drain(&mut mux);
    let [MuxCommand::Read { reads, .. }] = cmds.as_slice() else {
        panic!("{cmds:?}");
    };
    let fields = vec![(b"j".to_vec(), b"y".to_vec())];
    sim.xadd_raw(&jobs_key(0), fields).expect("a stream");
    let value = run_merged(&mut sim, reads);
    mux.handle_checked_read_reply(inst(1_004), Reply::Value(value), Reply::Unknown);
    let (cmds, answers) = drain(&mut mux);
    assert!(answers.is_empty(), "{answers:?}");
    assert!(
        matches!(cmds.as_slice(), [MuxCommand::Check { .. }]),
        "{cmds:?}"
    );
    // Past MERGE_LIMIT reads, a command carries no check.
    let mut mux = ReadMux::new();
    for i in 0..=MERGE_LIMIT {
        mux.submit(inst(0), OpId(i as u64), read(&format!("w{i}"), 1, 5_000));
    }
    drain(&mut mux);
    mux.handle_unblock_reply(inst(1), Some(true));
    mux.handle_read_reply(inst(1), Reply::Value(Value::Nil));
    let (cmds, _) = drain(&mut mux);
    assert!(
        matches!(cmds.as_slice(), [MuxCommand::Read { reads, check: false, .. }] if reads.len() == MERGE_LIMIT + 1),
        "{cmds:?}"
    );
}
