//! tether-mux: the multiplexer between transports and the engine.
//!
//! A transport authenticates a peer into an [`Identity`], calls [`Mux::connect`], feeds each
//! received frame to [`Connection::handle_text`], and writes whatever the
//! [`OutboundReceiver`](outbound::OutboundReceiver) yields. All policy lives here: total
//! ordering of input, originator tracking, permission arbitration, broadcast, replay, and the
//! slow-client rule.
//!
//! * [`session`] — one actor per session (the single owner of its state).
//! * [`outbound`] — the per-connection bounded queue with eviction and log-backed replay.
//! * [`arbitration`] — the pure rules of who may answer and act.

pub mod arbitration;
pub mod clock;
pub mod outbound;
mod session;
pub use session::prune_chunk;

use outbound::{Outbound, OutboundReceiver};
use serde_json::{Map, Value};
use session::{ConnRef, NewSession, OpMsg, SessionMap, SessionOp, Shared};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tether_engine::Engine;
use tether_engine::log::{EventLog, LogError};
use tether_host::tools::ToolRegistry;
use tether_proto::{
    CLIENT_PROTOCOL_VERSION, Class, ClientId, ClientInfo, DEFAULT_LIST_LIMIT, ErrorBody,
    HelloResult, ListSessions, Mode, NoticeLevel, Op, Policy, RawRequest, Reason, ReplyFrame,
    Request, RequestId, ServerInfo, SessionCreated, SessionId, SessionList, SessionState,
    SessionSummary,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Multiplexer settings.
#[derive(Clone, Debug)]
pub struct MuxConfig {
    pub server: ServerInfo,
    /// Frames a client may have queued before it is evicted.
    pub client_queue_frames: usize,
    /// Events kept per session; older ones are pruned (attach then gets `stream_gap`).
    pub retention_events: u64,
    /// A permission request is denied when nobody who may answer it has been attached for
    /// this long.
    pub permission_grace: Duration,
    /// A permission request is denied when it has waited this long, attended or not.
    pub permission_timeout: Option<Duration>,
    /// Ops queued per session before new ones are refused with `overloaded`.
    pub session_inbox: usize,
    /// Inputs a session holds queued behind its running turn; more are `overloaded`.
    pub max_queued_inputs: usize,
    /// Open (not closed) sessions one credential may have; more are `overloaded`.
    pub max_sessions_per_client: usize,
    /// A closed session is removed (from memory and the log) this long after it closed.
    pub closed_retention: Duration,
    /// How often a session whose events the log could not commit tries again.
    pub log_retry: Duration,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            server: ServerInfo {
                name: "tether".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            client_queue_frames: outbound::DEFAULT_QUEUE_FRAMES,
            retention_events: 10_000,
            permission_grace: Duration::from_secs(30),
            permission_timeout: None,
            session_inbox: 256,
            max_queued_inputs: 64,
            max_sessions_per_client: 100,
            closed_retention: Duration::from_secs(7 * 24 * 3600),
            log_retry: Duration::from_secs(2),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct MuxMetrics {
    /// Events committed and broadcast.
    pub events_published: AtomicU64,
    /// Clients evicted for not keeping up.
    pub evictions: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
}

/// Who a peer is, as its credential says. Never taken from what the peer sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Stable per credential: the token's name, or `uid:<n>` for a Unix peer.
    pub principal: String,
    pub class: Class,
    /// Display name.
    pub name: String,
}

/// Per-session choices made by the caller rather than the client (e.g. the hub link).
#[derive(Clone, Default)]
pub struct SessionOptions {
    /// The tools this session may use; the engine's full set when `None`.
    pub tools: Option<ToolRegistry>,
    /// Started from the hub (remote is untrusted: restricted tools survive a restart).
    pub remote: bool,
    /// Use this id instead of a fresh one (the hub names its sessions). Must be unused.
    pub session_id: Option<SessionId>,
}

/// The multiplexer. Cheap to clone.
#[derive(Clone)]
pub struct Mux {
    inner: Arc<Inner>,
}

/// Ops beyond the base protocol (e.g. `alert.send`), supplied by the binary. An extension
/// sees the authenticated client and the raw request, and returns the result or an error.
pub trait ExtensionOps: Send + Sync {
    /// Whether `op` is one of this extension's ops.
    fn handles(&self, op: &str) -> bool;
    fn call<'a>(
        &'a self,
        client: &'a ClientInfo,
        request: &'a RawRequest,
    ) -> futures_util::future::BoxFuture<'a, Result<Value, ErrorBody>>;
}

struct Inner {
    shared: Arc<Shared>,
    extensions: RwLock<Vec<Arc<dyn ExtensionOps>>>,
    sessions: Arc<SessionMap>,
    next_conn: AtomicU64,
    shutdown: CancellationToken,
}

impl Mux {
    /// Opens the multiplexer over `log`, restoring every stored session. Sessions whose turn
    /// was running when the previous process stopped get that turn ended with
    /// `stop: error, error: "agent restarted"`.
    pub fn open(config: MuxConfig, engine: Engine, log: EventLog) -> Result<Mux, LogError> {
        let rows = log.load_sessions()?;
        let sessions = Arc::new(RwLock::new(BTreeMap::new()));
        let shared = Arc::new(Shared {
            config,
            engine,
            log,
            tracker: TaskTracker::new(),
            metrics: Arc::new(MuxMetrics::default()),
            sessions: Arc::downgrade(&sessions),
            degraded: Mutex::new(HashMap::new()),
            remote_tools: Mutex::new(None),
        });
        let inner = Arc::new(Inner {
            shared: shared.clone(),
            sessions,
            next_conn: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            extensions: RwLock::new(Vec::new()),
        });
        let mux = Mux { inner };
        {
            let mut sessions = mux.sessions_write();
            for row in rows {
                let id = row.session_id.clone();
                let handle = session::spawn_restored(shared.clone(), row);
                sessions.insert(id, handle);
            }
        }
        Ok(mux)
    }

    /// Adds ops beyond the base protocol.
    pub fn add_extension(&self, ops: Arc<dyn ExtensionOps>) {
        if let Ok(mut e) = self.inner.extensions.write() {
            e.push(ops);
        }
    }

    fn extension_for(&self, op: &str) -> Option<Arc<dyn ExtensionOps>> {
        self.inner
            .extensions
            .read()
            .ok()?
            .iter()
            .find(|e| e.handles(op))
            .cloned()
    }

    /// Sets the toolset of sessions started from the hub (the hub link's `remote_tools`);
    /// every such session uses it from its next turn, restored ones included.
    pub fn set_remote_tools(&self, tools: ToolRegistry) {
        *tether_host::sync::lock(&self.inner.shared.remote_tools) = Some(tools);
    }

    pub fn config(&self) -> &MuxConfig {
        &self.inner.shared.config
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.shared.engine
    }

    pub fn log(&self) -> &EventLog {
        &self.inner.shared.log
    }

    /// Cancelled when shutdown begins; transports close their connections on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    fn sessions_read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<SessionId, session::SessionHandle>> {
        self.inner
            .sessions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sessions_write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<SessionId, session::SessionHandle>> {
        self.inner
            .sessions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a new connection for `identity`. The transport must drive the receiver and
    /// call [`Connection::close`] when the peer goes away.
    /// Counters for `/metrics`.
    pub fn metrics(&self) -> &MuxMetrics {
        &self.inner.shared.metrics
    }

    pub fn connect(&self, identity: Identity) -> (Connection, OutboundReceiver) {
        let conn_id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        self.inner
            .shared
            .metrics
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        let client = ClientInfo {
            client_id: ClientId(format!("{}/{conn_id}", identity.principal)),
            class: identity.class,
            name: identity.name,
        };
        let (outbound, receiver) = outbound::channel(
            self.config().client_queue_frames,
            Arc::new(self.log().clone()),
        );
        (
            Connection {
                mux: self.clone(),
                conn_id,
                client: Mutex::new(client),
                outbound,
                attached: Mutex::new(HashSet::new()),
            },
            receiver,
        )
    }

    /// Creates a session on behalf of `creator` (already authorised to act). A `diagnose` or
    /// `inspect` session whose params name what to look at starts its first turn at once,
    /// originated by the creator. Returns once the session's first event is committed.
    ///
    /// Refused: policy `any` chosen by anyone but a human (`forbidden`); a creator with
    /// `max_sessions_per_client` open sessions (`overloaded`); while the event log cannot
    /// write (`internal`).
    pub async fn create_session(
        &self,
        creator: Option<ClientInfo>,
        mode: Mode,
        title: Option<String>,
        policy: Policy,
        params: Map<String, Value>,
        options: SessionOptions,
    ) -> Result<SessionId, ErrorBody> {
        if self.inner.shutdown.is_cancelled() {
            return Err(ErrorBody::new(
                Reason::Overloaded,
                "the agent is shutting down",
            ));
        }
        if let Some(c) = &creator
            && arbitration::may_choose_policy(c.class, policy).is_err()
        {
            return Err(ErrorBody::new(
                Reason::Forbidden,
                format!(
                    "only a human-class client may choose policy `any` ({} is {}-class): under \
                     it agent-class clients answer each other's permission prompts",
                    c.name, c.class
                ),
            ));
        }
        if let Some(error) = self.inner.shared.log_failure() {
            return Err(ErrorBody::new(
                Reason::Internal,
                format!(
                    "the event log cannot write: {error}; no session can be created until it can"
                ),
            ));
        }
        let ready = {
            // The caller may name the session (the hub does); the name must be unused. The
            // checks and the insert happen under one write lock, so two creators cannot both
            // win.
            let mut sessions = self.sessions_write();
            let session_id = match &options.session_id {
                Some(id) if sessions.contains_key(id) => {
                    return Err(ErrorBody::new(
                        Reason::BadRequest,
                        format!("session {id} already exists"),
                    )
                    .with("session_id", id));
                }
                Some(id) => id.clone(),
                None => SessionId(uuid::Uuid::now_v7().to_string()),
            };
            if let Some(c) = &creator {
                let principal = c.client_id.principal();
                let max = self.config().max_sessions_per_client;
                let open = sessions
                    .values()
                    .filter(|h| h.owner.as_deref() == Some(principal))
                    .filter(|h| !h.closed.load(std::sync::atomic::Ordering::Acquire))
                    .count();
                if open >= max {
                    return Err(ErrorBody::new(
                        Reason::Overloaded,
                        format!(
                            "{} already has {open} open sessions, as many as one client may \
                             have; close one first",
                            c.name
                        ),
                    ));
                }
            }
            let (handle, ready) = session::spawn_new(
                self.inner.shared.clone(),
                NewSession {
                    creator,
                    session_id: session_id.clone(),
                    mode,
                    title,
                    policy,
                    params,
                    options,
                },
            );
            sessions.insert(session_id.clone(), handle);
            (session_id, ready)
        };
        let (session_id, ready) = ready;
        let error = match ready.await {
            Ok(Ok(())) => return Ok(session_id),
            Ok(Err(error)) => error,
            Err(_) => "the session stopped before its first event was written".to_owned(),
        };
        // Nothing of it was committed: it never existed.
        self.sessions_write().remove(&session_id);
        Err(ErrorBody::new(
            Reason::Internal,
            format!("the event log cannot write: {error}; the session was not created"),
        ))
    }

    /// Every session, oldest first.
    pub fn list_sessions(&self) -> SessionList {
        let mut sessions = self.summaries();
        sessions.sort_by(|a, b| list_key(a).cmp(&list_key(b)));
        SessionList {
            sessions,
            next: None,
        }
    }

    /// One page of `session.list`: sessions after `cursor`, oldest first, at most `limit`.
    pub fn list_page(&self, params: &ListSessions) -> Result<SessionList, ErrorBody> {
        let limit = params.limit.unwrap_or(DEFAULT_LIST_LIMIT).max(1);
        let after = match &params.cursor {
            None => None,
            Some(c) => Some(parse_cursor(c).ok_or_else(|| {
                ErrorBody::new(
                    Reason::BadRequest,
                    "field `cursor`: not a cursor from a `session.list` reply's `next`",
                )
            })?),
        };
        let mut sessions: Vec<SessionSummary> = self
            .summaries()
            .into_iter()
            .filter(|s| after.as_ref().is_none_or(|(t, id)| list_key(s) > (t, id)))
            .collect();
        sessions.sort_by(|a, b| list_key(a).cmp(&list_key(b)));
        let next = if sessions.len() > limit {
            sessions.truncate(limit);
            sessions
                .last()
                .map(|s| format!("{}|{}", s.created_at, s.session_id))
        } else {
            None
        };
        Ok(SessionList { sessions, next })
    }

    fn summaries(&self) -> Vec<SessionSummary> {
        self.sessions_read()
            .values()
            .filter_map(|h| h.summary.lock().ok().map(|s| s.clone()))
            .collect()
    }

    /// A session started from the hub (`SessionOptions::remote`), restored ones included;
    /// `None` for a local session or none at all. The hub link resumes only these: a hub never
    /// reaches a local session.
    pub fn remote_session(&self, id: &SessionId) -> Option<SessionSummary> {
        let sessions = self.sessions_read();
        let handle = sessions.get(id).filter(|h| h.remote)?;
        handle.summary.lock().ok().map(|s| s.clone())
    }

    /// Closes a session on the agent's own behalf (idle timeout, the hub link going away),
    /// with `reason` in its `session_closed` event. Waits until it is closed.
    pub async fn close_session(&self, id: &SessionId, reason: &str) -> Result<(), ErrorBody> {
        let Some(ops) = self.session_ops(id) else {
            return Err(ErrorBody::new(
                Reason::UnknownSession,
                format!("no session {id}"),
            ));
        };
        let (tx, rx) = oneshot::channel();
        ops.send(OpMsg::CloseWithReason {
            reason: reason.to_owned(),
            done: tx,
        })
        .await
        .map_err(|_| ErrorBody::new(Reason::Internal, "the session stopped"))?;
        rx.await
            .map_err(|_| ErrorBody::new(Reason::Internal, "the session stopped"))
    }

    /// Publishes a `notice` event in an open session (a message for its users from outside
    /// any turn: the hub saying the alert a diagnosis is about resolved). A closed session
    /// takes no more events: `session_closed`.
    pub async fn session_notice(
        &self,
        id: &SessionId,
        level: NoticeLevel,
        message: String,
    ) -> Result<(), ErrorBody> {
        let Some(ops) = self.session_ops(id) else {
            return Err(ErrorBody::new(
                Reason::UnknownSession,
                format!("no session {id}"),
            ));
        };
        let (tx, rx) = oneshot::channel();
        ops.send(OpMsg::Notice {
            level,
            message,
            done: tx,
        })
        .await
        .map_err(|_| ErrorBody::new(Reason::Internal, "the session stopped"))?;
        rx.await
            .map_err(|_| ErrorBody::new(Reason::Internal, "the session stopped"))?
    }

    /// The report of a diagnose session's last completed turn.
    pub async fn session_report(&self, id: &SessionId) -> Option<String> {
        let ops = self.session_ops(id)?;
        let (tx, rx) = oneshot::channel();
        ops.send(OpMsg::Report { done: tx }).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Sessions whose turn is running right now.
    pub fn active_sessions(&self) -> usize {
        self.list_sessions()
            .sessions
            .iter()
            .filter(|s| {
                matches!(
                    s.state,
                    SessionState::Running | SessionState::RequiresAction
                )
            })
            .count()
    }

    /// The log's error while some session cannot commit to it.
    pub fn log_failure(&self) -> Option<String> {
        self.inner.shared.log_failure()
    }

    fn session_ops(&self, id: &SessionId) -> Option<tokio::sync::mpsc::Sender<OpMsg>> {
        self.sessions_read().get(id).map(|h| h.ops.clone())
    }

    /// Ends every running turn with an event, persists every session, and signals transports
    /// to close their connections. Bounded: each session gets at most its turn-stop grace.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let handles: Vec<_> = self
            .sessions_read()
            .values()
            .map(|h| h.ops.clone())
            .collect();
        let mut waits = Vec::new();
        for ops in handles {
            let (tx, rx) = oneshot::channel();
            if ops.send(OpMsg::Shutdown { done: tx }).await.is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
        self.inner.shared.tracker.close();
        let _ =
            tokio::time::timeout(Duration::from_secs(20), self.inner.shared.tracker.wait()).await;
    }
}

/// One connected client. Requests are handled one at a time, in order, so replies come back
/// in request order.
pub struct Connection {
    mux: Mux,
    conn_id: u64,
    /// Who this connection is. Only its class changes, lowered by `hello` while the
    /// connection is attached to nothing (see [`arbitration::check_class_change`]); every op
    /// is judged by the class in force when it arrives.
    client: Mutex<ClientInfo>,
    outbound: Outbound,
    /// Sessions attached to (a successful `attach`, until `detach`).
    attached: Mutex<HashSet<SessionId>>,
}

impl Connection {
    /// Who this connection is now (its class may have been lowered by `hello`).
    pub fn client(&self) -> ClientInfo {
        tether_host::sync::lock(&self.client).clone()
    }

    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    pub fn mux(&self) -> &Mux {
        &self.mux
    }

    fn reply(&self, frame: ReplyFrame) {
        self.outbound.push_frame(frame.encode());
    }

    /// The connection as a session sees it, for one op.
    fn conn_ref(&self) -> ConnRef {
        ConnRef {
            conn_id: self.conn_id,
            client: self.client(),
            outbound: self.outbound.clone(),
        }
    }

    /// `hello`'s `class`: lowers the class every later op is judged by.
    fn change_class(&self, requested: Class) -> Result<(), ErrorBody> {
        let attached = tether_host::sync::lock(&self.attached).len();
        let mut client = tether_host::sync::lock(&self.client);
        arbitration::check_class_change(client.class, requested, attached)?;
        if client.class != requested {
            tracing::debug!(client = %client.client_id, from = %client.class, to = %requested, "class lowered");
            client.class = requested;
        }
        Ok(())
    }

    /// Replies with an error (e.g. a frame the transport could not decode).
    pub fn reply_error(&self, re: Option<RequestId>, error: ErrorBody) {
        self.reply(ReplyFrame::err(re, error));
    }

    /// Decodes and handles one text frame; the reply is queued on the outbound queue.
    pub async fn handle_text(&self, text: &str) {
        let raw = match RawRequest::parse(text) {
            Ok(raw) => raw,
            Err(e) => return self.reply(e.to_reply()),
        };
        if !Op::NAMES.contains(&raw.op.as_str())
            && let Some(ext) = self.mux.extension_for(&raw.op)
        {
            let client = self.client();
            let reply = match ext.call(&client, &raw).await {
                Ok(result) => ReplyFrame::ok(raw.id.clone(), result),
                Err(e) => ReplyFrame::err(Some(raw.id.clone()), e),
            };
            return self.reply(reply);
        }
        match Op::from_raw(&raw) {
            Ok(op) => self.handle(Request { id: raw.id, op }).await,
            Err(e) => self.reply(e.to_reply()),
        }
    }

    /// Handles one decoded request.
    pub async fn handle(&self, request: Request) {
        let re = request.id;
        let client = &self.client();
        match request.op {
            Op::Hello(hello) => {
                if let Some(name) = hello.client_name {
                    tracing::debug!(client = %client.client_id, client_name = %name, "hello");
                }
                if let Some(class) = hello.class
                    && let Err(e) = self.change_class(class)
                {
                    return self.reply(ReplyFrame::err(Some(re), e));
                }
                let client = &self.client();
                let server = self.mux.config().server.clone();
                self.reply(ReplyFrame::ok(
                    re,
                    HelloResult {
                        client_id: client.client_id.clone(),
                        class: client.class,
                        name: client.name.clone(),
                        protocol: CLIENT_PROTOCOL_VERSION,
                        server,
                    },
                ));
            }
            Op::SessionCreate(create) => {
                if arbitration::may_act(client.class).is_err() {
                    return self.reply(ReplyFrame::err(
                        Some(re),
                        ErrorBody::new(Reason::Forbidden, "observers cannot create sessions"),
                    ));
                }
                let result = self
                    .mux
                    .create_session(
                        Some(client.clone()),
                        create.mode,
                        create.title,
                        create.policy.unwrap_or(Policy::Human),
                        create.params.unwrap_or_default(),
                        SessionOptions::default(),
                    )
                    .await;
                match result {
                    Ok(session_id) => self.reply(ReplyFrame::ok(re, SessionCreated { session_id })),
                    Err(e) => self.reply(ReplyFrame::err(Some(re), e)),
                }
            }
            Op::SessionList(params) => match self.mux.list_page(&params) {
                Ok(page) => self.reply(ReplyFrame::ok(re, page)),
                Err(e) => self.reply(ReplyFrame::err(Some(re), e)),
            },
            Op::Attach(a) => {
                self.route(
                    re,
                    a.session_id,
                    SessionOp::Attach {
                        after_seq: a.after_seq,
                    },
                )
                .await
            }
            Op::Detach(d) => self.route(re, d.session_id, SessionOp::Detach).await,
            Op::Input(i) => {
                self.route(
                    re,
                    i.session_id,
                    SessionOp::Input {
                        text: i.text,
                        queue: i.queue,
                    },
                )
                .await
            }
            Op::Answer(a) => {
                self.route(
                    re,
                    a.session_id,
                    SessionOp::Answer {
                        call_id: a.call_id,
                        decision: a.decision,
                        scope: a.scope.unwrap_or(tether_proto::Scope::Once),
                        via: a.via,
                    },
                )
                .await
            }
            Op::Cancel(c) => {
                self.route(re, c.session_id, SessionOp::Cancel { turn_id: c.turn_id })
                    .await
            }
            Op::SessionClose(c) => self.route(re, c.session_id, SessionOp::Close).await,
        }
    }

    /// Hands an op to its session's actor and waits until the actor has replied.
    async fn route(&self, re: RequestId, session_id: SessionId, op: SessionOp) {
        let Some(ops) = self.mux.session_ops(&session_id) else {
            return self.reply(ReplyFrame::err(Some(re), unknown_session(&session_id)));
        };
        // Before the op: a disconnect while it is in flight must detach it too. Only a new
        // entry is undone when the attach fails (a failed re-attach leaves the first one).
        let attaching = matches!(op, SessionOp::Attach { .. })
            && tether_host::sync::lock(&self.attached).insert(session_id.clone());
        let detaching = matches!(op, SessionOp::Detach);
        let (done_tx, done_rx) = oneshot::channel();
        let msg = OpMsg::Op {
            conn: self.conn_ref(),
            re: re.clone(),
            op,
            done: done_tx,
        };
        match ops.try_send(msg) {
            Ok(()) => match done_rx.await {
                Ok(ok) => {
                    if detaching || (attaching && !ok) {
                        tether_host::sync::lock(&self.attached).remove(&session_id);
                    }
                }
                Err(_) => {
                    // The actor stopped before handling the op: it sent no reply.
                    self.reply(ReplyFrame::err(
                        Some(re),
                        ErrorBody::new(
                            Reason::Internal,
                            "the session stopped (agent shutting down)",
                        ),
                    ));
                }
            },
            Err(e) => {
                if attaching {
                    tether_host::sync::lock(&self.attached).remove(&session_id);
                }
                let error = match e {
                    tokio::sync::mpsc::error::TrySendError::Full(_) => ErrorBody::new(
                        Reason::Overloaded,
                        format!("session {session_id} has too many requests queued; retry shortly"),
                    ),
                    // The session was removed (retention) after it was looked up.
                    tokio::sync::mpsc::error::TrySendError::Closed(_)
                        if !self.mux.inner.shutdown.is_cancelled() =>
                    {
                        unknown_session(&session_id)
                    }
                    tokio::sync::mpsc::error::TrySendError::Closed(_) => ErrorBody::new(
                        Reason::Internal,
                        "the session stopped (agent shutting down)",
                    ),
                };
                self.reply(ReplyFrame::err(Some(re), error))
            }
        }
    }

    /// Detaches from every session (the peer went away or was evicted).
    pub async fn close(&self, reason: &str) {
        self.mux
            .inner
            .shared
            .metrics
            .connections_closed
            .fetch_add(1, Ordering::Relaxed);
        let sessions: Vec<SessionId> = self
            .attached
            .lock()
            .map(|mut a| a.drain().collect())
            .unwrap_or_default();
        for id in sessions {
            if let Some(ops) = self.mux.session_ops(&id) {
                let msg = OpMsg::Disconnected {
                    conn_id: self.conn_id,
                    reason: reason.to_owned(),
                };
                // Bounded: the actor drains its inbox; give up rather than hang on a stuck one.
                let _ = tokio::time::timeout(Duration::from_secs(5), ops.send(msg)).await;
            }
        }
    }
}

/// `unknown_session` for `id`.
pub(crate) fn unknown_session(id: &SessionId) -> ErrorBody {
    ErrorBody::new(Reason::UnknownSession, format!("no session {id}")).with("session_id", id)
}

/// The order of `session.list`: oldest first.
fn list_key(s: &SessionSummary) -> (&String, &SessionId) {
    (&s.created_at, &s.session_id)
}

/// A `next` cursor: `<created_at>|<session_id>` of the last row of the previous page.
fn parse_cursor(cursor: &str) -> Option<(String, SessionId)> {
    let (created_at, id) = cursor.split_once('|')?;
    humantime::parse_rfc3339(created_at).ok()?;
    (!id.is_empty()).then(|| (created_at.to_owned(), SessionId(id.to_owned())))
}
