//! The outbound side of one link connection: three bounded queues drained by one writer in
//! priority order — session frames, then control frames (register, heartbeat, pong), then
//! alerts — so a burst of alerts never delays a remote user's answer.
//!
//! Every send also watches the connection's cancellation: when the connection dies, a
//! producer waiting on a full queue is released at once, so a dead writer can never block the
//! reader, the sessions or shutdown (hard rule 7).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tether_proto::ReplyFrame;
use tether_proto::link::{Ack, LinkFrame, LinkMessage};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Queue sizes, in frames.
pub const SESSION_QUEUE: usize = 1024;
pub const CONTROL_QUEUE: usize = 8;
pub const ALERT_QUEUE: usize = 16;

/// One frame to write; `written` is signalled once it is on the socket.
pub struct OutFrame {
    pub text: String,
    pub written: Option<oneshot::Sender<()>>,
}

impl OutFrame {
    pub fn new(text: String) -> Self {
        OutFrame {
            text,
            written: None,
        }
    }
}

/// The writer's side.
pub struct OutQueues {
    pub session: mpsc::Receiver<OutFrame>,
    pub control: mpsc::Receiver<OutFrame>,
    pub alerts: mpsc::Receiver<OutFrame>,
}

impl OutQueues {
    /// The next queued frame in priority order, without waiting.
    pub fn try_next(&mut self) -> Option<OutFrame> {
        self.session
            .try_recv()
            .or_else(|_| self.control.try_recv())
            .or_else(|_| self.alerts.try_recv())
            .ok()
    }

    /// The next frame in priority order, or `None` once `cancel` fires.
    pub async fn next(&mut self, cancel: &CancellationToken) -> Option<OutFrame> {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            Some(f) = self.session.recv() => Some(f),
            Some(f) = self.control.recv() => Some(f),
            Some(f) = self.alerts.recv() => Some(f),
            else => None,
        }
    }
}

/// The producers' side. Cheap to clone.
#[derive(Clone)]
pub struct LinkOut {
    session: mpsc::Sender<OutFrame>,
    control: mpsc::Sender<OutFrame>,
    alerts: mpsc::Sender<OutFrame>,
    cancel: CancellationToken,
    version: Arc<AtomicU32>,
}

/// Queues for a new connection; `cancel` is the connection's token.
pub fn outbox(cancel: CancellationToken) -> (LinkOut, OutQueues) {
    let (session, session_rx) = mpsc::channel(SESSION_QUEUE);
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (alerts, alerts_rx) = mpsc::channel(ALERT_QUEUE);
    (
        LinkOut {
            session,
            control,
            alerts,
            cancel,
            version: Arc::new(AtomicU32::new(1)),
        },
        OutQueues {
            session: session_rx,
            control: control_rx,
            alerts: alerts_rx,
        },
    )
}

fn frame(message: LinkMessage) -> String {
    LinkFrame::new(uuid::Uuid::now_v7().to_string(), message).encode()
}

impl LinkOut {
    /// The negotiated protocol version (1 until registered).
    pub fn version(&self) -> u32 {
        self.version.load(Ordering::Acquire)
    }

    pub fn set_version(&self, v: u32) {
        self.version.store(v, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.cancel.is_cancelled()
    }

    async fn put(&self, tx: &mpsc::Sender<OutFrame>, f: OutFrame) -> bool {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => false,
            r = tx.send(f) => r.is_ok(),
        }
    }

    /// A session frame (highest priority).
    pub async fn send_text(&self, text: String) -> bool {
        self.put(&self.session, OutFrame::new(text)).await
    }

    pub async fn send(&self, message: LinkMessage) -> bool {
        self.send_text(frame(message)).await
    }

    /// A control frame (register, heartbeat, pong).
    pub async fn send_control(&self, message: LinkMessage) -> bool {
        self.put(&self.control, OutFrame::new(frame(message))).await
    }

    /// An alert frame; `written` fires once it is on the socket.
    pub async fn send_alerts(&self, text: String, written: oneshot::Sender<()>) -> bool {
        self.put(
            &self.alerts,
            OutFrame {
                text,
                written: Some(written),
            },
        )
        .await
    }

    /// `ack` answering a frame by `ref_id`.
    pub async fn ack(&self, ref_id: &str, ok: bool, error: Option<&str>) -> bool {
        let f = LinkFrame {
            id: uuid::Uuid::now_v7().to_string(),
            ref_id: Some(ref_id.to_owned()),
            message: LinkMessage::Ack(Ack {
                ok,
                error: error.map(str::to_owned),
                ..Ack::default()
            }),
        };
        self.send_text(f.encode()).await
    }

    /// Version 2: `ack` carrying a client-protocol reply (its reason and details, or result).
    pub async fn ack_reply(&self, ref_id: &str, reply: &ReplyFrame) -> bool {
        let ack = match &reply.error {
            Some(e) => Ack {
                ok: false,
                error: Some(e.message.clone()),
                reason: Some(e.reason.as_str().to_owned()),
                details: (!e.details.is_empty()).then(|| e.details.clone()),
                ..Ack::default()
            },
            None => Ack {
                ok: true,
                result: reply.result.clone(),
                ..Ack::default()
            },
        };
        let f = LinkFrame {
            id: uuid::Uuid::now_v7().to_string(),
            ref_id: Some(ref_id.to_owned()),
            message: LinkMessage::Ack(ack),
        };
        self.send_text(f.encode()).await
    }

    /// `session_error`, followed by the final `done` output (PROTOCOL.md §2).
    pub async fn session_error(&self, session_id: &str, error: &str, code: &str) -> bool {
        let mut ok = true;
        for m in crate::remote::session_error(session_id, error, code) {
            ok &= self.send(m).await;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn session_frames_go_first() {
        let cancel = CancellationToken::new();
        let (out, mut q) = outbox(cancel.clone());
        out.send_control(LinkMessage::Ping).await;
        let (tx, _rx) = oneshot::channel();
        out.send_alerts("alerts".into(), tx).await;
        out.send_text("session".into()).await;
        let order: Vec<String> = [
            q.next(&cancel).await,
            q.next(&cancel).await,
            q.next(&cancel).await,
        ]
        .into_iter()
        .map(|f| f.map(|f| f.text).unwrap_or_default())
        .collect();
        assert_eq!(order[0], "session");
        assert!(order[1].contains("\"ping\""));
        assert_eq!(order[2], "alerts");
    }

    #[tokio::test]
    async fn a_full_queue_releases_its_producers_when_the_connection_dies() {
        let cancel = CancellationToken::new();
        let (out, _q) = outbox(cancel.clone());
        for _ in 0..SESSION_QUEUE {
            assert!(out.send_text("x".into()).await);
        }
        let blocked = tokio::spawn({
            let out = out.clone();
            async move { out.send_text("one too many".into()).await }
        });
        cancel.cancel();
        let sent = tokio::time::timeout(std::time::Duration::from_secs(5), blocked)
            .await
            .expect("the producer was released")
            .expect("task");
        assert!(!sent);
    }
}
