//! Test harness for the hub's acceptance tests. Everything runs over real loopback sockets:
//!
//! * [`TestHub`] — the real hub ([`tether_hub::start`]) on `127.0.0.1:0` with a temporary
//!   state directory and four operators (two humans, an agent-class robot, an observer);
//!   agent credentials are created through the store, like `tether hub token create`.
//! * [`V1Agent`] — a version-1 agent written from PROTOCOL.md §2 the way catpaw behaves: a
//!   raw tokio-tungstenite client that registers, heartbeats, sends alert events without
//!   `seq`, acks `session_start` by `ref_id` and answers inspect and chat sessions with
//!   catpaw's `session_output` stages.
//! * [`V2Agent`] — the real tether agent side: event log, engine with a scripted model,
//!   multiplexer, [`RemoteSessions`], [`AlertSpool`] and the real [`Link`] driver.
//! * Operators are [`tether_transport::client::Client`]s on `/v1/ws`.
//!
//! Waits are bounded by [`WAIT`] (generous: the machine is a loaded 2-core box); nothing
//! sleeps to make a timing assertion.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tether_engine::Engine;
use tether_engine::log::EventLog;
use tether_engine::scripted::ScriptedProvider;
use tether_host::tools::{ToolRegistry, ToolsConfig};
use tether_hub::{HubConfig, Operator, RunningHub};
use tether_link::driver::{NoAlerts, load_or_create_agent_id, prepare_endpoint};
use tether_link::{
    AlertSink, AlertSpool, Link, LinkOptions, LinkStatus, RemoteConfig, RemoteSessions, TlsOptions,
};
use tether_mux::{Mux, MuxConfig};
use tether_proto::link::{AlertEvent, AlertStatus};
use tether_proto::{Class, Mode};
use tether_transport::client::Client;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// Generous bound for every wait.
pub const WAIT: Duration = Duration::from_secs(60);

pub const ALICE: &str = "alice-operator-token-0123456789";
pub const BOB: &str = "bob-operator-token-0123456789";
pub const ROBOT: &str = "robot-operator-token-0123456789";
pub const WATCHER: &str = "watcher-operator-token-0123456789";

/// The operators every test hub has.
pub fn operators() -> Vec<Operator> {
    let o = |name: &str, class, token: &str| Operator {
        name: name.into(),
        class,
        token: token.into(),
    };
    vec![
        o("alice", Class::Human, ALICE),
        o("bob", Class::Human, BOB),
        o("robot", Class::Agent, ROBOT),
        o("watcher", Class::Observer, WATCHER),
    ]
}

/// `fut` within [`WAIT`], or a panic naming `what`.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

// ---- the hub --------------------------------------------------------------------------

pub struct TestHub {
    pub dir: Arc<tempfile::TempDir>,
    pub running: Option<RunningHub>,
    pub addr: SocketAddr,
}

impl TestHub {
    pub async fn start() -> TestHub {
        TestHub::start_with(|_| {}).await
    }

    /// Starts with the config adjusted by `f` (TLS, listen address, ...).
    pub async fn start_with(f: impl FnOnce(&mut HubConfig)) -> TestHub {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        TestHub::start_in(dir, "127.0.0.1:0".parse().expect("addr"), f).await
    }

    /// Starts on an existing state directory and address (restart tests). Binding is retried
    /// (bounded) while the previous hub's socket is still going away.
    pub async fn start_in(
        dir: Arc<tempfile::TempDir>,
        listen: SocketAddr,
        f: impl FnOnce(&mut HubConfig),
    ) -> TestHub {
        let mut config = HubConfig::new(listen, dir.path().to_owned());
        config.operators = operators();
        f(&mut config);
        let running = within("the hub to start", async {
            loop {
                match tether_hub::start(config.clone(), false).await {
                    Ok(r) => return r,
                    Err(e) if e.contains("cannot listen") => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("hub start: {e}"),
                }
            }
        })
        .await;
        let addr = running.local_addr;
        TestHub {
            dir,
            running: Some(running),
            addr,
        }
    }

    pub fn hub(&self) -> &tether_hub::Hub {
        &self.running.as_ref().expect("hub running").hub
    }

    /// The agent endpoint, `ws://addr/api/v1/agent/ws`.
    pub fn agent_url(&self) -> String {
        format!("ws://{}/api/v1/agent/ws", self.addr)
    }

    /// The operator endpoint, `ws://addr/v1/ws`.
    pub fn operator_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// A new agent credential, the way `tether hub token create` makes one.
    pub async fn create_token(&self, name: &str) -> String {
        let token = tether_hub::tokens::generate().expect("token");
        let hash = tether_hub::tokens::hash(&token);
        let name = name.to_owned();
        self.hub()
            .store()
            .run(move |s| s.insert_token(&name, &hash, &BTreeMap::new()))
            .await
            .expect("insert token");
        token
    }

    pub async fn revoke_token(&self, name: &str) -> usize {
        let name = name.to_owned();
        self.hub()
            .store()
            .run(move |s| s.revoke_token(&name))
            .await
            .expect("revoke token")
    }

    /// An operator connection, `hello` done.
    pub async fn operator(&self, token: &str) -> Client {
        let mut c = within(
            "operator connect",
            Client::connect_ws(&self.operator_url(), Some(token)),
        )
        .await
        .expect("operator connect");
        within(
            "hello",
            c.request("hello", json!({"client_name": "hub test"})),
        )
        .await
        .expect("hello");
        c
    }

    /// Alert rows held in the store.
    pub async fn alert_count(&self) -> u64 {
        self.hub()
            .store()
            .run(|s| s.count_alert_events())
            .await
            .expect("count alerts")
    }

    /// Waits until the store holds at least `n` alerts.
    pub async fn wait_alerts(&self, n: u64) -> u64 {
        within(&format!("{n} alerts in the hub store"), async {
            loop {
                let have = self.alert_count().await;
                if have >= n {
                    return have;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Waits until the hub's registry says `agent_id` is (or is not) connected.
    pub async fn wait_connected(&self, agent_id: &str, connected: bool) {
        within(
            &format!("agent {agent_id} connected = {connected}"),
            async {
                while self.hub().is_connected(agent_id) != connected {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        )
        .await
    }

    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        if let Some(r) = self.running.take() {
            within("the hub to stop", r.stop()).await;
        }
        self.dir.clone()
    }
}

// ---- operators ------------------------------------------------------------------------

/// The name sessions show for this operator connection (its `hello` result's `name`).
pub async fn who_am_i(c: &mut Client) -> String {
    let r = within(
        "hello",
        c.request("hello", json!({"client_name": "hub test"})),
    )
    .await
    .expect("hello");
    r["name"].as_str().expect("name").to_owned()
}

/// The next frame an operator gets (bounded), as JSON.
pub async fn next_json(c: &mut Client, what: &str) -> Value {
    let text = within(what, c.next_text())
        .await
        .unwrap_or_else(|| panic!("the connection closed while waiting for {what}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Reads frames until an event frame (one with a `seq`) of `session_id` satisfies `stop`;
/// returns every event frame of that session read on the way, the last included.
pub async fn events_until(
    c: &mut Client,
    session_id: &str,
    what: &str,
    mut stop: impl FnMut(&Value) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = next_json(c, what).await;
        if v.get("seq").is_none() || v["session_id"] != session_id {
            continue;
        }
        let done = stop(&v);
        seen.push(v);
        if done {
            return seen;
        }
    }
}

/// Reads frames until an event named `name` of `session_id` arrives; returns it.
pub async fn next_event(c: &mut Client, session_id: &str, name: &str) -> Value {
    let mut got = events_until(c, session_id, &format!("event `{name}`"), |v| {
        v["event"] == name
    })
    .await;
    got.pop().expect("an event")
}

/// Reads frames until a control frame `{"event": name}` without `seq` satisfying `pred`.
pub async fn next_control(
    c: &mut Client,
    name: &str,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    loop {
        let v = next_json(c, &format!("control frame `{name}`")).await;
        if v.get("seq").is_none() && v["event"] == name && pred(&v) {
            return v;
        }
    }
}

/// The `event` names of a list of frames.
pub fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// The reason of a refused request.
pub fn reason(r: &Result<Value, tether_transport::client::ClientError>) -> String {
    match r {
        Err(tether_transport::client::ClientError::Server(e)) => e.reason.as_str().to_owned(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ---- raw HTTP (REST mirror) -------------------------------------------------------------

/// A minimal HTTP/1.1 GET over a fresh TCP connection: (status, body as JSON or Null).
pub async fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let (status, body) = http_get_raw(addr, path, bearer).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A GET without credentials whose body is text (`/metrics`).
pub async fn http_get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_raw(addr, path, None).await
}

/// A minimal HTTP/1.1 GET over a fresh TCP connection: (status, body).
pub async fn http_get_raw(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(&format!("GET {path}"), async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, body)
    })
    .await
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---- a version-1 agent, as catpaw behaves -------------------------------------------------

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Dials the agent endpoint with catpaw's headers. An HTTP refusal comes back as
/// `tungstenite::Error::Http` carrying the status.
pub async fn dial_agent(
    url: &str,
    token: &str,
    agent_id: &str,
    proto: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = url.into_client_request()?;
    let h = request.headers_mut();
    h.insert("X-Agent-Token", token.parse().expect("header"));
    h.insert("X-Agent-ID", agent_id.parse().expect("header"));
    h.insert("X-Proto-Version", proto.parse().expect("header"));
    within("agent dial", tokio_tungstenite::connect_async(request))
        .await
        .map(|(ws, _)| ws)
}

/// The HTTP status of a refused upgrade.
pub fn refused_status(r: Result<Ws, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

pub fn frame(kind: &str, payload: Value) -> String {
    json!({"type": kind, "id": uuid::Uuid::now_v7().to_string(), "payload": payload}).to_string()
}

/// catpaw's `register` payload.
pub fn register_payload(hostname: &str) -> Value {
    json!({
        "hostname": hostname,
        "ip": "10.0.0.5",
        "os": "linux",
        "arch": "amd64",
        "labels": {"env": "prod", "role": "db"},
        "plugins": ["cpu", "disk", "mem"],
        "agent_version": "catpaw v0.9.1",
        "uptime_sec": 1234
    })
}

/// One catpaw alert event (no `seq`).
pub fn catpaw_alert(key: &str, status: &str, labels: Value) -> Value {
    json!({
        "event_time": 1_700_000_000,
        "event_status": status,
        "alert_key": key,
        "labels": labels,
        "attrs": {"threshold": "90"},
        "description": format!("{key} is {status}"),
        "description_format": "text"
    })
}

/// The lines catpaw's inspect sends, in order.
pub const INSPECT_TOOL_ARGS: &str = r#"{"mount":"/"}"#;
pub const INSPECT_REPORT: &str = "## Disk report\n\n/ is 42% full; nothing to do.";

/// A version-1 agent: a raw WebSocket client speaking PROTOCOL.md §2 version 1 the way catpaw
/// does. Once registered, a background task answers sessions (inspect and chat) by itself and
/// passes every frame it received to [`V1Agent::next_frame`]; the connection's end shows up
/// there as `{"type": "__closed__"}`.
pub struct V1Agent {
    pub agent_id: String,
    out: mpsc::UnboundedSender<Message>,
    inbound: mpsc::UnboundedReceiver<Value>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Whether sessions are answered by themselves (see [`V1Agent::manual`]).
    auto: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for V1Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl V1Agent {
    /// Dials, registers and waits for the `ack`; panics on refusal.
    pub async fn connect(url: &str, token: &str, agent_id: &str, hostname: &str) -> V1Agent {
        let (agent, ack) = V1Agent::connect_with(url, token, agent_id, hostname, "1").await;
        assert_eq!(ack["payload"]["ok"], true, "register refused: {ack}");
        assert!(
            ack["payload"].get("proto").is_none(),
            "a version-1 agent must not be offered version 2: {ack}"
        );
        agent
    }

    /// Dials with `X-Proto-Version: proto`, registers, returns the agent and the `ack` frame.
    pub async fn connect_with(
        url: &str,
        token: &str,
        agent_id: &str,
        hostname: &str,
        proto: &str,
    ) -> (V1Agent, Value) {
        V1Agent::connect_registering(url, token, agent_id, proto, register_payload(hostname)).await
    }

    /// As [`V1Agent::connect_with`], registering with `payload` (another `ip`, say).
    pub async fn connect_registering(
        url: &str,
        token: &str,
        agent_id: &str,
        proto: &str,
        payload: Value,
    ) -> (V1Agent, Value) {
        let ws = dial_agent(url, token, agent_id, proto)
            .await
            .expect("agent upgrade");
        let (mut sink, mut stream) = ws.split();
        let register = json!({
            "type": "register",
            "id": uuid::Uuid::now_v7().to_string(),
            "payload": payload,
        });
        let register_id = register["id"].clone();
        sink.send(Message::Text(register.to_string().into()))
            .await
            .expect("send register");
        // catpaw waits at most 10 s for the ack (pings may come first).
        let ack = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg {
                    let v: Value = serde_json::from_str(t.as_str()).expect("JSON frame");
                    if v["type"] == "ack" {
                        return v;
                    }
                }
            }
            panic!("the hub closed before acking register");
        })
        .await
        .expect("no ack to register within 10 s");
        assert_eq!(
            ack["ref_id"], register_id,
            "the ack answers the register: {ack}"
        );

        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            // Frames queued together go out in one write (catpaw acks a session_start and
            // starts the session straight away: the hub may read both in one go).
            'outer: while let Some(first) = out_rx.recv().await {
                let mut next = Some(first);
                while let Some(m) = next.take() {
                    let close = matches!(m, Message::Close(_));
                    if sink.feed(m).await.is_err() || close {
                        let _ = sink.flush().await;
                        break 'outer;
                    }
                    next = out_rx.try_recv().ok();
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
        });
        let (in_tx, inbound) = mpsc::unbounded_channel();
        let reply = out.clone();
        let auto = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let answering = auto.clone();
        let reader = tokio::spawn(async move {
            let mut chats: BTreeMap<String, usize> = BTreeMap::new();
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if answering.load(std::sync::atomic::Ordering::SeqCst) {
                    catpaw_behaviour(&reply, &mut chats, &v);
                }
                let _ = in_tx.send(v);
            }
            let _ = in_tx.send(json!({"type": "__closed__"}));
        });
        (
            V1Agent {
                agent_id: agent_id.to_owned(),
                out,
                inbound,
                tasks: vec![writer, reader],
                auto,
            },
            ack,
        )
    }

    /// From now on the test answers sessions itself (acks, outputs), frame by frame.
    pub fn manual(&self) {
        self.auto.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Acks a `session_start` (or any frame) by its id, as catpaw's `sendACK` does.
    pub fn ack(&self, frame: &Value) {
        let ack = json!({
            "type": "ack",
            "id": uuid::Uuid::now_v7().to_string(),
            "ref_id": frame["id"],
            "payload": {"ok": true},
        });
        self.send_raw(ack.to_string());
    }

    /// One `session_output`, shaped as catpaw's `sessionOutputPayload` marshals it (`report`
    /// and `metadata` omitted when empty).
    pub fn output(&self, sid: &str, delta: &str, stage: &str, done: bool) {
        self.send(
            "session_output",
            json!({"session_id": sid, "delta": delta, "stage": stage, "done": done}),
        );
    }

    /// Sends one text frame exactly as given.
    pub fn send_raw(&self, text: String) {
        let _ = self.out.send(Message::Text(text.into()));
    }

    /// Sends one frame.
    pub fn send(&self, kind: &str, payload: Value) {
        let _ = self.out.send(Message::Text(frame(kind, payload).into()));
    }

    pub fn heartbeat(&self, active_sessions: u64, active_alerts: u64, cpu: f64, mem: f64) {
        self.send(
            "heartbeat",
            json!({"active_sessions": active_sessions, "active_alerts": active_alerts,
                   "cpu_pct": cpu, "mem_pct": mem}),
        );
    }

    pub fn alerts(&self, events: Vec<Value>) {
        self.send("alert_events", json!({ "events": events }));
    }

    /// The next frame from the hub (pings included), bounded.
    pub async fn next_frame(&mut self) -> Value {
        within("a frame from the hub", self.inbound.recv())
            .await
            .unwrap_or_else(|| json!({"type": "__closed__"}))
    }

    /// Skips frames until one of type `kind`.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let f = self.next_frame().await;
            if f["type"] == kind {
                return f;
            }
            if f["type"] == "__closed__" {
                panic!("the connection closed while waiting for `{kind}`");
            }
        }
    }

    /// Whether no frame is waiting (after `__closed__`: none will come).
    pub fn inbound_is_empty(&mut self) -> bool {
        self.inbound.try_recv().is_err()
    }

    /// Closes the connection like catpaw on exit.
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }
}

/// What catpaw does with a frame from the hub.
fn catpaw_behaviour(
    out: &mpsc::UnboundedSender<Message>,
    chats: &mut BTreeMap<String, usize>,
    v: &Value,
) {
    let send = |kind: &str, payload: Value| {
        let _ = out.send(Message::Text(frame(kind, payload).into()));
    };
    let output = |sid: &str, delta: &str, stage: &str| json!({"session_id": sid, "delta": delta, "stage": stage, "done": false});
    let p = &v["payload"];
    match v["type"].as_str() {
        Some("session_start") => {
            let sid = p["session_id"].as_str().unwrap_or_default().to_owned();
            let ack = json!({
                "type": "ack",
                "id": uuid::Uuid::now_v7().to_string(),
                "ref_id": v["id"],
                "payload": {"ok": true},
            });
            let _ = out.send(Message::Text(ack.to_string().into()));
            match p["session_type"].as_str() {
                Some("inspect") | Some("diagnose") => {
                    // Straight after the ack, like catpaw's session goroutine.
                    send(
                        "session_output",
                        output(&sid, "[Round 1] AI thinking...", "thinking"),
                    );
                    // catpaw's lines for a tool reached through `call_tool`
                    // (`FormatToolArgsDisplay`), its duration as Go prints one.
                    send(
                        "session_output",
                        output(
                            &sid,
                            &format!("[Tool] call_tool disk_usage {INSPECT_TOOL_ARGS}"),
                            "tool_call",
                        ),
                    );
                    send(
                        "session_output",
                        output(
                            &sid,
                            "[Tool done] call_tool (ok, 12B, 3.000412ms)",
                            "tool_result",
                        ),
                    );
                    send(
                        "session_output",
                        json!({"session_id": sid, "delta": "", "stage": "", "done": true,
                               "report": INSPECT_REPORT}),
                    );
                }
                _ => {
                    chats.insert(sid.clone(), 0);
                    if let Some(m) = p["params"]["message"].as_str() {
                        chat_answer(out, chats, &sid, m);
                    }
                }
            }
        }
        Some("session_input") => {
            let sid = p["session_id"].as_str().unwrap_or_default().to_owned();
            let m = p["message"].as_str().unwrap_or_default().to_owned();
            chat_answer(out, chats, &sid, &m);
        }
        Some("session_cancel") => {
            // catpaw cancels the session's context; its goroutine then sends the final bare
            // `done`. A session it no longer runs gets nothing.
            let sid = p["session_id"].as_str().unwrap_or_default();
            if chats.remove(sid).is_some() {
                send(
                    "session_output",
                    json!({"session_id": sid, "delta": "", "stage": "", "done": true}),
                );
            }
        }
        _ => {}
    }
}

fn chat_answer(
    out: &mpsc::UnboundedSender<Message>,
    chats: &mut BTreeMap<String, usize>,
    sid: &str,
    message: &str,
) {
    let turn = chats.entry(sid.to_owned()).or_insert(0);
    *turn += 1;
    let payload = json!({
        "session_id": sid,
        "delta": format!("answer {turn}: you said {message}"),
        "stage": "answer",
        "done": false,
        "metadata": {"turn_done": true},
    });
    let _ = out.send(Message::Text(frame("session_output", payload).into()));
}

// ---- a version-2 agent: the real agent side -------------------------------------------------

/// Each turn: a `shell` call (needs approval), then a short answer.
pub fn shell_script() -> String {
    json!({"loop": true, "responses": [
        {"text": "running it ", "tool_calls": [{"tool": "shell", "args": {"command": "echo tool-ran"}}]},
        {"text": "done"}
    ]})
    .to_string()
}

/// The builtin tools with only these names kept.
pub fn tools_named(names: &[&str]) -> ToolRegistry {
    ToolRegistry::builtin(&ToolsConfig::default()).filtered(|n, _| names.contains(&n))
}

/// A tether agent (version 2) with the real link driver.
pub struct V2Agent {
    pub dir: Arc<tempfile::TempDir>,
    pub mux: Mux,
    pub spool: AlertSpool,
    pub sink: AlertSink,
    pub remote: RemoteSessions,
    pub agent_id: String,
    pub options: LinkOptions,
    link: Option<(Link, CancellationToken)>,
}

impl V2Agent {
    /// Builds the agent (link not started). `url` is the hub's agent endpoint.
    pub fn new(url: &str, token: &str, script: &str, tls: Option<&TlsOptions>) -> V2Agent {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        V2Agent::open_in(dir, url, token, script, tls)
    }

    /// Builds the agent on an existing state directory: its agent id, event log (sessions
    /// restored) and spool, as after a process restart.
    pub fn open_in(
        dir: Arc<tempfile::TempDir>,
        url: &str,
        token: &str,
        script: &str,
        tls: Option<&TlsOptions>,
    ) -> V2Agent {
        let log = EventLog::open(&dir.path().join("events.db")).expect("event log");
        let provider = ScriptedProvider::from_json(script, "test script").expect("script");
        let engine = Engine::new(
            Some(Arc::new(provider)),
            ToolRegistry::builtin(&ToolsConfig::default()),
        );
        let mux = Mux::open(MuxConfig::default(), engine, log).expect("mux");
        let remote = RemoteSessions::new(
            mux.clone(),
            RemoteConfig {
                max_sessions: 4,
                idle_timeout: Duration::from_secs(30 * 60),
                tools: tools_named(&["shell", "system_info"]),
                session_types: vec![Mode::Chat, Mode::Diagnose, Mode::Inspect],
                model_configured: true,
            },
        );
        let spool = AlertSpool::open(&dir.path().join("spool.db"), 100_000).expect("spool");
        let sink = spool.sink().expect("sink");
        let agent_id = load_or_create_agent_id(dir.path()).expect("agent id");
        let default_tls = TlsOptions::default();
        let (endpoint, connector) =
            prepare_endpoint(url, true, tls.unwrap_or(&default_tls)).expect("endpoint");
        let options = LinkOptions {
            endpoint,
            token: token.to_owned(),
            agent_id: agent_id.clone(),
            offered_version: 2,
            labels: BTreeMap::from([("env".to_owned(), "test".to_owned())]),
            plugins: vec!["cpu".to_owned()],
            connector,
            seed: Some(11),
        };
        V2Agent {
            dir,
            mux,
            spool,
            sink,
            remote,
            agent_id,
            options,
            link: None,
        }
    }

    /// Starts a new [`Link`] on this agent's spool and sessions.
    pub fn start_link(&mut self) {
        assert!(self.link.is_none(), "a link is running already");
        let shutdown = CancellationToken::new();
        let link = Link::spawn(
            self.options.clone(),
            self.spool.clone(),
            self.remote.clone(),
            Arc::new(NoAlerts),
            shutdown.clone(),
        );
        self.link = Some((link, shutdown));
    }

    /// Cancels the link's token and waits for it to stop.
    pub async fn stop_link(&mut self) {
        if let Some((link, shutdown)) = self.link.take() {
            shutdown.cancel();
            within("the link to stop", link.join()).await;
        }
    }

    pub fn link(&self) -> &Link {
        &self.link.as_ref().expect("link started").0
    }

    pub fn status(&self) -> LinkStatus {
        self.link().status()
    }

    /// Waits until the link's status satisfies `pred`; returns that status.
    pub async fn wait_status(
        &self,
        what: &str,
        mut pred: impl FnMut(&LinkStatus) -> bool,
    ) -> LinkStatus {
        let mut rx = self.link().watch();
        let wait = async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if pred(&s) {
                        return s.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(s) => s,
            Err(_) => panic!(
                "timed out waiting for link status: {what}; status: {:?}",
                self.status()
            ),
        }
    }

    pub async fn wait_registered(&self) -> LinkStatus {
        self.wait_status("registered", |s| s.state == "registered")
            .await
    }

    /// Stops like the process exiting: the link, then the multiplexer (sessions persisted).
    /// Returns the state directory, for [`V2Agent::open_in`].
    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        self.stop_link().await;
        let _ = tokio::time::timeout(WAIT, self.mux.shutdown()).await;
        self.mux.log().close();
        self.dir.clone()
    }
}

/// Test alert `i` (no seq: the spool assigns it).
pub fn alert(i: usize) -> AlertEvent {
    AlertEvent {
        event_time: 1_700_000_000 + i as i64,
        event_status: if i.is_multiple_of(2) {
            AlertStatus::Critical
        } else {
            AlertStatus::Warning
        },
        alert_key: format!("alert-{i:05}"),
        labels: BTreeMap::from([("check".to_owned(), "test".to_owned())]),
        attrs: BTreeMap::new(),
        description: format!("alert number {i}"),
        description_format: String::new(),
        seq: None,
    }
}

/// PEM files of a new self-signed certificate for `names` in `dir`: (cert, key).
pub fn self_signed(
    dir: &Path,
    stem: &str,
    names: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let ck = rcgen::generate_simple_self_signed(names).expect("self-signed certificate");
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    (cert, key)
}
