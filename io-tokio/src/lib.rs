//! # datalayer-tokio
//!
//! The tokio adapter of datalayer: it owns connections, timers and tasks, and executes what
//! the sans-io core (`datalayer-core`) decides. It holds no policy of its own.
//!
//! A [`DataLayer`] holds the process's connection; [`JobQueue`], [`JobWorker`] and
//! [`CredentialsStore`] are cheap views on it. [`exec`] runs the core's command plan on Redis
//! as pipelines, and [`OsRandom`] gives the core the operating system's randomness.
#![forbid(unsafe_code)]

mod blocking;
mod credentials;
pub mod exec;
mod layer;
mod pipelines;
mod queue;
mod worker;

pub use credentials::{CredentialsOptions, CredentialsStore, credentials_hash};
pub use datalayer_core as core;
pub use datalayer_core::credentials::CredentialsError;
pub use layer::{DataLayer, Error, Options};
pub use queue::{JobHandle, JobQueue, Outcome, QueueEvent, QueueOptions, Unreachable};
pub use worker::{Job, JobWorker, WorkerHandle, WorkerOptions};

/// A random u64 from the OS generator (consumer names, health-check tokens).
pub(crate) fn random_u64() -> u64 {
    OsRandom.next_u64()
}

use datalayer_core::Random;

/// The operating system's cryptographically secure generator, as the core's [`Random`].
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // The OS generator fails only when the kernel cannot provide entropy at all (a
        // broken sandbox); sealing with predictable nonces would be worse than stopping.
        if let Err(e) = getrandom::fill(dest) {
            panic!("the operating system's random generator failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_random_is_not_constant() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        OsRandom.fill_bytes(&mut a);
        OsRandom.fill_bytes(&mut b);
        assert_ne!(a, b);
    }
}
