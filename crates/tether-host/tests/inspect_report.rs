//! Inspect mode end to end: real tools, real readings, Markdown reports.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use std::time::Duration;
use tether_host::host;
use tether_host::inspect::{self, Severity};
use tether_host::tools::ToolRegistry;
use tether_host::tools::diag::{DiagConfig, diagnostic_tools};
use tokio_util::sync::CancellationToken;

fn registry(cfg: &DiagConfig) -> ToolRegistry {
    let mut r = ToolRegistry::new();
    for t in diagnostic_tools(cfg) {
        r.add(t);
    }
    r
}

fn meminfo_total_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    kb * 1024
}

#[tokio::test]
async fn the_system_report_carries_real_figures() {
    let tools = registry(&DiagConfig::default());
    let report = inspect::run("system", None, &tools, &CancellationToken::new())
        .await
        .expect("report");
    let md = &report.markdown;
    let hostname = host::hostname();
    assert!(
        md.starts_with(&format!("# Inspection: system on {hostname}\n")),
        "{md}"
    );
    assert!(
        md.contains(&format!(
            "| Total | {} |",
            host::human_bytes(meminfo_total_bytes())
        )),
        "{md}"
    );
    for heading in [
        "## Findings",
        "## Memory",
        "## Disks",
        "## CPU",
        "## Top processes by CPU",
    ] {
        assert!(md.contains(heading), "{heading} missing:\n{md}");
    }
    // The root file system is in the disks table.
    assert!(md.lines().any(|l| l.starts_with("| / |")), "{md}");
    assert!(md.contains("How this was gathered"));
    // Findings are sorted, most severe first, and the memory one reflects the real reading.
    assert!(!report.findings.is_empty());
    assert!(
        report
            .findings
            .windows(2)
            .all(|w| w[0].severity <= w[1].severity)
    );
    let mem = report
        .findings
        .iter()
        .find(|f| f.title.starts_with("Memory available"))
        .expect("memory finding");
    let avail = host::memory().expect("memory");
    let pct = avail.available_bytes as f64 / avail.total_bytes as f64 * 100.0;
    let expected = if pct < inspect::MEM_AVAILABLE_CRIT_PCT {
        Severity::Critical
    } else if pct < inspect::MEM_AVAILABLE_WARN_PCT {
        Severity::Warning
    } else {
        Severity::Ok
    };
    // MemAvailable moves between the two readings; allow the boundary case.
    if (pct - inspect::MEM_AVAILABLE_WARN_PCT).abs() > 1.0
        && (pct - inspect::MEM_AVAILABLE_CRIT_PCT).abs() > 1.0
    {
        assert_eq!(mem.severity, expected, "{mem:?}");
    }
    // Every finding appears in the findings table.
    for f in &report.findings {
        assert!(md.contains(&format!("| {} |", f.severity)), "{f:?}");
    }
}

#[tokio::test]
async fn unknown_plugins_are_refused_with_the_known_ones() {
    let err = inspect::plan("frobnicate", None).expect_err("unknown");
    assert!(err.contains("frobnicate"));
    for p in inspect::plugins() {
        assert!(err.contains(p), "{err}");
    }
    let tools = registry(&DiagConfig::default());
    let err = inspect::run("frobnicate", None, &tools, &CancellationToken::new())
        .await
        .expect_err("unknown");
    assert!(err.contains("known plugins"));
}

#[tokio::test]
async fn every_planned_call_satisfies_its_tools_schema() {
    let tools = registry(&DiagConfig::default());
    for p in inspect::plugins() {
        for target in [
            None,
            Some("/var/log"),
            Some("localhost:22"),
            Some("http://localhost/"),
            Some("nginx"),
            Some("42"),
        ] {
            let Ok(calls) = inspect::plan(p, target) else {
                continue;
            };
            for c in calls {
                let tool = tools
                    .get(&c.tool)
                    .unwrap_or_else(|| panic!("{p}: no tool {}", c.tool));
                tether_host::tools::schema::validate(&tool.spec().parameters, &c.args)
                    .unwrap_or_else(|e| panic!("{p} {target:?} {}: {e}", c.tool));
            }
        }
    }
}

#[tokio::test]
async fn tcp_targets_give_ok_or_critical_findings() {
    let tools = registry(&DiagConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let target = format!("127.0.0.1:{port}");
    let report = inspect::run("tcp", Some(&target), &tools, &CancellationToken::new())
        .await
        .expect("report");
    assert_eq!(report.findings.len(), 1);
    assert_eq!(report.findings[0].severity, Severity::Ok);
    assert!(report.findings[0].title.contains(&target));
    drop(listener);

    let report = inspect::run("tcp", Some(&target), &tools, &CancellationToken::new())
        .await
        .expect("report");
    assert_eq!(
        report.findings[0].severity,
        Severity::Critical,
        "{:?}",
        report.findings
    );
    assert!(
        report
            .markdown
            .contains(&format!("Cannot connect to {target}"))
    );

    // The net plugin adds interfaces and sockets; its socket count is an Info finding.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let report = inspect::run(
        "net",
        Some(&format!("127.0.0.1:{port}")),
        &tools,
        &CancellationToken::new(),
    )
    .await
    .expect("report");
    assert!(report.markdown.contains("## Listening sockets"));
    assert!(report.markdown.contains("## Network interfaces"));
    assert!(report.findings.iter().any(|f| f.severity == Severity::Info
        && f.title.contains("listening TCP socket")
        && f.detail.contains(&port.to_string())));
}

#[tokio::test]
async fn http_status_maps_to_severity() {
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/broken",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let tools = registry(&DiagConfig::default());
    let good = inspect::run(
        "http",
        Some(&format!("http://{addr}/health")),
        &tools,
        &CancellationToken::new(),
    )
    .await
    .expect("report");
    assert_eq!(
        good.findings[0].severity,
        Severity::Ok,
        "{:?}",
        good.findings
    );
    let bad = inspect::run(
        "http",
        Some(&format!("http://{addr}/broken")),
        &tools,
        &CancellationToken::new(),
    )
    .await
    .expect("report");
    assert_eq!(bad.findings[0].severity, Severity::Critical);
    assert!(bad.findings[0].title.contains("500"));
    assert!(bad.markdown.contains("boom"));
}

#[tokio::test]
async fn log_and_process_plugins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("app.log");
    std::fs::write(&log, "start\nERROR cannot bind :80\nrunning\n").expect("write");
    let tools = registry(&DiagConfig {
        log_dirs: vec![dir.path().to_path_buf()],
        command_timeout: Duration::from_secs(10),
    });
    let report = inspect::run("log", log.to_str(), &tools, &CancellationToken::new())
        .await
        .expect("report");
    assert!(
        report.markdown.contains("ERROR cannot bind :80"),
        "{}",
        report.markdown
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.severity == Severity::Info && f.title == "1 line matching \"error\"")
    );

    let pid = std::process::id().to_string();
    let report = inspect::run("process", Some(&pid), &tools, &CancellationToken::new())
        .await
        .expect("report");
    assert!(
        report.markdown.contains(&format!("## Process (pid {pid})")),
        "{}",
        report.markdown
    );
    let gone = inspect::run(
        "process",
        Some("no-such-daemon-xyz"),
        &tools,
        &CancellationToken::new(),
    )
    .await
    .expect("report");
    assert_eq!(gone.findings[0].severity, Severity::Critical);
    assert!(gone.findings[0].title.contains("no-such-daemon-xyz"));
}

#[tokio::test]
async fn missing_tools_and_cancel_are_reported() {
    // A registry without the diagnostic tools: the report says what did not run.
    let report = inspect::run("mem", None, &ToolRegistry::new(), &CancellationToken::new())
        .await
        .expect("report");
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.severity == Severity::Warning
                && f.detail.contains("not available to this inspection"))
    );
    assert_eq!(report.findings.len(), 2);

    let cancel = CancellationToken::new();
    cancel.cancel();
    let tools = registry(&DiagConfig::default());
    let err = inspect::run("system", None, &tools, &cancel)
        .await
        .expect_err("cancelled");
    assert_eq!(err, "cancelled");
}
