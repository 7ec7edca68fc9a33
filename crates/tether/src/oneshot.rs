//! `tether inspect` and `tether diagnose`: one session, one turn, a report.
//!
//! `inspect` always runs in-process (it needs no agent and no model). `diagnose` uses the
//! running agent when its socket answers, so the session is shared and kept; otherwise it runs
//! in-process too. The in-process run is a real agent core on a private temporary state
//! directory and socket, driven by the same client loop as `tether chat`.
//!
//! Exit codes follow the monitoring-plugin convention (see [`crate::verdict`]).

use crate::agent::{Core, ensure_state_dir};
use crate::client_cmds::{Answers, Join, RunEnd, RunMode, RunOutput, chat_with};
use crate::config::AgentConfig;
use crate::verdict::{self, Verdict};
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

/// How a report command prints and answers prompts.
#[derive(Clone, Copy, Debug)]
pub struct ReportOpts {
    pub json: bool,
    pub answers: Answers,
}

impl ReportOpts {
    fn mode(self) -> RunMode {
        use std::io::IsTerminal;
        RunMode::Report {
            answers: self.answers,
            stream: !self.json && std::io::stdout().is_terminal(),
            progress: true,
        }
    }
}

/// Runs one session of `mode` on an in-process core built from `cfg`.
async fn run_local(
    cfg: &AgentConfig,
    mode: &'static str,
    params: Value,
    run: RunMode,
) -> Result<RunOutput> {
    run_local_with(cfg, crate::agent::build_engine(cfg)?, mode, params, run).await
}

/// [`run_local`] with an engine built by the caller from `cfg` (`tether eval` wraps its model
/// to count rounds and tokens).
pub async fn run_local_with(
    cfg: &AgentConfig,
    engine: tether_engine::Engine,
    mode: &'static str,
    params: Value,
    run: RunMode,
) -> Result<RunOutput> {
    // Tool calls are audited where the real agent audits them.
    ensure_state_dir(cfg)?;
    let audit = cfg.state_dir.join("audit.jsonl");
    let temp = TempState::new()?;
    let mut local = cfg.clone();
    local.state_dir = temp.0.clone();
    local.socket = temp.0.join("agent.sock");
    local.listen = None;
    local.clients.clear();
    // Only the session: no hub link (it would dial with the agent's token under a new agent
    // id), no checks and no notifications (they belong to the running agent).
    local.hub = None;
    local.checks_dir = temp.0.join("conf.d");
    local.notifiers.clear();
    let core = Core::start_with(&local, &audit, engine).await?;
    let result = async {
        let mut client = Client::connect_unix(&core.socket).await?;
        let hello = hello(&mut client).await?;
        chat_with(client, hello, join(mode, params), run).await
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

/// A command that could not run (bad config, unknown plugin, no agent…): UNKNOWN, exit 3.
/// With `--output json` stdout still gets a document saying so.
pub fn could_not_run(command: &str, e: &anyhow::Error, json: bool) -> ExitCode {
    note(&format!("error: {e:#}"));
    if json {
        let doc = json!({
            "command": command,
            "status": Verdict::Unknown,
            "exit_code": Verdict::Unknown.code(),
            "error": format!("{e:#}"),
        });
        let _ = outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
    Verdict::Unknown.exit_code()
}

/// A line on stderr (never a panic when stderr is gone).
fn note(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Prints the report (text or JSON) and turns the verdict into the exit code, saying which on
/// stderr. A closed stdout ends quietly with the same code.
fn finish(run: &RunOutput, verdict: Verdict, doc: Value, json: bool) -> Result<ExitCode> {
    note(&format!(
        "status: {} (exit code {})",
        verdict.as_str(),
        verdict.code()
    ));
    let printed = if json {
        outln!("{}", serde_json::to_string_pretty(&doc)?)
    } else if run.streamed || run.answer.trim().is_empty() {
        Ok(())
    } else {
        outln!("{}", run.answer.trim_end())
    };
    match printed {
        Err(e) if !crate::out::is_closed(&e) => Err(e),
        _ => Ok(verdict.exit_code()),
    }
}

/// The run did not complete: why, as an error for the exit code (`None`: it completed).
fn run_failure(run: &RunOutput) -> Option<Result<ExitCode>> {
    match &run.end {
        RunEnd::Completed => None,
        RunEnd::Failed(e) => Some(Err(anyhow::anyhow!("{e}"))),
        // Ctrl-C: the shell convention, not a verdict on the host.
        RunEnd::Interrupted => Some(Ok(ExitCode::from(130))),
    }
}

/// `tether inspect [PLUGIN] [--target T]`: the exit code is the report's status (the worst
/// finding; UNKNOWN when the target could not be read).
pub async fn inspect(
    config: Option<&Path>,
    plugin: &str,
    target: Option<String>,
    opts: ReportOpts,
) -> Result<ExitCode> {
    let cfg = AgentConfig::load(config)?;
    let mut params = Map::new();
    params.insert("plugin".into(), Value::String(plugin.to_owned()));
    if let Some(t) = &target {
        params.insert("target".into(), Value::String(t.clone()));
    }
    let run = run_local(&cfg, "inspect", Value::Object(params), opts.mode()).await?;
    if let Some(failed) = run_failure(&run) {
        return failed;
    }
    let findings = verdict::inspection_findings(&run.answer);
    let status = verdict::inspection_verdict(&run.answer).unwrap_or(Verdict::Unknown);
    let mut doc = json!({
        "command": "inspect",
        "plugin": plugin,
        "target": target,
        "session_id": run.session_id,
        "status": status,
        "exit_code": status.code(),
        "findings": findings,
        "report": run.answer,
    });
    if status == Verdict::Unknown {
        let why = unknown_reason(&findings);
        note(&format!("UNKNOWN: {why}"));
        doc["error"] = Value::String(why);
    }
    finish(&run, status, doc, opts.json)
}

/// Why an inspection is UNKNOWN, from its UNKNOWN findings.
fn unknown_reason(findings: &[verdict::FindingRow]) -> String {
    let reasons: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == "UNKNOWN")
        .map(|f| format!("{}: {}", f.title, f.detail))
        .collect();
    if reasons.is_empty() {
        "the report has no findings summary".to_owned()
    } else {
        reasons.join("; ")
    }
}

/// `tether diagnose --alert "…" [--plugin P] [--target T] [--status S]`.
///
/// The exit code is the severity the report states (the model is asked for a `## Severity`
/// section); a report without a model is an inspection, whose status counts; a report that
/// states none falls back to the alert's `--status` (default WARNING: an alert was raised
/// and nothing said it is over).
pub async fn diagnose(
    config: Option<&Path>,
    alert: String,
    plugin: Option<String>,
    target: Option<String>,
    status: Option<String>,
    opts: ReportOpts,
) -> Result<ExitCode> {
    let alert_status = match status.as_deref() {
        None => None,
        Some(s) => Some(
            Verdict::of_alert_status(s)
                .with_context(|| format!("--status: `{s}` is not Critical, Warning, Info or Ok"))?,
        ),
    };
    let cfg = AgentConfig::load(config)?;
    let mut params = Map::new();
    params.insert("alert".into(), Value::String(alert.clone()));
    if let Some(p) = &plugin {
        params.insert("plugin".into(), Value::String(p.clone()));
    }
    if let Some(t) = &target {
        params.insert("target".into(), Value::String(t.clone()));
    }
    let params = Value::Object(params);
    let run = match Client::connect_unix(&cfg.socket).await {
        Ok(mut client) => {
            let hello = hello(&mut client).await?;
            chat_with(client, hello, join("diagnose", params), opts.mode()).await?
        }
        Err(_) => run_local(&cfg, "diagnose", params, opts.mode()).await?,
    };
    if let Some(failed) = run_failure(&run) {
        return failed;
    }
    let (status, from) = if let Some(v) = verdict::inspection_verdict(&run.answer) {
        (v, "inspection")
    } else if let Some(v) = verdict::stated_severity(&run.answer) {
        (v, "report")
    } else {
        (alert_status.unwrap_or(Verdict::Warning), "alert")
    };
    let doc = json!({
        "command": "diagnose",
        "alert": alert,
        "plugin": plugin,
        "target": target,
        "session_id": run.session_id,
        "status": status,
        "exit_code": status.code(),
        "severity_from": from,
        "report": run.answer,
    });
    finish(&run, status, doc, opts.json)
}
