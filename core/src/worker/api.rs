//! The worker's public vocabulary: its configuration, its errors, its events.

use crate::command::OpId;
use crate::envelope::EnvelopeError;
use crate::job::{JobId, JobRecord};
use crate::naming::NameError;
use crate::retry::RetryPolicy;
use crate::time::Duration;
use crate::value::EntryId;

/// How a worker behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The key prefix (default `dl`).
    pub prefix: String,
    /// The queue to consume.
    pub queue: String,
    /// This worker's consumer name: unique among the queue's live workers.
    pub consumer: String,
    /// How many jobs may run at once (≥ 1).
    pub concurrency: u32,
    /// Attempts, backoff, stall limit.
    pub retry: RetryPolicy,
    /// How long a job may go without a heartbeat before others may reclaim it.
    pub lease: Duration,
    /// How long a read blocks in Redis once the stream is found empty; `None` polls
    /// without blocking. A read that follows a read which found entries never blocks: under
    /// load reads go out with the other commands; only an idle worker blocks.
    pub block: Option<Duration>,
    /// How often the queue's upkeep runs: promoting due delayed jobs that no live
    /// party is waiting for, and reclaiming the entries of workers that died. The queue's
    /// workers share it out (each runs it about every `reclaim_interval × workers`), so
    /// an idle queue costs Redis one script per interval whatever the number of its workers.
    /// Delayed jobs a worker or producer knows of are promoted on time, not by this.
    pub reclaim_interval: Duration,
    /// How long results and failures stay in the events stream if nobody reads them.
    pub event_retention: Duration,
    /// How long dead letters stay (default 7 days): they hold sealed jobs, and a job
    /// copied back from them would run again.
    pub dead_retention: Duration,
    /// A job created longer ago than this (its sealed `created_at_ms`, which retries
    /// keep) is dead-lettered unrun (default 7 days): it bounds how long an entry copied
    /// back into Redis (from `MONITOR`, a replica, a backup, the dead letters) can run again.
    /// It ends no job (no event, no marker change): it may be a replay of one that lives.
    pub max_job_age: Duration,
    /// The most jobs settled by one command (at most [`MAX_SETTLE_BATCH`]: the scripts pass
    /// a batch's ids to single Redis calls, and Lua unpacks at most 8,000 values).
    pub max_batch: usize,
    /// A job running longer than this fails with "timed out" (and is retried or
    /// dead-lettered like any failure); `None`: jobs may run forever, their lease extended.
    pub timeout: Option<Duration>,
    /// Settles (complete, retry, bury) count as done only once this many replicas have
    /// them (`WAIT`, see [`crate::command::Replicas`]); `None` (the default): once the
    /// primary has them. A settle a failover lost runs the job again.
    pub replicas: Option<crate::command::Replicas>,
}

/// The largest settle batch, whatever [`WorkerConfig::max_batch`] says.
pub const MAX_SETTLE_BATCH: usize = 1_000;

impl WorkerConfig {
    /// A configuration with the defaults: concurrency 1, Sockethub's single attempt, a 30 s
    /// lease, 5 s blocking reads, 24 h event retention.
    #[must_use]
    pub fn new(queue: &str, consumer: &str) -> Self {
        Self {
            prefix: "dl".into(),
            queue: queue.into(),
            consumer: consumer.into(),
            concurrency: 1,
            retry: RetryPolicy::default(),
            lease: Duration::from_secs(30),
            block: Some(Duration::from_secs(5)),
            reclaim_interval: Duration::from_secs(15),
            event_retention: Duration::from_secs(24 * 3600),
            dead_retention: Duration::from_secs(7 * 24 * 3600),
            max_job_age: Duration::from_secs(7 * 24 * 3600),
            max_batch: 256,
            timeout: None,
            replicas: None,
        }
    }

    /// With a job timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// With this concurrency.
    #[must_use]
    pub fn concurrency(mut self, concurrency: u32) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// With this retry policy.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// With this lease; the queue's upkeep (reclaims) runs every half lease.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.reclaim_interval = (lease / 2).max(Duration::from_millis(1));
        self
    }

    /// With reads that block this long (`None`: never block).
    #[must_use]
    pub fn block(mut self, block: Option<Duration>) -> Self {
        self.block = block;
        self
    }
}

/// A caller's misuse of the worker, or a configuration it cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Concurrency must be at least 1.
    #[error("concurrency must be an integer >= 1, got {0}")]
    Concurrency(u32),
    /// The lease must be at least 3 ms (heartbeats run every third of it).
    #[error("the lease must be at least 3 ms, got {0:?}")]
    Lease(Duration),
    /// The queue name cannot be used in a key.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The consumer name is empty.
    #[error("the consumer name must not be empty")]
    Consumer,
    /// `complete`/`fail` for an entry this worker is not running.
    #[error("entry {0} is not running on this worker (already settled, or never delivered)")]
    NotRunning(EntryId),
    /// A reply for an operation this worker did not send (or already got a reply for).
    #[error("no operation {0:?} is awaiting a reply")]
    UnknownOp(OpId),
    /// Events were not drained: call `poll_event` until `None` after every input.
    #[error("{0} events are waiting: drain poll_event after every input")]
    Undrained(usize),
    /// The result or reason could not be sealed.
    #[error("sealing failed: {0}")]
    Seal(#[from] EnvelopeError),
    /// A worker of a sharded queue needs a credit per shard, so that each idle shard can
    /// keep its blocking read.
    #[error(
        "a worker of {shards} shards needs a concurrency of at least {shards}, got {concurrency}"
    )]
    Shards {
        /// The concurrency asked for.
        concurrency: u32,
        /// The queue's shards.
        shards: u16,
    },
    /// No such shard.
    #[error("the queue has no shard {0}")]
    NoShard(usize),
}

/// A job for the application to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream entry: pass it to `complete` or `fail`.
    pub entry: EntryId,
    /// The opened job.
    pub job: JobRecord,
    /// How many times the entry was delivered (above 1: a previous worker stalled).
    pub deliveries: u64,
    /// The trace context the producer sealed with the job (the span that added it), if any.
    pub trace: Option<crate::trace::TraceContext>,
    /// This delivery's number at this worker (each delivery a new one): settle it with
    /// [`super::Worker::finish_run`], which refuses an answer of an earlier run of the same
    /// entry.
    pub run: u64,
}

impl Delivery {
    /// How long the job waited for its first run, at `now` (from its add): `None` for a
    /// later attempt, whose wait includes its backoff (what the wait-time metric leaves out).
    #[must_use]
    pub fn waited(&self, now: crate::time::Instant) -> Option<Duration> {
        (self.job.attempt == 1).then(|| {
            now.saturating_duration_since(crate::time::Instant::from_unix_ms(
                self.job.created_at_ms,
            ))
        })
    }
}

/// What the worker tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// Run this job, then call `complete` or `fail`.
    Job(Delivery),
    /// The entry was reclaimed by another worker (this one missed its lease); a result
    /// from this worker will be discarded.
    LeaseLost {
        /// The entry.
        entry: EntryId,
        /// The job.
        job: JobId,
    },
    /// A settlement did not apply: the entry was no longer pending here (another worker
    /// settled it after this one lost the lease).
    Discarded {
        /// The entry.
        entry: EntryId,
    },
    /// An entry was dead-lettered: unreadable, stalled too often, or out of attempts.
    DeadLettered {
        /// The entry.
        entry: EntryId,
        /// The job, when the entry named one.
        job: Option<JobId>,
        /// Why.
        reason: String,
    },
    /// Redis answered something unexpected; the worker retries, nothing is lost.
    Trouble {
        /// What happened.
        message: String,
    },
    /// The job at this entry ran past the timeout and was failed; stop its handler (a
    /// result it still produces is refused with `NotRunning`).
    TimedOut {
        /// The entry.
        entry: EntryId,
    },
    /// The job running at this entry lost it: a failover dropped writes Redis had not yet
    /// copied to its replica, the entry among them, and Redis gave its id to another job,
    /// now delivered here (a `Job` with the same entry follows). Stop the handler of the
    /// first: its answer is refused (`NotRunning`), or settles nothing; that job runs again
    /// from what the new master kept of it.
    Superseded {
        /// The entry.
        entry: EntryId,
        /// The job that ran there.
        job: JobId,
    },
    /// `hand_back` (or `shut_down`'s deadline) gave these running jobs back to the queue:
    /// stop their handlers; their answers are refused (`NotRunning`).
    HandedBack {
        /// The entries.
        entries: Vec<EntryId>,
    },
    /// `drain`: nothing runs and every settlement is confirmed; the worker is idle.
    Drained,
    /// Redis confirmed that this many jobs were settled so (this reply applied them; a
    /// resend finding its first send applied counts in neither, and is `Discarded`).
    Settled {
        /// Completed, retried or dead-lettered.
        settlement: Settlement,
        /// How many.
        count: usize,
    },
    /// The queue's upkeep, run by this worker, took over this many entries of workers that
    /// missed their lease (they are delivered as `Job`s, or dead-lettered when stalled).
    Reclaimed {
        /// How many.
        count: usize,
    },
    /// Redis told this worker that the queue was paused (`true`: it starts no job until
    /// the queue is resumed, and asks again every [`super::PAUSED_POLL_MS`]) or resumed.
    PauseSeen {
        /// Paused or resumed.
        paused: bool,
    },
}

/// How a job was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Settlement {
    /// Completed: its result went to its producer.
    Completed,
    /// Failed, retried later: the failure went to its producer.
    Retried,
    /// Failed for good (or unreadable): moved to the dead letters.
    Buried,
}

impl Settlement {
    /// A short lower-case word: `completed`, `retried`, `dead`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Retried => "retried",
            Self::Buried => "dead",
        }
    }
}
