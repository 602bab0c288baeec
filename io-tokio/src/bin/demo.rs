//! The README's first command: seals a job the way a queue will, shows the envelope's
//! layout, opens it, and shows what the envelope refuses. (The queue demo over Redis replaces
//! it when the adapter's JobQueue/JobWorker land.)

use datalayer_core::envelope::{Context, HEADER_LEN, Purpose, Sealer, TAG_LEN};
use datalayer_core::job::{JobId, JobRecord};
use datalayer_core::keys::{KeyId, Secret, SecretRing};
use datalayer_tokio::OsRandom;

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn short_hex(b: &[u8]) -> String {
    if b.len() <= 8 {
        hex(b)
    } else {
        format!("{} .. {}", hex(&b[..4]), hex(&b[b.len() - 4..]))
    }
}

fn job(payload: Vec<u8>) -> JobRecord {
    JobRecord {
        id: JobId::from("job-1"),
        title: "irc:send".into(),
        session_id: "session-a".into(),
        payload,
        attempt: 1,
        created_at_ms: 1_700_000_000_000,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = OsRandom;
    let secrets = SecretRing::new(KeyId(1), Secret::generate(&mut rng));
    let sealer = Sealer::new(secrets.queue_keyring("irc"));
    let ctx = Context::new(Purpose::Job, "irc", b"job-1");

    let payload =
        br#"{"@context":"as","type":"send","actor":{"id":"nick@irc"},"object":{"content":"hi"}}"#;
    let record = job(payload.to_vec());
    let env = sealer.seal(&ctx, &record, &mut rng)?;
    println!("datalayer: one job sealed for queue \"irc\" and opened again\n");
    println!(
        "record   id {}, title {}, session {}, payload {} B",
        record.id,
        record.title,
        record.session_id,
        record.payload.len()
    );
    println!(
        "envelope {} bytes ({} of overhead)",
        env.len(),
        HEADER_LEN + TAG_LEN
    );
    let body = &env[HEADER_LEN..env.len() - TAG_LEN];
    println!("  magic    {:<28} \"DL\"", hex(&env[..2]));
    println!("  version  {:<28} v{}", hex(&env[2..3]), env[2]);
    println!(
        "  flags    {:<28} compressed: {}",
        hex(&env[3..4]),
        env[3] & 1 == 1
    );
    println!("  key id   {:<28} key 1 of the keyring", hex(&env[4..8]));
    println!("  nonce    {:<28} 12 random bytes", short_hex(&env[8..20]));
    println!(
        "  sealed   {:<28} {} bytes of ciphertext",
        short_hex(body),
        body.len()
    );
    println!(
        "  tag      {:<28} 16 bytes",
        short_hex(&env[env.len() - TAG_LEN..])
    );

    let opened: JobRecord = sealer.open(&ctx, &env)?;
    println!("\nopened   identical record: {}", opened == record);

    let elsewhere = Context::new(Purpose::Job, "xmpp", b"job-1");
    match sealer.open::<JobRecord>(&elsewhere, &env) {
        Err(e) => println!("moved    the same bytes in queue \"xmpp\": {e}"),
        Ok(_) => return Err("an envelope opened in the wrong queue".into()),
    }
    let mut tampered = env.clone();
    tampered[HEADER_LEN] ^= 1;
    if let Err(e) = sealer.open::<JobRecord>(&ctx, &tampered) {
        println!("tampered one bit flipped: {e}");
    }

    let big = job(payload.repeat(800));
    let big_env = sealer.seal(&ctx, &big, &mut rng)?;
    println!(
        "large    a {} B payload seals into {} bytes (compressed: {})",
        big.payload.len(),
        big_env.len(),
        big_env[3] & 1 == 1
    );
    Ok(())
}
