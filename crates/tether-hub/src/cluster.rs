//! Several hub replicas on one PostgreSQL: who holds which agent, and what replicas tell each
//! other.
//!
//! Everything goes through the database, so replicas need no addresses of each other and sit
//! behind any TCP load balancer:
//!
//! * **Leases.** Each replica has a row in `hub_replicas` whose `lease_until_ms` it renews
//!   every third of the lease (database clock, so replicas' clocks do not matter). An agent a
//!   replica holds is a row in `agent_holders`; a holder whose lease lapsed counts as gone, so
//!   its agents show as disconnected everywhere. A replica that cannot renew for a whole lease
//!   says so ([`Cluster::lease_lost`]) and the hub drops its agents, which reconnect elsewhere.
//! * **Notes.** Small notifications on one `LISTEN/NOTIFY` channel, carrying ids only: "the
//!   events of session S are committed up to seq N", "alert A changed", "agent X is now held by
//!   replica R", "call N is for you", "call N has its reply". Bodies are read from the store.
//! * **Calls.** A replica reaches an agent held by another by writing the link message into
//!   `replica_calls` and notifying the holder, which sends it to its agent and writes the ack
//!   back. The caller waits with a deadline; a call nobody answers is a typed
//!   [`CallError::Timeout`], an agent that is not there any more [`CallError::Gone`].
//!
//! A notification is lost when the listening connection drops. The cluster then reconnects and
//! sends [`ClusterNote::Resync`], on which followers re-read what they follow from the store,
//! and replies to calls still waiting are fetched from their rows.

use crate::alerts::{AlertState, Change};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_host::sync::lock;
use tether_proto::link::{Ack, LinkFrame, LinkMessage};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;

/// The one channel replicas talk on.
pub const CHANNEL: &str = "tether_hub";

/// Notes announced but not yet sent that a replica holds (the database is slow or away).
const OUTGOING_BACKLOG: usize = 65_536;

/// How many notes a consumer may fall behind before it misses some (and resyncs).
const NOTES_BACKLOG: usize = 16384;

/// What replicas tell each other (the payload of a notification: ids, never bodies).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum ClusterNote {
    /// Events of a session are committed up to `seq` (by the replica holding its agent).
    Events { session_id: String, seq: u64 },
    /// An alert changed (committed).
    Alert {
        alert_id: i64,
        change: Change,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<AlertState>,
    },
    /// An agent's record changed (registered, went, heartbeat): re-read it.
    Agent { agent_id: String },
    /// An agent registered at `replica`: any other replica still holding a connection for it
    /// closes that one.
    Held { agent_id: String, replica: String },
    /// Call `call_id` is for replica `to`.
    Call { call_id: i64, to: String },
    /// Call `call_id`, made by replica `to`, has its reply.
    Reply { call_id: i64, to: String },
    /// Not sent: delivered locally after the listening connection was re-established, since
    /// notes may have been missed meanwhile.
    Resync,
}

/// Why a call to an agent held by another replica failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", content = "message", rename_all = "snake_case")]
pub enum CallError {
    /// No answer within the deadline (the holder or its agent is slow, or the holder died).
    #[error("no answer within the deadline: {0}")]
    Timeout(String),
    /// The agent is not connected to the replica asked (any more).
    #[error("the agent is not connected: {0}")]
    Gone(String),
    /// The database could not carry the call.
    #[error("cluster: {0}")]
    Database(String),
}

/// How a replica serves calls for its agents.
pub trait CallHandler: Send + Sync {
    /// Sends `message` to agent `agent_id` held here; with `want_ack`, waits (at most
    /// `timeout`) for the agent's ack.
    fn handle(
        &self,
        agent_id: String,
        message: LinkMessage,
        want_ack: bool,
        timeout: Duration,
    ) -> futures_util::future::BoxFuture<'static, Result<Option<Ack>, CallError>>;
}

/// The cluster's settings.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// How long a replica's hold on its agents lasts without renewal.
    pub lease: Duration,
    /// A name for logs and `/metrics` (the host name by default).
    pub name: String,
    /// The longest any of its database calls may take (the store's `query_timeout`).
    pub query_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            lease: Duration::from_secs(15),
            name: String::new(),
            query_timeout: Duration::from_secs(10),
        }
    }
}

/// A notification's payload: the note with its sender (`"r"`).
fn encode(origin: &str, note: &ClusterNote) -> Result<String, ClusterError> {
    let mut value = serde_json::to_value(note).map_err(|e| ClusterError(e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("r".into(), serde_json::Value::String(origin.to_owned()));
    }
    Ok(value.to_string())
}

fn decode(payload: &str) -> Option<(String, ClusterNote)> {
    let mut value: serde_json::Value = serde_json::from_str(payload).ok()?;
    let origin = value.as_object_mut()?.remove("r")?;
    let origin = origin.as_str()?.to_owned();
    Some((origin, serde_json::from_value(value).ok()?))
}

/// Database time in unix milliseconds (leases are judged by one clock).
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// This replica's place in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    replica_id: String,
    config: ClusterConfig,
    pg: tokio_postgres::Config,
    /// The connection for queries and `NOTIFY` (replaced when it drops).
    client: tokio::sync::RwLock<Option<Arc<Client>>>,
    notes: broadcast::Sender<Arc<ClusterNote>>,
    handler: std::sync::OnceLock<Arc<dyn CallHandler>>,
    /// Calls this replica made, waiting for their reply notification.
    waiting: Mutex<HashMap<i64, oneshot::Sender<()>>>,
    lease_ok: watch::Sender<bool>,
    /// Notes [`Cluster::announce`]d, sent in order by one task.
    outgoing: mpsc::Sender<ClusterNote>,
    cancel: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
#[error("cluster: {0}")]
pub struct ClusterError(pub String);

impl From<tokio_postgres::Error> for ClusterError {
    fn from(e: tokio_postgres::Error) -> Self {
        ClusterError(e.to_string())
    }
}

impl Cluster {
    /// Joins the cluster: takes a lease, starts listening and renewing. Its tables come with
    /// the PostgreSQL store's migrations (open the store first). Fails when the database
    /// cannot be reached.
    pub async fn join(
        pg: tokio_postgres::Config,
        config: ClusterConfig,
    ) -> Result<Cluster, ClusterError> {
        let replica_id = uuid::Uuid::now_v7().simple().to_string();
        let (notes, _) = broadcast::channel(NOTES_BACKLOG);
        let (lease_ok, _) = watch::channel(true);
        let (outgoing, mut to_send) = mpsc::channel::<ClusterNote>(OUTGOING_BACKLOG);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                replica_id,
                config,
                pg,
                client: tokio::sync::RwLock::new(None),
                notes,
                handler: std::sync::OnceLock::new(),
                waiting: Mutex::new(HashMap::new()),
                lease_ok,
                outgoing,
                cancel: CancellationToken::new(),
            }),
        };
        let client = cluster.connect(false).await?;
        let lease_ms = cluster.lease_ms();
        client
            .execute(
                &format!(
                    "INSERT INTO hub_replicas (replica_id, name, started_ms, lease_until_ms)
                     VALUES ($1, $2, {DB_NOW_MS}, {DB_NOW_MS} + $3)"
                ),
                &[
                    &cluster.inner.replica_id,
                    &cluster.inner.config.name,
                    &lease_ms,
                ],
            )
            .await?;
        tokio::spawn(cluster.clone().renew_loop());
        let sender = Arc::downgrade(&cluster.inner);
        tokio::spawn(async move {
            while let Some(note) = to_send.recv().await {
                let Some(inner) = sender.upgrade() else {
                    return;
                };
                if let Err(e) = (Cluster { inner }).publish(&note).await {
                    // The others miss it until they resync (their listening connection drops
                    // too when the database is away).
                    tracing::warn!(error = %e, "cluster: cannot send a note");
                }
            }
        });
        Ok(cluster)
    }

    /// Runs a database call within `query_timeout` (a dead connection or a stuck server
    /// never holds an operator's op or the notes for longer).
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.inner.config.query_timeout, call).await {
            Ok(r) => r.map_err(|e| ClusterError(format!("{what}: {}", e.0))),
            Err(_) => Err(ClusterError(format!(
                "{what}: no answer within {:?} (store.query_timeout)",
                self.inner.config.query_timeout
            ))),
        }
    }

    /// This replica's id (fresh at every start).
    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    fn lease_ms(&self) -> i64 {
        self.inner.config.lease.as_millis() as i64
    }

    /// Serves calls for this replica's agents.
    pub fn set_handler(&self, handler: Arc<dyn CallHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    /// Every note from the other replicas (and [`ClusterNote::Resync`]).
    pub fn notes(&self) -> broadcast::Receiver<Arc<ClusterNote>> {
        self.inner.notes.subscribe()
    }

    /// `false` once the lease could not be renewed for a whole lease (other replicas now
    /// count this one's agents as gone); `true` again after a renewal.
    pub fn lease_ok(&self) -> watch::Receiver<bool> {
        self.inner.lease_ok.subscribe()
    }

    /// Leaves the cluster: stops renewing and listening, gives up the lease and the agents.
    pub async fn leave(&self) {
        self.inner.cancel.cancel();
        if let Ok(c) = self.client().await {
            let _ = c
                .execute(
                    "DELETE FROM agent_holders WHERE replica_id = $1",
                    &[&self.inner.replica_id],
                )
                .await;
            let _ = c
                .execute(
                    "DELETE FROM hub_replicas WHERE replica_id = $1",
                    &[&self.inner.replica_id],
                )
                .await;
        }
    }

    /// Opens the connection, starts reading its notifications, and `LISTEN`s. After a
    /// reconnection (`resync`), tells consumers that notes may have been missed.
    async fn connect(&self, resync: bool) -> Result<Arc<Client>, ClusterError> {
        let (client, mut connection) = self.inner.pg.connect(NoTls).await?;
        let client = Arc::new(client);
        let me = Arc::downgrade(&self.inner);
        let (dead_tx, dead_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                let Ok(message) = message else { break };
                let AsyncMessage::Notification(n) = message else {
                    continue;
                };
                let Some(inner) = me.upgrade() else { break };
                Cluster { inner }.on_notification(n.payload());
            }
            let _ = dead_tx.send(());
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        *self.inner.client.write().await = Some(client.clone());
        let cluster = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cluster.inner.cancel.cancelled() => {}
                _ = dead_rx => {
                    tracing::warn!("cluster: the database connection dropped; reconnecting");
                    cluster.reconnect_loop().await;
                }
            }
        });
        if resync {
            self.after_resync(&client).await;
        }
        Ok(client)
    }

    /// Reconnects with backoff (1 s doubling to 10 s) until it works or the cluster is left.
    /// (Boxed with an explicit `Send`: it and `connect` spawn each other.)
    fn reconnect_loop(self) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            *self.inner.client.write().await = None;
            let mut delay = Duration::from_secs(1);
            loop {
                tokio::select! {
                    _ = self.inner.cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                match self.connect(true).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: cannot reconnect to the database");
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
        })
    }

    /// Notes may have been missed: consumers re-read, and calls whose reply was written
    /// meanwhile are woken.
    async fn after_resync(&self, client: &Client) {
        let _ = self.inner.notes.send(Arc::new(ClusterNote::Resync));
        let waiting: Vec<i64> = lock(&self.inner.waiting).keys().copied().collect();
        if waiting.is_empty() {
            return;
        }
        let Ok(rows) = client
            .query(
                "SELECT call_id FROM replica_calls WHERE call_id = ANY($1) AND reply IS NOT NULL",
                &[&waiting],
            )
            .await
        else {
            return;
        };
        for row in rows {
            let call_id: i64 = row.get(0);
            if let Some(w) = lock(&self.inner.waiting).remove(&call_id) {
                let _ = w.send(());
            }
        }
    }

    async fn client(&self) -> Result<Arc<Client>, ClusterError> {
        self.inner
            .client
            .read()
            .await
            .clone()
            .ok_or_else(|| ClusterError("the database connection is down".into()))
    }

    fn on_notification(&self, payload: &str) {
        let Some((origin, note)) = decode(payload) else {
            tracing::warn!(
                payload,
                "cluster: a notification this replica does not understand"
            );
            return;
        };
        if origin == self.inner.replica_id {
            return; // its own, heard back: it acted already
        }
        match &note {
            ClusterNote::Call { call_id, to } if *to == self.inner.replica_id => {
                let cluster = self.clone();
                let call_id = *call_id;
                tokio::spawn(async move { cluster.serve_call(call_id).await });
            }
            ClusterNote::Call { .. } => {}
            ClusterNote::Reply { call_id, to } if *to == self.inner.replica_id => {
                if let Some(w) = lock(&self.inner.waiting).remove(call_id) {
                    let _ = w.send(());
                }
            }
            ClusterNote::Reply { .. } => {}
            _ => {
                let _ = self.inner.notes.send(Arc::new(note));
            }
        }
    }

    /// Tells every other replica, soon, without waiting: notes announced go out in the order
    /// they were announced.
    pub fn announce(&self, note: ClusterNote) {
        if self.inner.outgoing.try_send(note).is_err() {
            // The database has not taken notes for a while: this one is dropped rather than
            // held without bound. Followers catch up on the session's next note; subscribers
            // elsewhere miss this alert/agent change until they list again.
            tracing::warn!("cluster: {OUTGOING_BACKLOG} notes wait for the database; dropped one");
        }
    }

    /// Tells every other replica, now.
    pub async fn publish(&self, note: &ClusterNote) -> Result<(), ClusterError> {
        self.bounded("notify", async {
            let payload = encode(&self.inner.replica_id, note)?;
            self.client()
                .await?
                .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                .await?;
            Ok(())
        })
        .await
    }

    /// Records that this replica holds `agent_id` on connection `conn_id` and tells the
    /// others (a replica still holding an older connection of it closes that).
    pub async fn hold(&self, agent_id: &str, conn_id: u64) -> Result<(), ClusterError> {
        self.bounded("record a hold", async {
            let c = self.client().await?;
            c.execute(
                &format!(
                    "INSERT INTO agent_holders (agent_id, replica_id, conn_id, since_ms)
                     VALUES ($1, $2, $3, {DB_NOW_MS})
                     ON CONFLICT (agent_id) DO UPDATE
                     SET replica_id = EXCLUDED.replica_id, conn_id = EXCLUDED.conn_id,
                         since_ms = EXCLUDED.since_ms"
                ),
                &[&agent_id, &self.inner.replica_id, &(conn_id as i64)],
            )
            .await?;
            self.publish(&ClusterNote::Held {
                agent_id: agent_id.to_owned(),
                replica: self.inner.replica_id.clone(),
            })
            .await
        })
        .await
    }

    /// Connection `conn_id` of `agent_id` went (nothing changes when another connection or
    /// replica holds it by now).
    pub async fn release(&self, agent_id: &str, conn_id: u64) -> Result<(), ClusterError> {
        self.bounded("release a hold", async {
            self.client()
                .await?
                .execute(
                    "DELETE FROM agent_holders WHERE agent_id = $1 AND replica_id = $2 AND conn_id = $3",
                    &[&agent_id, &self.inner.replica_id, &(conn_id as i64)],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// The replica holding `agent_id` under a live lease, if any.
    pub async fn holder_of(&self, agent_id: &str) -> Result<Option<String>, ClusterError> {
        self.bounded("look up a holder", async {
            let row = self
                .client()
                .await?
                .query_opt(
                    &format!(
                        "SELECT h.replica_id FROM agent_holders h
                         JOIN hub_replicas r ON r.replica_id = h.replica_id
                         WHERE h.agent_id = $1 AND r.lease_until_ms > {DB_NOW_MS}"
                    ),
                    &[&agent_id],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    /// Every agent held under a live lease, with its replica.
    pub async fn held_agents(&self) -> Result<HashMap<String, String>, ClusterError> {
        self.bounded("read the holds", async {
            let rows = self
                .client()
                .await?
                .query(
                    &format!(
                        "SELECT h.agent_id, h.replica_id FROM agent_holders h
                         JOIN hub_replicas r ON r.replica_id = h.replica_id
                         WHERE r.lease_until_ms > {DB_NOW_MS}"
                    ),
                    &[],
                )
                .await?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .await
    }

    /// Replicas with a live lease: (replica_id, name).
    pub async fn replicas(&self) -> Result<Vec<(String, String)>, ClusterError> {
        self.bounded("read the replicas", async {
            let rows = self
                .client()
                .await?
                .query(
                    &format!(
                        "SELECT replica_id, name FROM hub_replicas
                         WHERE lease_until_ms > {DB_NOW_MS} ORDER BY started_ms"
                    ),
                    &[],
                )
                .await?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .await
    }

    /// Sends `message` to `agent_id`, held by replica `holder`; with `want_ack`, returns the
    /// agent's ack. Bounded by `timeout` end to end.
    pub async fn call(
        &self,
        holder: &str,
        agent_id: &str,
        message: LinkMessage,
        want_ack: bool,
        timeout: Duration,
    ) -> Result<Option<Ack>, CallError> {
        // The agent's own deadline, plus the database's for the round trips around it.
        let whole = timeout + self.inner.config.query_timeout;
        match tokio::time::timeout(
            whole,
            self.call_unbounded(holder, agent_id, message, want_ack, timeout),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(format!(
                "agent {agent_id} (held by another hub replica): no answer within {whole:?}"
            ))),
        }
    }

    async fn call_unbounded(
        &self,
        holder: &str,
        agent_id: &str,
        message: LinkMessage,
        want_ack: bool,
        timeout: Duration,
    ) -> Result<Option<Ack>, CallError> {
        let db = |e: tokio_postgres::Error| CallError::Database(e.to_string());
        let frame = LinkFrame::new(String::new(), message).encode();
        let client = self.client().await.map_err(|e| CallError::Database(e.0))?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO replica_calls
                     (to_replica, from_replica, agent_id, frame, want_ack, timeout_ms, created_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, {DB_NOW_MS}) RETURNING call_id"
                ),
                &[
                    &holder,
                    &self.inner.replica_id,
                    &agent_id,
                    &frame,
                    &want_ack,
                    &(timeout.as_millis() as i64),
                ],
            )
            .await
            .map_err(db)?;
        let call_id: i64 = row.get(0);
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.waiting).insert(call_id, tx);
        let notified = self
            .publish(&ClusterNote::Call {
                call_id,
                to: holder.to_owned(),
            })
            .await;
        let result = match notified {
            Err(e) => Err(CallError::Database(e.0)),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(_) => self.take_reply(call_id).await,
                Err(_) => Err(CallError::Timeout(format!(
                    "agent {agent_id} (held by another hub replica) did not answer within {} s",
                    timeout.as_secs()
                ))),
            },
        };
        lock(&self.inner.waiting).remove(&call_id);
        if matches!(result, Err(CallError::Timeout(_))) {
            let _ = client
                .execute("DELETE FROM replica_calls WHERE call_id = $1", &[&call_id])
                .await;
        }
        result
    }

    /// Reads and removes a call's reply (woken by its notification or a resync).
    async fn take_reply(&self, call_id: i64) -> Result<Option<Ack>, CallError> {
        let client = self.client().await.map_err(|e| CallError::Database(e.0))?;
        let row = client
            .query_opt(
                "DELETE FROM replica_calls WHERE call_id = $1 AND reply IS NOT NULL RETURNING reply",
                &[&call_id],
            )
            .await
            .map_err(|e| CallError::Database(e.to_string()))?;
        let Some(row) = row else {
            return Err(CallError::Database(
                "the reply of a call went missing".into(),
            ));
        };
        let reply: String = row.get(0);
        serde_json::from_str::<Result<Option<Ack>, CallError>>(&reply)
            .map_err(|e| CallError::Database(format!("an unreadable reply: {e}")))?
    }

    /// Runs a call addressed to this replica and writes its reply.
    async fn serve_call(&self, call_id: i64) {
        let Ok(client) = self.client().await else {
            return;
        };
        let row = self
            .bounded("read a call", async {
                Ok(client
                    .query_opt(
                        "SELECT agent_id, frame, want_ack, timeout_ms, from_replica FROM replica_calls
                         WHERE call_id = $1 AND to_replica = $2 AND reply IS NULL",
                        &[&call_id, &self.inner.replica_id],
                    )
                    .await?)
            })
            .await;
        let Ok(Some(row)) = row else { return };
        let agent_id: String = row.get(0);
        let frame: String = row.get(1);
        let want_ack: bool = row.get(2);
        let timeout = Duration::from_millis(row.get::<_, i64>(3).max(0) as u64);
        let from: String = row.get(4);
        let result = match (LinkFrame::decode(&frame), self.inner.handler.get()) {
            (Err(e), _) => Err(CallError::Database(format!("an unreadable call: {e}"))),
            (Ok(_), None) => Err(CallError::Gone(format!(
                "agent {agent_id} is not connected to this replica"
            ))),
            (Ok(f), Some(h)) => h.handle(agent_id, f.message, want_ack, timeout).await,
        };
        let reply = serde_json::to_string(&result).unwrap_or_else(|e| {
            format!("{{\"Err\":{{\"error\":\"database\",\"message\":\"{e}\"}}}}")
        });
        let written = self
            .bounded("answer a call", async {
                Ok(client
                    .execute(
                        "UPDATE replica_calls SET reply = $2 WHERE call_id = $1",
                        &[&call_id, &reply],
                    )
                    .await?)
            })
            .await;
        if written.is_ok() {
            let _ = self
                .publish(&ClusterNote::Reply { call_id, to: from })
                .await;
        }
    }

    /// Renews the lease every third of it; past a whole lease without renewal, says the lease
    /// is lost. Also sweeps what dead replicas and timed-out calls left behind.
    async fn renew_loop(self) {
        let every = self.inner.config.lease / 3;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.bounded("renew the lease", self.renew()).await {
                Ok(()) => {
                    last_ok = tokio::time::Instant::now();
                    self.inner
                        .lease_ok
                        .send_if_modified(|ok| !std::mem::replace(ok, true));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: cannot renew the lease");
                    if last_ok.elapsed() >= self.inner.config.lease {
                        self.inner
                            .lease_ok
                            .send_if_modified(|ok| std::mem::replace(ok, false));
                    }
                }
            }
        }
    }

    async fn renew(&self) -> Result<(), ClusterError> {
        let c = self.client().await?;
        let lease_ms = self.lease_ms();
        let renewed = c
            .execute(
                &format!(
                    "UPDATE hub_replicas SET lease_until_ms = {DB_NOW_MS} + $2
                     WHERE replica_id = $1"
                ),
                &[&self.inner.replica_id, &lease_ms],
            )
            .await?;
        if renewed == 0 {
            // Swept away after a long outage: join again under the same id.
            c.execute(
                &format!(
                    "INSERT INTO hub_replicas (replica_id, name, started_ms, lease_until_ms)
                     VALUES ($1, $2, {DB_NOW_MS}, {DB_NOW_MS} + $3) ON CONFLICT DO NOTHING"
                ),
                &[&self.inner.replica_id, &self.inner.config.name, &lease_ms],
            )
            .await?;
        }
        // Replicas dead for ten leases, their holds, and calls nobody collected.
        c.batch_execute(&format!(
            "DELETE FROM agent_holders h USING hub_replicas r
               WHERE r.replica_id = h.replica_id AND r.lease_until_ms < {DB_NOW_MS} - {l};
             DELETE FROM agent_holders h
               WHERE NOT EXISTS (SELECT 1 FROM hub_replicas r WHERE r.replica_id = h.replica_id);
             DELETE FROM hub_replicas WHERE lease_until_ms < {DB_NOW_MS} - {l};
             DELETE FROM replica_calls WHERE created_ms + timeout_ms < {DB_NOW_MS} - {l};",
            l = lease_ms * 10
        ))
        .await?;
        Ok(())
    }
}
