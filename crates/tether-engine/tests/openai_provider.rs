//! The OpenAI-compatible provider against a local scripted chat-completions server: streaming,
//! tool-call assembly, retries, failover, broken and idle streams, cancellation, probe.

mod sse_server;

use serde_json::json;
use sse_server::*;
use std::time::Duration;
use tether_engine::model::{
    Message, ModelChunk, ModelError, ModelProvider, ModelRequest, ToolCallRequest,
};
use tether_engine::openai::{OpenAiConfig, OpenAiEndpoint, OpenAiProvider, RetryPolicy, probe};
use tether_proto::Usage;

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

fn call(id: &str, name: &str, arguments: &str) -> ModelChunk {
    ModelChunk::ToolCall(ToolCallRequest {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    })
}

/// `chunks` without the usage estimate that must end them (the stream reported no usage).
fn but_the_estimate(mut chunks: Vec<ModelChunk>) -> Vec<ModelChunk> {
    match chunks.pop() {
        Some(ModelChunk::Usage(u)) if u.estimated => chunks,
        other => panic!("expected an estimated usage last, got {other:?}"),
    }
}

#[tokio::test]
async fn streamed_text_arrives_in_order_then_usage() {
    let server = Server::start(vec![Reply::text(&["Hel", "lo, ", "world"])]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    assert_eq!(
        chunks,
        vec![
            ModelChunk::Text("Hel".into()),
            ModelChunk::Text("lo, ".into()),
            ModelChunk::Text("world".into()),
            ModelChunk::Usage(Usage {
                prompt_tokens: 10,
                completion_tokens: 3,
                total_tokens: 13,
                estimated: false,
            }),
        ]
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let body = &requests[0].body;
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(requests[0].accept.as_deref(), Some("text/event-stream"));
    assert_eq!(requests[0].authorization, None);
}

#[tokio::test]
async fn escaped_and_unicode_text_survives_splitting() {
    // Raw bytes split inside a multi-byte character and inside an event.
    let event = json!({"choices": [{"index": 0, "delta": {"content": "naïve \"quoted\"\n→ ok"}}]});
    let wire = format!("data: {event}\n\ndata: [DONE]\n\n");
    let cut = wire.find('ï').expect("has ï") + 1; // inside the two bytes of ï
    let (a, b) = wire.as_bytes().split_at(cut);
    let reply = Reply {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        steps: vec![
            Step::Bytes(a.to_vec()),
            Step::Delay(Duration::from_millis(5)),
            Step::Bytes(b.to_vec()),
        ],
    };
    let server = Server::start(vec![reply]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    assert_eq!(
        but_the_estimate(chunks),
        vec![ModelChunk::Text("naïve \"quoted\"\n→ ok".into())]
    );
}

#[tokio::test]
async fn tool_call_arguments_split_over_many_chunks_are_assembled() {
    let arguments = r#"{"path": "/var/log/syslog", "lines": 20, "note": "a \"quoted\" word"}"#;
    let mut steps = vec![role(), call_start(0, "call_abc", "read_file")];
    // One fragment per character, the way small local models stream.
    steps.extend(arguments.chars().map(|c| call_args(0, &c.to_string())));
    steps.extend([finish("tool_calls"), usage(5, 40), done()]);
    let server = Server::start(vec![Reply::sse(steps)]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("read the log"))).await;
    assert_eq!(error, None);
    assert_eq!(
        chunks,
        vec![
            call("call_abc", "read_file", arguments),
            ModelChunk::Usage(Usage {
                prompt_tokens: 5,
                completion_tokens: 40,
                total_tokens: 45,
                estimated: false,
            }),
        ]
    );
}

#[tokio::test]
async fn parallel_tool_calls_interleaved_are_assembled_by_index() {
    let steps = vec![
        role(),
        text("Checking both."),
        call_start(0, "call_a", "system_info"),
        call_start(1, "call_b", "read_file"),
        call_args(1, "{\"pa"),
        call_args(0, "{"),
        call_args(1, "th\": \"/var/"),
        call_args(0, "}"),
        call_args(1, "log/messages\"}"),
        finish("tool_calls"),
        done(),
    ];
    let server = Server::start(vec![Reply::sse(steps)]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("check"))).await;
    assert_eq!(error, None);
    assert_eq!(
        but_the_estimate(chunks),
        vec![
            ModelChunk::Text("Checking both.".into()),
            call("call_a", "system_info", "{}"),
            call("call_b", "read_file", r#"{"path": "/var/log/messages"}"#),
        ]
    );
}

#[tokio::test]
async fn reasoning_content_and_reasoning_are_streamed_as_reasoning() {
    let steps = vec![
        role(),
        reasoning("Let me "),
        reasoning("think."),
        // Some gateways call the field `reasoning`.
        delta(json!({"reasoning": " Still thinking."})),
        text("Answer."),
        finish("stop"),
        done(),
    ];
    let server = Server::start(vec![Reply::sse(steps)]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("why"))).await;
    assert_eq!(error, None);
    assert_eq!(
        but_the_estimate(chunks),
        vec![
            ModelChunk::Reasoning("Let me ".into()),
            ModelChunk::Reasoning("think.".into()),
            ModelChunk::Reasoning(" Still thinking.".into()),
            ModelChunk::Text("Answer.".into()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limited_request_is_retried_after_retry_after() {
    let server = Server::start(vec![
        Reply::error(429, "Rate limit reached").header("retry-after", "2"),
        Reply::text(&["after the wait"]),
    ])
    .await;
    let provider = OpenAiProvider::new(OpenAiConfig {
        retry: RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_secs(20),
        },
        ..OpenAiConfig::new(server.endpoint())
    })
    .expect("provider");
    let started = tokio::time::Instant::now();
    let (chunks, error) = collect(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "after the wait");
    assert_eq!(server.request_count(), 2);
    // The provider's own backoff would be 0.5-1 ms; the server asked for 2 s.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Both tries sent the same request.
    let bodies = server.bodies();
    assert_eq!(bodies[0], bodies[1]);
}

#[tokio::test(start_paused = true)]
async fn a_huge_retry_after_is_capped_at_max_delay() {
    let server = Server::start(vec![
        Reply::error(503, "overloaded").header("retry-after", "3600"),
        Reply::text(&["ok"]),
    ])
    .await;
    let provider = OpenAiProvider::new(OpenAiConfig {
        retry: RetryPolicy::default(), // max_delay 20 s
        ..OpenAiConfig::new(server.endpoint())
    })
    .expect("provider");
    let started = tokio::time::Instant::now();
    let (chunks, error) = collect(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "ok");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(20) && waited < Duration::from_secs(60),
        "{waited:?}"
    );
}

#[tokio::test]
async fn retries_give_up_with_the_last_error() {
    let server = Server::start(vec![
        Reply::error(502, "bad gateway one"),
        Reply::error(500, "internal two"),
        Reply::error(503, "overloaded three"),
        Reply::text(&["never asked for"]),
    ])
    .await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert!(chunks.is_empty());
    assert_eq!(
        error,
        Some(ModelError::Http {
            status: 503,
            message: "overloaded three (gave up after 3 tries)".into()
        })
    );
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn server_errors_fail_over_to_the_next_endpoint() {
    let primary = Server::start(vec![
        Reply::error(500, "primary is down"),
        Reply::error(500, "primary is down"),
        Reply::error(500, "primary is down"),
    ])
    .await;
    let fallback = Server::start(vec![Reply::text(&["from the fallback"])]).await;
    let mut second = fallback.endpoint();
    second.model = "fallback-model".into();
    let provider = provider(vec![primary.endpoint(), second]);
    assert_eq!(provider.describe(), "openai test-model (+1 fallback)");
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "from the fallback");
    assert_eq!(primary.request_count(), 3);
    assert_eq!(fallback.request_count(), 1);
    // The fallback got its own model name and the same conversation.
    let (p, f) = (&primary.bodies()[0], &fallback.bodies()[0]);
    assert_eq!(f["model"], "fallback-model");
    assert_eq!(p["messages"], f["messages"]);
}

#[tokio::test]
async fn all_endpoints_failing_reports_the_last_error() {
    let a = Server::start(vec![Reply::error(503, "a down"); 3]).await;
    let b = Server::start(vec![Reply::error(503, "b down"); 3]).await;
    let provider = provider(vec![a.endpoint(), b.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert!(chunks.is_empty());
    assert_eq!(
        error.map(|e| e.to_string()),
        Some("model returned HTTP 503: b down (gave up after 6 tries on 2 endpoints)".into())
    );
    assert_eq!((a.request_count(), b.request_count()), (3, 3));
}

#[tokio::test]
async fn bad_request_is_neither_retried_nor_failed_over() {
    let primary = Server::start(vec![
        Reply::error(400, "Invalid value for 'max_tokens': must be at least 1."),
        Reply::text(&["must not be asked"]),
    ])
    .await;
    let fallback = Server::start(vec![Reply::text(&["must not be asked"])]).await;
    let provider = provider(vec![primary.endpoint(), fallback.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert!(chunks.is_empty());
    let error = error.expect("an error");
    assert_eq!(
        error,
        ModelError::Http {
            status: 400,
            message: "Invalid value for 'max_tokens': must be at least 1.".into()
        }
    );
    // What the user reads.
    assert_eq!(
        error.to_string(),
        "model returned HTTP 400: Invalid value for 'max_tokens': must be at least 1."
    );
    assert_eq!(primary.request_count(), 1);
    assert_eq!(fallback.request_count(), 0);
}

#[tokio::test]
async fn unauthorized_and_not_found_say_what_is_wrong() {
    let server = Server::start(vec![Reply::error(401, "Incorrect API key provided")]).await;
    let provider = provider(vec![server.endpoint()]);
    let (_, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(
        error.map(|e| e.to_string()),
        Some("model returned HTTP 401: Incorrect API key provided".into())
    );
    assert_eq!(server.request_count(), 1);

    // A wrong base_url: the path does not exist on the server.
    let mut wrong = server.endpoint();
    wrong.base_url = format!("{}/v2", server.base_url);
    let provider = sse_server::provider(vec![wrong]);
    let (_, error) = collect_bounded(provider.stream(ask("hi"))).await;
    let text = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(text.starts_with("model returned HTTP 404"), "{text}");
    assert!(text.contains("/v1/v2/chat/completions"), "{text}");
}

#[tokio::test]
async fn a_stream_cut_mid_answer_is_an_error_and_not_retried() {
    let server = Server::start(vec![
        Reply::sse([
            role(),
            text("The disk is "),
            Step::Delay(Duration::from_millis(5)),
            Step::Cut,
        ]),
        Reply::text(&["a retry would duplicate output"]),
    ])
    .await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("disk?"))).await;
    assert_eq!(chunks, vec![ModelChunk::Text("The disk is ".into())]);
    match error {
        Some(ModelError::Stream(m)) => assert!(m.contains("connection broke"), "{m}"),
        other => panic!("expected a stream error, got {other:?}"),
    }
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn a_stream_that_just_stops_is_an_error() {
    let server = Server::start(vec![Reply::sse([role(), text("Half an ans")])]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(chunks, vec![ModelChunk::Text("Half an ans".into())]);
    assert_eq!(
        error,
        Some(ModelError::Stream(
            "the model's stream ended before it finished".into()
        ))
    );
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn a_finished_answer_without_done_is_complete() {
    // finish_reason seen, then the connection ends without [DONE]: the answer is whole.
    let server = Server::start(vec![Reply::sse([
        text("Complete."),
        finish("stop"),
        usage(3, 1),
    ])])
    .await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    assert_eq!(chunks.len(), 2);
    assert!(matches!(chunks[1], ModelChunk::Usage(_)));
}

#[tokio::test]
async fn a_stream_that_breaks_before_any_output_is_retried() {
    let server = Server::start(vec![
        // Only a role chunk and half a tool call: nothing was handed out yet.
        Reply::sse([role(), call_start(0, "c", "system_info"), Step::Cut]),
        Reply::sse([role()]), // ends without finishing
        Reply::text(&["third time lucky"]),
    ])
    .await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    // No tool call leaked from the broken tries.
    assert_eq!(
        chunks
            .iter()
            .filter(|c| !matches!(c, ModelChunk::Usage(_)))
            .cloned()
            .collect::<Vec<_>>(),
        vec![ModelChunk::Text("third time lucky".into())]
    );
    assert_eq!(server.request_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_fails_with_idle() {
    let server = Server::start(vec![
        Reply::sse([role(), text("Thinking"), Step::Stall]),
        Reply::text(&["never asked for"]),
    ])
    .await;
    let provider = provider(vec![server.endpoint()]);
    let started = tokio::time::Instant::now();
    let (chunks, error) = collect(provider.stream(ask("hi"))).await;
    assert_eq!(chunks, vec![ModelChunk::Text("Thinking".into())]);
    assert_eq!(error, Some(ModelError::Idle(60)));
    assert_eq!(
        error.map(|e| e.to_string()).as_deref(),
        Some("model sent nothing for 60 s")
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(60), "{waited:?}");
    assert!(waited < Duration::from_secs(61), "{waited:?}");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_before_any_output_is_retried() {
    let server = Server::start(vec![
        Reply::sse([role(), Step::Stall]),
        Reply::sse([Step::Stall]),
        Reply::text(&["awake"]),
    ])
    .await;
    let provider = provider(vec![server.endpoint()]);
    let started = tokio::time::Instant::now();
    let (chunks, error) = collect(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "awake");
    assert_eq!(server.request_count(), 3);
    assert!(started.elapsed() >= Duration::from_secs(120));
}

#[tokio::test(start_paused = true)]
async fn keep_alive_comments_reset_the_idle_timer() {
    let mut steps = vec![role()];
    for _ in 0..5 {
        steps.push(Step::Delay(Duration::from_secs(50)));
        steps.push(Step::Raw(": keep-alive\n\n".into()));
    }
    steps.extend([text("slow but alive"), finish("stop"), done()]);
    let server = Server::start(vec![Reply::sse(steps)]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&chunks), "slow but alive");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection() {
    let event = json!({"choices": [{"index": 0, "delta": {"content": "tick "}}]}).to_string();
    let server = Server::start(vec![Reply::sse([
        role(),
        Step::Repeat(event, Duration::from_millis(5)),
    ])])
    .await;
    let provider = provider(vec![server.endpoint()]);
    let mut stream = provider.stream(ask("count forever"));
    use futures_util::StreamExt;
    for _ in 0..3 {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a chunk in time");
        assert!(matches!(item, Some(Ok(ModelChunk::Text(_)))), "{item:?}");
    }
    drop(stream);
    // The server only stops its endless body when writing to the closed connection fails.
    assert!(
        server.wait_bodies_dropped(1).await,
        "the server kept streaming to a dropped call"
    );
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    // A port that was free a moment ago: nothing listens there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let provider = provider(vec![OpenAiEndpoint::new(
        format!("http://{addr}/v1"),
        "test-model",
    )]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert!(chunks.is_empty());
    match error {
        Some(ModelError::Connect(m)) => {
            assert!(m.contains("gave up after 3 tries"), "{m}");
            assert!(m.to_lowercase().contains("connect"), "{m}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_error_event_in_the_stream_is_reported() {
    let server = Server::start(vec![Reply::sse([
        role(),
        Step::Data(
            json!({"error": {"message": "upstream model crashed", "code": 500}}).to_string(),
        ),
    ])])
    .await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert!(chunks.is_empty());
    assert_eq!(
        error,
        Some(ModelError::Stream(
            "the model reported an error: upstream model crashed".into()
        ))
    );
}

#[tokio::test]
async fn garbage_in_the_stream_is_an_error_not_a_panic() {
    let server = Server::start(vec![Reply::sse([
        text("ok so far"),
        Step::Data("{not json".into()),
    ])])
    .await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(chunks, vec![ModelChunk::Text("ok so far".into())]);
    match error {
        Some(ModelError::Stream(m)) => {
            assert!(m.starts_with("cannot decode a stream event"), "{m}")
        }
        other => panic!("expected a stream error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_does_not_stream_is_understood() {
    let answer = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "One moment.", "reasoning_content": "Need data.",
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "system_info", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15}
    });
    let server = Server::start(vec![Reply::json(200, answer)]).await;
    let provider = provider(vec![server.endpoint()]);
    let (chunks, error) = collect_bounded(provider.stream(ask("hi"))).await;
    assert_eq!(error, None);
    assert_eq!(
        chunks,
        vec![
            ModelChunk::Reasoning("Need data.".into()),
            ModelChunk::Text("One moment.".into()),
            call("call_1", "system_info", "{}"),
            ModelChunk::Usage(Usage {
                prompt_tokens: 7,
                completion_tokens: 8,
                total_tokens: 15,
                estimated: false,
            }),
        ]
    );
}

#[tokio::test]
async fn probe_reports_latency_and_a_preview() {
    let server = Server::start(vec![Reply::text(&["ready"])]).await;
    let mut endpoint = server.endpoint();
    endpoint.max_completion_tokens = Some(4096);
    let report = probe(&endpoint, Duration::from_secs(10))
        .await
        .expect("probe succeeds");
    assert_eq!(report.model_answer_preview, "ready");
    assert!(report.first_chunk.is_some_and(|f| f <= report.latency));
    assert!(report.usage.is_some());
    let body = &server.bodies()[0];
    assert!(body.get("tools").is_none());
    assert_eq!(body["max_completion_tokens"], 64);
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["messages"][0]["role"], "user");
}

#[tokio::test]
async fn probe_reports_errors_without_retrying() {
    let server = Server::start(vec![
        Reply::error(503, "warming up"),
        Reply::text(&["ready"]),
    ])
    .await;
    let error = probe(&server.endpoint(), Duration::from_secs(10))
        .await
        .err();
    assert_eq!(
        error,
        Some(ModelError::Http {
            status: 503,
            message: "warming up".into()
        })
    );
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn invalid_configs_are_refused_when_building_the_provider() {
    let mut endpoint = OpenAiEndpoint::new("http://127.0.0.1:9/v1", "m");
    endpoint.max_tokens = Some(1);
    endpoint.max_completion_tokens = Some(1);
    let error = OpenAiProvider::new(OpenAiConfig::new(endpoint)).err();
    assert_eq!(
        error.map(|e| e.to_string()),
        Some("model.max_tokens and model.max_completion_tokens are both set; use one".into())
    );
}
