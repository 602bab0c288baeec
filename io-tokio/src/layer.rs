//! The process-wide handle: the connection every queue and worker of the process shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::backend::Backend;
use crate::connection::Conn;
use datalayer_core::server::HealthCheck;
pub use datalayer_core::server::ServerInfo;

use crate::blocking::Blocker;
use crate::options::{Error, IdleReads, Options, RedisError};
use crate::wire::Dial;
use datalayer_core::cluster::NodeAddr;
use datalayer_core::url::ServerUrl;

/// The process-wide handle: one multiplexed connection (reconnected with exponential backoff)
/// that every queue and worker made from it shares. Cheap to clone.
#[derive(Clone)]
pub struct DataLayer {
    pub(crate) backend: Backend,
    pub(crate) options: Options,
    shared: Arc<Shared>,
}

/// What the views of one `DataLayer` share besides the connection.
struct Shared {
    /// Blocking-read tasks, one per consumer name of workers and one for queues' events.
    blockers: Mutex<HashMap<String, Blocker>>,
    /// This process's consumer name (its workers share it, so that one blocking read serves
    /// them all), and how many workers each queue has here (the second gets a suffix).
    consumer: String,
    workers_per_queue: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for DataLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataLayer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl DataLayer {
    /// The blocking-read task for `key` (`events`, or `group:<consumer>`), started on first
    /// use.
    pub(crate) fn blocker(&self, key: &str) -> Blocker {
        let mut blockers = self
            .shared
            .blockers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // One doorbell task serves every idle reader of the process that waits on a bell.
        let mut doorbells = || {
            blockers
                .entry("doorbells".to_owned())
                .or_insert_with(|| match &self.backend {
                    Backend::Cluster(cluster) => {
                        crate::doorbells::start(crate::doorbells::Nodes::Cluster(cluster.clone()))
                    }
                    Backend::Redis { conn, .. } => {
                        crate::doorbells::start(crate::doorbells::Nodes::Single(conn.clone()))
                    }
                    #[cfg(feature = "memory")]
                    Backend::Memory(memory) => Blocker::start_in_memory(memory.clone()),
                })
                .clone()
        };
        match &self.backend {
            Backend::Cluster(_) => doorbells(),
            Backend::Redis {
                idle_reads: IdleReads::Doorbells,
                ..
            } => doorbells(),
            Backend::Redis {
                conn, idle_reads, ..
            } => {
                let overflow = (*idle_reads == IdleReads::Auto).then(&mut doorbells);
                let merged = blockers
                    .entry(key.to_owned())
                    .or_insert_with(|| Blocker::start(conn.clone(), self.options.response_timeout))
                    .clone();
                match overflow {
                    Some(bells) => merged.overflowing_to(&bells),
                    None => merged,
                }
            }
            #[cfg(feature = "memory")]
            Backend::Memory(memory) => blockers
                .entry(key.to_owned())
                .or_insert_with(|| Blocker::start_in_memory(memory.clone()))
                .clone(),
        }
    }

    /// A consumer name for a new worker of `queue`: the process's, with a suffix from the
    /// second worker of one queue on (two workers of a queue need two names).
    pub(crate) fn next_consumer(&self, queue: &str) -> String {
        let mut counts = self
            .shared
            .workers_per_queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(queue.to_owned()).or_insert(0);
        *n += 1;
        datalayer_core::naming::nth_consumer(&self.shared.consumer, *n)
    }

    /// Connects to `url` (`redis://host:port`, `redis://user:pass@host:port`, `rediss://`;
    /// with the `memory` feature, `memory://` is `DataLayer::in_memory`).
    ///
    /// **Redis Cluster**: a node of a cluster (`cluster_enabled:1`) makes this a cluster
    /// connection, found by itself: give one node or several as seeds,
    /// `redis://[user:pass@]host1:port1,host2:port2` (TLS with `rediss://`). The slot table
    /// is read from the seeds; a process holds one command connection and (when it has idle
    /// readers) one doorbell connection per primary, however many queues it serves.
    pub async fn connect(url: &str, options: Options) -> Result<Self, Error> {
        #[cfg(feature = "memory")]
        if url == "memory://" {
            return Self::in_memory(options);
        }
        datalayer_core::naming::validate_prefix(&options.prefix)
            .map_err(|e| Error::Config(e.to_string()))?;
        let parsed = ServerUrl::parse(url)?;
        if let Some(host) = parsed.password_in_clear() {
            eprintln!(
                "datalayer: warning: the Redis password goes in the clear to {host} \
                 (redis://): use rediss:// beyond this machine"
            );
        }
        let first = Dial::new(
            &parsed,
            options.tls_root_cert.as_deref(),
            options.connect_timeout,
        )
        .map_err(Error::Config)?;
        let seeds: Vec<Dial> = match parsed.hosts() {
            [] => vec![first.clone()],
            hosts => hosts.iter().map(|h| first.at(&h.host, h.port)).collect(),
        };
        let mut last = None;
        for seed in seeds {
            match Self::connect_seed(seed, &first, parsed.hosts(), options.clone()).await {
                Ok(layer) => return Ok(layer),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config(format!("no host in {}", crate::redact_url(url)))))
    }

    async fn connect_seed(
        seed: Dial,
        first: &Dial,
        seeds: &[NodeAddr],
        options: Options,
    ) -> Result<Self, Error> {
        // While Redis is away, a command fails at once (not sent: the engine backs off and
        // sends again) rather than waiting for Redis to come back.
        let conn = Conn::with_options(seed, &options).await?;
        let cluster_info = conn.text(&["INFO", "cluster"]).await.unwrap_or_default();
        if cluster_info.contains("cluster_enabled:1") {
            let settings = crate::cluster::NodeSettings {
                base: first.clone(),
                response_timeout: options.response_timeout,
                max_reconnect_delay: options.max_reconnect_delay,
            };
            let cluster = crate::cluster::Cluster::connect(settings, seeds.to_vec()).await?;
            let layer = Self::over(Backend::Cluster(cluster), options);
            layer.warn_if_evicting().await;
            return Ok(layer);
        }
        crate::exec::load_scripts(&conn).await?;
        let idle_reads = options.idle_reads;
        let layer = Self::over(Backend::Redis { conn, idle_reads }, options);
        layer.warn_if_evicting().await;
        Ok(layer)
    }

    /// How long an idle reader's read waits: the wait for its doorbell (a cluster,
    /// [`IdleReads::Doorbells`], and [`IdleReads::Auto`], whose merged commands block at most
    /// [`datalayer_core::mux::MAX_BLOCK_MS`] each), or its `BLOCK` in a merged read.
    pub(crate) fn idle_block(&self) -> Duration {
        Duration::from_millis(match &self.backend {
            Backend::Redis {
                idle_reads: IdleReads::Merged,
                ..
            } => crate::blocking::BLOCK_MS,
            #[cfg(feature = "memory")]
            Backend::Memory(_) => crate::blocking::BLOCK_MS,
            _ => crate::blocking::BELL_WAIT_MS,
        })
    }

    /// Whether this layer is connected to a Redis Cluster.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// A data layer on the in-process backend (feature `memory`): no Redis, no server, no
    /// port. The core's model of Redis Streams (the one the differential tests check
    /// against redis-server on every command datalayer sends) runs in this process, on the
    /// wall clock, with the same API: queues, workers (blocking reads included), retries,
    /// delayed jobs, dead letters, stats, credentials. Everything is sealed as on Redis,
    /// with the OS generator.
    ///
    /// For tests of an application's handlers and for single-process embedding. Its limits:
    /// nothing persists (the data lives as long as the handle and its clones), one process
    /// (clones of the handle share the data; another `in_memory()` is another, empty,
    /// keyspace), no cluster, and the fault handling (reconnects, fencing) has nothing to
    /// do. `health` always succeeds.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), datalayer_tokio::Error> {
    /// use datalayer_tokio::core::keys::{KeyId, Secret, SecretRing};
    /// use datalayer_tokio::{DataLayer, Job, Options, QueueOptions, WorkerOptions};
    ///
    /// let secrets = SecretRing::new(KeyId(1), Secret::generate(&mut datalayer_tokio::OsRandom));
    /// let dl = DataLayer::in_memory(Options::default())?;
    /// let queue = dl.queue("irc", &secrets, QueueOptions::default())?;
    /// let worker = dl.worker("irc", &secrets, WorkerOptions::default())?;
    /// let running = worker.start(|job: Job| async move {
    ///     let n: u64 = job.json().map_err(|e| e.to_string())?;
    ///     Ok::<_, String>(n * 2)
    /// });
    /// let job = queue.add("session-1", &21).await?;
    /// assert_eq!(job.result().await?.json::<u64>(), Ok(42));
    /// running.shutdown(std::time::Duration::from_secs(1)).await;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "memory")]
    pub fn in_memory(options: Options) -> Result<Self, Error> {
        datalayer_core::naming::validate_prefix(&options.prefix)
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self::over(Backend::Memory(crate::memory::new()), options))
    }

    /// Whether this layer runs on the in-process backend.
    #[must_use]
    pub fn is_in_memory(&self) -> bool {
        match &self.backend {
            Backend::Redis { .. } | Backend::Cluster(_) => false,
            #[cfg(feature = "memory")]
            Backend::Memory(_) => true,
        }
    }

    /// The key names of the in-process backend, sorted (for tests: what is left behind).
    /// Empty on Redis (use `SCAN` there).
    #[must_use]
    pub fn memory_keys(&self) -> Vec<String> {
        match &self.backend {
            Backend::Redis { .. } | Backend::Cluster(_) => Vec::new(),
            #[cfg(feature = "memory")]
            Backend::Memory(memory) => memory.keys(),
        }
    }

    fn over(backend: Backend, options: Options) -> Self {
        let consumer = datalayer_core::naming::process_consumer(
            std::process::id(),
            crate::random::random_u64(),
        );
        Self {
            backend,
            options,
            shared: Arc::new(Shared {
                blockers: Mutex::new(HashMap::new()),
                consumer,
                workers_per_queue: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The command connection of every server: the one on a single Redis, each primary's
    /// on a cluster; none on the in-process backend.
    pub(crate) async fn node_conns(&self) -> Result<Vec<Conn>, Error> {
        match &self.backend {
            Backend::Redis { conn, .. } => Ok(vec![conn.clone()]),
            Backend::Cluster(cluster) => {
                let mut conns = Vec::new();
                for addr in cluster.primaries().await {
                    conns.push(cluster.conn(&addr));
                }
                if conns.is_empty() {
                    return Err(Error::Redis(RedisError::NotSent(
                        "no cluster node is known to serve a slot".into(),
                    )));
                }
                Ok(conns)
            }
            #[cfg(feature = "memory")]
            Backend::Memory(_) => Ok(Vec::new()),
        }
    }

    async fn warn_if_evicting(&self) {
        for conn in self.node_conns().await.unwrap_or_default() {
            if let Some(p) = conn.config("maxmemory-policy").await {
                if p != "noeviction" {
                    eprintln!(
                        "datalayer: warning: maxmemory-policy is {p}: Redis may evict queued jobs; \
                         use noeviction"
                    );
                    return;
                }
            }
        }
    }

    /// What Redis says of itself (within `timeout`): its version, its eviction policy and
    /// its persistence; [`ServerInfo::risks`] says what of it can lose jobs. Settings Redis
    /// does not tell (`CONFIG` renamed or disabled, as on some managed services) are `None`.
    /// On a cluster every primary is asked, and each setting is the riskiest found (the
    /// lowest version, an evicting policy, no append-only file, no snapshots).
    pub async fn server_info(&self, timeout: Duration) -> Result<ServerInfo, Error> {
        let ask = async {
            let conns = self.node_conns().await?;
            if conns.is_empty() {
                return Ok(ServerInfo::in_process());
            }
            let mut merged: Option<ServerInfo> = None;
            for conn in conns {
                let one = node_info(conn).await?;
                merged = Some(match merged {
                    None => one,
                    Some(m) => m.riskiest(one),
                });
            }
            merged.ok_or_else(|| Error::Health("no server answered".into()))
        };
        tokio::time::timeout(timeout, ask)
            .await
            .map_err(|_| Error::HealthTimeout(timeout))?
    }

    /// Checks that Redis answers a write and a read on a key private to this call, within
    /// `timeout` (on a cluster: every primary answers, and the write and the read go to
    /// the key's node). Two processes checking at once never wait on each other.
    pub async fn health(&self, timeout: Duration) -> Result<(), Error> {
        if self.is_in_memory() {
            return Ok(());
        }
        let health = HealthCheck::new(&self.options.prefix, crate::random::random_u64());
        let check = async {
            if self.is_cluster() {
                for conn in self.node_conns().await? {
                    conn.text(&["PING"]).await?;
                }
            }
            let replies = self.backend.run(&health.invocations()).await?;
            health.judge(&replies).map_err(Error::Health)
        };
        tokio::time::timeout(timeout, check)
            .await
            .map_err(|_| Error::HealthTimeout(timeout))?
    }
}

/// One server's [`ServerInfo`].
async fn node_info(conn: Conn) -> Result<ServerInfo, Error> {
    let info = conn.text(&["INFO", "server"]).await?;
    let maxmemory_policy = conn.config("maxmemory-policy").await;
    let appendonly = conn.config("appendonly").await;
    let save = conn.config("save").await;
    Ok(ServerInfo::of_server(
        &info,
        maxmemory_policy,
        appendonly.as_deref(),
        save,
    ))
}
