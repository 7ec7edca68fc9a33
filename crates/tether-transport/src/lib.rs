//! tether-transport: bytes ↔ the multiplexer. A transport authenticates a peer into an
//! identity, turns frames into requests and the outbound queue into frames. No policy here.
//!
//! * [`auth`] — tokens and Unix peers → identity, in constant time.
//! * [`ws`] — `GET /v1/ws` and `GET /healthz` (axum).
//! * [`unix`] — the Unix socket (JSON lines, mode 0600).
//! * [`lines`] — JSON-lines framing (Unix socket, stdio).
//! * [`driver`] — the per-connection read/write loop shared by all of them.
//! * [`client`] — a client for the CLI, tests and benchmarks.

pub mod auth;
pub mod client;
pub mod driver;
pub mod lines;
pub mod metrics;
pub mod unix;
pub mod ws;

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "refusing to listen on {0} without tokens: a non-loopback listener needs [[clients]] with tokens (or listen on 127.0.0.1)"
    )]
    ExposedWithoutTokens(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds a TCP listener, failing closed on exposure (hard rule 9).
pub async fn bind_tcp(
    addr: SocketAddr,
    auth: &auth::Authenticator,
) -> Result<tokio::net::TcpListener, ListenError> {
    if !addr.ip().is_loopback() && auth.is_open() {
        return Err(ListenError::ExposedWithoutTokens(addr));
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { addr, source })
}

/// Serves `router` on `listener` until `closing` fires.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    closing: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Writers batch frames and flush when their queue runs dry, so Nagle has nothing left to
    // coalesce; with it on, a flush can wait for the peer's delayed ACK (40 ms on Linux).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { closing.cancelled().await })
    .await
}
