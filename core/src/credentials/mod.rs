//! Sealed per-session credentials: naming, sealing, hashing, and what each reply means.
//!
//! A session's store is one Redis hash, `<prefix>:{<session>}:creds` (see
//! [`crate::naming::credentials_key`]). Its fields:
//!
//! ```text
//! v2:<key id>           verifier: HMAC-SHA256(names key, "datalayer/v2/verifier")[..16]
//! c:<key id>:<hmac>     a credential: hex HMAC-SHA256(names key,
//!                       "datalayer/v2/name/" || "<platform>:<actor>"), valued with the
//!                       envelope of the credentials (JSON), sealed with the session's
//!                       credential key; AAD = purpose 4, "<prefix>:{<session>}",
//!                       "<platform>:<actor>"
//! ```
//!
//! Both keys are derived from the credentials root (itself derived from the server secret)
//! *and* the session's secret (FORMAT.md), so neither Redis nor the server secret alone
//! reads a credential or tests a guessed actor id against a field name. The two HMAC
//! messages start with distinct labels, so no credential key makes a field name that is
//! also the verifier. The verifier tells a wrong secret (`WrongSecret`) apart from a
//! missing credential (`NotFound`): a wrong secret finds a verifier that is not its own.
//!
//! Everything here is sans-io: [`CredentialStore`] makes the [`Invocation`] of each step and
//! decides what its reply means; the adapter sends one and hands back the other.

mod canonical;
/// Credentials are padded with trailing spaces (which JSON ignores) to a multiple of this
/// many bytes, at least [`PAD_MIN`], so that an envelope's length does not tell a password's.
pub const PAD_BUCKET: usize = 128;
/// The least padded length of credentials.
pub const PAD_MIN: usize = 256;

/// `json` followed by spaces up to its bucket, in a buffer sized once (no copy left behind
/// by a reallocation).
fn padded(json: &[u8]) -> Zeroizing<Vec<u8>> {
    let target = json.len().div_ceil(PAD_BUCKET).max(1) * PAD_BUCKET;
    let target = target.max(PAD_MIN);
    let mut out = Zeroizing::new(Vec::with_capacity(target));
    out.extend_from_slice(json);
    out.resize(target, b' ');
    out
}

/// Whether two hex hashes are equal, ignoring ASCII case, in time that depends on their
/// lengths only (not on where they first differ).
fn hashes_match(ours: &str, theirs: &str) -> bool {
    if ours.len() != theirs.len() {
        return false;
    }
    let diff = ours.bytes().zip(theirs.bytes()).fold(0u8, |acc, (a, b)| {
        acc | (a.to_ascii_lowercase() ^ b.to_ascii_lowercase())
    });
    diff == 0
}

#[cfg(test)]
mod tests;

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use canonical::canonical_json;

use crate::envelope::{Compression, Context, EnvelopeError, Purpose, SealOptions, Sealer};
use crate::keys::{CredentialsRoot, KeyId, SECRET_LEN, Secret};
use crate::naming::{self, NameError};
use crate::random::Random;
use crate::scripts::{self, Arg, Invocation};
use crate::time::{Duration, millis};
use crate::value::Value;

/// The default sliding TTL of a store: 7 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Length of a store's verifier value.
pub const VERIFIER_LEN: usize = 16;

const VERIFIER_MESSAGE: &[u8] = b"datalayer/v2/verifier";
/// The label before a credential key in its field name's HMAC message.
const NAME_LABEL: &[u8] = b"datalayer/v2/name/";

/// Why credentials could not be saved or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// No credentials under this key in the session's store.
    #[error("credentials not found for {key}")]
    NotFound {
        /// The credential key (`<platform>:<actor>`).
        key: String,
    },
    /// The stored object is empty, null, or an array, or its hash is not the expected one.
    #[error("invalid credentials for {key}")]
    Mismatch {
        /// The credential key.
        key: String,
    },
    /// The store was made with another session secret (or server secret): nothing in it can
    /// be read or replaced with this one.
    #[error("wrong secret for the credentials store of session {session}")]
    WrongSecret {
        /// The session.
        session: String,
    },
    /// The stored value does not open: tampered with, or moved from another field or store.
    #[error("credentials for {key} do not open: {source}")]
    Corrupt {
        /// The credential key.
        key: String,
        /// Why opening failed.
        #[source]
        source: EnvelopeError,
    },
    /// Only a non-empty JSON object can be saved.
    #[error("credentials for {key} must be a non-empty JSON object")]
    Invalid {
        /// The credential key.
        key: String,
    },
    /// A credential key must not be empty.
    #[error("a credential key must not be empty")]
    EmptyKey,
    /// The credentials could not be encoded or sealed.
    #[error("credentials for {key} do not seal: {reason}")]
    Seal {
        /// The credential key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Redis answered with an error, or with a reply of the wrong shape.
    #[error("credentials store: {0}")]
    Reply(String),
}

/// The credentials hash: lower-case hex SHA-256 of the canonical JSON (RFC 8785) of `value`.
#[must_use]
pub fn credentials_hash(value: &Json) -> String {
    // Streamed into the hash: no canonical copy of the credentials is left in memory.
    struct Hashing(Sha256);
    impl canonical::Sink for Hashing {
        fn put(&mut self, s: &str) {
            self.0.update(s.as_bytes());
        }
    }
    let mut sink = Hashing(Sha256::new());
    canonical::write_value(&mut sink, value);
    crate::hex::encode(&sink.0.finalize())
}

/// Whether `value` can be credentials: a JSON object with at least one member.
fn is_valid(value: &Json) -> bool {
    matches!(value, Json::Object(map) if !map.is_empty())
}

/// One session's credentials store: derives its keys once, then plans every step.
pub struct CredentialStore {
    session: String,
    /// The AAD scope: `<prefix>:{<session>}`.
    scope: String,
    redis_key: String,
    sealer: Sealer,
    /// The HMAC key of field names per secret id, the active secret first.
    names: Vec<(KeyId, Zeroizing<[u8; SECRET_LEN]>)>,
    ttl_ms: u64,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("session", &self.session)
            .field("redis_key", &self.redis_key)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    /// The store of `session` under `prefix`, with keys derived from the credentials
    /// `root` ([`crate::keys::SecretRing::credentials_root`]) and the session's own secret;
    /// a `ttl` of zero disables the sliding expiry (it counts in whole ms).
    pub fn new(
        prefix: &str,
        session: &str,
        root: &CredentialsRoot,
        session_secret: &Secret,
        ttl: Duration,
    ) -> Result<Self, NameError> {
        let redis_key = naming::credentials_key(prefix, session)?;
        let sealer = Sealer::new(root.credentials_keyring(session, session_secret))
            .with_options(SealOptions::default().compression(Compression::Never));
        Ok(Self {
            session: session.to_owned(),
            scope: format!("{prefix}:{{{session}}}"),
            redis_key,
            sealer,
            names: root.credential_names_keys(session, session_secret),
            ttl_ms: millis(ttl),
        })
    }

    /// The Redis key of the store.
    #[must_use]
    pub fn redis_key(&self) -> &str {
        &self.redis_key
    }

    /// The session.
    #[must_use]
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The sliding TTL (zero: none).
    #[must_use]
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    fn mac(names_key: &[u8; SECRET_LEN], message: &[&[u8]]) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(names_key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        for part in message {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The verifier field and value of the secret at `index` of `names`.
    fn verifier(&self, index: usize) -> Option<(String, Vec<u8>)> {
        let (id, key) = self.names.get(index)?;
        let mac = Self::mac(key, &[VERIFIER_MESSAGE]);
        Some((format!("v2:{id}"), mac[..VERIFIER_LEN].to_vec()))
    }

    /// The field holding `key`'s credentials under the secret at `index` of `names`.
    fn field(&self, index: usize, key: &str) -> Option<String> {
        let (id, names_key) = self.names.get(index)?;
        let mac = Self::mac(names_key, &[NAME_LABEL, key.as_bytes()]);
        Some(format!("c:{id}:{}", crate::hex::encode(&mac)))
    }

    fn context<'a>(&'a self, key: &'a str) -> Context<'a> {
        Context::new(Purpose::Credential, &self.scope, key.as_bytes())
    }

    /// The invocation that saves `credentials` under `key` (and slides the expiry).
    pub fn save(
        &self,
        key: &str,
        credentials: &Json,
        rng: &mut impl Random,
    ) -> Result<Invocation<'static>, CredentialsError> {
        if key.is_empty() {
            return Err(CredentialsError::EmptyKey);
        }
        if !is_valid(credentials) {
            return Err(CredentialsError::Invalid {
                key: key.to_owned(),
            });
        }
        let seal_error = |reason: String| CredentialsError::Seal {
            key: key.to_owned(),
            reason,
        };
        let json =
            Zeroizing::new(serde_json::to_vec(credentials).map_err(|e| seal_error(e.to_string()))?);
        let plain = padded(&json);
        let sealed = self
            .sealer
            .seal_bytes(&self.context(key), &plain, rng)
            .map_err(|e| seal_error(e.to_string()))?;
        let mut args: Vec<Arg<'static>> = vec![num(self.ttl_ms), num(self.names.len())];
        for i in 0..self.names.len() {
            if let Some((field, value)) = self.verifier(i) {
                args.push(Cow::Owned(field.into_bytes()));
                args.push(Cow::Owned(value));
            }
        }
        let Some(field) = self.field(0, key) else {
            unreachable!("a secret ring holds at least one secret")
        };
        args.push(Cow::Owned(field.into_bytes()));
        args.push(Cow::Owned(sealed));
        for i in 1..self.names.len() {
            if let Some(stale) = self.field(i, key) {
                args.push(Cow::Owned(stale.into_bytes()));
            }
        }
        Ok(Invocation::Script {
            script: &scripts::CRED_SAVE,
            keys: vec![Cow::Owned(self.redis_key.clone().into_bytes())],
            args,
        })
    }

    /// What the reply to [`save`](Self::save) means.
    pub fn save_reply(&self, reply: Value) -> Result<(), CredentialsError> {
        match reply {
            Value::Int(1) => Ok(()),
            Value::Error(e) if e.starts_with("WRONGSECRET") => Err(CredentialsError::WrongSecret {
                session: self.session.clone(),
            }),
            Value::Error(e) => Err(CredentialsError::Reply(e)),
            other => Err(CredentialsError::Reply(format!(
                "save answered {other:?}, expected 1"
            ))),
        }
    }

    /// The invocation that reads `key`'s credentials (and slides the expiry).
    pub fn get(&self, key: &str) -> Result<Invocation<'static>, CredentialsError> {
        if key.is_empty() {
            return Err(CredentialsError::EmptyKey);
        }
        let mut args: Vec<Arg<'static>> = vec![num(self.ttl_ms)];
        for i in 0..self.names.len() {
            if let Some((field, _)) = self.verifier(i) {
                args.push(Cow::Owned(field.into_bytes()));
            }
        }
        for i in 0..self.names.len() {
            if let Some(field) = self.field(i, key) {
                args.push(Cow::Owned(field.into_bytes()));
            }
        }
        Ok(Invocation::Script {
            script: &scripts::CRED_GET,
            keys: vec![Cow::Owned(self.redis_key.clone().into_bytes())],
            args,
        })
    }

    /// What the reply to [`get`](Self::get) means: the credentials, checked against
    /// `expected_hash` when one is given (Sockethub's semantics: a missing or differing
    /// hash check is a `Mismatch`, no expected hash is no check).
    pub fn get_reply(
        &self,
        key: &str,
        reply: Value,
        expected_hash: Option<&str>,
    ) -> Result<Json, CredentialsError> {
        let items = match reply {
            Value::Array(items) => items,
            Value::Error(e) => return Err(CredentialsError::Reply(e)),
            other => {
                return Err(CredentialsError::Reply(format!(
                    "get answered {other:?}, expected an array"
                )));
            }
        };
        let n = self.names.len();
        if items.len() != 2 * n {
            return Err(CredentialsError::Reply(format!(
                "get answered {} values, expected {}",
                items.len(),
                2 * n
            )));
        }
        let (verifiers, values) = items.split_at(n);
        let mut ours = false;
        let mut foreign = false;
        for (i, v) in verifiers.iter().enumerate() {
            match v {
                Value::Nil => {}
                Value::Bulk(bytes) => {
                    if self.verifier(i).is_some_and(|(_, mine)| mine == *bytes) {
                        ours = true;
                    } else {
                        foreign = true;
                    }
                }
                other => {
                    return Err(CredentialsError::Reply(format!(
                        "verifier is {other:?}, expected bytes"
                    )));
                }
            }
        }
        let found = values.iter().find_map(|v| match v {
            Value::Bulk(bytes) => Some(Ok(bytes)),
            Value::Nil => None,
            other => Some(Err(CredentialsError::Reply(format!(
                "credential is {other:?}, expected bytes"
            )))),
        });
        let Some(sealed) = found.transpose()? else {
            return Err(if foreign && !ours {
                CredentialsError::WrongSecret {
                    session: self.session.clone(),
                }
            } else {
                CredentialsError::NotFound {
                    key: key.to_owned(),
                }
            });
        };
        let plain = Zeroizing::new(self.sealer.open_bytes(&self.context(key), sealed).map_err(
            |source| CredentialsError::Corrupt {
                key: key.to_owned(),
                source,
            },
        )?);
        let mismatch = || CredentialsError::Mismatch {
            key: key.to_owned(),
        };
        // Sealed by us, so it is JSON; anything else (or an invalid object) is a mismatch.
        let credentials: Json = serde_json::from_slice(&plain).map_err(|_| mismatch())?;
        if !is_valid(&credentials) {
            return Err(mismatch());
        }
        if let Some(expected) = expected_hash {
            if !hashes_match(&credentials_hash(&credentials), expected) {
                return Err(mismatch());
            }
        }
        Ok(credentials)
    }

    /// The invocation that deletes the whole store (its reply: 1 deleted, 0 there was none).
    #[must_use]
    pub fn teardown(&self) -> Invocation<'_> {
        delete(self.redis_key.as_bytes())
    }
}

fn num(n: impl ToString) -> Arg<'static> {
    Cow::Owned(n.to_string().into_bytes())
}

/// The `DEL` of one store found by a purge's `SCAN` (its reply: 1 deleted, 0 gone already).
#[must_use]
pub fn delete(redis_key: &[u8]) -> Invocation<'_> {
    Invocation::Plain(vec![Cow::Borrowed(b"DEL"), Cow::Borrowed(redis_key)])
}

/// How many stores the replies of [`delete`]s say went (a `DEL` of a store gone already
/// counts 0).
///
/// # Errors
/// [`CredentialsError::Reply`] for a reply that is not a count (an error reply, garbage).
pub fn parse_deleted(replies: Vec<Value>) -> Result<u64, CredentialsError> {
    replies
        .into_iter()
        .try_fold(0u64, |sum, reply| match reply {
            Value::Int(n) => Ok(sum.saturating_add(u64::try_from(n).unwrap_or(0))),
            other => Err(CredentialsError::Reply(format!("DEL answered {other:?}"))),
        })
}

/// The `SCAN` invocation of one page of a purge: keys matching `pattern` from `cursor`.
#[must_use]
pub fn scan(pattern: &str, cursor: &[u8], count: u32) -> Invocation<'static> {
    Invocation::Plain(vec![
        Cow::Borrowed(b"SCAN"),
        Cow::Owned(cursor.to_vec()),
        Cow::Borrowed(b"MATCH"),
        Cow::Owned(pattern.as_bytes().to_vec()),
        Cow::Borrowed(b"COUNT"),
        num(count),
    ])
}

/// One page of `SCAN`: the next cursor (`0` when done) and the keys of this page.
pub fn parse_scan(reply: Value) -> Result<(Vec<u8>, Vec<Vec<u8>>), CredentialsError> {
    let bad = |what: String| CredentialsError::Reply(format!("SCAN answered {what}"));
    let items = match reply {
        Value::Array(items) => items,
        Value::Error(e) => return Err(CredentialsError::Reply(e)),
        other => return Err(bad(format!("{other:?}"))),
    };
    let mut it = items.into_iter();
    let (Some(cursor), Some(keys), None) = (it.next(), it.next(), it.next()) else {
        return Err(bad("an array that is not [cursor, keys]".into()));
    };
    let cursor = cursor
        .into_bytes("a cursor")
        .map_err(|e| bad(e.to_string()))?;
    if cursor.is_empty() || !cursor.iter().all(u8::is_ascii_digit) {
        return Err(bad(format!(
            "cursor {:?}",
            String::from_utf8_lossy(&cursor)
        )));
    }
    let keys = keys
        .into_array("keys")
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .map(|k| k.into_bytes("a key").map_err(|e| bad(e.to_string())))
        .collect::<Result<_, _>>()?;
    Ok((cursor, keys))
}
