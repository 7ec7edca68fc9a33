//! The credit window shared by the producer and the clients of one run, and the timestamps
//! embedded in each event.
//!
//! The producer never has more than `window` events outstanding that not every client has
//! received yet, so neither the multiplexer's per-client queue nor the baseline's broadcast
//! buffer can overflow. Clients report progress at milestones (every `step` events): the
//! last client to pass a milestone raises the floor and wakes the producer. So the cost is
//! one atomic add per client per `step` events, and the effective window stays between
//! `window - step` and `window`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::Notify;

pub struct Progress {
    clients: usize,
    events: u64,
    window: u64,
    step: u64,
    /// `milestones[k]`: clients that have received `min(k * step, events)` events.
    milestones: Vec<AtomicUsize>,
    /// Every client has received at least this many events.
    floor: AtomicU64,
    notify: Notify,
    epoch: Instant,
    /// Creation time of the first event (ns since `epoch`), `u64::MAX` until then.
    first_created: AtomicU64,
}

impl Progress {
    pub fn new(clients: usize, events: u64, window: u64, epoch: Instant) -> Progress {
        let window = window.max(1);
        let step = (window / 8).max(1);
        let milestones = (0..=events.div_ceil(step))
            .map(|_| AtomicUsize::new(0))
            .collect();
        Progress {
            clients,
            events,
            window,
            step,
            milestones,
            floor: AtomicU64::new(0),
            notify: Notify::new(),
            epoch,
            first_created: AtomicU64::new(u64::MAX),
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Nanoseconds since the shared epoch.
    pub fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Producer: waits until the event with 0-based index `index` may be created, then
    /// returns its creation time.
    pub async fn acquire(&self, index: u64) -> u64 {
        loop {
            if index < self.floor.load(Ordering::Acquire) + self.window {
                break;
            }
            // `notify_one` stores a permit when nobody waits, so a wake-up between the check
            // above and the await below is not lost.
            self.notify.notified().await;
        }
        let now = self.now_nanos();
        self.first_created.fetch_min(now, Ordering::AcqRel);
        now
    }

    /// Client: it has now received `count` events.
    pub fn received(&self, count: u64) {
        if !count.is_multiple_of(self.step) && count != self.events {
            return;
        }
        let k = usize::try_from(count.div_ceil(self.step)).unwrap_or(usize::MAX);
        if let Some(m) = self.milestones.get(k)
            && m.fetch_add(1, Ordering::AcqRel) + 1 == self.clients
        {
            self.floor.fetch_max(count, Ordering::AcqRel);
            self.notify.notify_one();
        }
    }

    /// When the first event was created (ns since the epoch), if one was.
    pub fn first_created(&self) -> Option<u64> {
        let v = self.first_created.load(Ordering::Acquire);
        (v != u64::MAX).then_some(v)
    }
}

/// The text of a delta created at `nanos`: the number, then a space (a short token, as a
/// model would stream).
pub fn delta_text(nanos: u64) -> String {
    format!("{nanos} ")
}

/// Marks a `text_delta` event frame (both servers encode events with `tether_proto::Event`).
pub const TEXT_DELTA_MARK: &str = "\"event\":\"text_delta\"";

/// The creation time embedded in a `text_delta` frame by [`delta_text`].
pub fn embedded_nanos(frame: &str) -> Option<u64> {
    const KEY: &str = "\"text\":\"";
    let start = frame.rfind(KEY)? + KEY.len();
    let digits = frame[start..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    frame[start..start + digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn embedded_time_round_trips_through_an_event_frame() {
        let event = tether_proto::Event {
            session_id: "s".into(),
            seq: 7,
            ts: "2026-01-01T00:00:00.000Z".into(),
            body: tether_proto::EventBody::TextDelta {
                turn_id: "t".into(),
                text: delta_text(123_456_789),
            },
        };
        let frame = event.encode();
        assert!(frame.contains(TEXT_DELTA_MARK), "{frame}");
        assert_eq!(embedded_nanos(&frame), Some(123_456_789));
    }

    #[tokio::test]
    async fn the_window_holds_the_producer_until_every_client_catches_up() {
        let p = Arc::new(Progress::new(2, 64, 16, Instant::now()));
        for i in 0..16 {
            p.acquire(i).await;
        }
        let blocked = tokio::time::timeout(std::time::Duration::from_millis(50), p.acquire(16));
        assert!(blocked.await.is_err(), "17th event must wait");
        for c in 1..=16 {
            p.received(c); // client A only
        }
        let blocked = tokio::time::timeout(std::time::Duration::from_millis(50), p.acquire(16));
        assert!(
            blocked.await.is_err(),
            "one client alone does not open the window"
        );
        for c in 1..=2 {
            p.received(c); // client B reaches the first milestone (step 2)
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), p.acquire(16))
            .await
            .expect("window opened");
        assert!(p.first_created().is_some());
    }
}
