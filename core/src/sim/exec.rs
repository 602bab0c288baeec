//! Each command kind, executed on the model as Redis runs it (see [`crate::scripts`]).

use super::{Sim, Stream, ZSet};
use crate::command::{CommandKind, NewJob, Settle, fingerprint};
use std::collections::BTreeSet;
use std::sync::Arc;

use crate::naming::{GROUP, ProducerKeys, QueueKeys};
use crate::scripts::{SWEEP_LIMIT, TRIM_WINDOW_MS};
use crate::value::{EntryId, Fields, Value};

type Exec = Result<Value, String>;

fn bulk(b: &[u8]) -> Value {
    Value::Bulk(b.to_vec())
}

fn id_value(id: EntryId) -> Value {
    Value::Bulk(id.to_string().into_bytes())
}

fn entry_parts(id: EntryId, fields: Fields) -> Vec<Value> {
    let flat = fields
        .into_iter()
        .flat_map(|(k, v)| [Value::Bulk(k), Value::Bulk(v)])
        .collect();
    vec![id_value(id), Value::Array(flat)]
}

fn entry_value((id, fields): (EntryId, Fields)) -> Value {
    Value::Array(entry_parts(id, fields))
}

fn read_reply(key: &str, entries: Vec<(EntryId, Fields)>) -> Value {
    if entries.is_empty() {
        return Value::Nil;
    }
    let entries = entries.into_iter().map(entry_value).collect();
    Value::Array(vec![Value::Array(vec![
        bulk(key.as_bytes()),
        Value::Array(entries),
    ])])
}

pub(super) fn nogroup(key: &str, command: &str) -> String {
    format!("NOGROUP No such key '{key}' or consumer group '{GROUP}' in {command}")
}

fn fields(pairs: &[(&str, &[u8])]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
        .collect()
}

pub(super) fn run(sim: &mut Sim, kind: &CommandKind) -> Exec {
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
fn run_producer(sim: &mut Sim, kind: &CommandKind) -> Exec {
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

/// Script `tail_log`: open the log if need be, keep it `keep_ms` more, read after `after`.
fn tail_log(sim: &mut Sim, keys: &QueueKeys, after: EntryId, count: u32, keep_ms: u64) -> Exec {
    if !sim.exists(&keys.log) {
        log_add(sim, &keys.log, fields(&[("k", b"open")]))?;
    }
    let ttl = i64::try_from(keep_ms.max(1)).unwrap_or(i64::MAX);
    super::credentials::slide(sim, &keys.log, ttl);
    let entries = match sim.stream_mut(&keys.log, false)? {
        Some(s) => s.read_after(after, count as usize),
        None => Vec::new(),
    };
    Ok(Value::Array(entries.into_iter().map(entry_value).collect()))
}

/// XADD to the outcome log, keeping its last [`crate::scripts::LOG_MAX`] entries (Redis'
/// `MAXLEN ~` may keep a node more: the model keeps exactly these; tests stay below).
fn log_add(sim: &mut Sim, key: &str, f: Fields) -> Result<(), String> {
    xadd(sim, key, f)?;
    if let Some(s) = sim.stream_mut(key, false)? {
        let max = usize::try_from(crate::scripts::LOG_MAX).unwrap_or(usize::MAX);
        while s.entries.len() > max {
            s.entries.pop_first();
        }
    }
    Ok(())
}

/// The settle scripts' `log(job, kind, attempt, marker)`: one entry while the log exists.
fn log_outcome(
    sim: &mut Sim,
    keys: &QueueKeys,
    job: &str,
    kind: &[u8],
    item: &Settle,
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

/// `XRANGE <dead> (<after> + COUNT <count>`.
fn read_dead(sim: &mut Sim, keys: &QueueKeys, after: EntryId, count: u32) -> Exec {
    let entries = match sim.stream_mut(&keys.dead, false)? {
        Some(s) => s.read_after(after, count as usize),
        None => Vec::new(),
    };
    Ok(Value::Array(entries.into_iter().map(entry_value).collect()))
}

/// Script `revive`: dead letters back to the work stream, each once, under `marker`.
fn revive(
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
fn workers(sim: &mut Sim, keys: &QueueKeys) -> Exec {
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
fn key_usage(
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
fn peek_events(
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
fn delayed_job(sim: &mut Sim, keys: &QueueKeys, job: &str, withdraw_as: Option<&str>) -> Exec {
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
fn delete_dead(sim: &mut Sim, keys: &QueueKeys, entries: &[EntryId]) -> Exec {
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

/// Script `ack_events`: trim what the producer read, forget its ended jobs' markers;
/// refused to an instance that no longer holds its id.
/// An ack's check of the producer's cursor: the event id and what was read there.
type EventCheck = (EntryId, Arc<[u8]>);

fn ack_events(
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

/// Script `register`: the producer's claim or refresh, then the sweep.
fn register_producer(
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

/// Script `destroy`: every key of the queue, with every producer's events stream.
fn destroy(sim: &mut Sim, keys: &QueueKeys) -> Exec {
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

/// Script `find_job`: where a job is, each scan bounded by `limit`.
fn find_job(sim: &mut Sim, keys: &QueueKeys, job: &str, limit: usize) -> Exec {
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

/// Whether another instance than `token`'s holds producer `id`.
fn superseded(sim: &Sim, keys: &QueueKeys, id: &str, token: &str) -> Result<bool, String> {
    Ok(sim
        .hash(&keys.owners)?
        .and_then(|h| h.get(id.as_bytes()))
        .is_some_and(|owner| owner != token.as_bytes()))
}

/// The events stream of the producer `id` names (bytes from Redis, as Lua concatenates them).
fn events_key(keys: &QueueKeys, id: &[u8]) -> String {
    keys.events_of(&String::from_utf8_lossy(id))
}

/// The settle scripts' `events_of`: the events stream of the producer a job's marker names,
/// if it is registered (`written` collects the streams for the batch's trim).
fn events_of(
    sim: &Sim,
    keys: &QueueKeys,
    marker: Option<&[u8]>,
    written: &mut BTreeSet<String>,
) -> Result<Option<String>, String> {
    let Some(m) = marker.filter(|m| *m != b"w") else {
        return Ok(None);
    };
    if !sim.zset(&keys.producers)?.is_some_and(|z| z.contains(m)) {
        return Ok(None);
    }
    let key = events_key(keys, m);
    written.insert(key.clone());
    Ok(Some(key))
}

/// A job's id marker, if any.
fn marker_of(sim: &Sim, keys: &QueueKeys, job: &str) -> Result<Option<Vec<u8>>, String> {
    Ok(sim
        .hash(&keys.ids)?
        .and_then(|h| h.get(job.as_bytes()))
        .cloned())
}

/// The settle scripts' `trim_events`: every stream written is trimmed below `min_ms`.
fn trim_events(sim: &mut Sim, written: &BTreeSet<String>, min_ms: u64) -> Result<(), String> {
    for key in written {
        if let Some(s) = sim.stream_mut(key, false)? {
            s.trim_min_id(EntryId::new(min_ms, 0));
        }
    }
    Ok(())
}

/// `sweep_gone!` of the scripts: producers past their promise are gone; the first gone
/// producer's stream loses a chunk of events, and the markers of the jobs they ended.
fn sweep_gone(sim: &mut Sim, keys: &QueueKeys, now_ms: u64) -> Result<(), String> {
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

/// An outcome event's fields, as the settle scripts write them (`kind`: c, f or d).
fn event_fields(job: &str, kind: &[u8], item: &Settle) -> Fields {
    fields(&[
        ("j", job.as_bytes()),
        ("k", kind),
        ("a", item.attempt.to_string().as_bytes()),
        ("i", instance_hex(item).as_bytes()),
        ("v", &item.value),
    ])
}

/// Script `complete`.
fn complete(
    sim: &mut Sim,
    keys: &QueueKeys,
    min_event_ms: u64,
    consumer: &str,
    items: &[Settle],
) -> Exec {
    let mut written = BTreeSet::new();
    // As the script: the markers read before the loop, the unwanted ones dropped after it.
    let mut done: Vec<String> = Vec::new();
    let out = settle(sim, keys, consumer, items, |sim, item| {
        let job = item.job.as_deref().unwrap_or_default();
        let marker = marker_of(sim, keys, job)?;
        log_outcome(sim, keys, job, b"c", item, marker.as_deref())?;
        match events_of(sim, keys, marker.as_deref(), &mut written)? {
            Some(key) => xadd(sim, &key, event_fields(job, b"c", item)).map(drop),
            None if marker.is_some() => {
                done.push(job.to_owned());
                Ok(())
            }
            None => Ok(()),
        }
    })?;
    trim_events(sim, &written, min_event_ms)?;
    for job in done {
        hdel(sim, &keys.ids, job.as_bytes())?;
    }
    Ok(out)
}

/// Script `retry`, at `now_ms`, trimming events below `min_event_ms`.
fn retry(
    sim: &mut Sim,
    keys: &QueueKeys,
    (now_ms, min_event_ms): (u64, u64),
    consumer: &str,
    items: &[Settle],
) -> Exec {
    let mut written = BTreeSet::new();
    let out = settle(sim, keys, consumer, items, |sim, item| {
        let job = item.job.as_deref().unwrap_or_default();
        let marker = marker_of(sim, keys, job)?;
        log_outcome(sim, keys, job, b"f", item, marker.as_deref())?;
        if let Some(key) = events_of(sim, keys, marker.as_deref(), &mut written)? {
            xadd(sim, &key, event_fields(job, b"f", item))?;
        }
        if item.due_ms > now_ms {
            sim.zset_mut(&keys.delayed)?
                .add(item.due_ms, job.as_bytes());
            sim.hash_mut(&keys.payloads)?
                .insert(job.as_bytes().to_vec(), item.job_envelope.to_vec());
        } else {
            xadd(sim, &keys.jobs, work_fields(job, &item.job_envelope))?;
        }
        Ok(())
    })?;
    trim_events(sim, &written, min_event_ms)?;
    Ok(out)
}

/// Script `bury`, trimming events below `min_event_ms` and dead letters below `min_dead_ms`.
fn bury(
    sim: &mut Sim,
    keys: &QueueKeys,
    (min_event_ms, min_dead_ms): (u64, u64),
    consumer: &str,
    items: &[Settle],
) -> Exec {
    let mut written = BTreeSet::new();
    let out = settle(sim, keys, consumer, items, |sim, item| {
        let job = item.job.as_deref().unwrap_or_default();
        let f = fields(&[
            ("j", job.as_bytes()),
            ("e", &item.job_envelope),
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
            match events_of(sim, keys, marker.as_deref(), &mut written)? {
                Some(key) => {
                    xadd(sim, &key, event_fields(job, b"d", item))?;
                }
                None if marker.is_some() => hdel(sim, &keys.ids, job.as_bytes())?,
                None => {}
            }
        }
        Ok(())
    })?;
    trim_events(sim, &written, min_event_ms)?;
    Ok(out)
}

/// Script `heartbeat`: extends the leases this consumer holds.
fn heartbeat(
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

fn ensure_group(sim: &mut Sim, keys: &QueueKeys) -> Exec {
    let s = sim
        .stream_mut(&keys.jobs, true)?
        .ok_or_else(|| "ERR stream missing".to_owned())?;
    if s.groups.contains_key(GROUP) {
        return Err("BUSYGROUP Consumer Group name already exists".into());
    }
    s.groups.insert(GROUP.to_owned(), Default::default());
    Ok(Value::Status("OK".into()))
}

fn work_fields(job: &str, envelope: &[u8]) -> Fields {
    fields(&[("j", job.as_bytes()), ("e", envelope)])
}

fn xadd(sim: &mut Sim, key: &str, f: Fields) -> Result<EntryId, String> {
    let now = sim.now_ms;
    let s = sim
        .stream_mut(key, true)?
        .ok_or_else(|| "ERR stream missing".to_owned())?;
    Ok(s.add(now, f))
}

/// XADD with `MINID <min_ms>-0`: add, then trim (exactly) below the threshold.
fn xadd_trimmed(sim: &mut Sim, key: &str, min_ms: u64, f: Fields) -> Result<(), String> {
    xadd(sim, key, f)?;
    if let Some(s) = sim.stream_mut(key, false)? {
        s.trim_min_id(EntryId::new(min_ms, 0));
    }
    Ok(())
}

fn hdel(sim: &mut Sim, key: &str, field: &[u8]) -> Result<(), String> {
    if sim.hash(key)?.is_some() {
        sim.hash_mut(key)?.remove(field);
        sim.drop_if_empty(key);
    }
    Ok(())
}

/// `XREADGROUP GROUP workers <consumer> COUNT <count> STREAMS <jobs> >`.
pub(super) fn read_group(sim: &mut Sim, keys: &QueueKeys, consumer: &str, count: u32) -> Exec {
    let (now, any_read) = (sim.now_ms, sim.consumers_on_any_read);
    let Some(s) = sim.stream_mut(&keys.jobs, false)? else {
        return Err(nogroup(&keys.jobs, "XREADGROUP with GROUP option"));
    };
    let got = s.read_group(GROUP, consumer, count as usize, now, any_read);
    let got = got.ok_or_else(|| nogroup(&keys.jobs, "XREADGROUP with GROUP option"))?;
    Ok(read_reply(&keys.jobs, got))
}

/// The adding producer's registration, asserted (`CommandKind::Enqueue`): `ZADD NX` into
/// the live producers (its answer), `ZREM` from the gone ones (its count).
fn assert_registration(
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

fn enqueue(
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
fn enqueue_fresh(
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

/// Whether field `name` of an entry (empty when absent) starts with the fingerprint of
/// `read`, as the scripts compare them ([`crate::command::Settle::read`]).
fn holds(fields: &Fields, name: &[u8], read: &[u8]) -> bool {
    let value = fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or(&[][..], |(_, v)| v);
    value.starts_with(fingerprint(read))
}

/// The shared shape of complete/retry/bury: per item, act only if the entry is pending for
/// `consumer`, still holds what the worker read ([`Settle::read`]), and XACK removed it.
fn settle(
    sim: &mut Sim,
    keys: &QueueKeys,
    consumer: &str,
    items: &[Settle],
    mut then: impl FnMut(&mut Sim, &Settle) -> Result<(), String>,
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
fn trim_settled(sim: &mut Sim, key: &str, settled: &[EntryId]) -> Result<(), String> {
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

fn promote(sim: &mut Sim, keys: &QueueKeys, now_ms: u64, limit: u32) -> Exec {
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
fn reclaim(sim: &mut Sim, kind: &CommandKind) -> Exec {
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
fn register(
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
fn prune_consumers(sim: &mut Sim, keys: &QueueKeys, consumer: &str) -> Result<(), String> {
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

fn xlen(s: Option<&Stream>) -> i64 {
    s.map_or(0, |s| s.entries.len() as i64)
}

fn stats(sim: &mut Sim, keys: &QueueKeys, producer: &ProducerKeys) -> Exec {
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
    let id = |e: Option<EntryId>| Value::Bulk(e.map(|e| e.to_string()).unwrap_or_default().into());
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

/// An item's instance as its scripts write it: hex, or empty when unknown.
fn instance_hex(item: &Settle) -> String {
    item.instance.map(|i| i.to_hex()).unwrap_or_default()
}
