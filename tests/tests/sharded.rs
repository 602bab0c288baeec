//! A sharded queue through the public API (issue 14, part 3), on a redis-server of its own
//! and on the in-process backend: jobs spread over the shards by id, two workers serve
//! every shard within their pools, results, retries, dead letters, delayed jobs, stats,
//! pause and shutdown behave as on one queue. (Several processes and a cluster: the
//! producers tests.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use datalayer_core::job::JobId;
use datalayer_core::naming::{shard_of, shard_tags};
use datalayer_core::producer::AddJob;
use datalayer_core::worker::WorkerError;
use datalayer_tests::{Persistence, RedisServer, layer, secrets};
use datalayer_tokio::{
    DataLayer, Error, Job, JobHandle, Options, Outcome, QueueOptions, ShardedQueue, WorkerOptions,
};
use serde_json::{Value, json};

const SHARDS: u16 = 3;
const CONCURRENCY: u32 = 4;

async fn outcome(handle: JobHandle) -> Outcome {
    tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .expect("the job ended in time")
        .expect("the queue runs")
}

/// Runs of each job, and the most jobs one worker ran at once.
#[derive(Default)]
struct Seen {
    runs: Mutex<HashMap<String, u32>>,
    now: [AtomicU32; 2],
    most: [AtomicU32; 2],
}

fn start_worker(dl: &DataLayer, seen: &Arc<Seen>, w: usize) -> datalayer_tokio::WorkerHandle {
    let options = WorkerOptions::default()
        .shards(SHARDS)
        .concurrency(CONCURRENCY)
        .retry(datalayer_core::retry::RetryPolicy::new(
            2,
            datalayer_core::retry::Backoff::Fixed {
                delay: Duration::from_millis(10),
            },
        ));
    let seen = seen.clone();
    dl.worker("hot", &secrets(), options)
        .expect("a worker")
        .start(move |job: Job| {
            let seen = seen.clone();
            async move {
                let at = seen.now[w].fetch_add(1, Ordering::SeqCst) + 1;
                seen.most[w].fetch_max(at, Ordering::SeqCst);
                *seen
                    .runs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(job.id.0.clone())
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
                seen.now[w].fetch_sub(1, Ordering::SeqCst);
                let payload: Value = job.json().map_err(|e| e.to_string())?;
                if payload["fail"] == json!(true) {
                    return Err(format!("failing at attempt {}", job.attempt));
                }
                Ok::<_, String>(json!({ "echo": payload["i"] }))
            }
        })
}

async fn scenario(dl: &DataLayer) {
    assert!(matches!(
        dl.worker(
            "hot",
            &secrets(),
            WorkerOptions::default().shards(SHARDS).concurrency(2)
        ),
        Err(Error::Worker(WorkerError::Shards { .. }))
    ));
    let queue: ShardedQueue = dl
        .sharded_queue("hot", SHARDS, &secrets(), QueueOptions::default())
        .expect("a sharded queue");
    assert_eq!(queue.shards().len(), 3);
    let tags = shard_tags("hot", SHARDS).expect("tags");
    for (shard, tag) in queue.shards().iter().zip(&tags) {
        assert_eq!(shard.name(), tag);
        assert_eq!(shard.producer_id(), queue.producer_id());
    }

    // 600 jobs in one add_many, 300 one by one, before any worker runs.
    let many = (0..600).map(|i| AddJob {
        payload: serde_json::to_vec(&json!({ "i": i })).expect("json"),
        ..AddJob::default()
    });
    let mut handles: Vec<(i64, JobHandle)> = queue
        .add_many(many)
        .await
        .expect("add_many")
        .into_iter()
        .zip(0..)
        .map(|(h, i)| (i, h.expect("queued")))
        .collect();
    for i in 600..900 {
        handles.push((i, queue.add("s", &json!({ "i": i })).await.expect("add")));
    }
    let mut per_shard = [0u64; SHARDS as usize];
    for (_, h) in &handles {
        per_shard[shard_of(&h.id.0, SHARDS)] += 1;
    }
    let stats = queue.stats().await.expect("stats");
    assert_eq!(stats.jobs, 900, "{stats:?}");
    for (shard, q) in queue.shards().iter().enumerate() {
        let s = q.stats().await.expect("shard stats");
        assert_eq!(s.jobs, per_shard[shard], "shard {shard}");
        assert!(s.jobs >= 200, "shard {shard} took {} of 900", s.jobs);
    }
    let first = handles[0].1.id.clone();
    assert!(
        queue
            .find_job(&first)
            .await
            .expect("find")
            .waiting
            .is_some()
    );

    let seen = Arc::new(Seen::default());
    let workers = [start_worker(dl, &seen, 0), start_worker(dl, &seen, 1)];
    for (i, h) in handles {
        match outcome(h).await {
            Outcome::Completed(r) => {
                let v: Value = serde_json::from_slice(&r).expect("json");
                assert_eq!(v["echo"], json!(i));
            }
            other => panic!("job {i}: {other:?}"),
        }
    }
    {
        let runs = seen.runs.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(runs.len(), 900);
        assert!(runs.values().all(|n| *n == 1), "a job ran twice");
    }
    for w in 0..2 {
        let most = seen.most[w].load(Ordering::SeqCst);
        assert!(most <= CONCURRENCY, "worker {w} ran {most} jobs at once");
    }

    // A failing job is retried, then dead-lettered in its shard, where the shard's queue
    // opens it; retried from there it fails again.
    let bad = queue
        .add("s", &json!({ "i": -1, "fail": true }))
        .await
        .expect("add");
    let bad_id = bad.id.clone();
    assert!(matches!(outcome(bad).await, Outcome::Failed(_)));
    let page = queue
        .shard_of(&bad_id)
        .dead_letters(None, 10)
        .await
        .expect("dead letters");
    assert_eq!(page.letters.len(), 1);
    assert_eq!(page.letters[0].job.as_ref(), Some(&bad_id));
    assert!(
        page.letters[0].record.is_ok(),
        "opened with the queue's key"
    );
    assert_eq!(queue.stats().await.expect("stats").dead, 1);
    // Opened directly by its tag, the shard is a queue with the same keys.
    let direct = dl
        .queue(
            queue.shard_of(&bad_id).name(),
            &secrets(),
            QueueOptions::default(),
        )
        .expect("the shard as a queue");
    let page = direct.dead_letters(None, 10).await.expect("dead letters");
    assert_eq!(page.letters[0].job.as_ref(), Some(&bad_id));
    assert!(
        page.letters[0].record.is_ok(),
        "opened with the queue's key"
    );
    direct.disconnect().await;

    // A delayed job, run now through the sharded queue.
    let delayed = queue
        .add_job(AddJob {
            id: Some(JobId::from("later")),
            payload: serde_json::to_vec(&json!({ "i": 7 })).expect("json"),
            delay: Duration::from_millis(3_600_000),
            ..AddJob::default()
        })
        .await
        .expect("add delayed");
    assert_eq!(queue.stats().await.expect("stats").delayed, 1);
    assert!(queue.run_now(&JobId::from("later")).await.expect("run now"));
    assert!(matches!(outcome(delayed).await, Outcome::Completed(_)));

    // Paused: every shard refuses adds; resumed: they run.
    queue.pause().await.expect("pause");
    assert!(queue.stats().await.expect("stats").paused_at.is_some());
    for i in 0..6 {
        assert!(matches!(
            queue.add("s", &json!({ "i": i })).await,
            Err(Error::QueueClosed)
        ));
    }
    queue.resume().await.expect("resume");
    let h = queue.add("s", &json!({ "i": 1 })).await.expect("add");
    assert!(matches!(outcome(h).await, Outcome::Completed(_)));

    for w in &workers {
        w.shutdown(Duration::from_secs(5)).await;
    }
    queue.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_queue_on_redis() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    scenario(&dl).await;
    let mut conn = datalayer_tests::raw(&server).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(keys.is_empty(), "left after shutdown: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_queue_in_memory() {
    let dl = DataLayer::in_memory(Options::default()).expect("in memory");
    scenario(&dl).await;
    assert!(dl.memory_keys().is_empty(), "{:?}", dl.memory_keys());
}
