mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_streams_over_websocket_and_unix_socket() {
    let agent = Agent::start(Options::default()).await;
    let mut ws = agent.ws(HUMAN_TOKEN).await;
    let hello = ws
        .request("hello", json!({"client_name": "test"}))
        .await
        .expect("hello");
    assert_eq!(hello["class"], "human");
    assert_eq!(hello["protocol"], 1);
    let sid = create_session(&mut ws, "human").await;
    let attach = ws
        .request("attach", json!({"session_id": sid, "after_seq": 0}))
        .await
        .expect("attach");
    assert_eq!(attach["snapshot"]["state"], "idle");

    let mut unix = agent.unix().await;
    unix.request("attach", json!({"session_id": sid}))
        .await
        .expect("attach unix");

    let r = ws
        .request("input", json!({"session_id": sid, "text": "hello"}))
        .await
        .expect("input");
    assert!(r["turn_id"].is_string());
    let frames = read_until(&mut ws, |v| is_event(v, "permission_requested")).await;
    let call_id = frames.last().expect("frame")["call_id"]
        .as_str()
        .expect("call")
        .to_owned();
    ws.request(
        "answer",
        json!({"session_id": sid, "call_id": call_id, "decision": "allow"}),
    )
    .await
    .expect("answer");
    let frames = read_until(&mut ws, |v| is_event(v, "turn_ended")).await;
    let result = frames
        .iter()
        .find(|v| is_event(v, "tool_result"))
        .expect("tool_result");
    assert!(
        result["output"].as_str().expect("out").contains("tool-ran"),
        "{result}"
    );
    assert_eq!(frames.last().expect("end")["stop"], "completed");

    let uframes = read_until(&mut unix, |v| is_event(v, "turn_ended")).await;
    assert!(uframes.iter().any(|v| is_event(v, "text_delta")));
    agent.stop().await;
}
