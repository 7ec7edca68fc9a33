//! The core plugins, and the helpers they share (settings validation, measurement builders).
//!
//! | plugin      | checks                                                                  |
//! |-------------|-------------------------------------------------------------------------|
//! | `cpu`       | `usage_pct`, `iowait_pct`, `steal_pct`                                  |
//! | `mem`       | `available_pct`, `swap_used_pct`                                        |
//! | `disk`      | `space_used_pct`, `inode_used_pct` (+ `mounted`, `statvfs` on trouble)  |
//! | `load`      | `load1_per_core`, `load5_per_core`                                      |
//! | `procnum`   | `count`                                                                 |
//! | `tcp`       | `connect`, `connect_ms`                                                 |
//! | `http`      | `status`, `latency_ms`, `body_match`, `cert_expiry_days`                |
//! | `filecheck` | `exists`, `age_seconds`, `size_bytes`                                   |
//! | `logfile`   | `matches`                                                               |
//! | `exec`      | `status` (exit code) or what the script's JSON names                    |
//! | `systemd`   | `active`                                                                |
//! | `uptime`    | `uptime_seconds`                                                        |
//!
//! Every plugin's `build` rejects settings it does not know, naming the key (and suggesting
//! the nearest known one). A run that is cancelled returns `Err("cancelled")`.

use crate::plugin::{Measurement, Plugin, Status, Thresholds, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub mod cpu;
pub mod disk;
pub mod exec;
pub mod filecheck;
pub mod http;
pub mod load;
pub mod logfile;
pub mod mem;
pub mod procnum;
pub mod systemd;
pub mod tcp;
pub mod uptime;

/// Every core plugin, in the order `tether checks list` shows them.
pub fn registry() -> Vec<Arc<dyn Plugin>> {
    vec![
        Arc::new(cpu::CpuPlugin),
        Arc::new(mem::MemPlugin),
        Arc::new(disk::DiskPlugin),
        Arc::new(load::LoadPlugin),
        Arc::new(uptime::UptimePlugin),
        Arc::new(procnum::ProcnumPlugin),
        Arc::new(tcp::TcpPlugin),
        Arc::new(http::HttpPlugin),
        Arc::new(filecheck::FilecheckPlugin),
        Arc::new(logfile::LogfilePlugin),
        Arc::new(exec::ExecPlugin),
        Arc::new(systemd::SystemdPlugin),
    ]
}

/// The core plugin called `name`.
pub fn find(name: &str) -> Option<Arc<dyn Plugin>> {
    registry().into_iter().find(|p| p.name() == name)
}

/// The error text of a run stopped by its context's cancellation token.
pub const CANCELLED: &str = "cancelled";

/// How long a plugin's own network or process work may take within a run bounded by
/// `run_timeout` (the instance's common `timeout`): nine tenths of it, so the plugin's
/// verdict ("no answer within 9s" is a Critical measurement) lands before the engine's outer
/// deadline would turn the run into a check error. Plugins take no `timeout` key of their
/// own: the common key is removed before `build()` sees the settings.
pub(crate) fn work_budget(run_timeout: Duration) -> Duration {
    run_timeout.mul_f64(0.9)
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// An instance's plugin settings, checked against the keys the plugin knows.
pub(crate) struct Settings<'a> {
    table: &'a toml::Table,
}

/// Edit distance between two short strings (for "did you mean").
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known key nearest to `key`, if one is near enough to be a likely typo.
pub(crate) fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let key_l = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&key_l, k), *k))
        .filter(|(d, k)| {
            *d <= 2.min(k.len().saturating_sub(1)).max(1)
                || (key_l.len() >= 3 && (k.contains(key_l.as_str()) || key_l.contains(k)))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The error for a setting the plugin does not know.
pub(crate) fn unknown_key(plugin: &str, key: &str, known: &[&str]) -> String {
    if known.is_empty() {
        return format!("unknown key `{key}`: the {plugin} plugin takes no settings of its own");
    }
    match suggest(key, known) {
        Some(k) => format!("unknown key `{key}`; did you mean `{k}`?"),
        None => format!(
            "unknown key `{key}` (the {plugin} plugin knows: {})",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

/// Parses a byte size: a whole number of bytes, or a number with a unit (`512k`, `10 MiB`,
/// `1.5G`; k/M/G/T are powers of 1024, `kB`/`MB`/… powers of 1000).
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4096, \"512k\" or \"10 MiB\""))?;
    let mult: f64 = match unit.trim() {
        "" | "b" | "B" => 1.0,
        "k" | "K" | "KiB" | "kiB" => 1024.0,
        "M" | "m" | "MiB" => 1024.0 * 1024.0,
        "G" | "g" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "T" | "t" | "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        other => {
            return Err(format!(
                "{text:?}: unknown size unit {other:?} (use k, M, G, T, KiB, MiB, GiB, TiB, kB, MB, GB or TB)"
            ));
        }
    };
    let bytes = (num * mult).round();
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

impl<'a> Settings<'a> {
    /// Checks that every key of `table` is one of `known`.
    pub(crate) fn new(
        plugin: &str,
        table: &'a toml::Table,
        known: &[&str],
    ) -> Result<Self, String> {
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                return Err(unknown_key(plugin, key, known));
            }
        }
        Ok(Settings { table })
    }

    fn get(&self, key: &str) -> Option<&'a toml::Value> {
        self.table.get(key)
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    pub(crate) fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(format!("`{key}`: expected a string, got {}", type_name(v))),
        }
    }

    /// A string that must be present and non-empty.
    pub(crate) fn required_string(&self, key: &str) -> Result<String, String> {
        match self.string(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(format!("`{key}` must not be empty")),
            None => Err(format!("`{key}` is required")),
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(format!(
                "`{key}`: expected true or false, got {}",
                type_name(v)
            )),
        }
    }

    pub(crate) fn u64(&self, key: &str) -> Result<Option<u64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => u64::try_from(*i)
                .map(Some)
                .map_err(|_| format!("`{key}` must not be negative")),
            Some(v) => Err(format!(
                "`{key}`: expected a whole number, got {}",
                type_name(v)
            )),
        }
    }

    /// A duration: a string such as `"5s"`, `"1h 30m"`, `"250ms"`, or a number of seconds.
    pub(crate) fn duration(&self, key: &str) -> Result<Option<Duration>, String> {
        let d = match self.get(key) {
            None => return Ok(None),
            Some(toml::Value::String(s)) => humantime::parse_duration(s.trim()).map_err(|e| {
                format!("`{key}`: {s:?} is not a duration such as \"5s\" or \"2m\": {e}")
            })?,
            Some(toml::Value::Integer(i)) => Duration::from_secs(
                u64::try_from(*i).map_err(|_| format!("`{key}` must not be negative"))?,
            ),
            Some(toml::Value::Float(f)) => Duration::try_from_secs_f64(*f)
                .map_err(|_| format!("`{key}`: {f} is not a valid number of seconds"))?,
            Some(v) => {
                return Err(format!(
                    "`{key}`: expected a duration such as \"5s\" or a number of seconds, got {}",
                    type_name(v)
                ));
            }
        };
        Ok(Some(d))
    }

    /// A byte size: an integer, or a string such as `"10 MiB"`.
    pub(crate) fn bytes(&self, key: &str) -> Result<Option<u64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => u64::try_from(*i)
                .map(Some)
                .map_err(|_| format!("`{key}` must not be negative")),
            Some(toml::Value::String(s)) => parse_bytes(s)
                .map(Some)
                .map_err(|e| format!("`{key}`: {e}")),
            Some(v) => Err(format!(
                "`{key}`: expected a size such as 4096 or \"10 MiB\", got {}",
                type_name(v)
            )),
        }
    }

    /// A list of strings; a single string counts as a list of one.
    pub(crate) fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(format!(
                        "`{key}`[{i}]: expected a string, got {}",
                        type_name(other)
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(format!(
                "`{key}`: expected a list of strings, got {}",
                type_name(v)
            )),
        }
    }

    /// A list of strings, strictly (a lone string is refused: `args = "-v -x"` would be
    /// one argument, not two).
    pub(crate) fn strict_string_list(&self, key: &str) -> Result<Option<Vec<String>>, String> {
        match self.get(key) {
            Some(toml::Value::String(s)) => Err(format!(
                "`{key}`: expected a list of strings, got the string {s:?} (write [\"a\", \"b\"])"
            )),
            _ => self.string_list(key),
        }
    }

    /// A table of string values (`env = { LANG = "C" }`).
    pub(crate) fn string_map(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Table(t)) => t
                .iter()
                .map(|(k, v)| match v {
                    toml::Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(format!(
                        "`{key}.{k}`: expected a string, got {}",
                        type_name(other)
                    )),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(Some),
            Some(v) => Err(format!(
                "`{key}`: expected a table of strings, got {}",
                type_name(v)
            )),
        }
    }

    /// The raw value of a key (for settings that take several shapes).
    pub(crate) fn raw(&self, key: &str) -> Option<&'a toml::Value> {
        self.get(key)
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements and small helpers
// ---------------------------------------------------------------------------------------------

/// A numeric measurement without labels.
pub(crate) fn number(
    check: &str,
    target: &str,
    value: f64,
    unit: &'static str,
    description: String,
    defaults: Thresholds,
) -> Measurement {
    Measurement {
        check: check.to_owned(),
        target: target.to_owned(),
        labels: BTreeMap::new(),
        value: Value::Number(value),
        unit,
        description,
        defaults,
    }
}

/// A verdict measurement without labels.
pub(crate) fn verdict(
    check: &str,
    target: &str,
    status: Status,
    description: String,
) -> Measurement {
    Measurement {
        check: check.to_owned(),
        target: target.to_owned(),
        labels: BTreeMap::new(),
        value: Value::Status(status),
        unit: "",
        description,
        defaults: Thresholds::default(),
    }
}

pub(crate) use tether_host::text::{clip, millis, round2};

/// Sleeps for `d` unless cancelled first (then `Err("cancelled")`).
pub(crate) async fn pause(d: Duration, cancel: &CancellationToken) -> Result<(), String> {
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = cancel.cancelled() => Err(CANCELLED.to_owned()),
    }
}

/// Runs blocking file-system work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("the reading failed: {e}"))
}

/// A single default instance without settings.
pub(crate) fn one_default_instance() -> Vec<toml::Table> {
    vec![toml::Table::new()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_and_missing_plurals() {
        assert_eq!(suggest("mount", &["mounts", "exclude"]), Some("mounts"));
        assert_eq!(suggest("exlude", &["mounts", "exclude"]), Some("exclude"));
        assert_eq!(suggest("zzz", &["mounts", "exclude"]), None);
        assert_eq!(
            unknown_key("disk", "mount", &["mounts", "exclude"]),
            "unknown key `mount`; did you mean `mounts`?"
        );
        assert!(unknown_key("cpu", "x", &[]).contains("takes no settings"));
    }

    #[test]
    fn byte_sizes_parse() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512k"), Ok(512 * 1024));
        assert_eq!(parse_bytes("10 MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_bytes("1.5G"), Ok(1_610_612_736));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        assert!(parse_bytes("ten").is_err());
        assert!(parse_bytes("1 parsec").is_err());
    }
}
