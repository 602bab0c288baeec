//! JobWorker: the worker machine driven over the shared connection by one task; handlers run
//! as tasks of their own.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use datalayer_core::command::{Command, Settlements};
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
use crate::clock::now;
use crate::driver::{Engine, Side, drive};
use crate::layer::DataLayer;
use crate::options::Error;
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
    /// (default 7 days; see `WorkerConfig::max_job_age`).
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

/// A handler's answer: the job, its run ([`datalayer_core::worker::Delivery::run`]), the
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
        let mut cfg = WorkerConfig::new(name, &consumer)
            .concurrency(options.concurrency)
            .retry(options.retry)
            .lease(options.lease)
            .block(Some(layer.idle_block()))
            .timeout(options.timeout);
        cfg.prefix = layer.options.prefix.clone();
        cfg.max_job_age = options.max_job_age;
        cfg.replicas = options
            .replicated
            .map(|(count, timeout)| datalayer_core::command::Replicas { count, timeout });
        cfg.dead_retention = options.dead_retention;
        let sealer =
            Sealer::new(keys).with_options(SealOptions::default().compression(options.compression));
        let worker = ShardedWorker::new(cfg, options.shards, sealer, now(), &mut OsRandom)?;
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
        let engine = Engine {
            pipes: Pipelines::new(self.backend),
            reads: self.reads,
        };
        let driver = Driver {
            handler: Arc::new(handler),
            worker: self.worker,
            ctl: ctl_rx,
            done_tx,
            done_rx,
            running: HashMap::new(),
            shutdown: None,
            drained: false,
            log_reasons: self.log_reasons,
            queue: Arc::from(self.queue.as_str()),
            consumer: self.consumer,
        };
        let span = tracing::info_span!("worker", queue = %self.queue);
        tokio::spawn(tracing::Instrument::instrument(drive(engine, driver), span));
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

struct Driver<F> {
    /// What runs each job.
    handler: Arc<F>,
    worker: ShardedWorker,
    ctl: mpsc::Receiver<Ctl>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    /// The handler of each running job (of its current run: the machine refuses the
    /// answers of earlier runs).
    running: HashMap<Running, AbortHandle>,
    /// Who to tell when a shutdown is done.
    shutdown: Option<oneshot::Sender<()>>,
    /// The machine has drained for a shutdown: the driver ends.
    drained: bool,
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

/// An input of a worker's application: a handler's answer, or a shutdown.
enum Input {
    Done(Done),
    Shutdown(Duration, oneshot::Sender<()>),
}

impl<F, Fut, T, E> Side for Driver<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    type M = ShardedWorker;
    type Input = Input;

    fn machine(&mut self) -> &mut ShardedWorker {
        &mut self.worker
    }

    async fn input(&mut self) -> Option<Input> {
        tokio::select! {
            Some(done) = self.done_rx.recv() => Some(Input::Done(done)),
            Some(Ctl::Shutdown(deadline, done)) = self.ctl.recv() => {
                Some(Input::Shutdown(deadline, done))
            }
            // The handle is gone and no handler runs: wait for the machine alone.
            else => std::future::pending().await,
        }
    }

    async fn more(&mut self) -> Vec<Input> {
        // Every answer already waiting (after one scheduler turn, for handlers that are
        // about to finish) goes into the same settle command.
        tokio::task::yield_now().await;
        std::iter::from_fn(|| self.done_rx.try_recv().ok().map(Input::Done)).collect()
    }

    fn on_input(&mut self, input: Input, engine: &mut Engine) {
        match input {
            Input::Done(done) => self.settle(done),
            Input::Shutdown(deadline, done) => {
                let now = now();
                self.worker.shut_down(now, now + deadline);
                engine.reads.cancel();
                self.shutdown = Some(done);
            }
        }
    }

    fn on_events(&mut self) {
        self.route_events();
    }

    fn done(&self, _engine: &Engine) -> bool {
        self.drained
    }

    fn span(&self, cmds: &[Command]) -> Option<tracing::Span> {
        settle_span(&self.queue, cmds)
    }

    fn finish(&mut self) {
        if let Some(done) = self.shutdown.take() {
            let _ = done.send(());
        }
    }
}

impl<F, Fut, T, E> Driver<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    fn settle(&mut self, ((shard, entry), run, outcome, trace): Done) {
        let outcome = outcome.as_deref().map_err(String::as_str);
        match (self.worker).finish_run(now(), shard, entry, run, outcome, trace.as_ref()) {
            Ok(()) => {
                self.running.remove(&(shard, entry));
            }
            // An earlier run's answer (it timed out, was handed back or superseded): moot,
            // and it must not settle what runs at the entry now. A handler that has ended
            // is no longer worth aborting.
            Err(WorkerError::NotRunning(_)) => {
                let key = (shard, entry);
                if self.running.get(&key).is_some_and(AbortHandle::is_finished) {
                    self.running.remove(&key);
                }
            }
            Err(e) => tracing::error!(error = %e, %entry, "the worker could not settle a job"),
        }
    }

    /// Starts handlers for new jobs, and notes the end of a shutdown's drain.
    fn route_events(&mut self) {
        while let Some(ShardEvent { shard, event }) = self.worker.poll_event() {
            match event {
                WorkerEvent::Job(d) => {
                    let queue = self.queue.clone();
                    crate::telemetry::started(&queue, d.waited(now()));
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
                        (self.handler)(job),
                        span.clone(),
                    ));
                    let run = d.run;
                    if let Some(old) = self.running.insert((shard, d.entry), task.abort_handle()) {
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
                    if let Some(h) = self.running.remove(&(shard, entry)) {
                        h.abort();
                    }
                }
                WorkerEvent::HandedBack { entries } => {
                    for entry in entries {
                        if let Some(h) = self.running.remove(&(shard, entry)) {
                            h.abort();
                        }
                    }
                }
                WorkerEvent::Superseded { entry, job } => {
                    tracing::warn!(%entry, %job, "a failover gave this job's entry to another job: its run is void");
                    if let Some(h) = self.running.remove(&(shard, entry)) {
                        h.abort();
                    }
                }
                WorkerEvent::Drained => self.drained = true,
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
    let settles = Settlements::of(cmds);
    (settles.total() > 0).then(|| crate::traces::settle(queue, &settles))
}
