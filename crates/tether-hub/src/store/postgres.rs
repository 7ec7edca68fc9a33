//! The PostgreSQL store (`[store] url`): one database that several hub replicas share.
//!
//! * The client is tokio-postgres, with a small pool of its own ([`Pool`]): the hub needs
//!   a handful of connections, a bound on them and a bound on each call, not a framework.
//! * The connections' I/O runs on a runtime the store owns (one worker thread), so a store
//!   call works the same from the hub's blocking pool, a CLI command or a plain test: the
//!   caller's thread polls the call's future ([`block_on`]) while the store's runtime moves
//!   the bytes.
//! * Every call is bounded twice: the server's `statement_timeout` ends a statement that runs
//!   (or waits for a lock) too long, and the client gives the whole call, pool wait included,
//!   `query_timeout` before it gives up, cancels the query on the server and drops that
//!   connection.
//! * Schema changes are numbered migrations in `schema_migrations`, applied at start under an
//!   advisory lock (replicas starting together migrate once); a database whose newest
//!   migration is unknown to this build is refused.
//! * `(agent_id, seq)` is unique by a constraint; an agent's batches are serialized by an
//!   advisory lock on the agent, and every alert transition locks the alert's row (`FOR
//!   UPDATE`) in the transaction that writes it, so two replicas writing the same alert take
//!   turns and each sees the other's result.

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
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tether_proto::link::{AlertEvent, Heartbeat, Register};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, NoTls, Row};

/// The newest schema this build knows (the last of [`MIGRATIONS`]).
pub const SCHEMA_VERSION: i64 = 2;

/// The migrations, in order: (version, SQL). Never edit one that shipped; add the next.
const MIGRATIONS: &[(i64, &str)] = &[(1, SCHEMA_1), (2, SCHEMA_2)];

/// Version 2: several replicas ([`crate::cluster`]): each replica's lease, the agents each
/// holds, and calls from one replica to an agent another holds.
const SCHEMA_2: &str = r#"
CREATE TABLE hub_replicas (
    replica_id     TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    started_ms     BIGINT NOT NULL,
    lease_until_ms BIGINT NOT NULL
);
CREATE TABLE agent_holders (
    agent_id   TEXT PRIMARY KEY,
    replica_id TEXT NOT NULL,
    conn_id    BIGINT NOT NULL,
    since_ms   BIGINT NOT NULL
);
CREATE INDEX agent_holders_by_replica ON agent_holders(replica_id);
CREATE TABLE replica_calls (
    call_id      BIGSERIAL PRIMARY KEY,
    to_replica   TEXT NOT NULL,
    from_replica TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    frame        TEXT NOT NULL,
    want_ack     BOOLEAN NOT NULL,
    timeout_ms   BIGINT NOT NULL,
    reply        TEXT,
    created_ms   BIGINT NOT NULL
);
"#;

/// Whether an agent is connected: held by a replica whose lease is live (by the database's
/// clock). The `connected` column is what its last replica wrote, which a replica killed
/// mid-connection never corrects; this is what every replica reads instead.
macro_rules! connected_sql {
    () => {
        "EXISTS (SELECT 1 FROM agent_holders h JOIN hub_replicas r ON r.replica_id = h.replica_id WHERE h.agent_id = agents.agent_id AND r.lease_until_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint)"
    };
}

/// Version 1: the model of SQLite's version 2 (agents, credentials, sessions and their
/// events, reports; alerts, their timeline, acknowledgements, silences, diagnosis links).
/// Times are unix ms (`BIGINT`); label maps and frames are JSON text, as in SQLite.
const SCHEMA_1: &str = r#"
CREATE TABLE agents (
    agent_id      TEXT PRIMARY KEY,
    hostname      TEXT NOT NULL,
    ip            TEXT NOT NULL,
    os            TEXT NOT NULL,
    arch          TEXT NOT NULL,
    labels        TEXT NOT NULL,
    plugins       TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    proto         BIGINT NOT NULL,
    connected     BOOLEAN NOT NULL,
    first_seen    BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL,
    heartbeat     TEXT,
    token_id      TEXT
);
CREATE INDEX agents_by_hostname ON agents (lower(hostname));
CREATE INDEX agents_by_ip ON agents (lower(ip));
CREATE TABLE agent_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    labels     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    agent_id   TEXT
);
CREATE INDEX agent_tokens_by_revoked ON agent_tokens (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    agent_id   TEXT NOT NULL,
    mode       TEXT NOT NULL,
    title      TEXT,
    policy     TEXT NOT NULL,
    state      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    proto      BIGINT NOT NULL,
    params     TEXT NOT NULL,
    last_seq   BIGINT NOT NULL
);
CREATE INDEX sessions_by_agent ON sessions (agent_id);
CREATE INDEX sessions_by_creator ON sessions (created_by, created_at);
CREATE TABLE session_events (
    session_id TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    frame      TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE reports (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id   TEXT NOT NULL,
    alert_key  TEXT NOT NULL,
    alert_id   BIGINT,
    session_id TEXT,
    report     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX reports_by_agent ON reports (agent_id, id);
CREATE TABLE alerts (
    alert_id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    first_ms    BIGINT NOT NULL,
    started_ms  BIGINT NOT NULL,
    last_ms     BIGINT NOT NULL,
    resolved_ms BIGINT,
    event_count BIGINT NOT NULL,
    ack_by      TEXT,
    ack_comment TEXT,
    ack_ms      BIGINT,
    skip_reason TEXT,
    skip_ms     BIGINT,
    updated_ms  BIGINT NOT NULL
);
CREATE INDEX alerts_by_last ON alerts (last_ms, alert_id);
CREATE INDEX alerts_by_agent ON alerts (agent_id, last_ms);
CREATE INDEX alerts_by_state ON alerts (state, last_ms);
CREATE TABLE alert_events (
    event_id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id    BIGINT NOT NULL,
    agent_id    TEXT,
    seq         BIGINT,
    dedupe      TEXT,
    status      TEXT NOT NULL,
    state       TEXT NOT NULL,
    severity    TEXT,
    event_ms    BIGINT NOT NULL,
    labels      TEXT NOT NULL,
    annotations TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    -- An agent's event is stored once, whichever replica receives it (NULLs are distinct:
    -- external events and version-1 agents have no seq).
    CONSTRAINT alert_events_agent_seq UNIQUE (agent_id, seq),
    CONSTRAINT alert_events_dedupe UNIQUE (alert_id, dedupe)
);
CREATE INDEX alert_events_by_alert ON alert_events (alert_id, event_id);
CREATE INDEX alert_events_received ON alert_events (received_ms);
CREATE TABLE alert_acks (
    ack_id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id BIGINT NOT NULL,
    by_name  TEXT NOT NULL,
    comment  TEXT NOT NULL,
    at_ms    BIGINT NOT NULL
);
CREATE INDEX alert_acks_by_alert ON alert_acks (alert_id, ack_id);
CREATE TABLE silences (
    silence_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    matchers   TEXT NOT NULL,
    comment    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    starts_ms  BIGINT NOT NULL,
    ends_ms    BIGINT NOT NULL,
    expired_by TEXT
);
CREATE INDEX silences_by_end ON silences (ends_ms);
CREATE TABLE alert_diagnoses (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id   BIGINT NOT NULL,
    session_id TEXT,
    report_id  BIGINT,
    created_ms BIGINT NOT NULL
);
CREATE INDEX alert_diagnoses_by_alert ON alert_diagnoses (alert_id, id);
CREATE INDEX alert_diagnoses_by_session ON alert_diagnoses (session_id);
"#;

/// The advisory lock the migrations run under (any constant; "tether" in ASCII).
const MIGRATION_LOCK: i64 = 0x7465_7468_6572;

/// `[store]` for PostgreSQL.
#[derive(Clone)]
pub struct PgSettings {
    /// The parsed URL (its `Debug` hides the password).
    pub config: tokio_postgres::Config,
    /// Connections at most; also how many store calls the hub runs at once.
    pub pool_size: usize,
    /// The longest a store call may take, pool wait included (also the server's
    /// `statement_timeout`).
    pub query_timeout: Duration,
    /// The longest connecting may take.
    pub connect_timeout: Duration,
    /// How long this replica's hold on its agents lasts without renewal (renewed every third
    /// of it): after a replica dies, its agents show as disconnected within this long.
    pub replica_lease: Duration,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("config", &self.config)
            .field("pool_size", &self.pool_size)
            .field("query_timeout", &self.query_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl PgSettings {
    pub const DEFAULT_POOL_SIZE: usize = 8;
    pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_REPLICA_LEASE: Duration = Duration::from_secs(15);

    /// Settings of a `postgres://` URL, with the default pool and timeouts. The error says
    /// what is wrong without repeating the URL (it may hold a password).
    pub fn new(url: &str) -> Result<PgSettings, String> {
        let url = url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(
                "store.url: must be a postgres:// (or postgresql://) URL, e.g. postgres://tether@db.example/tether".into(),
            );
        }
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("store.url: not a PostgreSQL URL: {e}"))?;
        if config.get_hosts().is_empty() {
            return Err("store.url: names no host".into());
        }
        Ok(PgSettings {
            config,
            pool_size: Self::DEFAULT_POOL_SIZE,
            query_timeout: Self::DEFAULT_QUERY_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            replica_lease: Self::DEFAULT_REPLICA_LEASE,
        })
    }

    /// The connection settings every hub connection uses (the store's pool, the cluster's
    /// listener): the URL's, with the server-side bound of every statement (lock waits
    /// included, `query_timeout`), `connect_timeout`, and `application_name` unless the URL
    /// names one.
    pub fn client_config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        let statement_ms = self.query_timeout.as_millis();
        config.options(format!("-c statement_timeout={statement_ms}"));
        if config.get_application_name().is_none() {
            config.application_name(application_name);
        }
        config.connect_timeout(self.connect_timeout);
        config
    }

    /// Checks the numbers (the URL was checked by [`PgSettings::new`]).
    pub fn validate(&self) -> Result<(), String> {
        if self.pool_size == 0 || self.pool_size > 256 {
            return Err(format!(
                "store.pool_size: {} is out of range; use 1 to 256",
                self.pool_size
            ));
        }
        if self.query_timeout < Duration::from_millis(10) {
            return Err("store.query_timeout: must be at least 10ms".into());
        }
        if self.connect_timeout < Duration::from_millis(10) {
            return Err("store.connect_timeout: must be at least 10ms".into());
        }
        if self.replica_lease < Duration::from_secs(1) {
            return Err("store.replica_lease: must be at least 1s".into());
        }
        Ok(())
    }
}

/// A failed PostgreSQL call, classified.
pub fn pg_error(what: &str, e: &tokio_postgres::Error) -> StoreError {
    let kind = match e.code() {
        Some(c) if *c == SqlState::QUERY_CANCELED || *c == SqlState::LOCK_NOT_AVAILABLE => {
            StoreErrorKind::Timeout
        }
        Some(c) if c.code().starts_with("23") => StoreErrorKind::Conflict,
        Some(c)
            if c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::TOO_MANY_CONNECTIONS =>
        {
            StoreErrorKind::Unavailable
        }
        Some(_) => StoreErrorKind::Other,
        None => StoreErrorKind::Unavailable,
    };
    // The db error's own text ("canceling statement due to statement timeout"), or the
    // cause of a connection failure ("Connection refused").
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    };
    let message = match kind {
        StoreErrorKind::Timeout => format!("{what}: timed out on the server ({detail})"),
        StoreErrorKind::Unavailable => format!("{what}: PostgreSQL unavailable: {detail}"),
        StoreErrorKind::Conflict => format!("{what}: refused by a constraint: {detail}"),
        _ => format!("{what}: {detail}"),
    };
    StoreError::new(kind, message)
}

type PgResult<T> = Result<T, tokio_postgres::Error>;

/// Polls `fut` on this thread until it is done, inside `handle`'s context (its timers and
/// I/O). Unlike `Handle::block_on` it may run on a thread that is already inside a runtime
/// (a CLI command in `main`'s runtime): it blocks that thread, as a SQLite call does.
fn block_on<F: Future>(handle: &tokio::runtime::Handle, fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let _entered = handle.enter();
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// A small pool: at most `size` connections, idle ones kept for the next call.
struct Pool {
    config: tokio_postgres::Config,
    handle: tokio::runtime::Handle,
    idle: Mutex<Vec<Client>>,
    permits: Arc<tokio::sync::Semaphore>,
    connect_timeout: Duration,
}

/// A connection taken from the pool; back to it on drop only if the call finished (a call
/// cut off by its timeout may have left a statement running: that connection is cancelled
/// and closed).
struct Pooled<'a> {
    pool: &'a Pool,
    client: Option<Client>,
    finished: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if self.finished && !client.is_closed() {
            tether_host::sync::lock(&self.pool.idle).push(client);
        } else if !client.is_closed() {
            let cancel = client.cancel_token();
            self.pool.handle.spawn(async move {
                let _ = cancel.cancel_query(NoTls).await;
            });
        }
    }
}

impl Pool {
    /// A new connection, its I/O task spawned on the store's runtime.
    async fn connect(&self) -> StoreResult<Client> {
        let connecting = self.config.connect(NoTls);
        let (client, connection) = match tokio::time::timeout(self.connect_timeout, connecting)
            .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(pg_error("cannot connect", &e)),
            Err(_) => {
                return Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    format!(
                        "cannot connect: PostgreSQL did not answer within {:?} (store.connect_timeout)",
                        self.connect_timeout
                    ),
                ));
            }
        };
        self.handle.spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    async fn get(&self) -> StoreResult<Pooled<'_>> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::other("the store is closed"))?;
        let idle = loop {
            let next = tether_host::sync::lock(&self.idle).pop();
            match next {
                Some(c) if c.is_closed() => continue,
                other => break other,
            }
        };
        let client = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Pooled {
            pool: self,
            client: Some(client),
            finished: false,
            _permit: permit,
        })
    }
}

/// The PostgreSQL store.
pub struct PgStore {
    /// The runtime the connections' I/O runs on (`None` only while dropping).
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    settings: PgSettings,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Not `drop(runtime)`: that panics when the store is dropped inside another runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl PgStore {
    /// Connects, applies the migrations this database lacks (or refuses a newer schema).
    pub fn connect(settings: PgSettings) -> StoreResult<PgStore> {
        settings.validate().map_err(StoreError::other)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tether-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::other(format!("cannot start the store's runtime: {e}")))?;
        let config = settings.client_config("tether-hub");
        let pool = Pool {
            config,
            handle: runtime.handle().clone(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(settings.pool_size)),
            connect_timeout: settings.connect_timeout,
        };
        let store = PgStore {
            runtime: Some(runtime),
            pool,
            settings,
        };
        store.migrate()?;
        Ok(store)
    }

    /// The settings it was opened with.
    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    /// The connection settings (statement timeout and application name included), for a
    /// connection of one's own, e.g. a `LISTEN` connection that must not sit in the pool.
    pub fn connect_config(&self) -> &tokio_postgres::Config {
        &self.pool.config
    }

    /// The runtime the store's connections run on: spawn a connection's I/O task here.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.pool.handle
    }

    /// Runs `f` with a pooled connection, bounded by `query_timeout` (pool wait included).
    /// `what` names the call in errors. For code beside the store (leases, notifications)
    /// that needs its own queries with the same bounds.
    pub fn run<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&mut Client) -> PgResult<T>,
    ) -> StoreResult<T> {
        let limit = self.settings.query_timeout;
        let call = async {
            let mut conn = self.pool.get().await?;
            let client = conn
                .client
                .as_mut()
                .ok_or_else(|| StoreError::other("the connection is gone"))?;
            let out = f(client).await;
            match &out {
                // A broken connection is not put back.
                Err(e) if e.is_closed() => {}
                _ => conn.finished = true,
            }
            out.map_err(|e| pg_error(what, &e))
        };
        let timed = async {
            match tokio::time::timeout(limit, call).await {
                Ok(out) => out,
                Err(_) => Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!("{what}: no answer within {limit:?} (store.query_timeout)"),
                )),
            }
        };
        block_on(&self.pool.handle, timed)
    }

    /// Runs `f` in a transaction, committed when it returns `Ok`.
    fn tx<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> PgResult<T>,
    ) -> StoreResult<T> {
        self.run(what, async move |c| {
            let tx = c.transaction().await?;
            let out = f(&tx).await?;
            tx.commit().await?;
            Ok(out)
        })
    }

    /// The schema version of the database (0: empty).
    pub fn schema_version(&self) -> StoreResult<i64> {
        self.run("reading the schema version", async |c| {
            let exists: bool = c
                .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
                .await?
                .try_get(0)?;
            if !exists {
                return Ok(0);
            }
            c.query_one(
                "SELECT COALESCE(MAX(version), 0)::bigint FROM schema_migrations",
                &[],
            )
            .await?
            .try_get(0)
        })
    }

    fn migrate(&self) -> StoreResult<()> {
        let found = self.run("migrating the schema", async |c| {
            let tx = c.transaction().await?;
            // Replicas starting together: one migrates, the others then find it done.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    BIGINT PRIMARY KEY,
                    applied_ms BIGINT NOT NULL,
                    hub        TEXT NOT NULL
                )",
            )
            .await?;
            let current: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0)::bigint FROM schema_migrations",
                    &[],
                )
                .await?
                .try_get(0)?;
            if current > SCHEMA_VERSION {
                return Ok(current);
            }
            let hub = format!("tether {}", env!("CARGO_PKG_VERSION"));
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_ms, hub) VALUES ($1, $2, $3)",
                    &[version, &now_ms(), &hub],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(current)
        })?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::newer_schema(found, SCHEMA_VERSION));
        }
        Ok(())
    }
}

fn agent_from_row(row: &Row) -> PgResult<AgentRecord> {
    let labels: String = row.try_get(5)?;
    let plugins: String = row.try_get(6)?;
    let heartbeat: Option<String> = row.try_get(12)?;
    Ok(AgentRecord {
        agent_id: row.try_get(0)?,
        hostname: row.try_get(1)?,
        ip: row.try_get(2)?,
        os: row.try_get(3)?,
        arch: row.try_get(4)?,
        labels: json_map(&labels),
        plugins: serde_json::from_str(&plugins).unwrap_or_default(),
        agent_version: row.try_get(7)?,
        proto: row.try_get::<_, i64>(8)?.clamp(0, u32::MAX as i64) as u32,
        connected: row.try_get(9)?,
        first_seen: rfc3339_ms(row.try_get(10)?),
        last_seen: rfc3339_ms(row.try_get(11)?),
        heartbeat: heartbeat.and_then(|h| serde_json::from_str(&h).ok()),
        token_id: row.try_get(13)?,
        token_name: row.try_get(14)?,
    })
}

const AGENT_COLUMNS: &str = concat!(
    "agent_id, hostname, ip, os, arch, labels, plugins, agent_version, proto, ",
    connected_sql!(),
    ", first_seen, last_seen, heartbeat, token_id, (SELECT name FROM agent_tokens WHERE agent_tokens.id = agents.token_id)"
);

const TOKEN_COLUMNS: &str = "id, name, hash, labels, created_at, revoked_at, agent_id";

fn token_from_row(row: &Row) -> PgResult<TokenRecord> {
    let labels: String = row.try_get(3)?;
    let revoked: Option<i64> = row.try_get(5)?;
    Ok(TokenRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        hash: row.try_get(2)?,
        labels: json_map(&labels),
        created_at: rfc3339_ms(row.try_get(4)?),
        revoked_at: revoked.map(rfc3339_ms),
        agent_id: row.try_get(6)?,
    })
}

const ALERT_COLUMNS: &str = "alert_id, source, source_name, agent_id, hostname, alert_key, title, severity, state, labels, annotations, url, route, first_ms, started_ms, last_ms, resolved_ms, event_count, ack_by, ack_comment, ack_ms, updated_ms, skip_reason, skip_ms";

fn alert_from_row(row: &Row) -> PgResult<Alert> {
    let text = |i: usize| -> PgResult<String> { row.try_get(i) };
    let route: Option<String> = row.try_get(12)?;
    let ack = match row.try_get::<_, Option<String>>(18)? {
        Some(by) => Some(AckInfo {
            by,
            comment: row.try_get::<_, Option<String>>(19)?.unwrap_or_default(),
            at: row.try_get::<_, Option<i64>>(20)?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(Alert {
        alert_id: row.try_get(0)?,
        source: Source::parse(&text(1)?).unwrap_or(Source::Agent),
        source_name: row.try_get(2)?,
        agent_id: row.try_get(3)?,
        hostname: row.try_get(4)?,
        alert_key: text(5)?,
        title: text(6)?,
        severity: Severity::parse(&text(7)?).unwrap_or(Severity::Warning),
        state: AlertState::parse(&text(8)?).unwrap_or(AlertState::Firing),
        labels: json_map(&text(9)?),
        annotations: json_map(&text(10)?),
        url: row.try_get(11)?,
        route: route.and_then(|r| serde_json::from_str(&r).ok()),
        first_at: row.try_get(13)?,
        started_at: row.try_get(14)?,
        last_at: row.try_get(15)?,
        resolved_at: row.try_get(16)?,
        event_count: row.try_get::<_, i64>(17)?.max(0) as u64,
        ack,
        silenced: false,
        silenced_by: Vec::new(),
        diagnoses: Vec::new(),
        diagnosis_skipped: match row.try_get::<_, Option<String>>(22)? {
            Some(reason) => Some(SkipInfo {
                reason,
                at: row.try_get::<_, Option<i64>>(23)?.unwrap_or(0),
            }),
            None => None,
        },
        updated_at: row.try_get(21)?,
    })
}

fn rows<T>(rows: Vec<Row>, f: impl Fn(&Row) -> PgResult<T>) -> PgResult<Vec<T>> {
    rows.iter().map(f).collect()
}

/// The alert of an identity, its row locked until the transaction ends.
async fn lock_alert(tx: &impl GenericClient, identity: &str) -> PgResult<Option<Alert>> {
    tx.query_opt(
        &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE identity = $1 FOR UPDATE"),
        &[&identity],
    )
    .await?
    .as_ref()
    .map(alert_from_row)
    .transpose()
}

async fn load_alert_by_id(c: &impl GenericClient, alert_id: i64) -> PgResult<Option<Alert>> {
    c.query_opt(
        &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = $1"),
        &[&alert_id],
    )
    .await?
    .as_ref()
    .map(alert_from_row)
    .transpose()
}

/// Inserts (`alert_id` 0) or updates an alert; returns its id.
async fn write_alert(tx: &impl GenericClient, identity: &str, a: &Alert) -> PgResult<i64> {
    let route = a.route.as_ref().map(to_json);
    let (ack_by, ack_comment, ack_ms) = match &a.ack {
        Some(k) => (Some(k.by.as_str()), Some(k.comment.as_str()), Some(k.at)),
        None => (None, None, None),
    };
    let (skip_reason, skip_ms) = match &a.diagnosis_skipped {
        Some(k) => (Some(k.reason.as_str()), Some(k.at)),
        None => (None, None),
    };
    let labels = to_json(&a.labels);
    let annotations = to_json(&a.annotations);
    let event_count = a.event_count.min(i64::MAX as u64) as i64;
    let values: [&(dyn ToSql + Sync); 25] = [
        &a.source.as_str(),
        &a.source_name,
        &a.agent_id,
        &a.hostname,
        &a.alert_key,
        &a.title,
        &a.severity.as_str(),
        &a.state.as_str(),
        &labels,
        &annotations,
        &a.url,
        &route,
        &a.first_at,
        &a.started_at,
        &a.last_at,
        &a.resolved_at,
        &event_count,
        &ack_by,
        &ack_comment,
        &ack_ms,
        &a.updated_at,
        &skip_reason,
        &skip_ms,
        &identity,
        &a.alert_id,
    ];
    if a.alert_id == 0 {
        let row = tx
            .query_one(
                "INSERT INTO alerts (source, source_name, agent_id, hostname, alert_key, title, severity, state, labels, annotations, url, route, first_ms, started_ms, last_ms, resolved_ms, event_count, ack_by, ack_comment, ack_ms, updated_ms, skip_reason, skip_ms, identity)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)
                 RETURNING alert_id",
                &values[..24],
            )
            .await?;
        row.try_get(0)
    } else {
        tx.execute(
            "UPDATE alerts SET source = $1, source_name = $2, agent_id = $3, hostname = $4, alert_key = $5, title = $6, severity = $7, state = $8, labels = $9, annotations = $10, url = $11, route = $12, first_ms = $13, started_ms = $14, last_ms = $15, resolved_ms = $16, event_count = $17, ack_by = $18, ack_comment = $19, ack_ms = $20, updated_ms = $21, skip_reason = $22, skip_ms = $23
             WHERE identity = $24 AND alert_id = $25",
            &values,
        )
        .await?;
        Ok(a.alert_id)
    }
}

async fn insert_event(
    tx: &impl GenericClient,
    alert_id: i64,
    agent_id: Option<&str>,
    obs: &Observation,
    received_ms: i64,
) -> PgResult<()> {
    let seq = obs.seq.map(|s| s.min(i64::MAX as u64) as i64);
    tx.execute(
        "INSERT INTO alert_events (alert_id, agent_id, seq, dedupe, status, state, severity, event_ms, labels, annotations, received_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &alert_id,
            &agent_id,
            &seq,
            &obs.dedupe,
            &obs.status,
            &obs.state.as_str(),
            &obs.severity.map(Severity::as_str),
            &obs.at_ms,
            &to_json(&obs.labels),
            &to_json(&obs.annotations),
            &received_ms,
        ],
    )
    .await?;
    Ok(())
}

/// Serializes writers of one key (an agent's events, one alert's identity) for the rest of
/// the transaction: the row lock of `FOR UPDATE` cannot cover an alert not created yet.
async fn lock_key(tx: &impl GenericClient, key: &str) -> PgResult<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&key],
    )
    .await?;
    Ok(())
}

/// Applies one observation to the alert of `identity` (created if new) and stores the event;
/// `cache` holds the batch's alerts already read (and locked). As SQLite's `observe_tx`.
#[allow(clippy::too_many_arguments)]
async fn observe_tx(
    tx: &impl GenericClient,
    cache: &mut HashMap<String, Alert>,
    identity: &str,
    fresh: impl FnOnce() -> Alert,
    update: impl FnOnce(&mut Alert),
    obs: &Observation,
    now_ms: i64,
) -> PgResult<AlertChange> {
    let known = match cache.remove(identity) {
        Some(a) => Some(a),
        None => {
            lock_key(tx, identity).await?;
            lock_alert(tx, identity).await?
        }
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
    alert.alert_id = write_alert(tx, identity, &alert).await?;
    let event_agent = match alert.source {
        Source::Agent => alert.agent_id.as_deref(),
        Source::Alertmanager | Source::Grafana => None,
    };
    insert_event(tx, alert.alert_id, event_agent, obs, now_ms).await?;
    cache.insert(identity.to_owned(), alert.clone());
    Ok(AlertChange {
        alert,
        change,
        previous_state,
    })
}

/// Links report `report_id` to its alert (and the alert to the report's session).
async fn link_report_tx(
    tx: &impl GenericClient,
    report_id: i64,
    agent_id: &str,
    alert_key: &str,
    session_id: Option<&str>,
    created_ms: i64,
) -> PgResult<Option<i64>> {
    let by_session: Option<i64> = match session_id {
        Some(sid) => tx
            .query_opt(
                "SELECT d.alert_id FROM alert_diagnoses d JOIN alerts a ON a.alert_id = d.alert_id
                 WHERE d.session_id = $1 AND a.agent_id = $2 ORDER BY d.id LIMIT 1",
                &[&sid, &agent_id],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?,
        None => None,
    };
    let alert_id: Option<i64> = match by_session {
        Some(id) => Some(id),
        None => tx
            .query_opt(
                "SELECT alert_id FROM alerts WHERE identity = $1",
                &[&agent_identity(agent_id, alert_key)],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?,
    };
    let Some(alert_id) = alert_id else {
        return Ok(None);
    };
    tx.execute(
        "UPDATE reports SET alert_id = $2 WHERE id = $1",
        &[&report_id, &alert_id],
    )
    .await?;
    let updated = match session_id {
        Some(sid) => {
            tx.execute(
                "UPDATE alert_diagnoses SET report_id = $3 WHERE alert_id = $1 AND session_id = $2 AND report_id IS NULL",
                &[&alert_id, &sid, &report_id],
            )
            .await?
        }
        None => 0,
    };
    if updated == 0 {
        tx.execute(
            "INSERT INTO alert_diagnoses (alert_id, session_id, report_id, created_ms) VALUES ($1, $2, $3, $4)",
            &[&alert_id, &session_id, &report_id, &created_ms],
        )
        .await?;
    }
    Ok(Some(alert_id))
}

const SILENCE_COLUMNS: &str =
    "silence_id, matchers, comment, created_by, created_ms, starts_ms, ends_ms, expired_by";

fn silence_from_row(row: &Row) -> PgResult<Silence> {
    let matchers: String = row.try_get(1)?;
    Ok(Silence::new(
        row.try_get(0)?,
        serde_json::from_str(&matchers).unwrap_or_default(),
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get(6)?,
        row.try_get(7)?,
    ))
}

async fn active_silences(c: &impl GenericClient, now_ms: i64) -> PgResult<Vec<Silence>> {
    let r = c
        .query(
            &format!(
                "SELECT {SILENCE_COLUMNS} FROM silences WHERE starts_ms <= $1 AND ends_ms > $1"
            ),
            &[&now_ms],
        )
        .await?;
    rows(r, silence_from_row)
}

async fn diagnoses_of(c: &impl GenericClient, alert_id: i64) -> PgResult<Vec<Diagnosis>> {
    let r = c
        .query(
            "SELECT session_id, report_id, created_ms FROM alert_diagnoses WHERE alert_id = $1 ORDER BY id",
            &[&alert_id],
        )
        .await?;
    rows(r, |r| {
        Ok(Diagnosis {
            session_id: r.try_get(0)?,
            report_id: r.try_get(1)?,
            created_at: r.try_get(2)?,
        })
    })
}

/// Completes alerts read from their rows: silences as of `now_ms`, diagnoses.
async fn finish_views(
    c: &impl GenericClient,
    alerts: &mut [Alert],
    silences: &[Silence],
    now_ms: i64,
) -> PgResult<()> {
    let mut diagnosed: HashMap<i64, Vec<Diagnosis>> = HashMap::new();
    for a in alerts.iter_mut() {
        a.set_silences(silences, now_ms);
        let d = match diagnosed.get(&a.alert_id) {
            Some(d) => d.clone(),
            None => {
                let d = diagnoses_of(c, a.alert_id).await?;
                diagnosed.insert(a.alert_id, d.clone());
                d
            }
        };
        a.diagnoses = d;
    }
    Ok(())
}

async fn finish_changes(
    c: &impl GenericClient,
    changes: &mut [AlertChange],
    now_ms: i64,
) -> PgResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let silences = active_silences(c, now_ms).await?;
    let mut alerts: Vec<Alert> = changes.iter().map(|c| c.alert.clone()).collect();
    finish_views(c, &mut alerts, &silences, now_ms).await?;
    for (c, a) in changes.iter_mut().zip(alerts) {
        c.alert = a;
    }
    Ok(())
}

/// The alert `alert_id` after a change that is not an event, as a change.
async fn changed(
    c: &impl GenericClient,
    alert_id: i64,
    change: Change,
    now_ms: i64,
) -> PgResult<Option<AlertChange>> {
    let Some(alert) = load_alert_by_id(c, alert_id).await? else {
        return Ok(None);
    };
    let mut changes = [AlertChange {
        previous_state: Some(alert.state),
        alert,
        change,
    }];
    finish_changes(c, &mut changes, now_ms).await?;
    let [c] = changes;
    Ok(Some(c))
}

fn event_from_row(row: &Row) -> PgResult<TimelineEvent> {
    let state: String = row.try_get(4)?;
    let severity: Option<String> = row.try_get(5)?;
    let seq: Option<i64> = row.try_get(9)?;
    let labels: String = row.try_get(7)?;
    let annotations: String = row.try_get(8)?;
    Ok(TimelineEvent {
        event_id: row.try_get(0)?,
        alert_id: row.try_get(1)?,
        agent_id: row.try_get(2)?,
        status: row.try_get(3)?,
        state: AlertState::parse(&state).unwrap_or(AlertState::Firing),
        severity: severity.as_deref().and_then(Severity::parse),
        at: row.try_get(6)?,
        labels: json_map(&labels),
        annotations: json_map(&annotations),
        seq: seq.map(|s| s.max(0) as u64),
        received_at: row.try_get(10)?,
    })
}

fn session_from_row(row: &Row) -> PgResult<SessionRecord> {
    let params: String = row.try_get(9)?;
    Ok(SessionRecord {
        session_id: row.try_get(0)?,
        agent_id: row.try_get(1)?,
        mode: row.try_get(2)?,
        title: row.try_get(3)?,
        policy: row.try_get(4)?,
        state: row.try_get(5)?,
        created_at: rfc3339_ms(row.try_get(6)?),
        created_by: row.try_get(7)?,
        proto: row.try_get::<_, i64>(8)?.clamp(0, u32::MAX as i64) as u32,
        params: serde_json::from_str(&params).unwrap_or(Value::Null),
        last_seq: row.try_get::<_, i64>(10)?.max(0) as u64,
    })
}

const SESSION_COLUMNS: &str = "session_id, agent_id, mode, title, policy, state, created_at, created_by, proto, params, last_seq";

/// `u64` → `BIGINT` (clamped: the store never sees one that large).
fn big(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

async fn agent_match(
    c: &impl GenericClient,
    sql: &str,
    arg: &str,
    by: &'static str,
) -> PgResult<Option<AgentMatch>> {
    c.query_opt(
        &format!(
            "SELECT agent_id, hostname FROM agents WHERE {sql} ORDER BY {} DESC, last_seen DESC LIMIT 1",
            connected_sql!()
        ),
        &[&arg],
    )
    .await?
    .map(|r| {
        Ok(AgentMatch {
            agent_id: r.try_get(0)?,
            hostname: r.try_get(1)?,
            by,
        })
    })
    .transpose()
}

impl Store for PgStore {
    fn max_in_flight(&self) -> usize {
        self.settings.pool_size
    }

    fn upsert_agent(
        &self,
        agent_id: &str,
        reg: &Register,
        proto: u32,
        token_id: Option<&str>,
    ) -> StoreResult<AgentRecord> {
        let now = now_ms();
        self.run("upsert_agent", async |c| {
            let row = c
                .query_one(
                    &format!(
                        "INSERT INTO agents (agent_id, hostname, ip, os, arch, labels, plugins, agent_version, proto, connected, first_seen, last_seen, token_id)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, TRUE, $10, $10, $11)
                         ON CONFLICT (agent_id) DO UPDATE SET hostname = excluded.hostname, ip = excluded.ip,
                           os = excluded.os, arch = excluded.arch, labels = excluded.labels,
                           plugins = excluded.plugins, agent_version = excluded.agent_version,
                           proto = excluded.proto, connected = TRUE, last_seen = excluded.last_seen,
                           token_id = COALESCE(excluded.token_id, agents.token_id)
                         RETURNING {AGENT_COLUMNS}"
                    ),
                    &[
                        &agent_id,
                        &reg.hostname,
                        &reg.ip,
                        &reg.os,
                        &reg.arch,
                        &to_json(&reg.labels),
                        &to_json(&reg.plugins),
                        &reg.agent_version,
                        &i64::from(proto),
                        &now,
                        &token_id,
                    ],
                )
                .await?;
            // It is registering: connected, though its replica records the hold just after.
            let mut agent = agent_from_row(&row)?;
            agent.connected = true;
            Ok(agent)
        })
    }

    fn set_connected(&self, agent_id: &str, connected: bool) -> StoreResult<()> {
        self.run("set_connected", async |c| {
            c.execute(
                "UPDATE agents SET connected = $2, last_seen = $3 WHERE agent_id = $1",
                &[&agent_id, &connected, &now_ms()],
            )
            .await?;
            Ok(())
        })
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
        let text = to_json(&figures);
        self.run("record_heartbeat", async |c| {
            c.execute(
                "UPDATE agents SET heartbeat = $2, last_seen = $3 WHERE agent_id = $1",
                &[&agent_id, &text, &now],
            )
            .await?;
            Ok(())
        })?;
        Ok(figures)
    }

    fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        self.run("list_agents", async |c| {
            let r = c
                .query(
                    &format!(
                        "SELECT {AGENT_COLUMNS} FROM agents ORDER BY hostname COLLATE \"C\", agent_id COLLATE \"C\""
                    ),
                    &[],
                )
                .await?;
            rows(r, agent_from_row)
        })
    }

    fn get_agent(&self, agent_id: &str) -> StoreResult<Option<AgentRecord>> {
        self.run("get_agent", async |c| {
            c.query_opt(
                &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = $1"),
                &[&agent_id],
            )
            .await?
            .as_ref()
            .map(agent_from_row)
            .transpose()
        })
    }

    /// Nothing to do: replicas share the database, and whether an agent is connected is read
    /// from its holder's lease (`connected_sql!`), which lapses by itself when a replica dies.
    fn mark_all_disconnected(&self) -> StoreResult<()> {
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
        self.run("insert_token", async |c| {
            c.execute(
                "INSERT INTO agent_tokens (id, name, hash, labels, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&id, &name, &hash, &to_json(labels), &now],
            )
            .await?;
            Ok(())
        })?;
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
        self.run("list_tokens", async |c| {
            let r = c
                .query(
                    &format!(
                        "SELECT {TOKEN_COLUMNS} FROM agent_tokens ORDER BY created_at, id COLLATE \"C\""
                    ),
                    &[],
                )
                .await?;
            rows(r, token_from_row)
        })
    }

    fn revoke_token(&self, id_or_name: &str) -> StoreResult<usize> {
        self.run("revoke_token", async |c| {
            let n = c
                .execute(
                    "UPDATE agent_tokens SET revoked_at = $2 WHERE (id = $1 OR name = $1) AND revoked_at IS NULL",
                    &[&id_or_name, &now_ms()],
                )
                .await?;
            Ok(n as usize)
        })
    }

    fn tokens_revoked_since(&self, since_ms: i64) -> StoreResult<Vec<(String, i64)>> {
        self.run("tokens_revoked_since", async |c| {
            let r = c
                .query(
                    "SELECT id, revoked_at FROM agent_tokens WHERE revoked_at >= $1 ORDER BY revoked_at",
                    &[&since_ms],
                )
                .await?;
            rows(r, |r| Ok((r.try_get(0)?, r.try_get(1)?)))
        })
    }

    fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        self.run("token_by_hash", async |c| {
            c.query_opt(
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM agent_tokens WHERE hash = $1 AND revoked_at IS NULL"
                ),
                &[&hash],
            )
            .await?
            .as_ref()
            .map(token_from_row)
            .transpose()
        })
    }

    fn bind_token(&self, token_id: &str, agent_id: &str) -> StoreResult<()> {
        self.run("bind_token", async |c| {
            c.execute(
                "UPDATE agent_tokens SET agent_id = $2 WHERE id = $1 AND agent_id IS NULL",
                &[&token_id, &agent_id],
            )
            .await?;
            Ok(())
        })
    }

    fn insert_alerts(
        &self,
        agent_id: &str,
        hostname: &str,
        events: &[AlertEvent],
        now_ms: i64,
    ) -> StoreResult<AlertInsert> {
        self.tx("insert_alerts", async |tx| {
            // One agent's batches take turns (a reconnect to another replica may deliver
            // the same seqs twice at once); the check below then sees the other's rows.
            lock_key(tx, &format!("agent-events/{agent_id}")).await?;
            let mut out = AlertInsert::default();
            let mut cache = HashMap::new();
            for e in events {
                if let Some(seq) = e.seq {
                    let dup = tx
                        .query_opt(
                            "SELECT 1 FROM alert_events WHERE agent_id = $1 AND seq = $2",
                            &[&agent_id, &big(seq)],
                        )
                        .await?
                        .is_some();
                    if dup {
                        out.duplicates += 1;
                        continue;
                    }
                }
                let obs = observe_agent_event(e);
                let identity = agent_identity(agent_id, &e.alert_key);
                let change = observe_tx(
                    tx,
                    &mut cache,
                    &identity,
                    || Alert::new(Source::Agent, &e.alert_key, &obs, now_ms),
                    |a| {
                        a.agent_id = Some(agent_id.to_owned());
                        a.hostname = Some(hostname.to_owned());
                    },
                    &obs,
                    now_ms,
                )
                .await?;
                out.changes.push(change);
            }
            finish_changes(tx, &mut out.changes, now_ms).await?;
            out.stored = out.changes.len();
            Ok(out)
        })
    }

    fn record_external(
        &self,
        source: Source,
        source_name: &str,
        alerts: &[ExternalAlert],
        now_ms: i64,
    ) -> StoreResult<AlertInsert> {
        self.tx("record_external", async |tx| {
            let mut out = AlertInsert::default();
            let mut cache: HashMap<String, Alert> = HashMap::new();
            for x in alerts {
                let identity = external_identity(source, &x.fingerprint);
                if !cache.contains_key(&identity) {
                    // Before the duplicate check: another replica storing the same
                    // notification finishes first, and its event is then seen here.
                    lock_key(tx, &identity).await?;
                    if let Some(a) = lock_alert(tx, &identity).await? {
                        cache.insert(identity.clone(), a);
                    }
                }
                if let Some(key) = &x.obs.dedupe
                    && let Some(a) = cache.get(&identity)
                {
                    let dup = tx
                        .query_opt(
                            "SELECT 1 FROM alert_events WHERE alert_id = $1 AND dedupe = $2",
                            &[&a.alert_id, key],
                        )
                        .await?
                        .is_some();
                    if dup {
                        out.duplicates += 1;
                        continue;
                    }
                }
                let change = observe_tx(
                    tx,
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
                )
                .await?;
                out.changes.push(change);
            }
            finish_changes(tx, &mut out.changes, now_ms).await?;
            out.stored = out.changes.len();
            Ok(out)
        })
    }

    fn list_alerts(&self, f: &AlertFilter, now_ms: i64) -> StoreResult<AlertPage> {
        let mut sql = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE TRUE");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(s) = f.state {
            arg(&mut sql, " AND state = ?", Box::new(s.as_str().to_owned()));
        }
        if let Some(s) = f.severity {
            arg(
                &mut sql,
                " AND severity = ?",
                Box::new(s.as_str().to_owned()),
            );
        }
        if let Some(s) = f.source {
            arg(&mut sql, " AND source = ?", Box::new(s.as_str().to_owned()));
        }
        if let Some(a) = &f.agent_id {
            arg(&mut sql, " AND agent_id = ?", Box::new(a.clone()));
        }
        match f.fleet {
            Some(true) => sql.push_str(" AND agent_id IS NULL"),
            Some(false) => sql.push_str(" AND agent_id IS NOT NULL"),
            None => {}
        }
        if let Some((k, v)) = &f.label {
            arg(
                &mut sql,
                " AND (labels::jsonb ->> ?::text)",
                Box::new(k.clone()),
            );
            arg(&mut sql, " = ?", Box::new(v.clone()));
        }
        if let Some((last, id)) = f.after {
            arg(&mut sql, " AND (last_ms < ?", Box::new(last));
            arg(&mut sql, " OR (last_ms = ?", Box::new(last));
            arg(&mut sql, " AND alert_id < ?))", Box::new(id));
        }
        let limit = f.limit.clamp(1, 1000);
        arg(
            &mut sql,
            " ORDER BY last_ms DESC, alert_id DESC LIMIT ?",
            Box::new(limit as i64),
        );
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let alerts = self.run("list_alerts", async |c| {
            let mut alerts = rows(c.query(&sql, &refs).await?, alert_from_row)?;
            let silences = active_silences(c, now_ms).await?;
            finish_views(c, &mut alerts, &silences, now_ms).await?;
            Ok(alerts)
        })?;
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
        self.run("get_alert", async |c| {
            let Some(a) = load_alert_by_id(c, alert_id).await? else {
                return Ok(None);
            };
            let mut one = [a];
            let silences = active_silences(c, now_ms).await?;
            finish_views(c, &mut one, &silences, now_ms).await?;
            let [a] = one;
            Ok(Some(a))
        })
    }

    fn alert_events(
        &self,
        alert_id: i64,
        before_event_id: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<TimelineEvent>> {
        let limit = limit.clamp(1, 1000) as i64;
        self.run("alert_events", async |c| {
            let r = c
                .query(
                    "SELECT event_id, alert_id, agent_id, status, state, severity, event_ms, labels, annotations, seq, received_ms
                     FROM alert_events WHERE alert_id = $1 AND ($2::bigint IS NULL OR event_id < $2)
                     ORDER BY event_id DESC LIMIT $3",
                    &[&alert_id, &before_event_id, &limit],
                )
                .await?;
            rows(r, event_from_row)
        })
    }

    fn alert_acks(&self, alert_id: i64) -> StoreResult<Vec<AckRecord>> {
        self.run("alert_acks", async |c| {
            let r = c
                .query(
                    "SELECT by_name, comment, at_ms FROM alert_acks WHERE alert_id = $1 ORDER BY ack_id",
                    &[&alert_id],
                )
                .await?;
            rows(r, |r| {
                Ok(AckRecord {
                    by: r.try_get(0)?,
                    comment: r.try_get(1)?,
                    at: r.try_get(2)?,
                })
            })
        })
    }

    fn ack_alert(
        &self,
        alert_id: i64,
        by: &str,
        comment: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AlertChange>> {
        self.tx("ack_alert", async |tx| {
            // The UPDATE locks the row: a replica storing an event for it waits, then sees
            // the acknowledgement.
            let n = tx
                .execute(
                    "UPDATE alerts SET ack_by = $2, ack_comment = $3, ack_ms = $4, updated_ms = $4 WHERE alert_id = $1",
                    &[&alert_id, &by, &comment, &now_ms],
                )
                .await?;
            if n == 0 {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO alert_acks (alert_id, by_name, comment, at_ms) VALUES ($1, $2, $3, $4)",
                &[&alert_id, &by, &comment, &now_ms],
            )
            .await?;
            changed(tx, alert_id, Change::Acked, now_ms).await
        })
    }

    fn link_alert_session(
        &self,
        alert_id: i64,
        session_id: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AlertChange>> {
        self.tx("link_alert_session", async |tx| {
            let n = tx
                .execute(
                    "UPDATE alerts SET updated_ms = $2, skip_reason = NULL, skip_ms = NULL WHERE alert_id = $1",
                    &[&alert_id, &now_ms],
                )
                .await?;
            if n == 0 {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO alert_diagnoses (alert_id, session_id, created_ms) VALUES ($1, $2, $3)",
                &[&alert_id, &session_id, &now_ms],
            )
            .await?;
            changed(tx, alert_id, Change::Diagnosed, now_ms).await
        })
    }

    fn note_diagnosis_skipped(
        &self,
        alert_id: i64,
        reason: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AlertChange>> {
        self.tx("note_diagnosis_skipped", async |tx| {
            let n = tx
                .execute(
                    "UPDATE alerts SET skip_reason = $2, skip_ms = $3, updated_ms = $3 WHERE alert_id = $1",
                    &[&alert_id, &reason, &now_ms],
                )
                .await?;
            if n == 0 {
                return Ok(None);
            }
            changed(tx, alert_id, Change::Skipped, now_ms).await
        })
    }

    fn count_alert_events(&self) -> StoreResult<u64> {
        self.run("count_alert_events", async |c| {
            let n: i64 = c
                .query_one("SELECT COUNT(*) FROM alert_events", &[])
                .await?
                .try_get(0)?;
            Ok(n.max(0) as u64)
        })
    }

    fn count_firing_alerts(&self) -> StoreResult<u64> {
        self.run("count_firing_alerts", async |c| {
            let n: i64 = c
                .query_one("SELECT COUNT(*) FROM alerts WHERE state = 'firing'", &[])
                .await?
                .try_get(0)?;
            Ok(n.max(0) as u64)
        })
    }

    fn prune_alerts(&self, before_ms: i64) -> StoreResult<usize> {
        self.tx("prune_alerts", async |tx| {
            let events = tx
                .execute(
                    "DELETE FROM alert_events WHERE received_ms < $1",
                    &[&before_ms],
                )
                .await?;
            const OLD: &str =
                "SELECT alert_id FROM alerts WHERE state = 'resolved' AND updated_ms < $1";
            for table in ["alert_events", "alert_acks", "alert_diagnoses"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE alert_id IN ({OLD})"),
                    &[&before_ms],
                )
                .await?;
            }
            let alerts = tx
                .execute(
                    "DELETE FROM alerts WHERE state = 'resolved' AND updated_ms < $1",
                    &[&before_ms],
                )
                .await?;
            tx.execute("DELETE FROM silences WHERE ends_ms < $1", &[&before_ms])
                .await?;
            Ok((events + alerts) as usize)
        })
    }

    fn create_silence(
        &self,
        matchers: &[Matcher],
        comment: &str,
        created_by: &str,
        starts_ms: i64,
        ends_ms: i64,
    ) -> StoreResult<Silence> {
        let text = to_json(&matchers);
        let id: i64 = self.run("create_silence", async |c| {
            c.query_one(
                "INSERT INTO silences (matchers, comment, created_by, created_ms, starts_ms, ends_ms) VALUES ($1, $2, $3, $4, $4, $5) RETURNING silence_id",
                &[&text, &comment, &created_by, &starts_ms, &ends_ms],
            )
            .await?
            .try_get(0)
        })?;
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
        self.run("list_silences", async |c| {
            let r = c
                .query(
                    &format!(
                        "SELECT {SILENCE_COLUMNS} FROM silences WHERE $1::boolean OR (starts_ms <= $2 AND ends_ms > $2) ORDER BY silence_id DESC LIMIT 1000"
                    ),
                    &[&include_expired, &now_ms],
                )
                .await?;
            rows(r, |r| silence_from_row(r).map(|s| s.with_state(now_ms)))
        })
    }

    fn expire_silence(
        &self,
        silence_id: i64,
        by: &str,
        now_ms: i64,
    ) -> StoreResult<Option<Silence>> {
        self.run("expire_silence", async |c| {
            c.execute(
                "UPDATE silences SET ends_ms = $2, expired_by = $3 WHERE silence_id = $1 AND ends_ms > $2",
                &[&silence_id, &now_ms, &by],
            )
            .await?;
            c.query_opt(
                &format!("SELECT {SILENCE_COLUMNS} FROM silences WHERE silence_id = $1"),
                &[&silence_id],
            )
            .await?
            .as_ref()
            .map(|r| silence_from_row(r).map(|s| s.with_state(now_ms)))
            .transpose()
        })
    }

    fn alerts_matching(&self, silence: &Silence, now_ms: i64) -> StoreResult<Vec<Alert>> {
        self.run("alerts_matching", async |c| {
            let firing = c
                .query(
                    &format!(
                        "SELECT {ALERT_COLUMNS} FROM alerts WHERE state = 'firing' ORDER BY last_ms DESC"
                    ),
                    &[],
                )
                .await?;
            let mut matched = Vec::new();
            for r in &firing {
                let a = alert_from_row(r)?;
                if silence.matches(&a.match_labels()) {
                    matched.push(a);
                    if matched.len() >= 5000 {
                        break;
                    }
                }
            }
            let silences = active_silences(c, now_ms).await?;
            finish_views(c, &mut matched, &silences, now_ms).await?;
            Ok(matched)
        })
    }

    fn silences_ended(&self, after_ms: i64, upto_ms: i64) -> StoreResult<Vec<Silence>> {
        self.run("silences_ended", async |c| {
            let r = c
                .query(
                    &format!(
                        "SELECT {SILENCE_COLUMNS} FROM silences WHERE ends_ms > $1 AND ends_ms <= $2 AND expired_by IS NULL ORDER BY ends_ms LIMIT 1000"
                    ),
                    &[&after_ms, &upto_ms],
                )
                .await?;
            rows(r, |r| silence_from_row(r).map(|s| s.with_state(upto_ms)))
        })
    }

    fn find_agent_by_host(&self, host: &str) -> StoreResult<Option<AgentMatch>> {
        let host = host.trim();
        if host.is_empty() {
            return Ok(None);
        }
        self.run("find_agent_by_host", async |c| {
            if let Some(m) = agent_match(c, "lower(hostname) = lower($1)", host, "hostname").await?
            {
                return Ok(Some(m));
            }
            if let Some(m) = agent_match(c, "lower(ip) = lower($1)", host, "ip").await? {
                return Ok(Some(m));
            }
            let ip = host.parse::<std::net::IpAddr>().ok();
            if let Some(canonical) = ip.map(|ip| ip.to_string()).filter(|c| c != host)
                && let Some(m) = agent_match(c, "lower(ip) = lower($1)", &canonical, "ip").await?
            {
                return Ok(Some(m));
            }
            if ip.is_none() {
                if let Some((short, _)) = host.split_once('.')
                    && let Some(m) =
                        agent_match(c, "lower(hostname) = lower($1)", short, "short hostname")
                            .await?
                {
                    return Ok(Some(m));
                }
                if !host.contains('.') {
                    let escaped = host
                        .replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_");
                    let pattern = format!("{escaped}.%");
                    if let Some(m) = agent_match(
                        c,
                        "lower(hostname) LIKE lower($1) ESCAPE '\\'",
                        &pattern,
                        "short hostname",
                    )
                    .await?
                    {
                        return Ok(Some(m));
                    }
                }
            }
            Ok(None)
        })
    }

    fn find_agent(&self, id_or_hostname: &str) -> StoreResult<Option<AgentMatch>> {
        self.run("find_agent", async |c| {
            if let Some(m) = agent_match(c, "agent_id = $1", id_or_hostname, "agent id").await? {
                return Ok(Some(m));
            }
            agent_match(c, "lower(hostname) = lower($1)", id_or_hostname, "hostname").await
        })
    }

    fn insert_session(&self, s: &SessionRecord) -> StoreResult<()> {
        let created = parse_rfc3339_ms(&s.created_at).unwrap_or_else(now_ms);
        let params = to_json(&s.params);
        self.run("insert_session", async |c| {
            c.execute(
                &format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                ),
                &[
                    &s.session_id,
                    &s.agent_id,
                    &s.mode,
                    &s.title,
                    &s.policy,
                    &s.state,
                    &created,
                    &s.created_by,
                    &i64::from(s.proto),
                    &params,
                    &big(s.last_seq),
                ],
            )
            .await?;
            Ok(())
        })
    }

    fn update_session(&self, session_id: &str, state: &str, last_seq: u64) -> StoreResult<()> {
        self.run("update_session", async |c| {
            c.execute(
                "UPDATE sessions SET state = $2, last_seq = GREATEST(last_seq, $3) WHERE session_id = $1",
                &[&session_id, &state, &big(last_seq)],
            )
            .await?;
            Ok(())
        })
    }

    fn list_sessions(&self, agent_id: Option<&str>) -> StoreResult<Vec<SessionRecord>> {
        self.run("list_sessions", async |c| {
            let r = c
                .query(
                    &format!(
                        "SELECT {SESSION_COLUMNS} FROM sessions WHERE $1::text IS NULL OR agent_id = $1 ORDER BY created_at, session_id COLLATE \"C\""
                    ),
                    &[&agent_id],
                )
                .await?;
            rows(r, session_from_row)
        })
    }

    fn get_session(&self, session_id: &str) -> StoreResult<Option<SessionRecord>> {
        self.run("get_session", async |c| {
            c.query_opt(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"),
                &[&session_id],
            )
            .await?
            .as_ref()
            .map(session_from_row)
            .transpose()
        })
    }

    fn append_events(&self, session_id: &str, events: &[(u64, String)]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let last = events.iter().map(|(s, _)| *s).max().unwrap_or(0);
        self.tx("append_events", async |tx| {
            let insert = tx
                .prepare(
                    "INSERT INTO session_events (session_id, seq, frame) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .await?;
            for (seq, frame) in events {
                tx.execute(&insert, &[&session_id, &big(*seq), frame]).await?;
            }
            tx.execute(
                "UPDATE sessions SET last_seq = GREATEST(last_seq, $2) WHERE session_id = $1",
                &[&session_id, &big(last)],
            )
            .await?;
            Ok(())
        })
    }

    fn read_events(
        &self,
        session_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, String)>> {
        self.run("read_events", async |c| {
            let r = c
                .query(
                    "SELECT seq, frame FROM session_events WHERE session_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq LIMIT $4",
                    &[&session_id, &big(from), &big(to), &(limit as i64)],
                )
                .await?;
            rows(r, |r| {
                Ok((r.try_get::<_, i64>(0)?.max(0) as u64, r.try_get(1)?))
            })
        })
    }

    fn prune_sessions(&self, before_ms: i64) -> StoreResult<usize> {
        self.tx("prune_sessions", async |tx| {
            tx.execute(
                "DELETE FROM session_events WHERE session_id IN (SELECT session_id FROM sessions WHERE created_at < $1 AND state = 'closed')",
                &[&before_ms],
            )
            .await?;
            let n = tx
                .execute(
                    "DELETE FROM sessions WHERE created_at < $1 AND state = 'closed'",
                    &[&before_ms],
                )
                .await?;
            Ok(n as usize)
        })
    }

    fn session_tokens_since(&self, created_by: &str, since_ms: i64) -> StoreResult<u64> {
        // As in SQLite: event times are RFC 3339 UTC text (compared bytewise, which sorts as
        // time does); sessions created over a day before `since_ms` are left out. Frames are
        // the hub's own JSON; only a number counts.
        let since_text = rfc3339_ms(since_ms);
        let created_after = since_ms.saturating_sub(86_400_000);
        self.run("session_tokens_since", async |c| {
            let n: i64 = c
                .query_one(
                    "SELECT COALESCE(SUM(CASE WHEN jsonb_typeof(f.j #> '{usage,total_tokens}') = 'number'
                                              THEN (f.j #>> '{usage,total_tokens}')::numeric END), 0)::bigint
                     FROM session_events e JOIN sessions s ON s.session_id = e.session_id
                     CROSS JOIN LATERAL (SELECT e.frame::jsonb AS j) f
                     WHERE s.created_by = $1 AND s.created_at >= $2
                       AND f.j ->> 'event' = 'turn_ended'
                       AND (f.j ->> 'ts') COLLATE \"C\" >= $3",
                    &[&created_by, &created_after, &since_text],
                )
                .await?
                .try_get(0)?;
            Ok(n.max(0) as u64)
        })
    }

    fn insert_report(
        &self,
        r: &ReportRow,
        now_ms: i64,
    ) -> StoreResult<(ReportRow, Option<AlertChange>)> {
        let created = parse_rfc3339_ms(&r.created_at).unwrap_or(now_ms);
        let (report_id, alert_id, change) = self.tx("insert_report", async |tx| {
            let report_id: i64 = tx
                .query_one(
                    "INSERT INTO reports (agent_id, alert_key, session_id, report, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    &[&r.agent_id, &r.alert_key, &r.session_id, &r.report, &created],
                )
                .await?
                .try_get(0)?;
            let alert_id = link_report_tx(
                tx,
                report_id,
                &r.agent_id,
                &r.alert_key,
                r.session_id.as_deref(),
                created,
            )
            .await?;
            let change = match alert_id {
                Some(id) => {
                    tx.execute(
                        "UPDATE alerts SET updated_ms = $2, skip_reason = NULL, skip_ms = NULL WHERE alert_id = $1",
                        &[&id, &now_ms],
                    )
                    .await?;
                    changed(tx, id, Change::Diagnosed, now_ms).await?
                }
                None => None,
            };
            Ok((report_id, alert_id, change))
        })?;
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
        self.run("list_reports", async |c| {
            let r = c
                .query(
                    "SELECT id, agent_id, alert_key, alert_id, session_id, report, created_at FROM reports
                     WHERE ($1::text IS NULL OR agent_id = $1) AND ($2::bigint IS NULL OR alert_id = $2) ORDER BY id DESC LIMIT $3",
                    &[&agent_id, &alert_id, &(limit as i64)],
                )
                .await?;
            rows(r, |r| {
                Ok(ReportRow {
                    report_id: r.try_get(0)?,
                    agent_id: r.try_get(1)?,
                    alert_key: r.try_get(2)?,
                    alert_id: r.try_get(3)?,
                    session_id: r.try_get(4)?,
                    report: r.try_get(5)?,
                    created_at: rfc3339_ms(r.try_get(6)?),
                })
            })
        })
    }
}
