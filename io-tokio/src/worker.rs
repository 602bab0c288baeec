//! JobWorker: the worker machine driven over the shared connection by one task; handlers run
//! as tasks of their own.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use datalayer_core::command::{Command, CommandKind, OpId, Reply};
use datalayer_core::envelope::{Compression, SealOptions, Sealer};
use datalayer_core::job::JobId;
use datalayer_core::keys::Keyring;
use datalayer_core::retry::RetryPolicy;
use datalayer_core::trace::TraceContext;
use datalayer_core::value::EntryId;
use datalayer_core::worker::{ShardEvent, ShardedWorker, WorkerConfig, WorkerError, WorkerEvent};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::blocking::Reads;
use crate::clock::{now_ms, sleep_until_ms};
use crate::layer::{DataLayer, Error};
use crate::pipelines::Pipelines;
use crate::random::OsRandom;

/// Options of a worker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// Jobs run at once (an integer ≥ 1).
    pub concurrency: u32,
    /// Attempts and backoff (default: Sockethub's single attempt).
    pub retry: RetryPolicy,
    /// How long a silent worker keeps a job before others may take it (default 30 s).
    pub lease: Duration,
    /// A job running longer fails with "timed out" (default: none).
    pub timeout: Option<Duration>,
    /// A job created longer ago than this is dead-lettered unrun, as a possible replay
    /// (default 7 days; see `WorkerConfig::max_job_age_ms`).
    pub max_job_age: Duration,
    /// How long dead letters are kept (default 7 days).
    pub dead_retention: Duration,
    /// The consumer name (default: the process's, shared by its workers of different queues
    /// so that one blocking read serves them all; unique per worker of one queue).
    pub consumer: Option<String>,
    /// Whether results are compressed before they are sealed (default: never; see
    /// [`crate::QueueOptions::compression`] for the risk).
    pub compression: Compression,
    /// Whether a dead-lettered job's failure reason goes into the log (default: no, only its
    /// length: reasons are sealed in Redis, and may quote the job's data).
    pub log_reasons: bool,
    /// A settle (complete, retry, bury) counts as done only once this many replicas
    /// acknowledged it within the timeout (`WAIT`); fewer: it is sent again (settles are
    /// idempotent). Default `None`: once the primary has it; a failover after the master
    /// died can then undo a settle, and the job runs again.
    pub replicated: Option<(u32, Duration)>,
    /// The queue's shards (default 1: an unsharded queue). Every producer
    /// ([`DataLayer::sharded_queue`]) and worker of a queue must use the same number; the
    /// worker serves every shard with one pool of `concurrency` credits, which must be at
    /// least the number of shards (see [`ShardedWorker`]).
    pub shards: u16,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            retry: RetryPolicy::default(),
            lease: Duration::from_secs(30),
            timeout: None,
            consumer: None,
            compression: Compression::Never,
            log_reasons: false,
            max_job_age: Duration::from_secs(7 * 24 * 3600),
            dead_retention: Duration::from_secs(7 * 24 * 3600),
            replicated: None,
            shards: 1,
        }
    }
}

impl WorkerOptions {
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

    /// With this lease.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// With this max job age (the replay horizon).
    #[must_use]
    pub fn max_job_age(mut self, age: Duration) -> Self {
        self.max_job_age = age;
        self
    }

    /// With this dead-letter retention.
    #[must_use]
    pub fn dead_retention(mut self, retention: Duration) -> Self {
        self.dead_retention = retention;
        self
    }

    /// Whether failure reasons of dead-lettered jobs are logged in full (default: no).
    #[must_use]
    pub fn log_reasons(mut self, log_reasons: bool) -> Self {
        self.log_reasons = log_reasons;
        self
    }

    /// Settles done only once `replicas` replicas have them, waiting at most `timeout`
    /// each time (see [`WorkerOptions::replicated`]).
    #[must_use]
    pub fn replicated(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicated = Some((replicas, timeout));
        self
    }

    /// With this compression of results (see [`crate::QueueOptions::compression`] for the
    /// risk).
    #[must_use]
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// For a queue of `shards` shards (see [`WorkerOptions::shards`]).
    #[must_use]
    pub fn shards(mut self, shards: u16) -> Self {
        self.shards = shards;
        self
    }
}

/// A job, as a handler receives it. Its `Debug` shows the payload's length, not its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// Its title.
    pub title: String,
    /// The client session it belongs to.
    pub session_id: String,
    /// The payload (JSON, as added).
    pub payload: Vec<u8>,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The trace context the producer sealed with the job (the span that added it), if
    /// any; with the `otel` feature the handler's span already continues it.
    pub trace: Option<TraceContext>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("title", &self.title)
            .field("session_id", &self.session_id)
            .field("payload", &format_args!("<{} bytes>", self.payload.len()))
            .field("attempt", &self.attempt)
            .field("trace", &self.trace)
            .finish()
    }
}

impl Job {
    /// The payload decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.payload)
    }
}

/// A worker, not yet running: `start` it with a handler.
#[derive(Debug)]
pub struct JobWorker {
    backend: Backend,
    reads: Reads,
    worker: ShardedWorker,
    queue: String,
    consumer: String,
    log_reasons: bool,
}

/// A running worker: shut it down to stop it.
#[derive(Debug)]
pub struct WorkerHandle {
    ctl: mpsc::Sender<Ctl>,
}

enum Ctl {
    Shutdown(Duration, oneshot::Sender<()>),
}

/// A job: its shard and entry.
type Running = (usize, EntryId);

/// A handler's answer: the job, its run (a number this worker gave the delivery), the
/// result or reason, and the trace context of the `process` span that ran it (sealed with
/// the outcome).
type Done = (Running, u64, Result<Vec<u8>, String>, Option<TraceContext>);

impl JobWorker {
    pub(crate) fn new(
        layer: DataLayer,
        name: &str,
        keys: Keyring,
        options: WorkerOptions,
    ) -> Result<Self, Error> {
        let consumer = options
            .consumer
            .unwrap_or_else(|| layer.next_consumer(name));
        let lease_ms = crate::clock::ms(options.lease);
        let mut cfg = WorkerConfig::new(name, &consumer)
            .concurrency(options.concurrency)
            .retry(options.retry)
            .lease_ms(lease_ms)
            .block_ms(Some(layer.idle_block_ms()))
            .timeout_ms(options.timeout.map(crate::clock::ms));
        cfg.prefix = layer.options.prefix.clone();
        cfg.max_job_age_ms = crate::clock::ms(options.max_job_age);
        cfg.replicas =
            options
                .replicated
                .map(|(count, timeout)| datalayer_core::command::Replicas {
                    count,
                    timeout_ms: crate::clock::ms(timeout).max(1),
                });
        cfg.dead_retention_ms = crate::clock::ms(options.dead_retention);
        let sealer =
            Sealer::new(keys).with_options(SealOptions::default().compression(options.compression));
        let worker = ShardedWorker::new(cfg, options.shards, sealer, now_ms())?;
        Ok(Self {
            reads: Reads::new(layer.blocker(&format!("group:{consumer}"))),
            backend: layer.backend,
            worker,
            queue: name.to_owned(),
            consumer,
            log_reasons: options.log_reasons,
        })
    }

    /// Runs `handler` for every job, up to the concurrency at once. Its `Ok` value (any
    /// `Serialize`) is the job's result; its `Err` (any `Display`) the failure reason; a panic
    /// fails the job with the panic's message, and the worker goes on.
    pub fn start<F, Fut, T, E>(self, handler: F) -> WorkerHandle
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (ctl, ctl_rx) = mpsc::channel(4);
        let (done_tx, done_rx) = mpsc::channel(1024);
        let driver = Driver {
            worker: self.worker,
            pipes: Pipelines::new(self.backend),
            reads: self.reads,
            ctl: ctl_rx,
            done_tx,
            done_rx,
            running: HashMap::new(),
            runs: 0,
            shutdown: None,
            pending_events: Vec::new(),
            log_reasons: self.log_reasons,
            queue: Arc::from(self.queue.as_str()),
            consumer: self.consumer,
        };
        let span = tracing::info_span!("worker", queue = %self.queue);
        tokio::spawn(tracing::Instrument::instrument(
            driver.run(Arc::new(handler)),
            span,
        ));
        WorkerHandle { ctl }
    }
}

impl WorkerHandle {
    /// Stops reading; waits up to `deadline` for running jobs, then hands the rest back to
    /// the queue (other workers take them at once) and returns.
    pub async fn shutdown(&self, deadline: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.ctl.send(Ctl::Shutdown(deadline, tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Driver {
    worker: ShardedWorker,
    pipes: Pipelines,
    reads: Reads,
    ctl: mpsc::Receiver<Ctl>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    /// The handler of each running job, and the number of its run: an entry can be
    /// delivered again while an earlier run's answer is on its way (after a timeout, or
    /// a failover that gave the id to another job), and only the current run settles it.
    running: HashMap<Running, (AbortHandle, u64)>,
    /// The number of the next run.
    runs: u64,
    /// Who to tell when a shutdown is done.
    shutdown: Option<oneshot::Sender<()>>,
    /// Events drained from the machine after each reply, handled by `route_events`.
    pending_events: Vec<ShardEvent>,
    log_reasons: bool,
    /// The queue's name, shared with the handler tasks (their metrics' label).
    queue: Arc<str>,
    /// This worker's consumer name (its spans' `messaging.client.id`).
    consumer: String,
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => match p.downcast::<String>() {
            Ok(s) => format!("handler panicked: {s}"),
            Err(p) => match p.downcast::<&str>() {
                Ok(s) => format!("handler panicked: {s}"),
                Err(_) => "handler panicked".to_owned(),
            },
        },
        Err(e) => format!("handler was cancelled: {e}"),
    }
}

impl Driver {
    async fn run<F, Fut, T, E>(mut self, handler: Arc<F>)
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        loop {
            self.send();
            if self.route_events(&handler) {
                break;
            }
            let sleep = sleep_until_ms(self.worker.poll_timeout());
            tokio::select! {
                (ops, replies) = self.pipes.next() => {
                    for (op, reply) in ops.into_iter().zip(replies) {
                        self.reply(op, reply);
                    }
                }
                Some(done) = self.done_rx.recv() => {
                    self.settle(done);
                    // Every answer already waiting (after one scheduler turn, for handlers
                    // that are about to finish) goes into the same settle command.
                    tokio::task::yield_now().await;
                    while let Ok(done) = self.done_rx.try_recv() {
                        self.settle(done);
                    }
                }
                (op, reply) = self.reads.recv() => self.reply(op, reply),
                Some(Ctl::Shutdown(deadline, done)) = self.ctl.recv() => {
                    let now = now_ms();
                    let at = now.saturating_add(crate::clock::ms(deadline));
                    self.worker.shut_down(now, at);
                    self.reads.cancel();
                    self.shutdown = Some(done);
                }
                () = sleep => self.tick(),
            }
        }
        if let Some(done) = self.shutdown.take() {
            let _ = done.send(());
        }
    }

    fn tick(&mut self) {
        let now = now_ms();
        if let Err(e) = self.worker.handle_timeout(now, &mut OsRandom) {
            tracing::error!(error = %e, "worker refused a timeout");
        }
    }

    fn settle(&mut self, ((shard, entry), run, outcome, trace): Done) {
        if self.running.get(&(shard, entry)).map(|(_, r)| *r) != Some(run) {
            // That run timed out, was handed back or superseded: its answer is moot (and
            // must not settle what runs at the entry now).
            return;
        }
        self.running.remove(&(shard, entry));
        let now = now_ms();
        let trace = trace.as_ref();
        let settled = match outcome {
            Ok(result) => self
                .worker
                .complete(now, shard, entry, &result, trace, &mut OsRandom),
            Err(reason) => self
                .worker
                .fail(now, shard, entry, &reason, trace, &mut OsRandom),
        };
        match settled {
            // The job timed out or was handed back meanwhile: its answer is moot.
            Ok(()) | Err(WorkerError::NotRunning(_)) => {}
            Err(e) => tracing::error!(error = %e, %entry, "the worker could not settle a job"),
        }
    }

    /// Sends what the machine has to say: blocking reads to the blocker, the rest as
    /// pipelines (while fewer than the most are in flight; the rest waits in the machine,
    /// which batches it further).
    fn send(&mut self) {
        while self.pipes.can_send() {
            let cmds: Vec<Command> = std::iter::from_fn(|| self.worker.poll_command()).collect();
            if cmds.is_empty() {
                return;
            }
            let cmds = self.reads.take_blocking(cmds);
            let span = settle_span(&self.queue, &cmds);
            self.pipes.send_in(cmds, span);
        }
    }

    fn reply(&mut self, op: OpId, reply: Reply) {
        if let Err(e) = self.worker.handle_reply(now_ms(), op, reply, &mut OsRandom) {
            tracing::error!(error = %e, "worker refused a reply");
        }
        self.pending_events
            .extend(std::iter::from_fn(|| self.worker.poll_event()));
    }

    /// Starts handlers for new jobs; whether the worker has drained for shutdown.
    fn route_events<F, Fut, T, E>(&mut self, handler: &Arc<F>) -> bool
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let mut drained = false;
        self.pending_events
            .extend(std::iter::from_fn(|| self.worker.poll_event()));
        for ShardEvent { shard, event } in std::mem::take(&mut self.pending_events) {
            match event {
                WorkerEvent::Job(d) => {
                    let queue = self.queue.clone();
                    let waited = (d.job.attempt == 1).then(|| {
                        Duration::from_millis(now_ms().saturating_sub(d.job.created_at_ms))
                    });
                    crate::telemetry::started(&queue, waited);
                    let span = crate::traces::process(
                        &queue,
                        &self.consumer,
                        &d.job.id,
                        d.job.attempt,
                        d.deliveries,
                        d.trace.as_ref(),
                    );
                    // The outcome continues the trace from this attempt.
                    let sent = crate::traces::context_of(&span);
                    let job = Job {
                        id: d.job.id,
                        title: d.job.title,
                        session_id: d.job.session_id,
                        payload: d.job.payload,
                        attempt: d.job.attempt,
                        trace: d.trace,
                    };
                    let task = tokio::spawn(tracing::Instrument::instrument(
                        (handler)(job),
                        span.clone(),
                    ));
                    let run = self.runs;
                    self.runs += 1;
                    if let Some((old, _)) = self
                        .running
                        .insert((shard, d.entry), (task.abort_handle(), run))
                    {
                        old.abort();
                    }
                    let done = self.done_tx.clone();
                    let entry = (shard, d.entry);
                    tokio::spawn(async move {
                        let started = std::time::Instant::now();
                        let (outcome, error) = match task.await {
                            Ok(Ok(value)) => (
                                serde_json::to_vec(&value)
                                    .map_err(|e| format!("result does not encode: {e}")),
                                "result_encoding",
                            ),
                            Ok(Err(e)) => (Err(e.to_string()), "handler_error"),
                            Err(e) if e.is_cancelled() => (Err(panic_message(e)), "cancelled"),
                            Err(e) => (Err(panic_message(e)), "panic"),
                        };
                        if outcome.is_err() {
                            span.record("error.type", error);
                        }
                        drop(span);
                        crate::telemetry::handled(&queue, outcome.is_ok(), started.elapsed());
                        let _ = done.send((entry, run, outcome, sent)).await;
                    });
                }
                WorkerEvent::TimedOut { entry } => {
                    if let Some((h, _)) = self.running.remove(&(shard, entry)) {
                        h.abort();
                    }
                }
                WorkerEvent::HandedBack { entries } => {
                    for entry in entries {
                        if let Some((h, _)) = self.running.remove(&(shard, entry)) {
                            h.abort();
                        }
                    }
                }
                WorkerEvent::Superseded { entry, job } => {
                    tracing::warn!(%entry, %job, "a failover gave this job's entry to another job: its run is void");
                    if let Some((h, _)) = self.running.remove(&(shard, entry)) {
                        h.abort();
                    }
                }
                WorkerEvent::Drained => drained = true,
                WorkerEvent::Settled { settlement, count } => {
                    crate::telemetry::settled(&self.queue, settlement.as_str(), count);
                }
                WorkerEvent::Reclaimed { count } => {
                    crate::telemetry::reclaimed(&self.queue, count);
                }
                WorkerEvent::DeadLettered { entry, job, reason } => {
                    if self.log_reasons {
                        tracing::warn!(%entry, job = ?job, %reason, "dead-lettered");
                    } else {
                        let reason_len = reason.len();
                        tracing::warn!(%entry, job = ?job, reason_len, "dead-lettered");
                    }
                }
                WorkerEvent::LeaseLost { entry, job } => {
                    crate::telemetry::lease_lost(&self.queue);
                    tracing::warn!(%entry, %job, "lease lost: another worker took the job");
                }
                WorkerEvent::Trouble { message } => tracing::warn!(%message, "worker trouble"),
                WorkerEvent::PauseSeen { paused } => {
                    let queue = &self.worker.shards()[shard].keys().queue;
                    tracing::info!(%queue, paused, "the queue's pause changed");
                }
                _ => {}
            }
        }
        drained
    }
}

impl DataLayer {
    /// A worker (Sockethub's JobWorker) for the queue `name`.
    pub fn worker(
        &self,
        name: &str,
        secrets: &datalayer_core::keys::SecretRing,
        options: WorkerOptions,
    ) -> Result<JobWorker, Error> {
        JobWorker::new(self.clone(), name, secrets.queue_keyring(name), options)
    }

    /// A worker of the queue `name` that holds that queue's keys only
    /// ([`datalayer_core::keys::SecretRing::queue_keyring`], or keys built from
    /// [`datalayer_core::keys::derive_queue_key_bytes`] handed to its process): a
    /// compromised worker process then opens this queue's jobs, and no other queue's, nor
    /// anyone's credentials (those need the credentials root and the session's secret; see
    /// [`DataLayer::credentials_with_root`]).
    pub fn worker_with_keys(
        &self,
        name: &str,
        keys: datalayer_core::keys::Keyring,
        options: WorkerOptions,
    ) -> Result<JobWorker, Error> {
        JobWorker::new(self.clone(), name, keys, options)
    }
}

/// A `settle <queue>` span for a pipeline that settles jobs (none for one that does not).
fn settle_span(queue: &str, cmds: &[Command]) -> Option<tracing::Span> {
    let (mut completed, mut retried, mut buried) = (0, 0, 0);
    for cmd in cmds {
        match &cmd.kind {
            CommandKind::Complete { items, .. } => completed += items.len(),
            CommandKind::Retry { items, .. } => retried += items.len(),
            CommandKind::Bury { items, .. } => buried += items.len(),
            _ => {}
        }
    }
    (completed + retried + buried > 0)
        .then(|| crate::traces::settle(queue, completed, retried, buried))
}
