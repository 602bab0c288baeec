//! The engine against the Redis Streams model: random interleavings of adds, handler
//! outcomes (ok, error, panic, hang), worker crashes and restarts, lost commands and
//! replies, and clock jumps, over 1–3 queues with 1–3 producers (each its own id) and 1–4
//! workers each. Checked at every step
//! and at quiescence against what the application saw:
//! - no job is lost: every added job ends completed or dead-lettered, never both, with
//!   exactly one final outcome at its producer, even when the caller adds its id again
//!   before it ended;
//! - attempts never exceed the limit, are delivered in order (a reclaim repeats one, a
//!   retry takes the next), failures are reported in order; no job runs before its delay;
//! - transient error replies (`LOADING`) are retried, never an outcome;
//! - workers shut down draining or handing their jobs back lose none; adds to a paused
//!   queue are refused;
//! - every completed job's result reaches the producer that added it, intact, and no
//!   outcome reaches another producer of the queue;
//! - pending lists, work streams and every per-job key end empty;
//! - every add call is answered exactly once (taken, ended, unavailable, unconfirmed,
//!   paused, failed; by its deadline at the latest, at once in fail-fast mode while Redis
//!   is away), and a job whose call was answered `Unavailable` never reaches Redis unless
//!   its id is added again;
//! - after every step (due timers fired, everything drained, as a driver does) no
//!   machine's timer is due: one whose action waits for a reply or for credits would wake
//!   its driver again and again;
//! - and all of it again with failovers (a replica that takes over with what it had;
//!   adds, settles and the producer's other unseen writes wait for it, `replicated`).

use datalayer_core::retry::{Backoff, RetryPolicy};
use datalayer_core::sim::Faults;
use datalayer_core::sim::world::{Answer, World, WorldConfig};
use datalayer_core::time::Duration;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Add {
        queue: usize,
        delay_ms: u64,
    },
    Deliver {
        pick: usize,
    },
    Answer {
        slot: usize,
        pick: usize,
        answer: Answer,
    },
    Advance {
        ms: u64,
    },
    Crash {
        slot: usize,
    },
    Restart {
        slot: usize,
    },
    JumpBack {
        ms: u64,
    },
    Faults {
        lose_command: u16,
        lose_reply: u16,
        error_reply: u16,
    },
    AddAgain {
        queue: usize,
        pick: usize,
    },
    Pause {
        queue: usize,
        paused: bool,
    },
    ShutDown {
        slot: usize,
        hand_back: bool,
    },
    Replace {
        producer: usize,
    },
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        6 => Just(Answer::Ok),
        2 => Just(Answer::Err),
        1 => Just(Answer::Panic),
        1 => Just(Answer::Hang),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..9, prop_oneof![4 => Just(0u64), 1 => 1u64..5_000])
            .prop_map(|(queue, delay_ms)| Op::Add { queue, delay_ms }),
        12 => any::<usize>().prop_map(|pick| Op::Deliver { pick }),
        10 => (0usize..12, any::<usize>(), answer())
            .prop_map(|(slot, pick, answer)| Op::Answer { slot, pick, answer }),
        4 => prop_oneof![1u64..200, 200u64..20_000].prop_map(|ms| Op::Advance { ms }),
        1 => (0usize..12).prop_map(|slot| Op::Crash { slot }),
        2 => (0usize..12).prop_map(|slot| Op::Restart { slot }),
        1 => (1u64..5_000).prop_map(|ms| Op::JumpBack { ms }),
        1 => (0u16..300, 0u16..300, prop_oneof![2 => Just(0u16), 1 => 0u16..200])
            .prop_map(|(lose_command, lose_reply, error_reply)| Op::Faults {
                lose_command,
                lose_reply,
                error_reply,
            }),
        2 => (0usize..9, any::<usize>()).prop_map(|(queue, pick)| Op::AddAgain { queue, pick }),
        1 => (0usize..9, any::<bool>()).prop_map(|(queue, paused)| Op::Pause { queue, paused }),
        1 => (0usize..12, any::<bool>())
            .prop_map(|(slot, hand_back)| Op::ShutDown { slot, hand_back }),
        1 => (0usize..9).prop_map(|producer| Op::Replace { producer }),
    ]
}

fn world_config() -> impl Strategy<Value = WorldConfig> {
    (
        (1usize..=3, prop_oneof![2 => Just(1usize), 1 => 2usize..=3]),
        1usize..=4,
        1u32..=3,
        1u32..=4,
        1u32..=3,
        any::<u64>(),
    )
        .prop_map(
            |(
                (queues, producers_per_queue),
                workers_per_queue,
                concurrency,
                attempts,
                max_stalled,
                seed,
            )| WorldConfig {
                queues,
                producers_per_queue,
                workers_per_queue,
                concurrency,
                retry: RetryPolicy::new(
                    attempts,
                    Backoff::Exponential {
                        base: Duration::from_millis(50),
                        max: Duration::from_millis(2_000),
                        jitter: true,
                    },
                )
                .max_stalled(max_stalled),
                lease: Duration::from_secs(3),
                timeout: Some(Duration::from_secs(8)),
                faults: Faults::default(),
                replicated: false,
                seed,
            },
        )
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(5_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn no_job_is_lost(cfg in world_config(), ops in prop::collection::vec(op(), 1..200)) {
        run(&mut World::new(cfg), ops, 0)?;
    }

    /// Failovers: now and then the master's replica takes over with what it had, and the
    /// writes not yet replicated are gone (reads, heartbeats, promotions, acknowledgements
    /// of results...). Adds and settles wait for a replica (`replicated`), so the same
    /// holds as without failovers: no job whose add was confirmed is lost, each ends once
    /// at its producer (an outcome written twice, after a rolled-back delivery ran the job
    /// again, reaches it once), and nothing is left behind.
    #[test]
    fn no_confirmed_job_is_lost_across_failovers(
        cfg in world_config(),
        failover in 1u16..80,
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let cfg = WorldConfig {
            replicated: true,
            faults: Faults { failover, ..Faults::default() },
            ..cfg
        };
        run(&mut World::new(cfg), ops, failover)?;
    }
}

/// Runs `ops` on `world` (`failover`: the failovers per mille the faults keep), checking
/// the invariants at every step and at quiescence.
fn run(world: &mut World, ops: Vec<Op>, failover: u16) -> Result<(), TestCaseError> {
    let producers = world.producers();
    let slots = world.slots();
    for op in ops {
        match op {
            Op::Add { queue, delay_ms } => {
                world.add(queue % producers, Duration::from_millis(delay_ms))
            }
            Op::Deliver { pick } => world.deliver(pick),
            Op::Answer { slot, pick, answer } => world.answer(slot % slots, pick, answer),
            Op::Advance { ms } => world.advance(Duration::from_millis(ms)),
            Op::Crash { slot } => world.crash(slot % slots),
            Op::Restart { slot } => world.restart(slot % slots),
            Op::JumpBack { ms } => world.set_time(world.now - Duration::from_millis(ms)),
            Op::Faults {
                lose_command,
                lose_reply,
                error_reply,
            } => {
                world.net.faults = Faults {
                    lose_command,
                    lose_reply,
                    error_reply,
                    failover,
                };
            }
            Op::AddAgain { queue, pick } => world.add_again(queue % producers, pick),
            Op::Pause { queue, paused } => world.pause(queue % producers, paused),
            Op::ShutDown { slot, hand_back } => world.shut_down(slot % slots, hand_back),
            Op::Replace { producer } => world.replace_producer(producer % producers),
        }
        // As a driver does between inputs; every timer must then lie ahead.
        world.fire_due_timers();
        if let Err(e) = world.check_step() {
            prop_assert!(false, "{}", e);
        }
    }
    prop_assert!(
        world.quiesce(200_000),
        "did not quiesce: {} (ledger {:?})",
        world.why_not_quiescent(),
        world.ledger
    );
    if let Err(e) = world.check_quiescent() {
        prop_assert!(false, "{} ({} failovers)", e, world.net.failovers);
    }
    Ok(())
}

/// The random runs above reach the answers an add call can get (all but `Failed` and
/// `Refused`: the model has no out-of-memory, and a refusal is an engine error there):
/// without this, a model that never lets a deadline pass would check the answers' rules
/// vacuously.
#[test]
fn the_random_runs_reach_taken_ended_unavailable_unconfirmed_and_paused() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..300 {
        let cfg = world_config().new_tree(&mut runner).unwrap().current();
        let ops = prop::collection::vec(op(), 1..200)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut world = World::new(cfg);
        run(&mut world, ops, 0).unwrap();
        for (kind, n) in &world.ledger.answers {
            *answers.entry(*kind).or_insert(0) += n;
        }
    }
    for kind in ["taken", "ended", "unavailable", "unconfirmed", "paused"] {
        assert!(
            answers.get(kind).is_some_and(|n| *n > 0),
            "{kind}: {answers:?}"
        );
    }
}
