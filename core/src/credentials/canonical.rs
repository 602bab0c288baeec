//! The canonical form of a JSON value: the JSON Canonicalization Scheme (JCS, RFC 8785).
//!
//! Object members are sorted by the UTF-16 code units of their names; no whitespace; strings
//! escape only `"`, `\` and control characters (`\b \t \n \f \r` by name, the others as
//! `\u00xx`, lower-case hex); numbers are IEEE-754 doubles written as ECMAScript's
//! `Number.prototype.toString` writes them (shortest round-trip digits; exponent form below
//! 1e-6 and from 1e21). Any JCS implementation (JavaScript, Python, Go, Java) produces the
//! same bytes, which is what makes the credentials hash stable across processes, languages
//! and versions.

use serde_json::{Number, Value};

/// Where the canonical form goes: a string, or straight into a hash (so that checking
/// credentials leaves no canonical copy of them in memory).
pub(crate) trait Sink {
    /// Appends `s`.
    fn put(&mut self, s: &str);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

/// The canonical (RFC 8785) serialization of `value`.
#[must_use]
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

/// Writes the canonical form of `value` into `out`.
pub(crate) fn write_value(out: &mut impl Sink, value: &Value) {
    match value {
        Value::Null => out.put("null"),
        Value::Bool(true) => out.put("true"),
        Value::Bool(false) => out.put("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.put("[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.put(",");
                }
                write_value(out, item);
            }
            out.put("]");
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.put("{");
            for (i, (name, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.put(",");
                }
                write_string(out, name);
                out.put(":");
                write_value(out, item);
            }
            out.put("}");
        }
    }
}

fn write_string(out: &mut impl Sink, s: &str) {
    out.put("\"");
    for c in s.chars() {
        match c {
            '"' => out.put("\\\""),
            '\\' => out.put("\\\\"),
            '\u{8}' => out.put("\\b"),
            '\t' => out.put("\\t"),
            '\n' => out.put("\\n"),
            '\u{c}' => out.put("\\f"),
            '\r' => out.put("\\r"),
            c if u32::from(c) < 0x20 => out.put(&format!("\\u{:04x}", u32::from(c))),
            c => out.put(c.encode_utf8(&mut [0; 4])),
        }
    }
    out.put("\"");
}

fn write_number(out: &mut impl Sink, n: &Number) {
    // JSON numbers are doubles in JCS (and in JavaScript): integers beyond 2^53 round.
    #[allow(clippy::cast_precision_loss)]
    let f = match (n.as_i64(), n.as_u64()) {
        (Some(i), _) => i as f64,
        (None, Some(u)) => u as f64,
        _ => n.as_f64().unwrap_or(0.0),
    };
    write_double(out, f);
}

/// Writes a finite double as ECMAScript's Number.prototype.toString (ECMA-262, 7.1.12.1).
pub(crate) fn write_double(out: &mut impl Sink, f: f64) {
    if f == 0.0 || !f.is_finite() {
        // -0 is "0"; JSON has no NaN or infinity (serde_json never holds them).
        out.put("0");
        return;
    }
    if f < 0.0 {
        out.put("-");
    }
    // Ryu writes the shortest digits that round-trip, the closest to the exact value and the
    // even one on a tie, as ECMAScript requires (Rust's `{:e}` breaks ties the other way:
    // 1424953923781206.25 is "…206.3" there, "…206.2" in JavaScript). Only its layout differs,
    // so take its digits and decimal exponent and lay them out again.
    let mut buf = ryu::Buffer::new();
    let text = buf.format_finite(f.abs());
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all: String = int.chars().chain(frac.chars()).collect();
    let lead = all.len() - all.trim_start_matches('0').len();
    let digits = all.trim_start_matches('0').trim_end_matches('0');
    if digits.is_empty() {
        out.put("0");
        return;
    }
    let int_len = i32::try_from(int.len()).unwrap_or(i32::MAX);
    let lead = i32::try_from(lead).unwrap_or(i32::MAX);
    // value = 0.d1d2...dk × 10^n
    let k = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    let n = exp + int_len - lead;
    if k <= n && n <= 21 {
        out.put(digits);
        for _ in 0..(n - k) {
            out.put("0");
        }
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(usize::try_from(n).unwrap_or(0));
        out.put(int);
        out.put(".");
        out.put(frac);
    } else if -6 < n && n <= 0 {
        out.put("0.");
        for _ in 0..(-n) {
            out.put("0");
        }
        out.put(digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.put(first);
        if !rest.is_empty() {
            out.put(".");
            out.put(rest);
        }
        let e = n - 1;
        out.put(if e < 0 { "e-" } else { "e+" });
        out.put(&e.abs().to_string());
    }
}
