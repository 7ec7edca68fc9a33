//! The agent endpoint, `GET /api/v1/agent/ws`: the hub's side of the link protocol
//! (PROTOCOL.md §2). Checks the agent's credential before upgrading, negotiates version 1 or
//! 2, answers `register` with `ack`, pings every 30 s, drops an agent silent for 90 s, stores
//! alert events (acknowledging them under version 2 only after they are committed, and never
//! past one it did not store — see [`crate::alert_acks`]), answers a frame it refuses (too
//! large, undecodable, not storable now) under version 2 with `ack {ok: false, reason}`
//! naming the frame, and hands session traffic to the relay.
//!
//! Every alert event is checked at this edge: undecodable events and events without a usable
//! key are refused one by one (counted), the rest of their batch is kept; an unbelievable
//! event time or an oversized description is replaced and flagged in `attrs`.

use crate::agent_conn::AgentConn;
use crate::alert_acks::AlertAcks;
use crate::hub::{Hub, HubEvent};
use crate::store::AgentRecord;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tether_proto::link::{
    Ack, AlertAck, AlertEvent, AlertEvents, Disconnect, HEADER_AGENT_ID, HEADER_AGENT_TOKEN,
    HEADER_PROTO_VERSION, LinkFrame, LinkMessage, MAX_LINK_FRAME_BYTES,
    MAX_SESSION_OUTPUT_FRAME_BYTES, probe_refused_frame, probe_session_output, refused,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The agent must register within this long after the upgrade.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for one agent.
const AGENT_QUEUE: usize = 256;
/// Longest one frame write to an agent may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry hint sent to agents when the hub is full.
const OVERLOAD_RETRY_SEC: u64 = 60;

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
                return Some(match LinkFrame::decode(t.as_str()) {
                    Ok(frame) => Ok(frame),
                    Err(e) => Err((probe_refused_frame(t.as_str()).0, e.to_string())),
                });
            }
        }
        None
    })
    .await;
    let (frame_id, reg) = match register {
        Ok(Some(Ok(LinkFrame {
            id,
            message: LinkMessage::Register(reg),
            ..
        }))) => (id, reg),
        Ok(Some(result)) => {
            // Answered, not dropped: the agent logs why (catpaw prints the ack's error).
            let (ref_id, why) = match result {
                Ok(other) => (
                    other.id,
                    format!(
                        "the first frame must be `register`, not `{}`",
                        other.message.kind()
                    ),
                ),
                Err((id, e)) => (id, format!("register refused: {e}")),
            };
            hub.metrics().frames_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(agent = %agent_id, "{why}; closing");
            let ack = LinkFrame {
                id: uuid::Uuid::now_v7().to_string(),
                ref_id: (!ref_id.is_empty()).then_some(ref_id),
                message: LinkMessage::Ack(Ack {
                    ok: false,
                    error: Some(why),
                    reason: (offered >= 2).then(|| refused::BAD_REQUEST.to_owned()),
                    ..Ack::default()
                }),
            };
            let _ = sink.send(Message::Text(ack.encode().into())).await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
        Ok(None) => {
            tracing::info!(agent = %agent_id, "agent closed the connection before registering");
            return;
        }
        Err(_) => {
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
    let conn = Arc::new(AgentConn::new(
        agent_id.clone(),
        reg.hostname.clone(),
        proto,
        cred.token_id.clone(),
        NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        tx,
        cancel.clone(),
    ));
    if let Some(old) = hub.register_agent(conn.clone()) {
        tracing::info!(agent = %agent_id, "agent connected again; replacing its previous connection");
        // Boxed, like every large future awaited here: see the reader loop.
        Box::pin(old.disconnect("replaced by a newer connection of the same agent", 5)).await;
    }
    hub.metrics().registrations.fetch_add(1, Ordering::Relaxed);
    hub.publish(HubEvent::Agent(record));
    tracing::info!(agent = %agent_id, host = %reg.hostname, proto, "agent registered");
    // Its sessions left open by an earlier connection: resumed, or closed if it lost them.
    // A task of its own: the agent's answers come through this connection's reader below.
    tokio::spawn({
        let hub = hub.clone();
        let conn = conn.clone();
        async move { hub.relay().agent_back(conn).await }
    });
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
    let mut acks = AlertAcks::new();
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
        let outcome = if text.len() > MAX_LINK_FRAME_BYTES {
            Box::pin(on_large_frame(&hub, &conn, &mut acks, text.as_str())).await
        } else {
            match LinkFrame::decode(text.as_str()) {
                // Boxed: this task lives as long as the connection, and its size is that of
                // its largest await point. Inline, `on_frame` (over 2 KiB) would make every
                // idle agent's task that much bigger; boxed, it costs one short-lived
                // allocation per frame.
                Ok(frame) => Box::pin(on_frame(&hub, &conn, &mut acks, frame)).await,
                Err(e) => {
                    hub.metrics().frames_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(agent = %agent_id, error = %e, "refused a bad frame");
                    let (id, _, _) = probe_refused_frame(text.as_str());
                    refuse(&conn, id, refused::BAD_REQUEST, e.to_string()).await;
                    Ok(())
                }
            }
        };
        if let Err(why) = outcome {
            break why;
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

/// Answers a refused frame under version 2: `ack {ok: false, reason, error}` with the frame's
/// id as `ref_id`, so the agent can split it, send it again, or count it as dropped. Version 1
/// has no such answer (catpaw deletes what it wrote); the refusal is logged and counted.
async fn refuse(conn: &AgentConn, frame_id: String, reason: &str, error: String) {
    if conn.proto < 2 || frame_id.is_empty() {
        return;
    }
    let frame = LinkFrame {
        id: uuid::Uuid::now_v7().to_string(),
        ref_id: Some(frame_id),
        message: LinkMessage::Ack(Ack {
            ok: false,
            error: Some(error),
            reason: Some(reason.to_owned()),
            ..Ack::default()
        }),
    };
    let _ = conn.send_text(frame.encode()).await;
}

/// A frame over [`MAX_LINK_FRAME_BYTES`]. A `session_output` is read up to
/// [`MAX_SESSION_OUTPUT_FRAME_BYTES`] (catpaw's final report comes whole in one); a larger one
/// ends its turn with an error saying so. Anything else is refused.
async fn on_large_frame(
    hub: &Hub,
    conn: &Arc<AgentConn>,
    acks: &mut AlertAcks,
    text: &str,
) -> Result<(), String> {
    let Some(probe) = probe_session_output(text) else {
        return refuse_oversized(hub, conn, acks, text).await;
    };
    if text.len() <= MAX_SESSION_OUTPUT_FRAME_BYTES {
        match LinkFrame::decode_with_limit(text, MAX_SESSION_OUTPUT_FRAME_BYTES) {
            Ok(frame) => return on_frame(hub, conn, acks, frame).await,
            Err(e) => {
                hub.metrics().frames_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(agent = %conn.agent_id, error = %e, "refused a bad frame");
                let (id, _, _) = probe_refused_frame(text);
                refuse(conn, id, refused::BAD_REQUEST, e.to_string()).await;
                return Ok(());
            }
        }
    }
    hub.metrics().frames_refused.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        agent = %conn.agent_id,
        session = %probe.session_id,
        size = text.len(),
        "refused an oversized session output"
    );
    let (id, _, _) = probe_refused_frame(text);
    refuse(
        conn,
        id,
        refused::TOO_LARGE,
        format!(
            "frame is {} bytes; the limit for session output is {MAX_SESSION_OUTPUT_FRAME_BYTES}",
            text.len()
        ),
    )
    .await;
    hub.relay()
        .on_output_too_large(conn, probe, text.len())
        .await;
    Ok(())
}

/// A frame over [`MAX_LINK_FRAME_BYTES`]: read only for its id and alert seqs, answered, and
/// its alerts kept out of every acknowledgement until they come again in smaller frames. An
/// event that is too large on its own is refused for good (the agent drops and counts it).
async fn refuse_oversized(
    hub: &Hub,
    conn: &Arc<AgentConn>,
    acks: &mut AlertAcks,
    text: &str,
) -> Result<(), String> {
    let m = hub.metrics();
    m.frames_refused.fetch_add(1, Ordering::Relaxed);
    let (id, kind, seqs) = probe_refused_frame(text);
    tracing::warn!(
        agent = %conn.agent_id,
        size = text.len(),
        kind = kind.as_deref().unwrap_or("?"),
        alerts = seqs.len(),
        "refused an oversized frame"
    );
    if kind.as_deref() == Some("alert_events") {
        m.alerts_received
            .fetch_add(seqs.len() as u64, Ordering::Relaxed);
        if seqs.len() == 1 {
            m.alerts_rejected.fetch_add(1, Ordering::Relaxed);
            acks.settled(seqs);
        } else if let Err(e) = acks.not_stored(seqs) {
            return Err(format!(
                "{} refused alerts were never sent again; closing",
                e.0
            ));
        }
    }
    refuse(
        conn,
        id,
        refused::TOO_LARGE,
        format!(
            "frame is {} bytes; the limit is {MAX_LINK_FRAME_BYTES}",
            text.len()
        ),
    )
    .await;
    Ok(())
}

/// A received batch after the edge checks, ready for the store.
#[derive(Debug, Default)]
pub struct PreparedAlerts {
    /// Events to store, made safe.
    pub events: Vec<AlertEvent>,
    /// Seqs of events refused for good (they count as settled: never coming back valid).
    pub refused_seqs: Vec<u64>,
    /// Why each refused event was refused (for the log).
    pub refusals: Vec<String>,
    /// What was changed in the kept events (for the log), one line per event changed.
    pub changes: Vec<String>,
}

/// The edge checks of a batch, with no I/O (fuzzed: `fuzz/fuzz_targets/hub_alerts.rs`):
/// undecodable events and events without a usable key are refused one by one, the rest of the
/// batch kept; an unbelievable time or an oversized description is replaced and flagged.
pub fn prepare_alerts(batch: AlertEvents, now_secs: i64) -> PreparedAlerts {
    let mut out = PreparedAlerts::default();
    for r in batch.rejected {
        out.refusals
            .push(format!("event {} (seq {:?}): {}", r.index, r.seq, r.error));
        out.refused_seqs.extend(r.seq);
    }
    for mut e in batch.events {
        if let Some(problem) = e.problem() {
            out.refusals
                .push(format!("event seq {:?}: {problem}", e.seq));
            out.refused_seqs.extend(e.seq);
            continue;
        }
        let changed = e.sanitize(now_secs);
        if !changed.is_empty() {
            out.changes.push(format!(
                "{} (seq {:?}): {}",
                e.alert_key,
                e.seq,
                changed.join("; ")
            ));
        }
        out.events.push(e);
    }
    out
}

/// Stores a batch of alert events: refuses the ones that cannot be stored (counted, the rest
/// kept), makes the others safe (flagged), commits, then acknowledges what the accounting
/// allows. A batch the store cannot take is answered so the agent sends it again.
async fn on_alerts(
    hub: &Hub,
    conn: &Arc<AgentConn>,
    acks: &mut AlertAcks,
    frame_id: String,
    batch: AlertEvents,
) -> Result<(), String> {
    let m = hub.metrics();
    let received = batch.events.len() + batch.rejected.len();
    m.alerts_received
        .fetch_add(received as u64, Ordering::Relaxed);
    let prepared = prepare_alerts(batch, tether_proto::time::now_secs());
    for r in &prepared.refusals {
        tracing::warn!(agent = %conn.agent_id, "refused an alert event: {r}");
    }
    for c in &prepared.changes {
        tracing::warn!(agent = %conn.agent_id, "alert event made safe: {c}");
    }
    m.alerts_sanitized
        .fetch_add(prepared.changes.len() as u64, Ordering::Relaxed);
    m.alerts_rejected
        .fetch_add(prepared.refusals.len() as u64, Ordering::Relaxed);
    let mut settled = prepared.refused_seqs;
    let seqs: Vec<u64> = prepared.events.iter().filter_map(|e| e.seq).collect();
    let id = conn.agent_id.clone();
    let host = conn.hostname.clone();
    let events = prepared.events;
    let now = hub.now_ms();
    let stored = if events.is_empty() {
        Ok(Default::default())
    } else {
        hub.store()
            .run(move |s| s.insert_alerts(&id, &host, &events, now))
            .await
    };
    match stored {
        Ok(result) => {
            m.alerts_stored
                .fetch_add(result.stored as u64, Ordering::Relaxed);
            m.alerts_duplicate
                .fetch_add(result.duplicates as u64, Ordering::Relaxed);
            settled.extend(seqs);
            // Acknowledged only now that they are committed, and only as far as nothing
            // refused lies below.
            if conn.proto >= 2
                && let Some(upto_seq) = acks.settled(settled)
            {
                let _ = conn
                    .send(LinkMessage::AlertAck(AlertAck { upto_seq }))
                    .await;
            }
            for change in result.changes {
                hub.publish(HubEvent::Alert(change));
            }
        }
        Err(e) => {
            // Not stored, so not acknowledged — not even by a later batch's ack.
            tracing::error!(agent = %conn.agent_id, error = %e, "cannot store alerts");
            if let Err(too_many) = acks.not_stored(seqs) {
                return Err(format!(
                    "{} alerts could not be stored; closing",
                    too_many.0
                ));
            }
            acks.settled(settled);
            refuse(
                conn,
                frame_id,
                refused::STORE_UNAVAILABLE,
                format!("the hub cannot store alerts right now: {e}"),
            )
            .await;
        }
    }
    Ok(())
}

async fn on_frame(
    hub: &Hub,
    conn: &Arc<AgentConn>,
    acks: &mut AlertAcks,
    frame: LinkFrame,
) -> Result<(), String> {
    match frame.message {
        LinkMessage::Heartbeat(hb) => {
            if let Some(d) = hb.dropped_alerts {
                conn.dropped_alerts.store(d, Ordering::Relaxed);
            }
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
            return on_alerts(hub, conn, acks, frame.id, batch).await;
        }
        LinkMessage::Ack(ack) => {
            if let Some(r) = &frame.ref_id {
                conn.resolve(r, ack);
            }
        }
        LinkMessage::SessionEvent(e) => hub.relay().on_event(conn, e).await,
        LinkMessage::SessionOutput(o) => hub.relay().on_output(conn, o).await,
        LinkMessage::SessionError(e) => hub.relay().on_error(conn, e).await,
        LinkMessage::DiagnoseReport(r) => {
            if let Some(change) = hub.relay().on_report(conn, r, hub.now_ms()).await {
                hub.publish(HubEvent::Alert(change));
            }
        }
        LinkMessage::Pong | LinkMessage::Register(_) => {}
        other => tracing::debug!(agent = %conn.agent_id, kind = other.kind(), "ignored"),
    }
    Ok(())
}
