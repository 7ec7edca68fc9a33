//! The measuring WebSocket client (raw tokio-tungstenite), used against the agent and against
//! the plain WebSocket server of hop B.
//!
//! Its reader stamps every `text_delta` frame the moment `next()` hands it over — before
//! anything else is done with it — under the sequence number that starts the delta's text.
//! Replies (`{"re": ...}`) go to the control side.

use super::timeline::{Clock, Stamps, leading_number};
use crate::client::{CLIENT_READ_BUFFER, Requester, Ws};
use anyhow::{Context, bail};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const TEXT_DELTA: &str = "\"event\":\"text_delta\"";
const TURN_ENDED: &str = "\"event\":\"turn_ended\"";

/// Why the reader stopped waiting.
#[derive(Debug)]
pub enum ReadEnd {
    /// Every expected `text_delta` arrived.
    All,
    /// The turn ended first (the frame).
    TurnEnded(String),
    /// The connection ended first.
    Closed(String),
}

pub struct WsClient {
    requests: Requester,
    end: Option<oneshot::Receiver<ReadEnd>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for WsClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl WsClient {
    /// Connects; the reader stamps into `received` and reports once `expected` deltas came.
    pub async fn connect(
        url: &str,
        received: Arc<Stamps>,
        expected: u64,
        clock: Clock,
    ) -> anyhow::Result<WsClient> {
        let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let (sink, stream) = socket.split();
        let (replies_tx, replies) = mpsc::unbounded_channel();
        let (end_tx, end) = oneshot::channel();
        let reader = tokio::spawn(read_loop(
            stream, received, expected, clock, replies_tx, end_tx,
        ));
        Ok(WsClient {
            requests: Requester::new(sink, replies),
            end: Some(end),
            reader,
        })
    }

    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        self.requests.send_text(text).await
    }

    /// Sends a request and waits for its reply; returns `result`, or fails on an error reply.
    pub async fn request(&mut self, op: &str, params: Value) -> anyhow::Result<Value> {
        self.requests.request(op, params).await
    }

    /// Waits (at most `limit`) until the expected deltas arrived or the stream ended.
    pub async fn wait_end(&mut self, limit: Duration) -> anyhow::Result<ReadEnd> {
        let end = self.end.take().context("already waited")?;
        match tokio::time::timeout(limit, end).await {
            Err(_) => bail!("the stream did not end within {} s", limit.as_secs()),
            Ok(Err(_)) => bail!("the reader stopped without reporting"),
            Ok(Ok(end)) => Ok(end),
        }
    }

    /// Closes politely (bounded).
    pub async fn close(mut self) {
        self.requests.close().await;
    }
}

/// The sequence number of a `text_delta` frame: the number its `text` starts with.
pub fn delta_number(frame: &str) -> Option<u64> {
    const KEY: &str = "\"text\":\"";
    let start = frame.rfind(KEY)? + KEY.len();
    leading_number(frame.get(start..)?)
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    received: Arc<Stamps>,
    expected: u64,
    clock: Clock,
    replies: mpsc::UnboundedSender<String>,
    end: oneshot::Sender<ReadEnd>,
) {
    let mut end = Some(end);
    let mut count = 0u64;
    let mut why = "the connection closed".to_owned();
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                why = format!("read failed: {e}");
                break;
            }
        };
        let now = clock.now_ns();
        let s = text.as_str();
        if s.contains(TEXT_DELTA) {
            if let Some(seq) = delta_number(s) {
                received.set(seq, now);
            }
            count += 1;
            if count == expected
                && let Some(tx) = end.take()
            {
                let _ = tx.send(ReadEnd::All);
            }
        } else if s.starts_with("{\"re\":") {
            let _ = replies.send(s.to_owned());
        } else if s.contains(TURN_ENDED)
            && let Some(tx) = end.take()
        {
            let _ = tx.send(ReadEnd::TurnEnded(s.to_owned()));
        }
    }
    if let Some(tx) = end.take() {
        let _ = tx.send(ReadEnd::Closed(format!(
            "{why} after {count} of {expected} deltas"
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_number_is_read_from_a_real_event_frame() {
        let frame = tether_proto::Event {
            session_id: "s".into(),
            seq: 7,
            ts: "2026-01-01T00:00:00.000Z".into(),
            body: tether_proto::EventBody::TextDelta {
                turn_id: "t".into(),
                text: super::super::timeline::chunk_text(815),
            },
        }
        .encode();
        assert!(frame.contains(TEXT_DELTA), "{frame}");
        assert_eq!(delta_number(&frame), Some(815));
    }
}
