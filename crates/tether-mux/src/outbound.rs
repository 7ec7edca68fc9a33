//! The per-connection outbound queue.
//!
//! Every frame for a connection — replies, events, control frames — goes through one bounded
//! queue, so the order a client sees is the order the mux decided. Producers never wait:
//! a push that finds the queue full evicts the connection instead (hard rule 5). At 75 % the
//! client is warned with `slow_consumer`; the warning re-arms once the queue drains below half.
//! The warning does not wait its turn behind the backlog it warns about: it is the next frame
//! the writer sends, and if the connection is evicted before the writer got to it, it still
//! goes out just before `evicted` — a client is always warned before it is evicted.
//!
//! Replays are queued as one item and expanded by the receiver straight from the event log,
//! page by page, so a long history is paced by the socket instead of flooding the queue.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tether_engine::log::EventLog;
pub use tether_engine::log::StoredEvent;
use tether_proto::{Control, Seq, SessionId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Where replays read past events from: the agent's event log, or the hub's store.
pub trait ReplaySource: Send + Sync {
    /// Events of `session_id` with `from <= seq <= to`, in order, at most `limit`.
    fn read_range<'a>(
        &'a self,
        session_id: &'a SessionId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, String>>;
}

impl ReplaySource for EventLog {
    fn read_range<'a>(
        &'a self,
        session_id: &'a SessionId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, String>> {
        Box::pin(async move {
            EventLog::read_range(self, session_id, from, to, limit)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Default queue capacity, in frames.
pub const DEFAULT_QUEUE_FRAMES: usize = 1024;

/// Events read from the log per replay page.
const REPLAY_PAGE: usize = 256;

/// One queued item.
#[derive(Debug)]
pub enum OutItem {
    /// A ready frame (events share their bytes between every client).
    Frame(Bytes),
    /// Send the session's events `from..=to` from the log, then `replay_complete`.
    Replay {
        session_id: SessionId,
        from: Seq,
        to: Seq,
    },
    /// As `Replay`, but events before `first` (the session's oldest retained event) are a
    /// `stream_gap` even while the log still holds them: the log prunes in chunks.
    RetainedReplay {
        session_id: SessionId,
        from: Seq,
        to: Seq,
        first: Seq,
    },
}

/// The items between the mux and one writer. A plain mutex-guarded deque: a push is one
/// short lock, and the writer takes everything queued in one lock too (see
/// [`OutboundReceiver::refill`]), which is what makes fan-out cheap — a channel with a
/// permit per item cost a semaphore round trip per frame per client.
struct Queue {
    items: VecDeque<OutItem>,
    /// Items ever pushed.
    pushed: u64,
    /// The receiver was dropped: pushes fail.
    receiver_gone: bool,
    /// Every `Outbound` was dropped: the receiver ends once it has drained.
    senders_gone: bool,
    /// Times a producer took the lock to queue something (see [`Outbound::producer_locks`]).
    producer_locks: u64,
}

struct Shared {
    capacity: usize,
    queue: Mutex<Queue>,
    /// Items the writer has taken off the queue, published every few items (see
    /// [`publish_taken_every`]). `pushed - taken` is the backlog the bound applies to.
    taken: AtomicU64,
    /// Wakes the writer when a push finds the queue empty (a permit is kept if it is busy).
    wake: Notify,
    senders: AtomicUsize,
    warned: AtomicBool,
    /// A `slow_consumer` warning not yet handed to the writer: the queue length it reports
    /// (0: none pending).
    warning: AtomicUsize,
    /// Mirrors `evicted` for the per-frame checks: reading the token takes its mutex, and
    /// these checks run once per frame per client.
    evicted_flag: AtomicBool,
    evicted: CancellationToken,
    reason: Mutex<Option<String>>,
}

/// How often (in items) the writer publishes how far it got: every `capacity / 64` items,
/// between 1 and 16. Publishing every item would make every push read a cache line the
/// writer just wrote; the bound may be stale by this many items (under 2 % of the queue),
/// which only ever errs towards a fuller queue.
fn publish_taken_every(capacity: usize) -> u64 {
    (capacity as u64 / 64).clamp(1, 16)
}

impl Shared {
    fn is_evicted(&self) -> bool {
        self.evicted_flag.load(Ordering::Acquire)
    }

    fn mark_evicted(&self) {
        self.evicted_flag.store(true, Ordering::Release);
        self.evicted.cancel();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves the deque consistent (every critical section
        // is a few field updates), so a poisoned lock is still usable.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The sending side. Cheap to clone; every clone feeds the same queue.
pub struct Outbound {
    shared: Arc<Shared>,
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Outbound {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.lock().senders_gone = true;
            self.shared.wake.notify_one();
        }
    }
}

/// What the transport's writer should do next.
#[derive(Debug)]
pub enum Next {
    /// Write this frame.
    Frame(Bytes),
    /// Write this final `evicted` frame, then close the connection.
    Evicted(Bytes),
    /// The queue is closed: close the connection.
    Closed,
}

/// The receiving side, owned by the transport's writer task.
pub struct OutboundReceiver {
    shared: Arc<Shared>,
    log: Arc<dyn ReplaySource>,
    /// Items taken off the shared queue in one lock, not yet handled.
    batch: VecDeque<OutItem>,
    /// Items handled so far (and the count last published to `Shared::taken`).
    taken: u64,
    published: u64,
    publish_every: u64,
    replay: Option<ReplayCursor>,
    ready: VecDeque<Bytes>,
    done: bool,
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.receiver_gone = true;
        q.items.clear();
    }
}

struct ReplayCursor {
    session_id: SessionId,
    next: Seq,
    to: Seq,
    /// Events before this one are not sent (reported as a gap).
    first: Seq,
}

/// Creates a queue of `capacity` frames whose replays read from `log`.
pub fn channel(capacity: usize, log: Arc<dyn ReplaySource>) -> (Outbound, OutboundReceiver) {
    let capacity = capacity.max(4);
    let shared = Arc::new(Shared {
        capacity,
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            pushed: 0,
            receiver_gone: false,
            senders_gone: false,
            producer_locks: 0,
        }),
        taken: AtomicU64::new(0),
        wake: Notify::new(),
        senders: AtomicUsize::new(1),
        warned: AtomicBool::new(false),
        warning: AtomicUsize::new(0),
        evicted_flag: AtomicBool::new(false),
        evicted: CancellationToken::new(),
        reason: Mutex::new(None),
    });
    (
        Outbound {
            shared: shared.clone(),
        },
        OutboundReceiver {
            shared,
            log,
            batch: VecDeque::new(),
            taken: 0,
            published: 0,
            publish_every: publish_taken_every(capacity),
            replay: None,
            ready: VecDeque::new(),
            done: false,
        },
    )
}

impl Outbound {
    /// Queues `item` without waiting. Returns `false` when the connection is gone or was
    /// evicted by this push (the queue was full).
    pub fn push(&self, item: OutItem) -> bool {
        let shared = &*self.shared;
        if shared.is_evicted() {
            return false;
        }
        let mut q = shared.lock();
        q.producer_locks += 1;
        if q.receiver_gone {
            return false;
        }
        let backlog = q
            .pushed
            .saturating_sub(shared.taken.load(Ordering::Acquire)) as usize;
        if backlog >= shared.capacity {
            drop(q);
            self.evict("slow_consumer");
            return false;
        }
        let was_empty = q.items.is_empty();
        q.items.push_back(item);
        q.pushed += 1;
        drop(q);
        if was_empty {
            shared.wake.notify_one();
        }
        self.warn_if_full(backlog + 1);
        true
    }

    /// Queues `frames`, in order, under one lock and with at most one wake-up: a flush's whole
    /// group of events goes to a client in one queue operation, not one per event (with N
    /// clients and a fast turn, a lock per frame per client was the fan-out's largest cost).
    /// Frames that do not fit evict the connection, as [`push`](Self::push) does; the ones
    /// before them are queued. Returns `false` when the connection is gone or was evicted.
    pub fn push_frames<'a>(&self, frames: impl IntoIterator<Item = &'a Bytes>) -> bool {
        let shared = &*self.shared;
        if shared.is_evicted() {
            return false;
        }
        let mut q = shared.lock();
        q.producer_locks += 1;
        if q.receiver_gone {
            return false;
        }
        let backlog = q
            .pushed
            .saturating_sub(shared.taken.load(Ordering::Acquire)) as usize;
        let room = shared.capacity.saturating_sub(backlog);
        let was_empty = q.items.is_empty();
        let mut added = 0;
        let mut overflow = false;
        for frame in frames {
            if added == room {
                overflow = true;
                break;
            }
            q.items.push_back(OutItem::Frame(frame.clone()));
            added += 1;
        }
        q.pushed += added as u64;
        drop(q);
        if added > 0 {
            if was_empty {
                shared.wake.notify_one();
            }
            // Before the eviction, so the client is warned first.
            self.warn_if_full(backlog + added);
        }
        if overflow {
            self.evict("slow_consumer");
            return false;
        }
        true
    }

    /// Arms the `slow_consumer` warning when `queued` items reach 75 % of the queue.
    fn warn_if_full(&self, queued: usize) {
        let shared = &*self.shared;
        if queued * 4 >= shared.capacity * 3 && !shared.warned.swap(true, Ordering::AcqRel) {
            // Not queued behind the backlog: the receiver sends it next (see
            // `OutboundReceiver::take_warning`).
            shared.warning.store(queued, Ordering::Release);
        }
    }

    /// How many times producers have taken this queue's lock to queue items: one per
    /// [`push`](Self::push), one per [`push_frames`](Self::push_frames) however many frames
    /// it carries. What fan-out costs per client grows with this.
    pub fn producer_locks(&self) -> u64 {
        self.shared.lock().producer_locks
    }

    /// Queues a ready frame.
    pub fn push_frame(&self, frame: impl Into<Bytes>) -> bool {
        self.push(OutItem::Frame(frame.into()))
    }

    /// Items queued and not yet taken by the writer (as of its last report).
    pub fn queued(&self) -> usize {
        let pushed = self.shared.lock().pushed;
        pushed.saturating_sub(self.shared.taken.load(Ordering::Acquire)) as usize
    }

    /// Marks the connection evicted; the writer sends `evicted` and closes.
    pub fn evict(&self, reason: &str) {
        if let Ok(mut r) = self.shared.reason.lock()
            && r.is_none()
        {
            *r = Some(reason.to_owned());
        }
        self.shared.mark_evicted();
    }

    pub fn is_evicted(&self) -> bool {
        self.shared.is_evicted()
    }

    /// Resolves when the connection is evicted.
    pub fn evicted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shared.evicted.cancelled()
    }

    /// True once the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().receiver_gone
    }

    /// Whether two handles feed the same queue.
    pub fn same_queue(&self, other: &Outbound) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// Capacity an empty deque keeps: small bursts reuse it, larger ones allocate again.
const IDLE_CAPACITY: usize = 16;

fn shrink_idle<T>(deque: &mut VecDeque<T>) {
    if deque.capacity() > 4 * IDLE_CAPACITY {
        deque.shrink_to(IDLE_CAPACITY);
    }
}

/// What [`OutboundReceiver::refill`] found.
enum Refill {
    Items,
    Empty,
    Closed,
}

impl OutboundReceiver {
    fn evicted_frame(&self) -> Bytes {
        let reason = self
            .shared
            .reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "evicted".into());
        Bytes::from(Control::Evicted { reason }.encode())
    }

    /// The next frame to write. Never waits on anything but the queue and the log.
    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(next) = self.try_next() {
                return next;
            }
            if self.replay.is_some() {
                self.fill_replay_page().await;
                continue;
            }
            // `try_next` found the queue empty; a push since then left a permit.
            tokio::select! {
                biased;
                _ = self.shared.evicted.cancelled() => {}
                _ = self.shared.wake.notified() => {}
            }
        }
    }

    /// A pending `slow_consumer` warning, taken (it is sent once).
    fn take_warning(&self) -> Option<Bytes> {
        // A load first: the swap would write a cache line the producers read on every push.
        if self.shared.warning.load(Ordering::Acquire) == 0 {
            return None;
        }
        let queued = self.shared.warning.swap(0, Ordering::AcqRel);
        (queued > 0).then(|| Bytes::from(Control::SlowConsumer { queued }.encode()))
    }

    /// What [`next`](Self::next) would return, if that needs no waiting: a queued frame, the
    /// eviction, or the end of the queue. `None` when the queue is empty or a replay page must
    /// be read from the log first. Lets a writer drain ready frames without arming wake-ups.
    ///
    /// After an eviction this may still yield one `Frame`: the `slow_consumer` warning the
    /// writer had not sent yet. `Evicted` follows it.
    pub fn try_next(&mut self) -> Option<Next> {
        loop {
            if self.done {
                return Some(Next::Closed);
            }
            // The warning jumps the queue; when the eviction came first, it still precedes
            // the final frame, so a client is never evicted without having been warned.
            if let Some(warning) = self.take_warning() {
                return Some(Next::Frame(warning));
            }
            if self.shared.is_evicted() {
                self.done = true;
                return Some(Next::Evicted(self.evicted_frame()));
            }
            if let Some(frame) = self.ready.pop_front() {
                return Some(Next::Frame(frame));
            }
            if self.replay.is_some() {
                return None;
            }
            let Some(item) = self.batch.pop_front() else {
                match self.refill() {
                    Refill::Items => continue,
                    Refill::Empty => return None,
                    Refill::Closed => {
                        self.done = true;
                        return Some(Next::Closed);
                    }
                }
            };
            self.taken += 1;
            if self.batch.is_empty() || self.taken - self.published >= self.publish_every {
                self.published = self.taken;
                self.shared.taken.store(self.taken, Ordering::Release);
            }
            if let Some(next) = self.take(item) {
                return Some(next);
            }
        }
    }

    /// Takes everything queued in one lock.
    fn refill(&mut self) -> Refill {
        let mut q = self.shared.lock();
        std::mem::swap(&mut q.items, &mut self.batch);
        let closed = q.senders_gone;
        if self.batch.is_empty() {
            // Idle now. A deque keeps the size of its largest burst; every idle connection
            // would carry that (a replay: tens of KiB) for the rest of its life.
            shrink_idle(&mut q.items);
            shrink_idle(&mut self.batch);
            shrink_idle(&mut self.ready);
        }
        drop(q);
        // The warning re-arms once the backlog (all of it is in `batch` now) has drained
        // below half.
        if self.shared.warned.load(Ordering::Acquire) && self.batch.len() * 2 < self.shared.capacity
        {
            self.shared.warned.store(false, Ordering::Release);
        }
        match (self.batch.is_empty(), closed) {
            (false, _) => Refill::Items,
            (true, false) => Refill::Empty,
            (true, true) => Refill::Closed,
        }
    }

    /// Handles one item taken off the queue. `None` back when the item was a replay, which
    /// the caller then expands.
    fn take(&mut self, item: OutItem) -> Option<Next> {
        match item {
            OutItem::Frame(f) => Some(Next::Frame(f)),
            OutItem::Replay {
                session_id,
                from,
                to,
            } => {
                self.replay = Some(ReplayCursor {
                    session_id,
                    next: from,
                    to,
                    first: 0,
                });
                None
            }
            OutItem::RetainedReplay {
                session_id,
                from,
                to,
                first,
            } => {
                self.replay = Some(ReplayCursor {
                    session_id,
                    next: from,
                    to,
                    first,
                });
                None
            }
        }
    }

    /// Loads the next page of a replay into `ready`, with `stream_gap` for anything the log
    /// no longer holds and `replay_complete` at the end.
    async fn fill_replay_page(&mut self) {
        let Some(cursor) = self.replay.as_mut() else {
            return;
        };
        if cursor.next > cursor.to {
            self.ready.push_back(Bytes::from(
                Control::ReplayComplete {
                    session_id: cursor.session_id.clone(),
                    last_seq: cursor.to,
                }
                .encode(),
            ));
            self.replay = None;
            return;
        }
        let page = self
            .log
            .read_range(
                &cursor.session_id,
                cursor.next.max(cursor.first),
                cursor.to,
                REPLAY_PAGE,
            )
            .await;
        match page {
            Ok(events) => {
                if events.is_empty() {
                    // The rest of the range was pruned while we were getting here.
                    self.ready.push_back(Bytes::from(
                        Control::StreamGap {
                            session_id: cursor.session_id.clone(),
                            from_seq: cursor.next,
                            to_seq: cursor.to,
                        }
                        .encode(),
                    ));
                    cursor.next = cursor.to + 1;
                    return;
                }
                for e in events {
                    if e.seq > cursor.next {
                        self.ready.push_back(Bytes::from(
                            Control::StreamGap {
                                session_id: cursor.session_id.clone(),
                                from_seq: cursor.next,
                                to_seq: e.seq - 1,
                            }
                            .encode(),
                        ));
                    }
                    cursor.next = e.seq + 1;
                    self.ready.push_back(e.frame);
                }
            }
            Err(e) => {
                tracing::error!(session = %cursor.session_id, error = %e, "replay failed");
                self.replay = None;
                if let Ok(mut r) = self.shared.reason.lock() {
                    r.get_or_insert_with(|| "replay_failed".into());
                }
                self.shared.mark_evicted();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays are not exercised here: a source with no events.
    struct NoEvents;

    impl ReplaySource for NoEvents {
        fn read_range<'a>(
            &'a self,
            _session_id: &'a SessionId,
            _from: Seq,
            _to: Seq,
            _limit: usize,
        ) -> BoxFuture<'a, Result<Vec<StoredEvent>, String>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    fn queue(capacity: usize) -> (Outbound, OutboundReceiver) {
        channel(capacity, Arc::new(NoEvents))
    }

    fn frame(i: usize) -> Bytes {
        Bytes::from(format!("{{\"n\":{i}}}"))
    }

    fn text(next: Next) -> String {
        match next {
            Next::Frame(f) => String::from_utf8(f.to_vec()).expect("utf8"),
            Next::Evicted(f) => format!("evicted:{}", String::from_utf8_lossy(&f)),
            Next::Closed => "closed".into(),
        }
    }

    #[test]
    fn frames_come_out_in_order_and_the_end_is_closed() {
        let (tx, mut rx) = queue(16);
        for i in 0..10 {
            assert!(tx.push_frame(frame(i)));
        }
        assert_eq!(tx.queued(), 10);
        for i in 0..10 {
            assert_eq!(
                text(rx.try_next().expect("ready")),
                format!("{{\"n\":{i}}}")
            );
        }
        assert!(rx.try_next().is_none(), "empty, senders alive");
        assert_eq!(tx.queued(), 0, "the writer published how far it got");
        let clone = tx.clone();
        drop(tx);
        assert!(rx.try_next().is_none(), "one sender left");
        drop(clone);
        assert_eq!(text(rx.try_next().expect("closed")), "closed");
    }

    /// After a burst the idle queue gives its memory back (issue 9.4): it would otherwise
    /// keep the burst's size for as long as the connection lives.
    #[test]
    fn an_idle_queue_shrinks_after_a_burst() {
        // Large enough that the burst draws no `slow_consumer` warning.
        let (tx, mut rx) = queue(4096);
        for i in 0..1000 {
            assert!(tx.push_frame(frame(i)));
        }
        for _ in 0..1000 {
            rx.try_next().expect("ready");
        }
        assert!(
            rx.batch.capacity() >= 1000,
            "the burst was taken in one lock"
        );
        assert!(rx.try_next().is_none(), "empty");
        assert!(
            rx.batch.capacity() <= IDLE_CAPACITY,
            "{}",
            rx.batch.capacity()
        );
        assert!(tx.shared.lock().items.capacity() <= IDLE_CAPACITY);
        // And still works.
        assert!(tx.push_frame(frame(7)));
        assert_eq!(text(rx.try_next().expect("ready")), "{\"n\":7}");
    }

    #[test]
    fn a_full_queue_warns_then_evicts_and_the_warning_comes_first() {
        let (tx, mut rx) = queue(8);
        for i in 0..8 {
            assert!(tx.push_frame(frame(i)), "frame {i} fits");
        }
        assert!(!tx.push_frame(frame(8)), "the ninth overflows");
        assert!(tx.is_evicted());
        let first = text(rx.try_next().expect("warning"));
        assert!(first.contains("slow_consumer"), "{first}");
        let last = text(rx.try_next().expect("evicted"));
        assert!(
            last.starts_with("evicted:") && last.contains("slow_consumer"),
            "{last}"
        );
        assert_eq!(text(rx.try_next().expect("done")), "closed");
        assert!(
            !tx.push_frame(frame(9)),
            "nothing is queued after an eviction"
        );
    }

    #[test]
    fn a_reader_that_keeps_up_is_never_evicted_and_the_warning_re_arms() {
        let (tx, mut rx) = queue(8);
        let mut warnings = 0;
        for round in 0..50 {
            for i in 0..7 {
                assert!(tx.push_frame(frame(round * 7 + i)), "round {round}");
            }
            while let Some(next) = rx.try_next() {
                let t = text(next);
                if t.contains("slow_consumer") {
                    warnings += 1;
                }
            }
        }
        assert!(!tx.is_evicted());
        // Every round reaches 75 % and drains to empty: one warning per round.
        assert_eq!(warnings, 50);
    }

    #[test]
    fn a_group_of_frames_is_one_queue_operation_in_order() {
        let (tx, mut rx) = queue(64);
        let group: Vec<Bytes> = (0..40).map(frame).collect();
        assert!(tx.push_frames(&group));
        assert_eq!(tx.producer_locks(), 1, "one lock for the whole group");
        assert_eq!(tx.queued(), 40);
        for i in 0..40 {
            assert_eq!(
                text(rx.try_next().expect("ready")),
                format!("{{\"n\":{i}}}")
            );
        }
        assert!(rx.try_next().is_none());
        assert!(tx.push_frames(&[]), "an empty group is fine");
    }

    #[test]
    fn a_group_that_overflows_queues_what_fits_warns_then_evicts() {
        let (tx, mut rx) = queue(8);
        let group: Vec<Bytes> = (0..10).map(frame).collect();
        assert!(!tx.push_frames(&group), "the group does not fit");
        assert!(tx.is_evicted());
        assert!(text(rx.try_next().expect("warning")).contains("slow_consumer"));
        let last = text(rx.try_next().expect("evicted"));
        assert!(last.starts_with("evicted:"), "{last}");
        assert!(!tx.push_frames(&group[..1]), "nothing after an eviction");
    }

    #[test]
    fn pushes_fail_once_the_receiver_is_gone() {
        let (tx, rx) = queue(8);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(!tx.push_frame(frame(0)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_racing_producer_and_writer_lose_nothing() {
        let n = 100_000;
        let (tx, mut rx) = queue(n + 1);
        let producer = std::thread::spawn(move || {
            for i in 0..n {
                assert!(tx.push_frame(frame(i)));
                if i % 1000 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut got = 0;
        loop {
            match rx.next().await {
                Next::Frame(f) => {
                    assert_eq!(f, frame(got), "frame {got} out of order");
                    got += 1;
                }
                Next::Closed => break,
                Next::Evicted(f) => panic!("evicted: {f:?}"),
            }
        }
        producer.join().expect("producer");
        assert_eq!(got, n);
    }
}
