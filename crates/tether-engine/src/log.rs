//! The event log: every session event, stored with its `seq` before it is broadcast, plus one
//! row per session so that sessions survive a restart.
//!
//! One writer thread owns the write connection and commits whatever has queued up in one
//! transaction (group commit), so a fast event stream costs one commit per batch, not per event.
//! Reads go through a small pool of read connections (WAL lets them run beside the writer).
//!
//! Inputs queued behind a session's running turn are rows of their own (`queued_inputs`), so
//! queuing one writes one small row, whatever the length of the queue.
//!
//! Checkpoints run on a thread and connection of their own, when the log is quiet. SQLite's
//! automatic checkpoint runs inside the commit that crosses its mark (1000 pages) and syncs
//! the WAL and the database there, a few milliseconds on a disk; every event waits for its
//! commit before it is broadcast, so that sync was the p99 of a streaming turn
//! (`tether-bench overhead`: 2.6 ms, against 0.13 ms with the log on tmpfs). Checkpointing
//! from another thread while the writer streams does not fix it (the syncs still stall the
//! writer's WAL writes: p99 1.3–2 ms measured, worse for bigger checkpoints), so the
//! checkpointer copies the WAL into the database (PASSIVE: it never blocks the writer) once
//! the log has been quiet for [`CHECKPOINT_WHEN_QUIET`], and on close. A log that is never
//! quiet is checkpointed anyway after [`CHECKPOINT_EVERY_COMMITS`] commits, and the
//! writer's own automatic checkpoint stays as a last cap ([`WAL_CAP_PAGES`]).

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tether_proto::{Mode, Policy, Seq, SessionId, SessionState};
use tokio::sync::oneshot;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event log: {0}")]
pub struct LogError(pub String);

impl From<rusqlite::Error> for LogError {
    fn from(e: rusqlite::Error) -> Self {
        LogError(e.to_string())
    }
}

/// One session's durable row. `data` is owned by the multiplexer (JSON it alone reads).
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRow {
    pub session_id: SessionId,
    pub mode: Mode,
    pub title: Option<String>,
    pub policy: Policy,
    pub created_at: String,
    pub state: SessionState,
    pub last_seq: Seq,
    /// Oldest event still held (`last_seq + 1` when none).
    pub first_seq: Seq,
    pub data: String,
    /// The session's queued inputs, in order.
    pub queued: Vec<QueuedRow>,
}

/// One queued input: its place in the session's queue and the multiplexer's JSON for it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedRow {
    /// Increasing in queue order within a session.
    pub ord: u64,
    pub data: String,
}

/// A change to a session's queued inputs, applied in order within its job.
#[derive(Clone, Debug, PartialEq)]
pub enum QueueChange {
    Add(QueuedRow),
    Remove { ord: u64 },
    Clear,
}

/// One stored event: its sequence number and the exact frame clients receive.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub seq: Seq,
    pub frame: Bytes,
}

/// One atomic write for one session.
#[derive(Clone, Debug, Default)]
pub struct AppendJob {
    pub session_id: SessionId,
    pub events: Vec<StoredEvent>,
    /// Replaces the session's row when present.
    pub row: Option<SessionRow>,
    /// Deletes this session's events with `seq <= prune_through` (retention).
    pub prune_through: Option<Seq>,
    /// Changes to the session's queued inputs (after the row).
    pub queue: Vec<QueueChange>,
    /// Deletes the session: its row, events and queued inputs (after everything else).
    pub delete: bool,
}

type Reply = oneshot::Sender<Result<(), LogError>>;

/// Commits after which the checkpointer copies the WAL into the database even if the log is
/// never quiet (a small commit writes about two pages: a WAL of some 64 MiB at most).
pub const CHECKPOINT_EVERY_COMMITS: u64 = 8192;

/// How long after the last commit the checkpointer copies the rest of the WAL.
pub const CHECKPOINT_WHEN_QUIET: Duration = Duration::from_millis(250);

/// WAL size (pages) at which SQLite checkpoints inside a commit anyway: 128 MiB at 4 KiB
/// pages, reached only if the checkpointer cannot keep up.
pub const WAL_CAP_PAGES: i64 = 32768;

/// The writer connection's page cache, in KiB (`PRAGMA cache_size` takes it negated).
const WRITER_CACHE_KIB: i64 = -16 * 1024;

/// The WAL is truncated to this after a checkpoint (it is otherwise kept at its largest).
const WAL_KEEP_BYTES: i64 = 4 * 1024 * 1024;

/// Handle to the event log. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<(AppendJob, Reply)>>>,
    readers: Mutex<Vec<Connection>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpoint_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Checkpoints the checkpointer has run.
    checkpoints: Arc<AtomicU64>,
    /// What the writer reports back.
    stats: Arc<WriterStats>,
}

#[derive(Default)]
struct WriterStats {
    /// Session rows written (a diagnostic: what an op costs the log).
    row_writes: AtomicU64,
    /// Retention deletes committed (jobs with `prune_through`): each rebalances the B-tree,
    /// so the multiplexer prunes in chunks, not on every flush.
    prunes: AtomicU64,
    /// The error of the last write, if it failed.
    failure: Mutex<Option<String>>,
}

impl WriterStats {
    fn committed(&self, job: &AppendJob) {
        if job.row.is_some() {
            self.row_writes.fetch_add(1, Ordering::Relaxed);
        }
        if job.prune_through.is_some() {
            self.prunes.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn outcome(&self, result: &Result<(), LogError>) {
        if let Ok(mut f) = self.failure.lock() {
            *f = result.as_ref().err().map(|e| e.0.clone());
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    mode       TEXT NOT NULL,
    title      TEXT,
    policy     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    state      TEXT NOT NULL,
    last_seq   INTEGER NOT NULL,
    first_seq  INTEGER NOT NULL,
    data       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    frame      TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queued_inputs (
    session_id TEXT NOT NULL,
    ord        INTEGER NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (session_id, ord)
) WITHOUT ROWID;
PRAGMA user_version = 2;
";

fn open_connection(path: &Path) -> Result<Connection, LogError> {
    // Transcripts and tool output: the owner's only (the -wal/-shm files take this mode).
    match tether_host::perms::create_private(path) {
        Ok(Some(w)) => tracing::warn!("{w}"),
        Ok(None) => {}
        Err(e) => return Err(LogError(format!("cannot create {}: {e}", path.display()))),
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL: readers never block the writer. NORMAL: a commit survives a crash of the agent
    // (not necessarily a power cut), at a fraction of the cost of FULL.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl EventLog {
    /// Opens (creating if needed) the log at `path`.
    pub fn open(path: &Path) -> Result<EventLog, LogError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| LogError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = open_connection(path)
            .map_err(|e| LogError(format!("cannot open {}: {}", path.display(), e.0)))?;
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CAP_PAGES)?;
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)?;
        // The writer's page cache (default 2 MiB) holds a few sessions' retained events
        // (10 000 events of some 200 bytes each is about 2 MiB): pages an insert or a prune
        // touches are not read back from the WAL.
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        let checkpoint_conn = open_connection(path)
            .map_err(|e| LogError(format!("cannot open {}: {}", path.display(), e.0)))?;
        let checkpoints = Arc::new(AtomicU64::new(0));
        let counter = checkpoints.clone();
        let (committed_tx, committed_rx) = mpsc::channel::<()>();
        let checkpoint_thread = std::thread::Builder::new()
            .name("tether-log-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpoint_conn, &committed_rx, &counter))
            .map_err(|e| LogError(format!("cannot start the log checkpointer: {e}")))?;
        let (tx, rx) = mpsc::channel::<(AppendJob, Reply)>();
        let stats = Arc::new(WriterStats::default());
        let writer_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("tether-event-log".into())
            .spawn(move || writer_loop(conn, rx, committed_tx, &writer_stats))
            .map_err(|e| LogError(format!("cannot start the log writer: {e}")))?;
        Ok(EventLog {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                writer_thread: Mutex::new(Some(thread)),
                checkpoint_thread: Mutex::new(Some(checkpoint_thread)),
                checkpoints,
                stats,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many checkpoints have run (after every so many commits, when quiet, on close).
    pub fn checkpoints(&self) -> u64 {
        self.inner.checkpoints.load(Ordering::Relaxed)
    }

    /// How many session rows have been committed (each rewrites the whole row).
    pub fn row_writes(&self) -> u64 {
        self.inner.stats.row_writes.load(Ordering::Relaxed)
    }

    /// How many retention deletes (`prune_through`) have been committed.
    pub fn prunes(&self) -> u64 {
        self.inner.stats.prunes.load(Ordering::Relaxed)
    }

    /// The error of the last write when it failed (`None` once a write succeeds again).
    pub fn last_failure(&self) -> Option<String> {
        self.inner.stats.failure.lock().ok()?.clone()
    }

    /// Commits `job`. Resolves once the data is in the database.
    pub async fn append(&self, job: AppendJob) -> Result<(), LogError> {
        let (tx, rx) = oneshot::channel();
        {
            let guard = self
                .inner
                .writer
                .lock()
                .map_err(|_| LogError("writer lock poisoned".into()))?;
            let Some(writer) = guard.as_ref() else {
                return Err(LogError("the event log is closed".into()));
            };
            writer
                .send((job, tx))
                .map_err(|_| LogError("the log writer has stopped".into()))?;
        }
        rx.await
            .map_err(|_| LogError("the log writer has stopped".into()))?
    }

    /// Stops accepting writes and waits for the writer to commit what it holds.
    pub fn close(&self) {
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        let handle = self
            .inner
            .writer_thread
            .lock()
            .ok()
            .and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        // The writer's end of the commit signals is gone: the checkpointer runs its last
        // checkpoint and stops.
        let handle = self
            .inner
            .checkpoint_thread
            .lock()
            .ok()
            .and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let conn = {
            let mut pool = self
                .inner
                .readers
                .lock()
                .map_err(|_| LogError("reader pool poisoned".into()))?;
            pool.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => open_connection(&self.inner.path)?,
        };
        let result = f(&conn);
        if let Ok(mut pool) = self.inner.readers.lock()
            && pool.len() < 4
        {
            pool.push(conn);
        }
        result
    }

    /// Events of `session_id` with `from <= seq <= to`, in order, at most `limit` of them.
    pub fn read_range_blocking(
        &self,
        session_id: &SessionId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, LogError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, frame FROM events WHERE session_id = ?1 AND seq >= ?2 AND seq <= ?3 \
                 ORDER BY seq LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![session_id.as_str(), from as i64, to as i64, limit as i64],
                |row| {
                    let seq: i64 = row.get(0)?;
                    let frame: String = row.get(1)?;
                    Ok(StoredEvent {
                        seq: seq as Seq,
                        frame: Bytes::from(frame),
                    })
                },
            )?;
            rows.collect::<Result<Vec<_>, _>>().map_err(LogError::from)
        })
    }

    /// As [`read_range_blocking`](Self::read_range_blocking), off the async workers.
    pub async fn read_range(
        &self,
        session_id: &SessionId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let log = self.clone();
        let session_id = session_id.clone();
        tokio::task::spawn_blocking(move || log.read_range_blocking(&session_id, from, to, limit))
            .await
            .map_err(|e| LogError(format!("read task failed: {e}")))?
    }

    /// Every session row, oldest first.
    pub fn load_sessions(&self) -> Result<Vec<SessionRow>, LogError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare(
                // The row is rewritten only when durable state changes, so the seq bounds come
                // from the events themselves.
                "SELECT s.session_id, s.mode, s.title, s.policy, s.created_at, s.state, \
                        MAX(s.last_seq, COALESCE((SELECT MAX(seq) FROM events e WHERE e.session_id = s.session_id), 0)), \
                        (SELECT MIN(seq) FROM events e WHERE e.session_id = s.session_id), s.data \
                 FROM sessions s ORDER BY s.created_at, s.session_id",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, i64>(6)?,
                    row.get::<_, Option<i64>>(7)?,
                    row.get::<_, String>(8)?,
                ))
            })?;
            let mut queued = load_queued(conn)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, mode, title, policy, created_at, state, last, first, data) = row?;
                let bad = |what: &str, v: &str| LogError(format!("session {id}: bad {what} `{v}`"));
                out.push(SessionRow {
                    mode: Mode::parse(&mode).ok_or_else(|| bad("mode", &mode))?,
                    policy: Policy::parse(&policy).ok_or_else(|| bad("policy", &policy))?,
                    state: SessionState::parse(&state).ok_or_else(|| bad("state", &state))?,
                    title,
                    created_at,
                    last_seq: last as Seq,
                    first_seq: first.map_or(last as Seq + 1, |f| f as Seq),
                    data,
                    queued: queued.remove(&id).unwrap_or_default(),
                    session_id: SessionId(id),
                });
            }
            Ok(out)
        })
    }

    /// The number of events held for a session (tests and diagnostics).
    pub fn count_events(&self, session_id: &SessionId) -> Result<u64, LogError> {
        self.with_reader(|conn| {
            let n: Option<i64> = conn
                .query_row(
                    "SELECT COUNT(*) FROM events WHERE session_id = ?1",
                    [session_id.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(n.unwrap_or(0) as u64)
        })
    }
}

/// Every queued input, by session, in queue order.
fn load_queued(conn: &Connection) -> Result<HashMap<String, Vec<QueuedRow>>, LogError> {
    let mut stmt =
        conn.prepare("SELECT session_id, ord, data FROM queued_inputs ORDER BY session_id, ord")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    let mut out: HashMap<String, Vec<QueuedRow>> = HashMap::new();
    for row in rows {
        let (id, ord, data) = row?;
        out.entry(id).or_default().push(QueuedRow {
            ord: ord as u64,
            data,
        });
    }
    Ok(out)
}

fn apply(conn: &Connection, job: &AppendJob) -> Result<(), rusqlite::Error> {
    if !job.events.is_empty() {
        let mut insert =
            conn.prepare_cached("INSERT INTO events (session_id, seq, frame) VALUES (?1, ?2, ?3)")?;
        for e in &job.events {
            // Frames are JSON produced by serde: always UTF-8.
            let text = std::str::from_utf8(&e.frame).unwrap_or("");
            insert.execute(params![job.session_id.as_str(), e.seq as i64, text])?;
        }
    }
    if let Some(row) = &job.row {
        conn.prepare_cached(
            "INSERT INTO sessions (session_id, mode, title, policy, created_at, state, last_seq, first_seq, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT(session_id) DO UPDATE SET
               mode = excluded.mode, title = excluded.title, policy = excluded.policy,
               state = excluded.state, last_seq = excluded.last_seq,
               first_seq = excluded.first_seq, data = excluded.data",
        )?
        .execute(params![
            row.session_id.as_str(),
            row.mode.as_str(),
            row.title,
            row.policy.as_str(),
            row.created_at,
            row.state.as_str(),
            row.last_seq as i64,
            row.first_seq as i64,
            row.data,
        ])?;
    }
    if let Some(upto) = job.prune_through {
        conn.prepare_cached("DELETE FROM events WHERE session_id = ?1 AND seq <= ?2")?
            .execute(params![job.session_id.as_str(), upto as i64])?;
    }
    let id = job.session_id.as_str();
    for change in &job.queue {
        match change {
            QueueChange::Add(q) => conn
                .prepare_cached(
                    "INSERT INTO queued_inputs (session_id, ord, data) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![id, q.ord as i64, q.data])?,
            QueueChange::Remove { ord } => conn
                .prepare_cached("DELETE FROM queued_inputs WHERE session_id = ?1 AND ord = ?2")?
                .execute(params![id, *ord as i64])?,
            QueueChange::Clear => conn
                .prepare_cached("DELETE FROM queued_inputs WHERE session_id = ?1")?
                .execute([id])?,
        };
    }
    if job.delete {
        for table in ["events", "queued_inputs", "sessions"] {
            conn.prepare_cached(&format!("DELETE FROM {table} WHERE session_id = ?1"))?
                .execute([id])?;
        }
    }
    Ok(())
}

fn commit_all(conn: &mut Connection, jobs: &[(AppendJob, Reply)]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    for (job, _) in jobs {
        apply(&tx, job)?;
    }
    tx.commit()
}

/// Copies the WAL into the database without waiting for the writer or readers (PASSIVE).
fn checkpoint(conn: &Connection, count: &AtomicU64) {
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        Ok(()) => {
            count.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, "event log checkpoint failed"),
    }
}

/// Receives one signal per commit from the writer; checkpoints after
/// [`CHECKPOINT_EVERY_COMMITS`] of them, or [`CHECKPOINT_WHEN_QUIET`] after the last, and
/// once more when the writer stops. Sleeps while there is nothing to copy.
fn checkpoint_loop(conn: &Connection, committed: &mpsc::Receiver<()>, count: &AtomicU64) {
    let mut pending: u64 = 0;
    loop {
        let signal = if pending == 0 {
            committed
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            committed.recv_timeout(CHECKPOINT_WHEN_QUIET)
        };
        match signal {
            Ok(()) => {
                pending += 1;
                if pending >= CHECKPOINT_EVERY_COMMITS {
                    checkpoint(conn, count);
                    pending = 0;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                checkpoint(conn, count);
                pending = 0;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if pending > 0 {
        checkpoint(conn, count);
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<(AppendJob, Reply)>,
    committed: mpsc::Sender<()>,
    stats: &WriterStats,
) {
    const MAX_BATCH: usize = 256;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match commit_all(&mut conn, &batch) {
            Ok(()) => {
                for (job, _) in &batch {
                    stats.committed(job);
                }
                stats.outcome(&Ok(()));
                for (_, reply) in batch {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(_) => {
                // One bad job must not fail its neighbours: retry each on its own.
                for (job, reply) in batch {
                    let result = conn
                        .transaction()
                        .and_then(|tx| apply(&tx, &job).and_then(|()| tx.commit()))
                        .map_err(LogError::from);
                    stats.outcome(&result);
                    match &result {
                        Ok(()) => stats.committed(&job),
                        Err(e) => {
                            tracing::error!(session = %job.session_id, error = %e, "event log write failed");
                        }
                    }
                    let _ = reply.send(result);
                }
            }
        }
        // After the replies: the checkpointer's bookkeeping is not on the event's path.
        let _ = committed.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, last: Seq) -> SessionRow {
        SessionRow {
            session_id: SessionId(id.into()),
            mode: Mode::Chat,
            title: Some("t".into()),
            policy: Policy::Human,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            state: SessionState::Idle,
            last_seq: last,
            first_seq: 1,
            data: "{}".into(),
            queued: vec![],
        }
    }

    fn ev(seq: Seq) -> StoredEvent {
        StoredEvent {
            seq,
            frame: Bytes::from(format!("{{\"seq\":{seq}}}")),
        }
    }

    #[tokio::test]
    async fn appends_reads_prunes_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.db");
        let log = EventLog::open(&path).expect("open");
        let sid = SessionId("s1".into());
        log.append(AppendJob {
            session_id: sid.clone(),
            events: (1..=10).map(ev).collect(),
            row: Some(row("s1", 10)),
            ..Default::default()
        })
        .await
        .expect("append");
        let got = log.read_range(&sid, 3, 5, 100).await.expect("read");
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(&got[0].frame[..], b"{\"seq\":3}");

        log.append(AppendJob {
            session_id: sid.clone(),
            prune_through: Some(6),
            ..Default::default()
        })
        .await
        .expect("prune");
        assert_eq!(log.count_events(&sid).expect("count"), 4);

        // A duplicate seq is refused, and does not take its batch-mates down with it.
        let dup = log.append(AppendJob {
            session_id: sid.clone(),
            events: vec![ev(10)],
            ..Default::default()
        });
        let fine = log.append(AppendJob {
            session_id: sid.clone(),
            events: vec![ev(11)],
            ..Default::default()
        });
        let (dup, fine) = tokio::join!(dup, fine);
        assert!(dup.is_err());
        assert!(fine.is_ok());
        log.close();

        let log = EventLog::open(&path).expect("reopen");
        let sessions = log.load_sessions().expect("load");
        // Seq bounds come from the events held, not from the (older) row.
        let mut expected = row("s1", 11);
        expected.first_seq = 7;
        assert_eq!(sessions, vec![expected]);
        let all = log.read_range(&sid, 0, 100, 100).await.expect("read");
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![7, 8, 9, 10, 11]
        );
    }

    /// Queued inputs are rows of their own, changed in order within a job; deleting a
    /// session removes its row, events and queue.
    #[tokio::test]
    async fn queued_inputs_and_deletion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(&dir.path().join("events.db")).expect("open");
        let sid = SessionId("s1".into());
        let add = |ord: u64| {
            QueueChange::Add(QueuedRow {
                ord,
                data: format!("q{ord}"),
            })
        };
        log.append(AppendJob {
            session_id: sid.clone(),
            events: vec![ev(1)],
            row: Some(row("s1", 1)),
            queue: vec![add(1), add(2), add(3), QueueChange::Remove { ord: 2 }],
            ..Default::default()
        })
        .await
        .expect("append");
        let rows_written = log.row_writes();
        // A queue change alone does not touch the session's row.
        log.append(AppendJob {
            session_id: sid.clone(),
            queue: vec![add(4)],
            ..Default::default()
        })
        .await
        .expect("enqueue");
        assert_eq!(log.row_writes(), rows_written);
        let ords = |log: &EventLog| -> Vec<u64> {
            let rows = log.load_sessions().expect("load");
            rows[0].queued.iter().map(|q| q.ord).collect()
        };
        assert_eq!(ords(&log), vec![1, 3, 4]);
        assert_eq!(log.load_sessions().expect("load")[0].queued[0].data, "q1");
        log.append(AppendJob {
            session_id: sid.clone(),
            queue: vec![QueueChange::Clear, add(5)],
            ..Default::default()
        })
        .await
        .expect("clear");
        assert_eq!(ords(&log), vec![5]);
        log.append(AppendJob {
            session_id: sid.clone(),
            delete: true,
            ..Default::default()
        })
        .await
        .expect("delete");
        assert!(log.load_sessions().expect("load").is_empty());
        assert_eq!(log.count_events(&sid).expect("count"), 0);
    }

    /// The checkpointer runs once the log is quiet, and again on close when commits came
    /// since; the data is intact either way.
    #[tokio::test]
    async fn checkpoints_when_quiet_and_on_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.db");
        let log = EventLog::open(&path).expect("open");
        let sid = SessionId("s1".into());
        assert_eq!(log.checkpoints(), 0, "nothing to checkpoint yet");
        for seq in 1..=20 {
            log.append(AppendJob {
                session_id: sid.clone(),
                events: vec![ev(seq)],
                row: Some(row("s1", seq)),
                ..Default::default()
            })
            .await
            .expect("append");
        }
        // The writer thread waits on a real clock, so poll (bounded) rather than pause time.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while log.checkpoints() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint when quiet"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after_quiet = log.checkpoints();

        log.append(AppendJob {
            session_id: sid.clone(),
            events: vec![ev(21)],
            ..Default::default()
        })
        .await
        .expect("append");
        log.close();
        assert!(log.checkpoints() > after_quiet, "close did not checkpoint");

        let log = EventLog::open(&path).expect("reopen");
        let all = log.read_range(&sid, 0, 100, 100).await.expect("read");
        assert_eq!(all.len(), 21);
    }
}
