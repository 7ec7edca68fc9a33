//! The audit log: one JSON line per tool call, local or remote, in `state_dir/audit.jsonl`.
//!
//! Each line is written with a single `write` to a file opened for appending and is on its way
//! to disk before the result goes back to the model (DESIGN.md rule 8): what a model was allowed
//! to do is recorded even if the agent dies a moment later.

use serde::Serialize;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tether_proto::{CallId, ClientInfo, Scope, SessionId, TurnId};

/// Whether and how the call was allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditDecision {
    /// The tool needs no approval.
    NotRequired,
    /// Approved by a client (see `approved_by`).
    Allowed,
    /// Allowed by an earlier `scope: session` answer ("always allow"): `approved_by` names
    /// who gave it and `grant_call_id` the call it was given for.
    AllowedForSession,
    Denied,
    /// The call never reached the permission step (bad arguments, unknown tool, cancelled).
    NotAsked,
}

/// What came of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Ok,
    Error,
    Denied,
    Cancelled,
    InvalidArguments,
    UnknownTool,
    /// The host has the tool, but this session may not use it (e.g. `shell` in a session
    /// started from the hub, unless `remote_tools` allows it).
    NotAllowed,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    /// RFC 3339 UTC, milliseconds.
    pub time: String,
    pub session_id: SessionId,
    pub turn_id: TurnId,
    pub call_id: CallId,
    /// Who started the turn.
    pub originator: Option<ClientInfo>,
    /// The session was started from the hub.
    pub remote: bool,
    pub tool: String,
    pub args: Value,
    pub decision: AuditDecision,
    /// Who allowed or denied the call; for `allowed_for_session`, who gave the grant (`null`
    /// for a grant restored from a session saved before grants named their giver).
    pub approved_by: Option<ClientInfo>,
    /// What answered the prompt on `approved_by`'s behalf (`--yes`, `--no`, `no-terminal`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// How far the approval reaches: `once`, or `session` (an "always allow" given with this
    /// call, or the grant a call was allowed by). Absent when nobody approved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// For `allowed_for_session`: the call whose answer made the grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_call_id: Option<CallId>,
    /// How long the call waited for a permission answer (present when it was asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// How long the tool itself ran (0 when it never ran); never includes `waited_ms`.
    pub duration_ms: u64,
    pub outcome: AuditOutcome,
    pub output_bytes: usize,
    pub truncated: bool,
}

/// Appends audit entries to a JSON-lines file.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent() {
            tether_host::perms::private_dir(dir)?;
        }
        if let Some(w) = tether_host::perms::create_private(path)? {
            tracing::warn!("{w}");
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditLog {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one line. A failure is logged and returned; the caller decides what it means.
    pub fn record(&self, entry: &AuditEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("audit log lock poisoned"))?;
        // One write of the whole line: appends of concurrent sessions never interleave.
        let result = file.write_all(&line).and_then(|()| file.flush());
        if let Err(e) = &result {
            tracing::error!(path = %self.path.display(), error = %e, "audit log write failed");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_one_json_line_per_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(&dir.path().join("audit.jsonl")).expect("open");
        for i in 0..3 {
            log.record(&AuditEntry {
                time: "2026-01-01T00:00:00.000Z".into(),
                session_id: SessionId("s".into()),
                turn_id: TurnId("t".into()),
                call_id: CallId(format!("c{i}")),
                originator: None,
                remote: false,
                tool: "shell".into(),
                args: serde_json::json!({"command": "ls"}),
                decision: AuditDecision::Allowed,
                approved_by: None,
                via: None,
                scope: None,
                grant_call_id: None,
                waited_ms: None,
                duration_ms: 3,
                outcome: AuditOutcome::Ok,
                output_bytes: 10,
                truncated: false,
            })
            .expect("record");
        }
        let text = std::fs::read_to_string(log.path()).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["call_id"], "c2");
        assert_eq!(lines[0]["decision"], "allowed");
    }
}
