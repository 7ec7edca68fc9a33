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

use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tether_proto::link::{
    AGENT_WS_PATH, AlertEvent, AlertEvents, AlertStatus, HEADER_AGENT_ID, HEADER_AGENT_TOKEN,
    HEADER_PROTO_VERSION, Heartbeat, LinkFrame, LinkMessage, MAX_ALERT_BATCH, MAX_LINK_FRAME_BYTES,
    Register,
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
    pub addr: SocketAddr,
    pub token: String,
    pub heartbeat: Duration,
    pub alerts_per_agent: u64,
    pub alert_ack_timeout: Duration,
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
        match tokio::time::timeout(CONNECT_TIMEOUT, dial(plan, agent_id)).await {
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

async fn dial(plan: &Plan, agent_id: &str) -> Result<Ws, Failure> {
    let tcp = TcpStream::connect(plan.addr)
        .await
        .map_err(|e| Failure::new("connect", e))?;
    let _ = tcp.set_nodelay(true);
    let mut request = format!("ws://{}{AGENT_WS_PATH}", plan.addr)
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
                    handle(self.ws, msg, &self.plan.counters).await?;
                }
            }
        }
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
                        if let Some(LinkFrame { message: LinkMessage::AlertAck(a), .. }) =
                            handle(self.ws, msg, &self.plan.counters).await?
                            && a.upto_seq >= last_seq
                        {
                            let now = Instant::now();
                            let us = now.duration_since(sent).as_micros();
                            latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                            last_acked = Some(now);
                            break;
                        }
                    }
                }
            }
        }
        Ok(first_sent.zip(last_acked).map(|(f, l)| (f, l, latencies)))
    }
}
