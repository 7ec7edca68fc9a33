//! Reconnect timing (PROTOCOL.md §2) with the real driver against the test hub, in paused
//! tokio time: HTTP 401 backs off 60 s doubling (±25 %), `disconnect` waits
//! `max(retry_after_sec, 1)` (±25 %), and 90 s without a frame from the hub drops the link.
//!
//! Waits are measured by the hub in virtual time, between the upgrade attempts it saw.

mod common;

use common::hub::{HubSettings, TestHub};
use common::{AgentSetup, TestAgent, fine_clock};
use serde_json::json;
use std::time::Duration;

/// Virtual-time guard for every wait in this file.
const GUARD: Duration = Duration::from_secs(3600);
/// Scheduling slack on top of the protocol's windows (the 5 ms clock steps of a few hops).
const SLACK: Duration = Duration::from_millis(500);

fn within(what: &str, d: Duration, lo: Duration, hi: Duration) {
    assert!(
        d >= lo && d <= hi + SLACK,
        "{what}: waited {d:?}, expected {lo:?}..={hi:?}"
    );
}

/// HTTP 401 on the upgrade: the next attempt waits 60 s ± 25 % (at least 45 s), the one after
/// 120 s ± 25 %; the status says `backing_off` with the wait; then the agent registers.
#[tokio::test(start_paused = true)]
async fn unauthorized_backs_off_at_least_45_seconds_and_doubles() {
    let _clock = fine_clock();
    let hub = TestHub::start(HubSettings {
        unauthorized: 2,
        ..HubSettings::default()
    })
    .await;
    let agent = TestAgent::start(AgentSetup::new(hub.url()));

    hub.wait("the first (refused) attempt", GUARD, |r| {
        (!r.attempts.is_empty()).then_some(())
    })
    .await;
    let s = agent
        .wait_status("backing off after 401", GUARD, |s| s.state == "backing_off")
        .await;
    let retry = Duration::from_millis(s.retry_in_ms.expect("retry_in_ms while backing off"));
    within(
        "status.retry_in_ms after the first 401",
        retry,
        Duration::from_secs(45),
        Duration::from_secs(75),
    );
    let err = s.last_error.unwrap_or_default();
    assert!(err.contains("401"), "last_error: {err}");
    assert_eq!(s.registrations, 0);

    hub.wait("the second attempt", GUARD, |r| {
        (r.attempts.len() >= 2).then_some(())
    })
    .await;
    let s = agent
        .wait_status("backing off after the second 401", GUARD, |s| {
            s.state == "backing_off" && s.connects == 2
        })
        .await;
    let retry2 = Duration::from_millis(s.retry_in_ms.expect("retry_in_ms"));
    within(
        "status.retry_in_ms after the second 401",
        retry2,
        Duration::from_secs(90),
        Duration::from_secs(150),
    );

    hub.wait("the third attempt", GUARD, |r| {
        (r.attempts.len() >= 3).then_some(())
    })
    .await;
    agent
        .wait_status("registered", GUARD, |s| s.state == "registered")
        .await;

    let at: Vec<_> = hub.with(|r| {
        assert!(r.attempts[0].refused && r.attempts[1].refused && !r.attempts[2].refused);
        r.attempts.iter().map(|a| a.at).collect()
    });
    let first_wait = at[1] - at[0];
    assert!(
        first_wait >= Duration::from_secs(45),
        "401 → next attempt after only {first_wait:?}"
    );
    within(
        "first wait after 401",
        first_wait,
        Duration::from_secs(45),
        Duration::from_secs(75),
    );
    // The status reported the wait that was actually taken.
    within("first wait vs status", first_wait, retry, retry);
    within(
        "second wait after 401",
        at[2] - at[1],
        Duration::from_secs(90),
        Duration::from_secs(150),
    );
    within("second wait vs status", at[2] - at[1], retry2, retry2);
    agent.stop().await;
}

/// `disconnect {retry_after_sec: 40}`: the agent closes and dials again after 40 s ± 25 %;
/// `retry_after_sec: 0` waits the 1 s minimum.
#[tokio::test(start_paused = true)]
async fn disconnect_waits_retry_after_sec() {
    let _clock = fine_clock();
    let hub = TestHub::start(HubSettings::default()).await;
    let agent = TestAgent::start(AgentSetup::new(hub.url()));

    for (round, retry_after, lo, hi) in [
        (
            0usize,
            40u64,
            Duration::from_secs(30),
            Duration::from_secs(50),
        ),
        (
            1,
            0,
            Duration::from_millis(750),
            Duration::from_millis(1250),
        ),
        (
            2,
            7,
            Duration::from_millis(5250),
            Duration::from_millis(8750),
        ),
    ] {
        let mut conn = hub.next_conn(GUARD).await;
        agent
            .wait_status("registered", GUARD, |s| {
                s.state == "registered" && s.registrations == round as u64 + 1
            })
            .await;
        let sent_at = tokio::time::Instant::now();
        conn.send_msg(
            "disconnect",
            json!({"reason": "maintenance", "retry_after_sec": retry_after}),
        );
        conn.ended(GUARD).await;
        let s = agent
            .wait_status("backing off after disconnect", GUARD, |s| {
                s.state == "backing_off"
            })
            .await;
        let retry = Duration::from_millis(s.retry_in_ms.expect("retry_in_ms"));
        within("status.retry_in_ms", retry, lo, hi);
        assert!(
            s.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("maintenance"),
            "{s:?}"
        );
        hub.wait("the next attempt", GUARD, |r| {
            (r.attempts.len() > round + 1).then_some(())
        })
        .await;
        let next = hub.with(|r| r.attempts[round + 1].at);
        within(
            &format!("retry_after_sec = {retry_after}"),
            next - sent_at,
            lo,
            hi,
        );
    }
    agent.stop().await;
}

/// A hub that goes silent after the ack: 90 s later the agent drops the link and dials again
/// (about 1 s after). Heartbeats kept flowing meanwhile (one at registration, then every
/// 30 s); they are not life signs from the hub.
#[tokio::test(start_paused = true)]
async fn a_silent_hub_is_dropped_after_ninety_seconds() {
    let _clock = fine_clock();
    let hub = TestHub::start(HubSettings::default()).await;
    let agent = TestAgent::start(AgentSetup::new(hub.url()));
    let mut first = hub.next_conn(GUARD).await;
    let rest = first.ended(GUARD).await;
    let heartbeats = rest.iter().filter(|f| f["type"] == "heartbeat").count();
    assert!(
        (3..=4).contains(&heartbeats),
        "heartbeats at 0 s, 30 s and 60 s (and maybe 90 s): {rest:?}"
    );
    hub.wait("the second attempt", GUARD, |r| {
        (r.attempts.len() >= 2).then_some(())
    })
    .await;
    let (acked, ended, next) = hub.with(|r| {
        (
            r.conns[0].acked_at.expect("acked"),
            r.conns[0].ended_at.expect("ended"),
            r.attempts[1].at,
        )
    });
    within(
        "silence before the drop",
        ended - acked,
        Duration::from_secs(90),
        Duration::from_secs(90),
    );
    // A registered link that dropped waits 1 s ± 25 %.
    within(
        "wait after the drop",
        next - ended,
        Duration::from_millis(750),
        Duration::from_millis(1250),
    );
    let s = agent
        .wait_status("registered again", GUARD, |s| s.registrations == 2)
        .await;
    assert_eq!(s.state, "registered");
    agent.stop().await;
}

/// The contrast: a hub that pings every 30 s keeps the link up well past 90 s, and a
/// version-2 agent answers each ping with a pong.
#[tokio::test(start_paused = true)]
async fn a_pinging_hub_keeps_the_link_up() {
    let _clock = fine_clock();
    let hub = TestHub::start(HubSettings {
        ping_every: Some(Duration::from_secs(30)),
        ..HubSettings::default()
    })
    .await;
    let agent = TestAgent::start(AgentSetup::new(hub.url()));
    let _conn = hub.next_conn(GUARD).await;
    tokio::time::sleep(Duration::from_secs(400)).await;
    hub.with(|r| {
        assert_eq!(r.attempts.len(), 1, "the link dropped: {:?}", r.conns);
        assert!(r.conns[0].ended_at.is_none());
        assert!(r.pongs >= 12, "pongs: {}", r.pongs);
    });
    assert_eq!(agent.status().registrations, 1);
    agent.stop().await;
}
