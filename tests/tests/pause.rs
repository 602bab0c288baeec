//! A pause held in Redis (issue 16, part 1): paused through one producer, it holds for
//! every producer and for workers in other processes; nothing starts while it lasts, not
//! even a delayed job that falls due or a job added by a producer that did not know yet;
//! after the resume every one of them runs, once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datalayer_core::producer::AddJob;
use datalayer_tests::{KillOnDrop, Persistence, RedisServer, layer, secrets};
use datalayer_tokio::{Error, JobHandle, JobQueue, Outcome, QueueOptions};
use serde_json::json;

const QUEUE: &str = "pq";

fn worker(url: &str, log: &Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_dl-echo-worker"))
            .args([url, QUEUE])
            .arg(log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a worker process"),
    )
}

/// Every run the worker processes logged: (job id, ms).
fn runs(dir: &Path) -> Vec<(String, u128)> {
    let mut out = Vec::new();
    for name in ["w1.log", "w2.log"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            if let [id, _pid, ms, _attempt] = parts.as_slice() {
                out.push(((*id).to_owned(), ms.parse().unwrap_or(0)));
            }
        }
    }
    out
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

async fn echo(handle: JobHandle) -> serde_json::Value {
    match tokio::time::timeout(Duration::from_secs(20), handle.result()).await {
        Ok(Ok(Outcome::Completed(r))) => serde_json::from_slice(&r).expect("json"),
        other => panic!("no result: {other:?}"),
    }
}

fn queue(dl: &datalayer_tokio::DataLayer) -> JobQueue {
    dl.queue(QUEUE, &secrets(), QueueOptions::default())
        .expect("queue")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_for_every_producer_and_worker_process() {
    let server = RedisServer::start(Persistence::None);
    let dir = server.dir().to_path_buf();
    let _w1 = worker(&server.url(), &dir.join("w1.log"));
    let _w2 = worker(&server.url(), &dir.join("w2.log"));
    let (dl_a, dl_b) = (layer(&server).await, layer(&server).await);
    let (a, b) = (queue(&dl_a), queue(&dl_b));

    // Running: jobs of both producers complete.
    for i in 0..4 {
        assert_eq!(
            echo(a.add("s", &json!({ "i": i })).await.expect("add")).await["echo"],
            i
        );
    }
    assert_eq!(
        echo(b.add("s", &json!({ "i": 9 })).await.expect("add")).await["echo"],
        9
    );
    let delayed = a
        .add_job(AddJob {
            session_id: "s".into(),
            payload: serde_json::to_vec(&json!({ "i": 100 })).expect("json"),
            delay: Duration::from_millis(800),
            ..AddJob::default()
        })
        .await
        .expect("a delayed add");

    // Paused through b: b's adds are refused at once.
    b.pause().await.expect("pause");
    let paused_at = now_ms();
    assert!(matches!(
        b.add("s", &json!({ "i": 1 })).await,
        Err(Error::QueueClosed)
    ));
    // a did not know: its unchecked add is queued (and does not run); its next is refused.
    let unaware = a.add("s", &json!({ "i": 200 })).await.expect("queued");
    assert!(matches!(
        a.add("s", &json!({ "i": 2 })).await,
        Err(Error::QueueClosed)
    ));
    let stats = b.stats().await.expect("stats");
    assert!(stats.paused_at.is_some(), "{stats:?}");

    // The delayed job falls due during the pause: neither it nor the queued one runs.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let during: Vec<_> = runs(&dir)
        .into_iter()
        .filter(|(id, ms)| *ms >= paused_at || *id == delayed.id.0 || *id == unaware.id.0)
        .collect();
    assert!(during.is_empty(), "ran while paused: {during:?}");
    let stats = a.stats().await.expect("stats");
    assert_eq!(stats.jobs, 2, "both wait (or were handed back): {stats:?}");

    // Resumed through a: both run, once each, after the resume; adds are taken again.
    let (delayed_id, unaware_id) = (delayed.id.clone(), unaware.id.clone());
    a.resume().await.expect("resume");
    let resumed_at = now_ms();
    let started = Instant::now();
    assert_eq!(echo(unaware).await["echo"], 200);
    assert_eq!(echo(delayed).await["echo"], 100);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "resumed jobs waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        echo(b.add("s", &json!({ "i": 3 })).await.expect("add")).await["echo"],
        3
    );
    assert_eq!(
        echo(a.add("s", &json!({ "i": 4 })).await.expect("add")).await["echo"],
        4
    );
    let all = runs(&dir);
    for id in [&delayed_id, &unaware_id] {
        let mine: Vec<_> = all.iter().filter(|(j, _)| *j == id.0).collect();
        assert_eq!(mine.len(), 1, "{id} ran {mine:?}");
        assert!(
            mine[0].1 >= resumed_at,
            "{id} ran before the resume: {mine:?}"
        );
    }
    assert!(b.stats().await.expect("stats").paused_at.is_none());
}
