//! Remote sessions: the hub link as one more transport of the multiplexer (hard rule 1).
//!
//! A `session_start` becomes an ordinary mux session (created with the hub's session id and
//! the restricted remote toolset). Two kinds of mux clients serve it:
//!
//! * one **relay** connection per session, attached from the first event, whose frames are
//!   forwarded to the hub — verbatim as `session_event` under version 2, translated to
//!   catpaw's `session_output` stages under version 1;
//! * one **user** connection per hub user (and class), through which that user's input,
//!   answers and cancels reach the mux with the user's identity, so the multiplexer's
//!   ordering and permission rules hold across the relay exactly as for local clients.
//!
//! Under version 1 there is no way to ask a remote user for approval, so the relay (a human
//! client named "hub link (v1)") denies every permission prompt, and the session says so.

use crate::outbox::LinkOut;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tether_engine::tools::ToolRegistry;
use tether_mux::outbound::{Next, OutboundReceiver};
use tether_mux::{Connection, Identity, Mux, SessionOptions};
use tether_proto::link::{
    DiagnoseReport, LinkFrame, LinkMessage, SessionAnswer, SessionAttach, SessionCancel,
    SessionDetach, SessionError, SessionInput, SessionOutput, SessionStart, encode_session_event,
    error_code, refusal,
};
use tether_proto::{
    Answer, Attach, CallId, Class, Decision, EventBody, Input, Mode, Op, Policy, ReplyFrame,
    Request, RequestId, Scope, ServerFrame, SessionId, SessionRef, StopReason, TurnId,
};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Default `max_remote_sessions`.
pub const DEFAULT_MAX_REMOTE_SESSIONS: usize = 4;
/// Default `remote_idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest a hub-driven op may wait for the multiplexer's reply.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the host's owner allows remote sessions to do.
#[derive(Clone)]
pub struct RemoteConfig {
    pub max_sessions: usize,
    pub idle_timeout: Duration,
    /// The tools a remote session may use (read-only ones by default).
    pub tools: ToolRegistry,
    /// Session types the hub may start.
    pub session_types: Vec<Mode>,
    /// Whether a real model is configured (remote chat needs one).
    pub model_configured: bool,
}

/// The hub link's sessions. Cheap to clone.
#[derive(Clone)]
pub struct RemoteSessions {
    inner: Arc<Inner>,
}

struct Inner {
    mux: Mux,
    cfg: RemoteConfig,
    permits: Arc<Semaphore>,
    sessions: std::sync::Mutex<HashMap<String, Arc<RemoteSession>>>,
}

struct RemoteSession {
    hub_id: String,
    mode: Mode,
    version: u32,
    out: LinkOut,
    users: Mutex<HashMap<(String, Class), Arc<UserConn>>>,
    /// Stops the relay.
    cancel: CancellationToken,
    running_turn: std::sync::Mutex<Option<TurnId>>,
    params: Map<String, Value>,
    _permit: OwnedSemaphorePermit,
}

/// A hub user's connection to the mux: requests in, replies back; events are drained (the
/// relay forwards them once for everybody).
struct UserConn {
    conn: Connection,
    replies: Mutex<mpsc::Receiver<ReplyFrame>>,
    next_id: std::sync::atomic::AtomicU64,
    drain: tokio::task::JoinHandle<()>,
}

impl Drop for UserConn {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

impl UserConn {
    fn start(mux: &Mux, identity: Identity) -> Arc<UserConn> {
        let (conn, mut rx) = mux.connect(identity);
        let (tx, replies) = mpsc::channel(16);
        let drain = tokio::spawn(async move {
            while let Next::Frame(bytes) = rx.next().await {
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    continue;
                };
                if let Ok(ServerFrame::Reply(reply)) = ServerFrame::decode(text)
                    && tx.send(reply).await.is_err()
                {
                    break;
                }
            }
        });
        Arc::new(UserConn {
            conn,
            replies: Mutex::new(replies),
            next_id: std::sync::atomic::AtomicU64::new(1),
            drain,
        })
    }

    /// Runs one op as this user and returns the multiplexer's reply.
    async fn call(&self, op: Op) -> ReplyFrame {
        let mut replies = self.replies.lock().await;
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let want = RequestId::from(id);
        self.conn
            .handle(Request {
                id: want.clone(),
                op,
            })
            .await;
        let wait = async {
            while let Some(reply) = replies.recv().await {
                if reply.re.as_ref() == Some(&want) {
                    return Some(reply);
                }
            }
            None
        };
        match tokio::time::timeout(OP_TIMEOUT, wait).await {
            Ok(Some(reply)) => reply,
            _ => ReplyFrame::err(
                Some(want),
                tether_proto::ErrorBody::new(
                    tether_proto::Reason::Internal,
                    "no reply from the session",
                ),
            ),
        }
    }
}

fn class_of(name: Option<&str>) -> Class {
    name.and_then(Class::parse).unwrap_or(Class::Human)
}

fn user_identity(user: &str, class: Class) -> Identity {
    let user = if user.trim().is_empty() {
        "hub user"
    } else {
        user
    };
    Identity {
        principal: format!("hub:{user}"),
        class,
        name: user.to_owned(),
    }
}

/// Hub session ids become mux session ids: keep them to a safe shape.
fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

impl RemoteSessions {
    pub fn new(mux: Mux, cfg: RemoteConfig) -> RemoteSessions {
        mux.set_remote_tools(cfg.tools.clone());
        RemoteSessions {
            inner: Arc::new(Inner {
                mux,
                permits: Arc::new(Semaphore::new(cfg.max_sessions.max(1))),
                cfg,
                sessions: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Remote sessions currently held (what `heartbeat.active_sessions` reports).
    pub fn active(&self) -> usize {
        self.inner.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    fn get(&self, hub_id: &str) -> Option<Arc<RemoteSession>> {
        self.inner.sessions.lock().ok()?.get(hub_id).cloned()
    }

    fn remove(&self, hub_id: &str) {
        if let Ok(mut s) = self.inner.sessions.lock() {
            s.remove(hub_id);
        }
    }

    /// The link went down: every remote session ends.
    pub async fn on_down(&self, reason: &str) {
        let all: Vec<Arc<RemoteSession>> = self
            .inner
            .sessions
            .lock()
            .map(|mut s| s.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        for s in all {
            s.cancel.cancel();
            let _ = tokio::time::timeout(
                Duration::from_secs(20),
                self.inner
                    .mux
                    .close_session(&SessionId(s.hub_id.clone()), reason),
            )
            .await;
        }
    }

    /// Handles one session message from the hub. `payload_error` is set when the frame's
    /// payload could not be decoded (a `session_start` is then acked "invalid payload").
    pub async fn handle(&self, frame: LinkFrame, out: &LinkOut) {
        match frame.message {
            LinkMessage::SessionStart(start) => self.start(&frame.id, start, out).await,
            LinkMessage::SessionInput(input) => self.input(&frame.id, input, out).await,
            LinkMessage::SessionCancel(cancel) => self.cancel(cancel).await,
            LinkMessage::SessionAttach(attach) => self.attach(&frame.id, attach, out).await,
            LinkMessage::SessionDetach(detach) => self.detach(&frame.id, detach, out).await,
            LinkMessage::SessionAnswer(answer) => self.answer(&frame.id, answer, out).await,
            _ => {}
        }
    }

    /// Acks a `session_start` whose payload did not decode.
    pub async fn refuse_invalid(&self, frame_id: &str, out: &LinkOut) {
        out.ack(frame_id, false, Some(refusal::INVALID_PAYLOAD))
            .await;
    }

    async fn start(&self, frame_id: &str, start: SessionStart, out: &LinkOut) {
        let sid_for_log = start.session_id.clone();
        let refuse = |why: &'static str| async move {
            tracing::info!(session = %sid_for_log, reason = why, "refused a remote session");
            out.ack(frame_id, false, Some(why)).await;
        };
        if start.session_id.is_empty() {
            return refuse(refusal::MISSING_SESSION_ID).await;
        }
        if !valid_session_id(&start.session_id) {
            return refuse(refusal::INVALID_PAYLOAD).await;
        }
        let mode = Mode::parse(&start.session_type);
        let allowed = |m: Mode| self.inner.cfg.session_types.contains(&m);
        match mode {
            Some(Mode::Chat) if !(self.inner.cfg.model_configured && allowed(Mode::Chat)) => {
                return refuse(refusal::CHAT_ENGINE_UNAVAILABLE).await;
            }
            Some(m @ (Mode::Diagnose | Mode::Inspect)) if !allowed(m) => {
                return refuse(refusal::DIAGNOSE_ENGINE_UNAVAILABLE).await;
            }
            _ => {}
        }
        let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else {
            return refuse(refusal::MAX_CONCURRENT).await;
        };
        let exists_here = self.get(&start.session_id).is_some();
        let exists_in_mux = self
            .inner
            .mux
            .list_sessions()
            .sessions
            .iter()
            .any(|s| s.session_id.as_str() == start.session_id);
        if exists_here || exists_in_mux {
            return refuse(refusal::DUPLICATE_SESSION_ID).await;
        }
        out.ack(frame_id, true, None).await;

        // Accepted; from here on problems are session errors (catpaw's order).
        let Some(mode) = mode else {
            out.session_error(
                &start.session_id,
                &format!("unknown session type: {}", start.session_type),
                error_code::INVALID_TYPE,
            )
            .await;
            return;
        };
        let plugin = start
            .params
            .get("plugin")
            .and_then(Value::as_str)
            .unwrap_or("");
        if mode == Mode::Inspect && plugin.is_empty() {
            out.session_error(
                &start.session_id,
                "plugin is required for inspect",
                error_code::MISSING_PLUGIN,
            )
            .await;
            return;
        }
        let version = out.version();
        let class = if version >= 2 {
            class_of(start.class.as_deref())
        } else {
            Class::Human
        };
        let user = UserConn::start(&self.inner.mux, user_identity(&start.user_name, class));
        let policy = start
            .policy
            .as_deref()
            .and_then(Policy::parse)
            .unwrap_or(Policy::Human);
        let mut params = start.params.clone();
        // The chat's opening message is sent as input below, not kept as a param.
        let message = params
            .remove("message")
            .and_then(|m| m.as_str().map(str::to_owned))
            .filter(|m| !m.trim().is_empty() && mode == Mode::Chat);
        if mode != Mode::Chat
            && let Some(m) = start.params.get("message")
        {
            params.insert("message".into(), m.clone());
        }
        let created = self.inner.mux.create_session(
            Some(user.conn.client().clone()),
            mode,
            Some(format!("{} by {} (hub)", mode, start.user_name)),
            policy,
            params.clone(),
            SessionOptions {
                tools: Some(self.inner.cfg.tools.clone()),
                remote: true,
                session_id: Some(SessionId(start.session_id.clone())),
            },
        );
        if let Err(e) = created {
            let code = if mode == Mode::Chat {
                error_code::CHAT_INIT_FAILED
            } else {
                error_code::DIAGNOSE_FAILED
            };
            out.session_error(&start.session_id, &e.message, code).await;
            return;
        }
        let session = Arc::new(RemoteSession {
            hub_id: start.session_id.clone(),
            mode,
            version,
            out: out.clone(),
            users: Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
            running_turn: std::sync::Mutex::new(None),
            params,
            _permit: permit,
        });
        if let Ok(mut s) = self.inner.sessions.lock() {
            s.insert(start.session_id.clone(), session.clone());
        }
        // The relay attaches from the first event, so nothing the session did is missed.
        let relay_identity = if version >= 2 {
            Identity {
                principal: "hub-link".into(),
                class: Class::Observer,
                name: "hub link".into(),
            }
        } else {
            Identity {
                principal: "hub-link".into(),
                class: Class::Human,
                name: "hub link (v1)".into(),
            }
        };
        let (relay, relay_rx) = self.inner.mux.connect(relay_identity);
        let sid = SessionId(start.session_id.clone());
        relay
            .handle(Request {
                id: RequestId::from(0),
                op: Op::Attach(Attach {
                    session_id: sid.clone(),
                    after_seq: Some(0),
                }),
            })
            .await;
        let _ = user
            .call(Op::Attach(Attach {
                session_id: sid.clone(),
                after_seq: None,
            }))
            .await;
        session
            .users
            .lock()
            .await
            .insert((start.user_name.clone(), class), user.clone());
        let this = self.clone();
        let s2 = session.clone();
        tokio::spawn(async move {
            run_relay(this.clone(), s2.clone(), relay, relay_rx).await;
            this.remove(&s2.hub_id);
        });
        if let Some(message) = message {
            let reply = user
                .call(Op::Input(Input {
                    session_id: sid,
                    text: message,
                    queue: true,
                }))
                .await;
            if let Some(e) = reply.error {
                out.session_error(
                    &session.hub_id,
                    &e.to_string(),
                    error_code::CHAT_INIT_FAILED,
                )
                .await;
            }
        }
    }

    async fn user(&self, session: &RemoteSession, name: &str, class: Class) -> Arc<UserConn> {
        let mut users = session.users.lock().await;
        users
            .entry((name.to_owned(), class))
            .or_insert_with(|| UserConn::start(&self.inner.mux, user_identity(name, class)))
            .clone()
    }

    /// Reports the outcome of a hub user's op: under version 2 as an `ack` (with the client
    /// protocol's reason and result); a refusal under version 1 as a `session_error`.
    async fn report(&self, frame_id: &str, session: &RemoteSession, reply: ReplyFrame) {
        if session.version >= 2 {
            session.out.ack_reply(frame_id, &reply).await;
        } else if let Some(e) = reply.error {
            session
                .out
                .session_error(
                    &session.hub_id,
                    &e.to_string(),
                    error_code::ENGINE_UNAVAILABLE,
                )
                .await;
        }
    }

    async fn unknown(&self, frame_id: &str, hub_id: &str, out: &LinkOut) {
        if out.version() >= 2 {
            out.ack_reply(
                frame_id,
                &ReplyFrame::err(
                    None,
                    tether_proto::ErrorBody::new(
                        tether_proto::Reason::UnknownSession,
                        format!("no remote session {hub_id} on this agent"),
                    ),
                ),
            )
            .await;
        } else {
            tracing::debug!(session = hub_id, "session message for an unknown session");
        }
    }

    async fn input(&self, frame_id: &str, input: SessionInput, out: &LinkOut) {
        let Some(session) = self.get(&input.session_id) else {
            return self.unknown(frame_id, &input.session_id, out).await;
        };
        if input.message.trim().is_empty() {
            // Refused like any other input: never dropped without a word.
            let refusal = ReplyFrame::err(
                None,
                tether_proto::ErrorBody::new(
                    tether_proto::Reason::BadRequest,
                    "message: an input needs some text",
                ),
            );
            return self.report(frame_id, &session, refusal).await;
        }
        let (name, class, queue) = if session.version >= 2 {
            (
                input.user_name.clone().unwrap_or_default(),
                class_of(input.class.as_deref()),
                input.queue,
            )
        } else {
            // catpaw buffers a chat's inputs and runs them in order: queue them.
            (String::new(), Class::Human, true)
        };
        let name = if name.is_empty() {
            self.first_user(&session).await
        } else {
            name
        };
        let user = self.user(&session, &name, class).await;
        let reply = user
            .call(Op::Input(Input {
                session_id: SessionId(session.hub_id.clone()),
                text: input.message,
                queue,
            }))
            .await;
        self.report(frame_id, &session, reply).await;
    }

    async fn first_user(&self, session: &RemoteSession) -> String {
        session
            .users
            .lock()
            .await
            .keys()
            .next()
            .map(|(n, _)| n.clone())
            .unwrap_or_default()
    }

    async fn cancel(&self, cancel: SessionCancel) {
        let Some(session) = self.get(&cancel.session_id) else {
            return;
        };
        if let (Some(turn_id), true) = (&cancel.turn_id, session.version >= 2) {
            // Version 2: cancel just this turn, as the operator who asked.
            let name = cancel.user_name.clone().unwrap_or_default();
            let user = self
                .user(&session, &name, class_of(cancel.class.as_deref()))
                .await;
            let reply = user
                .call(Op::Cancel(tether_proto::Cancel {
                    session_id: SessionId(session.hub_id.clone()),
                    turn_id: TurnId(turn_id.clone()),
                }))
                .await;
            if let Some(e) = reply.error {
                tracing::info!(session = %session.hub_id, error = %e, "hub cancel refused");
            }
            return;
        }
        let reason = if cancel.reason.is_empty() {
            "cancelled by the hub".to_owned()
        } else {
            format!("cancelled by the hub: {}", cancel.reason)
        };
        // Closing cancels the running turn first, then closes: one event sequence.
        if let Err(e) = self
            .inner
            .mux
            .close_session(&SessionId(session.hub_id.clone()), &reason)
            .await
        {
            tracing::warn!(session = %session.hub_id, error = %e, "cannot close a cancelled remote session");
        }
    }

    async fn attach(&self, frame_id: &str, attach: SessionAttach, out: &LinkOut) {
        let Some(session) = self.get(&attach.session_id) else {
            return self.unknown(frame_id, &attach.session_id, out).await;
        };
        let user = self
            .user(&session, &attach.user_name, class_of(Some(&attach.class)))
            .await;
        // The hub replays history to its operators itself; the agent-side attach makes the
        // user present (and eligible to answer prompts).
        let reply = user
            .call(Op::Attach(Attach {
                session_id: SessionId(session.hub_id.clone()),
                after_seq: None,
            }))
            .await;
        self.report(frame_id, &session, reply).await;
    }

    async fn detach(&self, frame_id: &str, detach: SessionDetach, out: &LinkOut) {
        let Some(session) = self.get(&detach.session_id) else {
            return self.unknown(frame_id, &detach.session_id, out).await;
        };
        let mut users = session.users.lock().await;
        let keys: Vec<(String, Class)> = users
            .keys()
            .filter(|(n, _)| *n == detach.user_name)
            .cloned()
            .collect();
        let mut last = ReplyFrame::ok(RequestId::from(0), json!({}));
        for key in keys {
            if let Some(user) = users.remove(&key) {
                last = user
                    .call(Op::Detach(SessionRef {
                        session_id: SessionId(session.hub_id.clone()),
                    }))
                    .await;
                user.conn.close("detached").await;
            }
        }
        drop(users);
        self.report(frame_id, &session, last).await;
    }

    async fn answer(&self, frame_id: &str, answer: SessionAnswer, out: &LinkOut) {
        let Some(session) = self.get(&answer.session_id) else {
            return self.unknown(frame_id, &answer.session_id, out).await;
        };
        let Some(decision) = Decision::parse(&answer.decision) else {
            return self
                .report(
                    frame_id,
                    &session,
                    ReplyFrame::err(
                        None,
                        tether_proto::ErrorBody::new(
                            tether_proto::Reason::BadRequest,
                            format!("decision `{}` is not allow or deny", answer.decision),
                        ),
                    ),
                )
                .await;
        };
        let user = self
            .user(&session, &answer.user_name, class_of(Some(&answer.class)))
            .await;
        let reply = user
            .call(Op::Answer(Answer {
                session_id: SessionId(session.hub_id.clone()),
                call_id: CallId(answer.call_id),
                decision,
                scope: answer.scope.as_deref().and_then(Scope::parse),
                via: None,
            }))
            .await;
        self.report(frame_id, &session, reply).await;
    }
}

/// catpaw's duration style: `850ms`, `1.234s`.
fn go_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{}s", (ms as f64 / 1000.0 * 1000.0).round() / 1000.0)
    }
}

/// Version-1 translation state of one session.
#[derive(Default)]
struct V1 {
    /// Text since the last tool call: the round's answer, or the final report.
    text: String,
    /// Tool names by call id, for `[Tool done] name`.
    tools: HashMap<String, String>,
    done_sent: bool,
}

impl V1 {
    fn output(
        session: &RemoteSession,
        delta: String,
        stage: &str,
        metadata: Option<Value>,
    ) -> LinkMessage {
        LinkMessage::SessionOutput(SessionOutput {
            session_id: session.hub_id.clone(),
            delta,
            stage: stage.to_owned(),
            done: false,
            report: None,
            metadata: metadata.and_then(|m| m.as_object().cloned()),
        })
    }

    fn done(session: &RemoteSession, report: Option<String>) -> LinkMessage {
        LinkMessage::SessionOutput(SessionOutput {
            session_id: session.hub_id.clone(),
            delta: String::new(),
            stage: String::new(),
            done: true,
            report,
            metadata: None,
        })
    }
}

/// Forwards a session's events to the hub until it closes; closes an idle chat.
async fn run_relay(
    sessions: RemoteSessions,
    session: Arc<RemoteSession>,
    relay: Connection,
    mut rx: OutboundReceiver,
) {
    let mut v1 = V1::default();
    let idle_timeout = sessions.inner.cfg.idle_timeout;
    let idle_applies = session.mode == Mode::Chat || session.version >= 2;
    let mut idle_since: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    loop {
        let deadline = idle_since
            .filter(|_| idle_applies)
            .map(|t| t + idle_timeout);
        let next = tokio::select! {
            biased;
            _ = session.cancel.cancelled() => break,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                let reason = format!(
                    "closed after {} without activity (remote_idle_timeout)",
                    humantime::format_duration(idle_timeout)
                );
                let sid = SessionId(session.hub_id.clone());
                let mux = sessions.inner.mux.clone();
                // Closing publishes session_closed, which ends this loop below.
                tokio::spawn(async move { let _ = mux.close_session(&sid, &reason).await; });
                idle_since = None;
                continue;
            }
            next = rx.next() => next,
        };
        let bytes = match next {
            Next::Frame(b) => b,
            Next::Evicted(_) | Next::Closed => break,
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let Ok(ServerFrame::Event(event)) = ServerFrame::decode(text) else {
            continue;
        };
        match &event.body {
            EventBody::TurnStarted { turn_id, .. } => {
                idle_since = None;
                if let Ok(mut t) = session.running_turn.lock() {
                    *t = Some(turn_id.clone());
                }
            }
            EventBody::TurnEnded { .. } => {
                idle_since = Some(tokio::time::Instant::now());
                if let Ok(mut t) = session.running_turn.lock() {
                    *t = None;
                }
            }
            _ => {}
        }
        let closed = matches!(event.body, EventBody::SessionClosed { .. });
        if session.version >= 2 {
            let id = uuid::Uuid::now_v7().to_string();
            session
                .out
                .send_text(encode_session_event(&id, &session.hub_id, text))
                .await;
            if let EventBody::TurnEnded {
                stop: StopReason::Completed,
                ..
            } = &event.body
                && session.mode == Mode::Diagnose
            {
                send_report(&sessions, &session).await;
            }
        } else {
            translate_v1(&sessions, &session, &relay, &mut v1, &event.body).await;
        }
        if closed {
            if session.version < 2 && !v1.done_sent {
                session.out.send(V1::done(&session, None)).await;
            }
            break;
        }
    }
    relay.close("session over").await;
}

/// v2: the report of a finished diagnosis goes to the hub.
async fn send_report(sessions: &RemoteSessions, session: &RemoteSession) {
    let report = sessions
        .inner
        .mux
        .session_report(&SessionId(session.hub_id.clone()))
        .await
        .unwrap_or_default();
    if report.is_empty() {
        return;
    }
    let alert_key = session
        .params
        .get("alert_key")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    session
        .out
        .send(LinkMessage::DiagnoseReport(DiagnoseReport {
            alert_key,
            session_id: Some(session.hub_id.clone()),
            report,
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }))
        .await;
}

async fn translate_v1(
    sessions: &RemoteSessions,
    session: &RemoteSession,
    relay: &Connection,
    st: &mut V1,
    body: &EventBody,
) {
    let out = &session.out;
    match body {
        EventBody::TurnStarted { .. } => {
            st.text.clear();
            out.send(V1::output(
                session,
                "[Round 1] AI thinking...".into(),
                "thinking",
                None,
            ))
            .await;
        }
        EventBody::TextDelta { text, .. } => st.text.push_str(text),
        EventBody::ToolCall {
            call_id,
            tool,
            args,
            ..
        } => {
            if !st.text.trim().is_empty() {
                let said = std::mem::take(&mut st.text);
                out.send(V1::output(session, said, "answer", None)).await;
            }
            st.text.clear();
            st.tools.insert(call_id.to_string(), tool.clone());
            out.send(V1::output(
                session,
                format!("[Tool] {tool} {args}"),
                "tool_call",
                None,
            ))
            .await;
        }
        EventBody::PermissionRequested { call_id, tool, .. } => {
            // Version 1 cannot ask a remote user: deny, and say so.
            let _ = relay
                .handle(Request {
                    id: RequestId::from(1),
                    op: Op::Answer(Answer {
                        session_id: SessionId(session.hub_id.clone()),
                        call_id: call_id.clone(),
                        decision: Decision::Deny,
                        scope: None,
                        via: None,
                    }),
                })
                .await;
            out.send(V1::output(
                session,
                format!(
                    "[Tool denied] {tool}: it needs approval, and this hub (protocol v1) cannot ask for it"
                ),
                "tool_result",
                None,
            ))
            .await;
        }
        EventBody::ToolResult {
            call_id,
            ok,
            output,
            duration_ms,
            ..
        } => {
            let tool = st
                .tools
                .remove(call_id.as_str())
                .unwrap_or_else(|| "tool".into());
            let status = if *ok { "ok" } else { "error" };
            out.send(V1::output(
                session,
                format!(
                    "[Tool done] {tool} ({status}, {}B, {})",
                    output.len(),
                    go_duration(*duration_ms)
                ),
                "tool_result",
                None,
            ))
            .await;
        }
        EventBody::Notice { message, .. } => {
            out.send(V1::output(session, message.clone(), "thinking", None))
                .await;
        }
        EventBody::TurnEnded { stop, error, .. } => {
            let text = std::mem::take(&mut st.text);
            match (session.mode, stop) {
                (Mode::Chat, StopReason::Completed) => {
                    out.send(V1::output(
                        session,
                        text,
                        "answer",
                        Some(json!({"turn_done": true})),
                    ))
                    .await;
                }
                (Mode::Chat, _) => {
                    let why = error.clone().unwrap_or_else(|| format!("turn {stop}"));
                    out.send(V1::output(
                        session,
                        why,
                        "error",
                        Some(json!({"turn_done": true})),
                    ))
                    .await;
                }
                (_, StopReason::Completed) => {
                    // An inspection or diagnosis is one report: deliver it and end.
                    out.send(V1::done(session, Some(text))).await;
                    st.done_sent = true;
                    let sid = SessionId(session.hub_id.clone());
                    let mux = sessions.inner.mux.clone();
                    tokio::spawn(async move {
                        let _ = mux.close_session(&sid, "finished").await;
                    });
                }
                (_, StopReason::Cancelled) => {}
                (_, _) => {
                    let why = error.clone().unwrap_or_else(|| format!("turn {stop}"));
                    out.session_error(&session.hub_id, &why, error_code::DIAGNOSE_FAILED)
                        .await;
                    st.done_sent = true;
                    let sid = SessionId(session.hub_id.clone());
                    let mux = sessions.inner.mux.clone();
                    tokio::spawn(async move {
                        let _ = mux.close_session(&sid, "failed").await;
                    });
                }
            }
        }
        _ => {}
    }
}

/// `session_error` helper shape (v1: always followed by the final `done` output).
pub(crate) fn session_error(session_id: &str, error: &str, code: &str) -> [LinkMessage; 2] {
    [
        LinkMessage::SessionError(SessionError {
            session_id: session_id.to_owned(),
            error: error.to_owned(),
            code: code.to_owned(),
        }),
        LinkMessage::SessionOutput(SessionOutput {
            session_id: session_id.to_owned(),
            delta: String::new(),
            stage: String::new(),
            done: true,
            report: None,
            metadata: None,
        }),
    ]
}
