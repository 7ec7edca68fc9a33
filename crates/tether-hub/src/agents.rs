//! The agent endpoint, `GET /api/v1/agent/ws`: the hub's side of the link protocol
//! (PROTOCOL.md §2). Checks the agent's credential before upgrading, negotiates version 1 or
//! 2, then drives the connection's [`HubLinkMachine`] (`crate::link`), which decides the
//! protocol: the register deadline, `ack` to `register` once the store recorded the agent,
//! pings every 30 s, dropping an agent silent for 90 s, refusals (`ack {ok: false, reason}`
//! under version 2), `alert_ack` only after a commit and never past an unstored seq. The
//! driver here does the I/O: socket reads, deadlines, store calls, the relay, the writer.
//!
//! Every alert event is checked at this edge: undecodable events and events without a usable
//! key are refused one by one (counted), the rest of their batch is kept; an unbelievable
//! event time or an oversized description is replaced and flagged in `attrs`.

use crate::agent_conn::AgentConn;
use crate::hub::{Hub, HubEvent, Metrics};
use crate::link::{HubLinkMachine, Input, Limits, Output, Timer};
use crate::store::AgentRecord;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tether_proto::link::{
    AlertEvent, AlertEvents, HEADER_AGENT_ID, HEADER_AGENT_TOKEN, HEADER_PROTO_VERSION, LinkFrame,
    LinkMessage, MAX_LINK_FRAME_BYTES, MAX_SESSION_OUTPUT_FRAME_BYTES, OutputProbe, Register,
    probe_refused_frame, probe_session_output,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
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

/// How the connection ended, for the driver's last steps.
enum End {
    /// The machine closed it: a WebSocket Close goes out.
    Close(String),
    /// It ended by itself (the agent went, a read or write failed, the hub cancelled it).
    Gone(String),
}

/// The machine's timers, as deadlines.
#[derive(Default)]
struct Timers {
    at: [Option<Instant>; 3],
}

const TIMERS: [Timer; 3] = [Timer::Register, Timer::Ping, Timer::Read];

impl Timers {
    fn set(&mut self, timer: Timer, after: Duration) {
        let i = match timer {
            Timer::Register => 0,
            Timer::Ping => 1,
            Timer::Read => 2,
        };
        self.at[i] = Some(Instant::now() + after);
    }

    /// Waits for the soonest deadline and clears it (a timer fires once per setting).
    /// Cancel-safe: nothing changes until it returns.
    async fn next(&mut self) -> Timer {
        let soonest = (0..3).filter_map(|i| self.at[i].map(|at| (at, i))).min();
        let Some((at, i)) = soonest else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(at).await;
        self.at[i] = None;
        TIMERS[i]
    }
}

/// What reading one message gave.
enum Read {
    Input(Input),
    /// A `session_output` too large to decode: refused, then the relay ends its turn.
    OutputTooLarge(Input, OutputProbe, usize),
    End(String),
}

/// The driver of one agent's [`HubLinkMachine`]: it turns socket reads and deadlines into
/// the machine's inputs and carries out its outputs (frames, store calls, the relay,
/// closing). Everything the link protocol decides is in the machine.
struct Link {
    hub: Hub,
    agent_id: String,
    offered: u32,
    token_id: Option<String>,
    /// The socket's write half until the agent is registered; then the writer task's.
    sink: Option<SplitSink<WebSocket, Message>>,
    conn: Option<Arc<AgentConn>>,
    writer: Option<tokio::task::JoinHandle<()>>,
    cancel: CancellationToken,
    timers: Timers,
    /// What the store recorded at the registration, and the agent's hostname.
    record: Option<(AgentRecord, String)>,
    /// Checked before the registration is recorded, acted on once it is (`disconnect`).
    overloaded: bool,
}

async fn serve_agent(
    hub: Hub,
    socket: WebSocket,
    agent_id: String,
    offered: u32,
    cred: Credential,
) {
    let (sink, mut stream) = socket.split();
    let limits = Limits {
        register: REGISTER_TIMEOUT,
        ping: hub.config().ping_interval,
        read: hub.config().read_deadline,
    };
    let (mut machine, first) = HubLinkMachine::new(offered, limits);
    let mut link = Link {
        hub,
        agent_id,
        offered,
        token_id: cred.token_id,
        sink: Some(sink),
        conn: None,
        writer: None,
        cancel: CancellationToken::new(),
        timers: Timers::default(),
        record: None,
        overloaded: false,
    };
    let mut ended = Box::pin(link.carry_out(&mut machine, first)).await;
    while ended.is_none() {
        // Deadlines before reads: an agent that never stops sending still gets its pings.
        // (A frame waiting while the read deadline passes can only be one the hub had not
        // come back for yet, so it is never there in time to count.)
        let read = tokio::select! {
            biased;
            _ = link.cancel.cancelled() => Read::End("closed by the hub".to_owned()),
            t = link.timers.next() => Read::Input(Input::Timer(t)),
            m = stream.next() => Box::pin(link.read(machine.is_open(), m, &mut stream)).await,
        };
        // Boxed, like every large future awaited here: this task lives as long as the
        // connection, and its size is that of its largest await point; boxed, a step costs
        // one short-lived allocation instead of making every idle agent's task bigger.
        ended = match read {
            Read::Input(input) => Box::pin(link.step(&mut machine, input)).await,
            Read::OutputTooLarge(input, probe, size) => {
                let ended = Box::pin(link.step(&mut machine, input)).await;
                if ended.is_none()
                    && let Some(conn) = &link.conn
                {
                    Box::pin(link.hub.relay().on_output_too_large(conn, probe, size)).await;
                }
                ended
            }
            Read::End(reason) => {
                machine.handle(Input::Closed);
                Some(End::Gone(reason))
            }
        };
    }
    if let Some(end) = ended {
        Box::pin(link.finish(end)).await;
    }
}

impl Link {
    /// One message from the agent as the machine's input.
    async fn read(
        &self,
        open: bool,
        msg: Option<Result<Message, axum::Error>>,
        stream: &mut SplitStream<WebSocket>,
    ) -> Read {
        let text = match msg {
            None => return Read::End("the agent closed the connection".to_owned()),
            Some(Err(e)) => return Read::End(format!("read error: {e}")),
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) => {
                // Reading on is what sends the answer (queued when the Close was read; a
                // Close sent now would be refused); the stream ends right after.
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
                return Read::End("the agent closed the connection".to_owned());
            }
            Some(Ok(_)) => return Read::Input(Input::Heard),
        };
        let text = text.as_str();
        let m = self.hub.metrics();
        if !open {
            // The first frame, which must be `register`.
            return Read::Input(match LinkFrame::decode(text) {
                Ok(frame) => {
                    if !matches!(frame.message, LinkMessage::Register(_)) {
                        m.frames_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Input::Frame(Box::new(frame))
                }
                Err(e) => {
                    m.frames_refused.fetch_add(1, Ordering::Relaxed);
                    Input::BadFrame {
                        id: probe_refused_frame(text).0,
                        error: e.to_string(),
                    }
                }
            });
        }
        m.frames_in.fetch_add(1, Ordering::Relaxed);
        if text.len() <= MAX_LINK_FRAME_BYTES {
            return Read::Input(self.decode(text, MAX_LINK_FRAME_BYTES));
        }
        // Over the limit. A `session_output` is read up to MAX_SESSION_OUTPUT_FRAME_BYTES
        // (catpaw's final report comes whole in one); a larger one ends its turn with an error
        // saying so. Anything else is refused, read only for its id and alert seqs.
        let probe = probe_session_output(text);
        if probe.is_some() && text.len() <= MAX_SESSION_OUTPUT_FRAME_BYTES {
            return Read::Input(self.decode(text, MAX_SESSION_OUTPUT_FRAME_BYTES));
        }
        m.frames_refused.fetch_add(1, Ordering::Relaxed);
        let (id, kind, seqs) = probe_refused_frame(text);
        if let Some(probe) = probe {
            tracing::warn!(
                agent = %self.agent_id,
                session = %probe.session_id,
                size = text.len(),
                "refused an oversized session output"
            );
            let error = format!(
                "frame is {} bytes; the limit for session output is {MAX_SESSION_OUTPUT_FRAME_BYTES}",
                text.len()
            );
            let input = Input::TooLarge {
                id,
                error,
                alert_seqs: None,
            };
            return Read::OutputTooLarge(input, probe, text.len());
        }
        tracing::warn!(
            agent = %self.agent_id,
            size = text.len(),
            kind = kind.as_deref().unwrap_or("?"),
            alerts = seqs.len(),
            "refused an oversized frame"
        );
        let alerts = kind.as_deref() == Some("alert_events");
        if alerts {
            m.alerts_received
                .fetch_add(seqs.len() as u64, Ordering::Relaxed);
            if seqs.len() == 1 {
                m.alerts_rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
        Read::Input(Input::TooLarge {
            id,
            error: format!(
                "frame is {} bytes; the limit is {MAX_LINK_FRAME_BYTES}",
                text.len()
            ),
            alert_seqs: alerts.then_some(seqs),
        })
    }

    fn decode(&self, text: &str, limit: usize) -> Input {
        match LinkFrame::decode_with_limit(text, limit) {
            Ok(frame) => Input::Frame(Box::new(frame)),
            Err(e) => {
                self.hub
                    .metrics()
                    .frames_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(agent = %self.agent_id, error = %e, "refused a bad frame");
                Input::BadFrame {
                    id: probe_refused_frame(text).0,
                    error: e.to_string(),
                }
            }
        }
    }

    /// Feeds the machine one input and carries out what follows.
    async fn step(&mut self, machine: &mut HubLinkMachine, input: Input) -> Option<End> {
        let out = machine.handle(input);
        self.carry_out(machine, out).await
    }

    /// Carries out the machine's outputs in order; an output that reports back (a store
    /// call) has what the machine answers carried out before the rest.
    async fn carry_out(&mut self, machine: &mut HubLinkMachine, out: Vec<Output>) -> Option<End> {
        let mut queue: VecDeque<Output> = out.into();
        while let Some(output) = queue.pop_front() {
            let input = match output {
                Output::Send(frame) => {
                    if let Err(end) = self.send(frame).await {
                        machine.handle(Input::Closed);
                        return Some(end);
                    }
                    continue;
                }
                Output::SetTimer(timer, after) => {
                    self.timers.set(timer, after);
                    continue;
                }
                Output::Record(reg) => self.record(*reg).await,
                // Only open links store alerts, and an open link has joined the hub.
                Output::StoreAlerts { frame_id, batch } => match self.conn.clone() {
                    Some(conn) => store_alerts(&self.hub, &conn, frame_id, batch).await,
                    None => continue,
                },
                Output::Deliver(frame) => {
                    if let Some(conn) = self.conn.clone() {
                        on_frame(&self.hub, &conn, *frame).await;
                    }
                    continue;
                }
                Output::Up { version } => match self.up(version).await {
                    Some(input) => input,
                    None => continue,
                },
                Output::Close { reason } => return Some(End::Close(reason)),
            };
            for o in machine.handle(input).into_iter().rev() {
                queue.push_front(o);
            }
        }
        None
    }

    /// A frame to the agent: queued for the writer once registered, written directly before.
    async fn send(&mut self, frame: LinkFrame) -> Result<(), End> {
        if let Some(conn) = &self.conn {
            let _ = conn.send_text(frame.encode()).await;
            return Ok(());
        }
        let Some(sink) = &mut self.sink else {
            return Ok(());
        };
        let ack = matches!(&frame.message, LinkMessage::Ack(a) if a.ok);
        match sink.send(Message::Text(frame.encode().into())).await {
            // Registered but not told so: there is nothing more to say to this agent.
            Err(_) if ack => Err(End::Gone("cannot write to the agent".to_owned())),
            _ => Ok(()),
        }
    }

    /// Records the registering agent (and binds its credential).
    async fn record(&mut self, reg: Register) -> Input {
        // `max_agents` bounds this process: an agent connected here already (reconnecting)
        // replaces itself; one held by another replica would be one more here.
        self.overloaded = self.hub.connected_agents() >= self.hub.config().max_agents
            && self.hub.agent(&self.agent_id).is_none();
        let proto = self.offered;
        let hostname = reg.hostname.clone();
        let recorded = self
            .hub
            .store()
            .run({
                let agent_id = self.agent_id.clone();
                let token = self.token_id.clone();
                move |s| {
                    if let Some(t) = &token {
                        s.bind_token(t, &agent_id)?;
                    }
                    s.upsert_agent(&agent_id, &reg, proto, token.as_deref())
                }
            })
            .await;
        match recorded {
            Ok(record) => {
                // Only the hostname is kept: the rest of the register payload (labels,
                // plugins, …) is not held for the connection's life.
                self.record = Some((record, hostname));
                Input::Recorded(Ok(()))
            }
            Err(e) => {
                tracing::error!(agent = %self.agent_id, error = %e, "cannot record agent");
                Input::Recorded(Err(e.to_string()))
            }
        }
    }

    /// Registered and acknowledged: joins the hub (or is sent away when the hub is full).
    async fn up(&mut self, proto: u32) -> Option<Input> {
        if self.overloaded {
            return Some(Input::Disconnect {
                reason: "the hub is at its agent limit".into(),
                retry_after_sec: OVERLOAD_RETRY_SEC,
            });
        }
        let (record, hostname) = self.record.take()?;
        let sink = self.sink.take()?;
        let hub = &self.hub;
        let agent_id = &self.agent_id;
        let (tx, rx) = mpsc::channel::<String>(AGENT_QUEUE);
        let conn = Arc::new(AgentConn::new(
            agent_id.clone(),
            hostname,
            proto,
            self.token_id.clone(),
            NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            tx,
            self.cancel.clone(),
        ));
        self.writer = Some(tokio::spawn(write_frames(
            sink,
            rx,
            self.cancel.clone(),
            hub.metrics_arc(),
        )));
        self.conn = Some(conn.clone());
        if let Some(old) = hub.register_agent(conn.clone()) {
            tracing::info!(agent = %agent_id, "agent connected again; replacing its previous connection");
            Box::pin(old.disconnect("replaced by a newer connection of the same agent", 5)).await;
        }
        // Registered while the hub began to stop: the stop's round of `disconnect`s may have
        // listed the agents before this one joined (the flag is set before that listing, so
        // one of the two tells it).
        if hub.is_shutting_down() {
            return Some(Input::Disconnect {
                reason: crate::hub::SHUTDOWN_REASON.into(),
                retry_after_sec: crate::hub::SHUTDOWN_RETRY_SEC,
            });
        }
        hub.metrics().registrations.fetch_add(1, Ordering::Relaxed);
        hub.publish(HubEvent::Agent(record));
        tracing::info!(agent = %agent_id, host = %conn.hostname, proto, "agent registered");
        // Its sessions left open by an earlier connection: resumed, or closed if it lost them.
        // A task of its own: the agent's answers come through this connection's reader.
        tokio::spawn({
            let hub = hub.clone();
            async move { hub.relay().agent_back(conn).await }
        });
        None
    }

    async fn finish(mut self, end: End) {
        let agent_id = &self.agent_id;
        let Some(conn) = self.conn.take() else {
            // Never joined the hub.
            let reason = match end {
                End::Close(reason) => {
                    if let Some(sink) = &mut self.sink {
                        let _ = sink.send(Message::Close(None)).await;
                    }
                    reason
                }
                End::Gone(reason) => reason,
            };
            if self.overloaded && self.record.is_some() {
                let _ = self
                    .hub
                    .store()
                    .run({
                        let id = agent_id.clone();
                        move |s| s.set_connected(&id, false)
                    })
                    .await;
            }
            tracing::info!(agent = %agent_id, reason = %reason, "agent not registered; closing");
            return;
        };
        let (End::Close(reason) | End::Gone(reason)) = end;
        // The writer drains what is queued, then sends the Close.
        self.cancel.cancel();
        if let Some(writer) = self.writer.take() {
            let _ = writer.await;
        }
        let hub = &self.hub;
        if hub.unregister_agent(agent_id, conn.conn_id) {
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
        Box::pin(hub.relay().agent_gone(agent_id, conn.conn_id, &reason)).await;
        tracing::info!(agent = %agent_id, reason = %reason, "agent disconnected");
    }
}

/// The writer of a registered agent's connection: queued frames, each write bounded; when
/// the connection ends, what is still queued (a `disconnect`, typically), then a Close.
async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<String>,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
) {
    loop {
        let text = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            t = rx.recv() => match t { Some(t) => t, None => break },
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
                cancel.cancel();
                break;
            }
        }
    }
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
/// kept), makes the others safe (flagged) and commits; the outcome goes back to the machine,
/// which acknowledges what the accounting allows, or answers `store_unavailable`.
async fn store_alerts(
    hub: &Hub,
    conn: &Arc<AgentConn>,
    frame_id: String,
    batch: AlertEvents,
) -> Input {
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
    let result = match stored {
        Ok(result) => {
            m.alerts_stored
                .fetch_add(result.stored as u64, Ordering::Relaxed);
            m.alerts_duplicate
                .fetch_add(result.duplicates as u64, Ordering::Relaxed);
            for change in result.changes {
                hub.publish(HubEvent::Alert(change));
            }
            Ok(())
        }
        Err(e) => {
            // Refused (`store_unavailable`) and kept by the agent for another try.
            m.frames_refused.fetch_add(1, Ordering::Relaxed);
            tracing::error!(agent = %conn.agent_id, error = %e, "cannot store alerts");
            Err(e.to_string())
        }
    };
    Input::AlertsStored {
        frame_id,
        seqs,
        refused: prepared.refused_seqs,
        result,
    }
}

/// A frame the machine hands to the hub.
async fn on_frame(hub: &Hub, conn: &Arc<AgentConn>, frame: LinkFrame) {
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
        other => tracing::debug!(agent = %conn.agent_id, kind = other.kind(), "ignored"),
    }
}
