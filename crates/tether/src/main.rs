//! The `tether` command.

#[macro_use]
mod out;
mod acp;
mod agent;
mod alerting;
mod autodiag;
mod checks_cmd;
mod client_cmds;
mod config;
mod eval;
mod hub_cmd;
mod hub_link;
mod mcp_server;
mod models;
mod oneshot;
mod paths;
mod render;
mod verdict;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use client_cmds::{ConnectArgs, Join};
use std::path::PathBuf;

/// tether — an AI operations harness for fleets of Linux hosts.
///
/// Start an agent on the host with `tether agent`, then talk to it with `tether chat`.
/// Many clients can share one session: `tether sessions` lists them, `tether attach ID`
/// joins one with its history.
///
/// `inspect`, `diagnose` and `checks run` exit like monitoring plugins: 0 OK, 1 WARNING,
/// 2 CRITICAL, 3 UNKNOWN (could not run: bad config, unknown plugin, target not found).
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
    /// 127.0.0.1:7800 with state under ~/.local/share/tether/hub. Its store is SQLite
    /// (hub.db in the state directory) unless hub.toml has `[store] url = "postgres://…"`
    /// (or `url_env`); the token commands write the same store.
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
        /// The hub's port (default: the one in hub.toml, else 7800). Always wins over
        /// hub.toml; written into the config files only when `up` creates them.
        #[arg(long)]
        port: Option<u16>,
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
    /// Serve the Agent Client Protocol on stdin/stdout, for an editor (Zed, or any ACP client).
    ///
    /// The editor launches this command; it connects to the running agent like `tether chat`
    /// (the Unix socket of --config, or --url/--token) and acts with that credential's identity
    /// (a Unix-socket peer is a human). ACP session ids are tether session ids: `session/new`
    /// creates a chat session, `session/load` joins any session with its history, and
    /// `session/list` lists them. A prompt sent while another client's turn runs waits for it.
    /// Every event of the session is shown in the editor, other clients' messages with who
    /// wrote them; a tool that needs approval asks the editor (allow once, allow for the
    /// session, reject, always reject), unless another client answers first.
    ///
    /// Diagnostics go to stderr; if the agent goes away it exits non-zero saying so.
    ///
    /// Zed (settings.json):
    /// "agent_servers": {"tether": {"type": "custom", "command": "tether", "args": ["acp"]}}
    Acp {
        #[command(flatten)]
        connect: ConnectArgs,
        /// Join this existing session: `session/new` attaches to it (history, then live)
        /// instead of creating one.
        #[arg(long)]
        session: Option<String>,
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
    /// name). Progress and permission prompts go to stderr, the report to stdout.
    ///
    /// Exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (could not run: bad config, unknown
    /// plugin, target not found, the run failed); 130 when interrupted.
    /// The status is the worst finding: CRITICAL, else UNKNOWN when the target could not be
    /// read, else WARNING, else OK.
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
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Investigate an alert with the model and print a diagnosis report.
    ///
    /// Uses the running agent when its socket answers (the session is kept and can be
    /// attached to), otherwise runs in-process. Without a configured model it falls back to an
    /// inspection report. Progress and permission prompts go to stderr, the report to stdout.
    /// A tool that needs approval is asked about on the terminal; with stdin not a terminal it
    /// is denied unless --yes is given.
    ///
    /// Exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (could not run: bad config, unknown
    /// plugin, target not found, the run failed); 130 when interrupted.
    /// The status is the severity the report states (the model is asked for a `## Severity`
    /// section; without a model, the inspection's status), else the alert's --status.
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
        /// The alert's status (Critical, Warning, Info, Ok): the exit status when the report
        /// states no severity (default Warning).
        #[arg(long)]
        status: Option<String>,
        /// Agent config file (default ~/.config/tether/agent.toml).
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        report: ReportArgs,
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
    /// This agent's alerts from its local history, firing or resolved (works with the agent
    /// stopped); `--events` for the raw events.
    Alerts {
        /// Agent config file (default ~/.config/tether/agent.toml).
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
        /// How many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The events as recorded (Critical, Warning, Info, Ok) instead of the alerts.
        #[arg(long)]
        events: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Check the configured models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Serve MCP on stdin/stdout: AI programs (any MCP client) join this agent's sessions.
    ///
    /// Register it in the MCP client's config as a stdio server (`tether mcp`, or
    /// `tether mcp --url ws://HOST:7700/v1/ws --token …`). The program acts as an agent-class
    /// client: it creates sessions, sends messages and reads events, but a human answers the
    /// permission prompts of its turns. The agent also serves MCP over HTTP at `POST /mcp`.
    Mcp {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List the agent's sessions.
    Sessions {
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Measure diagnosis on real faults: for each scenario (evals/host/NNN-name), inject its
    /// fault on this host, run `diagnose` with the configured model and tools, remove the
    /// fault, and score the report and the tool calls (no model judges another). Prints a
    /// scorecard.
    ///
    /// Faults are contained: a scratch directory, a process group of their own, and a private
    /// mount namespace (unshare, no root needed) for the ones that mount a tmpfs; they are
    /// removed after each run, on errors and on Ctrl-C/SIGTERM. Permission prompts are denied
    /// (nobody is there to approve them). Progress goes to stderr.
    ///
    /// Exit code: 0 when every scenario ran (whatever the scores), 1 when some could not be
    /// run (its fault could not be set up or removed, or the model never answered), 130/143
    /// when interrupted.
    Eval {
        /// Only the scenarios whose directory name matches this glob, e.g. '00[1-5]-*'.
        #[arg(long, value_name = "GLOB")]
        scenarios: Option<String>,
        /// The scenarios' directory (default: evals/host here, else in the source tree).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Agent config: its [model], [tools] and [[mcp.servers]] are what is evaluated.
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
        /// Diagnose each scenario this many times.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        runs: u32,
        /// Also write the scorecard as JSON, with every run's failures and tool calls (`-`:
        /// JSON on stdout, the text scorecard on stderr).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// List the scenarios and exit.
        #[arg(long)]
        list: bool,
        /// Replay each scenario's own scripted investigator instead of the model (`good`, or
        /// `bad` for every bad-*.json): the suite's self-test.
        #[arg(long, value_name = "NAME")]
        scripted: Option<String>,
        /// Show each diagnosis' tool calls as they happen.
        #[arg(long)]
        verbose: bool,
    },
    /// Processes that scenarios of `tether eval` run as their faults.
    #[command(hide = true)]
    EvalHelper {
        #[command(subcommand)]
        helper: EvalHelper,
    },
}

#[derive(Subcommand, Debug)]
enum EvalHelper {
    /// A static MCP server on stdio, its tools from a TOML file.
    Mcp { tools: PathBuf },
    /// Grow to MIB MiB of resident memory, then hold it.
    Leak {
        #[arg(long)]
        mib: u64,
        #[arg(long, default_value_t = 8)]
        step_mib: u64,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
    },
    /// Open FILE COUNT times and hold the descriptors.
    Fds {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        path: PathBuf,
    },
    /// Listen on ADDR and close every connection.
    Listen {
        #[arg(long)]
        addr: String,
    },
}

/// Runs a fault helper (never returns while it works).
fn eval_helper(helper: EvalHelper) -> std::process::ExitCode {
    use tether_eval::helper;
    let r = match helper {
        EvalHelper::Mcp { tools } => helper::mcp(&tools),
        EvalHelper::Leak {
            mib,
            step_mib,
            interval_ms,
        } => helper::leak(mib, step_mib, std::time::Duration::from_millis(interval_ms)),
        EvalHelper::Fds { count, path } => helper::fds(&path, count),
        EvalHelper::Listen { addr } => helper::listen(&addr),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// `--output text|json` (and `--json`, the same as `--output json`).
#[derive(clap::Args, Debug)]
struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Same as --output json.
    #[arg(long)]
    json: bool,
}

impl OutputArgs {
    fn json(&self) -> bool {
        self.json || self.output == Output::Json
    }
}

/// Output and permission answers of `inspect` and `diagnose`.
#[derive(clap::Args, Debug)]
struct ReportArgs {
    #[command(flatten)]
    output: OutputArgs,
    /// Approve every permission prompt, as the invoking user (the audit log records
    /// `"via": "--yes"`).
    #[arg(long, conflicts_with = "no")]
    yes: bool,
    /// Deny every permission prompt (recorded as `"via": "--no"`).
    #[arg(long)]
    no: bool,
}

impl ReportArgs {
    fn opts(&self) -> oneshot::ReportOpts {
        oneshot::ReportOpts {
            json: self.output.json(),
            answers: client_cmds::Answers::choose(self.yes, self.no),
        }
    }
}

#[derive(Subcommand, Debug)]
enum ChecksCommand {
    /// Every check instance of the running agent: last status, last values, errors, and the
    /// config files that are broken.
    List {
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Run one plugin's instances once, here and now, and print each value and what would
    /// fire. Without a <plugin>.toml it runs the plugin's default instance (e.g. `disk` on
    /// every real mount). It never contacts the agent or the hub.
    ///
    /// Exit code: the worst result — 2 CRITICAL (a Critical value), 3 UNKNOWN (an instance
    /// could not run; also an unknown plugin or a broken config), 1 WARNING, 0 OK.
    Run {
        /// cpu, mem, disk, load, procnum, tcp, http, filecheck, logfile, exec, systemd, uptime.
        plugin: String,
        /// Agent config file (its checks directory is used).
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
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
    init_tracing_at("info");
}

/// Logs to stderr at `default` unless TETHER_LOG (or RUST_LOG) says otherwise.
fn init_tracing_at(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
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

async fn run(cli: Cli, no_namespace: Option<String>) -> Result<std::process::ExitCode> {
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
                    outln!("{token}")?;
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
            report,
        } => {
            let opts = report.opts();
            let r = oneshot::inspect(config.as_deref(), &plugin, target, opts).await;
            Ok(unknown_on_error("inspect", r, opts.json))
        }
        Command::Diagnose {
            alert,
            plugin,
            target,
            status,
            config,
            report,
        } => {
            let opts = report.opts();
            let r = oneshot::diagnose(config.as_deref(), alert, plugin, target, status, opts).await;
            Ok(unknown_on_error("diagnose", r, opts.json))
        }
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
        Command::Acp { connect, session } => ok(acp::run(&connect, session).await),
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
            outln!(
                "queued alert {}",
                result["alert_key"].as_str().unwrap_or_default()
            )?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Checks {
            command: ChecksCommand::List { connect, output },
        } => ok(checks_cmd::list(&connect, output.json()).await),
        Command::Checks {
            command:
                ChecksCommand::Run {
                    plugin,
                    config,
                    output,
                },
        } => {
            let json = output.json();
            let r = checks_cmd::run(config.as_deref(), &plugin, json).await;
            Ok(unknown_on_error("checks run", r, json))
        }
        Command::Alerts {
            config,
            limit,
            events,
            output,
        } => ok(checks_cmd::alerts(
            config.as_deref(),
            limit,
            events,
            output.json(),
        )),
        Command::Models {
            command: ModelsCommand::Test { config, timeout },
        } => models::test(config.as_deref(), timeout).await,
        Command::Mcp { connect } => {
            // stdout speaks MCP: logs go to stderr, quiet unless asked for.
            // (rmcp warns about every error reply, bad arguments included: not ours to log.)
            init_tracing_at("warn,rmcp=error");
            ok(mcp_server::run_stdio(&connect).await)
        }
        Command::Sessions { connect, output } => {
            ok(client_cmds::sessions(&connect, output.json()).await)
        }
        Command::Eval {
            scenarios,
            dir,
            config,
            runs,
            json,
            list,
            scripted,
            verbose,
        } => {
            eval::eval(eval::EvalArgs {
                scenarios,
                dir,
                config,
                runs,
                json,
                list,
                scripted,
                verbose,
                no_namespace,
            })
            .await
        }
        Command::EvalHelper { .. } => Ok(std::process::ExitCode::FAILURE),
    }
}

/// `inspect`, `diagnose`, `checks run`: a command that could not run is UNKNOWN (3), not the
/// generic failure 1, which would read as WARNING. A closed stdout is not a failure.
fn unknown_on_error(
    command: &str,
    r: Result<std::process::ExitCode>,
    json: bool,
) -> std::process::ExitCode {
    match r {
        Ok(code) => code,
        Err(e) if out::is_closed(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => oneshot::could_not_run(command, &e, json),
    }
}

/// Whether the command line names a command whose exit codes follow the monitoring-plugin
/// convention (so a usage error is UNKNOWN, 3, instead of clap's 2, CRITICAL).
fn monitoring_command(args: &[std::ffi::OsString]) -> bool {
    let words: Vec<&str> = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .filter(|a| !a.starts_with('-'))
        .collect();
    match words.as_slice() {
        ["inspect", ..] | ["diagnose", ..] => true,
        ["checks", rest @ ..] => rest.contains(&"run"),
        _ => false,
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let usage_error = e.use_stderr();
            // `--help` and `--version` print on stdout; a closed pipe there is not an error.
            let _ = e.print();
            return if !usage_error {
                std::process::ExitCode::SUCCESS
            } else if monitoring_command(&args) {
                verdict::Verdict::Unknown.exit_code()
            } else {
                std::process::ExitCode::from(2)
            };
        }
    };
    let cli = match cli.command {
        Command::EvalHelper { helper } => return eval_helper(helper),
        command => Cli { command },
    };
    // `tether eval` runs in a private mount namespace (re-executed, same pid, before any
    // thread exists); this returns only when that is not possible, saying why.
    let no_namespace = match &cli.command {
        Command::Eval { list: false, .. } if !tether_eval::namespace::active() => {
            Some(tether_eval::namespace::reexec(&args))
        }
        _ => None,
    };
    // Everything tether writes (state, configs, logs) is its user's only.
    tether_host::perms::restrict_umask();
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
    let result = runtime.block_on(run(cli, no_namespace));
    // The stdin reader thread may be blocked in read(2); don't wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        // The reader of stdout went away (`… | head -1`): stop quietly, as Unix tools do.
        Err(e) if out::is_closed(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
