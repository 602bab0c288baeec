//! Job identity and the record a queue seals for each job.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A job's id: unique within its queue; a caller-chosen id makes an add idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub String);

impl JobId {
    /// A generated id: 12 hex digits of `now` (ms since the epoch) then 16 of `random`, so
    /// that generated ids sort by creation time (28 characters).
    #[must_use]
    pub fn generate(now: crate::time::Instant, random: u64) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let now_ms = now.unix_ms();
        let mut out = String::with_capacity(28);
        // The low 48 bits of the time (until the year 10889), then all 64 of the randomness.
        for shift in (0..12).rev() {
            out.push(char::from(HEX[((now_ms >> (4 * shift)) & 0xf) as usize]));
        }
        for shift in (0..16).rev() {
            out.push(char::from(HEX[((random >> (4 * shift)) & 0xf) as usize]));
        }
        Self(out)
    }
}

impl JobId {
    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for JobId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// A random id for one add of a job (16 bytes), sealed in its record and bound into the
/// AAD of every outcome of that job: an outcome of an earlier job with the same id (ids
/// like `<session>:<counter>` repeat after restarts) does not pass as this one's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Instance(pub [u8; 16]);

impl Instance {
    /// Draws an instance from `rng`.
    pub fn generate(rng: &mut impl crate::random::Random) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Lower-case hex (32 characters): how the instance sits in plain in events and dead
    /// letters (field `i`).
    #[must_use]
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    /// Parses 32 hex digits (either case); anything else is `None`.
    #[must_use]
    pub fn parse_hex(text: &[u8]) -> Option<Self> {
        let mut out = [0u8; 16];
        crate::hex::decode_into(text, &mut out)?;
        Some(Self(out))
    }
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instance({})", self.to_hex())
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What a queue seals for one job (the envelope's plaintext is this record's postcard).
///
/// Everything here is sealed; only the job id and attempt also sit in plain in the stream
/// entry, where the engine needs them without the key. Its `Debug` shows the payload's
/// length, not its bytes (payloads carry session secrets).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub id: JobId,
    /// A short human title (Sockethub: the platform and the activity's type).
    pub title: String,
    /// The client session the job belongs to.
    pub session_id: String,
    /// The application's payload (Sockethub: a JSON ActivityStreams object), already encoded.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// When the job was first added, in milliseconds since the Unix epoch (given by the caller).
    pub created_at_ms: u64,
    /// The add's random instance id; retries keep it. Every outcome is bound to it.
    pub instance: Instance,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_hex_time_then_randomness() {
        let now = 0x0123_4567_89ab;
        let r = 0xfedc_ba98_7654_3210;
        assert_eq!(
            JobId::generate(crate::time::Instant::from_unix_ms(now), r).0,
            format!("{now:012x}{r:016x}")
        );
        assert_eq!(
            JobId::generate(crate::time::Instant::from_unix_ms(0), 0).0,
            "0".repeat(28)
        );
        let max = JobId::generate(crate::time::Instant::from_unix_ms(u64::MAX), u64::MAX).0;
        assert_eq!(max, "f".repeat(28));
        assert!(
            JobId::generate(crate::time::Instant::from_unix_ms(1), u64::MAX)
                < JobId::generate(crate::time::Instant::from_unix_ms(2), 0)
        );
    }

    #[test]
    fn instances_round_trip_through_hex_and_refuse_anything_else() {
        let i = Instance(*b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\xfc\xfd\xfe\xff");
        assert_eq!(i.to_hex(), "000102030405060708090a0bfcfdfeff");
        assert_eq!(Instance::parse_hex(i.to_hex().as_bytes()), Some(i));
        assert_eq!(
            Instance::parse_hex(b"000102030405060708090A0BFCFDFEFF"),
            Some(i)
        );
        for bad in [
            &b""[..],
            b"00",
            b"000102030405060708090a0bfcfdfeff00",
            b"g00102030405060708090a0bfcfdfeff",
            b"+00102030405060708090a0bfcfdfeff",
        ] {
            assert_eq!(Instance::parse_hex(bad), None, "{bad:?}");
        }
    }
}

impl std::fmt::Debug for JobRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRecord")
            .field("id", &self.id)
            .field("title", &self.title)
            .field("session_id", &self.session_id)
            .field("payload", &format_args!("<{} bytes>", self.payload.len()))
            .field("attempt", &self.attempt)
            .field("created_at_ms", &self.created_at_ms)
            .field("instance", &self.instance)
            .finish()
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_shows_no_payload() {
        let job = JobRecord {
            id: JobId::from("j"),
            title: "t".into(),
            session_id: "s".into(),
            payload: b"{\"sessionSecret\":\"hunter2\"}".to_vec(),
            attempt: 1,
            created_at_ms: 0,
            instance: Instance([7; 16]),
        };
        let shown = format!("{job:?} {job:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<27 bytes>"), "{shown}");
    }
}
