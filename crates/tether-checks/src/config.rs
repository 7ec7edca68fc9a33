//! Check configuration: one TOML file per plugin, `<plugin>.toml`, in a checks directory
//! (`conf.d/` beside the agent's config file, or the agent's `checks_dir`).
//!
//! ```toml
//! # conf.d/disk.toml — plugin-level defaults (all optional) …
//! interval = "1m"
//! for_duration = "5m"
//! labels = { team = "infra" }
//! warn_ge = 85.0
//!
//! # … then the instances, each with the same common keys plus the plugin's own.
//! [[instances]]
//! name = "data"
//! targets = ["/data"]            # plugin-specific: handed to the plugin's build()
//! critical_ge = 95
//! repeat_interval = "1h"
//! repeat_number = 3
//! diagnose = true
//!
//! [instances.checks.inode_used_pct]   # per-check thresholds (thresholds only)
//! warn_ge = 70
//! ```
//!
//! Common keys (plugin level and instance level): `interval` (default 30s, at least 1s),
//! `timeout` (10s), `labels` (a table of strings), the thresholds `warn_ge`, `critical_ge`,
//! `warn_gt`, `critical_gt`, `warn_le`, `critical_le`, `warn_lt`, `critical_lt`,
//! `checks.<check>` (per-check thresholds), `for_duration` (0s), `repeat_interval` (none), `repeat_number`
//! (unlimited), `recovery` (true), `diagnose` (false); instance level only: `name`.
//! Durations are strings (`"30s"`, `"5m"`, `"1h 30m"`).
//!
//! Precedence: an instance's key beats the plugin-level key; for `labels` and `checks` the
//! tables are merged key by key (instance wins). A check's effective thresholds are the
//! plugin's built-in defaults for it, overridden bound by bound by the instance's thresholds,
//! overridden by its `checks.<check>` table.
//!
//! A file without an `instances` key runs the plugin's default instances with the file's
//! plugin-level settings; `instances = []` runs nothing. Files whose names do not end in
//! `.toml`, and names starting with `.`, are ignored; a `.toml` file not named after a plugin
//! is an error. A file with any error contributes no instances (and every error in it is
//! reported, naming the file and the key).

use crate::plugin::{Check, Plugin, Thresholds};
use crate::rules::{Lifecycle, overlay};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Default run interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Default run timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest run interval accepted: below it a check would keep a core busy (and flood the
/// alert pipeline) for no operational gain.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The threshold keys.
pub const THRESHOLD_KEYS: [&str; 8] = [
    "warn_ge",
    "critical_ge",
    "warn_gt",
    "critical_gt",
    "warn_le",
    "critical_le",
    "warn_lt",
    "critical_lt",
];

/// The common keys (removed before the instance table goes to the plugin's `build()`).
pub const COMMON_KEYS: [&str; 10] = [
    "name",
    "interval",
    "timeout",
    "labels",
    "checks",
    "for_duration",
    "repeat_interval",
    "repeat_number",
    "recovery",
    "diagnose",
];

/// Labels the engine sets itself; config may not set them.
pub const RESERVED_LABELS: [&str; 4] = ["plugin", "target", "check", "name"];

/// A configuration error, naming the file and, when it is about one key, the key path
/// (`instances[1].for_duration`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{message}", file.display(), key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    /// The plugin the file configures, when the file is named after one.
    pub plugin: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

/// One configured instance of a plugin, validated and built.
#[derive(Clone)]
pub struct InstanceSpec {
    pub plugin: String,
    /// The file it came from (`conf.d/disk.toml`), or a label such as `<default>` for
    /// instances not read from a file.
    pub file: PathBuf,
    /// Its position in the file's `instances` (or in the plugin's default instances).
    pub index: usize,
    pub name: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// The configured labels (plugin-level merged with instance-level).
    pub labels: BTreeMap<String, String>,
    /// Instance-level thresholds (plugin-level merged with instance-level).
    pub thresholds: Thresholds,
    /// Per-check thresholds (`checks.<check>`).
    pub check_thresholds: BTreeMap<String, Thresholds>,
    pub lifecycle: Lifecycle,
    pub diagnose: bool,
    /// The plugin-specific settings the check was built from (common keys removed).
    pub settings: toml::Table,
    pub check: Arc<dyn Check>,
}

impl std::fmt::Debug for InstanceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSpec")
            .field("plugin", &self.plugin)
            .field("file", &self.file)
            .field("index", &self.index)
            .field("name", &self.name)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("labels", &self.labels)
            .field("thresholds", &self.thresholds)
            .field("check_thresholds", &self.check_thresholds)
            .field("lifecycle", &self.lifecycle)
            .field("diagnose", &self.diagnose)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl InstanceSpec {
    /// The instance's identity within its plugin: its `name`, else `instances[<index>]`.
    pub fn id(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("instances[{}]", self.index),
        }
    }

    /// Same configuration (everything but the built check object).
    pub fn same_config(&self, other: &InstanceSpec) -> bool {
        self.plugin == other.plugin
            && self.index == other.index
            && self.name == other.name
            && self.interval == other.interval
            && self.timeout == other.timeout
            && self.labels == other.labels
            && self.thresholds == other.thresholds
            && self.check_thresholds == other.check_thresholds
            && self.lifecycle == other.lifecycle
            && self.diagnose == other.diagnose
            && self.settings == other.settings
    }

    /// The effective thresholds of `check`: `defaults` (the measurement's), overridden by the
    /// instance's thresholds, overridden by `checks.<check>`.
    pub fn thresholds_for(&self, check: &str, defaults: &Thresholds) -> Thresholds {
        let t = overlay(defaults, &self.thresholds);
        match self.check_thresholds.get(check) {
            Some(c) => overlay(&t, c),
            None => t,
        }
    }
}

/// The `.toml` files of a checks directory that configure plugins, sorted by name. A missing
/// directory has none.
pub fn config_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".toml") || name.len() <= ".toml".len() {
            continue;
        }
        let path = dir.join(name);
        // Follows symlinks; a dangling link or a directory is not a config file.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A fingerprint of a checks directory for change polling: each config file's path, size,
/// modification time and a hash of its content (so a rewrite within the file system's mtime
/// granularity is still seen).
pub fn dir_fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>, u64)> {
    config_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let mtime = meta.and_then(|m| m.modified().ok());
            let hash = std::fs::read(&p).map_or(0, |b| fnv(&b));
            (p, len, mtime, hash)
        })
        .collect()
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Loads every `<plugin>.toml` in `dir`. A bad file yields its errors and no instances; the
/// other files still load. A missing directory yields nothing.
pub fn load_dir(dir: &Path, plugins: &[Arc<dyn Plugin>]) -> (Vec<InstanceSpec>, Vec<ConfigError>) {
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    let files = match config_files(dir) {
        Ok(f) => f,
        Err(e) => {
            errors.push(ConfigError {
                file: dir.to_path_buf(),
                plugin: None,
                key: None,
                message: format!("cannot read the checks directory: {e}"),
            });
            return (specs, errors);
        }
    };
    for file in files {
        let stem = file
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".toml"))
            .unwrap_or_default()
            .to_owned();
        let Some(plugin) = plugins.iter().find(|p| p.name() == stem) else {
            let mut known: Vec<&str> = plugins.iter().map(|p| p.name()).collect();
            known.sort_unstable();
            errors.push(ConfigError {
                file,
                plugin: None,
                key: None,
                message: format!(
                    "no plugin is named `{stem}` (the file name must be a plugin name; known: {})",
                    known.join(", ")
                ),
            });
            continue;
        };
        match load_file(&file, plugin.as_ref()) {
            Ok(mut s) => specs.append(&mut s),
            Err(mut e) => errors.append(&mut e),
        }
    }
    (specs, errors)
}

/// Loads one plugin's file.
pub fn load_file(file: &Path, plugin: &dyn Plugin) -> Result<Vec<InstanceSpec>, Vec<ConfigError>> {
    match std::fs::read_to_string(file) {
        Ok(text) => parse_file(file, &text, plugin),
        Err(e) => Err(vec![ConfigError {
            file: file.to_path_buf(),
            plugin: Some(plugin.name().to_owned()),
            key: None,
            message: format!("cannot read: {e}"),
        }]),
    }
}

/// Parses one plugin's file from text (`file` is used in errors and in the specs).
pub fn parse_file(
    file: &Path,
    text: &str,
    plugin: &dyn Plugin,
) -> Result<Vec<InstanceSpec>, Vec<ConfigError>> {
    let mut errs = Errors::new(file, plugin.name());
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            errs.file(e.to_string().trim_end().replace('\n', " "));
            return Err(errs.list);
        }
    };
    let mut top = table;
    let instances = top.remove("instances");
    let defaults = parse_common(&mut top, "", false, &mut errs);
    for key in top.keys() {
        errs.file(unknown_plugin_level_key(plugin, key));
    }
    let tables: Vec<(toml::Table, String)> = match instances {
        None => plugin
            .default_instances()
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, format!("default instance {i}")))
            .collect(),
        Some(toml::Value::Array(items)) => {
            let mut tables = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    toml::Value::Table(t) => tables.push((t, format!("instances[{i}]"))),
                    other => errs.key(
                        &format!("instances[{i}]"),
                        &format!("expected a table, found {}", other.type_str()),
                    ),
                }
            }
            tables
        }
        Some(other) => {
            errs.key(
                "instances",
                &format!(
                    "expected an array of tables ([[instances]]), found {}",
                    other.type_str()
                ),
            );
            Vec::new()
        }
    };
    let mut specs = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for (index, (table, path)) in tables.into_iter().enumerate() {
        if let Some(spec) = build_instance(plugin, file, index, table, &path, &defaults, &mut errs)
        {
            if let Some(name) = &spec.name
                && let Some(first) = names.insert(name.clone(), path.clone())
            {
                errs.key(
                    &format!("{path}.name"),
                    &format!("{name:?} is already the name of {first}"),
                );
            }
            specs.push(spec);
        }
    }
    if errs.list.is_empty() {
        Ok(specs)
    } else {
        Err(errs.list)
    }
}

/// Parses one instance table (common keys and plugin-specific settings) outside any file,
/// e.g. for `tether checks run PLUGIN`. `label` names it in errors.
pub fn parse_instance(
    plugin: &dyn Plugin,
    table: &toml::Table,
    label: &str,
) -> Result<InstanceSpec, Vec<ConfigError>> {
    let file = PathBuf::from(label);
    let mut errs = Errors::new(&file, plugin.name());
    let spec = build_instance(
        plugin,
        &file,
        0,
        table.clone(),
        "instance",
        &Common::default(),
        &mut errs,
    );
    match spec {
        Some(s) if errs.list.is_empty() => Ok(s),
        _ => Err(errs.list),
    }
}

fn build_instance(
    plugin: &dyn Plugin,
    file: &Path,
    index: usize,
    mut table: toml::Table,
    path: &str,
    defaults: &Common,
    errs: &mut Errors,
) -> Option<InstanceSpec> {
    let before = errs.list.len();
    let own = parse_common(&mut table, path, true, errs);
    let interval = own
        .interval
        .or(defaults.interval)
        .unwrap_or(DEFAULT_INTERVAL);
    let timeout = own.timeout.or(defaults.timeout).unwrap_or(DEFAULT_TIMEOUT);
    let mut labels = defaults.labels.clone();
    labels.extend(own.labels.clone());
    let mut check_thresholds = defaults.checks.clone();
    for (check, t) in &own.checks {
        let merged = match check_thresholds.get(check) {
            Some(base) => overlay(base, t),
            None => t.clone(),
        };
        check_thresholds.insert(check.clone(), merged);
    }
    let lifecycle = Lifecycle {
        for_duration: own
            .for_duration
            .or(defaults.for_duration)
            .unwrap_or(Duration::ZERO),
        repeat_interval: own
            .repeat_interval
            .or(defaults.repeat_interval)
            .filter(|d| !d.is_zero()),
        repeat_number: own.repeat_number.or(defaults.repeat_number),
        recovery: own.recovery.or(defaults.recovery).unwrap_or(true),
    };
    // Checked here for every plugin, so that the message can list the common keys too (a
    // plugin's `build` sees only its own settings).
    for key in table.keys() {
        if !plugin.settings_keys().contains(&key.as_str()) {
            errs.key(path, &unknown_instance_key(plugin, key));
        }
    }
    if errs.list.len() > before {
        return None;
    }
    let check = match plugin.build(&table) {
        Ok(c) => Arc::<dyn Check>::from(c),
        Err(e) => {
            errs.key(path, &e);
            return None;
        }
    };
    Some(InstanceSpec {
        plugin: plugin.name().to_owned(),
        file: file.to_path_buf(),
        index,
        name: own.name,
        interval,
        timeout,
        labels,
        thresholds: overlay(&defaults.thresholds, &own.thresholds),
        check_thresholds,
        lifecycle,
        diagnose: own.diagnose.or(defaults.diagnose).unwrap_or(false),
        settings: table,
        check,
    })
}

/// The keys every instance takes, whatever its plugin: the common keys, then the thresholds.
fn common_instance_keys() -> impl Iterator<Item = &'static str> {
    COMMON_KEYS.into_iter().chain(THRESHOLD_KEYS)
}

/// ` (did you mean `x`?)` when one of `known` is near `key`.
fn did_you_mean(key: &str, known: &[&str]) -> String {
    crate::plugins::suggest(key, known)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// The message for an instance key that is neither a common key nor one of the plugin's
/// settings: the key, a likely intended one, and every key the instance could take.
fn unknown_instance_key(plugin: &dyn Plugin, key: &str) -> String {
    let own = plugin.settings_keys();
    let common: Vec<&str> = common_instance_keys().collect();
    let known: Vec<&str> = own.iter().copied().chain(common.iter().copied()).collect();
    let takes = if own.is_empty() {
        format!("takes only the common keys: {}", common.join(", "))
    } else {
        format!(
            "takes: {}; and the common keys: {}",
            own.join(", "),
            common.join(", ")
        )
    };
    format!(
        "unknown key `{key}`{}; the {} plugin {takes}",
        did_you_mean(key, &known),
        plugin.name()
    )
}

/// The message for a key at the top of a plugin's file that is not a plugin-level key.
fn unknown_plugin_level_key(plugin: &dyn Plugin, key: &str) -> String {
    if plugin.settings_keys().contains(&key) {
        return format!(
            "`{key}` is a setting of each instance of the {} plugin: put it under [[instances]]",
            plugin.name()
        );
    }
    let level: Vec<&str> = std::iter::once("instances")
        .chain(common_instance_keys().filter(|k| *k != "name"))
        .collect();
    let mut known = level.clone();
    known.extend(plugin.settings_keys());
    let own = if plugin.settings_keys().is_empty() {
        String::new()
    } else {
        format!(
            " (the {} plugin's own settings, {}, go under [[instances]])",
            plugin.name(),
            plugin.settings_keys().join(", ")
        )
    };
    format!(
        "unknown key `{key}` at plugin level{}; the plugin level takes: {}{own}",
        did_you_mean(key, &known),
        level.join(", ")
    )
}

/// The common keys of one level (plugin or instance); `None` = not set at this level.
#[derive(Default)]
struct Common {
    name: Option<String>,
    interval: Option<Duration>,
    timeout: Option<Duration>,
    labels: BTreeMap<String, String>,
    thresholds: Thresholds,
    checks: BTreeMap<String, Thresholds>,
    for_duration: Option<Duration>,
    repeat_interval: Option<Duration>,
    repeat_number: Option<u32>,
    recovery: Option<bool>,
    diagnose: Option<bool>,
}

struct Errors {
    file: PathBuf,
    plugin: String,
    list: Vec<ConfigError>,
}

impl Errors {
    fn new(file: &Path, plugin: &str) -> Self {
        Errors {
            file: file.to_path_buf(),
            plugin: plugin.to_owned(),
            list: Vec::new(),
        }
    }

    fn key(&mut self, key: &str, message: &str) {
        self.list.push(ConfigError {
            file: self.file.clone(),
            plugin: Some(self.plugin.clone()),
            key: Some(key.to_owned()),
            message: message.to_owned(),
        });
    }

    fn file(&mut self, message: String) {
        self.list.push(ConfigError {
            file: self.file.clone(),
            plugin: Some(self.plugin.clone()),
            key: None,
            message,
        });
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(i) => format!("integer {i}"),
        toml::Value::Float(f) => format!("float {f}"),
        toml::Value::Boolean(b) => format!("boolean {b}"),
        other => other.type_str().to_owned(),
    }
}

/// Removes the common keys from `table` and parses them; errors go to `errs`.
fn parse_common(
    table: &mut toml::Table,
    prefix: &str,
    instance: bool,
    errs: &mut Errors,
) -> Common {
    let mut c = Common::default();
    if let Some(v) = table.remove("name") {
        let key = join(prefix, "name");
        match v {
            toml::Value::String(_) if !instance => {
                errs.key(&key, "`name` is set per instance, not at plugin level");
            }
            toml::Value::String(s) if s.trim().is_empty() => errs.key(&key, "must not be empty"),
            toml::Value::String(s) => c.name = Some(s),
            other => errs.key(
                &key,
                &format!("expected a string, found {}", describe(&other)),
            ),
        }
    }
    c.interval = duration(table, prefix, "interval", Some(MIN_INTERVAL), errs);
    c.timeout = duration(table, prefix, "timeout", Some(Duration::ZERO), errs);
    c.for_duration = duration(table, prefix, "for_duration", None, errs);
    c.repeat_interval = duration(table, prefix, "repeat_interval", None, errs);
    if let Some(v) = table.remove("repeat_number") {
        let key = join(prefix, "repeat_number");
        match v {
            toml::Value::Integer(i) => match u32::try_from(i) {
                Ok(n) => c.repeat_number = Some(n),
                Err(_) => errs.key(&key, &format!("{i} is not a count (0 to {})", u32::MAX)),
            },
            other => errs.key(
                &key,
                &format!("expected an integer, found {}", describe(&other)),
            ),
        }
    }
    c.recovery = boolean(table, prefix, "recovery", errs);
    c.diagnose = boolean(table, prefix, "diagnose", errs);
    if let Some(v) = table.remove("labels") {
        let key = join(prefix, "labels");
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let lk = format!("{key}.{k}");
                    if k.is_empty() {
                        errs.key(&lk, "a label name must not be empty");
                    } else if RESERVED_LABELS.contains(&k.as_str()) {
                        errs.key(
                            &lk,
                            "reserved label (the engine sets plugin, target, check and name)",
                        );
                    } else {
                        match v {
                            toml::Value::String(s) => {
                                c.labels.insert(k, s);
                            }
                            other => errs.key(
                                &lk,
                                &format!("expected a string, found {}", describe(&other)),
                            ),
                        }
                    }
                }
            }
            other => errs.key(
                &key,
                &format!("expected a table, found {}", describe(&other)),
            ),
        }
    }
    c.thresholds = thresholds(table, prefix, errs);
    if let Some(v) = table.remove("checks") {
        let key = join(prefix, "checks");
        match v {
            toml::Value::Table(t) => {
                for (check, v) in t {
                    let ck = format!("{key}.{check}");
                    match v {
                        toml::Value::Table(mut inner) => {
                            let th = thresholds(&mut inner, &ck, errs);
                            for k in inner.keys() {
                                errs.key(
                                    &format!("{ck}.{k}"),
                                    &format!(
                                        "unknown key (a check table holds only thresholds: {})",
                                        THRESHOLD_KEYS.join(", ")
                                    ),
                                );
                            }
                            c.checks.insert(check, th);
                        }
                        other => errs.key(
                            &ck,
                            &format!("expected a table of thresholds, found {}", describe(&other)),
                        ),
                    }
                }
            }
            other => errs.key(
                &key,
                &format!("expected a table, found {}", describe(&other)),
            ),
        }
    }
    c
}

/// A duration key; `min` (when set) refuses zero and anything below it.
fn duration(
    table: &mut toml::Table,
    prefix: &str,
    name: &str,
    min: Option<Duration>,
    errs: &mut Errors,
) -> Option<Duration> {
    let v = table.remove(name)?;
    let key = join(prefix, name);
    match v {
        toml::Value::String(s) => match humantime::parse_duration(s.trim()) {
            Ok(d) => match min {
                Some(_) if d.is_zero() => {
                    errs.key(&key, &format!("{s:?} must be longer than zero"));
                    None
                }
                Some(m) if d < m => {
                    errs.key(
                        &key,
                        &format!(
                            "{s:?} is below the minimum of {}",
                            humantime::format_duration(m)
                        ),
                    );
                    None
                }
                _ => Some(d),
            },
            Err(_) => {
                errs.key(
                    &key,
                    &format!("{s:?} is not a duration (write e.g. \"30s\", \"5m\", \"1h\")"),
                );
                None
            }
        },
        other => {
            errs.key(
                &key,
                &format!(
                    "expected a duration string such as \"30s\", found {}",
                    describe(&other)
                ),
            );
            None
        }
    }
}

fn boolean(table: &mut toml::Table, prefix: &str, name: &str, errs: &mut Errors) -> Option<bool> {
    match table.remove(name)? {
        toml::Value::Boolean(b) => Some(b),
        other => {
            errs.key(
                &join(prefix, name),
                &format!("expected true or false, found {}", describe(&other)),
            );
            None
        }
    }
}

fn thresholds(table: &mut toml::Table, prefix: &str, errs: &mut Errors) -> Thresholds {
    let mut t = Thresholds::default();
    for name in THRESHOLD_KEYS {
        let Some(v) = table.remove(name) else {
            continue;
        };
        let n = match v {
            #[allow(clippy::cast_precision_loss)]
            toml::Value::Integer(i) => i as f64,
            toml::Value::Float(f) if f.is_finite() => f,
            other => {
                errs.key(
                    &join(prefix, name),
                    &format!("expected a number, found {}", describe(&other)),
                );
                continue;
            }
        };
        let slot = match name {
            "warn_ge" => &mut t.warn_ge,
            "critical_ge" => &mut t.critical_ge,
            "warn_gt" => &mut t.warn_gt,
            "critical_gt" => &mut t.critical_gt,
            "warn_le" => &mut t.warn_le,
            "critical_le" => &mut t.critical_le,
            "warn_lt" => &mut t.warn_lt,
            _ => &mut t.critical_lt,
        };
        *slot = Some(n);
    }
    t
}
