//! The loopback hops alone, to subtract from the end-to-end figure, and the event log alone.
//!
//! * **Hop A** (model side): the same model server, same plan and cadence, read by a plain
//!   reqwest client (`Response::chunk`) — the HTTP stack the provider uses, minus the
//!   provider. Per chunk: server send instant → the read that carried it returned.
//! * **Hop B** (client side): a plain axum WebSocket endpoint on the agent's own listener stack
//!   (`tether_transport::serve_http`: `TCP_NODELAY`, same hyper/axum/tungstenite) that encodes
//!   `text_delta` events of the same shape and size with `tether_proto::Event` and sends each
//!   one as it is made (`send` = feed + flush, as the agent's writer does for a lone frame). The
//!   same measuring client reads them. Per chunk: send instant (after encoding) → receipt.
//! * **Log**: `EventLog::append` of one `text_delta` event per job, at the same cadence, on an
//!   event log of its own — the commit the session actor waits for before it broadcasts —
//!   timed from the append and from the moment the event was ready (which adds the wait
//!   behind a slow earlier commit, as a turn's queued deltas wait).
//! * **Hand-off**: the log's thread round trip without SQLite (a std channel to a thread, a
//!   tokio oneshot back), to split the commit into thread wake-ups and SQLite work.

use super::model_server::{ModelServer, Plan, numbers_in};
use super::timeline::{Clock, Stamps, chunk_text, pacer};
use super::ws_client::{ReadEnd, WsClient};
use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_engine::log::{AppendJob, EventLog, StoredEvent};
use tether_proto::{Event, EventBody};
use tokio_util::sync::CancellationToken;

fn run_limit(chunks: u64, interval: Duration) -> Duration {
    interval.saturating_mul(u32::try_from(chunks).unwrap_or(u32::MAX).saturating_mul(4))
        + Duration::from_secs(60)
}

/// Hop A: returns (sent, received) instants.
pub async fn model_hop(
    model: &ModelServer,
    http: &reqwest::Client,
    chunks: u64,
    interval: Duration,
    clock: Clock,
) -> anyhow::Result<(Arc<Stamps>, Arc<Stamps>)> {
    let sent = Stamps::new(chunks);
    let received = Stamps::new(chunks);
    model.arm(Plan {
        chunks,
        interval,
        sent: sent.clone(),
        clock,
    });
    let body = r#"{"model":"bench-model","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"stream, please"}]}"#;
    let request = http
        .post(format!("{}/chat/completions", model.base_url))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(body);
    // Read on a worker thread, as the provider is (inside the turn's task): the future of
    // `block_on` runs on the main thread, a cross-thread wake-up away from the I/O driver.
    let read = tokio::spawn({
        let received = received.clone();
        async move {
            let mut response = request
                .send()
                .await
                .context("posting to the model server")?
                .error_for_status()
                .context("the model server refused")?;
            while let Some(bytes) = response.chunk().await.context("reading the stream")? {
                let now = clock.now_ns();
                for seq in numbers_in(&bytes) {
                    received.set(seq, now);
                }
            }
            anyhow::Ok(())
        }
    });
    tokio::time::timeout(run_limit(chunks, interval), read)
        .await
        .context("hop A did not finish in time")?
        .context("hop A's reader failed")??;
    Ok((sent, received))
}

/// The plain WebSocket endpoint of hop B.
pub struct PlainWs {
    url: String,
    armed: Arc<Mutex<Option<Arc<Stamps>>>>,
    closing: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct WsServerState {
    armed: Arc<Mutex<Option<Arc<Stamps>>>>,
    clock: Clock,
}

impl PlainWs {
    pub async fn start(clock: Clock) -> anyhow::Result<PlainWs> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the plain WebSocket server")?;
        let addr = listener.local_addr()?;
        let armed = Arc::new(Mutex::new(None));
        let router = Router::new()
            .route("/ws", get(upgrade))
            .with_state(WsServerState {
                armed: armed.clone(),
                clock,
            });
        let closing = CancellationToken::new();
        let server = tokio::spawn({
            let closing = closing.clone();
            async move {
                if let Err(e) = tether_transport::serve_http(listener, router, closing).await {
                    crate::client::note(&format!("plain WebSocket server failed: {e}"));
                }
            }
        });
        Ok(PlainWs {
            url: format!("ws://{addr}/ws"),
            armed,
            closing,
            server,
        })
    }

    /// Hop B: returns (sent, received) instants.
    pub async fn run(
        &self,
        chunks: u64,
        interval: Duration,
        clock: Clock,
    ) -> anyhow::Result<(Arc<Stamps>, Arc<Stamps>)> {
        let sent = Stamps::new(chunks);
        let received = Stamps::new(chunks);
        if let Ok(mut a) = self.armed.lock() {
            *a = Some(sent.clone());
        }
        let mut client = WsClient::connect(&self.url, received.clone(), chunks, clock).await?;
        client
            .send_text(format!("{chunks} {}", interval.as_nanos()))
            .await?;
        let end = client.wait_end(run_limit(chunks, interval)).await;
        client.close().await;
        match end? {
            ReadEnd::All => {}
            ReadEnd::TurnEnded(f) => bail!("unexpected turn_ended: {f}"),
            ReadEnd::Closed(why) => crate::client::note(&format!("hop B: {why}")),
        }
        Ok((sent, received))
    }

    pub async fn stop(self) {
        self.closing.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
    }
}

async fn upgrade(State(state): State<WsServerState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| stream_deltas(socket, state))
}

/// A `text_delta` frame shaped like the agent's (uuid-sized ids, a millisecond timestamp).
pub fn delta_frame(seq: u64, session_id: &str, turn_id: &str) -> String {
    Event {
        session_id: session_id.into(),
        seq: seq + 3,
        ts: "2026-01-01T00:00:00.000Z".into(),
        body: EventBody::TextDelta {
            turn_id: turn_id.into(),
            text: chunk_text(seq),
        },
    }
    .encode()
}

/// Waits for `"{chunks} {interval_ns}"`, then streams that many frames at that cadence.
async fn stream_deltas(mut socket: WebSocket, state: WsServerState) {
    let Some(Ok(Message::Text(go))) = socket.recv().await else {
        return;
    };
    let mut words = go.as_str().split(' ').map(str::parse::<u64>);
    let (Some(Ok(chunks)), Some(Ok(interval_ns))) = (words.next(), words.next()) else {
        return;
    };
    let Some(sent) = state.armed.lock().ok().and_then(|mut a| a.take()) else {
        return;
    };
    let Ok(mut rx) = pacer(chunks, Duration::from_nanos(interval_ns), state.clock) else {
        return;
    };
    let session_id = uuid::Uuid::now_v7().to_string();
    let turn_id = uuid::Uuid::now_v7().to_string();
    while let Some((seq, _)) = rx.recv().await {
        let frame = delta_frame(seq, &session_id, &turn_id);
        sent.set(seq, state.clock.now_ns());
        if socket.send(Message::Text(frame.into())).await.is_err() {
            return;
        }
    }
    // Keep the socket open until the client closes it.
    while let Some(Ok(_)) = socket.recv().await {}
}

/// What [`log_appends`] measured, per append, in microseconds.
pub struct LogTimes {
    /// The append alone: the job sent to the writer → its commit acknowledged.
    pub service_us: Vec<f64>,
    /// The event became ready (handed out by the pacer) → committed: includes waiting behind
    /// a slow earlier commit, as the events of a running turn do.
    pub ready_us: Vec<f64>,
}

/// The event log alone: one job per chunk at the cadence. Appends from a spawned task, as
/// the session actor does.
pub async fn log_appends(
    log: &EventLog,
    chunks: u64,
    interval: Duration,
    clock: Clock,
) -> anyhow::Result<LogTimes> {
    let log = log.clone();
    let task = tokio::spawn(async move {
        let session_id = uuid::Uuid::now_v7().to_string();
        let turn_id = uuid::Uuid::now_v7().to_string();
        let mut rx = pacer(chunks, interval, clock)?;
        let n = usize::try_from(chunks).unwrap_or(0);
        let mut times = LogTimes {
            service_us: Vec::with_capacity(n),
            ready_us: Vec::with_capacity(n),
        };
        while let Some((seq, ready)) = rx.recv().await {
            let job = AppendJob {
                session_id: session_id.as_str().into(),
                events: vec![StoredEvent {
                    seq: seq + 3,
                    frame: Bytes::from(delta_frame(seq, &session_id, &turn_id)),
                }],
                ..AppendJob::default()
            };
            let started = clock.now_ns();
            log.append(job)
                .await
                .context("appending to the event log")?;
            let done = clock.now_ns();
            times
                .service_us
                .push(done.saturating_sub(started) as f64 / 1e3);
            times.ready_us.push(done.saturating_sub(ready) as f64 / 1e3);
            if done.saturating_sub(started) > 1_000_000 {
                crate::client::note(&format!(
                    "DEBUG slow append #{seq}: {} us",
                    done.saturating_sub(started) / 1000
                ));
            }
        }
        anyhow::Ok(times)
    });
    task.await.context("the append task failed")?
}

/// The event log's thread hand-off alone: the same round trip as `EventLog::append` (a std
/// channel to a thread of its own, a tokio oneshot back) with no SQLite in between, at the
/// cadence. Returns each round trip's latency (µs).
pub async fn writer_handoff(
    chunks: u64,
    interval: Duration,
    clock: Clock,
) -> anyhow::Result<Vec<f64>> {
    let (tx, rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
    let thread = std::thread::Builder::new()
        .name("overhead-handoff".into())
        .spawn(move || {
            while let Ok(reply) = rx.recv() {
                let _ = reply.send(());
            }
        })?;
    let task = tokio::spawn(async move {
        let mut paced = pacer(chunks, interval, clock)?;
        let mut out = Vec::with_capacity(usize::try_from(chunks).unwrap_or(0));
        while paced.recv().await.is_some() {
            let (reply, done) = tokio::sync::oneshot::channel();
            let started = clock.now_ns();
            tx.send(reply).context("the hand-off thread stopped")?;
            done.await
                .context("the hand-off thread dropped the reply")?;
            out.push(clock.now_ns().saturating_sub(started) as f64 / 1e3);
        }
        anyhow::Ok(out)
    });
    let out = task.await.context("the hand-off task failed")?;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    out
}

/// An event log of its own for [`log_appends`], in a temporary directory under `parent`.
pub fn open_log(parent: Option<&Path>) -> anyhow::Result<(tempfile::TempDir, EventLog)> {
    let dir = match parent {
        Some(p) => tempfile::tempdir_in(p),
        None => tempfile::tempdir(),
    }
    .context("creating a temporary directory")?;
    let log = EventLog::open(&dir.path().join("events.db"))?;
    Ok((dir, log))
}
