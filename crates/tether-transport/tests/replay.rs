//! Re-attaching from a sequence number (issue 2, item 9).

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tether_mux::MuxConfig;
use tether_transport::client::Client;

fn opts() -> Options {
    Options {
        script: approve_script(0),
        tools: Some(tools_with_approve()),
        ..Options::default()
    }
}

/// Reads raw frames until `pred`; returns them with their JSON.
async fn raw_until(c: &mut Client, pred: impl FnMut(&Value) -> bool) -> Vec<(String, Value)> {
    read_raw_until(c, pred)
        .await
        .into_iter()
        .map(|t| {
            let v = serde_json::from_str(&t).expect("json");
            (t, v)
        })
        .collect()
}

/// Adds the events among `frames` to `history`, refusing duplicates.
fn record(frames: &[(String, Value)], history: &mut BTreeMap<u64, String>) {
    for (t, v) in frames {
        if let Some(seq) = seq_of(v) {
            assert!(history.insert(seq, t.clone()).is_none(), "dup {seq}");
        }
    }
}

/// A client that drops out mid-turn and re-attaches with `after_seq` gets exactly the events
/// it missed — byte-identical to what a client that stayed saw — then `replay_complete`, then
/// live events, with no hole and no duplicate. Leaves over WebSocket, comes back over the
/// Unix socket (and the other way round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattach_with_after_seq_gets_exactly_the_missed_events() {
    let agent = Agent::start(opts()).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut alice, "human").await;
    attach(&mut alice, &sid, Some(0)).await;
    // Everything alice sees, by seq: the reference history.
    let mut history: BTreeMap<u64, String> = BTreeMap::new();

    for round in 0..2 {
        // The leaver: over WebSocket in round 0, over the Unix socket in round 1.
        let mut leaver = if round == 0 {
            agent.ws(HUMAN2_TOKEN).await
        } else {
            agent.unix().await
        };
        attach(&mut leaver, &sid, None).await;
        alice
            .request("input", json!({"session_id": sid, "text": "go"}))
            .await
            .expect("input");
        // The leaver follows the turn up to its prompt, then goes away.
        let seen = raw_until(&mut leaver, |v| is_event(v, "permission_requested")).await;
        let last_seen = seen
            .iter()
            .filter_map(|(_, v)| seq_of(v))
            .max()
            .expect("seq");
        let request = seen.last().expect("request").1.clone();
        if round == 0 {
            leaver.close().await;
        } else {
            leaver
                .request("detach", json!({"session_id": sid}))
                .await
                .expect("detach");
        }

        // The turn goes on without it.
        let frames = raw_until(&mut alice, |v| is_event(v, "permission_requested")).await;
        record(&frames, &mut history);
        answer(
            &mut alice,
            &sid,
            request["call_id"].as_str().expect("call"),
            "allow",
        )
        .await
        .expect("answer");
        let frames = raw_until(&mut alice, |v| is_event(v, "turn_ended")).await;
        record(&frames, &mut history);

        // Back, on the other transport, from the last seq it saw.
        let mut back = if round == 0 {
            agent.unix().await
        } else {
            agent.ws(HUMAN2_TOKEN).await
        };
        let snap = attach(&mut back, &sid, Some(last_seen)).await;
        let last_seq = snap["snapshot"]["last_seq"].as_u64().expect("last_seq");
        assert!(last_seq > last_seen);
        let replay = raw_until(&mut back, |v| is_control(v, "replay_complete")).await;
        let (events, controls): (Vec<_>, Vec<_>) =
            replay.iter().partition(|(_, v)| seq_of(v).is_some());
        assert_eq!(controls.len(), 1, "only replay_complete: {controls:?}");
        assert_eq!(controls[0].1["last_seq"], last_seq);
        assert_eq!(controls[0].1["session_id"], sid.as_str());
        let seqs: Vec<u64> = events.iter().filter_map(|(_, v)| seq_of(v)).collect();
        let expected: Vec<u64> = (last_seen + 1..=last_seq).collect();
        assert_eq!(seqs, expected, "replay must be exactly the missed events");
        // The frames alice saw (she may not have read the leaver's own detach yet).
        let frames = raw_until(&mut alice, |v| seq_of(v).is_some_and(|s| s >= last_seq)).await;
        record(&frames, &mut history);
        for (t, v) in &events {
            let seq = seq_of(v).expect("seq");
            assert_eq!(
                history.get(&seq),
                Some(t),
                "replayed frame {seq} differs from the live one"
            );
        }
        // Live events follow the replay with no hole: first its own attach.
        let live = next_json(&mut back).await;
        assert_eq!(seq_of(&live), Some(last_seq + 1), "{live}");
        assert!(is_event(&live, "client_attached"), "{live}");
        let frames = raw_until(&mut alice, |v| seq_of(v) == Some(last_seq + 1)).await;
        record(&frames, &mut history);
        back.close().await;
    }
    // Alice, attached from 0 throughout, saw every seq exactly once.
    let seqs: Vec<u64> = history.keys().copied().collect();
    let expected: Vec<u64> = (1..=*seqs.last().expect("some")).collect();
    assert_eq!(seqs, expected);
    agent.stop().await;
}

/// Attaching with `after_seq` equal to the last seq replays nothing; `after_seq` beyond it
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_at_the_head_and_beyond() {
    let agent = Agent::start(opts()).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut alice, "human").await;
    let snap = attach(&mut alice, &sid, None).await;
    let last = snap["snapshot"]["last_seq"].as_u64().expect("last");
    let mut bob = agent.unix().await;
    let snap = attach(&mut bob, &sid, Some(last + 1)).await; // alice's attach made last + 1
    let head = snap["snapshot"]["last_seq"].as_u64().expect("last");
    assert_eq!(head, last + 1);
    let v = next_json(&mut bob).await;
    assert!(is_control(&v, "replay_complete"), "{v}");
    assert_eq!(v["last_seq"], head);
    let v = next_json(&mut bob).await;
    assert_eq!(seq_of(&v), Some(head + 1), "{v}");

    let err = expect_error(
        &mut bob,
        "attach",
        json!({"session_id": sid, "after_seq": head + 100}),
    )
    .await;
    assert_eq!(err.reason.as_str(), "bad_request", "{err:?}");
    agent.stop().await;
}

/// With a small retention, attaching from an old seq yields `stream_gap` first, a snapshot
/// that says what the log still holds, then the retained events and `replay_complete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_beyond_retention_gets_stream_gap_and_snapshot() {
    let retention = 10;
    let agent = Agent::start(Options {
        script: text_script(&long_text(60, 4), 0),
        config: MuxConfig {
            retention_events: retention,
            ..MuxConfig::default()
        },
        tools: None,
    })
    .await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut alice, "human").await;
    attach(&mut alice, &sid, None).await;
    alice
        .request("input", json!({"session_id": sid, "text": "talk"}))
        .await
        .expect("input");
    read_until(&mut alice, |v| {
        is_event(v, "session_state") && v["state"] == "idle"
    })
    .await;

    for (after, mut late) in [(0, agent.unix().await), (5, agent.ws(HUMAN2_TOKEN).await)] {
        let snap = attach(&mut late, &sid, Some(after)).await;
        let snapshot = &snap["snapshot"];
        let first = snapshot["first_seq"].as_u64().expect("first_seq");
        let last = snapshot["last_seq"].as_u64().expect("last_seq");
        assert!(last > 60, "{snapshot}");
        assert!(first > after + 1, "the log should have pruned: {snapshot}");
        assert!(last - first < retention, "{snapshot}");
        assert_eq!(snapshot["state"], "idle");
        assert!(snapshot["turn"].is_null(), "{snapshot}");

        let frames = read_until(&mut late, |v| is_control(v, "replay_complete")).await;
        let gap = &frames[0];
        assert!(
            is_control(gap, "stream_gap"),
            "stream_gap must come first: {gap}"
        );
        assert_eq!(gap["session_id"], sid.as_str());
        assert_eq!(gap["from_seq"], after + 1);
        let to = gap["to_seq"].as_u64().expect("to_seq");
        // The gap reaches at least to what the snapshot said was gone (this client's own
        // `client_attached` may have pruned one more since).
        assert!(to + 1 >= first, "gap {gap} vs first_seq {first}");
        let events: Vec<&Value> = frames[1..frames.len() - 1].iter().collect();
        assert!(
            events.iter().all(|v| seq_of(v).is_some()),
            "only events between the gap and replay_complete: {events:?}"
        );
        let seqs: Vec<u64> = events.iter().filter_map(|v| seq_of(v)).collect();
        let expected: Vec<u64> = (to + 1..=last).collect();
        assert_eq!(seqs, expected, "no hole after the gap");
        let done = frames.last().expect("done");
        assert_eq!(done["last_seq"], last);
    }
    agent.stop().await;
}
