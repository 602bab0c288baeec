//! Integration-test support: the scenarios, processes and fault proxies of the tests,
//! over the servers of `datalayer-testkit` (re-exported here).
//!
//! Every test starts its own server (never the one on 6379): the binary is `redis-server` from
//! `PATH`, or the path in `REDIS_SERVER`. A server can be stopped, killed and restarted on the
//! same port with the same data directory, so tests can inject real faults.

pub mod chaos;
pub mod otel;
pub mod proxy;

pub use datalayer_testkit::{KillOnDrop, Persistence, RedisServer, StartError, cluster};

/// The server secret every test uses.
#[must_use]
pub fn secrets() -> datalayer_core::keys::SecretRing {
    use datalayer_core::keys::{KeyId, Secret, SecretRing};
    SecretRing::new(KeyId(1), Secret::from_bytes([42; 32]))
}

/// A data layer on `server` with default options.
pub async fn layer(server: &RedisServer) -> datalayer_tokio::DataLayer {
    datalayer_tokio::DataLayer::connect(&server.url(), datalayer_tokio::Options::default())
        .await
        .expect("connect")
}

/// A plain connection of the test's own, to look at (and damage) what is in Redis.
pub async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// Every command Redis ran since its stats were reset (`CONFIG RESETSTAT`), by name
/// (`INFO commandstats`: `xreadgroup`, `evalsha`, `client|unblock`, ...).
pub async fn command_calls(
    conn: &mut redis::aio::MultiplexedConnection,
) -> std::collections::BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("info");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// `CONFIG RESETSTAT`: command counts start from zero.
pub async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .expect("resetstat");
}

/// `CLIENT LIST`.
pub async fn client_list(conn: &mut redis::aio::MultiplexedConnection) -> String {
    redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .expect("client list")
}

/// Every key and every value in Redis, as the raw bytes Redis holds (not a debug rendering,
/// which would print binary values as numbers and hide a marker inside them), for scans
/// that look for plaintext.
pub async fn every_key_and_value(conn: &mut redis::aio::MultiplexedConnection) -> Vec<u8> {
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(conn)
        .await
        .expect("keys");
    let mut out = Vec::new();
    for key in keys {
        out.extend_from_slice(&key);
        out.push(b'\n');
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(conn)
            .await
            .expect("type");
        let mut cmd = match kind.as_str() {
            "stream" => redis::cmd("XRANGE"),
            "hash" => redis::cmd("HGETALL"),
            "zset" => redis::cmd("ZRANGE"),
            "string" => redis::cmd("GET"),
            "list" => redis::cmd("LRANGE"),
            "set" => redis::cmd("SMEMBERS"),
            other => panic!("unexpected key type {other}"),
        };
        cmd.arg(&key);
        match kind.as_str() {
            "stream" => {
                cmd.arg("-").arg("+");
            }
            "zset" => {
                cmd.arg(0).arg(-1).arg("WITHSCORES");
            }
            "list" => {
                cmd.arg(0).arg(-1);
            }
            _ => {}
        }
        let value: redis::Value = cmd.query_async(conn).await.expect("read key");
        flatten(&value, &mut out);
    }
    out
}

fn flatten(value: &redis::Value, out: &mut Vec<u8>) {
    use redis::Value as V;
    match value {
        V::BulkString(b) => out.extend_from_slice(b),
        V::SimpleString(s) => out.extend_from_slice(s.as_bytes()),
        V::VerbatimString { text, .. } => out.extend_from_slice(text.as_bytes()),
        V::Array(items) | V::Set(items) => items.iter().for_each(|v| flatten(v, out)),
        V::Map(pairs) => {
            for (k, v) in pairs {
                flatten(k, out);
                flatten(v, out);
            }
        }
        other => out.extend_from_slice(format!("{other:?}").as_bytes()),
    }
    out.push(b'\n');
}

/// Whether `needle` occurs in `haystack`.
#[must_use]
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// For the tests' worker processes: connects to `url` and makes a worker of `queue` with the
/// tests' secrets, or exits with a message (status 1).
pub async fn worker_process(
    url: &str,
    queue: &str,
    options: datalayer_tokio::WorkerOptions,
) -> (datalayer_tokio::DataLayer, datalayer_tokio::JobWorker) {
    let dl =
        match datalayer_tokio::DataLayer::connect(url, datalayer_tokio::Options::default()).await {
            Ok(dl) => dl,
            Err(e) => {
                eprintln!("connect: {e}");
                std::process::exit(1);
            }
        };
    match dl.worker(queue, &secrets(), options) {
        Ok(w) => (dl, w),
        Err(e) => {
            eprintln!("worker: {e}");
            std::process::exit(1);
        }
    }
}

/// `JobQueue::stats` through a queue's life, on any backend: jobs waiting (with the age of
/// the oldest), running (with the oldest), delayed, dead, the live workers.
pub async fn stats_scenario(dl: &datalayer_tokio::DataLayer) {
    use datalayer_core::retry::{Backoff, RetryPolicy};
    use datalayer_tokio::{Job, QueueOptions, QueueStats, WorkerOptions};
    use std::time::Duration;

    async fn until(
        queue: &datalayer_tokio::JobQueue,
        what: &str,
        ok: impl Fn(&QueueStats) -> bool,
    ) -> QueueStats {
        let start = std::time::Instant::now();
        loop {
            let stats = queue.stats().await.expect("stats");
            if ok(&stats) {
                return stats;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: stats stayed {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let now = datalayer_tokio::now;
    let queue = dl
        .queue("stats", &secrets(), QueueOptions::default())
        .expect("queue");
    let empty = queue.stats().await.expect("stats");
    assert_eq!(
        (empty.jobs, empty.pending, empty.dead),
        (0, 0, 0),
        "{empty:?}"
    );
    assert_eq!((empty.oldest_waiting, empty.oldest_running), (None, None));
    let mut handles = Vec::new();
    for i in 0..5 {
        handles.push(queue.add("s", &serde_json::json!(i)).await.expect("add"));
    }
    let later = datalayer_core::producer::AddJob {
        session_id: "s".into(),
        payload: b"99".to_vec(),
        delay: Duration::from_millis(60_000),
        ..Default::default()
    };
    queue.add_job(later).await.expect("delayed add");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let waiting = queue.stats().await.expect("stats");
    assert_eq!(
        (
            waiting.jobs,
            waiting.pending,
            waiting.delayed,
            waiting.workers
        ),
        (5, 0, 1, 0),
        "{waiting:?}"
    );
    assert!(
        waiting.oldest_waiting_age(now()) >= Duration::from_millis(30),
        "{waiting:?}"
    );
    assert_eq!(waiting.oldest_running, None);

    // A worker of concurrency 2 holds its jobs until released; "fail" dies at once.
    let (release, gate) = tokio::sync::watch::channel(false);
    let retry = RetryPolicy::new(1, Backoff::None);
    let worker = dl
        .worker(
            "stats",
            &secrets(),
            WorkerOptions::default().concurrency(2).retry(retry),
        )
        .expect("worker")
        .start(move |job: Job| {
            let mut gate = gate.clone();
            async move {
                let v: serde_json::Value = job.json().map_err(|e| e.to_string())?;
                if v == serde_json::json!("fail") {
                    return Err("failed on purpose".to_owned());
                }
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, String>(v)
            }
        });
    let running = until(&queue, "two running", |s| s.pending == 2 && s.workers == 1).await;
    assert_eq!(running.jobs, 5, "{running:?}");
    assert!(running.oldest_running.is_some() && running.oldest_waiting.is_some());
    assert!(
        running.oldest_running < running.oldest_waiting,
        "{running:?}"
    );
    let _ = release.send(true);
    for h in handles {
        h.result().await.expect("result");
    }
    let dead = queue.add("s", &"fail").await.expect("add");
    dead.result().await.expect("an outcome");
    let settled = until(&queue, "settled", |s| s.jobs == 0 && s.dead == 1).await;
    assert_eq!((settled.pending, settled.delayed), (0, 1), "{settled:?}");
    assert_eq!(
        (settled.oldest_waiting, settled.oldest_running),
        (None, None)
    );
    worker.shutdown(Duration::from_secs(5)).await;
    queue.shutdown().await;
}

/// Dead letters through an operator's hands, on any backend: listed by page and opened,
/// retried one (twice: the second finds it gone), retried all, deleted.
pub async fn dead_letters_scenario(dl: &datalayer_tokio::DataLayer) {
    use datalayer_core::retry::{Backoff, RetryPolicy};
    use datalayer_tokio::{Job, Outcome, QueueEvent, QueueOptions, Revival, WorkerOptions};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    let queue = dl
        .queue("dead", &secrets(), QueueOptions::default())
        .expect("queue");
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let worker = dl
        .worker(
            "dead",
            &secrets(),
            WorkerOptions::default().retry(RetryPolicy::new(2, Backoff::None)),
        )
        .expect("worker")
        .start(move |job: Job| {
            let failing = flag.load(Ordering::SeqCst);
            async move {
                let n: u64 = job.json().map_err(|e| e.to_string())?;
                if failing {
                    return Err(format!("job {n} failed on purpose"));
                }
                Ok::<_, String>(n * 10)
            }
        });
    let mut ids = Vec::new();
    for n in 0..3u64 {
        let h = queue.add("s", &n).await.expect("add");
        ids.push(h.id.clone());
        match h.result().await.expect("outcome") {
            Outcome::Failed(reason) => assert!(reason.contains("on purpose"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(queue.stats().await.expect("stats").dead, 3);

    let first = queue.dead_letters(None, 2).await.expect("page");
    assert_eq!(first.letters.len(), 2);
    let second = queue.dead_letters(first.next, 2).await.expect("page");
    assert_eq!((second.letters.len(), second.next), (1, None));
    let letters: Vec<_> = first
        .letters
        .iter()
        .chain(&second.letters)
        .cloned()
        .collect();
    for (n, letter) in letters.iter().enumerate() {
        assert_eq!(letter.job.as_ref(), Some(&ids[n]));
        assert_eq!(letter.attempt, Some(2));
        assert_eq!(
            letter.reason.as_deref(),
            Ok(format!("job {n} failed on purpose").as_str())
        );
        let record = letter.record.as_ref().expect("opens");
        assert_eq!(record.payload, n.to_string().into_bytes());
    }

    failing.store(false, Ordering::SeqCst);
    let mut events = queue.events();
    let results = queue.retry_dead(&letters[..1]).await.expect("retry");
    assert!(matches!(results[0].1, Revival::Queued(_)), "{results:?}");
    let again = queue.retry_dead(&letters[..1]).await.expect("retry again");
    assert_eq!(again[0].1, Revival::Gone);
    assert_eq!(queue.retry_all_dead(None).await.expect("retry all"), 2);
    let mut completed = std::collections::BTreeMap::new();
    while completed.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Ok(QueueEvent::Completed { job, result })) => {
                completed.insert(job, String::from_utf8_lossy(&result).into_owned());
            }
            Ok(Ok(_)) => {}
            other => panic!("retried jobs did not complete: {other:?} after {completed:?}"),
        }
    }
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(completed.get(id), Some(&(n * 10).to_string()), "{id}");
    }
    assert_eq!(queue.stats().await.expect("stats").dead, 0);

    // One more dead letter, deleted.
    failing.store(true, Ordering::SeqCst);
    let h = queue.add("s", &7u64).await.expect("add");
    assert!(matches!(h.result().await, Ok(Outcome::Failed(_))));
    let page = queue.dead_letters(None, 10).await.expect("page");
    let entries: Vec<_> = page.letters.iter().map(|l| l.entry).collect();
    assert_eq!(queue.delete_dead(&entries).await.expect("delete"), 1);
    assert_eq!(queue.delete_dead(&entries).await.expect("delete again"), 0);
    assert_eq!(queue.stats().await.expect("stats").dead, 0);
    worker.shutdown(Duration::from_secs(5)).await;
    queue.shutdown().await;
}

/// A delayed job run now, another withdrawn by its producer (its handle ends), on any
/// backend.
pub async fn delayed_scenario(dl: &datalayer_tokio::DataLayer) {
    use datalayer_core::producer::AddJob;
    use datalayer_tokio::{DelayedWithdrawal, Job, Outcome, QueueOptions, WorkerOptions};
    use std::time::Duration;

    let queue = dl
        .queue("later", &secrets(), QueueOptions::default())
        .expect("queue");
    let worker = dl
        .worker("later", &secrets(), WorkerOptions::default())
        .expect("worker")
        .start(|job: Job| async move { Ok::<_, String>(job.payload.len()) });
    let delayed = || AddJob {
        session_id: "s".into(),
        payload: b"\"x\"".to_vec(),
        delay: Duration::from_millis(600_000),
        ..AddJob::default()
    };
    let soon = queue.add_job(delayed()).await.expect("add");
    let never = queue.add_job(delayed()).await.expect("add");
    assert_eq!(queue.stats().await.expect("stats").delayed, 2);
    assert!(queue.run_now(&soon.id).await.expect("run now"));
    let id = never.id.clone();
    assert_eq!(
        queue.cancel_delayed(&id).await.expect("cancel"),
        DelayedWithdrawal::Withdrawn
    );
    let ran = tokio::time::timeout(Duration::from_secs(10), soon.result())
        .await
        .expect("in time");
    assert!(matches!(ran, Ok(Outcome::Completed(_))), "{ran:?}");
    let withdrawn = tokio::time::timeout(Duration::from_secs(10), never.result())
        .await
        .expect("in time");
    assert_eq!(
        withdrawn.ok(),
        Some(Outcome::Failed("withdrawn before it ran".into()))
    );
    assert_eq!(
        queue.cancel_delayed(&id).await.expect("cancel again"),
        DelayedWithdrawal::NotDelayed
    );
    assert!(!queue.run_now(&id).await.expect("run now"));
    assert_eq!(queue.stats().await.expect("stats").delayed, 0);
    worker.shutdown(Duration::from_secs(5)).await;
    queue.shutdown().await;
}
