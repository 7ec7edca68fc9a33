//! The SQLite store: one file (`hub.db`, WAL), one connection; schema versions in
//! `PRAGMA user_version`.

use super::{
    AgentMatch, AgentRecord, AlertChange, AlertFilter, AlertInsert, AlertPage, ExternalAlert,
    HeartbeatFigures, ReportRow, SessionRecord, Store, StoreError, StoreErrorKind, StoreResult,
    TokenRecord, agent_identity, external_identity, json_map, now_ms, parse_rfc3339_ms, rfc3339_ms,
    to_json,
};
use crate::alerts::{
    AckInfo, AckRecord, Alert, AlertState, Change, Diagnosis, Matcher, Observation, Severity,
    Silence, SkipInfo, Source, TimelineEvent, apply, observe_agent_event,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tether_proto::link::{AlertEvent, AlertStatus, Heartbeat, Register};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        let kind = match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreErrorKind::Timeout
            }
            Some(rusqlite::ErrorCode::ConstraintViolation) => StoreErrorKind::Conflict,
            Some(rusqlite::ErrorCode::CannotOpen) => StoreErrorKind::Unavailable,
            _ => StoreErrorKind::Other,
        };
        StoreError::new(kind, e.to_string())
    }
}

/// How long a call waits for another process's write lock (`tether hub token create`
/// while the hub runs).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

/// The schema this hub writes (`PRAGMA user_version`): 1 kept alert events only; 2 added the
/// alert lifecycle (`alerts`), its timeline (`alert_events`), acknowledgements, silences and
/// diagnosis links. A version-1 file is migrated when opened.
pub const SCHEMA_VERSION: i64 = 2;

/// Tables every version has, unchanged.
const BASE_SCHEMA: &str = "
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
CREATE INDEX IF NOT EXISTS agents_by_hostname ON agents(hostname COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS agents_by_ip ON agents(ip);
CREATE TABLE IF NOT EXISTS agent_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    labels     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    agent_id   TEXT
);
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
";

/// The alert model (version 2). `alerts` is one row per alert, keyed by `identity`
/// (`agent/<agent_id>/<alert_key>`, or `<source>/<fingerprint>` for an external alert);
/// `alert_events` is every alert's timeline.
const ALERT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    alert_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    identity    TEXT NOT NULL UNIQUE,
    source      TEXT NOT NULL,
    source_name TEXT,
    agent_id    TEXT,
    hostname    TEXT,
    alert_key   TEXT NOT NULL,
    title       TEXT NOT NULL,
    severity    TEXT NOT NULL,
    state       TEXT NOT NULL,
    labels      TEXT NOT NULL,
    annotations TEXT NOT NULL,
    url         TEXT,
    route       TEXT,
    first_ms    INTEGER NOT NULL,
    started_ms  INTEGER NOT NULL,
    last_ms     INTEGER NOT NULL,
    resolved_ms INTEGER,
    event_count INTEGER NOT NULL,
    ack_by      TEXT,
    ack_comment TEXT,
    ack_ms      INTEGER,
    skip_reason TEXT,
    skip_ms     INTEGER,
    updated_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_last ON alerts(last_ms, alert_id);
CREATE INDEX IF NOT EXISTS alerts_by_agent ON alerts(agent_id, last_ms);
CREATE INDEX IF NOT EXISTS alerts_by_state ON alerts(state, last_ms);
CREATE TABLE IF NOT EXISTS alert_events (
    event_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id    INTEGER NOT NULL,
    agent_id    TEXT,
    seq         INTEGER,
    dedupe      TEXT,
    status      TEXT NOT NULL,
    state       TEXT NOT NULL,
    severity    TEXT,
    event_ms    INTEGER NOT NULL,
    labels      TEXT NOT NULL,
    annotations TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS alert_events_agent_seq ON alert_events(agent_id, seq) WHERE seq IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS alert_events_dedupe ON alert_events(alert_id, dedupe) WHERE dedupe IS NOT NULL;
CREATE INDEX IF NOT EXISTS alert_events_by_alert ON alert_events(alert_id, event_id);
CREATE INDEX IF NOT EXISTS alert_events_received ON alert_events(received_ms);
CREATE TABLE IF NOT EXISTS alert_acks (
    ack_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id INTEGER NOT NULL,
    by_name  TEXT NOT NULL,
    comment  TEXT NOT NULL,
    at_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_acks_by_alert ON alert_acks(alert_id, ack_id);
CREATE TABLE IF NOT EXISTS silences (
    silence_id INTEGER PRIMARY KEY AUTOINCREMENT,
    matchers   TEXT NOT NULL,
    comment    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    starts_ms  INTEGER NOT NULL,
    ends_ms    INTEGER NOT NULL,
    expired_by TEXT
);
CREATE INDEX IF NOT EXISTS silences_by_end ON silences(ends_ms);
CREATE TABLE IF NOT EXISTS alert_diagnoses (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id   INTEGER NOT NULL,
    session_id TEXT,
    report_id  INTEGER,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_diagnoses_by_alert ON alert_diagnoses(alert_id, id);
";

/// Brings a file to [`SCHEMA_VERSION`], in one transaction: a version-1 file's alert events
/// (`alerts`) are replayed, in the order they were received, through the same lifecycle as
/// new ones into `alerts` + `alert_events`; reports are linked to their alerts.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::newer_schema(version, SCHEMA_VERSION));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(BASE_SCHEMA)?;
    let has_column = |table: &str, column: &str| -> rusqlite::Result<bool> {
        let n: i64 = tx.query_row(
            "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    };
    // Version 1's `alerts` held events (it has `event_status`).
    let v1_events = has_column("alerts", "event_status")?;
    if v1_events {
        tx.execute_batch(
            "ALTER TABLE alerts RENAME TO alerts_v1;
             DROP INDEX IF EXISTS alerts_agent_seq;
             DROP INDEX IF EXISTS alerts_received;
             DROP INDEX IF EXISTS alerts_agent;",
        )?;
    }
    tx.execute_batch(ALERT_SCHEMA)?;
    if !has_column("reports", "alert_id")? {
        tx.execute_batch("ALTER TABLE reports ADD COLUMN alert_id INTEGER;")?;
    }
    if v1_events {
        let mut rows: Vec<(String, String, AlertEvent, i64)> = Vec::new();
        {
            let mut stmt = tx.prepare(
                "SELECT agent_id, hostname, seq, event_time, event_status, alert_key, labels, attrs, description, description_format, received_at FROM alerts_v1 ORDER BY id",
            )?;
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                let status: String = r.get(4)?;
                let labels: String = r.get(6)?;
                let attrs: String = r.get(7)?;
                let seq: Option<i64> = r.get(2)?;
                let event = AlertEvent {
                    event_time: r.get(3)?,
                    event_status: AlertStatus::parse(&status).unwrap_or(AlertStatus::Warning),
                    alert_key: r.get(5)?,
                    labels: json_map(&labels),
                    attrs: json_map(&attrs),
                    description: r.get(8)?,
                    description_format: r.get(9)?,
                    seq: seq.map(|s| s as u64),
                };
                rows.push((r.get(0)?, r.get(1)?, event, r.get(10)?));
            }
        }
        for (agent_id, hostname, event, received) in rows {
            let mut cache = HashMap::new();
            agent_event_tx(&tx, &mut cache, &agent_id, &hostname, &event, received)?;
        }
        tx.execute_batch("DROP TABLE alerts_v1;")?;
        let reports: Vec<(i64, String, String, Option<String>, i64)> = {
            let mut stmt = tx.prepare(
                "SELECT id, agent_id, alert_key, session_id, created_at FROM reports WHERE alert_id IS NULL ORDER BY id",
            )?;
            stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?
        };
        for (id, agent_id, key, session, created) in reports {
            link_report_tx(&tx, id, &agent_id, &key, session.as_deref(), created)?;
        }
    }
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
    tx.commit()?;
    Ok(())
}

/// Every write transaction is `BEGIN IMMEDIATE`: it takes the write lock before its first
/// read. A deferred one that reads and then writes, while another process (`tether hub token
/// create`, a second hub on the same file) does the same, fails at once with "database is
/// locked" instead of waiting its busy timeout: SQLite cannot upgrade both read locks.
impl SqliteStore {
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        Self::open_with_busy_timeout(path, BUSY_TIMEOUT)
    }

    /// As [`SqliteStore::open`], waiting at most `busy` for another process's write lock
    /// (then the call fails as a timeout).
    pub fn open_with_busy_timeout(path: &Path, busy: Duration) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent() {
            match tether_host::perms::private_dir(dir) {
                Ok(Some(w)) => tracing::warn!("{w}"),
                Ok(None) => {}
                Err(e) => {
                    return Err(StoreError::other(format!(
                        "cannot create {}: {e}",
                        dir.display()
                    )));
                }
            }
        }
        match tether_host::perms::create_private(path) {
            Ok(Some(w)) => tracing::warn!("{w}"),
            Ok(None) => {}
            Err(e) => {
                return Err(StoreError::other(format!(
                    "cannot create {}: {e}",
                    path.display()
                )));
            }
        }
        let conn = Connection::open(path).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("cannot open {}: {e}", path.display()),
            )
        })?;
        conn.busy_timeout(busy)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut conn = conn;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    /// The connection, under the crate's locking policy ([`tether_host::sync::lock`]): a
    /// panic in one store call never makes the store unusable for the next.
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        tether_host::sync::lock(&self.conn)
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

const ALERT_COLUMNS: &str = "alert_id, source, source_name, agent_id, hostname, alert_key, title, severity, state, labels, annotations, url, route, first_ms, started_ms, last_ms, resolved_ms, event_count, ack_by, ack_comment, ack_ms, updated_ms, skip_reason, skip_ms";

fn alert_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Alert> {
    let text = |i: usize| -> rusqlite::Result<String> { row.get(i) };
    let route: Option<String> = row.get(12)?;
    let ack_by: Option<String> = row.get(18)?;
    let ack = match ack_by {
        Some(by) => Some(AckInfo {
            by,
            comment: row.get::<_, Option<String>>(19)?.unwrap_or_default(),
            at: row.get::<_, Option<i64>>(20)?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(Alert {
        alert_id: row.get(0)?,
        source: Source::parse(&text(1)?).unwrap_or(Source::Agent),
        source_name: row.get(2)?,
        agent_id: row.get(3)?,
        hostname: row.get(4)?,
        alert_key: text(5)?,
        title: text(6)?,
        severity: Severity::parse(&text(7)?).unwrap_or(Severity::Warning),
        state: AlertState::parse(&text(8)?).unwrap_or(AlertState::Firing),
        labels: json_map(&text(9)?),
        annotations: json_map(&text(10)?),
        url: row.get(11)?,
        route: route.and_then(|r| serde_json::from_str(&r).ok()),
        first_at: row.get(13)?,
        started_at: row.get(14)?,
        last_at: row.get(15)?,
        resolved_at: row.get(16)?,
        event_count: row.get::<_, i64>(17)?.max(0) as u64,
        ack,
        silenced: false,
        silenced_by: Vec::new(),
        diagnoses: Vec::new(),
        diagnosis_skipped: match row.get::<_, Option<String>>(22)? {
            Some(reason) => Some(SkipInfo {
                reason,
                at: row.get::<_, Option<i64>>(23)?.unwrap_or(0),
            }),
            None => None,
        },
        updated_at: row.get(21)?,
    })
}

/// The stored row of an alert's identity.
fn load_alert(tx: &Connection, identity: &str) -> rusqlite::Result<Option<Alert>> {
    tx.prepare_cached(&format!(
        "SELECT {ALERT_COLUMNS} FROM alerts WHERE identity = ?1"
    ))?
    .query_row([identity], alert_from_row)
    .optional()
}

fn load_alert_by_id(conn: &Connection, alert_id: i64) -> rusqlite::Result<Option<Alert>> {
    conn.prepare_cached(&format!(
        "SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = ?1"
    ))?
    .query_row([alert_id], alert_from_row)
    .optional()
}

/// Inserts (`alert_id` 0) or updates an alert; returns its id.
fn write_alert(tx: &Connection, identity: &str, a: &Alert) -> rusqlite::Result<i64> {
    let route = a.route.as_ref().map(to_json);
    let (ack_by, ack_comment, ack_ms) = match &a.ack {
        Some(k) => (Some(k.by.as_str()), Some(k.comment.as_str()), Some(k.at)),
        None => (None, None, None),
    };
    let (skip_reason, skip_ms) = match &a.diagnosis_skipped {
        Some(k) => (Some(k.reason.as_str()), Some(k.at)),
        None => (None, None),
    };
    let values = params![
        a.source.as_str(),
        a.source_name,
        a.agent_id,
        a.hostname,
        a.alert_key,
        a.title,
        a.severity.as_str(),
        a.state.as_str(),
        to_json(&a.labels),
        to_json(&a.annotations),
        a.url,
        route,
        a.first_at,
        a.started_at,
        a.last_at,
        a.resolved_at,
        a.event_count as i64,
        ack_by,
        ack_comment,
        ack_ms,
        a.updated_at,
        skip_reason,
        skip_ms,
        identity,
        a.alert_id,
    ];
    if a.alert_id == 0 {
        tx.prepare_cached(
            "INSERT INTO alerts (source, source_name, agent_id, hostname, alert_key, title, severity, state, labels, annotations, url, route, first_ms, started_ms, last_ms, resolved_ms, event_count, ack_by, ack_comment, ack_ms, updated_ms, skip_reason, skip_ms, identity)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
        )?
        .execute(&values[..24])?;
        Ok(tx.last_insert_rowid())
    } else {
        tx.prepare_cached(
            "UPDATE alerts SET source = ?1, source_name = ?2, agent_id = ?3, hostname = ?4, alert_key = ?5, title = ?6, severity = ?7, state = ?8, labels = ?9, annotations = ?10, url = ?11, route = ?12, first_ms = ?13, started_ms = ?14, last_ms = ?15, resolved_ms = ?16, event_count = ?17, ack_by = ?18, ack_comment = ?19, ack_ms = ?20, updated_ms = ?21, skip_reason = ?22, skip_ms = ?23
             WHERE identity = ?24 AND alert_id = ?25",
        )?
        .execute(values)?;
        Ok(a.alert_id)
    }
}

fn insert_event(
    tx: &Connection,
    alert_id: i64,
    agent_id: Option<&str>,
    obs: &Observation,
    received_ms: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO alert_events (alert_id, agent_id, seq, dedupe, status, state, severity, event_ms, labels, annotations, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        alert_id,
        agent_id,
        obs.seq.map(|s| s as i64),
        obs.dedupe,
        obs.status,
        obs.state.as_str(),
        obs.severity.map(Severity::as_str),
        obs.at_ms,
        to_json(&obs.labels),
        to_json(&obs.annotations),
        received_ms
    ])?;
    Ok(())
}

/// Applies one observation to the alert of `identity` (created if new) and stores the event
/// (an agent's event with the agent that sent it); `cache` holds the batch's alerts already
/// read. Returns the change.
fn observe_tx(
    tx: &Connection,
    cache: &mut HashMap<String, Alert>,
    identity: &str,
    fresh: impl FnOnce() -> Alert,
    update: impl FnOnce(&mut Alert),
    obs: &Observation,
    now_ms: i64,
) -> rusqlite::Result<AlertChange> {
    let known = match cache.remove(identity) {
        Some(a) => Some(a),
        None => load_alert(tx, identity)?,
    };
    let (mut alert, change, previous_state) = match known {
        Some(mut a) => {
            let before = a.state;
            let change = apply(&mut a, obs, now_ms);
            (a, change, Some(before))
        }
        None => (fresh(), Change::Created, None),
    };
    update(&mut alert);
    alert.alert_id = write_alert(tx, identity, &alert)?;
    let event_agent = match alert.source {
        Source::Agent => alert.agent_id.as_deref(),
        Source::Alertmanager | Source::Grafana => None,
    };
    insert_event(tx, alert.alert_id, event_agent, obs, now_ms)?;
    cache.insert(identity.to_owned(), alert.clone());
    Ok(AlertChange {
        alert,
        change,
        previous_state,
    })
}

/// Stores one agent event (`None`: a duplicate (agent, seq)).
fn agent_event_tx(
    tx: &Connection,
    cache: &mut HashMap<String, Alert>,
    agent_id: &str,
    hostname: &str,
    e: &AlertEvent,
    now_ms: i64,
) -> rusqlite::Result<Option<AlertChange>> {
    if let Some(seq) = e.seq {
        let dup = tx
            .prepare_cached("SELECT 1 FROM alert_events WHERE agent_id = ?1 AND seq = ?2")?
            .exists(params![agent_id, seq as i64])?;
        if dup {
            return Ok(None);
        }
    }
    let obs = observe_agent_event(e);
    let identity = agent_identity(agent_id, &e.alert_key);
    let change = observe_tx(
        tx,
        cache,
        &identity,
        || Alert::new(Source::Agent, &e.alert_key, &obs, now_ms),
        |a| {
            a.agent_id = Some(agent_id.to_owned());
            a.hostname = Some(hostname.to_owned());
        },
        &obs,
        now_ms,
    )?;
    Ok(Some(change))
}

/// Links report `report_id` to its alert (and the alert to the report's session).
fn link_report_tx(
    tx: &Connection,
    report_id: i64,
    agent_id: &str,
    alert_key: &str,
    session_id: Option<&str>,
    created_ms: i64,
) -> rusqlite::Result<Option<i64>> {
    // A session started for an alert (`params.alert_id`) reports on that alert, whatever key
    // the agent files it under (an external alert's is the fingerprint, not the agent's).
    let by_session: Option<i64> = match session_id {
        Some(sid) => tx
            .prepare_cached(
                "SELECT d.alert_id FROM alert_diagnoses d JOIN alerts a ON a.alert_id = d.alert_id
                 WHERE d.session_id = ?1 AND a.agent_id = ?2 ORDER BY d.id LIMIT 1",
            )?
            .query_row(params![sid, agent_id], |r| r.get(0))
            .optional()?,
        None => None,
    };
    let alert_id: Option<i64> = match by_session {
        Some(id) => Some(id),
        None => tx
            .prepare_cached("SELECT alert_id FROM alerts WHERE identity = ?1")?
            .query_row([agent_identity(agent_id, alert_key)], |r| r.get(0))
            .optional()?,
    };
    let Some(alert_id) = alert_id else {
        return Ok(None);
    };
    tx.execute(
        "UPDATE reports SET alert_id = ?2 WHERE id = ?1",
        params![report_id, alert_id],
    )?;
    // The session's diagnosis row, if it was linked when it started, gets the report.
    let updated = match session_id {
        Some(sid) => tx.execute(
            "UPDATE alert_diagnoses SET report_id = ?3 WHERE alert_id = ?1 AND session_id = ?2 AND report_id IS NULL",
            params![alert_id, sid, report_id],
        )?,
        None => 0,
    };
    if updated == 0 {
        tx.execute(
            "INSERT INTO alert_diagnoses (alert_id, session_id, report_id, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![alert_id, session_id, report_id, created_ms],
        )?;
    }
    Ok(Some(alert_id))
}

/// Silences active at `now_ms`.
fn active_silences(conn: &Connection, now_ms: i64) -> rusqlite::Result<Vec<Silence>> {
    conn.prepare_cached(&format!(
        "SELECT {SILENCE_COLUMNS} FROM silences WHERE starts_ms <= ?1 AND ends_ms > ?1"
    ))?
    .query_map([now_ms], silence_from_row)?
    .collect()
}

const SILENCE_COLUMNS: &str =
    "silence_id, matchers, comment, created_by, created_ms, starts_ms, ends_ms, expired_by";

fn silence_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Silence> {
    let matchers: String = row.get(1)?;
    Ok(Silence::new(
        row.get(0)?,
        serde_json::from_str(&matchers).unwrap_or_default(),
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
    ))
}

fn diagnoses_of(conn: &Connection, alert_id: i64) -> rusqlite::Result<Vec<Diagnosis>> {
    conn.prepare_cached(
        "SELECT session_id, report_id, created_ms FROM alert_diagnoses WHERE alert_id = ?1 ORDER BY id",
    )?
    .query_map([alert_id], |r| {
        Ok(Diagnosis {
            session_id: r.get(0)?,
            report_id: r.get(1)?,
            created_at: r.get(2)?,
        })
    })?
    .collect()
}

/// Completes alerts read from their rows: silences as of `now_ms`, diagnoses.
fn finish_views(
    conn: &Connection,
    alerts: &mut [Alert],
    silences: &[Silence],
    now_ms: i64,
) -> rusqlite::Result<()> {
    let mut diagnosed: HashMap<i64, Vec<Diagnosis>> = HashMap::new();
    for a in alerts.iter_mut() {
        a.set_silences(silences, now_ms);
        let d = match diagnosed.get(&a.alert_id) {
            Some(d) => d.clone(),
            None => {
                let d = diagnoses_of(conn, a.alert_id)?;
                diagnosed.insert(a.alert_id, d.clone());
                d
            }
        };
        a.diagnoses = d;
    }
    Ok(())
}

fn finish_changes(
    conn: &Connection,
    changes: &mut [AlertChange],
    now_ms: i64,
) -> rusqlite::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let silences = active_silences(conn, now_ms)?;
    let mut alerts: Vec<Alert> = changes.iter().map(|c| c.alert.clone()).collect();
    finish_views(conn, &mut alerts, &silences, now_ms)?;
    for (c, a) in changes.iter_mut().zip(alerts) {
        c.alert = a;
    }
    Ok(())
}

fn event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TimelineEvent> {
    let state: String = row.get(4)?;
    let severity: Option<String> = row.get(5)?;
    let seq: Option<i64> = row.get(9)?;
    let labels: String = row.get(7)?;
    let annotations: String = row.get(8)?;
    Ok(TimelineEvent {
        event_id: row.get(0)?,
        alert_id: row.get(1)?,
        agent_id: row.get(2)?,
        status: row.get(3)?,
        state: AlertState::parse(&state).unwrap_or(AlertState::Firing),
        severity: severity.as_deref().and_then(Severity::parse),
        at: row.get(6)?,
        labels: json_map(&labels),
        annotations: json_map(&annotations),
        seq: seq.map(|s| s as u64),
        received_at: row.get(10)?,
    })
}

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
        now_ms: i64,
    ) -> StoreResult<AlertInsert> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = AlertInsert::default();
        let mut cache = HashMap::new();
        for e in events {
            match agent_event_tx(&tx, &mut cache, agent_id, hostname, e, now_ms)? {
                Some(c) => out.changes.push(c),
                None => out.duplicates += 1,
            }
        }
        finish_changes(&tx, &mut out.changes, now_ms)?;
        tx.commit()?;
        out.stored = out.changes.len();
        Ok(out)
    }

    fn record_external(
        &self,
        source: Source,
        source_name: &str,
        alerts: &[ExternalAlert],
        now_ms: i64,
    ) -> StoreResult<AlertInsert> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = AlertInsert::default();
        let mut cache = HashMap::new();
        for x in alerts {
            let identity = external_identity(source, &x.fingerprint);
            if let Some(key) = &x.obs.dedupe {
                let dup = tx
                    .prepare_cached(
                        "SELECT 1 FROM alert_events WHERE dedupe = ?2 AND alert_id = (SELECT alert_id FROM alerts WHERE identity = ?1)",
                    )?
                    .exists(params![identity, key])?;
                if dup {
                    out.duplicates += 1;
                    continue;
                }
            }
            let change = observe_tx(
                &tx,
                &mut cache,
                &identity,
                || Alert::new(source, &x.fingerprint, &x.obs, now_ms),
                |a| {
                    a.source_name = Some(source_name.to_owned());
                    a.agent_id = x.agent.as_ref().map(|(id, _)| id.clone());
                    a.hostname = x.agent.as_ref().map(|(_, h)| h.clone());
                    a.route = Some(x.route.clone());
                },
                &x.obs,
                now_ms,
            )?;
            out.changes.push(change);
        }
        finish_changes(&tx, &mut out.changes, now_ms)?;
        tx.commit()?;
        out.stored = out.changes.len();
        Ok(out)
    }

    fn list_alerts(&self, f: &AlertFilter, now_ms: i64) -> StoreResult<AlertPage> {
        let mut sql = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(s) = f.state {
            arg(&mut sql, " AND state = ?", s.as_str().to_owned().into());
        }
        if let Some(s) = f.severity {
            arg(&mut sql, " AND severity = ?", s.as_str().to_owned().into());
        }
        if let Some(s) = f.source {
            arg(&mut sql, " AND source = ?", s.as_str().to_owned().into());
        }
        if let Some(a) = &f.agent_id {
            arg(&mut sql, " AND agent_id = ?", a.clone().into());
        }
        match f.fleet {
            Some(true) => sql.push_str(" AND agent_id IS NULL"),
            Some(false) => sql.push_str(" AND agent_id IS NOT NULL"),
            None => {}
        }
        if let Some((k, v)) = &f.label {
            arg(
                &mut sql,
                " AND json_extract(labels, ?)",
                format!("$.\"{}\"", k.replace('"', "")).into(),
            );
            arg(&mut sql, " = ?", v.clone().into());
        }
        if let Some((last, id)) = f.after {
            arg(&mut sql, " AND (last_ms < ?", last.into());
            arg(&mut sql, " OR (last_ms = ?", last.into());
            arg(&mut sql, " AND alert_id < ?))", id.into());
        }
        let limit = f.limit.clamp(1, 1000);
        arg(
            &mut sql,
            " ORDER BY last_ms DESC, alert_id DESC LIMIT ?",
            (limit as i64).into(),
        );
        let conn = self.conn();
        let mut alerts = conn
            .prepare_cached(&sql)?
            .query_map(rusqlite::params_from_iter(args), alert_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let silences = active_silences(&conn, now_ms)?;
        finish_views(&conn, &mut alerts, &silences, now_ms)?;
        let next_cursor = (alerts.len() == limit)
            .then(|| {
                alerts
                    .last()
                    .map(|a| format!("{}:{}", a.last_at, a.alert_id))
            })
            .flatten();
        Ok(AlertPage {
            alerts,
            next_cursor,
        })
    }

    fn get_alert(&self, alert_id: i64, now_ms: i64) -> StoreResult<Option<Alert>> {
        let conn = self.conn();
        let Some(a) = load_alert_by_id(&conn, alert_id)? else {
            return Ok(None);
        };
        let mut one = [a];
        let silences = active_silences(&conn, now_ms)?;
        finish_views(&conn, &mut one, &silences, now_ms)?;
        let [a] = one;
        Ok(Some(a))
    }

    fn alert_events(
        &self,
        alert_id: i64,
        before_event_id: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<TimelineEvent>> {
        let conn = self.conn();
        let rows = conn
            .prepare_cached(
                "SELECT event_id, alert_id, agent_id, status, state, severity, event_ms, labels, annotations, seq, received_ms
                 FROM alert_events WHERE alert_id = ?1 AND (?2 IS NULL OR event_id < ?2)
                 ORDER BY event_id DESC LIMIT ?3",
            )?
            .query_map(
                params![alert_id, before_event_id, limit.clamp(1, 1000) as i64],
                event_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn alert_acks(&self, alert_id: i64) -> StoreResult<Vec<AckRecord>> {
        let conn = self.conn();
        let rows = conn
            .prepare_cached(
                "SELECT by_name, comment, at_ms FROM alert_acks WHERE alert_id = ?1 ORDER BY ack_id",
            )?
            .query_map([alert_id], |r| {
                Ok(AckRecord {
                    by: r.get(0)?,
                    comment: r.get(1)?,
                    at: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn ack_alert(
        &self,
        alert_id: i64,
        by: &str,
        comment: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AlertChange>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE alerts SET ack_by = ?2, ack_comment = ?3, ack_ms = ?4, updated_ms = ?4 WHERE alert_id = ?1",
            params![alert_id, by, comment, now_ms],
        )?;
        if n == 0 {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO alert_acks (alert_id, by_name, comment, at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![alert_id, by, comment, now_ms],
        )?;
        let change = changed(&tx, alert_id, Change::Acked, now_ms)?;
        tx.commit()?;
        Ok(change)
    }

    fn link_alert_session(
        &self,
        alert_id: i64,
        session_id: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AlertChange>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE alerts SET updated_ms = ?2, skip_reason = NULL, skip_ms = NULL WHERE alert_id = ?1",
            params![alert_id, now_ms],
        )?;
        if n == 0 {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO alert_diagnoses (alert_id, session_id, created_ms) VALUES (?1, ?2, ?3)",
            params![alert_id, session_id, now_ms],
        )?;
        let change = changed(&tx, alert_id, Change::Diagnosed, now_ms)?;
        tx.commit()?;
        Ok(change)
    }

    fn note_diagnosis_skipped(
        &self,
        alert_id: i64,
        reason: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AlertChange>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE alerts SET skip_reason = ?2, skip_ms = ?3, updated_ms = ?3 WHERE alert_id = ?1",
            params![alert_id, reason, now_ms],
        )?;
        if n == 0 {
            return Ok(None);
        }
        let change = changed(&tx, alert_id, Change::Skipped, now_ms)?;
        tx.commit()?;
        Ok(change)
    }

    fn count_alert_events(&self) -> StoreResult<u64> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM alert_events", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn count_firing_alerts(&self) -> StoreResult<u64> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM alerts WHERE state = 'firing'",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn prune_alerts(&self, before_ms: i64) -> StoreResult<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let events = tx.execute(
            "DELETE FROM alert_events WHERE received_ms < ?1",
            [before_ms],
        )?;
        const OLD: &str =
            "SELECT alert_id FROM alerts WHERE state = 'resolved' AND updated_ms < ?1";
        for table in ["alert_events", "alert_acks", "alert_diagnoses"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE alert_id IN ({OLD})"),
                [before_ms],
            )?;
        }
        let alerts = tx.execute(
            "DELETE FROM alerts WHERE state = 'resolved' AND updated_ms < ?1",
            [before_ms],
        )?;
        tx.execute("DELETE FROM silences WHERE ends_ms < ?1", [before_ms])?;
        tx.commit()?;
        Ok(events + alerts)
    }

    fn create_silence(
        &self,
        matchers: &[Matcher],
        comment: &str,
        created_by: &str,
        starts_ms: i64,
        ends_ms: i64,
    ) -> StoreResult<Silence> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO silences (matchers, comment, created_by, created_ms, starts_ms, ends_ms) VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
            params![to_json(&matchers), comment, created_by, starts_ms, ends_ms],
        )?;
        let id = conn.last_insert_rowid();
        Ok(Silence::new(
            id,
            matchers.to_vec(),
            comment.to_owned(),
            created_by.to_owned(),
            starts_ms,
            starts_ms,
            ends_ms,
            None,
        )
        .with_state(starts_ms))
    }

    fn list_silences(&self, include_expired: bool, now_ms: i64) -> StoreResult<Vec<Silence>> {
        let conn = self.conn();
        let rows = conn
            .prepare_cached(&format!(
                "SELECT {SILENCE_COLUMNS} FROM silences WHERE ?1 OR (starts_ms <= ?2 AND ends_ms > ?2) ORDER BY silence_id DESC LIMIT 1000"
            ))?
            .query_map(params![include_expired, now_ms], silence_from_row)?
            .map(|r| r.map(|s| s.with_state(now_ms)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn expire_silence(
        &self,
        silence_id: i64,
        by: &str,
        now_ms: i64,
    ) -> StoreResult<Option<Silence>> {
        let conn = self.conn();
        conn.execute(
            "UPDATE silences SET ends_ms = ?2, expired_by = ?3 WHERE silence_id = ?1 AND ends_ms > ?2",
            params![silence_id, now_ms, by],
        )?;
        Ok(conn
            .prepare_cached(&format!(
                "SELECT {SILENCE_COLUMNS} FROM silences WHERE silence_id = ?1"
            ))?
            .query_row([silence_id], silence_from_row)
            .optional()?
            .map(|s| s.with_state(now_ms)))
    }

    fn alerts_matching(&self, silence: &Silence, now_ms: i64) -> StoreResult<Vec<Alert>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE state = 'firing' ORDER BY last_ms DESC"
        ))?;
        let mut matched = Vec::new();
        for a in stmt.query_map([], alert_from_row)? {
            let a = a?;
            if silence.matches(&a.match_labels()) {
                matched.push(a);
                if matched.len() >= 5000 {
                    break;
                }
            }
        }
        drop(stmt);
        let silences = active_silences(&conn, now_ms)?;
        finish_views(&conn, &mut matched, &silences, now_ms)?;
        Ok(matched)
    }

    fn silences_ended(&self, after_ms: i64, upto_ms: i64) -> StoreResult<Vec<Silence>> {
        let conn = self.conn();
        let rows = conn
            .prepare_cached(&format!(
                "SELECT {SILENCE_COLUMNS} FROM silences WHERE ends_ms > ?1 AND ends_ms <= ?2 AND expired_by IS NULL ORDER BY ends_ms LIMIT 1000"
            ))?
            .query_map(params![after_ms, upto_ms], silence_from_row)?
            .map(|r| r.map(|s| s.with_state(upto_ms)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn find_agent_by_host(&self, host: &str) -> StoreResult<Option<AgentMatch>> {
        let host = host.trim();
        if host.is_empty() {
            return Ok(None);
        }
        let conn = self.conn();
        let one = |sql: &str,
                   arg: &str,
                   by: &'static str|
         -> rusqlite::Result<Option<AgentMatch>> {
            conn.prepare_cached(&format!(
                "SELECT agent_id, hostname FROM agents WHERE {sql} ORDER BY connected DESC, last_seen DESC LIMIT 1"
            ))?
            .query_row([arg], |r| {
                Ok(AgentMatch {
                    agent_id: r.get(0)?,
                    hostname: r.get(1)?,
                    by,
                })
            })
            .optional()
        };
        if let Some(m) = one("hostname = ?1 COLLATE NOCASE", host, "hostname")? {
            return Ok(Some(m));
        }
        if let Some(m) = one("ip = ?1 COLLATE NOCASE", host, "ip")? {
            return Ok(Some(m));
        }
        // An address written another way (`0:0:0:0:0:0:0:1`, `::1`): its canonical form.
        let ip = host.parse::<std::net::IpAddr>().ok();
        if let Some(canonical) = ip.map(|ip| ip.to_string()).filter(|c| c != host)
            && let Some(m) = one("ip = ?1 COLLATE NOCASE", &canonical, "ip")?
        {
            return Ok(Some(m));
        }
        if ip.is_none() {
            // `web-01.example.com` for an agent called `web-01`, and the other way round.
            if let Some((short, _)) = host.split_once('.')
                && let Some(m) = one("hostname = ?1 COLLATE NOCASE", short, "short hostname")?
            {
                return Ok(Some(m));
            }
            if !host.contains('.') {
                let escaped = host
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                let pattern = format!("{escaped}.%");
                if let Some(m) = one("hostname LIKE ?1 ESCAPE '\\'", &pattern, "short hostname")? {
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    }

    fn find_agent(&self, id_or_hostname: &str) -> StoreResult<Option<AgentMatch>> {
        let conn = self.conn();
        let by_id = conn
            .prepare_cached("SELECT agent_id, hostname FROM agents WHERE agent_id = ?1")?
            .query_row([id_or_hostname], |r| {
                Ok(AgentMatch {
                    agent_id: r.get(0)?,
                    hostname: r.get(1)?,
                    by: "agent id",
                })
            })
            .optional()?;
        if by_id.is_some() {
            return Ok(by_id);
        }
        Ok(conn
            .prepare_cached(
                "SELECT agent_id, hostname FROM agents WHERE hostname = ?1 COLLATE NOCASE ORDER BY connected DESC, last_seen DESC LIMIT 1",
            )?
            .query_row([id_or_hostname], |r| {
                Ok(AgentMatch {
                    agent_id: r.get(0)?,
                    hostname: r.get(1)?,
                    by: "hostname",
                })
            })
            .optional()?)
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
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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

    fn session_tokens_since(&self, created_by: &str, since_ms: i64) -> StoreResult<u64> {
        // Event times are RFC 3339 UTC text, which sorts as time does. Sessions older than a
        // day before `since_ms` are left out: a diagnosis does not run that long.
        let since_text = rfc3339_ms(since_ms);
        let n: i64 = self.conn().query_row(
            "SELECT COALESCE(SUM(json_extract(e.frame, '$.usage.total_tokens')), 0)
             FROM session_events e JOIN sessions s ON s.session_id = e.session_id
             WHERE s.created_by = ?1 AND s.created_at >= ?2
               AND json_extract(e.frame, '$.event') = 'turn_ended'
               AND json_extract(e.frame, '$.ts') >= ?3",
            params![created_by, since_ms.saturating_sub(86_400_000), since_text],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    fn insert_report(
        &self,
        r: &ReportRow,
        now_ms: i64,
    ) -> StoreResult<(ReportRow, Option<AlertChange>)> {
        let created = parse_rfc3339_ms(&r.created_at).unwrap_or(now_ms);
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO reports (agent_id, alert_key, session_id, report, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![r.agent_id, r.alert_key, r.session_id, r.report, created],
        )?;
        let report_id = tx.last_insert_rowid();
        let alert_id = link_report_tx(
            &tx,
            report_id,
            &r.agent_id,
            &r.alert_key,
            r.session_id.as_deref(),
            created,
        )?;
        let change = match alert_id {
            Some(id) => {
                tx.execute(
                    "UPDATE alerts SET updated_ms = ?2, skip_reason = NULL, skip_ms = NULL WHERE alert_id = ?1",
                    params![id, now_ms],
                )?;
                changed(&tx, id, Change::Diagnosed, now_ms)?
            }
            None => None,
        };
        tx.commit()?;
        let row = ReportRow {
            report_id,
            alert_id,
            created_at: rfc3339_ms(created),
            ..r.clone()
        };
        Ok((row, change))
    }

    fn list_reports(
        &self,
        agent_id: Option<&str>,
        alert_id: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<ReportRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, agent_id, alert_key, alert_id, session_id, report, created_at FROM reports
             WHERE (?1 IS NULL OR agent_id = ?1) AND (?2 IS NULL OR alert_id = ?2) ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![agent_id, alert_id, limit as i64], |r| {
            Ok(ReportRow {
                report_id: r.get(0)?,
                agent_id: r.get(1)?,
                alert_key: r.get(2)?,
                alert_id: r.get(3)?,
                session_id: r.get(4)?,
                report: r.get(5)?,
                created_at: rfc3339_ms(r.get(6)?),
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)
    }
}

/// The alert `alert_id` after a change that is not an event, as a change.
fn changed(
    tx: &Connection,
    alert_id: i64,
    change: Change,
    now_ms: i64,
) -> rusqlite::Result<Option<AlertChange>> {
    let Some(alert) = load_alert_by_id(tx, alert_id)? else {
        return Ok(None);
    };
    let mut changes = [AlertChange {
        previous_state: Some(alert.state),
        alert,
        change,
    }];
    finish_changes(tx, &mut changes, now_ms)?;
    let [c] = changes;
    Ok(Some(c))
}
