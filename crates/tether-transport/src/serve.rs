//! The HTTP listener of the agent and of the hub (plain TCP, or TLS through a [`Handshake`]):
//! one accept loop that bounds what a connection may cost before it has proved anything.
//!
//! * Every connection must finish its TLS handshake, then each HTTP request head, within
//!   [`ServeLimits::request_timeout`]; an idle keep-alive connection is closed after the same
//!   time. A slowloris cannot hold a descriptor longer than that. Nor can a client that
//!   keeps a connection busy otherwise (requests trickled just in time, responses read ever
//!   so slowly): a connection stays plain HTTP for [`ServeLimits::http_lifetime`] at most.
//! * At most [`ServeLimits::max_pending`] connections may be at that stage at once (in the
//!   handshake, in a request, or idle between requests). Past it a new connection is answered
//!   `503 overloaded` and closed at once (under TLS: just closed). A WebSocket that completed
//!   its upgrade leaves the count: from there the per-credential caps of
//!   [`crate::limits`] apply.
//! * `closing` stops the accept loop and shuts every HTTP connection down gracefully;
//!   upgraded connections watch `closing` themselves.
//! * A handler that has authenticated its peer may lift the lifetime and leave the pending
//!   count with [`LongLived::grant`] (every request carries one): an authenticated response
//!   that streams for as long as it must (the MCP endpoint's answer to a tool call that waits
//!   for a turn) is then treated like an upgraded WebSocket. The idle timeout between
//!   requests still applies.
//!
//! Handlers keep `ConnectInfo<SocketAddr>` (the peer's address), as with `axum::serve`.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a connection may take for its TLS handshake, for each request head, and longest it
/// may sit idle between requests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection may stay plain HTTP (it is shut down gracefully then). Every route
/// answers at once; a WebSocket leaves HTTP with its upgrade.
pub const HTTP_LIFETIME: Duration = Duration::from_secs(60);
/// Connections that may be in their handshake or request (not yet a WebSocket) at once.
pub const DEFAULT_MAX_PENDING: usize = 256;

/// What a connection may cost before it becomes a WebSocket session.
#[derive(Clone, Debug)]
pub struct ServeLimits {
    pub request_timeout: Duration,
    pub http_lifetime: Duration,
    pub max_pending: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            request_timeout: REQUEST_TIMEOUT,
            http_lifetime: HTTP_LIFETIME,
            max_pending: DEFAULT_MAX_PENDING,
        }
    }
}

/// Turns an accepted TCP stream into the stream HTTP is spoken on.
pub trait Handshake: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Plain TCP: the stream itself; TLS: the stream after the server handshake.
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
    /// Whether a refused connection can be told so in plain HTTP (not under TLS).
    fn plaintext(&self) -> bool;
}

/// Plain HTTP.
pub struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;

    async fn handshake(&self, tcp: TcpStream) -> std::io::Result<TcpStream> {
        Ok(tcp)
    }

    fn plaintext(&self) -> bool {
        true
    }
}

/// Lets a request handler take its connection out of the plain-HTTP limits once it has
/// authenticated the peer (see the module docs). A request extension.
#[derive(Clone, Debug, Default)]
pub struct LongLived(CancellationToken);

impl LongLived {
    /// From now on the connection is not cut at [`ServeLimits::http_lifetime`] and no longer
    /// counts against [`ServeLimits::max_pending`]. Only for authenticated peers.
    pub fn grant(&self) {
        self.0.cancel();
    }

    /// Whether [`grant`](Self::grant) was called.
    pub fn granted(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// What a connection past the pending cap gets, written without waiting.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 91\r\n\r\n\
{\"reason\":\"overloaded\",\"message\":\"too many connections are opening at once; retry shortly\"}";

/// Serves `router` on `listener` until `closing` fires; then waits (bounded by the request
/// timeout) for the HTTP connections to finish.
pub async fn serve<H: Handshake>(
    listener: TcpListener,
    router: Router,
    handshake: H,
    limits: ServeLimits,
    closing: CancellationToken,
) -> std::io::Result<()> {
    let handshake = Arc::new(handshake);
    let pending = Arc::new(Semaphore::new(limits.max_pending));
    let tracker = TaskTracker::new();
    let mut last_busy_warning: Option<tokio::time::Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = closing.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of descriptors, most likely: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Writers batch frames and flush when their queue runs dry, so Nagle has nothing left
        // to coalesce; with it on, a flush can wait for the peer's delayed ACK (40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            if handshake.plaintext() {
                // A fresh socket's send buffer is empty: this never waits.
                let _ = tcp.try_write(BUSY);
            }
            let now = tokio::time::Instant::now();
            if last_busy_warning.is_none_or(|t| now - t >= Duration::from_secs(10)) {
                last_busy_warning = Some(now);
                tracing::warn!(
                    max_pending = limits.max_pending,
                    "refusing connections: too many are still in their handshake or request"
                );
            }
            continue;
        };
        let router = router.clone();
        let handshake = handshake.clone();
        let closing = closing.clone();
        let limits = limits.clone();
        // Released when the connection ends, becomes a WebSocket (hyper hands the socket
        // over and the future completes), or is granted a long life.
        tracker.spawn(async move {
            serve_connection(&*handshake, tcp, peer, router, &limits, closing, permit).await;
        });
    }
    drop(listener);
    tracker.close();
    // Connections were told to finish (see `serve_connection`); one that does not is cut
    // after a request timeout, so this wait is bounded by it.
    let _ = tokio::time::timeout(limits.request_timeout * 2, tracker.wait()).await;
    Ok(())
}

/// Accept errors that concern only the connection being accepted.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

async fn serve_connection<H: Handshake>(
    handshake: &H,
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: &ServeLimits,
    closing: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut permit = Some(permit);
    let timeout = limits.request_timeout;
    let io = match tokio::time::timeout(timeout, handshake.handshake(tcp)).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    let long_lived = LongLived::default();
    let service = WithPeer {
        inner: TowerToHyperService::new(router),
        peer,
        long_lived: long_lived.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timer also bounds the wait for the next request on a kept-alive connection.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(limits.http_lifetime);
    tokio::pin!(lifetime);
    let ended = loop {
        tokio::select! {
            r = conn.as_mut() => break Some(r),
            _ = closing.cancelled() => break None,
            _ = long_lived.0.cancelled(), if permit.is_some() => {
                tracing::debug!(%peer, "authenticated long-lived HTTP connection");
                permit = None;
            }
            _ = &mut lifetime, if !long_lived.granted() => {
                tracing::debug!(%peer, "connection open too long as plain HTTP; closing it");
                break None;
            }
        }
    };
    let result = match ended {
        Some(r) => r,
        None => {
            // Finishes the request in progress, if any; a peer that will not take the answer
            // is cut after a request timeout.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(timeout, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

/// The router, with the peer's address in every request (`ConnectInfo<SocketAddr>`).
#[derive(Clone)]
struct WithPeer {
    inner: TowerToHyperService<Router>,
    peer: SocketAddr,
    long_lived: LongLived,
}

impl hyper::service::Service<hyper::Request<Incoming>> for WithPeer {
    type Response = <TowerToHyperService<Router> as hyper::service::Service<
        hyper::Request<Incoming>,
    >>::Response;
    type Error =
        <TowerToHyperService<Router> as hyper::service::Service<hyper::Request<Incoming>>>::Error;
    type Future =
        <TowerToHyperService<Router> as hyper::service::Service<hyper::Request<Incoming>>>::Future;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req.extensions_mut().insert(self.long_lived.clone());
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["reason"], "overloaded");
    }
}
