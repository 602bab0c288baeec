//! The exact Redis invocation of every command kind: plain commands, and the Lua scripts of
//! the atomic transitions, with their KEYS and ARGV.
//!
//! The adapter sends [`Invocation`]s as they are (scripts as EVALSHA, loaded and sent again
//! on `NOSCRIPT`; a transaction as MULTI … EXEC); it never builds arguments itself. The in-memory model (`sim`, feature `model`)
//! implements the same semantics, and a differential test runs both.
//!
//! Stream entry fields: work and dead entries carry `j` (job id) and `e` (sealed job); dead
//! entries also `r` (sealed reason) and `a` (attempt); events carry `j`, `k` (kind: `c`
//! completed, `f` failed and retried, `d` dead-lettered), `a` (attempt) and `v` (sealed
//! result or reason).
//!
//! Outcomes go to the producer that added the job: its id is the job's id marker (in
//! `ids`), and its events stream is `<events>:<id>` ([`QueueKeys::events_of`]). The settle
//! scripts and the sweep build those names from the events stem they get in KEYS (the
//! producer ids are data); every such key carries the queue's hash tag, so it is on the slot
//! of the declared keys.

use std::borrow::Cow;

use crate::command::{CommandKind, NewJob, Settle};
use crate::naming::{GROUP, QueueKeys};
use crate::value::EntryId;

/// A Lua script: its name (for logs and metrics) and its source.
#[derive(Debug, PartialEq, Eq)]
pub struct Script {
    /// A short name.
    pub name: &'static str,
    /// The Lua source.
    pub source: &'static str,
}

/// One argument, borrowed from the command where it can be.
pub type Arg<'a> = Cow<'a, [u8]>;

/// How a command kind runs on Redis.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation<'a> {
    /// A plain command: name and arguments.
    Plain(Vec<Arg<'a>>),
    /// Commands run as one transaction: `MULTI`, each command, `EXEC`, in one pipeline. The
    /// reply is EXEC's: an array of the commands' replies.
    Transaction(Vec<Vec<Arg<'a>>>),
    /// A script with its KEYS (all of one hash tag) and ARGV.
    Script {
        /// The script.
        script: &'static Script,
        /// KEYS.
        keys: Vec<Arg<'a>>,
        /// ARGV.
        args: Vec<Arg<'a>>,
    },
}

impl Invocation<'_> {
    /// The key that decides where the invocation runs on a cluster (every key it touches
    /// shares its slot): a script's first key, a transaction's first keyed command's, a
    /// plain command's key (`None` for keyless commands: `PING`, `SCAN`, ...).
    #[must_use]
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Invocation::Plain(args) => command_key(args),
            Invocation::Transaction(cmds) => cmds.iter().find_map(|c| command_key(c)),
            Invocation::Script { keys, .. } => keys.first().map(AsRef::as_ref),
        }
    }

    /// The hash slot of [`Invocation::key`].
    #[must_use]
    pub fn slot(&self) -> Option<u16> {
        self.key().map(crate::naming::hash_slot)
    }
}

/// The key of one command (its name first), for the commands datalayer sends.
fn command_key<'a>(args: &'a [Arg<'_>]) -> Option<&'a [u8]> {
    let name = args.first()?.to_ascii_uppercase();
    match name.as_slice() {
        b"PING" | b"SCAN" | b"ECHO" | b"INFO" | b"CLIENT" | b"CONFIG" | b"CLUSTER" | b"SCRIPT"
        | b"MULTI" | b"EXEC" | b"WAIT" => None,
        b"XREAD" | b"XREADGROUP" => {
            let streams = args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(streams + 1).map(AsRef::as_ref)
        }
        b"XGROUP" | b"XINFO" => args.get(2).map(AsRef::as_ref),
        _ => args.get(1).map(AsRef::as_ref),
    }
}

/// `enqueue` — KEYS: jobs, ids, delayed, payloads, paused. ARGV: now, marker (`p` or `w`),
/// then per job: id, due (0: now), envelope. Per job: its entry id (added), `1` (delayed),
/// `0` (its id is marked: queued already) or, while the queue is paused, `-1` (refused,
/// not queued).
///
/// The markers are read with one HMGET and written with one HSET per 1,000 jobs (a call
/// from Lua costs Redis about as much as the command itself); a job whose id is marked, or
/// came earlier in the same batch, is not added again.
pub const ENQUEUE: Script = Script {
    name: "enqueue",
    source: r#"
local now = tonumber(ARGV[1])
local paused = redis.call('EXISTS', KEYS[5]) == 1
local out, fresh = {}, {}
for c = 3, #ARGV, 3000 do
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
return out
"#,
};

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
  local first = redis.call('XPENDING', KEYS[1], 'workers', '-', '+', 1)
  if first[1] then
    floor = first[1][1]
  else
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
      local f = {}
      for k = 1, #g, 2 do f[g[k]] = g[k + 1] end
      if f['name'] == 'workers' then
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
/// takes an entry with `take(entry)` (true once per held entry, which joins `settled`);
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
local function take(entry)
  if held[entry] and not seen[entry] then
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
/// not registered: gone, its outcomes swept); one ZSCORE per producer per batch.
/// `trim_events(min)` trims every stream written below `min`, once each.
macro_rules! producer_events {
    ($events:literal, $producers:literal) => {
        concat!(
            "local events_stem, producers_key = KEYS[",
            $events,
            "], KEYS[",
            $producers,
            "]\n",
            r#"local registered, written = {}, {}
local function events_of(marker)
  if not marker or marker == 'w' then return nil end
  local r = registered[marker]
  if r == nil then
    r = redis.call('ZSCORE', producers_key, marker) ~= false
    registered[marker] = r
  end
  if not r then return nil end
  local key = events_stem .. ':' .. marker
  written[key] = true
  return key
end
local function trim_events(min)
  for key in pairs(written) do
    redis.call('XTRIM', key, 'MINID', min)
  end
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
/// ARGV from `$first` (its entry, then its job id), `take` it (see `held_prelude!`) and
/// answer 1 or 0; the held ones go in `jobs` (their ids) and `at` (their first ARGV index),
/// and one HMGET of `KEYS[$ids]` reads their markers into `marks` (empty if none is held).
macro_rules! held_items {
    ($first:literal, $stride:literal, $ids:literal) => {
        concat!(
            "local jobs, at, marks = {}, {}, {}\nfor i = ",
            $first,
            ", #ARGV, ",
            $stride,
            " do\n",
            r#"  if take(ARGV[i]) then
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
/// instance (hex).
///
/// One XPENDING finds which of the batch's entries this consumer holds (its pending entries
/// between the lowest and the highest of them), one HMGET reads the jobs' id markers (each
/// names the producer the result goes to), one HDEL drops the markers no producer will
/// forget (`w`, or a producer gone), one XACK settles them all: calls from Lua cost Redis as
/// much as the commands, so the per-job work is the result's XADD alone.
pub const COMPLETE: Script = Script {
    name: "complete",
    source: concat!(
        held_prelude!("3", "4", "2"),
        producer_events!("3", "4"),
        outcome_log!("5"),
        held_items!("5", "5", "2"),
        r#"if #jobs > 0 then
  local done = {}
  for n, i in ipairs(at) do
    log(jobs[n], 'c', ARGV[i + 3], marks[n])
    local key = events_of(marks[n])
    if key then
      redis.call('XADD', key, '*', 'j', jobs[n], 'k', 'c', 'a', ARGV[i + 3], 'i', ARGV[i + 4],
        'v', ARGV[i + 2])
    elseif marks[n] then
      done[#done + 1] = jobs[n]
    end
  end
  -- Results nobody read for the retention time go, once per batch and stream.
  trim_events(ARGV[1])
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
/// job id, sealed reason, attempt, due, re-sealed job, instance (hex).
pub const RETRY: Script = Script {
    name: "retry",
    source: concat!(
        held_prelude!("4", "5", "3"),
        producer_events!("4", "5"),
        outcome_log!("7"),
        held_items!("6", "7", "6"),
        r#"local now = tonumber(ARGV[1])
if #jobs > 0 then
  for n, i in ipairs(at) do
    local job = jobs[n]
    log(job, 'f', ARGV[i + 3], marks[n])
    local key = events_of(marks[n])
    if key then
      redis.call('XADD', key, '*',
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
  trim_events(ARGV[2])
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
/// of garbage), instance (hex; empty if unknown). Dead letters older than the min id go.
pub const BURY: Script = Script {
    name: "bury",
    source: concat!(
        held_prelude!("4", "5", "2"),
        producer_events!("4", "5"),
        outcome_log!("6"),
        r#"for i = 6, #ARGV, 6 do
  local entry, job = ARGV[i], ARGV[i + 1]
  if take(entry) then
    redis.call('XADD', KEYS[3], 'MINID', ARGV[3], '*',
      'j', job, 'e', ARGV[i + 4], 'r', ARGV[i + 2], 'a', ARGV[i + 3], 'i', ARGV[i + 5])
    if job == '' then
      log(job, 'd', ARGV[i + 3], false)
    else
      local marker = redis.call('HGET', KEYS[2], job)
      log(job, 'd', ARGV[i + 3], marker)
      local key = events_of(marker)
      if key then
        redis.call('XADD', key, '*',
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
trim_events(ARGV[1])
ack_settled()
"#,
        trim_settled!(),
        "return out\n"
    ),
};

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
pub const REGISTER: Script = Script {
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

/// `revive` — KEYS: jobs, ids, dead. ARGV: marker, then per dead letter: its entry, job
/// id, the job re-sealed as attempt 1. A letter that is gone answers 0; one whose job id
/// lives again (its marker is set) answers -1 and stays; else the job goes back to the work
/// stream under the marker and the letter goes: its new entry id.
pub const REVIVE: Script = Script {
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
pub const FIND_JOB: Script = Script {
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
pub const DELAYED_JOB: Script = Script {
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
pub const WORKERS: Script = Script {
    name: "workers",
    source: r#"
return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
"#,
};

/// `destroy` — KEYS: the queue's keys of fixed name ([`QueueKeys::all`]; `producers` and
/// `gone` 8th and 9th, eleven of them), the events stem. Deletes them and every producer's events stream.
pub const DESTROY: Script = Script {
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

/// `promote` — KEYS: jobs, ids, delayed, payloads. ARGV: now, limit.
pub const PROMOTE: Script = Script {
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
pub const RECLAIM: Script = Script {
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

/// `heartbeat` — KEYS: jobs. ARGV: consumer, idle ms, then the entries.
pub const HEARTBEAT: Script = Script {
    name: "heartbeat",
    source: r#"
local out = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], 'workers', ARGV[i], ARGV[i], 1, ARGV[1])
  if #p == 1 then
    redis.call('XCLAIM', KEYS[1], 'workers', ARGV[1], 0, ARGV[i], 'IDLE', ARGV[2], 'JUSTID')
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#,
};

/// `stats` — KEYS: jobs, delayed, dead, the producer's events, workers, paused. Jobs counts the
/// entries waiting (not yet delivered: the group's lag) and running (pending), not completed
/// entries the next trim will drop. When Redis does not know the lag (after deletions from
/// the stream), at most 10,000 waiting entries are counted one by one; past that the count is
/// an upper bound. Then the live workers (ZCARD), and the ids of the oldest waiting entry
/// (the first after the group's last delivered one) and of the oldest running one (the first
/// pending), or empty: each one O(log n) lookup; last, when the queue was paused (ms), or
/// empty if it is not.
pub const STATS: Script = Script {
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
/// empty: none), the producer id, the instance's token, then job ids whose markers go. An
/// instance whose id another has taken over trims and forgets nothing: `SUPERSEDED`.
pub const ACK_EVENTS: Script = Script {
    name: "ack_events",
    source: r#"
local owner = redis.call('HGET', KEYS[3], ARGV[2])
if owner and owner ~= ARGV[3] then
  return redis.error_reply('SUPERSEDED another instance took over producer ' .. ARGV[2])
end
local trimmed = 0
if ARGV[1] ~= '' then
  trimmed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
end
for i = 4, #ARGV, 512 do
  redis.call('HDEL', KEYS[2], unpack(ARGV, i, math.min(i + 511, #ARGV)))
end
return trimmed
"#,
};

/// `cred_save` — KEYS: the session's credentials hash. ARGV: ttl (ms, 0: none), n, then n
/// pairs (verifier field, verifier) of the caller's secrets (the active one first), then the
/// credential's field and envelope, then stale fields (the same credential under retired
/// secrets) to delete. A verifier present with another value means the caller's secret is not
/// the one the store was made with: nothing is written, `WRONGSECRET`.
pub const CRED_SAVE: Script = Script {
    name: "cred_save",
    source: r#"
local n = tonumber(ARGV[2])
for i = 3, 2 + 2 * n, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and cur ~= ARGV[i + 1] then
    return redis.error_reply('WRONGSECRET the credentials store was made with another secret')
  end
end
local f = 3 + 2 * n
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4], ARGV[f], ARGV[f + 1])
for i = f + 2, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('PERSIST', KEYS[1])
end
return 1
"#,
};

/// `cred_get` — KEYS: the session's credentials hash. ARGV: ttl (ms, 0: none), then the
/// fields to read. Returns HMGET's reply and, in the same atomic step, slides the expiry.
pub const CRED_GET: Script = Script {
    name: "cred_get",
    source: r#"
local out = redis.call('HMGET', KEYS[1], unpack(ARGV, 2))
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return out
"#,
};

/// `tail_log` — KEYS: the outcome log. ARGV: after, count, keep (ms). See
/// [`CommandKind::TailLog`].
pub const TAIL_LOG: Script = Script {
    name: "tail_log",
    source: r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', 10000, '*', 'k', 'open')
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
"#,
};

/// `read` — KEYS: jobs, paused. ARGV: consumer, count. A worker's read that does not block:
/// `[1]` while the queue is paused (nothing is read), else `[0, XREADGROUP's reply]`.
pub const READ: Script = Script {
    name: "read",
    source: r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
return {0, redis.call('XREADGROUP', 'GROUP', 'workers', ARGV[1], 'COUNT', ARGV[2],
  'STREAMS', KEYS[1], '>')}
"#,
};

/// `events_tail` — KEYS: a producer's events stream. The last id the stream generated
/// (`0-0` without a stream): `XINFO STREAM` answers a map, read here so that every
/// protocol gets the same bulk string.
pub const EVENTS_TAIL: Script = Script {
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

/// `peek_events` — KEYS: producers, events stem. ARGV: since, count, then (producer,
/// cursor) pairs. Every registered producer's events after its cursor (or `since`), at
/// most `count` in all, as `[producer, entries]` pairs; nothing is acknowledged.
pub const PEEK_EVENTS: Script = Script {
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
pub const KEY_USAGE: Script = Script {
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

/// Every script, for preloading (SCRIPT LOAD) at connect.
pub const ALL: [&Script; 22] = [
    &TAIL_LOG,
    &READ,
    &KEY_USAGE,
    &PEEK_EVENTS,
    &EVENTS_TAIL,
    &ENQUEUE,
    &WORKERS,
    &DELAYED_JOB,
    &FIND_JOB,
    &REVIVE,
    &REGISTER,
    &DESTROY,
    &COMPLETE,
    &RETRY,
    &BURY,
    &PROMOTE,
    &RECLAIM,
    &HEARTBEAT,
    &STATS,
    &ACK_EVENTS,
    &CRED_SAVE,
    &CRED_GET,
];

/// Several blocking reads of idle readers merged into one command, so that one connection
/// blocks for all of them: `XREADGROUP GROUP workers <consumer> COUNT <min> BLOCK <ms>
/// STREAMS <jobs...> > ...` for worker reads that share a consumer name, or `XREAD COUNT <min>
/// BLOCK <ms> STREAMS <events...> <after...>` for events reads. `block_ms` is the merged
/// command's BLOCK (at least 1: 0 would block forever).
///
/// `None` if `reads` is empty, mixes kinds or consumers, names a stream twice, or holds
/// another kind of command. Redis answers with the streams that have entries (or nil);
/// [`crate::value::split_read`] gives each read its own reply.
#[must_use]
pub fn merged_read<'a>(reads: &[&'a CommandKind], block_ms: u64) -> Option<Invocation<'a>> {
    let first = reads.first()?;
    let mut streams: Vec<Arg<'a>> = Vec::with_capacity(reads.len());
    let mut ids: Vec<Arg<'a>> = Vec::with_capacity(reads.len());
    let mut count = u32::MAX;
    for read in reads {
        let (key, after, c) = match (first, read) {
            (
                CommandKind::Read { consumer: c0, .. },
                CommandKind::Read {
                    keys,
                    consumer,
                    count,
                    ..
                },
            ) if c0 == consumer => (&keys.jobs, b(">"), *count),
            (
                CommandKind::ReadEvents { .. },
                CommandKind::ReadEvents {
                    producer,
                    after,
                    count,
                    ..
                },
            ) => (&producer.events, id(*after), *count),
            _ => return None,
        };
        if streams.iter().any(|k| k.as_ref() == key.as_bytes()) {
            return None;
        }
        streams.push(b(key));
        ids.push(after);
        count = count.min(c);
    }
    let mut args = match first {
        CommandKind::Read { consumer, .. } => {
            vec![b("XREADGROUP"), b("GROUP"), b(GROUP), b(consumer)]
        }
        _ => vec![b("XREAD")],
    };
    args.extend([
        b("COUNT"),
        num(count.max(1)),
        b("BLOCK"),
        num(block_ms.max(1)),
        b("STREAMS"),
    ]);
    args.extend(streams);
    args.extend(ids);
    Some(Invocation::Plain(args))
}

/// What follows a merged read of workers ([`merged_read`]) that took entries, once its reply
/// came ([`crate::mux::MuxCommand::Check`]): `EXISTS` of each read's queue's pause, in the
/// reads' order, in one transaction (its reply: EXEC's array), so that a read that took
/// entries after a pause always learns of it. `None` for events reads (and an empty list).
#[must_use]
pub fn pause_check<'a>(reads: &[&'a CommandKind]) -> Option<Invocation<'a>> {
    let mut cmds = Vec::with_capacity(reads.len());
    for read in reads {
        match read {
            CommandKind::Read { keys, .. } => cmds.push(vec![b("EXISTS"), b(&keys.paused)]),
            _ => return None,
        }
    }
    (!cmds.is_empty()).then_some(Invocation::Transaction(cmds))
}

fn b(s: &str) -> Arg<'_> {
    Cow::Borrowed(s.as_bytes())
}

fn num(n: impl ToString) -> Arg<'static> {
    Cow::Owned(n.to_string().into_bytes())
}

fn id(e: EntryId) -> Arg<'static> {
    num(e)
}

/// `MINID` threshold: entries with ids below `<ms>-0` are trimmed.
fn min_id(ms: u64) -> Arg<'static> {
    num(EntryId::new(ms, 0))
}

fn settle_args<'a>(items: &'a [Settle], out: &mut Vec<Arg<'a>>, fields: &[SettleField]) {
    for item in items {
        for f in fields {
            out.push(match f {
                SettleField::Entry => id(item.entry),
                SettleField::Job => b(item.job.as_deref().unwrap_or_default()),
                SettleField::Value => Cow::Borrowed(&item.value[..]),
                SettleField::Attempt => num(item.attempt),
                SettleField::Due => num(item.due_ms),
                SettleField::JobEnvelope => Cow::Borrowed(&item.job_envelope[..]),
                SettleField::Instance => match item.instance {
                    Some(i) => Cow::Owned(i.to_hex().into_bytes()),
                    None => Cow::Borrowed(&b""[..]),
                },
            });
        }
    }
}

enum SettleField {
    Entry,
    Job,
    Value,
    Attempt,
    Due,
    JobEnvelope,
    Instance,
}

/// The Redis invocation of `kind`.
#[must_use]
pub fn invocation(kind: &CommandKind) -> Invocation<'_> {
    match kind {
        CommandKind::EnsureGroup { keys } => Invocation::Plain(vec![
            b("XGROUP"),
            b("CREATE"),
            b(&keys.jobs),
            b(GROUP),
            b("0"),
            b("MKSTREAM"),
        ]),
        CommandKind::Enqueue {
            keys,
            now_ms,
            marker,
            jobs,
            fresh,
        } => enqueue_invocation(keys, *now_ms, marker, jobs, *fresh),
        // Alone, a read never blocks: blocking reads go through the mux (`merged_read`,
        // then `pause_check`).
        CommandKind::Read {
            keys,
            consumer,
            count,
            ..
        } => script(
            &READ,
            &[&keys.jobs, &keys.paused],
            vec![b(consumer), num(count)],
        ),
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
        CommandKind::SetPaused {
            keys,
            paused,
            now_ms,
        } => {
            if *paused {
                Invocation::Plain(vec![b("HSET"), b(&keys.paused), b("at"), num(now_ms)])
            } else {
                Invocation::Plain(vec![b("DEL"), b(&keys.paused)])
            }
        }
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
        CommandKind::Promote {
            keys,
            now_ms,
            limit,
        } => {
            let k = [&keys.jobs, &keys.ids, &keys.delayed, &keys.payloads];
            script(&PROMOTE, &k, vec![num(now_ms), num(limit)])
        }
        CommandKind::Reclaim { .. } => reclaim_invocation(kind),
        CommandKind::Heartbeat {
            keys,
            consumer,
            idle_ms,
            entries,
        } => {
            let mut args = vec![b(consumer), num(idle_ms)];
            args.extend(entries.iter().map(|e| id(*e)));
            script(&HEARTBEAT, &[&keys.jobs], args)
        }
        CommandKind::ReadEvents { .. }
        | CommandKind::AckEvents { .. }
        | CommandKind::EventsTail { .. }
        | CommandKind::PeekEvents { .. }
        | CommandKind::KeyUsage { .. }
        | CommandKind::Stats { .. }
        | CommandKind::Register { .. }
        | CommandKind::Destroy { .. }
        | CommandKind::ReadDead { .. }
        | CommandKind::Revive { .. }
        | CommandKind::DelayedJob { .. }
        | CommandKind::Workers { .. }
        | CommandKind::FindJob { .. }
        | CommandKind::DeleteDead { .. } => producer_invocation(kind),
        CommandKind::Ping => Invocation::Plain(vec![b("PING")]),
    }
}

/// The invocations of the producer's commands: its events, its registration, stats, the
/// queue's destruction; the operator's requests go on to [`operator_invocation`].
fn producer_invocation(kind: &CommandKind) -> Invocation<'_> {
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
        } => {
            let threshold = through.map(|t| id(t.next().unwrap_or(t)));
            let mut args = Vec::with_capacity(3 + forget.len());
            args.push(threshold.unwrap_or(Cow::Borrowed(b"")));
            args.extend([b(&producer.id), b(token)]);
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
        _ => operator_invocation(kind),
    }
}

/// The invocations of the operator's requests (dead letters, one job, the workers, the
/// outcomes owed to producers away, key-id usage).
fn operator_invocation(kind: &CommandKind) -> Invocation<'_> {
    match kind {
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
        _ => unreachable!("called for the producer's commands only"),
    }
}

/// Script `complete` for a batch.
fn complete_invocation<'a>(
    keys: &'a QueueKeys,
    min_event_ms: u64,
    consumer: &'a str,
    items: &'a [Settle],
) -> Invocation<'a> {
    use SettleField as F;
    let head = vec![min_id(min_event_ms), b(consumer)];
    let fields = [F::Entry, F::Job, F::Value, F::Attempt, F::Instance];
    let keys = [
        &keys.jobs,
        &keys.ids,
        &keys.events,
        &keys.producers,
        &keys.log,
    ];
    settle_invocation(&COMPLETE, &keys, head, items, &fields)
}

/// Script `retry` for a batch, at `now_ms`, trimming events below `min_event_ms`.
fn retry_invocation<'a>(
    keys: &'a QueueKeys,
    (now_ms, min_event_ms): (u64, u64),
    consumer: &'a str,
    items: &'a [Settle],
) -> Invocation<'a> {
    use SettleField as F;
    let head = vec![num(now_ms), min_id(min_event_ms), b(consumer)];
    let fields = [
        F::Entry,
        F::Job,
        F::Value,
        F::Attempt,
        F::Due,
        F::JobEnvelope,
        F::Instance,
    ];
    let k = [
        &keys.jobs,
        &keys.delayed,
        &keys.payloads,
        &keys.events,
        &keys.producers,
        &keys.ids,
        &keys.log,
    ];
    settle_invocation(&RETRY, &k, head, items, &fields)
}

/// Script `bury` for a batch, trimming events below `min_event_ms` and dead letters below
/// `min_dead_ms`.
fn bury_invocation<'a>(
    keys: &'a QueueKeys,
    (min_event_ms, min_dead_ms): (u64, u64),
    consumer: &'a str,
    items: &'a [Settle],
) -> Invocation<'a> {
    use SettleField as F;
    let head = vec![min_id(min_event_ms), b(consumer), min_id(min_dead_ms)];
    let fields = [
        F::Entry,
        F::Job,
        F::Value,
        F::Attempt,
        F::JobEnvelope,
        F::Instance,
    ];
    let k = [
        &keys.jobs,
        &keys.ids,
        &keys.dead,
        &keys.events,
        &keys.producers,
        &keys.log,
    ];
    settle_invocation(&BURY, &k, head, items, &fields)
}

/// A settle script's invocation: its own leading ARGV (`head`), then the batch's lowest and
/// highest entry (for the one XPENDING of `held_prelude!`), then `fields` of every item.
fn settle_invocation<'a>(
    which: &'static Script,
    keys: &[&'a String],
    mut head: Vec<Arg<'a>>,
    items: &'a [Settle],
    fields: &[SettleField],
) -> Invocation<'a> {
    let lo = items.iter().map(|i| i.entry).min().unwrap_or(EntryId::ZERO);
    let hi = items.iter().map(|i| i.entry).max().unwrap_or(EntryId::ZERO);
    head.reserve(2 + fields.len() * items.len());
    head.extend([id(lo), id(hi)]);
    settle_args(items, &mut head, fields);
    script(which, keys, head)
}

/// A script's invocation with these keys.
fn script<'a>(script: &'static Script, keys: &[&'a String], args: Vec<Arg<'a>>) -> Invocation<'a> {
    Invocation::Script {
        script,
        keys: keys.iter().map(|k| b(k)).collect(),
        args,
    }
}

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
        return Invocation::Transaction(cmds);
    }
    let mut args = Vec::with_capacity(2 + 3 * jobs.len());
    args.push(num(now_ms));
    args.push(b(marker));
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
    ];
    script(&ENQUEUE, &k, args)
}

/// The reclaim script's invocation (`invocation` is one match; its longest arm lives here).
fn reclaim_invocation(kind: &CommandKind) -> Invocation<'_> {
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
        unreachable!("called for reclaims only")
    };
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn read(queue: &str, consumer: &str, count: u32) -> CommandKind {
        CommandKind::Read {
            keys: Arc::new(QueueKeys::new("dl", queue).unwrap()),
            consumer: consumer.into(),
            count,
            block_ms: Some(5_000),
        }
    }

    #[test]
    fn settle_scripts_trim_with_the_documented_window() {
        let line = format!("local far = tonumber(fms) + {TRIM_WINDOW_MS}");
        for script in [&COMPLETE, &RETRY, &BURY] {
            assert!(script.source.contains(&line), "{}", script.name);
            assert!(script.source.trim_end().ends_with("return out"));
        }
    }

    fn events(queue: &str, after: EntryId) -> CommandKind {
        let keys = Arc::new(QueueKeys::new("dl", queue).unwrap());
        CommandKind::ReadEvents {
            producer: Arc::new(crate::naming::ProducerKeys::new(&keys, "p").unwrap()),
            keys,
            after,
            count: 100,
            block_ms: Some(5_000),
        }
    }

    fn words(inv: Option<Invocation<'_>>) -> Option<String> {
        match inv? {
            Invocation::Plain(args) => Some(
                args.iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Invocation::Script { .. } | Invocation::Transaction(_) => None,
        }
    }

    #[test]
    fn merged_reads() {
        let (a, b) = (read("a", "p1", 8), read("b", "p1", 3));
        assert_eq!(
            words(merged_read(&[&a, &b], 5_000)).as_deref(),
            Some(
                "XREADGROUP GROUP workers p1 COUNT 3 BLOCK 5000 STREAMS dl:{a}:jobs dl:{b}:jobs > >"
            )
        );
        let (e1, e2) = (
            events("a", EntryId::new(5, 1)),
            events("b", EntryId::default()),
        );
        assert_eq!(
            words(merged_read(&[&e1, &e2], 0)).as_deref(),
            Some("XREAD COUNT 100 BLOCK 1 STREAMS dl:{a}:events:p dl:{b}:events:p 5-1 0-0")
        );
        // What cannot be merged.
        assert_eq!(words(merged_read(&[], 10)), None);
        assert_eq!(words(merged_read(&[&a, &read("b", "p2", 1)], 10)), None);
        assert_eq!(words(merged_read(&[&a, &read("a", "p1", 1)], 10)), None);
        assert_eq!(words(merged_read(&[&a, &e1], 10)), None);
        assert_eq!(
            words(merged_read(&[&e1, &events("a", EntryId::new(9, 0))], 10)),
            None
        );
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;
    use crate::naming::hash_slot;
    use std::sync::Arc;

    /// Every kind's invocation goes to its queue's slot; keyless ones to none.
    #[test]
    fn every_invocation_routes_by_its_queues_slot() {
        let keys = Arc::new(QueueKeys::new("dl", "irc").unwrap());
        let slot = hash_slot(keys.jobs.as_bytes());
        let kinds = [
            CommandKind::EnsureGroup { keys: keys.clone() },
            CommandKind::Read {
                keys: keys.clone(),
                consumer: "c".into(),
                count: 1,
                block_ms: Some(5),
            },
            CommandKind::Enqueue {
                keys: keys.clone(),
                now_ms: 1,
                marker: "w".into(),
                jobs: vec![crate::command::NewJob {
                    id: "j".into(),
                    due_ms: None,
                    envelope: Arc::from(&b"x"[..]),
                }],
                fresh: true,
            },
            CommandKind::Enqueue {
                keys: keys.clone(),
                now_ms: 1,
                marker: "w".into(),
                jobs: vec![],
                fresh: false,
            },
            CommandKind::ReadDead {
                keys: keys.clone(),
                after: EntryId::default(),
                count: 3,
            },
            CommandKind::Workers { keys: keys.clone() },
            CommandKind::KeyUsage {
                keys: keys.clone(),
                source: crate::producer::EnvelopeSource::Delayed,
                after: EntryId::ZERO,
                offset: 0,
                count: 1,
            },
            CommandKind::PeekEvents {
                keys: keys.clone(),
                since: EntryId::ZERO,
                cursors: vec![("p".into(), EntryId::ZERO)],
                count: 10,
            },
            CommandKind::Destroy { keys },
        ];
        for kind in &kinds {
            assert_eq!(invocation(kind).slot(), Some(slot), "{kind:?}");
        }
        assert_eq!(invocation(&CommandKind::Ping).slot(), None);
    }
}
