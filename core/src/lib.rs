//! # datalayer-core
//!
//! The sans-io core of datalayer, a job engine on Redis Streams: it decides everything and
//! performs no IO. It reads no clock (time is an input), draws no OS randomness (a
//! [`Random`] source is an input), and opens no socket. The tokio adapter (`datalayer-tokio`)
//! executes what it decides.
//!
//! This crate currently holds the foundation every record goes through:
//! - [`envelope`]: the sealed byte format (AES-256-GCM-SIV, context-bound, optionally
//!   lz4-compressed), with total parsing;
//! - [`keys`]: secrets, HKDF derivation per queue and per session, keyrings for rotation;
//! - [`random`]: the injected randomness;
//! - [`job`]: job ids and the job record.
//!
//! ```
//! use datalayer_core::envelope::{Context, Purpose, Sealer};
//! use datalayer_core::job::{JobId, JobRecord};
//! use datalayer_core::keys::{KeyId, Secret, SecretRing};
//! use datalayer_core::random::SeededRandom;
//!
//! // Tests seed the randomness; the adapter passes the OS generator instead.
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
//! };
//! let ctx = Context::new(Purpose::Job, "irc", job.id.0.as_bytes());
//! let bytes = sealer.seal(&ctx, &job, &mut rng)?;
//! assert_eq!(sealer.open::<JobRecord>(&ctx, &bytes)?, job);
//!
//! // The same bytes in another queue do not open.
//! let other = Context::new(Purpose::Job, "xmpp", job.id.0.as_bytes());
//! assert!(sealer.open::<JobRecord>(&other, &bytes).is_err());
//! # Ok::<(), datalayer_core::envelope::EnvelopeError>(())
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod command;
pub mod envelope;
#[doc(hidden)]
pub mod fuzz;
pub mod job;
pub mod keys;
pub mod naming;
pub mod producer;
pub mod random;
pub mod retry;
pub mod scripts;
pub mod sim;
pub mod value;
pub mod worker;

pub use random::Random;
