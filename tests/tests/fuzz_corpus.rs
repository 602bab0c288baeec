//! Replays every committed fuzz corpus file through the fuzz entry points on stable Rust, so
//! CI checks the corpus (and any crash reproducer added to it) without nightly.

use std::path::Path;

use datalayer_core::fuzz;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} unreadable: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        run(&data);
        n += 1;
    }
    n
}

#[test]
fn open_envelope_corpus() {
    let n = replay("open_envelope", fuzz::open_envelope);
    assert!(n >= 4, "only {n} corpus files");
}

#[test]
fn seal_then_mutate_corpus() {
    let n = replay("seal_then_mutate", fuzz::seal_then_mutate);
    assert!(n >= 6, "only {n} corpus files");
}

#[test]
fn engine_ops_corpus() {
    let n = replay("engine_ops", fuzz::engine_ops);
    assert!(n >= 2, "only {n} corpus files");
}

#[test]
fn resp_replies_corpus() {
    let n = replay("resp_replies", fuzz::resp_replies);
    assert!(n >= 3, "only {n} corpus files");
}

#[test]
fn seeds_open() {
    // The seed envelopes are valid: the fuzzer starts from inside the format, not outside.
    let sealer = fuzz::sealer();
    let ctx = datalayer_core::envelope::Context::new(
        datalayer_core::envelope::Purpose::Job,
        fuzz::SCOPE,
        fuzz::ITEM,
    );
    for (target, name, bytes) in fuzz::seeds() {
        match target {
            "open_envelope" if name == "outcome" => {
                let detail = datalayer_core::envelope::outcome_detail(1, &fuzz::FUZZ_INSTANCE);
                let ctx = datalayer_core::envelope::Context::outcome(
                    datalayer_core::envelope::Purpose::Result,
                    fuzz::SCOPE,
                    fuzz::ITEM,
                    &detail,
                );
                assert!(sealer.open_bytes(&ctx, &bytes).is_ok(), "seed {name}");
                fuzz::open_envelope(&bytes);
            }
            "open_envelope" => assert!(sealer.open_bytes(&ctx, &bytes).is_ok(), "seed {name}"),
            "engine_ops" => fuzz::engine_ops(&bytes),
            "resp_replies" => {
                // Whole replies, every one: the fuzzer starts from what Redis sends.
                let mut decoder = datalayer_core::resp::Decoder::default();
                let mut at = 1;
                while at < bytes.len() {
                    match decoder.decode(&bytes[at..]) {
                        Ok(Some((_, used))) => at += used,
                        other => panic!("seed {name} at {at}: {other:?}"),
                    }
                }
                fuzz::resp_replies(&bytes);
            }
            _ => fuzz::seal_then_mutate(&bytes),
        }
    }
}
