//! The event log on a full filesystem (issue 9, finding 6), on a real full filesystem: a
//! small tmpfs filled up to its last page.
//!
//! Mounting needs a mount namespace of our own, so the test re-runs itself under
//! `unshare --mount` (with `--user --map-root-user` when not root): the tmpfs exists only
//! inside that namespace and vanishes with it. The inner run prints a marker, so a filter
//! that matched nothing cannot pass for a success.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tether_mux::MuxConfig;
use tether_proto::{Class, SessionId};

const INNER: &str = "TETHER_FULL_DISK_INNER";
const DONE: &str = "full-disk test: inner run finished";
const TEST: &str = "a_full_disk_stops_the_session_and_repairs_it_when_space_returns";

/// While the log cannot commit, a session says so (`log_unavailable`), stops its turn and
/// refuses new work with `internal`; `session.create` is refused too; `session.list` and an
/// attach snapshot agree (both show what was committed). When space returns, the session is
/// repaired — the stopped turn ends with `stop: error`, the state returns to idle — then
/// `log_restored` is sent and input is accepted again. The log holds every event, without a
/// hole, including the repair.
#[test]
fn a_full_disk_stops_the_session_and_repairs_it_when_space_returns() {
    if std::env::var_os(INNER).is_some() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(inner());
        println!("{DONE}");
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new("unshare");
    if !is_root() {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args(["--mount", "--propagation", "private"])
        .arg(exe)
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, "1");
    let out = cmd
        .output()
        .expect("cannot run `unshare` (util-linux), needed for a tmpfs of the test's own");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(DONE),
        "the inner run failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Writes until the filesystem has no byte left.
fn fill(path: &Path) -> std::fs::File {
    let mut f = std::fs::File::create(path).expect("filler");
    let mut chunk = 64 * 1024;
    while chunk > 0 {
        match f.write(&vec![0u8; chunk]) {
            Ok(n) if n == chunk => {}
            Ok(_) | Err(_) => chunk /= 2,
        }
    }
    let _ = f.flush();
    f
}

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().expect("seq")
}

async fn inner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(dir.path())
        .status()
        .expect("mount");
    assert!(mount.success(), "cannot mount a tmpfs");

    // A turn long enough that its events cannot fit in what is left of the log's WAL (a
    // commit writes at least a page), and short enough that, once space returns, one fits in
    // the filesystem before the WAL is checkpointed.
    let mux = open_mux(dir.path(), &words_script(400, 1), MuxConfig::default());
    let mut alice = TestClient::connect(&mux, "alice", Class::Human);
    let mut bob = TestClient::connect(&mux, "bob", Class::Human);
    let sid = alice.create(json!({"mode": "chat"})).await;
    alice.ok("attach", json!({"session_id": sid})).await;
    // The actor handles an op only once the previous one is committed: when this (eventless)
    // re-attach is answered, `client_attached` is in the log.
    alice.ok("attach", json!({"session_id": sid})).await;

    let filler_path = dir.path().join("filler");
    let filler = fill(&filler_path);
    let started = alice
        .ok("input", json!({"session_id": sid, "text": "go"}))
        .await;
    let turn_id = started["turn_id"].as_str().expect("turn_id").to_owned();
    let before = alice.until(|v| is_control(v, "log_unavailable")).await;
    let unavailable = before.last().expect("frame");
    assert_eq!(unavailable["session_id"], sid.as_str());
    let message = unavailable["message"].as_str().expect("message");
    assert!(message.contains("event log"), "{message}");
    assert!(
        !before.iter().any(|v| is_event(v, "turn_ended")),
        "the turn ended before the log failed: the disk was not full enough"
    );

    // No new work while the log cannot write.
    let err = alice
        .err(
            "input",
            json!({"session_id": sid, "text": "more", "queue": true}),
        )
        .await;
    assert_eq!(err["reason"], "internal", "{err}");
    assert!(
        err["message"]
            .as_str()
            .expect("message")
            .contains("event log cannot write"),
        "{err}"
    );
    let err = bob.err("session.create", json!({"mode": "chat"})).await;
    assert_eq!(err["reason"], "internal", "{err}");

    // What is listed is what an attach shows: the committed state.
    let attached = bob.ok("attach", json!({"session_id": sid})).await;
    let snapshot = &attached["snapshot"];
    let listed = mux
        .list_sessions()
        .sessions
        .into_iter()
        .find(|s| s.session_id.as_str() == sid)
        .expect("listed");
    assert_eq!(snapshot["state"], listed.state.as_str(), "{snapshot}");
    assert_eq!(snapshot["last_seq"], listed.last_seq, "{snapshot}");
    let note = bob.next().await;
    assert!(is_control(&note, "log_unavailable"), "{note}");

    // Space returns.
    drop(filler);
    std::fs::remove_file(&filler_path).expect("remove filler");
    for c in [&mut alice, &mut bob] {
        c.patience = Duration::from_secs(60);
    }
    let repaired = alice.until(|v| is_control(v, "log_restored")).await;
    let ended = repaired
        .iter()
        .find(|v| is_event(v, "turn_ended"))
        .unwrap_or_else(|| panic!("no turn_ended before log_restored: {repaired:?}"));
    assert_eq!(ended["turn_id"], turn_id.as_str());
    assert_eq!(ended["stop"], "error");
    assert!(
        ended["error"]
            .as_str()
            .expect("error")
            .contains("event log"),
        "{ended}"
    );
    let idle = repaired
        .iter()
        .rposition(|v| is_event(v, "session_state"))
        .expect("session_state");
    assert_eq!(repaired[idle]["state"], "idle");
    let seqs: Vec<u64> = before
        .iter()
        .chain(repaired.iter())
        .filter(|v| v.get("seq").is_some())
        .map(seq)
        .collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "alice saw a hole: {seqs:?}");
    }
    let bob_saw = bob.until(|v| is_control(v, "log_restored")).await;
    assert!(bob_saw.iter().any(|v| is_event(v, "turn_ended")));

    // Input is accepted again and a turn runs to the end.
    alice
        .ok("input", json!({"session_id": sid, "text": "again"}))
        .await;
    let after = alice.until(|v| is_event(v, "turn_ended")).await;
    assert_eq!(after.last().expect("end")["stop"], "completed");

    // The log holds the whole history, without a hole.
    let last = seq(after.last().expect("end"));
    let stored = mux
        .log()
        .read_range(&SessionId(sid.clone()), 1, last, 100_000)
        .await
        .expect("read");
    let stored_seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(stored_seqs, (1..=last).collect::<Vec<_>>());
    assert!(
        stored.iter().any(
            |e| std::str::from_utf8(&e.frame).is_ok_and(|f| f.contains("could not be written"))
        ),
        "the repair is not in the log"
    );
    mux.shutdown().await;
    mux.log().close();
    // Unmounted so that the directory itself can be removed.
    let _ = Command::new("umount").arg(dir.path()).status();
    drop(dir);
}
