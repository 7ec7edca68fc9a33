//! Issue 12's acceptance test, with the real monitoring stack: Debian's Prometheus and
//! Alertmanager (installed by `scripts/monitoring-stack.sh`, which `scripts/test.sh` runs
//! first) on loopback, a real `tether hub` and a real `tether agent` (scripted model), a
//! metrics endpoint and a Slack-shaped receiver served by this test.
//!
//! Prometheus scrapes `e2e_fault` every second from the test's endpoint (the target labelled
//! `instance: "<agent hostname>:9100"`); the rule `e2e_fault > 0` fires at once; Alertmanager
//! (group_wait 1 s) posts to the hub's intake with an `[[alert_sources]]` token. The test
//! checks that the alert fires on the hub routed to the agent, that the hub's automatic
//! diagnosis runs there and its report is stored with the alert, that a Slack message with
//! blocks reaches the receiver, and that clearing the metric resolves the alert.
//!
//! Without the binaries the test prints why and passes, unless `CI=true` (then it fails).
//! No mock stands in for Prometheus or Alertmanager.

mod common;

use common::{BIN, PATIENCE, free_port, get_json, write_file};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OPERATOR: &str = "e2e-operator-token-0123456789";
const SOURCE_TOKEN: &str = "e2e-alertmanager-token-0123456789";
const REPORT: &str = "## Severity\nCRITICAL\n\n## Summary\nThe e2e fault flag is set on this host.\n\n## Root cause\nThe test set it.\n\n## Evidence\ne2e_fault 1\n\n## Suggested actions\nClear the flag.";

/// The binaries, from `TETHER_PROMETHEUS` / `TETHER_ALERTMANAGER` or the `PATH`.
fn find(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var).map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A child process, stopped (TERM, then KILL) when dropped; its output goes to a log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            // Loopback only: no proxy in the way.
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name, child, log }
    }

    /// The last lines of its log, for failure messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(25);
        format!(
            "--- {} (last lines) ---\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny HTTP/1.1 server on loopback (one thread per connection, `Connection: close`):
/// `handle(method, path, body)` → (status, content type, body).
type Handler = dyn Fn(&str, &str, &[u8]) -> (u16, &'static str, String) + Send + Sync;

fn serve(handle: Arc<Handler>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handle = handle.clone();
            std::thread::spawn(move || {
                let _ = answer(stream, &*handle);
            });
        }
    });
    port
}

fn answer(stream: TcpStream, handle: &Handler) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let (status, kind, text) = handle(&method, &path, &body);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

/// GET with the operator's token: the body as JSON, when 200.
fn get_json_op(port: u16, path: &str) -> Option<Value> {
    get_json(port, path, OPERATOR)
}

/// Whether `GET path` answers 200 (readiness probes).
fn ready(port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200")
}

/// Polls `f` until it gives a value, for [`PATIENCE`] at most; fails with the processes'
/// logs.
fn wait_for<T>(what: &str, procs: &[&Proc], mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.tail()).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn prometheus_and_alertmanager_alerts_are_routed_diagnosed_notified_and_resolved() {
    let (Some(prometheus), Some(alertmanager)) = (
        find("TETHER_PROMETHEUS", "prometheus"),
        find("TETHER_ALERTMANAGER", "prometheus-alertmanager"),
    ) else {
        let msg = "the monitoring stack is not installed (prometheus, prometheus-alertmanager); run `eval \"$(scripts/monitoring-stack.sh)\"` first";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED prometheus_and_alertmanager_alerts_…: {msg}");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let host = tether_host::host::hostname();
    let (hub_port, prom_port, am_port) = (free_port(), free_port(), free_port());

    // The metric Prometheus scrapes, and the Slack webhook the hub posts to.
    let fault = Arc::new(AtomicU8::new(1));
    let metric = fault.clone();
    let metrics_port = serve(Arc::new(move |_, path, _| {
        if path.starts_with("/metrics") {
            let v = metric.load(Ordering::SeqCst);
            (
                200,
                "text/plain; version=0.0.4",
                format!("# TYPE e2e_fault gauge\ne2e_fault {v}\n"),
            )
        } else {
            (404, "text/plain", "not found".into())
        }
    }));
    let slack: Arc<Mutex<Vec<Value>>> = Arc::default();
    let inbox = slack.clone();
    let slack_port = serve(Arc::new(move |method, _, body| {
        if method != "POST" {
            return (405, "text/plain", "POST".into());
        }
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        inbox.lock().expect("lock").push(v);
        (200, "text/plain", "ok".into())
    }));

    // The hub: an alert source, automatic diagnosis (defaults: critical alerts from
    // Alertmanager and Grafana), a Slack notifier.
    let hub_toml = root.join("hub/hub.toml");
    write_file(
        &hub_toml,
        &format!(
            r#"listen = "127.0.0.1:{hub_port}"
state_dir = "state"

[[operators]]
name = "admin"
class = "human"
token = "{OPERATOR}"

[[alert_sources]]
name = "alertmanager"
token = "{SOURCE_TOKEN}"

[diagnosis]
cooldown = "30m"

[[notify]]
name = "slack"
kind = "slack"
url = "http://127.0.0.1:{slack_port}/services/T000/B000/e2e"
on = ["firing", "resolved", "report"]
"#
        ),
    );
    let out = Command::new(BIN)
        .args(["hub", "token", "create", "--name", "e2e", "--config"])
        .arg(&hub_toml)
        .output()
        .expect("token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent_token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let hub = Proc::spawn(
        "hub",
        Command::new(BIN)
            .args(["hub", "--config"])
            .arg(&hub_toml)
            .env("TETHER_LOG", "info"),
        &root.join("hub"),
    );
    wait_for("the hub", &[&hub], || {
        ready(hub_port, "/healthz").then_some(())
    });

    // The agent: a scripted model that answers a diagnosis with a report.
    write_file(
        &root.join("agent/script.json"),
        &json!({"responses": [{"text": REPORT}], "loop": true}).to_string(),
    );
    let agent_toml = root.join("agent/agent.toml");
    write_file(
        &agent_toml,
        &format!(
            "listen = \"off\"\nstate_dir = \"state\"\n[model]\nprovider = \"scripted\"\nscript = \"script.json\"\n[hub]\nurl = \"ws://127.0.0.1:{hub_port}\"\nallow_plaintext = true\ntoken = \"{agent_token}\"\n"
        ),
    );
    let agent = Proc::spawn(
        "agent",
        Command::new(BIN)
            .args(["agent", "--config"])
            .arg(&agent_toml)
            .env("TETHER_LOG", "info"),
        &root.join("agent"),
    );
    let agent_id = wait_for("the agent at the hub", &[&hub, &agent], || {
        let v = get_json_op(hub_port, "/api/v1/agents")?;
        v["agents"]
            .as_array()?
            .iter()
            .find(|a| a["hostname"] == host.as_str() && a["connected"] == true)
            .and_then(|a| a["agent_id"].as_str().map(str::to_owned))
    });

    // Alertmanager: one route to the hub, quick groups, resolutions sent.
    let am_dir = root.join("alertmanager");
    write_file(
        &am_dir.join("alertmanager.yml"),
        &format!(
            r#"route:
  receiver: tether
  group_by: [alertname, instance]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 4h
receivers:
  - name: tether
    webhook_configs:
      - url: http://127.0.0.1:{hub_port}/api/v1/alerts/alertmanager
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials: {SOURCE_TOKEN}
"#
        ),
    );
    let am = Proc::spawn(
        "alertmanager",
        Command::new(&alertmanager)
            .arg("--config.file=alertmanager.yml")
            .arg(format!("--storage.path={}", am_dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address="),
        &am_dir,
    );
    wait_for("Alertmanager", &[&am], || {
        ready(am_port, "/-/ready").then_some(())
    });

    // Prometheus: scrape every second, evaluate every second, resend at once.
    let prom_dir = root.join("prometheus");
    write_file(
        &prom_dir.join("prometheus.yml"),
        &format!(
            r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{am_port}"]
rule_files: ["rules.yml"]
scrape_configs:
  - job_name: e2e
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
        labels:
          instance: "{host}:9100"
"#
        ),
    );
    write_file(
        &prom_dir.join("rules.yml"),
        r#"groups:
  - name: e2e
    interval: 1s
    rules:
      - alert: E2EFault
        expr: e2e_fault > 0
        for: 0s
        labels:
          severity: critical
        annotations:
          summary: "The e2e fault is set on {{ $labels.instance }}"
          description: "e2e_fault is {{ $value }}."
          runbook_url: "https://runbooks.example.com/e2e-fault"
"#,
    );
    let prom = Proc::spawn(
        "prometheus",
        Command::new(&prometheus)
            .arg("--config.file=prometheus.yml")
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg("--rules.alert.resend-delay=1s"),
        &prom_dir,
    );
    wait_for("Prometheus", &[&prom], || {
        ready(prom_port, "/-/ready").then_some(())
    });
    let all = [&hub, &agent, &am, &prom];

    // Firing on the hub, routed to the agent by the `instance` label.
    let alert = wait_for("E2EFault firing at the hub", &all, || {
        let v = get_json_op(hub_port, "/api/v1/alerts?source=alertmanager")?;
        v["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "E2EFault" && a["state"] == "firing")
            .cloned()
    });
    assert_eq!(alert["agent_id"], agent_id.as_str(), "{alert}");
    assert_eq!(alert["hostname"], host.as_str(), "{alert}");
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(alert["source_name"], "alertmanager", "{alert}");
    assert_eq!(alert["route"]["label"], "instance", "{alert}");
    let alert_id = alert["alert_id"].as_i64().expect("alert_id");

    // The hub's diagnosis ran on the agent; its report is stored with the alert.
    let diagnosed = wait_for("the diagnosis report on the alert", &all, || {
        let v = get_json_op(hub_port, &format!("/api/v1/alerts/{alert_id}"))?;
        v["alert"]["diagnoses"][0]["report_id"]
            .is_i64()
            .then(|| v["alert"].clone())
    });
    let session_id = diagnosed["diagnoses"][0]["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    let reports =
        get_json_op(hub_port, &format!("/api/v1/reports?alert_id={alert_id}")).expect("reports");
    assert_eq!(reports["reports"][0]["report"], REPORT, "{reports}");
    assert_eq!(reports["reports"][0]["agent_id"], agent_id.as_str());
    assert_eq!(reports["reports"][0]["session_id"], session_id.as_str());
    // The session ran on the agent, started by the hub's automatic diagnosis, and the model
    // was given the alert's annotations.
    let events = get_json_op(
        hub_port,
        &format!("/api/v1/sessions/{session_id}/events?after_seq=0"),
    )
    .expect("session events");
    let started = events["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["event"] == "turn_started").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(started["originator"]["name"], "auto-diagnosis", "{events}");
    let text = started["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("Summary: The e2e fault is set on {host}:9100"))
            && text.contains("Runbook: https://runbooks.example.com/e2e-fault"),
        "the diagnosis was given the alert: {events}"
    );

    // Slack: the firing and the diagnosis, with blocks and links to the console.
    let messages = wait_for("the Slack messages", &all, || {
        let got = slack.lock().expect("lock").clone();
        let has = |h: &str| {
            got.iter()
                .any(|m| m["blocks"][0]["text"]["text"] == format!("[{h}] E2EFault"))
        };
        (has("FIRING") && has("DIAGNOSIS")).then_some(got)
    });
    let report = messages
        .iter()
        .find(|m| m["blocks"][0]["text"]["text"] == "[DIAGNOSIS] E2EFault")
        .expect("the report message");
    assert_eq!(report["blocks"][0]["type"], "header", "{report}");
    assert_eq!(
        report["blocks"][1]["fields"][0]["text"], "*Severity*\ncritical",
        "{report}"
    );
    assert_eq!(
        report["blocks"][1]["fields"][1]["text"],
        format!("*Host*\n{host}"),
        "{report}"
    );
    assert_eq!(
        report["blocks"][2]["text"]["text"], "The e2e fault flag is set on this host.",
        "{report}"
    );
    let link = report["blocks"][3]["elements"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        link.starts_with(&format!("<http://127.0.0.1:{hub_port}/#/alert/{alert_id}|")),
        "{report}"
    );

    // The fault clears: Prometheus resolves it, Alertmanager says so, the hub follows.
    fault.store(0, Ordering::SeqCst);
    let resolved = wait_for("E2EFault resolved at the hub", &all, || {
        let v = get_json_op(hub_port, &format!("/api/v1/alerts/{alert_id}"))?;
        (v["alert"]["state"] == "resolved").then(|| v["alert"].clone())
    });
    assert!(resolved["resolved_at"].is_string(), "{resolved}");
    wait_for("the resolved message on Slack", &all, || {
        slack
            .lock()
            .expect("lock")
            .iter()
            .any(|m| m["blocks"][0]["text"]["text"] == "[RESOLVED] E2EFault")
            .then_some(())
    });
    // Exactly one diagnosis for the one episode.
    assert_eq!(
        resolved["diagnoses"].as_array().map(Vec::len),
        Some(1),
        "{resolved}"
    );
    drop(prom);
    drop(am);
    drop(agent);
    drop(hub);
}
