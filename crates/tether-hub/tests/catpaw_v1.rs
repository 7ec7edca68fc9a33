//! The hub with version-1 (catpaw) agents: registration, heartbeats, alerts, inspect and chat
//! sessions relayed to operators as client-protocol events; agent credentials (bad, revoked,
//! bound to another agent); the REST mirror; live subscriptions; agent replacement.

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

fn new_agent_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Polls `agents.list` until `agent_id` shows a heartbeat; returns its row.
async fn agent_row_with_heartbeat(
    op: &mut tether_transport::client::Client,
    agent_id: &str,
) -> Value {
    within("agents.list to show the heartbeat", async {
        loop {
            let r = op
                .request("agents.list", json!({}))
                .await
                .expect("agents.list");
            if let Some(a) = r["agents"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["agent_id"] == agent_id))
                && a.get("heartbeat").is_some_and(|h| !h.is_null())
            {
                return a.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Polls `alerts.list` (with `params`) until it returns `n` alerts.
async fn alerts_listed(
    op: &mut tether_transport::client::Client,
    params: Value,
    n: usize,
) -> Vec<Value> {
    within(&format!("alerts.list {params} to hold {n}"), async {
        loop {
            let r = op
                .request("alerts.list", params.clone())
                .await
                .expect("alerts.list");
            let alerts = r["alerts"].as_array().cloned().unwrap_or_default();
            if alerts.len() >= n {
                return alerts;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Event frames without the attach/detach bookkeeping (whose presence depends on timing).
fn without_clients(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["event"] != "client_attached" && e["event"] != "client_detached")
        .cloned()
        .collect()
}

fn assert_contiguous(events: &[Value]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["seq"],
            json!(i as u64 + 1),
            "seqs start at 1 with no holes: {events:#?}"
        );
    }
}

/// Requirement 1: a catpaw agent registers with a token, heartbeats, sends alerts, and runs
/// an inspect and a chat session opened by an operator, who sees client-protocol events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catpaw_agent_heartbeats_alerts_and_sessions() {
    let hub = TestHub::start().await;
    let token = hub.create_token("catpaw-db-01").await;
    let agent_id = new_agent_id();
    let mut agent = V1Agent::connect(&hub.agent_url(), &token, &agent_id, "db-01").await;
    let mut alice = hub.operator(ALICE).await;
    let alice_name = who_am_i(&mut alice).await;

    // Heartbeat: agents.list shows it connected, with the figures.
    agent.heartbeat(2, 3, 12.5, 40.25);
    let row = agent_row_with_heartbeat(&mut alice, &agent_id).await;
    assert_eq!(row["connected"], true, "{row}");
    assert_eq!(row["proto"], 1, "{row}");
    assert_eq!(row["hostname"], "db-01");
    assert_eq!(row["ip"], "10.0.0.5");
    assert_eq!(row["os"], "linux");
    assert_eq!(row["arch"], "amd64");
    assert_eq!(row["labels"], json!({"env": "prod", "role": "db"}));
    assert_eq!(row["plugins"], json!(["cpu", "disk", "mem"]));
    assert_eq!(row["agent_version"], "catpaw v0.9.1");
    let hb = &row["heartbeat"];
    assert_eq!(hb["active_sessions"], 2, "{row}");
    assert_eq!(hb["active_alerts"], 3, "{row}");
    assert_eq!(hb["cpu_pct"], 12.5, "{row}");
    assert_eq!(hb["mem_pct"], 40.25, "{row}");
    assert!(hb["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{row}");
    let connected = alice
        .request(
            "agents.list",
            json!({"connected": true, "label": "role=db"}),
        )
        .await
        .expect("agents.list");
    assert_eq!(
        connected["agents"].as_array().map(Vec::len),
        Some(1),
        "{connected}"
    );

    // Alerts (version 1: no seq).
    agent.alerts(vec![
        catpaw_alert("disk_/var", "Critical", json!({"mount": "/var"})),
        catpaw_alert("cpu", "Warning", json!({"cpu": "all"})),
        catpaw_alert("mem", "Ok", json!({})),
    ]);
    let alerts = alerts_listed(&mut alice, json!({"agent_id": agent_id}), 3).await;
    assert_eq!(alerts.len(), 3, "{alerts:#?}");
    // Newest first.
    assert_eq!(alerts[0]["alert_key"], "mem");
    assert_eq!(
        alerts[0]["state"], "resolved",
        "Ok is resolved: {}",
        alerts[0]
    );
    let disk = &alerts[2];
    assert_eq!(disk["alert_key"], "disk_/var");
    assert_eq!(disk["state"], "firing");
    assert_eq!(disk["severity"], "critical");
    assert_eq!(disk["source"], "agent");
    assert_eq!(disk["agent_id"], agent_id.as_str());
    assert_eq!(disk["hostname"], "db-01");
    assert_eq!(disk["labels"], json!({"mount": "/var"}));
    assert_eq!(
        disk["annotations"],
        json!({"threshold": "90", "description": "disk_/var is Critical",
               "description_format": "text"})
    );
    assert_eq!(disk["title"], "disk_/var is Critical");
    assert_eq!(disk["event_count"], 1);
    assert!(
        disk["first_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("2023-11-14T22:13:20")),
        "{disk}"
    );
    let timeline = alice
        .request("alert.events", json!({"alert_id": disk["alert_id"]}))
        .await
        .expect("alert.events");
    let events = timeline["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "{timeline}");
    assert_eq!(events[0]["status"], "Critical");
    assert!(
        events[0].get("seq").is_none(),
        "version 1 alerts carry no seq: {timeline}"
    );

    // An inspect session.
    let created = alice
        .request(
            "session.create",
            json!({"mode": "inspect", "agent_id": agent_id,
                   "params": {"plugin": "disk", "target": "/"}}),
        )
        .await
        .expect("session.create inspect");
    let sid = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    let start = agent.next_of("session_start").await;
    assert_eq!(start["payload"]["session_id"], sid.as_str());
    assert_eq!(start["payload"]["session_type"], "inspect");
    assert!(
        start["payload"]["user_name"]
            .as_str()
            .is_some_and(|n| n.starts_with("alice #")),
        "{start}"
    );
    assert_eq!(start["payload"]["params"]["plugin"], "disk");
    assert!(
        start["payload"].get("class").is_none() && start["payload"].get("policy").is_none(),
        "a version-1 agent never sees version-2 fields: {start}"
    );
    let attached = alice
        .request("attach", json!({"session_id": sid, "after_seq": 0}))
        .await
        .expect("attach");
    assert_eq!(attached["snapshot"]["mode"], "inspect");
    let all = events_until(&mut alice, &sid, "the inspect to close", |v| {
        v["event"] == "session_closed"
    })
    .await;
    assert_contiguous(&all);
    let evs = without_clients(&all);
    assert_eq!(
        names(&evs),
        [
            "session_state",
            "turn_started",
            "session_state",
            "reasoning_delta",
            "tool_call",
            "tool_result",
            "text_delta",
            "turn_ended",
            "session_state",
            "session_closed"
        ],
        "{evs:#?}"
    );
    assert_eq!(evs[0]["state"], "idle");
    let turn = evs[1]["turn_id"].clone();
    assert_eq!(evs[1]["originator"]["name"], alice_name.as_str());
    assert_eq!(evs[1]["originator"]["class"], "human");
    assert_eq!(evs[1]["text"], "inspect disk /");
    assert_eq!(evs[2]["state"], "running");
    assert_eq!(evs[3]["text"], "[Round 1] AI thinking...\n");
    // catpaw's `[Tool] call_tool disk_usage {..}`: the tool that ran, its arguments an object.
    assert_eq!(evs[4]["tool"], "disk_usage");
    assert_eq!(evs[4]["args"], json!({"mount": "/"}));
    assert_eq!(
        evs[5]["call_id"], evs[4]["call_id"],
        "the result pairs with its call"
    );
    assert_eq!(evs[5]["ok"], true);
    assert_eq!(evs[5]["duration_ms"], 3);
    assert_eq!(evs[6]["text"], INSPECT_REPORT);
    assert_eq!(evs[7]["stop"], "completed");
    assert_eq!(evs[8]["state"], "closed");
    for e in evs[1..8].iter().filter(|e| e["event"] != "session_state") {
        assert_eq!(e["turn_id"], turn, "one turn: {e}");
    }
    let listed = alice
        .request("session.list", json!({"agent_id": agent_id}))
        .await
        .expect("session.list");
    let row = listed["sessions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["session_id"] == sid.as_str()))
        .cloned()
        .expect("the session is listed");
    assert_eq!(row["state"], "closed", "{row}");
    assert_eq!(row["agent_id"], agent_id.as_str(), "{row}");

    // A chat session: two inputs, each a whole turn.
    let created = alice
        .request(
            "session.create",
            json!({"mode": "chat", "agent_id": agent_id}),
        )
        .await
        .expect("session.create chat");
    let chat = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    let start = agent.next_of("session_start").await;
    assert_eq!(start["payload"]["session_type"], "chat");
    alice
        .request("attach", json!({"session_id": chat, "after_seq": 0}))
        .await
        .expect("attach chat");
    for (n, text) in [(1, "how full is /var?"), (2, "and /home?")] {
        let r = alice
            .request("input", json!({"session_id": chat, "text": text}))
            .await
            .expect("input");
        let turn_id = r["turn_id"].clone();
        assert!(turn_id.is_string(), "{r}");
        let got = agent.next_of("session_input").await;
        assert_eq!(got["payload"]["message"], text);
        let mut ended = false;
        let evs = events_until(&mut alice, &chat, "the chat turn to end", |v| {
            if v["event"] == "turn_ended" && v["turn_id"] == turn_id {
                ended = true;
            }
            ended && v["event"] == "session_state" && v["state"] == "idle"
        })
        .await;
        let evs: Vec<Value> = without_clients(&evs)
            .into_iter()
            .filter(|e| e.get("turn_id") == Some(&turn_id))
            .collect();
        assert_eq!(
            names(&evs),
            ["turn_started", "text_delta", "turn_ended"],
            "turn {n}: {evs:#?}"
        );
        assert_eq!(evs[0]["text"], text);
        assert_eq!(evs[0]["originator"]["name"], alice_name.as_str());
        assert_eq!(evs[1]["text"], format!("answer {n}: you said {text}"));
        assert_eq!(evs[2]["stop"], "completed");
    }
    alice
        .request("session.close", json!({"session_id": chat}))
        .await
        .expect("session.close");
    let cancel = agent.next_of("session_cancel").await;
    assert_eq!(cancel["payload"]["session_id"], chat.as_str());
    let closed = next_event(&mut alice, &chat, "session_closed").await;
    assert_eq!(
        closed["reason"],
        format!("closed by {alice_name}"),
        "{closed}"
    );

    // The store kept the whole chat, seq 1.. with no holes.
    let (status, body) = http_get(
        hub.addr,
        &format!("/api/v1/sessions/{chat}/events"),
        Some(ALICE),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let stored = body["events"].as_array().cloned().unwrap_or_default();
    assert_contiguous(&stored);
    assert_eq!(body["last_seq"], json!(stored.len()));
    hub.stop().await;
}

/// Requirement 2: credentials are checked before the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_revoked_and_borrowed_tokens_are_refused() {
    let hub = TestHub::start().await;
    let url = hub.agent_url();
    let a = new_agent_id();
    let b = new_agent_id();
    let failures = || hub.hub().metrics().auth_failures.load(Ordering::Relaxed);

    // Unknown token: 401 before any upgrade.
    let r = dial_agent(&url, "tt_not-a-real-token", &a, "1").await;
    assert_eq!(refused_status(r), 401);
    assert_eq!(failures(), 1);

    // Revoked token: 401.
    let revoked = hub.create_token("soon-revoked").await;
    let ok = V1Agent::connect(&url, &revoked, &a, "a-host").await;
    ok.close();
    drop(ok);
    hub.wait_connected(&a, false).await;
    assert_eq!(hub.revoke_token("soon-revoked").await, 1);
    let r = dial_agent(&url, &revoked, &a, "1").await;
    assert_eq!(refused_status(r), 401);

    // A token bound to agent A presented by agent B: 403; A itself still gets in.
    let token = hub.create_token("web-01").await;
    let first = V1Agent::connect(&url, &token, &a, "a-host").await;
    hub.wait_connected(&a, true).await;
    let r = dial_agent(&url, &token, &b, "1").await;
    assert_eq!(refused_status(r), 403);
    let r = dial_agent(&url, &token, &b, "2").await;
    assert_eq!(refused_status(r), 403);
    assert!(!hub.hub().is_connected(&b));
    assert!(failures() >= 4, "every refusal is counted: {}", failures());
    drop(first);
    hub.stop().await;
}

/// Requirement 5: the REST mirror, with a bearer token (401 without).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_mirror() {
    let hub = TestHub::start().await;
    let token = hub.create_token("catpaw-rest").await;
    let agent_id = new_agent_id();
    let mut agent = V1Agent::connect(&hub.agent_url(), &token, &agent_id, "rest-01").await;
    agent.heartbeat(0, 5, 1.0, 2.0);
    let mut events = Vec::new();
    for i in 0..7u32 {
        let status = if i.is_multiple_of(2) {
            "Critical"
        } else {
            "Warning"
        };
        let role = if i < 3 { "db" } else { "web" };
        events.push(catpaw_alert(
            &format!("k{i}"),
            status,
            json!({"role": role}),
        ));
    }
    agent.alerts(events);
    hub.wait_alerts(7).await;

    // Unauthorized without (or with a wrong) token.
    for path in [
        "/api/v1/agents",
        "/api/v1/alerts",
        "/api/v1/sessions/x/events",
    ] {
        let (status, body) = http_get(hub.addr, path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["reason"], "unauthorized", "{path}: {body}");
        let (status, _) = http_get(hub.addr, path, Some("wrong-token")).await;
        assert_eq!(status, 401, "{path}");
    }

    // Agents.
    let (status, body) = http_get(hub.addr, "/api/v1/agents", Some(ROBOT)).await;
    assert_eq!(status, 200, "{body}");
    let agents = body["agents"].as_array().cloned().unwrap_or_default();
    assert_eq!(agents.len(), 1, "{body}");
    assert_eq!(agents[0]["agent_id"], agent_id.as_str());
    assert_eq!(agents[0]["connected"], true);
    let (_, body) = http_get(
        hub.addr,
        "/api/v1/agents?label=env%3Dprod&connected=true",
        Some(WATCHER),
    )
    .await;
    assert_eq!(body["agents"].as_array().map(Vec::len), Some(1), "{body}");
    let (_, body) = http_get(
        hub.addr,
        "/api/v1/agents?label=env%3Dstaging",
        Some(WATCHER),
    )
    .await;
    assert_eq!(body["agents"].as_array().map(Vec::len), Some(0), "{body}");
    // `?token=` works too (browsers).
    let (status, _) = http_get(hub.addr, &format!("/api/v1/agents?token={ALICE}"), None).await;
    assert_eq!(status, 200);

    // Alerts: filters.
    let (status, body) = http_get(
        hub.addr,
        "/api/v1/alerts?state=firing&severity=critical",
        Some(ALICE),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let crit = body["alerts"].as_array().cloned().unwrap_or_default();
    assert_eq!(crit.len(), 4, "{body}");
    assert!(crit.iter().all(|a| a["severity"] == "critical"));
    let (_, body) = http_get(hub.addr, "/api/v1/alerts?label=role%3Ddb", Some(ALICE)).await;
    let db = body["alerts"].as_array().cloned().unwrap_or_default();
    assert_eq!(db.len(), 3, "{body}");
    assert!(db.iter().all(|a| a["labels"]["role"] == "db"));
    let (_, body) = http_get(
        hub.addr,
        &format!(
            "/api/v1/alerts?agent_id={agent_id}&severity=warning&label=role%3Dweb&source=agent"
        ),
        Some(ALICE),
    )
    .await;
    assert_eq!(body["alerts"].as_array().map(Vec::len), Some(2), "{body}");
    for bad in [
        "state=Exploded",
        "severity=loud",
        "source=nagios",
        "cursor=x",
    ] {
        let (status, body) =
            http_get(hub.addr, &format!("/api/v1/alerts?{bad}"), Some(ALICE)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["reason"], "bad_request");
        let field = bad.split('=').next().unwrap_or_default();
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains(field)),
            "the message names `{field}`: {body}"
        );
    }

    // Alerts: paging with the cursor, newest first, no overlap, nothing missed.
    let mut seen: Vec<i64> = Vec::new();
    let mut path = "/api/v1/alerts?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let (status, body) = http_get(hub.addr, &path, Some(ALICE)).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        let ids: Vec<i64> = body["alerts"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["alert_id"].as_i64()).collect())
            .unwrap_or_default();
        assert!(ids.len() <= 3);
        seen.extend(&ids);
        match body["next_cursor"].as_str() {
            Some(next) => path = format!("/api/v1/alerts?limit=3&cursor={next}"),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first (same time: newest id first), no repeats: {seen:?}"
    );

    // Session events, exactly as operators received them.
    let mut alice = hub.operator(ALICE).await;
    let created = alice
        .request(
            "session.create",
            json!({"mode": "inspect", "agent_id": agent_id, "params": {"plugin": "disk"}}),
        )
        .await
        .expect("session.create");
    let sid = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    agent.next_of("session_start").await;
    alice
        .request("attach", json!({"session_id": sid, "after_seq": 0}))
        .await
        .expect("attach");
    let live = events_until(&mut alice, &sid, "the inspect to close", |v| {
        v["event"] == "session_closed"
    })
    .await;
    let (status, body) = http_get(
        hub.addr,
        &format!("/api/v1/sessions/{sid}/events"),
        Some(WATCHER),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["events"],
        json!(live),
        "REST events = what the operator got"
    );
    assert_eq!(body["last_seq"], json!(live.len()));
    let (_, body) = http_get(
        hub.addr,
        &format!("/api/v1/sessions/{sid}/events?after_seq=2&limit=3"),
        Some(WATCHER),
    )
    .await;
    assert_eq!(body["events"], json!(live[2..5]), "{body}");
    let (status, body) = http_get(
        hub.addr,
        "/api/v1/sessions/no-such-session/events",
        Some(WATCHER),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["reason"], "unknown_session");
    hub.stop().await;
}

/// Requirement 6: alerts.subscribe and agents.subscribe push control frames live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_push_agents_and_alerts_live() {
    let hub = TestHub::start().await;
    let token = hub.create_token("catpaw-sub").await;
    let agent_id = new_agent_id();
    let mut fleet = hub.operator(WATCHER).await;
    let mut all_alerts = hub.operator(ALICE).await;
    let mut critical = hub.operator(BOB).await;
    fleet
        .request("agents.subscribe", json!({}))
        .await
        .expect("agents.subscribe");
    all_alerts
        .request("alerts.subscribe", json!({}))
        .await
        .expect("alerts.subscribe");
    critical
        .request(
            "alerts.subscribe",
            json!({"state": "firing", "severity": "critical", "agent_id": agent_id}),
        )
        .await
        .expect("alerts.subscribe filtered");
    let bad = critical
        .request("alerts.subscribe", json!({"label": "no-equals-sign"}))
        .await;
    assert_eq!(reason(&bad), "bad_request");

    // Connect: an `agent` frame.
    let agent = V1Agent::connect(&hub.agent_url(), &token, &agent_id, "sub-01").await;
    let f = next_control(&mut fleet, "agent", |f| {
        f["agent"]["agent_id"] == agent_id.as_str()
    })
    .await;
    assert_eq!(f["agent"]["connected"], true, "{f}");
    assert_eq!(f["agent"]["hostname"], "sub-01", "{f}");

    // Heartbeat: another, with the figures.
    agent.heartbeat(1, 4, 55.5, 66.5);
    let f = next_control(&mut fleet, "agent", |f| !f["agent"]["heartbeat"].is_null()).await;
    assert_eq!(f["agent"]["heartbeat"]["active_alerts"], 4, "{f}");
    assert_eq!(f["agent"]["heartbeat"]["cpu_pct"], 55.5, "{f}");

    // Alerts: every subscriber whose filter matches, live.
    agent.alerts(vec![
        catpaw_alert("w1", "Warning", json!({"x": "1"})),
        catpaw_alert("c1", "Critical", json!({"x": "2"})),
    ]);
    let w = next_control(&mut all_alerts, "alert", |_| true).await;
    assert_eq!(w["alert"]["alert_key"], "w1", "{w}");
    assert_eq!(w["alert"]["agent_id"], agent_id.as_str());
    assert_eq!(w["alert"]["hostname"], "sub-01");
    assert!(w["alert"]["alert_id"].is_i64(), "{w}");
    assert_eq!(w["change"], "created", "{w}");
    assert_eq!(w["previous_state"], Value::Null, "{w}");
    let c = next_control(&mut all_alerts, "alert", |_| true).await;
    assert_eq!(c["alert"]["alert_key"], "c1", "{c}");
    // The filtered subscriber gets the critical one only (the warning came first).
    let c = next_control(&mut critical, "alert", |_| true).await;
    assert_eq!(c["alert"]["alert_key"], "c1", "{c}");
    assert_eq!(c["alert"]["severity"], "critical");
    assert_eq!(c["alert"]["state"], "firing");
    agent.alerts(vec![catpaw_alert("c2", "Critical", json!({}))]);
    let c = next_control(&mut critical, "alert", |_| true).await;
    assert_eq!(c["alert"]["alert_key"], "c2", "{c}");

    // Disconnect: an `agent` frame saying so.
    agent.close();
    let f = next_control(&mut fleet, "agent", |f| f["agent"]["connected"] == false).await;
    assert_eq!(f["agent"]["agent_id"], agent_id.as_str(), "{f}");
    drop(agent);
    hub.stop().await;
}

/// Requirement 7: the same agent id connecting again replaces the first connection cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_of_the_same_agent_replaces_the_first() {
    let hub = TestHub::start().await;
    let token = hub.create_token("catpaw-twice").await;
    let agent_id = new_agent_id();
    let mut first = V1Agent::connect(&hub.agent_url(), &token, &agent_id, "twice-01").await;
    hub.wait_connected(&agent_id, true).await;
    // A chat running on the first connection.
    let mut alice = hub.operator(ALICE).await;
    let created = alice
        .request(
            "session.create",
            json!({"mode": "chat", "agent_id": agent_id}),
        )
        .await
        .expect("session.create on the first connection");
    let old_chat = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    first.next_of("session_start").await;
    alice
        .request("attach", json!({"session_id": old_chat, "after_seq": 0}))
        .await
        .expect("attach");

    let mut second = V1Agent::connect(&hub.agent_url(), &token, &agent_id, "twice-01").await;

    // The first is told to go, then closed.
    let bye = first.next_of("disconnect").await;
    assert!(bye["payload"]["reason"].is_string(), "{bye}");
    assert!(
        bye["payload"]["retry_after_sec"].as_u64().is_some(),
        "{bye}"
    );
    first.next_of("__closed__").await;
    // Its session ended with it (as when an agent disconnects): operators are not left
    // waiting on a session nobody runs.
    let closed = next_event(&mut alice, &old_chat, "session_closed").await;
    assert!(closed["reason"].is_string(), "{closed}");

    // The second still works and the hub lists the agent once, connected.
    second.heartbeat(0, 9, 3.0, 4.0);
    let row = within("the second connection's heartbeat", async {
        loop {
            let r = alice
                .request("agents.list", json!({}))
                .await
                .expect("agents.list");
            let rows = r["agents"].as_array().cloned().unwrap_or_default();
            assert_eq!(rows.len(), 1, "one agent: {r}");
            if rows[0]["heartbeat"]["active_alerts"] == 9 {
                return rows[0].clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(row["connected"], true, "{row}");
    assert_eq!(hub.hub().connected_agents(), 1);
    // Sessions go to the live connection.
    let created = alice
        .request(
            "session.create",
            json!({"mode": "chat", "agent_id": agent_id}),
        )
        .await
        .expect("session.create on the replacement");
    let start = second.next_of("session_start").await;
    assert_eq!(start["payload"]["session_id"], created["session_id"]);
    // Nothing more reached the replaced connection.
    assert!(
        first.inbound_is_empty(),
        "the replaced connection got more frames"
    );
    drop(first);
    drop(second);
    hub.stop().await;
}

/// Issue 10 item 11: catpaw's heartbeat as it really is (`heartbeatPayload` with `cpu_pct` and
/// `mem_pct` left out: catpaw fills neither and Go's `omitempty` drops them) shows those
/// figures as unknown — absent — not as 0 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_cpu_or_mem_figure_is_unknown_not_zero() {
    let hub = TestHub::start().await;
    let token = hub.create_token("catpaw-hb").await;
    let agent_id = new_agent_id();
    let agent = V1Agent::connect(&hub.agent_url(), &token, &agent_id, "hb-01").await;
    let mut alice = hub.operator(ALICE).await;
    agent.send(
        "heartbeat",
        json!({"active_sessions": 1, "active_alerts": 0}),
    );
    let row = agent_row_with_heartbeat(&mut alice, &agent_id).await;
    let hb = &row["heartbeat"];
    assert_eq!(hb["active_sessions"], 1, "{row}");
    assert!(
        hb.get("cpu_pct").is_none() && hb.get("mem_pct").is_none(),
        "unknown figures are absent, not 0: {row}"
    );
    drop(agent);
    hub.stop().await;
}

/// The first `ack` on a raw agent connection (after sending `register`), or `None` if the hub
/// closed first.
async fn register_answer(ws: Ws, register: Value) -> (Option<Value>, bool) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut sink, mut stream) = futures_util::StreamExt::split(ws);
    sink.send(Message::Text(register.to_string().into()))
        .await
        .expect("send register");
    let mut ack = None;
    let mut closed = false;
    within("the hub's answer to register", async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                    if v["type"] == "ack" && ack.is_none() {
                        ack = Some(v);
                        if ack.as_ref().is_some_and(|a| a["payload"]["ok"] == true) {
                            return;
                        }
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        closed = true;
    })
    .await;
    (ack, closed)
}

/// Issue 10 item 11: a `register` with Go's nil `labels` and `plugins` (`null`: no
/// `omitempty` on them) is answered `ok`; one that does not decode is answered `ok: false`
/// with the decoding error (naming the field), then closed — not dropped silently and
/// logged as "did not register in time".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_are_answered_even_when_refused() {
    let hub = TestHub::start().await;
    let token = hub.create_token("catpaw-nil-maps").await;
    let agent_id = new_agent_id();
    let ws = dial_agent(&hub.agent_url(), &token, &agent_id, "1")
        .await
        .expect("upgrade");
    let mut payload = register_payload("nil-maps-01");
    payload["labels"] = Value::Null;
    payload["plugins"] = Value::Null;
    let register = json!({"type": "register", "id": "reg-1", "payload": payload});
    let (ack, _) = register_answer(ws, register).await;
    let ack = ack.expect("an ack");
    assert_eq!(ack["ref_id"], "reg-1", "{ack}");
    assert_eq!(ack["payload"]["ok"], true, "{ack}");

    let token = hub.create_token("catpaw-bad-register").await;
    let agent_id = new_agent_id();
    let ws = dial_agent(&hub.agent_url(), &token, &agent_id, "1")
        .await
        .expect("upgrade");
    let mut payload = register_payload("bad-01");
    payload["hostname"] = json!(42);
    let register = json!({"type": "register", "id": "reg-2", "payload": payload});
    let (ack, closed) = register_answer(ws, register).await;
    let ack = ack.expect("a refusal, not silence");
    assert_eq!(ack["ref_id"], "reg-2", "{ack}");
    assert_eq!(ack["payload"]["ok"], false, "{ack}");
    let error = ack["payload"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("register") && error.contains("hostname"),
        "the refusal says what was wrong: {ack}"
    );
    assert!(closed, "the hub closes after refusing");
    assert!(!hub.hub().is_connected(&agent_id));
    hub.stop().await;
}

/// `session.create` on an agent in manual mode: the agent acks the `session_start` (as catpaw
/// does at once) while the operator waits for the reply. Returns the session id and the
/// `session_start` frame.
async fn create_on_manual(
    alice: &mut tether_transport::client::Client,
    agent: &mut V1Agent,
    params: Value,
) -> (String, Value) {
    let (created, start) = tokio::join!(alice.request("session.create", params), async {
        let start = agent.next_of("session_start").await;
        agent.ack(&start);
        start
    });
    let sid = created.expect("session.create")["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    (sid, start)
}

/// The events of one diagnose session driven frame by frame as catpaw's Go code writes them,
/// ending with a final `done` frame carrying a report of `report_bytes`.
async fn catpaw_diagnose(
    agent: &mut V1Agent,
    alice: &mut tether_transport::client::Client,
    agent_id: &str,
    report: &str,
) -> Vec<Value> {
    let (sid, start) = create_on_manual(
        alice,
        agent,
        json!({"mode": "diagnose", "agent_id": agent_id,
               "params": {"alert": "disk /data is 95% full", "plugin": "disk"}}),
    )
    .await;
    // catpaw's diagnose reads the alert text from `params.descriptions` only.
    assert_eq!(
        start["payload"]["params"]["descriptions"], "disk /data is 95% full",
        "{start}"
    );
    alice
        .request("attach", json!({"session_id": sid, "after_seq": 0}))
        .await
        .expect("attach");
    // `RunDiagnoseStreaming`'s progress lines, then `runRemoteSession`'s final frame.
    agent.output(&sid, "[Round 1] AI thinking...", "thinking", false);
    agent.output(
        &sid,
        r#"[Tool] call_tool disk_usage {"mount":"/data"}"#,
        "tool_call",
        false,
    );
    agent.output(
        &sid,
        "[Tool done] call_tool (ok, 120B, 1m2.5s)",
        "tool_result",
        false,
    );
    agent.output(&sid, "[Tool] cpu_usage ", "tool_call", false);
    agent.output(
        &sid,
        "[Tool done] cpu_usage (error, 31B, 850µs)",
        "tool_result",
        false,
    );
    agent.output(&sid, "Looking at the numbers.", "answer", false);
    agent.send(
        "session_output",
        json!({"session_id": sid, "delta": "", "stage": "", "done": true, "report": report}),
    );
    let evs = events_until(alice, &sid, "the diagnosis to close", |v| {
        v["event"] == "session_closed"
    })
    .await;
    without_clients(&evs)
}

/// Issue 10 item 11: catpaw bounds only what it reads, so its final `done` frame carries the
/// whole report whatever its size. One over 1 MiB is shown (the hub reads `session_output`
/// frames up to `MAX_SESSION_OUTPUT_FRAME_BYTES`); one over that limit ends the turn, and the
/// session, with an error saying the report was too large — the session is never left
/// `running`. catpaw's tool lines show the tool that ran and its arguments as an object, with
/// Go durations read (`1m2.5s`, `850µs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catpaw_reports_over_1_mib_are_shown_or_explained() {
    let hub = TestHub::start().await;
    let token = hub.create_token("catpaw-big").await;
    let agent_id = new_agent_id();
    let mut agent = V1Agent::connect(&hub.agent_url(), &token, &agent_id, "big-01").await;
    agent.manual();
    let mut alice = hub.operator(ALICE).await;

    let report = format!("## Report\n\n{}", "the disk is full. ".repeat(120_000));
    assert!(report.len() > 2 << 20);
    let evs = catpaw_diagnose(&mut agent, &mut alice, &agent_id, &report).await;
    assert_eq!(
        names(&evs),
        [
            "session_state",
            "turn_started",
            "session_state",
            "reasoning_delta",
            "tool_call",
            "tool_result",
            "tool_call",
            "tool_result",
            "text_delta",
            "text_delta",
            "turn_ended",
            "session_state",
            "session_closed"
        ],
        "{:#?}",
        names(&evs)
    );
    assert_eq!(evs[1]["text"], "diagnose: disk /data is 95% full");
    assert_eq!(evs[4]["tool"], "disk_usage");
    assert_eq!(evs[4]["args"], json!({"mount": "/data"}));
    assert_eq!(evs[5]["call_id"], evs[4]["call_id"]);
    assert_eq!(evs[5]["ok"], true);
    assert_eq!(evs[5]["duration_ms"], 62_500);
    assert_eq!(evs[6]["tool"], "cpu_usage");
    assert_eq!(evs[6]["args"], json!({}));
    assert_eq!(evs[7]["call_id"], evs[6]["call_id"]);
    assert_eq!(evs[7]["ok"], false);
    assert_eq!(evs[7]["duration_ms"], 1);
    assert_eq!(evs[9]["text"], report.as_str(), "the whole report");
    assert_eq!(evs[10]["stop"], "completed");
    assert_eq!(evs[12]["reason"], "finished");

    // Just over `tether_proto::link::MAX_SESSION_OUTPUT_FRAME_BYTES` (8 MiB).
    let huge = "x".repeat((8 << 20) + 1);
    let evs = catpaw_diagnose(&mut agent, &mut alice, &agent_id, &huge).await;
    let ended = evs
        .iter()
        .find(|e| e["event"] == "turn_ended")
        .expect("the turn ends");
    assert_eq!(ended["stop"], "error", "{ended}");
    let error = ended["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("final report") && error.contains("bytes"),
        "the error says the report was too large: {ended}"
    );
    let closed = evs.last().expect("session_closed");
    assert_eq!(closed["event"], "session_closed");
    assert_eq!(closed["reason"], error, "{closed}");
    assert!(!evs.iter().any(|e| e["text"] == huge.as_str()), "not shown");
    // The agent is still connected and served.
    assert!(hub.hub().is_connected(&agent_id));
    drop(agent);
    hub.stop().await;
}

/// Issue 10 item 11: cancelling a version-1 turn ends it `cancelled` and closes the session
/// saying who cancelled it (catpaw cancels whole sessions, then sends a bare `done`, which
/// changes nothing); `session.close` says who closed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_v1_turn_says_cancelled_and_who() {
    let hub = TestHub::start().await;
    let token = hub.create_token("catpaw-cancel").await;
    let agent_id = new_agent_id();
    let mut agent = V1Agent::connect(&hub.agent_url(), &token, &agent_id, "cancel-01").await;
    agent.manual();
    let mut alice = hub.operator(ALICE).await;
    let alice_name = who_am_i(&mut alice).await;

    let (sid, _) = create_on_manual(
        &mut alice,
        &mut agent,
        json!({"mode": "chat", "agent_id": agent_id}),
    )
    .await;
    alice
        .request("attach", json!({"session_id": sid, "after_seq": 0}))
        .await
        .expect("attach");
    let r = alice
        .request(
            "input",
            json!({"session_id": sid, "text": "a long question"}),
        )
        .await
        .expect("input");
    let turn_id = r["turn_id"].clone();
    agent.next_of("session_input").await;
    agent.output(&sid, "[Round 1] thinking...", "thinking", false);
    alice
        .request("cancel", json!({"session_id": sid, "turn_id": turn_id}))
        .await
        .expect("cancel");
    let cancel = agent.next_of("session_cancel").await;
    assert_eq!(cancel["payload"]["session_id"], sid.as_str());
    assert_eq!(
        cancel["payload"]["reason"],
        format!("cancelled by {alice_name}")
    );
    // catpaw's session goroutine ends with its deferred bare `done`.
    agent.output(&sid, "", "", true);
    let evs = events_until(&mut alice, &sid, "the cancelled session to close", |v| {
        v["event"] == "session_closed"
    })
    .await;
    let ended = evs
        .iter()
        .find(|e| e["event"] == "turn_ended")
        .expect("turn_ended");
    assert_eq!(ended["turn_id"], turn_id);
    assert_eq!(ended["stop"], "cancelled", "{ended}");
    let closed = evs.last().expect("session_closed");
    assert_eq!(
        closed["reason"],
        format!("cancelled by {alice_name}"),
        "{closed}"
    );
    // The `done` after it is read (frames are handled in order: the heartbeat after it
    // shows) and adds nothing.
    agent.send(
        "heartbeat",
        json!({"active_sessions": 7, "active_alerts": 0}),
    );
    within("the heartbeat after the done", async {
        loop {
            let row = agent_row_with_heartbeat(&mut alice, &agent_id).await;
            if row["heartbeat"]["active_sessions"] == 7 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let (_, body) = http_get(
        hub.addr,
        &format!("/api/v1/sessions/{sid}/events"),
        Some(ALICE),
    )
    .await;
    let stored = body["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(stored.last(), Some(closed), "nothing after session_closed");
    assert_eq!(
        stored
            .iter()
            .filter(|e| e["event"] == "turn_ended" || e["event"] == "session_closed")
            .count(),
        2,
        "{stored:#?}"
    );

    // `session.close`: closed, saying by whom.
    let (sid, _) = create_on_manual(
        &mut alice,
        &mut agent,
        json!({"mode": "chat", "agent_id": agent_id}),
    )
    .await;
    alice
        .request("attach", json!({"session_id": sid, "after_seq": 0}))
        .await
        .expect("attach");
    alice
        .request("session.close", json!({"session_id": sid}))
        .await
        .expect("session.close");
    let cancel = agent.next_of("session_cancel").await;
    assert_eq!(
        cancel["payload"]["reason"],
        format!("closed by {alice_name}")
    );
    agent.output(&sid, "", "", true);
    let closed = next_event(&mut alice, &sid, "session_closed").await;
    assert_eq!(
        closed["reason"],
        format!("closed by {alice_name}"),
        "{closed}"
    );
    drop(agent);
    hub.stop().await;
}

/// Issue 10 item 9: agents on hosts with the same name are told apart by their credential's
/// name (`token_name`); the connections of one operator credential (two console tabs and a
/// CLI) are told apart by their connection tag and client name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_operator_connections_are_told_apart() {
    let hub = TestHub::start().await;
    let web = hub.create_token("vm-web-01").await;
    let db = hub.create_token("vm-db-01").await;
    let (web_id, db_id) = (new_agent_id(), new_agent_id());
    let web_agent = V1Agent::connect(&hub.agent_url(), &web, &web_id, "vm").await;
    let db_agent = V1Agent::connect(&hub.agent_url(), &db, &db_id, "vm").await;
    let mut tab1 = hub.operator(ALICE).await;
    let r = tab1
        .request("agents.list", json!({}))
        .await
        .expect("agents.list");
    let rows = r["agents"].as_array().cloned().unwrap_or_default();
    let row = |id: &str| {
        rows.iter()
            .find(|a| a["agent_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("agent {id} listed: {r}"))
    };
    assert_eq!(row(&web_id)["hostname"], "vm");
    assert_eq!(row(&web_id)["token_name"], "vm-web-01", "{r}");
    assert_eq!(row(&db_id)["hostname"], "vm");
    assert_eq!(row(&db_id)["token_name"], "vm-db-01", "{r}");

    // Three connections of the operator `alice`.
    let connect = |client_name: &'static str| {
        let url = hub.operator_url();
        async move {
            let mut c = within(
                "operator connect",
                tether_transport::client::Client::connect_ws(&url, Some(ALICE)),
            )
            .await
            .expect("connect");
            let hello = c
                .request("hello", json!({"client_name": client_name}))
                .await
                .expect("hello");
            (c, hello)
        }
    };
    let (mut tab2, hello2) = connect("tether-console").await;
    let (mut cli, hello3) = connect("tether-cli").await;
    let name1 = who_am_i(&mut tab1).await;
    let (name2, name3) = (
        hello2["name"].as_str().unwrap_or_default().to_owned(),
        hello3["name"].as_str().unwrap_or_default().to_owned(),
    );
    for (hello_name, client_name) in [(&name2, "tether-console"), (&name3, "tether-cli")] {
        assert!(
            hello_name.starts_with("alice #") && hello_name.ends_with(&format!("({client_name})")),
            "name, connection tag, client: {hello_name}"
        );
    }
    let tag = |id: &Value| {
        id.as_str()
            .and_then(|i| i.rsplit_once('/'))
            .map(|(_, n)| n.to_owned())
    };
    assert_eq!(
        Some(format!(
            "alice #{} (tether-console)",
            tag(&hello2["client_id"]).expect("tag")
        )),
        Some(name2.clone()),
        "the tag is the client id's connection number: {hello2}"
    );
    assert_ne!(name1, name2);
    assert_ne!(name2, name3);

    // All three in one session: three distinct clients.
    let created = tab1
        .request(
            "session.create",
            json!({"mode": "chat", "agent_id": web_id}),
        )
        .await
        .expect("session.create");
    let sid = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    for c in [&mut tab1, &mut tab2, &mut cli] {
        c.request("attach", json!({"session_id": sid}))
            .await
            .expect("attach");
    }
    let mut seen = std::collections::BTreeSet::new();
    let (_, body) = within("three client_attached events", async {
        loop {
            let (status, body) = http_get(
                hub.addr,
                &format!("/api/v1/sessions/{sid}/events"),
                Some(ALICE),
            )
            .await;
            let attached = body["events"]
                .as_array()
                .map(|e| e.iter().filter(|e| e["event"] == "client_attached").count())
                .unwrap_or(0);
            if attached >= 3 {
                return (status, body);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    for e in body["events"].as_array().into_iter().flatten() {
        if e["event"] == "client_attached" {
            seen.insert(e["client"]["name"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(
        seen,
        [name1, name2, name3].into_iter().collect(),
        "each connection is its own client"
    );
    drop((web_agent, db_agent));
    hub.stop().await;
}

/// Issue 10 item 11 (verified): catpaw's `alertEventItem` has no `omitempty` on `labels`, so
/// a Go nil map arrives as `"labels": null` — stored as no labels. One event the hub cannot
/// store (an empty `alert_key`) is refused and counted alone; the rest of its batch is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catpaw_nil_labels_are_empty_and_one_bad_event_spares_its_batch() {
    let hub = TestHub::start().await;
    let token = hub.create_token("catpaw-nil-labels").await;
    let agent_id = new_agent_id();
    let agent = V1Agent::connect(&hub.agent_url(), &token, &agent_id, "nil-01").await;
    let mut nil_labels = catpaw_alert("ntp", "Warning", Value::Null);
    nil_labels.as_object_mut().expect("object").remove("attrs"); // `attrs,omitempty`: a nil map is left out
    let keyless = catpaw_alert("", "Critical", json!({"x": "1"}));
    let fine = catpaw_alert("disk", "Ok", json!({"mount": "/"}));
    agent.alerts(vec![nil_labels, keyless, fine]);
    let mut alice = hub.operator(ALICE).await;
    let alerts = alerts_listed(&mut alice, json!({"agent_id": agent_id}), 2).await;
    let keys: Vec<&str> = alerts
        .iter()
        .filter_map(|a| a["alert_key"].as_str())
        .collect();
    assert_eq!(keys, ["disk", "ntp"], "{alerts:#?}");
    assert_eq!(alerts[1]["labels"], json!({}), "{alerts:#?}");
    let m = hub.hub().metrics();
    assert_eq!(m.alerts_rejected.load(Ordering::Relaxed), 1);
    assert_eq!(m.alerts_stored.load(Ordering::Relaxed), 2);
    assert!(hub.hub().is_connected(&agent_id));
    drop(agent);
    hub.stop().await;
}
