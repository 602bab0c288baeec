//! Unit tests and properties of the envelope.

use proptest::prelude::*;

use super::*;
use crate::job::{JobId, JobRecord};
use crate::keys::{Key, KeyId, Keyring, Secret, SecretRing};
use crate::random::SeededRandom;

fn sealer() -> Sealer {
    Sealer::new(Keyring::new(Key::from_bytes(KeyId(7), &[7; 32])))
}

fn ctx(item: &[u8]) -> Context<'_> {
    Context::new(Purpose::Job, "q", item)
}

#[test]
fn header_layout() {
    let s = sealer();
    let sealed = s
        .seal_bytes_with_nonce(&ctx(b"x"), b"abc", [9; NONCE_LEN])
        .unwrap();
    assert_eq!(&sealed[..2], b"DL");
    assert_eq!(sealed[2], VERSION);
    assert_eq!(sealed[3], 0);
    assert_eq!(&sealed[4..8], &7u32.to_le_bytes());
    assert_eq!(&sealed[8..20], &[9; 12]);
    assert_eq!(sealed.len(), MIN_LEN + 3);
}

#[test]
fn compression_is_off_by_default_and_when_on_compresses_only_when_it_pays() {
    let mut rng = SeededRandom::new(1);
    let big = vec![b'a'; 10_000];
    // Off by default: lengths would tell the content (a CRIME-style oracle).
    let sealed = sealer().seal_bytes(&ctx(b"x"), &big, &mut rng).unwrap();
    assert_eq!(sealed[3], 0);
    assert_eq!(sealed.len(), MIN_LEN + big.len());
    let s = sealer().with_options(SealOptions::default().compression(Compression::Above(1024)));
    let sealed = s.seal_bytes(&ctx(b"x"), &big, &mut rng).unwrap();
    assert_eq!(sealed[3], FLAG_COMPRESSED);
    assert!(sealed.len() < 200, "{}", sealed.len());
    assert_eq!(s.open_bytes(&ctx(b"x"), &sealed).unwrap(), big);

    // Random bytes do not shrink: stored plain even above the threshold.
    let mut noise = vec![0u8; 10_000];
    rng.fill_bytes(&mut noise);
    let sealed = s.seal_bytes(&ctx(b"x"), &noise, &mut rng).unwrap();
    assert_eq!(sealed[3], 0);
    assert_eq!(sealed.len(), MIN_LEN + noise.len());

    // At or below the threshold: never compressed.
    let sealed = s.seal_bytes(&ctx(b"x"), &big[..1024], &mut rng).unwrap();
    assert_eq!(sealed[3], 0);

    let never = s.with_options(SealOptions::default().compression(Compression::Never));
    let sealed = never.seal_bytes(&ctx(b"x"), &big, &mut rng).unwrap();
    assert_eq!(sealed[3], 0);
}

#[test]
fn typed_errors_for_malformed_headers() {
    let s = sealer();
    let good = s
        .seal_bytes_with_nonce(&ctx(b"x"), b"abc", [1; 12])
        .unwrap();
    let c = ctx(b"x");
    assert_eq!(
        s.open_bytes(&c, b""),
        Err(EnvelopeError::Truncated {
            len: 0,
            min: MIN_LEN
        })
    );
    assert_eq!(
        s.open_bytes(&c, &good[..MIN_LEN - 1]),
        Err(EnvelopeError::Truncated {
            len: MIN_LEN - 1,
            min: MIN_LEN
        })
    );
    assert_eq!(s.open_bytes(&c, b"XL\x01"), Err(EnvelopeError::BadMagic));
    assert_eq!(
        s.open_bytes(&c, b"{\"json\":1}"),
        Err(EnvelopeError::BadMagic)
    );
    for version in [0, 1, 3, 0xff] {
        let mut other = good.clone();
        other[2] = version;
        assert_eq!(
            s.open_bytes(&c, &other),
            Err(EnvelopeError::UnsupportedVersion(version))
        );
    }
    let mut flags = good.clone();
    flags[3] = 0x80;
    assert_eq!(
        s.open_bytes(&c, &flags),
        Err(EnvelopeError::UnknownFlags(0x80))
    );
    let mut kid = good.clone();
    kid[4] = 8;
    assert_eq!(
        s.open_bytes(&c, &kid),
        Err(EnvelopeError::UnknownKeyId(KeyId(8)))
    );
    let mut body = good.clone();
    body[HEADER_LEN] ^= 1;
    assert_eq!(s.open_bytes(&c, &body), Err(EnvelopeError::Decrypt));
    assert_eq!(s.open_bytes(&c, &good).unwrap(), b"abc");
}

#[test]
fn huge_claimed_length_does_not_allocate() {
    // A validly sealed envelope whose compressed body claims 4 GiB: authentication passes
    // (we hold the key), and the claim is refused before allocation.
    let s = sealer();
    let mut body = u32::MAX.to_le_bytes().to_vec();
    body.extend_from_slice(&[0x1f, b'a', 1, 0, 0xff, 0xff, 0xff]);
    let mut forged = s.seal_bytes_with_nonce(&ctx(b"x"), &body, [3; 12]).unwrap();
    // Re-seal with the compressed flag set in the header (flag is authenticated).
    forged[3] = FLAG_COMPRESSED;
    let header: [u8; HEADER_LEN] = forged[..HEADER_LEN].try_into().unwrap();
    let aad = ctx(b"x").aad(&header);
    let key = s.keys.active().cipher().clone();
    let mut ct = body.clone();
    let tag = key
        .encrypt_in_place_detached(Nonce::from_slice(&[3; 12]), &aad, &mut ct)
        .unwrap();
    forged.truncate(HEADER_LEN);
    forged.extend_from_slice(&ct);
    forged.extend_from_slice(&tag);
    assert_eq!(forged.len(), 20 + 11 + 16);
    assert_eq!(
        s.open_bytes(&ctx(b"x"), &forged),
        Err(EnvelopeError::TooLarge {
            len: u32::MAX as usize,
            max: 16 << 20
        })
    );
    // Within the limit but beyond what 7 bytes of lz4 can expand to.
    let tight = s
        .clone()
        .with_limits(OpenLimits::new(1 << 30, u32::MAX as usize));
    assert!(matches!(
        tight.open_bytes(&ctx(b"x"), &forged),
        Err(EnvelopeError::Decompress(_))
    ));
}

#[test]
fn too_large_inputs_are_refused() {
    let s = sealer().with_limits(OpenLimits::new(100, 50));
    let mut rng = SeededRandom::new(3);
    assert_eq!(
        s.seal_bytes(&ctx(b"x"), &[0; 51], &mut rng),
        Err(EnvelopeError::TooLarge { len: 51, max: 50 })
    );
    assert_eq!(
        s.open_bytes(&ctx(b"x"), &[0; 101]),
        Err(EnvelopeError::TooLarge { len: 101, max: 100 })
    );
}

#[test]
fn typed_decode_errors() {
    let s = sealer();
    let mut rng = SeededRandom::new(4);
    let sealed = s.seal_bytes(&ctx(b"x"), b"\x05ab", &mut rng).unwrap();
    assert!(matches!(
        s.open::<JobRecord>(&ctx(b"x"), &sealed),
        Err(EnvelopeError::Decode(_))
    ));
    // Trailing bytes after a valid record are an error, not silently ignored.
    let sealed = s.seal_bytes(&ctx(b"x"), &[1, 0], &mut rng).unwrap();
    assert!(matches!(
        s.open::<u8>(&ctx(b"x"), &sealed),
        Err(EnvelopeError::Decode(m)) if m.contains("trailing")
    ));
}

#[test]
fn contexts_do_not_collide() {
    // Length prefixes: ("ab", "c") and ("a", "bc") are different contexts.
    let h = [0u8; HEADER_LEN];
    let a = Context::new(Purpose::Job, "ab", b"c").aad(&h);
    let b = Context::new(Purpose::Job, "a", b"bc").aad(&h);
    assert_ne!(a, b);
    let s = sealer();
    let mut rng = SeededRandom::new(5);
    let sealed = s
        .seal_bytes(&Context::new(Purpose::Job, "ab", b"c"), b"z", &mut rng)
        .unwrap();
    for other in [
        Context::new(Purpose::Job, "a", b"bc"),
        Context::new(Purpose::Result, "ab", b"c"),
        Context::new(Purpose::Job, "ab", b"d"),
    ] {
        assert_eq!(s.open_bytes(&other, &sealed), Err(EnvelopeError::Decrypt));
    }
}

#[test]
fn rotation() {
    let mut rng = SeededRandom::new(6);
    let mut ring = SecretRing::new(KeyId(1), Secret::generate(&mut rng));
    let old = Sealer::new(ring.queue_keyring("q"));
    let sealed_old = old.seal_bytes(&ctx(b"x"), b"old", &mut rng).unwrap();

    ring.insert(KeyId(2), Secret::generate(&mut rng));
    ring.set_active(KeyId(2)).unwrap();
    let new = Sealer::new(ring.queue_keyring("q"));
    let sealed_new = new.seal_bytes(&ctx(b"x"), b"new", &mut rng).unwrap();
    assert_eq!(&sealed_new[4..8], &2u32.to_le_bytes());
    // The new ring opens both; the old one does not know key 2.
    assert_eq!(new.open_bytes(&ctx(b"x"), &sealed_old).unwrap(), b"old");
    assert_eq!(new.open_bytes(&ctx(b"x"), &sealed_new).unwrap(), b"new");
    assert_eq!(
        old.open_bytes(&ctx(b"x"), &sealed_new),
        Err(EnvelopeError::UnknownKeyId(KeyId(2)))
    );
    // Retiring key 1: its envelopes give a clear UnknownKeyId.
    ring.remove(KeyId(1)).unwrap();
    let retired = Sealer::new(ring.queue_keyring("q"));
    assert_eq!(
        retired.open_bytes(&ctx(b"x"), &sealed_old),
        Err(EnvelopeError::UnknownKeyId(KeyId(1)))
    );
    // Another queue's keyring from the same secrets does not open this queue's bytes.
    let other = Sealer::new(ring.queue_keyring("q2"));
    assert_eq!(
        other.open_bytes(&ctx(b"x"), &sealed_new),
        Err(EnvelopeError::Decrypt)
    );
}

#[test]
fn credentials_need_the_session_secret() {
    let mut rng = SeededRandom::new(8);
    let ring = SecretRing::new(KeyId(1), Secret::generate(&mut rng)).credentials_root();
    let (s1, s2) = (Secret::generate(&mut rng), Secret::generate(&mut rng));
    let c = Context::new(Purpose::Credential, "session-a", b"irc:nick");
    let a = Sealer::new(ring.credentials_keyring("session-a", &s1))
        .with_options(SealOptions::default().compression(Compression::Never));
    let sealed = a
        .seal_bytes(&c, b"{\"password\":\"hunter2\"}", &mut rng)
        .unwrap();
    let wrong = Sealer::new(ring.credentials_keyring("session-a", &s2));
    assert_eq!(wrong.open_bytes(&c, &sealed), Err(EnvelopeError::Decrypt));
    let other_session = Sealer::new(ring.credentials_keyring("session-b", &s1));
    let cb = Context::new(Purpose::Credential, "session-b", b"irc:nick");
    assert_eq!(
        other_session.open_bytes(&cb, &sealed),
        Err(EnvelopeError::Decrypt)
    );
}

fn any_job() -> impl Strategy<Value = JobRecord> {
    (
        ".{0,20}",
        "\\PC{0,40}",
        ".{0,20}",
        prop_oneof![
            // Mostly small, some large and compressible, some large and random.
            prop::collection::vec(any::<u8>(), 0..2048),
            (0usize..(1 << 20), any::<u8>()).prop_map(|(n, b)| vec![b; n]),
            prop::collection::vec(any::<u8>(), 0..(1 << 20)).no_shrink(),
        ],
        any::<u32>(),
        any::<u64>(),
        any::<[u8; 16]>(),
    )
        .prop_map(
            |(id, title, session_id, payload, attempt, created_at_ms, instance)| JobRecord {
                id: JobId(id),
                title,
                session_id,
                payload,
                attempt,
                created_at_ms,
                instance: crate::job::Instance(instance),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip_records(
        record in any_job(),
        compress in any::<bool>(),
        seed in any::<u64>(),
        trace in prop::option::of((any::<[u8; 16]>(), any::<[u8; 8]>(), any::<u8>(), "[ -~]{0,40}")),
    ) {
        let opts = SealOptions::default().compression(if compress {
            Compression::Above(64)
        } else {
            Compression::Never
        });
        let s = sealer().with_options(opts);
        let c = ctx(record.id.0.as_bytes());
        let trace = trace.map(|(t, sp, flags, state)| TraceContext {
            trace_id: t, span_id: sp, flags, state,
        }).filter(TraceContext::is_valid);
        let sealed = s
            .seal_traced(&c, &record, trace.as_ref(), &mut SeededRandom::new(seed))
            .unwrap();
        prop_assert_eq!(sealed[3] & FLAG_TRACE != 0, trace.is_some());
        if !compress {
            prop_assert_eq!(sealed[3] & FLAG_COMPRESSED, 0);
        }
        prop_assert_eq!(s.open_traced::<JobRecord>(&c, &sealed).unwrap(), (record.clone(), trace));
        // A reader that does not want the context gets the record alone.
        prop_assert_eq!(s.open::<JobRecord>(&c, &sealed).unwrap(), record);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bit_flip_is_an_error(
        plain in prop::collection::vec(any::<u8>(), 0..3000),
        compressible in any::<bool>(),
        bit in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let plain = if compressible { plain.iter().map(|b| b & 3).collect() } else { plain };
        let s = sealer();
        let sealed = s.seal_bytes(&ctx(b"i"), &plain, &mut SeededRandom::new(seed)).unwrap();
        let mut bad = sealed.clone();
        let i = bit.index(bad.len() * 8);
        bad[i / 8] ^= 1 << (i % 8);
        prop_assert!(s.open_bytes(&ctx(b"i"), &bad).is_err());
        prop_assert_eq!(s.open_bytes(&ctx(b"i"), &sealed).unwrap(), plain);
    }

    #[test]
    fn truncation_and_extension_are_errors(
        plain in prop::collection::vec(any::<u8>(), 0..3000),
        cut in any::<prop::sample::Index>(),
        extra in prop::collection::vec(any::<u8>(), 1..64),
        seed in any::<u64>(),
    ) {
        let s = sealer();
        let sealed = s.seal_bytes(&ctx(b"i"), &plain, &mut SeededRandom::new(seed)).unwrap();
        let short = &sealed[..cut.index(sealed.len())];
        prop_assert!(s.open_bytes(&ctx(b"i"), short).is_err());
        let mut long = sealed.clone();
        long.extend_from_slice(&extra);
        prop_assert!(s.open_bytes(&ctx(b"i"), &long).is_err());
    }

    #[test]
    fn changed_context_is_an_error(
        plain in prop::collection::vec(any::<u8>(), 0..256),
        scope in ".{0,12}",
        item in prop::collection::vec(any::<u8>(), 0..12),
        other_scope in ".{0,12}",
        other_item in prop::collection::vec(any::<u8>(), 0..12),
        seed in any::<u64>(),
    ) {
        prop_assume!(scope != other_scope || item != other_item);
        let s = sealer();
        let here = Context::new(Purpose::Job, &scope, &item);
        let there = Context::new(Purpose::Job, &other_scope, &other_item);
        let sealed = s.seal_bytes(&here, &plain, &mut SeededRandom::new(seed)).unwrap();
        prop_assert_eq!(s.open_bytes(&there, &sealed), Err(EnvelopeError::Decrypt));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let s = sealer();
        let _ = s.open_bytes(&ctx(b"i"), &bytes);
        // With a valid-looking header, the input reaches the AEAD.
        let mut framed = b"DL\x02\x00\x07\x00\x00\x00".to_vec();
        framed.extend_from_slice(&bytes);
        prop_assert!(s.open::<JobRecord>(&ctx(b"i"), &framed).is_err());
    }
}

/// FORMAT.md's version 1 `job-plain` vector (before outcomes were bound to their instance):
/// v2 refuses it by its version byte, before any key is looked up.
#[test]
fn version_1_envelopes_are_refused() {
    let hex = "444c010001000000000102030405060708090a0ba02dad9528f72cb7b1d3860fe3af9b036d28\
               44030ad7f4272de0ff84f3b2801578410a956a4b9dbceec99789d57ed444d737ab4f4cffbbb3\
               1f7dae4ded4dc9c2";
    let v1: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let s = sealer();
    assert_eq!(
        s.open_bytes(&ctx(b"job-1"), &v1),
        Err(EnvelopeError::UnsupportedVersion(1))
    );
}

fn trace() -> TraceContext {
    TraceContext {
        trace_id: [0x11; 16],
        span_id: [0x22; 8],
        flags: 1,
        state: "k=v".into(),
    }
}

#[test]
fn trace_trailers_round_trip_and_cannot_be_stripped() {
    let s = sealer();
    let c = ctx(b"x");
    let t = trace();
    let sealed = s
        .seal_bytes_traced_with_nonce(&c, b"result", Some(&t), [3; 12])
        .unwrap();
    assert_eq!(sealed[3], FLAG_TRACE);
    assert_eq!(
        s.open_bytes_traced(&c, &sealed).unwrap(),
        (b"result".to_vec(), Some(t.clone()))
    );
    assert_eq!(s.open_bytes(&c, &sealed).unwrap(), b"result");
    // The flag is in the AAD: clearing it (to pass the trailer off as the body) or setting
    // it on an untraced envelope fails authentication.
    let mut stripped = sealed.clone();
    stripped[3] = 0;
    assert_eq!(s.open_bytes(&c, &stripped), Err(EnvelopeError::Decrypt));
    let plain = s.seal_bytes_with_nonce(&c, b"result", [3; 12]).unwrap();
    let mut forged = plain.clone();
    forged[3] = FLAG_TRACE;
    assert_eq!(s.open_bytes(&c, &forged), Err(EnvelopeError::Decrypt));
    // Compressed and traced: the trailer is inside the compressed plaintext.
    let z = s.with_options(SealOptions::default().compression(Compression::Above(16)));
    let big = vec![b'z'; 4096];
    let sealed = z
        .seal_bytes_traced(&c, &big, Some(&t), &mut SeededRandom::new(1))
        .unwrap();
    assert_eq!(sealed[3], FLAG_TRACE | FLAG_COMPRESSED);
    assert_eq!(z.open_bytes_traced(&c, &sealed).unwrap(), (big, Some(t)));
}

#[test]
fn a_traced_envelope_with_a_bad_trailer_is_a_decode_error() {
    // Only a holder of the key can write one: seal a body whose "trailer" is garbage by
    // setting the flag through the private path.
    let s = sealer();
    let c = ctx(b"x");
    let mut body = vec![0u8; HEADER_LEN];
    body.extend_from_slice(b"abc\x05\x00");
    let sealed = s.finish(&c, body, [4; 12], true).unwrap();
    assert!(matches!(
        s.open_bytes_traced(&c, &sealed),
        Err(EnvelopeError::Decode(_))
    ));
    // An invalid context (all-zero ids) does not seal.
    let zero = TraceContext {
        trace_id: [0; 16],
        ..trace()
    };
    assert!(
        s.seal_bytes_traced(&c, b"", Some(&zero), &mut SeededRandom::new(1))
            .is_err()
    );
}
