//! The producer's public vocabulary: its configuration, its errors, its events.

use crate::command::OpId;
use crate::envelope::EnvelopeError;
use crate::job::JobId;
use crate::naming::{NameError, ProducerIdError};
use crate::time::{Duration, Instant};
use crate::trace::TraceContext;
use crate::value::EntryId;

/// How a producer behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// The key prefix (default `dl`).
    pub prefix: String,
    /// The queue.
    pub queue: String,
    /// This producer's id among the queue's producers (default `p`): the jobs it adds carry
    /// it, and their outcomes go to its own events stream, so that any number of producers
    /// share a queue, each reading its own jobs' outcomes only. Give every live producer of
    /// a queue its own id (the adapter generates one); a producer that replaces one that
    /// died takes the dead one's id, and with it the outcomes it was owed.
    pub producer: String,
    /// How long this producer may be away (default 1 h) before the queue declares it
    /// gone for good: its unread outcomes, and the id markers of its jobs, are swept, and
    /// the outcomes of its jobs still running are dropped. It refreshes its registration
    /// every quarter of this.
    pub producer_ttl: Duration,
    /// This instance's token (default `0`): a new instance under the same `producer` id
    /// takes the id over from an instance with another token, which is then told
    /// `Superseded`. Give each instance its own (the adapter draws one at random).
    pub token: String,
    /// The most jobs in one add command.
    pub max_batch_jobs: usize,
    /// The most envelope bytes in one add command (a single larger job goes alone).
    pub max_batch_bytes: usize,
    /// The most adds not yet confirmed by Redis; beyond, `add` fails with `Backpressure`.
    pub max_pending: usize,
    /// Whether to read the queue's events (results and failures).
    pub read_events: bool,
    /// Where the events cursor starts (`0-0`: every event still in the stream).
    pub events_after: EntryId,
    /// The most events per read.
    pub events_count: u32,
    /// How long an events read blocks in Redis once the stream is found empty; `None`
    /// polls. A read that follows one which found events never blocks.
    pub block: Option<Duration>,
    /// Adds count as done only once this many replicas have them (`WAIT`, see
    /// [`crate::command::Replicas`]); `None` (the default): once the primary has them.
    pub replicas: Option<crate::command::Replicas>,
    /// Whether add calls ([`super::Producer::add_call`]) are answered at once while Redis
    /// cannot be reached (the last command's outcome was unknown) rather than at their
    /// deadline: `Unavailable` for a job that never left, `Unconfirmed` for one that may
    /// be queued (default false).
    pub fail_fast: bool,
    /// How long surfaced events wait for their acknowledgement (default 20 ms): the trim
    /// of the events stream and the forgetting of ended jobs' id markers, one script call
    /// in Redis. Jobs that end one at a time (a worker at concurrency 1, a trickle) then
    /// share one acknowledgement instead of paying one each. It goes at once for the end of
    /// a job whose id the caller chose (the id is free for an add anywhere once its end is
    /// seen), for a dead letter (an operator may revive it), a withdrawal, when
    /// [`ACK_BATCH`] events or markers wait, when the producer closes, before stats, an
    /// operator's request, or an add of an id whose job ended here (the marker must be
    /// gone first). `Duration::ZERO` acknowledges at once. Until then the events stay in
    /// Redis (a replacement of this producer would read them again).
    pub ack_delay: Duration,
}

/// The most events (or id markers) waiting for an acknowledgement: past it, the
/// acknowledgement goes without waiting for [`ProducerConfig::ack_delay`].
pub const ACK_BATCH: usize = 1_024;

impl ProducerConfig {
    /// The defaults: batches of 128 jobs or 1 MiB, 100,000 pending adds, events read from
    /// the start of the stream with 5 s blocking reads.
    #[must_use]
    pub fn new(queue: &str) -> Self {
        Self {
            prefix: "dl".into(),
            queue: queue.into(),
            producer: "p".into(),
            producer_ttl: Duration::from_secs(3_600),
            token: "0".into(),
            max_batch_jobs: 128,
            max_batch_bytes: 1 << 20,
            max_pending: 100_000,
            read_events: true,
            events_after: EntryId::ZERO,
            events_count: 256,
            block: Some(Duration::from_secs(5)),
            replicas: None,
            fail_fast: false,
            ack_delay: Duration::from_millis(20),
        }
    }

    /// With a fresh identity drawn from `rng`: a producer id of 6 letters and digits (62^6
    /// ids: two of 1,000 producers live at once on one queue collide with a chance of about
    /// 1 in 100,000) and a token of 16 hex digits (see [`ProducerConfig::producer`] and
    /// [`ProducerConfig::token`]). What each new instance of an application's queue needs,
    /// unless it replaces one (then give it that one's producer id).
    #[must_use]
    pub fn fresh_identity(mut self, rng: &mut (impl crate::random::Random + ?Sized)) -> Self {
        const ALPHABET: &[u8; 62] =
            b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut bytes = [0u8; 14];
        rng.fill_bytes(&mut bytes);
        // 256 = 4 × 62 + 8: the first 8 letters come up a little more often; an id needs
        // uniqueness, not uniformity.
        self.producer = bytes[..6]
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(*b) % 62]))
            .collect();
        self.token = crate::hex::encode(&bytes[6..]);
        self
    }

    /// With this producer id (see [`ProducerConfig::producer`]).
    #[must_use]
    pub fn producer(mut self, id: &str) -> Self {
        self.producer = id.into();
        self
    }

    /// With acknowledgements of read events this long after the first waits (see
    /// [`ProducerConfig::ack_delay`]).
    #[must_use]
    pub fn ack_delay(mut self, delay: Duration) -> Self {
        self.ack_delay = delay;
        self
    }

    /// With events reads that block this long (`None`: poll).
    #[must_use]
    pub fn block(mut self, block: Option<Duration>) -> Self {
        self.block = block;
        self
    }
}

/// A job to add.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddJob {
    /// A caller-chosen id (idempotent adds); `None` generates one.
    pub id: Option<JobId>,
    /// A short title.
    pub title: String,
    /// The client session the job belongs to.
    pub session_id: String,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// Run no sooner than this long from now.
    pub delay: Duration,
    /// `id` was generated for this add ([`JobId::generate`]), not chosen by the caller: no
    /// job can hold it yet, so the first send skips the duplicate check (one MULTI/EXEC
    /// instead of the enqueue script; a resend after an unknown outcome still checks). Set
    /// it only for such ids: a reused id sent this way is queued twice.
    pub generated_id: bool,
    /// The trace context of the span that adds the job, sealed in its envelope (never
    /// visible in Redis) so that the span running it can continue the trace. The adapter's
    /// `otel` feature fills it from the current span.
    pub trace: Option<TraceContext>,
}

impl AddJob {
    /// The job's id: the one given, or else a new one ([`JobId::generate`], at `now`, from
    /// `rng`) marked [`AddJob::generated_id`]: no earlier add can have queued it, so its
    /// first send needs no duplicate check, and an add that never left can be withdrawn
    /// ([`super::AddAnswer::Unavailable`]). An adapter chooses it before handing the add to
    /// its machine, so that a caller who gives up knows which job to add again.
    pub fn assign_id(
        &mut self,
        now: Instant,
        rng: &mut (impl crate::random::Random + ?Sized),
    ) -> JobId {
        if let Some(id) = &self.id {
            return id.clone();
        }
        let id = JobId::generate(now, rng.next_u64());
        self.id = Some(id.clone());
        self.generated_id = true;
        id
    }
}

/// A caller's misuse, or an add that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {
    /// The queue is paused (Sockethub's "queue closed").
    #[error("queue closed")]
    QueueClosed,
    /// Too many adds await Redis' confirmation; wait for `Accepted` events.
    #[error("{0} adds await confirmation: wait before adding more")]
    Backpressure(usize),
    /// The queue name cannot be used in a key.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The producer id cannot be used.
    #[error(transparent)]
    ProducerId(#[from] ProducerIdError),
    /// The job could not be sealed.
    #[error("sealing failed: {0}")]
    Seal(#[from] EnvelopeError),
    /// A reply for an operation this producer did not send.
    #[error("no operation {0:?} is awaiting a reply")]
    UnknownOp(OpId),
    /// A caller-chosen job id must not be empty (an empty one is what garbage that names
    /// no job looks like).
    #[error("a job id must not be empty")]
    EmptyJobId,
    /// Another instance took this producer's id over ([`ProducerEvent::Superseded`]).
    #[error("superseded: another instance took over this producer id")]
    Superseded,
    /// Events were not drained: call `poll_event` until `None` after every input.
    #[error("{0} events are waiting: drain poll_event after every input")]
    Undrained(usize),
}

/// What [`super::Producer::withdraw`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Withdrawal {
    /// No add of the job was ever sent: withdrawn, and the job is not in Redis (from this
    /// producer). The add's caller may be told "not queued".
    NotSent,
    /// An add of the job was sent and Redis has not answered (the reply was lost, or is
    /// still on its way): the job may be queued. Nothing is withdrawn: the producer keeps
    /// sending it, through the duplicate check, until Redis answers, so it lands exactly
    /// once; its outcome arrives as for any job.
    Unconfirmed,
    /// No add of the job awaits Redis: it was answered (an `Accepted` or `AddFailed` event
    /// is on its way or was drained).
    Answered,
}

/// What became of an add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddStatus {
    /// In the work stream, at this entry.
    Added(EntryId),
    /// In the delayed set, due later.
    Delayed,
    /// A job with this id is alive already (possibly this very add, sent twice after an
    /// unknown outcome): nothing was added.
    AlreadyQueued,
}

/// What the producer tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProducerEvent {
    /// Redis has the job.
    Accepted {
        /// The job.
        job: JobId,
        /// Where it is.
        status: AddStatus,
    },
    /// Redis refused the add (e.g. out of memory); the job is not queued.
    AddFailed {
        /// The job.
        job: JobId,
        /// Redis' error.
        error: String,
    },
    /// The job completed with this result.
    Completed {
        /// The job.
        job: JobId,
        /// The encoded result.
        result: Vec<u8>,
        /// The attempt that succeeded.
        attempt: u32,
        /// The trace context the worker sealed with the outcome (the span that ran the
        /// attempt), if it sent one.
        trace: Option<TraceContext>,
    },
    /// An attempt failed; the job will be retried.
    Failed {
        /// The job.
        job: JobId,
        /// The failure reason.
        reason: String,
        /// The attempt that failed.
        attempt: u32,
        /// The trace context the worker sealed with the outcome (the span that ran the
        /// attempt), if it sent one.
        trace: Option<TraceContext>,
    },
    /// The job failed for good and sits in the dead letters.
    DeadLettered {
        /// The job.
        job: JobId,
        /// The failure reason.
        reason: String,
        /// The last attempt.
        attempt: u32,
        /// The trace context the worker sealed with the outcome (the span that ran the
        /// attempt), if it sent one.
        trace: Option<TraceContext>,
    },
    /// An event could not be read (tampered, wrong key, malformed) and was skipped.
    BadEvent {
        /// The event's id.
        event: EntryId,
        /// Why.
        reason: String,
    },
    /// The queue's counts.
    Stats(QueueStats),
    /// A page of dead letters (`read_dead`).
    DeadPage {
        /// The request.
        request: super::Request,
        /// The page.
        page: super::DeadPage,
    },
    /// What `revive` did with each letter.
    Revived {
        /// The request.
        request: super::Request,
        /// Each letter's entry and fate.
        results: Vec<(EntryId, super::Revival)>,
    },
    /// The queue's live workers: consumer name, and when it promised to be back (ms).
    Workers {
        /// The request.
        request: super::Request,
        /// Name and promise, soonest first.
        workers: Vec<(String, u64)>,
    },
    /// `peek_events`: the queue's events after the cursor, oldest first per producer.
    EventsPeeked {
        /// The request.
        request: super::Request,
        /// The events.
        events: Vec<super::PeekedEvent>,
    },
    /// `tail_log`: outcomes of the queue's log after the cursor, oldest first (plain fields
    /// only: no reason, `sealed_len` 0), and the last entry read (pass it as the next
    /// `after`; `None`: nothing new).
    LogPage {
        /// The request.
        request: super::Request,
        /// The outcomes.
        events: Vec<super::PeekedEvent>,
        /// The last entry read (the log's opening entry included).
        last: Option<EntryId>,
    },
    /// `key_usage`: one page of envelopes counted by key id.
    KeyUsage {
        /// The request.
        request: super::Request,
        /// Where they were counted.
        source: super::EnvelopeSource,
        /// The counts, and where the next page starts.
        page: super::KeyUsagePage,
    },
    /// `promote_job`: the job's new entry, or `None` (it was not delayed).
    Promoted {
        /// The request.
        request: super::Request,
        /// The job.
        job: JobId,
        /// Its entry in the work stream.
        entry: Option<EntryId>,
    },
    /// `withdraw_delayed`: what became of the job (`Withdrawn` is its final outcome).
    DelayedWithdrawn {
        /// The request.
        request: super::Request,
        /// The job.
        job: JobId,
        /// What was found.
        result: super::DelayedWithdrawal,
    },
    /// Where a job is (`find_job`).
    JobFound {
        /// The request.
        request: super::Request,
        /// What the searches found.
        place: super::JobPlace,
    },
    /// The queue is paused (in Redis, by this process or another): the job was not queued
    /// (Sockethub's "queue closed").
    AddPaused {
        /// The job.
        job: JobId,
    },
    /// Redis holds the queue's pause as asked (`set_paused`): paused, or resumed.
    PauseSet {
        /// The request.
        request: super::Request,
        /// Paused or resumed.
        paused: bool,
    },
    /// `delete_dead` deleted this many letters.
    DeadDeleted {
        /// The request.
        request: super::Request,
        /// How many were still there.
        deleted: u64,
    },
    /// Redis refused an operator's request (or the queue was destroyed).
    RequestFailed {
        /// The request.
        request: super::Request,
        /// Why.
        error: String,
    },
    /// `destroy`: every key of the queue is gone.
    Destroyed,
    /// Another instance registered under this producer's id (its replacement) and took over
    /// its outcomes: this one reads no more events and takes no more adds.
    Superseded,
    /// The one answer to an add call ([`super::Producer::add_call`]); the job's own events
    /// (`Accepted`, `AddFailed`, `AddPaused`) come too.
    AddAnswered {
        /// The call.
        call: super::Call,
        /// Its job.
        job: JobId,
        /// What became of the add.
        answer: super::AddAnswer,
    },
    /// Redis answered something unexpected; the producer retries, nothing is lost.
    Trouble {
        /// What happened.
        message: String,
    },
}

/// A queue's counts, from `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Entries in the work stream (waiting or running).
    pub jobs: u64,
    /// Entries delivered and not yet settled.
    pub pending: u64,
    /// Delayed jobs (retries waiting for their backoff, or added with a delay).
    pub delayed: u64,
    /// Dead letters.
    pub dead: u64,
    /// This producer's events not yet read.
    pub events: u64,
    /// Live workers of the queue (registered by their upkeep, in any process).
    pub workers: u64,
    /// The oldest job waiting to be delivered (its entry id: when it was queued, or queued
    /// again by a retry or a promotion), if any.
    pub oldest_waiting: Option<EntryId>,
    /// The oldest job running (the first entry of the pending list), if any.
    pub oldest_running: Option<EntryId>,
    /// When the queue was paused (ms since the epoch; 0 if unknown), if it is.
    pub paused_at: Option<u64>,
}

impl QueueStats {
    /// The stats of a sharded queue from its shards': counts summed, the oldest waiting and
    /// running jobs the oldest of any shard, paused since the earliest pause of any shard
    /// (a pause of the queue pauses every shard).
    #[must_use]
    pub fn sum(shards: impl IntoIterator<Item = QueueStats>) -> QueueStats {
        let oldest = |a: Option<EntryId>, b: Option<EntryId>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        shards
            .into_iter()
            .fold(QueueStats::default(), |t, s| QueueStats {
                jobs: t.jobs.saturating_add(s.jobs),
                pending: t.pending.saturating_add(s.pending),
                delayed: t.delayed.saturating_add(s.delayed),
                dead: t.dead.saturating_add(s.dead),
                events: t.events.saturating_add(s.events),
                workers: t.workers.max(s.workers),
                oldest_waiting: oldest(t.oldest_waiting, s.oldest_waiting),
                oldest_running: oldest(t.oldest_running, s.oldest_running),
                paused_at: match (t.paused_at, s.paused_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
            })
    }

    /// How long the oldest waiting job has waited at `now` (zero if none).
    #[must_use]
    pub fn oldest_waiting_age(&self, now: Instant) -> Duration {
        self.oldest_waiting
            .map_or(Duration::ZERO, |e| now.saturating_duration_since(e.time()))
    }

    /// How long ago the oldest running job was queued, at `now` (zero if none).
    #[must_use]
    pub fn oldest_running_age(&self, now: Instant) -> Duration {
        self.oldest_running
            .map_or(Duration::ZERO, |e| now.saturating_duration_since(e.time()))
    }
}
