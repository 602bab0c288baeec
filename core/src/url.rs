//! Redis URLs: where the servers are and how to log in, parsed and checked here, so that
//! the adapter only dials what this module read.
//!
//! - `redis://[user[:password]@]host[:port][,host[:port]...][/db]`: TCP (port 6379 by
//!   default); several hosts are the seeds of a cluster (or of one server, tried in turn).
//! - `rediss://...`: the same over TLS.
//! - `unix:///path/to/socket[?db=N&user=U&pass=P]` (or `redis+unix://`): a Unix socket.
//!
//! User and password are percent-decoded (`%40` for `@`). A fragment (`#...`) is refused:
//! some clients read `#insecure` as "do not verify the certificate", and a URL that means
//! something else to another tool is a trap. A host given as `[::1]` is the IPv6 address
//! `::1`.

use std::fmt;

use crate::cluster::NodeAddr;

/// How the server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP to each host.
    Tcp(Vec<NodeAddr>),
    /// TLS to each host (the host name is the certificate's name).
    Tls(Vec<NodeAddr>),
    /// A Unix socket at this path.
    Unix(String),
}

/// A parsed Redis URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// Where the servers are.
    pub transport: Transport,
    /// The ACL user, if any.
    pub username: Option<String>,
    /// The password, if any (never shown by `Debug`).
    pub password: Option<String>,
    /// The database (`SELECT`); 0 by default.
    pub db: i64,
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerUrl")
            .field("transport", &self.transport)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// No `scheme://`.
    #[error("not a Redis URL (no scheme://)")]
    NoScheme,
    /// A scheme other than `redis`, `rediss`, `unix`, `redis+unix`.
    #[error("unknown scheme {0:?} (redis://, rediss://, unix://)")]
    Scheme(String),
    /// The URL carries a fragment.
    #[error(
        "the Redis URL must not carry a fragment (`#insecure` would turn certificate checks off \
         in some clients)"
    )]
    Fragment,
    /// No host (or no socket path).
    #[error("no host in the URL")]
    NoHost,
    /// A port that is not a number from 1 to 65535.
    #[error("bad port {0:?}")]
    Port(String),
    /// A database that is not a non-negative integer.
    #[error("bad database {0:?}")]
    Db(String),
    /// A `%` not followed by two hex digits, or an escape that is not UTF-8.
    #[error("bad percent-escape in the user or password")]
    Escape,
}

impl ServerUrl {
    /// Parses `url` (see the module's documentation).
    ///
    /// # Errors
    /// What is wrong with it ([`UrlError`]); the error never quotes the password.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        if url.contains('#') {
            return Err(UrlError::Fragment);
        }
        let (scheme, rest) = url.split_once("://").ok_or(UrlError::NoScheme)?;
        match scheme.to_ascii_lowercase().as_str() {
            "redis" => Self::parse_tcp(rest, false),
            "rediss" => Self::parse_tcp(rest, true),
            "unix" | "redis+unix" => Self::parse_unix(rest),
            other => Err(UrlError::Scheme(other.to_owned())),
        }
    }

    fn parse_tcp(rest: &str, tls: bool) -> Result<Self, UrlError> {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (auth, hosts) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (username, password) = match auth {
            None => (None, None),
            Some(auth) => {
                let (user, pass) = match auth.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (auth, None),
                };
                let user = Some(decode(user)?).filter(|u| !u.is_empty());
                let pass = pass.map(decode).transpose()?;
                (user, pass)
            }
        };
        let mut addrs = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            addrs.push(host_port(host)?);
        }
        if addrs.is_empty() {
            return Err(UrlError::NoHost);
        }
        let path = tail.split('?').next().unwrap_or("");
        let db = match path.trim_start_matches('/') {
            "" => 0,
            db => parse_db(db)?,
        };
        Ok(Self {
            transport: if tls {
                Transport::Tls(addrs)
            } else {
                Transport::Tcp(addrs)
            },
            username,
            password,
            db,
        })
    }

    fn parse_unix(rest: &str) -> Result<Self, UrlError> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(UrlError::NoHost);
        }
        let mut url = Self {
            transport: Transport::Unix(path.to_owned()),
            username: None,
            password: None,
            db: 0,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "db" => url.db = parse_db(v)?,
                "user" => url.username = Some(decode(v)?).filter(|u| !u.is_empty()),
                "pass" => url.password = Some(decode(v)?),
                _ => {}
            }
        }
        Ok(url)
    }

    /// The hosts (none for a Unix socket).
    #[must_use]
    pub fn hosts(&self) -> &[NodeAddr] {
        match &self.transport {
            Transport::Tcp(h) | Transport::Tls(h) => h,
            Transport::Unix(_) => &[],
        }
    }

    /// Whether the connection is TLS.
    #[must_use]
    pub fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls(_))
    }

    /// A host the password would go to in the clear (plain TCP beyond loopback), if any:
    /// worth a warning.
    #[must_use]
    pub fn password_in_clear(&self) -> Option<&NodeAddr> {
        match (&self.transport, &self.password) {
            (Transport::Tcp(hosts), Some(_)) => hosts.iter().find(|h| !is_loopback(&h.host)),
            _ => None,
        }
    }
}

/// `localhost`, `::1`, or a dotted IPv4 address in 127.0.0.0/8 (parsed here: the core
/// touches nothing of the network's, `std::net` included).
fn is_loopback(host: &str) -> bool {
    let octets: Vec<Option<u8>> = host.split('.').map(|o| o.parse().ok()).collect();
    host == "localhost"
        || host == "::1"
        || (octets.len() == 4 && octets[0] == Some(127) && octets.iter().all(Option::is_some))
}

/// `host[:port]` or `[v6][:port]`; port 6379 by default.
fn host_port(s: &str) -> Result<NodeAddr, UrlError> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(UrlError::NoHost)?;
        (host, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    let port = match port {
        None => 6379,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| UrlError::Port(p.to_owned()))?,
    };
    Ok(NodeAddr {
        host: host.to_owned(),
        port,
    })
}

fn parse_db(s: &str) -> Result<i64, UrlError> {
    s.parse::<i64>()
        .ok()
        .filter(|d| *d >= 0)
        .ok_or_else(|| UrlError::Db(s.to_owned()))
}

/// Percent-decoding (`%XX`), as UTF-8.
fn decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or(UrlError::Escape)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::Escape)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Escape)
}

/// `url` without the password (and user) it may carry, for logs and messages:
/// `redis://user:secret@host:6379/0` → `redis://***@host:6379/0`; a Unix socket's
/// `pass=` too.
#[must_use]
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let redacted = match rest[..authority_end].rfind('@') {
        Some(at) if scheme.is_empty() => format!("***{}", &rest[at..]),
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    };
    match redacted.split_once('?') {
        Some((head, query)) if query.contains("pass=") => {
            let query: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some(("pass", _)) => "pass=***".to_owned(),
                    _ => p.to_owned(),
                })
                .collect();
            format!("{head}?{}", query.join("&"))
        }
        _ => redacted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(host: &str, port: u16) -> NodeAddr {
        NodeAddr {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn tcp_urls_parse() {
        let u = ServerUrl::parse("redis://127.0.0.1:6380").unwrap();
        assert_eq!(u.transport, Transport::Tcp(vec![addr("127.0.0.1", 6380)]));
        assert_eq!((u.username, u.password, u.db), (None, None, 0));

        let u =
            ServerUrl::parse("rediss://al%40ice:p%3Aw@db.example:7000/3?protocol=resp3").unwrap();
        assert_eq!(u.transport, Transport::Tls(vec![addr("db.example", 7000)]));
        assert_eq!(u.username.as_deref(), Some("al@ice"));
        assert_eq!(u.password.as_deref(), Some("p:w"));
        assert_eq!(u.db, 3);

        let u = ServerUrl::parse("redis://:secret@h").unwrap();
        assert_eq!(u.transport, Transport::Tcp(vec![addr("h", 6379)]));
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (None, Some("secret"))
        );
        assert!(!format!("{u:?}").contains("secret"));

        let u = ServerUrl::parse("redis://[::1]:7001,[::1],localhost:7003/").unwrap();
        assert_eq!(
            u.hosts(),
            [
                addr("::1", 7001),
                addr("::1", 6379),
                addr("localhost", 7003)
            ]
        );
        assert_eq!(u.password_in_clear(), None);
    }

    #[test]
    fn unix_urls_parse() {
        let u = ServerUrl::parse("unix:///tmp/r.sock?db=2&pass=x%20y&user=u").unwrap();
        assert_eq!(u.transport, Transport::Unix("/tmp/r.sock".into()));
        assert_eq!(u.db, 2);
        assert_eq!(u.password.as_deref(), Some("x y"));
        assert_eq!(u.username.as_deref(), Some("u"));
        assert!(u.hosts().is_empty());
        let u = ServerUrl::parse("redis+unix:///run/redis.sock").unwrap();
        assert_eq!(u.transport, Transport::Unix("/run/redis.sock".into()));
    }

    #[test]
    fn bad_urls_are_refused_with_their_reason() {
        let cases = [
            ("127.0.0.1:6379", UrlError::NoScheme),
            ("http://h", UrlError::Scheme("http".into())),
            ("rediss://h#insecure", UrlError::Fragment),
            ("redis://", UrlError::NoHost),
            ("redis://user:pw@/0", UrlError::NoHost),
            ("redis://h:0", UrlError::Port("0".into())),
            ("redis://h:99999", UrlError::Port("99999".into())),
            ("redis://h:x", UrlError::Port("x".into())),
            ("redis://h/x", UrlError::Db("x".into())),
            ("redis://h/-1", UrlError::Db("-1".into())),
            ("redis://u:%zz@h", UrlError::Escape),
            ("redis://u:%f@h", UrlError::Escape),
            ("redis://u:%ff@h", UrlError::Escape),
            ("redis://u:%+f@h", UrlError::Escape),
            ("unix://", UrlError::NoHost),
            ("unix:///s?db=a", UrlError::Db("a".into())),
            ("redis://[::1:6379", UrlError::NoHost),
        ];
        for (url, want) in cases {
            assert_eq!(ServerUrl::parse(url), Err(want), "{url}");
        }
    }

    #[test]
    fn passwords_in_the_clear_are_found() {
        let remote = ServerUrl::parse("redis://:pw@127.0.0.1:1,10.0.0.2:2").unwrap();
        assert_eq!(remote.password_in_clear(), Some(&addr("10.0.0.2", 2)));
        let tls = ServerUrl::parse("rediss://:pw@10.0.0.2").unwrap();
        assert_eq!(tls.password_in_clear(), None);
        let none = ServerUrl::parse("redis://10.0.0.2").unwrap();
        assert_eq!(none.password_in_clear(), None);
        for (host, loopback) in [
            ("127.0.0.1", true),
            ("127.1.2.3", true),
            ("localhost", true),
            ("::1", true),
            ("127.0.0", false),
            ("127.0.0.256", false),
            ("127.0.0.1.5", false),
            ("128.0.0.1", false),
            ("127.example", false),
        ] {
            assert_eq!(is_loopback(host), loopback, "{host}");
        }
    }

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(redact("rediss://:pw@h:1"), "rediss://***@h:1");
        assert_eq!(redact("redis://u:p@a:1,b:2/0"), "redis://***@a:1,b:2/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("u:p@h"), "***@h");
        assert_eq!(
            redact("redis://u:hunter2@h:1/2?x=@y"),
            "redis://***@h:1/2?x=@y"
        );
        assert_eq!(
            redact("unix:///s?db=1&pass=hunter2"),
            "unix:///s?db=1&pass=***"
        );
    }

    /// Any string parses or is refused: never a panic.
    #[test]
    fn any_string_parses_or_is_refused() {
        for s in [
            "redis://%",
            "redis://[",
            "redis://[]",
            "redis://@",
            "unix://?&=",
            "redis://é:1",
        ] {
            let _ = ServerUrl::parse(s);
            let _ = redact(s);
        }
    }
}
