//! In-process clients of a real multiplexer (event log on disk, scripted engine): each test
//! client is a [`Connection`] plus the receiving end of its outbound queue, as a transport
//! would hold them, without the sockets.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tether_engine::Engine;
use tether_engine::log::EventLog;
use tether_engine::scripted::ScriptedProvider;
use tether_host::tools::{ToolRegistry, ToolsConfig};
use tether_mux::outbound::{Next, OutboundReceiver};
use tether_mux::{Connection, Identity, Mux, MuxConfig};
use tether_proto::Class;

/// Opens a multiplexer over a log at `dir/events.db`, with the builtin tools (`shell` needs
/// permission) and `script` as the model.
pub fn open_mux(dir: &Path, script: &str, config: MuxConfig) -> Mux {
    let log = EventLog::open(&dir.join("events.db")).expect("log");
    let provider = ScriptedProvider::from_json(script, "test script").expect("script");
    let tools = ToolRegistry::builtin(&ToolsConfig::default());
    let engine = Engine::new(Some(Arc::new(provider)), tools);
    Mux::open(config, engine, log).expect("mux")
}

/// Each turn: one `shell` call, which waits for an answer, then a final text.
pub fn prompt_script() -> String {
    json!({"loop": true, "responses": [
        {"tool_calls": [{"tool": "shell", "args": {"command": "echo hi"}}]},
        {"text": "done"}
    ]})
    .to_string()
}

/// Each turn streams `words` words (one `text_delta` each), `delay_ms` apart.
pub fn words_script(words: usize, delay_ms: u64) -> String {
    let text: String = (0..words).map(|i| format!("word{i} ")).collect();
    json!({"loop": true, "responses": [{"text": text, "chunk_delay_ms": delay_ms}]}).to_string()
}

pub struct TestClient {
    pub conn: Connection,
    rx: OutboundReceiver,
    next_id: u64,
    /// Frames read while looking for a reply, not yet consumed.
    stash: VecDeque<Value>,
    /// How long a wait for a frame may take (a virtual-time guard under paused time).
    pub patience: Duration,
}

impl TestClient {
    pub fn connect(mux: &Mux, principal: &str, class: Class) -> TestClient {
        let (conn, rx) = mux.connect(Identity {
            principal: principal.into(),
            class,
            name: principal.into(),
        });
        TestClient {
            conn,
            rx,
            next_id: 1,
            stash: VecDeque::new(),
            patience: Duration::from_secs(30),
        }
    }

    async fn read(&mut self) -> Value {
        let next = tokio::time::timeout(self.patience, self.rx.next())
            .await
            .expect("timed out waiting for a frame");
        match next {
            Next::Frame(f) | Next::Evicted(f) => serde_json::from_slice(&f).expect("json frame"),
            Next::Closed => panic!("the connection's queue closed"),
        }
    }

    /// Sends a request and returns its reply frame (`{re, ok, result|error}`); frames that
    /// arrive before the reply are kept for [`next`](Self::next).
    pub async fn send(&mut self, op: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = params;
        request["id"] = json!(id);
        request["op"] = json!(op);
        self.conn.handle_text(&request.to_string()).await;
        let mut skipped = VecDeque::new();
        loop {
            let v = self.read().await;
            if v["re"] == json!(id) {
                skipped.extend(self.stash.drain(..));
                self.stash = skipped;
                return v;
            }
            skipped.push_back(v);
        }
    }

    /// The result of a request that must succeed.
    pub async fn ok(&mut self, op: &str, params: Value) -> Value {
        let r = self.send(op, params.clone()).await;
        assert_eq!(r["ok"], true, "{op} {params}: {r}");
        r["result"].clone()
    }

    /// The error of a request that must fail.
    pub async fn err(&mut self, op: &str, params: Value) -> Value {
        let r = self.send(op, params.clone()).await;
        assert_eq!(r["ok"], false, "{op} {params} should fail: {r}");
        r["error"].clone()
    }

    /// The next frame that is not a reply.
    pub async fn next(&mut self) -> Value {
        if let Some(v) = self.stash.pop_front() {
            return v;
        }
        self.read().await
    }

    /// Frames up to and including the first that satisfies `pred`.
    pub async fn until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let v = self.next().await;
            let done = pred(&v);
            seen.push(v);
            if done {
                return seen;
            }
        }
    }

    pub async fn create(&mut self, params: Value) -> String {
        let r = self.ok("session.create", params).await;
        r["session_id"].as_str().expect("session_id").to_owned()
    }
}

pub fn is_event(v: &Value, name: &str) -> bool {
    v["event"] == name && v.get("seq").is_some()
}

pub fn is_control(v: &Value, name: &str) -> bool {
    v["event"] == name && v.get("seq").is_none()
}
