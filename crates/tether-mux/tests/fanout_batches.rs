//! A flush hands its whole group of events to each attached client in one queue operation,
//! not one per event: with N clients and a fast turn, a queue lock per frame per client was
//! the largest cost of fan-out on the real path (`tether-bench fanout --open`).

mod common;

use common::{TestClient, is_event, open_mux, words_script};
use serde_json::json;
use tether_mux::MuxConfig;
use tether_proto::Class;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_reaches_each_client_in_one_queue_operation() {
    let words = 2000;
    let dir = tempfile::tempdir().expect("tempdir");
    // Room for the whole turn: the watcher below does not read until it has ended.
    let config = MuxConfig {
        client_queue_frames: 8 * words,
        ..MuxConfig::default()
    };
    let mux = open_mux(dir.path(), &words_script(words, 0), config);
    let mut alice = TestClient::connect(&mux, "alice", Class::Human);
    let mut watcher = TestClient::connect(&mux, "bob", Class::Human);
    let sid = alice.create(json!({"mode": "chat"})).await;
    alice.ok("attach", json!({"session_id": sid})).await;
    watcher.ok("attach", json!({"session_id": sid})).await;
    let before = watcher.conn.outbound().producer_locks();
    alice
        .ok("input", json!({"session_id": sid, "text": "go"}))
        .await;
    alice.until(|v| is_event(v, "turn_ended")).await;
    let locks = watcher.conn.outbound().producer_locks() - before;

    // Everything arrived, in order.
    let frames = watcher.until(|v| is_event(v, "turn_ended")).await;
    let deltas = frames.iter().filter(|v| is_event(v, "text_delta")).count();
    assert_eq!(deltas, words);
    let seqs: Vec<u64> = frames.iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "seqs not contiguous"
    );
    // Groups are up to 256 events; one lock per event would be over 2000.
    assert!(
        locks * 8 <= words as u64,
        "{locks} queue locks for {} events: one per event, not one per group",
        frames.len()
    );
    drop((alice, watcher));
    mux.shutdown().await;
}
