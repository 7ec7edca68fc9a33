//! The WebSocket transport (`GET /v1/ws`) and `GET /healthz`, as an axum router.

use crate::auth::Authenticator;
use crate::driver::{FrameWriter, Handler, Inbound, drive};
use crate::limits::{ConnectionLimits, LimitError};
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tether_mux::outbound::OutboundReceiver;
use tether_mux::{Identity, Mux};
use tether_proto::MAX_MESSAGE_BYTES;
use tokio_util::sync::CancellationToken;

/// Messages above this are cut off by the WebSocket layer itself (the connection closes);
/// between `MAX_MESSAGE_BYTES` and this they are refused with `bad_request` and the
/// connection stays usable.
pub const HARD_MESSAGE_LIMIT: usize = 16 * MAX_MESSAGE_BYTES;

/// Extra fields for `/healthz` (e.g. the hub link's state).
pub type HealthFn = Arc<dyn Fn() -> Value + Send + Sync>;

/// Extra samples for `/metrics` (e.g. the hub link's).
pub type MetricsFn = Arc<dyn Fn(&mut crate::metrics::PromText) + Send + Sync>;

/// Shared state of the HTTP listener.
#[derive(Clone)]
pub struct WsState {
    pub mux: Mux,
    pub auth: Arc<Authenticator>,
    /// Fires when the server shuts down: connections flush and send a close frame.
    pub closing: CancellationToken,
    /// Connection caps, in total and per credential (shared with the Unix socket).
    pub limits: Arc<ConnectionLimits>,
    pub health: Option<HealthFn>,
    pub metrics: Option<MetricsFn>,
}

impl WsState {
    pub fn new(mux: Mux, auth: Authenticator, closing: CancellationToken) -> Self {
        WsState {
            mux,
            auth: Arc::new(auth),
            closing,
            limits: Arc::new(ConnectionLimits::default()),
            health: None,
            metrics: None,
        }
    }
}

/// Read buffer of a client-protocol WebSocket. tungstenite's default (128 KiB, zeroed on
/// every read) made an idle connection cost ~138 KiB (`tether-bench idle`); requests are
/// small, and the buffer grows to hold a large one (read 1 KiB at a time).
pub const READ_BUFFER_BYTES: usize = 1024;
/// Frames written are batched up to this much before going to the socket (the driver also
/// flushes whenever its queue runs dry). The buffer is allocated on the first write, and
/// tungstenite keeps its largest size (16–32 KiB after a burst; it has no way to shrink it).
/// 1 KiB would keep that to a few KiB but cost 28 % more CPU per frame in fan-out
/// (`tether-bench fanout --clients 100`: 0.72 against 0.56 µs per frame).
pub const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// The settings of every client-protocol WebSocket (the agent's and the hub's `/v1/ws`): the
/// hard size limit of PROTOCOL.md §1 and small buffers.
pub fn configure(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.max_message_size(HARD_MESSAGE_LIMIT)
        .max_frame_size(HARD_MESSAGE_LIMIT)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
}

/// The HTTP refusal of a connection past a cap.
pub fn refused(e: &LimitError) -> Response {
    http_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        &e.to_string(),
    )
}

/// `/v1/ws` and `/healthz`.
pub fn router(state: WsState) -> Router {
    Router::new()
        .route("/v1/ws", get(ws_handler))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The bearer token of a request: the `Authorization` header, else `?token=`.
pub fn request_token(headers: &HeaderMap, query_token: Option<String>) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
        .or(query_token)
}

/// A JSON error response in the client protocol's error shape.
pub fn http_error(status: StatusCode, reason: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"reason": reason, "message": message})),
    )
        .into_response()
}

async fn ws_handler(
    State(state): State<WsState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let token = request_token(&headers, query.token);
    let identity = match state.auth.authenticate(token.as_deref(), peer) {
        Ok(id) => id,
        Err(e) => return http_error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()),
    };
    if state.closing.is_cancelled() {
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "shutting down",
        );
    }
    let permit = match state.limits.acquire(&identity.principal) {
        Ok(p) => p,
        Err(e) => return refused(&e),
    };
    // `map`, not an `async` block awaiting the future: that would hold the connection's
    // whole state twice for its lifetime (see `serve_handler`).
    configure(ws).on_upgrade(move |socket| {
        serve_socket(socket, state.mux, identity, state.closing).map(move |()| drop(permit))
    })
}

/// Serves one upgraded WebSocket for `identity`.
pub fn serve_socket(
    socket: WebSocket,
    mux: Mux,
    identity: Identity,
    closing: CancellationToken,
) -> impl Future<Output = ()> {
    let (conn, rx) = mux.connect(identity);
    serve_handler(socket, conn, rx, closing)
}

/// Serves one upgraded WebSocket with any connection handler (the hub's operators use this
/// with their own handler): JSON text frames, the size limits of PROTOCOL.md §1, and the
/// close codes of §3.
///
/// A plain function returning the driver's future, not an `async fn`: this future lives as
/// long as the connection, and each `async` layer around it would keep its own copy of the
/// arguments it passed down (measured: 2.6 KiB per connection instead of 1 KiB).
pub fn serve_handler(
    socket: WebSocket,
    handler: impl Handler,
    rx: OutboundReceiver,
    closing: CancellationToken,
) -> impl Future<Output = ()> {
    let (sink, stream) = socket.split();
    let inbound = futures_util::stream::unfold(
        (stream, None::<tokio::time::Instant>),
        |(mut stream, mut answering)| async move {
            loop {
                let next = match answering {
                    None => stream.next().await,
                    // The peer has closed: reading on is what sends tungstenite's answer (it
                    // is queued when the Close frame is read and flushed by the next read),
                    // after which the stream ends. Bounded, in case the peer stops reading.
                    Some(deadline) => tokio::time::timeout_at(deadline, stream.next())
                        .await
                        .ok()
                        .flatten()
                        .filter(Result::is_ok),
                };
                let item = match next? {
                    Ok(Message::Close(_)) => {
                        answering.get_or_insert(
                            tokio::time::Instant::now() + crate::driver::CLOSE_GRACE,
                        );
                        continue;
                    }
                    Ok(Message::Text(t)) if t.len() > MAX_MESSAGE_BYTES => {
                        Ok(Inbound::TooLarge(t.len()))
                    }
                    Ok(Message::Text(t)) => Ok(Inbound::Text(t.as_str().to_owned())),
                    Ok(Message::Binary(_)) => Ok(Inbound::NotText),
                    Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                    Err(e) => match refusal(e) {
                        Ok((code, reason)) => Ok(Inbound::Fatal { code, reason }),
                        Err(e) => Err(e),
                    },
                };
                return Some((item, (stream, answering)));
            }
        },
    );
    drive(handler, rx, Box::pin(inbound), WsWriter(sink), closing)
}

/// The close code for a read error the peer caused, or the error (the connection just ends:
/// the peer went away, the socket failed).
fn refusal(e: axum::Error) -> Result<(u16, &'static str), std::io::Error> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    let e = match e.into_inner().downcast::<WsError>() {
        Ok(e) => *e,
        Err(e) => return Err(std::io::Error::other(e)),
    };
    match e {
        WsError::Capacity(_) => Ok((1009, "message over the size limit")),
        WsError::Utf8(_) => Ok((1007, "invalid UTF-8 in a text frame")),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Err(std::io::Error::other(e))
        }
        WsError::Protocol(_) => Ok((1002, "WebSocket protocol violation")),
        other => Err(std::io::Error::other(other)),
    }
}

struct WsWriter(SplitSink<WebSocket, Message>);

impl FrameWriter for WsWriter {
    async fn write(&mut self, frame: Bytes) -> std::io::Result<()> {
        let text = Utf8Bytes::try_from(frame).map_err(std::io::Error::other)?;
        self.0
            .send(Message::Text(text))
            .await
            .map_err(std::io::Error::other)
    }

    async fn feed(&mut self, frame: Bytes) -> std::io::Result<()> {
        let text = Utf8Bytes::try_from(frame).map_err(std::io::Error::other)?;
        self.0
            .feed(Message::Text(text))
            .await
            .map_err(std::io::Error::other)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().await.map_err(std::io::Error::other)
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let _ = self
            .0
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            })))
            .await;
    }
}

async fn healthz(State(state): State<WsState>) -> Response {
    let sessions = state.mux.list_sessions().sessions.len();
    let mut body = json!({
        "status": "ok",
        "server": state.mux.config().server,
        "sessions": sessions,
        "active_sessions": state.mux.active_sessions(),
    });
    if let (Some(extra), Some(map)) = (state.health.as_ref(), body.as_object_mut())
        && let Value::Object(fields) = extra()
    {
        map.extend(fields);
    }
    axum::Json(body).into_response()
}

async fn metrics(State(state): State<WsState>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let m = state.mux.metrics();
    let sessions = state.mux.list_sessions().sessions;
    let open = m
        .connections_opened
        .load(Relaxed)
        .saturating_sub(m.connections_closed.load(Relaxed));
    let mut text = crate::metrics::PromText::new();
    text.gauge(
        "tether_agent_sessions",
        "Sessions held (any state).",
        sessions.len() as f64,
    )
    .gauge(
        "tether_agent_sessions_active",
        "Sessions with a turn running.",
        state.mux.active_sessions() as f64,
    )
    .gauge(
        "tether_agent_clients_connected",
        "Client connections open now.",
        open as f64,
    )
    .counter(
        "tether_agent_connections_total",
        "Client connections accepted.",
        m.connections_opened.load(Relaxed),
    )
    .counter(
        "tether_agent_events_total",
        "Session events committed and broadcast.",
        m.events_published.load(Relaxed),
    )
    .counter(
        "tether_agent_evictions_total",
        "Clients evicted for not keeping up.",
        m.evictions.load(Relaxed),
    );
    if let Some(extra) = &state.metrics {
        extra(&mut text);
    }
    crate::metrics::response(text.finish())
}
