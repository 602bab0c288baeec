//! Job identity and the record a queue seals for each job.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A job's id: unique within its queue; a caller-chosen id makes an add idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub String);

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
/// entry, where the engine needs them without the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
