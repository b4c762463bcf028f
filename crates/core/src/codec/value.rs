//! A JSON value that keeps everything JSON text can say.
//!
//! [`Value`] differs from the usual JSON trees in three ways that make the JSON-RPC bridge
//! lossless:
//!
//! * objects keep their members **in order, duplicates included** (a `Vec` of [`Member`]s,
//!   not a map);
//! * integers are exact at any size: they fit `u64`/`i64` or are kept as their decimal text
//!   ([`Number::Big`]);
//! * floats are IEEE-754 doubles parsed with correct rounding and written in the shortest form
//!   that reads back to the same double.
//!
//! The same type is archived with rkyv; [`ArchivedValue`] is read in place and validated before
//! use. Both implement [`JsonTree`], so one writer serves owned and archived values.

use rkyv::{Archive, Deserialize, Serialize};

/// A JSON number.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
#[rkyv(derive(Debug))]
pub enum Number {
    /// A non-negative integer that fits `u64`.
    PosInt(u64),
    /// A negative integer that fits `i64`.
    NegInt(i64),
    /// A number with a fraction or an exponent, as a finite double.
    Float(f64),
    /// An integer too large for 64 bits, or a float beyond the double range, kept as its exact
    /// JSON text (validated JSON number syntax).
    Big(String),
}

impl Number {
    /// The number as an `i128` when it is an integer that fits 64 bits.
    pub fn as_i128(&self) -> Option<i128> {
        match *self {
            Number::PosInt(u) => Some(u as i128),
            Number::NegInt(i) => Some(i as i128),
            _ => None,
        }
    }
}

impl PartialEq for Number {
    /// Numbers compare by value: `PosInt(5) == NegInt(5)` (a hand-built non-canonical form),
    /// floats by IEEE equality, big numbers by their text.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Number::Float(a), Number::Float(b)) => a == b,
            (Number::Big(a), Number::Big(b)) => a == b,
            (a, b) => match (a.as_i128(), b.as_i128()) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            },
        }
    }
}

/// A JSON value with ordered object members and exact numbers.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(
    derive(Debug),
    serialize_bounds(
        __S: rkyv::ser::Writer + rkyv::ser::Allocator,
        __S::Error: rkyv::rancor::Source,
    ),
    deserialize_bounds(__D::Error: rkyv::rancor::Source),
    bytecheck(bounds(
        __C: rkyv::validation::ArchiveContext,
        <__C as rkyv::rancor::Fallible>::Error: rkyv::rancor::Source,
    ))
)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string.
    String(String),
    /// An array.
    Array(#[rkyv(omit_bounds)] Vec<Value>),
    /// An object, members in document order.
    Object(#[rkyv(omit_bounds)] Vec<Member>),
}

/// One `"key": value` member of a JSON object.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(
    derive(Debug),
    serialize_bounds(
        __S: rkyv::ser::Writer + rkyv::ser::Allocator,
        __S::Error: rkyv::rancor::Source,
    ),
    deserialize_bounds(__D::Error: rkyv::rancor::Source),
    bytecheck(bounds(
        __C: rkyv::validation::ArchiveContext,
        <__C as rkyv::rancor::Fallible>::Error: rkyv::rancor::Source,
    ))
)]
pub struct Member {
    /// The member's key.
    pub key: String,
    /// The member's value.
    #[rkyv(omit_bounds)]
    pub value: Value,
}

impl Member {
    /// Creates a member.
    pub fn new(key: impl Into<String>, value: Value) -> Self {
        Member {
            key: key.into(),
            value,
        }
    }
}

impl Value {
    /// The first member named `key` when `self` is an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|m| m.key == key).map(|m| &m.value),
            _ => None,
        }
    }

    /// The string when `self` is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Parses JSON text; see [`crate::codec::json::parse`].
    pub fn from_json(text: &[u8]) -> crate::Result<Value> {
        super::json::parse(text)
    }

    /// Writes `self` as compact JSON text.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        super::json::write_value(self, &mut out);
        // The writer emits only valid UTF-8: keys and strings come from `String`s and every
        // other byte is ASCII.
        String::from_utf8(out).unwrap_or_default()
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Number(Number::PosInt(n))
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Self {
        if n >= 0 {
            Value::Number(Number::PosInt(n as u64))
        } else {
            Value::Number(Number::NegInt(n))
        }
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Number(Number::Float(f))
    }
}

impl ArchivedValue {
    /// The first member named `key` when `self` is an object.
    pub fn get(&self, key: &str) -> Option<&ArchivedValue> {
        match self {
            ArchivedValue::Object(members) => members
                .iter()
                .find(|m| m.key.as_str() == key)
                .map(|m| &m.value),
            _ => None,
        }
    }

    /// The string when `self` is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ArchivedValue::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The number as `i64` when it is an integer in range.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            ArchivedValue::Number(n) => NumberRef::from(n).as_i64(),
            _ => None,
        }
    }

    /// Writes `self` as compact JSON text.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        super::json::write_value(self, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A borrowed view of a number, owned or archived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NumberRef<'a> {
    /// See [`Number::PosInt`].
    PosInt(u64),
    /// See [`Number::NegInt`].
    NegInt(i64),
    /// See [`Number::Float`].
    Float(f64),
    /// See [`Number::Big`].
    Big(&'a str),
}

impl NumberRef<'_> {
    /// The number as `i64` when it is an integer in range.
    pub fn as_i64(self) -> Option<i64> {
        match self {
            NumberRef::PosInt(u) => i64::try_from(u).ok(),
            NumberRef::NegInt(i) => Some(i),
            _ => None,
        }
    }
}

impl<'a> From<&'a Number> for NumberRef<'a> {
    fn from(n: &'a Number) -> Self {
        match n {
            Number::PosInt(u) => NumberRef::PosInt(*u),
            Number::NegInt(i) => NumberRef::NegInt(*i),
            Number::Float(f) => NumberRef::Float(*f),
            Number::Big(s) => NumberRef::Big(s),
        }
    }
}

impl<'a> From<&'a ArchivedNumber> for NumberRef<'a> {
    fn from(n: &'a ArchivedNumber) -> Self {
        match n {
            ArchivedNumber::PosInt(u) => NumberRef::PosInt(u.to_native()),
            ArchivedNumber::NegInt(i) => NumberRef::NegInt(i.to_native()),
            ArchivedNumber::Float(f) => NumberRef::Float(f.to_native()),
            ArchivedNumber::Big(s) => NumberRef::Big(s.as_str()),
        }
    }
}

/// One node of a JSON tree, borrowed from an owned or an archived value.
pub enum Node<'a, T: JsonTree> {
    /// `null`
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(NumberRef<'a>),
    /// A string.
    String(&'a str),
    /// An array.
    Array(&'a [T]),
    /// An object.
    Object(&'a [T::Member]),
}

/// A JSON tree that can be walked without copying: implemented by [`Value`] and
/// [`ArchivedValue`] so that one writer serves both.
pub trait JsonTree: Sized {
    /// The object member type.
    type Member: JsonMember<Tree = Self>;
    /// The node at `self`.
    fn node(&self) -> Node<'_, Self>;
}

/// A member of a [`JsonTree`] object.
pub trait JsonMember {
    /// The tree type of the member's value.
    type Tree: JsonTree;
    /// The key.
    fn key(&self) -> &str;
    /// The value.
    fn value(&self) -> &Self::Tree;
}

impl JsonTree for Value {
    type Member = Member;
    fn node(&self) -> Node<'_, Self> {
        match self {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(n.into()),
            Value::String(s) => Node::String(s),
            Value::Array(a) => Node::Array(a),
            Value::Object(m) => Node::Object(m),
        }
    }
}

impl JsonMember for Member {
    type Tree = Value;
    fn key(&self) -> &str {
        &self.key
    }
    fn value(&self) -> &Value {
        &self.value
    }
}

impl JsonTree for ArchivedValue {
    type Member = ArchivedMember;
    fn node(&self) -> Node<'_, Self> {
        match self {
            ArchivedValue::Null => Node::Null,
            ArchivedValue::Bool(b) => Node::Bool(*b),
            ArchivedValue::Number(n) => Node::Number(n.into()),
            ArchivedValue::String(s) => Node::String(s.as_str()),
            ArchivedValue::Array(a) => Node::Array(a.as_slice()),
            ArchivedValue::Object(m) => Node::Object(m.as_slice()),
        }
    }
}

impl JsonMember for ArchivedMember {
    type Tree = ArchivedValue;
    fn key(&self) -> &str {
        self.key.as_str()
    }
    fn value(&self) -> &ArchivedValue {
        &self.value
    }
}
