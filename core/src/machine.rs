//! The one shape of every machine: [`Machine`], which [`crate::producer::Producer`],
//! [`crate::worker::Worker`] and [`crate::worker::ShardedWorker`] implement, so that one
//! driver (the adapter's, the deterministic world's, a user's property test) runs any of
//! them.
//!
//! A driver gives the machine an input — a reply, the time, or a call of the application
//! through the machine's own methods (`add_call`, `complete`, ...) — then drains
//! [`Machine::poll_command`] and [`Machine::poll_event`] until both are `None`, and calls
//! [`Machine::handle_timeout`] when [`Machine::poll_timeout`] says (see [`crate::timers`]
//! for the rules of time). Every command gets exactly one reply
//! ([`crate::command::Reply`]). Randomness is an input too: the machines that draw none
//! (the producer's replies and timers) ignore the generator they are given.
//!
//! The machines keep their own methods as well (the producer's `handle_reply` takes no
//! generator); the trait is the common shape, not a replacement.
//!
//! ```
//! use datalayer_core::command::Reply;
//! use datalayer_core::envelope::Sealer;
//! use datalayer_core::keys::{KeyId, Secret, SecretRing};
//! use datalayer_core::machine::Machine;
//! use datalayer_core::producer::{AddJob, Producer, ProducerConfig, ProducerEvent};
//! use datalayer_core::random::{Random, SeededRandom};
//! use datalayer_core::sim::Sim;
//! use datalayer_core::worker::{Worker, WorkerConfig, WorkerEvent};
//!
//! /// One driver for any machine: its commands to the model, the replies back, its events.
//! fn pump<M: Machine>(m: &mut M, redis: &mut Sim, now: u64, rng: &mut impl Random) -> Vec<M::Event> {
//!     let mut events = Vec::new();
//!     while let Some(cmd) = m.poll_command() {
//!         let reply = Reply::Value(redis.execute(&cmd.kind));
//!         m.handle_reply(now, cmd.op, reply, rng).expect("a reply to its command");
//!         events.extend(std::iter::from_fn(|| m.poll_event()));
//!     }
//!     events
//! }
//!
//! let mut rng = SeededRandom::new(3);
//! let secrets = SecretRing::new(KeyId(1), Secret::generate(&mut rng));
//! let sealer = Sealer::new(secrets.queue_keyring("irc"));
//! let now = 1_700_000_000_000;
//! let mut redis = Sim::new(now);
//! let mut queue = Producer::new(ProducerConfig::new("irc").block_ms(None), sealer.clone(), now)?;
//! let mut worker = Worker::new(WorkerConfig::new("irc", "w1").block_ms(None), sealer, now)?;
//! queue.add(now, AddJob { payload: b"hi".to_vec(), ..AddJob::default() }, &mut rng)?;
//! pump(&mut queue, &mut redis, now, &mut rng);
//! let jobs = pump(&mut worker, &mut redis, now, &mut rng);
//! assert!(matches!(&jobs[..], [WorkerEvent::Job(d)] if d.job.payload == b"hi"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::command::{Command, OpId, Reply};
use crate::random::Random;

/// A sans-io machine: commands out, replies and time in, events for the application.
pub trait Machine {
    /// What the machine tells the application.
    type Event;
    /// An input the machine refused: a driver's mistake (a reply to no command, events
    /// left undrained), never bad data from Redis, which is handled inside.
    type Error: std::error::Error;

    /// The next command to send (all of them may go out as one pipeline).
    fn poll_command(&mut self) -> Option<Command>;

    /// The reply to command `op`, at `now_ms`.
    ///
    /// # Errors
    /// The machine's error for a reply it cannot take.
    fn handle_reply(
        &mut self,
        now_ms: u64,
        op: OpId,
        reply: Reply,
        rng: &mut impl Random,
    ) -> Result<(), Self::Error>;

    /// Time passed: fire the timers due at `now_ms` (a call before any is due does
    /// nothing).
    ///
    /// # Errors
    /// The machine's error when its events were left undrained.
    fn handle_timeout(&mut self, now_ms: u64, rng: &mut impl Random) -> Result<(), Self::Error>;

    /// When to call [`Machine::handle_timeout`] next (ms), if a timer is set.
    fn poll_timeout(&self) -> Option<u64>;

    /// The next event for the application.
    fn poll_event(&mut self) -> Option<Self::Event>;
}

impl Machine for crate::producer::Producer {
    type Event = crate::producer::ProducerEvent;
    type Error = crate::producer::ProducerError;

    fn poll_command(&mut self) -> Option<Command> {
        Self::poll_command(self)
    }

    fn handle_reply(
        &mut self,
        now_ms: u64,
        op: OpId,
        reply: Reply,
        _rng: &mut impl Random,
    ) -> Result<(), Self::Error> {
        Self::handle_reply(self, now_ms, op, reply)
    }

    fn handle_timeout(&mut self, now_ms: u64, _rng: &mut impl Random) -> Result<(), Self::Error> {
        Self::handle_timeout(self, now_ms);
        Ok(())
    }

    fn poll_timeout(&self) -> Option<u64> {
        Self::poll_timeout(self)
    }

    fn poll_event(&mut self) -> Option<Self::Event> {
        Self::poll_event(self)
    }
}

/// The workers' implementation: their own methods, which take the generator.
macro_rules! worker_machine {
    ($machine:ty, $event:ty) => {
        impl Machine for $machine {
            type Event = $event;
            type Error = crate::worker::WorkerError;

            fn poll_command(&mut self) -> Option<Command> {
                Self::poll_command(self)
            }

            fn handle_reply(
                &mut self,
                now_ms: u64,
                op: OpId,
                reply: Reply,
                rng: &mut impl Random,
            ) -> Result<(), Self::Error> {
                Self::handle_reply(self, now_ms, op, reply, rng)
            }

            fn handle_timeout(
                &mut self,
                now_ms: u64,
                rng: &mut impl Random,
            ) -> Result<(), Self::Error> {
                Self::handle_timeout(self, now_ms, rng)
            }

            fn poll_timeout(&self) -> Option<u64> {
                Self::poll_timeout(self)
            }

            fn poll_event(&mut self) -> Option<Self::Event> {
                Self::poll_event(self)
            }
        }
    };
}

worker_machine!(crate::worker::Worker, crate::worker::WorkerEvent);
worker_machine!(crate::worker::ShardedWorker, crate::worker::ShardEvent);
