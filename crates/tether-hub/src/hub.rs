//! The hub's shared state: connected agents, live subscriptions, the store, the relay,
//! counters. Cheap to clone.

use crate::agent_conn::{AgentConn, AgentDirectory, ConnectedAgents, ServeCalls};
use crate::alerts::{AlertState, Severity, Source};
use crate::cluster::{Cluster, ClusterNote};
use crate::config::HubConfig;
use crate::relay::Relay;
use crate::store::{AgentRecord, AlertChange, HubStore};
use crate::tokens;
use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tether_host::sync::lock;
use tether_mux::outbound::Outbound;
use tether_transport::auth::{Authenticator, ClientCredential};
use tokio_util::sync::CancellationToken;

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub registrations: AtomicU64,
    pub auth_failures: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub alerts_received: AtomicU64,
    pub alerts_stored: AtomicU64,
    pub alerts_duplicate: AtomicU64,
    /// Alert events refused for good (undecodable, no key, alone in an oversized frame).
    pub alerts_rejected: AtomicU64,
    /// Alert events stored with a field replaced (an unbelievable time, a description cut).
    pub alerts_sanitized: AtomicU64,
    /// Link frames refused (over the size limit, or undecodable), each answered under v2.
    pub frames_refused: AtomicU64,
    pub sessions_created: AtomicU64,
    pub operator_evictions: AtomicU64,
    /// External alerts (Alertmanager, Grafana) received in notifications that were valid.
    pub external_received: AtomicU64,
    pub external_stored: AtomicU64,
    /// External alerts delivered again and stored once.
    pub external_duplicate: AtomicU64,
    /// Notifications refused (malformed, too large).
    pub intake_rejected: AtomicU64,
    /// Notifications without a valid alert source token.
    pub intake_auth_failures: AtomicU64,
    /// Automatic diagnoses started, and passed over (`diagnosis_skipped`).
    pub diagnoses_started: AtomicU64,
    pub diagnoses_skipped: AtomicU64,
    /// Tokens the automatic diagnoses' turns reported.
    pub diagnosis_tokens: AtomicU64,
    /// Per notifier: (name, kind, counters).
    pub notifiers: Mutex<Vec<(String, &'static str, Arc<NotifierCounters>)>>,
}

/// What one notifier did.
#[derive(Default)]
pub struct NotifierCounters {
    /// Messages delivered (a 2xx answer).
    pub sent: AtomicU64,
    /// Messages given up on (a refusal, or every attempt failed).
    pub failed: AtomicU64,
    /// Attempts that failed and were tried again.
    pub retried: AtomicU64,
    /// Messages dropped because the notifier's queue was full.
    pub dropped: AtomicU64,
}

/// Something subscribers of `agents.subscribe` / `alerts.subscribe` want to hear.
pub enum HubEvent {
    Agent(AgentRecord),
    /// An alert changed: `{"event": "alert", "change", "previous_state", "alert"}`.
    Alert(AlertChange),
}

/// What an `alerts.subscribe` asked for.
#[derive(Clone, Debug, Default)]
pub struct AlertSubFilter {
    /// Matches an alert in this state, or leaving it (a firing-only view hears of the
    /// resolution that removes an alert from it).
    pub state: Option<AlertState>,
    pub severity: Option<Severity>,
    pub agent_id: Option<String>,
    pub source: Option<Source>,
    pub label: Option<(String, String)>,
}

impl AlertSubFilter {
    pub fn matches(&self, c: &AlertChange) -> bool {
        let a = &c.alert;
        self.state
            .is_none_or(|s| a.state == s || c.previous_state == Some(s))
            && self.severity.is_none_or(|s| a.severity == s)
            && self.source.is_none_or(|s| a.source == s)
            && self
                .agent_id
                .as_ref()
                .is_none_or(|id| a.agent_id.as_ref() == Some(id))
            && self
                .label
                .as_ref()
                .is_none_or(|(k, v)| a.labels.get(k) == Some(v))
    }
}

enum SubKind {
    Agents,
    Alerts(AlertSubFilter),
}

struct Sub {
    conn_id: u64,
    kind: SubKind,
    outbound: Outbound,
}

pub(crate) struct Inner {
    config: HubConfig,
    store: HubStore,
    agents: Arc<ConnectedAgents>,
    subs: Mutex<Vec<Sub>>,
    relay: Relay,
    metrics: Arc<Metrics>,
    operators: Authenticator,
    shutdown: CancellationToken,
    /// Fires when connections should close (after shutdown's drain).
    closing: CancellationToken,
    /// Every alert change, for the hub's own consumers (see [`Hub::alert_changes`]).
    alert_changes: tokio::sync::broadcast::Sender<Arc<AlertChange>>,
    /// The address actually bound (set by [`crate::start`]).
    local_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// The other replicas sharing the store (PostgreSQL), once joined.
    cluster: std::sync::OnceLock<Cluster>,
    /// Agents other replicas hold (agent → replica), as of the last look (every
    /// [`HELD_REFRESH`], and each `Held` note): what "connected" means fleet-wide.
    held_elsewhere: Mutex<std::collections::HashMap<String, String>>,
}

/// What agents are told when the hub stops: come back after this long.
pub(crate) const SHUTDOWN_RETRY_SEC: u64 = 5;
pub(crate) const SHUTDOWN_REASON: &str = "the hub is shutting down";

/// How often a replica re-reads which agents the others hold.
const HELD_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// How many alert changes an in-process consumer may fall behind before it misses some
/// (it then gets `RecvError::Lagged` and should re-read the store).
pub const ALERT_CHANGES_BACKLOG: usize = 4096;

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    pub fn new(config: HubConfig, store: HubStore) -> Result<Hub, String> {
        let operators = Authenticator::new(
            config
                .operators
                .iter()
                .map(|o| ClientCredential {
                    name: o.name.clone(),
                    class: o.class,
                    token: o.token.clone(),
                })
                .collect(),
        )
        .map_err(|e| e.replace("clients[", "operators["))?;
        config.validate()?;
        let metrics = Arc::new(Metrics::default());
        let agents = Arc::new(ConnectedAgents::default());
        let relay = Relay::new(
            store.clone(),
            metrics.clone(),
            config.operator_queue,
            agents.clone(),
            config.clock.clone(),
        );
        let hub = Hub {
            inner: Arc::new(Inner {
                config,
                store,
                agents,
                subs: Mutex::new(Vec::new()),
                relay,
                metrics,
                operators,
                shutdown: CancellationToken::new(),
                closing: CancellationToken::new(),
                alert_changes: tokio::sync::broadcast::channel(ALERT_CHANGES_BACKLOG).0,
                local_addr: std::sync::OnceLock::new(),
                cluster: std::sync::OnceLock::new(),
                held_elsewhere: Mutex::new(std::collections::HashMap::new()),
            }),
        };
        // Weak: the relay lives inside the hub.
        let weak = Arc::downgrade(&hub.inner);
        hub.relay().set_publisher(Box::new(move |change| {
            if let Some(inner) = weak.upgrade() {
                Hub { inner }.publish(HubEvent::Alert(change));
            }
        }));
        Ok(hub)
    }

    /// Joins the other replicas on the same database: this one's agents are recorded as held
    /// here and served to the others' calls; agents held elsewhere are reached there; the
    /// sessions, alerts and agents the others change reach this one's operators; a lost
    /// lease drops this one's agents (they reconnect to a replica that has one).
    pub fn join_cluster(&self, cluster: Cluster, stop: CancellationToken) {
        if self.inner.cluster.set(cluster.clone()).is_err() {
            return;
        }
        self.inner
            .agents
            .join(cluster.clone(), self.inner.store.clone());
        cluster.set_handler(Arc::new(ServeCalls(Arc::downgrade(&self.inner.agents))));
        self.inner.relay.set_cluster(cluster.clone());
        let hub = self.clone();
        let mut notes = cluster.notes();
        let listening = stop.clone();
        tokio::spawn(async move {
            loop {
                let note = tokio::select! {
                    _ = listening.cancelled() => return,
                    n = notes.recv() => n,
                };
                match note {
                    Ok(note) => hub.on_cluster_note(&note).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "cluster: notes missed; catching up from the store"
                        );
                        hub.on_cluster_note(&ClusterNote::Resync).await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let hub = self.clone();
        let refreshing = stop.clone();
        tokio::spawn(async move {
            loop {
                if let Some(cluster) = hub.cluster() {
                    match cluster.held_agents().await {
                        Ok(mut held) => {
                            held.retain(|_, r| r != cluster.replica_id());
                            *lock(&hub.inner.held_elsewhere) = held;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster: cannot read which agents the others hold")
                        }
                    }
                }
                tokio::select! {
                    _ = refreshing.cancelled() => return,
                    _ = tokio::time::sleep(HELD_REFRESH) => {}
                }
            }
        });
        let hub = self.clone();
        let mut lease = cluster.lease_ok();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = lease.changed() => if changed.is_err() { return },
                }
                if *lease.borrow_and_update() {
                    continue;
                }
                // The others count this replica's agents as gone: let them go, so they
                // reconnect to a replica that can hold them.
                tracing::error!("cluster: this replica's lease lapsed; dropping its agents");
                for a in hub.inner.agents.all() {
                    a.disconnect("this hub replica lost its lease on the database", 1)
                        .await;
                }
            }
        });
    }

    /// The cluster this replica joined (`None`: a single hub on SQLite).
    pub fn cluster(&self) -> Option<&Cluster> {
        self.inner.cluster.get()
    }

    /// What another replica did, made visible here.
    async fn on_cluster_note(&self, note: &ClusterNote) {
        match note {
            ClusterNote::Events { session_id, seq } => {
                self.inner.relay.follow(session_id, *seq).await;
            }
            ClusterNote::Resync => self.inner.relay.follow_all().await,
            ClusterNote::Alert {
                alert_id,
                change,
                previous,
            } => {
                if !self.has_subs(|k| matches!(k, SubKind::Alerts(_))) {
                    return;
                }
                let (id, now) = (*alert_id, self.now_ms());
                if let Ok(Some(alert)) = self.inner.store.run(move |s| s.get_alert(id, now)).await {
                    self.to_subscribers(&HubEvent::Alert(AlertChange {
                        alert,
                        change: *change,
                        previous_state: *previous,
                    }));
                }
            }
            ClusterNote::Agent { agent_id } => {
                if !self.has_subs(|k| matches!(k, SubKind::Agents)) {
                    return;
                }
                let id = agent_id.clone();
                if let Ok(Some(record)) = self.inner.store.run(move |s| s.get_agent(&id)).await {
                    self.to_subscribers(&HubEvent::Agent(record));
                }
            }
            ClusterNote::Held { agent_id, replica } => {
                lock(&self.inner.held_elsewhere).insert(agent_id.clone(), replica.clone());
                if let Some(conn) = self.inner.agents.agent(agent_id) {
                    tracing::info!(agent = %agent_id, replica = %replica, "the agent connected to another replica; closing its connection here");
                    conn.disconnect("the agent connected to another hub replica", 1)
                        .await;
                }
            }
            ClusterNote::Call { .. } | ClusterNote::Reply { .. } => {}
        }
    }

    fn has_subs(&self, kind: impl Fn(&SubKind) -> bool) -> bool {
        lock(&self.inner.subs).iter().any(|s| kind(&s.kind))
    }

    /// Records the address the hub listens on (for [`Hub::console_url`]).
    pub fn set_local_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.inner.local_addr.set(addr);
    }

    /// The console's address for links in notifications: `console_url` from the config,
    /// else the listening address (an unspecified IP such as `0.0.0.0` replaced by the
    /// host's name). Always ends with `/`.
    pub fn console_url(&self) -> String {
        if let Some(u) = &self.inner.config.console_url {
            return if u.ends_with('/') {
                u.clone()
            } else {
                format!("{u}/")
            };
        }
        let addr = self
            .inner
            .local_addr
            .get()
            .copied()
            .unwrap_or(self.inner.config.listen);
        let scheme = if self.inner.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let host = if addr.ip().is_unspecified() {
            tether_host::host::hostname()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        format!("{scheme}://{host}:{}/", addr.port())
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Unix ms by the hub's clock ([`crate::config::Clock`]).
    pub fn now_ms(&self) -> i64 {
        self.inner.config.clock.now_ms()
    }

    pub fn store(&self) -> &HubStore {
        &self.inner.store
    }

    pub fn relay(&self) -> &Relay {
        &self.inner.relay
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn metrics_arc(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    pub fn operators(&self) -> &Authenticator {
        &self.inner.operators
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Fires when open connections should flush and close.
    pub fn closing(&self) -> CancellationToken {
        self.inner.closing.clone()
    }

    /// Validates an agent token. `Ok(Some(id))`: a per-agent credential; `Ok(None)`: the
    /// shared enrollment token.
    pub async fn check_agent_token(
        &self,
        token: &str,
        agent_id: &str,
    ) -> Result<Option<String>, (StatusCode, String)> {
        let hash = tokens::hash(token);
        let found = self
            .store()
            .run(move |s| s.token_by_hash(&hash))
            .await
            .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        if let Some(t) = found {
            // A credential belongs to the first agent that registered with it: another
            // agent id presenting it is someone acting as someone else.
            if let Some(bound) = &t.agent_id
                && bound != agent_id
            {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("this token belongs to agent {bound}"),
                ));
            }
            return Ok(Some(t.id));
        }
        if let Some(shared) = &self.config().enrollment_token
            && tokens::same(shared, token)
        {
            return Ok(None);
        }
        Err((StatusCode::UNAUTHORIZED, "invalid agent token".into()))
    }

    /// Adds a connected agent; returns the connection it replaces.
    pub(crate) fn register_agent(&self, conn: Arc<AgentConn>) -> Option<Arc<AgentConn>> {
        self.inner.agents.insert(conn)
    }

    /// Removes an agent's connection if it is still `conn_id`; true when it was.
    pub(crate) fn unregister_agent(&self, agent_id: &str, conn_id: u64) -> bool {
        self.inner.agents.remove(agent_id, conn_id)
    }

    pub fn agent(&self, agent_id: &str) -> Option<Arc<AgentConn>> {
        self.inner.agents.agent(agent_id)
    }

    /// Connected agents that registered with this credential.
    pub fn agents_with_token(&self, token_id: &str) -> Vec<Arc<AgentConn>> {
        self.inner
            .agents
            .all()
            .into_iter()
            .filter(|a| a.token_id.as_deref() == Some(token_id))
            .collect()
    }

    /// Connected here, or (in a cluster) held by another replica as of the last look.
    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.agent(agent_id).is_some() || lock(&self.inner.held_elsewhere).contains_key(agent_id)
    }

    /// The sum of `dropped_alerts` connected agents last reported.
    pub fn agents_dropped_alerts(&self) -> u64 {
        self.inner
            .agents
            .all()
            .iter()
            .map(|a| a.dropped_alerts.load(Ordering::Relaxed))
            .sum()
    }

    pub fn connected_agents(&self) -> usize {
        self.inner.agents.len()
    }

    /// Subscribes an operator connection to `agent` frames.
    pub fn subscribe_agents(&self, conn_id: u64, outbound: Outbound) {
        self.add_sub(conn_id, SubKind::Agents, outbound);
    }

    /// Subscribes an operator connection to `alert` frames matching `filter`.
    pub fn subscribe_alerts(&self, conn_id: u64, filter: AlertSubFilter, outbound: Outbound) {
        self.add_sub(conn_id, SubKind::Alerts(filter), outbound);
    }

    fn add_sub(&self, conn_id: u64, kind: SubKind, outbound: Outbound) {
        {
            let mut subs = lock(&self.inner.subs);
            let same_kind = |s: &Sub| {
                s.conn_id == conn_id
                    && matches!(
                        (&s.kind, &kind),
                        (SubKind::Agents, SubKind::Agents)
                            | (SubKind::Alerts(_), SubKind::Alerts(_))
                    )
            };
            subs.retain(|s| !same_kind(s));
            subs.push(Sub {
                conn_id,
                kind,
                outbound,
            });
        }
    }

    pub fn unsubscribe(&self, conn_id: u64) {
        {
            let mut subs = lock(&self.inner.subs);
            subs.retain(|s| s.conn_id != conn_id);
        }
    }

    /// Every alert change from now on, as [`Hub::publish`] announces them (created, fired,
    /// resolved, updated, acked, silenced, unsilenced, diagnosed, skipped): the hook for the
    /// hub's own consumers (automatic diagnosis, notifications). Each carries the alert as it
    /// was just stored; changes of one sender (an agent's link, one notification) come in
    /// the order they were stored, different senders' may interleave. A consumer that falls
    /// [`ALERT_CHANGES_BACKLOG`] behind gets `Lagged`, misses those, and should re-read the
    /// store.
    pub fn alert_changes(&self) -> tokio::sync::broadcast::Receiver<Arc<AlertChange>> {
        self.inner.alert_changes.subscribe()
    }

    /// Pushes an `agent` or `alert` control frame to every matching subscriber; a subscriber
    /// whose queue is full is evicted (its connection closes), never waited for. Alert
    /// changes also go to [`Hub::alert_changes`].
    /// In a cluster, the other replicas are told too (their subscribers hear it; their
    /// in-process consumers do not: the diagnosis and notifications of a change run on the
    /// replica that made it).
    pub fn publish(&self, event: HubEvent) {
        if let HubEvent::Alert(c) = &event
            && self.inner.alert_changes.receiver_count() > 0
        {
            // No receiver is not an error: nothing in-process listens yet.
            let _ = self.inner.alert_changes.send(Arc::new(c.clone()));
        }
        if let Some(cluster) = self.inner.cluster.get() {
            cluster.announce(match &event {
                HubEvent::Agent(a) => ClusterNote::Agent {
                    agent_id: a.agent_id.clone(),
                },
                HubEvent::Alert(c) => ClusterNote::Alert {
                    alert_id: c.alert.alert_id,
                    change: c.change,
                    previous: c.previous_state,
                },
            });
        }
        self.to_subscribers(&event);
    }

    /// Pushes an `agent` or `alert` control frame to every matching subscriber here.
    fn to_subscribers(&self, event: &HubEvent) {
        let wants = |s: &Sub| match (&s.kind, event) {
            (SubKind::Agents, HubEvent::Agent(_)) => true,
            (SubKind::Alerts(f), HubEvent::Alert(a)) => f.matches(a),
            _ => false,
        };
        let mut subs = lock(&self.inner.subs);
        // Encoded only when someone wants it: an alert storm with no console open costs no
        // JSON.
        if !subs.iter().any(wants) {
            return;
        }
        let frame = match event {
            HubEvent::Agent(a) => json!({"event": "agent", "agent": a}),
            HubEvent::Alert(c) => json!({
                "event": "alert",
                "change": c.change,
                "previous_state": c.previous_state,
                "alert": c.alert,
            }),
        };
        let bytes = Bytes::from(frame.to_string());
        subs.retain(|s| {
            if !wants(s) {
                return true;
            }
            let ok = s.outbound.push_frame(bytes.clone());
            if !ok && s.outbound.is_evicted() {
                self.inner
                    .metrics
                    .operator_evictions
                    .fetch_add(1, Ordering::Relaxed);
            }
            ok
        });
    }

    /// Asks every agent to come back later, stops accepting, and (after the drain) closes
    /// operator connections.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let agents = self.inner.agents.all();
        for a in agents {
            a.disconnect(SHUTDOWN_REASON, SHUTDOWN_RETRY_SEC).await;
        }
        self.inner.closing.cancel();
    }
}
