//! Test support for the PostgreSQL store (unit and integration tests): a database of its own
//! for each test, on the throwaway cluster `scripts/postgres.sh` starts
//! (`TETHER_TEST_PG_URL`), dropped when the test ends, so tests run in parallel.
//!
//! Without `TETHER_TEST_PG_URL` a PostgreSQL variant is skipped with a notice, except under
//! `CI=true`, where it fails: CI can never pass by skipping them.

use super::PgSettings;
use std::time::Duration;

/// The variable naming the test cluster (a superuser URL, e.g. `postgres://postgres@127.0.0.1:PORT/postgres`).
pub const URL_VAR: &str = "TETHER_TEST_PG_URL";

/// The test cluster's URL, or `None` after printing why `test` is skipped. Panics under
/// `CI=true` when it is not set.
pub fn cluster_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(u) if !u.trim().is_empty() => Some(u.trim().to_owned()),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "{test}: {URL_VAR} is not set under CI=true; start a cluster with `eval \"$(scripts/postgres.sh start)\"` (scripts/test.sh does)"
                );
            }
            eprintln!(
                "skipping {test}: {URL_VAR} is not set (eval \"$(scripts/postgres.sh start)\" to run it)"
            );
            None
        }
    }
}

/// Runs `f` on a thread of its own with a runtime of its own: callable from sync tests and
/// from inside a tokio test alike.
fn on_thread<T: Send + 'static, F>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime");
        rt.block_on(f())
    })
    .join()
    .expect("test database thread")
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test cluster ({URL_VAR}): {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A database created for one test, dropped (connections and all) when this is.
pub struct TestDatabase {
    admin_url: String,
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDatabase {
    /// A fresh database for `test`, or `None` when the test is skipped ([`cluster_url`]).
    pub fn create(test: &str) -> Option<TestDatabase> {
        let admin_url = cluster_url(test)?;
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url.as_str(), String::new()),
        };
        let authority_end = base.find("://").map_or(0, |i| i + 3);
        let base = match base[authority_end..].find('/') {
            Some(i) => &base[..authority_end + i],
            None => base,
        };
        let url = format!("{base}/{name}{query}");
        let admin = admin_url.clone();
        let sql = format!("CREATE DATABASE {name}");
        on_thread(move || async move {
            connect(&admin)
                .await
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("cannot create the test database: {e}"));
        });
        Some(TestDatabase {
            admin_url,
            name,
            url,
        })
    }

    /// Store settings for it: the defaults, with `query_timeout`.
    pub fn settings(&self, query_timeout: Duration) -> PgSettings {
        let mut s = PgSettings::new(&self.url).expect("test database URL");
        s.query_timeout = query_timeout;
        s.pool_size = 4;
        s
    }

    /// Runs SQL in it (a test's setup).
    pub fn execute(&self, sql: &str) {
        let url = self.url.clone();
        let sql = sql.to_owned();
        on_thread(move || async move {
            connect(&url)
                .await
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("test SQL failed: {e}"));
        });
    }

    /// The first column of the first row of a query, as a number (a test's check).
    pub fn scalar(&self, sql: &str) -> i64 {
        let url = self.url.clone();
        let sql = sql.to_owned();
        on_thread(move || async move {
            connect(&url)
                .await
                .query_one(&sql, &[])
                .await
                .unwrap_or_else(|e| panic!("test query failed: {e}"))
                .try_get::<_, i64>(0)
                .unwrap_or_else(|e| panic!("test query: not a number: {e}"))
        })
    }

    /// Holds a row lock (`SELECT … FOR UPDATE` of `lock_sql`) in an open transaction on a
    /// connection of its own until the returned guard is dropped.
    pub fn hold_lock(&self, lock_sql: &str) -> LockHolder {
        let url = self.url.clone();
        let sql = lock_sql.to_owned();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test runtime");
            rt.block_on(async move {
                let mut client = connect(&url).await;
                let tx = client.transaction().await.expect("begin");
                tx.batch_execute(&sql).await.expect("lock");
                let _ = locked_tx.send(());
                let _ = release_rx.await;
                let _ = tx.rollback().await;
            });
        });
        locked_rx.recv().expect("the lock was taken");
        LockHolder {
            release: Some(release_tx),
            thread: Some(thread),
        }
    }
}

/// A lock held by [`TestDatabase::hold_lock`]; released on drop.
pub struct LockHolder {
    release: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        if let Some(r) = self.release.take() {
            let _ = r.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        on_thread(move || async move {
            if let Err(e) = connect(&admin).await.batch_execute(&sql).await {
                eprintln!("cannot drop the test database: {e}");
            }
        });
    }
}
