//! The link protocol (PROTOCOL.md §2): agent ↔ hub over one WebSocket.
//!
//! Version 1 is catpaw's agent protocol, field for field: a stock catpaw agent or
//! catpaw-server must read what we write. Version 2 adds fields and messages that a
//! version-1 peer never sees (the sender checks the negotiated version).
//!
//! Every frame is an envelope `{"type", "id", "ref_id"?, "payload"?}`. [`LinkFrame::decode`]
//! checks the size limit and the envelope, then decodes the payload by type; an unknown type
//! decodes to [`LinkMessage::Unknown`] so newer peers do not break older ones.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Largest inbound link frame accepted.
pub const MAX_LINK_FRAME_BYTES: usize = 1024 * 1024;

/// Largest `session_output` frame a hub accepts. catpaw bounds only what it reads: its final
/// `done` frame carries the whole report (and a chat answer the whole reply), whatever its
/// size. Larger ones are not decoded; the hub ends the turn saying the output was too large.
pub const MAX_SESSION_OUTPUT_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Path of the agent endpoint on a hub.
pub const AGENT_WS_PATH: &str = "/api/v1/agent/ws";

/// Upgrade headers.
pub const HEADER_AGENT_TOKEN: &str = "x-agent-token";
pub const HEADER_AGENT_ID: &str = "x-agent-id";
pub const HEADER_PROTO_VERSION: &str = "x-proto-version";

/// Most alert events in one `alert_events` frame.
pub const MAX_ALERT_BATCH: usize = 100;

/// Room left in a frame for the envelope around a batch of alert events: a sender fills a
/// frame with events up to [`MAX_LINK_FRAME_BYTES`] minus this.
pub const ALERT_FRAME_OVERHEAD: usize = 1024;

/// Longest alert description kept; longer ones are cut (and flagged) at the hub.
pub const MAX_ALERT_DESCRIPTION_BYTES: usize = 64 * 1024;

/// Longest alert key accepted.
pub const MAX_ALERT_KEY_BYTES: usize = 1024;

/// The `reason` of an `ack {ok: false}` that answers a refused frame (version 2): the frame
/// was over the size limit, did not decode, or could not be stored right now.
pub mod refused {
    pub const TOO_LARGE: &str = "too_large";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const STORE_UNAVAILABLE: &str = "store_unavailable";
}

/// Decodes `null` as the type's default: Go encodes a nil map or slice as `null` (catpaw's
/// `Labels` and `Plugins` have no `omitempty`), and that means "none", not a malformed frame.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The exact strings a refused `session_start` is acked with (PROTOCOL.md §2).
pub mod refusal {
    pub const INVALID_PAYLOAD: &str = "invalid payload";
    pub const MISSING_SESSION_ID: &str = "missing session_id";
    pub const CHAT_ENGINE_UNAVAILABLE: &str = "chat engine not available";
    pub const DIAGNOSE_ENGINE_UNAVAILABLE: &str = "diagnose engine not available";
    pub const MAX_CONCURRENT: &str = "max concurrent sessions reached";
    pub const DUPLICATE_SESSION_ID: &str = "duplicate session_id";

    pub const ALL: &[&str] = &[
        INVALID_PAYLOAD,
        MISSING_SESSION_ID,
        CHAT_ENGINE_UNAVAILABLE,
        DIAGNOSE_ENGINE_UNAVAILABLE,
        MAX_CONCURRENT,
        DUPLICATE_SESSION_ID,
    ];
}

/// `session_error.code` values.
pub mod error_code {
    pub const INVALID_TYPE: &str = "invalid_type";
    pub const ENGINE_UNAVAILABLE: &str = "engine_unavailable";
    pub const MISSING_PLUGIN: &str = "missing_plugin";
    pub const DIAGNOSE_FAILED: &str = "diagnose_failed";
    pub const CHAT_INIT_FAILED: &str = "chat_init_failed";
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_empty_str(s: &str) -> bool {
    s.is_empty()
}

// ---- agent → hub ------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Register {
    pub hostname: String,
    pub ip: String,
    pub os: String,
    pub arch: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub plugins: Vec<String>,
    pub agent_version: String,
    #[serde(default)]
    pub uptime_sec: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub active_sessions: u64,
    pub active_alerts: u64,
    /// Absent means unknown (catpaw sends neither yet; Go's `omitempty` drops them), never 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_pct: Option<f64>,
    /// Version 2: alerts dropped from the full spool since the agent started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_alerts: Option<u64>,
}

/// `Critical`, `Warning`, `Info` or `Ok`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlertStatus {
    Critical,
    Warning,
    Info,
    Ok,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Critical => "Critical",
            AlertStatus::Warning => "Warning",
            AlertStatus::Info => "Info",
            AlertStatus::Ok => "Ok",
        }
    }

    /// Parses the wire spelling, accepting any letter case.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "critical" => Some(AlertStatus::Critical),
            "warning" => Some(AlertStatus::Warning),
            "info" => Some(AlertStatus::Info),
            "ok" => Some(AlertStatus::Ok),
            _ => None,
        }
    }
}

impl std::fmt::Display for AlertStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Unix seconds.
    pub event_time: i64,
    pub event_status: AlertStatus,
    pub alert_key: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub attrs: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub description: String,
    /// `text` or `markdown` (catpaw omits it when empty).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_empty_str"
    )]
    pub description_format: String,
    /// Version 2: per-agent sequence number, kept across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// What [`AlertEvent::sanitize`] changed.
pub const ATTR_EVENT_TIME_CLAMPED: &str = "event_time_clamped";
pub const ATTR_DESCRIPTION_CUT: &str = "description_cut_bytes";

impl AlertEvent {
    /// Makes a peer's event safe to store and show, flagging what it changed in `attrs`: an
    /// event time that is not believable (before 1970, or more than a day past `now_secs`)
    /// becomes `now_secs` with the original in `event_time_clamped`; a description over
    /// [`MAX_ALERT_DESCRIPTION_BYTES`] is cut on a character boundary with the bytes cut in
    /// `description_cut_bytes`. Returns what was changed, for the log.
    pub fn sanitize(&mut self, now_secs: i64) -> Vec<String> {
        let mut changed = Vec::new();
        if let Err(problem) = crate::time::check_event_time(self.event_time, now_secs) {
            changed.push(format!(
                "event_time {} is {}; replaced by the time received",
                self.event_time,
                problem.as_str()
            ));
            self.attrs
                .insert(ATTR_EVENT_TIME_CLAMPED.into(), self.event_time.to_string());
            self.event_time = now_secs;
        }
        if self.description.len() > MAX_ALERT_DESCRIPTION_BYTES {
            let mut end = MAX_ALERT_DESCRIPTION_BYTES;
            while !self.description.is_char_boundary(end) {
                end -= 1;
            }
            let cut = self.description.len() - end;
            self.description.truncate(end);
            changed.push(format!("description cut by {cut} bytes"));
            self.attrs
                .insert(ATTR_DESCRIPTION_CUT.into(), cut.to_string());
        }
        changed
    }

    /// Why this event cannot be stored at all, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.alert_key.trim().is_empty() {
            Some("`alert_key` is empty".into())
        } else if self.alert_key.len() > MAX_ALERT_KEY_BYTES {
            Some(format!(
                "`alert_key` is {} bytes; the limit is {MAX_ALERT_KEY_BYTES}",
                self.alert_key.len()
            ))
        } else {
            None
        }
    }
}

/// An event of an `alert_events` batch that did not decode. The rest of the batch is kept:
/// one bad event never costs the others.
#[derive(Clone, Debug, PartialEq)]
pub struct RejectedAlert {
    /// Position in the batch.
    pub index: usize,
    /// Its `seq`, when that much could be read.
    pub seq: Option<u64>,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertEvents {
    pub events: Vec<AlertEvent>,
    /// Events of the received batch that did not decode (never sent).
    #[serde(skip)]
    pub rejected: Vec<RejectedAlert>,
}

impl AlertEvents {
    pub fn new(events: Vec<AlertEvent>) -> Self {
        AlertEvents {
            events,
            rejected: Vec::new(),
        }
    }

    /// Every `seq` the batch carried, decoded or not.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.events
            .iter()
            .filter_map(|e| e.seq)
            .chain(self.rejected.iter().filter_map(|r| r.seq))
    }
}

impl<'de> Deserialize<'de> for AlertEvents {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(deserialize_with = "null_as_default")]
            events: Vec<Value>,
        }
        let raw = Raw::deserialize(d)?;
        let mut out = AlertEvents::new(Vec::with_capacity(raw.events.len()));
        for (index, value) in raw.events.into_iter().enumerate() {
            let seq = value.get("seq").and_then(Value::as_u64);
            let decoded: Result<AlertEvent, _> = serde_path_to_error::deserialize(value);
            match decoded {
                Ok(e) => out.events.push(e),
                Err(e) => {
                    let path = e.path().to_string();
                    let inner = e.into_inner().to_string();
                    out.rejected.push(RejectedAlert {
                        index,
                        seq,
                        error: if path == "." {
                            inner
                        } else {
                            format!("field `{path}`: {inner}")
                        },
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The envelope id and the alert `seq`s of a frame that will not be decoded in full (it is
/// over the size limit): enough for the hub to answer it and to keep its acknowledgements
/// below what it did not store. Reads the text once, keeps nothing else.
pub fn probe_refused_frame(text: &str) -> (String, Option<String>, Vec<u64>) {
    #[derive(Deserialize)]
    struct Seq {
        #[serde(default)]
        seq: Option<u64>,
    }
    #[derive(Deserialize)]
    struct Payload {
        #[serde(default)]
        events: Vec<Seq>,
    }
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default, rename = "type")]
        kind: String,
        #[serde(default)]
        id: String,
        #[serde(default)]
        payload: Option<Payload>,
    }
    match serde_json::from_str::<Probe>(text) {
        Ok(p) => {
            let seqs = match (&p.payload, p.kind.as_str()) {
                (Some(payload), "alert_events") => {
                    payload.events.iter().filter_map(|e| e.seq).collect()
                }
                _ => Vec::new(),
            };
            (p.id, Some(p.kind), seqs)
        }
        Err(_) => (String::new(), None, Vec::new()),
    }
}

/// What the hub needs of a `session_output` frame it will not decode in full (over
/// [`MAX_SESSION_OUTPUT_FRAME_BYTES`]): enough to end the turn it belongs to and say why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutputProbe {
    pub session_id: String,
    /// The session's final frame.
    pub done: bool,
    /// A chat turn's last frame (`metadata.turn_done`).
    pub turn_done: bool,
}

/// Reads a `session_output` frame's session id and whether it ends the turn or the session,
/// skipping its text. `None` when the frame is not a readable `session_output`.
pub fn probe_session_output(text: &str) -> Option<OutputProbe> {
    #[derive(Deserialize)]
    struct Meta {
        #[serde(default)]
        turn_done: Option<bool>,
    }
    #[derive(Deserialize)]
    struct Payload {
        #[serde(default)]
        session_id: String,
        #[serde(default)]
        done: bool,
        #[serde(default)]
        metadata: Option<Meta>,
    }
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        payload: Option<Payload>,
    }
    let p: Probe = serde_json::from_str(text).ok()?;
    let payload = p.payload.filter(|_| p.kind == "session_output")?;
    Some(OutputProbe {
        session_id: payload.session_id,
        done: payload.done,
        turn_done: payload.metadata.and_then(|m| m.turn_done).unwrap_or(false),
    })
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionOutput {
    pub session_id: String,
    #[serde(default)]
    pub delta: String,
    /// `thinking`, `tool_call`, `tool_result`, `answer`, `error`, or empty on the final frame.
    #[serde(default)]
    pub stage: String,
    #[serde(default)]
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionError {
    pub session_id: String,
    pub error: String,
    pub code: String,
}

/// Version 2: one client-protocol event of a remote session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub session_id: String,
    pub event: Value,
}

/// Version 2: a finished diagnosis report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagnoseReport {
    pub alert_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub report: String,
    /// RFC 3339.
    pub created_at: String,
}

/// The stable alert key of a set of labels: FNV-1a (64-bit) over the labels sorted by name,
/// each `name\0value\0`, in lowercase hex. Stable across runs, hosts and versions: the same
/// labels always give the same key.
pub fn alert_key(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// A readable one-line title for an agent's alert (the key stays its identity): its check
/// and target from the labels tether's checks set (`name` or `plugin`, then `check`,
/// `target`: `disk space_used_pct /var`), else the first line of its description, else the
/// key. At most 160 bytes.
pub fn alert_title(labels: &BTreeMap<String, String>, description: &str, key: &str) -> String {
    const MAX: usize = 160;
    let cut = |line: &str| {
        if line.len() <= MAX {
            return line.to_owned();
        }
        let mut end = MAX;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    };
    if labels.contains_key("check") {
        let parts: Vec<&str> = [
            labels.get("name").or_else(|| labels.get("plugin")),
            labels.get("check"),
            labels.get("target"),
        ]
        .into_iter()
        .flatten()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
        if !parts.is_empty() {
            return cut(&parts.join(" "));
        }
    }
    match description.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => cut(line),
        None => key.to_owned(),
    }
}

// ---- hub → agent ------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Version 2: the version the hub agreed to speak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<u32>,
    /// Version 2, agent → hub: the client-protocol reason of a refused session op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Version 2, agent → hub: the reason's details (e.g. `turn_id`, `originator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Map<String, Value>>,
    /// Version 2, agent → hub: the result of an accepted session op (e.g. `turn_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Disconnect {
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub retry_after_sec: u64,
}

/// `session_start.params` (catpaw's keys; anything else is kept).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionStart {
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub session_type: String,
    #[serde(default)]
    pub user_name: String,
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Version 2: the operator's class (`human`, `agent`, `observer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Version 2: who may answer permission prompts (`human` or `any`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Version 2: the session's title, as the hub shows it (the agent uses it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Version 2: the hub connection acting (`<principal>/<n>`), so that each operator
    /// connection is a user of its own at the agent while the credential (the part before the
    /// last `/`) stays the principal the permission rules compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionInput {
    pub session_id: String,
    #[serde(default)]
    pub message: String,
    /// Version 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// Version 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Version 2.
    #[serde(default, skip_serializing_if = "is_false")]
    pub queue: bool,
    /// Version 2: the hub connection acting (`<principal>/<n>`), so that each operator
    /// connection is a user of its own at the agent while the credential (the part before the
    /// last `/`) stays the principal the permission rules compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionCancel {
    pub session_id: String,
    #[serde(default)]
    pub reason: String,
    /// Version 2: cancel only this turn and keep the session (without it, the session ends,
    /// as under version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// Version 2: who cancels (with `class`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Version 2: the hub connection acting (`<principal>/<n>`), so that each operator
    /// connection is a user of its own at the agent while the credential (the part before the
    /// last `/`) stays the principal the permission rules compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Version 2: an operator joins a remote session. With `after_seq` it (re)starts the agent's
/// relay of the session on the current connection: every event after `after_seq`, then live
/// (the hub resumes its open sessions this way after every registration); `user_name` may
/// then be empty (nobody joins).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionAttach {
    pub session_id: String,
    #[serde(default)]
    pub user_name: String,
    #[serde(default)]
    pub class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// Version 2: the hub connection acting (`<principal>/<n>`), so that each operator
    /// connection is a user of its own at the agent while the credential (the part before the
    /// last `/`) stays the principal the permission rules compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Version 2: an operator leaves a remote session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionDetach {
    pub session_id: String,
    #[serde(default)]
    pub user_name: String,
    /// Version 2: the hub connection acting (`<principal>/<n>`), so that each operator
    /// connection is a user of its own at the agent while the credential (the part before the
    /// last `/`) stays the principal the permission rules compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Version 2: an operator answers a permission prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionAnswer {
    pub session_id: String,
    pub call_id: String,
    pub user_name: String,
    pub class: String,
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Version 2: the hub connection acting (`<principal>/<n>`), so that each operator
    /// connection is a user of its own at the agent while the credential (the part before the
    /// last `/`) stays the principal the permission rules compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Version 2: something the session's users should see that is not part of a turn (the
/// alert a diagnosis is about resolved, say): the agent publishes it in the session as a
/// `notice` event. An agent that does not know it ignores it, like any unknown type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionNotice {
    pub session_id: String,
    /// `info`, `warning` or `error`.
    #[serde(default = "info_level")]
    pub level: String,
    pub message: String,
}

fn info_level() -> String {
    "info".into()
}

/// Version 2: the hub has stored every alert event with `seq <= upto_seq`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertAck {
    pub upto_seq: u64,
}

// ---- envelope ---------------------------------------------------------------------------

/// A decoded link message.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkMessage {
    Register(Register),
    Ack(Ack),
    Heartbeat(Heartbeat),
    AlertEvents(AlertEvents),
    AlertAck(AlertAck),
    SessionOutput(SessionOutput),
    SessionError(SessionError),
    SessionEvent(SessionEvent),
    DiagnoseReport(DiagnoseReport),
    SessionStart(SessionStart),
    SessionInput(SessionInput),
    SessionCancel(SessionCancel),
    SessionAttach(SessionAttach),
    SessionDetach(SessionDetach),
    SessionAnswer(SessionAnswer),
    SessionNotice(SessionNotice),
    Ping,
    Pong,
    Disconnect(Disconnect),
    /// A type this build does not know; ignored by receivers.
    Unknown(String),
}

impl LinkMessage {
    /// The envelope `type`.
    pub fn kind(&self) -> &str {
        match self {
            LinkMessage::Register(_) => "register",
            LinkMessage::Ack(_) => "ack",
            LinkMessage::Heartbeat(_) => "heartbeat",
            LinkMessage::AlertEvents(_) => "alert_events",
            LinkMessage::AlertAck(_) => "alert_ack",
            LinkMessage::SessionOutput(_) => "session_output",
            LinkMessage::SessionError(_) => "session_error",
            LinkMessage::SessionEvent(_) => "session_event",
            LinkMessage::DiagnoseReport(_) => "diagnose_report",
            LinkMessage::SessionStart(_) => "session_start",
            LinkMessage::SessionInput(_) => "session_input",
            LinkMessage::SessionCancel(_) => "session_cancel",
            LinkMessage::SessionAttach(_) => "session_attach",
            LinkMessage::SessionDetach(_) => "session_detach",
            LinkMessage::SessionAnswer(_) => "session_answer",
            LinkMessage::SessionNotice(_) => "session_notice",
            LinkMessage::Ping => "ping",
            LinkMessage::Pong => "pong",
            LinkMessage::Disconnect(_) => "disconnect",
            LinkMessage::Unknown(kind) => kind,
        }
    }

    fn payload(&self) -> Option<Value> {
        let v = match self {
            LinkMessage::Register(p) => serde_json::to_value(p),
            LinkMessage::Ack(p) => serde_json::to_value(p),
            LinkMessage::Heartbeat(p) => serde_json::to_value(p),
            LinkMessage::AlertEvents(p) => serde_json::to_value(p),
            LinkMessage::AlertAck(p) => serde_json::to_value(p),
            LinkMessage::SessionOutput(p) => serde_json::to_value(p),
            LinkMessage::SessionError(p) => serde_json::to_value(p),
            LinkMessage::SessionEvent(p) => serde_json::to_value(p),
            LinkMessage::DiagnoseReport(p) => serde_json::to_value(p),
            LinkMessage::SessionStart(p) => serde_json::to_value(p),
            LinkMessage::SessionInput(p) => serde_json::to_value(p),
            LinkMessage::SessionCancel(p) => serde_json::to_value(p),
            LinkMessage::SessionAttach(p) => serde_json::to_value(p),
            LinkMessage::SessionDetach(p) => serde_json::to_value(p),
            LinkMessage::SessionAnswer(p) => serde_json::to_value(p),
            LinkMessage::SessionNotice(p) => serde_json::to_value(p),
            LinkMessage::Disconnect(p) => serde_json::to_value(p),
            LinkMessage::Ping | LinkMessage::Pong | LinkMessage::Unknown(_) => return None,
        };
        v.ok()
    }
}

/// Why a link frame was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkDecodeError {
    #[error("frame is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("envelope: {0}")]
    Envelope(String),
    #[error("`{kind}` payload: {message}")]
    Payload { kind: String, message: String },
}

#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    ref_id: Option<String>,
    #[serde(default)]
    payload: Option<Value>,
}

/// One link frame: envelope plus decoded message.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkFrame {
    pub id: String,
    pub ref_id: Option<String>,
    pub message: LinkMessage,
}

fn payload<T: DeserializeOwned>(kind: &str, payload: Option<Value>) -> Result<T, LinkDecodeError> {
    let value = payload.unwrap_or(Value::Null);
    let result: Result<T, serde_path_to_error::Error<serde_json::Error>> =
        serde_path_to_error::deserialize(value);
    result.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        LinkDecodeError::Payload {
            kind: kind.to_owned(),
            message: if path == "." {
                inner
            } else {
                format!("field `{path}`: {inner}")
            },
        }
    })
}

impl LinkFrame {
    pub fn new(id: impl Into<String>, message: LinkMessage) -> Self {
        LinkFrame {
            id: id.into(),
            ref_id: None,
            message,
        }
    }

    /// Decodes one inbound frame. Never panics; every failure says what was wrong.
    pub fn decode(text: &str) -> Result<LinkFrame, LinkDecodeError> {
        LinkFrame::decode_with_limit(text, MAX_LINK_FRAME_BYTES)
    }

    /// [`LinkFrame::decode`] with another size limit (a hub reading a catpaw `session_output`
    /// up to [`MAX_SESSION_OUTPUT_FRAME_BYTES`]).
    pub fn decode_with_limit(text: &str, limit: usize) -> Result<LinkFrame, LinkDecodeError> {
        if text.len() > limit {
            return Err(LinkDecodeError::TooLarge {
                size: text.len(),
                limit,
            });
        }
        let raw: RawEnvelope = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                LinkDecodeError::Envelope(e.to_string())
            } else {
                LinkDecodeError::Json(e.to_string())
            }
        })?;
        let kind = raw.kind.as_str();
        let p = raw.payload;
        let message = match kind {
            "register" => LinkMessage::Register(payload(kind, p)?),
            "ack" => LinkMessage::Ack(payload(kind, p)?),
            "heartbeat" => LinkMessage::Heartbeat(payload(kind, p)?),
            "alert_events" => LinkMessage::AlertEvents(payload(kind, p)?),
            "alert_ack" => LinkMessage::AlertAck(payload(kind, p)?),
            "session_output" => LinkMessage::SessionOutput(payload(kind, p)?),
            "session_error" => LinkMessage::SessionError(payload(kind, p)?),
            "session_event" => LinkMessage::SessionEvent(payload(kind, p)?),
            "diagnose_report" => LinkMessage::DiagnoseReport(payload(kind, p)?),
            "session_start" => LinkMessage::SessionStart(payload(kind, p)?),
            "session_input" => LinkMessage::SessionInput(payload(kind, p)?),
            "session_cancel" => LinkMessage::SessionCancel(payload(kind, p)?),
            "session_attach" => LinkMessage::SessionAttach(payload(kind, p)?),
            "session_detach" => LinkMessage::SessionDetach(payload(kind, p)?),
            "session_answer" => LinkMessage::SessionAnswer(payload(kind, p)?),
            "session_notice" => LinkMessage::SessionNotice(payload(kind, p)?),
            "ping" => LinkMessage::Ping,
            "pong" => LinkMessage::Pong,
            "disconnect" => LinkMessage::Disconnect(payload(kind, p)?),
            other => LinkMessage::Unknown(other.to_owned()),
        };
        Ok(LinkFrame {
            id: raw.id,
            ref_id: raw.ref_id.filter(|r| !r.is_empty()),
            message,
        })
    }

    pub fn encode(&self) -> String {
        let mut map = Map::new();
        map.insert("type".into(), Value::String(self.message.kind().to_owned()));
        map.insert("id".into(), Value::String(self.id.clone()));
        if let Some(r) = &self.ref_id {
            map.insert("ref_id".into(), Value::String(r.clone()));
        }
        if let Some(p) = self.message.payload() {
            map.insert("payload".into(), p);
        }
        Value::Object(map).to_string()
    }
}

/// Encodes a `session_event` frame around an already-encoded client-protocol event, without
/// decoding and re-encoding it (the event bytes reach the hub exactly as clients see them).
pub fn encode_session_event(id: &str, session_id: &str, event_json: &str) -> String {
    let id = Value::String(id.to_owned());
    let sid = Value::String(session_id.to_owned());
    format!(
        r#"{{"type":"session_event","id":{id},"payload":{{"session_id":{sid},"event":{event_json}}}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catpaw_shapes_round_trip() {
        let frame = LinkFrame::new(
            "m1",
            LinkMessage::AlertEvents(AlertEvents::new(vec![AlertEvent {
                event_time: 1_700_000_000,
                event_status: AlertStatus::Warning,
                alert_key: "k".into(),
                labels: BTreeMap::from([("plugin".into(), "disk".into())]),
                attrs: BTreeMap::new(),
                description: "disk full".into(),
                description_format: String::new(),
                seq: None,
            }])),
        );
        let text = frame.encode();
        // Version 1 peers never see version-2 fields; empty optional fields are omitted as
        // catpaw's `omitempty` does.
        assert!(
            !text.contains("seq")
                && !text.contains("attrs")
                && !text.contains("description_format")
        );
        assert_eq!(LinkFrame::decode(&text), Ok(frame));
    }

    #[test]
    fn go_nil_maps_are_empty_and_one_bad_event_spares_the_batch() {
        // catpaw's `Labels` has no omitempty: a nil map arrives as null.
        let text = r#"{"type":"alert_events","id":"1","payload":{"events":[
            {"event_time":1700000000,"event_status":"Critical","alert_key":"a","labels":null,"attrs":null,"description":"x"},
            {"event_time":"yesterday","event_status":"Critical","alert_key":"b","seq":7},
            {"event_time":1700000001,"event_status":"Ok","alert_key":"c","labels":{"k":"v"},"seq":8}
        ]}}"#;
        let LinkMessage::AlertEvents(batch) = LinkFrame::decode(text).expect("decode").message
        else {
            panic!("not alert_events");
        };
        assert_eq!(batch.events.len(), 2);
        assert!(batch.events[0].labels.is_empty());
        assert_eq!(batch.rejected.len(), 1);
        assert_eq!(batch.rejected[0].index, 1);
        assert_eq!(batch.rejected[0].seq, Some(7));
        assert!(
            batch.rejected[0].error.contains("event_time"),
            "{:?}",
            batch.rejected
        );
        assert_eq!(batch.seqs().collect::<Vec<_>>(), vec![8, 7]);
        let reg = r#"{"type":"register","id":"r","payload":{"hostname":"h","ip":"1","os":"linux","arch":"amd64","labels":null,"plugins":null,"agent_version":"v"}}"#;
        assert!(matches!(
            LinkFrame::decode(reg).expect("register").message,
            LinkMessage::Register(_)
        ));
    }

    #[test]
    fn catpaw_heartbeat_figures_it_leaves_out_are_unknown() {
        // catpaw's heartbeatPayload: cpu_pct and mem_pct are `omitempty` and never filled.
        let text =
            r#"{"type":"heartbeat","id":"h","payload":{"active_sessions":2,"active_alerts":0}}"#;
        let LinkMessage::Heartbeat(hb) = LinkFrame::decode(text).expect("decode").message else {
            panic!("not a heartbeat");
        };
        assert_eq!((hb.cpu_pct, hb.mem_pct), (None, None));
        // Encoded as catpaw would read it: unknown figures left out, known ones as numbers.
        let frame = LinkFrame::new("h", LinkMessage::Heartbeat(hb));
        assert!(!frame.encode().contains("cpu_pct"), "{}", frame.encode());
        let known = Heartbeat {
            cpu_pct: Some(0.0),
            mem_pct: Some(41.5),
            ..Heartbeat::default()
        };
        let text = LinkFrame::new("h", LinkMessage::Heartbeat(known.clone())).encode();
        assert!(text.contains(r#""cpu_pct":0.0"#) && text.contains(r#""mem_pct":41.5"#));
        assert_eq!(
            LinkFrame::decode(&text).map(|f| f.message),
            Ok(LinkMessage::Heartbeat(known))
        );
    }

    #[test]
    fn a_large_session_output_is_probed_and_read_under_its_own_limit() {
        let report = "r".repeat(MAX_LINK_FRAME_BYTES + 10);
        let text = serde_json::json!({"type": "session_output", "id": "o1", "payload": {
            "session_id": "s1", "delta": "", "stage": "", "done": true, "report": report}})
        .to_string();
        assert!(matches!(
            LinkFrame::decode(&text),
            Err(LinkDecodeError::TooLarge { .. })
        ));
        assert_eq!(
            probe_session_output(&text),
            Some(OutputProbe {
                session_id: "s1".into(),
                done: true,
                turn_done: false,
            })
        );
        let frame = LinkFrame::decode_with_limit(&text, MAX_SESSION_OUTPUT_FRAME_BYTES)
            .expect("read under the session output limit");
        assert!(
            matches!(frame.message, LinkMessage::SessionOutput(o) if o.report.as_deref() == Some(report.as_str()))
        );
        let reply = r#"{"type":"session_output","id":"o2","payload":{"session_id":"s2","delta":"x","stage":"answer","done":false,"metadata":{"turn_done":true}}}"#;
        assert_eq!(
            probe_session_output(reply).map(|p| (p.done, p.turn_done)),
            Some((false, true))
        );
        assert_eq!(
            probe_session_output(r#"{"type":"alert_events","id":"a","payload":{}}"#),
            None
        );
        assert_eq!(probe_session_output("garbage"), None);
    }

    #[test]
    fn sanitize_clamps_unbelievable_times_and_long_descriptions() {
        let mut e = AlertEvent {
            event_time: 300_000_000_000,
            event_status: AlertStatus::Critical,
            alert_key: "k".into(),
            labels: BTreeMap::new(),
            attrs: BTreeMap::new(),
            description: "é".repeat(MAX_ALERT_DESCRIPTION_BYTES),
            description_format: String::new(),
            seq: None,
        };
        let changed = e.sanitize(1_700_000_000);
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert_eq!(e.event_time, 1_700_000_000);
        assert_eq!(e.attrs[ATTR_EVENT_TIME_CLAMPED], "300000000000");
        assert!(e.description.len() <= MAX_ALERT_DESCRIPTION_BYTES);
        assert!(e.attrs.contains_key(ATTR_DESCRIPTION_CUT));
        // A sane event is left alone.
        let mut ok = e.clone();
        ok.attrs.clear();
        assert!(ok.sanitize(1_700_000_000).is_empty() && ok.attrs.is_empty());
    }

    #[test]
    fn a_refused_frame_still_tells_its_id_and_seqs() {
        let events: Vec<Value> = (1..=3)
            .map(|i| serde_json::json!({"event_time": 1, "event_status": "Ok", "alert_key": "k", "seq": i, "description": "x"}))
            .collect();
        let text =
            serde_json::json!({"type": "alert_events", "id": "f1", "payload": {"events": events}})
                .to_string();
        assert_eq!(
            probe_refused_frame(&text),
            ("f1".into(), Some("alert_events".into()), vec![1, 2, 3])
        );
        assert_eq!(
            probe_refused_frame("garbage"),
            (String::new(), None, vec![])
        );
    }

    #[test]
    fn alert_keys_are_stable_and_order_free() {
        let a = BTreeMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ]);
        // Fixed value: changing the hash would split every alert's history in two.
        assert_eq!(alert_key(&a), alert_key(&a.clone()));
        assert_eq!(alert_key(&BTreeMap::new()), "cbf29ce484222325");
        let c = BTreeMap::from([("a".to_owned(), "12".to_owned())]);
        let d = BTreeMap::from([("a1".to_owned(), "2".to_owned())]);
        assert_ne!(alert_key(&c), alert_key(&d));
    }

    #[test]
    fn session_event_embeds_the_event_verbatim() {
        let text = encode_session_event("i", "s", r#"{"event":"text_delta","seq":3}"#);
        let frame = LinkFrame::decode(&text).expect("decode");
        match frame.message {
            LinkMessage::SessionEvent(e) => {
                assert_eq!(e.session_id, "s");
                assert_eq!(e.event["seq"], 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frames_are_errors_that_say_why() {
        assert!(matches!(
            LinkFrame::decode("nope"),
            Err(LinkDecodeError::Json(_))
        ));
        assert!(matches!(
            LinkFrame::decode("{}"),
            Err(LinkDecodeError::Envelope(_))
        ));
        let e = LinkFrame::decode(r#"{"type":"ack","id":"1","payload":{"ok":"yes"}}"#)
            .expect_err("bad ack");
        assert!(e.to_string().contains("`ok`"), "{e}");
        let big = format!(
            r#"{{"type":"ping","id":"{}"}}"#,
            "x".repeat(MAX_LINK_FRAME_BYTES)
        );
        assert!(matches!(
            LinkFrame::decode(&big),
            Err(LinkDecodeError::TooLarge { .. })
        ));
        assert_eq!(
            LinkFrame::decode(r#"{"type":"future_thing","id":"1"}"#).map(|f| f.message),
            Ok(LinkMessage::Unknown("future_thing".into()))
        );
    }
}
