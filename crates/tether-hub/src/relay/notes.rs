//! What the hub's own consumers hear of every hub session.

use serde_json::Value;
use tether_proto::{EventBody, Mode, StopReason};

/// How many session notes an in-process consumer may fall behind before it misses some.
pub const SESSION_NOTES_BACKLOG: usize = 4096;

/// What the hub's own consumers (the automatic diagnosis, the approval notifications) hear of
/// every hub session: a few of its events, as they are stored.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionNote {
    pub session_id: String,
    pub agent_id: String,
    pub hostname: String,
    pub mode: Mode,
    /// The session's creator (`created_by`).
    pub created_by: String,
    /// The alert it diagnoses, when it was created for one.
    pub alert_id: Option<i64>,
    pub activity: Activity,
}

/// The events a [`SessionNote`] reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Activity {
    /// A tool call waits for a human (or, under policy `any`, an agent) to allow it.
    PermissionRequested {
        call_id: String,
        tool: String,
        args: Value,
    },
    PermissionResolved {
        call_id: String,
    },
    /// A turn ended; `tokens`: the usage the agent reported (0 when it reported none).
    TurnEnded {
        stop: StopReason,
        tokens: u64,
    },
    Closed,
}

impl Activity {
    pub(super) fn of(body: &EventBody) -> Option<Activity> {
        Some(match body {
            EventBody::PermissionRequested {
                call_id,
                tool,
                args,
                ..
            } => Activity::PermissionRequested {
                call_id: call_id.to_string(),
                tool: tool.clone(),
                args: args.clone(),
            },
            EventBody::PermissionResolved { call_id, .. } => Activity::PermissionResolved {
                call_id: call_id.to_string(),
            },
            EventBody::TurnEnded { stop, usage, .. } => Activity::TurnEnded {
                stop: *stop,
                tokens: usage.as_ref().map_or(0, |u| u.total_tokens),
            },
            EventBody::SessionClosed { .. } => Activity::Closed,
            _ => return None,
        })
    }
}
