//! The hub's settings (the binary maps `tether hub --config FILE` onto this).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tether_proto::Class;

/// An operator credential (`[[operators]] name, class, token`).
#[derive(Clone, Debug)]
pub struct Operator {
    pub name: String,
    pub class: Class,
    pub token: String,
}

/// A sender of external alerts (`[[alert_sources]] name, token`): an Alertmanager or Grafana
/// posting to `/api/v1/alerts/alertmanager` or `/api/v1/alerts/grafana` with
/// `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct AlertSource {
    pub name: String,
    pub token: String,
}

impl std::fmt::Debug for AlertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertSource")
            .field("name", &self.name)
            .field("token", &"…")
            .finish()
    }
}

/// A routing override for external alerts (`[[alert_routes]] match = { label = "value" },
/// agent = "<hostname or agent id>"`): an alert whose labels equal every `match` pair goes to
/// that agent. Routes are tried in order; the first that matches wins.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRoute {
    pub matchers: BTreeMap<String, String>,
    pub agent: String,
}

/// `[diagnosis]`: the hub diagnoses alerts by itself. A firing alert of one of `sources`
/// and `severities`, not silenced and routed to an agent, starts a `diagnose` session on
/// that agent, within the cooldown and budgets below; every alert passed over says why
/// (`diagnosis_skipped`).
#[derive(Clone, Debug, PartialEq)]
pub struct DiagnosisConfig {
    /// Severities diagnosed (default: critical).
    pub severities: Vec<crate::alerts::Severity>,
    /// Sources diagnosed (default: alertmanager, grafana). An agent's own alerts are
    /// diagnosed by the agent (`diagnose = true` on the check); add `agent` only for agents
    /// that do not (catpaw), or the alert may be diagnosed twice.
    pub sources: Vec<crate::alerts::Source>,
    /// One diagnosis per (agent, alertname) per this long.
    pub cooldown: Duration,
    /// Diagnoses running at once on one agent.
    pub max_per_agent: usize,
    /// Diagnoses running at once in the fleet.
    pub max_fleet: usize,
    /// Tokens the hub's diagnoses may spend per UTC day, fleet-wide, as the agents report
    /// them on `turn_ended`; 0: no limit.
    pub daily_tokens: u64,
    /// A diagnosis still running after this long stops counting against the limits (its
    /// agent went away for good, or it waits for an approval nobody gives).
    pub timeout: Duration,
}

impl Default for DiagnosisConfig {
    fn default() -> Self {
        DiagnosisConfig {
            severities: vec![crate::alerts::Severity::Critical],
            sources: vec![
                crate::alerts::Source::Alertmanager,
                crate::alerts::Source::Grafana,
            ],
            cooldown: Duration::from_secs(30 * 60),
            max_per_agent: 1,
            max_fleet: 8,
            daily_tokens: 2_000_000,
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// What a notifier is told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotifyOn {
    /// An alert started firing (or fired again).
    Firing,
    /// An alert resolved.
    Resolved,
    /// A diagnosis report was stored with an alert.
    Report,
    /// A permission prompt in a hub session has waited for a human longer than
    /// `approval_wait`.
    ApprovalWaiting,
}

impl NotifyOn {
    pub const ALL: [NotifyOn; 4] = [
        NotifyOn::Firing,
        NotifyOn::Resolved,
        NotifyOn::Report,
        NotifyOn::ApprovalWaiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Firing => "firing",
            NotifyOn::Resolved => "resolved",
            NotifyOn::Report => "report",
            NotifyOn::ApprovalWaiting => "approval_waiting",
        }
    }

    pub fn parse(s: &str) -> Option<NotifyOn> {
        NotifyOn::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// The message format of a notifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyKind {
    /// A Slack incoming webhook: `{"text", "blocks"}`.
    Slack,
    /// Any HTTP endpoint: the event as JSON.
    Webhook,
}

impl NotifyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Slack => "slack",
            NotifyKind::Webhook => "webhook",
        }
    }
}

/// `[[notify]]`: where the hub posts alert news.
#[derive(Clone)]
pub struct NotifyConfig {
    /// Shown in logs and metrics (default `<kind>-<index>`).
    pub name: String,
    pub kind: NotifyKind,
    /// Where to POST (often a secret: never logged).
    pub url: String,
    pub on: Vec<NotifyOn>,
    /// The alerts it is told about (firing, resolved, report), by severity (default: all).
    pub severities: Vec<crate::alerts::Severity>,
    /// How long a prompt waits for a human before `approval_waiting` is sent (default 60 s).
    pub approval_wait: Duration,
    /// Each attempt's deadline (default 10 s).
    pub timeout: Duration,
    /// Attempts after the first, with backoff from 1 s doubling to 60 s (default 5).
    pub retries: u32,
}

impl NotifyConfig {
    pub fn new(name: &str, kind: NotifyKind, url: &str, on: Vec<NotifyOn>) -> NotifyConfig {
        NotifyConfig {
            name: name.to_owned(),
            kind,
            url: url.to_owned(),
            on,
            severities: vec![
                crate::alerts::Severity::Critical,
                crate::alerts::Severity::Warning,
                crate::alerts::Severity::Info,
            ],
            approval_wait: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            retries: 5,
        }
    }
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &"…")
            .field("on", &self.on)
            .field("severities", &self.severities)
            .field("approval_wait", &self.approval_wait)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

/// The hub's clock: the system clock, or (tests) a manual one that moves only when told.
/// Everything time-dependent in the alert model — silences starting and ending, receive
/// times — reads it, so a test can expire a silence without waiting.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock standing at `start_ms` (unix milliseconds) until [`Clock::advance`]d.
    pub fn manual(start_ms: i64) -> Clock {
        Clock(Some(Arc::new(AtomicI64::new(start_ms))))
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Some(t) => t.load(Ordering::SeqCst),
            None => crate::store::now_ms(),
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.0 {
            t.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(t) => write!(f, "Clock::manual({})", t.load(Ordering::SeqCst)),
            None => f.write_str("Clock::system()"),
        }
    }
}

/// Where the hub keeps its state (`[store]`).
#[derive(Clone, Debug, Default)]
pub enum StoreConfig {
    /// `hub.db` in the state directory (no `[store]`).
    #[default]
    Sqlite,
    /// A PostgreSQL database (`[store] url`), which several hub replicas may share.
    Postgres(Box<crate::store::PgSettings>),
}

#[derive(Clone, Debug)]
pub struct HubConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// The store: SQLite in `state_dir` unless `[store] url` names a PostgreSQL database.
    pub store: StoreConfig,
    /// PEM certificate chain and key: serve HTTPS/WSS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub operators: Vec<Operator>,
    /// One shared token any agent may register with (catpaw's model); off by default.
    pub enrollment_token: Option<String>,
    /// Who may post external alerts (Alertmanager, Grafana); none by default.
    pub alert_sources: Vec<AlertSource>,
    /// Overrides of the default routing of external alerts to hosts.
    pub alert_routes: Vec<AlertRoute>,
    /// Alert events older than this are deleted, and resolved alerts not updated since.
    pub alert_retention: Duration,
    /// Closed sessions (and their events) older than this are deleted.
    pub session_retention: Duration,
    /// Ping period and read deadline on the agent link.
    pub ping_interval: Duration,
    pub read_deadline: Duration,
    /// Agents connected at most; past it an agent gets `disconnect` with `retry_after_sec`.
    pub max_agents: usize,
    /// Events buffered per operator before it is evicted.
    pub operator_queue: usize,
    /// `/v1/ws` connections one operator credential may hold at once.
    pub max_connections_per_operator: usize,
    /// The clock of the alert model (the system clock but in tests).
    pub clock: Clock,
    /// Automatic diagnosis (`[diagnosis]`); `None`: off.
    pub diagnosis: Option<DiagnosisConfig>,
    /// Notifiers (`[[notify]]`).
    pub notify: Vec<NotifyConfig>,
    /// The console's address as people reach it, for links in notifications (default: the
    /// address the hub listens on).
    pub console_url: Option<String>,
}

impl HubConfig {
    pub fn new(listen: SocketAddr, state_dir: PathBuf) -> HubConfig {
        HubConfig {
            listen,
            state_dir,
            store: StoreConfig::Sqlite,
            tls: None,
            operators: Vec::new(),
            enrollment_token: None,
            alert_sources: Vec::new(),
            alert_routes: Vec::new(),
            alert_retention: Duration::from_secs(30 * 86_400),
            session_retention: Duration::from_secs(30 * 86_400),
            ping_interval: Duration::from_secs(30),
            read_deadline: Duration::from_secs(90),
            max_agents: 20_000,
            operator_queue: tether_mux::outbound::DEFAULT_QUEUE_FRAMES,
            max_connections_per_operator: tether_transport::limits::DEFAULT_MAX_PER_CLIENT,
            clock: Clock::system(),
            diagnosis: None,
            notify: Vec::new(),
            console_url: None,
        }
    }

    /// Checks what the config file parser cannot: alert sources with names and long enough,
    /// distinct tokens (none an operator's), and routes that say something.
    pub fn validate(&self) -> Result<(), String> {
        let min = tether_transport::auth::MIN_TOKEN_LEN;
        for (i, s) in self.alert_sources.iter().enumerate() {
            if s.name.trim().is_empty() {
                return Err(format!("alert_sources[{i}].name: must not be empty"));
            }
            if s.token.len() < min {
                return Err(format!(
                    "alert_sources[{i}] (`{}`).token: {} characters; use at least {min}",
                    s.name,
                    s.token.len()
                ));
            }
            for (j, other) in self.alert_sources.iter().enumerate().take(i) {
                if other.name == s.name {
                    return Err(format!(
                        "alert_sources[{i}].name: `{}` is also alert_sources[{j}]'s name",
                        s.name
                    ));
                }
                if other.token == s.token {
                    return Err(format!(
                        "alert_sources[{i}] (`{}`).token: the same as alert_sources[{j}]'s; give each source its own",
                        s.name
                    ));
                }
            }
            if let Some(o) = self.operators.iter().find(|o| o.token == s.token) {
                return Err(format!(
                    "alert_sources[{i}] (`{}`).token: the same as operator `{}`'s; an alert source's token must not open the operator API",
                    s.name, o.name
                ));
            }
        }
        if let Some(d) = &self.diagnosis {
            if d.severities.is_empty() {
                return Err("diagnosis.severities: must name at least one severity (critical, warning, info)".into());
            }
            if d.sources.is_empty() {
                return Err("diagnosis.sources: must name at least one source (alertmanager, grafana, agent)".into());
            }
            if d.max_per_agent == 0 {
                return Err("diagnosis.max_per_agent: must be at least 1".into());
            }
            if d.max_fleet == 0 {
                return Err("diagnosis.max_fleet: must be at least 1".into());
            }
        }
        for (i, n) in self.notify.iter().enumerate() {
            let what = format!("notify[{i}] (`{}`)", n.name);
            if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
                return Err(format!("{what}.url: must be an http:// or https:// URL"));
            }
            if n.on.is_empty() {
                return Err(format!(
                    "{what}.on: must name at least one of firing, resolved, report, approval_waiting"
                ));
            }
            if n.severities.is_empty() {
                return Err(format!(
                    "{what}.severities: must name at least one of critical, warning, info"
                ));
            }
            if n.timeout.is_zero() {
                return Err(format!("{what}.timeout: must be more than 0"));
            }
            for (j, other) in self.notify.iter().enumerate().take(i) {
                if other.name == n.name {
                    return Err(format!(
                        "notify[{i}].name: `{}` is also notify[{j}]'s name",
                        n.name
                    ));
                }
            }
        }
        if let Some(u) = &self.console_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(format!(
                "console_url: `{u}` is not an http:// or https:// URL"
            ));
        }
        for (i, r) in self.alert_routes.iter().enumerate() {
            if r.matchers.is_empty() {
                return Err(format!(
                    "alert_routes[{i}].match: must name at least one label, e.g. match = {{ job = \"node\" }}"
                ));
            }
            if let Some(k) = r.matchers.keys().find(|k| k.trim().is_empty()) {
                return Err(format!(
                    "alert_routes[{i}].match: `{k}` is not a label name"
                ));
            }
            if r.agent.trim().is_empty() {
                return Err(format!(
                    "alert_routes[{i}].agent: must name an agent (hostname or agent id)"
                ));
            }
        }
        Ok(())
    }
}
