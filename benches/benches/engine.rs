//! Engine cost per job: add → deliver → complete → result, for batches of jobs driven
//! through the producer and worker machines against the in-memory model:
//! `cargo bench -p datalayer-bench --bench engine`. The figure includes sealing and opening
//! (the job and its result: two seals, two opens per job) and the model's own work; the
//! `envelope` bench gives the crypto share alone.
// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use datalayer_core::command::Reply;
use datalayer_core::envelope::Sealer;
use datalayer_core::keys::{Key, KeyId, Keyring};
use datalayer_core::producer::{AddJob, Producer, ProducerConfig, ProducerEvent};
use datalayer_core::random::SeededRandom;
use datalayer_core::sim::Sim;
use datalayer_core::time::Instant;
use datalayer_core::worker::{Worker, WorkerConfig, WorkerEvent};

const T0: Instant = Instant::from_unix_ms(1_700_000_000_000);

/// Pushes `n` jobs of `payload` bytes through one producer and one worker of concurrency
/// `n`; returns how many results came back.
fn run(n: usize, payload: &[u8], sealer: &Sealer, rng: &mut SeededRandom) -> usize {
    let mut sim = Sim::new(T0);
    let pc = ProducerConfig::new("bench").block(None);
    let wc = WorkerConfig::new("bench", "w1")
        .concurrency(n as u32)
        .block(None);
    let (Ok(mut p), Ok(mut w)) = (
        Producer::new(pc, sealer.clone(), T0, rng),
        Worker::new(wc, sealer.clone(), T0, rng),
    ) else {
        panic!("bench configuration rejected");
    };
    for _ in 0..n {
        let job = AddJob {
            payload: payload.to_vec(),
            ..AddJob::default()
        };
        if p.add(T0, job).is_err() {
            panic!("add refused");
        }
    }
    let mut results = 0;
    let mut now = T0;
    while results < n {
        now += Duration::from_millis(1);
        sim.set_time(now);
        let _ = p.handle_timeout(now);
        let _ = w.handle_timeout(now);
        while let Some(cmd) = p.poll_command() {
            let v = sim.execute(&cmd.kind);
            let _ = p.handle_reply(now, cmd.op, Reply::Value(v));
        }
        while let Some(ev) = p.poll_event() {
            if let ProducerEvent::Completed { result, .. } = ev {
                black_box(result);
                results += 1;
            }
        }
        while let Some(cmd) = w.poll_command() {
            let v = sim.execute(&cmd.kind);
            let _ = w.handle_reply(now, cmd.op, Reply::Value(v));
            while let Some(ev) = w.poll_event() {
                if let WorkerEvent::Job(d) = ev {
                    let _ = w.complete(now, d.entry, &d.job.payload[..8.min(d.job.payload.len())]);
                }
            }
        }
        if now > T0 + Duration::from_secs(10) {
            panic!("bench did not finish: {results} of {n} results");
        }
    }
    results
}

fn bench(c: &mut Criterion) {
    let sealer = Sealer::new(Keyring::new(Key::from_bytes(KeyId(1), &[7; 32])));
    let mut rng = SeededRandom::new(1);
    let mut group = c.benchmark_group("engine/job");
    for (size, n) in [(200usize, 256usize), (4096, 256)] {
        let payload = vec![b'x'; size];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            b.iter(|| run(n, payload, &sealer, &mut rng))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
