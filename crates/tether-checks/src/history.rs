//! The agent's own alert history: every alert event it raised (checks and `alert send`),
//! kept in `state_dir/alerts.db` whether or not a hub is configured, bounded to the newest
//! `max_events`. `tether alerts` reads it directly, so it works with the agent stopped.

use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::Mutex;
use tether_proto::link::AlertEvent;

pub const DEFAULT_HISTORY_MAX: u64 = 10_000;

pub struct AlertHistory {
    conn: Mutex<Connection>,
    max: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("alert history: {0}")]
pub struct HistoryError(pub String);

impl From<rusqlite::Error> for HistoryError {
    fn from(e: rusqlite::Error) -> Self {
        HistoryError(e.to_string())
    }
}

impl AlertHistory {
    pub fn open(path: &Path, max_events: u64) -> Result<AlertHistory, HistoryError> {
        if let Some(dir) = path.parent() {
            tether_host::perms::private_dir(dir)
                .map_err(|e| HistoryError(format!("cannot create {}: {e}", dir.display())))?;
        }
        match tether_host::perms::create_private(path) {
            Ok(Some(w)) => tracing::warn!("{w}"),
            Ok(None) => {}
            Err(e) => {
                return Err(HistoryError(format!(
                    "cannot create {}: {e}",
                    path.display()
                )));
            }
        }
        let conn = Connection::open(path)
            .map_err(|e| HistoryError(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS history (
                 id    INTEGER PRIMARY KEY AUTOINCREMENT,
                 event TEXT NOT NULL
             );",
        )?;
        Ok(AlertHistory {
            conn: Mutex::new(conn),
            max: max_events.max(1),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, HistoryError> {
        self.conn
            .lock()
            .map_err(|_| HistoryError("history lock poisoned".into()))
    }

    /// Records one event and trims the oldest past the bound.
    pub fn record(&self, event: &AlertEvent) -> Result<(), HistoryError> {
        let text = serde_json::to_string(event).map_err(|e| HistoryError(e.to_string()))?;
        let conn = self.conn()?;
        conn.execute("INSERT INTO history (event) VALUES (?1)", [text])?;
        let id = conn.last_insert_rowid();
        // Rows are numbered in order: everything more than `max` behind the newest goes.
        conn.execute(
            "DELETE FROM history WHERE id <= ?1",
            params![id - self.max as i64],
        )?;
        Ok(())
    }

    /// The newest `limit` events, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<AlertEvent>, HistoryError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT event FROM history ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt.query_map([limit as i64], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            if let Ok(e) = serde_json::from_str(&row?) {
                out.push(e);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tether_proto::link::AlertStatus;

    fn event(i: u64) -> AlertEvent {
        AlertEvent {
            event_time: 1_700_000_000 + i as i64,
            event_status: AlertStatus::Warning,
            alert_key: format!("k{i}"),
            labels: BTreeMap::new(),
            attrs: BTreeMap::new(),
            description: String::new(),
            description_format: String::new(),
            seq: None,
        }
    }

    #[test]
    fn keeps_the_newest_events_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = AlertHistory::open(&dir.path().join("alerts.db"), 5).expect("open");
        for i in 0..12 {
            h.record(&event(i)).expect("record");
        }
        let recent = h.recent(100).expect("recent");
        let keys: Vec<&str> = recent.iter().map(|e| e.alert_key.as_str()).collect();
        assert_eq!(keys, vec!["k11", "k10", "k9", "k8", "k7"]);
    }
}
