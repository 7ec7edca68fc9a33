//! The benchmark's WebSocket clients (raw tokio-tungstenite), used against both servers.
//!
//! Each client's reader task counts `text_delta` frames, records each one's latency (receipt
//! time minus the creation time embedded in its text) and reports to the credit window.
//! Replies (`{"re": ...}`) are forwarded to the control side; every other frame is counted and
//! otherwise ignored.

use crate::credit::{Progress, TEXT_DELTA_MARK, embedded_nanos};
use anyhow::{Context, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The clients' read buffer. tungstenite zeroes the free part of it before every read, so the
/// default (128 KiB) makes the clients — which share the CPU with the servers under test —
/// spend much of their time in `memset`.
pub const CLIENT_READ_BUFFER: usize = 16 * 1024;

/// The sending half of a bench client's socket, with requests matched to the replies its
/// reader task forwards (frames with `re`).
pub struct Requester {
    sink: SplitSink<Ws, Message>,
    replies: mpsc::UnboundedReceiver<String>,
    next_id: u64,
}

impl Requester {
    pub fn new(sink: SplitSink<Ws, Message>, replies: mpsc::UnboundedReceiver<String>) -> Self {
        Requester {
            sink,
            replies,
            next_id: 1,
        }
    }

    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        self.sink
            .send(Message::Text(text.into()))
            .await
            .context("sending on the WebSocket")
    }

    /// Sends a request and waits for its reply; returns `result`, or fails on an error reply.
    pub async fn request(&mut self, op: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = serde_json::Map::new();
        frame.insert("id".into(), id.into());
        frame.insert("op".into(), op.into());
        if let Value::Object(p) = params {
            frame.extend(p);
        }
        self.send_text(Value::Object(frame).to_string())
            .await
            .with_context(|| format!("sending {op}"))?;
        let wait = async {
            while let Some(text) = self.replies.recv().await {
                let reply: Value = serde_json::from_str(&text)
                    .with_context(|| format!("reply to {op} is not JSON: {text}"))?;
                if reply.get("re").and_then(Value::as_u64) != Some(id) {
                    continue;
                }
                if reply.get("ok").and_then(Value::as_bool) == Some(true) {
                    return Ok(reply.get("result").cloned().unwrap_or(Value::Null));
                }
                bail!(
                    "{op} failed: {}",
                    reply.get("error").unwrap_or(&Value::Null)
                );
            }
            bail!("the connection closed while waiting for the reply to {op}")
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .with_context(|| format!("no reply to {op} within 30 s"))?
    }

    /// Sends a close frame (bounded).
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.send(Message::Close(None)))
            .await;
    }
}

/// Connections opened at once (keeps the listen backlog and the session inbox comfortable).
const CONNECT_CONCURRENCY: usize = 64;

/// How one client's run went.
pub struct ClientOutcome {
    /// Latency of each `text_delta`, in microseconds.
    pub latencies_us: Vec<u32>,
    /// When the last expected `text_delta` arrived (ns since the epoch).
    pub finished_nanos: u64,
    pub error: Option<String>,
}

pub struct BenchClient {
    requests: Requester,
    outcome: Option<oneshot::Receiver<ClientOutcome>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for BenchClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Frames other than replies and `text_delta`, over all clients of a run.
pub type OtherFrames = Arc<AtomicU64>;

/// Connects `n` clients to `url`; their readers start at once.
pub async fn connect_all(
    url: &str,
    n: usize,
    progress: &Arc<Progress>,
    other: &OtherFrames,
) -> anyhow::Result<Vec<BenchClient>> {
    let mut clients: Vec<(usize, BenchClient)> =
        futures_util::stream::iter((0..n).map(|i| async move {
            BenchClient::connect(url, progress.clone(), other.clone())
                .await
                .map(|c| (i, c))
        }))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    clients.sort_by_key(|(i, _)| *i);
    Ok(clients.into_iter().map(|(_, c)| c).collect())
}

impl BenchClient {
    pub async fn connect(
        url: &str,
        progress: Arc<Progress>,
        other: OtherFrames,
    ) -> anyhow::Result<BenchClient> {
        let mut attempt = 0;
        let socket = loop {
            let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
            match tokio_tungstenite::connect_async_with_config(url, Some(config), true).await {
                Ok((socket, _)) => break socket,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    note(&format!("connect to {url} failed ({e}); retrying"));
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("connecting to {url}")),
            }
        };
        let (sink, stream) = socket.split();
        let (replies_tx, replies) = mpsc::unbounded_channel();
        let (outcome_tx, outcome) = oneshot::channel();
        let reader = tokio::spawn(read_loop(stream, progress, replies_tx, other, outcome_tx));
        Ok(BenchClient {
            requests: Requester::new(sink, replies),
            outcome: Some(outcome),
            reader,
        })
    }

    /// Sends a request and waits for its reply; returns `result`, or fails on an error reply.
    pub async fn request(&mut self, op: &str, params: Value) -> anyhow::Result<Value> {
        self.requests.request(op, params).await
    }

    /// Waits for this client's outcome (all events received, or the connection ended).
    pub async fn outcome(&mut self) -> ClientOutcome {
        let lost = || ClientOutcome {
            latencies_us: Vec::new(),
            finished_nanos: 0,
            error: Some("the reader stopped without an outcome".into()),
        };
        match self.outcome.take() {
            Some(rx) => rx.await.unwrap_or_else(|_| lost()),
            None => lost(),
        }
    }

    /// Closes politely (bounded); the reader is aborted when the client is dropped.
    pub async fn close(mut self) {
        self.requests.close().await;
    }
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    progress: Arc<Progress>,
    replies: mpsc::UnboundedSender<String>,
    other: OtherFrames,
    outcome: oneshot::Sender<ClientOutcome>,
) {
    let target = progress.events();
    let mut latencies_us = Vec::with_capacity(usize::try_from(target).unwrap_or(0));
    let mut count = 0u64;
    let mut outcome = Some(outcome);
    let mut error = None;
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                error = Some(format!("read failed: {e}"));
                break;
            }
        };
        let s = text.as_str();
        if count < target && s.contains(TEXT_DELTA_MARK) {
            let now = progress.now_nanos();
            if let Some(created) = embedded_nanos(s) {
                let us = now.saturating_sub(created) / 1000;
                latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            count += 1;
            progress.received(count);
            if count == target
                && let Some(tx) = outcome.take()
            {
                let _ = tx.send(ClientOutcome {
                    latencies_us: std::mem::take(&mut latencies_us),
                    finished_nanos: now,
                    error: None,
                });
            }
        } else if s.starts_with("{\"re\":") {
            let _ = replies.send(s.to_owned());
        } else {
            other.fetch_add(1, Ordering::Relaxed);
            if s.contains("\"event\":\"evicted\"") {
                error = Some(format!("evicted: {s}"));
            }
        }
    }
    if let Some(tx) = outcome.take() {
        let why = error.unwrap_or_else(|| "the connection closed".into());
        let _ = tx.send(ClientOutcome {
            latencies_us,
            finished_nanos: 0,
            error: Some(format!("{why} after {count} of {target} events")),
        });
    }
}

/// Progress notes go to stderr so stdout stays a table (or JSON).
pub fn note(message: &str) {
    eprintln!("tether-bench: {message}");
}

/// Waits until no client has received an unrelated frame (e.g. `client_attached`) for a
/// while, so the measured stream starts on quiet sockets.
pub async fn settle(other: &OtherFrames) {
    let mut last = other.load(Ordering::Relaxed);
    let mut quiet = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = other.load(Ordering::Relaxed);
        if now == last {
            quiet += 1;
            if quiet >= 3 {
                return;
            }
        } else {
            quiet = 0;
            last = now;
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub clients: usize,
    pub events: u64,
    /// From the first event's creation to the last client's receipt of the last event.
    pub elapsed_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Process CPU time (server and clients together) per delivered frame, in microseconds.
    pub cpu_us_per_frame: f64,
}

impl RunResult {
    /// Events per second each client received.
    pub fn events_per_s_per_client(&self) -> f64 {
        self.events as f64 / self.elapsed_s
    }

    /// Frames per second delivered over all clients.
    pub fn frames_per_s(&self) -> f64 {
        (self.events as f64 * self.clients as f64) / self.elapsed_s
    }
}

/// Waits (bounded) for every client's outcome and sums them up.
///
/// `cpu_start` is [`process_cpu_s`](crate::cpu::process_cpu_s) just before the stream began.
pub async fn gather(
    clients: &mut [BenchClient],
    progress: &Progress,
    limit: Duration,
    cpu_start: f64,
) -> anyhow::Result<RunResult> {
    let outcomes = tokio::time::timeout(
        limit,
        futures_util::future::join_all(clients.iter_mut().map(BenchClient::outcome)),
    )
    .await
    .with_context(|| format!("the run did not finish within {} s", limit.as_secs()))?;
    let cpu_s = crate::cpu::process_cpu_s() - cpu_start;
    let mut latencies: Vec<u32> = Vec::new();
    let mut finished = 0u64;
    for (i, o) in outcomes.into_iter().enumerate() {
        if let Some(e) = o.error {
            bail!("client {i}: {e}");
        }
        finished = finished.max(o.finished_nanos);
        latencies.extend_from_slice(&o.latencies_us);
    }
    let start = progress
        .first_created()
        .context("no event was ever created")?;
    let elapsed_s = (finished.saturating_sub(start) as f64 / 1e9).max(1e-9);
    let frames = progress.events() as f64 * clients.len() as f64;
    Ok(RunResult {
        clients: clients.len(),
        events: progress.events(),
        cpu_us_per_frame: cpu_s * 1e6 / frames.max(1.0),
        elapsed_s,
        p50_ms: percentile_us(&mut latencies, 0.50) / 1000.0,
        p99_ms: percentile_us(&mut latencies, 0.99) / 1000.0,
    })
}

/// The `q`-quantile (nearest rank) of `values`, in the same unit; 0 when empty.
pub fn percentile_us(values: &mut [u32], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    let (_, v, _) = values.select_nth_unstable(rank);
    f64::from(*v)
}

/// Closes every client, a bounded number at a time.
pub async fn close_all(clients: Vec<BenchClient>) {
    futures_util::stream::iter(clients.into_iter().map(BenchClient::close))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

#[cfg(test)]
mod tests {
    use super::percentile_us;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile_us(&mut v, 0.50), 50.0);
        assert_eq!(percentile_us(&mut v, 0.99), 99.0);
        assert_eq!(percentile_us(&mut [], 0.5), 0.0);
    }
}
