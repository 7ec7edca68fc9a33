//! Real model servers' dialects of the chat-completions API, reproduced on the wire by the local
//! server: what llama.cpp's OpenAI-compatible server (llama-cpp-python) accepts and sends, the
//! legacy `function_call`, streams without usage, `: ping` comments, 200 answers with no data.

mod sse_server;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use sse_server::*;
use std::sync::{Arc, Mutex};
use tether_engine::model::{
    Message, ModelChunk, ModelError, ModelProvider, ModelRequest, ToolCallRequest,
};
use tether_engine::openai::{OpenAiConfig, OpenAiProvider};
use tether_engine::{
    AnswerRouter, Conversation, EventSink, PermissionAnswer, PermissionAsk, TurnRun, run_turn,
};
use tether_host::tools::{ToolRegistry, ToolSpec, ToolsConfig};
use tether_proto::{EventBody, SessionId, StopReason, TurnId};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// llama-cpp-python's server, as far as these tests need it
// ---------------------------------------------------------------------------------------------

/// Its events go through sse-starlette (with `sep="\n"`).
fn lcp_event(v: Value) -> Step {
    Step::Raw(format!("data: {v}\n\n"))
}

/// sse-starlette's keep-alive comment (every 15 s by default).
fn lcp_ping() -> Step {
    Step::Raw(": ping - 2026-08-17 09:30:00.123456+00:00\n\n".into())
}

fn lcp_done() -> Step {
    Step::Raw("data: [DONE]\n\n".into())
}

fn lcp_chunk(delta: Value, finish_reason: Value) -> Value {
    json!({
        "id": "chatcmpl-3f1c", "object": "chat.completion.chunk", "created": 1_755_420_000,
        "model": "smollm2-135m",
        "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": null,
                     "delta": delta}],
    })
}

/// A streamed tool call as llama-cpp-python writes it (`_convert_completion_to_chat_function`):
/// a blank role chunk; then, per generated piece, the call twice — as the legacy
/// `function_call` and as `tool_calls` with `id`, `type` and `function.name` repeated in every
/// chunk; a finish chunk; `[DONE]`; no usage. A `: ping` comment arrives mid-stream.
fn lcp_tool_call_stream(name: &str, pieces: &[&str]) -> Reply {
    let id = format!("call__0_{name}_cmpl-3f1c");
    let mut steps = vec![lcp_event(lcp_chunk(
        json!({"role": "assistant", "content": null, "function_call": null, "tool_calls": null}),
        Value::Null,
    ))];
    for (i, piece) in pieces.iter().enumerate() {
        if i == 1 {
            steps.push(lcp_ping());
        }
        steps.push(lcp_event(lcp_chunk(
            json!({
                "role": null, "content": null,
                "function_call": {"name": name, "arguments": piece},
                "tool_calls": [{"index": 0, "id": id, "type": "function",
                                "function": {"name": name, "arguments": piece}}],
            }),
            Value::Null,
        )));
    }
    steps.push(lcp_event(lcp_chunk(
        json!({"role": null, "content": null, "function_call": null, "tool_calls": null}),
        json!("tool_calls"),
    )));
    steps.push(lcp_done());
    Reply::sse(steps)
}

/// A streamed text answer as llama-cpp-python writes it: role chunk, content pieces, a finish
/// chunk with an empty delta, `[DONE]`; pings before and between; no usage.
fn lcp_text_stream(pieces: &[&str]) -> Reply {
    let mut steps = vec![
        lcp_ping(),
        lcp_event(lcp_chunk(json!({"role": "assistant"}), Value::Null)),
    ];
    for piece in pieces {
        steps.push(lcp_event(lcp_chunk(json!({"content": piece}), Value::Null)));
        steps.push(lcp_ping());
    }
    steps.push(lcp_event(lcp_chunk(json!({}), json!("stop"))));
    steps.push(lcp_done());
    Reply::sse(steps)
}

/// What llama-cpp-python's server does with a request before generating: an assistant message
/// whose `content` is null breaks its chat template (HTTP 500); with tools but no
/// `tool_choice`, its function-calling handler renders the prompt without the tools, so the
/// model only talks.
fn llama_cpp_python() -> Judge {
    Arc::new(|body: &Value| {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        if messages
            .iter()
            .any(|m| m["role"] == "assistant" && m.get("content").is_none_or(Value::is_null))
        {
            return Some(Reply::error(
                500,
                "can only concatenate str (not \"NoneType\") to str",
            ));
        }
        let offers_tools = body["tools"].as_array().is_some_and(|t| !t.is_empty());
        if offers_tools && body.get("tool_choice").is_none() {
            return Some(lcp_text_stream(&["I would need to ", "look at the host."]));
        }
        None
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn ask(text: &str) -> ModelRequest {
    ModelRequest {
        messages: vec![
            Message::System {
                content: "You are a test.".into(),
            },
            Message::User {
                content: text.into(),
            },
        ],
        tools: vec![],
    }
}

fn with_tools(mut request: ModelRequest) -> ModelRequest {
    request.tools = vec![ToolSpec {
        name: "system_info".into(),
        description: "Host facts.".into(),
        parameters: json!({"type": "object", "properties": {}}),
    }];
    request
}

/// A conversation that already went through one tool call, with no text beside the call.
fn after_a_tool_call() -> ModelRequest {
    let mut request = ask("how full is /?");
    request.messages.extend([
        Message::Assistant {
            content: String::new(),
            reasoning: None,
            tool_calls: vec![ToolCallRequest {
                id: "call_1".into(),
                name: "system_info".into(),
                arguments: "{}".into(),
            }],
        },
        Message::Tool {
            tool_call_id: "call_1".into(),
            name: "system_info".into(),
            content: "{\"disks\": []}".into(),
        },
    ]);
    request
}

fn calls(chunks: &[ModelChunk]) -> Vec<ToolCallRequest> {
    chunks
        .iter()
        .filter_map(|c| match c {
            ModelChunk::ToolCall(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

/// The usage chunks as clients see them (JSON).
fn usage_json(chunks: &[ModelChunk]) -> Vec<Value> {
    chunks
        .iter()
        .filter_map(|c| match c {
            ModelChunk::Usage(u) => Some(serde_json::to_value(u).expect("usage serializes")),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What tether sends
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_assistant_tool_call_is_sent_with_empty_content_not_null() {
    let server =
        Server::start_judged(llama_cpp_python(), vec![lcp_text_stream(&["40 % full."])]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(after_a_tool_call())).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "40 % full.");
    assert_eq!(server.request_count(), 1);
    let sent = &server.requests()[0];
    assert_eq!(sent.body["messages"][2]["content"], "");
    assert!(
        sent.raw.contains(r#""role":"assistant","content":"""#),
        "{}",
        sent.raw
    );
}

#[tokio::test]
async fn tool_choice_auto_is_sent_when_tools_are_offered() {
    let server = Server::start_judged(
        llama_cpp_python(),
        vec![lcp_tool_call_stream("system_info", &["{", "}"])],
    )
    .await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(with_tools(ask("look")))).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "", "the server ignored the tools");
    assert_eq!(calls(&chunks).len(), 1);
    let body = &server.bodies()[0];
    assert_eq!(body["tool_choice"], "auto");

    // No tools, no tool_choice (OpenAI refuses one without tools).
    let server = Server::start(vec![Reply::text(&["ok"])]).await;
    let provider = sse_server::provider(vec![server.endpoint()]);
    let (_, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    assert!(server.bodies()[0].get("tool_choice").is_none());
}

// ---------------------------------------------------------------------------------------------
// What servers send
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn streamed_tool_calls_repeating_id_type_and_name_are_assembled_once() {
    let arguments = r#"{"path": "/var/log/syslog", "lines": 20}"#;
    let pieces: Vec<String> = arguments
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let server = Server::start(vec![lcp_tool_call_stream("log_tail", &pieces)]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(with_tools(ask("logs?")))).await;
    assert_eq!(error, None);
    // One call (not one per chunk, not a second one from `function_call`), its name once,
    // its arguments whole.
    assert_eq!(
        calls(&chunks),
        vec![ToolCallRequest {
            id: "call__0_log_tail_cmpl-3f1c".into(),
            name: "log_tail".into(),
            arguments: arguments.into(),
        }]
    );
}

#[tokio::test]
async fn a_non_streamed_answer_with_function_call_beside_tool_calls_counts_once() {
    // llama-cpp-python's non-streamed answer for a single call carries both.
    let answer = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {
            "role": "assistant", "content": null,
            "function_call": {"name": "system_info", "arguments": "{}"},
            "tool_calls": [{"id": "call__0_system_info_cmpl-1", "type": "function",
                            "function": {"name": "system_info", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 90, "completion_tokens": 3, "total_tokens": 93}
    });
    let server = Server::start(vec![Reply::json(200, answer)]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(with_tools(ask("hi")))).await;
    assert_eq!(error, None);
    assert_eq!(
        calls(&chunks),
        vec![ToolCallRequest {
            id: "call__0_system_info_cmpl-1".into(),
            name: "system_info".into(),
            arguments: "{}".into(),
        }]
    );
}

#[tokio::test]
async fn a_legacy_function_call_alone_is_a_tool_call() {
    // Servers that only speak the old `functions` API stream `function_call` fragments.
    let steps = vec![
        delta(json!({"role": "assistant", "content": null,
                     "function_call": {"name": "disk_usage", "arguments": ""}})),
        delta(json!({"function_call": {"arguments": "{\"mount\":"}})),
        delta(json!({"function_call": {"arguments": " \"/\"}"}})),
        finish("function_call"),
        done(),
    ];
    let server = Server::start(vec![Reply::sse(steps)]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(with_tools(ask("disk?")))).await;
    assert_eq!(error, None);
    let calls = calls(&chunks);
    assert_eq!(calls.len(), 1, "{chunks:?}");
    assert_eq!(calls[0].name, "disk_usage");
    assert_eq!(calls[0].arguments, r#"{"mount": "/"}"#);
    assert!(calls[0].id.starts_with("call_"), "{}", calls[0].id);
}

#[tokio::test]
async fn ping_comments_are_ignored_wherever_they_come() {
    let server = Server::start(vec![lcp_text_stream(&["Disk ", "is ", "fine."])]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("disk?"))).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "Disk is fine.");
}

#[tokio::test]
async fn a_stream_without_usage_gets_an_estimate_that_says_so() {
    let server = Server::start(vec![
        lcp_text_stream(&["The disk ", "is full."]),
        // With a usage report, that one counts and is not marked.
        Reply::text(&["ok"]),
    ])
    .await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("disk?"))).await;
    assert_eq!(error, None);
    let usage = usage_json(&chunks);
    assert_eq!(usage.len(), 1, "{chunks:?}");
    let u = &usage[0];
    assert_eq!(u["estimated"], true, "{u}");
    let (prompt, completion, total) = (
        u["prompt_tokens"].as_u64().unwrap_or(0),
        u["completion_tokens"].as_u64().unwrap_or(0),
        u["total_tokens"].as_u64().unwrap_or(0),
    );
    // "The disk is full." is 17 bytes: about 4 tokens at 4 bytes a token.
    assert!((4..=6).contains(&completion), "{u}");
    // Two short messages: a few tokens each, with overhead.
    assert!((8..=40).contains(&prompt), "{u}");
    assert_eq!(total, prompt + completion);
    assert!(matches!(chunks.last(), Some(ModelChunk::Usage(_))));

    let (chunks, error) = collect_bounded(provider.stream(ask("again"))).await;
    assert_eq!(error, None);
    assert_eq!(
        usage_json(&chunks),
        vec![json!({"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11})]
    );
}

#[tokio::test]
async fn an_estimate_counts_tool_calls_and_reasoning() {
    let steps = vec![
        role(),
        reasoning("Check the disks first."),
        call_start(0, "c1", "disk_usage"),
        call_args(0, r#"{"mount": "/"}"#),
        finish("tool_calls"),
        done(),
    ];
    let server = Server::start(vec![Reply::sse(steps)]).await;
    let mut endpoint = server.endpoint();
    endpoint.include_usage = false;
    let provider = provider(vec![endpoint]);
    let (chunks, error) = collect_bounded(provider.stream(with_tools(ask("disk?")))).await;
    assert_eq!(error, None);
    let usage = usage_json(&chunks);
    assert_eq!(usage.len(), 1, "{chunks:?}");
    assert_eq!(usage[0]["estimated"], true);
    // 22 bytes of reasoning (6) + a call: overhead 8, name 3, arguments 4.
    let completion = usage[0]["completion_tokens"].as_u64().unwrap_or(0);
    assert!((18..=24).contains(&completion), "{}", usage[0]);
}

// ---------------------------------------------------------------------------------------------
// A 200 answer with no data
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_200_stream_with_no_data_is_retried() {
    let server = Server::start(vec![
        // Headers, then the body ends: the server failed after accepting the request.
        Reply::sse([]),
        // Only `[DONE]` (llama-cpp-python interrupted by the next request, pings first).
        Reply::sse([lcp_ping(), lcp_done()]),
        Reply::text(&["third time"]),
    ])
    .await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "third time");
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn a_200_with_no_data_fails_over_and_then_says_what_happened() {
    let primary = Server::start(vec![
        Reply::sse([lcp_done()]),
        Reply::sse([
            lcp_event(lcp_chunk(json!({"role": "assistant"}), Value::Null)),
            lcp_done(),
        ]),
        // A JSON answer with an empty body.
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            steps: vec![],
        },
    ])
    .await;
    let fallback = Server::start(vec![Reply::text(&["from the fallback"])]).await;
    let provider = provider(vec![primary.endpoint(), fallback.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "from the fallback");
    assert_eq!((primary.request_count(), fallback.request_count()), (3, 1));

    // Alone, the empty answers end in an error that says what the server did (the last one:
    // the server failed after the headers and dropped the connection).
    let server = Server::start(vec![
        Reply::sse([]),
        Reply::sse([lcp_done()]),
        Reply::sse([
            lcp_ping(),
            Step::Delay(std::time::Duration::from_millis(5)),
            Step::Cut,
        ]),
    ])
    .await;
    let provider = sse_server::provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert!(chunks.is_empty());
    let text = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(text.starts_with("model stream broke off: the server accepted the request (HTTP 200) but sent no answer: the connection broke"), "{text}");
    assert!(text.contains("may need stream = false"), "{text}");
    assert!(text.contains("gave up after 3 tries"), "{text}");
    assert_eq!(server.request_count(), 3);
}

/// llama-cpp-python's `chatml-function-calling` handler with `tool_choice: "auto"`: when the
/// model picks a tool in a streamed request it raises "Automatic streaming tool choice is not
/// supported" after the 200 headers went out, so the stream carries nothing; a request with
/// `stream: false` gets the call whole.
fn chatml_function_calling_picks_a_tool() -> Judge {
    Arc::new(|body: &Value| {
        if body["tool_choice"] != "auto" {
            return Some(Reply::error(400, "this test always offers tools with auto"));
        }
        if body["stream"] == true {
            return Some(Reply::sse([lcp_ping()]));
        }
        Some(Reply::json(
            200,
            json!({
                "id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null,
                    "message": {"role": "assistant", "content": null,
                        "function_call": {"name": "system_info", "arguments": "{}"},
                        "tool_calls": [{"id": "call__0_system_info_cmpl-9", "type": "function",
                            "function": {"name": "system_info", "arguments": "{}"}}]}}],
                "usage": {"prompt_tokens": 210, "completion_tokens": 2, "total_tokens": 212}
            }),
        ))
    })
}

#[tokio::test]
async fn a_server_that_cannot_stream_tool_calls_works_with_stream_off() {
    let server = Server::start_judged(chatml_function_calling_picks_a_tool(), vec![]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(with_tools(ask("look")))).await;
    assert!(chunks.is_empty());
    let text = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("no answer"), "{text}");
    assert!(text.contains("stream = false"), "{text}");

    let mut endpoint = server.endpoint();
    endpoint.stream = false;
    let provider = sse_server::provider(vec![endpoint]);
    let (chunks, error) = collect_bounded(provider.stream(with_tools(ask("look")))).await;
    assert_eq!(error, None);
    assert_eq!(
        calls(&chunks),
        vec![ToolCallRequest {
            id: "call__0_system_info_cmpl-9".into(),
            name: "system_info".into(),
            arguments: "{}".into(),
        }]
    );
    let sent = server.requests().pop().expect("a request");
    assert_eq!(sent.body["stream"], false);
    assert!(sent.body.get("stream_options").is_none(), "{}", sent.raw);
    assert_eq!(sent.accept.as_deref(), Some("application/json"));

    // Without streaming, an empty answer gets no advice to turn streaming off.
    let server = Server::start(vec![Reply::json(200, json!({}))]).await;
    let mut endpoint = server.endpoint();
    endpoint.stream = false;
    let mut provider_config = OpenAiConfig::new(endpoint);
    provider_config.retry.attempts = 1;
    let provider = OpenAiProvider::new(provider_config).expect("provider");
    let (_, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(
        error,
        Some(ModelError::Stream(
            "the server accepted the request (HTTP 200) but sent no answer".into()
        ))
    );
}

// ---------------------------------------------------------------------------------------------
// A whole turn against llama-cpp-python
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Events(Mutex<Vec<EventBody>>);

impl EventSink for Events {
    fn emit(&self, body: EventBody) -> BoxFuture<'_, ()> {
        self.0.lock().expect("lock").push(body);
        Box::pin(async {})
    }
}

struct NoQuestions;

impl AnswerRouter for NoQuestions {
    fn ask(&self, _: PermissionAsk) -> BoxFuture<'_, PermissionAnswer> {
        Box::pin(async { PermissionAnswer::cancelled() })
    }
}

#[tokio::test]
async fn a_diagnosis_turn_runs_against_llama_cpp_python() {
    let server = Server::start_judged(
        llama_cpp_python(),
        vec![
            lcp_tool_call_stream("system_info", &["{", "}"]),
            lcp_text_stream(&["The host ", "looks healthy."]),
        ],
    )
    .await;
    let provider: Arc<dyn ModelProvider> = Arc::new(provider(vec![server.endpoint()]));
    let tools = ToolRegistry::builtin(&ToolsConfig::default());
    let sink = Events::default();
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
                router: &NoQuestions,
                cancel: &cancel,
            },
        ),
    )
    .await
    .expect("the turn finished in time");
    assert_eq!(outcome.stop, StopReason::Completed, "{:?}", outcome.error);
    assert_eq!(outcome.final_text, "The host looks healthy.");
    assert_eq!(server.request_count(), 2);
    let events = sink.0.lock().expect("lock");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventBody::ToolResult { ok: true, .. })),
        "{events:?}"
    );
    // Neither answer carried usage: the turn's total is an estimate, and says so.
    let usage = serde_json::to_value(&outcome.usage).expect("usage serializes");
    assert_eq!(usage["estimated"], true, "{usage}");
    assert!(usage["total_tokens"].as_u64().unwrap_or(0) > 0, "{usage}");
}
