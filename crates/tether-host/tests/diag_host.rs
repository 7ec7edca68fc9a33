//! The diagnostic tools against this machine's real /proc: shape and plausibility.

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_host::host;
use tether_host::tools::diag::{
    DiagConfig,
    cpu::CpuLoadReport,
    diagnostic_tools,
    disks::{DiskIoReport, DisksReport},
    logs::KernelLogReport,
    memory::MemoryReport,
    process::{ProcessDetailReport, TopProcessesReport},
    systemd::{NOT_AVAILABLE, SystemdReport},
};
use tether_host::tools::{Tool, ToolContext, ToolOutput, schema};
use tokio_util::sync::CancellationToken;

fn tool(name: &str) -> Arc<dyn Tool> {
    diagnostic_tools(&DiagConfig::default())
        .into_iter()
        .find(|t| t.spec().name == name)
        .unwrap_or_else(|| panic!("no tool {name}"))
}

fn ctx(cancel: &CancellationToken) -> ToolContext {
    ToolContext {
        session_id: "s".into(),
        turn_id: "t".into(),
        cancel: cancel.clone(),
    }
}

/// Validates the arguments against the tool's schema (as the turn loop does), then calls it.
async fn call(name: &str, args: Value) -> ToolOutput {
    let t = tool(name);
    schema::validate(&t.spec().parameters, &args).unwrap_or_else(|e| panic!("{name} {args}: {e}"));
    t.call(args, ctx(&CancellationToken::new())).await
}

fn decode<T: serde::de::DeserializeOwned>(out: &ToolOutput) -> T {
    assert!(out.ok, "{}", out.output);
    serde_json::from_str(&out.output).unwrap_or_else(|e| panic!("{e}: {}", out.output))
}

fn meminfo_kb(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("field")
}

#[test]
fn the_toolset_is_complete_closed_and_read_only() {
    let tools = diagnostic_tools(&DiagConfig::default());
    let names: Vec<String> = tools.iter().map(|t| t.spec().name).collect();
    for expected in [
        "cpu_load",
        "memory",
        "disks",
        "disk_io",
        "top_processes",
        "process_detail",
        "sockets",
        "net_interfaces",
        "kernel_log",
        "systemd_unit",
        "log_tail",
        "log_grep",
        "dns_resolve",
        "tcp_check",
        "http_check",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    assert_eq!(names.len(), 15);
    for t in &tools {
        let spec = t.spec();
        assert!(t.read_only(), "{}", spec.name);
        assert_eq!(spec.parameters["type"], "object", "{}", spec.name);
        assert_eq!(
            spec.parameters["additionalProperties"], false,
            "{}",
            spec.name
        );
        // Unknown arguments are refused by the schema, with the property named.
        let err =
            schema::validate(&spec.parameters, &json!({"bogus": 1})).expect_err("closed schema");
        assert!(
            err.contains("unknown property `bogus`"),
            "{}: {err}",
            spec.name
        );
        assert!(!spec.description.is_empty());
    }
}

#[tokio::test]
async fn memory_matches_proc_meminfo() {
    let r: MemoryReport = decode(&call("memory", json!({})).await);
    assert_eq!(r.total_bytes, meminfo_kb("MemTotal") * 1024);
    assert_eq!(r.swap_total_bytes, meminfo_kb("SwapTotal") * 1024);
    assert!(r.available_bytes <= r.total_bytes);
    assert_eq!(r.used_bytes, r.total_bytes - r.available_bytes);
    assert!((0.0..=100.0).contains(&r.used_pct));
    assert!((r.used_pct + r.available_pct - 100.0).abs() <= 0.11);
    assert_eq!(r.meminfo.get("MemTotal"), Some(&r.total_bytes));
    if std::path::Path::new("/proc/pressure/memory").exists() {
        assert!(r.pressure.is_some());
    }
}

#[tokio::test]
async fn cpu_load_is_plausible() {
    let r: CpuLoadReport = decode(&call("cpu_load", json!({"sample_ms": 200})).await);
    let stat = std::fs::read_to_string("/proc/stat").expect("stat");
    let online = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(r.cpus, online);
    assert_eq!(r.sample_ms, 200);
    assert_eq!(r.per_cpu.len(), online.min(64));
    for u in r.per_cpu.iter().chain([&r.total]) {
        for v in [
            u.usage_pct,
            u.iowait_pct,
            u.steal_pct,
            u.idle_pct,
            u.user_pct,
            u.system_pct,
        ] {
            assert!((0.0..=100.0).contains(&v), "{u:?}");
        }
        assert!(u.usage_pct + u.iowait_pct + u.idle_pct <= 100.2, "{u:?}");
    }
    let load = r.load.expect("loadavg");
    assert!(load.one >= 0.0);
    let per = r.load_per_cpu.expect("per cpu");
    assert!((per - load.one / online as f64).abs() < 0.01);

    let quiet: CpuLoadReport =
        decode(&call("cpu_load", json!({"sample_ms": 100, "per_cpu": false})).await);
    assert!(quiet.per_cpu.is_empty());
}

#[tokio::test]
async fn disks_show_the_root_file_system_with_inodes() {
    let r: DisksReport = decode(&call("disks", json!({})).await);
    let root = r
        .filesystems
        .iter()
        .find(|f| f.mount_point == "/")
        .unwrap_or_else(|| panic!("no / in {r:?}"));
    assert!(root.total_bytes > 0);
    assert!(root.used_bytes + root.available_bytes <= root.total_bytes);
    assert!((0.0..=100.0).contains(&root.used_pct));
    // Cross-check with statvfs directly.
    let st = host::statvfs(std::path::Path::new("/")).expect("statvfs");
    assert_eq!(root.total_bytes, st.blocks * st.block_size);
    assert_eq!(root.inodes_total, st.files);
    if st.files > 0 {
        assert!(
            root.inodes_used_pct
                .is_some_and(|p| (0.0..=100.0).contains(&p))
        );
    }
    // No pseudo file systems by default.
    assert!(
        r.filesystems
            .iter()
            .all(|f| !host::is_pseudo_fs(&f.fs_type)),
        "{r:?}"
    );

    // A path selects the file system holding it.
    let one: DisksReport = decode(&call("disks", json!({"mount": "/proc/self"})).await);
    assert_eq!(one.filesystems.len(), 1);
    assert_eq!(one.filesystems[0].mount_point, "/proc");
    let bad = call("disks", json!({"mount": "relative/path"})).await;
    assert!(
        !bad.ok && bad.output.contains("not an absolute path"),
        "{}",
        bad.output
    );
}

#[tokio::test]
async fn disk_io_rates_are_plausible() {
    let r: DiskIoReport = decode(&call("disk_io", json!({"sample_ms": 200})).await);
    for d in &r.devices {
        assert!((0.0..=100.0).contains(&d.util_pct), "{d:?}");
        assert!(d.reads_per_sec >= 0.0 && d.writes_per_sec >= 0.0);
        assert!(!d.device.starts_with("loop"), "{d:?}");
    }
    let missing = call("disk_io", json!({"device": "nosuchdisk9"})).await;
    assert!(!missing.ok && missing.output.contains("no block device `nosuchdisk9`"));
}

#[tokio::test]
async fn top_processes_are_ranked() {
    let r: TopProcessesReport = decode(
        &call(
            "top_processes",
            json!({"sort_by": "memory", "limit": 5, "sample_ms": 100}),
        )
        .await,
    );
    assert_eq!(r.sort_by, "memory");
    assert!(!r.processes.is_empty() && r.processes.len() <= 5);
    assert!(r.processes_total >= r.processes.len());
    assert_eq!(r.states.values().sum::<usize>(), r.processes_total);
    for pair in r.processes.windows(2) {
        assert!(pair[0].rss_bytes >= pair[1].rss_bytes, "{pair:?}");
    }
    for p in &r.processes {
        assert!(
            p.cpu_pct >= 0.0 && (0.0..=100.0).contains(&p.mem_pct),
            "{p:?}"
        );
        assert!(!p.user.is_empty());
    }

    // Burn CPU in this process while sampling: it must come out on top by CPU.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let burner = std::thread::spawn(move || {
        let mut x = 0u64;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            x = x.wrapping_mul(31).wrapping_add(7);
            std::hint::black_box(x);
        }
    });
    let out = call(
        "top_processes",
        json!({"sort_by": "cpu", "limit": 10, "sample_ms": 500}),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    burner.join().expect("burner");
    let r: TopProcessesReport = decode(&out);
    let me = r
        .processes
        .iter()
        .find(|p| p.pid == std::process::id())
        .unwrap_or_else(|| panic!("the busy test process is not in {r:?}"));
    assert!(me.cpu_pct >= 10.0, "{me:?}");
    for pair in r.processes.windows(2) {
        assert!(pair[0].cpu_pct >= pair[1].cpu_pct, "{pair:?}");
    }
}

#[tokio::test]
async fn process_detail_by_pid_and_by_name() {
    let pid = std::process::id();
    let r: ProcessDetailReport = decode(&call("process_detail", json!({"pid": pid})).await);
    assert_eq!(r.matched, 1);
    let p = &r.processes[0];
    assert_eq!(p.pid, pid);
    assert!(p.threads >= 1);
    assert!(p.fds_open.is_some_and(|n| n >= 3), "{p:?}");
    let limits = host::parse_limits(&std::fs::read_to_string("/proc/self/limits").expect("limits"));
    let nofile = limits
        .iter()
        .find(|l| l.name == "Max open files")
        .expect("nofile");
    assert_eq!(p.fd_soft_limit, nofile.soft.parse().ok());
    assert!(p.limits.contains_key("Max open files"));
    assert!(p.exe.is_some() && p.cwd.is_some());
    assert!(p.rss_bytes > 0);
    assert!(
        p.state.starts_with('R') || p.state.starts_with('S'),
        "{}",
        p.state
    );

    let comm = host::proc_stat(pid).expect("own stat").comm;
    let by_name: ProcessDetailReport =
        decode(&call("process_detail", json!({"name": comm, "max_processes": 10})).await);
    assert!(
        by_name.processes.iter().any(|p| p.pid == pid),
        "{by_name:?}"
    );

    let none = call("process_detail", json!({"name": "no-such-process-xyz"})).await;
    assert!(!none.ok);
    let none: ProcessDetailReport = serde_json::from_str(&none.output).expect("json");
    assert_eq!(none.matched, 0);

    let both = call("process_detail", json!({"pid": 1, "name": "x"})).await;
    assert!(
        !both.ok && both.output.contains("exactly one"),
        "{}",
        both.output
    );
}

#[tokio::test]
async fn kernel_log_returns_lines_or_says_why_not() {
    let out = call("kernel_log", json!({"lines": 20, "level": "info"})).await;
    if out.ok {
        let r: KernelLogReport = serde_json::from_str(&out.output).expect("json");
        assert!(r.lines.len() <= 20);
        assert!(r.matched >= r.lines.len());
        let allowed = ["emerg", "alert", "crit", "err", "warning", "notice", "info"];
        for l in &r.lines {
            if let Some(level) = &l.level {
                assert!(allowed.contains(&level.as_str()), "{l:?}");
            }
        }
        if r.source == "/dev/kmsg" {
            // Times come from the boot clock: increasing.
            let times: Vec<f64> = r.lines.iter().filter_map(|l| l.uptime_sec).collect();
            assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        }
    } else {
        assert!(out.output.starts_with("not available: "), "{}", out.output);
    }
}

#[tokio::test]
async fn systemd_unit_works_or_is_clearly_unavailable() {
    let out = call(
        "systemd_unit",
        json!({"unit": "tether-no-such-unit.service", "lines": 5}),
    )
    .await;
    if std::path::Path::new("/run/systemd/system").exists() {
        let r: SystemdReport = decode(&out);
        assert_eq!(
            r.properties.get("LoadState").map(String::as_str),
            Some("not-found"),
            "{r:?}"
        );
    } else {
        assert!(!out.ok);
        assert_eq!(out.output, NOT_AVAILABLE);
        assert!(out.output.contains("systemd is not available on this host"));
    }
    let bad = call("systemd_unit", json!({"unit": "--all"})).await;
    assert!(
        !bad.ok && bad.output.contains("not a valid unit name"),
        "{}",
        bad.output
    );
}

#[tokio::test]
async fn a_cancelled_sample_returns_promptly() {
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let started = Instant::now();
    let slow = tokio::spawn(async move {
        tool("cpu_load")
            .call(json!({"sample_ms": 5000}), ctx(&c2))
            .await
    });
    // Cancel as soon as the call is under way (no timing assumption: cancelling before it
    // starts must work just as well).
    tokio::task::yield_now().await;
    cancel.cancel();
    let out = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("returned")
        .expect("joined");
    assert!(!out.ok);
    assert_eq!(out.output, "cancelled");
    assert!(
        started.elapsed() < Duration::from_millis(4000),
        "{:?}",
        started.elapsed()
    );

    for (name, args) in [
        ("disk_io", json!({"sample_ms": 5000})),
        ("top_processes", json!({"sample_ms": 5000})),
    ] {
        let started = Instant::now();
        let out = tool(name).call(args, ctx(&cancel)).await;
        assert_eq!(out.output, "cancelled", "{name}");
        assert!(started.elapsed() < Duration::from_millis(4000), "{name}");
    }
}
