//! The crate's error type.
//!
//! Every fallible call in the engine returns [`Error`]: a stable [`ErrorKind`] that the C ABI
//! maps one-to-one onto an `emf_status_t` code, plus a human-readable message that says what
//! was wrong with the input (never just "error").

use std::borrow::Cow;
use std::fmt;

/// What went wrong, in a form a caller can act on.
///
/// The C ABI maps each kind onto a status code that is never renumbered; new kinds are
/// only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An argument is wrong whatever the limits: malformed, not valid UTF-8 / JSON /
    /// JSON-RPC, an unknown code, a tuning parameter out of its range. (A size beyond a
    /// maximum is [`ErrorKind::TooLarge`].)
    InvalidArgument,
    /// A bounded structure is full; the caller keeps its item (back-pressure).
    Full,
    /// Nothing to take.
    Empty,
    /// A wait ran out of time.
    Timeout,
    /// The object was closed.
    Closed,
    /// Bytes failed validation: truncated, garbage, or otherwise not what they claim. The
    /// structure is always checked; a flipped bit in the content only where a CRC32C is present
    /// (index files, archives and ring frames made with a checksum).
    Corrupt,
    /// An operating-system I/O call failed, or a path is not a regular file.
    Io,
    /// The operation needs the Raft leader and this node is not it.
    NotLeader,
    /// The operation is not supported by this build or this object.
    Unsupported,
    /// A length, count or capacity beyond a limit set by the caller or the engine, or whose
    /// arithmetic overflows.
    TooLarge,
    /// A looked-up item does not exist.
    NotFound,
    /// The resource is held by another live participant (e.g. a second producer on a
    /// single-producer ring, or a segment name in use).
    Busy,
}

impl ErrorKind {
    /// A short lower-case name, stable across versions (used by the Erlang and Python hosts).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Full => "full",
            ErrorKind::Empty => "empty",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "closed",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Io => "io",
            ErrorKind::NotLeader => "not_leader",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Busy => "busy",
        }
    }
}

/// An engine error: a kind and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
}

impl Error {
    /// Creates an error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// Shorthand for [`ErrorKind::InvalidArgument`].
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// Shorthand for [`ErrorKind::Corrupt`].
    pub fn corrupt(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Corrupt, message)
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message, owned (static messages stay unallocated).
    pub fn into_message(self) -> Cow<'static, str> {
        self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, e.to_string())
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
