//! The check engine: runs every configured instance on its interval, turns measurements into
//! alert events with thresholds and the alert lifecycle, and reloads the checks directory when
//! it changes.
//!
//! * **Scheduling.** Each instance has its own task. The first run comes within
//!   [`MAX_START_JITTER`] of the start (spread by a hash of the instance, so many instances do
//!   not run at once), then one every `interval`, on a fixed grid.
//! * **One run at a time.** A run is bounded by its `timeout` twice. Inside: when the timeout
//!   passes, the [`CheckContext`] cancel token is cancelled and the future is dropped
//!   [`CANCEL_GRACE`] later (the token is also cancelled whenever a run ends, for anything it
//!   left behind). Outside: the scheduler stops waiting at `timeout` + [`TIMEOUT_GRACE`], for a
//!   check that blocks its thread and cannot be dropped. A run still going when the next one
//!   is due makes that one skipped and counted ([`InstanceStatus::skipped_runs`]); a run that
//!   will not stop keeps every later run skipped until it does.
//! * **Errors.** A failed run, a timeout or a panic raises the instance's own alert, check
//!   `check_error` (Warning, description = the error), through the instance's lifecycle; it
//!   recovers on the next good run.
//! * **Alerts.** Each measurement's alert key is [`alert_key`] of its labels: the
//!   measurement's labels, overridden by the instance's configured labels, plus `name` (when
//!   the instance has one), `plugin`, `target` and `check` (always the engine's). A key an
//!   instance reported before and no longer reports after a good run is treated as Ok (it
//!   recovers, or resets if pending). A removed instance's firing alerts recover at once.
//! * **Reload.** The directory is polled every [`RELOAD_POLL`] (names, sizes, mtimes and
//!   content hashes). On a change every file is reloaded: a plugin whose file has an error keeps its old instances
//!   (the error is logged and listed by [`CheckEngine::config_errors`]); an instance whose
//!   configuration did not change keeps running undisturbed; a changed instance (same `name`,
//!   or same position when unnamed) is restarted and keeps the alert state of its keys.
//!
//! The engine uses `tokio::time` throughout, so tests can pause time.

use crate::config::{InstanceSpec, dir_fingerprint, load_dir, parse_instance};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Status, Value};
use crate::rules::{AlertState, judge, step};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tether_proto::link::{AlertEvent, AlertStatus, alert_key};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The check name of an instance's own alert for failed runs.
pub const CHECK_ERROR: &str = "check_error";
/// How often the checks directory is polled for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(3);
/// The first run of an instance comes within this long of its start (or its interval, if
/// shorter).
pub const MAX_START_JITTER: Duration = Duration::from_secs(5);
/// How long a timed-out check may take to wind down after its cancel token fires before it is
/// dropped.
pub const CANCEL_GRACE: Duration = Duration::from_millis(500);
/// How long past its timeout the scheduler waits for a run that does not stop (one that
/// blocks its thread and cannot be dropped).
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(1);

/// An alert event with what the agent needs to route it.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckEvent {
    pub event: AlertEvent,
    pub plugin: String,
    pub target: String,
    /// The instance's `diagnose` flag: the agent may start a diagnosis for this alert.
    pub diagnose: bool,
}

/// Receives every alert event. It is called from the engine's tasks and **must not block**
/// (hand the event to a bounded queue with `try_send`, or to a spool writer): a slow sink
/// would delay the checks.
pub type EventSink = Arc<dyn Fn(CheckEvent) + Send + Sync>;

/// What `list()` says about one running instance.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct InstanceStatus {
    pub plugin: String,
    /// The instance's `name`, else `instances[<index>]`.
    pub name: String,
    /// The file it was loaded from.
    pub file: String,
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// When the last run ended (RFC 3339), if any.
    pub last_run: Option<String>,
    /// The worst status of the last run (Warning for a failed run).
    pub last_status: Option<Status>,
    /// The last good run's measurements: (check, target, value, status).
    pub last_values: Vec<(String, String, String, Status)>,
    /// The last run's error, if it failed.
    pub last_error: Option<String>,
    pub runs: u64,
    pub skipped_runs: u64,
    /// Alert keys of this instance currently firing.
    pub firing: u64,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// The running engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct CheckEngine {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    plugins: Vec<Arc<dyn Plugin>>,
    sink: EventSink,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    origin: Instant,
    shared: Mutex<Shared>,
}

#[derive(Default)]
struct Shared {
    next_id: u64,
    instances: BTreeMap<u64, Slot>,
    alerts: HashMap<String, AlertSlot>,
    config_errors: Vec<String>,
}

impl Shared {
    /// A new instance slot under a fresh id (ids are never reused, so a stopped instance's
    /// late result cannot land in its successor's slot).
    fn add_slot(
        &mut self,
        spec: Arc<InstanceSpec>,
        cancel: CancellationToken,
        owned: BTreeSet<String>,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.instances.insert(
            id,
            Slot {
                spec,
                cancel,
                status: RunStatus::default(),
                owned,
            },
        );
        id
    }
}

struct Slot {
    spec: Arc<InstanceSpec>,
    cancel: CancellationToken,
    status: RunStatus,
    /// Alert keys of this instance whose state is not idle.
    owned: BTreeSet<String>,
}

#[derive(Default)]
struct RunStatus {
    last_run: Option<String>,
    last_status: Option<Status>,
    last_values: Vec<(String, String, String, Status)>,
    last_error: Option<String>,
    runs: u64,
    skipped: u64,
}

/// One alert key's state and what is needed to send its recovery.
struct AlertSlot {
    state: AlertState,
    labels: BTreeMap<String, String>,
    target: String,
    attrs: BTreeMap<String, String>,
    description: String,
}

impl CheckEngine {
    /// Loads `dir` and starts every instance and the directory watcher. Must be called within
    /// a tokio runtime. Configuration errors are logged and listed by
    /// [`config_errors`](Self::config_errors); they never stop the engine. Everything stops
    /// when `shutdown` is cancelled.
    pub fn start(
        dir: PathBuf,
        plugins: Vec<Arc<dyn Plugin>>,
        sink: EventSink,
        shutdown: CancellationToken,
    ) -> CheckEngine {
        let inner = Arc::new(Inner {
            dir,
            plugins,
            sink,
            shutdown,
            tracker: TaskTracker::new(),
            origin: Instant::now(),
            shared: Mutex::new(Shared::default()),
        });
        let fingerprint = dir_fingerprint(&inner.dir);
        reload(&inner);
        let watcher = inner.clone();
        inner.tracker.spawn(watch(watcher, fingerprint));
        CheckEngine { inner }
    }

    /// Every running instance, by plugin then position.
    pub fn list(&self) -> Vec<InstanceStatus> {
        let g = self.inner.lock();
        let mut out: Vec<(String, PathBuf, usize, InstanceStatus)> = g
            .instances
            .values()
            .map(|slot| {
                let s = &slot.status;
                let firing = slot
                    .owned
                    .iter()
                    .filter(|k| g.alerts.get(*k).is_some_and(|a| a.state.firing().is_some()))
                    .count() as u64;
                let status = InstanceStatus {
                    plugin: slot.spec.plugin.clone(),
                    name: slot.spec.id(),
                    file: slot.spec.file.display().to_string(),
                    interval: slot.spec.interval,
                    timeout: slot.spec.timeout,
                    last_run: s.last_run.clone(),
                    last_status: s.last_status,
                    last_values: s.last_values.clone(),
                    last_error: s.last_error.clone(),
                    runs: s.runs,
                    skipped_runs: s.skipped,
                    firing,
                };
                (
                    slot.spec.plugin.clone(),
                    slot.spec.file.clone(),
                    slot.spec.index,
                    status,
                )
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
        out.into_iter().map(|(_, _, _, s)| s).collect()
    }

    /// How many alert keys are firing (for the heartbeat's `active_alerts`).
    pub fn active_alerts(&self) -> u64 {
        let g = self.inner.lock();
        g.alerts
            .values()
            .filter(|a| a.state.firing().is_some())
            .count() as u64
    }

    /// The errors of the last (re)load, one line each, naming file and key. Empty when the
    /// directory loaded cleanly.
    pub fn config_errors(&self) -> Vec<String> {
        self.inner.lock().config_errors.clone()
    }

    /// Reloads the directory now (as the watcher does on a change; e.g. on SIGHUP).
    pub fn reload(&self) {
        reload(&self.inner);
    }

    /// Waits until every task has stopped (after `shutdown` was cancelled).
    pub async fn stopped(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

/// Runs `plugin` once, outside any engine (`tether checks run PLUGIN`): with `settings` (one
/// instance table; common keys such as thresholds are honoured), or else every one of the
/// plugin's default instances. Each run is bounded by `timeout`. Returns every measurement
/// with its status under the effective thresholds.
pub async fn run_once(
    plugin: &dyn Plugin,
    settings: Option<&toml::Table>,
    timeout: Duration,
) -> Result<Vec<(Measurement, Status)>, String> {
    let tables = match settings {
        Some(t) => vec![t.clone()],
        None => plugin.default_instances(),
    };
    let many = tables.len() > 1;
    let mut out = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let label = if settings.is_some() {
            format!("{} settings", plugin.name())
        } else {
            format!("{} default instance {i}", plugin.name())
        };
        let spec = parse_instance(plugin, table, &label).map_err(|errs| {
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let cancel = CancellationToken::new();
        let mut handle = tokio::spawn(run_check(spec.check.clone(), timeout, cancel.clone()));
        let result = match tokio::time::timeout(timeout + TIMEOUT_GRACE, &mut handle).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(join_error(e)),
            Err(_) => {
                cancel.cancel();
                handle.abort();
                Err(timed_out(timeout))
            }
        };
        let measurements = result.map_err(|e| if many { format!("{label}: {e}") } else { e })?;
        for m in measurements {
            let t = spec.thresholds_for(&m.check, &m.defaults);
            let status = judge(&m.value, &t).status;
            out.push((m, status));
        }
    }
    Ok(out)
}

/// A value for display: `93.1 %`, `12 ms`, `Critical`.
pub fn format_value(value: &Value, unit: &str) -> String {
    match value {
        Value::Status(s) => s.as_str().to_owned(),
        Value::Number(x) => {
            let n = if x.fract() == 0.0 && x.abs() < 1e15 {
                format!("{x:.0}")
            } else {
                let s = format!("{x:.2}");
                s.trim_end_matches('0').trim_end_matches('.').to_owned()
            };
            match unit {
                "" => n,
                "%" => format!("{n}%"),
                u => format!("{n} {u}"),
            }
        }
    }
}

fn timed_out(timeout: Duration) -> String {
    format!(
        "check timed out after {}",
        humantime::format_duration(timeout)
    )
}

fn join_error(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return "check run was cancelled".to_owned();
    }
    let payload = e.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned());
    match message {
        Some(m) => format!("check panicked: {m}"),
        None => "check panicked".to_owned(),
    }
}

fn to_alert_status(s: Status) -> AlertStatus {
    match s {
        Status::Ok => AlertStatus::Ok,
        Status::Info => AlertStatus::Info,
        Status::Warning => AlertStatus::Warning,
        Status::Critical => AlertStatus::Critical,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// FNV-1a of a string, for spreading first runs.
fn spread(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn first_delay(spec: &InstanceSpec) -> Duration {
    let window = spec.interval.min(MAX_START_JITTER);
    let frac = (spread(&format!("{}/{}", spec.plugin, spec.id())) % 1000) as u32;
    window * frac / 1000
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    fn deliver(&self, events: Vec<CheckEvent>) {
        for e in events {
            (self.sink)(e);
        }
    }

    fn count_skips(&self, id: u64, n: u64) {
        let mut g = self.lock();
        if let Some(slot) = g.instances.get_mut(&id) {
            let before = slot.status.skipped;
            slot.status.skipped = before.saturating_add(n);
            // Logged at the 1st, 2nd, 4th, 8th … skip, not on every one.
            if before == 0 || slot.status.skipped.ilog2() > before.ilog2() {
                tracing::warn!(
                    plugin = %slot.spec.plugin,
                    instance = %slot.spec.id(),
                    skipped_total = slot.status.skipped,
                    "check run skipped: the previous run was still going"
                );
            }
        }
    }

    /// Applies one run's outcome to instance `id` (ignored if the instance was replaced or
    /// removed meanwhile) and returns the events to send.
    fn apply(&self, id: u64, outcome: Result<Vec<Measurement>, String>) -> Vec<CheckEvent> {
        let now = self.now();
        let mut g = self.lock();
        let Shared {
            instances, alerts, ..
        } = &mut *g;
        let Some(slot) = instances.get_mut(&id) else {
            return Vec::new();
        };
        let spec = slot.spec.clone();
        let mut events = Vec::new();
        slot.status.runs = slot.status.runs.saturating_add(1);
        slot.status.last_run = Some(rfc3339_now());
        let error_labels = base_labels(&spec, CHECK_ERROR, &spec.id(), &BTreeMap::new());
        let error_key = alert_key(&error_labels);
        match outcome {
            Ok(measurements) => {
                let mut seen = BTreeSet::new();
                let mut values = Vec::new();
                let mut worst = Status::Ok;
                for m in measurements {
                    let labels = base_labels(&spec, &m.check, &m.target, &m.labels);
                    let key = alert_key(&labels);
                    let thresholds = spec.thresholds_for(&m.check, &m.defaults);
                    let verdict = judge(&m.value, &thresholds);
                    let value = format_value(&m.value, m.unit);
                    values.push((
                        m.check.clone(),
                        m.target.clone(),
                        value.clone(),
                        verdict.status,
                    ));
                    worst = worst.max(verdict.status);
                    if !seen.insert(key.clone()) {
                        tracing::debug!(plugin = %spec.plugin, check = %m.check, target = %m.target,
                            "duplicate measurement in one run; only the first counts");
                        continue;
                    }
                    let mut attrs = BTreeMap::new();
                    attrs.insert(
                        "value".to_owned(),
                        match &m.value {
                            Value::Number(x) => format_value(&Value::Number(*x), ""),
                            Value::Status(s) => s.as_str().to_owned(),
                        },
                    );
                    if !m.unit.is_empty() {
                        attrs.insert("unit".to_owned(), m.unit.to_owned());
                    }
                    if let Some(b) = verdict.bound {
                        attrs.insert("threshold".to_owned(), b.to_string());
                    }
                    attrs.insert("plugin".to_owned(), spec.plugin.clone());
                    attrs.insert("instance".to_owned(), spec.id());
                    let entry = alerts.entry(key.clone()).or_insert_with(|| AlertSlot {
                        state: AlertState::Idle,
                        labels: labels.clone(),
                        target: m.target.clone(),
                        attrs: BTreeMap::new(),
                        description: String::new(),
                    });
                    entry.labels = labels;
                    entry.target = m.target.clone();
                    entry.attrs = attrs;
                    entry.description = m.description.clone();
                    observe(&spec, &key, entry, verdict.status, now, None, &mut events);
                    track(alerts, &mut slot.owned, &key);
                }
                // A good run clears the instance's check_error.
                seen.insert(error_key.clone());
                if let Some(entry) = alerts.get_mut(&error_key) {
                    observe(
                        &spec,
                        &error_key,
                        entry,
                        Status::Ok,
                        now,
                        Some("the check runs again".to_owned()),
                        &mut events,
                    );
                    track(alerts, &mut slot.owned, &error_key);
                }
                // Keys reported before and not now count as Ok.
                let gone: Vec<String> = slot.owned.difference(&seen).cloned().collect();
                for key in gone {
                    if let Some(entry) = alerts.get_mut(&key) {
                        let note = format!("{} is no longer reported", entry.target);
                        observe(&spec, &key, entry, Status::Ok, now, Some(note), &mut events);
                    }
                    track(alerts, &mut slot.owned, &key);
                }
                slot.status.last_status = Some(worst);
                slot.status.last_values = values;
                slot.status.last_error = None;
            }
            Err(error) => {
                tracing::warn!(plugin = %spec.plugin, instance = %spec.id(), %error, "check run failed");
                let mut attrs = BTreeMap::new();
                attrs.insert("plugin".to_owned(), spec.plugin.clone());
                attrs.insert("instance".to_owned(), spec.id());
                let entry = alerts
                    .entry(error_key.clone())
                    .or_insert_with(|| AlertSlot {
                        state: AlertState::Idle,
                        labels: error_labels.clone(),
                        target: spec.id(),
                        attrs: BTreeMap::new(),
                        description: String::new(),
                    });
                entry.attrs = attrs;
                entry.description = error.clone();
                observe(
                    &spec,
                    &error_key,
                    entry,
                    Status::Warning,
                    now,
                    None,
                    &mut events,
                );
                track(alerts, &mut slot.owned, &error_key);
                slot.status.last_status = Some(Status::Warning);
                slot.status.last_error = Some(error);
            }
        }
        events
    }
}

/// Steps one key and records the event to send, if any. `note` replaces the description of an
/// Ok event.
fn observe(
    spec: &InstanceSpec,
    key: &str,
    entry: &mut AlertSlot,
    status: Status,
    now: Duration,
    note: Option<String>,
    events: &mut Vec<CheckEvent>,
) {
    if let Some(sent) = step(&mut entry.state, status, now, &spec.lifecycle) {
        let description = note.unwrap_or_else(|| entry.description.clone());
        events.push(make_event(spec, key, entry, sent, &description));
    }
}

fn make_event(
    spec: &InstanceSpec,
    key: &str,
    entry: &AlertSlot,
    status: Status,
    description: &str,
) -> CheckEvent {
    let mut attrs = entry.attrs.clone();
    if status == Status::Ok {
        attrs.remove("threshold");
    }
    CheckEvent {
        event: AlertEvent {
            event_time: unix_now(),
            event_status: to_alert_status(status),
            alert_key: key.to_owned(),
            labels: entry.labels.clone(),
            attrs,
            description: format!("{}: {description}", status.as_str()),
            description_format: "text".to_owned(),
            seq: None,
        },
        plugin: spec.plugin.clone(),
        target: entry.target.clone(),
        diagnose: spec.diagnose,
    }
}

/// Keeps `owned` and the alert map in step with the key's state: an idle key is forgotten.
fn track(alerts: &mut HashMap<String, AlertSlot>, owned: &mut BTreeSet<String>, key: &str) {
    if alerts.get(key).is_none_or(|a| a.state.is_idle()) {
        alerts.remove(key);
        owned.remove(key);
    } else {
        owned.insert(key.to_owned());
    }
}

/// The labels of an alert: the measurement's, overridden by the instance's configured ones,
/// then `name`, `plugin`, `target` and `check`.
fn base_labels(
    spec: &InstanceSpec,
    check: &str,
    target: &str,
    measured: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = measured.clone();
    labels.extend(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(name) = &spec.name {
        labels.insert("name".to_owned(), name.clone());
    }
    labels.insert("plugin".to_owned(), spec.plugin.clone());
    labels.insert("target".to_owned(), target.to_owned());
    labels.insert("check".to_owned(), check.to_owned());
    labels
}

async fn run_check(
    check: Arc<dyn Check>,
    timeout: Duration,
    cancel: CancellationToken,
) -> Result<Vec<Measurement>, String> {
    let ctx = CheckContext {
        cancel: cancel.clone(),
        timeout,
    };
    let run = check.run(ctx);
    tokio::pin!(run);
    match tokio::time::timeout(timeout, &mut run).await {
        Ok(r) => r,
        Err(_) => {
            // Cancel first and let the check see it (e.g. to kill what it started) for a
            // moment before it is dropped; its result no longer counts.
            cancel.cancel();
            let _ = tokio::time::timeout(CANCEL_GRACE, &mut run).await;
            Err(timed_out(timeout))
        }
    }
}

/// One instance's scheduler.
async fn run_instance(
    inner: Arc<Inner>,
    id: u64,
    spec: Arc<InstanceSpec>,
    cancel: CancellationToken,
) {
    let mut next = Instant::now() + first_delay(&spec);
    let mut stuck: Option<JoinHandle<Result<Vec<Measurement>, String>>> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        next += spec.interval;
        if let Some(handle) = &stuck {
            if !handle.is_finished() {
                inner.count_skips(id, 1);
                continue;
            }
            stuck = None;
        }
        let run_cancel = cancel.child_token();
        let mut handle = tokio::spawn(run_check(
            spec.check.clone(),
            spec.timeout,
            run_cancel.clone(),
        ));
        let outcome = tokio::select! {
            _ = cancel.cancelled() => {
                run_cancel.cancel();
                handle.abort();
                break;
            }
            r = tokio::time::timeout(spec.timeout + TIMEOUT_GRACE, &mut handle) => match r {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => Err(join_error(e)),
                Err(_) => {
                    // The run ignores cancellation and cannot be dropped (it blocks its
                    // thread): keep it, and skip runs until it ends.
                    run_cancel.cancel();
                    handle.abort();
                    stuck = Some(handle);
                    Err(timed_out(spec.timeout))
                }
            }
        };
        // The run is over: anything it left behind is told to stop.
        run_cancel.cancel();
        let events = inner.apply(id, outcome);
        inner.deliver(events);
        // Runs that came due while this one was going are skipped.
        let now = Instant::now();
        if next < now {
            let behind = now.duration_since(next).as_nanos();
            let interval = spec.interval.as_nanos().max(1);
            let missed = u64::try_from(behind / interval + 1).unwrap_or(u64::MAX);
            inner.count_skips(id, missed);
            next += spec
                .interval
                .saturating_mul(u32::try_from(missed).unwrap_or(u32::MAX));
        }
    }
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>, u64)>;

/// Polls the directory and reloads on a change.
async fn watch(inner: Arc<Inner>, mut fingerprint: Fingerprint) {
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            _ = tokio::time::sleep(RELOAD_POLL) => {}
        }
        let now = dir_fingerprint(&inner.dir);
        if now != fingerprint {
            fingerprint = now;
            tracing::info!(dir = %inner.dir.display(), "checks directory changed; reloading");
            reload(&inner);
        }
    }
}

/// Loads the directory and reconciles the running instances with it.
fn reload(inner: &Arc<Inner>) {
    let (specs, errors) = load_dir(&inner.dir, &inner.plugins);
    for e in &errors {
        tracing::error!(error = %e, "check configuration error; that plugin keeps its previous instances");
    }
    let broken: BTreeSet<String> = errors.iter().filter_map(|e| e.plugin.clone()).collect();
    // The directory itself could not be read: keep everything as it is.
    let unreadable = errors
        .iter()
        .any(|e| e.plugin.is_none() && e.file == inner.dir);
    let mut fresh: Vec<InstanceSpec> = specs;
    let mut to_start: Vec<(u64, Arc<InstanceSpec>, CancellationToken)> = Vec::new();
    let mut events = Vec::new();
    {
        let now = inner.now();
        let mut g = inner.lock();
        g.config_errors = errors.iter().map(ToString::to_string).collect();
        let old_ids: Vec<u64> = g.instances.keys().copied().collect();
        for old_id in old_ids {
            let Some(old) = g.instances.get(&old_id) else {
                continue;
            };
            if unreadable || broken.contains(&old.spec.plugin) {
                continue;
            }
            let pos = fresh
                .iter()
                .position(|s| s.plugin == old.spec.plugin && s.id() == old.spec.id());
            match pos {
                Some(p) if fresh[p].same_config(&old.spec) => {
                    fresh.remove(p);
                }
                Some(p) => {
                    let spec = Arc::new(fresh.remove(p));
                    let Some(old) = g.instances.remove(&old_id) else {
                        continue;
                    };
                    old.cancel.cancel();
                    tracing::info!(plugin = %spec.plugin, instance = %spec.id(), "check instance changed; restarting it");
                    let cancel = inner.shutdown.child_token();
                    let id = g.add_slot(spec.clone(), cancel.clone(), old.owned);
                    to_start.push((id, spec, cancel));
                }
                None => {
                    let Some(old) = g.instances.remove(&old_id) else {
                        continue;
                    };
                    old.cancel.cancel();
                    tracing::info!(plugin = %old.spec.plugin, instance = %old.spec.id(), "check instance removed");
                    for key in &old.owned {
                        if let Some(mut entry) = g.alerts.remove(key) {
                            observe(
                                &old.spec,
                                key,
                                &mut entry,
                                Status::Ok,
                                now,
                                Some(format!(
                                    "{} {} was removed from the configuration",
                                    old.spec.plugin,
                                    old.spec.id()
                                )),
                                &mut events,
                            );
                        }
                    }
                }
            }
        }
        for spec in fresh {
            if broken.contains(&spec.plugin) {
                continue;
            }
            let spec = Arc::new(spec);
            let cancel = inner.shutdown.child_token();
            let id = g.add_slot(spec.clone(), cancel.clone(), BTreeSet::new());
            to_start.push((id, spec, cancel));
        }
    }
    for (id, spec, cancel) in to_start {
        inner
            .tracker
            .spawn(run_instance(inner.clone(), id, spec, cancel));
    }
    inner.deliver(events);
}
