//! The exec plugin with real scripts.

use serde_json::json;
use std::time::Duration;
use tether_checks::plugin::{Check, CheckContext, Measurement, Status, Value};
use tether_checks::rules::evaluate;
use tokio_util::sync::CancellationToken;

mod common;
use common::{SECRET, SECRET_VARS, ctx, in_env_with_secrets, status};

fn try_build(v: serde_json::Value) -> Result<Box<dyn Check>, String> {
    common::try_build("exec", v)
}

/// Runs `sh -c script`.
async fn sh(script: &str) -> Result<Vec<Measurement>, String> {
    try_build(json!({"command": "sh", "args": ["-c", script]}))
        .expect("build")
        .run(ctx())
        .await
}

#[tokio::test]
async fn exit_codes_map_like_nagios() {
    let cases = [
        (0, Status::Ok),
        (1, Status::Warning),
        (2, Status::Critical),
        (3, Status::Warning),
        (4, Status::Critical),
        (127, Status::Critical),
    ];
    for (code, want) in cases {
        let script = format!("echo 'DISK {code} - all told'; echo second line; exit {code}");
        let ms = sh(&script).await.expect("run");
        assert_eq!(ms.len(), 1, "{ms:#?}");
        let m = &ms[0];
        assert_eq!(m.check, "status");
        assert_eq!(m.target, format!("sh -c {script}"));
        assert_eq!(status(m), want, "exit {code}");
        assert_eq!(m.description, format!("DISK {code} - all told"));
    }
}

#[tokio::test]
async fn silent_failures_name_the_exit_code_and_stderr() {
    let ms = sh("echo 'no such table' >&2; exit 2").await.expect("run");
    assert_eq!(status(&ms[0]), Status::Critical);
    assert!(
        ms[0].description.contains("exit code 2") && ms[0].description.contains("no such table"),
        "{}",
        ms[0].description
    );
    let ms = sh("kill -9 $$").await.expect("run");
    assert_eq!(status(&ms[0]), Status::Critical);
    assert!(
        ms[0].description.contains("signal 9"),
        "{}",
        ms[0].description
    );
}

#[tokio::test]
async fn json_object_output_becomes_a_measurement() {
    let ms = sh(r#"echo '{"status": "critical", "description": "replica is 40 s behind"}'"#)
        .await
        .expect("run");
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].check, "status");
    assert_eq!(status(&ms[0]), Status::Critical);
    assert_eq!(ms[0].description, "replica is 40 s behind");

    // A value with thresholds; the exit code does not matter then.
    let ms = sh(r#"echo '{"check": "queue", "value": 87, "unit": "count", "thresholds": {"warn_ge": 50, "critical_ge": 200}}'; exit 2"#)
        .await
        .expect("run");
    assert_eq!(ms[0].check, "queue");
    assert_eq!(ms[0].value, Value::Number(87.0));
    assert_eq!(ms[0].unit, "count");
    assert_eq!(evaluate(&ms[0].value, &ms[0].defaults), Status::Warning);

    // Neither status nor value: the exit code decides.
    let ms = sh(r#"echo '{"description": "meh"}'; exit 1"#)
        .await
        .expect("run");
    assert_eq!(status(&ms[0]), Status::Warning);
    assert_eq!(ms[0].description, "meh");
}

#[tokio::test]
async fn json_array_output_becomes_measurements() {
    let script = r#"cat <<'EOF'
[
  {"check": "replication", "target": "db1", "status": "ok", "description": "in sync"},
  {"check": "replication", "target": "db2", "status": "UNKNOWN"},
  {"check": "lag_s", "target": "db2", "value": 12.5, "unit": "s"}
]
EOF"#;
    let ms = sh(script).await.expect("run");
    assert_eq!(ms.len(), 3, "{ms:#?}");
    assert_eq!((ms[0].target.as_str(), status(&ms[0])), ("db1", Status::Ok));
    assert_eq!(
        (ms[1].target.as_str(), status(&ms[1])),
        ("db2", Status::Warning)
    );
    assert_eq!(ms[2].check, "lag_s");
    assert_eq!(ms[2].value, Value::Number(12.5));
    assert_eq!(ms[2].unit, "s");

    let err = sh(r#"echo '[{"check": "a", "value": 1}, {"check": "a", "value": 2}]'"#)
        .await
        .expect_err("duplicate");
    assert!(err.contains("two results"), "{err}");
    let err = sh(r#"echo '{"status": "purple"}'"#)
        .await
        .expect_err("bad status");
    assert!(err.contains("purple"), "{err}");
    // Output that only looks like JSON is plain output.
    let ms = sh("echo '{not json'; exit 0").await.expect("run");
    assert_eq!(
        (status(&ms[0]), ms[0].description.as_str()),
        (Status::Ok, "{not json")
    );
}

#[tokio::test]
async fn env_is_passed() {
    let check = try_build(json!({
        "command": "sh",
        "args": ["-c", "echo \"$GREETING\""],
        "env": {"GREETING": "hello tether"},
    }))
    .expect("build");
    let ms = check.run(ctx()).await.expect("run");
    assert_eq!(ms[0].description, "hello tether");
}

/// A script printing each secret variable's value, or `-` when it is unset.
fn print_secrets() -> String {
    SECRET_VARS
        .iter()
        .map(|v| format!("printf '%s ' \"${{{v}:--}}\";"))
        .collect::<String>()
        + " printf '%s' \"$GREETING\"; [ -n \"$PATH\" ] || printf ' no PATH'"
}

#[tokio::test]
async fn exec_checks_get_a_minimal_environment_plus_their_env() {
    if !in_env_with_secrets("exec_checks_get_a_minimal_environment_plus_their_env") {
        return;
    }
    let check = try_build(json!({
        "command": "sh",
        "args": ["-c", print_secrets()],
        "env": {"GREETING": "configured"},
    }))
    .expect("build");
    let ms = check.run(ctx()).await.expect("run");
    assert_eq!(ms[0].description, "- - - configured");

    // The opt-out: the agent's whole environment, as before.
    let check = try_build(json!({
        "command": "sh",
        "args": ["-c", print_secrets()],
        "env": {"GREETING": "configured"},
        "inherit_env": true,
    }))
    .expect("build");
    let ms = check.run(ctx()).await.expect("run");
    assert_eq!(
        ms[0].description,
        format!("{SECRET} {SECRET} {SECRET} configured")
    );
}

/// Whether a process is gone (or a zombie awaiting its parent).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => tether_host::host::parse_proc_stat(&stat).is_some_and(|s| s.state == 'Z'),
    }
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pid");
    let ready = dir.path().join("ready");
    // A grandchild in the background, the script waiting for it.
    let script = format!(
        "sleep 300 & echo $! > {p}; touch {r}; wait",
        p = pidfile.display(),
        r = ready.display()
    );
    let check = try_build(json!({"command": "sh", "args": ["-c", script]})).expect("build");
    // A run timeout of 2 s leaves the command nine tenths of it.
    let err = check
        .run(CheckContext {
            cancel: CancellationToken::new(),
            timeout: Duration::from_secs(2),
        })
        .await
        .expect_err("timed out");
    assert!(err.contains("did not finish within 1s 800ms"), "{err}");
    assert!(ready.exists(), "the script never got going");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    // SIGKILL is delivered at once, but the process may take a moment to exit: poll.
    let mut waited = 0;
    while !gone(pid) && waited < 500 {
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    assert!(gone(pid), "grandchild {pid} survived the timeout");
}

#[tokio::test]
async fn dropping_the_run_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 300 & echo $! > {p}; wait", p = pidfile.display());
    let check = try_build(json!({"command": "sh", "args": ["-c", script]})).expect("build");
    // The engine's own deadline drops the run's future.
    let dropped = tokio::time::timeout(
        Duration::from_secs(2),
        check.run(CheckContext {
            cancel: CancellationToken::new(),
            timeout: Duration::from_secs(600),
        }),
    )
    .await;
    assert!(dropped.is_err(), "the run ended by itself: {dropped:?}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let mut waited = 0;
    while !gone(pid) && waited < 500 {
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    assert!(gone(pid), "grandchild {pid} survived the dropped run");
}

#[tokio::test]
async fn cancellation_stops_the_command() {
    let check = try_build(json!({"command": "sleep", "args": ["300"]})).expect("build");
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::task::yield_now().await;
        trigger.cancel();
    });
    let err = check
        .run(CheckContext {
            cancel,
            timeout: Duration::from_secs(600),
        })
        .await
        .expect_err("cancelled");
    assert_eq!(err, "cancelled");
}

#[tokio::test]
async fn a_missing_command_fails_the_run() {
    let check = try_build(json!({"command": "/no/such/program"})).expect("build");
    let err = check.run(ctx()).await.expect_err("missing");
    assert!(err.contains("cannot run"), "{err}");
}

#[test]
fn exec_settings_are_validated() {
    let bad = [
        json!({}),
        json!({"command": ""}),
        json!({"command": "x", "args": "not a list"}),
        json!({"command": "x", "args": [1]}),
        json!({"command": "x", "env": {"A": 1}}),
        json!({"command": "x", "env": {"A=B": "c"}}),
        json!({"command": "x", "inherit_env": "yes"}),
        // The run timeout is the instance's common `timeout`, not a plugin setting.
        json!({"command": "x", "timeout": "5s"}),
    ];
    for v in bad {
        assert!(try_build(v.clone()).is_err(), "{v} accepted");
    }
    let err = try_build(json!({"command": "x", "arg": ["a"]}))
        .err()
        .expect("rejected");
    assert!(err.contains("did you mean `args`?"), "{err}");
    let err = try_build(json!({"command": "x", "inherit_env": "yes"}))
        .err()
        .expect("rejected");
    assert!(err.contains("`inherit_env`"), "{err}");
    assert!(try_build(json!({"command": "x", "inherit_env": false})).is_ok());
}
