//! Issue 12, items 1–3: alerts with a lifecycle at the hub, the Alertmanager and Grafana
//! intake, and routing external alerts to hosts. A real hub on loopback; notifications are
//! posted over real HTTP (reqwest) the way Alertmanager and Grafana post them; operators are
//! real WebSocket clients; agents are catpaw-shaped WebSocket peers.
//!
//! Silences end by the hub's clock: these tests give the hub a manual clock
//! ([`tether_hub::Clock::manual`]) and move it, rather than waiting.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use tether_hub::{AlertRoute, AlertSource, Clock, HubConfig};
use tether_transport::client::Client;

const AM_TOKEN: &str = "alertmanager-source-token-0123456789";
const GRAFANA_TOKEN: &str = "grafana-source-token-0123456789";

/// A hub with two alert sources (`prometheus`, `grafana`), adjusted by `f`.
async fn alert_hub(f: impl FnOnce(&mut HubConfig)) -> TestHub {
    TestHub::start_with(|c| {
        c.alert_sources = vec![
            AlertSource {
                name: "prometheus".into(),
                token: AM_TOKEN.into(),
            },
            AlertSource {
                name: "grafana".into(),
                token: GRAFANA_TOKEN.into(),
            },
        ];
        f(c);
    })
    .await
}

fn http() -> reqwest::Client {
    tether_engine::openai::ensure_tls_provider();
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("http client")
}

/// POSTs `body` to `path` with `Authorization: <auth>` (if any): (status, body as JSON).
async fn post_raw(hub: &TestHub, path: &str, auth: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = http()
        .post(format!("http://{}{path}", hub.addr))
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = within(&format!("POST {path}"), req.send())
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    let text = within("the response body", resp.text())
        .await
        .expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// POSTs an Alertmanager notification with the `prometheus` source's token.
async fn post_am(hub: &TestHub, notification: &Value) -> Value {
    let (status, body) = post_raw(
        hub,
        "/api/v1/alerts/alertmanager",
        Some(&format!("Bearer {AM_TOKEN}")),
        notification.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

const T0: &str = "2024-05-01T10:00:00Z";
const T1: &str = "2024-05-01T10:05:00.5Z";
const T3: &str = "2024-05-01T12:00:00Z";
const ZERO: &str = "0001-01-01T00:00:00Z";

/// One alert of a webhook notification; `fingerprint` from its alertname and labels.
fn am_alert(status: &str, labels: Value, starts: &str, ends: &str) -> Value {
    let fp = format!(
        "fp-{}",
        labels
            .as_object()
            .map(|m| m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default()
    );
    json!({
        "status": status,
        "labels": labels,
        "annotations": {"summary": "something is wrong", "runbook_url": "https://runbooks/x"},
        "startsAt": starts,
        "endsAt": ends,
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": fp,
    })
}

/// Alertmanager's webhook payload, version 4.
fn am_notification(alerts: Vec<Value>) -> Value {
    let status = if alerts.iter().any(|a| a["status"] == "firing") {
        "firing"
    } else {
        "resolved"
    };
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"DiskFull\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "tether",
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    })
}

async fn list(op: &mut Client, params: Value) -> Vec<Value> {
    let r = within("alerts.list", op.request("alerts.list", params))
        .await
        .expect("alerts.list");
    r["alerts"].as_array().cloned().unwrap_or_default()
}

/// The one alert whose labels hold `k = v`.
async fn alert_with(op: &mut Client, k: &str, v: &str) -> Value {
    let found = list(op, json!({"label": format!("{k}={v}")})).await;
    assert_eq!(found.len(), 1, "one alert with {k}={v}: {found:#?}");
    found[0].clone()
}

/// The next `alert` control frame.
async fn next_alert(op: &mut Client) -> Value {
    next_control(op, "alert", |_| true).await
}

fn message(body: &Value) -> String {
    body["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_notification_changes_nothing() {
    let hub = alert_hub(|_| {}).await;
    let mut alice = hub.operator(ALICE).await;
    let mut watch = hub.operator(BOB).await;
    watch
        .request("alerts.subscribe", json!({}))
        .await
        .expect("alerts.subscribe");

    let firing = am_notification(vec![
        am_alert(
            "firing",
            json!({"alertname": "DiskFull", "instance": "a:9100", "severity": "critical"}),
            T0,
            ZERO,
        ),
        am_alert(
            "firing",
            json!({"alertname": "DiskFull", "instance": "b:9100"}),
            T0,
            ZERO,
        ),
        am_alert(
            "firing",
            json!({"alertname": "HighLoad", "instance": "a:9100", "severity": "info"}),
            T1,
            ZERO,
        ),
    ]);
    let r = post_am(&hub, &firing).await;
    assert_eq!(r, json!({"stored": 3, "duplicates": 0}));
    for _ in 0..3 {
        let f = next_alert(&mut watch).await;
        assert_eq!(f["change"], "created", "{f}");
    }
    let before = list(&mut alice, json!({})).await;
    assert_eq!(before.len(), 3);
    let events_before = hub.alert_count().await;

    // The same notification again (a retried webhook, a repeated group): nothing changes.
    for _ in 0..2 {
        let r = post_am(&hub, &firing).await;
        assert_eq!(r, json!({"stored": 0, "duplicates": 3}));
    }
    assert_eq!(
        list(&mut alice, json!({})).await,
        before,
        "a replay moved nothing"
    );
    assert_eq!(hub.alert_count().await, events_before);

    // The next frame the subscriber gets is the next real change, not a replay.
    let resolved = am_notification(vec![am_alert(
        "resolved",
        json!({"alertname": "DiskFull", "instance": "b:9100"}),
        T0,
        T3,
    )]);
    assert_eq!(
        post_am(&hub, &resolved).await,
        json!({"stored": 1, "duplicates": 0})
    );
    let f = next_alert(&mut watch).await;
    assert_eq!(f["change"], "resolved", "{f}");
    assert_eq!(f["alert"]["labels"]["instance"], "b:9100", "{f}");
    let after = list(&mut alice, json!({})).await;
    assert_eq!(
        post_am(&hub, &resolved).await,
        json!({"stored": 0, "duplicates": 1})
    );
    assert_eq!(list(&mut alice, json!({})).await, after);

    // An earlier firing delivered again after the resolution does not reopen it.
    assert_eq!(
        post_am(&hub, &firing).await,
        json!({"stored": 0, "duplicates": 3})
    );
    let b = alert_with(&mut alice, "instance", "b:9100").await;
    assert_eq!(b["state"], "resolved", "{b}");
    let (_, metrics) = http_get_text(hub.addr, "/metrics").await;
    assert!(
        metrics.contains("tether_hub_external_alerts_deduplicated_total 10"),
        "{metrics}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_notification_is_refused_naming_the_field_and_nothing_is_stored() {
    let hub = alert_hub(|_| {}).await;
    let mut alice = hub.operator(ALICE).await;
    alice
        .request("alerts.subscribe", json!({}))
        .await
        .expect("alerts.subscribe");
    let good = am_alert("firing", json!({"alertname": "DiskFull"}), T0, ZERO);
    let with = |patch: Value| {
        let mut a = good.clone();
        for (k, v) in patch.as_object().cloned().unwrap_or_default() {
            if v.is_null() {
                a.as_object_mut().map(|m| m.remove(&k));
            } else {
                a[k] = v;
            }
        }
        am_notification(vec![good.clone(), a])
            .to_string()
            .into_bytes()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (with(json!({"startsAt": "noon"})), "alerts[1].startsAt"),
        (
            with(json!({"startsAt": null})),
            "alerts[1].startsAt: required",
        ),
        (
            with(json!({"endsAt": "later", "status": "resolved"})),
            "alerts[1].endsAt",
        ),
        (with(json!({"status": "burning"})), "alerts[1].status"),
        (with(json!({"status": null})), "missing field `status`"),
        (with(json!({"labels": null})), "alerts[1].labels: required"),
        (with(json!({"labels": {}})), "alerts[1].labels"),
        (
            with(json!({"labels": {"alertname": 5}})),
            "alerts[1].labels.alertname",
        ),
        (with(json!({"annotations": ["x"]})), "alerts[1].annotations"),
        (with(json!({"fingerprint": ""})), "alerts[1].fingerprint"),
        (
            json!({"version": "3", "alerts": [good.clone()]})
                .to_string()
                .into_bytes(),
            "version",
        ),
        (
            json!({"version": "4", "status": "firing"})
                .to_string()
                .into_bytes(),
            "missing field `alerts`",
        ),
        (
            json!({"version": "4", "alerts": {"a": 1}})
                .to_string()
                .into_bytes(),
            "alerts:",
        ),
        (
            b"{\"version\": \"4\", \"alerts\": [".to_vec(),
            "alerts: EOF while parsing",
        ),
        (b"alert!".to_vec(), "not a webhook notification"),
    ];
    for (body, want) in cases {
        for path in ["/api/v1/alerts/alertmanager", "/api/v1/alerts/grafana"] {
            if path.ends_with("grafana") && want == "version" {
                continue; // Grafana's payload has its own version numbers.
            }
            let (status, reply) = post_raw(
                &hub,
                path,
                Some(&format!("Bearer {GRAFANA_TOKEN}")),
                body.clone(),
            )
            .await;
            assert_eq!(status, 400, "{path} {want}: {reply}");
            assert_eq!(reply["reason"], "bad_request", "{reply}");
            assert!(
                message(&reply).contains(want),
                "{path}: {want:?} not in {reply}"
            );
        }
    }
    // Too large: 413, before the body is parsed — and the sender, still writing its body,
    // reads that answer rather than a reset connection (the hub once answered on the
    // Content-Length alone and hung up mid-body: a broken pipe, now and then).
    let mut huge = good.clone();
    huge["annotations"]["description"] = json!("x".repeat(tether_hub::intake::MAX_INTAKE_BODY));
    let huge = am_notification(vec![huge]).to_string().into_bytes();
    for _ in 0..5 {
        let (status, reply) = post_raw(
            &hub,
            "/api/v1/alerts/alertmanager",
            Some(&format!("Bearer {AM_TOKEN}")),
            huge.clone(),
        )
        .await;
        assert_eq!(status, 413, "{reply}");
        assert_eq!(reply["reason"], "too_large", "{reply}");
    }

    // Nothing from any of them was stored: the first frame is the valid notification's.
    assert_eq!(hub.alert_count().await, 0);
    assert!(list(&mut alice, json!({})).await.is_empty());
    post_am(&hub, &am_notification(vec![good.clone()])).await;
    let f = next_alert(&mut alice).await;
    assert_eq!(f["change"], "created", "{f}");
    assert_eq!(list(&mut alice, json!({})).await.len(), 1);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_needs_the_token_of_an_alert_source() {
    let hub = alert_hub(|_| {}).await;
    let body = am_notification(vec![am_alert(
        "firing",
        json!({"alertname": "X"}),
        T0,
        ZERO,
    )])
    .to_string()
    .into_bytes();
    let bad_auth = [
        None,
        Some("Bearer wrong-token-0123456789abcdef".to_owned()),
        Some(format!("Bearer {ALICE}")),
        Some(format!("Basic {AM_TOKEN}")),
        Some(format!("Bearer {AM_TOKEN}x")),
        Some("Bearer ".to_owned()),
    ];
    for path in ["/api/v1/alerts/alertmanager", "/api/v1/alerts/grafana"] {
        for auth in &bad_auth {
            let (status, reply) = post_raw(&hub, path, auth.as_deref(), body.clone()).await;
            assert_eq!(status, 401, "{path} with {auth:?}: {reply}");
            assert_eq!(reply["reason"], "unauthorized", "{reply}");
        }
    }
    assert_eq!(hub.alert_count().await, 0, "nothing stored");
    let (_, metrics) = http_get_text(hub.addr, "/metrics").await;
    assert!(
        metrics.contains("tether_hub_intake_auth_failures_total 12"),
        "{metrics}"
    );
    // The right one: accepted, and the alert says which source sent it.
    let (status, reply) = post_raw(
        &hub,
        "/api/v1/alerts/grafana",
        Some(&format!("Bearer {GRAFANA_TOKEN}")),
        body.clone(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let mut alice = hub.operator(ALICE).await;
    let a = list(&mut alice, json!({})).await;
    assert_eq!(a[0]["source"], "grafana");
    assert_eq!(a[0]["source_name"], "grafana");
    hub.stop().await;

    // A hub without [[alert_sources]] takes no alerts at all.
    let bare = TestHub::start().await;
    let (status, _) = post_raw(
        &bare,
        "/api/v1/alerts/alertmanager",
        Some(&format!("Bearer {AM_TOKEN}")),
        body,
    )
    .await;
    assert_eq!(status, 401);
    bare.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_alert_is_stored_as_a_fleet_alert_with_its_reason() {
    let hub = alert_hub(|c| {
        c.alert_routes = vec![AlertRoute {
            matchers: [("team".to_owned(), "ghosts".to_owned())].into(),
            agent: "no-such-host".into(),
        }];
    })
    .await;
    let token = hub.create_token("web").await;
    let web_id = uuid::Uuid::now_v7().to_string();
    let _web = V1Agent::connect(&hub.agent_url(), &token, &web_id, "web-01").await;
    post_am(
        &hub,
        &am_notification(vec![
            am_alert(
                "firing",
                json!({"alertname": "DiskFull", "instance": "ghost-07:9100"}),
                T0,
                ZERO,
            ),
            am_alert("firing", json!({"alertname": "Watchdog"}), T0, ZERO),
            am_alert(
                "firing",
                json!({"alertname": "Haunted", "team": "ghosts", "instance": "web-01"}),
                T0,
                ZERO,
            ),
        ]),
    )
    .await;
    let mut alice = hub.operator(ALICE).await;
    let ghost = alert_with(&mut alice, "instance", "ghost-07:9100").await;
    assert_eq!(ghost["agent_id"], Value::Null, "{ghost}");
    assert_eq!(ghost["hostname"], Value::Null, "{ghost}");
    let why = ghost["route"]["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("ghost-07") && why.contains("fleet alert"),
        "{ghost}"
    );
    let watchdog = alert_with(&mut alice, "alertname", "Watchdog").await;
    let why = watchdog["route"]["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("no instance / host / hostname / nodename label"),
        "{watchdog}"
    );
    // A route naming an agent the hub does not know: a fleet alert too, saying so.
    let haunted = alert_with(&mut alice, "alertname", "Haunted").await;
    assert_eq!(haunted["agent_id"], Value::Null, "{haunted}");
    assert_eq!(haunted["route"]["rule"], "alert_routes[0]", "{haunted}");
    assert!(
        haunted["route"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no-such-host")),
        "{haunted}"
    );
    assert_eq!(list(&mut alice, json!({"fleet": true})).await.len(), 3);
    assert!(
        list(&mut alice, json!({"agent_id": web_id}))
            .await
            .is_empty()
    );
    let (status, body) = http_get(hub.addr, "/api/v1/alerts?fleet=true", Some(ALICE)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["alerts"].as_array().map(Vec::len), Some(3), "{body}");
    // Never diagnosed: a session for it on an agent is refused.
    let r = alice
        .request(
            "session.create",
            json!({"mode": "diagnose", "agent_id": web_id,
                   "params": {"alert_id": ghost["alert_id"]}}),
        )
        .await;
    assert_eq!(reason(&r), "bad_request");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_alerts_are_routed_by_instance_hostname_ip_and_override() {
    let cache_id = uuid::Uuid::now_v7().to_string();
    let cache_route = cache_id.clone();
    let hub = alert_hub(move |c| {
        c.alert_routes = vec![
            AlertRoute {
                matchers: [("job".to_owned(), "mysql".to_owned())].into(),
                agent: "DB-01".into(),
            },
            AlertRoute {
                matchers: [
                    ("team".to_owned(), "cache".to_owned()),
                    ("env".to_owned(), "prod".to_owned()),
                ]
                .into(),
                agent: cache_route,
            },
        ];
    })
    .await;
    let agent = |hostname: &str, ip: &str| {
        let mut p = register_payload(hostname);
        p["ip"] = json!(ip);
        p
    };
    let web_id = uuid::Uuid::now_v7().to_string();
    let db_id = uuid::Uuid::now_v7().to_string();
    let url = hub.agent_url();
    let connect = |id: String, payload: Value| {
        let (hub, url) = (&hub, url.clone());
        async move {
            let token = hub.create_token(&id).await;
            V1Agent::connect_registering(&url, &token, &id, "1", payload)
                .await
                .0
        }
    };
    let _web = connect(web_id.clone(), agent("WEB-01", "10.1.0.1")).await;
    let db = connect(db_id.clone(), agent("db-01", "10.1.0.2")).await;
    let _cache = connect(cache_id.clone(), agent("cache-01.example.com", "fd00::7")).await;
    // db-01 is known but no longer connected: it still gets its alerts.
    db.close();
    drop(db);
    hub.wait_connected(&db_id, false).await;

    let cases = [
        // (labels, agent, how)
        (json!({"instance": "web-01:9100"}), &web_id, "instance"),
        (
            json!({"instance": "web-01.example.com:9100"}),
            &web_id,
            "short hostname",
        ),
        (json!({"instance": "10.1.0.2:9100"}), &db_id, "ip"),
        (json!({"instance": "[fd00::7]:9100"}), &cache_id, "ip"),
        (
            json!({"instance": "http://[fd00:0::7]:8080/metrics"}),
            &cache_id,
            "ip",
        ),
        (json!({"hostname": "cache-01"}), &cache_id, "short hostname"),
        (
            json!({"host": "cache-01.EXAMPLE.com"}),
            &cache_id,
            "hostname",
        ),
        (json!({"nodename": "DB-01"}), &db_id, "hostname"),
        // The first host label that matches wins.
        (
            json!({"instance": "nowhere:9100", "nodename": "web-01"}),
            &web_id,
            "nodename",
        ),
        // Overrides beat the host labels.
        (
            json!({"job": "mysql", "instance": "web-01:9104"}),
            &db_id,
            "alert_routes[0]",
        ),
        (
            json!({"team": "cache", "env": "prod", "instance": "web-01"}),
            &cache_id,
            "alert_routes[1]",
        ),
        // An override needs all its labels.
        (
            json!({"team": "cache", "instance": "web-01"}),
            &web_id,
            "instance",
        ),
    ];
    let alerts: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (labels, _, _))| {
            let mut l = labels.clone();
            l["alertname"] = json!(format!("Case{i}"));
            am_alert("firing", l, T0, ZERO)
        })
        .collect();
    post_am(&hub, &am_notification(alerts)).await;
    let mut alice = hub.operator(ALICE).await;
    for (i, (labels, want, how)) in cases.iter().enumerate() {
        let a = alert_with(&mut alice, "alertname", &format!("Case{i}")).await;
        assert_eq!(a["agent_id"], want.as_str(), "case {i} {labels}: {a:#}");
        let route = &a["route"];
        let said = format!("{} {}", route["rule"], route["reason"]);
        assert!(
            said.contains(how),
            "case {i} {labels}: `{how}` not in {said}"
        );
    }
    let expected_host = |id: &str| {
        if id == web_id {
            "WEB-01"
        } else if id == db_id {
            "db-01"
        } else {
            "cache-01.example.com"
        }
    };
    for a in list(&mut alice, json!({"limit": 100})).await {
        let id = a["agent_id"].as_str().expect("routed");
        assert_eq!(a["hostname"], expected_host(id), "{a}");
    }
    let on_db = list(&mut alice, json!({"agent_id": db_id})).await;
    assert_eq!(on_db.len(), 3, "{on_db:#?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_cannot_ack_or_silence() {
    let hub = alert_hub(|_| {}).await;
    post_am(
        &hub,
        &am_notification(vec![am_alert(
            "firing",
            json!({"alertname": "DiskFull"}),
            T0,
            ZERO,
        )]),
    )
    .await;
    let mut alice = hub.operator(ALICE).await;
    let mut watcher = hub.operator(WATCHER).await;
    let id = list(&mut alice, json!({})).await[0]["alert_id"].clone();
    let silence = alice
        .request(
            "silence.create",
            json!({"matchers": [{"name": "alertname", "value": "Other"}],
                   "duration": "1h", "comment": "alice's"}),
        )
        .await
        .expect("silence.create");

    // Reading is fine.
    assert_eq!(list(&mut watcher, json!({})).await.len(), 1);
    watcher
        .request("alert.events", json!({"alert_id": id}))
        .await
        .expect("alert.events");
    let s = watcher
        .request("silence.list", json!({}))
        .await
        .expect("silence.list");
    assert_eq!(s["silences"].as_array().map(Vec::len), Some(1));
    watcher
        .request("alerts.subscribe", json!({}))
        .await
        .expect("alerts.subscribe");

    // Acting is not, whatever the params.
    let acts = [
        ("alert.ack", json!({"alert_id": id, "comment": "mine"})),
        ("alert.ack", json!({"nonsense": true})),
        (
            "silence.create",
            json!({"matchers": [{"name": "alertname", "value": "DiskFull"}],
                   "duration": "1h", "comment": "hush"}),
        ),
        (
            "silence.expire",
            json!({"silence_id": silence["silence_id"]}),
        ),
    ];
    for (op, params) in acts {
        let r = watcher.request(op, params.clone()).await;
        assert_eq!(reason(&r), "forbidden", "{op} {params}");
    }
    let a = list(&mut alice, json!({})).await;
    assert_eq!(a[0]["ack"], Value::Null, "{a:?}");
    assert_eq!(a[0]["silenced"], false, "{a:?}");
    let s = alice
        .request("silence.list", json!({}))
        .await
        .expect("silence.list");
    assert_eq!(s["silences"][0]["state"], "active", "{s}");
    // The robot (class agent) may act.
    let mut robot = hub.operator(ROBOT).await;
    robot
        .request("alert.ack", json!({"alert_id": id}))
        .await
        .expect("an agent-class operator acks");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_lasts_for_its_episode() {
    let hub = alert_hub(|_| {}).await;
    let labels = json!({"alertname": "DiskFull", "instance": "a"});
    post_am(
        &hub,
        &am_notification(vec![am_alert("firing", labels.clone(), T0, ZERO)]),
    )
    .await;
    let mut alice = hub.operator(ALICE).await;
    let mut bob = hub.operator(BOB).await;
    bob.request("alerts.subscribe", json!({}))
        .await
        .expect("alerts.subscribe");
    let id = list(&mut alice, json!({})).await[0]["alert_id"].clone();
    let r = alice
        .request(
            "alert.ack",
            json!({"alert_id": id, "comment": "looking at it"}),
        )
        .await
        .expect("alert.ack");
    assert_eq!(r["alert"]["ack"]["by"], "alice", "{r}");
    assert_eq!(r["alert"]["ack"]["comment"], "looking at it", "{r}");
    let f = next_alert(&mut bob).await;
    assert_eq!(f["change"], "acked", "{f}");
    assert_eq!(f["alert"]["ack"]["by"], "alice", "{f}");

    // Resolved: still acknowledged. Fires again (a new episode): not any more.
    post_am(
        &hub,
        &am_notification(vec![am_alert("resolved", labels.clone(), T0, T1)]),
    )
    .await;
    let f = next_alert(&mut bob).await;
    assert_eq!(
        (f["change"].clone(), f["alert"]["ack"]["by"].clone()),
        (json!("resolved"), json!("alice")),
        "{f}"
    );
    post_am(
        &hub,
        &am_notification(vec![am_alert("firing", labels.clone(), T3, ZERO)]),
    )
    .await;
    let f = next_alert(&mut bob).await;
    assert_eq!(f["change"], "fired", "{f}");
    assert_eq!(f["previous_state"], "resolved", "{f}");
    assert_eq!(f["alert"]["ack"], Value::Null, "{f}");
    assert_eq!(f["alert"]["resolved_at"], Value::Null, "{f}");
    assert_eq!(f["alert"]["started_at"], "2024-05-01T12:00:00.000Z", "{f}");
    assert_eq!(f["alert"]["first_at"], "2024-05-01T10:00:00.000Z", "{f}");
    assert_eq!(f["alert"]["event_count"], 3, "{f}");

    // The timeline: newest first, with the acknowledgement history.
    let t = alice
        .request("alert.events", json!({"alert_id": id}))
        .await
        .expect("alert.events");
    let statuses: Vec<&str> = t["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["status"].as_str())
        .collect();
    assert_eq!(statuses, ["firing", "resolved", "firing"], "{t}");
    assert_eq!(t["acks"][0]["by"], "alice", "{t}");
    assert_eq!(t["acks"][0]["comment"], "looking at it", "{t}");
    let (status, rest) = http_get(
        hub.addr,
        &format!("/api/v1/alerts/{}?limit=1", id),
        Some(WATCHER),
    )
    .await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["events"].as_array().map(Vec::len), Some(1), "{rest}");
    assert!(rest["next_before_event_id"].is_i64(), "{rest}");

    // Refusals name the field.
    let r = alice
        .request("alert.ack", json!({"alert_id": 999_999}))
        .await;
    assert_eq!(reason(&r), "bad_request");
    let r = alice
        .request(
            "alert.ack",
            json!({"alert_id": id, "comment": "x".repeat(5000)}),
        )
        .await;
    assert_eq!(reason(&r), "bad_request");
    let r = alice.request("alert.ack", json!({"alert_id": "one"})).await;
    assert_eq!(reason(&r), "bad_request");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_covers_matching_alerts_until_it_ends() {
    let clock = Clock::manual(1_714_557_600_000); // 2024-05-01T10:00:00Z
    let hub_clock = clock.clone();
    let hub = alert_hub(move |c| c.clock = hub_clock).await;
    let alert = |name: &str, instance: &str| {
        am_alert(
            "firing",
            json!({"alertname": name, "instance": instance}),
            T0,
            ZERO,
        )
    };
    post_am(
        &hub,
        &am_notification(vec![
            alert("DiskFull", "web-01:9100"),
            alert("DiskFull", "db-01:9100"),
            alert("HighLoad", "web-01:9100"),
        ]),
    )
    .await;
    let mut alice = hub.operator(ALICE).await;
    let mut bob = hub.operator(BOB).await;
    bob.request("alerts.subscribe", json!({}))
        .await
        .expect("alerts.subscribe");

    let s = alice
        .request(
            "silence.create",
            json!({"matchers": [
                    {"name": "alertname", "value": "DiskFull"},
                    {"name": "instance", "value": "web-.*", "is_regex": true}],
                   "duration": "1h", "comment": "replacing the disk"}),
        )
        .await
        .expect("silence.create");
    let sid = s["silence_id"].as_i64().expect("silence_id");
    assert_eq!(s["silence"]["created_by"], "alice", "{s}");
    assert_eq!(s["silence"]["ends_at"], "2024-05-01T11:00:00.000Z", "{s}");
    let f = next_alert(&mut bob).await;
    assert_eq!(f["change"], "silenced", "{f}");
    assert_eq!(f["alert"]["labels"]["instance"], "web-01:9100", "{f}");
    assert_eq!(f["alert"]["silenced_by"], json!([sid]), "{f}");
    let silenced = |alerts: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = alerts
            .iter()
            .filter(|a| a["silenced"] == true)
            .map(|a| format!("{}@{}", a["labels"]["alertname"], a["labels"]["instance"]))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        silenced(&list(&mut alice, json!({})).await),
        ["\"DiskFull\"@\"web-01:9100\""]
    );
    // A new alert it matches is silenced from its first event.
    post_am(
        &hub,
        &am_notification(vec![alert("DiskFull", "web-02:9100")]),
    )
    .await;
    let f = next_alert(&mut bob).await;
    assert_eq!(
        (f["change"].clone(), f["alert"]["silenced"].clone()),
        (json!("created"), json!(true)),
        "{f}"
    );

    // An hour later it is over: nothing is silenced, and subscribers hear of it.
    clock.advance(Duration::from_secs(3600));
    assert!(silenced(&list(&mut alice, json!({})).await).is_empty());
    let mut unsilenced = Vec::new();
    for _ in 0..2 {
        let f = next_alert(&mut bob).await;
        assert_eq!(f["change"], "unsilenced", "{f}");
        assert_eq!(f["alert"]["silenced"], false, "{f}");
        unsilenced.push(
            f["alert"]["labels"]["instance"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        );
    }
    unsilenced.sort();
    assert_eq!(unsilenced, ["web-01:9100", "web-02:9100"]);
    let active = alice
        .request("silence.list", json!({}))
        .await
        .expect("list");
    assert_eq!(active["silences"], json!([]), "{active}");
    let all = alice
        .request("silence.list", json!({"state": "all"}))
        .await
        .expect("list");
    assert_eq!(all["silences"][0]["state"], "expired", "{all}");
    assert_eq!(all["silences"][0]["expired_by"], Value::Null, "{all}");

    // Expired by hand, before its end; a duration in seconds.
    let s = alice
        .request(
            "silence.create",
            json!({"matchers": [{"name": "alertname", "value": "HighLoad"}],
                   "duration": 7200, "comment": "load test"}),
        )
        .await
        .expect("silence.create");
    let f = next_alert(&mut bob).await;
    assert_eq!(f["change"], "silenced", "{f}");
    let high = alert_with(&mut alice, "alertname", "HighLoad").await;
    assert_eq!(high["silenced"], true, "{high}");
    clock.advance(Duration::from_secs(60));
    let e = alice
        .request("silence.expire", json!({"silence_id": s["silence_id"]}))
        .await
        .expect("silence.expire");
    assert_eq!(e["silence"]["state"], "expired", "{e}");
    assert_eq!(e["silence"]["expired_by"], "alice", "{e}");
    assert_eq!(e["silence"]["ends_at"], "2024-05-01T11:01:00.000Z", "{e}");
    let f = next_alert(&mut bob).await;
    assert_eq!(f["change"], "unsilenced", "{f}");
    assert_eq!(f["alert"]["labels"]["alertname"], "HighLoad", "{f}");
    assert_eq!(f["alert"]["silenced"], false, "{f}");
    let (status, rest) = http_get(hub.addr, "/api/v1/silences?state=expired", Some(WATCHER)).await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["silences"].as_array().map(Vec::len), Some(2), "{rest}");

    // Bad silences are refused, naming the field.
    let bad = [
        (
            json!({"matchers": [], "duration": "1h", "comment": "c"}),
            "matchers",
        ),
        (
            json!({"matchers": [{"name": "a", "value": "(", "is_regex": true}], "duration": "1h", "comment": "c"}),
            "matchers[0].value",
        ),
        (
            json!({"matchers": [{"name": "a", "value": ".*", "is_regex": true}], "duration": "1h", "comment": "c"}),
            "every alert",
        ),
        (
            json!({"matchers": [{"name": "a", "value": "b"}], "duration": "soon", "comment": "c"}),
            "duration",
        ),
        (
            json!({"matchers": [{"name": "a", "value": "b"}], "duration": "0s", "comment": "c"}),
            "duration",
        ),
        (
            json!({"matchers": [{"name": "a", "value": "b"}], "duration": "1h", "comment": " "}),
            "comment",
        ),
        (
            json!({"matchers": [{"name": "a", "value": "b", "regex": true}], "duration": "1h", "comment": "c"}),
            "matchers[0]",
        ),
    ];
    for (params, field) in bad {
        match alice.request("silence.create", params.clone()).await {
            Err(tether_transport::client::ClientError::Server(e)) => {
                assert_eq!(e.reason.as_str(), "bad_request", "{params}");
                assert!(e.message.contains(field), "{field} not in {}", e.message);
            }
            other => panic!("{params}: expected a refusal, got {other:?}"),
        }
    }
    let r = alice
        .request("silence.expire", json!({"silence_id": 424_242}))
        .await;
    assert_eq!(reason(&r), "bad_request");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_subscribe_receives_state_changes() {
    let hub = alert_hub(|_| {}).await;
    let mut all = hub.operator(ALICE).await;
    let mut firing = hub.operator(BOB).await;
    let mut critical_am = hub.operator(WATCHER).await;
    all.request("alerts.subscribe", json!({}))
        .await
        .expect("subscribe");
    firing
        .request("alerts.subscribe", json!({"state": "firing"}))
        .await
        .expect("subscribe");
    critical_am
        .request(
            "alerts.subscribe",
            json!({"severity": "critical", "source": "alertmanager"}),
        )
        .await
        .expect("subscribe");
    for bad in [
        json!({"state": "burning"}),
        json!({"severity": "loud"}),
        json!({"source": "nagios"}),
        json!({"colour": "red"}),
    ] {
        let r = all.request("alerts.subscribe", bad.clone()).await;
        assert_eq!(reason(&r), "bad_request", "{bad}");
    }
    // (A refused subscribe leaves the previous one in place.)

    // The in-process hook (automatic diagnosis, notifiers) hears the same changes.
    let mut changes = hub.hub().alert_changes();

    // An agent's alert: Critical, then Ok.
    let token = hub.create_token("sub").await;
    let agent_id = uuid::Uuid::now_v7().to_string();
    let agent = V1Agent::connect(&hub.agent_url(), &token, &agent_id, "sub-01").await;
    agent.alerts(vec![catpaw_alert(
        "disk_/var",
        "Critical",
        json!({"plugin": "disk", "check": "space_used_pct", "target": "/var"}),
    )]);
    let f = next_alert(&mut all).await;
    assert_eq!(f["change"], "created", "{f}");
    assert_eq!(f["previous_state"], Value::Null, "{f}");
    let a = &f["alert"];
    assert_eq!(
        (
            a["state"].clone(),
            a["severity"].clone(),
            a["source"].clone()
        ),
        (json!("firing"), json!("critical"), json!("agent")),
        "{f}"
    );
    assert_eq!(a["title"], "disk space_used_pct /var", "{f}");
    assert_eq!(a["agent_id"], agent_id.as_str(), "{f}");
    let f = next_alert(&mut firing).await;
    assert_eq!(f["change"], "created", "{f}");
    let c = within("an alert change in-process", changes.recv())
        .await
        .expect("a change");
    assert_eq!(c.change, tether_hub::alerts::Change::Created);
    assert_eq!(c.alert.alert_key, "disk_/var");
    assert_eq!(c.alert.agent_id.as_deref(), Some(agent_id.as_str()));
    agent.alerts(vec![catpaw_alert(
        "disk_/var",
        "Ok",
        json!({"plugin": "disk", "check": "space_used_pct", "target": "/var"}),
    )]);
    let f = next_alert(&mut all).await;
    assert_eq!(
        (
            f["change"].clone(),
            f["previous_state"].clone(),
            f["alert"]["state"].clone()
        ),
        (json!("resolved"), json!("firing"), json!("resolved")),
        "{f}"
    );
    assert!(f["alert"]["resolved_at"].is_string(), "{f}");
    // A firing-only view hears of the resolution that takes the alert out of it.
    let f = next_alert(&mut firing).await;
    assert_eq!(f["change"], "resolved", "{f}");

    // External: warning (filtered out for `critical_am`), critical; resolution; again.
    let warn = am_alert(
        "firing",
        json!({"alertname": "SlowDisk", "severity": "warning"}),
        T0,
        ZERO,
    );
    let crit = |status: &str, starts: &str, ends: &str| {
        am_alert(
            status,
            json!({"alertname": "NodeDown", "severity": "critical", "instance": "sub-01:9100"}),
            starts,
            ends,
        )
    };
    post_am(&hub, &am_notification(vec![warn, crit("firing", T0, ZERO)])).await;
    let f = next_alert(&mut critical_am).await;
    assert_eq!(f["alert"]["title"], "NodeDown", "{f}");
    assert_eq!(f["alert"]["agent_id"], agent_id.as_str(), "routed: {f}");
    assert_eq!(
        f["alert"]["url"], "http://prometheus:9090/graph?g0.expr=up",
        "{f}"
    );
    assert_eq!(
        f["alert"]["annotations"]["runbook_url"], "https://runbooks/x",
        "{f}"
    );
    post_am(&hub, &am_notification(vec![crit("resolved", T0, T1)])).await;
    let f = next_alert(&mut critical_am).await;
    assert_eq!(f["change"], "resolved", "{f}");
    assert_eq!(f["alert"]["resolved_at"], "2024-05-01T10:05:00.500Z", "{f}");
    post_am(&hub, &am_notification(vec![crit("firing", T3, ZERO)])).await;
    let f = next_alert(&mut critical_am).await;
    assert_eq!(f["change"], "fired", "{f}");
    // `all` saw everything, in order.
    let mut changes = Vec::new();
    for _ in 0..4 {
        let f = next_alert(&mut all).await;
        changes.push(format!(
            "{} {}",
            f["alert"]["title"].as_str().unwrap_or("?"),
            f["change"].as_str().unwrap_or("?")
        ));
    }
    assert_eq!(
        changes,
        [
            "SlowDisk created",
            "NodeDown created",
            "NodeDown resolved",
            "NodeDown fired"
        ]
    );
    drop(agent);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_notifications_keep_their_fields() {
    let hub = alert_hub(|_| {}).await;
    // As Grafana's webhook contact point sends it (its documented example).
    let body = json!({
        "receiver": "My Super Webhook",
        "status": "firing",
        "orgId": 1,
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
            "annotations": {"description": "The system has high memory usage",
                            "runbook_url": "https://myrunbook.com/runbook/1234",
                            "summary": "This alert was triggered for zone us-1"},
            "startsAt": "2021-10-12T09:51:03.157076+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "https://play.grafana.org/alerting/1afz29v7z/edit",
            "fingerprint": "c6eadffa33fcdf37",
            "silenceURL": "https://play.grafana.org/alerting/silence/new?alertmanager=grafana&matchers=alertname%3DT2%2Cteam%3Dblue%2Czone%3Dus-1",
            "dashboardURL": "",
            "panelURL": "",
            "values": {"B": 44.23943737541908, "C": 1},
            "valueString": "[ var='B' labels={} value=44.23943737541908 ], [ var='C' labels={} value=1 ]"
        }],
        "groupLabels": {},
        "commonLabels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
        "commonAnnotations": {},
        "externalURL": "https://play.grafana.org/",
        "version": "1",
        "groupKey": "{}:{alertname=\"High memory usage\"}",
        "truncatedAlerts": 0,
        "title": "[FIRING:1]  (High memory usage blue us-1)",
        "state": "alerting",
        "message": "**Firing**\n\nLabels:\n - alertname = T2\n"
    });
    let (status, r) = post_raw(
        &hub,
        "/api/v1/alerts/grafana",
        Some(&format!("Bearer {GRAFANA_TOKEN}")),
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    // Grafana may be set to PUT: the same notification again, stored once.
    let resp = http()
        .put(format!("http://{}/api/v1/alerts/grafana", hub.addr))
        .bearer_auth(GRAFANA_TOKEN)
        .body(body.to_string())
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status().as_u16(), 200);
    let again: Value = resp.json().await.expect("JSON");
    assert_eq!(again, json!({"stored": 0, "duplicates": 1}));
    let mut alice = hub.operator(ALICE).await;
    let a = list(&mut alice, json!({"source": "grafana"})).await;
    assert_eq!(a.len(), 1, "{a:#?}");
    let a = &a[0];
    assert_eq!(a["alert_key"], "c6eadffa33fcdf37");
    assert_eq!(a["title"], "High memory usage");
    assert_eq!(a["severity"], "warning", "no severity label: warning");
    assert_eq!(a["state"], "firing");
    assert_eq!(a["started_at"], "2021-10-12T07:51:03.157Z");
    assert_eq!(
        a["annotations"]["valueString"],
        body["alerts"][0]["valueString"]
    );
    assert_eq!(
        a["annotations"]["silenceURL"],
        body["alerts"][0]["silenceURL"]
    );
    assert!(a["annotations"].get("dashboardURL").is_none(), "{a}");
    assert_eq!(a["url"], "https://play.grafana.org/alerting/1afz29v7z/edit");
    assert!(
        list(&mut alice, json!({"source": "alertmanager"}))
            .await
            .is_empty()
    );
    hub.stop().await;
}
