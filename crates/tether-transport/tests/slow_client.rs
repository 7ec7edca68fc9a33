//! A slow client never slows the others; it is warned, then evicted with a final frame
//! (issue 2, item 10).

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use tether_mux::MuxConfig;
use tether_transport::client::Client;

/// The turns here stream with no delay at all, so the producer is bounded only by the event
/// log: a client must absorb its bursts. The queues are small enough that a client which stops
/// reading overflows well before the turn ends, and large enough that a client which reads
/// keeps up (a debug build on two loaded cores is the yardstick).
fn opts(words: usize, word_len: usize, queue: usize) -> Options {
    paced(words, word_len, queue, 0)
}

/// As [`opts`], with `delay_ms` between streamed chunks.
fn paced(words: usize, word_len: usize, queue: usize, delay_ms: u64) -> Options {
    Options {
        script: text_script(&long_text(words, word_len), delay_ms),
        config: MuxConfig {
            client_queue_frames: queue,
            ..MuxConfig::default()
        },
        tools: None,
    }
}

/// The two tests each stream megabytes as fast as they can; run one at a time so neither
/// starves the other's readers of CPU.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Attaches a raw Unix-socket client and returns its client id. It reads nothing more
/// until the test says so.
async fn attach_raw(raw: &mut RawUnix, sid: &str) -> String {
    let (hello, _) = raw.request(1, "hello", json!({})).await;
    let (reply, _) = raw.request(2, "attach", json!({"session_id": sid})).await;
    assert_eq!(reply["ok"], true, "{reply}");
    hello["result"]["client_id"]
        .as_str()
        .expect("client_id")
        .to_owned()
}

/// Reads a whole turn on `c`, promptly, checking it is complete and in order. Returns the
/// turn's frames. `on_frame` sees each raw frame as it arrives. Frames are only parsed once
/// the turn is over: parsing megabytes of JSON in a debug build while the turn streams would
/// take the CPU the server's writers need, and make the reader "slow" for real.
async fn read_whole_turn(
    c: &mut Client,
    words: usize,
    mut on_frame: impl FnMut(&str),
) -> Vec<Value> {
    let raw = tokio::time::timeout(Duration::from_secs(30), async {
        let mut raw = vec![];
        loop {
            let text = c.next_text().await.expect("a fast client was disconnected");
            on_frame(&text);
            let end = text.contains(r#""event":"turn_ended""#);
            raw.push(text);
            if end {
                return raw;
            }
        }
    })
    .await
    .expect("a fast client must get the whole turn promptly");
    let frames: Vec<Value> = raw
        .iter()
        .map(|t| serde_json::from_str(t).expect("json"))
        .collect();
    assert!(
        !frames.iter().any(|v| is_control(v, "evicted")),
        "a fast client was evicted"
    );
    assert_contiguous(&frames);
    let deltas = frames.iter().filter(|v| is_event(v, "text_delta")).count();
    assert_eq!(deltas, words, "every text_delta must arrive");
    assert_eq!(frames.last().expect("end")["stop"], "completed");
    frames
}

/// A client that attaches and then never reads is evicted; the others — on the WebSocket and
/// on the Unix socket — get the whole turn, promptly, and see it leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_delay_the_others() {
    let _one = ONE_AT_A_TIME.lock().await;
    // 1000 frames of 8 KB: the stalled client's queue (512) and socket buffer (~25 frames)
    // overflow halfway through.
    let words = 1000;
    let agent = Agent::start(opts(words, 8000, 512)).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let mut bob = agent.unix().await;
    let sid = create_session(&mut alice, "human").await;
    attach(&mut alice, &sid, None).await;
    attach(&mut bob, &sid, None).await;
    let mut stalled = RawUnix::connect(&agent.socket).await;
    let stalled_id = attach_raw(&mut stalled, &sid).await;

    alice
        .request("input", json!({"session_id": sid, "text": "talk a lot"}))
        .await
        .expect("input");
    for c in [&mut alice, &mut bob] {
        let frames = read_whole_turn(c, words, |_| {}).await;
        let gone = frames
            .iter()
            .find(|v| {
                is_event(v, "client_detached") && v["client"]["client_id"] == stalled_id.as_str()
            })
            .expect("the stalled client's departure is announced");
        assert_eq!(gone["reason"], "evicted: slow consumer", "{gone}");
    }
    // The session no longer lists it; the others are still there.
    let list = alice
        .request("session.list", json!({}))
        .await
        .expect("list");
    let clients: Vec<&str> = list["sessions"][0]["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| c["client_id"].as_str().expect("id"))
        .collect();
    assert_eq!(clients.len(), 2, "{clients:?}");
    assert!(!clients.contains(&stalled_id.as_str()));
    drop(stalled);
    agent.stop().await;
}

/// A slow client that does read, late, finds a clean stream: the events it was sent, in order
/// and whole, then `slow_consumer`, then `evicted` as the very last frame, then the end of the
/// stream. Meanwhile a client that keeps up gets the whole turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_warned_then_evicted_with_a_final_frame() {
    let _one = ONE_AT_A_TIME.lock().await;
    // 600 frames of 20 KB (more than the socket writer's 8 KiB buffer): the slow client's
    // queue (256) and socket buffer (~10 frames) overflow halfway through.
    let words = 600;
    let agent = Agent::start(opts(words, 20_000, 256)).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut alice, "human").await;
    attach(&mut alice, &sid, None).await;
    let mut slow = RawUnix::connect(&agent.socket).await;
    let slow_id = attach_raw(&mut slow, &sid).await;

    alice
        .request("input", json!({"session_id": sid, "text": "talk a lot"}))
        .await
        .expect("input");
    // The slow client starts reading the moment its eviction is announced.
    let (evicted_tx, evicted_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let _ = evicted_rx.await;
        read_to_end(&mut slow).await
    });
    let mut evicted_tx = Some(evicted_tx);
    let needle = format!(r#""client_id":"{slow_id}""#);
    let frames = read_whole_turn(&mut alice, words, |text| {
        if text.contains(r#""event":"client_detached""#)
            && text.contains(&needle)
            && let Some(tx) = evicted_tx.take()
        {
            let _ = tx.send(());
        }
    })
    .await;
    let gone = frames
        .iter()
        .find(|v| is_event(v, "client_detached") && v["client"]["client_id"] == slow_id.as_str())
        .expect("client_detached");
    assert_eq!(gone["reason"], "evicted: slow consumer", "{gone}");
    assert!(evicted_tx.is_none(), "the slow client was never evicted");

    let frames = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the evicted connection must close")
        .expect("reader");
    check_evicted_stream(&frames, words);
    agent.stop().await;
}

/// Frames far larger than the socket buffer, so the eviction finds the writer in the middle
/// of one: the peer still gets whole frames only, then the warning and `evicted`. The chunks
/// are paced (20 ms apart) so that the writer has certainly started on the first big frame —
/// and is stuck in it, the socket buffer being full — when the queue behind it overflows.
/// (No client keeps up here: the test watches the session's client list instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_mid_frame_leaves_no_torn_frame() {
    let _one = ONE_AT_A_TIME.lock().await;
    let words = 40;
    let agent = Agent::start(paced(words, 400_000, 16, 20)).await;
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut alice, "human").await;
    let mut slow = RawUnix::connect(&agent.socket).await;
    let slow_id = attach_raw(&mut slow, &sid).await;
    alice
        .request("input", json!({"session_id": sid, "text": "talk a lot"}))
        .await
        .expect("input");
    // Bounded poll of the session's client list (in process: no frames to read).
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let list = agent.mux.list_sessions();
            let attached = list.sessions[0]
                .clients
                .iter()
                .any(|c| c.client_id.as_str() == slow_id);
            if !attached {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the slow client must be evicted");
    let frames = tokio::time::timeout(Duration::from_secs(30), read_to_end(&mut slow))
        .await
        .expect("the evicted connection must close");
    check_evicted_stream(&frames, words);
    agent.stop().await;
}

/// Every line until the server closes, each checked to be exactly one JSON frame.
async fn read_to_end(raw: &mut RawUnix) -> Vec<Value> {
    let mut frames = vec![];
    while let Some(line) = raw.next_line().await {
        let v = serde_json::from_str(&line).unwrap_or_else(|e| {
            let head: String = line.chars().take(80).collect();
            let tail: String = line.chars().rev().take(120).collect::<String>();
            let tail: String = tail.chars().rev().collect();
            panic!(
                "line {} ({} bytes) is not one JSON frame ({e}): {head}…{tail}",
                frames.len(),
                line.len()
            )
        });
        frames.push(v);
    }
    frames
}

/// What an evicted client must have received: in-order events, `slow_consumer`, then
/// `evicted` last.
fn check_evicted_stream(frames: &[Value], words: usize) {
    let last = frames.last().expect("frames");
    assert!(is_control(last, "evicted"), "last frame: {last}");
    assert!(last["reason"].is_string(), "{last}");
    let warned = frames
        .iter()
        .position(|v| is_control(v, "slow_consumer"))
        .expect("slow_consumer must come before evicted");
    assert!(warned < frames.len() - 1);
    assert!(frames[warned]["queued"].as_u64().expect("queued") > 0);
    // What it did get is in order, with no hole and no duplicate.
    assert_contiguous(frames);
    let deltas = frames.iter().filter(|v| is_event(v, "text_delta")).count();
    assert!(deltas < words, "it was evicted, not served in full");
}
