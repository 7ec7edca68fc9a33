//! `tether-bench fanout --open`: fan-out on the real path, open loop, against the raw ceiling
//! measured in the same run.
//!
//! * **real** — a real `tether agent` process (the binary next to this executable, or
//!   `--tether`), event log on disk in a temporary directory, loopback-open listener, the
//!   scripted model with one response of `--frames` words and no chunk delay: it streams as
//!   fast as the turn loop takes it. N WebSocket clients connect; the first creates a session,
//!   all attach, the first sends `input`, and every client reads the turn's `text_delta` frames.
//!   Nothing paces the model but the mux itself (no credit window). The model outruns N
//!   sockets by far, so with the default `client_queue` (1024) clients that share the CPU
//!   with the agent get evicted mid-run (hard rule 5); the bench sets `[sessions]
//!   client_queue` to the run's frames + 1024 (`--client-queue` overrides it), so the
//!   figure is the path's throughput, and an eviction still fails the run, saying so.
//! * **raw** — the ceiling: a bare axum WebSocket endpoint (the same WebSocket library and
//!   socket settings as the agent's `/v1/ws`) in a process of its own (this executable's
//!   hidden `raw-server` command, so the clients' process is the same in both) that writes the same number of
//!   `text_delta` event frames, of the same size (encoded like the agent's, once, before the
//!   run), to each of the N sockets as fast as each socket takes them: a frame is fed, and
//!   the socket is flushed every 64 frames and at the end.
//!
//! Every client reads and counts every frame, checks that event `seq`s are contiguous (no
//! event lost, duplicated or reordered) and that it got exactly `--frames` deltas. The figure
//! is frames delivered over all clients per second, from the first delta received by any
//! client to the last delta received by the last client. Real and raw runs alternate; each
//! N prints the medians and the ratio real/raw of the medians.

use crate::client::{self, Requester, Ws};
use crate::hub_load::hub_proc::{http_get, proc_cpu_s, signal};
use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message as AxMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tether_proto::{Event, EventBody, SessionId, TurnId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

/// The word the scripted model streams: one `text_delta` per word.
const WORD: &str = "word ";

/// Frames the raw server feeds before each flush.
const RAW_FLUSH_EVERY: usize = 64;

/// What `fanout --open` measures.
#[derive(Clone, Debug)]
pub struct OpenArgs {
    pub clients: Vec<usize>,
    /// Text deltas per run [default: 4 000 000 / N, between 4 000 and 200 000].
    pub frames: Option<u64>,
    pub runs: usize,
    /// The `tether` binary [default: the one next to this executable].
    pub tether: Option<PathBuf>,
    /// The agent's `[sessions] client_queue` [default: the run's frames + 1024].
    pub client_queue: Option<usize>,
    pub real_only: bool,
    pub raw_only: bool,
    pub json: bool,
}

fn default_frames(clients: usize) -> u64 {
    (4_000_000 / clients.max(1) as u64).clamp(4_000, 200_000)
}

/// One run's result.
#[derive(Clone, Debug, Serialize)]
struct OpenRun {
    elapsed_s: f64,
    frames_per_s: f64,
    /// CPU seconds of the server process (the agent, or the raw server) per million frames.
    server_cpu_s_per_mframe: Option<f64>,
}

#[derive(Serialize)]
struct OpenRow {
    clients: usize,
    frames: u64,
    real_frames_per_s: Option<f64>,
    raw_frames_per_s: Option<f64>,
    /// Median real over median raw.
    ratio: Option<f64>,
    real_runs: Vec<OpenRun>,
    raw_runs: Vec<OpenRun>,
}

#[derive(Serialize)]
struct OpenReport {
    bench: &'static str,
    runs: usize,
    results: Vec<OpenRow>,
}

pub async fn run(args: OpenArgs) -> anyhow::Result<()> {
    let bin = match &args.tether {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .context("this executable has no parent directory")?
            .join("tether"),
    };
    if !args.raw_only && !bin.is_file() {
        bail!(
            "no tether binary at {} (build it: cargo build --release -p tether, or pass --tether)",
            bin.display()
        );
    }
    if let Err(e) = tether_transport::raise_open_files_limit() {
        client::note(&format!("cannot raise the open-files limit: {e}"));
    }
    let mut results = Vec::new();
    for &n in &args.clients {
        if n == 0 {
            continue;
        }
        let frames = args.frames.unwrap_or_else(|| default_frames(n)).max(1);
        let agent = if args.raw_only {
            None
        } else {
            let queue = args.client_queue.unwrap_or_else(|| {
                usize::try_from(frames)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1024)
            });
            Some(AgentProc::start(&bin, frames, n, queue).await?)
        };
        let mut real_runs = Vec::new();
        let mut raw_runs = Vec::new();
        for run in 1..=args.runs {
            if let Some(agent) = &agent {
                let r = agent
                    .run(n, frames)
                    .await
                    .with_context(|| format!("real run {run} with {n} clients"))?;
                note_run(n, run, "real", &r);
                real_runs.push(r);
            }
            if !args.real_only {
                let r = raw_run(n, frames)
                    .await
                    .with_context(|| format!("raw run {run} with {n} clients"))?;
                note_run(n, run, "raw", &r);
                raw_runs.push(r);
            }
        }
        if let Some(agent) = agent {
            agent.stop().await;
        }
        let med = |runs: &[OpenRun]| {
            (!runs.is_empty()).then(|| crate::median(runs.iter().map(|r| r.frames_per_s).collect()))
        };
        let real = med(&real_runs);
        let raw = med(&raw_runs);
        let ratio = match (real, raw) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        results.push(OpenRow {
            clients: n,
            frames,
            real_frames_per_s: real,
            raw_frames_per_s: raw,
            ratio,
            real_runs,
            raw_runs,
        });
    }
    let report = OpenReport {
        bench: "fanout --open",
        runs: args.runs,
        results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn note_run(n: usize, run: usize, what: &str, r: &OpenRun) {
    let cpu = r
        .server_cpu_s_per_mframe
        .map(|c| format!(", server CPU {c:.2} s per M frames"))
        .unwrap_or_default();
    client::note(&format!(
        "N={n} run {run}: {what} {} frames/s ({:.2} s){cpu}",
        crate::fmt_rate(r.frames_per_s),
        r.elapsed_s
    ));
}

fn print_table(report: &OpenReport) {
    println!(
        "fan-out on the real path (tether agent, scripted model, event log on disk), open loop: \
         medians of {} run(s)",
        report.runs
    );
    println!(
        "{:>7} {:>8} {:>14} {:>14} {:>9} {:>22}",
        "clients", "frames", "real frames/s", "raw frames/s", "real/raw", "server CPU us/frame r/r"
    );
    let dash = || "-".to_owned();
    let cpu = |runs: &[OpenRun]| {
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.server_cpu_s_per_mframe)
            .collect();
        if v.is_empty() {
            dash()
        } else {
            format!("{:.3}", crate::median(v))
        }
    };
    for row in &report.results {
        println!(
            "{:>7} {:>8} {:>14} {:>14} {:>9} {:>22}",
            row.clients,
            row.frames,
            row.real_frames_per_s.map_or_else(dash, crate::fmt_rate),
            row.raw_frames_per_s.map_or_else(dash, crate::fmt_rate),
            row.ratio
                .map_or_else(dash, |r| format!("{:.0} %", r * 100.0)),
            format!("{}/{}", cpu(&row.real_runs), cpu(&row.raw_runs)),
        );
    }
}

// ---- the clients ----------------------------------------------------------------------------

/// Shared by the clients of one run: when the first and the last delta arrived.
struct Clock {
    epoch: Instant,
    /// ns since `epoch` of the first delta any client received (`u64::MAX`: none yet).
    first: AtomicU64,
    /// Frames that are neither replies nor deltas (e.g. `client_attached`), over all clients.
    other: AtomicU64,
}

impl Clock {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What one client saw.
struct Outcome {
    /// ns since the epoch of its last delta.
    last: u64,
    error: Option<String>,
}

struct OpenClient {
    requests: Requester,
    outcome: Option<oneshot::Receiver<Outcome>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for OpenClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl OpenClient {
    async fn connect(url: &str, clock: Arc<Clock>, frames: u64) -> anyhow::Result<OpenClient> {
        let mut attempt = 0;
        let socket = loop {
            let config = WebSocketConfig::default().read_buffer_size(client::CLIENT_READ_BUFFER);
            match tokio_tungstenite::connect_async_with_config(url, Some(config), true).await {
                Ok((socket, _)) => break socket,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    client::note(&format!("connect to {url} failed ({e}); retrying"));
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("connecting to {url}")),
            }
        };
        let (sink, stream) = socket.split();
        let (replies_tx, replies) = mpsc::unbounded_channel();
        let (outcome_tx, outcome) = oneshot::channel();
        let reader = tokio::spawn(read_loop(stream, clock, frames, replies_tx, outcome_tx));
        Ok(OpenClient {
            requests: Requester::new(sink, replies),
            outcome: Some(outcome),
            reader,
        })
    }

    async fn outcome(&mut self) -> Outcome {
        let lost = || Outcome {
            last: 0,
            error: Some("the reader stopped without an outcome".into()),
        };
        match self.outcome.take() {
            Some(rx) => rx.await.unwrap_or_else(|_| lost()),
            None => lost(),
        }
    }
}

/// The `seq` of an event frame (events are encoded `{"session_id":…,"seq":N,…}`); `None` for
/// replies and control frames, which carry none.
fn event_seq(frame: &str) -> Option<u64> {
    const KEY: &str = "\"seq\":";
    if !frame.starts_with("{\"session_id\":") {
        return None;
    }
    let start = frame.find(KEY)? + KEY.len();
    let digits = frame[start..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    frame[start..start + digits].parse().ok()
}

/// Reads every frame: counts deltas, checks that event `seq`s are contiguous, forwards
/// replies. Reports once `frames` deltas arrived, or why not.
async fn read_loop(
    mut stream: futures_util::stream::SplitStream<Ws>,
    clock: Arc<Clock>,
    frames: u64,
    replies: mpsc::UnboundedSender<String>,
    outcome: oneshot::Sender<Outcome>,
) {
    let mut outcome = Some(outcome);
    let mut deltas = 0u64;
    let mut last_seq: Option<u64> = None;
    let mut error = None;
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                error = Some(format!("read failed: {e}"));
                break;
            }
        };
        let s = text.as_str();
        if let Some(seq) = event_seq(s) {
            if let Some(prev) = last_seq
                && seq != prev + 1
            {
                error = Some(format!("event seq {seq} followed seq {prev}"));
                break;
            }
            last_seq = Some(seq);
            if s.contains(crate::credit::TEXT_DELTA_MARK) {
                let now = clock.now();
                if deltas == 0 {
                    clock.first.fetch_min(now, Ordering::AcqRel);
                }
                deltas += 1;
                if deltas == frames
                    && let Some(tx) = outcome.take()
                {
                    let _ = tx.send(Outcome {
                        last: now,
                        error: None,
                    });
                }
                if deltas > frames {
                    error = Some(format!("more than {frames} deltas"));
                    break;
                }
                continue;
            }
        } else if s.starts_with("{\"re\":") {
            let _ = replies.send(s.to_owned());
            continue;
        } else if s.contains("\"event\":\"evicted\"") {
            error = Some(format!("evicted: {s}"));
            break;
        }
        clock.other.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(tx) = outcome.take() {
        let why = error.unwrap_or_else(|| "the connection closed".into());
        let _ = tx.send(Outcome {
            last: 0,
            error: Some(format!("{why} after {deltas} of {frames} deltas")),
        });
    }
}

async fn connect_all(
    url: &str,
    n: usize,
    clock: &Arc<Clock>,
    frames: u64,
) -> anyhow::Result<Vec<OpenClient>> {
    futures_util::stream::iter((0..n).map(|_| OpenClient::connect(url, clock.clone(), frames)))
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Waits (bounded) for every client's outcome: frames per second over all clients.
async fn gather(clients: &mut [OpenClient], clock: &Clock) -> anyhow::Result<f64> {
    let outcomes = tokio::time::timeout(
        Duration::from_secs(600),
        futures_util::future::join_all(clients.iter_mut().map(OpenClient::outcome)),
    )
    .await
    .context("the run did not finish within 600 s")?;
    let mut last = 0;
    for (i, o) in outcomes.into_iter().enumerate() {
        if let Some(e) = o.error {
            bail!("client {i}: {e}");
        }
        last = last.max(o.last);
    }
    let first = clock.first.load(Ordering::Acquire);
    Ok((last.saturating_sub(first) as f64 / 1e9).max(1e-9))
}

async fn close_all(clients: Vec<OpenClient>) {
    futures_util::stream::iter(clients.into_iter().map(|mut c| async move {
        c.requests.close().await;
    }))
    .buffer_unordered(64)
    .collect::<Vec<()>>()
    .await;
}

/// Waits until the clients have seen no other frame (e.g. `client_attached`) for a while.
async fn settle(clock: &Clock) {
    let mut last = clock.other.load(Ordering::Relaxed);
    let mut quiet = 0;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = clock.other.load(Ordering::Relaxed);
        if now == last {
            quiet += 1;
            if quiet >= 4 {
                return;
            }
        } else {
            quiet = 0;
            last = now;
        }
    }
}

// ---- the real path --------------------------------------------------------------------------

/// A `tether agent` process whose scripted model answers every turn with `frames` words.
struct AgentProc {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl AgentProc {
    async fn start(
        bin: &Path,
        frames: u64,
        clients: usize,
        client_queue: usize,
    ) -> anyhow::Result<AgentProc> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .context("finding a free port")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let text = WORD.repeat(usize::try_from(frames).unwrap_or(usize::MAX));
        let script = json!({"loop": true, "responses": [{"text": text, "chunk_delay_ms": 0}]});
        let script_path = dir.path().join("script.json");
        std::fs::write(&script_path, script.to_string())
            .with_context(|| format!("writing {}", script_path.display()))?;
        // Every bench client is the same loopback principal.
        let toml = format!(
            "listen = \"{addr}\"\nstate_dir = \"{}\"\nsocket = \"{}\"\nchecks_dir = \"{}\"\n\
             max_connections_per_client = {}\n\
             [model]\nprovider = \"scripted\"\nscript = \"{}\"\n\
             [sessions]\nclient_queue = {client_queue}\n",
            dir.path().join("state").display(),
            dir.path().join("agent.sock").display(),
            dir.path().join("conf.d").display(),
            clients + 16,
            script_path.display(),
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, toml).with_context(|| format!("writing {}", config.display()))?;
        let log = dir.path().join("agent.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = tokio::process::Command::new(bin)
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .env("TETHER_LOG", "warn")
            .env_remove("TETHER_CONFIG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .context("the agent exited before its pid was known")?;
        let mut agent = AgentProc {
            child,
            pid,
            addr,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = agent.child.try_wait()? {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("the agent exited at start ({status}): {text}");
            }
            if http_get(addr, "/healthz").await.is_ok() {
                client::note(&format!("agent pid {pid} on {addr}"));
                return Ok(agent);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the agent did not answer /healthz within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn run(&self, n: usize, frames: u64) -> anyhow::Result<OpenRun> {
        let clock = Arc::new(Clock {
            epoch: Instant::now(),
            first: AtomicU64::new(u64::MAX),
            other: AtomicU64::new(0),
        });
        let url = format!("ws://{}/v1/ws", self.addr);
        let mut clients = connect_all(&url, n, &clock, frames).await?;
        let result = self.measure(&mut clients, &clock, frames).await;
        if let (Ok((_, sid)), Some(first)) = (&result, clients.first_mut()) {
            // Closed first, so the disconnects below publish nothing.
            let _ = first
                .requests
                .request("session.close", json!({ "session_id": sid }))
                .await;
        }
        close_all(clients).await;
        self.wait_idle().await;
        result.map(|(r, _)| r)
    }

    async fn measure(
        &self,
        clients: &mut [OpenClient],
        clock: &Arc<Clock>,
        frames: u64,
    ) -> anyhow::Result<(OpenRun, String)> {
        let first = clients.first_mut().context("no clients")?;
        let created = first
            .requests
            .request("session.create", json!({"mode": "chat", "title": "fanout"}))
            .await?;
        let sid = created
            .get("session_id")
            .and_then(Value::as_str)
            .context("session.create returned no session_id")?
            .to_owned();
        let attaches = futures_util::stream::iter(clients.iter_mut())
            .map(|c| attach(c, &sid))
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        attaches.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        settle(clock).await;
        let cpu_start = proc_cpu_s(self.pid)?;
        let first = clients.first_mut().context("no clients")?;
        first
            .requests
            .request(
                "input",
                json!({"session_id": sid, "text": "stream, please"}),
            )
            .await?;
        let elapsed_s = gather(clients, clock).await?;
        let cpu = proc_cpu_s(self.pid)? - cpu_start;
        let total = frames as f64 * clients.len() as f64;
        Ok((
            OpenRun {
                elapsed_s,
                frames_per_s: total / elapsed_s,
                server_cpu_s_per_mframe: Some(cpu * 1e6 / total),
            },
            sid,
        ))
    }

    /// Waits (bounded) until the agent has let go of every connection of the last run.
    async fn wait_idle(&self) {
        for _ in 0..600 {
            if let Ok(text) = http_get(self.addr, "/metrics").await
                && text
                    .lines()
                    .any(|l| l.trim() == "tether_agent_clients_connected 0")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client::note("connections of the previous run are still open; continuing");
    }

    async fn stop(mut self) {
        if signal(self.pid, libc::SIGTERM).is_ok()
            && tokio::time::timeout(Duration::from_secs(20), self.child.wait())
                .await
                .is_ok()
        {
            return;
        }
        let _ = self.child.kill().await;
    }
}

/// `attach`, retrying while the session's inbox is full.
async fn attach(client: &mut OpenClient, sid: &str) -> anyhow::Result<()> {
    let mut tries = 0;
    loop {
        match client
            .requests
            .request("attach", json!({ "session_id": sid }))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if tries < 50 && e.to_string().contains("overloaded") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("attach: {e}"),
        }
    }
}

// ---- the raw ceiling ------------------------------------------------------------------------

#[derive(Clone)]
struct RawState {
    /// The frames every socket gets, encoded once.
    frames: Arc<Vec<Utf8Bytes>>,
    /// Turns true when every client is connected: the writers start.
    start: watch::Receiver<bool>,
    connected: Arc<AtomicUsize>,
}

/// `frames` `text_delta` frames encoded as the agent encodes them (same session and turn id
/// lengths, same timestamp format, same text), so each is the same size as the real one.
fn raw_frames(frames: u64) -> Vec<Utf8Bytes> {
    let session_id = SessionId(uuid::Uuid::now_v7().to_string());
    let turn_id = TurnId(uuid::Uuid::now_v7().to_string());
    // The real turn's deltas follow a few events (client_attached, input_accepted,
    // turn_started...): start the seqs a little later too.
    (1..=frames)
        .map(|i| {
            let event = Event {
                session_id: session_id.clone(),
                seq: i + 8,
                ts: tether_mux::clock::now_rfc3339(),
                body: EventBody::TextDelta {
                    turn_id: turn_id.clone(),
                    text: WORD.into(),
                },
            };
            Utf8Bytes::from(event.encode())
        })
        .collect()
}

async fn raw_handler(State(state): State<RawState>, ws: WebSocketUpgrade) -> Response {
    tether_transport::ws::configure(ws).on_upgrade(move |socket| raw_serve(socket, state))
}

async fn raw_serve(mut socket: WebSocket, mut state: RawState) {
    state.connected.fetch_add(1, Ordering::AcqRel);
    if state.start.wait_for(|go| *go).await.is_err() {
        return;
    }
    for (i, frame) in state.frames.iter().enumerate() {
        if socket.feed(AxMessage::Text(frame.clone())).await.is_err() {
            return;
        }
        if (i + 1) % RAW_FLUSH_EVERY == 0 && socket.flush().await.is_err() {
            return;
        }
    }
    if socket.flush().await.is_err() {
        return;
    }
    // Wait for the client to close.
    while let Some(Ok(_)) = socket.recv().await {}
}

/// The raw server's process (`tether-bench raw-server`): the server side runs in a process of
/// its own, as the agent does, so the clients' process is the same in both measurements.
pub async fn raw_server(clients: usize, frames: u64) -> anyhow::Result<()> {
    let (start_tx, start) = watch::channel(false);
    let state = RawState {
        frames: Arc::new(raw_frames(frames)),
        start,
        connected: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route("/ws", get(raw_handler))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("binding the raw listener")?;
    println!("{}", listener.local_addr()?);
    let closing = CancellationToken::new();
    let server = tokio::spawn({
        let closing = closing.clone();
        async move { tether_transport::serve_http(listener, app, closing).await }
    });
    // The writers start together once every client is connected.
    while state.connected.load(Ordering::Acquire) < clients {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = start_tx.send(true);
    // The parent ends this process once its clients are done (or closes stdin).
    let _ = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 1];
        std::io::Read::read(&mut std::io::stdin(), &mut buf)
    })
    .await;
    closing.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

async fn raw_run(n: usize, frames: u64) -> anyhow::Result<OpenRun> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut child = tokio::process::Command::new(&exe)
        .arg("raw-server")
        .arg("--clients")
        .arg(n.to_string())
        .arg("--frames")
        .arg(frames.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} raw-server", exe.display()))?;
    let stdout = child
        .stdout
        .take()
        .context("no stdout from the raw server")?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut line),
    )
    .await
    .context("the raw server did not start within 20 s")??;
    let addr = line.trim();
    if addr.is_empty() {
        bail!("the raw server exited at start");
    }
    let url = format!("ws://{addr}/ws");
    let clock = Arc::new(Clock {
        epoch: Instant::now(),
        first: AtomicU64::new(u64::MAX),
        other: AtomicU64::new(0),
    });
    let pid = child.id().context("the raw server exited at start")?;
    let result = async {
        let mut clients = connect_all(&url, n, &clock, frames).await?;
        let cpu_start = proc_cpu_s(pid)?;
        let elapsed_s = gather(&mut clients, &clock).await;
        let cpu = proc_cpu_s(pid)? - cpu_start;
        close_all(clients).await;
        let elapsed_s = elapsed_s?;
        let total = frames as f64 * n as f64;
        Ok(OpenRun {
            elapsed_s,
            frames_per_s: total / elapsed_s,
            server_cpu_s_per_mframe: Some(cpu * 1e6 / total),
        })
    }
    .await;
    drop(child.stdin.take());
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_seq_reads_events_only() {
        let frames = raw_frames(3);
        assert_eq!(event_seq(frames[0].as_str()), Some(9));
        assert_eq!(event_seq(frames[2].as_str()), Some(11));
        assert_eq!(
            event_seq(r#"{"re":1,"ok":true,"result":{"last_seq":4}}"#),
            None
        );
        assert_eq!(
            event_seq(r#"{"event":"stream_gap","session_id":"s","from_seq":1}"#),
            None
        );
    }
}
