//! Retention of a session's events in the log: clients are offered exactly the last
//! `retention_events`, the log holds at most `retention + prune_chunk(retention)` of them, and
//! the excess is deleted in chunks (one delete per chunk of events, not one per flush: each
//! delete rewrites and rebalances the left edge of the events B-tree).

mod common;

use common::*;
use serde_json::{Value, json};
use tether_mux::{MuxConfig, prune_chunk};
use tether_proto::{Class, NoticeLevel, SessionId};

const RETENTION: u64 = 100;
/// Notices published, one per flush (each op is handled and flushed on its own).
const NOTICES: u64 = 1000;

#[tokio::test]
async fn the_log_prunes_in_chunks_within_the_bound_and_offers_the_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || MuxConfig {
        retention_events: RETENTION,
        ..MuxConfig::default()
    };
    let chunk = prune_chunk(RETENTION);
    assert!(chunk > 1, "the test needs a chunk of several events");
    let mux = open_mux(dir.path(), &prompt_script(), config());
    let mut alice = TestClient::connect(&mux, "alice", Class::Human);
    let sid = alice.create(json!({"mode": "chat"})).await;
    let id = SessionId(sid.clone());
    for i in 0..NOTICES {
        mux.session_notice(&id, NoticeLevel::Info, format!("notice {i}"))
            .await
            .expect("notice");
        let held = mux.log().count_events(&id).expect("count");
        assert!(
            held <= RETENTION + chunk,
            "after notice {i} the log holds {held} events, over {RETENTION} + {chunk}"
        );
    }

    let snapshot = check_offered(&mux, &sid, "bob").await;
    let last = snapshot["last_seq"].as_u64().expect("last_seq");
    assert!(last > NOTICES, "{snapshot}");
    let held = mux.log().count_events(&id).expect("count");
    assert!(
        (RETENTION..=RETENTION + chunk).contains(&held),
        "the log holds {held} events"
    );
    // After a prune the log holds `RETENTION`; the next one comes more than a chunk later.
    let prunes = mux.log().prunes();
    assert!(prunes >= 1, "never pruned");
    let most = (last - RETENTION) / (chunk + 1) + 1;
    assert!(
        prunes <= most,
        "{prunes} deletes for {last} events: more than one per chunk of {chunk} (at most {most})"
    );

    // After a restart the session still offers exactly the retention, whatever the log holds.
    mux.shutdown().await;
    mux.log().close();
    let mux = open_mux(dir.path(), &prompt_script(), config());
    let snapshot = check_offered(&mux, &sid, "carol").await;
    assert!(snapshot["last_seq"].as_u64().expect("last_seq") >= last);
    mux.shutdown().await;
}

/// Attaches from the start: the snapshot offers the last `RETENTION` events, and the replay
/// is a `stream_gap` up to them, then exactly those events, then `replay_complete`.
async fn check_offered(mux: &tether_mux::Mux, sid: &str, who: &str) -> Value {
    let mut c = TestClient::connect(mux, who, Class::Human);
    let snap = c
        .ok("attach", json!({"session_id": sid, "after_seq": 0}))
        .await;
    let snapshot = snap["snapshot"].clone();
    let first = snapshot["first_seq"].as_u64().expect("first_seq");
    let last = snapshot["last_seq"].as_u64().expect("last_seq");
    assert_eq!(last - first + 1, RETENTION, "{snapshot}");
    let frames = c.until(|v| is_control(v, "replay_complete")).await;
    let gap = &frames[0];
    assert!(is_control(gap, "stream_gap"), "{gap}");
    assert_eq!(gap["from_seq"], 1, "{gap}");
    // One gap up to the retained events, even though the log may hold older ones; this
    // client's own `client_attached` may have pruned one more before the replay read the log.
    let to = gap["to_seq"].as_u64().expect("to_seq");
    assert!(to == first - 1 || to == first, "{gap} vs first_seq {first}");
    let rest = &frames[1..frames.len() - 1];
    assert!(
        rest.iter().all(|v| v["seq"].is_u64()),
        "only events after the gap"
    );
    let seqs: Vec<u64> = rest.iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert_eq!(seqs, (to + 1..=last).collect::<Vec<_>>());
    assert_eq!(frames.last().expect("last")["last_seq"], last);
    snapshot
}
