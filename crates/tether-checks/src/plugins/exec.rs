//! `exec`: runs a command and maps its result to measurements, Nagios style.
//!
//! Settings:
//! * `command` (required) — the program (a path, or a name looked up in `PATH`). It is run
//!   directly, not through a shell.
//! * `args` — its arguments (a list of strings).
//! * `env` — environment variables for the command (`env = { LANG = "C" }`). It starts with
//!   a minimal environment: `PATH`, `HOME`, `LANG`, `LC_ALL`, `LC_CTYPE`, `TERM`, `TZ`, `USER`,
//!   `LOGNAME`, `SHELL` and `TMPDIR` from the agent's (those set), then these.
//! * `inherit_env` — `true` gives the command the agent's whole environment instead
//!   (API keys and tokens included), plus `env`. Default `false`.
//!
//! It may run for nine tenths of the instance's `timeout` (the common key, default `10s`;
//! raise it for slow scripts). On timeout or cancellation its whole process group is killed
//! and the run fails.
//!
//! The command's stdin is empty; the first 64 KiB of its stdout and stderr are kept. It is
//! finished when it has exited and closed its output (a background process that keeps
//! stdout open holds the run until the timeout).
//!
//! Plain output: the exit code is the verdict — 0 Ok, 1 Warning, 2 Critical, 3 (Nagios'
//! UNKNOWN) Warning, anything else or death by a signal Critical — in one `status`
//! measurement (target: the command line) with the first line of stdout as its description.
//!
//! JSON output: when stdout is a JSON object or an array of them, each becomes a measurement:
//!
//! ```json
//! {"check": "queue_depth", "target": "orders", "value": 87, "unit": "count",
//!  "description": "87 orders waiting", "thresholds": {"warn_ge": 50, "critical_ge": 200}}
//! {"status": "warning", "description": "replica lags 40 s"}
//! ```
//!
//! * `status` (`ok`, `info`, `warning`, `critical`, `unknown` → Warning, or 0–3) makes a
//!   verdict; otherwise `value` makes a number judged against `thresholds` (the instance's
//!   thresholds override them); with neither, the exit code gives the verdict.
//! * `check` defaults to `status` (a verdict) or `value` (a number); `target` to the command
//!   line. Two results with the same `check` and `target` fail the run.
//! * `unit` is one of `%`, `ms`, `s`, `days`, `count`, `bytes` (others are dropped).
//!
//! | check             | target       | unit | default thresholds                 |
//! |-------------------|--------------|------|------------------------------------|
//! | `status`          | command line |      | (Status) from the exit code        |
//! | from JSON `check` | JSON `target`| JSON | JSON `thresholds`                  |

use super::{CANCELLED, Settings, clip, work_budget};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Status, Thresholds, Value};
use futures_util::future::BoxFuture;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tether_host::process::{kill_group, minimal_env};
use tokio::io::{AsyncRead, AsyncReadExt};

const KEYS: &[&str] = &["command", "args", "env", "inherit_env"];

/// Most bytes of stdout (and of stderr) kept; the rest is read and dropped.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Most measurements one JSON answer may hold.
pub const MAX_RESULTS: usize = 1000;

pub struct ExecPlugin;

impl Plugin for ExecPlugin {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn about(&self) -> &'static str {
        "Runs a command: Nagios-style exit code, or JSON measurements on stdout"
    }

    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        let s = Settings::new(self.name(), settings, self.settings_keys())?;
        let command = s.required_string("command")?;
        let args = s.strict_string_list("args")?.unwrap_or_default();
        let env = s.string_map("env")?.unwrap_or_default();
        for k in env.keys() {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(format!("`env`: `{k}` is not a valid variable name"));
            }
        }
        let inherit_env = s.bool("inherit_env")?.unwrap_or(false);
        let target = std::iter::once(command.as_str())
            .chain(args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Box::new(ExecCheck {
            target,
            command,
            args,
            env,
            inherit_env,
        }))
    }

    fn settings_keys(&self) -> &'static [&'static str] {
        KEYS
    }

    /// None: there is nothing to run by default.
    fn default_instances(&self) -> Vec<toml::Table> {
        Vec::new()
    }
}

struct ExecCheck {
    target: String,
    command: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// The agent's whole environment instead of the minimal one.
    inherit_env: bool,
}

/// Kills the command's process group if the run ends before the command did — including
/// when the engine drops the run's future on its own deadline (`kill_on_drop` alone would
/// only kill the direct child, not what it started).
struct GroupGuard {
    pgid: Option<u32>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            kill_group(pgid);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a pipe to its end, keeping the first `MAX_OUTPUT_BYTES`.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(mut pipe) = pipe else {
        return out;
    };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT_BYTES.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    out
}

/// The verdict of an exit status, Nagios style.
pub fn exit_status(code: Option<i32>) -> Status {
    match code {
        Some(0) => Status::Ok,
        Some(1) | Some(3) => Status::Warning,
        _ => Status::Critical,
    }
}

fn describe_exit(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown exit status".into(),
    }
}

fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// One result of a command's JSON answer.
#[derive(Debug, Deserialize)]
struct JsonResult {
    #[serde(default)]
    check: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    status: Option<serde_json::Value>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    thresholds: Option<Thresholds>,
}

fn parse_status(v: &serde_json::Value) -> Result<Status, String> {
    if let Some(n) = v.as_i64() {
        return Ok(exit_status(i32::try_from(n).ok()));
    }
    match v.as_str().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("ok") => Ok(Status::Ok),
        Some("info") => Ok(Status::Info),
        Some("warning" | "warn" | "unknown") => Ok(Status::Warning),
        Some("critical" | "crit") => Ok(Status::Critical),
        _ => Err(format!(
            "`status` {v} is not ok, info, warning, critical or unknown"
        )),
    }
}

fn static_unit(u: Option<&str>) -> &'static str {
    match u.map(str::trim) {
        Some("%") => "%",
        Some("ms") => "ms",
        Some("s") => "s",
        Some("days") => "days",
        Some("count") => "count",
        Some("bytes") => "bytes",
        _ => "",
    }
}

/// Maps a JSON answer to measurements. `None` when stdout is not a JSON check result.
pub fn json_measurements(
    stdout: &str,
    default_target: &str,
    exit: Status,
) -> Option<Result<Vec<Measurement>, String>> {
    let t = stdout.trim();
    if !(t.starts_with('{') || t.starts_with('[')) {
        return None;
    }
    let results: Vec<JsonResult> = if t.starts_with('[') {
        serde_json::from_str(t).ok()?
    } else {
        vec![serde_json::from_str(t).ok()?]
    };
    Some(to_measurements(results, default_target, exit))
}

fn to_measurements(
    results: Vec<JsonResult>,
    default_target: &str,
    exit: Status,
) -> Result<Vec<Measurement>, String> {
    if results.is_empty() {
        return Err("the command printed an empty JSON list".into());
    }
    if results.len() > MAX_RESULTS {
        return Err(format!(
            "the command printed {} results (at most {MAX_RESULTS})",
            results.len()
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(results.len());
    for (i, r) in results.into_iter().enumerate() {
        let status = r
            .status
            .as_ref()
            .map(parse_status)
            .transpose()
            .map_err(|e| format!("result {i}: {e}"))?;
        let value = match (status, r.value) {
            (Some(s), _) => Value::Status(s),
            (None, Some(v)) if v.is_finite() => Value::Number(v),
            (None, Some(_)) => return Err(format!("result {i}: `value` is not a finite number")),
            (None, None) => Value::Status(exit),
        };
        let check = match r.check.as_deref().map(str::trim) {
            Some("") => return Err(format!("result {i}: `check` is empty")),
            Some(c) => c.to_owned(),
            None if matches!(value, Value::Number(_)) => "value".to_owned(),
            None => "status".to_owned(),
        };
        let target = r
            .target
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| default_target.to_owned());
        if !seen.insert((check.clone(), target.clone())) {
            return Err(format!(
                "the command printed two results for check `{check}` on `{target}`"
            ));
        }
        let description = r
            .description
            .map(|d| clip(d.trim(), 1000))
            .unwrap_or_else(|| match (&value, r.value) {
                (Value::Number(v), _) => format!("{check} is {v}"),
                (Value::Status(_), Some(v)) => format!("{check}: {v}"),
                (Value::Status(s), None) => format!("{check} is {}", s.as_str()),
            });
        out.push(Measurement {
            check,
            target,
            labels: BTreeMap::new(),
            unit: if matches!(value, Value::Number(_)) {
                static_unit(r.unit.as_deref())
            } else {
                ""
            },
            value,
            description,
            defaults: r.thresholds.unwrap_or_default(),
        });
    }
    Ok(out)
}

enum Stop {
    Timeout(Duration),
    Cancelled,
}

impl Check for ExecCheck {
    fn run<'a>(&'a self, ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            let mut cmd = tokio::process::Command::new(&self.command);
            if !self.inherit_env {
                minimal_env(&mut cmd);
            }
            cmd.args(&self.args)
                .envs(&self.env)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .process_group(0);
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot run `{}`: {e}", self.command))?;
            let mut guard = GroupGuard { pgid: child.id() };
            let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
            let limit = work_budget(ctx.timeout);
            let finished = {
                let work =
                    async { tokio::join!(read_capped(stdout), read_capped(stderr), child.wait()) };
                tokio::select! {
                    r = tokio::time::timeout(limit, work) => r.map_err(|_| Stop::Timeout(limit)),
                    _ = ctx.cancel.cancelled() => Err(Stop::Cancelled),
                }
            };
            let (stdout, stderr, status) = match finished {
                Ok(r) => {
                    // The command finished (and was reaped); what it left running is its own.
                    guard.disarm();
                    r
                }
                Err(stop) => {
                    guard.kill();
                    let _ = child.kill().await;
                    return Err(match stop {
                        Stop::Cancelled => CANCELLED.into(),
                        Stop::Timeout(d) => format!(
                            "`{}` did not finish within {} and was killed",
                            self.target,
                            humantime::format_duration(d)
                        ),
                    });
                }
            };
            let status =
                status.map_err(|e| format!("waiting for `{}` failed: {e}", self.target))?;
            let stdout = String::from_utf8_lossy(&stdout);
            let stderr = String::from_utf8_lossy(&stderr);
            let verdict = exit_status(status.code());
            if let Some(result) = json_measurements(&stdout, &self.target, verdict) {
                return result.map_err(|e| format!("`{}`: {e}", self.target));
            }
            let description = match first_line(&stdout) {
                Some(line) => clip(line, 500),
                None => {
                    let mut d = format!("`{}` ended with {}", self.target, describe_exit(&status));
                    if let Some(line) = first_line(&stderr) {
                        d.push_str(": ");
                        d.push_str(&clip(line, 300));
                    }
                    d
                }
            };
            Ok(vec![super::verdict(
                "status",
                &self.target,
                verdict,
                description,
            )])
        })
    }
}
