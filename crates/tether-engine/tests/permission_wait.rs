//! A tool call's `duration_ms` is the tool's own run time; the wait for a human's answer is
//! reported apart (`waited_ms`), and the audit log names who approved a call — also a call
//! approved by an earlier "always allow" (`scope: session`) answer.
//!
//! Paused tokio time: the answer comes after 30 s and the tool runs for 2 s of virtual time,
//! so the figures are exact whatever the machine's speed.

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_engine::audit::AuditLog;
use tether_engine::scripted::ScriptedProvider;
use tether_engine::{
    AnswerRouter, Conversation, EventSink, PermissionAnswer, PermissionAsk, TurnExtras, TurnRun,
};
use tether_host::tools::{Tool, ToolContext, ToolOutput, ToolRegistry, ToolSpec};
use tether_proto::{
    Class, ClientId, ClientInfo, Decision, EventBody, ResolveCause, Scope, SessionId, StopReason,
    TurnId,
};
use tokio_util::sync::CancellationToken;

/// How long the tool itself runs.
const RUN: Duration = Duration::from_secs(2);
/// How long the human takes to answer.
const THINK: Duration = Duration::from_secs(30);

/// A tool that needs approval and takes [`RUN`] to finish.
struct Restart;

impl Tool for Restart {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "restart".into(),
            description: "Restarts a service.".into(),
            parameters: json!({"type": "object", "properties": {}}),
        }
    }
    fn needs_permission(&self, _args: &Value) -> bool {
        true
    }
    fn read_only(&self) -> bool {
        false
    }
    fn call<'a>(&'a self, _args: Value, _ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async {
            tokio::time::sleep(RUN).await;
            ToolOutput::ok("restarted")
        })
    }
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<EventBody>>,
}

impl EventSink for Recorder {
    fn emit(&self, body: EventBody) -> BoxFuture<'_, ()> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(body);
        Box::pin(async {})
    }
}

fn alice() -> ClientInfo {
    ClientInfo {
        client_id: ClientId("alice/4".into()),
        class: Class::Human,
        name: "alice".into(),
    }
}

/// Alice thinks for [`THINK`], then allows with `scope`.
struct SlowHuman {
    scope: Scope,
    asks: Mutex<Vec<PermissionAsk>>,
}

impl AnswerRouter for SlowHuman {
    fn ask(&self, ask: PermissionAsk) -> BoxFuture<'_, PermissionAnswer> {
        self.asks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ask);
        Box::pin(async move {
            tokio::time::sleep(THINK).await;
            PermissionAnswer {
                decision: Decision::Allow,
                scope: self.scope,
                by: Some(alice()),
                cause: ResolveCause::Answered,
                via: None,
            }
        })
    }
}

/// Runs one turn in which the model calls `restart` twice; returns the `tool_result` events
/// (as JSON, as clients read them) and the audit lines.
async fn two_restarts(scope: Scope) -> (Vec<Value>, Vec<Value>, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = Arc::new(AuditLog::open(&dir.path().join("audit.jsonl")).expect("audit log"));
    let mut tools = ToolRegistry::new();
    tools.add(Arc::new(Restart));
    let provider = ScriptedProvider::from_json(
        r#"{"responses":[
            {"tool_calls":[{"tool":"restart"},{"tool":"restart"}]},
            {"text":"done"}
        ]}"#,
        "permission wait test",
    )
    .expect("script");
    let sink = Recorder::default();
    let router = SlowHuman {
        scope,
        asks: Mutex::new(Vec::new()),
    };
    let mut conversation = Conversation::with_system_prompt("test".into());
    let outcome = tether_engine::run_turn_with(
        &mut conversation,
        TurnRun {
            session_id: SessionId::from("s-wait"),
            turn_id: TurnId::from("t-wait"),
            text: "restart it".into(),
            provider: Arc::new(provider),
            tools: &tools,
            max_rounds: 3,
            sink: &sink,
            router: &router,
            cancel: &CancellationToken::new(),
        },
        &TurnExtras {
            originator: Some(alice()),
            audit: Some(audit.clone()),
            remote: false,
        },
    )
    .await;
    assert_eq!(outcome.stop, StopReason::Completed, "{outcome:?}");
    let results = sink
        .events
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|e| matches!(e, EventBody::ToolResult { .. }))
        .map(|e| serde_json::to_value(e).expect("json"))
        .collect();
    let lines = std::fs::read_to_string(audit.path())
        .expect("read audit")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let asks = router.asks.lock().unwrap_or_else(|e| e.into_inner()).len();
    (results, lines, asks)
}

fn ms(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Within a few ms of `want` (the bookkeeping around the call takes no virtual time, but
/// the assertion need not depend on that).
fn about(got: u64, want: Duration) -> bool {
    let want = want.as_millis() as u64;
    (want..want + 50).contains(&got)
}

#[tokio::test(start_paused = true)]
async fn duration_excludes_the_wait_for_approval_and_grants_name_the_granter() {
    let (results, audit, asks) = two_restarts(Scope::Session).await;
    assert_eq!(asks, 1, "the second call rides on the session grant");
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(audit.len(), 2, "{audit:?}");

    // The asked call: 2 s of work after a 30 s wait, reported apart.
    let first = &results[0];
    assert_eq!(first["ok"], true, "{first}");
    assert!(about(ms(first, "duration_ms"), RUN), "{first}");
    assert!(about(ms(first, "waited_ms"), THINK), "{first}");
    // The call approved by the grant waited for nobody.
    let second = &results[1];
    assert_eq!(second["ok"], true, "{second}");
    assert!(about(ms(second, "duration_ms"), RUN), "{second}");
    assert!(second.get("waited_ms").is_none(), "{second}");

    // The audit log: the same figures, and who approved each call.
    let a = &audit[0];
    assert_eq!(a["decision"], "allowed", "{a}");
    assert_eq!(a["approved_by"]["name"], "alice", "{a}");
    assert_eq!(a["approved_by"]["client_id"], "alice/4", "{a}");
    assert_eq!(a["approved_by"]["class"], "human", "{a}");
    assert_eq!(a["scope"], "session", "{a}");
    assert!(about(ms(a, "duration_ms"), RUN), "{a}");
    assert!(about(ms(a, "waited_ms"), THINK), "{a}");
    let b = &audit[1];
    assert_eq!(b["decision"], "allowed_for_session", "{b}");
    assert_eq!(
        b["approved_by"], a["approved_by"],
        "the grant names its granter: {b}"
    );
    assert_eq!(b["scope"], "session", "{b}");
    assert_eq!(
        b["grant_call_id"], a["call_id"],
        "the grant names the answer that made it: {b}"
    );
    assert!(about(ms(b, "duration_ms"), RUN), "{b}");
    assert!(b.get("waited_ms").is_none(), "{b}");
}

#[tokio::test(start_paused = true)]
async fn a_once_answer_is_asked_again_and_each_wait_is_reported() {
    let (results, audit, asks) = two_restarts(Scope::Once).await;
    assert_eq!(asks, 2);
    for (r, a) in results.iter().zip(&audit) {
        assert!(about(ms(r, "duration_ms"), RUN), "{r}");
        assert!(about(ms(r, "waited_ms"), THINK), "{r}");
        assert_eq!(a["decision"], "allowed", "{a}");
        assert_eq!(a["scope"], "once", "{a}");
        assert_eq!(a["approved_by"]["name"], "alice", "{a}");
        assert!(a.get("grant_call_id").is_none(), "{a}");
    }
}

/// Alice thinks for [`THINK`], then denies.
struct SlowDenier;

impl AnswerRouter for SlowDenier {
    fn ask(&self, _ask: PermissionAsk) -> BoxFuture<'_, PermissionAnswer> {
        Box::pin(async {
            tokio::time::sleep(THINK).await;
            PermissionAnswer {
                decision: Decision::Deny,
                scope: Scope::Once,
                by: Some(alice()),
                cause: ResolveCause::Answered,
                via: None,
            }
        })
    }
}

/// A denied call reports the wait, and no run time: the tool never ran.
#[tokio::test(start_paused = true)]
async fn a_denied_call_reports_the_wait_and_no_run_time() {
    let mut tools = ToolRegistry::new();
    tools.add(Arc::new(Restart));
    let provider = ScriptedProvider::from_json(
        r#"{"responses":[{"tool_calls":[{"tool":"restart"}]},{"text":"ok"}]}"#,
        "deny test",
    )
    .expect("script");
    let sink = Recorder::default();
    let mut conversation = Conversation::with_system_prompt("test".into());
    tether_engine::run_turn(
        &mut conversation,
        TurnRun {
            session_id: SessionId::from("s-deny"),
            turn_id: TurnId::from("t-deny"),
            text: "restart it".into(),
            provider: Arc::new(provider),
            tools: &tools,
            max_rounds: 3,
            sink: &sink,
            router: &SlowDenier,
            cancel: &CancellationToken::new(),
        },
    )
    .await;
    let events = sink.events.lock().unwrap_or_else(|e| e.into_inner());
    let r = events
        .iter()
        .find(|e| matches!(e, EventBody::ToolResult { .. }))
        .map(|e| serde_json::to_value(e).expect("json"))
        .expect("a tool_result");
    assert_eq!(r["ok"], false, "{r}");
    assert!(ms(&r, "duration_ms") < 50, "the tool never ran: {r}");
    assert!(about(ms(&r, "waited_ms"), THINK), "{r}");
}
