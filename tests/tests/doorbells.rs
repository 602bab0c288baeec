//! Idle readers on doorbells on one redis-server (`IdleReads::Doorbells`), beside processes
//! whose idle readers block in merged reads (`IdleReads::Merged`), and the default mix of
//! both (`IdleReads::Auto`).

use std::time::{Duration, Instant};

use datalayer_tests::proxy::Proxy;
use datalayer_tests::{
    Persistence, RedisServer, client_list, command_calls, raw, reset_stats, secrets,
};
use datalayer_tokio::{
    DataLayer, IdleReads, Job, JobQueue, Options, Outcome, QueueOptions, WorkerHandle,
    WorkerOptions,
};
use serde_json::{Value, json};

/// Well under the 30 s after which a parked reader reads anyway: a job that ends within it
/// reached its worker, and its result its producer, through the bells.
const WAIT: Duration = Duration::from_secs(20);

async fn connect(server: &RedisServer, idle_reads: IdleReads) -> DataLayer {
    DataLayer::connect(&server.url(), Options::default().idle_reads(idle_reads))
        .await
        .expect("connect")
}

async fn echo(job: Job) -> Result<Value, String> {
    let payload: Value = job.json().map_err(|e| e.to_string())?;
    Ok(json!({ "echo": payload }))
}

fn start_worker(dl: &DataLayer, name: &str) -> WorkerHandle {
    dl.worker(name, &secrets(), WorkerOptions::default())
        .expect("worker")
        .start(echo)
}

fn queue(dl: &DataLayer, name: &str) -> JobQueue {
    dl.queue(name, &secrets(), QueueOptions::default())
        .expect("queue")
}

/// `n` queues (`q0`, `q1`, ...), each with a worker of its own.
fn queues_with_workers(dl: &DataLayer, n: usize) -> (Vec<WorkerHandle>, Vec<JobQueue>) {
    (0..n)
        .map(|i| {
            let name = format!("q{i}");
            (start_worker(dl, &name), queue(dl, &name))
        })
        .unzip()
}

/// Adds one job after the readers went idle and waits for its result.
async fn one_job(queue: &JobQueue, n: usize) -> Duration {
    let started = Instant::now();
    let h = queue.add("s", &json!({ "n": n })).await.expect("add");
    let result = tokio::time::timeout(WAIT, h.result())
        .await
        .expect("woken by the bell, not by the 30 s safety read")
        .expect("running");
    assert!(matches!(result, Outcome::Completed(_)), "{result:?}");
    started.elapsed()
}

/// A worker and a producer in two processes, each kind of idle reader on either side: the
/// merged process's commands ring the bells that the doorbell process waits on, and the
/// other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_of_either_kind_share_a_queue() {
    let server = RedisServer::start(Persistence::None);
    let bells = connect(&server, IdleReads::Doorbells).await;
    let merged = connect(&server, IdleReads::Merged).await;
    for (workers, producers, name) in [(&bells, &merged, "a"), (&merged, &bells, "b")] {
        let running = start_worker(workers, name);
        let q = queue(producers, name);
        // Let the worker and the producer's events reader go idle.
        tokio::time::sleep(Duration::from_millis(800)).await;
        for round in 0..3 {
            let took = one_job(&q, round).await;
            eprintln!("queue {name}, round {round}: {took:?} idle → result");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        running.shutdown(Duration::from_secs(5)).await;
        q.shutdown().await;
    }
}

/// Two hundred idle queues and workers on doorbells: no blocking connection, one
/// subscription connection beside the command connection, nothing sent while they wait
/// (no read, no unblock: an event costs one read of its queue, not a re-send of every
/// queue's), and every worker still gets its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_readers_on_doorbells_cost_redis_nothing() {
    let server = RedisServer::start(Persistence::None);
    let dl = connect(&server, IdleReads::Doorbells).await;
    let (running, queues) = queues_with_workers(&dl, 200);
    // Past the workers' first upkeep (at start): every reader parked.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut conn = raw(&server).await;
    reset_stats(&mut conn).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let calls = command_calls(&mut conn).await;
    eprintln!("5 s, 200 idle queues and workers on doorbells: {calls:?}");
    // The upkeeps come 7.5 s to 22.5 s after the first: none in this window.
    for quiet in [
        "xreadgroup",
        "xread",
        "client|unblock",
        "multi",
        "evalsha",
        "ping",
    ] {
        assert_eq!(calls.get(quiet), None, "{quiet}: {calls:?}");
    }
    // One job through every tenth queue: each reaches its worker and its producer.
    reset_stats(&mut conn).await;
    for (i, q) in queues.iter().enumerate().step_by(10) {
        one_job(q, i).await;
    }
    let calls = command_calls(&mut conn).await;
    let reads =
        calls.get("xreadgroup").copied().unwrap_or(0) + calls.get("xread").copied().unwrap_or(0);
    // Per job: the worker's read after the ring and the one after its settle, the
    // producer's likewise; a merged re-send would name 200 streams each time instead.
    assert!(reads <= 20 * 6, "{reads} reads for 20 jobs: {calls:?}");
    let list = client_list(&mut conn).await;
    assert!(
        !list.contains("name=datalayer-blocker"),
        "a blocking connection on doorbells:\n{list}"
    );
    // The command connection, the subscription connection, and this test's own.
    assert!(list.lines().count() <= 3, "{list}");
    for r in running {
        r.shutdown(Duration::from_secs(5)).await;
    }
}

/// The subscription connection is killed while the readers are parked: the lost
/// subscriptions count as rings (the readers read again) and are made again, so a job
/// added afterwards is not missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_doorbell_connection_misses_no_job() {
    let server = RedisServer::start(Persistence::None);
    let dl = connect(&server, IdleReads::Doorbells).await;
    let running = start_worker(&dl, "k");
    let q = queue(&dl, "k");
    let mut conn = raw(&server).await;
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .expect("client kill");
        assert_eq!(killed, 1, "one subscription connection");
        let took = one_job(&q, round).await;
        eprintln!("round {round}: {took:?} after the kill → result");
    }
    running.shutdown(Duration::from_secs(5)).await;
}

/// The subscription connection goes silent and stays open (a half-open connection: nothing
/// closes it, and only its own `PING` can tell): it is replaced, and jobs added afterwards
/// reach their parked worker through the bells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_doorbell_connection_is_replaced() {
    let server = RedisServer::start(Persistence::None);
    let proxy = Proxy::start(server.port()).await;
    let options = Options::default()
        .idle_reads(IdleReads::Doorbells)
        .response_timeout(Duration::from_secs(1));
    let dl = DataLayer::connect(&proxy.url(), options)
        .await
        .expect("connect");
    let running = start_worker(&dl, "s");
    let q = queue(&dl, "s");
    one_job(&q, 0).await;
    let mut conn = raw(&server).await;
    // The ids of the subscription connections Redis sees.
    let subscribers = |list: String| -> Vec<String> {
        list.lines()
            .filter(|l| l.contains("name=datalayer-doorbells"))
            .filter_map(|l| l.split(' ').next().map(str::to_owned))
            .collect()
    };
    let before = subscribers(client_list(&mut conn).await);
    assert_eq!(before.len(), 1, "{before:?}");
    // Every connection of the process goes silent: the command connection's next command
    // times out and it is replaced; the subscription connection has nothing to time out
    // but its PING.
    proxy.silence_existing();
    let deadline = Instant::now() + WAIT;
    while subscribers(client_list(&mut conn).await)
        .iter()
        .all(|id| before.contains(id))
    {
        assert!(
            Instant::now() < deadline,
            "no new subscription connection:\n{}",
            client_list(&mut conn).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for round in 1..3 {
        let took = one_job(&q, round).await;
        eprintln!("round {round}: {took:?} after the silence → result");
    }
    running.shutdown(Duration::from_secs(5)).await;
}

/// The default: the first idle readers of each kind block in a merged read (up to
/// `MERGE_LIMIT`), the others wait on doorbells. With 100 queues and workers both are in
/// use, every job ends through whichever its readers were on, and an event does not re-send
/// a read naming every queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_first_idle_readers_merge_and_the_rest_wait_on_bells() {
    let server = RedisServer::start(Persistence::None);
    let dl = connect(&server, IdleReads::default()).await;
    assert_eq!(IdleReads::default(), IdleReads::Auto);
    let (running, queues) = queues_with_workers(&dl, 100);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut conn = raw(&server).await;
    let list = client_list(&mut conn).await;
    let blockers = list
        .lines()
        .filter(|l| l.contains("name=datalayer-blocker"))
        .count();
    assert_eq!(
        blockers, 2,
        "the workers' and the results' merged reads:\n{list}"
    );
    let subscribers = list
        .lines()
        .filter(|l| l.contains(" ssub=") && !l.contains(" ssub=0 "))
        .count();
    assert_eq!(subscribers, 1, "one doorbell connection:\n{list}");
    reset_stats(&mut conn).await;
    // Every command into the slow log, to see how many streams each merged read names.
    for (k, v) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "100000"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query_async(&mut conn)
            .await
            .expect("config set");
    }
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut conn)
        .await
        .expect("slowlog reset");
    for (i, q) in queues.iter().enumerate() {
        one_job(q, i).await;
    }
    let calls = command_calls(&mut conn).await;
    eprintln!("100 jobs through 100 queues, merged and bells: {calls:?}");
    assert!(
        calls.get("spublish").copied().unwrap_or(0) >= 100,
        "the adds ring: {calls:?}"
    );
    let widest = widest_blocking_read(&mut conn).await;
    assert!(
        (1..=datalayer_tokio::core::mux::MERGE_LIMIT).contains(&widest),
        "a merged read named {widest} streams"
    );
    for r in running {
        r.shutdown(Duration::from_secs(5)).await;
    }
}

/// The most streams one blocking read (`... BLOCK ... STREAMS k1 .. kn id1 .. idn`) named,
/// from the slow log (which keeps 32 arguments of a command and counts the rest).
async fn widest_blocking_read(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let log: redis::Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(100_000)
        .query_async(conn)
        .await
        .expect("slowlog get");
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    let mut widest = 0;
    let redis::Value::Array(entries) = log else {
        panic!("slowlog: {log:?}");
    };
    for entry in entries {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let Some(redis::Value::Array(args)) = fields.get(3) else {
            continue;
        };
        let args: Vec<String> = args.iter().map(text).collect();
        if !args.iter().any(|a| a.eq_ignore_ascii_case("BLOCK")) {
            continue;
        }
        let Some(at) = args.iter().position(|a| a.eq_ignore_ascii_case("STREAMS")) else {
            continue;
        };
        let more: usize = args
            .last()
            .and_then(|a| a.strip_prefix("... ("))
            .and_then(|a| a.split(' ').next())
            .and_then(|n| n.parse().ok())
            .map_or(0, |n: usize| n + args.len() - 1);
        let total = if more > 0 { more } else { args.len() };
        widest = widest.max((total - at - 1) / 2);
    }
    widest
}

/// Redis restarts while 40 queues' readers wait, 16 of each kind in merged reads and the
/// others on doorbells: the subscriptions are made again, the merged reads sent again, and
/// a job through every queue ends, its result at its producer, well before the 30 s after
/// which a parked reader reads anyway. From its append-only file, and with nothing kept
/// (the producers' registrations are gone too: each add asserts its producer's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_idle_readers_of_both_kinds_loses_no_job() {
    restart_under_idle_readers(Persistence::AofAlways).await;
    restart_under_idle_readers(Persistence::None).await;
}

async fn restart_under_idle_readers(persistence: Persistence) {
    let mut server = RedisServer::start(persistence);
    let dl = connect(&server, IdleReads::Auto).await;
    let (running, queues) = queues_with_workers(&dl, 40);
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart();
    let started = Instant::now();
    for (i, q) in queues.iter().enumerate() {
        let h = loop {
            match q.add("s", &json!({ "n": i })).await {
                Ok(h) => break h,
                Err(e) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(15),
                        "Redis never taken back: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let result = tokio::time::timeout(WAIT, h.result())
            .await
            .unwrap_or_else(|_| panic!("job {i} never ended"))
            .expect("running");
        assert!(matches!(result, Outcome::Completed(_)), "{result:?}");
    }
    eprintln!("40 jobs after the restart in {:?}", started.elapsed());
    for r in running {
        r.shutdown(Duration::from_secs(5)).await;
    }
}
