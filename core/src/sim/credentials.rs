//! The credentials store's invocations on the model, as Redis runs them: the `cred_save`
//! and `cred_get` scripts of [`crate::scripts`], and the plain commands
//! [`crate::credentials`] sends (`DEL` of a store, `SCAN` of a purge), with keys that
//! expire on the model's clock.

use super::{Data, Sim};
use crate::scripts::{self, Arg, Invocation};
use crate::value::Value;

type Exec = Result<Value, String>;

impl Sim {
    /// Runs one invocation of the credentials store ([`crate::credentials::CredentialStore`]'s
    /// save, get and teardown, [`crate::credentials::scan`]) and returns Redis' reply. Also
    /// `PING`, `PTTL` and `EXISTS`. Anything else is an error reply: the queue's commands go
    /// through [`Sim::execute`].
    pub fn invoke(&mut self, invocation: &Invocation<'_>) -> Value {
        self.executed += 1;
        self.expire_due();
        run(self, invocation).unwrap_or_else(Value::Error)
    }
}

fn run(sim: &mut Sim, invocation: &Invocation<'_>) -> Exec {
    match invocation {
        Invocation::Script { script, keys, args } => {
            let [key] = keys.as_slice() else {
                return Err("ERR the credentials scripts take one key".into());
            };
            let key = text(key)?;
            if script.name == scripts::CRED_SAVE.name {
                save(sim, &key, args)
            } else if script.name == scripts::CRED_GET.name {
                get(sim, &key, args)
            } else {
                Err(format!(
                    "ERR the model runs script {} as a command",
                    script.name
                ))
            }
        }
        Invocation::Plain(args) => plain(sim, args),
        Invocation::Transaction(_) => Err("ERR the model runs transactions as commands".into()),
    }
}

fn text(arg: &[u8]) -> Result<String, String> {
    String::from_utf8(arg.to_vec()).map_err(|_| "ERR the model's keys are UTF-8".to_owned())
}

fn int(arg: Option<&Arg<'_>>) -> Result<i64, String> {
    arg.and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "ERR value is not an integer or out of range".to_owned())
}

/// HGET, reading through a key of another type as Redis would (`WRONGTYPE`).
fn hget(sim: &Sim, key: &str, field: &[u8]) -> Result<Option<Vec<u8>>, String> {
    Ok(sim.hash(key)?.and_then(|h| h.get(field).cloned()))
}

/// PEXPIRE with a positive ttl (a key that is not there stays so); 0: PERSIST.
pub(crate) fn slide(sim: &mut Sim, key: &str, ttl: i64) {
    if !sim.db.contains_key(key) {
        return;
    }
    match u64::try_from(ttl) {
        Ok(ttl) if ttl > 0 => {
            sim.expires
                .insert(key.to_owned(), sim.now_ms.saturating_add(ttl));
        }
        _ => {
            sim.expires.remove(key);
        }
    }
}

/// `cred_save`: ARGV ttl, n, n (verifier field, verifier) pairs, the credential's field and
/// envelope, stale fields.
fn save(sim: &mut Sim, key: &str, args: &[Arg<'_>]) -> Exec {
    let ttl = int(args.first())?;
    let n = usize::try_from(int(args.get(1))?).map_err(|_| "ERR bad verifier count")?;
    let pairs = args
        .get(2..2 + 2 * n)
        .ok_or("ERR wrong number of arguments for the verifiers")?;
    for pair in pairs.chunks_exact(2) {
        if let Some(current) = hget(sim, key, &pair[0])? {
            if current != pair[1].as_ref() {
                return Err(
                    "WRONGSECRET the credentials store was made with another secret".into(),
                );
            }
        }
    }
    let f = 2 + 2 * n;
    let (Some(vf), Some(vv), Some(cf), Some(cv)) =
        (args.get(2), args.get(3), args.get(f), args.get(f + 1))
    else {
        return Err("ERR wrong number of arguments for 'hset' command".into());
    };
    let hash = sim.hash_mut(key)?;
    hash.insert(vf.to_vec(), vv.to_vec());
    hash.insert(cf.to_vec(), cv.to_vec());
    for stale in args.get(f + 2..).unwrap_or_default() {
        hash.remove(stale.as_ref());
    }
    sim.drop_if_empty(key);
    slide(sim, key, ttl);
    Ok(Value::Int(1))
}

/// `cred_get`: ARGV ttl, then the fields; HMGET's reply.
fn get(sim: &mut Sim, key: &str, args: &[Arg<'_>]) -> Exec {
    let ttl = int(args.first())?;
    let fields = args.get(1..).unwrap_or_default();
    if fields.is_empty() {
        return Err("ERR wrong number of arguments for 'hmget' command".into());
    }
    let hash = sim.hash(key)?;
    let out = fields
        .iter()
        .map(|f| match hash.and_then(|h| h.get(f.as_ref())) {
            Some(v) => Value::Bulk(v.clone()),
            None => Value::Nil,
        })
        .collect();
    if ttl > 0 {
        slide(sim, key, ttl);
    }
    Ok(Value::Array(out))
}

fn plain(sim: &mut Sim, args: &[Arg<'_>]) -> Exec {
    let Some((name, rest)) = args.split_first() else {
        return Err("ERR empty command".into());
    };
    match name.to_ascii_uppercase().as_slice() {
        b"PING" => Ok(Value::Status("PONG".into())),
        b"DEL" | b"EXISTS" if rest.is_empty() => {
            Err("ERR wrong number of arguments for 'del' command".into())
        }
        b"DEL" => {
            let mut n = 0;
            for key in rest {
                if sim.remove(&text(key)?) {
                    n += 1;
                }
            }
            Ok(Value::Int(n))
        }
        b"EXISTS" => {
            let mut n = 0;
            for key in rest {
                n += i64::from(sim.db.contains_key(&text(key)?));
            }
            Ok(Value::Int(n))
        }
        b"PTTL" => match rest {
            [key] => Ok(Value::Int(sim.pttl(&text(key)?))),
            _ => Err("ERR wrong number of arguments for 'pttl' command".into()),
        },
        b"SCAN" => scan(sim, rest),
        _ => Err(format!(
            "ERR unknown command '{}' in the model",
            String::from_utf8_lossy(name)
        )),
    }
}

/// `SCAN cursor [MATCH pattern] [COUNT n]`: every matching key in one page (cursor 0), which
/// keeps SCAN's promise (each key present throughout is returned).
fn scan(sim: &Sim, args: &[Arg<'_>]) -> Exec {
    let Some((cursor, options)) = args.split_first() else {
        return Err("ERR wrong number of arguments for 'scan' command".into());
    };
    if !cursor.iter().all(u8::is_ascii_digit) || cursor.is_empty() {
        return Err("ERR invalid cursor".into());
    }
    let mut pattern: Option<&[u8]> = None;
    for option in options.chunks(2) {
        match option {
            [name, value] if name.eq_ignore_ascii_case(b"MATCH") => pattern = Some(value),
            [name, value] if name.eq_ignore_ascii_case(b"COUNT") => {
                if int(Some(value))? < 1 {
                    return Err("ERR syntax error".into());
                }
            }
            _ => return Err("ERR syntax error".into()),
        }
    }
    let mut keys: Vec<&String> = sim
        .db
        .keys()
        .filter(|k| pattern.is_none_or(|p| glob(p, k.as_bytes())))
        .collect();
    keys.sort_unstable();
    let keys = keys
        .into_iter()
        .map(|k| Value::Bulk(k.as_bytes().to_vec()))
        .collect();
    Ok(Value::Array(vec![
        Value::Bulk(b"0".to_vec()),
        Value::Array(keys),
    ]))
}

/// Redis' glob matching (`stringmatchlen`): `*`, `?`, `[...]` (with `^` and ranges) and
/// `\` escapes.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((b'[', rest)) => match text.split_first() {
            None => false,
            Some((c, text_rest)) => match class(rest, *c) {
                Some((matched, after)) => matched && glob(after, text_rest),
                None => false,
            },
        },
        Some((b'\\', rest)) if !rest.is_empty() => {
            text.first() == rest.first() && glob(&rest[1..], &text[1..])
        }
        Some((p, rest)) => text.first() == Some(p) && glob(rest, &text[1..]),
    }
}

/// A `[...]` class (after its `[`): whether `c` is in it, and the pattern after its `]`.
fn class(mut p: &[u8], c: u8) -> Option<(bool, &[u8])> {
    let negate = p.first() == Some(&b'^');
    if negate {
        p = &p[1..];
    }
    let mut matched = false;
    loop {
        match p {
            [] => return None,
            [b']', rest @ ..] => return Some((matched != negate, rest)),
            [b'\\', e, rest @ ..] => {
                matched |= *e == c;
                p = rest;
            }
            [lo, b'-', hi, rest @ ..] if *hi != b']' => {
                let (lo, hi) = if lo <= hi { (*lo, *hi) } else { (*hi, *lo) };
                matched |= (lo..=hi).contains(&c);
                p = rest;
            }
            [x, rest @ ..] => {
                matched |= *x == c;
                p = rest;
            }
        }
    }
}

impl Data {
    /// The Redis type name (`TYPE`): `stream`, `hash` or `zset`.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            Data::Stream(_) => "stream",
            Data::Hash(_) => "hash",
            Data::ZSet(_) => "zset",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_in_redis() {
        assert!(glob(b"dl:{s*}:creds", b"dl:{session-1}:creds"));
        assert!(!glob(b"dl:{s*}:creds", b"dl:{x}:creds"));
        assert!(glob(b"a\\*b", b"a*b"));
        assert!(!glob(b"a\\*b", b"axb"));
        assert!(glob(b"h?llo", b"hallo"));
        assert!(glob(b"h[ae]llo", b"hello"));
        assert!(!glob(b"h[^e]llo", b"hello"));
        assert!(glob(b"h[a-b]llo", b"hbllo"));
        assert!(glob(b"a\\[b", b"a[b"));
        assert!(!glob(b"[", b"["));
    }

    fn store(ttl_ms: u64) -> crate::credentials::CredentialStore {
        use crate::keys::{KeyId, SECRET_LEN, Secret, SecretRing};
        let ring = SecretRing::new(KeyId(1), Secret::from_bytes([1; SECRET_LEN]));
        let session = Secret::from_bytes([2; SECRET_LEN]);
        crate::credentials::CredentialStore::new(
            "dl",
            "s-1",
            &ring.credentials_root(),
            &session,
            crate::time::Duration::from_millis(ttl_ms),
        )
        .expect("a valid session")
    }

    #[test]
    fn credentials_slide_their_ttl_and_expire_on_the_model_clock() {
        let mut sim = Sim::new(crate::time::Instant::from_unix_ms(1_000));
        let s = store(500);
        let creds = serde_json::json!({ "password": "p" });
        let mut rng = crate::random::SeededRandom::new(1);
        let save = s.save("irc:a", &creds, &mut rng).expect("seals");
        s.save_reply(sim.invoke(&save)).expect("saved");
        assert_eq!(sim.pttl(s.redis_key()), 500);
        // A read at 1,400 slides the expiry to 1,900.
        sim.set_time(crate::time::Instant::from_unix_ms(1_400));
        let get = s.get("irc:a").expect("a key");
        assert_eq!(
            s.get_reply("irc:a", sim.invoke(&get), None).ok(),
            Some(creds)
        );
        assert_eq!(sim.pttl(s.redis_key()), 500);
        // Still there at its expiry time, gone after it.
        sim.set_time(crate::time::Instant::from_unix_ms(1_900));
        assert!(s.get_reply("irc:a", sim.invoke(&get), None).is_ok());
        sim.set_time(crate::time::Instant::from_unix_ms(2_401));
        assert!(matches!(
            s.get_reply("irc:a", sim.invoke(&get), None),
            Err(crate::credentials::CredentialsError::NotFound { .. })
        ));
        assert_eq!(sim.pttl(s.redis_key()), -2);
        assert!(sim.keys().is_empty());
    }

    #[test]
    fn teardown_and_scan_see_the_stores() {
        let mut sim = Sim::new(crate::time::Instant::from_unix_ms(1_000));
        let s = store(0);
        let mut rng = crate::random::SeededRandom::new(1);
        let save = s
            .save("irc:a", &serde_json::json!({ "p": 1 }), &mut rng)
            .expect("seals");
        s.save_reply(sim.invoke(&save)).expect("saved");
        assert_eq!(sim.pttl(s.redis_key()), -1);
        let pattern = crate::naming::credentials_pattern("dl", "s-").expect("a pattern");
        let page = sim.invoke(&crate::credentials::scan(&pattern, b"0", 10));
        let (cursor, keys) = crate::credentials::parse_scan(page).expect("a page");
        assert_eq!(
            (cursor, keys),
            (b"0".to_vec(), vec![s.redis_key().as_bytes().to_vec()])
        );
        assert_eq!(sim.invoke(&s.teardown()), Value::Int(1));
        assert_eq!(sim.invoke(&s.teardown()), Value::Int(0));
    }
}
