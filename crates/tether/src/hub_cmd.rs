//! `tether hub` (the central server), its credential commands, and `tether up` (a hub and a
//! local agent in one process, for trying tether on one machine).

use crate::agent::{Core, shutdown_signal};
use crate::config::AgentConfig;
use crate::paths;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tether_hub::store::Store;
use tether_hub::{HubConfig, Operator};
use tether_proto::Class;

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"30d\""
        ))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperator {
    name: String,
    class: Class,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_env: Option<String>,
}

/// `[[alert_sources]]`: an Alertmanager or Grafana allowed to post alerts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertSource {
    name: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_env: Option<String>,
}

/// `[[alert_routes]]`: `match = { label = "value" }`, `agent = "<hostname or agent id>"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertRoute {
    #[serde(rename = "match")]
    matchers: BTreeMap<String, String>,
    agent: String,
}

/// `[diagnosis]`: the hub's automatic diagnosis of alerts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiagnosis {
    /// `false` keeps the section but turns the diagnosis off.
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    severities: Option<Vec<String>>,
    #[serde(default)]
    sources: Option<Vec<String>>,
    #[serde(default, deserialize_with = "duration")]
    cooldown: Option<Duration>,
    #[serde(default)]
    max_per_agent: Option<usize>,
    #[serde(default)]
    max_fleet: Option<usize>,
    #[serde(default)]
    daily_tokens: Option<u64>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
}

/// `[[notify]]`: a Slack incoming webhook or a generic webhook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    #[serde(default)]
    name: Option<String>,
    kind: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    url_env: Option<String>,
    #[serde(default)]
    on: Option<Vec<String>>,
    #[serde(default)]
    severities: Option<Vec<String>>,
    #[serde(default, deserialize_with = "duration")]
    approval_wait: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    retries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    #[serde(default, deserialize_with = "duration")]
    alerts: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    sessions: Option<Duration>,
}

/// `[store]`: a PostgreSQL database instead of `hub.db` in the state directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    url_env: Option<String>,
    #[serde(default)]
    pool_size: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    query_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    replica_lease: Option<Duration>,
}

/// `[store]` → the store's settings (no `[store]`: SQLite in the state directory).
fn store_config(s: RawStore) -> Result<tether_hub::StoreConfig> {
    let url = match (s.url, s.url_env) {
        (Some(u), None) => u,
        (None, Some(v)) => env_secret("store.url_env", &v)?,
        (Some(_), Some(_)) => bail!("store: set either `url` or `url_env`, not both"),
        (None, None) => bail!(
            "store: `url` or `url_env` is required (a postgres:// URL); leave out [store] to keep the SQLite store in state_dir"
        ),
    };
    let mut pg = tether_hub::store::PgSettings::new(&url).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(n) = s.pool_size {
        pg.pool_size = n;
    }
    if let Some(d) = s.query_timeout {
        pg.query_timeout = d;
    }
    if let Some(d) = s.connect_timeout {
        pg.connect_timeout = d;
    }
    if let Some(d) = s.replica_lease {
        pg.replica_lease = d;
    }
    pg.validate().map_err(|e| anyhow::anyhow!(e))?;
    Ok(tether_hub::StoreConfig::Postgres(Box::new(pg)))
}

/// `hub.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    tls_cert: Option<PathBuf>,
    #[serde(default)]
    tls_key: Option<PathBuf>,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default)]
    enrollment_token: Option<String>,
    #[serde(default)]
    enrollment_token_env: Option<String>,
    #[serde(default)]
    operators: Vec<RawOperator>,
    #[serde(default)]
    alert_sources: Vec<RawAlertSource>,
    #[serde(default)]
    alert_routes: Vec<RawAlertRoute>,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    diagnosis: Option<RawDiagnosis>,
    #[serde(default)]
    notify: Vec<RawNotify>,
    #[serde(default)]
    console_url: Option<String>,
    #[serde(default)]
    max_agents: Option<usize>,
    #[serde(default)]
    max_connections_per_operator: Option<usize>,
    #[serde(default)]
    store: Option<RawStore>,
}

/// The default hub listener.
pub const DEFAULT_HUB_LISTEN: &str = "127.0.0.1:7800";

/// A loaded hub config.
pub struct HubFile {
    pub config: HubConfig,
    pub allow_plaintext: bool,
    pub source: Option<PathBuf>,
}

fn env_secret(key: &str, var: &str) -> Result<String> {
    std::env::var(var).with_context(|| format!("{key}: environment variable {var} is not set"))
}

pub fn default_hub_config() -> PathBuf {
    paths::config_dir().join("hub.toml")
}

impl HubFile {
    /// `explicit` (must exist), else `~/.config/tether/hub.toml` if present, else defaults.
    pub fn load(explicit: Option<&Path>) -> Result<HubFile> {
        let path = match explicit {
            Some(p) => Some(std::path::absolute(p)?),
            None => Some(default_hub_config()).filter(|p| p.exists()),
        };
        let raw: RawHub = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read hub config {}", p.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.to_string().trim_end()))?
            }
            None => RawHub::default(),
        };
        let base = path.as_deref().and_then(Path::parent);
        let ctx = |e: anyhow::Error| match &path {
            Some(p) => e.context(format!("in {}", p.display())),
            None => e,
        };
        Self::from_raw(raw, base)
            .map_err(ctx)
            .map(|(config, allow_plaintext)| HubFile {
                config,
                allow_plaintext,
                source: path,
            })
    }

    fn from_raw(raw: RawHub, base: Option<&Path>) -> Result<(HubConfig, bool)> {
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_HUB_LISTEN);
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            anyhow::anyhow!("listen: `{listen_text}` is not an address like 127.0.0.1:7800")
        })?;
        let state_dir = raw
            .state_dir
            .map(|p| paths::resolve(&p, base))
            .unwrap_or_else(|| paths::data_dir().join("hub"));
        let mut config = HubConfig::new(listen, state_dir);
        config.tls = match (raw.tls_cert, raw.tls_key) {
            (Some(c), Some(k)) => Some((paths::resolve(&c, base), paths::resolve(&k, base))),
            (None, None) => None,
            _ => bail!("tls_cert and tls_key go together: set both or neither"),
        };
        config.enrollment_token = match (raw.enrollment_token, raw.enrollment_token_env) {
            (Some(t), None) => Some(t),
            (None, Some(v)) => Some(env_secret("enrollment_token_env", &v)?),
            (None, None) => None,
            _ => bail!("set enrollment_token or enrollment_token_env, not both"),
        };
        if let Some(t) = &config.enrollment_token
            && t.len() < tether_transport::auth::MIN_TOKEN_LEN
        {
            bail!(
                "enrollment_token is {} characters; use at least {}",
                t.len(),
                tether_transport::auth::MIN_TOKEN_LEN
            );
        }
        for (i, o) in raw.operators.into_iter().enumerate() {
            let token = match (o.token, o.token_env) {
                (Some(t), None) => t,
                (None, Some(v)) => env_secret(&format!("operators[{i}].token_env"), &v)?,
                (Some(_), Some(_)) => {
                    bail!("operators[{i}]: set either `token` or `token_env`, not both")
                }
                (None, None) => bail!(
                    "operators[{i}] (`{}`): `token` or `token_env` is required",
                    o.name
                ),
            };
            config.operators.push(Operator {
                name: o.name,
                class: o.class,
                token,
            });
        }
        for (i, a) in raw.alert_sources.into_iter().enumerate() {
            let token = match (a.token, a.token_env) {
                (Some(t), None) => t,
                (None, Some(v)) => env_secret(&format!("alert_sources[{i}].token_env"), &v)?,
                (Some(_), Some(_)) => {
                    bail!("alert_sources[{i}]: set either `token` or `token_env`, not both")
                }
                (None, None) => bail!(
                    "alert_sources[{i}] (`{}`): `token` or `token_env` is required",
                    a.name
                ),
            };
            config.alert_sources.push(tether_hub::AlertSource {
                name: a.name,
                token,
            });
        }
        config.alert_routes = raw
            .alert_routes
            .into_iter()
            .map(|r| tether_hub::AlertRoute {
                matchers: r.matchers,
                agent: r.agent,
            })
            .collect();
        if let Some(d) = raw.diagnosis
            && d.enabled != Some(false)
        {
            config.diagnosis = Some(diagnosis_config(d)?);
        }
        for (i, n) in raw.notify.into_iter().enumerate() {
            config.notify.push(notify_config(i, n)?);
        }
        config.console_url = raw.console_url;
        if let Some(s) = raw.store {
            config.store = store_config(s)?;
        }
        // Names, token lengths, clashes with operators, empty routes: said here, at load,
        // with the entry's index.
        config.validate().map_err(|e| anyhow::anyhow!(e))?;
        if let Some(d) = raw.retention.alerts {
            config.alert_retention = d;
        }
        if let Some(d) = raw.retention.sessions {
            config.session_retention = d;
        }
        if let Some(n) = raw.max_agents {
            if n == 0 {
                bail!("max_agents must be at least 1");
            }
            config.max_agents = n;
        }
        if let Some(n) = raw.max_connections_per_operator {
            if n == 0 {
                bail!("max_connections_per_operator must be at least 1");
            }
            config.max_connections_per_operator = n;
        }
        Ok((config, raw.allow_plaintext))
    }
}

const SEVERITIES: &str = "critical, warning or info";

/// A list of names from hub.toml, each parsed by `parse`; a bad one is named with its key and
/// the accepted names (`notify[0].on: \`later\` is not firing, …`).
fn parse_names<T>(
    key: &str,
    names: &[String],
    parse: impl Fn(&str) -> Option<T>,
    accepted: &str,
) -> Result<Vec<T>> {
    names
        .iter()
        .map(|s| parse(s).ok_or_else(|| anyhow::anyhow!("{key}: `{s}` is not {accepted}")))
        .collect()
}

fn diagnosis_config(d: RawDiagnosis) -> Result<tether_hub::DiagnosisConfig> {
    let mut c = tether_hub::DiagnosisConfig::default();
    if let Some(list) = d.severities {
        c.severities = parse_names(
            "diagnosis.severities",
            &list,
            tether_hub::alerts::Severity::parse,
            SEVERITIES,
        )?;
    }
    if let Some(list) = d.sources {
        c.sources = parse_names(
            "diagnosis.sources",
            &list,
            tether_hub::alerts::Source::parse,
            "alertmanager, grafana or agent",
        )?;
    }
    if let Some(v) = d.cooldown {
        c.cooldown = v;
    }
    if let Some(v) = d.max_per_agent {
        c.max_per_agent = v;
    }
    if let Some(v) = d.max_fleet {
        c.max_fleet = v;
    }
    if let Some(v) = d.daily_tokens {
        c.daily_tokens = v;
    }
    if let Some(v) = d.timeout {
        c.timeout = v;
    }
    Ok(c)
}

fn notify_config(i: usize, n: RawNotify) -> Result<tether_hub::NotifyConfig> {
    let kind = match n.kind.as_str() {
        "slack" => tether_hub::NotifyKind::Slack,
        "webhook" => tether_hub::NotifyKind::Webhook,
        other => bail!("notify[{i}].kind: `{other}` is not slack or webhook"),
    };
    let url = match (n.url, n.url_env) {
        (Some(u), None) => u,
        (None, Some(v)) => env_secret(&format!("notify[{i}].url_env"), &v)?,
        (Some(_), Some(_)) => bail!("notify[{i}]: set either `url` or `url_env`, not both"),
        (None, None) => bail!("notify[{i}]: `url` or `url_env` is required"),
    };
    let on = match n.on {
        None => tether_hub::NotifyOn::ALL.to_vec(),
        Some(list) => parse_names(
            &format!("notify[{i}].on"),
            &list,
            tether_hub::NotifyOn::parse,
            "firing, resolved, report or approval_waiting",
        )?,
    };
    let name = n.name.unwrap_or_else(|| format!("{}-{i}", kind.as_str()));
    let mut c = tether_hub::NotifyConfig::new(&name, kind, &url, on);
    if let Some(list) = n.severities {
        c.severities = parse_names(
            &format!("notify[{i}].severities"),
            &list,
            tether_hub::alerts::Severity::parse,
            SEVERITIES,
        )?;
    }
    if let Some(v) = n.approval_wait {
        c.approval_wait = v;
    }
    if let Some(v) = n.timeout {
        c.timeout = v;
    }
    if let Some(v) = n.retries {
        c.retries = v;
    }
    Ok(c)
}

/// `tether hub`
pub async fn run(file: HubFile) -> Result<()> {
    let running = tether_hub::start(file.config.clone(), file.allow_plaintext)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(
        url = %running.url(),
        state_dir = %file.config.state_dir.display(),
        operators = file.config.operators.len(),
        config = %file.source.as_ref().map_or_else(|| "built-in defaults".to_owned(), |p| p.display().to_string()),
        "tether hub ready"
    );
    shutdown_signal().await;
    tracing::info!("shutting down: asking agents to come back later");
    running.stop().await;
    Ok(())
}

/// The store the hub config names (`[store] url`, else `hub.db` in the state directory): the
/// token commands write where every hub replica reads.
fn open_store(file: &HubFile) -> Result<Arc<dyn Store>> {
    tether_hub::store::open_store(&file.config).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `tether hub token create`: prints the token once; only its hash is kept.
pub fn token_create(file: &HubFile, name: &str, labels: &[(String, String)]) -> Result<String> {
    if name.trim().is_empty() {
        bail!("--name must not be empty");
    }
    let store = open_store(file)?;
    let token = tether_hub::tokens::generate().map_err(|e| anyhow::anyhow!(e))?;
    let labels: BTreeMap<String, String> = labels.iter().cloned().collect();
    store
        .insert_token(name, &tether_hub::tokens::hash(&token), &labels)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(token)
}

pub fn token_list(file: &HubFile) -> Result<()> {
    let store = open_store(file)?;
    let tokens = store.list_tokens().map_err(|e| anyhow::anyhow!("{e}"))?;
    if tokens.is_empty() {
        outln!("no agent tokens (create one with `tether hub token create --name NAME`)")?;
        return Ok(());
    }
    outln!(
        "{:<36}  {:<20}  {:<8}  {:<36}  CREATED",
        "ID",
        "NAME",
        "STATE",
        "AGENT"
    )?;
    for t in tokens {
        outln!(
            "{:<36}  {:<20}  {:<8}  {:<36}  {}",
            t.id,
            t.name,
            if t.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            },
            t.agent_id.unwrap_or_else(|| "-".into()),
            t.created_at
        )?;
    }
    Ok(())
}

pub fn token_revoke(file: &HubFile, which: &str) -> Result<()> {
    let store = open_store(file)?;
    match store
        .revoke_token(which)
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        0 => bail!("no active token named or with id `{which}`"),
        n => {
            outln!(
                "revoked {n} token(s); agents using them are refused from their next connection"
            )?;
            Ok(())
        }
    }
}

/// `tether up`: writes `hub.toml` and `agent.toml` on first run (fresh tokens, printed once),
/// then runs the hub and a local agent linked to it over loopback. `port` (`--port`) always
/// wins over the files, which it is written into only when they are created.
pub async fn up(port: Option<u16>) -> Result<()> {
    let config_dir = paths::config_dir();
    let hub_path = config_dir.join("hub.toml");
    let agent_path = paths::default_agent_config();
    let mut first_run_tokens: Option<(String, String)> = None;
    if !hub_path.exists() && !agent_path.exists() {
        tether_host::perms::private_dir(&config_dir)
            .with_context(|| format!("cannot create {}", config_dir.display()))?;
        let data = paths::data_dir();
        let port = port.unwrap_or(DEFAULT_UP_PORT);
        let operator_token = tether_hub::tokens::generate().map_err(|e| anyhow::anyhow!(e))?;
        let hub_toml = format!(
            "# Written by `tether up` on first run.\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\n[[operators]]\nname = \"admin\"\nclass = \"human\"\ntoken = \"{operator_token}\"\n",
            data.join("hub").display()
        );
        write_private(&hub_path, &hub_toml)?;
        let hub_file = HubFile::load(Some(&hub_path))?;
        let hostname = tether_host::host::hostname();
        let agent_token = token_create(&hub_file, &format!("local-{hostname}"), &[])?;
        let agent_toml = format!(
            "# Written by `tether up` on first run.\n# Clients reach this agent through its Unix socket (no TCP listener to clash with).\nlisten = \"off\"\nstate_dir = \"{}\"\n\n# The built-in demo script: chat works, remotely too, without an API key.\n[model]\nprovider = \"scripted\"\n\n[hub]\nurl = \"ws://127.0.0.1:{port}\"\nallow_plaintext = true  # loopback only\ntoken = \"{agent_token}\"\nremote_tools = [{}]\n",
            data.join("agent").display(),
            UP_REMOTE_TOOLS
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        write_private(&agent_path, &agent_toml)?;
        first_run_tokens = Some((operator_token, agent_token));
    } else if !(hub_path.exists() && agent_path.exists()) {
        bail!(
            "`tether up` needs both {} and {} (or neither, to create them); one is missing",
            hub_path.display(),
            agent_path.display()
        );
    }
    let mut hub_file = HubFile::load(Some(&hub_path))?;
    let mut agent_cfg = AgentConfig::load(Some(&agent_path))?;
    if let Some(port) = port {
        // The flag wins over hub.toml, and the local agent follows the hub to its new port.
        hub_file.config.listen.set_port(port);
        if let Some(link) = &mut agent_cfg.hub {
            link.url = local_hub_url(&hub_file);
        }
    }
    if agent_cfg.hub.is_none() {
        bail!(
            "{} has no [hub] section, so the agent would not reach the hub",
            agent_path.display()
        );
    }
    let hub = tether_hub::start(hub_file.config.clone(), hub_file.allow_plaintext)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let core = Core::start(&agent_cfg, &agent_cfg.state_dir.join("audit.jsonl")).await?;
    let mut banner = vec![
        "tether up: a hub and a local agent are running (Ctrl-C stops both)".to_owned(),
        format!("console: {}", hub.url()),
    ];
    match &first_run_tokens {
        Some((operator, agent)) => {
            banner.push(format!("operator token: {operator}"));
            banner.push(format!("agent token: {agent}"));
            banner.push(format!(
                "(shown once; kept in {} and {})",
                hub_path.display(),
                agent_path.display()
            ));
        }
        None => banner.push(format!("operator token: see {}", hub_path.display())),
    }
    banner.push("chat with the agent: tether chat".to_owned());
    // Nobody reading stdout any more is no reason to stop the hub.
    let _ = outln!("{}", banner.join("\n"));
    shutdown_signal().await;
    core.stop().await;
    hub.stop().await;
    Ok(())
}

/// `tether up`'s hub port when neither `--port` nor hub.toml names one.
const DEFAULT_UP_PORT: u16 = 7800;

/// The URL the local agent dials to reach the hub `tether up` runs.
fn local_hub_url(hub: &HubFile) -> String {
    let mut addr = hub.config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let scheme = if hub.config.tls.is_some() {
        "wss"
    } else {
        "ws"
    };
    format!("{scheme}://{addr}")
}

/// What a remote (hub) session may use under `tether up`: the read-only tools, plus `shell`
/// so the console can show a permission prompt (it still needs a human's approval).
const UP_REMOTE_TOOLS: &[&str] = &[
    "system_info",
    "cpu_load",
    "memory",
    "disks",
    "disk_io",
    "top_processes",
    "process_detail",
    "sockets",
    "net_interfaces",
    "kernel_log",
    "systemd_unit",
    "log_tail",
    "log_grep",
    "dns_resolve",
    "read_file",
    "shell",
];

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    use std::io::Write;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<HubConfig> {
        let raw: RawHub = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        HubFile::from_raw(raw, None).map(|(c, _)| c)
    }

    #[test]
    fn the_store_is_sqlite_unless_store_names_a_database() {
        let c = load("").expect("defaults");
        assert!(matches!(c.store, tether_hub::StoreConfig::Sqlite));
        let c = load(
            "[store]\nurl = \"postgres://tether:secret@db.example:5433/hub\"\npool_size = 3\nquery_timeout = \"2s\"\nconnect_timeout = \"500ms\"\n",
        )
        .expect("postgres");
        let tether_hub::StoreConfig::Postgres(pg) = &c.store else {
            panic!("not postgres: {:?}", c.store);
        };
        assert_eq!(
            (pg.pool_size, pg.query_timeout, pg.connect_timeout),
            (3, Duration::from_secs(2), Duration::from_millis(500))
        );
        assert_eq!(pg.config.get_dbname(), Some("hub"));
        assert_eq!(pg.config.get_ports(), [5433]);
        assert!(
            !format!("{c:?}").contains("secret"),
            "the password is never shown"
        );
        // `url_env`: any variable set for the test process serves (its value is checked as
        // a URL, so the error names the key, not the value).
        let e = load("[store]\nurl_env = \"CARGO_MANIFEST_DIR\"\n").expect_err("not a URL");
        assert!(
            e.to_string().contains("store.url: must be a postgres://"),
            "{e}"
        );
    }

    #[test]
    fn alert_sources_and_routes_are_read() {
        // `cargo test` sets CARGO_MANIFEST_DIR for the test process (an absolute path: long
        // enough for a token); setting a variable here would need `unsafe`.
        let from_env = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test");
        let c = load(
            r#"
            [[alert_sources]]
            name = "prometheus"
            token = "am-token-0123456789abcdef"

            [[alert_sources]]
            name = "grafana"
            token_env = "CARGO_MANIFEST_DIR"

            [[alert_routes]]
            match = { job = "mysql", cluster = "eu" }
            agent = "db-01"
            "#,
        )
        .expect("valid");
        let sources: Vec<(&str, &str)> = c
            .alert_sources
            .iter()
            .map(|s| (s.name.as_str(), s.token.as_str()))
            .collect();
        assert_eq!(
            sources,
            vec![
                ("prometheus", "am-token-0123456789abcdef"),
                ("grafana", from_env.as_str())
            ]
        );
        assert_eq!(c.alert_routes.len(), 1);
        assert_eq!(c.alert_routes[0].agent, "db-01");
        assert_eq!(c.alert_routes[0].matchers["job"], "mysql");
    }

    #[test]
    fn bad_alert_sources_and_routes_are_named() {
        let cases = [
            (
                "[[alert_sources]]\nname = \"am\"\n",
                "alert_sources[0] (`am`): `token` or `token_env` is required",
            ),
            (
                "[[alert_sources]]\nname = \"am\"\ntoken = \"short\"\n",
                "alert_sources[0] (`am`).token: 5 characters",
            ),
            (
                "[[alert_sources]]\nname = \"am\"\ntoken = \"am-token-0123456789abcdef\"\ntoken_env = \"X\"\n",
                "not both",
            ),
            (
                "[[alert_sources]]\nname = \"am\"\ntoken_env = \"TETHER_TEST_NO_SUCH_VARIABLE\"\n",
                "alert_sources[0].token_env: environment variable TETHER_TEST_NO_SUCH_VARIABLE is not set",
            ),
            (
                "[[operators]]\nname = \"alice\"\nclass = \"human\"\ntoken = \"am-token-0123456789abcdef\"\n[[alert_sources]]\nname = \"am\"\ntoken = \"am-token-0123456789abcdef\"\n",
                "the same as operator `alice`'s",
            ),
            (
                "[[alert_routes]]\nmatch = {}\nagent = \"db-01\"\n",
                "alert_routes[0].match: must name at least one label",
            ),
            (
                "[[alert_routes]]\nmatch = { job = \"x\" }\nagent = \" \"\n",
                "alert_routes[0].agent",
            ),
            (
                "[[alert_routes]]\nagent = \"db-01\"\n",
                "missing field `match`",
            ),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", load(text).expect_err(want));
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    #[test]
    fn diagnosis_notify_and_console_url_are_read() {
        use tether_hub::alerts::{Severity, Source};
        let from_env = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test");
        let c = load(
            r#"
            console_url = "https://tether.example.com"

            [diagnosis]
            severities = ["critical", "warning"]
            sources = ["alertmanager", "agent"]
            cooldown = "10m"
            max_per_agent = 2
            max_fleet = 3
            daily_tokens = 50000

            [[notify]]
            name = "ops"
            kind = "slack"
            url = "https://hooks.slack.com/services/T/B/x"
            on = ["firing", "approval_waiting"]
            approval_wait = "2m"

            [[notify]]
            kind = "webhook"
            url_env = "CARGO_MANIFEST_DIR"
            "#,
        );
        // The second notifier's URL comes from an environment variable that is no URL.
        let e = format!("{:#}", c.expect_err("a path is not a URL"));
        assert!(
            e.contains("notify[1] (`webhook-1`).url: must be an http:// or https:// URL"),
            "{e}"
        );
        assert!(!from_env.is_empty());
        let c = load(
            r#"
            console_url = "https://tether.example.com"
            [diagnosis]
            severities = ["critical", "warning"]
            sources = ["alertmanager", "agent"]
            cooldown = "10m"
            max_per_agent = 2
            max_fleet = 3
            daily_tokens = 50000
            [[notify]]
            name = "ops"
            kind = "slack"
            url = "https://hooks.slack.com/services/T/B/x"
            on = ["firing", "approval_waiting"]
            severities = ["critical"]
            approval_wait = "2m"
            [[notify]]
            kind = "webhook"
            url = "http://127.0.0.1:9/hook"
            "#,
        )
        .expect("valid");
        let d = c.diagnosis.expect("[diagnosis]");
        assert_eq!(d.severities, vec![Severity::Critical, Severity::Warning]);
        assert_eq!(d.sources, vec![Source::Alertmanager, Source::Agent]);
        assert_eq!(d.cooldown, Duration::from_secs(600));
        assert_eq!(
            (d.max_per_agent, d.max_fleet, d.daily_tokens),
            (2, 3, 50_000)
        );
        assert_eq!(c.notify.len(), 2);
        assert_eq!(c.notify[0].name, "ops");
        assert_eq!(c.notify[0].kind, tether_hub::NotifyKind::Slack);
        assert_eq!(
            c.notify[0].on,
            vec![
                tether_hub::NotifyOn::Firing,
                tether_hub::NotifyOn::ApprovalWaiting
            ]
        );
        assert_eq!(c.notify[0].approval_wait, Duration::from_secs(120));
        assert_eq!(c.notify[0].severities, vec![Severity::Critical]);
        assert_eq!(c.notify[1].severities.len(), 3);
        assert_eq!(c.notify[1].name, "webhook-1");
        assert_eq!(c.notify[1].on, tether_hub::NotifyOn::ALL.to_vec());
        assert_eq!(c.notify[1].approval_wait, Duration::from_secs(60));
        assert_eq!(c.console_url.as_deref(), Some("https://tether.example.com"));

        // Defaults; `enabled = false` keeps the section but turns it off; none: off.
        let d = load("[diagnosis]\n").expect("valid").diagnosis.expect("on");
        assert_eq!(d, tether_hub::DiagnosisConfig::default());
        assert_eq!(d.severities, vec![Severity::Critical]);
        assert_eq!(d.cooldown, Duration::from_secs(1800));
        assert_eq!((d.max_per_agent, d.max_fleet), (1, 8));
        assert!(
            load("[diagnosis]\nenabled = false\n")
                .expect("valid")
                .diagnosis
                .is_none()
        );
        assert!(load("").expect("valid").diagnosis.is_none());
    }

    #[test]
    fn bad_diagnosis_and_notify_settings_are_named() {
        let cases = [
            (
                "[diagnosis]\nseverities = [\"urgent\"]\n",
                "diagnosis.severities: `urgent` is not critical, warning or info",
            ),
            (
                "[diagnosis]\nsources = [\"nagios\"]\n",
                "diagnosis.sources: `nagios` is not alertmanager, grafana or agent",
            ),
            (
                "[diagnosis]\nmax_fleet = 0\n",
                "diagnosis.max_fleet: must be at least 1",
            ),
            (
                "[diagnosis]\ncooldown = \"soon\"\n",
                "`soon` is not a duration",
            ),
            (
                "[diagnosis]\nsevereties = []\n",
                "unknown field `severeties`",
            ),
            (
                "[[notify]]\nkind = \"pager\"\nurl = \"http://x\"\n",
                "notify[0].kind: `pager` is not slack or webhook",
            ),
            (
                "[[notify]]\nkind = \"slack\"\n",
                "notify[0]: `url` or `url_env` is required",
            ),
            (
                "[[notify]]\nkind = \"slack\"\nurl = \"http://x\"\non = [\"paged\"]\n",
                "notify[0].on: `paged` is not firing, resolved, report or approval_waiting",
            ),
            (
                "[[notify]]\nkind = \"slack\"\nurl = \"http://x\"\non = []\n",
                "notify[0] (`slack-0`).on: must name at least one",
            ),
            (
                "[[notify]]\nkind = \"slack\"\nurl = \"http://x\"\nseverities = [\"loud\"]\n",
                "notify[0].severities: `loud` is not critical, warning or info",
            ),
            (
                "[[notify]]\nkind = \"webhook\"\nurl_env = \"TETHER_TEST_NO_SUCH_VARIABLE\"\n",
                "notify[0].url_env: environment variable TETHER_TEST_NO_SUCH_VARIABLE is not set",
            ),
            (
                "[[notify]]\nname = \"a\"\nkind = \"slack\"\nurl = \"http://x\"\n[[notify]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://y\"\n",
                "notify[1].name: `a` is also notify[0]'s name",
            ),
            (
                "console_url = \"tether.example.com\"\n",
                "console_url: `tether.example.com` is not an http",
            ),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", load(text).expect_err(want));
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }
}
