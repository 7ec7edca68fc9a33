//! The hub's alert model: what an alert is, how events move it through its lifecycle, and
//! how silences match it. Pure logic, no I/O: the store ([`crate::store`]) persists it, the
//! agent link ([`crate::agents`]) and the HTTP intake ([`crate::intake`]) feed it, the
//! operator API ([`crate::operators`]) shows it.
//!
//! * An **alert** is one `(agent, alert_key)` for an agent's alert, or one fingerprint for an
//!   external (Alertmanager, Grafana) alert. It has a `state` ([`AlertState`]: firing or
//!   resolved), a `severity` ([`Severity`]), a readable `title`, `labels`, `annotations`, its
//!   times (`first_at`, `started_at`, `last_at`, `resolved_at`), an event count, who
//!   acknowledged it, which silences cover it, its diagnoses and (external) how it was routed.
//! * An **event** ([`Observation`]) is one report from the source: an agent's alert event, or
//!   one alert of a webhook notification. Every event is kept as the alert's timeline
//!   ([`TimelineEvent`]); [`apply`] moves the alert.
//! * catpaw statuses map `Critical`/`Warning`/`Info` → firing with that severity, `Ok` →
//!   resolved (keeping the severity it had). External alerts take `status` (`firing`,
//!   `resolved`) and the `severity` label ([`severity_from_label`]).
//! * A resolved alert that fires again is the same alert: `started_at` moves to the new
//!   episode, `resolved_at` and the acknowledgement are cleared.
//! * A **silence** ([`Silence`]) covers the alerts whose labels its matchers all match
//!   ([`Matcher`]: equality or a fully anchored regex), from `starts_at` until `ends_at`.
//!   Whether an alert is silenced is worked out when it is read, against the hub's clock, so
//!   a silence ends on time without anything having to run.

use crate::store::rfc3339_ms;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use tether_proto::link::{AlertEvent, AlertStatus};

/// Where an alert comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A tether or catpaw agent's checks, over the link.
    Agent,
    /// Prometheus Alertmanager's webhook (`POST /api/v1/alerts/alertmanager`).
    Alertmanager,
    /// Grafana's webhook contact point (`POST /api/v1/alerts/grafana`).
    Grafana,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Agent => "agent",
            Source::Alertmanager => "alertmanager",
            Source::Grafana => "grafana",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "agent" => Some(Source::Agent),
            "alertmanager" => Some(Source::Alertmanager),
            "grafana" => Some(Source::Grafana),
            _ => None,
        }
    }
}

/// Firing or resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<AlertState> {
        match s {
            "firing" => Some(AlertState::Firing),
            "resolved" => Some(AlertState::Resolved),
            _ => None,
        }
    }
}

/// How bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "critical" => Some(Severity::Critical),
            "warning" => Some(Severity::Warning),
            "info" => Some(Severity::Info),
            _ => None,
        }
    }
}

/// The severity of an external alert from its `severity` label (any case): `critical`,
/// `crit`, `page`, `error`, `err`, `high`, `fatal`, `emergency`, `emerg`, `alert`,
/// `disaster` → critical; `info`, `informational`, `low`, `none`, `notice`, `debug` → info;
/// anything else, or no label → warning.
pub fn severity_from_label(label: Option<&str>) -> Severity {
    let Some(v) = label else {
        return Severity::Warning;
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "critical" | "crit" | "page" | "error" | "err" | "high" | "fatal" | "emergency"
        | "emerg" | "alert" | "disaster" => Severity::Critical,
        "info" | "informational" | "low" | "none" | "notice" | "debug" => Severity::Info,
        _ => Severity::Warning,
    }
}

/// An agent status as (state, severity): `Ok` is resolved and says no severity.
pub fn agent_status(status: AlertStatus) -> (AlertState, Option<Severity>) {
    match status {
        AlertStatus::Critical => (AlertState::Firing, Some(Severity::Critical)),
        AlertStatus::Warning => (AlertState::Firing, Some(Severity::Warning)),
        AlertStatus::Info => (AlertState::Firing, Some(Severity::Info)),
        AlertStatus::Ok => (AlertState::Resolved, None),
    }
}

/// Titles are one line, this long at most.
const TITLE_MAX: usize = 160;

fn one_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if line.len() <= TITLE_MAX {
        return line.to_owned();
    }
    let mut end = TITLE_MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// An agent alert's title: its check and target (`disk space_used_pct /var`, from the labels
/// tether's checks set: `name` or `plugin`, `check`, `target`), else the first line of its
/// description, else its key. The key stays the identity; the title is for people.
pub fn agent_title(labels: &BTreeMap<String, String>, description: &str, key: &str) -> String {
    tether_proto::link::alert_title(labels, description, key)
}

/// An external alert's title: its `alertname`, else the `summary` annotation, else the
/// fingerprint.
pub fn external_title(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    fingerprint: &str,
) -> String {
    [labels.get("alertname"), annotations.get("summary")]
        .into_iter()
        .flatten()
        .map(|t| one_line(t))
        .find(|t| !t.is_empty())
        .unwrap_or_else(|| fingerprint.to_owned())
}

/// One report about an alert from its source, made uniform: an agent's event, or one alert
/// of a webhook notification. Stored as a [`TimelineEvent`] and [`apply`]d to the alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub state: AlertState,
    /// `None`: the event says nothing about severity (an agent's `Ok`).
    pub severity: Option<Severity>,
    /// The status as the source said it: `Critical`…`Ok`, or `firing` / `resolved`.
    pub status: String,
    /// When it happened at the source (unix ms): an agent event's time; an external alert's
    /// `startsAt` (firing) or `endsAt` (resolved).
    pub at_ms: i64,
    /// External: the episode's `startsAt` (unix ms). A resolution of an older episode than
    /// the alert's current one, or a firing of an episode already resolved, is late: kept in
    /// the timeline, the state left alone.
    pub starts_ms: Option<i64>,
    pub title: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// External: `generatorURL`.
    pub url: Option<String>,
    /// Agent (version 2): the event's `seq`; stored once per (agent, seq).
    pub seq: Option<u64>,
    /// External: what makes a delivery of the same news the same (see
    /// [`external_dedupe_key`]); stored once per (alert, key).
    pub dedupe: Option<String>,
}

/// An agent's event as an [`Observation`]. Its `attrs` and `description` (with
/// `description_format` when set) become annotations.
pub fn observe_agent_event(e: &AlertEvent) -> Observation {
    let (state, severity) = agent_status(e.event_status);
    let mut annotations = e.attrs.clone();
    annotations.insert("description".into(), e.description.clone());
    if !e.description_format.is_empty() {
        annotations.insert("description_format".into(), e.description_format.clone());
    }
    Observation {
        state,
        severity,
        status: e.event_status.as_str().to_owned(),
        at_ms: e.event_time.saturating_mul(1000),
        starts_ms: None,
        title: agent_title(&e.labels, &e.description, &e.alert_key),
        labels: e.labels.clone(),
        annotations,
        url: None,
        seq: e.seq,
        dedupe: None,
    }
}

/// The identity of an external notification's alert event: the same alert (`fingerprint`)
/// in the same status for the same episode (`startsAt`, and `endsAt` once resolved) is the
/// same news, however often it is delivered — a retried webhook, or Alertmanager repeating a
/// group — and is stored once. FNV-1a over the parts, hex.
pub fn external_dedupe_key(
    fingerprint: &str,
    state: AlertState,
    starts_ms: i64,
    ends_ms: Option<i64>,
) -> String {
    let text = match state {
        AlertState::Firing => format!("{fingerprint}\0firing\0{starts_ms}"),
        AlertState::Resolved => {
            format!(
                "{fingerprint}\0resolved\0{starts_ms}\0{}",
                ends_ms.unwrap_or(0)
            )
        }
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn ser_ms<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_ms(*ms))
}

fn ser_opt_ms<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&rfc3339_ms(*ms)),
        None => s.serialize_none(),
    }
}

/// Who acknowledged an alert.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AckInfo {
    /// The operator's credential name.
    pub by: String,
    pub comment: String,
    #[serde(serialize_with = "ser_ms")]
    pub at: i64,
}

/// How an external alert was routed to a host, or why it was not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The `[[alert_routes]]` entry that decided (`alert_routes[0]`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The label whose host part was matched (`instance`, `host`, `hostname`, `nodename`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The host (or agent) looked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What happened, for people: "label instance=web-01:9100: matched agent web-01 by
    /// hostname", or why it is a fleet alert.
    pub reason: String,
}

/// Why the hub did not diagnose an alert automatically (a cooldown, a budget, a silence),
/// and when it decided so. Set by the automatic diagnosis
/// ([`crate::store::Store::note_diagnosis_skipped`]); cleared when a diagnosis is linked or
/// the alert fires again.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SkipInfo {
    pub reason: String,
    #[serde(serialize_with = "ser_ms")]
    pub at: i64,
}

/// A diagnosis of an alert: a session started for it, its report, or both.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnosis {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The report's id in `reports.list`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_id: Option<i64>,
    #[serde(serialize_with = "ser_ms")]
    pub created_at: i64,
}

/// An alert, as stored and as operators see it (`alerts.list`, `alert` frames). Times are
/// unix ms here and RFC 3339 on the wire.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub alert_id: i64,
    pub source: Source,
    /// External: the `[[alert_sources]]` name that sent it last.
    pub source_name: Option<String>,
    /// The host it is about; `null` for a fleet alert (an external alert no agent matched).
    pub agent_id: Option<String>,
    pub hostname: Option<String>,
    /// Agent: the event's `alert_key`; external: the fingerprint.
    pub alert_key: String,
    pub title: String,
    pub severity: Severity,
    pub state: AlertState,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// External: `generatorURL`.
    pub url: Option<String>,
    /// The first event ever.
    #[serde(serialize_with = "ser_ms")]
    pub first_at: i64,
    /// The start of the current (or last) firing episode.
    #[serde(serialize_with = "ser_ms")]
    pub started_at: i64,
    /// The latest event.
    #[serde(serialize_with = "ser_ms")]
    pub last_at: i64,
    #[serde(serialize_with = "ser_opt_ms")]
    pub resolved_at: Option<i64>,
    pub event_count: u64,
    /// The acknowledgement of the current episode (cleared when it fires again).
    pub ack: Option<AckInfo>,
    /// Whether an active silence covers it now, and which.
    pub silenced: bool,
    pub silenced_by: Vec<i64>,
    /// External: how it was routed (or why not).
    pub route: Option<Route>,
    /// Diagnosis sessions and reports, oldest first.
    pub diagnoses: Vec<Diagnosis>,
    /// Why it was not diagnosed automatically, if it was not (see [`SkipInfo`]).
    pub diagnosis_skipped: Option<SkipInfo>,
    /// When the hub last changed it (an event, an acknowledgement, a route).
    #[serde(serialize_with = "ser_ms")]
    pub updated_at: i64,
}

impl Alert {
    /// A new alert from its first event (`alert_id` 0 until stored).
    pub fn new(source: Source, alert_key: &str, obs: &Observation, now_ms: i64) -> Alert {
        Alert {
            alert_id: 0,
            source,
            source_name: None,
            agent_id: None,
            hostname: None,
            alert_key: alert_key.to_owned(),
            title: obs.title.clone(),
            // An alert first heard of as resolved (an `Ok` after a restart) is at most info.
            severity: obs.severity.unwrap_or(Severity::Info),
            state: obs.state,
            labels: obs.labels.clone(),
            annotations: obs.annotations.clone(),
            url: obs.url.clone(),
            first_at: obs.starts_ms.unwrap_or(obs.at_ms).min(obs.at_ms),
            started_at: obs.starts_ms.unwrap_or(obs.at_ms),
            last_at: obs.at_ms,
            resolved_at: (obs.state == AlertState::Resolved).then_some(obs.at_ms),
            event_count: 1,
            ack: None,
            silenced: false,
            silenced_by: Vec::new(),
            route: None,
            diagnoses: Vec::new(),
            diagnosis_skipped: None,
            updated_at: now_ms,
        }
    }

    /// The labels silences are matched against: the alert's own, plus `hostname`,
    /// `agent_id`, `source` and `alert_key` where the labels do not set them.
    pub fn match_labels(&self) -> BTreeMap<String, String> {
        let mut l = self.labels.clone();
        let mut add = |k: &str, v: Option<&str>| {
            if let Some(v) = v {
                l.entry(k.to_owned()).or_insert_with(|| v.to_owned());
            }
        };
        add("hostname", self.hostname.as_deref());
        add("agent_id", self.agent_id.as_deref());
        add("source", Some(self.source.as_str()));
        add("alert_key", Some(&self.alert_key));
        l
    }

    /// Fills `silenced` / `silenced_by` from the silences active at `now_ms`.
    pub fn set_silences(&mut self, silences: &[Silence], now_ms: i64) {
        let labels = self.match_labels();
        self.silenced_by = silences
            .iter()
            .filter(|s| s.is_active(now_ms) && s.matches(&labels))
            .map(|s| s.silence_id)
            .collect();
        self.silenced = !self.silenced_by.is_empty();
    }
}

/// What happened to an alert (`alert` frames carry it as `change`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Its first event.
    Created,
    /// It was resolved and fires again.
    Fired,
    /// It was firing and is resolved.
    Resolved,
    /// Another event in the same state (count, times, labels, severity).
    Updated,
    /// An operator acknowledged it.
    Acked,
    /// A silence now covers it.
    Silenced,
    /// The silence covering it was expired.
    Unsilenced,
    /// A diagnosis session or report was linked to it.
    Diagnosed,
    /// The automatic diagnosis passed it over (`diagnosis_skipped` says why).
    Skipped,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Fired => "fired",
            Change::Resolved => "resolved",
            Change::Updated => "updated",
            Change::Acked => "acked",
            Change::Silenced => "silenced",
            Change::Unsilenced => "unsilenced",
            Change::Diagnosed => "diagnosed",
            Change::Skipped => "skipped",
        }
    }
}

/// Moves `alert` by one more event (not its first: see [`Alert::new`]); returns what
/// changed.
///
/// * Agent events apply in the order they arrive (an agent sends them in order).
/// * External ones carry their episode (`starts_ms`, the source's `startsAt`), and the
///   newest episode heard of wins whatever order notifications arrive in: an event of an
///   older episode than the alert's current one, or a firing of the current episode once it
///   is resolved, is late — counted and kept in the timeline, nothing else moves. So the same
///   set of notifications gives the same state in any order.
pub fn apply(alert: &mut Alert, obs: &Observation, now_ms: i64) -> Change {
    alert.event_count += 1;
    alert.first_at = alert
        .first_at
        .min(obs.at_ms)
        .min(obs.starts_ms.unwrap_or(obs.at_ms));
    alert.last_at = alert.last_at.max(obs.at_ms);
    alert.updated_at = now_ms;
    let before = alert.state;
    let mut new_episode = false;
    if let Some(s) = obs.starts_ms {
        let late = s < alert.started_at
            || (s == alert.started_at
                && before == AlertState::Resolved
                && obs.state == AlertState::Firing);
        if late {
            return Change::Updated;
        }
        if s > alert.started_at {
            alert.started_at = s;
            new_episode = true;
        }
    }
    alert.title = obs.title.clone();
    alert.labels = obs.labels.clone();
    alert.annotations = obs.annotations.clone();
    if obs.url.is_some() {
        alert.url = obs.url.clone();
    }
    if let Some(s) = obs.severity {
        alert.severity = s;
    }
    alert.state = obs.state;
    match (before, obs.state) {
        (AlertState::Resolved, AlertState::Firing) => {
            if obs.starts_ms.is_none() {
                alert.started_at = obs.at_ms;
            }
            alert.resolved_at = None;
            // A new episode: a new acknowledgement, and a new decision about diagnosing it.
            alert.ack = None;
            alert.diagnosis_skipped = None;
            Change::Fired
        }
        (AlertState::Firing, AlertState::Resolved) => {
            alert.resolved_at = Some(obs.at_ms);
            Change::Resolved
        }
        (AlertState::Resolved, AlertState::Resolved) => {
            // The episode's resolution stays the first heard of; a newer episode's replaces it.
            if new_episode || alert.resolved_at.is_none() {
                alert.resolved_at = Some(obs.at_ms);
            }
            Change::Updated
        }
        (AlertState::Firing, AlertState::Firing) => Change::Updated,
    }
}

/// One event of an alert's timeline (`alert.events`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineEvent {
    pub event_id: i64,
    pub alert_id: i64,
    /// As the source said it: `Critical`, `Warning`, `Info`, `Ok`, `firing`, `resolved`.
    pub status: String,
    pub state: AlertState,
    /// `null` for an agent's `Ok`.
    pub severity: Option<Severity>,
    /// When it happened at the source.
    #[serde(serialize_with = "ser_ms")]
    pub at: i64,
    #[serde(serialize_with = "ser_ms")]
    pub received_at: i64,
    /// Agent (version 2): its seq.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The agent that sent it (agent events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// One acknowledgement (the history of an alert's, in `alert.events`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AckRecord {
    pub by: String,
    pub comment: String,
    #[serde(serialize_with = "ser_ms")]
    pub at: i64,
}

/// The longest regex a matcher may hold.
pub const MAX_MATCHER_PATTERN: usize = 1024;

/// One label condition of a silence: `name` equals `value`, or (`is_regex`) matches it as a
/// fully anchored regex. A label an alert does not have counts as the empty string (as in
/// Alertmanager), so `{name: "team", value: ""}` matches alerts without a `team` label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub is_regex: bool,
}

/// A [`Matcher`] ready to match.
#[derive(Clone, Debug)]
pub struct CompiledMatcher {
    matcher: Matcher,
    regex: Option<regex_automata::meta::Regex>,
}

impl CompiledMatcher {
    pub fn new(m: &Matcher) -> Result<CompiledMatcher, String> {
        if m.name.trim().is_empty() {
            return Err("`name` must not be empty".into());
        }
        let regex = if m.is_regex {
            if m.value.len() > MAX_MATCHER_PATTERN {
                return Err(format!(
                    "the regex is {} bytes; the limit is {MAX_MATCHER_PATTERN}",
                    m.value.len()
                ));
            }
            let anchored = format!("^(?:{})$", m.value);
            let r = regex_automata::meta::Regex::builder()
                .configure(regex_automata::meta::Regex::config().nfa_size_limit(Some(1 << 20)))
                .build(&anchored)
                .map_err(|e| format!("`{}` is not a regex: {e}", m.value))?;
            Some(r)
        } else {
            None
        };
        Ok(CompiledMatcher {
            matcher: m.clone(),
            regex,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels
            .get(&self.matcher.name)
            .map(String::as_str)
            .unwrap_or("");
        match &self.regex {
            Some(r) => r.is_match(v),
            None => v == self.matcher.value,
        }
    }
}

/// A silence: while active (`starts_at` ≤ now < `ends_at`) it covers every alert its
/// matchers all match.
#[derive(Clone, Debug, Serialize)]
pub struct Silence {
    pub silence_id: i64,
    pub matchers: Vec<Matcher>,
    pub comment: String,
    pub created_by: String,
    #[serde(serialize_with = "ser_ms")]
    pub created_at: i64,
    #[serde(serialize_with = "ser_ms")]
    pub starts_at: i64,
    #[serde(serialize_with = "ser_ms")]
    pub ends_at: i64,
    /// Who expired it early, if someone did.
    pub expired_by: Option<String>,
    /// `active` or `expired` at the time it was read (set by [`Silence::with_state`]).
    pub state: &'static str,
    #[serde(skip)]
    compiled: Vec<CompiledMatcher>,
}

impl Silence {
    /// A silence from stored parts; its matchers were checked when it was created.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        silence_id: i64,
        matchers: Vec<Matcher>,
        comment: String,
        created_by: String,
        created_at: i64,
        starts_at: i64,
        ends_at: i64,
        expired_by: Option<String>,
    ) -> Silence {
        // A matcher that no longer compiles (it did when created) matches nothing.
        let compiled = matchers
            .iter()
            .filter_map(|m| CompiledMatcher::new(m).ok())
            .collect::<Vec<_>>();
        let usable = compiled.len() == matchers.len();
        Silence {
            silence_id,
            matchers,
            comment,
            created_by,
            created_at,
            starts_at,
            // An unusable silence is over: it must never cover everything.
            ends_at: if usable { ends_at } else { starts_at },
            expired_by,
            state: "active",
            compiled,
        }
    }

    pub fn is_active(&self, now_ms: i64) -> bool {
        self.starts_at <= now_ms && now_ms < self.ends_at
    }

    /// Sets `state` as of `now_ms`.
    pub fn with_state(mut self, now_ms: i64) -> Silence {
        self.state = if self.is_active(now_ms) {
            "active"
        } else {
            "expired"
        };
        self
    }

    /// Whether every matcher matches `labels` (see [`Alert::match_labels`]).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.compiled.is_empty() && self.compiled.iter().all(|m| m.matches(labels))
    }
}

/// Checks a new silence's matchers: at least one, each valid, and at least one that does
/// not match the empty string (a silence may not cover every alert). The error names the
/// matcher (`matchers[1].value: …`).
pub fn check_matchers(matchers: &[Matcher]) -> Result<Vec<CompiledMatcher>, String> {
    if matchers.is_empty() {
        return Err("field `matchers`: at least one matcher is required".into());
    }
    let mut out = Vec::with_capacity(matchers.len());
    for (i, m) in matchers.iter().enumerate() {
        let c = CompiledMatcher::new(m).map_err(|e| {
            let field = if e.starts_with("`name`") {
                "name"
            } else {
                "value"
            };
            format!("field `matchers[{i}].{field}`: {e}")
        })?;
        out.push(c);
    }
    let empty = BTreeMap::new();
    if out.iter().all(|c| c.matches(&empty)) {
        return Err(
            "field `matchers`: every matcher matches an alert without that label; at least one must need a value (a silence may not cover every alert)"
                .into(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(state: AlertState, sev: Option<Severity>, at: i64) -> Observation {
        Observation {
            state,
            severity: sev,
            status: state.as_str().into(),
            at_ms: at,
            starts_ms: None,
            title: "t".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            url: None,
            seq: None,
            dedupe: None,
        }
    }

    #[test]
    fn an_alert_fires_resolves_and_fires_again() {
        let mut a = Alert::new(
            Source::Agent,
            "k",
            &obs(AlertState::Firing, Some(Severity::Warning), 1_000),
            1,
        );
        assert_eq!(
            (a.state, a.severity, a.event_count),
            (AlertState::Firing, Severity::Warning, 1)
        );
        assert_eq!(
            apply(
                &mut a,
                &obs(AlertState::Firing, Some(Severity::Critical), 2_000),
                2
            ),
            Change::Updated
        );
        assert_eq!(a.severity, Severity::Critical);
        a.ack = Some(AckInfo {
            by: "alice".into(),
            comment: String::new(),
            at: 3,
        });
        assert_eq!(
            apply(&mut a, &obs(AlertState::Resolved, None, 3_000), 3),
            Change::Resolved
        );
        assert_eq!(
            (a.resolved_at, a.severity),
            (Some(3_000), Severity::Critical)
        );
        assert!(a.ack.is_some(), "resolving keeps the acknowledgement");
        assert_eq!(
            apply(
                &mut a,
                &obs(AlertState::Firing, Some(Severity::Warning), 4_000),
                4
            ),
            Change::Fired
        );
        assert_eq!(
            (a.started_at, a.resolved_at, a.first_at),
            (4_000, None, 1_000)
        );
        assert!(a.ack.is_none(), "a new episode needs a new acknowledgement");
        assert_eq!((a.event_count, a.last_at), (4, 4_000));
    }

    #[test]
    fn a_late_external_event_moves_nothing() {
        let firing = |s| Observation {
            starts_ms: Some(s),
            ..obs(AlertState::Firing, Some(Severity::Warning), s)
        };
        let resolved = |s, e| Observation {
            starts_ms: Some(s),
            ..obs(AlertState::Resolved, Some(Severity::Warning), e)
        };
        let mut a = Alert::new(Source::Alertmanager, "fp", &firing(1_000), 1);
        assert_eq!(apply(&mut a, &resolved(1_000, 5_000), 2), Change::Resolved);
        // The same episode's firing delivered late: counted, not reopened.
        assert_eq!(apply(&mut a, &firing(1_000), 3), Change::Updated);
        assert_eq!(a.state, AlertState::Resolved);
        // A new episode fires; then the old one's resolution arrives late.
        assert_eq!(apply(&mut a, &firing(9_000), 4), Change::Fired);
        assert_eq!(apply(&mut a, &resolved(1_000, 5_000), 5), Change::Updated);
        assert_eq!((a.state, a.started_at), (AlertState::Firing, 9_000));
    }

    #[test]
    fn catpaw_statuses_map_to_state_and_severity() {
        use tether_proto::link::AlertStatus;
        let cases = [
            (
                AlertStatus::Critical,
                AlertState::Firing,
                Some(Severity::Critical),
            ),
            (
                AlertStatus::Warning,
                AlertState::Firing,
                Some(Severity::Warning),
            ),
            (AlertStatus::Info, AlertState::Firing, Some(Severity::Info)),
            (AlertStatus::Ok, AlertState::Resolved, None),
        ];
        for (status, state, severity) in cases {
            assert_eq!(agent_status(status), (state, severity), "{status:?}");
            let e = AlertEvent {
                event_time: 1_700_000_000,
                event_status: status,
                alert_key: "k".into(),
                labels: BTreeMap::new(),
                attrs: BTreeMap::from([("threshold".to_owned(), "90".to_owned())]),
                description: "/var is full".into(),
                description_format: "text".into(),
                seq: Some(3),
            };
            let o = observe_agent_event(&e);
            assert_eq!((o.state, o.severity), (state, severity));
            assert_eq!(
                o.status,
                status.as_str(),
                "the timeline keeps catpaw's word"
            );
            assert_eq!(o.at_ms, 1_700_000_000_000);
            assert_eq!(o.annotations["threshold"], "90");
            assert_eq!(o.annotations["description"], "/var is full");
            assert_eq!(o.annotations["description_format"], "text");
        }
        // Warning, then Ok: resolved, and it keeps the severity it had.
        let warn = obs(AlertState::Firing, Some(Severity::Warning), 1);
        let mut a = Alert::new(Source::Agent, "k", &warn, 1);
        apply(&mut a, &obs(AlertState::Resolved, None, 2), 2);
        assert_eq!(
            (a.state, a.severity),
            (AlertState::Resolved, Severity::Warning)
        );
    }

    mod lifecycle_props {
        use super::*;
        use proptest::prelude::*;

        fn status() -> impl Strategy<Value = Option<Severity>> {
            prop_oneof![
                Just(Some(Severity::Critical)),
                Just(Some(Severity::Warning)),
                Just(Some(Severity::Info)),
                Just(None),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Agent events (catpaw statuses; `None` is Ok) against a reference model: the
            /// state is the last event's, the severity the last non-Ok one's (info when only
            /// Ok was heard), `fired`/`resolved` exactly at the transitions, an
            /// acknowledgement lasts until the next firing.
            #[test]
            fn agent_events_follow_the_reference_model(events in proptest::collection::vec(status(), 1..40)) {
                let ob = |i: usize, sev: Option<Severity>| {
                    let state = if sev.is_some() { AlertState::Firing } else { AlertState::Resolved };
                    obs(state, sev, 1_000 * (i as i64 + 1))
                };
                let mut a = Alert::new(Source::Agent, "k", &ob(0, events[0]), 0);
                let mut severity = events[0].unwrap_or(Severity::Info);
                let mut resolved_at = events[0].is_none().then_some(1_000);
                for (i, sev) in events.iter().enumerate().skip(1) {
                    let before = a.state;
                    a.ack = Some(AckInfo { by: "alice".into(), comment: String::new(), at: 0 });
                    let change = apply(&mut a, &ob(i, *sev), i as i64);
                    let at = 1_000 * (i as i64 + 1);
                    if let Some(s) = sev {
                        severity = *s;
                    }
                    let expected = match (before, sev.is_some()) {
                        (AlertState::Resolved, true) => { resolved_at = None; Change::Fired }
                        (AlertState::Firing, false) => { resolved_at = Some(at); Change::Resolved }
                        _ => Change::Updated,
                    };
                    prop_assert_eq!(change, expected);
                    prop_assert_eq!(a.ack.is_none(), change == Change::Fired);
                    if change == Change::Fired {
                        prop_assert_eq!(a.started_at, at);
                    }
                }
                let last_state = if events[events.len() - 1].is_some() { AlertState::Firing } else { AlertState::Resolved };
                prop_assert_eq!(a.state, last_state);
                prop_assert_eq!(a.severity, severity);
                prop_assert_eq!(a.resolved_at, resolved_at);
                prop_assert_eq!(a.resolved_at.is_some(), a.state == AlertState::Resolved);
                prop_assert_eq!(a.event_count, events.len() as u64);
                prop_assert_eq!((a.first_at, a.last_at), (1_000, 1_000 * events.len() as i64));
            }

            /// External notifications about up to four episodes (episode k fires at
            /// `starts_k` and resolves at `ends_k`, one after the other), delivered in any
            /// order, any number of times: the alert ends up in the newest episode heard of,
            /// resolved exactly when that episode's resolution was heard, whatever the order.
            #[test]
            fn external_events_give_the_same_state_in_any_order(
                deliveries in proptest::collection::vec((0usize..4, any::<bool>()), 1..30)
            ) {
                let starts = |k: usize| 100_000 * (k as i64 + 1);
                let ends = |k: usize| starts(k) + 50_000;
                let ob = |(k, resolved): (usize, bool)| Observation {
                    starts_ms: Some(starts(k)),
                    ..if resolved {
                        obs(AlertState::Resolved, Some(Severity::Warning), ends(k))
                    } else {
                        obs(AlertState::Firing, Some(Severity::Warning), starts(k))
                    }
                };
                let run = |order: &[(usize, bool)]| {
                    let mut a = Alert::new(Source::Alertmanager, "fp", &ob(order[0]), 0);
                    for d in &order[1..] {
                        apply(&mut a, &ob(*d), 0);
                    }
                    a
                };
                let newest = deliveries.iter().map(|d| d.0).max().unwrap_or(0);
                let resolved = deliveries.contains(&(newest, true));
                for order in [deliveries.clone(), deliveries.iter().rev().copied().collect()] {
                    let a = run(&order);
                    prop_assert_eq!(a.started_at, starts(newest));
                    prop_assert_eq!(a.state == AlertState::Resolved, resolved);
                    prop_assert_eq!(a.resolved_at, resolved.then(|| ends(newest)));
                    prop_assert_eq!(a.event_count, deliveries.len() as u64);
                    let first = deliveries.iter().map(|d| d.0).min().unwrap_or(0);
                    prop_assert_eq!(a.first_at, starts(first));
                }
            }
        }
    }

    #[test]
    fn external_severity_comes_from_the_label() {
        assert_eq!(severity_from_label(Some("CRITICAL")), Severity::Critical);
        assert_eq!(severity_from_label(Some("page")), Severity::Critical);
        assert_eq!(severity_from_label(Some("info")), Severity::Info);
        assert_eq!(severity_from_label(Some("warning")), Severity::Warning);
        assert_eq!(severity_from_label(Some("whatever")), Severity::Warning);
        assert_eq!(severity_from_label(None), Severity::Warning);
    }

    #[test]
    fn titles_are_readable() {
        let l = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            agent_title(
                &l(&[
                    ("plugin", "disk"),
                    ("check", "space_used_pct"),
                    ("target", "/var")
                ]),
                "d",
                "k"
            ),
            "disk space_used_pct /var"
        );
        assert_eq!(
            agent_title(&l(&[]), "\n  /var is 93% full\nmore", "k"),
            "/var is 93% full"
        );
        assert_eq!(agent_title(&l(&[]), "", "k"), "k");
        assert_eq!(
            external_title(&l(&[("alertname", "DiskFull")]), &l(&[]), "fp"),
            "DiskFull"
        );
        assert_eq!(external_title(&l(&[]), &l(&[("summary", "S")]), "fp"), "S");
        assert_eq!(external_title(&l(&[]), &l(&[]), "fp"), "fp");
    }

    fn m(name: &str, value: &str, is_regex: bool) -> Matcher {
        Matcher {
            name: name.into(),
            value: value.into(),
            is_regex,
        }
    }

    #[test]
    fn matchers_are_checked_and_anchored() {
        let labels = BTreeMap::from([
            ("alertname".to_owned(), "DiskFull".to_owned()),
            ("instance".to_owned(), "web-01:9100".to_owned()),
        ]);
        let c = check_matchers(&[m("instance", "web-0[0-9]:.*", true)]).expect("valid");
        assert!(c[0].matches(&labels));
        let c = check_matchers(&[m("instance", "web", true)]).expect("valid");
        assert!(!c[0].matches(&labels), "regexes are anchored");
        let c = check_matchers(&[m("alertname", "DiskFull", false)]).expect("valid");
        assert!(c[0].matches(&labels));
        let e = check_matchers(&[m("a", "x", false), m("b", "(", true)]).expect_err("bad regex");
        assert!(e.starts_with("field `matchers[1].value`"), "{e}");
        let e = check_matchers(&[m("team", "", false), m("x", ".*", true)]).expect_err("too wide");
        assert!(e.contains("every alert"), "{e}");
        let e = check_matchers(&[]).expect_err("none");
        assert!(e.contains("at least one"), "{e}");
        let e = check_matchers(&[m(" ", "x", false)]).expect_err("no name");
        assert!(e.starts_with("field `matchers[0].name`"), "{e}");
    }

    #[test]
    fn a_silence_covers_while_active() {
        let s = Silence::new(
            7,
            vec![m("alertname", "DiskFull", false)],
            "c".into(),
            "alice".into(),
            0,
            1_000,
            2_000,
            None,
        );
        let mut a = Alert::new(
            Source::Alertmanager,
            "fp",
            &Observation {
                labels: BTreeMap::from([("alertname".to_owned(), "DiskFull".to_owned())]),
                ..obs(AlertState::Firing, Some(Severity::Warning), 0)
            },
            0,
        );
        a.set_silences(std::slice::from_ref(&s), 999);
        assert!(!a.silenced);
        a.set_silences(std::slice::from_ref(&s), 1_000);
        assert_eq!((a.silenced, a.silenced_by.clone()), (true, vec![7]));
        a.set_silences(std::slice::from_ref(&s), 2_000);
        assert!(!a.silenced, "over at ends_at");
        assert_eq!(s.clone().with_state(2_000).state, "expired");
    }
}
