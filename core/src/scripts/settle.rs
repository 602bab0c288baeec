//! `complete`, `retry`, `bury`: a worker settling the jobs it holds. The three scripts share
//! one prelude (which of the batch's entries this consumer holds, taken once each, acked in
//! one `XACK`), one routing of outcomes to the producer that added the job, one outcome
//! log, and one end (settled entries leave the stream by trimming).

use std::borrow::Cow;

use super::{Arg, Invocation, Script, b, id, min_id, num, script};
use crate::command::{CommandKind, DeadJob, NextAttempt, Settle, fingerprint};
use crate::naming::QueueKeys;
use crate::value::EntryId;

/// How far (in ms of entry id) a settled entry may be ahead of the oldest entry still
/// pending and be left for the trim rather than deleted on its own: it bounds what a long
/// job holds back in the stream to this much of the queue's traffic.
pub const TRIM_WINDOW_MS: u64 = 2_000;

/// The end of every settle script (`complete`, `retry`, `bury`), after their XACKs of the
/// entries in the Lua table `settled`: settled entries leave the work stream by trimming,
/// not one by one (XDEL costs a search of the entry's node each). Everything below the
/// oldest entry still pending (or, with none pending, up to the group's last delivered
/// entry) has been delivered and acknowledged, and goes in one `XTRIM MINID`. Settled
/// entries more than [`TRIM_WINDOW_MS`] ahead of that floor (a long job is still running)
/// are deleted by id, so that a stuck job cannot hold back the stream's memory.
macro_rules! trim_settled {
    () => {
        r#"
if #settled > 0 then
  local floor
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local f = {}
    for k = 1, #g, 2 do f[g[k]] = g[k + 1] end
    if f['name'] == 'workers' then
      if f['pending'] > 0 then
        floor = redis.call('XPENDING', KEYS[1], 'workers', '-', '+', 1)[1][1]
      else
        -- Past the last delivered entry: its seq + 1, computed only where a Lua number
        -- (a double) is exact (15 digits); beyond, the entry itself (kept for the next trim).
        local last = f['last-delivered-id']
        local ms, seq = string.match(last, '^(%d+)-(%d+)$')
        if ms and #seq <= 15 then
          floor = ms .. '-' .. string.format('%d', tonumber(seq) + 1)
        else
          floor = last
        end
      end
    end
  end
  if not floor then return out end
  redis.call('XTRIM', KEYS[1], 'MINID', floor)
  -- Entries far ahead of the floor go by id; no arithmetic beyond 15 digits of ms.
  local fms = string.match(floor, '^%d+')
  if fms and #fms <= 15 then
    local far = tonumber(fms) + 2000
    local stray = {}
    for _, entry in ipairs(settled) do
      local ems = string.match(entry, '^%d+')
      if #ems > 16 or tonumber(ems) > far then
        stray[#stray + 1] = entry
      end
    end
    if #stray > 0 then
      redis.call('XDEL', KEYS[1], unpack(stray))
    end
  end
end
"#
    };
}

/// The start of every settle script (`complete`, `retry`, `bury`): which of the batch's
/// entries the consumer holds, from one `XPENDING` of its pending entries between the
/// batch's lowest and highest entry (ARGV `$lo`, `$hi`, `$consumer`). A settle of an entry
/// it does not hold (its lease ran out and another worker took it) does nothing. The loop
/// takes an entry with `take(entry, fingerprint)`: true once per held entry whose `e` field
/// starts with `fingerprint` (or that is gone from the stream), which joins `settled`; an
/// entry id a failover gave to another job (see [`crate::command::Settle::read`]) is not
/// taken;
/// `ack_settled()` acknowledges them all in one `XACK`, before [`trim_settled!`].
macro_rules! held_prelude {
    ($lo:literal, $hi:literal, $consumer:literal) => {
        concat!(
            "\nlocal out, settled, seen, held = {}, {}, {}, {}\n",
            "local pel = redis.call('XPENDING', KEYS[1], 'workers', ARGV[",
            $lo,
            "], ARGV[",
            $hi,
            "], 1000000, ARGV[",
            $consumer,
            "])\n",
            r#"for _, p in ipairs(pel) do
  held[p[1]] = true
end
local function take(entry, fingerprint)
  if held[entry] and not seen[entry] then
    local e = #fingerprint > 0 and redis.call('XRANGE', KEYS[1], entry, entry)[1]
    if e then
      local env = ''
      for k = 1, #e[2], 2 do
        if e[2][k] == 'e' then
          env = e[2][k + 1]
          break
        end
      end
      if string.sub(env, 1, #fingerprint) ~= fingerprint then
        return false
      end
    end
    seen[entry] = true
    settled[#settled + 1] = entry
    return true
  end
  return false
end
local function ack_settled()
  if #settled > 0 then
    redis.call('XACK', KEYS[1], 'workers', unpack(settled))
  end
end
"#
        )
    };
}

/// The settle scripts' routing of outcomes (KEYS `$events`: the events stem, `$producers`:
/// the registry): `events_of(marker)` is the events stream of the producer a job's id marker
/// names, or `nil` when no producer awaits the job's outcomes (no marker, `w`, or a producer
/// not registered: gone, its outcomes swept); one ZSCORE per producer per batch. Each
/// outcome's XADD carries `MINID <min event id>`: results nobody read for the retention time
/// go as the stream is written (no XTRIM call of its own).
macro_rules! producer_events {
    ($events:literal, $producers:literal) => {
        concat!(
            "local events_stem, producers_key = KEYS[",
            $events,
            "], KEYS[",
            $producers,
            "]\n",
            r#"local registered = {}
local function events_of(marker)
  if not marker or marker == 'w' then return nil end
  local r = registered[marker]
  if r == nil then
    r = redis.call('ZSCORE', producers_key, marker) ~= false
    registered[marker] = r
  end
  if not r then return nil end
  return events_stem .. ':' .. marker
end
"#
        )
    };
}

/// The most entries the outcome log keeps (`XADD ... MAXLEN ~`: Redis may keep up to a
/// node more).
pub const LOG_MAX: u64 = 10_000;

/// The settle scripts' outcome log (KEY `$log`, [`QueueKeys::log`]): `log(job, kind, attempt,
/// marker)` appends one entry while the log exists (an operator tails it), else nothing.
macro_rules! outcome_log {
    ($log:literal) => {
        concat!(
            "local log_key = KEYS[",
            $log,
            "]
",
            r#"local logging = redis.call('EXISTS', log_key) == 1
local function log(job, kind, attempt, marker)
  if logging then
    redis.call('XADD', log_key, 'MAXLEN', '~', 10000, '*',
      'j', job, 'k', kind, 'a', attempt, 'p', marker or '')
  end
end
"#
        )
    };
}

/// The items a settle script's consumer holds, and their id markers: per item of `$stride`
/// ARGV from `$first` (its entry, then its job id; its fingerprint `$fingerprint` past
/// the entry), `take` it (see `held_prelude!`) and
/// answer 1 or 0; the held ones go in `jobs` (their ids) and `at` (their first ARGV index),
/// and one HMGET of `KEYS[$ids]` reads their markers into `marks` (empty if none is held).
macro_rules! held_items {
    ($first:literal, $stride:literal, $fingerprint:literal, $ids:literal) => {
        concat!(
            "local jobs, at, marks = {}, {}, {}\nfor i = ",
            $first,
            ", #ARGV, ",
            $stride,
            " do\n  if take(ARGV[i], ARGV[i + ",
            $fingerprint,
            "]) then\n",
            r#"
    jobs[#jobs + 1] = ARGV[i + 1]
    at[#at + 1] = i
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #jobs > 0 then
  marks = redis.call('HMGET', KEYS["#,
            $ids,
            "], unpack(jobs))\nend\n"
        )
    };
}

/// `complete` — KEYS: jobs, ids, events stem, producers, log. ARGV: min event id, consumer, the lowest and the
/// highest entry of the batch, then per job: entry, job id, sealed result, attempt,
/// instance (hex), fingerprint ([`crate::command::Settle::read`]).
///
/// One XPENDING finds which of the batch's entries this consumer holds (its pending entries
/// between the lowest and the highest of them), one HMGET reads the jobs' id markers (each
/// names the producer the result goes to), one HDEL drops the markers no producer will
/// forget (`w`, or a producer gone), one XACK settles them all: calls from Lua cost Redis as
/// much as the commands, so the per-job work is the result's XADD alone.
pub static COMPLETE: Script = Script {
    name: "complete",
    source: concat!(
        held_prelude!("3", "4", "2"),
        producer_events!("3", "4"),
        outcome_log!("5"),
        held_items!("5", "6", "5", "2"),
        r#"if #jobs > 0 then
  local done = {}
  for n, i in ipairs(at) do
    log(jobs[n], 'c', ARGV[i + 3], marks[n])
    local key = events_of(marks[n])
    if key then
      redis.call('XADD', key, 'MINID', ARGV[1], '*', 'j', jobs[n], 'k', 'c', 'a', ARGV[i + 3],
        'i', ARGV[i + 4], 'v', ARGV[i + 2])
    elseif marks[n] then
      done[#done + 1] = jobs[n]
    end
  end
  if #done > 0 then
    redis.call('HDEL', KEYS[2], unpack(done))
  end
end
ack_settled()
"#,
        trim_settled!(),
        "return out\n"
    ),
};

/// `retry` — KEYS: jobs, delayed, payloads, events stem, producers, ids, log. ARGV: now, min
/// event id, consumer, the lowest and the highest entry of the batch, then per job: entry,
/// job id, sealed reason, attempt, due, re-sealed job, instance (hex), fingerprint.
pub static RETRY: Script = Script {
    name: "retry",
    source: concat!(
        held_prelude!("4", "5", "3"),
        producer_events!("4", "5"),
        outcome_log!("7"),
        held_items!("6", "8", "7", "6"),
        r#"local now = tonumber(ARGV[1])
if #jobs > 0 then
  for n, i in ipairs(at) do
    local job = jobs[n]
    log(job, 'f', ARGV[i + 3], marks[n])
    local key = events_of(marks[n])
    if key then
      redis.call('XADD', key, 'MINID', ARGV[2], '*',
        'j', job, 'k', 'f', 'a', ARGV[i + 3], 'i', ARGV[i + 6], 'v', ARGV[i + 2])
    end
    local due = tonumber(ARGV[i + 4])
    if due > now then
      redis.call('ZADD', KEYS[2], due, job)
      redis.call('HSET', KEYS[3], job, ARGV[i + 5])
    else
      redis.call('XADD', KEYS[1], '*', 'j', job, 'e', ARGV[i + 5])
    end
  end
end
ack_settled()
"#,
        trim_settled!(),
        "return out\n"
    ),
};

/// `bury` — KEYS: jobs, ids, dead, events stem, producers, log. ARGV: min event id, consumer,
/// min dead-letter id, the lowest and the highest entry of the batch, then per job: entry,
/// job id (empty if unknown), sealed reason, attempt, the job's envelope (or the first bytes
/// of garbage), instance (hex; empty if unknown), fingerprint. Dead letters older than the min id go.
pub static BURY: Script = Script {
    name: "bury",
    source: concat!(
        held_prelude!("4", "5", "2"),
        producer_events!("4", "5"),
        outcome_log!("6"),
        r#"for i = 6, #ARGV, 7 do
  local entry, job = ARGV[i], ARGV[i + 1]
  if take(entry, ARGV[i + 6]) then
    redis.call('XADD', KEYS[3], 'MINID', ARGV[3], '*',
      'j', job, 'e', ARGV[i + 4], 'r', ARGV[i + 2], 'a', ARGV[i + 3], 'i', ARGV[i + 5])
    if job == '' then
      log(job, 'd', ARGV[i + 3], false)
    else
      local marker = redis.call('HGET', KEYS[2], job)
      log(job, 'd', ARGV[i + 3], marker)
      local key = events_of(marker)
      if key then
        redis.call('XADD', key, 'MINID', ARGV[1], '*',
          'j', job, 'k', 'd', 'a', ARGV[i + 3], 'i', ARGV[i + 5], 'v', ARGV[i + 2])
      elseif marker then
        redis.call('HDEL', KEYS[2], job)
      end
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
ack_settled()
"#,
        trim_settled!(),
        "return out\n"
    ),
};

/// The ARGV fields of one item: the common ones of every settle script, then those of its
/// kind ([`Then::args`]), in the order the script reads them.
fn settle_args<'a, T: Then>(items: &'a [Settle<T>], out: &mut Vec<Arg<'a>>) {
    for item in items {
        out.extend([
            id(item.entry),
            b(item.job.as_deref().unwrap_or_default()),
            Cow::Borrowed(&item.value[..]),
            num(item.attempt),
        ]);
        item.then.args(out);
        out.push(match item.instance {
            Some(i) => Cow::Owned(i.to_hex().into_bytes()),
            None => Cow::Borrowed(&b""[..]),
        });
        out.push(Cow::Borrowed(fingerprint(&item.read)));
    }
}

/// What a kind of settlement adds to an item's ARGV, between its attempt and its instance.
trait Then {
    /// How many fields.
    const FIELDS: usize;
    fn args<'a>(&'a self, out: &mut Vec<Arg<'a>>);
}

/// A completion adds nothing.
impl Then for () {
    const FIELDS: usize = 0;
    fn args<'a>(&'a self, _: &mut Vec<Arg<'a>>) {}
}

/// A retry: when the next attempt is due, and its envelope.
impl Then for NextAttempt {
    const FIELDS: usize = 2;
    fn args<'a>(&'a self, out: &mut Vec<Arg<'a>>) {
        out.extend([num(self.due_ms), Cow::Borrowed(&self.envelope[..])]);
    }
}

/// A dead letter: the job's envelope.
impl Then for DeadJob {
    const FIELDS: usize = 1;
    fn args<'a>(&'a self, out: &mut Vec<Arg<'a>>) {
        out.push(Cow::Borrowed(&self.envelope[..]));
    }
}

/// Script `complete` for a batch.
fn complete_invocation<'a>(
    keys: &'a QueueKeys,
    min_event_ms: u64,
    consumer: &'a str,
    items: &'a [Settle],
) -> Invocation<'a> {
    let head = vec![min_id(min_event_ms), b(consumer)];
    let keys = [
        &keys.jobs,
        &keys.ids,
        &keys.events,
        &keys.producers,
        &keys.log,
    ];
    settle_invocation(&COMPLETE, &keys, head, items)
}

/// Script `retry` for a batch, at `now_ms`, trimming events below `min_event_ms`.
fn retry_invocation<'a>(
    keys: &'a QueueKeys,
    (now_ms, min_event_ms): (u64, u64),
    consumer: &'a str,
    items: &'a [Settle<NextAttempt>],
) -> Invocation<'a> {
    let head = vec![num(now_ms), min_id(min_event_ms), b(consumer)];
    let k = [
        &keys.jobs,
        &keys.delayed,
        &keys.payloads,
        &keys.events,
        &keys.producers,
        &keys.ids,
        &keys.log,
    ];
    settle_invocation(&RETRY, &k, head, items)
}

/// Script `bury` for a batch, trimming events below `min_event_ms` and dead letters below
/// `min_dead_ms`.
fn bury_invocation<'a>(
    keys: &'a QueueKeys,
    (min_event_ms, min_dead_ms): (u64, u64),
    consumer: &'a str,
    items: &'a [Settle<DeadJob>],
) -> Invocation<'a> {
    let head = vec![min_id(min_event_ms), b(consumer), min_id(min_dead_ms)];
    let k = [
        &keys.jobs,
        &keys.ids,
        &keys.dead,
        &keys.events,
        &keys.producers,
        &keys.log,
    ];
    settle_invocation(&BURY, &k, head, items)
}

/// A settle script's invocation: its own leading ARGV (`head`), then the batch's lowest and
/// highest entry (for the one XPENDING of `held_prelude!`), then the fields of every item.
fn settle_invocation<'a, T: Then>(
    which: &'static Script,
    keys: &[&'a String],
    mut head: Vec<Arg<'a>>,
    items: &'a [Settle<T>],
) -> Invocation<'a> {
    let lo = items.iter().map(|i| i.entry).min().unwrap_or(EntryId::ZERO);
    let hi = items.iter().map(|i| i.entry).max().unwrap_or(EntryId::ZERO);
    head.reserve(2 + (6 + T::FIELDS) * items.len());
    head.extend([id(lo), id(hi)]);
    settle_args(items, &mut head);
    script(which, keys, head)
}

/// The invocation of a settlement (routed here by [`super::invocation`]).
pub(super) fn invocation(kind: &CommandKind) -> Invocation<'_> {
    match kind {
        CommandKind::Complete {
            keys,
            min_event_ms,
            consumer,
            items,
        } => complete_invocation(keys, *min_event_ms, consumer, items),
        CommandKind::Retry {
            keys,
            now_ms,
            min_event_ms,
            consumer,
            items,
        } => retry_invocation(keys, (*now_ms, *min_event_ms), consumer, items),
        CommandKind::Bury {
            keys,
            min_event_ms,
            min_dead_ms,
            consumer,
            items,
        } => bury_invocation(keys, (*min_event_ms, *min_dead_ms), consumer, items),
        _ => unreachable!("routed here for its own commands only"),
    }
}

/// The model's complete, retry and bury (`sim`, feature `model`): what the scripts above do, on the
/// in-memory Redis the differential test holds against redis-server.
#[cfg(feature = "model")]
pub(crate) mod model {
    #![allow(clippy::wildcard_imports)]
    use crate::command::{DeadJob, NextAttempt};
    use crate::sim::exec::*;
    /// The settle scripts' `log(job, kind, attempt, marker)`: one entry while the log exists.
    pub(crate) fn log_outcome<T>(
        sim: &mut Sim,
        keys: &QueueKeys,
        job: &str,
        kind: &[u8],
        item: &Settle<T>,
        marker: Option<&[u8]>,
    ) -> Result<(), String> {
        if !sim.exists(&keys.log) {
            return Ok(());
        }
        let f = fields(&[
            ("j", job.as_bytes()),
            ("k", kind),
            ("a", item.attempt.to_string().as_bytes()),
            ("p", marker.unwrap_or_default()),
        ]);
        log_add(sim, &keys.log, f)
    }

    /// An outcome event's fields, as the settle scripts write them (`kind`: c, f or d).
    pub(crate) fn event_fields<T>(job: &str, kind: &[u8], item: &Settle<T>) -> Fields {
        fields(&[
            ("j", job.as_bytes()),
            ("k", kind),
            ("a", item.attempt.to_string().as_bytes()),
            ("i", instance_hex(item).as_bytes()),
            ("v", &item.value),
        ])
    }

    /// Script `complete`.
    pub(crate) fn complete(
        sim: &mut Sim,
        keys: &QueueKeys,
        min_event_ms: u64,
        consumer: &str,
        items: &[Settle],
    ) -> Exec {
        // As the script: the markers read before the loop, the unwanted ones dropped after it.
        let mut done: Vec<String> = Vec::new();
        let out = settle(sim, keys, consumer, items, |sim, item| {
            let job = item.job.as_deref().unwrap_or_default();
            let marker = marker_of(sim, keys, job)?;
            log_outcome(sim, keys, job, b"c", item, marker.as_deref())?;
            match events_of(sim, keys, marker.as_deref())? {
                Some(key) => xadd_trimmed(sim, &key, min_event_ms, event_fields(job, b"c", item)),
                None if marker.is_some() => {
                    done.push(job.to_owned());
                    Ok(())
                }
                None => Ok(()),
            }
        })?;
        for job in done {
            hdel(sim, &keys.ids, job.as_bytes())?;
        }
        Ok(out)
    }

    /// Script `retry`, at `now_ms`, trimming events below `min_event_ms`.
    pub(crate) fn retry(
        sim: &mut Sim,
        keys: &QueueKeys,
        (now_ms, min_event_ms): (u64, u64),
        consumer: &str,
        items: &[Settle<NextAttempt>],
    ) -> Exec {
        let out = settle(sim, keys, consumer, items, |sim, item| {
            let job = item.job.as_deref().unwrap_or_default();
            let marker = marker_of(sim, keys, job)?;
            log_outcome(sim, keys, job, b"f", item, marker.as_deref())?;
            if let Some(key) = events_of(sim, keys, marker.as_deref())? {
                xadd_trimmed(sim, &key, min_event_ms, event_fields(job, b"f", item))?;
            }
            let next = &item.then;
            if next.due_ms > now_ms {
                sim.zset_mut(&keys.delayed)?
                    .add(next.due_ms, job.as_bytes());
                sim.hash_mut(&keys.payloads)?
                    .insert(job.as_bytes().to_vec(), next.envelope.to_vec());
            } else {
                xadd(sim, &keys.jobs, work_fields(job, &next.envelope))?;
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Script `bury`, trimming events below `min_event_ms` and dead letters below `min_dead_ms`.
    pub(crate) fn bury(
        sim: &mut Sim,
        keys: &QueueKeys,
        (min_event_ms, min_dead_ms): (u64, u64),
        consumer: &str,
        items: &[Settle<DeadJob>],
    ) -> Exec {
        let out = settle(sim, keys, consumer, items, |sim, item| {
            let job = item.job.as_deref().unwrap_or_default();
            let f = fields(&[
                ("j", job.as_bytes()),
                ("e", &item.then.envelope),
                ("r", &item.value),
                ("a", item.attempt.to_string().as_bytes()),
                ("i", instance_hex(item).as_bytes()),
            ]);
            xadd_trimmed(sim, &keys.dead, min_dead_ms, f)?;
            if job.is_empty() {
                log_outcome(sim, keys, job, b"d", item, None)?;
            } else {
                let marker = marker_of(sim, keys, job)?;
                log_outcome(sim, keys, job, b"d", item, marker.as_deref())?;
                match events_of(sim, keys, marker.as_deref())? {
                    Some(key) => {
                        xadd_trimmed(sim, &key, min_event_ms, event_fields(job, b"d", item))?;
                    }
                    None if marker.is_some() => hdel(sim, &keys.ids, job.as_bytes())?,
                    None => {}
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The shared shape of complete/retry/bury: per item, act only if the entry is pending for
    /// `consumer`, still holds what the worker read ([`Settle::read`]), and XACK removed it.
    pub(crate) fn settle<T>(
        sim: &mut Sim,
        keys: &QueueKeys,
        consumer: &str,
        items: &[Settle<T>],
        mut then: impl FnMut(&mut Sim, &Settle<T>) -> Result<(), String>,
    ) -> Exec {
        let mut out = Vec::with_capacity(items.len());
        let mut settled = Vec::new();
        for item in items {
            // The scripts ask XPENDING first, which fails without the stream or its group.
            let missing = || nogroup(&keys.jobs, "XPENDING");
            let s = sim.stream_mut(&keys.jobs, false)?.ok_or_else(missing)?;
            if !s.groups.contains_key(GROUP) {
                return Err(missing());
            }
            let held = s
                .pending(GROUP, item.entry)
                .is_some_and(|p| p.consumer == consumer);
            // An entry id a failover gave to another job: not what this worker read there.
            let other = s
                .entries
                .get(&item.entry)
                .is_some_and(|f| !holds(f, b"e", &item.read));
            let acked = held && !other && s.ack(GROUP, item.entry);
            if acked {
                settled.push(item.entry);
                then(sim, item)?;
            }
            out.push(Value::Int(i64::from(acked)));
        }
        if !settled.is_empty() {
            trim_settled(sim, &keys.jobs, &settled)?;
        }
        Ok(Value::Array(out))
    }

    /// What every settle script does after its XACKs: trim below the floor (the oldest pending
    /// entry, or past the last delivered one), delete settled entries beyond the window.
    pub(crate) fn trim_settled(
        sim: &mut Sim,
        key: &str,
        settled: &[EntryId],
    ) -> Result<(), String> {
        let Some(s) = sim.stream_mut(key, false)? else {
            return Ok(());
        };
        let Some(g) = s.groups.get(GROUP) else {
            return Ok(());
        };
        // As the script, which does arithmetic only on numbers of at most 15 digits (exact in
        // Lua's doubles).
        const EXACT: u64 = 1_000_000_000_000_000;
        let floor = match g.pel.keys().next() {
            Some(first) => *first,
            None if g.last_delivered.seq < EXACT => g.undelivered_from(),
            None => g.last_delivered,
        };
        s.trim_min_id(floor);
        if floor.ms < EXACT {
            let far = floor.ms + TRIM_WINDOW_MS;
            for id in settled.iter().filter(|id| id.ms > far) {
                s.entries.remove(id);
            }
        }
        Ok(())
    }

    /// An item's instance as its scripts write it: hex, or empty when unknown.
    pub(crate) fn instance_hex<T>(item: &Settle<T>) -> String {
        item.instance.map(|i| i.to_hex()).unwrap_or_default()
    }
}
