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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tether_engine::log::EventLog;
pub use tether_engine::log::StoredEvent;
use tether_proto::{Control, Seq, SessionId};
use tokio::sync::mpsc;
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
}

struct Shared {
    capacity: usize,
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

impl Shared {
    fn is_evicted(&self) -> bool {
        self.evicted_flag.load(Ordering::Acquire)
    }

    fn mark_evicted(&self) {
        self.evicted_flag.store(true, Ordering::Release);
        self.evicted.cancel();
    }
}

/// The sending side. Cheap to clone; every clone feeds the same queue.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<OutItem>,
    shared: Arc<Shared>,
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
    rx: mpsc::Receiver<OutItem>,
    shared: Arc<Shared>,
    log: Arc<dyn ReplaySource>,
    replay: Option<ReplayCursor>,
    ready: VecDeque<Bytes>,
    done: bool,
}

struct ReplayCursor {
    session_id: SessionId,
    next: Seq,
    to: Seq,
}

/// Creates a queue of `capacity` frames whose replays read from `log`.
pub fn channel(capacity: usize, log: Arc<dyn ReplaySource>) -> (Outbound, OutboundReceiver) {
    let capacity = capacity.max(4);
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(Shared {
        capacity,
        warned: AtomicBool::new(false),
        warning: AtomicUsize::new(0),
        evicted_flag: AtomicBool::new(false),
        evicted: CancellationToken::new(),
        reason: Mutex::new(None),
    });
    (
        Outbound {
            tx,
            shared: shared.clone(),
        },
        OutboundReceiver {
            rx,
            shared,
            log,
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
        if self.shared.is_evicted() {
            return false;
        }
        match self.tx.try_send(item) {
            Ok(()) => {
                let queued = self.queued();
                if queued * 4 >= self.shared.capacity * 3
                    && !self.shared.warned.swap(true, Ordering::AcqRel)
                {
                    // Not queued behind the backlog: the receiver sends it next (see
                    // `OutboundReceiver::take_warning`).
                    self.shared.warning.store(queued.max(1), Ordering::Release);
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.evict("slow_consumer");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a ready frame.
    pub fn push_frame(&self, frame: impl Into<Bytes>) -> bool {
        self.push(OutItem::Frame(frame.into()))
    }

    /// Frames currently queued.
    pub fn queued(&self) -> usize {
        self.shared.capacity - self.tx.capacity()
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
        self.tx.is_closed()
    }

    /// Whether two handles feed the same queue.
    pub fn same_queue(&self, other: &Outbound) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
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
            let item = tokio::select! {
                biased;
                _ = self.shared.evicted.cancelled() => continue,
                item = self.rx.recv() => item,
            };
            if let Some(next) = self.take(item) {
                return next;
            }
        }
    }

    /// A pending `slow_consumer` warning, taken (it is sent once).
    fn take_warning(&self) -> Option<Bytes> {
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
            let item = match self.rx.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            if let Some(next) = self.take(item) {
                return Some(next);
            }
        }
    }

    /// Handles one item taken off the queue (`None`: the queue is closed). `None` back when
    /// the item was a replay, which the caller then expands.
    fn take(&mut self, item: Option<OutItem>) -> Option<Next> {
        if self.shared.warned.load(Ordering::Acquire) && self.rx.len() * 2 < self.shared.capacity {
            self.shared.warned.store(false, Ordering::Release);
        }
        match item {
            None => {
                self.done = true;
                Some(Next::Closed)
            }
            Some(OutItem::Frame(f)) => Some(Next::Frame(f)),
            Some(OutItem::Replay {
                session_id,
                from,
                to,
            }) => {
                self.replay = Some(ReplayCursor {
                    session_id,
                    next: from,
                    to,
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
            .read_range(&cursor.session_id, cursor.next, cursor.to, REPLAY_PAGE)
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
