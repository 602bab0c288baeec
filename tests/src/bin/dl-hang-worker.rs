//! A worker process for crash tests: `dl-hang-worker <redis-url> <queue> <lease-ms>` takes
//! jobs and never finishes them, until the test kills it.

use std::time::Duration;

use datalayer_core::keys::{KeyId, Secret, SecretRing};
use datalayer_tokio::{DataLayer, Job, Options, WorkerOptions};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, lease_ms] = args.as_slice() else {
        eprintln!("usage: dl-hang-worker <redis-url> <queue> <lease-ms>");
        std::process::exit(2);
    };
    let lease = Duration::from_millis(lease_ms.parse().unwrap_or(1_000));
    let secrets = SecretRing::new(KeyId(1), Secret::from_bytes([42; 32]));
    let dl = match DataLayer::connect(url, Options::default()).await {
        Ok(dl) => dl,
        Err(e) => {
            eprintln!("connect: {e}");
            std::process::exit(1);
        }
    };
    let worker = match dl.worker(queue, &secrets, WorkerOptions::default().lease(lease)) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("worker: {e}");
            std::process::exit(1);
        }
    };
    let _running = worker.start(|job: Job| async move {
        println!("running {}", job.id);
        std::future::pending::<Result<(), String>>().await
    });
    std::future::pending::<()>().await;
}
