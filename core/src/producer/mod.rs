//! The producer machine (Sockethub's JobQueue): seals jobs and batches them into adds, and
//! reads the queue's results and failures from a cursor that survives disconnections.
//!
//! Drive it like every machine of the core: after each input (`add`, `handle_reply`,
//! `handle_timeout`, ...), drain `poll_command` and `poll_event` until `None`, and call
//! `handle_timeout` at `poll_timeout`.
//!
//! - Adds are idempotent by job id while the job lives: after an unknown outcome the same
//!   sealed jobs are sent again, and a job that did arrive the first time is reported as
//!   [`AddStatus::AlreadyQueued`], never enqueued twice.
//! - Results are read from the last event id seen (never `$`), so none is lost while the
//!   producer is away; surfaced events are deleted, and events nobody reads are trimmed
//!   by age.
//! - A caller who waits for its add ([`Producer::add_call`]) gets exactly one answer
//!   ([`ProducerEvent::AddAnswered`]) by its deadline: the rules are in [`AddAnswer`].

mod api;
mod calls;
mod dead;
mod peek;
mod usage;

pub use calls::{AddAnswer, Call, ENDED_GRACE_MS, ENDED_MAX, ENDED_MAX_BYTES, JobEnd};
pub use dead::{
    Ask, DeadLetter, DeadPage, DelayedWithdrawal, JobPlace, Request, RetryAll, Revival,
};
pub use peek::{EventKind, EventsCursor, PeekedEvent};
pub use usage::{EnvelopeSource, KeyUsagePage};

/// The producer's timers ([`Producer::timers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProducerTimer {
    /// A backoff after a failed round trip ends: what waits for it (unsent adds, requests,
    /// acknowledgements, a reachability probe) goes out.
    Backoff,
    /// The producer's registration is due to be refreshed (it promises to be back).
    Register,
    /// The earliest delayed job this producer knows of comes due.
    Promote,
    /// The next read of the producer's events, for a producer that polls them.
    ReadEvents,
    /// The earliest deadline of an add call still unanswered ([`Producer::add_call`]).
    AddDeadline,
    /// Read events have waited [`ProducerConfig::ack_delay`] for their acknowledgement.
    Ack,
}

pub use api::{
    ACK_BATCH, AddJob, AddStatus, ProducerConfig, ProducerError, ProducerEvent, QueueStats,
    Withdrawal,
};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::command::{Command, CommandKind, NewJob, OpId, Reply, fingerprint, is_transient_error};
use crate::envelope::{Context, Purpose, Sealer, outcome_detail};
use crate::job::{Instance, JobId, JobRecord};
use crate::naming::{ProducerKeys, QueueKeys};
use crate::random::{MachineRandom, Random};
use crate::retry::{POLL_INTERVAL_MS, ResendBackoff};
use crate::scaffold::{Ops, undrained};
use crate::time::{Duration, Instant, millis};
use crate::timers::Timers;

/// The most delayed jobs one promotion moves.
const PROMOTE_LIMIT: u32 = 256;
/// The most reported final outcomes a producer remembers (see `Producer::reported`).
const REPORTED_MAX: usize = 10_000;
/// How long a producer remembers a reported final outcome (ms): past a settle's resends
/// and a reclaim after a lease.
const REPORTED_MS: u64 = 15 * 60_000;
use crate::value::{EntryId, StreamEntry, Value, decode_read};

#[derive(Debug)]
enum InFlight {
    /// Jobs, whether they went as a fresh (MULTI/EXEC) add, and what else the producer
    /// knows of each add.
    Add(Vec<NewJob>, bool, Vec<AddMeta>),
    /// A read of events from the cursor of this epoch (see `Producer::epoch`).
    ReadEvents(u64),
    /// The events stream's last generated id (after a connection failure).
    EventsTail,
    AckEvents {
        through: Option<EntryId>,
        forget: Vec<String>,
        /// The cursor it checks, if any.
        checks: Option<EntryId>,
    },
    Stats,
    Destroy,
    Promote,
    Ping,
    Register,
    /// An operator's request: the command (sent again after an unknown outcome) and, for a
    /// revive, the letters that could not be re-sealed (answered `Unreadable`).
    Request(Request, CommandKind, Vec<EntryId>),
}

/// An add the producer holds: not sent yet, or sent and back after an unknown outcome.
#[derive(Debug)]
struct Unsent {
    job: NewJob,
    /// A new id, due now, never sent: the first send needs no duplicate check.
    fresh: bool,
    meta: AddMeta,
}

/// What the producer knows of one add beside the job it sends.
#[derive(Debug, Clone, Copy)]
struct AddMeta {
    /// Sent at least once: it may be in Redis, so it is never withdrawn as "not queued".
    sent: bool,
    /// Its id was generated for this add: no other add, here or anywhere, can have queued
    /// it. Only such an add, never sent, is known not to be in Redis.
    generated: bool,
    /// The instance sealed in the add's record: the outcomes of the job it queues are
    /// bound to it.
    instance: Instance,
    /// The caller's add call it answers ([`Producer::add_call`]), if any.
    call: Option<Call>,
}

/// The producer machine of one queue.
#[derive(Debug)]
pub struct Producer {
    cfg: ProducerConfig,
    keys: Arc<QueueKeys>,
    /// This producer's id and events stream.
    me: Arc<ProducerKeys>,
    /// The id marker of the jobs it adds: its id, or `w` when it reads no events.
    marker: Arc<str>,
    /// Redis confirmed its registration once: adds go (before, a job could end before a
    /// settle knew whom its outcome is for, and the outcome would be dropped).
    registered: bool,
    /// This instance's token in the queue's `owners`.
    token: Arc<str>,
    /// Another instance took the id over.
    superseded: bool,
    /// When it refreshes its registration next (ms).
    register_at: u64,
    sealer: Sealer,
    rng: MachineRandom,
    now_ms: u64,
    /// Redis said the queue is paused (or this producer paused it): adds go through the
    /// `enqueue` script, which refuses them while the pause holds, until one is taken.
    paused: bool,
    /// Adds to send.
    unsent: VecDeque<Unsent>,
    in_flight: Ops<InFlight>,
    cursor: EntryId,
    /// The first bytes of the `v` field of the event at the cursor, as read.
    cursor_seen: Arc<[u8]>,
    /// The furthest cursor an ack found intact (see [`CommandKind::AckEvents`]'s `check`).
    checked: EntryId,
    /// Bumped when the cursor goes back to the stream's start: replies of reads sent
    /// before (from the old cursor) are dropped.
    epoch: u64,
    next_read_ms: u64,
    /// The last events read found nothing: the next one may block.
    idle: bool,
    /// Every event up to this id has been read and surfaced: trimmed with the next ack.
    trim_through: Option<EntryId>,
    /// The last event read and surfaced.
    read_through: Option<EntryId>,
    /// The furthest trim sent (or to be sent).
    trimmed_through: Option<EntryId>,
    /// A connection failed: before the next events read, ask whether the events stream
    /// moved backwards (a failover lost its tail), and step the cursor back if it did.
    check_tail: bool,
    /// Final events of jobs whose markers wait for an outstanding add of theirs: the trim
    /// stops before the first of them, so that a replacement of this producer reads them
    /// again and forgets the markers if this one never does.
    held: BTreeMap<EntryId, String>,
    /// Adds not yet resolved, by job id: a job's marker is forgotten only when none is left.
    outstanding: HashMap<String, u32>,
    /// Jobs that ended while an add of theirs was outstanding: forgotten when it resolves.
    forget_later: HashSet<String>,
    /// Jobs whose markers go with the next events ack.
    forget: Vec<String>,
    /// When the waiting acknowledgement (a trim, markers to forget) is due: the first of
    /// it plus [`ProducerConfig::ack_delay`]; `None` while nothing waits.
    ack_at: Option<u64>,
    /// Events read since the last acknowledgement went.
    unacked: usize,
    /// An add of an id whose job ended here waits: the acknowledgement (which forgets the
    /// job's marker) goes first, at once.
    ack_first: bool,
    /// The acknowledgement goes without its delay: it forgets the marker of a job whose id
    /// someone may use again as soon as they see its end (a caller-chosen id, a dead
    /// letter an operator revives, a withdrawn job).
    ack_now: bool,
    /// Delayed jobs this producer withdrew whose tombstone (`x:<marker>`, which tells a
    /// resend of the withdrawal it was done) no ack has removed yet: a later withdrawal of
    /// one is answered `NotDelayed` here (the script would take it for the resend).
    tombstones: HashSet<String>,
    want_stats: bool,
    want_destroy: bool,
    /// `destroy` was called: adds are failed rather than sent (again).
    destroying: bool,
    /// `close` or `destroy` was called: new adds are refused (`QueueClosed`).
    closed: bool,
    events: VecDeque<ProducerEvent>,
    /// When adds, acks, stats and the like may go again after a failure.
    resend: ResendBackoff,
    /// When the events may be read again after a failure (a backoff of its own: a failed
    /// read never holds adds back, nor a failed add reads).
    reads: ResendBackoff,
    /// Whether the last reply was Redis' (not an unknown outcome).
    reachable: bool,
    /// Operators' requests not sent yet (or sent again after an unknown outcome).
    requests: VecDeque<(Request, CommandKind, Vec<EntryId>)>,
    next_request: u64,
    /// Due times of this producer's delayed jobs: it promotes them then (a worker promotes
    /// them too, but an idle worker runs no timer per delayed job it never saw).
    promote_at: BTreeSet<u64>,
    /// The instance each job this producer queued (and still waits for) was added with:
    /// an outcome bound to another instance is stale (an earlier job with the same id) and
    /// surfaces as a `BadEvent`. Forgotten when the job ends. With it, whether the caller
    /// chose the job's id (not generated): its end is acknowledged at once.
    awaited: HashMap<String, (Instance, bool)>,
    /// The jobs whose final outcome this instance reported, with their instance and when
    /// (at most [`REPORTED_MAX`], for [`REPORTED_MS`]): an event of such an instance that
    /// comes again (a failover undid the settle after this producer read its event, and
    /// the worker wrote it again) is stale, not a second outcome.
    reported: HashMap<String, Instance>,
    reported_order: VecDeque<(String, u64)>,
    /// The last failed attempt reported of each job that has not ended: a failure event
    /// of an attempt already reported is not reported again (a failover can undo a retry
    /// after this producer read its event; sent again, it writes the event again).
    /// Forgotten when the job ends.
    failures: HashMap<String, u32>,
    /// Jobs whose add the caller was told may be in Redis (`withdraw` answered
    /// `Unconfirmed`): the caller may add the id again, here or elsewhere, so no add of
    /// these goes unchecked (fresh) any more. Forgotten when no add of the job is left.
    unconfirmed: HashSet<String>,
    /// The add calls waiting for Redis, and the outcomes of jobs that ended lately.
    calls: calls::Calls,
}

impl Producer {
    /// A producer for `cfg.queue`, sealing with `sealer` (the queue's keyring), at `now`,
    /// with its own generator seeded from `rng` ([`MachineRandom`]: job ids, nonces).
    pub fn new(
        cfg: ProducerConfig,
        sealer: Sealer,
        now: Instant,
        rng: &mut (impl Random + ?Sized),
    ) -> Result<Self, ProducerError> {
        let now_ms = now.unix_ms();
        let keys = Arc::new(QueueKeys::new(&cfg.prefix, &cfg.queue)?);
        let me = Arc::new(ProducerKeys::new(&keys, &cfg.producer)?);
        let marker: Arc<str> = if cfg.read_events {
            me.id.as_str().into()
        } else {
            "w".into()
        };
        Ok(Self {
            keys,
            me,
            marker,
            // A producer that reads no events needs no registration.
            registered: !cfg.read_events,
            register_at: now_ms,
            token: cfg.token.as_str().into(),
            superseded: false,
            sealer,
            rng: MachineRandom::from_random(rng),
            now_ms,
            paused: false,
            unsent: VecDeque::new(),
            in_flight: Ops::default(),
            cursor: cfg.events_after,
            cursor_seen: Arc::from(&[][..]),
            checked: cfg.events_after,
            epoch: 0,
            next_read_ms: now_ms,
            idle: false,
            trim_through: None,
            read_through: None,
            trimmed_through: None,
            check_tail: false,
            held: BTreeMap::new(),
            outstanding: HashMap::new(),
            forget_later: HashSet::new(),
            forget: Vec::new(),
            ack_at: None,
            unacked: 0,
            ack_first: false,
            ack_now: false,
            tombstones: HashSet::new(),
            want_stats: false,
            want_destroy: false,
            destroying: false,
            closed: false,
            events: VecDeque::new(),
            resend: ResendBackoff::default(),
            reads: ResendBackoff::default(),
            reachable: true,
            requests: VecDeque::new(),
            next_request: 0,
            promote_at: BTreeSet::new(),
            awaited: HashMap::new(),
            reported: HashMap::new(),
            reported_order: VecDeque::new(),
            failures: HashMap::new(),
            unconfirmed: HashSet::new(),
            calls: calls::Calls::default(),
            cfg,
        })
    }

    /// The keys of the queue.
    #[must_use]
    pub fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    /// This producer's id and events stream.
    #[must_use]
    pub fn producer_keys(&self) -> &ProducerKeys {
        &self.me
    }

    /// Whether Redis has confirmed this producer's registration (adds wait for it).
    #[must_use]
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// The last event id seen: pass it as `events_after` to a replacement producer.
    #[must_use]
    pub fn cursor(&self) -> EntryId {
        self.cursor
    }

    /// Makes an operator's request ([`Ask`]) at `now`, as its method does.
    pub fn ask(&mut self, now: Instant, ask: Ask) -> Request {
        match ask {
            Ask::ReadDead(after, count) => self.read_dead(after, count),
            Ask::Revive(letters) => self.revive(&letters),
            Ask::DeleteDead(entries) => self.delete_dead(&entries),
            Ask::FindJob(job, limit) => self.find_job(&job, limit),
            Ask::Workers => self.request_workers(),
            Ask::PeekEvents(cursor, count) => self.peek_events(&cursor, count),
            Ask::TailLog(after, count, keep) => self.tail_log(after, count, keep),
            Ask::KeyUsage(source, after, offset, count) => {
                self.key_usage(source, after, offset, count)
            }
            Ask::Promote(job) => self.promote_job(&job),
            Ask::WithdrawDelayed(job) => self.withdraw_delayed(&job),
            Ask::SetPaused(paused) => self.set_paused(now, paused),
        }
    }

    /// Pauses the queue (`true`) or resumes it, in Redis, for every producer and worker of
    /// the queue in every process, at `now`; a `PauseSet` event follows once Redis holds
    /// it. While the queue is paused, adds end in `AddPaused` (whichever producer adds) and
    /// no worker starts a job (running jobs finish). A pause set elsewhere reaches this
    /// producer with its next add: an add sent unchecked before it knew is queued, and
    /// waits for the resume like every waiting job.
    pub fn set_paused(&mut self, now: Instant, paused: bool) -> Request {
        let now_ms = now.unix_ms();
        self.now_ms = now_ms;
        // Adds after this call go through the check (or unchecked again): Redis runs them
        // after the pause's write, as they go out after it.
        self.paused = paused;
        let kind = CommandKind::SetPaused {
            keys: self.keys.clone(),
            paused,
            now_ms,
        };
        self.request(kind, Vec::new())
    }

    /// This producer takes no new add (`QueueClosed`): it is going away (the adds it holds
    /// are still sent). Nothing changes in Redis.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Whether the queue was paused when Redis last told this producer (or it paused it).
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Withdraws an add of `job` that never left the producer and whose id was generated
    /// for it (the caller gave up waiting for Redis): only then is the job known not to be
    /// in Redis. An add that was sent, even once, is never withdrawn: it may be in Redis,
    /// and the producer keeps sending it until Redis answers (it lands once; see
    /// [`Withdrawal::Unconfirmed`]); nor is an add of a caller-chosen id (an earlier add,
    /// here or in another process, may have queued it): both are `Unconfirmed`.
    pub fn withdraw(&mut self, job: &JobId) -> Withdrawal {
        let sent = |u: &Unsent| u.job.id == *job && (u.meta.sent || !u.meta.generated);
        let in_flight = self.in_flight.any(|f| match f {
            InFlight::Add(jobs, ..) => jobs.iter().any(|j| j.id == *job),
            _ => false,
        });
        // Another add of the id (even one answered since) may have queued it.
        if in_flight || self.unsent.iter().any(sent) || self.unconfirmed.contains(&job.0) {
            // The caller may now add the id again (through the duplicate check, here or in
            // another process): an unchecked resend of this add could land after it.
            self.unconfirmed.insert(job.0.clone());
            return Withdrawal::Unconfirmed;
        }
        // The latest add of the job first (the earlier ones are older calls).
        let Some(pos) = self.unsent.iter().rposition(|u| u.job.id == *job) else {
            return Withdrawal::Answered;
        };
        self.unsent.remove(pos);
        self.resolved(&job.0);
        Withdrawal::NotSent
    }

    /// Whether an add of `job` awaits Redis' answer (sent or not).
    #[must_use]
    pub fn is_outstanding(&self, job: &JobId) -> bool {
        self.outstanding.contains_key(&job.0)
    }

    /// Whether Redis answered the last command (false after an unknown outcome, until a
    /// reply comes: while nothing else is to be sent, the producer sends a `PING` after
    /// its backoff to find out). An adapter's "fail fast" mode refuses adds while false.
    #[must_use]
    pub fn is_reachable(&self) -> bool {
        self.reachable
    }

    /// Whether something waits to be sent (an add, a trim of read events, markers to
    /// forget): a producer that is backing off holds it until its timer, and an
    /// acknowledgement waits for its delay ([`ProducerConfig::ack_delay`]).
    #[must_use]
    pub fn has_unsent(&self) -> bool {
        !self.unsent.is_empty()
            || self.trim_through.is_some()
            || !self.forget.is_empty()
            || !self.requests.is_empty()
    }

    /// Adds not yet confirmed by Redis.
    #[must_use]
    pub fn pending_adds(&self) -> usize {
        self.unsent.len()
            + self
                .in_flight
                .values()
                .map(|f| match f {
                    InFlight::Add(jobs, ..) => jobs.len(),
                    _ => 0,
                })
                .sum::<usize>()
    }

    fn check_drained(&self) -> Result<(), ProducerError> {
        let bound = 4 * (self.cfg.max_batch_jobs + self.cfg.events_count as usize);
        undrained(self.events.len(), bound).map_err(ProducerError::Undrained)
    }

    /// Seals a job and queues it for the next add command; returns its id. What became of
    /// it follows as events of the job (`Accepted`, `AddFailed`, `AddPaused`); a caller who
    /// waits for an answer of its own, by a deadline, uses [`Producer::add_call`].
    pub fn add(&mut self, now: Instant, job: AddJob) -> Result<JobId, ProducerError> {
        self.add_for(now, job, None)
    }

    /// Adds a job for a caller who waits for the answer: `call` numbers this add (unique
    /// among the open calls), and exactly one [`ProducerEvent::AddAnswered`] of it follows
    /// (it may be among the next events), at `deadline` at the latest; the job's id is
    /// chosen here when it has none, and returned. See [`AddAnswer`] for the answers: an
    /// add of an id whose job ended lately is answered with its end and not sent; with
    /// [`ProducerConfig::fail_fast`], adds are answered at once while Redis cannot be
    /// reached, and the open calls when it turns out to be so.
    pub fn add_call(
        &mut self,
        now: Instant,
        call: Call,
        mut job: AddJob,
        deadline: Instant,
    ) -> JobId {
        let now_ms = now.unix_ms();
        self.now_ms = now_ms;
        let id = job.assign_id(now, &mut self.rng);
        if !job.generated_id {
            if let Some(end) = self.calls.ended_lately(&id.0, now_ms) {
                self.answer(call, &id.0, AddAnswer::Ended(end));
                return id;
            }
        }
        let away = self.cfg.fail_fast && !self.reachable;
        if away && job.generated_id {
            // A new id: nothing of the job can be in Redis.
            self.answer(call, &id.0, AddAnswer::Unavailable);
            return id;
        }
        match self.add_for(now, job, Some(call)) {
            Err(e) => self.answer(call, &id.0, AddAnswer::Refused(e)),
            // A caller-chosen id may be queued already (an earlier add): the add goes when
            // Redis is back, and the caller hears at once.
            Ok(_) if away => self.answer(call, &id.0, AddAnswer::Unconfirmed),
            Ok(_) => self.calls.open(call, &id.0, deadline.unix_ms()),
        }
        id
    }

    /// How many add calls await their answer.
    #[must_use]
    pub fn open_calls(&self) -> usize {
        self.calls.len()
    }

    fn answer(&mut self, call: Call, job: &str, answer: AddAnswer) {
        self.events.push_back(ProducerEvent::AddAnswered {
            call,
            job: JobId(job.to_owned()),
            answer,
        });
    }

    /// Redis answered the add of `job` made for `meta`'s call, if it still waits: `answer`
    /// (`Taken` becomes `Ended` when the job ended meanwhile).
    fn answer_add(&mut self, meta: &AddMeta, job: &str, answer: AddAnswer) {
        let Some(call) = meta.call else {
            return;
        };
        let Some((_, end)) = self.calls.close(call) else {
            return;
        };
        let answer = match (answer, end) {
            (AddAnswer::Taken, Some(end)) => AddAnswer::Ended(end),
            (answer, _) => answer,
        };
        self.answer(call, job, answer);
    }

    /// The caller of open call `call` stops waiting (its deadline, or Redis unreachable in
    /// fail-fast mode): its add is withdrawn if it never left and no other add can have
    /// queued the job (`Unavailable`); else it stays, checked, and the call is answered
    /// `Unconfirmed` (even if the job's outcome was read meanwhile: Redis has not confirmed
    /// the add, which with replicas asked for is not done; an add of the id again gets the
    /// outcome).
    fn give_up(&mut self, call: Call) {
        let Some((job, _)) = self.calls.close(call) else {
            return;
        };
        // Another add of the id (the caller's, or a re-add after `Unconfirmed`) may have
        // queued it, even one answered since.
        let only = self.outstanding.get(&job) == Some(&1) && !self.unconfirmed.contains(&job);
        let mine = self
            .unsent
            .iter()
            .position(|u| u.meta.call == Some(call) && !u.meta.sent && u.meta.generated);
        let answer = match mine {
            Some(at) if only => {
                self.unsent.remove(at);
                self.resolved(&job);
                AddAnswer::Unavailable
            }
            _ => {
                // The caller may now add the id again (through the duplicate check, here or
                // in another process): an unchecked resend of this add could land after it.
                self.unconfirmed.insert(job.clone());
                AddAnswer::Unconfirmed
            }
        };
        self.answer(call, &job, answer);
    }

    fn add_for(
        &mut self,
        now: Instant,
        job: AddJob,
        call: Option<Call>,
    ) -> Result<JobId, ProducerError> {
        self.check_drained()?;
        let now_ms = now.unix_ms();
        self.now_ms = now_ms;
        if self.closed {
            return Err(ProducerError::QueueClosed);
        }
        if self.superseded {
            return Err(ProducerError::Superseded);
        }
        if job.id.as_ref().is_some_and(|id| id.0.is_empty()) {
            return Err(ProducerError::EmptyJobId);
        }
        let pending = self.pending_adds();
        if pending >= self.cfg.max_pending {
            return Err(ProducerError::Backpressure(pending));
        }
        // Generated ids sort by creation time: 12 hex digits of ms, 16 of randomness.
        let generated = job.id.is_none() || job.generated_id;
        let delay_ms = millis(job.delay);
        let fresh = generated && delay_ms == 0;
        let id = match job.id {
            Some(id) => id,
            None => JobId::generate(now, self.rng.next_u64()),
        };
        let instance = Instance::generate(&mut self.rng);
        let record = JobRecord {
            id: id.clone(),
            title: job.title,
            session_id: job.session_id,
            payload: job.payload,
            attempt: 1,
            created_at_ms: now_ms,
            instance,
        };
        let ctx = Context::new(Purpose::Job, &self.keys.scope, id.0.as_bytes());
        // Postcard: the fields' bytes plus a varint length or value each (at most 10 bytes).
        let size = record.id.0.len()
            + record.title.len()
            + record.session_id.len()
            + record.payload.len()
            + 6 * 10
            + 16;
        let envelope = self.sealer.seal_sized_traced(
            &ctx,
            &record,
            size,
            job.trace.as_ref(),
            &mut self.rng,
        )?;
        if !generated
            && !self.forget.is_empty()
            && (self.reported.contains_key(&id.0) || self.tombstones.contains(&id.0))
        {
            // The job of this id ended here lately: its marker, which the waiting
            // acknowledgement forgets, would make the add a duplicate.
            self.ack_first = true;
        }
        let count = self.outstanding.entry(id.0.clone()).or_default();
        *count += 1;
        if *count > 1 {
            // Another add of this id is out: whichever lands first, an unchecked send (or
            // resend, after it was not sent) of either could land after it. Both check.
            self.unconfirmed.insert(id.0.clone());
        }
        let new = NewJob {
            id: id.clone(),
            due_ms: (delay_ms > 0).then(|| now_ms.saturating_add(delay_ms)),
            envelope: envelope.into(),
        };
        self.unsent.push_back(Unsent {
            job: new,
            fresh,
            meta: AddMeta {
                sent: false,
                generated,
                instance,
                call,
            },
        });
        Ok(id)
    }

    /// Asks Redis for the queue's counts; a `Stats` event follows.
    pub fn request_stats(&mut self) {
        self.want_stats = true;
    }

    fn new_request(&mut self) -> Request {
        self.next_request += 1;
        Request(self.next_request)
    }

    fn request(&mut self, kind: CommandKind, unreadable: Vec<EntryId>) -> Request {
        let r = self.new_request();
        if self.destroying {
            let error = "queue destroyed".to_owned();
            self.events
                .push_back(ProducerEvent::RequestFailed { request: r, error });
        } else {
            self.requests.push_back((r, kind, unreadable));
        }
        r
    }

    /// Reads a page of at most `count` (at least 1) dead letters after entry `after` (`0-0`:
    /// from the oldest), opened with this producer's key; a `DeadPage` event follows.
    pub fn read_dead(&mut self, after: EntryId, count: u32) -> Request {
        let kind = CommandKind::ReadDead {
            keys: self.keys.clone(),
            after,
            count: count.max(1),
        };
        self.request(kind, Vec::new())
    }

    /// Sends dead letters back to the queue as their jobs' first attempt (re-sealed), in one
    /// atomic step; a `Revived` event follows with each letter's fate. Idempotent: a letter
    /// revived (or deleted) already is `Gone`, one whose job id lives again stays
    /// (`AlreadyQueued`). The revived jobs' outcomes come to this producer.
    pub fn revive(&mut self, letters: &[DeadLetter]) -> Request {
        let mut items = Vec::with_capacity(letters.len());
        let mut unreadable = Vec::new();
        for letter in letters {
            match dead::reseal(letter, &self.sealer, &self.keys.scope, &mut self.rng) {
                Some((entry, job, sealed)) => items.push((entry, job, Arc::from(sealed))),
                None => unreadable.push(letter.entry),
            }
        }
        if items.is_empty() {
            let request = self.new_request();
            let results = unreadable
                .into_iter()
                .map(|e| (e, Revival::Unreadable))
                .collect();
            self.events
                .push_back(ProducerEvent::Revived { request, results });
            return request;
        }
        let kind = CommandKind::Revive {
            keys: self.keys.clone(),
            marker: self.marker.clone(),
            items,
        };
        self.request(kind, unreadable)
    }

    /// Asks where job `job` is (each search of the work stream, its pending list and the
    /// dead letters goes at most `limit` entries deep, at least 1); a `JobFound` event
    /// follows.
    pub fn find_job(&mut self, job: &JobId, limit: u32) -> Request {
        let kind = CommandKind::FindJob {
            keys: self.keys.clone(),
            job: job.0.clone(),
            limit: limit.max(1),
        };
        self.request(kind, Vec::new())
    }

    /// Asks for the queue's live workers; a `Workers` event follows.
    pub fn request_workers(&mut self) -> Request {
        let kind = CommandKind::Workers {
            keys: self.keys.clone(),
        };
        self.request(kind, Vec::new())
    }

    /// Reads up to `count` of the queue's events (every registered producer's, after
    /// `cursor`) without acknowledging them; an `EventsPeeked` event follows. Advance the
    /// cursor with what came ([`EventsCursor::advance`]).
    pub fn peek_events(&mut self, cursor: &EventsCursor, count: u32) -> Request {
        let kind = CommandKind::PeekEvents {
            keys: self.keys.clone(),
            since: cursor.since(),
            cursors: cursor.producers(),
            count,
        };
        self.request(kind, Vec::new())
    }

    /// Reads up to `count` outcomes of the queue's outcome log after `after` (`EntryId::ZERO`
    /// at first), opening the log if need be and keeping it `keep` longer (the settle
    /// scripts write to it while it exists: tail it at least that often); a `LogPage` event
    /// follows.
    pub fn tail_log(&mut self, after: EntryId, count: u32, keep: Duration) -> Request {
        let kind = CommandKind::TailLog {
            keys: self.keys.clone(),
            after,
            count: count.max(1),
            keep_ms: millis(keep).max(1),
        };
        self.request(kind, Vec::new())
    }

    /// Counts one page of the queue's envelopes in `source` by key id (streams: after
    /// `after`; delayed: from rank `offset`); a `KeyUsage` event follows.
    pub fn key_usage(
        &mut self,
        source: EnvelopeSource,
        after: EntryId,
        offset: u64,
        count: u32,
    ) -> Request {
        let kind = CommandKind::KeyUsage {
            keys: self.keys.clone(),
            source,
            after,
            offset,
            count: count.max(1),
        };
        self.request(kind, Vec::new())
    }

    /// Runs delayed job `job` now (to the work stream); a `Promoted` event follows.
    pub fn promote_job(&mut self, job: &JobId) -> Request {
        let kind = CommandKind::DelayedJob {
            keys: self.keys.clone(),
            job: job.0.clone(),
            withdraw_as: None,
        };
        self.request(kind, Vec::new())
    }

    /// Withdraws delayed job `job`, which this producer added (its marker is this
    /// producer's): it will not run. A `DelayedWithdrawn` event follows; when withdrawn, it
    /// is the job's final outcome.
    pub fn withdraw_delayed(&mut self, job: &JobId) -> Request {
        let known = match (
            self.outstanding.contains_key(&job.0),
            self.tombstones.contains(&job.0),
        ) {
            (true, _) => Some(DelayedWithdrawal::AddOutstanding),
            (false, true) => Some(DelayedWithdrawal::NotDelayed),
            (false, false) => None,
        };
        if let Some(result) = known {
            let request = self.new_request();
            self.events.push_back(ProducerEvent::DelayedWithdrawn {
                request,
                job: job.clone(),
                result,
            });
            return request;
        }
        let kind = CommandKind::DelayedJob {
            keys: self.keys.clone(),
            job: job.0.clone(),
            withdraw_as: Some(self.marker.clone()),
        };
        self.request(kind, Vec::new())
    }

    /// Deletes dead letters; a `DeadDeleted` event follows with how many were there.
    pub fn delete_dead(&mut self, entries: &[EntryId]) -> Request {
        if entries.is_empty() {
            let request = self.new_request();
            self.events.push_back(ProducerEvent::DeadDeleted {
                request,
                deleted: 0,
            });
            return request;
        }
        let kind = CommandKind::DeleteDead {
            keys: self.keys.clone(),
            entries: entries.to_vec(),
        };
        self.request(kind, Vec::new())
    }

    /// Deletes every key of the queue (Sockethub's `shutdown`); `Destroyed` follows. Jobs
    /// not yet run are lost with it: pause and drain first. Adds not yet sent fail at once
    /// (`AddFailed`, "queue destroyed"); the delete goes out once no add is in flight, and an
    /// add whose outcome was unknown is not sent again — so no add lands after the delete
    /// and brings the queue's keys back.
    pub fn destroy(&mut self) {
        self.closed = true;
        self.want_destroy = true;
        self.destroying = true;
        self.promote_at.clear();
        for u in std::mem::take(&mut self.unsent) {
            self.add_failed(&u.job, &u.meta, "queue destroyed".to_owned());
        }
    }

    /// The add of `job` (for `meta`) failed for good: it is not queued.
    fn add_failed(&mut self, job: &NewJob, meta: &AddMeta, error: String) {
        self.resolved(&job.id);
        self.events.push_back(ProducerEvent::AddFailed {
            job: job.id.clone(),
            error: error.clone(),
        });
        self.answer_add(meta, &job.id, AddAnswer::Failed(error));
    }

    /// Time passed: the add calls past their deadline are answered. The other timers
    /// (backoff, registration, promotion, events read) have nothing to do here: being due,
    /// their commands go out at the next `poll_command`.
    ///
    /// # Errors
    /// [`ProducerError::Undrained`] when the events were left undrained.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ProducerError> {
        self.check_drained()?;
        let now_ms = now.unix_ms();
        self.now_ms = now_ms;
        for call in self.calls.due(now_ms) {
            self.give_up(call);
        }
        Ok(())
    }

    /// When to call `handle_timeout` next, if a timer is set: the earliest of
    /// [`Producer::timers`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers().next_at()
    }

    /// The producer's timers, each under its name (see [`crate::timers`]). Only timers
    /// whose action can go when they fire are set (a registration or promotion in flight
    /// sets the next one when it is answered).
    #[must_use]
    pub fn timers(&self) -> Timers<ProducerTimer> {
        let mut t = Timers::new();
        let at = Instant::from_unix_ms;
        let waiting = !self.unsent.is_empty()
            || !self.reachable
            || self.want_stats
            || self.trim_through.is_some()
            || !self.forget.is_empty()
            || !self.requests.is_empty();
        if !self.resend.ready(self.now_ms) && waiting {
            t.set(ProducerTimer::Backoff, at(self.resend.at_ms()));
        }
        if self.registers() && !self.any_in_flight(|f| matches!(f, InFlight::Register)) {
            t.set(
                ProducerTimer::Register,
                at(self.register_at.max(self.resend.at_ms())),
            );
        }
        let promoting = self.any_in_flight(|f| matches!(f, InFlight::Promote));
        if let Some(&due) = self.promote_at.first().filter(|_| !promoting) {
            t.set(ProducerTimer::Promote, at(due.max(self.resend.at_ms())));
        }
        if self.cfg.read_events && self.next_read_ms > self.now_ms {
            t.set(ProducerTimer::ReadEvents, at(self.next_read_ms));
        }
        if let Some(deadline) = self.calls.next_deadline() {
            t.set(ProducerTimer::AddDeadline, at(deadline));
        }
        if let Some(ack) = self.ack_go_at() {
            t.set(ProducerTimer::Ack, at(ack));
        }
        t
    }

    /// The next event for the application, if any. Call until `None` after every input.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ProducerEvent> {
        self.events.pop_front()
    }

    fn op(&mut self, kind: CommandKind, state: InFlight) -> Command {
        let op = self.in_flight.start(state);
        // Every write whose loss in a failover would go unseen is replicated before it
        // counts: an add (a job that never existed), a registration (the owner of the
        // producer id would go back to the instance this one replaced, and this one would
        // be refused as superseded), an acknowledgement of events (its id markers would
        // come back for good, and a later add of such an id would be taken for a live
        // job's), a pause or resume, a destroy, and an operator's revival, deletion,
        // promotion or withdrawal (reported done, then undone). Reads and questions are
        // not. (The model test of failovers found the registration and the
        // acknowledgement.)
        let replicas = match kind {
            CommandKind::Enqueue { .. }
            | CommandKind::Register { .. }
            | CommandKind::AckEvents { .. }
            | CommandKind::SetPaused { .. }
            | CommandKind::Destroy { .. }
            | CommandKind::Revive { .. }
            | CommandKind::DeleteDead { .. }
            | CommandKind::DelayedJob { .. } => self.cfg.replicas,
            _ => None,
        };
        Command { op, kind, replicas }
    }

    fn any_in_flight(&self, f: fn(&InFlight) -> bool) -> bool {
        self.in_flight.any(f)
    }

    /// The next command for Redis, if any. Call until `None` after every input; everything
    /// one drain returns may go out as one pipeline.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        let now = self.now_ms;
        let keys = self.keys.clone();
        if self.want_destroy
            && self.resend.ready(now)
            && !self.any_in_flight(|f| matches!(f, InFlight::Destroy | InFlight::Add(..)))
        {
            self.want_destroy = false;
            return Some(self.op(CommandKind::Destroy { keys }, InFlight::Destroy));
        }
        let ready = self.resend.ready(now);
        if self.registers()
            && ready
            && now >= self.register_at
            && !self.any_in_flight(|f| matches!(f, InFlight::Register))
        {
            let kind = CommandKind::Register {
                keys: keys.clone(),
                producer: self.me.clone(),
                token: self.token.clone(),
                claim: !self.registered,
                now_ms: now,
                until_ms: now.saturating_add(millis(self.cfg.producer_ttl)),
            };
            return Some(self.op(kind, InFlight::Register));
        }
        self.arm_ack();
        if let Some(cmd) = self.poll_ack() {
            return Some(cmd);
        }
        // An add of an id whose job ended here waits for the acknowledgement that forgets
        // the job's marker (one is out: the rest goes when it is answered).
        let held = self.ack_first && self.ack_waits();
        if !self.unsent.is_empty() && ready && self.registered && !held {
            let (jobs, fresh, sent) = self.take_batch();
            // The registration rides along: one Redis lost (a restart without persistence)
            // is back before any of these jobs can end and send its outcome.
            let register_until_ms = self
                .registers()
                .then(|| now.saturating_add(millis(self.cfg.producer_ttl)));
            let kind = CommandKind::Enqueue {
                keys,
                now_ms: now,
                marker: self.marker.clone(),
                jobs: jobs.clone(),
                fresh,
                register_until_ms,
            };
            return Some(self.op(kind, InFlight::Add(jobs, fresh, sent)));
        }
        if let Some(cmd) = self.poll_promote(ready) {
            return Some(cmd);
        }
        if !ready {
            return self.poll_read();
        }
        if let Some((request, kind, unreadable)) = self.requests.pop_front() {
            let state = InFlight::Request(request, kind.clone(), unreadable);
            return Some(self.op(kind, state));
        }
        if self.want_stats && !self.any_in_flight(|f| matches!(f, InFlight::Stats)) {
            self.want_stats = false;
            let producer = self.me.clone();
            return Some(self.op(CommandKind::Stats { keys, producer }, InFlight::Stats));
        }
        // Unreachable and nothing else to send: ask Redis whether it is back.
        let asking = self.any_in_flight(|f| !matches!(f, InFlight::ReadEvents(_)));
        if !self.reachable && !asking {
            return Some(self.op(CommandKind::Ping, InFlight::Ping));
        }
        self.poll_read()
    }

    /// Whether a trim or markers to forget wait for an acknowledgement.
    fn ack_waits(&self) -> bool {
        self.trim_through.is_some() || !self.forget.is_empty()
    }

    /// Starts the acknowledgement's delay when something first waits for it.
    fn arm_ack(&mut self) {
        match (self.ack_waits(), self.ack_at) {
            (true, None) => {
                self.ack_at = Some(self.now_ms.saturating_add(millis(self.cfg.ack_delay)));
            }
            (false, _) => {
                self.ack_at = None;
                self.ack_first = false;
                self.ack_now = false;
            }
            (true, Some(_)) => {}
        }
    }

    /// When the waiting acknowledgement may go, if one waits and nothing holds it: at
    /// once (past the backoff) when something needs it done, else after its delay.
    fn ack_go_at(&self) -> Option<u64> {
        // One ack at a time: a later ack's trim must never run while an earlier one's
        // forgets are unconfirmed (it would drop events whose markers nobody forgot; a
        // replacement could never read them again).
        let acking = self.any_in_flight(|f| matches!(f, InFlight::AckEvents { .. }));
        // Acks wait for this instance's claim of its id (before it, the id may still be its
        // predecessor's, and the ack would be refused as superseded).
        let claimed = self.registered || !self.registers();
        if !self.ack_waits() || acking || !claimed {
            return None;
        }
        // An id someone may use again at once, going away, a count that reads the events
        // stream, a request that may set a marker again (a revival), an add that needs a
        // marker gone, or a full batch.
        let now = self.ack_first
            || self.ack_now
            || self.closed
            || self.want_stats
            || !self.requests.is_empty()
            || self.forget.len() >= ACK_BATCH
            || self.unacked >= ACK_BATCH;
        let due = if now { 0 } else { self.ack_at.unwrap_or(0) };
        Some(due.max(self.resend.at_ms()))
    }

    /// The acknowledgement of read events, when it is due.
    fn poll_ack(&mut self) -> Option<Command> {
        if self.ack_go_at()? > self.now_ms {
            return None;
        }
        self.ack_at = None;
        self.unacked = 0;
        self.ack_first = false;
        self.ack_now = false;
        let through = self.trim_through.take();
        let forget = std::mem::take(&mut self.forget);
        // A cursor not yet found intact is checked (once: a later ack of the same cursor
        // would find it trimmed, and ask for the stream's last id).
        let checks = (self.cursor > self.checked).then_some(self.cursor);
        let kind = CommandKind::AckEvents {
            keys: self.keys.clone(),
            producer: self.me.clone(),
            token: self.token.clone(),
            through,
            forget: forget.clone(),
            check: checks.map(|c| (c, self.cursor_seen.clone())),
        };
        let state = InFlight::AckEvents {
            through,
            forget,
            checks,
        };
        Some(self.op(kind, state))
    }

    /// The promotion of this producer's delayed jobs that are due.
    fn poll_promote(&mut self, ready: bool) -> Option<Command> {
        let now = self.now_ms;
        let due = self.promote_at.first().is_some_and(|&d| d <= now);
        if !due || !ready || self.any_in_flight(|f| matches!(f, InFlight::Promote)) {
            return None;
        }
        while self.promote_at.first().is_some_and(|&d| d <= now) {
            self.promote_at.pop_first();
        }
        let kind = CommandKind::Promote {
            keys: self.keys.clone(),
            now_ms: now,
            limit: PROMOTE_LIMIT,
        };
        Some(self.op(kind, InFlight::Promote))
    }

    fn poll_read(&mut self) -> Option<Command> {
        let now = self.now_ms;
        let reading =
            self.any_in_flight(|f| matches!(f, InFlight::ReadEvents(_) | InFlight::EventsTail));
        if self.check_tail && !reading && now >= self.next_read_ms {
            // In place of the next read (and, like a read, a probe of whether Redis is
            // back), with no ack out: its answer decides where the next read starts.
            if !self.any_in_flight(|f| matches!(f, InFlight::AckEvents { .. })) {
                self.check_tail = false;
                let kind = CommandKind::EventsTail {
                    keys: self.keys.clone(),
                    producer: self.me.clone(),
                };
                return Some(self.op(kind, InFlight::EventsTail));
            }
            return None;
        }
        if self.cfg.read_events
            && !self.superseded
            && !reading
            && !self.check_tail
            && now >= self.next_read_ms
        {
            let kind = CommandKind::ReadEvents {
                keys: self.keys.clone(),
                producer: self.me.clone(),
                after: self.cursor,
                count: self.cfg.events_count,
                block_ms: self.cfg.block.map(millis).filter(|_| self.idle),
            };
            return Some(self.op(kind, InFlight::ReadEvents(self.epoch)));
        }
        None
    }

    /// Whether `u` may go unchecked: it is fresh, the only add of its id here, and its
    /// caller was never told it may be in Redis (else another add of the id may have
    /// landed, or be sent, first).
    fn goes_fresh(&self, u: &Unsent) -> bool {
        u.fresh
            && !self.paused
            && self.outstanding.get(u.job.id.as_str()) == Some(&1)
            && !self.unconfirmed.contains(u.job.id.as_str())
    }

    /// The next batch: fresh adds and adds that need the duplicate check never mix.
    fn take_batch(&mut self) -> (Vec<NewJob>, bool, Vec<AddMeta>) {
        let mut jobs = Vec::new();
        let mut sent = Vec::new();
        let mut bytes = 0;
        let fresh = self.unsent.front().is_some_and(|u| self.goes_fresh(u));
        while let Some(next) = self.unsent.front() {
            let size = next.job.envelope.len();
            let full = jobs.len() >= self.cfg.max_batch_jobs
                || (!jobs.is_empty() && bytes + size > self.cfg.max_batch_bytes)
                || self.goes_fresh(next) != fresh;
            if full {
                break;
            }
            bytes += size;
            if let Some(u) = self.unsent.pop_front() {
                jobs.push(u.job);
                sent.push(u.meta);
            }
        }
        (jobs, fresh, sent)
    }

    /// The reply to command `op`.
    pub fn handle_reply(
        &mut self,
        now: Instant,
        op: OpId,
        reply: Reply,
    ) -> Result<(), ProducerError> {
        self.check_drained()?;
        let now_ms = now.unix_ms();
        self.now_ms = now_ms;
        let state = self
            .in_flight
            .finish(op)
            .ok_or(ProducerError::UnknownOp(op))?;
        let not_sent = reply == Reply::NotSent;
        let reply = match reply {
            Reply::NotSent => Reply::Unknown,
            r => r,
        };
        match &reply {
            Reply::Unknown | Reply::NotSent => {
                self.reachable = false;
                self.check_tail = self.cfg.read_events;
            }
            Reply::Value(_) => {
                // Redis answered: whatever waited because of the connection goes now.
                self.reachable = true;
                self.resend.reachable();
                self.reads.reachable();
                if self.reads.ready(now_ms) {
                    self.next_read_ms = self.next_read_ms.min(now_ms);
                }
            }
        }
        match (state, reply) {
            (InFlight::Add(jobs, fresh, sent), reply) => {
                self.added(jobs, fresh, &sent, reply, not_sent);
            }
            (InFlight::ReadEvents(_), Reply::Unknown | Reply::NotSent) => {
                self.next_read_ms = self.reads.fail_unknown(now_ms);
            }
            // Read from a cursor since stepped back to the start: what it got comes again.
            (InFlight::ReadEvents(epoch), Reply::Value(_)) if epoch != self.epoch => {}
            (InFlight::ReadEvents(_), Reply::Value(v)) => self.read_events(v),
            (InFlight::EventsTail, reply) => self.events_tail(reply),
            (InFlight::AckEvents { checks, forget, .. }, Reply::Value(Value::Int(n))) => {
                self.resend.succeed();
                if !self.tombstones.is_empty() {
                    for job in &forget {
                        self.tombstones.remove(job);
                    }
                }
                match (n, checks) {
                    // Reads since went on from a cursor the stream no longer backs.
                    (-1, Some(_)) => self.moved_back(None),
                    (-1, None) => {}
                    (_, Some(cursor)) => self.checked = self.checked.max(cursor),
                    _ => {}
                }
            }
            (InFlight::AckEvents { .. }, Reply::Value(Value::Error(e)))
                if e.starts_with("SUPERSEDED") =>
            {
                self.resend.succeed();
                self.supersede();
            }
            (
                InFlight::AckEvents {
                    through, forget, ..
                },
                reply,
            ) => {
                // Idempotent: send again with the next ack, after the backoff.
                self.trim_through = self.trim_through.max(through);
                self.forget.extend(forget);
                self.ack_at = Some(self.now_ms);
                self.failed(&reply);
            }
            (InFlight::Stats, Reply::Unknown | Reply::NotSent) => {
                self.want_stats = true;
                self.resend.fail_unknown(now_ms);
            }
            (InFlight::Stats, Reply::Value(v)) => self.stats(v),
            (InFlight::Ping, _) => {}
            (InFlight::Register, reply) => self.register_reply(reply),
            (InFlight::Request(request, kind, unreadable), reply) => {
                self.answered(request, kind, unreadable, reply);
            }
            (InFlight::Promote, reply) => self.promoted(reply),
            (InFlight::Destroy, Reply::Value(Value::Int(_))) => {
                self.events.push_back(ProducerEvent::Destroyed)
            }
            (InFlight::Destroy, other) => {
                self.want_destroy = true;
                self.failed(&other);
                self.trouble(format!("destroy: {other:?}"));
            }
        }
        if self.cfg.fail_fast && !self.reachable {
            // Redis is away: the callers still waiting hear now.
            for call in self.calls.open_calls() {
                self.give_up(call);
            }
        }
        Ok(())
    }

    /// The reply to an operator's request.
    fn answered(
        &mut self,
        request: Request,
        kind: CommandKind,
        unreadable: Vec<EntryId>,
        reply: Reply,
    ) {
        let v = match reply {
            Reply::Value(Value::Error(e)) if !is_transient_error(&e) => {
                let error = e;
                self.resend.succeed();
                return self
                    .events
                    .push_back(ProducerEvent::RequestFailed { request, error });
            }
            Reply::Value(Value::Error(_)) | Reply::Unknown | Reply::NotSent => {
                // Every request is idempotent: again, first in line, after the backoff.
                let failed = match &reply {
                    Reply::Value(_) => Reply::Value(Value::Nil),
                    _ => Reply::Unknown,
                };
                if matches!(kind, CommandKind::SetPaused { .. }) && self.newer_pause(request) {
                    // Sent again, it would land after the later pause or resume and undo it.
                    let error = "superseded by a later pause or resume".to_owned();
                    self.events
                        .push_back(ProducerEvent::RequestFailed { request, error });
                } else {
                    self.requests.push_front((request, kind, unreadable));
                }
                return self.failed(&failed);
            }
            Reply::Value(v) => v,
        };
        self.resend.succeed();
        let event = self
            .request_event(request, kind, unreadable, v)
            .unwrap_or_else(|| ProducerEvent::RequestFailed {
                request,
                error: "unexpected reply".to_owned(),
            });
        self.events.push_back(event);
    }

    /// The event answering request `request` of `kind`, from Redis' reply `v`; `None` when
    /// the reply is not of the request's shape.
    fn request_event(
        &mut self,
        request: Request,
        kind: CommandKind,
        unreadable: Vec<EntryId>,
        v: Value,
    ) -> Option<ProducerEvent> {
        match kind {
            CommandKind::ReadDead { count, .. } => {
                dead::page(v, count, &self.sealer, &self.keys.scope)
                    .map(|page| ProducerEvent::DeadPage { request, page })
            }
            CommandKind::Revive { items, .. } => revived(v, &items).map(|mut results| {
                results.extend(unreadable.into_iter().map(|e| (e, Revival::Unreadable)));
                ProducerEvent::Revived { request, results }
            }),
            CommandKind::FindJob { .. } => {
                dead::place(v).map(|place| ProducerEvent::JobFound { request, place })
            }
            CommandKind::Workers { .. } => {
                workers(v).map(|workers| ProducerEvent::Workers { request, workers })
            }
            CommandKind::PeekEvents { .. } => peek::parse(v, &self.sealer, &self.keys.scope)
                .map(|events| ProducerEvent::EventsPeeked { request, events }),
            CommandKind::TailLog { .. } => {
                peek::parse_log(v).map(|(events, last)| ProducerEvent::LogPage {
                    request,
                    events,
                    last,
                })
            }
            CommandKind::KeyUsage {
                source,
                offset,
                count,
                ..
            } => usage::parse(v, source, offset, count).map(|page| ProducerEvent::KeyUsage {
                request,
                source,
                page,
            }),
            CommandKind::DelayedJob {
                job,
                withdraw_as: None,
                ..
            } => {
                let entry = match v {
                    Value::Int(0) => Some(None),
                    other => other
                        .into_bytes("entry id")
                        .ok()
                        .and_then(|b| EntryId::parse(&b).ok())
                        .map(Some),
                };
                entry.map(|entry| ProducerEvent::Promoted {
                    request,
                    job: JobId(job),
                    entry,
                })
            }
            CommandKind::DelayedJob { job, .. } => self.withdrawn(request, JobId(job), &v),
            CommandKind::SetPaused { paused, .. } => match v {
                Value::Int(_) => Some(ProducerEvent::PauseSet { request, paused }),
                _ => None,
            },
            CommandKind::DeleteDead { .. } => match v {
                Value::Int(n) => Some(ProducerEvent::DeadDeleted {
                    request,
                    deleted: u64::try_from(n).unwrap_or(0),
                }),
                _ => None,
            },
            _ => None,
        }
    }

    /// The answer to `withdraw_delayed(job)`; a withdrawn job is this producer's no more.
    fn withdrawn(&mut self, request: Request, job: JobId, v: &Value) -> Option<ProducerEvent> {
        let result = match v {
            Value::Int(1) => DelayedWithdrawal::Withdrawn,
            Value::Int(0) => DelayedWithdrawal::NotDelayed,
            Value::Int(-1) => DelayedWithdrawal::NotOurs,
            _ => return None,
        };
        if result == DelayedWithdrawal::Withdrawn {
            // Nothing of it is left to await; its tombstone goes with the next ack.
            self.await_no_more(&job.0);
            self.forget.push(job.0.clone());
            self.ack_now = true;
            self.tombstones.insert(job.0.clone());
            self.calls.ended(&job.0, &JobEnd::Withdrawn, self.now_ms);
        }
        Some(ProducerEvent::DelayedWithdrawn {
            request,
            job,
            result,
        })
    }

    /// Whether a pause or resume was asked after `request` (queued or in flight).
    fn newer_pause(&self, request: Request) -> bool {
        let queued = self.requests.iter().map(|(r, k, _)| (*r, k));
        let out = self.in_flight.values().filter_map(|f| match f {
            InFlight::Request(r, k, _) => Some((*r, k)),
            _ => None,
        });
        queued
            .chain(out)
            .any(|(r, k)| r > request && matches!(k, CommandKind::SetPaused { .. }))
    }

    /// Whether this producer keeps a registration: it reads events and the queue is not
    /// being destroyed (a registration after the delete would bring a key back).
    fn registers(&self) -> bool {
        self.cfg.read_events && !self.destroying && !self.superseded
    }

    /// Another instance took this producer's id over (a replacement): this one reads and
    /// acknowledges no more events (they are the other's now), and adds no more jobs under
    /// the id (their outcomes would go to the other).
    fn supersede(&mut self) {
        if self.superseded {
            return;
        }
        self.superseded = true;
        self.trim_through = None;
        self.forget.clear();
        self.held.clear();
        for u in std::mem::take(&mut self.unsent) {
            let error = "superseded: another instance took over this producer id";
            self.add_failed(&u.job, &u.meta, error.into());
        }
        self.events.push_back(ProducerEvent::Superseded);
    }

    fn register_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Value(Value::Int(-1)) => {
                self.resend.succeed();
                self.supersede();
            }
            Reply::Value(Value::Int(n)) => {
                if n == 1 && self.registered && self.cfg.read_events {
                    self.trouble(format!(
                        "producer {} was away longer than its ttl ({} ms) and was declared \
                         gone: outcomes of its jobs that ended meanwhile were dropped",
                        self.me.id,
                        millis(self.cfg.producer_ttl)
                    ));
                }
                self.registered = true;
                self.resend.succeed();
                self.register_at = self
                    .now_ms
                    .saturating_add((millis(self.cfg.producer_ttl) / 4).max(1));
            }
            other => {
                self.failed(&other);
                if let Reply::Value(v) = &other {
                    self.trouble(format!("register: unexpected reply {v:?}"));
                }
                self.register_at = self.resend.at_ms();
            }
        }
    }

    /// A command of the general kind failed: back off (by the failure's cause).
    fn failed(&mut self, reply: &Reply) {
        match reply {
            Reply::Unknown | Reply::NotSent => self.resend.fail_unknown(self.now_ms),
            Reply::Value(_) => self.resend.fail(self.now_ms),
        };
    }

    fn promoted(&mut self, reply: Reply) {
        let count = match &reply {
            Reply::Value(Value::Array(a)) => a.first().and_then(|n| n.as_int("count").ok()),
            _ => None,
        };
        match count {
            Some(n) => {
                self.resend.succeed();
                if n >= i64::from(PROMOTE_LIMIT) {
                    // More were due than one call moves: go on at once.
                    self.promote_at.insert(self.now_ms);
                }
            }
            None => {
                self.failed(&reply);
                if let Reply::Value(v) = &reply {
                    self.trouble(format!("promote: unexpected reply {v:?}"));
                }
                if !self.destroying {
                    self.promote_at.insert(self.resend.at_ms());
                }
            }
        }
    }

    fn trouble(&mut self, message: String) {
        self.events.push_back(ProducerEvent::Trouble { message });
    }

    /// The reply to an add of `jobs` (`sent`: whether each had been sent before;
    /// `not_sent`: this send never left, nothing ran).
    fn added(
        &mut self,
        jobs: Vec<NewJob>,
        fresh: bool,
        sent: &[AddMeta],
        reply: Reply,
        not_sent: bool,
    ) {
        let reply_kind = match &reply {
            Reply::Value(_) => Reply::Value(Value::Nil),
            _ => Reply::Unknown,
        };
        // A transient error (LOADING, BUSY, READONLY, ...) rejected the command before it
        // wrote anything: as good as never sent.
        let not_sent =
            not_sent || matches!(&reply, Reply::Value(Value::Error(e)) if is_transient_error(e));
        let reply = self.registration_answered(reply, fresh, jobs.len());
        let items = match reply {
            // EXEC's array: the pause's EXISTS, the markers' HSET, then one XADD per job.
            Reply::Value(Value::Array(mut items)) if fresh && items.len() == jobs.len() + 2 => {
                let mut head = items.drain(..2);
                if head.next().is_some_and(|p| p != Value::Int(0)) {
                    // Paused elsewhere: these jobs wait in the stream; the next adds check.
                    self.paused = true;
                }
                if let Some(Value::Error(e)) = head.next() {
                    // The jobs are queued all the same, without their markers.
                    self.trouble(format!("enqueue: markers not written: {e}"));
                }
                drop(head);
                items
            }
            Reply::Value(Value::Array(items)) if !fresh && items.len() == jobs.len() => {
                // Refused (paused), or a job taken: the queue is paused, or not (any more).
                if items.contains(&Value::Int(-1)) {
                    self.paused = true;
                } else if items.iter().any(|i| *i != Value::Int(0)) {
                    self.paused = false;
                }
                items
            }
            Reply::Value(Value::Error(e)) if !is_transient_error(&e) => {
                for (job, meta) in jobs.iter().zip(sent) {
                    self.add_failed(job, meta, e.clone());
                }
                return;
            }
            other => {
                if let Reply::Value(v) = other {
                    self.trouble(format!("enqueue: unexpected reply {v:?}"));
                }
                if self.destroying {
                    // Sending them again could bring the keys back after the delete.
                    for (job, meta) in jobs.iter().zip(sent) {
                        self.add_failed(job, meta, "queue destroyed".to_owned());
                    }
                    return;
                }
                // Unknown outcome: send the same sealed jobs again, first in line, through
                // the script (the first send may have landed). A send that never left
                // changes nothing: a fresh job stays fresh, an unsent one unsent.
                for (job, meta) in jobs.into_iter().zip(sent).rev() {
                    self.unsent.push_front(Unsent {
                        job,
                        fresh: fresh && not_sent,
                        meta: AddMeta {
                            sent: meta.sent || !not_sent,
                            ..*meta
                        },
                    });
                }
                return self.failed(&reply_kind);
            }
        };
        self.resend.succeed();
        self.accepted(jobs, items, sent);
    }

    /// The answer of the registration an add asserted (`CommandKind::Enqueue`'s
    /// `register_until_ms`), last in its reply (`ZADD NX`, and in the transaction `ZREM`):
    /// taken off the reply, and the gap reported when the registration was missing.
    fn registration_answered(&mut self, reply: Reply, fresh: bool, jobs: usize) -> Reply {
        match reply {
            Reply::Value(Value::Array(mut items))
                if (fresh && items.len() == jobs + 4) || (!fresh && items.len() == jobs + 1) =>
            {
                let tail = items.split_off(items.len() - if fresh { 2 } else { 1 });
                if tail.first() == Some(&Value::Int(1)) {
                    self.trouble(format!(
                        "producer {} was not registered when it added (Redis lost its data, \
                         or it was away longer than its ttl and declared gone): registered \
                         again; outcomes of its jobs that ended meanwhile were dropped",
                        self.me.id
                    ));
                }
                Reply::Value(Value::Array(items))
            }
            other => other,
        }
    }

    /// Each job of an add Redis answered, with its item of the reply (an entry id, `1`
    /// delayed, `0` queued already, `-1` paused, or the error of its XADD).
    fn accepted(&mut self, jobs: Vec<NewJob>, items: Vec<Value>, sent: &[AddMeta]) {
        for ((job, item), meta) in jobs.into_iter().zip(items).zip(sent) {
            // The job may have ended already (its outcome read on another connection
            // before this reply): then there is nothing left to await.
            let ended = self.forget_later.contains(job.id.as_str());
            if let Value::Error(error) = item {
                // An XADD of a fresh add failed inside its transaction (the rest ran).
                self.add_failed(&job, meta, error);
                continue;
            }
            self.resolved(&job.id);
            let status = match item {
                Value::Int(-1) => {
                    // The queue is paused: not queued.
                    self.events.push_back(ProducerEvent::AddPaused {
                        job: job.id.clone(),
                    });
                    self.answer_add(meta, &job.id, AddAnswer::Paused);
                    continue;
                }
                Value::Int(0) => AddStatus::AlreadyQueued,
                Value::Int(_) => {
                    if let Some(due) = job.due_ms {
                        self.promote_at.insert(due);
                    }
                    AddStatus::Delayed
                }
                other => match other.into_bytes("entry id").map(|b| EntryId::parse(&b)) {
                    Ok(Ok(id)) => AddStatus::Added(id),
                    _ => AddStatus::AlreadyQueued,
                },
            };
            if self.cfg.read_events && !ended && status != AddStatus::AlreadyQueued {
                // This add's record is the one in Redis: only its instance's outcomes count.
                let chosen = !meta.generated;
                self.awaited
                    .insert(job.id.0.clone(), (meta.instance, chosen));
            }
            self.events.push_back(ProducerEvent::Accepted {
                job: job.id.clone(),
                status,
            });
            self.answer_add(meta, &job.id, AddAnswer::Taken);
        }
    }

    /// An add of `job` got its answer.
    fn resolved(&mut self, job: &str) {
        if let Some(n) = self.outstanding.get_mut(job) {
            *n -= 1;
            if *n == 0 {
                self.outstanding.remove(job);
                // A removal hashes its key even from an empty set (these usually are).
                if !self.unconfirmed.is_empty() {
                    self.unconfirmed.remove(job);
                }
                if !self.forget_later.is_empty() && self.forget_later.remove(job) {
                    self.forget.push(job.to_owned());
                    self.held.retain(|_, j| j != job);
                    self.advance_trim();
                }
            }
        }
    }

    /// `job` ended (its final event is `event`): its marker can go once no add of it is
    /// outstanding (an add sent again after an unknown outcome must still find it, or the
    /// job would run twice); until then its event is held back from the trim.
    fn ended(&mut self, job: &JobId, event: EntryId) {
        if !self.cfg.read_events {
            return;
        }
        self.await_no_more(&job.0);
        if self.outstanding.contains_key(&job.0) {
            self.forget_later.insert(job.0.clone());
            self.held.insert(event, job.0.clone());
        } else {
            self.forget.push(job.0.clone());
        }
    }

    /// `job` will have no more outcomes here: its instance and reported failures go.
    fn await_no_more(&mut self, job: &str) {
        self.awaited.remove(job);
        if !self.failures.is_empty() {
            self.failures.remove(job);
        }
    }

    fn read_events(&mut self, v: Value) {
        if let Value::Error(e) = &v {
            self.next_read_ms = self.reads.fail(self.now_ms);
            return self.trouble(format!("XREAD events: {e}"));
        }
        let entries = match decode_read(v) {
            Ok(entries) => entries,
            Err(e) => {
                self.next_read_ms = self.reads.fail(self.now_ms);
                return self.trouble(format!("XREAD events: {e}"));
            }
        };
        self.reads.succeed();
        // Only a read that found nothing makes the next one block, not one that found
        // fewer than it asked for: tried, at concurrency 1 that made the reads cost Redis
        // 8.9 µs per job instead of 6.0, and the rate fell 10-20% (BENCHMARKS.md).
        self.idle = entries.is_empty();
        self.unacked = self.unacked.saturating_add(entries.len());
        if entries.is_empty() && self.cfg.block.is_none() {
            self.next_read_ms = self.now_ms.saturating_add(POLL_INTERVAL_MS);
        }
        // The newest entry read moves the cursor (entries come in id order).
        if let Some(last) = entries
            .iter()
            .max_by_key(|e| e.id)
            .filter(|e| e.id > self.cursor)
        {
            self.cursor = last.id;
            let v = last.field(b"v").unwrap_or_default();
            self.cursor_seen = Arc::from(fingerprint(v));
        }
        for entry in entries {
            self.read_through = self.read_through.max(Some(entry.id));
            let event = match self.open_event(&entry) {
                // An event of an instance whose final outcome was reported here already
                // (a failover undid the write this producer had read; it was written
                // again): not a second outcome.
                Ok((event, instance)) if self.repeats(&event, instance) => continue,
                Ok((event, instance)) => {
                    self.reported(&event, instance);
                    event
                }
                Err(reason) => ProducerEvent::BadEvent {
                    event: entry.id,
                    reason,
                },
            };
            match &event {
                ProducerEvent::Completed { job, result, .. } => {
                    self.ack_now |= self.awaited.get(&job.0).is_some_and(|(_, chosen)| *chosen);
                    self.ended(job, entry.id);
                    let end = JobEnd::Completed(result.clone());
                    self.calls.ended(&job.0, &end, self.now_ms);
                }
                ProducerEvent::DeadLettered { job, reason, .. } => {
                    self.ack_now = true;
                    self.ended(job, entry.id);
                    let end = JobEnd::Dead(reason.clone());
                    self.calls.ended(&job.0, &end, self.now_ms);
                }
                ProducerEvent::Failed { job, attempt, .. } => {
                    let last = self.failures.entry(job.0.clone()).or_insert(0);
                    if *attempt <= *last {
                        continue;
                    }
                    *last = *attempt;
                }
                _ => {}
            }
            self.events.push_back(event);
        }
        self.advance_trim();
    }

    /// Trims what was read, up to the first held event.
    /// The events stream's last generated id: behind the cursor, the stream lost its tail
    /// (a failover): read on from there, and trim nothing beyond it.
    fn events_tail(&mut self, reply: Reply) {
        let last = match &reply {
            Reply::Value(Value::Bulk(b)) => EntryId::parse(b).ok(),
            _ => None,
        };
        let Some(last) = last else {
            self.check_tail = true;
            self.next_read_ms = match &reply {
                Reply::Value(v) => {
                    if !matches!(v, Value::Error(e) if is_transient_error(e)) {
                        self.trouble(format!("events tail: unexpected reply {v:?}"));
                    }
                    self.reads.fail(self.now_ms)
                }
                _ => self.reads.fail_unknown(self.now_ms),
            };
            return;
        };
        self.reads.succeed();
        if last < self.cursor {
            self.moved_back(Some(last));
        }
    }

    /// The events stream moved back behind the cursor (a failover lost its tail; `to`:
    /// its last id now, when known). Events written since may have ids at or below
    /// the cursor, and which of those are new cannot be told: read the stream again from
    /// its start (trims keep it short). Events read before come again: an outcome of a job
    /// no longer awaited is a stale `BadEvent`, not a second outcome.
    fn moved_back(&mut self, to: Option<EntryId>) {
        let to = to.map_or(String::new(), |to| format!(" to {to}"));
        self.trouble(format!(
            "the events stream moved back from {}{to} (a failover lost its tail): reading \
             it again from the start",
            self.cursor
        ));
        self.cursor = EntryId::ZERO;
        self.cursor_seen = Arc::from(&[][..]);
        self.checked = EntryId::ZERO;
        self.epoch += 1;
        self.read_through = None;
        self.trimmed_through = None;
        self.trim_through = None;
        self.next_read_ms = self.next_read_ms.min(self.now_ms);
    }

    fn advance_trim(&mut self) {
        let limit = match self.held.first_key_value() {
            Some((first, _)) => first.prev(),
            None => self.read_through,
        };
        let through = self.read_through.min(limit);
        if through > self.trimmed_through {
            self.trimmed_through = through;
            self.trim_through = through;
        }
    }

    /// Whether `event` is of an instance whose final outcome was reported here already.
    fn repeats(&self, event: &ProducerEvent, instance: Instance) -> bool {
        let job = match event {
            ProducerEvent::Completed { job, .. }
            | ProducerEvent::DeadLettered { job, .. }
            | ProducerEvent::Failed { job, .. } => job,
            _ => return false,
        };
        !self.awaited.contains_key(&job.0) && self.reported.get(&job.0) == Some(&instance)
    }

    /// Remembers, when `event` is a job's final outcome, that its `instance` was reported.
    fn reported(&mut self, event: &ProducerEvent, instance: Instance) {
        let (ProducerEvent::Completed { job, .. } | ProducerEvent::DeadLettered { job, .. }) =
            event
        else {
            return;
        };
        let now = self.now_ms;
        while let Some((old, at)) = self.reported_order.front() {
            let full = self.reported_order.len() >= REPORTED_MAX;
            if !full && now.saturating_sub(*at) < REPORTED_MS {
                break;
            }
            self.reported.remove(old);
            self.reported_order.pop_front();
        }
        if self.reported.insert(job.0.clone(), instance).is_none() {
            self.reported_order.push_back((job.0.clone(), now));
        }
    }

    fn open_event(&self, entry: &StreamEntry) -> Result<(ProducerEvent, Instance), String> {
        let text = |name: &[u8]| {
            entry
                .field(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .ok_or_else(|| format!("missing field {}", String::from_utf8_lossy(name)))
        };
        let job = JobId(text(b"j")?.to_owned());
        let kind = text(b"k")?;
        let attempt: u32 = text(b"a")?.parse().map_err(|_| "bad attempt".to_owned())?;
        let instance = entry
            .field(b"i")
            .and_then(Instance::parse_hex)
            .ok_or("missing or malformed field i")?;
        let sealed = entry.field(b"v").ok_or("missing field v")?;
        let purpose = match kind {
            "c" => Purpose::Result,
            "f" => Purpose::Failure,
            "d" => Purpose::DeadLetter,
            other => return Err(format!("unknown event kind {other:?}")),
        };
        // Kind, attempt and instance are in the AAD: relabelled, none of them opens.
        let detail = outcome_detail(attempt, &instance.0);
        let ctx = Context::outcome(purpose, &self.keys.scope, job.0.as_bytes(), &detail);
        let (value, trace) = self
            .sealer
            .open_bytes_traced(&ctx, sealed)
            .map_err(|e| e.to_string())?;
        // A job this producer did not queue itself (an add found it queued, or another
        // producer's) has no awaited instance: its outcomes are authentic, but whether they
        // are this job's or an earlier one's with the same id cannot be told.
        if let Some((awaited, _)) = self.awaited.get(&job.0).filter(|(a, _)| *a != instance) {
            return Err(format!(
                "stale outcome of job {job}: instance {instance}, not the awaited {awaited}"
            ));
        }

        let reason = || String::from_utf8_lossy(&value).into_owned();
        let event = match kind {
            "c" => ProducerEvent::Completed {
                job,
                result: value,
                attempt,
                trace,
            },
            "f" => ProducerEvent::Failed {
                job,
                reason: reason(),
                attempt,
                trace,
            },
            _ => ProducerEvent::DeadLettered {
                job,
                reason: reason(),
                attempt,
                trace,
            },
        };
        Ok((event, instance))
    }

    fn stats(&mut self, v: Value) {
        match parse_stats(v) {
            Some(stats) => {
                self.paused = stats.paused_at.is_some();
                self.events.push_back(ProducerEvent::Stats(stats));
            }
            None => self.trouble("stats: unexpected reply".into()),
        }
    }
}

/// The `workers` script's reply: (name, promise) pairs.
fn workers(v: Value) -> Option<Vec<(String, u64)>> {
    let flat = v.into_array("workers").ok()?;
    if flat.len() % 2 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(name), Some(score)) = (it.next(), it.next()) {
        let name = String::from_utf8_lossy(&name.into_bytes("name").ok()?).into_owned();
        let score = score.into_bytes("score").ok()?;
        // A score as Lua formats it: an integer, or a float for one that is not.
        let text = std::str::from_utf8(&score).ok()?;
        let ms = text.parse::<u64>().ok().or_else(|| {
            text.parse::<f64>()
                .ok()
                .filter(|f| *f >= 0.0)
                .map(|f| f as u64)
        })?;
        out.push((name, ms));
    }
    Some(out)
}

/// The `revive` script's reply, per item: its new entry, gone (0) or alive (-1).
fn revived(v: Value, items: &[(EntryId, String, Arc<[u8]>)]) -> Option<Vec<(EntryId, Revival)>> {
    let answers = v.into_array("revive").ok()?;
    if answers.len() != items.len() {
        return None;
    }
    items
        .iter()
        .zip(answers)
        .map(|((entry, ..), a)| {
            let fate = match a {
                Value::Int(0) => Revival::Gone,
                Value::Int(-1) => Revival::AlreadyQueued,
                other => {
                    let bytes = other.into_bytes("entry id").ok()?;
                    Revival::Queued(EntryId::parse(&bytes).ok()?)
                }
            };
            Some((*entry, fate))
        })
        .collect()
}

/// The `stats` script's reply: six counts, then the oldest waiting and running entry ids
/// (empty: none).
fn parse_stats(v: Value) -> Option<QueueStats> {
    let items = v.into_array("stats").ok()?;
    let [
        jobs,
        pending,
        delayed,
        dead,
        events,
        workers,
        waiting,
        running,
        paused,
    ] = <[Value; 9]>::try_from(items).ok()?;
    let count = |x: Value| x.as_int("count").ok().and_then(|n| u64::try_from(n).ok());
    let entry = |x: Value| -> Option<Option<EntryId>> {
        let bytes = x.into_bytes("entry id").ok()?;
        if bytes.is_empty() {
            return Some(None);
        }
        EntryId::parse(&bytes).ok().map(Some)
    };
    Some(QueueStats {
        jobs: count(jobs)?,
        pending: count(pending)?,
        delayed: count(delayed)?,
        dead: count(dead)?,
        events: count(events)?,
        workers: count(workers)?,
        oldest_waiting: entry(waiting)?,
        oldest_running: entry(running)?,
        paused_at: {
            let at = paused.into_bytes("paused").ok()?;
            if at.is_empty() {
                None
            } else {
                Some(std::str::from_utf8(&at).ok()?.parse().unwrap_or(0))
            }
        },
    })
}

#[cfg(test)]
mod tests;
