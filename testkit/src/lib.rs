//! Real `redis-server` processes on free loopback ports, for the tests, the benchmarks and
//! the demo: the one place that starts Redis.
//!
//! Every server is started for its user (never the one on 6379): the binary is
//! `redis-server` from `PATH`, or the path in `REDIS_SERVER`. A free port can be taken by
//! another process between the probe and redis-server's bind, so a server counts as started
//! only once the one answering on the port reports the child's pid. A server can be killed
//! and restarted on the same port with the same data directory, so tests can inject real
//! faults; [`cluster`] starts a Redis Cluster of such servers.

pub mod cluster;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Persistence of a test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing on disk: a restart starts empty.
    None,
    /// AOF with `appendfsync always`: a kill loses no acknowledged write.
    AofAlways,
}

/// Why [`RedisServer::try_start`] did not start a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// No redis-server binary (named here) to run.
    NotInstalled(String),
    /// It ran, and no server of ours came up (why).
    Failed(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotInstalled(bin) => write!(f, "no {bin} to run"),
            Self::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StartError {}

/// A `redis-server` child process on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// With TLS: the TLS port (the plain port stays open for the harness and inspection).
    tls_port: Option<u16>,
    dir: PathBuf,
    persistence: Persistence,
    child: Option<Child>,
}

/// The redis-server binary: `REDIS_SERVER`, else `redis-server` from `PATH`.
#[must_use]
pub fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// A loopback port free when asked (see [`RedisServer::start`] for the race that follows).
#[must_use]
pub fn free_port() -> u16 {
    // Bind port 0 to let the OS pick a free port, then release it for redis-server.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local address").port()
}

/// A CA and a server certificate for 127.0.0.1 (ECDSA P-256, valid two days) in `dir`.
/// Makes the certificates in `dir` (see the line above); panics without `openssl`.
pub fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run openssl ({e}): install it with `sudo apt-get install openssl`")
            });
        assert!(status.success(), "openssl {args:?} failed");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=datalayer test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    run(&ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    run(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("extensions file");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
}

impl RedisServer {
    /// Starts a server on a free port; panics with install instructions when the binary is
    /// missing.
    #[must_use]
    pub fn start(persistence: Persistence) -> Self {
        Self::start_with(persistence, false)
    }

    /// Starts a server that also listens with TLS, with a certificate for 127.0.0.1 signed by
    /// a throw-away authority made with the `openssl` command ([`RedisServer::ca_pem`]).
    #[must_use]
    pub fn start_tls() -> Self {
        Self::start_with(Persistence::None, true)
    }

    /// Starts a server on a free port, or says why not: [`StartError::NotInstalled`] when
    /// there is no binary to run (the demo then runs without Redis).
    pub fn try_start(persistence: Persistence) -> Result<Self, StartError> {
        Self::try_start_with(persistence, false)
    }

    fn start_with(persistence: Persistence, tls: bool) -> Self {
        Self::try_start_with(persistence, tls).unwrap_or_else(|e| match e {
            StartError::NotInstalled(bin) => panic!(
                "cannot start {bin}: install Redis with `sudo apt-get install redis-server`, \
                 or set REDIS_SERVER to its path"
            ),
            StartError::Failed(why) => panic!("{why}"),
        })
    }

    fn try_start_with(persistence: Persistence, tls: bool) -> Result<Self, StartError> {
        // A free port can be taken by another test's server between our probe and
        // redis-server's bind: then ours exits and the port answers with another process.
        // The server is ours only if it reports our child's pid; else try another port.
        for _ in 0..10 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("datalayer-redis-{port}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| {
                StartError::Failed(format!("server data directory {}: {e}", dir.display()))
            })?;
            let tls_port = tls.then(|| {
                make_certificates(&dir);
                free_port()
            });
            let mut server = Self {
                port,
                tls_port,
                dir,
                persistence,
                child: None,
            };
            if server.spawn()? {
                return Ok(server);
            }
        }
        Err(StartError::Failed(
            "no redis-server of ours came up on 10 free ports".into(),
        ))
    }

    /// Starts the child; whether the server on the port is it (see [`RedisServer::ours`]).
    fn spawn(&mut self) -> Result<bool, StartError> {
        let mut cmd = Command::new(binary());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--dir"])
            .arg(&self.dir)
            .args(["--logfile", "redis.log", "--protected-mode", "yes"])
            .arg("--unixsocket")
            .arg(self.dir.join("redis.sock"))
            .args(["--unixsocketperm", "700"]);
        if let Some(tls_port) = self.tls_port {
            cmd.args(["--tls-port", &tls_port.to_string()]);
            for (flag, file) in [
                ("--tls-cert-file", "server.crt"),
                ("--tls-key-file", "server.key"),
                ("--tls-ca-cert-file", "ca.crt"),
            ] {
                cmd.arg(flag).arg(self.dir.join(file));
            }
            cmd.args(["--tls-auth-clients", "no"]);
        }
        match self.persistence {
            Persistence::None => cmd.args(["--appendonly", "no"]),
            Persistence::AofAlways => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => StartError::NotInstalled(binary()),
                _ => StartError::Failed(format!("cannot start {} ({e})", binary())),
            })?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits for the port to answer; whether it is our child that answers.
    fn wait_ready(&mut self) -> Result<bool, StartError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited() {
                return Ok(false);
            }
            if self.ping() {
                return Ok(self.ours());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err(StartError::Failed(format!(
            "redis-server on port {} did not start within 10 s",
            self.port
        )))
    }

    /// Whether our child has exited (it could not bind the port, say).
    fn exited(&mut self) -> bool {
        let gone = self
            .child
            .as_mut()
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
        if gone {
            self.child = None;
        }
        gone
    }

    /// Whether the server on the port is our child: `INFO server` gives its `process_id`.
    fn ours(&mut self) -> bool {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return false;
        };
        let same = self.server_pid() == Some(pid);
        if !same {
            self.kill();
        }
        same
    }

    /// The `process_id` the server on the port reports.
    fn server_pid(&self) -> Option<u32> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        conn.write_all(b"INFO server\r\n").ok()?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let n = conn.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            if let Some(at) = text.find("process_id:") {
                let rest = &text[at + "process_id:".len()..];
                if let Some(end) = rest.find('\n') {
                    return rest[..end].trim().parse().ok();
                }
            }
        }
        None
    }

    /// Whether the server answers PING with PONG (not LOADING, not refused).
    fn ping(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 64];
        conn.write_all(b"PING\r\n").is_ok()
            && conn
                .read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// The server's Unix socket (every test server listens on one besides its port).
    #[must_use]
    pub fn unix_socket(&self) -> std::path::PathBuf {
        self.dir.join("redis.sock")
    }

    /// The server's data directory (its AOF, its log).
    #[must_use]
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The server's port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `rediss://127.0.0.1:<tls port>` (a server started with [`RedisServer::start_tls`]).
    #[must_use]
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://127.0.0.1:{p}"))
    }

    /// The PEM certificate of the authority that signed a TLS server's certificate.
    #[must_use]
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.crt")).expect("the test CA certificate")
    }

    /// SIGKILLs the server (no shutdown, no final fsync).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        match self.spawn() {
            Ok(true) => {}
            Ok(false) => panic!(
                "another process took port {} while the server was down",
                self.port
            ),
            Err(e) => panic!("{e}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process that dies with the test, even when the test panics.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_ours_only_if_it_reports_our_pid() {
        let a = RedisServer::start(Persistence::None);
        assert!(a.server_pid().is_some());
        // Another child on `a`'s port cannot bind it: `b` sees `a` answer, with `a`'s pid.
        let mut b = RedisServer {
            port: a.port,
            tls_port: None,
            dir: std::env::temp_dir().join(format!("datalayer-redis-b-{}", std::process::id())),
            persistence: Persistence::None,
            child: None,
        };
        std::fs::create_dir_all(&b.dir).expect("a directory");
        assert_eq!(
            b.spawn(),
            Ok(false),
            "a server of another process is not ours"
        );
        assert!(b.child.is_none());
        drop(b);
        // `a` still serves.
        assert!(a.ping());
    }

    #[test]
    fn try_start_tells_a_missing_binary_from_a_failure() {
        // REDIS_SERVER is read by every test's server: set it in a child process of its
        // own rather than in this one.
        let out = std::process::Command::new(std::env::current_exe().expect("this test"))
            .args([
                "--exact",
                "tests::missing_binary_child",
                "--ignored",
                "--nocapture",
            ])
            .env("REDIS_SERVER", "/nonexistent/redis-server")
            .output()
            .expect("run the child test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Run by the test above with `REDIS_SERVER` pointing nowhere.
    #[test]
    #[ignore = "run by try_start_tells_a_missing_binary_from_a_failure"]
    fn missing_binary_child() {
        assert_eq!(
            RedisServer::try_start(Persistence::None).map(|s| s.port()),
            Err(StartError::NotInstalled("/nonexistent/redis-server".into()))
        );
    }
}
