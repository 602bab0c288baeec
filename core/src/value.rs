//! Redis reply values and their total decoding into typed replies.
//!
//! The adapter hands the core each reply as a [`Value`] (the RESP subset datalayer uses); the
//! core decodes it here. Every byte is untrusted: decoding returns a typed [`ReplyError`],
//! never panics, and allocates no more than the value already holds.

use std::fmt;

/// A reply from Redis, as received.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// A null reply (e.g. XREADGROUP that timed out, a deleted entry).
    Nil,
    /// An integer reply.
    Int(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// A simple string (e.g. `OK`).
    Status(String),
    /// An array (or a RESP3 map, flattened key, value, key, value).
    Array(Vec<Value>),
    /// An error reply (e.g. `BUSYGROUP ...`, `NOSCRIPT ...`).
    Error(String),
}

/// Why a reply does not have the shape its command promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// Redis answered with an error reply.
    #[error("redis error: {0}")]
    Redis(String),
    /// The reply's shape is not the command's.
    #[error("unexpected reply: expected {expected}, got {got}")]
    Shape {
        /// What the command's reply should be.
        expected: &'static str,
        /// A short description of what came.
        got: String,
    },
    /// A stream entry id that does not parse.
    #[error("malformed stream entry id {0:?}")]
    EntryId(String),
}

fn shape(expected: &'static str, got: &Value) -> ReplyError {
    let got = match got {
        Value::Nil => "nil".to_owned(),
        Value::Int(i) => format!("integer {i}"),
        Value::Bulk(b) => format!("bulk of {} bytes", b.len()),
        Value::Status(s) => format!("status {:?}", s.chars().take(40).collect::<String>()),
        Value::Array(a) => format!("array of {}", a.len()),
        Value::Error(e) => format!("error {:?}", e.chars().take(80).collect::<String>()),
    };
    ReplyError::Shape { expected, got }
}

impl Value {
    /// The array's items; an error reply becomes [`ReplyError::Redis`].
    pub fn into_array(self, expected: &'static str) -> Result<Vec<Value>, ReplyError> {
        match self {
            Value::Array(items) => Ok(items),
            Value::Error(e) => Err(ReplyError::Redis(e)),
            other => Err(shape(expected, &other)),
        }
    }

    /// The integer; an error reply becomes [`ReplyError::Redis`].
    pub fn as_int(&self, expected: &'static str) -> Result<i64, ReplyError> {
        match self {
            Value::Int(i) => Ok(*i),
            Value::Error(e) => Err(ReplyError::Redis(e.clone())),
            other => Err(shape(expected, other)),
        }
    }

    /// The bytes of a bulk or simple string.
    pub fn into_bytes(self, expected: &'static str) -> Result<Vec<u8>, ReplyError> {
        match self {
            Value::Bulk(b) => Ok(b),
            Value::Status(s) => Ok(s.into_bytes()),
            Value::Error(e) => Err(ReplyError::Redis(e)),
            other => Err(shape(expected, &other)),
        }
    }

    /// Checks for `OK` (or any simple string).
    pub fn expect_ok(&self, expected: &'static str) -> Result<(), ReplyError> {
        match self {
            Value::Status(_) => Ok(()),
            Value::Error(e) => Err(ReplyError::Redis(e.clone())),
            other => Err(shape(expected, other)),
        }
    }
}

/// A stream entry id, `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EntryId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl EntryId {
    /// When the entry was added (its milliseconds part).
    #[must_use]
    pub fn time(self) -> crate::time::Instant {
        crate::time::Instant::from_unix_ms(self.ms)
    }
}

impl EntryId {
    /// `0-0`: before every entry.
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// An id from its parts.
    #[must_use]
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// Parses `<ms>-<seq>` (both decimal u64); anything else is an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReplyError> {
        let bad =
            || ReplyError::EntryId(String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into());
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let (ms, seq) = text.split_once('-').ok_or_else(bad)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(bad());
        }
        Ok(Self {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }

    /// The largest id before this one.
    #[must_use]
    pub fn prev(self) -> Option<Self> {
        match self.seq.checked_sub(1) {
            Some(seq) => Some(Self { ms: self.ms, seq }),
            None => self.ms.checked_sub(1).map(|ms| Self { ms, seq: u64::MAX }),
        }
    }

    /// The smallest id after this one.
    #[must_use]
    pub fn next(self) -> Option<Self> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(Self { ms: self.ms, seq }),
            None => self.ms.checked_add(1).map(|ms| Self { ms, seq: 0 }),
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A stream entry's field/value pairs, in order.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One stream entry: its id and its field/value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry's id.
    pub id: EntryId,
    /// Field/value pairs in order. Empty when the entry was deleted but still pending.
    pub fields: Fields,
}

impl StreamEntry {
    /// The value of `name`, if present (the first occurrence).
    #[must_use]
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Decodes `[id, [field, value, ...]]`; a nil field list (a deleted entry still in a
    /// pending list) decodes to no fields.
    pub fn decode(value: Value) -> Result<Self, ReplyError> {
        const WHAT: &str = "stream entry [id, fields]";
        let mut parts = value.into_array(WHAT)?.into_iter();
        let (Some(id), fields, None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ReplyError::Shape {
                expected: WHAT,
                got: "another arity".into(),
            });
        };
        let id = EntryId::parse(&id.into_bytes(WHAT)?)?;
        let fields = match fields {
            None | Some(Value::Nil) => Vec::new(),
            Some(v) => decode_pairs(v.into_array(WHAT)?)?,
        };
        Ok(Self { id, fields })
    }
}

fn decode_pairs(flat: Vec<Value>) -> Result<Fields, ReplyError> {
    if flat.len() % 2 != 0 {
        return Err(ReplyError::Shape {
            expected: "field/value pairs",
            got: format!("{} items", flat.len()),
        });
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k.into_bytes("field")?, v.into_bytes("value")?));
    }
    Ok(out)
}

/// Decodes a list of entries (XRANGE, or one stream of an XREAD reply).
pub fn decode_entries(value: Value) -> Result<Vec<StreamEntry>, ReplyError> {
    match value {
        Value::Nil => Ok(Vec::new()),
        v => v
            .into_array("stream entries")?
            .into_iter()
            .map(StreamEntry::decode)
            .collect(),
    }
}

/// Splits a worker read's reply ([`crate::command::CommandKind::Read`]): `[XREADGROUP's
/// reply (or its error), paused (0/1)]`, or nil (a blocking read that took nothing: `None`,
/// nothing came). An error reply (the whole transaction failed) stays an error.
pub fn split_paused(value: Value) -> Result<(Option<bool>, Value), ReplyError> {
    const EXPECTED: &str = "[read reply, paused]";
    match value {
        Value::Nil => Ok((None, Value::Nil)),
        Value::Error(e) => Err(ReplyError::Redis(e)),
        Value::Array(mut pair) if pair.len() == 2 => match pair.pop() {
            Some(Value::Int(flag)) => Ok((Some(flag != 0), pair.pop().unwrap_or(Value::Nil))),
            other => Err(shape(EXPECTED, &other.unwrap_or(Value::Nil))),
        },
        other => Err(shape(EXPECTED, &other)),
    }
}

/// Decodes an XREAD/XREADGROUP reply for a single stream: nil (timed out) or
/// `[[stream, [entries...]]]`.
pub fn decode_read(value: Value) -> Result<Vec<StreamEntry>, ReplyError> {
    const WHAT: &str = "XREAD reply [[stream, entries]]";
    let streams = match value {
        Value::Nil => return Ok(Vec::new()),
        v => v.into_array(WHAT)?,
    };
    let mut out = Vec::new();
    for stream in streams {
        let mut parts = stream.into_array(WHAT)?.into_iter();
        let (Some(_name), Some(entries), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ReplyError::Shape {
                expected: WHAT,
                got: "another arity".into(),
            });
        };
        out.extend(decode_entries(entries)?);
    }
    Ok(out)
}

/// Splits the reply of a merged read ([`crate::scripts::merged_read`]) over `streams`: for
/// each stream, in order, the reply a read of that stream alone would have had
/// (`[[stream, entries]]`, or nil when it had nothing). A stream the reply names twice, or
/// one that was not asked for, is an error.
pub fn split_read(value: Value, streams: &[&[u8]]) -> Result<Vec<Value>, ReplyError> {
    const WHAT: &str = "XREAD reply [[stream, entries], ...]";
    let mut out = vec![Value::Nil; streams.len()];
    let items = match value {
        Value::Nil => return Ok(out),
        v => v.into_array(WHAT)?,
    };
    for item in items {
        let name = match &item {
            Value::Array(parts) => match parts.first() {
                Some(Value::Bulk(name)) => name.clone(),
                _ => return Err(shape(WHAT, &item)),
            },
            other => return Err(shape(WHAT, other)),
        };
        let Some(i) = streams.iter().position(|s| *s == name.as_slice()) else {
            return Err(ReplyError::Shape {
                expected: WHAT,
                got: format!("stream {:?} not asked for", String::from_utf8_lossy(&name)),
            });
        };
        if out[i] != Value::Nil {
            return Err(ReplyError::Shape {
                expected: WHAT,
                got: "a stream named twice".into(),
            });
        }
        out[i] = Value::Array(vec![item]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(s.as_bytes().to_vec())
    }

    #[test]
    fn entry_ids() {
        assert_eq!(EntryId::parse(b"1-2"), Ok(EntryId::new(1, 2)));
        assert_eq!(EntryId::new(5, 0).to_string(), "5-0");
        for bad in [
            &b""[..],
            b"1",
            b"-1",
            b"1-",
            b"a-1",
            b"1-2-3",
            b"+1-2",
            b"99999999999999999999-0",
            b"\xff-1",
        ] {
            assert!(EntryId::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(EntryId::new(1, u64::MAX).next(), Some(EntryId::new(2, 0)));
        assert_eq!(EntryId::new(u64::MAX, u64::MAX).next(), None);
        assert!(EntryId::new(1, 9) < EntryId::new(2, 0));
    }

    #[test]
    fn read_replies() {
        let entry = Value::Array(vec![
            bulk("7-1"),
            Value::Array(vec![
                bulk("j"),
                bulk("job"),
                bulk("e"),
                Value::Bulk(vec![0, 255]),
            ]),
        ]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("dl:{q}:jobs"),
            Value::Array(vec![entry]),
        ])]);
        let entries = decode_read(reply).unwrap();
        assert_eq!(entries[0].id, EntryId::new(7, 1));
        assert_eq!(entries[0].field(b"e"), Some(&[0u8, 255][..]));
        assert_eq!(entries[0].field(b"x"), None);
        assert_eq!(decode_read(Value::Nil).unwrap(), vec![]);
        let deleted = Value::Array(vec![bulk("8-0"), Value::Nil]);
        assert_eq!(StreamEntry::decode(deleted).unwrap().fields, vec![]);
        assert!(matches!(
            decode_read(Value::Error("NOGROUP x".into())),
            Err(ReplyError::Redis(_))
        ));
        let odd = Value::Array(vec![bulk("8-0"), Value::Array(vec![bulk("j")])]);
        assert!(StreamEntry::decode(odd).is_err());
    }

    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<i64>().prop_map(Value::Int),
            prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bulk),
            "[0-9]{1,3}-[0-9]{1,3}".prop_map(|s| Value::Bulk(s.into_bytes())),
            ".{0,6}".prop_map(Value::Status),
            ".{0,6}".prop_map(Value::Error),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop::collection::vec(inner, 0..6).prop_map(Value::Array)
        })
    }

    proptest! {
        #[test]
        fn decoding_is_total(v in any_value()) {
            let _ = decode_read(v.clone());
            let _ = decode_entries(v.clone());
            let _ = StreamEntry::decode(v);
        }

        #[test]
        fn entry_ids_round_trip(ms: u64, seq: u64) {
            let id = EntryId::new(ms, seq);
            prop_assert_eq!(EntryId::parse(id.to_string().as_bytes()), Ok(id));
        }
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    fn entry(stream: &str) -> Value {
        Value::Array(vec![
            Value::Bulk(stream.as_bytes().to_vec()),
            Value::Array(vec![Value::Array(vec![
                Value::Bulk(b"1-1".to_vec()),
                Value::Array(vec![Value::Bulk(b"j".to_vec()), Value::Bulk(b"x".to_vec())]),
            ])]),
        ])
    }

    #[test]
    fn merged_replies_split_per_stream() {
        let streams: [&[u8]; 3] = [b"a", b"b", b"c"];
        assert_eq!(split_read(Value::Nil, &streams), Ok(vec![Value::Nil; 3]));
        let out = split_read(Value::Array(vec![entry("c"), entry("a")]), &streams).unwrap();
        assert_eq!(out[0], Value::Array(vec![entry("a")]));
        assert_eq!(out[1], Value::Nil);
        assert_eq!(out[2], Value::Array(vec![entry("c")]));
        assert_eq!(decode_read(out[2].clone()).unwrap().len(), 1);
        for bad in [
            Value::Array(vec![entry("d")]),
            Value::Array(vec![entry("a"), entry("a")]),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![])]),
            Value::Int(3),
            Value::Error("ERR x".into()),
        ] {
            assert!(split_read(bad.clone(), &streams).is_err(), "{bad:?}");
        }
    }
}
