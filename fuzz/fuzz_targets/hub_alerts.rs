//! Fuzz target: the hub's path for an agent's frame, from bytes to the store — decode
//! (`LinkFrame::decode`, or the probe of a frame too large to decode), the edge checks of an
//! alert batch (`agents::prepare_alerts`), the commit into a real SQLite store, reading it
//! back (every stored time formatted), and the acknowledgement accounting. Issue 9, finding 1:
//! one alert (`event_time: 300000000000`) once made this path panic while it held the store's
//! lock. Nothing here may panic, and the store must keep working after any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tether_hub::agents::prepare_alerts;
use tether_hub::alert_acks::AlertAcks;
use tether_hub::store::{AlertFilter, SqliteStore, Store};
use tether_proto::link::{LinkFrame, LinkMessage, MAX_LINK_FRAME_BYTES, probe_refused_frame};

/// One store for the whole run (opening one per input would measure SQLite, not us).
static STORE: LazyLock<(tempfile::TempDir, SqliteStore)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("hub.db")).expect("store");
    (dir, store)
});

/// A fixed "now" keeps runs reproducible.
const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let store = &STORE.1;
    let text = String::from_utf8_lossy(data);
    let mut acks = AlertAcks::new();
    if text.len() > MAX_LINK_FRAME_BYTES {
        let (_, _, seqs) = probe_refused_frame(&text);
        let _ = acks.not_stored(seqs);
        return;
    }
    let Ok(frame) = LinkFrame::decode(&text) else {
        let _ = probe_refused_frame(&text);
        return;
    };
    if let LinkMessage::AlertEvents(batch) = frame.message {
        let prepared = prepare_alerts(batch, NOW);
        for e in &prepared.events {
            assert!(e.problem().is_none());
            assert!(e.event_time > 0 && e.event_time <= NOW + 86_400);
        }
        let seqs: Vec<u64> = prepared.events.iter().filter_map(|e| e.seq).collect();
        store
            .insert_alerts("fuzz-agent", "fuzz-host", &prepared.events, NOW * 1000)
            .expect("a prepared batch is always storable");
        acks.settled(prepared.refused_seqs.into_iter().chain(seqs));
        let page = store
            .list_alerts(
                &AlertFilter {
                    limit: 20,
                    ..Default::default()
                },
                NOW * 1000,
            )
            .expect("the store still answers");
        for a in page.alerts {
            // Every stored time formats (the alert and its timeline).
            let v = serde_json::to_value(&a).expect("an alert serializes");
            for t in ["first_at", "started_at", "last_at", "updated_at"] {
                assert!(v[t].as_str().is_some_and(|s| s.ends_with('Z')), "{t}: {v}");
            }
            for e in store
                .alert_events(a.alert_id, None, 5)
                .expect("the timeline answers")
            {
                let v = serde_json::to_value(&e).expect("an event serializes");
                assert!(v["at"].as_str().is_some_and(|s| s.ends_with('Z')), "{v}");
            }
        }
    }
});
