//! The WebSocket closing handshake and protocol-level refusals (PROTOCOL.md §3): every client
//! Close frame is answered (1000) promptly, even with frames queued; a frame over the hard
//! limit gets 1009 and invalid UTF-8 gets 1007 — a Close frame, not a dropped TCP connection.
//! The client is tokio-tungstenite, a standard WebSocket library, as a user's would be.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::time::{Duration, Instant};
use tether_transport::ws::HARD_MESSAGE_LIMIT;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

const EVENTS: usize = 10_000;

/// Reads until the server's Close frame (skipping data frames), bounded by `within`; returns
/// it, or panics saying what came instead.
async fn close_frame(ws: &mut RawWsStream, within: Duration) -> Option<CloseFrame> {
    let started = Instant::now();
    let got = tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return Ok(frame),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("error instead of a Close frame: {e}")),
                None => return Err("the connection ended without a Close frame".to_owned()),
            }
        }
    })
    .await;
    match got {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!(
            "no Close frame within {within:?} (waited {:?})",
            started.elapsed()
        ),
    }
}

/// A session holding at least `EVENTS` events (the default retention): one turn streaming
/// more words than that.
async fn long_session(agent: &Agent) -> String {
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut alice, "human").await;
    attach(&mut alice, &sid, None).await;
    alice
        .request("input", json!({"session_id": sid, "text": "go"}))
        .await
        .expect("input");
    read_until(&mut alice, |v| is_event(v, "turn_ended")).await;
    alice.close().await;
    sid
}

/// Issue 10.13: clients that replay a long history and then close get the server's Close
/// (1000) at once — both after reading everything, and while thousands of frames are still
/// queued for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_with_1000_after_a_long_replay() {
    let agent = Agent::start(Options {
        script: text_script(&long_text(EVENTS + 50, 4), 0),
        ..Options::default()
    })
    .await;
    let sid = long_session(&agent).await;
    let attach_frame = json!({"id": 1, "op": "attach", "session_id": sid, "after_seq": 0});

    // Reads the whole replay, then closes.
    for _ in 0..3 {
        let mut ws = raw_ws(&agent, HUMAN2_TOKEN).await;
        ws.send(Message::text(attach_frame.to_string()))
            .await
            .expect("send");
        let mut events = 0;
        loop {
            let v = raw_ws_next(&mut ws).await;
            if seq_of(&v).is_some() {
                events += 1;
            }
            if is_control(&v, "replay_complete") {
                break;
            }
        }
        // The log keeps the last EVENTS (one of them may be a `stream_gap` notice).
        assert!(events + 1 >= EVENTS, "replayed {events} events");
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .expect("send close");
        let frame = close_frame(&mut ws, Duration::from_secs(1)).await;
        assert_eq!(frame.map(|f| f.code), Some(CloseCode::Normal));
    }

    // Closes right after asking for the replay: most of it is still queued at the agent.
    for _ in 0..3 {
        let mut ws = raw_ws(&agent, HUMAN2_TOKEN).await;
        ws.send(Message::text(attach_frame.to_string()))
            .await
            .expect("send");
        let reply = raw_ws_next(&mut ws).await;
        assert_eq!(reply["re"], 1, "{reply}");
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await
        .expect("send close");
        let frame = close_frame(&mut ws, Duration::from_secs(1)).await;
        assert_eq!(frame.map(|f| f.code), Some(CloseCode::Normal));
    }
    // The agent let go of every one of them (alice's and the six above).
    let closed = || {
        agent
            .mux
            .metrics()
            .connections_closed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for _ in 0..200 {
        if closed() >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(closed(), 7);
    agent.stop().await;
}

/// An idle connection's Close is answered too, and the connection stays the agent's to end:
/// the client sees the Close frame, then the end of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_close_is_answered_and_the_stream_ends() {
    let agent = Agent::start(Options::default()).await;
    let mut ws = raw_ws(&agent, HUMAN_TOKEN).await;
    ws.send(Message::text(r#"{"id":1,"op":"hello"}"#))
        .await
        .expect("send");
    raw_ws_next(&mut ws).await;
    ws.close(None).await.expect("close");
    // A Close without a status code is answered with one without a status code (an echo).
    let frame = close_frame(&mut ws, Duration::from_secs(1)).await;
    assert_eq!(frame, None);
    let end = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
    assert!(
        matches!(end, Ok(None) | Ok(Some(Err(_)))),
        "the stream should end after the closing handshake: {end:?}"
    );
    agent.stop().await;
}

/// A text message with invalid UTF-8 is closed with 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_gets_close_1007() {
    let agent = Agent::start(Options::default()).await;
    let mut ws = raw_ws(&agent, HUMAN_TOKEN).await;
    let frame = Frame::message(
        b"{\"id\": 1, \"op\": \"hel\xff\xfelo\"}".to_vec(),
        OpCode::Data(Data::Text),
        true,
    );
    ws.send(Message::Frame(frame)).await.expect("send");
    let frame = close_frame(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(frame.map(|f| f.code), Some(CloseCode::Invalid));
    // The agent is fine.
    let mut c = agent.ws(HUMAN_TOKEN).await;
    c.request("hello", json!({})).await.expect("hello");
    agent.stop().await;
}

/// A frame announcing more than the hard limit is closed with 1009 as soon as its header is
/// read (its payload is never buffered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_hard_limit_gets_close_1009() {
    let agent = Agent::start(Options::default()).await;
    let mut ws = raw_ws(&agent, HUMAN_TOKEN).await;
    // Just the header of a masked text frame one byte over the limit, written raw.
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Text),
        mask: Some([1, 2, 3, 4]),
        ..FrameHeader::default()
    };
    let mut bytes = Vec::new();
    header
        .format(HARD_MESSAGE_LIMIT as u64 + 1, &mut bytes)
        .expect("header");
    bytes.extend_from_slice(b"{\"id\": 1");
    let MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
        panic!("plain TCP expected");
    };
    tcp.write_all(&bytes).await.expect("write");
    let frame = close_frame(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(frame.map(|f| f.code), Some(CloseCode::Size));
    agent.stop().await;
}

/// A message over the hard limit sent in fragments, each under it, gets 1009 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_message_over_the_hard_limit_gets_close_1009() {
    let agent = Agent::start(Options::default()).await;
    let ws = raw_ws(&agent, HUMAN_TOKEN).await;
    let half = HARD_MESSAGE_LIMIT / 2 + 1;
    let first = Frame::message(vec![b' '; half], OpCode::Data(Data::Text), false);
    let second = Frame::message(vec![b' '; half], OpCode::Data(Data::Continue), true);
    let (mut sink, mut stream) = ws.split();
    let sender = tokio::spawn(async move {
        let _ = sink.send(Message::Frame(first)).await;
        let _ = sink.send(Message::Frame(second)).await;
        sink
    });
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => {}
                other => panic!("expected a Close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("no Close frame");
    assert_eq!(got, Some(CloseCode::Size));
    let _ = sender.await;
    agent.stop().await;
}
