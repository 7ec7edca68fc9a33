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
