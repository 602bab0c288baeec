//! `--cluster`: end to end on a local Redis Cluster of 3 masters, beside the same scenario
//! on one redis-server, in the same run: one queue on one server; one queue on the cluster
//! (one slot: one master does all its work); three queues, one per master (how one process
//! spreads its load); one queue of three shards (how one hot queue spreads its load); one
//! queue shared by two producers (two `DataLayer`s, as two server processes would). Per scenario: jobs/s, client CPU per job, and Redis CPU per job on
//! each node (`INFO cpu` before and after), which shows where the work went. On a 2-core
//! machine the three masters and the client share the cores, so the figure to read is the
//! per-node cost, not a speed-up that cannot happen here.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datalayer_core::naming::{QueueKeys, hash_slot};
use datalayer_core::producer::AddJob;
use datalayer_tests::cluster::RedisCluster;
use datalayer_tests::{Persistence, RedisServer};
use datalayer_tokio::{
    DataLayer, Error, JobHandle, JobQueue, Options, QueueOptions, ShardedQueue, WorkerOptions,
};
use serde_json::json;

use crate::{Res, cpu_time, payload, redis_cpu, secrets};

/// One scenario's figures.
struct Figures {
    scenario: String,
    jobs: u64,
    secs: f64,
    client_us: f64,
    /// Redis CPU per job (µs) on each server, by port.
    redis_us: Vec<(u16, f64)>,
}

/// Redis CPU (s) of each server.
async fn cpu_of(conns: &mut [(u16, redis::aio::MultiplexedConnection)]) -> Res<Vec<f64>> {
    let mut out = Vec::new();
    for (_, c) in conns.iter_mut() {
        out.push(redis_cpu(c).await?);
    }
    Ok(out)
}

/// A queue the callers add to.
#[derive(Clone)]
enum Target {
    Plain(JobQueue),
    Sharded(ShardedQueue),
}

impl Target {
    async fn add_job(&self, job: AddJob) -> Result<JobHandle, Error> {
        match self {
            Self::Plain(q) => q.add_job(job).await,
            Self::Sharded(q) => q.add_job(job).await,
        }
    }

    async fn shutdown(&self) {
        match self {
            Self::Plain(q) => q.shutdown().await,
            Self::Sharded(q) => q.shutdown().await,
        }
    }
}

/// `jobs` jobs of `size` bytes through `names` (round robin over the queues, and over the
/// producers' `DataLayer`s `dls`) from 512 callers, each result awaited; a worker of
/// concurrency 256 per queue (of `shards` shards).
#[allow(clippy::too_many_arguments)]
async fn end_to_end(
    dls: &[&DataLayer],
    names: &[String],
    shards: u16,
    conns: &mut [(u16, redis::aio::MultiplexedConnection)],
    jobs: u64,
    size: usize,
    scenario: String,
) -> Res<Figures> {
    let mut workers = Vec::new();
    let mut queues = Vec::new();
    for name in names {
        let options = WorkerOptions::default().concurrency(256).shards(shards);
        workers.push(
            dls[0]
                .worker(name, &secrets(), options)?
                .start(|_job| std::future::ready(Ok::<_, String>(()))),
        );
        for dl in dls {
            queues.push(if shards > 1 {
                Target::Sharded(dl.sharded_queue(
                    name,
                    shards,
                    &secrets(),
                    QueueOptions::default(),
                )?)
            } else {
                Target::Plain(dl.queue(name, &secrets(), QueueOptions::default())?)
            });
        }
    }
    let before = cpu_of(conns).await?;
    let cpu = cpu_time();
    let t = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..512 {
        let (queues, next) = (queues.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return;
                }
                let q = &queues[usize::try_from(i).unwrap_or(0) % queues.len()];
                let job = AddJob {
                    session_id: "bench".into(),
                    payload: payload(size),
                    ..AddJob::default()
                };
                match q.add_job(job).await {
                    Ok(h) => {
                        if let Err(e) = h.result().await {
                            eprintln!("result lost: {e}");
                        }
                    }
                    Err(e) => eprintln!("add failed: {e}"),
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let secs = t.elapsed().as_secs_f64();
    let client = cpu_time().saturating_sub(cpu);
    let after = cpu_of(conns).await?;
    for w in workers {
        w.shutdown(Duration::from_secs(10)).await;
    }
    for q in &queues {
        q.shutdown().await;
    }
    let per_job = |s: f64| s * 1e6 / jobs as f64;
    Ok(Figures {
        scenario,
        jobs,
        secs,
        client_us: per_job(client.as_secs_f64()),
        redis_us: conns
            .iter()
            .zip(before.iter().zip(&after))
            .map(|((port, _), (b, a))| (*port, per_job(a - b)))
            .collect(),
    })
}

async fn raw(port: u16) -> Res<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await?)
}

/// The cluster mode of the harness.
pub(crate) async fn run(jobs: u64, size: usize, as_json: bool) -> Res<()> {
    let prefix = format!("dlbench{:08x}", std::process::id());
    let options = || Options::default().prefix(prefix.clone());
    let mut rows = Vec::new();

    // One queue on one server.
    let server = RedisServer::start(Persistence::None);
    let dl = DataLayer::connect(&server.url(), options()).await?;
    let mut conns = vec![(server.port(), raw(server.port()).await?)];
    let one = vec!["one".to_owned()];
    for (shards, label) in [
        (1, "one server, one queue"),
        (3, "one server, one queue of 3 shards"),
    ] {
        let dls = [&dl];
        let row = end_to_end(&dls, &one, shards, &mut conns, jobs, size, label.into());
        rows.push(row.await?);
    }
    drop(dl);
    drop(server);

    // The cluster.
    eprintln!("  starting a cluster of 3 masters");
    let cluster = RedisCluster::start(3, 0);
    let dl = DataLayer::connect(&cluster.url(), options()).await?;
    let mut conns = Vec::new();
    for port in cluster.master_ports() {
        conns.push((port, raw(port).await?));
    }
    let second = DataLayer::connect(&cluster.url(), options()).await?;
    for (dls, shards, label) in [
        (&[&dl][..], 1, "cluster, one queue"),
        (&[&dl][..], 3, "cluster, one queue of 3 shards"),
        (&[&dl, &second][..], 1, "cluster, one queue, 2 producers"),
    ] {
        let row = end_to_end(dls, &one, shards, &mut conns, jobs, size, label.into());
        rows.push(row.await?);
    }
    // One queue per master.
    let mut by_master: HashMap<u16, String> = HashMap::new();
    for i in 0.. {
        let name = format!("spread{i}");
        let slot = hash_slot(QueueKeys::new(&prefix, &name)?.jobs.as_bytes());
        by_master.entry(cluster.master_of(slot)).or_insert(name);
        if by_master.len() == conns.len() || i > 10_000 {
            break;
        }
    }
    let spread: Vec<String> = by_master.into_values().collect();
    let label = format!("cluster, {} queues, one per master", spread.len());
    rows.push(end_to_end(&[&dl], &spread, 1, &mut conns, jobs, size, label).await?);

    // Nothing of ours may remain on any master.
    let mut left = 0;
    for (_, c) in &mut conns {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(c)
            .await?;
        left += keys.len();
    }
    if as_json {
        let out = json!({
            "jobs_per_scenario": jobs,
            "payload_bytes": size,
            "keys_left": left,
            "results": rows.iter().map(|r| json!({
                "scenario": r.scenario,
                "jobs_per_s": r.jobs as f64 / r.secs,
                "client_cpu_us_per_job": r.client_us,
                "redis_cpu_us_per_job_by_node": r.redis_us.iter().map(|(p, us)| json!({"port": p, "us": us})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "\n{:<38} {:>10} {:>11}  Redis CPU µs/job per node (total)",
            "end to end, every result read", "jobs/s", "client µs"
        );
        for r in &rows {
            let nodes: Vec<String> = r
                .redis_us
                .iter()
                .map(|(_, us)| format!("{us:.1}"))
                .collect();
            let total: f64 = r.redis_us.iter().map(|(_, us)| us).sum();
            println!(
                "{:<38} {:>10.0} {:>11.1}  {} ({total:.1})",
                r.scenario,
                r.jobs as f64 / r.secs,
                r.client_us,
                nodes.join(" / ")
            );
        }
        println!("\nkeys left behind: {left}");
    }
    if left > 0 {
        return Err(format!("{left} keys left behind on the cluster").into());
    }
    Ok(())
}
