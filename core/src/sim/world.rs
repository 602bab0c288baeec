//! A deterministic world: producers and workers of several queues driven against the model
//! over a faulty network, with a virtual clock and an application that answers jobs as told.
//! Tests, the `engine_ops` fuzz target and the engine bench drive the engine through it.
//!
//! Commands go into one in-flight list and run when the driver says (in any order across
//! machines, in order within one), so interleavings are explored, not just one schedule.
//! Everything the application sees is recorded in a [`Ledger`] for invariant checks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Faults, Network, Sim};
use crate::command::{Command, Reply};
use crate::envelope::Sealer;
use crate::job::JobId;
use crate::keys::{Key, KeyId, Keyring};
use crate::naming::QueueKeys;
use crate::producer::{
    AddAnswer, AddJob, AddStatus, Call, JobEnd, Producer, ProducerConfig, ProducerEvent,
};
use crate::random::{Random, SeededRandom};
use crate::retry::{Backoff, RetryPolicy};
use crate::time::{Duration, Instant};
use crate::trace::TraceContext;
use crate::value::EntryId;
use crate::worker::{Worker, WorkerConfig, WorkerEvent};

/// How the application answers a delivered job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The handler returned a result.
    Ok,
    /// The handler returned an error.
    Err,
    /// The handler panicked (the adapter reports it as a failure).
    Panic,
    /// The handler never returns (the job timeout or a crash ends it).
    Hang,
}

/// What the application saw, for invariant checks.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Jobs added (accepted by `add`), by id, with the producer that added them.
    pub added: BTreeMap<JobId, usize>,
    /// The producer each job was added by (kept when the job is abandoned): its outcomes
    /// must reach that producer (or its replacement), never another.
    pub owner: BTreeMap<JobId, usize>,
    /// Deliveries: job → attempts delivered.
    pub delivered: BTreeMap<JobId, Vec<u32>>,
    /// Work stream entries delivered with a job's first attempt: more than one means the
    /// job was enqueued twice (an add sent again was not recognized).
    pub first_entries: BTreeMap<JobId, BTreeSet<EntryId>>,
    /// Results the producers received: job → result bytes.
    pub completed: BTreeMap<JobId, Vec<u8>>,
    /// Jobs the producers saw dead-lettered.
    pub dead: BTreeSet<JobId>,
    /// Failure events (attempt numbers) the producers saw.
    pub failed: BTreeMap<JobId, Vec<u32>>,
    /// Adds Redis refused.
    pub add_failed: BTreeSet<JobId>,
    /// Final outcomes (completed, dead-lettered, add failed) the producers reported, per
    /// job: exactly one each.
    pub outcomes: BTreeMap<JobId, u32>,
    /// When each job may first run (its add's time plus its delay).
    pub due: BTreeMap<JobId, u64>,

    /// Deliveries before their job was due.
    pub early: Vec<(JobId, u64, u64)>,
    /// Adds of an id again while its job had not ended (a caller resending after an unknown
    /// outcome).
    pub re_added: u64,
    /// Jobs whose add Redis confirmed (`Accepted`).
    pub accepted: BTreeSet<JobId>,
    /// Jobs whose add was unconfirmed when their producer was replaced: they may be in
    /// Redis or not; if they run, they end once, like any other.
    pub abandoned: BTreeSet<JobId>,
    /// Adds refused while the queue was paused.
    pub refused_paused: u64,
    /// Jobs an add of which was refused while the queue was paused: ended, unless an add
    /// of theirs was accepted.
    pub refused: BTreeSet<JobId>,
    /// Producers replaced, workers shut down (drained or handing back).
    pub replaced: u64,
    /// Workers shut down.
    pub shut_down: u64,
    /// Add calls not answered yet: call → job and producer. Each is answered once
    /// ([`ProducerEvent::AddAnswered`]); those of a replaced producer are abandoned.
    pub open_calls: BTreeMap<u64, (JobId, usize)>,
    /// How many calls got each kind of answer.
    pub answers: BTreeMap<&'static str, u64>,
    /// Jobs whose add call was answered `Unavailable`: never queued, so never run.
    pub unavailable: BTreeSet<JobId>,
    /// Every engine error returned to the driver (must stay empty).
    pub errors: Vec<String>,
}

/// One worker slot: a machine (none while crashed) and its incarnation.
#[derive(Debug)]
struct Slot {
    queue: usize,
    worker: Option<Worker>,
    generation: u64,
    /// Jobs delivered to the application and not yet answered.
    running: Vec<EntryId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Producer(usize),
    Worker(usize, u64),
}

/// The world's settings.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    /// Queues.
    pub queues: usize,
    /// Producers per queue, each with its own id (`p<n>`), in any number sharing a queue.
    /// Producer `n` serves queue `n % queues`.
    pub producers_per_queue: usize,
    /// Workers per queue.
    pub workers_per_queue: usize,
    /// Worker concurrency.
    pub concurrency: u32,
    /// Retry policy of every worker.
    pub retry: RetryPolicy,
    /// Lease (ms).
    pub lease: Duration,
    /// Job timeout (ms).
    pub timeout: Option<Duration>,
    /// Faults on every command.
    pub faults: Faults,
    /// Adds and settles count as done only once a replica has them (`WAIT`), as
    /// `replicated` does: what a failover ([`Faults::failover`]) must not lose.
    pub replicated: bool,
    /// The seed of every random choice.
    pub seed: u64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            queues: 1,
            producers_per_queue: 1,
            workers_per_queue: 1,
            concurrency: 2,
            retry: RetryPolicy::new(
                3,
                Backoff::Exponential {
                    base: Duration::from_millis(100),
                    max: Duration::from_millis(1_000),
                    jitter: true,
                },
            ),
            lease: Duration::from_secs(3),
            timeout: Some(Duration::from_secs(10)),
            faults: Faults::default(),
            replicated: false,
            seed: 0,
        }
    }
}

/// Producers and workers over the model.
#[derive(Debug)]
pub struct World {
    /// The model behind its faulty network.
    pub net: Network,
    /// The virtual clock (ms).
    pub now: Instant,
    /// What the application saw.
    pub ledger: Ledger,
    producers: Vec<Producer>,
    slots: Vec<Slot>,
    in_flight: VecDeque<(Target, Command)>,
    sealers: Vec<Sealer>,
    cfg: WorldConfig,
    rng: SeededRandom,
    next_job: u64,
    next_call: u64,
    /// The clock went back at some point: due times are no longer comparable.
    jumped_back: bool,
}

/// The result a handler returns for a job (checked when it reaches the producer).
#[must_use]
pub fn result_of(job: &JobId) -> Vec<u8> {
    format!("result of {job}").into_bytes()
}

/// The trace context a job is added with (`span` 1: the producer's span) or settled with
/// (`span` 2: the worker's): two jobs in three carry one, so both paths run.
#[must_use]
pub fn trace_of(job: &JobId, span: u8) -> Option<TraceContext> {
    let n = job.0.trim_start_matches("job-").parse::<u64>().ok()?;
    if n % 3 == 0 {
        return None;
    }
    let mut trace_id = [0xee; 16];
    trace_id[..8].copy_from_slice(&n.to_le_bytes());
    TraceContext::new(trace_id, [span; 8], 1)
}

impl World {
    /// A world at a realistic wall-clock time.
    #[must_use]
    pub fn new(cfg: WorldConfig) -> Self {
        let now = Instant::from_unix_ms(1_700_000_000_000);
        let mut rng = SeededRandom::new(cfg.seed);
        let sealers: Vec<Sealer> = (0..cfg.queues)
            .map(|q| Sealer::new(Keyring::new(Key::from_bytes(KeyId(1), &[q as u8 + 1; 32]))))
            .collect();
        let producers = (0..cfg.queues * cfg.producers_per_queue.max(1))
            .filter_map(|n| {
                let q = n % cfg.queues;
                let cfg = producer_config(n, q, 0, cfg.replicated);
                Producer::new(cfg, sealers[q].clone(), now, &mut rng).ok()
            })
            .collect();
        let mut world = Self {
            net: Network::new(Sim::new(now), cfg.faults, cfg.seed ^ 0x5EED),
            now,
            ledger: Ledger::default(),
            producers,
            slots: Vec::new(),
            in_flight: VecDeque::new(),
            sealers,
            rng,
            next_job: 0,
            next_call: 0,
            jumped_back: false,
            cfg,
        };
        for q in 0..world.cfg.queues {
            for _ in 0..world.cfg.workers_per_queue {
                world.slots.push(Slot {
                    queue: q,
                    worker: None,
                    generation: 0,
                    running: Vec::new(),
                });
                world.restart(world.slots.len() - 1);
            }
        }
        world.pump();
        world
    }

    fn worker_config(&self, queue: usize, slot: usize, generation: u64) -> WorkerConfig {
        let mut cfg = WorkerConfig::new(&format!("q{queue}"), &format!("w{slot}-{generation}"))
            .concurrency(self.cfg.concurrency)
            .retry(self.cfg.retry)
            .lease(self.cfg.lease)
            .block(None)
            .timeout(self.cfg.timeout);
        cfg.replicas = self.cfg.replicated.then_some(REPLICAS);
        cfg
    }

    /// Number of producers (producer `n` serves queue `n % queues`).
    #[must_use]
    pub fn producers(&self) -> usize {
        self.producers.len()
    }

    /// Number of worker slots.
    #[must_use]
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Commands emitted and not yet run.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The worker in `slot` crashes: its state is gone, its pending entries stay in Redis,
    /// its commands not yet run are lost.
    pub fn crash(&mut self, slot: usize) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.worker = None;
        s.running.clear();
        self.in_flight
            .retain(|(t, _)| !matches!(t, Target::Worker(i, _) if *i == slot));
    }

    /// The worker in `slot` starts again (a new consumer name, as a new process would).
    pub fn restart(&mut self, slot: usize) {
        let Some(s) = self.slots.get(slot) else {
            return;
        };
        if s.worker.is_some() {
            return;
        }
        let (queue, generation) = (s.queue, s.generation + 1);
        let wc = self.worker_config(queue, slot, generation);
        match Worker::new(wc, self.sealers[queue].clone(), self.now, &mut self.rng) {
            Ok(w) => {
                let s = &mut self.slots[slot];
                s.worker = Some(w);
                s.generation = generation;
            }
            Err(e) => self.ledger.errors.push(format!("worker config: {e}")),
        }
    }

    /// The application adds a job through `producer`, due after `delay`.
    pub fn add(&mut self, producer: usize, delay: Duration) {
        if producer >= self.producers.len() {
            return;
        }
        self.next_job += 1;
        let job = AddJob {
            id: Some(JobId(format!("job-{}", self.next_job))),
            title: "t".into(),
            session_id: "s".into(),
            payload: self.next_job.to_le_bytes().to_vec(),
            delay,
            // Ids are unique: half the adds take the fresh (unchecked) path on first send.
            generated_id: self.next_job % 2 == 0,
            trace: trace_of(&JobId(format!("job-{}", self.next_job)), 1),
        };
        let id = self.call(producer, job);
        self.ledger
            .due
            .insert(id.clone(), (self.now + delay).unix_ms());
        self.ledger.owner.insert(id.clone(), producer);
        self.ledger.added.insert(id, producer);
        self.pump();
    }

    /// An add call of `job` through `producer`, with a deadline drawn at random (some pass
    /// before Redis answers, some never); its answer is checked when it comes.
    fn call(&mut self, producer: usize, job: AddJob) -> JobId {
        self.next_call += 1;
        let call = self.next_call;
        let wait = [100, 1_000, 10_000, 3_600_000][(self.rng.next_u64() % 4) as usize];
        let deadline = self.now.plus_ms(wait);
        let p = &mut self.producers[producer];
        let id = p.add_call(self.now, Call(call), job, deadline);
        self.ledger.open_calls.insert(call, (id.clone(), producer));
        id
    }

    /// The application adds again, through `producer`, the id of a job it added that has
    /// not ended (number `pick` of those), as a caller does after an unknown outcome: it
    /// must not run twice, and it still ends once.
    pub fn add_again(&mut self, producer: usize, pick: usize) {
        let open: Vec<JobId> = self
            .ledger
            .added
            .iter()
            .filter(|(j, q)| {
                let l = &self.ledger;
                **q == producer
                    && !l.completed.contains_key(*j)
                    && !l.dead.contains(*j)
                    && !l.add_failed.contains(*j)
            })
            .map(|(j, _)| j.clone())
            .collect();
        if producer >= self.producers.len() || open.is_empty() {
            return;
        }
        let id = open[pick % open.len()].clone();
        let n = id.0.trim_start_matches("job-").parse::<u64>().unwrap_or(0);
        let job = AddJob {
            trace: trace_of(&id, 1),
            id: Some(id),
            title: "t".into(),
            session_id: "s".into(),
            payload: n.to_le_bytes().to_vec(),
            delay: Duration::ZERO,
            generated_id: false,
        };
        // This add is due now: whichever add lands first sets when the job runs.
        let now = self.now.unix_ms();
        let id = self.call(producer, job);
        // A caller told `Unavailable` may add the id again: then it runs, once.
        self.ledger.unavailable.remove(&id);
        self.ledger.re_added += 1;
        self.ledger.due.entry(id).and_modify(|d| *d = (*d).min(now));
        self.pump();
    }

    /// Pauses (in Redis: adds are refused, no job starts) or resumes the queue of
    /// `producer`, through it.
    pub fn pause(&mut self, producer: usize, paused: bool) {
        if let Some(p) = self.producers.get_mut(producer) {
            p.set_paused(self.now, paused);
        }
        self.pump();
    }

    /// Whether job `job` ended: completed, dead, its add failed, or refused while paused
    /// (and never accepted).
    fn ended(&self, job: &JobId) -> bool {
        let l = &self.ledger;
        l.completed.contains_key(job)
            || l.dead.contains(job)
            || l.add_failed.contains(job)
            || l.unavailable.contains(job)
            || self.never_queued(job)
    }

    /// Whether an add of `job` was refused while the queue was paused and none was
    /// accepted: it was never queued.
    fn never_queued(&self, job: &JobId) -> bool {
        self.ledger.refused.contains(job) && !self.ledger.accepted.contains(job)
    }

    /// `producer` is replaced (its process died; another takes over under its id): its
    /// state and its commands not yet run are gone; the new one reads every event still in
    /// its stream, so it gets the outcomes its predecessor was owed. Adds its predecessor
    /// had not seen confirmed are abandoned (their callers never heard).
    pub fn replace_producer(&mut self, producer: usize) {
        if producer >= self.producers.len() {
            return;
        }
        self.in_flight
            .retain(|(t, _)| !matches!(t, Target::Producer(i) if *i == producer));
        let q = producer % self.cfg.queues;
        // A new instance: its own token, so that it takes the id over.
        let pc = producer_config(producer, q, self.ledger.replaced + 1, self.cfg.replicated);
        match Producer::new(pc, self.sealers[q].clone(), self.now, &mut self.rng) {
            Ok(p) => self.producers[producer] = p,
            Err(e) => return self.ledger.errors.push(format!("producer config: {e}")),
        }
        let l = &mut self.ledger;
        let unconfirmed: Vec<JobId> = l
            .added
            .iter()
            .filter(|(j, q)| {
                **q == producer && !l.accepted.contains(*j) && !l.outcomes.contains_key(*j)
            })
            .map(|(j, _)| j.clone())
            .collect();
        for job in unconfirmed {
            l.added.remove(&job);
            l.abandoned.insert(job);
        }
        // Their callers never hear (the process died).
        l.open_calls.retain(|_, (_, p)| *p != producer);
        // The new producer may surface again outcomes its predecessor surfaced (events it
        // read and had not trimmed yet): one final outcome per job per producer.
        let added = &l.added;
        let other_queue = |j: &JobId| added.get(j).is_some_and(|q| *q != producer);
        l.outcomes.retain(|j, _| other_queue(j));
        l.failed.retain(|j, _| other_queue(j));
        l.replaced += 1;
        self.pump();
    }

    /// The worker in `slot` shuts down: it stops reading and lets its running jobs finish
    /// until its deadline, 5 s away (then hands back those still running), or hands them
    /// back to the queue at once (`hand_back`: a deadline of now); once `Drained`, its
    /// process exits (restart it to have a worker there again).
    pub fn shut_down(&mut self, slot: usize, hand_back: bool) {
        let now = self.now;
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let Some(w) = &mut s.worker else { return };
        let deadline = if hand_back {
            now
        } else {
            now + Duration::from_secs(5)
        };
        w.shut_down(now, deadline);
        self.ledger.shut_down += 1;
        self.pump();
    }

    /// The virtual clock moves by `by` (may be a jump); every machine sees it.
    pub fn advance(&mut self, by: Duration) {
        self.set_time(self.now + by);
    }

    /// Sets the clock of the machines and of the model (a jump back is allowed).
    pub fn set_time(&mut self, now: Instant) {
        self.jumped_back |= now < self.now;
        self.now = now;
        self.net.sim.set_time(now);
        for p in &mut self.producers {
            if let Err(e) = p.handle_timeout(now) {
                self.ledger.errors.push(format!("timeout: {e}"));
            }
        }
        for s in &mut self.slots {
            if let Some(w) = &mut s.worker {
                if let Err(e) = w.handle_timeout(now) {
                    self.ledger.errors.push(format!("timeout: {e}"));
                }
            }
        }
        self.pump();
    }

    /// The earliest timer of any machine.
    #[must_use]
    pub fn next_timeout(&self) -> Option<Instant> {
        let p = self.producers.iter().filter_map(Producer::poll_timeout);
        let w = self
            .slots
            .iter()
            .filter_map(|s| s.worker.as_ref().and_then(Worker::poll_timeout));
        p.chain(w).min()
    }

    /// What a driver does between inputs: every machine whose timer is due gets
    /// `handle_timeout(now)`, and everything is drained; after that, every timer must lie
    /// ahead (a timer not later than now would wake its driver again and again, or hides
    /// work the machine is not doing): an engine error names the machine otherwise.
    pub fn fire_due_timers(&mut self) {
        let now = self.now;
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        for p in &mut self.producers {
            if due(p.poll_timeout()) {
                if let Err(e) = p.handle_timeout(now) {
                    self.ledger.errors.push(format!("timeout: {e}"));
                }
            }
        }
        for s in &mut self.slots {
            if let Some(w) = &mut s.worker {
                if due(w.poll_timeout()) {
                    if let Err(e) = w.handle_timeout(now) {
                        self.ledger.errors.push(format!("timeout: {e}"));
                    }
                }
            }
        }
        self.pump();
        for who in self.due_timers() {
            self.ledger
                .errors
                .push(format!("stale timer at {now:?}: {who}"));
        }
    }

    /// The machines whose timer is due (not later than now): each machine, the timers due
    /// by name, and its state.
    fn due_timers(&self) -> Vec<String> {
        let now = self.now;
        let producers = self.producers.iter().enumerate().filter_map(|(i, p)| {
            let due: Vec<_> = p.timers().into_iter().filter(|t| t.1 <= now).collect();
            (!due.is_empty()).then(|| format!("producer {i}, {due:?} due: {p:?}"))
        });
        let workers = self.slots.iter().enumerate().filter_map(|(i, s)| {
            let w = s.worker.as_ref()?;
            let due: Vec<_> = w.timers().into_iter().filter(|t| t.1 <= now).collect();
            (!due.is_empty()).then(|| format!("worker {i}, {due:?} due: {w:?}"))
        });
        producers.chain(workers).collect()
    }

    /// Runs the in-flight command number `pick` (modulo their count) and feeds its reply.
    pub fn deliver(&mut self, pick: usize) {
        if self.in_flight.is_empty() {
            return;
        }
        let i = pick % self.in_flight.len();
        // Within one machine, commands run in the order they were sent.
        let target = self.in_flight[i].0;
        let Some(first) = self.in_flight.iter().position(|(t, _)| *t == target) else {
            return;
        };
        let Some((target, cmd)) = self.in_flight.remove(first) else {
            return;
        };
        let reply = self.net.send(&cmd);
        self.feed(target, cmd, reply);
        self.pump();
    }

    fn feed(&mut self, target: Target, cmd: Command, reply: Reply) {
        let now = self.now;
        let result = match target {
            Target::Producer(i) => self.producers[i]
                .handle_reply(now, cmd.op, reply)
                .map_err(|e| e.to_string()),
            Target::Worker(i, generation) => match &mut self.slots[i] {
                Slot {
                    worker: Some(w),
                    generation: g,
                    ..
                } if *g == generation => w
                    .handle_reply(now, cmd.op, reply)
                    .map_err(|e| e.to_string()),
                // The machine that sent it crashed: the reply goes nowhere.
                _ => Ok(()),
            },
        };
        if let Err(e) = result {
            self.ledger.errors.push(format!("reply: {e}"));
        }
    }

    /// The application answers the running job number `pick` of worker `slot`.
    pub fn answer(&mut self, slot: usize, pick: usize, answer: Answer) {
        let now = self.now;
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.running.is_empty() || answer == Answer::Hang {
            return;
        }
        let entry = s.running.remove(pick % s.running.len());
        let Some(w) = &mut s.worker else { return };
        let job = w.job_id(entry);
        let result = match (answer, job) {
            (Answer::Ok, Some(job)) => {
                let trace = trace_of(&job, 2);
                w.complete_traced(now, entry, &result_of(&job), trace.as_ref())
            }
            (Answer::Err, Some(job)) => {
                let trace = trace_of(&job, 2);
                w.fail_traced(now, entry, "handler error", trace.as_ref())
            }
            (Answer::Err, None) => w.fail(now, entry, "handler error"),
            (Answer::Panic, _) => w.fail(now, entry, "handler panicked: boom"),
            // Timed out or lost meanwhile: the answer is refused, as the adapter would see.
            _ => Ok(()),
        };
        if let Err(e) = result {
            if !matches!(e, crate::worker::WorkerError::NotRunning(_)) {
                self.ledger.errors.push(format!("answer: {e}"));
            }
        }
        self.pump();
    }

    /// Drains every machine's commands and events.
    pub fn pump(&mut self) {
        for (i, p) in self.producers.iter_mut().enumerate() {
            while let Some(cmd) = p.poll_command() {
                self.in_flight.push_back((Target::Producer(i), cmd));
            }
            while let Some(ev) = p.poll_event() {
                record_producer_event(&mut self.ledger, i, ev);
            }
        }
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(w) = &mut s.worker else { continue };
            while let Some(cmd) = w.poll_command() {
                self.in_flight
                    .push_back((Target::Worker(i, s.generation), cmd));
            }
            let mut exited = false;
            while let Some(ev) = w.poll_event() {
                match ev {
                    WorkerEvent::Job(d) => {
                        // Deliveries come from the reply of the command that just ran: the
                        // queue was not paused when it read them.
                        if self.net.sim.exists(&w.keys().paused) {
                            self.ledger
                                .errors
                                .push(format!("{} started while its queue is paused", d.job.id));
                        }
                        if d.trace != trace_of(&d.job.id, 1) {
                            self.ledger
                                .errors
                                .push(format!("{}: delivered with trace {:?}", d.job.id, d.trace));
                        }
                        let due = self.ledger.due.get(&d.job.id).copied().unwrap_or(0);
                        let now_ms = self.now.unix_ms();
                        if d.job.attempt == 1 && now_ms < due && !self.jumped_back {
                            self.ledger.early.push((d.job.id.clone(), due, now_ms));
                        }
                        self.ledger
                            .delivered
                            .entry(d.job.id.clone())
                            .or_default()
                            .push(d.job.attempt);
                        if d.job.attempt == 1 {
                            self.ledger
                                .first_entries
                                .entry(d.job.id.clone())
                                .or_default()
                                .insert(d.entry);
                        }
                        s.running.push(d.entry);
                    }
                    WorkerEvent::TimedOut { entry } | WorkerEvent::Superseded { entry, .. } => {
                        s.running.retain(|e| *e != entry);
                    }
                    // The application's answers to handed-back jobs are discarded.
                    WorkerEvent::HandedBack { entries } => {
                        s.running.retain(|e| !entries.contains(e));
                    }
                    WorkerEvent::Drained => exited = true,
                    _ => {}
                }
            }
            if exited {
                s.worker = None;
                s.running.clear();
            }
        }
    }

    /// Whether every added job ended (completed or dead-lettered, as its producer saw it).
    #[must_use]
    pub fn all_settled(&self) -> bool {
        self.ledger.added.keys().all(|j| self.ended(j))
    }

    /// Heals the world (no faults, every worker up) and runs it until every job ended and
    /// nothing is in flight, answering every delivery with `Ok`; false if `max_steps` did
    /// not suffice.
    pub fn quiesce(&mut self, max_steps: usize) -> bool {
        self.net.faults = Faults::default();
        for slot in 0..self.slots.len() {
            self.restart(slot);
        }
        // Every queue runs again: each producer's last word is a resume (a pause of one
        // still out lands before it; one sent again after a loss is dropped).
        for p in 0..self.producers.len() {
            self.pause(p, false);
        }
        self.pump();
        for _ in 0..max_steps {
            for slot in 0..self.slots.len() {
                // A worker that drained and exited is started again (and drained below).
                self.restart(slot);
                while !self.slots[slot].running.is_empty() {
                    self.answer(slot, 0, Answer::Ok);
                }
            }
            self.pump();
            if !self.in_flight.is_empty() {
                self.deliver(0);
                continue;
            }
            // Jobs abandoned with a replaced producer may be in Redis still: run them too.
            if self.all_settled() && self.idle() && self.keys_drained().is_ok() {
                return true;
            }
            // After a full drain every timer lies ahead: a machine whose `poll_timeout` is
            // not later than now would be woken again and again for nothing (or hides work
            // it is not doing). The clock is not forced past such a timer: it is an error.
            let next = self
                .next_timeout()
                .unwrap_or(self.now + Duration::from_millis(100));
            if next <= self.now {
                let who = self.due_timers();
                self.ledger.errors.push(format!(
                    "stale timer at {next:?}, now {:?}: {who:?}",
                    self.now
                ));
                return false;
            }
            self.set_time(next);
        }
        false
    }

    fn idle(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.worker.as_ref().is_none_or(|w| w.running() == 0))
            && self
                .producers
                .iter()
                .all(|p| p.pending_adds() == 0 && !p.has_unsent())
    }

    /// The invariants that hold at every step: no engine error, attempts within the limit,
    /// no job both completed and dead, nothing completed that was never added.
    pub fn check_step(&self) -> Result<(), String> {
        let l = &self.ledger;
        let max = self.cfg.retry.max_attempts;
        if let Some(e) = l.errors.first() {
            return Err(format!("engine error: {e} (of {})", l.errors.len()));
        }
        for (job, attempts) in &l.delivered {
            if attempts.iter().any(|a| *a < 1 || *a > max) {
                return Err(format!("{job}: attempts {attempts:?} beyond {max}"));
            }
        }
        for (job, attempts) in &l.delivered {
            // A reclaim delivers the same attempt again; a retry the next one.
            if attempts.windows(2).any(|w| w[1] < w[0] || w[1] > w[0] + 1) {
                return Err(format!(
                    "{job}: attempts delivered out of order: {attempts:?}"
                ));
            }
        }
        if let Some((job, n)) = l.outcomes.iter().find(|(_, n)| **n > 1) {
            return Err(format!("{job}: {n} final outcomes"));
        }
        if let Some(job) = l.unavailable.iter().find(|j| {
            l.delivered.contains_key(*j) || l.accepted.contains(*j) || l.outcomes.contains_key(*j)
        }) {
            return Err(format!(
                "{job} was answered Unavailable, yet it reached Redis"
            ));
        }
        if let Some((job, due, at)) = l.early.first() {
            return Err(format!(
                "{job} delivered at {at}, before it was due at {due}"
            ));
        }
        // A worker can read a job before the write that queued it reached the replica (a
        // promotion, which is not replicated, or an add whose `WAIT` timed out): undone by
        // a failover, that write is made again (the add is sent again, the job promoted
        // again), and the job, read from its first entry, runs again from a second (its
        // first run's settle finds the entry gone; its outcome reaches its producer once,
        // which the final-outcome check holds). Without failovers, never twice.
        if self.net.failovers == 0 {
            if let Some((job, entries)) = l.first_entries.iter().find(|(_, e)| e.len() > 1) {
                return Err(format!("{job} enqueued twice: entries {entries:?}"));
            }
        }
        for (job, attempts) in &l.failed {
            if attempts.windows(2).any(|w| w[1] <= w[0]) {
                return Err(format!(
                    "{job}: failures reported out of order: {attempts:?} (delivered {:?}, now {:?})",
                    l.delivered.get(job),
                    self.now
                ));
            }
            if attempts.iter().any(|a| *a >= max) {
                return Err(format!("{job} retried after attempt {attempts:?} of {max}"));
            }
        }
        for job in l.completed.keys() {
            if l.dead.contains(job) {
                return Err(format!("{job} both completed and dead"));
            }
            if !l.added.contains_key(job) && !l.abandoned.contains(job) {
                return Err(format!("{job} completed but never added"));
            }
        }
        Ok(())
    }

    /// The invariants at quiescence: every job ended, and Redis holds nothing of them (the
    /// work streams and pending lists are empty; no id marker, delayed job or payload).
    pub fn check_quiescent(&self) -> Result<(), String> {
        self.check_step()?;
        let l = &self.ledger;
        if let Some(job) = l.added.keys().find(|j| {
            !(l.completed.contains_key(*j)
                || l.dead.contains(*j)
                || l.unavailable.contains(*j)
                || self.never_queued(j))
        }) {
            return Err(format!("{job} lost: neither completed nor dead"));
        }
        if let Some((call, (job, p))) = l.open_calls.first_key_value() {
            return Err(format!(
                "add call {call} of {job} (producer {p}) never answered"
            ));
        }
        self.keys_drained()
    }

    /// What keeps the world from quiescence (for failure reports).
    #[must_use]
    pub fn why_not_quiescent(&self) -> String {
        let l = &self.ledger;
        let open: Vec<&JobId> = l.added.keys().filter(|j| !self.ended(j)).collect();
        format!(
            "jobs not ended {open:?}; idle {}; in flight {}; keys {:?}; workers {:?}",
            self.idle(),
            self.in_flight.len(),
            self.keys_drained(),
            self.slots
                .iter()
                .map(|s| (s.worker.is_some(), s.running.len()))
                .collect::<Vec<_>>()
        )
    }

    /// Whether Redis holds nothing of any job: the work streams and pending lists are
    /// empty; no id marker, delayed job or payload is left.
    fn keys_drained(&self) -> Result<(), String> {
        for q in 0..self.cfg.queues {
            let keys = QueueKeys::new("dl", &format!("q{q}")).map_err(|e| e.to_string())?;
            if let Some(jobs) = self.net.sim.stream(&keys.jobs) {
                if !jobs.entries.is_empty() {
                    return Err(format!("q{q}: work stream holds {:?}", jobs.entries.keys()));
                }
                if jobs.groups.values().any(|g| !g.pel.is_empty()) {
                    return Err(format!("q{q}: pending list not empty"));
                }
            }
            for key in [&keys.ids, &keys.delayed, &keys.payloads] {
                if let Some(left) = self.net.sim.get(key) {
                    return Err(format!("{key} left behind: {left:?}"));
                }
            }
        }
        // Every producer read its outcomes and trimmed them.
        for p in &self.producers {
            let events = &p.producer_keys().events;
            if let Some(s) = self.net.sim.stream(events) {
                if !s.entries.is_empty() {
                    return Err(format!("{events}: {} events left", s.entries.len()));
                }
            }
        }
        Ok(())
    }

    /// A random choice for drivers.
    pub fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }
}

/// Producer `n` (of queue `queue`), its `instance`-th instance: id `p<n>`, polling reads.
/// What a replicated add or settle asks for.
const REPLICAS: crate::command::Replicas = crate::command::Replicas {
    count: 1,
    timeout: Duration::from_millis(100),
};

fn producer_config(n: usize, queue: usize, instance: u64, replicated: bool) -> ProducerConfig {
    let mut cfg = ProducerConfig::new(&format!("q{queue}"))
        .producer(&format!("p{n}"))
        .block(None);
    cfg.token = format!("{n}.{instance}");
    cfg.replicas = replicated.then_some(REPLICAS);
    // Half the producers answer their callers at once while Redis is away.
    cfg.fail_fast = n % 2 == 1;
    cfg
}

fn record_producer_event(ledger: &mut Ledger, producer: usize, ev: ProducerEvent) {
    if let ProducerEvent::Completed { job, .. }
    | ProducerEvent::DeadLettered { job, .. }
    | ProducerEvent::Failed { job, .. } = &ev
    {
        if let Some(owner) = ledger.owner.get(job).filter(|o| **o != producer) {
            ledger.errors.push(format!(
                "{job} of producer {owner} reached producer {producer}"
            ));
        }
    }
    match ev {
        ProducerEvent::Completed {
            job, result, trace, ..
        } => {
            if result != result_of(&job) {
                ledger.errors.push(format!("wrong result for {job}"));
            }
            if trace != trace_of(&job, 2) {
                ledger
                    .errors
                    .push(format!("{job}: result with trace {trace:?}"));
            }
            *ledger.outcomes.entry(job.clone()).or_default() += 1;
            ledger.completed.insert(job, result);
        }
        ProducerEvent::DeadLettered { job, .. } => {
            *ledger.outcomes.entry(job.clone()).or_default() += 1;
            ledger.dead.insert(job);
        }
        ProducerEvent::Failed { job, attempt, .. } => {
            ledger.failed.entry(job).or_default().push(attempt);
        }
        ProducerEvent::AddFailed { job, .. } => {
            *ledger.outcomes.entry(job.clone()).or_default() += 1;
            ledger.add_failed.insert(job);
        }
        ProducerEvent::AddPaused { job } => {
            ledger.refused_paused += 1;
            ledger.refused.insert(job);
        }
        ProducerEvent::Accepted {
            job,
            status: AddStatus::Added(_) | AddStatus::Delayed | AddStatus::AlreadyQueued,
        } => {
            ledger.accepted.insert(job);
        }
        ProducerEvent::BadEvent { event, reason } => {
            ledger.errors.push(format!("bad event {event}: {reason}"));
        }
        ProducerEvent::AddAnswered { call, job, answer } => answered(ledger, call, job, answer),
        _ => {}
    }
}

/// Add call `call` of `job` got `answer`: once, and consistent with the job.
fn answered(ledger: &mut Ledger, call: Call, job: JobId, answer: AddAnswer) {
    match ledger.open_calls.remove(&call.0) {
        Some((j, _)) if j == job => {}
        Some((j, _)) => ledger
            .errors
            .push(format!("call {} of {j} answered for {job}", call.0)),
        None => ledger.errors.push(format!(
            "call {} of {job} answered twice or unknown",
            call.0
        )),
    }
    let kind = match answer {
        AddAnswer::Taken => "taken",
        AddAnswer::Ended(JobEnd::Completed(r)) => {
            if r != result_of(&job) {
                ledger
                    .errors
                    .push(format!("{job}: ended with a wrong result"));
            }
            "ended"
        }
        AddAnswer::Ended(_) => "ended",
        AddAnswer::Unavailable => {
            ledger.unavailable.insert(job);
            "unavailable"
        }
        AddAnswer::Unconfirmed => "unconfirmed",
        AddAnswer::Paused => "paused",
        AddAnswer::Failed(_) => "failed",
        AddAnswer::Refused(e) => {
            ledger.errors.push(format!("add of {job} refused: {e}"));
            "refused"
        }
    };
    *ledger.answers.entry(kind).or_default() += 1;
}
