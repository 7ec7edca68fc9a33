//! Permission arbitration over real sockets (issue 2, items 4–7).

mod common;

use common::*;
use serde_json::{Value, json};
use tether_transport::client::Client;

fn opts() -> Options {
    Options {
        script: approve_script(0),
        tools: Some(tools_with_approve()),
        ..Options::default()
    }
}

/// Starts a turn from `starter` and waits (on `starter`, attached) for its prompt.
async fn start_turn_with_prompt(starter: &mut Client, sid: &str) -> (String, Value) {
    attach(starter, sid, None).await;
    let r = starter
        .request("input", json!({"session_id": sid, "text": "do it"}))
        .await
        .expect("input");
    let turn_id = r["turn_id"].as_str().expect("turn_id").to_owned();
    let request = wait_permission(starter).await;
    assert_eq!(request["turn_id"], turn_id.as_str());
    (turn_id, request)
}

/// Reads `c` until the turn ends; returns every event of the way.
async fn finish(c: &mut Client) -> Vec<Value> {
    read_until(c, |v| is_event(v, "turn_ended")).await
}

fn call_id(request: &Value) -> &str {
    request["call_id"].as_str().expect("call_id")
}

/// 4. An agent-class client answering a request raised in its own turn gets
/// `agent_cannot_self_approve`, under policy `any` and under `human`, on the connection that
/// started the turn and on another connection with the same credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cannot_approve_its_own_request() {
    for policy in ["any", "human"] {
        let agent = Agent::start(opts()).await;
        let mut robot = agent.ws(AGENT_TOKEN).await;
        let mut robot_again = agent.ws(AGENT_TOKEN).await;
        let mut alice = agent.ws(HUMAN_TOKEN).await;
        // Only a human may choose `any`; the robot's turn runs in it all the same.
        let sid = create_session(&mut alice, policy).await;
        let (_turn, request) = start_turn_with_prompt(&mut robot, &sid).await;
        assert_eq!(request["policy"], policy);
        assert_eq!(request["originator"]["class"], "agent");

        for c in [&mut robot, &mut robot_again] {
            for decision in ["allow", "deny"] {
                let err = expect_error(
                    c,
                    "answer",
                    json!({"session_id": sid, "call_id": call_id(&request), "decision": decision}),
                )
                .await;
                assert_eq!(
                    err.reason.as_str(),
                    "agent_cannot_self_approve",
                    "policy {policy}: {err:?}"
                );
            }
        }
        // The request is still pending, and a human can settle it.
        let snap = attach(&mut alice, &sid, None).await;
        let pending = snap["snapshot"]["pending_permissions"]
            .as_array()
            .expect("pending");
        assert_eq!(pending.len(), 1, "{snap}");
        assert_eq!(pending[0]["call_id"], request["call_id"]);
        answer(&mut alice, &sid, call_id(&request), "allow")
            .await
            .expect("human answer");
        let frames = finish(&mut robot).await;
        let resolved: Vec<&Value> = frames
            .iter()
            .filter(|v| is_event(v, "permission_resolved"))
            .collect();
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0]["by"]["class"], "human");
        agent.stop().await;
    }
}

/// Under `any`, a *different* agent may answer an agent's turn, and its answer counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_any_another_agent_may_answer() {
    let agent = Agent::start(opts()).await;
    let mut robot = agent.ws(AGENT_TOKEN).await;
    let mut robot2 = agent.ws(AGENT2_TOKEN).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut alice, "any").await;
    let (_turn, request) = start_turn_with_prompt(&mut robot, &sid).await;
    answer(&mut robot2, &sid, call_id(&request), "allow")
        .await
        .expect("robot2 may answer robot's turn under `any`");
    let frames = finish(&mut robot).await;
    let resolved = frames
        .iter()
        .find(|v| is_event(v, "permission_resolved"))
        .expect("resolved");
    assert_eq!(resolved["by"]["name"], "robot2");
    assert_eq!(resolved["by"]["class"], "agent");
    assert_eq!(resolved["decision"], "allow");
    assert_eq!(resolved["cause"], "answered");
    let result = frames
        .iter()
        .find(|v| is_event(v, "tool_result"))
        .expect("tool_result");
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["output"], APPROVE_OUTPUT);
    agent.stop().await;
}

/// Only a human-class client may choose policy `any` (PROTOCOL.md §3): otherwise two AI
/// principals could approve each other's shell with no human involved. An agent asking for
/// it gets `forbidden` and no session is created; `human` stays open to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_human_may_choose_policy_any() {
    let agent = Agent::start(opts()).await;
    let mut robot = agent.ws(AGENT_TOKEN).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let before = agent.mux.list_sessions().sessions.len();
    let err = expect_error(
        &mut robot,
        "session.create",
        json!({"mode": "chat", "policy": "any"}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "forbidden", "{err:?}");
    assert!(err.message.contains("policy `any`"), "{err:?}");
    assert_eq!(agent.mux.list_sessions().sessions.len(), before);

    // The robot may still create a `human` session, and a human may choose `any`.
    let sid = create_session(&mut robot, "human").await;
    let snap = attach(&mut robot, &sid, None).await;
    assert_eq!(snap["snapshot"]["policy"], "human");
    let sid = create_session(&mut alice, "any").await;
    let snap = attach(&mut alice, &sid, None).await;
    assert_eq!(snap["snapshot"]["policy"], "any");
    agent.stop().await;
}

/// 5. Under policy `human`, an agent-class answer gets `human_answer_required`; a human
/// answer then lets the tool run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_policy_needs_a_human_answer() {
    let agent = Agent::start(Options::default()).await; // the real `shell` tool
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let mut robot2 = agent.ws(AGENT2_TOKEN).await;
    let mut bob = agent.unix().await;
    let sid = create_session(&mut alice, "human").await;
    let (_turn, request) = start_turn_with_prompt(&mut alice, &sid).await;
    assert_eq!(request["tool"], "shell");
    assert_eq!(request["policy"], "human");
    for decision in ["allow", "deny"] {
        let err = expect_error(
            &mut robot2,
            "answer",
            json!({"session_id": sid, "call_id": call_id(&request), "decision": decision}),
        )
        .await;
        assert_eq!(err.reason.as_str(), "human_answer_required", "{err:?}");
    }
    // A human on the Unix socket answers.
    answer(&mut bob, &sid, call_id(&request), "allow")
        .await
        .expect("human answer");
    let frames = finish(&mut alice).await;
    let resolved: Vec<&Value> = frames
        .iter()
        .filter(|v| is_event(v, "permission_resolved"))
        .collect();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0]["by"]["class"], "human");
    assert_eq!(resolved[0]["decision"], "allow");
    let result = frames
        .iter()
        .find(|v| is_event(v, "tool_result"))
        .expect("tool_result");
    assert_eq!(result["ok"], true, "{result}");
    assert!(
        result["output"]
            .as_str()
            .expect("output")
            .contains("tool-ran"),
        "{result}"
    );
    assert_eq!(frames.last().expect("end")["stop"], "completed");
    agent.stop().await;
}

/// 6. An observer's input gets `forbidden` (and so do its other acts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_are_forbidden_to_act() {
    let agent = Agent::start(opts()).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let mut watcher = agent.ws(OBSERVER_TOKEN).await;
    let sid = create_session(&mut alice, "any").await;
    attach(&mut watcher, &sid, None).await;

    let err = expect_error(
        &mut watcher,
        "input",
        json!({"session_id": sid, "text": "let me in"}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "forbidden", "{err:?}");
    let err = expect_error(
        &mut watcher,
        "input",
        json!({"session_id": sid, "text": "queue me", "queue": true}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "forbidden", "{err:?}");
    let err = expect_error(&mut watcher, "session.create", json!({"mode": "chat"})).await;
    assert_eq!(err.reason.as_str(), "forbidden", "{err:?}");

    let (turn, request) = start_turn_with_prompt(&mut alice, &sid).await;
    let err = expect_error(
        &mut watcher,
        "answer",
        json!({"session_id": sid, "call_id": call_id(&request), "decision": "allow"}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "forbidden", "{err:?}");
    let err = expect_error(
        &mut watcher,
        "cancel",
        json!({"session_id": sid, "turn_id": turn}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "forbidden", "{err:?}");
    let err = expect_error(&mut watcher, "session.close", json!({"session_id": sid})).await;
    assert_eq!(err.reason.as_str(), "forbidden", "{err:?}");

    // The observer still watches: it sees the turn through to its end.
    answer(&mut alice, &sid, call_id(&request), "allow")
        .await
        .expect("answer");
    let frames = finish(&mut watcher).await;
    assert!(frames.iter().any(|v| is_event(v, "tool_result")));
    assert_eq!(frames.last().expect("end")["stop"], "completed");
    agent.stop().await;
}

/// 7. A second answer gets `already_resolved`, and every client sees exactly one
/// `permission_resolved`. Two humans answer at the same moment: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_answer_counts() {
    let agent = Agent::start(opts()).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let mut bob = agent.ws(HUMAN2_TOKEN).await;
    let mut carol = agent.unix().await;
    let mut watcher = agent.ws(OBSERVER_TOKEN).await;
    let sid = create_session(&mut alice, "human").await;
    for c in [&mut bob, &mut carol, &mut watcher] {
        attach(c, &sid, None).await;
    }
    let (_turn, request) = start_turn_with_prompt(&mut alice, &sid).await;
    let call = call_id(&request).to_owned();

    let (a, b, c) = tokio::join!(
        answer(&mut alice, &sid, &call, "allow"),
        answer(&mut bob, &sid, &call, "deny"),
        answer(&mut carol, &sid, &call, "allow"),
    );
    let results = [a, b, c];
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    for r in &results {
        if let Err(tether_transport::client::ClientError::Server(e)) = r {
            assert_eq!(e.reason.as_str(), "already_resolved", "{e:?}");
        } else {
            assert!(r.is_ok(), "{r:?}");
        }
    }
    // A late answer after the turn moved on is refused the same way.
    let err = expect_error(
        &mut bob,
        "answer",
        json!({"session_id": sid, "call_id": call, "decision": "allow"}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "already_resolved");

    let mut decisions = vec![];
    for c in [&mut alice, &mut bob, &mut carol, &mut watcher] {
        let frames = finish(c).await;
        let resolved: Vec<&Value> = frames
            .iter()
            .filter(|v| is_event(v, "permission_resolved"))
            .collect();
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0]["call_id"], call.as_str());
        assert_eq!(resolved[0]["cause"], "answered");
        decisions.push(resolved[0].to_string());
    }
    decisions.dedup();
    assert_eq!(decisions.len(), 1, "clients disagree: {decisions:?}");
    agent.stop().await;
}
