//! The hub on PostgreSQL (`[store] url`), with real binaries: `tether hub token create`
//! writes the credential into the database, an agent registers with it and its alert is
//! stored there exactly once, `tether hub token revoke` (another process) cuts its link, and
//! a hub older than the database's schema refuses to start, saying so. Runs against the
//! throwaway cluster of `scripts/postgres.sh` (`TETHER_TEST_PG_URL`), in a database of its
//! own.

mod common;

use common::{BIN, ServiceProc, free_port, get_json, wait_for, write_file};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tether_hub::store::testing::TestDatabase;

const OPERATOR: &str = "operator-token-0123456789";

fn tether(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("tether")
}

/// Runs `tether hub` expecting it to stop by itself; its exit status and stderr.
fn hub_exits(config: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(["hub", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hub");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the hub kept running against a database it cannot use");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    (status, err)
}

#[test]
fn a_hub_on_postgres_stores_credentials_and_alerts_there() {
    let Some(db) = TestDatabase::create("hub_postgres") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let port = free_port();
    let hub_toml = root.join("hub/hub.toml");
    write_file(
        &hub_toml,
        &format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\n[[operators]]\nname = \"admin\"\nclass = \"human\"\ntoken = \"{OPERATOR}\"\n[store]\nurl = \"{}\"\npool_size = 4\nquery_timeout = \"5s\"\n",
            db.url
        ),
    );

    // The credential goes into PostgreSQL, where every replica reads it.
    let out = tether(&["hub", "token", "create", "--name", "e2e"], &hub_toml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent_token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(agent_token.starts_with("tt_"), "{agent_token}");
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM agent_tokens WHERE name = 'e2e'"),
        1
    );
    let listed = tether(&["hub", "token", "list"], &hub_toml);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("e2e"),
        "{listed:?}"
    );

    let hub = ServiceProc(
        Command::new(BIN)
            .args(["hub", "--config"])
            .arg(&hub_toml)
            .env("TETHER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("hub"),
    );
    wait_for("the hub", Duration::from_secs(30), || {
        get_json(port, "/healthz", OPERATOR)
    });
    assert!(
        !root.join("hub/state/hub.db").exists(),
        "a hub on PostgreSQL made a SQLite file"
    );

    let missing = root.join("agent/marker-that-does-not-exist");
    write_file(
        &root.join("agent/conf.d/filecheck.toml"),
        &format!(
            "interval = \"1s\"\n[[instances]]\nname = \"marker\"\npath = \"{}\"\n",
            missing.display()
        ),
    );
    let agent_toml = root.join("agent/agent.toml");
    write_file(
        &agent_toml,
        &format!(
            "listen = \"off\"\nstate_dir = \"state\"\n[hub]\nurl = \"ws://127.0.0.1:{port}\"\nallow_plaintext = true\ntoken = \"{agent_token}\"\n"
        ),
    );
    let _agent = ServiceProc(
        Command::new(BIN)
            .args(["agent", "--config"])
            .arg(&agent_toml)
            .env("TETHER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("agent"),
    );

    let alert = wait_for(
        "the filecheck alert at the hub",
        Duration::from_secs(90),
        || {
            let v = get_json(port, "/api/v1/alerts?limit=100", OPERATOR)?;
            v["alerts"]
                .as_array()?
                .iter()
                .find(|a| a["labels"]["plugin"] == "filecheck" && a["state"] == "firing")
                .cloned()
        },
    );
    let agent_id = alert["agent_id"].as_str().expect("agent_id").to_owned();
    // Registered with the credential from the database, which is now bound to it.
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM agent_tokens WHERE name = 'e2e' AND agent_id = '{agent_id}'"
        )),
        1
    );
    // Stored exactly once, in PostgreSQL (the check keeps failing; a firing alert is not
    // sent again, and a resent seq would be a duplicate).
    let key = alert["alert_key"]
        .as_str()
        .expect("key")
        .replace('\'', "''");
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM alert_events e JOIN alerts a ON a.alert_id = e.alert_id WHERE a.alert_key = '{key}'"
        )),
        1
    );
    assert_eq!(alert["event_count"], 1, "{alert}");

    // Revoked by another process through the database: the hub cuts the agent's link.
    let out = tether(&["hub", "token", "revoke", "e2e"], &hub_toml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the revoked agent's link to close",
        Duration::from_secs(30),
        || {
            let v = get_json(port, "/api/v1/agents", OPERATOR)?;
            let agents = v.as_array().or_else(|| v["agents"].as_array())?;
            agents
                .iter()
                .find(|a| a["agent_id"] == agent_id.as_str())
                .filter(|a| a["connected"] == false)
                .map(|_| ())
        },
    );
    drop(hub);

    // A newer hub migrated the database: this one refuses it, and says why.
    db.execute(
        "INSERT INTO schema_migrations (version, applied_ms, hub) VALUES (99, 0, 'tether 99')",
    );
    let (status, err) = hub_exits(&hub_toml);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "the database schema is version 99 but this hub knows up to {}: upgrade the hub",
            tether_hub::store::PG_SCHEMA_VERSION
        )),
        "{err}"
    );
    let out = tether(&["hub", "token", "list"], &hub_toml);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("schema is version 99"),
        "{out:?}"
    );
}

/// A bad `[store]` is named at load, before anything is opened.
#[test]
fn bad_store_settings_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (store, says) in [
        ("url = \"mysql://h/db\"", "store.url: must be a postgres://"),
        ("pool_size = 2", "store: `url` or `url_env` is required"),
        (
            "url = \"postgres://h/db\"\nurl_env = \"X\"",
            "store: set either `url` or `url_env`, not both",
        ),
        (
            "url_env = \"TETHER_TEST_NO_SUCH_VARIABLE\"",
            "store.url_env: environment variable TETHER_TEST_NO_SUCH_VARIABLE is not set",
        ),
        (
            "url = \"postgres://h/db\"\npool_size = 0",
            "store.pool_size: 0 is out of range",
        ),
        (
            "url = \"postgres://h/db\"\nquery_timeout = \"1ms\"",
            "store.query_timeout: must be at least 10ms",
        ),
        (
            "url = \"postgres://h/db\"\nsize = 3",
            "unknown field `size`",
        ),
    ] {
        let hub_toml = dir.path().join("hub.toml");
        write_file(&hub_toml, &format!("[store]\n{store}\n"));
        let out = tether(&["hub", "token", "list"], &hub_toml);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{store}: {err}"
        );
    }
}
