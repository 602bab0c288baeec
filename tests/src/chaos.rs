//! The chaos run: one producer adds sealed jobs and awaits every outcome while worker
//! processes run them, and meanwhile every fault at once: worker processes SIGKILLed,
//! redis-server killed with `kill -9` and restarted on its AOF (`appendfsync always`),
//! every connection dropped with `CLIENT KILL`, the producer's replies swallowed or its
//! connection cut mid-pipeline by a loopback proxy, garbage written into the work and events
//! streams (random bytes, wrong fields, megabyte values, forged events naming real jobs).
//!
//! What it checks: every job has exactly one final outcome at the producer, with its own
//! result; an add answered `Unavailable` never ran (the caller adds it again under a new
//! id); an `Unconfirmed` add, added again with the same id, ran once; no plaintext in any
//! key or in the AOF. What it reports: duplicated runs (delivery is at least once: a job
//! whose worker was killed mid-run runs again), add→outcome latency under faults, and the
//! faults done. `cargo test` runs a short version; the harness (`--chaos N`) a long one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use datalayer_core::job::JobId;
use datalayer_core::producer::AddJob;
use datalayer_core::retry::RetryPolicy;
use datalayer_tokio::{
    DataLayer, Error, Job, JobHandle, JobQueue, Outcome, QueueOptions, Unreachable, WorkerOptions,
};
use serde_json::{Value, json};

use crate::{KillOnDrop, Persistence, RedisServer, contains, every_key_and_value, secrets};

/// The queue of the chaos run.
pub const QUEUE: &str = "chaos";

/// Marks every payload and session id: found anywhere in Redis, it is plaintext.
const MARKER: &str = "chaos-plaintext-canary";

/// Starts one worker process: `(url, queue, runs log)` to a command.
pub type WorkerCommand = Arc<dyn Fn(&str, &str, &Path) -> Command + Send + Sync>;

/// What to run.
#[derive(Clone)]
pub struct ChaosConfig {
    /// Jobs to add (each awaited to its outcome).
    pub jobs: usize,
    /// Worker processes.
    pub workers: usize,
    /// How many times redis-server is killed and restarted, spread over the adds.
    pub redis_restarts: usize,
    /// The most adds awaiting their outcome at once.
    pub in_flight: usize,
    /// Adds per second (so that the faults fall among them); 0: as fast as they go.
    pub rate: u32,
    /// How long an add waits for Redis (`Unreachable::Wait`): short, and faults make adds
    /// end `Unavailable` or `Unconfirmed`, which the run then checks were true.
    pub add_wait: Duration,
    /// Give up (and fail) after this long.
    pub deadline: Duration,
    /// Starts one worker process.
    pub worker: WorkerCommand,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    /// Jobs with their final outcome, each checked.
    pub completed: usize,
    /// Adds answered `Unavailable` (added again under a new id; none of them ran).
    pub unavailable: usize,
    /// Adds answered `Unconfirmed` (added again with the same id).
    pub unconfirmed: usize,
    /// Jobs that ran more than once, and the most runs of one job.
    pub duplicates: usize,
    /// The most runs of one job.
    pub max_runs: u32,
    /// Of the duplicates, jobs that had been added again after `Unconfirmed` (a duplicate
    /// there would be the adds' fault, not a worker killed mid-run).
    pub duplicates_readded: usize,
    /// Of the duplicates, jobs none of whose runs was in a killed worker process (a lease
    /// that ran out while Redis was down, or the adds' fault).
    pub duplicates_unexplained: usize,
    /// add → outcome, p50 and p99 and max (ms).
    pub latency_ms: (u64, u64, u64),
    /// Faults done: worker kills, Redis restarts, connection kills, garbage entries.
    pub worker_kills: u64,
    /// Redis restarts.
    pub redis_restarts: u64,
    /// `CLIENT KILL` rounds.
    pub connection_kills: u64,
    /// Garbage entries and forged events written.
    pub garbage: u64,
    /// Proxy faults on the producer's connections (replies swallowed, pipelines cut).
    pub proxy_faults: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// A small xorshift generator (the run prints its seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The worker process's body: echoes each job's payload, appending its id to `log` first.
pub async fn worker_main(url: &str, queue: &str, log: &Path) {
    // `DL_SHARDS`: the queue's shards (default 1).
    let shards: u16 = std::env::var("DL_SHARDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let (_dl, worker) = crate::worker_process(
        url,
        queue,
        WorkerOptions::default()
            .shards(shards)
            .concurrency(16)
            .lease(Duration::from_secs(2))
            .retry(RetryPolicy::default().max_stalled(20)),
    )
    .await;
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("runs log {}: {e}", log.display())),
    ));
    let _running = worker.start(move |job: Job| {
        let log = log.clone();
        async move {
            {
                use std::io::Write;
                let mut f = log.lock().unwrap_or_else(PoisonError::into_inner);
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let _ = writeln!(f, "{} {} {ms} {}", job.id, std::process::id(), job.attempt);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            let payload: Value = job.json().map_err(|e| e.to_string())?;
            Ok::<_, String>(json!({ "echo": payload["i"] }))
        }
    });
    std::future::pending::<()>().await;
}

struct Fleet {
    procs: Vec<Option<KillOnDrop>>,
    /// Worker processes SIGKILLed by the chaos (a job they ran may run again).
    killed: HashSet<u32>,
    logs: Vec<PathBuf>,
    url: String,
    start: WorkerCommand,
}

impl Fleet {
    fn spawn(&mut self, i: usize) {
        let child = (self.start)(&self.url, QUEUE, &self.logs[i])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a worker process");
        self.procs[i] = Some(KillOnDrop(child));
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            self.killed.insert(p.0.id());
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    /// The processes that ran each job id, from every worker's log.
    fn runs(&self) -> HashMap<String, Vec<u32>> {
        let mut runs: HashMap<String, Vec<u32>> = HashMap::new();
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            for line in text.lines() {
                let mut parts = line.split(' ');
                let (Some(id), Some(pid)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let Ok(pid) = pid.parse() else { continue };
                runs.entry(id.to_owned()).or_default().push(pid);
            }
        }
        runs
    }
}

/// One logical job's story.
#[derive(Debug, Default)]
struct Story {
    /// Ids given up as `Unavailable` (must never run).
    abandoned: Vec<JobId>,
    unconfirmed: usize,
    /// The id the job ran under.
    id: Option<JobId>,
}

/// Adds job `i` until an add is taken; awaits its outcome and checks it.
async fn one_job(queue: JobQueue, i: usize) -> Result<(Duration, Story), String> {
    let start = Instant::now();
    let mut story = Story::default();
    let payload = json!({ "i": i, "secret": format!("{MARKER}-{i}") });
    // Ids generated here, as the queue would (so that an `Unavailable` names a known id);
    // after `Unconfirmed`, the same id again, as the caller's.
    let fresh_id = || {
        let mut r = [0u8; 8];
        datalayer_core::Random::fill_bytes(&mut datalayer_tokio::OsRandom, &mut r);
        JobId::generate(datalayer_tokio::now(), u64::from_le_bytes(r))
    };
    let (mut id, mut generated) = (fresh_id(), true);
    let handle: JobHandle = loop {
        let job = AddJob {
            id: Some(id.clone()),
            generated_id: generated,
            session_id: format!("{MARKER}-session-{i}"),
            payload: serde_json::to_vec(&payload).map_err(|e| e.to_string())?,
            ..AddJob::default()
        };
        match queue.add_job(job).await {
            Ok(h) => break h,
            Err(Error::Unavailable) => {
                // Not queued: add it again, as a caller would, under a new id.
                if !generated {
                    return Err(format!("job {i}: Unavailable for a caller-chosen id {id}"));
                }
                story.abandoned.push(std::mem::replace(&mut id, fresh_id()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(Error::Unconfirmed(same)) => {
                // It may be queued: the same id again is safe.
                story.unconfirmed += 1;
                (id, generated) = (same, false);
            }
            Err(e) => return Err(format!("job {i}: add failed: {e}")),
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err(format!("job {i}: never taken"));
        }
    };
    let id = handle.id.clone();
    story.id = Some(id.clone());
    match tokio::time::timeout(Duration::from_secs(600), handle.result()).await {
        Ok(Ok(Outcome::Completed(r))) => {
            let r: Value = serde_json::from_slice(&r).map_err(|e| e.to_string())?;
            if r["echo"] != json!(i) {
                return Err(format!("job {i} ({id}) got another job's result: {r}"));
            }
        }
        other => return Err(format!("job {i} ({id}): {other:?}")),
    }
    Ok((start.elapsed(), story))
}

/// Writes one piece of garbage into the work or the events stream; `live` names real jobs.
async fn garbage(
    conn: &mut redis::aio::MultiplexedConnection,
    rng: &mut Rng,
    n: u64,
    live: &[String],
) {
    let jobs = format!("dl:{{{QUEUE}}}:jobs");
    let events = format!("dl:{{{QUEUE}}}:events");
    let random: Vec<u8> = (0..rng.between(1, 300)).map(|_| rng.next() as u8).collect();
    let mut cmd = redis::cmd("XADD");
    match n % 5 {
        // Random bytes where a sealed job belongs (named by an id no job has).
        0 => cmd
            .arg(&jobs)
            .arg("*")
            .arg("j")
            .arg(format!("garbage-{n}"))
            .arg("e")
            .arg(random),
        // Wrong fields.
        1 => cmd.arg(&jobs).arg("*").arg("x").arg(random),
        // A megabyte or more.
        2 => cmd
            .arg(&jobs)
            .arg("*")
            .arg("j")
            .arg(format!("big-{n}"))
            .arg("e")
            .arg(vec![b'g'; 1 << 20]),
        // A forged result for a real job: it must never be taken as its outcome.
        3 => cmd
            .arg(&events)
            .arg("*")
            .arg("j")
            .arg(
                live.get(n as usize % live.len().max(1))
                    .map_or("none", String::as_str),
            )
            .arg("k")
            .arg("c")
            .arg("a")
            .arg("1")
            .arg("v")
            .arg(random),
        // An event of unknown shape.
        _ => cmd.arg(&events).arg("*").arg("zz").arg(random),
    };
    let _: redis::RedisResult<redis::Value> = cmd.query_async(conn).await;
}

async fn raw_conn(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()
}

/// Every byte under `dir` (the AOF files), for the plaintext scan.
fn files_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if path.extension().is_none_or(|x| x != "log") {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

/// Runs the chaos; `Err` says what went wrong.
pub async fn run(cfg: ChaosConfig) -> Result<ChaosReport, String> {
    let started = Instant::now();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!(
        "chaos: seed {seed}, {} jobs, {} workers",
        cfg.jobs, cfg.workers
    );
    let server = Arc::new(Mutex::new(RedisServer::start(Persistence::AofAlways)));
    let (url, dir) = {
        let s = server.lock().unwrap_or_else(PoisonError::into_inner);
        (s.url(), s.dir().to_path_buf())
    };
    let logs: Vec<PathBuf> = (0..cfg.workers)
        .map(|i| dir.join(format!("runs-{i}.log")))
        .collect();
    let fleet = Arc::new(Mutex::new(Fleet {
        procs: (0..cfg.workers).map(|_| None).collect(),
        killed: HashSet::new(),
        logs,
        url: url.clone(),
        start: cfg.worker.clone(),
    }));
    for i in 0..cfg.workers {
        fleet
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spawn(i);
    }
    // The producer reaches Redis through a proxy that swallows replies and cuts pipelines.
    let port = server.lock().unwrap_or_else(PoisonError::into_inner).port();
    let proxy = Arc::new(crate::proxy::Proxy::start(port).await);
    let options = datalayer_tokio::Options::default().response_timeout(Duration::from_secs(2));
    let dl = DataLayer::connect(&proxy.url(), options)
        .await
        .map_err(|e| e.to_string())?;
    let queue = dl
        .queue(
            QUEUE,
            &secrets(),
            QueueOptions::default().when_unreachable(Unreachable::Wait(cfg.add_wait)),
        )
        .map_err(|e| e.to_string())?;

    let done = Arc::new(AtomicBool::new(false));
    let added = Arc::new(AtomicU64::new(0));
    let live_ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let counts = Arc::new(Mutex::new(ChaosReport::default()));
    let faults = tokio::spawn(fault_loop(
        cfg.clone(),
        seed,
        proxy.clone(),
        server.clone(),
        fleet.clone(),
        url.clone(),
        done.clone(),
        added.clone(),
        live_ids.clone(),
        counts.clone(),
    ));

    // The producer: at most `in_flight` jobs awaiting their outcome.
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.in_flight));
    let mut waits = Vec::with_capacity(cfg.jobs);
    let pace = (cfg.rate > 0).then(|| Duration::from_secs(1) / cfg.rate);
    for i in 0..cfg.jobs {
        if let Some(pace) = pace {
            let due = started + pace * u32::try_from(i).unwrap_or(u32::MAX);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let queue = queue.clone();
        added.fetch_add(1, Ordering::Relaxed);
        waits.push(tokio::spawn(async move {
            let r = one_job(queue, i).await;
            drop(permit);
            r
        }));
        if started.elapsed() > cfg.deadline {
            break;
        }
    }
    let mut latencies = Vec::with_capacity(cfg.jobs);
    let mut abandoned = Vec::new();
    let mut readded = Vec::new();
    let mut report = ChaosReport::default();
    let mut failure = None;
    for w in waits {
        let left = cfg.deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, w).await {
            Ok(Ok(Ok((latency, story)))) => {
                latencies.push(latency);
                report.completed += 1;
                report.unavailable += story.abandoned.len();
                report.unconfirmed += story.unconfirmed;
                if story.unconfirmed > 0 {
                    readded.extend(story.id.clone());
                }
                abandoned.extend(story.abandoned);
            }
            Ok(Ok(Err(e))) => {
                failure.get_or_insert(e);
            }
            Ok(Err(e)) => {
                failure.get_or_insert(format!("a job's task failed: {e}"));
            }
            Err(_) => {
                failure.get_or_insert(format!(
                    "deadline {:?}: {} of {} jobs had their outcome",
                    cfg.deadline, report.completed, cfg.jobs
                ));
                break;
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = faults.await;
    if let Some(f) = failure {
        return Err(f);
    }
    // Let the workers settle what they ran, then read the runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (runs, killed) = {
        let f = fleet.lock().unwrap_or_else(PoisonError::into_inner);
        (f.runs(), f.killed.clone())
    };
    for id in &abandoned {
        if runs.contains_key(&id.0) {
            return Err(format!("job {id} was answered Unavailable but ran"));
        }
    }
    report.duplicates = runs.values().filter(|p| p.len() > 1).count();
    report.max_runs = runs.values().map(|p| p.len() as u32).max().unwrap_or(0);
    report.duplicates_readded = readded
        .iter()
        .filter(|id| runs.get(&id.0).is_some_and(|p| p.len() > 1))
        .count();
    if std::env::var_os("CHAOS_DEBUG").is_some() {
        let logs = fleet
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .logs
            .clone();
        let mut all = String::new();
        for log in &logs {
            all.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        }
        for id in readded
            .iter()
            .filter(|id| runs.get(&id.0).is_some_and(|p| p.len() > 1))
            .take(3)
        {
            let lines: Vec<&str> = all.lines().filter(|l| l.starts_with(&id.0)).collect();
            eprintln!("chaos debug: {id}: {lines:?}");
        }
    }
    // A worker killed mid-run explains a second run; so does a lease that ran out while
    // Redis was down (its settle could not land): those are reported, not failed.
    report.duplicates_unexplained = runs
        .values()
        .filter(|p| p.len() > 1 && !p.iter().any(|pid| killed.contains(pid)))
        .count();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0, |d| d.as_millis() as u64)
    };
    report.latency_ms = (pct(0.50), pct(0.99), pct(1.0));
    {
        let c = counts.lock().unwrap_or_else(PoisonError::into_inner);
        report.worker_kills = c.worker_kills;
        report.redis_restarts = c.redis_restarts;
        report.connection_kills = c.connection_kills;
        report.garbage = c.garbage;
        report.proxy_faults = c.proxy_faults;
    }
    // No plaintext in any key, nor in the AOF.
    let mut conn = raw_conn(&url).await.ok_or("no connection for the scan")?;
    let everything = every_key_and_value(&mut conn).await;
    if contains(&everything, MARKER.as_bytes()) {
        return Err("plaintext in Redis".into());
    }
    if contains(&files_under(&dir), MARKER.as_bytes()) {
        return Err("plaintext in the AOF".into());
    }
    let _ = queue;
    for i in 0..cfg.workers {
        fleet.lock().unwrap_or_else(PoisonError::into_inner).kill(i);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The faults, until `done`.
#[allow(clippy::too_many_arguments)]
async fn fault_loop(
    cfg: ChaosConfig,
    seed: u64,
    proxy: Arc<crate::proxy::Proxy>,
    server: Arc<Mutex<RedisServer>>,
    fleet: Arc<Mutex<Fleet>>,
    url: String,
    done: Arc<AtomicBool>,
    added: Arc<AtomicU64>,
    live_ids: Arc<Mutex<Vec<String>>>,
    counts: Arc<Mutex<ChaosReport>>,
) {
    let mut rng = Rng(seed);
    let now = Instant::now();
    let mut next_worker_kill = now + Duration::from_millis(rng.between(2_000, 4_000));
    let mut next_client_kill = now + Duration::from_millis(rng.between(3_000, 6_000));
    let mut next_garbage = now + Duration::from_millis(500);
    let mut next_proxy = now + Duration::from_millis(rng.between(3_000, 6_000));
    let mut heal_at: Option<Instant> = None;
    let restart_every = (cfg.jobs / (cfg.redis_restarts + 1)).max(1) as u64;
    let mut restarts = 0;
    let mut n = 0u64;
    let mut conn = raw_conn(&url).await;
    let mut seen: HashSet<String> = HashSet::new();
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        if restarts < cfg.redis_restarts
            && added.load(Ordering::Relaxed) >= restart_every * (restarts as u64 + 1)
        {
            restarts += 1;
            let down = rng.between(500, 2_000);
            let server = server.clone();
            // kill -9, a while down, restart on the AOF (blocking: off the runtime).
            let _ = tokio::task::spawn_blocking(move || {
                let mut s = server.lock().unwrap_or_else(PoisonError::into_inner);
                s.kill();
                std::thread::sleep(Duration::from_millis(down));
                s.restart();
            })
            .await;
            counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .redis_restarts += 1;
            conn = raw_conn(&url).await;
        }
        if heal_at.is_some_and(|t| now >= t) {
            heal_at = None;
            proxy.set(crate::proxy::Fault::None);
        }
        if now >= next_proxy {
            next_proxy = now + Duration::from_millis(rng.between(3_000, 6_000));
            if rng.next() & 1 == 0 {
                // Replies swallowed for a while: what was sent runs, its answers never come.
                proxy.set(crate::proxy::Fault::DropReplies);
                heal_at = Some(now + Duration::from_millis(rng.between(200, 1_500)));
            } else {
                proxy.set(crate::proxy::Fault::CutAfter(
                    rng.between(1, 20_000) as usize
                ));
            }
            counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .proxy_faults += 1;
        }
        if now >= next_worker_kill {
            next_worker_kill = now + Duration::from_millis(rng.between(2_000, 4_000));
            let i = (rng.next() % cfg.workers as u64) as usize;
            let mut f = fleet.lock().unwrap_or_else(PoisonError::into_inner);
            f.kill(i);
            f.spawn(i);
            counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .worker_kills += 1;
        }
        let Some(c) = conn.as_mut() else {
            conn = raw_conn(&url).await;
            continue;
        };
        if now >= next_client_kill {
            next_client_kill = now + Duration::from_millis(rng.between(3_000, 6_000));
            let killed: redis::RedisResult<u64> = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes")
                .query_async(c)
                .await;
            if killed.is_ok() {
                counts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .connection_kills += 1;
            }
        }
        if now >= next_garbage {
            next_garbage = now + Duration::from_millis(rng.between(200, 1_000));
            // Real job ids, from the work stream, for forged events.
            let recent: redis::RedisResult<Vec<(String, BTreeMap<String, redis::Value>)>> =
                redis::cmd("XREVRANGE")
                    .arg(format!("dl:{{{QUEUE}}}:jobs"))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(5)
                    .query_async(c)
                    .await;
            if let Ok(entries) = recent {
                let mut live = live_ids.lock().unwrap_or_else(PoisonError::into_inner);
                for (_, fields) in entries {
                    if let Some(redis::Value::BulkString(j)) = fields.get("j") {
                        let j = String::from_utf8_lossy(j).into_owned();
                        if seen.insert(j.clone()) {
                            live.push(j);
                        }
                    }
                }
            }
            let live = live_ids
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            n += 1;
            // Megabyte values sparingly: each one also lands in the dead letters.
            let n = if n % 5 == 2 && n > 40 { n + 1 } else { n };
            garbage(c, &mut rng, n, &live).await;
            counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .garbage += 1;
        }
    }
}
