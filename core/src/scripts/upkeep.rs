//! The queue's upkeep: `promote` (delayed jobs come due), `reclaim` (entries whose lease ran
//! out, with promotion and the sweep of gone producers), `heartbeat` (leases extended), and
//! a producer's `register` (its promise to be back, which sweeps too).

use super::{Invocation, Script, b, id, num, script};
use crate::command::CommandKind;

/// The promotion both `promote` and `reclaim` do: up to `limit` delayed ids due at `now`
/// (Lua expressions) go to the work stream (KEYS 1-4: jobs, ids, delayed, payloads); a
/// delayed id whose payload is missing is dropped with its id (nothing could ever run it).
/// Leaves the count moved in `promoted` and the next due time (or -1) in `next_due`.
macro_rules! promote_due {
    ($now:literal, $limit:literal) => {
        concat!(
            "local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ",
            $now,
            ", 'LIMIT', 0, ",
            $limit,
            ")\n",
            r#"for _, id in ipairs(due) do
  local env = redis.call('HGET', KEYS[4], id)
  if env then
    redis.call('XADD', KEYS[1], '*', 'j', id, 'e', env)
  else
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
end
local promoted = #due
local nxt = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local next_due = -1
if nxt[2] then next_due = tonumber(nxt[2]) end
"#
        )
    };
}

/// The most producers one sweep declares gone, and the most events of a gone producer's
/// stream it removes (with the markers of the jobs they ended).
pub const SWEEP_LIMIT: usize = 256;

/// What producers gone for good leave, swept a bounded chunk at a time, by every upkeep
/// (`reclaim`) and every producer's `register` (KEYS `$ids`, `$producers`, `$gone`,
/// `$events`: the id markers, the registry, the gone set, the events stem; `now` a Lua
/// variable; `$owners` the instances' tokens, which a gone producer loses). Producers past
/// their promise move from `producers` to `gone` (a settle writes
/// no more outcomes for them, and drops their jobs' markers as those jobs end). Then the
/// first gone producer's events stream loses up to [`SWEEP_LIMIT`] events, and the markers
/// of the jobs those events ended (`c`, `d`) that still name it; once its stream is empty
/// it is deleted and the producer leaves `gone`.
macro_rules! sweep_gone {
    ($ids:literal, $producers:literal, $gone:literal, $events:literal, $owners:literal) => {
        concat!(
            "local s_ids, s_live, s_gone, s_stem, s_owners = KEYS[",
            $ids,
            "], KEYS[",
            $producers,
            "], KEYS[",
            $gone,
            "], KEYS[",
            $events,
            "], KEYS[",
            $owners,
            "]\n",
            r#"for _, p in ipairs(redis.call('ZRANGEBYSCORE', s_live, '-inf', '(' .. now,
    'LIMIT', 0, 256)) do
  redis.call('ZREM', s_live, p)
  redis.call('HDEL', s_owners, p)
  redis.call('ZADD', s_gone, now, p)
end
local first_gone = redis.call('ZRANGE', s_gone, 0, 0)[1]
if first_gone then
  local key = s_stem .. ':' .. first_gone
  local entries = redis.call('XRANGE', key, '-', '+', 'COUNT', 256)
  local ended, ids = {}, {}
  for _, e in ipairs(entries) do
    ids[#ids + 1] = e[1]
    local f, job, kind = e[2], nil, nil
    for k = 1, #f - 1, 2 do
      if f[k] == 'j' then job = f[k + 1] elseif f[k] == 'k' then kind = f[k + 1] end
    end
    if job and (kind == 'c' or kind == 'd') then ended[#ended + 1] = job end
  end
  if #ended > 0 then
    local marks = redis.call('HMGET', s_ids, unpack(ended))
    local mine = {}
    for n, job in ipairs(ended) do
      if marks[n] == first_gone then mine[#mine + 1] = job end
    end
    if #mine > 0 then redis.call('HDEL', s_ids, unpack(mine)) end
  end
  if #entries < 256 then
    redis.call('DEL', key)
    redis.call('ZREM', s_gone, first_gone)
  else
    redis.call('XDEL', key, unpack(ids))
  end
end
"#
        )
    };
}

/// `register` — KEYS: producers, gone, ids, events stem, owners. ARGV: producer id, now,
/// until, the instance's token, claim (`1`: the instance's first registration, which takes
/// the id over from any other instance; `0`: a refresh). A refresh by an instance whose id
/// another has taken over answers -1 and changes nothing. Otherwise the producer promises to
/// be back by `until` (out of `gone` if it had been swept), then sweeps as [`RECLAIM`] does.
/// Reply: 1 if it was not registered, else 0.
pub static REGISTER: Script = Script {
    name: "register",
    source: concat!(
        r#"
local now = tonumber(ARGV[2])
local owner = redis.call('HGET', KEYS[5], ARGV[1])
if ARGV[5] == '0' and owner and owner ~= ARGV[4] then
  return -1
end
redis.call('HSET', KEYS[5], ARGV[1], ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
local new = redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
"#,
        sweep_gone!("3", "1", "2", "4", "5"),
        "return new\n"
    ),
};

/// `promote` — KEYS: jobs, ids, delayed, payloads. ARGV: now, limit.
pub static PROMOTE: Script = Script {
    name: "promote",
    source: concat!(
        "\n",
        promote_due!("ARGV[1]", "ARGV[2]"),
        "return {promoted, next_due}\n"
    ),
};

/// `reclaim` — the queue's upkeep, shared by its workers. KEYS: jobs, ids, delayed, payloads,
/// workers, producers, gone, events stem, owners, paused. ARGV: consumer, min idle, cursor,
/// count, now, interval, jitter (‰), promote limit.
///
/// 0. Sweeps what producers gone for good left (see `sweep_gone!`).
/// 1. Promotes the delayed jobs that are due (as `promote`), and finds the next due time.
/// 2. With `count` > 0 and the queue not paused, `XAUTOCLAIM`s up to `count` entries idle
///    past the lease, each with its delivery count (from XPENDING).
/// 3. Schedules this worker's next upkeep so that the queue's workers, however many, run
///    one upkeep per `interval` between them: `workers` holds each live worker with the time
///    by which it promised to come back (its next visit plus one interval of grace); the
///    ones past their promise are dropped, and this worker's next visit is `now + interval ×
///    live workers × jitter / 1000` (jitter in [500, 1500] spreads them out).
/// 4. Deletes the group's consumers that hold no pending entry and are not live workers (a
///    worker process that exited, or restarted under a new name).
///
/// Reply: `[next cursor, [[id, fields, deliveries], ...], [deleted ids], next due or -1,
/// next visit]`.
pub static RECLAIM: Script = Script {
    name: "reclaim",
    source: concat!(
        r#"
local now = tonumber(ARGV[5])
"#,
        sweep_gone!("2", "6", "7", "8", "9"),
        promote_due!("now", "ARGV[8]"),
        r#"local cursor, claimed, deleted = ARGV[3], {}, {}
if tonumber(ARGV[4]) > 0 and redis.call('EXISTS', KEYS[10]) == 0 then
  local r = redis.call('XAUTOCLAIM', KEYS[1], 'workers', ARGV[1], ARGV[2], ARGV[3], 'COUNT', ARGV[4])
  for _, e in ipairs(r[2]) do
    local p = redis.call('XPENDING', KEYS[1], 'workers', e[1], e[1], 1)
    local n = 0
    if p[1] then n = p[1][4] end
    claimed[#claimed + 1] = {e[1], e[2], n}
  end
  cursor, deleted = r[1], r[3]
end
local interval = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. ARGV[5])
local live = redis.call('ZCARD', KEYS[5])
if not redis.call('ZSCORE', KEYS[5], ARGV[1]) then live = live + 1 end
local visit = now + math.floor(interval * live * tonumber(ARGV[7]) / 1000)
redis.call('ZADD', KEYS[5], visit + interval, ARGV[1])
-- Consumers of workers gone (not live, nothing pending) leave the group: every worker
-- process is a new consumer, and the group would keep every one that ever ran.
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], 'workers')
if type(consumers) == 'table' and consumers.err == nil then
  for _, c in ipairs(consumers) do
    local f = {}
    for k = 1, #c, 2 do f[c[k]] = c[k + 1] end
    if f['pending'] == 0 and f['name'] ~= ARGV[1]
        and not redis.call('ZSCORE', KEYS[5], f['name']) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'workers', f['name'])
    end
  end
end
return {cursor, claimed, deleted, next_due, visit}
"#
    ),
};

/// `heartbeat` — KEYS: jobs. ARGV: consumer, idle ms, unstarted (`1`: the entries never
/// started here, and their delivery is taken back: RETRYCOUNT one less, so that a job handed
/// back unstarted, in a pause or a drain, is not counted as stalled), then the entries.
pub static HEARTBEAT: Script = Script {
    name: "heartbeat",
    source: r#"
local out = {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], 'workers', ARGV[i], ARGV[i], 1, ARGV[1])
  if #p == 1 then
    if ARGV[3] == '1' then
      redis.call('XCLAIM', KEYS[1], 'workers', ARGV[1], 0, ARGV[i], 'IDLE', ARGV[2],
        'RETRYCOUNT', math.max(p[1][4] - 1, 0), 'JUSTID')
    else
      redis.call('XCLAIM', KEYS[1], 'workers', ARGV[1], 0, ARGV[i], 'IDLE', ARGV[2], 'JUSTID')
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#,
};

/// The invocation of an upkeep command (routed here by [`super::invocation`]).
pub(super) fn invocation(kind: &CommandKind) -> Invocation<'_> {
    match kind {
        CommandKind::Promote {
            keys,
            now_ms,
            limit,
        } => {
            let k = [&keys.jobs, &keys.ids, &keys.delayed, &keys.payloads];
            script(&PROMOTE, &k, vec![num(now_ms), num(limit)])
        }
        CommandKind::Reclaim {
            keys,
            consumer,
            min_idle_ms,
            cursor,
            count,
            now_ms,
            interval_ms,
            jitter,
            promote_limit,
        } => {
            let k = [
                &keys.jobs,
                &keys.ids,
                &keys.delayed,
                &keys.payloads,
                &keys.workers,
                &keys.producers,
                &keys.gone,
                &keys.events,
                &keys.owners,
                &keys.paused,
            ];
            let args = vec![
                b(consumer),
                num(min_idle_ms),
                id(*cursor),
                num(count),
                num(now_ms),
                num(interval_ms),
                num(jitter),
                num(promote_limit),
            ];
            script(&RECLAIM, &k, args)
        }
        CommandKind::Heartbeat {
            keys,
            consumer,
            idle_ms,
            unstarted,
            entries,
        } => {
            let mut args = vec![
                b(consumer),
                num(idle_ms),
                b(if *unstarted { "1" } else { "0" }),
            ];
            args.extend(entries.iter().map(|e| id(*e)));
            script(&HEARTBEAT, &[&keys.jobs], args)
        }
        CommandKind::Register {
            keys,
            producer,
            token,
            claim,
            now_ms,
            until_ms,
        } => {
            let k = [
                &keys.producers,
                &keys.gone,
                &keys.ids,
                &keys.events,
                &keys.owners,
            ];
            let claim = b(if *claim { "1" } else { "0" });
            let args = vec![b(&producer.id), num(now_ms), num(until_ms), b(token), claim];
            script(&REGISTER, &k, args)
        }
        _ => unreachable!("routed here for its own commands only"),
    }
}

/// The model's promote, reclaim, heartbeat and register (`sim`, feature `model`): what the scripts above do, on the
/// in-memory Redis the differential test holds against redis-server.
#[cfg(feature = "model")]
pub(crate) mod model {
    #![allow(clippy::wildcard_imports)]
    use crate::sim::exec::*;
    /// `sweep_gone!` of the scripts: producers past their promise are gone; the first gone
    /// producer's stream loses a chunk of events, and the markers of the jobs they ended.
    pub(crate) fn sweep_gone(sim: &mut Sim, keys: &QueueKeys, now_ms: u64) -> Result<(), String> {
        let lapsed = sim.zset(&keys.producers)?.map_or_else(Vec::new, |z| {
            now_ms
                .checked_sub(1)
                .map_or_else(Vec::new, |max| z.range_to(max, SWEEP_LIMIT))
        });
        for p in &lapsed {
            sim.zset_mut(&keys.producers)?.remove(p);
            sim.drop_if_empty(&keys.producers);
            hdel(sim, &keys.owners, p)?;
            sim.zset_mut(&keys.gone)?.add(now_ms, p);
        }
        let Some(first) = sim
            .zset(&keys.gone)?
            .and_then(|z| z.members().into_iter().next())
        else {
            return Ok(());
        };
        let key = events_key(keys, &first);
        let entries: Vec<(EntryId, Fields)> = sim.stream(&key).map_or_else(Vec::new, |s| {
            let first = s.entries.iter().take(SWEEP_LIMIT);
            first.map(|(id, f)| (*id, f.clone())).collect()
        });
        for (_, f) in &entries {
            let field = |name: &[u8]| f.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            let (Some(job), Some(kind)) = (field(b"j"), field(b"k")) else {
                continue;
            };
            if kind != b"c" && kind != b"d" {
                continue;
            }
            let mine = sim
                .hash(&keys.ids)?
                .and_then(|h| h.get(&job))
                .is_some_and(|m| *m == first);
            if mine {
                hdel(sim, &keys.ids, &job)?;
            }
        }
        if entries.len() < SWEEP_LIMIT {
            sim.remove(&key);
            sim.zset_mut(&keys.gone)?.remove(&first);
            sim.drop_if_empty(&keys.gone);
        } else if let Some(s) = sim.stream_mut(&key, false)? {
            for (id, _) in &entries {
                s.entries.remove(id);
            }
        }
        Ok(())
    }

    /// Script `heartbeat`: extends the leases this consumer holds.
    pub(crate) fn heartbeat(
        sim: &mut Sim,
        keys: &QueueKeys,
        consumer: &str,
        (idle_ms, unstarted): (u64, bool),
        entries: &[EntryId],
    ) -> Exec {
        let now = sim.now_ms;
        let missing = || nogroup(&keys.jobs, "XPENDING");
        let s = sim.stream_mut(&keys.jobs, false)?.ok_or_else(missing)?;
        if !s.groups.contains_key(GROUP) {
            return Err(missing());
        }
        let mut out = Vec::with_capacity(entries.len());
        for id in entries {
            let owned = s
                .pending(GROUP, *id)
                .is_some_and(|p| p.consumer == consumer);
            if owned {
                // As Redis: a delivery time before the epoch is bogus and becomes now.
                let at = now.checked_sub(idle_ms).unwrap_or(now);
                s.claim_justid(GROUP, consumer, *id, at);
                if unstarted {
                    if let Some(p) = s.groups.get_mut(GROUP).and_then(|g| g.pel.get_mut(id)) {
                        p.deliveries = p.deliveries.saturating_sub(1);
                    }
                }
            }
            out.push(Value::Int(i64::from(owned)));
        }
        Ok(Value::Array(out))
    }

    pub(crate) fn promote(sim: &mut Sim, keys: &QueueKeys, now_ms: u64, limit: u32) -> Exec {
        let due = sim
            .zset(&keys.delayed)?
            .map_or_else(Vec::new, |z| z.range_to(now_ms, limit as usize));
        for id in &due {
            let env = sim.hash(&keys.payloads)?.and_then(|h| h.get(id).cloned());
            match env {
                Some(env) => {
                    let job = String::from_utf8_lossy(id);
                    xadd(
                        sim,
                        &keys.jobs,
                        fields(&[("j", job.as_bytes()), ("e", &env)]),
                    )?;
                }
                None => hdel(sim, &keys.ids, id)?,
            }
            sim.zset_mut(&keys.delayed)?.remove(id);
            sim.drop_if_empty(&keys.delayed);
            hdel(sim, &keys.payloads, id)?;
        }
        let next = sim.zset(&keys.delayed)?.and_then(ZSet::first_score);
        let next = next.map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX));
        Ok(Value::Array(vec![
            Value::Int(due.len() as i64),
            Value::Int(next),
        ]))
    }

    /// The reclaim script: promote, XAUTOCLAIM (with `count` > 0), schedule the next visit.
    pub(crate) fn reclaim(sim: &mut Sim, kind: &CommandKind) -> Exec {
        let CommandKind::Reclaim {
            keys,
            consumer,
            min_idle_ms,
            cursor,
            count,
            now_ms,
            interval_ms,
            jitter,
            promote_limit,
        } = kind
        else {
            return Err("ERR not a reclaim".into());
        };
        sweep_gone(sim, keys, *now_ms)?;
        let promoted = promote(sim, keys, *now_ms, *promote_limit)?;
        let next_due = match promoted {
            Value::Array(mut a) => a.pop().unwrap_or(Value::Int(-1)),
            _ => Value::Int(-1),
        };
        let (mut cursor, mut claimed, mut deleted) = (*cursor, Vec::new(), Vec::new());
        if *count > 0 && !sim.exists(&keys.paused) {
            let (now, any_read) = (sim.now_ms, sim.consumers_on_any_read);
            let missing = || nogroup(&keys.jobs, "XAUTOCLAIM");
            let s = sim.stream_mut(&keys.jobs, false)?.ok_or_else(missing)?;
            let (start, count) = (cursor, *count as usize);
            let c = s
                .autoclaim(GROUP, consumer, *min_idle_ms, start, count, now, any_read)
                .ok_or_else(missing)?;
            claimed = c
                .claimed
                .into_iter()
                .map(|(id, f)| {
                    let n = s.pending(GROUP, id).map_or(0, |p| p.deliveries);
                    let mut e = entry_parts(id, f);
                    e.push(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)));
                    Value::Array(e)
                })
                .collect();
            deleted = c.deleted.into_iter().map(id_value).collect();
            cursor = c.cursor;
        }
        let visit = register(sim, keys, consumer, *now_ms, *interval_ms, *jitter)?;
        prune_consumers(sim, keys, consumer)?;
        Ok(Value::Array(vec![
            id_value(cursor),
            Value::Array(claimed),
            Value::Array(deleted),
            next_due,
            Value::Int(i64::try_from(visit).unwrap_or(i64::MAX)),
        ]))
    }

    /// The reclaim script's step 3: drops the workers past their promise, registers this one
    /// and returns its next visit.
    pub(crate) fn register(
        sim: &mut Sim,
        keys: &QueueKeys,
        consumer: &str,
        now_ms: u64,
        interval_ms: u64,
        jitter: u32,
    ) -> Result<u64, String> {
        let workers = sim.zset_mut(&keys.workers)?;
        workers.remove_below(now_ms);
        let mut live = workers.len() as u64;
        if !workers.contains(consumer.as_bytes()) {
            live += 1;
        }
        // As the script's doubles: exact while the product stays below 2^53.
        let visit = now_ms.saturating_add(
            interval_ms
                .saturating_mul(live)
                .saturating_mul(u64::from(jitter))
                / 1000,
        );
        workers.add(visit.saturating_add(interval_ms), consumer.as_bytes());
        Ok(visit)
    }

    /// The reclaim script's last step: consumers holding nothing, and not live workers, go.
    pub(crate) fn prune_consumers(
        sim: &mut Sim,
        keys: &QueueKeys,
        consumer: &str,
    ) -> Result<(), String> {
        let live: Vec<Vec<u8>> = sim
            .zset(&keys.workers)?
            .map_or_else(Vec::new, |z| z.members());
        let Some(s) = sim.stream_mut(&keys.jobs, false)? else {
            return Ok(());
        };
        let Some(g) = s.groups.get_mut(GROUP) else {
            return Ok(());
        };
        let holding: std::collections::BTreeSet<&str> =
            g.pel.values().map(|p| p.consumer.as_str()).collect();
        let gone: Vec<String> = g
            .consumers
            .iter()
            .filter(|c| {
                c.as_str() != consumer
                    && !holding.contains(c.as_str())
                    && !live.iter().any(|l| l == c.as_bytes())
            })
            .cloned()
            .collect();
        for c in gone {
            g.consumers.remove(&c);
        }
        Ok(())
    }

    /// Script `register`: the producer's claim or refresh, then the sweep.
    pub(crate) fn register_producer(
        sim: &mut Sim,
        keys: &QueueKeys,
        (producer, token, claim): (&ProducerKeys, &str, bool),
        (now_ms, until_ms): (u64, u64),
    ) -> Exec {
        if !claim && superseded(sim, keys, &producer.id, token)? {
            return Ok(Value::Int(-1));
        }
        sim.hash_mut(&keys.owners)?
            .insert(producer.id.as_bytes().to_vec(), token.as_bytes().to_vec());
        sim.zset_mut(&keys.gone)?.remove(producer.id.as_bytes());
        sim.drop_if_empty(&keys.gone);
        let live = sim.zset_mut(&keys.producers)?;
        let new = !live.contains(producer.id.as_bytes());
        live.add(until_ms, producer.id.as_bytes());
        sweep_gone(sim, keys, now_ms)?;
        Ok(Value::Int(i64::from(new)))
    }
}
