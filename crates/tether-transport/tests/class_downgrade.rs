//! Class downgrade (PROTOCOL.md §3, issue 11): `hello` takes `class?`; a client may lower its
//! class (`human` → `agent` → `observer`), never raise it; the reply states the class in
//! force, and every later op is judged by it. Over real sockets.

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

async fn hello(c: &mut Client, params: Value) -> Value {
    c.request("hello", params).await.expect("hello")
}

/// Starts a turn from `starter` (attached) and waits for its permission prompt.
async fn turn_with_prompt(starter: &mut Client, sid: &str) -> Value {
    attach(starter, sid, None).await;
    starter
        .request("input", json!({"session_id": sid, "text": "do it"}))
        .await
        .expect("input");
    wait_permission(starter).await
}

/// A human that lowers itself to `agent` is an agent from then on: the turns it starts are an
/// agent's, it cannot approve their prompts (`agent_cannot_self_approve`, on this connection
/// or another of its credential's lowered ones), and it may not choose policy `any`. Its
/// credential is untouched: another connection of the same human still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_lowered_to_agent_cannot_approve_its_own_turn() {
    for via_unix in [false, true] {
        let agent = Agent::start(opts()).await;
        let (mut lowered, mut human) = if via_unix {
            (agent.unix().await, agent.unix().await)
        } else {
            (agent.ws(HUMAN_TOKEN).await, agent.ws(HUMAN_TOKEN).await)
        };
        let r = hello(&mut lowered, json!({"client_name": "ai", "class": "agent"})).await;
        assert_eq!(
            r["class"], "agent",
            "the reply states the class in force: {r}"
        );

        // Policy `any` is a human's choice only.
        let err = expect_error(
            &mut lowered,
            "session.create",
            json!({"mode": "chat", "policy": "any"}),
        )
        .await;
        assert_eq!(err.reason.as_str(), "forbidden", "{err:?}");

        let sid = create_session(&mut human, "any").await;
        let request = turn_with_prompt(&mut lowered, &sid).await;
        assert_eq!(request["originator"]["class"], "agent", "{request}");
        let call_id = request["call_id"].as_str().expect("call_id").to_owned();
        let err = expect_error(
            &mut lowered,
            "answer",
            json!({"session_id": sid, "call_id": call_id, "decision": "allow"}),
        )
        .await;
        assert_eq!(err.reason.as_str(), "agent_cannot_self_approve", "{err:?}");

        // The same credential at its own class still answers.
        answer(&mut human, &sid, &call_id, "allow")
            .await
            .expect("the unlowered human answers");
        let frames = read_until(&mut lowered, |v| is_event(v, "turn_ended")).await;
        let resolved = frames
            .iter()
            .find(|v| is_event(v, "permission_resolved"))
            .expect("resolved");
        assert_eq!(resolved["by"]["class"], "human", "{resolved}");
        agent.stop().await;
    }
}

/// Under policy `human`, a lowered human answering someone else's prompt gets
/// `human_answer_required`, like any agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_human_is_not_a_human_answerer() {
    let agent = Agent::start(opts()).await;
    let mut bob = agent.ws(HUMAN2_TOKEN).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    hello(&mut alice, json!({"class": "agent"})).await;
    let sid = create_session(&mut bob, "human").await;
    let request = turn_with_prompt(&mut bob, &sid).await;
    let err = expect_error(
        &mut alice,
        "answer",
        json!({"session_id": sid, "call_id": request["call_id"], "decision": "allow"}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "human_answer_required", "{err:?}");
    agent.stop().await;
}

/// A client can never raise its class: an agent asking for `human` and an observer asking for
/// `agent` get `forbidden` naming the field, and keep the class of their credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_raise_its_class() {
    let agent = Agent::start(opts()).await;
    for (token, from, to) in [
        (AGENT_TOKEN, "agent", "human"),
        (OBSERVER_TOKEN, "observer", "agent"),
        (OBSERVER_TOKEN, "observer", "human"),
    ] {
        let mut c = agent.ws(token).await;
        let err = expect_error(&mut c, "hello", json!({"class": to})).await;
        assert_eq!(err.reason.as_str(), "forbidden", "{from} -> {to}: {err:?}");
        assert!(err.message.contains("field `class`"), "{err:?}");
        assert!(err.message.contains("never raise"), "{err:?}");
        // The connection goes on, at its credential's class.
        let r = hello(&mut c, json!({})).await;
        assert_eq!(r["class"], from);
    }
    // The agent still cannot act as a human: under policy `human` it cannot answer.
    let mut robot = agent.ws(AGENT_TOKEN).await;
    let _ = expect_error(&mut robot, "hello", json!({"class": "human"})).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut alice, "human").await;
    let request = turn_with_prompt(&mut alice, &sid).await;
    let err = expect_error(
        &mut robot,
        "answer",
        json!({"session_id": sid, "call_id": request["call_id"], "decision": "allow"}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "human_answer_required", "{err:?}");
    agent.stop().await;
}

/// Lowering goes on in steps (`human` → `agent` → `observer`), never back up; an observer
/// cannot send input. The same class again is accepted (no change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_goes_down_in_steps_and_never_back() {
    let agent = Agent::start(opts()).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut alice, "human").await;
    assert_eq!(
        hello(&mut alice, json!({"class": "human"})).await["class"],
        "human"
    );
    assert_eq!(
        hello(&mut alice, json!({"class": "agent"})).await["class"],
        "agent"
    );
    let err = expect_error(&mut alice, "hello", json!({"class": "human"})).await;
    assert_eq!(err.reason.as_str(), "forbidden", "{err:?}");
    assert_eq!(
        hello(&mut alice, json!({"class": "observer"})).await["class"],
        "observer"
    );
    let err = expect_error(
        &mut alice,
        "input",
        json!({"session_id": sid, "text": "hello"}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "forbidden", "{err:?}");
    let err = expect_error(&mut alice, "hello", json!({"class": "agent"})).await;
    assert_eq!(err.reason.as_str(), "forbidden", "{err:?}");
    agent.stop().await;
}

/// A class that is not one is `bad_request` naming the field; the connection stays usable and
/// keeps its class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_class_is_a_bad_request_naming_the_field() {
    let agent = Agent::start(opts()).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    for bad in [json!("admin"), json!(3), json!(null)] {
        let params = json!({"class": bad});
        match alice.request("hello", params.clone()).await {
            Err(tether_transport::client::ClientError::Server(e)) => {
                assert_eq!(e.reason.as_str(), "bad_request", "{params}: {e:?}");
                assert!(e.message.contains("class"), "{params}: {e:?}");
            }
            // `null` means "not given".
            Ok(r) if bad.is_null() => assert_eq!(r["class"], "human"),
            other => panic!("{params}: {other:?}"),
        }
    }
    assert_eq!(hello(&mut alice, json!({})).await["class"], "human");
    agent.stop().await;
}

/// A session knows each client by the class it attached with, so the class cannot change
/// while the connection is attached: `bad_request` naming the field, until it detaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_class_cannot_change_while_attached() {
    let agent = Agent::start(opts()).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut alice, "human").await;
    attach(&mut alice, &sid, None).await;
    let err = expect_error(&mut alice, "hello", json!({"class": "agent"})).await;
    assert_eq!(err.reason.as_str(), "bad_request", "{err:?}");
    assert!(err.message.contains("field `class`"), "{err:?}");
    assert!(err.message.contains("detach first"), "{err:?}");
    // A refused re-attach leaves the first attachment in place: still no class change.
    let err = expect_error(
        &mut alice,
        "attach",
        json!({"session_id": sid, "after_seq": 1_000_000}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "bad_request");
    let err = expect_error(&mut alice, "hello", json!({"class": "agent"})).await;
    assert_eq!(err.reason.as_str(), "bad_request", "{err:?}");
    alice
        .request("detach", json!({"session_id": sid}))
        .await
        .expect("detach");
    assert_eq!(
        hello(&mut alice, json!({"class": "agent"})).await["class"],
        "agent"
    );
    // A refused attach leaves nothing attached.
    let err = expect_error(
        &mut alice,
        "attach",
        json!({"session_id": sid, "after_seq": 1_000_000}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "bad_request");
    assert_eq!(
        hello(&mut alice, json!({"class": "observer"})).await["class"],
        "observer"
    );
    // Re-attached as an observer, the session shows it as one (the event right after the
    // snapshot; earlier frames of the first attachment are still unread).
    let r = attach(&mut alice, &sid, None).await;
    let next = r["snapshot"]["last_seq"].as_u64().expect("last_seq") + 1;
    let frames = read_until(&mut alice, |v| v["seq"] == next).await;
    let attached = frames.last().expect("client_attached");
    assert!(is_event(attached, "client_attached"), "{attached}");
    assert_eq!(attached["client"]["class"], "observer", "{attached}");
    agent.stop().await;
}
