//! JSON text ⇄ [`Value`], written for the JSON-RPC bridge.
//!
//! Why not serde_json: the bridge must be lossless, so it keeps object members in order
//! (duplicates included) and integers of any size exactly, and it must never overflow the
//! stack on hostile input. serde_json's `Value` sorts keys and turns big integers into floats
//! unless a crate-wide feature is switched on that would also change every other user of
//! serde_json in the build (including the benchmark peer).
//!
//! Invariants:
//! * input must be UTF-8 (checked first); output is always UTF-8;
//! * nesting deeper than [`MAX_DEPTH`] is an error, never a stack overflow;
//! * numbers follow RFC 8259 grammar exactly; integers that do not fit 64 bits and floats
//!   outside the double range are kept as their text ([`Number::Big`]);
//! * strings with lone UTF-16 surrogates (`"\ud800"`) are rejected: they cannot be UTF-8.

use super::value::{JsonMember, JsonTree, Member, Node, Number, NumberRef, Value};
use crate::error::{Error, Result};

/// The deepest nesting of arrays and objects the parser accepts (as serde_json's default).
pub const MAX_DEPTH: usize = 128;

/// Parses one JSON value from `text`, which must contain nothing else but white space.
///
/// ```
/// use erlmcp_flow::codec::{json, Value};
/// let v = json::parse(br#"{"b":1,"a":[true,null,18446744073709551616]}"#).unwrap();
/// assert_eq!(v.to_json(), r#"{"b":1,"a":[true,null,18446744073709551616]}"#);
/// assert!(json::parse(b"{\"a\":").is_err());
/// ```
pub fn parse(text: &[u8]) -> Result<Value> {
    let text = std::str::from_utf8(text).map_err(|e| {
        Error::invalid(format!(
            "JSON text is not valid UTF-8 (first bad byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    p.skip_ws();
    let v = p.value()?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(p.err("trailing characters after the JSON value"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> Error {
        Error::invalid(format!("invalid JSON at byte {}: {what}", self.pos))
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8], v: Value) -> Result<Value> {
        if self.s[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(self.err("unknown literal"))
        }
    }

    fn value(&mut self) -> Result<Value> {
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => Ok(Value::Number(self.number()?)),
            Some(b'[') => self.array(),
            Some(b'{') => self.object(),
            Some(_) => Err(self.err("expected a JSON value")),
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(&format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        self.pos += 1;
        self.skip_ws();
        Ok(())
    }

    fn array(&mut self) -> Result<Value> {
        self.enter()?;
        let mut items = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err("expected ',' or ']' in array")),
            }
        }
    }

    fn object(&mut self) -> Result<Value> {
        self.enter()?;
        let mut members = Vec::new();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Object(members));
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key in object"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':' after object key"));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value()?;
            members.push(Member { key, value });
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(self.err("expected ',' or '}' in object")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let digits = self
            .s
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.err("truncated \\u escape"))?;
        let mut v = 0u32;
        for &d in digits {
            let n = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.err("bad hex digit in \\u escape"))?;
            v = v * 16 + n;
        }
        self.pos += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            // Copy the run of plain characters in one go. The input is valid UTF-8 and the
            // run stops only at ASCII bytes, so each run is itself valid UTF-8.
            let start = self.pos;
            while let Some(&b) = self.s.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(
                std::str::from_utf8(&self.s[start..self.pos])
                    .map_err(|_| self.err("invalid UTF-8 in string"))?,
            );
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let Some(esc) = self.peek() else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err(self.err("lone high surrogate in \\u escape"));
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("bad low surrogate in \\u escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(self.err("lone low surrogate in \\u escape"));
                            } else {
                                hi
                            };
                            out.push(
                                char::from_u32(code)
                                    .ok_or_else(|| self.err("invalid \\u escape"))?,
                            );
                        }
                        _ => return Err(self.err("unknown escape in string")),
                    }
                }
                Some(_) => return Err(self.err("unescaped control character in string")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Number> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("expected digits in number")),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err("expected digits after decimal point"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("expected digits in exponent"));
            }
        }
        // The slice holds only ASCII digits, signs, '.', 'e' and 'E'.
        let text = std::str::from_utf8(&self.s[start..self.pos])
            .map_err(|_| self.err("invalid number"))?;
        if integer {
            if negative {
                if text == "-0" {
                    // Keep the sign of negative zero: -0.0 reads back as the same double.
                    return Ok(Number::Float(-0.0));
                }
                if let Ok(i) = text.parse::<i64>() {
                    return Ok(Number::NegInt(i));
                }
            } else if let Ok(u) = text.parse::<u64>() {
                return Ok(Number::PosInt(u));
            }
            return Ok(Number::Big(text.to_owned()));
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Number::Float(f)),
            _ => Ok(Number::Big(text.to_owned())),
        }
    }
}

/// Appends `value` to `out` as compact JSON.
///
/// Non-finite floats (which JSON cannot express and the parser never produces) are written as
/// `null`. Recursion is bounded by the depth of `value`; values from [`parse`] and from a
/// validated archive are at most [`MAX_DEPTH`] deep.
pub fn write_value<T: JsonTree>(value: &T, out: &mut Vec<u8>) {
    match value.node() {
        Node::Null => out.extend_from_slice(b"null"),
        Node::Bool(true) => out.extend_from_slice(b"true"),
        Node::Bool(false) => out.extend_from_slice(b"false"),
        Node::Number(n) => write_number(n, out),
        Node::String(s) => write_string(s, out),
        Node::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Node::Object(members) => {
            out.push(b'{');
            for (i, m) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(m.key(), out);
                out.push(b':');
                write_value(m.value(), out);
            }
            out.push(b'}');
        }
    }
}

/// Appends a number as JSON.
pub fn write_number(n: NumberRef<'_>, out: &mut Vec<u8>) {
    match n {
        NumberRef::PosInt(u) => out.extend_from_slice(itoa_u64(u, &mut [0; 20])),
        NumberRef::NegInt(i) => {
            if i < 0 {
                out.push(b'-');
            }
            out.extend_from_slice(itoa_u64(i.unsigned_abs(), &mut [0; 20]));
        }
        NumberRef::Float(f) if f.is_finite() => {
            let mut buf = ryu::Buffer::new();
            out.extend_from_slice(buf.format_finite(f).as_bytes());
        }
        NumberRef::Float(_) => out.extend_from_slice(b"null"),
        NumberRef::Big(s) => {
            // A `Big` built by hand might not be a JSON number; never emit invalid JSON.
            if is_json_number(s) {
                out.extend_from_slice(s.as_bytes())
            } else {
                out.extend_from_slice(b"null")
            }
        }
    }
}

fn itoa_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// True when `s` is exactly one JSON number.
pub fn is_json_number(s: &str) -> bool {
    let mut p = Parser {
        s: s.as_bytes(),
        pos: 0,
        depth: 0,
    };
    matches!(p.peek(), Some(b'-' | b'0'..=b'9')) && p.number().is_ok() && p.pos == s.len()
}

/// Reads `s`, which must be exactly one JSON number, as the parser would read it.
pub fn parse_number(s: &str) -> Result<Number> {
    let mut p = Parser {
        s: s.as_bytes(),
        pos: 0,
        depth: 0,
    };
    if !matches!(p.peek(), Some(b'-' | b'0'..=b'9')) {
        return Err(p.err("expected a number"));
    }
    let n = p.number()?;
    if p.pos != s.len() {
        return Err(p.err("trailing characters after the number"));
    }
    Ok(n)
}

/// Appends `s` as a JSON string literal.
pub fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(s: &str) -> String {
        parse(s.as_bytes()).unwrap().to_json()
    }

    #[test]
    fn round_trips_keep_order_and_duplicates() {
        assert_eq!(rt(r#"{"z":1,"a":2,"z":3}"#), r#"{"z":1,"a":2,"z":3}"#);
        assert_eq!(rt(" [ 1 , -2 , 3.5 , \"x\" ] "), r#"[1,-2,3.5,"x"]"#);
        assert_eq!(rt("{}"), "{}");
        assert_eq!(rt("[]"), "[]");
    }

    #[test]
    fn numbers_are_exact() {
        assert_eq!(rt("18446744073709551615"), "18446744073709551615");
        assert_eq!(rt("18446744073709551616"), "18446744073709551616");
        assert_eq!(rt("-9223372036854775808"), "-9223372036854775808");
        assert_eq!(rt("-9223372036854775809"), "-9223372036854775809");
        assert_eq!(
            rt("123456789012345678901234567890"),
            "123456789012345678901234567890"
        );
        assert_eq!(rt("1e400"), "1e400");
        assert_eq!(rt("-0"), "-0.0");
        for f in [0.1, 1.0 / 3.0, 1e300, 5e-324, f64::MAX, -2.5e-7, 123456.789] {
            let text = rt(&format!("{f:e}"));
            let back: f64 = text.parse().unwrap();
            assert_eq!(back.to_bits(), f.to_bits(), "{f} -> {text}");
        }
    }

    #[test]
    fn strings_escape_and_unescape() {
        let s = "quote\" backslash\\ nl\n tab\t ctl\u{1} é 漢字 🎉";
        let mut out = Vec::new();
        write_string(s, &mut out);
        let back = parse(&out).unwrap();
        assert_eq!(back.as_str(), Some(s));
        assert_eq!(
            parse(br#""\ud83c\udf89 \u00e9 \/""#).unwrap().as_str(),
            Some("🎉 é /")
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        for bad in [
            &b""[..],
            b"{",
            b"[1,]",
            b"{\"a\" 1}",
            b"01",
            b"1.",
            b"1e",
            b"-",
            b"tru",
            b"\"abc",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\ud800\\u0041\"",
            b"\"\\x\"",
            b"\"a\nb\"",
            b"1 2",
            b"\xff\xfe",
            b"{\"a\":1,}",
            b"nul",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "1 MB input is slow under miri; no unsafe code here")]
    fn depth_is_bounded() {
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        let e = parse(deep.as_bytes()).unwrap_err();
        assert!(e.message().contains("nesting"), "{e}");
        // Far deeper input is refused just as cleanly (no stack overflow).
        let hostile = "[".repeat(1_000_000);
        assert!(parse(hostile.as_bytes()).is_err());
    }

    #[test]
    fn big_numbers_written_by_hand_stay_valid_json() {
        let v = Value::Array(vec![
            Value::Number(Number::Big("not a number".into())),
            Value::Number(Number::Float(f64::NAN)),
        ]);
        assert_eq!(v.to_json(), "[null,null]");
    }
}
