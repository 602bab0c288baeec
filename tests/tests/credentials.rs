//! CredentialsStore over a real redis-server (started per test on a free port).

use std::time::Duration;

use datalayer_core::keys::Secret;
use datalayer_tests::{
    KillOnDrop, Persistence, RedisServer, client_list, contains, every_key_and_value, layer, raw,
    secrets,
};
use datalayer_tokio::{
    CredentialsError, CredentialsOptions, CredentialsStore, DataLayer, Error, Options,
    QueueOptions, credentials_hash,
};
use serde_json::{Value, json};

fn session_secret(b: u8) -> Secret {
    Secret::from_bytes([b; 32])
}

fn store(
    dl: &DataLayer,
    session: &str,
    secret: u8,
    options: CredentialsOptions,
) -> CredentialsStore {
    dl.credentials(session, &session_secret(secret), &secrets(), options)
        .expect("store")
}

fn cred_error(r: Result<Value, Error>) -> CredentialsError {
    match r {
        Err(Error::Credentials(e)) => e,
        other => panic!("expected a credentials error, got {other:?}"),
    }
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("pttl")
}

/// Sets the key's TTL to 5 s behind the store's back.
async fn shorten(conn: &mut redis::aio::MultiplexedConnection, key: &str) {
    let _: () = redis::cmd("PEXPIRE")
        .arg(key)
        .arg(5_000)
        .query_async(conn)
        .await
        .expect("pexpire");
}

const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;

#[tokio::test]
async fn the_original_checklist() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let s = store(&dl, "session-a", 1, CredentialsOptions::default());
    let key = "irc:nick@irc.example";

    let e = cred_error(s.get(key, None).await);
    assert_eq!(e, CredentialsError::NotFound { key: key.into() });
    assert_eq!(e.to_string(), format!("credentials not found for {key}"));

    let creds = json!({"nick": "n", "password": "hunter2", "server": "irc.example"});
    s.save(key, &creds).await.expect("save");
    let h = credentials_hash(&creds).expect("hash");
    assert_eq!(s.get::<Value>(key, Some(&h)).await.expect("get"), creds);
    assert_eq!(s.get::<Value>(key, None).await.expect("get"), creds);

    // Update and re-hash: the old hash no longer matches, the new one does.
    let updated = json!({"nick": "n2", "password": "hunter3"});
    s.save(key, &updated).await.expect("update");
    let e = cred_error(s.get(key, Some(&h)).await);
    assert_eq!(e, CredentialsError::Mismatch { key: key.into() });
    assert_eq!(e.to_string(), format!("invalid credentials for {key}"));
    let h2 = credentials_hash(&updated).expect("hash");
    assert_eq!(s.get::<Value>(key, Some(&h2)).await.expect("get"), updated);

    // An object without a password matches its hash; a serde type works as well.
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Xmpp {
        jid: String,
        resource: Option<String>,
    }
    let x = Xmpp {
        jid: "me@xmpp.example".into(),
        resource: None,
    };
    s.save("xmpp:me@xmpp.example", &x).await.expect("save");
    let hx = credentials_hash(&x).expect("hash");
    let back: Xmpp = s.get("xmpp:me@xmpp.example", Some(&hx)).await.expect("get");
    assert_eq!(back, x);
    // The same actor on two platforms is two entries.
    s.save("xmpp:nick@irc.example", &json!({"nick": "other"}))
        .await
        .expect("save");
    assert_eq!(s.get::<Value>(key, None).await.expect("get"), updated);

    // Arrays, empty objects and null are refused, and nothing changes.
    for bad in [json!([]), json!(["a"]), json!({}), json!(null)] {
        let e = match s.save(key, &bad).await {
            Err(Error::Credentials(e)) => e,
            other => panic!("{bad}: {other:?}"),
        };
        assert_eq!(e, CredentialsError::Invalid { key: key.into() }, "{bad}");
    }
    assert_eq!(s.get::<Value>(key, Some(&h2)).await.expect("get"), updated);

    // Another session cannot read it (its own store has nothing under the key).
    let other = store(&dl, "session-b", 1, CredentialsOptions::default());
    assert!(matches!(
        cred_error(other.get(key, None).await),
        CredentialsError::NotFound { .. }
    ));

    // Teardown deletes the store; a second teardown finds nothing.
    assert!(s.teardown().await.expect("teardown"));
    assert!(matches!(
        cred_error(s.get(key, None).await),
        CredentialsError::NotFound { .. }
    ));
    assert!(!s.teardown().await.expect("teardown"));
}

#[tokio::test]
async fn the_ttl_slides_on_save_and_get_and_is_absent_when_disabled() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let mut conn = raw(&server).await;
    let s = store(&dl, "ttl", 1, CredentialsOptions::default());
    let redis_key = "dl:{ttl}:creds";
    s.save("irc:a", &json!({"nick": "a"})).await.expect("save");
    let t = pttl(&mut conn, redis_key).await;
    assert!(
        t > WEEK_MS - 60_000 && t <= WEEK_MS,
        "default TTL is 7 days: {t}"
    );

    // Shorten it behind the store's back; a get pushes it back out, and so does a save.
    shorten(&mut conn, redis_key).await;
    let _: Value = s.get("irc:a", None).await.expect("get");
    assert!(pttl(&mut conn, redis_key).await > WEEK_MS - 60_000);
    shorten(&mut conn, redis_key).await;
    s.save("irc:b", &json!({"nick": "b"})).await.expect("save");
    assert!(pttl(&mut conn, redis_key).await > WEEK_MS - 60_000);
    // A failed lookup does not create a store.
    let _ = s.get::<Value>("irc:none", None).await;
    let none = store(&dl, "nobody", 1, CredentialsOptions::default());
    assert!(none.get::<Value>("irc:a", None).await.is_err());
    assert_eq!(
        pttl(&mut conn, "dl:{nobody}:creds").await,
        -2,
        "no key made"
    );

    // A configured TTL is used as given.
    let short = store(
        &dl,
        "short",
        1,
        CredentialsOptions::default().ttl(Duration::from_secs(60)),
    );
    short
        .save("irc:a", &json!({"nick": "a"}))
        .await
        .expect("save");
    let t = pttl(&mut conn, "dl:{short}:creds").await;
    assert!(t > 50_000 && t <= 60_000, "{t}");

    // TTL 0: no expiry, and a save removes one set earlier.
    let forever = store(
        &dl,
        "short",
        1,
        CredentialsOptions::default().ttl(Duration::ZERO),
    );
    forever
        .save("irc:a", &json!({"nick": "a"}))
        .await
        .expect("save");
    assert_eq!(pttl(&mut conn, "dl:{short}:creds").await, -1);
    let _: Value = forever.get("irc:a", None).await.expect("get");
    assert_eq!(pttl(&mut conn, "dl:{short}:creds").await, -1);
    let fresh = store(
        &dl,
        "fresh",
        1,
        CredentialsOptions::default().ttl(Duration::ZERO),
    );
    fresh
        .save("irc:a", &json!({"nick": "a"}))
        .await
        .expect("save");
    assert_eq!(pttl(&mut conn, "dl:{fresh}:creds").await, -1);
}

#[tokio::test]
async fn wrong_secrets_moved_values_and_garbage_are_typed_errors() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let mut conn = raw(&server).await;
    let a = store(&dl, "session-a", 1, CredentialsOptions::default());
    a.save("irc:a", &json!({"password": "pa"}))
        .await
        .expect("save");
    a.save("irc:b", &json!({"password": "pb"}))
        .await
        .expect("save");

    // The right session with another secret: WrongSecret (not "not found"), on read and write.
    let wrong = store(&dl, "session-a", 2, CredentialsOptions::default());
    assert_eq!(
        cred_error(wrong.get("irc:a", None).await),
        CredentialsError::WrongSecret {
            session: "session-a".into()
        }
    );
    match wrong.save("irc:a", &json!({"password": "evil"})).await {
        Err(Error::Credentials(CredentialsError::WrongSecret { .. })) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        a.get::<Value>("irc:a", None).await.expect("untouched"),
        json!({"password": "pa"})
    );

    // Move irc:a's value onto irc:b's field (with redis-cli's powers): it does not open.
    let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
        .arg("dl:{session-a}:creds")
        .query_async(&mut conn)
        .await
        .expect("hgetall");
    let creds: Vec<&(Vec<u8>, Vec<u8>)> = fields
        .iter()
        .filter(|(f, _)| f.starts_with(b"c:"))
        .collect();
    assert_eq!(creds.len(), 2);
    let (fa, va) = creds[0];
    let (fb, vb) = creds[1];
    let _: () = redis::cmd("HSET")
        .arg("dl:{session-a}:creds")
        .arg(fb)
        .arg(va)
        .arg(fa)
        .arg(vb)
        .query_async(&mut conn)
        .await
        .expect("swap");
    for key in ["irc:a", "irc:b"] {
        assert!(
            matches!(
                cred_error(a.get(key, None).await),
                CredentialsError::Corrupt { .. }
            ),
            "{key}"
        );
    }

    // Into another session's store, at the field of the same key, same server secret.
    let b = store(&dl, "session-b", 1, CredentialsOptions::default());
    b.save("irc:a", &json!({"password": "b's"}))
        .await
        .expect("save");
    let bfields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
        .arg("dl:{session-b}:creds")
        .query_async(&mut conn)
        .await
        .expect("hgetall");
    let (fba, _) = bfields
        .iter()
        .find(|(f, _)| f.starts_with(b"c:"))
        .expect("b's field");
    let _: () = redis::cmd("HSET")
        .arg("dl:{session-b}:creds")
        .arg(fba)
        .arg(va)
        .query_async(&mut conn)
        .await
        .expect("move");
    assert!(matches!(
        cred_error(b.get("irc:a", None).await),
        CredentialsError::Corrupt { .. }
    ));

    // Garbage values, and a store that is not a hash at all: errors, never panics.
    let _: () = redis::cmd("HSET")
        .arg("dl:{session-b}:creds")
        .arg(fba)
        .arg("not an envelope")
        .query_async(&mut conn)
        .await
        .expect("garbage");
    assert!(matches!(
        cred_error(b.get("irc:a", None).await),
        CredentialsError::Corrupt { .. }
    ));
    let _: () = redis::cmd("SET")
        .arg("dl:{session-c}:creds")
        .arg("a string")
        .query_async(&mut conn)
        .await
        .expect("set");
    let c = store(&dl, "session-c", 1, CredentialsOptions::default());
    assert!(matches!(
        cred_error(c.get("irc:a", None).await),
        CredentialsError::Reply(_)
    ));
    assert!(matches!(
        c.save("irc:a", &json!({"a": 1})).await,
        Err(Error::Credentials(CredentialsError::Reply(_)))
    ));
    // A type that does not fit is a decode error.
    a.save("irc:c", &json!({"n": 1})).await.expect("save");
    assert!(matches!(
        a.get::<Vec<u8>>("irc:c", None).await,
        Err(Error::Decode(_))
    ));
}

#[tokio::test]
async fn purge_pages_the_cursor_escapes_globs_and_counts() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let mut conn = raw(&server).await;
    let creds = json!({"nick": "n"});
    // 2,500 stores of server 1: SCAN COUNT 1000 needs several pages.
    for i in 0..2_500 {
        store(&dl, &format!("srv1:{i}"), 1, CredentialsOptions::default())
            .save("irc:n", &creds)
            .await
            .expect("save");
    }
    let tricky = "a*b?c[d]e\\f";
    for session in [
        format!("{tricky}:1"),
        format!("{tricky}:2"),
        // Would match the unescaped pattern.
        "aXXbYcdef:1".to_owned(),
        "srv2:1".to_owned(),
        "srv10:1".to_owned(),
    ] {
        store(&dl, &session, 1, CredentialsOptions::default())
            .save("irc:n", &creds)
            .await
            .expect("save");
    }
    assert_eq!(dl.purge_credentials("srv1:").await.expect("purge"), 2_500);
    assert_eq!(dl.purge_credentials(tricky).await.expect("purge"), 2);
    assert_eq!(dl.purge_credentials("srv1:").await.expect("purge"), 0);
    let mut left: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    left.sort();
    assert_eq!(
        left,
        [
            "dl:{aXXbYcdef:1}:creds",
            "dl:{srv10:1}:creds",
            "dl:{srv2:1}:creds"
        ]
    );
    assert!(matches!(
        dl.purge_credentials("").await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn failures_are_reported_not_swallowed() {
    let mut server = RedisServer::start(Persistence::None);
    let dl = DataLayer::connect(
        &server.url(),
        Options::default()
            .response_timeout(Duration::from_secs(1))
            .connect_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("connect");
    let s = store(&dl, "s", 1, CredentialsOptions::default());
    s.save("irc:a", &json!({"nick": "a"})).await.expect("save");
    server.kill();
    assert!(matches!(s.teardown().await, Err(Error::Redis(_))));
    assert!(matches!(
        s.get::<Value>("irc:a", None).await,
        Err(Error::Redis(_))
    ));
    assert!(matches!(
        s.save("irc:a", &json!({"nick": "a"})).await,
        Err(Error::Redis(_))
    ));
    assert!(matches!(
        dl.purge_credentials("s").await,
        Err(Error::Redis(_))
    ));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The server saves a session's credentials; a platform worker in another process reads them
/// while running that session's job, with the session secret carried inside the sealed job.
/// Afterwards no credential, actor id or result appears in any key of Redis.
#[tokio::test]
async fn hand_off_to_a_worker_process_and_nothing_readable_in_redis() {
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let _worker = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_dl-creds-worker"))
            .args([server.url().as_str(), "irc"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the worker process"),
    );
    let queue = dl
        .queue("irc", &secrets(), QueueOptions::default())
        .expect("queue");
    let mut expected = Vec::new();
    let mut handles = Vec::new();
    for i in 0..20u8 {
        let session = format!("session-{i}");
        let secret = [100 + i; 32];
        let key = format!("irc:MARKERACTOR{i}@irc.example");
        let creds = json!({
            "nick": format!("MARKERNICK{i}"),
            "password": format!("MARKERPASSWORD{i}"),
        });
        let s = dl
            .credentials(
                &session,
                &Secret::from_bytes(secret),
                &secrets(),
                CredentialsOptions::default(),
            )
            .expect("store");
        s.save(&key, &creds).await.expect("save");
        let hash = credentials_hash(&creds).expect("hash");
        let handle = queue
            .add(
                &session,
                &json!({
                    "session_secret": hex(&secret),
                    "key": key,
                    "expected_hash": hash,
                }),
            )
            .await
            .expect("add");
        expected.push(json!({"nick": format!("MARKERNICK{i}"), "hash": hash}));
        handles.push(handle);
    }
    // One job with the wrong session secret: the worker reports WrongSecret as the failure.
    let wrong = queue
        .add(
            "session-0",
            &json!({
                "session_secret": hex(&[7; 32]),
                "key": "irc:MARKERACTOR0@irc.example",
            }),
        )
        .await
        .expect("add");
    for (handle, want) in handles.into_iter().zip(expected) {
        let outcome = tokio::time::timeout(Duration::from_secs(30), handle.result())
            .await
            .expect("in time")
            .expect("queue running");
        assert_eq!(outcome.json::<Value>().expect("completed"), want);
    }
    let outcome = tokio::time::timeout(Duration::from_secs(30), wrong.result())
        .await
        .expect("in time")
        .expect("queue running");
    let reason = outcome.json::<Value>().expect_err("failed");
    assert!(reason.contains("wrong secret"), "{reason}");

    // Every key, every value, as raw bytes: no marker.
    let mut conn = raw(&server).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(keys.iter().any(|k| k.ends_with(":creds")));
    let everything = every_key_and_value(&mut conn).await;
    for marker in ["MARKER", "hunter", "irc.example"] {
        assert!(
            !contains(&everything, marker.as_bytes()),
            "{marker} readable in Redis"
        );
    }
}

/// `rediss://`: jobs and credentials over TLS, trusting a private authority; without that
/// trust, connecting fails with a clear error instead of talking in the clear.
#[tokio::test]
async fn tls_connections_work_and_verify_the_server() {
    let server = RedisServer::start_tls();
    let url = server.tls_url().expect("a TLS port");
    let untrusted = DataLayer::connect(
        &url,
        Options::default().connect_timeout(Duration::from_secs(2)),
    )
    .await;
    let err = untrusted.expect_err("an unknown authority is refused");
    assert!(matches!(err, Error::Redis(_)), "{err:?}");
    let dl = DataLayer::connect(&url, Options::default().tls_root_cert(server.ca_pem()))
        .await
        .expect("connect over TLS");
    dl.health(Duration::from_secs(2)).await.expect("healthy");
    let s = store(&dl, "tls-session", 1, CredentialsOptions::default());
    s.save("irc:a", &json!({"password": "p"}))
        .await
        .expect("save");
    assert_eq!(
        s.get::<Value>("irc:a", None).await.expect("get"),
        json!({"password": "p"})
    );
    let queue = dl
        .queue("q", &secrets(), QueueOptions::default())
        .expect("queue");
    let worker = dl
        .worker("q", &secrets(), datalayer_tokio::WorkerOptions::default())
        .expect("worker")
        .start(|job: datalayer_tokio::Job| async move {
            Ok::<_, String>(json!({ "got": job.json::<Value>().map_err(|e| e.to_string())? }))
        });
    for i in 0..20 {
        let h = queue.add("s", &json!(i)).await.expect("add");
        let out = tokio::time::timeout(Duration::from_secs(20), h.result())
            .await
            .expect("in time")
            .expect("running");
        assert_eq!(out.json::<Value>().expect("completed"), json!({ "got": i }));
    }
    // Every connection of the data layer is a TLS one (the plain port sees only this check).
    let mut conn = raw(&server).await;
    let list = client_list(&mut conn).await;
    let tls_port = url.rsplit(':').next().expect("port");
    let ours: Vec<&str> = list.lines().filter(|l| !l.contains("cmd=client")).collect();
    assert!(!ours.is_empty(), "{list}");
    for l in &ours {
        assert!(
            l.contains(&format!("laddr=127.0.0.1:{tls_port} ")),
            "not over TLS: {l}"
        );
    }
    worker.shutdown(Duration::from_secs(2)).await;
}

/// Least privilege: a process given the credentials root alone (as bytes, the way it would
/// be handed over) reads and writes the same credentials as the server with its full ring,
/// and a wrong root is a wrong secret.
#[tokio::test]
async fn a_worker_with_the_credentials_root_alone_reads_the_server_s_credentials() {
    use datalayer_core::keys::{CredentialsRoot, KeyId, SecretRing, derive_credentials_root_bytes};
    let server = RedisServer::start(Persistence::None);
    let dl = layer(&server).await;
    let s = store(&dl, "session-r", 1, CredentialsOptions::default());
    let creds = json!({"nick": "n", "password": "hunter2"});
    s.save("irc:n", &creds).await.expect("save");

    // The server derives the root and hands its bytes to the worker's process.
    let bytes = derive_credentials_root_bytes(&Secret::from_bytes([42; 32]));
    let root =
        CredentialsRoot::from_root_secrets(SecretRing::new(KeyId(1), Secret::from_bytes(*bytes)));
    let worker = dl
        .credentials_with_root(
            "session-r",
            &session_secret(1),
            &root,
            CredentialsOptions::default(),
        )
        .expect("store");
    assert_eq!(
        worker.get::<Value>("irc:n", None).await.expect("get"),
        creds
    );
    let newer = json!({"nick": "n", "password": "hunter3"});
    worker.save("irc:n", &newer).await.expect("save");
    assert_eq!(s.get::<Value>("irc:n", None).await.expect("get"), newer);

    // The master secret used as if it were the root is not the root.
    let wrong = CredentialsRoot::from_root_secrets(secrets());
    let w = dl
        .credentials_with_root(
            "session-r",
            &session_secret(1),
            &wrong,
            CredentialsOptions::default(),
        )
        .expect("store");
    assert!(matches!(
        cred_error(w.get("irc:n", None).await),
        CredentialsError::WrongSecret { .. }
    ));
}
