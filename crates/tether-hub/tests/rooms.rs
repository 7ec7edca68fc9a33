//! The hub's rooms: a session's events reach operators only once committed, closed sessions
//! leave memory, and an agent that is slow is told apart from one that went away.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tether_hub::alerts::{AckRecord, Alert, Matcher, Silence, Source, TimelineEvent};
use tether_hub::store::*;
use tether_proto::link::{AlertEvent, Heartbeat, Register};
use tether_transport::client::ClientError;

fn new_agent_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The SQLite store, except that `append_events` fails while `fail_appends` is set, and
/// `insert_alerts` while `fail_alerts` is.
struct FlakyStore {
    inner: SqliteStore,
    fail_appends: Arc<AtomicBool>,
    fail_alerts: Arc<AtomicBool>,
    /// The largest batch of events refused.
    refused: Arc<AtomicUsize>,
}

impl Store for FlakyStore {
    fn upsert_agent(
        &self,
        agent_id: &str,
        reg: &Register,
        proto: u32,
        token_id: Option<&str>,
    ) -> StoreResult<AgentRecord> {
        self.inner.upsert_agent(agent_id, reg, proto, token_id)
    }
    fn set_connected(&self, agent_id: &str, connected: bool) -> StoreResult<()> {
        self.inner.set_connected(agent_id, connected)
    }
    fn record_heartbeat(&self, agent_id: &str, hb: &Heartbeat) -> StoreResult<HeartbeatFigures> {
        self.inner.record_heartbeat(agent_id, hb)
    }
    fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        self.inner.list_agents()
    }
    fn get_agent(&self, agent_id: &str) -> StoreResult<Option<AgentRecord>> {
        self.inner.get_agent(agent_id)
    }
    fn mark_all_disconnected(&self) -> StoreResult<()> {
        self.inner.mark_all_disconnected()
    }
    fn insert_token(
        &self,
        name: &str,
        hash: &str,
        labels: &BTreeMap<String, String>,
    ) -> StoreResult<TokenRecord> {
        self.inner.insert_token(name, hash, labels)
    }
    fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        self.inner.list_tokens()
    }
    fn revoke_token(&self, id_or_name: &str) -> StoreResult<usize> {
        self.inner.revoke_token(id_or_name)
    }
    fn tokens_revoked_since(&self, since_ms: i64) -> StoreResult<Vec<(String, i64)>> {
        self.inner.tokens_revoked_since(since_ms)
    }
    fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        self.inner.token_by_hash(hash)
    }
    fn bind_token(&self, token_id: &str, agent_id: &str) -> StoreResult<()> {
        self.inner.bind_token(token_id, agent_id)
    }
    fn insert_alerts(
        &self,
        agent_id: &str,
        hostname: &str,
        events: &[AlertEvent],
        now_ms: i64,
    ) -> StoreResult<AlertInsert> {
        if self.fail_alerts.load(Ordering::SeqCst) {
            return Err(StoreError::other("disk full (test)"));
        }
        self.inner.insert_alerts(agent_id, hostname, events, now_ms)
    }
    fn record_external(
        &self,
        source: Source,
        source_name: &str,
        alerts: &[ExternalAlert],
        now_ms: i64,
    ) -> StoreResult<AlertInsert> {
        self.inner
            .record_external(source, source_name, alerts, now_ms)
    }
    fn list_alerts(&self, filter: &AlertFilter, now_ms: i64) -> StoreResult<AlertPage> {
        self.inner.list_alerts(filter, now_ms)
    }
    fn get_alert(&self, alert_id: i64, now_ms: i64) -> StoreResult<Option<Alert>> {
        self.inner.get_alert(alert_id, now_ms)
    }
    fn alert_events(
        &self,
        alert_id: i64,
        before_event_id: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<TimelineEvent>> {
        self.inner.alert_events(alert_id, before_event_id, limit)
    }
    fn alert_acks(&self, alert_id: i64) -> StoreResult<Vec<AckRecord>> {
        self.inner.alert_acks(alert_id)
    }
    fn ack_alert(
        &self,
        alert_id: i64,
        by: &str,
        comment: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AlertChange>> {
        self.inner.ack_alert(alert_id, by, comment, now_ms)
    }
    fn link_alert_session(
        &self,
        alert_id: i64,
        session_id: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AlertChange>> {
        self.inner.link_alert_session(alert_id, session_id, now_ms)
    }
    fn note_diagnosis_skipped(
        &self,
        alert_id: i64,
        reason: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AlertChange>> {
        self.inner.note_diagnosis_skipped(alert_id, reason, now_ms)
    }
    fn count_alert_events(&self) -> StoreResult<u64> {
        self.inner.count_alert_events()
    }
    fn count_firing_alerts(&self) -> StoreResult<u64> {
        self.inner.count_firing_alerts()
    }
    fn prune_alerts(&self, before_ms: i64) -> StoreResult<usize> {
        self.inner.prune_alerts(before_ms)
    }
    fn create_silence(
        &self,
        matchers: &[Matcher],
        comment: &str,
        created_by: &str,
        starts_ms: i64,
        ends_ms: i64,
    ) -> StoreResult<Silence> {
        self.inner
            .create_silence(matchers, comment, created_by, starts_ms, ends_ms)
    }
    fn list_silences(&self, include_expired: bool, now_ms: i64) -> StoreResult<Vec<Silence>> {
        self.inner.list_silences(include_expired, now_ms)
    }
    fn expire_silence(
        &self,
        silence_id: i64,
        by: &str,
        now_ms: i64,
    ) -> StoreResult<Option<Silence>> {
        self.inner.expire_silence(silence_id, by, now_ms)
    }
    fn alerts_matching(&self, silence: &Silence, now_ms: i64) -> StoreResult<Vec<Alert>> {
        self.inner.alerts_matching(silence, now_ms)
    }
    fn silences_ended(&self, after_ms: i64, upto_ms: i64) -> StoreResult<Vec<Silence>> {
        self.inner.silences_ended(after_ms, upto_ms)
    }
    fn find_agent_by_host(&self, host: &str) -> StoreResult<Option<AgentMatch>> {
        self.inner.find_agent_by_host(host)
    }
    fn find_agent(&self, id_or_hostname: &str) -> StoreResult<Option<AgentMatch>> {
        self.inner.find_agent(id_or_hostname)
    }
    fn insert_session(&self, s: &SessionRecord) -> StoreResult<()> {
        self.inner.insert_session(s)
    }
    fn update_session(&self, session_id: &str, state: &str, last_seq: u64) -> StoreResult<()> {
        self.inner.update_session(session_id, state, last_seq)
    }
    fn list_sessions(&self, agent_id: Option<&str>) -> StoreResult<Vec<SessionRecord>> {
        self.inner.list_sessions(agent_id)
    }
    fn get_session(&self, session_id: &str) -> StoreResult<Option<SessionRecord>> {
        self.inner.get_session(session_id)
    }
    fn append_events(&self, session_id: &str, events: &[(u64, String)]) -> StoreResult<()> {
        if self.fail_appends.load(Ordering::SeqCst) {
            self.refused.fetch_max(events.len(), Ordering::SeqCst);
            return Err(StoreError::other("disk full (test)"));
        }
        self.inner.append_events(session_id, events)
    }
    fn read_events(
        &self,
        session_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, String)>> {
        self.inner.read_events(session_id, from, to, limit)
    }
    fn prune_sessions(&self, before_ms: i64) -> StoreResult<usize> {
        self.inner.prune_sessions(before_ms)
    }
    fn session_tokens_since(&self, created_by: &str, since_ms: i64) -> StoreResult<u64> {
        self.inner.session_tokens_since(created_by, since_ms)
    }
    fn insert_report(
        &self,
        r: &ReportRow,
        now_ms: i64,
    ) -> StoreResult<(ReportRow, Option<AlertChange>)> {
        self.inner.insert_report(r, now_ms)
    }
    fn list_reports(
        &self,
        agent_id: Option<&str>,
        alert_id: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<ReportRow>> {
        self.inner.list_reports(agent_id, alert_id, limit)
    }
}

/// A hub on a [`FlakyStore`]; returns the switch that makes its event appends fail and the
/// largest batch it refused.
async fn flaky_hub() -> (TestHub, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let (hub, fail, refused, _) = flaky_hub_with_alerts().await;
    (hub, fail, refused)
}

/// [`flaky_hub`], with the switch that makes its alert commits fail too.
async fn flaky_hub_with_alerts() -> (TestHub, Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let fail = Arc::new(AtomicBool::new(false));
    let fail_alerts = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let store = FlakyStore {
        inner: SqliteStore::open(&dir.path().join("hub.db")).expect("store"),
        fail_appends: fail.clone(),
        fail_alerts: fail_alerts.clone(),
        refused: refused.clone(),
    };
    let mut config =
        tether_hub::HubConfig::new("127.0.0.1:0".parse().expect("addr"), dir.path().to_owned());
    config.operators = operators();
    let running = tether_hub::start_with_store(config, Arc::new(store))
        .await
        .expect("hub start");
    let addr = running.local_addr;
    (
        TestHub {
            dir,
            running: Some(running),
            addr,
        },
        fail,
        refused,
        fail_alerts,
    )
}

fn sid_of(created: Result<Value, ClientError>) -> String {
    created.expect("session.create")["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned()
}

/// An event the store could not take is never shown: the attached operator is told
/// (`log_unavailable`) instead, and once the store takes events again every held event goes
/// out, in order, with no hole, followed by `log_restored`; the store's replay agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_store_refused_is_not_broadcast() {
    let (hub, fail, refused) = flaky_hub().await;
    let token = hub.create_token("catpaw-flaky").await;
    let agent_id = new_agent_id();
    let _agent = V1Agent::connect(&hub.agent_url(), &token, &agent_id, "flaky-01").await;
    let mut alice = hub.operator(ALICE).await;
    let sid = sid_of(
        alice
            .request(
                "session.create",
                json!({"mode": "chat", "agent_id": agent_id}),
            )
            .await,
    );
    alice
        .request("attach", json!({"session_id": sid, "after_seq": 0}))
        .await
        .expect("attach");
    next_event(&mut alice, &sid, "client_attached").await;

    // The store fails: the turn's events (turn_started, running, the answer, turn_ended,
    // idle) are held, not shown.
    fail.store(true, Ordering::SeqCst);
    alice
        .request("input", json!({"session_id": sid, "text": "one"}))
        .await
        .expect("input");
    let notice = within("log_unavailable", async {
        loop {
            let v = next_json(&mut alice, "a frame").await;
            assert!(
                v.get("seq").is_none(),
                "an event the store refused was broadcast: {v}"
            );
            if v["event"] == "log_unavailable" {
                return v;
            }
        }
    })
    .await;
    assert_eq!(notice["session_id"], sid.as_str(), "{notice}");
    assert!(
        notice["message"]
            .as_str()
            .is_some_and(|m| m.contains("disk full")),
        "{notice}"
    );
    // The agent's answer comes while the store still fails: held as well (the whole turn,
    // five events, waits in one batch).
    within("the answer's commit to fail", async {
        while refused.load(Ordering::SeqCst) < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // The store is back: the held events go out in order, then `log_restored`.
    fail.store(false, Ordering::SeqCst);
    let mut events = Vec::new();
    within("log_restored", async {
        loop {
            let v = next_json(&mut alice, "a frame").await;
            if v["event"] == "log_restored" {
                return;
            }
            if v.get("seq").is_some() {
                events.push(v);
            }
        }
    })
    .await;
    assert_eq!(
        names(&events),
        [
            "turn_started",
            "session_state",
            "text_delta",
            "turn_ended",
            "session_state"
        ],
        "{events:#?}"
    );
    let first = events[0]["seq"].as_u64().expect("seq");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["seq"].as_u64(),
            Some(first + i as u64),
            "no hole: {events:#?}"
        );
    }
    // A later attach replays the same events from the store.
    let mut bob = hub.operator(BOB).await;
    bob.request("attach", json!({"session_id": sid, "after_seq": first - 1}))
        .await
        .expect("attach");
    let replay = events_until(&mut bob, &sid, "the replay", |v| {
        v["seq"].as_u64() == Some(first + 4)
    })
    .await;
    assert_eq!(replay, events, "the store holds what was shown");
}

/// A closed session leaves the relay's memory; attaching later replays it from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_sessions_leave_memory() {
    let hub = TestHub::start().await;
    let token = hub.create_token("catpaw-closing").await;
    let agent_id = new_agent_id();
    let _agent = V1Agent::connect(&hub.agent_url(), &token, &agent_id, "closing-01").await;
    let mut alice = hub.operator(ALICE).await;
    let relay = hub.hub().relay().clone();
    let mut ids = Vec::new();
    for i in 0..3 {
        let sid = sid_of(
            alice
                .request(
                    "session.create",
                    json!({"mode": "chat", "agent_id": agent_id,
                           "params": {"message": format!("hello {i}")}}),
                )
                .await,
        );
        alice
            .request("attach", json!({"session_id": sid}))
            .await
            .expect("attach");
        ids.push(sid);
    }
    assert_eq!(relay.in_memory(), 3);
    for sid in &ids {
        alice
            .request("session.close", json!({"session_id": sid}))
            .await
            .expect("session.close");
    }
    within("closed sessions to leave memory", async {
        while relay.in_memory() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Still there for whoever attaches later: read back from the store, not kept.
    let mut bob = hub.operator(BOB).await;
    let snap = bob
        .request("attach", json!({"session_id": ids[0], "after_seq": 0}))
        .await
        .expect("attach a closed session");
    assert_eq!(snap["snapshot"]["state"], "closed", "{snap}");
    let replay = events_until(&mut bob, &ids[0], "the replay", |v| {
        v["event"] == "session_closed"
    })
    .await;
    assert_eq!(replay[0]["seq"], 1, "{replay:#?}");
    assert!(
        replay.iter().any(|e| e["event"] == "text_delta"),
        "{replay:#?}"
    );
    assert_eq!(
        relay.in_memory(),
        0,
        "attaching a closed session does not keep it"
    );
    let list = bob
        .request("session.list", json!({}))
        .await
        .expect("session.list");
    let closed = list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter(|s| s["state"] == "closed")
        .count();
    assert_eq!(closed, 3, "{list}");
}

/// The refusal an operator got: (reason, `agent_error`).
fn refusal(r: Result<Value, ClientError>) -> (String, Value) {
    match r {
        Err(ClientError::Server(e)) => (
            e.reason.as_str().to_owned(),
            e.details.get("agent_error").cloned().unwrap_or(Value::Null),
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// An agent that does not answer in time and an agent that went away are different
/// failures at the operator's edge: `internal` + `agent_error: timeout` (it may still act),
/// `overloaded` + `agent_error: disconnected` (try again when it is back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agent_is_told_apart_from_a_gone_one() {
    let hub = TestHub::start().await;
    hub.hub()
        .relay()
        .set_agent_timeout(Duration::from_millis(300));
    let token = hub.create_token("v2-silent").await;
    let agent_id = new_agent_id();
    let (mut agent, ack) =
        V1Agent::connect_with(&hub.agent_url(), &token, &agent_id, "silent-01", "2").await;
    assert_eq!(ack["payload"]["proto"], 2, "{ack}");
    agent.manual();
    let mut alice = hub.operator(ALICE).await;
    let (created, ()) = tokio::join!(
        alice.request(
            "session.create",
            json!({"mode": "chat", "agent_id": agent_id})
        ),
        async {
            let start = agent.next_of("session_start").await;
            agent.ack(&start);
        }
    );
    let sid = sid_of(created);

    // Connected, silent: a timeout.
    let (slow, _) = tokio::join!(
        alice.request(
            "input",
            json!({"session_id": sid, "text": "are you there?"})
        ),
        agent.next_of("session_input"),
    );
    let (reason, kind) = refusal(slow);
    assert_eq!((reason.as_str(), kind), ("internal", json!("timeout")));

    // Gone while the op waits: disconnected.
    let (gone, ()) = tokio::join!(
        alice.request("input", json!({"session_id": sid, "text": "still there?"})),
        async {
            agent.next_of("session_input").await;
            agent.close();
        }
    );
    let (reason, kind) = refusal(gone);
    assert_eq!(
        (reason.as_str(), kind),
        ("overloaded", json!("disconnected"))
    );
}

/// Alerts the store cannot take: the frame is refused (`store_unavailable`), counted in
/// `tether_hub_link_frames_refused_total`, never acknowledged; the agent keeps them and sends
/// them again, and once the store takes them again they are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_the_store_cannot_take_are_refused_counted_and_sent_again() {
    let (hub, _, _, fail_alerts) = flaky_hub_with_alerts().await;
    let token = hub.create_token("flaky-alerts").await;
    let mut agent = V2Agent::new(&hub.agent_url(), &token, &shell_script(), None);
    agent.start_link();
    agent.wait_registered().await;
    fail_alerts.store(true, Ordering::SeqCst);
    agent.sink.send(alert(1));
    within("a refused alert frame, counted", async {
        loop {
            let (_, metrics) = http_get_text(hub.addr, "/metrics").await;
            let refused = metrics
                .lines()
                .find_map(|l| l.strip_prefix("tether_hub_link_frames_refused_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if refused >= 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(hub.alert_count().await, 0);
    let status = agent.status();
    assert_eq!(status.spool_pending, 1, "kept for another try: {status:?}");
    fail_alerts.store(false, Ordering::SeqCst);
    assert_eq!(hub.wait_alerts(1).await, 1);
    agent
        .wait_status("spool drained", |s| s.spool_pending == 0)
        .await;
    assert_eq!(hub.alert_count().await, 1, "stored once");
    agent.stop().await;
    hub.stop().await;
}
