//! Drives one connection: frames in → [`Handler::handle_text`], outbound queue → frames out.
//! Shared by every transport; only framing differs (WebSocket messages, JSON lines).
//!
//! The reader and the writer run side by side. The writer only ever waits on the outbound
//! queue or on the socket, and once the connection is evicted every socket wait is bounded by
//! the close grace, so a dead peer can never wedge the task (hard rule 7). A frame being
//! written when the eviction comes is finished within that grace rather than cut off, so the
//! peer never sees a torn frame before `evicted`.
//!
//! Closing: a peer's close (a WebSocket Close frame) ends the reader, which goes on reading
//! just long enough for the transport to answer it — queued frames are not sent after it;
//! a framing violation the connection cannot survive ([`Inbound::Fatal`]) is answered with
//! a close carrying its code.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use std::future::Future;
use std::time::Duration;
use tether_mux::Connection;
use tether_mux::outbound::Outbound;
use tether_mux::outbound::{Next, OutboundReceiver};
use tether_proto::RequestId;
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
    /// A line that is not UTF-8 (JSON lines; the framing survives it).
    NotUtf8,
    /// The peer broke the framing in a way the connection cannot survive (a WebSocket message
    /// over the hard limit, a text frame that is not UTF-8): the connection is closed with
    /// this close code and reason.
    Fatal {
        code: u16,
        reason: &'static str,
    },
}

/// What a connection does with what it reads: the agent's multiplexer connection, or the
/// hub's operator connection.
pub trait Handler: Send + Sync {
    /// Handles one text frame; the reply goes to [`outbound`](Self::outbound).
    fn handle_text<'a>(&'a self, text: &'a str) -> BoxFuture<'a, ()>;
    /// Replies with an error to a frame that could not be read as a request.
    fn reply_error(&self, re: Option<RequestId>, error: ErrorBody);
    fn outbound(&self) -> &Outbound;
    /// The peer went away (or was evicted): detach it from everything.
    fn close<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, ()>;
}

impl Handler for Connection {
    fn handle_text<'a>(&'a self, text: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Connection::handle_text(self, text))
    }

    fn reply_error(&self, re: Option<RequestId>, error: ErrorBody) {
        Connection::reply_error(self, re, error)
    }

    fn outbound(&self) -> &Outbound {
        Connection::outbound(self)
    }

    fn close<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Connection::close(self, reason))
    }
}

/// The write half of a transport.
pub trait FrameWriter: Send {
    fn write(&mut self, frame: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Queues `frame` behind earlier ones; the next `flush` (or `write`) sends it. Writers
    /// without a buffer of their own just write (the default).
    fn feed(&mut self, frame: Bytes) -> impl Future<Output = std::io::Result<()>> + Send {
        self.write(frame)
    }
    /// Sends what `feed` queued.
    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send {
        async { Ok(()) }
    }
    /// Sends the transport's close signal (a close frame; for lines, a flush and shutdown).
    fn close(&mut self, code: u16, reason: &str) -> impl Future<Output = ()> + Send;
}

/// Longest the writer waits to deliver the final frames of a connection being closed.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Why a connection ended, as shown in `client_detached`.
const PEER_CLOSED: &str = "disconnected";
const EVICTED: &str = "evicted: slow consumer";

/// How one half of a connection ended.
enum End {
    /// The writer stopped: the reason shown, and whether it was the socket failing under it.
    Writer(&'static str, WriteEnd),
    /// The reader reached the end of the peer's stream (after its close, or without one).
    PeerGone,
    /// The reader found a violation the connection cannot survive: close with this.
    Refused(u16, &'static str),
}

#[derive(PartialEq, Eq)]
enum WriteEnd {
    /// The writer said goodbye itself (eviction, shutdown) or the queue was closed.
    Done,
    /// A write to the socket failed.
    Failed,
}

/// Frames the writer takes straight off a non-empty queue before it looks at the shutdown
/// signal again. Arming that wait (and the eviction wait around a write) locks mutexes shared
/// with every other connection, which costs more than writing a small frame; a ready frame is
/// written without them, and shutdown is still noticed within this many frames.
const READY_BURST: u32 = 64;

/// Runs the connection until the peer leaves, the connection is evicted, or `closing` fires
/// (server shutdown: queued frames are flushed, then a close frame is sent).
pub async fn drive<S, W>(
    conn: impl Handler,
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
        let mut burst = 0;
        // Frames fed since the last flush: they go out (one write for many frames) as soon as
        // the queue has nothing ready, and at least every READY_BURST frames.
        let mut unflushed = false;
        loop {
            let ready = if burst < READY_BURST {
                rx.try_next()
            } else {
                None
            };
            let next = match ready {
                Some(next) => {
                    burst += 1;
                    next
                }
                None => {
                    burst = 0;
                    if std::mem::take(&mut unflushed) {
                        let flush = writer.flush();
                        tokio::pin!(flush);
                        let flushed = tokio::select! {
                            biased;
                            r = &mut flush => r,
                            _ = outbound.evicted() => {
                                match Box::pin(tokio::time::timeout(CLOSE_GRACE, &mut flush)).await {
                                    Ok(r) => r,
                                    Err(_) => return End::Writer(EVICTED, WriteEnd::Done),
                                }
                            }
                        };
                        if flushed.is_err() {
                            return End::Writer(PEER_CLOSED, WriteEnd::Failed);
                        }
                    }
                    tokio::select! {
                        biased;
                        _ = closing.cancelled() => {
                            Box::pin(flush_remaining(&mut rx, &mut writer)).await;
                            let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, writer.close(1001, "server shutting down"))).await;
                            return End::Writer("server shutting down", WriteEnd::Done);
                        }
                        next = rx.next() => next,
                    }
                }
            };
            match next {
                Next::Frame(frame) => {
                    unflushed = true;
                    let write = writer.feed(frame);
                    tokio::pin!(write);
                    // The write is polled first: when the socket takes the frame at once, the
                    // eviction wait is never armed.
                    let written = tokio::select! {
                        biased;
                        r = &mut write => r,
                        // Evicted while this frame is stuck on a slow peer. Abandoning the
                        // write could leave half a frame on the wire (a JSON line cut short,
                        // with `evicted` glued to it): finish it, bounded like the final frame,
                        // then the loop sends `evicted`. If even that times out, close
                        // without another byte.
                        _ = outbound.evicted() => {
                            match Box::pin(tokio::time::timeout(CLOSE_GRACE, &mut write)).await {
                                Ok(r) => r,
                                Err(_) => return End::Writer(EVICTED, WriteEnd::Done),
                            }
                        }
                    };
                    if written.is_err() {
                        return End::Writer(PEER_CLOSED, WriteEnd::Failed);
                    }
                }
                Next::Evicted(frame) => {
                    let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, writer.write(frame))).await;
                    let _ = Box::pin(tokio::time::timeout(
                        CLOSE_GRACE,
                        writer.close(1008, "evicted"),
                    ))
                    .await;
                    return End::Writer(EVICTED, WriteEnd::Done);
                }
                Next::Closed => {
                    let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, writer.flush())).await;
                    return End::Writer(PEER_CLOSED, WriteEnd::Done);
                }
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
                Ok(Inbound::NotUtf8) => conn.reply_error(
                    None,
                    ErrorBody::new(
                        Reason::BadRequest,
                        "invalid UTF-8: send one JSON object per line, encoded in UTF-8",
                    ),
                ),
                Ok(Inbound::Fatal { code, reason }) => return End::Refused(code, reason),
                Err(_) => break,
            }
        }
        End::PeerGone
    };
    // Each half is polled only when its own wake-up fired. A `select!` would poll both
    // whenever either woke: every outbound frame would also poll the socket's read side, and
    // tungstenite re-zeroes its read buffer on every read attempt (measured: a tenth of the
    // fan-out CPU).
    let mut halves: FuturesUnordered<BoxFuture<'_, End>> = FuturesUnordered::new();
    halves.push(Box::pin(write_loop));
    halves.push(Box::pin(read_loop));
    let mut end = halves.next().await.unwrap_or(End::PeerGone);
    // The waits below happen once, at the end: boxed, they do not add to the size of this
    // future, which every idle connection carries.
    if let End::Writer(_, WriteEnd::Failed) = end {
        // The socket failed under the writer. Most often the peer's Close frame got there
        // first (nothing may be sent after it): the reader is answering it and will reach the
        // end of the stream. Give it the grace to finish the closing handshake.
        if let Ok(Some(reader)) = Box::pin(tokio::time::timeout(CLOSE_GRACE, halves.next())).await {
            end = reader;
        }
    }
    drop(halves);
    let reason = match end {
        End::Writer(reason, _) => reason,
        End::PeerGone => PEER_CLOSED,
        End::Refused(code, why) => {
            // Queued frames may still be in the writer; they go out before the close frame.
            let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, writer.close(code, why))).await;
            why
        }
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
