//! The `tether` command.

mod agent;
mod alerting;
mod autodiag;
mod checks_cmd;
mod client_cmds;
mod config;
mod hub_cmd;
mod hub_link;
mod models;
mod oneshot;
mod paths;
mod render;

use anyhow::Result;
use clap::{Parser, Subcommand};
use client_cmds::{ConnectArgs, Join};
use std::path::PathBuf;

/// tether — an AI operations harness for fleets of Linux hosts.
///
/// Start an agent on the host with `tether agent`, then talk to it with `tether chat`.
/// Many clients can share one session: `tether sessions` lists them, `tether attach ID`
/// joins one with its history.
#[derive(Parser, Debug)]
#[command(name = "tether", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: sessions, the multiplexer, the WebSocket and Unix-socket listeners.
    ///
    /// Without --config it reads ~/.config/tether/agent.toml if present, else runs on the
    /// built-in defaults: WebSocket on 127.0.0.1:7700 (loopback peers only), the Unix socket
    /// and state under ~/.local/share/tether, and a built-in demo model script.
    Agent {
        /// Config file (TOML).
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the hub: agents dial in, operators use its web console, CLI and API.
    ///
    /// Without --config it reads ~/.config/tether/hub.toml if present, else listens on
    /// 127.0.0.1:7800 with state under ~/.local/share/tether/hub.
    Hub {
        /// Hub config file (TOML); also accepted after `token create|list|revoke`.
        #[arg(long, env = "TETHER_HUB_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<HubCommand>,
    },
    /// Start a hub and a local agent linked to it, and print the console URL.
    ///
    /// On first run it writes ~/.config/tether/hub.toml and agent.toml with fresh operator
    /// and agent tokens (printed once); later runs reuse them.
    Up {
        /// The hub's port on 127.0.0.1.
        #[arg(long, default_value_t = 7800)]
        port: u16,
    },
    /// Chat with the agent in a new session (or join one with --session).
    ///
    /// Tool calls and results are shown as they happen; a tool that needs approval asks
    /// `allow? [y/n/a]`. Ctrl-C cancels the running turn; Ctrl-D leaves. Prefix a message with
    /// `/queue ` to queue it behind a turn someone else is running.
    Chat {
        #[command(flatten)]
        connect: ConnectArgs,
        /// Join this existing session (live events only; `tether attach` replays history).
        #[arg(long)]
        session: Option<String>,
        /// Title of a new session.
        #[arg(long)]
        title: Option<String>,
        /// Who may answer permission prompts in a new session: `human` (default) or `any`
        /// (agent-class clients too, never for their own turns).
        #[arg(long, value_parser = ["human", "any"])]
        policy: Option<String>,
        /// At a hub (--url ws://hub/v1/ws): the agent that runs the session.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Join an existing session: its history from the start, then live.
    Attach {
        #[command(flatten)]
        connect: ConnectArgs,
        /// The session id (see `tether sessions`).
        session: String,
    },
    /// Inspect this host without a model and print a Markdown report with findings.
    ///
    /// Runs in-process: no agent or model is needed. Plugins: system (default), cpu, mem,
    /// disk, load, net, process; --target narrows some of them (a mount, HOST:PORT, a process
    /// name). Progress goes to stderr, the report to stdout.
    Inspect {
        /// What to inspect.
        #[arg(default_value = "system")]
        plugin: String,
        /// A mount point, HOST:PORT, process name or pid, depending on the plugin.
        #[arg(long)]
        target: Option<String>,
        /// Agent config file (for tool settings; default ~/.config/tether/agent.toml).
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Investigate an alert with the model and print a diagnosis report.
    ///
    /// Uses the running agent when its socket answers (the session is kept and can be
    /// attached to), otherwise runs in-process. Without a configured model it falls back to an
    /// inspection report. Tools that need approval ask on the terminal.
    Diagnose {
        /// What the alert says, e.g. "disk /var 93% full".
        #[arg(long)]
        alert: String,
        /// The check that raised it (cpu, mem, disk, net, process, …).
        #[arg(long)]
        plugin: Option<String>,
        /// What it is about (a mount, HOST:PORT, a process).
        #[arg(long)]
        target: Option<String>,
        /// Agent config file (default ~/.config/tether/agent.toml).
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Raise alerts through the running agent (they go to the hub over the link).
    Alert {
        #[command(subcommand)]
        command: AlertCommand,
    },
    /// Host checks: list the running agent's instances, or run a plugin once here.
    Checks {
        #[command(subcommand)]
        command: ChecksCommand,
    },
    /// Recent alert events from this agent's local history (works with the agent stopped).
    Alerts {
        /// Agent config file (default ~/.config/tether/agent.toml).
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
        /// How many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Check the configured models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// List the agent's sessions.
    Sessions {
        #[command(flatten)]
        connect: ConnectArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ChecksCommand {
    /// Every check instance of the running agent: last status, last values, errors.
    List {
        #[command(flatten)]
        connect: ConnectArgs,
        #[arg(long)]
        json: bool,
    },
    /// Run one plugin's instances once, here and now, and print each value and what would
    /// fire. Without a <plugin>.toml it runs the plugin's default instance (e.g. `disk` on
    /// every real mount). Exit code: 0 all Ok, 1 a Warning, 2 a Critical.
    Run {
        /// cpu, mem, disk, load, procnum, tcp, http, filecheck, logfile, exec, systemd, uptime.
        plugin: String,
        /// Agent config file (its checks directory is used).
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum HubCommand {
    /// Manage agent credentials.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a credential for one agent; prints the token once (only its hash is kept).
    Create {
        /// A name for the agent (or the host it runs on).
        #[arg(long)]
        name: String,
        /// A label, `k=v` (repeatable).
        #[arg(long = "labels", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
    },
    /// List credentials (never the tokens themselves).
    List,
    /// Revoke a credential by name or id; its agent is refused from its next connection.
    Revoke { name_or_id: String },
}

#[derive(Subcommand, Debug)]
enum AlertCommand {
    /// Send one alert event, e.g.
    /// `tether alert send --status Warning --key disk-var --label mount=/var --description "/var 91% full"`.
    Send {
        #[command(flatten)]
        connect: ConnectArgs,
        /// Critical, Warning, Info or Ok (Ok recovers an alert).
        #[arg(long)]
        status: String,
        /// The alert's key (events with the same key are one alert); default: derived from
        /// the labels.
        #[arg(long)]
        key: Option<String>,
        /// A label, `k=v` (repeatable).
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        /// An attribute, `k=v` (repeatable).
        #[arg(long = "attr", value_parser = parse_kv)]
        attrs: Vec<(String, String)>,
        #[arg(long, default_value = "")]
        description: String,
        /// `text` or `markdown`.
        #[arg(long)]
        format: Option<String>,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not k=v")),
    }
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Send one tiny request to each configured model (primary, then fallbacks) and print
    /// its latency, or the error in plain words. Exits 1 if any model fails.
    Test {
        /// Agent config file (default ~/.config/tether/agent.toml).
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
        /// Give up on a model after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Servers hold a descriptor per connection: raise the soft open-files limit (often 1024)
/// to the hard limit, so the connection caps bind before the descriptors run out.
fn raise_open_files_limit() {
    match tether_transport::raise_open_files_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(before, after, "raised the open-files limit")
        }
        Ok((_, limit)) => tracing::info!(limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

async fn run(cli: Cli) -> Result<std::process::ExitCode> {
    let ok = |r: Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
    match cli.command {
        Command::Agent { config } => {
            init_tracing();
            raise_open_files_limit();
            let cfg = config::AgentConfig::load(config.as_deref())?;
            ok(agent::run(cfg).await)
        }
        Command::Hub { config, command } => {
            let file = hub_cmd::HubFile::load(config.as_deref())?;
            match command {
                None => {
                    init_tracing();
                    raise_open_files_limit();
                    ok(hub_cmd::run(file).await)
                }
                Some(HubCommand::Token {
                    command: TokenCommand::Create { name, labels },
                }) => {
                    let token = hub_cmd::token_create(&file, &name, &labels)?;
                    println!("{token}");
                    eprintln!(
                        "agent token for `{name}` created; it is shown once. Put it in the agent's [hub] token."
                    );
                    Ok(std::process::ExitCode::SUCCESS)
                }
                Some(HubCommand::Token {
                    command: TokenCommand::List,
                }) => ok(hub_cmd::token_list(&file)),
                Some(HubCommand::Token {
                    command: TokenCommand::Revoke { name_or_id },
                }) => ok(hub_cmd::token_revoke(&file, &name_or_id)),
            }
        }
        Command::Up { port } => {
            init_tracing();
            raise_open_files_limit();
            ok(hub_cmd::up(port).await)
        }
        Command::Inspect {
            plugin,
            target,
            config,
        } => oneshot::inspect(config.as_deref(), &plugin, target).await,
        Command::Diagnose {
            alert,
            plugin,
            target,
            config,
        } => oneshot::diagnose(config.as_deref(), alert, plugin, target).await,
        Command::Chat {
            connect,
            session,
            title,
            policy,
            agent,
        } => {
            let join = match session {
                Some(session_id) => Join::Existing {
                    session_id,
                    history: false,
                },
                None => Join::New {
                    mode: "chat",
                    params: None,
                    title,
                    policy,
                    agent_id: agent,
                },
            };
            ok(client_cmds::chat(&connect, join).await)
        }
        Command::Attach { connect, session } => ok(client_cmds::chat(
            &connect,
            Join::Existing {
                session_id: session,
                history: true,
            },
        )
        .await),
        Command::Alert {
            command:
                AlertCommand::Send {
                    connect,
                    status,
                    key,
                    labels,
                    attrs,
                    description,
                    format,
                },
        } => {
            let mut params = serde_json::json!({
                "status": status,
                "labels": labels.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "attrs": attrs.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "description": description,
            });
            if let Some(k) = key {
                params["key"] = serde_json::Value::String(k);
            }
            if let Some(f) = format {
                params["description_format"] = serde_json::Value::String(f);
            }
            let (mut client, _) = connect.connect().await?;
            let result = client
                .request("alert.send", params)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "queued alert {}",
                result["alert_key"].as_str().unwrap_or_default()
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Checks {
            command: ChecksCommand::List { connect, json },
        } => ok(checks_cmd::list(&connect, json).await),
        Command::Checks {
            command: ChecksCommand::Run { plugin, config },
        } => checks_cmd::run(config.as_deref(), &plugin).await,
        Command::Alerts {
            config,
            limit,
            json,
        } => ok(checks_cmd::alerts(config.as_deref(), limit, json)),
        Command::Models {
            command: ModelsCommand::Test { config, timeout },
        } => models::test(config.as_deref(), timeout).await,
        Command::Sessions { connect, json } => ok(client_cmds::sessions(&connect, json).await),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // The stdin reader thread may be blocked in read(2); don't wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
