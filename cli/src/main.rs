//! `datalayer`: an operator's command line for datalayer queues on Redis.
//!
//! ```text
//! datalayer [--url URL] [--prefix P] [--json] [--secret-file PATH] [--key-id N] COMMAND
//!   health [--timeout-ms N]       reachability, version, eviction policy, persistence
//!   queues                        the queues under the prefix (SCAN, never KEYS)
//!   stats QUEUE [--watch [--interval-ms N] [--times N]]
//!                                 counts, live workers, oldest waiting/running ages
//!   workers QUEUE                 live workers, and when each promised to be back
//!   pause QUEUE | resume QUEUE    held in Redis, for every producer and worker of the queue
//!   job show QUEUE ID             where a job is: waiting, running (where), delayed, dead
//!   job run-now QUEUE ID          a delayed job to the work stream at once
//!   dead ls QUEUE [--count N] [--after ENTRY]
//!   dead show QUEUE ENTRY         one letter: job, attempt, age; with the secret its session,
//!                                 title, payload and reason
//!   keys QUEUE                    envelopes by the key id that sealed them (rotation
//!                                 progress: jobs, delayed jobs, dead letters)
//!   events ls QUEUE [--watch [--interval-ms N] [--times N]]
//!                                 outcomes not yet read by their producer (job, kind,
//!                                 attempt, producer; a failure's reason with the secret)
//!   events tail QUEUE [--interval-ms N] [--times N]
//!                                 every outcome as it is written (job, kind, attempt,
//!                                 producer), from the queue's outcome log
//!   dead retry QUEUE (--all | --older-than SECONDS | ENTRY...) [--dry-run] [--progress]
//!   dead delete QUEUE (--all | ENTRY...) [--dry-run] [--progress]
//!                                 a progress bar on stderr when it is a terminal (or with
//!                                 --progress) for --all and --older-than
//!   credentials count [--session-prefix P]
//!                                 credentials stores (sessions) under the prefix
//!   credentials purge --session-prefix P [--dry-run]
//!                                 delete the stores of sessions starting with P
//!   secret gen                    32 random bytes, hex (for DATALAYER_SECRET)
//!   serve [--listen ADDR] [--interval-ms N]
//!                                 Prometheus metrics of every queue at /metrics
//! ```
//!
//! The URL comes from `--url`, else `REDIS_URL`, else `redis://127.0.0.1:6379`. The server
//! secret (to open dead letters and to re-seal retried jobs) comes from `--secret-file` or
//! the `DATALAYER_SECRET` environment variable, never from a flag's value; counts, ids and
//! ages need none. Output is a table, or one JSON document (`--json`; `dead ls` prints one
//! JSON object per line). Exit codes: 0 done (healthy), 1 failed (unhealthy, unreachable,
//! refused), 2 risky (`health`: a setting that can lose jobs), 64 usage.

use std::process::ExitCode;
use std::time::Duration;

use datalayer_tokio::core::keys::{KeyId, Secret, SecretRing};
use datalayer_tokio::core::time::millis;
use datalayer_tokio::core::value::EntryId;
use datalayer_tokio::{
    DataLayer, DeadLetter, EventsCursor, JobQueue, Options, PeekedEvent, QueueOptions, now,
};
use serde_json::{Value, json};

const USAGE: &str = "usage: datalayer [--url URL] [--prefix P] [--json] [--secret-file PATH] \
[--key-id N] COMMAND
  health [--timeout-ms N]
  queues
  stats QUEUE [--watch [--interval-ms N] [--times N]]
  workers QUEUE
  pause QUEUE
  resume QUEUE
  job show QUEUE ID
  job run-now QUEUE ID
  dead ls QUEUE [--count N] [--after ENTRY]
  dead show QUEUE ENTRY
  keys QUEUE
  events ls QUEUE [--watch [--interval-ms N] [--times N]]
  events tail QUEUE [--interval-ms N] [--times N]
  dead retry QUEUE (--all | --older-than SECONDS | ENTRY...) [--dry-run] [--progress]
  dead delete QUEUE (--all | ENTRY...) [--dry-run] [--progress]
  credentials count [--session-prefix P]
  credentials purge --session-prefix P [--dry-run]
  secret gen
  serve [--listen 127.0.0.1:9187] [--interval-ms 15000]
The secret comes from --secret-file or DATALAYER_SECRET (hex or base64 of 32 random bytes).
Exit: 0 ok, 1 failed or unhealthy, 2 risky, 64 usage.";

/// A failure and the exit code it maps to.
struct Failure(u8, String);

/// The wall clock in ms since the epoch (the unit of stream ids and of the JSON output).
fn now_ms() -> u64 {
    now().unix_ms()
}

/// The instant `ms` after the epoch.
fn instant(ms: u64) -> datalayer_tokio::core::time::Instant {
    datalayer_tokio::core::time::Instant::from_unix_ms(ms)
}

fn usage(why: &str) -> Failure {
    Failure(64, format!("{why}\n{USAGE}"))
}

fn failed(e: impl std::fmt::Display) -> Failure {
    Failure(1, e.to_string())
}

#[derive(Default)]
struct Args {
    url: Option<String>,
    prefix: Option<String>,
    json: bool,
    secret_file: Option<String>,
    key_id: u32,
    dry_run: bool,
    progress: bool,
    all: bool,
    count: u32,
    after: Option<EntryId>,
    older_than: Option<u64>,
    timeout_ms: u64,
    watch_ms: Option<u64>,
    watch_count: Option<u64>,
    listen: Option<String>,
    session_prefix: Option<String>,
    words: Vec<String>,
}

fn parse(argv: impl Iterator<Item = String>) -> Result<Args, Failure> {
    let mut a = Args {
        key_id: 1,
        count: 20,
        timeout_ms: 2_000,
        ..Args::default()
    };
    let mut it = argv;
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| usage(&format!("{name} needs a value")))
        };
        let number = |v: String, name: &str| {
            v.parse::<u64>()
                .map_err(|_| usage(&format!("{name} needs a number, got {v:?}")))
        };
        match arg.as_str() {
            "--url" => a.url = Some(value("--url")?),
            "--prefix" => a.prefix = Some(value("--prefix")?),
            "--json" => a.json = true,
            "--secret-file" => a.secret_file = Some(value("--secret-file")?),
            "--key-id" => {
                let n = number(value("--key-id")?, "--key-id")?;
                a.key_id = u32::try_from(n).map_err(|_| usage("--key-id is too large"))?;
            }
            "--dry-run" => a.dry_run = true,
            "--progress" => a.progress = true,
            "--listen" => a.listen = Some(value("--listen")?),
            "--session-prefix" => a.session_prefix = Some(value("--session-prefix")?),
            "--all" => a.all = true,
            "--count" => {
                let n = number(value("--count")?, "--count")?;
                a.count = u32::try_from(n.clamp(1, 10_000)).unwrap_or(10_000);
            }
            "--after" => {
                let v = value("--after")?;
                a.after = Some(entry(&v)?);
            }
            "--older-than" => a.older_than = Some(number(value("--older-than")?, "--older-than")?),
            "--timeout-ms" => a.timeout_ms = number(value("--timeout-ms")?, "--timeout-ms")?,
            "--watch" => a.watch_ms = Some(a.watch_ms.unwrap_or(2_000)),
            "--interval-ms" => {
                a.watch_ms = Some(number(value("--interval-ms")?, "--interval-ms")?.max(10));
            }
            "--times" => a.watch_count = Some(number(value("--times")?, "--times")?),
            "--secret" => {
                return Err(usage(
                    "secrets are never given as a flag's value (they would show in `ps` and \
                     shell history): use --secret-file or DATALAYER_SECRET",
                ));
            }
            "-h" | "--help" => return Err(Failure(0, USAGE.to_owned())),
            s if s.starts_with("--") => return Err(usage(&format!("unknown option {s}"))),
            _ => a.words.push(arg),
        }
    }
    Ok(a)
}

fn entry(text: &str) -> Result<EntryId, Failure> {
    EntryId::parse(text.as_bytes()).map_err(|_| usage(&format!("{text:?} is not an entry id")))
}

/// The server secret, if one is given (file first, then the environment).
fn secrets(a: &Args) -> Result<Option<SecretRing>, Failure> {
    let text = match &a.secret_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| failed(format!("secret file {path}: {e}")))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        ),
        None => std::env::var("DATALAYER_SECRET").ok(),
    };
    let Some(text) = text else { return Ok(None) };
    let secret = Secret::from_text(&text).map_err(|e| failed(format!("secret: {e}")))?;
    Ok(Some(SecretRing::new(KeyId(a.key_id), secret)))
}

/// A ring that opens nothing (counts, ids and ages need no secret).
fn no_secret() -> SecretRing {
    let mut bytes = [0u8; 32];
    getrandom_fill(&mut bytes);
    SecretRing::new(KeyId(u32::MAX), Secret::from_bytes(bytes))
}

fn getrandom_fill(bytes: &mut [u8]) {
    use datalayer_tokio::core::random::Random;
    datalayer_tokio::OsRandom.fill_bytes(bytes);
}

async fn connect(a: &Args) -> Result<DataLayer, Failure> {
    let url = a
        .url
        .clone()
        .or_else(|| std::env::var("REDIS_URL").ok())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let mut options = Options::default();
    if let Some(p) = &a.prefix {
        options = options.prefix(p.clone());
    }
    DataLayer::connect(&url, options).await.map_err(failed)
}

/// The queue as the tool sees it: it reads no outcomes (and so registers no producer).
fn queue(dl: &DataLayer, name: &str, ring: &SecretRing) -> Result<JobQueue, Failure> {
    let options = QueueOptions::default()
        .read_results(false)
        .when_unreachable(datalayer_tokio::Unreachable::FailFast);
    dl.queue(name, ring, options).map_err(failed)
}

fn letter_json(l: &DeadLetter, now: u64) -> Value {
    json!({
        "entry": l.entry.to_string(),
        "job": l.job.as_ref().map(|j| j.0.clone()),
        "attempt": l.attempt,
        "age_ms": millis(l.age(instant(now))),
        "session": l.record.as_ref().ok().map(|r| r.session_id.clone()),
        "title": l.record.as_ref().ok().map(|r| r.title.clone()),
        "payload": l.record.as_ref().ok().map(|r| String::from_utf8_lossy(&r.payload).into_owned()),
        "reason": l.reason.as_ref().ok(),
        "sealed": l.record.as_ref().err(),
    })
}

async fn run(a: Args) -> Result<u8, Failure> {
    let words: Vec<&str> = a.words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["secret", "gen"] => {
            let mut bytes = [0u8; 32];
            getrandom_fill(&mut bytes);
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            println!("{hex}");
            Ok(0)
        }
        ["health"] => health(&a).await,
        ["serve"] => serve(&a).await,
        ["queues"] => {
            let dl = connect(&a).await?;
            let names = dl.queues().await.map_err(failed)?;
            if a.json {
                println!("{}", json!(names));
            } else {
                for n in &names {
                    println!("{n}");
                }
            }
            Ok(0)
        }
        ["stats", name] => {
            let dl = connect(&a).await?;
            let q = queue(&dl, name, &no_secret())?;
            let mut shown = 0u64;
            loop {
                stats(&a, &q, name).await?;
                shown += 1;
                let Some(every) = a.watch_ms else { break };
                if a.watch_count.is_some_and(|n| shown >= n) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(every)).await;
            }
            Ok(0)
        }
        ["job", "show", name, id] => {
            let dl = connect(&a).await?;
            let q = queue(&dl, name, &no_secret())?;
            let job = datalayer_tokio::core::job::JobId::from(*id);
            let p = q.find_job(&job).await.map_err(failed)?;
            let v = json!({
                "job": id,
                "state": p.state(),
                "producer": p.marker,
                "delayed_until": p.delayed_until,
                "running": p.running.as_ref().map(|(e, c, n)| json!({
                    "entry": e.to_string(), "consumer": c, "deliveries": n,
                })),
                "waiting": p.waiting.map(|e| e.to_string()),
                "dead": p.dead.map(|(e, a)| json!({ "entry": e.to_string(), "attempt": a })),
            });
            if a.json {
                println!("{v}");
            } else {
                println!("job    {id}");
                println!("state  {}", p.state());
                if let Some((e, c, n)) = &p.running {
                    println!("running  entry {e} on {c}, delivered {n} times");
                }
                if let Some(e) = p.waiting {
                    println!("waiting  entry {e}");
                }
                if let Some(t) = p.delayed_until {
                    let secs = t.saturating_sub(now_ms()) as f64 / 1000.0;
                    println!("delayed  due in {secs:.1} s");
                }
                if let Some((e, at)) = p.dead {
                    let at = at.map_or("?".into(), |n| n.to_string());
                    println!("dead     entry {e}, last attempt {at}");
                }
            }
            Ok(if p.state() == "unknown" { 1 } else { 0 })
        }
        [verb @ ("pause" | "resume"), name] => {
            let dl = connect(&a).await?;
            let q = queue(&dl, name, &no_secret())?;
            let paused = *verb == "pause";
            let done = async {
                if paused {
                    q.pause().await
                } else {
                    q.resume().await
                }
            };
            tokio::time::timeout(Duration::from_millis(a.timeout_ms.max(1_000)), done)
                .await
                .map_err(|_| failed("redis did not answer in time"))?
                .map_err(failed)?;
            if a.json {
                println!("{}", json!({ "queue": name, "paused": paused }));
            } else if paused {
                println!("{name} paused: adds are refused and no worker starts a job");
            } else {
                println!("{name} resumed");
            }
            Ok(0)
        }
        ["workers", name] => {
            let dl = connect(&a).await?;
            let q = queue(&dl, name, &no_secret())?;
            let workers = q.workers().await.map_err(failed)?;
            let now = now_ms();
            if a.json {
                let v: Vec<Value> = workers
                    .iter()
                    .map(|(w, at)| json!({ "consumer": w, "back_by_ms": at, "live": *at >= now }))
                    .collect();
                println!("{}", json!(v));
            } else {
                for (w, at) in &workers {
                    let secs = (*at as f64 - now as f64) / 1000.0;
                    println!("{w}  back within {secs:.1} s");
                }
                println!("{} workers", workers.len());
            }
            Ok(0)
        }
        ["job", "run-now", name, id] => {
            let dl = connect(&a).await?;
            let q = queue(&dl, name, &no_secret())?;
            let job = datalayer_tokio::core::job::JobId::from(*id);
            let moved = q.run_now(&job).await.map_err(failed)?;
            if a.json {
                println!("{}", json!({ "job": id, "run_now": moved }));
            } else if moved {
                println!("{id}: in the work stream now");
            } else {
                println!("{id}: not delayed");
            }
            Ok(if moved { 0 } else { 1 })
        }
        ["events", "ls", name] => events_ls(&a, name).await,
        ["events", "tail", name] => events_tail(&a, name).await,
        ["credentials", "count"] => {
            let dl = connect(&a).await?;
            let n = dl
                .count_credentials(a.session_prefix.as_deref())
                .await
                .map_err(failed)?;
            if a.json {
                println!(
                    "{}",
                    json!({ "stores": n, "session_prefix": a.session_prefix })
                );
            } else {
                println!("{n} credentials stores");
            }
            Ok(0)
        }
        ["credentials", "purge"] => {
            // Never every store by accident: a session prefix is required.
            let Some(prefix) = a.session_prefix.as_deref().filter(|p| !p.is_empty()) else {
                return Err(usage(
                    "credentials purge needs --session-prefix P (not empty)",
                ));
            };
            let dl = connect(&a).await?;
            let (verb, n) = if a.dry_run {
                let n = dl.count_credentials(Some(prefix)).await.map_err(failed)?;
                if !a.json {
                    // What a purge sends, as the core builds it.
                    let pattern = datalayer_tokio::core::naming::credentials_pattern(
                        a.prefix.as_deref().unwrap_or("dl"),
                        prefix,
                    )
                    .map_err(failed)?;
                    let scan = datalayer_tokio::core::credentials::scan(&pattern, b"0", 1000);
                    println!(
                        "would send: {} (to the end, on every primary), then DEL of each \
                         store found, 1,000 to a pipeline",
                        scan.describe()
                    );
                }
                ("would delete", n)
            } else {
                let n = dl.purge_credentials(prefix).await.map_err(failed)?;
                ("deleted", n)
            };
            if a.json {
                println!("{}", json!({ "action": verb, "stores": n }));
            } else {
                println!("{verb} {n} credentials stores");
            }
            Ok(0)
        }
        ["keys", name] => {
            let dl = connect(&a).await?;
            let q = queue(&dl, name, &no_secret())?;
            let usage = q.key_usage().await.map_err(failed)?;
            if a.json {
                let rows: Vec<Value> = usage
                    .iter()
                    .map(|((source, key), n)| {
                        json!({ "source": source.as_str(), "key_id": key.map(|k| k.0), "envelopes": n })
                    })
                    .collect();
                println!("{}", json!(rows));
            } else if usage.is_empty() {
                println!("no envelopes");
            } else {
                for ((source, key), n) in &usage {
                    let key = key.map_or("not an envelope".to_owned(), |k| format!("key {}", k.0));
                    println!("{:<8} {key:<16} {n}", source.as_str());
                }
            }
            Ok(0)
        }
        ["dead", "ls", name] => {
            let ring = secrets(&a)?.unwrap_or_else(no_secret);
            let dl = connect(&a).await?;
            let q = queue(&dl, name, &ring)?;
            let page = q.dead_letters(a.after, a.count).await.map_err(failed)?;
            let now = now_ms();
            for l in &page.letters {
                if a.json {
                    println!("{}", letter_json(l, now));
                } else {
                    let job = l.job.as_ref().map_or("-".to_owned(), |j| j.0.clone());
                    let why = match (&l.reason, &l.record) {
                        (Ok(r), _) => r.clone(),
                        (Err(_), Err(e)) => format!("(sealed: {e})"),
                        (Err(e), Ok(_)) => format!("(reason sealed: {e})"),
                    };
                    let attempt = l.attempt.map_or("-".into(), |n| n.to_string());
                    let age = millis(l.age(instant(now))) / 1000;
                    println!("{}  {job}  attempt {attempt}  {age} s ago  {why}", l.entry);
                }
            }
            if !a.json {
                match page.next {
                    Some(next) => println!("more: --after {next}"),
                    None => println!("{} dead letters shown; no more", page.letters.len()),
                }
            }
            Ok(0)
        }
        ["dead", "show", name, at] => {
            let at = entry(at)?;
            let ring = secrets(&a)?.unwrap_or_else(no_secret);
            let dl = connect(&a).await?;
            let q = queue(&dl, name, &ring)?;
            // The page after the entry just before it: the letter itself, if it is there.
            let before = if at.seq > 0 {
                EntryId::new(at.ms, at.seq - 1)
            } else {
                EntryId::new(at.ms.saturating_sub(1), u64::MAX)
            };
            let page = q.dead_letters(Some(before), 1).await.map_err(failed)?;
            let Some(l) = page.letters.into_iter().find(|l| l.entry == at) else {
                return Err(failed(format!("no dead letter {at} in {name}")));
            };
            let now = now_ms();
            if a.json {
                println!("{}", letter_json(&l, now));
                return Ok(0);
            }
            let or_dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
            println!("entry     {}", l.entry);
            println!("job       {}", or_dash(l.job.as_ref().map(|j| j.0.clone())));
            println!("attempt   {}", or_dash(l.attempt.map(|n| n.to_string())));
            println!(
                "dead for  {:.1} s",
                millis(l.age(instant(now))) as f64 / 1000.0
            );
            match (&l.record, &l.reason) {
                (Ok(r), reason) => {
                    println!("session   {}", r.session_id);
                    println!("title     {}", r.title);
                    println!("payload   {}", String::from_utf8_lossy(&r.payload));
                    match reason {
                        Ok(why) => println!("reason    {why}"),
                        Err(e) => println!("reason    (sealed: {e})"),
                    }
                }
                (Err(e), _) => println!("sealed    {e} (give the secret to open it)"),
            }
            Ok(0)
        }
        ["dead", verb @ ("retry" | "delete"), name, entries @ ..] => {
            let retry = *verb == "retry";
            let picked: Vec<EntryId> =
                entries.iter().map(|e| entry(e)).collect::<Result<_, _>>()?;
            if picked.is_empty() && !a.all && (a.older_than.is_none() || !retry) {
                return Err(usage(
                    "name entries, or --all (retry: or --older-than SECONDS)",
                ));
            }
            let ring = match secrets(&a)? {
                Some(ring) => ring,
                None if retry => {
                    return Err(failed(
                        "retrying re-seals the jobs: give the secret (--secret-file or \
                         DATALAYER_SECRET)",
                    ));
                }
                None => no_secret(),
            };
            let dl = connect(&a).await?;
            let q = queue(&dl, name, &ring)?;
            dead_batch(&a, &q, retry, &picked).await
        }
        [] => Err(usage("no command")),
        _ => Err(usage(&format!("unknown command {:?}", a.words.join(" ")))),
    }
}

/// One `stats` report of queue `name`.
/// Prints the outcomes that wait in the producers' events streams (a producer reads and
/// trims its own at once: what is listed is owed to producers that are away); with
/// `--watch`, then the new ones, every interval. Results are never opened; a failure's
/// reason only with the secret.
async fn events_ls(a: &Args, name: &str) -> Result<u8, Failure> {
    let ring = secrets(a)?.unwrap_or_else(no_secret);
    let dl = connect(a).await?;
    let q = queue(&dl, name, &ring)?;
    let mut cursor = EventsCursor::new(EntryId::ZERO);
    let mut polls = 0u64;
    loop {
        // A page at a time: a backlog drains without waiting between pages.
        loop {
            let events = q.peek_events(&mut cursor, 1_000).await.map_err(failed)?;
            for e in &events {
                print_event(a, e);
            }
            if events.len() < 1_000 {
                break;
            }
        }
        polls += 1;
        let Some(every) = a.watch_ms else {
            return Ok(0);
        };
        if a.watch_count.is_some_and(|n| polls >= n) {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(every)).await;
    }
}

/// `events tail`: every outcome as the settles write it (the queue's outcome log, opened
/// by the first read and kept while this tails), every `--interval-ms` (250 ms), until
/// `--times` reads or forever. Plain fields only; no secret needed.
async fn events_tail(a: &Args, name: &str) -> Result<u8, Failure> {
    let dl = connect(a).await?;
    let q = queue(&dl, name, &no_secret())?;
    let every = Duration::from_millis(a.watch_ms.unwrap_or(250));
    // Long enough to outlive a slow read; short enough to stop the writes soon after.
    let keep = (every * 4).max(Duration::from_secs(10));
    let mut after = None;
    let mut polls = 0u64;
    loop {
        loop {
            let (events, last) = q.tail_outcomes(after, 1_000, keep).await.map_err(failed)?;
            after = last;
            for e in &events {
                print_event(a, e);
            }
            if events.len() < 1_000 {
                break;
            }
        }
        polls += 1;
        if a.watch_count.is_some_and(|n| polls >= n) {
            return Ok(0);
        }
        tokio::time::sleep(every).await;
    }
}

fn print_event(a: &Args, e: &PeekedEvent) {
    let job = e.job.as_ref().map_or("-", |j| j.0.as_str());
    if a.json {
        let mut v = json!({
            "entry": e.entry.to_string(), "at_ms": e.entry.ms, "producer": e.producer,
            "job": e.job.as_ref().map(|j| j.0.clone()), "kind": e.kind.as_str(),
            "attempt": e.attempt, "sealed_bytes": e.sealed_len,
        });
        if let Some(r) = &e.reason {
            v["reason"] = json!(r);
        }
        println!("{v}");
    } else {
        let attempt = e.attempt.map_or("-".into(), |n| n.to_string());
        let why = e
            .reason
            .as_deref()
            .map(|r| format!("  {r}"))
            .unwrap_or_default();
        let sealed = if e.sealed_len > 0 {
            format!("  ({} sealed bytes)", e.sealed_len)
        } else {
            String::new()
        };
        println!(
            "{}  {}  {job}  {}  attempt {attempt}{sealed}{why}",
            e.entry,
            e.producer,
            e.kind.as_str(),
        );
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

async fn stats(a: &Args, q: &JobQueue, name: &str) -> Result<(), Failure> {
    let s = tokio::time::timeout(Duration::from_millis(a.timeout_ms), q.stats())
        .await
        .map_err(|_| failed("redis did not answer in time"))?
        .map_err(failed)?;
    let now = now_ms();
    if a.json {
        let v = json!({
            "queue": name, "jobs": s.jobs, "running": s.pending,
            "waiting": s.jobs.saturating_sub(s.pending), "delayed": s.delayed,
            "dead": s.dead, "workers": s.workers,
            "oldest_waiting_ms": s.oldest_waiting.map(|_| millis(s.oldest_waiting_age(instant(now)))),
            "oldest_running_ms": s.oldest_running.map(|_| millis(s.oldest_running_age(instant(now)))),
            "paused": s.paused_at.is_some(),
            "paused_for_ms": s.paused_at.map(|at| now.saturating_sub(at)),
        });
        println!("{v}");
    } else {
        println!("queue     {name}");
        if let Some(at) = s.paused_at {
            let secs = now.saturating_sub(at) as f64 / 1000.0;
            println!("paused    for {secs:.1} s (no worker starts a job)");
        }
        println!("waiting   {}", s.jobs.saturating_sub(s.pending));
        println!("running   {}", s.pending);
        println!("delayed   {}", s.delayed);
        println!("dead      {}", s.dead);
        println!("workers   {}", s.workers);
        let age = |e: Option<EntryId>, ms: u64| {
            e.map_or_else(
                || "-".to_owned(),
                |_| format!("{:.1} s", ms as f64 / 1000.0),
            )
        };
        println!(
            "oldest waiting  {}",
            age(s.oldest_waiting, millis(s.oldest_waiting_age(instant(now))))
        );
        println!(
            "oldest running  {}",
            age(s.oldest_running, millis(s.oldest_running_age(instant(now))))
        );
    }
    Ok(())
}

/// `dead retry` / `dead delete`: the letters picked (by entry, `--all`, `--older-than`),
/// page by page; `--dry-run` lists them and changes nothing.
async fn dead_batch(
    a: &Args,
    q: &JobQueue,
    retry: bool,
    picked: &[EntryId],
) -> Result<u8, Failure> {
    let cutoff = now_ms().saturating_sub(a.older_than.unwrap_or(0).saturating_mul(1000));
    let (mut after, mut done, mut left) = (None, 0u64, 0u64);
    // A progress bar on stderr when it is a terminal (or with --progress): the dead letters'
    // count bounds the work; each page moves it.
    let progress = (a.progress || std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then_some(())
        .filter(|()| !a.dry_run && picked.is_empty());
    let total = match progress {
        Some(()) => q.stats().await.map_err(failed)?.dead,
        None => 0,
    };
    let (mut seen, started) = (0u64, std::time::Instant::now());
    loop {
        let page = q.dead_letters(after, 256).await.map_err(failed)?;
        let chosen: Vec<DeadLetter> = page
            .letters
            .iter()
            .filter(|l| {
                if picked.is_empty() {
                    l.entry.ms <= cutoff
                } else {
                    picked.contains(&l.entry)
                }
            })
            .cloned()
            .collect();
        if a.dry_run {
            for l in &chosen {
                let job = l.job.as_ref().map_or("-".to_owned(), |j| j.0.clone());
                println!(
                    "would {} {} {job}",
                    if retry { "retry" } else { "delete" },
                    l.entry
                );
            }
            if !chosen.is_empty() && !a.json {
                // The command the core would send for this page, as it would go.
                println!("would send: {}", planned(a, q, retry, &chosen)?);
            }
            done += chosen.len() as u64;
        } else if !chosen.is_empty() {
            if retry {
                for (entry, fate) in q.retry_dead(&chosen).await.map_err(failed)? {
                    match fate {
                        datalayer_tokio::Revival::Queued(_) => done += 1,
                        other => {
                            left += 1;
                            eprintln!("{entry}: {other:?}");
                        }
                    }
                }
            } else {
                let entries: Vec<EntryId> = chosen.iter().map(|l| l.entry).collect();
                done += q.delete_dead(&entries).await.map_err(failed)?;
            }
        }
        seen += page.letters.len() as u64;
        if progress.is_some() {
            bar(seen, total.max(seen), done, started.elapsed());
        }
        match page.next {
            Some(next) if next.ms <= cutoff || !picked.is_empty() => after = Some(next),
            _ => break,
        }
    }
    if progress.is_some() {
        eprintln!();
    }
    let verb = match (retry, a.dry_run) {
        (true, true) => "would retry",
        (true, false) => "retried",
        (false, true) => "would delete",
        (false, false) => "deleted",
    };
    if a.json {
        println!(
            "{}",
            json!({ "action": verb, "count": done, "not_retried": left })
        );
    } else {
        println!("{verb} {done}");
    }
    Ok(if left > 0 { 1 } else { 0 })
}

/// The command of one batch of `dead retry` / `dead delete`, as the core builds it (the
/// re-sealed jobs, made only when it runs, shown as `<re-sealed job>`).
fn planned(a: &Args, q: &JobQueue, retry: bool, letters: &[DeadLetter]) -> Result<String, Failure> {
    use datalayer_tokio::core::command::CommandKind;
    use datalayer_tokio::core::naming::QueueKeys;
    use datalayer_tokio::core::scripts::invocation;
    let prefix = a.prefix.as_deref().unwrap_or("dl");
    let keys = std::sync::Arc::new(QueueKeys::new(prefix, q.name()).map_err(failed)?);
    let kind = if retry {
        let sealed: std::sync::Arc<[u8]> = std::sync::Arc::from(&b"<re-sealed job>"[..]);
        CommandKind::Revive {
            keys,
            // The tool reads no outcomes: its marker is `w`.
            marker: "w".into(),
            items: letters
                .iter()
                // Only letters that open can be re-sealed (the others stay: `Unreadable`).
                .filter(|l| l.record.is_ok())
                .filter_map(|l| Some((l.entry, l.job.as_ref()?.0.clone(), sealed.clone())))
                .collect(),
        }
    } else {
        CommandKind::DeleteDead {
            keys,
            entries: letters.iter().map(|l| l.entry).collect(),
        }
    };
    Ok(invocation(&kind).describe())
}

/// One line of progress, redrawn in place: letters gone through of the total, how many
/// acted on, the rate.
fn bar(seen: u64, total: u64, done: u64, took: Duration) {
    const WIDTH: u64 = 30;
    let filled = (seen * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    let rate = seen as f64 / took.as_secs_f64().max(1e-3);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    eprint!("\r[{bar}] {seen}/{total} letters, {done} done, {rate:.0}/s");
    use std::io::Write as _;
    let _ = std::io::stderr().flush();
}

async fn health(a: &Args) -> Result<u8, Failure> {
    let timeout = Duration::from_millis(a.timeout_ms);
    let dl = match tokio::time::timeout(timeout, connect(a)).await {
        Ok(dl) => dl?,
        Err(_) => return Err(failed(format!("no connection within {timeout:?}"))),
    };
    let (healthy, info) = (dl.health(timeout).await, dl.server_info(timeout).await);
    let risks = info.as_ref().map(|i| i.risks()).unwrap_or_default();
    let code = match (&healthy, risks.is_empty()) {
        (Err(_), _) => 1,
        (Ok(()), false) => 2,
        (Ok(()), true) => 0,
    };
    if a.json {
        let v = json!({
            "healthy": healthy.is_ok(),
            "error": healthy.as_ref().err().map(ToString::to_string),
            "server": info.as_ref().ok(),
            "risks": risks,
        });
        println!("{v}");
    } else {
        match &healthy {
            Ok(()) => println!("healthy: a write and a read answered within {timeout:?}"),
            Err(e) => println!("unhealthy: {e}"),
        }
        if let Ok(i) = &info {
            if i.nodes > 1 {
                println!(
                    "cluster of {} primaries (each setting: the riskiest found)",
                    i.nodes
                );
            }
            println!("redis {}", i.version);
            println!(
                "maxmemory-policy {}",
                i.maxmemory_policy.as_deref().unwrap_or("?")
            );
            let aof = i.appendonly.map_or("?", |on| if on { "yes" } else { "no" });
            println!("appendonly {aof}");
            println!("save {:?}", i.save.as_deref().unwrap_or("?"));
        }
        for r in &risks {
            println!("risk: {r}");
        }
    }
    Ok(code)
}

/// `serve`: every interval, the stats of every queue (found with `SCAN`) into a snapshot;
/// `GET /metrics` answers it in Prometheus' text format, sending no Redis command. Each
/// queue costs one stats script per interval, whatever its length; no secret is needed,
/// and nothing of a job is shown.
async fn serve(a: &Args) -> Result<u8, Failure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listen = a.listen.clone().unwrap_or_else(|| "127.0.0.1:9187".into());
    let every = Duration::from_millis(a.watch_ms.unwrap_or(15_000));
    let dl = connect(a).await?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| failed(format!("listen on {listen}: {e}")))?;
    eprintln!("datalayer: serving metrics at http://{listen}/metrics, every {every:?}");
    let snapshot = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let shared = snapshot.clone();
    let sampler = tokio::spawn(async move {
        let ring = no_secret();
        let mut queues: std::collections::BTreeMap<String, JobQueue> = Default::default();
        let mut samples = 0u64;
        loop {
            let started = std::time::Instant::now();
            let names = dl.queues().await.unwrap_or_default();
            let mut rows = Vec::new();
            for name in names {
                if !queues.contains_key(&name) {
                    match queue(&dl, &name, &ring) {
                        Ok(q) => {
                            queues.insert(name.clone(), q);
                        }
                        Err(_) => continue,
                    }
                }
                if let Some(q) = queues.get(&name) {
                    if let Ok(Ok(s)) = tokio::time::timeout(every, q.stats()).await {
                        rows.push((name, s));
                    }
                }
            }
            samples += 1;
            let text = prometheus_text(&rows, samples, started.elapsed(), now_ms());
            if let Ok(mut s) = shared.lock() {
                *s = text;
            }
            tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
        }
    });
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        if sampler.is_finished() {
            return Err(failed("the sampler stopped"));
        }
        let body = snapshot.lock().map(|s| s.clone()).unwrap_or_default();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let reply = if head.starts_with(b"GET /metrics ") {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
            };
            let _ = conn.write_all(reply.as_bytes()).await;
        });
    }
}

/// A label value as Prometheus' text format writes it.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The snapshot of `rows` in Prometheus' text format.
fn prometheus_text(
    rows: &[(String, datalayer_tokio::QueueStats)],
    samples: u64,
    took: Duration,
    now: u64,
) -> String {
    use std::fmt::Write;
    type Get = fn(&datalayer_tokio::QueueStats, u64) -> f64;
    let gauges: [(&str, &str, Get); 7] = [
        (
            "datalayer_queue_jobs",
            "Jobs waiting or running.",
            |s, _| s.jobs as f64,
        ),
        (
            "datalayer_queue_running",
            "Jobs running (delivered, not settled).",
            |s, _| s.pending as f64,
        ),
        (
            "datalayer_queue_delayed",
            "Jobs delayed (due later).",
            |s, _| s.delayed as f64,
        ),
        ("datalayer_queue_dead", "Dead letters.", |s, _| {
            s.dead as f64
        }),
        (
            "datalayer_queue_workers",
            "Live workers, in any process.",
            |s, _| s.workers as f64,
        ),
        (
            "datalayer_queue_oldest_waiting_seconds",
            "How long the oldest waiting job has waited.",
            |s, now| millis(s.oldest_waiting_age(instant(now))) as f64 / 1e3,
        ),
        (
            "datalayer_queue_paused",
            "1 while the queue is paused (no worker starts a job), else 0.",
            |s, _| f64::from(u8::from(s.paused_at.is_some())),
        ),
    ];
    let mut out = String::new();
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (queue, s) in rows {
            let _ = writeln!(out, "{name}{{queue=\"{}\"}} {}", label(queue), get(s, now));
        }
    }
    let _ = writeln!(
        out,
        "# HELP datalayer_sampler_samples_total Samples taken.\n\
         # TYPE datalayer_sampler_samples_total counter\n\
         datalayer_sampler_samples_total {samples}\n\
         # HELP datalayer_sampler_seconds How long the last sample took.\n\
         # TYPE datalayer_sampler_seconds gauge\n\
         datalayer_sampler_seconds {}",
        took.as_secs_f64()
    );
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let result = match parse(std::env::args().skip(1)) {
        Ok(args) => run(args).await,
        Err(f) => Err(f),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure(0, text)) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(Failure(code, text)) => {
            eprintln!("datalayer: {text}");
            ExitCode::from(code)
        }
    }
}
