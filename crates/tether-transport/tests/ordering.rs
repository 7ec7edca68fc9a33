//! One turn at a time, in one total order, seen identically by everyone (issue 2, items 1–3).

mod common;

use common::*;
use serde_json::{Value, json};

fn opts() -> Options {
    Options {
        script: approve_script(0),
        tools: Some(tools_with_approve()),
        ..Options::default()
    }
}

/// 1. Two clients — one on the WebSocket, one on the Unix socket — receive byte-identical
/// event sequences for a turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_receive_byte_identical_events() {
    let agent = Agent::start(opts()).await;
    let mut ws = agent.ws(HUMAN_TOKEN).await;
    let mut unix = agent.unix().await;
    let sid = create_session(&mut ws, "human").await;
    attach(&mut ws, &sid, None).await;
    attach(&mut unix, &sid, None).await;

    let started = ws
        .request("input", json!({"session_id": sid, "text": "go"}))
        .await
        .expect("input");
    let turn_id = started["turn_id"].as_str().expect("turn_id").to_owned();
    let is_turn_start = |v: &Value| is_event(v, "turn_started") && v["turn_id"] == turn_id.as_str();

    // What came before the turn differs (each client saw the other attach at a different
    // point of its own stream): compare from `turn_started` on.
    let mut from_ws = vec![
        read_raw_until(&mut ws, is_turn_start)
            .await
            .pop()
            .expect("turn_started"),
    ];
    from_ws.extend(read_raw_until(&mut ws, |v| is_event(v, "permission_requested")).await);
    let request: Value = serde_json::from_str(from_ws.last().expect("frame")).expect("json");
    answer(
        &mut ws,
        &sid,
        request["call_id"].as_str().expect("call_id"),
        "allow",
    )
    .await
    .expect("answer");
    from_ws.extend(read_raw_until(&mut ws, |v| is_event(v, "turn_ended")).await);

    let mut from_unix = vec![
        read_raw_until(&mut unix, is_turn_start)
            .await
            .pop()
            .expect("turn_started"),
    ];
    from_unix.extend(read_raw_until(&mut unix, |v| is_event(v, "turn_ended")).await);
    assert_eq!(from_ws, from_unix, "the two clients saw different bytes");
    let values: Vec<Value> = from_unix
        .iter()
        .map(|t| serde_json::from_str(t).expect("json"))
        .collect();
    assert!(
        values.iter().all(|v| seq_of(v).is_some()),
        "only events expected"
    );
    assert_contiguous(&values);
    for name in [
        "text_delta",
        "tool_call",
        "permission_requested",
        "permission_resolved",
        "tool_result",
    ] {
        assert!(
            values.iter().any(|v| is_event(v, name)),
            "{name} missing from the turn"
        );
    }
    agent.stop().await;
}

/// Compares the two clients' streams from `turn_started` on, each read independently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_receive_byte_identical_events_independently() {
    let agent = Agent::start(Options {
        script: text_script(&long_text(200, 6), 0),
        ..Options::default()
    })
    .await;
    let mut ws = agent.ws(HUMAN_TOKEN).await;
    let mut unix = agent.unix().await;
    let sid = create_session(&mut ws, "human").await;
    attach(&mut ws, &sid, None).await;
    attach(&mut unix, &sid, None).await;
    let started = unix
        .request("input", json!({"session_id": sid, "text": "go"}))
        .await
        .expect("input");
    let turn_id = started["turn_id"].as_str().expect("turn_id").to_owned();

    let mut streams = vec![];
    for c in [&mut ws, &mut unix] {
        let pre = read_raw_until(c, |v| {
            is_event(v, "turn_started") && v["turn_id"] == turn_id.as_str()
        })
        .await;
        let mut turn = vec![pre.last().expect("turn_started").clone()];
        turn.extend(read_raw_until(c, |v| is_event(v, "turn_ended")).await);
        streams.push(turn);
    }
    assert_eq!(
        streams[0], streams[1],
        "the two clients saw different bytes"
    );
    let values: Vec<Value> = streams[0]
        .iter()
        .map(|t| serde_json::from_str(t).expect("json"))
        .collect();
    assert_contiguous(&values);
    assert!(values.iter().filter(|v| is_event(v, "text_delta")).count() >= 200);
    agent.stop().await;
}

/// 2. Input while a turn runs, from another client, is refused with `turn_in_progress`
/// naming the running turn and its originator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_during_a_turn_names_the_running_turn_and_originator() {
    let agent = Agent::start(opts()).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let mut bob = agent.unix().await;
    let hello = alice.request("hello", json!({})).await.expect("hello");
    let sid = create_session(&mut alice, "human").await;
    attach(&mut alice, &sid, None).await;
    let started = alice
        .request("input", json!({"session_id": sid, "text": "first"}))
        .await
        .expect("input");
    let turn_id = started["turn_id"].as_str().expect("turn_id").to_owned();
    // The turn is now parked on a permission prompt: it is certainly running.
    let request = wait_permission(&mut alice).await;

    let err = expect_error(
        &mut bob,
        "input",
        json!({"session_id": sid, "text": "second"}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "turn_in_progress", "{err:?}");
    assert_eq!(err.details.get("turn_id"), Some(&json!(turn_id)), "{err:?}");
    let originator = err.details.get("originator").expect("originator");
    assert_eq!(originator["client_id"], hello["client_id"]);
    assert_eq!(originator["class"], "human");
    assert_eq!(originator["name"], "alice");
    // The same holds for the originator itself.
    let err = expect_error(
        &mut alice,
        "input",
        json!({"session_id": sid, "text": "again"}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "turn_in_progress");
    assert_eq!(err.details.get("turn_id"), Some(&json!(turn_id)));

    // Nothing was started or queued by the refused inputs.
    answer(
        &mut alice,
        &sid,
        request["call_id"].as_str().expect("call"),
        "deny",
    )
    .await
    .expect("answer");
    let frames = read_until(&mut alice, |v| is_event(v, "turn_ended")).await;
    assert_eq!(frames.last().expect("end")["turn_id"], json!(turn_id));
    let list = alice
        .request("session.list", json!({}))
        .await
        .expect("list");
    let row = &list["sessions"][0];
    assert_eq!(row["state"], "idle", "{row}");
    agent.stop().await;
}

/// 3. `queue: true` input gets a receipt and runs next, in order; `turn_started` carries the
/// receipt's `input_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_inputs_get_receipts_and_run_in_order() {
    let agent = Agent::start(opts()).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let mut bob = agent.ws(HUMAN2_TOKEN).await;
    let mut carol = agent.unix().await;
    let sid = create_session(&mut alice, "human").await;
    attach(&mut alice, &sid, Some(0)).await;
    let first = alice
        .request("input", json!({"session_id": sid, "text": "first"}))
        .await
        .expect("input");
    let first_turn = first["turn_id"].as_str().expect("turn").to_owned();
    let mut request = wait_permission(&mut alice).await;

    let r2 = bob
        .request(
            "input",
            json!({"session_id": sid, "text": "second", "queue": true}),
        )
        .await
        .expect("queue second");
    let r3 = carol
        .request(
            "input",
            json!({"session_id": sid, "text": "third", "queue": true}),
        )
        .await
        .expect("queue third");
    assert!(r2.get("turn_id").is_none(), "{r2}");
    assert!(r2["input_id"].is_string(), "{r2}");
    assert_eq!(r2["position"], 1, "{r2}");
    assert!(r3["input_id"].is_string(), "{r3}");
    assert_eq!(r3["position"], 2, "{r3}");
    assert_ne!(r2["input_id"], r3["input_id"]);

    // A snapshot lists the queue, in order.
    let snap = attach(&mut bob, &sid, None).await;
    let queued: Vec<&Value> = snap["snapshot"]["queued"]
        .as_array()
        .expect("queued")
        .iter()
        .map(|q| &q["input_id"])
        .collect();
    assert_eq!(queued, vec![&r2["input_id"], &r3["input_id"]]);

    // Answer every prompt until the three turns have run.
    let mut turns: Vec<Value> = vec![];
    let mut ended = 0;
    let mut all = vec![];
    loop {
        answer(
            &mut alice,
            &sid,
            request["call_id"].as_str().expect("call"),
            "allow",
        )
        .await
        .expect("answer");
        let frames = read_until(&mut alice, |v| is_event(v, "turn_ended")).await;
        ended += 1;
        all.extend(frames);
        if ended == 3 {
            break;
        }
        let frames = read_until(&mut alice, |v| is_event(v, "permission_requested")).await;
        request = frames.last().expect("request").clone();
        all.extend(frames);
    }
    for v in &all {
        if is_event(v, "turn_started") {
            turns.push(v.clone());
        }
    }
    assert_contiguous(&all);
    // `all` starts after the first turn began; its turn_started came before the first prompt.
    assert_eq!(turns.len(), 2, "{turns:?}");
    assert_eq!(turns[0]["input_id"], r2["input_id"]);
    assert_eq!(turns[0]["text"], "second");
    assert_eq!(turns[0]["originator"]["name"], "bob");
    assert_eq!(turns[1]["input_id"], r3["input_id"]);
    assert_eq!(turns[1]["text"], "third");
    assert_eq!(turns[1]["originator"]["class"], "human");

    // One turn at a time: every turn ends before the next starts.
    let mut running: Option<Value> = Some(json!(first_turn));
    for v in &all {
        if is_event(v, "turn_started") {
            assert!(running.is_none(), "turn started while {running:?} ran");
            running = Some(v["turn_id"].clone());
        }
        if is_event(v, "turn_ended") {
            assert_eq!(Some(v["turn_id"].clone()), running, "{v}");
            assert_eq!(v["stop"], "completed", "{v}");
            running = None;
        }
    }
    assert!(running.is_none());
    agent.stop().await;
}
