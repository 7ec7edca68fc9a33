//! The hub's storage: agents, agent credentials, alerts, sessions and their events, diagnosis
//! reports, behind the [`Store`] trait. [`SqliteStore`] (`sqlite.rs`, one file, WAL) is the
//! default; [`PgStore`] (`postgres.rs`) is chosen by `[store] url`, so several hub replicas
//! can share one database. [`open_store`] opens the configured one.
//!
//! Methods are synchronous; the hub calls them through [`HubStore`], which runs them on the
//! blocking pool, as many at once as the store can serve (its `max_in_flight`).

mod postgres;
mod sqlite;
#[doc(hidden)]
pub mod testing;

pub use postgres::{PgSettings, PgStore, SCHEMA_VERSION as PG_SCHEMA_VERSION};
pub use sqlite::SqliteStore;

use crate::alerts::{
    AckRecord, Alert, AlertState, Change, Matcher, Observation, Route, Severity, Silence, Source,
    TimelineEvent,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tether_proto::link::{AlertEvent, Heartbeat, Register};

/// What kind of failure a store call had: callers may retry `Timeout` and `Unavailable`;
/// `Schema` means this build cannot use the database at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The call ran past its time (`[store] query_timeout`, SQLite's busy timeout).
    Timeout,
    /// The database could not be reached, or the connection broke.
    Unavailable,
    /// A constraint refused the write (unique key, foreign key, check).
    Conflict,
    /// The database's schema is not one this build can use (newer than it knows).
    Schema,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store: {message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    pub fn other(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Other, message)
    }

    /// A database whose schema is newer than this build's.
    pub fn newer_schema(found: i64, known: i64) -> StoreError {
        StoreError::new(
            StoreErrorKind::Schema,
            format!(
                "the database schema is version {found} but this hub knows up to {known}: upgrade the hub (or point it at another database)"
            ),
        )
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

/// Filters of `alerts.list` (all optional; a page is newest `last_at` first).
#[derive(Clone, Debug, Default)]
pub struct AlertFilter {
    pub state: Option<AlertState>,
    pub severity: Option<Severity>,
    pub agent_id: Option<String>,
    /// `true`: only fleet alerts (no agent); `false`: only alerts of an agent.
    pub fleet: Option<bool>,
    pub source: Option<Source>,
    pub label: Option<(String, String)>,
    /// Continue after this (`last_at` ms, `alert_id`): the page's `next_cursor`.
    pub after: Option<(i64, i64)>,
    pub limit: usize,
}

/// A page of `alerts.list`.
#[derive(Clone, Debug, Default)]
pub struct AlertPage {
    pub alerts: Vec<Alert>,
    /// Where the next page starts (`"<last_ms>:<alert_id>"`), when this one was full.
    pub next_cursor: Option<String>,
}

/// A change of one alert, for subscribers (`alert` frames) and, later, diagnosis and
/// notifications.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertChange {
    /// The alert after the change.
    pub alert: Alert,
    pub change: Change,
    /// Its state before (`None`: it is new).
    pub previous_state: Option<AlertState>,
}

/// What storing a batch of events did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertInsert {
    /// One per event stored, in order.
    pub changes: Vec<AlertChange>,
    /// Events stored.
    pub stored: usize,
    /// Events already stored (same agent and seq, or the same external notification):
    /// delivered twice, kept once, nothing changed.
    pub duplicates: usize,
}

/// One alert of an external notification, checked and routed, ready for the store.
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalAlert {
    /// The fingerprint (the alert's key).
    pub fingerprint: String,
    pub obs: Observation,
    /// The agent it was routed to: (agent_id, hostname); `None`: a fleet alert.
    pub agent: Option<(String, String)>,
    pub route: Route,
}

/// An agent found for a host name or address.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentMatch {
    pub agent_id: String,
    pub hostname: String,
    /// How: `agent id`, `hostname`, `ip`, `short hostname`.
    pub by: &'static str,
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
    /// Set by the store (0 before).
    #[serde(default)]
    pub report_id: i64,
    pub agent_id: String,
    pub alert_key: String,
    /// The alert it diagnoses, `(agent_id, alert_key)`'s, when the hub has it.
    #[serde(default)]
    pub alert_id: Option<i64>,
    pub session_id: Option<String>,
    pub report: String,
    pub created_at: String,
}

/// The hub's storage.
pub trait Store: Send + Sync {
    /// How many calls may usefully run at once ([`HubStore`] holds the rest as tasks). The
    /// SQLite store has one connection, so more only park threads on its lock: in an alert
    /// storm from 10 000 agents, unbounded calls grew the blocking pool to its 512-thread
    /// limit and the hub's RSS with it. A pooled store serves as many as its pool holds.
    fn max_in_flight(&self) -> usize {
        2
    }

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

    /// Stores an agent's alert events and moves their alerts, in one transaction (durable
    /// when it returns). Under version 2 an event whose (agent, seq) is stored already is
    /// skipped (counted as a duplicate, nothing changes).
    fn insert_alerts(
        &self,
        agent_id: &str,
        hostname: &str,
        events: &[AlertEvent],
        now_ms: i64,
    ) -> StoreResult<AlertInsert>;
    /// Stores the alerts of one external notification, in one transaction. An alert whose
    /// event (same fingerprint, status and episode) is stored already is skipped: the same
    /// notification twice changes nothing.
    fn record_external(
        &self,
        source: Source,
        source_name: &str,
        alerts: &[ExternalAlert],
        now_ms: i64,
    ) -> StoreResult<AlertInsert>;
    /// A page of alerts, with `silenced` as of `now_ms`.
    fn list_alerts(&self, filter: &AlertFilter, now_ms: i64) -> StoreResult<AlertPage>;
    fn get_alert(&self, alert_id: i64, now_ms: i64) -> StoreResult<Option<Alert>>;
    /// An alert's timeline, newest first, before `before_event_id` if given.
    fn alert_events(
        &self,
        alert_id: i64,
        before_event_id: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<TimelineEvent>>;
    /// Every acknowledgement of an alert, oldest first.
    fn alert_acks(&self, alert_id: i64) -> StoreResult<Vec<AckRecord>>;
    /// Acknowledges an alert (`None`: no such alert).
    fn ack_alert(
        &self,
        alert_id: i64,
        by: &str,
        comment: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AlertChange>>;
    /// Links a diagnosis session to an alert (`None`: no such alert).
    fn link_alert_session(
        &self,
        alert_id: i64,
        session_id: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AlertChange>>;
    /// Records why the automatic diagnosis passed an alert over (`None`: no such alert).
    /// Cleared when a diagnosis is linked to it or it fires again.
    fn note_diagnosis_skipped(
        &self,
        alert_id: i64,
        reason: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AlertChange>>;
    /// Alert events held (the timelines' total).
    fn count_alert_events(&self) -> StoreResult<u64>;
    /// Alerts firing now.
    fn count_firing_alerts(&self) -> StoreResult<u64>;
    /// Deletes alert events received before `before_ms`, resolved alerts not changed since,
    /// and silences that ended before it. Returns how many events and alerts went.
    fn prune_alerts(&self, before_ms: i64) -> StoreResult<usize>;

    /// Stores a silence of `matchers` (checked by [`crate::alerts::check_matchers`]).
    fn create_silence(
        &self,
        matchers: &[Matcher],
        comment: &str,
        created_by: &str,
        starts_ms: i64,
        ends_ms: i64,
    ) -> StoreResult<Silence>;
    /// Silences, newest first: the active ones, or all (`include_expired`), 1000 at most.
    fn list_silences(&self, include_expired: bool, now_ms: i64) -> StoreResult<Vec<Silence>>;
    /// Ends a silence now (`None`: no such silence; an ended one is returned as it is).
    fn expire_silence(
        &self,
        silence_id: i64,
        by: &str,
        now_ms: i64,
    ) -> StoreResult<Option<Silence>>;
    /// Firing alerts `silence` matches (for telling subscribers), 5000 at most.
    fn alerts_matching(&self, silence: &Silence, now_ms: i64) -> StoreResult<Vec<Alert>>;
    /// Silences that ran out by themselves (not expired by an operator) in
    /// `(after_ms, upto_ms]`.
    fn silences_ended(&self, after_ms: i64, upto_ms: i64) -> StoreResult<Vec<Silence>>;

    /// The agent a host name or address belongs to (case-insensitive hostname, then IP,
    /// then the first label of a dotted name against a short hostname); a connected agent
    /// first, then the one seen last.
    fn find_agent_by_host(&self, host: &str) -> StoreResult<Option<AgentMatch>>;
    /// The agent with this id, else with this hostname (case-insensitive).
    fn find_agent(&self, id_or_hostname: &str) -> StoreResult<Option<AgentMatch>>;

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

    /// Tokens spent by the sessions `created_by` created, in the turns that ended at or after
    /// `since_ms`: the sum of their `turn_ended` events' `usage.total_tokens`.
    fn session_tokens_since(&self, created_by: &str, since_ms: i64) -> StoreResult<u64>;

    /// Stores a report and links it to its session's alert (a session started with
    /// `params.alert_id`), else to the agent's alert with its key, when the hub has it:
    /// returns the stored row and that alert's change.
    fn insert_report(
        &self,
        r: &ReportRow,
        now_ms: i64,
    ) -> StoreResult<(ReportRow, Option<AlertChange>)>;
    fn list_reports(
        &self,
        agent_id: Option<&str>,
        alert_id: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<ReportRow>>;
}

pub(crate) fn json_map(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// The identity of an agent's alert.
pub(crate) fn agent_identity(agent_id: &str, alert_key: &str) -> String {
    format!("agent/{agent_id}/{alert_key}")
}

/// The identity of an external alert.
pub(crate) fn external_identity(source: Source, fingerprint: &str) -> String {
    format!("{}/{fingerprint}", source.as_str())
}

/// Opens the store `config` names: PostgreSQL with `[store] url`, else `hub.db` in the
/// state directory. Either refuses a database whose schema is newer than this build's.
pub fn open_store(config: &crate::HubConfig) -> StoreResult<Arc<dyn Store>> {
    match &config.store {
        crate::config::StoreConfig::Sqlite => {
            let path = config.state_dir.join("hub.db");
            Ok(Arc::new(SqliteStore::open(&path)?))
        }
        crate::config::StoreConfig::Postgres(settings) => {
            Ok(Arc::new(PgStore::connect((**settings).clone())?))
        }
    }
}

/// The store as the async hub uses it: every call runs on the blocking pool, at most
/// [`Store::max_in_flight`] at a time (the rest wait as tasks, not threads).
#[derive(Clone)]
pub struct HubStore {
    inner: Arc<dyn Store>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl HubStore {
    pub fn new(store: Arc<dyn Store>) -> HubStore {
        let n = store.max_in_flight().max(1);
        HubStore {
            inner: store,
            in_flight: Arc::new(tokio::sync::Semaphore::new(n)),
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
            .map_err(|_| StoreError::other("the store is closed"))?;
        let store = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(store.as_ref())
        })
        .await
        .map_err(|e| StoreError::other(format!("store task failed: {e}")))?
    }

    /// Direct access for start-up and CLI code (blocking).
    pub fn blocking(&self) -> &dyn Store {
        self.inner.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Diagnosis;
    use rusqlite::{Connection, params};
    use std::time::Duration;
    use tether_proto::link::AlertStatus;

    /// A store under test, and what it lives in (dropped after it).
    struct Under {
        store: Box<dyn Store>,
        home: Home,
    }

    enum Home {
        File(tempfile::TempDir),
        Database(testing::TestDatabase),
    }

    impl std::ops::Deref for Under {
        type Target = dyn Store;
        fn deref(&self) -> &(dyn Store + 'static) {
            self.store.as_ref()
        }
    }

    impl Under {
        /// A second store on the same database (another hub process or replica).
        fn reopen(&self) -> Box<dyn Store> {
            match &self.home {
                Home::File(dir) => {
                    Box::new(SqliteStore::open(&dir.path().join("hub.db")).expect("reopen"))
                }
                Home::Database(db) => Box::new(
                    PgStore::connect(db.settings(std::time::Duration::from_secs(30)))
                        .expect("reconnect"),
                ),
            }
        }
    }

    fn sqlite() -> Under {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("hub.db")).expect("open");
        Under {
            store: Box::new(s),
            home: Home::File(dir),
        }
    }

    fn postgres(test: &str) -> Option<Under> {
        let db = testing::TestDatabase::create(test)?;
        let s = PgStore::connect(db.settings(std::time::Duration::from_secs(30))).expect("connect");
        Some(Under {
            store: Box::new(s),
            home: Home::Database(db),
        })
    }

    /// Each test, once against SQLite (`on_sqlite::NAME`) and once against PostgreSQL
    /// (`on_postgres::NAME`).
    macro_rules! on_both_stores {
        ($($name:ident),* $(,)?) => {
            mod on_sqlite {
                $(#[test]
                fn $name() {
                    super::$name(super::sqlite());
                })*
            }
            mod on_postgres {
                $(#[test]
                fn $name() {
                    if let Some(s) = super::postgres(concat!("store::tests::on_postgres::", stringify!($name))) {
                        super::$name(s);
                    }
                })*
            }
        };
    }

    on_both_stores!(
        alerts_with_a_seq_are_stored_once,
        alerts_filter_and_page,
        an_external_notification_is_stored_once,
        silences_start_and_end_by_the_clock,
        retention_prunes_old_events_resolved_alerts_and_ended_silences,
        a_report_links_to_its_alert,
        tokens_are_found_by_hash_until_revoked,
        a_batch_delivered_twice_at_once_is_stored_once,
        agents_sessions_and_events_round_trip,
    );

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

    const NOW: i64 = 1_700_000_100_000;

    fn one(s: &dyn Store, f: AlertFilter) -> Vec<Alert> {
        s.list_alerts(&AlertFilter { limit: 100, ..f }, NOW)
            .expect("list")
            .alerts
    }

    fn alerts_with_a_seq_are_stored_once(s: Under) {
        let first = s
            .insert_alerts(
                "a1",
                "h",
                &[
                    event(Some(1), "k", AlertStatus::Warning),
                    event(Some(2), "k", AlertStatus::Ok),
                ],
                NOW,
            )
            .expect("insert");
        assert_eq!((first.stored, first.duplicates), (2, 0));
        let changes: Vec<Change> = first.changes.iter().map(|c| c.change).collect();
        assert_eq!(changes, vec![Change::Created, Change::Resolved]);
        let again = s
            .insert_alerts(
                "a1",
                "h",
                &[
                    event(Some(2), "k", AlertStatus::Ok),
                    event(Some(3), "k", AlertStatus::Critical),
                ],
                NOW,
            )
            .expect("insert");
        assert_eq!((again.stored, again.duplicates), (1, 1));
        assert_eq!(again.changes[0].change, Change::Fired);
        // Another agent may use the same seq; version-1 events (no seq) are all kept.
        s.insert_alerts("a2", "h", &[event(Some(1), "k", AlertStatus::Info)], NOW)
            .expect("insert");
        s.insert_alerts(
            "a3",
            "h",
            &[
                event(None, "k", AlertStatus::Info),
                event(None, "k", AlertStatus::Info),
            ],
            NOW,
        )
        .expect("insert");
        assert_eq!(s.count_alert_events().expect("count"), 6);
        let a1 = one(
            &*s,
            AlertFilter {
                agent_id: Some("a1".into()),
                ..Default::default()
            },
        );
        assert_eq!(a1.len(), 1, "one alert per (agent, key)");
        let a = &a1[0];
        assert_eq!(
            (a.state, a.severity, a.event_count, a.source),
            (AlertState::Firing, Severity::Critical, 3, Source::Agent)
        );
        assert_eq!(a.hostname.as_deref(), Some("h"));
        let timeline = s.alert_events(a.alert_id, None, 100).expect("events");
        let seqs: Vec<Option<u64>> = timeline.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![Some(3), Some(2), Some(1)], "newest first");
        assert_eq!(timeline[1].severity, None, "an Ok says no severity");
    }

    fn alerts_filter_and_page(s: Under) {
        for i in 0..10u64 {
            let status = if i % 2 == 0 {
                AlertStatus::Critical
            } else {
                AlertStatus::Ok
            };
            let mut e = event(Some(i + 1), &format!("k{i}"), status);
            e.event_time += i as i64;
            s.insert_alerts("a1", "h", &[e], NOW).expect("insert");
        }
        let firing = one(
            &*s,
            AlertFilter {
                state: Some(AlertState::Firing),
                ..Default::default()
            },
        );
        assert_eq!(firing.len(), 5);
        assert!(firing.iter().all(|a| a.severity == Severity::Critical));
        let info = one(
            &*s,
            AlertFilter {
                severity: Some(Severity::Info),
                ..Default::default()
            },
        );
        assert_eq!(info.len(), 5, "an alert first heard of as Ok is info");
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .list_alerts(
                    &AlertFilter {
                        limit: 4,
                        after,
                        ..Default::default()
                    },
                    NOW,
                )
                .expect("list");
            seen.extend(page.alerts.iter().map(|a| a.alert_key.clone()));
            match page.next_cursor {
                Some(c) => {
                    let (l, i) = c.split_once(':').expect("cursor");
                    after = Some((l.parse().expect("ms"), i.parse().expect("id")));
                }
                None => break,
            }
        }
        let expected: Vec<String> = (0..10).rev().map(|i| format!("k{i}")).collect();
        assert_eq!(seen, expected, "newest first, each once");
        let by_label = one(
            &*s,
            AlertFilter {
                label: Some(("mount".into(), "/var".into())),
                ..Default::default()
            },
        );
        assert_eq!(by_label.len(), 10);
        let none = one(
            &*s,
            AlertFilter {
                label: Some(("mount".into(), "/x".into())),
                ..Default::default()
            },
        );
        assert!(none.is_empty());
        let fleet = one(
            &*s,
            AlertFilter {
                fleet: Some(true),
                ..Default::default()
            },
        );
        assert!(fleet.is_empty());
    }

    fn external(fp: &str, state: AlertState, starts: i64, ends: Option<i64>) -> ExternalAlert {
        let labels = BTreeMap::from([("alertname".to_owned(), "DiskFull".to_owned())]);
        ExternalAlert {
            fingerprint: fp.into(),
            obs: Observation {
                state,
                severity: Some(Severity::Critical),
                status: state.as_str().into(),
                at_ms: ends.unwrap_or(starts),
                starts_ms: Some(starts),
                title: "DiskFull".into(),
                labels,
                annotations: BTreeMap::new(),
                url: None,
                seq: None,
                dedupe: Some(crate::alerts::external_dedupe_key(fp, state, starts, ends)),
            },
            agent: None,
            route: Route {
                reason: "no host label".into(),
                ..Route::default()
            },
        }
    }

    fn an_external_notification_is_stored_once(s: Under) {
        let batch = [
            external("fp1", AlertState::Firing, 1_000, None),
            external("fp2", AlertState::Firing, 1_000, None),
        ];
        let first = s
            .record_external(Source::Alertmanager, "prom", &batch, NOW)
            .expect("record");
        assert_eq!((first.stored, first.duplicates), (2, 0));
        let again = s
            .record_external(Source::Alertmanager, "prom", &batch, NOW + 1)
            .expect("record");
        assert_eq!((again.stored, again.duplicates), (0, 2));
        let resolved = [external("fp1", AlertState::Resolved, 1_000, Some(5_000))];
        let r = s
            .record_external(Source::Alertmanager, "prom", &resolved, NOW)
            .expect("record");
        assert_eq!(r.changes[0].change, Change::Resolved);
        let alerts = one(&*s, AlertFilter::default());
        assert_eq!(alerts.len(), 2);
        let fp1 = alerts.iter().find(|a| a.alert_key == "fp1").expect("fp1");
        assert_eq!(
            (fp1.state, fp1.event_count, fp1.resolved_at),
            (AlertState::Resolved, 2, Some(5_000))
        );
        assert_eq!(fp1.agent_id, None, "a fleet alert");
        assert_eq!(fp1.source_name.as_deref(), Some("prom"));
        assert_eq!(s.count_alert_events().expect("count"), 3);
    }

    fn silences_start_and_end_by_the_clock(s: Under) {
        s.record_external(
            Source::Alertmanager,
            "prom",
            &[external("fp1", AlertState::Firing, 1_000, None)],
            NOW,
        )
        .expect("record");
        let m = vec![Matcher {
            name: "alertname".into(),
            value: "Disk.*".into(),
            is_regex: true,
        }];
        let silence = s
            .create_silence(&m, "maintenance", "alice", NOW, NOW + 3_600_000)
            .expect("silence");
        assert_eq!(silence.state, "active");
        let covered = s.alerts_matching(&silence, NOW).expect("matching");
        assert_eq!(covered.len(), 1);
        assert_eq!(covered[0].silenced_by, vec![silence.silence_id]);
        let alert = |at| {
            s.list_alerts(
                &AlertFilter {
                    limit: 10,
                    ..Default::default()
                },
                at,
            )
            .expect("list")
            .alerts
            .remove(0)
        };
        assert!(alert(NOW + 3_599_999).silenced);
        assert!(!alert(NOW + 3_600_000).silenced, "over at its end");
        assert_eq!(
            s.list_silences(false, NOW + 3_600_000).expect("list").len(),
            0
        );
        let all = s.list_silences(true, NOW + 3_600_000).expect("list");
        assert_eq!(all[0].state, "expired");
        // Expired early by an operator.
        let early = s
            .create_silence(&m, "again", "alice", NOW, NOW + 3_600_000)
            .expect("silence");
        let ended = s
            .expire_silence(early.silence_id, "bob", NOW + 10)
            .expect("expire")
            .expect("known");
        assert_eq!(
            (ended.state, ended.expired_by.as_deref()),
            ("expired", Some("bob"))
        );
        // The first silence still covers it; the expired one no longer does.
        assert_eq!(alert(NOW + 20).silenced_by, vec![silence.silence_id]);
        assert!(s.expire_silence(999, "bob", NOW).expect("expire").is_none());
    }

    fn retention_prunes_old_events_resolved_alerts_and_ended_silences(s: Under) {
        let old = NOW - 40 * 86_400_000;
        let cutoff = NOW - 30 * 86_400_000;
        // Resolved long ago: goes, with its timeline and acknowledgements.
        s.insert_alerts(
            "a1",
            "h",
            &[
                event(Some(1), "gone", AlertStatus::Critical),
                event(Some(2), "gone", AlertStatus::Ok),
            ],
            old,
        )
        .expect("insert");
        let gone = one(&*s, AlertFilter::default())[0].alert_id;
        s.ack_alert(gone, "alice", "", old).expect("ack");
        // Firing since long ago: stays, though its old events go.
        s.insert_alerts(
            "a1",
            "h",
            &[event(Some(3), "still", AlertStatus::Warning)],
            old,
        )
        .expect("insert");
        // Recent: untouched.
        s.insert_alerts("a1", "h", &[event(Some(4), "new", AlertStatus::Ok)], NOW)
            .expect("insert");
        let m = vec![Matcher {
            name: "alertname".into(),
            value: "x".into(),
            is_regex: false,
        }];
        s.create_silence(&m, "ended", "alice", old, old + 1000)
            .expect("silence");
        s.create_silence(&m, "running", "alice", old, NOW + 1000)
            .expect("silence");
        let n = s.prune_alerts(cutoff).expect("prune");
        assert_eq!(n, 3 + 1, "three old events and one resolved alert");
        let keys: Vec<String> = one(&*s, AlertFilter::default())
            .into_iter()
            .map(|a| a.alert_key)
            .collect();
        assert_eq!(keys, vec!["new".to_owned(), "still".to_owned()]);
        assert!(s.alert_acks(gone).expect("acks").is_empty());
        assert_eq!(s.count_alert_events().expect("count"), 1);
        let silences = s.list_silences(true, NOW).expect("silences");
        assert_eq!(silences.len(), 1);
        assert_eq!(silences[0].comment, "running");
        assert_eq!(s.count_firing_alerts().expect("firing"), 1);
    }

    fn a_report_links_to_its_alert(s: Under) {
        s.insert_alerts(
            "a1",
            "h",
            &[event(Some(1), "k", AlertStatus::Critical)],
            NOW,
        )
        .expect("insert");
        let alert_id = one(&*s, AlertFilter::default())[0].alert_id;
        s.link_alert_session(alert_id, "sess-1", NOW)
            .expect("link")
            .expect("known alert");
        let report = ReportRow {
            report_id: 0,
            agent_id: "a1".into(),
            alert_key: "k".into(),
            alert_id: None,
            session_id: Some("sess-1".into()),
            report: "## Root cause".into(),
            created_at: rfc3339_ms(NOW),
        };
        let (row, change) = s.insert_report(&report, NOW).expect("report");
        assert_eq!(row.alert_id, Some(alert_id));
        let change = change.expect("the alert changed");
        assert_eq!(change.change, Change::Diagnosed);
        assert_eq!(
            change.alert.diagnoses,
            vec![Diagnosis {
                session_id: Some("sess-1".into()),
                report_id: Some(row.report_id),
                created_at: NOW,
            }],
            "the session's diagnosis got its report"
        );
        let listed = s.list_reports(None, Some(alert_id), 10).expect("reports");
        assert_eq!(listed.len(), 1);
        // A report of an alert the hub never had is kept, unlinked.
        let (row, change) = s
            .insert_report(
                &ReportRow {
                    alert_key: "unknown".into(),
                    session_id: Some("sess-other".into()),
                    ..report.clone()
                },
                NOW,
            )
            .expect("report");
        assert_eq!((row.alert_id, change), (None, None));
        // A session started for an alert reports on it whatever key the agent files it
        // under (an external alert's key is its fingerprint, which the agent does not know
        // as one of its own).
        s.link_alert_session(alert_id, "sess-2", NOW)
            .expect("link")
            .expect("known alert");
        let (row, change) = s
            .insert_report(
                &ReportRow {
                    alert_key: "fingerprint-not-a-key-of-a1".into(),
                    session_id: Some("sess-2".into()),
                    ..report.clone()
                },
                NOW,
            )
            .expect("report");
        assert_eq!(row.alert_id, Some(alert_id));
        let diagnoses = change.expect("the alert changed").alert.diagnoses;
        assert_eq!(diagnoses[1].session_id.as_deref(), Some("sess-2"));
        assert_eq!(diagnoses[1].report_id, Some(row.report_id));
        // Another agent's report naming that session does not attach to this alert.
        let (row, _) = s
            .insert_report(
                &ReportRow {
                    agent_id: "a2".into(),
                    alert_key: "unknown".into(),
                    session_id: Some("sess-2".into()),
                    ..report
                },
                NOW,
            )
            .expect("report");
        assert_eq!(row.alert_id, None);
    }

    /// hub.db as version 1 wrote it (alert events in `alerts`).
    const V1_SCHEMA: &str = "
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT, agent_id TEXT NOT NULL, hostname TEXT NOT NULL,
        seq INTEGER, event_time INTEGER NOT NULL, event_status TEXT NOT NULL,
        alert_key TEXT NOT NULL, labels TEXT NOT NULL, attrs TEXT NOT NULL,
        description TEXT NOT NULL, description_format TEXT NOT NULL, received_at INTEGER NOT NULL);
    CREATE UNIQUE INDEX alerts_agent_seq ON alerts(agent_id, seq) WHERE seq IS NOT NULL;
    CREATE INDEX alerts_received ON alerts(received_at);
    CREATE INDEX alerts_agent ON alerts(agent_id, id);
    CREATE TABLE reports (id INTEGER PRIMARY KEY AUTOINCREMENT, agent_id TEXT NOT NULL,
        alert_key TEXT NOT NULL, session_id TEXT, report TEXT NOT NULL, created_at INTEGER NOT NULL);
    PRAGMA user_version = 1;
    ";

    #[test]
    fn a_version_1_file_is_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hub.db");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(V1_SCHEMA).expect("v1 schema");
            let ins = "INSERT INTO alerts (agent_id, hostname, seq, event_time, event_status, alert_key, labels, attrs, description, description_format, received_at) VALUES (?1, 'web-01', ?2, ?3, ?4, ?5, '{\"check\":\"space_used_pct\",\"plugin\":\"disk\",\"target\":\"/var\"}', '{\"threshold\":\"90\"}', 'full', 'text', ?6)";
            for (seq, t, status, key) in [
                (1, 100, "Warning", "k1"),
                (2, 200, "Critical", "k1"),
                (3, 300, "Ok", "k1"),
                (4, 400, "Critical", "k2"),
            ] {
                c.execute(ins, params!["a1", seq, t, status, key, NOW + seq])
                    .expect("v1 row");
            }
            c.execute(
                "INSERT INTO reports (agent_id, alert_key, session_id, report, created_at) VALUES ('a1', 'k2', 's1', 'r', 5)",
                [],
            )
            .expect("v1 report");
        }
        let s = SqliteStore::open(&path).expect("migrated");
        let version: i64 = Connection::open(&path)
            .expect("open")
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, sqlite::SCHEMA_VERSION);
        assert_eq!(
            s.count_alert_events().expect("count"),
            4,
            "every event kept"
        );
        let alerts = one(&s, AlertFilter::default());
        assert_eq!(alerts.len(), 2);
        let k1 = alerts.iter().find(|a| a.alert_key == "k1").expect("k1");
        assert_eq!(
            (k1.state, k1.severity, k1.event_count),
            (AlertState::Resolved, Severity::Critical, 3)
        );
        assert_eq!(
            (k1.first_at, k1.last_at, k1.resolved_at),
            (100_000, 300_000, Some(300_000))
        );
        assert_eq!(k1.title, "disk space_used_pct /var");
        assert_eq!(
            k1.annotations.get("threshold").map(String::as_str),
            Some("90")
        );
        assert_eq!(
            k1.annotations.get("description").map(String::as_str),
            Some("full")
        );
        let k2 = alerts.iter().find(|a| a.alert_key == "k2").expect("k2");
        assert_eq!(k2.state, AlertState::Firing);
        assert_eq!(
            k2.diagnoses.len(),
            1,
            "the report is linked: {:?}",
            k2.diagnoses
        );
        // The (agent, seq) dedupe still holds for what was migrated.
        let again = s
            .insert_alerts(
                "a1",
                "web-01",
                &[event(Some(4), "k2", AlertStatus::Critical)],
                NOW,
            )
            .expect("insert");
        assert_eq!(again.duplicates, 1);
        drop(s);
        // Opening again changes nothing.
        let s = SqliteStore::open(&path).expect("reopen");
        assert_eq!(s.count_alert_events().expect("count"), 4);
        assert_eq!(one(&s, AlertFilter::default()).len(), 2);
    }

    fn tokens_are_found_by_hash_until_revoked(s: Under) {
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

    /// Two hub processes (or replicas) store the same batch at the same moment, as after an
    /// agent's reconnect: every event is kept once, and the alert moved once per event.
    fn a_batch_delivered_twice_at_once_is_stored_once(s: Under) {
        let other = s.reopen();
        let batch: Vec<AlertEvent> = (1..=40u64)
            .map(|seq| {
                let status = if seq % 2 == 1 {
                    AlertStatus::Critical
                } else {
                    AlertStatus::Ok
                };
                event(Some(seq), &format!("k{}", seq % 4), status)
            })
            .collect();
        let barrier = std::sync::Barrier::new(2);
        let (a, b) = std::thread::scope(|scope| {
            let one = scope.spawn(|| {
                barrier.wait();
                s.insert_alerts("a1", "h", &batch, NOW)
            });
            let two = scope.spawn(|| {
                barrier.wait();
                other.insert_alerts("a1", "h", &batch, NOW)
            });
            (
                one.join().expect("thread").expect("insert"),
                two.join().expect("thread").expect("insert"),
            )
        });
        assert_eq!(a.stored + b.stored, 40, "{a:?} / {b:?}");
        assert_eq!(a.duplicates + b.duplicates, 40);
        assert_eq!(s.count_alert_events().expect("count"), 40);
        let alerts = one(&*s, AlertFilter::default());
        assert_eq!(alerts.len(), 4);
        for a in &alerts {
            assert_eq!(a.event_count, 10, "{}: one move per event", a.alert_key);
        }
        // And again later: all duplicates.
        let again = other.insert_alerts("a1", "h", &batch, NOW).expect("insert");
        assert_eq!((again.stored, again.duplicates), (0, 40));
    }

    fn register(host: &str, ip: &str) -> Register {
        Register {
            hostname: host.into(),
            ip: ip.into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            labels: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
            plugins: vec!["disk".into()],
            agent_version: "1.0".into(),
            uptime_sec: 5,
        }
    }

    /// What the alert tests do not touch: agents and how they are found, hub sessions and
    /// their events, the tokens a creator's diagnoses spent.
    fn agents_sessions_and_events_round_trip(s: Under) {
        let t = s
            .insert_token("web", "hash-w", &BTreeMap::new())
            .expect("token");
        let a = s
            .upsert_agent(
                "ag-1",
                &register("Web-01.example.com", "10.0.0.1"),
                2,
                Some(&t.id),
            )
            .expect("upsert");
        assert_eq!((a.connected, a.proto), (true, 2));
        assert_eq!(a.token_name.as_deref(), Some("web"));
        s.upsert_agent("ag-2", &register("db-01", "::1"), 1, None)
            .expect("upsert");
        let hb = s
            .record_heartbeat(
                "ag-1",
                &Heartbeat {
                    active_sessions: 1,
                    active_alerts: 2,
                    cpu_pct: Some(12.5),
                    ..Default::default()
                },
            )
            .expect("heartbeat");
        let got = s.get_agent("ag-1").expect("get").expect("there");
        assert_eq!(got.heartbeat, Some(hb));
        assert_eq!(got.labels.get("env").map(String::as_str), Some("prod"));
        let names: Vec<String> = s
            .list_agents()
            .expect("list")
            .into_iter()
            .map(|a| a.hostname)
            .collect();
        assert_eq!(names, ["Web-01.example.com", "db-01"], "bytewise order");
        let found = |host: &str| {
            s.find_agent_by_host(host)
                .expect("find")
                .map(|m| (m.agent_id, m.by))
        };
        assert_eq!(
            found("web-01.EXAMPLE.com"),
            Some(("ag-1".into(), "hostname"))
        );
        assert_eq!(found("10.0.0.1"), Some(("ag-1".into(), "ip")));
        assert_eq!(found("0:0:0:0:0:0:0:1"), Some(("ag-2".into(), "ip")));
        assert_eq!(
            found("db-01.example.com"),
            Some(("ag-2".into(), "short hostname"))
        );
        assert_eq!(found("WEB-01"), Some(("ag-1".into(), "short hostname")));
        assert_eq!(found("web_01"), None, "`_` is not a wildcard");
        assert_eq!(
            s.find_agent("DB-01").expect("find").map(|m| m.by),
            Some("hostname")
        );
        assert_eq!(
            s.find_agent("ag-2").expect("find").map(|m| m.by),
            Some("agent id")
        );
        s.set_connected("ag-1", false).expect("disconnect");
        s.mark_all_disconnected().expect("all");
        assert!(s.list_agents().expect("list").iter().all(|a| !a.connected));

        let session = SessionRecord {
            session_id: "s1".into(),
            agent_id: "ag-1".into(),
            mode: "diagnose".into(),
            title: Some("disk".into()),
            policy: "human".into(),
            state: "running".into(),
            created_at: rfc3339_ms(NOW),
            created_by: "hub".into(),
            proto: 2,
            params: serde_json::json!({"alert_id": 7}),
            last_seq: 0,
        };
        s.insert_session(&session).expect("session");
        let turn = |seq: u64, tokens: u64| {
            (
                seq,
                serde_json::json!({"event": "turn_ended", "seq": seq, "ts": rfc3339_ms(NOW + 1000), "usage": {"total_tokens": tokens}}).to_string(),
            )
        };
        s.append_events(
            "s1",
            &[(1, r#"{"event":"text","ts":"x"}"#.into()), turn(2, 300)],
        )
        .expect("append");
        s.append_events("s1", &[turn(2, 999), turn(3, 50)])
            .expect("append again");
        let events = s.read_events("s1", 1, 10, 100).expect("read");
        assert_eq!(events.len(), 3, "a stored seq is kept as it was");
        assert!(events[1].1.contains("300"));
        assert_eq!(s.read_events("s1", 2, 2, 100).expect("read").len(), 1);
        assert_eq!(s.session_tokens_since("hub", NOW).expect("tokens"), 350);
        assert_eq!(
            s.session_tokens_since("hub", NOW + 5000).expect("tokens"),
            0
        );
        assert_eq!(s.session_tokens_since("alice", NOW).expect("tokens"), 0);
        s.update_session("s1", "closed", 2).expect("update");
        let got = s.get_session("s1").expect("get").expect("there");
        assert_eq!(
            (got.state.as_str(), got.last_seq),
            ("closed", 3),
            "last_seq never goes back"
        );
        assert_eq!(got.params, session.params);
        assert_eq!(s.list_sessions(Some("ag-1")).expect("list").len(), 1);
        assert_eq!(s.list_sessions(Some("ag-2")).expect("list").len(), 0);
        assert_eq!(s.list_sessions(None).expect("list").len(), 1);
        assert_eq!(s.prune_sessions(NOW + 1).expect("prune"), 1);
        assert!(s.read_events("s1", 1, 10, 100).expect("read").is_empty());
    }

    /// A hub older than the database refuses it, naming both versions (SQLite).
    #[test]
    fn sqlite_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hub.db");
        drop(SqliteStore::open(&path).expect("open"));
        Connection::open(&path)
            .expect("open")
            .execute_batch("PRAGMA user_version = 7;")
            .expect("newer");
        let Err(e) = SqliteStore::open(&path) else {
            panic!("a newer schema was opened");
        };
        assert_eq!(e.kind, StoreErrorKind::Schema);
        assert_eq!(
            e.message,
            format!(
                "the database schema is version 7 but this hub knows up to {}: upgrade the hub (or point it at another database)",
                sqlite::SCHEMA_VERSION
            )
        );
    }

    /// The same for PostgreSQL: a replica of an older build refuses the database a newer one
    /// migrated; the migrations themselves are applied once.
    #[test]
    fn postgres_refuses_a_newer_schema() {
        let Some(db) =
            testing::TestDatabase::create("store::tests::postgres_refuses_a_newer_schema")
        else {
            return;
        };
        let s = PgStore::connect(db.settings(Duration::from_secs(30))).expect("connect");
        assert_eq!(
            s.schema_version().expect("version"),
            postgres::SCHEMA_VERSION
        );
        drop(s);
        // Opening again applies nothing twice.
        let s = PgStore::connect(db.settings(Duration::from_secs(30))).expect("reconnect");
        let rows: i64 = s
            .run("count", async |c| {
                c.query_one("SELECT COUNT(*) FROM schema_migrations", &[])
                    .await?
                    .try_get(0)
            })
            .expect("count");
        assert_eq!(rows, postgres::SCHEMA_VERSION);
        drop(s);
        db.execute(
            "INSERT INTO schema_migrations (version, applied_ms, hub) VALUES (7, 0, 'tether 99')",
        );
        let Err(e) = PgStore::connect(db.settings(Duration::from_secs(30))) else {
            panic!("a newer schema was opened");
        };
        assert_eq!(e.kind, StoreErrorKind::Schema);
        assert_eq!(
            e.message,
            format!(
                "the database schema is version 7 but this hub knows up to {}: upgrade the hub (or point it at another database)",
                postgres::SCHEMA_VERSION
            )
        );
    }

    /// A call that waits on another writer longer than the store allows fails as a timeout,
    /// and the store works again once the writer is done (SQLite: another process holds the
    /// write lock).
    #[test]
    fn sqlite_a_call_stuck_behind_a_lock_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hub.db");
        let s =
            SqliteStore::open_with_busy_timeout(&path, Duration::from_millis(200)).expect("open");
        let inserted = s
            .insert_alerts(
                "a1",
                "h",
                &[event(Some(1), "k", AlertStatus::Critical)],
                NOW,
            )
            .expect("insert");
        let id = inserted.changes[0].alert.alert_id;
        let holder = Connection::open(&path).expect("open");
        holder.execute_batch("BEGIN IMMEDIATE;").expect("lock");
        let e = s.ack_alert(id, "alice", "", NOW).expect_err("blocked");
        assert_eq!(e.kind, StoreErrorKind::Timeout, "{e}");
        holder.execute_batch("ROLLBACK;").expect("unlock");
        assert!(s.ack_alert(id, "alice", "", NOW).expect("ack").is_some());
    }

    /// The same for PostgreSQL: another connection holds the alert's row lock; the call ends
    /// at `query_timeout` with a timeout error, and the pool serves the next call.
    #[test]
    fn postgres_a_call_stuck_behind_a_lock_times_out() {
        let Some(db) = testing::TestDatabase::create(
            "store::tests::postgres_a_call_stuck_behind_a_lock_times_out",
        ) else {
            return;
        };
        let s = PgStore::connect(db.settings(Duration::from_millis(300))).expect("connect");
        let inserted = s
            .insert_alerts(
                "a1",
                "h",
                &[event(Some(1), "k", AlertStatus::Critical)],
                NOW,
            )
            .expect("insert");
        let id = inserted.changes[0].alert.alert_id;
        let lock = db.hold_lock(&format!(
            "SELECT 1 FROM alerts WHERE alert_id = {id} FOR UPDATE"
        ));
        let e = s.ack_alert(id, "alice", "", NOW).expect_err("blocked");
        assert_eq!(e.kind, StoreErrorKind::Timeout, "{e}");
        // Storing an event for the locked alert waits the same way.
        let e = s
            .insert_alerts("a1", "h", &[event(Some(2), "k", AlertStatus::Ok)], NOW)
            .expect_err("blocked");
        assert_eq!(e.kind, StoreErrorKind::Timeout, "{e}");
        drop(lock);
        assert!(s.ack_alert(id, "alice", "", NOW).expect("ack").is_some());
        let done = s
            .insert_alerts("a1", "h", &[event(Some(2), "k", AlertStatus::Ok)], NOW)
            .expect("insert");
        assert_eq!(done.stored, 1, "the timed-out call stored nothing");
    }

    /// A database nobody listens on: a clear, typed error within the connect timeout.
    #[test]
    fn postgres_unreachable_is_unavailable() {
        // A port just released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut settings =
            PgSettings::new(&format!("postgres://tether@127.0.0.1:{port}/tether")).expect("url");
        settings.connect_timeout = Duration::from_secs(2);
        let Err(e) = PgStore::connect(settings) else {
            panic!("connected to nothing");
        };
        assert_eq!(e.kind, StoreErrorKind::Unavailable, "{e}");
        assert!(e.message.contains("cannot connect"), "{e}");
    }

    #[test]
    fn bad_store_urls_are_named() {
        for (url, says) in [
            (
                "mysql://x@h/db",
                "must be a postgres:// (or postgresql://) URL",
            ),
            (
                "postgres://u@h:notaport/db",
                "store.url: not a PostgreSQL URL",
            ),
        ] {
            let e = PgSettings::new(url).expect_err(url);
            assert!(e.contains(says), "{url}: {e}");
        }
        let mut s = PgSettings::new("postgres://u:secret@h/db").expect("url");
        assert!(!format!("{s:?}").contains("secret"), "{s:?}");
        s.pool_size = 0;
        assert!(s.validate().expect_err("0").contains("store.pool_size"));
    }
}
