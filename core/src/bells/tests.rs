use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::naming::QueueKeys;
#[allow(unused_imports)]
use crate::time::Duration;
use crate::time::testing::{inst, ms_of};

fn read(queue: &str, block_ms: u64) -> CommandKind {
    CommandKind::Read {
        keys: Arc::new(QueueKeys::new("dl", queue).unwrap()),
        consumer: "c".into(),
        count: 10,
        block_ms: Some(block_ms),
    }
}

fn bell(queue: &str) -> String {
    QueueKeys::new("dl", queue).unwrap().bell_jobs
}

fn drain(b: &mut Bells) -> Vec<BellCommand> {
    std::iter::from_fn(|| b.poll_command()).collect()
}

fn answers(b: &mut Bells) -> Vec<Answer> {
    std::iter::from_fn(|| b.poll_answer()).collect()
}

fn entries() -> Reply {
    Reply::Value(Value::Array(vec![Value::Int(1)]))
}

const NIL: Reply = Reply::Value(Value::Nil);

#[test]
fn a_read_subscribes_then_reads_without_block() {
    let mut b = Bells::new();
    let t = b.submit(inst(0), OpId(7), read("q", 5_000));
    assert_eq!(drain(&mut b), vec![BellCommand::Subscribe(bell("q"))]);
    // A second reader of the channel waits for the same subscription.
    let t2 = b.submit(inst(0), OpId(8), read("q", 5_000));
    assert!(drain(&mut b).is_empty());
    b.handle_subscribed(inst(1), &bell("q"), true);
    let sent = drain(&mut b);
    assert_eq!(sent.len(), 2);
    for cmd in &sent {
        let BellCommand::Read { kind, .. } = cmd else {
            panic!("{cmd:?}")
        };
        assert!(matches!(kind, CommandKind::Read { block_ms: None, .. }));
    }
    b.handle_read_reply(inst(2), t, entries());
    b.handle_read_reply(inst(2), t2, entries());
    let got = answers(&mut b);
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].op, got[0].reply.clone()), (OpId(7), entries()));
    assert_eq!(b.waiting(), 0);
    // The channel stays subscribed: the next read goes at once.
    b.submit(inst(3), OpId(9), read("q", 5_000));
    assert!(matches!(drain(&mut b)[..], [BellCommand::Read { .. }]));
}

#[test]
fn an_empty_read_parks_until_a_ring_or_its_deadline() {
    let mut b = Bells::new();
    let t = b.submit(inst(0), OpId(1), read("q", 5_000));
    drain(&mut b);
    b.handle_subscribed(inst(0), &bell("q"), true);
    drain(&mut b);
    b.handle_read_reply(inst(10), t, NIL);
    assert!(drain(&mut b).is_empty() && answers(&mut b).is_empty());
    assert_eq!(ms_of(b.poll_timeout()), Some(5_000));
    // A ring of another channel does nothing; its own reads again.
    b.handle_ring(&bell("other"));
    assert!(drain(&mut b).is_empty());
    b.handle_ring(&bell("q"));
    assert!(matches!(drain(&mut b)[..], [BellCommand::Read { ticket, .. }] if ticket == t));
    b.handle_read_reply(inst(20), t, NIL);
    // A spurious timeout is a no-op; the deadline answers nil.
    b.handle_timeout(inst(4_999));
    assert!(answers(&mut b).is_empty());
    b.handle_timeout(inst(5_000));
    assert_eq!(answers(&mut b)[0].reply, NIL);
    assert_eq!(b.waiting(), 0);
}

#[test]
fn a_ring_while_the_read_is_out_is_not_missed() {
    let mut b = Bells::new();
    let t = b.submit(inst(0), OpId(1), read("q", 5_000));
    b.handle_subscribed(inst(0), &bell("q"), true);
    drain(&mut b);
    // The entry landed (and rang) after the read ran, before its empty reply came back.
    b.handle_ring(&bell("q"));
    b.handle_read_reply(inst(1), t, NIL);
    assert!(matches!(drain(&mut b)[..], [BellCommand::Read { ticket, .. }] if ticket == t));
}

#[test]
fn a_lost_subscription_subscribes_again_and_reads() {
    let mut b = Bells::new();
    let t = b.submit(inst(0), OpId(1), read("q", 5_000));
    b.handle_subscribed(inst(0), &bell("q"), true);
    drain(&mut b);
    b.handle_read_reply(inst(1), t, NIL);
    b.handle_lost([bell("q").as_str()]);
    assert_eq!(drain(&mut b), vec![BellCommand::Subscribe(bell("q"))]);
    b.handle_subscribed(inst(2), &bell("q"), true);
    assert!(matches!(drain(&mut b)[..], [BellCommand::Read { .. }]));
    // Lost while the read is out: its empty reply subscribes again instead of parking.
    b.handle_lost(b.channels().iter().map(String::as_str).collect::<Vec<_>>());
    assert!(drain(&mut b).is_empty());
    b.handle_read_reply(inst(3), t, NIL);
    assert_eq!(drain(&mut b), vec![BellCommand::Subscribe(bell("q"))]);
}

#[test]
fn a_failed_subscription_is_not_sent_and_cancels_answer_once() {
    let mut b = Bells::new();
    let t = b.submit(inst(0), OpId(1), read("q", 5_000));
    drain(&mut b);
    b.handle_subscribed(inst(1), &bell("q"), false);
    assert_eq!(answers(&mut b)[0].reply, Reply::NotSent);
    // Cancelled while parked: nil at once; while out: the read's own reply, once.
    let t = {
        b.cancel(inst(2), t);
        b.submit(inst(2), OpId(2), read("q", 5_000))
    };
    assert_eq!(drain(&mut b), vec![BellCommand::Subscribe(bell("q"))]);
    b.handle_subscribed(inst(2), &bell("q"), true);
    drain(&mut b);
    b.cancel(inst(3), t);
    assert!(answers(&mut b).is_empty());
    b.handle_read_reply(inst(4), t, NIL);
    b.cancel(inst(5), t);
    assert_eq!(answers(&mut b).len(), 1);
    // Not a read: an error at once.
    b.submit(inst(6), OpId(3), CommandKind::Ping);
    assert!(matches!(
        &answers(&mut b)[0].reply,
        Reply::Value(Value::Error(_))
    ));
}

#[test]
fn an_unused_channel_is_unsubscribed_after_the_linger() {
    let mut b = Bells::new();
    let t = b.submit(inst(0), OpId(1), read("q", 100));
    b.handle_subscribed(inst(0), &bell("q"), true);
    drain(&mut b);
    b.handle_read_reply(inst(1), t, NIL);
    b.handle_timeout(inst(100));
    answers(&mut b);
    assert_eq!(ms_of(b.poll_timeout()), Some(100 + LINGER_MS));
    b.handle_timeout(inst(100 + LINGER_MS - 1));
    assert!(drain(&mut b).is_empty());
    b.handle_timeout(inst(100 + LINGER_MS));
    assert_eq!(drain(&mut b), vec![BellCommand::Unsubscribe(bell("q"))]);
    assert_eq!((b.subscribed(), ms_of(b.poll_timeout())), (0, None));
}

/// One step of the randomized world.
#[derive(Debug, Clone)]
enum Step {
    /// A reader of queue `q` submits (if it has no read out).
    Submit(u8),
    /// An entry is added to queue `q`'s stream, and its bell rung (delivered later).
    Add(u8),
    /// The next delivery on the command connection (a command runs, a reply arrives), or
    /// (true) on the subscription connection (a ring arrives): rings may overtake replies.
    Deliver(bool),
    /// The subscription connection drops: rings in flight are lost.
    Drop,
    /// Time passes.
    Tick(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0u8..3).prop_map(Step::Submit),
        2 => (0u8..3).prop_map(Step::Add),
        6 => any::<bool>().prop_map(Step::Deliver),
        1 => Just(Step::Drop),
        1 => (0u16..3_000).prop_map(Step::Tick),
    ]
}

/// What travels between the machine and the (simulated) server.
#[derive(Debug)]
enum Pending {
    Command(BellCommand),
    /// A read's reply on its way back (rings can overtake it).
    Reply(Ticket, Reply),
}

proptest! {
    /// Readers of three queues, writers adding entries, rings delivered late or lost with
    /// the connection, time passing: every read is answered exactly once, and once every
    /// message is delivered no reader waits while its stream holds an entry.
    #[test]
    fn no_reader_sleeps_on_a_waiting_entry(steps in proptest::collection::vec(step(), 1..120)) {
        let mut b = Bells::new();
        let mut now = 0u64;
        let mut streams = [0u32; 3];
        let mut pending: std::collections::VecDeque<Pending> = Default::default();
        let mut rings: std::collections::VecDeque<String> = Default::default();
        let mut subscribed: BTreeSet<String> = BTreeSet::new();
        let mut out: BTreeMap<u8, Ticket> = BTreeMap::new();
        let mut answered: BTreeSet<Ticket> = BTreeSet::new();
        let queue_of = |ch: &str| (0..3u8).find(|q| bell(&format!("q{q}")) == ch);
        let settle = |b: &mut Bells, out: &mut BTreeMap<u8, Ticket>, answered: &mut BTreeSet<Ticket>, pending: &mut std::collections::VecDeque<Pending>| {
            while let Some(c) = b.poll_command() {
                pending.push_back(Pending::Command(c));
            }
            while let Some(a) = b.poll_answer() {
                assert!(answered.insert(a.ticket), "answered twice");
                out.retain(|_, t| *t != a.ticket);
            }
        };
        for s in steps.iter().cloned().chain(std::iter::repeat_n(Step::Deliver(false), 400).chain(std::iter::repeat_n(Step::Deliver(true), 400)).cycle().take(2_000)) {
            match s {
                Step::Submit(q) => {
                    if let std::collections::btree_map::Entry::Vacant(e) = out.entry(q) {
                        e.insert(b.submit(inst(now), OpId(u64::from(q)), read(&format!("q{q}"), 5_000)));
                    }
                }
                Step::Add(q) => {
                    streams[usize::from(q)] += 1;
                    let ch = bell(&format!("q{q}"));
                    if subscribed.contains(&ch) {
                        rings.push_back(ch);
                    }
                }
                Step::Deliver(true) => {
                    if let Some(ch) = rings.pop_front() {
                        b.handle_ring(&ch);
                    }
                }
                Step::Deliver(false) => match pending.pop_front() {
                    Some(Pending::Command(BellCommand::Subscribe(ch))) => {
                        subscribed.insert(ch.clone());
                        b.handle_subscribed(inst(now), &ch, true);
                    }
                    Some(Pending::Command(BellCommand::Unsubscribe(ch))) => {
                        subscribed.remove(&ch);
                    }
                    Some(Pending::Command(BellCommand::Read { ticket, kind })) => {
                        let CommandKind::Read { keys, .. } = kind else { panic!() };
                        let q = queue_of(&keys.bell_jobs).unwrap();
                        // A read takes every entry there is.
                        let n = std::mem::take(&mut streams[usize::from(q)]);
                        let reply = if n > 0 { entries() } else { NIL };
                        pending.push_back(Pending::Reply(ticket, reply));
                    }
                    Some(Pending::Reply(ticket, reply)) => b.handle_read_reply(inst(now), ticket, reply),
                    None => {}
                },
                Step::Drop => {
                    rings.clear();
                    subscribed.clear();
                    let lost = b.channels();
                    b.handle_lost(lost.iter().map(String::as_str));
                }
                Step::Tick(ms) => {
                    now += u64::from(ms);
                    b.handle_timeout(inst(now));
                }
            }
            settle(&mut b, &mut out, &mut answered, &mut pending);
        }
        // Quiescent: nothing in flight; a reader still waiting has nothing to find.
        prop_assert!(pending.is_empty() && rings.is_empty());
        for q in out.keys() {
            prop_assert_eq!(streams[usize::from(*q)], 0, "reader of q{} sleeps on an entry", q);
        }
        // Every read ends by its deadline.
        now += 10_000;
        b.handle_timeout(inst(now));
        settle(&mut b, &mut out, &mut answered, &mut pending);
        prop_assert!(out.is_empty() && b.waiting() == 0);
    }
}

/// The values of `bytes` (RESP2, as redis-server 7.0 sends them on a subscribed connection).
fn values(bytes: &[u8]) -> Vec<Value> {
    let mut d = crate::resp::Decoder::default();
    let mut at = 0;
    let mut out = Vec::new();
    while let Some((v, used)) = d.decode(&bytes[at..]).unwrap() {
        out.push(v);
        at += used;
    }
    assert_eq!(at, bytes.len());
    out
}

#[test]
fn a_subscription_connection_tells_rings_confirmations_and_losses_apart() {
    let mut s = Subscription::default();
    let mut out = Vec::new();
    s.subscribe(&mut out, "a");
    s.subscribe(&mut out, "b");
    s.subscribe(&mut out, "c");
    assert_eq!(
        out,
        b"*2\r\n$10\r\nSSUBSCRIBE\r\n$1\r\na\r\n*2\r\n$10\r\nSSUBSCRIBE\r\n$1\r\nb\r\n\
          *2\r\n$10\r\nSSUBSCRIBE\r\n$1\r\nc\r\n"
    );
    let heard: Vec<Option<BellInput>> = values(
        b"*3\r\n$10\r\nssubscribe\r\n$1\r\na\r\n:1\r\n\
          *3\r\n$8\r\nsmessage\r\n$1\r\na\r\n$1\r\n1\r\n\
          -MOVED 15495 127.0.0.1:7002\r\n\
          *3\r\n$10\r\nssubscribe\r\n$1\r\nc\r\n:2\r\n\
          *3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:1\r\n\
          +PONG\r\n*2\r\n$1\r\nx\r\n$1\r\ny\r\n*3\r\n$8\r\nsmessage\r\n$2\r\n\xff\xfe\r\n$0\r\n\r\n",
    )
    .into_iter()
    .map(|v| s.heard(v))
    .collect();
    let sub = |c: &str, ok| {
        Some(BellInput::Subscribed {
            channel: c.into(),
            ok,
        })
    };
    assert_eq!(
        heard,
        [
            sub("a", true),
            Some(BellInput::Ring("a".into())),
            // The error answers the oldest command waiting: b's.
            sub("b", false),
            sub("c", true),
            // Nobody asked: the server ended it.
            Some(BellInput::Lost(vec!["a".into()])),
            None,
            None,
            None,
        ]
    );

    // Our own unsubscribe's confirmation means nothing; a subscription still waiting when
    // the connection goes failed.
    out.clear();
    s.unsubscribe(&mut out, "c");
    s.subscribe(&mut out, "d");
    assert_eq!(
        s.heard(values(b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\nc\r\n:0\r\n").remove(0)),
        None
    );
    assert_eq!(s.abandon(), [sub("d", false).unwrap()]);
    assert_eq!(s.heard(Value::Error("ERR x".into())), None, "nothing waits");
}
