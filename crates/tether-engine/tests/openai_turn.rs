//! End to end: a whole turn (`run_turn`) with the OpenAI-compatible provider against a local
//! chat-completions server. The model asks for `system_info`, gets the result in the second
//! request, and answers.

mod sse_server;

use futures_util::future::BoxFuture;
use serde_json::json;
use sse_server::*;
use std::sync::{Arc, Mutex};
use tether_engine::model::ModelProvider;
use tether_engine::{
    AnswerRouter, Conversation, EventSink, PermissionAnswer, PermissionAsk, TurnRun, run_turn,
};
use tether_host::tools::{ToolRegistry, ToolsConfig};
use tether_proto::{EventBody, SessionId, StopReason, TurnId, Usage};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Events(Mutex<Vec<EventBody>>);

impl EventSink for Events {
    fn emit(&self, body: EventBody) -> BoxFuture<'_, ()> {
        self.0.lock().expect("lock").push(body);
        Box::pin(async {})
    }
}

/// `system_info` needs no permission; any question is a bug in this test.
struct NoQuestions(Mutex<Vec<PermissionAsk>>);

impl AnswerRouter for NoQuestions {
    fn ask(&self, ask: PermissionAsk) -> BoxFuture<'_, PermissionAnswer> {
        self.0.lock().expect("lock").push(ask);
        Box::pin(async { PermissionAnswer::cancelled() })
    }
}

#[tokio::test]
async fn a_turn_with_a_tool_call_runs_end_to_end() {
    let server = Server::start(vec![
        Reply::sse([
            role(),
            reasoning("I need the host facts."),
            text("Let me look."),
            call_start(0, "call_sys", "system_info"),
            call_args(0, "{"),
            call_args(0, "}"),
            finish("tool_calls"),
            usage(120, 15),
            done(),
        ]),
        Reply::sse([
            role(),
            text("The host "),
            text("looks healthy."),
            finish("stop"),
            usage(400, 8),
            done(),
        ]),
    ])
    .await;
    let provider: Arc<dyn ModelProvider> = Arc::new(provider(vec![server.endpoint()]));
    let tools = ToolRegistry::builtin(&ToolsConfig::default());
    let sink = Events::default();
    let router = NoQuestions(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let mut conversation = Conversation::with_system_prompt("You are tether.".into());

    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        run_turn(
            &mut conversation,
            TurnRun {
                session_id: SessionId("s1".into()),
                turn_id: TurnId("t1".into()),
                text: "How is this host doing?".into(),
                provider,
                tools: &tools,
                max_rounds: 5,
                sink: &sink,
                router: &router,
                cancel: &cancel,
            },
        ),
    )
    .await
    .expect("the turn finished in time");

    assert_eq!(outcome.stop, StopReason::Completed, "{:?}", outcome.error);
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.final_text, "The host looks healthy.");
    assert_eq!(
        outcome.usage,
        Some(Usage {
            prompt_tokens: 520,
            completion_tokens: 23,
            total_tokens: 543,
            estimated: false,
        })
    );
    assert!(router.0.lock().expect("lock").is_empty());

    // Two model calls; the first offered the tools, the second carried the tool result.
    let bodies = server.bodies();
    assert_eq!(bodies.len(), 2);
    let offered: Vec<&str> = bodies[0]["tools"]
        .as_array()
        .expect("tools offered")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert!(offered.contains(&"system_info"), "{offered:?}");
    let second = bodies[1]["messages"].as_array().expect("messages");
    assert_eq!(second.len(), 4, "{second:#?}");
    assert_eq!(second[0]["role"], "system");
    assert_eq!(
        second[1],
        json!({"role": "user", "content": "How is this host doing?"})
    );
    assert_eq!(
        second[2],
        json!({"role": "assistant", "content": "Let me look.",
               "reasoning_content": "I need the host facts.",
               "tool_calls": [{"id": "call_sys", "type": "function",
                               "function": {"name": "system_info", "arguments": "{}"}}]})
    );
    assert_eq!(second[3]["role"], "tool");
    assert_eq!(second[3]["tool_call_id"], "call_sys");
    let result = second[3]["content"].as_str().expect("tool output");
    assert!(result.contains("hostname"), "{result}");

    // What clients saw.
    let events = sink.0.lock().expect("lock");
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            EventBody::TextDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Let me look.The host looks healthy.");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventBody::ReasoningDelta { .. }))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventBody::ToolCall { tool, .. } if tool == "system_info"))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventBody::ToolResult { ok: true, .. }))
    );

    // The conversation ends with the final answer, after the call and its result.
    assert_eq!(conversation.messages.len(), 5);
}

#[tokio::test]
async fn a_model_failure_ends_the_turn_with_the_servers_message() {
    let server = Server::start(vec![Reply::error(
        400,
        "This model's maximum context length is 8192 tokens.",
    )])
    .await;
    let provider: Arc<dyn ModelProvider> = Arc::new(provider(vec![server.endpoint()]));
    let tools = ToolRegistry::builtin(&ToolsConfig::default());
    let sink = Events::default();
    let router = NoQuestions(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let mut conversation = Conversation::with_system_prompt("You are tether.".into());
    let outcome = run_turn(
        &mut conversation,
        TurnRun {
            session_id: SessionId("s1".into()),
            turn_id: TurnId("t1".into()),
            text: "hi".into(),
            provider,
            tools: &tools,
            max_rounds: 5,
            sink: &sink,
            router: &router,
            cancel: &cancel,
        },
    )
    .await;
    assert_eq!(outcome.stop, StopReason::Error);
    assert_eq!(
        outcome.error.as_deref(),
        Some("model returned HTTP 400: This model's maximum context length is 8192 tokens.")
    );
    assert_eq!(server.request_count(), 1);
}
