//! Randomness as an input.
//!
//! The core never asks the operating system for random bytes: nonces and backoff jitter come
//! from a [`Random`] source the caller passes in. The tokio adapter passes the OS generator;
//! tests and simulations pass a `SeededRandom` (feature `test-util`) so that every run is
//! reproducible.

/// A source of random bytes, injected by the caller.
///
/// Implementations used in production must be cryptographically secure: nonces are drawn
/// from it. (AES-GCM-SIV tolerates a repeated nonce far better than AES-GCM, but a weak
/// source still leaks whether two envelopes hold the same plaintext.)
pub trait Random {
    /// Fills `dest` with random bytes.
    fn fill_bytes(&mut self, dest: &mut [u8]);

    /// Returns a random `u64`.
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
}

impl<R: Random + ?Sized> Random for &mut R {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        (**self).fill_bytes(dest)
    }
}

/// A deterministic generator (SplitMix64) for tests, simulations and fuzzing; only with
/// the `test-util` feature.
///
/// **Not cryptographically secure**: anyone who sees a few outputs can predict the rest.
/// Never seal production data with it; the adapter uses the OS generator.
#[cfg(feature = "test-util")]
#[derive(Debug, Clone)]
pub struct SeededRandom {
    state: u64,
}

#[cfg(feature = "test-util")]
impl SeededRandom {
    /// A generator whose whole output is determined by `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn step(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(feature = "test-util")]
impl Random for SeededRandom {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let word = self.step().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.step()
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (SeededRandom::new(7), SeededRandom::new(7));
        let (mut x, mut y) = ([0u8; 13], [0u8; 13]);
        a.fill_bytes(&mut x);
        b.fill_bytes(&mut y);
        assert_eq!(x, y);
        assert_ne!(x, [0u8; 13]);
        assert_ne!(
            SeededRandom::new(8).next_u64(),
            SeededRandom::new(7).next_u64()
        );
    }
}
