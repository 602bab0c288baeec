//! # datalayer-core
//!
//! The sans-io core of datalayer, a job engine on Redis Streams: it decides everything and
//! performs no IO. It reads no clock (time is an input), draws no OS randomness (a
//! [`Random`] source is an input), and opens no socket. The tokio adapter (`datalayer-tokio`)
//! executes what it decides.
//!
//! ## The loop that drives it
//!
//! Each machine — a [`producer::Producer`] (Sockethub's JobQueue) or a [`worker::Worker`]
//! (its JobWorker) — is driven the same way: give it an input (a call of the application, a
//! reply, or the time), then drain `poll_command` (commands for Redis, all of which may go
//! out as one pipeline) and `poll_event` (news for the application) until both are `None`,
//! and call `handle_timeout` when `poll_timeout` says. Every command gets exactly one reply:
//! Redis' answer, [`command::Reply::Unknown`] when the connection failed (it may have run),
//! or [`command::Reply::NotSent`] when it was never written. Here the
//! in-memory model `sim::Sim` (feature `model`) stands in for Redis. Time is an input
//! ([`time::Instant`], [`time::Duration`]); each machine owns its randomness, seeded from the
//! generator its constructor is given:
//!
//! ```
//! use datalayer_core::command::Reply;
//! use datalayer_core::envelope::Sealer;
//! use datalayer_core::keys::{KeyId, Secret, SecretRing};
//! use datalayer_core::producer::{AddJob, Producer, ProducerConfig, ProducerEvent};
//! use datalayer_core::random::SeededRandom;
//! use datalayer_core::sim::Sim;
//! use datalayer_core::time::{Duration, Instant};
//! use datalayer_core::worker::{Worker, WorkerConfig, WorkerEvent};
//!
//! let mut rng = SeededRandom::new(7); // the adapter passes the OS generator
//! let secrets = SecretRing::new(KeyId(1), Secret::generate(&mut rng));
//! let sealer = Sealer::new(secrets.queue_keyring("irc"));
//! let mut now = Instant::from_unix_ms(1_700_000_000_000); // the adapter reads the clock
//! let mut redis = Sim::new(now);
//!
//! let cfg = ProducerConfig::new("irc").block(None);
//! let mut queue = Producer::new(cfg, sealer.clone(), now, &mut rng)?;
//! let cfg = WorkerConfig::new("irc", "worker-1").concurrency(4).block(None);
//! let mut worker = Worker::new(cfg, sealer, now, &mut rng)?;
//! let job = queue.add(now, AddJob { payload: b"hello".to_vec(), ..AddJob::default() })?;
//!
//! let mut result = None;
//! while result.is_none() {
//!     // The producer: send its commands, feed the replies, surface its events.
//!     while let Some(cmd) = queue.poll_command() {
//!         let reply = Reply::Value(redis.execute(&cmd.kind));
//!         queue.handle_reply(now, cmd.op, reply)?;
//!     }
//!     while let Some(event) = queue.poll_event() {
//!         if let ProducerEvent::Completed { job: id, result: r, .. } = event {
//!             assert_eq!(id, job);
//!             result = Some(r);
//!         }
//!     }
//!     // The worker: the same loop; its events are jobs to run.
//!     while let Some(cmd) = worker.poll_command() {
//!         let reply = Reply::Value(redis.execute(&cmd.kind));
//!         worker.handle_reply(now, cmd.op, reply)?;
//!         while let Some(event) = worker.poll_event() {
//!             if let WorkerEvent::Job(d) = event {
//!                 let answer = [&d.job.payload[..], b", world"].concat();
//!                 worker.complete(now, d.entry, &answer)?;
//!             }
//!         }
//!     }
//!     // Time passes until the earliest timer.
//!     let next = [queue.poll_timeout(), worker.poll_timeout()].into_iter().flatten().min();
//!     now = next.unwrap_or(now + Duration::from_millis(10));
//!     redis.set_time(now);
//!     queue.handle_timeout(now)?;
//!     worker.handle_timeout(now)?;
//! }
//! assert_eq!(result.as_deref(), Some(&b"hello, world"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Modules
//! - [`producer`] and [`worker`]: the machines; [`command`]: what they ask of Redis, and
//!   [`scripts`]: exactly how that runs (each atomic transition in one module: its contract,
//!   its Lua, its arguments and the model of it); [`value`]: the
//!   replies, decoded totally.
//! - [`envelope`]: the sealed byte format (AES-256-GCM-SIV, context-bound, optionally
//!   lz4-compressed) every job, result and reason is stored in; [`keys`]: secrets, HKDF
//!   derivation per queue and per session, keyrings for rotation.
//! - [`mux`]: the multiplexer that merges the blocking reads of idle readers onto one
//!   connection (deadlines, interruptions, who gets which part of a reply); [`bells`]: idle
//!   readers woken by doorbells instead; both are a [`mux::ReadService`], the shape one
//!   adapter loop runs.
//! - [`cluster`]: a Redis Cluster's slot table and the routing decisions (which node each
//!   command goes to, what a reply teaches, when to read the layout again); [`reconnect`]:
//!   when to connect again and which dead connections to kill; [`resp`]: the RESP codec
//!   (decoding total, fuzzed); [`server`]: what a server's settings risk; [`url`]: Redis
//!   URLs, parsed and checked.
//! - [`timers`]: every machine's timers, each named (`Worker::timers`, `Producer::timers`),
//!   and the rules of time (it may go backwards; a spurious `handle_timeout` is a no-op).
//! - [`retry`]: attempts and backoff; [`naming`]: the Redis key layout; [`job`]: job records.
//! - `sim` (feature `model`): the deterministic model of Redis Streams, which the
//!   adapter's in-process backend runs and the differential tests check against
//!   redis-server; with feature `test-util` also its fault injection and `sim::world`, the
//!   driver of the state-machine tests.
//! - [`time`]: instants and durations, and the rules of time; [`random`]: the injected
//!   randomness and each machine's own generator (`random::SeededRandom`, a predictable generator
//!   for tests, and the `fuzz` entry points need `test-util`: no production build has
//!   them).
//!
//! ## Sealing, on its own
//!
//! ```
//! use datalayer_core::envelope::{Context, Purpose, Sealer};
//! use datalayer_core::job::{Instance, JobId, JobRecord};
//! use datalayer_core::keys::{KeyId, Secret, SecretRing};
//! use datalayer_core::random::SeededRandom;
//!
//! let mut rng = SeededRandom::new(42);
//! let secrets = SecretRing::new(KeyId(1), Secret::generate(&mut rng));
//! let sealer = Sealer::new(secrets.queue_keyring("irc"));
//!
//! let job = JobRecord {
//!     id: JobId::from("job-1"),
//!     title: "irc:send".into(),
//!     session_id: "session-a".into(),
//!     payload: br#"{"type":"send"}"#.to_vec(),
//!     attempt: 1,
//!     created_at_ms: 1_700_000_000_000,
//!     instance: Instance::generate(&mut rng),
//! };
//! // The scope is the queue's key stem, `<prefix>:{<queue>}`.
//! let ctx = Context::new(Purpose::Job, "dl:{irc}", job.id.0.as_bytes());
//! let bytes = sealer.seal(&ctx, &job, &mut rng)?;
//! assert_eq!(sealer.open::<JobRecord>(&ctx, &bytes)?, job);
//!
//! // The same bytes in another queue do not open.
//! let other = Context::new(Purpose::Job, "dl:{xmpp}", job.id.0.as_bytes());
//! assert!(sealer.open::<JobRecord>(&other, &bytes).is_err());
//! # Ok::<(), datalayer_core::envelope::EnvelopeError>(())
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod bells;
pub mod cluster;
pub mod command;
pub mod credentials;
pub mod envelope;
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub mod fuzz;
mod hex;
pub mod job;
pub mod keys;
pub mod machine;
pub mod mux;
pub mod naming;
pub mod pipeline;
pub mod producer;
pub mod random;
pub mod reconnect;
pub mod resp;
pub mod retry;
mod scaffold;
pub mod scripts;
pub mod server;
#[cfg(feature = "model")]
pub mod sim;
pub mod time;
pub mod timers;
pub mod trace;
pub mod url;
pub mod value;
pub mod worker;

pub use random::Random;
