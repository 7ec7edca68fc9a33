//! Sessions survive a restart of the agent (issue 2, item 12).

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use tether_transport::client::Client;

fn opts() -> Options {
    Options {
        script: approve_script(0),
        tools: Some(tools_with_approve()),
        ..Options::default()
    }
}

/// Attaches with `after_seq` and returns the raw replayed events (up to `replay_complete`)
/// and the snapshot.
async fn replay(c: &mut Client, sid: &str, after: u64) -> (Vec<String>, Value) {
    let snap = attach(c, sid, Some(after)).await;
    let mut frames = read_raw_until(c, |v| is_control(v, "replay_complete")).await;
    frames.pop();
    for t in &frames {
        let v: Value = serde_json::from_str(t).expect("json");
        assert!(seq_of(&v).is_some(), "only events in a replay: {t}");
    }
    (frames, snap["snapshot"].clone())
}

/// A clean stop (as on SIGTERM) and a start on the same state directory: `session.list`
/// shows the session as it was, and a replay from 0 is byte-for-byte the one from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_session_history() {
    let agent = Agent::start(opts()).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut alice, "human").await;
    attach(&mut alice, &sid, None).await;
    alice
        .request(
            "input",
            json!({"session_id": sid, "text": "before the restart"}),
        )
        .await
        .expect("input");
    let request = wait_permission(&mut alice).await;
    answer(
        &mut alice,
        &sid,
        request["call_id"].as_str().expect("call"),
        "allow",
    )
    .await
    .expect("answer");
    read_until(&mut alice, |v| {
        is_event(v, "session_state") && v["state"] == "idle"
    })
    .await;

    let mut bob = agent.unix().await;
    let (mut before, _) = replay(&mut bob, &sid, 0).await;
    // Bob's own attach is the newest event: part of the history too.
    before.push(next_raw(&mut bob).await);
    let list_before = alice
        .request("session.list", json!({}))
        .await
        .expect("list");
    let row_before = list_before["sessions"][0].clone();
    assert_eq!(row_before["last_seq"], before.len());

    let dir = agent.stop().await;
    let agent = Agent::start_in(dir, opts()).await;
    let mut carol = agent.ws(HUMAN_TOKEN).await;
    let list_after = carol
        .request("session.list", json!({}))
        .await
        .expect("list");
    let sessions = list_after["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{list_after}");
    let row = &sessions[0];
    for field in [
        "session_id",
        "mode",
        "title",
        "created_at",
        "state",
        "last_seq",
    ] {
        assert_eq!(row[field], row_before[field], "{field} changed: {row}");
    }
    assert_eq!(row["state"], "idle");
    assert_eq!(
        row["clients"],
        json!([]),
        "nobody is attached after a restart"
    );

    let (after, snapshot) = replay(&mut carol, &sid, 0).await;
    assert_eq!(snapshot["last_seq"], before.len());
    assert_eq!(snapshot["first_seq"], 1);
    assert_eq!(after, before, "the replay after the restart differs");

    // The session carries on: seq continues, the conversation goes on.
    let live = next_json(&mut carol).await;
    assert_eq!(seq_of(&live), Some(before.len() as u64 + 1), "{live}");
    carol
        .request(
            "input",
            json!({"session_id": sid, "text": "after the restart"}),
        )
        .await
        .expect("input");
    let mut all = vec![live];
    all.extend(read_until(&mut carol, |v| is_event(v, "permission_requested")).await);
    let request = all.last().expect("request").clone();
    answer(
        &mut carol,
        &sid,
        request["call_id"].as_str().expect("call"),
        "allow",
    )
    .await
    .expect("answer");
    all.extend(read_until(&mut carol, |v| is_event(v, "turn_ended")).await);
    assert_eq!(all.last().expect("end")["stop"], "completed");
    assert_contiguous(&all);
    agent.stop().await;
}

/// What the first agent left behind when it died.
struct Crashed {
    agent: Agent,
    clients: Vec<Client>,
    sid: String,
    turn_id: String,
    call_id: String,
    queued_input: Value,
    seen: Vec<String>,
}

/// An agent that stops abruptly — no `Mux::shutdown`, its runtime simply dropped — while a
/// turn waits on a permission prompt with another input queued behind it. On the next start
/// the turn is ended with `stop: error`, `error: "agent restarted"`, its prompt is denied,
/// history is intact, and the queued input runs.
#[test]
fn an_abrupt_stop_ends_the_running_turn_on_restart() {
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let crashed = first.block_on(async {
        let agent = Agent::start(opts()).await;
        let mut alice = agent.ws(HUMAN_TOKEN).await;
        let mut bob = agent.unix().await;
        let sid = create_session(&mut alice, "human").await;
        attach(&mut alice, &sid, Some(0)).await;
        let r = alice
            .request("input", json!({"session_id": sid, "text": "interrupted"}))
            .await
            .expect("input");
        let turn_id = r["turn_id"].as_str().expect("turn").to_owned();
        let mut seen = read_raw_until(&mut alice, |v| is_event(v, "permission_requested")).await;
        let request: Value = serde_json::from_str(seen.last().expect("req")).expect("json");
        let queued_input = bob
            .request(
                "input",
                json!({"session_id": sid, "text": "queued", "queue": true}),
            )
            .await
            .expect("queue");
        // The queue is durable once the next event is: bob's attach makes one.
        attach(&mut bob, &sid, None).await;
        seen.retain(|t| !t.contains(r#""event":"replay_complete""#));
        seen.extend(read_raw_until(&mut alice, |v| is_event(v, "client_attached")).await);
        // Release the database: nothing more can be written, as if the process had died.
        agent.mux.log().close();
        Crashed {
            agent,
            clients: vec![alice, bob],
            sid,
            turn_id,
            call_id: request["call_id"].as_str().expect("call").to_owned(),
            queued_input,
            seen,
        }
    });
    // Kill everything the first agent was running: no shutdown, no goodbye events.
    first.shutdown_timeout(Duration::from_secs(5));
    let Crashed {
        agent,
        clients,
        sid,
        turn_id,
        call_id,
        queued_input,
        seen,
    } = crashed;
    drop(clients);
    let dir = agent.dir.clone();
    drop(agent);

    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    second.block_on(async {
        let agent = Agent::start_in(dir, opts()).await;
        let mut carol = agent.ws(HUMAN_TOKEN).await;
        let list = carol
            .request("session.list", json!({}))
            .await
            .expect("list");
        assert_eq!(list["sessions"][0]["session_id"], sid.as_str(), "{list}");

        // History up to the crash is intact, byte for byte…
        let (history, _) = replay(&mut carol, &sid, 0).await;
        let last_seen = seen.len();
        assert_eq!(&history[..last_seen], &seen[..], "history before the crash");
        // …and the recovery comes right after it. The queued input starts at once, so its
        // turn may be in the replay already, or still to come live.
        let mut events: Vec<Value> = history[last_seen..]
            .iter()
            .map(|t| serde_json::from_str(t).expect("json"))
            .collect();
        let new_prompt = |events: &[Value]| {
            events.iter().position(|v| {
                is_event(v, "permission_requested") && v["turn_id"] != turn_id.as_str()
            })
        };
        while new_prompt(&events).is_none() {
            events.push(next_json(&mut carol).await);
        }
        let resolved = events
            .iter()
            .find(|v| is_event(v, "permission_resolved"))
            .expect("the pending prompt is resolved");
        assert_eq!(resolved["call_id"], call_id.as_str());
        assert_eq!(resolved["decision"], "deny");
        assert_eq!(resolved["by"], Value::Null);
        let ended = events
            .iter()
            .find(|v| is_event(v, "turn_ended"))
            .expect("the interrupted turn is ended");
        assert_eq!(ended["turn_id"], turn_id.as_str());
        assert_eq!(ended["stop"], "error");
        assert_eq!(ended["error"], "agent restarted");
        let next = events
            .iter()
            .find(|v| is_event(v, "turn_started"))
            .expect("the queued input runs");
        assert_eq!(next["input_id"], queued_input["input_id"], "{next}");
        assert_eq!(next["text"], "queued");
        assert_eq!(next["originator"]["class"], "human");
        assert_eq!(seq_of(&events[0]), Some(last_seen as u64 + 1));
        let order: Vec<&str> = events
            .iter()
            .filter_map(|v| v["event"].as_str())
            .filter(|e| ["permission_resolved", "turn_ended", "turn_started"].contains(e))
            .collect();
        assert_eq!(
            order,
            ["permission_resolved", "turn_ended", "turn_started"],
            "recovery order"
        );
        let with_seq: Vec<Value> = events
            .iter()
            .filter(|v| seq_of(v).is_some())
            .cloned()
            .collect();
        assert_contiguous(&with_seq);

        // The queued turn runs like any other.
        let request = events[new_prompt(&events).expect("prompt")].clone();
        answer(
            &mut carol,
            &sid,
            request["call_id"].as_str().expect("call"),
            "allow",
        )
        .await
        .expect("answer");
        let frames = read_until(&mut carol, |v| is_event(v, "turn_ended")).await;
        assert_eq!(frames.last().expect("end")["stop"], "completed");
        agent.stop().await;
    });
}
