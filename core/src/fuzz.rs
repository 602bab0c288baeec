//! Fuzzing entry points, shared by the cargo-fuzz targets (`fuzz/`) and the stable test that
//! replays the committed corpus, so both exercise exactly the same code. Not a public API.
#![allow(clippy::panic)]

use crate::envelope::{
    Compression, Context, EnvelopeError, FLAG_COMPRESSED, FLAG_TRACE, HEADER_LEN, OpenLimits,
    Purpose, SealOptions, Sealer,
};
use crate::job::{JobId, JobRecord};
use crate::keys::{Key, KeyId, Keyring};
use crate::random::SeededRandom;
use crate::retry::{Backoff, RetryPolicy};
use crate::sim::Faults;
use crate::sim::world::{Answer, World, WorldConfig};
use crate::time::Duration;

/// The scope every fuzz envelope is sealed for.
pub const SCOPE: &str = "fuzz-queue";
/// The item every fuzz envelope is sealed for.
pub const ITEM: &[u8] = b"job-1";

/// The fuzzing keyring: key 1 (active) and key 2, both fixed.
#[must_use]
pub fn sealer() -> Sealer {
    let mut keys = Keyring::new(Key::from_bytes(KeyId(1), &[0x11; 32]));
    keys.insert(Key::from_bytes(KeyId(2), &[0x22; 32]));
    // Small limits so that the size checks are reachable by the fuzzer.
    Sealer::new(keys).with_limits(OpenLimits::new(1 << 20, 1 << 20))
}

fn context() -> Context<'static> {
    Context::new(Purpose::Job, SCOPE, ITEM)
}

/// The outcome detail every fuzz outcome is sealed for: attempt 1, instance `FUZZ_INSTANCE`.
pub const FUZZ_INSTANCE: [u8; 16] = *b"instance-0123456";

/// The context of a fuzz outcome (a result of attempt 1 of [`ITEM`]).
fn outcome_context(detail: &[u8]) -> Context<'_> {
    Context::outcome(Purpose::Result, SCOPE, ITEM, detail)
}

/// Opens arbitrary bytes as a job record and as raw bytes: must never panic, and the two
/// must agree on whether the envelope authenticates.
pub fn open_envelope(data: &[u8]) {
    let sealer = sealer();
    let raw = sealer.open_bytes_traced(&context(), data);
    let typed = sealer.open_traced::<JobRecord>(&context(), data);
    if let (Ok((_, a)), Ok((_, b))) = (&raw, &typed) {
        assert_eq!(a, b, "the two readings disagree on the trailer");
    }
    let raw = raw.map(|(bytes, _)| bytes);
    let typed = typed.map(|(record, _)| record);
    match (&raw, &typed) {
        (Ok(_), Ok(_)) | (Ok(_), Err(EnvelopeError::Decode(_))) => {}
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("open_bytes {raw:?} disagrees with open {typed:?}"),
    }
    // The same bytes as an outcome: never both a job and an outcome (the purpose and the
    // detail are in the AAD).
    let detail = crate::envelope::outcome_detail(1, &FUZZ_INSTANCE);
    let outcome = sealer.open_bytes(&outcome_context(&detail), data);
    assert!(
        raw.is_err() || outcome.is_err(),
        "opened as a job and as an outcome"
    );
}

/// A structured case: seal a plaintext, apply up to 8 mutations, and check that the result
/// opens to the plaintext exactly when nothing was changed. Layout of `data`:
/// `options u8 (bit 0: compress; bit 1: forge a compressed body instead; bit 2: with a
/// trace trailer, or a forged one) | seed u64 LE | mutation count u8 | count × (kind u8,
/// pos u16 LE, value u8) | plaintext`.
pub fn seal_then_mutate(data: &[u8]) {
    let Some((&options, rest)) = data.split_first() else {
        return;
    };
    let Some((seed, rest)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let Some((&count, mut rest)) = rest.split_first() else {
        return;
    };
    let mut mutations = Vec::new();
    for _ in 0..(count % 9) {
        let Some((m, tail)) = rest.split_first_chunk::<4>() else {
            return;
        };
        mutations.push(*m);
        rest = tail;
    }
    let plaintext = rest;
    let compression = if options & 1 == 1 {
        Compression::Above(0)
    } else {
        Compression::Never
    };
    let sealer = sealer().with_options(SealOptions::default().compression(compression));
    if options & 2 == 2 {
        // Forge: an authenticated envelope whose "compressed" body is arbitrary bytes, so
        // that the length checks and the lz4 decoder see hostile input past the AEAD.
        // With bit 2, the body is also read as (a compressed) plaintext with a trailer.
        let mut body = vec![0u8; HEADER_LEN];
        body.extend_from_slice(plaintext);
        let flags = FLAG_COMPRESSED | if options & 4 == 4 { FLAG_TRACE } else { 0 };
        if let Ok(forged) = sealer.encrypt(&context(), body, flags, [7; 12]) {
            let _ = sealer.open_bytes_traced(&context(), &forged);
            let _ = sealer.open_traced::<JobRecord>(&context(), &forged);
        }
        return;
    }
    let trace = (options & 4 == 4).then(|| crate::trace::TraceContext {
        trace_id: [seed[0] | 1; 16],
        span_id: [seed[1] | 1; 8],
        flags: seed[2],
        state: "k=v".into(),
    });
    let mut rng = SeededRandom::new(u64::from_le_bytes(*seed));
    let sealed = match sealer.seal_bytes_traced(&context(), plaintext, trace.as_ref(), &mut rng) {
        Ok(s) => s,
        Err(e) => panic!("sealing {} bytes failed: {e}", plaintext.len()),
    };
    let mut bytes = sealed.clone();
    let mut scope = SCOPE.to_owned();
    for [kind, lo, hi, value] in mutations {
        let pos = usize::from(u16::from_le_bytes([lo, hi]));
        mutate(&mut bytes, &mut scope, kind, pos, value);
    }
    let ctx = Context::new(Purpose::Job, &scope, ITEM);
    let opened = sealer.open_bytes_traced(&ctx, &bytes);
    if bytes == sealed && scope == SCOPE {
        assert_eq!(
            opened,
            Ok((plaintext.to_vec(), trace)),
            "an intact envelope must open"
        );
    } else {
        assert!(opened.is_err(), "a mutated envelope opened: {bytes:02x?}");
    }
}

fn mutate(bytes: &mut Vec<u8>, scope: &mut String, kind: u8, pos: usize, value: u8) {
    let len = bytes.len();
    match kind % 6 {
        0 if len > 0 => bytes[pos % len] ^= 1 << (value % 8),
        1 if len > 0 => bytes.truncate(pos % len),
        2 => bytes.push(value),
        3 if len > 0 => bytes[pos % len] = value,
        4 => scope.push(char::from(b'a' + value % 26)),
        5 if len >= 8 => bytes[4..8].copy_from_slice(&u32::from(value).to_le_bytes()),
        _ => {}
    }
}

/// Valid inputs to start the fuzzers from: envelopes that open under [`sealer`], plain and
/// compressed, job records and raw bytes, and one structured case per mutation kind.
#[must_use]
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let sealer = sealer();
    let mut rng = SeededRandom::new(1);
    let job = JobRecord {
        id: JobId::from("job-1"),
        title: "irc:send".into(),
        session_id: "session-a".into(),
        payload: br#"{"type":"send","object":{"content":"hello"}}"#.repeat(40),
        attempt: 1,
        created_at_ms: 1_700_000_000_000,
        instance: crate::job::Instance(FUZZ_INSTANCE),
    };
    let mut out = Vec::new();
    let mut push = |target, name: &str, bytes: Result<Vec<u8>, EnvelopeError>| {
        if let Ok(b) = bytes {
            out.push((target, name.to_owned(), b));
        }
    };
    push(
        "open_envelope",
        "job-compressed",
        sealer.seal(&context(), &job, &mut rng),
    );
    let small = JobRecord {
        payload: b"{}".to_vec(),
        ..job.clone()
    };
    push(
        "open_envelope",
        "job-small",
        sealer.seal(&context(), &small, &mut rng),
    );
    push(
        "open_envelope",
        "empty",
        sealer.seal_bytes(&context(), b"", &mut rng),
    );
    let detail = crate::envelope::outcome_detail(1, &FUZZ_INSTANCE);
    push(
        "open_envelope",
        "outcome",
        sealer.seal_bytes(&outcome_context(&detail), br#"{"ok":true}"#, &mut rng),
    );
    let never = sealer
        .clone()
        .with_options(SealOptions::default().compression(Compression::Never));
    push(
        "open_envelope",
        "job-plain",
        never.seal(&context(), &job, &mut rng),
    );
    let trace = crate::trace::TraceContext {
        trace_id: [0xa1; 16],
        span_id: [0xb2; 8],
        flags: 1,
        state: "dl=1".into(),
    };
    push(
        "open_envelope",
        "job-traced",
        never.seal_traced(&context(), &small, Some(&trace), &mut rng),
    );
    for kind in 0u8..6 {
        // Kinds 3 to 5 carry a trace trailer.
        let mut case = vec![(kind & 1) | if kind >= 3 { 4 } else { 0 }];
        case.extend_from_slice(&u64::from(kind).to_le_bytes());
        case.extend_from_slice(&[1, kind, 3 + kind, 0, 0x41]);
        case.extend_from_slice(&br"hello, hello, hello, hello, hello, hello".repeat(3));
        push("seal_then_mutate", &format!("kind-{kind}"), Ok(case));
    }
    // Engine sequences: adds, deliveries, answers, time, a crash, faults.
    let mut ops = vec![2u8, 1, 1, 2, 1, 9, 9, 9, 9, 9, 9, 9, 9];
    for i in 0u8..60 {
        ops.extend_from_slice(&[i % 9, i.wrapping_mul(7), i.wrapping_mul(13)]);
    }
    push("engine_ops", "mixed", Ok(ops));
    let mut calm = vec![0u8, 0, 1, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8];
    for i in 0u8..30 {
        calm.extend_from_slice(&[[0, 2, 2, 4, 5][usize::from(i % 5)], i, 0]);
    }
    push("engine_ops", "calm", Ok(calm));
    // Replies as Redis sends them: a read's entries, a script's, a transaction's.
    push(
        "resp_replies",
        "read",
        Ok(b"\x80*1\r\n*2\r\n$8\r\ndl:{q}:j\r\n*1\r\n*2\r\n$15\r\n1700000000000-0\r\n*2\r\n$1\r\ne\r\n$5\r\nhello\r\n".to_vec()),
    );
    push(
        "resp_replies",
        "transaction",
        Ok(
            b"\x40+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n$-1\r\n-NOSCRIPT No matching script\r\n"
                .to_vec(),
        ),
    );
    push(
        "resp_replies",
        "resp3",
        Ok(
            b"\x20%1\r\n+k\r\n~2\r\n#t\r\n,1.5\r\n_\r\n=7\r\ntxt:abc\r\n(123\r\n>1\r\n:0\r\n"
                .to_vec(),
        ),
    );
    // Forged compressed bodies: a valid block, and one whose length prefix lies.
    let plain = b"hello hello hello hello hello hello hello hello".repeat(4);
    let block = lz4_flex::block::compress(&plain);
    for (name, claimed) in [
        ("forged-valid", plain.len() as u32),
        ("forged-lying", 1 << 19),
    ] {
        let mut case = vec![2];
        case.extend_from_slice(&[0; 8]);
        case.push(0);
        case.extend_from_slice(&claimed.to_le_bytes());
        case.extend_from_slice(&block);
        push("seal_then_mutate", name, Ok(case));
    }
    out
}

/// Arbitrary bytes as replies from Redis ([`crate::resp::Decoder`]): decoded whole and
/// again in two pieces cut where the first byte says, the same replies and the same
/// failure (or none) either way, and never a panic. Layout: `cut u8 | bytes`.
pub fn resp_replies(data: &[u8]) {
    let Some((&cut_byte, input)) = data.split_first() else {
        return;
    };
    let decode = |pieces: &[&[u8]]| {
        let mut decoder = crate::resp::Decoder::default();
        let mut buf = Vec::new();
        let mut start = 0;
        let mut values = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&buf[start..]) {
                    Ok(Some((v, used))) => {
                        assert!(
                            used > 0 && start + used <= buf.len(),
                            "{used} of {}",
                            buf.len()
                        );
                        values.push(v);
                        start += used;
                    }
                    Ok(None) => break,
                    Err(e) => return (values, Some(e)),
                }
            }
        }
        (values, None)
    };
    let at = usize::from(cut_byte) * input.len() / 255;
    let (head, tail) = input.split_at(at.min(input.len()));
    let whole = decode(&[input]);
    let cut = decode(&[head, tail]);
    assert_eq!(whole.0, cut.0, "values differ when cut at {at}");
    assert_eq!(
        whole.1.is_some(),
        cut.1.is_some(),
        "failure differs when cut at {at}: {:?} / {:?}",
        whole.1,
        cut.1
    );
    // The same bytes through an exchange owed requests of 1 to 4 replies: each request
    // answered gets exactly its count, in order, and the replies it hands out are the
    // decoder's, however the bytes are cut.
    let sizes: Vec<usize> = (0..whole.0.len() + 2)
        .map(|i| 1 + (usize::from(cut_byte) + i) % 4)
        .collect();
    let run = |pieces: &[&[u8]]| {
        let mut exchange = crate::resp::Exchange::default();
        for (i, n) in sizes.iter().enumerate() {
            exchange.sent(*n, i);
        }
        let mut answered = Vec::new();
        let mut buf = Vec::new();
        let mut start = 0;
        for piece in pieces {
            buf.extend_from_slice(piece);
            match exchange.received(&buf[start..], &mut answered) {
                Ok(used) => start += used,
                Err(_) => break,
            }
        }
        answered
    };
    let answered = run(&[input]);
    assert_eq!(
        answered,
        run(&[head, tail]),
        "answers differ when cut at {at}"
    );
    let mut flat = Vec::new();
    for (i, (token, values)) in answered.into_iter().enumerate() {
        assert_eq!((token, values.len()), (i, sizes[i]));
        flat.extend(values);
    }
    assert!(
        whole.0.starts_with(&flat),
        "the exchange handed out other replies"
    );
}

/// Arbitrary operation sequences on the engine over the model; panics when an invariant of
/// [`World`] breaks. Layout of `data`: `queues u8 (mod 3; its quotient's parity: 1 or 2
/// producers per queue) | workers u8 | concurrency u8 | attempts u8
/// | max_stalled u8 | seed u64 LE | ops`, each op 3 bytes `(code, a, b)`.
pub fn engine_ops(data: &[u8]) {
    let Some((head, mut ops)) = data.split_first_chunk::<13>() else {
        return;
    };
    let seed = u64::from_le_bytes([
        head[5], head[6], head[7], head[8], head[9], head[10], head[11], head[12],
    ]);
    let cfg = WorldConfig {
        queues: usize::from(head[0] % 3) + 1,
        producers_per_queue: usize::from(head[0] / 3 % 2) + 1,
        workers_per_queue: usize::from(head[1] % 4) + 1,
        concurrency: u32::from(head[2] % 3) + 1,
        retry: RetryPolicy::new(
            u32::from(head[3] % 4) + 1,
            Backoff::Exponential {
                base: Duration::from_millis(50),
                max: Duration::from_millis(2_000),
                jitter: true,
            },
        )
        .max_stalled(u32::from(head[4] % 3) + 1),
        seed,
        ..WorldConfig::default()
    };
    let mut world = World::new(cfg);
    let queues = world.producers();
    let slots = world.slots();
    // Bounded work per input, so the fuzzer stays fast.
    let mut steps = 0;
    while let Some(([code, a, b], rest)) = ops.split_first_chunk::<3>().map(|(o, r)| (*o, r)) {
        ops = rest;
        steps += 1;
        if steps > 400 {
            break;
        }
        let (a, b) = (usize::from(a), usize::from(b));
        match code % 9 {
            0 | 1 => world.add(
                a % queues,
                Duration::from_millis(if b % 4 == 0 { b as u64 * 20 } else { 0 }),
            ),
            2 | 3 => world.deliver(a * 256 + b),
            4 => {
                let answer = [
                    Answer::Ok,
                    Answer::Ok,
                    Answer::Err,
                    Answer::Panic,
                    Answer::Hang,
                ];
                world.answer(a % slots, b, answer[b % answer.len()]);
            }
            5 => world.advance(Duration::from_millis((a * 256 + b) as u64)),
            6 if b % 2 == 0 => world.crash(a % slots),
            6 => world.restart(a % slots),
            7 => world.set_time(world.now - Duration::from_millis((a * 20) as u64)),
            _ => {
                world.net.faults = Faults {
                    lose_command: (a % 4 * 50) as u16,
                    lose_reply: (b % 4 * 50) as u16,
                    error_reply: ((a >> 2) % 3 * 30) as u16,
                    ..Faults::default()
                };
            }
        }
        if let Err(e) = world.check_step() {
            panic!("invariant broken: {e}");
        }
    }
    assert!(
        world.quiesce(200_000),
        "did not quiesce: {:?}",
        world.ledger
    );
    if let Err(e) = world.check_quiescent() {
        panic!("invariant broken at quiescence: {e}");
    }
}
