//! One simulated version-2 agent: a raw tokio-tungstenite client on one task.
//!
//! It dials the hub's agent endpoint with its own `X-Agent-ID` and `X-Proto-Version: 2`,
//! sends `register`, waits (10 s, as real agents do) for `ack {ok, proto: 2}`, then, as the
//! real agent does, heartbeats at once and every `heartbeat` after that, answers `ping` with `pong`, and idles. When the
//! coordinator moves to [`Phase::Alerts`] it sends its alert events (increasing `seq` from 1,
//! up to [`MAX_ALERT_BATCH`] per `alert_events` frame), one frame at a time, timing each from
//! the send to the `alert_ack` whose `upto_seq` covers the frame. At [`Phase::Close`] it
//! closes.
//!
//! Cheap by design, so that 10 000 of them fit one process on a 2-core machine beside the hub:
//! one task per agent, the socket not split, 4 KiB read buffer, no write buffering, and only
//! the next alert frame encoded ahead of time.
//!
//! It also answers hub sessions as a version-2 agent does (PROTOCOL.md §2, docs/protocol.md):
//! `session_start` is acked `ok` and opens the session with `session_state idle` (seq 1);
//! `session_attach`/`session_detach` are acked and publish `client_attached`/
//! `client_detached`; each event is a `session_event` carrying a client-protocol event with
//! the session's next `seq`. At [`Phase::Events`] an agent holding sessions plays one turn in
//! each (`turn_started`, `session_state running`, text deltas, `turn_ended`,
//! `session_state idle`), one event per session every `event_interval`, and reports when it
//! sent each event, for the operator's side to time its arrival.

use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tether_proto::link::{
    AGENT_WS_PATH, Ack, AlertEvent, AlertEvents, AlertStatus, HEADER_AGENT_ID, HEADER_AGENT_TOKEN,
    HEADER_PROTO_VERSION, Heartbeat, LinkFrame, LinkMessage, MAX_ALERT_BATCH, MAX_LINK_FRAME_BYTES,
    Register, SessionEvent,
};
use tether_proto::{
    Class, ClientId, ClientInfo, Event, EventBody, SessionId, SessionState, StopReason, TurnId,
};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws = WebSocketStream<TcpStream>;

/// TCP connect plus WebSocket upgrade, per attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect attempts per agent (a refused credential is not retried).
const CONNECT_ATTEMPTS: u32 = 3;
/// How long an agent waits for the `ack` to its `register` (PROTOCOL.md §2).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// One frame write.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The client's read buffer (hub → agent frames are small).
const READ_BUFFER: usize = 4 * 1024;

/// Where the run is; agents move on when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Connect,
    Alerts,
    /// After the alerts: the operator opens sessions (agents answer them while idle).
    Sessions,
    /// Agents holding sessions play their turns.
    Events,
    Close,
}

/// Why an agent failed; the report counts failures by [`Failure::kind`].
#[derive(Debug)]
pub struct Failure {
    pub kind: &'static str,
    pub detail: String,
}

impl Failure {
    fn new(kind: &'static str, detail: impl std::fmt::Display) -> Failure {
        Failure {
            kind,
            detail: detail.to_string(),
        }
    }
}

/// What an agent tells the coordinator: one of the first two, then (if registered) one of
/// `AlertsDone` / `AlertsFailed`, then possibly `Lost`.
pub enum Report {
    Registered {
        index: usize,
        agent_id: String,
        dialed: Instant,
        acked: Instant,
        retries: u32,
    },
    RegisterFailed(Failure),
    AlertsDone {
        first_sent: Instant,
        last_acked: Instant,
        alerts: u64,
        /// Send to `alert_ack`, per `alert_events` frame, in microseconds.
        latencies_us: Vec<u32>,
    },
    AlertsFailed(Failure),
    /// An agent holding sessions sent its turns: each event's session, seq and send time.
    EventsDone {
        index: usize,
        sent: Vec<(String, u64, Instant)>,
    },
    /// An agent holding sessions failed while sending its turns.
    EventsFailed {
        index: usize,
        failure: Failure,
    },
    /// The connection failed after the alerts, before the coordinator closed it.
    Lost(Failure),
}

/// Counters over all agents of a run.
#[derive(Default)]
pub struct Counters {
    pub heartbeats: AtomicU64,
    pub pongs: AtomicU64,
}

/// What every agent of a run shares.
pub struct Plan {
    /// The replicas; agent `i` dials `addrs[i % len]` (as a TCP load balancer would spread
    /// them).
    pub addrs: Vec<SocketAddr>,
    pub token: String,
    pub heartbeat: Duration,
    pub alerts_per_agent: u64,
    pub alert_ack_timeout: Duration,
    /// Events per session turn at [`Phase::Events`] (at least 4: start, running, end, idle).
    pub events_per_session: u64,
    /// Between two events of one session.
    pub event_interval: Duration,
    pub connect: Semaphore,
    pub reports: mpsc::UnboundedSender<Report>,
    pub counters: Counters,
}

/// One agent, from dial to close. Every outcome is reported, never only logged.
pub async fn run(index: usize, plan: Arc<Plan>, mut phase: watch::Receiver<Phase>) {
    let agent_id = uuid::Uuid::now_v7().to_string();
    let report = |r: Report| {
        let _ = plan.reports.send(r);
    };
    let mut ws = match register(index, &plan, &agent_id).await {
        Ok((ws, dialed, acked, retries)) => {
            report(Report::Registered {
                index,
                agent_id: agent_id.clone(),
                dialed,
                acked,
                retries,
            });
            ws
        }
        Err(f) => {
            report(Report::RegisterFailed(f));
            return;
        }
    };
    // As the real agent does: one heartbeat at once, then one every period.
    let mut heartbeat = tokio::time::interval(plan.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut link = Link {
        ws: &mut ws,
        plan: &plan,
        heartbeat,
        sessions: Vec::new(),
    };

    // The first frame is encoded while idle, so the alert burst measures the hub.
    let mut next_frame = (plan.alerts_per_agent > 0).then(|| alert_frame(index, 1, &plan));
    if let Err(f) = link.idle_until(&mut phase, Phase::Alerts).await {
        report(Report::AlertsFailed(f));
        return;
    }
    match link.send_alerts(index, &mut next_frame).await {
        Ok(Some((first_sent, last_acked, latencies_us))) => report(Report::AlertsDone {
            first_sent,
            last_acked,
            alerts: plan.alerts_per_agent,
            latencies_us,
        }),
        Ok(None) => {}
        Err(f) => {
            report(Report::AlertsFailed(f));
            return;
        }
    }
    if let Err(f) = link.idle_until(&mut phase, Phase::Events).await {
        report(Report::Lost(f));
        return;
    }
    if !link.sessions.is_empty() && *phase.borrow() == Phase::Events {
        match link.send_turns(index, &mut phase).await {
            Ok(sent) => report(Report::EventsDone { index, sent }),
            Err(failure) => {
                report(Report::EventsFailed { index, failure });
                return;
            }
        }
    }
    if let Err(f) = link.idle_until(&mut phase, Phase::Close).await {
        report(Report::Lost(f));
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Dials and registers (holding a connect permit throughout); returns the socket, when the
/// first dial started, when the `ack` arrived and how many dials were retried.
async fn register(
    index: usize,
    plan: &Plan,
    agent_id: &str,
) -> Result<(Ws, Instant, Instant, u32), Failure> {
    let _permit = plan
        .connect
        .acquire()
        .await
        .map_err(|e| Failure::new("internal", e))?;
    let dialed = Instant::now();
    let mut retries = 0;
    let mut ws = loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, dial(index, plan, agent_id)).await {
            Ok(Ok(ws)) => break ws,
            Ok(Err(f)) if f.kind == "unauthorized" || retries + 1 >= CONNECT_ATTEMPTS => {
                return Err(f);
            }
            Err(_) if retries + 1 >= CONNECT_ATTEMPTS => {
                return Err(Failure::new(
                    "connect timeout",
                    format!("no upgrade within {} s", CONNECT_TIMEOUT.as_secs()),
                ));
            }
            _ => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(retries))).await;
            }
        }
    };
    let frame_id = uuid::Uuid::now_v7().to_string();
    let register = LinkFrame::new(
        frame_id.clone(),
        LinkMessage::Register(Register {
            hostname: format!("bench-{index:05}"),
            ip: "127.0.0.1".into(),
            os: "linux".into(),
            arch: std::env::consts::ARCH.into(),
            labels: BTreeMap::from([("bench".to_owned(), "hub".to_owned())]),
            plugins: vec!["cpu".into(), "mem".into(), "disk".into()],
            agent_version: concat!("tether-bench ", env!("CARGO_PKG_VERSION")).into(),
            uptime_sec: 1,
        }),
    );
    send(&mut ws, register.encode()).await?;
    let wait = async {
        loop {
            let Some(frame) = receive(&mut ws, &plan.counters).await? else {
                continue;
            };
            match frame.message {
                LinkMessage::Ack(ack) if frame.ref_id.as_deref() == Some(frame_id.as_str()) => {
                    return if !ack.ok {
                        Err(Failure::new(
                            "register refused",
                            ack.error.unwrap_or_else(|| "ok: false".into()),
                        ))
                    } else if ack.proto != Some(2) {
                        Err(Failure::new(
                            "not version 2",
                            format!("ack.proto is {:?}", ack.proto),
                        ))
                    } else {
                        Ok(())
                    };
                }
                _ => continue,
            }
        }
    };
    match tokio::time::timeout(REGISTER_TIMEOUT, wait).await {
        Ok(Ok(())) => Ok((ws, dialed, Instant::now(), retries)),
        Ok(Err(f)) => Err(f),
        Err(_) => Err(Failure::new(
            "register timeout",
            format!("no ack within {} s", REGISTER_TIMEOUT.as_secs()),
        )),
    }
}

async fn dial(index: usize, plan: &Plan, agent_id: &str) -> Result<Ws, Failure> {
    let addr = *plan
        .addrs
        .get(index % plan.addrs.len().max(1))
        .ok_or_else(|| Failure::new("internal", "no hub address"))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| Failure::new("connect", e))?;
    let _ = tcp.set_nodelay(true);
    let mut request = format!("ws://{addr}{AGENT_WS_PATH}")
        .into_client_request()
        .map_err(|e| Failure::new("internal", e))?;
    let value = |s: &str| HeaderValue::from_str(s).map_err(|e| Failure::new("internal", e));
    let headers = request.headers_mut();
    headers.insert(HEADER_AGENT_TOKEN, value(&plan.token)?);
    headers.insert(HEADER_AGENT_ID, value(agent_id)?);
    headers.insert(HEADER_PROTO_VERSION, HeaderValue::from_static("2"));
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_LINK_FRAME_BYTES))
        .max_frame_size(Some(MAX_LINK_FRAME_BYTES));
    match tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) if resp.status().as_u16() == 401 => {
            Err(Failure::new("unauthorized", "HTTP 401 on the upgrade"))
        }
        Err(WsError::Http(resp)) => Err(Failure::new(
            "upgrade refused",
            format!("HTTP {}", resp.status()),
        )),
        Err(e) => Err(Failure::new("upgrade", e)),
    }
}

async fn send(ws: &mut Ws, text: String) -> Result<(), Failure> {
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::new("send", e)),
        Err(_) => Err(Failure::new(
            "send timeout",
            format!("a write took over {} s", SEND_TIMEOUT.as_secs()),
        )),
    }
}

/// The next link frame; `None` for frames handled here (`ping` is answered) or not text.
async fn receive(ws: &mut Ws, counters: &Counters) -> Result<Option<LinkFrame>, Failure> {
    let msg = match ws.next().await {
        None => return Err(Failure::new("closed by the hub", "the stream ended")),
        Some(Err(e)) => return Err(Failure::new("read", e)),
        Some(Ok(m)) => m,
    };
    handle(ws, msg, counters).await
}

async fn handle(
    ws: &mut Ws,
    msg: Message,
    counters: &Counters,
) -> Result<Option<LinkFrame>, Failure> {
    let text = match msg {
        Message::Text(t) => t,
        Message::Close(c) => {
            return Err(Failure::new(
                "closed by the hub",
                c.map_or_else(|| "close frame".to_owned(), |c| c.reason.to_string()),
            ));
        }
        _ => return Ok(None),
    };
    let frame = LinkFrame::decode(text.as_str()).map_err(|e| Failure::new("bad frame", e))?;
    match &frame.message {
        LinkMessage::Ping => {
            let pong = LinkFrame::new(uuid::Uuid::now_v7().to_string(), LinkMessage::Pong);
            send(ws, pong.encode()).await?;
            counters.pongs.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
        LinkMessage::Disconnect(d) => Err(Failure::new(
            "disconnect from the hub",
            format!("{} (retry after {} s)", d.reason, d.retry_after_sec),
        )),
        _ => Ok(Some(frame)),
    }
}

/// `alert_events` with seqs `from..=min(from + 99, alerts_per_agent)`.
fn alert_frame(index: usize, from: u64, plan: &Plan) -> (String, u64) {
    let last = (from + MAX_ALERT_BATCH as u64 - 1).min(plan.alerts_per_agent);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let events = (from..=last)
        .map(|seq| {
            let labels = BTreeMap::from([
                ("from_hostname".to_owned(), format!("bench-{index:05}")),
                ("mount".to_owned(), format!("/data{}", seq % 4)),
                ("plugin".to_owned(), "disk".to_owned()),
            ]);
            AlertEvent {
                event_time: now,
                event_status: if seq % 2 == 0 {
                    AlertStatus::Critical
                } else {
                    AlertStatus::Warning
                },
                alert_key: tether_proto::link::alert_key(&labels),
                labels,
                attrs: BTreeMap::new(),
                description: format!("disk usage 9{}% on /data{}", seq % 10, seq % 4),
                description_format: String::new(),
                seq: Some(seq),
            }
        })
        .collect();
    let frame = LinkFrame::new(
        uuid::Uuid::now_v7().to_string(),
        LinkMessage::AlertEvents(AlertEvents::new(events)),
    );
    (frame.encode(), last)
}

/// A registered agent's socket and heartbeat timer.
struct Link<'a> {
    ws: &'a mut Ws,
    plan: &'a Plan,
    heartbeat: tokio::time::Interval,
    /// The hub sessions this agent runs (none for most agents).
    sessions: Vec<SimSession>,
}

/// One hub session at the simulated agent: its id and the last `seq` it published.
struct SimSession {
    id: String,
    last_seq: u64,
    /// The turn being played at [`Phase::Events`]: its id and the events sent of it.
    turn: Option<(String, u64)>,
}

/// The bench's own principal at the agent (the originator of its turns).
fn bench_client() -> ClientInfo {
    ClientInfo {
        client_id: ClientId::from("tether-bench/1"),
        class: Class::Human,
        name: "tether-bench".into(),
    }
}

fn now_ts() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    tether_proto::time::rfc3339_ms(ms)
}

/// The `k`-th event (0-based) of a turn of `total` events (`total` ≥ 4).
fn turn_event(turn_id: &str, k: u64, total: u64) -> EventBody {
    let turn_id = TurnId::from(turn_id);
    if k == 0 {
        EventBody::TurnStarted {
            turn_id,
            originator: bench_client(),
            text: "bench turn".into(),
            input_id: None,
        }
    } else if k == 1 {
        EventBody::SessionState {
            state: SessionState::Running,
        }
    } else if k + 2 == total {
        EventBody::TurnEnded {
            turn_id,
            stop: StopReason::Completed,
            error: None,
            usage: None,
        }
    } else if k + 1 >= total {
        EventBody::SessionState {
            state: SessionState::Idle,
        }
    } else {
        EventBody::TextDelta {
            turn_id,
            text: format!("delta {k} of a simulated answer, about the size of a model token run. "),
        }
    }
}

impl Link<'_> {
    async fn beat(&mut self) -> Result<(), Failure> {
        let hb = LinkFrame::new(
            uuid::Uuid::now_v7().to_string(),
            LinkMessage::Heartbeat(Heartbeat {
                active_sessions: 0,
                active_alerts: 0,
                cpu_pct: Some(3.0),
                mem_pct: Some(40.0),
                dropped_alerts: Some(0),
            }),
        );
        // A failed heartbeat ends the agent, which reports the failure.
        send(self.ws, hb.encode()).await?;
        self.plan
            .counters
            .heartbeats
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Heartbeats and answers pings until the run reaches `target`.
    async fn idle_until(
        &mut self,
        phase: &mut watch::Receiver<Phase>,
        target: Phase,
    ) -> Result<(), Failure> {
        loop {
            if *phase.borrow_and_update() >= target {
                return Ok(());
            }
            tokio::select! {
                changed = phase.changed() => {
                    // The coordinator is gone: nothing more to do.
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                _ = self.heartbeat.tick() => self.beat().await?,
                msg = self.ws.next() => {
                    let msg = match msg {
                        None => return Err(Failure::new("closed by the hub", "the stream ended")),
                        Some(Err(e)) => return Err(Failure::new("read", e)),
                        Some(Ok(m)) => m,
                    };
                    if let Some(frame) = handle(self.ws, msg, &self.plan.counters).await? {
                        self.on_frame(frame).await?;
                    }
                }
            }
        }
    }

    /// A hub frame other than `ping`/`alert_ack`: the session ops a version-2 agent answers.
    async fn on_frame(&mut self, frame: LinkFrame) -> Result<(), Failure> {
        match frame.message {
            LinkMessage::SessionStart(start) => {
                if self.sessions.iter().any(|s| s.id == start.session_id) {
                    return self
                        .ack(
                            &frame.id,
                            false,
                            Some(tether_proto::link::refusal::DUPLICATE_SESSION_ID),
                            None,
                        )
                        .await;
                }
                self.ack(&frame.id, true, None, None).await?;
                self.sessions.push(SimSession {
                    id: start.session_id,
                    last_seq: 0,
                    turn: None,
                });
                let i = self.sessions.len() - 1;
                self.publish(
                    i,
                    EventBody::SessionState {
                        state: SessionState::Idle,
                    },
                )
                .await
                .map(|_| ())
            }
            LinkMessage::SessionAttach(attach) => {
                let Some(i) = self.sessions.iter().position(|s| s.id == attach.session_id) else {
                    return self.refuse_unknown(&frame.id, &attach.session_id).await;
                };
                if let Some(after) = attach.after_seq {
                    // A resume: this agent keeps no history to send again, so it can only
                    // resume a hub that has seen everything.
                    let last = self.sessions[i].last_seq;
                    if after < last {
                        return self
                            .ack(
                                &frame.id,
                                false,
                                Some("the bench agent keeps no history to resend"),
                                Some("unknown_session"),
                            )
                            .await;
                    }
                    return self
                        .ack_result(&frame.id, serde_json::json!({ "last_seq": last }))
                        .await;
                }
                self.ack(&frame.id, true, None, None).await?;
                let client = user(&attach.user_name, &attach.class, attach.client_id);
                self.publish(
                    i,
                    EventBody::ClientAttached {
                        client,
                        reason: None,
                    },
                )
                .await
                .map(|_| ())
            }
            LinkMessage::SessionDetach(detach) => {
                let Some(i) = self.sessions.iter().position(|s| s.id == detach.session_id) else {
                    return self.refuse_unknown(&frame.id, &detach.session_id).await;
                };
                self.ack(&frame.id, true, None, None).await?;
                let client = user(&detach.user_name, "", detach.client_id);
                self.publish(
                    i,
                    EventBody::ClientDetached {
                        client,
                        reason: None,
                    },
                )
                .await
                .map(|_| ())
            }
            LinkMessage::SessionInput(_) | LinkMessage::SessionAnswer(_) => {
                self.ack(
                    &frame.id,
                    false,
                    Some("the bench agent takes no input"),
                    Some("bad_request"),
                )
                .await
            }
            _ => Ok(()),
        }
    }

    async fn refuse_unknown(&mut self, frame_id: &str, session_id: &str) -> Result<(), Failure> {
        self.ack(
            frame_id,
            false,
            Some(&format!("no session {session_id}")),
            Some("unknown_session"),
        )
        .await
    }

    async fn ack(
        &mut self,
        ref_id: &str,
        ok: bool,
        error: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), Failure> {
        let ack = Ack {
            ok,
            error: error.map(str::to_owned),
            reason: reason.map(str::to_owned),
            ..Ack::default()
        };
        self.send_ack(ref_id, ack).await
    }

    async fn ack_result(&mut self, ref_id: &str, result: serde_json::Value) -> Result<(), Failure> {
        let ack = Ack {
            ok: true,
            result: Some(result),
            ..Ack::default()
        };
        self.send_ack(ref_id, ack).await
    }

    async fn send_ack(&mut self, ref_id: &str, ack: Ack) -> Result<(), Failure> {
        let frame = LinkFrame {
            id: uuid::Uuid::now_v7().to_string(),
            ref_id: Some(ref_id.to_owned()),
            message: LinkMessage::Ack(ack),
        };
        send(self.ws, frame.encode()).await
    }

    /// Publishes the next event of session `i`; returns its seq and when it was handed to
    /// the socket (encoding done).
    async fn publish(&mut self, i: usize, body: EventBody) -> Result<(u64, Instant), Failure> {
        let session = &mut self.sessions[i];
        session.last_seq += 1;
        let seq = session.last_seq;
        let event = Event {
            session_id: SessionId(session.id.clone()),
            seq,
            ts: now_ts(),
            body,
        };
        let event = serde_json::to_value(&event).map_err(|e| Failure::new("internal", e))?;
        let frame = LinkFrame::new(
            uuid::Uuid::now_v7().to_string(),
            LinkMessage::SessionEvent(SessionEvent {
                session_id: session.id.clone(),
                event,
            }),
        )
        .encode();
        let at = Instant::now();
        send(self.ws, frame).await?;
        Ok((seq, at))
    }

    /// Plays one turn of `events_per_session` events in each session, one event per session
    /// every `event_interval` (agents start at staggered offsets so the load is even), still
    /// heartbeating and answering the hub; returns each event's session, seq and send time.
    async fn send_turns(
        &mut self,
        index: usize,
        phase: &mut watch::Receiver<Phase>,
    ) -> Result<Vec<(String, u64, Instant)>, Failure> {
        let total = self.plan.events_per_session;
        let interval = self.plan.event_interval;
        let offset = interval.mul_f64((index.wrapping_mul(7919) % 1000) as f64 / 1000.0);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = Vec::with_capacity(self.sessions.len() * total as usize);
        for s in &mut self.sessions {
            s.turn = Some((uuid::Uuid::now_v7().to_string(), 0));
        }
        let mut played = 0;
        while played < total {
            tokio::select! {
                _ = tick.tick() => {
                    for i in 0..self.sessions.len() {
                        let Some((turn_id, k)) = self.sessions[i].turn.clone() else { continue };
                        let (seq, at) = self.publish(i, turn_event(&turn_id, k, total)).await?;
                        sent.push((self.sessions[i].id.clone(), seq, at));
                        self.sessions[i].turn = Some((turn_id, k + 1));
                    }
                    played += 1;
                }
                changed = phase.changed() => {
                    // The coordinator gave up (or moved to close): stop playing.
                    if changed.is_err() || *phase.borrow() >= Phase::Close {
                        break;
                    }
                }
                _ = self.heartbeat.tick() => self.beat().await?,
                msg = self.ws.next() => {
                    let msg = match msg {
                        None => return Err(Failure::new("closed by the hub", "the stream ended")),
                        Some(Err(e)) => return Err(Failure::new("read", e)),
                        Some(Ok(m)) => m,
                    };
                    if let Some(frame) = handle(self.ws, msg, &self.plan.counters).await? {
                        self.on_frame(frame).await?;
                    }
                }
            }
        }
        for s in &mut self.sessions {
            s.turn = None;
        }
        Ok(sent)
    }

    /// Sends every alert, one frame at a time; returns the first send, the last ack and each
    /// frame's latency (`None` when there is nothing to send).
    #[allow(clippy::type_complexity)]
    async fn send_alerts(
        &mut self,
        index: usize,
        next: &mut Option<(String, u64)>,
    ) -> Result<Option<(Instant, Instant, Vec<u32>)>, Failure> {
        let frames = self.plan.alerts_per_agent.div_ceil(MAX_ALERT_BATCH as u64);
        let mut latencies = Vec::with_capacity(frames as usize);
        let mut first_sent = None;
        let mut last_acked = None;
        while let Some((text, last_seq)) = next.take() {
            let sent = Instant::now();
            first_sent.get_or_insert(sent);
            send(self.ws, text).await?;
            // Encode the next frame while the hub stores this one.
            if last_seq < self.plan.alerts_per_agent {
                *next = Some(alert_frame(index, last_seq + 1, self.plan));
            }
            let deadline = tokio::time::Instant::now() + self.plan.alert_ack_timeout;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(Failure::new(
                            "alert_ack timeout",
                            format!(
                                "no alert_ack for seq {last_seq} within {} ms",
                                self.plan.alert_ack_timeout.as_millis()
                            ),
                        ));
                    }
                    _ = self.heartbeat.tick() => self.beat().await?,
                    msg = self.ws.next() => {
                        let msg = match msg {
                            None => return Err(Failure::new("closed by the hub", "the stream ended")),
                            Some(Err(e)) => return Err(Failure::new("read", e)),
                            Some(Ok(m)) => m,
                        };
                        match handle(self.ws, msg, &self.plan.counters).await? {
                            Some(LinkFrame { message: LinkMessage::AlertAck(a), .. })
                                if a.upto_seq >= last_seq =>
                            {
                                let now = Instant::now();
                                let us = now.duration_since(sent).as_micros();
                                latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                                last_acked = Some(now);
                                break;
                            }
                            Some(LinkFrame { message: LinkMessage::AlertAck(_), .. }) | None => {}
                            Some(other) => self.on_frame(other).await?,
                        }
                    }
                }
            }
        }
        Ok(first_sent.zip(last_acked).map(|(f, l)| (f, l, latencies)))
    }
}

/// The hub user a `session_attach`/`session_detach` names, as the agent shows it in events.
fn user(name: &str, class: &str, client_id: Option<String>) -> ClientInfo {
    ClientInfo {
        client_id: ClientId(client_id.unwrap_or_else(|| format!("hub:{name}"))),
        class: Class::parse(class).unwrap_or(Class::Human),
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turn is what a real agent's multiplexer publishes, and each event decodes as the
    /// hub's relay decodes it.
    #[test]
    fn a_turn_is_a_real_turn() {
        let names: Vec<String> = (0..6)
            .map(|k| {
                let event = Event {
                    session_id: SessionId::from("s"),
                    seq: k + 2,
                    ts: now_ts(),
                    body: turn_event("t", k, 6),
                };
                let v = serde_json::to_value(&event).expect("encode");
                let back: Event = serde_json::from_value(v.clone()).expect("decode");
                assert_eq!(back, event);
                match v["event"].as_str().expect("event") {
                    "session_state" => format!("state:{}", v["state"].as_str().expect("state")),
                    other => other.to_owned(),
                }
            })
            .collect();
        assert_eq!(
            names,
            [
                "turn_started",
                "state:running",
                "text_delta",
                "text_delta",
                "turn_ended",
                "state:idle"
            ]
        );
    }
}
