//! A local Redis Cluster of real `redis-server` processes on free loopback ports (data and
//! bus ports both picked free), made without `redis-cli`: slots assigned with `CLUSTER
//! ADDSLOTSRANGE`, nodes joined with `CLUSTER MEET`, replicas paired with `CLUSTER
//! REPLICATE`. Faults on demand: kill and restart a node, a manual failover, a slot
//! migrated key by key (so that `ASK` and `TRYAGAIN` last as long as a test wants).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One node.
#[derive(Debug)]
struct Node {
    port: u16,
    bus: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// With TLS: the TLS port, and the directory of the certificates.
    tls: Option<(u16, PathBuf)>,
}

/// A cluster of `masters` primaries with `replicas` replicas each.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    masters: usize,
    replicas: usize,
    /// With TLS: the directory of the test authority and the nodes' certificate.
    certs: Option<PathBuf>,
}

fn sync_conn(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(conn)
}

fn query<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
    cmd.query(&mut sync_conn(port)?)
}

impl Node {
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(crate::binary());
        if let Some((tls_port, certs)) = &self.tls {
            // Clients, the cluster bus and replication over TLS; the plain port stays for
            // the harness.
            cmd.args(["--tls-port", &tls_port.to_string()])
                .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                .args(["--tls-auth-clients", "no"]);
            for (flag, file) in [
                ("--tls-cert-file", "server.crt"),
                ("--tls-key-file", "server.key"),
                ("--tls-ca-cert-file", "ca.crt"),
            ] {
                cmd.arg(flag).arg(certs.join(file));
            }
        }
        let child = cmd
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .args(["--cluster-port", &self.bus.to_string()])
            .arg("--cluster-config-file")
            .arg(self.dir.join("nodes.conf"))
            .args([
                "--repl-diskless-sync-delay",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e})", crate::binary()));
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(info) = query::<String>(self.port, redis::cmd("INFO").arg("server")) {
                let theirs = info
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|p| p.trim().parse::<u32>().ok());
                if theirs == Some(pid) {
                    return true;
                }
                self.kill();
                return false;
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
            if exited {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("cluster node on {} did not start within 10 s", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn id(&self) -> String {
        query(self.port, redis::cmd("CLUSTER").arg("MYID")).expect("CLUSTER MYID")
    }
}

impl RedisCluster {
    /// Starts and joins the cluster; returns when every node agrees it is ready (state ok,
    /// every replica linked and seen by all).
    #[must_use]
    pub fn start(masters: usize, replicas: usize) -> Self {
        Self::start_with(masters, replicas, false)
    }

    /// A cluster whose nodes speak TLS to clients and to each other (certificates for
    /// 127.0.0.1 from a throw-away authority, [`RedisCluster::ca_pem`]).
    #[must_use]
    pub fn start_tls(masters: usize, replicas: usize) -> Self {
        Self::start_with(masters, replicas, true)
    }

    fn start_with(masters: usize, replicas: usize, tls: bool) -> Self {
        let certs = tls.then(|| {
            let dir = std::env::temp_dir().join(format!(
                "datalayer-cluster-ca-{}-{}",
                crate::free_port(),
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("certificates directory");
            crate::make_certificates(&dir);
            dir
        });
        let mut nodes = Vec::new();
        let mut failed = 0;
        while nodes.len() < masters * (1 + replicas) {
            let (port, bus) = (crate::free_port(), crate::free_port());
            let dir = std::env::temp_dir()
                .join(format!("datalayer-cluster-{port}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("node directory");
            let mut node = Node {
                port,
                bus,
                dir,
                child: None,
                tls: certs.as_ref().map(|c| (crate::free_port(), c.clone())),
            };
            if node.spawn() {
                nodes.push(node);
                continue;
            }
            // A port taken meanwhile is tried again elsewhere; a server that cannot start
            // at all (a build without TLS, say) is an error, not an endless retry.
            failed += 1;
            if failed >= 10 {
                let log = std::fs::read_to_string(node.dir.join("redis.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                panic!(
                    "{} did not start on 10 pairs of free ports; its log ends: {tail:?}",
                    crate::binary()
                );
            }
        }
        let cluster = Self {
            nodes,
            masters,
            replicas,
            certs,
        };
        cluster.create();
        cluster
    }

    fn create(&self) {
        let first = self.nodes[0].port;
        for (i, node) in self.nodes.iter().enumerate() {
            let _: () = query(
                node.port,
                redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(i + 1),
            )
            .expect("SET-CONFIG-EPOCH");
            if i < self.masters {
                let lo = i * 16384 / self.masters;
                let hi = (i + 1) * 16384 / self.masters - 1;
                let _: () = query(
                    node.port,
                    redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(lo).arg(hi),
                )
                .expect("ADDSLOTSRANGE");
            }
        }
        for node in &self.nodes[1..] {
            let _: () = query(
                first,
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    // With `tls-cluster`, a node's announced port is its TLS port.
                    .arg(node.tls.as_ref().map_or(node.port, |(p, _)| *p))
                    .arg(node.bus),
            )
            .expect("MEET");
        }
        let all = self.nodes.len();
        self.wait(
            Duration::from_secs(20),
            "every node knows every other",
            || {
                self.nodes.iter().all(|n| {
                    query::<String>(n.port, redis::cmd("CLUSTER").arg("NODES"))
                        .is_ok_and(|t| t.lines().count() == all)
                })
            },
        );
        for (i, node) in self.nodes.iter().enumerate().skip(self.masters) {
            let master = self.nodes[(i - self.masters) % self.masters].id();
            let _: () = query(
                node.port,
                redis::cmd("CLUSTER").arg("REPLICATE").arg(&master),
            )
            .expect("REPLICATE");
        }
        self.wait_ready();
    }

    fn wait(&self, limit: Duration, what: &str, ok: impl Fn() -> bool) {
        let deadline = Instant::now() + limit;
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "cluster: not {what} within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every live node reports `cluster_state:ok`, sees every replica, and
    /// every replica's link to its master is up.
    pub fn wait_ready(&self) {
        let replicas = self.masters * self.replicas;
        self.wait(Duration::from_secs(30), "ready", || {
            self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let state = query::<String>(n.port, redis::cmd("CLUSTER").arg("INFO"))
                    .is_ok_and(|i| i.contains("cluster_state:ok"));
                let seen =
                    query::<String>(n.port, redis::cmd("CLUSTER").arg("NODES")).is_ok_and(|t| {
                        t.lines()
                            .filter(|l| l.contains("slave") && !l.contains("fail"))
                            .count()
                            >= replicas
                    });
                let linked = query::<String>(n.port, redis::cmd("INFO").arg("replication"))
                    .is_ok_and(|r| {
                        !r.contains("role:slave") || r.contains("master_link_status:up")
                    });
                state && seen && linked
            })
        });
    }

    /// `redis://127.0.0.1:<p1>,127.0.0.1:<p2>,...`: every master as a seed.
    #[must_use]
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes[..self.masters]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis://{}", hosts.join(","))
    }

    /// `rediss://127.0.0.1:<tls p1>,...` (a cluster started with [`RedisCluster::start_tls`]).
    #[must_use]
    pub fn tls_url(&self) -> Option<String> {
        let hosts: Option<Vec<String>> = self.nodes[..self.masters]
            .iter()
            .map(|n| n.tls.as_ref().map(|(p, _)| format!("127.0.0.1:{p}")))
            .collect();
        hosts.map(|h| format!("rediss://{}", h.join(",")))
    }

    /// The PEM certificate of the authority of a TLS cluster.
    #[must_use]
    pub fn ca_pem(&self) -> Vec<u8> {
        let dir = self.certs.as_ref().expect("a TLS cluster");
        std::fs::read(dir.join("ca.crt")).expect("the test CA certificate")
    }

    /// Every node's port.
    #[must_use]
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The ports of the nodes that are masters now (asked of the live nodes).
    #[must_use]
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter(|n| {
                query::<String>(n.port, redis::cmd("INFO").arg("replication"))
                    .is_ok_and(|r| r.contains("role:master"))
            })
            .map(|n| n.port)
            .collect()
    }

    /// The port of the master serving `slot` now.
    #[must_use]
    pub fn master_of(&self, slot: u16) -> u16 {
        for port in self.master_ports() {
            let owned: Vec<Vec<redis::Value>> =
                query(port, redis::cmd("CLUSTER").arg("SLOTS")).unwrap_or_default();
            for range in owned {
                let lo = redis::from_redis_value::<i64>(range[0].clone()).unwrap_or(-1);
                let hi = redis::from_redis_value::<i64>(range[1].clone()).unwrap_or(-1);
                if (lo..=hi).contains(&i64::from(slot)) {
                    let node: Vec<redis::Value> =
                        redis::from_redis_value(range[2].clone()).unwrap_or_default();
                    if let Some(p) = node
                        .get(1)
                        .and_then(|p| redis::from_redis_value::<i64>(p.clone()).ok())
                    {
                        return u16::try_from(p).expect("a port");
                    }
                }
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// A live replica of the master on `port`.
    #[must_use]
    pub fn replica_of(&self, port: u16) -> u16 {
        let id = self.node(port).id();
        let nodes: String = query(port, redis::cmd("CLUSTER").arg("NODES")).expect("CLUSTER NODES");
        nodes
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(3) == Some(&id.as_str()) && !f[2].contains("fail"))
                    .then(|| f[1].split([':', '@']).nth(1)?.parse().ok())
                    .flatten()
            })
            .expect("a replica of the master")
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes.iter().find(|n| n.port == port).expect("a node")
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node")
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        self.node_mut(port).kill();
    }

    /// Starts the node on `port` again (same data directory and nodes.conf: it rejoins).
    pub fn restart(&mut self, port: u16) {
        assert!(self.node_mut(port).spawn(), "port {port} taken meanwhile");
    }

    /// Waits until the replica on `port` is a master (after a kill of its master: the
    /// election takes node-timeout and about a second more).
    pub fn wait_promoted(&self, port: u16) {
        self.wait(Duration::from_secs(30), "promoted", || {
            query::<String>(port, redis::cmd("INFO").arg("replication"))
                .is_ok_and(|r| r.contains("role:master"))
        });
    }

    /// Waits until a node other than `port` serves `slot` (a replica took over).
    pub fn wait_taken_over(&self, slot: u16, port: u16) {
        self.wait(Duration::from_secs(30), "taken over", || {
            let m = self.master_of(slot);
            m != port && self.master_ports().contains(&m)
        });
    }

    /// A manual failover: the replica on `port` takes over from its master (lossless).
    pub fn failover(&self, port: u16) {
        let _: () = query(port, redis::cmd("CLUSTER").arg("FAILOVER")).expect("FAILOVER");
        self.wait_promoted(port);
    }

    /// Moves `slot` from the master on `from` to the master on `to`, one key per `MIGRATE`,
    /// `hold` between keys (meanwhile commands on the slot get `ASK` or `TRYAGAIN`).
    pub fn move_slot(&self, slot: u16, from: u16, to: u16, hold: Duration) {
        let (src, dst) = (self.node(from).id(), self.node(to).id());
        let setslot = |port: u16, how: &str, id: &str| {
            let _: () = query(
                port,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(how)
                    .arg(id),
            )
            .expect("SETSLOT");
        };
        setslot(to, "IMPORTING", &src);
        setslot(from, "MIGRATING", &dst);
        let mut conn = sync_conn(from).expect("the source");
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(1)
                .query(&mut conn)
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(10_000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut conn)
                .expect("MIGRATE");
            std::thread::sleep(hold);
        }
        for port in std::iter::once(to).chain(self.master_ports()) {
            setslot(port, "NODE", &dst);
        }
    }

    /// How many clients are connected to each master now (`CLIENT LIST`), by port.
    #[must_use]
    pub fn clients_per_master(&self) -> Vec<(u16, usize)> {
        self.master_ports()
            .into_iter()
            .map(|port| {
                let n = query::<String>(port, redis::cmd("CLIENT").arg("LIST"))
                    .map(|l| l.lines().count())
                    .unwrap_or(0);
                (port, n)
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
            let _ = std::fs::remove_dir_all(&n.dir);
        }
        if let Some(c) = &self.certs {
            let _ = std::fs::remove_dir_all(c);
        }
    }
}
