//! Seal and open cost of a job envelope by payload size, for compressible (JSON-like) and
//! incompressible (random) payloads: `cargo bench -p datalayer-bench --bench envelope`.
// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use datalayer_core::Random;
use datalayer_core::envelope::{Context, Purpose, Sealer};
use datalayer_core::job::{JobId, JobRecord};
use datalayer_core::keys::{KeyId, Secret, SecretRing};
use datalayer_core::random::SeededRandom;

const SIZES: [usize; 3] = [64, 1024, 64 * 1024];

fn payload(size: usize, random: bool, rng: &mut SeededRandom) -> Vec<u8> {
    if random {
        let mut p = vec![0u8; size];
        rng.fill_bytes(&mut p);
        p
    } else {
        let text = br#"{"type":"send","actor":{"id":"nick@irc.libera.chat"},"object":{"content":"hello world #"#;
        let mut p = Vec::with_capacity(size + text.len());
        let mut i = 0u32;
        while p.len() < size {
            p.extend_from_slice(text);
            p.extend_from_slice(i.to_string().as_bytes());
            i += 1;
        }
        p.truncate(size);
        p
    }
}

fn record(payload: Vec<u8>) -> JobRecord {
    JobRecord {
        id: JobId::from("0194f3c2-job"),
        title: "irc:send".into(),
        session_id: "session-0123456789".into(),
        payload,
        attempt: 1,
        created_at_ms: 1_700_000_000_000,
        instance: datalayer_core::job::Instance([7; 16]),
    }
}

fn bench(c: &mut Criterion) {
    let mut rng = SeededRandom::new(1);
    let ring = SecretRing::new(KeyId(1), Secret::generate(&mut rng));
    let sealer = Sealer::new(ring.queue_keyring("irc"));
    let ctx = Context::new(Purpose::Job, "irc", b"0194f3c2-job");
    for kind in ["json", "random"] {
        let mut seal = c.benchmark_group(format!("seal/{kind}"));
        for size in SIZES {
            let rec = record(payload(size, kind == "random", &mut rng));
            seal.throughput(Throughput::Bytes(size as u64));
            seal.bench_with_input(BenchmarkId::from_parameter(size), &rec, |b, rec| {
                b.iter(|| sealer.seal(&ctx, black_box(rec), &mut rng))
            });
        }
        seal.finish();
        let mut open = c.benchmark_group(format!("open/{kind}"));
        for size in SIZES {
            let rec = record(payload(size, kind == "random", &mut rng));
            let Ok(env) = sealer.seal(&ctx, &rec, &mut rng) else {
                panic!("sealing the bench record failed");
            };
            open.throughput(Throughput::Bytes(size as u64));
            open.bench_with_input(BenchmarkId::from_parameter(size), &env, |b, env| {
                b.iter(|| sealer.open::<JobRecord>(&ctx, black_box(env)))
            });
        }
        open.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
