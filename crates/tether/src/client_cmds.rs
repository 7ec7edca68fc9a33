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
        self.connect_as("tether-cli").await
    }

    /// Connects and says `hello` with `client_name` (what the agent logs this client as).
    pub async fn connect_as(&self, client_name: &str) -> Result<(Client, HelloResult)> {
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
            .call("hello", json!({ "client_name": client_name }))
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
        outln!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    if list.sessions.is_empty() {
        outln!("no sessions")?;
        return Ok(());
    }
    outln!(
        "{:<36}  {:<8}  {:<15}  {:>7}  {:>6}  {:<24}  TITLE",
        "SESSION",
        "MODE",
        "STATE",
        "CLIENTS",
        "EVENTS",
        "CREATED"
    )?;
    for s in list.sessions {
        outln!(
            "{:<36}  {:<8}  {:<15}  {:>7}  {:>6}  {:<24}  {}",
            s.session_id,
            s.mode,
            s.state,
            s.clients.len(),
            s.last_seq,
            s.created_at,
            s.title.unwrap_or_default()
        )?;
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
    let run = chat_with(client, hello, join, RunMode::Chat).await?;
    if run.stdout_closed {
        return Err(crate::out::StdoutClosed.into());
    }
    Ok(())
}

/// How a one-shot run (`inspect`, `diagnose`) ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    Completed,
    Failed(String),
    Interrupted,
}

/// How the permission prompts of a report run (`inspect`, `diagnose`) are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answers {
    /// Ask on the terminal (stderr) and read the answer from stdin, a terminal.
    Ask,
    /// `--yes`: approve every prompt, as the invoking user.
    Yes,
    /// `--no`: deny every prompt.
    No,
    /// stdin is not a terminal and no flag was given: deny (fail closed). Piped input is
    /// never taken as an answer.
    NoTerminal,
    /// Input ended (Ctrl-D) at a prompt: deny it and the ones after it.
    InputClosed,
    /// `tether eval`: nobody is there to approve anything; every prompt is denied (and the
    /// scorecard records the request).
    Eval,
}

impl Answers {
    /// `--yes`, `--no`, else ask when stdin is a terminal, else deny.
    pub fn choose(yes: bool, no: bool) -> Answers {
        if yes {
            Answers::Yes
        } else if no {
            Answers::No
        } else if std::io::stdin().is_terminal() {
            Answers::Ask
        } else {
            Answers::NoTerminal
        }
    }

    /// The answer given without asking, what the audit log records it came from, and why.
    fn automatic(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Answers::Ask => None,
            Answers::Yes => Some(("allow", "--yes", "allowed by --yes")),
            Answers::No => Some(("deny", "--no", "denied by --no")),
            Answers::NoTerminal => Some((
                "deny",
                "no-terminal",
                "denied: stdin is not a terminal, so nobody can be asked \
                 (pass --yes to approve prompts, or --no to deny them)",
            )),
            Answers::InputClosed => Some(("deny", "input-closed", "denied: input ended")),
            Answers::Eval => Some((
                "deny",
                "eval",
                "denied: `tether eval` runs with nobody to approve it",
            )),
        }
    }
}

/// What the chat loop is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// `tether chat` / `attach`: lines from stdin are messages and prompt answers.
    Chat,
    /// `inspect` / `diagnose`: the session's first turn (started by the session itself) is the
    /// whole run; progress and prompts go to stderr, the answer is kept (and streamed to
    /// stdout when `stream`); stdin is read only to answer a prompt, per `answers`. Without
    /// `progress`, nothing but the answer is written (`tether eval` prints its own).
    Report {
        answers: Answers,
        stream: bool,
        progress: bool,
    },
}

/// What a run produced.
pub struct RunOutput {
    pub end: RunEnd,
    pub session_id: SessionId,
    /// Report mode: the final answer (the text after the last tool call).
    pub answer: String,
    /// Report mode: the answer is already on stdout.
    pub streamed: bool,
    /// stdout's reader went away (the loop stopped early).
    pub stdout_closed: bool,
    /// Report mode: the session's events in order, text and reasoning deltas left out.
    pub events: Vec<EventBody>,
}

/// The slash commands, answered by the client itself (never sent to the model).
const HELP: &[&str] = &[
    "commands (handled here, never sent to the model):",
    "  /help            this list",
    "  /queue MESSAGE   run MESSAGE after the turn someone else is running",
    "  Ctrl-C           cancel the running turn; when idle, or pressed again, leave",
    "  Ctrl-D           leave",
    "a permission prompt takes y (allow once), a (allow for the rest of the session) or n",
];

/// The chat loop over an open connection (see [`RunMode`]).
pub async fn chat_with(
    mut client: Client,
    hello: HelloResult,
    join: Join,
    mode: RunMode,
) -> Result<RunOutput> {
    let color = std::io::stdout().is_terminal();
    let interactive = std::io::stdin().is_terminal();
    let (one_shot, mut answers) = match mode {
        RunMode::Chat => (false, Answers::Ask),
        RunMode::Report { answers, .. } => (true, answers),
    };
    let mut r = Renderer::new(color);
    if let RunMode::Report {
        stream, progress, ..
    } = mode
    {
        r.report_mode(stream);
        if !progress {
            r.quiet();
        }
    }
    let mut events: Vec<EventBody> = Vec::new();
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
                "type a message (/help lists commands); Ctrl-C cancels a running turn; Ctrl-D leaves"
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
    // stdin is read only where it means something: chat input and prompt answers, or a
    // report's prompt answers on a terminal. Otherwise it is left alone, unread.
    let mut lines = (answers == Answers::Ask).then(stdin_lines);
    let mut replaying = replaying_at_start;
    let mut stdout_closed = false;

    loop {
        // Report mode without a terminal to ask on: answer every due prompt at once.
        if let Some((decision, via, why)) = answers.automatic() {
            while let Some(p) = st.prompts.pop_front() {
                r.warn(&format!("permission for {} {why}", p.tool));
                let answer = json!({
                    "session_id": st.session_id, "call_id": p.call_id,
                    "decision": decision, "scope": "once", "via": via,
                });
                answer_request(&mut client, &mut r, answer).await;
            }
        }
        // The prompt due now, drawn once: a permission question, or `> ` when this client
        // may type a message (idle, nobody's turn running, history replayed).
        st.asking = st.prompts.front().map(|p| p.call_id.clone());
        let due = match st.prompts.front() {
            Some(p) => Some(format!(
                "allow {}? [y]es / [n]o / [a]lways this session: ",
                p.tool
            )),
            None if st.phase == Phase::Idle
                && st.running_turn.is_none()
                && !replaying
                && interactive
                && !st.stdin_closed
                && may_answer
                && !one_shot =>
            {
                Some("> ".to_owned())
            }
            None => None,
        };
        match due {
            Some(p) => r.prompt(&p),
            None => r.hide_prompt(),
        }
        let want_stdin = lines.is_some()
            && !st.stdin_closed
            && may_answer
            && (st.asking.is_some() || (st.phase == Phase::Idle && !one_shot));
        // Input is over: leave once the replay (if any) and our own turn are done.
        if !one_shot
            && st.stdin_closed
            && st.phase == Phase::Idle
            && st.asking.is_none()
            && !replaying
        {
            break;
        }
        tokio::select! {
            line = async {
                match lines.as_mut() {
                    Some(l) => l.recv().await,
                    None => std::future::pending().await,
                }
            }, if want_stdin => {
                r.prompt_answered(interactive);
                match line.flatten() {
                    None => {
                        st.stdin_closed = true;
                        if one_shot {
                            // Ctrl-D at a prompt: no.
                            answers = Answers::InputClosed;
                        } else if st.asking.is_some() {
                            r.warn("input closed with a permission prompt open; leaving it to the other clients");
                            break;
                        }
                    }
                    Some(text) => {
                        on_line(&mut client, &mut r, &mut st, text, interactive && !one_shot).await?
                    }
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
                            && !matches!(
                                ev.body,
                                EventBody::TextDelta { .. } | EventBody::ReasoningDelta { .. }
                            )
                        {
                            events.push(ev.body.clone());
                        }
                        if one_shot
                            && let EventBody::TurnEnded { stop, error, .. } = &ev.body {
                                end = match stop {
                                    tether_proto::StopReason::Completed => RunEnd::Completed,
                                    tether_proto::StopReason::Cancelled => RunEnd::Interrupted,
                                    _ => RunEnd::Failed(error.clone().unwrap_or_else(|| stop.to_string())),
                                };
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
                if !one_shot && r.stdout_closed() {
                    // Nobody reads the conversation any more (`tether attach … | head`).
                    stdout_closed = true;
                    break;
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
    r.hide_prompt();
    let _ = client
        .request("detach", json!({"session_id": st.session_id}))
        .await;
    client.close().await;
    Ok(RunOutput {
        end,
        session_id: st.session_id,
        answer: r.answer().unwrap_or_default().to_owned(),
        streamed: r.streamed(),
        stdout_closed: stdout_closed || r.stdout_closed(),
        events,
    })
}

/// Sends an `answer`; someone else answering first is a note, any other refusal an error.
async fn answer_request(client: &mut Client, r: &mut Renderer, answer: Value) {
    if let Err(e) = client.request("answer", answer).await {
        match &e {
            ClientError::Server(body) if body.reason == Reason::AlreadyResolved => {
                r.note("(someone else answered first)")
            }
            _ => r.error(&format!("answer refused: {e}")),
        }
    }
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
    typed: bool,
) -> Result<()> {
    if let Some(call_id) = st.asking.clone() {
        let (decision, scope) = match text.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => ("allow", "once"),
            "a" | "always" => ("allow", "session"),
            "n" | "no" => ("deny", "once"),
            _ => {
                r.warn("answer y, n or a");
                return Ok(()); // the question is drawn again
            }
        };
        st.prompts.retain(|p| p.call_id != call_id);
        st.asking = None;
        let answer = json!({"session_id": st.session_id, "call_id": call_id, "decision": decision, "scope": scope});
        answer_request(client, r, answer).await;
        return Ok(());
    }
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Ok(());
    }
    if text == "/help" || text == "/?" {
        for l in HELP {
            r.note(l);
        }
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
                let turn = TurnId(turn.to_owned());
                if typed {
                    // The terminal already shows the line: its turn header is not repeated.
                    r.typed_turn(turn.clone());
                }
                st.our_turn = Some(turn);
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
