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

use crate::agents::AgentConn;
use crate::hub::{Hub, Metrics};
use crate::store::{HubStore, SessionRecord, now_ms, rfc3339_ms};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tether_host::sync::lock;
use tether_mux::outbound::{OutItem, Outbound, ReplaySource, StoredEvent};
use tether_proto::link::{
    DiagnoseReport, LinkMessage, MAX_SESSION_OUTPUT_FRAME_BYTES, OutputProbe, SessionAnswer,
    SessionAttach, SessionCancel, SessionDetach, SessionError, SessionEvent, SessionInput,
    SessionNotice, SessionOutput, SessionStart,
};
use tether_proto::{
    CallId, Class, ClientInfo, Control, ErrorBody, Event, EventBody, InputAccepted, InputId, Mode,
    NoticeLevel, PendingPermission, Policy, QueuedInput, Reason, ReplyFrame, RequestId, Scope, Seq,
    SessionId, SessionState, SessionSummary, Snapshot, StopReason, TurnId, TurnRef,
};
use tokio::sync::Mutex;

/// Longest the hub waits for an agent to answer an op.
const AGENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a session closes when its agent comes back without it.
pub const AGENT_LOST_IT: &str = "the agent no longer has this session";

/// Replays read the hub's store.
pub struct StoreReplay {
    store: HubStore,
}

impl ReplaySource for StoreReplay {
    fn read_range<'a>(
        &'a self,
        session_id: &'a SessionId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, String>> {
        Box::pin(async move {
            let id = session_id.to_string();
            let rows = self
                .store
                .run(move |s| s.read_events(&id, from, to, limit))
                .await
                .map_err(|e| e.to_string())?;
            Ok(rows
                .into_iter()
                .map(|(seq, frame)| StoredEvent {
                    seq,
                    frame: Bytes::from(frame),
                })
                .collect())
        })
    }
}

/// The hub's view of a session, rebuilt from its events.
struct Shadow {
    state: SessionState,
    last_seq: Seq,
    first_seq: Seq,
    turn: Option<TurnRef>,
    pending: Vec<PendingPermission>,
    clients: Vec<ClientInfo>,
    queued: Vec<QueuedInput>,
    /// Operators attached at the hub: connection id, who, where their frames go.
    attached: Vec<(u64, ClientInfo, Outbound)>,
    v1: V1Track,
    /// `session_closed` is out: nothing follows it.
    finished: bool,
}

/// Version-1 bookkeeping: the hub runs the turn structure itself.
#[derive(Default)]
struct V1Track {
    queue: VecDeque<(InputId, ClientInfo, String)>,
    /// Open tool calls by the name on catpaw's line (`call_tool` for most), oldest first:
    /// a `[Tool done]` line names only that, so it pairs with the oldest open call of it.
    calls: VecDeque<(String, CallId)>,
    /// Why the session ends when its final `done` frame comes (default: "finished").
    end_reason: Option<String>,
    /// `session.create` has not yet opened the session (its first events and turn). catpaw
    /// starts working right after acking `session_start`, so its first outputs can be read
    /// before `create` runs again; they wait here and are applied after the opening events.
    opening: bool,
    early: Vec<V1Early>,
}

/// A version-1 session frame from the agent (kept in `V1Track::early` when it arrives while
/// the session is opening).
enum V1Early {
    Output(SessionOutput),
    Error(SessionError),
    /// A `session_output` over [`MAX_SESSION_OUTPUT_FRAME_BYTES`] (its size), not decoded.
    TooLarge(OutputProbe, usize),
}

impl V1Early {
    fn session_id(&self) -> &str {
        match self {
            V1Early::Output(o) => &o.session_id,
            V1Early::Error(e) => &e.session_id,
            V1Early::TooLarge(p, _) => &p.session_id,
        }
    }
}

impl Shadow {
    fn new(state: SessionState, last_seq: Seq) -> Shadow {
        Shadow {
            state,
            last_seq,
            first_seq: 1,
            turn: None,
            pending: Vec::new(),
            clients: Vec::new(),
            queued: Vec::new(),
            attached: Vec::new(),
            v1: V1Track::default(),
            finished: state == SessionState::Closed,
        }
    }

    fn apply(&mut self, seq: Seq, body: &EventBody) {
        self.last_seq = self.last_seq.max(seq);
        match body {
            EventBody::SessionState { state } => self.state = *state,
            EventBody::ClientAttached { client, .. }
                if !self.clients.iter().any(|c| c.client_id == client.client_id) =>
            {
                self.clients.push(client.clone());
            }
            EventBody::ClientDetached { client, .. } => {
                self.clients.retain(|c| c.client_id != client.client_id)
            }
            EventBody::TurnStarted {
                turn_id,
                originator,
                input_id,
                ..
            } => {
                self.turn = Some(TurnRef {
                    turn_id: turn_id.clone(),
                    originator: originator.clone(),
                });
                if let Some(id) = input_id {
                    self.queued.retain(|q| &q.input_id != id);
                }
            }
            EventBody::TurnEnded { .. } => self.turn = None,
            EventBody::PermissionRequested { .. } => {
                self.pending.extend(PendingPermission::requested_by(body))
            }
            EventBody::PermissionResolved { call_id, .. } => {
                self.pending.retain(|p| &p.call_id != call_id)
            }
            EventBody::SessionClosed { .. } => {
                self.finished = true;
                self.state = SessionState::Closed;
                self.turn = None;
                self.pending.clear();
            }
            _ => {}
        }
    }

    /// Sends a frame to every attached operator; drops those whose queue overflowed.
    fn broadcast(&mut self, frame: &Bytes, metrics: &Metrics) -> Vec<(u64, ClientInfo)> {
        let mut gone = Vec::new();
        self.attached.retain(|(id, client, out)| {
            let ok = out.push(OutItem::Frame(frame.clone()));
            if !ok {
                if out.is_evicted() {
                    metrics.operator_evictions.fetch_add(1, Ordering::Relaxed);
                }
                gone.push((*id, client.clone()));
            }
            ok
        });
        gone
    }
}

/// One hub session.
pub struct HubSession {
    pub id: String,
    pub agent_id: String,
    pub hostname: String,
    pub mode: Mode,
    pub proto: u32,
    pub title: Option<String>,
    pub policy: Policy,
    pub created_at: String,
    pub created_by: ClientInfo,
    /// The alert it diagnoses (`params.alert_id` at creation; `None` once read back).
    pub alert_id: Option<i64>,
    /// `params.alert_key`: what a version-1 agent's report is filed under.
    alert_key: String,
    /// The agent connection the session runs on (0: read back from the store).
    conn_id: u64,
    shadow: Mutex<Shadow>,
}

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
}

/// How the relay announces an alert change it caused (set by the hub).
pub type AlertPublisher = Box<dyn Fn(crate::store::AlertChange) + Send + Sync>;

/// How many session notes an in-process consumer may fall behind before it misses some.
pub const SESSION_NOTES_BACKLOG: usize = 4096;

/// What the hub's own consumers (the automatic diagnosis, the approval notifications) hear of
/// every hub session: a few of its events, as they are stored.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionNote {
    pub session_id: String,
    pub agent_id: String,
    pub hostname: String,
    pub mode: Mode,
    /// The session's creator (`created_by`).
    pub created_by: String,
    /// The alert it diagnoses, when it was created for one.
    pub alert_id: Option<i64>,
    pub activity: Activity,
}

/// The events a [`SessionNote`] reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Activity {
    /// A tool call waits for a human (or, under policy `any`, an agent) to allow it.
    PermissionRequested {
        call_id: String,
        tool: String,
        args: Value,
    },
    PermissionResolved {
        call_id: String,
    },
    /// A turn ended; `tokens`: the usage the agent reported (0 when it reported none).
    TurnEnded {
        stop: StopReason,
        tokens: u64,
    },
    Closed,
}

impl Activity {
    fn of(body: &EventBody) -> Option<Activity> {
        Some(match body {
            EventBody::PermissionRequested {
                call_id,
                tool,
                args,
                ..
            } => Activity::PermissionRequested {
                call_id: call_id.to_string(),
                tool: tool.clone(),
                args: args.clone(),
            },
            EventBody::PermissionResolved { call_id, .. } => Activity::PermissionResolved {
                call_id: call_id.to_string(),
            },
            EventBody::TurnEnded { stop, usage, .. } => Activity::TurnEnded {
                stop: *stop,
                tokens: usage.as_ref().map_or(0, |u| u.total_tokens),
            },
            EventBody::SessionClosed { .. } => Activity::Closed,
            _ => return None,
        })
    }
}

fn err(reason: Reason, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(reason, message)
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
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
    pub fn new(store: HubStore, metrics: Arc<Metrics>, queue: usize) -> Relay {
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
            }),
        }
    }

    /// Sets how alert changes the relay causes are announced (once, by the hub).
    pub fn set_publisher(&self, publisher: AlertPublisher) {
        let _ = self.inner.publisher.set(publisher);
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
    pub async fn notice(&self, hub: &Hub, session_id: &str, level: NoticeLevel, message: &str) {
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
        if let Some(agent) = hub.agent(&session.agent_id) {
            let level = match level {
                NoticeLevel::Info => "info",
                NoticeLevel::Warning => "warning",
                NoticeLevel::Error => "error",
            };
            let _ = agent
                .send(LinkMessage::SessionNotice(SessionNotice {
                    session_id: session.id.clone(),
                    level: level.to_owned(),
                    message: message.to_owned(),
                }))
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
                let events = if rec.state == SessionState::Closed.as_str() {
                    Vec::new()
                } else {
                    s.read_events(&key, 1, rec.last_seq, rec.last_seq as usize)?
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
                shadow.apply(seq, &event.body);
            }
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

    /// Stores an event and sends it to every attached operator (caller holds the shadow).
    async fn deliver(
        &self,
        session: &HubSession,
        shadow: &mut Shadow,
        seq: Seq,
        frame: String,
        body: &EventBody,
    ) {
        let id = session.id.clone();
        let text = frame.clone();
        let stored = self
            .inner
            .store
            .run(move |s| s.append_events(&id, &[(seq, text)]))
            .await;
        if let Err(e) = stored {
            tracing::error!(session = %session.id, error = %e, "cannot store a session event");
        }
        shadow.apply(seq, body);
        if let Some(activity) = Activity::of(body)
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
        let gone = shadow.broadcast(&Bytes::from(frame), &self.inner.metrics);
        if matches!(
            body,
            EventBody::SessionState { .. } | EventBody::SessionClosed { .. }
        ) {
            let id = session.id.clone();
            let state = shadow.state.as_str().to_owned();
            let last = shadow.last_seq;
            let _ = self
                .inner
                .store
                .run(move |s| s.update_session(&id, &state, last))
                .await;
        }
        for (_, client) in gone {
            tracing::info!(session = %session.id, operator = %client.name, "operator evicted (slow consumer)");
        }
    }

    /// Version 1: the hub assigns the next seq.
    async fn publish(&self, session: &HubSession, shadow: &mut Shadow, body: EventBody) {
        let seq = shadow.last_seq + 1;
        let event = Event {
            session_id: SessionId(session.id.clone()),
            seq,
            ts: now(),
            body,
        };
        let frame = event.encode();
        self.deliver(session, shadow, seq, frame, &event.body).await;
    }

    // ---- operator ops ----------------------------------------------------------------

    /// `session.create` with `agent_id`.
    pub async fn create(
        &self,
        hub: &Hub,
        creator: &ClientInfo,
        create: tether_proto::SessionCreate,
    ) -> Result<String, ErrorBody> {
        if creator.class == Class::Observer {
            return Err(err(Reason::Forbidden, "observers cannot create sessions"));
        }
        // The agent checks it as well, but a version-1 agent is never told the operator's
        // class.
        if tether_mux::arbitration::may_choose_policy(
            creator.class,
            create.policy.unwrap_or(Policy::Human),
        )
        .is_err()
        {
            return Err(err(
                Reason::Forbidden,
                format!(
                    "only a human-class operator may choose policy `any` ({} is {}-class)",
                    creator.name, creator.class
                ),
            ));
        }
        let Some(agent_id) = create.agent_id.clone().filter(|a| !a.is_empty()) else {
            return Err(err(
                Reason::BadRequest,
                "field `agent_id`: required at the hub (which agent should run the session?)",
            ));
        };
        let Some(agent) = hub.agent(&agent_id) else {
            return Err(err(
                Reason::BadRequest,
                format!("field `agent_id`: agent {agent_id} is not connected"),
            ));
        };
        let id = uuid::Uuid::now_v7().to_string();
        let policy = create.policy.unwrap_or(Policy::Human);
        let mut params = create.params.clone().unwrap_or_default();
        // `params.alert_id`: a diagnosis of a stored alert of this agent, linked to it (the
        // alert's `diagnoses`). The hub's, not the agent's: it is not passed on.
        let alert_id = match params.remove("alert_id") {
            None => None,
            Some(v) => match v.as_i64() {
                Some(id) => Some(id),
                None => {
                    return Err(err(
                        Reason::BadRequest,
                        "field `params.alert_id`: not an alert id (an `alert_id` from alerts.list)",
                    ));
                }
            },
        };
        if let Some(aid) = alert_id {
            let now = hub.now_ms();
            let alert = self
                .inner
                .store
                .run(move |s| s.get_alert(aid, now))
                .await
                .map_err(|e| err(Reason::Internal, e.to_string()))?;
            match alert {
                Some(a) if a.agent_id.as_deref() == Some(agent_id.as_str()) => {}
                Some(_) => {
                    return Err(err(
                        Reason::BadRequest,
                        format!(
                            "field `params.alert_id`: alert {aid} is not about agent {agent_id}"
                        ),
                    ));
                }
                None => {
                    return Err(err(
                        Reason::BadRequest,
                        format!("field `params.alert_id`: no alert {aid}"),
                    ));
                }
            }
        }
        if agent.proto < 2 {
            if create.mode == Mode::Diagnose {
                // catpaw reads the alert text from `descriptions` only.
                v1_descriptions(&mut params);
            }
            // catpaw's params are a map of strings: anything else would make it refuse the
            // whole `session_start` as an invalid payload.
            v1_string_params(&mut params);
        }
        // One title, the same at the hub and (version 2) at the agent.
        let title = create
            .title
            .clone()
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| format!("{} by {}", create.mode, creator.name));
        let v2 = agent.proto >= 2;
        let start = SessionStart {
            session_id: id.clone(),
            session_type: create.mode.as_str().to_owned(),
            user_name: creator.name.clone(),
            params: params.clone(),
            class: v2.then(|| creator.class.as_str().to_owned()),
            policy: v2.then(|| policy.as_str().to_owned()),
            title: v2.then(|| title.clone()),
            client_id: v2.then(|| creator.client_id.to_string()),
        };
        // Registered before the agent's first event can arrive.
        let session = Arc::new(HubSession {
            id: id.clone(),
            agent_id: agent_id.clone(),
            hostname: agent.hostname.clone(),
            mode: create.mode,
            proto: agent.proto,
            title: Some(title.clone()),
            policy,
            created_at: now(),
            created_by: creator.clone(),
            alert_id,
            alert_key: params
                .get("alert_key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            conn_id: agent.conn_id,
            shadow: Mutex::new({
                let mut shadow = Shadow::new(SessionState::Idle, 0);
                shadow.v1.opening = agent.proto < 2;
                shadow
            }),
        });
        let record = SessionRecord {
            session_id: id.clone(),
            agent_id: agent_id.clone(),
            mode: create.mode.as_str().to_owned(),
            title: Some(title),
            policy: policy.as_str().to_owned(),
            state: "idle".into(),
            created_at: rfc3339_ms(now_ms()),
            created_by: creator.name.clone(),
            proto: agent.proto,
            params: Value::Object(params.clone()),
            last_seq: 0,
        };
        self.inner
            .store
            .run(move |s| s.insert_session(&record))
            .await
            .map_err(|e| err(Reason::Internal, e.to_string()))?;
        if let Some(aid) = alert_id {
            let sid = id.clone();
            let now = hub.now_ms();
            match self
                .inner
                .store
                .run(move |s| s.link_alert_session(aid, &sid, now))
                .await
            {
                Ok(Some(change)) => hub.publish(crate::hub::HubEvent::Alert(change)),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(alert_id = aid, error = %e, "cannot link a session to its alert")
                }
            }
        }
        {
            let mut map = lock(&self.inner.sessions);
            map.insert(id.clone(), session.clone());
        }
        let ack = agent
            .request(LinkMessage::SessionStart(start), AGENT_TIMEOUT)
            .await;
        let refused = match ack {
            Ok(a) if a.ok => None,
            Ok(a) => Some(a.error.unwrap_or_else(|| "refused".into())),
            Err(e) => Some(e),
        };
        if let Some(why) = refused {
            let mut shadow = session.shadow.lock().await;
            shadow.v1.opening = false;
            shadow.v1.early.clear();
            self.publish(
                &session,
                &mut shadow,
                EventBody::SessionClosed {
                    reason: format!("the agent refused the session: {why}"),
                },
            )
            .await;
            let reason = if why == tether_proto::link::refusal::MAX_CONCURRENT {
                Reason::Overloaded
            } else {
                Reason::BadRequest
            };
            return Err(err(reason, format!("agent {agent_id}: {why}")));
        }
        hub.metrics()
            .sessions_created
            .fetch_add(1, Ordering::Relaxed);
        if agent.proto < 2 {
            // The hub runs the event stream of a version-1 session itself.
            let mut shadow = session.shadow.lock().await;
            self.publish(
                &session,
                &mut shadow,
                EventBody::SessionState {
                    state: SessionState::Idle,
                },
            )
            .await;
            let first = match create.mode {
                Mode::Chat => params
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                Mode::Inspect | Mode::Diagnose => Some(first_text(create.mode, &params)),
            };
            if let Some(text) = first {
                self.v1_start_turn(&session, &mut shadow, creator.clone(), text, None)
                    .await;
            }
            // What the agent sent while the session was opening, in arrival order.
            shadow.v1.opening = false;
            for early in std::mem::take(&mut shadow.v1.early) {
                self.apply_v1(&session, &mut shadow, early).await;
            }
        }
        Ok(id)
    }

    async fn v1_start_turn(
        &self,
        session: &HubSession,
        shadow: &mut Shadow,
        originator: ClientInfo,
        text: String,
        input_id: Option<InputId>,
    ) -> TurnId {
        let turn_id = TurnId(uuid::Uuid::now_v7().to_string());
        self.publish(
            session,
            shadow,
            EventBody::TurnStarted {
                turn_id: turn_id.clone(),
                originator,
                text,
                input_id,
            },
        )
        .await;
        self.publish(
            session,
            shadow,
            EventBody::SessionState {
                state: SessionState::Running,
            },
        )
        .await;
        turn_id
    }

    /// `attach`: replies with the snapshot, queues the replay, then live events. Whether the
    /// attach succeeded (the reply was the snapshot).
    #[allow(clippy::too_many_arguments)]
    pub async fn attach(
        &self,
        hub: &Hub,
        client: &ClientInfo,
        conn_id: u64,
        out: &Outbound,
        re: RequestId,
        session_id: &str,
        after_seq: Option<Seq>,
    ) -> bool {
        let Some(session) = self.find(session_id).await else {
            out.push_frame(
                ReplyFrame::err(
                    Some(re),
                    err(Reason::UnknownSession, format!("no session {session_id}")),
                )
                .encode(),
            );
            return false;
        };
        {
            let mut shadow = session.shadow.lock().await;
            if let Some(after) = after_seq
                && after > shadow.last_seq
            {
                out.push_frame(
                    ReplyFrame::err(
                        Some(re),
                        err(
                            Reason::BadRequest,
                            format!(
                                "after_seq {after} is beyond the session's last event ({})",
                                shadow.last_seq
                            ),
                        ),
                    )
                    .encode(),
                );
                return false;
            }
            let snapshot = Snapshot {
                session_id: SessionId(session.id.clone()),
                mode: session.mode,
                state: shadow.state,
                title: session.title.clone(),
                policy: session.policy,
                turn: shadow.turn.clone(),
                pending_permissions: shadow.pending.clone(),
                clients: shadow.clients.clone(),
                queued: shadow.queued.clone(),
                queued_count: shadow.queued.len(),
                last_seq: shadow.last_seq,
                first_seq: shadow.first_seq,
            };
            out.push_frame(
                ReplyFrame::ok(
                    re,
                    json!({"snapshot": snapshot, "agent_id": session.agent_id}),
                )
                .encode(),
            );
            if let Some(after) = after_seq {
                if after < shadow.last_seq {
                    out.push(OutItem::Replay {
                        session_id: SessionId(session.id.clone()),
                        from: after + 1,
                        to: shadow.last_seq,
                    });
                } else {
                    out.push_frame(
                        Control::ReplayComplete {
                            session_id: SessionId(session.id.clone()),
                            last_seq: shadow.last_seq,
                        }
                        .encode(),
                    );
                }
            }
            if shadow.state == SessionState::Closed
                || shadow.attached.iter().any(|(id, _, _)| *id == conn_id)
            {
                return true;
            }
            shadow.attached.push((conn_id, client.clone(), out.clone()));
            if session.proto < 2 {
                self.publish(
                    &session,
                    &mut shadow,
                    EventBody::ClientAttached {
                        client: client.clone(),
                        reason: None,
                    },
                )
                .await;
                return true;
            }
        }
        // Version 2: the agent learns the operator is present (and may answer prompts).
        if let Some(agent) = hub.agent(&session.agent_id) {
            let msg = user_attach(&session.id, client);
            tokio::spawn(async move {
                let _ = agent.request(msg, AGENT_TIMEOUT).await;
            });
        }
        true
    }

    /// Removes an operator from a session (explicitly, or because its connection went).
    pub async fn detach(
        &self,
        hub: &Hub,
        client: &ClientInfo,
        conn_id: u64,
        session_id: &str,
    ) -> Result<(), ErrorBody> {
        let Some(session) = self.find(session_id).await else {
            return Err(err(
                Reason::UnknownSession,
                format!("no session {session_id}"),
            ));
        };
        let was = {
            let mut shadow = session.shadow.lock().await;
            let before = shadow.attached.len();
            shadow.attached.retain(|(id, _, _)| *id != conn_id);
            let was = shadow.attached.len() != before;
            if was && session.proto < 2 && shadow.state != SessionState::Closed {
                self.publish(
                    &session,
                    &mut shadow,
                    EventBody::ClientDetached {
                        client: client.clone(),
                        reason: None,
                    },
                )
                .await;
            }
            was
        };
        // Each operator connection is a user of its own at the agent.
        if was
            && session.proto >= 2
            && let Some(agent) = hub.agent(&session.agent_id)
        {
            let _ = agent
                .send(LinkMessage::SessionDetach(SessionDetach {
                    session_id: session.id.clone(),
                    user_name: client.name.clone(),
                    client_id: Some(client.client_id.to_string()),
                }))
                .await;
        }
        Ok(())
    }

    /// The session's agent, connected. Away, it is `overloaded` (try again), not
    /// `session_closed`: the session stays open and resumes when the agent is back.
    fn live_agent(&self, hub: &Hub, session: &HubSession) -> Result<Arc<AgentConn>, ErrorBody> {
        hub.agent(&session.agent_id).ok_or_else(|| {
            err(
                Reason::Overloaded,
                format!(
                    "agent {} is not connected; the session resumes when it is back",
                    session.agent_id
                ),
            )
        })
    }

    async fn open_session(&self, session_id: &str) -> Result<Arc<HubSession>, ErrorBody> {
        let session = self
            .find(session_id)
            .await
            .ok_or_else(|| err(Reason::UnknownSession, format!("no session {session_id}")))?;
        if session.shadow.lock().await.state == SessionState::Closed {
            return Err(err(
                Reason::SessionClosed,
                format!("session {session_id} is closed"),
            ));
        }
        Ok(session)
    }

    /// `input`
    pub async fn input(
        &self,
        hub: &Hub,
        client: &ClientInfo,
        input: tether_proto::Input,
    ) -> Result<Value, ErrorBody> {
        if client.class == Class::Observer {
            return Err(err(Reason::Forbidden, "observers cannot send input"));
        }
        let session = self.open_session(input.session_id.as_str()).await?;
        let agent = self.live_agent(hub, &session)?;
        if session.proto >= 2 {
            let ack = agent
                .request(
                    LinkMessage::SessionInput(SessionInput {
                        session_id: session.id.clone(),
                        message: input.text,
                        user_name: Some(client.name.clone()),
                        class: Some(client.class.as_str().to_owned()),
                        queue: input.queue,
                        client_id: Some(client.client_id.to_string()),
                    }),
                    AGENT_TIMEOUT,
                )
                .await
                .map_err(|e| err(Reason::Internal, e))?;
            return if ack.ok {
                Ok(ack.result.unwrap_or(json!({})))
            } else {
                Err(ack_error(&ack))
            };
        }
        // Version 1: the hub keeps the turn order; the agent queues what it is sent.
        let mut shadow = session.shadow.lock().await;
        if let Some(turn) = &shadow.turn
            && !input.queue
        {
            return Err(ErrorBody::turn_in_progress(&turn.turn_id, &turn.originator));
        }
        agent
            .send(LinkMessage::SessionInput(SessionInput {
                session_id: session.id.clone(),
                message: input.text.clone(),
                user_name: None,
                class: None,
                queue: false,
                client_id: None,
            }))
            .await
            .map_err(|e| err(Reason::Internal, e))?;
        if shadow.turn.is_some() {
            let input_id = InputId(uuid::Uuid::now_v7().to_string());
            shadow
                .v1
                .queue
                .push_back((input_id.clone(), client.clone(), input.text.clone()));
            shadow.queued.push(QueuedInput {
                input_id: input_id.clone(),
                originator: client.clone(),
                text: input.text,
            });
            let position = shadow.v1.queue.len();
            return Ok(
                serde_json::to_value(InputAccepted::Queued { input_id, position })
                    .unwrap_or(json!({})),
            );
        }
        let turn_id = self
            .v1_start_turn(&session, &mut shadow, client.clone(), input.text, None)
            .await;
        Ok(serde_json::to_value(InputAccepted::Started { turn_id }).unwrap_or(json!({})))
    }

    /// `answer`
    pub async fn answer(
        &self,
        hub: &Hub,
        client: &ClientInfo,
        answer: tether_proto::Answer,
    ) -> Result<Value, ErrorBody> {
        if client.class == Class::Observer {
            return Err(err(
                Reason::Forbidden,
                "observers cannot answer permission requests",
            ));
        }
        let session = self.open_session(answer.session_id.as_str()).await?;
        if session.proto < 2 {
            return Err(err(
                Reason::NoPendingPermission,
                "this agent speaks protocol v1: it never asks for permission (it denies)",
            ));
        }
        let agent = self.live_agent(hub, &session)?;
        let ack = agent
            .request(
                LinkMessage::SessionAnswer(SessionAnswer {
                    session_id: session.id.clone(),
                    call_id: answer.call_id.to_string(),
                    user_name: client.name.clone(),
                    class: client.class.as_str().to_owned(),
                    decision: answer.decision.as_str().to_owned(),
                    scope: answer.scope.map(|s: Scope| s.as_str().to_owned()),
                    client_id: Some(client.client_id.to_string()),
                }),
                AGENT_TIMEOUT,
            )
            .await
            .map_err(|e| err(Reason::Internal, e))?;
        if ack.ok {
            Ok(json!({}))
        } else {
            Err(ack_error(&ack))
        }
    }

    /// `cancel`: under version 2 only the turn; under version 1 (catpaw cancels sessions)
    /// the whole session.
    pub async fn cancel(
        &self,
        hub: &Hub,
        client: &ClientInfo,
        cancel: tether_proto::Cancel,
    ) -> Result<Value, ErrorBody> {
        if client.class == Class::Observer {
            return Err(err(Reason::Forbidden, "observers cannot cancel turns"));
        }
        let session = self.open_session(cancel.session_id.as_str()).await?;
        {
            let shadow = session.shadow.lock().await;
            match &shadow.turn {
                Some(t) if t.turn_id == cancel.turn_id => {}
                _ => {
                    return Err(err(
                        Reason::StaleTurn,
                        format!("turn {} is not running", cancel.turn_id),
                    ));
                }
            }
        }
        let agent = self.live_agent(hub, &session)?;
        let v2 = session.proto >= 2;
        let reason = format!("cancelled by {}", client.name);
        agent
            .send(LinkMessage::SessionCancel(SessionCancel {
                session_id: session.id.clone(),
                reason: reason.clone(),
                turn_id: v2.then(|| cancel.turn_id.to_string()),
                user_name: v2.then(|| client.name.clone()),
                class: v2.then(|| client.class.as_str().to_owned()),
                client_id: v2.then(|| client.client_id.to_string()),
            }))
            .await
            .map_err(|e| err(Reason::Internal, e))?;
        if !v2 {
            // catpaw cancels the whole session and answers with a bare `done` (or nothing,
            // if it had already finished): the hub ends it now, saying who and how.
            let mut shadow = session.shadow.lock().await;
            self.close_locally(&session, &mut shadow, StopReason::Cancelled, &reason)
                .await;
        }
        Ok(json!({}))
    }

    /// `session.close`
    pub async fn close(
        &self,
        hub: &Hub,
        client: &ClientInfo,
        session_id: &str,
    ) -> Result<Value, ErrorBody> {
        if client.class == Class::Observer {
            return Err(err(Reason::Forbidden, "observers cannot close sessions"));
        }
        let Some(session) = self.find(session_id).await else {
            return Err(err(
                Reason::UnknownSession,
                format!("no session {session_id}"),
            ));
        };
        if session.shadow.lock().await.state == SessionState::Closed {
            return Ok(json!({}));
        }
        let reason = format!("closed by {}", client.name);
        let agent = hub.agent(&session.agent_id);
        if let Some(agent) = &agent {
            let v2 = session.proto >= 2;
            agent
                .send(LinkMessage::SessionCancel(SessionCancel {
                    session_id: session.id.clone(),
                    reason: reason.clone(),
                    turn_id: None,
                    user_name: v2.then(|| client.name.clone()),
                    class: v2.then(|| client.class.as_str().to_owned()),
                    client_id: v2.then(|| client.client_id.to_string()),
                }))
                .await
                .map_err(|e| err(Reason::Internal, e))?;
        }
        // Version 2: the agent closes it and its `session_closed` says why. Version 1 (or an
        // agent away): the hub closes it, saying who.
        if agent.is_none() || session.proto < 2 {
            let mut shadow = session.shadow.lock().await;
            self.close_locally(&session, &mut shadow, StopReason::Cancelled, &reason)
                .await;
        }
        Ok(json!({}))
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
        shadow.attached.clear();
    }

    /// `session.list`
    pub async fn list(&self, agent_id: Option<String>) -> Result<Vec<Value>, ErrorBody> {
        let (records, hosts) = self
            .inner
            .store
            .run(move |s| {
                let records = s.list_sessions(agent_id.as_deref())?;
                let mut hosts: HashMap<String, String> = HashMap::new();
                for r in &records {
                    if !hosts.contains_key(&r.agent_id)
                        && let Some(a) = s.get_agent(&r.agent_id)?
                    {
                        hosts.insert(a.agent_id, a.hostname);
                    }
                }
                Ok((records, hosts))
            })
            .await
            .map_err(|e| err(Reason::Internal, e.to_string()))?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let live = self.get(&r.session_id);
            let (state, clients, last_seq) = match &live {
                Some(s) => {
                    let sh = s.shadow.lock().await;
                    (sh.state, sh.clients.clone(), sh.last_seq)
                }
                None => (
                    SessionState::parse(&r.state).unwrap_or(SessionState::Closed),
                    Vec::new(),
                    r.last_seq,
                ),
            };
            let summary = SessionSummary {
                session_id: SessionId(r.session_id.clone()),
                mode: Mode::parse(&r.mode).unwrap_or(Mode::Chat),
                state,
                title: r.title.clone(),
                created_at: r.created_at.clone(),
                clients,
                last_seq,
            };
            let mut v = serde_json::to_value(summary).unwrap_or(json!({}));
            if let Value::Object(m) = &mut v {
                m.insert("agent_id".into(), json!(r.agent_id));
                // The agent's hostname now (or as it last registered).
                let hostname = hosts
                    .get(&r.agent_id)
                    .cloned()
                    .or_else(|| live.map(|s| s.hostname.clone()))
                    .unwrap_or_default();
                m.insert("hostname".into(), json!(hostname));
                m.insert("created_by".into(), json!(r.created_by));
            }
            out.push(v);
        }
        Ok(out)
    }

    /// An operator connection went away: leave every session it was in.
    pub async fn operator_gone(
        &self,
        hub: &Hub,
        client: &ClientInfo,
        conn_id: u64,
        sessions: Vec<String>,
    ) {
        for id in sessions {
            let _ = self.detach(hub, client, conn_id, &id).await;
        }
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
            let refusal = match agent.request(resume, AGENT_TIMEOUT).await {
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
                let _ = agent.request(msg, AGENT_TIMEOUT).await;
            }
        }
    }

    // ---- from agents -----------------------------------------------------------------

    /// Version 2: one of the agent's events.
    pub async fn on_event(&self, agent: &AgentConn, e: SessionEvent) {
        let Some(session) = self.get(&e.session_id) else {
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
        if event.seq <= shadow.last_seq || shadow.finished {
            return; // delivered twice (kept once), or after the session closed
        }
        let frame = e.event.to_string();
        self.deliver(&session, &mut shadow, event.seq, frame, &event.body)
            .await;
    }

    /// Version 1: a `session_output` frame.
    pub async fn on_output(&self, agent: &AgentConn, o: SessionOutput) {
        self.on_v1(agent, V1Early::Output(o)).await;
    }

    /// Version 1: a `session_error` (a final `done` output follows).
    pub async fn on_error(&self, agent: &AgentConn, e: SessionError) {
        self.on_v1(agent, V1Early::Error(e)).await;
    }

    /// A version-1 frame of one of `agent`'s sessions: applied now, or after the opening
    /// events when the session is still opening.
    async fn on_v1(&self, agent: &AgentConn, frame: V1Early) {
        let Some(session) = self.get(frame.session_id()) else {
            return;
        };
        if session.agent_id != agent.agent_id {
            return;
        }
        let mut shadow = session.shadow.lock().await;
        if shadow.v1.opening {
            shadow.v1.early.push(frame);
            return;
        }
        self.apply_v1(&session, &mut shadow, frame).await;
    }

    async fn apply_v1(&self, session: &HubSession, shadow: &mut Shadow, frame: V1Early) {
        match frame {
            V1Early::Output(o) => self.apply_output(session, shadow, o).await,
            V1Early::Error(e) => self.apply_error(session, shadow, e).await,
            V1Early::TooLarge(probe, size) => {
                // Not decoded, so not shown. A frame that ends the turn (a chat's reply) or
                // the session (the final report) still does, with an error that says why.
                let what = match (probe.done, probe.turn_done) {
                    (true, _) => "final report",
                    (false, true) => "reply",
                    (false, false) => "output",
                };
                let why = format!(
                    "the agent's {what} was {size} bytes; the hub accepts session output frames of up to {MAX_SESSION_OUTPUT_FRAME_BYTES} bytes, so it was dropped"
                );
                if !probe.done && !probe.turn_done {
                    if shadow.state != SessionState::Closed {
                        self.publish(
                            session,
                            shadow,
                            EventBody::Notice {
                                level: NoticeLevel::Warning,
                                message: why,
                            },
                        )
                        .await;
                    }
                    return;
                }
                if probe.done {
                    shadow.v1.end_reason = Some(why.clone());
                }
                let output = SessionOutput {
                    session_id: probe.session_id,
                    delta: why,
                    stage: "error".into(),
                    done: probe.done,
                    report: None,
                    metadata: Some(Map::from_iter([("turn_done".into(), Value::Bool(true))])),
                };
                self.apply_output(session, shadow, output).await;
            }
        }
    }

    /// Version 1: a `session_output` frame too large to decode (over
    /// [`MAX_SESSION_OUTPUT_FRAME_BYTES`], `size` bytes).
    pub async fn on_output_too_large(&self, agent: &AgentConn, probe: OutputProbe, size: usize) {
        self.on_v1(agent, V1Early::TooLarge(probe, size)).await;
    }

    async fn apply_output(&self, session: &HubSession, shadow: &mut Shadow, o: SessionOutput) {
        if shadow.state == SessionState::Closed {
            return;
        }
        let turn_id = match &shadow.turn {
            Some(t) => t.turn_id.clone(),
            None if o.done => TurnId(String::new()),
            None => {
                // Output with no turn (the agent started on its own): open one.
                self.v1_start_turn(
                    session,
                    shadow,
                    session.created_by.clone(),
                    "(agent)".into(),
                    None,
                )
                .await
            }
        };
        let has_turn = !turn_id.0.is_empty();
        match o.stage.as_str() {
            "thinking" if has_turn && !o.delta.is_empty() => {
                self.publish(
                    session,
                    shadow,
                    EventBody::ReasoningDelta {
                        turn_id: turn_id.clone(),
                        text: format!("{}\n", o.delta),
                    },
                )
                .await;
            }
            "answer" | "error" if has_turn && !o.delta.is_empty() => {
                let text = if o.stage == "error" {
                    format!("\n[error] {}\n", o.delta)
                } else {
                    o.delta.clone()
                };
                self.publish(
                    session,
                    shadow,
                    EventBody::TextDelta {
                        turn_id: turn_id.clone(),
                        text,
                    },
                )
                .await;
            }
            "tool_call" if has_turn => {
                let line = parse_tool_line(&o.delta);
                let (tool, args) = (line.tool, line.args);
                let call_id = CallId(uuid::Uuid::now_v7().to_string());
                shadow.v1.calls.push_back((line.wire_name, call_id.clone()));
                self.publish(
                    session,
                    shadow,
                    EventBody::ToolCall {
                        turn_id: turn_id.clone(),
                        call_id,
                        tool,
                        args,
                    },
                )
                .await;
            }
            "tool_result" if has_turn => {
                if let Some((wire_name, ok, duration_ms)) = parse_tool_done(&o.delta) {
                    let open = shadow.v1.calls.iter().position(|(n, _)| *n == wire_name);
                    let call_id = open
                        .and_then(|i| shadow.v1.calls.remove(i))
                        .map(|(_, id)| id)
                        .unwrap_or_else(|| CallId(uuid::Uuid::now_v7().to_string()));
                    self.publish(
                        session,
                        shadow,
                        EventBody::ToolResult {
                            turn_id: turn_id.clone(),
                            call_id,
                            ok,
                            output: o.delta.clone(),
                            truncated: false,
                            duration_ms,
                            // A v1 `[Tool done]` line carries no approval wait.
                            waited_ms: None,
                        },
                    )
                    .await;
                } else {
                    self.publish(
                        session,
                        shadow,
                        EventBody::Notice {
                            level: NoticeLevel::Info,
                            message: o.delta.clone(),
                        },
                    )
                    .await;
                }
            }
            _ => {}
        }
        let turn_done = o
            .metadata
            .as_ref()
            .and_then(|m| m.get("turn_done"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if has_turn && (turn_done || o.done) {
            if let Some(report) = o.report.as_ref().filter(|r| !r.is_empty()) {
                self.publish(
                    session,
                    shadow,
                    EventBody::TextDelta {
                        turn_id: turn_id.clone(),
                        text: report.clone(),
                    },
                )
                .await;
                if session.mode == Mode::Diagnose && o.stage != "error" {
                    // catpaw has no `diagnose_report`: its final report is the diagnosis,
                    // stored (and linked to the session's alert) as a version-2 agent's is.
                    self.store_report(
                        &session.agent_id,
                        DiagnoseReport {
                            alert_key: session.alert_key.clone(),
                            session_id: Some(session.id.clone()),
                            report: report.clone(),
                            created_at: now(),
                        },
                        now_ms(),
                    )
                    .await;
                }
            }
            let failed = o.stage == "error";
            self.publish(
                session,
                shadow,
                EventBody::TurnEnded {
                    turn_id: turn_id.clone(),
                    stop: if failed {
                        StopReason::Error
                    } else {
                        StopReason::Completed
                    },
                    error: failed.then(|| o.delta.clone()),
                    usage: None,
                },
            )
            .await;
            if !o.done {
                if let Some((input_id, who, text)) = shadow.v1.queue.pop_front() {
                    self.v1_start_turn(session, shadow, who, text, Some(input_id))
                        .await;
                } else {
                    self.publish(
                        session,
                        shadow,
                        EventBody::SessionState {
                            state: SessionState::Idle,
                        },
                    )
                    .await;
                }
            }
        }
        if o.done {
            self.publish(
                session,
                shadow,
                EventBody::SessionState {
                    state: SessionState::Closed,
                },
            )
            .await;
            let reason = shadow
                .v1
                .end_reason
                .take()
                .unwrap_or_else(|| "finished".into());
            self.publish(session, shadow, EventBody::SessionClosed { reason })
                .await;
            shadow.attached.clear();
        }
    }

    async fn apply_error(&self, session: &HubSession, shadow: &mut Shadow, e: SessionError) {
        if shadow.state == SessionState::Closed {
            return;
        }
        // The final `done` that follows closes the session for this reason.
        shadow.v1.end_reason = Some(format!("failed: {}", e.error));
        self.publish(
            session,
            shadow,
            EventBody::Notice {
                level: NoticeLevel::Error,
                message: format!("{} ({})", e.error, e.code),
            },
        )
        .await;
        if let Some(turn) = shadow.turn.clone() {
            self.publish(
                session,
                shadow,
                EventBody::TurnEnded {
                    turn_id: turn.turn_id,
                    stop: StopReason::Error,
                    error: Some(e.error.clone()),
                    usage: None,
                },
            )
            .await;
        }
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

/// Version 2: `session_attach` making an operator connection a user of the session at the
/// agent (present, and able to answer prompts as itself).
fn user_attach(session_id: &str, client: &ClientInfo) -> LinkMessage {
    LinkMessage::SessionAttach(SessionAttach {
        session_id: session_id.to_owned(),
        user_name: client.name.clone(),
        class: client.class.as_str().to_owned(),
        after_seq: None,
        client_id: Some(client.client_id.to_string()),
    })
}

/// catpaw's diagnose reads the alert text from `params.descriptions` only; operators and
/// tether's own callers may give it as `alert` or `message`.
fn v1_descriptions(params: &mut Map<String, Value>) {
    let has = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty())
    };
    if has(params.get("descriptions")) {
        return;
    }
    let text = ["alert", "message"]
        .into_iter()
        .map(|k| params.get(k))
        .find(|v| has(*v))
        .flatten()
        .cloned();
    if let Some(text) = text {
        params.insert("descriptions".into(), text);
    }
}

/// catpaw decodes `params` as a map of strings: a value of another type (a diagnosis' labels,
/// say) goes as its JSON text.
fn v1_string_params(params: &mut Map<String, Value>) {
    for v in params.values_mut() {
        if !v.is_string() {
            *v = Value::String(v.to_string());
        }
    }
}

/// The first input of an inspect or diagnose session, for the transcript.
fn first_text(mode: Mode, params: &Map<String, Value>) -> String {
    let p = |k: &str| params.get(k).and_then(Value::as_str).unwrap_or("");
    match mode {
        Mode::Inspect => format!("inspect {} {}", p("plugin"), p("target"))
            .trim()
            .to_owned(),
        _ => {
            let what = [p("alert"), p("descriptions"), p("message")]
                .into_iter()
                .find(|s| !s.is_empty())
                .unwrap_or("(no description)");
            format!("diagnose: {what}")
        }
    }
}

/// A catpaw `tool_call` line, read.
#[derive(Debug, PartialEq)]
struct ToolLine {
    /// The name on the line (`call_tool` for most tools): its `[Tool done]` line says this.
    wire_name: String,
    /// The tool that runs.
    tool: String,
    /// Its arguments, always an object.
    args: Value,
}

/// catpaw's `[Tool] <name> <display>` (`FormatToolArgsDisplay`): `call_tool <tool> <json>`
/// (or just `<tool>`), `list_tools <category>`, `exec_shell <command>`, a direct tool with
/// nothing after it; `[Shell] <command>` in a chat that may run commands.
fn parse_tool_line(line: &str) -> ToolLine {
    if let Some(command) = line.strip_prefix("[Shell]") {
        return ToolLine {
            wire_name: "exec_shell".into(),
            tool: "exec_shell".into(),
            args: json!({"command": command.trim()}),
        };
    }
    let rest = line.strip_prefix("[Tool]").unwrap_or(line).trim();
    let (name, display) = rest.split_once(' ').unwrap_or((rest, ""));
    let display = display.trim();
    let (tool, args) = match name {
        "call_tool" => {
            let (tool, args) = display.split_once(' ').unwrap_or((display, ""));
            (tool.to_owned(), args_object(args.trim()))
        }
        "list_tools" if !display.is_empty() => (name.to_owned(), json!({"category": display})),
        "exec_shell" if !display.is_empty() => (name.to_owned(), json!({"command": display})),
        _ => (name.to_owned(), args_object(display)),
    };
    ToolLine {
        wire_name: name.to_owned(),
        tool: if tool.is_empty() {
            name.to_owned()
        } else {
            tool
        },
        args,
    }
}

/// Arguments as an object: a JSON object as is, anything else kept as `_raw` text (catpaw's
/// own fallback in `ParseToolArgs`).
fn args_object(text: &str) -> Value {
    if text.is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"_raw": text}),
    }
}

/// `[Tool done] name (ok, 123B, 1m2.5s)` → (name, ok, ms).
fn parse_tool_done(line: &str) -> Option<(String, bool, u64)> {
    let rest = line.strip_prefix("[Tool done]")?.trim();
    let (name, tail) = rest.split_once(' ')?;
    let inner = tail.trim().strip_prefix('(')?.strip_suffix(')')?;
    let mut parts = inner.split(',').map(str::trim);
    let status = parts.next()?;
    let _bytes = parts.next();
    let ms = parts.next().and_then(go_duration_ms).unwrap_or(0);
    Some((name.to_owned(), status == "ok", ms))
}

/// Milliseconds of a Go `time.Duration` string (`850µs`, `12ms`, `1.5s`, `1m2.5s`,
/// `2h0m0s`, `0s`); `None` if it is not one.
fn go_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let text = text.strip_prefix('-').unwrap_or(text);
    if text == "0" {
        return Some(0);
    }
    let mut rest = text;
    let mut total_ns = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ns += value * scale;
    }
    if text.is_empty() || !total_ns.is_finite() {
        return None;
    }
    Some((total_ns / 1e6).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catpaw_tool_lines_parse() {
        // Exactly as catpaw's `fmt.Sprintf("[Tool] %s %s", ToolName, FormatToolArgsDisplay(..))`.
        let line = |t: &str| {
            let l = parse_tool_line(t);
            (l.wire_name, l.tool, l.args)
        };
        assert_eq!(
            line(r#"[Tool] call_tool disk_usage {"mount":"/"}"#),
            (
                "call_tool".into(),
                "disk_usage".into(),
                json!({"mount": "/"})
            )
        );
        assert_eq!(
            line("[Tool] call_tool mem_info"),
            ("call_tool".into(), "mem_info".into(), json!({}))
        );
        assert_eq!(
            line("[Tool] call_tool ps_top not json"),
            (
                "call_tool".into(),
                "ps_top".into(),
                json!({"_raw": "not json"})
            )
        );
        // A direct tool: the display is empty (note catpaw's trailing space).
        assert_eq!(
            line("[Tool] cpu_usage "),
            ("cpu_usage".into(), "cpu_usage".into(), json!({}))
        );
        assert_eq!(
            line("[Tool] list_tools network"),
            (
                "list_tools".into(),
                "list_tools".into(),
                json!({"category": "network"})
            )
        );
        assert_eq!(
            line("[Tool] exec_shell df -h /var"),
            (
                "exec_shell".into(),
                "exec_shell".into(),
                json!({"command": "df -h /var"})
            )
        );
        assert_eq!(
            line("[Shell] uptime"),
            (
                "exec_shell".into(),
                "exec_shell".into(),
                json!({"command": "uptime"})
            )
        );
        assert_eq!(
            parse_tool_done("[Tool done] call_tool (ok, 120B, 1.5s)"),
            Some(("call_tool".into(), true, 1500))
        );
        assert_eq!(
            parse_tool_done("[Tool done] x (error, 0B, 850ms)"),
            Some(("x".into(), false, 850))
        );
        assert_eq!(
            parse_tool_done("[Tool done] call_tool (ok, 9B, 1m2.5s)"),
            Some(("call_tool".into(), true, 62_500))
        );
        assert_eq!(parse_tool_done("nonsense"), None);
    }

    #[test]
    fn go_durations_parse() {
        for (text, ms) in [
            ("0s", 0),
            ("850µs", 1),
            ("850μs", 1),
            ("400us", 0),
            ("999ns", 0),
            ("12ms", 12),
            ("1.234567891s", 1235),
            ("1m2.5s", 62_500),
            ("2h0m0s", 7_200_000),
            ("1h1m1.001s", 3_661_001),
        ] {
            assert_eq!(go_duration_ms(text), Some(ms), "{text}");
        }
        for bad in ["", "5", "1.5x", "ms", "1..2s"] {
            assert_eq!(go_duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn v1_diagnose_params_carry_descriptions() {
        let mut p = Map::new();
        p.insert("alert".into(), json!("disk /data 95% full"));
        v1_descriptions(&mut p);
        assert_eq!(p["descriptions"], "disk /data 95% full");
        let mut p = Map::new();
        p.insert("descriptions".into(), json!("kept"));
        p.insert("alert".into(), json!("not this"));
        v1_descriptions(&mut p);
        assert_eq!(p["descriptions"], "kept");
    }
}
