//! `tether-bench intake`: Alertmanager notifications into a real hub (SQLite), and how soon
//! a subscribed operator sees each alert.
//!
//! ```text
//! cargo build --release -p tether -p tether-bench
//! target/release/tether-bench intake                                  # 2000 notifications × 10 alerts, 1 and 4 senders
//! target/release/tether-bench intake --notifications 5000 --concurrency 1,4,16 --runs 3
//! target/release/tether-bench intake --json > intake.json
//! ```
//!
//! For each `--concurrency` C (and each of `--runs` runs; the table shows medians) it:
//!
//! 1. starts `tether hub --config` (the real binary, `--hub-bin` or the `tether` next to this
//!    executable) on a fresh state directory and a free loopback port, with one
//!    `[[alert_sources]]` token and one operator;
//! 2. connects that operator over `/v1/ws` and sends `alerts.subscribe {}`;
//! 3. **fire**: C senders post `--notifications` Alertmanager webhook notifications (payload
//!    version 4, `--alerts-per-notification` new alerts each, distinct fingerprints) to
//!    `POST /api/v1/alerts/alertmanager` over keep-alive HTTP/1.1, each waiting for its
//!    answer before posting the next, as Alertmanager does per group;
//! 4. **resolve**: the same, every alert now `resolved`;
//! 5. stops the hub (SIGTERM).
//!
//! Per phase: notifications/s is the notifications over the time from the first POST to the
//! last answer; the latency of an alert is from the start of the POST that carried it to the
//! subscribed operator receiving its `alert` frame (`created`, then `resolved`): p50, p99,
//! max over every alert. Every alert must reach the operator once per phase, and the hub's
//! `tether_hub_external_alerts_stored_total` must count every one; anything else fails the
//! run. The hub's CPU time per notification (`/proc/<pid>/stat`) is shown too: on a shared
//! machine it is steadier than the rates.

use crate::hub_load::hub_proc::HubProc;
use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(clap::Args, Clone, Debug)]
pub struct IntakeArgs {
    /// Notifications per phase (fire, then resolve).
    #[arg(long, default_value_t = 2000)]
    notifications: u64,
    /// Alerts in each notification.
    #[arg(long, default_value_t = 10)]
    alerts_per_notification: u64,
    /// Senders posting at once, comma-separated (one fresh hub per value and run).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    concurrency: Vec<usize>,
    /// Runs per concurrency (the table shows medians).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// The `tether` binary to run as the hub [default: the one next to this executable].
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

const SOURCE_TOKEN: &str = "bench-alertmanager-token-0123456789";
const OPERATOR_TOKEN: &str = "bench-operator-token-0123456789";
/// A phase's bound: every notification answered and every alert seen by then.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Fire,
    Resolve,
}

impl Phase {
    fn status(self) -> &'static str {
        match self {
            Phase::Fire => "firing",
            Phase::Resolve => "resolved",
        }
    }

    /// The `change` of the `alert` frame this phase causes.
    fn change(self) -> &'static str {
        match self {
            Phase::Fire => "created",
            Phase::Resolve => "resolved",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
struct PhaseResult {
    phase: Phase,
    notifications: u64,
    alerts: u64,
    elapsed_s: f64,
    notifications_per_s: f64,
    alerts_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    hub_cpu_us_per_notification: f64,
}

#[derive(Serialize)]
struct Row {
    concurrency: usize,
    phase: Phase,
    notifications_per_s: f64,
    alerts_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    hub_cpu_us_per_notification: f64,
    runs: Vec<PhaseResult>,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    hub_bin: String,
    notifications: u64,
    alerts_per_notification: u64,
    runs: usize,
    results: Vec<Row>,
}

fn fingerprint(n: u64, j: u64) -> String {
    format!("bench-{n:07}-{j:03}")
}

/// Notification `n` of a phase: its alerts as Alertmanager's webhook (version 4) sends them.
fn notification(n: u64, per: u64, phase: Phase) -> Vec<u8> {
    let alerts: Vec<Value> = (0..per)
        .map(|j| {
            json!({
                "status": phase.status(),
                "labels": {"alertname": "BenchAlert", "instance": format!("host-{n}-{j}:9100"),
                           "job": "node", "severity": if j % 3 == 0 { "critical" } else { "warning" }},
                "annotations": {"summary": format!("bench alert {n}/{j}"),
                                "description": "Generated by tether-bench intake."},
                "startsAt": "2024-05-01T10:00:00Z",
                "endsAt": match phase {
                    Phase::Fire => "0001-01-01T00:00:00Z",
                    Phase::Resolve => "2024-05-01T11:00:00Z",
                },
                "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
                "fingerprint": fingerprint(n, j),
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{group=\"{n}\"}}"),
        "truncatedAlerts": 0,
        "status": phase.status(),
        "receiver": "tether",
        "groupLabels": {"group": n.to_string()},
        "commonLabels": {"alertname": "BenchAlert"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    })
    .to_string()
    .into_bytes()
}

/// The subscribed operator: every `alert` frame as (change, alert_key, received).
async fn subscriber(
    url: String,
) -> anyhow::Result<mpsc::UnboundedReceiver<(String, String, Instant)>> {
    let mut op = tether_transport::client::Client::connect_ws(&url, Some(OPERATOR_TOKEN))
        .await
        .map_err(|e| anyhow::anyhow!("operator connect: {e}"))?;
    op.request("hello", json!({"client_name": "tether-bench intake"}))
        .await
        .map_err(|e| anyhow::anyhow!("hello: {e}"))?;
    op.request("alerts.subscribe", json!({}))
        .await
        .map_err(|e| anyhow::anyhow!("alerts.subscribe: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(text) = op.next_text().await {
            let at = Instant::now();
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if v["event"] != "alert" {
                continue;
            }
            let change = v["change"].as_str().unwrap_or_default().to_owned();
            let key = v["alert"]["alert_key"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if tx.send((change, key, at)).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

async fn phase(
    hub: &HubProc,
    http: &reqwest::Client,
    frames: &mut mpsc::UnboundedReceiver<(String, String, Instant)>,
    args: &IntakeArgs,
    concurrency: usize,
    phase: Phase,
) -> anyhow::Result<PhaseResult> {
    let n = args.notifications;
    let per = args.alerts_per_notification;
    let url = format!("http://{}/api/v1/alerts/alertmanager", hub.addr);
    // Bodies are built before the clock starts: the bench measures the hub, not serde.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..n).map(|i| notification(i, per, phase)).collect());
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let next = Arc::new(AtomicU64::new(0));
    let cpu0 = hub.cpu_s()?;
    let started = Instant::now();
    let senders: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, bodies, sent_at, next) = (
                http.clone(),
                url.clone(),
                bodies.clone(),
                sent_at.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut stored = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= bodies.len() as u64 {
                        return anyhow::Ok((stored, Instant::now()));
                    }
                    let body = bodies[i as usize].clone();
                    let t0 = Instant::now();
                    if let Ok(mut m) = sent_at.lock() {
                        m.insert(i, t0);
                    }
                    let resp = http
                        .post(&url)
                        .bearer_auth(SOURCE_TOKEN)
                        .header("Content-Type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .with_context(|| format!("POST notification {i}"))?;
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if !status.is_success() {
                        bail!("notification {i}: {status}: {text}");
                    }
                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                    stored += v["stored"].as_u64().unwrap_or(0);
                }
            })
        })
        .collect();
    // Frames, while the senders post.
    let want = n * per;
    let mut seen: HashMap<String, Instant> = HashMap::with_capacity(want as usize);
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    while (seen.len() as u64) < want {
        let frame = tokio::time::timeout_at(deadline, frames.recv())
            .await
            .with_context(|| {
                format!(
                    "{phase:?}: {} of {want} alerts reached the operator within {} s",
                    seen.len(),
                    PHASE_TIMEOUT.as_secs()
                )
            })?;
        let (change, key, at) = frame.context("the operator connection closed (evicted?)")?;
        if change == phase.change() && seen.insert(key.clone(), at).is_some() {
            bail!("{phase:?}: alert {key} reached the operator twice");
        }
    }
    let mut stored = 0;
    let mut last_answer = started;
    for s in senders {
        let (n_stored, done) = s.await.context("a sender panicked")??;
        stored += n_stored;
        last_answer = last_answer.max(done);
    }
    if stored != want {
        bail!("{phase:?}: the hub stored {stored} of {want} alerts");
    }
    let elapsed_s = (last_answer - started).as_secs_f64().max(1e-9);
    let cpu_s = hub.cpu_s()? - cpu0;
    let sent_at = sent_at.lock().map(|m| m.clone()).unwrap_or_default();
    let mut latencies_us: Vec<u32> = Vec::with_capacity(want as usize);
    for i in 0..n {
        let t0 = sent_at
            .get(&i)
            .with_context(|| format!("notification {i} was never sent"))?;
        for j in 0..per {
            let at = seen.get(&fingerprint(i, j)).with_context(|| {
                format!("alert {} never reached the operator", fingerprint(i, j))
            })?;
            let us = at.saturating_duration_since(*t0).as_micros();
            latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }
    let mut pct = |q| crate::client::percentile_us(&mut latencies_us, q) / 1000.0;
    let (p50_ms, p99_ms, max_ms) = (pct(0.50), pct(0.99), pct(1.0));
    Ok(PhaseResult {
        phase,
        notifications: n,
        alerts: want,
        elapsed_s,
        notifications_per_s: n as f64 / elapsed_s,
        alerts_per_s: want as f64 / elapsed_s,
        p50_ms,
        p99_ms,
        max_ms,
        hub_cpu_us_per_notification: cpu_s * 1e6 / n as f64,
    })
}

async fn one_run(
    bin: &std::path::Path,
    args: &IntakeArgs,
    concurrency: usize,
) -> anyhow::Result<Vec<PhaseResult>> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let extra = format!(
        "\n[[operators]]\nname = \"bench\"\nclass = \"human\"\ntoken = \"{OPERATOR_TOKEN}\"\n\n[[alert_sources]]\nname = \"bench-alertmanager\"\ntoken = \"{SOURCE_TOKEN}\"\n"
    );
    let hub = HubProc::start_with(bin, dir.path(), 100, &extra).await?;
    let result = async {
        let mut frames = subscriber(format!("ws://{}/v1/ws", hub.addr)).await?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        let mut out = Vec::new();
        for p in [Phase::Fire, Phase::Resolve] {
            out.push(phase(&hub, &http, &mut frames, args, concurrency, p).await?);
        }
        let total = hub
            .metric("tether_hub_external_alerts_stored_total")
            .await?;
        let want = 2 * args.notifications * args.alerts_per_notification;
        if total as u64 != want {
            bail!("/metrics: tether_hub_external_alerts_stored_total is {total}, not {want}");
        }
        anyhow::Ok(out)
    }
    .await;
    let (warn, error, first) = hub.log_problems();
    let stopped = hub.stop().await?;
    if !stopped.clean {
        crate::client::note(&format!("the hub did not stop cleanly: {}", stopped.status));
    }
    if warn + error > 0 {
        crate::client::note(&format!(
            "the hub logged {warn} warning(s) and {error} error(s); first: {}",
            first.unwrap_or_default()
        ));
    }
    result
}

pub async fn run(args: IntakeArgs) -> anyhow::Result<()> {
    let bin = match &args.hub_bin {
        Some(p) => p.clone(),
        None => {
            let exe = std::env::current_exe().context("locating this executable")?;
            exe.parent()
                .context("this executable has no parent directory")?
                .join("tether")
        }
    };
    if !bin.is_file() {
        bail!(
            "no hub binary at {} (build it: cargo build --release -p tether, or pass --hub-bin)",
            bin.display()
        );
    }
    if args.notifications == 0 || args.alerts_per_notification == 0 {
        bail!("--notifications and --alerts-per-notification must be at least 1");
    }
    tether_engine::openai::ensure_tls_provider();
    let mut results = Vec::new();
    for &c in &args.concurrency {
        if c == 0 {
            bail!("--concurrency values must be at least 1");
        }
        let mut runs: Vec<Vec<PhaseResult>> = Vec::new();
        for r in 0..args.runs.max(1) {
            crate::client::note(&format!(
                "concurrency {c}, run {}: {} notifications × {} alerts, fire then resolve",
                r + 1,
                args.notifications,
                args.alerts_per_notification
            ));
            runs.push(one_run(&bin, &args, c).await?);
        }
        for (i, p) in [Phase::Fire, Phase::Resolve].into_iter().enumerate() {
            let of: Vec<PhaseResult> = runs.iter().map(|r| r[i].clone()).collect();
            let pick = |f: fn(&PhaseResult) -> f64| crate::median(of.iter().map(f).collect());
            results.push(Row {
                concurrency: c,
                phase: p,
                notifications_per_s: pick(|r| r.notifications_per_s),
                alerts_per_s: pick(|r| r.alerts_per_s),
                p50_ms: pick(|r| r.p50_ms),
                p99_ms: pick(|r| r.p99_ms),
                max_ms: pick(|r| r.max_ms),
                hub_cpu_us_per_notification: pick(|r| r.hub_cpu_us_per_notification),
                runs: of,
            });
        }
    }
    let report = Report {
        bench: "intake",
        hub_bin: bin.display().to_string(),
        notifications: args.notifications,
        alerts_per_notification: args.alerts_per_notification,
        runs: args.runs.max(1),
        results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "intake: {} notifications × {} alerts per phase, hub on SQLite, medians of {} run(s)",
        report.notifications, report.alerts_per_notification, report.runs
    );
    println!(
        "{:>11}  {:>7}  {:>15}  {:>9}  {:>9}  {:>9}  {:>9}  {:>16}",
        "concurrency",
        "phase",
        "notifications/s",
        "alerts/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "hub CPU µs/notif"
    );
    for r in &report.results {
        println!(
            "{:>11}  {:>7}  {:>15.0}  {:>9.0}  {:>9.2}  {:>9.2}  {:>9.2}  {:>16.0}",
            r.concurrency,
            format!("{:?}", r.phase).to_lowercase(),
            r.notifications_per_s,
            r.alerts_per_s,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.hub_cpu_us_per_notification
        );
    }
    println!(
        "latency: from the start of the POST to the subscribed operator receiving the alert's frame"
    );
    Ok(())
}
