//! `inspect`, `diagnose`, `checks run` and the listing commands as scripts use them
//! (issue 10, items 2–5 and 7): permission prompts without a terminal, `--yes`/`--no` in the
//! audit log, monitoring-plugin exit codes, `--output json`, a closed stdout, `up --port`, and
//! no hub dialing from one-shot commands.

mod common;

use common::{AgentProc, BIN, PATIENCE, client, free_port, text, write_config};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A diagnosis that runs `shell` (needs approval: it would create `marker`), then reports.
fn diagnose_script(dir: &Path, report: &str) -> String {
    let marker = dir.join("marker");
    let report = serde_json::to_string(report).expect("json string");
    format!(
        r#"{{"loop": true, "responses": [
  {{"text": "Looking. ", "reasoning": "hmm", "tool_calls": [{{"tool": "shell", "args": {{"command": "touch {}"}}}}]}},
  {{"text": {report}}}
]}}"#,
        marker.display()
    )
}

const CRITICAL_REPORT: &str =
    "## Severity\nCRITICAL\n## Summary\nThe disk is full.\n## Root cause\nLogs.";

fn audit_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("state/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line"))
        .collect()
}

fn shell_audit(dir: &Path) -> Value {
    audit_lines(dir)
        .into_iter()
        .find(|l| l["tool"] == "shell")
        .expect("the shell call is audited")
}

#[test]
fn diagnose_without_a_terminal_denies_prompts_and_prints_only_the_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &diagnose_script(dir.path(), CRITICAL_REPORT));
    // Piped input is neither an answer nor chat input.
    let out = client(
        &config,
        &["diagnose", "--alert", "disk / is full"],
        "y\ny\nrm -rf /\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        !dir.path().join("marker").exists(),
        "the tool ran without approval"
    );
    assert!(
        stderr.contains("denied: stdin is not a terminal"),
        "no notice: {stderr}"
    );
    assert_eq!(
        stdout.trim_end(),
        CRITICAL_REPORT,
        "stdout is the report alone"
    );
    assert!(
        !stdout.contains('\x1b'),
        "colour codes on stdout: {stdout:?}"
    );
    let audit = shell_audit(dir.path());
    assert_eq!(audit["decision"], "denied", "{audit}");
    assert_eq!(audit["via"], "no-terminal", "{audit}");
}

#[test]
fn diagnose_yes_approves_as_the_invoking_user_and_no_denies_both_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &diagnose_script(dir.path(), CRITICAL_REPORT));

    // --no, in-process (no agent running).
    let out = client(&config, &["diagnose", "--alert", "x", "--no"], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!dir.path().join("marker").exists());
    let audit = shell_audit(dir.path());
    assert_eq!(audit["decision"], "denied", "{audit}");
    assert_eq!(audit["via"], "--no", "{audit}");
    std::fs::remove_file(dir.path().join("state/audit.jsonl")).expect("rm audit");

    // --yes, through the running agent: approved by the Unix-socket peer, a human.
    let agent = AgentProc::start(&config);
    let out = client(&config, &["diagnose", "--alert", "x", "--yes"], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(dir.path().join("marker").exists(), "--yes did not approve");
    let audit = shell_audit(dir.path());
    assert_eq!(audit["decision"], "allowed", "{audit}");
    assert_eq!(audit["via"], "--yes", "{audit}");
    assert_eq!(audit["approved_by"]["class"], "human", "{audit}");
    drop(agent);

    let out = client(&config, &["diagnose", "--alert", "x", "--yes", "--no"], "");
    assert_eq!(
        out.status.code(),
        Some(3),
        "conflicting flags: {}",
        text(&out)
    );
}

#[test]
fn diagnose_exit_code_follows_the_stated_severity_else_the_alert_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        r###"{"loop": true, "responses": [{"text": "## Summary\nNothing to add."}]}"###,
    );
    let code = |args: &[&str]| {
        let mut all = vec!["diagnose", "--alert", "x"];
        all.extend_from_slice(args);
        let out = client(&config, &all, "");
        (out.status.code(), out)
    };
    // No severity in the report: the alert's status, WARNING when not given.
    assert_eq!(code(&[]).0, Some(1));
    assert_eq!(code(&["--status", "Ok"]).0, Some(0));
    assert_eq!(code(&["--status", "critical"]).0, Some(2));
    let (c, out) = code(&["--status", "bogus"]);
    assert_eq!(c, Some(3), "{}", text(&out));

    let (c, out) = code(&["--output", "json", "--status", "Critical"]);
    assert_eq!(c, Some(2));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(doc["status"], "CRITICAL", "{doc}");
    assert_eq!(doc["exit_code"], 2, "{doc}");
    assert_eq!(doc["severity_from"], "alert", "{doc}");
    assert!(
        doc["report"]
            .as_str()
            .is_some_and(|r| r.contains("Nothing to add"))
    );

    // Without a model, the inspection's status counts.
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, "listen = \"off\"\nstate_dir = \"state\"\n").expect("config");
    let missing = dir.path().join("missing");
    let out = client(
        &plain,
        &[
            "diagnose",
            "--alert",
            "disk full",
            "--plugin",
            "disk",
            "--target",
            missing.to_str().expect("utf-8"),
            "--status",
            "Ok",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

fn plain_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!("listen = \"off\"\nstate_dir = \"state\"\n{extra}"),
    )
    .expect("config");
    config
}

#[test]
fn inspect_exit_codes_follow_the_monitoring_plugin_convention() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("logs")).expect("mkdir");
    std::fs::write(dir.path().join("logs/app.log"), "all good\n").expect("log");
    let config = plain_config(dir.path(), "[tools]\nlog_dirs = [\"logs\"]\n");
    let run = |args: &[&str]| client(&config, args, "");

    // OK
    let log = dir.path().join("logs/app.log");
    let out = run(&["inspect", "log", "--target", log.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // CRITICAL: nothing listens on the port.
    let closed = format!("127.0.0.1:{}", free_port());
    let out = run(&["inspect", "tcp", "--target", &closed]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // UNKNOWN: the target does not exist (it used to report `/` as fine, exit 0).
    let missing = dir.path().join("nonexistent");
    let out = run(&[
        "inspect",
        "disk",
        "--target",
        missing.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("UNKNOWN") && err.contains("does not exist"),
        "{err}"
    );

    // UNKNOWN: could not run at all.
    let out = run(&["inspect", "nonsense"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = run(&["inspect", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = 42\n").expect("bad config");
    let out = client(&bad, &["inspect", "cpu"], "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    // --output json: the status and the findings, and still the exit code.
    let out = run(&[
        "inspect",
        "disk",
        "--target",
        missing.to_str().expect("utf-8"),
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(doc["status"], "UNKNOWN", "{doc}");
    assert_eq!(doc["exit_code"], 3, "{doc}");
    let findings = doc["findings"].as_array().expect("findings");
    assert!(
        findings.iter().any(|f| f["severity"] == "UNKNOWN"
            && f["detail"]
                .as_str()
                .is_some_and(|d| d.contains("does not exist"))),
        "{doc}"
    );
    let out = run(&["inspect", "nonsense", "--output", "json"]);
    assert_eq!(out.status.code(), Some(3));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(doc["status"], "UNKNOWN", "{doc}");
    assert!(
        doc["error"]
            .as_str()
            .is_some_and(|e| e.contains("nonsense")),
        "{doc}"
    );
}

#[test]
fn checks_run_exit_codes_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = plain_config(dir.path(), "");
    std::fs::create_dir(dir.path().join("conf.d")).expect("mkdir");
    let exec = |instances: &[&str]| {
        let mut toml = String::new();
        for (i, cmd) in instances.iter().enumerate() {
            toml.push_str(&format!(
                "[[instances]]\nname = \"i{i}\"\ncommand = \"sh\"\nargs = [\"-c\", \"{cmd}\"]\ntimeout = \"1s\"\n"
            ));
        }
        std::fs::write(dir.path().join("conf.d/exec.toml"), toml).expect("exec.toml");
        client(&config, &["checks", "run", "exec"], "")
    };
    assert_eq!(exec(&["exit 0"]).status.code(), Some(0));
    assert_eq!(exec(&["exit 0", "exit 1"]).status.code(), Some(1));
    // An instance that could not run (timed out) is UNKNOWN; it outranks a warning…
    let out = exec(&["exit 1", "sleep 5"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // … and a critical value outranks it.
    assert_eq!(exec(&["sleep 5", "exit 2"]).status.code(), Some(2));

    let out = client(&config, &["checks", "run", "exec", "--output", "json"], "");
    assert_eq!(out.status.code(), Some(2));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(doc["status"], "CRITICAL", "{doc}");
    assert_eq!(doc["values"][0]["status"], "Critical", "{doc}");
    assert_eq!(doc["errors"][0]["instance"], "i0", "{doc}");

    // Could not run at all: UNKNOWN.
    let out = client(&config, &["checks", "run", "nonsense"], "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    std::fs::write(dir.path().join("conf.d/exec.toml"), "instances = 3\n").expect("broken");
    let out = client(&config, &["checks", "run", "exec"], "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

/// Runs `tether ARGS` with its stdout a pipe whose reader is already gone.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let child = Command::new(BIN)
        .args(args)
        .env("TETHER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.wait_with_output().expect("wait")
}

#[test]
fn a_closed_stdout_ends_quietly_instead_of_panicking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        r#"{"responses": [{"text": "hi"}], "loop": true}"#,
    );
    let config = config.to_str().expect("utf-8");
    let agent = AgentProc::start(Path::new(config));
    for (args, expected) in [
        (vec!["sessions", "--json", "--config", config], 0),
        (vec!["sessions", "--config", config], 0),
        (vec!["checks", "run", "uptime", "--config", config], 0),
        (vec!["alerts", "--json", "--config", config], 0),
        (vec!["inspect", "nonsense", "--config", config], 3),
    ] {
        let out = with_closed_stdout(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert_eq!(out.status.code(), Some(expected), "{args:?}: {err}");
    }
    drop(agent);
}

#[test]
fn inspect_and_checks_run_never_dial_the_hub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    hub.set_nonblocking(true).expect("nonblocking");
    let port = hub.local_addr().expect("addr").port();
    let config = plain_config(
        dir.path(),
        &format!(
            "[hub]\nurl = \"ws://127.0.0.1:{port}\"\nallow_plaintext = true\ntoken = \"agent-token-0123456789abcdef\"\n"
        ),
    );
    for args in [&["inspect", "cpu"][..], &["checks", "run", "uptime"][..]] {
        let out = client(&config, args, "");
        assert!(
            matches!(out.status.code(), Some(0..=2)),
            "{args:?}: {}",
            text(&out)
        );
    }
    match hub.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("a one-shot command dialed the hub (from {from})"),
        Err(e) => panic!("accept: {e}"),
    }
}

#[test]
fn checks_list_shows_a_broken_config_file_and_its_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = plain_config(dir.path(), "");
    std::fs::create_dir(dir.path().join("conf.d")).expect("mkdir");
    std::fs::write(
        dir.path().join("conf.d/uptime.toml"),
        "[[instances]]\ninterval = \"soon\"\n",
    )
    .expect("broken");
    let _agent = AgentProc::start(&config);
    let out = client(&config, &["checks", "list"], "");
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("uptime.toml"), "{listing}");
    assert!(
        listing.contains("interval"),
        "the error is shown: {listing}"
    );
    assert!(!listing.contains("no check instances"), "{listing}");
}

/// Reads `tether up`'s stdout until the console line; returns it.
fn console_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("console:") {
                let _ = tx.send(line);
            }
        }
    });
    rx.recv_timeout(PATIENCE)
        .expect("`tether up` printed no console URL")
}

fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.wait();
}

#[test]
fn up_port_wins_over_an_existing_hub_toml() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = |port: u16| {
        Command::new(BIN)
            .args(["up", "--port", &port.to_string()])
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("TETHER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn up")
    };
    let first = free_port();
    let mut child = up(first);
    assert!(console_line(&mut child).contains(&format!(":{first}")));
    stop(child);

    let hub_toml =
        std::fs::read_to_string(dir.path().join("config/tether/hub.toml")).expect("hub.toml");
    let operator = hub_toml
        .lines()
        .find_map(|l| l.strip_prefix("token = \""))
        .and_then(|t| t.strip_suffix('"'))
        .expect("operator token")
        .to_owned();

    let second = free_port();
    let mut child = up(second);
    let line = console_line(&mut child);
    assert!(line.contains(&format!(":{second}")), "{line}");
    // The local agent follows the hub to its new port.
    let deadline = Instant::now() + PATIENCE;
    while !agents_json(second, &operator).contains("\"connected\":true") {
        assert!(
            Instant::now() < deadline,
            "the local agent never linked to the hub on --port"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(child);
    // Written back only on the first run.
    let again =
        std::fs::read_to_string(dir.path().join("config/tether/hub.toml")).expect("hub.toml");
    assert_eq!(again, hub_toml);
}

/// `GET /api/v1/agents` on the hub at `port` (the raw response; empty when unreachable).
fn agents_json(port: u16, token: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET /api/v1/agents HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}
