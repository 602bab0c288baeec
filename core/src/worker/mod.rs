//! The consumer machine: reads jobs through the consumer group, hands them to the
//! application, and settles them (complete, retry, dead-letter), with leases, heartbeats,
//! reclaims of stalled entries, promotion of delayed jobs, and a graceful drain.
//!
//! Drive it like every machine of the core: after each input (`handle_reply`,
//! `handle_timeout`, `complete`, `fail`, `drain`, `hand_back`), drain `poll_command` and
//! `poll_event` until `None`, and call `handle_timeout` at `poll_timeout`.
//!
//! Credits: a worker holds at most `concurrency` running jobs, and reads only as many
//! entries as it has free credits, so every entry it reads starts at once and no buffered
//! entry sits unstarted while its lease runs (the lease clock starts with the handler).
//! Settlements waiting for Redis are bounded too: with `concurrency` of them unconfirmed,
//! the worker stops reading until Redis confirms some.

mod replies;
#[cfg(test)]
mod tests;

mod api;
mod shards;

pub use api::{Delivery, MAX_SETTLE_BATCH, Settlement, WorkerConfig, WorkerError, WorkerEvent};
pub use replies::MAX_GARBAGE_COPY;
pub use shards::{ShardEvent, ShardedWorker};

/// The worker's timers ([`Worker::timers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkerTimer {
    /// A backoff after a failed round trip ends: what waits for it (unsent settlements, the
    /// group's creation, the next read) goes out.
    Backoff,
    /// The running jobs' leases are due to be extended (every third of the lease).
    Heartbeat,
    /// The oldest running job reaches its timeout ([`WorkerConfig::timeout`]).
    JobTimeout,
    /// A shutdown's deadline: what still runs is handed back ([`Worker::shut_down`]).
    HandBack,
    /// The next upkeep: reclaiming entries whose lease ran out, sweeping gone producers.
    Upkeep,
    /// The earliest delayed job comes due.
    Promote,
    /// The next read, for a worker that polls (no blocking reads, or paused).
    Read,
}

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::command::{Command, CommandKind, DeadJob, NextAttempt, Settle};
use crate::envelope::{Compression, Context, Purpose, SealOptions, Sealer, outcome_detail};
use crate::job::{Instance, JobId, JobRecord};
use crate::naming::QueueKeys;
use crate::random::{MachineRandom, Random};
use crate::retry::{ResendBackoff, RetryDecision};
use crate::scaffold::{Ops, undrained};
use crate::time::{Instant, millis};
use crate::timers::Timers;
use crate::trace::TraceContext;
use crate::value::EntryId;

/// The most delayed jobs one promotion moves.
const PROMOTE_LIMIT: u32 = 256;

/// How often a worker of a paused queue asks whether it was resumed (ms): its reads do
/// not block while the queue is paused, and take nothing.
pub const PAUSED_POLL_MS: u64 = 1_000;

/// The three transitions that settle a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SettleKind {
    Complete,
    Retry,
    Bury,
}

/// A settlement waiting for Redis: each kind with what its script needs.
#[derive(Debug, Clone)]
enum Outgoing {
    Complete(Settle),
    Retry(Settle<NextAttempt>),
    Bury(Settle<DeadJob>),
}

impl Outgoing {
    fn kind(&self) -> SettleKind {
        match self {
            Self::Complete(_) => SettleKind::Complete,
            Self::Retry(_) => SettleKind::Retry,
            Self::Bury(_) => SettleKind::Bury,
        }
    }

    fn entry(&self) -> EntryId {
        match self {
            Self::Complete(s) => s.entry,
            Self::Retry(s) => s.entry,
            Self::Bury(s) => s.entry,
        }
    }
}

/// The items of one kind of a batch (all of a batch's items are of one kind).
fn of_kind<T: Clone>(
    items: &[Outgoing],
    pick: fn(&Outgoing) -> Option<&Settle<T>>,
) -> Vec<Settle<T>> {
    items.iter().filter_map(pick).cloned().collect()
}

#[derive(Debug)]
struct Running {
    /// The job's id and attempt (the record itself went to the application; a retry opens
    /// the envelope again rather than every delivery keeping a copy).
    id: JobId,
    attempt: u32,
    /// The add's instance, to which the job's outcomes are bound.
    instance: Instance,
    envelope: Arc<[u8]>,
    started_ms: u64,
    last_beat_ms: u64,
    lost: bool,
    /// This delivery's run ([`Delivery::run`]).
    run: u64,
}

/// Operations awaiting replies.
#[derive(Debug)]
enum InFlight {
    EnsureGroup,
    Read {
        count: u32,
    },
    Reclaim {
        count: u32,
    },
    Promote,
    Heartbeat {
        entries: Vec<EntryId>,
    },
    HandBack,
    IsPaused,
    Settle {
        kind: SettleKind,
        items: Vec<Outgoing>,
    },
}

/// The consumer machine of one queue.
#[derive(Debug)]
pub struct Worker {
    cfg: WorkerConfig,
    keys: Arc<QueueKeys>,
    sealer: Sealer,
    reason_sealer: Sealer,
    rng: MachineRandom,
    now_ms: u64,
    in_flight: Ops<InFlight>,
    running: BTreeMap<EntryId, Running>,
    /// The number the next delivery's run gets ([`Delivery::run`]).
    next_run: u64,
    outbox: VecDeque<Outgoing>,
    hand_back: Vec<EntryId>,
    /// Entries that came and never started (a pause, a drain): handed back with their
    /// delivery taken back.
    give_back: Vec<EntryId>,
    events: VecDeque<WorkerEvent>,
    group_ready: bool,
    reclaim_cursor: EntryId,
    /// The next upkeep (promote, reclaim, schedule: the `reclaim` script), as the queue's
    /// workers share it out.
    next_reclaim_ms: u64,
    /// The spread of the next upkeep's interval, in thousandths (drawn after each reply).
    jitter: u32,
    /// The next due delayed job this worker knows of (from the upkeep, a promotion, or a
    /// retry of its own): promoted then. `None`: nothing is delayed, as far as it knows.
    next_promote_ms: Option<u64>,
    next_read_ms: u64,
    /// The last read found nothing: the next one may block.
    idle: bool,
    /// The last read found the queue paused: no job starts, reads do not block.
    paused: bool,
    resend: ResendBackoff,
    draining: bool,
    /// When the running jobs are handed back ([`Worker::shut_down`]'s deadline).
    hand_back_at: Option<u64>,
    drained_sent: bool,
    /// The most credits this worker may take more (set by a [`ShardedWorker`], which shares
    /// one pool among its shards; unbounded alone).
    allowance: u32,
}

impl Worker {
    /// A worker for `cfg.queue`, opening jobs with `sealer` (the queue's keyring), at `now`,
    /// with its own generator seeded from `rng` ([`MachineRandom`]).
    pub fn new(
        cfg: WorkerConfig,
        sealer: Sealer,
        now: Instant,
        rng: &mut (impl Random + ?Sized),
    ) -> Result<Self, WorkerError> {
        let now_ms = now.unix_ms();
        if cfg.concurrency < 1 {
            return Err(WorkerError::Concurrency(cfg.concurrency));
        }
        if millis(cfg.lease) < 3 {
            return Err(WorkerError::Lease(cfg.lease));
        }
        if cfg.consumer.is_empty() {
            return Err(WorkerError::Consumer);
        }
        let keys = Arc::new(QueueKeys::new(&cfg.prefix, &cfg.queue)?);
        // Reasons are short, and compressing them before encryption would leak their content.
        let reason_sealer = sealer
            .clone()
            .with_options(SealOptions::default().compression(Compression::Never));
        Ok(Self {
            keys,
            sealer,
            reason_sealer,
            rng: MachineRandom::from_random(rng),
            now_ms,
            in_flight: Ops::default(),
            running: BTreeMap::new(),
            next_run: 0,
            outbox: VecDeque::new(),
            hand_back: Vec::new(),
            give_back: Vec::new(),
            events: VecDeque::new(),
            group_ready: false,
            reclaim_cursor: EntryId::ZERO,
            next_reclaim_ms: now_ms,
            jitter: 1000,
            next_promote_ms: None,
            next_read_ms: now_ms,
            idle: false,
            paused: false,
            resend: ResendBackoff::default(),
            draining: false,
            hand_back_at: None,
            drained_sent: false,
            allowance: u32::MAX,
            cfg,
        })
    }

    /// The keys of the queue.
    #[must_use]
    pub fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    /// How many jobs are running (delivered, not yet completed or failed).
    #[must_use]
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether the queue was paused when Redis last told this worker (a paused queue's
    /// workers start no job).
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The job running at `entry`, if it runs here.
    #[must_use]
    pub fn job_id(&self, entry: EntryId) -> Option<JobId> {
        self.running.get(&entry).map(|r| r.id.clone())
    }

    fn op(&mut self, kind: CommandKind, state: InFlight) -> Command {
        let op = self.in_flight.start(state);
        let replicas = match kind {
            CommandKind::Complete { .. } | CommandKind::Retry { .. } | CommandKind::Bury { .. } => {
                self.cfg.replicas
            }
            _ => None,
        };
        Command { op, kind, replicas }
    }

    fn check_drained(&self) -> Result<(), WorkerError> {
        // The largest burst one input can cause: a reply's worth of deliveries and settles.
        let bound = 4 * (self.cfg.concurrency as usize + self.cfg.max_batch);
        undrained(self.events.len(), bound).map_err(WorkerError::Undrained)
    }

    /// The application finished the job at `entry` with `result` (the encoded result).
    pub fn complete(
        &mut self,
        now: Instant,
        entry: EntryId,
        result: &[u8],
    ) -> Result<(), WorkerError> {
        self.complete_traced(now, entry, result, None)
    }

    /// [`Worker::complete`], sealing `trace` (the span that ran the attempt) with the result
    /// so that the producer's trace continues from it.
    pub fn complete_traced(
        &mut self,
        now: Instant,
        entry: EntryId,
        result: &[u8],
        trace: Option<&TraceContext>,
    ) -> Result<(), WorkerError> {
        self.check_drained()?;
        self.now_ms = now.unix_ms();
        let run = self
            .running
            .get(&entry)
            .ok_or(WorkerError::NotRunning(entry))?;
        let detail = outcome_detail(run.attempt, &run.instance.0);
        let ctx = Context::outcome(
            Purpose::Result,
            &self.keys.scope,
            run.id.0.as_bytes(),
            &detail,
        );
        let value = self
            .sealer
            .seal_bytes_traced(&ctx, result, trace, &mut self.rng)?;
        let Some(run) = self.running.remove(&entry) else {
            return Err(WorkerError::NotRunning(entry));
        };
        self.outbox.push_back(Outgoing::Complete(Settle {
            entry,
            attempt: run.attempt,
            job: Some(run.id),
            instance: Some(run.instance),
            value: value.into(),
            read: run.envelope,
            then: (),
        }));
        self.maybe_drained();
        Ok(())
    }

    /// The job at `entry` failed with `reason` (a handler error, or a panic's message):
    /// retried with backoff while attempts remain, else dead-lettered with the reason.
    pub fn fail(&mut self, now: Instant, entry: EntryId, reason: &str) -> Result<(), WorkerError> {
        self.fail_traced(now, entry, reason, None)
    }

    /// [`Worker::fail`], sealing `trace` (the span that ran the attempt) with the reason.
    pub fn fail_traced(
        &mut self,
        now: Instant,
        entry: EntryId,
        reason: &str,
        trace: Option<&TraceContext>,
    ) -> Result<(), WorkerError> {
        self.check_drained()?;
        self.now_ms = now.unix_ms();
        self.fail_running(entry, reason, trace)
    }

    /// Run `run` of the job at `entry` ([`Delivery::run`]) ended: `Ok(result)` completes
    /// the job, `Err(reason)` fails it, as [`Worker::complete_traced`] and
    /// [`Worker::fail_traced`] do, but only while that run is the entry's current one. The
    /// same entry can be delivered again while an earlier run's answer is on its way (the
    /// run timed out or was handed back, and the entry came back; a failover gave its id to
    /// another job): that answer is moot, [`WorkerError::NotRunning`], and settles nothing.
    ///
    /// # Errors
    /// As [`Worker::complete_traced`]; [`WorkerError::NotRunning`] for a run that is not the
    /// entry's current one.
    pub fn finish_run(
        &mut self,
        now: Instant,
        entry: EntryId,
        run: u64,
        outcome: Result<&[u8], &str>,
        trace: Option<&TraceContext>,
    ) -> Result<(), WorkerError> {
        if self.running.get(&entry).map(|r| r.run) != Some(run) {
            return Err(WorkerError::NotRunning(entry));
        }
        match outcome {
            Ok(result) => self.complete_traced(now, entry, result, trace),
            Err(reason) => self.fail_traced(now, entry, reason, trace),
        }
    }

    fn fail_running(
        &mut self,
        entry: EntryId,
        reason: &str,
        trace: Option<&TraceContext>,
    ) -> Result<(), WorkerError> {
        let now_ms = self.now_ms;
        let run = self
            .running
            .get(&entry)
            .ok_or(WorkerError::NotRunning(entry))?;
        let decision = self.cfg.retry.decide(run.attempt, &mut self.rng);
        // The reason is bound to what happens: a retried failure or a dead letter.
        let purpose = match decision {
            RetryDecision::RetryAfter(_) => Purpose::Failure,
            RetryDecision::Dead => Purpose::DeadLetter,
        };
        let detail = outcome_detail(run.attempt, &run.instance.0);
        let ctx = Context::outcome(purpose, &self.keys.scope, run.id.0.as_bytes(), &detail);
        let value: Arc<[u8]> = self
            .reason_sealer
            .seal_bytes_traced(&ctx, reason.as_bytes(), trace, &mut self.rng)?
            .into();
        let settle = Settle {
            entry,
            job: Some(run.id.clone()),
            instance: Some(run.instance),
            value,
            attempt: run.attempt,
            read: run.envelope.clone(),
            then: (),
        };
        let outgoing = match decision {
            RetryDecision::RetryAfter(delay) => {
                // The record as delivered (it opened then), with the next attempt.
                let ctx = Context::new(Purpose::Job, &self.keys.scope, run.id.0.as_bytes());
                // The producer's trace context goes with the job to its next attempt.
                let (mut next, sent): (JobRecord, _) =
                    self.sealer.open_traced(&ctx, &run.envelope)?;
                next.attempt = run.attempt.saturating_add(1);
                let sealed = self
                    .sealer
                    .seal_traced(&ctx, &next, sent.as_ref(), &mut self.rng)?;
                Outgoing::Retry(settle.with(NextAttempt {
                    envelope: sealed.into(),
                    due_ms: now_ms.saturating_add(millis(delay)),
                }))
            }
            RetryDecision::Dead => {
                self.events.push_back(WorkerEvent::DeadLettered {
                    entry,
                    job: Some(run.id.clone()),
                    reason: reason.to_owned(),
                });
                let envelope = run.envelope.clone();
                Outgoing::Bury(settle.with(DeadJob { envelope }))
            }
        };
        self.running.remove(&entry);
        self.outbox.push_back(outgoing);
        self.maybe_drained();
        Ok(())
    }

    /// Stop reading; running jobs may finish. `Drained` follows when nothing runs and every
    /// settlement is confirmed.
    pub fn drain(&mut self, now: Instant) {
        self.now_ms = now.unix_ms();
        self.draining = true;
        self.maybe_drained();
    }

    /// Shuts down: stops reading at once (as [`Worker::drain`]), lets running jobs finish
    /// until `deadline`, then hands back those still running (as [`Worker::hand_back`], at
    /// the first `handle_timeout` from then; at once if the deadline has passed).
    /// `Drained` follows when nothing runs and every settlement is confirmed.
    pub fn shut_down(&mut self, now: Instant, deadline: Instant) {
        self.drain(now);
        if deadline <= now {
            self.hand_back(now);
        } else if !self.drained_sent {
            self.hand_back_at = Some(deadline.unix_ms());
        }
    }

    /// Give the still-running jobs back to the queue (the shutdown deadline passed): they
    /// become reclaimable at once by other workers. [`WorkerEvent::HandedBack`] names them
    /// (stop their handlers); their results, if they still come, are refused.
    pub fn hand_back(&mut self, now: Instant) {
        self.now_ms = now.unix_ms();
        self.draining = true;
        self.hand_back_at = None;
        let running = std::mem::take(&mut self.running);
        if !running.is_empty() {
            let entries = running.keys().copied().collect();
            self.events.push_back(WorkerEvent::HandedBack { entries });
        }
        let entries = running.into_iter().filter(|(_, r)| !r.lost).map(|(e, _)| e);
        self.hand_back.extend(entries);
        self.maybe_drained();
    }

    fn maybe_drained(&mut self) {
        let idle = self.running.is_empty()
            && self.outbox.is_empty()
            && self.hand_back.is_empty()
            && self.give_back.is_empty()
            && !self
                .in_flight
                .any(|f| matches!(f, InFlight::Settle { .. } | InFlight::HandBack));
        if self.draining && idle && !self.drained_sent {
            self.drained_sent = true;
            self.hand_back_at = None;
            self.events.push_back(WorkerEvent::Drained);
        }
    }

    /// Time passed: jobs past the timeout fail now; other timers fire on the next
    /// `poll_command`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), WorkerError> {
        self.check_drained()?;
        let now_ms = now.unix_ms();
        self.now_ms = now_ms;
        // What a timer does when it fires, read from the state the timer is derived from
        // ([`Worker::timers`]): `HandBack` hands back what still runs, `JobTimeout` fails the
        // jobs past their timeout. The intake's timers (backoff, heartbeat, upkeep, promote,
        // read) have nothing to do here: being due, their commands go out at the next
        // `poll_command`.
        if self.hand_back_at.is_some_and(|at| at <= now_ms) {
            self.hand_back(now);
        }
        if let Some(timeout) = self.cfg.timeout.map(millis) {
            let expired: Vec<EntryId> = self
                .running
                .iter()
                .filter(|(_, r)| r.started_ms.saturating_add(timeout) <= now_ms)
                .map(|(e, _)| *e)
                .collect();
            for entry in expired {
                self.events.push_back(WorkerEvent::TimedOut { entry });
                self.fail_running(entry, &format!("timed out after {timeout} ms"), None)?;
            }
        }
        self.maybe_drained();
        Ok(())
    }

    /// When to call `handle_timeout` next, if a timer is set: the earliest of
    /// [`Worker::timers`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers().next_at()
    }

    /// The worker's timers, each under its name (see [`crate::timers`]). Only timers whose
    /// action can go when they fire are set: one waiting for a reply (a heartbeat, the
    /// upkeep, the group's creation in flight) or for credits is set again by what unblocks
    /// it, else its driver would wake again and again for nothing.
    #[must_use]
    pub fn timers(&self) -> Timers<WorkerTimer> {
        let mut t = Timers::new();
        let at = Instant::from_unix_ms;
        let out = |f: fn(&InFlight) -> bool| self.in_flight.any(f);
        let backing_off = self.resend.backing_off() && !self.resend.ready(self.now_ms);
        if backing_off && (!self.outbox.is_empty() || !self.group_ready) {
            t.set(WorkerTimer::Backoff, at(self.resend.at_ms()));
        }
        // A heartbeat waits for the one out, and for the group (re)created: no command but
        // the group's creation goes before it is ready.
        let beats_wait = !self.group_ready || out(|f| matches!(f, InFlight::Heartbeat { .. }));
        if let Some(beat) = self
            .running
            .values()
            .filter(|r| !r.lost && !beats_wait)
            .map(|r| r.last_beat_ms)
            .min()
        {
            let third = millis(self.cfg.lease) / 3;
            t.set(WorkerTimer::Heartbeat, at(beat.saturating_add(third)));
        }
        if let (Some(timeout), Some(start)) = (
            self.cfg.timeout.map(millis),
            self.running.values().map(|r| r.started_ms).min(),
        ) {
            t.set(WorkerTimer::JobTimeout, at(start.saturating_add(timeout)));
        }
        if let Some(deadline) = self.hand_back_at {
            t.set(WorkerTimer::HandBack, at(deadline));
        }
        if !self.draining && self.group_ready {
            // Intake (reads, reclaims, promotions) waits out a backoff: none of its timers
            // is before the backoff ends, and the end itself is one (a read is due then).
            let gate = |x: u64| x.max(self.resend.at_ms());
            if !self.resend.ready(self.now_ms) {
                t.set(WorkerTimer::Backoff, at(self.resend.at_ms()));
            }
            let upkeep = out(|f| matches!(f, InFlight::Reclaim { .. } | InFlight::Promote));
            if !upkeep && !self.upkeep_waits_for_read() {
                t.set(WorkerTimer::Upkeep, at(gate(self.next_reclaim_ms)));
            }
            if let Some(due) = self.next_promote_ms.filter(|_| !upkeep) {
                t.set(WorkerTimer::Promote, at(gate(due)));
            }
            let polls = self.cfg.block.is_none() || self.paused;
            if polls && gate(self.next_read_ms) > self.now_ms {
                t.set(WorkerTimer::Read, at(gate(self.next_read_ms)));
            }
        }
        t
    }

    /// The next event for the application, if any. Call until `None` after every input.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<WorkerEvent> {
        self.events.pop_front()
    }

    fn free_credits(&self) -> u32 {
        let unconfirmed = self.outbox.len()
            + self
                .in_flight
                .values()
                .map(|f| match f {
                    InFlight::Settle { items, .. } => items.len(),
                    _ => 0,
                })
                .sum::<usize>();
        // Settlements Redis has not confirmed are bounded too, at one more than may run: a
        // job's settle and the read of the next share a round trip (at concurrency 1, a
        // round trip per job less), yet a worker whose settles fail does not pile up
        // finished jobs, and larger pools still read once their settles are in.
        if unconfirmed > self.cfg.concurrency as usize {
            return 0;
        }
        self.cfg
            .concurrency
            .saturating_sub(self.used_credits())
            .min(self.allowance)
    }

    /// Credits in use: running jobs and the counts of reads and reclaims in flight.
    fn used_credits(&self) -> u32 {
        let reserved: u32 = self
            .in_flight
            .values()
            .map(|f| match f {
                InFlight::Read { count } | InFlight::Reclaim { count } => *count,
                _ => 0,
            })
            .sum();
        u32::try_from(self.running.len())
            .unwrap_or(u32::MAX)
            .saturating_add(reserved)
    }

    /// Whether this worker's next read would block (the queue looked empty) and none is out.
    fn wants_blocking_read(&self) -> bool {
        self.idle
            && self.group_ready
            && !self.paused
            && !self.draining
            && self.cfg.block.is_some()
            && !self.reading()
    }

    /// Whether a read is out.
    fn reading(&self) -> bool {
        self.in_flight.any(|f| matches!(f, InFlight::Read { .. }))
    }

    /// The next command for Redis, if any. Call until `None` after every input; everything
    /// one drain returns may go out as one pipeline.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        let now = self.now_ms;
        let resend_ok = self.resend.ready(now);
        if !self.group_ready {
            if resend_ok && !self.in_flight.any(|f| matches!(f, InFlight::EnsureGroup)) {
                let kind = CommandKind::EnsureGroup {
                    keys: self.keys.clone(),
                };
                return Some(self.op(kind, InFlight::EnsureGroup));
            }
            return None;
        }
        if let Some(cmd) = self.poll_settle(resend_ok) {
            return Some(cmd);
        }
        if let Some(cmd) = self.poll_heartbeat() {
            return Some(cmd);
        }
        if self.draining || !resend_ok {
            return None;
        }
        self.poll_intake()
    }

    fn poll_settle(&mut self, resend_ok: bool) -> Option<Command> {
        for unstarted in [false, true] {
            let list = if unstarted {
                &mut self.give_back
            } else {
                &mut self.hand_back
            };
            if list.is_empty() {
                continue;
            }
            let entries = std::mem::take(list);
            let kind = CommandKind::Heartbeat {
                keys: self.keys.clone(),
                consumer: self.cfg.consumer.clone(),
                idle_ms: millis(self.cfg.lease),
                unstarted,
                entries,
            };
            return Some(self.op(kind, InFlight::HandBack));
        }
        if !resend_ok {
            return None;
        }
        let kind = self.outbox.front()?.kind();
        let mut items = Vec::new();
        while items.len() < self.cfg.max_batch.clamp(1, api::MAX_SETTLE_BATCH) {
            match self.outbox.front() {
                Some(o) if o.kind() == kind => {}
                _ => break,
            }
            if let Some(item) = self.outbox.pop_front() {
                items.push(item);
            }
        }
        let keys = self.keys.clone();
        let min_event_ms = self.now_ms.saturating_sub(millis(self.cfg.event_retention));
        let command = match kind {
            SettleKind::Complete => CommandKind::Complete {
                keys,
                min_event_ms,
                consumer: self.cfg.consumer.clone(),
                items: of_kind(&items, |o| match o {
                    Outgoing::Complete(s) => Some(s),
                    _ => None,
                }),
            },
            SettleKind::Retry => CommandKind::Retry {
                keys,
                now_ms: self.now_ms,
                min_event_ms,
                consumer: self.cfg.consumer.clone(),
                items: of_kind(&items, |o| match o {
                    Outgoing::Retry(s) => Some(s),
                    _ => None,
                }),
            },
            SettleKind::Bury => CommandKind::Bury {
                keys,
                min_event_ms,
                min_dead_ms: self.now_ms.saturating_sub(millis(self.cfg.dead_retention)),
                consumer: self.cfg.consumer.clone(),
                items: of_kind(&items, |o| match o {
                    Outgoing::Bury(s) => Some(s),
                    _ => None,
                }),
            },
        };
        Some(self.op(command, InFlight::Settle { kind, items }))
    }

    fn poll_heartbeat(&mut self) -> Option<Command> {
        let now = self.now_ms;
        let third = millis(self.cfg.lease) / 3;
        if self
            .in_flight
            .any(|f| matches!(f, InFlight::Heartbeat { .. }))
        {
            return None;
        }
        let due = self
            .running
            .values()
            .any(|r| !r.lost && r.last_beat_ms.saturating_add(third) <= now);
        if !due {
            return None;
        }
        let entries: Vec<EntryId> = self
            .running
            .iter()
            .filter(|(_, r)| !r.lost)
            .map(|(e, _)| *e)
            .collect();
        let kind = CommandKind::Heartbeat {
            keys: self.keys.clone(),
            consumer: self.cfg.consumer.clone(),
            idle_ms: 0,
            unstarted: false,
            entries: entries.clone(),
        };
        Some(self.op(kind, InFlight::Heartbeat { entries }))
    }

    /// Whether the upkeep waits for the read in flight: its credits are the ones a reclaim
    /// would use (an idle worker's read blocks in Redis for a few seconds; its reply comes
    /// anyway, and the upkeep goes first then).
    fn upkeep_waits_for_read(&self) -> bool {
        self.free_credits() == 0 && self.reading()
    }

    /// Promotion, upkeep (reclaims), then reads: what brings jobs in.
    fn poll_intake(&mut self) -> Option<Command> {
        let now = self.now_ms;
        let promoting = self
            .in_flight
            .any(|f| matches!(f, InFlight::Promote | InFlight::Reclaim { .. }));
        if self.next_promote_ms.is_some_and(|due| due <= now) && !promoting {
            self.next_promote_ms = None;
            let kind = CommandKind::Promote {
                keys: self.keys.clone(),
                now_ms: now,
                limit: PROMOTE_LIMIT,
            };
            return Some(self.op(kind, InFlight::Promote));
        }
        let credits = self.free_credits();
        let upkeep = self
            .in_flight
            .any(|f| matches!(f, InFlight::Reclaim { .. } | InFlight::Promote));
        if now >= self.next_reclaim_ms && !upkeep && !self.upkeep_waits_for_read() {
            // Without credits, the upkeep still promotes and keeps this worker's turn.
            let kind = CommandKind::Reclaim {
                keys: self.keys.clone(),
                consumer: self.cfg.consumer.clone(),
                min_idle_ms: millis(self.cfg.lease),
                cursor: self.reclaim_cursor,
                count: credits,
                now_ms: now,
                interval_ms: millis(self.cfg.reclaim_interval).max(1),
                jitter: self.jitter,
                promote_limit: PROMOTE_LIMIT,
            };
            return Some(self.op(kind, InFlight::Reclaim { count: credits }));
        }
        if self.paused {
            // While paused, only the question, once a second: nothing is read.
            let asking = self.in_flight.any(|f| matches!(f, InFlight::IsPaused));
            if asking || now < self.next_read_ms {
                return None;
            }
            let kind = CommandKind::IsPaused {
                keys: self.keys.clone(),
            };
            return Some(self.op(kind, InFlight::IsPaused));
        }
        if credits == 0 {
            return None;
        }
        if self.reading() || now < self.next_read_ms {
            return None;
        }
        // An idle read blocks no later than the next upkeep, which waits for it (see
        // `upkeep_waits_for_read`): a long wait (a doorbell's) does not put the upkeep off.
        let until_upkeep = self.next_reclaim_ms.saturating_sub(now);
        let kind = CommandKind::Read {
            keys: self.keys.clone(),
            consumer: self.cfg.consumer.clone(),
            count: credits,
            block_ms: self
                .cfg
                .block
                .map(millis)
                .filter(|_| self.idle && !self.paused)
                .map(|b| {
                    if until_upkeep > 0 {
                        b.min(until_upkeep)
                    } else {
                        b
                    }
                }),
        };
        Some(self.op(kind, InFlight::Read { count: credits }))
    }
}
