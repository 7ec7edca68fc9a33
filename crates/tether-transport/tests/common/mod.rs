//! Test harness: a real agent core (event log on disk, mux, WebSocket and Unix listeners on
//! loopback) and helpers to drive it through real sockets.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tether_engine::Engine;
use tether_engine::log::EventLog;
use tether_engine::scripted::ScriptedProvider;
use tether_engine::tools::{ToolRegistry, ToolsConfig};
use tether_mux::{Mux, MuxConfig};
use tether_proto::{Class, ServerFrame};
use tether_transport::auth::{Authenticator, ClientCredential};
use tether_transport::client::Client;
use tether_transport::ws::{WsState, router};
use tokio_util::sync::CancellationToken;

pub const HUMAN_TOKEN: &str = "human-token-0123456789";
pub const HUMAN2_TOKEN: &str = "human2-token-0123456789";
pub const AGENT_TOKEN: &str = "agent-token-0123456789";
pub const AGENT2_TOKEN: &str = "agent2-token-0123456789";
pub const OBSERVER_TOKEN: &str = "observer-token-0123456789";

pub struct Agent {
    pub dir: Arc<tempfile::TempDir>,
    pub mux: Mux,
    pub addr: SocketAddr,
    pub socket: PathBuf,
    pub closing: CancellationToken,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub fn credentials() -> Vec<ClientCredential> {
    let c = |name: &str, class, token: &str| ClientCredential {
        name: name.into(),
        class,
        token: token.into(),
    };
    vec![
        c("alice", Class::Human, HUMAN_TOKEN),
        c("bob", Class::Human, HUMAN2_TOKEN),
        c("robot", Class::Agent, AGENT_TOKEN),
        c("robot2", Class::Agent, AGENT2_TOKEN),
        c("watcher", Class::Observer, OBSERVER_TOKEN),
    ]
}

/// Each turn: text streamed in many chunks together with a `shell` call, then a final answer.
pub fn shell_script(delay_ms: u64) -> String {
    json!({"loop": true, "responses": [
        {"text": "one two three four five six seven eight nine ten ", "chunk_delay_ms": delay_ms,
         "tool_calls": [{"tool": "shell", "args": {"command": "echo tool-ran"}}]},
        {"text": "finished"}
    ]})
    .to_string()
}

pub struct Options {
    pub script: String,
    pub config: MuxConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            script: shell_script(1),
            config: MuxConfig::default(),
        }
    }
}

impl Agent {
    pub async fn start(opts: Options) -> Agent {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        Agent::start_in(dir, opts).await
    }

    /// Starts on an existing state directory (restart tests).
    pub async fn start_in(dir: Arc<tempfile::TempDir>, opts: Options) -> Agent {
        let log = EventLog::open(&dir.path().join("events.db")).expect("log");
        let provider = ScriptedProvider::from_json(&opts.script, "test script").expect("script");
        let engine = Engine::new(
            Some(Arc::new(provider)),
            ToolRegistry::builtin(&ToolsConfig::default()),
        );
        let mux = Mux::open(opts.config, engine, log).expect("mux");
        let closing = CancellationToken::new();
        let auth = Authenticator::new(credentials()).expect("auth");
        let listener = tether_transport::bind_tcp("127.0.0.1:0".parse().expect("addr"), &auth)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = WsState::new(mux.clone(), auth, closing.clone());
        let http = tokio::spawn({
            let closing = closing.clone();
            async move {
                let _ = tether_transport::serve_http(listener, router(state), closing).await;
            }
        });
        let socket = dir.path().join("agent.sock");
        let unix_listener = tether_transport::unix::bind(&socket).expect("unix bind");
        let unix = tokio::spawn(tether_transport::unix::serve(
            unix_listener,
            mux.clone(),
            closing.clone(),
        ));
        Agent {
            dir,
            mux,
            addr,
            socket,
            closing,
            tasks: vec![http, unix],
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub async fn ws(&self, token: &str) -> Client {
        Client::connect_ws(&self.url(), Some(token))
            .await
            .expect("ws connect")
    }

    pub async fn unix(&self) -> Client {
        Client::connect_unix(&self.socket)
            .await
            .expect("unix connect")
    }

    /// Shuts down like SIGTERM would: turns end, connections close.
    pub async fn stop(self) -> Arc<tempfile::TempDir> {
        self.mux.shutdown().await;
        self.closing.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.mux.log().close();
        self.dir
    }
}

/// Waits (bounded) for the next raw frame.
pub async fn next_raw(c: &mut Client) -> String {
    tokio::time::timeout(Duration::from_secs(20), c.next_text())
        .await
        .expect("timed out waiting for a frame")
        .expect("connection closed")
}

pub async fn next_json(c: &mut Client) -> Value {
    let text = next_raw(c).await;
    serde_json::from_str(&text).expect("json")
}

/// Reads frames until one satisfies `pred`; returns every frame read, the match last.
pub async fn read_until(c: &mut Client, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = next_json(c).await;
        let done = pred(&v);
        seen.push(v);
        if done {
            return seen;
        }
    }
}

pub fn is_event(v: &Value, name: &str) -> bool {
    v.get("event").and_then(Value::as_str) == Some(name) && v.get("seq").is_some()
}

pub async fn create_session(c: &mut Client, policy: &str) -> String {
    let r = c
        .request("session.create", json!({"mode": "chat", "policy": policy}))
        .await
        .expect("create");
    r["session_id"].as_str().expect("session_id").to_owned()
}

pub fn decode(text: &str) -> ServerFrame {
    ServerFrame::decode(text).expect("decode")
}
