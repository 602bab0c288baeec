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
//!   info = `"datalayer/v1/credentials/" || session id`;
//! - credential names key (HMAC of field names): the same IKM,
//!   info = `"datalayer/v1/credential-names/" || session id`;
//! - a text secret (see [`Secret::from_text`]): IKM = its UTF-8 bytes,
//!   info = `"datalayer/v1/text-secret"`.

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
const INFO_CREDENTIAL_NAMES: &[u8] = b"datalayer/v1/credential-names/";
const INFO_TEXT_SECRET: &[u8] = b"datalayer/v1/text-secret";

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

    /// A secret from text an operator supplied (an environment variable, a config file),
    /// after [`validate_text_secret`] accepted it; the 32 bytes are derived from the text with
    /// HKDF, so the same text always gives the same secret.
    pub fn from_text(text: &str) -> Result<Self, TextSecretError> {
        validate_text_secret(text)?;
        Ok(Self(*hkdf(&[text.as_bytes()], &[INFO_TEXT_SECRET])))
    }

    fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

/// The shortest text secret accepted, in characters.
pub const MIN_TEXT_SECRET_CHARS: usize = 32;
/// The least estimated entropy of a text secret, in bits.
pub const MIN_TEXT_SECRET_BITS: f64 = 128.0;

/// Why a text secret was refused. The messages say what to do and never echo the secret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TextSecretError {
    /// Too short.
    #[error(
        "secret is {chars} characters long; use at least {MIN_TEXT_SECRET_CHARS} \
         (e.g. `openssl rand -hex 32`)"
    )]
    TooShort {
        /// Its length in characters.
        chars: usize,
    },
    /// Leading or trailing whitespace: usually a newline copied from a file by mistake.
    #[error("secret starts or ends with whitespace; strip it (a trailing newline from a file?)")]
    Whitespace,
    /// Control characters have no place in a secret typed or pasted by an operator.
    #[error("secret contains control characters")]
    Control,
    /// Drawn from a single class of characters (only digits, only lower-case letters, ...).
    #[error(
        "secret uses only one class of characters (lower-case, upper-case, digits, symbols); \
         mix at least two"
    )]
    OneClass,
    /// Too repetitive: its estimated entropy is below [`MIN_TEXT_SECRET_BITS`].
    #[error(
        "secret is too repetitive: about {bits:.0} bits of entropy, at least \
         {MIN_TEXT_SECRET_BITS:.0} needed; use a random string"
    )]
    LowEntropy {
        /// The estimate (Shannon entropy of its characters × its length).
        bits: f64,
    },
}

/// Checks a text secret supplied by an operator: at least [`MIN_TEXT_SECRET_CHARS`]
/// characters, no surrounding whitespace or control characters, at least two character
/// classes, and an estimated entropy (Shannon entropy of its character frequencies times its
/// length) of at least [`MIN_TEXT_SECRET_BITS`]. `openssl rand -hex 32` and
/// `openssl rand -base64 32` both pass; a word repeated, a date, or a keyboard run do not.
pub fn validate_text_secret(text: &str) -> Result<(), TextSecretError> {
    let chars = text.chars().count();
    if text.trim() != text {
        return Err(TextSecretError::Whitespace);
    }
    if text.chars().any(char::is_control) {
        return Err(TextSecretError::Control);
    }
    if chars < MIN_TEXT_SECRET_CHARS {
        return Err(TextSecretError::TooShort { chars });
    }
    let class = |c: char| -> usize {
        if c.is_lowercase() {
            0
        } else if c.is_uppercase() {
            1
        } else if c.is_numeric() {
            2
        } else {
            3
        }
    };
    let mut classes = [false; 4];
    let mut counts: std::collections::BTreeMap<char, usize> = std::collections::BTreeMap::new();
    for c in text.chars() {
        classes[class(c)] = true;
        *counts.entry(c).or_default() += 1;
    }
    if classes.iter().filter(|&&seen| seen).count() < 2 {
        return Err(TextSecretError::OneClass);
    }
    #[allow(clippy::cast_precision_loss)] // counts of a short string: exact in f64
    let n = chars as f64;
    #[allow(clippy::cast_precision_loss)]
    let per_char: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum();
    let bits = per_char * n;
    if bits < MIN_TEXT_SECRET_BITS {
        return Err(TextSecretError::LowEntropy { bits });
    }
    Ok(())
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

/// The raw bytes of a session's credential names key: the HMAC key that turns credential
/// keys (`<platform>:<actor>`) into field names (for FORMAT.md's vectors).
#[must_use]
pub fn derive_credential_names_key_bytes(
    server: &Secret,
    session_secret: &Secret,
    session: &str,
) -> Zeroizing<[u8; SECRET_LEN]> {
    hkdf(
        &[server.expose(), session_secret.expose()],
        &[INFO_CREDENTIAL_NAMES, session.as_bytes()],
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

    /// The credential names keys of a session, by secret id, the active one first.
    #[must_use]
    pub fn credential_names_keys(
        &self,
        session: &str,
        session_secret: &Secret,
    ) -> Vec<(KeyId, Zeroizing<[u8; SECRET_LEN]>)> {
        let mut out: Vec<_> = self
            .secrets
            .iter()
            .map(|(id, s)| {
                (
                    *id,
                    derive_credential_names_key_bytes(s, session_secret, session),
                )
            })
            .collect();
        out.sort_by_key(|(id, _)| (*id != self.active, *id));
        out
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
    fn text_secrets_are_validated() {
        use TextSecretError as E;
        // `openssl rand -hex 32` and `-base64 32` outputs pass.
        let hex = "3f9a1c07d2b84e65a0c9f1e27b3d8a4c5e6f708192a3b4c5d6e7f8091a2b3c4d";
        let b64 = "q3Jx9Vb0Zk1LmN8pQr7sTu6vWx5yZa4bCd3eFg2hIj0=";
        assert_eq!(validate_text_secret(hex), Ok(()));
        assert_eq!(validate_text_secret(b64), Ok(()));
        assert!(matches!(
            validate_text_secret("short1A"),
            Err(E::TooShort { chars: 7 })
        ));
        assert_eq!(
            validate_text_secret(&format!("{hex}\n")),
            Err(E::Whitespace)
        );
        assert_eq!(
            validate_text_secret(&format!("{hex}\u{7}x")),
            Err(E::Control)
        );
        assert_eq!(
            validate_text_secret("abcdefghijklmnopqrstuvwxyzabcdefghij"),
            Err(E::OneClass)
        );
        assert_eq!(
            validate_text_secret("0123456789012345678901234567890123"),
            Err(E::OneClass)
        );
        let weak = "passwordPASSWORDpasswordPASSWORD";
        match validate_text_secret(weak) {
            Err(E::LowEntropy { bits }) => assert!(bits < 128.0, "{bits}"),
            other => panic!("{other:?}"),
        }
        let msg = validate_text_secret(weak).unwrap_err().to_string();
        assert!(!msg.contains("password"), "{msg}");
        // The same text gives the same secret, another text another one.
        let a = Secret::from_text(hex).unwrap();
        assert_eq!(a.expose(), Secret::from_text(hex).unwrap().expose());
        assert_ne!(a.expose(), Secret::from_text(b64).unwrap().expose());
        assert!(Secret::from_text(weak).is_err());
    }

    #[test]
    fn names_keys_put_the_active_secret_first() {
        let mut ring = SecretRing::new(KeyId(1), secret(1));
        ring.insert(KeyId(2), secret(2));
        ring.set_active(KeyId(2)).unwrap();
        let keys = ring.credential_names_keys("s", &secret(9));
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].0, KeyId(2));
        assert_eq!(
            *keys[0].1,
            *derive_credential_names_key_bytes(&secret(2), &secret(9), "s")
        );
        assert_ne!(
            *keys[0].1,
            *derive_credentials_key_bytes(&secret(2), &secret(9), "s")
        );
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
