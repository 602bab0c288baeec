//! Each command kind, executed on the model as Redis runs it (see [`crate::scripts`]).

// What every model of a transition (`crate::scripts::*::model`) works with, which each
// takes with one `use crate::sim::exec::*`: the model's types and the helpers below.
pub(crate) use super::{Sim, Stream, ZSet};
pub(crate) use crate::command::{CommandKind, NewJob, Settle, fingerprint};
pub(crate) use crate::naming::{GROUP, ProducerKeys, QueueKeys};
pub(crate) use crate::scripts::{SWEEP_LIMIT, TRIM_WINDOW_MS};
pub(crate) use crate::value::{EntryId, Fields, Value};
pub(crate) use std::sync::Arc;

#[allow(clippy::wildcard_imports)]
use crate::scripts::{
    enqueue::model::*, operator::model::*, producer::model::*, settle::model::*, upkeep::model::*,
};

pub(crate) type Exec = Result<Value, String>;

pub(crate) fn bulk(b: &[u8]) -> Value {
    Value::Bulk(b.to_vec())
}

pub(crate) fn id_value(id: EntryId) -> Value {
    Value::Bulk(id.to_string().into_bytes())
}

pub(crate) fn entry_parts(id: EntryId, fields: Fields) -> Vec<Value> {
    let flat = fields
        .into_iter()
        .flat_map(|(k, v)| [Value::Bulk(k), Value::Bulk(v)])
        .collect();
    vec![id_value(id), Value::Array(flat)]
}

pub(crate) fn entry_value((id, fields): (EntryId, Fields)) -> Value {
    Value::Array(entry_parts(id, fields))
}

pub(crate) fn read_reply(key: &str, entries: Vec<(EntryId, Fields)>) -> Value {
    if entries.is_empty() {
        return Value::Nil;
    }
    let entries = entries.into_iter().map(entry_value).collect();
    Value::Array(vec![Value::Array(vec![
        bulk(key.as_bytes()),
        Value::Array(entries),
    ])])
}

pub(crate) fn nogroup(key: &str, command: &str) -> String {
    format!("NOGROUP No such key '{key}' or consumer group '{GROUP}' in {command}")
}

pub(crate) fn fields(pairs: &[(&str, &[u8])]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
        .collect()
}

pub(crate) fn run(sim: &mut Sim, kind: &CommandKind) -> Exec {
    match kind {
        CommandKind::EnsureGroup { keys } => ensure_group(sim, keys),
        CommandKind::Enqueue {
            keys,
            now_ms,
            marker,
            jobs,
            fresh,
            register_until_ms,
        } => {
            let marker = marker.as_bytes();
            if *fresh {
                enqueue_fresh(sim, keys, marker, jobs, *register_until_ms)
            } else {
                enqueue(sim, keys, *now_ms, marker, jobs, *register_until_ms)
            }
        }
        CommandKind::Read {
            keys,
            consumer,
            count,
            ..
        } => {
            // MULTI: the read (its error, if any, in its place), then its pause (alone, a
            // read never blocks; merged ones: `execute_merged`).
            let got = read_group(sim, keys, consumer, *count).unwrap_or_else(Value::Error);
            let paused = Value::Int(i64::from(sim.exists(&keys.paused)));
            Ok(Value::Array(vec![got, paused]))
        }
        CommandKind::IsPaused { keys } => Ok(Value::Int(i64::from(sim.exists(&keys.paused)))),
        CommandKind::SetPaused {
            keys,
            paused,
            now_ms,
        } => {
            if *paused {
                let h = sim.hash_mut(&keys.paused)?;
                let new = h.insert(b"at".to_vec(), now_ms.to_string().into_bytes());
                Ok(Value::Int(i64::from(new.is_none())))
            } else {
                Ok(Value::Int(i64::from(sim.remove(&keys.paused))))
            }
        }
        CommandKind::Complete {
            keys,
            min_event_ms,
            consumer,
            items,
        } => complete(sim, keys, *min_event_ms, consumer, items),
        CommandKind::Retry {
            keys,
            now_ms,
            min_event_ms,
            consumer,
            items,
        } => retry(sim, keys, (*now_ms, *min_event_ms), consumer, items),
        CommandKind::Bury {
            keys,
            min_event_ms,
            min_dead_ms,
            consumer,
            items,
        } => bury(sim, keys, (*min_event_ms, *min_dead_ms), consumer, items),
        CommandKind::Promote {
            keys,
            now_ms,
            limit,
        } => promote(sim, keys, *now_ms, *limit),
        CommandKind::Reclaim { .. } => reclaim(sim, kind),
        CommandKind::Ping => Ok(Value::Status("PONG".into())),
        CommandKind::Heartbeat {
            keys,
            consumer,
            idle_ms,
            unstarted,
            entries,
        } => heartbeat(sim, keys, consumer, (*idle_ms, *unstarted), entries),
        _ => run_producer(sim, kind),
    }
}

/// The producer's commands and the operator's requests.
pub(crate) fn run_producer(sim: &mut Sim, kind: &CommandKind) -> Exec {
    match kind {
        CommandKind::ReadEvents {
            producer,
            after,
            count,
            ..
        } => match sim.stream_mut(&producer.events, false)? {
            None => Ok(Value::Nil),
            Some(s) => Ok(read_reply(
                &producer.events,
                s.read_after(*after, *count as usize),
            )),
        },
        CommandKind::AckEvents {
            keys,
            producer,
            token,
            through,
            forget,
            check,
        } => ack_events(
            sim,
            keys,
            (producer, token),
            (*through, forget, check.as_ref()),
        ),
        CommandKind::Stats { keys, producer } => stats(sim, keys, producer),
        CommandKind::EventsTail { producer, .. } => {
            let last = sim
                .stream_mut(&producer.events, false)?
                .map_or(EntryId::ZERO, |s| s.last_id);
            Ok(Value::Bulk(last.to_string().into_bytes()))
        }
        CommandKind::Register {
            keys,
            producer,
            token,
            claim,
            now_ms,
            until_ms,
        } => register_producer(sim, keys, (producer, token, *claim), (*now_ms, *until_ms)),
        CommandKind::Destroy { keys } => destroy(sim, keys),
        CommandKind::ReadDead { keys, after, count } => read_dead(sim, keys, *after, *count),
        CommandKind::Revive {
            keys,
            marker,
            items,
        } => revive(sim, keys, marker, items),
        CommandKind::FindJob { keys, job, limit } => find_job(sim, keys, job, *limit as usize),
        CommandKind::Workers { keys } => workers(sim, keys),
        CommandKind::PeekEvents {
            keys,
            since,
            cursors,
            count,
        } => peek_events(sim, keys, *since, cursors, *count),
        CommandKind::KeyUsage {
            keys,
            source,
            after,
            offset,
            count,
        } => key_usage(sim, keys, *source, (*after, *offset), *count),
        CommandKind::DelayedJob {
            keys,
            job,
            withdraw_as,
        } => delayed_job(sim, keys, job, withdraw_as.as_deref()),
        CommandKind::DeleteDead { keys, entries } => delete_dead(sim, keys, entries),
        CommandKind::TailLog {
            keys,
            after,
            count,
            keep_ms,
        } => tail_log(sim, keys, *after, *count, *keep_ms),
        _ => Err("ERR not a producer command".to_owned()),
    }
}

/// XADD to the outcome log, keeping its last [`crate::scripts::LOG_MAX`] entries (Redis'
/// `MAXLEN ~` may keep a node more: the model keeps exactly these; tests stay below).
pub(crate) fn log_add(sim: &mut Sim, key: &str, f: Fields) -> Result<(), String> {
    xadd(sim, key, f)?;
    if let Some(s) = sim.stream_mut(key, false)? {
        let max = usize::try_from(crate::scripts::LOG_MAX).unwrap_or(usize::MAX);
        while s.entries.len() > max {
            s.entries.pop_first();
        }
    }
    Ok(())
}

/// Whether another instance than `token`'s holds producer `id`.
pub(crate) fn superseded(
    sim: &Sim,
    keys: &QueueKeys,
    id: &str,
    token: &str,
) -> Result<bool, String> {
    Ok(sim
        .hash(&keys.owners)?
        .and_then(|h| h.get(id.as_bytes()))
        .is_some_and(|owner| owner != token.as_bytes()))
}

/// The events stream of the producer `id` names (bytes from Redis, as Lua concatenates them).
pub(crate) fn events_key(keys: &QueueKeys, id: &[u8]) -> String {
    keys.events_of(&String::from_utf8_lossy(id))
}

/// The settle scripts' `events_of`: the events stream of the producer a job's marker names,
/// if it is registered (`written` collects the streams for the batch's trim).
pub(crate) fn events_of(
    sim: &Sim,
    keys: &QueueKeys,
    marker: Option<&[u8]>,
) -> Result<Option<String>, String> {
    let Some(m) = marker.filter(|m| *m != b"w") else {
        return Ok(None);
    };
    if !sim.zset(&keys.producers)?.is_some_and(|z| z.contains(m)) {
        return Ok(None);
    }
    Ok(Some(events_key(keys, m)))
}

/// A job's id marker, if any.
pub(crate) fn marker_of(sim: &Sim, keys: &QueueKeys, job: &str) -> Result<Option<Vec<u8>>, String> {
    Ok(sim
        .hash(&keys.ids)?
        .and_then(|h| h.get(job.as_bytes()))
        .cloned())
}

pub(crate) fn ensure_group(sim: &mut Sim, keys: &QueueKeys) -> Exec {
    let s = sim
        .stream_mut(&keys.jobs, true)?
        .ok_or_else(|| "ERR stream missing".to_owned())?;
    if s.groups.contains_key(GROUP) {
        return Err("BUSYGROUP Consumer Group name already exists".into());
    }
    s.groups.insert(GROUP.to_owned(), Default::default());
    Ok(Value::Status("OK".into()))
}

pub(crate) fn work_fields(job: &str, envelope: &[u8]) -> Fields {
    fields(&[("j", job.as_bytes()), ("e", envelope)])
}

pub(crate) fn xadd(sim: &mut Sim, key: &str, f: Fields) -> Result<EntryId, String> {
    let now = sim.now_ms;
    let s = sim
        .stream_mut(key, true)?
        .ok_or_else(|| "ERR stream missing".to_owned())?;
    Ok(s.add(now, f))
}

/// XADD with `MINID <min_ms>-0`: add, then trim (exactly) below the threshold.
pub(crate) fn xadd_trimmed(sim: &mut Sim, key: &str, min_ms: u64, f: Fields) -> Result<(), String> {
    xadd(sim, key, f)?;
    if let Some(s) = sim.stream_mut(key, false)? {
        s.trim_min_id(EntryId::new(min_ms, 0));
    }
    Ok(())
}

pub(crate) fn hdel(sim: &mut Sim, key: &str, field: &[u8]) -> Result<(), String> {
    if sim.hash(key)?.is_some() {
        sim.hash_mut(key)?.remove(field);
        sim.drop_if_empty(key);
    }
    Ok(())
}

/// `XREADGROUP GROUP workers <consumer> COUNT <count> STREAMS <jobs> >`.
pub(crate) fn read_group(sim: &mut Sim, keys: &QueueKeys, consumer: &str, count: u32) -> Exec {
    let (now, any_read) = (sim.now_ms, sim.consumers_on_any_read);
    let Some(s) = sim.stream_mut(&keys.jobs, false)? else {
        return Err(nogroup(&keys.jobs, "XREADGROUP with GROUP option"));
    };
    let got = s.read_group(GROUP, consumer, count as usize, now, any_read);
    let got = got.ok_or_else(|| nogroup(&keys.jobs, "XREADGROUP with GROUP option"))?;
    Ok(read_reply(&keys.jobs, got))
}

/// Whether field `name` of an entry (empty when absent) starts with the fingerprint of
/// `read`, as the scripts compare them ([`crate::command::Settle::read`]).
pub(crate) fn holds(fields: &Fields, name: &[u8], read: &[u8]) -> bool {
    let value = fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or(&[][..], |(_, v)| v);
    value.starts_with(fingerprint(read))
}
