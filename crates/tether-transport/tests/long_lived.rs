//! An authenticated HTTP response may stream for longer than a plain HTTP connection may
//! live (`serve::LongLived`, issue 11: the MCP endpoint answers a tool call that waits for a
//! turn). Without the grant the connection is still cut at its lifetime. Paused time: the
//! clock moves only when the runtime is idle.

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Query};
use axum::routing::get;
use serde::Deserialize;
use std::time::Duration;
use tether_transport::serve::{LongLived, Plain, ServeLimits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const LIFETIME: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the response takes: well past the lifetime plus the grace after it.
const RESPONSE: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct Grant {
    grant: bool,
}

/// Sends `first`, waits, sends `last`: a response that streams for [`RESPONSE`].
async fn slow(Extension(long_lived): Extension<LongLived>, Query(q): Query<Grant>) -> Body {
    if q.grant {
        long_lived.grant();
    }
    let chunks = futures_util::stream::unfold(0u8, |step| async move {
        match step {
            0 => Some((Ok::<_, std::io::Error>("first\n"), 1)),
            1 => {
                tokio::time::sleep(RESPONSE).await;
                Some((Ok("last\n"), 2))
            }
            _ => None,
        }
    });
    Body::from_stream(chunks)
}

async fn get_slow(addr: std::net::SocketAddr, grant: bool) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET /slow?grant={grant} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // Virtual time: this bound only matters if the server never ends the response.
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    // The chunked body's terminator: the response is complete.
                    if out.ends_with(b"0\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(RESPONSE * 3, read)
        .await
        .expect("the server neither finished nor cut the response");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(start_paused = true)]
async fn a_granted_connection_outlives_the_plain_http_lifetime() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/slow", get(slow));
    let closing = CancellationToken::new();
    let limits = ServeLimits {
        request_timeout: REQUEST_TIMEOUT,
        http_lifetime: LIFETIME,
        max_pending: 8,
    };
    let server = tokio::spawn(serve(listener, router, Plain, limits, closing.clone()));

    // Not granted: cut at the lifetime (after the grace for the request in flight).
    let started = tokio::time::Instant::now();
    let cut = get_slow(addr, false).await;
    assert!(cut.contains("first"), "{cut}");
    assert!(
        !cut.contains("last"),
        "the response outlived the lifetime: {cut}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= LIFETIME && elapsed < RESPONSE,
        "cut after {elapsed:?}"
    );

    // Granted: the whole response arrives.
    let started = tokio::time::Instant::now();
    let whole = get_slow(addr, true).await;
    assert!(whole.contains("first") && whole.contains("last"), "{whole}");
    assert!(started.elapsed() >= RESPONSE);

    closing.cancel();
    server.await.expect("join").expect("serve");
}
