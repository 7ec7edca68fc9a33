//! Alert delivery through the spool (PROTOCOL.md §2): under version 2 at least once on the
//! wire and exactly once in the hub's store (unique on `(agent_id, seq)`, `alert_ack` after
//! storing), across forced disconnects at random points; under version 1 at most once; and
//! the spool's overflow count in the status and the v2 heartbeat.

mod common;

use common::hub::{HubSettings, TestHub, count_by_key};
use common::proxy::FaultProxy;
use common::{AgentSetup, TestAgent, WAIT, alert_key, fine_clock};
use std::collections::BTreeSet;
use std::time::Duration;
use tether_link::backoff::SeededRng;

const ALERTS: usize = 1000;
const CUTS: usize = 20;

/// Brings the hub up behind the proxy and cuts the link `CUTS` times at random points while
/// the alerts flow: half of the cuts at a random moment after the hub acked the register,
/// half at a random byte offset of the agent's stream (usually inside a frame). Returns how
/// many cuts landed while the hub's store held some but not all alerts.
async fn deliver_through_cuts(hub: &TestHub, proxy: &FaultProxy, seed: u64) -> usize {
    let mut rng = SeededRng::new(seed);
    let mut mid_delivery = 0;
    for i in 0..CUTS {
        let index = hub.with(|r| r.conns.len());
        let by_bytes = rng.next_u64().is_multiple_of(2);
        if by_bytes {
            // Past the upgrade request and the register (~700 bytes), within the first few
            // alert frames (~20 KiB each).
            proxy.cut_next_after(1_000 + rng.next_u64() % 79_000);
        }
        if i == 0 {
            proxy.set_down(false);
        }
        hub.wait(&format!("connection {index} (cut {i})"), WAIT, |r| {
            (r.conns.len() > index).then_some(())
        })
        .await;
        let delay = Duration::from_millis(rng.next_u64() % 500);
        if by_bytes {
            // The armed cut ends it; if the agent has nothing left to send, cut it anyway.
            let ended = tokio::time::timeout(
                Duration::from_secs(2),
                hub.wait("the armed cut", WAIT, |r| {
                    r.conns[index].ended_at.map(|_| ())
                }),
            )
            .await;
            if ended.is_err() {
                proxy.disarm();
                proxy.cut_all();
            }
        } else {
            hub.wait("registered", WAIT, |r| {
                let c = &r.conns[index];
                (c.acked_at.is_some() || c.ended_at.is_some()).then_some(())
            })
            .await;
            tokio::time::sleep(delay).await;
            proxy.cut_all();
        }
        let stored = hub.with(|r| r.alerts.len());
        if stored > 0 && stored < ALERTS {
            mid_delivery += 1;
        }
        hub.wait(&format!("connection {index} ended"), WAIT, |r| {
            r.conns[index].ended_at.map(|_| ())
        })
        .await;
        proxy.disarm();
    }
    mid_delivery
}

/// A hub behind a fault proxy that is down, and an agent (`setup` for the proxy's URL) that
/// has already failed to reach it, within `guard`.
async fn agent_while_the_hub_is_down(
    hub: HubSettings,
    setup: impl FnOnce(String) -> AgentSetup,
    guard: Duration,
) -> (TestHub, FaultProxy, TestAgent) {
    let hub = TestHub::start(hub).await;
    let proxy = FaultProxy::start(hub.addr).await;
    proxy.set_down(true);
    let agent = TestAgent::start(setup(proxy.url()));
    agent
        .wait_status("failing to reach the hub", guard, |s| {
            s.state == "backing_off" && s.connects >= 1
        })
        .await;
    (hub, proxy, agent)
}

/// 1 000 alerts sent while the hub is down arrive after it comes up, each exactly once in the
/// hub's store, across 20 forced disconnects at random points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_every_alert_is_stored_exactly_once_across_disconnects() {
    let settings = HubSettings {
        version: 2,
        // ~40 ms per frame of 100: a full pass takes ~0.4 s, so cuts land mid-delivery.
        alert_delay: Duration::from_millis(40),
        recv_buffer: Some(16 * 1024),
        ..HubSettings::default()
    };
    let (hub, proxy, agent) = agent_while_the_hub_is_down(settings, AgentSetup::new, WAIT).await;
    agent.send_alerts(0, ALERTS, 64).await;
    assert_eq!(agent.spool.len(), ALERTS as u64);
    assert_eq!(hub.with(|r| r.alerts_received), 0, "the hub was down");

    let seed = 0x5eed_0001;
    let mid = deliver_through_cuts(&hub, &proxy, seed).await;
    assert!(
        mid >= 1,
        "no cut landed in the middle of the delivery (seed {seed:#x})"
    );

    // After the faults, everything arrives and the spool empties (every event acked).
    hub.wait("all alerts stored", Duration::from_secs(120), |r| {
        (r.alerts.len() >= ALERTS).then_some(())
    })
    .await;
    agent
        .wait_status("spool drained", Duration::from_secs(60), |s| {
            s.spool_pending == 0
        })
        .await;
    let (stored, received, conns) =
        hub.with(|r| (r.alerts.clone(), r.alerts_received, r.conns.len()));
    agent.stop().await;

    assert_eq!(stored.len(), ALERTS, "count");
    let by_key = count_by_key(&stored);
    let dups: Vec<_> = by_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "stored more than once: {dups:?}");
    let keys: BTreeSet<String> = by_key.keys().cloned().collect();
    let want: BTreeSet<String> = (0..ALERTS).map(alert_key).collect();
    assert_eq!(keys, want, "every alert present");
    let seqs: BTreeSet<u64> = stored.iter().filter_map(|a| a.seq).collect();
    assert_eq!(seqs, (1..=ALERTS as u64).collect(), "every seq present");
    for a in &stored {
        // The seq is the spool's, assigned once: a redelivery carries the same seq.
        assert_eq!(a.alert_key, alert_key(a.seq.expect("seq") as usize - 1));
        assert_eq!(a.agent_id, agent_id_of(&hub));
    }
    println!(
        "v2: {ALERTS} alerts stored exactly once; {received} events received \
         ({} redelivered) over {conns} connections; {mid} of {CUTS} cuts mid-delivery",
        received - ALERTS as u64
    );
}

fn agent_id_of(hub: &TestHub) -> String {
    hub.with(|r| {
        r.attempts[0]
            .headers
            .get("x-agent-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    })
}

/// Version 1 (catpaw's protocol) has no acknowledgement: an alert is done once written to the
/// socket, so a cut can lose what was in flight — but nothing is ever delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_alerts_are_delivered_at_most_once_across_disconnects() {
    let settings = HubSettings {
        version: 1,
        alert_delay: Duration::from_millis(40),
        recv_buffer: Some(16 * 1024),
        ..HubSettings::default()
    };
    let (hub, proxy, agent) = agent_while_the_hub_is_down(settings, AgentSetup::new, WAIT).await;
    agent.send_alerts(0, ALERTS, 64).await;
    let mid = deliver_through_cuts(&hub, &proxy, 0x5eed_0002).await;

    // Once the spool is empty nothing more is coming.
    agent
        .wait_status("spool drained", Duration::from_secs(60), |s| {
            s.spool_pending == 0
        })
        .await;
    // Let the last connection settle (a frame may still be on its way to the store).
    let last = hub.with(|r| r.conns.len() - 1);
    agent
        .wait_status("registered", WAIT, |s| s.state == "registered")
        .await;
    let stored_before = hub.with(|r| r.alerts.len());
    agent.stop().await;
    hub.wait("the last connection ended", WAIT, |r| {
        r.conns[last].ended_at.map(|_| ())
    })
    .await;
    let stored = hub.with(|r| r.alerts.clone());
    assert!(stored.len() >= stored_before);

    let by_key = count_by_key(&stored);
    let dups: Vec<_> = by_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "v1 delivered some alerts twice: {dups:?}");
    assert!(stored.len() <= ALERTS);
    assert!(
        stored
            .iter()
            .all(|a| a.seq.is_none() && a.event.get("seq").is_none()),
        "version-1 hubs never see seq"
    );
    let lost: Vec<usize> = (0..ALERTS)
        .filter(|i| !by_key.contains_key(&alert_key(*i)))
        .collect();
    println!(
        "v1: {} of {ALERTS} alerts stored, none twice; {} lost in flight across {CUTS} cuts \
         ({mid} cuts while the store was incomplete)",
        stored.len(),
        lost.len()
    );
}

/// A small spool overflows while the hub is down: the oldest events are dropped and counted
/// in `LinkStatus.dropped_alerts` and, under version 2, in the heartbeat's `dropped_alerts`
/// (a version-1 heartbeat carries catpaw's fields only). The survivors keep their seqs.
#[tokio::test(start_paused = true)]
async fn spool_overflow_is_counted_in_status_and_heartbeat() {
    let _clock = fine_clock();
    let guard = Duration::from_secs(600);
    for version in [2u32, 1] {
        let settings = HubSettings {
            version,
            ..HubSettings::default()
        };
        let small_spool = |url: String| {
            let mut setup = AgentSetup::new(url);
            setup.spool_max = 10;
            setup
        };
        let (hub, proxy, agent) = agent_while_the_hub_is_down(settings, small_spool, guard).await;
        agent.send_alerts(0, 25, 32).await;
        let s = agent
            .wait_status("overflow counted", guard, |s| s.dropped_alerts == 15)
            .await;
        assert_eq!(s.spool_pending, 10);
        assert_eq!(agent.spool.dropped(), 15);

        proxy.set_down(false);
        hub.wait("the survivors stored", guard, |r| {
            (r.alerts.len() >= 10).then_some(())
        })
        .await;
        hub.wait("a heartbeat", guard, |r| {
            (!r.heartbeats.is_empty()).then_some(())
        })
        .await;
        let (alerts, hb) = hub.with(|r| (r.alerts.clone(), r.heartbeats[0].clone()));
        let keys: Vec<String> = alerts.iter().map(|a| a.alert_key.clone()).collect();
        assert_eq!(
            keys,
            (15..25).map(alert_key).collect::<Vec<_>>(),
            "the oldest were dropped"
        );
        assert_eq!(agent.status().dropped_alerts, 15);
        if version == 2 {
            assert_eq!(hb["dropped_alerts"], 15, "v2 heartbeat: {hb}");
            let seqs: Vec<u64> = alerts.iter().filter_map(|a| a.seq).collect();
            assert_eq!(seqs, (16..=25).collect::<Vec<u64>>());
        } else {
            assert!(hb.get("dropped_alerts").is_none(), "v1 heartbeat: {hb}");
        }
        for k in ["active_sessions", "active_alerts", "cpu_pct", "mem_pct"] {
            assert!(hb.get(k).is_some(), "heartbeat lacks {k}: {hb}");
        }
        agent.stop().await;
    }
}

/// Version 1, a cut in the middle of a long flush (frames of ~1.6 MB, a hub that reads
/// slowly through a small window): frames the agent wrote before the cut — some of them
/// already stored by the hub — are not sent again on the next connection. (Before the fix the
/// driver discarded the progress of a flush cut short, and the next connection re-sent them
/// all: duplicates under a protocol that promises at most once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_a_cut_during_a_long_flush_sends_nothing_twice() {
    let settings = HubSettings {
        version: 1,
        alert_delay: Duration::from_millis(200),
        recv_buffer: Some(16 * 1024),
        ..HubSettings::default()
    };
    let (hub, proxy, agent) = agent_while_the_hub_is_down(settings, AgentSetup::new, WAIT).await;
    // 16 MB: one flush (8 frames, 12.8 MB) is more than the socket buffers on the way hold.
    agent.send_alerts(0, ALERTS, 16_000).await;
    proxy.set_down(false);
    // Cut as soon as the hub has stored the first frame: the flush is still writing.
    hub.wait("the first frame stored", Duration::from_secs(60), |r| {
        (!r.alerts.is_empty()).then_some(())
    })
    .await;
    proxy.cut_all();
    agent
        .wait_status(
            "spool drained on the next connection",
            Duration::from_secs(120),
            |s| s.spool_pending == 0 && s.registrations >= 2,
        )
        .await;
    let last = hub.with(|r| r.conns.len() - 1);
    agent.stop().await;
    hub.wait("the last connection ended", WAIT, |r| {
        r.conns[last].ended_at.map(|_| ())
    })
    .await;
    let stored = hub.with(|r| r.alerts.clone());
    let by_key = count_by_key(&stored);
    let dups = by_key.values().filter(|n| **n > 1).count();
    assert_eq!(
        dups,
        0,
        "{dups} alerts stored twice ({} stored)",
        stored.len()
    );
    println!(
        "v1 long flush: {} of {ALERTS} stored once each; {} lost in flight",
        stored.len(),
        ALERTS - by_key.len()
    );
}
