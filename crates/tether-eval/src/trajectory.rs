//! What a diagnosis did, read from its session events: each tool call with its arguments,
//! whether it needed approval and what was decided, and what it answered.

use serde::Serialize;
use serde_json::Value;
use tether_proto::{Decision, EventBody, StopReason};

/// One tool call the model requested.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Call {
    #[serde(skip)]
    pub call_id: String,
    pub tool: String,
    pub args: Value,
    /// A permission prompt was raised for it.
    pub asked: bool,
    /// What the prompt was answered with.
    pub decision: Option<Decision>,
    /// The result: `None` when the turn ended before one came.
    pub ok: Option<bool>,
    /// What the tool answered (as the model read it, before fencing).
    #[serde(serialize_with = "clipped")]
    pub output: String,
    /// What the audit log says came of it (`ok`, `error`, `denied`, `not_allowed`,
    /// `unknown_tool`, `invalid_arguments`, `cancelled`).
    pub outcome: Option<String>,
}

impl Call {
    /// Whether the tool ran: the audit log says it did (`ok` or `error`). Without an audit
    /// entry, whether it was answered and not held back by a prompt that was not allowed (a
    /// call refused for bad arguments then counts too: the safe side to err on).
    pub fn went_through(&self) -> bool {
        match self.outcome.as_deref() {
            Some(o) => o == "ok" || o == "error",
            None => self.ok.is_some() && !(self.asked && self.decision != Some(Decision::Allow)),
        }
    }

    /// Whether it went through without a human's approval.
    pub fn went_through_unapproved(&self) -> bool {
        self.went_through() && self.decision != Some(Decision::Allow)
    }
}

/// Longest tool output kept in the scorecard's JSON, in characters.
pub const OUTPUT_CHARS: usize = 2000;

fn clipped<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&tether_host::text::clip(text, OUTPUT_CHARS))
}

/// A diagnosis' tool calls and how its turn ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Trajectory {
    pub calls: Vec<Call>,
    pub stop: Option<StopReason>,
    pub error: Option<String>,
}

impl Trajectory {
    /// Reads the events of one turn (deltas may be left out).
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a EventBody>) -> Trajectory {
        let mut t = Trajectory::default();
        // call id → index in `calls`
        let mut ids: Vec<(String, usize)> = Vec::new();
        let find =
            |ids: &[(String, usize)], id: &str| ids.iter().find(|(c, _)| c == id).map(|(_, i)| *i);
        for ev in events {
            match ev {
                EventBody::ToolCall {
                    call_id,
                    tool,
                    args,
                    ..
                } => {
                    ids.push((call_id.0.clone(), t.calls.len()));
                    t.calls.push(Call {
                        call_id: call_id.0.clone(),
                        tool: tool.clone(),
                        args: args.clone(),
                        asked: false,
                        decision: None,
                        ok: None,
                        output: String::new(),
                        outcome: None,
                    });
                }
                EventBody::PermissionRequested { call_id, .. } => {
                    if let Some(i) = find(&ids, &call_id.0) {
                        t.calls[i].asked = true;
                    }
                }
                EventBody::PermissionResolved {
                    call_id, decision, ..
                } => {
                    if let Some(i) = find(&ids, &call_id.0) {
                        t.calls[i].decision = Some(*decision);
                    }
                }
                EventBody::ToolResult {
                    call_id,
                    ok,
                    output,
                    ..
                } => {
                    if let Some(i) = find(&ids, &call_id.0) {
                        t.calls[i].ok = Some(*ok);
                        t.calls[i].output = output.clone();
                    }
                }
                EventBody::TurnEnded { stop, error, .. } => {
                    t.stop = Some(*stop);
                    t.error = error.clone();
                }
                _ => {}
            }
        }
        t
    }

    /// Adds each call's outcome from the audit log's lines (`audit.jsonl`); lines of other
    /// calls are ignored.
    pub fn add_audit(&mut self, audit_jsonl: &str) {
        for line in audit_jsonl.lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let (Some(id), Some(outcome)) = (
                entry.get("call_id").and_then(Value::as_str),
                entry.get("outcome").and_then(Value::as_str),
            ) else {
                continue;
            };
            if let Some(call) = self.calls.iter_mut().find(|c| c.call_id == id) {
                call.outcome = Some(outcome.to_owned());
            }
        }
    }
}
