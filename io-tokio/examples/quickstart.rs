//! `REDIS_URL=redis://127.0.0.1:6379 cargo run -p datalayer-tokio --example quickstart`
use datalayer_core::keys::{KeyId, Secret, SecretRing};
use datalayer_tokio::{DataLayer, Job, Options, OsRandom, QueueOptions, WorkerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let secrets = SecretRing::new(KeyId(1), Secret::generate(&mut OsRandom)); // keep it safe
    let dl = DataLayer::connect(&url, Options::default()).await?;
    let queue = dl.queue("irc", &secrets, QueueOptions::default())?;
    let worker = dl.worker("irc", &secrets, WorkerOptions::default().concurrency(8))?;
    let running = worker.start(|job: Job| async move {
        job.json::<serde_json::Value>().map_err(|e| e.to_string()) // the result: an echo
    });
    let job = queue
        .add(
            "session-1",
            &serde_json::json!({ "type": "send", "content": "hi" }),
        )
        .await?;
    let id = job.id.clone();
    let result: serde_json::Value = job.result().await?.json()?;
    println!("{id} -> {result}");
    running.shutdown(std::time::Duration::from_secs(5)).await;
    queue.shutdown().await; // deletes the queue's keys; disconnect() would leave them
    Ok(())
}
