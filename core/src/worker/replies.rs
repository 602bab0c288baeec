//! The worker's handling of replies: deliveries in, settlements confirmed, faults absorbed.
//!
//! Per command (see [`crate::command::CommandKind`] for the Redis side):
//! - ensure group: `OK`/`BUSYGROUP` → ready; otherwise sent again after a backoff.
//! - read/reclaim: entries become deliveries (or dead letters); an unknown outcome loses
//!   nothing, as the entries sit in this consumer's pending list until reclaimed; `NOGROUP`
//!   re-creates the group.
//! - settle (complete/retry/bury): `0` for an item means another worker settled it
//!   (`Discarded`); an unknown outcome or an error puts the items back to be sent again,
//!   after a backoff (the scripts are idempotent).
//! - heartbeat: `0` → the lease was lost (`LeaseLost`); failures wait for the next beat.

use std::sync::Arc;

use super::{
    DeadJob, Delivery, InFlight, Outgoing, PAUSED_POLL_MS, Running, SettleKind, Settlement, Worker,
    WorkerError, WorkerEvent,
};
use crate::command::{OpId, Reply, Settle, is_transient_error};
use crate::envelope::{Context, Purpose, outcome_detail};
use crate::job::{Instance, JobId, JobRecord};
use crate::random::Random;
use crate::retry::POLL_INTERVAL_MS;
use crate::time::{Instant, millis};
use crate::value::{EntryId, ReplyError, StreamEntry, Value, decode_read, split_paused};

impl Worker {
    /// The reply to command `op`. Every command gets exactly one reply (a value, an error
    /// reply, or `Reply::Unknown` when the connection failed).
    pub fn handle_reply(
        &mut self,
        now: Instant,
        op: OpId,
        reply: Reply,
    ) -> Result<(), WorkerError> {
        self.check_drained()?;
        self.now_ms = now.unix_ms();
        let state = self
            .in_flight
            .finish(op)
            .ok_or(WorkerError::UnknownOp(op))?;
        let reply = match reply {
            // Nothing ran: for a worker, as good as unknown (every command is sent again).
            Reply::NotSent => Reply::Unknown,
            Reply::Value(v) => {
                // Redis answered: a backoff the connection caused ends now.
                self.resend.reachable();
                Reply::Value(v)
            }
            Reply::Unknown => Reply::Unknown,
        };
        match (state, reply) {
            (InFlight::Settle { kind, items }, reply) => self.settled(kind, items, reply),
            (InFlight::HandBack, _) => {}
            (InFlight::Heartbeat { entries }, reply) => self.beaten(&entries, reply),
            (InFlight::Promote, Reply::Unknown | Reply::NotSent) => {
                // Promotion is idempotent: again after the backoff.
                let at = self.resend.fail_unknown(self.now_ms);
                self.promote_by(at);
            }
            (_, Reply::Unknown | Reply::NotSent) => {
                self.resend.fail_unknown(self.now_ms);
            }
            (InFlight::EnsureGroup, Reply::Value(v)) => match v {
                Value::Status(_) => self.group_ok(),
                Value::Error(e) if e.starts_with("BUSYGROUP") => self.group_ok(),
                other => self.trouble("XGROUP CREATE", &other),
            },
            (InFlight::Read { .. }, Reply::Value(v)) => self.read(v),
            (InFlight::Reclaim { .. }, Reply::Value(v)) => {
                // The spread of the next upkeep: uniform in [500, 1500] thousandths.
                self.jitter = 500 + (self.rng.next_u64() % 1001) as u32;
                self.reclaimed(v);
            }
            (InFlight::Promote, Reply::Value(v)) => self.promoted(v),
            (InFlight::IsPaused, Reply::Value(Value::Int(n))) => {
                self.resend.succeed();
                self.pause_seen(n != 0);
                if n != 0 {
                    self.next_read_ms = self.now_ms.saturating_add(PAUSED_POLL_MS);
                }
            }
            (InFlight::IsPaused, Reply::Value(v)) => self.trouble("EXISTS", &v),
        }
        self.maybe_drained();
        Ok(())
    }

    fn group_ok(&mut self) {
        self.group_ready = true;
        self.resend.succeed();
    }

    /// Promote no later than `due` (ms).
    fn promote_by(&mut self, due: u64) {
        let due = due.max(self.now_ms.saturating_add(1));
        self.next_promote_ms = Some(self.next_promote_ms.map_or(due, |d| d.min(due)));
    }

    /// Delays what is to be sent again (50 ms doubling to 1 s; a success resets it).
    fn backoff(&mut self) {
        self.resend.fail(self.now_ms);
    }

    fn trouble(&mut self, what: &str, value: &Value) {
        if let Value::Error(e) = value {
            if e.contains("NOGROUP") {
                // The stream or its group vanished (deleted, or Redis lost its data).
                self.group_ready = false;
            }
        }
        self.events.push_back(WorkerEvent::Trouble {
            message: format!("{what}: unexpected reply {value:?}"),
        });
        self.backoff();
    }

    /// A read's reply ([`split_paused`]).
    fn read(&mut self, v: Value) {
        let (paused, v) = match split_paused(v) {
            Ok(split) => split,
            Err(ReplyError::Redis(e)) => return self.trouble("read", &Value::Error(e)),
            Err(e) => return self.bad_shape("read", e),
        };
        if let Value::Error(_) = v {
            return self.trouble("XREADGROUP", &v);
        }
        match decode_read(v) {
            Ok(entries) => {
                self.resend.succeed();
                if let Some(paused) = paused {
                    self.pause_seen(paused);
                }
                if self.paused {
                    // Nothing starts: what came (a read that met the pause) goes back
                    // unstarted, to be reclaimed after the queue is resumed.
                    self.idle = false;
                    self.next_read_ms = self.now_ms.saturating_add(PAUSED_POLL_MS);
                    self.give_back.extend(entries.into_iter().map(|e| e.id));
                    return;
                }
                self.idle = entries.is_empty();
                if entries.is_empty() && self.cfg.block.is_none() {
                    self.next_read_ms = self.now_ms.saturating_add(POLL_INTERVAL_MS);
                }
                for e in entries {
                    self.accept(e, 1);
                }
            }
            Err(e) => self.bad_shape("XREADGROUP", e),
        }
    }

    /// Redis said whether the queue is paused.
    fn pause_seen(&mut self, paused: bool) {
        if paused == self.paused {
            return;
        }
        self.paused = paused;
        self.events.push_back(WorkerEvent::PauseSeen { paused });
        if !paused {
            // Resumed: read now, and the upkeep now, so that what workers handed back
            // during the pause runs without waiting for its turn.
            self.next_read_ms = self.now_ms;
            self.next_reclaim_ms = self.now_ms;
        }
    }

    fn bad_shape(&mut self, what: &str, e: ReplyError) {
        self.events.push_back(WorkerEvent::Trouble {
            message: format!("{what}: {e}"),
        });
        self.backoff();
    }

    fn reclaimed(&mut self, v: Value) {
        if let Value::Error(_) = v {
            return self.trouble("reclaim", &v);
        }
        match decode_reclaim(v) {
            Ok(r) => {
                // A finished scan waits for this worker's next turn; a partial one goes on,
                // unless it did not move (no credits to claim with, or the queue was
                // paused: the script skipped the claim): it goes on at the next turn, or
                // the worker would send the same upkeep again and again meanwhile.
                let moved = r.cursor != self.reclaim_cursor;
                self.reclaim_cursor = r.cursor;
                self.next_reclaim_ms = match r.cursor == EntryId::ZERO || !moved {
                    true => r.next_visit_ms.max(self.now_ms.saturating_add(1)),
                    false => self.now_ms,
                };
                if let Some(due) = r.next_due_ms {
                    self.promote_by(due);
                }
                if !r.claimed.is_empty() {
                    self.events.push_back(WorkerEvent::Reclaimed {
                        count: r.claimed.len(),
                    });
                }
                for (entry, deliveries) in r.claimed {
                    self.accept(entry, deliveries);
                }
            }
            Err(e) => {
                self.next_reclaim_ms = self
                    .now_ms
                    .saturating_add(millis(self.cfg.reclaim_interval));
                self.bad_shape("reclaim", e);
            }
        }
    }

    fn promoted(&mut self, v: Value) {
        let reply = v.into_array("promote reply").ok();
        let count = reply
            .as_ref()
            .and_then(|a| a.first().and_then(|n| n.as_int("promoted").ok()));
        let next = reply
            .as_ref()
            .and_then(|a| a.get(1).and_then(|n| n.as_int("next due").ok()));
        match (count, next) {
            // More were due than one call moves: go on at once.
            (Some(n), _) if n >= i64::from(super::PROMOTE_LIMIT) => self.promote_by(0),
            (Some(_), Some(due)) => {
                if let Ok(due) = u64::try_from(due) {
                    self.promote_by(due);
                }
            }
            _ => {
                self.events.push_back(WorkerEvent::Trouble {
                    message: "promote: unexpected reply".into(),
                });
                let at = self.resend.fail(self.now_ms);
                self.promote_by(at);
            }
        }
    }

    fn beaten(&mut self, entries: &[EntryId], reply: Reply) {
        let now = self.now_ms;
        let flags = match reply {
            Reply::Value(v) => v
                .into_array("heartbeat reply")
                .ok()
                .filter(|a| a.len() == entries.len()),
            Reply::Unknown | Reply::NotSent => None,
        };
        for (i, entry) in entries.iter().enumerate() {
            let Some(run) = self.running.get_mut(entry) else {
                continue;
            };
            // On failure too, wait a third of a lease before the next beat: two more tries
            // fit in the lease.
            run.last_beat_ms = now;
            let lost = flags.as_ref().is_some_and(|f| f[i] == Value::Int(0));
            if lost && !run.lost {
                run.lost = true;
                self.events.push_back(WorkerEvent::LeaseLost {
                    entry: *entry,
                    job: run.id.clone(),
                });
            }
        }
    }

    fn settled(&mut self, kind: SettleKind, items: Vec<Outgoing>, reply: Reply) {
        let flags = match &reply {
            Reply::Value(Value::Array(a)) if a.len() == items.len() => Some(a),
            _ => None,
        };
        let Some(flags) = flags else {
            if let Reply::Value(v) = &reply {
                if !matches!(v, Value::Error(e) if is_transient_error(e)) {
                    self.events.push_back(WorkerEvent::Trouble {
                        message: format!("settle: unexpected reply {v:?}"),
                    });
                }
            }
            // Send again, in order, ahead of newer settlements: the scripts are idempotent.
            for item in items.into_iter().rev() {
                self.outbox.push_front(item);
            }
            return match reply {
                Reply::Unknown | Reply::NotSent => {
                    self.resend.fail_unknown(self.now_ms);
                }
                Reply::Value(_) => self.backoff(),
            };
        };
        self.resend.succeed();
        let mut retry_due = None::<u64>;
        let mut applied = 0;
        for (item, flag) in items.iter().zip(flags) {
            if *flag != Value::Int(1) {
                self.events.push_back(WorkerEvent::Discarded {
                    entry: item.entry(),
                });
                continue;
            }
            applied += 1;
            if let Outgoing::Retry(r) = item {
                let due = r.then.due_ms;
                if due > self.now_ms {
                    retry_due = Some(retry_due.map_or(due, |d| d.min(due)));
                }
            }
        }
        if applied > 0 {
            let settlement = match kind {
                SettleKind::Complete => Settlement::Completed,
                SettleKind::Retry => Settlement::Retried,
                SettleKind::Bury => Settlement::Buried,
            };
            self.events.push_back(WorkerEvent::Settled {
                settlement,
                count: applied,
            });
        }
        if let Some(due) = retry_due {
            // This worker put the job in the delayed set: it promotes it when due.
            self.promote_by(due);
        }
    }

    /// A delivered entry: run it, or dead-letter it when it cannot run.
    fn accept(&mut self, entry: StreamEntry, deliveries: u64) {
        if let Some(run) = self.running.get_mut(&entry.id) {
            if entry.field(b"e").unwrap_or_default() == &run.envelope[..] {
                // Our own running entry, reclaimed after missed heartbeats: it is ours again.
                run.last_beat_ms = self.now_ms;
                run.lost = false;
                return;
            }
            // The id now names another entry: a failover lost the one this job ran from
            // (Redis gives an id again once the stream's top went back). That run is void
            // (its settlement would find another job there); the job runs again from what
            // Redis kept of it, and this entry is delivered as what it now holds.
            if let Some(old) = self.running.remove(&entry.id) {
                self.events.push_back(WorkerEvent::Superseded {
                    entry: entry.id,
                    job: old.id,
                });
            }
        }
        // Only a reclaim (deliveries > 1) can bring back an entry that ran here.
        if deliveries > 1 && self.settling(entry.id) {
            // Ours, run and settled here, the settlement not yet confirmed (Redis was away
            // longer than the lease, and this worker's own upkeep claimed it back): it
            // must not run again; the settlement goes on and finds it held.
            return;
        }
        if self.draining {
            self.give_back.push(entry.id);
            return;
        }
        let job_id = entry
            .field(b"j")
            .and_then(|j| std::str::from_utf8(j).ok())
            .filter(|j| !j.is_empty())
            .map(str::to_owned);
        let envelope: Arc<[u8]> = entry.field(b"e").unwrap_or_default().into();
        let Some(id) = job_id else {
            let reason = "malformed entry: no job id (field j)".to_owned();
            return self.bury_unread(entry.id, None, envelope, reason);
        };
        let ctx = Context::new(Purpose::Job, &self.keys.scope, id.as_bytes());
        let (job, trace): (JobRecord, _) = match self.sealer.open_traced(&ctx, &envelope) {
            Ok(opened) => opened,
            Err(e) => {
                let reason = format!("unreadable job: {e}");
                return self.bury_unread(entry.id, Some(&id), envelope, reason);
            }
        };
        if job.id.0 != id {
            let reason = format!("the job record names {}", job.id);
            return self.bury_unread(entry.id, Some(&id), envelope, reason);
        }
        let age = self.now_ms.saturating_sub(job.created_at_ms);
        if age > millis(self.cfg.max_job_age) {
            let reason = format!(
                "too old to run: created {age} ms ago, max_job_age {} ms (a replayed entry?)",
                millis(self.cfg.max_job_age)
            );
            return self.bury_unread(entry.id, Some(&id), envelope, reason);
        }
        if deliveries > u64::from(self.cfg.retry.max_stalled) {
            let reason = format!(
                "stalled: delivered {deliveries} times without an answer (max_stalled {})",
                self.cfg.retry.max_stalled
            );
            let attempt = job.attempt;
            let known = Some((job.id, job.instance));
            return self.bury(entry.id, known, envelope, reason, attempt);
        }
        let run = self.next_run;
        self.next_run += 1;
        self.running.insert(
            entry.id,
            Running {
                id: job.id.clone(),
                attempt: job.attempt,
                instance: job.instance,
                envelope,
                started_ms: self.now_ms,
                last_beat_ms: self.now_ms,
                lost: false,
                run,
            },
        );
        self.events.push_back(WorkerEvent::Job(Delivery {
            entry: entry.id,
            job,
            deliveries,
            trace,
            run,
        }));
    }

    /// Dead-letters an entry that does not open. Its `j` field is not authenticated (anyone
    /// who can write Redis can name a live job there), so it ends no job: no event, no
    /// marker change; the claimed id is kept in the (sealed) reason, for diagnosis only. At
    /// most [`MAX_GARBAGE_COPY`] bytes of the entry go into the dead letter.
    /// Whether `entry` ran here and its settlement awaits Redis.
    fn settling(&self, entry: EntryId) -> bool {
        self.outbox.iter().any(|s| s.entry() == entry)
            || self.in_flight.any(|f| match f {
                InFlight::Settle { items, .. } => items.iter().any(|s| s.entry() == entry),
                _ => false,
            })
    }

    fn bury_unread(
        &mut self,
        entry: EntryId,
        claimed: Option<&str>,
        envelope: Arc<[u8]>,
        reason: String,
    ) {
        let reason = match claimed {
            Some(id) => {
                let id: String = id.chars().take(200).collect();
                format!("{reason} (the entry claims job id {id:?}, unauthenticated)")
            }
            None => reason,
        };
        let envelope: Arc<[u8]> = match envelope.len() > MAX_GARBAGE_COPY {
            true => Arc::from(&envelope[..MAX_GARBAGE_COPY]),
            false => envelope,
        };
        self.bury(entry, None, envelope, reason, 0);
    }

    /// Dead-letters an entry that never ran: the reason is sealed for the job and its
    /// instance (or, for an entry that did not open, for an empty item and a zero instance).
    fn bury(
        &mut self,
        entry: EntryId,
        known: Option<(JobId, Instance)>,
        envelope: Arc<[u8]>,
        reason: String,
        attempt: u32,
    ) {
        let (job, instance) = match known {
            Some((job, instance)) => (Some(job), Some(instance)),
            None => (None, None),
        };
        let item = job.as_ref().map_or(&b""[..], |j| j.0.as_bytes());
        let detail = outcome_detail(attempt, &instance.unwrap_or(Instance([0; 16])).0);
        let ctx = Context::outcome(Purpose::DeadLetter, &self.keys.scope, item, &detail);
        // Sealing a short reason cannot fail; should it, the entry still leaves the queue
        // (never blocking it) with an empty reason.
        let value = self
            .reason_sealer
            .seal_bytes(&ctx, reason.as_bytes(), &mut self.rng)
            .unwrap_or_default();
        self.events.push_back(WorkerEvent::DeadLettered {
            entry,
            job: job.clone(),
            reason,
        });
        self.outbox.push_back(Outgoing::Bury(Settle {
            entry,
            job,
            instance,
            value: value.into(),
            read: envelope.clone(),
            attempt,
            then: DeadJob { envelope },
        }));
    }
}

/// The most bytes of an entry that does not open copied into its dead letter: enough to
/// diagnose it, not a way to make Redis hold a 512 MB garbage value twice.
pub const MAX_GARBAGE_COPY: usize = 4096;

/// The reclaim script's reply.
struct Reclaimed {
    cursor: EntryId,
    claimed: Vec<(StreamEntry, u64)>,
    next_due_ms: Option<u64>,
    next_visit_ms: u64,
}

/// `[cursor, [[id, fields, deliveries], ...], [deleted ids], next due or -1, next visit]`.
fn decode_reclaim(v: Value) -> Result<Reclaimed, ReplyError> {
    const WHAT: &str = "reclaim reply [cursor, claimed, deleted, next due, next visit]";
    let shape = |got: &str| ReplyError::Shape {
        expected: WHAT,
        got: got.into(),
    };
    let parts = v.into_array(WHAT)?;
    let [cursor, claimed, _deleted, next_due, next_visit]: [Value; 5] = parts
        .try_into()
        .map_err(|p: Vec<Value>| shape(&format!("{} items", p.len())))?;
    let cursor = EntryId::parse(&cursor.into_bytes(WHAT)?)?;
    let mut out = Vec::new();
    for item in claimed.into_array(WHAT)? {
        let mut parts = item.into_array(WHAT)?;
        let n = match parts.pop() {
            Some(n) => n.as_int("delivery count")?,
            None => continue,
        };
        let entry = StreamEntry::decode(Value::Array(parts))?;
        out.push((entry, u64::try_from(n).unwrap_or(0)));
    }
    let next_due_ms = u64::try_from(next_due.as_int("next due")?).ok();
    let next_visit_ms = u64::try_from(next_visit.as_int("next visit")?)
        .map_err(|_| shape("a negative next visit"))?;
    Ok(Reclaimed {
        cursor,
        claimed: out,
        next_due_ms,
        next_visit_ms,
    })
}
