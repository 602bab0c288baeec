//! What the caller configures and what it gets back when something fails: the
//! [`Options`] of the process-wide connection, its URL's parsing, and the adapter's
//! [`Error`]. A leaf module: the rest of the adapter uses it, it uses none of the rest.

use std::time::Duration;

/// Why the data layer could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis could not be reached, or failed a command.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// The health check did not finish in time.
    #[error("redis did not answer the health check within {0:?}")]
    HealthTimeout(Duration),
    /// The health check read back something else than it wrote.
    #[error("health check failed: {0}")]
    Health(String),
    /// The connection, a queue or a worker could not be set up (a URL, a prefix, a name).
    #[error("{0}")]
    Config(String),
    /// The queue's engine refused the job before sending it, with the core's reason (match
    /// it): [`ProducerError::Backpressure`] (too many adds await Redis' confirmation: wait
    /// for outcomes, then add again), [`ProducerError::EmptyJobId`], a name that cannot be a
    /// key, a job that could not be sealed. Nothing was queued.
    ///
    /// [`ProducerError::Backpressure`]: datalayer_core::producer::ProducerError::Backpressure
    /// [`ProducerError::EmptyJobId`]: datalayer_core::producer::ProducerError::EmptyJobId
    #[error("add refused: {0}")]
    Producer(#[from] datalayer_core::producer::ProducerError),
    /// The worker could not be set up, with the core's reason (a concurrency of 0, a lease
    /// too short, a name that cannot be a key).
    #[error(transparent)]
    Worker(#[from] datalayer_core::worker::WorkerError),
    /// The queue is paused (Sockethub's "queue closed"), or was shut down.
    #[error("queue closed")]
    QueueClosed,
    /// The queue's engine stopped (disconnected or shut down).
    #[error("the queue's driver has stopped")]
    Stopped,
    /// The payload could not be encoded as JSON.
    #[error("payload does not encode: {0}")]
    Encode(#[from] serde_json::Error),
    /// Credentials could not be saved or read (not found, mismatch, wrong secret, ...).
    #[error(transparent)]
    Credentials(#[from] datalayer_core::credentials::CredentialsError),
    /// Stored data does not decode as the requested type.
    #[error("does not decode as the requested type: {0}")]
    Decode(#[source] serde_json::Error),
    /// Redis refused the job (its error reply: out of memory, a key of the wrong type, ...).
    #[error("redis refused the add: {0}")]
    Add(String),
    /// Redis refused an operator's request (dead letters: its error reply), or the queue
    /// was destroyed.
    #[error("request refused: {0}")]
    Request(String),
    /// Redis cannot be reached, and the job never left this process: its id was generated
    /// for this add (so no other add can have queued it) and it was withdrawn; it is not
    /// queued, and adding it again cannot run it twice. An add with a caller-chosen id is
    /// never `Unavailable` (an earlier add of that id may have queued it): it is
    /// `Unconfirmed` instead.
    #[error("redis is unreachable: the job was not queued")]
    Unavailable,
    /// The job was sent and Redis did not confirm it in time: it may be queued. The queue
    /// keeps sending it until Redis answers (it is queued once); its outcome comes on
    /// [`crate::JobQueue::events`]. Adding it again with the same id is safe (adds are
    /// idempotent) and gives a handle for its outcome.
    #[error(
        "redis did not confirm job {0} in time; it may be queued: add it again with the same id"
    )]
    Unconfirmed(datalayer_core::job::JobId),
}

/// What went wrong between this process and Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// Nothing was sent: no connection could be made, or it had closed already.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The connection failed while the command was out: it may or may not have run.
    #[error("the connection failed, the outcome is unknown: {0}")]
    Lost(String),
    /// Redis answered with an error reply, or with a reply of the wrong shape.
    #[error("{0}")]
    Reply(String),
}

impl RedisError {
    /// Whether nothing was sent (so nothing ran).
    #[must_use]
    pub fn is_not_sent(&self) -> bool {
        matches!(self, RedisError::NotSent(_))
    }
}

impl From<datalayer_core::url::UrlError> for Error {
    fn from(e: datalayer_core::url::UrlError) -> Self {
        Error::Config(e.to_string())
    }
}

/// Options of the process-wide connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Key prefix (default `dl`).
    pub prefix: String,
    /// How long a command may take before its outcome is unknown (default 10 s).
    pub response_timeout: Duration,
    /// How long connecting may take (default 5 s).
    pub connect_timeout: Duration,
    /// The longest wait between reconnect attempts (default 1 s).
    pub max_reconnect_delay: Duration,
    /// For `rediss://`: the PEM certificate(s) of the authority that signed the server's
    /// certificate, instead of the system's roots (a private CA). Needs the `tls` feature.
    pub tls_root_cert: Option<Vec<u8>>,
    /// How idle readers wait on one server (default [`IdleReads::Auto`]); a cluster
    /// always uses doorbells.
    pub idle_reads: IdleReads,
}

/// How the idle readers of a process (workers with nothing to run, queues with no results
/// to read) wait for work on one Redis server. Processes of either kind share queues:
/// every command that may add what an idle reader waits for rings its queue's doorbell
/// whatever the kind (an `SPUBLISH` in the same pipeline, which costs Redis next to
/// nothing when nobody listens: within noise in BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IdleReads {
    /// Merged reads for the first idle readers, doorbells for the rest: each merged command
    /// serves at most [`datalayer_core::mux::MERGE_LIMIT`] (16) reads, and an idle read that
    /// finds it full waits on its doorbell. A process with a few queues gets what
    /// [`IdleReads::Merged`] gives, one with hundreds what [`IdleReads::Doorbells`] gives.
    #[default]
    Auto,
    /// The idle readers block in Redis in one merged `XREADGROUP` (workers) and one merged
    /// `XREAD` (results), re-sent whenever one of them is answered or joins. Redis hands
    /// a new entry straight to the blocked read: the fewest round trips per job while a
    /// process has a few queues. But each re-send names every idle queue of the process,
    /// so with hundreds of queues every event costs Redis (and the process) in proportion
    /// (BENCHMARKS.md, the trickle across 1,000 queues).
    Merged,
    /// Each idle reader subscribes to its queue's doorbell (a pub/sub channel), reads
    /// without `BLOCK`, and reads again when the bell rings, as on a cluster: an event
    /// costs one read of its own queue however many queues the process has, and a parked
    /// reader costs Redis nothing (it reads anyway after 30 s, or at its worker's next
    /// upkeep). One round trip more per job than a blocked read: the choice for a process
    /// with many queues, each at a trickle (Sockethub's persistent platforms).
    Doorbells,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            prefix: "dl".into(),
            response_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(1),
            tls_root_cert: None,
            idle_reads: IdleReads::default(),
        }
    }
}

impl Options {
    /// How idle readers wait on one server ([`IdleReads`]).
    #[must_use]
    pub fn idle_reads(mut self, idle_reads: IdleReads) -> Self {
        self.idle_reads = idle_reads;
        self
    }

    /// With this key prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// With this response timeout.
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// With this connect timeout.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// For `rediss://`: trust the server certificates this PEM authority signed.
    #[must_use]
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
        self
    }

    /// With this longest wait between reconnect attempts.
    #[must_use]
    pub fn max_reconnect_delay(mut self, delay: Duration) -> Self {
        self.max_reconnect_delay = delay;
        self
    }
}
