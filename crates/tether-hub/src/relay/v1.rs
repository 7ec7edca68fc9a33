//! Version 1 (stock catpaw): the hub builds the event stream of a session from its agent's
//! `session_output` frames (text deltas, tool calls and results, turn ends).

use super::shadow::{HubSession, Shadow};
use super::{AgentConn, Relay, now};
use crate::store::now_ms;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use tether_proto::link::{
    DiagnoseReport, MAX_SESSION_OUTPUT_FRAME_BYTES, OutputProbe, SessionError, SessionOutput,
};
use tether_proto::{
    CallId, ClientInfo, EventBody, InputId, Mode, NoticeLevel, SessionState, StopReason, TurnId,
};

/// Version-1 bookkeeping: the hub runs the turn structure itself.
#[derive(Default)]
pub(super) struct V1Track {
    pub(super) queue: VecDeque<(InputId, ClientInfo, String)>,
    /// Open tool calls by the name on catpaw's line (`call_tool` for most), oldest first:
    /// a `[Tool done]` line names only that, so it pairs with the oldest open call of it.
    pub(super) calls: VecDeque<(String, CallId)>,
    /// Why the session ends when its final `done` frame comes (default: "finished").
    pub(super) end_reason: Option<String>,
    /// `session.create` has not yet opened the session (its first events and turn). catpaw
    /// starts working right after acking `session_start`, so its first outputs can be read
    /// before `create` runs again; they wait here and are applied after the opening events.
    pub(super) opening: bool,
    pub(super) early: Vec<V1Early>,
}

/// A version-1 session frame from the agent (kept in `V1Track::early` when it arrives while
/// the session is opening).
pub(super) enum V1Early {
    Output(SessionOutput),
    Error(SessionError),
    /// A `session_output` over [`MAX_SESSION_OUTPUT_FRAME_BYTES`] (its size), not decoded.
    TooLarge(OutputProbe, usize),
}

impl V1Early {
    pub(super) fn session_id(&self) -> &str {
        match self {
            V1Early::Output(o) => &o.session_id,
            V1Early::Error(e) => &e.session_id,
            V1Early::TooLarge(p, _) => &p.session_id,
        }
    }
}

impl Relay {
    pub(super) async fn v1_start_turn(
        &self,
        session: &HubSession,
        shadow: &mut Shadow,
        originator: ClientInfo,
        text: String,
        input_id: Option<InputId>,
    ) -> TurnId {
        let turn_id = TurnId(uuid::Uuid::now_v7().to_string());
        self.publish(
            session,
            shadow,
            EventBody::TurnStarted {
                turn_id: turn_id.clone(),
                originator,
                text,
                input_id,
            },
        )
        .await;
        self.publish(
            session,
            shadow,
            EventBody::SessionState {
                state: SessionState::Running,
            },
        )
        .await;
        turn_id
    }
    /// Version 1: a `session_output` frame.
    pub async fn on_output(&self, agent: &AgentConn, o: SessionOutput) {
        self.on_v1(agent, V1Early::Output(o)).await;
    }

    /// Version 1: a `session_error` (a final `done` output follows).
    pub async fn on_error(&self, agent: &AgentConn, e: SessionError) {
        self.on_v1(agent, V1Early::Error(e)).await;
    }

    /// A version-1 frame of one of `agent`'s sessions: applied now, or after the opening
    /// events when the session is still opening.
    pub(super) async fn on_v1(&self, agent: &AgentConn, frame: V1Early) {
        let Some(session) = self.get(frame.session_id()) else {
            return;
        };
        if session.agent_id != agent.agent_id {
            return;
        }
        let mut shadow = session.shadow.lock().await;
        if shadow.v1.opening {
            shadow.v1.early.push(frame);
            return;
        }
        self.apply_v1(&session, &mut shadow, frame).await;
    }

    pub(super) async fn apply_v1(&self, session: &HubSession, shadow: &mut Shadow, frame: V1Early) {
        match frame {
            V1Early::Output(o) => self.apply_output(session, shadow, o).await,
            V1Early::Error(e) => self.apply_error(session, shadow, e).await,
            V1Early::TooLarge(probe, size) => {
                // Not decoded, so not shown. A frame that ends the turn (a chat's reply) or
                // the session (the final report) still does, with an error that says why.
                let what = match (probe.done, probe.turn_done) {
                    (true, _) => "final report",
                    (false, true) => "reply",
                    (false, false) => "output",
                };
                let why = format!(
                    "the agent's {what} was {size} bytes; the hub accepts session output frames of up to {MAX_SESSION_OUTPUT_FRAME_BYTES} bytes, so it was dropped"
                );
                if !probe.done && !probe.turn_done {
                    if shadow.state != SessionState::Closed {
                        self.publish(
                            session,
                            shadow,
                            EventBody::Notice {
                                level: NoticeLevel::Warning,
                                message: why,
                            },
                        )
                        .await;
                    }
                    return;
                }
                if probe.done {
                    shadow.v1.end_reason = Some(why.clone());
                }
                let output = SessionOutput {
                    session_id: probe.session_id,
                    delta: why,
                    stage: "error".into(),
                    done: probe.done,
                    report: None,
                    metadata: Some(Map::from_iter([("turn_done".into(), Value::Bool(true))])),
                };
                self.apply_output(session, shadow, output).await;
            }
        }
    }

    /// Version 1: a `session_output` frame too large to decode (over
    /// [`MAX_SESSION_OUTPUT_FRAME_BYTES`], `size` bytes).
    pub async fn on_output_too_large(&self, agent: &AgentConn, probe: OutputProbe, size: usize) {
        self.on_v1(agent, V1Early::TooLarge(probe, size)).await;
    }

    pub(super) async fn apply_output(
        &self,
        session: &HubSession,
        shadow: &mut Shadow,
        o: SessionOutput,
    ) {
        if shadow.state == SessionState::Closed {
            return;
        }
        let turn_id = match &shadow.turn {
            Some(t) => t.turn_id.clone(),
            None if o.done => TurnId(String::new()),
            None => {
                // Output with no turn (the agent started on its own): open one.
                self.v1_start_turn(
                    session,
                    shadow,
                    session.created_by.clone(),
                    "(agent)".into(),
                    None,
                )
                .await
            }
        };
        let has_turn = !turn_id.0.is_empty();
        match o.stage.as_str() {
            "thinking" if has_turn && !o.delta.is_empty() => {
                self.publish(
                    session,
                    shadow,
                    EventBody::ReasoningDelta {
                        turn_id: turn_id.clone(),
                        text: format!("{}\n", o.delta),
                    },
                )
                .await;
            }
            "answer" | "error" if has_turn && !o.delta.is_empty() => {
                let text = if o.stage == "error" {
                    format!("\n[error] {}\n", o.delta)
                } else {
                    o.delta.clone()
                };
                self.publish(
                    session,
                    shadow,
                    EventBody::TextDelta {
                        turn_id: turn_id.clone(),
                        text,
                    },
                )
                .await;
            }
            "tool_call" if has_turn => {
                let line = parse_tool_line(&o.delta);
                let (tool, args) = (line.tool, line.args);
                let call_id = CallId(uuid::Uuid::now_v7().to_string());
                shadow.v1.calls.push_back((line.wire_name, call_id.clone()));
                self.publish(
                    session,
                    shadow,
                    EventBody::ToolCall {
                        turn_id: turn_id.clone(),
                        call_id,
                        tool,
                        args,
                    },
                )
                .await;
            }
            "tool_result" if has_turn => {
                if let Some((wire_name, ok, duration_ms)) = parse_tool_done(&o.delta) {
                    let open = shadow.v1.calls.iter().position(|(n, _)| *n == wire_name);
                    let call_id = open
                        .and_then(|i| shadow.v1.calls.remove(i))
                        .map(|(_, id)| id)
                        .unwrap_or_else(|| CallId(uuid::Uuid::now_v7().to_string()));
                    self.publish(
                        session,
                        shadow,
                        EventBody::ToolResult {
                            turn_id: turn_id.clone(),
                            call_id,
                            ok,
                            output: o.delta.clone(),
                            truncated: false,
                            duration_ms,
                            // A v1 `[Tool done]` line carries no approval wait.
                            waited_ms: None,
                        },
                    )
                    .await;
                } else {
                    self.publish(
                        session,
                        shadow,
                        EventBody::Notice {
                            level: NoticeLevel::Info,
                            message: o.delta.clone(),
                        },
                    )
                    .await;
                }
            }
            _ => {}
        }
        let turn_done = o
            .metadata
            .as_ref()
            .and_then(|m| m.get("turn_done"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if has_turn && (turn_done || o.done) {
            if let Some(report) = o.report.as_ref().filter(|r| !r.is_empty()) {
                self.publish(
                    session,
                    shadow,
                    EventBody::TextDelta {
                        turn_id: turn_id.clone(),
                        text: report.clone(),
                    },
                )
                .await;
                if session.mode == Mode::Diagnose && o.stage != "error" {
                    // catpaw has no `diagnose_report`: its final report is the diagnosis,
                    // stored (and linked to the session's alert) as a version-2 agent's is.
                    self.store_report(
                        &session.agent_id,
                        DiagnoseReport {
                            alert_key: session.alert_key.clone(),
                            session_id: Some(session.id.clone()),
                            report: report.clone(),
                            created_at: now(),
                        },
                        now_ms(),
                    )
                    .await;
                }
            }
            let failed = o.stage == "error";
            self.publish(
                session,
                shadow,
                EventBody::TurnEnded {
                    turn_id: turn_id.clone(),
                    stop: if failed {
                        StopReason::Error
                    } else {
                        StopReason::Completed
                    },
                    error: failed.then(|| o.delta.clone()),
                    usage: None,
                },
            )
            .await;
            if !o.done {
                if let Some((input_id, who, text)) = shadow.v1.queue.pop_front() {
                    self.v1_start_turn(session, shadow, who, text, Some(input_id))
                        .await;
                } else {
                    self.publish(
                        session,
                        shadow,
                        EventBody::SessionState {
                            state: SessionState::Idle,
                        },
                    )
                    .await;
                }
            }
        }
        if o.done {
            self.publish(
                session,
                shadow,
                EventBody::SessionState {
                    state: SessionState::Closed,
                },
            )
            .await;
            let reason = shadow
                .v1
                .end_reason
                .take()
                .unwrap_or_else(|| "finished".into());
            self.publish(session, shadow, EventBody::SessionClosed { reason })
                .await;
        }
    }

    pub(super) async fn apply_error(
        &self,
        session: &HubSession,
        shadow: &mut Shadow,
        e: SessionError,
    ) {
        if shadow.state == SessionState::Closed {
            return;
        }
        // The final `done` that follows closes the session for this reason.
        shadow.v1.end_reason = Some(format!("failed: {}", e.error));
        self.publish(
            session,
            shadow,
            EventBody::Notice {
                level: NoticeLevel::Error,
                message: format!("{} ({})", e.error, e.code),
            },
        )
        .await;
        if let Some(turn) = shadow.turn.clone() {
            self.publish(
                session,
                shadow,
                EventBody::TurnEnded {
                    turn_id: turn.turn_id,
                    stop: StopReason::Error,
                    error: Some(e.error.clone()),
                    usage: None,
                },
            )
            .await;
        }
    }
}

/// catpaw's diagnose reads the alert text from `params.descriptions` only; operators and
/// tether's own callers may give it as `alert` or `message`.
pub(super) fn v1_descriptions(params: &mut Map<String, Value>) {
    let has = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty())
    };
    if has(params.get("descriptions")) {
        return;
    }
    let text = ["alert", "message"]
        .into_iter()
        .map(|k| params.get(k))
        .find(|v| has(*v))
        .flatten()
        .cloned();
    if let Some(text) = text {
        params.insert("descriptions".into(), text);
    }
}

/// catpaw decodes `params` as a map of strings: a value of another type (a diagnosis' labels,
/// say) goes as its JSON text.
pub(super) fn v1_string_params(params: &mut Map<String, Value>) {
    for v in params.values_mut() {
        if !v.is_string() {
            *v = Value::String(v.to_string());
        }
    }
}

/// The first input of an inspect or diagnose session, for the transcript.
pub(super) fn first_text(mode: Mode, params: &Map<String, Value>) -> String {
    let p = |k: &str| params.get(k).and_then(Value::as_str).unwrap_or("");
    match mode {
        Mode::Inspect => format!("inspect {} {}", p("plugin"), p("target"))
            .trim()
            .to_owned(),
        _ => {
            let what = [p("alert"), p("descriptions"), p("message")]
                .into_iter()
                .find(|s| !s.is_empty())
                .unwrap_or("(no description)");
            format!("diagnose: {what}")
        }
    }
}

/// A catpaw `tool_call` line, read.
#[derive(Debug, PartialEq)]
pub(super) struct ToolLine {
    /// The name on the line (`call_tool` for most tools): its `[Tool done]` line says this.
    wire_name: String,
    /// The tool that runs.
    tool: String,
    /// Its arguments, always an object.
    args: Value,
}

/// catpaw's `[Tool] <name> <display>` (`FormatToolArgsDisplay`): `call_tool <tool> <json>`
/// (or just `<tool>`), `list_tools <category>`, `exec_shell <command>`, a direct tool with
/// nothing after it; `[Shell] <command>` in a chat that may run commands.
pub(super) fn parse_tool_line(line: &str) -> ToolLine {
    if let Some(command) = line.strip_prefix("[Shell]") {
        return ToolLine {
            wire_name: "exec_shell".into(),
            tool: "exec_shell".into(),
            args: json!({"command": command.trim()}),
        };
    }
    let rest = line.strip_prefix("[Tool]").unwrap_or(line).trim();
    let (name, display) = rest.split_once(' ').unwrap_or((rest, ""));
    let display = display.trim();
    let (tool, args) = match name {
        "call_tool" => {
            let (tool, args) = display.split_once(' ').unwrap_or((display, ""));
            (tool.to_owned(), args_object(args.trim()))
        }
        "list_tools" if !display.is_empty() => (name.to_owned(), json!({"category": display})),
        "exec_shell" if !display.is_empty() => (name.to_owned(), json!({"command": display})),
        _ => (name.to_owned(), args_object(display)),
    };
    ToolLine {
        wire_name: name.to_owned(),
        tool: if tool.is_empty() {
            name.to_owned()
        } else {
            tool
        },
        args,
    }
}

/// Arguments as an object: a JSON object as is, anything else kept as `_raw` text (catpaw's
/// own fallback in `ParseToolArgs`).
pub(super) fn args_object(text: &str) -> Value {
    if text.is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"_raw": text}),
    }
}

/// `[Tool done] name (ok, 123B, 1m2.5s)` → (name, ok, ms).
pub(super) fn parse_tool_done(line: &str) -> Option<(String, bool, u64)> {
    let rest = line.strip_prefix("[Tool done]")?.trim();
    let (name, tail) = rest.split_once(' ')?;
    let inner = tail.trim().strip_prefix('(')?.strip_suffix(')')?;
    let mut parts = inner.split(',').map(str::trim);
    let status = parts.next()?;
    let _bytes = parts.next();
    let ms = parts.next().and_then(go_duration_ms).unwrap_or(0);
    Some((name.to_owned(), status == "ok", ms))
}

/// Milliseconds of a Go `time.Duration` string (`850µs`, `12ms`, `1.5s`, `1m2.5s`,
/// `2h0m0s`, `0s`); `None` if it is not one.
pub(super) fn go_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let text = text.strip_prefix('-').unwrap_or(text);
    if text == "0" {
        return Some(0);
    }
    let mut rest = text;
    let mut total_ns = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ns += value * scale;
    }
    if text.is_empty() || !total_ns.is_finite() {
        return None;
    }
    Some((total_ns / 1e6).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn catpaw_tool_lines_parse() {
        // Exactly as catpaw's `fmt.Sprintf("[Tool] %s %s", ToolName, FormatToolArgsDisplay(..))`.
        let line = |t: &str| {
            let l = parse_tool_line(t);
            (l.wire_name, l.tool, l.args)
        };
        assert_eq!(
            line(r#"[Tool] call_tool disk_usage {"mount":"/"}"#),
            (
                "call_tool".into(),
                "disk_usage".into(),
                json!({"mount": "/"})
            )
        );
        assert_eq!(
            line("[Tool] call_tool mem_info"),
            ("call_tool".into(), "mem_info".into(), json!({}))
        );
        assert_eq!(
            line("[Tool] call_tool ps_top not json"),
            (
                "call_tool".into(),
                "ps_top".into(),
                json!({"_raw": "not json"})
            )
        );
        // A direct tool: the display is empty (note catpaw's trailing space).
        assert_eq!(
            line("[Tool] cpu_usage "),
            ("cpu_usage".into(), "cpu_usage".into(), json!({}))
        );
        assert_eq!(
            line("[Tool] list_tools network"),
            (
                "list_tools".into(),
                "list_tools".into(),
                json!({"category": "network"})
            )
        );
        assert_eq!(
            line("[Tool] exec_shell df -h /var"),
            (
                "exec_shell".into(),
                "exec_shell".into(),
                json!({"command": "df -h /var"})
            )
        );
        assert_eq!(
            line("[Shell] uptime"),
            (
                "exec_shell".into(),
                "exec_shell".into(),
                json!({"command": "uptime"})
            )
        );
        assert_eq!(
            parse_tool_done("[Tool done] call_tool (ok, 120B, 1.5s)"),
            Some(("call_tool".into(), true, 1500))
        );
        assert_eq!(
            parse_tool_done("[Tool done] x (error, 0B, 850ms)"),
            Some(("x".into(), false, 850))
        );
        assert_eq!(
            parse_tool_done("[Tool done] call_tool (ok, 9B, 1m2.5s)"),
            Some(("call_tool".into(), true, 62_500))
        );
        assert_eq!(parse_tool_done("nonsense"), None);
    }

    #[test]
    pub(super) fn go_durations_parse() {
        for (text, ms) in [
            ("0s", 0),
            ("850µs", 1),
            ("850μs", 1),
            ("400us", 0),
            ("999ns", 0),
            ("12ms", 12),
            ("1.234567891s", 1235),
            ("1m2.5s", 62_500),
            ("2h0m0s", 7_200_000),
            ("1h1m1.001s", 3_661_001),
        ] {
            assert_eq!(go_duration_ms(text), Some(ms), "{text}");
        }
        for bad in ["", "5", "1.5x", "ms", "1..2s"] {
            assert_eq!(go_duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    pub(super) fn v1_diagnose_params_carry_descriptions() {
        let mut p = Map::new();
        p.insert("alert".into(), json!("disk /data 95% full"));
        v1_descriptions(&mut p);
        assert_eq!(p["descriptions"], "disk /data 95% full");
        let mut p = Map::new();
        p.insert("descriptions".into(), json!("kept"));
        p.insert("alert".into(), json!("not this"));
        v1_descriptions(&mut p);
        assert_eq!(p["descriptions"], "kept");
    }
}
