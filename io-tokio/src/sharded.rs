//! A sharded queue: one logical queue over several hash tags, so that one hot queue's work
//! spreads over several Redis Cluster nodes (or, on one server, several streams).
//!
//! Each shard is a complete queue of its own ([`datalayer_core::naming::shard_tags`]: its
//! keys, its consumer group, its events), run by a [`JobQueue`] of its own on the shard's
//! tag; a job goes to the shard [`datalayer_core::naming::shard_of`] its id names, so an
//! idempotent add stays a one-slot step. Workers serve every shard with one pool of
//! credits ([`crate::WorkerOptions::shards`]).

use std::time::Duration;

use datalayer_core::job::JobId;
use datalayer_core::naming::{shard_of, shard_tags};
use datalayer_core::producer::{AddJob, JobPlace, QueueStats};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::layer::DataLayer;
use crate::options::Error;
use crate::queue::{JobHandle, JobQueue, QueueEvent, QueueOptions, json_job};

/// A queue spread over several shards (see the module's documentation): adds go to the
/// shard of their job's id; outcomes come back as from one queue. Order holds within a
/// shard only (as far as a queue's order holds at all once several workers run it).
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShardedQueue {
    name: String,
    shards: Vec<JobQueue>,
    events: broadcast::Sender<QueueEvent>,
}

impl ShardedQueue {
    pub(crate) fn start(
        layer: &DataLayer,
        name: &str,
        shards: u16,
        secrets: &datalayer_core::keys::SecretRing,
        mut options: QueueOptions,
    ) -> Result<Self, Error> {
        let tags =
            shard_tags(name, shards).map_err(datalayer_core::producer::ProducerError::from)?;
        // One producer id on every shard: a replacement opened with it takes over every
        // shard's outcomes.
        let first = JobQueue::start(
            layer.clone(),
            &tags[0],
            secrets.queue_keyring(name),
            options.clone(),
            None,
        )?;
        options.producer_id = Some(first.producer_id().to_owned());
        let events = first.event_sender();
        let mut queues = vec![first];
        for tag in &tags[1..] {
            queues.push(JobQueue::start(
                layer.clone(),
                tag,
                secrets.queue_keyring(name),
                options.clone(),
                Some(events.clone()),
            )?);
        }
        Ok(Self {
            name: name.to_owned(),
            shards: queues,
            events,
        })
    }

    /// The queue's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This producer's id, the same on every shard (see [`QueueOptions::producer_id`]).
    #[must_use]
    pub fn producer_id(&self) -> &str {
        self.shards[0].producer_id()
    }

    /// The shards, each a [`JobQueue`] of its own (named by its tag): for what is asked of
    /// one shard (dead letters by entry, workers, key usage, one shard's gauges).
    #[must_use]
    pub fn shards(&self) -> &[JobQueue] {
        &self.shards
    }

    /// The shard of job `id`.
    #[must_use]
    pub fn shard_of(&self, id: &JobId) -> &JobQueue {
        &self.shards[self.index_of(id)]
    }

    /// The index of job `id`'s shard.
    fn index_of(&self, id: &JobId) -> usize {
        shard_of(&id.0, u16::try_from(self.shards.len()).unwrap_or(u16::MAX))
    }

    /// Adds a job for `session_id` with a JSON payload, to the shard of its (new) id.
    pub async fn add(
        &self,
        session_id: &str,
        payload: &impl Serialize,
    ) -> Result<JobHandle, Error> {
        self.add_job(json_job(session_id, payload)?).await
    }

    /// [`JobQueue::add_job`] on the shard of the job's id (given, or made here).
    pub async fn add_job(&self, mut job: AddJob) -> Result<JobHandle, Error> {
        let id = JobQueue::assign_id(&mut job);
        self.shard_of(&id).add_job(job).await
    }

    /// [`JobQueue::add_many`] over the shards: each shard's jobs go in one message to it,
    /// the shards at once; each job's own outcome, in the order given.
    pub async fn add_many(
        &self,
        jobs: impl IntoIterator<Item = AddJob>,
    ) -> Result<Vec<Result<JobHandle, Error>>, Error> {
        let mut parts: Vec<(Vec<usize>, Vec<AddJob>)> = vec![Default::default(); self.shards.len()];
        let mut total = 0;
        for (at, mut job) in jobs.into_iter().enumerate() {
            let id = JobQueue::assign_id(&mut job);
            let part = &mut parts[self.index_of(&id)];
            part.0.push(at);
            part.1.push(job);
            total = at + 1;
        }
        let mut set = JoinSet::new();
        for (shard, (places, jobs)) in parts.into_iter().enumerate() {
            if jobs.is_empty() {
                continue;
            }
            let queue = self.shards[shard].clone();
            set.spawn(async move { (places, queue.add_many(jobs).await) });
        }
        let mut out: Vec<Option<Result<JobHandle, Error>>> = (0..total).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            let (places, results) = joined.map_err(|_| Error::Stopped)?;
            for (at, result) in places.into_iter().zip(results?) {
                out[at] = Some(result);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::Stopped)))
            .collect())
    }

    /// The outcomes of every shard's jobs (see [`JobQueue::events`]).
    #[must_use]
    pub fn events(&self) -> broadcast::Receiver<QueueEvent> {
        self.events.subscribe()
    }

    /// The queue's counts: every shard's [`JobQueue::stats`], summed
    /// ([`QueueStats::sum`]).
    pub async fn stats(&self) -> Result<QueueStats, Error> {
        let mut all = Vec::with_capacity(self.shards.len());
        for (_, stats) in self.each(|q| async move { q.stats().await }).await {
            all.push(stats?);
        }
        Ok(QueueStats::sum(all))
    }

    /// Samples the whole queue's state (its shards' [`Self::stats`], summed) into the
    /// gauges of the queue's name every `interval` (see [`JobQueue::sample_metrics`]; the
    /// shards' counters count under the queue's name too).
    pub fn sample_metrics(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let queue = self.clone();
        crate::queue::sample_metrics(self.name.as_str().into(), interval, move || {
            let queue = queue.clone();
            async move { queue.stats().await }
        })
    }

    /// Where job `id` is (asked of its shard; see [`JobQueue::find_job`]).
    pub async fn find_job(&self, id: &JobId) -> Result<JobPlace, Error> {
        self.shard_of(id).find_job(id).await
    }

    /// Runs delayed job `id` now (see [`JobQueue::run_now`]).
    pub async fn run_now(&self, id: &JobId) -> Result<bool, Error> {
        self.shard_of(id).run_now(id).await
    }

    /// Withdraws delayed job `id` (see [`JobQueue::cancel_delayed`]).
    pub async fn cancel_delayed(
        &self,
        id: &JobId,
    ) -> Result<datalayer_core::producer::DelayedWithdrawal, Error> {
        self.shard_of(id).cancel_delayed(id).await
    }

    /// Retries the dead letters of every shard (see [`JobQueue::retry_all_dead`]); how
    /// many went back.
    pub async fn retry_all_dead(&self, older_than: Option<Duration>) -> Result<u64, Error> {
        let mut queued = 0;
        for (_, n) in self
            .each(move |q| async move { q.retry_all_dead(older_than).await })
            .await
        {
            queued += n?;
        }
        Ok(queued)
    }

    /// Pauses every shard (see [`JobQueue::pause`]).
    pub async fn pause(&self) -> Result<(), Error> {
        for (_, r) in self.each(|q| async move { q.pause().await }).await {
            r?;
        }
        Ok(())
    }

    /// Resumes every shard (see [`JobQueue::resume`]).
    pub async fn resume(&self) -> Result<(), Error> {
        for (_, r) in self.each(|q| async move { q.resume().await }).await {
            r?;
        }
        Ok(())
    }

    /// Stops this instance on every shard and leaves the data for a replacement (see
    /// [`JobQueue::disconnect`]).
    pub async fn disconnect(&self) {
        self.each(|q| async move { q.disconnect().await }).await;
    }

    /// Stops this instance and deletes every key of every shard.
    pub async fn shutdown(&self) {
        self.each(|q| async move { q.shutdown().await }).await;
    }

    /// Runs `f` on every shard at once; the answers by shard.
    async fn each<F, Fut, T>(&self, f: F) -> Vec<(usize, T)>
    where
        F: Fn(JobQueue) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let mut set = JoinSet::new();
        for (shard, queue) in self.shards.iter().enumerate() {
            let work = f(queue.clone());
            set.spawn(async move { (shard, work.await) });
        }
        let mut out = Vec::with_capacity(self.shards.len());
        while let Some(joined) = set.join_next().await {
            if let Ok(answer) = joined {
                out.push(answer);
            }
        }
        out.sort_by_key(|(shard, _)| *shard);
        out
    }
}

impl DataLayer {
    /// A queue of `shards` shards (1 to 256; 1 is the plain queue's layout, and costs
    /// nothing more than [`DataLayer::queue`]): one hot queue spread over several hash
    /// tags, each on its own slot, which a Redis Cluster places on different primaries
    /// (with `n` shards on `n` primaries of an evenly spread cluster, one on each). Every
    /// producer and worker ([`crate::WorkerOptions::shards`]) of the queue must use the
    /// same number: the shards' tags depend on it.
    pub fn sharded_queue(
        &self,
        name: &str,
        shards: u16,
        secrets: &datalayer_core::keys::SecretRing,
        options: QueueOptions,
    ) -> Result<ShardedQueue, Error> {
        ShardedQueue::start(self, name, shards, secrets, options)
    }
}
