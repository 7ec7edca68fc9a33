//! PostgreSQL for `tether-bench hub --store postgres`: a throwaway cluster started (and
//! stopped) with the project's `scripts/postgres.sh`, unless `--pg-url` names one; a fresh
//! database per run; and the check that every acknowledged alert is stored exactly once.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A cluster `scripts/postgres.sh start` made; stopped (and its directory removed) on drop.
pub struct Cluster {
    script: PathBuf,
    dir: PathBuf,
    /// A superuser URL (`…/postgres`).
    pub url: String,
}

impl Cluster {
    pub fn start(script: &Path) -> anyhow::Result<Cluster> {
        let out = Command::new("bash")
            .arg(script)
            .arg("start")
            .output()
            .with_context(|| format!("running {} start", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} start failed ({}):\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let var = |name: &str| -> Option<String> {
            stdout.lines().find_map(|l| {
                let v = l.trim().strip_prefix("export ")?.strip_prefix(name)?;
                // `printf %q` output: plain here (a URL and a mktemp path); undo escapes.
                Some(v.strip_prefix('=')?.replace('\\', ""))
            })
        };
        let (Some(url), Some(dir)) = (var("TETHER_TEST_PG_URL"), var("TETHER_TEST_PG_DIR")) else {
            bail!(
                "{} start printed no TETHER_TEST_PG_URL/TETHER_TEST_PG_DIR:\n{stdout}",
                script.display()
            );
        };
        Ok(Cluster {
            script: script.to_owned(),
            dir: PathBuf::from(dir),
            url,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "tether-bench hub: stopping the PostgreSQL cluster in {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!(
                "tether-bench hub: cannot run {} stop: {e}",
                self.script.display()
            ),
        }
    }
}

/// `scripts/postgres.sh`: next to the checkout this executable was built in
/// (`target/<profile>/tether-bench` → `../../scripts`), else under the working directory.
pub fn default_script() -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            candidates.push(dir.join("scripts/postgres.sh"));
        }
    }
    candidates.push(PathBuf::from("scripts/postgres.sh"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "cannot find scripts/postgres.sh (looked at {}); pass --pg-script or --pg-url",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// How long one administrative statement may take.
const SQL_TIMEOUT: Duration = Duration::from_secs(60);

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(
        SQL_TIMEOUT,
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .context("connecting to PostgreSQL timed out")?
    .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `url` with its database replaced by `db` (query string kept).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    format!("{base}/{db}{query}")
}

/// A database made for one run (`CREATE DATABASE`), dropped by [`RunDatabase::drop_it`].
pub struct RunDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl RunDatabase {
    pub async fn create(admin_url: &str) -> anyhow::Result<RunDatabase> {
        let name = format!("bench_{}", uuid::Uuid::now_v7().simple());
        let admin = connect(admin_url).await?;
        tokio::time::timeout(
            SQL_TIMEOUT,
            admin.batch_execute(&format!("CREATE DATABASE {name}")),
        )
        .await
        .context("CREATE DATABASE timed out")?
        .with_context(|| format!("CREATE DATABASE {name}"))?;
        Ok(RunDatabase {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        })
    }

    /// Drops the database (after the hubs stopped; `WITH (FORCE)` ends stray sessions).
    pub async fn drop_it(self) -> anyhow::Result<()> {
        let admin = connect(&self.admin_url).await?;
        tokio::time::timeout(
            SQL_TIMEOUT,
            admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )),
        )
        .await
        .context("DROP DATABASE timed out")?
        .with_context(|| format!("DROP DATABASE {}", self.name))?;
        Ok(())
    }
}

/// The query both stores answer: agents' alert events, and how many distinct
/// `(agent_id, seq)` among them (equal when none is stored twice).
pub const STORED_ALERTS_SQL: &str = "SELECT COUNT(*), COUNT(DISTINCT agent_id || '/' || CAST(seq AS TEXT)) \
     FROM alert_events WHERE agent_id IS NOT NULL AND seq IS NOT NULL";

/// [`STORED_ALERTS_SQL`] on PostgreSQL.
pub async fn stored_alerts(url: &str) -> anyhow::Result<(u64, u64)> {
    let client = connect(url).await?;
    let row = tokio::time::timeout(SQL_TIMEOUT, client.query_one(STORED_ALERTS_SQL, &[]))
        .await
        .context("counting stored alerts timed out")?
        .context("counting stored alerts")?;
    let total: i64 = row.try_get(0)?;
    let distinct: i64 = row.try_get(1)?;
    Ok((total.max(0) as u64, distinct.max(0) as u64))
}

/// [`STORED_ALERTS_SQL`] on a hub's SQLite file (read-only, after the hub stopped).
pub fn stored_alerts_sqlite(db: &Path) -> anyhow::Result<(u64, u64)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", db.display()))?;
    let (total, distinct): (i64, i64) = conn
        .query_row(STORED_ALERTS_SQL, [], |r| Ok((r.get(0)?, r.get(1)?)))
        .with_context(|| format!("counting stored alerts in {}", db.display()))?;
    Ok((total.max(0) as u64, distinct.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_database_replaces_the_admin_one() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "bench_1"),
            "postgres://postgres@127.0.0.1:5432/bench_1"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/postgres?sslmode=disable", "b"),
            "postgres://u:p@h:1/b?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "b"), "postgres://h:1/b");
    }

    #[test]
    fn stored_alerts_count_duplicates_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("hub.db");
        let conn = rusqlite::Connection::open(&db).expect("open");
        conn.execute_batch(
            "CREATE TABLE alert_events (event_id INTEGER PRIMARY KEY, agent_id TEXT, seq INTEGER);
             INSERT INTO alert_events (agent_id, seq) VALUES ('a', 1), ('a', 2), ('b', 1), ('b', 1), (NULL, NULL), ('c', NULL);",
        )
        .expect("setup");
        drop(conn);
        assert_eq!(stored_alerts_sqlite(&db).expect("count"), (4, 3));
    }
}
