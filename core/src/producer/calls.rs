//! Add calls: each caller's add, from the call to its one answer.
//!
//! [`super::Producer::add`] works by job: its events say what became of each job. A caller
//! who waits for its add (the adapter's `JobQueue::add`) needs more: an answer to *its*
//! call, exactly one, by a deadline, while two calls may add the same id. That ledger is
//! here, so that its decisions run in the model test like every other:
//!
//! - [`super::Producer::add_call`] numbers the add ([`Call`]), gives it a deadline, and ends
//!   it in exactly one [`super::ProducerEvent::AddAnswered`].
//! - At the deadline (or at once, in fail-fast mode, while Redis cannot be reached) an add
//!   that never left and whose id was generated for it is withdrawn
//!   ([`AddAnswer::Unavailable`]: not queued); any other is [`AddAnswer::Unconfirmed`]: it
//!   may be queued, and the producer keeps sending it, checked, until Redis answers.
//! - The outcomes of the jobs that ended in the last [`ENDED_GRACE_MS`] (at most
//!   [`ENDED_MAX`], and [`ENDED_MAX_BYTES`] of results) are kept: an add of such an id (a caller adding again after
//!   `Unconfirmed`) is answered [`AddAnswer::Ended`] and not sent, since the job's marker
//!   may be gone already and it would run again. A call whose job ended while it waited
//!   for Redis' answer to its add is answered `Ended` when that answer comes.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::ProducerError;

/// How long a producer remembers a job's outcome after it ended (ms): an add of its id in
/// that time gets the outcome ([`AddAnswer::Ended`]) instead of running the job again.
pub const ENDED_GRACE_MS: u64 = 60_000;
/// The most outcomes a producer remembers so.
pub const ENDED_MAX: usize = 65_536;
/// The most bytes of results a producer remembers so (the oldest go first beyond it: 65,536
/// results of 1 MiB would otherwise be 64 GiB).
pub const ENDED_MAX_BYTES: usize = 64 << 20;

/// A caller's add, numbered by the caller (unique among the producer's open calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Call(pub u64);

/// How a job ended, as an add call of its id hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// It completed with this (encoded) result.
    Completed(Vec<u8>),
    /// It failed for good (it is in the dead letters), for this reason.
    Dead(String),
    /// It was withdrawn while delayed, before it ran.
    Withdrawn,
}

impl JobEnd {
    /// The bytes of its result or reason.
    fn len(&self) -> usize {
        match self {
            JobEnd::Completed(r) => r.len(),
            JobEnd::Dead(reason) => reason.len(),
            JobEnd::Withdrawn => 0,
        }
    }
}

/// The one answer to an add call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddAnswer {
    /// Redis has the job: its outcome follows as the job's events.
    Taken,
    /// The job ended already (its outcome was read while this call waited for Redis to
    /// confirm its add, or a moment before the call): this is its outcome, and no more
    /// follows.
    Ended(JobEnd),
    /// Not queued: the add never left this producer and its id was generated for it, so no
    /// other add can have queued it; it was withdrawn.
    Unavailable,
    /// Maybe queued: it was sent (or its id was the caller's, which an earlier add may have
    /// queued) and Redis has not answered. The producer keeps sending it, checked, until
    /// Redis does: it lands at most once, and its outcome follows as for any job.
    Unconfirmed,
    /// The queue is paused (Sockethub's "queue closed"): not queued.
    Paused,
    /// Redis refused the add (out of memory, the queue destroyed, the producer superseded):
    /// not queued.
    Failed(String),
    /// The producer refused the add (backpressure, closed, superseded, an empty id, a seal
    /// that failed): not queued.
    Refused(ProducerError),
}

/// A call waiting for Redis' answer to its add.
#[derive(Debug)]
struct Waiting {
    job: String,
    deadline_ms: u64,
    /// The job ended while this call waited.
    end: Option<JobEnd>,
}

/// The open calls, and the outcomes of the jobs that ended a moment ago.
#[derive(Debug, Default)]
pub(super) struct Calls {
    waiting: HashMap<Call, Waiting>,
    /// The open calls by job (a job added twice has two).
    by_job: HashMap<String, Vec<Call>>,
    deadlines: BTreeSet<(u64, Call)>,
    ended: HashMap<String, (JobEnd, u64)>,
    ended_order: VecDeque<(String, u64)>,
    /// The bytes of the results and reasons in `ended`.
    ended_bytes: usize,
}

impl Calls {
    /// `call` waits for Redis to take its add of `job`, until `deadline_ms`.
    pub(super) fn open(&mut self, call: Call, job: &str, deadline_ms: u64) {
        if let Some(old) = self.waiting.insert(
            call,
            Waiting {
                job: job.to_owned(),
                deadline_ms,
                end: None,
            },
        ) {
            // A caller that reused an open call's number: the older one is forgotten.
            self.unlink(call, &old);
        }
        self.by_job.entry(job.to_owned()).or_default().push(call);
        self.deadlines.insert((deadline_ms, call));
    }

    /// Closes `call` (it is being answered): its job, and how the job ended if it did
    /// meanwhile.
    pub(super) fn close(&mut self, call: Call) -> Option<(String, Option<JobEnd>)> {
        let w = self.waiting.remove(&call)?;
        self.unlink(call, &w);
        Some((w.job, w.end))
    }

    fn unlink(&mut self, call: Call, w: &Waiting) {
        self.deadlines.remove(&(w.deadline_ms, call));
        if let Some(calls) = self.by_job.get_mut(&w.job) {
            calls.retain(|c| *c != call);
            if calls.is_empty() {
                self.by_job.remove(&w.job);
            }
        }
    }

    /// The open calls, oldest number first.
    pub(super) fn open_calls(&self) -> Vec<Call> {
        let mut calls: Vec<Call> = self.waiting.keys().copied().collect();
        calls.sort_unstable();
        calls
    }

    /// The earliest deadline of an open call.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// The open calls whose deadline is `now_ms` or earlier.
    pub(super) fn due(&self, now_ms: u64) -> Vec<Call> {
        self.deadlines
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .map(|(_, c)| *c)
            .collect()
    }

    /// `job` ended with `end` at `now_ms`: its open calls will hear it, and so will an add
    /// of its id for a while.
    pub(super) fn ended(&mut self, job: &str, end: &JobEnd, now_ms: u64) {
        for call in self.by_job.get(job).into_iter().flatten() {
            if let Some(w) = self.waiting.get_mut(call) {
                w.end = Some(end.clone());
            }
        }
        self.ended_bytes += end.len();
        if let Some((old, _)) = self.ended.insert(job.to_owned(), (end.clone(), now_ms)) {
            self.ended_bytes -= old.len();
        }
        self.ended_order.push_back((job.to_owned(), now_ms));
        self.forget_ended(now_ms);
    }

    /// How `job` ended, if it did a moment before `now_ms`.
    pub(super) fn ended_lately(&mut self, job: &str, now_ms: u64) -> Option<JobEnd> {
        self.forget_ended(now_ms);
        self.ended.get(job).map(|(end, _)| end.clone())
    }

    /// Drops remembered outcomes past their grace, or beyond the most kept.
    fn forget_ended(&mut self, now_ms: u64) {
        while let Some((job, at)) = self.ended_order.front() {
            let expired = now_ms.saturating_sub(*at) > ENDED_GRACE_MS;
            let full = self.ended_order.len() > ENDED_MAX || self.ended_bytes > ENDED_MAX_BYTES;
            if !expired && !full {
                break;
            }
            if self.ended.get(job).is_some_and(|(_, t)| t == at) {
                if let Some((end, _)) = self.ended.remove(job) {
                    self.ended_bytes -= end.len();
                }
            }
            self.ended_order.pop_front();
        }
    }

    /// How many calls are open.
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembered outcomes are bounded by count, by bytes and by time, oldest first.
    #[test]
    fn ended_outcomes_are_bounded_by_bytes_too() {
        let mut calls = Calls::default();
        let big = JobEnd::Completed(vec![0; 1 << 20]);
        for n in 0..70 {
            calls.ended(&format!("j{n}"), &big, 0);
        }
        assert!(calls.ended_bytes <= ENDED_MAX_BYTES);
        assert!(calls.ended_lately("j0", 0).is_none(), "the oldest went");
        assert_eq!(calls.ended_lately("j69", 0), Some(big.clone()));
        assert_eq!(calls.ended.len(), 64);
        // The same job ending again (a stale repeat) is counted once.
        calls.ended("j69", &JobEnd::Dead("x".into()), 1);
        assert_eq!(calls.ended_bytes, 63 * (1 << 20) + 1);
        assert!(
            calls.ended_lately("j69", ENDED_GRACE_MS + 2).is_none(),
            "past the grace"
        );
        assert_eq!(calls.ended_bytes, 0);
    }
}
