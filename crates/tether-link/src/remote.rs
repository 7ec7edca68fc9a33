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
//!
//! Version 1 also keeps catpaw's session rules (`digcore/server/session_handler.go`): only a
//! chat takes `session_input`, and an empty one is ignored; `session_error` is always followed
//! by the final `{delta: "", stage: "", done: true}` output, and after that final frame nothing
//! more is sent for the session; a `session_cancel` removes the session at once and the final
//! frame is the only one that follows it.

use crate::outbox::LinkOut;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tether_host::tools::ToolRegistry;
use tether_mux::outbound::{Next, OutboundReceiver};
use tether_mux::{Connection, Identity, Mux, SessionOptions};
use tether_proto::link::{
    DiagnoseReport, LinkFrame, LinkMessage, SessionAnswer, SessionAttach, SessionCancel,
    SessionDetach, SessionError, SessionInput, SessionNotice, SessionOutput, SessionStart,
    encode_session_event, error_code, refusal,
};
use tether_proto::{
    Answer, Attach, CallId, Class, ClientId, ClientInfo, Decision, EventBody, Input, Mode,
    NoticeLevel, Op, Policy, Reason, ReplyFrame, Request, RequestId, ResolveCause, Scope,
    ServerFrame, SessionId, SessionRef, StopReason, TurnId,
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
    /// Whether the agent's config names a model provider (remote chat needs one); the built-in
    /// demo script counts when `[model]` names it.
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
    /// By hub connection (`client_id`), else by user name, and class.
    users: Mutex<HashMap<(String, Class), Arc<UserConn>>>,
    /// Stops the relay.
    cancel: CancellationToken,
    running_turn: std::sync::Mutex<Option<TurnId>>,
    params: Map<String, Value>,
    /// Version 1: what may still be sent (held across each send, so nothing can slip out
    /// after the final frame).
    v1: Mutex<V1Gate>,
    /// Handed on to the session's next relay when the hub resumes it.
    permit: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
}

/// Version 1's end-of-session rule (catpaw's): once the final `done: true` output is sent,
/// nothing more goes out for the session; after the hub's `session_cancel`, only that final
/// frame does (catpaw cancels the session's context and its deferred send is all that follows).
#[derive(Default)]
struct V1Gate {
    done: bool,
    cancelled: bool,
}

impl RemoteSession {
    /// Version 1: sends one frame of the session's output, unless it has ended or was
    /// cancelled.
    async fn v1_send(&self, message: LinkMessage) {
        let gate = self.v1.lock().await;
        if !gate.done && !gate.cancelled {
            self.out.send(message).await;
        }
    }

    /// Version 1: ends the session for the hub, once — `session_error` (when given) and the
    /// final `done` output (with the report, when there is one). After a cancel it is the
    /// bare final frame, as catpaw sends it. Returns whether this call sent it.
    async fn v1_finish(&self, error: Option<(&str, &str)>, report: Option<String>) -> bool {
        let mut gate = self.v1.lock().await;
        if gate.done {
            return false;
        }
        gate.done = true;
        let (error, report) = if gate.cancelled {
            (None, None)
        } else {
            (error, report)
        };
        if let Some((error, code)) = error {
            self.out
                .send(LinkMessage::SessionError(SessionError {
                    session_id: self.hub_id.clone(),
                    error: error.to_owned(),
                    code: code.to_owned(),
                }))
                .await;
        }
        // catpaw's `report` is `omitempty`: an empty one is no report.
        self.out
            .send(V1::done(self, report.filter(|r| !r.is_empty())))
            .await;
        true
    }
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

/// A hub user as the multiplexer knows it. With the hub connection's `client_id`
/// (`<principal>/<n>`) the principal is the hub credential's, so the permission rules compare
/// credentials, not connections, while each connection is a client of its own.
fn user_identity(user: &str, class: Class, client_id: Option<&str>) -> Identity {
    let user = if user.trim().is_empty() {
        "hub user"
    } else {
        user
    };
    let principal = match client_id {
        Some(id) => ClientId(id.to_owned()).principal().to_owned(),
        None => user.to_owned(),
    };
    Identity {
        principal: format!("hub:{principal}"),
        class,
        name: user.to_owned(),
    }
}

/// The key of a hub user's connection in `RemoteSession::users`.
fn user_key(user: &str, class: Class, client_id: Option<&str>) -> (String, Class) {
    (client_id.unwrap_or(user).to_owned(), class)
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

    /// Forgets `session` unless another relay of it (a resumed one) took its place.
    fn remove(&self, session: &Arc<RemoteSession>) {
        if let Ok(mut s) = self.inner.sessions.lock()
            && s.get(&session.hub_id)
                .is_some_and(|held| Arc::ptr_eq(held, session))
        {
            s.remove(&session.hub_id);
        }
    }

    /// The link went down. Version-1 sessions end (a catpaw hub never resumes them).
    /// Version-2 sessions stay: their relay keeps running (so the idle timeout holds) with
    /// nobody to send to, their hub users leave (nobody can answer a prompt from there), and
    /// the hub resumes them after it registers again (`session_attach` with `after_seq`).
    ///
    /// The sessions are those held when it is called (the work runs when the returned future
    /// is polled): a session the hub resumes on the next connection meanwhile is not touched.
    pub fn on_down(&self, reason: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let this = self.clone();
        let reason = reason.to_owned();
        let held: Vec<Arc<RemoteSession>> = self
            .inner
            .sessions
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        async move {
            for s in held {
                if s.version >= 2 {
                    let users: Vec<Arc<UserConn>> =
                        s.users.lock().await.drain().map(|(_, u)| u).collect();
                    for u in users {
                        u.conn.close("the hub link went down").await;
                    }
                    continue;
                }
                this.remove(&s);
                s.cancel.cancel();
                let _ = tokio::time::timeout(
                    Duration::from_secs(20),
                    this.inner
                        .mux
                        .close_session(&SessionId(s.hub_id.clone()), &reason),
                )
                .await;
            }
        }
    }

    /// Handles one session message from the hub. `payload_error` is set when the frame's
    /// payload could not be decoded (a `session_start` is then acked "invalid payload").
    pub async fn handle(&self, frame: LinkFrame, out: &LinkOut) {
        let v1 = out.version() < 2;
        match frame.message {
            // Not catpaw messages: a catpaw agent ignores types it does not know.
            m @ (LinkMessage::SessionAttach(_)
            | LinkMessage::SessionDetach(_)
            | LinkMessage::SessionAnswer(_)
            | LinkMessage::SessionNotice(_))
                if v1 =>
            {
                tracing::debug!(
                    kind = m.kind(),
                    "ignored a version-2 message on a version-1 link"
                );
            }
            LinkMessage::SessionStart(start) => self.start(&frame.id, start, out).await,
            LinkMessage::SessionInput(input) => self.input(&frame.id, input, out).await,
            LinkMessage::SessionCancel(cancel) => self.cancel(cancel).await,
            LinkMessage::SessionAttach(attach) => self.attach(&frame.id, attach, out).await,
            LinkMessage::SessionDetach(detach) => self.detach(&frame.id, detach, out).await,
            LinkMessage::SessionAnswer(answer) => self.answer(&frame.id, answer, out).await,
            LinkMessage::SessionNotice(notice) => self.notice(notice).await,
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
        let client_id = start.client_id.as_deref().filter(|_| version >= 2);
        let user = UserConn::start(
            &self.inner.mux,
            user_identity(&start.user_name, class, client_id),
        );
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
        let created = self
            .inner
            .mux
            .create_session(
                Some(user.conn.client()),
                mode,
                // The hub's title, so both show the same (a version-1 hub sends none).
                Some(
                    start
                        .title
                        .clone()
                        .filter(|t| !t.trim().is_empty())
                        .unwrap_or_else(|| format!("{} by {} (hub)", mode, start.user_name)),
                ),
                policy,
                params.clone(),
                SessionOptions {
                    tools: Some(self.inner.cfg.tools.clone()),
                    remote: true,
                    session_id: Some(SessionId(start.session_id.clone())),
                },
            )
            .await;
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
            v1: Mutex::new(V1Gate::default()),
            permit: std::sync::Mutex::new(Some(permit)),
        });
        if let Ok(mut s) = self.inner.sessions.lock() {
            s.insert(start.session_id.clone(), session.clone());
        }
        // The relay attaches from the first event, so nothing the session did is missed.
        self.spawn_relay(&session, 0).await;
        let sid = SessionId(start.session_id.clone());
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
            .insert(user_key(&start.user_name, class, client_id), user.clone());
        if let Some(message) = message {
            let reply = user
                .call(Op::Input(Input {
                    session_id: sid.clone(),
                    text: message,
                    queue: true,
                }))
                .await;
            if let Some(e) = reply.error {
                if version >= 2 {
                    out.session_error(
                        &session.hub_id,
                        &e.to_string(),
                        error_code::CHAT_INIT_FAILED,
                    )
                    .await;
                } else {
                    // catpaw: a chat that cannot start reports it and ends.
                    session
                        .v1_finish(Some((&e.to_string(), error_code::CHAT_INIT_FAILED)), None)
                        .await;
                    self.remove(&session);
                    let _ = self
                        .inner
                        .mux
                        .close_session(&sid, "its opening message was refused")
                        .await;
                }
            }
        }
    }

    async fn user(
        &self,
        session: &RemoteSession,
        name: &str,
        class: Class,
        client_id: Option<&str>,
    ) -> Arc<UserConn> {
        let mut users = session.users.lock().await;
        users
            .entry(user_key(name, class, client_id))
            .or_insert_with(|| {
                UserConn::start(&self.inner.mux, user_identity(name, class, client_id))
            })
            .clone()
    }

    /// Starts the relay of `session` from the event after `after_seq` (0: from the first).
    async fn spawn_relay(&self, session: &Arc<RemoteSession>, after_seq: u64) {
        let relay_identity = if session.version >= 2 {
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
        relay
            .handle(Request {
                id: RequestId::from(0),
                op: Op::Attach(Attach {
                    session_id: SessionId(session.hub_id.clone()),
                    after_seq: Some(after_seq),
                }),
            })
            .await;
        let this = self.clone();
        let s2 = session.clone();
        tokio::spawn(async move {
            run_relay(this.clone(), s2.clone(), relay, relay_rx).await;
            this.remove(&s2);
        });
    }

    /// Version 2: the hub resumes a session after registering again (`session_attach` with
    /// `after_seq`). The relay starts over on this connection from the event after
    /// `after_seq`; after an agent restart the session, restored by the multiplexer from its
    /// event log, is taken up again. Only sessions started from the hub qualify.
    async fn resume(&self, frame_id: &str, attach: &SessionAttach, after_seq: u64, out: &LinkOut) {
        let sid = SessionId(attach.session_id.clone());
        let refuse = |reason, message: String| {
            ReplyFrame::err(None, tether_proto::ErrorBody::new(reason, message))
        };
        let Some(summary) = self.inner.mux.remote_session(&sid) else {
            return self.unknown(frame_id, &attach.session_id, out).await;
        };
        if after_seq > summary.last_seq {
            let reply = refuse(
                tether_proto::Reason::BadRequest,
                format!(
                    "after_seq {after_seq} is beyond the session's last event ({})",
                    summary.last_seq
                ),
            );
            out.ack_reply(frame_id, &reply).await;
            return;
        }
        let old = self.get(&attach.session_id);
        let handed_on = old
            .as_ref()
            .and_then(|o| o.permit.lock().ok().and_then(|mut p| p.take()));
        let permit = match handed_on {
            Some(p) => p,
            None => match self.inner.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let reply = refuse(
                        tether_proto::Reason::Overloaded,
                        refusal::MAX_CONCURRENT.to_owned(),
                    );
                    out.ack_reply(frame_id, &reply).await;
                    return;
                }
            },
        };
        if let Some(old) = &old {
            old.cancel.cancel();
            let users: Vec<Arc<UserConn>> =
                old.users.lock().await.drain().map(|(_, u)| u).collect();
            for u in users {
                u.conn.close("the hub resumed the session").await;
            }
        }
        let session = Arc::new(RemoteSession {
            hub_id: attach.session_id.clone(),
            mode: summary.mode,
            version: out.version(),
            out: out.clone(),
            users: Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
            running_turn: std::sync::Mutex::new(None),
            params: old.as_ref().map(|o| o.params.clone()).unwrap_or_default(),
            v1: Mutex::new(V1Gate::default()),
            permit: std::sync::Mutex::new(Some(permit)),
        });
        if let Ok(mut s) = self.inner.sessions.lock() {
            s.insert(attach.session_id.clone(), session.clone());
        }
        self.spawn_relay(&session, after_seq).await;
        tracing::info!(session = %attach.session_id, after_seq, "the hub resumed a remote session");
        out.ack_reply(
            frame_id,
            &ReplyFrame::ok(RequestId::from(0), json!({"last_seq": summary.last_seq})),
        )
        .await;
    }

    /// Reports the outcome of a hub user's op as an `ack` (with the client protocol's reason
    /// and result). Version 1 has no such reply (catpaw answers only `session_start`).
    async fn report(&self, frame_id: &str, session: &RemoteSession, reply: ReplyFrame) {
        if session.version >= 2 {
            session.out.ack_reply(frame_id, &reply).await;
        } else if let Some(e) = reply.error {
            tracing::info!(session = %session.hub_id, error = %e, "refused a hub request");
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
        if session.version < 2 {
            return self.input_v1(&session, input).await;
        }
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
        let (name, class, queue) = (
            input.user_name.clone().unwrap_or_default(),
            class_of(input.class.as_deref()),
            input.queue,
        );
        let name = if name.is_empty() {
            self.first_user(&session).await
        } else {
            name
        };
        let client_id = input.client_id.as_deref().filter(|_| session.version >= 2);
        let user = self.user(&session, &name, class, client_id).await;
        let reply = user
            .call(Op::Input(Input {
                session_id: SessionId(session.hub_id.clone()),
                text: input.message,
                queue,
            }))
            .await;
        self.report(frame_id, &session, reply).await;
    }

    /// Version 1, catpaw's `handleSessionInput`: only a chat takes input and an empty message
    /// is ignored; the inputs of a chat run in order (queued behind a running turn).
    async fn input_v1(&self, session: &RemoteSession, input: SessionInput) {
        if session.mode != Mode::Chat || input.message.trim().is_empty() {
            tracing::debug!(session = %session.hub_id, mode = %session.mode,
                "ignored a session_input (not a chat, or no text), as catpaw does");
            return;
        }
        let name = self.first_user(session).await;
        let user = self.user(session, &name, Class::Human, None).await;
        let reply = user
            .call(Op::Input(Input {
                session_id: SessionId(session.hub_id.clone()),
                text: input.message,
                queue: true,
            }))
            .await;
        match reply.error {
            None => {}
            // The session is ending: its final frame is on the way.
            Some(e) if matches!(e.reason, Reason::SessionClosed | Reason::UnknownSession) => {
                tracing::debug!(session = %session.hub_id, error = %e, "input for an ending session");
            }
            // To the hub, this input's turn failed: catpaw's shape for a failed chat turn. The
            // session goes on.
            Some(e) => {
                session
                    .v1_send(V1::output(
                        session,
                        e.to_string(),
                        "error",
                        Some(json!({"turn_done": true})),
                    ))
                    .await;
            }
        }
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
            // Restored after a restart and not resumed yet: a close still closes it.
            let sid = SessionId(cancel.session_id.clone());
            if cancel.turn_id.is_none() && self.inner.mux.remote_session(&sid).is_some() {
                let reason = format!("cancelled by the hub: {}", cancel.reason);
                let _ = self.inner.mux.close_session(&sid, &reason).await;
            }
            return;
        };
        if session.version < 2 {
            // catpaw removes the session at once (later inputs find nothing) and cancels it;
            // the final frame is all that follows.
            session.v1.lock().await.cancelled = true;
            self.remove(&session);
        }
        if let (Some(turn_id), true) = (&cancel.turn_id, session.version >= 2) {
            // Version 2: cancel just this turn, as the operator who asked.
            let name = cancel.user_name.clone().unwrap_or_default();
            let user = self
                .user(
                    &session,
                    &name,
                    class_of(cancel.class.as_deref()),
                    cancel.client_id.as_deref(),
                )
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
        if let (Some(after_seq), true) = (attach.after_seq, out.version() >= 2) {
            return self.resume(frame_id, &attach, after_seq, out).await;
        }
        let Some(session) = self.get(&attach.session_id) else {
            return self.unknown(frame_id, &attach.session_id, out).await;
        };
        let user = self
            .user(
                &session,
                &attach.user_name,
                class_of(Some(&attach.class)),
                attach.client_id.as_deref(),
            )
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
        let who = detach.client_id.as_deref().unwrap_or(&detach.user_name);
        let keys: Vec<(String, Class)> = users.keys().filter(|(n, _)| n == who).cloned().collect();
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
            .user(
                &session,
                &answer.user_name,
                class_of(Some(&answer.class)),
                answer.client_id.as_deref(),
            )
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

impl RemoteSessions {
    /// Version 2: the hub's `session_notice`, published in the session as a `notice` event
    /// (nothing to answer: a session that is gone has nobody to tell).
    async fn notice(&self, notice: SessionNotice) {
        let Some(session) = self.get(&notice.session_id) else {
            return;
        };
        let level = match notice.level.as_str() {
            "warning" => NoticeLevel::Warning,
            "error" => NoticeLevel::Error,
            _ => NoticeLevel::Info,
        };
        let id = SessionId(session.hub_id.clone());
        if let Err(e) = self
            .inner
            .mux
            .session_notice(&id, level, notice.message)
            .await
        {
            tracing::debug!(session = %session.hub_id, error = %e.message, "a hub notice was not published");
        }
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
            if session.version < 2 {
                session.v1_finish(None, None).await;
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
    match body {
        EventBody::TurnStarted { .. } => {
            st.text.clear();
            session
                .v1_send(V1::output(
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
                session
                    .v1_send(V1::output(session, said, "answer", None))
                    .await;
            }
            st.text.clear();
            st.tools.insert(call_id.to_string(), tool.clone());
            session
                .v1_send(V1::output(
                    session,
                    format!("[Tool] {tool} {args}"),
                    "tool_call",
                    None,
                ))
                .await;
        }
        EventBody::PermissionRequested { call_id, .. } => {
            // Version 1 cannot ask a remote user: deny (and say so once it is resolved).
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
        }
        EventBody::PermissionResolved {
            call_id,
            decision: Decision::Deny,
            by,
            cause,
            ..
        } => {
            // A note, not a result: the call's one `tool_result` frame follows, in catpaw's
            // `[Tool done]` form, so a hub pairing calls with results sees it end.
            let tool = st
                .tools
                .get(call_id.as_str())
                .cloned()
                .unwrap_or_else(|| "tool".into());
            let why = denial(&relay.client(), by.as_ref(), *cause);
            session
                .v1_send(V1::output(
                    session,
                    format!("[Tool denied] {tool}: {why}"),
                    "thinking",
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
            // Exactly one result frame per call, denied or not: catpaw's line.
            let status = if *ok { "ok" } else { "error" };
            session
                .v1_send(V1::output(
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
            session
                .v1_send(V1::output(session, message.clone(), "thinking", None))
                .await;
        }
        EventBody::TurnEnded { stop, error, .. } => {
            let text = std::mem::take(&mut st.text);
            match (session.mode, stop) {
                (Mode::Chat, StopReason::Completed) => {
                    session
                        .v1_send(V1::output(
                            session,
                            text,
                            "answer",
                            Some(json!({"turn_done": true})),
                        ))
                        .await;
                }
                (Mode::Chat, _) => {
                    // After a hub cancel the gate holds this back: catpaw's cancelled turn
                    // sends nothing.
                    let why = error.clone().unwrap_or_else(|| format!("turn {stop}"));
                    session
                        .v1_send(V1::output(
                            session,
                            why,
                            "error",
                            Some(json!({"turn_done": true})),
                        ))
                        .await;
                }
                (_, StopReason::Completed) => {
                    // An inspection or diagnosis is one report: deliver it and end.
                    session.v1_finish(None, Some(text)).await;
                    close_later(sessions, session, "finished");
                }
                (_, StopReason::Cancelled) => {}
                (_, _) => {
                    let why = error.clone().unwrap_or_else(|| format!("turn {stop}"));
                    session
                        .v1_finish(Some((&why, error_code::DIAGNOSE_FAILED)), None)
                        .await;
                    close_later(sessions, session, "failed");
                }
            }
        }
        _ => {}
    }
}

/// Why a tool call was not run, for its `[Tool denied]` frame.
fn denial(relay: &ClientInfo, by: Option<&ClientInfo>, cause: ResolveCause) -> String {
    match by {
        Some(c) if c == relay => {
            "it needs approval, and this hub (protocol v1) cannot ask for it".to_owned()
        }
        Some(c) => format!("denied by {}", c.name),
        None => format!("not approved ({cause})"),
    }
}

/// Closes the session in the background: the relay, which asks, must keep reading until the
/// close's `session_closed` arrives.
fn close_later(sessions: &RemoteSessions, session: &RemoteSession, reason: &'static str) {
    let sid = SessionId(session.hub_id.clone());
    let mux = sessions.inner.mux.clone();
    tokio::spawn(async move {
        let _ = mux.close_session(&sid, reason).await;
    });
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
