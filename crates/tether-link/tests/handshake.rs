//! The handshake (PROTOCOL.md §2): upgrade headers, the `register` payload, version
//! negotiation, and the 10 s ack deadline — with the real driver over loopback sockets.

mod common;

use common::hub::{HubSettings, TestHub};
use common::{AgentSetup, TOKEN, TestAgent, WAIT, fine_clock};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

fn header<'a>(h: &'a axum::http::HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("header {name} missing"))
}

fn expected_arch() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64".to_owned(),
        "aarch64" => "arm64".to_owned(),
        other => other.to_owned(),
    }
}

/// Every register field and upgrade header, under version 2 and version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_carries_every_field_and_the_upgrade_headers() {
    for (hub_version, offered, negotiated) in [(2, 2, 2), (1, 2, 1), (2, 1, 1)] {
        let hub = TestHub::start(HubSettings {
            version: hub_version,
            ..HubSettings::default()
        })
        .await;
        let mut setup = AgentSetup::new(hub.url());
        setup.offered_version = offered;
        let agent = TestAgent::start(setup);
        let conn = hub.next_conn(WAIT).await;

        // Upgrade headers.
        assert_eq!(header(&conn.headers, "x-agent-token"), TOKEN);
        let id = header(&conn.headers, "x-agent-id");
        let uuid = uuid::Uuid::parse_str(id).expect("X-Agent-ID is a UUID");
        assert!(!uuid.is_nil());
        assert_eq!(id, agent.agent_id);
        // The id is kept in the state directory: the same on the next start.
        assert_eq!(
            tether_link::driver::load_or_create_agent_id(agent.dir.path()).expect("id"),
            id
        );
        assert_eq!(
            header(&conn.headers, "x-proto-version"),
            offered.to_string()
        );

        // The envelope.
        let reg = &conn.register;
        assert_eq!(reg["type"], "register");
        uuid::Uuid::parse_str(reg["id"].as_str().expect("id")).expect("frame id is a UUID");
        assert!(
            reg.get("ref_id").is_none(),
            "register carries no ref_id: {reg}"
        );

        // Exactly catpaw's fields, nothing else.
        let p = reg["payload"].as_object().expect("payload object");
        let keys: BTreeSet<&str> = p.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "hostname",
                "ip",
                "os",
                "arch",
                "labels",
                "plugins",
                "agent_version",
                "uptime_sec"
            ]),
            "{reg}"
        );
        assert_eq!(p["hostname"], tether_host::host::hostname());
        assert!(!p["hostname"].as_str().unwrap_or_default().is_empty());
        // The address this host uses to reach the hub (loopback here).
        assert_eq!(p["ip"], "127.0.0.1");
        assert_eq!(p["os"], std::env::consts::OS);
        assert_eq!(p["arch"], Value::String(expected_arch()));
        // The configured labels plus catpaw's automatic identity labels (`AgentLabels()`).
        assert_eq!(
            p["labels"],
            serde_json::json!({
                "env": "test",
                "from_hostname": tether_host::host::hostname(),
                "from_hostip": "127.0.0.1",
            })
        );
        assert_eq!(p["plugins"], serde_json::json!(["cpu", "disk"]));
        let version = p["agent_version"].as_str().expect("agent_version");
        assert!(version.starts_with("tether "), "{version}");
        let uptime = p["uptime_sec"].as_i64().expect("uptime_sec is an integer");
        assert!((0..60).contains(&uptime), "uptime_sec = {uptime}");

        // The negotiated version.
        let s = agent
            .wait_status("registered", WAIT, |s| s.state == "registered")
            .await;
        assert_eq!(
            s.version,
            Some(negotiated),
            "hub v{hub_version}, offered v{offered}"
        );
        assert_eq!(s.registrations, 1);
        assert_eq!(conn.version, negotiated);
        agent.stop().await;
    }
}

/// catpaw stamps `from_hostip` and `from_hostname` on every alert event's labels (its
/// engine's `clean`, overriding any of the same name) and on the register labels, with the
/// agent's identity: a value configured in the labels wins over the detected one (`AgentIP()`,
/// `AgentHostname()`), and `register.hostname` / `register.ip` are that same identity. Under
/// both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_event_carries_the_host_labels() {
    for (version, configured) in [(1, false), (2, false), (1, true), (2, true)] {
        let hub = TestHub::start(HubSettings {
            version,
            ..HubSettings::default()
        })
        .await;
        let mut setup = AgentSetup::new(hub.url());
        setup.offered_version = version;
        let (hostname, ip) = if configured {
            setup
                .labels
                .insert("from_hostname".to_owned(), "db-7".to_owned());
            setup
                .labels
                .insert("from_hostip".to_owned(), "10.1.2.3".to_owned());
            ("db-7".to_owned(), "10.1.2.3")
        } else {
            (tether_host::host::hostname(), "127.0.0.1")
        };
        let agent = TestAgent::start(setup);
        let conn = hub.next_conn(WAIT).await;
        let reg = &conn.register["payload"];
        assert_eq!(reg["hostname"], hostname.as_str(), "{reg}");
        assert_eq!(reg["ip"], ip, "{reg}");
        assert_eq!(reg["labels"]["from_hostname"], hostname.as_str(), "{reg}");
        assert_eq!(reg["labels"]["from_hostip"], ip, "{reg}");

        // An event that names them itself gets the agent's values, as in catpaw.
        let mut forged = common::alert(1, 0);
        forged
            .labels
            .insert("from_hostname".to_owned(), "elsewhere".to_owned());
        agent.sink.send(common::alert(0, 0));
        agent.sink.send(forged);
        agent.sink.flush().await;
        let stored = hub
            .wait("two alerts stored", WAIT, |r| {
                (r.alerts.len() >= 2).then(|| r.alerts.clone())
            })
            .await;
        for a in &stored {
            let labels = &a.event["labels"];
            assert_eq!(
                labels,
                &serde_json::json!({
                    "check": "test",
                    "from_hostname": hostname,
                    "from_hostip": ip,
                }),
                "v{version}: {}",
                a.event
            );
        }
        // The alert key is the agent's, computed before (unchanged by the stamp).
        assert_eq!(stored[0].alert_key, common::alert_key(0));
        agent.stop().await;
        assert!(
            hub.with(|r| r.v1_violations.is_empty()),
            "{:?}",
            hub.with(|r| r.v1_violations.clone())
        );
    }
}

/// A hub that never acks `register`: after 10 s the agent closes and dials again (about 1 s
/// later); the second connection registers.
#[tokio::test(start_paused = true)]
async fn no_ack_within_ten_seconds_closes_and_reconnects() {
    let _clock = fine_clock();
    let hub = TestHub::start(HubSettings {
        no_ack: 1,
        ..HubSettings::default()
    })
    .await;
    let agent = TestAgent::start(AgentSetup::new(hub.url()));
    let guard = Duration::from_secs(600);
    let mut first = hub.next_conn(guard).await;
    // The agent gives up on the first connection (the hub sees it end)...
    first.ended(guard).await;
    // ... and a second connection registers.
    let second = hub.next_conn(guard).await;
    assert_eq!(second.index, 1);
    agent
        .wait_status("registered", guard, |s| s.state == "registered")
        .await;
    let (register_at, ended_at, attempt2) = hub.with(|r| {
        (
            r.conns[0].register_at.expect("register arrived"),
            r.conns[0].ended_at.expect("ended"),
            r.attempts[1].at,
        )
    });
    assert!(hub.with(|r| r.conns[0].acked_at.is_none()));
    let gave_up = ended_at - register_at;
    assert!(
        gave_up >= Duration::from_millis(9_900) && gave_up <= Duration::from_millis(10_500),
        "the agent closed {gave_up:?} after register; the ack deadline is 10 s"
    );
    // A handshake failure is a normal failure: the first wait is 1 s ± 25 %.
    let wait = attempt2 - ended_at;
    assert!(
        wait >= Duration::from_millis(700) && wait <= Duration::from_millis(1_500),
        "reconnected {wait:?} after closing"
    );
    let s = agent.status();
    assert_eq!(s.connects, 2);
    assert_eq!(s.registrations, 1);
    agent.stop().await;
}

/// Two small frames written back to back both reach the hub at once: the agent's socket has
/// TCP_NODELAY, so the second is not held by Nagle until the hub's delayed ACK (40 ms of real
/// time, which paused time turns into many virtual seconds — hence the measurement there).
#[tokio::test(start_paused = true)]
async fn back_to_back_frames_are_not_held_back() {
    let _clock = fine_clock();
    let hub = TestHub::start(HubSettings::default()).await;
    let agent = TestAgent::start(AgentSetup::new(hub.url()));
    let guard = Duration::from_secs(600);
    let mut conn = hub.next_conn(guard).await;
    agent
        .wait_status("registered", guard, |s| s.state == "registered")
        .await;
    for round in 0..10 {
        let t0 = tokio::time::Instant::now();
        conn.send_msg("ping", serde_json::json!(null));
        conn.send_msg("ping", serde_json::json!(null));
        conn.next_of("pong", guard).await;
        conn.next_of("pong", guard).await;
        let took = t0.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "round {round}: two pongs took {took:?} of virtual time"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    agent.stop().await;
}
