//! `shell`: runs a command with `/bin/sh -c`. Always needs permission.
//!
//! The command runs in its own process group so that cancel and timeout kill everything it
//! started, not just the shell. It gets a minimal environment
//! ([`crate::process::minimal_env`]): the model reads what it prints, and the agent's
//! environment holds API keys and tokens. Output is captured up to the cap; the rest is drained and
//! counted so a chatty command can never block on a full pipe.

use super::{Tool, ToolContext, ToolOutput, parse_args};
use crate::process::{kill_group, minimal_env};
use crate::tools::ToolSpec;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use tether_proto::MAX_TOOL_OUTPUT_BYTES;
use tokio::io::{AsyncRead, AsyncReadExt};

pub struct Shell {
    timeout: Duration,
}

impl Shell {
    pub fn new(timeout: Duration) -> Self {
        Shell { timeout }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    command: String,
    #[serde(default)]
    timeout_sec: Option<u64>,
}

/// Reads a pipe to its end, keeping at most `cap` bytes and counting the rest.
async fn drain(mut pipe: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, usize) {
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                let take = room.min(n);
                kept.extend_from_slice(&buf[..take]);
                dropped += n - take;
            }
        }
    }
    (kept, dropped)
}

enum Ending {
    Exited(std::process::ExitStatus),
    TimedOut,
    Cancelled,
    WaitFailed(std::io::Error),
}

/// Runs `command` under `/bin/sh -c` and reports its exit and output.
pub async fn run_command(
    command: &str,
    timeout: Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> ToolOutput {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    minimal_env(&mut cmd)
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return ToolOutput::error(format!("cannot start /bin/sh: {e}")),
    };
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_task = tokio::spawn(async move {
        match stdout {
            Some(p) => drain(p, MAX_TOOL_OUTPUT_BYTES).await,
            None => (Vec::new(), 0),
        }
    });
    let err_task = tokio::spawn(async move {
        match stderr {
            Some(p) => drain(p, MAX_TOOL_OUTPUT_BYTES / 2).await,
            None => (Vec::new(), 0),
        }
    });

    let ending = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => Ending::Exited(s),
            Err(e) => Ending::WaitFailed(e),
        },
        _ = tokio::time::sleep(timeout) => Ending::TimedOut,
        _ = cancel.cancelled() => Ending::Cancelled,
    };
    // Whatever happened, nothing the command started may outlive the call: background
    // children would otherwise keep the pipes open and the readers waiting.
    if let Some(pid) = pid {
        kill_group(pid);
    }
    let _ = child.wait().await;
    let grace = Duration::from_secs(2);
    let (stdout, out_dropped) = tokio::time::timeout(grace, out_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let (stderr, err_dropped) = tokio::time::timeout(grace, err_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();

    let mut text = String::new();
    let ok = match &ending {
        Ending::Exited(status) => {
            match status.code() {
                Some(code) => text.push_str(&format!("exit status: {code}\n")),
                None => text.push_str("killed by a signal\n"),
            }
            status.success()
        }
        Ending::TimedOut => {
            text.push_str(&format!(
                "timed out after {} s; the command and its children were killed\n",
                timeout.as_secs()
            ));
            false
        }
        Ending::Cancelled => {
            text.push_str("cancelled; the command and its children were killed\n");
            false
        }
        Ending::WaitFailed(e) => {
            text.push_str(&format!("could not wait for the command: {e}\n"));
            false
        }
    };
    text.push_str(&String::from_utf8_lossy(&stdout));
    if out_dropped > 0 {
        text.push_str(&format!(
            "\n[{out_dropped} more bytes of stdout not shown]\n"
        ));
    }
    if !stderr.is_empty() {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("--- stderr ---\n");
        text.push_str(&String::from_utf8_lossy(&stderr));
        if err_dropped > 0 {
            text.push_str(&format!(
                "\n[{err_dropped} more bytes of stderr not shown]\n"
            ));
        }
    }
    ToolOutput { ok, output: text }
}

impl Tool for Shell {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "shell".into(),
            description: "Run a shell command on this host with /bin/sh -c and return its exit \
                status, stdout and stderr. Every call must be approved by a human first."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command line to run."},
                    "timeout_sec": {"type": "integer", "minimum": 1,
                        "description": "Stop the command after this many seconds (capped by the agent's limit)."}
                },
                "required": ["command"],
                "additionalProperties": false
            }),
        }
    }

    fn needs_permission(&self, _args: &Value) -> bool {
        true
    }

    fn read_only(&self) -> bool {
        false
    }

    fn call<'a>(&'a self, args: Value, ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let args: Args = match parse_args("shell", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            if args.command.trim().is_empty() {
                return ToolOutput::error("`command` is empty");
            }
            let timeout = args
                .timeout_sec
                .map(Duration::from_secs)
                .map_or(self.timeout, |t| t.min(self.timeout));
            run_command(&args.command, timeout, &ctx.cancel).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn reports_exit_status_and_both_streams() {
        let out = run_command(
            "echo out; echo err >&2; exit 3",
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await;
        assert!(!out.ok);
        assert!(out.output.starts_with("exit status: 3\n"), "{}", out.output);
        assert!(out.output.contains("out\n"));
        assert!(out.output.contains("--- stderr ---\nerr"));
    }

    #[tokio::test]
    async fn output_is_capped_and_the_rest_counted() {
        let out = run_command(
            "head -c 100000 /dev/zero | tr '\\0' x",
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await;
        assert!(out.ok, "{}", out.output);
        assert!(out.output.contains("more bytes of stdout not shown"));
    }

    /// True while `pid` is a live (not zombie) process.
    fn alive(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                // The state letter follows the parenthesised command name.
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z') && !state.starts_with('X')
            }
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn cancel_kills_the_command_and_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("child.pid");
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        let pf = pidfile.clone();
        tokio::spawn(async move {
            // Cancel once the background child has announced itself.
            while std::fs::read_to_string(&pf)
                .map(|s| s.trim().is_empty())
                .unwrap_or(true)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            c2.cancel();
        });
        let cmd = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let out = run_command(&cmd, Duration::from_secs(120), &cancel).await;
        assert!(!out.ok);
        assert!(out.output.starts_with("cancelled"), "{}", out.output);
        let pid = std::fs::read_to_string(&pidfile).expect("pid file");
        // SIGKILL is delivered asynchronously; give the kernel a bounded moment to finish.
        let mut gone = false;
        for _ in 0..500 {
            if !alive(pid.trim()) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "background child {pid} survived the cancel");
    }

    #[tokio::test]
    async fn timeout_kills_the_command() {
        let out = run_command(
            "sleep 30",
            Duration::from_millis(200),
            &CancellationToken::new(),
        )
        .await;
        assert!(!out.ok);
        assert!(out.output.starts_with("timed out"), "{}", out.output);
    }
}
