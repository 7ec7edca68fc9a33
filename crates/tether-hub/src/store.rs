//! The hub's storage: agents, agent credentials, alerts, sessions and their events, diagnosis
//! reports. Behind the [`Store`] trait so a PostgreSQL store can be added for deployments that
//! outgrow one machine; [`SqliteStore`] is the default (one file, WAL).
//!
//! Methods are synchronous (SQLite is); the hub calls them through [`HubStore`], which runs them
//! on the blocking pool.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tether_proto::link::{AlertEvent, Heartbeat, Register};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (ms) of unix milliseconds; never panics (out-of-range values are clamped).
pub use tether_proto::time::rfc3339_ms;

/// Unix milliseconds of an RFC 3339 time.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

/// The last heartbeat's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatFigures {
    pub active_sessions: u64,
    pub active_alerts: u64,
    /// Absent: the agent did not say (unknown, not 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_alerts: Option<u64>,
    /// RFC 3339.
    pub at: String,
}

/// An agent as operators see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub agent_id: String,
    pub hostname: String,
    pub ip: String,
    pub os: String,
    pub arch: String,
    pub labels: BTreeMap<String, String>,
    pub plugins: Vec<String>,
    pub agent_version: String,
    pub proto: u32,
    pub connected: bool,
    pub first_seen: String,
    pub last_seen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<HeartbeatFigures>,
    /// The credential it registered with.
    #[serde(skip)]
    pub token_id: Option<String>,
    /// That credential's name (`tether hub token create NAME`); null when the agent
    /// registered with the shared enrollment token. Tells apart agents on same-named hosts.
    #[serde(default)]
    pub token_name: Option<String>,
}

/// An agent credential (only its hash is kept).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub hash: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// The agent this credential is bound to (set on first registration).
    pub agent_id: Option<String>,
}

/// A stored alert event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertRow {
    pub id: i64,
    pub agent_id: String,
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub event_time: String,
    pub event_status: String,
    pub alert_key: String,
    pub labels: BTreeMap<String, String>,
    pub attrs: BTreeMap<String, String>,
    pub description: String,
    pub description_format: String,
    pub received_at: String,
}

/// Filters of `alerts.list`.
#[derive(Clone, Debug, Default)]
pub struct AlertFilter {
    pub agent_id: Option<String>,
    pub status: Option<String>,
    pub label: Option<(String, String)>,
    /// Unix ms, inclusive.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub before_id: Option<i64>,
    pub limit: usize,
}

/// What storing a batch of alert events did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertInsert {
    pub rows: Vec<AlertRow>,
    /// Events already stored (same agent and seq): delivered twice, kept once.
    pub duplicates: usize,
}

/// A hub session (relayed to an agent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session_id: String,
    pub agent_id: String,
    pub mode: String,
    pub title: Option<String>,
    pub policy: String,
    pub state: String,
    pub created_at: String,
    pub created_by: String,
    pub proto: u32,
    pub params: Value,
    pub last_seq: u64,
}

/// A diagnosis report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    pub agent_id: String,
    pub alert_key: String,
    pub session_id: Option<String>,
    pub report: String,
    pub created_at: String,
}

/// The hub's storage.
pub trait Store: Send + Sync {
    fn upsert_agent(
        &self,
        agent_id: &str,
        reg: &Register,
        proto: u32,
        token_id: Option<&str>,
    ) -> StoreResult<AgentRecord>;
    fn set_connected(&self, agent_id: &str, connected: bool) -> StoreResult<()>;
    fn record_heartbeat(&self, agent_id: &str, hb: &Heartbeat) -> StoreResult<HeartbeatFigures>;
    fn list_agents(&self) -> StoreResult<Vec<AgentRecord>>;
    fn get_agent(&self, agent_id: &str) -> StoreResult<Option<AgentRecord>>;
    /// At start-up: nobody is connected yet.
    fn mark_all_disconnected(&self) -> StoreResult<()>;

    fn insert_token(
        &self,
        name: &str,
        hash: &str,
        labels: &BTreeMap<String, String>,
    ) -> StoreResult<TokenRecord>;
    fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>>;
    /// Revokes by id or name; returns how many were revoked.
    fn revoke_token(&self, id_or_name: &str) -> StoreResult<usize>;
    /// Credentials revoked at or after `since_ms` (unix ms), with when: (id, revoked_at).
    fn tokens_revoked_since(&self, since_ms: i64) -> StoreResult<Vec<(String, i64)>>;
    /// The active (not revoked) credential with this hash.
    fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>>;
    fn bind_token(&self, token_id: &str, agent_id: &str) -> StoreResult<()>;

    /// Stores alert events; under version 2 an event whose (agent, seq) is stored already is
    /// skipped (counted as a duplicate). Durable when it returns.
    fn insert_alerts(
        &self,
        agent_id: &str,
        hostname: &str,
        events: &[AlertEvent],
    ) -> StoreResult<AlertInsert>;
    fn list_alerts(&self, filter: &AlertFilter) -> StoreResult<Vec<AlertRow>>;
    fn count_alerts(&self) -> StoreResult<u64>;
    /// Deletes alerts received before `before_ms`.
    fn prune_alerts(&self, before_ms: i64) -> StoreResult<usize>;

    fn insert_session(&self, s: &SessionRecord) -> StoreResult<()>;
    fn update_session(&self, session_id: &str, state: &str, last_seq: u64) -> StoreResult<()>;
    fn list_sessions(&self, agent_id: Option<&str>) -> StoreResult<Vec<SessionRecord>>;
    fn get_session(&self, session_id: &str) -> StoreResult<Option<SessionRecord>>;
    /// Appends events (seq, frame); an already stored seq is ignored.
    fn append_events(&self, session_id: &str, events: &[(u64, String)]) -> StoreResult<()>;
    fn read_events(
        &self,
        session_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, String)>>;
    /// Deletes sessions (and their events) created before `before_ms`.
    fn prune_sessions(&self, before_ms: i64) -> StoreResult<usize>;

    fn insert_report(&self, r: &ReportRow) -> StoreResult<()>;
    fn list_reports(&self, agent_id: Option<&str>, limit: usize) -> StoreResult<Vec<ReportRow>>;
}

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    agent_id      TEXT PRIMARY KEY,
    hostname      TEXT NOT NULL,
    ip            TEXT NOT NULL,
    os            TEXT NOT NULL,
    arch          TEXT NOT NULL,
    labels        TEXT NOT NULL,
    plugins       TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    proto         INTEGER NOT NULL,
    connected     INTEGER NOT NULL,
    first_seen    INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
    heartbeat     TEXT,
    token_id      TEXT
);
CREATE TABLE IF NOT EXISTS agent_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    labels     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    agent_id   TEXT
);
CREATE TABLE IF NOT EXISTS alerts (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id           TEXT NOT NULL,
    hostname           TEXT NOT NULL,
    seq                INTEGER,
    event_time         INTEGER NOT NULL,
    event_status       TEXT NOT NULL,
    alert_key          TEXT NOT NULL,
    labels             TEXT NOT NULL,
    attrs              TEXT NOT NULL,
    description        TEXT NOT NULL,
    description_format TEXT NOT NULL,
    received_at        INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_agent_seq ON alerts(agent_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS alerts_received ON alerts(received_at);
CREATE INDEX IF NOT EXISTS alerts_agent ON alerts(agent_id, id);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    agent_id   TEXT NOT NULL,
    mode       TEXT NOT NULL,
    title      TEXT,
    policy     TEXT NOT NULL,
    state      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    proto      INTEGER NOT NULL,
    params     TEXT NOT NULL,
    last_seq   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS session_events (
    session_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    frame      TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reports (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id   TEXT NOT NULL,
    alert_key  TEXT NOT NULL,
    session_id TEXT,
    report     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
PRAGMA user_version = 1;
";

fn json_map(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

impl SqliteStore {
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent() {
            match tether_engine::perms::private_dir(dir) {
                Ok(Some(w)) => tracing::warn!("{w}"),
                Ok(None) => {}
                Err(e) => return Err(StoreError(format!("cannot create {}: {e}", dir.display()))),
            }
        }
        match tether_engine::perms::create_private(path) {
            Ok(Some(w)) => tracing::warn!("{w}"),
            Ok(None) => {}
            Err(e) => return Err(StoreError(format!("cannot create {}: {e}", path.display()))),
        }
        let conn = Connection::open(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    /// The connection, under the crate's locking policy ([`tether_engine::sync::lock`]): a
    /// panic in one store call never makes the store unusable for the next.
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        tether_engine::sync::lock(&self.conn)
    }
}

fn agent_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRecord> {
    let labels: String = row.get(5)?;
    let plugins: String = row.get(6)?;
    let heartbeat: Option<String> = row.get(12)?;
    Ok(AgentRecord {
        agent_id: row.get(0)?,
        hostname: row.get(1)?,
        ip: row.get(2)?,
        os: row.get(3)?,
        arch: row.get(4)?,
        labels: json_map(&labels),
        plugins: serde_json::from_str(&plugins).unwrap_or_default(),
        agent_version: row.get(7)?,
        proto: row.get::<_, i64>(8)? as u32,
        connected: row.get::<_, i64>(9)? != 0,
        first_seen: rfc3339_ms(row.get(10)?),
        last_seen: rfc3339_ms(row.get(11)?),
        heartbeat: heartbeat.and_then(|h| serde_json::from_str(&h).ok()),
        token_id: row.get(13)?,
        token_name: row.get(14)?,
    })
}

const AGENT_COLUMNS: &str = "agent_id, hostname, ip, os, arch, labels, plugins, agent_version, proto, connected, first_seen, last_seen, heartbeat, token_id, (SELECT name FROM agent_tokens WHERE agent_tokens.id = agents.token_id)";

fn token_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let labels: String = row.get(3)?;
    let revoked: Option<i64> = row.get(5)?;
    Ok(TokenRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        hash: row.get(2)?,
        labels: json_map(&labels),
        created_at: rfc3339_ms(row.get(4)?),
        revoked_at: revoked.map(rfc3339_ms),
        agent_id: row.get(6)?,
    })
}

fn alert_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    let labels: String = row.get(7)?;
    let attrs: String = row.get(8)?;
    let seq: Option<i64> = row.get(3)?;
    Ok(AlertRow {
        id: row.get(0)?,
        agent_id: row.get(1)?,
        hostname: row.get(2)?,
        seq: seq.map(|s| s as u64),
        event_time: rfc3339_ms(row.get::<_, i64>(4)?.saturating_mul(1000)),
        event_status: row.get(5)?,
        alert_key: row.get(6)?,
        labels: json_map(&labels),
        attrs: json_map(&attrs),
        description: row.get(9)?,
        description_format: row.get(10)?,
        received_at: rfc3339_ms(row.get(11)?),
    })
}

const ALERT_COLUMNS: &str = "id, agent_id, hostname, seq, event_time, event_status, alert_key, labels, attrs, description, description_format, received_at";

fn session_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    let params: String = row.get(9)?;
    Ok(SessionRecord {
        session_id: row.get(0)?,
        agent_id: row.get(1)?,
        mode: row.get(2)?,
        title: row.get(3)?,
        policy: row.get(4)?,
        state: row.get(5)?,
        created_at: rfc3339_ms(row.get(6)?),
        created_by: row.get(7)?,
        proto: row.get::<_, i64>(8)? as u32,
        params: serde_json::from_str(&params).unwrap_or(Value::Null),
        last_seq: row.get::<_, i64>(10)? as u64,
    })
}

const SESSION_COLUMNS: &str = "session_id, agent_id, mode, title, policy, state, created_at, created_by, proto, params, last_seq";

impl Store for SqliteStore {
    fn upsert_agent(
        &self,
        agent_id: &str,
        reg: &Register,
        proto: u32,
        token_id: Option<&str>,
    ) -> StoreResult<AgentRecord> {
        let now = now_ms();
        let conn = self.conn();
        conn.execute(
            "INSERT INTO agents (agent_id, hostname, ip, os, arch, labels, plugins, agent_version, proto, connected, first_seen, last_seen, token_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10, ?10, ?11)
             ON CONFLICT(agent_id) DO UPDATE SET hostname = excluded.hostname, ip = excluded.ip,
               os = excluded.os, arch = excluded.arch, labels = excluded.labels,
               plugins = excluded.plugins, agent_version = excluded.agent_version,
               proto = excluded.proto, connected = 1, last_seen = excluded.last_seen,
               token_id = COALESCE(excluded.token_id, agents.token_id)",
            params![
                agent_id,
                reg.hostname,
                reg.ip,
                reg.os,
                reg.arch,
                to_json(&reg.labels),
                to_json(&reg.plugins),
                reg.agent_version,
                proto,
                now,
                token_id
            ],
        )?;
        let rec = conn.query_row(
            &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = ?1"),
            [agent_id],
            agent_from_row,
        )?;
        Ok(rec)
    }

    fn set_connected(&self, agent_id: &str, connected: bool) -> StoreResult<()> {
        self.conn().execute(
            "UPDATE agents SET connected = ?2, last_seen = ?3 WHERE agent_id = ?1",
            params![agent_id, connected as i64, now_ms()],
        )?;
        Ok(())
    }

    fn record_heartbeat(&self, agent_id: &str, hb: &Heartbeat) -> StoreResult<HeartbeatFigures> {
        let now = now_ms();
        let figures = HeartbeatFigures {
            active_sessions: hb.active_sessions,
            active_alerts: hb.active_alerts,
            cpu_pct: hb.cpu_pct,
            mem_pct: hb.mem_pct,
            dropped_alerts: hb.dropped_alerts,
            at: rfc3339_ms(now),
        };
        self.conn().execute(
            "UPDATE agents SET heartbeat = ?2, last_seen = ?3 WHERE agent_id = ?1",
            params![agent_id, to_json(&figures), now],
        )?;
        Ok(figures)
    }

    fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents ORDER BY hostname, agent_id"
        ))?;
        let rows = stmt.query_map([], agent_from_row)?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)
    }

    fn get_agent(&self, agent_id: &str) -> StoreResult<Option<AgentRecord>> {
        let conn = self.conn();
        conn.query_row(
            &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = ?1"),
            [agent_id],
            agent_from_row,
        )
        .optional()
        .map_err(StoreError::from)
    }

    fn mark_all_disconnected(&self) -> StoreResult<()> {
        self.conn().execute("UPDATE agents SET connected = 0", [])?;
        Ok(())
    }

    fn insert_token(
        &self,
        name: &str,
        hash: &str,
        labels: &BTreeMap<String, String>,
    ) -> StoreResult<TokenRecord> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        self.conn().execute(
            "INSERT INTO agent_tokens (id, name, hash, labels, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, name, hash, to_json(labels), now],
        )?;
        Ok(TokenRecord {
            id,
            name: name.to_owned(),
            hash: hash.to_owned(),
            labels: labels.clone(),
            created_at: rfc3339_ms(now),
            revoked_at: None,
            agent_id: None,
        })
    }

    fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, hash, labels, created_at, revoked_at, agent_id FROM agent_tokens ORDER BY created_at",
        )?;
        let rows = stmt.query_map([], token_from_row)?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)
    }

    fn revoke_token(&self, id_or_name: &str) -> StoreResult<usize> {
        Ok(self.conn().execute(
            "UPDATE agent_tokens SET revoked_at = ?2 WHERE (id = ?1 OR name = ?1) AND revoked_at IS NULL",
            params![id_or_name, now_ms()],
        )?)
    }

    fn tokens_revoked_since(&self, since_ms: i64) -> StoreResult<Vec<(String, i64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, revoked_at FROM agent_tokens WHERE revoked_at >= ?1 ORDER BY revoked_at",
        )?;
        let rows = stmt.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)
    }

    fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        let conn = self.conn();
        conn.query_row(
            "SELECT id, name, hash, labels, created_at, revoked_at, agent_id FROM agent_tokens WHERE hash = ?1 AND revoked_at IS NULL",
            [hash],
            token_from_row,
        )
        .optional()
        .map_err(StoreError::from)
    }

    fn bind_token(&self, token_id: &str, agent_id: &str) -> StoreResult<()> {
        self.conn().execute(
            "UPDATE agent_tokens SET agent_id = ?2 WHERE id = ?1 AND agent_id IS NULL",
            params![token_id, agent_id],
        )?;
        Ok(())
    }

    fn insert_alerts(
        &self,
        agent_id: &str,
        hostname: &str,
        events: &[AlertEvent],
    ) -> StoreResult<AlertInsert> {
        let now = now_ms();
        // Under the lock: only the statements. The rows returned are built after the
        // commit, outside it.
        let mut inserted: Vec<(usize, i64)> = Vec::with_capacity(events.len());
        {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO alerts (agent_id, hostname, seq, event_time, event_status, alert_key, labels, attrs, description, description_format, received_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                for (i, e) in events.iter().enumerate() {
                    let n = insert.execute(params![
                        agent_id,
                        hostname,
                        e.seq.map(|s| s as i64),
                        e.event_time,
                        e.event_status.as_str(),
                        e.alert_key,
                        to_json(&e.labels),
                        to_json(&e.attrs),
                        e.description,
                        e.description_format,
                        now
                    ])?;
                    if n > 0 {
                        inserted.push((i, tx.last_insert_rowid()));
                    }
                }
            }
            tx.commit()?;
        }
        let rows: Vec<AlertRow> = inserted
            .into_iter()
            .map(|(i, id)| {
                let e = &events[i];
                AlertRow {
                    id,
                    agent_id: agent_id.to_owned(),
                    hostname: hostname.to_owned(),
                    seq: e.seq,
                    event_time: rfc3339_ms(e.event_time.saturating_mul(1000)),
                    event_status: e.event_status.as_str().to_owned(),
                    alert_key: e.alert_key.clone(),
                    labels: e.labels.clone(),
                    attrs: e.attrs.clone(),
                    description: e.description.clone(),
                    description_format: e.description_format.clone(),
                    received_at: rfc3339_ms(now),
                }
            })
            .collect();
        Ok(AlertInsert {
            duplicates: events.len() - rows.len(),
            rows,
        })
    }

    fn list_alerts(&self, f: &AlertFilter) -> StoreResult<Vec<AlertRow>> {
        let mut sql = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(a) = &f.agent_id {
            args.push(a.clone().into());
            sql.push_str(&format!(" AND agent_id = ?{}", args.len()));
        }
        if let Some(s) = &f.status {
            args.push(s.clone().into());
            sql.push_str(&format!(
                " AND event_status = ?{} COLLATE NOCASE",
                args.len()
            ));
        }
        if let Some((k, v)) = &f.label {
            args.push(format!("$.\"{}\"", k.replace('"', "")).into());
            args.push(v.clone().into());
            sql.push_str(&format!(
                " AND json_extract(labels, ?{}) = ?{}",
                args.len() - 1,
                args.len()
            ));
        }
        if let Some(since) = f.since_ms {
            args.push((since / 1000).into());
            sql.push_str(&format!(" AND event_time >= ?{}", args.len()));
        }
        if let Some(until) = f.until_ms {
            args.push((until / 1000).into());
            sql.push_str(&format!(" AND event_time <= ?{}", args.len()));
        }
        if let Some(before) = f.before_id {
            args.push(before.into());
            sql.push_str(&format!(" AND id < ?{}", args.len()));
        }
        args.push((f.limit.clamp(1, 1000) as i64).into());
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), alert_from_row)?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)
    }

    fn count_alerts(&self) -> StoreResult<u64> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM alerts", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn prune_alerts(&self, before_ms: i64) -> StoreResult<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM alerts WHERE received_at < ?1", [before_ms])?)
    }

    fn insert_session(&self, s: &SessionRecord) -> StoreResult<()> {
        self.conn().execute(
            &format!("INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
            params![
                s.session_id,
                s.agent_id,
                s.mode,
                s.title,
                s.policy,
                s.state,
                parse_rfc3339_ms(&s.created_at).unwrap_or_else(now_ms),
                s.created_by,
                s.proto,
                to_json(&s.params),
                s.last_seq as i64
            ],
        )?;
        Ok(())
    }

    fn update_session(&self, session_id: &str, state: &str, last_seq: u64) -> StoreResult<()> {
        self.conn().execute(
            "UPDATE sessions SET state = ?2, last_seq = MAX(last_seq, ?3) WHERE session_id = ?1",
            params![session_id, state, last_seq as i64],
        )?;
        Ok(())
    }

    fn list_sessions(&self, agent_id: Option<&str>) -> StoreResult<Vec<SessionRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE ?1 IS NULL OR agent_id = ?1 ORDER BY created_at, session_id"
        ))?;
        let rows = stmt.query_map([agent_id], session_from_row)?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)
    }

    fn get_session(&self, session_id: &str) -> StoreResult<Option<SessionRecord>> {
        let conn = self.conn();
        conn.query_row(
            &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1"),
            [session_id],
            session_from_row,
        )
        .optional()
        .map_err(StoreError::from)
    }

    fn append_events(&self, session_id: &str, events: &[(u64, String)]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO session_events (session_id, seq, frame) VALUES (?1, ?2, ?3)",
            )?;
            for (seq, frame) in events {
                insert.execute(params![session_id, *seq as i64, frame])?;
            }
            let last = events.iter().map(|(s, _)| *s).max().unwrap_or(0);
            tx.execute(
                "UPDATE sessions SET last_seq = MAX(last_seq, ?2) WHERE session_id = ?1",
                params![session_id, last as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn read_events(
        &self,
        session_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, frame FROM session_events WHERE session_id = ?1 AND seq >= ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![session_id, from as i64, to as i64, limit as i64],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
        )?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)
    }

    fn prune_sessions(&self, before_ms: i64) -> StoreResult<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM session_events WHERE session_id IN (SELECT session_id FROM sessions WHERE created_at < ?1 AND state = 'closed')",
            [before_ms],
        )?;
        let n = tx.execute(
            "DELETE FROM sessions WHERE created_at < ?1 AND state = 'closed'",
            [before_ms],
        )?;
        tx.commit()?;
        Ok(n)
    }

    fn insert_report(&self, r: &ReportRow) -> StoreResult<()> {
        self.conn().execute(
            "INSERT INTO reports (agent_id, alert_key, session_id, report, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                r.agent_id,
                r.alert_key,
                r.session_id,
                r.report,
                parse_rfc3339_ms(&r.created_at).unwrap_or_else(now_ms)
            ],
        )?;
        Ok(())
    }

    fn list_reports(&self, agent_id: Option<&str>, limit: usize) -> StoreResult<Vec<ReportRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT agent_id, alert_key, session_id, report, created_at FROM reports WHERE ?1 IS NULL OR agent_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![agent_id, limit as i64], |r| {
            Ok(ReportRow {
                agent_id: r.get(0)?,
                alert_key: r.get(1)?,
                session_id: r.get(2)?,
                report: r.get(3)?,
                created_at: rfc3339_ms(r.get(4)?),
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)
    }
}

/// How many store calls may be on the blocking pool at once. The SQLite store has one
/// connection, so more only park threads on its lock: in an alert storm from 10 000 agents,
/// unbounded calls grew the blocking pool to its 512-thread limit and the hub's RSS with it.
const STORE_CALLS_IN_FLIGHT: usize = 2;

/// The store as the async hub uses it: every call runs on the blocking pool, a bounded
/// number at a time (the rest wait as tasks, not threads).
#[derive(Clone)]
pub struct HubStore {
    inner: Arc<dyn Store>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl HubStore {
    pub fn new(store: Arc<dyn Store>) -> HubStore {
        HubStore {
            inner: store,
            in_flight: Arc::new(tokio::sync::Semaphore::new(STORE_CALLS_IN_FLIGHT)),
        }
    }

    /// Runs `f` against the store off the async workers.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError("the store is closed".into()))?;
        let store = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(store.as_ref())
        })
        .await
        .map_err(|e| StoreError(format!("store task failed: {e}")))?
    }

    /// Direct access for start-up and CLI code (blocking).
    pub fn blocking(&self) -> &dyn Store {
        self.inner.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::link::AlertStatus;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("hub.db")).expect("open");
        (dir, s)
    }

    fn event(seq: Option<u64>, key: &str, status: AlertStatus) -> AlertEvent {
        AlertEvent {
            event_time: 1_700_000_000,
            event_status: status,
            alert_key: key.into(),
            labels: BTreeMap::from([("mount".to_owned(), "/var".to_owned())]),
            attrs: BTreeMap::new(),
            description: "d".into(),
            description_format: String::new(),
            seq,
        }
    }

    #[test]
    fn alerts_with_a_seq_are_stored_once() {
        let (_d, s) = store();
        let first = s
            .insert_alerts(
                "a1",
                "h",
                &[
                    event(Some(1), "k", AlertStatus::Warning),
                    event(Some(2), "k", AlertStatus::Ok),
                ],
            )
            .expect("insert");
        assert_eq!((first.rows.len(), first.duplicates), (2, 0));
        let again = s
            .insert_alerts(
                "a1",
                "h",
                &[
                    event(Some(2), "k", AlertStatus::Ok),
                    event(Some(3), "k", AlertStatus::Critical),
                ],
            )
            .expect("insert");
        assert_eq!((again.rows.len(), again.duplicates), (1, 1));
        // Another agent may use the same seq; version-1 events (no seq) are all kept.
        s.insert_alerts("a2", "h", &[event(Some(1), "k", AlertStatus::Info)])
            .expect("insert");
        s.insert_alerts(
            "a3",
            "h",
            &[
                event(None, "k", AlertStatus::Info),
                event(None, "k", AlertStatus::Info),
            ],
        )
        .expect("insert");
        assert_eq!(s.count_alerts().expect("count"), 6);
    }

    #[test]
    fn alerts_filter_and_page() {
        let (_d, s) = store();
        for i in 0..10u64 {
            let status = if i % 2 == 0 {
                AlertStatus::Critical
            } else {
                AlertStatus::Ok
            };
            s.insert_alerts("a1", "h", &[event(Some(i + 1), &format!("k{i}"), status)])
                .expect("insert");
        }
        let crit = s
            .list_alerts(&AlertFilter {
                status: Some("critical".into()),
                limit: 100,
                ..Default::default()
            })
            .expect("list");
        assert_eq!(crit.len(), 5);
        let page1 = s
            .list_alerts(&AlertFilter {
                limit: 4,
                ..Default::default()
            })
            .expect("list");
        let page2 = s
            .list_alerts(&AlertFilter {
                limit: 4,
                before_id: page1.last().map(|r| r.id),
                ..Default::default()
            })
            .expect("list");
        assert_eq!(page1.len(), 4);
        assert!(page2.iter().all(|r| r.id < page1[3].id));
        let by_label = s
            .list_alerts(&AlertFilter {
                label: Some(("mount".into(), "/var".into())),
                limit: 100,
                ..Default::default()
            })
            .expect("list");
        assert_eq!(by_label.len(), 10);
        let none = s
            .list_alerts(&AlertFilter {
                label: Some(("mount".into(), "/x".into())),
                limit: 100,
                ..Default::default()
            })
            .expect("list");
        assert!(none.is_empty());
    }

    #[test]
    fn tokens_are_found_by_hash_until_revoked() {
        let (_d, s) = store();
        let t = s
            .insert_token("web-1", "h1", &BTreeMap::new())
            .expect("insert");
        assert_eq!(
            s.token_by_hash("h1").expect("find").map(|t| t.name),
            Some("web-1".into())
        );
        s.bind_token(&t.id, "agent-a").expect("bind");
        s.bind_token(&t.id, "agent-b").expect("bind");
        assert_eq!(
            s.list_tokens().expect("list")[0].agent_id.as_deref(),
            Some("agent-a")
        );
        assert_eq!(s.revoke_token("web-1").expect("revoke"), 1);
        assert!(s.token_by_hash("h1").expect("find").is_none());
    }
}
