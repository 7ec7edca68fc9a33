//! tether-engine: the work of a session.
//!
//! * [`model`] — the provider trait; [`scripted`] — the scripted provider.
//! * The tools, their registry and the host readings are `tether-host`'s; the turn loop
//!   runs them, asking for permission where a tool says a call needs it.
//! * [`turn`] — the turn loop and the two seams the multiplexer implements
//!   ([`EventSink`], [`AnswerRouter`]).
//! * [`log`] — the SQLite event log.
//!
//! The engine knows clients (as `ClientInfo` values), never transports.

pub mod audit;
pub mod context;
pub mod fence;
pub mod log;
pub mod mcp;
pub mod model;
pub mod openai;
pub mod prompts;
pub mod scripted;
pub mod turn;

pub use model::{ModelProvider, ModelRequest};
pub use turn::{
    AnswerRouter, Conversation, EventSink, PermissionAnswer, PermissionAsk, TurnExtras,
    TurnOutcome, TurnRun, run_turn, run_turn_with,
};

use audit::AuditLog;
use serde_json::{Map, Value};
use std::sync::Arc;
use tether_host::tools::ToolRegistry;
use tether_proto::{ClientInfo, EventBody, Mode, NoticeLevel, SessionId, StopReason, TurnId};
use tokio_util::sync::CancellationToken;

/// Default for `max_rounds`: model calls per turn before it stops with `max_rounds`.
pub const DEFAULT_MAX_ROUNDS: u32 = 20;

/// The engine: the model (when one is configured), the tools, the audit log.
#[derive(Clone)]
pub struct Engine {
    pub provider: Option<Arc<dyn ModelProvider>>,
    /// False when `provider` is only the built-in demo script: `diagnose` then falls back to
    /// `inspect` instead of replaying a demo.
    pub model_configured: bool,
    pub tools: ToolRegistry,
    pub max_rounds: u32,
    pub audit: Option<Arc<AuditLog>>,
    /// MCP servers whose tools are offered to model turns.
    pub mcp: Option<Arc<mcp::McpServers>>,
}

/// One turn as the multiplexer asks for it.
pub struct TurnRequest<'a> {
    pub session_id: SessionId,
    pub turn_id: TurnId,
    /// The input as clients were shown it (`turn_started.text`).
    pub text: String,
    /// What the model reads instead, when it differs (a session's first input, whose alert
    /// fields are fenced).
    pub model_text: Option<String>,
    pub originator: ClientInfo,
    pub mode: Mode,
    pub params: &'a Map<String, Value>,
    /// Started from the hub.
    pub remote: bool,
    /// The tools this session may use.
    pub tools: &'a ToolRegistry,
    pub sink: &'a dyn EventSink,
    pub router: &'a dyn AnswerRouter,
    pub cancel: &'a CancellationToken,
}

impl Engine {
    pub fn new(provider: Option<Arc<dyn ModelProvider>>, tools: ToolRegistry) -> Self {
        Engine {
            model_configured: provider.is_some(),
            provider,
            tools,
            max_rounds: DEFAULT_MAX_ROUNDS,
            audit: None,
            mcp: None,
        }
    }

    /// The conversation a new session starts with. Its system prompt depends on the mode only:
    /// session params never enter it (see [`Engine::initial_input`]).
    pub fn new_conversation(&self, mode: Mode) -> Conversation {
        Conversation::with_system_prompt(prompts::system_prompt(mode, &self.tools))
    }

    /// The input a `diagnose` or `inspect` session starts with by itself, from its params;
    /// alert fields are fenced with the fence of the session's `conversation`.
    pub fn initial_input(
        &self,
        conversation: &Conversation,
        mode: Mode,
        params: &Map<String, Value>,
    ) -> Option<prompts::InitialInput> {
        prompts::initial_input(mode, params, &conversation.fence)
    }

    /// Runs one turn of a session in `mode`.
    pub async fn run(&self, conversation: &mut Conversation, req: TurnRequest<'_>) -> TurnOutcome {
        let extras = TurnExtras {
            originator: Some(req.originator.clone()),
            audit: self.audit.clone(),
            remote: req.remote,
        };
        let provider = match (&self.provider, req.mode) {
            (_, Mode::Inspect) => None,
            (Some(p), Mode::Diagnose) if self.model_configured => Some(p.clone()),
            (_, Mode::Diagnose) => None,
            (Some(p), Mode::Chat) => Some(p.clone()),
            (None, Mode::Chat) => {
                return TurnOutcome {
                    stop: StopReason::Error,
                    error: Some(
                        "no model is configured for this agent (set [model] in its config)".into(),
                    ),
                    usage: None,
                    final_text: String::new(),
                };
            }
        };
        // MCP tools are listed afresh for each model turn; a server that is down is reported
        // to the session and the turn goes on without it.
        let mut with_mcp: Option<ToolRegistry> = None;
        if let (Some(mcp), Some(_)) = (&self.mcp, &provider) {
            let (tools, problems) = mcp.session_tools().await;
            for message in problems {
                req.sink
                    .emit(EventBody::Notice {
                        level: NoticeLevel::Warning,
                        message,
                    })
                    .await;
            }
            if !tools.is_empty() {
                let mut registry = req.tools.clone();
                for tool in tools {
                    // Remote is untrusted: only tools the operator declared harmless.
                    if !req.remote || tool.read_only() {
                        registry.add(tool);
                    } else {
                        let name = tool.spec().name;
                        let why = format!(
                            "`{name}` is not allowed in sessions started from the hub: only \
                             tools of MCP servers configured with `needs_permission = false` \
                             are offered to them"
                        );
                        registry.withhold(&name, why);
                    }
                }
                with_mcp = Some(registry);
            }
        }
        let run = TurnRun {
            session_id: req.session_id.clone(),
            turn_id: req.turn_id.clone(),
            text: req.model_text.clone().unwrap_or_else(|| req.text.clone()),
            provider: match &provider {
                Some(p) => p.clone(),
                None => Arc::new(scripted::ScriptedProvider::demo()),
            },
            tools: with_mcp.as_ref().unwrap_or(req.tools),
            max_rounds: self.max_rounds,
            sink: req.sink,
            router: req.router,
            cancel: req.cancel,
        };
        match provider {
            Some(_) => run_turn_with(conversation, run, &extras).await,
            None => {
                let note = (req.mode == Mode::Diagnose).then_some(
                    "No model is configured, so this is an inspection report instead of an AI \
                     diagnosis. Configure [model] for a diagnosis.",
                );
                if let Some(note) = note {
                    run.sink
                        .emit(EventBody::Notice {
                            level: NoticeLevel::Info,
                            message: note.to_owned(),
                        })
                        .await;
                }
                let target = inspect_target(req.mode, req.params, &req.text);
                turn::run_inspect(
                    conversation,
                    run,
                    &extras,
                    &target.0,
                    target.1.as_deref(),
                    note,
                )
                .await
            }
        }
    }
}

/// Which plugin and target an inspection turn looks at: the session params for a diagnose
/// fallback, otherwise the input text (`disk /data`, `inspect net 10.0.0.1:443`).
fn inspect_target(mode: Mode, params: &Map<String, Value>, text: &str) -> (String, Option<String>) {
    let param = |k: &str| params.get(k).and_then(Value::as_str).map(str::to_owned);
    if mode == Mode::Diagnose {
        return (
            param("plugin").unwrap_or_else(|| "system".into()),
            param("target"),
        );
    }
    // The first word names the plugin (after an optional `inspect`); the rest of the line is
    // the target, spaces included (a path may hold one).
    let word = |s: &str| -> (String, String) {
        let s = s.trim_start();
        match s.split_once(char::is_whitespace) {
            Some((w, rest)) => (w.to_owned(), rest.trim().to_owned()),
            None => (s.trim_end().to_owned(), String::new()),
        }
    };
    let (mut first, mut rest) = word(text);
    if first == "inspect" {
        (first, rest) = word(&rest);
    }
    if first.is_empty() {
        return (
            param("plugin").unwrap_or_else(|| "system".into()),
            param("target"),
        );
    }
    (first, (!rest.is_empty()).then_some(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another inspection asked for in an inspect session (the console sends `PLUGIN TARGET`):
    /// the target is the rest of the line, spaces included, so a path with a space is not cut.
    #[test]
    fn an_inspect_input_names_the_plugin_and_the_whole_target() {
        let none = Map::new();
        let at = |text: &str| inspect_target(Mode::Inspect, &none, text);
        assert_eq!(at("disk /var"), ("disk".into(), Some("/var".into())));
        assert_eq!(
            at("inspect log  /var/log/my app.log "),
            ("log".into(), Some("/var/log/my app.log".into()))
        );
        assert_eq!(at("mem"), ("mem".into(), None));
        assert_eq!(at("  "), ("system".into(), None));
    }
}
