//! `tether mcp` (stdio) and the agent's `POST /mcp` (streamable HTTP), driven by the official
//! MCP Python SDK (issue 11, item 3): list tools, create a session, `tether_send` with a
//! scripted model's tool call, `tether_answer` on its own turn refused with
//! `agent_cannot_self_approve` (a human approves instead), bad input naming the field,
//! `tether_cancel`, `tether_inspect`. Also: the agent going away ends `tether mcp` with a
//! message and a failure status; `/mcp` wants the bearer token of `/v1/ws`.
//!
//! The SDK lives in a virtual environment built by `scripts/python-sdks.sh`; its interpreter
//! comes from TETHER_PYTHON (set by `scripts/test.sh`), else target/python-sdk/bin/python.
//! Without either the SDK tests are skipped with a notice — except under CI=true, where a
//! missing SDK fails them.

mod common;

use common::{AgentProc, BIN, PATIENCE, free_port};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tether_transport::client::Client;

const ALICE: &str = "alice-token-0123456789abcdef";
const ROBOT: &str = "robot-token-0123456789abcdef";

/// Each turn: a `shell` call (needs approval), then "all done".
const SCRIPT: &str = r#"{"loop": true, "responses": [
  {"text": "checking ", "tool_calls": [{"tool": "shell", "args": {"command": "echo tool-ran"}}]},
  {"text": "all done"}
]}"#;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// An agent with a WebSocket listener (and `/mcp`), alice (human) and robot (agent) tokens.
fn start_agent(dir: &Path) -> (AgentProc, u16, PathBuf) {
    std::fs::write(dir.join("script.json"), SCRIPT).expect("script");
    let port = free_port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\n\
             [model]\nprovider = \"scripted\"\nscript = \"script.json\"\n\
             [[clients]]\nname = \"alice\"\nclass = \"human\"\ntoken = \"{ALICE}\"\n\
             [[clients]]\nname = \"robot\"\nclass = \"agent\"\ntoken = \"{ROBOT}\"\n"
        ),
    )
    .expect("config");
    let agent = AgentProc::start(&config);
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the listener did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (agent, port, config)
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Alice creates a policy-`any` chat session and stays attached (she may answer its prompts).
async fn alice_session(port: u16) -> (Client, String) {
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let mut alice = Client::connect_ws(&url, Some(ALICE)).await.expect("alice");
    alice
        .request("hello", json!({"client_name": "alice-terminal"}))
        .await
        .expect("hello");
    let r = alice
        .request("session.create", json!({"mode": "chat", "policy": "any"}))
        .await
        .expect("session.create");
    let sid = r["session_id"].as_str().expect("sid").to_owned();
    alice
        .request("attach", json!({"session_id": sid}))
        .await
        .expect("attach");
    (alice, sid)
}

/// Runs the SDK script with `args`; alice approves the call it reports refused. Returns the
/// events alice saw.
async fn run_sdk(python: &Path, args: Vec<String>, mut alice: Client, sid: &str) -> Vec<Value> {
    let mut child = tokio::process::Command::new(python)
        .arg(script("mcp_client.py"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut said = Vec::new();
    let mut approved = 0;
    while let Some(line) = within("the SDK script", lines.next_line())
        .await
        .expect("read stdout")
    {
        said.push(line.clone());
        if let Some(call_id) = line.strip_prefix("REFUSED ") {
            alice
                .request(
                    "answer",
                    json!({"session_id": sid, "call_id": call_id, "decision": "allow"}),
                )
                .await
                .expect("alice approves");
            approved += 1;
        }
    }
    let status = within("the SDK script to exit", child.wait())
        .await
        .expect("wait");
    let errors = errors.await.unwrap_or_default();
    assert!(
        status.success() && said.last().map(String::as_str) == Some("OK"),
        "the SDK script failed ({status}); stdout: {said:?}\nstderr:\n{errors}"
    );
    assert_eq!(approved, 1, "{said:?}");
    // What alice saw of the session: the MCP client's turns, her approval.
    let mut events = Vec::new();
    while let Ok(Some(text)) =
        tokio::time::timeout(Duration::from_millis(200), alice.next_text()).await
    {
        if let Ok(v) = serde_json::from_str::<Value>(&text)
            && v.get("seq").is_some()
        {
            events.push(v);
        }
    }
    events
}

/// Alice saw the MCP client's turn as an agent-class client of `principal`'s, and approved
/// its prompt herself.
fn assert_mcp_turn_seen(events: &[Value], principal: &str) {
    let asked = events
        .iter()
        .find(|e| e["event"] == "permission_requested")
        .unwrap_or_else(|| panic!("no prompt in {events:#?}"));
    assert_eq!(asked["originator"]["class"], "agent", "{asked}");
    assert!(
        asked["originator"]["client_id"]
            .as_str()
            .is_some_and(|id| id.starts_with(&format!("{principal}/"))),
        "{asked}"
    );
    let resolved = events
        .iter()
        .find(|e| e["event"] == "permission_resolved")
        .unwrap_or_else(|| panic!("no resolution in {events:#?}"));
    assert_eq!(resolved["by"]["class"], "human", "{resolved}");
    assert_eq!(resolved["decision"], "allow", "{resolved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_sdk_drives_tether_mcp_over_stdio() {
    let Some(python) = common::python_sdk("the MCP SDK test") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_agent, port, config) = start_agent(dir.path());
    let (alice, sid) = alice_session(port).await;
    let tcp = format!("127.0.0.1:{}", free_port());
    // Over the Unix socket `tether mcp` is its user's human credential, lowered to agent.
    let args = vec![
        "stdio".into(),
        sid.clone(),
        tcp,
        BIN.into(),
        config.display().to_string(),
    ];
    let events = run_sdk(&python, args, alice, &sid).await;
    // SAFETY: getuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let uid = unsafe { libc::getuid() };
    assert_mcp_turn_seen(&events, &format!("uid:{uid}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_sdk_drives_post_mcp_over_http() {
    let Some(python) = common::python_sdk("the MCP SDK test") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_agent, port, _config) = start_agent(dir.path());
    let (alice, sid) = alice_session(port).await;
    let tcp = format!("127.0.0.1:{}", free_port());
    let args = vec![
        "http".into(),
        sid.clone(),
        tcp,
        format!("http://127.0.0.1:{port}/mcp"),
        ROBOT.into(),
    ];
    let events = run_sdk(&python, args, alice, &sid).await;
    assert_mcp_turn_seen(&events, "robot");
}

/// One HTTP/1.1 exchange on a fresh connection: (status, body).
fn http(port: u16, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

fn initialize_request(token: Option<&str>) -> String {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}})
    .to_string();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\n{auth}content-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// `/mcp` wants the bearer token of `/v1/ws`: none or a wrong one is 401, as on `/v1/ws`.
#[test]
fn post_mcp_needs_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_agent, port, _config) = start_agent(dir.path());
    let (status, body) = http(port, &initialize_request(None));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");
    let (status, body) = http(port, &initialize_request(Some("not-a-token-at-all-0000")));
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(port, &initialize_request(Some(ROBOT)));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"serverInfo\""), "{body}");
}

/// The agent going away ends `tether mcp`: a message on stderr and a failure status, not a
/// hang. Plain JSON-RPC lines on its stdin, as any MCP client writes them.
#[test]
fn tether_mcp_exits_with_a_message_when_the_agent_goes_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut agent, _port, config) = start_agent(dir.path());
    let mut mcp = Command::new(BIN)
        .args(["mcp", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tether mcp");
    let mut stdin = mcp.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(mcp.stdout.take().expect("stdout"));
    let mut send = |v: Value| {
        writeln!(stdin, "{v}").expect("write");
        stdin.flush().expect("flush");
    };
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}}),
    );
    let mut line = String::new();
    stdout.read_line(&mut line).expect("initialize reply");
    let reply: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(reply["result"]["serverInfo"]["name"], "tether", "{reply}");
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "tether_sessions", "arguments": {}}}));
    line.clear();
    stdout.read_line(&mut line).expect("tools/call reply");
    let reply: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(reply["id"], 2, "{reply}");
    assert!(
        reply["result"]["structuredContent"]["sessions"].is_array(),
        "{reply}"
    );

    // The agent dies; stdin stays open (the MCP client is still there).
    agent.child.kill().expect("kill the agent");
    agent.child.wait().expect("reap the agent");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = mcp.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = mcp.kill();
            panic!("tether mcp still runs after the agent went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    mcp.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(!status.success(), "{status}: {err}");
    assert!(err.contains("lost the tether agent"), "{err}");
    // Open until here: it was the agent, not the MCP client, that went away.
    drop(stdin);
}
