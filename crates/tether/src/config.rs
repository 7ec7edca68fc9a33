//! The agent's configuration file (TOML). Every key is checked: an unknown key, a wrong type
//! or a bad value is an error that names the key.
//!
//! ```toml
//! listen = "127.0.0.1:7700"        # WebSocket listener; "off" disables it
//! socket = "/run/tether/agent.sock" # Unix socket; default: <state_dir>/agent.sock
//! state_dir = "/var/lib/tether"     # default: ~/.local/share/tether
//!
//! max_connections_per_client = 64  # connections one credential (or Unix user) may hold
//!
//! [[clients]]                       # credentials; with none, only loopback peers are served
//! name = "alice"
//! class = "human"                   # human | agent | observer
//! token = "…"                       # or token_env = "ALICE_TOKEN"
//! max_connections = 8               # this client's own cap (default: the one above)
//!
//! [model]
//! provider = "scripted"             # replays a JSON script of model responses
//! script = "demo.json"              # default: the built-in demo script
//!
//! [tools]
//! read_dirs = ["/var/log"]          # read_file may read below these
//! shell = true                      # offer the shell tool (always needs approval)
//! shell_timeout = "60s"
//!
//! [sessions]
//! max_rounds = 20                   # model calls per turn
//! retention_events = 10000          # events kept per session
//! permission_grace = "30s"          # deny a prompt nobody eligible is attached to answer
//! permission_timeout = "10m"        # deny any prompt left this long (default: never)
//! client_queue = 1024               # frames queued per client before it is evicted
//! max_queued_inputs = 64            # inputs a session holds behind its running turn
//! max_sessions_per_client = 100     # open sessions one credential may have
//! closed_retention = "7d"           # closed sessions are removed this long after closing
//! ```

use crate::paths;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tether_engine::mcp::McpServerConfig;
use tether_engine::openai::{OpenAiConfig, OpenAiEndpoint, ToolChoice};
use tether_proto::{Class, Mode};

/// A duration written as `30s`, `5m`, `1h 30m`.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"30s\", \"5m\", \"1h\""
        ))
    })
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub name: String,
    pub class: Class,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub max_connections: Option<usize>,
}

/// One OpenAI-compatible endpoint: the keys shared by `[model]` and `[[model.fallback]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub context_window: Option<u32>,
    #[serde(default)]
    pub extra_body: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub compact_at: Option<f64>,
    #[serde(default)]
    pub include_usage: Option<bool>,
    #[serde(default)]
    pub replay_reasoning: Option<bool>,
    /// `auto` (default), `required`, `none`, or `omit` to send none.
    #[serde(default)]
    pub tool_choice: Option<String>,
    /// `false`: ask for whole answers instead of streams.
    #[serde(default)]
    pub stream: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub provider: String,
    /// `scripted`: the JSON script to replay.
    #[serde(default)]
    pub script: Option<PathBuf>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub context_window: Option<u32>,
    #[serde(default)]
    pub extra_body: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub compact_at: Option<f64>,
    #[serde(default)]
    pub include_usage: Option<bool>,
    #[serde(default)]
    pub replay_reasoning: Option<bool>,
    /// `auto` (default), `required`, `none`, or `omit` to send none.
    #[serde(default)]
    pub tool_choice: Option<String>,
    /// `false`: ask for whole answers instead of streams.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Attempts per endpoint for 429/5xx/connection errors.
    #[serde(default)]
    pub retry_attempts: Option<u32>,
    /// A stream silent this long is an error.
    #[serde(default, deserialize_with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub connect_timeout: Option<Duration>,
    /// Tried in order when the primary fails with 429/5xx/connection errors.
    #[serde(default)]
    pub fallback: Vec<EndpointSection>,
}

impl ModelSection {
    /// The endpoint keys of the primary model.
    fn primary(&self) -> EndpointSection {
        EndpointSection {
            provider: Some(self.provider.clone()),
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            api_key: self.api_key.clone(),
            api_key_env: self.api_key_env.clone(),
            max_tokens: self.max_tokens,
            max_completion_tokens: self.max_completion_tokens,
            context_window: self.context_window,
            extra_body: self.extra_body.clone(),
            compact_at: self.compact_at,
            include_usage: self.include_usage,
            replay_reasoning: self.replay_reasoning,
            tool_choice: self.tool_choice.clone(),
            stream: self.stream,
        }
    }

    /// Keys that only mean something for `provider = "openai"`.
    fn openai_keys_set(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let checks: [(&'static str, bool); 16] = [
            ("base_url", self.base_url.is_some()),
            ("model", self.model.is_some()),
            ("api_key", self.api_key.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
            ("max_tokens", self.max_tokens.is_some()),
            (
                "max_completion_tokens",
                self.max_completion_tokens.is_some(),
            ),
            ("context_window", self.context_window.is_some()),
            ("extra_body", self.extra_body.is_some()),
            ("compact_at", self.compact_at.is_some()),
            ("include_usage", self.include_usage.is_some()),
            ("replay_reasoning", self.replay_reasoning.is_some()),
            ("tool_choice", self.tool_choice.is_some()),
            ("stream", self.stream.is_some()),
            ("retry_attempts", self.retry_attempts.is_some()),
            ("idle_timeout", self.idle_timeout.is_some()),
            ("fallback", !self.fallback.is_empty()),
        ];
        for (key, set) in checks {
            if set {
                keys.push(key);
            }
        }
        keys
    }
}

fn endpoint(section: EndpointSection, key: &str) -> Result<OpenAiEndpoint> {
    if let Some(p) = &section.provider
        && p != "openai"
    {
        bail!("{key}.provider: `{p}` — only \"openai\" endpoints can be chained");
    }
    let base_url = section
        .base_url
        .ok_or_else(|| anyhow::anyhow!("{key}.base_url is required for provider = \"openai\""))?;
    let model = section
        .model
        .ok_or_else(|| anyhow::anyhow!("{key}.model is required for provider = \"openai\""))?;
    let mut e = OpenAiEndpoint::new(base_url, model);
    e.api_key = section.api_key;
    e.api_key_env = section.api_key_env;
    e.max_tokens = section.max_tokens;
    e.max_completion_tokens = section.max_completion_tokens;
    e.context_window = section.context_window;
    e.extra_body = section.extra_body.unwrap_or_default();
    if let Some(c) = section.compact_at {
        e.compact_at = c;
    }
    if let Some(u) = section.include_usage {
        e.include_usage = u;
    }
    if let Some(r) = section.replay_reasoning {
        e.replay_reasoning = r;
    }
    if let Some(t) = &section.tool_choice {
        e.tool_choice = ToolChoice::parse(&format!("{key}.tool_choice"), t)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if let Some(s) = section.stream {
        e.stream = s;
    }
    Ok(e)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSection {
    #[serde(default = "default_read_dirs")]
    pub read_dirs: Vec<PathBuf>,
    /// `log_tail` and `log_grep` only read below these.
    #[serde(default = "default_read_dirs")]
    pub log_dirs: Vec<PathBuf>,
    #[serde(default = "yes")]
    pub shell: bool,
    #[serde(default = "default_shell_timeout", deserialize_with = "duration")]
    pub shell_timeout: Duration,
}

fn default_read_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/var/log")]
}

fn yes() -> bool {
    true
}

fn default_shell_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for ToolsSection {
    fn default() -> Self {
        ToolsSection {
            read_dirs: default_read_dirs(),
            log_dirs: default_read_dirs(),
            shell: true,
            shell_timeout: default_shell_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSection {
    #[serde(default = "default_max_rounds")]
    pub max_rounds: u32,
    #[serde(default = "default_retention")]
    pub retention_events: u64,
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub permission_grace: Duration,
    #[serde(default, deserialize_with = "opt_duration")]
    pub permission_timeout: Option<Duration>,
    #[serde(default = "default_client_queue")]
    pub client_queue: usize,
    #[serde(default = "default_max_queued_inputs")]
    pub max_queued_inputs: usize,
    #[serde(default = "default_max_sessions_per_client")]
    pub max_sessions_per_client: usize,
    #[serde(default = "default_closed_retention", deserialize_with = "duration")]
    pub closed_retention: Duration,
}

fn default_max_rounds() -> u32 {
    tether_engine::DEFAULT_MAX_ROUNDS
}

fn default_retention() -> u64 {
    10_000
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_client_queue() -> usize {
    tether_mux::outbound::DEFAULT_QUEUE_FRAMES
}

fn default_max_queued_inputs() -> usize {
    tether_mux::MuxConfig::default().max_queued_inputs
}

fn default_max_sessions_per_client() -> usize {
    tether_mux::MuxConfig::default().max_sessions_per_client
}

fn default_closed_retention() -> Duration {
    tether_mux::MuxConfig::default().closed_retention
}

impl Default for SessionsSection {
    fn default() -> Self {
        SessionsSection {
            max_rounds: default_max_rounds(),
            retention_events: default_retention(),
            permission_grace: default_grace(),
            permission_timeout: None,
            client_queue: default_client_queue(),
            max_queued_inputs: default_max_queued_inputs(),
            max_sessions_per_client: default_max_sessions_per_client(),
            closed_retention: default_closed_retention(),
        }
    }
}

/// `[mcp]`: MCP servers whose tools sessions may use.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSection {
    /// `[[mcp.servers]] name, command, args, env, tools_allow, needs_permission`.
    #[serde(default)]
    pub servers: Vec<McpServerConfig>,
    /// Longest a server may take to start and list its tools.
    #[serde(default, deserialize_with = "opt_duration")]
    pub start_timeout: Option<Duration>,
    /// Longest one MCP tool call may take.
    #[serde(default, deserialize_with = "opt_duration")]
    pub call_timeout: Option<Duration>,
}

/// `[hub]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    url: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    client_cert: Option<PathBuf>,
    #[serde(default)]
    client_key: Option<PathBuf>,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    max_remote_sessions: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    remote_idle_timeout: Option<Duration>,
    #[serde(default)]
    remote_tools: Option<Vec<String>>,
    #[serde(default)]
    remote_sessions: Option<Vec<Mode>>,
    #[serde(default)]
    alert_spool_max: Option<u64>,
    #[serde(default)]
    proto_version: Option<u32>,
}

/// The hub link's settings, validated.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub url: String,
    pub token: String,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub allow_plaintext: bool,
    /// Sent at registration.
    pub labels: BTreeMap<String, String>,
    pub max_remote_sessions: usize,
    pub remote_idle_timeout: Duration,
    /// Tools remote sessions may use; `None`: the read-only ones.
    pub remote_tools: Option<Vec<String>>,
    /// Session types the hub may start.
    pub remote_sessions: Vec<Mode>,
    pub alert_spool_max: u64,
    /// The link protocol version offered (2; 1 speaks catpaw's protocol only).
    pub proto_version: u32,
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    clients: Vec<ClientEntry>,
    #[serde(default)]
    max_connections_per_client: Option<usize>,
    #[serde(default)]
    model: Option<ModelSection>,
    #[serde(default)]
    tools: ToolsSection,
    #[serde(default)]
    sessions: SessionsSection,
    #[serde(default)]
    mcp: McpSection,
    #[serde(default)]
    hub: Option<RawHub>,
    #[serde(default)]
    diagnosis: crate::autodiag::DiagnosisConfig,
    /// Where `<plugin>.toml` check files live; default `conf.d/` beside this file.
    #[serde(default)]
    checks_dir: Option<PathBuf>,
    #[serde(default)]
    notifiers: Vec<tether_checks::notify::NotifierConfig>,
}

/// Which model answers.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChoice {
    /// The built-in demo script (no `[model]` section).
    Demo,
    /// The scripted provider, chosen explicitly: `script`, or the built-in demo script.
    Scripted {
        script: Option<PathBuf>,
    },
    OpenAi(OpenAiConfig),
}

impl ModelChoice {
    /// Whether a model of the owner's answers: a real provider or the owner's own script. The
    /// built-in demo script (no `[model]`, or `provider = "scripted"` without `script`, as
    /// `tether up` writes) only shows the harness, so `diagnose` falls back to an inspection.
    pub fn answers_diagnoses(&self) -> bool {
        !matches!(
            self,
            ModelChoice::Demo | ModelChoice::Scripted { script: None }
        )
    }

    /// Whether the config names a provider (`[model]`): hub-started chat needs one; the demo
    /// script named explicitly (`tether up`) counts, so remote chat works without an API key.
    pub fn chosen(&self) -> bool {
        !matches!(self, ModelChoice::Demo)
    }
}

/// A credential with its token resolved.
#[derive(Debug, Clone)]
pub struct Credential {
    pub name: String,
    pub class: Class,
    pub token: String,
    /// Its own connection cap, if it has one.
    pub max_connections: Option<usize>,
}

/// The validated configuration, paths resolved.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where it came from (`None`: embedded defaults).
    pub source: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub clients: Vec<Credential>,
    /// Connections one credential (or Unix user) may hold at once.
    pub max_connections_per_client: usize,
    pub model: ModelChoice,
    pub tools: ToolsSection,
    pub sessions: SessionsSection,
    pub mcp: McpSection,
    pub hub: Option<HubConfig>,
    pub diagnosis: crate::autodiag::DiagnosisConfig,
    /// The check files' directory (may not exist: then no checks run).
    pub checks_dir: PathBuf,
    pub notifiers: Vec<tether_checks::notify::NotifierConfig>,
}

/// The default WebSocket listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

impl AgentConfig {
    /// Loads `explicit` (must exist), else the default location if it exists, else the
    /// embedded defaults.
    pub fn load(explicit: Option<&Path>) -> Result<AgentConfig> {
        match explicit {
            Some(path) => Self::from_file(path),
            None => {
                let default = paths::default_agent_config();
                if default.exists() {
                    Self::from_file(&default)
                } else {
                    Self::from_raw(RawConfig::default(), None)
                }
            }
        }
    }

    pub fn from_file(path: &Path) -> Result<AgentConfig> {
        // Relative paths inside the file are anchored on its directory, so it must be absolute.
        let path = &std::path::absolute(path)
            .with_context(|| format!("cannot resolve config path {}", path.display()))?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_str(&text, path)
    }

    /// Parses config text; `origin` names the file in errors and anchors relative paths.
    pub fn from_str(text: &str, origin: &Path) -> Result<AgentConfig> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: {}", origin.display(), e.to_string().trim_end()))?;
        Self::from_raw(raw, Some(origin)).with_context(|| format!("in {}", origin.display()))
    }

    fn from_raw(raw: RawConfig, source: Option<&Path>) -> Result<AgentConfig> {
        let base = source.and_then(Path::parent);
        let listen = match raw.listen.as_deref().map(str::trim) {
            None => Some(parse_addr("listen", DEFAULT_LISTEN)?),
            Some("" | "off" | "none") => None,
            Some(text) => Some(parse_addr("listen", text)?),
        };
        let state_dir = raw
            .state_dir
            .map(|p| paths::resolve(&p, base))
            .unwrap_or_else(paths::data_dir);
        let socket = raw
            .socket
            .map(|p| paths::resolve(&p, base))
            .unwrap_or_else(|| state_dir.join("agent.sock"));
        // sun_path is 108 bytes on Linux, including the terminating NUL.
        if socket.as_os_str().len() > 107 {
            bail!(
                "socket: `{}` is longer than the 107 bytes a Unix socket path may have",
                socket.display()
            );
        }

        let mut clients = Vec::new();
        for (i, c) in raw.clients.into_iter().enumerate() {
            let token = match (c.token, c.token_env) {
                (Some(t), None) => t,
                (None, Some(var)) => std::env::var(&var).with_context(|| {
                    format!("clients[{i}].token_env: environment variable {var} is not set")
                })?,
                (Some(_), Some(_)) => {
                    bail!("clients[{i}]: set either `token` or `token_env`, not both")
                }
                (None, None) => bail!(
                    "clients[{i}] (`{}`): `token` or `token_env` is required",
                    c.name
                ),
            };
            if c.max_connections == Some(0) {
                bail!(
                    "clients[{i}].max_connections (client `{}`) must be at least 1",
                    c.name
                );
            }
            clients.push(Credential {
                name: c.name,
                class: c.class,
                token,
                max_connections: c.max_connections,
            });
        }
        let max_connections_per_client = raw
            .max_connections_per_client
            .unwrap_or(tether_transport::limits::DEFAULT_MAX_PER_CLIENT);
        if max_connections_per_client == 0 {
            bail!("max_connections_per_client must be at least 1");
        }

        let model = match raw.model {
            None => ModelChoice::Demo,
            Some(m) => match m.provider.as_str() {
                "scripted" => {
                    if let Some(key) = m.openai_keys_set().first() {
                        bail!("model.{key} is only used with provider = \"openai\"");
                    }
                    ModelChoice::Scripted {
                        script: m.script.map(|s| paths::resolve(&s, base)),
                    }
                }
                "openai" => {
                    if m.script.is_some() {
                        bail!("model.script is only used with provider = \"scripted\"");
                    }
                    let primary = endpoint(m.primary(), "model")?;
                    let mut cfg = OpenAiConfig::new(primary);
                    for (i, f) in m.fallback.into_iter().enumerate() {
                        cfg.endpoints
                            .push(endpoint(f, &format!("model.fallback[{i}]"))?);
                    }
                    if let Some(n) = m.retry_attempts {
                        cfg.retry.attempts = n;
                    }
                    if let Some(d) = m.idle_timeout {
                        cfg.idle_timeout = d;
                    }
                    if let Some(d) = m.connect_timeout {
                        cfg.request_timeout = d;
                    }
                    cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
                    // Fail at start, not at the first turn, when a key's variable is unset.
                    for (i, e) in cfg.endpoints.iter().enumerate() {
                        e.resolve_api_key(&OpenAiConfig::endpoint_key(i))
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                    ModelChoice::OpenAi(cfg)
                }
                other => bail!(
                    "model.provider: unknown provider `{other}`; use \"openai\" or \"scripted\""
                ),
            },
        };

        let mut tools = raw.tools;
        tools.read_dirs = tools
            .read_dirs
            .iter()
            .map(|p| paths::resolve(p, base))
            .collect();
        tools.log_dirs = tools
            .log_dirs
            .iter()
            .map(|p| paths::resolve(p, base))
            .collect();
        if tools.shell_timeout.is_zero() {
            bail!("tools.shell_timeout must be more than 0");
        }

        let hub = match raw.hub {
            None => None,
            Some(h) => Some(hub_config(h, base)?),
        };

        let mut mcp = raw.mcp;
        tether_engine::mcp::validate(&mcp.servers).map_err(|e| anyhow::anyhow!("{e}"))?;
        for server in &mut mcp.servers {
            // A relative command path means the config's directory, like every other path.
            if server.command.contains('/') {
                server.command = paths::resolve(Path::new(&server.command), base)
                    .display()
                    .to_string();
            }
        }

        let s = &raw.sessions;
        if s.max_rounds == 0 {
            bail!("sessions.max_rounds must be at least 1");
        }
        if s.retention_events == 0 {
            bail!("sessions.retention_events must be at least 1");
        }
        if s.client_queue < 16 {
            bail!(
                "sessions.client_queue must be at least 16 (it is {})",
                s.client_queue
            );
        }
        if s.permission_grace.is_zero() {
            bail!("sessions.permission_grace must be more than 0");
        }
        if s.max_queued_inputs == 0 {
            bail!("sessions.max_queued_inputs must be at least 1");
        }
        if s.max_sessions_per_client == 0 {
            bail!("sessions.max_sessions_per_client must be at least 1");
        }
        if s.closed_retention.is_zero() {
            bail!("sessions.closed_retention must be more than 0");
        }

        Ok(AgentConfig {
            source: source.map(Path::to_owned),
            listen,
            socket,
            state_dir,
            clients,
            max_connections_per_client,
            model,
            tools,
            sessions: raw.sessions,
            mcp,
            hub,
            diagnosis: raw.diagnosis,
            checks_dir: raw
                .checks_dir
                .map(|p| paths::resolve(&p, base))
                .unwrap_or_else(|| {
                    base.map_or_else(|| paths::config_dir().join("conf.d"), |b| b.join("conf.d"))
                }),
            notifiers: raw.notifiers,
        })
    }
}

fn hub_config(h: RawHub, base: Option<&Path>) -> Result<HubConfig> {
    if h.url.trim().is_empty() {
        bail!("hub.url is empty");
    }
    let token = match (h.token, h.token_env) {
        (Some(t), None) => t,
        (None, Some(var)) => std::env::var(&var)
            .with_context(|| format!("hub.token_env: environment variable {var} is not set"))?,
        (Some(_), Some(_)) => bail!("hub: set either `token` or `token_env`, not both"),
        (None, None) => bail!("hub: `token` or `token_env` is required"),
    };
    if token.trim().is_empty() {
        bail!("hub.token is empty");
    }
    let proto_version = h.proto_version.unwrap_or(2);
    if !(1..=2).contains(&proto_version) {
        bail!("hub.proto_version must be 1 or 2 (it is {proto_version})");
    }
    let max_remote_sessions = h
        .max_remote_sessions
        .unwrap_or(tether_link::remote::DEFAULT_MAX_REMOTE_SESSIONS);
    let remote_idle_timeout = h
        .remote_idle_timeout
        .unwrap_or(tether_link::remote::DEFAULT_IDLE_TIMEOUT);
    if remote_idle_timeout.is_zero() {
        bail!("hub.remote_idle_timeout must be more than 0");
    }
    let alert_spool_max = h
        .alert_spool_max
        .unwrap_or(tether_link::spool::DEFAULT_SPOOL_MAX);
    if alert_spool_max == 0 {
        bail!("hub.alert_spool_max must be at least 1");
    }
    let resolve = |p: Option<PathBuf>| p.map(|p| paths::resolve(&p, base));
    Ok(HubConfig {
        url: h.url.trim().to_owned(),
        token,
        ca_file: resolve(h.ca_file),
        client_cert: resolve(h.client_cert),
        client_key: resolve(h.client_key),
        allow_plaintext: h.allow_plaintext,
        labels: h.labels,
        max_remote_sessions,
        remote_idle_timeout,
        remote_tools: h.remote_tools,
        remote_sessions: h
            .remote_sessions
            .unwrap_or_else(|| vec![Mode::Inspect, Mode::Diagnose, Mode::Chat]),
        alert_spool_max,
        proto_version,
    })
}

fn parse_addr(key: &str, text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|_| {
        anyhow::anyhow!("{key}: `{text}` is not an address like 127.0.0.1:7700 (or \"off\")")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig> {
        AgentConfig::from_str(text, Path::new("/etc/tether/agent.toml"))
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).expect_err("should fail"))
    }

    #[test]
    fn exec_notifiers_take_env_and_inherit_env() {
        let c = parse(
            "[[notifiers]]\nkind = \"exec\"\ncommand = \"/bin/true\"\nenv = { ROUTE = \"infra\" }\ninherit_env = true\n",
        )
        .expect("valid");
        assert_eq!(c.notifiers[0].inherit_env, Some(true));
        assert_eq!(
            c.notifiers[0].env.get("ROUTE").map(String::as_str),
            Some("infra")
        );
        let e = err("[[notifiers]]\nkind = \"exec\"\ncommand = \"x\"\ninherit_env = \"yes\"\n");
        assert!(e.contains("inherit_env"), "{e}");
    }

    #[test]
    fn embedded_defaults_are_loopback_and_demo() {
        let c = parse("").expect("empty config");
        assert_eq!(c.listen, Some(DEFAULT_LISTEN.parse().expect("addr")));
        assert_eq!(c.model, ModelChoice::Demo);
        assert!(c.socket.ends_with("agent.sock"));
        assert_eq!(c.sessions.permission_grace, Duration::from_secs(30));
        assert_eq!(c.sessions.max_queued_inputs, 64);
        assert_eq!(c.sessions.max_sessions_per_client, 100);
        assert_eq!(
            c.sessions.closed_retention,
            Duration::from_secs(7 * 24 * 3600)
        );
        let c = parse(
            "[sessions]\nmax_queued_inputs = 8\nmax_sessions_per_client = 3\nclosed_retention = \"1h\"",
        )
        .expect("config");
        let m = crate::agent::mux_config(&c);
        assert_eq!(m.max_queued_inputs, 8);
        assert_eq!(m.max_sessions_per_client, 3);
        assert_eq!(m.closed_retention, Duration::from_secs(3600));
    }

    /// The demo script answers chat (when `[model]` names it) but never counts as a model that
    /// diagnoses; a script of the owner's does both.
    #[test]
    fn only_a_model_of_the_owners_answers_diagnoses() {
        let model = |text: &str| parse(text).expect("config").model;
        let none = model("");
        assert!(!none.answers_diagnoses() && !none.chosen());
        let demo = model("[model]\nprovider = \"scripted\"");
        assert!(!demo.answers_diagnoses() && demo.chosen());
        let script = model("[model]\nprovider = \"scripted\"\nscript = \"s.json\"");
        assert!(script.answers_diagnoses() && script.chosen());
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let c =
            parse("state_dir = \"state\"\n[model]\nprovider = \"scripted\"\nscript = \"s.json\"")
                .expect("config");
        assert_eq!(c.state_dir, PathBuf::from("/etc/tether/state"));
        assert_eq!(
            c.model,
            ModelChoice::Scripted {
                script: Some(PathBuf::from("/etc/tether/s.json"))
            }
        );
    }

    #[test]
    fn every_bad_value_names_its_key() {
        assert!(err("lsten = \"x\"").contains("lsten"));
        assert!(err("listen = \"nowhere\"").contains("listen"));
        assert!(err("[sessions]\npermission_grace = \"soon\"").contains("permission_grace"));
        assert!(err("[sessions]\nmax_rounds = 0").contains("sessions.max_rounds"));
        assert!(err("[sessions]\nclient_queue = \"big\"").contains("client_queue"));
        assert!(err("[sessions]\nmax_queued_inputs = 0").contains("sessions.max_queued_inputs"));
        assert!(err("[sessions]\nmax_queued_inputs = -1").contains("max_queued_inputs"));
        assert!(
            err("[sessions]\nmax_sessions_per_client = 0")
                .contains("sessions.max_sessions_per_client")
        );
        assert!(err("[sessions]\nclosed_retention = \"0s\"").contains("sessions.closed_retention"));
        assert!(err("[sessions]\nclosed_retention = \"a week\"").contains("closed_retention"));
        assert!(
            err("[[clients]]\nname = \"a\"\nclass = \"admin\"\ntoken = \"x\"").contains("class")
        );
        assert!(err("[[clients]]\nname = \"a\"\nclass = \"human\"").contains("clients[0]"));
        assert!(err("[model]\nprovider = \"magic\"").contains("model.provider"));
        assert!(err("[model]\nprovider = \"openai\"\nmodel = \"m\"").contains("model.base_url"));
        assert!(
            err("[model]\nprovider = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\nmax_tokens = 1\nmax_completion_tokens = 1")
                .contains("max_completion_tokens")
        );
        assert!(
            err("[model]\nprovider = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n[[model.fallback]]\nmodel = \"n\"")
                .contains("model.fallback[0].base_url")
        );
        assert!(
            err("[model]\nprovider = \"scripted\"\nbase_url = \"x\"").contains("model.base_url")
        );
        assert!(err("[tools]\nshell = \"yes\"").contains("shell"));
        let openai = "[model]\nprovider = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n";
        assert_eq!(
            err(&format!("{openai}tool_choice = \"always\"")),
            "in /etc/tether/agent.toml: model.tool_choice: `always` is not a tool choice; use \"auto\" (the default), \"required\", \"none\" or \"omit\" (to send no tool_choice)"
        );
        assert!(
            err(&format!(
                "{openai}[[model.fallback]]\nbase_url = \"http://y/v1\"\nmodel = \"n\"\ntool_choice = \"\""
            ))
            .contains("model.fallback[0].tool_choice: `` is not a tool choice")
        );
        assert!(err(&format!("{openai}tool_choice = true")).contains("tool_choice"));
        assert!(
            err("[model]\nprovider = \"scripted\"\ntool_choice = \"auto\"")
                .contains("model.tool_choice is only used with provider = \"openai\"")
        );
    }

    #[test]
    fn the_pinned_openai_config_parses() {
        let c = parse(
            r#"
[model]
provider = "openai"
base_url = "http://127.0.0.1:11434/v1"
model = "qwen2.5:7b"
max_completion_tokens = 4096
context_window = 32768
extra_body = { temperature = 0.2 }

[[model.fallback]]
provider = "openai"
base_url = "http://10.0.0.2:8000/v1"
model = "small"
max_tokens = 1024
tool_choice = "omit"
stream = false
"#,
        )
        .expect("config");
        let ModelChoice::OpenAi(m) = c.model else {
            panic!("not openai: {:?}", c.model);
        };
        assert_eq!(m.endpoints.len(), 2);
        assert_eq!(m.endpoints[0].max_completion_tokens, Some(4096));
        assert_eq!(m.endpoints[0].extra_body["temperature"], 0.2);
        assert_eq!(m.endpoints[1].model, "small");
        assert_eq!(m.endpoints[0].tool_choice, ToolChoice::Auto);
        assert_eq!(m.endpoints[1].tool_choice, ToolChoice::Omit);
        assert!(m.endpoints[0].stream && !m.endpoints[1].stream);
    }

    #[test]
    fn mcp_servers_are_checked_at_load() {
        let c = parse(
            "[[mcp.servers]]\nname = \"fs\"\ncommand = \"./mcp-fs\"\nargs = [\"--root\", \"/srv\"]\ntools_allow = [\"read_*\"]\n",
        )
        .expect("config");
        assert_eq!(c.mcp.servers[0].command, "/etc/tether/./mcp-fs");
        assert!(c.mcp.servers[0].needs_permission);
        assert!(
            err("[[mcp.servers]]\nname = \"bad name\"\ncommand = \"x\"\n")
                .contains("mcp.servers[0]")
        );
        assert!(err("[[mcp.servers]]\nname = \"a\"\ncomand = \"x\"\n").contains("comand"));
    }

    #[test]
    fn hub_settings_are_checked() {
        let c = parse(
            "[hub]\nurl = \"wss://hub.example:7800\"\ntoken = \"t0k\"\nlabels = { env = \"prod\" }\nremote_tools = [\"memory\"]\n",
        )
        .expect("config");
        let hub = c.hub.expect("hub");
        assert_eq!(hub.max_remote_sessions, 4);
        assert_eq!(hub.remote_idle_timeout, Duration::from_secs(1800));
        assert_eq!(hub.labels["env"], "prod");
        assert_eq!(hub.proto_version, 2);
        assert!(err("[hub]\nurl = \"wss://h\"\n").contains("token"));
        assert!(
            err("[hub]\nurl = \"wss://h\"\ntoken = \"t\"\nproto_version = 3\n")
                .contains("hub.proto_version")
        );
        assert!(
            err("[hub]\nurl = \"wss://h\"\ntoken = \"t\"\nremote_sessions = [\"shell\"]\n")
                .contains("remote_sessions")
        );
    }

    #[test]
    fn connection_caps_are_read_and_checked() {
        let c = parse("").expect("config");
        assert_eq!(c.max_connections_per_client, 64);
        let c = parse(
            "max_connections_per_client = 10\n[[clients]]\nname = \"bot\"\nclass = \"agent\"\ntoken = \"bot-token-0123456789\"\nmax_connections = 2\n",
        )
        .expect("config");
        assert_eq!(c.max_connections_per_client, 10);
        assert_eq!(c.clients[0].max_connections, Some(2));
        assert!(err("max_connections_per_client = 0").contains("max_connections_per_client"));
        assert!(
            err("[[clients]]\nname = \"bot\"\nclass = \"agent\"\ntoken = \"bot-token-0123456789\"\nmax_connections = 0\n")
                .contains("clients[0].max_connections")
        );
        assert!(err("max_connections_per_client = -1").contains("max_connections_per_client"));
    }

    #[test]
    fn listen_can_be_turned_off() {
        assert_eq!(parse("listen = \"off\"").expect("config").listen, None);
    }
}
