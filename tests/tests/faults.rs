//! Faults between the adapter and Redis, injected by a loopback proxy or done to Redis
//! itself: every add ends in one truthful answer, and the engine recovers as soon as Redis
//! answers again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datalayer_core::job::JobId;
use datalayer_core::producer::AddJob;
use datalayer_tests::proxy::{Fault, Proxy};
use datalayer_tests::{Persistence, RedisServer, client_list, layer, raw, secrets};
use datalayer_tokio::{
    DataLayer, Error, Job, JobQueue, Options, Outcome, QueueEvent, QueueOptions, Unreachable,
    WorkerHandle, WorkerOptions,
};
use serde_json::{Value, json};

/// Runs of each job, by id, as the handler saw them.
type Runs = Arc<Mutex<HashMap<String, u32>>>;

/// A worker of `queue` on `dl` that echoes each job's payload and counts its runs.
fn counting_worker(dl: &DataLayer, queue: &str, runs: &Runs) -> WorkerHandle {
    let runs = runs.clone();
    dl.worker(queue, &secrets(), WorkerOptions::default().concurrency(8))
        .expect("worker")
        .start(move |job: Job| {
            let runs = runs.clone();
            async move {
                *runs
                    .lock()
                    .expect("runs")
                    .entry(job.id.0.clone())
                    .or_default() += 1;
                let payload: Value = job.json().map_err(|e| e.to_string())?;
                Ok::<_, String>(json!({ "echo": payload }))
            }
        })
}

/// A data layer through `proxy`, with short timeouts so that faults show quickly.
async fn via(proxy: &Proxy) -> DataLayer {
    let options = Options::default()
        .response_timeout(Duration::from_millis(400))
        .connect_timeout(Duration::from_millis(400))
        .max_reconnect_delay(Duration::from_millis(200));
    DataLayer::connect(&proxy.url(), options)
        .await
        .expect("connect through the proxy")
}

fn waiting(dl: &DataLayer, name: &str, wait: Duration) -> JobQueue {
    dl.queue(
        name,
        &secrets(),
        QueueOptions::default().when_unreachable(Unreachable::Wait(wait)),
    )
    .expect("queue")
}

async fn xlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(conn)
        .await
        .expect("xlen")
}

/// Waits (bounded) until `events` reports job `id` completed; its result.
async fn completed(events: &mut tokio::sync::broadcast::Receiver<QueueEvent>, id: &JobId) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(QueueEvent::Completed { job, result })) if job == *id => {
                return serde_json::from_slice(&result).expect("json");
            }
            Ok(Ok(_)) => {}
            other => panic!("no completion of {id}: {other:?}"),
        }
    }
}

/// A queue through a proxy (its add waits up to 1.5 s for Redis), a counting worker on a
/// direct connection, and one job through both: the setup of the lost-reply tests.
struct Warm {
    server: RedisServer,
    proxy: Proxy,
    queue: JobQueue,
    events: tokio::sync::broadcast::Receiver<QueueEvent>,
    runs: Runs,
    worker: WorkerHandle,
    /// Kept alive for the queue and the worker.
    _layers: (DataLayer, DataLayer),
}

async fn warm() -> Warm {
    let server = RedisServer::start(Persistence::None);
    let proxy = Proxy::start(server.port()).await;
    let dl = via(&proxy).await;
    let queue = waiting(&dl, "q", Duration::from_millis(1_500));
    let events = queue.events();
    let runs = Runs::default();
    let direct = layer(&server).await;
    let worker = counting_worker(&direct, "q", &runs);
    let warm = queue.add("s", &json!("warm")).await.expect("add");
    assert!(matches!(warm.result().await, Ok(Outcome::Completed(_))));
    Warm {
        server,
        proxy,
        queue,
        events,
        runs,
        worker,
        _layers: (dl, direct),
    }
}

#[tokio::test]
async fn a_lost_reply_is_unconfirmed_and_the_job_lands_once() {
    let Warm {
        server,
        proxy,
        queue,
        mut events,
        runs,
        worker,
        _layers,
    } = warm().await;

    // Redis runs the add; its reply never comes back.
    proxy.set(Fault::DropReplies);
    let err = queue
        .add("s", &json!("lost reply"))
        .await
        .expect_err("no reply");
    let Error::Unconfirmed(id) = err else {
        panic!("a job that was sent must not be reported as not queued: {err:?}");
    };
    let mut conn = raw(&server).await;
    let marked: bool = redis::cmd("HEXISTS")
        .arg("dl:{q}:ids")
        .arg(&id.0)
        .query_async(&mut conn)
        .await
        .expect("hexists");
    assert!(marked, "the job is in Redis, as the error says it may be");

    // The fault ends: the engine's resend finds the job (no second copy), and its outcome
    // reaches the producer. Adding it again with the same id, as the error advises, gives
    // a handle to the same job.
    proxy.set(Fault::None);
    let again = queue
        .add_job(AddJob {
            id: Some(id.clone()),
            payload: serde_json::to_vec(&json!("lost reply")).expect("json"),
            ..AddJob::default()
        })
        .await
        .expect("the same id, again");
    let r: Value = tokio::time::timeout(Duration::from_secs(30), again.result())
        .await
        .expect("in time")
        .expect("running")
        .json()
        .expect("completed");
    assert_eq!(r["echo"], "lost reply");
    assert_eq!(completed(&mut events, &id).await["echo"], "lost reply");
    assert_eq!(runs.lock().expect("runs").get(&id.0), Some(&1), "ran once");
    worker.shutdown(Duration::from_secs(5)).await;
}

/// A reply that is not RESP (a proxy or a network that corrupts bytes): the connection's
/// replies can no longer be trusted to line up, so it closes, the add's outcome is unknown
/// (never "not queued"), the next command goes on a fresh connection, and the job lands and
/// runs once.
#[tokio::test]
async fn a_reply_that_does_not_decode_closes_the_connection_and_loses_nothing() {
    let Warm {
        server,
        proxy,
        queue,
        mut events,
        runs,
        worker,
        _layers,
    } = warm().await;
    let mut conn = raw(&server).await;
    let clients_before = client_names(&mut conn, "datalayer").await;

    proxy.set(Fault::GarbleReply);
    let id = match queue.add("s", &json!("garbled")).await {
        // The engine sent it again on a new connection and heard back in time.
        Ok(handle) => handle.id.clone(),
        Err(Error::Unconfirmed(id)) => id,
        Err(e) => panic!("a job that was sent must not be reported as not queued: {e:?}"),
    };
    assert_eq!(completed(&mut events, &id).await["echo"], "garbled");
    assert_eq!(runs.lock().expect("runs").get(&id.0), Some(&1), "ran once");
    // The connection that carried the garbled reply is gone; a new one took its place.
    let clients_after = client_names(&mut conn, "datalayer").await;
    assert_eq!(
        clients_after.len(),
        clients_before.len(),
        "{clients_after:?}"
    );
    assert_ne!(
        clients_after, clients_before,
        "the command connection was replaced"
    );
    // And it serves: the next add is confirmed at once.
    let next = queue.add("s", &json!("after")).await.expect("add after");
    assert!(matches!(next.result().await, Ok(Outcome::Completed(_))));
    worker.shutdown(Duration::from_secs(5)).await;
}

/// The ids of the clients named `name` (`CLIENT LIST`), sorted.
async fn client_names(conn: &mut redis::aio::MultiplexedConnection, name: &str) -> Vec<u64> {
    let list = client_list(conn).await;
    let mut ids: Vec<u64> = list
        .lines()
        .filter(|l| l.split(' ').any(|f| f == format!("name={name}")))
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn pipelines_cut_midway_never_lose_or_double_a_job() {
    let server = RedisServer::start(Persistence::None);
    let proxy = Proxy::start(server.port()).await;
    let dl = via(&proxy).await;
    let queue = waiting(&dl, "q", Duration::from_secs(10));
    let mut events = queue.events();
    let runs = Runs::default();
    let direct = layer(&server).await;
    let worker = counting_worker(&direct, "q", &runs);
    let mut handles = Vec::new();
    let mut unconfirmed = Vec::new();
    // Cut the connection after this many bytes of the next pipeline: inside a command, in
    // the middle of a MULTI, between commands.
    for (round, cut) in [1usize, 17, 100, 700, 3_000, 20_000]
        .into_iter()
        .enumerate()
    {
        proxy.set(Fault::CutAfter(cut));
        let jobs = (0..100).map(|i| AddJob {
            payload: serde_json::to_vec(&json!(round * 1000 + i)).expect("json"),
            ..AddJob::default()
        });
        for result in queue.add_many(jobs).await.expect("queue running") {
            match result {
                Ok(h) => handles.push(h),
                Err(Error::Unconfirmed(id)) => unconfirmed.push(id),
                Err(e) => panic!("round {round} (cut after {cut} bytes): {e:?}"),
            }
        }
    }
    let n = handles.len() + unconfirmed.len();
    assert_eq!(n, 600);
    for h in handles {
        let id = h.id.clone();
        match tokio::time::timeout(Duration::from_secs(30), h.result()).await {
            Ok(Ok(Outcome::Completed(_))) => {}
            other => panic!("job {id}: {other:?}"),
        }
    }
    for id in &unconfirmed {
        completed(&mut events, id).await;
    }
    let runs = runs.lock().expect("runs").clone();
    assert_eq!(runs.len(), 600, "every job ran");
    assert!(
        runs.values().all(|n| *n == 1),
        "no job ran twice: {:?}",
        runs.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    let mut conn = raw(&server).await;
    assert_eq!(xlen(&mut conn, "dl:{q}:jobs").await, 0, "nothing left");
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn refused_connections_make_adds_unavailable_and_queue_nothing() {
    let server = RedisServer::start(Persistence::None);
    let mut proxy = Proxy::start(server.port()).await;
    let dl = via(&proxy).await;
    let queue = waiting(&dl, "q", Duration::from_millis(800));
    queue.add("s", &json!("warm")).await.expect("add");
    proxy.refuse(true).await;
    proxy.kill_connections();
    let mut conn = raw(&server).await;
    let before = xlen(&mut conn, "dl:{q}:jobs").await;
    for i in 0..3 {
        let err = queue.add("s", &json!(i)).await.expect_err("refused");
        assert!(matches!(err, Error::Unavailable), "{err:?}");
    }
    assert_eq!(xlen(&mut conn, "dl:{q}:jobs").await, before, "none queued");
    // Redis is reachable again: the next add is taken (after at most a backoff of 1 s).
    proxy.refuse(false).await;
    let back = Instant::now();
    loop {
        match queue.add("s", &json!("back")).await {
            Ok(_) => break,
            Err(Error::Unavailable) if back.elapsed() < Duration::from_secs(10) => {}
            Err(e) => panic!("not taken once Redis is back: {e:?}"),
        }
    }
    assert_eq!(xlen(&mut conn, "dl:{q}:jobs").await, before + 1);
}

/// `CLIENT KILL TYPE normal` (all but the caller's connection); how many went.
async fn kill_clients(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(conn)
        .await
        .unwrap_or(0)
}

#[tokio::test]
async fn after_an_outage_connections_killed_every_second_and_a_half_stop_nothing() {
    let mut server = RedisServer::start(Persistence::AofAlways);
    let dl = layer(&server).await;
    let queue = waiting(&dl, "q", Duration::from_secs(30));
    let runs = Runs::default();
    let workers = layer(&server).await;
    let worker = counting_worker(&workers, "q", &runs);
    queue.add("s", &json!("warm")).await.expect("add");
    // A 4 s outage: every backoff climbs to its cap.
    server.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.restart();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        let mut conn = raw(&server).await;
        tokio::spawn(async move {
            let mut killed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                killed += kill_clients(&mut conn).await;
            }
            killed
        })
    };
    // One add every 250 ms for 12 s, each awaited in a task of its own.
    let mut waits = Vec::new();
    for i in 0..48 {
        let queue = queue.clone();
        waits.push(tokio::spawn(async move {
            let t = Instant::now();
            let handle = queue.add("s", &json!(i)).await;
            let taken = t.elapsed();
            let outcome = match handle {
                Ok(h) => tokio::time::timeout(Duration::from_secs(60), h.result()).await,
                Err(e) => panic!("add {i} not taken after {taken:?}: {e:?}"),
            };
            (i, taken, outcome)
        }));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut slowest = Duration::ZERO;
    for w in waits {
        let (i, taken, outcome) = w.await.expect("waiter");
        slowest = slowest.max(taken);
        match outcome {
            Ok(Ok(Outcome::Completed(r))) => {
                let r: Value = serde_json::from_slice(&r).expect("json");
                assert_eq!(r["echo"], i, "job {i} got another's result");
            }
            other => panic!("job {i}: {other:?}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = killer.await.expect("killer");
    assert!(killed >= 8, "only {killed} connections killed");
    // Generous: the expected time is a round trip or a reconnect, not the 5 s of the old
    // backoff cap times the kills.
    assert!(slowest < Duration::from_secs(10), "an add took {slowest:?}");
    eprintln!("slowest add under kills: {slowest:?}; {killed} connections killed");
    worker.shutdown(Duration::from_secs(5)).await;
}

/// A pipeline that Redis reads only after the client gave up on it (a stalled network or
/// server) must not run after its resend: a fresh add's `MULTI`/`EXEC` has no duplicate
/// check, so it would enqueue its job a second time. The replacement connection kills the
/// retired one first (`CLIENT KILL ID`), so the late bytes never run.
#[tokio::test]
async fn a_late_pipeline_of_a_retired_connection_never_runs_after_its_resend() {
    let server = RedisServer::start(Persistence::None);
    let proxy = Proxy::start(server.port()).await;
    let dl = via(&proxy).await;
    let queue = waiting(&dl, "q", Duration::from_secs(10));
    let runs = Runs::default();
    let direct = layer(&server).await;
    let worker = counting_worker(&direct, "q", &runs);
    let warm = queue.add("s", &json!("warm")).await.expect("add");
    assert!(matches!(warm.result().await, Ok(Outcome::Completed(_))));

    // The fresh add's MULTI reaches Redis 1.5 s late; the client times out after 400 ms
    // and sends it again (through the checking script) on a new connection.
    proxy.set(Fault::HoldMulti(Duration::from_millis(1_500)));
    let handle = queue.add("s", &json!("late")).await.expect("add");
    let id = handle.id.clone();
    let r: Value = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .expect("in time")
        .expect("running")
        .json()
        .expect("completed");
    assert_eq!(r["echo"], "late");
    // Past the hold, and time for a second copy to be run.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        runs.lock().expect("runs").get(&id.0),
        Some(&1),
        "the late MULTI/EXEC enqueued the job again"
    );
    let mut conn = raw(&server).await;
    assert_eq!(xlen(&mut conn, "dl:{q}:jobs").await, 0);
    worker.shutdown(Duration::from_secs(5)).await;
}
