//! JobQueue: the producer machine driven over the shared connection by one task.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use datalayer_core::command::Replicas;

use datalayer_core::envelope::{Compression, SealOptions, Sealer};
use datalayer_core::job::JobId;
use datalayer_core::keys::{KeyId, Keyring};
use datalayer_core::producer::{
    AddAnswer, AddJob, Ask, Call, DeadLetter, DeadPage, DelayedWithdrawal, EnvelopeSource,
    EventsCursor, JobEnd, JobPlace, PeekedEvent, Producer, ProducerConfig, ProducerError,
    ProducerEvent, QueueStats, Request, RetryAll, Revival,
};
use datalayer_core::trace::TraceContext;
use datalayer_core::value::EntryId;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::blocking::Reads;
use crate::clock::now;
use crate::driver::{Engine, Side, drive};
use crate::layer::DataLayer;
use crate::options::Error;
use crate::pipelines::Pipelines;
use crate::random::OsRandom;

/// What `add` does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Wait up to this long for Redis to take the job, then fail with `Unavailable` (the job
    /// never left this process and was withdrawn) or `Unconfirmed` (it was sent, and may be
    /// queued: the queue keeps sending it until Redis answers).
    Wait(Duration),
    /// Fail at once while the last attempt to reach Redis failed (a `PING` after a backoff
    /// of at most 1 s finds out when it is back): `Unavailable` for a job that was never
    /// sent, `Unconfirmed` for one that was.
    FailFast,
}

/// Options of a queue.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QueueOptions {
    /// Where the events cursor starts (default: every event still in this producer's
    /// stream, so a replacement opened with its predecessor's
    /// [`QueueOptions::producer_id`] receives what the predecessor missed).
    pub events_after: Option<datalayer_core::value::EntryId>,
    /// What `add` does while Redis cannot be reached (default: wait up to 10 s).
    pub when_unreachable: Unreachable,
    /// Whether jobs are compressed before they are sealed (default: never). Compression
    /// makes an envelope's length depend on its content: a job that holds a secret beside
    /// text an attacker chooses leaks the secret to anyone who sees lengths (any Redis
    /// reader). Opt in only for payloads that never mix the two.
    pub compression: Compression,
    /// The most adds awaiting Redis' confirmation at once (default 100,000); an add beyond
    /// fails at once with [`ProducerError::Backpressure`] in [`Error::Producer`].
    pub max_pending: usize,
    /// This producer's id among the queue's producers (default: 6 random letters and digits,
    /// new for each `JobQueue`). Any number of producers, in any number of processes, share
    /// a queue; each receives the outcomes of its own jobs only, from its own events stream.
    /// Give the id of a producer that died to the one that replaces it, and it takes over
    /// the outcomes its predecessor was owed (within [`QueueOptions::producer_ttl`]). A
    /// second live instance under an id takes it over: the first learns so at its next
    /// acknowledgement of events (or registration refresh), after which its adds fail with
    /// `ProducerError::Superseded` and its waiting handles end with [`Error::Stopped`].
    pub producer_id: Option<String>,
    /// How long this producer may be away (its process dead, or Redis unreachable) before
    /// the queue declares it gone for good (default 1 h): then its unread outcomes and the
    /// id markers of its ended jobs are swept, and outcomes of its jobs that end later are
    /// dropped. It refreshes its registration every quarter of this.
    pub producer_ttl: Duration,
    /// Whether this queue reads its jobs' outcomes (default true). One that does not (a
    /// fire-and-forget producer, an operator's tool) neither registers as a producer nor
    /// reads events: its jobs' markers go when they end, and their handles never resolve.
    pub read_results: bool,
    /// An add counts as done (its `add` returns, its handle waits for the outcome) only
    /// once this many replicas acknowledged it within the timeout (`WAIT`, right after it
    /// on the same connection); fewer: its outcome is unknown and it is sent again (a
    /// resend is checked: it never queues the job twice). Default `None`: once the primary
    /// has it, which a failover after the master died can still lose. The producer's other
    /// writes whose loss would go unseen wait for the replicas too: its registration, its
    /// acknowledgements of results, a pause or resume, a destroy, and the operator's
    /// revivals, deletions, promotions and withdrawals. See
    /// [`datalayer_core::command::Replicas`].
    pub replicated: Option<(u32, Duration)>,
    /// How long read outcomes wait before their acknowledgement goes to Redis (default
    /// 20 ms): the trim of this producer's events stream and the forgetting of the ended
    /// jobs' id markers, one script call. Outcomes that arrive one at a time (workers at
    /// concurrency 1, a trickle) then share one instead of costing Redis one each. It goes
    /// at once for the end of a job whose id the caller chose (so that the id is free for
    /// an add anywhere as soon as its end is seen) and for a dead letter (so that it can
    /// be revived at once), when 1,024 wait, on [`JobQueue::disconnect`] or when the
    /// `JobQueue` is dropped, before `stats` and the operator's requests, and before an
    /// add of an id whose job ended here. Meanwhile the outcomes stay in Redis (another
    /// producer's `find_job` may see such a job `ended`); `Duration::ZERO` acknowledges
    /// each read at once.
    pub ack_delay: Duration,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            events_after: None,
            when_unreachable: Unreachable::Wait(Duration::from_secs(10)),
            compression: Compression::Never,
            max_pending: ProducerConfig::new("q").max_pending,
            producer_id: None,
            producer_ttl: Duration::from_secs(3600),
            read_results: true,
            replicated: None,
            ack_delay: ProducerConfig::new("q").ack_delay,
        }
    }
}

impl QueueOptions {
    /// With this behaviour while Redis cannot be reached.
    #[must_use]
    pub fn when_unreachable(mut self, when: Unreachable) -> Self {
        self.when_unreachable = when;
        self
    }

    /// With at most this many adds awaiting Redis' confirmation (at least 1).
    #[must_use]
    pub fn max_pending(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// With this producer id (see [`QueueOptions::producer_id`]): 1 to 64 ASCII letters,
    /// digits, `-`, `_` or `.`, not `w`; `queue` refuses others.
    #[must_use]
    pub fn producer_id(mut self, id: &str) -> Self {
        self.producer_id = Some(id.to_owned());
        self
    }

    /// With this producer ttl (see [`QueueOptions::producer_ttl`]; at least 4 ms).
    #[must_use]
    pub fn producer_ttl(mut self, ttl: Duration) -> Self {
        self.producer_ttl = ttl.max(Duration::from_millis(4));
        self
    }

    /// Reading its jobs' outcomes or not (see [`QueueOptions::read_results`]).
    #[must_use]
    pub fn read_results(mut self, read: bool) -> Self {
        self.read_results = read;
        self
    }

    /// Adds done only once `replicas` replicas have them, waiting at most `timeout` for
    /// them each time (see [`QueueOptions::replicated`]; keep it short: `WAIT` holds the
    /// node's command connection meanwhile).
    #[must_use]
    pub fn replicated(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicated = Some((replicas, timeout));
        self
    }

    /// With this delay of acknowledgements (see [`QueueOptions::ack_delay`]).
    #[must_use]
    pub fn ack_delay(mut self, delay: Duration) -> Self {
        self.ack_delay = delay;
        self
    }

    /// With this compression of jobs (see [`QueueOptions::compression`] for the risk).
    #[must_use]
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }
}

/// The failure reason a handle reports for a delayed job withdrawn before it ran.
const WITHDRAWN: &str = "withdrawn before it ran";

/// How a job ended, as its handle reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler's result (JSON).
    Completed(Vec<u8>),
    /// The job failed for good (after its last attempt); the reason.
    Failed(String),
}

impl Outcome {
    /// The result decoded from JSON, or the failure reason.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        match self {
            Outcome::Completed(r) => serde_json::from_slice(r).map_err(|e| e.to_string()),
            Outcome::Failed(reason) => Err(reason.clone()),
        }
    }
}

/// A job's lifecycle, as the queue's event stream reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueEvent {
    /// The job completed with this result (JSON).
    Completed {
        /// The job.
        job: JobId,
        /// The result.
        result: Vec<u8>,
    },
    /// An attempt failed; the job will run again.
    Failed {
        /// The job.
        job: JobId,
        /// The reason.
        reason: String,
        /// The attempt that failed.
        attempt: u32,
    },
    /// The job failed for good and sits in the dead letters.
    DeadLettered {
        /// The job.
        job: JobId,
        /// The reason.
        reason: String,
    },
}

/// A job that was added: await its result.
#[derive(Debug)]
pub struct JobHandle {
    /// The job's id.
    pub id: JobId,
    rx: oneshot::Receiver<Outcome>,
}

impl JobHandle {
    /// Waits for the job to end: its result, or its failure reason.
    pub async fn result(self) -> Result<Outcome, Error> {
        self.rx.await.map_err(|_| Error::Stopped)
    }
}

type AddReply = oneshot::Sender<Result<JobHandle, Error>>;

/// One `add` call: its number within the queue (a job id can be added twice at once), the
/// job, and where to answer.
type AddCall = (u64, AddJob, AddReply);

enum Msg {
    Stats(oneshot::Sender<QueueStats>),
    Ask(Ask, oneshot::Sender<ProducerEvent>),
    Add(AddCall),
    AddMany(Vec<AddCall>),
    Close {
        destroy: bool,
        done: oneshot::Sender<()>,
    },
}

/// Samples `stats` into the gauges of queue `name` every `interval` (see
/// [`JobQueue::sample_metrics`]), until they report the queue closed.
pub(crate) fn sample_metrics<F, Fut>(
    name: Arc<str>,
    interval: Duration,
    stats: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<QueueStats, Error>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match tokio::time::timeout(interval.max(Duration::from_secs(1)), stats()).await {
                Ok(Ok(stats)) => crate::telemetry::queue_state(&name, &stats, now()),
                Ok(Err(Error::Stopped | Error::QueueClosed)) => return,
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics sample failed"),
                Err(_) => tracing::debug!("metrics sample timed out"),
            }
        }
    })
}

/// A queue (Sockethub's JobQueue): adds sealed jobs and reports their outcomes. Cheap: it is a
/// task on the process-wide connection.
#[derive(Debug, Clone)]
pub struct JobQueue {
    tx: mpsc::Sender<Msg>,
    /// Numbers the add calls.
    calls: Arc<AtomicU64>,
    events: broadcast::Sender<QueueEvent>,
    producer_id: Arc<str>,
    /// The queue's name.
    name: Arc<str>,
}

impl JobQueue {
    /// A queue's task: `events` is where its outcomes go (the shards of a sharded queue
    /// share one sender), `None` for a channel of its own.
    pub(crate) fn start(
        layer: DataLayer,
        name: &str,
        keys: Keyring,
        options: QueueOptions,
        events: Option<broadcast::Sender<QueueEvent>>,
    ) -> Result<Self, Error> {
        // This instance's id and token: a later instance under the same producer id (a
        // replacement, `QueueOptions::producer_id`) takes it over.
        let mut cfg = ProducerConfig::new(name)
            .fresh_identity(&mut OsRandom)
            .block(Some(layer.idle_block()));
        cfg.prefix = layer.options.prefix.clone();
        cfg.max_pending = options.max_pending;
        cfg.replicas = options
            .replicated
            .map(|(count, timeout)| Replicas { count, timeout });
        if let Some(id) = &options.producer_id {
            cfg.producer.clone_from(id);
        }
        cfg.producer_ttl = options.producer_ttl;
        cfg.read_events = options.read_results;
        cfg.fail_fast = options.when_unreachable == Unreachable::FailFast;
        cfg.ack_delay = options.ack_delay;
        let producer_id: Arc<str> = cfg.producer.as_str().into();
        if let Some(after) = options.events_after {
            cfg.events_after = after;
        }
        let sealer =
            Sealer::new(keys).with_options(SealOptions::default().compression(options.compression));
        let producer = Producer::new(cfg, sealer, now(), &mut OsRandom)?;
        let (tx, rx) = mpsc::channel(1024);
        let events = events.unwrap_or_else(|| broadcast::channel(4096).0);
        // Counters carry the logical queue's name: a shard counts under its queue's.
        let label: Arc<str> = datalayer_core::naming::parse_shard_tag(name)
            .map_or(name, |(queue, _, _)| queue)
            .into();
        let engine = Engine {
            pipes: Pipelines::new(layer.backend.clone()),
            reads: Reads::new(layer.blocker("events")),
        };
        let driver = Driver {
            label,
            producer,
            rx,
            events: events.clone(),
            waiters: HashMap::new(),
            #[cfg(feature = "metrics")]
            added_at: HashMap::new(),
            calls: HashMap::new(),
            accept_wait: match options.when_unreachable {
                Unreachable::Wait(d) => d,
                // Answered at once while Redis is known to be away.
                Unreachable::FailFast => Duration::from_secs(3600),
            },
            closing: None,
            stats: Vec::new(),
            requests: HashMap::new(),
        };
        let span = tracing::info_span!("queue", name);
        tokio::spawn(tracing::Instrument::instrument(drive(engine, driver), span));
        Ok(Self {
            tx,
            calls: Arc::new(AtomicU64::new(0)),
            events,
            producer_id,
            name: Arc::from(name),
        })
    }

    /// The queue's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This producer's id (see [`QueueOptions::producer_id`]): give it to a replacement
    /// to hand it the outcomes this one is owed.
    #[must_use]
    pub fn producer_id(&self) -> &str {
        &self.producer_id
    }

    /// Adds a job for `session_id` with a JSON payload; returns its handle.
    pub async fn add(
        &self,
        session_id: &str,
        payload: &impl Serialize,
    ) -> Result<JobHandle, Error> {
        self.add_job(json_job(session_id, payload)?).await
    }

    /// Adds a job described in full (id for idempotency, title, delay). Returns once Redis
    /// has the job; see [`Unreachable`] for what happens while it cannot be reached.
    pub async fn add_job(&self, mut job: AddJob) -> Result<JobHandle, Error> {
        let id = Self::assign_id(&mut job);
        let span = crate::traces::send(self.name(), Some(&id), 1);
        if job.trace.is_none() {
            job.trace = crate::traces::context_of(&span);
        }
        let sent = async move {
            let call = self.calls.fetch_add(1, Ordering::Relaxed);
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Msg::Add((call, job, reply)))
                .await
                .map_err(|_| Error::Stopped)?;
            rx.await.map_err(|_| Error::Stopped)?
        };
        tracing::Instrument::instrument(sent, span).await
    }

    /// Adds several jobs in one message to the queue's task: they are sealed and sent in
    /// the same pipelines as other adds, without a round of task wake-ups per job. Returns
    /// once Redis has every one of them, with each job's own outcome, in order: a job can
    /// fail (a full queue, Redis unreachable past the wait) while the others are queued.
    /// `Err` only if the queue has stopped.
    pub async fn add_many(
        &self,
        jobs: impl IntoIterator<Item = AddJob>,
    ) -> Result<Vec<Result<JobHandle, Error>>, Error> {
        let jobs: Vec<AddJob> = jobs.into_iter().collect();
        let span = crate::traces::send(self.name(), None, jobs.len());
        let trace = crate::traces::context_of(&span);
        let mut batch = Vec::new();
        let mut waits = Vec::new();
        for mut job in jobs {
            if job.trace.is_none() {
                job.trace.clone_from(&trace);
            }
            Self::assign_id(&mut job);
            let call = self.calls.fetch_add(1, Ordering::Relaxed);
            let (reply, rx) = oneshot::channel();
            batch.push((call, job, reply));
            waits.push(rx);
        }
        self.tx
            .send(Msg::AddMany(batch))
            .await
            .map_err(|_| Error::Stopped)?;
        let accepted = async move {
            let mut out = Vec::with_capacity(waits.len());
            for rx in waits {
                out.push(rx.await.unwrap_or(Err(Error::Stopped)));
            }
            out
        };
        Ok(tracing::Instrument::instrument(accepted, span).await)
    }

    /// The id is chosen here ([`AddJob::assign_id`]), so that a caller who gives up knows
    /// which job to add again.
    pub(crate) fn assign_id(job: &mut AddJob) -> JobId {
        job.assign_id(now(), &mut OsRandom)
    }

    /// Where the queue's events go (the other shards of a sharded queue send there too).
    pub(crate) fn event_sender(&self) -> broadcast::Sender<QueueEvent> {
        self.events.clone()
    }

    /// The queue's lifecycle events (a receiver that falls behind misses events; handles
    /// never miss their job's outcome). A job's outcome can come here before the `add` of
    /// that job has returned to its caller (a fast worker): telling this producer's jobs
    /// from others' by the ids `add` returned must wait for those adds.
    #[must_use]
    pub fn events(&self) -> broadcast::Receiver<QueueEvent> {
        self.events.subscribe()
    }

    /// The queue's counts, from one script of O(log n) lookups (plus, after deletions from
    /// the work stream, a count of at most 10,000 waiting entries): jobs waiting and running,
    /// delayed, dead letters, this producer's unread events, live workers, and the oldest
    /// waiting and running jobs (ages: [`QueueStats::oldest_waiting_age`]). Waits for Redis.
    pub async fn stats(&self) -> Result<QueueStats, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Stats(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Samples the queue's state into gauges every `interval` (feature `metrics`:
    /// `datalayer_queue_jobs`, `_running`, `_delayed`, `_dead`, `_workers`,
    /// `_oldest_waiting_seconds`, labelled with the queue), until the queue is closed or
    /// the task is aborted. Each tick is one [`JobQueue::stats`]: one script whose cost does
    /// not grow with the queue (tested with a million waiting entries), one tick at a time.
    /// Without the feature the ticks still run and set nothing: do not start it then.
    pub fn sample_metrics(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let queue = self.clone();
        sample_metrics(self.name.clone(), interval, move || {
            let queue = queue.clone();
            async move { queue.stats().await }
        })
    }

    async fn ask(&self, op: Ask) -> Result<ProducerEvent, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Ask(op, tx))
            .await
            .map_err(|_| Error::Stopped)?;
        match rx.await.map_err(|_| Error::Stopped)? {
            ProducerEvent::RequestFailed { error, .. } => Err(Error::Request(error)),
            ev => Ok(ev),
        }
    }

    /// A page of at most `count` dead letters, oldest first, after entry `after` (`None`:
    /// from the oldest; then pass the page's `next`), each opened with this queue's key:
    /// the job as last delivered, its last attempt and the reason it failed. Waits for Redis.
    pub async fn dead_letters(
        &self,
        after: Option<EntryId>,
        count: u32,
    ) -> Result<DeadPage, Error> {
        match self
            .ask(Ask::ReadDead(after.unwrap_or(EntryId::ZERO), count))
            .await?
        {
            ProducerEvent::DeadPage { page, .. } => Ok(page),
            _ => Err(Error::Request("unexpected answer".into())),
        }
    }

    /// Sends dead letters (from [`JobQueue::dead_letters`]) back to the queue, each as its
    /// job's first attempt, in one atomic step; each letter's fate: `Queued` (and the letter
    /// is gone), `AlreadyQueued` (its job id lives again; the letter stays), `Gone` (revived
    /// or deleted before: retrying twice is safe), `Unreadable` (delete it). The revived
    /// jobs' outcomes arrive on [`JobQueue::events`].
    pub async fn retry_dead(
        &self,
        letters: &[DeadLetter],
    ) -> Result<Vec<(EntryId, Revival)>, Error> {
        match self.ask(Ask::Revive(letters.to_vec())).await? {
            ProducerEvent::Revived { results, .. } => Ok(results),
            _ => Err(Error::Request("unexpected answer".into())),
        }
    }

    /// Retries every dead letter buried at least `older_than` ago (`None`: all), a page of
    /// 256 at a time; how many went back to the queue. Letters buried after the call began
    /// are left (a job that dies again is not chased). Interrupted, it can be run again.
    pub async fn retry_all_dead(&self, older_than: Option<Duration>) -> Result<u64, Error> {
        let mut sweep = RetryAll::new((now() - older_than.unwrap_or_default()).unix_ms());
        while let Some(after) = sweep.after() {
            let letters = sweep.page(self.dead_letters(Some(after), 256).await?);
            if !letters.is_empty() {
                sweep.revived(&self.retry_dead(&letters).await?);
            }
        }
        Ok(sweep.queued())
    }

    /// Where job `id` is: waiting (at which entry), running (on which consumer, delivered
    /// how often), delayed (until when), dead (its newest letter and last attempt), ended
    /// (its marker waits for its producer to read its end), or unknown. One script whose
    /// searches of the work stream, the pending list and the dead letters go at most 10,000
    /// entries deep each: an operator's question, not for a hot path.
    pub async fn find_job(&self, id: &JobId) -> Result<JobPlace, Error> {
        match self.ask(Ask::FindJob(id.clone(), 10_000)).await? {
            ProducerEvent::JobFound { place, .. } => Ok(place),
            _ => Err(Error::Request("unexpected answer".into())),
        }
    }

    /// The queue's live workers, in any process: each consumer name with the time (ms since
    /// the epoch) by which it promised to run its next upkeep (a worker past it is gone).
    pub async fn workers(&self) -> Result<Vec<(String, u64)>, Error> {
        match self.ask(Ask::Workers).await? {
            ProducerEvent::Workers { workers, .. } => Ok(workers),
            _ => Err(Error::Request("unexpected answer".into())),
        }
    }

    /// The queue's outcomes as they are written, for an operator's tail: up to `count`
    /// events of every registered producer (in any process) after `cursor`, which moves
    /// past them. Nothing is acknowledged: each producer still reads its own. Results are
    /// never opened (their length only); a failure's reason is, with this queue's key.
    pub async fn peek_events(
        &self,
        cursor: &mut EventsCursor,
        count: u32,
    ) -> Result<Vec<PeekedEvent>, Error> {
        match self.ask(Ask::PeekEvents(cursor.clone(), count)).await? {
            ProducerEvent::EventsPeeked { events, .. } => {
                cursor.advance(&events);
                Ok(events)
            }
            _ => Err(Error::Request("unexpected answer".into())),
        }
    }

    /// The queue's envelopes (waiting and running jobs, delayed jobs, dead letters' jobs and
    /// reasons) counted by the key id that sealed them, `None` for bytes that are not an
    /// envelope: rotation progress (a retired secret can be removed from the ring once no
    /// envelope names its id; results and failures are read at once by their producers, and
    /// credentials are per session). Reads every envelope, a page of 1,000 per script: an
    /// operator's question, O(queue length), never for a hot path. Needs no key.
    pub async fn key_usage(&self) -> Result<BTreeMap<(EnvelopeSource, Option<KeyId>), u64>, Error> {
        let mut out = BTreeMap::new();
        for source in EnvelopeSource::ALL {
            let (mut after, mut offset) = (EntryId::ZERO, 0);
            loop {
                let page = match self
                    .ask(Ask::KeyUsage(source, after, offset, 1_000))
                    .await?
                {
                    ProducerEvent::KeyUsage { page, .. } => page,
                    _ => return Err(Error::Request("unexpected answer".into())),
                };
                for (key, n) in page.counts {
                    *out.entry((source, key)).or_insert(0) += n;
                }
                match (page.next_after, page.next_offset) {
                    (Some(a), _) => after = a,
                    (_, Some(o)) => offset = o,
                    (None, None) => break,
                }
            }
        }
        Ok(out)
    }

    /// Runs delayed job `id` now instead of at its due time; whether it was delayed.
    pub async fn run_now(&self, id: &JobId) -> Result<bool, Error> {
        match self.ask(Ask::Promote(id.clone())).await? {
            ProducerEvent::Promoted { entry, .. } => Ok(entry.is_some()),
            _ => Err(Error::Request("unexpected answer".into())),
        }
    }

    /// Withdraws delayed job `id`, which this queue added: it will not run, and its handle
    /// ends with `Outcome::Failed("withdrawn before it ran")`. Another producer's delayed job
    /// is `NotOurs`; a job not delayed (running, ended, unknown) `NotDelayed`; one whose add
    /// still awaits Redis here `AddOutstanding` (ask again once it is answered).
    pub async fn cancel_delayed(&self, id: &JobId) -> Result<DelayedWithdrawal, Error> {
        match self.ask(Ask::WithdrawDelayed(id.clone())).await? {
            ProducerEvent::DelayedWithdrawn { result, .. } => Ok(result),
            _ => Err(Error::Request("unexpected answer".into())),
        }
    }

    /// Deletes dead letters; how many were still there.
    pub async fn delete_dead(&self, entries: &[EntryId]) -> Result<u64, Error> {
        match self.ask(Ask::DeleteDead(entries.to_vec())).await? {
            ProducerEvent::DeadDeleted { deleted, .. } => Ok(deleted),
            _ => Err(Error::Request("unexpected answer".into())),
        }
    }

    /// Pauses the queue, in Redis, for every producer and worker of it in every process;
    /// returns once Redis holds the pause. Then adds fail with [`Error::QueueClosed`]
    /// ("queue closed"), whichever producer makes them, and no worker starts a job: running
    /// jobs finish, waiting and delayed ones wait (a worker that read jobs as the pause
    /// landed hands them back unstarted; they run after the resume). A producer elsewhere
    /// learns of the pause at its next add (an add it sent unchecked just before is queued
    /// and waits like the others); idle workers within a second or at their next wake-up.
    pub async fn pause(&self) -> Result<(), Error> {
        self.set_paused(true).await
    }

    /// Resumes the queue (paused by [`JobQueue::pause`], here or in any process): adds are
    /// taken, and workers start jobs again within about a second (jobs handed back during
    /// the pause, at the queue's next upkeep). Returns once Redis holds it.
    pub async fn resume(&self) -> Result<(), Error> {
        self.set_paused(false).await
    }

    /// One read of the queue's outcome log (what `datalayer events tail` shows): the
    /// outcomes written after `after` (`None`: since the log opened), at most `count`, and
    /// the entry to pass as the next `after`. The first read opens the log; while someone
    /// reads it at least every `keep`, every settle, in every process, appends its outcome
    /// (job id, kind, attempt, producer: nothing sealed, no result or reason); it expires
    /// `keep` after the last read, and the settles stop writing. Costs nothing while nobody
    /// tails (one `EXISTS` per settle batch).
    pub async fn tail_outcomes(
        &self,
        after: Option<EntryId>,
        count: u32,
        keep: Duration,
    ) -> Result<(Vec<PeekedEvent>, Option<EntryId>), Error> {
        let ask = Ask::TailLog(after.unwrap_or(EntryId::ZERO), count, keep);
        match self.ask(ask).await? {
            ProducerEvent::LogPage { events, last, .. } => Ok((events, last.or(after))),
            _ => Err(Error::Request("unexpected answer".into())),
        }
    }

    async fn set_paused(&self, paused: bool) -> Result<(), Error> {
        match self.ask(Ask::SetPaused(paused)).await? {
            ProducerEvent::PauseSet { .. } => Ok(()),
            _ => Err(Error::Request("unexpected answer".into())),
        }
    }

    /// Stops this instance and leaves the queue's data in Redis for a replacement (which
    /// takes over this producer's outcomes when opened with its [`JobQueue::producer_id`]).
    pub async fn disconnect(&self) {
        self.close(false).await;
    }

    /// Stops this instance and deletes every key of the queue.
    pub async fn shutdown(&self) {
        self.close(true).await;
    }

    async fn close(&self, destroy: bool) {
        let (done, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Close { destroy, done }).await.is_ok();
        if sent
            && tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .is_err()
        {
            tracing::warn!(destroy, "the queue did not close within 30 s (Redis away?)");
        }
    }
}

/// A job for `session_id` with `payload` encoded as JSON (what `add` adds).
pub(crate) fn json_job(session_id: &str, payload: &impl Serialize) -> Result<AddJob, Error> {
    Ok(AddJob {
        session_id: session_id.to_owned(),
        payload: serde_json::to_vec(payload)?,
        ..AddJob::default()
    })
}

struct Driver {
    /// The metrics' queue label: the queue's name (a shard's: its queue's).
    label: Arc<str>,
    producer: Producer,
    rx: mpsc::Receiver<Msg>,
    events: broadcast::Sender<QueueEvent>,
    /// Handles awaiting each job's outcome (a job added twice has two).
    waiters: HashMap<JobId, Vec<oneshot::Sender<Outcome>>>,
    /// The add calls the engine has not answered yet, by number: where to answer.
    calls: HashMap<u64, AddReply>,
    /// How long an add waits for Redis to take it ([`Unreachable`]).
    accept_wait: Duration,
    /// `close` was called: (destroy still to be confirmed, who to tell when done).
    closing: Option<(bool, oneshot::Sender<()>)>,
    /// Callers of `stats`, answered by the next `Stats` event.
    stats: Vec<oneshot::Sender<QueueStats>>,
    /// Callers of the dead-letter operations, by request.
    requests: HashMap<Request, oneshot::Sender<ProducerEvent>>,
    /// When each awaited job was first added here (the end-to-end histogram).
    #[cfg(feature = "metrics")]
    added_at: HashMap<JobId, std::time::Instant>,
}

impl Side for Driver {
    type M = Producer;
    type Input = Msg;

    fn machine(&mut self) -> &mut Producer {
        &mut self.producer
    }

    fn input(&mut self) -> impl Future<Output = Option<Msg>> + Send {
        self.rx.recv()
    }

    fn more(&mut self) -> impl Future<Output = Vec<Msg>> + Send {
        // Whatever else is waiting: it goes out in the same pipeline.
        let more = std::iter::from_fn(|| self.rx.try_recv().ok()).collect();
        std::future::ready(more)
    }

    fn on_input(&mut self, msg: Msg, engine: &mut Engine) {
        self.handle(msg, engine);
    }

    fn on_events(&mut self) {
        self.route_events();
    }

    fn gone(&mut self, engine: &mut Engine) -> bool {
        // A close nobody waits for: what waits to be sent (the acknowledgement of read
        // outcomes, adds) goes, then the task ends.
        let (done, _) = oneshot::channel();
        self.handle(
            Msg::Close {
                destroy: false,
                done,
            },
            engine,
        );
        false
    }

    fn done(&self, engine: &Engine) -> bool {
        matches!(self.closing, Some((false, _))) && engine.pipes.is_empty()
    }

    fn finish(&mut self) {
        if let Some((_, done)) = self.closing.take() {
            let _ = done.send(());
        }
    }
}

impl Driver {
    /// How long ago job `id` was first added here, forgotten (with the metrics feature).
    fn since_added(&mut self, id: &JobId) -> Option<Duration> {
        #[cfg(feature = "metrics")]
        return self.added_at.remove(id).map(|at| at.elapsed());
        #[cfg(not(feature = "metrics"))]
        {
            let _ = id;
            None
        }
    }

    /// Job `id` ended (`kind`: completed, dead, withdrawn): its handles get `outcome`.
    fn resolve(&mut self, id: &JobId, outcome: &Outcome, kind: &'static str) {
        let since = self.since_added(id);
        crate::telemetry::ended(&self.label, kind, since);
        for w in self.waiters.remove(id).unwrap_or_default() {
            let _ = w.send(outcome.clone());
        }
    }

    /// One add call, handed to the engine: answered (maybe at once) by an `AddAnswered`.
    fn add(&mut self, call: u64, job: AddJob, reply: AddReply) {
        let now = now();
        // The clock is in whole ms (rounded down): one more, so that the call never gives
        // up before its wait has passed.
        let deadline = now + self.accept_wait + Duration::from_millis(1);
        self.calls.insert(call, reply);
        let id = self.producer.add_call(now, Call(call), job, deadline);
        #[cfg(feature = "metrics")]
        self.added_at
            .entry(id)
            .or_insert_with(std::time::Instant::now);
        #[cfg(not(feature = "metrics"))]
        drop(id);
        // Drain after every input, as the machine requires (an `add_many` is many).
        self.route_events();
    }

    /// The engine's one answer to add call `call` of `job`.
    fn answered(&mut self, call: Call, job: JobId, answer: AddAnswer) {
        let Some(reply) = self.calls.remove(&call.0) else {
            return;
        };
        #[cfg(feature = "metrics")]
        if answer != AddAnswer::Taken && !self.waiters.contains_key(&job) {
            // No handle awaits the job here: nothing to time.
            self.added_at.remove(&job);
        }
        let (tx, rx) = oneshot::channel();
        let result = match answer {
            AddAnswer::Taken => {
                self.waiters.entry(job.clone()).or_default().push(tx);
                Ok(JobHandle { id: job, rx })
            }
            AddAnswer::Ended(end) => {
                let _ = tx.send(match end {
                    JobEnd::Completed(result) => Outcome::Completed(result),
                    JobEnd::Dead(reason) => Outcome::Failed(reason),
                    JobEnd::Withdrawn => Outcome::Failed(WITHDRAWN.into()),
                });
                Ok(JobHandle { id: job, rx })
            }
            AddAnswer::Unavailable => Err(Error::Unavailable),
            AddAnswer::Unconfirmed => Err(Error::Unconfirmed(job)),
            AddAnswer::Paused => Err(Error::QueueClosed),
            AddAnswer::Failed(error) => {
                crate::telemetry::add_error(&self.label);
                Err(Error::Add(error))
            }
            AddAnswer::Refused(e) => Err(refused(e)),
            other => Err(Error::Add(format!("{other:?}"))),
        };
        let _ = reply.send(result);
    }

    fn handle(&mut self, msg: Msg, engine: &mut Engine) {
        match msg {
            Msg::AddMany(calls) => {
                for call in calls {
                    self.handle(Msg::Add(call), engine);
                }
            }
            Msg::Add((call, job, reply)) => self.add(call, job, reply),
            Msg::Ask(op, reply) => {
                let request = self.producer.ask(now(), op);
                self.requests.insert(request, reply);
            }
            Msg::Stats(reply) => {
                self.producer.request_stats();
                self.stats.push(reply);
            }
            Msg::Close { destroy, done } => {
                if destroy {
                    self.producer.destroy();
                } else {
                    self.producer.close();
                }
                self.closing = Some((destroy, done));
                engine.reads.cancel();
            }
        }
    }

    fn route_events(&mut self) {
        while let Some(ev) = self.producer.poll_event() {
            let event = match ev {
                ProducerEvent::Accepted { .. } => {
                    crate::telemetry::added(&self.label);
                    continue;
                }
                ProducerEvent::AddAnswered { call, job, answer } => {
                    self.answered(call, job, answer);
                    continue;
                }
                ev @ (ProducerEvent::Completed { .. }
                | ProducerEvent::Failed { .. }
                | ProducerEvent::DeadLettered { .. }) => match self.outcome(ev) {
                    Some(event) => event,
                    None => continue,
                },

                ProducerEvent::Destroyed => {
                    if let Some((true, _)) = &self.closing {
                        self.closing = self.closing.take().map(|(_, done)| (false, done));
                    }
                    continue;
                }
                ProducerEvent::DelayedWithdrawn {
                    request,
                    ref job,
                    result: DelayedWithdrawal::Withdrawn,
                } => {
                    // Its final outcome: the job will not run.
                    let job = job.clone();
                    self.resolve(&job, &Outcome::Failed(WITHDRAWN.into()), "withdrawn");
                    self.answer(request, ev);
                    continue;
                }
                ProducerEvent::DeadPage { request, .. }
                | ProducerEvent::JobFound { request, .. }
                | ProducerEvent::Promoted { request, .. }
                | ProducerEvent::Workers { request, .. }
                | ProducerEvent::EventsPeeked { request, .. }
                | ProducerEvent::KeyUsage { request, .. }
                | ProducerEvent::DelayedWithdrawn { request, .. }
                | ProducerEvent::Revived { request, .. }
                | ProducerEvent::DeadDeleted { request, .. }
                | ProducerEvent::PauseSet { request, .. }
                | ProducerEvent::LogPage { request, .. }
                | ProducerEvent::RequestFailed { request, .. } => {
                    self.answer(request, ev);
                    continue;
                }
                ProducerEvent::Stats(stats) => {
                    for reply in self.stats.drain(..) {
                        let _ = reply.send(stats);
                    }
                    continue;
                }
                ProducerEvent::Superseded => {
                    tracing::warn!(
                        "another instance took over this queue's producer id: its outcomes go \
                         there now; this queue takes no more adds"
                    );
                    // Their outcomes go to the other instance: the handles end (`Stopped`).
                    self.waiters.clear();
                    #[cfg(feature = "metrics")]
                    self.added_at.clear();
                    continue;
                }
                ProducerEvent::Trouble { message } => {
                    tracing::warn!(%message, "queue trouble");
                    continue;
                }
                ProducerEvent::BadEvent { event, reason } => {
                    crate::telemetry::bad_event(&self.label);
                    tracing::warn!(%event, %reason, "unreadable event skipped");
                    continue;
                }
                _ => continue,
            };
            let _ = self.events.send(event);
        }
    }

    /// An outcome read (the engine hands over only `Completed`, `Failed`, `DeadLettered`):
    /// the `receive` span continuing the worker's trace, the job's handle, the metrics; the
    /// event for `events()`.
    fn outcome(&mut self, ev: ProducerEvent) -> Option<QueueEvent> {
        match ev {
            ProducerEvent::Completed {
                job, result, trace, ..
            } => {
                self.received(&job, "completed", trace.as_ref());
                self.resolve(&job, &Outcome::Completed(result.clone()), "completed");
                Some(QueueEvent::Completed { job, result })
            }
            ProducerEvent::Failed {
                job,
                reason,
                attempt,
                trace,
            } => {
                self.received(&job, "failed", trace.as_ref());
                crate::telemetry::ended(&self.label, "failed", None);
                Some(QueueEvent::Failed {
                    job,
                    reason,
                    attempt,
                })
            }
            ProducerEvent::DeadLettered {
                job, reason, trace, ..
            } => {
                self.received(&job, "dead", trace.as_ref());
                self.resolve(&job, &Outcome::Failed(reason.clone()), "dead");
                Some(QueueEvent::DeadLettered { job, reason })
            }
            _ => None,
        }
    }

    /// The `receive` span of an outcome whose worker sealed its trace context.
    fn received(&self, job: &JobId, what: &'static str, trace: Option<&TraceContext>) {
        if let Some(trace) = trace {
            crate::traces::receive(&self.producer.keys().queue, job, what, trace);
        }
    }

    /// Answers the operator's request `request` with `ev` (if its caller still waits).
    fn answer(&mut self, request: Request, ev: ProducerEvent) {
        if let Some(reply) = self.requests.remove(&request) {
            let _ = reply.send(ev);
        }
    }
}

/// What a caller hears of an add the engine refused.
fn refused(e: ProducerError) -> Error {
    match e {
        ProducerError::QueueClosed => Error::QueueClosed,
        e => Error::Producer(e),
    }
}

impl DataLayer {
    /// A queue (Sockethub's JobQueue) for `name`, sealing with keys derived from `secrets`.
    pub fn queue(
        &self,
        name: &str,
        secrets: &datalayer_core::keys::SecretRing,
        options: QueueOptions,
    ) -> Result<JobQueue, Error> {
        JobQueue::start(
            self.clone(),
            name,
            secrets.queue_keyring(name),
            options,
            None,
        )
    }
}
