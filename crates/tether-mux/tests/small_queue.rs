//! A client that keeps reading is not evicted just because `client_queue_frames` is small.
//!
//! The session actor commits turn events to the log in groups and pushes each group onto every
//! client's queue at once. A group larger than the queue would overflow it in one go, evicting
//! every client however fast it reads. In process (no sockets) and on one runtime thread, so
//! that "keeps reading" means exactly that: each client's queue is drained by its own task the
//! moment frames arrive.

use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_engine::Engine;
use tether_engine::log::EventLog;
use tether_engine::scripted::ScriptedProvider;
use tether_host::tools::ToolRegistry;
use tether_mux::outbound::{Next, OutboundReceiver};
use tether_mux::{Identity, Mux, MuxConfig};
use tether_proto::Class;

/// Reads every frame the moment it is queued, until the turn has ended (or the client was
/// evicted).
async fn drain(mut rx: OutboundReceiver, frames: Arc<Mutex<Vec<Bytes>>>) {
    loop {
        match rx.next().await {
            Next::Frame(f) => {
                let end = is_event(&f, "turn_ended");
                frames.lock().expect("frames").push(f);
                if end {
                    return;
                }
            }
            Next::Evicted(f) => {
                frames.lock().expect("frames").push(f);
                return;
            }
            Next::Closed => return,
        }
    }
}

/// A byte search, not a parse: the reader must stay cheaper than the producer.
fn is_event(frame: &[u8], name: &str) -> bool {
    let needle = format!("\"event\":\"{name}\"");
    frame.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Parses a copy: the lock is held only to clone, so the drain task never waits on it.
fn parse(frames: &Arc<Mutex<Vec<Bytes>>>) -> Vec<Value> {
    let copy = frames.lock().expect("frames").clone();
    copy.iter()
        .map(|f| serde_json::from_slice(f).expect("json"))
        .collect()
}

/// On one runtime thread, "keeps reading" is exact: a reader woken by a push runs before the
/// session actor's next flush (which first waits for the log's commit). With worker threads,
/// a reader descheduled by the OS for a few ms on a busy machine really is a slow reader.
#[tokio::test]
async fn readers_keep_up_with_a_fast_turn_on_a_small_queue() {
    let words = 400;
    let text: String = (0..words).map(|i| format!("w{i} ")).collect();
    let script = json!({"responses": [{"text": text}], "loop": true}).to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(&dir.path().join("events.db")).expect("log");
    let provider = ScriptedProvider::from_json(&script, "fast").expect("script");
    let engine = Engine::new(Some(Arc::new(provider)), ToolRegistry::new());
    let config = MuxConfig {
        client_queue_frames: 64,
        ..MuxConfig::default()
    };
    let mux = Mux::open(config, engine, log).expect("mux");

    let mut clients = vec![];
    for name in ["alice", "bob", "carol"] {
        let (conn, rx) = mux.connect(Identity {
            principal: name.into(),
            class: Class::Human,
            name: name.into(),
        });
        let frames = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(drain(rx, frames.clone()));
        clients.push((conn, frames, task));
    }
    let create = json!({"id": 1, "op": "session.create", "mode": "chat"}).to_string();
    clients[0].0.handle_text(&create).await;
    let sid = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(r) = parse(&clients[0].1).iter().find(|v| v["re"] == 1) {
                return r["result"]["session_id"].as_str().expect("sid").to_owned();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("created");
    for (conn, _, _) in &clients {
        let attach = json!({"id": 2, "op": "attach", "session_id": sid}).to_string();
        conn.handle_text(&attach).await;
    }
    let input = json!({"id": 3, "op": "input", "session_id": sid, "text": "go"}).to_string();
    clients[0].0.handle_text(&input).await;

    // Everyone reads the whole turn; nobody is evicted.
    for (_, frames, task) in &mut clients {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the turn ends")
            .expect("the reader");
        let values = parse(frames);
        let evicted = values.iter().find(|v| v["event"] == "evicted");
        assert!(
            evicted.is_none(),
            "a client that keeps reading was evicted: {evicted:?}"
        );
        let deltas = values.iter().filter(|v| v["event"] == "text_delta").count();
        assert_eq!(deltas, words);
    }
    drop(clients);
    mux.shutdown().await;
}
