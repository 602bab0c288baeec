//! Checks FORMAT.md's test vectors against the code: the document is the specification, so
//! the vectors are read from it rather than copied here.

use std::collections::HashMap;

use datalayer_core::credentials::{CredentialStore, canonical_json, credentials_hash};
use datalayer_core::envelope::{
    Compression, Context, FLAG_TRACE, HEADER_LEN, Purpose, SealOptions, Sealer, outcome_detail,
};
use datalayer_core::job::{Instance, JobId, JobRecord};
use datalayer_core::keys::{
    Key, KeyId, Keyring, Secret, SecretRing, derive_credential_names_key_bytes,
    derive_credentials_key_bytes, derive_credentials_root_bytes, derive_queue_key_bytes,
};
use datalayer_core::random::SeededRandom;
use datalayer_core::scripts::Invocation;
use datalayer_core::trace::TraceContext;

const FORMAT: &str = include_str!("../../FORMAT.md");

type Vector = HashMap<String, String>;

fn vectors() -> Vec<Vector> {
    FORMAT
        .split("```vector\n")
        .skip(1)
        .map(|block| {
            let body = block.split("```").next().unwrap_or_default();
            body.lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn secret(v: &Vector, field: &str) -> Secret {
    Secret::from_slice(&unhex(&v[field])).expect("32-byte secret")
}

fn record(payload: &[u8]) -> JobRecord {
    JobRecord {
        id: JobId::from("job-1"),
        title: "irc:send".into(),
        session_id: "session-a".into(),
        payload: payload.to_vec(),
        attempt: 1,
        created_at_ms: 1_700_000_000_000,
        instance: Instance(std::array::from_fn(|i| 0x60 + i as u8)),
    }
}

fn root(v: &Vector) -> Secret {
    Secret::from_bytes(*derive_credentials_root_bytes(&secret(v, "server-secret")))
}

/// An outcome vector: the AAD binds purpose, scope, job, attempt and instance.
fn check_outcome(v: &Vector) {
    let key: [u8; 32] = unhex(&v["key"]).try_into().expect("32-byte key");
    let id = KeyId(v["key-id"].parse().expect("key id"));
    let sealer = Sealer::new(Keyring::new(Key::from_bytes(id, &key)));
    assert_eq!(v["purpose"], "2");
    let attempt: u32 = v["attempt"].parse().expect("attempt");
    let instance: [u8; 16] = unhex(&v["instance"]).try_into().expect("16-byte instance");
    let detail = outcome_detail(attempt, &instance);
    let ctx = Context::outcome(Purpose::Result, &v["scope"], v["item"].as_bytes(), &detail);
    let nonce: [u8; 12] = unhex(&v["nonce"]).try_into().expect("12-byte nonce");
    let plain = unhex(&v["plaintext"]);
    let env = unhex(&v["envelope"]);
    let sealed = sealer
        .seal_bytes_with_nonce(&ctx, &plain, nonce)
        .expect("seal");
    assert_eq!(sealed, env, "result: envelope");
    let header: [u8; HEADER_LEN] = env[..HEADER_LEN].try_into().expect("header");
    assert_eq!(ctx.aad(&header), unhex(&v["aad"]), "result: aad");
    assert_eq!(sealer.open_bytes(&ctx, &env).expect("open"), plain);
    // The same bytes under another kind, attempt or instance do not open.
    let other = outcome_detail(attempt + 1, &instance);
    let mut stale = instance;
    stale[0] ^= 1;
    let stale = outcome_detail(attempt, &stale);
    for ctx in [
        Context::outcome(Purpose::Failure, &v["scope"], v["item"].as_bytes(), &detail),
        Context::outcome(
            Purpose::DeadLetter,
            &v["scope"],
            v["item"].as_bytes(),
            &detail,
        ),
        Context::outcome(Purpose::Result, &v["scope"], v["item"].as_bytes(), &other),
        Context::outcome(Purpose::Result, &v["scope"], v["item"].as_bytes(), &stale),
        Context::outcome(
            Purpose::Result,
            "other:{irc}",
            v["item"].as_bytes(),
            &detail,
        ),
    ] {
        assert!(sealer.open_bytes(&ctx, &env).is_err(), "{ctx:?} opened");
    }
}

/// A result with a trace trailer: the plaintext is the body, the postcard trailer and its
/// length, written out here by hand; the envelope decrypts to it with any AES-GCM-SIV.
fn check_traced(v: &Vector) {
    use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
    let key: [u8; 32] = unhex(&v["key"]).try_into().expect("32-byte key");
    let sealer = Sealer::new(Keyring::new(Key::from_bytes(KeyId(1), &key)));
    let attempt: u32 = v["attempt"].parse().expect("attempt");
    let instance: [u8; 16] = unhex(&v["instance"]).try_into().expect("16-byte instance");
    let detail = outcome_detail(attempt, &instance);
    let ctx = Context::outcome(Purpose::Result, &v["scope"], v["item"].as_bytes(), &detail);
    let trace = TraceContext::parse(&v["traceparent"], &v["tracestate"]).expect("traceparent");
    let body = unhex(&v["body"]);
    let mut plain = body.clone();
    plain.extend_from_slice(&trace.trace_id);
    plain.extend_from_slice(&trace.span_id);
    plain.push(trace.flags);
    plain.push(u8::try_from(trace.state.len()).expect("a short state"));
    plain.extend_from_slice(trace.state.as_bytes());
    let trailer = u16::try_from(plain.len() - body.len()).expect("trailer length");
    plain.extend_from_slice(&trailer.to_le_bytes());
    assert_eq!(plain, unhex(&v["plaintext"]), "result-traced: plaintext");
    let env = unhex(&v["envelope"]);
    assert_eq!(env[3], FLAG_TRACE, "result-traced: flags");
    let nonce: [u8; 12] = unhex(&v["nonce"]).try_into().expect("12-byte nonce");
    let sealed = sealer
        .seal_bytes_traced_with_nonce(&ctx, &body, Some(&trace), nonce)
        .expect("seal");
    assert_eq!(sealed, env, "result-traced: envelope");
    let header: [u8; HEADER_LEN] = env[..HEADER_LEN].try_into().expect("header");
    let aad = ctx.aad(&header);
    assert_eq!(aad, unhex(&v["aad"]), "result-traced: aad");
    let cipher = aes_gcm_siv::Aes256GcmSiv::new_from_slice(&key).expect("key");
    let decrypted = cipher
        .decrypt(
            aes_gcm_siv::Nonce::from_slice(&nonce),
            Payload {
                msg: &env[HEADER_LEN..],
                aad: &aad,
            },
        )
        .expect("decrypts");
    assert_eq!(decrypted, plain, "result-traced: decrypted");
    assert_eq!(
        sealer.open_bytes_traced(&ctx, &env).expect("open"),
        (body.clone(), Some(trace))
    );
    assert_eq!(sealer.open_bytes(&ctx, &env).expect("open"), body);
}

fn check_envelope(v: &Vector) {
    let name = v["vector"].as_str();
    let payload = match name {
        "job-plain" => br#"{"type":"send"}"#.to_vec(),
        "job-compressed" => br#"{"type":"send","object":{"content":"hello"}}"#.repeat(4),
        other => panic!("unknown envelope vector {other}"),
    };
    let key: [u8; 32] = unhex(&v["key"]).try_into().expect("32-byte key");
    let id = KeyId(v["key-id"].parse().expect("key id"));
    let sealer = Sealer::new(Keyring::new(Key::from_bytes(id, &key)))
        .with_options(SealOptions::default().compression(Compression::Above(0)));
    assert_eq!(v["purpose"], "1");
    let ctx = Context::new(Purpose::Job, &v["scope"], v["item"].as_bytes());
    let nonce: [u8; 12] = unhex(&v["nonce"]).try_into().expect("12-byte nonce");

    let rec = record(&payload);
    let plain = unhex(&v["plaintext"]);
    assert_eq!(
        postcard::to_allocvec(&rec).expect("encode"),
        plain,
        "{name}: plaintext"
    );
    let env = unhex(&v["envelope"]);
    let sealed = sealer
        .seal_bytes_with_nonce(&ctx, &plain, nonce)
        .expect("seal");
    assert_eq!(sealed, env, "{name}: envelope");
    let header: [u8; HEADER_LEN] = env[..HEADER_LEN].try_into().expect("header");
    assert_eq!(ctx.aad(&header), unhex(&v["aad"]), "{name}: aad");
    assert_eq!(env[3] == 1, v.contains_key("compressed"), "{name}: flag");
    if let Some(c) = v.get("compressed") {
        let body = unhex(c);
        let len = u32::from_le_bytes(body[..4].try_into().expect("prefix")) as usize;
        assert_eq!(len, plain.len());
        let out = lz4_flex::block::decompress(&body[4..], len).expect("lz4 block");
        assert_eq!(out, plain, "{name}: compressed body");
    }
    assert_eq!(
        sealer.open::<JobRecord>(&ctx, &env).expect("open"),
        rec,
        "{name}"
    );
}

#[test]
fn format_md_vectors() {
    let all = vectors();
    let names: Vec<&str> = all.iter().map(|v| v["vector"].as_str()).collect();
    assert_eq!(
        names,
        [
            "queue-key",
            "credentials-root",
            "credentials-key",
            "credential-names",
            "hash-irc",
            "hash-order",
            "hash-unicode",
            "job-plain",
            "job-compressed",
            "result",
            "result-traced"
        ],
        "FORMAT.md's vectors"
    );
    for v in &all {
        match v["vector"].as_str() {
            "queue-key" => {
                let key = derive_queue_key_bytes(&secret(v, "server-secret"), &v["queue"]);
                assert_eq!(key.as_ref(), unhex(&v["key"]).as_slice(), "queue key");
            }
            "credentials-root" => {
                let bytes = derive_credentials_root_bytes(&secret(v, "server-secret"));
                assert_eq!(
                    bytes.as_ref(),
                    unhex(&v["root"]).as_slice(),
                    "credentials root"
                );
            }
            "credentials-key" => {
                let key = derive_credentials_key_bytes(
                    &root(v),
                    &secret(v, "session-secret"),
                    &v["session"],
                );
                assert_eq!(key.as_ref(), unhex(&v["key"]).as_slice(), "credentials key");
            }
            "credential-names" => check_names(v),
            "result" => check_outcome(v),
            "result-traced" => check_traced(v),
            name if name.starts_with("hash-") => {
                let json: serde_json::Value = serde_json::from_str(&v["json"]).expect("json");
                assert_eq!(canonical_json(&json), v["canonical"], "{name}: canonical");
                assert_eq!(credentials_hash(&json), v["sha256"], "{name}: hash");
            }
            _ => check_envelope(v),
        }
    }
}

/// The names key, and the verifier and field name as the store writes them to Redis.
fn check_names(v: &Vector) {
    let (server, session) = (secret(v, "server-secret"), secret(v, "session-secret"));
    let key = derive_credential_names_key_bytes(&root(v), &session, &v["session"]);
    assert_eq!(key.as_ref(), unhex(&v["names-key"]).as_slice(), "names key");
    let store = CredentialStore::new(
        "dl",
        &v["session"],
        &SecretRing::new(KeyId(1), server).credentials_root(),
        &session,
        datalayer_core::time::Duration::ZERO,
    )
    .expect("store");
    let creds = serde_json::json!({"nick": "n"});
    let save = store
        .save(&v["credential"], &creds, &mut SeededRandom::new(1))
        .expect("save");
    let Invocation::Script { args, .. } = save else {
        panic!("save is a script")
    };
    // ARGV: ttl, n, verifier field, verifier, credential field, envelope.
    assert_eq!(&args[2][..], b"v2:1");
    assert_eq!(&args[3][..], unhex(&v["verifier"]).as_slice(), "verifier");
    assert_eq!(&args[4][..], v["field"].as_bytes(), "field");
}
