//! Messages as a stream of value events, without JSON text: [`ValueBuilder`] builds a
//! [`Value`] (and from it a [`Message`] and an archive) from events, and [`visit_message`]
//! walks an archived message as the same events.
//!
//! This is how a host with its own data model (Erlang terms, Python objects) converts to and
//! from archives without writing or parsing JSON text: it drives a builder while walking its
//! own value, or builds its own value from the events of a visit.
//!
//! The events of a visit are what [`jsonrpc::write_envelope`] would write, in the same order:
//! each envelope is an object with `jsonrpc`, `id`, `method`, `params`, `result`, `error`
//! (`code`, `message`, `data`), then the extra members; a batch is an array of them. Arrays
//! and objects announce their number of items or members, so a consumer can allocate once.
//!
//! ```
//! use std::ops::ControlFlow;
//! use erlmcp_flow::codec::{self, events::{self, Event, ValueBuilder}, jsonrpc};
//! let mut b = ValueBuilder::new();
//! b.begin_object(2).unwrap();
//! b.key("method").unwrap();
//! b.string("tools/list").unwrap();
//! b.key("id").unwrap();
//! b.u64(1).unwrap();
//! b.end().unwrap();
//! let archive = b
//!     .finish_archive(jsonrpc::Metadata::default(), events::BuildOptions {
//!         implicit_version: true, // no "jsonrpc" member: "2.0" is implied
//!         ..Default::default()
//!     })
//!     .unwrap();
//! let view = codec::decode(&archive).unwrap();
//! let mut keys = Vec::new();
//! let _ = events::visit_message(view, &mut |e| {
//!     if let Event::Key(k) = e {
//!         keys.push(k.to_owned());
//!     }
//!     ControlFlow::<()>::Continue(())
//! });
//! assert_eq!(keys, ["jsonrpc", "id", "method"]);
//! ```

use std::ops::ControlFlow;

use super::envelope::{ArchivedId, ArchivedMessage, Kind, Message};
use super::json;
use super::jsonrpc::{self, Metadata};
use super::value::{JsonMember, JsonTree, Member, Node, Number, NumberRef, Value};
use super::EncodeOptions;
use crate::error::{Error, Result};

/// One event of a value stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event<'a> {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number (a [`NumberRef::Big`] is exact JSON number text: an integer beyond 64 bits or
    /// a float beyond the double range).
    Number(NumberRef<'a>),
    /// A string value.
    String(&'a str),
    /// The key of the next member of the enclosing object.
    Key(&'a str),
    /// The start of an array of this many items.
    BeginArray(usize),
    /// The start of an object of this many members.
    BeginObject(usize),
    /// The end of the innermost array or object.
    End,
}

/// Walks an archived (validated) message as events, exactly as
/// [`jsonrpc::write_message`] writes it. Stops at the first [`ControlFlow::Break`] of `f` and
/// returns it. Recursion is bounded by the depth of a validated archive.
pub fn visit_message<B>(
    msg: &ArchivedMessage,
    f: &mut impl FnMut(Event<'_>) -> ControlFlow<B>,
) -> ControlFlow<B> {
    let envs = msg.envelopes();
    if msg.is_batch() {
        f(Event::BeginArray(envs.len()))?;
        for e in envs.iter() {
            visit_envelope(e, f)?;
        }
        f(Event::End)
    } else {
        match envs.first() {
            Some(e) => visit_envelope(e, f),
            None => ControlFlow::Continue(()),
        }
    }
}

/// Walks one archived envelope as the events of its JSON-RPC object (see [`visit_message`]).
pub fn visit_envelope<B>(
    e: &super::envelope::ArchivedEnvelope,
    f: &mut impl FnMut(Event<'_>) -> ControlFlow<B>,
) -> ControlFlow<B> {
    // A response or result without a result is written with `"result": null`, as
    // `write_envelope` does.
    let null_result = e.result.is_none()
        && e.error.is_none()
        && matches!(e.kind.to_native(), Kind::Response | Kind::Result);
    let members = 1
        + usize::from(e.id.is_some())
        + usize::from(e.method.is_some())
        + usize::from(e.params.is_some())
        + usize::from(e.result.is_some() || null_result)
        + usize::from(e.error.is_some())
        + e.extra.len();
    f(Event::BeginObject(members))?;
    f(Event::Key("jsonrpc"))?;
    f(Event::String("2.0"))?;
    if let Some(id) = e.id.as_ref() {
        f(Event::Key("id"))?;
        match id {
            ArchivedId::Null => f(Event::Null)?,
            ArchivedId::Number(n) => match NumberRef::from(n) {
                NumberRef::Float(x) if !x.is_finite() => f(Event::Null)?,
                n => f(Event::Number(n))?,
            },
            ArchivedId::String(s) => f(Event::String(s.as_str()))?,
        }
    }
    if let Some(m) = e.method.as_ref() {
        f(Event::Key("method"))?;
        f(Event::String(m.as_str()))?;
    }
    if let Some(p) = e.params.as_ref() {
        f(Event::Key("params"))?;
        visit_value(p, f)?;
    }
    if let Some(r) = e.result.as_ref() {
        f(Event::Key("result"))?;
        visit_value(r, f)?;
    } else if null_result {
        f(Event::Key("result"))?;
        f(Event::Null)?;
    }
    if let Some(err) = e.error.as_ref() {
        f(Event::Key("error"))?;
        f(Event::BeginObject(2 + usize::from(err.data.is_some())))?;
        f(Event::Key("code"))?;
        let code = err.code.to_native();
        f(Event::Number(if code >= 0 {
            NumberRef::PosInt(code as u64)
        } else {
            NumberRef::NegInt(code)
        }))?;
        f(Event::Key("message"))?;
        f(Event::String(err.message.as_str()))?;
        if let Some(d) = err.data.as_ref() {
            f(Event::Key("data"))?;
            visit_value(d, f)?;
        }
        f(Event::End)?;
    }
    for m in e.extra.iter() {
        f(Event::Key(m.key.as_str()))?;
        visit_value(&m.value, f)?;
    }
    f(Event::End)
}

/// Walks any [`JsonTree`] (an owned or archived value) as events.
pub fn visit_value<T: JsonTree, B>(
    v: &T,
    f: &mut impl FnMut(Event<'_>) -> ControlFlow<B>,
) -> ControlFlow<B> {
    match v.node() {
        Node::Null => f(Event::Null),
        Node::Bool(b) => f(Event::Bool(b)),
        // As `json::write_number`: a non-finite float (only a hand-built or damaged value
        // holds one) is `null`.
        Node::Number(NumberRef::Float(x)) if !x.is_finite() => f(Event::Null),
        Node::Number(n) => f(Event::Number(n)),
        Node::String(s) => f(Event::String(s)),
        Node::Array(items) => {
            f(Event::BeginArray(items.len()))?;
            for i in items {
                visit_value(i, f)?;
            }
            f(Event::End)
        }
        Node::Object(members) => {
            f(Event::BeginObject(members.len()))?;
            for m in members {
                f(Event::Key(m.key()))?;
                visit_value(m.value(), f)?;
            }
            f(Event::End)
        }
    }
}

/// How [`ValueBuilder::finish_message`] and [`ValueBuilder::finish_archive`] turn the value
/// into a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// A message object without a `jsonrpc` member is taken as `"jsonrpc": "2.0"` (for hosts
    /// whose users write `#{method => ..., params => ...}`). A `jsonrpc` member that is there
    /// must still be `"2.0"`.
    pub implicit_version: bool,
    /// How the archive is written (a checksum).
    pub encoding: EncodeOptions,
}

/// Capacity reserved up front for a container announced with `n` items: the announced count
/// is a hint from the caller, so a huge one cannot reserve memory by itself.
const MAX_RESERVE: usize = 4096;

enum Container {
    Array(Vec<Value>),
    Object {
        members: Vec<Member>,
        key: Option<String>,
    },
}

struct Frame {
    container: Container,
    /// The key this container will have in its parent object (None in an array or at the
    /// root).
    key_in_parent: Option<String>,
}

/// Builds a [`Value`] from events, checking that they nest correctly; see the module
/// documentation. Every method either applies its event or returns an error and leaves the
/// builder as it was, so a caller may report the error and go on or give up.
///
/// Nesting deeper than [`json::MAX_DEPTH`] is refused (as the JSON parser does). Strings are
/// `&str`, so UTF-8 is guaranteed by the type; [`ValueBuilder::string_bytes`] and
/// [`ValueBuilder::key_bytes`] check raw bytes.
#[derive(Default)]
pub struct ValueBuilder {
    stack: Vec<Frame>,
    root: Option<Value>,
    unique_keys: bool,
    /// About the length of the value's JSON text so far (see [`ValueBuilder::charge`]).
    size: usize,
}

impl ValueBuilder {
    /// A builder that keeps duplicate object keys (as JSON text may have them).
    pub fn new() -> Self {
        ValueBuilder::default()
    }

    /// A builder that refuses an object with two members of the same key (for hosts whose
    /// maps cannot hold them, e.g. an Erlang map with both `a` and `<<"a">>` as keys).
    pub fn with_unique_keys() -> Self {
        ValueBuilder {
            unique_keys: true,
            ..ValueBuilder::default()
        }
    }

    /// Drops everything built so far.
    pub fn reset(&mut self) {
        self.stack.clear();
        self.root = None;
        self.size = 0;
    }

    /// Counts `n` more bytes of (about) the value's JSON text: 2 for each value, key or
    /// container, plus the bytes of strings, keys and number texts. A value past
    /// [`jsonrpc::MAX_JSON_LEN`] (the JSON bridge's limit) is refused with `TooLarge`: a host
    /// walking a term of shared subterms (tiny in memory, huge when walked) stops there instead
    /// of exhausting memory.
    fn charge(&mut self, n: usize) -> Result<()> {
        let size = self.size.saturating_add(n.saturating_add(2));
        if size > jsonrpc::MAX_JSON_LEN {
            return Err(Error::new(
                crate::ErrorKind::TooLarge,
                format!(
                    "the value exceeds the limit of {} bytes of JSON text (at {})",
                    jsonrpc::MAX_JSON_LEN,
                    self.path()
                ),
            ));
        }
        self.size = size;
        Ok(())
    }

    /// Where the next value goes, as a path: `$` for the root, `$.params.items[3]`.
    pub fn path(&self) -> String {
        let mut p = String::from("$");
        for (i, frame) in self.stack.iter().enumerate() {
            if i > 0 {
                push_step(&mut p, &self.stack[i - 1], frame.key_in_parent.as_deref());
            }
        }
        if let Some(top) = self.stack.last() {
            let key = match &top.container {
                Container::Object { key, .. } => key.as_deref(),
                Container::Array(_) => None,
            };
            if key.is_some() || matches!(top.container, Container::Array(_)) {
                push_step(&mut p, top, key);
            }
        }
        p
    }

    fn err(&self, what: impl std::fmt::Display) -> Error {
        Error::invalid(format!("{what} (at {})", self.path()))
    }

    /// Checks that a value can go where the builder is now.
    fn check_slot(&self) -> Result<()> {
        match self.stack.last() {
            None if self.root.is_some() => Err(Error::invalid(
                "the value is already complete (one root value only)",
            )),
            None => Ok(()),
            Some(Frame {
                container: Container::Object { key: None, .. },
                ..
            }) => Err(self.err("a value inside an object needs a key first")),
            Some(_) => Ok(()),
        }
    }

    /// Places a finished value (after `check_slot` passed).
    fn place(&mut self, v: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(v),
            Some(Frame {
                container: Container::Array(items),
                ..
            }) => items.push(v),
            Some(Frame {
                container: Container::Object { members, key },
                ..
            }) => {
                let key = key.take().unwrap_or_default();
                members.push(Member { key, value: v });
            }
        }
    }

    fn scalar(&mut self, v: Value) -> Result<()> {
        self.check_slot()?;
        self.charge(match &v {
            Value::String(s) => s.len(),
            _ => 3,
        })?;
        self.place(v);
        Ok(())
    }

    /// `null`.
    pub fn null(&mut self) -> Result<()> {
        self.scalar(Value::Null)
    }

    /// `true` / `false`.
    pub fn bool(&mut self, b: bool) -> Result<()> {
        self.scalar(Value::Bool(b))
    }

    /// An integer.
    pub fn i64(&mut self, i: i64) -> Result<()> {
        self.scalar(Value::from(i))
    }

    /// A non-negative integer.
    pub fn u64(&mut self, u: u64) -> Result<()> {
        self.scalar(Value::from(u))
    }

    /// A float; NaN and infinities are refused (JSON has no such numbers).
    pub fn f64(&mut self, f: f64) -> Result<()> {
        if !f.is_finite() {
            return Err(self.err(format!("{f} is not a JSON number")));
        }
        self.scalar(Value::Number(Number::Float(f)))
    }

    /// An integer of any size given as its sign and magnitude, little-endian bytes (leading
    /// zero bytes allowed). Kept as `u64`/`i64` when it fits, else exactly as
    /// [`Number::Big`].
    pub fn big_int_le(&mut self, negative: bool, magnitude: &[u8]) -> Result<()> {
        self.check_slot()?;
        // About 2.41 decimal digits a byte.
        self.charge(magnitude.len().saturating_mul(5) / 2)?;
        self.place(Value::Number(int_from_le(negative, magnitude)));
        Ok(())
    }

    /// A number given as JSON number text (`-12`, `1.5e3`, `123456789012345678901234567890`,
    /// `1e400`), read exactly as the JSON parser reads it.
    pub fn number_text(&mut self, text: &str) -> Result<()> {
        self.check_slot()?;
        self.charge(text.len())?;
        let n = json::parse_number(text).map_err(|_| {
            self.err(format!(
                "{:?} is not a JSON number",
                text.chars().take(40).collect::<String>()
            ))
        })?;
        self.place(Value::Number(n));
        Ok(())
    }

    /// A string.
    pub fn string(&mut self, s: &str) -> Result<()> {
        self.scalar(Value::String(s.to_owned()))
    }

    /// A string given as bytes, which must be UTF-8.
    pub fn string_bytes(&mut self, s: &[u8]) -> Result<()> {
        let s = self.utf8(s, "string")?;
        self.string(s)
    }

    fn utf8<'a>(&self, s: &'a [u8], what: &str) -> Result<&'a str> {
        std::str::from_utf8(s).map_err(|e| {
            self.err(format!(
                "a {what} must be UTF-8 text (first bad byte at offset {})",
                e.valid_up_to()
            ))
        })
    }

    /// The key of the next member of the enclosing object.
    pub fn key(&mut self, k: &str) -> Result<()> {
        if matches!(
            self.stack.last(),
            Some(Frame {
                container: Container::Object { key: None, .. },
                ..
            })
        ) {
            self.charge(k.len())?;
        }
        match self.stack.last_mut() {
            Some(Frame {
                container:
                    Container::Object {
                        key: key @ None, ..
                    },
                ..
            }) => {
                *key = Some(k.to_owned());
                Ok(())
            }
            Some(Frame {
                container: Container::Object { .. },
                ..
            }) => Err(self.err("two keys in a row: the previous key has no value")),
            _ => Err(self.err("a key outside an object")),
        }
    }

    /// A key given as bytes, which must be UTF-8.
    pub fn key_bytes(&mut self, k: &[u8]) -> Result<()> {
        let k = self.utf8(k, "key")?;
        self.key(k)
    }

    fn begin(&mut self, container: Container) -> Result<()> {
        self.check_slot()?;
        if self.stack.len() >= json::MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {} levels", json::MAX_DEPTH)));
        }
        self.charge(0)?;
        let key_in_parent = match self.stack.last_mut() {
            Some(Frame {
                container: Container::Object { key, .. },
                ..
            }) => key.take(),
            _ => None,
        };
        self.stack.push(Frame {
            container,
            key_in_parent,
        });
        Ok(())
    }

    /// The start of an array of (about) `n` items; `n` only reserves memory.
    pub fn begin_array(&mut self, n: usize) -> Result<()> {
        self.begin(Container::Array(Vec::with_capacity(n.min(MAX_RESERVE))))
    }

    /// The start of an object of (about) `n` members; `n` only reserves memory.
    pub fn begin_object(&mut self, n: usize) -> Result<()> {
        self.begin(Container::Object {
            members: Vec::with_capacity(n.min(MAX_RESERVE)),
            key: None,
        })
    }

    /// The end of the innermost array or object.
    pub fn end(&mut self) -> Result<()> {
        match self.stack.last() {
            None => return Err(Error::invalid("an end without an array or object to close")),
            Some(Frame {
                container: Container::Object { key: Some(k), .. },
                ..
            }) => return Err(self.err(format!("the key {k:?} has no value"))),
            Some(Frame {
                container: Container::Object { members, .. },
                ..
            }) if self.unique_keys => {
                if let Some(k) = duplicate_key(members) {
                    return Err(Error::invalid(format!(
                        "two members of an object have the key {k:?} (at {})",
                        self.path()
                    )));
                }
            }
            Some(_) => {}
        }
        let frame = self.stack.pop().expect("checked non-empty above");
        let value = match frame.container {
            Container::Array(items) => Value::Array(items),
            Container::Object { members, .. } => Value::Object(members),
        };
        if let Some(Frame {
            container: Container::Object { key, .. },
            ..
        }) = self.stack.last_mut()
        {
            *key = frame.key_in_parent;
        }
        self.place(value);
        Ok(())
    }

    /// Whether a whole value has been built (and nothing is open).
    pub fn is_complete(&self) -> bool {
        self.stack.is_empty() && self.root.is_some()
    }

    /// The value built; the builder is empty afterwards, also on error.
    pub fn finish(&mut self) -> Result<Value> {
        let open = self.stack.len();
        let root = self.root.take();
        self.reset();
        if open > 0 {
            return Err(Error::invalid(format!(
                "the value is incomplete: {open} array(s) or object(s) not ended"
            )));
        }
        root.ok_or_else(|| Error::invalid("no value was built"))
    }

    /// The message the value says (one JSON-RPC message object or a batch array of them), as
    /// [`jsonrpc::message_from_value`] reads it; the builder is empty afterwards.
    pub fn finish_message(&mut self, meta: Metadata, opts: BuildOptions) -> Result<Message> {
        let v = self.finish()?;
        jsonrpc::message_from_value(v, meta, opts.implicit_version)
    }

    /// [`ValueBuilder::finish_message`], then the archive of the message.
    pub fn finish_archive(
        &mut self,
        meta: Metadata,
        opts: BuildOptions,
    ) -> Result<rkyv::util::AlignedVec> {
        let msg = self.finish_message(meta, opts)?;
        super::encode_with(&msg, opts.encoding)
    }
}

fn push_step(p: &mut String, parent: &Frame, key: Option<&str>) {
    match (&parent.container, key) {
        (Container::Object { .. }, Some(k)) => {
            p.push('.');
            p.extend(k.chars().take(64));
        }
        (Container::Array(items), _) => {
            p.push_str(&format!("[{}]", items.len()));
        }
        (Container::Object { .. }, None) => {}
    }
}

fn duplicate_key(members: &[Member]) -> Option<&str> {
    if members.len() <= 8 {
        for (i, m) in members.iter().enumerate() {
            if members[..i].iter().any(|o| o.key == m.key) {
                return Some(&m.key);
            }
        }
        return None;
    }
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    members
        .iter()
        .find(|m| !seen.insert(m.key.as_str()))
        .map(|m| m.key.as_str())
}

/// The integer of a sign and a little-endian magnitude.
pub fn int_from_le(negative: bool, magnitude: &[u8]) -> Number {
    let len = magnitude.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mag = &magnitude[..len];
    if mag.len() <= 8 {
        let mut v = [0u8; 8];
        v[..mag.len()].copy_from_slice(mag);
        let u = u64::from_le_bytes(v);
        if !negative || u == 0 {
            return Number::PosInt(u);
        }
        if u <= 1 << 63 {
            return Number::NegInt((u as i64).wrapping_neg());
        }
    }
    // Base 10^9 digits by repeated division of 32-bit limbs.
    let mut limbs: Vec<u32> = mag
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect();
    let mut chunks = Vec::new();
    while !limbs.is_empty() {
        let mut rem = 0u64;
        for l in limbs.iter_mut().rev() {
            let cur = (rem << 32) | u64::from(*l);
            *l = (cur / 1_000_000_000) as u32;
            rem = cur % 1_000_000_000;
        }
        chunks.push(rem as u32);
        while limbs.last() == Some(&0) {
            limbs.pop();
        }
    }
    let mut s = String::with_capacity(chunks.len() * 9 + 1);
    if negative {
        s.push('-');
    }
    let mut iter = chunks.iter().rev();
    if let Some(first) = iter.next() {
        s.push_str(&first.to_string());
    }
    for c in iter {
        s.push_str(&format!("{c:09}"));
    }
    Number::Big(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// Replays events into a builder.
    fn replay(events: &[Event<'_>], b: &mut ValueBuilder) -> Result<()> {
        for e in events {
            match *e {
                Event::Null => b.null(),
                Event::Bool(v) => b.bool(v),
                Event::Number(NumberRef::PosInt(u)) => b.u64(u),
                Event::Number(NumberRef::NegInt(i)) => b.i64(i),
                Event::Number(NumberRef::Float(f)) => b.f64(f),
                Event::Number(NumberRef::Big(t)) => b.number_text(t),
                Event::String(s) => b.string(s),
                Event::Key(k) => b.key(k),
                Event::BeginArray(n) => b.begin_array(n),
                Event::BeginObject(n) => b.begin_object(n),
                Event::End => b.end(),
            }?;
        }
        Ok(())
    }

    /// Events of an archive, owned.
    fn events_of(archive: &[u8]) -> Vec<String> {
        let view = codec::decode(archive).unwrap();
        let mut out = Vec::new();
        let _ = visit_message(view, &mut |e| {
            out.push(format!("{e:?}"));
            ControlFlow::<()>::Continue(())
        });
        out
    }

    /// JSON text -> events (through the archive of the JSON path) -> builder -> archive: the
    /// same message, the same events, the same JSON.
    fn equivalent(json: &str) {
        let meta = Metadata {
            created_at_us: 5,
            ..Metadata::default()
        };
        let from_json = jsonrpc::json_to_archive(json.as_bytes(), meta).unwrap();
        let view = codec::decode(&from_json).unwrap();
        let mut b = ValueBuilder::new();
        let r = visit_message(view, &mut |e| match replay(&[e], &mut b) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        });
        assert!(r.is_continue(), "{json}: {r:?}");
        let built = b.finish_archive(meta, BuildOptions::default()).unwrap();
        assert_eq!(&built[..], &from_json[..], "{json}");
        assert_eq!(events_of(&built), events_of(&from_json));
        assert_eq!(
            codec::to_owned(codec::decode(&built).unwrap()).unwrap(),
            jsonrpc::from_json_with(json.as_bytes(), meta).unwrap()
        );
        assert_eq!(
            jsonrpc::archive_to_json(&built).unwrap(),
            jsonrpc::archive_to_json(&from_json).unwrap()
        );
    }

    #[test]
    fn builder_and_json_paths_agree() {
        for json in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","method":"n","params":[1,-2,3.5,-0.0,1e300,5e-324,null,true,false]}"#,
            r#"{"jsonrpc":"2.0","id":"x","result":{"big":123456789012345678901234567890,"neg":-99999999999999999999999,"huge":1e400,"u":18446744073709551615,"i":-9223372036854775808}}"#,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"bad","data":{"a":[{"b":[[]]}],"é":"漢字 🎉\n\"q\""}}}"#,
            r#"{"jsonrpc":"2.0","id":7,"error":{"code":5,"message":"m"},"x-trace":[1,{"k":"v"}]}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b","params":{}},{"jsonrpc":"2.0","id":2,"result":null}]"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"m","params":{"z":1,"a":2,"z":3}}"#,
        ] {
            equivalent(json);
        }
        let deep = format!(
            r#"{{"jsonrpc":"2.0","method":"m","params":{}{}}}"#,
            "[".repeat(json::MAX_DEPTH - 1),
            "]".repeat(json::MAX_DEPTH - 1)
        );
        equivalent(&deep);
    }

    #[test]
    fn builder_to_archive_to_visit_gives_the_events_back() {
        let mut b = ValueBuilder::new();
        let events = [
            Event::BeginObject(5),
            Event::Key("jsonrpc"),
            Event::String("2.0"),
            Event::Key("id"),
            Event::Number(NumberRef::PosInt(3)),
            Event::Key("method"),
            Event::String("tools/call"),
            Event::Key("params"),
            Event::BeginObject(3),
            Event::Key("n"),
            Event::Number(NumberRef::Big("123456789012345678901234567890")),
            Event::Key("f"),
            Event::Number(NumberRef::Float(0.1)),
            Event::Key("l"),
            Event::BeginArray(2),
            Event::Number(NumberRef::NegInt(-4)),
            Event::Bool(false),
            Event::End,
            Event::End,
            Event::Key("x"),
            Event::Null,
            Event::End,
        ];
        replay(&events, &mut b).unwrap();
        let archive = b
            .finish_archive(Metadata::default(), BuildOptions::default())
            .unwrap();
        let want: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
        assert_eq!(events_of(&archive), want);
    }

    #[test]
    fn implicit_version_and_jsonrpc_rules() {
        let build = |implicit: bool, with_version: Option<&str>, params: u64| {
            let mut b = ValueBuilder::new();
            b.begin_object(2).unwrap();
            if let Some(v) = with_version {
                b.key("jsonrpc").unwrap();
                b.string(v).unwrap();
            }
            b.key("method").unwrap();
            b.string("m").unwrap();
            if params > 0 {
                b.key("params").unwrap();
                b.u64(params).unwrap();
            }
            b.end().unwrap();
            b.finish_message(
                Metadata::default(),
                BuildOptions {
                    implicit_version: implicit,
                    ..Default::default()
                },
            )
        };
        // The engine's own messages.
        let e = build(false, None, 0).unwrap_err();
        assert!(e.message().contains("missing \"jsonrpc\""), "{e}");
        let m = build(true, None, 0).unwrap();
        assert_eq!(m.envelopes()[0].kind, Kind::Notification);
        assert!(build(false, Some("2.0"), 0).is_ok());
        let e = build(true, None, 1).unwrap_err();
        assert!(
            e.message()
                .contains("\"params\" must be an object or an array"),
            "{e}"
        );
        let e = build(true, Some("1.0"), 0).unwrap_err();
        assert!(e.message().contains("must be the string \"2.0\""), "{e}");
    }

    #[test]
    fn misuse_is_refused_and_leaves_the_builder_as_it_was() {
        let mut b = ValueBuilder::new();
        assert!(b.end().is_err());
        assert!(b.key("k").is_err());
        b.begin_object(1).unwrap();
        let e = b.u64(1).unwrap_err();
        assert!(e.message().contains("needs a key first"), "{e}");
        b.key("params").unwrap();
        assert!(b.key("again").is_err());
        b.begin_array(0).unwrap();
        assert!(b.key("k").is_err());
        let e = b.f64(f64::NAN).unwrap_err();
        assert!(e.message().contains("at $.params[0]"), "{e}");
        let e = b.string_bytes(b"a\xffb").unwrap_err();
        assert!(e.message().contains("UTF-8"), "{e}");
        assert!(b.number_text("1.").is_err());
        b.end().unwrap();
        b.key("k").unwrap();
        assert!(b.end().unwrap_err().message().contains("has no value"));
        b.null().unwrap();
        b.end().unwrap();
        assert!(b.is_complete());
        assert!(b.null().is_err());
        let v = b.finish().unwrap();
        assert_eq!(v.to_json(), r#"{"params":[],"k":null}"#);
        assert!(b.finish().is_err());
        b.begin_array(1).unwrap();
        assert!(b.finish().unwrap_err().message().contains("not ended"));
    }

    #[test]
    fn depth_is_bounded_like_the_parser() {
        let mut b = ValueBuilder::new();
        for _ in 0..json::MAX_DEPTH {
            b.begin_array(1).unwrap();
        }
        let e = b.begin_array(1).unwrap_err();
        assert!(e.message().contains("nesting deeper"), "{e}");
        assert!(b.begin_object(1).is_err());
    }

    #[test]
    fn unique_keys_when_asked() {
        for n in [2usize, 20] {
            let mut b = ValueBuilder::with_unique_keys();
            b.begin_object(n).unwrap();
            b.key("params").unwrap();
            b.begin_object(n).unwrap();
            for i in 0..n {
                b.key(&format!("k{}", i.min(n - 2))).unwrap();
                b.null().unwrap();
            }
            let e = b.end().unwrap_err();
            assert!(e.message().contains("the key \"k"), "{e}");
            assert!(e.message().contains("at $.params"), "{e}");
        }
        let mut b = ValueBuilder::new();
        b.begin_object(2).unwrap();
        for _ in 0..2 {
            b.key("a").unwrap();
            b.null().unwrap();
        }
        b.end().unwrap();
    }

    #[test]
    fn big_integers_from_magnitudes() {
        let big = |neg, m: &[u8]| match int_from_le(neg, m) {
            Number::Big(s) => s,
            n => format!("{n:?}"),
        };
        assert_eq!(int_from_le(false, &[]), Number::PosInt(0));
        assert_eq!(int_from_le(true, &[0, 0]), Number::PosInt(0));
        assert_eq!(int_from_le(false, &[1, 1, 0, 0]), Number::PosInt(257));
        assert_eq!(int_from_le(true, &[5]), Number::NegInt(-5));
        assert_eq!(
            int_from_le(true, &[0, 0, 0, 0, 0, 0, 0, 0x80]),
            Number::NegInt(i64::MIN)
        );
        assert_eq!(
            big(true, &[1, 0, 0, 0, 0, 0, 0, 0x80]),
            "-9223372036854775809"
        );
        assert_eq!(int_from_le(false, &[0xff; 8]), Number::PosInt(u64::MAX));
        assert_eq!(
            big(false, &[0, 0, 0, 0, 0, 0, 0, 0, 1]),
            "18446744073709551616"
        );
        // 10^30 = 0x0c9f2c9cd04674edea40000000
        let mut m: Vec<u8> = (0..26)
            .step_by(2)
            .map(|i| u8::from_str_radix(&"0c9f2c9cd04674edea40000000"[i..i + 2], 16).unwrap())
            .collect();
        m.reverse();
        assert_eq!(big(false, &m), format!("1{}", "0".repeat(30)));
        assert_eq!(big(true, &m), format!("-1{}", "0".repeat(30)));
        // And the text agrees with the JSON parser's view of the same digits.
        let t = format!("1{}", "0".repeat(30));
        assert_eq!(json::parse_number(&t).unwrap(), int_from_le(false, &m));
    }

    #[test]
    fn non_finite_floats_visit_as_null_like_the_json_writer() {
        let msg: Message = codec::Envelope::request(
            1u64,
            "m",
            Value::Array(vec![Value::from(f64::NAN), Value::from(f64::INFINITY)]),
        )
        .into();
        let archive = codec::encode(&msg).unwrap();
        let events = events_of(&archive);
        assert_eq!(events[8..11], ["BeginArray(2)", "Null", "Null"]);
        assert!(jsonrpc::archive_to_json(&archive)
            .unwrap()
            .ends_with("[null,null]}"));
    }

    #[test]
    fn visiting_stops_when_asked() {
        let archive = jsonrpc::json_to_archive(
            br#"{"jsonrpc":"2.0","id":1,"method":"m","params":[1,2,3]}"#,
            Metadata::default(),
        )
        .unwrap();
        let view = codec::decode(&archive).unwrap();
        let mut seen = 0;
        let r = visit_message(view, &mut |e| {
            seen += 1;
            if e == Event::Number(NumberRef::PosInt(2)) {
                ControlFlow::Break("stop")
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(r, ControlFlow::Break("stop"));
        assert_eq!(seen, 11);
    }

    #[test]
    fn a_value_past_the_json_limit_is_too_large_and_leaves_the_builder_usable() {
        let mut b = ValueBuilder::new();
        b.begin_array(0).unwrap();
        let chunk = "x".repeat(1 << 20);
        let mut refused = None;
        for i in 0..200 {
            if let Err(e) = b.string(&chunk) {
                refused = Some((i, e));
                break;
            }
        }
        // 2 for the array, then 1 MiB + 2 per string: the 128th crosses 128 MiB.
        let (i, e) = refused.expect("the builder never refused");
        assert_eq!(i, 127);
        assert_eq!(e.kind(), crate::ErrorKind::TooLarge, "{e}");
        assert!(e.message().contains("at $[127]"), "{e}");
        // Big integers are charged before they are converted.
        let mut big = ValueBuilder::new();
        let e = big.big_int_le(false, &vec![0xff; 60 << 20]).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::TooLarge);
        // The refused event left the builder as it was.
        b.end().unwrap();
        match b.finish().unwrap() {
            Value::Array(items) => assert_eq!(items.len(), 127),
            other => panic!("{other:?}"),
        }
    }
}
