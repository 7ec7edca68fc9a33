//! Remote sessions under version 1 (catpaw's protocol), and the `session_start` refusals of
//! PROTOCOL.md §2 (under both versions): the real driver, the real multiplexer and engine
//! (scripted provider), a test hub over loopback.

mod common;

use common::hub::{HubConn, HubSettings, TestHub};
use common::{AgentSetup, TestAgent, WAIT, payload, session_start};
use serde_json::{Value, json};
use tether_proto::Mode;
use tether_proto::link::refusal;

async fn registered(hub: &TestHub, agent: &TestAgent) -> HubConn {
    let conn = hub.next_conn(WAIT).await;
    agent
        .wait_status("registered", WAIT, |s| s.state == "registered")
        .await;
    conn
}

/// Sends `session_start` and returns the ack's payload (checked: `ref_id` is the frame id).
async fn start(conn: &mut HubConn, payload_json: Value) -> Value {
    let id = conn.send_msg("session_start", payload_json);
    let ack = conn.ack_for(&id, WAIT).await;
    assert_eq!(ack["ref_id"], id.as_str());
    ack["payload"].clone()
}

/// The strict catpaw-server saw nothing a catpaw agent would not send.
fn assert_catpaw_shaped(hub: &TestHub) {
    let bad = hub.with(|r| r.v1_violations.clone());
    assert!(
        bad.is_empty(),
        "frames a catpaw-server would not expect: {bad:#?}"
    );
}

/// Disconnects the link and returns the session frames that arrived meanwhile.
async fn session_frames_until_closed(conn: &mut HubConn) -> Vec<Value> {
    conn.send_msg(
        "disconnect",
        json!({"reason": "test over", "retry_after_sec": 600}),
    );
    conn.ended(WAIT)
        .await
        .into_iter()
        .filter(|f| matches!(f["type"].as_str(), Some("session_output" | "session_error")))
        .collect()
}

/// The next `session_output` / `session_error` frame (v1 session traffic).
async fn next_session_frame(conn: &mut HubConn) -> Value {
    conn.next_where(WAIT, |f| {
        matches!(
            f["type"].as_str(),
            Some("session_output" | "session_error" | "session_event")
        )
    })
    .await
}

/// catpaw's final frame of a session (`runRemoteSession`'s deferred send).
fn final_frame(sid: &str) -> Value {
    json!({"session_id": sid, "delta": "", "stage": "", "done": true})
}

fn refused_with(ack: &Value, why: &str, case: &str) {
    assert_eq!(ack["ok"], false, "{case}: {ack}");
    assert_eq!(ack["error"], why, "{case}: {ack}");
}

/// Every refusal string of PROTOCOL.md §2, each acked by `ref_id` with `ok: false` and
/// exactly that string — under version 1 and version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_acked_with_its_exact_string() {
    for version in [1u32, 2] {
        // An agent with a model, that allows only chat, one session at a time.
        let hub = TestHub::start(HubSettings {
            version,
            ..HubSettings::default()
        })
        .await;
        let mut setup = AgentSetup::new(hub.url());
        setup.remote.max_sessions = 1;
        setup.remote.session_types = vec![Mode::Chat];
        let agent = TestAgent::start(setup);
        let mut conn = registered(&hub, &agent).await;

        // invalid payload: the payload does not decode (a number where a string belongs,
        // a payload that is not an object, no payload at all) ...
        for (case, text) in [
            (
                "session_id is a number",
                json!({"type": "session_start", "id": "bad-1", "payload": {"session_id": 42, "session_type": "chat"}}),
            ),
            (
                "payload is a string",
                json!({"type": "session_start", "id": "bad-2", "payload": "chat please"}),
            ),
            (
                "no payload",
                json!({"type": "session_start", "id": "bad-3"}),
            ),
            (
                "params is a list",
                json!({"type": "session_start", "id": "bad-4", "payload": {"session_id": "s", "session_type": "chat", "params": [1]}}),
            ),
        ] {
            let id = conn.send(text);
            let ack = conn.ack_for(&id, WAIT).await;
            refused_with(&ack["payload"], refusal::INVALID_PAYLOAD, case);
        }
        // ... or a session id the agent cannot use as its own.
        let ack = start(
            &mut conn,
            session_start("no spaces/or slashes", "chat", "alice", None),
        )
        .await;
        refused_with(&ack, refusal::INVALID_PAYLOAD, "unusable session id");

        // missing session_id
        let ack = start(&mut conn, session_start("", "chat", "alice", None)).await;
        refused_with(&ack, refusal::MISSING_SESSION_ID, "empty session_id");
        let ack = start(
            &mut conn,
            json!({"session_type": "chat", "user_name": "alice"}),
        )
        .await;
        refused_with(&ack, refusal::MISSING_SESSION_ID, "absent session_id");

        // diagnose engine not available: diagnose and inspect are not among session_types.
        let ack = start(&mut conn, session_start("d-1", "diagnose", "alice", None)).await;
        refused_with(
            &ack,
            refusal::DIAGNOSE_ENGINE_UNAVAILABLE,
            "diagnose not allowed",
        );
        let mut inspect = session_start("i-1", "inspect", "alice", None);
        inspect["params"]["plugin"] = json!("cpu");
        let ack = start(&mut conn, inspect).await;
        refused_with(
            &ack,
            refusal::DIAGNOSE_ENGINE_UNAVAILABLE,
            "inspect not allowed",
        );

        // max concurrent sessions reached: one chat holds the only slot.
        let ack = start(&mut conn, session_start("held", "chat", "alice", None)).await;
        assert_eq!(ack["ok"], true, "{ack}");
        agent
            .wait_status("one remote session", WAIT, |s| s.remote_sessions == 1)
            .await;
        let ack = start(&mut conn, session_start("second", "chat", "alice", None)).await;
        refused_with(&ack, refusal::MAX_CONCURRENT, "second session");
        agent.stop().await;

        // duplicate session_id: room for two, the id is taken.
        let hub = TestHub::start(HubSettings {
            version,
            ..HubSettings::default()
        })
        .await;
        let mut setup = AgentSetup::new(hub.url());
        setup.remote.max_sessions = 2;
        let agent = TestAgent::start(setup);
        let mut conn = registered(&hub, &agent).await;
        let ack = start(&mut conn, session_start("same", "chat", "alice", None)).await;
        assert_eq!(ack["ok"], true, "{ack}");
        let ack = start(&mut conn, session_start("same", "chat", "bob", None)).await;
        refused_with(&ack, refusal::DUPLICATE_SESSION_ID, "same id twice");
        agent.stop().await;

        // chat engine not available: no model configured ...
        let hub = TestHub::start(HubSettings {
            version,
            ..HubSettings::default()
        })
        .await;
        let mut setup = AgentSetup::new(hub.url());
        setup.remote.model_configured = false;
        let agent = TestAgent::start(setup);
        let mut conn = registered(&hub, &agent).await;
        let ack = start(&mut conn, session_start("c-1", "chat", "alice", Some("hi"))).await;
        refused_with(&ack, refusal::CHAT_ENGINE_UNAVAILABLE, "no model");
        agent.stop().await;

        // ... or chat is not among session_types.
        let hub = TestHub::start(HubSettings {
            version,
            ..HubSettings::default()
        })
        .await;
        let mut setup = AgentSetup::new(hub.url());
        setup.remote.session_types = vec![Mode::Diagnose, Mode::Inspect];
        let agent = TestAgent::start(setup);
        let mut conn = registered(&hub, &agent).await;
        let ack = start(&mut conn, session_start("c-2", "chat", "alice", Some("hi"))).await;
        refused_with(&ack, refusal::CHAT_ENGINE_UNAVAILABLE, "chat not allowed");
        // The link survived every refusal.
        assert_eq!(agent.status().registrations, 1);
        agent.stop().await;
        assert_catpaw_shaped(&hub);
    }
}

/// The `session_output` frames of one chat turn, up to and including the one with
/// `metadata.turn_done`.
async fn v1_turn(conn: &mut HubConn, sid: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let f = conn
            .next_where(WAIT, |f| {
                matches!(
                    f["type"].as_str(),
                    Some("session_output" | "session_error" | "session_event")
                )
            })
            .await;
        assert_eq!(
            f["type"], "session_output",
            "only session_output under v1: {f}"
        );
        assert_eq!(payload(&f)["session_id"], sid);
        let done = payload(&f)["metadata"]["turn_done"] == true;
        out.push(payload(&f).clone());
        if done {
            return out;
        }
    }
}

fn stages(turn: &[Value]) -> Vec<&str> {
    turn.iter()
        .map(|p| p["stage"].as_str().unwrap_or("<none>"))
        .collect()
}

/// Checks one turn against catpaw's shapes: thinking, `[Tool] system_info …`,
/// `[Tool done] system_info …`, then the answer with `{"turn_done": true}`.
fn check_v1_turn(turn: &[Value], n: usize) {
    assert_eq!(
        stages(turn),
        vec!["thinking", "tool_call", "tool_result", "answer"],
        "turn {n}: {turn:#?}"
    );
    for p in turn {
        // Version-1 frames carry catpaw's fields only.
        let keys: Vec<&str> = p
            .as_object()
            .expect("payload")
            .keys()
            .map(String::as_str)
            .collect();
        for k in &keys {
            assert!(
                ["session_id", "delta", "stage", "done", "report", "metadata"].contains(k),
                "turn {n}: unexpected field {k} in {p}"
            );
        }
        assert_eq!(p["done"], false, "turn {n}: {p}");
    }
    assert!(!turn[0]["delta"].as_str().unwrap_or_default().is_empty());
    let call = turn[1]["delta"].as_str().unwrap_or_default();
    assert!(call.starts_with("[Tool] system_info"), "turn {n}: {call}");
    let done = turn[2]["delta"].as_str().unwrap_or_default();
    assert!(
        done.starts_with("[Tool done] system_info"),
        "turn {n}: {done}"
    );
    assert!(done.contains("ok"), "turn {n}: {done}");
    assert_eq!(turn[3]["delta"], "All fine.", "turn {n}");
    assert_eq!(turn[3]["metadata"], json!({"turn_done": true}), "turn {n}");
    // Only the last frame of the turn carries metadata.
    assert!(
        turn[..3].iter().all(|p| p.get("metadata").is_none()),
        "turn {n}: {turn:#?}"
    );
}

/// A version-1 chat: the opening message and two `session_input`s each run a turn that
/// reaches the hub in catpaw's `session_output` stages; `session_cancel` ends the session
/// with a final `done: true` output, and nothing follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_chat_in_catpaw_shapes() {
    let hub = TestHub::start(HubSettings {
        version: 1,
        ..HubSettings::default()
    })
    .await;
    let agent = TestAgent::start(AgentSetup::new(hub.url()));
    let mut conn = registered(&hub, &agent).await;
    assert_eq!(conn.version, 1);

    let ack = start(
        &mut conn,
        session_start("chat-1", "chat", "alice", Some("how is the host?")),
    )
    .await;
    assert_eq!(ack, json!({"ok": true}));
    check_v1_turn(&v1_turn(&mut conn, "chat-1").await, 1);

    for (n, text) in [(2, "and now?"), (3, "once more")] {
        conn.send_msg(
            "session_input",
            json!({"session_id": "chat-1", "message": text}),
        );
        check_v1_turn(&v1_turn(&mut conn, "chat-1").await, n);
    }
    assert_eq!(agent.status().remote_sessions, 1);

    conn.send_msg(
        "session_cancel",
        json!({"session_id": "chat-1", "reason": "user left"}),
    );
    let last = conn.next_of("session_output", WAIT).await;
    assert_eq!(
        payload(&last),
        &json!({"session_id": "chat-1", "delta": "", "stage": "", "done": true}),
        "the final frame"
    );
    agent
        .wait_status("the session is gone", WAIT, |s| s.remote_sessions == 0)
        .await;
    // Nothing more for that session: close the link and look at what was left.
    conn.send_msg(
        "disconnect",
        json!({"reason": "test over", "retry_after_sec": 600}),
    );
    let rest = conn.ended(WAIT).await;
    assert!(
        rest.iter()
            .all(|f| f["type"] != "session_output" && f["type"] != "session_error"),
        "frames after done: {rest:?}"
    );
    agent.stop().await;
    assert_catpaw_shaped(&hub);
}

/// Version 1 has no way to ask a remote user for approval: a tool that needs it is denied, the
/// call gets exactly one `tool_result` frame, and the turn still ends in catpaw's shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_denies_tools_that_need_approval() {
    let hub = TestHub::start(HubSettings {
        version: 1,
        ..HubSettings::default()
    })
    .await;
    let mut setup = AgentSetup::new(hub.url());
    setup.script = common::shell_script();
    setup.remote.tools = common::tools_named(&["system_info", "shell"]);
    let agent = TestAgent::start(setup);
    let mut conn = registered(&hub, &agent).await;
    let ack = start(
        &mut conn,
        session_start("chat-2", "chat", "alice", Some("run it")),
    )
    .await;
    assert_eq!(ack["ok"], true);
    let turn = v1_turn(&mut conn, "chat-2").await;
    // The model's words before the call, the call, why it was denied, ONE result (catpaw's
    // `[Tool done]` line, failed), the answer.
    assert_eq!(
        stages(&turn),
        vec![
            "thinking",
            "answer",
            "tool_call",
            "thinking",
            "tool_result",
            "answer"
        ],
        "{turn:#?}"
    );
    assert!(
        turn[2]["delta"]
            .as_str()
            .unwrap_or_default()
            .starts_with("[Tool] shell"),
        "{turn:#?}"
    );
    let why = turn[3]["delta"].as_str().unwrap_or_default();
    assert!(why.starts_with("[Tool denied] shell: "), "{turn:#?}");
    assert!(why.contains("protocol v1"), "{why}");
    let result = turn[4]["delta"].as_str().unwrap_or_default();
    assert!(
        result.starts_with("[Tool done] shell (error, "),
        "{turn:#?}"
    );
    assert_eq!(turn[5]["metadata"], json!({"turn_done": true}));
    // The command never ran: no successful tool result for shell.
    assert!(
        !turn.iter().any(|p| p["delta"]
            .as_str()
            .unwrap_or_default()
            .starts_with("[Tool done] shell (ok")),
        "{turn:#?}"
    );
    agent.stop().await;
    assert_catpaw_shaped(&hub);
}

/// catpaw ignores a `session_input` with an empty message (`handleSessionInput`): no
/// `session_error`, no `done`, and the chat goes on answering the next input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_blank_input_is_ignored_and_the_chat_goes_on() {
    let hub = TestHub::start(HubSettings {
        version: 1,
        ..HubSettings::default()
    })
    .await;
    let agent = TestAgent::start(AgentSetup::new(hub.url()));
    let mut conn = registered(&hub, &agent).await;
    let ack = start(
        &mut conn,
        session_start("chat-b", "chat", "alice", Some("how is the host?")),
    )
    .await;
    assert_eq!(ack, json!({"ok": true}));
    check_v1_turn(&v1_turn(&mut conn, "chat-b").await, 1);

    // Empty, whitespace only, and no message at all (Go decodes it as "").
    for payload in [
        json!({"session_id": "chat-b", "message": ""}),
        json!({"session_id": "chat-b", "message": "  \n "}),
        json!({"session_id": "chat-b"}),
    ] {
        conn.send_msg("session_input", payload);
    }
    conn.send_msg(
        "session_input",
        json!({"session_id": "chat-b", "message": "and now?"}),
    );
    // The next session frames are the next turn's: nothing answered the blank inputs.
    check_v1_turn(&v1_turn(&mut conn, "chat-b").await, 2);
    assert_eq!(agent.status().remote_sessions, 1);

    conn.send_msg(
        "session_cancel",
        json!({"session_id": "chat-b", "reason": ""}),
    );
    assert_eq!(
        *payload(&next_session_frame(&mut conn).await),
        final_frame("chat-b")
    );
    let rest = session_frames_until_closed(&mut conn).await;
    assert!(rest.is_empty(), "frames after done: {rest:#?}");
    agent.stop().await;
    assert_catpaw_shaped(&hub);
}

/// A cancel in the middle of a chat turn: catpaw cancels the session's context and its
/// deferred send is the only frame — `{delta: "", stage: "", done: true}`, no `stage: error`
/// for the interrupted turn. The session is gone at once: an input sent right after the
/// cancel is ignored, like catpaw's (no such session any more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_cancel_mid_turn_sends_only_the_final_frame() {
    let hub = TestHub::start(HubSettings {
        version: 1,
        ..HubSettings::default()
    })
    .await;
    let mut setup = AgentSetup::new(hub.url());
    // A turn that streams for about a minute unless cancelled.
    setup.script = json!({"loop": true, "responses": [
        {"text": "slowly ".repeat(600), "chunk_delay_ms": 100}
    ]})
    .to_string();
    let agent = TestAgent::start(setup);
    let mut conn = registered(&hub, &agent).await;
    let ack = start(
        &mut conn,
        session_start("chat-c", "chat", "alice", Some("take your time")),
    )
    .await;
    assert_eq!(ack["ok"], true);
    let first = next_session_frame(&mut conn).await;
    assert_eq!(payload(&first)["stage"], "thinking", "{first}");

    conn.send_msg(
        "session_cancel",
        json!({"session_id": "chat-c", "reason": "user left"}),
    );
    conn.send_msg(
        "session_input",
        json!({"session_id": "chat-c", "message": "still there?"}),
    );
    let last = next_session_frame(&mut conn).await;
    assert_eq!(
        payload(&last),
        &final_frame("chat-c"),
        "the only frame after the cancel"
    );
    agent
        .wait_status("the session is gone", WAIT, |s| s.remote_sessions == 0)
        .await;
    conn.send_msg(
        "session_input",
        json!({"session_id": "chat-c", "message": "hello?"}),
    );
    let rest = session_frames_until_closed(&mut conn).await;
    assert!(rest.is_empty(), "frames after done: {rest:#?}");
    agent.stop().await;
    assert_catpaw_shaped(&hub);
}

/// An inspection ends with its report in the final frame, and nothing follows it: a
/// `session_input` — while it runs or after it ended — is ignored (catpaw gives input only to
/// a chat), and so is a `session_cancel` after the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_nothing_follows_the_final_frame_of_an_inspection() {
    let hub = TestHub::start(HubSettings {
        version: 1,
        ..HubSettings::default()
    })
    .await;
    let agent = TestAgent::start(AgentSetup::new(hub.url()));
    let mut conn = registered(&hub, &agent).await;
    let mut inspect = session_start("insp-1", "inspect", "alice", None);
    inspect["params"]["plugin"] = json!("cpu");
    let ack = start(&mut conn, inspect).await;
    assert_eq!(ack, json!({"ok": true}));
    // While it runs: catpaw gives input only to a chat.
    conn.send_msg(
        "session_input",
        json!({"session_id": "insp-1", "message": "and the disks?"}),
    );
    let mut frames = Vec::new();
    let last = loop {
        let f = next_session_frame(&mut conn).await;
        assert_eq!(f["type"], "session_output", "{f}");
        if payload(&f)["done"] == true {
            break payload(&f).clone();
        }
        frames.push(payload(&f).clone());
    };
    // Thinking, then each tool's call and result (the inspection's own collection first).
    let st = stages(&frames);
    assert_eq!(st.first(), Some(&"thinking"), "{frames:#?}");
    assert!(st.len() >= 3 && st.len() % 2 == 1, "{frames:#?}");
    for pair in st[1..].chunks(2) {
        assert_eq!(pair, ["tool_call", "tool_result"], "{frames:#?}");
    }
    // catpaw's final frame with the report.
    let report = last["report"].as_str().unwrap_or_default().to_owned();
    assert!(report.starts_with("# Inspection: cpu"), "{last}");
    assert_eq!(
        last,
        json!({"session_id": "insp-1", "delta": "", "stage": "", "done": true, "report": report})
    );
    // Straight after the report, before the agent has finished closing the session.
    conn.send_msg(
        "session_input",
        json!({"session_id": "insp-1", "message": "one more thing"}),
    );
    conn.send_msg(
        "session_cancel",
        json!({"session_id": "insp-1", "reason": "late"}),
    );
    agent
        .wait_status("the session is gone", WAIT, |s| s.remote_sessions == 0)
        .await;
    let rest = session_frames_until_closed(&mut conn).await;
    assert!(rest.is_empty(), "frames after done: {rest:#?}");
    agent.stop().await;
    assert_catpaw_shaped(&hub);
}
