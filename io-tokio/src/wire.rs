//! datalayer's own connection to a Redis server: a socket (TCP, TLS or Unix), a task that
//! writes what is asked and reads the replies, and the core's RESP codec
//! ([`datalayer_core::resp`]) in between, decoding straight into the core's [`Value`]s.
//!
//! A [`Link`] carries requests (one or more encoded commands, and how many replies they
//! take) in the order they are made, each answered with its replies in order (the core's
//! [`Exchange`] matches them). Nothing can make replies stop lining up with requests: a
//! reply that does not decode, a reply no one asked for, an I/O error, the server closing
//! the connection, or a request that waited longer than its timeout closes the link, and every request still waiting on it fails
//! with [`WireError::Lost`] (what it sent may or may not have run). A request made on a
//! closed link fails with [`WireError::NotSent`]: nothing was written.
//!
//! The connection speaks RESP2 (it never sends `HELLO 3`), the shapes the core's model of
//! Redis answers with.

use std::sync::Arc;
use std::time::Duration;

use datalayer_core::resp::{self, Exchange};
use datalayer_core::url::{ServerUrl, Transport};
use datalayer_core::value::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};

/// Why a request got no replies.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum WireError {
    /// Nothing was written: no connection could be made, or the link was closed already.
    #[error("not sent to Redis: {0}")]
    NotSent(String),
    /// The link failed or was closed while the request was out: what it sent may or may
    /// not have run.
    #[error("the connection to Redis failed, the outcome is unknown: {0}")]
    Lost(String),
}

/// Where a server is, and how to open a connection to it.
#[derive(Clone)]
pub(crate) struct Dial {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    connect_timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Clone, Debug)]
enum Addr {
    Tcp(String, u16),
    #[cfg(feature = "tls")]
    Tls(String, u16),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dial")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Dial {
    /// The first server `url` names (its first host, or its socket; [`Dial::at`] gives the
    /// others), with TLS trusting `tls_root_cert` (PEM) or else the system's roots for
    /// `rediss://`.
    pub(crate) fn new(
        url: &ServerUrl,
        tls_root_cert: Option<&[u8]>,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let addr = match &url.transport {
            Transport::Tcp(hosts) => {
                let first = hosts.first().ok_or("no host in the URL")?;
                Addr::Tcp(first.host.clone(), first.port)
            }
            #[cfg(feature = "tls")]
            Transport::Tls(hosts) => {
                let first = hosts.first().ok_or("no host in the URL")?;
                Addr::Tls(first.host.clone(), first.port)
            }
            #[cfg(not(feature = "tls"))]
            Transport::Tls(_) => {
                return Err("rediss:// needs the `tls` feature of datalayer-tokio".into());
            }
            #[cfg(unix)]
            Transport::Unix(path) => Addr::Unix(path.into()),
            #[cfg(not(unix))]
            Transport::Unix(_) => return Err("no Unix sockets on this system".into()),
        };
        #[cfg(feature = "tls")]
        let tls = match addr {
            Addr::Tls(..) => Some(Arc::new(tls_config(tls_root_cert)?)),
            _ => None,
        };
        #[cfg(not(feature = "tls"))]
        if tls_root_cert.is_some() {
            return Err("tls_root_cert needs the `tls` feature of datalayer-tokio".into());
        }
        Ok(Self {
            addr,
            username: url.username.clone(),
            password: url.password.clone(),
            db: url.db,
            connect_timeout,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// This server's settings at another address (a cluster node's), same scheme.
    pub(crate) fn at(&self, host: &str, port: u16) -> Self {
        let mut other = self.clone();
        other.addr = match &self.addr {
            #[cfg(feature = "tls")]
            Addr::Tls(..) => Addr::Tls(host.to_owned(), port),
            _ => Addr::Tcp(host.to_owned(), port),
        };
        other
    }

    /// Opens a connection, authenticates, selects the database and names it; returns the
    /// link and its client id (for `CLIENT KILL` and `CLIENT UNBLOCK`).
    pub(crate) async fn open(&self, name: &str) -> Result<(Link, i64), WireError> {
        let (stream, id) = self.handshake(name).await?;
        Ok((Link::start(stream), id))
    }

    /// Opens a subscription connection (see [`SubLink`]); what arrives on it goes to
    /// `heard`.
    /// A connection silent for `silence` is sent a `PING`, and closed when that too goes
    /// unanswered for `silence` (a half-open connection, a proxy that swallows replies: it
    /// would otherwise wait for rings forever).
    pub(crate) async fn subscriber(
        &self,
        name: &str,
        silence: Duration,
        heard: impl FnMut(Option<Value>) + Send + 'static,
    ) -> Result<SubLink, WireError> {
        let (stream, _) = self.handshake(name).await?;
        Ok(SubLink::start(stream, silence, heard))
    }

    /// A connection, logged in, its database selected, named: the stream and its client
    /// id.
    async fn handshake(&self, name: &str) -> Result<(Box<dyn Stream>, i64), WireError> {
        let opened = tokio::time::timeout(self.connect_timeout, async {
            let mut stream = self.connect().await?;
            let mut out = Vec::new();
            let mut replies = 2;
            if let Some(password) = &self.password {
                let mut args: Vec<&[u8]> = vec![b"AUTH"];
                if let Some(user) = &self.username {
                    args.push(user.as_bytes());
                }
                args.push(password.as_bytes());
                resp::encode_command(&mut out, args);
                replies += 1;
            }
            let db = self.db.to_string();
            if self.db != 0 {
                resp::encode_command(&mut out, [&b"SELECT"[..], db.as_bytes()]);
                replies += 1;
            }
            resp::encode_command(&mut out, [&b"CLIENT"[..], b"SETNAME", name.as_bytes()]);
            resp::encode_command(&mut out, [&b"CLIENT"[..], b"ID"]);
            let failed = |e: std::io::Error| WireError::NotSent(e.to_string());
            stream.write_all(&out).await.map_err(failed)?;
            let values = read_values(&mut stream, replies).await?;
            if let Some(Value::Error(e)) = values.iter().find(|v| matches!(v, Value::Error(_))) {
                return Err(WireError::NotSent(e.clone()));
            }
            match values.last() {
                Some(Value::Int(id)) => Ok((stream, *id)),
                other => Err(WireError::NotSent(format!("CLIENT ID answered {other:?}"))),
            }
        })
        .await;
        // A handshake cut short by the timeout wrote nothing of a caller's.
        opened.unwrap_or_else(|_| {
            Err(WireError::NotSent(format!(
                "no connection within {:?}",
                self.connect_timeout
            )))
        })
    }

    /// The socket.
    async fn connect(&self) -> Result<Box<dyn Stream>, WireError> {
        let refused = |e: std::io::Error| WireError::NotSent(e.to_string());
        match &self.addr {
            Addr::Tcp(host, port) => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(refused)?;
                s.set_nodelay(true).map_err(refused)?;
                Ok(Box::new(s))
            }
            #[cfg(feature = "tls")]
            Addr::Tls(host, port) => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(refused)?;
                s.set_nodelay(true).map_err(refused)?;
                let config = self
                    .tls
                    .clone()
                    .ok_or_else(|| WireError::NotSent("no TLS configuration".into()))?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| WireError::NotSent(format!("TLS server name {host}: {e}")))?;
                let s = tokio_rustls::TlsConnector::from(config)
                    .connect(name, s)
                    .await
                    .map_err(refused)?;
                Ok(Box::new(s))
            }
            #[cfg(unix)]
            Addr::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(refused)?;
                Ok(Box::new(s))
            }
        }
    }
}

/// A connection's byte stream (TCP, TLS or a Unix socket).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// The first `n` values that arrive on `stream` (nothing else may be on its way).
async fn read_values(stream: &mut Box<dyn Stream>, n: usize) -> Result<Vec<Value>, WireError> {
    let (mut buf, mut decoder, mut values) = (Vec::new(), resp::Decoder::default(), Vec::new());
    while values.len() < n {
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err(WireError::NotSent("closed by the server".into())),
            Ok(_) => {}
            Err(e) => return Err(WireError::NotSent(e.to_string())),
        }
        let used = (decoder.decode_all(&buf, |v| values.push(v)))
            .map_err(|e| WireError::NotSent(e.to_string()))?;
        buf.drain(..used);
    }
    Ok(values)
}

/// TLS trusting `root_cert` (PEM), or the system's roots.
#[cfg(feature = "tls")]
fn tls_config(root_cert: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("root certificate PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("root certificate: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A request: encoded commands, how many replies they take, where the replies go.
struct Request {
    bytes: Vec<u8>,
    replies: usize,
    done: Done,
}

/// One connection (cheap to clone; the connection closes once every clone is dropped, or
/// on [`Link::close`]).
#[derive(Clone)]
pub(crate) struct Link {
    tx: mpsc::UnboundedSender<Request>,
    kill: Arc<Notify>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Link {
    fn start(stream: Box<dyn Stream>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let kill = Arc::new(Notify::new());
        tokio::spawn(run(stream, rx, kill.clone()));
        Self { tx, kill }
    }

    /// Sends `bytes` (commands that take `replies` replies, `replies` ≥ 1) and returns
    /// their replies; with a `timeout`, a request not answered in time closes the link.
    pub(crate) async fn request(
        &self,
        bytes: Vec<u8>,
        replies: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Value>, WireError> {
        let (done, rx) = oneshot::channel();
        let request = Request {
            bytes,
            replies,
            done,
        };
        if self.tx.send(request).is_err() {
            return Err(WireError::NotSent("the connection is closed".into()));
        }
        let answered = match timeout {
            Some(t) => match tokio::time::timeout(t, rx).await {
                Ok(answered) => answered,
                Err(_) => {
                    self.close();
                    return Err(WireError::Lost(format!("no reply within {t:?}")));
                }
            },
            None => rx.await,
        };
        answered.unwrap_or_else(|_| Err(WireError::Lost("the connection closed".into())))
    }

    /// Closes the connection: requests out fail as [`WireError::Lost`], later ones as
    /// [`WireError::NotSent`].
    pub(crate) fn close(&self) {
        self.kill.notify_one();
    }

    /// Whether the connection is closed (by [`Link::close`], the server or a failure).
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Where a request's replies go.
type Done = oneshot::Sender<Result<Vec<Value>, WireError>>;

/// The connection's task: writes requests in order; the core's [`Exchange`] hands each its
/// replies, and decides when the connection can no longer be trusted.
async fn run(
    mut stream: Box<dyn Stream>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    kill: Arc<Notify>,
) {
    let mut exchange: Exchange<Done> = Exchange::default();
    let mut answered = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut start = 0;
    let mut out: Vec<u8> = Vec::new();
    let why: String = loop {
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            () = kill.notified() => break "closed after a timeout or a failure".into(),
            request = rx.recv() => {
                let Some(first) = request else { break "no longer used".into() };
                // Every request already queued goes in the same write.
                out.clear();
                let mut next = Some(first);
                while let Some(r) = next {
                    if out.is_empty() {
                        out = r.bytes;
                    } else {
                        out.extend_from_slice(&r.bytes);
                    }
                    exchange.sent(r.replies, r.done);
                    next = rx.try_recv().ok();
                }
                if let Err(e) = stream.write_all(&out).await {
                    break format!("writing: {e}");
                }
            }
            read = stream.read_buf(&mut buf) => {
                match read {
                    Ok(0) => break "closed by the server".into(),
                    Ok(_) => {}
                    Err(e) => break format!("reading: {e}"),
                }
                let received = exchange.received(&buf[start..], &mut answered);
                for (done, values) in answered.drain(..) {
                    // A requester that gave up drops its replies.
                    let _ = done.send(Ok(values));
                }
                match received {
                    Ok(used) => start += used,
                    Err(e) => break e.to_string(),
                }
                if start == buf.len() {
                    buf.clear();
                    start = 0;
                } else if start > READ_CHUNK {
                    buf.drain(..start);
                    start = 0;
                }
            }
        }
    };
    tracing::debug!(why = %why, owed = exchange.owed(), "Redis connection closed");
    rx.close();
    for done in exchange.abandon() {
        let _ = done.send(Err(WireError::Lost(why.clone())));
    }
    // Requests queued but never written: nothing of theirs ran.
    while let Ok(r) = rx.try_recv() {
        let _ = r.done.send(Err(WireError::NotSent(why.clone())));
    }
}

/// How much is read at a time.
const READ_CHUNK: usize = 64 * 1024;

/// A subscription connection (sharded pub/sub, RESP2): commands go out as written, and every
/// value that arrives (confirmations, error replies, rings, the server's own unsubscribes)
/// goes to the `heard` it was opened with, in order, then `None` once the connection is
/// gone. What each value means is the core's ([`datalayer_core::bells::Subscription`]).
/// The connection closes once every clone is dropped.
#[derive(Clone)]
pub(crate) struct SubLink {
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

impl SubLink {
    fn start(
        stream: Box<dyn Stream>,
        silence: Duration,
        heard: impl FnMut(Option<Value>) + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(listen(stream, rx, silence, heard));
        Self { tx }
    }

    /// Writes `bytes` (encoded commands).
    pub(crate) fn send(&self, bytes: Vec<u8>) {
        // A closed connection has told `heard` already.
        let _ = self.tx.send(bytes);
    }
}

/// A subscription connection's task.
async fn listen(
    mut stream: Box<dyn Stream>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    silence: Duration,
    mut heard: impl FnMut(Option<Value>),
) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut decoder = resp::Decoder::default();
    // When something was last heard, or the PING that asked why nothing was went out.
    let (mut since, mut pinged) = (tokio::time::Instant::now(), false);
    let why: String = loop {
        tokio::select! {
            () = tokio::time::sleep_until(since + silence) => {
                if pinged {
                    break format!("no reply to PING within {silence:?}");
                }
                let mut ping = Vec::new();
                resp::encode_command(&mut ping, [&b"PING"[..]]);
                if let Err(e) = stream.write_all(&ping).await {
                    break format!("writing: {e}");
                }
                (since, pinged) = (tokio::time::Instant::now(), true);
            }
            bytes = rx.recv() => {
                let Some(bytes) = bytes else { break "no longer used".into() };
                if let Err(e) = stream.write_all(&bytes).await {
                    break format!("writing: {e}");
                }
            }
            read = stream.read_buf(&mut buf) => {
                match read {
                    Ok(0) => break "closed by the server".into(),
                    Ok(_) => (since, pinged) = (tokio::time::Instant::now(), false),
                    Err(e) => break format!("reading: {e}"),
                }
                match decoder.decode_all(&buf, |v| heard(Some(v))) {
                    Ok(used) => drop(buf.drain(..used)),
                    Err(e) => break e.to_string(),
                }
            }
        }
    };
    tracing::debug!(why = %why, "subscription connection closed");
    heard(None);
}
