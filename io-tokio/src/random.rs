//! The operating system's randomness, as the core's [`Random`].

use datalayer_core::Random;

/// A random u64 from the OS generator (consumer names, health-check tokens).
pub(crate) fn random_u64() -> u64 {
    OsRandom.next_u64()
}

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
    fn os_random_is_not_constant() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        OsRandom.fill_bytes(&mut a);
        OsRandom.fill_bytes(&mut b);
        assert_ne!(a, b);
    }
}
