//! Translations between the client protocol and ACP values: events to `session/update`s,
//! prompts to `input` text, permission options to `answer`s, refusals to JSON-RPC errors.

use agent_client_protocol::v1::schema as s;
use agent_client_protocol::{Error, ErrorCode};
use serde_json::{Value, json};
use tether_proto::{
    CallId, ClientInfo, Decision, ErrorBody, Reason, ResolveCause, Scope, SessionId, StopReason,
    TurnId,
};

pub fn session_id(id: &SessionId) -> s::SessionId {
    s::SessionId::new(id.as_str())
}

/// `_meta.tether`: what the editor can read beyond the ACP fields.
fn tether_meta(value: Value) -> s::Meta {
    let mut meta = s::Meta::new();
    meta.insert("tether".into(), value);
    meta
}

fn chunk(text: &str, message_id: String) -> s::ContentChunk {
    s::ContentChunk::new(s::ContentBlock::from(text)).message_id(s::MessageId::new(message_id))
}

/// A turn's input as a user message. Someone else's words start with their name, so the
/// editor shows the whole shared conversation with who wrote what.
pub fn user_message(
    turn_id: &TurnId,
    originator: &ClientInfo,
    text: &str,
    same_principal: bool,
) -> s::SessionUpdate {
    let shown = if same_principal {
        text.to_owned()
    } else {
        format!("{}: {text}", originator.name)
    };
    s::SessionUpdate::UserMessageChunk(chunk(&shown, format!("{turn_id}/input")).meta(tether_meta(
        json!({ "turn_id": turn_id, "originator": originator }),
    )))
}

pub fn agent_text(turn_id: &TurnId, text: &str) -> s::SessionUpdate {
    s::SessionUpdate::AgentMessageChunk(chunk(text, turn_id.to_string()))
}

pub fn agent_thought(turn_id: &TurnId, text: &str) -> s::SessionUpdate {
    s::SessionUpdate::AgentThoughtChunk(chunk(text, format!("{turn_id}/reasoning")))
}

fn tool_kind(tool: &str) -> s::ToolKind {
    match tool {
        "shell" => s::ToolKind::Execute,
        "read_file" | "list_dir" | "system_info" => s::ToolKind::Read,
        _ => s::ToolKind::Other,
    }
}

/// `shell: uname -a` for a command, else the tool's name.
pub fn tool_title(tool: &str, args: &Value) -> String {
    match args.get("command").and_then(Value::as_str) {
        Some(command) => format!("{tool}: {command}"),
        None => tool.to_owned(),
    }
}

pub fn tool_call(call_id: &CallId, tool: &str, args: &Value) -> s::SessionUpdate {
    s::SessionUpdate::ToolCall(
        s::ToolCall::new(s::ToolCallId::new(call_id.as_str()), tool_title(tool, args))
            .name(tool.to_owned())
            .kind(tool_kind(tool))
            .status(s::ToolCallStatus::InProgress)
            .raw_input(args.clone()),
    )
}

/// The tool call as a permission request shows it.
pub fn permission_tool_call(call_id: &CallId, tool: &str, args: &Value) -> s::ToolCallUpdate {
    s::ToolCallUpdate::new(
        s::ToolCallId::new(call_id.as_str()),
        s::ToolCallUpdateFields::new()
            .title(tool_title(tool, args))
            .name(tool.to_owned())
            .kind(tool_kind(tool))
            .status(s::ToolCallStatus::Pending)
            .raw_input(args.clone()),
    )
}

fn update(call_id: &CallId, fields: s::ToolCallUpdateFields) -> s::SessionUpdate {
    s::SessionUpdate::ToolCallUpdate(s::ToolCallUpdate::new(
        s::ToolCallId::new(call_id.as_str()),
        fields,
    ))
}

/// How a permission prompt was resolved, in words.
pub fn resolution_text(
    decision: Decision,
    by: Option<&ClientInfo>,
    cause: ResolveCause,
    scope: Option<Scope>,
) -> String {
    match (decision, by, cause) {
        (Decision::Allow, Some(by), _) if scope == Some(Scope::Session) => {
            format!("approved by {} for the rest of the session", by.name)
        }
        (Decision::Allow, Some(by), _) => format!("approved by {}", by.name),
        (Decision::Allow, None, _) => "approved".to_owned(),
        (Decision::Deny, Some(by), _) => format!("denied by {}", by.name),
        (Decision::Deny, None, ResolveCause::NoEligibleAnswerer) => {
            "denied: nobody who may approve it was attached".to_owned()
        }
        (Decision::Deny, None, ResolveCause::Timeout) => {
            "denied: nobody answered in time".to_owned()
        }
        (Decision::Deny, None, _) => "cancelled with its turn".to_owned(),
    }
}

/// `permission_resolved`: the tool call runs (or not), and says who decided.
pub fn permission_resolved(
    call_id: &CallId,
    decision: Decision,
    by: Option<&ClientInfo>,
    cause: ResolveCause,
    scope: Option<Scope>,
) -> s::SessionUpdate {
    let status = match decision {
        Decision::Allow => s::ToolCallStatus::InProgress,
        Decision::Deny => s::ToolCallStatus::Failed,
    };
    let text = resolution_text(decision, by, cause, scope);
    update(
        call_id,
        s::ToolCallUpdateFields::new()
            .status(status)
            .content(vec![s::ToolCallContent::from(text)]),
    )
    .with_meta(
        json!({"permission": {"decision": decision, "by": by, "cause": cause, "scope": scope}}),
    )
}

/// A note on a tool call (e.g. why this editor's answer was not taken).
pub fn tool_note(call_id: &CallId, text: String) -> s::SessionUpdate {
    update(
        call_id,
        s::ToolCallUpdateFields::new().content(vec![s::ToolCallContent::from(text)]),
    )
}

pub struct ToolResult<'a> {
    pub call_id: &'a CallId,
    pub ok: bool,
    pub output: &'a str,
    pub truncated: bool,
    pub duration_ms: u64,
    pub waited_ms: Option<u64>,
}

pub fn tool_result(r: &ToolResult<'_>) -> s::SessionUpdate {
    let status = if r.ok {
        s::ToolCallStatus::Completed
    } else {
        s::ToolCallStatus::Failed
    };
    let mut shown = r.output.to_owned();
    if r.truncated {
        shown.push_str("\n… (output truncated)");
    }
    let mut raw = json!({
        "ok": r.ok,
        "output": r.output,
        "truncated": r.truncated,
        "duration_ms": r.duration_ms,
    });
    if let Some(w) = r.waited_ms {
        raw["waited_ms"] = json!(w);
    }
    update(
        r.call_id,
        s::ToolCallUpdateFields::new()
            .status(status)
            .content(vec![s::ToolCallContent::from(shown)])
            .raw_output(raw),
    )
}

trait WithMeta {
    fn with_meta(self, value: Value) -> Self;
}

impl WithMeta for s::SessionUpdate {
    fn with_meta(self, value: Value) -> Self {
        match self {
            s::SessionUpdate::ToolCallUpdate(u) => {
                s::SessionUpdate::ToolCallUpdate(u.meta(tether_meta(value)))
            }
            other => other,
        }
    }
}

/// The choices of a permission request, with the `answer` each one sends.
pub const OPTIONS: &[(&str, &str, Decision, Scope)] = &[
    ("allow_once", "Allow once", Decision::Allow, Scope::Once),
    (
        "allow_always",
        "Allow for the rest of the session",
        Decision::Allow,
        Scope::Session,
    ),
    ("reject_once", "Reject", Decision::Deny, Scope::Once),
    (
        "reject_always",
        "Always reject (in this editor, for this session)",
        Decision::Deny,
        Scope::Session,
    ),
];

pub fn permission_options() -> Vec<s::PermissionOption> {
    OPTIONS
        .iter()
        .map(|(id, name, decision, scope)| {
            let kind = match (decision, scope) {
                (Decision::Allow, Scope::Once) => s::PermissionOptionKind::AllowOnce,
                (Decision::Allow, Scope::Session) => s::PermissionOptionKind::AllowAlways,
                (Decision::Deny, Scope::Once) => s::PermissionOptionKind::RejectOnce,
                (Decision::Deny, Scope::Session) => s::PermissionOptionKind::RejectAlways,
            };
            s::PermissionOption::new(*id, *name, kind)
        })
        .collect()
}

/// The decision and scope of a chosen option (`None`: not one of ours).
pub fn option_answer(option_id: &str) -> Option<(Decision, Scope)> {
    OPTIONS
        .iter()
        .find(|(id, ..)| *id == option_id)
        .map(|(_, _, d, s)| (*d, *s))
}

/// The text of a prompt: text blocks as they are, links to resources as Markdown links and
/// embedded text resources with their URI. Anything else names the block it refuses.
pub fn prompt_text(blocks: &[s::ContentBlock]) -> Result<String, Error> {
    let mut text = String::new();
    for (i, block) in blocks.iter().enumerate() {
        match block {
            s::ContentBlock::Text(t) => text.push_str(&t.text),
            s::ContentBlock::ResourceLink(l) => text.push_str(&format!("[{}]({})", l.name, l.uri)),
            s::ContentBlock::Resource(r) => match &r.resource {
                s::EmbeddedResourceResource::TextResourceContents(t) => {
                    text.push_str(&format!("\n{}:\n{}\n", t.uri, t.text))
                }
                _ => return Err(unsupported_block(i, "binary resource")),
            },
            s::ContentBlock::Image(_) => return Err(unsupported_block(i, "image")),
            s::ContentBlock::Audio(_) => return Err(unsupported_block(i, "audio")),
            _ => return Err(unsupported_block(i, "this kind of")),
        }
    }
    if text.trim().is_empty() {
        return Err(Error::new(
            ErrorCode::INVALID_PARAMS,
            "Invalid params: `prompt`: has no text",
        )
        .data(json!({"field": "prompt"})));
    }
    Ok(text)
}

fn unsupported_block(i: usize, kind: &str) -> Error {
    let field = format!("prompt[{i}]");
    Error::new(
        ErrorCode::INVALID_PARAMS,
        format!("Invalid params: `{field}`: {kind} content is not supported; tether takes text"),
    )
    .data(json!({ "field": field }))
}

/// A refusal of the agent as a JSON-RPC error: its message, with `reason` (and the details)
/// in `data`.
pub fn tether_error(body: &ErrorBody, session: Option<&SessionId>) -> Error {
    let code = match body.reason {
        Reason::BadRequest => ErrorCode::INVALID_PARAMS,
        Reason::UnknownSession => ErrorCode::RESOURCE_NOT_FOUND,
        _ => ErrorCode::INTERNAL_ERROR,
    };
    let mut data = json!({ "reason": body.reason });
    for (k, v) in &body.details {
        data[k] = v.clone();
    }
    if let Some(id) = session {
        data["sessionId"] = json!(id);
    }
    Error::new(code, body.message.clone()).data(data)
}

/// A session this editor has not opened with `session/new` or `session/load`.
pub fn not_open(id: &SessionId) -> Error {
    Error::new(
        ErrorCode::RESOURCE_NOT_FOUND,
        format!("session {id} is not open here: open it with session/new or session/load first"),
    )
    .data(json!({ "sessionId": id }))
}

/// How a turn's end answers its `session/prompt`.
pub fn prompt_outcome(stop: StopReason, error: Option<&str>) -> Result<s::PromptResponse, Error> {
    let reason = match stop {
        StopReason::Completed => s::StopReason::EndTurn,
        StopReason::Cancelled => s::StopReason::Cancelled,
        StopReason::MaxRounds => s::StopReason::MaxTurnRequests,
        StopReason::Error => {
            let message = error.unwrap_or("the turn failed").to_owned();
            return Err(Error::new(ErrorCode::INTERNAL_ERROR, message)
                .data(json!({"reason": "turn_error"})));
        }
    };
    Ok(s::PromptResponse::new(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_maps_back_to_its_answer() {
        let options = permission_options();
        let ids: Vec<String> = options.iter().map(|o| o.option_id.to_string()).collect();
        assert_eq!(
            ids,
            ["allow_once", "allow_always", "reject_once", "reject_always"]
        );
        assert_eq!(
            option_answer("allow_always"),
            Some((Decision::Allow, Scope::Session))
        );
        assert_eq!(
            option_answer("reject_once"),
            Some((Decision::Deny, Scope::Once))
        );
        assert_eq!(option_answer("maybe"), None);
    }

    #[test]
    fn prompts_are_text_and_refusals_name_the_block() {
        let blocks = vec![
            s::ContentBlock::from("look at "),
            s::ContentBlock::ResourceLink(s::ResourceLink::new("notes", "file:///tmp/notes")),
        ];
        assert_eq!(
            prompt_text(&blocks).expect("text"),
            "look at [notes](file:///tmp/notes)"
        );
        let blank = prompt_text(&[s::ContentBlock::from("  ")]).expect_err("blank");
        assert!(blank.message.contains("`prompt`"), "{}", blank.message);
        let image = s::ContentBlock::Image(s::ImageContent::new("AAAA", "image/png"));
        let e = prompt_text(&[s::ContentBlock::from("x"), image]).expect_err("image");
        assert!(e.message.contains("`prompt[1]`"), "{}", e.message);
    }

    #[test]
    fn stop_reasons_map_and_errors_carry_the_message() {
        let r = prompt_outcome(StopReason::MaxRounds, None).expect("ok");
        assert_eq!(r.stop_reason, s::StopReason::MaxTurnRequests);
        let e = prompt_outcome(StopReason::Error, Some("model failed: 500")).expect_err("error");
        assert_eq!(e.message, "model failed: 500");
    }
}
