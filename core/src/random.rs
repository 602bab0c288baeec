//! Randomness as an input.
//!
//! The core never asks the operating system for random bytes. A machine (producer, worker)
//! owns its randomness: its constructor draws a 256-bit seed from the [`Random`] source the
//! caller passes in, and the machine draws its nonces, job ids and jitter from its own
//! [`MachineRandom`], a cryptographically secure generator keyed by that seed. The tokio
//! adapter seeds from the OS generator; tests and simulations pass a `SeededRandom` (feature
//! `test-util`), so that every run is reproducible from one number.

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

/// A machine's own generator: AES-256 in counter mode keyed by a seed drawn once from the
/// caller's [`Random`], with fast key erasure (each refill's first 32 bytes of keystream
/// become the next key, and bytes handed out are wiped), so that its state never reveals
/// what it drew before.
///
/// Its output is as unpredictable as the seed: seed it from a cryptographically secure
/// source (the adapter uses the OS generator). Two machines seeded from the same bytes draw
/// the same nonces and job ids; [`MachineRandom::from_random`] draws a fresh seed each time.
/// Like any of a machine's state, the generator is copied by a `fork()`: use a machine in
/// the process that made it (the adapter makes each in the task that drives it, seeded from
/// the OS generator, which itself never hands out the same bytes in two processes).
pub struct MachineRandom {
    cipher: aes::Aes256,
    counter: u128,
    buf: [u8; Self::OUT],
    used: usize,
}

impl MachineRandom {
    /// Blocks per refill: 2 for the next key, the rest handed out.
    const BLOCKS: usize = 12;
    const OUT: usize = (Self::BLOCKS - 2) * 16;

    /// A generator seeded with 32 bytes drawn from `source`.
    pub fn from_random(source: &mut (impl Random + ?Sized)) -> Self {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        source.fill_bytes(&mut seed[..]);
        Self::from_seed(&seed)
    }

    /// A generator whose whole output is determined by `seed`.
    #[must_use]
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        use aes::cipher::KeyInit;
        Self {
            cipher: aes::Aes256::new(seed.into()),
            counter: 0,
            buf: [0; Self::OUT],
            used: Self::OUT,
        }
    }

    fn refill(&mut self) {
        use aes::cipher::{BlockEncrypt, KeyInit};
        let mut blocks = [aes::Block::default(); Self::BLOCKS];
        for b in &mut blocks {
            *b = self.counter.to_le_bytes().into();
            self.counter = self.counter.wrapping_add(1);
        }
        self.cipher.encrypt_blocks(&mut blocks);
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        key[..16].copy_from_slice(&blocks[0]);
        key[16..].copy_from_slice(&blocks[1]);
        self.cipher = aes::Aes256::new((&*key).into());
        for (chunk, b) in self.buf.chunks_exact_mut(16).zip(&blocks[2..]) {
            chunk.copy_from_slice(b);
        }
        for b in &mut blocks {
            zeroize::Zeroize::zeroize(b.as_mut_slice());
        }
        self.used = 0;
    }
}

impl Random for MachineRandom {
    fn fill_bytes(&mut self, mut dest: &mut [u8]) {
        while !dest.is_empty() {
            if self.used == Self::OUT {
                self.refill();
            }
            let n = dest.len().min(Self::OUT - self.used);
            let taken = &mut self.buf[self.used..self.used + n];
            dest[..n].copy_from_slice(taken);
            taken.fill(0);
            self.used += n;
            dest = &mut dest[n..];
        }
    }
}

impl std::fmt::Debug for MachineRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MachineRandom(..)")
    }
}

impl Drop for MachineRandom {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf[..]);
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
    fn the_machine_generator_is_determined_by_its_seed_and_hands_out_bytes_once() {
        let mut a = MachineRandom::from_random(&mut SeededRandom::new(1));
        let mut b = MachineRandom::from_random(&mut SeededRandom::new(1));
        let mut c = MachineRandom::from_random(&mut SeededRandom::new(2));
        let mut seen = std::collections::HashSet::new();
        // Across refills (160 bytes each) and sizes that do not divide them.
        for i in 0..500 {
            let n = [7, 12, 16, 33][i % 4];
            let (mut x, mut y, mut z) = ([0u8; 33], [0u8; 33], [0u8; 33]);
            a.fill_bytes(&mut x[..n]);
            b.fill_bytes(&mut y[..n]);
            c.fill_bytes(&mut z[..n]);
            assert_eq!(x, y);
            assert_ne!(x, z);
            assert!(seen.insert(x), "repeated output at {i}");
        }
        // A large request spans refills.
        let mut big = [0u8; 1000];
        a.fill_bytes(&mut big);
        assert!(big.chunks(16).all(|c| c != [0u8; 16]));
        // The keystream of AES-256 with the all-zero key: the first refill's first output
        // block is the third block of keystream (counter 2), a known answer.
        use aes::cipher::{BlockEncrypt, KeyInit};
        let mut expect = aes::Block::from(2u128.to_le_bytes());
        aes::Aes256::new(&[0u8; 32].into()).encrypt_block(&mut expect);
        let mut first = [0u8; 16];
        MachineRandom::from_seed(&[0; 32]).fill_bytes(&mut first);
        assert_eq!(first[..], expect[..]);
    }

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
