//! A platform worker process for the credentials hand-off test:
//! `dl-creds-worker <redis-url> <queue>` runs jobs whose payload names a session, its secret
//! (hex) and a credential key; it reads the credentials from the session's store and answers
//! with the nick and the credentials' hash.

use datalayer_core::keys::{Secret, SecretRing};
use datalayer_tokio::{CredentialsOptions, DataLayer, Job, WorkerOptions, credentials_hash};
use serde_json::{Value, json};

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 == 1 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

async fn handle(dl: DataLayer, secrets: SecretRing, job: Job) -> Result<Value, String> {
    let payload: Value = job.json().map_err(|e| e.to_string())?;
    let field = |name: &str| {
        payload[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("payload lacks {name}"))
    };
    let secret = unhex(&field("session_secret")?).ok_or("session secret is not hex")?;
    let secret = Secret::from_slice(&secret).map_err(|e| e.to_string())?;
    let store = dl
        .credentials(
            &job.session_id,
            &secret,
            &secrets,
            CredentialsOptions::default(),
        )
        .map_err(|e| e.to_string())?;
    let expected = payload["expected_hash"].as_str();
    let creds: Value = store
        .get(&field("key")?, expected)
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "nick": creds["nick"],
        "hash": credentials_hash(&creds).map_err(|e| e.to_string())?,
    }))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue] = args.as_slice() else {
        eprintln!("usage: dl-creds-worker <redis-url> <queue>");
        std::process::exit(2);
    };
    let secrets = datalayer_tests::secrets();
    let (dl, worker) = datalayer_tests::worker_process(url, queue, WorkerOptions::default()).await;
    let (dl2, secrets2) = (dl.clone(), secrets.clone());
    let _running = worker.start(move |job: Job| handle(dl2.clone(), secrets2.clone(), job));
    std::future::pending::<()>().await;
}
