//! The envelope's fixed 20-byte header and the associated data (AAD) it is sealed with.

use crate::keys::KeyId;

use super::EnvelopeError;

/// The first two bytes of every envelope.
pub const MAGIC: [u8; 2] = *b"DL";
/// The format version this code writes and reads. Version 1 (before outcomes were bound
/// to their kind, attempt and instance) is not opened: see FORMAT.md, "Versions".
pub const VERSION: u8 = 2;
/// Length of the AEAD nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the AEAD tag that ends every envelope.
pub const TAG_LEN: usize = 16;
/// Length of the header: magic 2, version 1, flags 1, key id 4, nonce 12.
pub const HEADER_LEN: usize = 2 + 1 + 1 + 4 + NONCE_LEN;
/// The shortest well-formed envelope: a header and a tag around an empty ciphertext.
pub const MIN_LEN: usize = HEADER_LEN + TAG_LEN;

/// Flag bit: the plaintext is `u32 LE length || lz4 block`.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Flag bit: the (decompressed) plaintext ends with a trace trailer,
/// `postcard(TraceContext) || u16 LE length` ([`crate::trace::TraceContext`]).
pub const FLAG_TRACE: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_COMPRESSED | FLAG_TRACE;

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Flag bits: [`FLAG_COMPRESSED`] and [`FLAG_TRACE`] are defined.
    pub flags: u8,
    /// The key that sealed the envelope.
    pub key_id: KeyId,
    /// The AEAD nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl Header {
    /// Whether the plaintext is lz4-compressed.
    #[must_use]
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Whether the plaintext ends with a trace trailer.
    #[must_use]
    pub fn traced(&self) -> bool {
        self.flags & FLAG_TRACE != 0
    }

    /// The header's bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = self.flags;
        out[4..8].copy_from_slice(&self.key_id.0.to_le_bytes());
        out[8..].copy_from_slice(&self.nonce);
        out
    }

    /// Parses the header of `bytes` without decrypting anything. Checks run in byte order: a
    /// prefix of a well-formed envelope is `Truncated`, anything else fails at its first
    /// wrong field (magic, version, then length, then flags).
    pub fn parse(bytes: &[u8]) -> Result<Header, EnvelopeError> {
        if bytes.len() < MAGIC.len() || bytes[..2] != MAGIC {
            return Err(if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
                EnvelopeError::Truncated {
                    len: bytes.len(),
                    min: MIN_LEN,
                }
            } else {
                EnvelopeError::BadMagic
            });
        }
        let version = *bytes.get(2).ok_or(EnvelopeError::Truncated {
            len: bytes.len(),
            min: MIN_LEN,
        })?;
        if version != VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        if bytes.len() < MIN_LEN {
            return Err(EnvelopeError::Truncated {
                len: bytes.len(),
                min: MIN_LEN,
            });
        }
        let flags = bytes[3];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(EnvelopeError::UnknownFlags(flags));
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&bytes[4..8]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[8..HEADER_LEN]);
        Ok(Header {
            flags,
            key_id: KeyId(u32::from_le_bytes(id)),
            nonce,
        })
    }
}

/// What sealed bytes belong to; the first part of the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum Purpose {
    /// A job record in a queue.
    Job = 1,
    /// A job's result, in the queue's events stream.
    Result = 2,
    /// The reason of a failed attempt that will be retried (events stream).
    Failure = 3,
    /// A credential in a session's store.
    Credential = 4,
    /// The reason a job was dead-lettered (events stream and dead letters).
    DeadLetter = 5,
}

/// Length of an outcome's instance id (see [`Context::outcome`]).
pub const INSTANCE_LEN: usize = 16;

/// Length of an outcome's detail: attempt u32 LE || instance.
pub const OUTCOME_DETAIL_LEN: usize = 4 + INSTANCE_LEN;

/// The detail bytes an outcome is bound to: `attempt u32 LE || instance (16 bytes)`.
#[must_use]
pub fn outcome_detail(attempt: u32, instance: &[u8; INSTANCE_LEN]) -> [u8; OUTCOME_DETAIL_LEN] {
    let mut out = [0u8; OUTCOME_DETAIL_LEN];
    out[..4].copy_from_slice(&attempt.to_le_bytes());
    out[4..].copy_from_slice(instance);
    out
}

/// Where sealed bytes belong: bound into the AAD, so bytes moved elsewhere do not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context<'a> {
    /// What the bytes are.
    pub purpose: Purpose,
    /// Where they live: the queue's or the credential store's key stem,
    /// `<prefix>:{<queue or session>}` (so the key prefix is bound too).
    pub scope: &'a str,
    /// The job id, or the credential's key.
    pub item: &'a [u8],
    /// More that the bytes are bound to: for an outcome (result, failure reason, dead
    /// letter), the attempt and the add's instance ([`outcome_detail`]); empty otherwise.
    pub detail: &'a [u8],
}

impl<'a> Context<'a> {
    /// A context for `purpose` in `scope`, for `item` (job id or credential key), with no
    /// detail (jobs and credentials).
    #[must_use]
    pub fn new(purpose: Purpose, scope: &'a str, item: &'a [u8]) -> Self {
        Self {
            purpose,
            scope,
            item,
            detail: &[],
        }
    }

    /// The context of an outcome of job `item`: `purpose` is its kind (result, retried
    /// failure, dead letter) and `detail` its [`outcome_detail`] (attempt and the instance
    /// id of the add that queued the job). An outcome relabelled with another kind or
    /// attempt, or replayed from an earlier job with the same id, does not open as this one.
    #[must_use]
    pub fn outcome(purpose: Purpose, scope: &'a str, item: &'a [u8], detail: &'a [u8]) -> Self {
        Self {
            purpose,
            scope,
            item,
            detail,
        }
    }

    /// The AAD: header || purpose u8 || scope length u64 LE || scope || item length u64 LE ||
    /// item || detail length u64 LE || detail. Length prefixes make the encoding injective:
    /// no two contexts share an AAD.
    pub fn aad(&self, header: &[u8; HEADER_LEN]) -> Vec<u8> {
        let len = HEADER_LEN + 25 + self.scope.len() + self.item.len() + self.detail.len();
        let mut aad = Vec::with_capacity(len);
        aad.extend_from_slice(header);
        aad.push(self.purpose as u8);
        aad.extend_from_slice(&(self.scope.len() as u64).to_le_bytes());
        aad.extend_from_slice(self.scope.as_bytes());
        aad.extend_from_slice(&(self.item.len() as u64).to_le_bytes());
        aad.extend_from_slice(self.item);
        aad.extend_from_slice(&(self.detail.len() as u64).to_le_bytes());
        aad.extend_from_slice(self.detail);
        aad
    }
}
