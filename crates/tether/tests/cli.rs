//! The real `tether` binary, driven as a user would: an agent child process, client commands
//! as child processes over its Unix socket, SIGTERM, restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tether");

struct AgentProc {
    child: Child,
}

impl AgentProc {
    fn start(config: &Path) -> AgentProc {
        let child = Command::new(BIN)
            .args(["agent", "--config"])
            .arg(config)
            .env("TETHER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let socket = config.parent().expect("dir").join("state/agent.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "agent did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        AgentProc { child }
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    fn stop(self) -> std::process::ExitStatus {
        self.stop_within(Duration::from_secs(30))
    }

    /// SIGTERM, then wait at most `limit` for the process to exit.
    fn stop_within(mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not stop within {limit:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client subcommand with `stdin` as its input; bounded by a watchdog.
fn client(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let out = child.wait_with_output().expect("client output");
    drop(watchdog);
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_config(dir: &Path, script: &str) -> PathBuf {
    std::fs::write(dir.join("script.json"), script).expect("script");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "listen = \"off\"\nstate_dir = \"state\"\n[model]\nprovider = \"scripted\"\nscript = \"script.json\"\n",
    )
    .expect("config");
    config
}

const SHELL_SCRIPT: &str = r#"{"loop": true, "responses": [
  {"text": "Checking the kernel. ", "tool_calls": [{"tool": "shell", "args": {"command": "echo from-the-shell"}}]},
  {"text": "All done."}
]}"#;

#[test]
fn chat_answers_a_prompt_and_history_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), SHELL_SCRIPT);
    let agent = AgentProc::start(&config);

    let out = client(&config, &["chat"], "what kernel?\ny\n");
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("Checking the kernel."), "{shown}");
    assert!(
        shown.contains("from-the-shell"),
        "the approved tool did not run: {shown}"
    );
    assert!(shown.contains("All done."), "{shown}");

    let out = client(&config, &["sessions", "--json"], "");
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let sessions = list["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1);
    let id = sessions[0]["session_id"].as_str().expect("id").to_owned();

    let status = agent.stop();
    assert!(status.success(), "agent exit: {status}");

    // A new process on the same state: the session and its history are still there.
    let agent = AgentProc::start(&config);
    let out = client(&config, &["attach", &id], "");
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("what kernel?"), "history missing: {shown}");
    assert!(shown.contains("from-the-shell"), "history missing: {shown}");
    assert!(shown.contains("── live ──"), "{shown}");
    drop(agent);
}

#[test]
fn sigterm_ends_a_running_turn_with_an_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A slow answer: still streaming when SIGTERM arrives.
    let slow = r#"{"responses": [{"text": "a b c d e f g h i j k l m n o p q r s t u v w x y z", "chunk_delay_ms": 400}]}"#;
    let config = write_config(dir.path(), slow);
    let agent = AgentProc::start(&config);
    let cfg = config.clone();
    let chat = std::thread::spawn(move || client(&cfg, &["chat"], "talk slowly\n"));
    // Wait until the turn is running.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = client(&config, &["sessions", "--json"], "");
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if list["sessions"][0]["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "turn never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = agent.stop();
    assert!(status.success(), "agent exit: {status}");
    let out = chat.join().expect("chat thread");
    let shown = text(&out);
    assert!(
        shown.contains("[turn cancelled]"),
        "chat did not see the turn end: {shown}"
    );
}

/// Issue 9: a tool whose blocking read is stuck (a FIFO nobody writes to, which `read_file`
/// used to open with a blocking open(2)) must neither hang the tool call nor keep the agent
/// from exiting on SIGTERM.
#[test]
fn sigterm_exits_promptly_while_a_tool_reads_a_fifo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("logs/pipe");
    std::fs::create_dir(dir.path().join("logs")).expect("mkdir");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let script = format!(
        r#"{{"loop": true, "responses": [
  {{"tool_calls": [{{"tool": "read_file", "args": {{"path": "{}"}}}}]}},
  {{"text": "after the read", "chunk_delay_ms": 60000}}
]}}"#,
        fifo.display()
    );
    std::fs::write(dir.path().join("script.json"), script).expect("script");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "listen = \"off\"\nstate_dir = \"state\"\n[model]\nprovider = \"scripted\"\n\
         script = \"script.json\"\n[tools]\nread_dirs = [\"logs\"]\nlog_dirs = [\"logs\"]\n",
    )
    .expect("config");
    let agent = AgentProc::start(&config);
    let cfg = config.clone();
    let chat = std::thread::spawn(move || client(&cfg, &["chat"], "read the pipe\n"));
    // Wait until the session's history shows the read_file call (published as it starts).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = client(&config, &["sessions", "--json"], "");
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(id) = list["sessions"][0]["session_id"].as_str()
            && text(&client(&config, &["attach", id], "")).contains("⚙ read_file")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the read_file call never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = agent.stop_within(Duration::from_secs(15));
    assert!(status.success(), "agent exit: {status}");
    let out = chat.join().expect("chat thread");
    let shown = text(&out);
    assert!(
        shown.contains("is a FIFO (named pipe), not a regular file"),
        "read_file did not refuse the FIFO: {shown}"
    );
    // The turn went on past the refusal and was still running when SIGTERM ended it.
    assert!(shown.contains("[turn cancelled]"), "{shown}");
}

#[test]
fn bad_config_values_name_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (config, key) in [
        ("listen = \"everywhere\"\n", "listen"),
        (
            "[sessions]\npermission_grace = \"a while\"\n",
            "permission_grace",
        ),
        (
            "[[clients]]\nname = \"x\"\nclass = \"root\"\ntoken = \"0123456789abcdef\"\n",
            "class",
        ),
        ("[tools]\nshel = true\n", "shel"),
        (
            "[model]\nprovider = \"scripted\"\nscript = \"missing.json\"\n",
            "model.script",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!("state_dir = \"state\"\nlisten = \"off\"\n{config}"),
        )
        .expect("write");
        // `listen` appears twice in the first case: TOML rejects the duplicate, naming it.
        let out = Command::new(BIN)
            .args(["agent", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{config} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(key),
            "error for {config:?} does not name `{key}`: {err}"
        );
    }
}

#[test]
fn a_non_loopback_listener_without_tokens_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("open.toml");
    std::fs::write(&path, "state_dir = \"state\"\nlisten = \"0.0.0.0:0\"\n").expect("write");
    let out = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&path)
        .env("TETHER_LOG", "warn")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without tokens"),
        "{err}"
    );
}

#[test]
fn client_commands_explain_an_agent_that_is_not_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), SHELL_SCRIPT);
    let out = client(&config, &["sessions"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is `tether agent` running?"), "{err}");
}

fn plain_config(dir: &Path) -> PathBuf {
    let config = dir.join("agent.toml");
    std::fs::write(&config, "listen = \"off\"\nstate_dir = \"state\"\n").expect("config");
    config
}

#[test]
fn inspect_system_prints_real_figures_without_a_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = plain_config(dir.path());
    let out = client(&config, &["inspect", "system"], "");
    let report = String::from_utf8_lossy(&out.stdout);
    // The exit code is the host's status (0 OK, 1 WARNING, 2 CRITICAL), not UNKNOWN (3).
    assert!(matches!(out.status.code(), Some(0..=2)), "{}", text(&out));
    assert!(report.starts_with("# Inspection: system"), "{report}");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert!(
        report.contains(hostname.trim()),
        "hostname missing: {report}"
    );
    assert!(
        report.contains("## Findings") && report.contains("## Memory"),
        "{report}"
    );
    // The report goes to stdout alone; progress went to stderr.
    assert!(!report.contains("⚙"), "{report}");
    // Every tool call of the inspection was audited.
    let audit = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).expect("audit");
    assert!(audit.lines().count() >= 3, "{audit}");
    assert!(audit.contains("\"tool\":\"memory\""), "{audit}");
}

#[test]
fn inspect_refuses_an_unknown_plugin_by_listing_the_known_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = plain_config(dir.path());
    let out = client(&config, &["inspect", "nonsense"], "");
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("nonsense") && err.contains("disk"), "{err}");
}

#[test]
fn diagnose_without_a_model_falls_back_to_inspect_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = plain_config(dir.path());
    let out = client(
        &config,
        &[
            "diagnose",
            "--alert",
            "disk / is filling up",
            "--plugin",
            "disk",
        ],
        "",
    );
    // The inspection's status: 0 OK, 1 WARNING, 2 CRITICAL (this host's disks), not UNKNOWN.
    assert!(matches!(out.status.code(), Some(0..=2)), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("No model is configured"), "{report}");
    assert!(report.contains("# Inspection: disk"), "{report}");
}

/// Issue 10, item 10: `tether up` writes `[model] provider = "scripted"` without a script, which
/// is the built-in demo script (it keeps chat alive, remotely too). A diagnosis on it must be the
/// inspection report the README promises, not the demo chat's script.
#[test]
fn diagnose_with_the_builtin_demo_script_falls_back_to_inspect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "listen = \"off\"\nstate_dir = \"state\"\n[model]\nprovider = \"scripted\"\n",
    )
    .expect("config");
    let out = client(
        &config,
        &[
            "diagnose",
            "--alert",
            "disk / is filling up",
            "--plugin",
            "disk",
        ],
        "",
    );
    // The inspection's status follows this host's disks (0 OK, 1 WARNING, 2 CRITICAL), never
    // UNKNOWN: the fallback ran.
    assert!(matches!(out.status.code(), Some(0..=2)), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("No model is configured"), "{report}");
    assert!(report.contains("# Inspection: disk"), "{report}");
    assert!(!report.contains("demo model"), "{report}");
}

/// Issue 9, finding 1: an event time from year 11476 is refused at the agent's edge, naming
/// the field, and the agent keeps taking alerts.
#[test]
fn alert_send_refuses_an_unbelievable_event_time() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = plain_config(dir.path());
    let agent = AgentProc::start(&config);
    let socket = dir.path().join("state/agent.sock");
    let stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut ask = |line: &str| -> serde_json::Value {
        writer.write_all(line.as_bytes()).expect("write");
        writer.write_all(b"\n").expect("write");
        let mut reply = String::new();
        reader.read_line(&mut reply).expect("reply");
        serde_json::from_str(&reply).expect("JSON reply")
    };
    let r = ask(
        r#"{"id":1,"op":"alert.send","status":"Critical","key":"far","event_time":300000000000}"#,
    );
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["reason"], "bad_request", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("event_time")),
        "{r}"
    );
    let r = ask(r#"{"id":2,"op":"alert.send","status":"Critical","key":"near"}"#);
    assert_eq!(r["ok"], true, "{r}");
    drop(agent);
}

/// Issue 9, finding 9: `socket = <an existing regular file>` deleted that file. The agent
/// refuses to start instead, naming it, and the file is untouched.
#[test]
fn a_socket_path_that_is_a_regular_file_is_never_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me").expect("write");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"off\"\nstate_dir = \"state\"\nsocket = \"{}\"\n",
            precious.display()
        ),
    )
    .expect("config");
    let mut child = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&config)
        .env("TETHER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agent");
    // Bounded: an agent that started anyway is killed, and the test fails below.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("agent output");
    assert!(!out.status.success(), "started: {}", text(&out));
    assert!(
        text(&out).contains("is not a socket"),
        "the error names the problem: {}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&precious).expect("still there"),
        "keep me"
    );
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

/// Issue 9, finding 9: state files were created 0644 (`events.db` holds transcripts) and an
/// existing state directory was never tightened. New state is 0700/0600; loose state found at
/// start is tightened with a warning.
#[test]
fn state_is_private_and_loose_state_is_tightened() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), SHELL_SCRIPT);
    let state = dir.path().join("state");
    let agent = AgentProc::start(&config);
    let out = client(&config, &["chat"], "hello\n");
    assert!(out.status.success(), "{}", text(&out));
    let check_private = || {
        assert_eq!(mode(&state), 0o700, "state dir");
        let mut files = 0;
        for entry in std::fs::read_dir(&state).expect("read state") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_socket() {
                continue;
            }
            files += 1;
            assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
        }
        assert!(files >= 2, "events.db and more were written");
    };
    check_private();
    assert!(agent.stop().success());

    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let events = state.join("events.db");
    std::fs::set_permissions(&events, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut agent = AgentProc::start(&config);
    check_private();
    let stderr = agent.child.stderr.take().expect("stderr");
    assert!(agent.stop().success());
    let mut warnings = String::new();
    std::io::Read::read_to_string(&mut { stderr }, &mut warnings).expect("stderr");
    assert!(
        warnings.contains("readable by other users") && warnings.contains("events.db"),
        "the tightening is reported: {warnings}"
    );
}
