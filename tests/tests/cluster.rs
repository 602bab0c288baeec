//! datalayer on a real Redis Cluster (3 masters, 3 replicas, started per test on free
//! loopback ports): queues on different masters, retries, delayed jobs, dead letters,
//! stats, credentials and purge, health; then faults mid-load: a manual failover, a master
//! SIGKILLed (its replica promoted), a queue's slot migrated key by key (MOVED, ASK,
//! TRYAGAIN). Every job is counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use datalayer_core::naming::{QueueKeys, hash_slot};
use datalayer_core::retry::{Backoff, RetryPolicy};
use datalayer_tests::cluster::RedisCluster;
use datalayer_tests::{contains, every_key_and_value, secrets};
use datalayer_tokio::{
    CredentialsOptions, DataLayer, Job, JobHandle, Options, Outcome, QueueOptions, WorkerOptions,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

async fn connect(cluster: &RedisCluster) -> DataLayer {
    let options = Options::default().response_timeout(Duration::from_secs(2));
    let dl = DataLayer::connect(&cluster.url(), options)
        .await
        .expect("connect to the cluster");
    assert!(dl.is_cluster());
    dl
}

fn slot_of(queue: &str) -> u16 {
    hash_slot(QueueKeys::new("dl", queue).unwrap().jobs.as_bytes())
}

/// One queue name per master: names whose slots the masters serve, in master order.
fn queue_per_master(cluster: &RedisCluster) -> Vec<String> {
    let mut by_master: HashMap<u16, String> = HashMap::new();
    for i in 0.. {
        let name = format!("q{i}");
        by_master
            .entry(cluster.master_of(slot_of(&name)))
            .or_insert(name);
        if by_master.len() == cluster.master_ports().len() {
            break;
        }
    }
    by_master.into_values().collect()
}

async fn echo(job: Job) -> Result<Value, String> {
    let payload: Value = job.json().map_err(|e| e.to_string())?;
    if payload["fail"].as_bool() == Some(true) {
        return Err(format!("failing on purpose at attempt {}", job.attempt));
    }
    Ok(json!({ "echo": payload }))
}

async fn outcome(handle: JobHandle) -> Outcome {
    tokio::time::timeout(WAIT, handle.result())
        .await
        .expect("job ended in time")
        .expect("queue running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_workers_and_credentials_across_the_masters() {
    let cluster = RedisCluster::start(3, 1);
    let dl = connect(&cluster).await;
    dl.health(Duration::from_secs(5)).await.expect("healthy");
    let info = dl.server_info(Duration::from_secs(5)).await.expect("info");
    assert_eq!(info.nodes, 3, "{info:?}");

    let names = queue_per_master(&cluster);
    assert_eq!(names.len(), 3, "one queue on each master: {names:?}");
    let retry = RetryPolicy::new(
        2,
        Backoff::Fixed {
            delay: Duration::from_millis(50),
        },
    );
    let mut running = Vec::new();
    let mut queues = Vec::new();
    for name in &names {
        let worker = dl
            .worker(
                name,
                &secrets(),
                WorkerOptions::default().concurrency(8).retry(retry),
            )
            .expect("worker");
        running.push(worker.start(echo));
        queues.push(
            dl.queue(name, &secrets(), QueueOptions::default())
                .expect("queue"),
        );
    }
    // Jobs, a retried-then-dead one and a delayed one on every master.
    for (queue, name) in queues.iter().zip(&names) {
        let mut handles = Vec::new();
        for i in 0..200 {
            handles.push(
                queue
                    .add("s", &json!({ "n": i, "marker": "plain-cluster-text" }))
                    .await
                    .expect("add"),
            );
        }
        let dead = queue.add("s", &json!({ "fail": true })).await.expect("add");
        let later = queue
            .add_job(datalayer_core::producer::AddJob {
                session_id: "s".into(),
                payload: br#"{"late":1}"#.to_vec(),
                delay: Duration::from_millis(300),
                ..Default::default()
            })
            .await
            .expect("add delayed");
        for (i, h) in handles.into_iter().enumerate() {
            match outcome(h).await {
                Outcome::Completed(r) => {
                    let v: Value = serde_json::from_slice(&r).unwrap();
                    assert_eq!(v["echo"]["n"], i, "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(outcome(dead).await, Outcome::Failed(r) if r.contains("attempt 2")));
        assert!(matches!(outcome(later).await, Outcome::Completed(_)));
        let stats = queue.stats().await.expect("stats");
        assert_eq!((stats.jobs, stats.dead), (0, 1), "{name}: {stats:?}");
        let page = queue.dead_letters(None, 10).await.expect("dead letters");
        assert_eq!(page.letters.len(), 1);
    }
    let mut found = dl.queues().await.expect("queues");
    found.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(found, expected, "queues() reaches every master");

    // The shared scenarios of one server, on the cluster.
    datalayer_tests::stats_scenario(&dl).await;
    datalayer_tests::dead_letters_scenario(&dl).await;
    datalayer_tests::delayed_scenario(&dl).await;

    // Credentials of sessions on every master; purge finds them all.
    let mut stores = Vec::new();
    for i in 0..12 {
        let secret = datalayer_core::keys::Secret::from_bytes([i as u8 + 1; 32]);
        let store = dl
            .credentials(
                &format!("sockethub:p1:s{i}"),
                &secret,
                &secrets(),
                CredentialsOptions::default(),
            )
            .expect("store");
        store
            .save(
                "irc:nick@example",
                &json!({ "password": "hunter2-cluster" }),
            )
            .await
            .expect("save");
        let back: Value = store.get("irc:nick@example", None).await.expect("get");
        assert_eq!(back["password"], "hunter2-cluster");
        stores.push(store);
    }
    let masters: std::collections::HashSet<u16> = (0..12)
        .map(|i| cluster.master_of(hash_slot(format!("dl:{{sockethub:p1:s{i}}}").as_bytes())))
        .collect();
    assert!(masters.len() > 1, "the stores span masters");

    // Nothing readable on any master.
    for port in cluster.master_ports() {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let everything = every_key_and_value(&mut conn).await;
        for marker in ["plain-cluster-text", "hunter2-cluster", "nick@example"] {
            assert!(
                !contains(&everything, marker.as_bytes()),
                "{marker} on {port}"
            );
        }
    }
    assert_eq!(
        dl.purge_credentials("sockethub:p1:").await.expect("purge"),
        12
    );

    // Connections: O(masters), not O(queues): one command and one doorbell connection per
    // master for this process, plus what replicas and the cluster bus hold.
    for (port, clients) in cluster.clients_per_master() {
        assert!(clients <= 4, "{clients} clients on {port}");
    }
    for r in running {
        r.shutdown(Duration::from_secs(5)).await;
    }
}

/// An idle worker is woken by its doorbell: it waits 30 s for it before it reads anyway,
/// so a job taking less than that reached it through the bell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_is_woken_by_its_doorbell() {
    let cluster = RedisCluster::start(3, 0);
    let dl = connect(&cluster).await;
    let worker = dl
        .worker("idle", &secrets(), WorkerOptions::default())
        .expect("worker");
    let running = worker.start(echo);
    let queue = dl
        .queue("idle", &secrets(), QueueOptions::default())
        .expect("queue");
    // Let the worker and the queue's events reader go idle (their reads parked).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for round in 0..3 {
        let started = Instant::now();
        let h = queue
            .add("s", &json!({ "round": round }))
            .await
            .expect("add");
        let result = tokio::time::timeout(Duration::from_secs(20), h.result())
            .await
            .expect("woken by the bell, not by the 30 s safety read")
            .expect("running");
        assert!(matches!(result, Outcome::Completed(_)));
        eprintln!("round {round}: {:?} idle → result", started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    running.shutdown(Duration::from_secs(5)).await;
}

/// Adds `total` jobs to `queue` while `fault` runs once `at` of them were added; every job
/// must end completed, its result at the producer.
async fn count_through(
    dl: &DataLayer,
    name: &str,
    total: u32,
    at: u32,
    fault: impl FnOnce() + Send + 'static,
) {
    count_through_with(dl, name, total, at, None, fault).await;
}

/// [`count_through`], with adds and settles replicated to `replicated` replicas.
async fn count_through_with(
    dl: &DataLayer,
    name: &str,
    total: u32,
    at: u32,
    replicated: Option<u32>,
    fault: impl FnOnce() + Send + 'static,
) {
    let wait = Duration::from_millis(500);
    let mut worker_options = WorkerOptions::default()
        .concurrency(32)
        .lease(Duration::from_secs(5));
    let mut queue_options = QueueOptions::default();
    if let Some(n) = replicated {
        worker_options = worker_options.replicated(n, wait);
        queue_options = queue_options.replicated(n, wait);
    }
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let worker = dl.worker(name, &secrets(), worker_options).expect("worker");
    let running = worker.start(move |job: Job| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::Relaxed);
            echo(job).await
        }
    });
    let queue = dl.queue(name, &secrets(), queue_options).expect("queue");
    let mut fault = Some(fault);
    let mut handles = Vec::new();
    let mut fault_task = None;
    for i in 0..total {
        if i == at {
            let f = fault.take().expect("once");
            fault_task = Some(tokio::task::spawn_blocking(f));
        }
        let job = datalayer_core::producer::AddJob {
            id: Some(format!("job-{i}").as_str().into()),
            session_id: "s".into(),
            payload: serde_json::to_vec(&json!({ "n": i })).unwrap(),
            ..Default::default()
        };
        // Through a fault an add may be unconfirmed: adding it again is safe.
        let handle = loop {
            match queue.add_job(job.clone()).await {
                Ok(h) => break h,
                Err(e) => {
                    eprintln!("add {i}: {e}; again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        handles.push(handle);
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    if let Some(t) = fault_task {
        t.await.expect("the fault ran");
    }
    let mut completed = 0;
    for (i, h) in handles.into_iter().enumerate() {
        match outcome(h).await {
            Outcome::Completed(r) => {
                let v: Value = serde_json::from_slice(&r).unwrap();
                assert_eq!(v["echo"]["n"], i);
                completed += 1;
            }
            other => panic!("job {i}: {other:?}"),
        }
    }
    assert_eq!(completed, total);
    eprintln!(
        "{name}: {total} jobs completed, {} handler runs",
        runs.load(Ordering::Relaxed)
    );
    running.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_mid_load_loses_nothing() {
    let cluster = Arc::new(RedisCluster::start(3, 1));
    let dl = connect(&cluster).await;
    let master = cluster.master_of(slot_of("fo"));
    let replica = cluster.replica_of(master);
    let c = cluster.clone();
    count_through(&dl, "fo", 3_000, 1_000, move || c.failover(replica)).await;
    assert_eq!(cluster.master_of(slot_of("fo")), replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_load_is_replaced_and_every_job_ends() {
    // Two replicas per master: once one is promoted, the other replicates it, so that the
    // new master's writes can be confirmed by a replica too.
    let cluster = Arc::new(std::sync::Mutex::new(RedisCluster::start(3, 2)));
    let slot = slot_of("kill");
    let (url, master) = {
        let c = cluster.lock().unwrap();
        (c.url(), c.master_of(slot))
    };
    let options = Options::default().response_timeout(Duration::from_secs(2));
    let dl = DataLayer::connect(&url, options).await.expect("connect");
    let c = cluster.clone();
    // Adds and settles wait for a replica: nothing acknowledged is lost with the master.
    count_through_with(&dl, "kill", 3_000, 1_000, Some(1), move || {
        let mut c = c.lock().unwrap();
        c.kill(master);
        c.wait_taken_over(slot, master);
    })
    .await;
    // The killed master comes back as a replica of its successor.
    let mut c = cluster.lock().unwrap();
    c.restart(master);
    c.wait_ready();
    assert_ne!(c.master_of(slot), master);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_mid_load_loses_nothing() {
    let cluster = Arc::new(RedisCluster::start(3, 0));
    let dl = connect(&cluster).await;
    let slot = slot_of("mig");
    let from = cluster.master_of(slot);
    let to = cluster
        .master_ports()
        .into_iter()
        .find(|p| *p != from)
        .expect("another master");
    let c = cluster.clone();
    count_through(&dl, "mig", 3_000, 1_000, move || {
        c.move_slot(slot, from, to, Duration::from_millis(200));
    })
    .await;
    assert_eq!(cluster.master_of(slot), to);
}

/// A TLS cluster: seeds given as `rediss://`, every node reached over TLS with the test
/// authority; an unknown authority is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_with_a_private_authority() {
    let cluster = RedisCluster::start_tls(3, 0);
    let url = cluster.tls_url().expect("TLS seeds");
    let refused = DataLayer::connect(
        &url,
        Options::default().connect_timeout(Duration::from_secs(2)),
    )
    .await;
    assert!(
        refused.is_err(),
        "the system roots do not know the test authority"
    );
    let options = Options::default().tls_root_cert(cluster.ca_pem());
    let dl = DataLayer::connect(&url, options)
        .await
        .expect("connect over TLS");
    assert!(dl.is_cluster());
    dl.health(Duration::from_secs(5)).await.expect("healthy");
    let names = queue_per_master(&cluster);
    let mut running = Vec::new();
    for name in &names {
        let worker = dl
            .worker(name, &secrets(), WorkerOptions::default())
            .expect("worker");
        running.push(worker.start(echo));
        let queue = dl
            .queue(name, &secrets(), QueueOptions::default())
            .expect("queue");
        for i in 0..20 {
            let h = queue.add("s", &json!({ "n": i })).await.expect("add");
            assert!(matches!(outcome(h).await, Outcome::Completed(_)));
        }
    }
    // This process talks to the nodes' TLS ports only: no client on a plain port but ours
    // (the harness's own, made for this count, is one).
    for port in cluster.master_ports() {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(
                &mut redis::Client::open(format!("redis://127.0.0.1:{port}"))
                    .unwrap()
                    .get_connection()
                    .unwrap(),
            )
            .unwrap();
        let plain = list
            .lines()
            .filter(|l| l.contains(&format!("laddr=127.0.0.1:{port}")))
            .count();
        assert_eq!(
            plain, 1,
            "only the harness on the plain port of {port}:\n{list}"
        );
    }
    for r in running {
        r.shutdown(Duration::from_secs(5)).await;
    }
}

/// With `replicated(1, ..)`, an add counts only once a replica has it: with the queue's
/// replica down, an add is `Unconfirmed` (it may be queued), and once the replica is back,
/// adding it again gives its handle and its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_adds_wait_for_a_replica() {
    let mut cluster = RedisCluster::start(3, 1);
    let dl = connect(&cluster).await;
    let wait = Duration::from_millis(200);
    let options = QueueOptions::default()
        .replicated(1, wait)
        .when_unreachable(datalayer_tokio::Unreachable::Wait(Duration::from_secs(2)));
    let queue = dl.queue("rep", &secrets(), options).expect("queue");
    let worker = dl
        .worker(
            "rep",
            &secrets(),
            WorkerOptions::default().replicated(1, wait),
        )
        .expect("worker");
    let running = worker.start(echo);
    for i in 0..50 {
        let h = queue.add("s", &json!({ "n": i })).await.expect("add");
        assert!(matches!(outcome(h).await, Outcome::Completed(_)));
    }
    let replica = cluster.replica_of(cluster.master_of(slot_of("rep")));
    cluster.kill(replica);
    let job = datalayer_core::producer::AddJob {
        id: Some("while-alone".into()),
        session_id: "s".into(),
        payload: br#"{"n":"alone"}"#.to_vec(),
        ..Default::default()
    };
    match queue.add_job(job.clone()).await {
        Err(datalayer_tokio::Error::Unconfirmed(id)) => assert_eq!(id.to_string(), "while-alone"),
        other => panic!("an add no replica has is not done: {other:?}"),
    }
    cluster.restart(replica);
    cluster.wait_ready();
    let h = queue
        .add_job(job)
        .await
        .expect("added again, once the replica is back");
    assert!(matches!(outcome(h).await, Outcome::Completed(_)));
    running.shutdown(Duration::from_secs(5)).await;
}

/// Connections stay O(nodes): 100 queues and 100 workers in one process, idle, hold at most
/// two connections per master (commands, doorbells), and every worker still gets its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_queues_and_workers_hold_two_connections_per_master() {
    let cluster = RedisCluster::start(3, 0);
    let before: HashMap<u16, usize> = cluster.clients_per_master().into_iter().collect();
    let dl = connect(&cluster).await;
    let mut running = Vec::new();
    let mut queues = Vec::new();
    for i in 0..100 {
        let name = format!("many{i}");
        let worker = dl
            .worker(&name, &secrets(), WorkerOptions::default())
            .expect("worker");
        running.push(worker.start(echo));
        queues.push(
            dl.queue(&name, &secrets(), QueueOptions::default())
                .expect("queue"),
        );
    }
    // Every reader idle, waiting on its doorbell; then one job through each queue.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, queue) in queues.iter().enumerate() {
        let h = queue.add("s", &json!({ "n": i })).await.expect("add");
        assert!(matches!(outcome(h).await, Outcome::Completed(_)));
    }
    for (port, now) in cluster.clients_per_master() {
        let added = now.saturating_sub(before.get(&port).copied().unwrap_or(0));
        assert!(added <= 2, "{added} connections of this process on {port}");
    }
    // Idle: every command the masters run in 10 s (the 200 readers' 30 s safety reads,
    // each queue's upkeep every 15 s, and the commands inside those scripts).
    let mut masters = Vec::new();
    for port in cluster.master_ports() {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        datalayer_tests::reset_stats(&mut conn).await;
        masters.push(conn);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut idle = 0;
    for conn in &mut masters {
        let calls = datalayer_tests::command_calls(conn).await;
        idle += calls
            .iter()
            .filter(|(c, _)| !c.starts_with("config") && c.as_str() != "info")
            .map(|(_, n)| n)
            .sum::<u64>();
    }
    eprintln!("100 idle queues and workers: {idle} commands in 10 s on the masters");
    // Polling every reader each 100 ms would be 20,000.
    assert!(idle < 2_000, "{idle} commands in 10 s of idling");
    for r in running {
        r.shutdown(Duration::from_secs(5)).await;
    }
}

/// A process starts while the first seed's node is down: the next seed answers, and once
/// the dead master's replica took over, jobs flow on every slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_while_the_first_seed_is_down() {
    let mut cluster = RedisCluster::start(3, 1);
    let url = cluster.url();
    let first: u16 = url
        .trim_start_matches("redis://")
        .split(',')
        .next()
        .and_then(|h| h.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("the first seed's port");
    // A queue on the first seed's slots (asked before it dies).
    let name = (0..1_000)
        .map(|i| format!("down{i}"))
        .find(|n| cluster.master_of(slot_of(n)) == first)
        .expect("a queue on the first master");
    cluster.kill(first);
    let options = Options::default()
        .response_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1));
    let dl = DataLayer::connect(&url, options)
        .await
        .expect("connected through another seed");
    assert!(dl.is_cluster());
    // Its jobs wait for the replica's promotion, then run.
    let running = dl
        .worker(&name, &secrets(), WorkerOptions::default())
        .expect("worker")
        .start(echo);
    let queue = dl
        .queue(&name, &secrets(), QueueOptions::default())
        .expect("queue");
    let job = datalayer_core::producer::AddJob {
        id: Some("after-failover".into()),
        session_id: "s".into(),
        payload: br#"{"n":1}"#.to_vec(),
        ..Default::default()
    };
    let handle = loop {
        match queue.add_job(job.clone()).await {
            Ok(h) => break h,
            Err(e) => {
                eprintln!("add: {e}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(matches!(outcome(handle).await, Outcome::Completed(_)));
    running.shutdown(Duration::from_secs(5)).await;
}

/// The Redis-held pause and the outcome log on a cluster (their keys in the queue's slot):
/// paused through one data layer, the other's unaware add is queued and does not run, its
/// next add is refused; resumed, it runs; a tail sees both outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_tail_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let (a, b) = (connect(&cluster).await, connect(&cluster).await);
    let running = a
        .worker("pt", &secrets(), WorkerOptions::default())
        .expect("worker")
        .start(echo);
    let qa = a
        .queue("pt", &secrets(), QueueOptions::default())
        .expect("queue");
    let qb = b
        .queue("pt", &secrets(), QueueOptions::default())
        .expect("queue");
    let (_, start) = qb
        .tail_outcomes(None, 100, Duration::from_secs(30))
        .await
        .expect("open the log");
    let first = qa.add("s", &json!(1)).await.expect("add");
    assert!(matches!(outcome(first).await, Outcome::Completed(_)));

    qb.pause().await.expect("pause");
    let unaware = qa.add("s", &json!(2)).await.expect("queued unchecked");
    let id = unaware.id.clone();
    assert!(matches!(
        qa.add("s", &json!(3)).await,
        Err(datalayer_tokio::Error::QueueClosed)
    ));
    let mut pending = Box::pin(unaware.result());
    let waited = tokio::time::timeout(Duration::from_millis(1_500), &mut pending).await;
    assert!(waited.is_err(), "ran while paused: {waited:?}");
    assert!(qb.stats().await.expect("stats").paused_at.is_some());
    qb.resume().await.expect("resume");
    let done = tokio::time::timeout(WAIT, pending).await;
    assert!(matches!(done, Ok(Ok(Outcome::Completed(_)))), "{done:?}");

    let (events, _) = qb
        .tail_outcomes(start, 100, Duration::from_secs(1))
        .await
        .expect("tail");
    let kinds: Vec<(String, &str)> = events
        .iter()
        .map(|e| {
            (
                e.job.as_ref().map(|j| j.0.clone()).unwrap_or_default(),
                e.kind.as_str(),
            )
        })
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert_eq!(kinds[1], (id.0.clone(), "completed"), "{kinds:?}");
    running.shutdown(Duration::from_secs(5)).await;
}
