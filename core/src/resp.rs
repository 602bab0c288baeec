//! The Redis protocol (RESP) on the wire, without IO: commands encoded into a buffer, replies
//! decoded from one straight into [`Value`]s.
//!
//! The adapter writes what [`encode_command`] builds and feeds what it reads to a
//! [`Decoder`]. Every byte read is untrusted: decoding is total (a typed [`RespError`], never
//! a panic), bounded in depth ([`MAX_DEPTH`]) and in a bulk string's length
//! ([`MAX_BULK`]), and allocates no more than the bytes already received justify (an
//! array's announced length reserves nothing until its elements have arrived).
//!
//! The decoder speaks RESP2, what a connection speaks until it sends `HELLO 3`, and accepts
//! RESP3's types too, flattened to their RESP2 shapes: a map is an array of key, value,
//! key, value; a double, a big number and a verbatim string are bulk strings; a boolean is
//! an integer 0 or 1; RESP3's null is [`Value::Nil`]. An attribute (`|`) is refused.
//!
//! Decoding is incremental: a reply that arrived in part is scanned as far as it goes, and
//! the scan resumes where it stopped when more bytes come, so a large reply read in many
//! chunks is scanned once, not once per chunk.
//!
//! ```
//! use datalayer_core::resp::{encode_command, Decoder};
//! use datalayer_core::value::Value;
//!
//! let mut out = Vec::new();
//! encode_command(&mut out, [&b"PING"[..]]);
//! assert_eq!(out, b"*1\r\n$4\r\nPING\r\n");
//!
//! let mut decoder = Decoder::default();
//! let mut input = b"*2\r\n:1\r\n$3\r\nab".to_vec();
//! assert_eq!(decoder.decode(&input), Ok(None)); // not all of it yet
//! input.extend_from_slice(b"c\r\n+OK\r\n");
//! let (value, used) = decoder.decode(&input).unwrap().unwrap();
//! assert_eq!(value, Value::Array(vec![Value::Int(1), Value::Bulk(b"abc".to_vec())]));
//! let (next, _) = decoder.decode(&input[used..]).unwrap().unwrap();
//! assert_eq!(next, Value::Status("OK".into()));
//! ```

use std::collections::VecDeque;

use crate::value::Value;

/// The deepest nesting of arrays a reply may have (datalayer's replies nest at most 4 deep).
pub const MAX_DEPTH: usize = 128;

/// The longest bulk string accepted: Redis' own `proto-max-bulk-len` default, 512 MiB.
pub const MAX_BULK: usize = 512 * 1024 * 1024;

/// The longest header line (`$<len>`, `+OK`, `-ERR <message>`) accepted: 64 KiB. A longer
/// line without its end is not a reply.
pub const MAX_LINE: usize = 64 * 1024;

/// Why the bytes received are not a reply. After one, the connection's stream can no longer
/// be trusted to line up with its requests: the adapter closes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RespError {
    /// A value starts with a byte that is no RESP type.
    #[error("not a RESP type: byte {0:#04x}")]
    Type(u8),
    /// A length or an integer that does not parse, or is out of range.
    #[error("malformed number {0:?}")]
    Number(String),
    /// A bulk string not followed by CRLF, or a line without it.
    #[error("missing CRLF at byte {0}")]
    Framing(usize),
    /// Arrays nested deeper than [`MAX_DEPTH`].
    #[error("replies nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A bulk string longer than [`MAX_BULK`], or a line longer than [`MAX_LINE`].
    #[error("a value of {0} bytes is longer than accepted")]
    TooLong(usize),
    /// A RESP3 attribute, which datalayer never asks for.
    #[error("RESP3 attributes are not accepted")]
    Attribute,
}

/// Appends one command (an array of bulk strings) to `out`.
pub fn encode_command<'a, I>(out: &mut Vec<u8>, args: I)
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: ExactSizeIterator,
{
    let args = args.into_iter();
    out.push(b'*');
    push_number(out, args.len());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        encode_arg(out, arg);
    }
}

/// Appends the header of a command of `len` arguments; each then goes with [`encode_arg`].
pub fn encode_header(out: &mut Vec<u8>, len: usize) {
    out.push(b'*');
    push_number(out, len);
    out.extend_from_slice(b"\r\n");
}

/// Appends one argument (a bulk string) of a command.
pub fn encode_arg(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b'$');
    push_number(out, arg.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// Appends one argument that is a number (its decimal digits).
pub fn encode_uint(out: &mut Vec<u8>, n: u64) {
    encode_arg(out, itoa::Buffer::new().format(n).as_bytes());
}

/// The bytes [`encode_arg`] appends for an argument of `len` bytes (to size a buffer once).
#[must_use]
pub fn arg_len(len: usize) -> usize {
    len + 5 + decimal_len(len)
}

fn decimal_len(mut n: usize) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// Appends `n`'s decimal digits (without the formatting machinery: ARGV is full of
/// numbers, and `to_string` costs an allocation and a formatter each).
pub(crate) fn push_number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Decodes replies from the front of a buffer; keeps what it scanned of an incomplete one.
///
/// Hand [`Decoder::decode`] the unconsumed bytes, starting at the first byte of the next
/// reply, each time more arrive (the same prefix, longer). It returns the reply and the
/// bytes it took once the whole reply is there; the caller drops those bytes and calls
/// again for the next one.
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    /// Bytes of the current reply already scanned (each a complete value's or header's).
    scanned: usize,
    /// Per open array of the current reply: how many of its elements are still to come.
    open: Vec<usize>,
}

/// One header line, parsed.
enum Header {
    /// A complete value of its own (a simple string, an error, an integer, a null, ...): its
    /// type byte and its line, from the byte after the type to the CRLF.
    Leaf(u8, usize, usize),
    /// A bulk string of this many bytes, after the line.
    Bulk(usize),
    /// An array of this many values, after the line.
    Array(usize),
    /// The header was cut before its CRLF.
    Partial,
}

impl Decoder {
    /// The next reply at the front of `input`, and how many bytes of `input` it took;
    /// `Ok(None)` while it has not arrived in full (call again with more).
    ///
    /// # Errors
    /// [`RespError`] when the bytes are not a reply; the decoder is then reset, but the
    /// stream cannot be trusted any more.
    pub fn decode(&mut self, input: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
        if self.scanned == 0 {
            // Most replies arrive whole: one pass builds them. One that has not is then
            // scanned, resumably, and built once it is all there.
            let mut at = 0;
            if let Some(value) = build(input, &mut at, 0)? {
                return Ok(Some((value, at)));
            }
        }
        match self.scan(input) {
            Ok(Some(len)) => {
                self.scanned = 0;
                self.open.clear();
                let mut at = 0;
                match build(&input[..len], &mut at, 0)? {
                    Some(value) => Ok(Some((value, len))),
                    None => Err(RespError::Framing(at)),
                }
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.scanned = 0;
                self.open.clear();
                Err(e)
            }
        }
    }

    /// Every whole value at the front of `input`, each handed to `each` in order; how many
    /// bytes of `input` they took (drop those, keep the rest for the next call, with more).
    ///
    /// # Errors
    /// As [`Decoder::decode`]; the values before the bad bytes were handed over.
    pub fn decode_all(
        &mut self,
        input: &[u8],
        mut each: impl FnMut(Value),
    ) -> Result<usize, RespError> {
        let mut used = 0;
        while let Some((value, n)) = self.decode(&input[used..])? {
            used += n;
            each(value);
        }
        Ok(used)
    }

    /// Scans on from where the last call stopped; `Some(len)` once a whole reply is there.
    fn scan(&mut self, input: &[u8]) -> Result<Option<usize>, RespError> {
        loop {
            let at = self.scanned;
            let Some(&kind) = input.get(at) else {
                return Ok(None);
            };
            let (header, next) = match header(input, at)? {
                (Header::Partial, _) => return Ok(None),
                found => found,
            };
            let end = match header {
                Header::Bulk(n) => {
                    let end = next.checked_add(n).and_then(|e| e.checked_add(2));
                    let Some(end) = end else {
                        return Err(RespError::TooLong(n));
                    };
                    if input.len() < end {
                        return Ok(None);
                    }
                    if input.get(end - 2..end) != Some(b"\r\n") {
                        return Err(RespError::Framing(end - 2));
                    }
                    end
                }
                Header::Array(n) if n > 0 => {
                    if self.open.len() >= MAX_DEPTH {
                        return Err(RespError::TooDeep);
                    }
                    let n = if matches!(kind, b'%') {
                        n.checked_mul(2)
                            .ok_or_else(|| RespError::Number(n.to_string()))?
                    } else {
                        n
                    };
                    self.open.push(n);
                    self.scanned = next;
                    continue;
                }
                _ => next,
            };
            self.scanned = end;
            // A value is complete: it fills a place in each array it closes.
            loop {
                match self.open.last_mut() {
                    None => return Ok(Some(end)),
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// The header at `at`: what it announces, and where what follows it starts.
fn header(input: &[u8], at: usize) -> Result<(Header, usize), RespError> {
    let kind = input.get(at).copied().unwrap_or(0);
    let from = at + 1;
    let rest = input.get(from..).unwrap_or(&[]);
    let Some(cr) = rest.iter().position(|b| *b == b'\r') else {
        if rest.len() > MAX_LINE {
            return Err(RespError::TooLong(rest.len()));
        }
        return Ok((Header::Partial, at));
    };
    if cr > MAX_LINE {
        return Err(RespError::TooLong(cr));
    }
    match rest.get(cr + 1) {
        None => return Ok((Header::Partial, at)),
        Some(b'\n') => {}
        Some(_) => return Err(RespError::Framing(from + cr)),
    }
    let line = &rest[..cr];
    let next = from + cr + 2;
    let header = match kind {
        b'+' | b'-' | b'_' | b',' | b'(' => Header::Leaf(kind, from, from + cr),
        b':' => {
            integer(line)?;
            Header::Leaf(kind, from, from + cr)
        }
        b'#' => match line {
            b"t" | b"f" => Header::Leaf(kind, from, from + cr),
            _ => return Err(RespError::Number(lossy(line))),
        },
        b'$' | b'=' | b'!' => match length(line)? {
            None if kind == b'$' => Header::Leaf(b'_', from, from),
            None => return Err(RespError::Number(lossy(line))),
            Some(n) if n > MAX_BULK => return Err(RespError::TooLong(n)),
            Some(n) => Header::Bulk(n),
        },
        b'*' | b'~' | b'>' | b'%' => match length(line)? {
            None if kind == b'*' => Header::Leaf(b'_', from, from),
            None => return Err(RespError::Number(lossy(line))),
            Some(n) => Header::Array(n),
        },
        b'|' => return Err(RespError::Attribute),
        other => return Err(RespError::Type(other)),
    };
    Ok((header, next))
}

fn lossy(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(32)]).into_owned()
}

fn integer(line: &[u8]) -> Result<i64, RespError> {
    let (negative, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(RespError::Number(lossy(line)));
    }
    let mut n: i64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return Err(RespError::Number(lossy(line)));
        }
        let digit = i64::from(d - b'0');
        n = n
            .checked_mul(10)
            .and_then(|n| {
                if negative {
                    n.checked_sub(digit)
                } else {
                    n.checked_add(digit)
                }
            })
            .ok_or_else(|| RespError::Number(lossy(line)))?;
    }
    Ok(n)
}

/// A length: `None` for -1 (a null), else at least 0.
fn length(line: &[u8]) -> Result<Option<usize>, RespError> {
    match integer(line)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .map(Some)
            .map_err(|_| RespError::Number(lossy(line))),
    }
}

/// The value of a leaf header's line.
fn leaf(kind: u8, line: &[u8]) -> Result<Value, RespError> {
    Ok(match kind {
        b'+' => Value::Status(String::from_utf8_lossy(line).into_owned()),
        b'-' => Value::Error(String::from_utf8_lossy(line).into_owned()),
        b':' => Value::Int(integer(line)?),
        b'#' => Value::Int(i64::from(line == b"t")),
        b',' | b'(' => Value::Bulk(line.to_vec()),
        _ => Value::Nil,
    })
}

/// Builds the value at `*at`; `None` when it has not arrived in full.
fn build(input: &[u8], at: &mut usize, depth: usize) -> Result<Option<Value>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::TooDeep);
    }
    let Some(&kind) = input.get(*at) else {
        return Ok(None);
    };
    let (header, next) = header(input, *at)?;
    match header {
        Header::Partial => Ok(None),
        Header::Leaf(kind, from, to) => {
            *at = next;
            leaf(kind, &input[from..to]).map(Some)
        }
        Header::Bulk(n) => {
            let end = next.checked_add(n).ok_or(RespError::TooLong(n))?;
            let (Some(bytes), Some(crlf)) = (input.get(next..end), input.get(end..end + 2)) else {
                return Ok(None);
            };
            if crlf != b"\r\n" {
                return Err(RespError::Framing(end));
            }
            *at = end + 2;
            Ok(Some(Value::Bulk(bytes.to_vec())))
        }
        Header::Array(n) => {
            let n = if kind == b'%' {
                n.checked_mul(2)
                    .ok_or_else(|| RespError::Number(n.to_string()))?
            } else {
                n
            };
            // Each element takes at least 3 bytes: reserve no more than the input holds.
            let mut items = Vec::with_capacity(n.min(input.len().saturating_sub(next) / 3));
            *at = next;
            for _ in 0..n {
                match build(input, at, depth + 1)? {
                    Some(item) => items.push(item),
                    None => return Ok(None),
                }
            }
            Ok(Some(Value::Array(items)))
        }
    }
}

/// Why a connection's replies can no longer be matched to its requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// Bytes that are not a reply.
    #[error("a reply that does not decode: {0}")]
    Resp(#[from] RespError),
    /// A reply when no request is owed one.
    #[error("a reply no request asked for")]
    Unsolicited,
}

/// One connection's requests and replies, without the socket: the requests written, in
/// order, each owed a number of replies, and the replies read, decoded and handed to the
/// request they answer.
///
/// Redis answers a connection's commands in the order it reads them, so the n-th reply is
/// the n-th command's. When that stops holding (bytes that do not decode, a reply nothing
/// asked for), no later reply can be trusted either: [`Exchange::received`] fails, and the
/// connection must close, each request still owed failing with an unknown outcome
/// ([`Exchange::abandon`]).
///
/// ```
/// use datalayer_core::resp::Exchange;
/// use datalayer_core::value::Value;
///
/// let mut exchange = Exchange::default();
/// exchange.sent(2, "pipeline");
/// exchange.sent(1, "ping");
/// let mut answered = Vec::new();
/// let used = exchange.received(b":1\r\n:2\r\n+PO", &mut answered).unwrap();
/// assert_eq!(used, 8);
/// assert_eq!(answered, vec![("pipeline", vec![Value::Int(1), Value::Int(2)])]);
/// let used = exchange.received(b"+PONG\r\n", &mut answered).unwrap();
/// assert_eq!((used, answered.len(), exchange.owed()), (7, 2, 0));
/// assert!(exchange.received(b"+OK\r\n", &mut answered).is_err()); // nobody asked
/// ```
#[derive(Debug)]
pub struct Exchange<T> {
    decoder: Decoder,
    owed: VecDeque<Owed<T>>,
}

#[derive(Debug)]
struct Owed<T> {
    left: usize,
    got: Vec<Value>,
    token: T,
}

impl<T> Default for Exchange<T> {
    fn default() -> Self {
        Self {
            decoder: Decoder::default(),
            owed: VecDeque::new(),
        }
    }
}

impl<T> Exchange<T> {
    /// A request was written: it is owed `replies` replies (at least one), and `token`
    /// goes back with them.
    pub fn sent(&mut self, replies: usize, token: T) {
        let left = replies.max(1);
        self.owed.push_back(Owed {
            left,
            got: Vec::with_capacity(left),
            token,
        });
    }

    /// Decodes the replies at the front of `input` (the bytes read and not consumed yet);
    /// each request answered in full goes to `answered` with its replies. Returns how many
    /// bytes of `input` were consumed (a reply cut short stays for the next call, with more
    /// bytes behind it).
    ///
    /// # Errors
    /// [`ExchangeError`] when the replies no longer line up with the requests: the
    /// connection is to be closed.
    pub fn received(
        &mut self,
        input: &[u8],
        answered: &mut Vec<(T, Vec<Value>)>,
    ) -> Result<usize, ExchangeError> {
        let mut used = 0;
        while let Some((value, n)) = self.decoder.decode(&input[used..])? {
            used += n;
            let Some(front) = self.owed.front_mut() else {
                return Err(ExchangeError::Unsolicited);
            };
            front.got.push(value);
            front.left -= 1;
            if front.left == 0 {
                if let Some(done) = self.owed.pop_front() {
                    answered.push((done.token, done.got));
                }
            }
        }
        Ok(used)
    }

    /// How many requests are owed replies.
    #[must_use]
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    /// The requests still owed replies, oldest first, given up (the connection closes: what
    /// they sent may or may not have run).
    pub fn abandon(&mut self) -> impl Iterator<Item = T> + '_ {
        self.decoder = Decoder::default();
        self.owed.drain(..).map(|o| o.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
        Decoder::default().decode(bytes)
    }

    fn bulk(b: &[u8]) -> Value {
        Value::Bulk(b.to_vec())
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&mut out, [&b"SET"[..], b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        let mut out = Vec::new();
        let long = vec![b'x'; 1234];
        encode_header(&mut out, 1);
        encode_arg(&mut out, &long);
        let mut n = Vec::new();
        encode_uint(&mut n, 1_700_000_000_000);
        assert_eq!(n, b"$13\r\n1700000000000\r\n");
        assert_eq!(out.len(), 4 + arg_len(1234));
        assert!(out.starts_with(b"*1\r\n$1234\r\nxx"));
        for n in [0, 9, 10, 99, 100, usize::MAX] {
            let mut s = Vec::new();
            push_number(&mut s, n);
            assert_eq!(s, n.to_string().into_bytes());
            assert_eq!(decimal_len(n), s.len());
        }
    }

    #[test]
    fn decodes_every_resp2_type() {
        let input = b"*6\r\n+OK\r\n-ERR no\r\n:-42\r\n$3\r\na\r\n\r\n$-1\r\n*-1\r\n";
        let (v, used) = one(input).unwrap().unwrap();
        assert_eq!(used, input.len());
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Status("OK".into()),
                Value::Error("ERR no".into()),
                Value::Int(-42),
                bulk(b"a\r\n"),
                Value::Nil,
                Value::Nil,
            ])
        );
        assert_eq!(one(b"*0\r\n"), Ok(Some((Value::Array(vec![]), 4))));
        assert_eq!(one(b"$0\r\n\r\n"), Ok(Some((bulk(b""), 6))));
    }

    #[test]
    fn resp3_types_take_their_resp2_shapes() {
        let input = b"%2\r\n$1\r\nk\r\n#t\r\n~1\r\n,1.5\r\n_\r\n=7\r\ntxt:abc\r\n(12345678901234567890\r\n#f\r\n";
        let mut decoder = Decoder::default();
        let mut at = 0;
        let mut values = Vec::new();
        while let Some((v, used)) = decoder.decode(&input[at..]).unwrap() {
            values.push(v);
            at += used;
        }
        assert_eq!(at, input.len());
        assert_eq!(
            values,
            vec![
                Value::Array(vec![
                    bulk(b"k"),
                    Value::Int(1),
                    Value::Array(vec![bulk(b"1.5")]),
                    Value::Nil,
                ]),
                bulk(b"txt:abc"),
                bulk(b"12345678901234567890"),
                Value::Int(0),
            ]
        );
        assert_eq!(one(b"|1\r\n+a\r\n+b\r\n+c\r\n"), Err(RespError::Attribute));
    }

    #[test]
    fn a_reply_in_pieces_is_the_same_reply() {
        let input = b"*2\r\n*3\r\n$5\r\nhello\r\n:7\r\n$-1\r\n+done\r\n";
        let whole = one(input).unwrap().unwrap();
        for cut in 0..input.len() {
            let mut decoder = Decoder::default();
            assert_eq!(decoder.decode(&input[..cut]), Ok(None), "cut at {cut}");
            assert_eq!(
                decoder.decode(input).unwrap().unwrap(),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(one(b"?\r\n"), Err(RespError::Type(b'?')));
        assert!(matches!(one(b":12a\r\n"), Err(RespError::Number(_))));
        assert!(matches!(
            one(b":99999999999999999999\r\n"),
            Err(RespError::Number(_))
        ));
        assert!(matches!(one(b"$-2\r\n"), Err(RespError::Number(_))));
        assert!(matches!(one(b"*-5\r\n"), Err(RespError::Number(_))));
        assert!(matches!(one(b"$\r\n"), Err(RespError::Number(_))));
        assert_eq!(one(b"$1\r\nab\r\n"), Err(RespError::Framing(5)));
        assert_eq!(one(b"+OK\rx"), Err(RespError::Framing(3)));
        assert!(matches!(
            one(b"$999999999999\r\n"),
            Err(RespError::TooLong(_))
        ));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(one(deep.as_bytes()), Err(RespError::TooDeep));
        let fine = format!("{}:1\r\n", "*1\r\n".repeat(MAX_DEPTH));
        assert!(one(fine.as_bytes()).unwrap().is_some());
        let long = vec![b'+'; MAX_LINE + 2];
        assert!(matches!(one(&long), Err(RespError::TooLong(_))));
        // Announced, not arrived: nothing reserved, nothing decoded.
        assert_eq!(one(b"*2147483647\r\n"), Ok(None));
        assert_eq!(one(b"%9223372036854775807\r\n"), Ok(None));
    }

    #[test]
    fn extremes_of_integers() {
        assert_eq!(
            one(b":-9223372036854775808\r\n").unwrap().unwrap().0,
            Value::Int(i64::MIN)
        );
        assert_eq!(
            one(b":9223372036854775807\r\n").unwrap().unwrap().0,
            Value::Int(i64::MAX)
        );
        assert!(one(b":9223372036854775808\r\n").is_err());
        assert!(one(b":-\r\n").is_err());
    }

    /// A RESP2 writer of values, to check the decoder against.
    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Nil => out.extend_from_slice(b"$-1\r\n"),
            Value::Int(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
            Value::Bulk(b) => encode_arg(out, b),
            Value::Status(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
            Value::Error(e) => out.extend_from_slice(format!("-{e}\r\n").as_bytes()),
            Value::Array(items) => {
                encode_header(out, items.len());
                for i in items {
                    write(i, out);
                }
            }
        }
    }

    fn value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bulk),
            "[a-zA-Z0-9 ]{0,20}".prop_map(Value::Status),
            "[A-Z]{1,8} [a-z ]{0,20}".prop_map(Value::Error),
        ];
        leaf.prop_recursive(5, 64, 8, |inner| {
            proptest::collection::vec(inner, 0..8).prop_map(Value::Array)
        })
    }

    /// Decodes `input` handed over in pieces cut at `cuts`, as the adapter does
    /// ([`Decoder::decode_all`] on what is left of each piece and those before it).
    fn in_pieces(input: &[u8], cuts: &[usize]) -> Result<Vec<Value>, RespError> {
        let mut decoder = Decoder::default();
        let mut values = Vec::new();
        let mut start = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        ends.push(input.len());
        ends.sort_unstable();
        for end in ends {
            start += decoder.decode_all(&input[start..end], |v| values.push(v))?;
        }
        Ok(values)
    }

    proptest::proptest! {
        #[test]
        fn values_decode_as_written_however_they_are_cut(
            values in proptest::collection::vec(value(), 1..6),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..8),
        ) {
            let mut input = Vec::new();
            for v in &values {
                write(v, &mut input);
            }
            proptest::prop_assert_eq!(in_pieces(&input, &cuts), Ok(values));
        }

        #[test]
        fn the_fuzz_target_holds_on_reply_like_bytes(
            values in proptest::collection::vec(value(), 0..6),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
            cut in proptest::prelude::any::<u8>(),
        ) {
            let mut data = vec![cut];
            for v in &values {
                write(v, &mut data);
            }
            data.extend(noise);
            crate::fuzz::resp_replies(&data);
        }

        #[test]
        fn any_bytes_decode_alike_however_they_are_cut(
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"*$:+-_#,(=%~>|\r\n0123-".to_vec()),
                    proptest::prelude::any::<u8>(),
                ],
                0..200,
            ),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..8),
        ) {
            // Never a panic, and the same values or the same error whichever the pieces.
            let whole = in_pieces(&input, &[]);
            let cut = in_pieces(&input, &cuts);
            match (&whole, &cut) {
                (Ok(a), Ok(b)) => proptest::prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                _ => proptest::prop_assert!(false, "{whole:?} against {cut:?}"),
            }
        }
    }

    #[test]
    fn an_exchange_hands_each_request_its_replies_in_order() {
        let mut x = Exchange::default();
        x.sent(3, 'a');
        x.sent(0, 'b'); // owed one, at least
        let mut answered = Vec::new();
        let input = b"+OK\r\n+QUEUED\r\n*1\r\n:1\r\n$2\r\nhi\r\n";
        // Byte by byte, as a slow network would hand them over.
        let mut start = 0;
        for end in 1..=input.len() {
            start += x.received(&input[start..end], &mut answered).unwrap();
        }
        assert_eq!(start, input.len());
        assert_eq!(
            answered,
            vec![
                (
                    'a',
                    vec![
                        Value::Status("OK".into()),
                        Value::Status("QUEUED".into()),
                        Value::Array(vec![Value::Int(1)]),
                    ]
                ),
                ('b', vec![bulk(b"hi")]),
            ]
        );
        assert_eq!(x.owed(), 0);
        assert_eq!(
            x.received(b":1\r\n", &mut answered),
            Err(ExchangeError::Unsolicited)
        );
        x.sent(1, 'c');
        x.sent(1, 'd');
        assert_eq!(x.received(b":1\r\n", &mut answered), Ok(4));
        assert!(matches!(
            x.received(b"?\r\n", &mut answered),
            Err(ExchangeError::Resp(RespError::Type(b'?')))
        ));
        assert_eq!(x.abandon().collect::<Vec<_>>(), vec!['d']);
        assert_eq!(x.owed(), 0);
    }
}
