//! tether-bench: benchmarks for tether.
//!
//! ```text
//! cargo run --release -p tether-bench -- fanout --help
//! cargo run --release -p tether-bench -- fanout                      # N = 1,10,100,1000; 3 runs each
//! cargo run --release -p tether-bench -- fanout --clients 100 --runs 5
//! cargo run --release -p tether-bench -- fanout --clients 10,100 --events 50000 --window 512
//! cargo run --release -p tether-bench -- fanout --baseline-writes batched
//! cargo run --release -p tether-bench -- fanout --clients 100 --mux-only   # e.g. under perf
//! cargo run --release -p tether-bench -- fanout --json > fanout.json
//! cargo build --release -p tether -p tether-bench
//! target/release/tether-bench fanout --open                          # real path vs raw ceiling
//! target/release/tether-bench fanout --open --clients 100 --runs 5 --frames 40000
//! ```
//!
//! ## `fanout --open`
//!
//! The real path, open loop: a `tether agent` process (event log on disk) whose scripted model
//! streams one long answer with no chunk delay, N WebSocket clients attached, against the raw
//! ceiling measured in the same run (a bare WebSocket server writing frames of the same size to
//! N clients as fast as the sockets take them). See `open.rs`.
//!
//! ## `fanout`
//!
//! Measures the multiplexer's fan-out, all in one process on loopback:
//!
//! * **mux** — an agent core (event log in a temporary directory, the multiplexer, the
//!   WebSocket listener on `127.0.0.1:0` with no tokens, i.e. loopback-open mode) whose model
//!   provider streams `text_delta` chunks as fast as it may. N WebSocket clients connect; the
//!   first creates a session, all attach, the first sends `input`, and every client counts the
//!   turn's `text_delta` frames.
//! * **baseline** (the ceiling) — the same N clients on a plain axum WebSocket endpoint (same
//!   listener stack) that writes the same event frames, each encoded once and shared through a
//!   broadcast channel, straight to every socket: no event log, no session actor, no
//!   per-client queues. `--baseline-writes batched` (the default) feeds every frame that is
//!   ready, then flushes once, as the agent's transport does; `per-frame` flushes each frame.
//!
//! Both producers obey the same credit window: never more than `--window` events outstanding
//! that not every client has received yet (so the mux's per-client queue, 1024 frames, is
//! never close to evicting anyone). Each event's text embeds its creation instant, so every
//! client records the latency from creation to receipt.
//!
//! For each N it prints the medians over `--runs` runs (mux and baseline runs interleaved):
//! events/s delivered to each client, total frames/s delivered by the mux and by the
//! baseline, their ratio, the mux's p50/p99 latency (the baseline's for reference), and the
//! process CPU time (servers and clients together) per delivered frame, mux/baseline. On a
//! shared machine the CPU figure is the steadier measure of cost. `--json` prints the same
//! (plus every run) as JSON instead of the table. Progress notes go to stderr.
//!
//! Reading the figures: both servers use the agent's listener stack, which sets
//! `TCP_NODELAY`. At N = 1000 the p99 is queueing (about window / rate), not a stall.
//!
//! By default `--events` scales with N (2 000 000 / N frames per run, between 2 000 and
//! 20 000 events), so the default sweep takes a few minutes on a 2-core machine. The
//! file-descriptor soft limit is raised to the hard limit first: N = 1000 needs two sockets per
//! client in this one process.

mod baseline;
mod client;
mod cpu;
mod credit;
mod hub_load;
mod idle;
mod intake;
mod mux_side;
mod open;
mod overhead;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use client::RunResult;
use serde::Serialize;
use std::time::Instant;
use tether_mux::MuxConfig;

#[derive(Parser)]
#[command(name = "tether-bench", version, about = "Benchmarks for tether")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fan-out throughput and latency of the multiplexer against a plain WebSocket baseline.
    Fanout(FanoutArgs),
    /// Load on a hub: N simulated version-2 agents registering, heartbeating, sending alerts.
    Hub(hub_load::HubArgs),
    /// Harness overhead: a model SSE chunk arriving to its text_delta leaving the WebSocket.
    Overhead(overhead::OverheadArgs),
    /// `tether mcp` and `POST /mcp`: a model chunk's trip to an MCP client against a WebSocket
    /// client of the same turn.
    McpOverhead(overhead::McpOverheadArgs),
    /// Resident memory per idle client connection of a real `tether agent`.
    Idle(idle::IdleArgs),
    /// Alertmanager notifications into a real hub, and POST-to-operator latency.
    Intake(intake::IntakeArgs),
    /// The raw ceiling's server process of `fanout --open` (started by it).
    #[command(hide = true)]
    RawServer {
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        frames: u64,
    },
}

#[derive(Args, Clone, Debug)]
struct FanoutArgs {
    /// Numbers of clients to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    clients: Vec<usize>,
    /// Events per run [default: 2 000 000 / N, between 2 000 and 20 000].
    #[arg(long)]
    events: Option<u64>,
    /// Runs per N (the table shows medians).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Credit window: events created but not yet received by every client, at most.
    #[arg(long, default_value_t = 256)]
    window: u64,
    /// How the baseline writes to each socket.
    #[arg(long, value_enum, default_value = "batched")]
    baseline_writes: baseline::Writes,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Measure only the mux (e.g. while profiling it).
    #[arg(long, conflicts_with = "baseline_only")]
    mux_only: bool,
    /// Measure only the baseline.
    #[arg(long)]
    baseline_only: bool,
    /// Open loop on the real path: a `tether agent` process with the scripted model streaming
    /// as fast as it can (no credit window), against a bare WebSocket server writing frames of
    /// the same size (the raw ceiling), in the same run. `--window` and `--baseline-writes`
    /// do not apply; `--mux-only`/`--baseline-only` pick the real path or the ceiling.
    #[arg(long)]
    open: bool,
    /// With `--open`: text deltas per run [default: 4 000 000 / N, between 4 000 and 200 000].
    #[arg(long, requires = "open", conflicts_with = "events")]
    frames: Option<u64>,
    /// With `--open`: the `tether` binary [default: the one next to this executable].
    #[arg(long, requires = "open")]
    tether: Option<std::path::PathBuf>,
    /// With `--open`: the agent's `[sessions] client_queue` [default: frames per run + 1024].
    #[arg(long, requires = "open")]
    client_queue: Option<usize>,
}

fn default_events(clients: usize) -> u64 {
    (2_000_000 / clients.max(1) as u64).clamp(2_000, 20_000)
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    window: u64,
    baseline_writes: baseline::Writes,
    runs: usize,
    results: Vec<Row>,
}

#[derive(Serialize)]
struct Row {
    clients: usize,
    events: u64,
    mux: Option<Summary>,
    baseline: Option<Summary>,
    /// Median mux frames/s over median baseline frames/s.
    ratio: Option<f64>,
}

#[derive(Serialize)]
struct Summary {
    events_per_s_per_client: f64,
    frames_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_frame: f64,
    runs: Vec<RunJson>,
}

#[derive(Serialize)]
struct RunJson {
    elapsed_s: f64,
    frames_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_frame: f64,
}

/// The median of `v` (0 when empty).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn summarize(runs: &[RunResult]) -> Option<Summary> {
    if runs.is_empty() {
        return None;
    }
    let pick = |f: fn(&RunResult) -> f64| median(runs.iter().map(f).collect());
    Some(Summary {
        events_per_s_per_client: pick(RunResult::events_per_s_per_client),
        frames_per_s: pick(RunResult::frames_per_s),
        p50_ms: pick(|r| r.p50_ms),
        p99_ms: pick(|r| r.p99_ms),
        cpu_us_per_frame: pick(|r| r.cpu_us_per_frame),
        runs: runs
            .iter()
            .map(|r| RunJson {
                elapsed_s: r.elapsed_s,
                frames_per_s: r.frames_per_s(),
                p50_ms: r.p50_ms,
                p99_ms: r.p99_ms,
                cpu_us_per_frame: r.cpu_us_per_frame,
            })
            .collect(),
    })
}

/// Raises the soft limit on open files to the hard limit; returns the new soft limit.
fn raise_fd_limit() -> std::io::Result<libc::rlim_t> {
    tether_transport::raise_open_files_limit().map(|(_, after)| after)
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn print_table(report: &Report) {
    println!(
        "fan-out over WebSocket on loopback: medians of {} run(s), credit window {}, baseline writes {}",
        report.runs,
        report.window,
        report.baseline_writes.name()
    );
    println!(
        "{:>7} {:>7} {:>15} {:>12} {:>13} {:>8} {:>8} {:>8} {:>15} {:>15}",
        "clients",
        "events",
        "mux ev/s/client",
        "mux frames/s",
        "base frames/s",
        "mux/base",
        "p50 ms",
        "p99 ms",
        "base p50/p99 ms",
        "CPU us/frame m/b"
    );
    let dash = "-".to_owned();
    for row in &report.results {
        let mux = row.mux.as_ref();
        let base = row.baseline.as_ref();
        println!(
            "{:>7} {:>7} {:>15} {:>12} {:>13} {:>8} {:>8} {:>8} {:>15} {:>15}",
            row.clients,
            row.events,
            mux.map_or(dash.clone(), |m| fmt_rate(m.events_per_s_per_client)),
            mux.map_or(dash.clone(), |m| fmt_rate(m.frames_per_s)),
            base.map_or(dash.clone(), |b| fmt_rate(b.frames_per_s)),
            row.ratio
                .map_or(dash.clone(), |r| format!("{:.0} %", r * 100.0)),
            mux.map_or(dash.clone(), |m| format!("{:.2}", m.p50_ms)),
            mux.map_or(dash.clone(), |m| format!("{:.2}", m.p99_ms)),
            base.map_or(dash.clone(), |b| format!("{:.2}/{:.2}", b.p50_ms, b.p99_ms)),
            format!(
                "{}/{}",
                mux.map_or(dash.clone(), |m| format!("{:.2}", m.cpu_us_per_frame)),
                base.map_or(dash.clone(), |b| format!("{:.2}", b.cpu_us_per_frame)),
            ),
        );
    }
    // A tail of 40 ms or more far above the median is the TCP stall; a tail near the median is
    // queueing (latency is about window / rate).
    let stalled = report.results.iter().any(|row| {
        [row.mux.as_ref(), row.baseline.as_ref()]
            .into_iter()
            .flatten()
            .any(|s| s.p99_ms >= 40.0 && s.p99_ms > 4.0 * s.p50_ms)
    });
    if stalled {
        println!(
            "note: a p99 of 40 ms or more far above p50 looks like TCP delayed-ACK stalls: \
             check that TCP_NODELAY is set on the sockets (tether_transport::serve_http)"
        );
    }
}

fn note_run(n: usize, run: usize, what: &str, r: &RunResult) {
    client::note(&format!(
        "N={n} run {run}: {what} {} frames/s ({:.2} s), p50 {:.2} ms, p99 {:.2} ms, {:.2} CPU us/frame",
        fmt_rate(r.frames_per_s()),
        r.elapsed_s,
        r.p50_ms,
        r.p99_ms,
        r.cpu_us_per_frame,
    ));
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    if args.open {
        return open::run(open::OpenArgs {
            clients: args.clients,
            frames: args.frames,
            runs: args.runs.max(1),
            tether: args.tether,
            client_queue: args.client_queue,
            real_only: args.mux_only,
            raw_only: args.baseline_only,
            json: args.json,
        })
        .await;
    }
    match raise_fd_limit() {
        Ok(limit) => {
            let needed = args.clients.iter().max().copied().unwrap_or(0) * 2 + 64;
            if (limit as usize) < needed {
                client::note(&format!(
                    "the open-files limit is {limit}; {needed} may be needed"
                ));
            }
        }
        Err(e) => client::note(&format!("cannot raise the open-files limit: {e}")),
    }
    let epoch = Instant::now();
    let core = mux_side::Core::start(MuxConfig::default())
        .await
        .context("starting the agent core")?;
    let mut results = Vec::new();
    for &n in &args.clients {
        if n == 0 {
            continue;
        }
        let events = args.events.unwrap_or_else(|| default_events(n));
        let mut mux_runs = Vec::new();
        let mut base_runs = Vec::new();
        for run in 1..=args.runs {
            if !args.baseline_only {
                let r = core
                    .run(n, events, args.window, epoch)
                    .await
                    .with_context(|| format!("mux run {run} with {n} clients"))?;
                note_run(n, run, "mux", &r);
                mux_runs.push(r);
            }
            if !args.mux_only {
                let r = baseline::run(n, events, args.window, args.baseline_writes, epoch)
                    .await
                    .with_context(|| format!("baseline run {run} with {n} clients"))?;
                note_run(n, run, "baseline", &r);
                base_runs.push(r);
            }
        }
        let mux = summarize(&mux_runs);
        let baseline = summarize(&base_runs);
        let ratio = match (&mux, &baseline) {
            (Some(m), Some(b)) if b.frames_per_s > 0.0 => Some(m.frames_per_s / b.frames_per_s),
            _ => None,
        };
        results.push(Row {
            clients: n,
            events,
            mux,
            baseline,
            ratio,
        });
    }
    core.stop().await;
    let report = Report {
        bench: "fanout",
        window: args.window,
        baseline_writes: args.baseline_writes,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.command {
        Command::Fanout(args) => runtime.block_on(fanout(args)),
        Command::Hub(args) => runtime.block_on(hub_load::run(args)),
        Command::Overhead(args) => runtime.block_on(overhead::run(args)),
        Command::McpOverhead(args) => runtime.block_on(overhead::run_mcp(args)),
        Command::Idle(args) => runtime.block_on(idle::run(args)),
        Command::Intake(args) => runtime.block_on(intake::run(args)),
        Command::RawServer { clients, frames } => {
            runtime.block_on(open::raw_server(clients, frames))
        }
    }
}
