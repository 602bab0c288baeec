//! A worker process with OpenTelemetry: runs `count` jobs of a queue, shuts down, then
//! prints every span it recorded (`datalayer_tests::otel::line`), one per line.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use datalayer_tokio::{DataLayer, Options, WorkerOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, count] = args.as_slice() else {
        eprintln!("usage: dl-traced-worker <redis-url> <queue> <jobs>");
        std::process::exit(2);
    };
    let count: usize = count.parse().unwrap_or(1);
    let (exporter, provider) = datalayer_tests::otel::install();
    let dl = match DataLayer::connect(url, Options::default()).await {
        Ok(dl) => dl,
        Err(e) => {
            eprintln!("connect: {e}");
            std::process::exit(1);
        }
    };
    let worker = match dl.worker(queue, &datalayer_tests::secrets(), WorkerOptions::default()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("worker: {e}");
            std::process::exit(1);
        }
    };
    let done = Arc::new(AtomicUsize::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let (d, n) = (done.clone(), notify.clone());
    let running = worker.start(move |job| {
        let (d, n) = (d.clone(), n.clone());
        async move {
            d.fetch_add(1, Ordering::SeqCst);
            n.notify_one();
            Ok::<_, String>(serde_json::json!({ "ran": job.id.0 }))
        }
    });
    while done.load(Ordering::SeqCst) < count {
        notify.notified().await;
    }
    // Drained: every settle confirmed, so every span has ended.
    running.shutdown(Duration::from_secs(10)).await;
    let _ = provider.force_flush();
    for span in exporter.get_finished_spans().unwrap_or_default() {
        println!("{}", datalayer_tests::otel::line(&span));
    }
}
