//! What the OpenAI-compatible provider sends: token limits, tools, extra_body, the user turn,
//! replayed reasoning, authorization, and compaction per endpoint.

mod sse_server;

use serde_json::{Value, json};
use sse_server::*;
use std::collections::HashSet;
use tether_engine::context::{estimate_tokens, estimate_tool_tokens};
use tether_engine::model::{Message, ModelProvider, ModelRequest, ToolCallRequest};
use tether_engine::openai::{OpenAiEndpoint, ToolChoice};
use tether_host::tools::{ToolRegistry, ToolsConfig};

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

/// Sends `request` to a fresh server through `endpoint` (its base_url is replaced) and
/// returns the request body the server received.
async fn sent_body(endpoint: OpenAiEndpoint, request: ModelRequest) -> Value {
    sent(endpoint, request).await.body
}

async fn sent(mut endpoint: OpenAiEndpoint, request: ModelRequest) -> Recorded {
    let server = Server::start(vec![Reply::text(&["ok"])]).await;
    endpoint.base_url = server.base_url.clone();
    let provider = provider(vec![endpoint]);
    let (_, error) = collect_bounded(provider.stream(request)).await;
    assert_eq!(error, None);
    let mut requests = server.requests();
    assert_eq!(requests.len(), 1);
    requests.remove(0)
}

fn base() -> OpenAiEndpoint {
    OpenAiEndpoint::new("http://replaced/v1", "test-model")
}

#[tokio::test]
async fn max_tokens_or_max_completion_tokens_never_both() {
    let mut e = base();
    e.max_tokens = Some(512);
    let body = sent_body(e, ask("hi")).await;
    assert_eq!(body["max_tokens"], 512);
    assert!(body.get("max_completion_tokens").is_none());

    let mut e = base();
    e.max_completion_tokens = Some(2048);
    let body = sent_body(e, ask("hi")).await;
    assert_eq!(body["max_completion_tokens"], 2048);
    assert!(body.get("max_tokens").is_none());

    let body = sent_body(base(), ask("hi")).await;
    assert!(body.get("max_tokens").is_none() && body.get("max_completion_tokens").is_none());
}

#[tokio::test]
async fn tools_are_sent_in_the_function_schema_and_omitted_when_empty() {
    let registry = ToolRegistry::builtin(&ToolsConfig::default());
    let specs = registry.specs();
    assert!(!specs.is_empty());
    let mut request = ask("look around");
    request.tools = specs.clone();
    let body = sent_body(base(), request).await;
    let tools = body["tools"].as_array().expect("tools is an array");
    assert_eq!(tools.len(), specs.len());
    for (sent, spec) in tools.iter().zip(&specs) {
        assert_eq!(
            sent,
            &json!({"type": "function", "function": {
                "name": spec.name, "description": spec.description, "parameters": spec.parameters}})
        );
    }

    let body = sent_body(base(), ask("no tools")).await;
    assert!(body.get("tools").is_none(), "{body}");
}

#[tokio::test]
async fn tool_choice_is_sent_as_configured_and_only_with_tools() {
    let registry = ToolRegistry::builtin(&ToolsConfig::default());
    let with_tools = || {
        let mut request = ask("look around");
        request.tools = registry.specs();
        request
    };
    for (choice, sent) in [
        (ToolChoice::Auto, Some("auto")),
        (ToolChoice::Required, Some("required")),
        (ToolChoice::None, Some("none")),
        (ToolChoice::Omit, None),
    ] {
        let mut e = base();
        e.tool_choice = choice;
        let body = sent_body(e.clone(), with_tools()).await;
        assert_eq!(
            body.get("tool_choice").and_then(Value::as_str),
            sent,
            "{choice:?}"
        );
        // Without tools there is nothing to choose from: never sent.
        let body = sent_body(e, ask("no tools")).await;
        assert!(body.get("tool_choice").is_none(), "{choice:?}: {body}");
    }

    // tether's tool_choice wins over extra_body's; with `omit`, extra_body's is sent (e.g. an
    // object naming the function to call).
    let forced = json!({"type": "function", "function": {"name": "system_info"}});
    let mut e = base();
    e.extra_body.insert("tool_choice".into(), forced.clone());
    let recorded = sent(e.clone(), with_tools()).await;
    assert_eq!(
        recorded.raw.matches("\"tool_choice\":").count(),
        1,
        "{}",
        recorded.raw
    );
    assert_eq!(recorded.body["tool_choice"], "auto");
    e.tool_choice = ToolChoice::Omit;
    let body = sent_body(e, with_tools()).await;
    assert_eq!(body["tool_choice"], forced);
}

#[tokio::test]
async fn extra_body_is_merged_under_the_standard_fields() {
    let mut e = base();
    e.max_tokens = Some(100);
    for (k, v) in [
        ("temperature", json!(0.1)),
        ("top_k", json!(20)),
        ("chat_template_kwargs", json!({"enable_thinking": false})),
        // Conflicts: tether's values win.
        ("model", json!("someone-else")),
        ("stream", json!(false)),
        ("max_tokens", json!(1)),
        ("messages", json!([])),
        ("stream_options", json!({"include_usage": false})),
    ] {
        e.extra_body.insert(k.into(), v);
    }
    let recorded = sent(e, ask("hi")).await;
    // Each key once: a parsed value would hide a duplicate, servers differ on which wins.
    for key in [
        "model",
        "stream",
        "max_tokens",
        "messages",
        "stream_options",
    ] {
        assert_eq!(
            recorded.raw.matches(&format!("\"{key}\":")).count(),
            1,
            "{key} in {}",
            recorded.raw
        );
    }
    let body = recorded.body;
    assert_eq!(body["temperature"], 0.1);
    assert_eq!(body["top_k"], 20);
    assert_eq!(
        body["chat_template_kwargs"],
        json!({"enable_thinking": false})
    );
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 100);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn stream_options_can_be_turned_off() {
    let mut e = base();
    e.include_usage = false;
    let body = sent_body(e, ask("hi")).await;
    assert!(body.get("stream_options").is_none(), "{body}");
    assert_eq!(body["stream"], true);
}

#[tokio::test]
async fn a_user_message_is_always_present() {
    let request = ModelRequest {
        messages: vec![Message::System {
            content: "Diagnose the host.".into(),
        }],
        tools: vec![],
    };
    let body = sent_body(base(), request).await;
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[0],
        json!({"role": "system", "content": "Diagnose the host."})
    );
    assert_eq!(messages[1]["role"], "user");
    assert!(!messages[1]["content"].as_str().unwrap_or("").is_empty());

    // With a user message, nothing is added.
    let body = sent_body(base(), ask("hi")).await;
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(2));
}

fn tool_round_trip() -> ModelRequest {
    ModelRequest {
        messages: vec![
            Message::System {
                content: "sys".into(),
            },
            Message::User {
                content: "how full is /?".into(),
            },
            Message::Assistant {
                content: String::new(),
                reasoning: Some("I should look at the disks.".into()),
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
            Message::Assistant {
                content: "It is 40 % full.".into(),
                reasoning: None,
                tool_calls: vec![],
            },
            Message::User {
                content: "thanks".into(),
            },
        ],
        tools: vec![],
    }
}

#[tokio::test]
async fn messages_are_mapped_and_reasoning_is_replayed() {
    let body = sent_body(base(), tool_round_trip()).await;
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "how full is /?"},
            {"role": "assistant", "content": "",
             "reasoning_content": "I should look at the disks.",
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "system_info", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"disks\": []}"},
            {"role": "assistant", "content": "It is 40 % full."},
            {"role": "user", "content": "thanks"},
        ])
    );

    let mut e = base();
    e.replay_reasoning = false;
    let body = sent_body(e, tool_round_trip()).await;
    assert!(body["messages"][2].get("reasoning_content").is_none());
}

#[tokio::test]
async fn authorization_comes_from_the_key_or_the_environment() {
    let server = Server::start(vec![
        Reply::text(&["a"]),
        Reply::text(&["b"]),
        Reply::text(&["c"]),
    ])
    .await;

    let mut with_key = server.endpoint();
    with_key.api_key = Some("sk-test-123".into());
    let (_, error) = collect_bounded(provider(vec![with_key]).stream(ask("hi"))).await;
    assert_eq!(error, None);

    // Any variable that is set will do as the key's source.
    let (var, value) = std::env::vars()
        .find(|(k, v)| {
            !v.is_empty()
                && v.len() < 200
                && v.bytes().all(|b| b.is_ascii_graphic())
                && !k.is_empty()
        })
        .expect("some environment variable is set");
    let mut from_env = server.endpoint();
    from_env.api_key_env = Some(var);
    let (_, error) = collect_bounded(provider(vec![from_env]).stream(ask("hi"))).await;
    assert_eq!(error, None);

    let (_, error) = collect_bounded(provider(vec![server.endpoint()]).stream(ask("hi"))).await;
    assert_eq!(error, None);

    let auth: Vec<Option<String>> = server
        .requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    assert_eq!(
        auth,
        vec![
            Some("Bearer sk-test-123".into()),
            Some(format!("Bearer {value}")),
            None
        ]
    );
}

/// A long session: several user turns, each with tool calls and results.
fn long_session(rounds: usize) -> ModelRequest {
    let mut messages = vec![
        Message::System {
            content: "You are tether.".into(),
        },
        Message::User {
            content: "The first question, which must survive.".into(),
        },
    ];
    for r in 0..rounds {
        let ids = [format!("call_{r}_a"), format!("call_{r}_b")];
        messages.push(Message::Assistant {
            content: format!("Round {r}: checking."),
            reasoning: None,
            tool_calls: ids
                .iter()
                .map(|id| ToolCallRequest {
                    id: id.clone(),
                    name: "system_info".into(),
                    arguments: "{}".into(),
                })
                .collect(),
        });
        for id in &ids {
            messages.push(Message::Tool {
                tool_call_id: id.clone(),
                name: "system_info".into(),
                content: format!("result of {id}: {}", "x".repeat(300)),
            });
        }
        messages.push(Message::Assistant {
            content: format!("Round {r} done."),
            reasoning: None,
            tool_calls: vec![],
        });
        messages.push(Message::User {
            content: format!("Next question {r}."),
        });
    }
    // One tool only: the budget arithmetic below must not depend on how many tools the
    // built-in registry happens to hold.
    let tools = ToolRegistry::builtin(&ToolsConfig::default())
        .filtered(|name, _| name == "system_info")
        .specs();
    ModelRequest { messages, tools }
}

/// Checks a compacted message list as sent: system + first user first, then the note, every
/// tool result right after the call that asked for it, the newest message last.
fn assert_well_formed_compaction(sent: &[Value], original: &ModelRequest) {
    assert_eq!(sent[0]["role"], "system");
    assert_eq!(
        sent[1]["content"],
        "The first question, which must survive."
    );
    assert_eq!(sent[2]["role"], "user");
    let note = sent[2]["content"].as_str().expect("note text");
    assert!(
        note.starts_with('[')
            && note.ends_with("earlier messages were omitted to fit the context window]"),
        "{note}"
    );
    let omitted: usize = note[1..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert_eq!(sent.len() - 1 + omitted, original.messages.len());

    let mut open: HashSet<String> = HashSet::new();
    for m in &sent[3..] {
        match m["role"].as_str() {
            Some("assistant") => {
                assert!(open.is_empty(), "unanswered calls {open:?}");
                open = m["tool_calls"]
                    .as_array()
                    .map(|calls| {
                        calls
                            .iter()
                            .filter_map(|c| c["id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
            }
            Some("tool") => {
                let id = m["tool_call_id"].as_str().expect("id");
                assert!(open.remove(id), "tool result {id} without its call");
            }
            _ => assert!(open.is_empty(), "unanswered calls {open:?}"),
        }
    }
    assert!(open.is_empty());
    // The kept messages are the newest ones, in their original order.
    let tail: Vec<Value> = sent[3..].to_vec();
    let original_tail: Vec<String> = original.messages[original.messages.len() - tail.len()..]
        .iter()
        .map(|m| match m {
            Message::System { content }
            | Message::User { content }
            | Message::Assistant { content, .. }
            | Message::Tool { content, .. } => content.clone(),
        })
        .collect();
    let sent_tail: Vec<String> = tail
        .iter()
        .map(|m| m["content"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(sent_tail, original_tail);
}

#[tokio::test]
async fn history_is_compacted_per_endpoint_keeping_tool_pairs_intact() {
    let request = long_session(12);
    let full = estimate_tokens(&request.messages) + estimate_tool_tokens(&request.tools);

    // A big window: nothing changes.
    let mut roomy = base();
    roomy.context_window = Some((full * 2) as u32);
    let body = sent_body(roomy, request.clone()).await;
    assert_eq!(
        body["messages"].as_array().map(Vec::len),
        Some(request.messages.len())
    );

    // The primary has a mid-size window and fails; the fallback's window is smaller still.
    let primary = Server::start(vec![Reply::error(503, "down"); 3]).await;
    let fallback = Server::start(vec![Reply::text(&["ok"])]).await;
    let mut a = primary.endpoint();
    a.context_window = Some((full / 2) as u32);
    let mut b = fallback.endpoint();
    b.context_window = Some((full / 4) as u32);
    b.compact_at = 0.9;
    let provider = provider(vec![a, b]);
    let (_, error) = collect_bounded(provider.stream(request.clone())).await;
    assert_eq!(error, None);

    let sent_a = primary.bodies()[0]["messages"]
        .as_array()
        .cloned()
        .expect("messages");
    let sent_b = fallback.bodies()[0]["messages"]
        .as_array()
        .cloned()
        .expect("messages");
    assert_well_formed_compaction(&sent_a, &request);
    assert_well_formed_compaction(&sent_b, &request);
    assert!(
        sent_b.len() < sent_a.len(),
        "the smaller window should keep less: {} vs {}",
        sent_b.len(),
        sent_a.len()
    );
    assert!(sent_a.len() < request.messages.len());

    // What was sent fits under compact_at of each window, by the same estimate.
    let budget = |window: usize, at: f64| (window as f64 * at) as usize;
    let sent_tokens = |sent: &[Value]| -> usize {
        let messages: Vec<Message> = sent
            .iter()
            .map(|m| {
                let content = m["content"].as_str().unwrap_or("").to_owned();
                match m["role"].as_str() {
                    Some("system") => Message::System { content },
                    Some("user") => Message::User { content },
                    Some("tool") => Message::Tool {
                        tool_call_id: m["tool_call_id"].as_str().unwrap_or("").into(),
                        name: "system_info".into(),
                        content,
                    },
                    _ => Message::Assistant {
                        content,
                        reasoning: None,
                        tool_calls: m["tool_calls"]
                            .as_array()
                            .map(|calls| {
                                calls
                                    .iter()
                                    .map(|c| ToolCallRequest {
                                        id: c["id"].as_str().unwrap_or("").into(),
                                        name: c["function"]["name"].as_str().unwrap_or("").into(),
                                        arguments: c["function"]["arguments"]
                                            .as_str()
                                            .unwrap_or("")
                                            .into(),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    },
                }
            })
            .collect();
        estimate_tokens(&messages) + estimate_tool_tokens(&request.tools)
    };
    assert!(sent_tokens(&sent_a) <= budget(full / 2, 0.8));
    assert!(sent_tokens(&sent_b) <= budget(full / 4, 0.9));
}
