//! The turn loop: model call → streamed deltas → tool calls (through the permission
//! middleware) → results back to the model → … until the model answers without tool calls,
//! the round limit is hit, the model fails, or the turn is cancelled.
//!
//! The loop knows clients only as `ClientInfo` values inside events: it publishes through an
//! [`EventSink`] and asks for permission through an [`AnswerRouter`], both implemented by the
//! multiplexer.

use crate::audit::{AuditDecision, AuditEntry, AuditLog, AuditOutcome};
use crate::fence::{Fence, Kind};
use crate::model::{Message, ModelChunk, ModelProvider, ModelRequest, ToolCallRequest};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tether_host::tools::{ToolContext, ToolOutput, ToolRegistry, cap_output};
// Tokio's clock, so that paused-time tests measure waits and runs exactly.
use tether_proto::{
    CallId, ClientInfo, Decision, EventBody, ResolveCause, Scope, SessionId, StopReason, TurnId,
    Usage,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where the turn publishes its events. Events are delivered in the order they are emitted.
pub trait EventSink: Send + Sync {
    fn emit(&self, body: EventBody) -> BoxFuture<'_, ()>;
}

/// A tool call that needs approval.
#[derive(Clone, Debug, PartialEq)]
pub struct PermissionAsk {
    pub turn_id: TurnId,
    pub call_id: CallId,
    pub tool: String,
    pub args: Value,
}

/// How a permission request was resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct PermissionAnswer {
    pub decision: Decision,
    pub scope: Scope,
    pub by: Option<ClientInfo>,
    /// What answered on `by`'s behalf (e.g. `--yes`), as the answering client stated it.
    pub via: Option<String>,
    pub cause: ResolveCause,
}

impl PermissionAnswer {
    /// A denial nobody gave: the session went away or the turn was cancelled.
    pub fn cancelled() -> Self {
        PermissionAnswer {
            decision: Decision::Deny,
            scope: Scope::Once,
            by: None,
            via: None,
            cause: ResolveCause::Cancelled,
        }
    }
}

/// Decides permission prompts. The multiplexer registers the request, publishes
/// `permission_requested`, arbitrates answers and resolves the future.
pub trait AnswerRouter: Send + Sync {
    fn ask(&self, ask: PermissionAsk) -> BoxFuture<'_, PermissionAnswer>;
}

/// An "always allow": an answer with `scope: session` that allows every later call of its
/// tool in the session. Remembered with who gave it, so that the calls it allows are audited
/// as approved by them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionGrant {
    /// Who answered (`None` only for grants restored from a session saved before grants
    /// named their giver).
    #[serde(default)]
    pub by: Option<ClientInfo>,
    /// The call the answer was given for.
    #[serde(default)]
    pub call_id: Option<CallId>,
}

/// Reads `session_allowed` as saved now (tool → grant) or as saved before grants named their
/// giver (a list of tool names).
fn session_grants<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, SessionGrant>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Grants(BTreeMap<String, SessionGrant>),
        Names(Vec<String>),
    }
    Ok(match Stored::deserialize(d)? {
        Stored::Grants(grants) => grants,
        Stored::Names(names) => names
            .into_iter()
            .map(|n| (n, SessionGrant::default()))
            .collect(),
    })
}

/// What a session remembers between turns: the conversation and the session-scoped grants.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
    /// Tools allowed for the rest of the session by an answer with `scope: session`, and who
    /// allowed each.
    #[serde(default, deserialize_with = "session_grants")]
    pub session_allowed: BTreeMap<String, SessionGrant>,
    /// The id of the fences around untrusted text in this session (see [`crate::fence`]); a
    /// session saved before fences existed gets a fresh one.
    #[serde(default)]
    pub fence: Fence,
}

impl Conversation {
    pub fn with_system_prompt(prompt: String) -> Self {
        Conversation {
            messages: vec![Message::System { content: prompt }],
            session_allowed: BTreeMap::new(),
            fence: Fence::new(),
        }
    }

    /// The message answering tool call `call_id`: what the tool returned, fenced as data.
    fn tool_message(&self, call_id: String, tool: String, output: &str) -> Message {
        Message::Tool {
            content: self.fence.untrusted(Kind::ToolOutput, Some(&tool), output),
            tool_call_id: call_id,
            name: tool,
        }
    }
}

/// How a turn ended.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnOutcome {
    pub stop: StopReason,
    pub error: Option<String>,
    pub usage: Option<Usage>,
    /// The text of the model's last answer (a diagnosis report, for instance).
    pub final_text: String,
}

/// Everything one turn needs.
pub struct TurnRun<'a> {
    pub session_id: SessionId,
    pub turn_id: TurnId,
    pub text: String,
    pub provider: Arc<dyn ModelProvider>,
    pub tools: &'a ToolRegistry,
    pub max_rounds: u32,
    pub sink: &'a dyn EventSink,
    pub router: &'a dyn AnswerRouter,
    pub cancel: &'a CancellationToken,
}

/// Context of a turn beyond what the model loop needs: who started it, where tool calls are
/// audited, whether the session came from the hub.
#[derive(Clone, Default)]
pub struct TurnExtras {
    pub originator: Option<ClientInfo>,
    pub audit: Option<Arc<AuditLog>>,
    pub remote: bool,
}

fn add_usage(total: &mut Option<Usage>, u: &Usage) {
    let t = total.get_or_insert_with(Usage::default);
    t.prompt_tokens += u.prompt_tokens;
    t.completion_tokens += u.completion_tokens;
    t.total_tokens += u.total_tokens;
    // One estimated call makes the turn's total an estimate.
    t.estimated |= u.estimated;
}

/// Runs one turn to its end, appending to `conversation` as it goes. The conversation is left
/// well formed whatever happens: every assistant tool call is followed by a tool message.
pub async fn run_turn(conversation: &mut Conversation, run: TurnRun<'_>) -> TurnOutcome {
    run_turn_with(conversation, run, &TurnExtras::default()).await
}

/// [`run_turn`] with audit and originator information.
pub async fn run_turn_with(
    conversation: &mut Conversation,
    run: TurnRun<'_>,
    extras: &TurnExtras,
) -> TurnOutcome {
    conversation.messages.push(Message::User {
        content: run.text.clone(),
    });
    let mut usage: Option<Usage> = None;
    let outcome =
        |stop, error: Option<String>, usage: Option<Usage>, final_text: String| TurnOutcome {
            stop,
            error,
            usage,
            final_text,
        };

    for _round in 0..run.max_rounds {
        let request = ModelRequest {
            messages: conversation.messages.clone(),
            tools: run.tools.specs(),
        };
        let mut stream = run.provider.stream(request);
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut calls: Vec<ToolCallRequest> = Vec::new();
        let mut failure: Option<String> = None;
        let mut cancelled = false;
        loop {
            let next = tokio::select! {
                biased;
                _ = run.cancel.cancelled() => { cancelled = true; break; }
                next = stream.next() => next,
            };
            match next {
                None => break,
                Some(Err(e)) => {
                    failure = Some(e.to_string());
                    break;
                }
                Some(Ok(ModelChunk::Text(t))) => {
                    text.push_str(&t);
                    run.sink
                        .emit(EventBody::TextDelta {
                            turn_id: run.turn_id.clone(),
                            text: t,
                        })
                        .await;
                }
                Some(Ok(ModelChunk::Reasoning(t))) => {
                    reasoning.push_str(&t);
                    run.sink
                        .emit(EventBody::ReasoningDelta {
                            turn_id: run.turn_id.clone(),
                            text: t,
                        })
                        .await;
                }
                Some(Ok(ModelChunk::ToolCall(call))) => calls.push(call),
                Some(Ok(ModelChunk::Usage(u))) => add_usage(&mut usage, &u),
            }
        }
        drop(stream);
        let interrupted = cancelled || failure.is_some();
        if interrupted {
            // Keep what the users saw, but no half-made tool calls.
            calls.clear();
        }
        if !text.is_empty() || !reasoning.is_empty() || !calls.is_empty() || !interrupted {
            conversation.messages.push(Message::Assistant {
                content: text.clone(),
                reasoning: (!reasoning.is_empty()).then_some(reasoning),
                tool_calls: calls.clone(),
            });
        }
        if cancelled {
            return outcome(StopReason::Cancelled, None, usage, text);
        }
        if let Some(error) = failure {
            return outcome(StopReason::Error, Some(error), usage, text);
        }
        if calls.is_empty() {
            return outcome(StopReason::Completed, None, usage, text);
        }
        let mut iter = calls.into_iter();
        while let Some(call) = iter.next() {
            let was_cancelled = run.cancel.is_cancelled();
            let output = if was_cancelled {
                ToolOutput::error("cancelled before it ran")
            } else {
                run_model_tool_call(conversation, &run, extras, &call).await
            };
            let message = conversation.tool_message(call.id, call.name, &output.output);
            conversation.messages.push(message);
            if run.cancel.is_cancelled() {
                for rest in iter.by_ref() {
                    let message =
                        conversation.tool_message(rest.id, rest.name, "cancelled before it ran");
                    conversation.messages.push(message);
                }
                return outcome(StopReason::Cancelled, None, usage, String::new());
            }
        }
    }
    outcome(
        StopReason::MaxRounds,
        Some(format!(
            "the model was still calling tools after {} rounds",
            run.max_rounds
        )),
        usage,
        String::new(),
    )
}

/// Runs one model-requested tool call: parses its JSON arguments, then [`run_tool`].
async fn run_model_tool_call(
    conversation: &mut Conversation,
    run: &TurnRun<'_>,
    extras: &TurnExtras,
    call: &ToolCallRequest,
) -> ToolOutput {
    let parsed: Result<Value, String> = if call.arguments.trim().is_empty() {
        Ok(Value::Object(Default::default()))
    } else {
        serde_json::from_str(&call.arguments).map_err(|e| e.to_string())
    };
    run_tool(
        conversation,
        run,
        extras,
        &call.name,
        parsed,
        &call.arguments,
    )
    .await
}

/// Runs one tool call end to end: publishes `tool_call`, validates the arguments, asks
/// permission when needed, runs the tool, audits it, publishes `tool_result`, and returns what
/// the model should read. `raw_args` is shown when the arguments were not valid JSON.
pub(crate) async fn run_tool(
    conversation: &mut Conversation,
    run: &TurnRun<'_>,
    extras: &TurnExtras,
    tool_name: &str,
    parsed: Result<Value, String>,
    raw_args: &str,
) -> ToolOutput {
    let call_id = CallId(uuid::Uuid::now_v7().to_string());
    let shown_args = match &parsed {
        Ok(v) => v.clone(),
        Err(_) => Value::String(raw_args.to_owned()),
    };
    run.sink
        .emit(EventBody::ToolCall {
            turn_id: run.turn_id.clone(),
            call_id: call_id.clone(),
            tool: tool_name.to_owned(),
            args: shown_args.clone(),
        })
        .await;
    let mut decision = AuditDecision::NotAsked;
    let mut approved_by: Option<ClientInfo> = None;
    let mut answered_via: Option<String> = None;
    let mut scope: Option<Scope> = None;
    let mut grant_call_id: Option<CallId> = None;
    // The wait for a permission answer and the tool's own run, measured apart: a call that
    // waited a minute for a human did not take a minute to run.
    let mut waited: Option<Duration> = None;
    let mut ran = Duration::ZERO;
    let (result, outcome) = match parsed {
        Err(e) => (
            ToolOutput::error(format!("the arguments are not valid JSON: {e}")),
            AuditOutcome::InvalidArguments,
        ),
        Ok(args) => match run.tools.get(tool_name) {
            None => match run.tools.withheld(tool_name) {
                // The host has the tool but this session may not use it: say why, and how
                // an operator would allow it.
                Some(why) => (ToolOutput::error(why), AuditOutcome::NotAllowed),
                None => {
                    let names: Vec<&str> = run.tools.names().collect();
                    (
                        ToolOutput::error(format!(
                            "unknown tool `{tool_name}`; available tools: {}",
                            names.join(", ")
                        )),
                        AuditOutcome::UnknownTool,
                    )
                }
            },
            Some(tool) => match tether_host::tools::validate_args(tool.as_ref(), &args) {
                Err(e) => (
                    ToolOutput::error(format!("invalid arguments for `{tool_name}`: {e}")),
                    AuditOutcome::InvalidArguments,
                ),
                Ok(()) => {
                    let mut denial: Option<String> = None;
                    if !tool.needs_permission(&args) {
                        decision = AuditDecision::NotRequired;
                    } else if let Some(grant) = conversation.session_allowed.get(tool_name) {
                        decision = AuditDecision::AllowedForSession;
                        approved_by = grant.by.clone();
                        scope = Some(Scope::Session);
                        grant_call_id = grant.call_id.clone();
                    } else {
                        let ask = PermissionAsk {
                            turn_id: run.turn_id.clone(),
                            call_id: call_id.clone(),
                            tool: tool_name.to_owned(),
                            args: args.clone(),
                        };
                        let asked = Instant::now();
                        let answer = tokio::select! {
                            biased;
                            _ = run.cancel.cancelled() => PermissionAnswer::cancelled(),
                            a = run.router.ask(ask) => a,
                        };
                        waited = Some(asked.elapsed());
                        approved_by = answer.by.clone();
                        answered_via = answer.via.clone();
                        match answer.decision {
                            Decision::Allow => {
                                decision = AuditDecision::Allowed;
                                scope = Some(answer.scope);
                                if answer.scope == Scope::Session {
                                    conversation.session_allowed.insert(
                                        tool_name.to_owned(),
                                        SessionGrant {
                                            by: answer.by.clone(),
                                            call_id: Some(call_id.clone()),
                                        },
                                    );
                                }
                            }
                            Decision::Deny => {
                                decision = AuditDecision::Denied;
                                denial = Some(match (&answer.by, answer.cause) {
                                    (Some(by), _) => format!("permission denied by {}", by.name),
                                    (None, ResolveCause::NoEligibleAnswerer) => {
                                        "permission denied: nobody who may approve it was attached"
                                            .into()
                                    }
                                    (None, ResolveCause::Timeout) => {
                                        "permission denied: nobody answered in time".into()
                                    }
                                    (None, _) => "permission request cancelled".into(),
                                });
                            }
                        }
                    }
                    if let Some(denial) = denial {
                        (ToolOutput::error(denial), AuditOutcome::Denied)
                    } else if run.cancel.is_cancelled() {
                        (
                            ToolOutput::error("cancelled before it ran"),
                            AuditOutcome::Cancelled,
                        )
                    } else {
                        let ctx = ToolContext {
                            session_id: run.session_id.clone(),
                            turn_id: run.turn_id.clone(),
                            cancel: run.cancel.clone(),
                        };
                        let started = Instant::now();
                        let out = tokio::select! {
                            out = tool.call(args, ctx) => out,
                            // Tools watch the token themselves; this bounds one that does not.
                            _ = async {
                                run.cancel.cancelled().await;
                                tokio::time::sleep(Duration::from_secs(5)).await;
                            } => ToolOutput::error("cancelled"),
                        };
                        ran = started.elapsed();
                        let outcome = if run.cancel.is_cancelled() && !out.ok {
                            AuditOutcome::Cancelled
                        } else if out.ok {
                            AuditOutcome::Ok
                        } else {
                            AuditOutcome::Error
                        };
                        (out, outcome)
                    }
                }
            },
        },
    };
    let duration_ms = millis(ran);
    let waited_ms = waited.map(millis);
    let output_bytes = result.output.len();
    let (output, truncated) = cap_output(result.output);
    if let Some(audit) = &extras.audit {
        // Recorded before the model sees the result (DESIGN.md rule 8).
        let _ = audit.record(&AuditEntry {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            session_id: run.session_id.clone(),
            turn_id: run.turn_id.clone(),
            call_id: call_id.clone(),
            originator: extras.originator.clone(),
            remote: extras.remote,
            tool: tool_name.to_owned(),
            args: shown_args,
            decision,
            approved_by,
            via: answered_via,
            scope,
            grant_call_id,
            waited_ms,
            duration_ms,
            outcome,
            output_bytes,
            truncated,
        });
    }
    run.sink
        .emit(EventBody::ToolResult {
            turn_id: run.turn_id.clone(),
            call_id,
            ok: result.ok,
            output: output.clone(),
            truncated,
            duration_ms,
            waited_ms,
        })
        .await;
    let for_model = if truncated {
        format!("{output}\n[output truncated at 32 KiB]")
    } else {
        output
    };
    ToolOutput {
        ok: result.ok,
        output: for_model,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An inspection turn: runs the tools the plugin's plan lists (through the same permission
/// and audit path as a model's calls), then publishes the report as the turn's text.
pub(crate) async fn run_inspect(
    conversation: &mut Conversation,
    run: TurnRun<'_>,
    extras: &TurnExtras,
    plugin: &str,
    target: Option<&str>,
    note: Option<&str>,
) -> TurnOutcome {
    conversation.messages.push(Message::User {
        content: run.text.clone(),
    });
    let plan = match tether_host::inspect::plan(plugin, target) {
        Ok(plan) => plan,
        Err(e) => {
            return TurnOutcome {
                stop: StopReason::Error,
                error: Some(e),
                usage: None,
                final_text: String::new(),
            };
        }
    };
    let mut results = Vec::with_capacity(plan.len());
    for call in plan {
        if run.cancel.is_cancelled() {
            return TurnOutcome {
                stop: StopReason::Cancelled,
                error: None,
                usage: None,
                final_text: String::new(),
            };
        }
        let out = run_tool(
            conversation,
            &run,
            extras,
            &call.tool,
            Ok(call.args.clone()),
            "",
        )
        .await;
        results.push((call, out));
    }
    let report = tether_host::inspect::report(plugin, target, &results);
    let mut text = String::new();
    if let Some(note) = note {
        text.push_str(&format!("> {note}\n\n"));
    }
    text.push_str(&report.markdown);
    // Sent paragraph by paragraph so clients render it as it "streams".
    for part in text.split_inclusive("\n\n") {
        run.sink
            .emit(EventBody::TextDelta {
                turn_id: run.turn_id.clone(),
                text: part.to_owned(),
            })
            .await;
    }
    conversation.messages.push(Message::Assistant {
        content: text.clone(),
        reasoning: None,
        tool_calls: Vec::new(),
    });
    TurnOutcome {
        stop: StopReason::Completed,
        error: None,
        usage: None,
        final_text: text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::{Class, ClientId};

    #[test]
    fn session_grants_are_saved_with_their_giver_and_old_saves_still_load() {
        let mut c = Conversation::with_system_prompt("p".into());
        let alice = ClientInfo {
            client_id: ClientId::from("alice/1"),
            class: Class::Human,
            name: "alice".into(),
        };
        c.session_allowed.insert(
            "shell".into(),
            SessionGrant {
                by: Some(alice),
                call_id: Some(CallId::from("c1")),
            },
        );
        let saved = serde_json::to_string(&c).expect("serialize");
        let back: Conversation = serde_json::from_str(&saved).expect("deserialize");
        assert_eq!(back, c);

        // A session saved before grants named their giver: a list of tool names.
        let mut old = serde_json::to_value(&c).expect("value");
        old["session_allowed"] = serde_json::json!(["shell", "restart"]);
        let back: Conversation = serde_json::from_value(old).expect("old format");
        assert_eq!(
            back.session_allowed.keys().collect::<Vec<_>>(),
            ["restart", "shell"]
        );
        assert_eq!(back.session_allowed["shell"], SessionGrant::default());
        // And one saved before grants existed at all.
        let mut older = serde_json::to_value(&c).expect("value");
        older
            .as_object_mut()
            .expect("object")
            .remove("session_allowed");
        let back: Conversation = serde_json::from_value(older).expect("older format");
        assert!(back.session_allowed.is_empty());
    }
}
