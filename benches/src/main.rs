//! The throughput harness: `cargo run --release -p datalayer-bench -- [--quick] [--json]
//! [--jobs N] [--sizes 200,4096]`.
//!
//! It starts its own redis-server on a free loopback port (or uses `REDIS_URL`, under a key
//! prefix of its own), then, in the same run and per payload size: measures the ceiling
//! (`redis-benchmark` XADD of the same payload, `-P 64 -c 50`), then enqueue-only (one queue,
//! and 100 queues), process-only (a pre-filled queue drained at concurrency 1, 16, 256), and
//! end-to-end (producer and workers at once, every result awaited) at full rate and at half
//! the peak rate. Per scenario: jobs/s, the ratio to the ceiling, add→handler latency
//! (HdrHistogram), Redis memory per queued job, client CPU per job. It leaves no keys behind.
//! BENCHMARKS.md explains the method and keeps the results.

mod cluster_mode;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use datalayer_core::keys::{KeyId, Secret, SecretRing};
use datalayer_core::producer::AddJob;
use datalayer_tests::{Persistence, RedisServer};
use datalayer_tokio::{DataLayer, IdleReads, Job, JobQueue, Options, QueueOptions, WorkerOptions};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Redis latency events at least this long (ms) are reported.
const STALL_MS: u64 = 20;

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Args {
    /// `--chaos N`: the chaos run with N jobs instead of the throughput scenarios.
    chaos: Option<usize>,
    /// `--add-wait MS`: how long a chaos add waits for Redis.
    add_wait_ms: u64,
    /// `--restarts N`: Redis restarts in a chaos run.
    restarts: usize,
    only: Option<String>,
    rate: Option<f64>,
    jobs: u64,
    sizes: Vec<usize>,
    json: bool,
    quick: bool,
    /// `--cluster`: the cluster scenarios instead.
    cluster: bool,
    /// `--idle-reads auto|merged|doorbells`: how idle readers wait (one server).
    idle_reads: IdleReads,
}

fn args() -> Res<Args> {
    let mut a = Args {
        chaos: None,
        add_wait_ms: 2_000,
        restarts: 3,
        only: None,
        rate: None,
        jobs: 200_000,
        sizes: vec![200, 4096],
        json: false,
        quick: false,
        cluster: false,
        idle_reads: IdleReads::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => {
                a.quick = true;
                a.jobs = 5_000;
            }
            "--json" => a.json = true,
            "--cluster" => a.cluster = true,
            "--idle-reads" => {
                a.idle_reads = match it.next().as_deref() {
                    Some("auto") => IdleReads::Auto,
                    Some("merged") => IdleReads::Merged,
                    Some("doorbells") => IdleReads::Doorbells,
                    _ => return Err("--idle-reads needs auto, merged or doorbells".into()),
                }
            }
            "--chaos" => a.chaos = Some(it.next().ok_or("--chaos needs a job count")?.parse()?),
            "--restarts" => a.restarts = it.next().ok_or("--restarts needs a count")?.parse()?,
            "--add-wait" => {
                a.add_wait_ms = it.next().ok_or("--add-wait needs milliseconds")?.parse()?;
            }
            "--rate" => a.rate = Some(it.next().ok_or("--rate needs jobs/s")?.parse()?),
            "--only" => {
                a.only = Some(it.next().ok_or(
                    "--only needs enqueue, enqueue1, enqueue100, enqueue_many, process, process1, process256, e2e, trickle, trickle1 or trickle1000",
                )?)
            }
            "--jobs" | "-n" => a.jobs = it.next().ok_or("--jobs needs a number")?.parse()?,
            "--sizes" => {
                a.sizes = it
                    .next()
                    .ok_or("--sizes needs a list")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: datalayer-bench [--quick] [--json] [--jobs N] [--sizes 200,4096] \
                     [--idle-reads auto|merged|doorbells] [--only enqueue|enqueue1|enqueue100|enqueue_many|process|process1|process256|e2e|trickle|trickle1|trickle1000] [--rate JOBS_PER_S]\n\
                     \x20      datalayer-bench --cluster [--jobs N] [--sizes 200] [--json]: end to end on one server and a 3-master cluster\n\
                     \x20      datalayer-bench --chaos JOBS [--rate JOBS_PER_S] [--add-wait MS] [--json]: every fault at once \
                     (4 worker processes, 3 Redis restarts; default 1,000 adds/s)\n\
                     REDIS_URL=redis://host:port uses that server instead of starting one."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if a.jobs < 100 {
        return Err("--jobs must be at least 100".into());
    }
    Ok(a)
}

/// Time since the harness started: the clock both sides of a job read.
fn since_start() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

pub(crate) fn secrets() -> SecretRing {
    SecretRing::new(KeyId(1), Secret::from_bytes([7; 32]))
}

/// A payload of `size` bytes whose first 8 hold the time it was made (ns since start); the
/// rest is pseudo-random, so that compression does not flatter the figures.
pub(crate) fn payload(size: usize) -> Vec<u8> {
    let ns = u64::try_from(since_start().as_nanos()).unwrap_or(u64::MAX);
    let mut p = Vec::with_capacity(size.max(8));
    p.extend_from_slice(&ns.to_le_bytes());
    let mut x = ns | 1;
    while p.len() < size {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.extend_from_slice(&x.to_le_bytes()[..(size - p.len()).min(8)]);
    }
    p
}

/// Adds one job of `size` bytes; the time until Redis confirmed it goes into `adds`.
async fn timed_add(
    queue: &JobQueue,
    size: usize,
    adds: &Mutex<Histogram<u64>>,
) -> Result<datalayer_tokio::JobHandle, datalayer_tokio::Error> {
    let job = AddJob {
        session_id: "bench".into(),
        payload: payload(size),
        ..AddJob::default()
    };
    let asked = Instant::now();
    let added = queue.add_job(job).await;
    if let Ok(mut h) = adds.lock() {
        let us = u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = h.record(us.max(1));
    }
    added
}

fn latency_us(payload: &[u8]) -> u64 {
    let Some(head) = payload.get(..8).and_then(|h| <[u8; 8]>::try_from(h).ok()) else {
        return 0;
    };
    let sent = u64::from_le_bytes(head);
    let now = u64::try_from(since_start().as_nanos()).unwrap_or(u64::MAX);
    now.saturating_sub(sent) / 1_000
}

/// User + system CPU time of this process (all threads), from /proc (Linux).
pub(crate) fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12th and 13th after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// Redis' own CPU time (user + system), from INFO cpu.
pub(crate) async fn redis_cpu(conn: &mut redis::aio::MultiplexedConnection) -> Res<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    Ok(info
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_sys:")
                .or_else(|| l.strip_prefix("used_cpu_user:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum())
}

/// `total_commands_processed` of INFO stats.
async fn commands_processed(conn: &mut redis::aio::MultiplexedConnection) -> Res<u64> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "INFO stats has no total_commands_processed".into())
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> Res<i64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "INFO memory has no used_memory".into())
}

/// A progress line on stderr while a scenario runs.
struct Progress {
    done: Arc<AtomicU64>,
    stop: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(label: String, total: u64) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let d = done.clone();
        if !std::io::stderr().is_terminal() {
            eprintln!("  {label}");
            return Self {
                done,
                stop: tokio::spawn(async {}),
            };
        }
        let stop = tokio::spawn(async move {
            let t = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let n = d.load(Ordering::Relaxed);
                let width = 30;
                let filled = usize::try_from(n * width / total.max(1))
                    .unwrap_or(0)
                    .min(30);
                let rate = n as f64 / t.elapsed().as_secs_f64().max(1e-9);
                eprint!(
                    "\r  {label:<28} [{}{}] {:>3}% {:>9.0} jobs/s ",
                    "=".repeat(filled),
                    " ".repeat(30 - filled),
                    n * 100 / total.max(1),
                    rate
                );
                let _ = std::io::stderr().flush();
            }
        });
        Self { done, stop }
    }

    fn finish(self) {
        self.stop.abort();
        if std::io::stderr().is_terminal() {
            eprint!("\r{:78}\r", "");
        }
    }
}

/// One measured scenario.
#[derive(Default)]
struct Row {
    scenario: String,
    size: usize,
    jobs: u64,
    secs: f64,
    ceiling: f64,
    cpu_us_per_job: f64,
    redis_cpu_us_per_job: f64,
    latency: Option<Histogram<u64>>,
    /// add() call → Redis confirmed the job (end to end only).
    add_latency: Option<Histogram<u64>>,
    memory_per_job: Option<f64>,
    left_bytes: Option<i64>,
    /// Entries, events and markers left once every job ended (end to end only).
    left_items: Option<u64>,
    /// Redis' own latency events of at least `STALL_MS` during the run (end to end only):
    /// (event, worst ms).
    stalls: Option<Vec<(String, u64)>>,
    /// Trickle only: the same queues and workers left idle afterwards, (seconds, Redis CPU
    /// ms per second, commands Redis ran per second).
    idle: Option<(f64, f64, f64)>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.jobs as f64 / self.secs.max(1e-9)
    }

    fn json(&self) -> Value {
        let lat = self.latency.as_ref().map(|h| {
            json!({
                "p50_us": h.value_at_quantile(0.5),
                "p99_us": h.value_at_quantile(0.99),
                "p999_us": h.value_at_quantile(0.999),
                "max_us": h.max(),
            })
        });
        json!({
            "scenario": self.scenario,
            "payload_bytes": self.size,
            "jobs": self.jobs,
            "seconds": self.secs,
            "jobs_per_s": self.rate(),
            "ratio_to_ceiling": if self.ceiling > 0.0 { self.rate() / self.ceiling } else { 0.0 },
            "client_cpu_us_per_job": self.cpu_us_per_job,
            "redis_cpu_us_per_job": self.redis_cpu_us_per_job,
            "latency": lat,
            "add_latency": self.add_latency.as_ref().map(|h| json!({
                "p50_us": h.value_at_quantile(0.5),
                "p99_us": h.value_at_quantile(0.99),
                "p999_us": h.value_at_quantile(0.999),
            })),
            "redis_bytes_per_queued_job": self.memory_per_job,
            "redis_bytes_left_after": self.left_bytes,
            "redis_items_left_after": self.left_items,
            "redis_stalls_ms": self.stalls.as_ref().map(|v| v.iter().map(|(e, ms)| json!({"event": e, "max_ms": ms})).collect::<Vec<_>>()),
            "idle_after": self.idle.map(|(secs, cpu_ms, commands)| json!({
                "seconds": secs,
                "redis_cpu_ms_per_s": cpu_ms,
                "redis_commands_per_s": commands,
            })),
        })
    }
}

struct Bench {
    dl: DataLayer,
    raw: redis::aio::MultiplexedConnection,
    host: String,
    port: u16,
    prefix: String,
    jobs: u64,
    run: u64,
}

impl Bench {
    /// Every job of queue `name` has ended and its result was read: what is left of them in
    /// Redis (work entries, id markers, events, delayed jobs and their payloads, dead
    /// letters). Waits up to 3 s for the producer's last acknowledgement; an error if
    /// anything remains.
    async fn residue(&mut self, name: &str, producer: &str) -> Res<u64> {
        let keys = datalayer_core::naming::QueueKeys::new(&self.prefix, name)?;
        let events = keys.events_of(producer);
        let started = Instant::now();
        loop {
            let (jobs, events, dead, ids, payloads, delayed): (u64, u64, u64, u64, u64, u64) =
                redis::pipe()
                    .cmd("XLEN")
                    .arg(&keys.jobs)
                    .cmd("XLEN")
                    .arg(&events)
                    .cmd("XLEN")
                    .arg(&keys.dead)
                    .cmd("HLEN")
                    .arg(&keys.ids)
                    .cmd("HLEN")
                    .arg(&keys.payloads)
                    .cmd("ZCARD")
                    .arg(&keys.delayed)
                    .query_async(&mut self.raw)
                    .await?;
            let left = jobs + events + dead + ids + payloads + delayed;
            if left == 0 {
                return Ok(0);
            }
            if started.elapsed() > Duration::from_secs(3) {
                return Err(format!(
                    "completed jobs left items in Redis: {jobs} work entries, {events} events, \
                     {dead} dead letters, {ids} id markers, {payloads} payloads, {delayed} delayed"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `LATENCY LATEST`: each event Redis' latency monitor saw (at least `STALL_MS`) since
    /// the last reset, with its worst time; `None` if the server refuses (another's server).
    async fn stalls(&mut self) -> Option<Vec<(String, u64)>> {
        let latest: Vec<(String, u64, u64, u64)> = redis::cmd("LATENCY")
            .arg("LATEST")
            .query_async(&mut self.raw)
            .await
            .ok()?;
        Some(
            latest
                .into_iter()
                .map(|(event, _, _, max)| (event, max))
                .collect(),
        )
    }

    fn queue_name(&mut self, what: &str) -> String {
        self.run += 1;
        format!("{what}-{}", self.run)
    }

    /// `redis-benchmark` XADD with the payload size: the rate Redis itself takes.
    async fn ceiling(&mut self, size: usize) -> Res<(f64, f64)> {
        let key = format!("{}:ceiling", self.prefix);
        let data = "x".repeat(size);
        let n = self.jobs.max(100_000).to_string();
        let port = self.port.to_string();
        let rcpu = redis_cpu(&mut self.raw).await?;
        let out = tokio::process::Command::new("redis-benchmark")
            .args([
                "-h", &self.host, "-p", &port, "-c", "50", "-P", "64", "-n", &n,
            ])
            .args(["--csv", "-q", "XADD", &key, "*", "p", &data])
            .output()
            .await
            .map_err(|e| format!("redis-benchmark: {e} (install redis-tools)"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let rps = text
            .lines()
            .filter_map(|l| l.split(',').nth(1))
            .filter_map(|v| v.trim_matches('"').parse::<f64>().ok())
            .next_back()
            .ok_or_else(|| format!("no rate in redis-benchmark's output: {text}"))?;
        let rcpu = redis_cpu(&mut self.raw).await? - rcpu;
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut self.raw)
            .await?;
        let runs: f64 = n.parse().unwrap_or(1.0);
        Ok((rps, rcpu * 1e6 / runs))
    }

    /// Adds `n` jobs spread over `queues` from 256 concurrent callers; returns the time.
    /// Adds `n` jobs of `size` bytes over `queues` (round robin): one at a time from 256
    /// concurrent callers (`batch` 1), or `batch` at a time with `add_many` from 16.
    async fn enqueue(
        queues: &[JobQueue],
        n: u64,
        size: usize,
        batch: u64,
        done: &Arc<AtomicU64>,
    ) -> Duration {
        let next = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let mut tasks = Vec::new();
        let callers = if batch > 1 { 16 } else { 256 };
        for _ in 0..callers {
            let (queues, next, done) = (queues.to_vec(), next.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(batch, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let q = &queues[usize::try_from(i / batch).unwrap_or(0) % queues.len()];
                    let job = || AddJob {
                        session_id: "bench".into(),
                        payload: payload(size),
                        ..AddJob::default()
                    };
                    let count = batch.min(n - i);
                    if batch == 1 {
                        if let Err(e) = q.add_job(job()).await {
                            eprintln!("add failed: {e}");
                        }
                    } else {
                        match q.add_many((0..count).map(|_| job())).await {
                            Ok(added) => {
                                for e in added.iter().filter_map(|r| r.as_ref().err()) {
                                    eprintln!("add failed: {e}");
                                }
                            }
                            Err(e) => eprintln!("add_many failed: {e}"),
                        }
                    }
                    done.fetch_add(count, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        t.elapsed()
    }

    async fn enqueue_only(&mut self, size: usize, queues: usize, batch: u64) -> Res<Row> {
        let names: Vec<String> = (0..queues)
            .map(|i| format!("{}-{i}", self.queue_name("enq")))
            .collect();
        let qs: Vec<JobQueue> = names
            .iter()
            .map(|n| self.dl.queue(n, &secrets(), QueueOptions::default()))
            .collect::<Result<_, _>>()?;
        let before = used_memory(&mut self.raw).await?;
        let progress = Progress::start(format!("enqueue {queues}q ×{batch} {size} B"), self.jobs);
        let rcpu = redis_cpu(&mut self.raw).await?;
        let cpu = cpu_time();
        let took = Self::enqueue(&qs, self.jobs, size, batch, &progress.done).await;
        let cpu = cpu_time().saturating_sub(cpu);
        let rcpu = redis_cpu(&mut self.raw).await? - rcpu;
        progress.finish();
        let after = used_memory(&mut self.raw).await?;
        for q in &qs {
            q.shutdown().await;
        }
        Ok(Row {
            scenario: format!(
                "enqueue, {queues} queue{}{}",
                if queues == 1 { "" } else { "s" },
                if batch > 1 {
                    format!(", add_many({batch})")
                } else {
                    String::new()
                }
            ),
            size,
            jobs: self.jobs,
            secs: took.as_secs_f64(),
            cpu_us_per_job: cpu.as_secs_f64() * 1e6 / self.jobs as f64,
            redis_cpu_us_per_job: rcpu * 1e6 / self.jobs as f64,
            memory_per_job: Some((after - before) as f64 / self.jobs as f64),
            ..Row::default()
        })
    }

    fn recorder(
        hist: &Arc<Mutex<Histogram<u64>>>,
        done: &Arc<AtomicU64>,
    ) -> impl Fn(Job) -> std::future::Ready<Result<(), String>> + Send + Sync + 'static {
        let (hist, done) = (hist.clone(), done.clone());
        move |job: Job| {
            let us = latency_us(&job.payload);
            if let Ok(mut h) = hist.lock() {
                let _ = h.record(us.max(1));
            }
            done.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(()))
        }
    }

    async fn process_only(&mut self, size: usize, concurrency: u32) -> Res<Row> {
        let name = self.queue_name("proc");
        let queue = self.dl.queue(&name, &secrets(), QueueOptions::default())?;
        let fill = Progress::start(format!("fill for c={concurrency} {size} B"), self.jobs);
        Self::enqueue(
            std::slice::from_ref(&queue),
            self.jobs,
            size,
            100,
            &fill.done,
        )
        .await;
        fill.finish();
        let hist = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3)?));
        let progress = Progress::start(format!("process c={concurrency} {size} B"), self.jobs);
        let rcpu = redis_cpu(&mut self.raw).await?;
        let cpu = cpu_time();
        let t = Instant::now();
        let worker = self
            .dl
            .worker(
                &name,
                &secrets(),
                WorkerOptions::default().concurrency(concurrency),
            )?
            .start(Self::recorder(&hist, &progress.done));
        while progress.done.load(Ordering::Relaxed) < self.jobs {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let took = t.elapsed();
        let cpu = cpu_time().saturating_sub(cpu);
        let rcpu = redis_cpu(&mut self.raw).await? - rcpu;
        progress.finish();
        worker.shutdown(Duration::from_secs(10)).await;
        queue.shutdown().await;
        Ok(Row {
            scenario: format!("process, concurrency {concurrency}"),
            size,
            jobs: self.jobs,
            secs: took.as_secs_f64(),
            cpu_us_per_job: cpu.as_secs_f64() * 1e6 / self.jobs as f64,
            redis_cpu_us_per_job: rcpu * 1e6 / self.jobs as f64,
            ..Row::default()
        })
    }

    /// Producer and worker at once, each result awaited; `rate` paces the adds (jobs/s).
    async fn end_to_end(&mut self, size: usize, rate: Option<f64>) -> Res<Row> {
        let name = self.queue_name("e2e");
        let queue = self.dl.queue(&name, &secrets(), QueueOptions::default())?;
        let hist = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3)?));
        let adds = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3)?));
        let handled = Arc::new(AtomicU64::new(0));
        let worker = self
            .dl
            .worker(&name, &secrets(), WorkerOptions::default().concurrency(256))?
            .start(Self::recorder(&hist, &handled));
        let label = match rate {
            Some(r) => format!("end-to-end {r:.0}/s {size} B"),
            None => format!("end-to-end {size} B"),
        };
        let before = used_memory(&mut self.raw).await?;
        // Redis' latency monitor: what stalled inside Redis during this run.
        let _: redis::RedisResult<()> = redis::cmd("LATENCY")
            .arg("RESET")
            .query_async(&mut self.raw)
            .await;
        let progress = Progress::start(label, self.jobs);
        let n = self.jobs;
        let next = Arc::new(AtomicU64::new(0));
        let rcpu = redis_cpu(&mut self.raw).await?;
        let cpu = cpu_time();
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..512 {
            let (queue, next, done) = (queue.clone(), next.clone(), progress.done.clone());
            let adds = adds.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    if let Some(rate) = rate {
                        let due = t + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let added = timed_add(&queue, size, &adds).await;
                    match added {
                        Ok(h) => {
                            if let Err(e) = h.result().await {
                                eprintln!("result lost: {e}");
                            }
                        }
                        Err(e) => eprintln!("add failed: {e}"),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        let took = t.elapsed();
        let cpu = cpu_time().saturating_sub(cpu);
        let rcpu = redis_cpu(&mut self.raw).await? - rcpu;
        progress.finish();
        worker.shutdown(Duration::from_secs(10)).await;
        // What completed jobs left: give the producer a moment to acknowledge the last events.
        let stalls = self.stalls().await;
        let left = self.residue(&name, queue.producer_id()).await?;
        let after = used_memory(&mut self.raw).await?;
        queue.shutdown().await;
        let latency = hist.lock().map(|h| h.clone()).ok();
        Ok(Row {
            scenario: match rate {
                Some(r) => format!("end-to-end at {r:.0} jobs/s"),
                None => "end-to-end, full rate".to_owned(),
            },
            size,
            jobs: n,
            secs: took.as_secs_f64(),
            cpu_us_per_job: cpu.as_secs_f64() * 1e6 / n as f64,
            redis_cpu_us_per_job: rcpu * 1e6 / n as f64,
            latency,
            add_latency: adds.lock().map(|h| h.clone()).ok(),
            left_bytes: Some(after - before),
            left_items: Some(left),
            stalls,
            ..Row::default()
        })
    }

    /// A steady trickle, Sockethub's normal load: `queues` queues, each with its producer
    /// and a worker of concurrency 1 in this process, each queue given `per_queue` jobs/s
    /// (the queues' adds spread evenly over each second) for `secs` seconds, every result
    /// awaited. Redis CPU per job, add→handler latency; then the same queues and workers
    /// left idle for `idle_secs`: what Redis spends on them (CPU, commands per second).
    async fn trickle(
        &mut self,
        size: usize,
        queues: usize,
        per_queue: f64,
        secs: f64,
        idle_secs: f64,
    ) -> Res<Row> {
        let base = self.queue_name("trickle");
        let names: Vec<String> = (0..queues).map(|i| format!("{base}-{i}")).collect();
        let hist = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3)?));
        let adds = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3)?));
        let handled = Arc::new(AtomicU64::new(0));
        let mut qs = Vec::with_capacity(queues);
        let mut workers = Vec::with_capacity(queues);
        for name in &names {
            qs.push(self.dl.queue(name, &secrets(), QueueOptions::default())?);
            workers.push(
                self.dl
                    .worker(name, &secrets(), WorkerOptions::default().concurrency(1))?
                    .start(Self::recorder(&hist, &handled)),
            );
        }
        // Let every worker make its group and block in its first read.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let per_queue_jobs = (per_queue * secs).ceil().max(1.0) as u64;
        let n = per_queue_jobs * queues as u64;
        let label = format!("trickle {queues}q × {per_queue}/s {size} B");
        let progress = Progress::start(label, n);
        let rcpu = redis_cpu(&mut self.raw).await?;
        let cpu = cpu_time();
        let t = Instant::now();
        let total_rate = per_queue * queues as f64;
        let mut tasks = Vec::with_capacity(queues);
        for (q, queue) in qs.iter().enumerate() {
            let (queue, done, adds) = (queue.clone(), progress.done.clone(), adds.clone());
            // Queue q's adds come at q / total_rate past each of its periods.
            let offset = q as f64 / total_rate;
            tasks.push(tokio::spawn(async move {
                let mut results = tokio::task::JoinSet::new();
                for i in 0..per_queue_jobs {
                    let due = t + Duration::from_secs_f64(offset + i as f64 / per_queue);
                    tokio::time::sleep_until(due.into()).await;
                    let added = timed_add(&queue, size, &adds).await;
                    let done = done.clone();
                    match added {
                        Ok(h) => {
                            results.spawn(async move {
                                if let Err(e) = h.result().await {
                                    eprintln!("result lost: {e}");
                                }
                                done.fetch_add(1, Ordering::Relaxed);
                            });
                        }
                        Err(e) => {
                            eprintln!("add failed: {e}");
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                while results.join_next().await.is_some() {}
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        let took = t.elapsed();
        let cpu = cpu_time().saturating_sub(cpu);
        let rcpu = redis_cpu(&mut self.raw).await? - rcpu;
        progress.finish();
        // The same process, idle: let the last acknowledgements go, then watch.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let commands_before = commands_processed(&mut self.raw).await?;
        let idle_cpu = redis_cpu(&mut self.raw).await?;
        tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
        let idle_cpu = redis_cpu(&mut self.raw).await? - idle_cpu;
        // Less the INFO calls of this measurement itself.
        let commands = commands_processed(&mut self.raw)
            .await?
            .saturating_sub(commands_before + 2);
        for w in &workers {
            w.shutdown(Duration::from_secs(10)).await;
        }
        let mut left = 0;
        for (name, queue) in names.iter().zip(&qs) {
            left += self.residue(name, queue.producer_id()).await?;
        }
        for queue in &qs {
            queue.shutdown().await;
        }
        Ok(Row {
            scenario: format!(
                "trickle, {queues} queue{} at {per_queue} jobs/s{}",
                if queues == 1 { "" } else { "s" },
                if queues == 1 { "" } else { " each" }
            ),
            size,
            jobs: n,
            secs: took.as_secs_f64(),
            cpu_us_per_job: cpu.as_secs_f64() * 1e6 / n as f64,
            redis_cpu_us_per_job: rcpu * 1e6 / n as f64,
            latency: hist.lock().map(|h| h.clone()).ok(),
            add_latency: adds.lock().map(|h| h.clone()).ok(),
            left_items: Some(left),
            idle: Some((
                idle_secs,
                idle_cpu * 1e3 / idle_secs,
                commands as f64 / idle_secs,
            )),
            ..Row::default()
        })
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<36} {:>6} {:>9} {:>7} {:>6} {:>22} {:>9} {:>7} {:>7}",
        "scenario",
        "bytes",
        "jobs/s",
        "ceiling",
        "ratio",
        "add→handler p50/99/99.9",
        "B/queued",
        "cpu µs",
        "redis µs"
    );
    for r in rows {
        let lat = r.latency.as_ref().map_or("-".to_owned(), |h| {
            format!(
                "{}/{}/{} ms",
                fmt_ms(h.value_at_quantile(0.5)),
                fmt_ms(h.value_at_quantile(0.99)),
                fmt_ms(h.value_at_quantile(0.999))
            )
        });
        let ratio = if r.ceiling > 0.0 && r.scenario != "redis-benchmark XADD" {
            format!("{:.0}%", 100.0 * r.rate() / r.ceiling)
        } else {
            "-".to_owned()
        };
        println!(
            "{:<36} {:>6} {:>9.0} {:>7.0} {:>6} {:>22} {:>9} {:>7} {:>7}",
            r.scenario,
            r.size,
            r.rate(),
            r.ceiling,
            ratio,
            lat,
            r.memory_per_job
                .map_or("-".to_owned(), |m| format!("{m:.0}")),
            if r.cpu_us_per_job > 0.0 {
                format!("{:.1}", r.cpu_us_per_job)
            } else {
                "-".to_owned()
            },
            if r.redis_cpu_us_per_job > 0.0 {
                format!("{:.1}", r.redis_cpu_us_per_job)
            } else {
                "-".to_owned()
            },
        );
    }
    for r in rows.iter() {
        if let Some(stalls) = &r.stalls {
            let seen: Vec<String> = stalls
                .iter()
                .map(|(e, ms)| format!("{e} {ms} ms"))
                .collect();
            println!(
                "{} ({} B): Redis stalls of {STALL_MS} ms or more: {}",
                r.scenario,
                r.size,
                if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen.join(", ")
                }
            );
        }
    }
    for r in rows.iter().filter(|r| r.left_items.is_some()) {
        println!(
            "{} ({} B): every job ended and its result was read; left in Redis: {} entries, \
             events or markers",
            r.scenario,
            r.size,
            r.left_items.unwrap_or_default()
        );
    }
    for r in rows.iter() {
        if let Some((secs, cpu_ms, commands)) = r.idle {
            println!(
                "{} ({} B), then idle for {secs:.0} s: Redis CPU {cpu_ms:.2} ms/s, {commands:.0} commands/s",
                r.scenario, r.size
            );
        }
    }
    let adds: Vec<&Row> = rows.iter().filter(|r| r.add_latency.is_some()).collect();
    if !adds.is_empty() {
        println!("\nadd() → Redis confirmed the job, end-to-end and trickle runs:");
    }
    for r in adds {
        if let Some(h) = &r.add_latency {
            println!(
                "  {:<36} {:>6} B  p50/p99/p99.9 {}/{}/{} ms",
                r.scenario,
                r.size,
                fmt_ms(h.value_at_quantile(0.5)),
                fmt_ms(h.value_at_quantile(0.99)),
                fmt_ms(h.value_at_quantile(0.999))
            );
        }
    }
}

fn fmt_ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// `--chaos N`: the long chaos run (`datalayer_tests::chaos`), this binary re-run with
/// `--chaos-worker` as its worker processes.
async fn chaos(
    jobs: usize,
    rate: Option<f64>,
    add_wait_ms: u64,
    restarts: usize,
    json: bool,
) -> Res<()> {
    let exe = std::env::current_exe()?;
    let rate = rate.unwrap_or(1_000.0).max(1.0) as u32;
    let cfg = datalayer_tests::chaos::ChaosConfig {
        jobs,
        workers: 4,
        redis_restarts: restarts,
        in_flight: 5_000,
        rate,
        add_wait: Duration::from_millis(add_wait_ms),
        deadline: Duration::from_secs(120 + 2 * (jobs as u64 / u64::from(rate))),
        worker: Arc::new(move |url: &str, queue: &str, log: &std::path::Path| {
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("--chaos-worker").arg(url).arg(queue).arg(log);
            cmd
        }),
    };
    let r = datalayer_tests::chaos::run(cfg).await?;
    let (p50, p99, max) = r.latency_ms;
    if json {
        let out = json!({
            "chaos_jobs": jobs, "rate": rate, "completed": r.completed,
            "duplicates": r.duplicates, "max_runs": r.max_runs,
            "duplicates_readded": r.duplicates_readded,
            "duplicates_without_a_killed_worker": r.duplicates_unexplained,
            "unavailable": r.unavailable, "unconfirmed": r.unconfirmed,
            "add_to_outcome_ms": { "p50": p50, "p99": p99, "max": max },
            "worker_kills": r.worker_kills, "redis_restarts": r.redis_restarts,
            "connection_kills": r.connection_kills, "garbage": r.garbage,
            "proxy_faults": r.proxy_faults,
            "secs": r.elapsed.as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "chaos: {} of {jobs} jobs ended, each once, with its own result, in {:.1} s at {rate} adds/s\n\
             faults: {} worker processes SIGKILLed, {} Redis kill -9 + restarts, {} CLIENT KILL rounds, \
             {} garbage entries and forged events, {} proxy faults (replies swallowed, pipelines cut)\n\
             adds answered Unavailable: {} (none ran), Unconfirmed: {} (added again, ran once)\n\
             jobs run twice or more: {} (most runs of one job: {}); of them added again after \
             Unconfirmed: {}, with no run in a killed worker: {}\n\
             add -> outcome under faults: p50 {p50} ms, p99 {p99} ms, max {max} ms\n\
             no plaintext in Redis or in the AOF",
            r.completed,
            r.elapsed.as_secs_f64(),
            r.worker_kills,
            r.redis_restarts,
            r.connection_kills,
            r.garbage,
            r.proxy_faults,
            r.unavailable,
            r.unconfirmed,
            r.duplicates,
            r.max_runs,
            r.duplicates_readded,
            r.duplicates_unexplained,
        );
    }
    Ok(())
}

#[tokio::main]
// A let chain would do, but not on the declared MSRV (1.85).
#[allow(clippy::collapsible_if)]
async fn main() -> Res<()> {
    let argv: Vec<String> = std::env::args().collect();
    if let [_, flag, url, queue, log] = argv.as_slice() {
        if flag == "--chaos-worker" {
            datalayer_tests::chaos::worker_main(url, queue, std::path::Path::new(log)).await;
            return Ok(());
        }
    }
    let args = args()?;
    if let Some(jobs) = args.chaos {
        return chaos(jobs, args.rate, args.add_wait_ms, args.restarts, args.json).await;
    }
    since_start();
    if args.cluster {
        let size = args.sizes.first().copied().unwrap_or(200);
        return cluster_mode::run(args.jobs, size, args.json).await;
    }
    let (server, url) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let s = RedisServer::start(Persistence::None);
            let url = s.url();
            (Some(s), url)
        }
    };
    let addr = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .trim_end_matches('/')
        .to_owned();
    let (host, port) = addr.rsplit_once(':').ok_or("REDIS_URL needs host:port")?;
    let prefix = format!("dlbench{:08x}", std::process::id());
    let dl = DataLayer::connect(
        &url,
        Options::default()
            .prefix(prefix.clone())
            .idle_reads(args.idle_reads),
    )
    .await?;
    let raw = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let mut raw = raw;
    if server.is_some() {
        // Our own server: record Redis-side stalls (LATENCY LATEST after each end-to-end run).
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("latency-monitor-threshold")
            .arg(STALL_MS)
            .query_async(&mut raw)
            .await?;
    }
    let mut bench = Bench {
        dl,
        raw,
        host: host.to_owned(),
        port: port.parse()?,
        prefix: prefix.clone(),
        jobs: args.jobs,
        run: 0,
    };
    eprintln!(
        "datalayer-bench: {} jobs per scenario, payloads {:?} B, redis {}{}",
        args.jobs,
        args.sizes,
        url,
        if args.quick { " (quick)" } else { "" }
    );
    let mut rows: Vec<Row> = Vec::new();
    for &size in &args.sizes {
        let (ceiling, xadd_cpu) = bench.ceiling(size).await?;
        rows.push(Row {
            scenario: "redis-benchmark XADD".into(),
            size,
            jobs: 1,
            secs: 1.0 / ceiling,
            ceiling,
            redis_cpu_us_per_job: xadd_cpu,
            ..Row::default()
        });
        let run = |what: &str| args.only.as_deref().is_none_or(|o| o == what);
        let mut sized = Vec::new();
        if run("enqueue") || run("enqueue1") {
            sized.push(bench.enqueue_only(size, 1, 1).await?);
        }
        if run("enqueue") || run("enqueue100") {
            sized.push(bench.enqueue_only(size, 100, 1).await?);
        }
        if run("enqueue") || run("enqueue_many") {
            sized.push(bench.enqueue_only(size, 1, 100).await?);
        }
        if run("process") || run("process1") || run("process256") {
            let levels: &[u32] = if run("process") {
                &[1, 16, 256]
            } else if run("process1") {
                &[1]
            } else {
                &[256]
            };
            for &c in levels {
                sized.push(bench.process_only(size, c).await?);
            }
        }
        if let Some(rate) = args.rate {
            sized.push(bench.end_to_end(size, Some(rate)).await?);
        } else if run("e2e") {
            let full = bench.end_to_end(size, None).await?;
            let half = full.rate() / 2.0;
            sized.push(full);
            sized.push(bench.end_to_end(size, Some(half)).await?);
        }
        if args.rate.is_none() && (run("trickle") || run("trickle1") || run("trickle1000")) {
            let (secs, idle) = if args.quick { (2.0, 2.0) } else { (10.0, 5.0) };
            if run("trickle") || run("trickle1") {
                sized.push(bench.trickle(size, 1, 200.0, secs, idle).await?);
            }
            if run("trickle") || run("trickle1000") {
                sized.push(bench.trickle(size, 1000, 1.0, secs, idle).await?);
            }
        }
        for mut r in sized {
            r.ceiling = ceiling;
            rows.push(r);
        }
    }
    // Nothing of ours may remain.
    let mut conn = bench.raw.clone();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await?;
    if args.json {
        let out = json!({
            "jobs_per_scenario": args.jobs,
            "quick": args.quick,
            "keys_left": left.len(),
            "results": rows.iter().map(Row::json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&rows);
        println!("\nkeys left behind: {}", left.len());
    }
    drop(server);
    if !left.is_empty() {
        return Err(format!("keys left behind: {left:?}").into());
    }
    Ok(())
}
