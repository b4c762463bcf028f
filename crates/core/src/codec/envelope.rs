//! The message types that cross process and language boundaries.
//!
//! An [`Envelope`] carries one MCP / JSON-RPC 2.0 message or one engine task, with the
//! routing metadata the engine needs (kind, priority, timestamps). A [`Message`] is the root
//! of every archive: one envelope, or a JSON-RPC batch of them.

use rkyv::{Archive, Deserialize, Serialize};

use super::value::{Member, Number, Value};

pub use crate::priority::{ArchivedPriority, Priority};

/// What an envelope carries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[repr(u8)]
pub enum Kind {
    /// A JSON-RPC request: has an id and a method.
    Request = 0,
    /// A JSON-RPC success response: has an id and a result.
    Response = 1,
    /// A JSON-RPC notification: a method, no id.
    #[default]
    Notification = 2,
    /// An engine task for an agent: a method and params; written as a request in JSON.
    Task = 3,
    /// The result of a task; written as a response in JSON.
    Result = 4,
    /// A JSON-RPC error response: an id (maybe null) and an error object.
    Error = 5,
}

impl Kind {
    /// All kinds, in code order.
    pub const ALL: [Kind; 6] = [
        Kind::Request,
        Kind::Response,
        Kind::Notification,
        Kind::Task,
        Kind::Result,
        Kind::Error,
    ];

    /// The kind with the stable code `code` (as in the C ABI's `EMF_KIND_*`).
    pub fn from_code(code: u32) -> Option<Kind> {
        Kind::ALL.get(code as usize).copied()
    }

    /// A lower-case name (`"request"`, `"task"`, ...), as the Erlang host uses for atoms.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Response => "response",
            Kind::Notification => "notification",
            Kind::Task => "task",
            Kind::Result => "result",
            Kind::Error => "error",
        }
    }
}

impl ArchivedKind {
    /// The native kind.
    pub fn to_native(self) -> Kind {
        match self {
            ArchivedKind::Request => Kind::Request,
            ArchivedKind::Response => Kind::Response,
            ArchivedKind::Notification => Kind::Notification,
            ArchivedKind::Task => Kind::Task,
            ArchivedKind::Result => Kind::Result,
            ArchivedKind::Error => Kind::Error,
        }
    }
}

/// A JSON-RPC id: a string, a number, or `null` (only in error responses to unreadable
/// requests).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum Id {
    /// `null`
    Null,
    /// A number (integers exactly, as in [`Number`]).
    Number(Number),
    /// A string.
    String(String),
}

impl From<u64> for Id {
    fn from(n: u64) -> Self {
        Id::Number(Number::PosInt(n))
    }
}
impl From<&str> for Id {
    fn from(s: &str) -> Self {
        Id::String(s.to_owned())
    }
}

/// A JSON-RPC error object.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ErrorObject {
    /// The error code (JSON-RPC reserves -32768..=-32000).
    pub code: i64,
    /// A short description.
    pub message: String,
    /// Optional detail.
    pub data: Option<Value>,
}

/// One message: an MCP / JSON-RPC 2.0 message or an engine task, with routing metadata.
///
/// ```
/// use erlmcp_flow::codec::{Envelope, Kind, Priority, Value};
/// let task = Envelope::task("tools/call", Value::Object(vec![]), Priority::High);
/// assert_eq!(task.kind, Kind::Task);
/// assert_eq!(task.method.as_deref(), Some("tools/call"));
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct Envelope {
    /// What the envelope carries.
    pub kind: Kind,
    /// Scheduling priority.
    pub priority: Priority,
    /// The JSON-RPC id; `None` when the message has none (notifications, tasks without one).
    pub id: Option<Id>,
    /// The method, for requests, notifications and tasks.
    pub method: Option<String>,
    /// The params, for requests, notifications and tasks; `None` when absent (not `null`).
    pub params: Option<Value>,
    /// The result, for responses and task results.
    pub result: Option<Value>,
    /// The error, for error responses.
    pub error: Option<ErrorObject>,
    /// When the message was created, microseconds since the UNIX epoch (0 = unknown).
    pub created_at_us: u64,
    /// When the message stops being useful, microseconds since the UNIX epoch (0 = never).
    pub deadline_us: u64,
    /// Top-level JSON members that JSON-RPC does not define, kept in order so that the bridge
    /// is lossless.
    pub extra: Vec<Member>,
}

impl Envelope {
    /// A request with `id`, `method` and `params`.
    pub fn request(id: impl Into<Id>, method: impl Into<String>, params: Value) -> Self {
        Envelope {
            kind: Kind::Request,
            id: Some(id.into()),
            method: Some(method.into()),
            params: Some(params),
            created_at_us: now_us(),
            ..Envelope::default()
        }
    }

    /// A notification with `method` and `params`.
    pub fn notification(method: impl Into<String>, params: Value) -> Self {
        Envelope {
            kind: Kind::Notification,
            method: Some(method.into()),
            params: Some(params),
            created_at_us: now_us(),
            ..Envelope::default()
        }
    }

    /// A success response to `id`.
    pub fn response(id: impl Into<Id>, result: Value) -> Self {
        Envelope {
            kind: Kind::Response,
            id: Some(id.into()),
            result: Some(result),
            created_at_us: now_us(),
            ..Envelope::default()
        }
    }

    /// An engine task.
    pub fn task(method: impl Into<String>, params: Value, priority: Priority) -> Self {
        Envelope {
            kind: Kind::Task,
            priority,
            method: Some(method.into()),
            params: Some(params),
            created_at_us: now_us(),
            ..Envelope::default()
        }
    }
}

/// The root of every archive: one envelope or a JSON-RPC batch.
// The archived form must keep a single envelope inline (no extra pointer hop on the hot path),
// so the owned form is not boxed either; owned messages are short-lived.
#[allow(clippy::large_enum_variant)]
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum Message {
    /// One envelope.
    Single(Envelope),
    /// A JSON-RPC batch (a JSON array of messages), in order.
    Batch(Vec<Envelope>),
}

impl From<Envelope> for Message {
    fn from(e: Envelope) -> Self {
        Message::Single(e)
    }
}

impl Message {
    /// The envelopes, one for a single message.
    pub fn envelopes(&self) -> &[Envelope] {
        match self {
            Message::Single(e) => std::slice::from_ref(e),
            Message::Batch(v) => v,
        }
    }
}

impl ArchivedMessage {
    /// The envelopes, read in place; one for a single message.
    pub fn envelopes(&self) -> &[ArchivedEnvelope] {
        match self {
            ArchivedMessage::Single(e) => std::slice::from_ref(e),
            ArchivedMessage::Batch(v) => v.as_slice(),
        }
    }

    /// True for a JSON-RPC batch.
    pub fn is_batch(&self) -> bool {
        matches!(self, ArchivedMessage::Batch(_))
    }
}

impl ArchivedEnvelope {
    /// The method, if any.
    pub fn method(&self) -> Option<&str> {
        self.method.as_ref().map(|m| m.as_str())
    }
}

/// Microseconds since the UNIX epoch by the system clock (0 if the clock is before 1970).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
