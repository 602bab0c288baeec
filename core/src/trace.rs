//! W3C trace context, carried sealed inside envelopes (FORMAT.md, "The trace trailer").
//!
//! A job's envelope may carry the context of the span that added it, and a result's or
//! reason's envelope the context of the span that ran the attempt, so that a trace follows a
//! job from the producer to the worker and back. The context is part of the plaintext: no
//! trace id is visible in Redis, and none can be changed without the key. The core never
//! interprets it beyond checking its shape; the adapter's `otel` feature fills and reads it.

use serde::{Deserialize, Serialize};

use crate::envelope::EnvelopeError;

/// The longest `tracestate` carried (W3C allows 32 members of at most 256 characters each;
/// 512 bytes is what propagators keep in practice).
pub const MAX_TRACE_STATE: usize = 512;

/// One span's W3C trace context: `traceparent` as bytes, and `tracestate` as text.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceContext {
    /// The trace id (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// The span id (8 bytes, not all zero): the parent of spans that continue the trace.
    pub span_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
    /// The `tracestate` header's value (at most [`MAX_TRACE_STATE`] bytes of printable
    /// ASCII); empty when none.
    pub state: String,
}

impl std::fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TraceContext({})", self.traceparent())
    }
}

impl TraceContext {
    /// A context with no `tracestate`; `None` when an id is all zero (W3C: invalid).
    #[must_use]
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<Self> {
        let tc = Self {
            trace_id,
            span_id,
            flags,
            state: String::new(),
        };
        tc.is_valid().then_some(tc)
    }

    /// Whether the trace's sampled flag is set.
    #[must_use]
    pub fn sampled(&self) -> bool {
        self.flags & 1 != 0
    }

    /// The `traceparent` header: `00-<trace id>-<span id>-<flags>` in lower-case hex.
    #[must_use]
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            crate::hex::encode(&self.trace_id),
            crate::hex::encode(&self.span_id),
            self.flags
        )
    }

    /// Parses a `traceparent` header (version 00, or a later version's first four fields as
    /// W3C asks) and a `tracestate` value; `None` when either is malformed.
    #[must_use]
    pub fn parse(traceparent: &str, tracestate: &str) -> Option<Self> {
        let bytes = traceparent.as_bytes();
        // version 2, trace id 32, span id 16, flags 2, three dashes.
        if bytes.len() < 55 || (bytes.len() > 55 && bytes[55] != b'-') {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let mut version = [0u8; 1];
        crate::hex::decode_into(&bytes[0..2], &mut version)?;
        // Version ff is forbidden; version 00 has exactly these fields.
        if version[0] == 0xff || (version[0] == 0 && bytes.len() != 55) {
            return None;
        }
        if !bytes[..55]
            .iter()
            .all(|b| *b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flags = [0u8; 1];
        crate::hex::decode_into(&bytes[3..35], &mut trace_id)?;
        crate::hex::decode_into(&bytes[36..52], &mut span_id)?;
        crate::hex::decode_into(&bytes[53..55], &mut flags)?;
        let tc = Self {
            trace_id,
            span_id,
            flags: flags[0],
            state: tracestate.to_owned(),
        };
        tc.is_valid().then_some(tc)
    }

    /// Non-zero ids and a `tracestate` of printable ASCII within [`MAX_TRACE_STATE`].
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.trace_id != [0; 16]
            && self.span_id != [0; 8]
            && self.state.len() <= MAX_TRACE_STATE
            && self.state.bytes().all(|b| (0x20..=0x7e).contains(&b))
    }

    /// Appends this context as a trailer: `postcard(self) || u16 LE length`.
    pub(crate) fn append_trailer(&self, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        if !self.is_valid() {
            return Err(EnvelopeError::Encode("invalid trace context".into()));
        }
        let start = out.len();
        let mut buf = std::mem::take(out);
        buf = postcard::to_extend(self, buf).map_err(|e| EnvelopeError::Encode(e.to_string()))?;
        let len = u16::try_from(buf.len() - start)
            .map_err(|_| EnvelopeError::Encode("trace trailer too long".into()))?;
        buf.extend_from_slice(&len.to_le_bytes());
        *out = buf;
        Ok(())
    }

    /// Splits `plain` into the body and the trailer's context (the inverse of
    /// [`Self::append_trailer`]). Total: a bad length, a trailer that does not decode exactly,
    /// or an invalid context is `Decode`.
    pub(crate) fn split_trailer(plain: &[u8]) -> Result<(&[u8], TraceContext), EnvelopeError> {
        let bad = |why: &str| EnvelopeError::Decode(format!("trace trailer: {why}"));
        let Some((rest, len)) = plain.split_last_chunk::<2>() else {
            return Err(bad("missing length"));
        };
        let len = usize::from(u16::from_le_bytes(*len));
        let Some(at) = rest.len().checked_sub(len) else {
            return Err(bad("length exceeds the plaintext"));
        };
        let (body, trailer) = rest.split_at(at);
        let (tc, tail) =
            postcard::take_from_bytes::<TraceContext>(trailer).map_err(|e| bad(&e.to_string()))?;
        if !tail.is_empty() {
            return Err(bad("trailing bytes"));
        }
        if !tc.is_valid() {
            return Err(bad("invalid context"));
        }
        Ok((body, tc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TraceContext {
        TraceContext {
            trace_id: std::array::from_fn(|i| i as u8 + 1),
            span_id: std::array::from_fn(|i| 0xa0 + i as u8),
            flags: 1,
            state: "vendor=x,other=y".into(),
        }
    }

    #[test]
    fn traceparent_round_trips() {
        let tc = sample();
        let text = tc.traceparent();
        assert_eq!(
            text,
            "00-0102030405060708090a0b0c0d0e0f10-a0a1a2a3a4a5a6a7-01"
        );
        assert_eq!(TraceContext::parse(&text, &tc.state), Some(tc));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        let good = "00-0102030405060708090a0b0c0d0e0f10-a0a1a2a3a4a5a6a7-01";
        assert!(TraceContext::parse(good, "").is_some());
        for bad in [
            "",
            "00",
            "ff-0102030405060708090a0b0c0d0e0f10-a0a1a2a3a4a5a6a7-01",
            "00-00000000000000000000000000000000-a0a1a2a3a4a5a6a7-01",
            "00-0102030405060708090a0b0c0d0e0f10-0000000000000000-01",
            "00-0102030405060708090A0B0C0D0E0F10-a0a1a2a3a4a5a6a7-01",
            "00-0102030405060708090a0b0c0d0e0f10-a0a1a2a3a4a5a6a7-01-",
            "00_0102030405060708090a0b0c0d0e0f10-a0a1a2a3a4a5a6a7-01",
            "0g-0102030405060708090a0b0c0d0e0f10-a0a1a2a3a4a5a6a7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, ""), None, "{bad}");
        }
        // A later version may append fields after a dash.
        let later = "01-0102030405060708090a0b0c0d0e0f10-a0a1a2a3a4a5a6a7-01-extra";
        assert!(TraceContext::parse(later, "").is_some());
        assert_eq!(TraceContext::parse(good, "bad\u{7f}"), None);
        assert_eq!(TraceContext::parse(good, &"x".repeat(513)), None);
    }

    #[test]
    fn trailers_split_back_and_refuse_garbage() {
        let tc = sample();
        let mut plain = b"body".to_vec();
        tc.append_trailer(&mut plain).unwrap();
        let (body, back) = TraceContext::split_trailer(&plain).unwrap();
        assert_eq!((body, &back), (&b"body"[..], &tc));
        // An empty body too.
        let mut plain = Vec::new();
        tc.append_trailer(&mut plain).unwrap();
        assert_eq!(TraceContext::split_trailer(&plain).unwrap().0, b"");
        for bad in [&b""[..], b"\x01", b"\xff\xff", b"abc\x02\x00"] {
            assert!(TraceContext::split_trailer(bad).is_err());
        }
        let invalid = TraceContext {
            trace_id: [0; 16],
            ..sample()
        };
        assert!(invalid.append_trailer(&mut Vec::new()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn split_trailer_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = TraceContext::split_trailer(&bytes);
        }
    }
}
