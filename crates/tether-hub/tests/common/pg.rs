//! A database of its own for each test, on the PostgreSQL `scripts/postgres.sh` started
//! (`TETHER_TEST_PG_URL`). Without it a test is skipped with a notice, except under `CI=true`,
//! where a missing PostgreSQL fails the test: CI can never silently skip them.

use std::str::FromStr;
use tokio_postgres::NoTls;

pub struct TestDb {
    admin: tokio_postgres::Config,
    name: String,
    config: tokio_postgres::Config,
}

impl TestDb {
    /// Creates `t_<random>`; `None` (skip) when no test PostgreSQL is configured.
    pub async fn create() -> Option<TestDb> {
        let url = match std::env::var("TETHER_TEST_PG_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "TETHER_TEST_PG_URL is not set: run the tests through scripts/test.sh, which starts a PostgreSQL"
                );
                eprintln!(
                    "skipped: TETHER_TEST_PG_URL is not set (scripts/postgres.sh starts one)"
                );
                return None;
            }
        };
        let admin = tokio_postgres::Config::from_str(&url).expect("TETHER_TEST_PG_URL parses");
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let (client, conn) = admin
            .connect(NoTls)
            .await
            .expect("the test PostgreSQL answers");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let mut config = admin.clone();
        config.dbname(&name);
        Some(TestDb {
            admin,
            name,
            config,
        })
    }

    /// Where the test's database is.
    pub fn config(&self) -> tokio_postgres::Config {
        self.config.clone()
    }

    /// Its URL, for a hub's `[store] url`.
    pub fn url(&self) -> String {
        let base = std::env::var("TETHER_TEST_PG_URL").unwrap_or_default();
        match base.rfind('/') {
            Some(i) if base[..i].contains('@') || base[..i].ends_with(char::is_numeric) => {
                format!("{}/{}", &base[..i], self.name)
            }
            _ => format!("{base}/{}", self.name),
        }
    }

    /// Runs SQL in the test's database (as another session).
    pub async fn execute(&self, sql: &str) {
        let (client, conn) = self.config.connect(NoTls).await.expect("connect");
        tokio::spawn(conn);
        client.batch_execute(sql).await.expect("test SQL");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Dropped from a runtime that may be shutting down: a thread of its own.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) = admin.connect(NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
