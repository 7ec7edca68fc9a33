//! The agent endpoint, `GET /api/v1/agent/ws`: the hub's side of the link protocol
//! (PROTOCOL.md §2). Checks the agent's credential before upgrading, negotiates version 1 or
//! 2, answers `register` with `ack`, pings every 30 s, drops an agent silent for 90 s, stores
//! alert events (acknowledging them under version 2 only after they are committed), and hands
//! session traffic to the relay.

use crate::hub::{Hub, HubEvent};
use crate::store::AgentRecord;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tether_proto::link::{
    Ack, AlertAck, Disconnect, HEADER_AGENT_ID, HEADER_AGENT_TOKEN, HEADER_PROTO_VERSION,
    LinkFrame, LinkMessage, MAX_LINK_FRAME_BYTES,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The agent must register within this long after the upgrade.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for one agent.
const AGENT_QUEUE: usize = 256;
/// Longest one frame write to an agent may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry hint sent to agents when the hub is full.
const OVERLOAD_RETRY_SEC: u64 = 60;

/// A connected agent, as the rest of the hub talks to it.
pub struct AgentConn {
    pub agent_id: String,
    pub hostname: String,
    pub proto: u32,
    pub(crate) conn_id: u64,
    tx: mpsc::Sender<String>,
    cancel: CancellationToken,
    /// Frames waiting for an `ack` by `ref_id`.
    pending: std::sync::Mutex<HashMap<String, oneshot::Sender<Ack>>>,
}

impl AgentConn {
    /// Queues a frame; waits only while the connection lives.
    pub async fn send(&self, message: LinkMessage) -> Result<String, String> {
        let id = uuid::Uuid::now_v7().to_string();
        let text = LinkFrame::new(id.clone(), message).encode();
        self.send_text(text).await?;
        Ok(id)
    }

    async fn send_text(&self, text: String) -> Result<(), String> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err("the agent disconnected".into()),
            r = self.tx.send(text) => r.map_err(|_| "the agent disconnected".to_owned()),
        }
    }

    /// Sends a frame and waits (bounded) for the agent's `ack` to it.
    pub async fn request(&self, message: LinkMessage, timeout: Duration) -> Result<Ack, String> {
        let id = uuid::Uuid::now_v7().to_string();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id.clone(), tx);
        }
        let text = LinkFrame::new(id.clone(), message).encode();
        if let Err(e) = self.send_text(text).await {
            self.forget(&id);
            return Err(e);
        }
        let result = tokio::select! {
            _ = self.cancel.cancelled() => Err("the agent disconnected".to_owned()),
            r = tokio::time::timeout(timeout, rx) => match r {
                Ok(Ok(ack)) => Ok(ack),
                Ok(Err(_)) => Err("the agent disconnected".to_owned()),
                Err(_) => Err(format!("the agent did not answer within {} s", timeout.as_secs())),
            },
        };
        self.forget(&id);
        result
    }

    fn forget(&self, id: &str) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(id);
        }
    }

    fn resolve(&self, ref_id: &str, ack: Ack) -> bool {
        let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(ref_id));
        match waiter {
            Some(w) => {
                let _ = w.send(ack);
                true
            }
            None => false,
        }
    }

    /// Asks the agent to go away for `retry_after_sec`, then closes.
    pub async fn disconnect(&self, reason: &str, retry_after_sec: u64) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.send(LinkMessage::Disconnect(Disconnect {
                reason: reason.to_owned(),
                retry_after_sec,
            })),
        )
        .await;
        // Give the writer a moment to flush the disconnect before the socket goes.
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel.cancel();
        });
    }

    pub fn is_connected(&self) -> bool {
        !self.cancel.is_cancelled()
    }
}

/// What the agent's credential was.
struct Credential {
    token_id: Option<String>,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

fn text_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": message}))).into_response()
}

/// `GET /api/v1/agent/ws`
pub async fn agent_ws(
    State(hub): State<Hub>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let Some(token) = header(HEADER_AGENT_TOKEN) else {
        hub.metrics().auth_failures.fetch_add(1, Ordering::Relaxed);
        return text_error(StatusCode::UNAUTHORIZED, "missing X-Agent-Token");
    };
    let Some(agent_id) = header(HEADER_AGENT_ID).map(str::to_owned) else {
        return text_error(StatusCode::BAD_REQUEST, "missing X-Agent-ID");
    };
    if uuid::Uuid::parse_str(&agent_id).is_err() {
        return text_error(StatusCode::BAD_REQUEST, "X-Agent-ID is not a UUID");
    }
    let offered = match header(HEADER_PROTO_VERSION) {
        Some("2") => 2,
        _ => 1,
    };
    let credential = match hub.check_agent_token(token, &agent_id).await {
        Ok(c) => c,
        Err((status, message)) => {
            hub.metrics().auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(agent = %agent_id, "agent refused: {message}");
            return text_error(status, &message);
        }
    };
    if hub.is_shutting_down() {
        return text_error(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down");
    }
    let credential = Credential {
        token_id: credential,
    };
    // Thousands of agents each hold a socket: start with small buffers (tungstenite's
    // defaults are 128 KiB each way) and let them grow only for large frames.
    ws.max_message_size(16 << 20)
        .max_frame_size(16 << 20)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve_agent(hub, socket, agent_id, offered, credential))
}

async fn serve_agent(
    hub: Hub,
    socket: WebSocket,
    agent_id: String,
    offered: u32,
    cred: Credential,
) {
    let (mut sink, mut stream) = socket.split();
    // The first frame must be `register`.
    let register = tokio::time::timeout(REGISTER_TIMEOUT, async {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Text(t) = msg {
                return LinkFrame::decode(t.as_str()).ok();
            }
        }
        None
    })
    .await;
    let (frame_id, reg) = match register {
        Ok(Some(LinkFrame {
            id,
            message: LinkMessage::Register(reg),
            ..
        })) => (id, reg),
        _ => {
            tracing::info!(agent = %agent_id, "agent did not register in time; closing");
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let overloaded =
        hub.connected_agents() >= hub.config().max_agents && !hub.is_connected(&agent_id);
    let proto = offered;
    let record = match hub
        .store()
        .run({
            let agent_id = agent_id.clone();
            let reg = reg.clone();
            let token = cred.token_id.clone();
            move |s| {
                if let Some(t) = &token {
                    s.bind_token(t, &agent_id)?;
                }
                s.upsert_agent(&agent_id, &reg, proto, token.as_deref())
            }
        })
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(agent = %agent_id, error = %e, "cannot record agent");
            let ack = LinkFrame {
                id: uuid::Uuid::now_v7().to_string(),
                ref_id: Some(frame_id),
                message: LinkMessage::Ack(Ack {
                    ok: false,
                    error: Some("the hub cannot record this agent right now".into()),
                    ..Ack::default()
                }),
            };
            let _ = sink.send(Message::Text(ack.encode().into())).await;
            return;
        }
    };
    let ack = LinkFrame {
        id: uuid::Uuid::now_v7().to_string(),
        ref_id: Some(frame_id),
        message: LinkMessage::Ack(Ack {
            ok: true,
            proto: (proto >= 2).then_some(2),
            ..Ack::default()
        }),
    };
    if sink.send(Message::Text(ack.encode().into())).await.is_err() {
        return;
    }
    if overloaded {
        let bye = LinkFrame::new(
            uuid::Uuid::now_v7().to_string(),
            LinkMessage::Disconnect(Disconnect {
                reason: "the hub is at its agent limit".into(),
                retry_after_sec: OVERLOAD_RETRY_SEC,
            }),
        );
        let _ = sink.send(Message::Text(bye.encode().into())).await;
        let _ = sink.send(Message::Close(None)).await;
        let _ = hub
            .store()
            .run({
                let id = agent_id.clone();
                move |s| s.set_connected(&id, false)
            })
            .await;
        return;
    }

    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel::<String>(AGENT_QUEUE);
    let conn = Arc::new(AgentConn {
        agent_id: agent_id.clone(),
        hostname: reg.hostname.clone(),
        proto,
        conn_id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        tx,
        cancel: cancel.clone(),
        pending: std::sync::Mutex::new(HashMap::new()),
    });
    if let Some(old) = hub.register_agent(conn.clone()) {
        tracing::info!(agent = %agent_id, "agent connected again; replacing its previous connection");
        // Boxed, like every large future awaited here: see the reader loop.
        Box::pin(old.disconnect("replaced by a newer connection of the same agent", 5)).await;
    }
    hub.metrics().registrations.fetch_add(1, Ordering::Relaxed);
    hub.publish(HubEvent::Agent(record));
    tracing::info!(agent = %agent_id, host = %reg.hostname, proto, "agent registered");
    // From here on only the hostname is needed (`conn.hostname`); free the rest of the
    // register payload (labels, plugins, …) rather than hold it for the connection's life.
    drop(reg);

    // Writer: queued frames, and a ping every ping_interval.
    let ping_every = hub.config().ping_interval;
    let wcancel = cancel.clone();
    let metrics = hub.metrics_arc();
    let writer = tokio::spawn(async move {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        loop {
            let text = tokio::select! {
                biased;
                _ = wcancel.cancelled() => break,
                t = rx.recv() => match t { Some(t) => t, None => break },
                _ = ping.tick() => LinkFrame::new(uuid::Uuid::now_v7().to_string(), LinkMessage::Ping).encode(),
            };
            match tokio::time::timeout(
                WRITE_TIMEOUT,
                sink.send(Message::Text(Utf8Bytes::from(text))),
            )
            .await
            {
                Ok(Ok(())) => {
                    metrics.frames_out.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    wcancel.cancel();
                    break;
                }
            }
        }
        // Drain what is queued (a disconnect, typically), then say goodbye.
        while let Ok(text) = rx.try_recv() {
            if tokio::time::timeout(
                Duration::from_secs(1),
                sink.send(Message::Text(text.into())),
            )
            .await
            .is_err()
            {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
    });

    // Reader, with the read deadline.
    let deadline = hub.config().read_deadline;
    let reason = loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break "closed by the hub".to_owned(),
            n = tokio::time::timeout(deadline, stream.next()) => n,
        };
        let msg = match next {
            Err(_) => break format!("nothing from the agent for {} s", deadline.as_secs()),
            Ok(None) => break "the agent closed the connection".to_owned(),
            Ok(Some(Err(e))) => break format!("read error: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => {
                // Reading on is what sends the answer (queued when the Close was read; a
                // Close sent now would be refused); the stream ends right after.
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
                break "the agent closed the connection".to_owned();
            }
            _ => continue,
        };
        hub.metrics().frames_in.fetch_add(1, Ordering::Relaxed);
        if text.len() > MAX_LINK_FRAME_BYTES {
            tracing::warn!(agent = %agent_id, size = text.len(), "refused an oversized frame");
            continue;
        }
        match LinkFrame::decode(text.as_str()) {
            // Boxed: this task lives as long as the connection, and its size is that of its
            // largest await point. Inline, `on_frame` (over 2 KiB) would make every idle
            // agent's task that much bigger; boxed, it costs one short-lived allocation per
            // frame.
            Ok(frame) => Box::pin(on_frame(&hub, &conn, &conn.hostname, frame)).await,
            Err(e) => tracing::warn!(agent = %agent_id, error = %e, "ignored a bad frame"),
        }
    };
    cancel.cancel();
    let _ = writer.await;
    if hub.unregister_agent(&agent_id, conn.conn_id) {
        let record: Option<AgentRecord> = hub
            .store()
            .run({
                let id = agent_id.clone();
                move |s| {
                    s.set_connected(&id, false)?;
                    s.get_agent(&id)
                }
            })
            .await
            .ok()
            .flatten();
        if let Some(r) = record {
            hub.publish(HubEvent::Agent(r));
        }
    }
    // Whether it went away or was replaced, the sessions this connection ran are over.
    Box::pin(hub.relay().agent_gone(&agent_id, conn.conn_id, &reason)).await;
    tracing::info!(agent = %agent_id, reason = %reason, "agent disconnected");
}

async fn on_frame(hub: &Hub, conn: &Arc<AgentConn>, hostname: &str, frame: LinkFrame) {
    match frame.message {
        LinkMessage::Heartbeat(hb) => {
            let id = conn.agent_id.clone();
            let result = hub
                .store()
                .run(move |s| {
                    s.record_heartbeat(&id, &hb)?;
                    s.get_agent(&id)
                })
                .await;
            if let Ok(Some(record)) = result {
                hub.publish(HubEvent::Agent(record));
            }
        }
        LinkMessage::AlertEvents(batch) => {
            let upto = batch.events.iter().filter_map(|e| e.seq).max();
            let id = conn.agent_id.clone();
            let host = hostname.to_owned();
            let n = batch.events.len();
            let stored = hub
                .store()
                .run(move |s| s.insert_alerts(&id, &host, &batch.events))
                .await;
            match stored {
                Ok(result) => {
                    let m = hub.metrics();
                    m.alerts_received.fetch_add(n as u64, Ordering::Relaxed);
                    m.alerts_stored
                        .fetch_add(result.rows.len() as u64, Ordering::Relaxed);
                    m.alerts_duplicate
                        .fetch_add(result.duplicates as u64, Ordering::Relaxed);
                    // Acknowledged only now that they are committed.
                    if conn.proto >= 2
                        && let Some(upto_seq) = upto
                    {
                        let _ = conn
                            .send(LinkMessage::AlertAck(AlertAck { upto_seq }))
                            .await;
                    }
                    for row in result.rows {
                        hub.publish(HubEvent::Alert(row));
                    }
                }
                Err(e) => {
                    // Not stored, so not acknowledged: a version-2 agent sends them again.
                    tracing::error!(agent = %conn.agent_id, error = %e, "cannot store alerts");
                }
            }
        }
        LinkMessage::Ack(ack) => {
            if let Some(r) = &frame.ref_id {
                conn.resolve(r, ack);
            }
        }
        LinkMessage::SessionEvent(e) => hub.relay().on_event(conn, e).await,
        LinkMessage::SessionOutput(o) => hub.relay().on_output(conn, o).await,
        LinkMessage::SessionError(e) => hub.relay().on_error(conn, e).await,
        LinkMessage::DiagnoseReport(r) => hub.relay().on_report(conn, r).await,
        LinkMessage::Pong | LinkMessage::Register(_) => {}
        other => tracing::debug!(agent = %conn.agent_id, kind = other.kind(), "ignored"),
    }
}
