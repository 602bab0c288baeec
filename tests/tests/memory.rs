//! The in-process backend (`DataLayer::in_memory`), used as a user would in the tests of
//! their own handlers: no redis-server, no port.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use datalayer_core::keys::{KeyId, Secret, SecretRing};
use datalayer_core::producer::AddJob;
use datalayer_core::retry::{Backoff, RetryPolicy};
use datalayer_tests::secrets;
use datalayer_tokio::{
    CredentialsError, CredentialsOptions, DataLayer, Error, Job, Options, Outcome, QueueEvent,
    QueueOptions, WorkerOptions,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn memory() -> DataLayer {
    DataLayer::in_memory(Options::default()).expect("an in-memory layer")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {WAIT:?}"))
}

#[tokio::test]
async fn jobs_run_and_their_results_come_back_leaving_nothing() {
    let dl = memory();
    assert!(dl.is_in_memory());
    dl.health(Duration::from_secs(1)).await.expect("healthy");
    let queue = dl
        .queue("q", &secrets(), QueueOptions::default())
        .expect("queue");
    let running = dl
        .worker("q", &secrets(), WorkerOptions::default().concurrency(8))
        .expect("worker")
        .start(|job: Job| async move {
            let n: u64 = job.json().map_err(|e| e.to_string())?;
            Ok::<_, String>(json!({ "double": n * 2, "session": job.session_id }))
        });
    let mut handles = Vec::new();
    for n in 0..500u64 {
        handles.push(queue.add(&format!("s{}", n % 3), &n).await.expect("add"));
    }
    for (n, handle) in handles.into_iter().enumerate() {
        let outcome = within("an outcome", handle.result())
            .await
            .expect("running");
        let result: Value = outcome.json().expect("completed");
        assert_eq!(
            result,
            json!({ "double": n * 2, "session": format!("s{}", n % 3) })
        );
    }
    running.shutdown(Duration::from_secs(5)).await;
    queue.shutdown().await;
    assert_eq!(
        dl.memory_keys(),
        Vec::<String>::new(),
        "nothing left behind"
    );
}

#[tokio::test]
async fn an_idle_worker_wakes_for_a_job_without_waiting_for_its_block() {
    let dl = memory();
    let queue = dl
        .queue("idle", &secrets(), QueueOptions::default())
        .expect("queue");
    let running = dl
        .worker("idle", &secrets(), WorkerOptions::default())
        .expect("worker")
        .start(|_job: Job| async { Ok::<_, String>(1) });
    // Long enough for the worker's read to find nothing and block (BLOCK is 5 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let job = queue.add("s", &json!({})).await.expect("add");
    let outcome = within("the outcome", job.result()).await.expect("running");
    assert_eq!(outcome, Outcome::Completed(b"1".to_vec()));
    // Woken by the add, not by the end of the 5 s block.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn failures_retry_with_backoff_then_dead_letter() {
    let dl = memory();
    let queue = dl
        .queue("fail", &secrets(), QueueOptions::default())
        .expect("queue");
    let mut events = queue.events();
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let retry = RetryPolicy::new(
        3,
        Backoff::Fixed {
            delay: Duration::from_millis(100),
        },
    );
    let running = dl
        .worker("fail", &secrets(), WorkerOptions::default().retry(retry))
        .expect("worker")
        .start(move |job: Job| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                Err::<Value, _>(format!("attempt {} failed", job.attempt))
            }
        });
    let started = Instant::now();
    let job = queue.add("s", &json!({ "x": 1 })).await.expect("add");
    let outcome = within("the outcome", job.result()).await.expect("running");
    assert_eq!(outcome, Outcome::Failed("attempt 3 failed".into()));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    // Two backoffs of 100 ms between the three attempts.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    let mut retried = Vec::new();
    loop {
        match within("an event", events.recv()).await.expect("events") {
            QueueEvent::Failed {
                attempt, reason, ..
            } => retried.push((attempt, reason)),
            QueueEvent::DeadLettered { reason, .. } => {
                assert_eq!(reason, "attempt 3 failed");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        retried,
        vec![
            (1, "attempt 1 failed".into()),
            (2, "attempt 2 failed".into())
        ]
    );
    running.shutdown(Duration::from_secs(1)).await;
    // The dead letter stays (sealed) until its retention runs out.
    assert!(
        dl.memory_keys().iter().any(|k| k.ends_with(":dead")),
        "{:?}",
        dl.memory_keys()
    );
}

#[tokio::test]
async fn delayed_jobs_wait_and_paused_queues_refuse() {
    let dl = memory();
    let queue = dl
        .queue("later", &secrets(), QueueOptions::default())
        .expect("queue");
    let running = dl
        .worker("later", &secrets(), WorkerOptions::default())
        .expect("worker")
        .start(|_job: Job| async { Ok::<_, String>(json!("done")) });
    let started = Instant::now();
    let job = queue
        .add_job(AddJob {
            session_id: "s".into(),
            payload: b"{}".to_vec(),
            delay: Duration::from_millis(400),
            ..AddJob::default()
        })
        .await
        .expect("add");
    let outcome = within("the outcome", job.result()).await.expect("running");
    assert_eq!(outcome.json::<String>(), Ok("done".into()));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    queue.pause().await.expect("pause");
    assert!(matches!(queue.add("s", &1).await, Err(Error::QueueClosed)));
    queue.resume().await.expect("resume");
    let job = queue.add("s", &1).await.expect("add after resume");
    within("the outcome", job.result()).await.expect("running");
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn credentials_are_sealed_bound_and_expire() {
    let dl = memory();
    let session_secret = Secret::from_bytes([7; 32]);
    let store = dl
        .credentials(
            "srv:session-1",
            &session_secret,
            &secrets(),
            CredentialsOptions::default(),
        )
        .expect("store");
    let creds = json!({ "nick": "nick", "password": "hunter2" });
    store.save("irc:nick", &creds).await.expect("save");
    let hash = datalayer_tokio::credentials_hash(&creds).expect("a hash");
    let back: Value = store.get("irc:nick", Some(&hash)).await.expect("get");
    assert_eq!(back, creds);
    assert!(matches!(
        store.get::<Value>("irc:other", None).await,
        Err(Error::Credentials(CredentialsError::NotFound { .. }))
    ));
    assert!(matches!(
        store.get::<Value>("irc:nick", Some("00")).await,
        Err(Error::Credentials(CredentialsError::Mismatch { .. }))
    ));
    let wrong = dl
        .credentials(
            "srv:session-1",
            &Secret::from_bytes([8; 32]),
            &secrets(),
            CredentialsOptions::default(),
        )
        .expect("store");
    assert!(matches!(
        wrong.get::<Value>("irc:nick", None).await,
        Err(Error::Credentials(CredentialsError::WrongSecret { .. }))
    ));
    // Another server's ring opens nothing.
    let other_ring = SecretRing::new(KeyId(1), Secret::from_bytes([9; 32]));
    let other = dl
        .credentials(
            "srv:session-1",
            &session_secret,
            &other_ring,
            CredentialsOptions::default(),
        )
        .expect("store");
    assert!(other.get::<Value>("irc:nick", None).await.is_err());

    // A short sliding TTL runs out on the wall clock.
    let short = dl
        .credentials(
            "srv:session-2",
            &session_secret,
            &secrets(),
            CredentialsOptions::default().ttl(Duration::from_millis(100)),
        )
        .expect("store");
    short.save("irc:a", &creds).await.expect("save");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        short.get::<Value>("irc:a", None).await,
        Err(Error::Credentials(CredentialsError::NotFound { .. }))
    ));

    short.save("irc:a", &creds).await.expect("save");
    assert_eq!(dl.purge_credentials("srv:").await.expect("purge"), 2);
    assert_eq!(dl.memory_keys(), Vec::<String>::new());
    assert!(!store.teardown().await.expect("teardown"));
}

#[tokio::test]
async fn a_memory_url_connects_in_process_and_layers_do_not_share() {
    let a = DataLayer::connect("memory://", Options::default())
        .await
        .expect("connect");
    assert!(a.is_in_memory());
    let b = memory();
    let queue = a
        .queue("q", &secrets(), QueueOptions::default())
        .expect("queue");
    queue.add("s", &1).await.expect("add");
    assert!(!a.memory_keys().is_empty());
    assert!(
        b.memory_keys().is_empty(),
        "another in_memory() is another keyspace"
    );
    assert_eq!(
        a.clone().memory_keys(),
        a.memory_keys(),
        "clones share theirs"
    );
}

#[tokio::test]
async fn backpressure_is_the_cores_error_to_match() {
    use datalayer_core::producer::ProducerError;
    let dl = memory();
    let queue = dl
        .queue("bp", &secrets(), QueueOptions::default().max_pending(2))
        .expect("queue");
    let jobs = (0..5).map(|n| AddJob {
        session_id: "s".into(),
        payload: format!("{n}").into_bytes(),
        ..AddJob::default()
    });
    // One message: the first two await Redis, the other three are refused at once.
    let results = queue.add_many(jobs).await.expect("running");
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Producer(ProducerError::Backpressure(2)))))
        .count();
    assert_eq!(refused, 3, "{results:?}");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
    // A worker's bad setting is the core's error too.
    let err = dl
        .worker("bp", &secrets(), WorkerOptions::default().concurrency(0))
        .expect_err("concurrency 0");
    assert!(
        matches!(
            err,
            Error::Worker(datalayer_core::worker::WorkerError::Concurrency(0))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn stats_count_waiting_running_delayed_dead_and_workers() {
    datalayer_tests::stats_scenario(&memory()).await;
}

#[tokio::test]
async fn dead_letters_are_listed_opened_retried_and_deleted() {
    datalayer_tests::dead_letters_scenario(&memory()).await;
}

#[tokio::test]
async fn queues_are_found_by_scan_and_sessions_are_not_queues() {
    let dl = memory();
    for name in ["alpha", "beta"] {
        let q = dl
            .queue(name, &secrets(), QueueOptions::default())
            .expect("queue");
        q.add("s", &json!(1)).await.expect("add");
    }
    let store = dl
        .credentials(
            "session-1",
            &Secret::from_bytes([9; 32]),
            &secrets(),
            CredentialsOptions::default(),
        )
        .expect("store");
    store
        .save("irc", &json!({"nick": "n"}))
        .await
        .expect("save");
    assert_eq!(dl.queues().await.expect("queues"), ["alpha", "beta"]);
}

#[tokio::test]
async fn a_delayed_job_runs_now_or_is_withdrawn() {
    datalayer_tests::delayed_scenario(&memory()).await;
}
