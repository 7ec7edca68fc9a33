//! `tether inspect` and `tether diagnose`: one session, one turn, a report.
//!
//! `inspect` always runs in-process (it needs no agent and no model). `diagnose` uses the
//! running agent when its socket answers, so the session is shared and kept; otherwise it runs
//! in-process too. The in-process run is a real agent core on a private temporary state
//! directory and socket, driven by the same client loop as `tether chat`.

use crate::agent::{Core, ensure_state_dir};
use crate::client_cmds::{Join, RunEnd, chat_with};
use crate::config::AgentConfig;
use anyhow::{Context, Result};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tether_proto::HelloResult;
use tether_transport::client::Client;

/// A private directory removed on drop.
struct TempState(PathBuf);

impl TempState {
    fn new() -> Result<TempState> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("tether-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(TempState(dir))
    }
}

impl Drop for TempState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn hello(client: &mut Client) -> Result<HelloResult> {
    client
        .call("hello", json!({"client_name": "tether-cli"}))
        .await
        .context("hello")
}

/// Runs one session of `mode` on an in-process core built from `cfg`.
async fn run_local(cfg: &AgentConfig, mode: &'static str, params: Value) -> Result<RunEnd> {
    // Tool calls are audited where the real agent audits them.
    ensure_state_dir(cfg)?;
    let audit = cfg.state_dir.join("audit.jsonl");
    let temp = TempState::new()?;
    let mut local = cfg.clone();
    local.state_dir = temp.0.clone();
    local.socket = temp.0.join("agent.sock");
    local.listen = None;
    local.clients.clear();
    let core = Core::start(&local, &audit).await?;
    let result = async {
        let mut client = Client::connect_unix(&core.socket).await?;
        let hello = hello(&mut client).await?;
        chat_with(client, hello, join(mode, params), true).await
    }
    .await;
    core.stop().await;
    result
}

fn join(mode: &'static str, params: Value) -> Join {
    Join::New {
        mode,
        params: Some(params),
        title: None,
        policy: None,
        agent_id: None,
    }
}

fn exit_code(end: RunEnd) -> ExitCode {
    match end {
        RunEnd::Completed => ExitCode::SUCCESS,
        RunEnd::Failed(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        RunEnd::Interrupted => ExitCode::from(130),
    }
}

/// `tether inspect [PLUGIN] [--target T]`
pub async fn inspect(
    config: Option<&Path>,
    plugin: &str,
    target: Option<String>,
) -> Result<ExitCode> {
    let cfg = AgentConfig::load(config)?;
    let mut params = Map::new();
    params.insert("plugin".into(), Value::String(plugin.to_owned()));
    if let Some(t) = target {
        params.insert("target".into(), Value::String(t));
    }
    let end = run_local(&cfg, "inspect", Value::Object(params)).await?;
    Ok(exit_code(end))
}

/// `tether diagnose --alert "…" [--plugin P] [--target T]`
pub async fn diagnose(
    config: Option<&Path>,
    alert: String,
    plugin: Option<String>,
    target: Option<String>,
) -> Result<ExitCode> {
    let cfg = AgentConfig::load(config)?;
    let mut params = Map::new();
    params.insert("alert".into(), Value::String(alert));
    if let Some(p) = plugin {
        params.insert("plugin".into(), Value::String(p));
    }
    if let Some(t) = target {
        params.insert("target".into(), Value::String(t));
    }
    let params = Value::Object(params);
    let end = match Client::connect_unix(&cfg.socket).await {
        Ok(mut client) => {
            let hello = hello(&mut client).await?;
            chat_with(client, hello, join("diagnose", params), true).await?
        }
        Err(_) => run_local(&cfg, "diagnose", params).await?,
    };
    Ok(exit_code(end))
}
