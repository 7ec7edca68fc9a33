//! tether-engine: the work of a session.
//!
//! * [`model`] — the provider trait; [`scripted`] — the scripted provider.
//! * [`tools`] — the tool trait, registry and built-in tools; [`host`] — `/proc` readings.
//! * [`turn`] — the turn loop and the two seams the multiplexer implements
//!   ([`EventSink`], [`AnswerRouter`]).
//! * [`log`] — the SQLite event log.
//!
//! The engine knows clients (as `ClientInfo` values), never transports.

pub mod host;
pub mod log;
pub mod model;
pub mod scripted;
pub mod tools;
pub mod turn;

pub use model::{ModelProvider, ModelRequest};
pub use turn::{
    AnswerRouter, Conversation, EventSink, PermissionAnswer, PermissionAsk, TurnOutcome, TurnRun,
    run_turn,
};

use serde_json::{Map, Value};
use std::sync::Arc;
use tether_proto::Mode;
use tools::ToolRegistry;

/// Default for `max_rounds`: model calls per turn before it stops with `max_rounds`.
pub const DEFAULT_MAX_ROUNDS: u32 = 20;

/// The engine: a model provider (when one is configured) and the tools.
#[derive(Clone)]
pub struct Engine {
    pub provider: Option<Arc<dyn ModelProvider>>,
    pub tools: ToolRegistry,
    pub max_rounds: u32,
}

impl Engine {
    pub fn new(provider: Option<Arc<dyn ModelProvider>>, tools: ToolRegistry) -> Self {
        Engine {
            provider,
            tools,
            max_rounds: DEFAULT_MAX_ROUNDS,
        }
    }

    /// The conversation a new session starts with.
    pub fn new_conversation(&self, mode: Mode, params: &Map<String, Value>) -> Conversation {
        Conversation::with_system_prompt(system_prompt(mode, params, &self.tools))
    }
}

fn system_prompt(mode: Mode, params: &Map<String, Value>, tools: &ToolRegistry) -> String {
    let snap = host::snapshot();
    let mut prompt = String::from(
        "You are tether, an operations assistant running on a Linux host. You can inspect the \
         host with tools. Prefer read-only tools; a tool with side effects runs only after a \
         human approves it. Be concise and precise, and say what evidence you used.\n\n",
    );
    prompt.push_str(&format!(
        "Host: {} ({}), kernel {} {}, {} CPUs, up {} s.\n",
        snap.hostname,
        snap.os.as_deref().unwrap_or("unknown OS"),
        snap.kernel.release,
        snap.kernel.arch,
        snap.cpus,
        snap.uptime_sec.unwrap_or(0),
    ));
    let names: Vec<&str> = tools.names().collect();
    prompt.push_str(&format!("Tools: {}.\n", names.join(", ")));
    match mode {
        Mode::Chat => {}
        Mode::Diagnose | Mode::Inspect => {
            prompt.push_str(&format!(
                "Mode: {mode}. Parameters: {}\n",
                Value::Object(params.clone())
            ));
        }
    }
    prompt
}
