//! The session actor: one task per session owns all of its state, so every decision about a
//! session — who is attached, which turn runs, who may answer, which `seq` comes next — is
//! made in one place, in one total order.
//!
//! Each loop iteration handles either one client op or a batch of turn messages, then
//! *flushes*: the events published during the iteration are committed to the event log in one
//! transaction and only then pushed to every attached client (hard rule 4). Nothing in a
//! handler awaits, so a flush is the only suspension point and an op always sees a fully
//! flushed session.
//!
//! When the log cannot commit (a full disk), the events stay with the actor, in order, and
//! the session is *degraded*: its clients are told (`log_unavailable`), its turn is stopped,
//! and it takes no new work. It retries the commit every `log_retry`; the first commit that
//! succeeds carries the withheld events and the repair (the stopped turn's `turn_ended`), and
//! then `log_restored` is sent. What clients are shown — snapshots, `session.list` — is always
//! what has been committed.

use crate::arbitration::{may_act, may_answer};
use crate::clock::now_rfc3339;
use crate::outbound::{OutItem, Outbound};
use crate::{MuxConfig, SessionOptions};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use tether_engine::log::{
    AppendJob, EventLog, LogError, QueueChange, QueuedRow, SessionRow, StoredEvent,
};
use tether_engine::turn::{AnswerRouter, Conversation, EventSink, PermissionAnswer, PermissionAsk};
use tether_engine::{Engine, TurnOutcome, TurnRequest};
use tether_host::tools::ToolRegistry;
use tether_proto::{
    Attached, CallId, ClientInfo, Control, Decision, Empty, ErrorBody, Event, EventBody,
    InputAccepted, InputId, Mode, NoticeLevel, PendingPermission, Policy, QueuedInput, Reason,
    ReplyFrame, RequestId, ResolveCause, Scope, Seq, SessionId, SessionState, SessionSummary,
    Snapshot, StopReason, TurnId, TurnRef,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Turn messages handled per flush at most (group commit size).
const TURN_BATCH: usize = 256;

/// The events a session's log may hold beyond `retention_events` before they are deleted.
///
/// Deleting the oldest events on every flush rewrote the left edge of the events B-tree (and
/// rebalanced it) at every commit: most of the log writer's time at a fast stream. So the log
/// holds between `retention` and `retention + prune_chunk(retention)` events of a session and
/// deletes the excess in one statement when it passes that bound: at most one delete per
/// chunk of events. Clients see exactly the last `retention` events either way (the
/// session's `first_seq`, and replay reports older ones as a gap even while the log still
/// holds them).
pub fn prune_chunk(retention: u64) -> u64 {
    (retention / 10).clamp(1, 1000)
}

/// The oldest event a session offers: the last `retention` of them, never before what the log
/// holds (`first_held`).
fn retained_first(first_held: Seq, last_seq: Seq, retention: u64) -> Seq {
    first_held.max((last_seq + 1).saturating_sub(retention.max(1)))
}

/// Queued inputs an attach snapshot shows at most (`queued_count` says how many there are).
const SNAPSHOT_QUEUED: usize = 16;

/// Bytes of queued text an attach snapshot carries at most, so that it stays far below the
/// 1 MiB message limit however long the queued inputs are.
const SNAPSHOT_QUEUED_BYTES: usize = 64 * 1024;

/// A connection as a session sees it.
#[derive(Clone)]
pub(crate) struct ConnRef {
    pub conn_id: u64,
    pub client: ClientInfo,
    pub outbound: Outbound,
}

impl ConnRef {
    fn reply_ok(&self, re: &RequestId, result: impl Serialize) {
        self.outbound
            .push_frame(ReplyFrame::ok(re.clone(), result).encode());
    }

    fn reply_err(&self, re: &RequestId, error: ErrorBody) {
        self.outbound
            .push_frame(ReplyFrame::err(Some(re.clone()), error).encode());
    }
}

/// Client ops routed to a session.
/// Longest `via` an answer may carry.
const MAX_VIA_BYTES: usize = 64;

#[derive(Debug)]
pub(crate) enum SessionOp {
    Attach {
        after_seq: Option<Seq>,
    },
    Detach,
    Input {
        text: String,
        queue: bool,
    },
    Answer {
        call_id: CallId,
        decision: Decision,
        scope: Scope,
        via: Option<String>,
    },
    Cancel {
        turn_id: TurnId,
    },
    Close,
}

pub(crate) enum OpMsg {
    /// A client op. The actor pushes exactly one reply to `conn`, then signals `done` with
    /// whether the op succeeded.
    Op {
        conn: ConnRef,
        re: RequestId,
        op: SessionOp,
        done: oneshot::Sender<bool>,
    },
    /// A connection went away (closed or evicted).
    Disconnected { conn_id: u64, reason: String },
    /// End the running turn (if any), persist, and stop.
    Shutdown { done: oneshot::Sender<()> },
    /// The report of the session's last completed diagnosis.
    Report {
        done: oneshot::Sender<Option<String>>,
    },
    /// Publish a `notice` (refused once the session is closed).
    Notice {
        level: NoticeLevel,
        message: String,
        done: oneshot::Sender<Result<(), ErrorBody>>,
    },
    /// Close on the agent's own behalf, with this reason.
    CloseWithReason {
        reason: String,
        done: oneshot::Sender<()>,
    },
}

enum TurnMsg {
    Event(EventBody),
    Ask(PermissionAsk, oneshot::Sender<PermissionAnswer>),
    Finished {
        turn_id: TurnId,
        outcome: TurnOutcome,
        conversation: Conversation,
    },
}

/// The handle the mux keeps for each session.
pub(crate) struct SessionHandle {
    pub ops: mpsc::Sender<OpMsg>,
    pub summary: Arc<Mutex<SessionSummary>>,
    /// The principal that created the session (its open sessions are limited).
    pub owner: Option<String>,
    /// Set as soon as the actor closes the session — before the close is committed and the
    /// summary shows it — so the close's reply and this agree for the per-client limit.
    pub closed: Arc<AtomicBool>,
    /// Started from the hub.
    pub remote: bool,
}

/// Every session the mux holds.
pub(crate) type SessionMap = RwLock<BTreeMap<SessionId, SessionHandle>>;

/// What a session keeps across restarts (the `data` column of its row).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Durable {
    params: Map<String, Value>,
    conversation: Conversation,
    #[serde(default)]
    turn: Option<TurnRef>,
    #[serde(default)]
    pending: Vec<PendingPermission>,
    /// Inputs queued by versions that kept the queue here: read once, then moved to rows of
    /// their own (an enqueue rewrote this whole row).
    #[serde(default, skip_serializing)]
    queue: Vec<QueuedInput>,
    #[serde(default)]
    closed_reason: Option<String>,
    #[serde(default)]
    remote: bool,
    #[serde(default)]
    report: Option<String>,
    /// The principal that created the session.
    #[serde(default)]
    owner: Option<String>,
    /// When the session was closed (RFC 3339); it is removed `closed_retention` later.
    #[serde(default)]
    closed_at: Option<String>,
}

/// An input waiting in the queue, with its place in the log's `queued_inputs`.
struct Queued {
    ord: u64,
    input: QueuedInput,
}

/// The log cannot commit: what went wrong, and when to try again.
struct Degraded {
    error: String,
    retry_at: Instant,
}

struct Attachment {
    conn_id: u64,
    client: ClientInfo,
    outbound: Outbound,
}

struct RunningTurn {
    turn_id: TurnId,
    originator: ClientInfo,
    cancel: CancellationToken,
    /// Stopped because the log could not commit (the error): it ends with `stop: error`, and
    /// what it still emits is dropped.
    stopped_by_log: Option<String>,
}

struct Pending {
    info: PendingPermission,
    answer: Option<oneshot::Sender<PermissionAnswer>>,
    requested_at: Instant,
    /// Since when nobody who could answer has been attached.
    unattended_since: Option<Instant>,
}

/// What the actor shares with the mux.
pub(crate) struct Shared {
    pub config: MuxConfig,
    pub engine: Engine,
    pub log: EventLog,
    pub tracker: TaskTracker,
    pub metrics: Arc<crate::MuxMetrics>,
    /// The mux's sessions, for a session that expires to remove itself.
    pub sessions: Weak<SessionMap>,
    /// Sessions that cannot commit, with the log's error.
    pub degraded: Mutex<HashMap<SessionId, String>>,
    /// The toolset of sessions started from the hub (the hub link's `remote_tools`), read
    /// when such a session starts a turn: a session restored before the hub link set it
    /// still gets it.
    pub remote_tools: Mutex<Option<ToolRegistry>>,
}

impl Shared {
    /// The tools a session started from the hub may use now.
    pub fn remote_tools(&self) -> ToolRegistry {
        let configured = tether_host::sync::lock(&self.remote_tools).clone();
        configured.unwrap_or_else(|| self.engine.tools.read_only_for_hub())
    }

    /// The log's error while it is failing as a whole: some session cannot commit, and the
    /// last write failed too (one session's bad write does not stop the others).
    pub fn log_failure(&self) -> Option<String> {
        let any = self.degraded.lock().ok()?.values().next().cloned()?;
        self.log.last_failure().map(|_| any)
    }

    fn set_degraded(&self, id: &SessionId, error: Option<String>) {
        if let Ok(mut d) = self.degraded.lock() {
            match error {
                Some(e) => {
                    d.insert(id.clone(), e);
                }
                None => {
                    d.remove(id);
                }
            }
        }
    }
}

pub(crate) struct NewSession {
    /// Who created it: the originator of the first turn when the session starts by itself.
    pub creator: Option<ClientInfo>,
    pub session_id: SessionId,
    pub mode: Mode,
    pub title: Option<String>,
    pub policy: Policy,
    pub params: Map<String, Value>,
    pub options: SessionOptions,
}

struct Actor {
    shared: Arc<Shared>,
    id: SessionId,
    mode: Mode,
    title: Option<String>,
    policy: Policy,
    created_at: String,
    state: SessionState,
    last_seq: Seq,
    /// The oldest event offered to clients (the last `retention_events`).
    first_seq: Seq,
    /// Every event with `seq <= pruned_through` has been deleted from the log; it may still
    /// hold some older than `first_seq` (see [`prune_chunk`]).
    pruned_through: Seq,
    durable: Durable,
    tools: ToolRegistry,
    attached: Vec<Attachment>,
    turn: Option<RunningTurn>,
    queue: VecDeque<Queued>,
    /// The `ord` of the next queued input.
    next_ord: u64,
    /// Queue changes not yet committed.
    queue_changes: Vec<QueueChange>,
    pending: Vec<Pending>,
    resolved: HashSet<CallId>,
    /// Events published but not yet committed and broadcast.
    batch: Vec<StoredEvent>,
    /// The row must be rewritten at the next flush.
    dirty: bool,
    closing: Option<String>,
    close_waiters: Vec<(ConnRef, RequestId, oneshot::Sender<bool>)>,
    /// Closes requested by the agent itself, waiting for the running turn to end.
    close_done: Vec<oneshot::Sender<()>>,
    shutting_down: bool,
    summary: Arc<Mutex<SessionSummary>>,
    /// Shared with [`SessionHandle::closed`].
    closed_flag: Arc<AtomicBool>,
    turn_tx: mpsc::Sender<TurnMsg>,
    /// Recovery events to publish when the actor starts (restored sessions).
    restored_turn: Option<TurnRef>,
    /// Set while the log cannot commit.
    degraded: Option<Degraded>,
    /// The session as of its last commit: what attach and `session.list` show while
    /// degraded.
    committed: Snapshot,
    /// The queue changed in a commit since `committed.queued` was taken.
    queue_view_stale: bool,
    /// When a closed session is removed.
    expire_at: Option<Instant>,
    /// A new session: told whether its first commit succeeded.
    ready: Option<oneshot::Sender<Result<(), String>>>,
}

fn summary_of(a: &Actor) -> SessionSummary {
    let c = &a.committed;
    SessionSummary {
        session_id: a.id.clone(),
        mode: a.mode,
        state: c.state,
        title: a.title.clone(),
        created_at: a.created_at.clone(),
        clients: c.clients.clone(),
        last_seq: c.last_seq,
    }
}

/// The first queued inputs, as many as fit in a snapshot.
fn queued_prefix(queue: &VecDeque<Queued>) -> Vec<QueuedInput> {
    let mut bytes = 0;
    let mut out = Vec::new();
    for q in queue.iter().take(SNAPSHOT_QUEUED) {
        bytes += q.input.text.len();
        if bytes > SNAPSHOT_QUEUED_BYTES {
            break;
        }
        out.push(q.input.clone());
    }
    out
}

fn queued_row(q: &Queued) -> QueuedRow {
    QueuedRow {
        ord: q.ord,
        data: serde_json::to_string(&q.input).unwrap_or_else(|_| "{}".into()),
    }
}

/// Starts the actor of a brand-new session. Its first event (`session_state: idle`) and its
/// row are committed before any op reaches it; the receiver learns whether that commit
/// succeeded (when it did not, the actor has stopped and nothing of the session remains).
pub(crate) fn spawn_new(
    shared: Arc<Shared>,
    new: NewSession,
) -> (SessionHandle, oneshot::Receiver<Result<(), String>>) {
    let conversation = shared.engine.new_conversation(new.mode);
    let durable = Durable {
        params: new.params,
        conversation,
        remote: new.options.remote,
        owner: new
            .creator
            .as_ref()
            .map(|c| c.client_id.principal().to_owned()),
        ..Durable::default()
    };
    let tools = new
        .options
        .tools
        .unwrap_or_else(|| shared.engine.tools.clone());
    let first_input = new.creator.and_then(|c| {
        let input =
            shared
                .engine
                .initial_input(&durable.conversation, new.mode, &durable.params)?;
        Some((c, input))
    });
    let (ready_tx, ready_rx) = oneshot::channel();
    let handle = spawn(
        shared,
        Start {
            id: new.session_id,
            mode: new.mode,
            title: new.title,
            policy: new.policy,
            created_at: now_rfc3339(),
            state: SessionState::Idle,
            last_seq: 0,
            first_seq: 1,
            durable,
            queued: Vec::new(),
            tools,
            fresh: Some((first_input, ready_tx)),
        },
    );
    (handle, ready_rx)
}

/// Starts the actor of a session loaded from the log, ending a turn the previous run left
/// behind.
pub(crate) fn spawn_restored(shared: Arc<Shared>, row: SessionRow) -> SessionHandle {
    let durable: Durable = match serde_json::from_str(&row.data) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(session = %row.session_id, error = %e, "unreadable session data; starting it fresh");
            Durable::default()
        }
    };
    let tools = if durable.remote {
        shared.remote_tools()
    } else {
        shared.engine.tools.clone()
    };
    spawn(
        shared,
        Start {
            id: row.session_id,
            mode: row.mode,
            title: row.title,
            policy: row.policy,
            created_at: row.created_at,
            state: row.state,
            last_seq: row.last_seq,
            first_seq: row.first_seq,
            durable,
            queued: row.queued,
            tools,
            fresh: None,
        },
    )
}

/// What an actor starts from.
struct Start {
    id: SessionId,
    mode: Mode,
    title: Option<String>,
    policy: Policy,
    created_at: String,
    state: SessionState,
    last_seq: Seq,
    first_seq: Seq,
    durable: Durable,
    queued: Vec<QueuedRow>,
    tools: ToolRegistry,
    /// A new session: the input its first turn starts with, and who learns whether its
    /// first commit succeeded.
    #[allow(clippy::type_complexity)]
    fresh: Option<(
        Option<(ClientInfo, tether_engine::prompts::InitialInput)>,
        oneshot::Sender<Result<(), String>>,
    )>,
}

fn spawn(shared: Arc<Shared>, start: Start) -> SessionHandle {
    let Start {
        id,
        mode,
        title,
        policy,
        created_at,
        state,
        last_seq,
        first_seq,
        mut durable,
        queued,
        tools,
        fresh,
    } = start;
    // `first_seq` is the oldest event the log holds (a restored session may hold more than
    // the retention: it is pruned in chunks).
    let pruned_through = first_seq.saturating_sub(1);
    let first_seq = retained_first(first_seq, last_seq, shared.config.retention_events);
    let (ops_tx, ops_rx) = mpsc::channel(shared.config.session_inbox);
    let (turn_tx, turn_rx) = mpsc::channel(TURN_BATCH);
    let remote = durable.remote;
    let restored_turn = durable.turn.take();
    let pending_restored = std::mem::take(&mut durable.pending);
    let mut dirty = fresh.is_some();

    // The queue: its own rows, or (written by an older version) the list in the row, which
    // is moved to rows of its own at the first commit.
    let mut queue_changes = Vec::new();
    let mut next_ord = queued.iter().map(|q| q.ord + 1).max().unwrap_or(1);
    let mut queue = VecDeque::new();
    for row in queued {
        match serde_json::from_str::<QueuedInput>(&row.data) {
            Ok(input) => queue.push_back(Queued {
                ord: row.ord,
                input,
            }),
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "unreadable queued input; dropped");
                queue_changes.push(QueueChange::Remove { ord: row.ord });
            }
        }
    }
    for input in std::mem::take(&mut durable.queue) {
        let q = Queued {
            ord: next_ord,
            input,
        };
        next_ord += 1;
        queue_changes.push(QueueChange::Add(queued_row(&q)));
        queue.push_back(q);
        dirty = true;
    }

    // A closed session is removed `closed_retention` after it was closed, across restarts.
    let mut expire_at = None;
    if state == SessionState::Closed {
        let retention = shared.config.closed_retention;
        let age = durable
            .closed_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
        if age.is_none() {
            durable.closed_at = Some(now_rfc3339());
            dirty = true;
        }
        expire_at = Some(Instant::now() + retention.saturating_sub(age.unwrap_or_default()));
    }

    let owner = durable.owner.clone();
    let (first_input, ready) = match fresh {
        Some((input, ready)) => (input, Some(ready)),
        None => (None, None),
    };
    let summary = Arc::new(Mutex::new(SessionSummary {
        session_id: id.clone(),
        mode,
        state,
        title: title.clone(),
        created_at: created_at.clone(),
        clients: vec![],
        last_seq,
    }));
    let closed = Arc::new(AtomicBool::new(state == SessionState::Closed));
    let mut actor = Actor {
        shared: shared.clone(),
        committed: Snapshot {
            session_id: id.clone(),
            mode,
            state,
            title: title.clone(),
            policy,
            turn: None,
            pending_permissions: Vec::new(),
            clients: Vec::new(),
            queued: Vec::new(),
            queued_count: 0,
            last_seq,
            first_seq: first_seq.min(last_seq + 1),
        },
        id,
        mode,
        title,
        policy,
        created_at,
        state,
        last_seq,
        first_seq,
        pruned_through,
        durable,
        tools,
        attached: Vec::new(),
        turn: None,
        queue,
        next_ord,
        queue_changes,
        pending: Vec::new(),
        resolved: HashSet::new(),
        batch: Vec::new(),
        dirty,
        closing: None,
        close_waiters: Vec::new(),
        close_done: Vec::new(),
        shutting_down: false,
        summary: summary.clone(),
        closed_flag: closed.clone(),
        turn_tx,
        restored_turn,
        degraded: None,
        queue_view_stale: false,
        expire_at,
        ready,
    };
    actor.refresh_committed(true);
    shared.tracker.spawn(async move {
        if actor.ready.is_some() {
            actor.publish(EventBody::SessionState {
                state: SessionState::Idle,
            });
            if let Some((creator, text)) = first_input {
                actor.start_turn(creator, text.shown, None, Some(text.for_model));
            }
        } else {
            actor.recover(pending_restored);
        }
        actor.flush().await;
        if let Some(ready) = actor.ready.take() {
            if let Some(d) = actor.degraded.take() {
                // Nothing of the session was committed: it does not exist.
                actor.shared.set_degraded(&actor.id, None);
                if let Some(t) = &actor.turn {
                    t.cancel.cancel();
                }
                let _ = ready.send(Err(d.error));
                return;
            }
            let _ = ready.send(Ok(()));
        }
        actor.run(ops_rx, turn_rx).await;
    });
    SessionHandle {
        ops: ops_tx,
        summary,
        owner,
        closed,
        remote,
    }
}

/// The turn task's way back into the actor: events and permission prompts, in order.
struct TurnPort {
    tx: mpsc::Sender<TurnMsg>,
}

impl EventSink for TurnPort {
    fn emit(&self, body: EventBody) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // The actor drains this channel continuously; a send only fails if it is gone.
            let _ = self.tx.send(TurnMsg::Event(body)).await;
        })
    }
}

impl AnswerRouter for TurnPort {
    fn ask(&self, ask: PermissionAsk) -> BoxFuture<'_, PermissionAnswer> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.tx.send(TurnMsg::Ask(ask, tx)).await.is_err() {
                return PermissionAnswer::cancelled();
            }
            rx.await.unwrap_or_else(|_| PermissionAnswer::cancelled())
        })
    }
}

impl Actor {
    async fn run(mut self, mut ops: mpsc::Receiver<OpMsg>, mut turns: mpsc::Receiver<TurnMsg>) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                msg = ops.recv() => match msg {
                    None => break,
                    Some(OpMsg::Shutdown { done }) => {
                        self.shutdown(&mut turns).await;
                        let _ = done.send(());
                        break;
                    }
                    Some(OpMsg::Op { conn, re, op, done }) => self.on_op(conn, re, op, done),
                    Some(OpMsg::Disconnected { conn_id, reason }) => self.on_disconnected(conn_id, reason),
                    Some(OpMsg::Report { done }) => {
                        let _ = done.send(self.durable.report.clone());
                    }
                    Some(OpMsg::Notice { level, message, done }) => {
                        if self.state == SessionState::Closed {
                            let _ = done.send(Err(ErrorBody::new(
                                Reason::SessionClosed,
                                format!("session {} is closed", self.id),
                            )));
                        } else {
                            self.publish(EventBody::Notice { level, message });
                            let _ = done.send(Ok(()));
                        }
                    }
                    Some(OpMsg::CloseWithReason { reason, done }) => {
                        if self.state == SessionState::Closed {
                            let _ = done.send(());
                        } else {
                            self.close(reason);
                            if self.closing.is_some() {
                                self.close_done.push(done);
                            } else {
                                let _ = done.send(());
                            }
                        }
                    }
                },
                Some(msg) = turns.recv() => {
                    self.on_turn(msg);
                    for _ in 1..self.turn_batch() {
                        match turns.try_recv() {
                            Ok(msg) => self.on_turn(msg),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => self.on_timer(),
            }
            self.flush().await;
            if self.expire_at.is_some_and(|t| t <= Instant::now()) && self.expire().await {
                // Ops that raced the removal learn that the session is gone.
                ops.close();
                while let Some(msg) = ops.recv().await {
                    match msg {
                        OpMsg::Op { conn, re, done, .. } => {
                            conn.reply_err(&re, crate::unknown_session(&self.id));
                            let _ = done.send(false);
                        }
                        OpMsg::Shutdown { done } | OpMsg::CloseWithReason { done, .. } => {
                            let _ = done.send(());
                        }
                        OpMsg::Report { done } => {
                            let _ = done.send(None);
                        }
                        OpMsg::Notice { done, .. } => {
                            let _ = done.send(Err(crate::unknown_session(&self.id)));
                        }
                        OpMsg::Disconnected { .. } => {}
                    }
                }
                return;
            }
        }
    }

    /// Removes a closed session whose retention has run out, from the log and then from the
    /// mux. False (and a later retry) when the log cannot delete it now.
    async fn expire(&mut self) -> bool {
        let job = AppendJob {
            session_id: self.id.clone(),
            delete: true,
            ..AppendJob::default()
        };
        if let Err(e) = self.shared.log.append(job).await {
            tracing::warn!(session = %self.id, error = %e, "cannot remove an expired session; will retry");
            self.expire_at = Some(Instant::now() + self.shared.config.log_retry);
            return false;
        }
        if let Some(sessions) = self.shared.sessions.upgrade() {
            sessions
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&self.id);
        }
        tracing::info!(session = %self.id, "closed session removed after its retention period");
        true
    }

    /// Turn messages handled per flush. A flush pushes its whole batch onto every client's
    /// queue at once, so a batch larger than half a queue would evict even a client that
    /// keeps up; small queues get small batches (hard rule 5: only the slow are evicted).
    fn turn_batch(&self) -> usize {
        TURN_BATCH.min((self.shared.config.client_queue_frames / 2).max(1))
    }

    // ---- publishing ---------------------------------------------------------------------

    /// Assigns the next `seq` and encodes the event once; it is committed and broadcast at
    /// the next flush.
    fn publish(&mut self, body: EventBody) {
        self.last_seq += 1;
        let event = Event {
            session_id: self.id.clone(),
            seq: self.last_seq,
            ts: now_rfc3339(),
            body,
        };
        self.batch.push(StoredEvent {
            seq: self.last_seq,
            frame: Bytes::from(event.encode()),
        });
    }

    fn set_state(&mut self, state: SessionState) {
        if self.state != state {
            self.state = state;
            self.dirty = true;
            self.publish(EventBody::SessionState { state });
        }
    }

    fn row(&self) -> SessionRow {
        let mut durable = self.durable.clone();
        durable.turn = self.turn.as_ref().map(|t| TurnRef {
            turn_id: t.turn_id.clone(),
            originator: t.originator.clone(),
        });
        durable.pending = self.pending.iter().map(|p| p.info.clone()).collect();
        SessionRow {
            session_id: self.id.clone(),
            mode: self.mode,
            title: self.title.clone(),
            policy: self.policy,
            created_at: self.created_at.clone(),
            state: self.state,
            last_seq: self.last_seq,
            first_seq: self.first_seq,
            data: serde_json::to_string(&durable).unwrap_or_else(|_| "{}".into()),
            // Queued inputs are written as they change, not with the row.
            queued: Vec::new(),
        }
    }

    /// Commits the batch (and the row and queue when they changed), then broadcasts the
    /// batch. Clients whose queue overflows are detached here, which publishes more events:
    /// loop until quiet. A failed commit keeps everything for the next attempt, in order, and
    /// degrades the session; while degraded, a commit is tried only when the retry is due.
    async fn flush(&mut self) {
        let mut broadcast = false;
        for _ in 0..8 {
            let idle = self.batch.is_empty() && !self.dirty && self.queue_changes.is_empty();
            if idle && self.degraded.is_some() {
                // Nothing withheld, yet degraded: a row write probes the log.
                self.dirty = true;
            } else if idle {
                break;
            }
            if self
                .degraded
                .as_ref()
                .is_some_and(|d| Instant::now() < d.retry_at)
            {
                break;
            }
            let events = std::mem::take(&mut self.batch);
            let retention = self.shared.config.retention_events.max(1);
            let old_first = self.first_seq;
            let old_pruned = self.pruned_through;
            if self.last_seq >= self.first_seq + retention {
                self.first_seq = self.last_seq - retention + 1;
            }
            if self.first_seq > self.last_seq {
                self.first_seq = self.last_seq.max(1);
            }
            // The log holds the events after `pruned_through`: delete down to the retention
            // only once they pass it by a chunk (see `prune_chunk`).
            let held = self.last_seq.saturating_sub(self.pruned_through);
            let prune_through = if held > retention + prune_chunk(retention)
                && self.first_seq > self.pruned_through + 1
            {
                self.pruned_through = self.first_seq - 1;
                Some(self.pruned_through)
            } else {
                None
            };
            let row = self.dirty.then(|| self.row());
            let queue_changed = !self.queue_changes.is_empty();
            let job = AppendJob {
                session_id: self.id.clone(),
                events: events.clone(),
                row,
                prune_through,
                queue: self.queue_changes.clone(),
                delete: false,
            };
            if let Err(e) = self.shared.log.append(job).await {
                // Not durable, so not sent: kept, in order, for the next attempt.
                self.first_seq = old_first;
                self.pruned_through = old_pruned;
                self.batch = events;
                self.on_commit_failed(&e);
                break;
            }
            self.dirty = false;
            self.queue_changes.clear();
            self.shared
                .metrics
                .events_published
                .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
            broadcast |= !events.is_empty() && !self.attached.is_empty();
            // The group goes to each client in one queue operation (one lock, one wake-up),
            // not one per event per client.
            let mut gone: Vec<usize> = Vec::new();
            if !events.is_empty() {
                for (i, a) in self.attached.iter().enumerate() {
                    if !a.outbound.push_frames(events.iter().map(|e| &e.frame)) {
                        gone.push(i);
                    }
                }
            }
            if self.degraded.is_some() {
                self.on_log_restored();
            }
            if self.state == SessionState::Closed {
                self.attached.clear();
                gone.clear();
            }
            gone.sort_unstable();
            for i in gone.into_iter().rev() {
                let a = self.attached.remove(i);
                let reason = if a.outbound.is_evicted() {
                    self.shared
                        .metrics
                        .evictions
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    "evicted: slow consumer"
                } else {
                    "disconnected"
                };
                self.publish(EventBody::ClientDetached {
                    client: a.client,
                    reason: Some(reason.into()),
                });
                self.recompute_unattended();
            }
            self.queue_view_stale |= queue_changed;
            if self.batch.is_empty() && !self.dirty && self.queue_changes.is_empty() {
                // Everything is committed: what is shown is the live state.
                let queue_changed = std::mem::take(&mut self.queue_view_stale);
                self.refresh_committed(queue_changed);
            }
        }
        if broadcast {
            // Let the writers this group just woke run before the next group: a commit that
            // completes at once does not yield, and a fast turn could otherwise fill the
            // queues of clients on this worker thread before they ever got to read.
            tokio::task::yield_now().await;
        }
    }

    /// Records the session as committed (what attach and `session.list` show), when the
    /// live state is all committed.
    fn refresh_committed(&mut self, queue_changed: bool) {
        let c = &mut self.committed;
        c.state = self.state;
        c.turn = self.turn.as_ref().map(|t| TurnRef {
            turn_id: t.turn_id.clone(),
            originator: t.originator.clone(),
        });
        c.pending_permissions = self.pending.iter().map(|p| p.info.clone()).collect();
        c.clients = self.attached.iter().map(|a| a.client.clone()).collect();
        if queue_changed {
            c.queued = queued_prefix(&self.queue);
        }
        c.queued_count = self.queue.len();
        c.last_seq = self.last_seq;
        c.first_seq = self.first_seq.min(self.last_seq + 1);
        if let Ok(mut s) = self.summary.lock() {
            *s = summary_of(self);
        }
    }

    /// The log could not commit: keep what was not committed, tell the clients, stop the
    /// work (the turn is cancelled, its prompts resolved) and try again later.
    fn on_commit_failed(&mut self, e: &LogError) {
        let error = e.0.clone();
        let retry = self.shared.config.log_retry;
        let retry_at = Instant::now() + retry;
        self.shared.set_degraded(&self.id, Some(error.clone()));
        if let Some(d) = &mut self.degraded {
            d.error = error;
            d.retry_at = retry_at;
            return;
        }
        tracing::error!(session = %self.id, error = %e, withheld = self.batch.len(), "event log write failed; the session stops until the log can write");
        self.degraded = Some(Degraded {
            error: error.clone(),
            retry_at,
        });
        let frame = Control::LogUnavailable {
            session_id: self.id.clone(),
            message: format!(
                "the event log cannot write: {error}; the running turn was stopped and the \
                 session takes no input until the log can write (retrying every {})",
                humantime::format_duration(retry)
            ),
        }
        .encode();
        for a in &self.attached {
            a.outbound.push_frame(frame.clone());
        }
        if let Some(t) = &mut self.turn {
            t.stopped_by_log = Some(error);
        }
        self.cancel_turn();
    }

    /// The first commit after a failure went through (the withheld events, then the
    /// repair): the session takes work again.
    fn on_log_restored(&mut self) {
        let Some(d) = self.degraded.take() else {
            return;
        };
        self.shared.set_degraded(&self.id, None);
        tracing::info!(session = %self.id, error = %d.error, "the event log writes again");
        let frame = Control::LogRestored {
            session_id: self.id.clone(),
        }
        .encode();
        for a in &self.attached {
            a.outbound.push_frame(frame.clone());
        }
        // Inputs queued before the failure run now (the turn they waited for has ended).
        if self.turn.is_none()
            && self.closing.is_none()
            && self.state != SessionState::Closed
            && let Some(next) = self.pop_queue()
        {
            self.start_turn(next.originator, next.text, Some(next.input_id), None);
        }
    }

    /// Why new work is refused while the log cannot write (this session's or another's).
    fn refuse_while_degraded(&self) -> Result<(), ErrorBody> {
        let error = match &self.degraded {
            Some(d) => Some(d.error.clone()),
            None => self.shared.log_failure(),
        };
        match error {
            Some(error) => Err(ErrorBody::new(
                Reason::Internal,
                format!(
                    "the event log cannot write: {error}; session {} takes no new work until it can",
                    self.id
                ),
            )),
            None => Ok(()),
        }
    }

    fn pop_queue(&mut self) -> Option<QueuedInput> {
        let q = self.queue.pop_front()?;
        self.queue_changes.push(QueueChange::Remove { ord: q.ord });
        Some(q.input)
    }

    fn clear_queue(&mut self) {
        if !self.queue.is_empty() {
            self.queue.clear();
            self.queue_changes.push(QueueChange::Clear);
        }
    }

    // ---- ops ----------------------------------------------------------------------------

    fn on_op(&mut self, conn: ConnRef, re: RequestId, op: SessionOp, done: oneshot::Sender<bool>) {
        let result = match op {
            SessionOp::Attach { after_seq } => match self.check_attach(after_seq) {
                Ok(()) => {
                    // The reply goes first, then the replay, then live events.
                    conn.reply_ok(
                        &re,
                        Attached {
                            snapshot: self.snapshot(),
                        },
                    );
                    self.attach(&conn, after_seq);
                    if let Some(d) = &self.degraded {
                        conn.outbound.push_frame(
                            Control::LogUnavailable {
                                session_id: self.id.clone(),
                                message: format!(
                                    "the event log cannot write: {}; the session takes no input until it can",
                                    d.error
                                ),
                            }
                            .encode(),
                        );
                    }
                    let _ = done.send(true);
                    return;
                }
                Err(e) => Err(e),
            },
            SessionOp::Detach => self.on_detach(&conn),
            SessionOp::Input { text, queue } => self.on_input(&conn, text, queue),
            SessionOp::Answer {
                call_id,
                decision,
                scope,
                via,
            } => self.on_answer(&conn, call_id, decision, scope, via),
            SessionOp::Cancel { .. } | SessionOp::Close if self.degraded.is_some() => {
                self.refuse_while_degraded().map(|()| None)
            }
            SessionOp::Cancel { turn_id } => self.on_cancel(&conn, turn_id),
            SessionOp::Close => {
                if may_act(conn.client.class).is_err() {
                    Err(forbidden("observers cannot close sessions"))
                } else if self.state == SessionState::Closed {
                    Ok(None)
                } else {
                    self.close(format!("closed by {}", conn.client.name));
                    if self.closing.is_some() {
                        // The reply waits for the running turn to end.
                        self.close_waiters.push((conn, re, done));
                        return;
                    }
                    Ok(None)
                }
            }
        };
        let ok = result.is_ok();
        match result {
            Ok(Some(value)) => conn.reply_ok(&re, value),
            Ok(None) => conn.reply_ok(&re, Empty {}),
            Err(e) => conn.reply_err(&re, e),
        }
        let _ = done.send(ok);
    }

    /// The last event clients may see: the last committed one.
    fn visible_last_seq(&self) -> Seq {
        if self.degraded.is_some() {
            self.committed.last_seq
        } else {
            self.last_seq
        }
    }

    fn snapshot(&self) -> Snapshot {
        if self.degraded.is_some() {
            return self.committed.clone();
        }
        Snapshot {
            session_id: self.id.clone(),
            mode: self.mode,
            state: self.state,
            title: self.title.clone(),
            policy: self.policy,
            turn: self.turn.as_ref().map(|t| TurnRef {
                turn_id: t.turn_id.clone(),
                originator: t.originator.clone(),
            }),
            pending_permissions: self.pending.iter().map(|p| p.info.clone()).collect(),
            clients: self.attached.iter().map(|a| a.client.clone()).collect(),
            queued: queued_prefix(&self.queue),
            queued_count: self.queue.len(),
            last_seq: self.last_seq,
            first_seq: self.first_seq.min(self.last_seq + 1),
        }
    }

    fn check_attach(&self, after_seq: Option<Seq>) -> Result<(), ErrorBody> {
        let last = self.visible_last_seq();
        match after_seq {
            Some(after) if after > last => Err(ErrorBody::new(
                Reason::BadRequest,
                format!("after_seq {after} is beyond the session's last event ({last})"),
            )
            .with("last_seq", last)),
            _ => Ok(()),
        }
    }

    /// Queues the replay (when asked for) and registers the client for live events.
    fn attach(&mut self, conn: &ConnRef, after_seq: Option<Seq>) {
        let last = self.visible_last_seq();
        if let Some(after) = after_seq {
            if after < last {
                // Events past the retention are a gap even while the log still holds them
                // (it prunes in chunks, see `prune_chunk`).
                conn.outbound.push(OutItem::RetainedReplay {
                    session_id: self.id.clone(),
                    from: after + 1,
                    to: last,
                    first: self.first_seq,
                });
            } else {
                conn.outbound.push_frame(
                    Control::ReplayComplete {
                        session_id: self.id.clone(),
                        last_seq: last,
                    }
                    .encode(),
                );
            }
        }
        let already = self.attached.iter().any(|a| a.conn_id == conn.conn_id);
        if self.state != SessionState::Closed && !already {
            self.attached.push(Attachment {
                conn_id: conn.conn_id,
                client: conn.client.clone(),
                outbound: conn.outbound.clone(),
            });
            self.publish(EventBody::ClientAttached {
                client: conn.client.clone(),
                reason: None,
            });
            self.recompute_unattended();
        }
    }

    fn on_detach(&mut self, conn: &ConnRef) -> Result<Option<Value>, ErrorBody> {
        self.remove_attachment(conn.conn_id, None);
        Ok(None)
    }

    fn on_disconnected(&mut self, conn_id: u64, reason: String) {
        self.remove_attachment(conn_id, Some(reason));
    }

    fn remove_attachment(&mut self, conn_id: u64, reason: Option<String>) {
        if let Some(i) = self.attached.iter().position(|a| a.conn_id == conn_id) {
            let a = self.attached.remove(i);
            self.publish(EventBody::ClientDetached {
                client: a.client,
                reason,
            });
            self.recompute_unattended();
        }
    }

    fn on_input(
        &mut self,
        conn: &ConnRef,
        text: String,
        queue: bool,
    ) -> Result<Option<Value>, ErrorBody> {
        may_act(conn.client.class).map_err(|_| forbidden("observers cannot send input"))?;
        if self.state == SessionState::Closed || self.closing.is_some() {
            return Err(closed_error(&self.id));
        }
        self.refuse_while_degraded()?;
        if let Some(turn) = &self.turn {
            if !queue {
                return Err(ErrorBody::turn_in_progress(&turn.turn_id, &turn.originator));
            }
            let max = self.shared.config.max_queued_inputs;
            if self.queue.len() >= max {
                return Err(ErrorBody::new(
                    Reason::Overloaded,
                    format!(
                        "session {} already has {max} inputs queued, as many as it holds; \
                         send this one when the queue has room",
                        self.id
                    ),
                ));
            }
            let input_id = InputId(uuid::Uuid::now_v7().to_string());
            let q = Queued {
                ord: self.next_ord,
                input: QueuedInput {
                    input_id: input_id.clone(),
                    originator: conn.client.clone(),
                    text,
                },
            };
            self.next_ord += 1;
            // One row of its own: the session's row is not rewritten.
            self.queue_changes.push(QueueChange::Add(queued_row(&q)));
            self.queue.push_back(q);
            let accepted = InputAccepted::Queued {
                input_id,
                position: self.queue.len(),
            };
            return Ok(Some(to_value(accepted)));
        }
        let turn_id = self.start_turn(conn.client.clone(), text, None, None);
        Ok(Some(to_value(InputAccepted::Started { turn_id })))
    }

    fn on_answer(
        &mut self,
        conn: &ConnRef,
        call_id: CallId,
        decision: Decision,
        scope: Scope,
        via: Option<String>,
    ) -> Result<Option<Value>, ErrorBody> {
        if conn.client.class == tether_proto::Class::Observer {
            return Err(ErrorBody::new(
                Reason::Forbidden,
                "observers cannot answer permission requests",
            ));
        }
        self.refuse_while_degraded()?;
        // Free text from the client, kept in the audit log: short and on one line.
        if let Some(v) = &via
            && (v.len() > MAX_VIA_BYTES || v.chars().any(char::is_control))
        {
            return Err(ErrorBody::new(
                Reason::BadRequest,
                format!("field `via`: at most {MAX_VIA_BYTES} bytes on one line"),
            ));
        }
        if self.resolved.contains(&call_id) {
            return Err(ErrorBody::new(
                Reason::AlreadyResolved,
                format!("permission request {call_id} was already resolved"),
            )
            .with("call_id", &call_id));
        }
        let Some(index) = self.pending.iter().position(|p| p.info.call_id == call_id) else {
            if self.state == SessionState::Closed {
                return Err(closed_error(&self.id));
            }
            return Err(ErrorBody::new(
                Reason::NoPendingPermission,
                format!("no permission request {call_id} is pending in this session"),
            )
            .with("call_id", &call_id));
        };
        let pending = &self.pending[index].info;
        if let Err(reason) = may_answer(pending.policy, &conn.client, &pending.originator) {
            let message = match reason {
                Reason::AgentCannotSelfApprove => {
                    "an agent-class client cannot answer a request raised in its own turn"
                }
                Reason::HumanAnswerRequired => {
                    "this session's policy requires a human-class client to answer"
                }
                _ => "this client may not answer permission requests",
            };
            return Err(ErrorBody::new(reason, message).with("call_id", &call_id));
        }
        self.resolve(
            index,
            decision,
            scope,
            Some(conn.client.clone()),
            via,
            ResolveCause::Answered,
        );
        Ok(None)
    }

    fn on_cancel(&mut self, conn: &ConnRef, turn_id: TurnId) -> Result<Option<Value>, ErrorBody> {
        may_act(conn.client.class).map_err(|_| forbidden("observers cannot cancel turns"))?;
        match &self.turn {
            Some(t) if t.turn_id == turn_id => {
                self.cancel_turn();
                Ok(None)
            }
            Some(t) => Err(ErrorBody::new(
                Reason::StaleTurn,
                format!(
                    "turn {turn_id} is not running (the running turn is {})",
                    t.turn_id
                ),
            )
            .with("turn_id", &t.turn_id)),
            None => Err(ErrorBody::new(
                Reason::StaleTurn,
                format!("turn {turn_id} is not running; no turn is"),
            )),
        }
    }

    // ---- turns --------------------------------------------------------------------------

    /// Starts a turn on `text` (what clients see); the model reads `model_text` instead when
    /// given.
    fn start_turn(
        &mut self,
        originator: ClientInfo,
        text: String,
        input_id: Option<InputId>,
        model_text: Option<String>,
    ) -> TurnId {
        let turn_id = TurnId(uuid::Uuid::now_v7().to_string());
        let cancel = CancellationToken::new();
        self.turn = Some(RunningTurn {
            turn_id: turn_id.clone(),
            originator: originator.clone(),
            cancel: cancel.clone(),
            stopped_by_log: None,
        });
        self.publish(EventBody::TurnStarted {
            turn_id: turn_id.clone(),
            originator: originator.clone(),
            text: text.clone(),
            input_id,
        });
        self.set_state(SessionState::Running);
        self.dirty = true;

        let port = TurnPort {
            tx: self.turn_tx.clone(),
        };
        let shared = self.shared.clone();
        let tools = if self.durable.remote {
            self.shared.remote_tools()
        } else {
            self.tools.clone()
        };
        let mut conversation = self.durable.conversation.clone();
        let params = self.durable.params.clone();
        let remote = self.durable.remote;
        let mode = self.mode;
        let session_id = self.id.clone();
        let tid = turn_id.clone();
        self.shared.tracker.spawn(async move {
            let outcome = shared
                .engine
                .run(
                    &mut conversation,
                    TurnRequest {
                        session_id,
                        turn_id: tid.clone(),
                        text,
                        model_text,
                        originator,
                        mode,
                        params: &params,
                        remote,
                        tools: &tools,
                        sink: &port,
                        router: &port,
                        cancel: &cancel,
                    },
                )
                .await;
            let _ = port
                .tx
                .send(TurnMsg::Finished {
                    turn_id: tid,
                    outcome,
                    conversation,
                })
                .await;
        });
        turn_id
    }

    fn cancel_turn(&mut self) {
        while let Some(i) = self.pending.iter().position(|_| true) {
            self.resolve(
                i,
                Decision::Deny,
                Scope::Once,
                None,
                None,
                ResolveCause::Cancelled,
            );
        }
        if let Some(t) = &self.turn {
            t.cancel.cancel();
        }
    }

    fn on_turn(&mut self, msg: TurnMsg) {
        match msg {
            // A turn stopped because the log cannot write produces nothing more.
            TurnMsg::Event(_)
                if self
                    .turn
                    .as_ref()
                    .is_some_and(|t| t.stopped_by_log.is_some()) => {}
            TurnMsg::Event(body) => self.publish(body),
            TurnMsg::Ask(ask, answer) => self.on_ask(ask, answer),
            TurnMsg::Finished {
                turn_id,
                outcome,
                conversation,
            } => self.on_finished(turn_id, outcome, conversation),
        }
    }

    /// Registers the request, then publishes it (hard rule 6: registered before published).
    fn on_ask(&mut self, ask: PermissionAsk, answer: oneshot::Sender<PermissionAnswer>) {
        let Some(turn) = &self.turn else {
            let _ = answer.send(PermissionAnswer::cancelled());
            return;
        };
        if turn.turn_id != ask.turn_id || turn.cancel.is_cancelled() {
            let _ = answer.send(PermissionAnswer::cancelled());
            return;
        }
        let info = PendingPermission {
            turn_id: ask.turn_id.clone(),
            call_id: ask.call_id.clone(),
            tool: ask.tool.clone(),
            args: ask.args.clone(),
            originator: turn.originator.clone(),
            policy: self.policy,
        };
        let now = Instant::now();
        let mut pending = Pending {
            info: info.clone(),
            answer: Some(answer),
            requested_at: now,
            unattended_since: None,
        };
        if !self.has_eligible(&info) {
            pending.unattended_since = Some(now);
        }
        self.pending.push(pending);
        self.dirty = true;
        self.publish(EventBody::PermissionRequested {
            turn_id: info.turn_id,
            call_id: info.call_id,
            tool: info.tool,
            args: info.args,
            originator: info.originator,
            policy: info.policy,
        });
        self.set_state(SessionState::RequiresAction);
    }

    fn resolve(
        &mut self,
        index: usize,
        decision: Decision,
        scope: Scope,
        by: Option<ClientInfo>,
        via: Option<String>,
        cause: ResolveCause,
    ) {
        let mut p = self.pending.remove(index);
        self.resolved.insert(p.info.call_id.clone());
        self.dirty = true;
        let scope = if decision == Decision::Allow {
            scope
        } else {
            Scope::Once
        };
        self.publish(EventBody::PermissionResolved {
            call_id: p.info.call_id.clone(),
            decision,
            by: by.clone(),
            cause,
            scope: (decision == Decision::Allow).then_some(scope),
        });
        if let Some(tx) = p.answer.take() {
            let _ = tx.send(PermissionAnswer {
                decision,
                scope,
                by,
                via,
                cause,
            });
        }
        if self.pending.is_empty() && self.turn.is_some() {
            self.set_state(SessionState::Running);
        }
    }

    fn on_finished(&mut self, turn_id: TurnId, outcome: TurnOutcome, conversation: Conversation) {
        if self.turn.as_ref().map(|t| &t.turn_id) != Some(&turn_id) {
            return;
        }
        let stopped_by_log = self.turn.as_ref().and_then(|t| t.stopped_by_log.clone());
        while !self.pending.is_empty() {
            self.resolve(
                0,
                Decision::Deny,
                Scope::Once,
                None,
                None,
                ResolveCause::Cancelled,
            );
        }
        self.turn = None;
        self.durable.conversation = conversation;
        if self.mode == Mode::Diagnose && outcome.stop == StopReason::Completed {
            self.durable.report = Some(outcome.final_text.clone());
        }
        self.dirty = true;
        let (stop, error) = match stopped_by_log {
            Some(e) => (
                StopReason::Error,
                Some(format!(
                    "the event log could not be written ({e}); the turn was stopped"
                )),
            ),
            None => (outcome.stop, outcome.error),
        };
        self.publish(EventBody::TurnEnded {
            turn_id,
            stop,
            error,
            usage: outcome.usage,
        });
        if let Some(reason) = self.closing.take() {
            self.finish_close(reason);
            return;
        }
        // While the log cannot write, the queue waits for it.
        if !self.shutting_down
            && self.degraded.is_none()
            && let Some(next) = self.pop_queue()
        {
            self.start_turn(next.originator, next.text, Some(next.input_id), None);
            return;
        }
        self.set_state(SessionState::Idle);
    }

    // ---- permissions: eligibility and deadlines -----------------------------------------

    fn has_eligible(&self, info: &PendingPermission) -> bool {
        self.attached
            .iter()
            .any(|a| may_answer(info.policy, &a.client, &info.originator).is_ok())
    }

    fn recompute_unattended(&mut self) {
        let now = Instant::now();
        for i in 0..self.pending.len() {
            let eligible = self.has_eligible(&self.pending[i].info);
            let p = &mut self.pending[i];
            match (eligible, p.unattended_since) {
                (true, _) => p.unattended_since = None,
                (false, None) => p.unattended_since = Some(now),
                (false, Some(_)) => {}
            }
        }
    }

    fn deadlines(&self, p: &Pending) -> (Option<Instant>, Option<Instant>) {
        let grace = p
            .unattended_since
            .map(|t| t + self.shared.config.permission_grace);
        let timeout = self
            .shared
            .config
            .permission_timeout
            .map(|d| p.requested_at + d);
        (grace, timeout)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .iter()
            .flat_map(|p| {
                let (a, b) = self.deadlines(p);
                [a, b]
            })
            .flatten()
            .chain(self.degraded.as_ref().map(|d| d.retry_at))
            .chain(self.expire_at)
            .min()
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            let (grace, timeout) = self.deadlines(&self.pending[i]);
            let cause = if grace.is_some_and(|g| g <= now) {
                Some(ResolveCause::NoEligibleAnswerer)
            } else if timeout.is_some_and(|t| t <= now) {
                Some(ResolveCause::Timeout)
            } else {
                None
            };
            match cause {
                Some(cause) => self.resolve(i, Decision::Deny, Scope::Once, None, None, cause),
                None => i += 1,
            }
        }
    }

    // ---- closing, shutdown, recovery ----------------------------------------------------

    fn close(&mut self, reason: String) {
        self.clear_queue();
        if self.turn.is_some() {
            self.closing = Some(reason);
            self.cancel_turn();
        } else {
            self.finish_close(reason);
        }
    }

    fn finish_close(&mut self, reason: String) {
        self.clear_queue();
        self.durable.closed_reason = Some(reason.clone());
        self.durable.closed_at = Some(now_rfc3339());
        self.expire_at = Some(Instant::now() + self.shared.config.closed_retention);
        self.closed_flag.store(true, Ordering::Release);
        self.set_state(SessionState::Closed);
        self.publish(EventBody::SessionClosed { reason });
        for (conn, re, done) in self.close_waiters.drain(..) {
            conn.reply_ok(&re, Empty {});
            let _ = done.send(true);
        }
        for done in self.close_done.drain(..) {
            let _ = done.send(());
        }
    }

    /// Ends the running turn with an event and persists; queued inputs stay queued for the
    /// next start.
    async fn shutdown(&mut self, turns: &mut mpsc::Receiver<TurnMsg>) {
        self.shutting_down = true;
        if let Some(d) = &mut self.degraded {
            // One last try; what cannot be committed is lost, and the next start ends the
            // turn the log still shows as running.
            d.retry_at = Instant::now();
        }
        if self.turn.is_some() {
            self.cancel_turn();
            self.flush().await;
            let deadline = Instant::now() + std::time::Duration::from_secs(15);
            while self.turn.is_some() {
                match tokio::time::timeout_at(deadline, turns.recv()).await {
                    Ok(Some(msg)) => self.on_turn(msg),
                    Ok(None) | Err(_) => {
                        // The turn did not stop in time: end it on its behalf.
                        if let Some(t) = self.turn.take() {
                            self.publish(EventBody::TurnEnded {
                                turn_id: t.turn_id,
                                stop: StopReason::Cancelled,
                                error: Some("agent shutting down".into()),
                                usage: None,
                            });
                            self.set_state(SessionState::Idle);
                        }
                    }
                }
                self.flush().await;
            }
        }
        self.dirty = true;
        if let Some(d) = &mut self.degraded {
            d.retry_at = Instant::now();
        }
        self.flush().await;
        self.shared.set_degraded(&self.id, None);
    }

    /// A session whose turn was running when the agent stopped: deny what was pending, end
    /// the turn with `agent restarted`, then carry on with any queued input.
    fn recover(&mut self, pending: Vec<PendingPermission>) {
        let Some(turn) = self.restored_turn.take() else {
            self.resume_queue();
            return;
        };
        for p in pending {
            self.resolved.insert(p.call_id.clone());
            self.publish(EventBody::PermissionResolved {
                call_id: p.call_id,
                decision: Decision::Deny,
                by: None,
                cause: ResolveCause::Cancelled,
                scope: None,
            });
        }
        self.publish(EventBody::TurnEnded {
            turn_id: turn.turn_id,
            stop: StopReason::Error,
            error: Some("agent restarted".into()),
            usage: None,
        });
        self.dirty = true;
        self.resume_queue();
    }

    fn resume_queue(&mut self) {
        if self.state == SessionState::Closed {
            return;
        }
        if let Some(next) = self.pop_queue() {
            self.start_turn(next.originator, next.text, Some(next.input_id), None);
        } else {
            self.set_state(SessionState::Idle);
        }
    }
}

fn to_value(v: impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn forbidden(message: &str) -> ErrorBody {
    ErrorBody::new(Reason::Forbidden, message)
}

fn closed_error(id: &SessionId) -> ErrorBody {
    ErrorBody::new(Reason::SessionClosed, format!("session {id} is closed"))
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
