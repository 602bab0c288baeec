//! Integration-test support: real `redis-server` processes on free loopback ports.
//!
//! Every test starts its own server (never the one on 6379): the binary is `redis-server` from
//! `PATH`, or the path in `REDIS_SERVER`. A server can be stopped, killed and restarted on the
//! same port with the same data directory, so tests can inject real faults.

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

/// A `redis-server` child process on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    persistence: Persistence,
    child: Option<Child>,
}

fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

fn free_port() -> u16 {
    // Bind port 0 to let the OS pick a free port, then release it for redis-server.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local address").port()
}

impl RedisServer {
    /// Starts a server on a free port; panics with install instructions when the binary is
    /// missing.
    #[must_use]
    pub fn start(persistence: Persistence) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("datalayer-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("server data directory");
        let mut server = Self {
            port,
            dir,
            persistence,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--dir"])
            .arg(&self.dir)
            .args(["--logfile", "redis.log", "--protected-mode", "yes"]);
        match self.persistence {
            Persistence::None => cmd.args(["--appendonly", "no"]),
            Persistence::AofAlways => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): install Redis with `sudo apt-get install redis-server`, \
                     or set REDIS_SERVER to its path",
                    binary()
                )
            });
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "redis-server on port {} did not start within 10 s",
            self.port
        );
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
        self.spawn();
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
