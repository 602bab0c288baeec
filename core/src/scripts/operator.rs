//! The operator's requests: the outcome log, dead letters (read, revive, delete), one job
//! (find it, withdraw or run a delayed one), the workers, the outcomes owed to producers
//! away, key-id usage.

use std::borrow::Cow;

use super::{Invocation, Script, b, id, num, script};
use crate::command::CommandKind;

/// `revive` — KEYS: jobs, ids, dead. ARGV: marker, then per dead letter: its entry, job
/// id, the job re-sealed as attempt 1. A letter that is gone answers 0; one whose job id
/// lives again (its marker is set) answers -1 and stays; else the job goes back to the work
/// stream under the marker and the letter goes: its new entry id.
pub static REVIVE: Script = Script {
    name: "revive",
    source: r#"
local out = {}
for i = 2, #ARGV, 3 do
  local entry, job = ARGV[i], ARGV[i + 1]
  if #redis.call('XRANGE', KEYS[3], entry, entry) == 0 then
    out[#out + 1] = 0
  elseif redis.call('HSETNX', KEYS[2], job, ARGV[1]) == 0 then
    out[#out + 1] = -1
  else
    out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'j', job, 'e', ARGV[i + 2])
    redis.call('XDEL', KEYS[3], entry)
  end
end
return out
"#,
};

/// `find_job` — KEYS: jobs, ids, delayed, dead. ARGV: job id, limit. See
/// [`CommandKind::FindJob`].
pub static FIND_JOB: Script = Script {
    name: "find_job",
    source: r#"
local job, limit = ARGV[1], tonumber(ARGV[2])
local function job_of(fields)
  for k = 1, #fields - 1, 2 do
    if fields[k] == 'j' then return fields[k + 1] end
  end
  return nil
end
local marker = redis.call('HGET', KEYS[2], job) or ''
local due = redis.call('ZSCORE', KEYS[3], job)
if due then due = tonumber(due) else due = -1 end
local running, waiting, dead = {}, '', {}
local start = '-'
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if type(groups) == 'table' and groups.err == nil then
  for _, g in ipairs(groups) do
    local f = {}
    for k = 1, #g, 2 do f[g[k]] = g[k + 1] end
    if f['name'] == 'workers' then
      start = '(' .. f['last-delivered-id']
      for _, p in ipairs(redis.call('XPENDING', KEYS[1], 'workers', '-', '+', limit)) do
        local e = redis.call('XRANGE', KEYS[1], p[1], p[1])
        if e[1] and job_of(e[1][2]) == job then
          running = {p[1], p[2], p[4]}
          break
        end
      end
    end
  end
  for _, e in ipairs(redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', limit)) do
    if job_of(e[2]) == job then
      waiting = e[1]
      break
    end
  end
end
for _, e in ipairs(redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', limit)) do
  if job_of(e[2]) == job then
    local attempt = -1
    for k = 1, #e[2] - 1, 2 do
      if e[2][k] == 'a' then attempt = tonumber(e[2][k + 1]) or -1 end
    end
    dead = {e[1], attempt}
    break
  end
end
return {marker, due, running, waiting, dead}
"#,
};

/// `delayed_job` — KEYS: jobs, ids, delayed, payloads. ARGV: job id, then the caller's
/// marker to withdraw (none: promote). See [`CommandKind::DelayedJob`]. A withdrawn job's
/// marker becomes `x:<marker>` (a tombstone: the same withdrawal sent again answers 1; an
/// add of the id finds it queued) until its producer forgets it.
pub static DELAYED_JOB: Script = Script {
    name: "delayed_job",
    source: r#"
local job = ARGV[1]
if not redis.call('ZSCORE', KEYS[3], job) then
  -- A withdrawal sent again after a lost reply finds its own tombstone.
  if ARGV[2] and redis.call('HGET', KEYS[2], job) == 'x:' .. ARGV[2] then
    return 1
  end
  return 0
end
if ARGV[2] then
  if redis.call('HGET', KEYS[2], job) ~= ARGV[2] then
    return -1
  end
  redis.call('ZREM', KEYS[3], job)
  redis.call('HDEL', KEYS[4], job)
  -- The marker becomes a tombstone, which the producer forgets with its next ack.
  redis.call('HSET', KEYS[2], job, 'x:' .. ARGV[2])
  return 1
end
local env = redis.call('HGET', KEYS[4], job)
redis.call('ZREM', KEYS[3], job)
redis.call('HDEL', KEYS[4], job)
if not env then
  redis.call('HDEL', KEYS[2], job)
  return 0
end
return redis.call('XADD', KEYS[1], '*', 'j', job, 'e', env)
"#,
};

/// `workers` — KEYS: workers. The zset flat (name, score as text), as Lua sees `ZRANGE
/// WITHSCORES` whatever the connection's protocol.
pub static WORKERS: Script = Script {
    name: "workers",
    source: r#"
return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
"#,
};

/// `tail_log` — KEYS: the outcome log. ARGV: after, count, keep (ms). See
/// [`CommandKind::TailLog`].
pub static TAIL_LOG: Script = Script {
    name: "tail_log",
    source: r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', 10000, '*', 'k', 'open')
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
"#,
};

/// `peek_events` — KEYS: producers, events stem. ARGV: since, count, then (producer,
/// cursor) pairs. Every registered producer's events after its cursor (or `since`), at
/// most `count` in all, as `[producer, entries]` pairs; nothing is acknowledged.
pub static PEEK_EVENTS: Script = Script {
    name: "peek_events",
    source: r#"
local known = {}
for i = 3, #ARGV - 1, 2 do known[ARGV[i]] = ARGV[i + 1] end
local left = tonumber(ARGV[2])
local out = {}
for _, p in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if left <= 0 then break end
  local from = known[p] or ARGV[1]
  local es = redis.call('XRANGE', KEYS[2] .. ':' .. p, '(' .. from, '+', 'COUNT', left)
  if #es > 0 then
    out[#out + 1] = {p, es}
    left = left - #es
  end
end
return out
"#,
};

/// `key_usage` — KEYS: jobs, delayed, payloads, dead. ARGV: source (`jobs`, `delayed`,
/// `dead`), after, offset, count. See [`CommandKind::KeyUsage`].
pub static KEY_USAGE: Script = Script {
    name: "key_usage",
    source: r#"
local counts, order = {}, {}
local function tally(v)
  local k = 'bad'
  if type(v) == 'string' and #v >= 36 and string.sub(v, 1, 3) == 'DL\2' then
    k = tostring(struct.unpack('<I4', v, 5))
  end
  if counts[k] == nil then
    counts[k] = 0
    order[#order + 1] = k
  end
  counts[k] = counts[k] + 1
end
local n = tonumber(ARGV[4])
local more, last = 0, ''
if ARGV[1] == 'delayed' then
  local off = tonumber(ARGV[3])
  local ids = redis.call('ZRANGE', KEYS[2], off, off + n - 1)
  if #ids > 0 then
    local vs = redis.call('HMGET', KEYS[3], unpack(ids))
    for i = 1, #ids do tally(vs[i]) end
  end
  if #ids == n then more = 1 end
else
  local key = KEYS[1]
  if ARGV[1] == 'dead' then key = KEYS[4] end
  local es = redis.call('XRANGE', key, '(' .. ARGV[2], '+', 'COUNT', n)
  for _, e in ipairs(es) do
    local f = e[2]
    for i = 1, #f - 1, 2 do
      if f[i] == 'e' or f[i] == 'r' then tally(f[i + 1]) end
    end
  end
  if #es > 0 then last = es[#es][1] end
  if #es == n then more = 1 end
end
local out = {more, last}
for _, k in ipairs(order) do
  out[#out + 1] = k
  out[#out + 1] = counts[k]
end
return out
"#,
};

/// The invocation of an operator's request (routed here by [`super::invocation`]).
pub(super) fn invocation(kind: &CommandKind) -> Invocation<'_> {
    match kind {
        CommandKind::TailLog {
            keys,
            after,
            count,
            keep_ms,
        } => script(
            &TAIL_LOG,
            &[&keys.log],
            vec![id(*after), num(count), num(keep_ms.max(&1))],
        ),
        CommandKind::ReadDead { keys, after, count } => Invocation::Plain(vec![
            b("XRANGE"),
            b(&keys.dead),
            Cow::Owned(format!("({after}").into_bytes()),
            b("+"),
            b("COUNT"),
            num(count),
        ]),
        CommandKind::Revive {
            keys,
            marker,
            items,
        } => {
            let mut args = Vec::with_capacity(1 + 3 * items.len());
            args.push(b(marker));
            for (entry, job, envelope) in items {
                args.extend([id(*entry), b(job), Cow::Borrowed(&envelope[..])]);
            }
            script(&REVIVE, &[&keys.jobs, &keys.ids, &keys.dead], args)
        }
        CommandKind::DelayedJob {
            keys,
            job,
            withdraw_as,
        } => {
            let k = [&keys.jobs, &keys.ids, &keys.delayed, &keys.payloads];
            let mut args = vec![b(job)];
            args.extend(withdraw_as.as_deref().map(b));
            script(&DELAYED_JOB, &k, args)
        }
        CommandKind::Workers { keys } => script(&WORKERS, &[&keys.workers], Vec::new()),
        CommandKind::PeekEvents {
            keys,
            since,
            cursors,
            count,
        } => {
            let mut args = vec![id(*since), num(count)];
            for (producer, cursor) in cursors {
                args.push(b(producer));
                args.push(id(*cursor));
            }
            script(&PEEK_EVENTS, &[&keys.producers, &keys.events], args)
        }
        CommandKind::KeyUsage {
            keys,
            source,
            after,
            offset,
            count,
        } => {
            let k = [&keys.jobs, &keys.delayed, &keys.payloads, &keys.dead];
            let args = vec![b(source.as_str()), id(*after), num(offset), num(count)];
            script(&KEY_USAGE, &k, args)
        }
        CommandKind::FindJob { keys, job, limit } => {
            let k = [&keys.jobs, &keys.ids, &keys.delayed, &keys.dead];
            script(&FIND_JOB, &k, vec![b(job), num(limit)])
        }
        CommandKind::DeleteDead { keys, entries } => {
            let mut args = vec![b("XDEL"), b(&keys.dead)];
            args.extend(entries.iter().map(|e| id(*e)));
            Invocation::Plain(args)
        }
        _ => unreachable!("routed here for its own commands only"),
    }
}

/// The model's the operator's scripts (`sim`, feature `model`): what the scripts above do, on the
/// in-memory Redis the differential test holds against redis-server.
#[cfg(feature = "model")]
pub(crate) mod model {
    #![allow(clippy::wildcard_imports)]
    use crate::sim::exec::*;
    /// Script `tail_log`: open the log if need be, keep it `keep_ms` more, read after `after`.
    pub(crate) fn tail_log(
        sim: &mut Sim,
        keys: &QueueKeys,
        after: EntryId,
        count: u32,
        keep_ms: u64,
    ) -> Exec {
        if !sim.exists(&keys.log) {
            log_add(sim, &keys.log, fields(&[("k", b"open")]))?;
        }
        let ttl = i64::try_from(keep_ms.max(1)).unwrap_or(i64::MAX);
        crate::sim::credentials::slide(sim, &keys.log, ttl);
        let entries = match sim.stream_mut(&keys.log, false)? {
            Some(s) => s.read_after(after, count as usize),
            None => Vec::new(),
        };
        Ok(Value::Array(entries.into_iter().map(entry_value).collect()))
    }

    /// `XRANGE <dead> (<after> + COUNT <count>`.
    pub(crate) fn read_dead(sim: &mut Sim, keys: &QueueKeys, after: EntryId, count: u32) -> Exec {
        let entries = match sim.stream_mut(&keys.dead, false)? {
            Some(s) => s.read_after(after, count as usize),
            None => Vec::new(),
        };
        Ok(Value::Array(entries.into_iter().map(entry_value).collect()))
    }

    /// Script `revive`: dead letters back to the work stream, each once, under `marker`.
    pub(crate) fn revive(
        sim: &mut Sim,
        keys: &QueueKeys,
        marker: &str,
        items: &[(EntryId, String, Arc<[u8]>)],
    ) -> Exec {
        let mut out = Vec::with_capacity(items.len());
        for (entry, job, envelope) in items {
            let there = sim
                .stream_mut(&keys.dead, false)?
                .is_some_and(|s| s.entries.contains_key(entry));
            if !there {
                out.push(Value::Int(0));
                continue;
            }
            let ids = sim.hash_mut(&keys.ids)?;
            if ids.contains_key(job.as_bytes()) {
                out.push(Value::Int(-1));
                continue;
            }
            ids.insert(job.as_bytes().to_vec(), marker.as_bytes().to_vec());
            let id = xadd(sim, &keys.jobs, work_fields(job, envelope))?;
            if let Some(s) = sim.stream_mut(&keys.dead, false)? {
                s.entries.remove(entry);
            }
            out.push(id_value(id));
        }
        Ok(Value::Array(out))
    }

    /// Script `workers`: the workers zset flat, scores as text (as Lua sees them).
    pub(crate) fn workers(sim: &mut Sim, keys: &QueueKeys) -> Exec {
        let flat = sim.zset(&keys.workers)?.map_or_else(Vec::new, |z| {
            z.members()
                .into_iter()
                .flat_map(|m| {
                    let score = z.score(&m).unwrap_or_default().to_string();
                    [Value::Bulk(m), Value::Bulk(score.into_bytes())]
                })
                .collect()
        });
        Ok(Value::Array(flat))
    }

    /// Script `key_usage`: one page of envelopes counted by the key id in their headers.
    pub(crate) fn key_usage(
        sim: &mut Sim,
        keys: &QueueKeys,
        source: crate::producer::EnvelopeSource,
        (after, offset): (EntryId, u64),
        count: u32,
    ) -> Exec {
        use crate::producer::EnvelopeSource;
        let mut order: Vec<(Vec<u8>, i64)> = Vec::new();
        let mut tally = |v: Option<&[u8]>| {
            let key = match v {
                Some(v) if v.len() >= 36 && v[..3] == *b"DL\x02" => {
                    let id = u32::from_le_bytes([v[4], v[5], v[6], v[7]]);
                    id.to_string().into_bytes()
                }
                _ => b"bad".to_vec(),
            };
            match order.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => order.push((key, 1)),
            }
        };
        let n = count as usize;
        let mut last = Vec::new();
        let more = if source == EnvelopeSource::Delayed {
            let ids: Vec<Vec<u8>> = sim.zset(&keys.delayed)?.map_or_else(Vec::new, |z| {
                z.members()
                    .into_iter()
                    .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                    .take(n)
                    .collect()
            });
            let payloads = sim.hash(&keys.payloads)?;
            for id in &ids {
                tally(payloads.and_then(|h| h.get(id)).map(|v| &v[..]));
            }
            ids.len() == n
        } else {
            let key = match source {
                EnvelopeSource::Dead => &keys.dead,
                _ => &keys.jobs,
            };
            let entries = match sim.stream_mut(key, false)? {
                Some(s) => s.read_after(after, n),
                None => Vec::new(),
            };
            for (_, fields) in &entries {
                for (name, value) in fields.iter() {
                    if name[..] == *b"e" || name[..] == *b"r" {
                        tally(Some(&value[..]));
                    }
                }
            }
            if let Some((id, _)) = entries.last() {
                last = id.to_string().into_bytes();
            }
            entries.len() == n
        };
        let mut out = vec![Value::Int(i64::from(more)), Value::Bulk(last)];
        for (k, c) in order {
            out.push(Value::Bulk(k));
            out.push(Value::Int(c));
        }
        Ok(Value::Array(out))
    }

    /// Script `peek_events`: every registered producer's events after its cursor.
    pub(crate) fn peek_events(
        sim: &mut Sim,
        keys: &QueueKeys,
        since: EntryId,
        cursors: &[(String, EntryId)],
        count: u32,
    ) -> Exec {
        let producers = sim
            .zset(&keys.producers)?
            .map_or_else(Vec::new, ZSet::members);
        let mut left = count as usize;
        let mut out = Vec::new();
        for p in producers {
            if left == 0 {
                break;
            }
            let name = String::from_utf8_lossy(&p).into_owned();
            let from = cursors
                .iter()
                .rev()
                .find(|(c, _)| *c == name)
                .map_or(since, |(_, e)| *e);
            let entries = match sim.stream_mut(&keys.events_of(&name), false)? {
                Some(s) => s.read_after(from, left),
                None => Vec::new(),
            };
            if !entries.is_empty() {
                left -= entries.len();
                let entries = entries.into_iter().map(entry_value).collect();
                out.push(Value::Array(vec![Value::Bulk(p), Value::Array(entries)]));
            }
        }
        Ok(Value::Array(out))
    }

    /// Script `delayed_job`: promote one delayed job, or withdraw it as `withdraw_as`.
    pub(crate) fn delayed_job(
        sim: &mut Sim,
        keys: &QueueKeys,
        job: &str,
        withdraw_as: Option<&str>,
    ) -> Exec {
        let id = job.as_bytes();
        if !sim.zset(&keys.delayed)?.is_some_and(|z| z.contains(id)) {
            let tombstone = withdraw_as.as_ref().map(|m| format!("x:{m}").into_bytes());
            let found = marker_of(sim, keys, job)?;
            let again = tombstone.is_some() && found == tombstone;
            return Ok(Value::Int(i64::from(again)));
        }
        if let Some(marker) = withdraw_as {
            if marker_of(sim, keys, job)?.as_deref() != Some(marker.as_bytes()) {
                return Ok(Value::Int(-1));
            }
        }
        let env = sim.hash(&keys.payloads)?.and_then(|h| h.get(id).cloned());
        sim.zset_mut(&keys.delayed)?.remove(id);
        sim.drop_if_empty(&keys.delayed);
        hdel(sim, &keys.payloads, id)?;
        match (withdraw_as, env) {
            (Some(marker), _) => {
                sim.hash_mut(&keys.ids)?
                    .insert(id.to_vec(), format!("x:{marker}").into_bytes());
                Ok(Value::Int(1))
            }
            (None, None) => {
                hdel(sim, &keys.ids, id)?;
                Ok(Value::Int(0))
            }
            (None, Some(env)) => Ok(id_value(xadd(sim, &keys.jobs, work_fields(job, &env))?)),
        }
    }

    /// `XDEL <dead> <entries...>`.
    pub(crate) fn delete_dead(sim: &mut Sim, keys: &QueueKeys, entries: &[EntryId]) -> Exec {
        if entries.is_empty() {
            return Err("ERR wrong number of arguments for 'xdel' command".into());
        }
        let n = match sim.stream_mut(&keys.dead, false)? {
            Some(s) => entries
                .iter()
                .filter(|e| s.entries.remove(e).is_some())
                .count(),
            None => 0,
        };
        Ok(Value::Int(n as i64))
    }

    /// Script `find_job`: where a job is, each scan bounded by `limit`.
    pub(crate) fn find_job(sim: &mut Sim, keys: &QueueKeys, job: &str, limit: usize) -> Exec {
        let names = |f: &Fields| f.iter().find(|(k, _)| k == b"j").map(|(_, v)| v.clone());
        let marker = marker_of(sim, keys, job)?.unwrap_or_default();
        let due = sim
            .zset(&keys.delayed)?
            .and_then(|z| z.score(job.as_bytes()))
            .map_or(-1, |d| i64::try_from(d).unwrap_or(i64::MAX));
        let (mut running, mut waiting) = (Value::Array(Vec::new()), Value::Bulk(Vec::new()));
        if let Some(s) = sim.stream_mut(&keys.jobs, false)?.map(|s| &*s) {
            let group = s.groups.get(GROUP);
            if let Some(g) = group {
                for (id, p) in g.pel.iter().take(limit) {
                    if s.entries.get(id).and_then(names).as_deref() == Some(job.as_bytes()) {
                        running = Value::Array(vec![
                            id_value(*id),
                            bulk(p.consumer.as_bytes()),
                            Value::Int(i64::try_from(p.deliveries).unwrap_or(i64::MAX)),
                        ]);
                        break;
                    }
                }
            }
            // As the script: after the group's last delivered entry; without the group, from
            // the first entry.
            let from = group.map_or(EntryId::ZERO, |g| g.undelivered_from());
            {
                let after = s.entries.range(from..).take(limit);
                for (id, f) in after {
                    if names(f).as_deref() == Some(job.as_bytes()) {
                        waiting = id_value(*id);
                        break;
                    }
                }
            }
        }
        let mut dead = Value::Array(Vec::new());
        if let Some(s) = sim.stream_mut(&keys.dead, false)?.map(|s| &*s) {
            for (id, f) in s.entries.iter().rev().take(limit) {
                if names(f).as_deref() == Some(job.as_bytes()) {
                    let attempt = f
                        .iter()
                        .find(|(k, _)| k == b"a")
                        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                        .unwrap_or(-1);
                    dead = Value::Array(vec![id_value(*id), Value::Int(attempt)]);
                    break;
                }
            }
        }
        Ok(Value::Array(vec![
            Value::Bulk(marker),
            Value::Int(due),
            running,
            waiting,
            dead,
        ]))
    }
}
