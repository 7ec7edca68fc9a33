//! A connected agent as the rest of the hub talks to it ([`AgentConn`]), the errors of talking
//! to it ([`AgentError`]), and how the relay finds one ([`AgentDirectory`]): the relay never
//! sees the agent endpoint or the hub, only this lookup, so another kind of directory (agents
//! held by another replica, reached through it) can stand in without the relay changing.

use crate::cluster::{CallError, Cluster};
use crate::store::HubStore;
use futures_util::future::BoxFuture;
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
    /// The agent's live connection to this process (`None`: not connected here).
    fn agent(&self, agent_id: &str) -> Option<Arc<AgentConn>>;

    /// The agent, connected here or held by another replica (reached through it).
    fn find<'a>(&'a self, agent_id: &'a str) -> BoxFuture<'a, Option<AgentRef>> {
        Box::pin(async move { self.agent(agent_id).map(AgentRef::Local) })
    }
}

/// An agent as the relay reaches it: its connection here, or through the replica holding it.
#[derive(Clone)]
pub enum AgentRef {
    Local(Arc<AgentConn>),
    Remote(Arc<RemoteAgent>),
}

/// An agent held by another replica ([`Cluster::call`] carries its frames).
pub struct RemoteAgent {
    pub agent_id: String,
    pub hostname: String,
    pub proto: u32,
    /// The replica holding it.
    pub holder: String,
    cluster: Cluster,
}

impl AgentRef {
    pub fn agent_id(&self) -> &str {
        match self {
            AgentRef::Local(c) => &c.agent_id,
            AgentRef::Remote(r) => &r.agent_id,
        }
    }

    pub fn hostname(&self) -> &str {
        match self {
            AgentRef::Local(c) => &c.hostname,
            AgentRef::Remote(r) => &r.hostname,
        }
    }

    pub fn proto(&self) -> u32 {
        match self {
            AgentRef::Local(c) => c.proto,
            AgentRef::Remote(r) => r.proto,
        }
    }

    /// The connection here (0: held by another replica).
    pub fn conn_id(&self) -> u64 {
        match self {
            AgentRef::Local(c) => c.conn_id,
            AgentRef::Remote(_) => 0,
        }
    }

    /// Sends a frame and waits (bounded, end to end) for the agent's `ack`.
    pub async fn request(
        &self,
        message: LinkMessage,
        timeout: Duration,
    ) -> Result<Ack, AgentError> {
        match self {
            AgentRef::Local(c) => c.request(message, timeout).await,
            AgentRef::Remote(r) => {
                match r
                    .cluster
                    .call(&r.holder, &r.agent_id, message, true, timeout)
                    .await
                {
                    Ok(Some(ack)) => Ok(ack),
                    // The holder answered without an ack: it could not have one.
                    Ok(None) => Err(AgentError::Disconnected),
                    Err(e) => Err(AgentError::from_call(e, timeout)),
                }
            }
        }
    }

    /// Queues a frame (through the holder: waits until it has queued it there).
    pub async fn send(&self, message: LinkMessage, timeout: Duration) -> Result<(), AgentError> {
        match self {
            AgentRef::Local(c) => c.send(message).await.map(drop),
            AgentRef::Remote(r) => r
                .cluster
                .call(&r.holder, &r.agent_id, message, false, timeout)
                .await
                .map(drop)
                .map_err(|e| AgentError::from_call(e, timeout)),
        }
    }
}

impl AgentError {
    fn from_call(e: CallError, timeout: Duration) -> AgentError {
        match e {
            CallError::Timeout(_) => AgentError::Timeout(timeout),
            CallError::Gone(_) => AgentError::Disconnected,
            CallError::Database(m) => {
                tracing::warn!(error = %m, "cannot reach an agent held by another replica");
                AgentError::Disconnected
            }
        }
    }
}

/// A change of which agents this replica holds, recorded in the cluster in order.
enum HoldChange {
    Hold(String, u64),
    Release(String, u64),
}

/// The agents connected to this hub process, by id (one connection each: a newer one
/// replaces the older). In a cluster it records which agents it holds, and finds the others
/// at the replica holding them.
#[derive(Default)]
pub struct ConnectedAgents {
    map: std::sync::Mutex<HashMap<String, Arc<AgentConn>>>,
    cluster: std::sync::OnceLock<ClusterLink>,
}

struct ClusterLink {
    cluster: Cluster,
    store: HubStore,
    holds: mpsc::UnboundedSender<HoldChange>,
}

impl ConnectedAgents {
    /// Joins the directory to a cluster: from now on its agents are recorded as held here
    /// (in the order they come and go), and agents held elsewhere are found there.
    pub fn join(&self, cluster: Cluster, store: HubStore) {
        let (holds, mut rx) = mpsc::unbounded_channel::<HoldChange>();
        let recorder = cluster.clone();
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                let (done, agent_id) = match change {
                    HoldChange::Hold(agent, conn) => (recorder.hold(&agent, conn).await, agent),
                    HoldChange::Release(agent, conn) => {
                        (recorder.release(&agent, conn).await, agent)
                    }
                };
                // Its record as the others read it changed (`connected`).
                recorder.announce(crate::cluster::ClusterNote::Agent { agent_id });
                if let Err(e) = done {
                    // The lease covers it: a hold not recorded shows the agent as not
                    // connected until its next registration; a release not recorded lapses
                    // with this replica's lease if it dies.
                    tracing::warn!(error = %e, "cluster: cannot record an agent's connection");
                }
            }
        });
        let existing: Vec<(String, u64)> = lock(&self.map)
            .values()
            .map(|c| (c.agent_id.clone(), c.conn_id))
            .collect();
        for (agent, conn) in existing {
            let _ = holds.send(HoldChange::Hold(agent, conn));
        }
        let _ = self.cluster.set(ClusterLink {
            cluster,
            store,
            holds,
        });
    }

    /// Adds a connected agent; returns the connection it replaces.
    pub fn insert(&self, conn: Arc<AgentConn>) -> Option<Arc<AgentConn>> {
        if let Some(link) = self.cluster.get() {
            let _ = link
                .holds
                .send(HoldChange::Hold(conn.agent_id.clone(), conn.conn_id));
        }
        lock(&self.map).insert(conn.agent_id.clone(), conn)
    }

    /// Removes an agent's connection if it is still `conn_id`; true when it was.
    pub fn remove(&self, agent_id: &str, conn_id: u64) -> bool {
        let removed = {
            let mut map = lock(&self.map);
            match map.get(agent_id) {
                Some(c) if c.conn_id == conn_id => {
                    map.remove(agent_id);
                    true
                }
                _ => false,
            }
        };
        if removed && let Some(link) = self.cluster.get() {
            let _ = link
                .holds
                .send(HoldChange::Release(agent_id.to_owned(), conn_id));
        }
        removed
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

    fn find<'a>(&'a self, agent_id: &'a str) -> BoxFuture<'a, Option<AgentRef>> {
        Box::pin(async move {
            if let Some(c) = self.agent(agent_id) {
                return Some(AgentRef::Local(c));
            }
            let link = self.cluster.get()?;
            let holder = match link.cluster.holder_of(agent_id).await {
                Ok(Some(h)) if h != link.cluster.replica_id() => h,
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!(agent = agent_id, error = %e, "cluster: cannot look up an agent's replica");
                    return None;
                }
            };
            let id = agent_id.to_owned();
            let record = link.store.run(move |s| s.get_agent(&id)).await.ok()??;
            Some(AgentRef::Remote(Arc::new(RemoteAgent {
                agent_id: record.agent_id,
                hostname: record.hostname,
                proto: record.proto,
                holder,
                cluster: link.cluster.clone(),
            })))
        })
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

/// Serves other replicas' calls to the agents connected here.
pub struct ServeCalls(pub std::sync::Weak<ConnectedAgents>);

impl crate::cluster::CallHandler for ServeCalls {
    fn handle(
        &self,
        agent_id: String,
        message: LinkMessage,
        want_ack: bool,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Option<Ack>, CallError>> {
        let agent = self.0.upgrade().and_then(|a| a.agent(&agent_id));
        Box::pin(async move {
            let Some(agent) = agent else {
                return Err(CallError::Gone(format!(
                    "agent {agent_id} is not connected to this replica"
                )));
            };
            let result = if want_ack {
                agent.request(message, timeout).await.map(Some)
            } else {
                agent.send(message).await.map(|_| None)
            };
            result.map_err(|e| match e {
                AgentError::Timeout(_) => CallError::Timeout(e.to_string()),
                AgentError::Disconnected | AgentError::Busy => CallError::Gone(e.to_string()),
            })
        })
    }
}
