//! tether-transport: bytes ↔ the multiplexer. A transport authenticates a peer into an
//! identity, turns frames into requests and the outbound queue into frames. No policy here.
//!
//! * [`auth`] — tokens and Unix peers → identity, in constant time.
//! * [`ws`] — `GET /v1/ws` and `GET /healthz` (axum).
//! * [`unix`] — the Unix socket (JSON lines, mode 0600).
//! * [`lines`] — JSON-lines framing (Unix socket, stdio).
//! * [`driver`] — the per-connection read/write loop shared by all of them.
//! * [`serve`] — the HTTP accept loop of the agent and the hub: request deadline, cap on
//!   connections still in their request.
//! * [`limits`] — connection caps, in total and per credential.
//! * [`client`] — a client for the CLI, tests and benchmarks.
//! * [`local`] — a client connection inside the serving process (the agent's `POST /mcp`).

pub mod auth;
pub mod client;
pub mod driver;
pub mod limits;
pub mod lines;
pub mod local;
pub mod metrics;
pub mod serve;
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

/// Serves `router` on `listener` (plain HTTP, default [`serve::ServeLimits`]) until `closing`
/// fires.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    closing: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    serve::serve(
        listener,
        router,
        serve::Plain,
        serve::ServeLimits::default(),
        closing,
    )
    .await
}

/// Raises this process's soft limit on open files to its hard limit (each connection is a
/// descriptor; distributions often start services at 1024). Returns (before, after).
#[allow(unsafe_code)]
pub fn raise_open_files_limit() -> std::io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` only writes the `rlimit` we own and pass by valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` only reads the `rlimit` we pass by valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok((before, limit.rlim_cur))
}
