//! The size of a typical diagnose turn's last model request: the system prompt, the first
//! message (a disk alert), one round of four read-only built-in tool calls on this host and
//! their results, and the tool definitions. Prints bytes and `context::estimate_tokens`.
//!
//! `cargo run -p tether-engine --example prompt_size`

use futures_util::future::BoxFuture;
use serde_json::{Map, json};
use std::sync::Arc;
use tether_engine::context::{estimate_tokens, estimate_tool_tokens};
use tether_engine::model::Message;
use tether_engine::scripted::ScriptedProvider;
use tether_engine::{
    AnswerRouter, Engine, EventSink, PermissionAnswer, PermissionAsk, TurnRun, run_turn,
};
use tether_host::tools::{ToolRegistry, ToolsConfig};
use tether_proto::{EventBody, Mode, SessionId, TurnId};
use tokio_util::sync::CancellationToken;

struct Quiet;
impl EventSink for Quiet {
    fn emit(&self, _body: EventBody) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
impl AnswerRouter for Quiet {
    fn ask(&self, _ask: PermissionAsk) -> BoxFuture<'_, PermissionAnswer> {
        Box::pin(async { PermissionAnswer::cancelled() })
    }
}

fn content(m: &Message) -> usize {
    match m {
        Message::System { content } | Message::User { content } => content.len(),
        Message::Assistant {
            content,
            tool_calls,
            ..
        } => {
            content.len()
                + tool_calls
                    .iter()
                    .map(|c| c.id.len() + c.name.len() + c.arguments.len())
                    .sum::<usize>()
        }
        Message::Tool { content, .. } => content.len(),
    }
}

fn line(what: &str, messages: &[Message]) {
    let bytes: usize = messages.iter().map(content).sum();
    println!(
        "{what:<28} {bytes:>7} bytes {:>6} tokens",
        estimate_tokens(messages)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tools = ToolRegistry::builtin(&ToolsConfig::default());
    let engine = Engine::new(None, tools.clone());
    let mut params = Map::new();
    params.insert(
        "alert".into(),
        json!("[Critical] Critical: /data is 93% full (threshold 90%)"),
    );
    params.insert("plugin".into(), json!("disk"));
    params.insert("target".into(), json!("/data"));
    let mut conversation = engine.new_conversation(Mode::Diagnose);
    let text = engine
        .initial_input(&conversation, Mode::Diagnose, &params)
        .ok_or("no first message")?
        .for_model;
    let provider = ScriptedProvider::from_json(
        r#"{"responses":[
            {"tool_calls":[{"tool":"system_info"},{"tool":"disks"},{"tool":"memory"},{"tool":"kernel_log"}]},
            {"text":"Summary: /data is nearly full."}
        ]}"#,
        "prompt_size",
    )?;
    run_turn(
        &mut conversation,
        TurnRun {
            session_id: SessionId::from("s-size"),
            turn_id: TurnId::from("t-size"),
            text,
            provider: Arc::new(provider),
            tools: &tools,
            max_rounds: 3,
            sink: &Quiet,
            router: &Quiet,
            cancel: &CancellationToken::new(),
        },
    )
    .await;
    // The last request carried everything but the final answer.
    let request = &conversation.messages[..conversation.messages.len() - 1];
    line("system prompt", &request[..1]);
    line("first user message", &request[1..2]);
    line("tool calls and results", &request[2..]);
    line("messages, total", request);
    let specs = tools.specs();
    let spec_bytes: usize = specs
        .iter()
        .map(|s| s.name.len() + s.description.len() + s.parameters.to_string().len())
        .sum();
    println!(
        "{:<28} {spec_bytes:>7} bytes {:>6} tokens",
        "tool definitions",
        estimate_tool_tokens(&specs)
    );
    println!(
        "{:<28} {:>7} bytes {:>6} tokens",
        "request, total",
        request.iter().map(content).sum::<usize>() + spec_bytes,
        estimate_tokens(request) + estimate_tool_tokens(&specs)
    );
    Ok(())
}
