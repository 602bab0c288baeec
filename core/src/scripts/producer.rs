//! A producer's own commands: reading and acknowledging its events, its stats, the tail of
//! its events stream, and the queue's destruction.

use std::borrow::Cow;

use super::{Arg, Invocation, Script, b, id, num, script};
use crate::command::{CommandKind, fingerprint};

/// `stats` — KEYS: jobs, delayed, dead, the producer's events, workers, paused. Jobs counts the
/// entries waiting (not yet delivered: the group's lag) and running (pending), not completed
/// entries the next trim will drop. When Redis does not know the lag (after deletions from
/// the stream), at most 10,000 waiting entries are counted one by one; past that the count is
/// an upper bound. Then the live workers (ZCARD), and the ids of the oldest waiting entry
/// (the first after the group's last delivered one) and of the oldest running one (the first
/// pending), or empty: each one O(log n) lookup; last, when the queue was paused (ms), or
/// empty if it is not.
pub static STATS: Script = Script {
    name: "stats",
    source: r#"
local jobs, pending, oldest_waiting, oldest_running = 0, 0, '', ''
local paused = ''
if redis.call('EXISTS', KEYS[6]) == 1 then
  paused = redis.pcall('HGET', KEYS[6], 'at')
  if type(paused) ~= 'string' then paused = '0' end
end
local function first_after(start)
  local e = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 1)
  if e[1] then return e[1][1] end
  return ''
end
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if type(groups) == 'table' and groups.err == nil then
  jobs = redis.call('XLEN', KEYS[1])
  oldest_waiting = first_after('-')
  for _, g in ipairs(groups) do
    local f = {}
    for k = 1, #g, 2 do f[g[k]] = g[k + 1] end
    if f['name'] == 'workers' then
      oldest_waiting = first_after('(' .. f['last-delivered-id'])
      local p = redis.call('XPENDING', KEYS[1], 'workers', '-', '+', 1)
      if p[1] then oldest_running = p[1][1] end
      pending = f['pending']
      local lag = f['lag']
      if type(lag) ~= 'number' then
        -- Redis does not know the lag after deletions: count what waits, up to 10,000
        -- entries (each is materialized here); past that, every entry not pending (an
        -- upper bound: settled entries the next trim drops count too).
        local waiting = #redis.call('XRANGE', KEYS[1], '(' .. f['last-delivered-id'], '+',
          'COUNT', 10000)
        if waiting < 10000 then
          lag = waiting
        else
          lag = math.max(jobs - pending, waiting)
        end
      end
      jobs = lag + pending
    end
  end
end
return {jobs, pending, redis.call('ZCARD', KEYS[2]),
  redis.call('XLEN', KEYS[3]), redis.call('XLEN', KEYS[4]), redis.call('ZCARD', KEYS[5]),
  oldest_waiting, oldest_running, paused}
"#,
};

/// `ack_events` — KEYS: events, ids, owners. ARGV: the trim threshold (MINID, exclusive;
/// empty: none), the producer id, the instance's token, the cursor to check (empty: none)
/// and its fingerprint, then job ids whose markers go. An instance whose id another has
/// taken over trims and forgets nothing: `SUPERSEDED`. A cursor that no longer holds what
/// the producer read there (or is gone while the stream's last id is behind it): no trim,
/// `-1` (see [`CommandKind::AckEvents`]'s `check`).
pub static ACK_EVENTS: Script = Script {
    name: "ack_events",
    source: r#"
local owner = redis.call('HGET', KEYS[3], ARGV[2])
if owner and owner ~= ARGV[3] then
  return redis.error_reply('SUPERSEDED another instance took over producer ' .. ARGV[2])
end
local trimmed = 0
if ARGV[4] ~= '' then
  local moved
  local e = redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[4])[1]
  if e then
    local v = ''
    for k = 1, #e[2], 2 do
      if e[2][k] == 'v' then
        v = e[2][k + 1]
        break
      end
    end
    moved = string.sub(v, 1, #ARGV[5]) ~= ARGV[5]
  elseif redis.call('EXISTS', KEYS[1]) == 0 then
    moved = true
  else
    -- Gone: trimmed by an earlier send of this ack (the stream's last id is at or past
    -- it), or lost with the stream's tail (behind it). Ids compare as (ms, seq) numbers,
    -- written without leading zeros: by length, then as strings.
    local info = redis.call('XINFO', 'STREAM', KEYS[1])
    local last = '0-0'
    for k = 1, #info, 2 do
      if info[k] == 'last-generated-id' then last = info[k + 1] end
    end
    local lms, lseq = string.match(last, '^(%d+)-(%d+)$')
    local cms, cseq = string.match(ARGV[4], '^(%d+)-(%d+)$')
    local function less(a, b)
      return #a < #b or (#a == #b and a < b)
    end
    moved = less(lms, cms) or (lms == cms and less(lseq, cseq))
  end
  if moved then
    trimmed = -1
  end
end
if ARGV[1] ~= '' and trimmed == 0 then
  trimmed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
end
for i = 6, #ARGV, 512 do
  redis.call('HDEL', KEYS[2], unpack(ARGV, i, math.min(i + 511, #ARGV)))
end
return trimmed
"#,
};

/// `events_tail` — KEYS: a producer's events stream. The last id the stream generated
/// (`0-0` without a stream): `XINFO STREAM` answers a map, read here so that every
/// protocol gets the same bulk string.
pub static EVENTS_TAIL: Script = Script {
    name: "events_tail",
    source: r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return '0-0' end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return info[i + 1] end
end
return '0-0'
"#,
};

/// `destroy` — KEYS: the queue's keys of fixed name ([`crate::naming::QueueKeys::all`]; `producers` and
/// `gone` 8th and 9th, eleven of them), the events stem. Deletes them and every producer's events stream.
pub static DESTROY: Script = Script {
    name: "destroy",
    source: r#"
local n = 0
for _, set in ipairs({KEYS[8], KEYS[9]}) do
  for _, p in ipairs(redis.call('ZRANGE', set, 0, -1)) do
    n = n + redis.call('DEL', KEYS[12] .. ':' .. p)
  end
end
return n + redis.call('DEL', unpack(KEYS, 1, 11))
"#,
};

/// The invocation of a producer's command (routed here by [`super::invocation`]).
pub(super) fn invocation(kind: &CommandKind) -> Invocation<'_> {
    match kind {
        CommandKind::ReadEvents {
            producer,
            after,
            count,
            block_ms,
            ..
        } => {
            let mut args = vec![b("XREAD"), b("COUNT"), num(count)];
            if let Some(ms) = block_ms {
                args.extend([b("BLOCK"), num(ms)]);
            }
            args.extend([b("STREAMS"), b(&producer.events), id(*after)]);
            Invocation::Plain(args)
        }
        CommandKind::AckEvents {
            keys,
            producer,
            token,
            through,
            forget,
            check,
        } => {
            let threshold = through.map(|t| id(t.next().unwrap_or(t)));
            let mut args = Vec::with_capacity(5 + forget.len());
            args.push(threshold.unwrap_or(Cow::Borrowed(b"")));
            args.extend([b(&producer.id), b(token)]);
            match check {
                Some((cursor, seen)) => {
                    args.extend([id(*cursor), Cow::Borrowed(fingerprint(seen))])
                }
                None => args.extend([b(""), b("")]),
            }
            args.extend(forget.iter().map(|j| b(j)));
            script(
                &ACK_EVENTS,
                &[&producer.events, &keys.ids, &keys.owners],
                args,
            )
        }
        CommandKind::Stats { keys, producer } => {
            let k = [
                &keys.jobs,
                &keys.delayed,
                &keys.dead,
                &producer.events,
                &keys.workers,
                &keys.paused,
            ];
            script(&STATS, &k, Vec::new())
        }
        CommandKind::EventsTail { producer, .. } => {
            script(&EVENTS_TAIL, &[&producer.events], Vec::new())
        }
        CommandKind::Destroy { keys } => {
            let mut k: Vec<Arg<'_>> = keys.all().into_iter().map(b).collect();
            k.push(b(&keys.events));
            Invocation::Script {
                script: &DESTROY,
                keys: k,
                args: Vec::new(),
            }
        }
        _ => unreachable!("routed here for its own commands only"),
    }
}

/// The model's the producer's scripts (`sim`, feature `model`): what the scripts above do, on the
/// in-memory Redis the differential test holds against redis-server.
#[cfg(feature = "model")]
pub(crate) mod model {
    #![allow(clippy::wildcard_imports)]
    use crate::sim::exec::*;
    /// Script `ack_events`: trim what the producer read, forget its ended jobs' markers;
    /// refused to an instance that no longer holds its id.
    /// An ack's check of the producer's cursor: the event id and what was read there.
    pub(crate) type EventCheck = (EntryId, Arc<[u8]>);

    pub(crate) fn ack_events(
        sim: &mut Sim,
        keys: &QueueKeys,
        (producer, token): (&ProducerKeys, &str),
        (through, forget, check): (Option<EntryId>, &[String], Option<&EventCheck>),
    ) -> Exec {
        if superseded(sim, keys, &producer.id, token)? {
            return Err(format!(
                "SUPERSEDED another instance took over producer {}",
                producer.id
            ));
        }
        let stream = sim.stream_mut(&producer.events, false)?;
        // The cursor still holds what was read there, or is gone behind the stream's last id.
        let moved = check.is_some_and(|(cursor, seen)| {
            match stream.as_ref().map(|s| (s.entries.get(cursor), s.last_id)) {
                Some((Some(f), _)) => !holds(f, b"v", seen),
                Some((None, last)) => last < *cursor,
                None => true,
            }
        });
        let n = match (through, stream) {
            _ if moved => -1,
            (Some(t), Some(s)) => s.trim_min_id(t.next().unwrap_or(t)) as i64,
            _ => 0,
        };
        for job in forget {
            hdel(sim, &keys.ids, job.as_bytes())?;
        }
        Ok(Value::Int(n))
    }

    /// Script `destroy`: every key of the queue, with every producer's events stream.
    pub(crate) fn destroy(sim: &mut Sim, keys: &QueueKeys) -> Exec {
        let mut n = 0;
        for set in [&keys.producers, &keys.gone] {
            let members = sim.zset(set)?.map_or_else(Vec::new, |z| z.members());
            for p in members {
                n += usize::from(sim.remove(&events_key(keys, &p)));
            }
        }
        n += keys.all().iter().filter(|k| sim.remove(k)).count();
        Ok(Value::Int(n as i64))
    }

    pub(crate) fn stats(sim: &mut Sim, keys: &QueueKeys, producer: &ProducerKeys) -> Exec {
        let jobs = sim.stream_mut(&keys.jobs, false)?.map(|s| &*s);
        let group = jobs.and_then(|s| s.groups.get(GROUP));
        let pending = group.map_or(0, |g| g.pel.len() as i64);
        // Waiting (after the group's last delivered id) and running; without the group, all.
        let len = match (jobs, group) {
            (Some(s), Some(g)) => s.entries.range(g.undelivered_from()..).count() as i64 + pending,
            _ => xlen(jobs),
        };
        // The first entry after the last delivered one (all, without the group); the first
        // pending one.
        let oldest_waiting = match (jobs, group) {
            (Some(s), Some(g)) => s.entries.range(g.undelivered_from()..).next().map(|e| *e.0),
            (Some(s), None) => s.entries.keys().next().copied(),
            _ => None,
        };
        let oldest_running = group.and_then(|g| g.pel.keys().next().copied());
        let delayed = sim.zset(&keys.delayed)?.map_or(0, |z| z.len() as i64);
        let dead = xlen(sim.stream_mut(&keys.dead, false)?.map(|s| &*s));
        let events = xlen(sim.stream_mut(&producer.events, false)?.map(|s| &*s));
        let workers = sim.zset(&keys.workers)?.map_or(0, |z| z.len() as i64);
        let id =
            |e: Option<EntryId>| Value::Bulk(e.map(|e| e.to_string()).unwrap_or_default().into());
        let mut out: Vec<Value> = [len, pending, delayed, dead, events, workers]
            .into_iter()
            .map(Value::Int)
            .collect();
        out.extend([id(oldest_waiting), id(oldest_running)]);
        let paused = if sim.exists(&keys.paused) {
            let at = sim
                .hash(&keys.paused)
                .ok()
                .flatten()
                .and_then(|h| h.get(&b"at"[..]));
            at.cloned().unwrap_or_else(|| b"0".to_vec())
        } else {
            Vec::new()
        };
        out.push(Value::Bulk(paused));
        Ok(Value::Array(out))
    }

    pub(crate) fn xlen(s: Option<&Stream>) -> i64 {
        s.map_or(0, |s| s.entries.len() as i64)
    }
}
