//! The hub with version-2 agents: the real tether agent side (event log, engine with a
//! scripted model, multiplexer, remote sessions, alert spool, link driver). Alerts survive
//! link restarts exactly once; operators sharing a remote session see the same events and
//! the permission rules hold across the relay; a hub shutdown makes agents back off as told.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tether_transport::client::{Client, ClientError};

/// Requirement 3: a tether agent whose link is restarted while alerts flow (once with the
/// same spool, once with the spool reopened from disk, as after a process restart) delivers
/// every alert to the hub's store exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_survive_link_restarts_exactly_once() {
    const N: usize = 500;
    let hub = TestHub::start().await;
    let token = hub.create_token("tether-restart").await;
    let mut agent = V2Agent::new(&hub.agent_url(), &token, &shell_script(), None);
    agent.start_link();
    let s = agent.wait_registered().await;
    assert_eq!(s.version, Some(2), "{s:?}");

    // A producer sends N alerts through the sink, paced so the link restarts mid-stream.
    let sink = agent.sink.clone();
    let producer = tokio::spawn(async move {
        for i in 0..N {
            sink.send(alert(i));
            if i % 5 == 4 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        sink.flush().await;
    });

    // Restart 1: the link is dropped (its token cancelled) while alerts flow; a new link
    // takes over the same spool.
    let first = hub.wait_alerts(40).await;
    agent.stop_link().await;
    let mid_stream_1 = !producer.is_finished();
    agent.start_link();

    // Restart 2: dropped again; this time the agent "restarts": the spool is reopened from
    // its file once the producer is done, and a new link starts on it.
    let second = hub.wait_alerts(first + 40).await;
    agent.stop_link().await;
    let mid_stream_2 = !producer.is_finished();
    within("the producer", producer).await.expect("producer");
    let spool_path = agent.spool.path().to_owned();
    agent.sink.flush().await;
    agent.spool = tether_link::AlertSpool::open(&spool_path, 100_000).expect("reopen spool");
    agent.sink = agent.spool.sink().expect("sink");
    agent.start_link();
    eprintln!(
        "restarted at {first} (mid-stream: {mid_stream_1}) and {second} (mid-stream: {mid_stream_2}) stored alerts"
    );

    // Everything arrives, the spool empties (all acknowledged), nothing is stored twice.
    hub.wait_alerts(N as u64).await;
    agent
        .wait_status("the spool to drain", |s| {
            s.state == "registered" && s.spool_pending == 0
        })
        .await;
    assert_eq!(hub.alert_count().await, N as u64, "stored exactly once");
    let mut op = hub.operator(ALICE).await;
    let mut rows: Vec<Value> = Vec::new();
    let mut params = json!({"agent_id": agent.agent_id, "limit": 128});
    loop {
        let page = op
            .request("alerts.list", params.clone())
            .await
            .expect("alerts.list");
        rows.extend(page["alerts"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => params["cursor"] = json!(next),
            None => break,
        }
        assert!(rows.len() <= 2 * N, "paging does not end");
    }
    assert_eq!(rows.len(), N, "every alert listed once");
    // Each alert's timeline holds its one event, with the seq the spool gave it.
    let mut seqs: BTreeSet<u64> = BTreeSet::new();
    for r in &rows {
        assert_eq!(r["agent_id"], agent.agent_id.as_str());
        assert_eq!(r["event_count"], 1, "{r}");
        let t = op
            .request("alert.events", json!({"alert_id": r["alert_id"]}))
            .await
            .expect("alert.events");
        let events = t["events"].as_array().cloned().unwrap_or_default();
        assert_eq!(events.len(), 1, "{t}");
        let seq = events[0]["seq"].as_u64().expect("seq");
        // The spool numbered them in the order they were sent.
        assert_eq!(r["alert_key"], format!("alert-{:05}", seq - 1), "{r}");
        seqs.insert(seq);
    }
    assert_eq!(seqs.len(), N, "distinct (agent, seq)");
    assert_eq!(
        seqs.iter().copied().collect::<Vec<_>>(),
        (1..=N as u64).collect::<Vec<_>>()
    );
    let m = hub.hub().metrics();
    assert_eq!(m.alerts_stored.load(Ordering::Relaxed), N as u64);
    eprintln!(
        "received {} events, {} of them again",
        m.alerts_received.load(Ordering::Relaxed),
        m.alerts_duplicate.load(Ordering::Relaxed)
    );
    agent.stop().await;
    hub.stop().await;
}

/// Requirement 3, deterministically: a version-2 peer sending the same seqs again gets them
/// acknowledged and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_alert_seqs_are_acknowledged_and_stored_once() {
    let hub = TestHub::start().await;
    let token = hub.create_token("raw-v2").await;
    let agent_id = uuid::Uuid::now_v7().to_string();
    let (mut agent, ack) =
        V1Agent::connect_with(&hub.agent_url(), &token, &agent_id, "raw-v2", "2").await;
    assert_eq!(ack["payload"]["ok"], true, "{ack}");
    assert_eq!(ack["payload"]["proto"], 2, "version 2 is agreed: {ack}");
    let with_seq = |seq: u64| {
        let mut a = catpaw_alert(&format!("k{seq}"), "Warning", json!({}));
        a["seq"] = json!(seq);
        a
    };
    agent.alerts(vec![with_seq(1), with_seq(2), with_seq(3)]);
    let a = agent.next_of("alert_ack").await;
    assert_eq!(a["payload"]["upto_seq"], 3, "{a}");
    agent.alerts(vec![with_seq(2), with_seq(3), with_seq(4)]);
    let a = agent.next_of("alert_ack").await;
    assert_eq!(a["payload"]["upto_seq"], 4, "{a}");
    assert_eq!(hub.alert_count().await, 4);
    let m = hub.hub().metrics();
    assert_eq!(m.alerts_duplicate.load(Ordering::Relaxed), 2);
    assert!(hub.hub().is_connected(&agent_id));
    drop(agent);
    hub.stop().await;
}

/// An operator's view of one session: every event frame it has read, in order.
struct Watch {
    client: Client,
    session: String,
    seen: Vec<Value>,
}

impl Watch {
    async fn until(&mut self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let v = next_json(&mut self.client, what).await;
            if v.get("seq").is_none() || v["session_id"] != self.session.as_str() {
                continue;
            }
            self.seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
    }

    async fn request(&mut self, op: &str, params: Value) -> Result<Value, ClientError> {
        within(op, self.client.request(op, params)).await
    }

    async fn answer(&mut self, call_id: &Value, decision: &str) -> Result<Value, ClientError> {
        let params = json!({"session_id": self.session, "call_id": call_id, "decision": decision});
        self.request("answer", params).await
    }
}

/// Only a human-class operator may choose policy `any` (issue 9, finding 12): an
/// agent-class operator gets `forbidden` from the hub itself (a version-1 agent could not
/// check it), and no session reaches the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_human_operator_may_choose_policy_any() {
    let hub = TestHub::start().await;
    let token = hub.create_token("tether-policy").await;
    let mut agent = V2Agent::new(&hub.agent_url(), &token, &shell_script(), None);
    agent.start_link();
    agent.wait_registered().await;
    hub.wait_connected(&agent.agent_id, true).await;

    let mut robot = hub.operator(ROBOT).await;
    let refused = robot
        .request(
            "session.create",
            json!({"mode": "chat", "agent_id": agent.agent_id, "policy": "any"}),
        )
        .await;
    match refused {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.reason.as_str(), "forbidden", "{e:?}");
            assert!(e.message.contains("policy `any`"), "{e:?}");
        }
        other => panic!("an agent-class operator chose policy `any`: {other:?}"),
    }
    let listed = robot
        .request("session.list", json!({}))
        .await
        .expect("session.list");
    assert_eq!(listed["sessions"].as_array().map(Vec::len), Some(0));

    let mut alice = hub.operator(ALICE).await;
    alice
        .request(
            "session.create",
            json!({"mode": "chat", "agent_id": agent.agent_id, "policy": "any"}),
        )
        .await
        .expect("a human may choose `any`");
}

/// Issue 11, item 1: an operator may lower its class with `hello` (never raise it), the hub
/// says which class is in force, and every later op is judged by it — at the hub (policy
/// `any`, input) and at the agent (answers): a human lowered to `agent` cannot approve the
/// prompt of a turn it started; lowered to `observer` it cannot send input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_may_lower_its_class_never_raise_it() {
    let hub = TestHub::start().await;
    let token = hub.create_token("tether-lowered").await;
    let mut agent = V2Agent::new(&hub.agent_url(), &token, &shell_script(), None);
    agent.start_link();
    agent.wait_registered().await;
    hub.wait_connected(&agent.agent_id, true).await;

    // Raising is refused, naming the field; the connection keeps its class.
    let mut robot = hub.operator(ROBOT).await;
    let r = robot.request("hello", json!({"class": "human"})).await;
    assert_eq!(reason(&r), "forbidden", "{r:?}");
    let r = robot.request("hello", json!({})).await.expect("hello");
    assert_eq!(r["class"], "agent", "{r}");

    let mut bob = hub.operator(BOB).await;
    let created = bob
        .request(
            "session.create",
            json!({"mode": "chat", "agent_id": agent.agent_id, "policy": "any"}),
        )
        .await
        .expect("session.create");
    let sid = created["session_id"].as_str().expect("sid").to_owned();

    // Alice (human) lowers herself to `agent`: the reply says so.
    let mut alice = Watch {
        client: hub.operator(ALICE).await,
        session: sid.clone(),
        seen: Vec::new(),
    };
    let r = alice
        .request("hello", json!({"client_name": "mcp", "class": "agent"}))
        .await
        .expect("hello");
    assert_eq!(r["class"], "agent", "{r}");
    // Policy `any` is a human's choice: no longer hers.
    let r = alice
        .request(
            "session.create",
            json!({"mode": "chat", "agent_id": agent.agent_id, "policy": "any"}),
        )
        .await;
    assert_eq!(reason(&r), "forbidden", "{r:?}");
    alice
        .request("attach", json!({"session_id": sid}))
        .await
        .expect("attach");
    // Attached, the class cannot change any more; a refused re-attach changes nothing.
    let r = alice.request("hello", json!({"class": "observer"})).await;
    assert_eq!(reason(&r), "bad_request", "{r:?}");
    let r = alice
        .request("attach", json!({"session_id": sid, "after_seq": 1_000_000}))
        .await;
    assert_eq!(reason(&r), "bad_request", "{r:?}");
    let r = alice.request("hello", json!({"class": "observer"})).await;
    assert_eq!(reason(&r), "bad_request", "{r:?}");
    let r = alice
        .request(
            "input",
            json!({"session_id": sid, "text": "check the disk"}),
        )
        .await
        .expect("input");
    let turn = r["turn_id"].clone();
    let asked = alice
        .until("permission_requested", |v| {
            v["event"] == "permission_requested" && v["turn_id"] == turn
        })
        .await;
    assert_eq!(asked["originator"]["class"], "agent", "{asked}");
    let r = alice.answer(&asked["call_id"], "allow").await;
    assert_eq!(reason(&r), "agent_cannot_self_approve", "{r:?}");
    // Bob, a human, approves; the turn completes.
    bob.request(
        "answer",
        json!({"session_id": sid, "call_id": asked["call_id"], "decision": "allow"}),
    )
    .await
    .expect("bob allows");
    let ended = alice
        .until("turn_ended", |v| {
            v["event"] == "turn_ended" && v["turn_id"] == turn
        })
        .await;
    assert_eq!(ended["stop"], "completed", "{ended}");

    // Detached, she goes down to `observer`, and may no longer send input.
    alice
        .request("detach", json!({"session_id": sid}))
        .await
        .expect("detach");
    let r = alice
        .request("hello", json!({"class": "observer"}))
        .await
        .expect("hello");
    assert_eq!(r["class"], "observer", "{r}");
    let r = alice
        .request("input", json!({"session_id": sid, "text": "again"}))
        .await;
    assert_eq!(reason(&r), "forbidden", "{r:?}");
    let r = alice.request("hello", json!({"class": "human"})).await;
    assert_eq!(reason(&r), "forbidden", "{r:?}");
    agent.stop().await;
    hub.stop().await;
}

/// Requirement 4: two operators attached to one remote session see the same events (same
/// seqs, same order, same frames), and the permission rules hold across the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_share_a_remote_session_and_arbitration_holds() {
    let hub = TestHub::start().await;
    let token = hub.create_token("tether-shared").await;
    let mut agent = V2Agent::new(&hub.agent_url(), &token, &shell_script(), None);
    agent.start_link();
    agent.wait_registered().await;
    hub.wait_connected(&agent.agent_id, true).await;

    let mut alice = hub.operator(ALICE).await;
    let alice_name = who_am_i(&mut alice).await;
    let created = alice
        .request(
            "session.create",
            json!({"mode": "chat", "agent_id": agent.agent_id}),
        )
        .await
        .expect("session.create");
    let sid = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    let mut alice = Watch {
        client: alice,
        session: sid.clone(),
        seen: Vec::new(),
    };
    let mut robot = Watch {
        client: hub.operator(ROBOT).await,
        session: sid.clone(),
        seen: Vec::new(),
    };
    let robot_name = who_am_i(&mut robot.client).await;
    // A second connection of the same robot credential: a client of its own, but the same
    // principal, so it may not approve its twin's turn either.
    let mut robot2 = Watch {
        client: hub.operator(ROBOT).await,
        session: sid.clone(),
        seen: Vec::new(),
    };
    let mut bob = Watch {
        client: hub.operator(BOB).await,
        session: sid.clone(),
        seen: Vec::new(),
    };
    let mut watcher = Watch {
        client: hub.operator(WATCHER).await,
        session: sid.clone(),
        seen: Vec::new(),
    };
    for w in [&mut alice, &mut robot, &mut robot2] {
        let r = w
            .request("attach", json!({"session_id": sid, "after_seq": 0}))
            .await
            .expect("attach");
        assert_eq!(r["snapshot"]["policy"], "human", "{r}");
        assert_eq!(r["agent_id"], agent.agent_id.as_str(), "{r}");
    }
    // The robot is present at the agent before it starts a turn.
    robot
        .until("the robot's client_attached", |v| {
            v["event"] == "client_attached" && v["client"]["name"] == robot_name.as_str()
        })
        .await;

    // Turn 1, started by the agent-class robot.
    let r = robot
        .request(
            "input",
            json!({"session_id": sid, "text": "robot: check the disk"}),
        )
        .await
        .expect("robot input");
    let turn1 = r["turn_id"].clone();
    assert!(turn1.is_string(), "{r}");
    let asked = robot
        .until("permission_requested (robot's turn)", |v| {
            v["event"] == "permission_requested"
        })
        .await;
    assert_eq!(asked["turn_id"], turn1);
    assert_eq!(asked["tool"], "shell");
    assert_eq!(asked["originator"]["name"], robot_name.as_str());
    assert_eq!(asked["originator"]["class"], "agent");
    assert_eq!(asked["policy"], "human");
    let call1 = asked["call_id"].clone();
    let r = robot.answer(&call1, "allow").await;
    assert_eq!(reason(&r), "agent_cannot_self_approve", "{r:?}");
    let r = robot2.answer(&call1, "allow").await;
    assert_eq!(
        reason(&r),
        "agent_cannot_self_approve",
        "another connection of the same credential: {r:?}"
    );
    let r = watcher.answer(&call1, "allow").await;
    assert_eq!(reason(&r), "forbidden", "{r:?}");
    alice.answer(&call1, "allow").await.expect("alice allows");
    let r = bob.answer(&call1, "allow").await;
    assert_eq!(reason(&r), "already_resolved", "{r:?}");
    let r = robot.answer(&call1, "deny").await;
    assert_eq!(reason(&r), "already_resolved", "{r:?}");
    let ran = robot
        .until("the tool result of turn 1", |v| v["event"] == "tool_result")
        .await;
    assert_eq!(ran["call_id"], call1);
    assert_eq!(ran["ok"], true, "{ran}");
    assert!(
        ran["output"]
            .as_str()
            .is_some_and(|o| o.contains("tool-ran")),
        "{ran}"
    );
    let ended = robot
        .until("turn 1 to end", |v| v["event"] == "turn_ended")
        .await;
    assert_eq!(ended["turn_id"], turn1);
    assert_eq!(ended["stop"], "completed", "{ended}");

    // Turn 2, started by alice (human): the robot may not answer under policy `human`.
    let r = alice
        .request(
            "input",
            json!({"session_id": sid, "text": "alice: and now?"}),
        )
        .await
        .expect("alice input");
    let turn2 = r["turn_id"].clone();
    let asked = alice
        .until("permission_requested (alice's turn)", |v| {
            v["event"] == "permission_requested" && v["turn_id"] == turn2
        })
        .await;
    assert_eq!(asked["turn_id"], turn2);
    assert_eq!(asked["originator"]["name"], alice_name.as_str());
    let call2 = asked["call_id"].clone();
    let r = robot.answer(&call2, "allow").await;
    assert_eq!(reason(&r), "human_answer_required", "{r:?}");
    let r = alice.answer(&json!("no-such-call"), "allow").await;
    assert_eq!(reason(&r), "no_pending_permission", "{r:?}");
    bob.answer(&call2, "allow").await.expect("bob allows");
    let r = alice.answer(&call2, "allow").await;
    assert_eq!(reason(&r), "already_resolved", "{r:?}");
    let ran = alice
        .until("the tool result of turn 2", |v| {
            v["event"] == "tool_result" && v["turn_id"] == turn2
        })
        .await;
    assert_eq!(ran["call_id"], call2);
    assert_eq!(ran["ok"], true, "{ran}");
    let ended = alice
        .until("turn 2 to end", |v| {
            v["event"] == "turn_ended" && v["turn_id"] == turn2
        })
        .await;
    assert_eq!(ended["stop"], "completed", "{ended}");

    // Close; both operators read to the end.
    alice
        .request("session.close", json!({"session_id": sid}))
        .await
        .expect("session.close");
    alice
        .until("session_closed (alice)", |v| v["event"] == "session_closed")
        .await;
    robot
        .until("session_closed (robot)", |v| v["event"] == "session_closed")
        .await;

    // Same events, same seqs, same order, byte-for-byte the same JSON.
    assert_eq!(alice.seen.len(), robot.seen.len());
    assert_eq!(alice.seen, robot.seen, "both operators saw the same events");
    for (i, e) in alice.seen.iter().enumerate() {
        assert_eq!(e["seq"], json!(i as u64 + 1), "seq from 1, no holes: {e}");
    }
    let resolved: Vec<&Value> = alice
        .seen
        .iter()
        .filter(|e| e["event"] == "permission_resolved")
        .collect();
    assert_eq!(resolved.len(), 2, "{resolved:?}");
    assert_eq!(resolved[0]["call_id"], call1);
    // "Allowed by" names the connection (credential, tag, client) and its principal.
    assert_eq!(resolved[0]["by"]["name"], alice_name.as_str());
    assert!(alice_name.starts_with("alice #") && alice_name.ends_with("(hub test)"));
    let principal = |by: &Value| {
        by["client_id"]
            .as_str()
            .and_then(|id| id.rsplit_once('/'))
            .map(|(p, _)| p.to_owned())
    };
    assert_eq!(principal(&resolved[0]["by"]).as_deref(), Some("hub:alice"));
    assert_eq!(resolved[0]["cause"], "answered");
    assert_eq!(resolved[1]["call_id"], call2);
    assert!(
        resolved[1]["by"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("bob #")),
        "{:?}",
        resolved[1]
    );
    assert_eq!(principal(&resolved[1]["by"]).as_deref(), Some("hub:bob"));
    let results = alice
        .seen
        .iter()
        .filter(|e| e["event"] == "tool_result" && e["ok"] == true)
        .count();
    assert_eq!(results, 2);
    // The store holds the same history, frame for frame.
    let (status, body) = http_get(
        hub.addr,
        &format!("/api/v1/sessions/{sid}/events"),
        Some(ALICE),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!(alice.seen));
    agent.stop().await;
    hub.stop().await;
}

/// Requirement 8: stopping the hub sends agents `disconnect` with `retry_after_sec`; the
/// tether agent backs off that long, then comes back to the hub restarted on the same
/// address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_shutdown_makes_agents_back_off_as_told() {
    let hub = TestHub::start().await;
    let token = hub.create_token("tether-shutdown").await;
    let v1_token = hub.create_token("catpaw-shutdown").await;
    let mut agent = V2Agent::new(&hub.agent_url(), &token, &shell_script(), None);
    agent.start_link();
    agent.wait_registered().await;
    let mut catpaw = V1Agent::connect(
        &hub.agent_url(),
        &v1_token,
        &uuid::Uuid::now_v7().to_string(),
        "catpaw-shutdown",
    )
    .await;
    let before = agent.status();
    assert_eq!(before.connects, 1, "{before:?}");

    let addr = hub.addr;
    let stopping = Instant::now();
    let dir = hub.stop().await;

    // catpaw sees the frame itself.
    let bye = catpaw.next_of("disconnect").await;
    assert_eq!(bye["payload"]["retry_after_sec"], 5, "{bye}");
    assert!(
        bye["payload"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("shutting down")),
        "{bye}"
    );
    catpaw.next_of("__closed__").await;

    // The tether agent backs off retry_after_sec (± 25 % jitter).
    let s = agent
        .wait_status("backing off after the hub's disconnect", |s| {
            s.state == "backing_off" && s.retry_in_ms.is_some()
        })
        .await;
    let wait_ms = s.retry_in_ms.expect("retry_in_ms");
    assert!(
        (3750..=6250).contains(&wait_ms),
        "waits retry_after_sec = 5 s ± 25 %: {s:?}"
    );
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("disconnect") && e.contains("shutting down")),
        "{s:?}"
    );
    assert_eq!(s.registrations, 1);
    // The stopped hub no longer listens.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the stopped hub still accepts connections"
    );

    // A hub on the same address and state: the agent dials only after its wait, then
    // registers again.
    let hub = TestHub::start_in(dir, addr, |_| {}).await;
    let s = agent
        .wait_status("the agent to dial again", |s| s.connects >= 2)
        .await;
    let dialed_after = stopping.elapsed();
    assert!(
        dialed_after >= Duration::from_millis(wait_ms),
        "dialed {dialed_after:?} after the stop began, before its {wait_ms} ms wait: {s:?}"
    );
    agent
        .wait_status("registered with the new hub", |s| {
            s.state == "registered" && s.registrations >= 2
        })
        .await;
    hub.wait_connected(&agent.agent_id, true).await;
    agent.stop().await;
    hub.stop().await;
}

/// Each turn: a short answer, no tools.
fn chat_script() -> String {
    json!({"loop": true, "responses": [{"text": "all quiet here"}]}).to_string()
}

/// Sends `text` into `sid` and reads the operator's frames until that turn ends; returns the
/// turn's `turn_ended`.
async fn one_turn(w: &mut Watch, text: &str) -> Value {
    let r = w
        .request("input", json!({"session_id": w.session, "text": text}))
        .await
        .expect("input");
    let turn = r["turn_id"].clone();
    assert!(turn.is_string(), "{r}");
    w.until("the turn to end", |v| {
        v["event"] == "turn_ended" && v["turn_id"] == turn
    })
    .await
}

fn assert_contiguous(events: &[Value]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["seq"],
            json!(i as u64 + 1),
            "seq from 1, no holes: {events:#?}"
        );
    }
}

/// The session's row in `session.list`.
async fn listed(op: &mut Client, sid: &str) -> Value {
    let r = within("session.list", op.request("session.list", json!({})))
        .await
        .expect("session.list");
    r["sessions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["session_id"] == sid))
        .cloned()
        .unwrap_or_else(|| panic!("session {sid} listed: {r}"))
}

/// Waits until the agent's link holds `n` remote sessions (a resumed one counts again).
async fn remote_sessions(agent: &V2Agent, n: usize) {
    within(&format!("{n} remote sessions at the agent"), async {
        while agent.remote.active() != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Issue 10 item 8: restarting `tether up` — the agent and the hub both stop (the agent
/// first, as on Ctrl-C) and start again on their state — leaves the sessions the agent still
/// has open at the hub: when the agent registers, the hub resumes each (`session_attach` with
/// `after_seq`), its history goes on with no gap, and it keeps its host and its title, the
/// same at the hub and the agent. (Before, every such session was closed "agent
/// disconnected", could not be resumed, and listed without host or title.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_hub_and_agent_resumes_open_sessions() {
    let hub = TestHub::start().await;
    let token = hub.create_token("tether-up").await;
    let mut agent = V2Agent::new(&hub.agent_url(), &token, &chat_script(), None);
    agent.start_link();
    agent.wait_registered().await;
    hub.wait_connected(&agent.agent_id, true).await;
    let mut op = hub.operator(ALICE).await;
    let created = op
        .request(
            "session.create",
            json!({"mode": "chat", "agent_id": agent.agent_id, "title": "disk check"}),
        )
        .await
        .expect("session.create");
    let sid = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    let mut alice = Watch {
        client: op,
        session: sid.clone(),
        seen: Vec::new(),
    };
    alice
        .request("attach", json!({"session_id": sid, "after_seq": 0}))
        .await
        .expect("attach");
    let ended = one_turn(&mut alice, "first question").await;
    assert_eq!(ended["stop"], "completed", "{ended}");
    let before = alice
        .until("the session to be idle", |v| {
            v["event"] == "session_state" && v["state"] == "idle"
        })
        .await;
    let last_before = before["seq"].as_u64().expect("seq");
    drop(alice);

    // Ctrl-C on `tether up`: the agent stops, then the hub.
    let agent_id = agent.agent_id.clone();
    let agent_dir = agent.stop().await;
    let addr = hub.addr;
    let hub_dir = hub.stop().await;

    // Started again on the same state.
    let hub = TestHub::start_in(hub_dir, addr, |_| {}).await;
    let mut op = hub.operator(ALICE).await;
    let row = listed(&mut op, &sid).await;
    assert_ne!(
        row["state"], "closed",
        "open while its agent is away: {row}"
    );
    let mut agent = V2Agent::open_in(agent_dir, &hub.agent_url(), &token, &chat_script(), None);
    assert_eq!(agent.agent_id, agent_id);
    agent.start_link();
    agent.wait_registered().await;
    remote_sessions(&agent, 1).await;

    let row = listed(&mut op, &sid).await;
    assert_eq!(row["state"], "idle", "{row}");
    assert_eq!(row["title"], "disk check", "{row}");
    assert_eq!(row["hostname"], tether_host::host::hostname(), "{row}");
    let at_agent = agent
        .mux
        .list_sessions()
        .sessions
        .into_iter()
        .find(|s| s.session_id.as_str() == sid)
        .expect("the agent still has the session");
    assert_eq!(
        at_agent.title.as_deref(),
        Some("disk check"),
        "titles agree"
    );

    // The operator picks it up where it was: history from the store, then a new turn.
    let mut alice = Watch {
        client: op,
        session: sid.clone(),
        seen: Vec::new(),
    };
    let attached = alice
        .request("attach", json!({"session_id": sid, "after_seq": 0}))
        .await
        .expect("attach after the restart");
    assert_eq!(attached["snapshot"]["state"], "idle", "{attached}");
    assert_eq!(attached["snapshot"]["title"], "disk check", "{attached}");
    assert!(
        attached["snapshot"]["last_seq"].as_u64() >= Some(last_before),
        "{attached}"
    );
    let ended = one_turn(&mut alice, "second question").await;
    assert_eq!(ended["stop"], "completed", "{ended}");
    assert_contiguous(&alice.seen);
    assert!(
        !alice.seen.iter().any(|e| e["event"] == "session_closed"),
        "{:#?}",
        alice.seen
    );
    let (_, body) = http_get(
        hub.addr,
        &format!("/api/v1/sessions/{sid}/events"),
        Some(ALICE),
    )
    .await;
    let stored = body["events"].as_array().cloned().unwrap_or_default();
    assert_contiguous(&stored);
    agent.stop().await;
    hub.stop().await;
}

/// Issue 10 item 8: a link that drops and comes back (the hub and the agent both running)
/// resumes the session: operators attached through the outage stay attached, are attached
/// at the agent again, and carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_link_resumes_its_sessions() {
    let hub = TestHub::start().await;
    let token = hub.create_token("tether-drop").await;
    let mut agent = V2Agent::new(&hub.agent_url(), &token, &chat_script(), None);
    agent.start_link();
    agent.wait_registered().await;
    hub.wait_connected(&agent.agent_id, true).await;
    let mut op = hub.operator(ALICE).await;
    let alice_name = who_am_i(&mut op).await;
    let created = op
        .request(
            "session.create",
            json!({"mode": "chat", "agent_id": agent.agent_id}),
        )
        .await
        .expect("session.create");
    let sid = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    let mut alice = Watch {
        client: op,
        session: sid.clone(),
        seen: Vec::new(),
    };
    alice
        .request("attach", json!({"session_id": sid, "after_seq": 0}))
        .await
        .expect("attach");
    one_turn(&mut alice, "before the drop").await;

    agent.stop_link().await;
    hub.wait_connected(&agent.agent_id, false).await;
    let mut other = hub.operator(BOB).await;
    assert_eq!(listed(&mut other, &sid).await["state"], "idle");
    agent.start_link();
    agent.wait_registered().await;
    // Resumed: the agent replays what the hub missed (its hub users left with the link) and
    // the hub attaches alice there again.
    alice
        .until("alice attached at the agent again", |v| {
            v["event"] == "client_attached" && v["client"]["name"] == alice_name.as_str()
        })
        .await;
    let ended = one_turn(&mut alice, "after the drop").await;
    assert_eq!(ended["stop"], "completed", "{ended}");
    assert_contiguous(&alice.seen);
    assert!(
        !alice.seen.iter().any(|e| e["event"] == "session_closed"),
        "{:#?}",
        alice.seen
    );
    agent.stop().await;
    hub.stop().await;
}

/// Issue 10 item 8: a session the agent no longer has (its state was lost) is closed when
/// the agent comes back, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_agent_lost_is_closed_saying_so() {
    let hub = TestHub::start().await;
    let token = hub.create_token("tether-lost").await;
    let mut agent = V2Agent::new(&hub.agent_url(), &token, &chat_script(), None);
    agent.start_link();
    agent.wait_registered().await;
    hub.wait_connected(&agent.agent_id, true).await;
    let mut op = hub.operator(ALICE).await;
    let created = op
        .request(
            "session.create",
            json!({"mode": "chat", "agent_id": agent.agent_id}),
        )
        .await
        .expect("session.create");
    let sid = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    let mut alice = Watch {
        client: op,
        session: sid.clone(),
        seen: Vec::new(),
    };
    alice
        .request("attach", json!({"session_id": sid, "after_seq": 0}))
        .await
        .expect("attach");
    one_turn(&mut alice, "hello").await;

    // The agent comes back with its identity but without its event log.
    let agent_id = agent.agent_id.clone();
    let old_dir = agent.stop().await;
    let fresh = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    std::fs::copy(
        old_dir.path().join("agent_id"),
        fresh.path().join("agent_id"),
    )
    .expect("copy agent_id");
    let mut agent = V2Agent::open_in(fresh, &hub.agent_url(), &token, &chat_script(), None);
    assert_eq!(agent.agent_id, agent_id);
    agent.start_link();
    let closed = alice
        .until("the lost session to close", |v| {
            v["event"] == "session_closed"
        })
        .await;
    assert_eq!(
        closed["reason"], "the agent no longer has this session",
        "{closed}"
    );
    assert_contiguous(&alice.seen);
    agent.stop().await;
    hub.stop().await;
}
