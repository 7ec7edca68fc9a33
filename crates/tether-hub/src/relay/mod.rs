//! Remote sessions at the hub. Each hub session mirrors one session on an agent:
//!
//! * **Version 2** agents send `session_event` frames carrying the agent's own client-protocol
//!   events, `seq` included. The hub stores each once (by `seq`) and sends the same bytes to
//!   every operator attached. Ordering and permission arbitration happened in the agent's
//!   multiplexer; the hub forwards each operator's op with the operator's name and class, and
//!   replies with the agent's verdict (its `ack` carries the client-protocol reason).
//! * **Version 1** agents (stock catpaw) send `session_output` frames; the hub turns them into
//!   client-protocol events with its own `seq` (text deltas, tool calls and results, turn ends).
//!
//! Either way an operator sees one session with one history, replayable from the hub's store.

mod notes;
mod ops;
mod replay;
mod shadow;
mod v1;

pub use notes::{Activity, SESSION_NOTES_BACKLOG, SessionNote};
pub use replay::StoreReplay;
pub use shadow::HubSession;

use crate::agent_conn::{AgentConn, AgentDirectory, AgentError};
use crate::cluster::{Cluster, ClusterNote};
use crate::config::Clock;
use crate::hub::Metrics;
use crate::store::HubStore;
use bytes::Bytes;
use ops::user_attach;
use serde_json::Value;
use shadow::Shadow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tether_host::sync::lock;
use tether_mux::outbound::Outbound;
use tether_proto::link::{DiagnoseReport, LinkMessage, SessionAttach, SessionEvent, SessionNotice};
use tether_proto::{
    Class, ClientInfo, ErrorBody, Event, EventBody, Mode, NoticeLevel, Policy, Reason, Seq,
    SessionId, SessionState, StopReason,
};
use tokio::sync::Mutex;

/// Longest the hub waits for an agent to answer an op.
const AGENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Events a session may hold while the store refuses them; beyond, new ones are dropped.
const MAX_UNSTORED: usize = 10_000;

/// "Up to the last one" for [`crate::store::Store::read_events`].
const ALL_EVENTS: u64 = i64::MAX as u64;
/// How often a session's held events are offered to the store again.
const RETRY_COMMIT: Duration = Duration::from_secs(1);

/// Why a session closes when its agent comes back without it.
pub const AGENT_LOST_IT: &str = "the agent no longer has this session";

/// All hub sessions. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<RelayInner>,
}

struct RelayInner {
    store: HubStore,
    metrics: Arc<Metrics>,
    queue: usize,
    sessions: std::sync::Mutex<HashMap<String, Arc<HubSession>>>,
    replay: Arc<StoreReplay>,
    /// Session activity for the hub's own consumers (see [`Relay::notes`]).
    notes: tokio::sync::broadcast::Sender<Arc<SessionNote>>,
    /// Announces an alert change (the hub's `publish`), for reports stored here.
    publisher: std::sync::OnceLock<AlertPublisher>,
    /// Where the sessions' agents are found (the relay never sees the agent endpoint).
    agents: Arc<dyn AgentDirectory>,
    /// The hub's clock (alert links).
    clock: Clock,
    /// Longest the relay waits for an agent to answer an op, in ms.
    agent_timeout_ms: AtomicU64,
    /// The other replicas (PostgreSQL store): told of every commit here, and the source of
    /// the events their agents' sessions commit ([`Relay::follow`]).
    cluster: std::sync::OnceLock<Cluster>,
}

/// How the relay announces an alert change it caused (set by the hub).
pub type AlertPublisher = Box<dyn Fn(crate::store::AlertChange) + Send + Sync>;

fn err(reason: Reason, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(reason, message)
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// An op that did not reach its agent, or whose answer did not come back, as the operator
/// sees it; `agent_error` names which, for clients that switch on it. Gone: `overloaded` (try
/// again; the session resumes when the agent is back). Slow: `internal` (the agent may still
/// carry the op out, so it is not safe to simply send it again).
fn agent_error(agent_id: &str, e: AgentError) -> ErrorBody {
    let (reason, kind, message) = match &e {
        AgentError::Disconnected => (
            Reason::Overloaded,
            "disconnected",
            format!(
                "agent {agent_id} disconnected before answering; the session resumes when it is back"
            ),
        ),
        AgentError::Timeout(_) => (
            Reason::Internal,
            "timeout",
            format!("agent {agent_id}: {e}; it may still carry the request out"),
        ),
        AgentError::Busy => (
            Reason::Overloaded,
            "busy",
            format!("agent {agent_id} has too many frames queued; try again"),
        ),
    };
    let mut body = err(reason, message);
    body.details.insert("agent_error".into(), Value::from(kind));
    body
}

/// The agent's refusal of an op, as the client-protocol error it stands for.
fn ack_error(ack: &tether_proto::link::Ack) -> ErrorBody {
    let reason = ack
        .reason
        .as_deref()
        .and_then(Reason::parse)
        .unwrap_or(Reason::Internal);
    let mut body = err(
        reason,
        ack.error
            .clone()
            .unwrap_or_else(|| "the agent refused".into()),
    );
    if let Some(d) = &ack.details {
        body.details = d.clone();
    }
    body
}

impl Relay {
    pub fn new(
        store: HubStore,
        metrics: Arc<Metrics>,
        queue: usize,
        agents: Arc<dyn AgentDirectory>,
        clock: Clock,
    ) -> Relay {
        Relay {
            inner: Arc::new(RelayInner {
                replay: Arc::new(StoreReplay {
                    store: store.clone(),
                }),
                store,
                metrics,
                queue,
                sessions: std::sync::Mutex::new(HashMap::new()),
                notes: tokio::sync::broadcast::channel(SESSION_NOTES_BACKLOG).0,
                publisher: std::sync::OnceLock::new(),
                agents,
                clock,
                agent_timeout_ms: AtomicU64::new(AGENT_TIMEOUT.as_millis() as u64),
                cluster: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Joins the relay to the other replicas (once, by the hub).
    pub fn set_cluster(&self, cluster: Cluster) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// Sets how alert changes the relay causes are announced (once, by the hub).
    pub fn set_publisher(&self, publisher: AlertPublisher) {
        let _ = self.inner.publisher.set(publisher);
    }

    /// Sets how long the relay waits for an agent to answer an op (20 s unless set; tests
    /// and tools shorten it).
    pub fn set_agent_timeout(&self, timeout: Duration) {
        self.inner
            .agent_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    fn agent_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.agent_timeout_ms.load(Ordering::Relaxed))
    }

    fn announce(&self, change: crate::store::AlertChange) {
        if let Some(p) = self.inner.publisher.get() {
            p(change);
        }
    }

    /// Every hub session's permission prompts, their answers, turn ends and closes from now
    /// on, in the order each session stored them. A consumer that falls
    /// [`SESSION_NOTES_BACKLOG`] behind gets `Lagged` and misses those.
    pub fn notes(&self) -> tokio::sync::broadcast::Receiver<Arc<SessionNote>> {
        self.inner.notes.subscribe()
    }

    /// A session's state now (`None`: no such session).
    pub async fn session_state(&self, id: &str) -> Option<SessionState> {
        let session = self.find(id).await?;
        let state = session.shadow.lock().await.state;
        Some(state)
    }

    /// Tells a session's users something from outside any turn, as a `notice` event: the
    /// hub publishes it itself in a version-1 session; a version-2 agent is sent
    /// `session_notice` and publishes it in its session (an agent that does not know the
    /// message ignores it). Nothing happens for a closed session or an agent away.
    pub async fn notice(&self, session_id: &str, level: NoticeLevel, message: &str) {
        let Some(session) = self.find(session_id).await else {
            return;
        };
        if session.proto < 2 {
            let mut shadow = session.shadow.lock().await;
            if shadow.state != SessionState::Closed {
                self.publish(
                    &session,
                    &mut shadow,
                    EventBody::Notice {
                        level,
                        message: message.to_owned(),
                    },
                )
                .await;
            }
            return;
        }
        if let Some(agent) = self.inner.agents.find(&session.agent_id).await {
            let level = match level {
                NoticeLevel::Info => "info",
                NoticeLevel::Warning => "warning",
                NoticeLevel::Error => "error",
            };
            let _ = agent
                .send(
                    LinkMessage::SessionNotice(SessionNotice {
                        session_id: session.id.clone(),
                        level: level.to_owned(),
                        message: message.to_owned(),
                    }),
                    self.agent_timeout(),
                )
                .await;
        }
    }

    /// A new outbound queue for an operator, replaying from the hub's store.
    pub fn operator_queue(&self) -> (Outbound, tether_mux::outbound::OutboundReceiver) {
        tether_mux::outbound::channel(self.inner.queue, self.inner.replay.clone())
    }

    /// Sessions open now (a session busy being updated counts as open).
    pub fn active(&self) -> usize {
        lock(&self.inner.sessions)
            .values()
            .filter(|s| {
                s.shadow
                    .try_lock()
                    .map_or(true, |sh| sh.state != SessionState::Closed)
            })
            .count()
    }

    /// Sessions held in memory (open ones, and closed ones until their last user lets go);
    /// a closed session is read back from the store when asked for.
    pub fn in_memory(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    fn get(&self, id: &str) -> Option<Arc<HubSession>> {
        lock(&self.inner.sessions).get(id).cloned()
    }

    /// A session from memory, or read back from the store. A session that was open when the
    /// hub stopped is open again, its view rebuilt from its stored events: its agent resumes
    /// it when it registers ([`Relay::agent_back`]).
    async fn find(&self, id: &str) -> Option<Arc<HubSession>> {
        if let Some(s) = self.get(id) {
            return Some(s);
        }
        let key = id.to_owned();
        let (rec, hostname, events) = self
            .inner
            .store
            .run(move |s| {
                let Some(rec) = s.get_session(&key)? else {
                    return Ok(None);
                };
                let hostname = s
                    .get_agent(&rec.agent_id)?
                    .map(|a| a.hostname)
                    .unwrap_or_default();
                // Every stored event, not only up to the record's `last_seq`: that one moves
                // with the session's state, and another replica (or this one before it
                // stopped) may have stored events since.
                let events = if rec.state == SessionState::Closed.as_str() {
                    Vec::new()
                } else {
                    s.read_events(&key, 1, ALL_EVENTS, ALL_EVENTS as usize)?
                };
                Ok(Some((rec, hostname, events)))
            })
            .await
            .ok()
            .flatten()?;
        let state = SessionState::parse(&rec.state).unwrap_or(SessionState::Closed);
        let mut shadow = Shadow::new(state, rec.last_seq);
        for (seq, frame) in events {
            if let Ok(event) = serde_json::from_str::<Event>(&frame) {
                shadow.apply(&event.body);
            }
            shadow.last_seq = shadow.last_seq.max(seq);
        }
        // Nobody is attached to a session just read back (its agent re-attaches its users).
        shadow.clients.clear();
        let session = Arc::new(HubSession {
            id: rec.session_id.clone(),
            agent_id: rec.agent_id.clone(),
            hostname,
            mode: Mode::parse(&rec.mode).unwrap_or(Mode::Chat),
            proto: rec.proto,
            title: rec.title.clone(),
            policy: Policy::parse(&rec.policy).unwrap_or(Policy::Human),
            created_at: rec.created_at.clone(),
            alert_id: None,
            alert_key: rec
                .params
                .get("alert_key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            conn_id: 0,
            created_by: ClientInfo {
                client_id: tether_proto::ClientId(rec.created_by.clone()),
                class: Class::Human,
                name: rec.created_by.clone(),
            },
            shadow: Mutex::new(shadow),
        });
        if state == SessionState::Closed {
            // Read-only from here on: served to whoever asked, not kept.
            return Some(session);
        }
        let mut map = lock(&self.inner.sessions);
        Some(map.entry(id.to_owned()).or_insert(session).clone())
    }

    /// At start-up: the version-1 sessions that were open when the hub stopped are over (a
    /// catpaw agent ends its sessions with the connection); version-2 ones wait for their
    /// agent to resume them.
    pub async fn recover(&self) {
        let open = self
            .inner
            .store
            .run(|s| s.list_sessions(None))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.state != SessionState::Closed.as_str() && r.proto < 2);
        for rec in open {
            if let Some(session) = self.find(&rec.session_id).await {
                let mut shadow = session.shadow.lock().await;
                self.close_locally(
                    &session,
                    &mut shadow,
                    StopReason::Error,
                    &format!("{AGENT_LOST_IT}: the hub restarted, and a version-1 agent ends its sessions with the connection"),
                )
                .await;
            }
        }
    }

    /// Accepts an event into the session (caller holds the shadow, the session's ordering
    /// point): applied to the view now, committed to the store, and only once committed sent
    /// to the attached operators and the hub's own consumers. A failed commit keeps it (and
    /// whatever follows) for the next flush; see [`Relay::flush`].
    async fn deliver(
        &self,
        session: &HubSession,
        shadow: &mut Shadow,
        seq: Seq,
        frame: String,
        body: EventBody,
    ) {
        if shadow.unstored.len() >= MAX_UNSTORED {
            // The store has been away for a long while: the view moves on, the event is lost
            // (said in the log; the session's history has a hole where it was).
            tracing::error!(session = %session.id, seq, "cannot store a session event and too many wait: dropped");
            shadow.apply(&body);
            return;
        }
        shadow.apply(&body);
        shadow.unstored.push(shadow::Unstored { seq, frame, body });
        self.flush(session, shadow).await;
    }

    /// Commits the session's waiting events in one batch, then sends them to the attached
    /// operators, in order. On failure nothing is sent: the operators are told once
    /// (`log_unavailable`) and a retry task flushes until the store takes them
    /// (`log_restored` follows). True when nothing waits any more.
    async fn flush(&self, session: &HubSession, shadow: &mut Shadow) -> bool {
        if shadow.unstored.is_empty() {
            return true;
        }
        let id = session.id.clone();
        let batch: Vec<(u64, String)> = shadow
            .unstored
            .iter()
            .map(|u| (u.seq, u.frame.clone()))
            .collect();
        let stored = self
            .inner
            .store
            .run(move |s| s.append_events(&id, &batch))
            .await;
        if let Err(e) = stored {
            tracing::error!(session = %session.id, error = %e, waiting = shadow.unstored.len(), "cannot store session events");
            if shadow.degraded.is_none() {
                let message = format!("the hub cannot store this session's events: {e}");
                let frame = tether_proto::Control::LogUnavailable {
                    session_id: SessionId(session.id.clone()),
                    message: message.clone(),
                }
                .encode();
                shadow.broadcast(&Bytes::from(frame), &self.inner.metrics);
                shadow.degraded = Some(message);
                self.spawn_retry(session.id.clone());
            }
            return false;
        }
        if let Some(cluster) = self.inner.cluster.get()
            && let Some(last) = shadow.unstored.last()
        {
            cluster.announce(ClusterNote::Events {
                session_id: session.id.clone(),
                seq: last.seq,
            });
        }
        let mut state_changed = false;
        let mut closed = false;
        let mut gone = Vec::new();
        for u in std::mem::take(&mut shadow.unstored) {
            shadow.last_seq = shadow.last_seq.max(u.seq);
            state_changed |= matches!(
                u.body,
                EventBody::SessionState { .. } | EventBody::SessionClosed { .. }
            );
            closed |= matches!(u.body, EventBody::SessionClosed { .. });
            if let Some(activity) = Activity::of(&u.body)
                && self.inner.notes.receiver_count() > 0
            {
                let _ = self.inner.notes.send(Arc::new(SessionNote {
                    session_id: session.id.clone(),
                    agent_id: session.agent_id.clone(),
                    hostname: session.hostname.clone(),
                    mode: session.mode,
                    created_by: session.created_by.name.clone(),
                    alert_id: session.alert_id,
                    activity,
                }));
            }
            gone.extend(shadow.broadcast(&Bytes::from(u.frame), &self.inner.metrics));
        }
        if shadow.degraded.take().is_some() {
            let frame = tether_proto::Control::LogRestored {
                session_id: SessionId(session.id.clone()),
            }
            .encode();
            shadow.broadcast(&Bytes::from(frame), &self.inner.metrics);
        }
        if state_changed {
            let id = session.id.clone();
            let state = shadow.state.as_str().to_owned();
            let last = shadow.last_seq;
            if let Err(e) = self
                .inner
                .store
                .run(move |s| s.update_session(&id, &state, last))
                .await
            {
                tracing::error!(session = %session.id, error = %e, "cannot store a session's state");
            }
        }
        for (_, client) in gone {
            tracing::info!(session = %session.id, operator = %client.name, "operator evicted (slow consumer)");
        }
        if closed {
            // Nothing follows `session_closed`: its operators are done with it, and it leaves
            // memory (read back from the store if anyone asks for it again).
            shadow.attached.clear();
            self.forget(session);
        }
        true
    }

    /// Another replica committed `session_id`'s events up to `seq` (its agent is held there):
    /// the ones this replica's view lacks are read from the store and sent to the operators
    /// attached here, in order, as if committed here. Only sessions in memory are followed:
    /// one read back later is read whole.
    pub async fn follow(&self, session_id: &str, seq: Seq) {
        let Some(session) = self.get(session_id) else {
            return;
        };
        let mut shadow = session.shadow.lock().await;
        if seq <= shadow.last_seq {
            return;
        }
        self.catch_up(&session, &mut shadow, seq).await;
    }

    /// After notes may have been missed: every session in memory catches up with the store.
    pub async fn follow_all(&self) {
        let sessions: Vec<Arc<HubSession>> = lock(&self.inner.sessions).values().cloned().collect();
        for session in sessions {
            let mut shadow = session.shadow.lock().await;
            self.catch_up(&session, &mut shadow, ALL_EVENTS).await;
        }
    }

    /// Reads the events after the view's last one (up to `upto`) and sends them on. The
    /// caller holds the session's ordering lock.
    async fn catch_up(&self, session: &HubSession, shadow: &mut Shadow, upto: Seq) {
        if !shadow.unstored.is_empty() {
            return; // this replica is committing the session's events itself
        }
        let id = session.id.clone();
        let from = shadow.last_seq + 1;
        let events = match self
            .inner
            .store
            .run(move |s| s.read_events(&id, from, upto, ALL_EVENTS as usize))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(session = %session.id, error = %e, "cannot read another replica's session events");
                return;
            }
        };
        let mut closed = false;
        let mut gone = Vec::new();
        for (seq, frame) in events {
            if seq <= shadow.last_seq {
                continue;
            }
            if let Ok(event) = serde_json::from_str::<Event>(&frame) {
                closed |= matches!(event.body, EventBody::SessionClosed { .. });
                shadow.apply(&event.body);
            }
            shadow.last_seq = seq;
            gone.extend(shadow.broadcast(&Bytes::from(frame), &self.inner.metrics));
        }
        for (_, client) in gone {
            tracing::info!(session = %session.id, operator = %client.name, "operator evicted (slow consumer)");
        }
        if closed {
            shadow.attached.clear();
            self.forget(session);
        }
    }

    /// Takes a session out of memory (if it is still this one).
    fn forget(&self, session: &HubSession) {
        let mut map = lock(&self.inner.sessions);
        if map
            .get(&session.id)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), session))
        {
            map.remove(&session.id);
        }
    }

    /// Flushes a session's waiting events every [`RETRY_COMMIT`] until the store takes them
    /// (or the session is gone from memory).
    fn spawn_retry(&self, session_id: String) {
        let relay = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_COMMIT).await;
                let Some(session) = relay.get(&session_id) else {
                    return;
                };
                let mut shadow = session.shadow.lock().await;
                if relay.flush(&session, &mut shadow).await {
                    return;
                }
            }
        });
    }

    /// Version 1: the hub assigns the next seq.
    async fn publish(&self, session: &HubSession, shadow: &mut Shadow, body: EventBody) {
        let seq = shadow.highest_seq() + 1;
        let event = Event {
            session_id: SessionId(session.id.clone()),
            seq,
            ts: now(),
            body,
        };
        let frame = event.encode();
        self.deliver(session, shadow, seq, frame, event.body).await;
    }

    /// Ends a session at the hub: the turn ends (`stop`, with `reason` as its error unless
    /// cancelled), then the session, closed for `reason`.
    async fn close_locally(
        &self,
        session: &HubSession,
        shadow: &mut Shadow,
        stop: StopReason,
        reason: &str,
    ) {
        if shadow.state == SessionState::Closed {
            return;
        }
        if let Some(turn) = shadow.turn.clone() {
            self.publish(
                session,
                shadow,
                EventBody::TurnEnded {
                    turn_id: turn.turn_id,
                    stop,
                    error: (stop != StopReason::Cancelled).then(|| reason.to_owned()),
                    usage: None,
                },
            )
            .await;
        }
        self.publish(
            session,
            shadow,
            EventBody::SessionState {
                state: SessionState::Closed,
            },
        )
        .await;
        self.publish(
            session,
            shadow,
            EventBody::SessionClosed {
                reason: reason.to_owned(),
            },
        )
        .await;
    }

    /// An agent connection ended (the agent went away, or a newer connection of the same
    /// agent replaced it). Its version-1 sessions end with it (catpaw cancels them); its
    /// version-2 sessions stay open: the agent keeps them, and resumes them when it registers
    /// again ([`Relay::agent_back`]).
    pub async fn agent_gone(&self, agent_id: &str, conn_id: u64, reason: &str) {
        let affected: Vec<Arc<HubSession>> = lock(&self.inner.sessions)
            .values()
            .filter(|s| s.agent_id == agent_id && s.conn_id == conn_id && s.proto < 2)
            .cloned()
            .collect();
        for s in affected {
            let mut shadow = s.shadow.lock().await;
            self.close_locally(
                &s,
                &mut shadow,
                StopReason::Error,
                &format!("agent disconnected: {reason}"),
            )
            .await;
        }
    }

    /// An agent registered: each of its sessions left open by an earlier connection (or
    /// before a hub restart) is resumed (`session_attach` with `after_seq`: the agent sends
    /// what the hub has not seen, then live events, and the operators attached here are
    /// attached there again), or closed if the agent no longer has it.
    pub async fn agent_back(&self, agent: Arc<AgentConn>) {
        let id = agent.agent_id.clone();
        let records = match self
            .inner
            .store
            .run(move |s| s.list_sessions(Some(&id)))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(agent = %agent.agent_id, error = %e, "cannot list the agent's sessions to resume them");
                return;
            }
        };
        // The store's state follows every session's (closed ones are never read back here).
        let open = records
            .into_iter()
            .filter(|r| r.state != SessionState::Closed.as_str());
        for rec in open {
            let Some(session) = self.find(&rec.session_id).await else {
                continue;
            };
            if session.conn_id == agent.conn_id {
                continue; // opened on this very connection
            }
            let last_seq = {
                let mut shadow = session.shadow.lock().await;
                if shadow.state == SessionState::Closed {
                    continue;
                }
                if session.proto < 2 || agent.proto < 2 {
                    self.close_locally(
                        &session,
                        &mut shadow,
                        StopReason::Error,
                        &format!("{AGENT_LOST_IT} (version-1 sessions end with their connection)"),
                    )
                    .await;
                    continue;
                }
                shadow.last_seq
            };
            let resume = LinkMessage::SessionAttach(SessionAttach {
                session_id: session.id.clone(),
                user_name: String::new(),
                class: String::new(),
                after_seq: Some(last_seq),
                client_id: None,
            });
            let refusal = match agent.request(resume, self.agent_timeout()).await {
                Ok(ack) if ack.ok => None,
                Ok(ack) => Some(ack),
                Err(e) => {
                    // The link went again (or the agent is slow): the next registration retries.
                    tracing::warn!(agent = %agent.agent_id, session = %session.id, error = %e, "cannot resume a session");
                    continue;
                }
            };
            let mut shadow = session.shadow.lock().await;
            if let Some(ack) = refusal {
                let why = match ack.reason.as_deref() {
                    Some("unknown_session") => AGENT_LOST_IT.to_owned(),
                    _ => format!(
                        "the agent could not resume this session: {}",
                        ack.error.as_deref().unwrap_or("refused")
                    ),
                };
                self.close_locally(&session, &mut shadow, StopReason::Error, &why)
                    .await;
                continue;
            }
            tracing::info!(agent = %agent.agent_id, session = %session.id, after_seq = last_seq, "session resumed");
            let users: Vec<LinkMessage> = shadow
                .attached
                .iter()
                .map(|(_, client, _)| user_attach(&session.id, client))
                .collect();
            drop(shadow);
            for msg in users {
                let _ = agent.request(msg, self.agent_timeout()).await;
            }
        }
    }

    // ---- from agents -----------------------------------------------------------------

    /// Version 2: one of the agent's events.
    pub async fn on_event(&self, agent: &AgentConn, e: SessionEvent) {
        // Read back when not in memory: another replica may have created it (or this one,
        // before a restart).
        let Some(session) = self.find(&e.session_id).await else {
            return;
        };
        if session.agent_id != agent.agent_id {
            tracing::warn!(agent = %agent.agent_id, session = %e.session_id, "an agent sent events for another agent's session; ignored");
            return;
        }
        let event: Event = match serde_json::from_value(e.event.clone()) {
            Ok(ev) => ev,
            Err(error) => {
                tracing::warn!(session = %e.session_id, %error, "ignored an unreadable session event");
                return;
            }
        };
        let mut shadow = session.shadow.lock().await;
        if event.seq <= shadow.highest_seq() || shadow.finished {
            return; // delivered twice (kept once), or after the session closed
        }
        let frame = e.event.to_string();
        self.deliver(&session, &mut shadow, event.seq, frame, event.body)
            .await;
    }

    /// A version-2 agent's `diagnose_report`: stored, linked to its alert (the session's,
    /// else the agent's alert with that key); returns that alert's change.
    pub async fn on_report(
        &self,
        agent: &AgentConn,
        r: DiagnoseReport,
        now_ms: i64,
    ) -> Option<crate::store::AlertChange> {
        self.insert_report(&agent.agent_id, r, now_ms).await
    }

    /// Stores a report found here (a version-1 agent's) and announces its alert's change.
    async fn store_report(&self, agent_id: &str, r: DiagnoseReport, now_ms: i64) {
        if let Some(change) = self.insert_report(agent_id, r, now_ms).await {
            self.announce(change);
        }
    }

    async fn insert_report(
        &self,
        agent_id: &str,
        r: DiagnoseReport,
        now_ms: i64,
    ) -> Option<crate::store::AlertChange> {
        let row = crate::store::ReportRow {
            report_id: 0,
            agent_id: agent_id.to_owned(),
            alert_key: r.alert_key,
            alert_id: None,
            session_id: r.session_id,
            report: r.report,
            created_at: r.created_at,
        };
        match self
            .inner
            .store
            .run(move |s| s.insert_report(&row, now_ms))
            .await
        {
            Ok((_, change)) => change,
            Err(e) => {
                tracing::error!(agent = %agent_id, error = %e, "cannot store a diagnosis report");
                None
            }
        }
    }
}
