//! CredentialsStore: a session's sealed credentials, read by workers in other processes.
//!
//! The decisions (field names, sealing, the hash check, what a reply means) are the core's
//! ([`datalayer_core::credentials`]); this runs them on the process's shared connection.

use std::sync::Arc;
use std::time::Duration;

use datalayer_core::credentials::{self, CredentialStore, CredentialsError};
use datalayer_core::keys::{CredentialsRoot, Secret, SecretRing};
use datalayer_core::naming;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::layer::DataLayer;
use crate::options::Error;

/// Options of a credentials store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CredentialsOptions {
    /// The sliding expiry: every save and get pushes it back this far (default 7 days);
    /// `Duration::ZERO` disables it (the store then has no TTL).
    pub ttl: Duration,
}

impl Default for CredentialsOptions {
    fn default() -> Self {
        Self {
            ttl: credentials::DEFAULT_TTL,
        }
    }
}

impl CredentialsOptions {
    /// With this sliding TTL (`Duration::ZERO`: none).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// The credentials hash of `credentials` (lower-case hex SHA-256 of their RFC 8785 canonical
/// JSON; FORMAT.md): what [`CredentialsStore::get`] compares `expected_hash` with.
pub fn credentials_hash<T: Serialize + ?Sized>(credentials: &T) -> Result<String, Error> {
    Ok(credentials::credentials_hash(&serde_json::to_value(
        credentials,
    )?))
}

/// One session's credentials (Sockethub's CredentialsStore). Cheap to clone.
#[derive(Clone)]
pub struct CredentialsStore {
    layer: DataLayer,
    store: Arc<CredentialStore>,
}

impl std::fmt::Debug for CredentialsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsStore")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl CredentialsStore {
    pub(crate) fn new(
        layer: DataLayer,
        session: &str,
        session_secret: &Secret,
        root: &CredentialsRoot,
        options: &CredentialsOptions,
    ) -> Result<Self, Error> {
        let store = CredentialStore::new(
            &layer.options.prefix,
            session,
            root,
            session_secret,
            options.ttl,
        )
        .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self {
            layer,
            store: Arc::new(store),
        })
    }

    /// The session.
    #[must_use]
    pub fn session(&self) -> &str {
        self.store.session()
    }

    /// Saves `credentials` (a non-empty JSON object once serialized) under `key`
    /// (`<platform>:<actor>`), replacing what was there, and slides the store's expiry.
    #[tracing::instrument(level = "debug", skip_all, fields(session = self.session()))]
    pub async fn save<T: Serialize + ?Sized>(
        &self,
        key: &str,
        credentials: &T,
    ) -> Result<(), Error> {
        let json = serde_json::to_value(credentials)?;
        let invocation = self.store.save(key, &json, &mut crate::random::OsRandom)?;
        let reply = self.layer.backend.run_one(&invocation).await?;
        Ok(self.store.save_reply(reply)?)
    }

    /// The credentials under `key`, and slides the store's expiry. With `expected_hash`,
    /// credentials whose hash differs are [`CredentialsError::Mismatch`].
    ///
    /// Errors: [`CredentialsError::NotFound`], `Mismatch` (also for an empty object, null or
    /// an array), `WrongSecret` (this session secret did not make the store), `Corrupt`
    /// (the value does not open: tampered with or moved), all as [`Error::Credentials`].
    #[tracing::instrument(level = "debug", skip_all, fields(session = self.session()))]
    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
        expected_hash: Option<&str>,
    ) -> Result<T, Error> {
        let invocation = self.store.get(key)?;
        let reply = self.layer.backend.run_one(&invocation).await?;
        let json = self.store.get_reply(key, reply, expected_hash)?;
        serde_json::from_value(json).map_err(Error::Decode)
    }

    /// Deletes the session's whole store. `Ok(true)` if there was one; a failure is an error,
    /// not silence.
    pub async fn teardown(&self) -> Result<bool, Error> {
        match self.layer.backend.run_one(&self.store.teardown()).await? {
            datalayer_core::value::Value::Int(n) => Ok(n > 0),
            other => Err(CredentialsError::Reply(format!("DEL answered {other:?}")).into()),
        }
    }
}

impl DataLayer {
    /// The credentials store of `session`, sealed with keys derived from the server's
    /// `secrets` and the session's own secret.
    pub fn credentials(
        &self,
        session: &str,
        session_secret: &Secret,
        secrets: &SecretRing,
        options: CredentialsOptions,
    ) -> Result<CredentialsStore, Error> {
        let root = secrets.credentials_root();
        CredentialsStore::new(self.clone(), session, session_secret, &root, &options)
    }

    /// The credentials store of `session`, from the credentials root only
    /// ([`SecretRing::credentials_root`], or root secrets handed to this process): for a
    /// platform worker that reads its sessions' credentials and must not hold the server's
    /// secrets (which open every queue). The same store as [`DataLayer::credentials`] with
    /// the ring the root came from.
    pub fn credentials_with_root(
        &self,
        session: &str,
        session_secret: &Secret,
        root: &CredentialsRoot,
        options: CredentialsOptions,
    ) -> Result<CredentialsStore, Error> {
        CredentialsStore::new(self.clone(), session, session_secret, root, &options)
    }

    /// The queues under this data layer's prefix, by name (sorted): found with `SCAN` (never
    /// `KEYS`), following the cursor to the end, on every primary of a cluster; a queue is
    /// any name with a key of a queue's (a work stream, delayed jobs, dead letters,
    /// producers, ...).
    pub async fn queues(&self) -> Result<Vec<String>, Error> {
        let prefix = &self.options.prefix;
        let mut names = std::collections::BTreeSet::new();
        for key in self.scan(&naming::queues_pattern(prefix)).await? {
            let key = String::from_utf8_lossy(&key);
            if let Some(name) = naming::queue_of_key(prefix, &key) {
                names.insert(name.to_owned());
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Every key matching `pattern`: `SCAN` to the end, on each server (every primary of a
    /// cluster).
    async fn scan(&self, pattern: &str) -> Result<Vec<Vec<u8>>, Error> {
        let mut all = Vec::new();
        let conns = self.node_conns().await?;
        // The in-process backend has no connection: it is one server.
        let servers = conns.len().max(1);
        for i in 0..servers {
            let mut cursor = b"0".to_vec();
            loop {
                let ask = credentials::scan(pattern, &cursor, 1000);
                let page = match conns.get(i) {
                    Some(conn) => crate::exec::run_one(conn, &ask).await?,
                    None => self.backend.run_one(&ask).await?,
                };
                let (next, keys) = credentials::parse_scan(page)?;
                all.extend(keys);
                if next == b"0" {
                    break;
                }
                cursor = next;
            }
        }
        Ok(all)
    }

    /// How many credentials stores exist whose session starts with `session_prefix` (`None`:
    /// every store under this data layer's prefix): `SCAN` to the end on every primary,
    /// counting distinct keys. An operator's question (O(keyspace)); stores that expire or
    /// are saved meanwhile may or may not be counted.
    pub async fn count_credentials(&self, session_prefix: Option<&str>) -> Result<u64, Error> {
        let pattern = match session_prefix {
            Some(p) => naming::credentials_pattern(&self.options.prefix, p)
                .map_err(|e| Error::Config(e.to_string()))?,
            None => naming::all_credentials_pattern(&self.options.prefix),
        };
        let keys: std::collections::BTreeSet<Vec<u8>> =
            self.scan(&pattern).await?.into_iter().collect();
        Ok(keys.len() as u64)
    }

    /// Deletes every credentials store whose session starts with `session_prefix` (a server's
    /// sessions, e.g. `sockethub:<parent>:`): SCAN with the prefix's glob characters escaped,
    /// on every primary of a cluster, then one DEL per key, 1,000 to a pipeline (each goes
    /// to its key's node). Returns how many stores were deleted.
    pub async fn purge_credentials(&self, session_prefix: &str) -> Result<u64, Error> {
        let pattern = naming::credentials_pattern(&self.options.prefix, session_prefix)
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut deleted = 0u64;
        // On a cluster a slot migrating during the SCAN can hide keys from it: passes
        // repeat until one finds nothing (at most 5).
        let passes = if self.is_cluster() { 5 } else { 1 };
        for _ in 0..passes {
            let keys = self.scan(&pattern).await?;
            if keys.is_empty() {
                break;
            }
            deleted += self.delete_keys(&keys).await?;
        }
        Ok(deleted)
    }

    /// One `DEL` per key, 1,000 to a pipeline (each to its key's node): how many went.
    async fn delete_keys(&self, keys: &[Vec<u8>]) -> Result<u64, Error> {
        let mut deleted = 0u64;
        for chunk in keys.chunks(1000) {
            let dels: Vec<_> = chunk.iter().map(|k| credentials::delete(k)).collect();
            deleted += credentials::parse_deleted(self.backend.run(&dels).await?)?;
        }
        Ok(deleted)
    }
}
