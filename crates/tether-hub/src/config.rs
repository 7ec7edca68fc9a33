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

#[derive(Clone, Debug)]
pub struct HubConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
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
}

impl HubConfig {
    pub fn new(listen: SocketAddr, state_dir: PathBuf) -> HubConfig {
        HubConfig {
            listen,
            state_dir,
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
