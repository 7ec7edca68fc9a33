//! `tether-bench hub`: load on a real hub from N simulated version-2 agents.
//!
//! ```text
//! cargo build --release -p tether -p tether-bench
//! target/release/tether-bench hub                                 # N = 1000, 10000
//! target/release/tether-bench hub --agents 100,1000 --runs 3 --alerts-per-agent 250
//! target/release/tether-bench hub --hub-bin /usr/local/bin/tether --json > hub.json
//! target/release/tether-bench hub --store postgres --replicas 2 --agents 10000
//! target/release/tether-bench hub --store postgres --pg-url postgres://postgres@db:5432/postgres
//! ```
//!
//! `--store postgres` runs every hub on one PostgreSQL database, a fresh one per run
//! (`CREATE DATABASE`, dropped afterwards) on `--pg-url`'s cluster, or on a throwaway cluster
//! that `scripts/postgres.sh start` makes and `stop` removes at the end. `--replicas N` starts
//! N hubs on that database, each on its own port with the same enrollment token; agent i
//! dials replica i mod N, as a TCP load balancer would spread them. Each replica's RSS per
//! agent is measured from its own baseline; the table's figures are sums over the replicas.
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
//! 6. sessions (`--sessions`, default 200; 0 skips): an operator on `/v1/ws` of replica 2 (or
//!    the only hub) opens `session.create` + `attach {after_seq: 0}` on agents held by
//!    replica 1, one after the other, timing each `attach` to its reply (the snapshot). Then
//!    each such agent plays one turn of `--events-per-session` events in each of its sessions,
//!    one event per session every `--event-interval` (staggered), keeping the send
//!    [`Instant`] of each `(session, seq)`; the operator's reader stamps each event as it is
//!    read. Event latency is the difference (same process, one clock). Missing, duplicated or
//!    reordered events are errors;
//! 7. closes the agents and stops the hubs with SIGTERM (killed if not exited in 20 s), then
//!    counts the agents' alert events in the database (`alert_events`, SQLite or PostgreSQL):
//!    the count and the distinct `(agent_id, seq)` must both equal the acknowledged alerts.
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
mod operator;
mod pg;

use agent::{Counters, Phase, Plan, Report};
use anyhow::{Context, bail};
use hub_proc::HubProc;
use operator::Operator;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// Where the hubs keep their state: SQLite in each hub's state directory, or one
    /// PostgreSQL database all replicas share (a fresh one per run).
    #[arg(long, value_enum, default_value = "sqlite")]
    store: Store,
    /// With `--store postgres`: a superuser URL of the cluster to use (each run creates a
    /// database of its own there and drops it at the end) [default: a throwaway cluster
    /// started with scripts/postgres.sh and stopped at the end].
    #[arg(long)]
    pg_url: Option<String>,
    /// The script that starts the throwaway cluster [default: scripts/postgres.sh of the
    /// checkout this executable was built in, else of the working directory].
    #[arg(long)]
    pg_script: Option<PathBuf>,
    /// Hub processes on the same database, each on its own port; agent i connects to
    /// replica i mod N (as a TCP load balancer would spread them). Above 1 needs
    /// `--store postgres`.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Sessions the operator (on replica 2, or the only one) opens on agents held by
    /// replica 1, timing `attach` and each event from the agent to the operator (0: none).
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Events of each session's turn (at least 4: turn_started, running, deltas,
    /// turn_ended, idle).
    #[arg(long, default_value_t = 20)]
    events_per_session: u64,
    /// Between two events of one session (sessions are staggered across it).
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    event_interval: Duration,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Store {
    Sqlite,
    Postgres,
}

/// The operator credential written into every replica's `hub.toml`.
const OPERATOR_TOKEN: &str = "bench-operator-token-0123456789";

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
    /// Agents' alert events in the database after the run, and how many distinct
    /// `(agent_id, seq)` among them; both must equal `alerts_acked` (stored exactly once).
    alerts_in_db: Option<u64>,
    alerts_in_db_distinct: Option<u64>,
    /// Each replica's own figures (the fields above are their sums; RSS per agent is the
    /// summed growth over the summed connected agents).
    replicas: Vec<ReplicaResult>,
    sessions: SessionStats,
}

/// One hub process of a run.
#[derive(Clone, Debug, Default, Serialize)]
struct ReplicaResult {
    replica: usize,
    addr: String,
    pid: u32,
    /// Agents that registered through it.
    agents_registered: usize,
    healthz_connected: u64,
    rss_baseline_kib: u64,
    rss_connected_kib: u64,
    /// (its RSS with its agents connected − its own baseline) / its connected agents.
    rss_per_agent_kib: f64,
    rss_after_alerts_kib: u64,
    threads_connected: u64,
    cpu_registration_s: f64,
    cpu_alerts_s: f64,
    /// `tether_hub_alerts_stored_total` of this replica.
    alerts_stored: u64,
    hub_log_warnings: u64,
    hub_log_errors: u64,
    hub_log_first_problem: Option<String>,
    open_files_limit: Option<u64>,
    stopped_cleanly: bool,
    stop_s: f64,
}

/// The session phase: an operator on one replica opens sessions on agents another holds.
#[derive(Clone, Debug, Default, Serialize)]
struct SessionStats {
    /// Replica (0-based) holding the sessions' agents, and the operator's.
    owner_replica: usize,
    operator_replica: usize,
    sessions_requested: usize,
    sessions_opened: usize,
    attached: usize,
    /// `session.create` request → reply.
    create_p50_ms: f64,
    create_p99_ms: f64,
    /// `attach` request → its reply (the snapshot).
    attach_p50_ms: f64,
    attach_p99_ms: f64,
    attach_max_ms: f64,
    events_sent: u64,
    events_received: u64,
    /// The agent's `session_event` send → the operator reading that event.
    event_p50_ms: f64,
    event_p99_ms: f64,
    event_max_ms: f64,
    /// Offered load: events per second over all sessions.
    events_offered_per_s: f64,
    events_out_of_order: u64,
    events_duplicated: u64,
}

#[derive(Serialize)]
struct Row {
    agents: usize,
    replicas: usize,
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
    /// Per replica: RSS per connected agent (its own baseline → loaded).
    replica_rss_per_agent_kib: Vec<f64>,
    replica_connected: Vec<u64>,
    sessions_opened: usize,
    attach_p50_ms: f64,
    attach_p99_ms: f64,
    events_received: u64,
    event_p50_ms: f64,
    event_p99_ms: f64,
    errors: u64,
    runs: Vec<RunResult>,
}

#[derive(Serialize)]
struct HubReport {
    bench: &'static str,
    hub_bin: String,
    store: Store,
    replicas: usize,
    /// PostgreSQL: `--pg-url` (password hidden) or "throwaway cluster".
    pg: Option<String>,
    sessions: usize,
    events_per_session: u64,
    event_interval_ms: f64,
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
    if args.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    if args.replicas > 1 && args.store != Store::Postgres {
        bail!(
            "--replicas {} needs --store postgres (replicas share one database; SQLite is one process's)",
            args.replicas
        );
    }
    if args.store != Store::Postgres && (args.pg_url.is_some() || args.pg_script.is_some()) {
        bail!("--pg-url and --pg-script apply to --store postgres only");
    }
    if args.sessions > 0 && args.events_per_session < 4 {
        bail!(
            "--events-per-session must be at least 4 (turn_started, running, turn_ended, idle), or pass --sessions 0"
        );
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
    // PostgreSQL: the given cluster, or a throwaway one stopped when `cluster` drops.
    let mut cluster = None;
    let pg_admin = match (args.store, &args.pg_url) {
        (Store::Sqlite, _) => None,
        (Store::Postgres, Some(url)) => Some(url.clone()),
        (Store::Postgres, None) => {
            let script = match &args.pg_script {
                Some(p) => p.clone(),
                None => pg::default_script()?,
            };
            note(&format!(
                "starting a throwaway PostgreSQL cluster ({})",
                script.display()
            ));
            let c = tokio::task::spawn_blocking(move || pg::Cluster::start(&script)).await??;
            note(&format!("PostgreSQL at {}", c.url));
            let url = c.url.clone();
            cluster = Some(c);
            Some(url)
        }
    };
    let mut results = Vec::new();
    for &n in &args.agents {
        if n == 0 {
            continue;
        }
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            let r = run_once(n, &args, &hub_bin, pg_admin.as_deref())
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
            for rep in r.replicas.iter().filter(|_| args.replicas > 1) {
                note(&format!(
                    "N={n} run {run}: replica {}: {} agents, RSS {:.1} → {:.1} MiB ({:.2} KiB/agent), {} alerts stored",
                    rep.replica + 1,
                    rep.healthz_connected,
                    rep.rss_baseline_kib as f64 / 1024.0,
                    rep.rss_connected_kib as f64 / 1024.0,
                    rep.rss_per_agent_kib,
                    rep.alerts_stored,
                ));
            }
            if args.sessions > 0 {
                let st = &r.sessions;
                note(&format!(
                    "N={n} run {run}: {}/{} sessions (agents on replica {}, operator on replica {}); attach p50 {:.2} ms p99 {:.2} ms; {}/{} events, p50 {:.2} ms p99 {:.2} ms",
                    st.sessions_opened,
                    st.sessions_requested,
                    st.owner_replica + 1,
                    st.operator_replica + 1,
                    st.attach_p50_ms,
                    st.attach_p99_ms,
                    st.events_received,
                    st.events_sent,
                    st.event_p50_ms,
                    st.event_p99_ms,
                ));
            }
            runs.push(r);
        }
        results.push(summarize(n, runs));
    }
    drop(cluster);
    let report = HubReport {
        bench: "hub",
        hub_bin: hub_bin.display().to_string(),
        store: args.store,
        replicas: args.replicas,
        pg: match (args.store, &args.pg_url) {
            (Store::Sqlite, _) => None,
            (Store::Postgres, Some(url)) => Some(hide_password(url)),
            (Store::Postgres, None) => Some("throwaway cluster (scripts/postgres.sh)".into()),
        },
        sessions: args.sessions,
        events_per_session: args.events_per_session,
        event_interval_ms: args.event_interval.as_secs_f64() * 1e3,
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
    let replicas = runs.first().map_or(0, |r| r.replicas.len());
    Row {
        agents: n,
        replicas,
        replica_rss_per_agent_kib: (0..replicas)
            .map(|i| pick(&|r| r.replicas.get(i).map_or(0.0, |x| x.rss_per_agent_kib)))
            .collect(),
        replica_connected: (0..replicas)
            .map(|i| {
                pick(&|r| {
                    r.replicas
                        .get(i)
                        .map_or(0.0, |x| x.healthz_connected as f64)
                }) as u64
            })
            .collect(),
        sessions_opened: pick(&|r| r.sessions.sessions_opened as f64) as usize,
        attach_p50_ms: pick(&|r| r.sessions.attach_p50_ms),
        attach_p99_ms: pick(&|r| r.sessions.attach_p99_ms),
        events_received: pick(&|r| r.sessions.events_received as f64) as u64,
        event_p50_ms: pick(&|r| r.sessions.event_p50_ms),
        event_p99_ms: pick(&|r| r.sessions.event_p99_ms),
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
    pg_admin: Option<&str>,
) -> anyhow::Result<RunResult> {
    let dir = tempfile::Builder::new()
        .prefix("tether-bench-hub-")
        .tempdir()
        .context("creating a temporary directory")?;
    let db = match pg_admin {
        Some(admin) => Some(pg::RunDatabase::create(admin).await?),
        None => None,
    };
    let result = run_hubs(
        n,
        args,
        hub_bin,
        dir.path(),
        db.as_ref().map(|d| d.url.as_str()),
    )
    .await;
    if let Some(db) = db
        && let Err(e) = db.drop_it().await
    {
        note(&format!("N={n}: cannot drop the run's database: {e:#}"));
    }
    result
}

/// Starts the replicas (each in `dir/replica-<i>`, on `db_url` or its own SQLite), drives the
/// run, stops them, and checks the stored alerts in the database.
async fn run_hubs(
    n: usize,
    args: &HubArgs,
    hub_bin: &std::path::Path,
    dir: &std::path::Path,
    db_url: Option<&str>,
) -> anyhow::Result<RunResult> {
    let max_agents = n + n / 10 + 100;
    let mut extra = format!(
        "[[operators]]\nname = \"bench\"\nclass = \"human\"\ntoken = \"{OPERATOR_TOKEN}\"\n"
    );
    if let Some(url) = db_url {
        extra.push_str(&format!("[store]\nurl = \"{url}\"\n"));
    }
    let token = format!("bench-enroll-{}", uuid::Uuid::now_v7().simple());
    let mut hubs = Vec::new();
    for i in 0..args.replicas {
        let sub = dir.join(format!("replica-{}", i + 1));
        std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        let hub = HubProc::start_with_token(hub_bin, &sub, max_agents, &extra, &token)
            .await
            .with_context(|| format!("starting replica {}", i + 1))?;
        note(&format!(
            "N={n}: {} pid {} on {} (open-files limit {})",
            if args.replicas > 1 {
                format!("replica {}", i + 1)
            } else {
                "hub".to_owned()
            },
            hub.pid(),
            hub.addr,
            hub.open_files_limit()
                .map_or_else(|| "?".to_owned(), |l| l.to_string())
        ));
        hubs.push(hub);
    }
    let result = match drive(n, args, &hubs).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let mut states = Vec::new();
            for (i, hub) in hubs.iter_mut().enumerate() {
                let state = match hub.exit_status() {
                    Some(status) => format!("has exited ({status})"),
                    None => "is still running".to_owned(),
                };
                states.push(format!(
                    "replica {} {state}; its log ends:\n{}",
                    i + 1,
                    hub.log_tail(8)
                ));
            }
            Err(e.context(states.join("\n")))
        }
    };
    let mut logs = Vec::new();
    for hub in &hubs {
        logs.push((hub.log_problems(), hub.open_files_limit()));
    }
    let mut stops = Vec::new();
    for (i, hub) in hubs.into_iter().enumerate() {
        let stopped = hub.stop().await;
        if let Ok(s) = &stopped
            && !s.clean
        {
            note(&format!(
                "N={n}: replica {} did not stop on SIGTERM: {}",
                i + 1,
                s.status
            ));
        }
        stops.push(stopped);
    }
    // A failed run's own error says more than a failed stop.
    let mut r = result?;
    let mut clean = true;
    let mut stop_s: f64 = 0.0;
    for (i, (stopped, ((warn, error, first), open_files))) in
        stops.into_iter().zip(logs).enumerate()
    {
        let stopped = stopped?;
        clean &= stopped.clean;
        stop_s = stop_s.max(stopped.stop_s);
        r.hub_log_warnings += warn;
        r.hub_log_errors += error;
        if r.hub_log_first_problem.is_none() {
            r.hub_log_first_problem = first.clone();
        }
        if r.hub_open_files_limit.is_none() {
            r.hub_open_files_limit = open_files;
        }
        if let Some(rep) = r.replicas.get_mut(i) {
            rep.hub_log_warnings = warn;
            rep.hub_log_errors = error;
            rep.hub_log_first_problem = first;
            rep.open_files_limit = open_files;
            rep.stopped_cleanly = stopped.clean;
            rep.stop_s = stopped.stop_s;
        }
    }
    r.hub_stopped_cleanly = clean;
    r.hub_stop_s = stop_s;

    // Every acknowledged alert is in the database, once.
    let counted = match db_url {
        Some(url) => pg::stored_alerts(url).await,
        None => pg::stored_alerts_sqlite(&dir.join("replica-1/state/hub.db")),
    };
    let mut failures = Failures(std::mem::take(&mut r.failures));
    match counted {
        Ok((total, distinct)) => {
            r.alerts_in_db = Some(total);
            r.alerts_in_db_distinct = Some(distinct);
            if total != r.alerts_acked {
                failures.add_n(
                    "alerts: the database differs from the acknowledgements",
                    1,
                    format!(
                        "{total} agent alert events stored, {} acknowledged",
                        r.alerts_acked
                    ),
                );
            }
            if distinct != total {
                failures.add_n(
                    "alerts: stored twice",
                    total - distinct.min(total),
                    format!("{total} stored, {distinct} distinct (agent_id, seq)"),
                );
            }
        }
        Err(e) => failures.add_n("alerts: counting in the database", 1, format!("{e:#}")),
    }
    r.errors = failures.total();
    r.failures = failures.0;
    Ok(r)
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn hide_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
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

/// Per-replica readings, summed where the run reports one figure.
fn statuses(hubs: &[HubProc]) -> anyhow::Result<Vec<hub_proc::ProcStatus>> {
    hubs.iter().map(HubProc::status).collect()
}

fn cpus(hubs: &[HubProc]) -> anyhow::Result<Vec<f64>> {
    hubs.iter().map(HubProc::cpu_s).collect()
}

async fn drive(n: usize, args: &HubArgs, hubs: &[HubProc]) -> anyhow::Result<RunResult> {
    let replicas = hubs.len().max(1);
    tokio::time::sleep(args.settle).await;
    let base = statuses(hubs)?;
    let cpu0 = cpus(hubs)?;
    let overflows0 = hub_proc::listen_overflows();

    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let plan = Arc::new(Plan {
        addrs: hubs.iter().map(|h| h.addr).collect(),
        token: hubs.first().map(|h| h.token.clone()).unwrap_or_default(),
        heartbeat: args.heartbeat,
        alerts_per_agent: args.alerts_per_agent,
        alert_ack_timeout: args.alert_ack_timeout,
        events_per_session: args.events_per_session,
        event_interval: args.event_interval,
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
    // Which agent registered, with which id (the session phase picks agents by replica).
    let mut agent_ids: Vec<Option<String>> = vec![None; n];
    // Agents that registered, then failed before the alert burst.
    let mut idle_failed = 0usize;
    let reported = collect(&mut reports, n, REGISTER_PHASE_GUARD, |r| match r {
        Report::Registered {
            index,
            agent_id,
            dialed,
            acked,
            retries: r,
        } => {
            registered += 1;
            retries += u64::from(r);
            if let Some(slot) = agent_ids.get_mut(index) {
                *slot = Some(agent_id);
            }
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
        _ => false,
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
    let cpu1 = cpus(hubs)?;
    let listen_overflows = hub_proc::listen_overflows()
        .zip(overflows0)
        .map(|(b, a)| b.saturating_sub(a));
    let register_s = match (first_dial, last_ack) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let registered_on: Vec<usize> = (0..replicas)
        .map(|r| {
            agent_ids
                .iter()
                .enumerate()
                .filter(|(i, id)| i % replicas == r && id.is_some())
                .count()
        })
        .collect();

    // ---- idle with N connected ----
    note(&format!(
        "N={n}: {registered} registered in {register_s:.2} s; settling"
    ));
    tokio::time::sleep(args.settle).await;
    let connected = statuses(hubs)?;
    let mut healthz: Vec<u64> = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        let c = match hub.healthz().await {
            Ok(c) => c,
            Err(e) => {
                failures.add_n("healthz", 1, format!("replica {}: {e:#}", i + 1));
                0
            }
        };
        if c != registered_on[i] as u64 {
            failures.add_n(
                "healthz: agents_connected differs from registered",
                1,
                format!(
                    "replica {}: healthz says {c}, {} registered there",
                    i + 1,
                    registered_on[i]
                ),
            );
        }
        healthz.push(c);
    }
    let healthz_connected: u64 = healthz.iter().sum();
    if let Some(hold) = args.hold_idle {
        note(&format!(
            "N={n}: holding {registered} agents idle for {:.0} s (hub pid(s) {})",
            hold.as_secs_f64(),
            hubs.iter()
                .map(|h| h.pid().to_string())
                .collect::<Vec<_>>()
                .join(", ")
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
    let cpu2 = cpus(hubs)?;
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
    let cpu3 = cpus(hubs)?;
    let alerts_s = match (first_sent, last_acked) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let mut stored_by: Vec<u64> = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        stored_by.push(match hub.metric("tether_hub_alerts_stored_total").await {
            Ok(v) => v as u64,
            Err(e) => {
                failures.add_n("metrics", 1, format!("replica {}: {e:#}", i + 1));
                0
            }
        });
    }
    let alerts_stored: u64 = stored_by.iter().sum();
    if alerts_stored != alerts_acked {
        failures.add_n(
            "alerts: stored differs from acknowledged",
            1,
            format!(
                "the hub(s) stored {alerts_stored} (/metrics), agents saw {alerts_acked} acknowledged"
            ),
        );
    }
    let mut healthz_after = 0;
    for hub in hubs {
        healthz_after += hub.healthz().await.unwrap_or(0);
    }
    tokio::time::sleep(args.settle).await;
    let after = statuses(hubs)?;

    // ---- sessions ----
    let sessions = if args.sessions > 0 {
        phase_tx.send_replace(Phase::Sessions);
        sessions_phase(
            args,
            hubs,
            &agent_ids,
            &mut reports,
            &phase_tx,
            &mut failures,
        )
        .await
    } else {
        SessionStats::default()
    };

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
            Report::EventsFailed { failure, .. } => failures.add("events", failure),
            _ => {}
        }
    }
    let counters = &plan.counters;

    latencies.sort_unstable();
    register_us.sort_unstable();
    let sum = |v: &[hub_proc::ProcStatus], f: fn(&hub_proc::ProcStatus) -> u64| -> u64 {
        v.iter().map(f).sum()
    };
    let connected_n = healthz_connected.max(1) as f64;
    let rss_per_agent_kib = (sum(&connected, |s| s.vm_rss_kib) as f64
        - sum(&base, |s| s.vm_rss_kib) as f64)
        / connected_n;
    let replica_results = (0..hubs.len())
        .map(|i| ReplicaResult {
            replica: i,
            addr: hubs[i].addr.to_string(),
            pid: hubs[i].pid(),
            agents_registered: registered_on[i],
            healthz_connected: healthz[i],
            rss_baseline_kib: base[i].vm_rss_kib,
            rss_connected_kib: connected[i].vm_rss_kib,
            rss_per_agent_kib: (connected[i].vm_rss_kib as f64 - base[i].vm_rss_kib as f64)
                / healthz[i].max(1) as f64,
            rss_after_alerts_kib: after[i].vm_rss_kib,
            threads_connected: connected[i].threads,
            cpu_registration_s: cpu1[i] - cpu0[i],
            cpu_alerts_s: cpu3[i] - cpu2[i],
            alerts_stored: stored_by[i],
            ..ReplicaResult::default()
        })
        .collect();
    let cpu_sum = |v: &[f64]| v.iter().sum::<f64>();
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
        rss_baseline_kib: sum(&base, |s| s.vm_rss_kib),
        rss_connected_kib: sum(&connected, |s| s.vm_rss_kib),
        rss_anon_baseline_kib: sum(&base, |s| s.rss_anon_kib),
        rss_anon_connected_kib: sum(&connected, |s| s.rss_anon_kib),
        rss_per_agent_kib,
        rss_after_alerts_kib: sum(&after, |s| s.vm_rss_kib),
        hub_threads_baseline: sum(&base, |s| s.threads),
        hub_threads_connected: sum(&connected, |s| s.threads),
        hub_threads_after_alerts: sum(&after, |s| s.threads),
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
            (cpu_sum(&cpu1) - cpu_sum(&cpu0)) * 1e6 / registered as f64
        } else {
            0.0
        },
        hub_cpu_us_per_alert: if alerts_acked > 0 {
            (cpu_sum(&cpu3) - cpu_sum(&cpu2)) * 1e6 / alerts_acked as f64
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
        alerts_in_db: None,
        alerts_in_db_distinct: None,
        replicas: replica_results,
        sessions,
    })
}

/// How long one operator request may wait for its reply.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, after the agents sent their last event, the operator may still receive events.
const EVENT_DRAIN: Duration = Duration::from_secs(30);
/// Creates that all fail at the start before the phase gives up (e.g. the replicas cannot
/// reach each other's agents).
const CREATE_GIVE_UP: usize = 5;

/// The session phase: an operator on replica B (the second, or the only one) opens
/// `--sessions` sessions on agents held by replica A (the first), timing `session.create`
/// and `attach`; then the agents play one turn in each and every event is timed from the
/// agent's send to the operator's read.
async fn sessions_phase(
    args: &HubArgs,
    hubs: &[HubProc],
    agent_ids: &[Option<String>],
    reports: &mut mpsc::UnboundedReceiver<Report>,
    phase_tx: &watch::Sender<Phase>,
    failures: &mut Failures,
) -> SessionStats {
    let replicas = hubs.len().max(1);
    let owner = 0;
    let operator_replica = 1 % replicas;
    let mut st = SessionStats {
        owner_replica: owner,
        operator_replica,
        sessions_requested: args.sessions,
        events_offered_per_s: args.sessions as f64 / args.event_interval.as_secs_f64(),
        ..SessionStats::default()
    };
    let targets: Vec<(usize, &str)> = agent_ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % replicas == owner)
        .filter_map(|(i, id)| id.as_deref().map(|id| (i, id)))
        .collect();
    if targets.is_empty() {
        failures.add_n(
            "sessions: no agent",
            1,
            format!("no agent registered on replica {}", owner + 1),
        );
        return st;
    }
    note(&format!(
        "sessions: operator on replica {} opens {} on agents of replica {}",
        operator_replica + 1,
        args.sessions,
        owner + 1
    ));
    let Some(hub) = hubs.get(operator_replica) else {
        return st;
    };
    let mut op = match Operator::connect(hub.addr, OPERATOR_TOKEN).await {
        Ok(op) => op,
        Err(e) => {
            failures.add_n("sessions: operator connect", 1, format!("{e:#}"));
            return st;
        }
    };
    let mut create_us = Vec::new();
    let mut attach_us = Vec::new();
    // Session → the agent index holding it.
    let mut opened: HashMap<String, usize> = HashMap::new();
    for k in 0..args.sessions {
        let (index, agent_id) = targets[k % targets.len()];
        let create = op
            .request(
                "session.create",
                serde_json::json!({
                    "agent_id": agent_id,
                    "mode": "inspect",
                    "params": {"plugin": "disk"},
                    "title": format!("bench session {k}"),
                }),
                OPERATOR_TIMEOUT,
            )
            .await;
        let session_id = match create {
            Ok((v, took)) => match v["session_id"].as_str() {
                Some(id) => {
                    create_us.push(as_us(took));
                    id.to_owned()
                }
                None => {
                    failures.add_n("sessions: create", 1, format!("no session_id in {v}"));
                    continue;
                }
            },
            Err(e) => {
                failures.add_n("sessions: create", 1, format!("{e:#}"));
                if opened.is_empty() && k + 1 >= CREATE_GIVE_UP {
                    failures.add_n(
                        "sessions: not tried",
                        (args.sessions - k - 1) as u64,
                        format!("the first {CREATE_GIVE_UP} creates all failed"),
                    );
                    break;
                }
                continue;
            }
        };
        opened.insert(session_id.clone(), index);
        match op
            .request(
                "attach",
                serde_json::json!({"session_id": session_id, "after_seq": 0}),
                OPERATOR_TIMEOUT,
            )
            .await
        {
            Ok((v, took)) if v.get("snapshot").is_some() => attach_us.push(as_us(took)),
            Ok((v, _)) => failures.add_n("sessions: attach", 1, format!("no snapshot in {v}")),
            Err(e) => failures.add_n("sessions: attach", 1, format!("{e:#}")),
        }
    }
    st.sessions_opened = opened.len();
    st.attached = attach_us.len();
    create_us.sort_unstable();
    attach_us.sort_unstable();
    st.create_p50_ms = percentile_ms(&create_us, 50.0);
    st.create_p99_ms = percentile_ms(&create_us, 99.0);
    st.attach_p50_ms = percentile_ms(&attach_us, 50.0);
    st.attach_p99_ms = percentile_ms(&attach_us, 99.0);
    st.attach_max_ms = attach_us.last().map_or(0.0, |&us| f64::from(us) / 1e3);
    if opened.is_empty() {
        op.close().await;
        return st;
    }

    // ---- events ----
    let players: HashSet<usize> = opened.values().copied().collect();
    note(&format!(
        "sessions: {} open on {} agents; {} events each, one per {:.0} ms",
        opened.len(),
        players.len(),
        args.events_per_session,
        args.event_interval.as_secs_f64() * 1e3
    ));
    phase_tx.send_replace(Phase::Events);
    let guard = args
        .event_interval
        .mul_f64(args.events_per_session as f64 + 1.0)
        + Duration::from_secs(60);
    let mut sent: HashMap<(String, u64), Instant> = HashMap::new();
    let mut reported = HashSet::new();
    let deadline = tokio::time::Instant::now() + guard;
    while reported.len() < players.len() {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some(Report::EventsDone { index, sent: s })) => {
                reported.insert(index);
                for (sid, seq, at) in s {
                    sent.insert((sid, seq), at);
                }
            }
            Ok(Some(Report::EventsFailed { index, failure })) => {
                reported.insert(index);
                failures.add("events", failure);
            }
            Ok(Some(Report::Lost(f) | Report::AlertsFailed(f))) => failures.add("after alerts", f),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    failures.add_n(
        "events: no report",
        (players.len() - reported.len()) as u64,
        format!("agents still playing after {} s", guard.as_secs()),
    );
    st.events_sent = sent.len() as u64;

    // Every sent event, read by the operator: stamped by its reader at arrival.
    let mut event_us = Vec::with_capacity(sent.len());
    let mut received: HashSet<(String, u64)> = HashSet::new();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let drain = tokio::time::Instant::now() + EVENT_DRAIN;
    while received.len() < sent.len() {
        let a = match tokio::time::timeout_at(drain, op.arrivals.recv()).await {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => break,
        };
        let Some(seq) = a.seq else {
            if matches!(
                a.event.as_str(),
                "evicted" | "log_unavailable" | "slow_consumer" | "stream_gap"
            ) {
                failures.add_n(
                    &format!("events: {}", a.event),
                    1,
                    format!("session {}", a.session_id),
                );
            }
            continue;
        };
        let key = (a.session_id, seq);
        let Some(&at) = sent.get(&key) else {
            continue; // the session's opening events and their replay
        };
        if !received.insert(key.clone()) {
            st.events_duplicated += 1;
            continue;
        }
        let last = last_seq.entry(key.0).or_insert(0);
        if seq < *last {
            st.events_out_of_order += 1;
        }
        *last = (*last).max(seq);
        event_us.push(as_us(a.at.saturating_duration_since(at)));
    }
    st.events_received = received.len() as u64;
    failures.add_n(
        "events: not delivered",
        (sent.len() - received.len()) as u64,
        format!(
            "the operator had not read them {} s after the agents sent the last one",
            EVENT_DRAIN.as_secs()
        ),
    );
    failures.add_n(
        "events: delivered twice",
        st.events_duplicated,
        "the same (session, seq) twice".into(),
    );
    failures.add_n(
        "events: out of order",
        st.events_out_of_order,
        "a session's seq went backwards".into(),
    );
    event_us.sort_unstable();
    st.event_p50_ms = percentile_ms(&event_us, 50.0);
    st.event_p99_ms = percentile_ms(&event_us, 99.0);
    st.event_max_ms = event_us.last().map_or(0.0, |&us| f64::from(us) / 1e3);
    op.close().await;
    st
}

fn as_us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn print_table(report: &HubReport) {
    println!(
        "hub load: real `tether hub` ({}) × {} on {}, simulated v2 agents on loopback; {} alert(s)/agent, \
         heartbeat {} s, connect concurrency {}, settle {} s; medians of {} run(s)",
        report.hub_bin,
        report.replicas,
        match &report.pg {
            Some(pg) => format!("PostgreSQL ({pg})"),
            None => "SQLite".to_owned(),
        },
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
    if report.replicas > 1 {
        println!(
            "per replica (each from its own baseline; agents spread round-robin): KiB/agent [connected]"
        );
        for row in &report.results {
            let cells: Vec<String> = row
                .replica_rss_per_agent_kib
                .iter()
                .zip(&row.replica_connected)
                .enumerate()
                .map(|(i, (kib, c))| format!("replica {}: {kib:.2} [{c}]", i + 1))
                .collect();
            println!("{:>6}  {}", row.agents, cells.join("   "));
        }
    }
    if report.sessions > 0 {
        let where_ = if report.replicas > 1 {
            "operator on replica 2, agents on replica 1 (cross-replica)"
        } else {
            "operator and agents on the one hub"
        };
        println!(
            "sessions: {} × {} events, one event per session every {:.0} ms; {where_}",
            report.sessions, report.events_per_session, report.event_interval_ms
        );
        println!(
            "{:>6} {:>8} {:>11} {:>11} {:>9} {:>10} {:>10}",
            "agents", "opened", "attach p50", "attach p99", "events", "event p50", "event p99"
        );
        for row in &report.results {
            println!(
                "{:>6} {:>8} {:>8.2} ms {:>8.2} ms {:>9} {:>7.2} ms {:>7.2} ms",
                row.agents,
                row.sessions_opened,
                row.attach_p50_ms,
                row.attach_p99_ms,
                row.events_received,
                row.event_p50_ms,
                row.event_p99_ms,
            );
        }
    }
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
                "  N={} run {}: registration p50/p99/max {:.1}/{:.1}/{:.1} ms; threads {}/{}/{}, stored {}/{} alerts in {:.2} s ({} frames, max {:.1} ms; in the database {}), \
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
                match (r.alerts_in_db, r.alerts_in_db_distinct) {
                    (Some(t), Some(d)) => format!("{t}, {d} distinct"),
                    _ => "?".to_owned(),
                },
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
    fn passwords_are_hidden_in_the_report() {
        assert_eq!(
            hide_password("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(
            hide_password("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(hide_password("not a url"), "not a url");
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
