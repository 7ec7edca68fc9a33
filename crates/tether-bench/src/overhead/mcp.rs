//! `mcp-overhead`: what `tether mcp` (stdio) and the agent's `POST /mcp` (streamable HTTP) add
//! to a chunk's trip from the model to the client, against a plain WebSocket client of the
//! same turn (issue 11).
//!
//! ```text
//! cargo build --release -p tether -p tether-bench
//! target/release/tether-bench mcp-overhead                      # 2000 chunks, 5 runs per path
//! target/release/tether-bench mcp-overhead --chunks 5000 --runs 3 --interval-us 500 [--json]
//! ```
//!
//! The real `tether agent` runs as a child process (`--tether`, or the `tether` next to this
//! executable), its model the stand-in server of `overhead` in this process, which stamps
//! each content chunk as it hands it to the socket (each chunk's text is its sequence number).
//! Per run, a WebSocket client creates a chat session and attaches; then an MCP client starts
//! the turn with `tether_send` (waiting, with a progress token) and reads each chunk from its
//! progress notifications. Both clients live in this process and stamp what they read on
//! one clock, so per chunk:
//!
//! * **WebSocket** = WebSocket receipt − model send (model → agent → `/v1/ws`);
//! * **MCP** = MCP receipt − model send; over stdio the path is model → agent → `/v1/ws` →
//!   `tether mcp` (a child process) → its stdout; over HTTP, model → agent → the in-process
//!   connection of `/mcp` → the SSE stream of the `tools/call` response;
//! * **added** = MCP receipt − WebSocket receipt of the same chunk: the adapter's own cost.
//!
//! Stdio and HTTP runs alternate. The MCP clients are minimal (JSON-RPC lines on the child's
//! stdin/stdout; reqwest reading the SSE body), so what is measured is the server side.

use super::model_server::{ModelServer, Plan};
use super::timeline::{Clock, Quantiles, Stamps, deltas_us, leading_number};
use super::ws_client::{ReadEnd, WsClient};
use crate::client::note;
use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(clap::Args, Clone, Debug)]
pub struct McpOverheadArgs {
    /// Text chunks the model streams per run.
    #[arg(long, default_value_t = 2000)]
    chunks: u64,
    /// Measured runs per MCP transport (the table shows medians over them).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Pause between two chunks, in microseconds.
    #[arg(long, default_value_t = 500)]
    interval_us: u64,
    /// The `tether` binary [default: the one next to this executable].
    #[arg(long)]
    tether: Option<PathBuf>,
    /// Print JSON (with every run) instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Via {
    Stdio,
    Http,
}

#[derive(Clone, Serialize)]
struct RunReport {
    run: usize,
    via: Via,
    sent: u64,
    ws_delivered: u64,
    mcp_delivered: u64,
    websocket: Quantiles,
    mcp: Quantiles,
    added: Quantiles,
}

#[derive(Serialize)]
struct PathReport {
    via: Via,
    /// Medians over runs, in microseconds.
    websocket: Quantiles,
    mcp: Quantiles,
    added: Quantiles,
    complete: bool,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    tether: String,
    chunks: u64,
    interval_us: u64,
    runs: usize,
    paths: Vec<PathReport>,
    per_run: Vec<RunReport>,
}

/// `tether agent` as a child process, its model the stand-in server.
struct AgentProc {
    child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl AgentProc {
    async fn start(bin: &Path, model_base_url: &str) -> anyhow::Result<AgentProc> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // No tokens: loopback peers only, as `tether up` runs it.
        let toml = format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\nchecks_dir = \"{}\"\n\
             [model]\nprovider = \"openai\"\nbase_url = \"{model_base_url}\"\nmodel = \"bench-model\"\n\
             retry_attempts = 1\n",
            dir.path().join("state").display(),
            dir.path().join("conf.d").display(),
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, toml)?;
        let log = std::fs::File::create(dir.path().join("agent.log"))?;
        let child = tokio::process::Command::new(bin)
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .env("TETHER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut agent = AgentProc {
            child,
            port,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = agent.child.try_wait()? {
                bail!("the agent exited at start ({status})");
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the agent did not listen within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(agent)
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }
}

/// The progress token and the number a progress message's chunk carries (status lines start
/// with `[`).
fn progress_chunk(msg: &Value) -> Option<u64> {
    if msg["method"] != "notifications/progress" {
        return None;
    }
    leading_number(msg["params"]["message"].as_str()?)
}

fn tools_call(id: u64, session_id: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "tether_send",
        "arguments": {"session_id": session_id, "text": "stream, please"},
        "_meta": {"progressToken": format!("p{id}")},
    }})
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "tether-bench", "version": env!("CARGO_PKG_VERSION")}}})
}

/// The result of a `tether_send` response, or why it failed.
fn send_result(msg: &Value) -> anyhow::Result<Value> {
    let result = &msg["result"];
    if msg.get("error").is_some() || result["isError"] == true {
        bail!("tether_send failed: {msg}");
    }
    Ok(result["structuredContent"].clone())
}

/// `tether mcp --url …`: JSON-RPC lines on its stdin and stdout.
struct StdioMcp {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    next_id: u64,
}

impl StdioMcp {
    async fn start(bin: &Path, ws_url: &str) -> anyhow::Result<StdioMcp> {
        let mut child = tokio::process::Command::new(bin)
            .args(["mcp", "--url", ws_url])
            .env("TETHER_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting tether mcp")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut mcp = StdioMcp {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            next_id: 1,
        };
        mcp.write(&initialize(0)).await?;
        mcp.read_until(0, None, Clock::new()).await?;
        mcp.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(mcp)
    }

    async fn write(&mut self, v: &Value) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{v}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Reads lines until the response to `id`, stamping chunk progress into `stamps`.
    async fn read_until(
        &mut self,
        id: u64,
        stamps: Option<&Stamps>,
        clock: Clock,
    ) -> anyhow::Result<Value> {
        loop {
            let line = self
                .lines
                .next_line()
                .await?
                .context("tether mcp closed its stdout")?;
            let now = clock.now_ns();
            let msg: Value = serde_json::from_str(&line)?;
            if let (Some(seq), Some(stamps)) = (progress_chunk(&msg), stamps) {
                stamps.set(seq, now);
            } else if msg["id"] == id {
                return Ok(msg);
            }
        }
    }

    async fn send(
        &mut self,
        session_id: &str,
        stamps: &Stamps,
        clock: Clock,
    ) -> anyhow::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        self.write(&tools_call(id, session_id)).await?;
        let reply = self.read_until(id, Some(stamps), clock).await?;
        send_result(&reply).map(drop)
    }

    async fn stop(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// `POST /mcp` with reqwest: a legacy (initialize) session, `tools/call` answered as SSE.
struct HttpMcp {
    http: reqwest::Client,
    url: String,
    session: String,
    version: String,
    next_id: u64,
}

impl HttpMcp {
    async fn start(port: u16) -> anyhow::Result<HttpMcp> {
        tether_engine::openai::ensure_tls_provider();
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .context("building the reqwest client")?;
        let url = format!("http://127.0.0.1:{port}/mcp");
        let resp = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize(0))
            .send()
            .await?
            .error_for_status()?;
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .context("initialize: no mcp-session-id")?
            .to_owned();
        let mut mcp = HttpMcp {
            http,
            url,
            session,
            version: "2025-06-18".into(),
            next_id: 1,
        };
        let reply = mcp.read_sse(resp, 0, None, Clock::new()).await?;
        if let Some(v) = reply["result"]["protocolVersion"].as_str() {
            mcp.version = v.to_owned();
        }
        mcp.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(mcp)
    }

    async fn post(&self, body: &Value) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.session)
            .header("mcp-protocol-version", &self.version)
            .json(body)
            .send()
            .await?
            .error_for_status()?)
    }

    /// Reads an SSE (or JSON) response until the message answering `id`, stamping chunk
    /// progress as each piece of the body arrives.
    async fn read_sse(
        &self,
        resp: reqwest::Response,
        id: u64,
        stamps: Option<&Stamps>,
        clock: Clock,
    ) -> anyhow::Result<Value> {
        let is_json = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json"));
        if is_json {
            return Ok(resp.json().await?);
        }
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(piece) = body.next().await {
            let now = clock.now_ns();
            buf.push_str(&String::from_utf8_lossy(&piece?));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                let Ok(msg) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if let (Some(seq), Some(stamps)) = (progress_chunk(&msg), stamps) {
                    stamps.set(seq, now);
                } else if msg["id"] == id {
                    return Ok(msg);
                }
            }
        }
        bail!("the response ended before answering request {id}")
    }

    async fn send(
        &mut self,
        session_id: &str,
        stamps: &Stamps,
        clock: Clock,
    ) -> anyhow::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let resp = self.post(&tools_call(id, session_id)).await?;
        let reply = self.read_sse(resp, id, Some(stamps), clock).await?;
        send_result(&reply).map(drop)
    }
}

struct Rig {
    clock: Clock,
    model: ModelServer,
    agent: AgentProc,
    stdio: StdioMcp,
    http: HttpMcp,
}

impl Rig {
    async fn run(
        &mut self,
        run: usize,
        via: Via,
        chunks: u64,
        interval: Duration,
    ) -> anyhow::Result<RunReport> {
        let clock = self.clock;
        let (sent, ws_received, mcp_received) = (
            Stamps::new(chunks),
            Stamps::new(chunks),
            Stamps::new(chunks),
        );
        let mut ws =
            WsClient::connect(&self.agent.ws_url(), ws_received.clone(), chunks, clock).await?;
        let created = ws
            .request(
                "session.create",
                json!({"mode": "chat", "title": "mcp-overhead"}),
            )
            .await?;
        let session_id = created["session_id"]
            .as_str()
            .context("session.create returned no session_id")?
            .to_owned();
        ws.request("attach", json!({ "session_id": session_id }))
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.model.arm(Plan {
            chunks,
            interval,
            sent: sent.clone(),
            clock,
        });
        match via {
            Via::Stdio => self.stdio.send(&session_id, &mcp_received, clock).await,
            Via::Http => self.http.send(&session_id, &mcp_received, clock).await,
        }
        .with_context(|| format!("the {via:?} MCP client's turn"))?;
        let end = ws.wait_end(Duration::from_secs(30)).await;
        let _ = ws
            .request("session.close", json!({ "session_id": session_id }))
            .await;
        ws.close().await;
        match end? {
            ReadEnd::All => {}
            other => note(&format!("WebSocket client: {other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(RunReport {
            run,
            via,
            sent: sent.count(),
            ws_delivered: ws_received.count(),
            mcp_delivered: mcp_received.count(),
            websocket: Quantiles::of(&deltas_us(&sent, &ws_received)),
            mcp: Quantiles::of(&deltas_us(&sent, &mcp_received)),
            added: Quantiles::of(&deltas_us(&ws_received, &mcp_received)),
        })
    }
}

pub async fn run(args: McpOverheadArgs) -> anyhow::Result<()> {
    if args.chunks == 0 || args.runs == 0 {
        bail!("--chunks and --runs must be at least 1");
    }
    let bin = match &args.tether {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .context("this executable has no parent directory")?
            .join("tether"),
    };
    if !bin.is_file() {
        bail!(
            "no tether binary at {} (build it: cargo build --release -p tether, or pass --tether)",
            bin.display()
        );
    }
    let interval = Duration::from_micros(args.interval_us);
    let clock = Clock::new();
    let model = ModelServer::start().await?;
    let agent = AgentProc::start(&bin, &model.base_url).await?;
    let stdio = StdioMcp::start(&bin, &agent.ws_url()).await?;
    let http = HttpMcp::start(agent.port).await?;
    let mut rig = Rig {
        clock,
        model,
        agent,
        stdio,
        http,
    };
    // Warm-up, unreported.
    for via in [Via::Stdio, Via::Http] {
        rig.run(0, via, args.chunks.min(200), interval).await?;
    }
    let mut per_run = Vec::new();
    for i in 1..=args.runs {
        for via in [Via::Stdio, Via::Http] {
            let r = rig.run(i, via, args.chunks, interval).await?;
            note(&format!(
                "run {i} {via:?}: {}/{}/{} sent/ws/mcp; WebSocket p50 {:.0} p99 {:.0} us, MCP p50 {:.0} p99 {:.0} us, added p50 {:.0} p99 {:.0} us",
                r.sent,
                r.ws_delivered,
                r.mcp_delivered,
                r.websocket.p50,
                r.websocket.p99,
                r.mcp.p50,
                r.mcp.p99,
                r.added.p50,
                r.added.p99
            ));
            per_run.push(r);
        }
    }
    let Rig { stdio, agent, .. } = rig;
    stdio.stop().await;
    drop(agent);
    let paths: Vec<PathReport> = [Via::Stdio, Via::Http]
        .into_iter()
        .map(|via| {
            let runs: Vec<&RunReport> = per_run.iter().filter(|r| r.via == via).collect();
            let of = |f: fn(&RunReport) -> Quantiles| {
                Quantiles::median_of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            PathReport {
                via,
                websocket: of(|r| r.websocket),
                mcp: of(|r| r.mcp),
                added: of(|r| r.added),
                complete: runs.iter().all(|r| {
                    r.sent == args.chunks
                        && r.ws_delivered == args.chunks
                        && r.mcp_delivered == args.chunks
                }),
            }
        })
        .collect();
    let complete = paths.iter().all(|p| p.complete);
    let report = Report {
        bench: "mcp-overhead",
        tether: bin.display().to_string(),
        chunks: args.chunks,
        interval_us: args.interval_us,
        runs: args.runs,
        paths,
        per_run,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "chunk from the model to the client, {} chunks {} us apart, medians of {} runs per path (us)",
            report.chunks, report.interval_us, report.runs
        );
        println!(
            "{:<6}  {:>12} {:>12}  {:>12} {:>12}  {:>12} {:>12}",
            "MCP", "WS p50", "WS p99", "MCP p50", "MCP p99", "added p50", "added p99"
        );
        for p in &report.paths {
            println!(
                "{:<6}  {:>12.0} {:>12.0}  {:>12.0} {:>12.0}  {:>12.0} {:>12.0}",
                format!("{:?}", p.via).to_lowercase(),
                p.websocket.p50,
                p.websocket.p99,
                p.mcp.p50,
                p.mcp.p99,
                p.added.p50,
                p.added.p99
            );
        }
    }
    if !complete {
        bail!("chunks were lost on some path (see the per-run lines)");
    }
    Ok(())
}
