//! `overhead`: what the harness adds between a model's SSE chunk arriving and the matching
//! `text_delta` frame leaving the agent's WebSocket.
//!
//! ```text
//! cargo build --release -p tether-bench && target/release/tether-bench overhead
//! target/release/tether-bench overhead --chunks 5000 --runs 5 --interval-us 200 [--json]
//! target/release/tether-bench overhead --log-dir /dev/shm      # event log on tmpfs
//! target/release/tether-bench overhead --e2e-only --runs 20    # e.g. under perf
//! ```
//!
//! Everything runs in this one process on loopback, on one clock ([`timeline::Clock`]):
//!
//! * a stand-in model ([`model_server`]): axum on `127.0.0.1:0` speaking the chat-completions
//!   SSE wire format, streaming `--chunks` content chunks `--interval-us` apart (paced by a
//!   thread of its own: tokio's timer is too coarse), each chunk's text its sequence number;
//!   the instant each chunk is handed to the socket is recorded;
//! * an agent core ([`agent`]): event log in a temporary directory, the engine with the real
//!   `OpenAiProvider` pointed at that server, the multiplexer, the WebSocket listener; a
//!   WebSocket client creates a chat session, attaches, sends one `input`, and records when each
//!   `text_delta` arrives (its sequence number read from its text).
//!
//! **End to end** per chunk = receipt − send. It includes two loopback hops that any harness
//! would pay, so the same run also measures them alone ([`hops`]): **hop A**, the same server
//! and cadence read by a plain reqwest client (the HTTP stack the provider is built on), and
//! **hop B**, a plain axum WebSocket endpoint on the agent's own listener stack sending
//! same-sized `text_delta` frames to the same client. **Harness estimate** = end to end −
//! (median of hop A + median of hop B) of the same run: a constant, so every quantile moves
//! by the same amount; the hops' own tails are *not* subtracted, which keeps the tail estimate
//! conservative (loopback tails are charged to the harness).
//!
//! To show where the time goes, a probe around the provider stamps each chunk when the provider
//! hands it to the engine: **model side** = that − send (loopback + reqwest + SSE decoding +
//! JSON), **mux side** = receipt − that (engine → turn channel → session actor → event-log
//! commit → per-client queue → WebSocket writer → loopback → client). **Log** is
//! `EventLog::append` alone, one event per job at the same cadence: the commit every flush
//! waits for before it broadcasts; its thread round trip without SQLite is measured too.
//!
//! `--acp target/release/tether` also runs a real `tether acp` against the agent
//! ([`acp_editor`]): before each input it `session/load`s the measured session, and every
//! chunk reaches it as an `agent_message_chunk` on its stdout. **ACP end to end** = its
//! receipt − send; **ACP − WebSocket** = its receipt − the WebSocket client's receipt of the
//! same chunk: what the adapter adds (one more loopback hop over the Unix socket or WebSocket,
//! decoding, translating, encoding, the pipe to the editor).
//!
//! `--log-dir /dev/shm` puts the event logs on tmpfs (syncs cost nothing there): an
//! experiment on how much of the tail is the disk. The report also gives, per run, the load
//! average and the time this process's threads waited for a CPU (the machine may be shared).

mod acp_editor;
mod agent;
mod hops;
mod mcp;
mod model_server;
mod timeline;
mod ws_client;

pub use mcp::{McpOverheadArgs, run as run_mcp};

use crate::client::note;
use anyhow::{Context, bail};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use timeline::{Clock, Quantiles, Stamps, deltas_us, median, share_above};

#[derive(clap::Args, Clone, Debug)]
pub struct OverheadArgs {
    /// Text chunks the model streams per run.
    #[arg(long, default_value_t = 5000)]
    chunks: u64,
    /// Measured runs (the table shows medians over them).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Pause between two chunks, in microseconds (the pacer sleeps this long between them;
    /// the cadence achieved is reported).
    #[arg(long, default_value_t = 200)]
    interval_us: u64,
    /// Print JSON (with every run) instead of the table.
    #[arg(long)]
    json: bool,
    /// Where the event logs' temporary directories go [default: the system's temporary
    /// directory]; e.g. /dev/shm takes the disk out of the picture.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Measure only the end-to-end path (no hops, no log; e.g. under perf).
    #[arg(long)]
    e2e_only: bool,
    /// Chunks of an unreported warm-up run on every path first (0: none).
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// Also measure an ACP editor: this `tether` binary's `tether acp`, connected to the
    /// agent, loads the measured session and receives every chunk (e.g. target/release/tether).
    #[arg(long, value_name = "TETHER")]
    acp: Option<PathBuf>,
}

/// The target for the harness estimate's p99, in microseconds.
const TARGET_P99_US: f64 = 1000.0;

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    chunks: u64,
    interval_us: u64,
    /// Median over runs of the mean spacing of the model's send instants.
    achieved_interval_us: f64,
    runs: usize,
    log_dir: String,
    /// Medians over runs, in microseconds.
    end_to_end: Quantiles,
    model_side: Quantiles,
    mux_side: Quantiles,
    hop_a: Option<Quantiles>,
    hop_b: Option<Quantiles>,
    /// End to end minus (hop A p50 + hop B p50), per run, then medians.
    harness: Option<Quantiles>,
    log_append: Option<Quantiles>,
    log_ready: Option<Quantiles>,
    /// The log writer's thread round trip without SQLite (std channel out, oneshot back).
    handoff: Option<Quantiles>,
    /// With `--acp`: chunk send -> the ACP editor's receipt, and the ACP editor's receipt
    /// minus the WebSocket client's, per chunk (medians over runs, microseconds).
    acp_end_to_end: Option<Quantiles>,
    acp_minus_ws: Option<Quantiles>,
    /// Median over runs of the share of chunks whose end-to-end figure is above 1 ms.
    e2e_share_over_1ms: f64,
    /// Median over runs of the share of log events whose ready → committed time is above 1 ms.
    log_share_over_1ms: Option<f64>,
    /// For the slowest 1 % of chunks end to end: median model side and mux side (µs).
    tail_model_side_us: f64,
    tail_mux_side_us: f64,
    /// Every run delivered every chunk, exactly once, on every path.
    complete: bool,
    target_p99_us: f64,
    target_met: Option<bool>,
    per_run: Vec<RunReport>,
}

#[derive(Clone, Serialize)]
struct RunReport {
    run: usize,
    /// The 1-minute load average when the run started.
    load_average: Option<f64>,
    /// Time this process's threads spent runnable but without a CPU during the end-to-end
    /// run (the machine is shared: a large figure means the run queued behind others).
    runqueue_wait_ms: Option<f64>,
    sent: u64,
    delivered: u64,
    duplicates: u64,
    achieved_interval_us: f64,
    end_to_end: Quantiles,
    model_side: Quantiles,
    mux_side: Quantiles,
    e2e_share_over_1ms: f64,
    tail_model_side_us: f64,
    tail_mux_side_us: f64,
    hop_a: Option<Hop>,
    hop_b: Option<Hop>,
    /// hop A p50 + hop B p50.
    subtracted_us: Option<f64>,
    harness: Option<Quantiles>,
    log_append: Option<Quantiles>,
    log_ready: Option<Quantiles>,
    /// Share of events whose ready → committed time is above 1 ms.
    log_share_over_1ms: Option<f64>,
    /// The log writer's thread round trip without SQLite.
    handoff: Option<Quantiles>,
    acp: Option<AcpRun>,
}

/// The ACP editor in one run.
#[derive(Clone, Copy, Serialize)]
struct AcpRun {
    delivered: u64,
    duplicates: u64,
    end_to_end: Quantiles,
    minus_ws: Quantiles,
}

#[derive(Clone, Copy, Serialize)]
struct Hop {
    sent: u64,
    delivered: u64,
    latency: Quantiles,
}

impl Hop {
    fn of(sent: &Stamps, received: &Stamps) -> Hop {
        Hop {
            sent: sent.count(),
            delivered: received.count(),
            latency: Quantiles::of(&deltas_us(sent, received)),
        }
    }

    fn complete(&self, chunks: u64) -> bool {
        self.sent == chunks && self.delivered == chunks
    }
}

/// The test rig: servers and the agent.
struct Rig {
    clock: Clock,
    model: model_server::ModelServer,
    agent: agent::Agent,
    hops: Option<HopRig>,
    acp: Option<tokio::sync::Mutex<acp_editor::AcpEditor>>,
}

struct HopRig {
    http: reqwest::Client,
    plain: hops::PlainWs,
    /// Held so the log's directory lives as long as the log.
    _log_dir: tempfile::TempDir,
    log: tether_engine::log::EventLog,
}

impl Rig {
    async fn start(args: &OverheadArgs) -> anyhow::Result<Rig> {
        let clock = Clock::new();
        let model = model_server::ModelServer::start().await?;
        let agent = agent::Agent::start(&model.base_url, args.log_dir.as_deref(), clock)
            .await
            .context("starting the agent core")?;
        let hops = if args.e2e_only {
            None
        } else {
            tether_engine::openai::ensure_tls_provider();
            let http = reqwest::Client::builder()
                .build()
                .context("building the reqwest client")?;
            let plain = hops::PlainWs::start(clock).await?;
            let (dir, log) = hops::open_log(args.log_dir.as_deref())?;
            Some(HopRig {
                http,
                plain,
                _log_dir: dir,
                log,
            })
        };
        let acp = match &args.acp {
            Some(tether) => Some(tokio::sync::Mutex::new(
                acp_editor::AcpEditor::start(tether, agent.url(), clock)
                    .await
                    .context("starting the ACP editor")?,
            )),
            None => None,
        };
        Ok(Rig {
            clock,
            model,
            agent,
            hops,
            acp,
        })
    }

    async fn stop(self) {
        if let Some(editor) = self.acp {
            editor.into_inner().stop().await;
        }
        self.agent.stop().await;
        if let Some(h) = self.hops {
            h.plain.stop().await;
            h.log.close();
        }
    }

    /// One run of every path, in turn.
    async fn run(&self, run: usize, chunks: u64, interval: Duration) -> anyhow::Result<RunReport> {
        let load_average = timeline::load_average();
        let wait_before = timeline::runqueue_wait_ns();
        let e2e = self
            .agent
            .run(&self.model, chunks, interval, self.clock, self.acp.as_ref())
            .await
            .context("end-to-end run")?;
        let runqueue_wait_ms = match (wait_before, timeline::runqueue_wait_ns()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e6),
            _ => None,
        };
        let end_to_end = deltas_us(&e2e.sent, &e2e.received);
        let model_side = deltas_us(&e2e.sent, &e2e.yielded);
        let mux_side = deltas_us(&e2e.yielded, &e2e.received);
        let (tail_model_side_us, tail_mux_side_us) = tail_split(&e2e);
        let mut report = RunReport {
            run,
            load_average,
            runqueue_wait_ms,
            sent: e2e.sent.count(),
            delivered: e2e.received.count(),
            duplicates: e2e.received.extra() + e2e.sent.extra(),
            achieved_interval_us: e2e.sent.mean_interval_us(),
            end_to_end: Quantiles::of(&end_to_end),
            model_side: Quantiles::of(&model_side),
            mux_side: Quantiles::of(&mux_side),
            e2e_share_over_1ms: share_above(&end_to_end, 1000.0),
            tail_model_side_us,
            tail_mux_side_us,
            hop_a: None,
            hop_b: None,
            subtracted_us: None,
            harness: None,
            log_append: None,
            log_ready: None,
            log_share_over_1ms: None,
            handoff: None,
            acp: e2e.acp_received.as_ref().map(|acp| AcpRun {
                delivered: acp.count(),
                duplicates: acp.extra(),
                end_to_end: Quantiles::of(&deltas_us(&e2e.sent, acp)),
                minus_ws: Quantiles::of(&deltas_us(&e2e.received, acp)),
            }),
        };
        if let Some(h) = &self.hops {
            pause().await;
            let (sent, received) =
                hops::model_hop(&self.model, &h.http, chunks, interval, self.clock)
                    .await
                    .context("hop A")?;
            let a = Hop::of(&sent, &received);
            pause().await;
            let (sent, received) = h
                .plain
                .run(chunks, interval, self.clock)
                .await
                .context("hop B")?;
            let b = Hop::of(&sent, &received);
            pause().await;
            let appends = hops::log_appends(&h.log, chunks, interval, self.clock)
                .await
                .context("event log alone")?;
            pause().await;
            let handoff = hops::writer_handoff(chunks, interval, self.clock)
                .await
                .context("writer hand-off alone")?;
            report.handoff = Some(Quantiles::of(&handoff));
            let subtract = a.latency.p50 + b.latency.p50;
            report.hop_a = Some(a);
            report.hop_b = Some(b);
            report.subtracted_us = Some(subtract);
            report.harness = Some(report.end_to_end.minus(subtract));
            report.log_append = Some(Quantiles::of(&appends.service_us));
            report.log_ready = Some(Quantiles::of(&appends.ready_us));
            report.log_share_over_1ms = Some(share_above(&appends.ready_us, 1000.0));
        }
        pause().await;
        Ok(report)
    }

    fn complete(&self, r: &RunReport, chunks: u64) -> bool {
        r.sent == chunks
            && r.delivered == chunks
            && r.duplicates == 0
            && r.hop_a.is_none_or(|h| h.complete(chunks))
            && r.hop_b.is_none_or(|h| h.complete(chunks))
            && r.acp
                .is_none_or(|a| a.delivered == chunks && a.duplicates == 0)
    }
}

/// Lets sockets and the log writer go quiet between two measured streams.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// For the slowest 1 % of chunks end to end: the median model side and mux side (µs).
fn tail_split(run: &agent::E2eRun) -> (f64, f64) {
    let mut rows: Vec<(f64, f64, f64)> = (0..run.sent.len())
        .filter_map(|i| {
            let (s, y, r) = (run.sent.get(i)?, run.yielded.get(i)?, run.received.get(i)?);
            let us = |a: u64, b: u64| (b as f64 - a as f64) / 1e3;
            Some((us(s, r), us(s, y), us(y, r)))
        })
        .collect();
    if rows.is_empty() {
        return (0.0, 0.0);
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top = rows.len().div_ceil(100);
    (
        median(rows[..top].iter().map(|r| r.1).collect()),
        median(rows[..top].iter().map(|r| r.2).collect()),
    )
}

fn note_run(r: &RunReport) {
    let mut line = format!(
        "run {} (load {:.2}, run-queue wait {:.1} ms): {}/{} delivered, every {:.0} us; e2e p50 {:.0} p99 {:.0} max {:.0} us (model side p99 {:.0}, mux side p99 {:.0})",
        r.run,
        r.load_average.unwrap_or(f64::NAN),
        r.runqueue_wait_ms.unwrap_or(f64::NAN),
        r.delivered,
        r.sent,
        r.achieved_interval_us,
        r.end_to_end.p50,
        r.end_to_end.p99,
        r.end_to_end.max,
        r.model_side.p99,
        r.mux_side.p99,
    );
    if let Some(acp) = r.acp {
        line.push_str(&format!(
            "; ACP {}/{} delivered, e2e p50 {:.0} p99 {:.0} us, ACP - WebSocket p50 {:.0} p99 {:.0} us",
            acp.delivered, r.sent, acp.end_to_end.p50, acp.end_to_end.p99, acp.minus_ws.p50, acp.minus_ws.p99
        ));
    }
    if let (Some(a), Some(b), Some(h), Some(l)) = (r.hop_a, r.hop_b, r.harness, r.log_ready) {
        line.push_str(&format!(
            "; hop A p50 {:.0}, hop B p50 {:.0}; harness p99 {:.0} us; log ready->committed p99 {:.0} max {:.0} us",
            a.latency.p50, b.latency.p50, h.p99, l.p99, l.max
        ));
    }
    note(&line);
}

pub async fn run(args: OverheadArgs) -> anyhow::Result<()> {
    if args.chunks == 0 || args.runs == 0 {
        bail!("--chunks and --runs must be at least 1");
    }
    let interval = Duration::from_micros(args.interval_us);
    let rig = Rig::start(&args).await?;
    note(&format!(
        "agent event log in {}",
        rig.agent.log_dir().display()
    ));
    if args.warmup > 0 {
        note(&format!("warm-up: {} chunks on every path", args.warmup));
        rig.run(0, args.warmup, interval)
            .await
            .context("warm-up run")?;
    }
    let mut runs = Vec::with_capacity(args.runs);
    let mut failures = Vec::new();
    for i in 1..=args.runs {
        let r = rig.run(i, args.chunks, interval).await?;
        note_run(&r);
        if !rig.complete(&r, args.chunks) {
            failures.push(i);
        }
        runs.push(r);
    }
    rig.stop().await;
    let report = summarize(&args, runs, failures.is_empty());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if !failures.is_empty() {
        bail!("chunks were lost or duplicated in run(s) {failures:?}");
    }
    Ok(())
}

fn summarize(args: &OverheadArgs, runs: Vec<RunReport>, complete: bool) -> Report {
    let q = |f: fn(&RunReport) -> Quantiles| {
        Quantiles::median_of(&runs.iter().map(f).collect::<Vec<_>>())
    };
    let oq = |f: fn(&RunReport) -> Option<Quantiles>| {
        let v: Vec<Quantiles> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| Quantiles::median_of(&v))
    };
    let m = |f: fn(&RunReport) -> f64| median(runs.iter().map(f).collect());
    let harness = oq(|r| r.harness);
    let log_shares: Vec<f64> = runs.iter().filter_map(|r| r.log_share_over_1ms).collect();
    Report {
        bench: "overhead",
        chunks: args.chunks,
        interval_us: args.interval_us,
        achieved_interval_us: m(|r| r.achieved_interval_us),
        runs: runs.len(),
        log_dir: args
            .log_dir
            .as_ref()
            .map_or_else(std::env::temp_dir, Clone::clone)
            .display()
            .to_string(),
        end_to_end: q(|r| r.end_to_end),
        model_side: q(|r| r.model_side),
        mux_side: q(|r| r.mux_side),
        hop_a: oq(|r| r.hop_a.map(|h| h.latency)),
        hop_b: oq(|r| r.hop_b.map(|h| h.latency)),
        harness,
        log_append: oq(|r| r.log_append),
        log_ready: oq(|r| r.log_ready),
        handoff: oq(|r| r.handoff),
        acp_end_to_end: oq(|r| r.acp.map(|a| a.end_to_end)),
        acp_minus_ws: oq(|r| r.acp.map(|a| a.minus_ws)),
        e2e_share_over_1ms: m(|r| r.e2e_share_over_1ms),
        log_share_over_1ms: (!log_shares.is_empty()).then(|| median(log_shares)),
        tail_model_side_us: m(|r| r.tail_model_side_us),
        tail_mux_side_us: m(|r| r.tail_mux_side_us),
        complete,
        target_p99_us: TARGET_P99_US,
        target_met: harness.map(|h| h.p99 < TARGET_P99_US),
        per_run: runs,
    }
}

fn print_table(r: &Report) {
    println!(
        "harness overhead: model SSE chunk -> text_delta out of the agent's WebSocket (loopback)"
    );
    println!(
        "{} chunks per run, {} us apart (achieved {:.0} us), medians of {} runs; event log under {}",
        r.chunks, r.interval_us, r.achieved_interval_us, r.runs, r.log_dir
    );
    println!();
    println!(
        "{:<52} {:>8} {:>8} {:>8} {:>8}",
        "microseconds", "p50", "p90", "p99", "max"
    );
    let row = |name: &str, q: Option<Quantiles>| match q {
        Some(q) => println!(
            "{:<52} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            name, q.p50, q.p90, q.p99, q.max
        ),
        None => println!("{name:<52} {:>8} {:>8} {:>8} {:>8}", "-", "-", "-", "-"),
    };
    row("end to end (raw)", Some(r.end_to_end));
    row(
        "  model side: server send -> provider yields",
        Some(r.model_side),
    );
    row(
        "  mux side: provider yields -> client receipt",
        Some(r.mux_side),
    );
    if r.acp_end_to_end.is_some() {
        row("ACP editor (tether acp): end to end", r.acp_end_to_end);
        row(
            "  ACP receipt - WebSocket receipt, per chunk",
            r.acp_minus_ws,
        );
    }
    row("hop A: same SSE server -> plain reqwest", r.hop_a);
    row("hop B: plain axum WebSocket -> same client", r.hop_b);
    row("harness estimate: e2e - (hop A p50 + hop B p50)", r.harness);
    row("event log alone: append -> committed", r.log_append);
    row("event log alone: event ready -> committed", r.log_ready);
    row("  its thread round trip without SQLite", r.handoff);
    println!();
    let subtracted: Vec<f64> = r.per_run.iter().filter_map(|x| x.subtracted_us).collect();
    if !subtracted.is_empty() {
        println!(
            "subtracted per run (hop A p50 + hop B p50): median {:.1} us",
            median(subtracted)
        );
    }
    let delivered: Vec<String> = r
        .per_run
        .iter()
        .map(|x| format!("{}/{}", x.delivered, x.sent))
        .collect();
    println!(
        "chunks delivered/sent per run: {} ({})",
        delivered.join(" "),
        if r.complete {
            "all equal, no duplicates"
        } else {
            "INCOMPLETE"
        }
    );
    println!(
        "end-to-end chunks above 1 ms: {:.2} %{}",
        r.e2e_share_over_1ms * 100.0,
        r.log_share_over_1ms
            .map(|s| format!(
                "; log events (ready -> committed) above 1 ms: {:.2} %",
                s * 100.0
            ))
            .unwrap_or_default()
    );
    println!(
        "slowest 1 % end to end: model side {:.0} us, mux side {:.0} us (medians)",
        r.tail_model_side_us, r.tail_mux_side_us
    );
    match r.target_met {
        Some(true) => println!("target: harness p99 < 1 ms: met"),
        Some(false) => println!("target: harness p99 < 1 ms: NOT met"),
        None => println!("target: harness p99 < 1 ms: not evaluated (--e2e-only)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_split_where_it_happened() {
        let n = 200;
        let run = agent::E2eRun {
            sent: Stamps::new(n),
            yielded: Stamps::new(n),
            received: Stamps::new(n),
            acp_received: None,
        };
        for i in 0..n {
            let base = 1_000_000 * (i + 1);
            let mux = if i < 2 { 5_000_000 } else { 100_000 };
            run.sent.set(i, base);
            run.yielded.set(i, base + 50_000);
            run.received.set(i, base + 50_000 + mux);
        }
        let (model, mux) = tail_split(&run);
        assert_eq!((model, mux), (50.0, 5000.0));
    }
}
