//! A worker process for the chaos run (and the producers tests; `DL_SHARDS` for a sharded
//! queue): echoes each job, logging its id to a file first
//! (the run counts each job's runs from these logs).

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, log] = args.as_slice() else {
        eprintln!("usage: dl-echo-worker <redis-url> <queue> <runs-log>");
        std::process::exit(2);
    };
    datalayer_tests::chaos::worker_main(url, queue, std::path::Path::new(log)).await;
}
