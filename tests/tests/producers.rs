//! Many producers on one queue, in several processes (issue 14, part 1): each producer
//! receives every outcome of its own jobs and none of another's; a producer killed mid-load
//! and replaced under its id hands what it was owed to its replacement; producers gone for
//! good leave nothing behind.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datalayer_tests::{KillOnDrop, Persistence, RedisServer, raw};

const QUEUE: &str = "shared";

/// What one producer process logged.
#[derive(Debug, Default)]
struct Log {
    /// Jobs Redis took: id → n.
    added: HashMap<String, u64>,
    /// Results its handles got: id → (n, echo).
    done: HashMap<String, (u64, String)>,
    /// Completions its events delivered for jobs it did not add: id → result.
    owed: HashMap<String, String>,
    /// Handles that ended otherwise.
    failed: Vec<String>,
}

fn read_log(path: &Path) -> Log {
    let mut log = Log::default();
    let mut events = Vec::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let parts: Vec<&str> = line.splitn(4, ' ').collect();
        match parts.as_slice() {
            ["added", id, n] => {
                log.added
                    .insert((*id).into(), n.parse().unwrap_or(u64::MAX));
            }
            ["done", id, n, echo] => {
                let n = n.parse().unwrap_or(u64::MAX);
                log.done.insert((*id).into(), (n, (*echo).into()));
            }
            ["event", id, rest @ ..] => {
                events.push(((*id).to_owned(), rest.join(" ")));
            }
            _ => log.failed.push(line.to_owned()),
        }
    }
    // Owed: completions of jobs this process did not add (read once the process is done
    // adding, or never adds: an event may come before its add returned).
    for (id, result) in events {
        if !log.added.contains_key(&id) {
            log.owed.insert(id, result);
        }
    }
    log
}

/// A producer process; its id, read from its first line of output.
fn producer(
    url: &str,
    shards: u16,
    id: Option<&str>,
    tag: &str,
    jobs: usize,
    ttl_ms: u64,
    log: &Path,
) -> (KillOnDrop, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dl-producer"))
        .env("DL_SHARDS", shards.to_string())
        .args([url, QUEUE, id.unwrap_or("-"), tag])
        .arg(jobs.to_string())
        .arg(ttl_ms.to_string())
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a producer process");
    let mut first = String::new();
    if let Some(out) = child.stdout.take() {
        let mut reader = BufReader::new(out);
        let _ = reader.read_line(&mut first);
        // Keep reading in the background so that the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
    }
    let id = first.trim().strip_prefix("producer ").unwrap_or_default();
    assert!(!id.is_empty(), "the producer printed no id: {first:?}");
    (KillOnDrop(child), id.to_owned())
}

fn worker(url: &str, shards: u16, log: &Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_dl-echo-worker"))
            .env("DL_SHARDS", shards.to_string())
            .args([url, QUEUE])
            .arg(log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a worker process"),
    )
}

/// Waits for `child` to exit, at most `limit`; whether it exited successfully.
async fn exited_ok(child: &mut KillOnDrop, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.0.try_wait() {
            return status.success();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_in_several_processes_each_get_their_own_outcomes_and_a_replacement_the_rest() {
    let server = RedisServer::start(Persistence::None);
    let conn = raw(&server).await;
    several_producers(
        &server.url(),
        server.dir(),
        1,
        vec![(QUEUE.to_owned(), conn)],
    )
    .await;
}

/// The same with a queue of 3 shards on one server: each producer's jobs spread over
/// the shards, its outcomes come back from all of them, the replacement takes over every
/// shard's, and every shard sweeps the gone producers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_producer_and_worker_processes_on_a_sharded_queue() {
    let server = RedisServer::start(Persistence::None);
    let mut shards = Vec::new();
    for tag in datalayer_core::naming::shard_tags(QUEUE, 3).expect("tags") {
        shards.push((tag, raw(&server).await));
    }
    several_producers(&server.url(), server.dir(), 3, shards).await;
}

/// The same on a Redis Cluster of 3 masters: the producer and worker processes find the
/// cluster from its seeds, and the queue's node is checked for what gone producers left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_producer_and_worker_processes_on_a_cluster() {
    let cluster = datalayer_tests::cluster::RedisCluster::start(3, 0);
    let slot = datalayer_core::naming::hash_slot(format!("dl:{{{QUEUE}}}:jobs").as_bytes());
    let node = cluster.master_of(slot);
    let conn = redis::Client::open(format!("redis://127.0.0.1:{node}"))
        .expect("a client")
        .get_multiplexed_async_connection()
        .await
        .expect("the queue's node");
    let dir =
        std::env::temp_dir().join(format!("datalayer-producers-{node}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a log directory");
    several_producers(&cluster.url(), &dir, 1, vec![(QUEUE.to_owned(), conn)]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sharded queue on a cluster of 3 masters: its 3 shards on the 3 masters, each
/// checked on its own node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_producer_and_worker_processes_on_a_sharded_queue_over_a_cluster() {
    let cluster = datalayer_tests::cluster::RedisCluster::start(3, 0);
    let mut shards = Vec::new();
    let mut nodes = HashSet::new();
    for tag in datalayer_core::naming::shard_tags(QUEUE, 3).expect("tags") {
        let slot = datalayer_core::naming::hash_slot(format!("dl:{{{tag}}}:jobs").as_bytes());
        let node = cluster.master_of(slot);
        nodes.insert(node);
        let conn = redis::Client::open(format!("redis://127.0.0.1:{node}"))
            .expect("a client")
            .get_multiplexed_async_connection()
            .await
            .expect("the shard's node");
        shards.push((tag, conn));
    }
    assert_eq!(nodes.len(), 3, "one shard on each master");
    let dir = std::env::temp_dir().join(format!("datalayer-sharded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a log directory");
    several_producers(&cluster.url(), &dir, 3, shards).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three producer processes and a fourth killed mid-load and replaced, two worker
/// processes, 1,000 jobs each: every result at the producer that added it (or the
/// replacement), none at another, and the exited producers swept after their ttl.
/// `shards`: the queue's shards, each with a connection to its node.
async fn several_producers(
    url: &str,
    dir: &Path,
    n: u16,
    mut shards: Vec<(String, redis::aio::MultiplexedConnection)>,
) {
    const JOBS: usize = 1_000;
    let url = url.to_owned();
    let dir = dir.to_path_buf();
    let path = |name: &str| -> PathBuf { dir.join(name) };
    let _workers = [
        worker(&url, n, &path("w1.log")),
        worker(&url, n, &path("w2.log")),
    ];

    // Three producers with generated ids, gone for good (2 s ttl) once they exit; one with
    // a chosen id that is killed mid-load and replaced.
    let mut free = Vec::new();
    for tag in ["a", "b", "c"] {
        let (child, id) = producer(
            &url,
            n,
            None,
            tag,
            JOBS,
            2_000,
            &path(&format!("{tag}.log")),
        );
        free.push((tag, child, id));
    }
    let (mut doomed, doomed_id) = producer(
        &url,
        n,
        Some("replaceable"),
        "d",
        JOBS,
        8_000,
        &path("d.log"),
    );
    assert_eq!(doomed_id, "replaceable");
    let ids: HashSet<String> = free.iter().map(|(_, _, id)| id.clone()).collect();
    assert_eq!(ids.len(), 3, "generated ids are distinct: {ids:?}");

    // Kill the doomed producer once some of its results came back (and many jobs are out).
    let some_done = until(Duration::from_secs(60), || {
        read_log(&path("d.log")).done.len() >= 100
    })
    .await;
    assert!(some_done, "the doomed producer got no results");
    let _ = doomed.0.kill();
    let _ = doomed.0.wait();
    let (_replacement, id) = producer(&url, n, Some("replaceable"), "e", 0, 8_000, &path("e.log"));
    assert_eq!(id, "replaceable");

    for (tag, child, _) in &mut free {
        assert!(
            exited_ok(child, Duration::from_secs(120)).await,
            "producer {tag} did not get every result of its own jobs: {:?}",
            read_log(&path(&format!("{tag}.log"))).failed
        );
    }
    let mut all_jobs: HashMap<String, &str> = HashMap::new();
    for (tag, _, _) in &free {
        let log = read_log(&path(&format!("{tag}.log")));
        assert_eq!(log.added.len(), JOBS, "{tag}");
        assert_eq!(log.done.len(), JOBS, "{tag}: every job's result");
        for (job, (n, echo)) in &log.done {
            assert_eq!(
                echo,
                &n.to_string(),
                "{tag}: {job} got another job's result"
            );
            assert_eq!(
                log.added.get(job),
                Some(n),
                "{tag}: a result of a job it did not add"
            );
        }
        assert!(
            log.owed.is_empty(),
            "{tag} received outcomes of other producers' jobs: {:?}",
            log.owed.keys().take(5).collect::<Vec<_>>()
        );
        for job in log.added.keys() {
            assert!(all_jobs.insert(job.clone(), tag).is_none(), "{job} twice");
        }
    }

    // Every job the doomed producer saw Redis take ends at it or at its replacement.
    let d = read_log(&path("d.log"));
    let covered = until(Duration::from_secs(60), || {
        let e = read_log(&path("e.log"));
        d.added
            .keys()
            .all(|j| d.done.contains_key(j) || e.owed.contains_key(j))
    })
    .await;
    let e = read_log(&path("e.log"));
    let missing: Vec<&String> = d
        .added
        .keys()
        .filter(|j| !d.done.contains_key(*j) && !e.owed.contains_key(*j))
        .collect();
    assert!(
        covered,
        "{} of the killed producer's {} jobs never reached it or its replacement: {:?}",
        missing.len(),
        d.added.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    for (job, result) in &e.owed {
        assert!(
            !all_jobs.contains_key(job),
            "the replacement received {job} of producer {}",
            all_jobs[job]
        );
        if let Some(n) = d.added.get(job) {
            assert_eq!(result, &format!("{{\"echo\":{n}}}"), "{job}");
        }
    }
    println!(
        "killed producer: {} jobs taken, {} results before the kill, {} handed to the \
         replacement",
        d.added.len(),
        d.done.len(),
        e.owed.len()
    );

    // Each shard took its part of the jobs (the stream counts every entry it was given).
    if n > 1 {
        let total = (all_jobs.len() + d.added.len()) as u64;
        for (tag, conn) in &mut shards {
            let info: Vec<redis::Value> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(format!("dl:{{{tag}}}:jobs"))
                .query_async(conn)
                .await
                .expect("XINFO STREAM");
            let added = info
                .iter()
                .position(|v| matches!(v, redis::Value::BulkString(k) if k == b"entries-added"))
                .and_then(|i| match info.get(i + 1) {
                    Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
                    _ => None,
                })
                .expect("entries-added");
            assert!(
                added * u64::from(n) * 2 >= total,
                "{tag} took {added} of {total} jobs"
            );
        }
    }

    // The producers that exited are declared gone after their ttl, and swept: their events
    // streams, and the id markers of their jobs.
    let start = Instant::now();
    loop {
        let mut swept = true;
        let mut report = Vec::new();
        for (tag, conn) in &mut shards {
            let (left, stale, registered) = leftovers(conn, tag, &free, &ids).await;
            if left.is_empty() && stale == 0 && !registered.iter().any(|p| ids.contains(p)) {
                assert_eq!(
                    registered,
                    ["replaceable"],
                    "{tag}: only the replacement is registered"
                );
            } else {
                swept = false;
            }
            report.push(format!(
                "{tag}: left {left:?}, {stale} markers, registered {registered:?}"
            ));
        }
        if swept {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gone producers left: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the gone producers left in one shard: events streams, id markers of their jobs,
/// and the producers still registered.
async fn leftovers(
    conn: &mut redis::aio::MultiplexedConnection,
    tag: &str,
    free: &[(&str, KillOnDrop, String)],
    ids: &HashSet<String>,
) -> (Vec<String>, usize, Vec<String>) {
    let mut left = Vec::new();
    for (_, _, id) in free {
        let key = format!("dl:{{{tag}}}:events:{id}");
        let exists: u64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(conn)
            .await
            .expect("EXISTS");
        if exists > 0 {
            left.push(key);
        }
    }
    let markers: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("dl:{{{tag}}}:ids"))
        .query_async(conn)
        .await
        .expect("HGETALL");
    let stale = markers
        .values()
        .filter(|m| ids.contains(m.as_str()))
        .count();
    let registered: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("dl:{{{tag}}}:producers"))
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("ZRANGE");
    (left, stale, registered)
}
