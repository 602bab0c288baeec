//! A fault-injecting TCP proxy on loopback, between the adapter and a test's redis-server.
//!
//! Faults are real socket events, not a mock: replies swallowed (the command ran, its reply
//! never comes), a connection cut after some bytes of a pipeline reached Redis, every
//! connection killed, and new connections refused (the proxy stops listening, so a connect
//! gets `ECONNREFUSED`, as from a Redis that is down).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// What the proxy does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: bytes pass both ways.
    None,
    /// Bytes to Redis pass; Redis' replies are swallowed.
    DropReplies,
    /// The next connection to carry bytes to Redis is cut after this many more of them (the
    /// rest of the pipeline never arrives); then the fault is over.
    CutAfter(usize),
    /// The next bytes toward Redis that hold a `MULTI` are held this long, then delivered
    /// (a stalled network, or a Redis too busy to read): the client times out while the
    /// command is still to run. Then the fault is over.
    HoldMulti(std::time::Duration),
    /// The next bytes from Redis (the next reply or replies read at once) reach the client
    /// as bytes that are no reply (`?`, no RESP type); then the fault is over.
    GarbleReply,
}

#[derive(Debug)]
struct State {
    fault: Mutex<Fault>,
    conns: Mutex<HashMap<u64, AbortHandle>>,
    next: AtomicU64,
    /// Connections numbered below this swallow Redis' replies ([`Proxy::silence_existing`]).
    silenced_below: AtomicU64,
    upstream: SocketAddr,
}

impl State {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long to hold `bytes` toward Redis before they pass (a `HoldMulti` fault).
    fn hold(&self, bytes: &[u8]) -> Option<std::time::Duration> {
        let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        match *fault {
            Fault::HoldMulti(d) if bytes.windows(5).any(|w| w == b"MULTI") => {
                *fault = Fault::None;
                Some(d)
            }
            _ => None,
        }
    }

    /// Whether the bytes just read from Redis are to be garbled (a `GarbleReply` fault).
    fn garble(&self) -> bool {
        let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        let garble = *fault == Fault::GarbleReply;
        if garble {
            *fault = Fault::None;
        }
        garble
    }

    /// How many of `n` bytes toward Redis may pass, and whether the connection is cut after.
    fn budget(&self, n: usize) -> (usize, bool) {
        let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        match *fault {
            Fault::CutAfter(left) if left <= n => {
                *fault = Fault::None;
                (left, true)
            }
            Fault::CutAfter(left) => {
                *fault = Fault::CutAfter(left - n);
                (n, false)
            }
            _ => (n, false),
        }
    }
}

/// A proxy listening on a free loopback port, forwarding to `127.0.0.1:<upstream>`.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    state: Arc<State>,
    listener: Option<AbortHandle>,
}

impl Proxy {
    /// Starts a proxy to the server on `upstream` (a port on 127.0.0.1).
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(State {
            fault: Mutex::new(Fault::None),
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            silenced_below: AtomicU64::new(0),
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream)),
        });
        let mut proxy = Self {
            port,
            state,
            listener: None,
        };
        proxy.listen(listener);
        proxy
    }

    fn listen(&mut self, listener: TcpListener) {
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = state.next.fetch_add(1, Ordering::Relaxed);
                let conn = tokio::spawn(carry(client, state.clone(), id));
                state
                    .conns
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, conn.abort_handle());
            }
        });
        self.listener = Some(task.abort_handle());
    }

    /// `redis://127.0.0.1:<proxy port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on, this fault.
    pub fn set(&self, fault: Fault) {
        *self
            .state
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fault;
    }

    /// Every connection the proxy carries now swallows Redis' replies from now on, and
    /// stays open (half-open connections, as after a network partition without a reset);
    /// connections made later pass.
    pub fn silence_existing(&self) {
        let next = self.state.next.load(Ordering::Relaxed);
        self.state.silenced_below.store(next, Ordering::Relaxed);
    }

    /// Closes every connection the proxy carries.
    pub fn kill_connections(&self) {
        let conns = std::mem::take(
            &mut *self
                .state
                .conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (_, c) in conns {
            c.abort();
        }
    }

    /// Stops listening (connects are refused) or listens again on the same port.
    pub async fn refuse(&mut self, refuse: bool) {
        if refuse {
            if let Some(l) = self.listener.take() {
                l.abort();
                // The listener's socket closes when its task is dropped.
                tokio::task::yield_now().await;
                for _ in 0..100 {
                    if TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                panic!("the proxy still accepts connections");
            }
        } else if self.listener.is_none() {
            let listener = TcpListener::bind(("127.0.0.1", self.port))
                .await
                .expect("listen again on the proxy port");
            self.listen(listener);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        self.kill_connections();
    }
}

/// One client connection: to Redis through the fault, and back.
async fn carry(client: TcpStream, state: Arc<State>, id: u64) {
    let Ok(server) = TcpStream::connect(state.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = {
        let state = state.clone();
        async move {
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = match client_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if let Some(d) = state.hold(&buf[..n]) {
                    tokio::time::sleep(d).await;
                }
                let (pass, cut) = state.budget(n);
                if server_tx.write_all(&buf[..pass]).await.is_err() || cut {
                    return;
                }
            }
        }
    };
    let down = {
        let state = state.clone();
        async move {
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = match server_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if state.fault() == Fault::DropReplies
                    || id < state.silenced_below.load(Ordering::Relaxed)
                {
                    continue;
                }
                if state.garble() {
                    buf[..n].fill(b'?');
                }
                if client_tx.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    // Either side ending ends the connection (both sockets close when dropped).
    tokio::select! {
        () = up => {}
        () = down => {}
    }
    state
        .conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
}
