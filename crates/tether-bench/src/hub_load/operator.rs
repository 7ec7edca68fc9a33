//! An operator on a hub's `/v1/ws` (client protocol, docs/protocol.md "Hub operator API"),
//! for the session phase of `tether-bench hub`: requests with their reply times, and every
//! session event stamped the moment its frame is read off the socket.
//!
//! A reader task owns the socket's read half: each text frame is stamped with
//! [`Instant::now`] before it is parsed; a reply goes to the request waiting for its `re`, an
//! event (it has a `seq`) into [`Operator::arrivals`], a control frame into the same stream
//! with no seq (`evicted`, `log_unavailable`, ... are failures of the run).

use anyhow::{Context, bail};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

type Ws = WebSocketStream<TcpStream>;
type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<(Instant, Value)>>>>;

/// A frame from the hub that is not a reply.
pub struct Arrival {
    pub at: Instant,
    pub session_id: String,
    /// `None` for a control frame.
    pub seq: Option<u64>,
    /// The `event` name.
    pub event: String,
}

pub struct Operator {
    sink: SplitSink<Ws, Message>,
    waiters: Waiters,
    next_id: u64,
    reader: tokio::task::JoinHandle<()>,
    pub arrivals: mpsc::UnboundedReceiver<Arrival>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Connect plus upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Operator {
    pub async fn connect(addr: SocketAddr, token: &str) -> anyhow::Result<Operator> {
        let mut request = format!("ws://{addr}/v1/ws")
            .into_client_request()
            .context("building the operator request")?;
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).context("operator token")?,
        );
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("operator: connect timed out")?
            .with_context(|| format!("operator: connecting to {addr}"))?;
        let _ = tcp.set_nodelay(true);
        let (ws, _) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::client_async(request, tcp),
        )
        .await
        .context("operator: upgrade timed out")?
        .with_context(|| format!("operator: upgrading on {addr}/v1/ws"))?;
        let (sink, mut stream) = ws.split();
        let waiters: Waiters = Arc::default();
        let (tx, arrivals) = mpsc::unbounded_channel();
        let w = waiters.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let at = Instant::now();
                let Message::Text(text) = msg else {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if let Some(re) = v.get("re") {
                    let waiter = re
                        .as_u64()
                        .and_then(|id| w.lock().ok().and_then(|mut m| m.remove(&id)));
                    if let Some(waiter) = waiter {
                        let _ = waiter.send((at, v));
                    }
                    continue;
                }
                let arrival = Arrival {
                    at,
                    session_id: v["session_id"].as_str().unwrap_or_default().to_owned(),
                    seq: v["seq"].as_u64(),
                    event: v["event"].as_str().unwrap_or_default().to_owned(),
                };
                if tx.send(arrival).is_err() {
                    break;
                }
            }
        });
        Ok(Operator {
            sink,
            waiters,
            next_id: 1,
            reader,
            arrivals,
        })
    }

    /// Sends `op` and waits (at most `timeout`) for its reply: the `result`, and the time
    /// from just before the send to the reply frame's arrival. A refusal is an error naming
    /// its reason.
    pub async fn request(
        &mut self,
        op: &str,
        params: Value,
        timeout: Duration,
    ) -> anyhow::Result<(Value, Duration)> {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .map_err(|_| anyhow::anyhow!("operator: waiter map poisoned"))?
            .insert(id, tx);
        let mut frame = json!({"id": id, "op": op});
        if let (Some(f), Value::Object(p)) = (frame.as_object_mut(), params) {
            f.extend(p);
        }
        let sent = Instant::now();
        self.sink
            .send(Message::Text(frame.to_string().into()))
            .await
            .with_context(|| format!("operator: sending {op}"))?;
        let (at, reply) = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => bail!("operator: the connection closed before the reply to {op}"),
            Err(_) => {
                if let Ok(mut m) = self.waiters.lock() {
                    m.remove(&id);
                }
                bail!("operator: no reply to {op} within {} s", timeout.as_secs())
            }
        };
        if reply["ok"].as_bool() != Some(true) {
            let e = &reply["error"];
            bail!(
                "{op} refused: {}: {}",
                e["reason"].as_str().unwrap_or("?"),
                e["message"].as_str().unwrap_or("")
            );
        }
        Ok((
            reply.get("result").cloned().unwrap_or(Value::Null),
            at.duration_since(sent),
        ))
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.send(Message::Close(None)))
            .await;
    }
}
