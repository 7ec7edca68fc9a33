//! Alerts from a peer never take the hub down and are never lost without a trace (issue 9,
//! findings 1 and 2), over real sockets, a real hub and, for the spool cases, the real agent
//! link.
//!
//! * A far-future `event_time` (year 11476) once made the store's time formatting panic while
//!   it held the SQLite mutex: every later store call failed ("store lock poisoned"), and the
//!   agent's spool resent it after every restart.
//! * 30 alerts of 60 000 bytes each were sent in one 1.8 MB frame, which the hub dropped with a
//!   log line; a later alert's `alert_ack` then deleted all of them from the agent's spool.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tether_proto::link::{AlertEvent, AlertStatus};

fn v2_alert(seq: u64, key: &str, event_time: i64, description: &str) -> Value {
    json!({
        "event_time": event_time,
        "event_status": "Critical",
        "alert_key": key,
        "labels": {"check": "adversarial"},
        "description": description,
        "seq": seq,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_alert_does_not_poison_the_store() {
    let hub = TestHub::start().await;
    let token = hub.create_token("far-future").await;
    let agent_id = uuid::Uuid::now_v7().to_string();
    let (mut agent, ack) =
        V1Agent::connect_with(&hub.agent_url(), &token, &agent_id, "h1", "2").await;
    assert_eq!(ack["payload"]["proto"], 2, "{ack}");

    agent.alerts(vec![v2_alert(
        1,
        "future",
        300_000_000_000,
        "from year 11476",
    )]);
    let ack = agent.next_of("alert_ack").await;
    assert_eq!(ack["payload"]["upto_seq"], 1, "{ack}");
    // The store still works: a normal alert after it is stored and acknowledged too.
    agent.alerts(vec![v2_alert(2, "normal", 1_700_000_000, "ordinary")]);
    let ack = agent.next_of("alert_ack").await;
    assert_eq!(ack["payload"]["upto_seq"], 2, "{ack}");
    assert_eq!(hub.wait_alerts(2).await, 2);

    // The far-future time was replaced and flagged, and REST still answers.
    let (status, body) = http_get(hub.addr, "/api/v1/alerts", Some(ALICE)).await;
    assert_eq!(status, 200, "{body}");
    let future = body["alerts"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["alert_key"] == "future"))
        .cloned()
        .unwrap_or_else(|| panic!("the far-future alert is listed: {body}"));
    assert_eq!(future["annotations"]["event_time_clamped"], "300000000000");
    assert!(
        future["last_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{future}"
    );
    hub.stop().await;
}

/// The alert reaches the spool of a real agent while the hub is away; the hub comes back,
/// stores it and keeps storing, and keeps doing so after its own restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_alert_in_the_spool_survives_hub_restarts() {
    let hub = TestHub::start().await;
    let token = hub.create_token("spooled").await;
    let mut agent = V2Agent::new(&hub.agent_url(), &token, &shell_script(), None);
    let mut far = alert(0);
    far.event_time = 300_000_000_000;
    far.alert_key = "far-future".into();
    agent.spool.append(&[far, alert(1)]).expect("spool");
    agent.start_link();
    agent.wait_registered().await;
    assert_eq!(hub.wait_alerts(2).await, 2);
    agent
        .wait_status("spool drained", |s| s.spool_pending == 0)
        .await;

    // The hub restarts on the same store; the agent keeps sending.
    let dir = hub.dir.clone();
    let addr = hub.addr;
    hub.stop().await;
    let hub = TestHub::start_in(dir, addr, |_| {}).await;
    agent.sink.send(alert(2));
    assert_eq!(hub.wait_alerts(3).await, 3);
    let (status, _) = http_get(hub.addr, "/api/v1/alerts", Some(ALICE)).await;
    assert_eq!(status, 200);
    agent.stop().await;
    hub.stop().await;
}

fn big_alert(i: usize) -> AlertEvent {
    AlertEvent {
        event_time: 1_700_000_000 + i as i64,
        event_status: AlertStatus::Warning,
        alert_key: format!("big-{i:03}"),
        labels: BTreeMap::from([("check".to_owned(), "big".to_owned())]),
        attrs: BTreeMap::new(),
        description: "x".repeat(60_000),
        description_format: String::new(),
        seq: None,
    }
}

/// 30 alerts of 60 000 bytes sent while the hub is down, then 5 small ones: every one is
/// stored once the hub is back, and nothing is counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_alerts_queued_while_the_hub_is_down_all_arrive() {
    let hub = TestHub::start().await;
    let token = hub.create_token("big").await;
    let dir = hub.dir.clone();
    let addr = hub.addr;
    hub.stop().await;

    let mut agent = V2Agent::new(&format!("ws://{addr}"), &token, &shell_script(), None);
    let big: Vec<AlertEvent> = (0..30).map(big_alert).collect();
    agent.spool.append(&big).expect("spool");
    agent.start_link();
    let hub = TestHub::start_in(dir, addr, |_| {}).await;
    agent.wait_registered().await;
    for i in 0..5 {
        agent.sink.send(alert(100 + i));
    }
    assert_eq!(hub.wait_alerts(35).await, 35);
    let status = agent
        .wait_status("spool drained", |s| s.spool_pending == 0)
        .await;
    assert_eq!(status.dropped_alerts, 0, "{status:?}");
    agent.stop().await;
    hub.stop().await;
}

/// A peer that sends an oversized frame anyway (here: a raw version-2 agent) gets an answer
/// naming the frame, and a later batch's acknowledgement never covers what was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_frame_is_answered_and_never_acknowledged() {
    let hub = TestHub::start().await;
    let token = hub.create_token("raw").await;
    let agent_id = uuid::Uuid::now_v7().to_string();
    let (mut agent, _) =
        V1Agent::connect_with(&hub.agent_url(), &token, &agent_id, "h1", "2").await;
    let text = "y".repeat(60_000);
    let big: Vec<Value> = (1..=30)
        .map(|i| v2_alert(i, &format!("big-{i}"), 1_700_000_000, &text))
        .collect();
    let frame = json!({"type": "alert_events", "id": "frame-big", "payload": {"events": big}});
    agent.send_raw(frame.to_string());
    let refusal = agent.next_of("ack").await;
    assert_eq!(refusal["ref_id"], "frame-big", "{refusal}");
    assert_eq!(refusal["payload"]["ok"], false, "{refusal}");
    assert_eq!(refusal["payload"]["reason"], "too_large", "{refusal}");

    // A later, small batch is stored, but its ack stays below the refused seqs.
    agent.alerts(vec![v2_alert(31, "small", 1_700_000_000, "small")]);
    assert_eq!(hub.wait_alerts(1).await, 1);
    // Resending the refused ones in halves: each half is stored; only then does the ack
    // move, and it covers everything stored.
    for half in [1..=15u64, 16..=30] {
        let events: Vec<Value> = half
            .map(|i| v2_alert(i, &format!("big-{i}"), 1_700_000_000, &text))
            .collect();
        agent.alerts(events);
    }
    let mut acks = Vec::new();
    while acks.last() != Some(&31) {
        let ack = agent.next_of("alert_ack").await;
        acks.push(ack["payload"]["upto_seq"].as_u64().expect("upto_seq"));
    }
    assert_eq!(
        acks,
        vec![15, 31],
        "an ack covered a seq the hub did not store"
    );
    assert_eq!(hub.wait_alerts(31).await, 31);
    let (_, metrics) = http_get_text(hub.addr, "/metrics").await;
    assert!(
        metrics.contains("tether_hub_link_frames_refused_total 1"),
        "{metrics}"
    );
    hub.stop().await;
}

mod stable_fuzz {
    //! The always-on counterpart of `fuzz/fuzz_targets/hub_alerts.rs`: arbitrary alert
    //! batches through the edge checks into a real store, which must keep answering.
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use tether_hub::agents::prepare_alerts;
    use tether_hub::store::{AlertFilter, SqliteStore, Store};
    use tether_proto::link::{LinkFrame, LinkMessage};

    fn field() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,40}".prop_map(Value::from),
            Just(json!({"k": "v", "": null})),
            Just(json!(["x"])),
        ]
    }

    fn event() -> impl Strategy<Value = Value> {
        (field(), field(), field(), field(), field(), field()).prop_map(
            |(time, status, key, labels, description, seq)| {
                json!({"event_time": time, "event_status": status, "alert_key": key,
                       "labels": labels, "description": description, "seq": seq})
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn any_batch_is_stored_or_refused_and_the_store_keeps_answering(
            events in proptest::collection::vec(
                prop_oneof![event(), Just(json!({"event_time": 300_000_000_000i64,
                    "event_status": "Critical", "alert_key": "far", "seq": 1}))], 0..8)
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SqliteStore::open(&dir.path().join("hub.db")).expect("store");
            let text = json!({"type": "alert_events", "id": "f", "payload": {"events": events}}).to_string();
            if let Ok(LinkFrame { message: LinkMessage::AlertEvents(batch), .. }) = LinkFrame::decode(&text) {
                let n = batch.events.len() + batch.rejected.len();
                let prepared = prepare_alerts(batch, 1_700_000_000);
                prop_assert_eq!(prepared.events.len() + prepared.refusals.len(), n);
                store.insert_alerts("a", "h", &prepared.events, 1_700_000_000_000).expect("storable");
            }
            store.list_alerts(&AlertFilter { limit: 100, ..Default::default() }, 1_700_000_000_000).expect("answers");
        }
    }
}
