//! A permission request nobody may answer is denied after the grace period, never left
//! hanging; one with an eligible answerer attached waits for it (issue 2, item 8).
//!
//! These tests run on paused tokio time over real sockets. The runtime advances the clock
//! whenever it is idle — including while the session waits for the SQLite writer thread — so
//! no wait here is wrapped in a short tokio timeout; durations are measured in virtual time.
//!
//! Where a wait starts is measured just *before* the request that starts it is sent (the
//! `input` that raises the prompt, the `detach` of the last eligible client), not when the
//! resulting event arrives: the clock auto-advances to the next timer whenever the runtime
//! finds no task ready, and a frame in flight on a TCP socket does not count as work, so the
//! clock may already have jumped to the grace deadline by the time `permission_requested` is
//! read. Nothing else sets a timer in these tests (the script has no chunk delay), so the clock
//! cannot move between that instant and the registration of the request: the measured wait is
//! exactly the grace period if the mux honours it, and less if it does not.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use tether_transport::client::Client;
use tokio::time::Instant;

fn opts() -> Options {
    Options {
        script: approve_script(0),
        tools: Some(tools_with_approve()),
        ..Options::default()
    }
}

/// Reads (without a timeout: time is paused) until a frame satisfies `pred`.
async fn until(c: &mut Client, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let mut seen = vec![];
    loop {
        let text = c.next_text().await.expect("connection closed");
        let v: Value = serde_json::from_str(&text).expect("json");
        let done = pred(&v);
        seen.push(v);
        if done {
            return seen;
        }
    }
}

/// Sends input and waits for its prompt; returns the instant just before the input was sent.
async fn start_turn(c: &mut Client, sid: &str) -> (Instant, Value) {
    let sent = Instant::now();
    c.request("input", json!({"session_id": sid, "text": "go"}))
        .await
        .expect("input");
    let request = until(c, |v| is_event(v, "permission_requested"))
        .await
        .pop()
        .expect("request");
    (sent, request)
}

#[tokio::test(start_paused = true)]
async fn unattended_request_is_denied_after_the_grace_period() {
    let agent = Agent::start(opts()).await;
    let grace = agent.mux.config().permission_grace;
    assert_eq!(grace, Duration::from_secs(30), "the default grace period");
    // Under `human`, neither an agent nor an observer may answer.
    let mut robot = agent.ws(AGENT_TOKEN).await;
    let mut watcher = agent.ws(OBSERVER_TOKEN).await;
    let sid = create_session(&mut robot, "human").await;
    robot
        .request("attach", json!({"session_id": sid}))
        .await
        .expect("attach");
    watcher
        .request("attach", json!({"session_id": sid}))
        .await
        .expect("attach");

    let (asked, request) = start_turn(&mut robot, &sid).await;
    let frames = until(&mut robot, |v| is_event(v, "permission_resolved")).await;
    let waited = asked.elapsed();
    let resolved = frames.last().expect("resolved");
    assert_eq!(resolved["call_id"], request["call_id"]);
    assert_eq!(resolved["decision"], "deny");
    assert_eq!(resolved["cause"], "no_eligible_answerer");
    assert_eq!(resolved["by"], Value::Null);
    assert!(
        waited >= grace,
        "denied after {waited:?}, before the {grace:?} grace period"
    );
    assert!(
        waited <= grace + Duration::from_secs(1),
        "denied only after {waited:?}"
    );

    // The tool did not run, the turn went on and ended normally; the observer saw it all.
    let frames = until(&mut robot, |v| is_event(v, "turn_ended")).await;
    let result = frames
        .iter()
        .find(|v| is_event(v, "tool_result"))
        .expect("tool_result");
    assert_eq!(result["ok"], false, "{result}");
    assert_ne!(result["output"], APPROVE_OUTPUT);
    assert_eq!(frames.last().expect("end")["stop"], "completed");
    let seen = until(&mut watcher, |v| is_event(v, "turn_ended")).await;
    let resolved: Vec<&Value> = seen
        .iter()
        .filter(|v| is_event(v, "permission_resolved"))
        .collect();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0]["cause"], "no_eligible_answerer");
    agent.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_attached_human_keeps_the_request_pending() {
    let agent = Agent::start(opts()).await;
    let grace = agent.mux.config().permission_grace;
    let mut robot = agent.ws(AGENT_TOKEN).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut robot, "human").await;
    for c in [&mut robot, &mut alice] {
        c.request("attach", json!({"session_id": sid}))
            .await
            .expect("attach");
    }
    let (_, request) = start_turn(&mut robot, &sid).await;

    // Far past the grace period, the request is still pending: alice may answer it.
    tokio::time::sleep(grace * 5).await;
    let list = alice
        .request("session.list", json!({}))
        .await
        .expect("list");
    assert_eq!(list["sessions"][0]["state"], "requires_action", "{list}");
    alice
        .request(
            "answer",
            json!({"session_id": sid, "call_id": request["call_id"], "decision": "allow"}),
        )
        .await
        .expect("alice answers after 5 grace periods");
    let frames = until(&mut robot, |v| is_event(v, "turn_ended")).await;
    let resolved: Vec<&Value> = frames
        .iter()
        .filter(|v| is_event(v, "permission_resolved"))
        .collect();
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0]["cause"], "answered");
    assert_eq!(resolved[0]["by"]["name"], "alice");
    let result = frames
        .iter()
        .find(|v| is_event(v, "tool_result"))
        .expect("tool_result");
    assert_eq!(result["output"], APPROVE_OUTPUT, "{result}");
    agent.stop().await;
}

/// When the last eligible client leaves, the grace period starts then.
#[tokio::test(start_paused = true)]
async fn the_grace_period_starts_when_the_last_eligible_client_leaves() {
    let agent = Agent::start(opts()).await;
    let grace = agent.mux.config().permission_grace;
    let mut robot = agent.ws(AGENT_TOKEN).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut robot, "human").await;
    for c in [&mut robot, &mut alice] {
        c.request("attach", json!({"session_id": sid}))
            .await
            .expect("attach");
    }
    start_turn(&mut robot, &sid).await;
    tokio::time::sleep(grace * 3).await;
    let left = Instant::now();
    alice
        .request("detach", json!({"session_id": sid}))
        .await
        .expect("detach");
    let frames = until(&mut robot, |v| is_event(v, "permission_resolved")).await;
    let waited = left.elapsed();
    assert_eq!(frames.last().expect("r")["cause"], "no_eligible_answerer");
    assert!(
        frames.iter().any(|v| is_event(v, "client_detached")),
        "{frames:?}"
    );
    assert!(waited >= grace, "denied {waited:?} after alice left");
    assert!(waited <= grace + Duration::from_secs(1), "{waited:?}");
    agent.stop().await;
}
