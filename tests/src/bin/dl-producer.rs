//! A producer process for the multi-producer test.
//!
//! `dl-producer <redis-url> <queue> <producer-id|-> <tag> <jobs> <ttl-ms> <log>`: a producer
//! with that id (`-`: generated) and producer ttl adds `jobs` jobs
//! with payload `{"by": tag, "i": n}` (through the echo worker, whose result is
//! `{"echo": n}`), logs `added <job id> <n>` once Redis took each, and `done <job id> <n>
//! <echo>` when its handle got the result, and `event <job id> <result>` for every completion
//! the queue's events deliver (the reader tells its own jobs' from a predecessor's, under the
//! same producer id, by the `added` lines). With `jobs` 0 it adds nothing and only listens (a replacement).
//! Prints `producer <id>` at start; `ok` once every handle got its own job's result.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use datalayer_tokio::{DataLayer, Options, Outcome, QueueEvent, QueueOptions, ShardedQueue};
use serde_json::{Value, json};

fn log_line(log: &Mutex<std::fs::File>, line: &str) {
    let mut f = log.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = writeln!(f, "{line}");
    let _ = f.flush();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, id, tag, jobs, ttl, log] = args.as_slice() else {
        eprintln!("usage: dl-producer <url> <queue> <producer-id|-> <tag> <jobs> <ttl-ms> <log>");
        std::process::exit(2);
    };
    let jobs: usize = jobs.parse().unwrap_or(0);
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("log {log}: {e}")),
    ));
    let dl = match DataLayer::connect(url, Options::default()).await {
        Ok(dl) => dl,
        Err(e) => {
            eprintln!("connect: {e}");
            std::process::exit(1);
        }
    };
    let ttl = std::time::Duration::from_millis(ttl.parse().unwrap_or(3_600_000));
    let mut options = QueueOptions::default().producer_ttl(ttl);
    if id != "-" {
        options = options.producer_id(id);
    }
    // `DL_SHARDS`: the queue's shards (default 1, the plain layout).
    let shards: u16 = std::env::var("DL_SHARDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let queue: ShardedQueue =
        match dl.sharded_queue(queue, shards, &datalayer_tests::secrets(), options) {
            Ok(q) => q,
            Err(e) => {
                eprintln!("queue: {e}");
                std::process::exit(1);
            }
        };
    println!("producer {}", queue.producer_id());
    // Every completion the queue's events deliver. Which of them were owed (jobs this
    // process did not add: its predecessor's) is decided by the reader of the log, once
    // every add has returned: an event can arrive before the add of its job returns here
    // (the worker is that fast, or the shard that reads the events is not the one that
    // took the job), so "not added yet" does not mean "not ours".
    let mut events = queue.events();
    {
        let log = log.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let QueueEvent::Completed { job, result } = event {
                    let text = String::from_utf8_lossy(&result).into_owned();
                    log_line(&log, &format!("event {job} {text}"));
                }
            }
        });
    }
    let mut waits = Vec::new();
    for n in 0..jobs {
        let handle = loop {
            match queue.add(tag, &json!({ "by": tag, "i": n })).await {
                Ok(h) => break h,
                Err(e) => {
                    eprintln!("add {n}: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        };
        log_line(&log, &format!("added {} {n}", handle.id));
        let log = log.clone();
        waits.push(tokio::spawn(async move {
            let id = handle.id.clone();
            match handle.result().await {
                Ok(Outcome::Completed(result)) => {
                    let v: Value = serde_json::from_slice(&result).unwrap_or(Value::Null);
                    log_line(&log, &format!("done {id} {n} {}", v["echo"]));
                    v["echo"] == json!(n)
                }
                other => {
                    log_line(&log, &format!("failed {id} {n} {other:?}"));
                    false
                }
            }
        }));
    }
    let mut all = true;
    for w in waits {
        all &= w.await.unwrap_or(false);
    }
    if jobs > 0 {
        println!("{}", if all { "ok" } else { "wrong" });
        queue.disconnect().await;
        std::process::exit(if all { 0 } else { 1 });
    }
    std::future::pending::<()>().await;
}
