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
//! ([`crate::command::Reply`]). Each machine owns its randomness: its constructor seeds its
//! generator from the one it is given ([`crate::random::MachineRandom`]), so a run is
//! determined by its inputs, the constructors' generators included.
//!
//! The machines keep their own methods as well (the same signatures); the trait is the
//! common shape, for code generic over machines.
//!
//! ```
//! use datalayer_core::command::Reply;
//! use datalayer_core::envelope::Sealer;
//! use datalayer_core::keys::{KeyId, Secret, SecretRing};
//! use datalayer_core::machine::Machine;
//! use datalayer_core::producer::{AddJob, Producer, ProducerConfig, ProducerEvent};
//! use datalayer_core::random::SeededRandom;
//! use datalayer_core::sim::Sim;
//! use datalayer_core::time::Instant;
//! use datalayer_core::worker::{Worker, WorkerConfig, WorkerEvent};
//!
//! /// One driver for any machine: its commands to the model, the replies back, its events.
//! fn pump<M: Machine>(m: &mut M, redis: &mut Sim, now: Instant) -> Vec<M::Event> {
//!     let mut events = Vec::new();
//!     while let Some(cmd) = m.poll_command() {
//!         let reply = Reply::Value(redis.execute(&cmd.kind));
//!         m.handle_reply(now, cmd.op, reply).expect("a reply to its command");
//!         events.extend(std::iter::from_fn(|| m.poll_event()));
//!     }
//!     events
//! }
//!
//! let mut rng = SeededRandom::new(3);
//! let secrets = SecretRing::new(KeyId(1), Secret::generate(&mut rng));
//! let sealer = Sealer::new(secrets.queue_keyring("irc"));
//! let now = Instant::from_unix_ms(1_700_000_000_000);
//! let mut redis = Sim::new(now);
//! let mut queue = Producer::new(ProducerConfig::new("irc").block(None), sealer.clone(), now, &mut rng)?;
//! let mut worker = Worker::new(WorkerConfig::new("irc", "w1").block(None), sealer, now, &mut rng)?;
//! queue.add(now, AddJob { payload: b"hi".to_vec(), ..AddJob::default() })?;
//! pump(&mut queue, &mut redis, now);
//! let jobs = pump(&mut worker, &mut redis, now);
//! assert!(matches!(&jobs[..], [WorkerEvent::Job(d)] if d.job.payload == b"hi"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::command::{Command, OpId, Reply};
use crate::time::Instant;

/// A sans-io machine: commands out, replies and time in, events for the application.
pub trait Machine {
    /// What the machine tells the application.
    type Event;
    /// An input the machine refused: a driver's mistake (a reply to no command, events
    /// left undrained), never bad data from Redis, which is handled inside.
    type Error: std::error::Error;

    /// The next command to send (all of them may go out as one pipeline).
    fn poll_command(&mut self) -> Option<Command>;

    /// The reply to command `op`, at `now`.
    ///
    /// # Errors
    /// The machine's error for a reply it cannot take.
    fn handle_reply(&mut self, now: Instant, op: OpId, reply: Reply) -> Result<(), Self::Error>;

    /// Time passed: fire the timers due at `now` (a call before any is due does nothing).
    ///
    /// # Errors
    /// The machine's error when its events were left undrained.
    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error>;

    /// When to call [`Machine::handle_timeout`] next, if a timer is set.
    fn poll_timeout(&self) -> Option<Instant>;

    /// The next event for the application.
    fn poll_event(&mut self) -> Option<Self::Event>;
}

/// Every machine's implementation: its own methods.
macro_rules! machine {
    ($machine:ty, $event:ty, $error:ty) => {
        impl Machine for $machine {
            type Event = $event;
            type Error = $error;

            fn poll_command(&mut self) -> Option<Command> {
                Self::poll_command(self)
            }

            fn handle_reply(
                &mut self,
                now: Instant,
                op: OpId,
                reply: Reply,
            ) -> Result<(), Self::Error> {
                Self::handle_reply(self, now, op, reply)
            }

            fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
                Self::handle_timeout(self, now)
            }

            fn poll_timeout(&self) -> Option<Instant> {
                Self::poll_timeout(self)
            }

            fn poll_event(&mut self) -> Option<Self::Event> {
                Self::poll_event(self)
            }
        }
    };
}

machine!(
    crate::producer::Producer,
    crate::producer::ProducerEvent,
    crate::producer::ProducerError
);
machine!(
    crate::worker::Worker,
    crate::worker::WorkerEvent,
    crate::worker::WorkerError
);
machine!(
    crate::worker::ShardedWorker,
    crate::worker::ShardEvent,
    crate::worker::WorkerError
);
