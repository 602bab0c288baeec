//! `enqueue`: adding jobs. A fresh batch (ids generated here, nothing to check) goes as
//! one `MULTI`/`EXEC`; any other through the script, which checks each id's marker.

use std::borrow::Cow;

use super::{Invocation, Script, b, num, script};
use crate::command::{CommandKind, NewJob};
use crate::naming::QueueKeys;

/// `enqueue` — KEYS: jobs, ids, delayed, payloads, paused, producers, gone. ARGV: now,
/// marker (`p` or `w`), the producer's registration to assert until (ms; empty: none, see
/// `CommandKind::Enqueue`), then per job: id, due (0: now), envelope. Per job: its entry id
/// (added), `1` (delayed), `0` (its id is marked: queued already) or, while the queue is
/// paused, `-1` (refused, not queued); then, with a registration, `ZADD NX`'s answer (1: it
/// was missing).
///
/// The markers are read with one HMGET and written with one HSET per 1,000 jobs (a call
/// from Lua costs Redis about as much as the command itself); a job whose id is marked, or
/// came earlier in the same batch, is not added again.
pub static ENQUEUE: Script = Script {
    name: "enqueue",
    source: r#"
local now = tonumber(ARGV[1])
local paused = redis.call('EXISTS', KEYS[5]) == 1
local registered
if ARGV[3] ~= '' then
  registered = redis.call('ZADD', KEYS[6], 'NX', ARGV[3], ARGV[2])
  redis.call('ZREM', KEYS[7], ARGV[2])
end
local out, fresh = {}, {}
for c = 4, #ARGV, 3000 do
  local last = math.min(c + 2999, #ARGV)
  local ids = {}
  for i = c, last, 3 do ids[#ids + 1] = ARGV[i] end
  local marked = redis.call('HMGET', KEYS[2], unpack(ids))
  local marks = {}
  for n, id in ipairs(ids) do
    if not marked[n] and not fresh[id] and not paused then
      fresh[id] = c + 3 * (n - 1)
      marks[#marks + 1] = id
      marks[#marks + 1] = ARGV[2]
    end
  end
  if #marks > 0 then
    redis.call('HSET', KEYS[2], unpack(marks))
  end
  for n, id in ipairs(ids) do
    local i = c + 3 * (n - 1)
    if fresh[id] ~= i then
      if paused and not marked[n] then out[#out + 1] = -1 else out[#out + 1] = 0 end
    else
      local due = tonumber(ARGV[i + 1])
      if due > now then
        redis.call('ZADD', KEYS[3], due, id)
        redis.call('HSET', KEYS[4], id, ARGV[i + 2])
        out[#out + 1] = 1
      else
        out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'j', id, 'e', ARGV[i + 2])
      end
    end
  end
end
if registered then out[#out + 1] = registered end
return out
"#,
};

/// An add: a fresh batch in one `MULTI`/`EXEC` (`EXISTS <paused>`, its markers, then its
/// entries, unchecked: a pause set elsewhere is learnt from the first reply, and the jobs
/// wait in the stream, as no worker starts a job while paused), any other through the
/// `enqueue` script.
fn enqueue_invocation<'a>(
    keys: &'a QueueKeys,
    now_ms: u64,
    marker: &'a str,
    jobs: &'a [NewJob],
    fresh: bool,
    register_until_ms: Option<u64>,
) -> Invocation<'a> {
    if fresh {
        let mut hset = Vec::with_capacity(2 + 2 * jobs.len());
        hset.extend([b("HSET"), b(&keys.ids)]);
        let mut cmds = Vec::with_capacity(1 + jobs.len());
        for j in jobs {
            hset.extend([b(&j.id), b(marker)]);
            cmds.push(vec![
                b("XADD"),
                b(&keys.jobs),
                b("*"),
                b("j"),
                b(&j.id),
                b("e"),
                Cow::Borrowed(&j.envelope[..]),
            ]);
        }
        cmds.insert(0, hset);
        cmds.insert(0, vec![b("EXISTS"), b(&keys.paused)]);
        if let Some(until) = register_until_ms {
            cmds.push(vec![
                b("ZADD"),
                b(&keys.producers),
                b("NX"),
                num(until),
                b(marker),
            ]);
            cmds.push(vec![b("ZREM"), b(&keys.gone), b(marker)]);
        }
        return Invocation::Transaction(cmds);
    }
    let mut args = Vec::with_capacity(3 + 3 * jobs.len());
    args.push(num(now_ms));
    args.push(b(marker));
    args.push(register_until_ms.map_or(b(""), num));
    for j in jobs {
        args.push(b(&j.id));
        args.push(j.due_ms.map_or(b("0"), num));
        args.push(Cow::Borrowed(&j.envelope[..]));
    }
    let k = [
        &keys.jobs,
        &keys.ids,
        &keys.delayed,
        &keys.payloads,
        &keys.paused,
        &keys.producers,
        &keys.gone,
    ];
    script(&ENQUEUE, &k, args)
}

/// The invocation of an add (routed here by [`super::invocation`]).
pub(super) fn invocation(kind: &CommandKind) -> Invocation<'_> {
    match kind {
        CommandKind::Enqueue {
            keys,
            now_ms,
            marker,
            jobs,
            fresh,
            register_until_ms,
        } => enqueue_invocation(keys, *now_ms, marker, jobs, *fresh, *register_until_ms),
        // Alone, a read never blocks: blocking reads go through the mux (`merged_read`,
        // then `pause_check`). Its pause is checked after it, in the same transaction.
        _ => unreachable!("routed here for its own commands only"),
    }
}

/// The model's enqueue (`sim`, feature `model`): what the scripts above do, on the
/// in-memory Redis the differential test holds against redis-server.
#[cfg(feature = "model")]
pub(crate) mod model {
    #![allow(clippy::wildcard_imports)]
    use crate::sim::exec::*;
    /// The adding producer's registration, asserted (`CommandKind::Enqueue`): `ZADD NX` into
    /// the live producers (its answer), `ZREM` from the gone ones (its count).
    pub(crate) fn assert_registration(
        sim: &mut Sim,
        keys: &QueueKeys,
        marker: &[u8],
        until_ms: u64,
    ) -> Result<(Value, Value), String> {
        let live = sim.zset_mut(&keys.producers)?;
        let added = if live.contains(marker) {
            0
        } else {
            live.add(until_ms, marker);
            1
        };
        let gone = sim.zset_mut(&keys.gone)?;
        let removed = i64::from(gone.remove(marker));
        sim.drop_if_empty(&keys.producers);
        sim.drop_if_empty(&keys.gone);
        Ok((Value::Int(added), Value::Int(removed)))
    }

    pub(crate) fn enqueue(
        sim: &mut Sim,
        keys: &QueueKeys,
        now_ms: u64,
        marker: &[u8],
        jobs: &[NewJob],
        register_until_ms: Option<u64>,
    ) -> Exec {
        let paused = sim.exists(&keys.paused);
        let registered = match register_until_ms {
            Some(until) => Some(assert_registration(sim, keys, marker, until)?.0),
            None => None,
        };
        let mut out = Vec::with_capacity(jobs.len() + 1);
        for job in jobs {
            if paused {
                // Read only: an HMGET creates no key.
                let marked = sim
                    .hash(&keys.ids)?
                    .is_some_and(|h| h.contains_key(job.id.as_bytes()));
                out.push(Value::Int(if marked { 0 } else { -1 }));
                continue;
            }
            let ids = sim.hash_mut(&keys.ids)?;
            if ids.contains_key(job.id.as_bytes()) {
                out.push(Value::Int(0));
                continue;
            }
            ids.insert(job.id.as_bytes().to_vec(), marker.to_vec());
            match job.due_ms {
                Some(due) if due > now_ms => {
                    sim.zset_mut(&keys.delayed)?.add(due, job.id.as_bytes());
                    sim.hash_mut(&keys.payloads)?
                        .insert(job.id.as_bytes().to_vec(), job.envelope.to_vec());
                    out.push(Value::Int(1));
                }
                _ => {
                    let id = xadd(sim, &keys.jobs, work_fields(&job.id, &job.envelope))?;
                    out.push(id_value(id));
                }
            }
        }
        out.extend(registered);
        Ok(Value::Array(out))
    }

    /// MULTI, EXISTS of the pause, HSET of every marker, an XADD per job, EXEC: no check (the
    /// ids are new; a pause is only reported), every job due now. The reply is EXEC's: whether
    /// the queue is paused, the HSET's count of new fields, then the entry ids. With an
    /// empty batch, `HSET ids` alone fails (wrong number of arguments) and MULTI refuses it, so
    /// EXEC aborts.
    pub(crate) fn enqueue_fresh(
        sim: &mut Sim,
        keys: &QueueKeys,
        marker: &[u8],
        jobs: &[NewJob],
        register_until_ms: Option<u64>,
    ) -> Exec {
        if jobs.is_empty() {
            return Err("EXECABORT Transaction discarded because of previous errors.".into());
        }
        // A command of the transaction that fails leaves its error in EXEC's array; the others run.
        let mut out = Vec::with_capacity(2 + jobs.len());
        out.push(Value::Int(i64::from(sim.exists(&keys.paused))));
        out.push(match sim.hash_mut(&keys.ids) {
            Ok(ids) => {
                let mut added = 0;
                for job in jobs {
                    if ids
                        .insert(job.id.as_bytes().to_vec(), marker.to_vec())
                        .is_none()
                    {
                        added += 1;
                    }
                }
                Value::Int(added)
            }
            Err(e) => Value::Error(e),
        });
        for job in jobs {
            out.push(
                match xadd(sim, &keys.jobs, work_fields(&job.id, &job.envelope)) {
                    Ok(id) => id_value(id),
                    Err(e) => Value::Error(e),
                },
            );
        }
        if let Some(until) = register_until_ms {
            match assert_registration(sim, keys, marker, until) {
                Ok((added, removed)) => out.extend([added, removed]),
                Err(e) => out.extend([Value::Error(e.clone()), Value::Error(e)]),
            }
        }
        Ok(Value::Array(out))
    }
}
