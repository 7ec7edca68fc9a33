//! The client protocol (PROTOCOL.md §1): what terminals, web pages, editors, AI programs and the
//! hub's operators exchange with an agent (or the hub) over WebSocket, Unix socket or stdio.
//!
//! Decoding is two-step so that every failure can name what was wrong and still echo the
//! request `id` when one was readable: [`RawRequest::parse`] checks the envelope
//! (`id`, `op`), then [`Op::from_raw`] decodes the op's parameters.

use crate::ids::{CallId, ClientId, InputId, Seq, SessionId, TurnId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

// ---------------------------------------------------------------------------------------------
// Enumerations shared by requests and events
// ---------------------------------------------------------------------------------------------

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $wire)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire),+
                }
            }

            /// Parses the wire spelling.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($wire => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad` honours width and alignment, so tables line up.
                f.pad(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// A client's class, bound to its credential.
    Class {
        Human = "human",
        Agent = "agent",
        Observer = "observer",
    }
);

wire_enum!(
    /// What a session does.
    Mode {
        Chat = "chat",
        Diagnose = "diagnose",
        Inspect = "inspect",
    }
);

wire_enum!(
    /// Who may answer permission prompts in a session.
    Policy {
        /// Only human-class clients (the default).
        Human = "human",
        /// Human- or agent-class clients, but never an agent for its own turn.
        Any = "any",
    }
);

wire_enum!(
    SessionState {
        Idle = "idle",
        Running = "running",
        RequiresAction = "requires_action",
        Closed = "closed",
    }
);

wire_enum!(
    Decision {
        Allow = "allow",
        Deny = "deny",
    }
);

wire_enum!(
    /// How far an `allow` reaches: this call, or every later call of the same tool in the session.
    Scope {
        Once = "once",
        Session = "session",
    }
);

wire_enum!(
    /// Why a permission request was resolved.
    ResolveCause {
        Answered = "answered",
        NoEligibleAnswerer = "no_eligible_answerer",
        Timeout = "timeout",
        Cancelled = "cancelled",
    }
);

wire_enum!(
    /// Why a turn ended.
    StopReason {
        Completed = "completed",
        Cancelled = "cancelled",
        Error = "error",
        MaxRounds = "max_rounds",
    }
);

wire_enum!(
    /// Error reasons (PROTOCOL.md §1). Clients switch on these; never improvise a new one.
    Reason {
        BadRequest = "bad_request",
        Unauthorized = "unauthorized",
        Forbidden = "forbidden",
        UnknownSession = "unknown_session",
        TurnInProgress = "turn_in_progress",
        StaleTurn = "stale_turn",
        NoPendingPermission = "no_pending_permission",
        AlreadyResolved = "already_resolved",
        AgentCannotSelfApprove = "agent_cannot_self_approve",
        HumanAnswerRequired = "human_answer_required",
        Overloaded = "overloaded",
        SessionClosed = "session_closed",
        Internal = "internal",
    }
);

wire_enum!(
    /// Severity of a `notice` event.
    NoticeLevel {
        Info = "info",
        Warning = "warning",
        Error = "error",
    }
);

/// Who a client is: its id, class and display name. Used as `originator`, `by` and `client`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub client_id: ClientId,
    pub class: Class,
    pub name: String,
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A request id: a JSON string or number, kept as the exact JSON text the client sent, so
/// that it comes back byte for byte as `re` whatever its form (PROTOCOL.md §3) — a 23-digit
/// integer, `1.5e300`, a string with escapes — rather than as what a 64-bit float makes of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(Box<str>);

impl RequestId {
    /// The id from the raw JSON of an `id` field; `Err` names the kind of anything that is
    /// neither a string nor a number.
    pub fn from_json(raw: &RawValue) -> Result<RequestId, &'static str> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"' | b'-' | b'0'..=b'9') => Ok(RequestId(text.into())),
            Some(b'n') => Err("null"),
            Some(b't' | b'f') => Err("a boolean"),
            Some(b'[') => Err("an array"),
            _ => Err("an object"),
        }
    }

    /// The id's JSON text, as received.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

impl From<u64> for RequestId {
    fn from(n: u64) -> Self {
        RequestId(n.to_string().into())
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> Self {
        RequestId(Value::from(s).to_string().into())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Written out raw by serde_json; the text is valid JSON by construction.
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RequestId {
    /// What a client reads back in `re`: a string or a number, in serde_json's spelling.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = RequestId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RequestId, E> {
                Ok(RequestId::from(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RequestId, E> {
                Ok(RequestId::from(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RequestId, E> {
                Ok(RequestId(v.to_string().into()))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RequestId, E> {
                serde_json::Number::from_f64(v)
                    .map(|n| RequestId(n.to_string().into()))
                    .ok_or_else(|| E::custom("a request id must be a finite number"))
            }
        }

        d.deserialize_any(IdVisitor)
    }
}

/// The envelope of a request as read: the raw `id` and every other field. Not an object: no
/// fields at all.
enum Envelope {
    Object {
        id: Option<Box<RawValue>>,
        fields: Map<String, Value>,
    },
    NotAnObject,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

        struct EnvelopeVisitor;

        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = Envelope;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut id = None;
                let mut fields = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    // The id is kept as written; a repeated key wins, as in a JSON map.
                    if key == "id" {
                        id = Some(map.next_value::<Box<RawValue>>()?);
                    } else {
                        let value: Value = map.next_value()?;
                        fields.insert(key, value);
                    }
                }
                Ok(Envelope::Object { id, fields })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Envelope, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Envelope::NotAnObject)
            }

            fn visit_bool<E>(self, _: bool) -> Result<Envelope, E> {
                Ok(Envelope::NotAnObject)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Envelope, E> {
                Ok(Envelope::NotAnObject)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Envelope, E> {
                Ok(Envelope::NotAnObject)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Envelope, E> {
                Ok(Envelope::NotAnObject)
            }

            fn visit_str<E>(self, _: &str) -> Result<Envelope, E> {
                Ok(Envelope::NotAnObject)
            }

            fn visit_unit<E>(self) -> Result<Envelope, E> {
                Ok(Envelope::NotAnObject)
            }
        }

        d.deserialize_any(EnvelopeVisitor)
    }
}

/// Why a frame could not be decoded. Its `Display` names the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("a request must be a JSON object")]
    NotAnObject,
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}`: {message}")]
    Field { field: String, message: String },
    #[error("unknown op `{0}`")]
    UnknownOp(String),
    #[error("message is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("{0}")]
    Invalid(String),
}

/// A decode failure together with the request id, when the id itself was readable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    pub id: Option<RequestId>,
    pub error: DecodeError,
}

impl RequestError {
    /// The `bad_request` reply for this failure.
    pub fn to_reply(&self) -> ReplyFrame {
        ReplyFrame::err(
            self.id.clone(),
            ErrorBody::new(Reason::BadRequest, self.error.to_string()),
        )
    }
}

/// The request envelope before its parameters are decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct RawRequest {
    pub id: RequestId,
    pub op: String,
    /// Every field except `id` and `op`.
    pub params: Map<String, Value>,
}

impl RawRequest {
    /// Parses the envelope of one frame: a JSON object with `id` (string or number) and `op`.
    pub fn parse(text: &str) -> Result<RawRequest, RequestError> {
        if text.len() > crate::MAX_MESSAGE_BYTES {
            return Err(RequestError {
                id: None,
                error: DecodeError::TooLarge {
                    size: text.len(),
                    limit: crate::MAX_MESSAGE_BYTES,
                },
            });
        }
        let envelope: Envelope = serde_json::from_str(text).map_err(|e| RequestError {
            id: None,
            error: DecodeError::Json(e.to_string()),
        })?;
        let Envelope::Object {
            id,
            fields: mut params,
        } = envelope
        else {
            return Err(RequestError {
                id: None,
                error: DecodeError::NotAnObject,
            });
        };
        let id = match id.as_deref().map(RequestId::from_json) {
            None | Some(Err("null")) => {
                return Err(RequestError {
                    id: None,
                    error: DecodeError::MissingField("id"),
                });
            }
            Some(Ok(id)) => id,
            Some(Err(kind)) => {
                return Err(RequestError {
                    id: None,
                    error: DecodeError::Field {
                        field: "id".into(),
                        message: format!("expected a string or a number, found {kind}"),
                    },
                });
            }
        };
        let op = match params.remove("op") {
            Some(Value::String(op)) => op,
            None | Some(Value::Null) => {
                return Err(RequestError {
                    id: Some(id),
                    error: DecodeError::MissingField("op"),
                });
            }
            Some(other) => {
                return Err(RequestError {
                    id: Some(id),
                    error: DecodeError::Field {
                        field: "op".into(),
                        message: format!("expected a string, found {}", kind(&other)),
                    },
                });
            }
        };
        Ok(RawRequest { id, op, params })
    }

    /// Decodes the parameters into `T`, naming the offending field on failure.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, RequestError> {
        decode_params(&self.params).map_err(|error| RequestError {
            id: Some(self.id.clone()),
            error,
        })
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Decodes an op's parameters, naming the field at fault.
pub fn decode_params<T: DeserializeOwned>(params: &Map<String, Value>) -> Result<T, DecodeError> {
    // Deserializing from a borrowed map keeps the caller's copy for error reporting.
    let result: Result<T, serde_path_to_error::Error<serde_json::Error>> =
        serde_path_to_error::deserialize(&Value::Object(params.clone()));
    result.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            // serde reports "missing field `x`" at the root; it already names the field.
            DecodeError::Invalid(inner)
        } else {
            DecodeError::Field {
                field: path,
                message: inner,
            }
        }
    })
}

/// `hello`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// The class this connection acts as from now on: its credential's class or a lower one
    /// (`human` → `agent` → `observer`), never a higher one (PROTOCOL.md §3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
}

/// `session.create`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionCreate {
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Hub only: the agent that should run the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

/// `attach`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attach {
    pub session_id: SessionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<Seq>,
}

/// `detach` and `session.close`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRef {
    pub session_id: SessionId,
}

/// `input`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub session_id: SessionId,
    pub text: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queue: bool,
}

/// `answer`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub session_id: SessionId,
    pub call_id: CallId,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// What gave the answer on the client's behalf (e.g. `--yes`), recorded in the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// `cancel`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    pub session_id: SessionId,
    pub turn_id: TurnId,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NoParams {}

/// `session.list`: one page of sessions, oldest first. Without params, the first page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ListSessions {
    /// Rows per page, 1 to [`MAX_LIST_LIMIT`]; [`DEFAULT_LIST_LIMIT`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `session.list` rows per page when the request names no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// The largest `limit` a `session.list` may ask for.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Limits on free-text fields (hard rule 10: every field has a size limit).
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_CLIENT_NAME_CHARS: usize = 128;

/// A decoded request of the client protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Hello(Hello),
    SessionCreate(SessionCreate),
    SessionList(ListSessions),
    Attach(Attach),
    Detach(SessionRef),
    Input(Input),
    Answer(Answer),
    Cancel(Cancel),
    SessionClose(SessionRef),
}

impl Op {
    /// Every op name of the base protocol.
    pub const NAMES: &'static [&'static str] = &[
        "hello",
        "session.create",
        "session.list",
        "attach",
        "detach",
        "input",
        "answer",
        "cancel",
        "session.close",
    ];

    /// The wire name of this op.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello(_) => "hello",
            Op::SessionCreate(_) => "session.create",
            Op::SessionList(_) => "session.list",
            Op::Attach(_) => "attach",
            Op::Detach(_) => "detach",
            Op::Input(_) => "input",
            Op::Answer(_) => "answer",
            Op::Cancel(_) => "cancel",
            Op::SessionClose(_) => "session.close",
        }
    }

    /// Decodes a base-protocol op. Unknown op names are `UnknownOp`.
    pub fn from_raw(raw: &RawRequest) -> Result<Op, RequestError> {
        let op = match raw.op.as_str() {
            "hello" => Op::Hello(raw.params()?),
            "session.create" => Op::SessionCreate(raw.params()?),
            "session.list" => Op::SessionList(raw.params()?),
            "attach" => Op::Attach(raw.params()?),
            "detach" => Op::Detach(raw.params()?),
            "input" => Op::Input(raw.params()?),
            "answer" => Op::Answer(raw.params()?),
            "cancel" => Op::Cancel(raw.params()?),
            "session.close" => Op::SessionClose(raw.params()?),
            other => {
                return Err(RequestError {
                    id: Some(raw.id.clone()),
                    error: DecodeError::UnknownOp(other.to_owned()),
                });
            }
        };
        op.validate().map_err(|error| RequestError {
            id: Some(raw.id.clone()),
            error,
        })?;
        Ok(op)
    }

    /// Field limits that serde cannot express.
    pub fn validate(&self) -> Result<(), DecodeError> {
        fn limit(field: &str, value: &str, max: usize) -> Result<(), DecodeError> {
            let n = value.chars().count();
            if n > max {
                return Err(DecodeError::Field {
                    field: field.into(),
                    message: format!("is {n} characters; the limit is {max}"),
                });
            }
            Ok(())
        }
        match self {
            Op::Hello(h) => {
                if let Some(name) = &h.client_name {
                    limit("client_name", name, MAX_CLIENT_NAME_CHARS)?;
                }
            }
            Op::SessionCreate(c) => {
                if let Some(title) = &c.title {
                    limit("title", title, MAX_TITLE_CHARS)?;
                }
            }
            Op::SessionList(l) => {
                if let Some(n) = l.limit
                    && !(1..=MAX_LIST_LIMIT).contains(&n)
                {
                    return Err(DecodeError::Field {
                        field: "limit".into(),
                        message: format!("is {n}; it must be 1 to {MAX_LIST_LIMIT}"),
                    });
                }
            }
            Op::Input(i) if i.text.trim().is_empty() => {
                return Err(DecodeError::Field {
                    field: "text".into(),
                    message: "must not be empty".into(),
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn params_value(&self) -> Value {
        let v = match self {
            Op::Hello(p) => serde_json::to_value(p),
            Op::SessionCreate(p) => serde_json::to_value(p),
            Op::SessionList(p) => serde_json::to_value(p),
            Op::Attach(p) => serde_json::to_value(p),
            Op::Detach(p) | Op::SessionClose(p) => serde_json::to_value(p),
            Op::Input(p) => serde_json::to_value(p),
            Op::Answer(p) => serde_json::to_value(p),
            Op::Cancel(p) => serde_json::to_value(p),
        };
        // These structs hold only strings, numbers, enums and maps: they always serialize.
        v.unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

/// A full request: envelope plus decoded op.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub id: RequestId,
    pub op: Op,
}

impl Request {
    /// Decodes one frame of the base protocol.
    pub fn decode(text: &str) -> Result<Request, RequestError> {
        let raw = RawRequest::parse(text)?;
        let op = Op::from_raw(&raw)?;
        Ok(Request { id: raw.id, op })
    }

    /// Encodes this request as one JSON object (what a client sends).
    pub fn encode(&self) -> String {
        encode_request(&self.id, self.op.name(), self.op.params_value())
    }
}

/// Encodes `{"id", "op", ...params}`; `params` must be an object (anything else is ignored).
pub fn encode_request(id: &RequestId, op: &str, params: Value) -> String {
    let mut map = Map::new();
    map.insert("id".into(), serde_json::to_value(id).unwrap_or(Value::Null));
    map.insert("op".into(), Value::String(op.to_owned()));
    if let Value::Object(p) = params {
        map.extend(p);
    }
    Value::Object(map).to_string()
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// The error object of a failed reply: `reason`, `message`, and reason-specific details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub reason: Reason,
    pub message: String,
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

impl ErrorBody {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        ErrorBody {
            reason,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Adds a detail field (e.g. `turn_id`).
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        if let Ok(v) = serde_json::to_value(value) {
            self.details.insert(key.to_owned(), v);
        }
        self
    }

    /// `turn_in_progress`, naming the running turn and its originator.
    pub fn turn_in_progress(turn_id: &TurnId, originator: &ClientInfo) -> Self {
        ErrorBody::new(
            Reason::TurnInProgress,
            format!(
                "turn {turn_id} started by {} is still running; send with \"queue\": true to queue",
                originator.name
            ),
        )
        .with("turn_id", turn_id)
        .with("originator", originator)
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for ErrorBody {}

/// One reply frame: `{"re", "ok": true, "result"}` or `{"re", "ok": false, "error"}`.
/// `re` is null only when the request's id could not be read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplyFrame {
    pub re: Option<RequestId>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl ReplyFrame {
    pub fn ok(re: RequestId, result: impl Serialize) -> Self {
        let result = serde_json::to_value(result).unwrap_or_else(|_| Value::Object(Map::new()));
        ReplyFrame {
            re: Some(re),
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(re: Option<RequestId>, error: ErrorBody) -> Self {
        ReplyFrame {
            re,
            ok: false,
            result: None,
            error: Some(error),
        }
    }

    pub fn encode(&self) -> String {
        // A reply is built from serializable parts only.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"re":null,"ok":false,"error":{"reason":"internal","message":"reply encoding failed"}}"#
                .to_owned()
        })
    }

    /// The result as `T`, or the error body.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, ErrorBody> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let value = self.result.unwrap_or(Value::Object(Map::new()));
        serde_json::from_value(value)
            .map_err(|e| ErrorBody::new(Reason::Internal, format!("unexpected result shape: {e}")))
    }
}

/// `hello` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HelloResult {
    pub client_id: ClientId,
    pub class: Class,
    pub name: String,
    pub protocol: u32,
    pub server: ServerInfo,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub name: String,
    pub version: String,
}

/// `session.create` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionCreated {
    pub session_id: SessionId,
}

/// One row of `session.list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub session_id: SessionId,
    pub mode: Mode,
    pub state: SessionState,
    pub title: Option<String>,
    pub created_at: String,
    pub clients: Vec<ClientInfo>,
    pub last_seq: Seq,
}

/// `session.list` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<SessionSummary>,
    /// Present when more sessions follow: pass it as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The running turn in a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TurnRef {
    pub turn_id: TurnId,
    pub originator: ClientInfo,
}

/// A permission request still waiting for an answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingPermission {
    pub turn_id: TurnId,
    pub call_id: CallId,
    pub tool: String,
    pub args: Value,
    pub originator: ClientInfo,
    pub policy: Policy,
}

impl PendingPermission {
    /// The request a `permission_requested` event raises (`None` for any other event).
    pub fn requested_by(body: &EventBody) -> Option<PendingPermission> {
        match body {
            EventBody::PermissionRequested {
                turn_id,
                call_id,
                tool,
                args,
                originator,
                policy,
            } => Some(PendingPermission {
                turn_id: turn_id.clone(),
                call_id: call_id.clone(),
                tool: tool.clone(),
                args: args.clone(),
                originator: originator.clone(),
                policy: *policy,
            }),
            _ => None,
        }
    }
}

/// A session's state at attach time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub session_id: SessionId,
    pub mode: Mode,
    pub state: SessionState,
    pub title: Option<String>,
    pub policy: Policy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<TurnRef>,
    pub pending_permissions: Vec<PendingPermission>,
    pub clients: Vec<ClientInfo>,
    /// The first inputs queued behind the running turn, in order (the first few only: see
    /// `queued_count`).
    #[serde(default)]
    pub queued: Vec<QueuedInput>,
    /// How many inputs are queued in all.
    #[serde(default)]
    pub queued_count: usize,
    pub last_seq: Seq,
    /// The oldest event the log still holds (`last_seq + 1` when it holds none).
    pub first_seq: Seq,
}

/// An input waiting in the queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueuedInput {
    pub input_id: InputId,
    pub originator: ClientInfo,
    pub text: String,
}

/// `attach` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attached {
    pub snapshot: Snapshot,
}

/// `input` result: the turn started, or the receipt of a queued input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputAccepted {
    Started { turn_id: TurnId },
    Queued { input_id: InputId, position: usize },
}

/// The empty result `{}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Empty {}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// Token accounting for one turn.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Some of the counts are tether's estimate (about 4 bytes a token), not the model
    /// server's: a server that reports no usage. Sent only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

/// The kind-specific part of an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventBody {
    SessionState {
        state: SessionState,
    },
    ClientAttached {
        client: ClientInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    ClientDetached {
        client: ClientInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    TurnStarted {
        turn_id: TurnId,
        originator: ClientInfo,
        text: String,
        /// Present when the turn runs a queued input: the receipt it was given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input_id: Option<InputId>,
    },
    TextDelta {
        turn_id: TurnId,
        text: String,
    },
    ReasoningDelta {
        turn_id: TurnId,
        text: String,
    },
    ToolCall {
        turn_id: TurnId,
        call_id: CallId,
        tool: String,
        args: Value,
    },
    PermissionRequested {
        turn_id: TurnId,
        call_id: CallId,
        tool: String,
        args: Value,
        originator: ClientInfo,
        policy: Policy,
    },
    PermissionResolved {
        call_id: CallId,
        decision: Decision,
        by: Option<ClientInfo>,
        cause: ResolveCause,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<Scope>,
    },
    ToolResult {
        turn_id: TurnId,
        call_id: CallId,
        ok: bool,
        output: String,
        truncated: bool,
        /// How long the tool itself ran (0 when it never ran: denied, invalid, cancelled).
        duration_ms: u64,
        /// Present when the call waited for a permission answer (allowed or not): how long
        /// that wait was. Never part of `duration_ms`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        waited_ms: Option<u64>,
    },
    TurnEnded {
        turn_id: TurnId,
        stop: StopReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    /// Something clients should see that is not part of a turn's output
    /// (e.g. an MCP server that failed to start).
    Notice {
        level: NoticeLevel,
        message: String,
    },
    SessionClosed {
        reason: String,
    },
}

impl EventBody {
    /// The wire name of this event.
    pub fn name(&self) -> &'static str {
        match self {
            EventBody::SessionState { .. } => "session_state",
            EventBody::ClientAttached { .. } => "client_attached",
            EventBody::ClientDetached { .. } => "client_detached",
            EventBody::TurnStarted { .. } => "turn_started",
            EventBody::TextDelta { .. } => "text_delta",
            EventBody::ReasoningDelta { .. } => "reasoning_delta",
            EventBody::ToolCall { .. } => "tool_call",
            EventBody::PermissionRequested { .. } => "permission_requested",
            EventBody::PermissionResolved { .. } => "permission_resolved",
            EventBody::ToolResult { .. } => "tool_result",
            EventBody::TurnEnded { .. } => "turn_ended",
            EventBody::Notice { .. } => "notice",
            EventBody::SessionClosed { .. } => "session_closed",
        }
    }
}

/// A session event: `{"event", "session_id", "seq", "ts", ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub session_id: SessionId,
    pub seq: Seq,
    /// RFC 3339 UTC with milliseconds.
    pub ts: String,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    pub fn encode(&self) -> String {
        // Events hold only serializable parts.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Per-connection control frames. They carry no `seq`: they are not session history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Control {
    StreamGap {
        session_id: SessionId,
        from_seq: Seq,
        to_seq: Seq,
    },
    ReplayComplete {
        session_id: SessionId,
        last_seq: Seq,
    },
    SlowConsumer {
        queued: usize,
    },
    Evicted {
        reason: String,
    },
    /// The session's events cannot be committed to the event log (e.g. the disk is full):
    /// its turn is stopped and it takes no new work until `log_restored`.
    LogUnavailable {
        session_id: SessionId,
        message: String,
    },
    /// The event log commits again; the session has been repaired and takes input.
    LogRestored {
        session_id: SessionId,
    },
}

impl Control {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Anything a server sends to a client, as a client decodes it.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerFrame {
    Reply(ReplyFrame),
    Event(Event),
    Control(Control),
}

impl ServerFrame {
    /// Classifies and decodes a server frame: replies carry `re`, events carry `seq`.
    pub fn decode(text: &str) -> Result<ServerFrame, DecodeError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
        let Value::Object(map) = &value else {
            return Err(DecodeError::NotAnObject);
        };
        let decoded = if map.contains_key("re") {
            serde_json::from_value(value).map(ServerFrame::Reply)
        } else if map.contains_key("seq") {
            serde_json::from_value(value).map(ServerFrame::Event)
        } else {
            serde_json::from_value(value).map(ServerFrame::Control)
        };
        decoded.map_err(|e| DecodeError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_come_back_exactly_as_written() {
        use serde_json::json;
        for id in [
            "12345678901234567890123",
            "-12345678901234567890123",
            "1.5e300",
            "1.50",
            "1E2",
            "-0",
            "7",
            r#""a\u00e9\"b""#,
            r#""""#,
        ] {
            let raw = RawRequest::parse(&format!("{{ \"id\" :  {id} , \"op\": \"hello\"}}"))
                .expect("parse");
            assert_eq!(raw.id.as_json(), id);
            let reply = ReplyFrame::ok(raw.id.clone(), json!({})).encode();
            assert!(reply.starts_with(&format!(r#"{{"re":{id},"#)), "{reply}");
            // A refusal echoes it too.
            let err = RawRequest::parse(&format!(r#"{{"id": {id}}}"#)).expect_err("no op");
            let reply = err.to_reply().encode();
            assert!(reply.starts_with(&format!(r#"{{"re":{id},"#)), "{reply}");
        }
        for (id, kind) in [
            ("true", "a boolean"),
            ("[1]", "an array"),
            ("{}", "an object"),
        ] {
            let err = RawRequest::parse(&format!(r#"{{"id": {id}, "op": "hello"}}"#))
                .expect_err("bad id");
            assert_eq!(err.id, None);
            assert!(err.error.to_string().contains(kind), "{}", err.error);
        }
        let err = RawRequest::parse(r#"{"id": null, "op": "hello"}"#).expect_err("null id");
        assert_eq!(err.error, DecodeError::MissingField("id"));
        for text in ["[1, 2]", "3", "\"x\"", "null", "true"] {
            let err = RawRequest::parse(text).expect_err("not an object");
            assert_eq!(err.error, DecodeError::NotAnObject, "{text}");
        }
        // A client's own ids match the `re` it reads back.
        let frame = ServerFrame::decode(r#"{"re":5,"ok":true,"result":{}}"#).expect("decode");
        let ServerFrame::Reply(reply) = frame else {
            panic!("not a reply");
        };
        assert_eq!(reply.re, Some(RequestId::from(5)));
        let frame =
            ServerFrame::decode(r#"{"re":"a\u00e9","ok":true,"result":{}}"#).expect("decode");
        let ServerFrame::Reply(reply) = frame else {
            panic!("not a reply");
        };
        assert_eq!(reply.re, Some(RequestId::from("aé")));
        // The request a client encodes carries its id.
        let text = encode_request(&RequestId::from("x"), "hello", json!({}));
        assert_eq!(
            RawRequest::parse(&text).expect("parse").id,
            RequestId::from("x")
        );
    }

    #[test]
    fn client_id_principal_strips_connection_suffix() {
        assert_eq!(ClientId::from("alice/3").principal(), "alice");
        assert_eq!(ClientId::from("uid:1000/12").principal(), "uid:1000");
        assert_eq!(ClientId::from("bare").principal(), "bare");
    }

    #[test]
    fn request_round_trips() {
        let req = Request {
            id: 7.into(),
            op: Op::Input(Input {
                session_id: "s1".into(),
                text: "hi".into(),
                queue: true,
            }),
        };
        let text = req.encode();
        assert_eq!(Request::decode(&text), Ok(req));
    }
}
