//! Helpers shared by the plugin tests: build a plugin from JSON-shaped settings, run it once,
//! and read its measurements.
#![allow(dead_code)] // each test crate uses a different subset

use std::time::Duration;
use tether_checks::plugin::{Check, CheckContext, Measurement, Status, Value};
use tether_checks::plugins;
use tokio_util::sync::CancellationToken;

pub fn settings(v: serde_json::Value) -> toml::Table {
    serde_json::from_value(v).expect("settings table")
}

pub fn try_build(plugin: &str, v: serde_json::Value) -> Result<Box<dyn Check>, String> {
    plugins::find(plugin)
        .expect("plugin exists")
        .build(&settings(v))
}

pub fn build(plugin: &str, v: serde_json::Value) -> Box<dyn Check> {
    try_build(plugin, v).expect("build")
}

pub fn ctx() -> CheckContext {
    CheckContext {
        cancel: CancellationToken::new(),
        timeout: Duration::from_secs(20),
    }
}

pub async fn run(check: &dyn Check) -> Vec<Measurement> {
    check.run(ctx()).await.expect("run")
}

/// The measurement named `check`.
pub fn find<'a>(ms: &'a [Measurement], check: &str) -> &'a Measurement {
    ms.iter()
        .find(|m| m.check == check)
        .unwrap_or_else(|| panic!("no {check} in {ms:#?}"))
}

pub fn number(m: &Measurement) -> f64 {
    match m.value {
        Value::Number(x) => x,
        Value::Status(s) => panic!("{} is a status {s:?}, not a number", m.check),
    }
}

pub fn status(m: &Measurement) -> Status {
    match m.value {
        Value::Status(s) => s,
        Value::Number(x) => panic!("{} is a number {x}, not a status", m.check),
    }
}

// ---- a test process whose environment holds secrets ----
// Re-runs a test in a child of this test binary rather than mutating this process's
// environment, which other tests read from parallel threads.

/// The value of every secret variable in the re-run.
pub const SECRET: &str = "tether-test-secret-5e1f";
/// Variables an agent may hold that no child process should see.
pub const SECRET_VARS: &[&str] = &["OPENAI_API_KEY", "TETHER_HUB_TOKEN", "ALICE_TOKEN"];

/// In the test process: runs `test` (this test's name) again in a child process of this test
/// binary whose environment holds [`SECRET_VARS`], asserts that exactly that test ran and
/// passed, and returns `false` (the caller returns). In that child: returns `true` (the caller
/// runs its body).
pub fn in_env_with_secrets(test: &str) -> bool {
    if std::env::var(SECRET_VARS[0]).as_deref() == Ok(SECRET) {
        for var in SECRET_VARS {
            assert_eq!(std::env::var(var).as_deref(), Ok(SECRET), "{var}");
        }
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let mut rerun = std::process::Command::new(exe);
    rerun.args([test, "--exact", "--nocapture", "--test-threads=1"]);
    for var in SECRET_VARS {
        rerun.env(var, SECRET);
    }
    let out = rerun.output().expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} failed with secrets in its environment:\n{stdout}\n{stderr}"
    );
    false
}
