//! Bad input is an error, never a panic or a hang, and the connection stays usable
//! (issue 2, item 11).

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tether_proto::MAX_MESSAGE_BYTES;
use tokio_tungstenite::tungstenite::Message;

/// One bad frame and what its reply must look like.
struct Case {
    name: &'static str,
    frame: Vec<u8>,
    /// `re` of the reply: the request id when it could be read.
    re: Value,
    /// Words the error message must contain (e.g. the field's name).
    message_has: &'static [&'static str],
}

fn oversized() -> Vec<u8> {
    // Valid JSON, a real op, just too big.
    let text = "x".repeat(MAX_MESSAGE_BYTES + 1024);
    json!({"id": 9, "op": "hello", "client_name": text})
        .to_string()
        .into_bytes()
}

fn text_cases() -> Vec<Case> {
    vec![
        Case {
            name: "malformed JSON",
            frame: br#"{"id": 1, "op": "hello""#.to_vec(),
            re: Value::Null,
            message_has: &["JSON"],
        },
        Case {
            name: "not an object",
            frame: br#"[1, 2, 3]"#.to_vec(),
            re: Value::Null,
            message_has: &["object"],
        },
        Case {
            name: "unknown op",
            frame: br#"{"id": 2, "op": "session.explode"}"#.to_vec(),
            re: json!(2),
            message_has: &["session.explode"],
        },
        Case {
            name: "missing field",
            frame: br#"{"id": "three", "op": "attach"}"#.to_vec(),
            re: json!("three"),
            message_has: &["session_id"],
        },
        Case {
            name: "missing nested field",
            frame: br#"{"id": 4, "op": "input", "session_id": "s"}"#.to_vec(),
            re: json!(4),
            message_has: &["text"],
        },
        Case {
            name: "wrong type",
            frame: br#"{"id": 5, "op": "attach", "session_id": 42}"#.to_vec(),
            re: json!(5),
            message_has: &["session_id"],
        },
        Case {
            name: "wrong type (enum)",
            frame: br#"{"id": 6, "op": "session.create", "mode": "party"}"#.to_vec(),
            re: json!(6),
            message_has: &["mode"],
        },
        Case {
            name: "wrong type (after_seq)",
            frame: br#"{"id": 7, "op": "attach", "session_id": "s", "after_seq": "ten"}"#.to_vec(),
            re: json!(7),
            message_has: &["after_seq"],
        },
        Case {
            name: "missing op",
            frame: br#"{"id": 8}"#.to_vec(),
            re: json!(8),
            message_has: &["op"],
        },
        Case {
            name: "oversized",
            frame: oversized(),
            re: Value::Null,
            message_has: &["limit"],
        },
    ]
}

fn check_reply(case: &Case, reply: &Value) {
    assert_eq!(reply["ok"], false, "{}: {reply}", case.name);
    assert_eq!(reply["re"], case.re, "{}: {reply}", case.name);
    assert_eq!(
        reply["error"]["reason"], "bad_request",
        "{}: {reply}",
        case.name
    );
    let message = reply["error"]["message"].as_str().expect("message");
    for word in case.message_has {
        assert!(
            message.contains(word),
            "{}: message {message:?} should mention {word:?}",
            case.name
        );
    }
}

async fn hello_works_ws(ws: &mut RawWsStream, id: u64) {
    let hello = json!({"id": id, "op": "hello"}).to_string();
    ws.send(Message::Text(hello.into())).await.expect("send");
    let reply = raw_ws_next(ws).await;
    assert_eq!(reply["re"], id, "{reply}");
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["class"], "human");
}

async fn hello_works_unix(c: &mut RawUnix, id: u64) {
    let (reply, other) = c.request(id, "hello", json!({})).await;
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["class"], "human");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_over_websocket_get_bad_request_and_the_connection_survives() {
    let agent = Agent::start(Options::default()).await;
    let mut ws = raw_ws(&agent, HUMAN_TOKEN).await;
    let mut id = 100;
    for case in text_cases() {
        let text = String::from_utf8(case.frame.clone()).expect("utf8");
        ws.send(Message::Text(text.into())).await.expect("send");
        let reply = raw_ws_next(&mut ws).await;
        check_reply(&case, &reply);
        id += 1;
        hello_works_ws(&mut ws, id).await;
    }
    // A binary frame, even one holding a valid request.
    let binary = json!({"id": 1, "op": "hello"}).to_string();
    ws.send(Message::Binary(binary.into_bytes().into()))
        .await
        .expect("send");
    let reply = raw_ws_next(&mut ws).await;
    check_reply(
        &Case {
            name: "binary frame",
            frame: vec![],
            re: Value::Null,
            message_has: &["binary"],
        },
        &reply,
    );
    hello_works_ws(&mut ws, 999).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_over_the_unix_socket_get_bad_request_and_the_connection_survives() {
    let agent = Agent::start(Options::default()).await;
    let mut c = RawUnix::connect(&agent.socket).await;
    let mut id = 100;
    for case in text_cases() {
        c.send_line(&case.frame).await;
        let reply = c.next_json().await;
        check_reply(&case, &reply);
        id += 1;
        hello_works_unix(&mut c, id).await;
    }
    // The line-framing analogue of a binary frame: bytes that are not UTF-8.
    c.send_line(b"{\"id\": 1, \"op\": \"hel\xff\xfelo\"}").await;
    let reply = c.next_json().await;
    check_reply(
        &Case {
            name: "not UTF-8",
            frame: vec![],
            re: Value::Null,
            message_has: &["invalid UTF-8"],
        },
        &reply,
    );
    hello_works_unix(&mut c, 999).await;
    // Several bad lines in one write are answered one by one, in order.
    let mut burst = Vec::new();
    burst.extend_from_slice(b"nope\n");
    burst.extend_from_slice(&oversized());
    burst.extend_from_slice(b"\n{\"id\": 77, \"op\": \"nope\"}\n");
    burst.extend_from_slice(b"{\"id\": 78, \"op\": \"hello\"}");
    c.send_line(&burst).await;
    let replies = [
        c.next_json().await,
        c.next_json().await,
        c.next_json().await,
        c.next_json().await,
    ];
    let res: Vec<&Value> = replies.iter().map(|r| &r["re"]).collect();
    assert_eq!(
        res,
        vec![&Value::Null, &Value::Null, &json!(77), &json!(78)]
    );
    assert_eq!(replies[3]["ok"], true);
    agent.stop().await;
}

/// The high-level client sees the same thing (the CLI relies on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reports_bad_request_with_the_field_name() {
    let agent = Agent::start(Options::default()).await;
    for mut c in [agent.ws(HUMAN_TOKEN).await, agent.unix().await] {
        let err = expect_error(&mut c, "attach", json!({})).await;
        assert_eq!(err.reason.as_str(), "bad_request");
        assert!(err.message.contains("session_id"), "{err:?}");
        let err = expect_error(&mut c, "input", json!({"session_id": "s", "text": 3})).await;
        assert_eq!(err.reason.as_str(), "bad_request");
        assert!(err.message.contains("text"), "{err:?}");
        let err = expect_error(&mut c, "input", json!({"session_id": "s", "text": " "})).await;
        assert_eq!(err.reason.as_str(), "bad_request");
        assert!(err.message.contains("text"), "{err:?}");
        let err = expect_error(&mut c, "attach", json!({"session_id": "nope"})).await;
        assert_eq!(err.reason.as_str(), "unknown_session");
        c.request("hello", json!({})).await.expect("still usable");
    }
    agent.stop().await;
}

/// Request ids come back exactly as sent, whatever their JSON form (PROTOCOL.md §3): a
/// integer too large for 64 bits, a float, an exponent — byte for byte, on both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_come_back_exactly_as_sent() {
    let agent = Agent::start(Options::default()).await;
    let ids = [
        "12345678901234567890123",
        "-12345678901234567890123",
        "1.5e300",
        "1.50",
        "0.1",
        "1E2",
        "18446744073709551616",
        "\"x\\u00e9\"",
    ];
    let mut ws = raw_ws(&agent, HUMAN_TOKEN).await;
    let mut unix = RawUnix::connect(&agent.socket).await;
    for id in ids {
        let frame = format!(r#"{{"id": {id}, "op": "hello"}}"#);
        let error = format!(r#"{{"id": {id}, "op": "nope"}}"#);
        ws.send(Message::Text(frame.clone().into()))
            .await
            .expect("send");
        let reply = raw_ws_next_text(&mut ws).await;
        assert!(
            reply.starts_with(&format!(r#"{{"re":{id},"#)),
            "{id}: {reply}"
        );
        ws.send(Message::Text(error.clone().into()))
            .await
            .expect("send");
        let reply = raw_ws_next_text(&mut ws).await;
        assert!(
            reply.starts_with(&format!(r#"{{"re":{id},"#)),
            "{id}: {reply}"
        );
        for text in [&frame, &error] {
            unix.send_line(text.as_bytes()).await;
            let reply = unix.next_line().await.expect("reply");
            assert!(
                reply.starts_with(&format!(r#"{{"re":{id},"#)),
                "{id}: {reply}"
            );
        }
    }
    agent.stop().await;
}

/// The next text frame of a raw WebSocket, as sent.
async fn raw_ws_next_text(ws: &mut RawWsStream) -> String {
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(20), ws.next())
            .await
            .expect("timed out")
            .expect("closed")
            .expect("ws error");
        if let Message::Text(t) = msg {
            return t.as_str().to_owned();
        }
    }
}
