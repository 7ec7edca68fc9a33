//! Drives one connection: frames in → [`Connection::handle_text`], outbound queue → frames out.
//! Shared by every transport; only framing differs (WebSocket messages, JSON lines).
//!
//! The reader and the writer run side by side. The writer only ever waits on the outbound
//! queue or on the socket, and a socket wait is abandoned the moment the connection is
//! evicted, so a dead peer can never wedge the task (hard rule 7).

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::future::Future;
use std::time::Duration;
use tether_mux::Connection;
use tether_mux::outbound::{Next, OutboundReceiver};
use tether_proto::{ErrorBody, MAX_MESSAGE_BYTES, Reason};
use tokio_util::sync::CancellationToken;

/// One inbound unit after framing.
#[derive(Debug)]
pub enum Inbound {
    Text(String),
    /// A message over the size limit; its content was discarded.
    TooLarge(usize),
    /// A frame that is not text (WebSocket binary).
    NotText,
}

/// The write half of a transport.
pub trait FrameWriter: Send {
    fn write(&mut self, frame: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Sends the transport's close signal (a close frame; for lines, a flush and shutdown).
    fn close(&mut self, code: u16, reason: &str) -> impl Future<Output = ()> + Send;
}

/// Longest the writer waits to deliver the final frames of a connection being closed.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Why a connection ended, as shown in `client_detached`.
const PEER_CLOSED: &str = "disconnected";

/// Runs the connection until the peer leaves, the connection is evicted, or `closing` fires
/// (server shutdown: queued frames are flushed, then a close frame is sent).
pub async fn drive<S, W>(
    conn: Connection,
    mut rx: OutboundReceiver,
    mut inbound: S,
    mut writer: W,
    closing: CancellationToken,
) where
    S: Stream<Item = std::io::Result<Inbound>> + Unpin + Send,
    W: FrameWriter,
{
    let outbound = conn.outbound().clone();
    let write_loop = async {
        loop {
            let next = tokio::select! {
                biased;
                _ = closing.cancelled() => {
                    flush_remaining(&mut rx, &mut writer).await;
                    let _ = tokio::time::timeout(CLOSE_GRACE, writer.close(1001, "server shutting down")).await;
                    return "server shutting down";
                }
                next = rx.next() => next,
            };
            match next {
                Next::Frame(frame) => {
                    let written = tokio::select! {
                        r = writer.write(frame) => r,
                        // Eviction abandons a blocked write; the loop then sends `evicted`.
                        _ = outbound.evicted() => Ok(()),
                    };
                    if written.is_err() {
                        return PEER_CLOSED;
                    }
                }
                Next::Evicted(frame) => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, writer.write(frame)).await;
                    let _ = tokio::time::timeout(CLOSE_GRACE, writer.close(1008, "evicted")).await;
                    return "evicted: slow consumer";
                }
                Next::Closed => return PEER_CLOSED,
            }
        }
    };
    let read_loop = async {
        while let Some(item) = inbound.next().await {
            match item {
                Ok(Inbound::Text(text)) => conn.handle_text(&text).await,
                Ok(Inbound::TooLarge(size)) => conn.reply_error(
                    None,
                    ErrorBody::new(
                        Reason::BadRequest,
                        format!("message is {size} bytes; the limit is {MAX_MESSAGE_BYTES} bytes"),
                    ),
                ),
                Ok(Inbound::NotText) => conn.reply_error(
                    None,
                    ErrorBody::new(
                        Reason::BadRequest,
                        "binary frames are not accepted; send one JSON object per text frame",
                    ),
                ),
                Err(_) => break,
            }
        }
        PEER_CLOSED
    };
    let reason = tokio::select! {
        r = write_loop => r,
        r = read_loop => r,
    };
    conn.close(reason).await;
}

/// Writes what is already queued, briefly, before a shutdown close.
async fn flush_remaining<W: FrameWriter>(rx: &mut OutboundReceiver, writer: &mut W) {
    let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
    loop {
        let next = tokio::time::timeout_at(deadline, async {
            tokio::time::timeout(Duration::from_millis(200), rx.next()).await
        })
        .await;
        match next {
            Ok(Ok(Next::Frame(frame))) => {
                if tokio::time::timeout_at(deadline, writer.write(frame))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            _ => return,
        }
    }
}
