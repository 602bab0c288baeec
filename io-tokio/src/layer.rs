//! The process-wide handle: the connection every queue and worker of the process shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::backend::Backend;
use crate::connection::Conn;
use datalayer_core::scripts::Invocation;
use datalayer_core::value::Value;

use crate::blocking::Blocker;

/// Why the data layer could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis could not be reached, or failed a command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The health check did not finish in time.
    #[error("redis did not answer the health check within {0:?}")]
    HealthTimeout(Duration),
    /// The health check read back something else than it wrote.
    #[error("health check failed: {0}")]
    Health(String),
    /// The connection, a queue or a worker could not be set up (a URL, a prefix, a name).
    #[error("{0}")]
    Config(String),
    /// The queue's engine refused the job before sending it, with the core's reason (match
    /// it): [`ProducerError::Backpressure`] (too many adds await Redis' confirmation: wait
    /// for outcomes, then add again), [`ProducerError::EmptyJobId`], a name that cannot be a
    /// key, a job that could not be sealed. Nothing was queued.
    ///
    /// [`ProducerError::Backpressure`]: datalayer_core::producer::ProducerError::Backpressure
    /// [`ProducerError::EmptyJobId`]: datalayer_core::producer::ProducerError::EmptyJobId
    #[error("add refused: {0}")]
    Producer(#[from] datalayer_core::producer::ProducerError),
    /// The worker could not be set up, with the core's reason (a concurrency of 0, a lease
    /// too short, a name that cannot be a key).
    #[error(transparent)]
    Worker(#[from] datalayer_core::worker::WorkerError),
    /// The queue is paused (Sockethub's "queue closed"), or was shut down.
    #[error("queue closed")]
    QueueClosed,
    /// The queue's engine stopped (disconnected or shut down).
    #[error("the queue's driver has stopped")]
    Stopped,
    /// The payload could not be encoded as JSON.
    #[error("payload does not encode: {0}")]
    Encode(#[from] serde_json::Error),
    /// Credentials could not be saved or read (not found, mismatch, wrong secret, ...).
    #[error(transparent)]
    Credentials(#[from] datalayer_core::credentials::CredentialsError),
    /// Stored data does not decode as the requested type.
    #[error("does not decode as the requested type: {0}")]
    Decode(#[source] serde_json::Error),
    /// Redis refused the job (its error reply: out of memory, a key of the wrong type, ...).
    #[error("redis refused the add: {0}")]
    Add(String),
    /// Redis refused an operator's request (dead letters: its error reply), or the queue
    /// was destroyed.
    #[error("request refused: {0}")]
    Request(String),
    /// Redis cannot be reached, and the job never left this process: its id was generated
    /// for this add (so no other add can have queued it) and it was withdrawn; it is not
    /// queued, and adding it again cannot run it twice. An add with a caller-chosen id is
    /// never `Unavailable` (an earlier add of that id may have queued it): it is
    /// `Unconfirmed` instead.
    #[error("redis is unreachable: the job was not queued")]
    Unavailable,
    /// The job was sent and Redis did not confirm it in time: it may be queued. The queue
    /// keeps sending it until Redis answers (it is queued once); its outcome comes on
    /// [`crate::JobQueue::events`]. Adding it again with the same id is safe (adds are
    /// idempotent) and gives a handle for its outcome.
    #[error(
        "redis did not confirm job {0} in time; it may be queued: add it again with the same id"
    )]
    Unconfirmed(datalayer_core::job::JobId),
}

/// What Redis says of itself ([`DataLayer::server_info`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ServerInfo {
    /// `redis_version`.
    pub version: String,
    /// `maxmemory-policy` (anything but `noeviction` may evict queued jobs).
    pub maxmemory_policy: Option<String>,
    /// Whether the append-only file is on.
    pub appendonly: Option<bool>,
    /// The RDB snapshot schedule (`save`; empty: none).
    pub save: Option<String>,
    /// The in-process backend (nothing persists).
    pub in_memory: bool,
    /// How many servers answered: the primaries of a cluster, else 1.
    pub nodes: usize,
}

impl ServerInfo {
    /// What in these settings can lose jobs, in words (empty: nothing found).
    #[must_use]
    pub fn risks(&self) -> Vec<String> {
        let mut risks = Vec::new();
        if let Some(p) = self
            .maxmemory_policy
            .as_deref()
            .filter(|p| *p != "noeviction")
        {
            risks.push(format!(
                "maxmemory-policy is {p}: Redis may evict queued jobs (use noeviction)"
            ));
        }
        let snapshots = self.save.as_deref().is_some_and(|s| !s.trim().is_empty());
        if self.in_memory || (self.appendonly == Some(false) && !snapshots) {
            risks.push("no persistence: a restart loses every job".into());
        } else if self.appendonly == Some(false) {
            risks.push(
                "no append-only file: a restart loses what was written since the last snapshot"
                    .into(),
            );
        }
        risks
    }
}

/// Options of the process-wide connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Key prefix (default `dl`).
    pub prefix: String,
    /// How long a command may take before its outcome is unknown (default 10 s).
    pub response_timeout: Duration,
    /// How long connecting may take (default 5 s).
    pub connect_timeout: Duration,
    /// The longest wait between reconnect attempts (default 1 s).
    pub max_reconnect_delay: Duration,
    /// For `rediss://`: the PEM certificate(s) of the authority that signed the server's
    /// certificate, instead of the system's roots (a private CA). Needs the `tls` feature.
    pub tls_root_cert: Option<Vec<u8>>,
    /// How idle readers wait on one server (default [`IdleReads::Auto`]); a cluster
    /// always uses doorbells.
    pub idle_reads: IdleReads,
}

/// How the idle readers of a process (workers with nothing to run, queues with no results
/// to read) wait for work on one Redis server. Processes of either kind share queues:
/// every command that may add what an idle reader waits for rings its queue's doorbell
/// whatever the kind (an `SPUBLISH` in the same pipeline, which costs Redis next to
/// nothing when nobody listens: within noise in BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IdleReads {
    /// Merged reads for the first idle readers, doorbells for the rest: each merged command
    /// serves at most [`datalayer_core::mux::MERGE_LIMIT`] (16) reads, and an idle read that
    /// finds it full waits on its doorbell. A process with a few queues gets what
    /// [`IdleReads::Merged`] gives, one with hundreds what [`IdleReads::Doorbells`] gives.
    #[default]
    Auto,
    /// The idle readers block in Redis in one merged `XREADGROUP` (workers) and one merged
    /// `XREAD` (results), re-sent whenever one of them is answered or joins. Redis hands
    /// a new entry straight to the blocked read: the fewest round trips per job while a
    /// process has a few queues. But each re-send names every idle queue of the process,
    /// so with hundreds of queues every event costs Redis (and the process) in proportion
    /// (BENCHMARKS.md, the trickle across 1,000 queues).
    Merged,
    /// Each idle reader subscribes to its queue's doorbell (a pub/sub channel), reads
    /// without `BLOCK`, and reads again when the bell rings, as on a cluster: an event
    /// costs one read of its own queue however many queues the process has, and a parked
    /// reader costs Redis nothing (it reads anyway after 30 s, or at its worker's next
    /// upkeep). One round trip more per job than a blocked read: the choice for a process
    /// with many queues, each at a trickle (Sockethub's persistent platforms).
    Doorbells,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            prefix: "dl".into(),
            response_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(1),
            tls_root_cert: None,
            idle_reads: IdleReads::default(),
        }
    }
}

impl Options {
    /// How idle readers wait on one server ([`IdleReads`]).
    #[must_use]
    pub fn idle_reads(mut self, idle_reads: IdleReads) -> Self {
        self.idle_reads = idle_reads;
        self
    }

    /// With this key prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// With this response timeout.
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// With this connect timeout.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// For `rediss://`: trust the server certificates this PEM authority signed.
    #[must_use]
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
        self
    }

    /// With this longest wait between reconnect attempts.
    #[must_use]
    pub fn max_reconnect_delay(mut self, delay: Duration) -> Self {
        self.max_reconnect_delay = delay;
        self
    }
}

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

/// The connection info of `url`, checked, with RESP3 (for redis-rs's subscriptions) and
/// `TCP_NODELAY`.
pub(crate) fn connection_info(
    url: &str,
    options: &Options,
) -> Result<redis::ConnectionInfo, Error> {
    use redis::IntoConnectionInfo;
    if url.contains('#') {
        // redis-rs reads `rediss://..#insecure` as "do not verify the certificate" when a
        // feature of its is on, which any crate of the binary can turn on.
        return Err(Error::Config(
            "the Redis URL must not carry a fragment (`#insecure` would turn certificate \
             checks off)"
                .into(),
        ));
    }
    datalayer_core::naming::validate_prefix(&options.prefix)
        .map_err(|e| Error::Config(e.to_string()))?;
    let info = url.into_connection_info()?;
    if let redis::ConnectionAddr::Tcp(host, _) = info.addr() {
        let loopback = matches!(host.as_str(), "127.0.0.1" | "::1" | "[::1]" | "localhost");
        if info.redis_settings().password().is_some() && !loopback {
            eprintln!(
                "datalayer: warning: the Redis password goes in the clear to {host} \
                 (redis://): use rediss:// beyond this machine"
            );
        }
    }
    let redis_settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    Ok(info
        .set_redis_settings(redis_settings)
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

/// redis-rs's client for `info` (the doorbells' subscription connections, which speak
/// RESP3 for its pushes): with `rediss://` and a root certificate, TLS trusting that root.
/// Commands go on datalayer's own connections ([`crate::wire`]).
fn client_of(info: redis::ConnectionInfo, options: &Options) -> Result<redis::Client, Error> {
    match &options.tls_root_cert {
        #[cfg(feature = "tls")]
        Some(pem) => Ok(redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        )?),
        #[cfg(not(feature = "tls"))]
        Some(_) => Err(Error::Config(
            "tls_root_cert needs the `tls` feature of datalayer-tokio".into(),
        )),
        None => Ok(redis::Client::open(info)?),
    }
}

/// The URLs of the hosts `url` names: `redis://[auth@]h1:p1,h2:p2[/db]` is one URL per
/// host, each with the same scheme, credentials and path (cluster seeds).
fn seed_urls(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_owned()];
    };
    // A Unix socket's URL is a path: one server, no host list.
    if scheme == "unix" || scheme == "redis+unix" {
        return vec![url.to_owned()];
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (auth, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{auth}{h}{tail}"))
        .collect()
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
                    Backend::Redis { conn, client, .. } => {
                        crate::doorbells::start(crate::doorbells::Nodes::Single {
                            conn: conn.clone(),
                            client: client.clone(),
                            connect_timeout: self.options.connect_timeout,
                            response_timeout: self.options.response_timeout,
                        })
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
        if *n == 1 {
            self.shared.consumer.clone()
        } else {
            format!("{}-{n}", self.shared.consumer)
        }
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
        let seeds = seed_urls(url);
        let mut last = None;
        for seed in &seeds {
            match Self::connect_seed(seed, &seeds, options.clone()).await {
                Ok(layer) => return Ok(layer),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config(format!("no host in {}", crate::redact_url(url)))))
    }

    async fn connect_seed(seed: &str, seeds: &[String], options: Options) -> Result<Self, Error> {
        let info = connection_info(seed, &options)?;
        let client = client_of(info.clone(), &options)?;
        // While Redis is away, a command fails at once (not sent: the engine backs off and
        // sends again) rather than waiting for Redis to come back.
        let dial = crate::wire::Dial::new(
            &info,
            options.tls_root_cert.as_deref(),
            options.connect_timeout,
        )
        .map_err(Error::Config)?;
        let mut conn = Conn::connect(dial, options.response_timeout, options.max_reconnect_delay)
            .await
            .map_err(|e| Error::Redis(crate::connection::redis_error(&e)))?;
        let cluster_info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if cluster_info.contains("cluster_enabled:1") {
            return Self::connect_cluster(info, seeds, options).await;
        }
        crate::exec::load_scripts(&conn).await?;
        let client = Arc::new(client);
        let idle_reads = options.idle_reads;
        let layer = Self::over(
            Backend::Redis {
                conn,
                client,
                idle_reads,
            },
            options,
        );
        layer.warn_if_evicting().await;
        Ok(layer)
    }

    async fn connect_cluster(
        base: redis::ConnectionInfo,
        seeds: &[String],
        options: Options,
    ) -> Result<Self, Error> {
        let mut addrs = Vec::new();
        for seed in seeds {
            let info = connection_info(seed, &options)?;
            match info.addr() {
                redis::ConnectionAddr::Tcp(host, port)
                | redis::ConnectionAddr::TcpTls { host, port, .. } => {
                    addrs.push(datalayer_core::cluster::NodeAddr {
                        host: host.clone(),
                        port: *port,
                    });
                }
                _ => {
                    return Err(Error::Config(
                        "a cluster's seeds are host:port addresses".into(),
                    ));
                }
            }
        }
        let settings = crate::cluster::NodeSettings {
            base,
            tls_root_cert: options.tls_root_cert.clone(),
            response_timeout: options.response_timeout,
            connect_timeout: options.connect_timeout,
            max_reconnect_delay: options.max_reconnect_delay,
        };
        let cluster = crate::cluster::Cluster::connect(settings, addrs).await?;
        let layer = Self::over(Backend::Cluster(cluster), options);
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
        let consumer = format!(
            "{}-{:08x}",
            std::process::id(),
            crate::random::random_u64() as u32
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
                    conns.push(cluster.conn(&addr)?);
                }
                if conns.is_empty() {
                    return Err(Error::Redis(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "no cluster node is known to serve a slot",
                    ))));
                }
                Ok(conns)
            }
            #[cfg(feature = "memory")]
            Backend::Memory(_) => Ok(Vec::new()),
        }
    }

    async fn warn_if_evicting(&self) {
        for mut conn in self.node_conns().await.unwrap_or_default() {
            // A map in RESP3 (a flat array in RESP2): either decodes as one.
            let policy: redis::RedisResult<HashMap<String, String>> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async(&mut conn)
                .await;
            if let Some(p) = policy.ok().and_then(|mut p| p.remove("maxmemory-policy")) {
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
                return Ok(ServerInfo {
                    version: "in-process".into(),
                    maxmemory_policy: Some("noeviction".into()),
                    appendonly: Some(false),
                    save: Some(String::new()),
                    in_memory: true,
                    nodes: 1,
                });
            }
            let mut merged: Option<ServerInfo> = None;
            let nodes = conns.len();
            for conn in conns {
                let one = node_info(conn).await?;
                merged = Some(match merged {
                    None => one,
                    Some(m) => ServerInfo {
                        version: lowest_version(m.version, one.version),
                        maxmemory_policy: match (m.maxmemory_policy, one.maxmemory_policy) {
                            (Some(a), _) if a != "noeviction" => Some(a),
                            (_, Some(b)) if b != "noeviction" => Some(b),
                            (a, b) => a.or(b),
                        },
                        appendonly: match (m.appendonly, one.appendonly) {
                            (Some(a), Some(b)) => Some(a && b),
                            (a, b) => a.or(b),
                        },
                        save: match (m.save, one.save) {
                            (Some(a), _) if a.trim().is_empty() => Some(a),
                            (_, Some(b)) if b.trim().is_empty() => Some(b),
                            (a, b) => a.or(b),
                        },
                        in_memory: false,
                        nodes,
                    },
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
        let token = format!("{:016x}", crate::random::random_u64());
        let key = format!("{}:health:{token}", self.options.prefix);
        let check = async {
            if self.is_cluster() {
                for mut conn in self.node_conns().await? {
                    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                }
            }
            let b = |s: &str| std::borrow::Cow::Owned(s.as_bytes().to_vec());
            let replies = self
                .backend
                .run(&[
                    Invocation::Plain(vec![b("SET"), b(&key), b(&token), b("PX"), b("10000")]),
                    Invocation::Plain(vec![b("GET"), b(&key)]),
                    Invocation::Plain(vec![b("DEL"), b(&key)]),
                ])
                .await?;
            match replies.get(1) {
                Some(Value::Bulk(v)) if *v == token.as_bytes() => Ok(()),
                other => Err(Error::Health(format!("read back {other:?}"))),
            }
        };
        tokio::time::timeout(timeout, check)
            .await
            .map_err(|_| Error::HealthTimeout(timeout))?
    }
}

/// One server's [`ServerInfo`].
async fn node_info(mut conn: Conn) -> Result<ServerInfo, Error> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let config = |name: &'static str| {
        let mut conn = conn.clone();
        async move {
            let pair: redis::RedisResult<HashMap<String, String>> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut conn)
                .await;
            pair.ok().and_then(|mut p| p.remove(name))
        }
    };
    let maxmemory_policy = config("maxmemory-policy").await;
    let appendonly = config("appendonly").await.map(|v| v == "yes");
    let save = config("save").await;
    Ok(ServerInfo {
        version,
        maxmemory_policy,
        appendonly,
        save,
        in_memory: false,
        nodes: 1,
    })
}

/// The lower of two `x.y.z` versions.
fn lowest_version(a: String, b: String) -> String {
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    if parse(&b) < parse(&a) { b } else { a }
}
