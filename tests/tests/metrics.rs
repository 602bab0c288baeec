//! The adapter's metrics (feature `metrics`), read by a recorder of this test's own: what a
//! queue and a worker record when Redis confirmed the events, the queue-state gauges of the
//! sampler, and that no label carries anything of a job. Then the sampler's cost: one
//! script per tick, whether the queue holds 10 entries or 1,000,000.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use datalayer_core::retry::{Backoff, RetryPolicy};
use datalayer_tests::{Persistence, RedisServer, command_calls, layer, raw, reset_stats, secrets};
use datalayer_tokio::{Job, QueueOptions, WorkerOptions};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use serde_json::json;

/// Every metric recorded: name and labels → counter total, last gauge value, histogram
/// samples.
#[derive(Default)]
struct Seen {
    counters: HashMap<String, u64>,
    gauges: HashMap<String, f64>,
    histograms: HashMap<String, Vec<f64>>,
}

fn seen() -> &'static Mutex<Seen> {
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
}

fn id(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

struct Handle(String);

impl metrics::CounterFn for Handle {
    fn increment(&self, value: u64) {
        *seen()
            .lock()
            .unwrap()
            .counters
            .entry(self.0.clone())
            .or_default() += value;
    }
    fn absolute(&self, value: u64) {
        seen()
            .lock()
            .unwrap()
            .counters
            .insert(self.0.clone(), value);
    }
}

impl metrics::GaugeFn for Handle {
    fn increment(&self, value: f64) {
        *seen()
            .lock()
            .unwrap()
            .gauges
            .entry(self.0.clone())
            .or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *seen()
            .lock()
            .unwrap()
            .gauges
            .entry(self.0.clone())
            .or_default() -= value;
    }
    fn set(&self, value: f64) {
        seen().lock().unwrap().gauges.insert(self.0.clone(), value);
    }
}

impl metrics::HistogramFn for Handle {
    fn record(&self, value: f64) {
        seen()
            .lock()
            .unwrap()
            .histograms
            .entry(self.0.clone())
            .or_default()
            .push(value);
    }
}

struct TestRecorder;

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Handle(id(key))))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Handle(id(key))))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Handle(id(key))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_and_a_worker_record_what_redis_confirmed() {
    install();
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = dl
        .queue("met", &secrets(), QueueOptions::default())
        .expect("queue");
    let retry = RetryPolicy::new(
        2,
        Backoff::Fixed {
            delay: Duration::from_millis(20),
        },
    );
    let running = dl
        .worker(
            "met",
            &secrets(),
            WorkerOptions::default().concurrency(4).retry(retry),
        )
        .expect("worker")
        .start(|job: Job| async move {
            let v: serde_json::Value = job.json().map_err(|e| e.to_string())?;
            if v["fail"] == true {
                return Err("secret-reason-marker".to_owned());
            }
            Ok::<_, String>(json!({ "echo": v }))
        });
    let mut handles = Vec::new();
    for i in 0..19 {
        let payload = json!({ "n": i, "marker": "secret-payload-marker" });
        handles.push(
            queue
                .add("secret-session-marker", &payload)
                .await
                .expect("add"),
        );
    }
    handles.push(queue.add("s", &json!({ "fail": true })).await.expect("add"));
    for h in handles {
        tokio::time::timeout(Duration::from_secs(20), h.result())
            .await
            .expect("ended")
            .expect("running");
    }
    let sampler = queue.sample_metrics(Duration::from_millis(50));
    await_gauge("met", "datalayer_queue_dead", 1.0, "no dead-letter gauge").await;
    sampler.abort();
    running.shutdown(Duration::from_secs(5)).await;

    {
        let s = seen().lock().unwrap();
        let counter = |k: &str| s.counters.get(k).copied().unwrap_or(0);
        let samples = |k: &str| s.histograms.get(k).map_or(0, Vec::len);
        assert_eq!(counter("datalayer_jobs_added_total{queue=met}"), 20);
        assert_eq!(
            counter("datalayer_jobs_ended_total{outcome=completed,queue=met}"),
            19
        );
        assert_eq!(
            counter("datalayer_jobs_ended_total{outcome=failed,queue=met}"),
            1
        );
        assert_eq!(
            counter("datalayer_jobs_ended_total{outcome=dead,queue=met}"),
            1
        );
        assert_eq!(counter("datalayer_jobs_started_total{queue=met}"), 21);
        // Settles as Redis confirmed them: 19 completed, one retried, then dead.
        assert_eq!(
            counter("datalayer_worker_settled_total{outcome=completed,queue=met}"),
            19
        );
        assert_eq!(
            counter("datalayer_worker_settled_total{outcome=retried,queue=met}"),
            1
        );
        assert_eq!(
            counter("datalayer_worker_settled_total{outcome=dead,queue=met}"),
            1
        );
        assert_eq!(counter("datalayer_reclaimed_total{queue=met}"), 0);
        assert_eq!(samples("datalayer_job_end_to_end_seconds{queue=met}"), 20);
        assert_eq!(
            samples("datalayer_job_wait_seconds{queue=met}"),
            20,
            "first attempts only"
        );
        assert_eq!(
            samples("datalayer_handler_seconds{queue=met,result=ok}"),
            19
        );
        assert_eq!(
            samples("datalayer_handler_seconds{queue=met,result=error}"),
            2
        );
        assert!(samples("datalayer_pipeline_commands{}") > 0);
        assert_eq!(gauge_of(&s, "datalayer_queue_jobs"), Some(0.0));
        // Nothing of a job in any metric's name or labels.
        let names: Vec<&String> = s
            .counters
            .keys()
            .chain(s.gauges.keys())
            .chain(s.histograms.keys())
            .collect();
        for marker in [
            "secret-payload-marker",
            "secret-session-marker",
            "secret-reason-marker",
        ] {
            assert!(
                !names.iter().any(|n| n.contains(marker)),
                "{marker} in {names:?}"
            );
        }
    }

    // A worker process killed mid-job: the entry it held is reclaimed by ours, and counted.
    let rec = dl
        .queue("rec", &secrets(), QueueOptions::default())
        .expect("queue");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dl-hang-worker"))
        .args([server.url().as_str(), "rec", "500"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the worker process");
    let handle = rec.add("s", &json!("crash me")).await.expect("add");
    // The child prints "running <id>" once it holds the job.
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        line
    })
    .await
    .expect("join");
    assert!(line.starts_with("running"), "{line:?}");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let taker = dl
        .worker(
            "rec",
            &secrets(),
            WorkerOptions::default().lease(Duration::from_millis(500)),
        )
        .expect("worker")
        .start(|_job: Job| async move { Ok::<_, String>(json!("ok")) });
    tokio::time::timeout(Duration::from_secs(20), handle.result())
        .await
        .expect("ended")
        .expect("running");
    taker.shutdown(Duration::from_secs(5)).await;
    let s = seen().lock().unwrap();
    assert_eq!(
        s.counters
            .get("datalayer_reclaimed_total{queue=rec}")
            .copied(),
        Some(1)
    );
}

/// Installs this test's recorder, once for the whole binary.
fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| metrics::set_global_recorder(TestRecorder).expect("the only recorder"));
}

/// A sharded queue counts under its queue's name on both sides (not its shards' tags), and
/// its sampler's gauges are of the whole queue: every shard's counts, summed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_queue_counts_under_its_name() {
    install();
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = dl
        .sharded_queue("mets", 3, &secrets(), QueueOptions::default())
        .expect("queue");
    let retry = RetryPolicy::new(
        1,
        Backoff::Fixed {
            delay: Duration::from_millis(20),
        },
    );
    let running = dl
        .worker(
            "mets",
            &secrets(),
            WorkerOptions::default()
                .concurrency(4)
                .shards(3)
                .retry(retry),
        )
        .expect("worker")
        .start(|job: Job| async move {
            let v: serde_json::Value = job.json().map_err(|e| e.to_string())?;
            match v["fail"] == true {
                true => Err("no".to_owned()),
                false => Ok::<_, String>(v),
            }
        });
    let mut handles = Vec::new();
    for i in 0..30 {
        let payload = json!({ "n": i, "fail": i % 10 == 0 });
        handles.push(queue.add("s", &payload).await.expect("add"));
    }
    for h in handles {
        tokio::time::timeout(Duration::from_secs(20), h.result())
            .await
            .expect("ended")
            .expect("running");
    }
    let shards_used = queue
        .shards()
        .iter()
        .filter(|q| q.name().contains('#'))
        .count();
    assert_eq!(shards_used, 3);
    let sampler = queue.sample_metrics(Duration::from_millis(50));
    // Three dead letters, on whichever shards their ids fell: summed.
    await_gauge(
        "mets",
        "datalayer_queue_dead",
        3.0,
        "no summed dead-letter gauge",
    )
    .await;
    sampler.abort();
    running.shutdown(Duration::from_secs(5)).await;
    let s = seen().lock().unwrap();
    let counter = |k: &str| s.counters.get(k).copied().unwrap_or(0);
    assert_eq!(counter("datalayer_jobs_added_total{queue=mets}"), 30);
    assert_eq!(counter("datalayer_jobs_started_total{queue=mets}"), 30);
    assert_eq!(
        counter("datalayer_jobs_ended_total{outcome=completed,queue=mets}"),
        27
    );
    assert_eq!(
        counter("datalayer_jobs_ended_total{outcome=dead,queue=mets}"),
        3
    );
    let tagged: Vec<&String> = s
        .counters
        .keys()
        .chain(s.gauges.keys())
        .filter(|k| k.contains("mets#"))
        .collect();
    assert!(tagged.is_empty(), "labelled by shard tag: {tagged:?}");
}

/// Waits (up to 10 s) until gauge `name` of `queue` reads `value`; fails with `what`.
async fn await_gauge(queue: &str, name: &str, value: f64, what: &str) {
    let key = format!("{name}{{queue={queue}}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen().lock().unwrap().gauges.get(&key).copied() != Some(value) {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn gauge_of(s: &Seen, name: &str) -> Option<f64> {
    s.gauges.get(&format!("{name}{{queue=met}}")).copied()
}

/// The sampler's tick is one stats script: with 10 entries in the queue and with
/// 1,000,000, the same commands, and the script's cost per call stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_costs_the_same_for_ten_entries_and_a_million() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = dl
        .queue(
            "big",
            &secrets(),
            QueueOptions::default().read_results(false),
        )
        .expect("queue");
    let mut conn = raw(&server).await;
    // A consumer group, as a worker makes it, then entries straight into the stream.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("dl:{big}:jobs")
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("group");
    let fill = |n: usize| {
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.cmd("XADD")
                .arg("dl:{big}:jobs")
                .arg("*")
                .arg("e")
                .arg("x")
                .ignore();
        }
        pipe
    };
    let ticks = 20;
    let mut per_tick = Vec::new();
    for target in [10usize, 1_000_000] {
        let len: usize = redis::cmd("XLEN")
            .arg("dl:{big}:jobs")
            .query_async(&mut conn)
            .await
            .expect("XLEN");
        let mut left = target - len;
        while left > 0 {
            let n = left.min(20_000);
            let _: () = fill(n).query_async(&mut conn).await.expect("fill");
            left -= n;
        }
        let stats = queue.stats().await.expect("stats");
        assert_eq!(stats.jobs, target as u64);
        reset_stats(&mut conn).await;
        for _ in 0..ticks {
            queue.stats().await.expect("stats");
        }
        let calls = command_calls(&mut conn).await;
        let mut calls: Vec<(String, u64)> = calls
            .into_iter()
            .filter(|(c, _)| c != "config|resetstat" && c != "info")
            .collect();
        calls.sort();
        per_tick.push(calls);
    }
    assert_eq!(
        per_tick[0], per_tick[1],
        "the same commands per tick at 10 and 1,000,000"
    );
    // One script per tick (with the token every pipeline starts with, exec.rs), and the
    // same commands inside it at both sizes (commandstats counts a script's calls too).
    let evalsha = per_tick[0].iter().find(|(c, _)| c == "evalsha");
    assert_eq!(
        evalsha,
        Some(&("evalsha".to_owned(), ticks)),
        "{per_tick:?}"
    );
    let total: u64 = per_tick[0].iter().map(|(_, n)| n).sum();
    assert!(
        total <= 12 * ticks,
        "a tick is a handful of O(1)/O(log n) commands: {per_tick:?}"
    );
}

/// A handler still running at its timeout is aborted, and its run still counts: its time
/// goes to `datalayer_handler_seconds{result=error}` (the job fails "timed out").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_handler_still_records_its_time() {
    install();
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let queue = dl
        .queue("tmo", &secrets(), QueueOptions::default())
        .expect("queue");
    let mut options = WorkerOptions::default();
    options.timeout = Some(Duration::from_millis(200));
    let running = dl
        .worker("tmo", &secrets(), options)
        .expect("worker")
        .start(|_job: Job| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, String>(json!("late"))
        });
    let handle = queue.add("s", &json!(1)).await.expect("add");
    let outcome = tokio::time::timeout(Duration::from_secs(20), handle.result())
        .await
        .expect("ended")
        .expect("outcome");
    assert!(
        matches!(&outcome, datalayer_tokio::Outcome::Failed(r) if r.contains("timed out")),
        "{outcome:?}"
    );
    running.shutdown(Duration::from_secs(5)).await;
    let key = "datalayer_handler_seconds{queue=tmo,result=error}";
    let mut recorded = 0;
    for _ in 0..100 {
        recorded = seen()
            .lock()
            .unwrap()
            .histograms
            .get(key)
            .map_or(0, Vec::len);
        if recorded > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recorded, 1, "the aborted run's time");
}
