//! JobQueue: the producer machine driven over the shared connection by one task.

use std::collections::HashMap;
use std::time::Duration;

use datalayer_core::command::Command;
use datalayer_core::envelope::Sealer;
use datalayer_core::job::JobId;
use datalayer_core::keys::SecretRing;
use datalayer_core::producer::{AddJob, Producer, ProducerConfig, ProducerError, ProducerEvent};
use redis::aio::ConnectionManager;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::layer::{DataLayer, Error, now_ms};
use crate::{OsRandom, exec};

/// Options of a queue.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct QueueOptions {
    /// Where the events cursor starts (default: every event still in Redis, so a
    /// replacement instance receives what its predecessor missed).
    pub events_after: Option<datalayer_core::value::EntryId>,
}

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

enum Msg {
    Add(AddJob, oneshot::Sender<Result<JobHandle, Error>>),
    Pause(bool),
    Close {
        destroy: bool,
        done: oneshot::Sender<()>,
    },
}

/// A queue (Sockethub's JobQueue): adds sealed jobs and reports their outcomes. Cheap: it is a
/// task on the process-wide connection.
#[derive(Debug, Clone)]
pub struct JobQueue {
    tx: mpsc::Sender<Msg>,
    events: broadcast::Sender<QueueEvent>,
}

impl JobQueue {
    pub(crate) fn start(
        layer: DataLayer,
        name: &str,
        secrets: &SecretRing,
        options: QueueOptions,
    ) -> Result<Self, Error> {
        let mut cfg = ProducerConfig::new(name).block_ms(None);
        cfg.prefix = layer.options.prefix.clone();
        if let Some(after) = options.events_after {
            cfg.events_after = after;
        }
        let sealer = Sealer::new(secrets.queue_keyring(name));
        let producer =
            Producer::new(cfg, sealer, now_ms()).map_err(|e| Error::Config(e.to_string()))?;
        let (tx, rx) = mpsc::channel(1024);
        let (events, _) = broadcast::channel(4096);
        let driver = Driver {
            producer,
            conn: layer.conn.clone(),
            rx,
            events: events.clone(),
            waiters: HashMap::new(),
        };
        let span = tracing::info_span!("queue", name);
        tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
        Ok(Self { tx, events })
    }

    /// Adds a job for `session_id` with a JSON payload; returns its handle.
    pub async fn add(
        &self,
        session_id: &str,
        payload: &impl Serialize,
    ) -> Result<JobHandle, Error> {
        self.add_job(AddJob {
            session_id: session_id.to_owned(),
            payload: serde_json::to_vec(payload)?,
            ..AddJob::default()
        })
        .await
    }

    /// Adds a job described in full (id for idempotency, title, delay).
    pub async fn add_job(&self, job: AddJob) -> Result<JobHandle, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Add(job, reply))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// The queue's lifecycle events (a receiver that falls behind misses events; handles
    /// never miss their job's outcome).
    #[must_use]
    pub fn events(&self) -> broadcast::Receiver<QueueEvent> {
        self.events.subscribe()
    }

    /// Adds fail with "queue closed" until `resume`.
    pub async fn pause(&self) -> Result<(), Error> {
        self.tx
            .send(Msg::Pause(true))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Adds are taken again.
    pub async fn resume(&self) -> Result<(), Error> {
        self.tx
            .send(Msg::Pause(false))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Stops this instance and leaves the queue's data in Redis for a replacement.
    pub async fn disconnect(&self) {
        self.close(false).await;
    }

    /// Stops this instance and deletes every key of the queue.
    pub async fn shutdown(&self) {
        self.close(true).await;
    }

    async fn close(&self, destroy: bool) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Close { destroy, done }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
        }
    }
}

struct Driver {
    producer: Producer,
    conn: ConnectionManager,
    rx: mpsc::Receiver<Msg>,
    events: broadcast::Sender<QueueEvent>,
    waiters: HashMap<JobId, oneshot::Sender<Outcome>>,
}

impl Driver {
    async fn run(mut self) {
        let mut closing: Option<(bool, oneshot::Sender<()>)> = None;
        loop {
            let sent = self.flush().await;
            self.route_events(&mut closing);
            if let Some((false, _)) = &closing {
                break;
            }
            if sent {
                continue;
            }
            let wake = self.producer.poll_timeout();
            let sleep = async {
                match wake {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => {
                        self.handle(msg, &mut closing);
                        // Take whatever else is waiting: it goes out in the same pipeline.
                        while let Ok(msg) = self.rx.try_recv() {
                            self.handle(msg, &mut closing);
                        }
                    }
                    None => break,
                },
                () = sleep => self.producer.handle_timeout(now_ms()),
            }
        }
        if let Some((_, done)) = closing {
            let _ = done.send(());
        }
    }

    /// Sends one pipeline of everything the machine has to say; whether anything went out.
    async fn flush(&mut self) -> bool {
        let cmds: Vec<Command> = std::iter::from_fn(|| self.producer.poll_command()).collect();
        if cmds.is_empty() {
            return false;
        }
        let replies = exec::execute(&mut self.conn, &cmds).await;
        let now = now_ms();
        for (cmd, reply) in cmds.iter().zip(replies) {
            // Only a driver bug could make this fail; the machine stays consistent.
            let _ = self.producer.handle_reply(now, cmd.op, reply);
        }
        true
    }

    fn handle(&mut self, msg: Msg, closing: &mut Option<(bool, oneshot::Sender<()>)>) {
        match msg {
            Msg::Add(job, reply) => {
                let result = match self.producer.add(now_ms(), job, &mut OsRandom) {
                    Ok(id) => {
                        let (tx, rx) = oneshot::channel();
                        self.waiters.insert(id.clone(), tx);
                        Ok(JobHandle { id, rx })
                    }
                    Err(ProducerError::QueueClosed) => Err(Error::QueueClosed),
                    Err(e) => Err(Error::Add(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Msg::Pause(true) => self.producer.pause(),
            Msg::Pause(false) => self.producer.resume(),
            Msg::Close { destroy, done } => {
                if destroy {
                    self.producer.destroy();
                } else {
                    self.producer.pause();
                }
                *closing = Some((destroy, done));
            }
        }
    }

    fn route_events(&mut self, closing: &mut Option<(bool, oneshot::Sender<()>)>) {
        while let Some(ev) = self.producer.poll_event() {
            let event = match ev {
                ProducerEvent::Completed { job, result, .. } => {
                    if let Some(w) = self.waiters.remove(&job) {
                        let _ = w.send(Outcome::Completed(result.clone()));
                    }
                    QueueEvent::Completed { job, result }
                }
                ProducerEvent::Failed {
                    job,
                    reason,
                    attempt,
                } => QueueEvent::Failed {
                    job,
                    reason,
                    attempt,
                },
                ProducerEvent::DeadLettered { job, reason, .. } => {
                    if let Some(w) = self.waiters.remove(&job) {
                        let _ = w.send(Outcome::Failed(reason.clone()));
                    }
                    QueueEvent::DeadLettered { job, reason }
                }
                ProducerEvent::AddFailed { job, error } => {
                    if let Some(w) = self.waiters.remove(&job) {
                        let _ = w.send(Outcome::Failed(format!("add refused: {error}")));
                    }
                    continue;
                }
                ProducerEvent::Destroyed => {
                    if let Some((true, _)) = closing {
                        *closing = closing.take().map(|(_, done)| (false, done));
                    }
                    continue;
                }
                ProducerEvent::Trouble { message } => {
                    tracing::warn!(%message, "queue trouble");
                    continue;
                }
                ProducerEvent::BadEvent { event, reason } => {
                    tracing::warn!(%event, %reason, "unreadable event skipped");
                    continue;
                }
                _ => continue,
            };
            let _ = self.events.send(event);
        }
    }
}
