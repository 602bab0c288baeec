//! Job identity and the record a queue seals for each job.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A job's id: unique within its queue; a caller-chosen id makes an add idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub String);

impl JobId {
    /// A generated id: 12 hex digits of `now_ms` then 16 of `random`, so that generated ids
    /// sort by creation time (28 characters).
    #[must_use]
    pub fn generate(now_ms: u64, random: u64) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_hex_time_then_randomness() {
        let now = 0x0123_4567_89ab;
        let r = 0xfedc_ba98_7654_3210;
        assert_eq!(JobId::generate(now, r).0, format!("{now:012x}{r:016x}"));
        assert_eq!(JobId::generate(0, 0).0, "0".repeat(28));
        let max = JobId::generate(u64::MAX, u64::MAX).0;
        assert_eq!(max, "f".repeat(28));
        assert!(JobId::generate(1, u64::MAX) < JobId::generate(2, 0));
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
        };
        let shown = format!("{job:?} {job:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<27 bytes>"), "{shown}");
    }
}
