//! Key-id usage of a queue's envelopes: how many of its sealed jobs and reasons each key
//! sealed (rotation progress: a retired secret can be removed once no envelope names it).

use crate::keys::KeyId;
use crate::value::{EntryId, Value};

/// Where a queue keeps envelopes that live longer than a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum EnvelopeSource {
    /// The work stream's jobs (waiting and running).
    Jobs,
    /// The delayed jobs' sealed payloads.
    Delayed,
    /// The dead letters (their jobs and reasons).
    Dead,
}

impl EnvelopeSource {
    /// Every source, in the order an operator reads them.
    pub const ALL: [EnvelopeSource; 3] = [Self::Jobs, Self::Delayed, Self::Dead];

    /// `jobs`, `delayed`, `dead`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jobs => "jobs",
            Self::Delayed => "delayed",
            Self::Dead => "dead",
        }
    }
}

/// One page of a key-usage count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsagePage {
    /// Envelopes per key id (`None`: bytes that are not an envelope of this version), in
    /// order of first appearance.
    pub counts: Vec<(Option<KeyId>, u64)>,
    /// The page was full: the next starts after this entry (streams).
    pub next_after: Option<EntryId>,
    /// The page was full: the next starts at this rank (delayed).
    pub next_offset: Option<u64>,
}

/// Parses a `key_usage` reply for a page asked at `offset` of `count`; `None` when it is
/// not of that shape.
pub(crate) fn parse(
    v: Value,
    source: EnvelopeSource,
    offset: u64,
    count: u32,
) -> Option<KeyUsagePage> {
    let mut it = v.into_array("key_usage").ok()?.into_iter();
    let more = matches!(it.next()?, Value::Int(1));
    let last = it.next()?.into_bytes("last").ok()?;
    let mut counts = Vec::new();
    while let Some(key) = it.next() {
        let key = key.into_bytes("key id").ok()?;
        let Value::Int(n) = it.next()? else {
            return None;
        };
        let id = match &key[..] {
            b"bad" => None,
            text => Some(KeyId(std::str::from_utf8(text).ok()?.parse().ok()?)),
        };
        counts.push((id, u64::try_from(n).ok()?));
    }
    let (next_after, next_offset) = match (more, source) {
        (false, _) => (None, None),
        (true, EnvelopeSource::Delayed) => (None, Some(offset + u64::from(count))),
        (true, _) => (Some(EntryId::parse(&last).ok()?), None),
    };
    Some(KeyUsagePage {
        counts,
        next_after,
        next_offset,
    })
}
