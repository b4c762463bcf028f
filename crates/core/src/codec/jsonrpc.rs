//! The JSON-RPC 2.0 bridge: MCP JSON text ⇄ [`Message`] ⇄ archive, losslessly.
//!
//! Mapping (JSON → envelope):
//!
//! | JSON members                     | kind           |
//! |----------------------------------|----------------|
//! | `method`, `id`                   | `Request`      |
//! | `method`, no `id`                | `Notification` |
//! | `result`, `id`                   | `Response`     |
//! | `error`, `id` (may be `null`)    | `Error`        |
//!
//! `"jsonrpc": "2.0"` is required. `params` must be an object or array, as the spec says;
//! an absent `params` stays absent (it is not turned into `null`). Members JSON-RPC does not
//! define are kept in [`Envelope::extra`], in order. A JSON array is a batch (never empty).
//!
//! Envelope → JSON writes `jsonrpc`, `id`, `method`, `params`/`result`/`error`, then the extra
//! members. `Task` envelopes are written as requests (or notifications without an id) and
//! `Result` envelopes as responses; priority and timestamps are engine metadata and do not
//! appear in JSON.
//!
//! "Lossless" means: JSON → archive → JSON gives a JSON value equal to the input, with every
//! object member in its original order except the message's top-level members, which are put
//! in the canonical order above; integers are exact at any size and floats read back to the
//! same double.

use super::envelope::{ArchivedEnvelope, ArchivedId, Envelope, ErrorObject, Id, Kind, Message};
use super::json;
use super::value::{ArchivedValue, Member, Number, NumberRef, Value};
use crate::error::{Error, Result};

/// The longest JSON text the bridge accepts (128 MiB). Parsing needs several times the text's
/// size in memory, so a limit keeps one hostile message from exhausting the host.
pub const MAX_JSON_LEN: usize = 128 << 20;

/// Metadata the JSON text does not carry, applied to every envelope parsed from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Priority for every envelope.
    pub priority: super::envelope::Priority,
    /// Creation time in µs since the epoch; 0 means "now".
    pub created_at_us: u64,
    /// Deadline in µs since the epoch; 0 means none.
    pub deadline_us: u64,
}

/// Parses MCP / JSON-RPC 2.0 text (one message or a batch) into a [`Message`].
///
/// ```
/// use erlmcp_flow::codec::{jsonrpc, Kind};
/// let m = jsonrpc::from_json(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap();
/// assert_eq!(m.envelopes()[0].kind, Kind::Request);
/// assert!(jsonrpc::from_json(br#"{"id":1,"method":"x"}"#).is_err()); // no "jsonrpc"
/// ```
pub fn from_json(text: &[u8]) -> Result<Message> {
    from_json_with(text, Metadata::default())
}

/// [`from_json`] with metadata for the envelopes.
pub fn from_json_with(text: &[u8], meta: Metadata) -> Result<Message> {
    if text.len() > MAX_JSON_LEN {
        return Err(Error::new(
            crate::ErrorKind::TooLarge,
            format!(
                "JSON text of {} bytes exceeds the limit of {MAX_JSON_LEN} bytes",
                text.len()
            ),
        ));
    }
    message_from_value(json::parse(text)?, meta, false)
}

/// Reads a parsed JSON value as a message: an object is one message, an array a batch (never
/// empty) of message objects. A `created_at_us` of 0 in `meta` means now. With
/// `implicit_version`, a message object without a `jsonrpc` member is taken as
/// `"jsonrpc": "2.0"` (a `jsonrpc` member that is there must still be `"2.0"`); without it
/// the member is required, as in JSON text.
pub fn message_from_value(v: Value, meta: Metadata, implicit_version: bool) -> Result<Message> {
    let meta = Metadata {
        created_at_us: if meta.created_at_us == 0 {
            super::envelope::now_us()
        } else {
            meta.created_at_us
        },
        ..meta
    };
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(Error::invalid("a JSON-RPC batch must not be empty"));
            }
            let envs = items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    envelope_from(v, meta, implicit_version).map_err(|e| {
                        Error::new(e.kind(), format!("batch item {i}: {}", e.message()))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Message::Batch(envs))
        }
        v => Ok(Message::Single(envelope_from(v, meta, implicit_version)?)),
    }
}

/// Converts one parsed JSON-RPC message object into an envelope.
pub fn envelope_from_value(v: Value, meta: Metadata) -> Result<Envelope> {
    envelope_from(v, meta, false)
}

fn envelope_from(v: Value, meta: Metadata, implicit_version: bool) -> Result<Envelope> {
    let Value::Object(members) = v else {
        return Err(Error::invalid(
            "a JSON-RPC message must be a JSON object (or a batch array of objects)",
        ));
    };
    let mut version_seen = false;
    let mut id = None;
    let mut method = None;
    let mut params = None;
    let mut result = None;
    let mut error = None;
    let mut extra = Vec::new();
    for Member { key, value } in members {
        let dup = |k: &str| Error::invalid(format!("duplicate \"{k}\" member"));
        match key.as_str() {
            "jsonrpc" => {
                if version_seen {
                    return Err(dup("jsonrpc"));
                }
                if value.as_str() != Some("2.0") {
                    return Err(Error::invalid("\"jsonrpc\" must be the string \"2.0\""));
                }
                version_seen = true;
            }
            "id" => {
                if id.is_some() {
                    return Err(dup("id"));
                }
                id = Some(match value {
                    Value::Null => Id::Null,
                    Value::Number(n) => Id::Number(n),
                    Value::String(s) => Id::String(s),
                    _ => return Err(Error::invalid("\"id\" must be a string, number or null")),
                });
            }
            "method" => {
                if method.is_some() {
                    return Err(dup("method"));
                }
                match value {
                    Value::String(s) => method = Some(s),
                    _ => return Err(Error::invalid("\"method\" must be a string")),
                }
            }
            "params" => {
                if params.is_some() {
                    return Err(dup("params"));
                }
                if !matches!(value, Value::Object(_) | Value::Array(_)) {
                    return Err(Error::invalid("\"params\" must be an object or an array"));
                }
                params = Some(value);
            }
            "result" => {
                if result.is_some() {
                    return Err(dup("result"));
                }
                result = Some(value);
            }
            "error" => {
                if error.is_some() {
                    return Err(dup("error"));
                }
                error = Some(error_from_value(value)?);
            }
            _ => extra.push(Member { key, value }),
        }
    }
    if !version_seen && !implicit_version {
        return Err(Error::invalid("missing \"jsonrpc\": \"2.0\" member"));
    }
    let kind = match (&method, &result, &error) {
        (Some(_), None, None) => {
            if id.is_some() {
                Kind::Request
            } else {
                Kind::Notification
            }
        }
        (None, Some(_), None) => Kind::Response,
        (None, None, Some(_)) => Kind::Error,
        (None, None, None) => {
            return Err(Error::invalid(
                "a JSON-RPC message needs \"method\", \"result\" or \"error\"",
            ))
        }
        _ => {
            return Err(Error::invalid(
                "a JSON-RPC message has only one of \"method\", \"result\" and \"error\"",
            ))
        }
    };
    if params.is_some() && method.is_none() {
        return Err(Error::invalid("\"params\" without \"method\""));
    }
    if matches!(kind, Kind::Response | Kind::Error) && id.is_none() {
        return Err(Error::invalid("a response needs an \"id\""));
    }
    if kind == Kind::Request && matches!(id, Some(Id::Null)) {
        return Err(Error::invalid("a request's \"id\" must not be null"));
    }
    Ok(Envelope {
        kind,
        priority: meta.priority,
        id,
        method,
        params,
        result,
        error,
        created_at_us: meta.created_at_us,
        deadline_us: meta.deadline_us,
        extra,
    })
}

fn error_from_value(v: Value) -> Result<ErrorObject> {
    let Value::Object(members) = v else {
        return Err(Error::invalid("\"error\" must be an object"));
    };
    let mut code = None;
    let mut message = None;
    let mut data = None;
    for Member { key, value } in members {
        match key.as_str() {
            "code" if code.is_none() => match value {
                Value::Number(Number::PosInt(u)) if u <= i64::MAX as u64 => code = Some(u as i64),
                Value::Number(Number::NegInt(i)) => code = Some(i),
                _ => return Err(Error::invalid("\"error.code\" must be an integer")),
            },
            "message" if message.is_none() => match value {
                Value::String(s) => message = Some(s),
                _ => return Err(Error::invalid("\"error.message\" must be a string")),
            },
            "data" if data.is_none() => data = Some(value),
            other => {
                return Err(Error::invalid(format!(
                    "unexpected or duplicate member \"{other}\" in error object"
                )))
            }
        }
    }
    Ok(ErrorObject {
        code: code.ok_or_else(|| Error::invalid("\"error.code\" is missing"))?,
        message: message.ok_or_else(|| Error::invalid("\"error.message\" is missing"))?,
        data,
    })
}

/// Writes an archived message (validated, e.g. by [`super::decode`]) as JSON-RPC text.
///
/// ```
/// use erlmcp_flow::codec::{self, jsonrpc};
/// let json = br#"{"jsonrpc":"2.0","id":"a","result":{"ok":true}}"#;
/// let bytes = codec::encode(&jsonrpc::from_json(json).unwrap()).unwrap();
/// let view = codec::decode(&bytes).unwrap();
/// assert_eq!(jsonrpc::to_json(view), std::str::from_utf8(json).unwrap());
/// ```
pub fn to_json(msg: &super::envelope::ArchivedMessage) -> String {
    let mut out = Vec::with_capacity(256);
    write_message(msg, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends an archived message as JSON-RPC text to `out`.
pub fn write_message(msg: &super::envelope::ArchivedMessage, out: &mut Vec<u8>) {
    if msg.is_batch() {
        out.push(b'[');
        for (i, e) in msg.envelopes().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_envelope(e, out);
        }
        out.push(b']');
    } else if let Some(e) = msg.envelopes().first() {
        write_envelope(e, out);
    }
}

/// Appends one archived envelope as a JSON-RPC message object to `out`.
pub fn write_envelope(e: &ArchivedEnvelope, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"jsonrpc":"2.0""#);
    if let Some(id) = e.id.as_ref() {
        out.extend_from_slice(br#","id":"#);
        match id {
            ArchivedId::Null => out.extend_from_slice(b"null"),
            ArchivedId::Number(n) => json::write_number(NumberRef::from(n), out),
            ArchivedId::String(s) => json::write_string(s.as_str(), out),
        }
    }
    if let Some(m) = e.method.as_ref() {
        out.extend_from_slice(br#","method":"#);
        json::write_string(m.as_str(), out);
    }
    let field = |out: &mut Vec<u8>, name: &[u8], v: Option<&ArchivedValue>| {
        if let Some(v) = v {
            out.push(b',');
            out.extend_from_slice(name);
            json::write_value(v, out);
        }
    };
    field(out, br#""params":"#, e.params.as_ref());
    field(out, br#""result":"#, e.result.as_ref());
    // A response or result envelope built in Rust without a result still writes valid
    // JSON-RPC.
    if e.result.is_none()
        && e.error.is_none()
        && matches!(e.kind.to_native(), Kind::Response | Kind::Result)
    {
        out.extend_from_slice(br#","result":null"#);
    }
    if let Some(err) = e.error.as_ref() {
        out.extend_from_slice(br#","error":{"code":"#);
        json::write_number(NumberRef::NegInt(err.code.to_native()), out);
        out.extend_from_slice(br#","message":"#);
        json::write_string(err.message.as_str(), out);
        field(out, br#""data":"#, err.data.as_ref());
        out.push(b'}');
    }
    for m in e.extra.iter() {
        out.push(b',');
        json::write_string(m.key.as_str(), out);
        out.push(b':');
        json::write_value(&m.value, out);
    }
    out.push(b'}');
}

/// Parses JSON-RPC text and encodes it as an archive in one step.
pub fn json_to_archive(text: &[u8], meta: Metadata) -> Result<rkyv::util::AlignedVec> {
    json_to_archive_with(text, meta, super::EncodeOptions::default())
}

/// [`json_to_archive`] with encoding options (a checksum).
pub fn json_to_archive_with(
    text: &[u8],
    meta: Metadata,
    opts: super::EncodeOptions,
) -> Result<rkyv::util::AlignedVec> {
    super::encode_with(&from_json_with(text, meta)?, opts)
}

/// Validates an archive and writes it as JSON-RPC text.
pub fn archive_to_json(bytes: &[u8]) -> Result<String> {
    Ok(to_json(super::decode(bytes)?))
}
