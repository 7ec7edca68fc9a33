//! The hub's listener under abuse (issues 9.3, 9.4, 9.13, 10.13): the same request deadline,
//! per-credential cap, closing handshake and request-id fidelity as the agent's, on the hub's
//! own `/v1/ws` and listener; the agent link's read deadline.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tether_transport::serve::REQUEST_TIMEOUT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn operator_ws(
    hub: &TestHub,
    token: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = hub.operator_url().into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match within("a frame", ws.next()).await {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(_)) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// An operator's Close is answered with 1000 at once, and request ids come back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_close_is_answered_and_ids_come_back_exactly() {
    let hub = TestHub::start().await;
    let mut ws = operator_ws(&hub, ALICE).await.expect("connect");
    for id in ["12345678901234567890123", "1.5e300", "\"a\\u00e9\""] {
        ws.send(Message::text(format!(r#"{{"id": {id}, "op": "hello"}}"#)))
            .await
            .expect("send");
        let reply = next_text(&mut ws).await;
        assert!(reply.starts_with(&format!(r#"{{"re":{id},"#)), "{reply}");
    }
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })))
    .await
    .expect("close");
    let got = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| f.code),
                Some(Ok(_)) => {}
                other => panic!("expected a Close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("no Close frame within a second");
    assert_eq!(got, Some(CloseCode::Normal));
    hub.stop().await;
}

/// The agent endpoint answers an agent's Close too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_close_is_answered() {
    let hub = TestHub::start().await;
    let token = hub.create_token("closer").await;
    let agent_id = uuid::Uuid::now_v7().to_string();
    let mut ws = dial_agent(&hub.agent_url(), &token, &agent_id, "2")
        .await
        .expect("dial");
    ws.send(Message::text(frame("register", register_payload("closer"))))
        .await
        .expect("register");
    let ack = next_text(&mut ws).await;
    assert!(ack.contains("\"ack\""), "{ack}");
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })))
    .await
    .expect("close");
    let got = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| f.code),
                Some(Ok(_)) => {}
                other => panic!("expected a Close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("no Close frame within a second");
    assert_eq!(got, Some(CloseCode::Normal));
    hub.stop().await;
}

/// One operator credential may hold at most its cap of connections; past it 503 `overloaded`,
/// while the other operators still get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operator_cannot_take_every_connection() {
    let hub = TestHub::start().await;
    let cap = tether_transport::limits::DEFAULT_MAX_PER_CLIENT;
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(operator_ws(&hub, WATCHER).await.expect("connect"));
    }
    match operator_ws(&hub, WATCHER).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            let body: Value = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            assert_eq!(body["reason"], "overloaded", "{body}");
        }
        Ok(_) => panic!("the operator got a connection past its cap"),
        Err(e) => panic!("unexpected error: {e}"),
    }
    let _alice = hub.operator(ALICE).await;
    hub.stop().await;
}

/// A connection that never finishes its request is closed after the request deadline.
#[tokio::test(start_paused = true)]
async fn a_stalled_request_is_closed_after_the_deadline() {
    let hub = TestHub::start().await;
    let started = tokio::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(hub.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    // Virtual time: this bound only matters when the hub has no deadline at all.
    let _ = tokio::time::timeout(REQUEST_TIMEOUT * 3, s.read_to_end(&mut buf))
        .await
        .expect("the stalled connection was never closed");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= REQUEST_TIMEOUT && elapsed < REQUEST_TIMEOUT * 2,
        "closed after {elapsed:?}"
    );
    // Still serving.
    let _alice = hub.operator(ALICE).await;
    hub.stop().await;
}

/// The link's deadlines over a real socket, on virtual time: an agent that answers the hub's
/// pings stays connected past several read deadlines; once it stops answering, the hub drops
/// it after the read deadline (90 s) with a Close and marks it disconnected.
#[tokio::test(start_paused = true)]
async fn an_agent_that_stops_answering_pings_is_dropped_after_the_read_deadline() {
    const READ_DEADLINE: Duration = Duration::from_secs(90);
    let hub = TestHub::start().await;
    let token = hub.create_token("quiet").await;
    let agent_id = uuid::Uuid::now_v7().to_string();
    let mut ws = dial_agent(&hub.agent_url(), &token, &agent_id, "2")
        .await
        .expect("dial");
    ws.send(Message::text(frame("register", register_payload("quiet"))))
        .await
        .expect("register");
    let ack: Value = serde_json::from_str(&next_text(&mut ws).await).expect("json");
    assert_eq!(ack["payload"]["ok"], true, "{ack}");
    hub.wait_connected(&agent_id, true).await;

    // Every ping answered with a pong, for three read deadlines.
    let answering = tokio::time::Instant::now();
    let mut pings = 0;
    while answering.elapsed() < READ_DEADLINE * 3 {
        let next = tokio::time::timeout(READ_DEADLINE, ws.next())
            .await
            .expect("no ping within the read deadline");
        let Some(Ok(Message::Text(t))) = next else {
            panic!("the hub dropped an agent that answers its pings: {next:?}");
        };
        let f: Value = serde_json::from_str(t.as_str()).expect("json");
        assert_eq!(f["type"], "ping", "{f}");
        ws.send(Message::text(frame("pong", Value::Null)))
            .await
            .expect("pong");
        pings += 1;
    }
    assert!(pings >= 8, "{pings} pings in {:?}", answering.elapsed());
    assert!(hub.hub().is_connected(&agent_id));

    // Silent from now on: pings still come, then the Close.
    let silent = tokio::time::Instant::now();
    tokio::time::timeout(READ_DEADLINE * 2, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => assert!(t.as_str().contains("\"ping\""), "{t}"),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the silent agent was never dropped");
    let waited = silent.elapsed();
    assert!(
        waited >= READ_DEADLINE && waited < READ_DEADLINE + Duration::from_secs(5),
        "dropped after {waited:?} of silence"
    );
    hub.wait_connected(&agent_id, false).await;
    hub.stop().await;
}
