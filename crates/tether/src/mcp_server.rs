//! `tether mcp` and the agent's `POST /mcp`: an MCP server (rmcp's server side) through which
//! AI programs (any MCP client) join tether sessions next to terminals, the console and
//! editors.
//!
//! The MCP client is always an agent-class client of the session protocol: the server's
//! connection to the agent lowers itself with `hello {"class": "agent"}` before anything else,
//! so the agent judges every op by that class. The program may start turns and read every
//! event, but never approve its own tool calls (`agent_cannot_self_approve`), and under policy
//! `human` no prompt at all (`human_answer_required`). Refusals are MCP tool errors carrying
//! the protocol's reason; bad arguments are JSON-RPC `invalid params` errors naming the field.
//!
//! * stdio (`tether mcp`): one connection to the agent (its Unix socket, or `--url`/`--token`),
//!   opened before MCP starts. When the agent goes away the process says so on stderr and
//!   exits with status 1.
//! * streamable HTTP (`POST /mcp` on the agent's listener, the bearer tokens of `/v1/ws`): each
//!   MCP session opens an in-process connection with the caller's credential at its first
//!   tool call ([`tether_transport::local`]), under the same connection caps as a socket.

use crate::client_cmds::ConnectArgs;
use crate::verdict;
use anyhow::{Context, Result, bail};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tether_host::sync::lock;
use tether_mux::{Identity, Mux};
use tether_proto::{
    Class, Control, ErrorBody, HelloResult, MAX_LIST_LIMIT, Mode, Policy, Reason, ReplyFrame,
    RequestId, encode_request,
};
use tether_transport::client::{Client, Target};
use tether_transport::limits::ConnectionLimits;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How the server names itself to the agent (sessions show it in their client lists).
const CLIENT_NAME: &str = "tether-mcp";
/// `tether_events`: events per call when the caller names no `limit`.
const DEFAULT_EVENTS_LIMIT: usize = 100;
/// `tether_events`: the most events one call returns.
const MAX_EVENTS_LIMIT: usize = 1000;

// ---------------------------------------------------------------------------------------------
// The connection to the agent
// ---------------------------------------------------------------------------------------------

/// Why a request to the agent did not succeed.
#[derive(Debug)]
enum Failure {
    /// The agent refused it (a reason of the protocol).
    Refused(ErrorBody),
    /// The connection to the agent is gone.
    Gone(String),
}

impl From<ErrorBody> for Failure {
    fn from(e: ErrorBody) -> Self {
        Failure::Refused(e)
    }
}

/// Events of one session for one waiter.
struct Sub {
    id: u64,
    session_id: String,
    /// Whether replayed events (an `attach` with `after_seq`) come too, not only live ones.
    replay: bool,
    tx: mpsc::UnboundedSender<Value>,
}

/// What one `attach` with `after_seq` replayed, up to a limit.
#[derive(Default)]
struct Replayed {
    events: Vec<Value>,
    /// Replayed events past the limit (not kept).
    more: bool,
    /// Ranges the event log no longer holds (`stream_gap`).
    gaps: Vec<Value>,
}

struct ReplaySink {
    limit: usize,
    got: Replayed,
    done: oneshot::Sender<Replayed>,
}

struct Pending {
    reply: oneshot::Sender<Result<Value, Failure>>,
    /// Set for an `attach` with `after_seq`: what the replay after the reply holds.
    replay: Option<(String, Option<ReplaySink>)>,
}

struct Request {
    op: &'static str,
    params: Value,
    pending: Pending,
}

/// State shared by a [`Link`] and its driver task.
struct Shared {
    subs: Mutex<Vec<Sub>>,
    next_sub: AtomicU64,
    /// Fires when the connection has ended; [`Shared::why`] says why.
    closed: CancellationToken,
    why: Mutex<Option<String>>,
}

impl Shared {
    fn why(&self) -> String {
        lock(&self.why)
            .clone()
            .unwrap_or_else(|| "the connection to the agent closed".into())
    }
}

/// One client-protocol connection shared by concurrent tool calls: requests are matched to
/// their replies by id, and session events go to whoever waits for them.
pub struct Link {
    requests: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    hello: HelloResult,
    /// The credential's principal (`client_id` is `<principal>/<n>`).
    principal: String,
    /// Sessions this connection is attached to (it receives their live events).
    attached: tokio::sync::Mutex<HashSet<String>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        // Dropping the driver drops the connection: the agent detaches it everywhere.
        self.driver.abort();
    }
}

/// A waiter's events; unregisters itself when dropped.
struct Subscription {
    id: u64,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Value>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.shared.subs).retain(|s| s.id != self.id);
    }
}

impl Link {
    /// Says `hello` as an agent-class client, then serves concurrent requests over `client`.
    async fn open(mut client: Client, mcp_client: Option<&str>) -> Result<Link> {
        let client_name = match mcp_client {
            Some(name) => format!("{CLIENT_NAME} ({name})"),
            None => CLIENT_NAME.to_owned(),
        };
        let hello: HelloResult = client
            .call(
                "hello",
                json!({"client_name": client_name, "class": Class::Agent}),
            )
            .await
            .map_err(|e| match e {
                tether_transport::client::ClientError::Server(e)
                    if e.reason == Reason::Forbidden =>
                {
                    anyhow::anyhow!(
                        "{e}\n  an MCP client acts as an agent-class client; this credential \
                         cannot (use a human- or agent-class token)"
                    )
                }
                other => anyhow::anyhow!("hello: {other}"),
            })?;
        if hello.class != Class::Agent {
            bail!(
                "hello: the agent kept this connection {}-class instead of lowering it to agent",
                hello.class
            );
        }
        let principal = hello
            .client_id
            .as_str()
            .rsplit_once('/')
            .map_or_else(|| hello.client_id.to_string(), |(p, _)| p.to_owned());
        let shared = Arc::new(Shared {
            subs: Mutex::new(Vec::new()),
            next_sub: AtomicU64::new(1),
            closed: CancellationToken::new(),
            why: Mutex::new(None),
        });
        let (requests, rx) = mpsc::channel(64);
        let driver = tokio::spawn(drive(client, rx, shared.clone()));
        Ok(Link {
            requests,
            shared,
            hello,
            principal,
            attached: tokio::sync::Mutex::new(HashSet::new()),
            driver,
        })
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    async fn closed(&self) -> String {
        self.shared.closed.cancelled().await;
        self.shared.why()
    }

    async fn send(
        &self,
        op: &'static str,
        params: Value,
        replay: Option<(String, Option<ReplaySink>)>,
    ) -> Result<Value, Failure> {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            op,
            params,
            pending: Pending { reply, replay },
        };
        if self.requests.send(request).await.is_err() {
            return Err(Failure::Gone(self.shared.why()));
        }
        rx.await
            .unwrap_or_else(|_| Err(Failure::Gone(self.shared.why())))
    }

    async fn request(&self, op: &'static str, params: Value) -> Result<Value, Failure> {
        self.send(op, params, None).await
    }

    /// Live events of `session_id` from now on (and replayed ones too, with `replay`).
    fn subscribe(&self, session_id: &str, replay: bool) -> Subscription {
        let id = self.shared.next_sub.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.shared.subs).push(Sub {
            id,
            session_id: session_id.to_owned(),
            replay,
            tx,
        });
        Subscription {
            id,
            shared: self.shared.clone(),
            rx,
        }
    }

    /// Attaches to `session_id` for live events, once per connection.
    async fn ensure_attached(&self, session_id: &str) -> Result<(), Failure> {
        let mut attached = self.attached.lock().await;
        if attached.contains(session_id) {
            return Ok(());
        }
        self.request("attach", json!({"session_id": session_id}))
            .await?;
        attached.insert(session_id.to_owned());
        Ok(())
    }

    /// `attach` with `after_seq`: the snapshot, and the events the replay holds (up to
    /// `limit`). The connection stays attached.
    async fn replay(
        &self,
        session_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<(Value, Replayed), Failure> {
        let (done, rx) = oneshot::channel();
        let sink = ReplaySink {
            limit,
            got: Replayed::default(),
            done,
        };
        let mut attached = self.attached.lock().await;
        let snapshot = self
            .send(
                "attach",
                json!({"session_id": session_id, "after_seq": after_seq}),
                Some((session_id.to_owned(), Some(sink))),
            )
            .await?;
        attached.insert(session_id.to_owned());
        drop(attached);
        let replayed = rx.await.map_err(|_| Failure::Gone(self.shared.why()))?;
        Ok((snapshot, replayed))
    }
}

/// Reads frames and writes requests until the connection ends.
async fn drive(mut client: Client, mut requests: mpsc::Receiver<Request>, shared: Arc<Shared>) {
    let mut pending: HashMap<RequestId, Pending> = HashMap::new();
    // Sessions whose replay is being read (between an `attach` reply and `replay_complete`).
    let mut replaying: HashMap<String, Option<ReplaySink>> = HashMap::new();
    let mut next_id: u64 = 1;
    let mut evicted: Option<String> = None;
    let why = loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else {
                    break "the MCP server closed the connection".to_owned();
                };
                let id = RequestId::from(next_id);
                next_id += 1;
                let text = encode_request(&id, request.op, request.params);
                if let Err(e) = client.send_text(&text).await {
                    let why = format!("cannot write to the agent: {e}");
                    let _ = request.pending.reply.send(Err(Failure::Gone(why.clone())));
                    break why;
                }
                pending.insert(id, request.pending);
            }
            text = client.next_text() => {
                let Some(text) = text else {
                    break match evicted.take() {
                        Some(reason) => format!("the agent dropped this client ({reason})"),
                        None => "the agent closed the connection".to_owned(),
                    };
                };
                let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(&text) else {
                    tracing::warn!(frame = %text, "a frame from the agent that is not a JSON object");
                    continue;
                };
                if frame.contains_key("re") {
                    let Ok(reply) = serde_json::from_value::<ReplyFrame>(Value::Object(frame)) else {
                        continue;
                    };
                    let Some(p) = reply.re.as_ref().and_then(|re| pending.remove(re)) else {
                        continue;
                    };
                    let result = match reply.error {
                        Some(e) => Err(Failure::Refused(e)),
                        None => Ok(reply.result.unwrap_or(Value::Null)),
                    };
                    if let (Ok(_), Some((session_id, sink))) = (&result, p.replay) {
                        replaying.insert(session_id, sink);
                    }
                    let _ = p.reply.send(result);
                } else if frame.contains_key("seq") {
                    let session_id = frame
                        .get("session_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let event = Value::Object(frame);
                    let replayed = match replaying.get_mut(&session_id) {
                        Some(sink) => {
                            if let Some(sink) = sink {
                                if sink.got.events.len() < sink.limit {
                                    sink.got.events.push(event.clone());
                                } else {
                                    sink.got.more = true;
                                }
                            }
                            true
                        }
                        None => false,
                    };
                    lock(&shared.subs).retain(|s| {
                        if s.session_id != session_id || (replayed && !s.replay) {
                            return true;
                        }
                        s.tx.send(event.clone()).is_ok()
                    });
                } else {
                    match serde_json::from_value::<Control>(Value::Object(frame)) {
                        Ok(Control::ReplayComplete { session_id, .. }) => {
                            if let Some(Some(sink)) = replaying.remove(session_id.as_str()) {
                                let _ = sink.done.send(sink.got);
                            }
                        }
                        Ok(Control::StreamGap { session_id, from_seq, to_seq }) => {
                            if let Some(Some(sink)) = replaying.get_mut(session_id.as_str()) {
                                sink.got.gaps.push(json!({"from_seq": from_seq, "to_seq": to_seq}));
                            }
                        }
                        Ok(Control::Evicted { reason }) => evicted = Some(reason),
                        _ => {}
                    }
                }
            }
        }
    };
    tracing::debug!(why = %why, "connection to the agent ended");
    *lock(&shared.why) = Some(why.clone());
    shared.closed.cancel();
    for (_, p) in pending.drain() {
        let _ = p.reply.send(Err(Failure::Gone(why.clone())));
    }
    // Waiters see their streams end.
    lock(&shared.subs).clear();
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

const SESSION_ID: &str = "The session's id (from tether_sessions or tether_session_create).";

/// Every tool, with its schema and a one-line description.
fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "tether_sessions",
            "List this host's tether sessions: id, mode, state, title, attached clients and last event seq.",
            schema(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        ),
        Tool::new(
            "tether_session_create",
            "Create a tether session on this host and return its session_id (you join it as an agent-class client).",
            schema(json!({
                "type": "object",
                "properties": {
                    "mode": {"type": "string", "enum": ["chat", "inspect", "diagnose"],
                             "description": "chat: a conversation with the host's model; inspect / diagnose: a one-turn report (see params)."},
                    "title": {"type": "string", "maxLength": tether_proto::MAX_TITLE_CHARS,
                              "description": "A title shown in session lists."},
                    "params": {"type": "object",
                               "description": "Mode parameters, e.g. {\"plugin\": \"disk\", \"target\": \"/var\"} for inspect, {\"alert\": \"disk /var 93% full\"} for diagnose."},
                    "policy": {"type": "string", "enum": ["human", "any"],
                               "description": "Who may answer permission prompts; only a human may choose `any`, so leave it out (default `human`)."}
                },
                "required": ["mode"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "tether_send",
            "Send a message to a tether session; by default wait for the turn to end and return its final text, tool calls with results, and stop reason.",
            schema(json!({
                "type": "object",
                "properties": {
                    "session_id": {"type": "string", "description": SESSION_ID},
                    "text": {"type": "string", "minLength": 1, "description": "The message."},
                    "queue": {"type": "boolean", "default": false,
                              "description": "If another turn is running, queue the message behind it instead of being refused with turn_in_progress."},
                    "wait": {"type": "boolean", "default": true,
                             "description": "Wait for the turn to end (progress is reported meanwhile); false returns the turn_id (or the queue receipt) at once."}
                },
                "required": ["session_id", "text"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "tether_events",
            "Read a session's events after a sequence number, oldest first, as JSON, with the prompts still waiting for an answer.",
            schema(json!({
                "type": "object",
                "properties": {
                    "session_id": {"type": "string", "description": SESSION_ID},
                    "after_seq": {"type": "integer", "minimum": 0, "default": 0,
                                  "description": "Return events with seq above this (pass the previous call's next_after_seq)."},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS_LIMIT, "default": DEFAULT_EVENTS_LIMIT,
                              "description": "At most this many events."}
                },
                "required": ["session_id"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "tether_answer",
            "Answer a pending permission prompt of another client's turn; prompts of your own turns need a human and are refused (agent_cannot_self_approve).",
            schema(json!({
                "type": "object",
                "properties": {
                    "session_id": {"type": "string", "description": SESSION_ID},
                    "call_id": {"type": "string", "description": "The prompt's call_id (from permission_requested)."},
                    "decision": {"type": "string", "enum": ["allow", "deny"]},
                    "scope": {"type": "string", "enum": ["once", "session"], "default": "once",
                              "description": "session: also allow later calls of the same tool in this session."}
                },
                "required": ["session_id", "call_id", "decision"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "tether_cancel",
            "Cancel a running turn of a tether session (its pending prompts are resolved as cancelled).",
            schema(json!({
                "type": "object",
                "properties": {
                    "session_id": {"type": "string", "description": SESSION_ID},
                    "turn_id": {"type": "string", "description": "The running turn (from tether_send or turn_started)."}
                },
                "required": ["session_id", "turn_id"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "tether_inspect",
            "Inspect this host without a model and return the Markdown report with its findings and status (OK, WARNING, CRITICAL, UNKNOWN).",
            schema(json!({
                "type": "object",
                "properties": {
                    "plugin": {"type": "string", "default": "system",
                               "description": "system, cpu, mem, disk, load, net or process."},
                    "target": {"type": "string",
                               "description": "Narrows some plugins: a mount point, HOST:PORT, a process name or pid."}
                },
                "additionalProperties": false
            })),
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    mode: Mode,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    params: Option<Map<String, Value>>,
    #[serde(default)]
    policy: Option<Policy>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendArgs {
    session_id: String,
    text: String,
    #[serde(default)]
    queue: bool,
    #[serde(default = "yes")]
    wait: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsArgs {
    session_id: String,
    #[serde(default)]
    after_seq: u64,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerArgs {
    session_id: String,
    call_id: String,
    decision: tether_proto::Decision,
    #[serde(default)]
    scope: Option<tether_proto::Scope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelArgs {
    session_id: String,
    turn_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InspectArgs {
    #[serde(default)]
    plugin: Option<String>,
    #[serde(default)]
    target: Option<String>,
}

/// A bad argument: JSON-RPC `invalid params`, naming the tool and the field.
fn bad_argument(tool: &str, field: Option<&str>, message: &str) -> McpError {
    let text = match field {
        Some(f) => format!("{tool}: field `{f}`: {message}"),
        None => format!("{tool}: {message}"),
    };
    McpError::invalid_params(text, Some(json!({"tool": tool, "field": field})))
}

/// Decodes a tool's arguments; a failure names the field.
fn parse_args<T: DeserializeOwned>(tool: &str, args: Option<JsonObject>) -> Result<T, McpError> {
    let value = Value::Object(args.unwrap_or_default());
    let result: Result<T, serde_path_to_error::Error<serde_json::Error>> =
        serde_path_to_error::deserialize(value);
    result.map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        if path.is_empty() || path == "." {
            // serde names a missing or unknown field in the message itself: "missing field `x`".
            let field = message.split('`').nth(1).map(str::to_owned);
            let text = format!("{tool}: {message}");
            McpError::invalid_params(text, Some(json!({"tool": tool, "field": field})))
        } else {
            bad_argument(tool, Some(&path), &message)
        }
    })
}

/// A successful result: the JSON as text (what most clients show the model) and as
/// structured content.
fn ok_json(value: Value) -> CallToolResult {
    CallToolResult::structured(value)
}

/// A refusal of the protocol as a tool error: `reason: message` and the error object.
fn refused(e: &ErrorBody) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(format!(
        "{}: {}",
        e.reason, e.message
    ))]);
    r.structured_content = serde_json::to_value(e).ok();
    r
}

fn failed(f: Failure) -> CallToolResult {
    match f {
        Failure::Refused(e) => refused(&e),
        Failure::Gone(why) => refused(&ErrorBody::new(
            Reason::Internal,
            format!("the connection to the tether agent is gone: {why}"),
        )),
    }
}

/// MCP progress notifications for one request (when its caller gave a progress token).
struct Progress {
    to: Option<(Peer<RoleServer>, ProgressToken)>,
    n: u64,
}

impl Progress {
    fn of(context: &RequestContext<RoleServer>) -> Progress {
        Progress {
            to: context
                .meta
                .get_progress_token()
                .map(|t| (context.peer.clone(), t)),
            n: 0,
        }
    }

    async fn note(&mut self, message: String) {
        if let Some((peer, token)) = &self.to {
            self.n += 1;
            let param =
                ProgressNotificationParam::new(token.clone(), self.n as f64).with_message(message);
            if let Err(e) = peer.notify_progress(param).await {
                tracing::debug!(error = %e, "cannot send a progress notification");
            }
        }
    }
}

/// What a turn did, as `tether_send` and `tether_inspect` report it.
#[derive(Default)]
struct TurnReport {
    turn_id: Option<String>,
    /// The text after the last tool call: the answer.
    text: String,
    calls: Vec<Map<String, Value>>,
    stop: Option<Value>,
    error: Option<Value>,
    usage: Option<Value>,
    /// The session closed before the turn ended (or started).
    closed: Option<Value>,
}

impl TurnReport {
    fn call(&mut self, call_id: &Value) -> Option<&mut Map<String, Value>> {
        self.calls
            .iter_mut()
            .find(|c| c.get("call_id") == Some(call_id))
    }

    fn done(&self) -> bool {
        self.stop.is_some() || self.closed.is_some()
    }

    /// Takes one event of the turn; what to tell the caller about it.
    fn apply(&mut self, ev: &Value, me: &str) -> Option<String> {
        let name = ev["event"].as_str().unwrap_or_default();
        match name {
            "turn_started" => Some(format!(
                "[turn {} started]",
                ev["turn_id"].as_str().unwrap_or_default()
            )),
            "text_delta" => {
                let text = ev["text"].as_str().unwrap_or_default();
                self.text.push_str(text);
                Some(text.to_owned())
            }
            "reasoning_delta" => None,
            "tool_call" => {
                // Text before a tool call was the model thinking aloud, not the answer.
                self.text.clear();
                let mut call = Map::new();
                for key in ["call_id", "tool", "args"] {
                    call.insert(key.into(), ev[key].clone());
                }
                self.calls.push(call);
                Some(format!(
                    "[calling {} {}]",
                    ev["tool"].as_str().unwrap_or_default(),
                    ev["args"]
                ))
            }
            "permission_requested" => {
                let tool = ev["tool"].as_str().unwrap_or_default().to_owned();
                let policy = ev["policy"].as_str().unwrap_or_default();
                let waiting_for = if policy == "any" {
                    "a human, or an agent-class client other than the turn's originator"
                } else {
                    "a human"
                };
                let call_id = ev["call_id"].clone();
                if let Some(call) = self.call(&call_id) {
                    call.insert(
                        "permission".into(),
                        json!({"state": "waiting", "waiting_for": waiting_for, "you_may_answer": false}),
                    );
                }
                Some(format!(
                    "[waiting for {waiting_for} to approve {tool} (call_id {}); {me} cannot approve it]",
                    call_id.as_str().unwrap_or_default()
                ))
            }
            "permission_resolved" => {
                let call_id = ev["call_id"].clone();
                let decision = ev["decision"].clone();
                let by = ev["by"]["name"].clone();
                let cause = ev["cause"].clone();
                let call = self.call(&call_id)?;
                let tool = call.get("tool").cloned().unwrap_or(Value::Null);
                call.insert(
                    "permission".into(),
                    json!({"state": decision, "by": by, "cause": cause}),
                );
                Some(format!(
                    "[{} {}: {}]",
                    tool.as_str().unwrap_or_default(),
                    if decision == "allow" {
                        "allowed"
                    } else {
                        "denied"
                    },
                    by.as_str()
                        .unwrap_or_else(|| cause.as_str().unwrap_or_default())
                ))
            }
            "tool_result" => {
                let call_id = ev["call_id"].clone();
                let ok = ev["ok"].as_bool().unwrap_or(false);
                let result = json!({
                    "ok": ok,
                    "output": ev["output"],
                    "truncated": ev["truncated"],
                    "duration_ms": ev["duration_ms"],
                });
                let call = self.call(&call_id)?;
                let tool = call.get("tool").cloned().unwrap_or(Value::Null);
                call.insert("result".into(), result);
                Some(format!(
                    "[{} {}]",
                    tool.as_str().unwrap_or_default(),
                    if ok { "done" } else { "failed" }
                ))
            }
            "turn_ended" => {
                self.stop = Some(ev["stop"].clone());
                if let Some(e) = ev.get("error") {
                    self.error = Some(e.clone());
                }
                if let Some(u) = ev.get("usage") {
                    self.usage = Some(u.clone());
                }
                Some(format!(
                    "[turn ended: {}]",
                    ev["stop"].as_str().unwrap_or_default()
                ))
            }
            _ => None,
        }
    }

    fn to_json(&self, session_id: &str) -> Value {
        let mut out = json!({
            "session_id": session_id,
            "turn_id": self.turn_id,
            "stop": self.stop.clone().unwrap_or(Value::Null),
            "text": self.text,
            "tool_calls": self.calls,
        });
        if let Some(e) = &self.error {
            out["error"] = e.clone();
        }
        if let Some(u) = &self.usage {
            out["usage"] = u.clone();
        }
        if let Some(c) = &self.closed {
            out["session_closed"] = c.clone();
        }
        out
    }
}

/// Which turn a waiter follows.
enum Follow {
    Turn(String),
    /// A queued input: the turn whose `turn_started` carries this `input_id`.
    Input(String),
    /// The session's next turn to start (a one-shot session runs one by itself).
    First,
}

/// Reads `sub` until the followed turn ends, reporting progress; `None` if the caller
/// cancelled the request.
async fn follow_turn(
    sub: &mut Subscription,
    mut follow: Follow,
    progress: &mut Progress,
    me: &str,
    ct: &CancellationToken,
) -> Result<Option<TurnReport>, Failure> {
    let mut report = TurnReport::default();
    if let Follow::Turn(t) = &follow {
        report.turn_id = Some(t.clone());
    }
    let mut last_seq = 0u64;
    while !report.done() {
        let ev = tokio::select! {
            ev = sub.rx.recv() => ev,
            _ = ct.cancelled() => return Ok(None),
        };
        let Some(ev) = ev else {
            return Err(Failure::Gone(sub.shared.why()));
        };
        // A replay may repeat what already came live.
        let seq = ev["seq"].as_u64().unwrap_or(0);
        if seq <= last_seq {
            continue;
        }
        last_seq = seq;
        let name = ev["event"].as_str().unwrap_or_default();
        if name == "session_closed" {
            report.closed = Some(ev["reason"].clone());
            break;
        }
        if name == "turn_started" {
            let started = ev["turn_id"].as_str().unwrap_or_default().to_owned();
            let ours = match &follow {
                Follow::Turn(t) => *t == started,
                Follow::Input(i) => ev["input_id"].as_str() == Some(i),
                Follow::First => true,
            };
            if ours {
                follow = Follow::Turn(started.clone());
                report.turn_id = Some(started);
            } else if !matches!(follow, Follow::Turn(_)) {
                progress
                    .note(format!(
                        "[queued behind turn {started} of {}]",
                        ev["originator"]["name"].as_str().unwrap_or_default()
                    ))
                    .await;
                continue;
            }
        }
        let Follow::Turn(turn) = &follow else {
            continue;
        };
        // Events of the followed turn; a permission's resolution names only its call.
        let of_turn = match ev.get("turn_id").and_then(Value::as_str) {
            Some(t) => t == turn,
            None => name == "permission_resolved" && report.call(&ev["call_id"]).is_some(),
        };
        if !of_turn {
            continue;
        }
        if let Some(message) = report.apply(&ev, me) {
            progress.note(message).await;
        }
    }
    Ok(Some(report))
}

// ---------------------------------------------------------------------------------------------
// The MCP server
// ---------------------------------------------------------------------------------------------

/// Where an MCP session's connection to the agent comes from.
enum Source {
    /// `tether mcp`: connected at start.
    Fixed(Arc<Link>),
    /// `POST /mcp`: an in-process connection, opened at the first tool call with the caller's
    /// credential.
    Local {
        mux: Mux,
        limits: Arc<ConnectionLimits>,
        closing: CancellationToken,
        link: tokio::sync::Mutex<Option<Arc<Link>>>,
    },
}

/// The caller of an HTTP request, as the `/mcp` route authenticated it.
#[derive(Clone, Debug)]
pub struct Caller(pub Identity);

/// The MCP server: one per MCP session.
#[derive(Clone)]
pub struct TetherMcp {
    source: Arc<Source>,
}

impl TetherMcp {
    fn fixed(link: Arc<Link>) -> TetherMcp {
        TetherMcp {
            source: Arc::new(Source::Fixed(link)),
        }
    }

    /// A server whose connection is opened in this process at its first tool call.
    pub fn local(mux: Mux, limits: Arc<ConnectionLimits>, closing: CancellationToken) -> TetherMcp {
        TetherMcp {
            source: Arc::new(Source::Local {
                mux,
                limits,
                closing,
                link: tokio::sync::Mutex::new(None),
            }),
        }
    }

    async fn link(&self, context: &RequestContext<RoleServer>) -> Result<Arc<Link>, Failure> {
        let (mux, limits, closing, slot) = match &*self.source {
            Source::Fixed(link) => return Ok(link.clone()),
            Source::Local {
                mux,
                limits,
                closing,
                link,
            } => (mux, limits, closing, link),
        };
        let caller = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<Caller>())
            .map(|c| c.0.clone())
            .ok_or_else(|| {
                Failure::Refused(ErrorBody::new(
                    Reason::Unauthorized,
                    "this request carries no authenticated caller",
                ))
            })?;
        let mut slot = slot.lock().await;
        if let Some(link) = &*slot {
            if link.principal != caller.principal {
                return Err(Failure::Refused(ErrorBody::new(
                    Reason::Forbidden,
                    "this MCP session belongs to another credential",
                )));
            }
            if !link.is_closed() {
                return Ok(link.clone());
            }
        }
        let permit = limits
            .acquire(&caller.principal)
            .map_err(|e| Failure::Refused(ErrorBody::new(Reason::Overloaded, e.to_string())))?;
        let client = tether_transport::local::connect(mux, caller, Some(permit), closing.clone());
        let mcp_client = context.peer.peer_info().map(|i| i.client_info.name.clone());
        let link = Link::open(client, mcp_client.as_deref())
            .await
            .map(Arc::new)
            .map_err(|e| Failure::Refused(ErrorBody::new(Reason::Forbidden, format!("{e:#}"))))?;
        *slot = Some(link.clone());
        Ok(link)
    }

    async fn call(
        &self,
        name: &str,
        args: Option<JsonObject>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        // Arguments first: a bad call is refused before anything else happens.
        let call = match name {
            "tether_sessions" => Call::Sessions(parse_args(name, args)?),
            "tether_session_create" => Call::Create(parse_args(name, args)?),
            "tether_send" => {
                let a: SendArgs = parse_args(name, args)?;
                if a.text.trim().is_empty() {
                    return Err(bad_argument(name, Some("text"), "must not be empty"));
                }
                Call::Send(a)
            }
            "tether_events" => {
                let a: EventsArgs = parse_args(name, args)?;
                if let Some(n) = a.limit
                    && !(1..=MAX_EVENTS_LIMIT).contains(&n)
                {
                    return Err(bad_argument(
                        name,
                        Some("limit"),
                        &format!("is {n}; it must be 1 to {MAX_EVENTS_LIMIT}"),
                    ));
                }
                Call::Events(a)
            }
            "tether_answer" => Call::Answer(parse_args(name, args)?),
            "tether_cancel" => Call::Cancel(parse_args(name, args)?),
            "tether_inspect" => Call::Inspect(parse_args(name, args)?),
            other => {
                return Err(McpError::invalid_params(
                    format!("unknown tool `{other}`; tools/list names them"),
                    Some(json!({"field": "name"})),
                ));
            }
        };
        let link = match self.link(&context).await {
            Ok(l) => l,
            Err(f) => return Ok(failed(f)),
        };
        let result = match call {
            Call::Sessions(NoArgs {}) => sessions(&link).await,
            Call::Create(a) => create(&link, a).await,
            Call::Send(a) => send(&link, a, &context).await,
            Call::Events(a) => events(&link, a).await,
            Call::Answer(a) => answer(&link, a).await,
            Call::Cancel(a) => link
                .request(
                    "cancel",
                    json!({"session_id": a.session_id, "turn_id": a.turn_id}),
                )
                .await
                .map(|_| ok_json(json!({"cancelled": a.turn_id}))),
            Call::Inspect(a) => inspect(&link, a, &context).await,
        };
        Ok(result.unwrap_or_else(failed))
    }
}

enum Call {
    Sessions(NoArgs),
    Create(CreateArgs),
    Send(SendArgs),
    Events(EventsArgs),
    Answer(AnswerArgs),
    Cancel(CancelArgs),
    Inspect(InspectArgs),
}

async fn sessions(link: &Link) -> Result<CallToolResult, Failure> {
    let mut list = link
        .request("session.list", json!({"limit": MAX_LIST_LIMIT}))
        .await?;
    let mut sessions = match list["sessions"].take() {
        Value::Array(s) => s,
        _ => Vec::new(),
    };
    while let Some(cursor) = list["next"].as_str().map(str::to_owned) {
        list = link
            .request(
                "session.list",
                json!({"limit": MAX_LIST_LIMIT, "cursor": cursor}),
            )
            .await?;
        if let Value::Array(more) = list["sessions"].take() {
            sessions.extend(more);
        }
    }
    Ok(ok_json(json!({ "sessions": sessions })))
}

async fn create(link: &Link, a: CreateArgs) -> Result<CallToolResult, Failure> {
    let mut params = json!({"mode": a.mode});
    if let Some(t) = a.title {
        params["title"] = Value::String(t);
    }
    if let Some(p) = a.params {
        params["params"] = Value::Object(p);
    }
    if let Some(p) = a.policy {
        params["policy"] = json!(p);
    }
    let created = link.request("session.create", params).await?;
    Ok(ok_json(json!({"session_id": created["session_id"]})))
}

async fn send(
    link: &Link,
    a: SendArgs,
    context: &RequestContext<RoleServer>,
) -> Result<CallToolResult, Failure> {
    link.ensure_attached(&a.session_id).await?;
    // Before the input: none of the turn's events may be missed.
    let mut sub = link.subscribe(&a.session_id, false);
    let accepted = link
        .request(
            "input",
            json!({"session_id": a.session_id, "text": a.text, "queue": a.queue}),
        )
        .await?;
    let follow = match (accepted["turn_id"].as_str(), accepted["input_id"].as_str()) {
        (Some(turn), _) => Follow::Turn(turn.to_owned()),
        (None, Some(input)) => Follow::Input(input.to_owned()),
        _ => {
            return Err(Failure::Gone(format!(
                "the agent answered `input` with {accepted}"
            )));
        }
    };
    if !a.wait {
        let mut out = json!({"session_id": a.session_id});
        match &follow {
            Follow::Turn(t) => {
                out["status"] = json!("started");
                out["turn_id"] = json!(t);
            }
            _ => {
                out["status"] = json!("queued");
                out["input_id"] = accepted["input_id"].clone();
                out["position"] = accepted["position"].clone();
            }
        }
        out["note"] = json!(
            "the turn runs on; read it with tether_events. Its permission prompts wait for a human: you cannot approve your own tool calls."
        );
        return Ok(ok_json(out));
    }
    let mut progress = Progress::of(context);
    let me = link.hello.name.clone();
    match follow_turn(&mut sub, follow, &mut progress, &me, &context.ct).await? {
        Some(report) => Ok(ok_json(report.to_json(&a.session_id))),
        None => Ok(refused(&ErrorBody::new(
            Reason::BadRequest,
            "the request was cancelled; the turn goes on (tether_cancel stops it)",
        ))),
    }
}

async fn events(link: &Link, a: EventsArgs) -> Result<CallToolResult, Failure> {
    let limit = a.limit.unwrap_or(DEFAULT_EVENTS_LIMIT);
    let (attached, replayed) = link.replay(&a.session_id, a.after_seq, limit).await?;
    let snap = &attached["snapshot"];
    let next_after = replayed
        .events
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(a.after_seq);
    // Who may answer each pending prompt: never this caller for its own turns.
    let pending: Vec<Value> = snap["pending_permissions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let originator = p["originator"]["client_id"].as_str().unwrap_or_default();
            let own = originator.rsplit_once('/').map(|(p, _)| p) == Some(link.principal.as_str());
            let any = p["policy"] == "any";
            let mut p = p.clone();
            p["waiting_for"] = json!(if any {
                "a human, or an agent-class client other than the turn's originator"
            } else {
                "a human"
            });
            p["you_may_answer"] = json!(any && !own);
            p
        })
        .collect();
    let mut out = json!({
        "session_id": a.session_id,
        "state": snap["state"],
        "events": replayed.events,
        "next_after_seq": next_after,
        "last_seq": snap["last_seq"],
        "more": replayed.more,
        "pending_permissions": pending,
    });
    if !replayed.gaps.is_empty() {
        out["gaps"] = Value::Array(replayed.gaps);
    }
    Ok(ok_json(out))
}

async fn answer(link: &Link, a: AnswerArgs) -> Result<CallToolResult, Failure> {
    let mut params = json!({
        "session_id": a.session_id,
        "call_id": a.call_id,
        "decision": a.decision,
        "via": CLIENT_NAME,
    });
    if let Some(s) = a.scope {
        params["scope"] = json!(s);
    }
    link.request("answer", params).await?;
    Ok(ok_json(
        json!({"answered": a.call_id, "decision": a.decision}),
    ))
}

async fn inspect(
    link: &Link,
    a: InspectArgs,
    context: &RequestContext<RoleServer>,
) -> Result<CallToolResult, Failure> {
    let plugin = a.plugin.unwrap_or_else(|| "system".into());
    let mut params = json!({"plugin": plugin});
    if let Some(t) = &a.target {
        params["target"] = json!(t);
    }
    let created = link
        .request(
            "session.create",
            json!({"mode": "inspect", "params": params}),
        )
        .await?;
    let session_id = created["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The session runs its turn by itself, maybe already: replay it from the start.
    let mut sub = link.subscribe(&session_id, true);
    link.send(
        "attach",
        json!({"session_id": session_id, "after_seq": 0}),
        Some((session_id.clone(), None)),
    )
    .await?;
    let mut progress = Progress::of(context);
    let me = link.hello.name.clone();
    let report = follow_turn(&mut sub, Follow::First, &mut progress, &me, &context.ct).await;
    // The report is done with (or abandoned): leave the session.
    let _ = link
        .request("detach", json!({"session_id": session_id}))
        .await;
    let Some(report) = report? else {
        return Ok(refused(&ErrorBody::new(
            Reason::BadRequest,
            "the request was cancelled",
        )));
    };
    if report.stop.as_ref().and_then(Value::as_str) != Some("completed") {
        let why = report
            .error
            .clone()
            .or_else(|| report.closed.clone())
            .unwrap_or_else(|| json!(report.stop));
        return Ok(refused(&ErrorBody::new(
            Reason::Internal,
            format!("the inspection did not complete: {why}"),
        )));
    }
    let status = verdict::inspection_verdict(&report.text).unwrap_or(verdict::Verdict::Unknown);
    let mut result = CallToolResult::success(vec![ContentBlock::text(report.text.clone())]);
    result.structured_content = Some(json!({
        "session_id": session_id,
        "plugin": plugin,
        "target": a.target,
        "status": status,
        "findings": verdict::inspection_findings(&report.text),
        "report": report.text,
    }));
    Ok(result)
}

impl ServerHandler for TetherMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("tether", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "tether runs AI operations sessions on this host, shared with humans and other \
                 programs. You act as an agent-class client: you can create sessions, send \
                 messages and read every event, but permission prompts for tool calls of your \
                 own turns must be answered by a human.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.call(&request.name, request.arguments, context)
            .await
            .map(CallToolResponse::from)
    }
}

// ---------------------------------------------------------------------------------------------
// stdio: `tether mcp`
// ---------------------------------------------------------------------------------------------

/// `tether mcp`: an MCP server on stdin/stdout for the agent `connect` names. Returns when the
/// MCP client closes stdin; fails (with the reason) when the agent goes away.
pub async fn run_stdio(connect: &ConnectArgs) -> Result<()> {
    let target = connect.target()?;
    let client = Client::connect(&target).await.map_err(|e| match &target {
        Target::Unix(path) => anyhow::anyhow!(
            "{e}\n  is `tether agent` running? (its socket would be {})",
            path.display()
        ),
        Target::Ws { .. } => anyhow::anyhow!("{e}"),
    })?;
    let link = Arc::new(Link::open(client, None).await?);
    let server = TetherMcp::fixed(link.clone());
    let serve = async {
        let running = server
            .serve(rmcp::transport::stdio())
            .await
            .context("MCP handshake on stdio")?;
        running.waiting().await.context("MCP server")?;
        anyhow::Ok(())
    };
    tokio::select! {
        r = serve => r,
        why = link.closed() => bail!("lost the tether agent at {target}: {why}"),
    }
}

// ---------------------------------------------------------------------------------------------
// streamable HTTP: `POST /mcp`
// ---------------------------------------------------------------------------------------------

/// Idle MCP sessions over HTTP end after this long (each holds a connection to the agent).
const HTTP_SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Clone)]
struct HttpAuth {
    auth: Arc<tether_transport::auth::Authenticator>,
    closing: CancellationToken,
}

/// `/mcp` on the agent's listener: streamable HTTP, authenticated like `/v1/ws`.
pub fn http_router(
    mux: Mux,
    auth: Arc<tether_transport::auth::Authenticator>,
    limits: Arc<ConnectionLimits>,
    closing: CancellationToken,
) -> axum::Router {
    use rmcp::transport::streamable_http_server::session::local::{
        LocalSessionManager, SessionConfig,
    };
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let mut config =
        StreamableHttpServerConfig::default().with_cancellation_token(closing.child_token());
    if !auth.is_open() {
        // Every request needs a bearer token, which a page rebinding a name to this host
        // cannot supply: any Host header may reach the agent (a LAN address, a name).
        // Without tokens (loopback peers only) the loopback-names check stays.
        config = config.disable_allowed_hosts();
    }
    let mut sessions = LocalSessionManager::default();
    let mut session_config = SessionConfig::default();
    session_config.keep_alive = Some(HTTP_SESSION_IDLE);
    sessions.session_config = session_config;
    let factory_closing = closing.clone();
    let service = StreamableHttpService::new(
        move || {
            Ok(TetherMcp::local(
                mux.clone(),
                limits.clone(),
                factory_closing.clone(),
            ))
        },
        Arc::new(sessions),
        config,
    );
    let state = HttpAuth { auth, closing };
    axum::Router::new()
        .route_service("/mcp", service)
        .route_layer(axum::middleware::from_fn_with_state(state, authenticate))
}

/// Authenticates a `/mcp` request with the bearer token of `/v1/ws` and passes the caller on.
async fn authenticate(
    axum::extract::State(state): axum::extract::State<HttpAuth>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let token = tether_transport::ws::request_token(req.headers(), None);
    let identity = match state.auth.authenticate(token.as_deref(), peer) {
        Ok(id) => id,
        Err(e) => {
            let mut r = tether_transport::ws::http_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &e.to_string(),
            );
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    };
    if state.closing.is_cancelled() {
        return tether_transport::ws::http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "shutting down",
        )
        .into_response();
    }
    // An authenticated answer may stream as long as the turn it waits for.
    if let Some(long_lived) = req.extensions().get::<tether_transport::serve::LongLived>() {
        long_lived.grant();
    }
    req.extensions_mut().insert(Caller(identity));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_an_object_schema_and_a_one_line_description() {
        let tools = tools();
        assert_eq!(tools.len(), 7);
        for t in &tools {
            let d = t.description.as_deref().unwrap_or_default();
            assert!(!d.is_empty() && !d.contains('\n'), "{}: {d}", t.name);
            assert_eq!(t.input_schema["type"], "object", "{}", t.name);
            assert_eq!(t.input_schema["additionalProperties"], false, "{}", t.name);
        }
    }

    fn args(v: Value) -> Option<JsonObject> {
        match v {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    #[test]
    fn bad_arguments_name_the_field() {
        let e = parse_args::<SendArgs>("tether_send", args(json!({"session_id": "s"})))
            .err()
            .expect("missing text");
        assert!(e.message.contains("`text`"), "{}", e.message);
        assert_eq!(
            e.data.as_ref().map(|d| d["field"].clone()),
            Some(json!("text"))
        );
        let e = parse_args::<SendArgs>("tether_send", args(json!({"session_id": 7, "text": "hi"})))
            .err()
            .expect("mistyped session_id");
        assert!(e.message.contains("field `session_id`"), "{}", e.message);
        let e = parse_args::<SendArgs>(
            "tether_send",
            args(json!({"session_id": "s", "text": "hi", "wiat": false})),
        )
        .err()
        .expect("unknown field");
        assert!(e.message.contains("`wiat`"), "{}", e.message);
        let e = parse_args::<AnswerArgs>(
            "tether_answer",
            args(json!({"session_id": "s", "call_id": "c", "decision": "maybe"})),
        )
        .err()
        .expect("bad decision");
        assert!(e.message.contains("field `decision`"), "{}", e.message);
        let a: SendArgs = parse_args(
            "tether_send",
            args(json!({"session_id": "s", "text": "hi"})),
        )
        .expect("defaults");
        assert!(a.wait && !a.queue);
    }
}
