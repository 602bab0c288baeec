//! Prints FORMAT.md's test vectors: `cargo run -p datalayer-core --example format_vectors`.
//! The test `core/tests/format_vectors.rs` checks the document against the code.

use datalayer_core::envelope::{
    Compression, Context, HEADER_LEN, Purpose, SealOptions, Sealer, outcome_detail,
};
use datalayer_core::job::{Instance, JobId, JobRecord};
use datalayer_core::keys::{
    Key, KeyId, Keyring, Secret, derive_credential_names_key_bytes, derive_credentials_key_bytes,
    derive_credentials_root_bytes, derive_queue_key_bytes,
};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn seq(start: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| start.wrapping_add(i as u8)).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Secret::from_slice(&seq(0, 32))?;
    let session = Secret::from_slice(&seq(0x20, 32))?;
    let qkey = derive_queue_key_bytes(&server, "irc");
    println!(
        "```vector\nvector: queue-key\nserver-secret: {}\nqueue: irc",
        hex(&seq(0, 32))
    );
    println!("key: {}\n```\n", hex(qkey.as_ref()));
    let root_bytes = derive_credentials_root_bytes(&server);
    let root = Secret::from_bytes(*root_bytes);
    println!(
        "```vector\nvector: credentials-root\nserver-secret: {}",
        hex(&seq(0, 32))
    );
    println!("root: {}\n```\n", hex(root_bytes.as_ref()));
    let ckey = derive_credentials_key_bytes(&root, &session, "session-a");
    println!(
        "```vector\nvector: credentials-key\nserver-secret: {}",
        hex(&seq(0, 32))
    );
    println!(
        "session-secret: {}\nsession: session-a",
        hex(&seq(0x20, 32))
    );
    println!("key: {}\n```\n", hex(ckey.as_ref()));

    let nkey = derive_credential_names_key_bytes(&root, &session, "session-a");
    println!(
        "```vector\nvector: credential-names\nserver-secret: {}",
        hex(&seq(0, 32))
    );
    println!(
        "session-secret: {}\nsession: session-a",
        hex(&seq(0x20, 32))
    );
    println!("names-key: {}", hex(nkey.as_ref()));
    let mac = |m: &[u8]| {
        use hmac::Mac;
        let mut h = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(nkey.as_ref()).unwrap();
        h.update(m);
        h.finalize().into_bytes().to_vec()
    };
    println!("verifier: {}", hex(&mac(b"datalayer/v2/verifier")[..16]));
    println!("credential: irc:nick@irc.example");
    println!(
        "field: c:1:{}\n```\n",
        hex(&mac(b"datalayer/v2/name/irc:nick@irc.example"))
    );
    for (name, json) in [
        (
            "hash-irc",
            r#"{"nick":"n","password":"hunter2","server":"irc.example","port":6697}"#,
        ),
        (
            "hash-order",
            r#"{"port": 6697, "server": "irc.example", "password": "hunter2", "nick": "n"}"#,
        ),
        (
            "hash-unicode",
            r#"{"b":[1E30,4.50,-0,0.000001,1e-7],"a":{"\u00f6":"\u20ac","\ud83d\ude00":"\u000f"}}"#,
        ),
    ] {
        let v: serde_json::Value = serde_json::from_str(json)?;
        let c = datalayer_core::credentials::canonical_json(&v);
        println!("```vector\nvector: {name}\njson: {json}\ncanonical: {c}");
        println!(
            "sha256: {}\n```\n",
            datalayer_core::credentials::credentials_hash(&v)
        );
    }

    // Threshold 0, so that a short record shows compression.
    let sealer = Sealer::new(Keyring::new(Key::from_bytes(KeyId(1), &qkey)))
        .with_options(SealOptions::default().compression(Compression::Above(0)));
    for (name, payload, nonce) in [
        ("job-plain", br#"{"type":"send"}"#.to_vec(), seq(0, 12)),
        (
            "job-compressed",
            br#"{"type":"send","object":{"content":"hello"}}"#.repeat(4),
            seq(0x40, 12),
        ),
    ] {
        let record = JobRecord {
            id: JobId::from("job-1"),
            title: "irc:send".into(),
            session_id: "session-a".into(),
            payload,
            attempt: 1,
            created_at_ms: 1_700_000_000_000,
            instance: Instance(seq(0x60, 16).as_slice().try_into()?),
        };
        let plain = postcard::to_allocvec(&record)?;
        let ctx = Context::new(Purpose::Job, "dl:{irc}", b"job-1");
        let nonce: [u8; 12] = nonce.as_slice().try_into()?;
        let env = sealer.seal_bytes_with_nonce(&ctx, &plain, nonce)?;
        let header: [u8; HEADER_LEN] = env[..HEADER_LEN].try_into()?;
        println!(
            "```vector\nvector: {name}\nkey: {}\nkey-id: 1",
            hex(qkey.as_ref())
        );
        println!(
            "nonce: {}\npurpose: 1\nscope: dl:{{irc}}\nitem: job-1",
            hex(&nonce)
        );
        println!("plaintext: {}", hex(&plain));
        if env[3] == 1 {
            let mut body = (plain.len() as u32).to_le_bytes().to_vec();
            body.extend_from_slice(&lz4_flex::block::compress(&plain));
            println!("compressed: {}", hex(&body));
        }
        println!("aad: {}", hex(&ctx.aad(&header)));
        println!("envelope: {}\n```\n", hex(&env));
    }

    // An outcome: the result of attempt 2 of that job, bound to its instance.
    let instance: [u8; 16] = seq(0x60, 16).as_slice().try_into()?;
    let detail = outcome_detail(2, &instance);
    let ctx = Context::outcome(Purpose::Result, "dl:{irc}", b"job-1", &detail);
    let nonce: [u8; 12] = seq(0x80, 12).as_slice().try_into()?;
    let plain = br#"{"ok":true}"#;
    let env = sealer.seal_bytes_with_nonce(&ctx, plain, nonce)?;
    let header: [u8; HEADER_LEN] = env[..HEADER_LEN].try_into()?;
    println!(
        "```vector\nvector: result\nkey: {}\nkey-id: 1",
        hex(qkey.as_ref())
    );
    println!(
        "nonce: {}\npurpose: 2\nscope: dl:{{irc}}\nitem: job-1\nattempt: 2\ninstance: {}",
        hex(&nonce),
        hex(&instance)
    );
    println!("plaintext: {}", hex(plain));
    println!("aad: {}", hex(&ctx.aad(&header)));
    println!("envelope: {}\n```\n", hex(&env));

    // The same result with the trace context of the span that ran the attempt.
    let trace = datalayer_core::trace::TraceContext {
        trace_id: seq(0xa0, 16).as_slice().try_into()?,
        span_id: seq(0xb0, 8).as_slice().try_into()?,
        flags: 1,
        state: "dl=1".into(),
    };
    let nonce: [u8; 12] = seq(0xc0, 12).as_slice().try_into()?;
    let env = sealer.seal_bytes_traced_with_nonce(&ctx, plain, Some(&trace), nonce)?;
    let header: [u8; HEADER_LEN] = env[..HEADER_LEN].try_into()?;
    let opened = sealer.open_bytes_traced(&ctx, &env)?;
    assert_eq!(opened, (plain.to_vec(), Some(trace.clone())));
    println!(
        "```vector\nvector: result-traced\nkey: {}\nkey-id: 1",
        hex(qkey.as_ref())
    );
    println!(
        "nonce: {}\npurpose: 2\nscope: dl:{{irc}}\nitem: job-1\nattempt: 2\ninstance: {}",
        hex(&nonce),
        hex(&instance)
    );
    println!(
        "traceparent: {}\ntracestate: {}",
        trace.traceparent(),
        trace.state
    );
    println!("body: {}", hex(plain));
    let mut full = plain.to_vec();
    full.extend_from_slice(&trace.trace_id);
    full.extend_from_slice(&trace.span_id);
    full.push(trace.flags);
    full.push(trace.state.len() as u8);
    full.extend_from_slice(trace.state.as_bytes());
    full.extend_from_slice(&30u16.to_le_bytes());
    println!("plaintext: {}", hex(&full));
    println!("aad: {}", hex(&ctx.aad(&header)));
    println!("envelope: {}\n```\n", hex(&env));
    Ok(())
}
