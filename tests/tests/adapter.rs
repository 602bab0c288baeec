//! JobQueue and JobWorker over a real redis-server (started per test on a free port).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use datalayer_core::producer::AddJob;
use datalayer_core::retry::{Backoff, RetryPolicy};
use datalayer_tests::{
    KillOnDrop, Persistence, RedisServer, client_list, command_calls, contains,
    every_key_and_value, layer, raw, reset_stats, secrets,
};
use datalayer_tokio::{
    Compression, DataLayer, Error, Job, JobQueue, Outcome, QueueEvent, QueueOptions, Unreachable,
    WorkerHandle, WorkerOptions,
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(20);

async fn outcome(handle: datalayer_tokio::JobHandle) -> Outcome {
    tokio::time::timeout(WAIT, handle.result())
        .await
        .expect("job ended in time")
        .expect("queue running")
}

/// A queue with default options.
fn queue(dl: &DataLayer, name: &str) -> JobQueue {
    dl.queue(name, &secrets(), QueueOptions::default())
        .expect("queue")
}

/// A worker of `name` answering every job with [`echo`].
fn echo_worker(dl: &DataLayer, name: &str, options: WorkerOptions) -> WorkerHandle {
    dl.worker(name, &secrets(), options)
        .expect("worker")
        .start(echo)
}

async fn echo(job: Job) -> Result<Value, String> {
    let payload: Value = job.json().map_err(|e| e.to_string())?;
    Ok(json!({ "echo": payload, "session": job.session_id }))
}

/// XRANGE's shape: entries of (id, field/value pairs).
type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

#[tokio::test]
async fn round_trip_unicode_and_a_mebibyte() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    dl.health(Duration::from_secs(2)).await.expect("healthy");
    // Compression is opt-in (it would make lengths tell the content).
    let options = QueueOptions::default().compression(Compression::Above(1024));
    let queue = dl.queue("q", &secrets(), options).expect("queue");
    let text = "héllo wörld ✓ 你好 🚀🦀";
    let big = "ab".repeat(512 * 1024);
    let small = queue
        .add("s1", &json!({ "text": text }))
        .await
        .expect("add");
    let large = queue.add("s2", &json!({ "big": big })).await.expect("add");

    // Before any worker runs: the 1 MiB job sits compressed and sealed in the stream.
    let mut conn = raw(&server).await;
    let entries: Entries = redis::cmd("XRANGE")
        .arg("dl:{q}:jobs")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("xrange");
    assert_eq!(entries.len(), 2);
    let sealed = &entries[1]
        .1
        .iter()
        .find(|(k, _)| k == "e")
        .expect("field e")
        .1;
    assert!(
        sealed.len() < 64 * 1024,
        "1 MiB stored as {} bytes",
        sealed.len()
    );
    assert_eq!(sealed[3] & 1, 1, "compressed flag");

    let worker = echo_worker(&dl, "q", WorkerOptions::default().concurrency(2));
    let r: Value = outcome(small)
        .await
        .json()
        .unwrap_or_else(|e| panic!("not completed: {e}"));
    assert_eq!(r["echo"]["text"], text);
    assert_eq!(r["session"], "s1");
    let r: Value = outcome(large)
        .await
        .json()
        .unwrap_or_else(|e| panic!("not completed: {e}"));
    assert_eq!(r["echo"]["big"].as_str().map(str::len), Some(big.len()));
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn errors_fail_and_retries_back_off_then_dead_letter() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = queue(&dl, "q");
    let mut events = queue.events();
    let tries = Arc::new(AtomicU32::new(0));
    let seen = tries.clone();
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = starts.clone();
    let retry = RetryPolicy::new(
        3,
        Backoff::Fixed {
            delay: Duration::from_millis(200),
        },
    );
    let worker = dl
        .worker("q", &secrets(), WorkerOptions::default().retry(retry))
        .expect("worker")
        .start(move |job: Job| {
            let seen = seen.clone();
            started
                .lock()
                .expect("lock")
                .push(std::time::Instant::now());
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                if job.attempt < 3 {
                    Err::<(), _>(format!("attempt {} failed", job.attempt))
                } else {
                    panic!("third time: {}", job.id)
                }
            }
        });
    let handle = queue.add("s", &json!({})).await.expect("add");
    let id = handle.id.clone();
    match outcome(handle).await {
        Outcome::Failed(reason) => {
            assert_eq!(reason, format!("handler panicked: third time: {id}"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    // The attempts are spaced by the backoff (200 ms, fixed), not run back to back.
    let starts = starts.lock().expect("lock").clone();
    for pair in starts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(190), "attempts {gap:?} apart");
    }
    let mut failed = Vec::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        if let QueueEvent::Failed {
            reason, attempt, ..
        } = ev
        {
            failed.push((attempt, reason));
        }
    }
    assert_eq!(
        failed,
        [
            (1, "attempt 1 failed".to_owned()),
            (2, "attempt 2 failed".to_owned())
        ]
    );
    let mut conn = raw(&server).await;
    let dead: usize = xlen(&mut conn, "dl:{q}:dead").await;
    assert_eq!(dead, 1);
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_paused_queue_is_closed() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = queue(&dl, "q");
    let worker = echo_worker(&dl, "q", WorkerOptions::default());
    queue.pause().await.expect("pause");
    let err = queue.add("s", &json!(1)).await.expect_err("closed");
    assert!(matches!(err, Error::QueueClosed));
    assert_eq!(err.to_string(), "queue closed");
    queue.resume().await.expect("resume");
    for i in 0..5 {
        let h = queue.add("s", &json!(i)).await.expect("add");
        let r: Value = outcome(h)
            .await
            .json()
            .unwrap_or_else(|e| panic!("not completed: {e}"));
        assert_eq!(r["echo"], i);
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn concurrency_must_be_at_least_one() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let err = dl
        .worker("q", &secrets(), WorkerOptions::default().concurrency(0))
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "concurrency must be an integer >= 1, got 0"
    );
}

#[tokio::test]
async fn garbage_in_the_work_stream_is_dead_lettered_and_work_goes_on() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = queue(&dl, "q");
    let mut conn = raw(&server).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("dl:{q}:jobs")
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("group");
    for fields in [
        &["hello", "world"][..],
        &["j", "fake", "e", "DL\x01garbage"],
        &["e", "\u{0}"],
    ] {
        let mut cmd = redis::cmd("XADD");
        cmd.arg("dl:{q}:jobs").arg("*").arg(fields);
        let _: String = cmd.query_async(&mut conn).await.expect("xadd garbage");
    }
    let worker = echo_worker(&dl, "q", WorkerOptions::default());
    for i in 0..3 {
        let h = queue.add("s", &json!(i)).await.expect("add");
        assert!(matches!(outcome(h).await, Outcome::Completed(_)));
    }
    let dead: usize = xlen(&mut conn, "dl:{q}:dead").await;
    assert_eq!(dead, 3);
    let left: usize = xlen(&mut conn, "dl:{q}:jobs").await;
    assert_eq!(left, 0);
    worker.shutdown(Duration::from_secs(5)).await;
}

/// XLEN of `key` (0 for a missing key).
async fn xlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(conn)
        .await
        .expect("xlen")
}

/// HLEN of `key` (0 for a missing key).
async fn hlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    redis::cmd("HLEN")
        .arg(key)
        .query_async(conn)
        .await
        .expect("hlen")
}

#[tokio::test]
async fn no_plaintext_in_redis() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = queue(&dl, "q");
    let retry = RetryPolicy::new(
        2,
        Backoff::Fixed {
            delay: Duration::from_millis(60_000),
        },
    );
    let worker = dl
        .worker(
            "q",
            &secrets(),
            WorkerOptions::default().retry(retry).concurrency(4),
        )
        .expect("worker")
        .start(|job: Job| async move {
            let p: Value = job.json().map_err(|e| e.to_string())?;
            if p["fail"] == true {
                Err("MARKER-REASON-33".to_owned())
            } else {
                Ok(json!({ "r": "MARKER-RESULT-22" }))
            }
        });
    let mut handles = Vec::new();
    for i in 0..10 {
        let payload = json!({ "secret": "MARKER-PAYLOAD-11", "fail": i % 2 == 0 });
        handles.push(queue.add("MARKER-SESSION-44", &payload).await.expect("add"));
    }
    // Results are deleted once read: stop reading so they stay, then wait for the work.
    queue.disconnect().await;
    let mut conn = raw(&server).await;
    for _ in 0..200 {
        let delayed: usize = redis::cmd("ZCARD")
            .arg("dl:{q}:delayed")
            .query_async(&mut conn)
            .await
            .expect("zcard");
        let events: usize = xlen(&mut conn, "dl:{q}:events").await;
        if delayed == 5 && events == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The scan sees raw bytes: a marker inside a binary value is found (checked on a canary).
    let _: () = redis::cmd("SET")
        .arg("canary")
        .arg(b"\xff\x00MARKER-CANARY\xfe".as_slice())
        .query_async(&mut conn)
        .await
        .expect("canary");
    assert!(contains(
        &every_key_and_value(&mut conn).await,
        b"MARKER-CANARY"
    ));
    let _: () = redis::cmd("DEL")
        .arg("canary")
        .query_async(&mut conn)
        .await
        .expect("del");
    let everything = every_key_and_value(&mut conn).await;
    assert!(
        contains(&everything, b"dl:{q}:delayed"),
        "the retries wait, sealed"
    );
    for marker in [
        "MARKER-PAYLOAD",
        "MARKER-RESULT",
        "MARKER-REASON",
        "MARKER-SESSION",
    ] {
        assert!(
            !contains(&everything, marker.as_bytes()),
            "{marker} readable in Redis"
        );
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn results_are_not_lost_while_the_producer_is_away() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    // A replacement takes over under its predecessor's producer id.
    let as_first = || QueueOptions::default().producer_id("first");
    let first = dl.queue("q", &secrets(), as_first()).expect("queue");
    assert_eq!(first.producer_id(), "first");
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(first.add("s", &json!(i)).await.expect("add").id);
    }
    first.disconnect().await;
    let worker = echo_worker(&dl, "q", WorkerOptions::default().concurrency(4));
    // All complete while nobody listens.
    let mut conn = raw(&server).await;
    for _ in 0..400 {
        let n: usize = xlen(&mut conn, "dl:{q}:events:first").await;
        if n == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // A replacement instance receives every result; another producer of the queue none.
    let other = queue(&dl, "q");
    let mut others = other.events();
    let second = dl.queue("q", &secrets(), as_first()).expect("queue");
    let mut events = second.events();
    let mut done = std::collections::BTreeSet::new();
    while done.len() < ids.len() {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Ok(QueueEvent::Completed { job, .. })) => {
                done.insert(job);
            }
            Ok(Ok(_)) => {}
            other => panic!("events ended: {other:?} after {} results", done.len()),
        }
    }
    let want: std::collections::BTreeSet<_> = ids.into_iter().collect();
    assert_eq!(done, want);
    assert!(
        matches!(
            others.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ),
        "another producer received outcomes of the first one's jobs"
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_thousand_queues_share_a_handful_of_connections() {
    let server = RedisServer::start(Persistence::None);
    // Every idle reader in the merged reads (by default only the first 16 of each kind
    // are, the others wait on doorbells: tests/tests/doorbells.rs).
    let dl = DataLayer::connect(
        &server.url(),
        datalayer_tokio::Options::default().idle_reads(datalayer_tokio::IdleReads::Merged),
    )
    .await
    .expect("connect");
    let mut queues: Vec<JobQueue> = Vec::new();
    let mut workers = Vec::new();
    for i in 0..1000 {
        let name = format!("q{i}");
        queues.push(queue(&dl, &name));
        workers.push(echo_worker(&dl, &name, WorkerOptions::default()));
    }
    // Idle, the 2,000 readers block in Redis rather than poll: one merged XREADGROUP for
    // the workers and one merged XREAD for the queues' events, re-sent when a reader joins
    // and every 5 s; each queue's upkeep runs once per 15 s (half the lease) on average.
    // Past the first upkeeps (at start, then 7.5-22.5 s later), 15 s of idling.
    let mut conn = raw(&server).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    reset_stats(&mut conn).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let calls = command_calls(&mut conn).await;
    let reads = read_calls(&calls);
    // Polling would be 2,000 readers x 15 reads. Blocking, each reader's 5 s deadline comes
    // at its own time and re-sends its merged read (CLIENT UNBLOCK): 31 to 41 reads were
    // seen on this VM, before and after the per-producer events; 100 leaves room for a
    // loaded machine and still fails for any polling.
    assert!(reads <= 100, "{reads} reads in 15 s of idling: {calls:?}");
    let scripts = calls.get("evalsha").copied().unwrap_or(0);
    // 1,000 queues x 15 s / 15 s = 1,000 expected; before, a promote per worker per second
    // and a reclaim per half lease: over 15,000. Not none either: the upkeep still runs
    // (it reclaims the jobs of workers that died).
    assert!(
        (200..=2_000).contains(&scripts),
        "{scripts} scripts in 15 s of idling: {calls:?}"
    );
    // Commands run from the scripts count too (one XAUTOCLAIM per upkeep, ...); nothing
    // else is sent: no probe, no write. A merged read of a few workers carries its pause
    // check (MULTI EXISTS .. EXEC right behind it): at most one per read.
    for quiet in ["ping", "xadd", "del"] {
        assert_eq!(calls.get(quiet), None, "{quiet}: {calls:?}");
    }
    let checks = calls.get("multi").copied().unwrap_or(0);
    assert!(checks <= reads, "{checks} checks, {reads} reads: {calls:?}");
    eprintln!("idle 15 s, 1,000 queues and workers: {calls:?}");
    let mut handles = Vec::new();
    for (i, q) in queues.iter().enumerate().step_by(50) {
        handles.push(
            q.add_job(AddJob {
                payload: i.to_string().into_bytes(),
                ..AddJob::default()
            })
            .await
            .expect("add"),
        );
    }
    for h in handles {
        assert!(matches!(outcome(h).await, Outcome::Completed(_)));
    }
    let list = client_list(&mut conn).await;
    let clients = list.lines().count();
    // The shared connection, the two blocking ones, and this test's own.
    assert!(clients <= 4, "{clients} connections:\n{list}");
    let blockers = list
        .lines()
        .filter(|l| l.contains("name=datalayer-blocker"))
        .count();
    assert_eq!(blockers, 2, "{list}");
    for w in &workers {
        w.shutdown(Duration::from_secs(1)).await;
    }
}

/// XREADGROUP and XREAD calls among `calls`.
fn read_calls(calls: &std::collections::BTreeMap<String, u64>) -> u64 {
    ["xread", "xreadgroup"]
        .iter()
        .filter_map(|c| calls.get(*c))
        .sum()
}

#[tokio::test]
async fn fifty_idle_workers_of_one_queue_share_its_upkeep() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let q = queue(&dl, "q");
    let workers: Vec<WorkerHandle> = (0..50)
        .map(|_| echo_worker(&dl, "q", WorkerOptions::default()))
        .collect();
    let h = q.add("s", &json!("first")).await.expect("add");
    assert!(matches!(outcome(h).await, Outcome::Completed(_)));
    let mut conn = raw(&server).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    reset_stats(&mut conn).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = command_calls(&mut conn).await;
    let scripts = calls.get("evalsha").copied().unwrap_or(0);
    // The queue's upkeep is one per 15 s between all 50 (before: 50 promotes a second).
    assert!(scripts <= 10, "{scripts} scripts in 10 s: {calls:?}");
    // Each worker of the queue in this process has a consumer name (and a blocking read)
    // of its own: one read per 5 s each.
    let reads = read_calls(&calls);
    assert!(reads <= 50 * 3 + 10, "{reads} reads in 10 s: {calls:?}");
    eprintln!("idle 10 s, 50 workers of one queue: {calls:?}");
    // Still working: a job added now runs.
    let h = q.add("s", &json!("second")).await.expect("add");
    assert!(matches!(outcome(h).await, Outcome::Completed(_)));
    for w in &workers {
        w.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn an_idle_worker_blocks_and_shuts_down_without_waiting_for_its_block() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = queue(&dl, "q");
    let worker = echo_worker(&dl, "q", WorkerOptions::default());
    let first = queue.add("s", &json!(1)).await.expect("add");
    assert!(matches!(outcome(first).await, Outcome::Completed(_)));
    // Idle now: the worker's read blocks on the blocking connection, not on the shared one.
    let mut conn = raw(&server).await;
    let mut blocked = String::new();
    for _ in 0..100 {
        let list = client_list(&mut conn).await;
        if let Some(l) = list
            .lines()
            .find(|l| l.contains("name=datalayer-blocker") && l.contains("cmd=xreadgroup"))
        {
            blocked = l.to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        blocked.contains("flags=b"),
        "no blocked XREADGROUP: {blocked:?}"
    );
    // A job added now wakes it: it completes while the read would still block for seconds.
    for i in 2..5 {
        let h = queue.add("s", &json!(i)).await.expect("add");
        let r: Value = outcome(h).await.json().expect("completed");
        assert_eq!(r["echo"], i);
    }
    // Shutdown interrupts the blocking read (CLIENT UNBLOCK) instead of waiting out BLOCK
    // (5 s): generous bound, the expected time is a few milliseconds. First the worker is
    // idle and blocked again.
    let mut blocked_again = false;
    for _ in 0..250 {
        let list = client_list(&mut conn).await;
        blocked_again = list.lines().any(|l| {
            l.contains("name=datalayer-blocker")
                && l.contains("cmd=xreadgroup")
                && l.contains("flags=b")
        });
        if blocked_again {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(blocked_again, "the worker's read never blocked again");
    let t = std::time::Instant::now();
    worker.shutdown(Duration::from_secs(10)).await;
    assert!(
        t.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        t.elapsed()
    );
    let t = std::time::Instant::now();
    queue.disconnect().await;
    assert!(
        t.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_killed_worker_process_job_is_reclaimed_after_the_lease() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = queue(&dl, "q");
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_dl-hang-worker"))
            .args([server.url().as_str(), "q", "1000"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the worker process"),
    );
    let handle = queue.add("s", &json!("crash me")).await.expect("add");
    // Wait until the child holds the job, then SIGKILL it mid-job.
    let mut conn = raw(&server).await;
    let mut held = false;
    for _ in 0..400 {
        // NOGROUP until the worker process has created the group.
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg("dl:{q}:jobs")
            .arg("workers")
            .query_async(&mut conn)
            .await
            .unwrap_or(redis::Value::Nil);
        if matches!(&pending, redis::Value::Array(a) if a.first() == Some(&redis::Value::Int(1))) {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(held, "the worker process never took the job");
    // The lease (1 s, the child's) started at or before this instant.
    let leased = std::time::Instant::now();
    child.0.kill().expect("SIGKILL");
    let _ = child.0.wait();
    let worker = dl
        .worker(
            "q",
            &secrets(),
            WorkerOptions::default().lease(Duration::from_millis(1_000)),
        )
        .expect("worker")
        .start(echo);
    let r: Value = outcome(handle)
        .await
        .json()
        .unwrap_or_else(|e| panic!("not completed: {e}"));
    assert_eq!(r["echo"], "crash me");
    // Reclaimed only once the lease ran out: at least the lease after the job was seen
    // held (less the poll interval, 25 ms, and a query it may have been held before).
    assert!(
        leased.elapsed() >= Duration::from_millis(1_000 - 60),
        "reclaimed {:?} after the lease began",
        leased.elapsed()
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Enqueues `n` jobs, starts the workers, runs `fault` once a third of the jobs are done,
/// adds more jobs right after it, and checks that every job completes with its own result.
async fn survive(server: &mut RedisServer, n: usize, fault: impl AsyncFnOnce(&mut RedisServer)) {
    let dl = layer(server).await;
    let queue = queue(&dl, "q");
    let mut conn = raw(server).await;
    let mut waits = Vec::with_capacity(n);
    let wait = |i: usize, h: datalayer_tokio::JobHandle| {
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(120), h.result()).await;
            (i, r)
        })
    };
    for i in 0..n {
        waits.push(wait(i, queue.add("s", &json!(i)).await.expect("add")));
    }
    let started = std::time::Instant::now();
    while xlen(&mut conn, "dl:{q}:jobs").await < n {
        assert!(started.elapsed() < WAIT, "jobs never all reached Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut workers = Vec::new();
    for _ in 0..4 {
        let options = WorkerOptions::default()
            .concurrency(16)
            .lease(Duration::from_secs(2));
        workers.push(
            dl.worker("q", &secrets(), options)
                .expect("worker")
                .start(echo),
        );
    }
    while xlen(&mut conn, "dl:{q}:jobs").await > n * 2 / 3 {
        assert!(started.elapsed() < WAIT * 2, "workers stalled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    fault(server).await;
    for i in n..n + 1_000 {
        waits.push(wait(i, queue.add("s", &json!(i)).await.expect("add")));
    }
    for w in waits {
        match w.await.expect("waiter") {
            (i, Ok(Ok(Outcome::Completed(r)))) => {
                let r: Value = serde_json::from_slice(&r).expect("json");
                assert_eq!(r["echo"], i, "job {i} got another job's result");
            }
            (i, other) => panic!("job {i} of {n}: {other:?}"),
        }
    }
    for w in &workers {
        w.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn redis_killed_and_restarted_mid_load_loses_nothing() {
    let mut server = RedisServer::start(Persistence::AofAlways);
    survive(&mut server, 20_000, async |server: &mut RedisServer| {
        let mut conn = raw(server).await;
        let waiting: usize = xlen(&mut conn, "dl:{q}:jobs").await;
        assert!(waiting > 1_000, "only {waiting} jobs left when Redis dies");
        server.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.restart();
    })
    .await;
}

#[tokio::test]
async fn killed_connections_lose_nothing() {
    let mut server = RedisServer::start(Persistence::None);
    survive(&mut server, 5_000, async |server: &mut RedisServer| {
        let mut conn = raw(server).await;
        for _ in 0..3 {
            // A killed connection comes back with the next command the data layer sends:
            // wait (bounded) for one to kill, rather than assume it is back within 100 ms.
            let mut killed = 0;
            for _ in 0..100 {
                killed = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("normal")
                    .arg("SKIPME")
                    .arg("yes")
                    .query_async(&mut conn)
                    .await
                    .expect("client kill");
                if killed >= 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(killed >= 1, "no connection to kill within 2 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn thousands_of_concurrent_adds_are_all_confirmed() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = queue(&dl, "q");
    let worker = echo_worker(&dl, "q", WorkerOptions::default().concurrency(32));
    let mut tasks = Vec::new();
    for i in 0..5_000 {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let h = queue.add("s", &json!(i)).await.expect("add confirmed");
            (i, outcome(h).await)
        }));
    }
    for t in tasks {
        let (i, out) = t.await.expect("task");
        let r: Value = out.json().unwrap_or_else(|e| panic!("job {i}: {e}"));
        assert_eq!(r["echo"], i);
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn while_redis_is_away_adds_fail_fast_or_wait_bounded() {
    let mut server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let fast = dl
        .queue(
            "fast",
            &secrets(),
            QueueOptions::default().when_unreachable(Unreachable::FailFast),
        )
        .expect("queue");
    let patient = dl
        .queue(
            "patient",
            &secrets(),
            QueueOptions::default().when_unreachable(Unreachable::Wait(Duration::from_millis(300))),
        )
        .expect("queue");
    fast.add("s", &json!("before")).await.expect("add while up");
    server.kill();
    // The first add after the outage may be the one that finds Redis gone; soon, adds fail
    // at once.
    let started = std::time::Instant::now();
    let mut refused = false;
    while started.elapsed() < Duration::from_secs(10) {
        let t = std::time::Instant::now();
        match fast.add("s", &json!("x")).await {
            Err(Error::Unavailable) if t.elapsed() < Duration::from_millis(100) => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(refused, "fail-fast adds kept waiting");
    let t = std::time::Instant::now();
    let err = patient
        .add("s", &json!("y"))
        .await
        .expect_err("redis is down");
    assert!(
        matches!(err, Error::Unavailable | Error::Unconfirmed(_)),
        "{err:?}"
    );
    assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(5));
    server.restart();
    // Both recover once Redis is back (after at most their current backoff).
    for queue in [&fast, &patient] {
        let back = std::time::Instant::now();
        loop {
            match queue.add("s", &json!("after")).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        back.elapsed() < Duration::from_secs(15),
                        "never recovered: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

fn job(session: &str, payload: &Value) -> AddJob {
    AddJob {
        session_id: session.into(),
        payload: serde_json::to_vec(payload).expect("json"),
        ..AddJob::default()
    }
}

#[tokio::test]
async fn add_many_confirms_every_job_and_each_gets_its_own_result() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = queue(&dl, "q");
    // More than one enqueue command (128 jobs) and one script chunk (1,000) hold.
    let handles = queue
        .add_many((0..2_500).map(|i| job("s", &json!(i))))
        .await
        .expect("queue running");
    assert_eq!(handles.len(), 2_500);
    let handles: Vec<_> = handles
        .into_iter()
        .map(|h| h.expect("add confirmed"))
        .collect();
    // Confirmed means in Redis, before any worker runs.
    let mut conn = raw(&server).await;
    assert_eq!(xlen(&mut conn, "dl:{q}:jobs").await, 2_500);
    let worker = echo_worker(&dl, "q", WorkerOptions::default().concurrency(64));
    for (i, h) in handles.into_iter().enumerate() {
        let r: Value = outcome(h)
            .await
            .json()
            .unwrap_or_else(|e| panic!("job {i}: {e}"));
        assert_eq!(r["echo"], i);
    }
    worker.shutdown(Duration::from_secs(5)).await;
    // Completed: nothing left of them in the work stream once the last one is settled.
    assert_eq!(xlen(&mut conn, "dl:{q}:jobs").await, 0);
}

#[tokio::test]
async fn add_many_reports_each_job_s_failure() {
    let mut server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = dl
        .queue(
            "q",
            &secrets(),
            QueueOptions::default().when_unreachable(Unreachable::Wait(Duration::from_millis(300))),
        )
        .expect("queue");
    queue.pause().await.expect("pause");
    let out = queue
        .add_many((0..3).map(|i| job("s", &json!(i))))
        .await
        .expect("queue running");
    assert!(out.iter().all(|r| matches!(r, Err(Error::QueueClosed))));
    queue.resume().await.expect("resume");
    assert!(
        queue
            .add_many(Vec::new())
            .await
            .expect("running")
            .is_empty()
    );
    server.kill();
    let t = std::time::Instant::now();
    let out = queue
        .add_many((0..50).map(|i| job("s", &json!(i))))
        .await
        .expect("queue running");
    assert_eq!(out.len(), 50);
    for r in &out {
        assert!(
            matches!(r, Err(Error::Unavailable | Error::Unconfirmed(_))),
            "{r:?}"
        );
    }
    // One deadline for the whole batch, not one wait per job.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test]
async fn the_same_id_added_twice_at_once_gives_two_handles_to_one_job() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = queue(&dl, "q");
    let with_id = |n: i32| AddJob {
        id: Some("same".into()),
        ..job("s", &json!(n))
    };
    // Both adds reach the queue's task before either is confirmed.
    let out = queue
        .add_many([with_id(1), with_id(2)])
        .await
        .expect("queue running");
    let handles: Vec<_> = out
        .into_iter()
        .map(|r| r.expect("both adds answered"))
        .collect();
    // And once confirmed, added again before it runs: the earlier handle keeps its outcome.
    let later = |n: i32| AddJob {
        id: Some("later".into()),
        ..job("s", &json!(n))
    };
    let first = queue.add_job(later(3)).await.expect("add");
    let again = queue.add_job(later(4)).await.expect("add again");
    let worker = echo_worker(&dl, "q", WorkerOptions::default());
    for (h, echo) in handles
        .into_iter()
        .map(|h| (h, 1))
        .chain([(first, 3), (again, 3)])
    {
        let r: Value = outcome(h).await.json().expect("completed");
        // One job ran per id: the first add's payload; the second add was a duplicate.
        assert_eq!(r["echo"], echo);
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn jobs_are_not_compressed_unless_asked() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = queue(&dl, "q");
    // Compressible, and above any threshold: stored at full length all the same.
    let big = "ab".repeat(32 * 1024);
    let handle = queue.add("s", &json!({ "big": big })).await.expect("add");
    let mut conn = raw(&server).await;
    let entries: Entries = redis::cmd("XRANGE")
        .arg("dl:{q}:jobs")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("xrange");
    let sealed = &entries[0]
        .1
        .iter()
        .find(|(k, _)| k == "e")
        .expect("field e")
        .1;
    assert!(sealed.len() > big.len(), "{} bytes", sealed.len());
    assert_eq!(sealed[3] & 1, 0, "not compressed");
    let worker = echo_worker(&dl, "q", WorkerOptions::default());
    assert!(matches!(outcome(handle).await, Outcome::Completed(_)));
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn urls_with_fragments_and_prefixes_with_braces_are_refused() {
    let server = RedisServer::start(Persistence::None);
    let insecure = format!("{}#insecure", server.url());
    let err = DataLayer::connect(&insecure, datalayer_tokio::Options::default())
        .await
        .expect_err("a fragment");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let braces = datalayer_tokio::Options::default().prefix("dl{x}");
    let err = DataLayer::connect(&server.url(), braces)
        .await
        .expect_err("a brace in the prefix");
    assert!(err.to_string().contains("prefix"), "{err}");
    // An empty job id is refused too (it looks like garbage naming no job).
    let dl = layer(&server).await;
    let err = queue(&dl, "q")
        .add_job(AddJob {
            id: Some(datalayer_core::job::JobId::from("")),
            ..AddJob::default()
        })
        .await
        .expect_err("empty id");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test]
async fn a_worker_given_one_queue_s_keys_runs_that_queue_and_opens_no_other() {
    use datalayer_core::keys::{Key, KeyId, Keyring, derive_queue_key_bytes};
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let (irc, xmpp) = (queue(&dl, "irc"), queue(&dl, "xmpp"));
    // The server derives the irc queue's key and hands only that to the platform worker's
    // process (here: as bytes).
    let secret = datalayer_core::keys::Secret::from_bytes([42; 32]);
    let bytes = derive_queue_key_bytes(&secret, "irc");
    let keys = Keyring::new(Key::from_bytes(KeyId(1), &bytes));
    let worker = dl
        .worker_with_keys("irc", keys.clone(), WorkerOptions::default())
        .expect("worker")
        .start(echo);
    let h = irc.add("s", &json!("irc job")).await.expect("add");
    let r: Value = outcome(h).await.json().expect("completed");
    assert_eq!(r["echo"], "irc job");
    // The same keys point at another queue: its jobs do not open (dead-lettered, unrun).
    let mut events = xmpp.events();
    let stray = dl
        .worker_with_keys("xmpp", keys, WorkerOptions::default())
        .expect("worker")
        .start(echo);
    xmpp.add("s", &json!("xmpp job")).await.expect("add");
    let mut conn = raw(&server).await;
    let started = std::time::Instant::now();
    while xlen(&mut conn, "dl:{xmpp}:dead").await == 0 {
        assert!(started.elapsed() < WAIT, "the xmpp job was not refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !matches!(events.try_recv(), Ok(QueueEvent::Completed { .. })),
        "another queue's key opened nothing"
    );
    worker.shutdown(Duration::from_secs(5)).await;
    stray.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn adding_again_the_id_of_a_job_that_just_ended_gives_its_outcome_and_runs_nothing() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let q = queue(&dl, "q");
    let runs = Arc::new(AtomicU32::new(0));
    let seen = runs.clone();
    let worker = dl
        .worker("q", &secrets(), WorkerOptions::default())
        .expect("worker")
        .start(move |job: Job| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                echo(job).await
            }
        });
    let add = || AddJob {
        id: Some(datalayer_core::job::JobId::from("session-1:msg-1")),
        payload: b"\"hi\"".to_vec(),
        ..AddJob::default()
    };
    let first = q.add_job(add()).await.expect("add");
    let done = outcome(first).await;
    // The caller adds it again (it had been told Unconfirmed, say): the job ended a moment
    // ago, its marker is gone, and it must not run a second time.
    let again = q.add_job(add()).await.expect("add again");
    assert_eq!(outcome(again).await, done);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "ran once");
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Outcomes read one at a time share one acknowledgement after `ack_delay` (a minute
/// here): until then the outcome and the job's id marker stay in Redis. `stats` sends the
/// waiting acknowledgement first, and so does dropping the queue without `close`: what it
/// read leaves Redis either way.
#[tokio::test]
async fn read_outcomes_are_acknowledged_by_stats_and_by_dropping_the_queue() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let worker = echo_worker(&dl, "q", WorkerOptions::default());
    let mut conn = raw(&server).await;
    let options = || QueueOptions::default().ack_delay(Duration::from_secs(60));
    for hurry in ["stats", "drop"] {
        let q = dl.queue("q", &secrets(), options()).expect("queue");
        let events = format!("dl:{{q}}:events:{}", q.producer_id());
        let handle = q.add("s", &json!(hurry)).await.expect("add");
        outcome(handle).await;
        assert_eq!(
            xlen(&mut conn, &events).await,
            1,
            "{hurry}: read, not acknowledged"
        );
        assert_eq!(hlen(&mut conn, "dl:{q}:ids").await, 1, "{hurry}");
        match hurry {
            "stats" => {
                let stats = q.stats().await.expect("stats");
                assert_eq!(stats.events, 0, "the ack went before the count");
                q.disconnect().await;
            }
            _ => drop(q),
        }
        let mut left = (1, 1);
        for _ in 0..400 {
            left = (
                xlen(&mut conn, &events).await,
                hlen(&mut conn, "dl:{q}:ids").await,
            );
            if left == (0, 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(left, (0, 0), "{hurry}: events and markers left");
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn stats_count_waiting_running_delayed_dead_and_workers() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    datalayer_tests::stats_scenario(&dl).await;
}

#[tokio::test]
async fn dead_letters_are_listed_opened_retried_and_deleted() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    datalayer_tests::dead_letters_scenario(&dl).await;
}

/// The consumer names in the group of `queue`.
async fn consumers(conn: &mut redis::aio::MultiplexedConnection, queue: &str) -> Vec<String> {
    let infos: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(format!("dl:{{{queue}}}:jobs"))
        .arg("workers")
        .query_async(conn)
        .await
        .unwrap_or_default();
    infos
        .iter()
        .filter_map(|c| match c.get("name") {
            Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn consumers_of_workers_that_exited_leave_the_group() {
    let server = RedisServer::start(Persistence::None);
    let mut conn = raw(&server).await;
    let options = || WorkerOptions::default().lease(Duration::from_secs(2));
    // Five worker processes' lifetimes, one after the other: each a consumer of its own.
    for i in 0..5 {
        let dl = layer(&server).await;
        let worker = echo_worker(&dl, "churn", options());
        let q = queue(&dl, "churn");
        q.add("s", &json!(i))
            .await
            .expect("add")
            .result()
            .await
            .expect("ran");
        worker.shutdown(Duration::from_secs(5)).await;
        q.disconnect().await;
    }
    // (Each worker's upkeep already removed some of its predecessors'; the last one's is
    // there, since no upkeep ran after it exited.)
    let exited = consumers(&mut conn, "churn").await;
    assert!(!exited.is_empty());
    // A live worker's upkeep (once per second here) removes the ones that are gone, and
    // only those (on Redis 7.2 and later the live worker's idle read has made it a
    // consumer too; on 7.0 a read that blocks does not).
    let dl = layer(&server).await;
    let _worker = echo_worker(&dl, "churn", options());
    let start = std::time::Instant::now();
    loop {
        let left: Vec<String> = consumers(&mut conn, "churn")
            .await
            .into_iter()
            .filter(|c| exited.contains(c))
            .collect();
        if left.is_empty() {
            break;
        }
        // Typically 10 s here (the exited workers' promises run out first); room for a
        // loaded machine.
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "consumers of exited workers stayed: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_second_instance_under_a_producer_id_takes_it_over() {
    use datalayer_core::producer::ProducerError;
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let _worker = echo_worker(&dl, "q", WorkerOptions::default());
    let as_one = || QueueOptions::default().producer_id("one");
    let first = dl.queue("q", &secrets(), as_one()).expect("queue");
    first
        .add("s", &json!(1))
        .await
        .expect("add")
        .result()
        .await
        .expect("result");
    let second = dl.queue("q", &secrets(), as_one()).expect("queue");
    let mine = second.add("s", &json!(2)).await.expect("add");
    // The first keeps adding until it learns it was superseded (at its next ack).
    let start = std::time::Instant::now();
    loop {
        match first.add("s", &json!(3)).await {
            Err(Error::Producer(ProducerError::Superseded)) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(start.elapsed() < WAIT, "the first instance was never told");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second holds the id: its own job's result, and it goes on adding.
    assert!(matches!(mine.result().await, Ok(Outcome::Completed(_))));
    let again = second.add("s", &json!(4)).await.expect("add");
    assert!(matches!(again.result().await, Ok(Outcome::Completed(_))));
}

#[tokio::test]
async fn a_delayed_job_runs_now_or_is_withdrawn() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    datalayer_tests::delayed_scenario(&dl).await;
}

/// The issue's reproduction, as a new user would write it: two data layers (two servers'
/// worth) open one queue with default options, one worker serves it, each adds 2,000 jobs
/// and awaits every result. Before per-producer events, ~150 results never arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_layers_on_one_queue_each_get_all_their_results() {
    let server = RedisServer::start(Persistence::None);
    let (a, b) = (layer(&server).await, layer(&server).await);
    let worker_dl = layer(&server).await;
    let _worker = echo_worker(
        &worker_dl,
        "shared",
        WorkerOptions::default().concurrency(32),
    );
    let qa = queue(&a, "shared");
    let qb = queue(&b, "shared");
    assert_ne!(qa.producer_id(), qb.producer_id());
    let run = |q: JobQueue, tag: &'static str| async move {
        let mut handles = Vec::new();
        for i in 0..2_000 {
            handles.push((i, q.add(tag, &json!(i)).await.expect("add")));
        }
        for (i, h) in handles {
            let outcome = tokio::time::timeout(WAIT, h.result())
                .await
                .expect("a result in time")
                .expect("an outcome");
            let v: Value = outcome.json().expect("completed");
            assert_eq!(v["echo"], json!(i), "{tag}");
            assert_eq!(v["session"], json!(tag), "{tag}");
        }
    };
    tokio::join!(run(qa.clone(), "a"), run(qb.clone(), "b"));
}

/// `shutdown(deadline)`: the worker stops taking jobs at once, lets a running job finish
/// until the deadline, then stops its handler and hands it back, so that another worker
/// runs it right away (long before the lease would free it), and its outcome reaches the
/// producer once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_back_at_its_deadline_a_job_still_running() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = queue(&dl, "q");
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let aborted = Arc::new(AtomicU32::new(0));
    let guard_count = aborted.clone();
    struct OnDrop(Arc<AtomicU32>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let hung = dl
        .worker("q", &secrets(), WorkerOptions::default())
        .expect("worker")
        .start(move |job: Job| {
            let started = started_tx.clone();
            let guard = OnDrop(guard_count.clone());
            async move {
                let _ = started.send(job.id.clone());
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(guard);
                Ok::<_, String>(json!("never"))
            }
        });
    let handle = queue.add("s", &json!("slow")).await.expect("add");
    tokio::time::timeout(WAIT, started.recv())
        .await
        .expect("the job started")
        .expect("a job");
    let t0 = std::time::Instant::now();
    tokio::time::timeout(WAIT, hung.shutdown(Duration::from_millis(500)))
        .await
        .expect("shut down by its deadline");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "returned after {took:?}"
    );
    assert!(took < Duration::from_secs(10), "returned after {took:?}");
    assert_eq!(aborted.load(Ordering::SeqCst), 1, "the handler was stopped");
    // Another worker runs it now: the lease (30 s) has not passed.
    let t1 = std::time::Instant::now();
    let worker = echo_worker(&dl, "q", WorkerOptions::default());
    assert!(matches!(outcome(handle).await, Outcome::Completed(_)));
    let rerun = t1.elapsed();
    assert!(rerun < Duration::from_secs(10), "ran again after {rerun:?}");
    worker.shutdown(Duration::from_secs(5)).await;
}

/// datalayer's own connections over a Unix socket, as an ACL user with a password, on
/// database 3: jobs land in that database (not 0) and run; a wrong password fails
/// `connect` with an error instead of hanging.
#[tokio::test]
async fn a_unix_socket_a_user_a_password_and_a_database() {
    let server = RedisServer::start(Persistence::None);
    let mut conn = raw(&server).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("dl")
        .arg("on")
        .arg(">s3cret")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .expect("acl setuser");
    let socket = server.unix_socket();
    let url = format!("redis+unix://{}?db=3&user=dl&pass=s3cret", socket.display());
    let dl = DataLayer::connect(&url, datalayer_tokio::Options::default())
        .await
        .expect("connect over the socket");
    let queue = dl
        .queue("q", &secrets(), QueueOptions::default())
        .expect("queue");
    let handle = queue.add("s", &json!({ "n": 1 })).await.expect("add");
    let len_in = |db: i64| {
        let mut conn = conn.clone();
        async move {
            let (_, len): ((), u64) = redis::pipe()
                .cmd("SELECT")
                .arg(db)
                .cmd("XLEN")
                .arg("dl:{q}:jobs")
                .query_async(&mut conn)
                .await
                .expect("xlen");
            len
        }
    };
    assert_eq!(len_in(3).await, 1, "the job is in database 3");
    assert_eq!(len_in(0).await, 0, "and not in database 0");
    let worker = echo_worker(&dl, "q", WorkerOptions::default());
    let outcome = tokio::time::timeout(Duration::from_secs(10), handle.result())
        .await
        .expect("in time")
        .expect("an outcome");
    assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");
    worker.shutdown(Duration::from_secs(5)).await;

    let wrong = format!("redis+unix://{}?db=3&user=dl&pass=wrong", socket.display());
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        DataLayer::connect(&wrong, datalayer_tokio::Options::default()),
    )
    .await
    .expect("an answer, not a hang");
    assert!(refused.is_err(), "a wrong password connects");
}
