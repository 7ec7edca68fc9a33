//! The plugin interface. A **plugin** (`disk`, `http`, …) turns an instance's settings into a
//! **check**; running a check yields **measurements**; the engine turns measurements into alert
//! events with thresholds and the alert lifecycle (see `rules`).

use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The severity a measurement maps to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Status {
    Ok,
    Info,
    Warning,
    Critical,
}

impl Status {
    /// The link protocol's spelling (`Critical`, `Warning`, `Info`, `Ok`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "Ok",
            Status::Info => "Info",
            Status::Warning => "Warning",
            Status::Critical => "Critical",
        }
    }
}

/// What one measurement says.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A figure judged against thresholds (e.g. percent used).
    Number(f64),
    /// A verdict the plugin reached itself (e.g. an exec script's exit code, an HTTP status
    /// that did not match); thresholds do not apply.
    Status(Status),
}

/// Thresholds, written the same way in every plugin's config: `warn_ge`, `critical_ge`,
/// `warn_gt`, `critical_gt`, `warn_le`, `critical_le`, `warn_lt`, `critical_lt`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_ge: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_ge: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_gt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_gt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_le: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_le: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_lt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_lt: Option<f64>,
}

/// One reading produced by a check run.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// What was measured, stable across runs (e.g. `space_used_pct`, `inode_used_pct`,
    /// `status_code`, `cert_expiry_days`). Part of the alert key.
    pub check: String,
    /// What it was measured on (e.g. the mount point, the URL). Part of the alert key.
    pub target: String,
    /// More labels (part of the alert key), e.g. `device`.
    pub labels: BTreeMap<String, String>,
    pub value: Value,
    /// Unit of a number, for display (`%`, `ms`, `days`, `count`).
    pub unit: &'static str,
    /// A sentence for people: `/data is 93.1 % full (8.1 GiB free of 120 GiB)`.
    pub description: String,
    /// The plugin's default thresholds for this check (an instance's settings override).
    pub defaults: Thresholds,
}

/// What a check run gets.
#[derive(Clone, Debug)]
pub struct CheckContext {
    pub cancel: CancellationToken,
    /// The run's deadline (the engine also enforces it from outside).
    pub timeout: Duration,
}

/// A configured check (one plugin instance).
pub trait Check: Send + Sync {
    /// One run. Errors are raised as their own alert by the engine, never dropped.
    fn run<'a>(&'a self, ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>>;
}

/// A plugin: validates instance settings and builds checks.
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
    /// One sentence on what it checks (for `tether checks list` and docs).
    fn about(&self) -> &'static str;
    /// Builds a check from an instance's plugin-specific settings (the engine has removed
    /// the common keys: interval, labels, thresholds, for_duration, …). Errors name the key.
    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String>;
    /// The plugin-specific settings `build` takes (besides the common keys). The config
    /// loader refuses any other key before `build` runs, listing these and the common keys.
    fn settings_keys(&self) -> &'static [&'static str];
    /// Instances used when no config exists (`tether checks run disk` on a bare machine).
    fn default_instances(&self) -> Vec<toml::Table>;
}
