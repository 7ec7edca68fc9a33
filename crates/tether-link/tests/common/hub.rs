//! A test hub: axum on `127.0.0.1:0` serving `GET /api/v1/agent/ws`, speaking version 1
//! (catpaw's protocol) or version 2 of the link protocol (PROTOCOL.md §2).
//!
//! It records every upgrade attempt (with `tokio::time::Instant::now()`, so paused-time tests
//! can measure the agent's waits in virtual time), acks `register` (or not, or answers the
//! upgrade with HTTP 401), stores alert events — under version 2 unique on
//! `(agent_id, seq)`, answering `alert_ack {upto_seq}` after storing — and hands each
//! registered connection to the test as a [`HubConn`] through which the test reads what the
//! agent sent and sends whatever it likes.
//!
//! Under version 1 it is also a *strict* catpaw-server: every frame the agent sends is checked
//! against the shapes catpaw's Go agent produces (`digcore/server/proto.go`: the envelope,
//! `session_output`'s always-present `session_id`/`delta`/`stage`/`done` and `omitempty`
//! `report`/`metadata`, `session_error`'s three fields and catpaw's codes) and against its
//! session rules (`session_error` is followed by the final `done: true` output; after that,
//! nothing more for the session). What breaks them is kept in [`Record::v1_violations`].
//!
//! This file is also compiled into `examples/test_hub.rs` (footprint measurement), so it
//! depends only on axum, tokio, serde_json and uuid.
#![allow(dead_code)]

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The agent endpoint.
pub const AGENT_PATH: &str = "/api/v1/agent/ws";

/// How the hub behaves. Changeable while it runs ([`TestHub::configure`]); a connection uses
/// the settings in force when its upgrade arrived.
#[derive(Clone, Debug)]
pub struct HubSettings {
    /// 1: catpaw's protocol (the register ack never carries `proto`); 2: version 2 when the
    /// agent offers it.
    pub version: u32,
    /// Leave this many registrations unanswered (the agent's ack timeout).
    pub no_ack: usize,
    /// Answer this many upgrade attempts with HTTP 401.
    pub unauthorized: usize,
    /// Only this `X-Agent-Token` is accepted (401 otherwise); any when `None`.
    pub token: Option<String>,
    /// Wait this long before storing each `alert_events` frame (slows delivery so faults land
    /// in the middle of it).
    pub alert_delay: Duration,
    /// Send `ping` this often; never when `None`.
    pub ping_every: Option<Duration>,
    /// SO_RCVBUF of the listening socket (inherited by accepted sockets, which turns off
    /// receive autotuning): a small window keeps unread frames in flight, upstream of the hub,
    /// instead of in its kernel buffer. Only read by [`TestHub::start`].
    pub recv_buffer: Option<u32>,
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            version: 2,
            no_ack: 0,
            unauthorized: 0,
            token: None,
            alert_delay: Duration::ZERO,
            ping_every: None,
            recv_buffer: None,
        }
    }
}

/// One upgrade request.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub at: Instant,
    pub headers: HeaderMap,
    /// Answered with HTTP 401.
    pub refused: bool,
}

/// One WebSocket connection.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    pub opened_at: Instant,
    /// When `register` arrived.
    pub register_at: Option<Instant>,
    /// When the ok ack was sent.
    pub acked_at: Option<Instant>,
    pub ended_at: Option<Instant>,
    /// Negotiated version.
    pub version: u32,
}

/// One stored alert event.
#[derive(Clone, Debug)]
pub struct StoredAlert {
    pub agent_id: String,
    pub seq: Option<u64>,
    pub alert_key: String,
    pub event: Value,
}

/// Everything the hub saw.
#[derive(Default, Debug)]
pub struct Record {
    pub attempts: Vec<Attempt>,
    pub conns: Vec<ConnRecord>,
    /// The hub's alert store.
    pub alerts: Vec<StoredAlert>,
    /// `(agent_id, seq)` of stored version-2 events: the store's unique key.
    pub stored_keys: HashSet<(String, u64)>,
    /// Alert events received, redeliveries included.
    pub alerts_received: u64,
    /// Every heartbeat payload, in order.
    pub heartbeats: Vec<Value>,
    pub pongs: u64,
    /// Version 1: every way a frame from the agent differed from what a catpaw agent sends.
    pub v1_violations: Vec<String>,
}

impl Record {
    pub fn registrations(&self) -> usize {
        self.conns.iter().filter(|c| c.acked_at.is_some()).count()
    }

    pub fn ended(&self) -> usize {
        self.conns.iter().filter(|c| c.ended_at.is_some()).count()
    }

    /// Connections registered and still open.
    pub fn live_registered(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.acked_at.is_some() && c.ended_at.is_none())
            .count()
    }
}

enum Cmd {
    Send(String),
    Close,
    /// Send this many pings as fast as the socket takes them.
    PingFlood(usize),
}

/// A registered (or, with `no_ack`, register-received) connection, as the test sees it.
pub struct HubConn {
    pub index: usize,
    pub headers: HeaderMap,
    /// The `register` frame as received.
    pub register: Value,
    pub version: u32,
    frames: mpsc::UnboundedReceiver<Value>,
    cmd: mpsc::UnboundedSender<Cmd>,
}

/// A fresh frame id.
pub fn frame_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// An envelope.
pub fn frame(kind: &str, payload: Value) -> Value {
    json!({"type": kind, "id": frame_id(), "payload": payload})
}

impl HubConn {
    /// Sends a frame; returns its id.
    pub fn send(&self, frame: Value) -> String {
        let id = frame["id"].as_str().unwrap_or_default().to_owned();
        let _ = self.cmd.send(Cmd::Send(frame.to_string()));
        id
    }

    /// Sends `{"type": kind, "id": <fresh>, "payload": payload}`; returns the id.
    pub fn send_msg(&self, kind: &str, payload: Value) -> String {
        self.send(frame(kind, payload))
    }

    /// Sends raw text as one frame.
    pub fn send_text(&self, text: impl Into<String>) {
        let _ = self.cmd.send(Cmd::Send(text.into()));
    }

    pub fn close(&self) {
        let _ = self.cmd.send(Cmd::Close);
    }

    pub fn ping_flood(&self, n: usize) {
        let _ = self.cmd.send(Cmd::PingFlood(n));
    }

    /// The next frame the agent sent (bounded wait); `None` once the connection ended.
    pub async fn next(&mut self, limit: Duration) -> Option<Value> {
        tokio::time::timeout(limit, self.frames.recv())
            .await
            .expect("timed out waiting for a frame from the agent")
    }

    /// The next frame satisfying `pred`, skipping others (heartbeats, alerts, ...).
    pub async fn next_where(
        &mut self,
        limit: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = tokio::time::timeout(left, self.frames.recv())
                .await
                .expect("timed out waiting for a matching frame from the agent")
                .expect("the connection ended before a matching frame arrived");
            if pred(&v) {
                return v;
            }
        }
    }

    /// The next frame of type `kind`.
    pub async fn next_of(&mut self, kind: &str, limit: Duration) -> Value {
        self.next_where(limit, |v| v["type"] == kind).await
    }

    /// The `ack` answering frame `id`.
    pub async fn ack_for(&mut self, id: &str, limit: Duration) -> Value {
        self.next_where(limit, |v| v["type"] == "ack" && v["ref_id"] == id)
            .await
    }

    /// Waits until the connection has ended; returns the frames that arrived meanwhile.
    pub async fn ended(&mut self, limit: Duration) -> Vec<Value> {
        let mut rest = Vec::new();
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.frames.recv()).await {
                Ok(Some(v)) => rest.push(v),
                Ok(None) => return rest,
                Err(_) => panic!("the connection did not end in time"),
            }
        }
    }
}

struct Shared {
    settings: Mutex<HubSettings>,
    record: Mutex<Record>,
    changed: watch::Sender<u64>,
    conn_tx: mpsc::UnboundedSender<HubConn>,
}

impl Shared {
    fn update<T>(&self, f: impl FnOnce(&mut Record) -> T) -> T {
        let r = {
            let mut rec = self.record.lock().expect("hub record");
            f(&mut rec)
        };
        self.changed.send_modify(|n| *n += 1);
        r
    }
}

/// The running hub.
pub struct TestHub {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    conns: tokio::sync::Mutex<mpsc::UnboundedReceiver<HubConn>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl TestHub {
    pub async fn start(settings: HubSettings) -> TestHub {
        TestHub::start_on("127.0.0.1:0", settings).await
    }

    pub async fn start_on(addr: &str, settings: HubSettings) -> TestHub {
        let addr: SocketAddr = addr.parse().expect("hub address");
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        if let Some(size) = settings.recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("hub bind");
        let listener = socket.listen(128).expect("hub listen");
        let (changed, _) = watch::channel(0u64);
        let (conn_tx, conn_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            settings: Mutex::new(settings),
            record: Mutex::new(Record::default()),
            changed,
            conn_tx,
        });
        let addr = listener.local_addr().expect("hub addr");
        let app = Router::new()
            .route(AGENT_PATH, get(upgrade))
            .with_state(shared.clone());
        // TCP_NODELAY: without it, Nagle holds a small frame until the agent's delayed ACK
        // (40 ms of real time), which paused-time tests would see as minutes of virtual time.
        let listener =
            axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
                let _ = tcp.set_nodelay(true);
            });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestHub {
            addr,
            shared,
            conns: tokio::sync::Mutex::new(conn_rx),
            task,
        }
    }

    /// `ws://127.0.0.1:<port>` (the agent appends the path).
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn configure(&self, f: impl FnOnce(&mut HubSettings)) {
        f(&mut self.shared.settings.lock().expect("settings"));
    }

    /// Reads the record.
    pub fn with<T>(&self, f: impl FnOnce(&Record) -> T) -> T {
        f(&self.shared.record.lock().expect("hub record"))
    }

    /// Waits until `f` returns `Some`, re-checking after every change (bounded by `limit`,
    /// which is virtual time in paused-time tests).
    pub async fn wait<T>(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut(&Record) -> Option<T>,
    ) -> T {
        let mut rx = self.shared.changed.subscribe();
        let wait = async {
            loop {
                if let Some(v) = self.with(&mut f) {
                    return v;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(v) => v,
            Err(_) => panic!(
                "timed out after {limit:?} waiting for: {what}\nhub record: {:#?}",
                self.with(|r| (r.attempts.len(), r.conns.clone(), r.alerts.len()))
            ),
        }
    }

    /// The next connection whose `register` arrived (bounded wait).
    pub async fn next_conn(&self, limit: Duration) -> HubConn {
        let mut rx = self.conns.lock().await;
        tokio::time::timeout(limit, rx.recv())
            .await
            .expect("timed out waiting for the agent to connect and register")
            .expect("hub stopped")
    }
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let at = Instant::now();
    let (settings, refused) = {
        let mut s = shared.settings.lock().expect("settings");
        let bad_token = s
            .token
            .as_deref()
            .is_some_and(|t| header(&headers, "x-agent-token") != Some(t));
        let refused = if s.unauthorized > 0 {
            s.unauthorized -= 1;
            true
        } else {
            bad_token
        };
        (s.clone(), refused)
    };
    shared.update(|r| {
        r.attempts.push(Attempt {
            at,
            headers: headers.clone(),
            refused,
        })
    });
    if refused {
        return (StatusCode::UNAUTHORIZED, "invalid agent token").into_response();
    }
    ws.max_message_size(64 << 20)
        .on_upgrade(move |socket| serve_agent(shared, headers, socket, settings))
}

async fn send_json(socket: &mut WebSocket, v: &Value) -> bool {
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

async fn serve_agent(
    shared: Arc<Shared>,
    headers: HeaderMap,
    mut socket: WebSocket,
    settings: HubSettings,
) {
    let offered: u32 = header(&headers, "x-proto-version")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1);
    let version = if settings.version >= 2 && offered >= 2 {
        2
    } else {
        1
    };
    let agent_id = header(&headers, "x-agent-id")
        .unwrap_or_default()
        .to_owned();
    let index = shared.update(|r| {
        r.conns.push(ConnRecord {
            opened_at: Instant::now(),
            register_at: None,
            acked_at: None,
            ended_at: None,
            version,
        });
        r.conns.len() - 1
    });
    let end = |shared: &Shared| {
        shared.update(|r| r.conns[index].ended_at = Some(Instant::now()));
    };
    // The handshake: the first frame must be `register`.
    let register = loop {
        match socket.recv().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<Value>(t.as_str()) {
                Ok(v) => break v,
                Err(_) => return end(&shared),
            },
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return end(&shared),
            Some(Ok(_)) => continue,
        }
    };
    shared.update(|r| r.conns[index].register_at = Some(Instant::now()));
    let ack = {
        let mut s = shared.settings.lock().expect("settings");
        if s.no_ack > 0 {
            s.no_ack -= 1;
            false
        } else {
            true
        }
    };
    if register["type"] == "register" && ack {
        let mut payload = json!({"ok": true});
        if version == 2 {
            payload["proto"] = json!(2);
        }
        let mut ack = frame("ack", payload);
        ack["ref_id"] = register["id"].clone();
        if !send_json(&mut socket, &ack).await {
            return end(&shared);
        }
        shared.update(|r| r.conns[index].acked_at = Some(Instant::now()));
    }
    let (frames_tx, frames) = mpsc::unbounded_channel();
    let (cmd, mut cmd_rx) = mpsc::unbounded_channel();
    let _ = shared.conn_tx.send(HubConn {
        index,
        headers: headers.clone(),
        register,
        version,
        frames,
        cmd,
    });
    let mut cmds_open = true;
    let mut strict = StrictV1::default();
    let mut ping = settings.ping_every.map(|p| {
        let mut i = tokio::time::interval_at(Instant::now() + p, p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                if version == 1 {
                    let bad = strict.check(&v);
                    if !bad.is_empty() {
                        shared.update(|r| r.v1_violations.extend(bad));
                    }
                }
                match v["type"].as_str() {
                    Some("alert_events") => {
                        if !settings.alert_delay.is_zero() {
                            tokio::time::sleep(settings.alert_delay).await;
                        }
                        let upto = store_alerts(&shared, &agent_id, version, &v["payload"]["events"]);
                        if let (2, Some(upto)) = (version, upto) {
                            let ack = frame("alert_ack", json!({"upto_seq": upto}));
                            if !send_json(&mut socket, &ack).await {
                                break;
                            }
                        }
                    }
                    Some("heartbeat") => shared.update(|r| r.heartbeats.push(v["payload"].clone())),
                    Some("pong") => shared.update(|r| r.pongs += 1),
                    _ => {}
                }
                let _ = frames_tx.send(v);
            }
            c = cmd_rx.recv(), if cmds_open => match c {
                Some(Cmd::Send(text)) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Cmd::PingFlood(n)) => {
                    for _ in 0..n {
                        if !send_json(&mut socket, &json!({"type": "ping", "id": frame_id()})).await {
                            break;
                        }
                    }
                }
                Some(Cmd::Close) => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
                // The test dropped its handle: the connection carries on.
                None => cmds_open = false,
            },
            _ = async {
                match ping.as_mut() {
                    Some(i) => { i.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                if !send_json(&mut socket, &json!({"type": "ping", "id": frame_id()})).await {
                    break;
                }
            }
        }
    }
    end(&shared);
}

/// catpaw's `session_error` codes (`digcore/server/session_handler.go`).
pub const CATPAW_ERROR_CODES: [&str; 5] = [
    "invalid_type",
    "engine_unavailable",
    "missing_plugin",
    "diagnose_failed",
    "chat_init_failed",
];

/// catpaw's `session_output` stages; the final `done` frame has an empty one.
pub const CATPAW_STAGES: [&str; 5] = ["thinking", "tool_call", "tool_result", "answer", "error"];

/// The version-1 checks of one connection (see the module docs).
#[derive(Default)]
struct StrictV1 {
    /// Sessions whose final `done: true` output was sent.
    done: HashSet<String>,
    /// Sessions that sent `session_error` and owe the final `done` output next.
    errored: HashSet<String>,
}

impl StrictV1 {
    fn check(&mut self, v: &Value) -> Vec<String> {
        let mut bad = Vec::new();
        let Some(obj) = v.as_object() else {
            return vec![format!("not a JSON object: {v}")];
        };
        let kind = v["type"].as_str().unwrap_or_default();
        for k in obj.keys() {
            if !["type", "id", "ref_id", "payload"].contains(&k.as_str()) {
                bad.push(format!("envelope field `{k}`: {v}"));
            }
        }
        if v["id"].as_str().is_none_or(str::is_empty) {
            bad.push(format!("envelope without an id: {v}"));
        }
        if obj.contains_key("ref_id") && kind != "ack" {
            bad.push(format!("ref_id on a `{kind}`: {v}"));
        }
        let p = &v["payload"];
        match kind {
            "register" | "heartbeat" | "ack" => {}
            "alert_events" => {
                for e in p["events"].as_array().into_iter().flatten() {
                    for k in e.as_object().into_iter().flat_map(|o| o.keys()) {
                        let known = [
                            "event_time",
                            "event_status",
                            "alert_key",
                            "labels",
                            "attrs",
                            "description",
                            "description_format",
                        ];
                        if !known.contains(&k.as_str()) {
                            bad.push(format!("alert event field `{k}`: {e}"));
                        }
                    }
                }
            }
            "session_output" => {
                let sid = p["session_id"].as_str().unwrap_or_default().to_owned();
                let fields = p.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
                for k in fields.unwrap_or_default() {
                    let known = ["session_id", "delta", "stage", "done", "report", "metadata"];
                    if !known.contains(&k.as_str()) {
                        bad.push(format!("session_output field `{k}`: {v}"));
                    }
                }
                let stage = p["stage"].as_str();
                let done = p["done"].as_bool();
                if sid.is_empty() || p["delta"].as_str().is_none() || stage.is_none() {
                    bad.push(format!("session_output without catpaw's fields: {v}"));
                }
                let Some(done) = done else {
                    bad.push(format!("session_output without a boolean done: {v}"));
                    return bad;
                };
                // `omitempty`: present means non-empty.
                if p.get("report")
                    .is_some_and(|r| r.as_str().is_none_or(str::is_empty))
                {
                    bad.push(format!("empty or non-string report: {v}"));
                }
                if p.get("metadata")
                    .is_some_and(|m| m.as_object().is_none_or(|m| m.is_empty()))
                {
                    bad.push(format!("empty or non-object metadata: {v}"));
                }
                if self.done.contains(&sid) {
                    bad.push(format!("session_output after done: {v}"));
                }
                if done {
                    // catpaw's final frame: no delta, no stage, no metadata.
                    if p["delta"] != "" || p["stage"] != "" || p.get("metadata").is_some() {
                        bad.push(format!("a final frame not shaped like catpaw's: {v}"));
                    }
                    self.errored.remove(&sid);
                    self.done.insert(sid);
                } else {
                    if !stage.is_some_and(|s| CATPAW_STAGES.contains(&s)) {
                        bad.push(format!("stage is not one of catpaw's: {v}"));
                    }
                    if p.get("report").is_some() {
                        bad.push(format!("a report before the final frame: {v}"));
                    }
                    if self.errored.contains(&sid) {
                        bad.push(format!("session_error not followed by done: {v}"));
                    }
                }
            }
            "session_error" => {
                let sid = p["session_id"].as_str().unwrap_or_default().to_owned();
                let keys: Vec<&str> = p
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                if keys.len() != 3
                    || p["error"].as_str().is_none()
                    || p["code"].as_str().is_none()
                    || sid.is_empty()
                {
                    bad.push(format!("session_error not shaped like catpaw's: {v}"));
                }
                if !p["code"]
                    .as_str()
                    .is_some_and(|c| CATPAW_ERROR_CODES.contains(&c))
                {
                    bad.push(format!("session_error code is not one of catpaw's: {v}"));
                }
                if self.done.contains(&sid) {
                    bad.push(format!("session_error after done: {v}"));
                }
                if !self.errored.insert(sid) {
                    bad.push(format!("two session_errors without a done between: {v}"));
                }
            }
            other => bad.push(format!("`{other}` is not a catpaw agent message: {v}")),
        }
        bad
    }
}

/// Stores a batch; under version 2 an event whose `(agent_id, seq)` is already stored is
/// ignored (the hub's unique key). Returns the highest seq of the batch.
fn store_alerts(shared: &Shared, agent_id: &str, version: u32, events: &Value) -> Option<u64> {
    let events = events.as_array()?;
    shared.update(|r| {
        let mut upto = None;
        for e in events {
            r.alerts_received += 1;
            let seq = e["seq"].as_u64();
            if version == 2 {
                let Some(seq) = seq else { continue };
                upto = upto.max(Some(seq));
                if !r.stored_keys.insert((agent_id.to_owned(), seq)) {
                    continue;
                }
            }
            r.alerts.push(StoredAlert {
                agent_id: agent_id.to_owned(),
                seq,
                alert_key: e["alert_key"].as_str().unwrap_or_default().to_owned(),
                event: e.clone(),
            });
        }
        upto
    })
}

/// Counts of stored alerts by key (for duplicate checks).
pub fn count_by_key(alerts: &[StoredAlert]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in alerts {
        *m.entry(a.alert_key.clone()).or_insert(0) += 1;
    }
    m
}
