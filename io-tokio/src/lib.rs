//! # datalayer-tokio
//!
//! The tokio adapter of datalayer: it owns connections, timers and tasks, and executes what
//! the sans-io core (`datalayer-core`) decides. It holds no policy of its own.
//!
//! A [`DataLayer`] holds the process's connection; [`JobQueue`], [`JobWorker`] and
//! [`CredentialsStore`] are cheap views on it. [`exec`] runs the core's command plan on Redis
//! as pipelines, and [`OsRandom`] gives the core the operating system's randomness.
#![forbid(unsafe_code)]

mod backend;
mod blocking;
mod clock;
mod cluster;
mod connection;
mod credentials;
mod doorbells;
mod driver;
pub mod exec;
mod layer;
#[cfg(feature = "memory")]
mod memory;
mod options;
mod pipelines;
mod queue;
mod random;
mod sharded;
mod telemetry;
mod traces;
mod wire;
mod worker;

pub use clock::now;
pub use credentials::{CredentialsOptions, CredentialsStore, credentials_hash};
pub use datalayer_core as core;
pub use datalayer_core::credentials::CredentialsError;
pub use datalayer_core::envelope::Compression;
pub use datalayer_core::producer::{
    DeadLetter, DeadPage, DelayedWithdrawal, EnvelopeSource, EventKind, EventsCursor, JobPlace,
    PeekedEvent, QueueStats, Revival,
};
pub use datalayer_core::trace::TraceContext;
pub use layer::{DataLayer, ServerInfo};
pub use options::{Error, IdleReads, Options, RedisError};
pub use queue::{JobHandle, JobQueue, Outcome, QueueEvent, QueueOptions, Unreachable};
pub use random::OsRandom;
pub use sharded::ShardedQueue;
pub use worker::{Job, JobWorker, WorkerHandle, WorkerOptions};

/// `url` without the password (and user) it may carry, for logs and messages:
/// `redis://user:secret@host:6379/0` → `redis://***@host:6379/0`.
///
/// ```
/// assert_eq!(datalayer_tokio::redact_url("rediss://:pw@h:1"), "rediss://***@h:1");
/// assert_eq!(datalayer_tokio::redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
/// ```
#[must_use]
pub fn redact_url(url: &str) -> String {
    datalayer_core::url::redact(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_debug_shows_no_secrets() {
        let job = Job {
            id: datalayer_core::job::JobId::from("j"),
            title: String::new(),
            session_id: "s".into(),
            payload: b"{\"sessionSecret\":\"hunter2\"}".to_vec(),
            attempt: 1,
            trace: None,
        };
        let shown = format!("{job:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<27 bytes>"),
            "{shown}"
        );
    }
}
