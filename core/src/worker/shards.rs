//! One worker over every shard of a sharded queue, with one pool of credits.
//!
//! A sharded queue is `n` complete queues, one per hash tag ([`crate::naming::shard_tags`]),
//! each on its own slot (on a cluster, its own node). [`ShardedWorker`] runs one [`Worker`]
//! per shard and shares `concurrency` among them: before a shard may take credits (a read,
//! a reclaim), it is told how many are free across all shards, so the jobs running in all
//! shards together never exceed `concurrency`, and every entry a shard reads starts at once,
//! as with one queue.
//!
//! Idle shards: a shard whose queue looked empty blocks in its next read (on one server the
//! blocking reads of all shards go as one merged `XREADGROUP`, on a cluster each waits on
//! its shard's doorbell). Each such shard keeps one credit of the pool for that read, which
//! busy shards leave to it; so a job added to any shard starts without waiting for another
//! shard's read to end (the shard's next read, no longer blocking, takes what it may). So
//! while some shards are idle, the busy ones run up to `concurrency` less one per idle
//! shard, and a worker needs `concurrency >= n` ([`WorkerError::Shards`] otherwise).
//!
//! With one shard, the machine is the [`Worker`] of the queue itself: op ids, credits and
//! events pass through unchanged.
//!
//! Op ids: the op id of shard `i`'s command `o` is `o * n + i`.

use super::{Worker, WorkerConfig, WorkerError, WorkerEvent, WorkerTimer};
use crate::command::{Command, OpId, Reply};
use crate::envelope::Sealer;
use crate::naming::shard_tags;
use crate::random::Random;
use crate::time::Instant;
use crate::trace::TraceContext;
use crate::value::EntryId;

/// A worker's event, with the shard it happened in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardEvent {
    /// The shard (an index into [`ShardedWorker::shards`]); 0 for [`WorkerEvent::Drained`],
    /// which comes once, when every shard has drained.
    pub shard: usize,
    /// What happened.
    pub event: WorkerEvent,
}

/// The consumer machine of a sharded queue (see the module's documentation). Drive it like
/// a [`Worker`]; a job is named by its shard and entry.
#[derive(Debug)]
pub struct ShardedWorker {
    workers: Vec<Worker>,
    concurrency: u32,
    /// The shard asked first on the next round of `poll_command` (rotates, for fairness).
    first: usize,
    /// Which shards have drained; `Drained` goes out once all have.
    drained: Vec<bool>,
    drained_sent: bool,
}

impl ShardedWorker {
    /// A worker of the queue `cfg.queue` of `shards` shards (every producer and worker of a
    /// queue must agree on the number), `cfg.concurrency` jobs at most across all shards;
    /// each shard's worker seeds its own generator from `rng`.
    pub fn new(
        cfg: WorkerConfig,
        shards: u16,
        sealer: Sealer,
        now: Instant,
        rng: &mut (impl Random + ?Sized),
    ) -> Result<Self, WorkerError> {
        let tags = shard_tags(&cfg.queue, shards)?;
        // A concurrency of 0 is the worker's own error (`Concurrency`).
        if cfg.concurrency >= 1 && cfg.concurrency < u32::from(shards) {
            return Err(WorkerError::Shards {
                concurrency: cfg.concurrency,
                shards,
            });
        }
        let workers = tags
            .into_iter()
            .map(|tag| {
                let mut c = cfg.clone();
                c.queue = tag;
                Worker::new(c, sealer.clone(), now, &mut *rng)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            concurrency: cfg.concurrency,
            drained: vec![false; workers.len()],
            workers,
            first: 0,
            drained_sent: false,
        })
    }

    /// The shards' machines, in shard order (their keys, their running jobs).
    #[must_use]
    pub fn shards(&self) -> &[Worker] {
        &self.workers
    }

    /// How many jobs run, in all shards.
    #[must_use]
    pub fn running(&self) -> usize {
        self.workers.iter().map(Worker::running).sum()
    }

    fn shard(&mut self, shard: usize) -> Result<&mut Worker, WorkerError> {
        self.workers
            .get_mut(shard)
            .ok_or(WorkerError::NoShard(shard))
    }

    /// [`Worker::complete_traced`] of the job at `entry` of `shard`.
    pub fn complete(
        &mut self,
        now: Instant,
        shard: usize,
        entry: EntryId,
        result: &[u8],
        trace: Option<&TraceContext>,
    ) -> Result<(), WorkerError> {
        self.shard(shard)?
            .complete_traced(now, entry, result, trace)
    }

    /// [`Worker::finish_run`] on `shard`.
    ///
    /// # Errors
    /// As [`Worker::finish_run`]; [`WorkerError::NoShard`] for a shard out of range.
    pub fn finish_run(
        &mut self,
        now: Instant,
        shard: usize,
        entry: EntryId,
        run: u64,
        outcome: Result<&[u8], &str>,
        trace: Option<&TraceContext>,
    ) -> Result<(), WorkerError> {
        self.shard(shard)?
            .finish_run(now, entry, run, outcome, trace)
    }

    /// [`Worker::fail_traced`] of the job at `entry` of `shard`.
    pub fn fail(
        &mut self,
        now: Instant,
        shard: usize,
        entry: EntryId,
        reason: &str,
        trace: Option<&TraceContext>,
    ) -> Result<(), WorkerError> {
        self.shard(shard)?.fail_traced(now, entry, reason, trace)
    }

    /// [`Worker::drain`] of every shard; one `Drained` follows when all have drained.
    pub fn drain(&mut self, now: Instant) {
        for w in &mut self.workers {
            w.drain(now);
        }
    }

    /// [`Worker::shut_down`] of every shard; one `Drained` follows when all have drained.
    pub fn shut_down(&mut self, now: Instant, deadline: Instant) {
        for w in &mut self.workers {
            w.shut_down(now, deadline);
        }
    }

    /// [`Worker::hand_back`] of every shard.
    pub fn hand_back(&mut self, now: Instant) {
        for w in &mut self.workers {
            w.hand_back(now);
        }
    }

    /// [`Worker::handle_timeout`] of every shard (all of them, then the first error).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), WorkerError> {
        let mut result = Ok(());
        for w in &mut self.workers {
            let r = w.handle_timeout(now);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// The reply to `op`, for the shard that sent it.
    pub fn handle_reply(
        &mut self,
        now: Instant,
        op: OpId,
        reply: Reply,
    ) -> Result<(), WorkerError> {
        let n = self.workers.len() as u64;
        let (shard, inner) = (op.0 % n, OpId(op.0 / n));
        let shard = usize::try_from(shard).map_err(|_| WorkerError::UnknownOp(op))?;
        match self.workers.get_mut(shard) {
            Some(w) => w.handle_reply(now, inner, reply),
            None => Err(WorkerError::UnknownOp(op)),
        }
    }

    /// The earliest timer of any shard.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.workers.iter().filter_map(Worker::poll_timeout).min()
    }

    /// Every shard's timers ([`Worker::timers`]): shard, timer, when.
    pub fn timers(&self) -> impl Iterator<Item = (usize, WorkerTimer, Instant)> + '_ {
        self.workers
            .iter()
            .enumerate()
            .flat_map(|(shard, w)| w.timers().into_iter().map(move |(t, at)| (shard, t, at)))
    }

    /// The next event of any shard. Call until `None` after every input.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ShardEvent> {
        for (shard, w) in self.workers.iter_mut().enumerate() {
            while let Some(event) = w.poll_event() {
                if event == WorkerEvent::Drained {
                    self.drained[shard] = true;
                    continue;
                }
                return Some(ShardEvent { shard, event });
            }
        }
        if !self.drained_sent && self.drained.iter().all(|d| *d) {
            self.drained_sent = true;
            return Some(ShardEvent {
                shard: 0,
                event: WorkerEvent::Drained,
            });
        }
        None
    }

    /// The next command for Redis, from any shard. Call until `None` after every input.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        let n = self.workers.len();
        if n == 1 {
            return self.workers[0].poll_command();
        }
        for step in 0..n {
            let shard = (self.first + step) % n;
            let allowance = self.allowance(shard);
            let w = &mut self.workers[shard];
            w.allowance = allowance;
            if let Some(mut cmd) = w.poll_command() {
                cmd.op = OpId(
                    cmd.op
                        .0
                        .saturating_mul(n as u64)
                        .saturating_add(shard as u64),
                );
                return Some(cmd);
            }
        }
        self.first = (self.first + 1) % n;
        // Fresh allowances for the timers (`poll_timeout` asks whether an upkeep waits).
        for shard in 0..n {
            self.workers[shard].allowance = self.allowance(shard);
        }
        None
    }

    /// The credits shard `shard` may take now: what the pool has free, less the credit each
    /// other idle shard keeps for its blocking read; an idle shard takes that one credit.
    fn allowance(&self, shard: usize) -> u32 {
        let used = self
            .workers
            .iter()
            .fold(0u32, |sum, w| sum.saturating_add(w.used_credits()));
        let kept = self
            .workers
            .iter()
            .enumerate()
            .filter(|(j, w)| *j != shard && w.wants_blocking_read())
            .fold(0u32, |sum, _| sum.saturating_add(1));
        let free = self.concurrency.saturating_sub(used).saturating_sub(kept);
        if self.workers[shard].wants_blocking_read() {
            free.min(1)
        } else {
            free
        }
    }
}
