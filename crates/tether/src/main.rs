//! The `tether` command.

mod agent;
mod client_cmds;
mod config;
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
    },
    /// Join an existing session: its history from the start, then live.
    Attach {
        #[command(flatten)]
        connect: ConnectArgs,
        /// The session id (see `tether sessions`).
        session: String,
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

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent { config } => {
            init_tracing();
            let cfg = config::AgentConfig::load(config.as_deref())?;
            agent::run(cfg).await
        }
        Command::Chat {
            connect,
            session,
            title,
            policy,
        } => {
            let join = match session {
                Some(session_id) => Join::Existing {
                    session_id,
                    history: false,
                },
                None => Join::New { title, policy },
            };
            client_cmds::chat(&connect, join).await
        }
        Command::Attach { connect, session } => {
            client_cmds::chat(
                &connect,
                Join::Existing {
                    session_id: session,
                    history: true,
                },
            )
            .await
        }
        Command::Sessions { connect, json } => client_cmds::sessions(&connect, json).await,
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
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
