//! The command plan: what the engine asks Redis to do, as data.
//!
//! Each [`Command`] carries an [`OpId`]; its reply comes back to the machine that emitted it
//! as a [`Reply`] with the same id. Commands are not `redis::Cmd`: the adapter translates each
//! kind to one Redis command or one Lua script of [`crate::scripts`], and the in-memory model
//! (`sim`, feature `model`) executes the same kinds with the same semantics.
//!
//! Every multi-key kind touches the keys of one queue only (one hash tag), so it is atomic
//! and cluster-safe. Every kind is safe to send again after an unknown outcome: the
//! transitions that move a job (complete, retry, bury) act only if their XACK removed the
//! entry from the pending list, so a second run does nothing; adds are deduplicated by job
//! id while the job lives. What each machine does with each kind of reply is documented on
//! the variant.

use std::sync::Arc;

use crate::job::JobId;
use crate::naming::{ProducerKeys, QueueKeys};
use crate::value::{EntryId, Value};

/// Identifies one command and its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// A command for Redis, with the id its reply must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The id to pass back with the reply.
    pub op: OpId,
    /// What to do.
    pub kind: CommandKind,
    /// Whether its writes must have reached replicas before it counts as done.
    pub replicas: Option<Replicas>,
}

/// A durability demand: right after the command, on the same connection, `WAIT <count>
/// <timeout>` (in ms); when fewer replicas than `count` acknowledged its writes, a failover
/// could still lose them, so the command's reply is [`Reply::Unknown`] (it ran, and may be
/// lost): the machine sends it again (every command is safe to send again), and the
/// resend's own `WAIT` decides. An error reply stays as it is (nothing ran).
///
/// `WAIT` holds the connection it runs on for up to `timeout` while replicas lag, and a
/// server without `count` replicas never confirms: keep the timeout short, and ask only
/// what the deployment has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    /// How many replicas must acknowledge.
    pub count: u32,
    /// How long `WAIT` may wait (at least 1 ms is sent: 0 would wait forever).
    pub timeout: crate::time::Duration,
}

impl Replicas {
    /// The reply of a command that asked for `self`, given its own reply and its `WAIT`'s.
    #[must_use]
    pub fn judge(self, reply: Reply, wait: &Reply) -> Reply {
        let enough = matches!(wait, Reply::Value(Value::Int(n)) if *n >= i64::from(self.count));
        match reply {
            Reply::Value(Value::Error(_)) => reply,
            Reply::Value(_) if enough => reply,
            Reply::NotSent => Reply::NotSent,
            _ => Reply::Unknown,
        }
    }
}

impl Command {
    /// How long the command may block in Redis (XREAD/XREADGROUP BLOCK), if at all. Blocking
    /// commands must go to a connection of their own whose response timeout exceeds this.
    #[must_use]
    pub fn block_ms(&self) -> Option<u64> {
        match &self.kind {
            CommandKind::Read { block_ms, .. } | CommandKind::ReadEvents { block_ms, .. } => {
                *block_ms
            }
            _ => None,
        }
    }
}

/// The jobs a pipeline settles, by kind (what a `settle` span reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settlements {
    /// Jobs completed.
    pub completed: usize,
    /// Jobs failed and retried.
    pub retried: usize,
    /// Jobs failed for good (dead-lettered).
    pub buried: usize,
}

impl Settlements {
    /// The settlements of `cmds`.
    #[must_use]
    pub fn of(cmds: &[Command]) -> Self {
        let mut s = Self::default();
        for cmd in cmds {
            match &cmd.kind {
                CommandKind::Complete { items, .. } => s.completed += items.len(),
                CommandKind::Retry { items, .. } => s.retried += items.len(),
                CommandKind::Bury { items, .. } => s.buried += items.len(),
                _ => {}
            }
        }
        s
    }

    /// How many jobs in all.
    #[must_use]
    pub fn total(&self) -> usize {
        self.completed + self.retried + self.buried
    }

    /// The operation's name: `ack`, `retry` or `bury` when all are of one kind, else
    /// `settle`.
    #[must_use]
    pub fn operation(&self) -> &'static str {
        match (self.completed > 0, self.retried > 0, self.buried > 0) {
            (true, false, false) => "ack",
            (false, true, false) => "retry",
            (false, false, true) => "bury",
            _ => "settle",
        }
    }
}

/// A job to add: its id, when it is due (`None`: now), and its sealed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The job id (the dedup key).
    pub id: JobId,
    /// When the job becomes runnable (ms since the epoch); `None` runs it at once.
    pub due_ms: Option<u64>,
    /// The sealed job record.
    pub envelope: Arc<[u8]>,
}

/// A finished job's transition, applied only if its entry is still pending: what every
/// settlement carries, and in `then` what its kind needs besides (nothing for a
/// completion, [`NextAttempt`] for a retry, [`DeadJob`] for a dead letter), so that an item
/// holds exactly what its script reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle<T = ()> {
    /// The work stream entry.
    pub entry: EntryId,
    /// The job id (`None` for an entry too malformed to name one).
    pub job: Option<JobId>,
    /// The instance of the add that queued the job (`None` for an entry that did not
    /// open): events and dead letters carry it in plain as field `i` (hex), and the sealed
    /// value is bound to it.
    pub instance: Option<crate::job::Instance>,
    /// The sealed value: result (complete), failure reason (retry, bury).
    pub value: Arc<[u8]>,
    /// The attempt that ended (events carry it).
    pub attempt: u32,
    /// The entry's `e` field as this worker read it. Its first [`FINGERPRINT_LEN`] bytes
    /// (an envelope's header, with its random nonce) go with the settlement, and the
    /// script settles the entry only if it still starts with them (or is gone from the
    /// stream): after a failover that lost writes, Redis can give the same entry id to
    /// another job, and a late answer for the first must not settle the second.
    pub read: Arc<[u8]>,
    /// What this kind of settlement needs besides.
    pub then: T,
}

impl<T> Settle<T> {
    /// The same settlement, with `then` for another kind.
    #[must_use]
    pub fn with<U>(self, then: U) -> Settle<U> {
        Settle {
            entry: self.entry,
            job: self.job,
            instance: self.instance,
            value: self.value,
            attempt: self.attempt,
            read: self.read,
            then,
        }
    }
}

/// A retried job's next attempt ([`CommandKind::Retry`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextAttempt {
    /// The job re-sealed for its next attempt.
    pub envelope: Arc<[u8]>,
    /// When it is due (ms since the epoch): it goes to the work stream if due when the
    /// script runs, else to the delayed set.
    pub due_ms: u64,
}

/// What a dead letter keeps of its job ([`CommandKind::Bury`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadJob {
    /// The entry's sealed job as read (or, for an entry that did not open, its raw bytes,
    /// at most [`crate::worker::MAX_GARBAGE_COPY`] of them).
    pub envelope: Arc<[u8]>,
}

/// How many leading bytes of an entry's `e` field identify what a worker read there
/// ([`Settle::read`]): an envelope's header, whose 12-byte nonce is random per sealing.
pub const FINGERPRINT_LEN: usize = crate::envelope::HEADER_LEN;

/// The fingerprint of a field's value as read: its first [`FINGERPRINT_LEN`] bytes (all of
/// it if shorter).
#[must_use]
pub fn fingerprint(read: &[u8]) -> &[u8] {
    &read[..read.len().min(FINGERPRINT_LEN)]
}

/// The operations of the command plan.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandKind {
    /// `XGROUP CREATE <jobs> workers 0 MKSTREAM`.
    ///
    /// Reply `OK`, or the error `BUSYGROUP` (the group exists): both mean ready. Unknown
    /// outcome: send again. Other errors: send again after a backoff.
    EnsureGroup {
        /// The queue.
        keys: Arc<QueueKeys>,
    },
    /// Script `enqueue`: per job whose id is not marked in `ids` (one HMGET, then one HSET of
    /// the new markers, per 1,000 jobs): XADD it to the work stream (or ZADD it to `delayed`
    /// with its envelope in `payloads` when due later).
    ///
    /// The marker makes adds idempotent, and names the producer the job's outcomes go to.
    /// A producer's id: the marker stays until that producer has read the job's final event
    /// and has no add of it outstanding ([`CommandKind::AckEvents`]), so even an add sent
    /// again after the job completed is recognized. Marker `w` (for producers that read no
    /// events), or a producer no longer registered: the settling worker removes it.
    ///
    /// Reply: an array with, per job, the entry id (added), `1` (delayed) or `0` (a job with
    /// this id is known already: a duplicate). Unknown outcome: send the same jobs again (the
    /// marker makes that idempotent). Transient error: again after a backoff; other errors
    /// fail the jobs to the application.
    ///
    /// `fresh`: every job is due now and has an id no job can hold yet (generated for this
    /// add, first send). Then there is nothing to check: `MULTI`, `HSET ids` of every marker,
    /// one `XADD` per job, `EXEC` — atomic like the script (markers and entries land
    /// together or not at all, so a resend through the script finds them), at a third of
    /// its cost in Redis. Reply: EXEC's array, the HSET's count then the entry ids (an error
    /// in place of an id fails that job).
    Enqueue {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The current time (ms), to tell due jobs from delayed ones.
        now_ms: u64,
        /// The id marker: the adding producer's id (its events stream gets the job's
        /// outcomes, and it forgets the id), or `w` (nobody reads them: the worker forgets).
        marker: Arc<str>,
        /// The jobs, in order.
        jobs: Vec<NewJob>,
        /// New ids, due now, first send: MULTI/EXEC rather than the script.
        fresh: bool,
        /// The adding producer's registration, asserted by the add until this time (ms):
        /// put back among the live producers if it is missing (`ZADD NX`), taken out of
        /// the gone ones, so that a registration Redis lost (a restart without
        /// persistence) is back before any of these jobs can end (their outcomes go only to
        /// registered producers). The reply then ends with `ZADD`'s answer (1: it was
        /// missing), and, in the transaction, `ZREM`'s. `None`: nothing (marker `w`).
        register_until_ms: Option<u64>,
    },
    /// Alone (it does not block): `MULTI`, `XREADGROUP GROUP workers <consumer> COUNT
    /// <count> STREAMS <jobs> >`, `EXISTS <paused>`, `EXEC`: `[its entries or nil, paused
    /// (0/1)]`. With `block_ms`, merged by [`crate::mux`]: `XREADGROUP ... BLOCK <ms> ...`;
    /// when it took entries, the mux checks the queue's pause after it
    /// ([`crate::mux::MuxCommand::Check`]) and answers `[its entries, paused (0/1)]`; a read
    /// that took nothing is answered nil. Either way the check runs after the read: a read
    /// that took entries after a pause always sees it (the worker hands them back
    /// unstarted, and asks only [`CommandKind::IsPaused`] while the pause lasts).
    ///
    /// Reply: as above (nil: nothing came). Unknown outcome: the entries may now sit in
    /// this consumer's pending list unseen; they are reclaimed after the lease like a crashed
    /// worker's, and the read is sent again. Error `NOGROUP`: ensure the group, then read.
    Read {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// This worker's consumer name.
        consumer: String,
        /// Free credits: how many entries may come.
        count: u32,
        /// How long to block; `None`: do not block.
        block_ms: Option<u64>,
    },
    /// Script `complete`: per item, if the entry is pending for `consumer` (a worker that
    /// lost its lease settles nothing) and `XACK` removes it: XADD the sealed result to the
    /// events stream of the producer its id marker names, if that producer is registered
    /// (trimming entries older than `min_event_ms`), else HDEL the marker (`w`, or a
    /// producer gone). Then the work stream is trimmed below its oldest pending entry, and settled
    /// entries further ahead than [`crate::scripts::TRIM_WINDOW_MS`] are deleted by id.
    ///
    /// Reply: an array of `1` (done) or `0` (the entry is not this worker's any more: its
    /// lease was lost, or this is a resend of a transition that was applied). Unknown outcome
    /// or transient error: send again.
    Complete {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// Events older than this (ms) are trimmed (`XADD MINID`).
        min_event_ms: u64,
        /// This worker's consumer name: only entries it holds are settled.
        consumer: String,
        /// The jobs, each with its sealed result.
        items: Vec<Settle>,
    },
    /// Script `retry`: per item, if `XACK` removes the entry: XADD a failure event with the
    /// sealed reason (to its producer's events, as `Complete`), and re-add the re-sealed job: to the work stream if due, else to
    /// `delayed`/`payloads`; the settled entries then leave by the trim of `Complete`.
    /// Reply and outcomes as for `Complete`.
    Retry {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The current time (ms).
        now_ms: u64,
        /// Events older than this (ms) are trimmed.
        min_event_ms: u64,
        /// This worker's consumer name: only entries it holds are settled.
        consumer: String,
        /// The jobs, each with its sealed reason and next attempt.
        items: Vec<Settle<NextAttempt>>,
    },
    /// Script `bury`: per item, if `XACK` removes the entry: XADD the job and its sealed
    /// reason to `dead`, XADD a dead-letter event (when the job id is known; to its
    /// producer's events, or HDEL its marker, as `Complete`); the settled entries then leave by the trim of `Complete`. Reply
    /// and outcomes as for `Complete`.
    Bury {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// Events older than this (ms) are trimmed.
        min_event_ms: u64,
        /// Dead letters older than this (ms) are trimmed (they hold sealed jobs, which
        /// could otherwise be copied back into the work stream and replayed forever).
        min_dead_ms: u64,
        /// This worker's consumer name: only entries it holds are settled.
        consumer: String,
        /// The jobs, each with its sealed reason and what the dead letter keeps.
        items: Vec<Settle<DeadJob>>,
    },
    /// Script `promote`: move up to `limit` delayed jobs due at `now_ms` to the work stream.
    ///
    /// Reply: `[promoted count, next due ms or -1]`. Unknown outcome: nothing to do (the
    /// script is atomic; the next tick runs it again).
    Promote {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The current time (ms).
        now_ms: u64,
        /// The most jobs to move at once.
        limit: u32,
    },
    /// `PING`: is Redis answering? A producer sends it after an unknown outcome when it has
    /// nothing else to send (so that it learns Redis is back without an add to try).
    ///
    /// Reply: `PONG`. Unknown outcome: still unreachable; again after a backoff.
    Ping,
    /// Script `reclaim`: the queue's upkeep (see [`crate::scripts::RECLAIM`]): sweep what
    /// producers gone for good left, promote the due delayed jobs, `XAUTOCLAIM <jobs> workers <consumer> <min_idle_ms> <cursor> COUNT
    /// <count>` (when `count` > 0) with each claimed entry's delivery count, and schedule
    /// this worker's next upkeep so that the queue's live workers run one per
    /// `interval_ms` between them, however many they are.
    ///
    /// Reply: `[next cursor, [[id, fields, deliveries], ...], [deleted ids], next due ms or
    /// -1, next visit ms]`. Unknown outcome: the claimed entries are reclaimed again after
    /// another lease; the upkeep runs again after a backoff.
    Reclaim {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// This worker's consumer name.
        consumer: String,
        /// Entries idle at least this long are taken (the lease).
        min_idle_ms: u64,
        /// Where the scan of the pending list resumes.
        cursor: EntryId,
        /// Free credits (0: promote and schedule only).
        count: u32,
        /// The current time (ms).
        now_ms: u64,
        /// The queue's upkeep interval (ms), shared by its workers.
        interval_ms: u64,
        /// This visit's spread, in thousandths (500..=1500).
        jitter: u32,
        /// The most delayed jobs to promote.
        promote_limit: u32,
    },
    /// Script `heartbeat`: per entry still owned by `consumer`,
    /// `XCLAIM ... 0 <id> IDLE <idle_ms> JUSTID`, without stealing entries it lost. With
    /// `idle_ms` 0 this extends the lease (a heartbeat); with the lease as `idle_ms` it hands
    /// the entry back (any worker's next reclaim takes it at once).
    ///
    /// Reply: an array of `1` (done) or `0` (not owned any more). Unknown outcome: the next
    /// heartbeat comes soon enough (a third of the lease); a lost hand-back is reclaimed
    /// after the lease.
    Heartbeat {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// This worker's consumer name.
        consumer: String,
        /// The idle time to set: 0 extends, the lease hands back.
        idle_ms: u64,
        /// The entries never started here (handed back in a pause or a drain): their
        /// delivery is taken back (`RETRYCOUNT` one less), so it is not counted as a stall.
        unstarted: bool,
        /// The entries.
        entries: Vec<EntryId>,
    },
    /// `XREAD COUNT <count> [BLOCK <ms>] STREAMS <events> <after>`: results and failures
    /// after the last event seen (never `$`, which would miss those written meanwhile).
    ///
    /// Reply: nil or the entries. Unknown outcome: read again from the same cursor.
    ReadEvents {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The producer whose events these are.
        producer: Arc<ProducerKeys>,
        /// The last event id seen.
        after: EntryId,
        /// The most events to read.
        count: u32,
        /// How long to block; `None`: do not block.
        block_ms: Option<u64>,
    },
    /// Script `ack_events`: `XTRIM <events> MINID <through + 1>` (exact), for the events the
    /// producer has read and surfaced (every event up to `through`: it reads them in order
    /// from its cursor), and `HDEL ids <jobs...>` for the markers of jobs it is done with.
    /// One trim drops whole stream nodes; deleting each event by id cost Redis a node
    /// search per event.
    ///
    /// Reply: the count of events trimmed, or `-1` (see `check`). Unknown outcome or
    /// error: sent again with the next ack (XTRIM MINID and HDEL are idempotent).
    AckEvents {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The producer whose events these are.
        producer: Arc<ProducerKeys>,
        /// The instance's token: an instance superseded by another under the same id gets
        /// the error `SUPERSEDED` and changes nothing.
        token: Arc<str>,
        /// The last event surfaced; `None`: trim nothing.
        through: Option<EntryId>,
        /// The job ids whose markers go.
        forget: Vec<String>,
        /// The last event read (the producer's cursor) and the first [`FINGERPRINT_LEN`]
        /// bytes of its `v` field as read. If the stream holds something else there, or
        /// lacks it while its last generated id is behind it, a failover lost the stream's
        /// tail and new events may have ids at or below the cursor: nothing is trimmed, and
        /// the reply is `-1` (the producer reads the stream again from its start).
        check: Option<(EntryId, Arc<[u8]>)>,
    },
    /// Script `events_tail`: the last id its events stream ever generated (`XINFO STREAM`'s
    /// `last-generated-id`; `0-0` when there is no stream). Sent after the connection
    /// failed (a failover may have lost the stream's tail): a stream whose last id is
    /// behind the producer's cursor moved backwards, and new events could get ids at or
    /// below the cursor, which a read after it would skip; the cursor steps back to it.
    ///
    /// Reply: the id. Unknown outcome or error: asked again after a backoff.
    EventsTail {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The producer whose events these are.
        producer: Arc<ProducerKeys>,
    },
    /// Script `peek_events`: the events of every registered producer after its cursor,
    /// read without acknowledging (an operator's tail; the producers read their own). Per
    /// producer (registration order) `XRANGE <events>:<p> (<cursor> + COUNT <left>`, the
    /// cursor being the one in `cursors` or else `since`, until `count` entries are read.
    ///
    /// Reply: an array of `[producer, entries]` for producers with entries. Unknown
    /// outcome: ask again (nothing changes).
    PeekEvents {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The cursor of producers not in `cursors`.
        since: EntryId,
        /// Each producer's cursor: the last entry read of its stream.
        cursors: Vec<(String, EntryId)>,
        /// The most entries in the reply.
        count: u32,
    },
    /// Script `key_usage`: one page of a queue's envelopes counted by the key id in their
    /// headers (rotation progress: a retired key can go once nothing names it). `Jobs`:
    /// field `e` of the work stream's entries after `after`; `Dead`: fields `e` and `r` of
    /// the dead letters after `after`; `Delayed`: the sealed jobs of the delayed set's
    /// members `offset .. offset + count` (by due time).
    ///
    /// Reply: `[more (1: a full page), last entry read (streams; empty otherwise), then
    /// key id as text (or "bad": not an envelope of this version) and its count, ...]` in
    /// order of first appearance. Unknown outcome: ask again (nothing changes).
    KeyUsage {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// Where to count.
        source: crate::producer::EnvelopeSource,
        /// Streams: the page starts after this entry.
        after: EntryId,
        /// Delayed: the page starts at this rank.
        offset: u64,
        /// The page's size (at least 1).
        count: u32,
    },
    /// Script `stats`: `[waiting + pending jobs, pending, ZCARD delayed, XLEN dead, XLEN
    /// of the producer's events]`.
    Stats {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The producer asking.
        producer: Arc<ProducerKeys>,
    },
    /// Script `register`: the producer promises to be back by `until_ms` (`ZADD producers`;
    /// out of `gone` if it was swept meanwhile), and sweeps what producers gone for good
    /// left, as `Reclaim` does (a queue without workers is swept too).
    ///
    /// Reply: `1` (it was not registered: the first registration, or it had been declared
    /// gone, its unread outcomes swept), `0` (refreshed) or `-1` (superseded: another
    /// instance holds the id). Unknown outcome or error: again after a backoff.
    Register {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The producer.
        producer: Arc<ProducerKeys>,
        /// The instance's token (see `owners` in [`QueueKeys`]).
        token: Arc<str>,
        /// The instance's first registration: it takes the id over. A refresh (false) of an
        /// instance whose id was taken over answers -1 and changes nothing.
        claim: bool,
        /// The current time (ms): producers past their promise are gone.
        now_ms: u64,
        /// The promise.
        until_ms: u64,
    },
    /// `XRANGE <dead> (<after> + COUNT <count>`: a page of dead letters, oldest first.
    ///
    /// Reply: the entries. Unknown outcome or transient error: read again.
    ReadDead {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The page starts after this entry (`0-0`: the first).
        after: EntryId,
        /// The most letters.
        count: u32,
    },
    /// Script `revive`: per item (dead entry, job id, the job re-sealed as attempt 1), if the
    /// dead letter is still there and no job of that id lives (`HSETNX ids <job> <marker>`):
    /// XADD the job to the work stream and XDEL the letter.
    ///
    /// Reply: per item the new entry id, `0` (the letter is gone: revived or deleted
    /// before) or `-1` (a job with that id lives; the letter stays). Unknown outcome: send
    /// again (a letter revived the first time is gone the second).
    Revive {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The id marker of the revived jobs (see `Enqueue`).
        marker: Arc<str>,
        /// Dead entry, job id, sealed job.
        items: Vec<(EntryId, String, Arc<[u8]>)>,
    },
    /// Script `find_job`: where job `job` is. Its id marker, its due time if delayed, the
    /// pending entry that holds it (among the first `limit` pending: entry, consumer,
    /// deliveries), the waiting entry that holds it (among the first `limit` after the
    /// group's last delivered one), the newest dead letter of it (among the last `limit`).
    /// Bounded: O(limit) at most, for an operator's question, not for a hot path.
    ///
    /// Reply: `[marker or "", due or -1, [entry, consumer, deliveries] or [], waiting entry
    /// or "", [dead entry, attempt] or []]`. Unknown outcome: ask again.
    FindJob {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The job id.
        job: String,
        /// How far each scan goes.
        limit: u32,
    },
    /// Script `delayed_job`: one delayed job, by id. `promote`: to the work stream now (its
    /// payload gone: dropped, as a promotion does). Withdraw (`withdraw_as` is the caller's
    /// marker): out of the delayed set with its payload and marker, only if its marker is the
    /// caller's (a producer withdraws its own jobs, whose handles it can end).
    ///
    /// Reply: promote: the new entry id, or `0` (not delayed); withdraw: `1`, `0` (not
    /// delayed) or `-1` (another producer's). Unknown outcome: ask again (a withdrawn job's
    /// marker is a tombstone, `x:<marker>`, until the producer forgets it with its next ack:
    /// a second run finds it and answers `1` again).
    DelayedJob {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The job id.
        job: String,
        /// `None`: promote; `Some(marker)`: withdraw as that marker.
        withdraw_as: Option<Arc<str>>,
    },
    /// Script `workers`: the queue's live workers (consumer names) with the time each
    /// promised to run its next upkeep by (ms), soonest first.
    ///
    /// Reply: a flat array of name, time (as text). Unknown outcome: ask again.
    Workers {
        /// The queue.
        keys: Arc<QueueKeys>,
    },
    /// Script `tail_log`: opens the queue's outcome log if it is not there (an entry of kind
    /// `open`), keeps it `keep_ms` longer (PEXPIRE), and reads up to `count` entries after
    /// `after`. While the log exists, the settle scripts append every outcome to it (job,
    /// kind `c`/`f`/`d`, attempt, producer marker; nothing sealed); it expires `keep_ms`
    /// after the last tailer's read.
    ///
    /// Reply: the entries. Unknown outcome: ask again (idempotent).
    TailLog {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// Entries after this one.
        after: EntryId,
        /// At most this many.
        count: u32,
        /// How long the log stays after this read (ms, at least 1).
        keep_ms: u64,
    },
    /// `EXISTS <paused>`: a paused worker's question, once a second, instead of reads.
    ///
    /// Reply: 1 (paused) or 0. Unknown outcome: ask again.
    IsPaused {
        /// The queue.
        keys: Arc<QueueKeys>,
    },
    /// Pauses the queue in Redis (`HSET <paused> at <now>`) or resumes it (`DEL
    /// <paused>`), for every producer and worker of the queue, in every process.
    ///
    /// Reply: the HSET's or DEL's integer. Unknown outcome: send again (idempotent).
    SetPaused {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// Pause (`true`) or resume.
        paused: bool,
        /// When (ms), recorded with a pause.
        now_ms: u64,
    },
    /// `XDEL <dead> <entries...>` (at least one).
    ///
    /// Reply: how many were deleted. Unknown outcome: send again.
    DeleteDead {
        /// The queue.
        keys: Arc<QueueKeys>,
        /// The dead letters' entries.
        entries: Vec<EntryId>,
    },
    /// Script `destroy`: `DEL` every key of the queue, with every producer's events stream
    /// (one slot, so one step).
    Destroy {
        /// The queue.
        keys: Arc<QueueKeys>,
    },
}

/// What came back for a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Redis answered (possibly with an error reply, [`Value::Error`]).
    Value(Value),
    /// The connection failed after the command may have been sent: it may or may not have
    /// run. The engine treats every kind as possibly run.
    Unknown,
    /// The command never left: no connection could be made (refused). Nothing ran. An
    /// adapter that cannot tell says [`Reply::Unknown`]; this one lets a producer tell the
    /// caller of an add that its job is not queued.
    NotSent,
}

/// Whether an error reply is worth retrying as is: the server is loading, busy, failing
/// over, or the cluster is reconfiguring.
#[must_use]
pub fn is_transient_error(message: &str) -> bool {
    const TRANSIENT: [&str; 10] = [
        "LOADING",
        // A cluster's redirects (the command did not run on that node: the adapter reads
        // the slot table again, and the resend goes to the slot's new node) and a blocked
        // read a failover or a migration ended.
        "MOVED",
        "ASK",
        "UNBLOCKED",
        "BUSY",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MASTERDOWN",
        "READONLY",
        "NOREPLICAS",
    ];
    let code = message.split(' ').next().unwrap_or_default();
    TRANSIENT.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_fewer_replicas_acknowledged_has_an_unknown_outcome() {
        let r = Replicas {
            count: 2,
            timeout: crate::time::Duration::from_millis(100),
        };
        let ok = Reply::Value(Value::Int(1));
        let refused = Reply::Value(Value::Error("OOM".into()));
        assert_eq!(r.judge(ok.clone(), &Reply::Value(Value::Int(2))), ok);
        assert_eq!(r.judge(ok.clone(), &Reply::Value(Value::Int(3))), ok);
        assert_eq!(
            r.judge(ok.clone(), &Reply::Value(Value::Int(1))),
            Reply::Unknown
        );
        assert_eq!(r.judge(ok.clone(), &Reply::Unknown), Reply::Unknown);
        let moved = Reply::Value(Value::Error("ERR WAIT cannot be used".into()));
        assert_eq!(r.judge(ok, &moved), Reply::Unknown);
        // Nothing ran: the command's own answer stands.
        assert_eq!(r.judge(refused.clone(), &Reply::Unknown), refused);
        assert_eq!(r.judge(Reply::NotSent, &Reply::NotSent), Reply::NotSent);
    }

    #[test]
    fn transient_errors() {
        assert!(is_transient_error(
            "LOADING Redis is loading the dataset in memory"
        ));
        assert!(is_transient_error(
            "READONLY You can't write against a read only replica."
        ));
        assert!(!is_transient_error("OOM command not allowed"));
        assert!(!is_transient_error(
            "BUSYGROUP Consumer Group name already exists"
        ));
        assert!(!is_transient_error(""));
    }
}
