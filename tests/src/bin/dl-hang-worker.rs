//! A worker process for crash tests: `dl-hang-worker <redis-url> <queue> <lease-ms>` takes
//! jobs and never finishes them, until the test kills it.

use std::time::Duration;

use datalayer_tokio::{Job, WorkerOptions};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, lease_ms] = args.as_slice() else {
        eprintln!("usage: dl-hang-worker <redis-url> <queue> <lease-ms>");
        std::process::exit(2);
    };
    let lease = Duration::from_millis(lease_ms.parse().unwrap_or(1_000));
    let (_dl, worker) =
        datalayer_tests::worker_process(url, queue, WorkerOptions::default().lease(lease)).await;
    let _running = worker.start(|job: Job| async move {
        println!("running {}", job.id);
        std::future::pending::<Result<(), String>>().await
    });
    std::future::pending::<()>().await;
}
