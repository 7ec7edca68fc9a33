//! A connected agent as the rest of the hub talks to it ([`AgentConn`]), the errors of talking
//! to it ([`AgentError`]), and how the relay finds one ([`AgentDirectory`]): the relay never
//! sees the agent endpoint or the hub, only this lookup, so another kind of directory (agents
//! held by another replica, reached through it) can stand in without the relay changing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tether_host::sync::lock;
use tether_proto::link::{Ack, Disconnect, LinkFrame, LinkMessage};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Why a frame did not reach an agent, or its answer did not come back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentError {
    /// The connection ended (before the frame went, or before the answer came).
    Disconnected,
    /// The agent is connected but did not answer within this long (it may still act on it).
    Timeout(Duration),
    /// The frames queued for the agent are at their limit (a frame that must not wait).
    Busy,
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Disconnected => f.write_str("the agent disconnected"),
            AgentError::Timeout(d) if d.as_millis() % 1000 == 0 => {
                write!(f, "the agent did not answer within {} s", d.as_secs())
            }
            AgentError::Timeout(d) => {
                write!(f, "the agent did not answer within {} ms", d.as_millis())
            }
            AgentError::Busy => f.write_str("the agent's send queue is full"),
        }
    }
}

impl std::error::Error for AgentError {}

/// Finds connected agents: "is agent X here, and how do I reach it".
pub trait AgentDirectory: Send + Sync {
    /// The agent's live connection (`None`: not connected).
    fn agent(&self, agent_id: &str) -> Option<Arc<AgentConn>>;
}

/// The agents connected to this hub process, by id (one connection each: a newer one
/// replaces the older).
#[derive(Default)]
pub struct ConnectedAgents {
    map: std::sync::Mutex<HashMap<String, Arc<AgentConn>>>,
}

impl ConnectedAgents {
    /// Adds a connected agent; returns the connection it replaces.
    pub fn insert(&self, conn: Arc<AgentConn>) -> Option<Arc<AgentConn>> {
        lock(&self.map).insert(conn.agent_id.clone(), conn)
    }

    /// Removes an agent's connection if it is still `conn_id`; true when it was.
    pub fn remove(&self, agent_id: &str, conn_id: u64) -> bool {
        let mut map = lock(&self.map);
        match map.get(agent_id) {
            Some(c) if c.conn_id == conn_id => {
                map.remove(agent_id);
                true
            }
            _ => false,
        }
    }

    /// Every connection now (copied out: nothing is held while the caller works on them).
    pub fn all(&self) -> Vec<Arc<AgentConn>> {
        lock(&self.map).values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AgentDirectory for ConnectedAgents {
    fn agent(&self, agent_id: &str) -> Option<Arc<AgentConn>> {
        lock(&self.map).get(agent_id).cloned()
    }
}

/// A connected agent, as the rest of the hub talks to it.
pub struct AgentConn {
    pub agent_id: String,
    pub hostname: String,
    pub proto: u32,
    /// The credential it registered with (`None`: the shared enrollment token).
    pub token_id: Option<String>,
    pub(crate) conn_id: u64,
    tx: mpsc::Sender<String>,
    cancel: CancellationToken,
    /// Frames waiting for an `ack` by `ref_id`.
    pending: std::sync::Mutex<HashMap<String, oneshot::Sender<Ack>>>,
    /// `dropped_alerts` from the agent's last heartbeat (version 2).
    pub(crate) dropped_alerts: AtomicU64,
}

impl AgentConn {
    pub(crate) fn new(
        agent_id: String,
        hostname: String,
        proto: u32,
        token_id: Option<String>,
        conn_id: u64,
        tx: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> AgentConn {
        AgentConn {
            agent_id,
            hostname,
            proto,
            token_id,
            conn_id,
            tx,
            cancel,
            pending: std::sync::Mutex::new(HashMap::new()),
            dropped_alerts: AtomicU64::new(0),
        }
    }

    /// Queues a frame; waits only while the connection lives.
    pub async fn send(&self, message: LinkMessage) -> Result<String, AgentError> {
        let id = uuid::Uuid::now_v7().to_string();
        let text = LinkFrame::new(id.clone(), message).encode();
        self.send_text(text).await?;
        Ok(id)
    }

    /// Queues a frame without waiting: for callers that hold a session's ordering lock, which
    /// is never held while waiting on an agent (a full queue is [`AgentError::Busy`]).
    pub fn try_send(&self, message: LinkMessage) -> Result<String, AgentError> {
        if self.cancel.is_cancelled() {
            return Err(AgentError::Disconnected);
        }
        let id = uuid::Uuid::now_v7().to_string();
        let text = LinkFrame::new(id.clone(), message).encode();
        self.tx.try_send(text).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => AgentError::Busy,
            mpsc::error::TrySendError::Closed(_) => AgentError::Disconnected,
        })?;
        Ok(id)
    }

    pub(crate) async fn send_text(&self, text: String) -> Result<(), AgentError> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(AgentError::Disconnected),
            r = self.tx.send(text) => r.map_err(|_| AgentError::Disconnected),
        }
    }

    /// Sends a frame and waits (bounded) for the agent's `ack` to it.
    pub async fn request(
        &self,
        message: LinkMessage,
        timeout: Duration,
    ) -> Result<Ack, AgentError> {
        let id = uuid::Uuid::now_v7().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        let text = LinkFrame::new(id.clone(), message).encode();
        if let Err(e) = self.send_text(text).await {
            self.forget(&id);
            return Err(e);
        }
        let result = tokio::select! {
            _ = self.cancel.cancelled() => Err(AgentError::Disconnected),
            r = tokio::time::timeout(timeout, rx) => match r {
                Ok(Ok(ack)) => Ok(ack),
                Ok(Err(_)) => Err(AgentError::Disconnected),
                Err(_) => Err(AgentError::Timeout(timeout)),
            },
        };
        self.forget(&id);
        result
    }

    fn forget(&self, id: &str) {
        lock(&self.pending).remove(id);
    }

    /// Hands the agent's `ack` to whoever waits for it; false when nobody does.
    pub(crate) fn resolve(&self, ref_id: &str, ack: Ack) -> bool {
        let waiter = lock(&self.pending).remove(ref_id);
        match waiter {
            Some(w) => {
                let _ = w.send(ack);
                true
            }
            None => false,
        }
    }

    /// Asks the agent to go away for `retry_after_sec`, then closes.
    pub async fn disconnect(&self, reason: &str, retry_after_sec: u64) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.send(LinkMessage::Disconnect(Disconnect {
                reason: reason.to_owned(),
                retry_after_sec,
            })),
        )
        .await;
        // Give the writer a moment to flush the disconnect before the socket goes.
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel.cancel();
        });
    }

    pub fn is_connected(&self) -> bool {
        !self.cancel.is_cancelled()
    }
}
