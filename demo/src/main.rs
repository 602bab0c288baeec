//! The README's first command: a queue and a pool of workers over Redis.
//!
//! It uses `REDIS_URL` if set, else starts its own `redis-server` on a free loopback port,
//! else (no `redis-server` on the `PATH`) runs on the in-process backend and says so;
//! pushes a few thousand sealed jobs through a producer and four workers, shows progress,
//! prints results, jobs/s and the connection count, and leaves no keys behind.

use std::io::Write;
use std::time::{Duration, Instant};

use datalayer_core::keys::{KeyId, Secret, SecretRing};
use datalayer_testkit::{Persistence, RedisServer, StartError};
use datalayer_tokio::{DataLayer, Job, Options, OsRandom, Outcome, QueueOptions, WorkerOptions};
use serde_json::{Value, json};

const JOBS: usize = 5_000;

/// Where the demo runs.
enum Target {
    /// `REDIS_URL`, or a server of the demo's own (stopped when this is dropped).
    Redis {
        url: String,
        _server: Option<RedisServer>,
    },
    /// No Redis at all: the in-process backend.
    Memory,
}

/// `REDIS_URL`, else a `redis-server` of its own (the testkit's: a free loopback port,
/// checked to be its child's), else the in-process backend.
fn target() -> Result<Target, String> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Ok(Target::Redis { url, _server: None });
    }
    match RedisServer::try_start(Persistence::None) {
        Ok(server) => Ok(Target::Redis {
            url: server.url(),
            _server: Some(server),
        }),
        Err(StartError::NotInstalled(_)) => Ok(Target::Memory),
        Err(StartError::Failed(e)) => Err(format!("cannot start redis-server: {e}")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = target()?;
    let dl = match &target {
        Target::Redis { url, .. } => {
            println!(
                "datalayer demo: {JOBS} sealed jobs through a queue and 4 workers on {}\n",
                datalayer_tokio::redact_url(url)
            );
            DataLayer::connect(url, Options::default()).await?
        }
        Target::Memory => {
            println!(
                "datalayer demo: {JOBS} sealed jobs through a queue and 4 workers, on the \
                 in-process backend\n\n  No redis-server on the PATH and no REDIS_URL: this \
                 runs on DataLayer::in_memory (the core's model of Redis, in this process).\n  \
                 To run on Redis: install redis-server (sudo apt-get install redis-server) or \
                 set REDIS_URL=redis://host:port.\n"
            );
            DataLayer::in_memory(Options::default())?
        }
    };
    let secrets = SecretRing::new(KeyId(1), Secret::generate(&mut OsRandom));
    dl.health(Duration::from_secs(2)).await?;
    let queue_name = format!("demo-{}", std::process::id());
    let queue = dl.queue(&queue_name, &secrets, QueueOptions::default())?;
    let mut workers = Vec::new();
    for w in 0..4 {
        let worker = dl.worker(
            &queue_name,
            &secrets,
            WorkerOptions::default().concurrency(16),
        )?;
        workers.push(worker.start(move |job: Job| async move {
            let msg: Value = job.json().map_err(|e| e.to_string())?;
            let text = msg["object"]["content"].as_str().unwrap_or_default();
            Ok::<_, String>(json!({ "worker": w, "reply": text.to_uppercase() }))
        }));
    }

    let started = Instant::now();
    // Each add returns once Redis has the job; adding concurrently lets them share pipelines.
    let mut jobs = Vec::with_capacity(JOBS);
    for i in 0..JOBS {
        let queue = queue.clone();
        jobs.push(tokio::spawn(async move {
            let msg = json!({
                "@context": "https://www.w3.org/ns/activitystreams",
                "type": "send",
                "actor": { "id": format!("user{}@irc.example", i % 50) },
                "object": { "type": "message", "content": format!("hello #{i} ✓") },
            });
            let handle = queue.add(&format!("session-{}", i % 50), &msg).await?;
            let id = handle.id.clone();
            Ok::<_, datalayer_tokio::Error>((id, handle.result().await?))
        }));
    }
    let mut done = 0;
    let mut samples = Vec::new();
    for job in jobs {
        match job.await?? {
            (id, Outcome::Completed(r)) if samples.len() < 3 => {
                samples.push((id, String::from_utf8_lossy(&r).into_owned()))
            }
            (_, Outcome::Completed(_)) => {}
            (id, Outcome::Failed(reason)) => println!("job {id} failed: {reason}"),
        }
        done += 1;
        if done % 250 == 0 || done == JOBS {
            print!("\r  completed {done:>5} / {JOBS}");
            std::io::stdout().flush()?;
        }
    }
    let elapsed = started.elapsed();
    println!("\n");
    for (id, r) in &samples {
        println!("  {id} -> {r}");
    }
    println!(
        "\n{JOBS} jobs in {:.2} s: {:.0} jobs/s end to end (sealed, results awaited)",
        elapsed.as_secs_f64(),
        JOBS as f64 / elapsed.as_secs_f64()
    );

    let url = match &target {
        Target::Redis { url, .. } => url.clone(),
        Target::Memory => {
            for w in &workers {
                w.shutdown(Duration::from_secs(5)).await;
            }
            queue.shutdown().await;
            println!("keys left behind: {}", dl.memory_keys().len());
            return Ok(());
        }
    };
    if dl.is_cluster() {
        // The queue lives on one master; connections are per primary (see the README).
        for w in &workers {
            w.shutdown(Duration::from_secs(5)).await;
        }
        queue.shutdown().await;
        println!(
            "on a Redis Cluster: the queue's keys live on one master and were deleted; the \
             process held two connections per primary (commands, doorbells)"
        );
        return Ok(());
    }
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await?;
    let blocking = clients
        .lines()
        .filter(|l| l.contains("name=datalayer-blocker"))
        .count();
    println!(
        "connections to Redis: {} (the data layer's shared one; {blocking} for idle readers' \
         blocking reads: one per consumer name, so 4 for 4 workers of one queue, while workers \
         of different queues share one; and this demo's inspection)",
        clients.lines().count()
    );
    for w in &workers {
        w.shutdown(Duration::from_secs(5)).await;
    }
    queue.shutdown().await;
    let pattern = format!("dl:{{{queue_name}}}:*");
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await?;
    println!("keys left behind: {}", left.len());
    Ok(())
}
