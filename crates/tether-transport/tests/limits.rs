//! Connection limits (issue 9.3, 9.4): a deadline on the HTTP request of every connection,
//! a cap on connections still in their request, and a cap per credential, so neither a
//! slowloris nor one chatty token can lock the humans out.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use tether_transport::serve::{HTTP_LIFETIME, REQUEST_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Connections that send half a request line and stall.
const STALLED: usize = 200;

/// Opens a connection that sends the start of a request and then nothing.
async fn stall(agent: &Agent) -> TcpStream {
    let mut s = TcpStream::connect(agent.addr).await.expect("connect");
    s.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    s
}

/// Reads until the server ends the connection; what it sent.
async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A slowloris holds connections open by never finishing its request. The agent still serves
/// a real client meanwhile, and closes every stalled connection once the request deadline has
/// passed — not before. Paused time: the clock moves only when the runtime is idle.
#[tokio::test(start_paused = true)]
async fn stalled_requests_are_closed_after_the_deadline_and_others_are_served() {
    let agent = Agent::start(Options::default()).await;
    let started = tokio::time::Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(stall(&agent).await);
    }
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    alice.request("hello", json!({})).await.expect("hello");
    for s in &mut stalled {
        // Virtual time: this bound only matters when the server has no deadline at all.
        tokio::time::timeout(REQUEST_TIMEOUT * 3, read_to_end(s))
            .await
            .expect("a stalled connection was never closed");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= REQUEST_TIMEOUT,
        "stalled connections were closed after {elapsed:?}, before the deadline"
    );
    assert!(
        elapsed < REQUEST_TIMEOUT * 2,
        "stalled connections were closed only after {elapsed:?}"
    );
    // The real client was not disturbed.
    alice.request("hello", json!({})).await.expect("hello");
    agent.stop().await;
}

/// An idle keep-alive connection (a request answered, then nothing) is closed by the same
/// deadline: it holds a file descriptor like any other.
#[tokio::test(start_paused = true)]
async fn idle_keep_alive_connections_are_closed_after_the_deadline() {
    let agent = Agent::start(Options::default()).await;
    let mut s = TcpStream::connect(agent.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let started = tokio::time::Instant::now();
    let got = tokio::time::timeout(REQUEST_TIMEOUT * 3, read_to_end(&mut s))
        .await
        .expect("the idle connection was never closed");
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(started.elapsed() >= REQUEST_TIMEOUT);
    agent.stop().await;
}

/// A connection kept busy with requests trickled in just before each deadline is still let go
/// once it has been plain HTTP for the lifetime cap.
#[tokio::test(start_paused = true)]
async fn a_connection_stays_plain_http_for_a_bounded_time() {
    let agent = Agent::start(Options::default()).await;
    let mut s = TcpStream::connect(agent.addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .is_err()
        {
            break;
        }
        match tokio::time::timeout(HTTP_LIFETIME * 2, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => break,
            Err(_) => panic!("no answer and no close"),
        }
        assert!(
            started.elapsed() < HTTP_LIFETIME + REQUEST_TIMEOUT,
            "still served after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(REQUEST_TIMEOUT - Duration::from_secs(1)).await;
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= HTTP_LIFETIME, "closed after {elapsed:?}");
    agent.stop().await;
}

/// Past the cap on connections still in their request, a new connection is answered 503 at
/// once instead of holding a descriptor; a WebSocket that completed its upgrade no longer
/// counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_pending_cap_get_503_at_once() {
    let agent = Agent::start_with_limits(
        Options::default(),
        tether_transport::serve::ServeLimits {
            max_pending: 8,
            ..Default::default()
        },
    )
    .await;
    // Upgraded connections do not count against the cap.
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut c = agent.ws(HUMAN_TOKEN).await;
        c.request("hello", json!({})).await.expect("hello");
        clients.push(c);
    }
    let mut stalled = Vec::new();
    for _ in 0..8 {
        stalled.push(stall(&agent).await);
    }
    // The server accepts in order: once the 9th is answered, all 8 hold their slot.
    let mut extra = TcpStream::connect(agent.addr).await.expect("connect");
    let got = tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut extra))
        .await
        .expect("the connection past the cap should be answered at once");
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("overloaded"), "{got}");
    // Freeing the slots makes room again.
    drop(stalled);
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(mut c) =
            tether_transport::client::Client::connect_ws(&agent.url(), Some(HUMAN_TOKEN)).await
        {
            c.request("hello", json!({})).await.expect("hello");
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "no room after the stalled connections closed");
    agent.stop().await;
}

/// The HTTP refusal of a WebSocket connection attempt: status and JSON body.
async fn refused(agent: &Agent, token: &str) -> Option<(u16, Value)> {
    let mut request = agent.url().into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => None,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Some((resp.status().as_u16(), body))
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// One credential may hold at most its cap of connections (64 by default); past it, HTTP 503
/// `overloaded` saying why. Other credentials — the humans who answer prompts — still get in,
/// and a connection closed frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credential_cannot_take_every_connection() {
    let agent = Agent::start(Options::default()).await;
    let cap = 64;
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(agent.ws(OBSERVER_TOKEN).await);
    }
    let (status, body) = refused(&agent, OBSERVER_TOKEN)
        .await
        .expect("the connection past the cap should be refused");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "overloaded", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("watcher") && message.contains(&cap.to_string()),
        "{message}"
    );
    // A human still gets in.
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    alice.request("hello", json!({})).await.expect("hello");
    // One observer connection closed makes room for another.
    held.pop().expect("held").close().await;
    let mut back = false;
    for _ in 0..100 {
        if refused(&agent, OBSERVER_TOKEN).await.is_none() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the observer never got its place back");
    agent.stop().await;
}

/// The Unix socket's peers are capped per uid the same way; the refusal is an error line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unix_user_cannot_take_every_connection() {
    let agent = Agent::start(Options::default()).await;
    let mut held = Vec::new();
    for i in 0..64u64 {
        let mut c = RawUnix::connect(&agent.socket).await;
        let (reply, _) = c.request(i, "hello", json!({})).await;
        assert_eq!(reply["ok"], true, "{reply}");
        held.push(c);
    }
    let mut c = RawUnix::connect(&agent.socket).await;
    let refusal = c.next_json().await;
    assert_eq!(refusal["ok"], false, "{refusal}");
    assert_eq!(refusal["error"]["reason"], "overloaded", "{refusal}");
    assert!(
        c.next_line().await.is_none(),
        "the refused connection stays open"
    );
    agent.stop().await;
}
