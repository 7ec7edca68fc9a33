//! Test harness: a real agent core (event log on disk, mux, WebSocket and Unix listeners on
//! loopback) and helpers to drive it through real sockets.
#![allow(dead_code)]

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tether_engine::Engine;
use tether_engine::log::EventLog;
use tether_engine::scripted::ScriptedProvider;
use tether_host::tools::{Tool, ToolContext, ToolOutput, ToolRegistry, ToolSpec, ToolsConfig};
use tether_mux::{Mux, MuxConfig};
use tether_proto::{Class, ErrorBody, ServerFrame};
use tether_transport::auth::{Authenticator, ClientCredential};
use tether_transport::client::{Client, ClientError};
use tether_transport::ws::{WsState, router};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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
    /// The engine's tools; the builtin set when `None`.
    pub tools: Option<ToolRegistry>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            script: shell_script(1),
            config: MuxConfig::default(),
            tools: None,
        }
    }
}

impl Agent {
    pub async fn start(opts: Options) -> Agent {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        Agent::start_in(dir, opts).await
    }

    /// Starts with the listener's limits set to `limits`.
    pub async fn start_with_limits(
        opts: Options,
        limits: tether_transport::serve::ServeLimits,
    ) -> Agent {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        Agent::start_full(dir, opts, limits).await
    }

    /// Starts on an existing state directory (restart tests).
    pub async fn start_in(dir: Arc<tempfile::TempDir>, opts: Options) -> Agent {
        Agent::start_full(dir, opts, tether_transport::serve::ServeLimits::default()).await
    }

    async fn start_full(
        dir: Arc<tempfile::TempDir>,
        opts: Options,
        limits: tether_transport::serve::ServeLimits,
    ) -> Agent {
        let log = EventLog::open(&dir.path().join("events.db")).expect("log");
        let provider = ScriptedProvider::from_json(&opts.script, "test script").expect("script");
        let tools = opts
            .tools
            .unwrap_or_else(|| ToolRegistry::builtin(&ToolsConfig::default()));
        let engine = Engine::new(Some(Arc::new(provider)), tools);
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
                let _ = tether_transport::serve::serve(
                    listener,
                    router(state),
                    tether_transport::serve::Plain,
                    limits,
                    closing,
                )
                .await;
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

// ---------------------------------------------------------------------------------------------
// Additions for the acceptance tests (issue 2)
// ---------------------------------------------------------------------------------------------

/// A tool that always needs permission and runs instantly (no child process), so tests whose
/// timing matters (paused time, slow clients) do not depend on `/bin/sh`.
pub struct ApproveTool;

pub const APPROVE_OUTPUT: &str = "approve-tool-ran";

impl Tool for ApproveTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "approve_me".into(),
            description: "test tool that needs permission".into(),
            parameters: json!({"type": "object"}),
        }
    }

    fn needs_permission(&self, _args: &Value) -> bool {
        true
    }

    fn read_only(&self) -> bool {
        false
    }

    fn call<'a>(&'a self, _args: Value, _ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async { ToolOutput::ok(APPROVE_OUTPUT) })
    }
}

/// The builtin tools plus [`ApproveTool`].
pub fn tools_with_approve() -> ToolRegistry {
    let mut tools = ToolRegistry::builtin(&ToolsConfig::default());
    tools.add(Arc::new(ApproveTool));
    tools
}

/// Each turn: some text, one `approve_me` call (needs permission), then a final answer.
pub fn approve_script(delay_ms: u64) -> String {
    json!({"loop": true, "responses": [
        {"text": "checking the thing ", "chunk_delay_ms": delay_ms,
         "tool_calls": [{"tool": "approve_me", "args": {}}]},
        {"text": "finished"}
    ]})
    .to_string()
}

/// Each turn: `text` streamed (one `text_delta` per word), no tools.
pub fn text_script(text: &str, delay_ms: u64) -> String {
    json!({"loop": true, "responses": [{"text": text, "chunk_delay_ms": delay_ms}]}).to_string()
}

/// `count` words of `len` characters each: one `text_delta` event per word.
pub fn long_text(count: usize, len: usize) -> String {
    let word = "x".repeat(len.saturating_sub(1));
    let mut s = String::with_capacity(count * len);
    for i in 0..count {
        s.push_str(&word);
        s.push(char::from(b'a' + (i % 26) as u8));
        s.push(' ');
    }
    s
}

pub fn seq_of(v: &Value) -> Option<u64> {
    v.get("seq").and_then(Value::as_u64)
}

pub fn is_control(v: &Value, name: &str) -> bool {
    v.get("event").and_then(Value::as_str) == Some(name) && v.get("seq").is_none()
}

pub fn is_reply(v: &Value) -> bool {
    v.get("re").is_some()
}

/// Sends a request that must fail; returns the error body.
pub async fn expect_error(c: &mut Client, op: &str, params: Value) -> ErrorBody {
    match c.request(op, params).await {
        Err(ClientError::Server(e)) => e,
        Err(e) => panic!("{op}: expected a server error, got {e}"),
        Ok(v) => panic!("{op}: expected a server error, got success {v}"),
    }
}

/// Raw frames up to and including the first one whose JSON satisfies `pred`.
pub async fn read_raw_until(c: &mut Client, mut pred: impl FnMut(&Value) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let text = next_raw(c).await;
        let v: Value = serde_json::from_str(&text).expect("json");
        seen.push(text);
        if pred(&v) {
            return seen;
        }
    }
}

/// Reads until `permission_requested` and returns its JSON.
pub async fn wait_permission(c: &mut Client) -> Value {
    read_until(c, |v| is_event(v, "permission_requested"))
        .await
        .pop()
        .expect("permission_requested")
}

pub async fn answer(
    c: &mut Client,
    sid: &str,
    call_id: &str,
    decision: &str,
) -> Result<Value, ClientError> {
    c.request(
        "answer",
        json!({"session_id": sid, "call_id": call_id, "decision": decision}),
    )
    .await
}

pub async fn attach(c: &mut Client, sid: &str, after_seq: Option<u64>) -> Value {
    let params = match after_seq {
        Some(a) => json!({"session_id": sid, "after_seq": a}),
        None => json!({"session_id": sid}),
    };
    c.request("attach", params).await.expect("attach")
}

/// Checks that the seq-bearing frames among `frames` are strictly consecutive.
pub fn assert_contiguous(frames: &[Value]) {
    let seqs: Vec<u64> = frames.iter().filter_map(seq_of).collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "seq hole or duplicate in {seqs:?}");
    }
}

/// A raw JSON-lines connection to the Unix socket: no background reader, so the test decides
/// when (and whether) the socket is read.
pub struct RawUnix {
    pub read: BufReader<tokio::net::unix::OwnedReadHalf>,
    pub write: tokio::net::unix::OwnedWriteHalf,
}

impl RawUnix {
    pub async fn connect(path: &Path) -> RawUnix {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .expect("unix connect");
        let (read, write) = stream.into_split();
        RawUnix {
            read: BufReader::with_capacity(1 << 16, read),
            write,
        }
    }

    pub async fn send_line(&mut self, line: &[u8]) {
        self.write.write_all(line).await.expect("write");
        self.write.write_all(b"\n").await.expect("write");
        self.write.flush().await.expect("flush");
    }

    /// The next line (bounded wait); `None` at end of stream.
    pub async fn next_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(
            Duration::from_secs(20),
            self.read.read_until(b'\n', &mut buf),
        )
        .await
        .expect("timed out reading a line")
        .expect("read");
        if n == 0 {
            return None;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        Some(String::from_utf8(buf).expect("server frames are UTF-8"))
    }

    pub async fn next_json(&mut self) -> Value {
        let line = self.next_line().await.expect("connection closed");
        serde_json::from_str(&line).expect("json")
    }

    /// Sends a request and returns its reply, skipping (and returning) other frames.
    pub async fn request(&mut self, id: u64, op: &str, params: Value) -> (Value, Vec<Value>) {
        let text = tether_proto::encode_request(&id.into(), op, params);
        self.send_line(text.as_bytes()).await;
        let mut other = Vec::new();
        loop {
            let v = self.next_json().await;
            if v.get("re") == Some(&json!(id)) {
                return (v, other);
            }
            other.push(v);
        }
    }
}

pub type RawWsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket connection (for binary frames and frames the client would not send).
pub async fn raw_ws(agent: &Agent, token: &str) -> RawWsStream {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = agent.url().into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("ws connect");
    socket
}

/// The next text frame of a raw WebSocket, as JSON (bounded wait).
pub async fn raw_ws_next(ws: &mut RawWsStream) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("timed out")
            .expect("closed")
            .expect("ws error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}
