//! `tether-bench hub`: load on a real hub from N simulated version-2 agents.
//!
//! ```text
//! cargo build --release -p tether -p tether-bench
//! target/release/tether-bench hub                                 # N = 1000, 10000
//! target/release/tether-bench hub --agents 100,1000 --runs 3 --alerts-per-agent 250
//! target/release/tether-bench hub --hub-bin /usr/local/bin/tether --json > hub.json
//! ```
//!
//! For each N (and each of `--runs` runs; the table shows medians) it:
//!
//! 1. raises its own open-files soft limit to the hard limit (the hub, spawned afterwards,
//!    inherits it), writes a `hub.toml` in a fresh temporary directory (state directory,
//!    `listen` on a free loopback port, a shared `enrollment_token` so the agents need no
//!    individual credentials, `max_agents` above N) and starts `tether hub --config` on it —
//!    the real binary, `--hub-bin` or the `tether` next to this executable — its log going to
//!    the temporary directory;
//! 2. once `/healthz` answers and a `--settle` has passed, reads the hub's RSS (`VmRSS` in
//!    `/proc/<pid>/status`): the baseline;
//! 3. starts N agents (one task each, see [`agent`]), at most `--connect-concurrency` of them
//!    between dial and `ack` at once. Registrations/s is N over the time from the first dial
//!    to the last `ack`;
//! 4. with the N agents connected and idle (each, as the real agent does, heartbeats once on
//!    registering and then every `--heartbeat`, and answers `ping` with `pong`) for a
//!    `--settle`, reads the RSS again and checks `/healthz`'s `agents_connected`; RSS per agent
//!    is (RSS_N − RSS_0) / connected agents;
//! 5. releases the alert burst: every agent at once sends `--alerts-per-agent` events (seq 1,
//!    2, …; at most 100 per `alert_events` frame, one frame in flight per agent) and times
//!    each frame to the `alert_ack` covering it. Alerts/s is the events acknowledged over the
//!    time from the first frame sent to the last ack; the hub's `alerts_stored_total`
//!    (`/metrics`) is checked against it;
//! 6. closes the agents and stops the hub with SIGTERM (killed if it has not exited in 20 s).
//!
//! Every wait has a timeout; every failure is counted by kind and reported (the table's
//! `errors` column, the list below it, and the JSON), as are WARN/ERROR lines in the hub's log.
//! The hub's CPU time (user + system, from `/proc/<pid>/stat`) per registration and per alert
//! is shown too: on a shared machine it is steadier than the rates.
//!
//! Reading the figures:
//!
//! * A registration taking ~1 s more than the others is a SYN retransmit: the hub's listen
//!   queue overflowed. The hub listens with a backlog of 4096 (capped by
//!   `net.core.somaxconn`) for this reason; with tokio's default of 128 it happened now and
//!   then above `--connect-concurrency 128`, making registrations/s bimodal. The
//!   machine-wide `ListenOverflows` count during registration is reported per run.
//! * At small N the per-agent RSS carries fixed costs: the SQLite page cache, and the blocking
//!   threads (`spawn_blocking`) the registration burst started, which are still alive at the
//!   reading (they exit after 10 s idle). The per-run thread counts show them. N = 10 000 is
//!   the figure to compare with a per-agent budget.
//! * `--hold-idle 60s` keeps the agents connected before the burst, to inspect the hub (e.g.
//!   `heaptrack -p`, `pmap`); `--json` has every run's figures, failures and hub-log counts.

mod agent;
pub(crate) mod hub_proc;

use agent::{Counters, Phase, Plan, Report};
use anyhow::{Context, bail};
use hub_proc::HubProc;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};

#[derive(clap::Args, Clone, Debug)]
pub struct HubArgs {
    /// Numbers of simulated agents, comma-separated (one fresh hub per N and run).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    agents: Vec<usize>,
    /// Alert events each agent sends in the burst (up to 100 per `alert_events` frame).
    #[arg(long, default_value_t = 10)]
    alerts_per_agent: u64,
    /// Heartbeat period of each agent (e.g. 30s, 500ms, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Agents between dial and register `ack` at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// The `tether` binary to run as the hub [default: `tether` next to this executable].
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Runs per N (the table shows medians).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Quiet time before each RSS reading.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    settle: Duration,
    /// Keep the agents connected and idle this long after the RSS reading, before the alert
    /// burst (to inspect the hub by hand: its pid is printed).
    #[arg(long, value_parser = parse_duration)]
    hold_idle: Option<Duration>,
    /// How long an agent waits for the `alert_ack` to one frame.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    alert_ack_timeout: Duration,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

/// `30s`, `500ms`, `2m`, `1h`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s or 500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("`{other}` is not a unit (ms, s, m, h)")),
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("`{text}` must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// How long the coordinator waits for every agent to report on its registration (a guard:
/// each agent's own waits are bounded).
const REGISTER_PHASE_GUARD: Duration = Duration::from_secs(900);

/// One run's figures.
#[derive(Clone, Debug, Serialize)]
struct RunResult {
    agents: usize,
    registered: usize,
    /// Registrations per second, first dial to last `ack`.
    registrations_per_s: f64,
    register_s: f64,
    /// Each agent's dial to `ack`.
    register_p50_ms: f64,
    register_p99_ms: f64,
    register_max_ms: f64,
    connect_retries: u64,
    /// Connections the kernel dropped because a listen queue was full, during registration
    /// (`TcpExt: ListenOverflows`, machine-wide); each costs that agent a 1 s SYN retransmit.
    listen_overflows: Option<u64>,
    rss_baseline_kib: u64,
    rss_connected_kib: u64,
    rss_anon_baseline_kib: u64,
    rss_anon_connected_kib: u64,
    /// (RSS with the agents connected − baseline) / agents connected.
    rss_per_agent_kib: f64,
    /// RSS a `--settle` after the burst.
    rss_after_alerts_kib: u64,
    hub_threads_baseline: u64,
    hub_threads_connected: u64,
    hub_threads_after_alerts: u64,
    /// `agents_connected` from `/healthz`, idle and after the alerts.
    healthz_connected: u64,
    healthz_connected_after_alerts: u64,
    alerts_acked: u64,
    /// `tether_hub_alerts_stored_total` after the burst.
    alerts_stored: u64,
    alerts_per_s: f64,
    alerts_s: f64,
    alert_frames: usize,
    alert_p50_ms: f64,
    alert_p99_ms: f64,
    alert_max_ms: f64,
    hub_cpu_us_per_registration: f64,
    hub_cpu_us_per_alert: f64,
    heartbeats: u64,
    pongs: u64,
    errors: u64,
    /// Failures by kind: count and the first one's detail.
    failures: BTreeMap<String, (u64, String)>,
    hub_log_warnings: u64,
    hub_log_errors: u64,
    hub_log_first_problem: Option<String>,
    hub_open_files_limit: Option<u64>,
    hub_stopped_cleanly: bool,
    hub_stop_s: f64,
}

#[derive(Serialize)]
struct Row {
    agents: usize,
    /// Medians over the runs (errors: the sum).
    registered: usize,
    registrations_per_s: f64,
    rss_baseline_mib: f64,
    rss_connected_mib: f64,
    rss_per_agent_kib: f64,
    healthz_connected: u64,
    alerts_per_s: f64,
    alert_p50_ms: f64,
    alert_p99_ms: f64,
    hub_cpu_us_per_registration: f64,
    hub_cpu_us_per_alert: f64,
    errors: u64,
    runs: Vec<RunResult>,
}

#[derive(Serialize)]
struct HubReport {
    bench: &'static str,
    hub_bin: String,
    alerts_per_agent: u64,
    heartbeat_s: f64,
    connect_concurrency: usize,
    settle_s: f64,
    runs: usize,
    open_files_limit: Option<u64>,
    /// The project's target: at most this much hub RSS per connected agent.
    target_rss_per_agent_kib: f64,
    results: Vec<Row>,
}

const TARGET_KIB_PER_AGENT: f64 = 16.0;

fn note(message: &str) {
    eprintln!("tether-bench hub: {message}");
}

fn default_hub_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe
        .parent()
        .context("this executable has no parent directory")?;
    Ok(dir.join("tether"))
}

pub async fn run(args: HubArgs) -> anyhow::Result<()> {
    if args.connect_concurrency == 0 {
        bail!("--connect-concurrency must be at least 1");
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let hub_bin = match &args.hub_bin {
        Some(p) => p.clone(),
        None => default_hub_bin()?,
    };
    if !hub_bin.is_file() {
        bail!(
            "no hub binary at {} (build it: cargo build --release -p tether, or pass --hub-bin)",
            hub_bin.display()
        );
    }
    // Raised before the hub is spawned: the child inherits the limit.
    let limit = match crate::raise_fd_limit() {
        Ok(l) => Some(l),
        Err(e) => {
            note(&format!("cannot raise the open-files limit: {e}"));
            None
        }
    };
    let biggest = args.agents.iter().copied().max().unwrap_or(0);
    if let Some(l) = limit
        && (l as usize) < biggest + 64
    {
        note(&format!(
            "the open-files limit is {l}; {} agents need about {} in this process and in the hub",
            biggest,
            biggest + 64
        ));
    }
    let mut results = Vec::new();
    for &n in &args.agents {
        if n == 0 {
            continue;
        }
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            let r = run_once(n, &args, &hub_bin)
                .await
                .with_context(|| format!("N={n} run {run}"))?;
            note(&format!(
                "N={n} run {run}: {}/{n} registered at {:.0}/s; RSS {:.1} → {:.1} MiB ({:.2} KiB/agent); \
                 healthz {}; {} alerts at {:.0}/s, p50 {:.1} ms, p99 {:.1} ms; {} error(s)",
                r.registered,
                r.registrations_per_s,
                r.rss_baseline_kib as f64 / 1024.0,
                r.rss_connected_kib as f64 / 1024.0,
                r.rss_per_agent_kib,
                r.healthz_connected,
                r.alerts_acked,
                r.alerts_per_s,
                r.alert_p50_ms,
                r.alert_p99_ms,
                r.errors,
            ));
            runs.push(r);
        }
        results.push(summarize(n, runs));
    }
    let report = HubReport {
        bench: "hub",
        hub_bin: hub_bin.display().to_string(),
        alerts_per_agent: args.alerts_per_agent,
        heartbeat_s: args.heartbeat.as_secs_f64(),
        connect_concurrency: args.connect_concurrency,
        settle_s: args.settle.as_secs_f64(),
        runs: args.runs,
        open_files_limit: limit,
        target_rss_per_agent_kib: TARGET_KIB_PER_AGENT,
        results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn summarize(n: usize, runs: Vec<RunResult>) -> Row {
    let pick = |f: &dyn Fn(&RunResult) -> f64| crate::median(runs.iter().map(f).collect());
    Row {
        agents: n,
        registered: pick(&|r| r.registered as f64) as usize,
        registrations_per_s: pick(&|r| r.registrations_per_s),
        rss_baseline_mib: pick(&|r| r.rss_baseline_kib as f64 / 1024.0),
        rss_connected_mib: pick(&|r| r.rss_connected_kib as f64 / 1024.0),
        rss_per_agent_kib: pick(&|r| r.rss_per_agent_kib),
        healthz_connected: pick(&|r| r.healthz_connected as f64) as u64,
        alerts_per_s: pick(&|r| r.alerts_per_s),
        alert_p50_ms: pick(&|r| r.alert_p50_ms),
        alert_p99_ms: pick(&|r| r.alert_p99_ms),
        hub_cpu_us_per_registration: pick(&|r| r.hub_cpu_us_per_registration),
        hub_cpu_us_per_alert: pick(&|r| r.hub_cpu_us_per_alert),
        errors: runs.iter().map(|r| r.errors).sum(),
        runs,
    }
}

/// Failures by kind.
#[derive(Default)]
struct Failures(BTreeMap<String, (u64, String)>);

impl Failures {
    fn add(&mut self, phase: &str, f: agent::Failure) {
        let entry = self
            .0
            .entry(format!("{phase}: {}", f.kind))
            .or_insert_with(|| (0, f.detail));
        entry.0 += 1;
    }

    fn add_n(&mut self, kind: &str, n: u64, detail: String) {
        if n > 0 {
            self.0.entry(kind.to_owned()).or_insert((0, detail)).0 += n;
        }
    }

    fn total(&self) -> u64 {
        self.0.values().map(|(n, _)| n).sum()
    }
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    f64::from(sorted_us[rank.clamp(1, sorted_us.len()) - 1]) / 1e3
}

async fn run_once(
    n: usize,
    args: &HubArgs,
    hub_bin: &std::path::Path,
) -> anyhow::Result<RunResult> {
    let dir = tempfile::Builder::new()
        .prefix("tether-bench-hub-")
        .tempdir()
        .context("creating a temporary directory")?;
    let max_agents = n + n / 10 + 100;
    let mut hub = HubProc::start(hub_bin, dir.path(), max_agents).await?;
    note(&format!(
        "N={n}: hub pid {} on {} (open-files limit {})",
        hub.pid(),
        hub.addr,
        hub.open_files_limit()
            .map_or_else(|| "?".to_owned(), |l| l.to_string())
    ));
    let result = match drive(n, args, &hub).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let state = match hub.exit_status() {
                Some(status) => format!("the hub has exited ({status})"),
                None => "the hub is still running".to_owned(),
            };
            Err(e.context(format!("{state}; its log ends:\n{}", hub.log_tail(8))))
        }
    };
    let (warn, error, first) = hub.log_problems();
    let open_files = hub.open_files_limit();
    let stopped = hub.stop().await;
    // A failed run's own error says more than a failed stop.
    let mut r = result?;
    let stopped = stopped?;
    if !stopped.clean {
        note(&format!(
            "N={n}: the hub did not stop on SIGTERM: {}",
            stopped.status
        ));
    }
    r.hub_log_warnings = warn;
    r.hub_log_errors = error;
    r.hub_log_first_problem = first;
    r.hub_open_files_limit = open_files;
    r.hub_stopped_cleanly = stopped.clean;
    r.hub_stop_s = stopped.stop_s;
    Ok(r)
}

/// Receives reports until `want` of the kinds `accept` counts have come, or `guard` passes;
/// returns how many came.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Report>,
    want: usize,
    guard: Duration,
    mut accept: impl FnMut(Report) -> bool,
) -> usize {
    let deadline = tokio::time::Instant::now() + guard;
    let mut got = 0;
    while got < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => {
                if accept(r) {
                    got += 1;
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    got
}

async fn drive(n: usize, args: &HubArgs, hub: &HubProc) -> anyhow::Result<RunResult> {
    tokio::time::sleep(args.settle).await;
    let base = hub.status()?;
    let cpu0 = hub.cpu_s()?;
    let overflows0 = hub_proc::listen_overflows();

    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let plan = Arc::new(Plan {
        addr: hub.addr,
        token: hub.token.clone(),
        heartbeat: args.heartbeat,
        alerts_per_agent: args.alerts_per_agent,
        alert_ack_timeout: args.alert_ack_timeout,
        connect: Semaphore::new(args.connect_concurrency),
        reports: reports_tx,
        counters: Counters::default(),
    });
    let mut failures = Failures::default();

    // ---- registration ----
    note(&format!("N={n}: connecting"));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tasks.spawn(agent::run(i, plan.clone(), phase_rx.clone()));
    }
    drop(phase_rx);
    let mut first_dial: Option<Instant> = None;
    let mut last_ack: Option<Instant> = None;
    let mut registered = 0usize;
    let mut retries = 0u64;
    let mut register_us: Vec<u32> = Vec::with_capacity(n);
    // Agents that registered, then failed before the alert burst.
    let mut idle_failed = 0usize;
    let reported = collect(&mut reports, n, REGISTER_PHASE_GUARD, |r| match r {
        Report::Registered {
            dialed,
            acked,
            retries: r,
        } => {
            registered += 1;
            retries += u64::from(r);
            let us = acked.duration_since(dialed).as_micros();
            register_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            first_dial = Some(first_dial.map_or(dialed, |f| f.min(dialed)));
            last_ack = Some(last_ack.map_or(acked, |l| l.max(acked)));
            true
        }
        Report::RegisterFailed(f) => {
            failures.add("register", f);
            true
        }
        // An agent that registered and failed at once reports before everyone has
        // registered.
        Report::AlertsFailed(f) | Report::Lost(f) => {
            failures.add("idle", f);
            idle_failed += 1;
            false
        }
        Report::AlertsDone { .. } => false,
    })
    .await;
    failures.add_n(
        "register: no report",
        (n - reported) as u64,
        format!(
            "agents still registering after {} s",
            REGISTER_PHASE_GUARD.as_secs()
        ),
    );
    let cpu1 = hub.cpu_s()?;
    let listen_overflows = hub_proc::listen_overflows()
        .zip(overflows0)
        .map(|(b, a)| b.saturating_sub(a));
    let register_s = match (first_dial, last_ack) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };

    // ---- idle with N connected ----
    note(&format!(
        "N={n}: {registered} registered in {register_s:.2} s; settling"
    ));
    tokio::time::sleep(args.settle).await;
    let connected = hub.status()?;
    let healthz_connected = match hub.healthz().await {
        Ok(c) => c,
        Err(e) => {
            failures.add_n("healthz", 1, format!("{e:#}"));
            0
        }
    };
    if healthz_connected != registered as u64 {
        failures.add_n(
            "healthz: agents_connected differs from registered",
            1,
            format!("healthz says {healthz_connected}, {registered} registered"),
        );
    }
    if let Some(hold) = args.hold_idle {
        note(&format!(
            "N={n}: holding {registered} agents idle for {:.0} s (hub pid {})",
            hold.as_secs_f64(),
            hub.pid()
        ));
        tokio::time::sleep(hold).await;
    }

    // Agents that failed while idle.
    while let Ok(r) = reports.try_recv() {
        if let Report::AlertsFailed(f) | Report::Lost(f) = r {
            failures.add("idle", f);
            idle_failed += 1;
        }
    }

    // ---- alert burst ----
    note(&format!("N={n}: alert burst"));
    let cpu2 = hub.cpu_s()?;
    phase_tx.send_replace(Phase::Alerts);
    let frames_per_agent = args
        .alerts_per_agent
        .div_ceil(tether_proto::link::MAX_ALERT_BATCH as u64);
    let alert_guard = args
        .alert_ack_timeout
        .mul_f64(frames_per_agent as f64 + 1.0)
        + Duration::from_secs(30);
    let mut latencies: Vec<u32> = Vec::new();
    let mut first_sent: Option<Instant> = None;
    let mut last_acked: Option<Instant> = None;
    let mut alerts_acked = 0u64;
    let expecting = registered.saturating_sub(idle_failed);
    let got = if args.alerts_per_agent == 0 {
        0
    } else {
        collect(&mut reports, expecting, alert_guard, |r| match r {
            Report::AlertsDone {
                first_sent: f,
                last_acked: l,
                alerts,
                latencies_us,
            } => {
                first_sent = Some(first_sent.map_or(f, |x| x.min(f)));
                last_acked = Some(last_acked.map_or(l, |x| x.max(l)));
                alerts_acked += alerts;
                latencies.extend(latencies_us);
                true
            }
            Report::AlertsFailed(f) => {
                failures.add("alerts", f);
                true
            }
            Report::Lost(f) => {
                failures.add("after alerts", f);
                false
            }
            _ => false,
        })
        .await
    };
    if args.alerts_per_agent > 0 {
        failures.add_n(
            "alerts: no report",
            (expecting - got) as u64,
            format!("agents still sending after {} s", alert_guard.as_secs()),
        );
    }
    let cpu3 = hub.cpu_s()?;
    let alerts_s = match (first_sent, last_acked) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let alerts_stored = match hub.metric("tether_hub_alerts_stored_total").await {
        Ok(v) => v as u64,
        Err(e) => {
            failures.add_n("metrics", 1, format!("{e:#}"));
            0
        }
    };
    if alerts_stored != alerts_acked {
        failures.add_n(
            "alerts: stored differs from acknowledged",
            1,
            format!("the hub stored {alerts_stored}, agents saw {alerts_acked} acknowledged"),
        );
    }
    let healthz_after = hub.healthz().await.unwrap_or(0);
    tokio::time::sleep(args.settle).await;
    let after = hub.status()?;

    // ---- close ----
    note(&format!("N={n}: closing"));
    phase_tx.send_replace(Phase::Close);
    let joined = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        failures.add_n(
            "close: agents still running",
            tasks.len() as u64,
            "after 60 s".into(),
        );
        tasks.abort_all();
    }
    while let Ok(r) = reports.try_recv() {
        match r {
            Report::Lost(f) => failures.add("after alerts", f),
            Report::AlertsFailed(f) => failures.add("alerts", f),
            _ => {}
        }
    }
    let counters = &plan.counters;

    latencies.sort_unstable();
    register_us.sort_unstable();
    let connected_n = healthz_connected.max(1) as f64;
    let rss_per_agent_kib = (connected.vm_rss_kib as f64 - base.vm_rss_kib as f64) / connected_n;
    Ok(RunResult {
        agents: n,
        registered,
        registrations_per_s: if register_s > 0.0 {
            registered as f64 / register_s
        } else {
            0.0
        },
        register_s,
        register_p50_ms: percentile_ms(&register_us, 50.0),
        register_p99_ms: percentile_ms(&register_us, 99.0),
        register_max_ms: register_us.last().map_or(0.0, |&us| f64::from(us) / 1e3),
        connect_retries: retries,
        listen_overflows,
        rss_baseline_kib: base.vm_rss_kib,
        rss_connected_kib: connected.vm_rss_kib,
        rss_anon_baseline_kib: base.rss_anon_kib,
        rss_anon_connected_kib: connected.rss_anon_kib,
        rss_per_agent_kib,
        rss_after_alerts_kib: after.vm_rss_kib,
        hub_threads_baseline: base.threads,
        hub_threads_connected: connected.threads,
        hub_threads_after_alerts: after.threads,
        healthz_connected,
        healthz_connected_after_alerts: healthz_after,
        alerts_acked,
        alerts_stored,
        alerts_per_s: if alerts_s > 0.0 {
            alerts_acked as f64 / alerts_s
        } else {
            0.0
        },
        alerts_s,
        alert_frames: latencies.len(),
        alert_p50_ms: percentile_ms(&latencies, 50.0),
        alert_p99_ms: percentile_ms(&latencies, 99.0),
        alert_max_ms: latencies.last().map_or(0.0, |&us| f64::from(us) / 1e3),
        hub_cpu_us_per_registration: if registered > 0 {
            (cpu1 - cpu0) * 1e6 / registered as f64
        } else {
            0.0
        },
        hub_cpu_us_per_alert: if alerts_acked > 0 {
            (cpu3 - cpu2) * 1e6 / alerts_acked as f64
        } else {
            0.0
        },
        heartbeats: counters.heartbeats.load(Ordering::Relaxed),
        pongs: counters.pongs.load(Ordering::Relaxed),
        errors: failures.total(),
        failures: failures.0,
        hub_log_warnings: 0,
        hub_log_errors: 0,
        hub_log_first_problem: None,
        hub_open_files_limit: None,
        hub_stopped_cleanly: false,
        hub_stop_s: 0.0,
    })
}

fn print_table(report: &HubReport) {
    println!(
        "hub load: real `tether hub` ({}), simulated v2 agents on loopback; {} alert(s)/agent, \
         heartbeat {} s, connect concurrency {}, settle {} s; medians of {} run(s)",
        report.hub_bin,
        report.alerts_per_agent,
        report.heartbeat_s,
        report.connect_concurrency,
        report.settle_s,
        report.runs,
    );
    println!(
        "{:>6} {:>7} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9} {:>8} {:>9} {:>13} {:>6}",
        "agents",
        "conn'd",
        "reg/s",
        "RSS0 MiB",
        "RSS_N MiB",
        "KiB/agent",
        "alerts/s",
        "p50 ms",
        "p99 ms",
        "CPU us/reg",
        "CPU us/alert",
        "errors"
    );
    for row in &report.results {
        println!(
            "{:>6} {:>7} {:>8.0} {:>8.1} {:>9.1} {:>9.2} {:>8.0} {:>9.1} {:>8.1} {:>9.0} {:>13.1} {:>6}",
            row.agents,
            row.healthz_connected,
            row.registrations_per_s,
            row.rss_baseline_mib,
            row.rss_connected_mib,
            row.rss_per_agent_kib,
            row.alerts_per_s,
            row.alert_p50_ms,
            row.alert_p99_ms,
            row.hub_cpu_us_per_registration,
            row.hub_cpu_us_per_alert,
            row.errors,
        );
    }
    println!(
        "target: 10 000 agents connected with hub RSS under {} KiB per agent",
        report.target_rss_per_agent_kib
    );
    let overflowed = report
        .results
        .iter()
        .flat_map(|row| &row.runs)
        .any(|r| r.listen_overflows.unwrap_or(0) > 0);
    if overflowed {
        println!(
            "note: listen-queue overflows during registration (the machine-wide count; the hub \
             asks for a backlog of 4096, capped by net.core.somaxconn): each costs one agent a \
             1 s SYN retransmit and stretches reg/s"
        );
    }
    for row in &report.results {
        for (i, r) in row.runs.iter().enumerate() {
            let mut notes = Vec::new();
            for (kind, (count, detail)) in &r.failures {
                notes.push(format!("{count} × {kind} (first: {detail})"));
            }
            if r.hub_log_errors + r.hub_log_warnings > 0 {
                notes.push(format!(
                    "hub log: {} WARN, {} ERROR (first: {})",
                    r.hub_log_warnings,
                    r.hub_log_errors,
                    r.hub_log_first_problem.as_deref().unwrap_or("")
                ));
            }
            if !r.hub_stopped_cleanly {
                notes.push("the hub did not stop on SIGTERM and was killed".into());
            }
            println!(
                "  N={} run {}: registration p50/p99/max {:.1}/{:.1}/{:.1} ms; threads {}/{}/{}, stored {}/{} alerts in {:.2} s ({} frames, max {:.1} ms), \
                 {} heartbeats, {} pongs, {} connect retries, {} listen overflows, RSS after alerts {:.1} MiB, hub stop {:.2} s",
                r.agents,
                i + 1,
                r.register_p50_ms,
                r.register_p99_ms,
                r.register_max_ms,
                r.hub_threads_baseline,
                r.hub_threads_connected,
                r.hub_threads_after_alerts,
                r.alerts_stored,
                r.alerts_acked,
                r.alerts_s,
                r.alert_frames,
                r.alert_max_ms,
                r.heartbeats,
                r.pongs,
                r.connect_retries,
                r.listen_overflows
                    .map_or_else(|| "?".to_owned(), |v| v.to_string()),
                r.rss_after_alerts_kib as f64 / 1024.0,
                r.hub_stop_s,
            );
            for n in notes {
                println!("    {n}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&[7000], 99.0), 7.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }
}
