//! The short chaos run (the harness runs the long one: `--chaos 100000`): every fault at
//! once, and every job's outcome reaches its producer, once, with its own result.

use std::sync::Arc;
use std::time::Duration;

use datalayer_tests::chaos::{self, ChaosConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_has_one_outcome_through_every_fault_at_once() {
    let report = chaos::run(ChaosConfig {
        jobs: 4_000,
        workers: 3,
        redis_restarts: 2,
        in_flight: 400,
        rate: 200,
        // Short: restarts and swallowed replies outlast it, so some adds end Unavailable
        // (checked: never ran) or Unconfirmed (added again with the same id).
        add_wait: Duration::from_secs(1),
        deadline: Duration::from_secs(240),
        worker: Arc::new(|url, queue, log| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dl-echo-worker"));
            cmd.arg(url).arg(queue).arg(log);
            cmd
        }),
    })
    .await
    .unwrap_or_else(|e| panic!("chaos: {e}"));
    eprintln!("chaos: {report:?}");
    assert_eq!(report.completed, 4_000);
    assert_eq!(report.redis_restarts, 2);
    assert!(
        report.worker_kills >= 1 && report.garbage >= 5 && report.proxy_faults >= 1,
        "{report:?}"
    );
}
