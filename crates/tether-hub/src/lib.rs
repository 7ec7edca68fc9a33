//! tether-hub: the central server of a fleet.
//!
//! * [`agent_conn`] — a connected agent, its errors, the directory the relay finds agents in.
//! * [`agents`] — the agent endpoint (hub side of the link protocol); [`alert_acks`] — what
//!   it may acknowledge.
//! * [`alerts`] — the alert model (lifecycle, silences); [`intake`] — Alertmanager and
//!   Grafana webhooks; [`routing`] — which host an external alert is about.
//! * [`relay`] — remote sessions: mirrors of agent sessions, fanned out to operators.
//! * [`diagnosis`] — the hub's automatic diagnosis of alerts; [`notify`] — notifications
//!   out (Slack, webhooks).
//! * [`operators`] — the client protocol at the hub, plus the fleet ops.
//! * [`server`] — routes, REST mirror, `/healthz`, `/metrics`, TLS, retention.
//! * [`console`] — the embedded web console.
//! * [`store`] — storage trait, the SQLite and PostgreSQL stores.
//! * [`tokens`] — credentials; [`config`] — settings; [`hub`] — shared state.
//!
//! **Locking policy.** Every `std::sync::Mutex` in this crate is taken through
//! [`tether_host::sync::lock`]: a lock poisoned by a panicking holder is taken over, never
//! skipped, never turned into a panic or a permanent error (the data behind each one is
//! consistent wherever a panic could unwind; see that module). No guard is held across an
//! await (clippy's `await_holding_lock`), and there are no `RwLock`s. The crate's
//! `clippy.toml` refuses any other way of taking a std lock. tokio's locks (a session's
//! ordering lock in `relay`) do not poison and are not concerned.

pub mod agent_conn;
pub mod agents;
pub mod alert_acks;
pub mod alerts;
pub mod cluster;
pub mod config;
pub mod console;
pub mod diagnosis;
pub mod hub;
pub mod intake;
pub mod link;
pub mod notify;
pub mod operators;
pub mod relay;
pub mod routing;
pub mod server;
pub mod store;
pub mod tokens;

pub use config::{
    AlertRoute, AlertSource, Clock, DiagnosisConfig, HubConfig, NotifyConfig, NotifyKind, NotifyOn,
    Operator, StoreConfig,
};
pub use hub::Hub;

use std::net::SocketAddr;
use std::sync::Arc;

/// A running hub.
pub struct RunningHub {
    pub hub: Hub,
    /// The address actually bound.
    pub local_addr: SocketAddr,
    pub tls: bool,
    stop: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl RunningHub {
    /// The console's URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.local_addr)
    }

    /// Asks agents to come back later, flushes and closes operator connections, stops.
    pub async fn stop(self) {
        self.hub.shutdown().await;
        if let Some(cluster) = self.hub.cluster() {
            // Its agents are let go at once rather than when the lease lapses.
            cluster.leave().await;
        }
        self.stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.server).await;
    }
}

/// Opens the store and serves. Fails closed on exposure: a non-loopback `listen` needs TLS
/// (unless `allow_plaintext`) and operator tokens.
pub async fn start(config: HubConfig, allow_plaintext: bool) -> Result<RunningHub, String> {
    let loopback = config.listen.ip().is_loopback();
    if !loopback && config.tls.is_none() && !allow_plaintext {
        return Err(format!(
            "refusing to listen on {} without TLS: set tls_cert and tls_key (or allow_plaintext = true to send tokens in the clear on purpose)",
            config.listen
        ));
    }
    if !loopback && config.operators.is_empty() {
        return Err(format!(
            "refusing to listen on {} without operator tokens: add [[operators]]",
            config.listen
        ));
    }
    // The store holds credentials' hashes, alerts and transcripts: the owner's only.
    let dir = &config.state_dir;
    match tether_host::perms::private_dir(dir) {
        Ok(Some(w)) => tracing::warn!("state_dir: {w}"),
        Ok(None) => {}
        Err(e) => return Err(format!("state_dir: cannot create {}: {e}", dir.display())),
    }
    let loose = tether_host::perms::tighten_files_in(dir).map_err(|e| {
        format!(
            "state_dir: cannot restrict the files in {}: {e}",
            dir.display()
        )
    })?;
    for w in loose {
        tracing::warn!("state_dir: {w}");
    }
    // Opened on the blocking pool: a PostgreSQL store connects and migrates there.
    let opened = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || store::open_store(&config))
            .await
            .map_err(|e| format!("store: cannot open: {e}"))?
    };
    start_with_store(config, opened.map_err(|e| e.to_string())?).await
}

/// Serves on `store` (already opened; `config.state_dir` is not read for it). [`start`]'s
/// exposure checks are the caller's.
pub async fn start_with_store(
    config: HubConfig,
    store: Arc<dyn store::Store>,
) -> Result<RunningHub, String> {
    let tls = match &config.tls {
        Some((cert, key)) => Some(server::tls_config(cert, key)?),
        None => None,
    };
    let store = store::HubStore::new(store);
    store
        .run(|s| s.mark_all_disconnected())
        .await
        .map_err(|e| e.to_string())?;
    let hub = Hub::new(config.clone(), store)?;
    let stop = tokio_util::sync::CancellationToken::new();
    if let config::StoreConfig::Postgres(settings) = &config.store {
        // A hub on PostgreSQL is a replica, alone or not: it holds its agents under a lease
        // and hears the others through the database.
        // Bounded as the store's calls are: on the server, and (in `Cluster`) on the client.
        let pg = settings.client_config("tether-hub cluster");
        let name = format!("{}:{}", tether_host::host::hostname(), config.listen.port());
        let cluster = cluster::Cluster::join(
            pg,
            cluster::ClusterConfig {
                lease: settings.replica_lease,
                name,
                query_timeout: settings.query_timeout,
            },
        )
        .await
        .map_err(|e| format!("store: cannot join the other hub replicas: {e}"))?;
        hub.join_cluster(cluster, stop.clone());
    }
    hub.relay().recover().await;
    let tcp =
        listen(config.listen).map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local_addr = tcp.local_addr().map_err(|e| e.to_string())?;
    hub.set_local_addr(local_addr);
    let router = server::router(hub.clone());
    let shutdown = hub.closing();
    // A whole fleet reconnects at once after a hub restart, each agent through a TLS
    // handshake: allow more of them in flight than an agent's listener does.
    let limits = tether_transport::serve::ServeLimits {
        max_pending: MAX_PENDING,
        ..Default::default()
    };
    let server = match tls.clone() {
        Some(tls) => {
            let tls = server::Tls(tokio_rustls::TlsAcceptor::from(tls));
            tokio::spawn(async move {
                let _ = tether_transport::serve::serve(tcp, router, tls, limits, shutdown).await;
            })
        }
        None => tokio::spawn(async move {
            let plain = tether_transport::serve::Plain;
            let _ = tether_transport::serve::serve(tcp, router, plain, limits, shutdown).await;
        }),
    };
    server::spawn_retention(hub.clone(), stop.clone());
    tokens::spawn_revocation_watch(hub.clone(), stop.clone());
    operators::spawn_silence_watch(hub.clone(), stop.clone());
    if let Some(cfg) = config.diagnosis.clone() {
        diagnosis::AutoDiagnosis::new(hub.clone(), cfg).spawn(stop.clone());
    }
    notify::spawn(hub.clone(), stop.clone());
    Ok(RunningHub {
        hub,
        local_addr,
        tls: tls.is_some(),
        stop,
        server,
    })
}

/// Connections that may be in their TLS handshake or HTTP request at once.
const MAX_PENDING: usize = 1024;

/// How many connections may wait to be accepted. A whole fleet dials back at once after a
/// hub restart; with tokio's default of 128 the overflow is dropped and each dropped agent
/// loses a second to its SYN retry (measured with `tether-bench hub`). The kernel caps it
/// at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted hub can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}
