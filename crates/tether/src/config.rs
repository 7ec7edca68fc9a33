//! The agent's configuration file (TOML). Every key is checked: an unknown key, a wrong type
//! or a bad value is an error that names the key.
//!
//! ```toml
//! listen = "127.0.0.1:7700"        # WebSocket listener; "off" disables it
//! socket = "/run/tether/agent.sock" # Unix socket; default: <state_dir>/agent.sock
//! state_dir = "/var/lib/tether"     # default: ~/.local/share/tether
//!
//! [[clients]]                       # credentials; with none, only loopback peers are served
//! name = "alice"
//! class = "human"                   # human | agent | observer
//! token = "…"                       # or token_env = "ALICE_TOKEN"
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
//! ```

use crate::paths;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tether_proto::Class;

/// A duration written as `30s`, `5m`, `1h 30m`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub provider: String,
    /// `scripted`: the JSON script to replay.
    #[serde(default)]
    pub script: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSection {
    #[serde(default = "default_read_dirs")]
    pub read_dirs: Vec<PathBuf>,
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

impl Default for SessionsSection {
    fn default() -> Self {
        SessionsSection {
            max_rounds: default_max_rounds(),
            retention_events: default_retention(),
            permission_grace: default_grace(),
            permission_timeout: None,
            client_queue: default_client_queue(),
        }
    }
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
    model: Option<ModelSection>,
    #[serde(default)]
    tools: ToolsSection,
    #[serde(default)]
    sessions: SessionsSection,
}

/// Which model answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChoice {
    /// The built-in demo script (no `[model]` section).
    Demo,
    Scripted {
        script: PathBuf,
    },
}

/// A credential with its token resolved.
#[derive(Debug, Clone)]
pub struct Credential {
    pub name: String,
    pub class: Class,
    pub token: String,
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
    pub model: ModelChoice,
    pub tools: ToolsSection,
    pub sessions: SessionsSection,
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
            clients.push(Credential {
                name: c.name,
                class: c.class,
                token,
            });
        }

        let model = match raw.model {
            None => ModelChoice::Demo,
            Some(m) => match m.provider.as_str() {
                "scripted" => match m.script {
                    Some(script) => ModelChoice::Scripted {
                        script: paths::resolve(&script, base),
                    },
                    None => ModelChoice::Demo,
                },
                other => {
                    bail!("model.provider: unknown provider `{other}`; this build knows `scripted`")
                }
            },
        };

        let mut tools = raw.tools;
        tools.read_dirs = tools
            .read_dirs
            .iter()
            .map(|p| paths::resolve(p, base))
            .collect();
        if tools.shell_timeout.is_zero() {
            bail!("tools.shell_timeout must be more than 0");
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

        Ok(AgentConfig {
            source: source.map(Path::to_owned),
            listen,
            socket,
            state_dir,
            clients,
            model,
            tools,
            sessions: raw.sessions,
        })
    }
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
    fn embedded_defaults_are_loopback_and_demo() {
        let c = parse("").expect("empty config");
        assert_eq!(c.listen, Some(DEFAULT_LISTEN.parse().expect("addr")));
        assert_eq!(c.model, ModelChoice::Demo);
        assert!(c.socket.ends_with("agent.sock"));
        assert_eq!(c.sessions.permission_grace, Duration::from_secs(30));
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
                script: PathBuf::from("/etc/tether/s.json")
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
        assert!(
            err("[[clients]]\nname = \"a\"\nclass = \"admin\"\ntoken = \"x\"").contains("class")
        );
        assert!(err("[[clients]]\nname = \"a\"\nclass = \"human\"").contains("clients[0]"));
        assert!(err("[model]\nprovider = \"magic\"").contains("model.provider"));
        assert!(err("[tools]\nshell = \"yes\"").contains("shell"));
    }

    #[test]
    fn listen_can_be_turned_off() {
        assert_eq!(parse("listen = \"off\"").expect("config").listen, None);
    }
}
