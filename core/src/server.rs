//! What a Redis server says of itself, and what of it can lose jobs: [`ServerInfo`], made
//! from `INFO server` and `CONFIG GET` answers (the adapter asks; the judgments are here);
//! and whether it answers at all: [`HealthCheck`].

use std::borrow::Cow;

use crate::scripts::Invocation;
use crate::value::Value;

/// A health check (`DataLayer::health` in the adapter): a write and a read back of a key
/// private to this check (a random token in its name, so that two processes checking at
/// once never wait on each other), deleted after; the write expires in 10 s should the
/// delete never come. All three go to the key's node, as one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    key: String,
    token: String,
}

impl HealthCheck {
    /// A check under `prefix`, its token made of `random`.
    #[must_use]
    pub fn new(prefix: &str, random: u64) -> Self {
        let token = format!("{random:016x}");
        Self {
            key: format!("{prefix}:health:{token}"),
            token,
        }
    }

    /// What to send: `SET key token PX 10000`, `GET key`, `DEL key`.
    #[must_use]
    pub fn invocations(&self) -> Vec<Invocation<'_>> {
        let b = |s: &str| Cow::Owned(s.as_bytes().to_vec());
        vec![
            Invocation::Plain(vec![
                b("SET"),
                b(&self.key),
                b(&self.token),
                b("PX"),
                b("10000"),
            ]),
            Invocation::Plain(vec![b("GET"), b(&self.key)]),
            Invocation::Plain(vec![b("DEL"), b(&self.key)]),
        ]
    }

    /// Whether the replies say the server is healthy: the read gave back what was written.
    ///
    /// # Errors
    /// What came back instead.
    pub fn judge(&self, replies: &[Value]) -> Result<(), String> {
        match replies.get(1) {
            Some(Value::Bulk(v)) if *v == self.token.as_bytes() => Ok(()),
            other => Err(format!("read back {other:?}")),
        }
    }
}

/// What Redis says of itself (`DataLayer::server_info` in the adapter).
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
    /// One server's, from its `INFO server` text and its `CONFIG GET` values of
    /// `maxmemory-policy`, `appendonly` and `save` (`None`: not told, as when `CONFIG` is
    /// renamed or disabled).
    #[must_use]
    pub fn of_server(
        info: &str,
        maxmemory_policy: Option<String>,
        appendonly: Option<&str>,
        save: Option<String>,
    ) -> Self {
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        Self {
            version,
            maxmemory_policy,
            appendonly: appendonly.map(|v| v == "yes"),
            save,
            in_memory: false,
            nodes: 1,
        }
    }

    /// The in-process backend's: nothing evicts, nothing persists.
    #[must_use]
    pub fn in_process() -> Self {
        Self {
            version: "in-process".into(),
            maxmemory_policy: Some("noeviction".into()),
            appendonly: Some(false),
            save: Some(String::new()),
            in_memory: true,
            nodes: 1,
        }
    }

    /// The servers of `self` and `other` as one (a cluster's primaries): each setting the
    /// riskiest of the two (the lower version, an evicting policy, no append-only file, no
    /// snapshots), the nodes counted together.
    #[must_use]
    pub fn riskiest(self, other: Self) -> Self {
        Self {
            version: lowest_version(self.version, other.version),
            maxmemory_policy: match (self.maxmemory_policy, other.maxmemory_policy) {
                (Some(a), _) if a != "noeviction" => Some(a),
                (_, Some(b)) if b != "noeviction" => Some(b),
                (a, b) => a.or(b),
            },
            appendonly: match (self.appendonly, other.appendonly) {
                (Some(a), Some(b)) => Some(a && b),
                (a, b) => a.or(b),
            },
            save: match (self.save, other.save) {
                (Some(a), _) if a.trim().is_empty() => Some(a),
                (_, Some(b)) if b.trim().is_empty() => Some(b),
                (a, b) => a.or(b),
            },
            in_memory: self.in_memory || other.in_memory,
            nodes: self.nodes + other.nodes,
        }
    }

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

/// The lower of two `x.y.z` versions (a part that is not a number counts as 0).
fn lowest_version(a: String, b: String) -> String {
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    if parse(&b) < parse(&a) { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(version: &str, policy: &str, aof: &str, save: &str) -> ServerInfo {
        let info = format!("# Server\r\nredis_git_sha1:0\r\nredis_version:{version}\r\n");
        ServerInfo::of_server(&info, Some(policy.into()), Some(aof), Some(save.into()))
    }

    #[test]
    fn one_server_is_read_from_its_info_and_config() {
        let s = server("7.0.15", "noeviction", "yes", "3600 1");
        assert_eq!(
            (s.version.as_str(), s.appendonly, s.nodes),
            ("7.0.15", Some(true), 1)
        );
        assert!(s.risks().is_empty(), "{:?}", s.risks());
        let unknown = ServerInfo::of_server("garbage\nno version here", None, None, None);
        assert_eq!(unknown.version, "unknown");
        assert!(unknown.risks().is_empty(), "nothing told, nothing judged");
    }

    #[test]
    fn each_risk_is_named() {
        let evicting = server("7.0.0", "allkeys-lru", "yes", "");
        assert!(evicting.risks()[0].contains("allkeys-lru"));
        let nothing = server("7.0.0", "noeviction", "no", "");
        assert_eq!(
            nothing.risks(),
            ["no persistence: a restart loses every job"]
        );
        let snapshots = server("7.0.0", "noeviction", "no", "3600 1");
        assert!(snapshots.risks()[0].starts_with("no append-only file"));
        assert!(ServerInfo::in_process().risks()[0].starts_with("no persistence"));
    }

    #[test]
    fn a_cluster_is_as_risky_as_its_riskiest_primary() {
        let safe = server("7.2.4", "noeviction", "yes", "3600 1");
        let old = server("7.0.15", "noeviction", "yes", "3600 1");
        let lru = server("7.2.4", "allkeys-lru", "no", "");
        let all = safe.clone().riskiest(old).riskiest(lru);
        assert_eq!(all.version, "7.0.15");
        assert_eq!(all.maxmemory_policy.as_deref(), Some("allkeys-lru"));
        assert_eq!(
            (all.appendonly, all.save.as_deref(), all.nodes),
            (Some(false), Some(""), 3)
        );
        assert_eq!(lowest_version("7.10.0".into(), "7.9.1".into()), "7.9.1");
        assert_eq!(safe.clone().riskiest(safe.clone()).risks(), safe.risks());
    }

    #[test]
    fn a_health_check_writes_reads_back_and_deletes_a_key_of_its_own() {
        let check = HealthCheck::new("dl", 0xab);
        let mut out = Vec::new();
        for i in check.invocations() {
            i.encode(&mut out);
        }
        let key = "$26\r\ndl:health:00000000000000ab\r\n";
        let expected = format!(
            "*5\r\n$3\r\nSET\r\n{key}$16\r\n00000000000000ab\r\n$2\r\nPX\r\n$5\r\n10000\r\n\
             *2\r\n$3\r\nGET\r\n{key}*2\r\n$3\r\nDEL\r\n{key}"
        );
        assert_eq!(String::from_utf8_lossy(&out), expected);
        let ok = Value::Status("OK".into());
        let read = |v: &[u8]| vec![ok.clone(), Value::Bulk(v.to_vec()), Value::Int(1)];
        assert_eq!(check.judge(&read(b"00000000000000ab")), Ok(()));
        assert!(
            check.judge(&read(b"00000000000000cd")).is_err(),
            "another check's token"
        );
        assert!(check.judge(&[ok, Value::Nil]).is_err());
        assert!(check.judge(&[]).is_err());
        assert_ne!(HealthCheck::new("dl", 0xcd), check);
    }
}
