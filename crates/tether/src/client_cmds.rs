//! The terminal clients: `tether chat`, `tether attach`, `tether sessions`.
//!
//! `chat` is a read-eval loop: it reads a line, sends it, renders the turn as it streams, and
//! reads the next line only when the turn ends or a permission prompt needs an answer — so
//! piped input (`printf 'hi\ny\n' | tether chat`) answers prompts in order. Ctrl-C cancels the
//! running turn; Ctrl-C when idle, or end of input, leaves.

use crate::config::AgentConfig;
use crate::render::Renderer;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::PathBuf;
use tether_proto::{
    Attached, CallId, ClientId, EventBody, HelloResult, MAX_LIST_LIMIT, PendingPermission, Reason,
    ServerFrame, SessionCreated, SessionId, SessionList, TurnId,
};
use tether_transport::client::{Client, ClientError, Target};

/// How a client subcommand reaches the agent.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Agent config file; its `socket` is used (default: ~/.config/tether/agent.toml, else
    /// the built-in defaults).
    #[arg(long, env = "TETHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Connect over WebSocket instead, e.g. ws://10.0.0.5:7700/v1/ws.
    #[arg(long)]
    pub url: Option<String>,
    /// Token for --url (sent as Authorization: Bearer).
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ConnectArgs {
    pub fn target(&self) -> Result<Target> {
        if let Some(url) = &self.url {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                bail!("--url: `{url}` must start with ws:// or wss://");
            }
            return Ok(Target::Ws {
                url: url.clone(),
                token: self.token.clone(),
            });
        }
        let cfg = AgentConfig::load(self.config.as_deref())?;
        Ok(Target::Unix(cfg.socket))
    }

    pub async fn connect(&self) -> Result<(Client, HelloResult)> {
        let target = self.target()?;
        let mut client = Client::connect(&target)
            .await
            .map_err(|e| match (&target, &e) {
                (Target::Unix(path), ClientError::Connect { .. }) => anyhow::anyhow!(
                    "{e}\n  is `tether agent` running? (its socket would be {})",
                    path.display()
                ),
                _ => anyhow::anyhow!("{e}"),
            })?;
        let hello: HelloResult = client
            .call("hello", json!({"client_name": "tether-cli"}))
            .await
            .context("hello")?;
        Ok((client, hello))
    }
}

fn server_error(e: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// `tether sessions`
pub async fn sessions(connect: &ConnectArgs, as_json: bool) -> Result<()> {
    let (mut client, _) = connect.connect().await?;
    // Every page: `session.list` returns at most a page of sessions and `next` for the rest.
    let mut list: SessionList = client
        .call("session.list", json!({"limit": MAX_LIST_LIMIT}))
        .await
        .map_err(server_error)?;
    while let Some(cursor) = list.next.take() {
        let page: SessionList = client
            .call(
                "session.list",
                json!({"limit": MAX_LIST_LIMIT, "cursor": cursor}),
            )
            .await
            .map_err(server_error)?;
        list.sessions.extend(page.sessions);
        list.next = page.next;
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.sessions.is_empty() {
        println!("no sessions");
        return Ok(());
    }
    println!(
        "{:<36}  {:<8}  {:<15}  {:>7}  {:>6}  {:<24}  TITLE",
        "SESSION", "MODE", "STATE", "CLIENTS", "EVENTS", "CREATED"
    );
    for s in list.sessions {
        println!(
            "{:<36}  {:<8}  {:<15}  {:>7}  {:>6}  {:<24}  {}",
            s.session_id,
            s.mode,
            s.state,
            s.clients.len(),
            s.last_seq,
            s.created_at,
            s.title.unwrap_or_default()
        );
    }
    Ok(())
}

/// What the loop is waiting for.
#[derive(Debug, PartialEq)]
enum Phase {
    /// Ready for the next message.
    Idle,
    /// Our turn is running: stdin waits.
    Running,
}

struct ChatState {
    session_id: SessionId,
    me: ClientId,
    phase: Phase,
    running_turn: Option<TurnId>,
    our_turn: Option<TurnId>,
    prompts: VecDeque<PendingPermission>,
    /// The prompt whose question is on screen.
    asking: Option<CallId>,
    stdin_closed: bool,
    cancel_sent: bool,
}

/// Reads stdin lines on a thread of its own (a blocking read cannot be cancelled).
fn stdin_lines() -> tokio::sync::mpsc::Receiver<Option<String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(_) => {
                    let text = line.trim_end_matches(['\n', '\r']).to_owned();
                    if tx.blocking_send(Some(text)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// How `chat` starts.
pub enum Join {
    /// Create a new chat session.
    New {
        mode: &'static str,
        params: Option<Value>,
        title: Option<String>,
        policy: Option<String>,
        /// At a hub: the agent that runs the session.
        agent_id: Option<String>,
    },
    /// Join an existing session; `history` replays it from the start.
    Existing { session_id: String, history: bool },
}

/// `tether chat` and `tether attach`.
pub async fn chat(connect: &ConnectArgs, join: Join) -> Result<()> {
    let (client, hello) = connect.connect().await?;
    chat_with(client, hello, join, false).await.map(|_| ())
}

/// How a one-shot run (`inspect`, `diagnose`) ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    Completed,
    Failed(String),
    Interrupted,
}

/// The chat loop over an open connection. With `one_shot`, the session's first turn (started
/// by the session itself) is the whole run: progress goes to stderr, the answer to stdout, and
/// the loop ends with that turn.
pub async fn chat_with(
    mut client: Client,
    hello: HelloResult,
    join: Join,
    one_shot: bool,
) -> Result<RunEnd> {
    let color = std::io::stdout().is_terminal();
    let interactive = std::io::stdin().is_terminal();
    let mut r = Renderer::new(color);
    if one_shot {
        r.report_mode();
    }
    r.set_me(hello.client_id.clone());
    let mut end = RunEnd::Interrupted;

    let (session_id, after_seq) = match join {
        Join::New {
            mode,
            params: session_params,
            title,
            policy,
            agent_id,
        } => {
            let mut params = json!({"mode": mode});
            if let Some(a) = agent_id {
                params["agent_id"] = Value::String(a);
            }
            if let Some(p) = session_params {
                params["params"] = p;
            }
            if let Some(t) = title {
                params["title"] = Value::String(t);
            }
            if let Some(p) = policy {
                params["policy"] = Value::String(p);
            }
            let created: SessionCreated = client
                .call("session.create", params)
                .await
                .map_err(server_error)?;
            (created.session_id, None)
        }
        Join::Existing {
            session_id,
            history,
        } => (SessionId(session_id), history.then_some(0)),
    };
    let mut attach = json!({"session_id": session_id});
    if let Some(after) = after_seq {
        attach["after_seq"] = json!(after);
    }
    // A one-shot session may already be running its first turn: replay from the start so
    // nothing of it is missed.
    if one_shot {
        attach["after_seq"] = json!(0);
    }
    let attached: Attached = client.call("attach", attach).await.map_err(server_error)?;
    let snap = attached.snapshot;
    let replaying_at_start = after_seq.is_some() || one_shot;
    if !one_shot {
        r.note(&format!(
            "session {} ({}, {}) as {} [{}] — {}",
            snap.session_id,
            snap.mode,
            snap.state,
            hello.name,
            hello.class,
            if hello.class == tether_proto::Class::Observer {
                "watching; Ctrl-C leaves"
            } else {
                "type a message; Ctrl-C cancels a running turn; Ctrl-D leaves"
            }
        ));
    }
    let mut st = ChatState {
        session_id: snap.session_id.clone(),
        me: hello.client_id.clone(),
        phase: Phase::Idle,
        running_turn: snap.turn.as_ref().map(|t| t.turn_id.clone()),
        our_turn: None,
        prompts: snap.pending_permissions.into_iter().collect(),
        asking: None,
        stdin_closed: false,
        cancel_sent: false,
    };
    let may_answer = hello.class != tether_proto::Class::Observer;
    if !may_answer {
        st.prompts.clear();
    }
    let mut lines = stdin_lines();
    let mut replaying = replaying_at_start;

    loop {
        // Put a question on screen when one is due.
        if st.asking.is_none() {
            if let Some(p) = st.prompts.front() {
                st.asking = Some(p.call_id.clone());
                r.prompt(&format!(
                    "allow {}? [y]es / [n]o / [a]lways this session: ",
                    p.tool
                ));
            } else if st.phase == Phase::Idle
                && interactive
                && !st.stdin_closed
                && may_answer
                && !one_shot
            {
                r.prompt("> ");
            }
        }
        let want_stdin =
            !st.stdin_closed && may_answer && (st.asking.is_some() || st.phase == Phase::Idle);
        // Input is over: leave once the replay (if any) and our own turn are done.
        if st.stdin_closed && st.phase == Phase::Idle && st.asking.is_none() && !replaying {
            break;
        }
        tokio::select! {
            line = lines.recv(), if want_stdin => {
                match line.flatten() {
                    None => {
                        st.stdin_closed = true;
                        if st.asking.is_some() {
                            r.warn("input closed with a permission prompt open; leaving it to the other clients");
                            break;
                        }
                    }
                    Some(text) => on_line(&mut client, &mut r, &mut st, text).await?,
                }
            }
            frame = client.next_frame() => {
                let Some(frame) = frame.map_err(server_error)? else {
                    r.error("the agent closed the connection");
                    break;
                };
                match frame {
                    ServerFrame::Event(ev) => {
                        if ev.session_id != st.session_id {
                            continue;
                        }
                        r.event(&ev);
                        if one_shot
                            && let EventBody::TurnEnded { stop, error, .. } = &ev.body {
                                end = match stop {
                                    tether_proto::StopReason::Completed => RunEnd::Completed,
                                    tether_proto::StopReason::Cancelled => RunEnd::Interrupted,
                                    _ => RunEnd::Failed(error.clone().unwrap_or_else(|| stop.to_string())),
                                };
                                if let Some(answer) = r.take_answer() {
                                    println!("{}", answer.trim_end());
                                }
                                break;
                            }
                        if on_event(&mut st, &ev.body, may_answer && !replaying) {
                            break;
                        }
                    }
                    ServerFrame::Control(c) => {
                        if matches!(c, tether_proto::Control::ReplayComplete { .. }) {
                            replaying = false;
                        }
                        r.control(&c);
                        if matches!(c, tether_proto::Control::Evicted { .. }) {
                            break;
                        }
                    }
                    ServerFrame::Reply(_) => {}
                }
            }
            _ = tokio::signal::ctrl_c() => {
                match (&st.running_turn, st.cancel_sent) {
                    (Some(turn), false) if may_answer => {
                        let turn = turn.clone();
                        st.cancel_sent = true;
                        r.warn("cancelling the turn… (Ctrl-C again to leave)");
                        if let Err(e) = client
                            .request("cancel", json!({"session_id": st.session_id, "turn_id": turn}))
                            .await
                        {
                            r.error(&format!("cancel failed: {e}"));
                        }
                    }
                    _ => break,
                }
            }
        }
    }
    let _ = client
        .request("detach", json!({"session_id": st.session_id}))
        .await;
    client.close().await;
    Ok(end)
}

/// Updates the loop's state from an event. Returns true when the session closed.
fn on_event(st: &mut ChatState, body: &EventBody, may_answer: bool) -> bool {
    match body {
        EventBody::TurnStarted {
            turn_id,
            originator,
            ..
        } => {
            st.running_turn = Some(turn_id.clone());
            st.cancel_sent = false;
            if originator.client_id == st.me {
                st.our_turn = Some(turn_id.clone());
                st.phase = Phase::Running;
            }
        }
        EventBody::TurnEnded { turn_id, .. } => {
            if st.running_turn.as_ref() == Some(turn_id) {
                st.running_turn = None;
            }
            if st.our_turn.as_ref() == Some(turn_id) {
                st.our_turn = None;
                st.phase = Phase::Idle;
            }
        }
        EventBody::PermissionRequested { .. } if may_answer => {
            st.prompts.extend(PendingPermission::requested_by(body));
        }
        EventBody::PermissionResolved { call_id, .. } => {
            st.prompts.retain(|p| &p.call_id != call_id);
            if st.asking.as_ref() == Some(call_id) {
                st.asking = None;
            }
        }
        EventBody::SessionClosed { .. } => return true,
        _ => {}
    }
    false
}

async fn on_line(
    client: &mut Client,
    r: &mut Renderer,
    st: &mut ChatState,
    text: String,
) -> Result<()> {
    if let Some(call_id) = st.asking.clone() {
        let (decision, scope) = match text.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => ("allow", "once"),
            "a" | "always" => ("allow", "session"),
            "n" | "no" => ("deny", "once"),
            _ => {
                r.warn("answer y, n or a");
                st.asking = None; // ask again
                return Ok(());
            }
        };
        st.asking = None;
        st.prompts.retain(|p| p.call_id != call_id);
        let answer = json!({"session_id": st.session_id, "call_id": call_id, "decision": decision, "scope": scope});
        if let Err(e) = client.request("answer", answer).await {
            match &e {
                ClientError::Server(body) if body.reason == Reason::AlreadyResolved => {
                    r.note("(someone else answered first)")
                }
                _ => r.error(&format!("answer refused: {e}")),
            }
        }
        return Ok(());
    }
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Ok(());
    }
    let (text, queue) = match text.strip_prefix("/queue ") {
        Some(rest) => (rest.to_owned(), true),
        None => (text, false),
    };
    let reply = client
        .request(
            "input",
            json!({"session_id": st.session_id, "text": text, "queue": queue}),
        )
        .await;
    match reply {
        Ok(v) => {
            if let Some(turn) = v.get("turn_id").and_then(Value::as_str) {
                st.our_turn = Some(TurnId(turn.to_owned()));
                st.phase = Phase::Running;
            } else if let Some(pos) = v.get("position") {
                r.note(&format!("queued at position {pos}"));
            }
        }
        Err(ClientError::Server(body)) if body.reason == Reason::TurnInProgress => {
            let who = body
                .details
                .get("originator")
                .and_then(|o| o.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("another client");
            r.warn(&format!(
                "a turn started by {who} is running; not sent. Wait, or send `/queue {text}`"
            ));
        }
        Err(e) => r.error(&format!("not sent: {e}")),
    }
    Ok(())
}
