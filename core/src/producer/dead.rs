//! Dead letters as an operator sees them: read by page, opened with the queue's key, sent
//! back to the queue (`revive`), deleted.
//!
//! A dead letter is an entry of `<prefix>:{<queue>}:dead` written by `bury`: the job id (`j`,
//! empty for an entry too malformed to name one), the job's envelope as it was delivered
//! (`e`; for garbage, its first bytes), the sealed reason (`r`), the last attempt (`a`) and
//! the add's instance (`i`, hex). Everything else about it is sealed: without the queue's key
//! an operator sees ids, attempts and times only.

use crate::envelope::{Context, Purpose, Sealer, outcome_detail};
use crate::job::{Instance, JobId, JobRecord};
use crate::value::{EntryId, StreamEntry, Value, decode_entries};

/// Identifies one operator request of a producer and its answering event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Request(pub u64);

/// An operator's request of a producer as one value (what an adapter's task is handed):
/// [`super::Producer::ask`] makes it as the method named in each variant does, and the
/// event of that method answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ask {
    /// [`super::Producer::read_dead`]: after, count.
    ReadDead(EntryId, u32),
    /// [`super::Producer::revive`].
    Revive(Vec<DeadLetter>),
    /// [`super::Producer::delete_dead`].
    DeleteDead(Vec<EntryId>),
    /// [`super::Producer::find_job`]: the job, how deep to search.
    FindJob(JobId, u32),
    /// [`super::Producer::request_workers`].
    Workers,
    /// [`super::Producer::peek_events`]: from the cursor, count.
    PeekEvents(super::EventsCursor, u32),
    /// [`super::Producer::tail_log`]: after, count, keep.
    TailLog(EntryId, u32, std::time::Duration),
    /// [`super::Producer::key_usage`]: source, after, offset, page size.
    KeyUsage(super::EnvelopeSource, EntryId, u64, u32),
    /// [`super::Producer::promote_job`].
    Promote(JobId),
    /// [`super::Producer::withdraw_delayed`].
    WithdrawDelayed(JobId),
    /// [`super::Producer::set_paused`].
    SetPaused(bool),
}

/// One dead letter, opened as far as the key allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its entry in the dead-letter stream (its time is when the job was buried).
    pub entry: EntryId,
    /// The job id, if the entry names one.
    pub job: Option<JobId>,
    /// The last attempt, if readable.
    pub attempt: Option<u32>,
    /// The add's instance, if readable.
    pub instance: Option<Instance>,
    /// The job as it was last delivered, or why it does not open (tampered, another key,
    /// garbage that never was a job).
    pub record: Result<JobRecord, String>,
    /// Why it failed for good, or why the reason does not open.
    pub reason: Result<String, String>,
}

impl DeadLetter {
    /// Opens a dead-letter entry with `sealer`, the keyring of the queue whose scope is
    /// `scope`. Never fails: what does not open says why.
    #[must_use]
    pub fn open(entry: &StreamEntry, sealer: &Sealer, scope: &str) -> Self {
        let text = |name: &[u8]| entry.field(name).and_then(|v| std::str::from_utf8(v).ok());
        let job = text(b"j").filter(|j| !j.is_empty()).map(JobId::from);
        let attempt = text(b"a").and_then(|a| a.parse().ok());
        let instance = entry.field(b"i").and_then(Instance::parse_hex);
        let envelope = entry.field(b"e").unwrap_or_default();
        let record = match &job {
            None => Err("no job id: the entry was garbage, not a job".to_owned()),
            Some(id) => {
                let ctx = Context::new(Purpose::Job, scope, id.0.as_bytes());
                sealer
                    .open::<JobRecord>(&ctx, envelope)
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        if r.id == *id {
                            Ok(r)
                        } else {
                            Err(format!("the record names another job: {}", r.id))
                        }
                    })
            }
        };
        // `bury` seals the reason for the job id (empty if unknown) and the instance (zeros
        // if unknown).
        let reason = match (attempt, entry.field(b"r")) {
            (Some(attempt), Some(sealed)) => {
                let item = job.as_ref().map_or(&b""[..], |j| j.0.as_bytes());
                let zero = Instance([0; 16]);
                let detail = outcome_detail(attempt, &instance.unwrap_or(zero).0);
                let ctx = Context::outcome(Purpose::DeadLetter, scope, item, &detail);
                sealer
                    .open_bytes(&ctx, sealed)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .map_err(|e| e.to_string())
            }
            _ => Err("missing field a or r".to_owned()),
        };
        Self {
            entry: entry.id,
            job,
            attempt,
            instance,
            record,
            reason,
        }
    }

    /// How long ago it was buried, at `now`.
    #[must_use]
    pub fn age(&self, now: crate::time::Instant) -> crate::time::Duration {
        now.saturating_duration_since(self.entry.time())
    }
}

/// A page of dead letters, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadPage {
    /// The letters.
    pub letters: Vec<DeadLetter>,
    /// Where the next page starts (pass it as `after`); `None`: this was the last.
    pub next: Option<EntryId>,
}

/// What `revive` did with one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revival {
    /// Back in the work stream at this entry, as its first attempt; the letter is gone.
    Queued(EntryId),
    /// A job with this id lives already (added again meanwhile): the letter stays.
    AlreadyQueued,
    /// The letter is gone (revived or deleted before: running a revive twice is safe).
    Gone,
    /// The letter does not open (no id, tampered, another key): it cannot be revived, only
    /// deleted.
    Unreadable,
}

/// The page a `ReadDead` reply holds (`count` asked).
pub(crate) fn page(v: Value, count: u32, sealer: &Sealer, scope: &str) -> Option<DeadPage> {
    let entries = decode_entries(v).ok()?;
    let full = entries.len() >= count as usize && count > 0;
    let next = entries.last().map(|e| e.id).filter(|_| full);
    let letters = entries
        .iter()
        .map(|e| DeadLetter::open(e, sealer, scope))
        .collect();
    Some(DeadPage { letters, next })
}

/// A letter as `revive` sends it: its entry, its job id, the job re-sealed as attempt 1
/// under a new instance (a second life: its outcomes are not taken for copies of the first
/// life's, which the producer reported already).
pub(crate) fn reseal(
    letter: &DeadLetter,
    sealer: &Sealer,
    scope: &str,
    rng: &mut impl crate::random::Random,
) -> Option<(EntryId, String, Vec<u8>)> {
    let (Some(job), Ok(record)) = (&letter.job, &letter.record) else {
        return None;
    };
    let mut again = record.clone();
    again.attempt = 1;
    again.instance = crate::job::Instance::generate(rng);
    let ctx = Context::new(Purpose::Job, scope, job.0.as_bytes());
    let sealed = sealer.seal(&ctx, &again, rng).ok()?;
    Some((letter.entry, job.0.clone(), sealed))
}

/// What `withdraw_delayed` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayedWithdrawal {
    /// Withdrawn: it will not run; its marker is gone.
    Withdrawn,
    /// It is not delayed (it runs, ran, or never was).
    NotDelayed,
    /// Another producer added it: only that one withdraws it.
    NotOurs,
    /// An add of it awaits Redis here: withdrawing now could not stop that add.
    AddOutstanding,
}

/// Where a job is, as `find_job` found it (each search bounded by its limit).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobPlace {
    /// Its id marker: the producer its outcomes go to (`w`: none), while the job lives or
    /// its producer has not yet read its end; `None`: no job of this id lives.
    pub marker: Option<String>,
    /// Delayed until this time (ms since the epoch).
    pub delayed_until: Option<u64>,
    /// Running: its entry, the consumer that holds it, how many times it was delivered.
    pub running: Option<(EntryId, String, u64)>,
    /// Waiting to be delivered, at this entry.
    pub waiting: Option<EntryId>,
    /// Its newest dead letter, with the attempt it died at.
    pub dead: Option<(EntryId, Option<u32>)>,
}

impl JobPlace {
    /// In a word: `running`, `waiting`, `delayed`, `dead`, `ended` (its marker waits for its
    /// producer to read its end, or a job of this id is queued beyond the searches), or
    /// `unknown`.
    #[must_use]
    pub fn state(&self) -> &'static str {
        match self {
            Self {
                running: Some(_), ..
            } => "running",
            Self {
                waiting: Some(_), ..
            } => "waiting",
            Self {
                delayed_until: Some(_),
                ..
            } => "delayed",
            Self { dead: Some(_), .. } => "dead",
            Self {
                marker: Some(_), ..
            } => "ended",
            _ => "unknown",
        }
    }
}

/// The `find_job` script's reply.
pub(crate) fn place(v: Value) -> Option<JobPlace> {
    let items = v.into_array("find_job").ok()?;
    let [marker, due, running, waiting, dead] = <[Value; 5]>::try_from(items).ok()?;
    let entry = |v: Value| -> Option<EntryId> { EntryId::parse(&v.into_bytes("entry").ok()?).ok() };
    let marker = marker.into_bytes("marker").ok()?;
    let due = due.as_int("due").ok()?;
    let running = match running.into_array("running").ok()?.as_slice() {
        [] => None,
        [e, c, n] => Some((
            entry(e.clone())?,
            String::from_utf8_lossy(&c.clone().into_bytes("consumer").ok()?).into_owned(),
            u64::try_from(n.as_int("deliveries").ok()?).ok()?,
        )),
        _ => return None,
    };
    let waiting = waiting.into_bytes("waiting").ok()?;
    let waiting = if waiting.is_empty() {
        None
    } else {
        Some(EntryId::parse(&waiting).ok()?)
    };
    let dead = match dead.into_array("dead").ok()?.as_slice() {
        [] => None,
        [e, a] => Some((
            entry(e.clone())?,
            a.as_int("attempt").ok().and_then(|a| u32::try_from(a).ok()),
        )),
        _ => return None,
    };
    Some(JobPlace {
        marker: (!marker.is_empty()).then(|| String::from_utf8_lossy(&marker).into_owned()),
        delayed_until: u64::try_from(due).ok(),
        running,
        waiting,
        dead,
    })
}

/// Retrying every dead letter buried up to a cutoff, page by page (what an operator's
/// "retry all" does): which letters of each page go back, where the next page starts, when
/// the sweep is done, and how many went back. Letters buried after the cutoff are left (a
/// job that dies again while the sweep runs is not chased), so the sweep ends.
///
/// Feed it each page read after [`RetryAll::after`] ([`super::Producer::read_dead`]), send
/// what [`RetryAll::page`] picks to [`super::Producer::revive`], hand the results to
/// [`RetryAll::revived`]; stop when [`RetryAll::after`] is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryAll {
    cutoff_ms: u64,
    after: Option<EntryId>,
    done: bool,
    queued: u64,
}

impl RetryAll {
    /// A sweep of the letters buried at `cutoff_ms` (ms since the epoch) or earlier.
    #[must_use]
    pub fn new(cutoff_ms: u64) -> Self {
        Self {
            cutoff_ms,
            after: Some(EntryId::ZERO),
            done: false,
            queued: 0,
        }
    }

    /// Where the next page to read starts; `None`: the sweep is done.
    #[must_use]
    pub fn after(&self) -> Option<EntryId> {
        (!self.done).then_some(self.after).flatten()
    }

    /// The letters of `page` to send back (maybe none), the sweep moved past it.
    pub fn page(&mut self, page: DeadPage) -> Vec<DeadLetter> {
        let cutoff = self.cutoff_ms;
        self.done = page.next.is_none_or(|n| n.ms > cutoff);
        self.after = page.next;
        page.letters
            .into_iter()
            .filter(|l| l.entry.ms <= cutoff)
            .collect()
    }

    /// What `revive` did with the letters of a page.
    pub fn revived(&mut self, results: &[(EntryId, Revival)]) {
        let queued = results
            .iter()
            .filter(|(_, r)| matches!(r, Revival::Queued(_)))
            .count();
        self.queued += queued as u64;
    }

    /// How many letters went back to the queue so far.
    #[must_use]
    pub fn queued(&self) -> u64 {
        self.queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(ms: u64) -> DeadLetter {
        DeadLetter {
            entry: EntryId { ms, seq: 0 },
            job: None,
            attempt: None,
            instance: None,
            record: Err(String::new()),
            reason: Err(String::new()),
        }
    }

    #[test]
    fn a_retry_all_sweep_stops_at_its_cutoff() {
        let mut sweep = RetryAll::new(20);
        assert_eq!(sweep.after(), Some(EntryId::ZERO));
        let picked = sweep.page(DeadPage {
            letters: vec![letter(10), letter(20)],
            next: Some(EntryId { ms: 20, seq: 0 }),
        });
        assert_eq!(picked, vec![letter(10), letter(20)]);
        sweep.revived(&[
            (picked[0].entry, Revival::Queued(EntryId { ms: 30, seq: 0 })),
            (picked[1].entry, Revival::Gone),
        ]);
        assert_eq!(sweep.after(), Some(EntryId { ms: 20, seq: 0 }));
        // A letter buried after the cutoff (the sweep's own job dying again) is left, and
        // the sweep ends there even though more pages follow.
        let picked = sweep.page(DeadPage {
            letters: vec![letter(20), letter(31)],
            next: Some(EntryId { ms: 31, seq: 0 }),
        });
        assert_eq!(picked, vec![letter(20)]);
        assert_eq!(sweep.after(), None);
        assert_eq!(sweep.queued(), 1);
        // The last page ends it too.
        let mut sweep = RetryAll::new(u64::MAX);
        assert!(
            sweep
                .page(DeadPage {
                    letters: vec![],
                    next: None
                })
                .is_empty()
        );
        assert_eq!(sweep.after(), None);
    }
}
