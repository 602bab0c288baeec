//! An operator's view of a queue's outcomes: those waiting for their producers (`datalayer
//! events ls`: every registered producer's events stream, read after a cursor per producer,
//! never acknowledged; each producer still reads its own), and every outcome as the settles
//! write it (`datalayer events tail`: the queue's outcome log, plain fields only).

use std::collections::BTreeMap;

use crate::envelope::{Context, Purpose, Sealer, outcome_detail};
use crate::job::{Instance, JobId};
use crate::value::{EntryId, StreamEntry, Value};

/// Where a tail of the queue's events stands: the last entry read of each producer's
/// stream, and where to start for producers not seen yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsCursor {
    since: EntryId,
    seen: BTreeMap<String, EntryId>,
}

impl EventsCursor {
    /// A cursor that reads events written after `since` (`EntryId::ZERO`: every event
    /// still in the streams; `EntryId::new(now_ms, 0)`: from now on).
    #[must_use]
    pub fn new(since: EntryId) -> Self {
        Self {
            since,
            seen: BTreeMap::new(),
        }
    }

    /// Moves past `events` (a page [`super::Producer::peek_events`] returned).
    pub fn advance(&mut self, events: &[PeekedEvent]) {
        for e in events {
            let at = self.seen.entry(e.producer.clone()).or_insert(e.entry);
            *at = (*at).max(e.entry);
        }
    }

    /// The start for producers not seen yet.
    #[must_use]
    pub fn since(&self) -> EntryId {
        self.since
    }

    /// Each producer seen, with the last entry read.
    #[must_use]
    pub fn producers(&self) -> Vec<(String, EntryId)> {
        self.seen.iter().map(|(p, e)| (p.clone(), *e)).collect()
    }
}

/// What kind of outcome an event reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The job completed (its result is never opened here).
    Completed,
    /// An attempt failed; the job will be retried.
    Failed,
    /// The job failed for good.
    DeadLettered,
    /// A kind this version does not know (or garbage), as written.
    Other(String),
}

impl EventKind {
    /// `completed`, `failed`, `dead`, or the unknown kind as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::DeadLettered => "dead",
            Self::Other(k) => k,
        }
    }
}

/// One event as an operator sees it: the plain fields, the sealed value's size, and for
/// failures the reason when the caller holds the queue's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeekedEvent {
    /// The producer whose stream holds it.
    pub producer: String,
    /// Its entry (its time is when the outcome was written).
    pub entry: EntryId,
    /// The job (`None`: the field is missing or not text).
    pub job: Option<JobId>,
    /// The outcome's kind.
    pub kind: EventKind,
    /// The attempt that ended (`None`: missing or malformed).
    pub attempt: Option<u32>,
    /// The sealed result's or reason's length in bytes.
    pub sealed_len: usize,
    /// A failure's or dead letter's reason, opened with the caller's key; `None` for
    /// results (never opened: they are the application's data), without the key, or when it
    /// does not open.
    pub reason: Option<String>,
}

/// Parses a `peek_events` reply; `None` when it is not of that shape.
pub(crate) fn parse(v: Value, sealer: &Sealer, scope: &str) -> Option<Vec<PeekedEvent>> {
    let mut out = Vec::new();
    for pair in v.into_array("peek_events").ok()? {
        let mut pair = pair.into_array("producer").ok()?.into_iter();
        let (Some(name), Some(entries), None) = (pair.next(), pair.next(), pair.next()) else {
            return None;
        };
        let producer = String::from_utf8_lossy(&name.into_bytes("producer").ok()?).into_owned();
        for entry in entries.into_array("entries").ok()? {
            let entry = StreamEntry::decode(entry).ok()?;
            out.push(event(&producer, &entry, Some((sealer, scope))));
        }
    }
    Some(out)
}

/// Parses a `tail_log` reply: the outcomes (the log's `open` entry skipped) and the last
/// entry read; `None` when it is not of that shape.
pub(crate) fn parse_log(v: Value) -> Option<(Vec<PeekedEvent>, Option<EntryId>)> {
    let mut out = Vec::new();
    let mut last = None;
    for entry in v.into_array("tail_log").ok()? {
        let entry = StreamEntry::decode(entry).ok()?;
        last = Some(entry.id);
        if entry.field(b"k") == Some(&b"open"[..]) {
            continue;
        }
        let producer = String::from_utf8_lossy(entry.field(b"p").unwrap_or_default());
        // No reason to open: the log holds none.
        out.push(event(&producer, &entry, None));
    }
    Some((out, last))
}

fn event(producer: &str, entry: &StreamEntry, open: Option<(&Sealer, &str)>) -> PeekedEvent {
    let text = |name: &[u8]| entry.field(name).and_then(|v| std::str::from_utf8(v).ok());
    let job = text(b"j").filter(|j| !j.is_empty()).map(JobId::from);
    let kind = match text(b"k") {
        Some("c") => EventKind::Completed,
        Some("f") => EventKind::Failed,
        Some("d") => EventKind::DeadLettered,
        other => EventKind::Other(other.unwrap_or_default().to_owned()),
    };
    let attempt = text(b"a").and_then(|a| a.parse::<u32>().ok());
    let sealed = entry.field(b"v").unwrap_or_default();
    let purpose = match kind {
        EventKind::Failed => Some(Purpose::Failure),
        EventKind::DeadLettered => Some(Purpose::DeadLetter),
        _ => None,
    };
    let instance = entry.field(b"i").and_then(Instance::parse_hex);
    let reason = match (purpose, &job, attempt, instance, open) {
        (Some(purpose), Some(job), Some(attempt), Some(instance), Some((sealer, scope))) => {
            let detail = outcome_detail(attempt, &instance.0);
            let ctx = Context::outcome(purpose, scope, job.0.as_bytes(), &detail);
            sealer
                .open_bytes(&ctx, sealed)
                .ok()
                .map(|r| String::from_utf8_lossy(&r).into_owned())
        }
        _ => None,
    };
    PeekedEvent {
        producer: producer.to_owned(),
        entry: entry.id,
        job,
        kind,
        attempt,
        sealed_len: sealed.len(),
        reason,
    }
}
