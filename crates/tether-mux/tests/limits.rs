//! Bounds on what clients can make the agent hold (issue 9, finding 11): queued inputs per
//! session, open sessions per credential, how long closed sessions are kept, and the size of
//! a `session.list` reply.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use tether_mux::MuxConfig;
use tether_proto::{Class, SessionId};

/// The defaults these tests rely on (the `[sessions]` defaults of the agent).
const MAX_QUEUED: usize = 64;
const MAX_SESSIONS_PER_CLIENT: usize = 100;
const CLOSED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
const LIST_PAGE: usize = 100;

/// A session holds at most `max_queued_inputs` inputs; past that an input is refused with
/// `overloaded` at once. Queuing an input adds it to the log on its own: the session's row is
/// not rewritten (it used to carry the whole queue, so each enqueue cost the size of the
/// queue). The attach snapshot carries the count and the first few, and stays under the
/// message limit however large the queued texts are; the queue survives a restart.
#[tokio::test]
async fn queued_inputs_are_bounded_and_stored_one_by_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mux = open_mux(dir.path(), &prompt_script(), MuxConfig::default());
    let mut alice = TestClient::connect(&mux, "alice", Class::Human);
    let sid = alice.create(json!({"mode": "chat"})).await;
    alice.ok("attach", json!({"session_id": sid})).await;
    // The turn waits on a prompt (alice is attached and may answer, so it is never denied).
    alice
        .ok("input", json!({"session_id": sid, "text": "start"}))
        .await;
    alice.until(|v| is_event(v, "permission_requested")).await;

    let rows_before = mux.log().row_writes();
    let big = "q".repeat(20 * 1024);
    for i in 0..5000usize {
        let text = if i < MAX_QUEUED {
            format!("{i} {big}")
        } else {
            format!("{i}")
        };
        let r = alice
            .send(
                "input",
                json!({"session_id": sid, "text": text, "queue": true}),
            )
            .await;
        if i < MAX_QUEUED {
            assert_eq!(r["ok"], true, "input {i}: {r}");
            assert_eq!(r["result"]["position"], i + 1, "{r}");
        } else {
            assert_eq!(r["ok"], false, "input {i} was accepted past the bound");
            assert_eq!(r["error"]["reason"], "overloaded", "{r}");
            let message = r["error"]["message"].as_str().expect("message");
            assert!(message.contains("64 inputs queued"), "{message}");
        }
    }
    assert_eq!(
        mux.log().row_writes(),
        rows_before,
        "queuing an input rewrote the session row"
    );

    let snapshot = attach_snapshot(&mux, &sid, "bob").await;
    assert_eq!(snapshot["queued_count"], MAX_QUEUED, "{}", brief(&snapshot));
    let queued = snapshot["queued"].as_array().expect("queued");
    assert!(!queued.is_empty() && queued.len() < MAX_QUEUED);
    for (i, q) in queued.iter().enumerate() {
        let text = q["text"].as_str().expect("text");
        assert!(text.starts_with(&format!("{i} ")), "queued out of order");
    }

    // After a restart the queue is still there, in order: the interrupted turn ends and the
    // first queued input runs.
    mux.shutdown().await;
    mux.log().close();
    let mux = open_mux(dir.path(), &prompt_script(), MuxConfig::default());
    let snapshot = attach_snapshot(&mux, &sid, "bob").await;
    assert_eq!(
        snapshot["queued_count"],
        MAX_QUEUED - 1,
        "{}",
        brief(&snapshot)
    );
    let first = snapshot["queued"][0]["text"].as_str().expect("text");
    assert!(first.starts_with("1 "), "{first:.20}");
    mux.shutdown().await;
}

/// Attaches a fresh client and returns the snapshot, checking the reply's size.
async fn attach_snapshot(mux: &tether_mux::Mux, sid: &str, who: &str) -> Value {
    let mut c = TestClient::connect(mux, who, Class::Human);
    let reply = c.send("attach", json!({"session_id": sid})).await;
    let size = reply.to_string().len();
    assert!(
        size < tether_proto::MAX_MESSAGE_BYTES,
        "the attach reply is {size} bytes, over the message limit"
    );
    assert_eq!(reply["ok"], true, "{}", brief(&reply));
    reply["result"]["snapshot"].clone()
}

fn brief(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(400).collect()
}

/// One credential may hold at most `max_sessions_per_client` open sessions; past that
/// `session.create` is `overloaded`. Another credential is not affected, and closing a
/// session frees its place.
#[tokio::test]
async fn open_sessions_per_credential_are_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mux = open_mux(dir.path(), &prompt_script(), MuxConfig::default());
    let mut alice = TestClient::connect(&mux, "alice", Class::Human);
    let mut alice_again = TestClient::connect(&mux, "alice", Class::Human);
    let mut bob = TestClient::connect(&mux, "bob", Class::Human);
    let mut first = None;
    for _ in 0..MAX_SESSIONS_PER_CLIENT {
        let sid = alice.create(json!({"mode": "chat"})).await;
        first.get_or_insert(sid);
    }
    // The limit is per credential, not per connection.
    let err = alice_again
        .err("session.create", json!({"mode": "chat"}))
        .await;
    assert_eq!(err["reason"], "overloaded", "{err}");
    let message = err["message"].as_str().expect("message");
    assert!(message.contains("100 open sessions"), "{message}");
    assert_eq!(mux.list_sessions().sessions.len(), MAX_SESSIONS_PER_CLIENT);

    bob.create(json!({"mode": "chat"})).await;
    let first = first.expect("a session");
    alice
        .ok("session.close", json!({"session_id": first}))
        .await;
    alice.create(json!({"mode": "chat"})).await;
    mux.shutdown().await;
}

/// A closed session is removed — from memory and from the log — once it has been closed
/// for `closed_retention`, and not before; open sessions stay.
///
/// Paused time: the runtime jumps to the next timer whenever it is idle, and the only timers
/// here are the test's sleeps and the closed session's expiry. Each check is done by an op the
/// session actor must answer, so it cannot run ahead of the actor.
#[tokio::test(start_paused = true)]
async fn closed_sessions_expire_after_the_retention_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mux = open_mux(dir.path(), &prompt_script(), MuxConfig::default());
    let mut alice = TestClient::connect(&mux, "alice", Class::Human);
    alice.patience = Duration::from_secs(365 * 24 * 3600);
    let closed = alice.create(json!({"mode": "chat"})).await;
    let open = alice.create(json!({"mode": "chat"})).await;
    alice
        .ok("session.close", json!({"session_id": closed}))
        .await;

    tokio::time::sleep(CLOSED_RETENTION - Duration::from_secs(3600)).await;
    let snap = alice.ok("attach", json!({"session_id": closed})).await;
    assert_eq!(snap["snapshot"]["state"], "closed");
    assert!(listed(&mux, &closed));
    let sid = SessionId(closed.clone());
    assert!(mux.log().count_events(&sid).expect("count") > 0);

    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    let err = alice.err("attach", json!({"session_id": closed})).await;
    assert_eq!(err["reason"], "unknown_session", "{err}");
    assert!(!listed(&mux, &closed), "an expired session is still listed");
    assert!(listed(&mux, &open), "an open session was removed");
    assert_eq!(mux.log().count_events(&sid).expect("count"), 0);
    let rows = mux.log().load_sessions().expect("rows");
    assert!(rows.iter().all(|r| r.session_id != sid), "its row remains");
    alice.ok("attach", json!({"session_id": open})).await;
    mux.shutdown().await;
}

fn listed(mux: &tether_mux::Mux, sid: &str) -> bool {
    mux.list_sessions()
        .sessions
        .iter()
        .any(|s| s.session_id.as_str() == sid)
}

/// `session.list` is paged: at most `limit` rows (default 100), oldest first, with `next`
/// to pass as `cursor` for the rest; no `next` on the last page. A request without params
/// gets the first page, as before.
#[tokio::test]
async fn session_list_is_paged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mux = open_mux(dir.path(), &prompt_script(), MuxConfig::default());
    let mut alice = TestClient::connect(&mux, "alice", Class::Human);
    let mut bob = TestClient::connect(&mux, "bob", Class::Human);
    let mut created = vec![];
    for _ in 0..5 {
        created.push(alice.create(json!({"mode": "chat"})).await);
    }

    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let params = match &cursor {
            Some(c) => json!({"limit": 2, "cursor": c}),
            None => json!({"limit": 2}),
        };
        let page = alice.ok("session.list", params).await;
        let rows = page["sessions"].as_array().expect("sessions");
        assert!(rows.len() <= 2, "{page}");
        seen.extend(
            rows.iter()
                .map(|r| r["session_id"].as_str().expect("id").to_owned()),
        );
        pages += 1;
        match page.get("next").and_then(Value::as_str) {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    let all = alice.ok("session.list", json!({})).await;
    let ids: Vec<String> = all["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|r| r["session_id"].as_str().expect("id").to_owned())
        .collect();
    assert!(all.get("next").is_none(), "{all}");
    assert_eq!(seen, ids, "pages skip, repeat or reorder sessions");
    let mut sorted = seen.clone();
    sorted.sort();
    created.sort();
    assert_eq!(sorted, created);

    // Past the default page size, a request without params gets the first page and `next`.
    for i in 0..(LIST_PAGE + 20 - 5) {
        let who = if i % 2 == 0 { &mut alice } else { &mut bob };
        who.create(json!({"mode": "chat"})).await;
    }
    let first = alice.ok("session.list", json!({})).await;
    assert_eq!(first["sessions"].as_array().expect("rows").len(), LIST_PAGE);
    let next = first["next"].as_str().expect("next").to_owned();
    let rest = alice
        .ok("session.list", json!({"cursor": next, "limit": 1000}))
        .await;
    assert_eq!(rest["sessions"].as_array().expect("rows").len(), 20);
    assert!(rest.get("next").is_none());

    for (params, field) in [
        (json!({"limit": 0}), "limit"),
        (json!({"limit": 1001}), "limit"),
        (json!({"cursor": "not a cursor"}), "cursor"),
    ] {
        let err = alice.err("session.list", params.clone()).await;
        assert_eq!(err["reason"], "bad_request", "{params}: {err}");
        let message = err["message"].as_str().expect("message");
        assert!(message.contains(field), "{params}: {message}");
    }
    mux.shutdown().await;
}
