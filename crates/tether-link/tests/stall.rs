//! A stalled hub (it accepts, then never reads — here the fault proxy stops reading from the
//! agent) with the agent's outbound queues full: no wait may hang (hard rule 7). The link's
//! shutdown ends within a bound, and the dead connection is detected and replaced.

mod common;

use common::hub::{HubSettings, TestHub, count_by_key};
use common::proxy::FaultProxy;
use common::{AgentSetup, TestAgent, WAIT};
use std::time::{Duration, Instant};
use tether_link::outbox::SESSION_QUEUE;

/// Jams the link: the proxy stops reading from the agent, 16 MB of alerts fill every socket
/// buffer on the way (the writer blocks mid-frame), then a flood of pings makes the agent
/// queue a pong for each until its session queue (1 024 frames) is full and the link loop
/// itself waits on it. Returns once the agent has stopped taking in frames.
async fn jam(hub: &TestHub, proxy: &FaultProxy, agent: &TestAgent) -> u64 {
    let conn = hub.next_conn(WAIT).await;
    agent
        .wait_status("registered", WAIT, |s| s.state == "registered")
        .await;
    proxy.set_stalled(true);
    agent.send_alerts(0, 1000, 16_000).await;
    conn.ping_flood(4 * SESSION_QUEUE);
    // Wait until the agent stops taking in frames (bounded): the queue is full.
    let started = Instant::now();
    let mut last = (0u64, Instant::now());
    loop {
        let n = agent.status().frames_in;
        if n != last.0 {
            last = (n, Instant::now());
        } else if n > SESSION_QUEUE as u64 && last.1.elapsed() > Duration::from_millis(800) {
            break n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the agent never stopped taking frames in (frames_in {n})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With the hub stalled and the outbound queue full, cancelling the link ends everything
/// (`Link::join`) within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_with_a_full_queue_and_a_stalled_hub() {
    let hub = TestHub::start(HubSettings::default()).await;
    let proxy = FaultProxy::start(hub.addr).await;
    let mut agent = TestAgent::start(AgentSetup::new(proxy.url()));
    let frames_in = jam(&hub, &proxy, &agent).await;
    // The reader and the link loop kept going while the writer was stuck, until the queue
    // filled: more pings were taken in than fit in the queue.
    assert!(frames_in > SESSION_QUEUE as u64, "frames_in {frames_in}");
    let s = agent.status();
    assert_eq!(
        s.state, "registered",
        "the jam was in place when cancelled: {s:?}"
    );
    assert_eq!(
        hub.with(|r| r.alerts.len()),
        0,
        "nothing got through the stalled proxy"
    );

    let took = agent.stop_link_timed().await;
    println!("stalled hub, full queue: Link::join took {took:?} after cancel");
    assert!(
        took < Duration::from_secs(15),
        "the link took {took:?} to stop with a stalled hub"
    );
    // Sharper: the shutdown does not wait for the writer's 10 s write timeout (the link loop
    // was waiting on the full queue; it must watch the shutdown too). What remains is the
    // 3 s grace the writer gets to flush and send a close frame.
    assert!(
        took < Duration::from_secs(8),
        "the shutdown waited for the write timeout: {took:?}"
    );
    // The multiplexer stops too.
    tokio::time::timeout(WAIT, agent.mux.shutdown())
        .await
        .expect("mux shutdown");
}

/// A stalled hub is a dead connection: the agent gives up on it (bounded write), dials again,
/// and once the hub reads again every alert is stored exactly once (version 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_hub_is_replaced_and_nothing_is_lost() {
    let hub = TestHub::start(HubSettings::default()).await;
    let proxy = FaultProxy::start(hub.addr).await;
    let agent = TestAgent::start(AgentSetup::new(proxy.url()));
    jam(&hub, &proxy, &agent).await;
    let started = Instant::now();
    agent
        .wait_status("gave up on the stalled connection", WAIT, |s| {
            s.state != "registered"
        })
        .await;
    let gave_up = started.elapsed();
    // The write timeout is 10 s.
    assert!(gave_up < Duration::from_secs(20), "took {gave_up:?}");
    proxy.set_stalled(false);
    agent
        .wait_status("registered again", WAIT, |s| {
            s.state == "registered" && s.registrations >= 2
        })
        .await;
    hub.wait("every alert stored", Duration::from_secs(120), |r| {
        (r.alerts.len() >= 1000).then_some(())
    })
    .await;
    agent
        .wait_status("spool drained", Duration::from_secs(60), |s| {
            s.spool_pending == 0
        })
        .await;
    let stored = hub.with(|r| r.alerts.clone());
    assert_eq!(stored.len(), 1000);
    assert!(count_by_key(&stored).values().all(|n| *n == 1));
    agent.stop().await;
}
