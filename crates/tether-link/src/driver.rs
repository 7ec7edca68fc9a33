//! The tokio driver: carries out what the [`LinkMachine`] decides. It dials (tokio-tungstenite
//! with rustls), runs one reader and one writer task per connection, keeps the machine's
//! timers, moves alerts from the spool to the socket, hands session messages to
//! [`RemoteSessions`], and publishes the link's state for `/healthz` and the logs.

use crate::backoff::SeededRng;
use crate::machine::{Input, LinkMachine, Output, State, Timer};
use crate::outbox::{LinkOut, OutQueues, outbox};
use crate::remote::RemoteSessions;
use crate::spool::AlertSpool;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tether_proto::link::{
    AGENT_WS_PATH, ALERT_FRAME_OVERHEAD, AlertEvents, DiagnoseReport, HEADER_AGENT_ID,
    HEADER_AGENT_TOKEN, HEADER_PROTO_VERSION, Heartbeat, LinkDecodeError, LinkFrame, LinkMessage,
    MAX_LINK_FRAME_BYTES, Register,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Longest a single frame write may take before the connection is declared dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a dial (TCP + TLS + upgrade) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);
/// Alert frames queued per flush before waiting for them to be written.
const FLUSH_FRAMES: usize = 8;
/// Session messages waiting for the session worker.
const SESSION_BACKLOG: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("hub.url: `{0}` is not a ws:// or wss:// URL")]
    BadUrl(String),
    #[error(
        "hub.url: `{0}` is plaintext (ws://); use wss://, or set hub.allow_plaintext = true to send the token in the clear on purpose"
    )]
    Plaintext(String),
    #[error("{0}")]
    Tls(String),
    #[error("agent id: {0}")]
    AgentId(String),
}

/// TLS settings for `wss://`.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Extra CA certificates (PEM), added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The label catpaw stamps on every alert event (and the register labels) with the agent's
/// host name.
pub const FROM_HOSTNAME: &str = "from_hostname";
/// Likewise with the agent's IP address.
pub const FROM_HOSTIP: &str = "from_hostip";

/// Who the agent says it is, as catpaw does (`AgentHostname()`, `AgentIP()`): a non-empty
/// `from_hostname` / `from_hostip` in the configured labels wins; otherwise the host name and
/// the address this host uses to reach the hub. It fills `register.hostname` / `register.ip`
/// and the two labels on the register and on every alert event sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostIdentity {
    pub hostname: String,
    pub ip: String,
}

impl HostIdentity {
    /// Resolves the identity for a connection to `endpoint` (the IP can depend on the route).
    pub fn resolve(labels: &BTreeMap<String, String>, endpoint: &str) -> HostIdentity {
        let configured = |key: &str| {
            labels
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        HostIdentity {
            hostname: configured(FROM_HOSTNAME).unwrap_or_else(tether_host::host::hostname),
            ip: configured(FROM_HOSTIP)
                .or_else(|| local_ip(endpoint))
                .unwrap_or_default(),
        }
    }

    /// Sets both labels, replacing any of the same name (catpaw's engine does the same).
    pub fn stamp(&self, labels: &mut BTreeMap<String, String>) {
        labels.insert(FROM_HOSTNAME.to_owned(), self.hostname.clone());
        labels.insert(FROM_HOSTIP.to_owned(), self.ip.clone());
    }
}

/// Everything the driver needs to dial.
#[derive(Clone)]
pub struct LinkOptions {
    /// The agent endpoint, `ws(s)://host[:port]/api/v1/agent/ws`.
    pub endpoint: String,
    pub token: String,
    pub agent_id: String,
    /// 2, or 1 to speak catpaw's protocol only.
    pub offered_version: u32,
    pub labels: BTreeMap<String, String>,
    pub plugins: Vec<String>,
    pub connector: Option<Connector>,
    /// Seed for the backoff jitter (tests); from the clock when `None`.
    pub seed: Option<u64>,
}

/// Checks the URL and TLS settings at startup and returns the endpoint and connector.
/// A bare hub address gets the agent path appended.
pub fn prepare_endpoint(
    url: &str,
    allow_plaintext: bool,
    tls: &TlsOptions,
) -> Result<(String, Option<Connector>), LinkError> {
    let url = url.trim();
    let secure = if url.starts_with("wss://") {
        true
    } else if url.starts_with("ws://") {
        if !allow_plaintext {
            return Err(LinkError::Plaintext(url.to_owned()));
        }
        false
    } else {
        return Err(LinkError::BadUrl(url.to_owned()));
    };
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or("");
    if rest.is_empty() || rest.starts_with('/') {
        return Err(LinkError::BadUrl(url.to_owned()));
    }
    let endpoint = match rest.find('/') {
        None => format!("{url}{AGENT_WS_PATH}"),
        Some(i) if rest[i..] == *"/" => format!("{}{AGENT_WS_PATH}", url.trim_end_matches('/')),
        Some(_) => url.to_owned(),
    };
    let connector = if secure {
        Some(Connector::Rustls(Arc::new(tls_config(tls)?)))
    } else {
        None
    };
    Ok((endpoint, connector))
}

fn read_pem_certs(
    path: &Path,
    key: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, LinkError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| LinkError::Tls(format!("{key}: cannot read {}: {e}", path.display())))?
        .collect();
    let certs = certs.map_err(|e| LinkError::Tls(format!("{key}: {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(LinkError::Tls(format!(
            "{key}: {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// System roots plus the optional extra CA (added, not replacing), optional client cert.
fn tls_config(tls: &TlsOptions) -> Result<rustls::ClientConfig, LinkError> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs_load();
    for cert in native {
        let _ = roots.add(cert);
    }
    if let Some(ca) = &tls.ca_file {
        for cert in read_pem_certs(ca, "hub.ca_file")? {
            roots
                .add(cert)
                .map_err(|e| LinkError::Tls(format!("hub.ca_file: {}: {e}", ca.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(LinkError::Tls(
            "no trusted CA certificates: the system has none and hub.ca_file is not set".into(),
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&tls.client_cert, &tls.client_key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = read_pem_certs(cert, "hub.client_cert")?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|e| LinkError::Tls(format!("hub.client_key: {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| LinkError::Tls(format!("hub.client_cert: {e}")))
        }
        _ => Err(LinkError::Tls(
            "hub.client_cert and hub.client_key go together: set both or neither".into(),
        )),
    }
}

fn rustls_native_certs_load() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let result = rustls_native_certs::load_native_certs();
    for e in &result.errors {
        tracing::debug!(error = %e, "a system CA certificate could not be loaded");
    }
    result.certs
}

/// The agent's id: a UUID kept in `state_dir/agent_id`, created on first use.
pub fn load_or_create_agent_id(state_dir: &Path) -> Result<String, LinkError> {
    let path = state_dir.join("agent_id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            uuid::Uuid::parse_str(id).map_err(|_| {
                LinkError::AgentId(format!("{} does not hold a UUID", path.display()))
            })?;
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::now_v7().to_string();
            tether_host::perms::private_dir(state_dir)
                .and_then(|_| tether_host::perms::create_private(&path))
                .and_then(|_| std::fs::write(&path, format!("{id}\n")))
                .map_err(|e| LinkError::AgentId(format!("cannot write {}: {e}", path.display())))?;
            Ok(id)
        }
        Err(e) => Err(LinkError::AgentId(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// The link's state, for `/healthz`, metrics and logs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LinkStatus {
    pub hub: String,
    pub state: &'static str,
    pub version: Option<u32>,
    /// When the state last changed (RFC 3339).
    pub since: String,
    pub last_error: Option<String>,
    /// While backing off: how long the wait was.
    pub retry_in_ms: Option<u64>,
    pub connects: u64,
    pub registrations: u64,
    pub spool_pending: u64,
    pub dropped_alerts: u64,
    pub remote_sessions: usize,
    pub frames_in: u64,
    pub frames_out: u64,
}

/// Live figures for `heartbeat`.
pub trait HeartbeatSource: Send + Sync {
    /// Alerts currently firing.
    fn active_alerts(&self) -> u64 {
        0
    }
}

/// No checks running: no active alerts.
pub struct NoAlerts;
impl HeartbeatSource for NoAlerts {}

/// A running link.
pub struct Link {
    status: watch::Receiver<LinkStatus>,
    task: tokio::task::JoinHandle<()>,
    reports: mpsc::Sender<DiagnoseReport>,
}

/// Diagnosis reports kept while the hub is unreachable (the oldest go first).
const REPORT_BACKLOG: usize = 100;

impl Link {
    pub fn spawn(
        options: LinkOptions,
        spool: AlertSpool,
        remote: RemoteSessions,
        figures: Arc<dyn HeartbeatSource>,
        shutdown: CancellationToken,
    ) -> Link {
        let status = LinkStatus {
            hub: options.endpoint.clone(),
            state: State::Idle.name(),
            since: now(),
            ..LinkStatus::default()
        };
        let (status_tx, status_rx) = watch::channel(status);
        let (reports, reports_rx) = mpsc::channel(REPORT_BACKLOG);
        let driver = Driver {
            reports_rx,
            report_backlog: std::collections::VecDeque::new(),
            machine: LinkMachine::new(
                options.offered_version,
                options
                    .seed
                    .map_or_else(SeededRng::from_entropy, SeededRng::new),
                spool.acked(),
            ),
            options,
            spool,
            remote,
            figures,
            shutdown,
            status: status_tx,
            timers: HashMap::new(),
            conn: None,
            dialing: None,
            flush: None,
            alert_frames: AlertFrames::default(),
            cpu: CpuSampler::new(),
            started: std::time::Instant::now(),
            identity: HostIdentity::default(),
        };
        let task = tokio::spawn(driver.run());
        Link {
            status: status_rx,
            task,
            reports,
        }
    }

    /// A handle for sending diagnosis reports to the hub (version 2 only: a version-1 hub has
    /// no such message). Reports are kept while the link is down; `try_send` never blocks.
    pub fn report_sender(&self) -> mpsc::Sender<DiagnoseReport> {
        self.reports.clone()
    }

    pub fn status(&self) -> LinkStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<LinkStatus> {
        self.status.clone()
    }

    /// Waits for the link to stop (after `shutdown` fires).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A dial's outcome: the socket, or the HTTP status (when the hub answered) and the error.
type DialResult = Result<Ws, (Option<u16>, String)>;

/// What the reader reports.
enum Inbound {
    /// Boxed: a frame is large, the other reports small.
    Frame(Result<Box<LinkFrame>, LinkDecodeError>),
    /// A `session_start` whose payload did not decode: it is refused with "invalid payload"
    /// (PROTOCOL.md §2), acked by the envelope's `id`.
    InvalidSessionStart {
        id: String,
        error: LinkDecodeError,
    },
    Lost(String),
}

/// Work for a connection's session worker, in arrival order.
enum SessionWork {
    /// Boxed: a frame is large, a refusal small.
    Frame(Box<LinkFrame>),
    /// Refuse the `session_start` with this envelope id: its payload did not decode.
    InvalidStart(String),
}

/// The envelope `id` of a frame whose payload did not decode (empty when there is none).
fn envelope_id(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("id")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One live connection.
struct Conn {
    cancel: CancellationToken,
    /// Asks the writer to write what is queued, send a close frame and stop.
    closing: CancellationToken,
    out: LinkOut,
    /// Session messages, handled in order by this connection's session worker.
    sessions: mpsc::Sender<SessionWork>,
    inbound: mpsc::Receiver<Inbound>,
    writer: tokio::task::JoinHandle<u64>,
    reader: tokio::task::JoinHandle<u64>,
}

/// CPU use between heartbeats, from `/proc/stat`.
struct CpuSampler {
    last: Option<tether_host::host::CpuTimes>,
}

impl CpuSampler {
    fn new() -> Self {
        CpuSampler { last: Self::read() }
    }

    fn read() -> Option<tether_host::host::CpuTimes> {
        tether_host::host::cpu_times()
            .into_iter()
            .find(|(name, _)| name == "cpu")
            .map(|(_, t)| t)
    }

    fn sample(&mut self) -> f64 {
        let now = Self::read();
        let pct = match (&self.last, &now) {
            (Some(a), Some(b)) => tether_host::host::cpu_usage("cpu", a, b).usage_pct,
            _ => 0.0,
        };
        self.last = now;
        pct
    }
}

struct Driver {
    reports_rx: mpsc::Receiver<DiagnoseReport>,
    report_backlog: std::collections::VecDeque<DiagnoseReport>,
    machine: LinkMachine,
    options: LinkOptions,
    spool: AlertSpool,
    remote: RemoteSessions,
    figures: Arc<dyn HeartbeatSource>,
    shutdown: CancellationToken,
    status: watch::Sender<LinkStatus>,
    timers: HashMap<Timer, Instant>,
    conn: Option<Conn>,
    dialing: Option<tokio::task::JoinHandle<DialResult>>,
    /// A running alert flush: resolves with the highest seq written.
    flush: Option<tokio::task::JoinHandle<Option<u64>>>,
    /// The alert frames written on this connection, so a refusal (`ack` by `ref_id`) can be
    /// traced to the events it carried.
    alert_frames: AlertFrames,
    cpu: CpuSampler,
    started: std::time::Instant,
    /// The identity sent in this connection's `register`, stamped on its alert events.
    identity: HostIdentity,
}

async fn wait_join<T>(h: &mut Option<tokio::task::JoinHandle<T>>) -> Option<T> {
    match h {
        Some(handle) => {
            let r = handle.await.ok();
            *h = None;
            r
        }
        None => std::future::pending().await,
    }
}

impl Driver {
    fn next_timer(&self) -> Option<(Timer, Instant)> {
        self.timers
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(t, at)| (*t, *at))
    }

    async fn run(mut self) {
        self.feed(Input::Start).await;
        loop {
            let timer = self.next_timer();
            let input = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    self.feed(Input::Shutdown).await;
                    break;
                }
                dialed = wait_join(&mut self.dialing) => match dialed {
                    Some(Ok(ws)) => {
                        self.attach(ws);
                        Input::Connected
                    }
                    Some(Err((status, error))) => Input::ConnectFailed { status, error },
                    None => Input::ConnectFailed { status: None, error: "dial task failed".into() },
                },
                inbound = async {
                    match self.conn.as_mut() {
                        Some(c) => c.inbound.recv().await,
                        None => std::future::pending().await,
                    }
                } => match inbound {
                    Some(Inbound::Frame(Ok(frame))) => {
                        self.status.send_modify(|s| s.frames_in += 1);
                        self.alert_frames.refusal(&frame).unwrap_or(Input::Frame(frame))
                    }
                    Some(Inbound::Frame(Err(e))) => Input::BadFrame(e),
                    Some(Inbound::InvalidSessionStart { id, error }) => {
                        self.refuse_invalid(id).await;
                        Input::BadFrame(error)
                    }
                    Some(Inbound::Lost(e)) => Input::ConnectionLost { error: e },
                    None => Input::ConnectionLost { error: "reader stopped".into() },
                },
                written = wait_join(&mut self.flush) => Input::AlertsWritten { upto_seq: written.flatten() },
                _ = self.spool.pending() => Input::AlertsPending,
                Some(report) = self.reports_rx.recv() => {
                    if self.report_backlog.len() >= REPORT_BACKLOG {
                        self.report_backlog.pop_front();
                    }
                    self.report_backlog.push_back(report);
                    self.flush_reports().await;
                    continue;
                }
                _ = async {
                    match timer {
                        Some((_, at)) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some((t, _)) = timer else { continue };
                    self.timers.remove(&t);
                    Input::Timer(t)
                }
            };
            self.feed(input).await;
        }
        // Stopped: let the writer send its close frame, then drop everything.
        if let Some(conn) = self.conn.take() {
            self.close(conn).await;
        }
        if let Some(d) = self.dialing.take() {
            d.abort();
        }
        self.set_state(None, |s| s.retry_in_ms = None);
    }

    /// Feeds the machine and carries out its outputs (which may feed it again).
    async fn feed(&mut self, input: Input) {
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let outputs = self.machine.handle(input);
            for output in outputs {
                if let Some(follow) = self.perform(output).await {
                    queue.push_back(follow);
                }
            }
        }
        self.status.send_modify(|s| {
            s.spool_pending = self.spool.len();
            s.dropped_alerts = self.spool.dropped();
            s.remote_sessions = self.remote.active();
        });
    }

    fn set_state(&self, error: Option<String>, more: impl FnOnce(&mut LinkStatus)) {
        let state = self.machine.state();
        self.status.send_modify(|s| {
            if s.state != state.name() {
                s.since = now();
            }
            s.state = state.name();
            s.version = self.machine.version();
            if error.is_some() {
                s.last_error = error;
            }
            more(s);
        });
    }

    async fn perform(&mut self, output: Output) -> Option<Input> {
        match output {
            Output::Connect => {
                tracing::info!(hub = %self.options.endpoint, "hub link: connecting");
                self.status.send_modify(|s| s.connects += 1);
                self.set_state(None, |s| s.retry_in_ms = None);
                let options = self.options.clone();
                self.dialing = Some(tokio::spawn(dial(options)));
            }
            Output::SendRegister => {
                self.identity = HostIdentity::resolve(&self.options.labels, &self.options.endpoint);
                let register = self.register();
                if let Some(c) = &self.conn
                    && !c.out.send_control(LinkMessage::Register(register)).await
                {
                    return Some(Input::ConnectionLost {
                        error: "could not queue register".into(),
                    });
                }
                self.set_state(None, |_| {});
            }
            Output::SendHeartbeat => {
                let hb = self.heartbeat();
                if let Some(c) = &self.conn {
                    // A heartbeat that cannot be queued is skipped, like catpaw does: the
                    // next one carries fresher figures anyway.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        c.out.send_control(LinkMessage::Heartbeat(hb)),
                    )
                    .await;
                }
            }
            Output::Send(frame) => {
                if let Some(c) = &self.conn {
                    // A full queue waits for the writer, but never past the shutdown.
                    tokio::select! {
                        _ = self.shutdown.cancelled() => {}
                        _ = c.out.send_text(frame.encode()) => {}
                    }
                }
            }
            Output::SendAlerts {
                after_seq,
                max_events,
            } => match &self.conn {
                Some(c) => {
                    let flush = AlertFlush {
                        spool: self.spool.clone(),
                        out: c.out.clone(),
                        v2: self.machine.version().unwrap_or(1) >= 2,
                        frames: self.alert_frames.clone(),
                        identity: self.identity.clone(),
                    };
                    self.flush = Some(tokio::spawn(flush.run(after_seq, max_events)));
                }
                None => return Some(Input::AlertsWritten { upto_seq: None }),
            },
            Output::DeleteAlerts { upto_seq } => {
                let spool = self.spool.clone();
                let _ = tokio::task::spawn_blocking(move || spool.delete_upto(upto_seq)).await;
            }
            Output::DropAlerts { first, last } => {
                let spool = self.spool.clone();
                let _ = tokio::task::spawn_blocking(move || spool.drop_undeliverable(first, last))
                    .await;
            }
            Output::SetTimer(t, d) => {
                self.timers.insert(t, Instant::now() + d);
            }
            Output::CancelTimer(t) => {
                self.timers.remove(&t);
            }
            Output::Close => {
                if let Some(conn) = self.conn.take() {
                    self.close(conn).await;
                }
                if let Some(mut f) = self.flush.take() {
                    // With the connection gone the flush ends at once; what it wrote before
                    // still counts (version 1 must not send it twice).
                    let written = match tokio::time::timeout(Duration::from_secs(2), &mut f).await {
                        Ok(r) => r.ok().flatten(),
                        Err(_) => {
                            f.abort();
                            None
                        }
                    };
                    return Some(Input::AlertsWritten { upto_seq: written });
                }
            }
            Output::Registered { version, warning } => {
                if let Some(c) = &self.conn {
                    c.out.set_version(version);
                }
                tracing::info!(hub = %self.options.endpoint, version, "hub link: registered");
                if let Some(w) = &warning {
                    tracing::warn!(warning = %w, "hub link: the hub warned at registration");
                }
                self.status.send_modify(|s| s.registrations += 1);
                self.set_state(None, |s| s.retry_in_ms = None);
                self.flush_reports().await;
            }
            Output::Down { reason } => {
                tracing::info!(reason = %reason, "hub link: down");
                // The sessions held now; the work runs on its own.
                tokio::spawn(self.remote.on_down(&format!("hub link lost: {reason}")));
            }
            Output::Backoff { wait, reason } => {
                tracing::info!(
                    "hub link: backing off {:.1} s after {reason}",
                    wait.as_secs_f64()
                );
                self.set_state(Some(reason), |s| {
                    s.retry_in_ms = Some(wait.as_millis() as u64)
                });
            }
            Output::Deliver(frame) => {
                if let Some(c) = &self.conn {
                    // Session work never stalls the link loop: the connection's session
                    // worker handles messages in order. Waiting here is bounded by the
                    // connection's life.
                    tokio::select! {
                        _ = c.cancel.cancelled() => {}
                        _ = self.shutdown.cancelled() => {}
                        r = c.sessions.send(SessionWork::Frame(Box::new(frame))) => if r.is_err() {
                            tracing::warn!("hub link: session worker gone; message dropped");
                        },
                    }
                }
            }
            Output::Note(note) => tracing::debug!("hub link: {note}"),
        }
        None
    }

    /// Hands an undecodable `session_start` to the session worker, to be acked
    /// "invalid payload" (only while registered, like every session message).
    async fn refuse_invalid(&self, id: String) {
        if let (Some(c), Some(_)) = (&self.conn, self.machine.version()) {
            tokio::select! {
                _ = c.cancel.cancelled() => {}
                _ = self.shutdown.cancelled() => {}
                r = c.sessions.send(SessionWork::InvalidStart(id)) => if r.is_err() {
                    tracing::warn!("hub link: session worker gone; refusal dropped");
                },
            }
        }
    }

    /// Sends backlogged reports when registered with a version-2 hub.
    async fn flush_reports(&mut self) {
        if self.machine.version().unwrap_or(0) < 2 {
            return;
        }
        let Some(conn) = &self.conn else { return };
        while let Some(report) = self.report_backlog.pop_front() {
            if !conn
                .out
                .send(LinkMessage::DiagnoseReport(report.clone()))
                .await
            {
                self.report_backlog.push_front(report);
                return;
            }
        }
    }

    fn register(&self) -> Register {
        let kernel = tether_host::host::kernel();
        let mut labels = self.options.labels.clone();
        self.identity.stamp(&mut labels);
        Register {
            hostname: self.identity.hostname.clone(),
            ip: self.identity.ip.clone(),
            os: std::env::consts::OS.to_owned(),
            arch: match kernel.arch.as_str() {
                "x86_64" => "amd64".to_owned(),
                "aarch64" => "arm64".to_owned(),
                other => other.to_owned(),
            },
            labels,
            plugins: self.options.plugins.clone(),
            agent_version: format!("tether {}", env!("CARGO_PKG_VERSION")),
            uptime_sec: self.started.elapsed().as_secs() as i64,
        }
    }

    fn heartbeat(&mut self) -> Heartbeat {
        let v2 = self.machine.version().unwrap_or(1) >= 2;
        Heartbeat {
            active_sessions: self.remote.active() as u64,
            active_alerts: self.figures.active_alerts(),
            cpu_pct: Some(self.cpu.sample()),
            mem_pct: tether_host::host::memory().map(|m| m.used_pct),
            dropped_alerts: v2.then(|| self.spool.dropped()),
        }
    }

    /// Starts the reader and writer of a fresh connection.
    fn attach(&mut self, ws: Ws) {
        self.alert_frames.clear();
        let cancel = CancellationToken::new();
        let closing = CancellationToken::new();
        let (out, queues) = outbox(cancel.clone());
        let (sink, stream) = ws.split();
        let (in_tx, inbound) = mpsc::channel(256);
        let writer = tokio::spawn(write_loop(sink, queues, cancel.clone(), closing.clone()));
        let reader = tokio::spawn(read_loop(stream, in_tx, cancel.clone()));
        let (sessions, mut session_rx) = mpsc::channel::<SessionWork>(SESSION_BACKLOG);
        let remote = self.remote.clone();
        let worker_out = out.clone();
        let worker_cancel = cancel.clone();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = worker_cancel.cancelled() => break,
                    f = session_rx.recv() => match f { Some(f) => f, None => break },
                };
                match frame {
                    SessionWork::Frame(frame) => remote.handle(*frame, &worker_out).await,
                    SessionWork::InvalidStart(id) => remote.refuse_invalid(&id, &worker_out).await,
                }
            }
        });
        let status = self.status.clone();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            // Frame counts for /healthz and metrics, once the connection ends.
            c2.cancelled().await;
            status.send_modify(|_| {});
        });
        self.conn = Some(Conn {
            cancel,
            closing,
            out,
            sessions,
            inbound,
            writer,
            reader,
        });
    }

    /// Closes a connection: the writer writes what is queued and sends a close frame
    /// (bounded); alerts it could not write stay in the spool.
    async fn close(&self, conn: Conn) {
        conn.closing.cancel();
        let mut writer = conn.writer;
        let written = match tokio::time::timeout(Duration::from_secs(3), &mut writer).await {
            Ok(r) => r.unwrap_or(0),
            Err(_) => {
                writer.abort();
                0
            }
        };
        conn.cancel.cancel();
        conn.reader.abort();
        self.status.send_modify(|s| s.frames_out += written);
    }
}

/// The address this host would use to reach the hub (catpaw's `ip`).
fn local_ip(endpoint: &str) -> Option<String> {
    let host_port = endpoint.split_once("://")?.1.split('/').next()?;
    let with_port = if host_port.contains(':') && !host_port.ends_with(']') {
        host_port.to_owned()
    } else if endpoint.starts_with("wss://") {
        format!("{host_port}:443")
    } else {
        format!("{host_port}:80")
    };
    use std::net::ToSocketAddrs;
    let addr = with_port.to_socket_addrs().ok()?.next()?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(addr).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

async fn dial(options: LinkOptions) -> DialResult {
    let mut request = options
        .endpoint
        .as_str()
        .into_client_request()
        .map_err(|e| (None, e.to_string()))?;
    let headers = request.headers_mut();
    let header = |v: &str| {
        v.parse().map_err(|_| {
            (
                None,
                "a header value has characters HTTP does not allow".to_owned(),
            )
        })
    };
    headers.insert(HEADER_AGENT_TOKEN, header(&options.token)?);
    headers.insert(HEADER_AGENT_ID, header(&options.agent_id)?);
    headers.insert(
        HEADER_PROTO_VERSION,
        header(&options.offered_version.to_string())?,
    );
    // Frames up to 16 MiB are read whole; the 1 MiB limit is applied when decoding, so an
    // oversized frame is refused without dropping the connection.
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(16 << 20);
    config.max_frame_size = Some(16 << 20);
    // TCP_NODELAY: the link carries small interactive frames (pongs, acks, session events);
    // with Nagle, a frame written while the previous one is unacknowledged waits for the
    // hub's delayed ACK (40 ms on Linux).
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        options.connector.clone(),
    );
    match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
        Err(_) => Err((
            None,
            format!("no answer within {} s", DIAL_TIMEOUT.as_secs()),
        )),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            Err((Some(status), body))
        }
        Ok(Err(e)) => Err((None, e.to_string())),
    }
}

/// Writes queued frames in priority order until cancelled, then sends a close frame.
/// Returns how many frames it wrote.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut queues: OutQueues,
    cancel: CancellationToken,
    closing: CancellationToken,
) -> u64 {
    let mut written = 0u64;
    loop {
        let frame = tokio::select! {
            biased;
            _ = closing.cancelled() => match queues.try_next() {
                Some(f) => Some(f),
                None => break,
            },
            f = queues.next(&cancel) => f,
        };
        let Some(frame) = frame else { break };
        let send = sink.send(Message::Text(frame.text.into()));
        match tokio::time::timeout(WRITE_TIMEOUT, send).await {
            Ok(Ok(())) => {
                written += 1;
                if let Some(done) = frame.written {
                    let _ = done.send(());
                }
            }
            _ => {
                cancel.cancel();
                return written;
            }
        }
    }
    if !cancel.is_cancelled() {
        let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Message::Close(None))).await;
    }
    written
}

/// Reads frames until the connection ends or is cancelled. Returns frames read.
async fn read_loop(
    mut stream: futures_util::stream::SplitStream<Ws>,
    tx: mpsc::Sender<Inbound>,
    cancel: CancellationToken,
) -> u64 {
    let mut read = 0u64;
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return read,
            msg = stream.next() => msg,
        };
        let item = match msg {
            Some(Ok(Message::Text(t))) => {
                read += 1;
                match LinkFrame::decode(t.as_str()) {
                    Err(error @ LinkDecodeError::Payload { .. }) if matches!(&error, LinkDecodeError::Payload { kind, .. } if kind == "session_start") => {
                        Inbound::InvalidSessionStart {
                            id: envelope_id(t.as_str()),
                            error,
                        }
                    }
                    decoded => Inbound::Frame(decoded.map(Box::new)),
                }
            }
            Some(Ok(Message::Binary(_))) => Inbound::Frame(Err(LinkDecodeError::Envelope(
                "binary frame; the link speaks JSON text".into(),
            ))),
            Some(Ok(Message::Close(_))) | None => {
                Inbound::Lost("the hub closed the connection".into())
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => Inbound::Lost(e.to_string()),
        };
        let lost = matches!(item, Inbound::Lost(_));
        tokio::select! {
            _ = cancel.cancelled() => return read,
            r = tx.send(item) => if r.is_err() { return read; },
        }
        if lost {
            cancel.cancel();
            return read;
        }
    }
}

/// Sends spooled alerts with `seq > after_seq` in frames of at most 100 events, waiting for
/// them to be written. Returns the highest seq written.
/// Alert frames written on the current connection: envelope id → the events it carried.
#[derive(Clone, Default)]
struct AlertFrames(Arc<std::sync::Mutex<std::collections::VecDeque<SentAlertFrame>>>);

struct SentAlertFrame {
    id: String,
    first: u64,
    last: u64,
    events: usize,
}

/// Frames remembered; a refusal answers one of the last few frames written.
const ALERT_FRAMES_KEPT: usize = 256;

impl AlertFrames {
    fn record(&self, frame: SentAlertFrame) {
        let mut frames = tether_host::sync::lock(&self.0);
        if frames.len() >= ALERT_FRAMES_KEPT {
            frames.pop_front();
        }
        frames.push_back(frame);
    }

    fn clear(&self) {
        tether_host::sync::lock(&self.0).clear();
    }

    /// The machine's input for a hub `ack {ok: false}` that answers one of our alert frames.
    fn refusal(&self, frame: &LinkFrame) -> Option<Input> {
        let LinkMessage::Ack(ack) = &frame.message else {
            return None;
        };
        if ack.ok {
            return None;
        }
        let ref_id = frame.ref_id.as_deref()?;
        let mut frames = tether_host::sync::lock(&self.0);
        let at = frames.iter().position(|f| f.id == ref_id)?;
        let sent = frames.remove(at)?;
        let reason = ack.reason.as_deref().unwrap_or("");
        tracing::warn!(
            first = sent.first,
            last = sent.last,
            events = sent.events,
            reason,
            error = ack.error.as_deref().unwrap_or(""),
            "hub link: the hub refused an alert frame"
        );
        Some(Input::AlertsRefused {
            first: sent.first,
            last: sent.last,
            events: sent.events,
            retry: !matches!(
                reason,
                tether_proto::link::refused::TOO_LARGE | tether_proto::link::refused::BAD_REQUEST
            ),
        })
    }
}

/// One `SendAlerts`: spooled events into `alert_events` frames, bounded by count and by bytes.
struct AlertFlush {
    spool: AlertSpool,
    out: LinkOut,
    v2: bool,
    frames: AlertFrames,
    identity: HostIdentity,
}

impl AlertFlush {
    /// Writes up to [`FLUSH_FRAMES`] frames of events after `after_seq`; returns the highest
    /// seq written. An event too large for a frame on its own is dropped (and counted) here:
    /// no hub could take it.
    async fn run(self, after_seq: u64, max_events: usize) -> Option<u64> {
        let budget = MAX_LINK_FRAME_BYTES - ALERT_FRAME_OVERHEAD;
        let mut after = after_seq;
        let mut highest = None;
        for _ in 0..FLUSH_FRAMES {
            let s = self.spool.clone();
            let batch = tokio::task::spawn_blocking(move || s.batch(after, max_events.max(1)))
                .await
                .ok()?
                .ok()?;
            if batch.is_empty() {
                break;
            }
            let mut events = Vec::with_capacity(batch.len());
            let mut size = 0usize;
            let mut last_seq = after;
            for mut e in batch {
                let seq = e.seq.unwrap_or(last_seq);
                // Version 1 peers never see version-2 fields.
                if !self.v2 {
                    e.seq = None;
                }
                // Stamped on the way out (the spool keeps the event as raised; its alert key
                // was computed without them).
                self.identity.stamp(&mut e.labels);
                let n = serde_json::to_string(&e).map_or(usize::MAX, |t| t.len() + 1);
                if n > budget {
                    let s = self.spool.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || s.drop_undeliverable(seq, seq)).await;
                    last_seq = seq;
                    continue;
                }
                if size + n > budget && !events.is_empty() {
                    break;
                }
                size += n;
                last_seq = seq;
                events.push(e);
            }
            after = last_seq;
            if events.is_empty() {
                continue;
            }
            let id = uuid::Uuid::now_v7().to_string();
            let count = events.len();
            let first = events.first().and_then(|e| e.seq).unwrap_or(last_seq);
            let frame = LinkFrame::new(
                id.clone(),
                LinkMessage::AlertEvents(AlertEvents::new(events)),
            )
            .encode();
            if self.v2 {
                self.frames.record(SentAlertFrame {
                    id,
                    first,
                    last: last_seq,
                    events: count,
                });
            }
            let (done, written) = oneshot::channel();
            if !self.out.send_alerts(frame, done).await || written.await.is_err() {
                break;
            }
            highest = Some(last_seq);
        }
        highest
    }
}
