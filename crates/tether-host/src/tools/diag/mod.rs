//! The diagnostic toolset: read-only views of this host for the model and for inspect reports.
//!
//! Every tool answers with pretty JSON whose field names are stable (the report structs are
//! public and also `Deserialize`, so [`crate::inspect`] parses exactly what the tools print).
//! Lists are bounded; a list that was cut says so in a `truncated` field.
//!
//! | tool | reads | permission |
//! |---|---|---|
//! | `cpu_load` | `/proc/stat` sampled twice, `/proc/loadavg`, `/proc/pressure/cpu` | never |
//! | `memory` | `/proc/meminfo`, `/proc/pressure/memory` | never |
//! | `disks` | `/proc/self/mounts`, `statvfs` | never |
//! | `disk_io` | `/proc/diskstats` sampled twice | never |
//! | `top_processes` | `/proc/PID/stat` sampled twice | never |
//! | `process_detail` | `/proc/PID/{stat,status,limits,fd,cmdline,cwd,exe,io}` | never |
//! | `sockets` | `/proc/net/{tcp,tcp6,udp,udp6}`, `/proc/PID/fd` | never |
//! | `net_interfaces` | `/proc/net/dev`, `/sys/class/net`, `getifaddrs` | never |
//! | `kernel_log` | `/dev/kmsg`, else `journalctl -k` | never |
//! | `systemd_unit` | `systemctl show`, `journalctl -u` | never |
//! | `log_tail`, `log_grep` | files below the configured log directories | never |
//! | `dns_resolve` | the system resolver | never |
//! | `tcp_check`, `http_check` | a connection to the target | unless the target is this host |
//!
//! All tools are read-only: they change nothing on the host. The two probes can reach other
//! hosts, which is why they ask for permission then (design rule 8).
//!
//! Every call returns promptly when its [`ToolContext::cancel`](super::ToolContext) fires:
//! sampling waits and blocking reads race the token (blocking work goes through
//! [`run_blocking`](super::blocking::run_blocking), which also bounds it in time and in
//! threads), and child processes are spawned with `kill_on_drop`, so they die with the
//! abandoned call.

pub mod cpu;
pub mod disks;
pub mod logs;
pub mod memory;
pub mod net;
pub mod probes;
pub mod process;
pub mod systemd;

use super::blocking::{BLOCKING_TIMEOUT, run_blocking};
use super::{Tool, ToolOutput};
use serde::Serialize;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Settings of the diagnostic tools.
#[derive(Clone, Debug)]
pub struct DiagConfig {
    /// `log_tail` and `log_grep` only read below these directories (symlinks resolved).
    pub log_dirs: Vec<PathBuf>,
    /// Longest a child process (`systemctl`, `journalctl`) or a network probe may take.
    pub command_timeout: Duration,
}

impl Default for DiagConfig {
    fn default() -> Self {
        DiagConfig {
            log_dirs: vec![PathBuf::from("/var/log")],
            command_timeout: Duration::from_secs(30),
        }
    }
}

/// The diagnostic tools configured by `cfg`.
pub fn diagnostic_tools(cfg: &DiagConfig) -> Vec<Arc<dyn Tool>> {
    vec![
        Arc::new(cpu::CpuLoad),
        Arc::new(memory::MemoryTool),
        Arc::new(disks::DisksTool),
        Arc::new(disks::DiskIo),
        Arc::new(process::TopProcesses),
        Arc::new(process::ProcessDetailTool),
        Arc::new(net::Sockets),
        Arc::new(net::NetInterfaces),
        Arc::new(logs::KernelLog::new(cfg.command_timeout)),
        Arc::new(systemd::SystemdUnit::new(cfg.command_timeout)),
        Arc::new(logs::LogTail::new(cfg.log_dirs.clone())),
        Arc::new(logs::LogGrep::new(cfg.log_dirs.clone())),
        Arc::new(probes::DnsResolve::new(cfg.command_timeout)),
        Arc::new(probes::TcpCheck::new(cfg.command_timeout)),
        Arc::new(probes::HttpCheck::new(cfg.command_timeout)),
    ]
}

/// Default wait between the two readings of a sampling tool.
pub const DEFAULT_SAMPLE_MS: u64 = 500;

/// The answer to a cancelled call.
pub(crate) fn cancelled() -> ToolOutput {
    ToolOutput::error("cancelled")
}

/// `value` as pretty JSON; `ok` sets the result's success flag.
pub(crate) fn json_output<T: Serialize>(value: &T, ok: bool) -> ToolOutput {
    match serde_json::to_string_pretty(value) {
        Ok(text) => ToolOutput { ok, output: text },
        Err(e) => ToolOutput::error(format!("cannot encode the reading: {e}")),
    }
}

/// Waits `ms` milliseconds unless the call is cancelled first.
pub(crate) async fn pause(ms: u64, cancel: &CancellationToken) -> Result<(), ToolOutput> {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
        _ = cancel.cancelled() => Err(cancelled()),
    }
}

/// Runs blocking work (reads of `/proc` and `/sys` that may stall) through the tools' shared
/// cap ([`run_blocking`]): it gives up when the call is cancelled or after
/// [`BLOCKING_TIMEOUT`]. Abandoned work finishes in the background; it only reads.
pub(crate) async fn blocking<T: Send + 'static>(
    tool: &str,
    cancel: &CancellationToken,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ToolOutput> {
    run_blocking(tool, cancel, BLOCKING_TIMEOUT, move |_| work())
        .await
        .map_err(ToolOutput::from)
}

/// What a child process printed.
pub(crate) struct CommandOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args…` (no shell) with a timeout, killing it when the call is cancelled or
/// the time is up. `Err` says why it did not complete.
pub(crate) async fn run_program(
    program: &str,
    args: &[&str],
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<CommandOutput, String> {
    let mut cmd = tokio::process::Command::new(program);
    // What these helpers print goes to the model: none of the agent's secrets.
    crate::process::minimal_env(&mut cmd)
        .args(args)
        .env("LC_ALL", "C")
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    // Dropping the `wait_with_output` future drops the child, and kill_on_drop kills it.
    tokio::select! {
        out = child.wait_with_output() => {
            let out = out.map_err(|e| format!("`{program}` failed: {e}"))?;
            Ok(CommandOutput {
                success: out.status.success(),
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
        _ = tokio::time::sleep(timeout) => Err(format!(
            "`{program}` did not finish within {} and was killed",
            humantime::format_duration(timeout)
        )),
        _ = cancel.cancelled() => Err("cancelled".into()),
    }
}

pub(crate) use crate::text::{clip, round1, round2};

/// The current time as RFC 3339 (UTC, seconds).
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_program_reports_output_and_honours_cancel() {
        let cancel = CancellationToken::new();
        let out = run_program(
            "/bin/sh",
            &["-c", "echo hi; exit 3"],
            Duration::from_secs(10),
            &cancel,
        )
        .await
        .expect("ran");
        assert!(!out.success);
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "hi\n");

        let missing = run_program("/nonexistent/prog", &[], Duration::from_secs(1), &cancel).await;
        assert!(missing.is_err_and(|e| e.contains("cannot run")));

        let slow = run_program(
            "/bin/sh",
            &["-c", "sleep 30"],
            Duration::from_millis(100),
            &cancel,
        )
        .await;
        assert!(slow.is_err_and(|e| e.contains("did not finish")));

        cancel.cancel();
        let started = std::time::Instant::now();
        let out = run_program(
            "/bin/sh",
            &["-c", "sleep 30"],
            Duration::from_secs(60),
            &cancel,
        )
        .await;
        assert_eq!(out.err().as_deref(), Some("cancelled"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
