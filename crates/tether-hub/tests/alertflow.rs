//! Issue 12, items 4 and 5: the hub diagnoses alerts by itself (`[diagnosis]`) and sends
//! notifications out (`[[notify]]`). A real hub on loopback; alerts are posted over real HTTP
//! as Alertmanager posts them; agents are real (the tether agent side with a scripted model,
//! or a catpaw-shaped WebSocket peer); notifications reach real HTTP receivers served by the
//! test (axum).
//!
//! Cooldowns, the daily budget, silences and the approval wait run on the hub's clock: these
//! tests give the hub a manual clock ([`tether_hub::Clock::manual`]) and move it.

mod common;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_host::sync::lock;
use tether_hub::{
    AlertSource, Clock, DiagnosisConfig, HubConfig, NotifyConfig, NotifyKind, NotifyOn,
};
use tether_transport::client::Client;

const AM_TOKEN: &str = "alertmanager-source-token-0123456789";
/// 2024-05-01T10:00:00Z: the manual clock's start, and the first episode's `startsAt`.
const START_MS: i64 = 1_714_557_600_000;

// ---- an HTTP receiver for notifications ------------------------------------------------

/// What the receiver does with a request to `/{mode}/{name}`: `ok` answers 200; `fail-N`
/// answers 500 to the first N requests of that name, then 200; `hang` holds every request
/// until [`Receiver::release`]; `refuse` answers 400.
#[derive(Clone)]
struct Inbox {
    got: Arc<Mutex<Vec<(String, Value)>>>,
    /// Requests seen per name (answered or not).
    seen: Arc<Mutex<HashMap<String, u32>>>,
    changed: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
}

struct Receiver {
    addr: std::net::SocketAddr,
    inbox: Inbox,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(inbox): State<Inbox>,
    Path((mode, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> StatusCode {
    let n = {
        let mut seen = lock(&inbox.seen);
        let n = seen.entry(name.clone()).or_insert(0);
        *n += 1;
        *n
    };
    inbox.changed.notify_waiters();
    let ok = match mode.as_str() {
        "ok" => true,
        "refuse" => return StatusCode::BAD_REQUEST,
        "hang" => {
            let _ = inbox.release.acquire().await.map(|p| p.forget());
            true
        }
        m => match m.strip_prefix("fail-").and_then(|k| k.parse::<u32>().ok()) {
            Some(k) => n > k,
            None => return StatusCode::NOT_FOUND,
        },
    };
    if !ok {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    lock(&inbox.got).push((name, v));
    inbox.changed.notify_waiters();
    StatusCode::OK
}

impl Receiver {
    async fn start() -> Receiver {
        let inbox = Inbox {
            got: Arc::default(),
            seen: Arc::default(),
            changed: Arc::default(),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        let app = axum::Router::new()
            .route("/{mode}/{name}", post(receive))
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, inbox, task }
    }

    fn url(&self, mode: &str, name: &str) -> String {
        format!("http://{}/{mode}/{name}", self.addr)
    }

    /// Messages delivered to `name`, in order.
    fn got(&self, name: &str) -> Vec<Value> {
        lock(&self.inbox.got)
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn seen(&self, name: &str) -> u32 {
        lock(&self.inbox.seen).get(name).copied().unwrap_or(0)
    }

    /// Waits until `pred` holds of the messages delivered to `name`; returns them.
    async fn wait(&self, name: &str, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        within(what, async {
            loop {
                let changed = self.inbox.changed.notified();
                let got = self.got(name);
                if pred(&got) {
                    return got;
                }
                // Bounded: the receiver notifies, but a poll keeps this simple and safe.
                let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
            }
        })
        .await
    }

    /// Lets every held (`hang`) request answer.
    fn release(&self) {
        self.inbox.release.add_permits(1 << 20);
    }
}

/// The `event` of each webhook message (or the header of each Slack one).
fn kinds(got: &[Value]) -> Vec<String> {
    got.iter()
        .map(|v| match v["event"].as_str() {
            Some(e) => e.to_owned(),
            None => v["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
        })
        .collect()
}

// ---- the hub, alerts, agents -----------------------------------------------------------

/// A hub with an alert source, a manual clock, and `f`'s adjustments.
async fn flow_hub(clock: &Clock, f: impl FnOnce(&mut HubConfig)) -> TestHub {
    let clock = clock.clone();
    TestHub::start_with(move |c| {
        c.alert_sources = vec![AlertSource {
            name: "prometheus".into(),
            token: AM_TOKEN.into(),
        }];
        c.clock = clock;
        f(c);
    })
    .await
}

fn rfc3339(ms: i64) -> String {
    tether_hub::store::rfc3339_ms(ms)
}

/// One Alertmanager alert about `host` (routed by its `instance`), episode `starts_ms`.
fn am_alert(status: &str, name: &str, host: &str, severity: &str, starts_ms: i64) -> Value {
    json!({
        "status": status,
        "labels": {"alertname": name, "instance": format!("{host}:9100"), "severity": severity},
        "annotations": {
            "summary": format!("{name} on {host}"),
            "description": "Free space under 3%; it grows 1 GB/h.",
            "runbook_url": "https://runbooks.example.com/disk",
        },
        "startsAt": rfc3339(starts_ms),
        "endsAt": if status == "resolved" { rfc3339(starts_ms + 60_000) } else { "0001-01-01T00:00:00Z".into() },
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": format!("fp-{name}-{host}"),
    })
}

async fn post_am(hub: &TestHub, alerts: Vec<Value>) {
    tether_engine::openai::ensure_tls_provider();
    let body = json!({"version": "4", "status": "firing", "receiver": "tether",
                      "groupKey": "{}:{}", "alerts": alerts});
    let resp = within(
        "POST alertmanager",
        reqwest::Client::new()
            .post(format!("http://{}/api/v1/alerts/alertmanager", hub.addr))
            .bearer_auth(AM_TOKEN)
            .json(&body)
            .send(),
    )
    .await
    .expect("POST");
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
}

async fn alerts(op: &mut Client) -> Vec<Value> {
    let r = within("alerts.list", op.request("alerts.list", json!({})))
        .await
        .expect("alerts.list");
    r["alerts"].as_array().cloned().unwrap_or_default()
}

/// Polls `alerts.list` until the alert with `fingerprint` satisfies `pred`; returns it.
async fn wait_alert(
    op: &mut Client,
    fingerprint: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    within(what, async {
        loop {
            if let Some(a) = alerts(op)
                .await
                .into_iter()
                .find(|a| a["alert_key"] == fingerprint)
                && pred(&a)
            {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// The alert once it carries a `diagnosis_skipped` whose reason starts with `prefix`.
async fn wait_skipped(op: &mut Client, fingerprint: &str, prefix: &str) -> Value {
    let a = wait_alert(
        op,
        fingerprint,
        &format!("{fingerprint} skipped: {prefix}"),
        |a| {
            a["diagnosis_skipped"]["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with(prefix))
        },
    )
    .await;
    assert!(
        a["diagnoses"].as_array().is_some_and(|d| d.is_empty()),
        "{a}"
    );
    a
}

/// The alert once `n` diagnoses are linked to it.
async fn wait_diagnosed(op: &mut Client, fingerprint: &str, n: usize) -> Value {
    wait_alert(
        op,
        fingerprint,
        &format!("{n} diagnoses of {fingerprint}"),
        |a| a["diagnoses"].as_array().is_some_and(|d| d.len() >= n),
    )
    .await
}

/// The alert once its (first) diagnosis has a report.
async fn wait_report(op: &mut Client, fingerprint: &str) -> Value {
    wait_alert(
        op,
        fingerprint,
        &format!("a report for {fingerprint}"),
        |a| a["diagnoses"][0]["report_id"].is_i64(),
    )
    .await
}

const REPORT: &str = "## Severity\nCRITICAL\n\n## Summary\n/var is full: the journal grew to 40 GB.\n\n## Root cause\njournald without a size cap.";

/// A model that answers every turn with [`REPORT`], reporting `tokens` tokens.
fn report_script(tokens: u64) -> String {
    json!({"loop": true, "responses": [{"text": REPORT,
        "usage": {"prompt_tokens": tokens - 10, "completion_tokens": 10, "total_tokens": tokens}}]})
    .to_string()
}

/// A model whose turns stop at a `shell` call waiting for approval.
fn asking_script() -> String {
    json!({"loop": true, "responses": [
        {"text": "checking ", "tool_calls": [{"tool": "shell", "args": {"command": "df -h /var"}}]},
        {"text": REPORT}
    ]})
    .to_string()
}

/// A tether agent (version 2, scripted model) calling itself `hostname`, registered.
async fn agent(hub: &TestHub, hostname: &str, script: &str) -> V2Agent {
    let token = hub.create_token(hostname).await;
    let mut a = V2Agent::new(&hub.agent_url(), &token, script, None);
    a.options
        .labels
        .insert("from_hostname".into(), hostname.into());
    a.start_link();
    a.wait_registered().await;
    hub.wait_connected(&a.agent_id, true).await;
    a
}

fn diagnosis(f: impl FnOnce(&mut DiagnosisConfig)) -> Option<DiagnosisConfig> {
    let mut d = DiagnosisConfig::default();
    f(&mut d);
    Some(d)
}

fn notifier(name: &str, kind: NotifyKind, url: String, on: &[NotifyOn]) -> NotifyConfig {
    let mut n = NotifyConfig::new(name, kind, &url, on.to_vec());
    n.retries = 3;
    n.timeout = Duration::from_secs(30);
    n
}

/// The events of a session from its start, as an operator attached to it reads them, until
/// one satisfies `stop`.
async fn session_events(
    op: &mut Client,
    session_id: &str,
    what: &str,
    stop: impl FnMut(&Value) -> bool,
) -> Vec<Value> {
    within(
        "attach",
        op.request("attach", json!({"session_id": session_id, "after_seq": 0})),
    )
    .await
    .expect("attach");
    events_until(op, session_id, what, stop).await
}

/// Waits until `/metrics` shows every line.
async fn wait_metrics(hub: &TestHub, lines: &[&str]) {
    within("the metrics", async {
        loop {
            let (_, metrics) = http_get_text(hub.addr, "/metrics").await;
            if lines.iter().all(|l| metrics.contains(l)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Lets the hub's consumers take in what an operator was just shown (a prompt) before the
/// test moves the manual clock: they read the same event from another task.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

// ---- tests ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_is_diagnosed_on_its_agent_and_notified_with_its_report() {
    let clock = Clock::manual(START_MS);
    let rx = Receiver::start().await;
    let slack = rx.url("ok", "slack");
    let hook = rx.url("ok", "hook");
    let hub = flow_hub(&clock, |c| {
        c.diagnosis = diagnosis(|_| {});
        c.console_url = Some("https://tether.example.com/console".into());
        c.notify = vec![
            notifier("slack", NotifyKind::Slack, slack, &NotifyOn::ALL),
            notifier("hook", NotifyKind::Webhook, hook, &NotifyOn::ALL),
        ];
    })
    .await;
    let web = agent(&hub, "web-01", &report_script(1000)).await;
    let mut alice = hub.operator(ALICE).await;

    post_am(
        &hub,
        vec![am_alert(
            "firing", "DiskFull", "web-01", "critical", START_MS,
        )],
    )
    .await;
    let a = wait_report(&mut alice, "fp-DiskFull-web-01").await;
    assert_eq!(a["agent_id"], web.agent_id.as_str(), "{a}");
    assert!(a["diagnosis_skipped"].is_null(), "{a}");
    let session_id = a["diagnoses"][0]["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();

    // An ordinary hub session: listed, created by auto-diagnosis, on the alert's agent.
    let sessions = alice
        .request("session.list", json!({}))
        .await
        .expect("session.list");
    let s = sessions["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["session_id"] == session_id.as_str())
        .cloned()
        .expect("the diagnosis session is listed");
    assert_eq!(s["created_by"], "auto-diagnosis", "{s}");
    assert_eq!(s["mode"], "diagnose", "{s}");
    assert_eq!(s["agent_id"], web.agent_id.as_str(), "{s}");
    assert_eq!(s["title"], "auto-diagnosis: DiskFull", "{s}");
    // The model was given the alert: title, summary, description, runbook, labels.
    let events = session_events(&mut alice, &session_id, "the first turn", |e| {
        e["event"] == "turn_ended"
    })
    .await;
    let started = events
        .iter()
        .find(|e| e["event"] == "turn_started")
        .expect("turn_started");
    let text = started["text"].as_str().unwrap_or_default();
    for part in [
        "DiskFull (critical alert",
        "Host: web-01",
        "Summary: DiskFull on web-01",
        "Description: Free space under 3%",
        "Runbook: https://runbooks.example.com/disk",
        "instance=web-01:9100",
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }

    // The report is stored with the alert.
    let r = alice
        .request("reports.list", json!({"alert_id": a["alert_id"]}))
        .await
        .expect("reports.list");
    assert_eq!(r["reports"][0]["report"], REPORT, "{r}");
    assert_eq!(r["reports"][0]["session_id"], session_id.as_str(), "{r}");
    assert_eq!(a["diagnoses"][0]["report_id"], r["reports"][0]["report_id"]);

    // Slack: the firing, then the report, each with blocks and a link to the console.
    let got = rx
        .wait("slack", "firing and report on Slack", |g| g.len() >= 2)
        .await;
    assert_eq!(
        kinds(&got),
        ["[FIRING] DiskFull", "[DIAGNOSIS] DiskFull"],
        "{got:#?}"
    );
    let report = &got[1];
    assert_eq!(
        report["blocks"][1]["fields"],
        json!([
            {"type": "mrkdwn", "text": "*Severity*\ncritical"},
            {"type": "mrkdwn", "text": "*Host*\nweb-01"},
            {"type": "mrkdwn", "text": "*State*\nfiring"},
            {"type": "mrkdwn", "text": "*Source*\nalertmanager"},
        ]),
        "{report}"
    );
    assert_eq!(
        report["blocks"][2]["text"]["text"], "/var is full: the journal grew to 40 GB.",
        "the report's summary paragraph: {report}"
    );
    let link = format!(
        "<https://tether.example.com/console/#/alert/{}|Open alert {} in the tether console>",
        a["alert_id"], a["alert_id"]
    );
    assert_eq!(report["blocks"][3]["elements"][0]["text"], link, "{report}");
    assert!(
        report["text"]
            .as_str()
            .is_some_and(|t| t.contains("critical DiskFull on web-01")),
        "{report}"
    );
    assert_eq!(
        got[0]["blocks"][2]["text"]["text"], "DiskFull on web-01",
        "a firing's paragraph is its summary: {got:#?}"
    );
    // The webhook: the alert as JSON (and the report).
    let hooked = rx
        .wait("hook", "firing and report on the webhook", |g| g.len() >= 2)
        .await;
    assert_eq!(kinds(&hooked), ["firing", "report"], "{hooked:#?}");
    assert_eq!(hooked[0]["alert"]["alert_id"], a["alert_id"]);
    assert_eq!(hooked[0]["alert"]["title"], "DiskFull");
    assert_eq!(hooked[1]["report"]["report"], REPORT);

    // It resolves: both are told, once.
    post_am(
        &hub,
        vec![am_alert(
            "resolved", "DiskFull", "web-01", "critical", START_MS,
        )],
    )
    .await;
    let got = rx.wait("hook", "resolved", |g| g.len() >= 3).await;
    assert_eq!(kinds(&got), ["firing", "report", "resolved"]);
    rx.wait("slack", "resolved on Slack", |g| g.len() >= 3)
        .await;

    wait_metrics(
        &hub,
        &[
            "tether_hub_notifications_sent_total{notifier=\"slack\",kind=\"slack\"} 3",
            "tether_hub_diagnoses_started_total 1",
            "tether_hub_diagnosis_tokens_total 1000",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diagnosis_waits_out_its_cooldown_per_agent_and_alertname() {
    let clock = Clock::manual(START_MS);
    let hub = flow_hub(&clock, |c| c.diagnosis = diagnosis(|_| {})).await;
    let _web = agent(&hub, "web-01", &report_script(100)).await;
    let mut alice = hub.operator(ALICE).await;
    let fp = "fp-DiskFull-web-01";
    let fire = |starts: i64| am_alert("firing", "DiskFull", "web-01", "critical", starts);
    let resolve = |starts: i64| am_alert("resolved", "DiskFull", "web-01", "critical", starts);

    post_am(&hub, vec![fire(START_MS)]).await;
    wait_report(&mut alice, fp).await;
    post_am(&hub, vec![resolve(START_MS)]).await;

    // Fires again 5 minutes later: within the 30-minute cooldown.
    let ep2 = START_MS + 5 * 60_000;
    post_am(&hub, vec![fire(ep2)]).await;
    let a = wait_alert(&mut alice, fp, "cooldown noted", |a| {
        a["started_at"] == rfc3339(ep2).as_str() && a["diagnosis_skipped"].is_object()
    })
    .await;
    let reason = a["diagnosis_skipped"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.starts_with("cooldown: `DiskFull` on web-01 was diagnosed at 2024-05-01T10:00:00.000Z; the next diagnosis may start at 2024-05-01T10:30:00.000Z (cooldown 30m)"),
        "{reason}"
    );
    assert_eq!(a["diagnoses"].as_array().map(Vec::len), Some(1), "{a}");
    // Another alertname on the same agent is not in that cooldown.
    post_am(
        &hub,
        vec![am_alert("firing", "HighLoad", "web-01", "critical", ep2)],
    )
    .await;
    wait_report(&mut alice, "fp-HighLoad-web-01").await;

    // Past the cooldown the next episode is diagnosed (and the skip is cleared).
    post_am(&hub, vec![resolve(ep2)]).await;
    clock.advance(Duration::from_secs(31 * 60));
    let ep3 = START_MS + 35 * 60_000;
    post_am(&hub, vec![fire(ep3)]).await;
    let a = wait_diagnosed(&mut alice, fp, 2).await;
    assert!(a["diagnosis_skipped"].is_null(), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnoses_are_limited_per_agent_and_in_the_fleet() {
    let clock = Clock::manual(START_MS);
    let hub = flow_hub(&clock, |c| {
        c.diagnosis = diagnosis(|d| {
            d.max_per_agent = 1;
            d.max_fleet = 2;
        })
    })
    .await;
    // Every diagnosis stops at a prompt nobody answers: it keeps running.
    let _a = agent(&hub, "web-01", &asking_script()).await;
    let _b = agent(&hub, "web-02", &asking_script()).await;
    let _c = agent(&hub, "web-03", &asking_script()).await;
    let mut alice = hub.operator(ALICE).await;

    post_am(
        &hub,
        vec![am_alert(
            "firing", "DiskFull", "web-01", "critical", START_MS,
        )],
    )
    .await;
    wait_diagnosed(&mut alice, "fp-DiskFull-web-01", 1).await;
    // A second alert on the same agent: its one slot is taken.
    post_am(
        &hub,
        vec![am_alert(
            "firing", "HighLoad", "web-01", "critical", START_MS,
        )],
    )
    .await;
    let a = wait_skipped(&mut alice, "fp-HighLoad-web-01", "max_per_agent").await;
    assert_eq!(
        a["diagnosis_skipped"]["reason"],
        "max_per_agent: 1 diagnosis(es) already running on web-01 (limit 1)"
    );
    // Another agent: the fleet has a second slot.
    post_am(
        &hub,
        vec![am_alert(
            "firing", "DiskFull", "web-02", "critical", START_MS,
        )],
    )
    .await;
    wait_diagnosed(&mut alice, "fp-DiskFull-web-02", 1).await;
    // A third agent: the fleet is full.
    post_am(
        &hub,
        vec![am_alert(
            "firing", "DiskFull", "web-03", "critical", START_MS,
        )],
    )
    .await;
    let a = wait_skipped(&mut alice, "fp-DiskFull-web-03", "max_fleet").await;
    assert_eq!(
        a["diagnosis_skipped"]["reason"],
        "max_fleet: 2 diagnoses already running in the fleet (limit 2)"
    );

    // An operator approves web-01's prompt: its diagnosis finishes and frees both limits.
    let d = wait_diagnosed(&mut alice, "fp-DiskFull-web-01", 1).await;
    let sid = d["diagnoses"][0]["session_id"]
        .as_str()
        .expect("sid")
        .to_owned();
    let asked = session_events(&mut alice, &sid, "the prompt", |e| {
        e["event"] == "permission_requested"
    })
    .await;
    let call_id = asked.last().expect("prompt")["call_id"].clone();
    alice
        .request(
            "answer",
            json!({"session_id": sid, "call_id": call_id, "decision": "allow"}),
        )
        .await
        .expect("answer");
    wait_report(&mut alice, "fp-DiskFull-web-01").await;
    // web-03's alert moves to a new episode: now there is room.
    post_am(
        &hub,
        vec![am_alert(
            "firing",
            "DiskFull",
            "web-03",
            "critical",
            START_MS + 1,
        )],
    )
    .await;
    let a = wait_diagnosed(&mut alice, "fp-DiskFull-web-03", 1).await;
    assert!(a["diagnosis_skipped"].is_null(), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_token_budget_stops_diagnoses_until_the_next_day() {
    // 23:00 UTC: the day ends within the test's clock moves.
    let clock = Clock::manual(START_MS + 13 * 3_600_000);
    let hub = flow_hub(&clock, |c| {
        c.diagnosis = diagnosis(|d| {
            d.daily_tokens = 1500;
            d.cooldown = Duration::from_secs(1);
        })
    })
    .await;
    let _web = agent(&hub, "web-01", &report_script(1000)).await;
    let mut alice = hub.operator(ALICE).await;
    let t = START_MS + 13 * 3_600_000;

    post_am(&hub, vec![am_alert("firing", "A", "web-01", "critical", t)]).await;
    wait_report(&mut alice, "fp-A-web-01").await;
    // 1000 of 1500 spent: one more may start (and spends 1000 more).
    post_am(&hub, vec![am_alert("firing", "B", "web-01", "critical", t)]).await;
    wait_report(&mut alice, "fp-B-web-01").await;
    post_am(&hub, vec![am_alert("firing", "C", "web-01", "critical", t)]).await;
    let a = wait_skipped(&mut alice, "fp-C-web-01", "daily_tokens").await;
    assert_eq!(
        a["diagnosis_skipped"]["reason"],
        "daily_tokens: 2000 of 1500 tokens spent today (UTC); diagnoses start again at 2024-05-02T00:00:00.000Z"
    );
    // The next day the budget is new.
    clock.advance(Duration::from_secs(3600));
    post_am(
        &hub,
        vec![am_alert("firing", "D", "web-01", "critical", t + 3_600_000)],
    )
    .await;
    wait_report(&mut alice, "fp-D-web-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_stops_diagnosis_and_notifications_until_it_expires() {
    let clock = Clock::manual(START_MS);
    let rx = Receiver::start().await;
    let url = rx.url("ok", "hook");
    let hub = flow_hub(&clock, |c| {
        c.diagnosis = diagnosis(|_| {});
        c.notify = vec![notifier("hook", NotifyKind::Webhook, url, &NotifyOn::ALL)];
    })
    .await;
    let _web = agent(&hub, "web-01", &report_script(100)).await;
    let mut alice = hub.operator(ALICE).await;
    let s = alice
        .request(
            "silence.create",
            json!({"matchers": [{"name": "alertname", "value": "DiskFull"}],
                   "duration": "1h", "comment": "disk swap tonight"}),
        )
        .await
        .expect("silence.create");
    let silence_id = s["silence_id"].as_i64().expect("silence_id");

    post_am(
        &hub,
        vec![am_alert(
            "firing", "DiskFull", "web-01", "critical", START_MS,
        )],
    )
    .await;
    let a = wait_skipped(&mut alice, "fp-DiskFull-web-01", "silenced").await;
    assert_eq!(
        a["diagnosis_skipped"]["reason"],
        format!("silenced (silence {silence_id})")
    );
    // Something not silenced is notified (and so proves the silenced one was not, before).
    post_am(
        &hub,
        vec![am_alert(
            "firing", "HighLoad", "web-01", "warning", START_MS,
        )],
    )
    .await;
    let got = rx
        .wait("hook", "HighLoad's firing", |g| !g.is_empty())
        .await;
    assert_eq!(got[0]["alert"]["title"], "HighLoad", "{got:#?}");
    assert_eq!(got.len(), 1, "the silenced alert notified: {got:#?}");

    // The silence runs out: the alert, still firing, is notified and diagnosed.
    clock.advance(Duration::from_secs(3601));
    let got = rx
        .wait("hook", "DiskFull's firing after the silence", |g| {
            g.iter().any(|v| v["alert"]["title"] == "DiskFull")
        })
        .await;
    assert_eq!(kinds(&got), ["firing", "firing"], "{got:#?}");
    let a = wait_report(&mut alice, "fp-DiskFull-web-01").await;
    assert!(a["diagnosis_skipped"].is_null(), "{a}");
    rx.wait("hook", "the report", |g| {
        kinds(g).contains(&"report".to_owned())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_waiting_is_sent_once_per_prompt_after_approval_wait() {
    let clock = Clock::manual(START_MS);
    let rx = Receiver::start().await;
    let (slack, hook) = (rx.url("ok", "slack"), rx.url("ok", "hook"));
    let hub = flow_hub(&clock, |c| {
        c.diagnosis = diagnosis(|_| {});
        let mut s = notifier(
            "slack",
            NotifyKind::Slack,
            slack,
            &[NotifyOn::ApprovalWaiting],
        );
        s.approval_wait = Duration::from_secs(60);
        let mut h = notifier(
            "hook",
            NotifyKind::Webhook,
            hook,
            &[NotifyOn::ApprovalWaiting],
        );
        h.approval_wait = Duration::from_secs(300);
        c.notify = vec![s, h];
    })
    .await;
    let web = agent(&hub, "web-01", &asking_script()).await;
    let mut alice = hub.operator(ALICE).await;
    post_am(
        &hub,
        vec![am_alert(
            "firing", "DiskFull", "web-01", "critical", START_MS,
        )],
    )
    .await;
    let a = wait_diagnosed(&mut alice, "fp-DiskFull-web-01", 1).await;
    let sid = a["diagnoses"][0]["session_id"]
        .as_str()
        .expect("sid")
        .to_owned();
    let asked = session_events(&mut alice, &sid, "the prompt", |e| {
        e["event"] == "permission_requested"
    })
    .await;
    let call_id = asked.last().expect("prompt")["call_id"]
        .as_str()
        .expect("call_id")
        .to_owned();

    settle().await;
    // 59 s: nobody is told yet (the hub looks every second; give it a few looks).
    clock.advance(Duration::from_secs(59));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rx.seen("slack"), 0, "told before approval_wait");
    // Past 60 s: Slack is told, once; the webhook (300 s) not yet.
    clock.advance(Duration::from_secs(2));
    let got = rx
        .wait("slack", "approval_waiting on Slack", |g| !g.is_empty())
        .await;
    let m = &got[0];
    assert_eq!(
        m["blocks"][0]["text"]["text"], "[APPROVAL WAITING] shell on web-01",
        "{m}"
    );
    assert_eq!(
        m["blocks"][1]["fields"][0]["text"], "*Tool*\n`shell`",
        "{m}"
    );
    assert_eq!(m["blocks"][1]["fields"][1]["text"], "*Host*\nweb-01", "{m}");
    assert!(
        m["blocks"][2]["text"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("df -h /var")),
        "the arguments are shown: {m}"
    );
    let link = format!(
        "<http://{}/#/session/{sid}|Answer the prompt in the tether console> (call {call_id})",
        hub.addr
    );
    assert_eq!(m["blocks"][3]["elements"][0]["text"], link, "{m}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rx.seen("hook"), 0, "the webhook's approval_wait is 300 s");
    clock.advance(Duration::from_secs(240));
    let got = rx
        .wait("hook", "approval_waiting on the webhook", |g| !g.is_empty())
        .await;
    assert_eq!(got[0]["event"], "approval_waiting", "{got:#?}");
    assert_eq!(got[0]["tool"], "shell");
    assert_eq!(got[0]["args"], json!({"command": "df -h /var"}));
    assert_eq!(got[0]["hostname"], "web-01");
    assert_eq!(got[0]["agent_id"], web.agent_id.as_str());
    assert_eq!(got[0]["session_id"], sid.as_str());
    assert_eq!(got[0]["call_id"], call_id.as_str());
    assert_eq!(got[0]["waited_ms"], 301_000);
    // Time goes on: still once each.
    clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!((rx.seen("slack"), rx.seen("hook")), (1, 1));

    // Answered, the turn asks again (the script loops): a new prompt, a new message.
    alice
        .request(
            "answer",
            json!({"session_id": sid, "call_id": call_id, "decision": "allow"}),
        )
        .await
        .expect("answer");
    alice
        .request(
            "input",
            json!({"session_id": sid, "text": "and /home?", "queue": true}),
        )
        .await
        .expect("input");
    let asked = events_until(&mut alice, &sid, "the second prompt", |e| {
        e["event"] == "permission_requested"
    })
    .await;
    let second = asked.last().expect("prompt")["call_id"].clone();
    assert_ne!(second, json!(call_id));
    settle().await;
    clock.advance(Duration::from_secs(61));
    let got = rx
        .wait("slack", "the second prompt on Slack", |g| g.len() >= 2)
        .await;
    assert_eq!(got.len(), 2);
    // Answered before its wait: never told.
    clock.advance(Duration::from_secs(1));
    alice
        .request(
            "answer",
            json!({"session_id": sid, "call_id": second, "decision": "deny"}),
        )
        .await
        .expect("answer");
    clock.advance(Duration::from_secs(600));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rx.seen("hook"), 1, "an answered prompt is not announced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_notifier_does_not_delay_another_and_retries_are_counted() {
    let clock = Clock::manual(START_MS);
    let rx = Receiver::start().await;
    let (stuck, good, flaky, refusing, critical) = (
        rx.url("hang", "stuck"),
        rx.url("ok", "good"),
        rx.url("fail-2", "flaky"),
        rx.url("refuse", "refusing"),
        rx.url("ok", "critical"),
    );
    let hub = flow_hub(&clock, |c| {
        let mut only_critical = notifier(
            "critical",
            NotifyKind::Webhook,
            critical,
            &[NotifyOn::Firing],
        );
        only_critical.severities = vec![tether_hub::alerts::Severity::Critical];
        c.notify = vec![
            notifier("stuck", NotifyKind::Webhook, stuck, &[NotifyOn::Firing]),
            notifier("flaky", NotifyKind::Webhook, flaky, &[NotifyOn::Firing]),
            notifier(
                "refusing",
                NotifyKind::Webhook,
                refusing,
                &[NotifyOn::Firing],
            ),
            only_critical,
            notifier("good", NotifyKind::Slack, good, &[NotifyOn::Firing]),
        ];
    })
    .await;
    post_am(
        &hub,
        vec![
            am_alert("firing", "A", "nowhere", "critical", START_MS),
            am_alert("firing", "B", "nowhere", "warning", START_MS),
        ],
    )
    .await;
    // Both reach the good notifier while the stuck one still holds its first request.
    let got = rx
        .wait("good", "both on the good notifier", |g| g.len() >= 2)
        .await;
    assert_eq!(kinds(&got), ["[FIRING] A", "[FIRING] B"]);
    assert_eq!(
        rx.seen("stuck"),
        1,
        "the stuck endpoint has the first, unanswered"
    );
    assert!(rx.got("stuck").is_empty());
    // The flaky one gets there after two 500s (backoff 1 s, 2 s).
    rx.wait("flaky", "both on the flaky notifier", |g| g.len() >= 2)
        .await;
    rx.release();
    rx.wait("stuck", "both on the stuck notifier", |g| g.len() >= 2)
        .await;
    wait_metrics(
        &hub,
        &[
            "tether_hub_notifications_sent_total{notifier=\"good\",kind=\"slack\"} 2",
            "tether_hub_notifications_sent_total{notifier=\"flaky\",kind=\"webhook\"} 2",
            "tether_hub_notifications_retried_total{notifier=\"flaky\",kind=\"webhook\"} 2",
            "tether_hub_notifications_sent_total{notifier=\"stuck\",kind=\"webhook\"} 2",
            // A 400 is not tried again.
            "tether_hub_notifications_failed_total{notifier=\"refusing\",kind=\"webhook\"} 2",
            "tether_hub_notifications_retried_total{notifier=\"refusing\",kind=\"webhook\"} 0",
        ],
    )
    .await;
    assert_eq!(rx.seen("refusing"), 2);
    // A notifier of critical alerts only was told of A, not of the warning B (dispatched
    // to every queue at the same time as A, long since delivered to the others).
    let got = rx
        .wait("critical", "A on the critical-only notifier", |g| {
            !g.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["alert"]["title"], "A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catpaw_agent_gets_the_alert_as_params_descriptions_and_its_report_is_stored() {
    let clock = Clock::manual(START_MS);
    let hub = flow_hub(&clock, |c| c.diagnosis = diagnosis(|_| {})).await;
    let token = hub.create_token("catpaw").await;
    let mut cat = V1Agent::connect(
        &hub.agent_url(),
        &token,
        &uuid::Uuid::now_v7().to_string(),
        "db-01",
    )
    .await;
    hub.wait_connected(&cat.agent_id, true).await;
    let mut alice = hub.operator(ALICE).await;

    post_am(
        &hub,
        vec![am_alert(
            "firing", "DiskFull", "db-01", "critical", START_MS,
        )],
    )
    .await;
    let start = cat.next_of("session_start").await;
    let p = &start["payload"];
    assert_eq!(p["session_type"], "diagnose", "{start}");
    assert_eq!(p["user_name"], "auto-diagnosis", "{start}");
    let params = p["params"].as_object().expect("params");
    // catpaw reads `descriptions`, and decodes params as strings only.
    let d = params["descriptions"].as_str().expect("descriptions");
    for part in [
        "DiskFull (critical alert",
        "Summary: DiskFull on db-01",
        "Runbook: https://runbooks.example.com/disk",
        "alertname=DiskFull",
    ] {
        assert!(d.contains(part), "{part:?} not in {d}");
    }
    for (k, v) in params {
        assert!(v.is_string(), "params.{k} is not a string: {v}");
    }
    assert!(
        !params.contains_key("alert_id"),
        "the hub's own parameter went on: {p}"
    );
    let labels: Value = serde_json::from_str(params["labels"].as_str().expect("labels"))
        .expect("labels as JSON text");
    assert_eq!(labels["instance"], "db-01:9100");

    // catpaw's final report (see common::catpaw_behaviour) is stored with the alert.
    let a = wait_report(&mut alice, "fp-DiskFull-db-01").await;
    let r = alice
        .request("reports.list", json!({"alert_id": a["alert_id"]}))
        .await
        .expect("reports.list");
    assert_eq!(r["reports"][0]["report"], INSPECT_REPORT, "{r}");
    assert_eq!(r["reports"][0]["agent_id"], cat.agent_id.as_str(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_offline_and_out_of_scope_alerts_say_why_they_were_not_diagnosed() {
    let clock = Clock::manual(START_MS);
    let hub = flow_hub(&clock, |c| {
        c.diagnosis = diagnosis(|_| {});
    })
    .await;
    let web = agent(&hub, "web-01", &report_script(100)).await;
    let mut alice = hub.operator(ALICE).await;

    post_am(
        &hub,
        vec![am_alert(
            "firing", "DiskFull", "ghost", "critical", START_MS,
        )],
    )
    .await;
    let a = wait_skipped(&mut alice, "fp-DiskFull-ghost", "unroutable").await;
    let reason = a["diagnosis_skipped"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("no agent's hostname or IP matches instance=ghost:9100"),
        "the route's reason is given: {reason}"
    );

    // The agent goes away: its alert is not diagnosed, and says so.
    let agent_id = web.agent_id.clone();
    web.stop().await;
    hub.wait_connected(&agent_id, false).await;
    post_am(
        &hub,
        vec![am_alert(
            "firing", "DiskFull", "web-01", "critical", START_MS,
        )],
    )
    .await;
    let a = wait_skipped(&mut alice, "fp-DiskFull-web-01", "agent offline").await;
    assert_eq!(
        a["diagnosis_skipped"]["reason"],
        format!("agent offline: web-01 ({agent_id}) is not connected")
    );

    // A warning is outside `severities`: neither diagnosed nor marked.
    post_am(
        &hub,
        vec![am_alert("firing", "HighLoad", "ghost", "warning", START_MS)],
    )
    .await;
    post_am(
        &hub,
        vec![am_alert("firing", "Later", "ghost", "critical", START_MS)],
    )
    .await;
    wait_skipped(&mut alice, "fp-Later-ghost", "unroutable").await;
    let a = wait_alert(&mut alice, "fp-HighLoad-ghost", "HighLoad", |_| true).await;
    assert!(a["diagnosis_skipped"].is_null(), "{a}");
    assert!(
        a["diagnoses"].as_array().is_some_and(|d| d.is_empty()),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_diagnosis_is_told_when_its_alert_resolves() {
    let clock = Clock::manual(START_MS);
    let hub = flow_hub(&clock, |c| c.diagnosis = diagnosis(|_| {})).await;
    let _web = agent(&hub, "web-01", &asking_script()).await;
    let mut alice = hub.operator(ALICE).await;
    post_am(
        &hub,
        vec![am_alert(
            "firing", "DiskFull", "web-01", "critical", START_MS,
        )],
    )
    .await;
    let a = wait_diagnosed(&mut alice, "fp-DiskFull-web-01", 1).await;
    let sid = a["diagnoses"][0]["session_id"]
        .as_str()
        .expect("sid")
        .to_owned();
    session_events(&mut alice, &sid, "the prompt", |e| {
        e["event"] == "permission_requested"
    })
    .await;

    post_am(
        &hub,
        vec![am_alert(
            "resolved", "DiskFull", "web-01", "critical", START_MS,
        )],
    )
    .await;
    let events = events_until(&mut alice, &sid, "the notice", |e| e["event"] == "notice").await;
    let notice = events.last().expect("notice");
    assert_eq!(notice["level"], "info", "{notice}");
    assert_eq!(
        notice["message"],
        "The alert `DiskFull` resolved at 2024-05-01T10:01:00.000Z while this diagnosis was running; what it reports may be over.",
        "{notice}"
    );
}
