//! The alert spool: alert events wait here, in SQLite, until the hub has them.
//!
//! Each event gets a per-agent `seq` (AUTOINCREMENT, so a number is never reused, even after
//! its row is deleted or the agent restarts). Version 2 deletes events when the hub
//! acknowledges them; version 1 when they are written. The spool is bounded: past
//! `max_events` the oldest are dropped and counted.
//!
//! [`AlertSink::send`] never blocks and works while the link is down: it hands the event to
//! the spool's writer thread, which commits whatever has queued in one transaction.

use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use tether_proto::link::AlertEvent;
use tokio::sync::Notify;

/// Default bound of the spool.
pub const DEFAULT_SPOOL_MAX: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
#[error("alert spool: {0}")]
pub struct SpoolError(pub String);

impl From<rusqlite::Error> for SpoolError {
    fn from(e: rusqlite::Error) -> Self {
        SpoolError(e.to_string())
    }
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
    max: u64,
    /// Rows currently held (kept in memory: COUNT(*) is a scan in SQLite).
    len: AtomicU64,
    /// Dropped by overflow since this process started.
    dropped: AtomicU64,
    /// Every event with `seq <= acked` has left the spool for good.
    acked: AtomicU64,
    /// Signalled after every commit of new events.
    pending: Notify,
}

/// The spool. Cheap to clone.
#[derive(Clone)]
pub struct AlertSpool {
    inner: Arc<Inner>,
}

impl AlertSpool {
    pub fn open(path: &Path, max_events: u64) -> Result<AlertSpool, SpoolError> {
        if let Some(dir) = path.parent() {
            tether_host::perms::private_dir(dir)
                .map_err(|e| SpoolError(format!("cannot create {}: {e}", dir.display())))?;
        }
        match tether_host::perms::create_private(path) {
            Ok(Some(w)) => tracing::warn!("{w}"),
            Ok(None) => {}
            Err(e) => return Err(SpoolError(format!("cannot create {}: {e}", path.display()))),
        }
        let conn = Connection::open(path)
            .map_err(|e| SpoolError(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS alerts (
                 seq   INTEGER PRIMARY KEY AUTOINCREMENT,
                 event TEXT NOT NULL
             );",
        )?;
        let len: i64 = conn.query_row("SELECT COUNT(*) FROM alerts", [], |r| r.get(0))?;
        let min: Option<i64> = conn.query_row("SELECT MIN(seq) FROM alerts", [], |r| r.get(0))?;
        let last: Option<i64> = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'alerts'",
                [],
                |r| r.get(0),
            )
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                other => Err(other),
            })?;
        // Everything below the oldest held event is gone; with none held, everything is.
        let acked = match min {
            Some(m) => (m - 1).max(0) as u64,
            None => last.unwrap_or(0).max(0) as u64,
        };
        Ok(AlertSpool {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                conn: Mutex::new(conn),
                max: max_events.max(1),
                len: AtomicU64::new(len.max(0) as u64),
                dropped: AtomicU64::new(0),
                acked: AtomicU64::new(acked),
                pending: Notify::new(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, SpoolError> {
        Ok(tether_host::sync::lock(&self.inner.conn))
    }

    /// Appends events, assigning each the next `seq`; drops the oldest past the bound.
    /// Returns the seqs given.
    pub fn append(&self, events: &[AlertEvent]) -> Result<Vec<u64>, SpoolError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let mut seqs = Vec::with_capacity(events.len());
        {
            let mut insert = tx.prepare_cached("INSERT INTO alerts (event) VALUES (?1)")?;
            for e in events {
                let mut e = e.clone();
                e.seq = None;
                let text = serde_json::to_string(&e).map_err(|e| SpoolError(e.to_string()))?;
                insert.execute([text])?;
                seqs.push(tx.last_insert_rowid() as u64);
            }
        }
        let len = self.inner.len.load(Ordering::Acquire) + events.len() as u64;
        let mut dropped = 0u64;
        if len > self.inner.max {
            let excess = len - self.inner.max;
            dropped = tx.execute(
                "DELETE FROM alerts WHERE seq IN (SELECT seq FROM alerts ORDER BY seq LIMIT ?1)",
                params![excess as i64],
            )? as u64;
        }
        tx.commit()?;
        self.inner.len.store(len - dropped, Ordering::Release);
        if dropped > 0 {
            let total = self.inner.dropped.fetch_add(dropped, Ordering::AcqRel) + dropped;
            tracing::warn!(
                dropped,
                total,
                max = self.inner.max,
                "alert spool full: dropped the oldest events"
            );
        }
        self.inner.pending.notify_one();
        Ok(seqs)
    }

    /// Up to `limit` events with `seq > after_seq`, oldest first, each with its `seq` set.
    pub fn batch(&self, after_seq: u64, limit: usize) -> Result<Vec<AlertEvent>, SpoolError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached("SELECT seq, event FROM alerts WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt.query_map(params![after_seq as i64, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, text) = row?;
            match serde_json::from_str::<AlertEvent>(&text) {
                Ok(mut e) => {
                    e.seq = Some(seq as u64);
                    out.push(e);
                }
                Err(e) => tracing::error!(seq, error = %e, "unreadable spooled alert skipped"),
            }
        }
        Ok(out)
    }

    /// Deletes every event with `seq <= upto_seq` (the hub has them).
    pub fn delete_upto(&self, upto_seq: u64) -> Result<u64, SpoolError> {
        let conn = self.conn()?;
        let n = conn.execute(
            "DELETE FROM alerts WHERE seq <= ?1",
            params![upto_seq as i64],
        )? as u64;
        self.inner.len.fetch_sub(
            n.min(self.inner.len.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        self.inner.acked.fetch_max(upto_seq, Ordering::AcqRel);
        Ok(n)
    }

    /// Deletes the events with `first <= seq <= last` that can never be delivered (too large
    /// for a frame on their own) and counts them as dropped. Returns how many went.
    pub fn drop_undeliverable(&self, first: u64, last: u64) -> Result<u64, SpoolError> {
        let n = self.conn()?.execute(
            "DELETE FROM alerts WHERE seq >= ?1 AND seq <= ?2",
            params![first as i64, last as i64],
        )? as u64;
        self.inner.len.fetch_sub(
            n.min(self.inner.len.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        if n > 0 {
            let total = self.inner.dropped.fetch_add(n, Ordering::AcqRel) + n;
            tracing::warn!(
                first,
                last,
                dropped = n,
                total,
                "alert events too large for any frame: dropped"
            );
        }
        Ok(n)
    }

    /// Events held.
    pub fn len(&self) -> u64 {
        self.inner.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events dropped since this process started: by overflow, or as undeliverable.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Acquire)
    }

    /// Every event with `seq` up to this has left the spool.
    pub fn acked(&self) -> u64 {
        self.inner.acked.load(Ordering::Acquire)
    }

    /// Resolves after new events are committed.
    pub async fn pending(&self) {
        self.inner.pending.notified().await;
    }

    /// A sink feeding this spool through a writer thread.
    pub fn sink(&self) -> Result<AlertSink, SpoolError> {
        let (tx, rx) = mpsc::channel::<SinkMsg>();
        let spool = self.clone();
        std::thread::Builder::new()
            .name("tether-alert-spool".into())
            .spawn(move || writer(spool, rx))
            .map_err(|e| SpoolError(format!("cannot start the spool writer: {e}")))?;
        Ok(AlertSink { tx })
    }
}

enum SinkMsg {
    Event(Box<AlertEvent>),
    Flush(std::sync::mpsc::Sender<()>),
}

fn writer(spool: AlertSpool, rx: mpsc::Receiver<SinkMsg>) {
    const BATCH: usize = 512;
    while let Ok(first) = rx.recv() {
        let mut events = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                SinkMsg::Event(e) => events.push(*e),
                SinkMsg::Flush(done) => flushes.push(done),
            }
            if events.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = spool.append(&events) {
            tracing::error!(error = %e, lost = events.len(), "cannot spool alert events");
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

/// Where checks and scripts send alert events. Never blocks; works while the link is down.
#[derive(Clone)]
pub struct AlertSink {
    tx: mpsc::Sender<SinkMsg>,
}

impl AlertSink {
    /// Queues one event for the spool.
    pub fn send(&self, event: AlertEvent) {
        if self.tx.send(SinkMsg::Event(Box::new(event))).is_err() {
            tracing::error!("alert spool writer has stopped; event lost");
        }
    }

    /// Waits (blocking the calling thread) until everything sent so far is committed.
    pub fn flush_blocking(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(SinkMsg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// As [`flush_blocking`](Self::flush_blocking), without blocking an async worker.
    pub async fn flush(&self) {
        let sink = self.clone();
        let _ = tokio::task::spawn_blocking(move || sink.flush_blocking()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tether_proto::link::AlertStatus;

    fn event(key: &str) -> AlertEvent {
        AlertEvent {
            event_time: 1_700_000_000,
            event_status: AlertStatus::Critical,
            alert_key: key.into(),
            labels: BTreeMap::new(),
            attrs: BTreeMap::new(),
            description: format!("{key} is on fire"),
            description_format: String::new(),
            seq: None,
        }
    }

    #[test]
    fn seqs_increase_and_survive_deletion_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool.db");
        let spool = AlertSpool::open(&path, 100).expect("open");
        let seqs = spool
            .append(&[event("a"), event("b"), event("c")])
            .expect("append");
        assert_eq!(seqs, vec![1, 2, 3]);
        let batch = spool.batch(1, 10).expect("batch");
        assert_eq!(
            batch.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![Some(2), Some(3)]
        );
        assert_eq!(spool.delete_upto(3).expect("delete"), 3);
        assert!(spool.is_empty());
        drop(spool);
        let spool = AlertSpool::open(&path, 100).expect("reopen");
        // Never reused, even with an empty table.
        assert_eq!(spool.acked(), 3);
        assert_eq!(spool.append(&[event("d")]).expect("append"), vec![4]);
    }

    #[test]
    fn overflow_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = AlertSpool::open(&dir.path().join("spool.db"), 5).expect("open");
        for i in 0..8 {
            spool.append(&[event(&format!("e{i}"))]).expect("append");
        }
        assert_eq!(spool.len(), 5);
        assert_eq!(spool.dropped(), 3);
        let batch = spool.batch(0, 100).expect("batch");
        assert_eq!(batch.first().and_then(|e| e.seq), Some(4));
        assert_eq!(batch.first().map(|e| e.alert_key.as_str()), Some("e3"));
    }

    #[test]
    fn the_sink_never_blocks_and_commits_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = AlertSpool::open(&dir.path().join("spool.db"), 10_000).expect("open");
        let sink = spool.sink().expect("sink");
        for i in 0..1000 {
            sink.send(event(&format!("k{i}")));
        }
        sink.flush_blocking();
        assert_eq!(spool.len(), 1000);
        let all = spool.batch(0, 2000).expect("batch");
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(all[999].alert_key, "k999");
    }
}
