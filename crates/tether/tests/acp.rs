//! `tether acp` driven by a third-party editor: the Agent Client Protocol Python SDK
//! (`agent-client-protocol` from PyPI, installed by scripts/python-sdks.sh) spawns it as an
//! editor would (tests/python/acp_client.py), against a real agent with a scripted model, next
//! to a real WebSocket client. Without the SDK these tests are skipped with a notice, except
//! under CI=true, where a missing SDK fails them.

mod common;

use common::{AgentProc, BIN, PATIENCE, free_port};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tether_proto::{EventBody, ServerFrame};
use tether_transport::client::Client;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

const ALICE: &str = "alice-token-0123456789";
const EDITOR: &str = "editor-token-0123456789";

struct Agent {
    proc: AgentProc,
    config: PathBuf,
    url: String,
    _dir: tempfile::TempDir,
}

/// An agent on a Unix socket and a loopback WebSocket (credentials `alice` and `editor`, both
/// human), whose model replays `script`.
fn agent(script: &str) -> Agent {
    agent_with(script, "")
}

/// [`agent`], with `extra` appended to its config.
fn agent_with(script: &str, extra: &str) -> Agent {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("script.json"), script).expect("script");
    let port = free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\n\
             [model]\nprovider = \"scripted\"\nscript = \"script.json\"\n\
             [[clients]]\nname = \"alice\"\nclass = \"human\"\ntoken = \"{ALICE}\"\n\
             [[clients]]\nname = \"editor\"\nclass = \"human\"\ntoken = \"{EDITOR}\"\n{extra}"
        ),
    )
    .expect("config");
    let proc = AgentProc::start(&config);
    Agent {
        proc,
        config,
        url: format!("ws://127.0.0.1:{port}/v1/ws"),
        _dir: dir,
    }
}

/// The Python editor, one scenario of acp_client.py.
struct Py {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
}

impl Py {
    fn spawn(python: &Path, scenario: &str, args: &[&str]) -> Py {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/acp_client.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .arg(scenario)
            .arg(BIN)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Py {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// The next line the script prints (`None` at its end).
    async fn line(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(PATIENCE, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("the editor said nothing for a minute:\n{}", self.stderr()))
            .expect("read");
        line.map(|l| serde_json::from_str(&l).unwrap_or_else(|_| json!({ "text": l })))
    }

    /// Waits for `{"step": name, ...}`.
    async fn step(&mut self, name: &str) -> Value {
        loop {
            match self.line().await {
                Some(v) if v["step"] == name => return v,
                Some(_) => {}
                None => {
                    let _ = self.child.wait().await;
                    panic!("the editor ended before `{name}`:\n{}", self.stderr());
                }
            }
        }
    }

    /// Tells the script something happened (a line it waits for).
    async fn say(&mut self, word: &str) {
        self.stdin
            .write_all(format!("{word}\n").as_bytes())
            .await
            .expect("write to the editor");
    }

    /// The scenario's `result`, once it exited successfully.
    async fn result(mut self) -> Value {
        let mut result = None;
        while let Some(v) = self.line().await {
            if v.get("result").is_some() {
                result = Some(v["result"].clone());
            }
        }
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the editor did not exit")
            .expect("wait");
        assert!(status.success(), "the editor failed:\n{}", self.stderr());
        result.unwrap_or_else(|| panic!("no result:\n{}", self.stderr()))
    }
}

/// A WebSocket client with the `alice` credential.
async fn alice(url: &str) -> Client {
    let mut client = Client::connect_ws(url, Some(ALICE)).await.expect("connect");
    client
        .request("hello", json!({"client_name": "ws-test"}))
        .await
        .expect("hello");
    client
}

/// Sends `text` and collects the turn's text until it ends.
async fn turn(client: &mut Client, session_id: &str, text: &str) -> String {
    let reply = client
        .request("input", json!({"session_id": session_id, "text": text}))
        .await
        .expect("input");
    let turn_id = reply["turn_id"].as_str().expect("turn_id").to_owned();
    until_turn_ends(client, &turn_id).await
}

async fn until_turn_ends(client: &mut Client, turn_id: &str) -> String {
    let mut answer = String::new();
    loop {
        let frame = tokio::time::timeout(PATIENCE, client.next_frame())
            .await
            .expect("turn did not end")
            .expect("frame")
            .expect("connection open");
        if let ServerFrame::Event(ev) = frame {
            match ev.body {
                EventBody::TextDelta { turn_id: t, text } if t.as_str() == turn_id => {
                    answer.push_str(&text)
                }
                EventBody::TurnEnded { turn_id: t, .. } if t.as_str() == turn_id => {
                    return answer;
                }
                _ => {}
            }
        }
    }
}

const EDITOR_SCRIPT: &str = r#"{"responses": [
  {"text": "Hello from the scripted model, streamed in chunks."},
  {"text": "Checking. ", "tool_calls": [{"tool": "shell", "args": {"command": "echo from-the-shell"}}]},
  {"text": "The shell said hi."},
  {"text": "Still here."},
  {"text": "Once upon a time there was a story. ", "tool_calls": [{"tool": "shell", "args": {"command": "echo never"}}]}
]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_creates_a_session_prompts_approves_and_cancels() {
    let Some(python) = common::python_sdk("the ACP editor test") else {
        return;
    };
    let agent = agent(EDITOR_SCRIPT);
    let config = agent.config.to_str().expect("utf-8");
    let mut py = Py::spawn(&python, "editor", &["--config", config]);
    let created = py.step("created").await;
    let session_id = created["session_id"].as_str().expect("id").to_owned();
    let result = py.result().await;
    assert_eq!(result["session_id"], session_id.as_str());
    // Each bad request named its field (checked in the script); the messages, for the record.
    let bad = result["bad_input"].as_array().expect("bad input");
    assert!(
        bad[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`sessionId`")),
        "{bad:?}"
    );

    // The ACP session id is the tether session id; the editor's turns were its own, as the
    // Unix-socket peer (a human), and the cancelled one ended `cancelled`.
    let mut ws = alice(&agent.url).await;
    let attached = ws
        .request("attach", json!({"session_id": session_id, "after_seq": 0}))
        .await
        .expect("attach");
    assert_eq!(attached["snapshot"]["mode"], "chat");
    let mut turns = Vec::new();
    let mut stops = Vec::new();
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next_frame())
            .await
            .expect("replay")
            .expect("frame")
            .expect("open");
        match frame {
            ServerFrame::Event(ev) => match ev.body {
                EventBody::TurnStarted {
                    originator, text, ..
                } => turns.push((originator.class, originator.client_id.0, text)),
                EventBody::TurnEnded { stop, .. } => stops.push(stop.as_str()),
                _ => {}
            },
            ServerFrame::Control(tether_proto::Control::ReplayComplete { .. }) => break,
            _ => {}
        }
    }
    let texts: Vec<&str> = turns.iter().map(|t| t.2.as_str()).collect();
    assert_eq!(
        texts,
        [
            "hello",
            "run the shell",
            "still there?",
            "tell me a long story"
        ]
    );
    assert!(
        turns
            .iter()
            .all(|t| t.0 == tether_proto::Class::Human && t.1.starts_with("uid:")),
        "{turns:?}"
    );
    assert_eq!(stops.last(), Some(&"cancelled"), "{stops:?}");
}

const SHARED_SCRIPT: &str = r#"{"responses": [
  {"text": "The first answer."},
  {"text": "The second answer."},
  {"tool_calls": [{"tool": "shell", "args": {"command": "echo alice-tool"}}]},
  {"text": "Alice's tool ran."},
  {"text": "The editor's answer."}
]}"#;

/// Waits until `n` inputs are queued in the session (its attach snapshot says so).
async fn until_queued(ws: &mut Client, id: &str, n: u64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let attached = ws
            .request("attach", json!({ "session_id": id }))
            .await
            .expect("attach");
        if attached["snapshot"]["queued_count"] == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {n} queued: {attached}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_loads_a_session_another_client_started() {
    let Some(python) = common::python_sdk("the ACP editor test") else {
        return;
    };
    let agent = agent(SHARED_SCRIPT);
    let mut ws = alice(&agent.url).await;
    let created = ws
        .request("session.create", json!({"mode": "chat"}))
        .await
        .expect("create");
    let id = created["session_id"].as_str().expect("id").to_owned();
    ws.request("attach", json!({ "session_id": id }))
        .await
        .expect("attach");
    assert_eq!(
        turn(&mut ws, &id, "first question").await,
        "The first answer."
    );

    // The editor connects over the WebSocket with a credential of its own.
    let mut py = Py::spawn(
        &python,
        "load",
        &[&id, "--url", &agent.url, "--token", EDITOR],
    );
    py.step("loaded").await;
    assert_eq!(
        turn(&mut ws, &id, "second question").await,
        "The second answer."
    );
    py.step("live").await;
    // A turn that waits for approval; the editor's prompt, sent meanwhile, is queued behind it.
    ws.request("input", json!({"session_id": id, "text": "third question"}))
        .await
        .expect("input");
    let asked = py.step("asked").await;
    until_queued(&mut ws, &id, 1).await;
    ws.request(
        "answer",
        json!({"session_id": id, "call_id": asked["call_id"], "decision": "allow", "scope": "once"}),
    )
    .await
    .expect("alice approves");
    py.result().await;

    // `--session ID`: an editor that joins the session at session/new.
    let config = agent.config.to_str().expect("utf-8");
    let py = Py::spawn(
        &python,
        "join",
        &[&id, "--config", config, "--session", &id],
    );
    let result = py.result().await;
    assert_eq!(result["joined"], id.as_str());
}

const SHELL_SCRIPT: &str = r#"{"responses": [
  {"tool_calls": [{"tool": "shell", "args": {"command": "echo approved-elsewhere"}}]},
  {"text": "Done."},
  {"text": "Fine."}
]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_answered_elsewhere_first_drops_the_editors_answer_quietly() {
    let Some(python) = common::python_sdk("the ACP editor test") else {
        return;
    };
    let agent = agent(SHELL_SCRIPT);
    let config = agent.config.to_str().expect("utf-8");
    let mut py = Py::spawn(&python, "elsewhere", &["--config", config]);
    let asked = py.step("asked").await;
    let (session_id, call_id) = (
        asked["session_id"].as_str().expect("session"),
        asked["call_id"].as_str().expect("call"),
    );
    // The ACP tool call id is the tether call id: alice answers it over the WebSocket.
    let mut ws = alice(&agent.url).await;
    ws.request("attach", json!({ "session_id": session_id }))
        .await
        .expect("attach");
    ws.request(
        "answer",
        json!({"session_id": session_id, "call_id": call_id, "decision": "allow", "scope": "once"}),
    )
    .await
    .expect("alice's answer");
    let result = py.result().await;
    assert_eq!(result["exit"], 0, "{result}");
    assert_eq!(result["stderr"], "", "tether acp complained: {result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_going_away_ends_tether_acp_with_the_reason() {
    let Some(python) = common::python_sdk("the ACP editor test") else {
        return;
    };
    // The turn waits for an approval the editor never gives: the agent goes away meanwhile.
    let mut agent = agent(
        r#"{"responses": [{"text": "Once upon a time. ", "tool_calls": [{"tool": "shell", "args": {"command": "echo never"}}]}]}"#,
    );
    let config = agent.config.to_str().expect("utf-8").to_owned();
    let mut py = Py::spawn(&python, "gone", &["--config", &config]);
    py.step("waiting").await;
    agent.proc.child.kill().expect("kill the agent");
    let _ = agent.proc.child.wait();
    let result = py.result().await;
    assert_ne!(result["exit"], 0, "{result}");
    let stderr = result["stderr"].as_str().expect("stderr");
    assert!(
        stderr.contains("the tether agent closed the connection"),
        "{stderr}"
    );
    let message = result["error"]["message"].as_str().expect("message");
    assert!(message.contains("agent"), "{message}");
}

const QUEUE_SCRIPT: &str = r#"{"responses": [
  {"tool_calls": [{"tool": "shell", "args": {"command": "echo alice-tool"}}]},
  {"text": "Alice's tool ran."},
  {"text": "Never shown: the editor's turn waits for an approval nobody gives. ", "tool_calls": [{"tool": "shell", "args": {"command": "echo never"}}]}
]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_prompt_queued_behind_another_clients_turn_withdraws_only_it() {
    let Some(python) = common::python_sdk("the ACP editor test") else {
        return;
    };
    let agent = agent(QUEUE_SCRIPT);
    let mut ws = alice(&agent.url).await;
    let created = ws
        .request("session.create", json!({"mode": "chat"}))
        .await
        .expect("create");
    let id = created["session_id"].as_str().expect("id").to_owned();
    ws.request("attach", json!({ "session_id": id }))
        .await
        .expect("attach");
    let config = agent.config.to_str().expect("utf-8");
    let mut py = Py::spawn(&python, "queue_cancel", &[&id, "--config", config]);
    py.step("loaded").await;
    let reply = ws
        .request(
            "input",
            json!({"session_id": id, "text": "check something"}),
        )
        .await
        .expect("input");
    let alices = reply["turn_id"].as_str().expect("turn").to_owned();
    // The editor prompts while alice's turn waits for approval, and cancels once it is queued.
    let asked = py.step("asked").await;
    until_queued(&mut ws, &id, 1).await;
    py.say("queued").await;
    py.step("cancelled").await;
    ws.request(
        "answer",
        json!({"session_id": id, "call_id": asked["call_id"], "decision": "allow", "scope": "once"}),
    )
    .await
    .expect("alice approves");
    // Alice's turn was not the editor's to cancel: it completes.
    let mut stops = Vec::new();
    while stops.len() < 2 {
        let frame = tokio::time::timeout(PATIENCE, ws.next_frame())
            .await
            .expect("turns end")
            .expect("frame")
            .expect("open");
        if let ServerFrame::Event(ev) = frame
            && let EventBody::TurnEnded { turn_id, stop, .. } = ev.body
        {
            stops.push((turn_id.0 == alices, stop.as_str()));
        }
    }
    // Then the editor's queued input started and was cancelled at once.
    assert_eq!(stops, [(true, "completed"), (false, "cancelled")]);
    ws.request("input", json!({"session_id": id, "text": "marker"}))
        .await
        .expect("marker");
    py.say("done").await;
    let result = py.result().await;
    assert_eq!(result["shown"], "Alice's tool ran.");
}

const REJECT_SCRIPT: &str = r#"{"responses": [
  {"tool_calls": [{"tool": "shell", "args": {"command": "echo never"}}]},
  {"text": "Refused."}
], "loop": true}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_reject_denies_the_tools_later_calls_without_asking() {
    let Some(python) = common::python_sdk("the ACP editor test") else {
        return;
    };
    let agent = agent(REJECT_SCRIPT);
    let config = agent.config.to_str().expect("utf-8");
    let py = Py::spawn(&python, "reject", &["--config", config]);
    let result = py.result().await;
    let id = result["session_id"].as_str().expect("id");
    // Both denials are the editor's (the second given for it, recorded as such).
    let mut ws = alice(&agent.url).await;
    ws.request("attach", json!({"session_id": id, "after_seq": 0}))
        .await
        .expect("attach");
    let mut denied = Vec::new();
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next_frame())
            .await
            .expect("replay")
            .expect("frame")
            .expect("open");
        match frame {
            ServerFrame::Event(ev) => {
                if let EventBody::PermissionResolved { decision, by, .. } = ev.body {
                    denied.push((decision.as_str(), by.map(|b| b.class)));
                }
            }
            ServerFrame::Control(tether_proto::Control::ReplayComplete { .. }) => break,
            _ => {}
        }
    }
    let human = Some(tether_proto::Class::Human);
    assert_eq!(denied, [("deny", human), ("deny", human)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_ends_map_to_stop_reasons_and_errors() {
    let Some(python) = common::python_sdk("the ACP editor test") else {
        return;
    };
    // One model call per turn: a tool call (needing no approval) leaves the turn at its limit.
    let agent = agent_with(
        r#"{"responses": [
          {"tool_calls": [{"tool": "system_info"}]},
          {"error": "the model is down"}
        ]}"#,
        "[sessions]\nmax_rounds = 1\n",
    );
    let config = agent.config.to_str().expect("utf-8");
    let py = Py::spawn(&python, "stops", &["--config", config]);
    let result = py.result().await;
    assert_eq!(result["error"]["code"], -32603, "{result}");
}
