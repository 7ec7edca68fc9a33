//! The hub's settings (the binary maps `tether hub --config FILE` onto this).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tether_proto::Class;

/// An operator credential (`[[operators]] name, class, token`).
#[derive(Clone, Debug)]
pub struct Operator {
    pub name: String,
    pub class: Class,
    pub token: String,
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
    /// Alerts older than this are deleted.
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
}

impl HubConfig {
    pub fn new(listen: SocketAddr, state_dir: PathBuf) -> HubConfig {
        HubConfig {
            listen,
            state_dir,
            tls: None,
            operators: Vec::new(),
            enrollment_token: None,
            alert_retention: Duration::from_secs(30 * 86_400),
            session_retention: Duration::from_secs(30 * 86_400),
            ping_interval: Duration::from_secs(30),
            read_deadline: Duration::from_secs(90),
            max_agents: 20_000,
            operator_queue: tether_mux::outbound::DEFAULT_QUEUE_FRAMES,
            max_connections_per_operator: tether_transport::limits::DEFAULT_MAX_PER_CLIENT,
        }
    }
}
