//! Secrets, key derivation and keyrings.
//!
//! Operators hold 32-byte master [`Secret`]s, each under a [`KeyId`], in a [`SecretRing`].
//! Envelope keys are never stored: they are derived with HKDF-SHA256 for one purpose and one
//! scope (a queue, or a session's credential store), so a key that leaks opens one scope only.
//! A [`Keyring`] holds the derived keys of one scope under the ids of the secrets they came
//! from: sealing uses the active key, opening uses the key the envelope's header names, which
//! is how secrets are rotated without re-sealing what is already in Redis.
//!
//! Derivation (also in FORMAT.md):
//! - salt = `"datalayer/v1"`;
//! - queue key: IKM = server secret, info = `"datalayer/v1/queue/" || queue name`;
//! - credential key: IKM = server secret || session secret,
//!   info = `"datalayer/v1/credentials/" || session id`.

use std::fmt;

use aes_gcm_siv::{Aes256GcmSiv, KeyInit};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::random::Random;

/// Length in bytes of a [`Secret`] and of a derived key.
pub const SECRET_LEN: usize = 32;

const SALT: &[u8] = b"datalayer/v1";
const INFO_QUEUE: &[u8] = b"datalayer/v1/queue/";
const INFO_CREDENTIALS: &[u8] = b"datalayer/v1/credentials/";

/// A 32-byte secret. Zeroized on drop; `Debug` prints nothing of it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    /// Wraps 32 bytes the caller generated (e.g. from the OS generator or a secrets manager).
    #[must_use]
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// Copies a secret out of a slice, which must be exactly [`SECRET_LEN`] bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; SECRET_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::SecretLength { len: bytes.len() })?;
        Ok(Self(arr))
    }

    /// Draws a new secret from `rng`, which must be a cryptographically secure source.
    pub fn generate(rng: &mut impl Random) -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Names a key inside a keyring; written in every envelope's header (u32, little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Errors about secrets and keyrings (a caller's misuse; never caused by data from Redis).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A secret must be exactly 32 bytes.
    #[error("a secret must be exactly 32 bytes, got {len}")]
    SecretLength {
        /// The length that was given.
        len: usize,
    },
    /// The keyring has no key with this id.
    #[error("no key with id {0} in the keyring")]
    UnknownKeyId(KeyId),
    /// The active key cannot be removed; activate another one first.
    #[error("key {0} is the active key: activate another key before removing it")]
    RemoveActive(KeyId),
}

/// A derived AES-256-GCM-SIV key with its id. The expanded cipher state is zeroized on drop.
#[derive(Clone)]
pub struct Key {
    id: KeyId,
    cipher: Aes256GcmSiv,
}

impl Key {
    /// A key from raw bytes. Prefer derivation through a [`SecretRing`]; this exists for
    /// test vectors and for operators who derive keys themselves.
    #[must_use]
    pub fn from_bytes(id: KeyId, bytes: &[u8; SECRET_LEN]) -> Self {
        Self {
            id,
            cipher: Aes256GcmSiv::new(bytes.into()),
        }
    }

    /// The key's id.
    #[must_use]
    pub fn id(&self) -> KeyId {
        self.id
    }

    pub(crate) fn cipher(&self) -> &Aes256GcmSiv {
        &self.cipher
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}, <redacted>)", self.id)
    }
}

/// HKDF-SHA256 with the datalayer salt; `info` is the concatenation of its parts.
fn hkdf(ikm: &[&[u8]], info: &[&[u8]]) -> Zeroizing<[u8; SECRET_LEN]> {
    let ikm_len = ikm.iter().map(|p| p.len()).sum();
    let mut joined = Zeroizing::new(Vec::with_capacity(ikm_len));
    for part in ikm {
        joined.extend_from_slice(part);
    }
    let hk = Hkdf::<Sha256>::new(Some(SALT), &joined);
    let mut okm = Zeroizing::new([0u8; SECRET_LEN]);
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so expand cannot fail.
    if hk.expand_multi_info(info, okm.as_mut()).is_err() {
        unreachable!("HKDF-SHA256 can always expand 32 bytes");
    }
    okm
}

/// The raw bytes of a queue key (for FORMAT.md's vectors; use [`SecretRing::queue_keyring`]).
#[must_use]
pub fn derive_queue_key_bytes(server: &Secret, queue: &str) -> Zeroizing<[u8; SECRET_LEN]> {
    hkdf(&[server.expose()], &[INFO_QUEUE, queue.as_bytes()])
}

/// The raw bytes of a session's credential key (for FORMAT.md's vectors; use
/// [`SecretRing::credentials_keyring`]).
#[must_use]
pub fn derive_credentials_key_bytes(
    server: &Secret,
    session_secret: &Secret,
    session: &str,
) -> Zeroizing<[u8; SECRET_LEN]> {
    hkdf(
        &[server.expose(), session_secret.expose()],
        &[INFO_CREDENTIALS, session.as_bytes()],
    )
}

/// The derived keys of one scope, by id; one of them is active (used to seal).
#[derive(Debug, Clone)]
pub struct Keyring {
    active: KeyId,
    // Few keys (the active one and those being rotated out): a Vec beats a map.
    keys: Vec<Key>,
}

impl Keyring {
    /// A keyring holding one key, which is active.
    #[must_use]
    pub fn new(active: Key) -> Self {
        Self {
            active: active.id,
            keys: vec![active],
        }
    }

    /// Adds a key (replacing one with the same id); it opens envelopes but does not seal.
    pub fn insert(&mut self, key: Key) {
        match self.keys.iter_mut().find(|k| k.id == key.id) {
            Some(slot) => *slot = key,
            None => self.keys.push(key),
        }
    }

    /// Makes the key `id` the one that seals.
    pub fn set_active(&mut self, id: KeyId) -> Result<(), KeyError> {
        self.get(id).ok_or(KeyError::UnknownKeyId(id))?;
        self.active = id;
        Ok(())
    }

    /// Removes a retired key: envelopes sealed with it no longer open (`UnknownKeyId`).
    pub fn remove(&mut self, id: KeyId) -> Result<Key, KeyError> {
        if id == self.active {
            return Err(KeyError::RemoveActive(id));
        }
        let pos = self
            .keys
            .iter()
            .position(|k| k.id == id)
            .ok_or(KeyError::UnknownKeyId(id))?;
        Ok(self.keys.swap_remove(pos))
    }

    /// The key that seals.
    #[must_use]
    pub fn active(&self) -> &Key {
        // Invariant: `active` always names a key of `keys` (new/set_active/remove keep it).
        match self.get(self.active) {
            Some(k) => k,
            None => unreachable!("the active key is always in the keyring"),
        }
    }

    /// The key with this id, if the keyring has it.
    #[must_use]
    pub fn get(&self, id: KeyId) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }
}

/// Master secrets by id, one of them active: the root of every derived key.
///
/// To rotate: `insert` a new secret under a new id, `set_active` it, and keep the old one
/// until nothing sealed with it remains in Redis; then `remove` it.
#[derive(Debug, Clone)]
pub struct SecretRing {
    active: KeyId,
    secrets: Vec<(KeyId, Secret)>,
}

impl SecretRing {
    /// A ring holding one secret, which is active.
    #[must_use]
    pub fn new(id: KeyId, secret: Secret) -> Self {
        Self {
            active: id,
            secrets: vec![(id, secret)],
        }
    }

    /// Adds a secret (replacing one with the same id), not active.
    pub fn insert(&mut self, id: KeyId, secret: Secret) {
        match self.secrets.iter_mut().find(|(i, _)| *i == id) {
            Some(slot) => slot.1 = secret,
            None => self.secrets.push((id, secret)),
        }
    }

    /// Makes the secret `id` the one whose derived keys seal.
    pub fn set_active(&mut self, id: KeyId) -> Result<(), KeyError> {
        if !self.secrets.iter().any(|(i, _)| *i == id) {
            return Err(KeyError::UnknownKeyId(id));
        }
        self.active = id;
        Ok(())
    }

    /// Removes a retired secret.
    pub fn remove(&mut self, id: KeyId) -> Result<(), KeyError> {
        if id == self.active {
            return Err(KeyError::RemoveActive(id));
        }
        let pos = self
            .secrets
            .iter()
            .position(|(i, _)| *i == id)
            .ok_or(KeyError::UnknownKeyId(id))?;
        self.secrets.swap_remove(pos);
        Ok(())
    }

    fn derive(&self, f: impl Fn(&Secret) -> Zeroizing<[u8; SECRET_LEN]>) -> Keyring {
        let keys = self
            .secrets
            .iter()
            .map(|(id, s)| Key::from_bytes(*id, &f(s)))
            .collect();
        Keyring {
            active: self.active,
            keys,
        }
    }

    /// The keyring of a queue: seals and opens its jobs, results and failure reasons.
    #[must_use]
    pub fn queue_keyring(&self, queue: &str) -> Keyring {
        self.derive(|s| derive_queue_key_bytes(s, queue))
    }

    /// The keyring of a session's credential store; needs the session's own secret too, so
    /// the server secret alone opens no credentials.
    #[must_use]
    pub fn credentials_keyring(&self, session: &str, session_secret: &Secret) -> Keyring {
        self.derive(|s| derive_credentials_key_bytes(s, session_secret, session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Secret {
        Secret::from_bytes([b; SECRET_LEN])
    }

    #[test]
    fn debug_prints_nothing_secret() {
        let s = Secret::from_bytes([0xAB; SECRET_LEN]);
        let shown = format!("{s:?} {:?}", SecretRing::new(KeyId(1), s.clone()));
        assert!(!shown.to_lowercase().contains("ab, "), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
        assert!(shown.contains("redacted"));
        let k = Key::from_bytes(KeyId(3), &[0xAB; SECRET_LEN]);
        assert_eq!(format!("{k:?}"), "Key(3, <redacted>)");
    }

    #[test]
    fn secret_length_is_checked() {
        assert_eq!(
            Secret::from_slice(&[1; 31]).err(),
            Some(KeyError::SecretLength { len: 31 })
        );
        assert!(Secret::from_slice(&[1; 32]).is_ok());
    }

    #[test]
    fn derivation_separates_scopes_and_purposes() {
        let server = secret(1);
        let a = derive_queue_key_bytes(&server, "a");
        let b = derive_queue_key_bytes(&server, "b");
        assert_ne!(*a, *b);
        assert_eq!(*a, *derive_queue_key_bytes(&server, "a"));
        assert_ne!(*a, *derive_queue_key_bytes(&secret(2), "a"));
        let c = derive_credentials_key_bytes(&server, &secret(9), "a");
        assert_ne!(*a, *c);
        assert_ne!(*c, *derive_credentials_key_bytes(&server, &secret(8), "a"));
    }

    #[test]
    fn keyring_rotation_rules() {
        let mut ring = SecretRing::new(KeyId(1), secret(1));
        ring.insert(KeyId(2), secret(2));
        assert_eq!(
            ring.set_active(KeyId(3)),
            Err(KeyError::UnknownKeyId(KeyId(3)))
        );
        assert_eq!(ring.remove(KeyId(1)), Err(KeyError::RemoveActive(KeyId(1))));
        ring.set_active(KeyId(2)).unwrap();
        ring.remove(KeyId(1)).unwrap();
        let kr = ring.queue_keyring("q");
        assert_eq!(kr.active().id(), KeyId(2));
        assert!(kr.get(KeyId(1)).is_none());

        let mut kr = Keyring::new(Key::from_bytes(KeyId(5), &[5; 32]));
        kr.insert(Key::from_bytes(KeyId(6), &[6; 32]));
        assert!(kr.remove(KeyId(5)).is_err());
        kr.set_active(KeyId(6)).unwrap();
        assert_eq!(kr.remove(KeyId(5)).unwrap().id(), KeyId(5));
        assert_eq!(kr.active().id(), KeyId(6));
    }
}
