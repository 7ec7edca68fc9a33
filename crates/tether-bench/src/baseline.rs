//! The ceiling: a plain axum WebSocket endpoint (same listener stack as the agent) that writes
//! the same `text_delta` event frames straight to every socket, without the multiplexer.
//!
//! Each frame is encoded once, exactly as the multiplexer encodes events, and shared by all
//! sockets through a broadcast channel (`Utf8Bytes` clones are reference-count bumps). The
//! producer obeys the same credit window, so no receiver can lag behind the channel.

use crate::client::{self, RunResult};
use crate::credit::{Progress, delta_text};
use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::SinkExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_proto::{Event, EventBody, SessionId, TurnId};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

type Sender = broadcast::Sender<Utf8Bytes>;

#[derive(Clone)]
struct BaseState {
    /// Taken by the producer once everyone subscribed; dropping it ends every writer.
    sender: Arc<Mutex<Option<Sender>>>,
    subscribed: Arc<AtomicUsize>,
    writes: Writes,
}

/// How the baseline writes to each socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Writes {
    /// One `send` (write and flush) per frame.
    PerFrame,
    /// Every frame already available (up to 64) is fed, then one flush, as the agent's
    /// WebSocket transport does.
    Batched,
}

impl Writes {
    pub fn name(self) -> &'static str {
        match self {
            Writes::PerFrame => "per-frame",
            Writes::Batched => "batched",
        }
    }
}

/// Frames fed before a flush in `Writes::Batched`.
const BATCH: usize = 64;

async fn ws_handler(State(state): State<BaseState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve(socket, state))
}

async fn serve(mut socket: WebSocket, state: BaseState) {
    let rx = state
        .sender
        .lock()
        .ok()
        .and_then(|s| s.as_ref().map(Sender::subscribe));
    let Some(mut rx) = rx else {
        return;
    };
    state.subscribed.fetch_add(1, Ordering::AcqRel);
    loop {
        let written = match rx.recv().await {
            Ok(frame) if state.writes == Writes::PerFrame => {
                socket.send(Message::Text(frame)).await.is_ok()
            }
            Ok(frame) => write_batch(&mut socket, &mut rx, frame).await,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                client::note(&format!("baseline receiver lagged by {n} frames"));
                return;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        if !written {
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.send(Message::Close(None))).await;
}

/// Feeds `first` and whatever else is ready (up to [`BATCH`] frames), then flushes once.
async fn write_batch(
    socket: &mut WebSocket,
    rx: &mut broadcast::Receiver<Utf8Bytes>,
    first: Utf8Bytes,
) -> bool {
    if socket.feed(Message::Text(first)).await.is_err() {
        return false;
    }
    for _ in 1..BATCH {
        match rx.try_recv() {
            Ok(frame) => {
                if socket.feed(Message::Text(frame)).await.is_err() {
                    return false;
                }
            }
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                client::note(&format!("baseline receiver lagged by {n} frames"));
                return false;
            }
            Err(_) => break,
        }
    }
    socket.flush().await.is_ok()
}

/// One baseline run with `n` clients and `events` frames.
pub async fn run(
    n: usize,
    events: u64,
    window: u64,
    writes: Writes,
    epoch: Instant,
) -> anyhow::Result<RunResult> {
    let capacity = usize::try_from(window)
        .unwrap_or(usize::MAX)
        .saturating_add(64);
    let (tx, _) = broadcast::channel(capacity);
    let state = BaseState {
        sender: Arc::new(Mutex::new(Some(tx))),
        subscribed: Arc::new(AtomicUsize::new(0)),
        writes,
    };
    let app = Router::new()
        .route("/ws", get(ws_handler))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("binding the baseline listener")?;
    let url = format!("ws://{}/ws", listener.local_addr()?);
    let closing = CancellationToken::new();
    let server = tokio::spawn({
        let closing = closing.clone();
        async move {
            if let Err(e) = tether_transport::serve_http(listener, app, closing).await {
                client::note(&format!("baseline listener failed: {e}"));
            }
        }
    });

    let progress = Arc::new(Progress::new(n, events, window, epoch));
    let other = Arc::new(AtomicU64::new(0));
    let result = async {
        let mut clients = client::connect_all(&url, n, &progress, &other).await?;
        let mut waited = 0;
        while state.subscribed.load(Ordering::Acquire) < n {
            if waited > 600 {
                bail!("baseline: only {} of {n} sockets subscribed", {
                    state.subscribed.load(Ordering::Acquire)
                });
            }
            waited += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tx = state
            .sender
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .context("baseline sender missing")?;
        let cpu_start = crate::cpu::process_cpu_s();
        let producer = tokio::spawn(produce(tx, progress.clone()));
        let result =
            client::gather(&mut clients, &progress, Duration::from_secs(600), cpu_start).await;
        producer.abort();
        client::close_all(clients).await;
        result
    }
    .await;
    closing.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    result
}

/// Creates each event under the credit window, encodes it once, and hands the same bytes to
/// every socket.
async fn produce(tx: Sender, progress: Arc<Progress>) {
    let session_id = SessionId(uuid::Uuid::now_v7().to_string());
    let turn_id = TurnId(uuid::Uuid::now_v7().to_string());
    for i in 0..progress.events() {
        let nanos = progress.acquire(i).await;
        let event = Event {
            session_id: session_id.clone(),
            seq: i + 1,
            ts: tether_mux::clock::now_rfc3339(),
            body: EventBody::TextDelta {
                turn_id: turn_id.clone(),
                text: delta_text(nanos),
            },
        };
        if tx.send(Utf8Bytes::from(event.encode())).is_err() {
            return;
        }
    }
}
