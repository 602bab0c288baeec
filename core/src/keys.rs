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
//! - credentials root ([`CredentialsRoot`]): IKM = server secret,
//!   info = `"datalayer/v2/credentials-root"`;
//! - credential key: IKM = credentials root || session secret,
//!   info = `"datalayer/v2/credentials/" || session id`;
//! - credential names key (HMAC of field names): the same IKM,
//!   info = `"datalayer/v2/credential-names/" || session id`;
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
const INFO_CREDENTIALS_ROOT: &[u8] = b"datalayer/v2/credentials-root";
const INFO_CREDENTIALS: &[u8] = b"datalayer/v2/credentials/";
const INFO_CREDENTIAL_NAMES: &[u8] = b"datalayer/v2/credential-names/";
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

    /// A secret from text an operator supplied (an environment variable, a config file): a
    /// hex or base64 encoding of at least 32 random bytes (`openssl rand -hex 32`), which
    /// [`validate_text_secret`] checks; passphrases are refused. The 32 bytes are derived
    /// from the text with HKDF, so the same text always gives the same secret.
    pub fn from_text(text: &str) -> Result<Self, TextSecretError> {
        validate_text_secret(text)?;
        Ok(Self(*hkdf(&[text.as_bytes()], &[INFO_TEXT_SECRET])))
    }

    fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

/// The fewest characters that can encode [`MIN_TEXT_SECRET_BYTES`] bytes (base64, unpadded).
pub const MIN_TEXT_SECRET_CHARS: usize = 43;
/// The fewest random bytes a text secret must encode.
pub const MIN_TEXT_SECRET_BYTES: usize = 32;
/// The least estimated entropy of the bytes a text secret encodes, in bits.
pub const MIN_TEXT_SECRET_BITS: f64 = 128.0;

/// Why a text secret was refused. The messages say what to do and never echo the secret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TextSecretError {
    /// Too short.
    #[error(
        "secret is {chars} characters long; use {MIN_TEXT_SECRET_BYTES} random bytes, hex or \
         base64 (`openssl rand -hex 32`)"
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
    /// Not hex or base64: a passphrase, which no check can tell from a guessable one.
    #[error(
        "secret is not hex or base64; use {MIN_TEXT_SECRET_BYTES} random bytes, encoded \
         (`openssl rand -hex 32` or `openssl rand -base64 32`), not a passphrase"
    )]
    NotEncoded,
    /// The bytes it encodes are too repetitive to be random (a run, a pattern, zeros).
    #[error(
        "secret is not random: its bytes carry about {bits:.0} bits of entropy, at least \
         {MIN_TEXT_SECRET_BITS:.0} needed; use `openssl rand -hex 32`"
    )]
    LowEntropy {
        /// The estimate (Shannon entropy of its byte values × their count).
        bits: f64,
    },
}

/// Checks a text secret supplied by an operator. Only encodings of randomness pass: hex of
/// at least [`MIN_TEXT_SECRET_BYTES`] bytes, or base64 (standard or URL-safe, padded or
/// not) of as many, whose bytes look random (an empirical entropy of at least
/// [`MIN_TEXT_SECRET_BITS`]: no run, pattern or zeros), with no surrounding whitespace or
/// control characters. Passphrases are refused whatever they look like: no estimate tells
/// `correct horse battery staple` from a random string, and envelopes in Redis let anyone
/// test guesses offline, millions a second. `openssl rand -hex 32` and
/// `openssl rand -base64 32` pass.
pub fn validate_text_secret(text: &str) -> Result<(), TextSecretError> {
    if text.trim() != text {
        return Err(TextSecretError::Whitespace);
    }
    if text.chars().any(char::is_control) {
        return Err(TextSecretError::Control);
    }
    // Hex first; a string that is both (only hex digits) counts as base64 if hex is too short.
    let bytes = match decode_hex(text) {
        Some(hex) if hex.len() >= MIN_TEXT_SECRET_BYTES => Some(hex),
        hex => decode_base64(text)
            .filter(|b| b.len() >= MIN_TEXT_SECRET_BYTES)
            .or(hex)
            .or_else(|| decode_base64(text)),
    }
    .ok_or(TextSecretError::NotEncoded)?;
    if bytes.len() < MIN_TEXT_SECRET_BYTES {
        let chars = text.chars().count();
        return Err(TextSecretError::TooShort { chars });
    }
    let bits = entropy_bits(&bytes);
    if bits < MIN_TEXT_SECRET_BITS {
        return Err(TextSecretError::LowEntropy { bits });
    }
    Ok(())
}

/// The empirical entropy of `bytes`: of their value frequencies, times their count (32
/// random bytes: about 150 bits, at most 160).
fn entropy_bits(bytes: &[u8]) -> f64 {
    let mut counts = [0usize; 256];
    for &b in bytes {
        counts[usize::from(b)] += 1;
    }
    #[allow(clippy::cast_precision_loss)] // counts of a short string: exact in f64
    let n = bytes.len() as f64;
    #[allow(clippy::cast_precision_loss)]
    let per_byte: f64 = counts
        .iter()
        .filter(|&&k| k > 0)
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum();
    per_byte * n
}

/// Hex (either case) to bytes; `None` if `text` is not an even number of hex digits.
fn decode_hex(text: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let digits = text.as_bytes();
    if digits.is_empty() || digits.len() % 2 != 0 {
        return None;
    }
    let mut out = zeroize::Zeroizing::new(vec![0u8; digits.len() / 2]);
    crate::hex::decode_into(digits, &mut out)?;
    Some(out)
}

/// Base64, standard (`+/`) or URL-safe (`-_`) alphabet, with or without `=` padding, to
/// bytes; `None` if `text` is not that.
fn decode_base64(text: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let body = text.trim_end_matches('=');
    let padding = text.len() - body.len();
    if body.is_empty() || padding > 2 || (padding > 0 && text.len() % 4 != 0) {
        return None;
    }
    let (mut standard, mut url) = (false, false);
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        }))
    };
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(body.len() * 3 / 4));
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        match c {
            b'+' | b'/' => standard = true,
            b'-' | b'_' => url = true,
            _ => {}
        }
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    // One alphabet, and no stray bits: a length of 1 mod 4 is not base64.
    if (standard && url) || body.len() % 4 == 1 {
        return None;
    }
    Some(out)
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
/// Every shard of a sharded queue has the queue's key (a shard's tag,
/// [`crate::naming::shard_tags`], derives the key of the queue it belongs to); what a
/// shard seals is still bound to the shard (its scope is the shard's key stem).
#[must_use]
pub fn derive_queue_key_bytes(server: &Secret, queue: &str) -> Zeroizing<[u8; SECRET_LEN]> {
    let queue = crate::naming::parse_shard_tag(queue).map_or(queue, |(base, _, _)| base);
    hkdf(&[server.expose()], &[INFO_QUEUE, queue.as_bytes()])
}

/// The credentials root secret of a server secret: what a process needs (with a session's
/// secret) to read that session's credentials, and nothing else (it opens no queue).
#[must_use]
pub fn derive_credentials_root(server: &Secret) -> Secret {
    Secret(*derive_credentials_root_bytes(server))
}

/// The raw bytes of [`derive_credentials_root`]: to hand a credentials root to another
/// process (which wraps them with [`Secret::from_bytes`] and
/// [`CredentialsRoot::from_root_secrets`]), and for FORMAT.md's vectors.
#[must_use]
pub fn derive_credentials_root_bytes(server: &Secret) -> Zeroizing<[u8; SECRET_LEN]> {
    hkdf(&[server.expose()], &[INFO_CREDENTIALS_ROOT])
}

/// The raw bytes of a session's credential key, from the credentials root (for
/// FORMAT.md's vectors; use [`CredentialsRoot::credentials_keyring`]).
#[must_use]
pub fn derive_credentials_key_bytes(
    root: &Secret,
    session_secret: &Secret,
    session: &str,
) -> Zeroizing<[u8; SECRET_LEN]> {
    hkdf(
        &[root.expose(), session_secret.expose()],
        &[INFO_CREDENTIALS, session.as_bytes()],
    )
}

/// The raw bytes of a session's credential names key, from the credentials root: the HMAC
/// key that turns credential keys (`<platform>:<actor>`) into field names (for
/// FORMAT.md's vectors).
#[must_use]
pub fn derive_credential_names_key_bytes(
    root: &Secret,
    session_secret: &Secret,
    session: &str,
) -> Zeroizing<[u8; SECRET_LEN]> {
    hkdf(
        &[root.expose(), session_secret.expose()],
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

    /// The credentials root of every secret of the ring, under the same ids: hand it (not
    /// the ring) to a process that reads credentials but must open no queue.
    #[must_use]
    pub fn credentials_root(&self) -> CredentialsRoot {
        CredentialsRoot(SecretRing {
            active: self.active,
            secrets: self
                .secrets
                .iter()
                .map(|(id, s)| (*id, derive_credentials_root(s)))
                .collect(),
        })
    }
}

/// The secrets credentials are derived from ([`SecretRing::credentials_root`]), by key id:
/// with a session's secret they open that session's credentials, and they open no queue.
/// A platform worker that reads credentials needs this and its queue's [`Keyring`], never
/// the server's [`SecretRing`].
#[derive(Debug, Clone)]
pub struct CredentialsRoot(SecretRing);

impl CredentialsRoot {
    /// Wraps root secrets handed to this process (each [`derive_credentials_root`] of a
    /// server secret, under that secret's id).
    #[must_use]
    pub fn from_root_secrets(ring: SecretRing) -> Self {
        Self(ring)
    }

    /// The keyring of a session's credential store; needs the session's own secret too, so
    /// the server secret alone opens no credentials.
    #[must_use]
    pub fn credentials_keyring(&self, session: &str, session_secret: &Secret) -> Keyring {
        self.0
            .derive(|s| derive_credentials_key_bytes(s, session_secret, session))
    }

    /// The credential names keys of a session, by secret id, the active one first.
    #[must_use]
    pub fn credential_names_keys(
        &self,
        session: &str,
        session_secret: &Secret,
    ) -> Vec<(KeyId, Zeroizing<[u8; SECRET_LEN]>)> {
        let ring = &self.0;
        let mut out: Vec<_> = ring
            .secrets
            .iter()
            .map(|(id, s)| {
                (
                    *id,
                    derive_credential_names_key_bytes(s, session_secret, session),
                )
            })
            .collect();
        out.sort_by_key(|(id, _)| (*id != ring.active, *id));
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
        // A shard's tag derives its queue's key; a name merely shaped like a tag does not.
        for tag in crate::naming::shard_tags("a", 3).unwrap() {
            assert_eq!(*a, *derive_queue_key_bytes(&server, &tag));
        }
        assert_ne!(*a, *derive_queue_key_bytes(&server, "a#0.3.7"));
        let c = derive_credentials_key_bytes(&server, &secret(9), "a");
        assert_ne!(*a, *c);
        assert_ne!(*c, *derive_credentials_key_bytes(&server, &secret(8), "a"));
    }

    #[test]
    fn text_secrets_are_validated() {
        use TextSecretError as E;
        // `openssl rand -hex 32` and `-base64 32` outputs pass, url-safe and unpadded too.
        let hex = "3f9a1c07d2b84e65a0c9f1e27b3d8a4c5e6f708192a3b4c5d6e7f8091a2b3c4d";
        let b64 = "q3Jx9Vb0Zk1LmN8pQr7sTu6vWx5yZa4bCd3eFg2hIj0=";
        assert_eq!(validate_text_secret(hex), Ok(()));
        assert_eq!(validate_text_secret(&hex.to_uppercase()), Ok(()));
        assert_eq!(validate_text_secret(b64), Ok(()));
        assert_eq!(validate_text_secret(b64.trim_end_matches('=')), Ok(()));
        assert_eq!(
            validate_text_secret("q3Jx9Vb0Zk1LmN8pQr7sTu6vWx5yZa4bCd3eFg2hIj0_-A"),
            Ok(())
        );
        assert_eq!(
            validate_text_secret(&format!("{hex}\n")),
            Err(E::Whitespace)
        );
        assert_eq!(
            validate_text_secret(&format!("{hex}\u{7}x")),
            Err(E::Control)
        );
        assert!(matches!(
            validate_text_secret("3f9a1c07"),
            Err(E::TooShort { chars: 8 })
        ));
        // The security review's guessable strings: each passed the old entropy estimate.
        for guessable in [
            "qwertyuiopasdfghjklzxcvbnmQWERTY",
            "abcdefghijklmnopqrstuvwxyzABCDEF",
            "1234567890qwertyuiopasdfghjklzxc",
            "The quick brown fox jumps over the lazy dog",
            "correct horse battery staple Tr0ub4dor&3",
            "sockethub-production-secret-2024",
        ] {
            let err = validate_text_secret(guessable).expect_err(guessable);
            assert!(
                matches!(err, E::NotEncoded | E::TooShort { .. }),
                "{guessable}: {err:?}"
            );
            assert!(!err.to_string().contains(guessable), "{err}");
            assert!(Secret::from_text(guessable).is_err());
        }
        // Encodings of patterns, not randomness.
        for pattern in [
            "0".repeat(64),
            "ab".repeat(32),
            "0123456789abcdef".repeat(4),
            "A".repeat(44),
        ] {
            assert!(
                matches!(validate_text_secret(&pattern), Err(E::LowEntropy { .. })),
                "{pattern}: {:?}",
                validate_text_secret(&pattern)
            );
        }
        // 24 bytes of base64 are too few; two alphabets at once are not base64.
        assert_eq!(
            validate_text_secret("q3Jx9Vb0Zk1LmN8pQr7sTu6vWx5yZa4b"),
            Err(E::TooShort { chars: 32 })
        );
        assert_eq!(
            validate_text_secret("q3Jx9Vb0Zk1LmN8pQr7sTu6vWx5yZa4bCd3eFg2h+_A="),
            Err(E::NotEncoded)
        );
        // The same text gives the same secret, another text another one.
        let a = Secret::from_text(hex).unwrap();
        assert_eq!(a.expose(), Secret::from_text(hex).unwrap().expose());
        assert_ne!(a.expose(), Secret::from_text(b64).unwrap().expose());
    }

    #[test]
    fn base64_and_hex_decode_exactly() {
        assert_eq!(
            decode_hex("00ff7A").as_deref().map(Vec::as_slice),
            Some(&[0, 255, 0x7a][..])
        );
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("abc"), None);
        let b = |s: &str| decode_base64(s).map(|v| v.to_vec());
        assert_eq!(b("TWFu"), Some(b"Man".to_vec()));
        assert_eq!(b("TWE="), Some(b"Ma".to_vec()));
        assert_eq!(b("TWE"), Some(b"Ma".to_vec()));
        assert_eq!(b("TQ=="), Some(b"M".to_vec()));
        assert_eq!(b("TQ"), Some(b"M".to_vec()));
        assert_eq!(b("T"), None);
        assert_eq!(b("TQ="), None);
        assert_eq!(b("a b="), None);
        assert_eq!(b("-_8"), Some(vec![0xfb, 0xff]));
    }

    #[test]
    fn names_keys_put_the_active_secret_first() {
        let mut ring = SecretRing::new(KeyId(1), secret(1));
        ring.insert(KeyId(2), secret(2));
        ring.set_active(KeyId(2)).unwrap();
        let keys = ring
            .credentials_root()
            .credential_names_keys("s", &secret(9));
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].0, KeyId(2));
        let root = derive_credentials_root(&secret(2));
        assert_eq!(
            *keys[0].1,
            *derive_credential_names_key_bytes(&root, &secret(9), "s")
        );
        assert_ne!(
            *keys[0].1,
            *derive_credentials_key_bytes(&root, &secret(9), "s")
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
