//! The `datalayer` command line, run as a user would against a real redis-server: health
//! (exit codes), stats, dead letters listed with and without the secret, retried (one, all,
//! dry run), deleted; no plaintext printed without the secret.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use datalayer_testkit::{Persistence, RedisServer};
use datalayer_tokio::core::keys::{KeyId, Secret, SecretRing};
use datalayer_tokio::core::retry::{Backoff, RetryPolicy};
use datalayer_tokio::{DataLayer, Job, Options, Outcome, QueueOptions, WorkerOptions};
use serde_json::Value;

const SECRET: &str = "4f1c2b9a7d3e5f60818293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e9";

fn cli(url: &str, secret: bool, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_datalayer"));
    cmd.arg("--url")
        .arg(url)
        .args(args)
        .env_remove("DATALAYER_SECRET");
    if secret {
        cmd.env("DATALAYER_SECRET", SECRET);
    }
    cmd.output().expect("run datalayer")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// A server of the test's own, its URL, the secret ring of [`SECRET`] and a data layer on it.
async fn setup() -> (RedisServer, String, SecretRing, DataLayer) {
    let server = RedisServer::start(Persistence::None);
    let url = server.url();
    let secrets = SecretRing::new(KeyId(1), Secret::from_text(SECRET).expect("secret"));
    let dl = DataLayer::connect(&url, Options::default())
        .await
        .expect("connect");
    (server, url, secrets, dl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reports_and_handles_dead_letters() {
    let (_server, url, secrets, dl) = setup().await;
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = failing.clone();
    let worker = dl
        .worker(
            "cli",
            &secrets,
            WorkerOptions::default().retry(RetryPolicy::new(1, Backoff::None)),
        )
        .expect("worker")
        .start(move |job: Job| {
            let fail = flag.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                let text: String = job.json().map_err(|e| e.to_string())?;
                if fail {
                    return Err(format!("{text} failed on purpose"));
                }
                Ok::<_, String>(text)
            }
        });
    let queue = dl
        .queue("cli", &secrets, QueueOptions::default())
        .expect("queue");
    for n in 0..3 {
        let h = queue
            .add("s", &format!("plaintext-marker-{n}"))
            .await
            .expect("add");
        assert!(matches!(h.result().await, Ok(Outcome::Failed(_))));
    }

    let queues = cli(&url, false, &["--json", "queues"]);
    assert_eq!(json(&queues), serde_json::json!(["cli"]), "{queues:?}");
    let watched = cli(
        &url,
        false,
        &[
            "--json",
            "stats",
            "cli",
            "--watch",
            "--interval-ms",
            "20",
            "--times",
            "3",
        ],
    );
    let reports = lines(&watched);
    assert_eq!(reports.len(), 3, "{watched:?}");
    assert!(reports.iter().all(|r| r["dead"] == 3));
    let workers = json(&cli(&url, false, &["--json", "workers", "cli"]));
    assert_eq!(workers.as_array().map(Vec::len), Some(1), "{workers}");
    assert_eq!(workers[0]["live"], true, "{workers}");
    let stats = cli(&url, false, &["--json", "stats", "cli"]);
    assert!(stats.status.success(), "{stats:?}");
    let s = json(&stats);
    assert_eq!(
        (s["dead"].as_u64(), s["waiting"].as_u64()),
        (Some(3), Some(0)),
        "{s}"
    );
    assert!(s["workers"].as_u64() >= Some(1), "{s}");

    // Without the secret: entries, ids, attempts; nothing of the jobs.
    let sealed = cli(&url, false, &["--json", "dead", "ls", "cli"]);
    assert!(sealed.status.success());
    let letters = lines(&sealed);
    assert_eq!(letters.len(), 3);
    assert!(
        letters
            .iter()
            .all(|l| l["reason"].is_null() && l["sealed"].is_string())
    );
    assert!(
        !stdout(&sealed).contains("plaintext-marker"),
        "{}",
        stdout(&sealed)
    );
    let table = cli(&url, false, &["dead", "ls", "cli"]);
    assert!(!stdout(&table).contains("plaintext-marker"));
    // With it: the payloads and the reasons.
    let open = lines(&cli(&url, true, &["--json", "dead", "ls", "cli"]));
    for (n, l) in open.iter().enumerate() {
        let text = format!("\"plaintext-marker-{n}\"");
        assert_eq!(l["payload"].as_str(), Some(text.as_str()), "{l}");
        let reason = format!("plaintext-marker-{n} failed on purpose");
        assert_eq!(l["reason"].as_str(), Some(reason.as_str()), "{l}");
        assert_eq!(l["attempt"].as_u64(), Some(1));
    }

    // One letter: sealed without the secret, opened with it; an unknown entry exits 1.
    let second = open[1]["entry"].as_str().expect("an entry").to_owned();
    let shown = cli(&url, false, &["dead", "show", "cli", &second]);
    assert!(shown.status.success(), "{shown:?}");
    assert!(stdout(&shown).contains("sealed"), "{}", stdout(&shown));
    assert!(
        !stdout(&shown).contains("plaintext-marker"),
        "{}",
        stdout(&shown)
    );
    let shown = cli(&url, true, &["dead", "show", "cli", &second]);
    assert!(
        stdout(&shown).contains("plaintext-marker-1 failed on purpose"),
        "{}",
        stdout(&shown)
    );
    let one = json(&cli(
        &url,
        true,
        &["--json", "dead", "show", "cli", &second],
    ));
    for field in ["entry", "job", "attempt", "payload", "reason", "session"] {
        assert_eq!(one[field], open[1][field], "{field}: {one}");
    }
    let missing = cli(&url, false, &["dead", "show", "cli", "1-0"]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");

    // Where a job is: dead, with its attempt; an unknown one exits 1.
    let id = open[0]["job"].as_str().expect("a job id").to_owned();
    let shown = json(&cli(&url, false, &["--json", "job", "show", "cli", &id]));
    assert_eq!(shown["state"], "dead", "{shown}");
    assert_eq!(shown["dead"]["attempt"], 1, "{shown}");
    let unknown = cli(&url, false, &["job", "show", "cli", "no-such-job"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stdout(&unknown).contains("unknown"));

    // Retrying needs the secret; a dry run changes nothing.
    let refused = cli(&url, false, &["dead", "retry", "cli", "--all"]);
    assert_eq!(refused.status.code(), Some(1));
    let dry = cli(&url, true, &["dead", "retry", "cli", "--all", "--dry-run"]);
    assert!(stdout(&dry).contains("would retry 3"), "{}", stdout(&dry));
    // The exact command the core would send, nothing sealed printed.
    assert!(
        stdout(&dry).contains("would send: EVALSHA revive "),
        "{}",
        stdout(&dry)
    );
    assert!(stdout(&dry).contains("<re-sealed job>"), "{}", stdout(&dry));
    assert!(
        !stdout(&dry).contains("plaintext-marker"),
        "{}",
        stdout(&dry)
    );
    let dry = cli(
        &url,
        false,
        &["dead", "delete", "cli", "--all", "--dry-run"],
    );
    assert!(
        stdout(&dry).contains("would send: XDEL dl:{cli}:dead "),
        "{}",
        stdout(&dry)
    );
    assert_eq!(
        json(&cli(&url, false, &["--json", "stats", "cli"]))["dead"],
        3
    );

    // One by entry, then the rest; the jobs run again and succeed.
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let first = open[0]["entry"].as_str().expect("entry").to_owned();
    let one = cli(&url, true, &["dead", "retry", "cli", &first]);
    assert!(stdout(&one).contains("retried 1"), "{one:?}");
    let rest = cli(
        &url,
        true,
        &["--json", "dead", "retry", "cli", "--all", "--progress"],
    );
    assert_eq!(json(&rest)["count"], 2, "{rest:?}");
    // The progress bar went to stderr (forced: not a terminal here), not into the JSON.
    let bar = String::from_utf8_lossy(&rest.stderr);
    assert!(bar.contains("2/2 letters, 2 done"), "{bar:?}");
    let start = Instant::now();
    loop {
        let s = json(&cli(&url, false, &["--json", "stats", "cli"]));
        if s["dead"] == 0 && s["waiting"] == 0 && s["running"] == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Delete: one more dead letter, deleted.
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let h = queue.add("s", &"doomed").await.expect("add");
    assert!(matches!(h.result().await, Ok(Outcome::Failed(_))));
    let dry = cli(
        &url,
        false,
        &["dead", "delete", "cli", "--all", "--dry-run"],
    );
    assert!(stdout(&dry).contains("would delete 1"), "{dry:?}");
    let gone = cli(&url, false, &["dead", "delete", "cli", "--all"]);
    assert!(stdout(&gone).contains("deleted 1"), "{gone:?}");
    assert_eq!(
        json(&cli(&url, false, &["--json", "stats", "cli"]))["dead"],
        0
    );

    // A delayed job, run now from the command line.
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let later = datalayer_tokio::core::producer::AddJob {
        session_id: "s".into(),
        payload: br#""later""#.to_vec(),
        delay: Duration::from_millis(600_000),
        ..Default::default()
    };
    let h = queue.add_job(later).await.expect("add");
    let id = h.id.0.clone();
    assert_eq!(
        json(&cli(&url, false, &["--json", "job", "show", "cli", &id]))["state"],
        "delayed"
    );
    let now = cli(&url, false, &["job", "run-now", "cli", &id]);
    assert!(now.status.success(), "{now:?}");
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(10), h.result()).await,
        Ok(Ok(Outcome::Completed(_)))
    ));
    assert_eq!(
        cli(&url, false, &["job", "run-now", "cli", &id])
            .status
            .code(),
        Some(1)
    );

    // Health: no persistence on this server is a risk (exit 2); no server, unhealthy (1).
    let health = cli(&url, false, &["--json", "health"]);
    assert_eq!(health.status.code(), Some(2), "{health:?}");
    let h = json(&health);
    assert_eq!(h["healthy"], true);
    assert!(
        h["risks"][0]
            .as_str()
            .is_some_and(|r| r.contains("persistence")),
        "{h}"
    );
    let down = cli(
        "redis://127.0.0.1:1",
        false,
        &["health", "--timeout-ms", "500"],
    );
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    // Usage errors, and a secret given as a flag is refused.
    assert_eq!(cli(&url, false, &["frobnicate"]).status.code(), Some(64));
    assert_eq!(
        cli(&url, false, &["--secret", SECRET, "stats", "cli"])
            .status
            .code(),
        Some(64)
    );

    worker.shutdown(Duration::from_secs(5)).await;
    queue.shutdown().await;
}

/// The same tool on a Redis Cluster (seeds in `--url`): health visits every primary,
/// `queues` finds queues on every master, `stats` and `dead ls` reach the queue's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_on_a_cluster() {
    let cluster = datalayer_testkit::cluster::RedisCluster::start(3, 0);
    let url = cluster.url();
    let secrets = SecretRing::new(KeyId(1), Secret::from_text(SECRET).expect("secret"));
    let dl = DataLayer::connect(&url, Options::default())
        .await
        .expect("connect");
    assert!(dl.is_cluster());
    let names: Vec<String> = (0..12).map(|i| format!("cq{i}")).collect();
    for name in &names {
        let queue = dl
            .queue(name, &secrets, QueueOptions::default())
            .expect("queue");
        queue
            .add("s", &serde_json::json!({ "n": 1 }))
            .await
            .expect("add");
    }
    let health = cli(&url, false, &["--json", "health"]);
    let h = json(&health);
    assert_eq!(h["healthy"], true, "{h}");
    assert_eq!(h["server"]["nodes"], 3, "{h}");
    // Test nodes keep nothing on disk: risky, exit 2.
    assert_eq!(health.status.code(), Some(2), "{h}");
    let found = json(&cli(&url, false, &["--json", "queues"]));
    let found: Vec<&str> = found
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in &names {
        assert!(found.contains(&name.as_str()), "{name} in {found:?}");
    }
    let s = json(&cli(&url, false, &["--json", "stats", "cq3"]));
    assert_eq!(s["jobs"], 1, "{s}");
}

/// `datalayer serve`: a Prometheus endpoint of every queue's state, scraped as Prometheus
/// would; no secret given, nothing of a job in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_queue_state_for_prometheus() {
    use std::io::{Read, Write};
    let (_server, url, secrets, dl) = setup().await;
    let queue = dl
        .queue("served", &secrets, QueueOptions::default())
        .expect("queue");
    for i in 0..3 {
        let payload = serde_json::json!({ "n": i, "text": "served-payload-marker" });
        queue
            .add("served-session-marker", &payload)
            .await
            .expect("add");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_datalayer"))
        .args([
            "--url",
            &url,
            "serve",
            "--listen",
            &listen,
            "--interval-ms",
            "100",
        ])
        .env_remove("DATALAYER_SECRET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run datalayer serve");
    let _child = datalayer_testkit::KillOnDrop(child);
    let get = |path: &str| -> Option<String> {
        let mut conn = std::net::TcpStream::connect(&listen).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(conn, "GET {path} HTTP/1.1\r\nhost: {listen}\r\n\r\n").ok()?;
        let mut out = String::new();
        conn.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let started = Instant::now();
    let body = loop {
        if let Some(reply) = get("/metrics") {
            if reply.contains("datalayer_queue_jobs{queue=\"served\"} 3") {
                break reply;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no metrics served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("# TYPE datalayer_queue_jobs gauge"), "{body}");
    assert!(
        body.contains("datalayer_queue_dead{queue=\"served\"} 0"),
        "{body}"
    );
    assert!(body.contains("datalayer_queue_oldest_waiting_seconds{queue=\"served\"}"));
    assert!(
        body.contains("datalayer_queue_paused{queue=\"served\"} 0"),
        "{body}"
    );
    for marker in ["served-payload-marker", "served-session-marker"] {
        assert!(!body.contains(marker), "{marker} in the metrics");
    }
    assert!(get("/other").is_some_and(|r| r.starts_with("HTTP/1.1 404")));
}

/// `events ls`: the outcomes owed to a producer that is away, with the reason of a failure
/// only with the secret, never a result or payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_ls_shows_outcomes_waiting_for_their_producer() {
    let (_server, url, secrets, dl) = setup().await;
    // A producer adds three jobs and goes away (its registration stays, so its outcomes
    // are kept for it).
    let queue = dl
        .queue(
            "ev",
            &secrets,
            QueueOptions::default().producer_id("away-1"),
        )
        .expect("queue");
    let mut ids = Vec::new();
    for n in 0..3 {
        let h = queue
            .add("s", &format!("payload-marker-{n}"))
            .await
            .expect("add");
        ids.push(h.id.0.clone());
    }
    queue.disconnect().await;
    let worker = dl
        .worker(
            "ev",
            &secrets,
            WorkerOptions::default().retry(RetryPolicy::new(1, Backoff::None)),
        )
        .expect("worker")
        .start(|job: Job| async move {
            let text: String = job.json().map_err(|e| e.to_string())?;
            if text.ends_with('2') {
                return Err("reason-marker: failed on purpose".to_owned());
            }
            Ok::<_, String>(format!("result-marker for {text}"))
        });
    // Three outcomes in the away producer's stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let out = cli(&url, false, &["--json", "events", "ls", "ev"]);
        assert!(out.status.success(), "{}", stdout(&out));
        let shown = lines(&out);
        if shown.len() == 3 {
            break shown;
        }
        assert!(Instant::now() < deadline, "{shown:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    worker.shutdown(Duration::from_secs(5)).await;
    let mut kinds: Vec<&str> = shown
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["completed", "completed", "dead"]);
    for e in &shown {
        assert_eq!(e["producer"], "away-1");
        assert!(ids.iter().any(|id| e["job"] == id.as_str()), "{e}");
        assert_eq!(e["attempt"], 1);
        assert!(
            e.get("reason").is_none(),
            "no reason without the secret: {e}"
        );
    }
    // With the secret: the dead letter's reason, still no result, no payload.
    let out = cli(&url, true, &["events", "ls", "ev"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains("reason-marker: failed on purpose"), "{text}");
    for secret_free in [
        stdout(&cli(&url, false, &["events", "ls", "ev"])),
        text.clone(),
    ] {
        assert!(!secret_free.contains("result-marker"), "{secret_free}");
        assert!(!secret_free.contains("payload-marker"), "{secret_free}");
    }
    // --watch --times: the same page, then nothing new.
    let out = cli(
        &url,
        false,
        &[
            "events",
            "ls",
            "ev",
            "--watch",
            "--interval-ms",
            "20",
            "--times",
            "3",
        ],
    );
    assert_eq!(stdout(&out).lines().count(), 3);
}

/// `keys`: a queue's envelopes by the key id that sealed them, across a rotation, with no
/// secret; bytes that are not an envelope are counted apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_counts_envelopes_by_key_id_across_a_rotation() {
    let server = RedisServer::start(Persistence::None);
    let url = server.url();
    let old = Secret::from_text(SECRET).expect("secret");
    let new = Secret::from_bytes([9; 32]);
    let mut ring = SecretRing::new(KeyId(1), old);
    let dl = DataLayer::connect(&url, Options::default())
        .await
        .expect("connect");
    let before = dl
        .queue("rot", &ring, QueueOptions::default())
        .expect("queue");
    for n in 0..2 {
        before.add("s", &n).await.expect("add");
    }
    before.disconnect().await;
    // Rotate: key 2 seals from now on, key 1 still opens.
    ring.insert(KeyId(2), new);
    ring.set_active(KeyId(2)).expect("active");
    let after = dl
        .queue("rot", &ring, QueueOptions::default())
        .expect("queue");
    for n in 0..3 {
        after.add("s", &n).await.expect("add");
    }
    let later = datalayer_tokio::core::producer::AddJob {
        payload: b"{}".to_vec(),
        delay: Duration::from_millis(3_600_000),
        ..Default::default()
    };
    after.add_job(later).await.expect("delayed");
    // An entry whose envelope is garbage (written by someone without the secret).
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let _: String = redis::cmd("XADD")
        .arg("dl:{rot}:jobs")
        .arg("*")
        .arg("j")
        .arg("x")
        .arg("e")
        .arg("not an envelope")
        .query_async(&mut conn)
        .await
        .expect("xadd");

    let out = cli(&url, false, &["--json", "keys", "rot"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let rows = json(&out);
    let count = |source: &str, key: Value| {
        rows.as_array()
            .expect("rows")
            .iter()
            .find(|r| r["source"] == source && r["key_id"] == key)
            .map_or(0, |r| r["envelopes"].as_u64().unwrap_or(0))
    };
    assert_eq!(count("jobs", 1.into()), 2, "{rows}");
    assert_eq!(count("jobs", 2.into()), 3, "{rows}");
    assert_eq!(count("jobs", Value::Null), 1, "{rows}");
    assert_eq!(count("delayed", 2.into()), 1, "{rows}");
    assert_eq!(rows.as_array().map(Vec::len), Some(4), "{rows}");
    let table = stdout(&cli(&url, false, &["keys", "rot"]));
    assert!(
        table.contains("key 1") && table.contains("not an envelope"),
        "{table}"
    );
    after.shutdown().await;
}

/// `credentials count` and `purge`: sessions' stores counted and deleted by session prefix,
/// without any secret, never printing a credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_counted_and_purged_by_session_prefix() {
    let (_server, url, secrets, dl) = setup().await;
    for session in ["srv1:a", "srv1:b", "srv2:c"] {
        let store = dl
            .credentials(
                session,
                &Secret::from_bytes([3; 32]),
                &secrets,
                datalayer_tokio::CredentialsOptions::default(),
            )
            .expect("store");
        let creds = serde_json::json!({ "password": "credential-marker" });
        store.save("irc:nick", &creds).await.expect("save");
    }
    let count = |args: &[&str]| {
        let mut all = vec!["--json", "credentials", "count"];
        all.extend_from_slice(args);
        json(&cli(&url, false, &all))["stores"].as_u64()
    };
    assert_eq!(count(&[]), Some(3));
    assert_eq!(count(&["--session-prefix", "srv1:"]), Some(2));
    // Purging needs a prefix; a dry run deletes nothing.
    let refused = cli(&url, false, &["credentials", "purge"]);
    assert_eq!(refused.status.code(), Some(64), "{refused:?}");
    let dry = cli(
        &url,
        false,
        &[
            "credentials",
            "purge",
            "--session-prefix",
            "srv1:",
            "--dry-run",
        ],
    );
    assert!(stdout(&dry).contains("would delete 2"), "{dry:?}");
    assert!(
        stdout(&dry).contains("would send: SCAN 0 MATCH dl:{srv1:*}:creds COUNT 1000"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(count(&[]), Some(3));
    let gone = cli(
        &url,
        false,
        &["credentials", "purge", "--session-prefix", "srv1:"],
    );
    assert!(stdout(&gone).contains("deleted 2"), "{gone:?}");
    assert_eq!(count(&[]), Some(1));
    assert_eq!(count(&["--session-prefix", "srv2:"]), Some(1));
    for out in [&dry, &gone] {
        assert!(!stdout(out).contains("credential-marker"));
    }
}

/// `pause` and `resume` from the command line (another process) hold for this process's
/// producer and worker; `stats` shows the pause; no secret is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_from_the_command_line() {
    let (_server, url, secrets, dl) = setup().await;
    let worker = dl
        .worker("pz", &secrets, WorkerOptions::default())
        .expect("worker")
        .start(|job: Job| async move { Ok::<_, String>(job.attempt) });
    let queue = dl
        .queue("pz", &secrets, QueueOptions::default())
        .expect("queue");
    let h = queue.add("s", &1).await.expect("add");
    assert!(matches!(h.result().await, Ok(Outcome::Completed(_))));

    let out = cli(&url, false, &["--json", "pause", "pz"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json(&out)["paused"], true);
    let stats = json(&cli(&url, false, &["--json", "stats", "pz"]));
    assert_eq!(stats["paused"], true, "{stats}");
    assert!(stdout(&cli(&url, false, &["stats", "pz"])).contains("paused"));
    // This producer learns at its first add (queued, not run); the next is refused.
    let queued = queue.add("s", &2).await.expect("queued unchecked");
    assert!(matches!(
        queue.add("s", &3).await,
        Err(datalayer_tokio::Error::QueueClosed)
    ));
    let mut pending = Box::pin(queued.result());
    let waited = tokio::time::timeout(Duration::from_millis(1_500), &mut pending).await;
    assert!(waited.is_err(), "ran while paused: {waited:?}");

    let out = cli(&url, false, &["resume", "pz"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("resumed"));
    let done = tokio::time::timeout(Duration::from_secs(20), pending).await;
    assert!(matches!(done, Ok(Ok(Outcome::Completed(_)))), "{done:?}");
    let stats = json(&cli(&url, false, &["--json", "stats", "pz"]));
    assert_eq!(stats["paused"], false, "{stats}");
    assert!(queue.add("s", &4).await.is_ok());
    worker.shutdown(Duration::from_secs(5)).await;
}

/// `events tail` shows every outcome as the settles write it (job, kind, attempt,
/// producer), including those their producer read at once; nothing sealed, no secret; the
/// outcome log expires after the tail stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tail_shows_every_outcome_as_it_is_written() {
    let (_server, url, secrets, dl) = setup().await;
    let worker = dl
        .worker(
            "tl",
            &secrets,
            WorkerOptions::default().retry(RetryPolicy::new(2, Backoff::None)),
        )
        .expect("worker")
        .start(|job: Job| async move {
            let text: String = job.json().map_err(|e| e.to_string())?;
            if text.starts_with("fail") {
                return Err(format!("{text}: plaintext-marker reason"));
            }
            Ok::<_, String>(text)
        });
    let queue = dl
        .queue("tl", &secrets, QueueOptions::default())
        .expect("queue");
    let tail = std::process::Command::new(env!("CARGO_BIN_EXE_datalayer"))
        .args(["--url", &url, "--json", "events", "tail", "tl"])
        .args(["--interval-ms", "100", "--times", "60"])
        .env_remove("DATALAYER_SECRET")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run datalayer");
    // Once the log is open, the jobs: three complete, one fails twice and is dead.
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let start = Instant::now();
    while !redis::cmd("EXISTS")
        .arg("dl:{tl}:log")
        .query_async::<bool>(&mut conn)
        .await
        .expect("EXISTS")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the tail never opened the log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ids = Vec::new();
    for text in [
        "plaintext-marker-a",
        "plaintext-marker-b",
        "fail-plaintext-marker",
        "c",
    ] {
        let h = queue.add("s", &text).await.expect("add");
        ids.push(h.id.0.clone());
        let _ = h.result().await;
    }
    let out = tail.wait_with_output().expect("the tail ends");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("plaintext-marker"), "{text}");
    let seen: Vec<(String, String, u64)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("one JSON object per line"))
        .map(|v| {
            let job = v["job"].as_str().unwrap_or_default().to_owned();
            let kind = v["kind"].as_str().unwrap_or_default().to_owned();
            (job, kind, v["attempt"].as_u64().unwrap_or(0))
        })
        .collect();
    let expected = vec![
        (ids[0].clone(), "completed".to_owned(), 1),
        (ids[1].clone(), "completed".to_owned(), 1),
        (ids[2].clone(), "failed".to_owned(), 1),
        (ids[2].clone(), "dead".to_owned(), 2),
        (ids[3].clone(), "completed".to_owned(), 1),
    ];
    assert_eq!(seen, expected, "{text}");
    // The log goes by itself (10 s after the last read); nothing stays.
    let ttl: i64 = redis::cmd("PTTL")
        .arg("dl:{tl}:log")
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!((0..=10_000).contains(&ttl), "{ttl}");
    worker.shutdown(Duration::from_secs(5)).await;
}

/// The shards of a sharded queue are queues to the CLI: listed by their tags, each with its
/// stats, and its dead letters opened with the queue's secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shards_of_a_sharded_queue_are_queues_to_the_cli() {
    let (_server, url, secrets, dl) = setup().await;
    let worker = dl
        .worker(
            "sh",
            &secrets,
            WorkerOptions::default()
                .shards(3)
                .concurrency(3)
                .retry(RetryPolicy::new(1, Backoff::None)),
        )
        .expect("worker")
        .start(|job: Job| async move {
            let text: String = job.json().map_err(|e| e.to_string())?;
            Err::<(), _>(format!("{text} failed on purpose"))
        });
    let queue = dl
        .sharded_queue("sh", 3, &secrets, QueueOptions::default())
        .expect("queue");
    for n in 0..12 {
        let h = queue.add("s", &format!("sharded-{n}")).await.expect("add");
        assert!(matches!(h.result().await, Ok(Outcome::Failed(_))));
    }
    let tags = datalayer_tokio::core::naming::shard_tags("sh", 3).expect("tags");
    let mut listed: Vec<String> =
        serde_json::from_value(json(&cli(&url, false, &["--json", "queues"]))).expect("names");
    listed.sort();
    let mut expected = tags.clone();
    expected.sort();
    assert_eq!(listed, expected);
    let mut dead = 0;
    for tag in &tags {
        let stats = json(&cli(&url, false, &["--json", "stats", tag]));
        let here = stats["dead"].as_u64().expect("dead");
        let opened = cli(&url, true, &["--json", "dead", "ls", tag]);
        assert!(opened.status.success(), "{opened:?}");
        let letters = lines(&opened);
        assert_eq!(letters.len() as u64, here, "{tag}");
        for l in &letters {
            let reason = l["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("failed on purpose"), "{tag}: {l}");
        }
        dead += here;
    }
    assert_eq!(dead, 12);
    worker.shutdown(Duration::from_secs(5)).await;
    queue.shutdown().await;
}
