//! `tether-bench idle`: resident memory per idle client connection of a real `tether agent`.
//!
//! ```text
//! cargo build --release -p tether -p tether-bench
//! target/release/tether-bench idle                       # 2 000 connections
//! target/release/tether-bench idle --connections 500 --tether /usr/local/bin/tether
//! ```
//!
//! It writes an `agent.toml` in a fresh temporary directory (state and socket there, `listen`
//! on a free loopback port, `--credentials` `[[clients]]` tokens so the connections spread over
//! several credentials and stay under any per-credential cap) and starts `tether agent
//! --config` on it: the real binary, `--tether` or the `tether` next to this executable. Then:
//!
//! 1. once `/healthz` answers and `--settle` has passed, it reads the agent's `VmRSS` and
//!    `RssAnon` (`/proc/<pid>/status`): the baseline;
//! 2. opens `--connections` WebSocket connections to `/v1/ws`, each with its `Authorization`
//!    header and one `hello` answered, and leaves them idle for `--settle`; reads again.
//!    RSS per connection is (RSS_N − RSS_0) / N;
//! 3. closes every connection (a Close frame each, answered by the agent), waits `--settle`,
//!    and reads once more: what the process kept after the connections went away (freed
//!    memory the allocator holds on to counts here).
//!
//! With `--replay N` the agent runs a scripted model; one turn of N `text_delta` events is
//! recorded first, and every connection attaches to that session from the start, reads the
//! whole replay and only then goes idle: the figure then includes what a burst leaves behind
//! in each connection's buffers.
//!
//! The agent is stopped with SIGTERM at the end (killed if it lingers).

use crate::hub_load::hub_proc::{ProcStatus, http_get, proc_status, signal};
use anyhow::{Context, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    /// Idle connections to open.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Client credentials the connections are spread over.
    #[arg(long, default_value_t = 50)]
    credentials: usize,
    /// The `tether` binary [default: the one next to this executable].
    #[arg(long)]
    tether: Option<PathBuf>,
    /// Quiet time before each RSS reading.
    #[arg(long, default_value = "3s", value_parser = humantime_secs)]
    settle: Duration,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Each connection first replays a session of this many events (0: none).
    #[arg(long, default_value_t = 0)]
    replay: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let secs = s.trim_end_matches('s');
    secs.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{s}` is not a number of seconds like 3s"))
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    tether: String,
    connections: usize,
    credentials: usize,
    replay_events: usize,
    rss_kib: Readings,
    rss_anon_kib: Readings,
    /// (open − baseline) / connections.
    rss_per_connection_kib: f64,
    rss_anon_per_connection_kib: f64,
    /// (closed − baseline): kept after every connection closed.
    rss_kept_after_close_kib: i64,
}

#[derive(Serialize)]
struct Readings {
    baseline: u64,
    open: u64,
    closed: u64,
}

fn token(i: usize) -> String {
    format!("bench-idle-client-{i:04}-0123456789")
}

struct AgentProc {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
}

impl AgentProc {
    async fn start(
        bin: &Path,
        dir: &Path,
        credentials: usize,
        replay: usize,
    ) -> anyhow::Result<AgentProc> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .context("finding a free port")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut toml = format!(
            "listen = \"{addr}\"\nstate_dir = \"{}\"\nsocket = \"{}\"\nchecks_dir = \"{}\"\n",
            dir.join("state").display(),
            dir.join("agent.sock").display(),
            dir.join("conf.d").display(),
        );
        if replay > 0 {
            // One `text_delta` per word.
            let text = "word ".repeat(replay);
            let script = serde_json::json!({"loop": true, "responses": [{"text": text}]});
            let path = dir.join("script.json");
            std::fs::write(&path, script.to_string())
                .with_context(|| format!("writing {}", path.display()))?;
            toml.push_str(&format!(
                "[model]\nprovider = \"scripted\"\nscript = \"{}\"\n",
                path.display()
            ));
        }
        for i in 0..credentials {
            toml.push_str(&format!(
                "\n[[clients]]\nname = \"c{i}\"\nclass = \"human\"\ntoken = \"{}\"\n",
                token(i)
            ));
        }
        let config = dir.join("agent.toml");
        std::fs::write(&config, toml).with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join("agent.log");
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
        let mut agent = AgentProc { child, pid, addr };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = agent.child.try_wait()? {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("the agent exited at start ({status}): {text}");
            }
            if http_get(addr, "/healthz").await.is_ok() {
                return Ok(agent);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the agent did not answer /healthz within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn status(&self) -> anyhow::Result<ProcStatus> {
        proc_status(self.pid)
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

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens one connection and has its `hello` answered.
async fn open(url: &str, token: &str) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    ws.send(Message::text(r#"{"id":1,"op":"hello"}"#)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"re\":1") => return Ok(ws),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed before the hello reply"),
        }
    }
}

/// Sends one request and waits for its reply; other frames are skipped.
async fn request(
    ws: &mut Ws,
    id: u64,
    op: &str,
    params: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let mut frame = params;
    frame["id"] = id.into();
    frame["op"] = op.into();
    ws.send(Message::text(frame.to_string())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                if v["re"] == id {
                    if v["ok"] != true {
                        bail!("{op} failed: {v}");
                    }
                    return Ok(v["result"].clone());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed before the {op} reply"),
        }
    }
}

/// Reads frames until one satisfies `done`.
async fn read_until(ws: &mut Ws, done: impl Fn(&serde_json::Value) -> bool) -> anyhow::Result<()> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if done(&serde_json::from_str(t.as_str())?) {
                    return Ok(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed while waiting"),
        }
    }
}

/// Records one turn of the scripted model; its session's id.
async fn record_session(url: &str) -> anyhow::Result<String> {
    let mut ws = open(url, &token(0)).await?;
    let created = request(
        &mut ws,
        2,
        "session.create",
        serde_json::json!({"mode": "chat"}),
    )
    .await?;
    let sid = created["session_id"]
        .as_str()
        .context("session.create gave no session_id")?
        .to_owned();
    request(&mut ws, 3, "attach", serde_json::json!({"session_id": sid})).await?;
    request(
        &mut ws,
        4,
        "input",
        serde_json::json!({"session_id": sid, "text": "go"}),
    )
    .await?;
    tokio::time::timeout(
        Duration::from_secs(120),
        read_until(&mut ws, |v| v["event"] == "turn_ended"),
    )
    .await
    .context("the recorded turn did not end within 120 s")??;
    close(ws).await;
    Ok(sid)
}

/// Attaches from the start and reads the whole replay.
async fn replay(ws: &mut Ws, sid: &str) -> anyhow::Result<()> {
    let attach = serde_json::json!({"session_id": sid, "after_seq": 0});
    request(ws, 5, "attach", attach).await?;
    read_until(ws, |v| v["event"] == "replay_complete").await
}

/// Sends a Close and waits (bounded) for the agent's.
async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.credentials == 0 {
        bail!("--connections and --credentials must be at least 1");
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
    // Raised before the agent is spawned: the child inherits the limit (and this process
    // holds one socket per connection too).
    let _ = crate::raise_fd_limit();
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let agent = AgentProc::start(&bin, dir.path(), args.credentials, args.replay).await?;
    let result = measure(&agent, &args).await;
    agent.stop().await;
    let (baseline, open, closed) = result?;
    let n = args.connections as f64;
    let report = Report {
        bench: "idle",
        tether: bin.display().to_string(),
        connections: args.connections,
        credentials: args.credentials,
        replay_events: args.replay,
        rss_per_connection_kib: (open.vm_rss_kib as f64 - baseline.vm_rss_kib as f64) / n,
        rss_anon_per_connection_kib: (open.rss_anon_kib as f64 - baseline.rss_anon_kib as f64) / n,
        rss_kept_after_close_kib: closed.vm_rss_kib as i64 - baseline.vm_rss_kib as i64,
        rss_kib: Readings {
            baseline: baseline.vm_rss_kib,
            open: open.vm_rss_kib,
            closed: closed.vm_rss_kib,
        },
        rss_anon_kib: Readings {
            baseline: baseline.rss_anon_kib,
            open: open.rss_anon_kib,
            closed: closed.rss_anon_kib,
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "idle WebSocket connections to `tether agent` ({}), {} connections over {} credentials{}",
            report.tether,
            report.connections,
            report.credentials,
            if args.replay > 0 {
                format!(", each after replaying {} events", args.replay)
            } else {
                String::new()
            }
        );
        println!(
            "{:>10} {:>12} {:>12} {:>12}",
            "", "baseline", "open", "closed"
        );
        println!(
            "{:>10} {:>9} KiB {:>9} KiB {:>9} KiB",
            "VmRSS", baseline.vm_rss_kib, open.vm_rss_kib, closed.vm_rss_kib
        );
        println!(
            "{:>10} {:>9} KiB {:>9} KiB {:>9} KiB",
            "RssAnon", baseline.rss_anon_kib, open.rss_anon_kib, closed.rss_anon_kib
        );
        println!(
            "per idle connection: {:.1} KiB RSS ({:.1} KiB anonymous); kept after close: {} KiB",
            report.rss_per_connection_kib,
            report.rss_anon_per_connection_kib,
            report.rss_kept_after_close_kib
        );
    }
    Ok(())
}

async fn measure(
    agent: &AgentProc,
    args: &IdleArgs,
) -> anyhow::Result<(ProcStatus, ProcStatus, ProcStatus)> {
    let url = format!("ws://{}/v1/ws", agent.addr);
    // Recorded before the baseline: the session itself is not a connection's cost.
    let session = match args.replay {
        0 => None,
        _ => Some(record_session(&url).await?),
    };
    let session = session.as_deref();
    tokio::time::sleep(args.settle).await;
    let baseline = agent.status()?;
    let opened: Vec<anyhow::Result<Ws>> = futures_util::stream::iter(0..args.connections)
        .map(|i| {
            let url = url.clone();
            async move {
                let mut ws = open(&url, &token(i % args.credentials)).await?;
                if let Some(sid) = session {
                    replay(&mut ws, sid).await?;
                }
                Ok(ws)
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let mut conns = Vec::with_capacity(opened.len());
    for (i, c) in opened.into_iter().enumerate() {
        conns.push(c.with_context(|| format!("connection {i}"))?);
    }
    tokio::time::sleep(args.settle).await;
    let open = agent.status()?;
    futures_util::stream::iter(conns)
        .for_each_concurrent(args.concurrency.max(1), close)
        .await;
    tokio::time::sleep(args.settle).await;
    let closed = agent.status()?;
    Ok((baseline, open, closed))
}
