//! The Redis key layout: the only place key names are made.
//!
//! Every key of one queue shares the hash tag `{<queue>}`, so a multi-key step on one queue
//! is atomic and lands on one Redis Cluster slot; no command ever spans two queues.
//!
//! ```text
//! <prefix>:{<queue>}:jobs      stream of sealed jobs, consumer group "workers"
//! <prefix>:{<queue>}:ids       hash: job id -> state, for idempotent adds while a job lives
//! <prefix>:{<queue>}:delayed   zset: job id by due time (ms)
//! <prefix>:{<queue>}:payloads  hash: job id -> sealed job, for delayed jobs
//! <prefix>:{<queue>}:dead      stream of dead letters (sealed job + sealed reason)
//! <prefix>:{<queue>}:events:<producer>
//!                              stream of one producer's results and failures, trimmed by age
//! <prefix>:{<queue>}:producers zset: producer id -> the time (ms) it promised to be back by
//! <prefix>:{<queue>}:gone      zset: producers past their promise whose results are swept
//! <prefix>:{<queue>}:owners    hash: producer id -> the token of the instance that holds it
//! <prefix>:{<queue>}:workers   zset: live workers by the time they will be back
//! <prefix>:{<session>}:creds   hash of a session's sealed credentials
//! ```

/// The consumer group every worker of a queue reads through.
pub const GROUP: &str = "workers";

/// The longest queue or session name accepted (bytes).
pub const MAX_NAME_LEN: usize = 512;

/// Why a name cannot be used in a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Names must not be empty.
    #[error("a queue or session name must not be empty")]
    Empty,
    /// Braces would change the key's hash tag.
    #[error("name {0:?} contains '{{' or '}}', which would break the hash tag")]
    Brace(String),
    /// Longer than [`MAX_NAME_LEN`].
    #[error("name is {0} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    /// The key prefix is too long, or holds a brace (which would move the hash tag out of
    /// the queue's or session's name).
    #[error("key prefix {0:?} must be at most {MAX_NAME_LEN} bytes, without '{{' or '}}'")]
    Prefix(String),
    /// `#` is reserved for the tags of sharded queues ([`shard_tags`]).
    #[error("name {0:?} contains '#', which is reserved for the shards of a queue")]
    Hash(String),
    /// A queue has 1 to [`MAX_SHARDS`] shards.
    #[error("a queue has 1 to {MAX_SHARDS} shards, not {0}")]
    Shards(u16),
}

/// Checks a key prefix: at most [`MAX_NAME_LEN`] bytes, no braces (a `{` in the prefix
/// would make Redis Cluster hash on it instead of on the queue's name).
pub fn validate_prefix(prefix: &str) -> Result<(), NameError> {
    if prefix.len() > MAX_NAME_LEN || prefix.contains(['{', '}']) {
        return Err(NameError::Prefix(prefix.to_owned()));
    }
    Ok(())
}

/// Checks that `name` can sit inside a hash tag.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name.contains(['{', '}']) {
        return Err(NameError::Brace(name.to_owned()));
    }
    if name.contains('#') && parse_shard_tag(name).is_none() {
        return Err(NameError::Hash(name.to_owned()));
    }
    Ok(())
}

/// The most shards one queue may have ([`shard_tags`]).
pub const MAX_SHARDS: u16 = 256;

/// The hash tags of a queue of `shards` shards ([`MAX_SHARDS`] at most): each a complete
/// queue of its own (its keys are [`QueueKeys::new`] of the tag).
///
/// One shard is the queue itself, `queue` (the layout of an unsharded queue, so a queue
/// of one shard costs nothing more). For `n` > 1, shard `i` is `<queue>#<i>.<n>.<k>`, with
/// `k` the smallest integer from 0 such that the tag's hash slot lies in
/// `[i * 16384 / n, (i + 1) * 16384 / n)`: on a cluster whose slots are spread evenly (as
/// `redis-cli --cluster create` does), `n` shards over `n` primaries put one shard on
/// each. (Should no `k` below 1,000,000 land in the range, `k` is 0.) A pure function,
/// with vectors in FORMAT.md, so that any client finds the same keys. `#` is reserved:
/// a queue name holding it is refused unless it is exactly such a tag.
pub fn shard_tags(queue: &str, shards: u16) -> Result<Vec<String>, NameError> {
    if shards == 0 || shards > MAX_SHARDS {
        return Err(NameError::Shards(shards));
    }
    if queue.contains('#') {
        return Err(NameError::Hash(queue.to_owned()));
    }
    validate(queue)?;
    if shards == 1 {
        return Ok(vec![queue.to_owned()]);
    }
    let tags: Vec<String> = (0..shards).map(|i| shard_tag(queue, i, shards)).collect();
    // Each tag is exact and holds no brace: only its length can fail it.
    match tags.iter().map(String::len).max() {
        Some(len) if len > MAX_NAME_LEN => Err(NameError::TooLong(len)),
        _ => Ok(tags),
    }
}

/// Shard `i` of `n` (> 1) of `queue`: see [`shard_tags`].
fn shard_tag(queue: &str, i: u16, n: u16) -> String {
    let (lo, hi) = shard_range(i, n);
    (0..1_000_000u32)
        .map(|k| format!("{queue}#{i}.{n}.{k}"))
        .find(|tag| (lo..hi).contains(&(crc16_xmodem(tag.as_bytes()) % 16384)))
        .unwrap_or_else(|| format!("{queue}#{i}.{n}.0"))
}

/// The slots shard `i` of `n` aims for.
fn shard_range(i: u16, n: u16) -> (u16, u16) {
    let at = |i: u16| u16::try_from(u32::from(i) * 16384 / u32::from(n)).unwrap_or(16384);
    (at(i), at(i + 1))
}

/// `(queue, i, n)` of a shard tag `<queue>#<i>.<n>.<k>`, if `name` is exactly the tag
/// [`shard_tags`] gives shard `i` of `n` of `queue`.
#[must_use]
pub fn parse_shard_tag(name: &str) -> Option<(&str, u16, u16)> {
    let (queue, rest) = name.split_once('#')?;
    if queue.is_empty() || queue.contains(['{', '}']) {
        return None;
    }
    let mut parts = rest.split('.');
    let i: u16 = parts.next()?.parse().ok()?;
    let n: u16 = parts.next()?.parse().ok()?;
    let k = parts.next()?;
    if parts.next().is_some() || !(2..=MAX_SHARDS).contains(&n) || i >= n || k.is_empty() {
        return None;
    }
    // Cheap checks first; then the one tag this shard has.
    let (lo, hi) = shard_range(i, n);
    let slot = crc16_xmodem(name.as_bytes()) % 16384;
    if !(lo..hi).contains(&slot) && k != "0" {
        return None;
    }
    (shard_tag(queue, i, n) == name).then_some((queue, i, n))
}

/// The shard of a queue of `shards` shards that job `id` belongs to: CRC16/XMODEM of the
/// id's bytes, mod `shards` (0 for one shard). A pure function of the id, so that a resend
/// or a re-add of the id meets its marker in the same shard.
#[must_use]
pub fn shard_of(id: &str, shards: u16) -> usize {
    if shards <= 1 {
        return 0;
    }
    usize::from(crc16_xmodem(id.as_bytes()) % shards)
}

/// The key names of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// The queue's name.
    pub queue: String,
    /// The stem of every key, `<prefix>:{<queue>}`: the scope its envelopes are sealed for
    /// (neither part holds a brace, so the stem names one prefix and one queue).
    pub scope: String,
    /// The work stream.
    pub jobs: String,
    /// Job ids of living jobs (idempotent adds).
    pub ids: String,
    /// Delayed jobs by due time.
    pub delayed: String,
    /// Sealed jobs of delayed entries.
    pub payloads: String,
    /// Dead letters.
    pub dead: String,
    /// The stem of the producers' events streams: producer `p` reads `<events>:<p>`
    /// ([`QueueKeys::events_of`]).
    pub events: String,
    /// The queue's producers, each with the time (ms) by which it promised to refresh its
    /// registration: a settle writes an outcome only for a registered producer.
    pub producers: String,
    /// Producers past their promise, whose events streams (and the markers of the jobs whose
    /// ends they hold) the queue's upkeep sweeps.
    pub gone: String,
    /// Which instance holds each producer id (its token): a replacement under the same id
    /// takes it over, and the instance it replaced learns so at its next acknowledgement.
    pub owners: String,
    /// The queue's live workers, each with the time by which it will be back (a sorted set:
    /// it spreads the queue's upkeep over them, see [`crate::scripts::RECLAIM`]).
    pub workers: String,
    /// The queue's pause, held in Redis (a hash, `at` = when it was paused, ms): while it
    /// exists, adds are refused and no worker starts a job
    /// ([`crate::command::CommandKind::SetPaused`]).
    pub paused: String,
    /// The outcome log, kept only while an operator tails it (`datalayer events tail`): the
    /// settle scripts append each outcome (job, kind, attempt, producer; nothing sealed)
    /// while it exists; it expires shortly after the last tailer left
    /// ([`crate::command::CommandKind::TailLog`]).
    pub log: String,
    /// The doorbell channel of the work stream (sharded pub/sub, in the queue's slot): on a
    /// cluster, idle workers wait on it ([`crate::cluster`]). Not a key.
    pub bell_jobs: String,
    /// The doorbell channel of the producers' events streams. Not a key.
    pub bell_events: String,
}

impl QueueKeys {
    /// The keys of `queue` under `prefix` (default `dl`).
    pub fn new(prefix: &str, queue: &str) -> Result<Self, NameError> {
        validate_prefix(prefix)?;
        validate(queue)?;
        let key = |suffix: &str| format!("{prefix}:{{{queue}}}:{suffix}");
        Ok(Self {
            queue: queue.to_owned(),
            scope: format!("{prefix}:{{{queue}}}"),
            jobs: key("jobs"),
            ids: key("ids"),
            delayed: key("delayed"),
            payloads: key("payloads"),
            dead: key("dead"),
            events: key("events"),
            producers: key("producers"),
            gone: key("gone"),
            owners: key("owners"),
            workers: key("workers"),
            paused: key("paused"),
            log: key("log"),
            bell_jobs: key("bell:jobs"),
            bell_events: key("bell:events"),
        })
    }

    /// The events stream of producer `producer`.
    #[must_use]
    pub fn events_of(&self, producer: &str) -> String {
        format!("{}:{producer}", self.events)
    }

    /// Every key of the queue of fixed name (what `shutdown` deletes, with the events
    /// stream of every producer in `producers` and `gone`).
    #[must_use]
    pub fn all(&self) -> [&str; 11] {
        [
            &self.jobs,
            &self.ids,
            &self.delayed,
            &self.payloads,
            &self.dead,
            &self.workers,
            &self.owners,
            &self.producers,
            &self.gone,
            &self.paused,
            &self.log,
        ]
    }
}

/// The longest producer id accepted (bytes).
pub const MAX_PRODUCER_LEN: usize = 64;

/// Why a producer id cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "producer id {0:?} must be 1 to {MAX_PRODUCER_LEN} bytes of ASCII letters, digits, '-', \
     '_' or '.', and not \"w\""
)]
pub struct ProducerIdError(pub String);

/// Checks a producer id: 1 to [`MAX_PRODUCER_LEN`] ASCII letters, digits, `-`, `_` or `.`,
/// and not `w` (the marker of jobs whose producer reads no events).
pub fn validate_producer(id: &str) -> Result<(), ProducerIdError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_PRODUCER_LEN
        && id != "w"
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ProducerIdError(id.chars().take(80).collect()))
    }
}

/// One producer of a queue: its id and its events stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerKeys {
    /// The producer's id (also the id marker of the jobs it adds).
    pub id: String,
    /// Its events stream, `<prefix>:{<queue>}:events:<id>`.
    pub events: String,
}

impl ProducerKeys {
    /// The keys of producer `id` of the queue `keys`.
    pub fn new(keys: &QueueKeys, id: &str) -> Result<Self, ProducerIdError> {
        validate_producer(id)?;
        Ok(Self {
            id: id.to_owned(),
            events: keys.events_of(id),
        })
    }
}

/// The credentials hash of `session` under `prefix`.
pub fn credentials_key(prefix: &str, session: &str) -> Result<String, NameError> {
    validate_prefix(prefix)?;
    validate(session)?;
    Ok(format!("{prefix}:{{{session}}}:creds"))
}

/// `s` with Redis' glob metacharacters (`*`, `?`, `[`, `]`, `\`) escaped by a backslash, so
/// that a `MATCH` pattern built from it matches `s` literally.
#[must_use]
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `SCAN MATCH` pattern of every credentials store under `prefix` whose session starts
/// with `session_prefix` (which must be a valid, non-empty name: purging every session of
/// every server takes an explicit prefix per server).
pub fn credentials_pattern(prefix: &str, session_prefix: &str) -> Result<String, NameError> {
    validate(session_prefix)?;
    Ok(format!(
        "{}:{{{}*}}:creds",
        glob_escape(prefix),
        glob_escape(session_prefix)
    ))
}

/// The `SCAN MATCH` pattern of every credentials store under `prefix`, whatever its session.
#[must_use]
pub fn all_credentials_pattern(prefix: &str) -> String {
    format!("{}:{{*}}:creds", glob_escape(prefix))
}

/// The `SCAN MATCH` pattern of every key of every queue (and credentials store) under
/// `prefix`; [`queue_of_key`] tells the queues' keys from the rest.
#[must_use]
pub fn queues_pattern(prefix: &str) -> String {
    format!("{}:{{*}}:*", glob_escape(prefix))
}

/// The queue whose key `key` is, under `prefix` (a key of fixed name: jobs, ids, delayed,
/// payloads, dead, workers, producers, gone, owners), if it is one.
#[must_use]
pub fn queue_of_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(":{")?;
    let (name, suffix) = rest.split_once("}:")?;
    const SUFFIXES: [&str; 9] = [
        "jobs",
        "ids",
        "delayed",
        "payloads",
        "dead",
        "workers",
        "producers",
        "gone",
        "owners",
    ];
    (SUFFIXES.contains(&suffix) && validate(name).is_ok()).then_some(name)
}

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of its hash tag, mod 16384).
#[must_use]
pub fn hash_slot(key: &[u8]) -> u16 {
    let tagged = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The consumer name of a process's workers (`<pid>-<8 hex digits of random>`): one per
/// process, shared by its workers of different queues so that one blocking read serves
/// them all, and different in each process (a restarted process with the same pid too).
#[must_use]
pub fn process_consumer(pid: u32, random: u64) -> String {
    format!("{pid}-{:08x}", random as u32)
}

/// The consumer name of the `n`-th worker (from 1) of one queue in a process whose
/// consumer name is `process`: `process` itself for the first, `process-n` after it (two
/// workers of one queue need two names, or they would take each other's jobs as their own).
#[must_use]
pub fn nth_consumer(process: &str, n: u32) -> String {
    if n <= 1 {
        process.to_owned()
    } else {
        format!("{process}-{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout() {
        let k = QueueKeys::new("dl", "sockethub:p1:data-layer:queue:irc").unwrap();
        assert_eq!(k.jobs, "dl:{sockethub:p1:data-layer:queue:irc}:jobs");
        assert_eq!(k.events, "dl:{sockethub:p1:data-layer:queue:irc}:events");
        assert_eq!(
            queue_of_key("dl", &k.dead),
            Some("sockethub:p1:data-layer:queue:irc")
        );
        assert_eq!(queue_of_key("dl", "dl:{s1}:creds"), None);
        assert_eq!(queue_of_key("dl", &k.events_of("a1")), None);
        assert_eq!(queue_of_key("x", &k.jobs), None);
        let p = ProducerKeys::new(&k, "a1").unwrap();
        assert_eq!(p.events, "dl:{sockethub:p1:data-layer:queue:irc}:events:a1");
        for bad in ["", "w", "a:b", "a}b", "é", &"x".repeat(65)] {
            assert!(ProducerKeys::new(&k, bad).is_err(), "{bad:?}");
        }
        assert_eq!(credentials_key("x", "s1").unwrap(), "x:{s1}:creds");
        assert_eq!(QueueKeys::new("dl", ""), Err(NameError::Empty));
        assert!(matches!(
            QueueKeys::new("dl", "a}b"),
            Err(NameError::Brace(_))
        ));
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            QueueKeys::new("dl", &long),
            Err(NameError::TooLong(MAX_NAME_LEN + 1))
        );
    }

    #[test]
    fn prefixes_cannot_move_the_hash_tag() {
        // "x{y}:{q}:jobs" would hash on "y": every queue of the prefix on one slot, and
        // queue names no longer a hash tag of their own.
        for bad in ["x{y}", "{", "a}"] {
            assert_eq!(
                QueueKeys::new(bad, "q"),
                Err(NameError::Prefix(bad.to_owned()))
            );
            assert_eq!(
                credentials_key(bad, "s"),
                Err(NameError::Prefix(bad.to_owned()))
            );
        }
        assert!(QueueKeys::new(&"p".repeat(MAX_NAME_LEN + 1), "q").is_err());
        assert!(QueueKeys::new("sockethub:dl", "q").is_ok());
    }

    #[test]
    fn slots_match_redis() {
        // The examples of Redis' CLUSTER KEYSLOT documentation, and CRC16's check value.
        assert_eq!(hash_slot(b"somekey"), 11058);
        assert_eq!(hash_slot(b"foo{hash_tag}"), 2515);
        assert_eq!(hash_slot(b"bar{hash_tag}"), 2515);
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        // The cluster specification's hash tag rules.
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(
            hash_slot(b"foo{}{bar}"),
            crc16_xmodem(b"foo{}{bar}") % 16384
        );
        assert_eq!(hash_slot(b"foo{{bar}}zap"), hash_slot(b"{bar"));
        assert_eq!(hash_slot(b"foo{bar}{zap}"), hash_slot(b"bar"));
    }

    /// Redis' `stringmatchlen` for the subset of glob it implements (`*`, `?`, `[...]` with
    /// ranges and `^`, `\` escapes), to check patterns against the names they must match.
    fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
        match pattern.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| glob_match(rest, &s[i..])),
            Some((b'?', rest)) => !s.is_empty() && glob_match(rest, &s[1..]),
            Some((b'\\', rest)) if !rest.is_empty() => {
                s.first() == Some(&rest[0]) && glob_match(&rest[1..], &s[1..])
            }
            Some((b'[', rest)) => {
                let Some(&c) = s.first() else { return false };
                let (negate, mut p) = match rest.first() {
                    Some(b'^') => (true, &rest[1..]),
                    _ => (false, rest),
                };
                let mut hit = false;
                loop {
                    match p {
                        [] => break,
                        [b']', tail @ ..] => {
                            p = tail;
                            break;
                        }
                        [b'\\', x, tail @ ..] => {
                            hit |= *x == c;
                            p = tail;
                        }
                        [a, b'-', z, tail @ ..] if *z != b']' => {
                            let (lo, hi) = if a <= z { (*a, *z) } else { (*z, *a) };
                            hit |= (lo..=hi).contains(&c);
                            p = tail;
                        }
                        [x, tail @ ..] => {
                            hit |= *x == c;
                            p = tail;
                        }
                    }
                }
                hit != negate && glob_match(p, &s[1..])
            }
            Some((x, rest)) => s.first() == Some(x) && glob_match(rest, &s[1..]),
        }
    }

    #[test]
    fn purge_pattern_escapes_glob_characters() {
        let p = credentials_pattern("dl", "a*b?c[d]e\\f").unwrap();
        assert_eq!(p, "dl:{a\\*b\\?c\\[d\\]e\\\\f*}:creds");
        let key = |s: &str| credentials_key("dl", s).unwrap();
        assert!(glob_match(p.as_bytes(), key("a*b?c[d]e\\f").as_bytes()));
        assert!(glob_match(p.as_bytes(), key("a*b?c[d]e\\f:42").as_bytes()));
        // What the unescaped pattern would also have matched.
        assert!(!glob_match(p.as_bytes(), key("aXXbYcde\\f:42").as_bytes()));
        assert!(glob_match(
            b"dl:{a*b?c[d]e\\f*}:creds",
            key("aXXbYcdef:42").as_bytes()
        ));
        assert_eq!(credentials_pattern("dl", ""), Err(NameError::Empty));
        let all = all_credentials_pattern("d*l");
        assert_eq!(all, "d\\*l:{*}:creds");
        assert!(glob_match(
            all.as_bytes(),
            credentials_key("d*l", "any:1").unwrap().as_bytes()
        ));
        assert!(!glob_match(
            all.as_bytes(),
            credentials_key("dxl", "any:1").unwrap().as_bytes()
        ));
    }

    #[test]
    fn shards_land_in_their_ranges_and_only_exact_tags_pass() {
        assert_eq!(shard_tags("q", 1).unwrap(), vec!["q".to_owned()]);
        assert_eq!(shard_tags("q", 0), Err(NameError::Shards(0)));
        assert_eq!(shard_tags("q", MAX_SHARDS + 1), Err(NameError::Shards(257)));
        assert!(matches!(shard_tags("a#b", 2), Err(NameError::Hash(_))));
        assert!(matches!(validate("a#b"), Err(NameError::Hash(_))));
        for n in [2u16, 3, 7, 64] {
            let tags = shard_tags("sockethub:irc", n).unwrap();
            assert_eq!(tags.len(), usize::from(n));
            for (i, tag) in tags.iter().enumerate() {
                let i = u16::try_from(i).unwrap();
                let (lo, hi) = shard_range(i, n);
                let slot = hash_slot(QueueKeys::new("dl", tag).unwrap().jobs.as_bytes());
                assert!((lo..hi).contains(&slot), "{tag}: {slot} not in {lo}..{hi}");
                assert_eq!(parse_shard_tag(tag), Some(("sockethub:irc", i, n)));
            }
        }
        // A tag of the right shape but another salt, or a shard out of range, is not one.
        let tag = &shard_tags("q", 3).unwrap()[1];
        let (stem, k) = tag.rsplit_once('.').unwrap();
        let other = format!("{stem}.{}", k.parse::<u32>().unwrap() + 1);
        assert_eq!(parse_shard_tag(&other), None);
        assert!(QueueKeys::new("dl", &other).is_err());
        for bad in [
            "q#3.3.0",
            "q#0.1.0",
            "q#0.3",
            "q#0.3.1.1",
            "#0.3.1",
            "q#x.3.1",
            "q#0.3.",
        ] {
            assert_eq!(parse_shard_tag(bad), None, "{bad}");
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shard_vectors_of_format_md() {
        assert_eq!(
            shard_tags("irc", 3).unwrap(),
            ["irc#0.3.0", "irc#1.3.0", "irc#2.3.3"]
        );
        assert_eq!(shard_tags("hot", 2).unwrap(), ["hot#0.2.0", "hot#1.2.0"]);
        let slots: Vec<u16> = [
            "irc#0.3.0",
            "irc#1.3.0",
            "irc#2.3.3",
            "hot#0.2.0",
            "hot#1.2.0",
        ]
        .iter()
        .map(|t| hash_slot(format!("{{{t}}}").as_bytes()))
        .collect();
        assert_eq!(slots, [918, 10695, 14198, 6762, 12347]);
        assert_eq!(shard_of("job-1", 3), 2);
        assert_eq!(shard_of("1764806400000-00000000deadbeef", 3), 1);
    }

    #[test]
    fn a_job_goes_to_one_shard_and_ids_spread() {
        assert_eq!(shard_of("anything", 1), 0);
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            let id = format!("job-{i}");
            let s = shard_of(&id, 4);
            assert_eq!(s, shard_of(&id, 4));
            counts[s] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    proptest! {
        #[test]
        fn purge_pattern_matches_exactly_the_sessions_with_the_prefix(
            prefix in "[a-z*?\\[\\]\\\\:]{0,6}",
            session_prefix in "[ab*?\\[\\]\\\\^-]{1,6}",
            session in "[ab*?\\[\\]\\\\^-]{1,10}",
        ) {
            let pattern = credentials_pattern(&prefix, &session_prefix).unwrap();
            let key = credentials_key(&prefix, &session).unwrap();
            prop_assert_eq!(
                glob_match(pattern.as_bytes(), key.as_bytes()),
                session.starts_with(&session_prefix),
                "pattern {} key {}", pattern, key
            );
        }

        #[test]
        fn every_key_of_a_queue_shares_one_slot(queue in "[^{}#]{1,40}", prefix in "[a-z:]{0,8}") {
            let k = QueueKeys::new(&prefix, &queue).unwrap();
            let slot = hash_slot(k.jobs.as_bytes());
            for key in k.all() {
                prop_assert_eq!(hash_slot(key.as_bytes()), slot);
            }
        }
    }

    #[test]
    fn consumer_names_differ_per_process_and_per_worker_of_a_queue() {
        let p = process_consumer(4242, 0x1234_5678_9abc_def0);
        assert_eq!(p, "4242-9abcdef0");
        assert_ne!(p, process_consumer(4242, 1), "a restart with the same pid");
        assert_eq!(nth_consumer(&p, 1), p);
        assert_eq!(nth_consumer(&p, 2), "4242-9abcdef0-2");
        assert_ne!(nth_consumer(&p, 2), nth_consumer(&p, 3));
    }
}
