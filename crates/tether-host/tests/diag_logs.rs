//! `log_tail` and `log_grep` inside a temporary directory configured as the allowed one.

use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tether_host::tools::diag::{
    DiagConfig, diagnostic_tools,
    logs::{LogDirReport, LogGrepReport, LogTailReport},
};
use tether_host::tools::{Tool, ToolContext, ToolOutput, schema};
use tokio_util::sync::CancellationToken;

struct Fixture {
    allowed: tempfile::TempDir,
    outside: tempfile::TempDir,
    tools: Vec<Arc<dyn Tool>>,
}

impl Fixture {
    fn new() -> Self {
        let allowed = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let tools = diagnostic_tools(&DiagConfig {
            log_dirs: vec![allowed.path().to_path_buf()],
            command_timeout: Duration::from_secs(10),
        });
        Fixture {
            allowed,
            outside,
            tools,
        }
    }

    fn path(&self, name: &str) -> String {
        self.allowed.path().join(name).display().to_string()
    }

    fn write(&self, name: &str, text: &str) -> String {
        std::fs::write(self.allowed.path().join(name), text).expect("write");
        self.path(name)
    }

    async fn call_with(&self, name: &str, args: Value, cancel: &CancellationToken) -> ToolOutput {
        let t = self
            .tools
            .iter()
            .find(|t| t.spec().name == name)
            .expect("tool");
        schema::validate(&t.spec().parameters, &args)
            .unwrap_or_else(|e| panic!("{name} {args}: {e}"));
        t.call(
            args,
            ToolContext {
                session_id: "s".into(),
                turn_id: "t".into(),
                cancel: cancel.clone(),
            },
        )
        .await
    }

    async fn call(&self, name: &str, args: Value) -> ToolOutput {
        self.call_with(name, args, &CancellationToken::new()).await
    }
}

fn decode<T: serde::de::DeserializeOwned>(out: &ToolOutput) -> T {
    assert!(out.ok, "{}", out.output);
    serde_json::from_str(&out.output).unwrap_or_else(|e| panic!("{e}: {}", out.output))
}

#[tokio::test]
async fn tail_reads_the_last_lines_inside_and_refuses_outside() {
    let f = Fixture::new();
    let text: String = (1..=500).map(|i| format!("event {i}\n")).collect();
    let log = f.write("app.log", &text);
    let r: LogTailReport = decode(&f.call("log_tail", json!({"path": log, "lines": 3})).await);
    assert_eq!(r.lines, ["event 498", "event 499", "event 500"]);
    assert_eq!(r.size_bytes, text.len() as u64);
    assert!(!r.from_start && !r.truncated);
    let all: LogTailReport = decode(
        &f.call("log_tail", json!({"path": log, "lines": 1000}))
            .await,
    );
    assert_eq!(all.lines.len(), 500);
    assert!(all.from_start);

    // Outside the allowed directory.
    let secret = f.outside.path().join("secret.log");
    std::fs::write(&secret, "top secret\n").expect("write");
    let out = f
        .call("log_tail", json!({"path": secret.display().to_string()}))
        .await;
    assert!(
        !out.ok && out.output.contains("outside the allowed directories"),
        "{}",
        out.output
    );
    // A symlink inside that escapes.
    std::os::unix::fs::symlink(&secret, f.allowed.path().join("escape.log")).expect("symlink");
    let out = f
        .call("log_tail", json!({"path": f.path("escape.log")}))
        .await;
    assert!(
        !out.ok && out.output.contains("outside the allowed directories"),
        "{}",
        out.output
    );
    assert!(!out.output.contains("top secret"));
    // `..` out of it.
    let dotdot = format!(
        "{}/../{}/secret.log",
        f.allowed.path().display(),
        f.outside
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
    );
    assert!(!f.call("log_tail", json!({"path": dotdot})).await.ok);
    // Relative paths.
    assert!(!f.call("log_tail", json!({"path": "app.log"})).await.ok);
}

#[tokio::test]
async fn compressed_and_binary_files_are_refused_clearly() {
    let f = Fixture::new();
    let gz = f.write("syslog.2.gz", "\u{1f}\u{8b}whatever");
    let out = f.call("log_tail", json!({"path": gz})).await;
    assert!(!out.ok);
    assert!(out.output.contains("is compressed (.gz)"), "{}", out.output);
    let out = f
        .call(
            "log_grep",
            json!({"path": f.path("syslog.2.gz"), "pattern": "x"}),
        )
        .await;
    assert!(
        !out.ok && out.output.contains("compressed"),
        "{}",
        out.output
    );
    std::fs::write(f.allowed.path().join("wtmp"), [0u8, 1, 2, 0, 65]).expect("write");
    let out = f.call("log_tail", json!({"path": f.path("wtmp")})).await;
    assert!(!out.ok && out.output.contains("binary"), "{}", out.output);
}

#[tokio::test]
async fn tail_of_a_directory_lists_it() {
    let f = Fixture::new();
    f.write("a.log", "1\n");
    f.write("b.log", "22\n");
    let dir = f.allowed.path().display().to_string();
    let r: LogDirReport = decode(&f.call("log_tail", json!({"path": dir})).await);
    let names: Vec<&str> = r.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a.log", "b.log"]);
    assert_eq!(r.entries[1].size_bytes, 3);
    assert_eq!(r.entries[0].kind, "file");
}

#[tokio::test]
async fn grep_finds_planted_lines_with_context() {
    let f = Fixture::new();
    let mut text = String::new();
    for i in 1..=1000 {
        match i {
            100 => text.push_str("ERROR disk quota exceeded for /srv\n"),
            700 => text.push_str("error: upstream timed out\n"),
            _ => text.push_str(&format!("info request {i} ok\n")),
        }
    }
    let log = f.write("app.log", &text);

    let exact: LogGrepReport = decode(
        &f.call("log_grep", json!({"path": log, "pattern": "ERROR"}))
            .await,
    );
    assert_eq!(exact.matches.len(), 1);
    assert_eq!(exact.matches[0].line_number, 100);
    assert!(!exact.truncated);
    assert_eq!(exact.bytes_scanned, text.len() as u64);

    let folded: LogGrepReport = decode(
        &f.call(
            "log_grep",
            json!({"path": log, "pattern": "error", "ignore_case": true, "context": 1}),
        )
        .await,
    );
    let numbers: Vec<u64> = folded.matches.iter().map(|m| m.line_number).collect();
    assert_eq!(numbers, [100, 700]);
    assert_eq!(folded.matches[1].before, ["info request 699 ok"]);
    assert_eq!(folded.matches[1].after, ["info request 701 ok"]);

    let glob: LogGrepReport = decode(
        &f.call(
            "log_grep",
            json!({"path": log, "pattern": "*timed out", "glob": true}),
        )
        .await,
    );
    assert_eq!(glob.matches.len(), 1);
    assert_eq!(glob.matches[0].line, "error: upstream timed out");

    let capped: LogGrepReport = decode(
        &f.call(
            "log_grep",
            json!({"path": log, "pattern": "request", "max_matches": 5}),
        )
        .await,
    );
    assert_eq!(capped.matches.len(), 5);
    assert!(capped.truncated);

    let none: LogGrepReport = decode(
        &f.call("log_grep", json!({"path": log, "pattern": "kernel panic"}))
            .await,
    );
    assert!(none.matches.is_empty() && !none.truncated);
}

#[tokio::test]
async fn grep_over_a_directory_skips_what_it_must() {
    let f = Fixture::new();
    f.write("one.log", "alpha\nneedle one\n");
    f.write("two.log", "needle two\n");
    f.write("old.log.1.gz", "needle gz\n");
    std::fs::write(f.allowed.path().join("lastlog"), b"needle\0binary").expect("write");
    let secret = f.outside.path().join("s.log");
    std::fs::write(&secret, "needle secret\n").expect("write");
    std::os::unix::fs::symlink(&secret, f.allowed.path().join("link.log")).expect("symlink");

    let dir = f.allowed.path().display().to_string();
    let r: LogGrepReport = decode(
        &f.call("log_grep", json!({"path": dir, "pattern": "needle"}))
            .await,
    );
    let lines: Vec<&str> = r.matches.iter().map(|m| m.line.as_str()).collect();
    assert_eq!(lines, ["needle one", "needle two"]);
    let skipped: Vec<&str> = r
        .skipped
        .iter()
        .map(|s| {
            Path::new(&s.file)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
        })
        .collect();
    assert!(skipped.contains(&"old.log.1.gz"), "{r:?}");
    assert!(skipped.contains(&"lastlog"), "{r:?}");
    assert!(skipped.contains(&"link.log"), "{r:?}");
    assert!(!lines.iter().any(|l| l.contains("secret")));
}

#[tokio::test]
async fn a_cancelled_grep_returns_promptly() {
    let f = Fixture::new();
    let log = f.write("big.log", &"some line of a log\n".repeat(200_000));
    let cancel = CancellationToken::new();
    cancel.cancel();
    let started = std::time::Instant::now();
    let out = f
        .call_with(
            "log_grep",
            json!({"path": log, "pattern": "never"}),
            &cancel,
        )
        .await;
    assert_eq!(out.output, "cancelled");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Issue 9: a FIFO (or a device) below the log directories must be refused by name, never
/// opened: open(2) of a FIFO blocks until a writer comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_are_refused_by_name_and_skipped_by_grep() {
    let f = Fixture::new();
    f.write("app.log", "boom here\n");
    let fifo = f.path("pipe");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let prompt = Duration::from_secs(10);
    let tail = tokio::time::timeout(prompt, f.call("log_tail", json!({"path": fifo})))
        .await
        .expect("log_tail on a FIFO hung");
    assert!(!tail.ok);
    assert_eq!(
        tail.output,
        format!("{fifo} is a FIFO (named pipe), not a regular file")
    );
    let grep = tokio::time::timeout(
        prompt,
        f.call("log_grep", json!({"path": fifo, "pattern": "boom"})),
    )
    .await
    .expect("log_grep on a FIFO hung");
    assert!(!grep.ok);
    assert_eq!(
        grep.output,
        format!("{fifo} is a FIFO (named pipe), not a regular file")
    );
    // Searching the directory names the FIFO as skipped and searches the rest.
    let dir = f.allowed.path().display().to_string();
    let r: LogGrepReport = decode(
        &tokio::time::timeout(
            prompt,
            f.call("log_grep", json!({"path": dir, "pattern": "boom"})),
        )
        .await
        .expect("log_grep of a directory holding a FIFO hung"),
    );
    assert_eq!(r.matches.len(), 1);
    assert!(
        r.skipped
            .iter()
            .any(|s| s.file == fifo && s.reason == "a FIFO (named pipe), not a regular file"),
        "{:?}",
        r.skipped
    );
}
