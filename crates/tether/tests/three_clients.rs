//! Issue 11's end-to-end acceptance: three kinds of client on one session. An MCP client (the
//! official MCP Python SDK over `POST /mcp`, an agent-class token) starts a turn whose tool
//! needs permission; its own approval is refused (`agent_cannot_self_approve`); the ACP client
//! (the ACP Python SDK driving `tether acp` over the Unix socket: a human) is asked and
//! approves it; a WebSocket observer sees the same events in the same order as the other two.
//! The Python side is tests/python/three_clients.py; the SDKs come from scripts/python-sdks.sh.

mod common;

use common::{AgentProc, BIN, PATIENCE, free_port};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tether_transport::client::Client;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const ROBOT: &str = "robot-token-0123456789abcdef";
const WATCHER: &str = "watcher-token-0123456789abcdef";

/// Each turn: a `shell` call (always needs a human's approval), then "all done".
const SCRIPT: &str = r#"{"loop": true, "responses": [
  {"text": "checking the disk ", "tool_calls": [{"tool": "shell", "args": {"command": "echo tool-ran"}}]},
  {"text": "all done"}
]}"#;

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The events of one session as each client saw them, reduced to what must agree: the order
/// of (seq, event, turn_id, call_id).
fn order(events: &[Value]) -> Vec<(u64, String, Value, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {e}")),
                e["event"].as_str().unwrap_or_default().to_owned(),
                e["turn_id"].clone(),
                e["call_id"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ai_program_an_editor_and_an_observer_share_one_session() {
    let Some(python) = common::python_sdk("the three-client test") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("script.json"), SCRIPT).expect("script");
    let port = free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\n\
             [model]\nprovider = \"scripted\"\nscript = \"script.json\"\n\
             [[clients]]\nname = \"robot\"\nclass = \"agent\"\ntoken = \"{ROBOT}\"\n\
             [[clients]]\nname = \"watcher\"\nclass = \"observer\"\ntoken = \"{WATCHER}\"\n"
        ),
    )
    .expect("config");
    let _agent = AgentProc::start(&config);
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the listener did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut child = tokio::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/three_clients.py"))
        .arg(BIN)
        .arg(&config)
        .arg(format!("http://127.0.0.1:{port}/mcp"))
        .arg(ROBOT)
        .env("TETHER_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut said = Vec::new();
    let mut next = async || -> Value {
        let line = within("the SDK script", lines.next_line())
            .await
            .expect("read stdout");
        let Some(line) = line else {
            panic!("the SDK script ended early; stdout: {said:?}");
        };
        said.push(line.clone());
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };

    // The editor created the session; the observer attaches live before any turn.
    let created = next().await;
    let sid = created["session_id"].as_str().expect("sid").to_owned();
    let mut watcher = Client::connect_ws(&format!("ws://127.0.0.1:{port}/v1/ws"), Some(WATCHER))
        .await
        .expect("watcher");
    watcher
        .request("attach", json!({"session_id": sid, "after_seq": 0}))
        .await
        .expect("attach");
    stdin.write_all(b"go\n").await.expect("go");
    stdin.flush().await.expect("flush");

    let result = next().await;
    let status = within("the SDK script to exit", child.wait())
        .await
        .expect("wait");
    let errors = errors.await.unwrap_or_default();
    assert!(
        status.success(),
        "the SDK script failed ({status}); stdout: {said:?}\nstderr:\n{errors}"
    );
    let result = &result["result"];

    // The observer's view, up to the end of the turn.
    let mut seen: Vec<Value> = Vec::new();
    while !seen.iter().any(|e| e["event"] == "turn_ended") {
        let text = within("the observer's events", watcher.next_text())
            .await
            .expect("observer stream");
        let v: Value = serde_json::from_str(&text).expect("json");
        if v.get("seq").is_some() && v["event"] != "client_attached" || v["event"] == "turn_ended" {
            seen.push(v);
        }
    }
    let mcp: Vec<Value> = result["mcp_events"]
        .as_array()
        .expect("mcp events")
        .iter()
        .filter(|e| e["event"] != "client_attached" && e["event"] != "client_detached")
        .cloned()
        .collect();
    let seen: Vec<Value> = seen
        .into_iter()
        .filter(|e| e["event"] != "client_detached")
        .collect();
    // The MCP client read its events after the turn ended: compare up to turn_ended.
    let upto = mcp
        .iter()
        .position(|e| e["event"] == "turn_ended")
        .expect("the MCP client saw the turn end");
    assert_eq!(
        order(&seen),
        order(&mcp[..=upto]),
        "the observer and the MCP client disagree"
    );

    // Who did what: the AI program started the turn, a human in the editor approved.
    let asked = seen
        .iter()
        .find(|e| e["event"] == "permission_requested")
        .expect("a prompt");
    assert_eq!(asked["originator"]["class"], "agent", "{asked}");
    assert!(
        asked["originator"]["client_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("robot/")),
        "{asked}"
    );
    let resolved = seen
        .iter()
        .find(|e| e["event"] == "permission_resolved")
        .expect("a resolution");
    assert_eq!(resolved["decision"], "allow", "{resolved}");
    assert_eq!(resolved["by"]["class"], "human", "{resolved}");
    assert!(
        resolved["by"]["client_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("uid:")),
        "the editor (a Unix-socket human) approved: {resolved}"
    );
    let ran = seen
        .iter()
        .find(|e| e["event"] == "tool_result")
        .expect("a result");
    assert!(ran["output"].to_string().contains("tool-ran"), "{ran}");

    // The editor saw the same conversation in the same order: the AI program's message, the
    // answer's chunks, the tool call and its result, as ACP updates.
    let updates = result["acp_updates"].as_array().expect("updates");
    let mut from_observer = Vec::new();
    for e in &seen {
        match e["event"].as_str() {
            Some("turn_started") => from_observer.push(("user", e["text"].clone())),
            Some("text_delta") => from_observer.push(("agent", e["text"].clone())),
            Some("tool_call") => from_observer.push(("tool_call", e["call_id"].clone())),
            _ => {}
        }
    }
    let from_editor: Vec<(&str, Value)> = updates
        .iter()
        .filter_map(|u| match u["sessionUpdate"].as_str() {
            Some("user_message_chunk") => Some(("user", u["content"]["text"].clone())),
            Some("agent_message_chunk") => Some(("agent", u["content"]["text"].clone())),
            Some("tool_call") => Some(("tool_call", u["toolCallId"].clone())),
            _ => None,
        })
        .collect();
    // The editor shows who wrote a message from another client; compare what was written.
    let normalise = |v: Vec<(&'static str, Value)>| -> Vec<(&'static str, String)> {
        v.into_iter()
            .map(|(k, t)| (k, t.as_str().unwrap_or_default().to_owned()))
            .collect()
    };
    let from_observer = normalise(from_observer);
    let from_editor: Vec<(&str, String)> = from_editor
        .into_iter()
        .map(|(k, t)| (k, t.as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(
        from_editor.len(),
        from_observer.len(),
        "editor {from_editor:?}\nobserver {from_observer:?}"
    );
    for ((ek, et), (ok, ot)) in from_editor.iter().zip(&from_observer) {
        assert_eq!(ek, ok, "editor {from_editor:?}\nobserver {from_observer:?}");
        if *ek == "user" {
            assert!(et.contains(ot.as_str()), "{et:?} does not show {ot:?}");
        } else {
            assert_eq!(et, ot, "editor {from_editor:?}\nobserver {from_observer:?}");
        }
    }
    let asked_editor = &result["acp_asked"][0];
    assert_eq!(
        asked_editor["toolCall"]["toolCallId"], asked["call_id"],
        "{asked_editor}"
    );
    assert!(
        result["approved_by"]
            .as_str()
            .is_some_and(|b| !b.starts_with("robot")),
        "{result}"
    );
}
