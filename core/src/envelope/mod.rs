//! The sealed envelope: the one byte format in which every job, result, failure reason and
//! credential is stored (FORMAT.md specifies it byte by byte).
//!
//! ```text
//! magic "DL" | version u8 | flags u8 | key id u32 LE | nonce 12 | ciphertext | tag 16
//! ```
//! The plaintext is the postcard encoding of a record, lz4-compressed when that pays; the
//! AEAD is AES-256-GCM-SIV with the header and a [`Context`] as associated data.
//!
//! Opening is total: any byte string gives a record or a typed [`EnvelopeError`], never a
//! panic, and never an allocation larger than the input or the configured [`OpenLimits`].

mod header;

pub use header::{
    Context, FLAG_COMPRESSED, FLAG_TRACE, HEADER_LEN, Header, INSTANCE_LEN, MAGIC, MIN_LEN,
    NONCE_LEN, OUTCOME_DETAIL_LEN, Purpose, TAG_LEN, VERSION, outcome_detail,
};

use aes_gcm_siv::aead::AeadInPlace;
use aes_gcm_siv::{Nonce, Tag};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::keys::{KeyId, Keyring};
use crate::random::Random;
use crate::trace::TraceContext;

/// Why bytes could not be sealed or opened. Opening untrusted bytes fails with one of these,
/// never with a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Shorter than the format requires.
    #[error("envelope truncated: {len} bytes, at least {min} required")]
    Truncated {
        /// The input's length.
        len: usize,
        /// The shortest well-formed envelope.
        min: usize,
    },
    /// Does not start with "DL": not an envelope at all.
    #[error("not an envelope: bad magic")]
    BadMagic,
    /// Written by a newer (or unknown) version of the format.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// Flag bits this version does not define.
    #[error("unknown envelope flags {0:#04x}")]
    UnknownFlags(u8),
    /// Sealed with a key this keyring does not hold (retired, or another deployment's).
    #[error("envelope sealed with unknown key id {0}")]
    UnknownKeyId(KeyId),
    /// Authentication failed: tampered bytes, the wrong key, or the wrong context (bytes
    /// moved to another queue, store, job or field).
    #[error("envelope does not authenticate: tampered, wrong key, or wrong context")]
    Decrypt,
    /// Authenticated, but the compressed plaintext is malformed.
    #[error("envelope plaintext does not decompress: {0}")]
    Decompress(&'static str),
    /// Authenticated, but the plaintext is not a valid record of the expected type.
    #[error("envelope record does not decode: {0}")]
    Decode(String),
    /// The record could not be encoded (a type postcard cannot represent).
    #[error("record does not encode: {0}")]
    Encode(String),
    /// Larger than the configured limit.
    #[error("envelope too large: {len} bytes, limit {max}")]
    TooLarge {
        /// The size found or claimed.
        len: usize,
        /// The configured limit.
        max: usize,
    },
}

/// When to compress a record before sealing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Never (credentials: compression before encryption leaks content through length).
    Never,
    /// When the encoded record is larger than this many bytes and compression shrinks it.
    Above(usize),
}

/// Options for sealing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SealOptions {
    /// When to compress; default [`Compression::Never`].
    ///
    /// Compression before encryption makes the envelope's length depend on the content:
    /// when a record holds a secret beside text an attacker chooses (a session secret in a
    /// job whose message a client wrote), anyone who sees lengths (any Redis reader, the
    /// network) can recover the secret a few characters at a time (a CRIME-style oracle; the
    /// security review recovered 16 bytes of a secret so). Opt in only for records that
    /// never mix secrets with attacker-chosen content.
    pub compression: Compression,
}

impl Default for SealOptions {
    fn default() -> Self {
        Self {
            compression: Compression::Never,
        }
    }
}

impl SealOptions {
    /// Options with this compression policy.
    #[must_use]
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }
}

/// Bounds on what opening may accept and allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenLimits {
    /// The largest envelope accepted; default 16 MiB.
    pub max_envelope: usize,
    /// The largest plaintext (after decompression) accepted; default 16 MiB.
    pub max_plaintext: usize,
}

impl Default for OpenLimits {
    fn default() -> Self {
        Self {
            max_envelope: 16 << 20,
            max_plaintext: 16 << 20,
        }
    }
}

impl OpenLimits {
    /// Limits with these maxima.
    #[must_use]
    pub fn new(max_envelope: usize, max_plaintext: usize) -> Self {
        Self {
            max_envelope,
            max_plaintext,
        }
    }
}

/// lz4 expands at most 255x (a match length grows by 255 per extension byte); a claim
/// beyond that is a lie and is rejected before anything is allocated.
const LZ4_MAX_RATIO: usize = 255;
const LEN_PREFIX: usize = 4;

/// Seals and opens envelopes of one scope with its keyring.
#[derive(Debug, Clone)]
pub struct Sealer {
    keys: Keyring,
    options: SealOptions,
    limits: OpenLimits,
}

impl Sealer {
    /// A sealer with default options and limits.
    #[must_use]
    pub fn new(keys: Keyring) -> Self {
        Self {
            keys,
            options: SealOptions::default(),
            limits: OpenLimits::default(),
        }
    }

    /// Replaces the sealing options.
    #[must_use]
    pub fn with_options(mut self, options: SealOptions) -> Self {
        self.options = options;
        self
    }

    /// Replaces the opening limits.
    #[must_use]
    pub fn with_limits(mut self, limits: OpenLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The keyring (e.g. to rotate keys in place).
    pub fn keys_mut(&mut self) -> &mut Keyring {
        &mut self.keys
    }

    /// Seals `record` for `ctx` with the active key and a nonce drawn from `rng`.
    pub fn seal<T: Serialize + ?Sized>(
        &self,
        ctx: &Context<'_>,
        record: &T,
        rng: &mut impl Random,
    ) -> Result<Vec<u8>, EnvelopeError> {
        self.seal_sized(ctx, record, 64, rng)
    }

    /// [`Sealer::seal`] with a trace context in the trailer (FORMAT.md, "The trace
    /// trailer"); `None` seals exactly as `seal`.
    pub fn seal_traced<T: Serialize + ?Sized>(
        &self,
        ctx: &Context<'_>,
        record: &T,
        trace: Option<&TraceContext>,
        rng: &mut impl Random,
    ) -> Result<Vec<u8>, EnvelopeError> {
        self.seal_sized_traced(ctx, record, 64, trace, rng)
    }

    /// [`Sealer::seal`], with the encoded record's expected size: the envelope is written
    /// into one allocation of that size (plus header and tag) rather than grown.
    pub fn seal_sized<T: Serialize + ?Sized>(
        &self,
        ctx: &Context<'_>,
        record: &T,
        size_hint: usize,
        rng: &mut impl Random,
    ) -> Result<Vec<u8>, EnvelopeError> {
        self.seal_sized_traced(ctx, record, size_hint, None, rng)
    }

    /// [`Sealer::seal_sized`] with an optional trace trailer.
    pub fn seal_sized_traced<T: Serialize + ?Sized>(
        &self,
        ctx: &Context<'_>,
        record: &T,
        size_hint: usize,
        trace: Option<&TraceContext>,
        rng: &mut impl Random,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let cap = size_hint.min(self.limits.max_plaintext);
        let mut out = Vec::with_capacity(HEADER_LEN + cap + TAG_LEN);
        out.resize(HEADER_LEN, 0);
        let mut out =
            postcard::to_extend(record, out).map_err(|e| EnvelopeError::Encode(e.to_string()))?;
        if let Some(trace) = trace {
            trace.append_trailer(&mut out)?;
        }
        self.finish(ctx, out, nonce, trace.is_some())
    }

    /// Opens an envelope sealed for `ctx` and decodes its record.
    pub fn open<T: DeserializeOwned>(
        &self,
        ctx: &Context<'_>,
        bytes: &[u8],
    ) -> Result<T, EnvelopeError> {
        Ok(self.open_traced(ctx, bytes)?.0)
    }

    /// [`Sealer::open`], and the trace context of the envelope's trailer, if it has one.
    pub fn open_traced<T: DeserializeOwned>(
        &self,
        ctx: &Context<'_>,
        bytes: &[u8],
    ) -> Result<(T, Option<TraceContext>), EnvelopeError> {
        // The plaintext is decoded into the record, then wiped: only the record (the
        // caller's to keep or drop) holds the job's contents.
        let (plain, traced) = self.open_inner(ctx, bytes)?;
        let plain = zeroize::Zeroizing::new(plain);
        let (body, trace) = if traced {
            let (body, trace) = TraceContext::split_trailer(&plain)?;
            (body, Some(trace))
        } else {
            (&plain[..], None)
        };
        let (record, rest) = postcard::take_from_bytes::<T>(body)
            .map_err(|e| EnvelopeError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(EnvelopeError::Decode(format!(
                "{} trailing bytes after the record",
                rest.len()
            )));
        }
        Ok((record, trace))
    }

    /// Seals plaintext bytes (already encoded) for `ctx`.
    pub fn seal_bytes(
        &self,
        ctx: &Context<'_>,
        plaintext: &[u8],
        rng: &mut impl Random,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        self.seal_bytes_with_nonce(ctx, plaintext, nonce)
    }

    /// [`Sealer::seal_bytes`] with an optional trace trailer.
    pub fn seal_bytes_traced(
        &self,
        ctx: &Context<'_>,
        plaintext: &[u8],
        trace: Option<&TraceContext>,
        rng: &mut impl Random,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        self.seal_bytes_traced_with_nonce(ctx, plaintext, trace, nonce)
    }

    /// Seals with a caller-chosen nonce. Only for test vectors: a nonce must never be reused
    /// with one key (GCM-SIV then reveals whether two plaintexts are equal, nothing more).
    pub fn seal_bytes_with_nonce(
        &self,
        ctx: &Context<'_>,
        plaintext: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, EnvelopeError> {
        self.seal_bytes_traced_with_nonce(ctx, plaintext, None, nonce)
    }

    /// [`Sealer::seal_bytes_with_nonce`] with an optional trace trailer. Only for test
    /// vectors, like it.
    pub fn seal_bytes_traced_with_nonce(
        &self,
        ctx: &Context<'_>,
        plaintext: &[u8],
        trace: Option<&TraceContext>,
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN + 48);
        out.resize(HEADER_LEN, 0);
        out.extend_from_slice(plaintext);
        if let Some(trace) = trace {
            trace.append_trailer(&mut out)?;
        }
        self.finish(ctx, out, nonce, trace.is_some())
    }

    /// `out` = header placeholder || plaintext. Compresses if that pays, writes the header,
    /// encrypts in place and appends the tag.
    fn finish(
        &self,
        ctx: &Context<'_>,
        mut out: Vec<u8>,
        nonce: [u8; NONCE_LEN],
        traced: bool,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let plain_len = out.len() - HEADER_LEN;
        if plain_len > self.limits.max_plaintext {
            // Refuse to write what no reader with the same limits could open.
            return Err(EnvelopeError::TooLarge {
                len: plain_len,
                max: self.limits.max_plaintext,
            });
        }
        let mut flags = if traced { FLAG_TRACE } else { 0 };
        if let Some(compressed) = self.compress(&out[HEADER_LEN..]) {
            out.truncate(HEADER_LEN);
            out.extend_from_slice(&compressed);
            flags |= FLAG_COMPRESSED;
        }
        self.encrypt(ctx, out, flags, nonce)
    }

    /// `out` = header placeholder || body (already compressed if `flags` says so): writes
    /// the header, encrypts in place and appends the tag. The fuzz target also calls it
    /// directly, to forge authenticated bodies that reach the decompressor.
    pub(crate) fn encrypt(
        &self,
        ctx: &Context<'_>,
        mut out: Vec<u8>,
        flags: u8,
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, EnvelopeError> {
        let plain_len = out.len() - HEADER_LEN;
        let key = self.keys.active();
        let header = Header {
            flags,
            key_id: key.id(),
            nonce,
        }
        .to_bytes();
        out[..HEADER_LEN].copy_from_slice(&header);
        let aad = ctx.aad(&header);
        let tag = key
            .cipher()
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut out[HEADER_LEN..])
            .map_err(|_| EnvelopeError::TooLarge {
                // aes-gcm-siv refuses only plaintexts beyond 2^36 bytes.
                len: plain_len,
                max: 1 << 36,
            })?;
        out.extend_from_slice(&tag);
        if out.len() > self.limits.max_envelope {
            return Err(EnvelopeError::TooLarge {
                len: out.len(),
                max: self.limits.max_envelope,
            });
        }
        Ok(out)
    }

    /// `u32 LE length || lz4 block` when the policy allows it and it is smaller.
    fn compress(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let Compression::Above(threshold) = self.options.compression else {
            return None;
        };
        if plain.len() <= threshold {
            return None;
        }
        let len = u32::try_from(plain.len()).ok()?;
        let mut buf = vec![0u8; LEN_PREFIX + lz4_flex::block::get_maximum_output_size(plain.len())];
        buf[..LEN_PREFIX].copy_from_slice(&len.to_le_bytes());
        let n = lz4_flex::block::compress_into(plain, &mut buf[LEN_PREFIX..]).ok()?;
        buf.truncate(LEN_PREFIX + n);
        (buf.len() < plain.len()).then_some(buf)
    }

    /// Opens an envelope sealed for `ctx` and returns its plaintext (decompressed, without
    /// its trace trailer if it has one).
    pub fn open_bytes(&self, ctx: &Context<'_>, bytes: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        Ok(self.open_bytes_traced(ctx, bytes)?.0)
    }

    /// [`Sealer::open_bytes`], and the trace context of the envelope's trailer, if any.
    pub fn open_bytes_traced(
        &self,
        ctx: &Context<'_>,
        bytes: &[u8],
    ) -> Result<(Vec<u8>, Option<TraceContext>), EnvelopeError> {
        let (mut plain, traced) = self.open_inner(ctx, bytes)?;
        if !traced {
            return Ok((plain, None));
        }
        let (body, trace) = TraceContext::split_trailer(&plain)?;
        let body_len = body.len();
        plain.truncate(body_len);
        Ok((plain, Some(trace)))
    }

    /// The authenticated, decompressed plaintext (trailer included), and whether it has a
    /// trace trailer.
    fn open_inner(
        &self,
        ctx: &Context<'_>,
        bytes: &[u8],
    ) -> Result<(Vec<u8>, bool), EnvelopeError> {
        if bytes.len() > self.limits.max_envelope {
            return Err(EnvelopeError::TooLarge {
                len: bytes.len(),
                max: self.limits.max_envelope,
            });
        }
        let header = Header::parse(bytes)?;
        let key = self
            .keys
            .get(header.key_id)
            .ok_or(EnvelopeError::UnknownKeyId(header.key_id))?;
        let (sealed, tag) = bytes[HEADER_LEN..].split_at(bytes.len() - HEADER_LEN - TAG_LEN);
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&bytes[..HEADER_LEN]);
        let aad = ctx.aad(&head);
        let mut plain = sealed.to_vec();
        key.cipher()
            .decrypt_in_place_detached(
                Nonce::from_slice(&header.nonce),
                &aad,
                &mut plain,
                Tag::from_slice(tag),
            )
            .map_err(|_| EnvelopeError::Decrypt)?;
        if header.compressed() {
            plain = self.decompress(&plain)?;
        }
        if plain.len() > self.limits.max_plaintext {
            return Err(EnvelopeError::TooLarge {
                len: plain.len(),
                max: self.limits.max_plaintext,
            });
        }
        Ok((plain, header.traced()))
    }

    fn decompress(&self, body: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let Some((len, block)) = body.split_first_chunk::<LEN_PREFIX>() else {
            return Err(EnvelopeError::Decompress("missing length prefix"));
        };
        let claimed = u32::from_le_bytes(*len) as usize;
        if claimed > self.limits.max_plaintext {
            return Err(EnvelopeError::TooLarge {
                len: claimed,
                max: self.limits.max_plaintext,
            });
        }
        if claimed > block.len().saturating_mul(LZ4_MAX_RATIO) {
            return Err(EnvelopeError::Decompress(
                "claimed length exceeds what the block can expand to",
            ));
        }
        let mut plain = vec![0u8; claimed];
        match lz4_flex::block::decompress_into(block, &mut plain) {
            Ok(n) if n == claimed => Ok(plain),
            Ok(_) => Err(EnvelopeError::Decompress(
                "block shorter than its claimed length",
            )),
            Err(_) => Err(EnvelopeError::Decompress("malformed lz4 block")),
        }
    }
}

#[cfg(test)]
mod tests;
