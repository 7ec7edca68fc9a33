//! The one task that owns the connection to the agent: it takes the editor's requests (as
//! [`Cmd`]s from the ACP handlers), sends the matching ops, turns every event of the sessions
//! it attached into `session/update` notifications, and answers each `session/prompt` when
//! its turn ends. Being the only owner of the state, it needs no locks, and events are
//! translated in the order the agent sent them.

use super::{Responder, map};
use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::{self, schema as s};
use agent_client_protocol::{
    Client as Editor, Error as AcpError, ErrorCode, JsonRpcResponse, RequestCancellationHandle,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tether_proto::{
    Attached, CallId, Class, ClientId, Control, Decision, ErrorBody, Event, EventBody, HelloResult,
    InputAccepted, InputId, PendingPermission, Policy, Reason, Scope, ServerFrame, SessionCreated,
    SessionId, SessionList, TurnId,
};
use tether_transport::client::{Client, ClientError};
use tokio::sync::mpsc;

/// What the ACP handlers hand over.
pub enum Cmd {
    /// The editor's name (from `clientInfo`), and the responder.
    Initialize(Option<String>, Responder<s::InitializeResponse>),
    /// `cwd` and `mcpServers` are not used: the session runs on the agent's host, with its tools.
    New(Responder<s::NewSessionResponse>),
    Load(SessionId, Responder<s::LoadSessionResponse>),
    List(s::ListSessionsRequest, Responder<s::ListSessionsResponse>),
    Prompt(s::PromptRequest, Responder<s::PromptResponse>),
    Cancel(s::CancelNotification),
    /// The editor answered a `session/request_permission` (or failed to).
    Permission {
        session_id: SessionId,
        call_id: CallId,
        result: Result<s::RequestPermissionResponse, AcpError>,
    },
}

/// Why the link stopped.
pub enum End {
    /// The editor closed stdin: a normal exit.
    EditorLeft,
    /// The agent closed the connection (or it failed): the message says which.
    AgentGone(String),
}

/// The connection to the agent failed; why, in words.
struct Gone(String);

impl Gone {
    fn error(&self) -> AcpError {
        AcpError::new(ErrorCode::INTERNAL_ERROR, self.0.clone())
            .data(json!({"reason": "agent_gone"}))
    }

    fn from_client(e: ClientError) -> Gone {
        match e {
            ClientError::Closed => Gone("the tether agent closed the connection".into()),
            other => Gone(format!(
                "the connection to the tether agent failed: {other}"
            )),
        }
    }
}

/// A `session/prompt` waiting for its turn to end.
struct Prompt {
    responder: Responder<s::PromptResponse>,
    waits: Waits,
}

enum Waits {
    /// Its turn runs (or ran): answered by that turn's `turn_ended`.
    Turn(TurnId),
    /// Queued behind another client's turn: becomes `Turn` at the `turn_started` naming it.
    Queued(InputId),
}

/// A permission request open with the editor.
struct Ask {
    tool: String,
    cancel: RequestCancellationHandle,
}

/// One session this editor opened.
struct Sess {
    policy: Policy,
    /// The history is being replayed: prompts are asked only once it is done.
    replaying: bool,
    /// `session/load` answers when the replay is complete.
    load: Option<Responder<s::LoadSessionResponse>>,
    /// The turn running now, whoever started it.
    running: Option<TurnId>,
    prompts: Vec<Prompt>,
    /// Queued inputs whose prompt the editor cancelled: cancelled as soon as they start.
    cancel_on_start: HashSet<InputId>,
    /// Turns being cancelled for the editor: their output is not shown.
    hidden: HashSet<TurnId>,
    /// Permission requests not yet resolved (from the snapshot and the events).
    pending: BTreeMap<CallId, PendingPermission>,
    asks: HashMap<CallId, Ask>,
    /// Tools the editor chose "always reject" for: denied here without asking again.
    rejected: HashSet<String>,
}

impl Sess {
    fn new(policy: Policy) -> Sess {
        Sess {
            policy,
            replaying: false,
            load: None,
            running: None,
            prompts: Vec::new(),
            cancel_on_start: HashSet::new(),
            hidden: HashSet::new(),
            pending: BTreeMap::new(),
            asks: HashMap::new(),
            rejected: HashSet::new(),
        }
    }
}

fn reply<T: JsonRpcResponse>(responder: Responder<T>, result: Result<T, AcpError>) {
    // Fails only when the editor's connection is closing; nothing is left to tell.
    let _ = responder.respond_with_result(result);
}

pub struct Link {
    client: Client,
    me: ClientId,
    class: Class,
    /// `--session ID`: `session/new` joins this session instead of creating one.
    join: Option<SessionId>,
    /// The title of sessions this editor creates (from its `clientInfo`).
    title: Option<String>,
    sessions: HashMap<SessionId, Sess>,
    /// For the editor's answers to permission requests.
    tx: mpsc::UnboundedSender<Cmd>,
}

type Cx = v1::ConnectionTo<Editor>;

impl Link {
    pub fn new(
        client: Client,
        hello: HelloResult,
        join: Option<SessionId>,
        tx: mpsc::UnboundedSender<Cmd>,
    ) -> Link {
        Link {
            client,
            me: hello.client_id,
            class: hello.class,
            join,
            title: None,
            sessions: HashMap::new(),
            tx,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>, cx: Cx) -> End {
        match self.serve(&mut rx, &cx).await {
            Ok(()) => {
                self.leave().await;
                End::EditorLeft
            }
            Err(gone) => {
                // Whatever waits on the agent gets the reason, then `tether acp` ends.
                rx.close();
                while let Ok(cmd) = rx.try_recv() {
                    fail_cmd(cmd, &gone);
                }
                self.fail_all(&gone);
                End::AgentGone(gone.0)
            }
        }
    }

    async fn serve(&mut self, rx: &mut mpsc::UnboundedReceiver<Cmd>, cx: &Cx) -> Result<(), Gone> {
        loop {
            tokio::select! {
                // Frames first: the state the editor's next request meets is up to date.
                biased;
                frame = self.client.next_frame() => match frame {
                    Ok(Some(frame)) => self.frame(frame, cx).await?,
                    Ok(None) => return Err(Gone("the tether agent closed the connection".into())),
                    Err(e) => return Err(Gone::from_client(e)),
                },
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd, cx).await?,
                    None => return Ok(()),
                },
                _ = cx.incoming_closed() => return Ok(()),
            }
        }
    }

    /// The editor left: detach politely (bounded), then close.
    async fn leave(mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().cloned().collect();
        let detach = async {
            for id in ids {
                let _ = self
                    .client
                    .request("detach", json!({ "session_id": id }))
                    .await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), detach).await;
        self.client.close().await;
    }

    fn fail_all(&mut self, gone: &Gone) {
        for sess in self.sessions.values_mut() {
            if let Some(load) = sess.load.take() {
                reply(load, Err(gone.error()));
            }
            for p in sess.prompts.drain(..) {
                reply(p.responder, Err(gone.error()));
            }
            for (_, ask) in sess.asks.drain() {
                let _ = ask.cancel.cancel();
            }
        }
    }

    /// A request to the agent: `Ok(Err(body))` when it refused, `Err` when the connection failed.
    async fn call<T: DeserializeOwned>(
        &mut self,
        op: &str,
        params: Value,
    ) -> Result<Result<T, ErrorBody>, Gone> {
        match self.client.request(op, params).await {
            Ok(v) => Ok(serde_json::from_value(v).map_err(|e| {
                ErrorBody::new(
                    Reason::Internal,
                    format!("unexpected reply to `{op}` from the agent: {e}"),
                )
            })),
            Err(ClientError::Server(body)) => Ok(Err(body)),
            Err(e) => Err(Gone::from_client(e)),
        }
    }

    async fn command(&mut self, cmd: Cmd, cx: &Cx) -> Result<(), Gone> {
        match cmd {
            Cmd::Initialize(editor, responder) => {
                self.initialize(editor, responder);
                Ok(())
            }
            Cmd::New(responder) => self.new_session(responder, cx).await,
            Cmd::Load(id, responder) => self.load(id, responder, cx).await,
            Cmd::List(req, responder) => self.list(req, responder).await,
            Cmd::Prompt(req, responder) => self.prompt(req, responder).await,
            Cmd::Cancel(n) => self.cancel(SessionId(n.session_id.0.to_string())).await,
            Cmd::Permission {
                session_id,
                call_id,
                result,
            } => self.editor_answered(session_id, call_id, result, cx).await,
        }
    }

    fn initialize(&mut self, editor: Option<String>, responder: Responder<s::InitializeResponse>) {
        if let Some(name) = editor {
            let title: String = format!("{name} (ACP)").chars().take(120).collect();
            self.title = Some(title);
        }
        // Only protocol version 1 exists; a client asking for another decides whether to go on.
        let capabilities = s::AgentCapabilities::new()
            .load_session(true)
            .prompt_capabilities(s::PromptCapabilities::new())
            .session_capabilities(
                s::SessionCapabilities::new().list(s::SessionListCapabilities::new()),
            );
        let response = s::InitializeResponse::new(ProtocolVersion::V1)
            .agent_capabilities(capabilities)
            .agent_info(
                s::Implementation::new("tether", env!("CARGO_PKG_VERSION")).title("tether"),
            );
        reply(responder, Ok(response));
    }

    async fn new_session(
        &mut self,
        responder: Responder<s::NewSessionResponse>,
        cx: &Cx,
    ) -> Result<(), Gone> {
        let (id, after_seq) = match self.join.clone() {
            // An editor joining a session another client started: its history, then live.
            Some(id) => (id, Some(0)),
            None => {
                let mut params = json!({"mode": "chat"});
                if let Some(t) = &self.title {
                    params["title"] = json!(t);
                }
                match self.call::<SessionCreated>("session.create", params).await {
                    Err(gone) => {
                        reply(responder, Err(gone.error()));
                        return Err(gone);
                    }
                    Ok(Err(body)) => {
                        reply(responder, Err(map::tether_error(&body, None)));
                        return Ok(());
                    }
                    Ok(Ok(created)) => (created.session_id, None),
                }
            }
        };
        let attached = match self.attach(&id, after_seq).await {
            Err(gone) => {
                reply(responder, Err(gone.error()));
                return Err(gone);
            }
            Ok(Err(body)) => {
                reply(responder, Err(map::tether_error(&body, Some(&id))));
                return Ok(());
            }
            Ok(Ok(a)) => a,
        };
        // The reply goes first: an editor routes updates only for a session it knows, so
        // the replayed history (frames still queued here) follows it.
        reply(
            responder,
            Ok(s::NewSessionResponse::new(map::session_id(&id))),
        );
        self.open(&id, attached, after_seq.is_some(), None);
        self.ask_pending(&id, cx).await
    }

    async fn load(
        &mut self,
        id: SessionId,
        responder: Responder<s::LoadSessionResponse>,
        cx: &Cx,
    ) -> Result<(), Gone> {
        let attached = match self.attach(&id, Some(0)).await {
            Err(gone) => {
                reply(responder, Err(gone.error()));
                return Err(gone);
            }
            Ok(Err(body)) => {
                reply(responder, Err(map::tether_error(&body, Some(&id))));
                return Ok(());
            }
            Ok(Ok(a)) => a,
        };
        // Answered at `replay_complete`, after the history.
        self.open(&id, attached, true, Some(responder));
        self.ask_pending(&id, cx).await
    }

    async fn attach(
        &mut self,
        id: &SessionId,
        after_seq: Option<u64>,
    ) -> Result<Result<Attached, ErrorBody>, Gone> {
        let mut params = json!({ "session_id": id });
        if let Some(after) = after_seq {
            params["after_seq"] = json!(after);
        }
        self.call("attach", params).await
    }

    fn open(
        &mut self,
        id: &SessionId,
        attached: Attached,
        replaying: bool,
        load: Option<Responder<s::LoadSessionResponse>>,
    ) {
        let snap = attached.snapshot;
        let sess = self
            .sessions
            .entry(id.clone())
            .or_insert_with(|| Sess::new(snap.policy));
        sess.policy = snap.policy;
        sess.running = snap.turn.map(|t| t.turn_id);
        sess.replaying = replaying;
        for p in snap.pending_permissions {
            sess.pending.insert(p.call_id.clone(), p);
        }
        if let Some(old) = std::mem::replace(&mut sess.load, load) {
            reply(
                old,
                Err(AcpError::new(
                    ErrorCode::INTERNAL_ERROR,
                    "superseded by a later session/load of the same session",
                )),
            );
        }
    }

    async fn list(
        &mut self,
        req: s::ListSessionsRequest,
        responder: Responder<s::ListSessionsResponse>,
    ) -> Result<(), Gone> {
        let mut params = json!({ "limit": 100 });
        if let Some(cursor) = &req.cursor {
            params["cursor"] = json!(cursor);
        }
        let list = match self.call::<SessionList>("session.list", params).await {
            Err(gone) => {
                reply(responder, Err(gone.error()));
                return Err(gone);
            }
            Ok(Err(body)) => {
                reply(responder, Err(map::tether_error(&body, None)));
                return Ok(());
            }
            Ok(Ok(list)) => list,
        };
        // Sessions run on the agent's host, not in a directory of the editor's: each is shown
        // under the directory the editor asked about (else this process's).
        let cwd = req
            .cwd
            .clone()
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| "/".into());
        let sessions = list
            .sessions
            .into_iter()
            .map(|row| {
                let title = row.title.unwrap_or_else(|| format!("{} session", row.mode));
                s::SessionInfo::new(map::session_id(&row.session_id), cwd.clone())
                    .title(title)
                    .updated_at(row.created_at)
            })
            .collect();
        reply(
            responder,
            Ok(s::ListSessionsResponse::new(sessions).next_cursor(list.next)),
        );
        Ok(())
    }

    async fn prompt(
        &mut self,
        req: s::PromptRequest,
        responder: Responder<s::PromptResponse>,
    ) -> Result<(), Gone> {
        let id = SessionId(req.session_id.0.to_string());
        if !self.sessions.contains_key(&id) {
            reply(responder, Err(map::not_open(&id)));
            return Ok(());
        }
        let text = match map::prompt_text(&req.prompt) {
            Ok(t) => t,
            Err(e) => {
                reply(responder, Err(e));
                return Ok(());
            }
        };
        // Always queued: behind another client's turn it waits, and with none it starts now.
        let params = json!({"session_id": id, "text": text, "queue": true});
        let accepted = match self.call::<InputAccepted>("input", params).await {
            Err(gone) => {
                reply(responder, Err(gone.error()));
                return Err(gone);
            }
            Ok(Err(body)) => {
                reply(responder, Err(map::tether_error(&body, Some(&id))));
                return Ok(());
            }
            Ok(Ok(a)) => a,
        };
        let Some(sess) = self.sessions.get_mut(&id) else {
            return Ok(());
        };
        let waits = match accepted {
            InputAccepted::Started { turn_id } => {
                // Its `turn_started` may still be queued here; a cancel must see it running.
                sess.running = Some(turn_id.clone());
                Waits::Turn(turn_id)
            }
            InputAccepted::Queued { input_id, .. } => Waits::Queued(input_id),
        };
        sess.prompts.push(Prompt { responder, waits });
        Ok(())
    }

    /// `session/cancel`: this editor's running turn is cancelled, its queued prompts end
    /// `cancelled` at once (each input is cancelled the moment it starts). With no prompt of
    /// its own pending, it cancels whatever turn runs.
    async fn cancel(&mut self, id: SessionId) -> Result<(), Gone> {
        let Some(sess) = self.sessions.get_mut(&id) else {
            return Ok(());
        };
        let running = sess.running.clone();
        let own_running = sess
            .prompts
            .iter()
            .any(|p| matches!(&p.waits, Waits::Turn(t) if Some(t) == running.as_ref()));
        let mut had_queued = false;
        let mut kept = Vec::new();
        for p in sess.prompts.drain(..) {
            match p.waits {
                Waits::Queued(input_id) => {
                    had_queued = true;
                    sess.cancel_on_start.insert(input_id);
                    reply(
                        p.responder,
                        Ok(s::PromptResponse::new(s::StopReason::Cancelled)),
                    );
                }
                waits @ Waits::Turn(_) => kept.push(Prompt {
                    responder: p.responder,
                    waits,
                }),
            }
        }
        sess.prompts = kept;
        let Some(turn) = running else {
            return Ok(());
        };
        if !own_running && had_queued {
            // Someone else's turn: the editor only withdrew what it queued behind it.
            return Ok(());
        }
        self.send_cancel(&id, &turn).await
    }

    async fn send_cancel(&mut self, id: &SessionId, turn: &TurnId) -> Result<(), Gone> {
        let params = json!({"session_id": id, "turn_id": turn});
        match self.call::<Value>("cancel", params).await? {
            // `stale_turn`: it ended meanwhile, and its `turn_ended` answers the prompt.
            Ok(_) | Err(_) => Ok(()),
        }
    }

    async fn editor_answered(
        &mut self,
        id: SessionId,
        call_id: CallId,
        result: Result<s::RequestPermissionResponse, AcpError>,
        cx: &Cx,
    ) -> Result<(), Gone> {
        let Some(sess) = self.sessions.get_mut(&id) else {
            return Ok(());
        };
        // Resolved by someone else first: the editor was told, its late answer is dropped.
        let Some(ask) = sess.asks.remove(&call_id) else {
            return Ok(());
        };
        let option = match result.map(|r| r.outcome) {
            Ok(s::RequestPermissionOutcome::Selected(selected)) => selected.option_id.to_string(),
            // Dismissed, or the editor failed: the prompt stays open for the other clients.
            _ => return Ok(()),
        };
        let Some((decision, scope)) = map::option_answer(&option) else {
            notify(
                cx,
                &id,
                map::tool_note(
                    &call_id,
                    format!("`{option}` is not one of the options offered; not answered"),
                ),
            );
            return Ok(());
        };
        if decision == Decision::Deny && scope == Scope::Session {
            sess.rejected.insert(ask.tool);
        }
        self.answer(&id, &call_id, decision, scope, None, cx).await
    }

    async fn answer(
        &mut self,
        id: &SessionId,
        call_id: &CallId,
        decision: Decision,
        scope: Scope,
        via: Option<&str>,
        cx: &Cx,
    ) -> Result<(), Gone> {
        let mut params = json!({
            "session_id": id, "call_id": call_id, "decision": decision, "scope": scope,
        });
        if let Some(via) = via {
            params["via"] = json!(via);
        }
        match self.call::<Value>("answer", params).await? {
            Ok(_) => {}
            // Someone else answered first: that is no error for the editor.
            Err(body) if body.reason == Reason::AlreadyResolved => {}
            Err(body) => notify(
                cx,
                id,
                map::tool_note(
                    call_id,
                    format!("your answer was not taken: {}", body.message),
                ),
            ),
        }
        Ok(())
    }

    /// Asks the editor about every prompt still pending (after a replay, or at attach).
    async fn ask_pending(&mut self, id: &SessionId, cx: &Cx) -> Result<(), Gone> {
        let calls: Vec<CallId> = match self.sessions.get(id) {
            Some(sess) if !sess.replaying => sess.pending.keys().cloned().collect(),
            _ => return Ok(()),
        };
        for call_id in calls {
            self.ask(id, &call_id, cx).await?;
        }
        Ok(())
    }

    /// Whether this client may answer `p` (else the editor is not asked: its answer would be
    /// refused).
    fn may_answer(&self, p: &PendingPermission) -> bool {
        match self.class {
            Class::Human => true,
            Class::Agent => {
                p.policy == Policy::Any && p.originator.client_id.principal() != self.me.principal()
            }
            Class::Observer => false,
        }
    }

    async fn ask(&mut self, id: &SessionId, call_id: &CallId, cx: &Cx) -> Result<(), Gone> {
        let Some(sess) = self.sessions.get(id) else {
            return Ok(());
        };
        let Some(p) = sess.pending.get(call_id).cloned() else {
            return Ok(());
        };
        // Not asked: already open, not this client's to answer, or a turn being cancelled for
        // the editor (nobody wants its tools run).
        if sess.asks.contains_key(call_id)
            || !self.may_answer(&p)
            || sess.hidden.contains(&p.turn_id)
        {
            return Ok(());
        }
        if sess.rejected.contains(&p.tool) {
            return self
                .answer(
                    id,
                    call_id,
                    Decision::Deny,
                    Scope::Once,
                    Some("reject_always"),
                    cx,
                )
                .await;
        }
        let request = s::RequestPermissionRequest::new(
            map::session_id(id),
            map::permission_tool_call(call_id, &p.tool, &p.args),
            map::permission_options(),
        );
        let prepared = cx.prepare_request(request);
        let cancel = prepared.cancellation_handle();
        let tx = self.tx.clone();
        let (session_id, call) = (id.clone(), call_id.clone());
        let sent = prepared.on_receiving_result(move |result| {
            let _ = tx.send(Cmd::Permission {
                session_id,
                call_id: call,
                result,
            });
            std::future::ready(Ok::<(), AcpError>(()))
        });
        if sent.is_ok()
            && let Some(sess) = self.sessions.get_mut(id)
        {
            sess.asks.insert(
                call_id.clone(),
                Ask {
                    tool: p.tool,
                    cancel,
                },
            );
        }
        Ok(())
    }

    async fn frame(&mut self, frame: ServerFrame, cx: &Cx) -> Result<(), Gone> {
        match frame {
            ServerFrame::Event(ev) => self.event(ev, cx).await,
            ServerFrame::Control(Control::ReplayComplete { session_id, .. }) => {
                if let Some(sess) = self.sessions.get_mut(&session_id) {
                    sess.replaying = false;
                    if let Some(load) = sess.load.take() {
                        reply(load, Ok(s::LoadSessionResponse::new()));
                    }
                }
                self.ask_pending(&session_id, cx).await
            }
            ServerFrame::Control(Control::Evicted { reason }) => Err(Gone(format!(
                "the tether agent dropped this client ({reason})"
            ))),
            // Replies to requests are taken by `call`; other control frames need nothing here.
            ServerFrame::Control(_) | ServerFrame::Reply(_) => Ok(()),
        }
    }

    async fn event(&mut self, ev: Event, cx: &Cx) -> Result<(), Gone> {
        let id = ev.session_id;
        let me = self.me.clone();
        let Some(sess) = self.sessions.get_mut(&id) else {
            return Ok(());
        };
        let mut update = None;
        let mut cancel_turn = None;
        let mut ask = None;
        match ev.body {
            EventBody::TurnStarted {
                turn_id,
                originator,
                text,
                input_id,
            } => {
                sess.running = Some(turn_id.clone());
                if let Some(input) = &input_id {
                    for p in &mut sess.prompts {
                        if matches!(&p.waits, Waits::Queued(i) if i == input) {
                            p.waits = Waits::Turn(turn_id.clone());
                        }
                    }
                    if sess.cancel_on_start.remove(input) {
                        sess.hidden.insert(turn_id.clone());
                        cancel_turn = Some(turn_id.clone());
                    }
                }
                // The editor shows its own prompt already; everyone else's is news to it.
                let own = originator.client_id == me && !sess.replaying;
                if !own {
                    let same = originator.client_id.principal() == me.principal();
                    update = Some(map::user_message(&turn_id, &originator, &text, same));
                }
            }
            EventBody::TextDelta { turn_id, text } if !sess.hidden.contains(&turn_id) => {
                update = Some(map::agent_text(&turn_id, &text));
            }
            EventBody::ReasoningDelta { turn_id, text } if !sess.hidden.contains(&turn_id) => {
                update = Some(map::agent_thought(&turn_id, &text));
            }
            EventBody::ToolCall {
                turn_id,
                call_id,
                tool,
                args,
            } if !sess.hidden.contains(&turn_id) => {
                update = Some(map::tool_call(&call_id, &tool, &args));
            }
            body @ EventBody::PermissionRequested { .. } => {
                if let Some(p) = PendingPermission::requested_by(&body) {
                    if !sess.replaying {
                        ask = Some(p.call_id.clone());
                    }
                    sess.pending.insert(p.call_id.clone(), p);
                }
            }
            EventBody::PermissionResolved {
                call_id,
                decision,
                by,
                cause,
                scope,
            } => {
                sess.pending.remove(&call_id);
                if let Some(open) = sess.asks.remove(&call_id) {
                    // Someone else was first: the editor's dialog is withdrawn, and the
                    // update below says who decided.
                    let _ = open.cancel.cancel();
                }
                update = Some(map::permission_resolved(
                    &call_id,
                    decision,
                    by.as_ref(),
                    cause,
                    scope,
                ));
            }
            EventBody::ToolResult {
                turn_id,
                call_id,
                ok,
                output,
                truncated,
                duration_ms,
                waited_ms,
            } if !sess.hidden.contains(&turn_id) => {
                update = Some(map::tool_result(&map::ToolResult {
                    call_id: &call_id,
                    ok,
                    output: &output,
                    truncated,
                    duration_ms,
                    waited_ms,
                }));
            }
            EventBody::TurnEnded {
                turn_id,
                stop,
                error,
                ..
            } => {
                if sess.running.as_ref() == Some(&turn_id) {
                    sess.running = None;
                }
                sess.hidden.remove(&turn_id);
                let (done, waiting): (Vec<Prompt>, Vec<Prompt>) = sess
                    .prompts
                    .drain(..)
                    .partition(|p| matches!(&p.waits, Waits::Turn(t) if *t == turn_id));
                sess.prompts = waiting;
                for p in done {
                    reply(p.responder, map::prompt_outcome(stop, error.as_deref()));
                }
            }
            EventBody::SessionClosed { reason } => {
                sess.running = None;
                let error = AcpError::new(
                    ErrorCode::INTERNAL_ERROR,
                    format!("the session was closed ({reason})"),
                )
                .data(json!({"reason": "session_closed"}));
                for p in sess.prompts.drain(..) {
                    reply(p.responder, Err(error.clone()));
                }
                for (_, open) in sess.asks.drain() {
                    let _ = open.cancel.cancel();
                }
                sess.pending.clear();
            }
            _ => {}
        }
        if let Some(u) = update {
            notify(cx, &id, u);
        }
        if let Some(turn) = cancel_turn {
            self.send_cancel(&id, &turn).await?;
        }
        if let Some(call_id) = ask {
            self.ask(&id, &call_id, cx).await?;
        }
        Ok(())
    }
}

fn notify(cx: &Cx, id: &SessionId, update: s::SessionUpdate) {
    // Fails only when the editor's connection is closing.
    let _ = cx.send_notification(s::SessionNotification::new(map::session_id(id), update));
}

/// A request that arrived after the agent went away.
fn fail_cmd(cmd: Cmd, gone: &Gone) {
    match cmd {
        Cmd::Initialize(_, r) => reply(r, Err(gone.error())),
        Cmd::New(r) => reply(r, Err(gone.error())),
        Cmd::Load(_, r) => reply(r, Err(gone.error())),
        Cmd::List(_, r) => reply(r, Err(gone.error())),
        Cmd::Prompt(_, r) => reply(r, Err(gone.error())),
        Cmd::Cancel(_) | Cmd::Permission { .. } => {}
    }
}
