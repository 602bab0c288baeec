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
mod connection;
mod credentials;
pub mod exec;
mod layer;
mod pipelines;
mod queue;
mod worker;

pub use credentials::{CredentialsOptions, CredentialsStore, credentials_hash};
pub use datalayer_core as core;
pub use datalayer_core::credentials::CredentialsError;
pub use datalayer_core::envelope::Compression;
pub use layer::{DataLayer, Error, Options};
pub use queue::{JobHandle, JobQueue, Outcome, QueueEvent, QueueOptions, Unreachable};
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
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) if scheme.is_empty() => format!("***{}", &rest[at..]),
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// A random u64 from the OS generator (consumer names, health-check tokens).
pub(crate) fn random_u64() -> u64 {
    OsRandom.next_u64()
}

use datalayer_core::Random;

/// The operating system's cryptographically secure generator, as the core's [`Random`].
///
/// Small requests (nonces, ids, jitter) are served from a per-thread buffer of OS output,
/// refilled 256 bytes at a time: one `getrandom` call per 20 sealed jobs instead of two per
/// job. Bytes handed out are wiped from the buffer, and never handed out twice, not even
/// across `fork()`: the buffer remembers the process it was filled in, and a child refills
/// it before its first byte (without that, a parent and its children drew the same nonces
/// and the same job-id randomness).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

/// Requests larger than this go to the OS directly.
const POOLED_MAX: usize = 64;
const POOL_SIZE: usize = 256;

struct Pool {
    bytes: [u8; POOL_SIZE],
    /// Bytes before this index were handed out (and wiped).
    used: usize,
    /// The process the bytes were drawn in: a forked child must not reuse its parent's.
    pid: u32,
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = const {
        std::cell::RefCell::new(Pool { bytes: [0; POOL_SIZE], used: POOL_SIZE, pid: 0 })
    };
}

fn os_fill(dest: &mut [u8]) {
    // The OS generator fails only when the kernel cannot provide entropy at all (a
    // broken sandbox); sealing with predictable nonces would be worse than stopping.
    if let Err(e) = getrandom::fill(dest) {
        panic!("the operating system's random generator failed: {e}");
    }
}

impl Random for OsRandom {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if dest.len() > POOLED_MAX {
            return os_fill(dest);
        }
        let pid = std::process::id();
        POOL.with_borrow_mut(|pool| {
            if POOL_SIZE - pool.used < dest.len() || pool.pid != pid {
                os_fill(&mut pool.bytes);
                pool.used = 0;
                pool.pid = pid;
            }
            let taken = &mut pool.bytes[pool.used..pool.used + dest.len()];
            dest.copy_from_slice(taken);
            taken.fill(0);
            pool.used += dest.len();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_bytes_are_never_handed_out_twice() {
        // Across refills, sizes that do not divide the pool, and direct requests.
        let mut seen = std::collections::HashSet::new();
        for i in 0..2_000 {
            let mut b = [0u8; 24];
            let n = [12, 16, 24, 7][i % 4];
            OsRandom.fill_bytes(&mut b[..n]);
            assert!(seen.insert(b), "repeated output at {i}");
        }
        let mut big = [0u8; 100];
        OsRandom.fill_bytes(&mut big);
        assert_ne!(big, [0u8; 100]);
    }

    #[test]
    fn job_debug_and_urls_show_no_secrets() {
        let job = Job {
            id: datalayer_core::job::JobId::from("j"),
            title: String::new(),
            session_id: "s".into(),
            payload: b"{\"sessionSecret\":\"hunter2\"}".to_vec(),
            attempt: 1,
        };
        let shown = format!("{job:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<27 bytes>"),
            "{shown}"
        );
        assert_eq!(
            redact_url("redis://u:hunter2@h:1/2?x=@y"),
            "redis://***@h:1/2?x=@y"
        );
        assert_eq!(redact_url("u:hunter2@h:1"), "***@h:1");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn os_random_is_not_constant() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        OsRandom.fill_bytes(&mut a);
        OsRandom.fill_bytes(&mut b);
        assert_ne!(a, b);
    }
}
