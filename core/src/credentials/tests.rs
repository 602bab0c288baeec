use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::keys::SecretRing;
use crate::random::SeededRandom;
use crate::sim::{Data, Sim};

fn secret(b: u8) -> Secret {
    Secret::from_bytes([b; SECRET_LEN])
}

fn store(session: &str, session_secret: u8) -> CredentialStore {
    let ring = SecretRing::new(KeyId(1), secret(1));
    CredentialStore::new(
        "dl",
        session,
        &ring.credentials_root(),
        &secret(session_secret),
        DEFAULT_TTL,
    )
    .expect("valid session")
}

/// Redis: the model, which runs the credential scripts as their Lua does (the differential
/// test checks it against redis-server).
#[derive(Default)]
struct Hashes(Sim);

impl Hashes {
    fn run(&mut self, inv: &Invocation<'_>) -> Value {
        self.0.invoke(inv)
    }

    fn values_mut(&mut self, key: &str) -> &mut crate::sim::Hash {
        match self.0.get_mut(key) {
            Some(Data::Hash(h)) => h,
            other => panic!("no store at {key}: {other:?}"),
        }
    }
}

fn save(
    redis: &mut Hashes,
    s: &CredentialStore,
    key: &str,
    creds: &Json,
) -> Result<(), CredentialsError> {
    let inv = s.save(key, creds, &mut SeededRandom::new(7))?;
    s.save_reply(redis.run(&inv))
}

fn get(
    redis: &mut Hashes,
    s: &CredentialStore,
    key: &str,
    hash: Option<&str>,
) -> Result<Json, CredentialsError> {
    let inv = s.get(key)?;
    s.get_reply(key, redis.run(&inv), hash)
}

#[test]
fn the_original_checklist() {
    let mut redis = Hashes::default();
    let s = store("session-a", 9);
    let key = "irc:nick@irc.example";
    assert_eq!(
        get(&mut redis, &s, key, None),
        Err(CredentialsError::NotFound { key: key.into() })
    );
    assert_eq!(
        get(&mut redis, &s, key, None).unwrap_err().to_string(),
        format!("credentials not found for {key}")
    );
    let creds = json!({"nick": "n", "password": "hunter2", "server": "irc.example"});
    save(&mut redis, &s, key, &creds).unwrap();
    let h = credentials_hash(&creds);
    assert_eq!(get(&mut redis, &s, key, Some(&h)).unwrap(), creds);
    assert_eq!(get(&mut redis, &s, key, None).unwrap(), creds);
    assert_eq!(
        get(
            &mut redis,
            &s,
            key,
            Some(&credentials_hash(&json!({"nick": "x"})))
        ),
        Err(CredentialsError::Mismatch { key: key.into() })
    );
    // Update and re-hash.
    let updated = json!({"nick": "n2", "password": "hunter3"});
    save(&mut redis, &s, key, &updated).unwrap();
    assert_eq!(
        get(&mut redis, &s, key, Some(&h)),
        Err(CredentialsError::Mismatch { key: key.into() })
    );
    let h2 = credentials_hash(&updated);
    assert_eq!(get(&mut redis, &s, key, Some(&h2)).unwrap(), updated);
    // The hash compares without regard to case, and a truncated or extended one fails.
    let upper = h2.to_ascii_uppercase();
    assert_eq!(get(&mut redis, &s, key, Some(&upper)).unwrap(), updated);
    for wrong in [&h2[..63], &format!("{h2}0")[..], ""] {
        assert_eq!(
            get(&mut redis, &s, key, Some(wrong)),
            Err(CredentialsError::Mismatch { key: key.into() })
        );
    }
    // An object without a password matches its hash.
    let nopass = json!({"nick": "n3"});
    save(&mut redis, &s, "xmpp:n3", &nopass).unwrap();
    assert_eq!(
        get(&mut redis, &s, "xmpp:n3", Some(&credentials_hash(&nopass))).unwrap(),
        nopass
    );
    // The same actor on two platforms: two entries.
    assert_eq!(get(&mut redis, &s, key, None).unwrap(), updated);
    // Arrays, empty objects, null and scalars are refused.
    for bad in [
        json!([]),
        json!([1]),
        json!({}),
        json!(null),
        json!("s"),
        json!(3),
    ] {
        assert_eq!(
            save(&mut redis, &s, key, &bad),
            Err(CredentialsError::Invalid { key: key.into() }),
            "{bad}"
        );
    }
    assert_eq!(
        save(&mut redis, &s, "", &creds),
        Err(CredentialsError::EmptyKey)
    );
    assert!(matches!(s.get(""), Err(CredentialsError::EmptyKey)));
}

#[test]
fn invalid_objects_found_in_a_store_are_a_mismatch() {
    // Only an older writer (or a bug) could have stored these: seal them by hand.
    let mut redis = Hashes::default();
    let s = store("session-a", 9);
    save(&mut redis, &s, "irc:a", &json!({"nick": "a"})).unwrap();
    let field = s.field(0, "irc:a").unwrap();
    for bad in [&b"{}"[..], b"[]", b"null", b"not json"] {
        let sealed = s
            .sealer
            .seal_bytes(&s.context("irc:a"), bad, &mut SeededRandom::new(1))
            .unwrap();
        redis
            .values_mut(s.redis_key())
            .insert(field.clone().into_bytes(), sealed);
        assert_eq!(
            get(&mut redis, &s, "irc:a", None),
            Err(CredentialsError::Mismatch {
                key: "irc:a".into()
            }),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn another_session_cannot_read_and_a_wrong_secret_is_told_apart() {
    let mut redis = Hashes::default();
    let a = store("session-a", 9);
    save(&mut redis, &a, "irc:a", &json!({"password": "p"})).unwrap();
    // Another session has its own store: nothing there.
    let b = store("session-b", 9);
    assert!(matches!(
        get(&mut redis, &b, "irc:a", None),
        Err(CredentialsError::NotFound { .. })
    ));
    // The right session with the wrong secret.
    let wrong = store("session-a", 10);
    assert_eq!(
        get(&mut redis, &wrong, "irc:a", None),
        Err(CredentialsError::WrongSecret {
            session: "session-a".into()
        })
    );
    assert_eq!(
        save(&mut redis, &wrong, "irc:a", &json!({"password": "evil"})),
        Err(CredentialsError::WrongSecret {
            session: "session-a".into()
        })
    );
    assert_eq!(
        get(&mut redis, &a, "irc:a", None).unwrap(),
        json!({"password": "p"})
    );
    // A wrong server secret is a wrong secret too.
    let ring = SecretRing::new(KeyId(1), secret(2));
    let other_server = CredentialStore::new(
        "dl",
        "session-a",
        &ring.credentials_root(),
        &secret(9),
        crate::time::Duration::ZERO,
    )
    .unwrap();
    assert!(matches!(
        get(&mut redis, &other_server, "irc:a", None),
        Err(CredentialsError::WrongSecret { .. })
    ));
}

#[test]
fn values_moved_between_fields_or_stores_do_not_open() {
    let mut redis = Hashes::default();
    let a = store("session-a", 9);
    save(&mut redis, &a, "irc:a", &json!({"password": "pa"})).unwrap();
    save(&mut redis, &a, "irc:b", &json!({"password": "pb"})).unwrap();
    let fa = a.field(0, "irc:a").unwrap().into_bytes();
    let fb = a.field(0, "irc:b").unwrap().into_bytes();
    let h = redis.values_mut(a.redis_key());
    let va = h[&fa].clone();
    h.insert(fb.clone(), va.clone());
    assert!(matches!(
        get(&mut redis, &a, "irc:b", None),
        Err(CredentialsError::Corrupt {
            source: EnvelopeError::Decrypt,
            ..
        })
    ));
    // Into another session's store, at the field of the same key, with the same secrets.
    let b = store("session-b", 9);
    save(&mut redis, &b, "irc:a", &json!({"password": "other"})).unwrap();
    let fba = b.field(0, "irc:a").unwrap().into_bytes();
    redis.values_mut(b.redis_key()).insert(fba, va);
    assert!(matches!(
        get(&mut redis, &b, "irc:a", None),
        Err(CredentialsError::Corrupt {
            source: EnvelopeError::Decrypt,
            ..
        })
    ));
    // Garbage is an error too, never a panic.
    redis
        .values_mut(a.redis_key())
        .insert(fa, b"garbage".to_vec());
    assert!(matches!(
        get(&mut redis, &a, "irc:a", None),
        Err(CredentialsError::Corrupt { .. })
    ));
}

#[test]
fn rotation_reads_old_fields_and_save_moves_them() {
    let mut redis = Hashes::default();
    let mut ring = SecretRing::new(KeyId(1), secret(1));
    let old = CredentialStore::new(
        "dl",
        "s",
        &ring.credentials_root(),
        &secret(9),
        crate::time::Duration::ZERO,
    )
    .unwrap();
    save(&mut redis, &old, "irc:a", &json!({"password": "p"})).unwrap();
    ring.insert(KeyId(2), secret(2));
    ring.set_active(KeyId(2)).unwrap();
    let new = CredentialStore::new(
        "dl",
        "s",
        &ring.credentials_root(),
        &secret(9),
        crate::time::Duration::ZERO,
    )
    .unwrap();
    assert_eq!(
        get(&mut redis, &new, "irc:a", None).unwrap(),
        json!({"password": "p"})
    );
    save(&mut redis, &new, "irc:a", &json!({"password": "q"})).unwrap();
    let fields: Vec<String> = redis
        .values_mut(new.redis_key())
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(!fields.iter().any(|f| f.starts_with("c:1:")), "{fields:?}");
    assert!(fields.iter().any(|f| f.starts_with("c:2:")), "{fields:?}");
    ring.remove(KeyId(1)).unwrap();
    let newest = CredentialStore::new(
        "dl",
        "s",
        &ring.credentials_root(),
        &secret(9),
        crate::time::Duration::ZERO,
    )
    .unwrap();
    assert_eq!(
        get(&mut redis, &newest, "irc:a", None).unwrap(),
        json!({"password": "q"})
    );
}

#[test]
fn field_names_are_keyed_and_hide_the_actor() {
    let s = store("session-a", 9);
    let f = s.field(0, "irc:alice").unwrap();
    assert!(f.starts_with("c:1:") && f.len() == 4 + 64, "{f}");
    assert!(!f.contains("alice"));
    let plain_sha = crate::hex::encode(&Sha256::digest(b"irc:alice"));
    assert!(
        !f.contains(&plain_sha),
        "a plain hash of the actor id can be guessed"
    );
    assert_ne!(f, store("session-a", 10).field(0, "irc:alice").unwrap());
    assert_ne!(f, store("session-b", 9).field(0, "irc:alice").unwrap());
    assert!(!format!("{s:?}").contains("Secret"));
}

#[test]
fn replies_of_the_wrong_shape_are_errors() {
    let s = store("session-a", 9);
    for reply in [
        Value::Nil,
        Value::Int(3),
        Value::Array(vec![]),
        Value::Array(vec![Value::Int(1), Value::Nil]),
        Value::Array(vec![Value::Nil, Value::Int(1)]),
        Value::Error("ERR boom".into()),
    ] {
        assert!(
            matches!(
                s.get_reply("k", reply.clone(), None),
                Err(CredentialsError::Reply(_))
            ),
            "{reply:?}"
        );
    }
    assert!(matches!(
        s.save_reply(Value::Nil),
        Err(CredentialsError::Reply(_))
    ));
    assert!(matches!(
        s.save_reply(Value::Error("WRONGSECRET x".into())),
        Err(CredentialsError::WrongSecret { .. })
    ));
    assert!(
        parse_scan(Value::Array(vec![
            Value::Bulk(b"0".to_vec()),
            Value::Array(vec![])
        ]))
        .is_ok()
    );
    for reply in [
        Value::Nil,
        Value::Array(vec![Value::Bulk(b"x".to_vec()), Value::Array(vec![])]),
        Value::Array(vec![Value::Bulk(b"0".to_vec())]),
        Value::Array(vec![Value::Bulk(b"0".to_vec()), Value::Int(1)]),
        Value::Array(vec![
            Value::Bulk(b"0".to_vec()),
            Value::Array(vec![Value::Nil]),
        ]),
    ] {
        assert!(parse_scan(reply.clone()).is_err(), "{reply:?}");
    }
    // A purge's DELs: 1 deleted, 0 gone already; anything else is an error.
    assert_eq!(
        parse_deleted(vec![Value::Int(1), Value::Int(0), Value::Int(1)]),
        Ok(2)
    );
    assert_eq!(parse_deleted(vec![]), Ok(0));
    for bad in [Value::Error("MOVED 1 h:1".into()), Value::Nil] {
        assert!(matches!(
            parse_deleted(vec![Value::Int(1), bad]),
            Err(CredentialsError::Reply(_))
        ));
    }
}

// RFC 8785, appendix B: IEEE-754 doubles and their JCS (ECMAScript) forms.
#[test]
fn numbers_as_ecmascript_writes_them() {
    let cases: &[(u64, &str)] = &[
        (0x0000_0000_0000_0000, "0"),
        (0x8000_0000_0000_0000, "0"),
        (0x0000_0000_0000_0001, "5e-324"),
        (0x8000_0000_0000_0001, "-5e-324"),
        (0x7fef_ffff_ffff_ffff, "1.7976931348623157e+308"),
        (0xffef_ffff_ffff_ffff, "-1.7976931348623157e+308"),
        (0x4340_0000_0000_0000, "9007199254740992"),
        (0xc340_0000_0000_0000, "-9007199254740992"),
        (0x4430_0000_0000_0000, "295147905179352830000"),
        (0x44b5_2d02_c7e1_4af5, "9.999999999999997e+22"),
        (0x44b5_2d02_c7e1_4af6, "1e+23"),
        (0x44b5_2d02_c7e1_4af7, "1.0000000000000001e+23"),
        (0x444b_1ae4_d6e2_ef4e, "999999999999999700000"),
        (0x444b_1ae4_d6e2_ef4f, "999999999999999900000"),
        (0x444b_1ae4_d6e2_ef50, "1e+21"),
        (0x3eb0_c6f7_a0b5_ed8c, "9.999999999999997e-7"),
        (0x3eb0_c6f7_a0b5_ed8d, "0.000001"),
        (0x41b3_de43_5555_5553, "333333333.3333332"),
        (0x41b3_de43_5555_5554, "333333333.33333325"),
        (0x41b3_de43_5555_5555, "333333333.3333333"),
        (0x41b3_de43_5555_5556, "333333333.3333334"),
        (0x41b3_de43_5555_5557, "333333333.33333343"),
        (0xbecb_f647_612f_3696, "-0.0000033333333333333333"),
        (0x4314_3ff3_c1cb_0959, "1424953923781206.2"),
    ];
    for &(bits, want) in cases {
        let mut got = String::new();
        canonical::write_double(&mut got, f64::from_bits(bits));
        assert_eq!(got, want, "{bits:#018x}");
    }
}

#[test]
fn rfc8785_example() {
    let input = r#"{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"#;
    let v: Json = serde_json::from_str(input).unwrap();
    assert_eq!(
        canonical_json(&v),
        r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
    );
    // Members sort by UTF-16 code units, not by code points (RFC 8785, 3.2.3).
    let v = json!({"\u{e000}": 1, "\u{1f600}": 2, "a": 3, "\r": 4, "1": 5, "ö": 6});
    assert_eq!(
        canonical_json(&v),
        "{\"\\r\":4,\"1\":5,\"a\":3,\"ö\":6,\"\u{1f600}\":2,\"\u{e000}\":1}"
    );
}

fn arb_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Json::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

fn reorder(v: &Json) -> Json {
    match v {
        Json::Object(m) => {
            let mut members: Vec<_> = m.iter().map(|(k, v)| (k.clone(), reorder(v))).collect();
            members.reverse();
            Json::Object(members.into_iter().collect())
        }
        Json::Array(items) => Json::Array(items.iter().map(reorder).collect()),
        other => other.clone(),
    }
}

proptest! {
    #[test]
    fn canonical_json_parses_back_and_is_a_fixed_point(v in arb_json()) {
        let c = canonical_json(&v);
        let back: Json = serde_json::from_str(&c).unwrap();
        // Integers beyond 2^53 become doubles; the canonical form of the parsed value is the
        // same string (idempotence), and the hash ignores member order.
        prop_assert_eq!(canonical_json(&back), c.clone());
        prop_assert_eq!(credentials_hash(&reorder(&v)), credentials_hash(&v));
        prop_assert!(!c.chars().any(char::is_control) || v.to_string().chars().any(|ch| ch.is_control() && u32::from(ch) >= 0x20));
    }

    #[test]
    fn doubles_round_trip_through_their_canonical_form(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let mut s = String::new();
        canonical::write_double(&mut s, f);
        let back: f64 = s.parse().unwrap();
        prop_assert!(back == f, "{} -> {} -> {}", f, s, back);
    }

    #[test]
    fn sealing_round_trips_and_binds_session_and_key(
        creds in prop::collection::btree_map("[a-z]{1,8}", ".{0,40}", 1..6),
        key in "[a-z]{1,6}:[a-z@.]{1,12}",
        other in "[a-z]{1,6}:[a-z@.]{1,12}",
        seed: u64,
    ) {
        let creds = Json::Object(creds.into_iter().map(|(k, v)| (k, Json::String(v))).collect());
        let s = store("session-a", 9);
        let mut redis = Hashes::default();
        let inv = s.save(&key, &creds, &mut SeededRandom::new(seed)).unwrap();
        prop_assert_eq!(s.save_reply(redis.run(&inv)), Ok(()));
        let h = credentials_hash(&creds);
        prop_assert_eq!(get(&mut redis, &s, &key, Some(&h)).unwrap(), creds.clone());
        // Nothing of the plaintext in what Redis holds.
        for (field, value) in redis.values_mut(s.redis_key()).iter() {
            for v in creds.as_object().unwrap().values() {
                let text = v.as_str().unwrap();
                if text.len() >= 6 {
                    prop_assert!(!contains(value, text.as_bytes()));
                    prop_assert!(!contains(field, text.as_bytes()));
                }
            }
            prop_assert!(!contains(field, key.as_bytes()));
        }
        if other != key {
            prop_assert!(
                matches!(get(&mut redis, &s, &other, None), Err(CredentialsError::NotFound { .. })),
                "another key"
            );
            // Bound to its key: moved to another key's field, it does not open.
            let sealed = redis.values_mut(s.redis_key())[s.field(0, &key).unwrap().as_bytes()].clone();
            redis.values_mut(s.redis_key()).insert(s.field(0, &other).unwrap().into_bytes(), sealed.clone());
            prop_assert!(
                matches!(get(&mut redis, &s, &other, None), Err(CredentialsError::Corrupt { .. })),
                "moved to another key"
            );
            // Bound to its session: in another session's store, at the same key's field.
            let b = store("session-b", 9);
            let inv = b.save(&key, &creds, &mut SeededRandom::new(seed)).unwrap();
            prop_assert_eq!(b.save_reply(redis.run(&inv)), Ok(()));
            redis.values_mut(b.redis_key()).insert(b.field(0, &key).unwrap().into_bytes(), sealed);
            prop_assert!(
                matches!(get(&mut redis, &b, &key, None), Err(CredentialsError::Corrupt { .. })),
                "moved to another session"
            );
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<i64>().prop_map(Value::Int),
        prop::collection::vec(any::<u8>(), 0..80).prop_map(Value::Bulk),
        "[A-Z]{0,12}".prop_map(Value::Status),
        "[A-Z ]{0,20}".prop_map(Value::Error),
    ];
    leaf.prop_recursive(2, 16, 5, |inner| {
        prop::collection::vec(inner, 0..5).prop_map(Value::Array)
    })
}

proptest! {
    /// Whatever Redis answers, a reply is decoded into a value or a typed error.
    #[test]
    fn any_reply_is_an_answer_or_a_typed_error(reply in arb_value(), hash in proptest::option::of("[0-9a-f]{64}")) {
        let s = store("session-a", 9);
        let _ = s.get_reply("irc:a", reply.clone(), hash.as_deref());
        let _ = s.save_reply(reply.clone());
        let _ = parse_scan(reply);
    }
}

#[test]
fn envelopes_do_not_tell_a_passwords_length() {
    let s = store("session-a", 9);
    // The security review's lengths: 7, 8 and 28 characters gave 73, 74 and 94 bytes.
    let lengths: Vec<usize> = [7, 8, 28, 100]
        .iter()
        .map(|n| {
            let creds = json!({ "nick": "n", "password": "p".repeat(*n), "server": "irc.x" });
            let inv = s.save("irc:n", &creds, &mut SeededRandom::new(1)).unwrap();
            let Invocation::Script { args, .. } = inv else {
                panic!("a script")
            };
            args.last().map_or(0, |a| a.len())
        })
        .collect();
    assert!(lengths.iter().all(|l| *l == lengths[0]), "{lengths:?}");
    // And the padded value still reads back, hash and all.
    let mut redis = Hashes::default();
    let creds = json!({ "nick": "n", "password": "hunter2" });
    save(&mut redis, &s, "irc:n", &creds).unwrap();
    let h = credentials_hash(&creds);
    assert_eq!(get(&mut redis, &s, "irc:n", Some(&h)).unwrap(), creds);
    // Past the minimum, buckets of 128 bytes.
    assert_eq!(padded(&[b'{'; 300]).len(), 384);
    assert_eq!(padded(b"{}").len(), PAD_MIN);
}
