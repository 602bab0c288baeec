//! The README's examples, compiled and run (on the in-process backend, or on `REDIS_URL`),
//! and a check that every `rust` block of the README is here (or in the core's crate docs)
//! line for line, so that the README shows only code that compiles and runs.

use std::time::Duration;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// `REDIS_URL`, or the in-process backend.
fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "memory://".into())
}

#[rustfmt::skip]
#[tokio::test]
async fn job_queue_and_job_worker() -> Result {
    let url = url();
    let server_secret = [7u8; 32];
    let jobs: Vec<datalayer_tokio::core::producer::AddJob> = Vec::new();
    // README: JobQueue and JobWorker
    use datalayer_tokio::core::keys::{KeyId, Secret, SecretRing};
    use datalayer_tokio::core::producer::AddJob;
    use datalayer_tokio::core::retry::{Backoff, RetryPolicy};
    use datalayer_tokio::{DataLayer, Job, Options, Outcome, QueueEvent, QueueOptions, WorkerOptions, now};
    use serde_json::json;

    let secrets = SecretRing::new(KeyId(1), Secret::from_bytes(server_secret)); // 32 random bytes
    let dl = DataLayer::connect(&url, Options::default()).await?; // redis://, rediss://, redis+unix://, memory://
    dl.health(Duration::from_secs(2)).await?; // a write and a read, bounded by a timeout

    // A platform worker (Sockethub's JobWorker), usually in another process.
    let retry = RetryPolicy::new(3, Backoff::Exponential { base: Duration::from_secs(1), max: Duration::from_secs(60), jitter: true });
    let worker = dl.worker("irc", &secrets, WorkerOptions::default().concurrency(8).retry(retry))?;
    let running = worker.start(|job: Job| async move {
        let msg: serde_json::Value = job.json().map_err(|e| e.to_string())?;
        Ok::<_, String>(json!({ "sent": msg })) // Err(reason) fails the attempt; a panic too
    });

    // The server side (Sockethub's JobQueue): add jobs, await their results.
    let queue = dl.queue("irc", &secrets, QueueOptions::default())?;
    let mut events = queue.events(); // Completed / Failed (will retry) / DeadLettered / ...
    let job = queue.add("session-1", &json!({ "type": "send", "object": { "content": "hi" } })).await?;
    match job.result().await? {
        Outcome::Completed(result) => println!("{}", String::from_utf8_lossy(&result)),
        Outcome::Failed(reason) => println!("failed for good: {reason}"),
    }
    if let Ok(QueueEvent::Completed { job, .. }) = events.try_recv() {
        println!("{job} completed");
    }
    let later = AddJob { session_id: "session-1".into(), payload: b"{}".to_vec(), delay: Duration::from_millis(500), ..AddJob::default() };
    let delayed = queue.add_job(later).await?; // runs in 500 ms
    let handles = queue.add_many(jobs).await?; // Vec<AddJob> in one message: each its own Result
    queue.pause().await?; // held in Redis: every producer's add() fails with Error::QueueClosed
                           // ("queue closed"), and no worker in any process starts a job
    queue.resume().await?;
    let stats = queue.stats().await?; // waiting+running, running, delayed, dead, workers, oldest
    println!("{} jobs, oldest waiting {:?}", stats.jobs, stats.oldest_waiting_age(now()));
    delayed.result().await?;
    running.shutdown(Duration::from_secs(10)).await; // finish, or hand jobs back at the deadline
    queue.shutdown().await; // delete the queue's keys; disconnect() leaves them
    // README end
    assert!(handles.is_empty());
    Ok(())
}

#[rustfmt::skip]
#[tokio::test]
async fn credentials_store() -> Result {
    use datalayer_tokio::core::keys::{KeyId, Secret, SecretRing};
    use datalayer_tokio::{DataLayer, Options};
    use serde_json::json;
    let dl = DataLayer::connect(&url(), Options::default()).await?;
    let secrets = SecretRing::new(KeyId(1), Secret::from_bytes([7u8; 32]));
    let session_secret = Secret::from_bytes([9u8; 32]);
    // README: CredentialsStore
    use datalayer_tokio::{CredentialsError, CredentialsOptions, Error, credentials_hash};

    // The server: a client sent its IRC credentials. The session's secret is the session's own
    // (32 random bytes, or `Secret::from_text(..)` for an operator-supplied hex or base64
    // encoding of 32 random bytes, e.g. `openssl rand -hex 32`; passphrases are refused).
    let store = dl.credentials("sockethub:p1:session-42", &session_secret, &secrets,
        CredentialsOptions::default())?; // sliding TTL: 7 days; ttl(Duration::ZERO): none
    let creds = json!({ "nick": "nick", "password": "..." });
    store.save("irc:nick@irc.libera.chat", &creds).await?;
    let hash = credentials_hash(&creds)?; // travels with the job

    // A platform worker, in another process, re-derives the same keys from the session's secret
    // (which it received inside the sealed job) and reads them, checking their hash.
    let back: serde_json::Value = store.get("irc:nick@irc.libera.chat", Some(&hash)).await?;
    match store.get::<serde_json::Value>("irc:other", None).await {
        Err(Error::Credentials(CredentialsError::NotFound { .. })) => {} // "credentials not found for irc:other"
        Err(Error::Credentials(CredentialsError::Mismatch { .. })) => {} // "invalid credentials for ..."
        Err(Error::Credentials(CredentialsError::WrongSecret { .. })) => {} // not "not found"
        _ => {}
    }
    store.teardown().await?; // delete the session's store
    println!("{} stores", dl.count_credentials(Some("sockethub:")).await?); // SCAN, no secret
    dl.purge_credentials("sockethub:p1:").await?; // every store of server p1: SCAN, DEL each
    // README end
    assert_eq!(back, creds);
    Ok(())
}

#[rustfmt::skip]
#[test]
fn envelope() -> Result {
    // README: The envelope
    use datalayer_tokio::OsRandom;
    use datalayer_tokio::core::envelope::{Context, Purpose, Sealer};
    use datalayer_tokio::core::job::{Instance, JobId, JobRecord};
    use datalayer_tokio::core::keys::{KeyId, Secret, SecretRing};

    let mut rng = OsRandom; // the core takes randomness as an input
    let secrets = SecretRing::new(KeyId(1), Secret::generate(&mut rng));
    let sealer = Sealer::new(secrets.queue_keyring("irc")); // HKDF: one key per queue

    let job = JobRecord {
        id: JobId::from("job-1"),
        title: "irc:send".into(),
        session_id: "session-a".into(),
        payload: br#"{"type":"send"}"#.to_vec(),
        attempt: 1,
        created_at_ms: 1_700_000_000_000,
        instance: Instance::generate(&mut rng), // the add's id: its outcomes are bound to it
    };
    let ctx = Context::new(Purpose::Job, "dl:{irc}", b"job-1"); // scope: the queue's key stem
    let bytes = sealer.seal(&ctx, &job, &mut rng)?; // "DL" | v2 | flags | key id | nonce | ...
    let back: JobRecord = sealer.open(&ctx, &bytes)?; // any other context: EnvelopeError::Decrypt
    // README end
    assert_eq!(back, job);
    Ok(())
}

#[rustfmt::skip]
#[tokio::test]
async fn operating_a_queue() -> Result {
    use datalayer_tokio::core::keys::{KeyId, Secret, SecretRing};
    use datalayer_tokio::core::retry::{Backoff, RetryPolicy};
    use datalayer_tokio::{DataLayer, Job, Options, WorkerOptions};
    let dl = DataLayer::connect(&url(), Options::default()).await?;
    let secrets = SecretRing::new(KeyId(1), Secret::from_bytes([7u8; 32]));
    // A job that fails for good first, so that there is a dead letter to see.
    let worker = dl.worker("xmpp", &secrets, WorkerOptions::default().retry(RetryPolicy::new(1, Backoff::None)))?
        .start(|_job: Job| async move { Err::<(), _>("unreachable network") });
    let first = dl.queue("xmpp", &secrets, datalayer_tokio::QueueOptions::default())?;
    first.add("s", &1).await?.result().await?;
    // README: Operating a queue
    use datalayer_tokio::core::job::JobId;
    use datalayer_tokio::core::producer::AddJob;
    use datalayer_tokio::core::value::EntryId;
    use datalayer_tokio::{DelayedWithdrawal, EventsCursor, QueueOptions, Revival};

    // Any number of producers share a queue, each with its own id and its own jobs' outcomes;
    // a replacement of one that died opens the queue with its id and gets what it was owed.
    let queue = dl.queue("xmpp", &secrets, QueueOptions::default().producer_id("server-1"))?;
    let stats = queue.stats().await?; // waiting+running, running, delayed, dead, workers, oldest
    let workers = queue.workers().await?; // live workers: (consumer, promised back by, ms)
    println!("{} dead, {} workers, producer {}", stats.dead, workers.len(), queue.producer_id());

    // Dead letters: read by page (opened with the queue's key), retried, deleted.
    let page = queue.dead_letters(None, 50).await?; // oldest first; page.next: the next page
    for letter in &page.letters {
        println!("{} {:?} attempt {:?}: {:?}", letter.entry, letter.job, letter.attempt, letter.reason);
    }
    let fates = queue.retry_dead(&page.letters).await?; // as attempt 1; safe to run twice
    assert!(fates.iter().all(|(_, f)| matches!(f, Revival::Queued(_) | Revival::Gone)));
    queue.retry_all_dead(Some(Duration::from_secs(3600))).await?; // buried over an hour ago
    let deleted = queue.delete_dead(&[]).await?; // entries from a page

    // One job: where it is; a delayed one run now, or withdrawn by the producer that added it.
    let later = queue.add_job(AddJob { session_id: "s".into(), payload: b"{}".to_vec(), delay: Duration::from_secs(60), ..AddJob::default() }).await?;
    println!("{}", queue.find_job(&later.id).await?.state()); // "delayed"
    assert_eq!(queue.cancel_delayed(&later.id).await?, DelayedWithdrawal::Withdrawn);
    assert!(!queue.run_now(&JobId::from("no-such-job")).await?);
        // Outcomes waiting for producers that are away (each reads and trims its own at once).
    let mut cursor = EventsCursor::new(EntryId::ZERO); // from the oldest kept
    for e in queue.peek_events(&mut cursor, 100).await? {
        println!("{} {:?} {} attempt {:?}", e.producer, e.job, e.kind.as_str(), e.attempt);
    }
    // README end
    assert_eq!((page.letters.len(), deleted), (1, 0));
    worker.shutdown(Duration::from_secs(5)).await;
    queue.shutdown().await;
    Ok(())
}

#[rustfmt::skip]
#[tokio::test]
async fn a_sharded_queue() -> Result {
    use datalayer_tokio::core::keys::{KeyId, Secret, SecretRing};
    use datalayer_tokio::{DataLayer, Job, Options, Outcome};
    let dl = DataLayer::connect(&url(), Options::default()).await?;
    let secrets = SecretRing::new(KeyId(1), Secret::from_bytes([7u8; 32]));
    // README: Sharded queues
    use datalayer_tokio::{QueueOptions, WorkerOptions};

    // One hot queue over 3 shards: 3 hash tags, one per primary of an evenly spread cluster.
    let queue = dl.sharded_queue("irc-hot", 3, &secrets, QueueOptions::default())?;
    let worker = dl.worker("irc-hot", &secrets, WorkerOptions::default().shards(3).concurrency(32))?
        .start(|job: Job| async move { Ok::<_, String>(job.payload.len()) }); // one pool of 32
    let handle = queue.add("session-1", &"hi").await?; // to the shard its job id names
    let shard = queue.shard_of(&handle.id); // a JobQueue: that shard's dead letters, find_job...
    println!("{} on {}", handle.id, shard.name()); // e.g. "irc-hot#2.3.0"
    assert!(matches!(handle.result().await?, Outcome::Completed(_)));
    let stats = queue.stats().await?; // every shard's, summed; pause/resume: every shard
    // README end
    assert_eq!(stats.jobs, 0);
    worker.shutdown(Duration::from_secs(5)).await;
    queue.shutdown().await;
    Ok(())
}

/// The code blocks of `markdown` fenced as `rust`.
fn rust_blocks(markdown: &str) -> Vec<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```rust") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => block.push(line),
            (None, _) => {}
        }
    }
    blocks
}

/// Whether `block`'s lines (trimmed, blank lines dropped) appear one after the other in
/// `source` (lines trimmed, `//! ` doc prefixes and blank lines dropped).
fn contains_block(source: &str, block: &[&str]) -> bool {
    let norm = |l: &str| l.trim().trim_start_matches("//!").trim().to_owned();
    let haystack: Vec<String> = source.lines().map(norm).filter(|l| !l.is_empty()).collect();
    let needle: Vec<String> = block
        .iter()
        .map(|l| norm(l))
        .filter(|l| !l.is_empty())
        .collect();
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w == needle.as_slice())
}

#[test]
fn every_rust_block_of_the_readme_compiles_here_or_in_the_core_docs() {
    let readme = include_str!("../../README.md");
    let sources = [
        include_str!("readme.rs"),
        include_str!("../../core/src/lib.rs"),
    ];
    let blocks = rust_blocks(readme);
    assert!(
        blocks.len() >= 4,
        "the README's rust blocks: {}",
        blocks.len()
    );
    for block in blocks {
        assert!(
            sources.iter().any(|s| contains_block(s, &block)),
            "this README block is not in io-tokio/tests/readme.rs nor core/src/lib.rs \
             (where it would compile):\n{}",
            block.join("\n")
        );
    }
}
