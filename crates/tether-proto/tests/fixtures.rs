//! Wire fixtures for the client protocol (PROTOCOL.md §1).
//!
//! Every request op, reply shape, event and control frame is encoded with the crate's own
//! encoder (compact JSON, exactly what crosses the socket) and pinned as an insta snapshot, so
//! any change to a field name or shape shows up as a snapshot diff. Each frame is also decoded
//! back (`Request::decode` / `ServerFrame::decode`) and compared with the value it came from.

use serde_json::{Map, Value, json};
use tether_proto::*;

const SESSION: &str = "0199a0c0-5e55-7000-8000-000000000001";
const TURN: &str = "0199a0c0-7a12-7000-8000-000000000002";
const CALL: &str = "0199a0c0-ca11-7000-8000-000000000003";
const INPUT: &str = "0199a0c0-1a70-7000-8000-000000000004";
const TS: &str = "2025-01-02T03:04:05.678Z";

fn sid() -> SessionId {
    SESSION.into()
}

fn tid() -> TurnId {
    TURN.into()
}

fn cid() -> CallId {
    CALL.into()
}

fn alice() -> ClientInfo {
    ClientInfo {
        client_id: "alice/1".into(),
        class: Class::Human,
        name: "alice".into(),
    }
}

fn bot() -> ClientInfo {
    ClientInfo {
        client_id: "ci-bot/4".into(),
        class: Class::Agent,
        name: "ci-bot".into(),
    }
}

fn watcher() -> ClientInfo {
    ClientInfo {
        client_id: "grafana/2".into(),
        class: Class::Observer,
        name: "grafana".into(),
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("expected an object, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: encode, snapshot, decode back
// ---------------------------------------------------------------------------------------------

/// Snapshots the request's wire text and checks that it decodes back to the same request.
fn request(name: &str, req: Request) {
    let text = req.encode();
    insta::assert_snapshot!(name, text);
    assert_eq!(
        Request::decode(&text),
        Ok(req),
        "round trip of {name}: {text}"
    );
}

/// Snapshots a reply and checks that it decodes back as `ServerFrame::Reply`.
fn reply(name: &str, frame: ReplyFrame) {
    let text = frame.encode();
    assert_eq!(
        text,
        serde_json::to_string(&frame).expect("reply serializes"),
        "ReplyFrame::encode must be the compact serde_json form"
    );
    insta::assert_snapshot!(name, text);
    assert_eq!(
        ServerFrame::decode(&text),
        Ok(ServerFrame::Reply(frame)),
        "round trip of {name}: {text}"
    );
}

/// Snapshots an `ok` reply and also checks that its result decodes back into `T`.
fn ok_reply<T>(name: &str, re: RequestId, result: T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
{
    let frame = ReplyFrame::ok(re, result.clone());
    reply(name, frame.clone());
    assert_eq!(
        frame.into_result::<T>(),
        Ok(result),
        "typed result of {name}"
    );
}

/// Wraps a body in an event with a fixed session, seq and timestamp.
fn event(name: &str, body: EventBody) {
    assert_eq!(body.name(), name, "EventBody::name()");
    let ev = Event {
        session_id: sid(),
        seq: 42,
        ts: TS.into(),
        body,
    };
    let text = ev.encode();
    assert_eq!(
        text,
        serde_json::to_string(&ev).expect("event serializes"),
        "Event::encode must be the compact serde_json form"
    );
    let v: Value = serde_json::from_str(&text).expect("event is JSON");
    assert_eq!(v["event"], json!(name), "`event` tag of {name}");
    assert_eq!(v["seq"], json!(42), "`seq` of {name}");
    insta::assert_snapshot!(format!("event_{name}"), text.clone());
    assert_eq!(
        ServerFrame::decode(&text),
        Ok(ServerFrame::Event(ev)),
        "round trip of {name}: {text}"
    );
}

/// Same as [`event`] for a second variant of the same event, snapshotted under `variant`.
fn event_variant(variant: &str, body: EventBody) {
    let name = body.name();
    let ev = Event {
        session_id: sid(),
        seq: 42,
        ts: TS.into(),
        body,
    };
    let text = ev.encode();
    insta::assert_snapshot!(format!("event_{name}_{variant}"), text.clone());
    assert_eq!(
        ServerFrame::decode(&text),
        Ok(ServerFrame::Event(ev)),
        "round trip of {name}/{variant}: {text}"
    );
}

fn control(name: &str, frame: Control) {
    let text = frame.encode();
    assert_eq!(
        text,
        serde_json::to_string(&frame).expect("control serializes")
    );
    let v: Value = serde_json::from_str(&text).expect("control is JSON");
    assert_eq!(v["event"], json!(name), "`event` tag of {name}");
    assert!(
        v.get("seq").is_none(),
        "control frames carry no seq: {text}"
    );
    insta::assert_snapshot!(format!("control_{name}"), text.clone());
    assert_eq!(
        ServerFrame::decode(&text),
        Ok(ServerFrame::Control(frame)),
        "round trip of {name}: {text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

#[test]
fn request_hello() {
    request(
        "request_hello",
        Request {
            id: 1.into(),
            op: Op::Hello(Hello {
                client_name: Some("tether-cli".into()),
                class: None,
            }),
        },
    );
    request(
        "request_hello_lowered",
        Request {
            id: 2.into(),
            op: Op::Hello(Hello {
                client_name: Some("tether-mcp".into()),
                class: Some(Class::Agent),
            }),
        },
    );
    request(
        "request_hello_bare",
        Request {
            id: "h".into(),
            op: Op::Hello(Hello::default()),
        },
    );
}

#[test]
fn request_session_create() {
    request(
        "request_session_create_full",
        Request {
            id: 2.into(),
            op: Op::SessionCreate(SessionCreate {
                mode: Mode::Diagnose,
                params: Some(obj(json!({
                    "alert_key": "disk_full:/var",
                    "plugin": "disk",
                    "target": "/var",
                }))),
                title: Some("why is /var full".into()),
                policy: Some(Policy::Any),
                agent_id: Some("0199a0c0-a9e7-7000-8000-000000000005".into()),
            }),
        },
    );
    request(
        "request_session_create_minimal",
        Request {
            id: 3.into(),
            op: Op::SessionCreate(SessionCreate {
                mode: Mode::Chat,
                params: None,
                title: None,
                policy: None,
                agent_id: None,
            }),
        },
    );
    // Every mode and policy spelling is accepted on the way in.
    for mode in Mode::ALL {
        for policy in Policy::ALL {
            let text =
                format!(r#"{{"id":9,"op":"session.create","mode":"{mode}","policy":"{policy}"}}"#);
            let req = Request::decode(&text).expect("valid session.create");
            let Op::SessionCreate(c) = req.op else {
                panic!("decoded as {:?}", req.op);
            };
            assert_eq!((c.mode, c.policy), (*mode, Some(*policy)));
        }
    }
}

#[test]
fn request_session_list() {
    request(
        "request_session_list",
        Request {
            id: 4.into(),
            op: Op::SessionList(ListSessions::default()),
        },
    );
    request(
        "request_session_list_page",
        Request {
            id: 4.into(),
            op: Op::SessionList(ListSessions {
                limit: Some(50),
                cursor: Some(
                    "2025-01-02T03:00:00.000Z|0199a0c0-5e55-7000-8000-000000000001".into(),
                ),
            }),
        },
    );
}

#[test]
fn request_attach() {
    request(
        "request_attach_live",
        Request {
            id: 5.into(),
            op: Op::Attach(Attach {
                session_id: sid(),
                after_seq: None,
            }),
        },
    );
    request(
        "request_attach_after_seq",
        Request {
            id: 6.into(),
            op: Op::Attach(Attach {
                session_id: sid(),
                after_seq: Some(17),
            }),
        },
    );
    // after_seq 0 is meaningful (replay everything) and must not be dropped.
    request(
        "request_attach_after_seq_zero",
        Request {
            id: 7.into(),
            op: Op::Attach(Attach {
                session_id: sid(),
                after_seq: Some(0),
            }),
        },
    );
}

#[test]
fn request_detach() {
    request(
        "request_detach",
        Request {
            id: 8.into(),
            op: Op::Detach(SessionRef { session_id: sid() }),
        },
    );
}

#[test]
fn request_input() {
    request(
        "request_input",
        Request {
            id: 9.into(),
            op: Op::Input(Input {
                session_id: sid(),
                text: "what is using the disk?".into(),
                queue: false,
            }),
        },
    );
    request(
        "request_input_queued",
        Request {
            id: "in-10".into(),
            op: Op::Input(Input {
                session_id: sid(),
                text: "then check inodes".into(),
                queue: true,
            }),
        },
    );
    // An explicit `"queue": false` decodes the same as an absent one.
    let explicit = format!(
        r#"{{"id":9,"op":"input","session_id":"{SESSION}","text":"what is using the disk?","queue":false}}"#
    );
    assert_eq!(
        Request::decode(&explicit),
        Ok(Request {
            id: 9.into(),
            op: Op::Input(Input {
                session_id: sid(),
                text: "what is using the disk?".into(),
                queue: false,
            }),
        })
    );
}

#[test]
fn request_answer() {
    request(
        "request_answer",
        Request {
            id: 11.into(),
            op: Op::Answer(Answer {
                session_id: sid(),
                call_id: cid(),
                decision: Decision::Allow,
                scope: None,
                via: None,
            }),
        },
    );
    request(
        "request_answer_scope_session",
        Request {
            id: 12.into(),
            op: Op::Answer(Answer {
                session_id: sid(),
                call_id: cid(),
                decision: Decision::Allow,
                scope: Some(Scope::Session),
                via: None,
            }),
        },
    );
    request(
        "request_answer_deny_once",
        Request {
            id: 13.into(),
            op: Op::Answer(Answer {
                session_id: sid(),
                call_id: cid(),
                decision: Decision::Deny,
                scope: Some(Scope::Once),
                via: None,
            }),
        },
    );
}

#[test]
fn request_cancel() {
    request(
        "request_cancel",
        Request {
            id: 14.into(),
            op: Op::Cancel(Cancel {
                session_id: sid(),
                turn_id: tid(),
            }),
        },
    );
}

#[test]
fn request_session_close() {
    request(
        "request_session_close",
        Request {
            id: 15.into(),
            op: Op::SessionClose(SessionRef { session_id: sid() }),
        },
    );
}

#[test]
fn every_op_name_has_a_fixture() {
    // Guards against a new op being added without a fixture above.
    assert_eq!(
        Op::NAMES,
        &[
            "hello",
            "session.create",
            "session.list",
            "attach",
            "detach",
            "input",
            "answer",
            "cancel",
            "session.close",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

#[test]
fn reply_hello() {
    ok_reply(
        "reply_hello",
        1.into(),
        HelloResult {
            client_id: "alice/1".into(),
            class: Class::Human,
            name: "alice".into(),
            protocol: CLIENT_PROTOCOL_VERSION,
            server: ServerInfo {
                name: "tether".into(),
                version: "0.1.0".into(),
            },
        },
    );
}

#[test]
fn reply_session_created() {
    ok_reply(
        "reply_session_created",
        2.into(),
        SessionCreated { session_id: sid() },
    );
}

#[test]
fn reply_session_list() {
    ok_reply(
        "reply_session_list",
        4.into(),
        SessionList {
            sessions: vec![
                SessionSummary {
                    session_id: sid(),
                    mode: Mode::Diagnose,
                    state: SessionState::RequiresAction,
                    title: Some("why is /var full".into()),
                    created_at: "2025-01-02T03:00:00.000Z".into(),
                    clients: vec![alice(), watcher()],
                    last_seq: 42,
                },
                SessionSummary {
                    session_id: "0199a0c0-5e55-7000-8000-000000000009".into(),
                    mode: Mode::Chat,
                    state: SessionState::Idle,
                    title: None,
                    created_at: "2025-01-02T03:01:00.000Z".into(),
                    clients: vec![],
                    last_seq: 0,
                },
            ],
            next: None,
        },
    );
    ok_reply(
        "reply_session_list_empty",
        "l".into(),
        SessionList {
            sessions: vec![],
            next: None,
        },
    );
    ok_reply(
        "reply_session_list_more",
        "m".into(),
        SessionList {
            sessions: vec![SessionSummary {
                session_id: sid(),
                mode: Mode::Chat,
                state: SessionState::Closed,
                title: None,
                created_at: "2025-01-02T03:00:00.000Z".into(),
                clients: vec![],
                last_seq: 7,
            }],
            next: Some("2025-01-02T03:00:00.000Z|0199a0c0-5e55-7000-8000-000000000001".into()),
        },
    );
}

#[test]
fn reply_attached() {
    ok_reply(
        "reply_attached",
        6.into(),
        Attached {
            snapshot: Snapshot {
                session_id: sid(),
                mode: Mode::Diagnose,
                state: SessionState::RequiresAction,
                title: Some("why is /var full".into()),
                policy: Policy::Any,
                turn: Some(TurnRef {
                    turn_id: tid(),
                    originator: bot(),
                }),
                pending_permissions: vec![PendingPermission {
                    turn_id: tid(),
                    call_id: cid(),
                    tool: "shell".into(),
                    args: json!({"command": "du -sh /var/*"}),
                    originator: bot(),
                    policy: Policy::Any,
                }],
                clients: vec![alice(), bot(), watcher()],
                queued: vec![QueuedInput {
                    input_id: INPUT.into(),
                    originator: alice(),
                    text: "then check inodes".into(),
                }],
                queued_count: 3,
                last_seq: 42,
                first_seq: 1,
            },
        },
    );
    ok_reply(
        "reply_attached_idle",
        7.into(),
        Attached {
            snapshot: Snapshot {
                session_id: sid(),
                mode: Mode::Chat,
                state: SessionState::Idle,
                title: None,
                policy: Policy::Human,
                turn: None,
                pending_permissions: vec![],
                clients: vec![alice()],
                queued: vec![],
                queued_count: 0,
                last_seq: 0,
                first_seq: 1,
            },
        },
    );
}

#[test]
fn reply_input_accepted() {
    ok_reply(
        "reply_input_started",
        9.into(),
        InputAccepted::Started { turn_id: tid() },
    );
    ok_reply(
        "reply_input_queued",
        "in-10".into(),
        InputAccepted::Queued {
            input_id: INPUT.into(),
            position: 1,
        },
    );
}

#[test]
fn reply_empty() {
    ok_reply("reply_empty", 8.into(), Empty {});
}

#[test]
fn reply_errors() {
    reply(
        "reply_error_turn_in_progress",
        ReplyFrame::err(Some(9.into()), ErrorBody::turn_in_progress(&tid(), &bot())),
    );
    reply(
        "reply_error_forbidden",
        ReplyFrame::err(
            Some("in-11".into()),
            ErrorBody::new(Reason::Forbidden, "observers cannot send input"),
        ),
    );
    reply(
        "reply_error_re_null",
        ReplyFrame::err(
            None,
            ErrorBody::new(Reason::BadRequest, "missing field `id`"),
        ),
    );

    // turn_in_progress carries its details at the top level of `error`.
    let text =
        ReplyFrame::err(Some(9.into()), ErrorBody::turn_in_progress(&tid(), &bot())).encode();
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["error"]["reason"], json!("turn_in_progress"));
    assert_eq!(v["error"]["turn_id"], json!(TURN));
    assert_eq!(
        v["error"]["originator"],
        json!({"client_id": "ci-bot/4", "class": "agent", "name": "ci-bot"})
    );
    // `re` null is written out, never omitted.
    let text = ReplyFrame::err(None, ErrorBody::new(Reason::Internal, "x")).encode();
    assert!(text.contains(r#""re":null"#), "{text}");
}

#[test]
fn every_reason_spelling() {
    let all: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        all,
        [
            "bad_request",
            "unauthorized",
            "forbidden",
            "unknown_session",
            "turn_in_progress",
            "stale_turn",
            "no_pending_permission",
            "already_resolved",
            "agent_cannot_self_approve",
            "human_answer_required",
            "overloaded",
            "session_closed",
            "internal",
        ]
    );
    for reason in Reason::ALL {
        let frame = ReplyFrame::err(Some(1.into()), ErrorBody::new(*reason, "m"));
        let text = frame.encode();
        assert!(text.contains(&format!(r#""reason":"{reason}""#)), "{text}");
        assert_eq!(ServerFrame::decode(&text), Ok(ServerFrame::Reply(frame)));
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

#[test]
fn event_session_state() {
    event(
        "session_state",
        EventBody::SessionState {
            state: SessionState::RequiresAction,
        },
    );
    for state in SessionState::ALL {
        let text = Event {
            session_id: sid(),
            seq: 1,
            ts: TS.into(),
            body: EventBody::SessionState { state: *state },
        }
        .encode();
        assert!(text.contains(&format!(r#""state":"{state}""#)), "{text}");
    }
}

#[test]
fn event_client_attached() {
    event(
        "client_attached",
        EventBody::ClientAttached {
            client: alice(),
            reason: None,
        },
    );
    event_variant(
        "with_reason",
        EventBody::ClientAttached {
            client: alice(),
            reason: Some("reconnected".into()),
        },
    );
}

#[test]
fn event_client_detached() {
    event(
        "client_detached",
        EventBody::ClientDetached {
            client: watcher(),
            reason: Some("evicted: slow consumer".into()),
        },
    );
    event_variant(
        "without_reason",
        EventBody::ClientDetached {
            client: watcher(),
            reason: None,
        },
    );
}

#[test]
fn event_turn_started() {
    event(
        "turn_started",
        EventBody::TurnStarted {
            turn_id: tid(),
            originator: alice(),
            text: "what is using the disk?".into(),
            input_id: None,
        },
    );
    event_variant(
        "from_queue",
        EventBody::TurnStarted {
            turn_id: tid(),
            originator: alice(),
            text: "then check inodes".into(),
            input_id: Some(INPUT.into()),
        },
    );
}

#[test]
fn event_text_delta() {
    event(
        "text_delta",
        EventBody::TextDelta {
            turn_id: tid(),
            text: "Most of /var is \"journal\"\n".into(),
        },
    );
}

#[test]
fn event_reasoning_delta() {
    event(
        "reasoning_delta",
        EventBody::ReasoningDelta {
            turn_id: tid(),
            text: "Check du first.".into(),
        },
    );
}

#[test]
fn event_tool_call() {
    event(
        "tool_call",
        EventBody::ToolCall {
            turn_id: tid(),
            call_id: cid(),
            tool: "shell".into(),
            args: json!({"command": "du -sh /var/*", "timeout_s": 30}),
        },
    );
}

#[test]
fn event_permission_requested() {
    event(
        "permission_requested",
        EventBody::PermissionRequested {
            turn_id: tid(),
            call_id: cid(),
            tool: "shell".into(),
            args: json!({"command": "journalctl --vacuum-size=200M"}),
            originator: bot(),
            policy: Policy::Any,
        },
    );
}

#[test]
fn event_permission_resolved() {
    event(
        "permission_resolved",
        EventBody::PermissionResolved {
            call_id: cid(),
            decision: Decision::Allow,
            by: Some(alice()),
            cause: ResolveCause::Answered,
            scope: Some(Scope::Session),
        },
    );
    event_variant(
        "by_null",
        EventBody::PermissionResolved {
            call_id: cid(),
            decision: Decision::Deny,
            by: None,
            cause: ResolveCause::NoEligibleAnswerer,
            scope: None,
        },
    );
    // `by` is always present: null when nobody answered.
    for cause in ResolveCause::ALL {
        let text = Event {
            session_id: sid(),
            seq: 1,
            ts: TS.into(),
            body: EventBody::PermissionResolved {
                call_id: cid(),
                decision: Decision::Deny,
                by: None,
                cause: *cause,
                scope: None,
            },
        }
        .encode();
        assert!(text.contains(r#""by":null"#), "{text}");
        assert!(text.contains(&format!(r#""cause":"{cause}""#)), "{text}");
    }
}

#[test]
fn event_tool_result() {
    event(
        "tool_result",
        EventBody::ToolResult {
            turn_id: tid(),
            call_id: cid(),
            ok: true,
            output: "1.2G\t/var/log\n".into(),
            truncated: false,
            duration_ms: 231,
            waited_ms: None,
        },
    );
    event_variant(
        "failed_truncated",
        EventBody::ToolResult {
            turn_id: tid(),
            call_id: cid(),
            ok: false,
            output: "x".repeat(16),
            truncated: true,
            duration_ms: 30000,
            waited_ms: None,
        },
    );
    // A call that waited for a human's approval: the wait is reported apart from the run.
    event_variant(
        "after_approval",
        EventBody::ToolResult {
            turn_id: tid(),
            call_id: cid(),
            ok: true,
            output: "Linux\n".into(),
            truncated: false,
            duration_ms: 4,
            waited_ms: Some(54767),
        },
    );
}

#[test]
fn event_turn_ended() {
    event(
        "turn_ended",
        EventBody::TurnEnded {
            turn_id: tid(),
            stop: StopReason::Completed,
            error: None,
            usage: None,
        },
    );
    event_variant(
        "error_usage",
        EventBody::TurnEnded {
            turn_id: tid(),
            stop: StopReason::Error,
            error: Some("model endpoint returned 503".into()),
            usage: Some(Usage {
                prompt_tokens: 1200,
                completion_tokens: 80,
                total_tokens: 1280,
                estimated: false,
            }),
        },
    );
    // A server that reported no usage: tether's estimate, marked.
    event_variant(
        "estimated_usage",
        EventBody::TurnEnded {
            turn_id: tid(),
            stop: StopReason::Completed,
            error: None,
            usage: Some(Usage {
                prompt_tokens: 1750,
                completion_tokens: 96,
                total_tokens: 1846,
                estimated: true,
            }),
        },
    );
    for stop in StopReason::ALL {
        let text = Event {
            session_id: sid(),
            seq: 1,
            ts: TS.into(),
            body: EventBody::TurnEnded {
                turn_id: tid(),
                stop: *stop,
                error: None,
                usage: None,
            },
        }
        .encode();
        assert!(text.contains(&format!(r#""stop":"{stop}""#)), "{text}");
    }
}

#[test]
fn event_notice() {
    event(
        "notice",
        EventBody::Notice {
            level: NoticeLevel::Warning,
            message: "MCP server `grafana` failed to start".into(),
        },
    );
}

#[test]
fn event_session_closed() {
    event(
        "session_closed",
        EventBody::SessionClosed {
            reason: "closed by alice".into(),
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Control frames
// ---------------------------------------------------------------------------------------------

#[test]
fn control_frames() {
    control(
        "stream_gap",
        Control::StreamGap {
            session_id: sid(),
            from_seq: 18,
            to_seq: 120,
        },
    );
    control(
        "replay_complete",
        Control::ReplayComplete {
            session_id: sid(),
            last_seq: 42,
        },
    );
    control("slow_consumer", Control::SlowConsumer { queued: 1024 });
    control(
        "evicted",
        Control::Evicted {
            reason: "slow consumer".into(),
        },
    );
    control(
        "log_unavailable",
        Control::LogUnavailable {
            session_id: sid(),
            message: "the event log cannot write: database or disk is full".into(),
        },
    );
    control("log_restored", Control::LogRestored { session_id: sid() });
}
