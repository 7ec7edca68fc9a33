//! Inspect mode: a report on one area of the host without a model.
//!
//! [`plan`] lists the diagnostic tool calls for a plugin (and optional target), the caller runs
//! them (the turn loop, through the permission and audit path; or [`run`], in-process for
//! `tether inspect`), and [`report`] turns the results into [`Finding`]s and structured
//! Markdown. Every finding is computed from the tools' readings against the thresholds below;
//! nothing is hard-coded.
//!
//! # Plugins
//!
//! | plugin | target | tool calls |
//! |---|---|---|
//! | `system` | — | cpu_load, memory, disks, top_processes (cpu), systemd_unit (failed units), kernel_log (err and worse) |
//! | `cpu` | — | cpu_load, top_processes (cpu) |
//! | `load` | — | cpu_load, top_processes (cpu; D-state counts), disk_io |
//! | `mem` | — | memory, top_processes (memory) |
//! | `disk` | optional path (the file system holding it) or block device | disks, disk_io |
//! | `net` | optional `HOST:PORT`, URL or host | net_interfaces, sockets, + tcp_check / http_check / dns_resolve |
//! | `process` | optional name, glob or pid | process_detail + top_processes (cpu), or top_processes by cpu and by memory |
//! | `service` | optional unit | systemd_unit (the unit, or the failed units) |
//! | `kernel` | — | kernel_log (warning and worse) |
//! | `log` | a log file or directory | log_tail + log_grep for "error" |
//! | `http` | a URL | http_check |
//! | `dns` | a host name | dns_resolve |
//! | `tcp` | `HOST:PORT` | tcp_check |
//!
//! Aliases (catpaw plugin names and plurals): `memory` → mem, `procnum`/`proc`/`processes`
//! → process, `systemd`/`unit` → service, `dmesg` → kernel, `logs`/`logfile` → log,
//! `network`/`netif`/`sockets` → net, `diskio`/`disks` → disk, `port`/`net_port` → tcp.

use crate::host;
use crate::text::clip;
use crate::tools::diag::{
    cpu::CpuLoadReport,
    disks::{DiskIoReport, DisksReport},
    logs::{KernelLogReport, LogDirReport, LogGrepReport, LogTailReport},
    memory::MemoryReport,
    net::{NetInterfacesReport, SocketsReport},
    probes::{DnsReport, HttpCheckReport, TcpCheckReport},
    process::{ProcessDetailReport, TopProcessesReport},
    systemd::SystemdReport,
};
use crate::tools::{ToolContext, ToolOutput, ToolRegistry, schema};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Write as _;
use tether_proto::{SessionId, TurnId};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Thresholds. `>=` a critical threshold is Critical, else `>=` a warning threshold is Warning.
// ---------------------------------------------------------------------------------------------

/// File system space used (df's used / (used + available)), percent.
pub const DISK_USED_WARN_PCT: f64 = 80.0;
pub const DISK_USED_CRIT_PCT: f64 = 90.0;
/// Inodes used, percent.
pub const INODES_USED_WARN_PCT: f64 = 80.0;
pub const INODES_USED_CRIT_PCT: f64 = 90.0;
/// Memory available (MemAvailable / MemTotal), percent: *below* these.
pub const MEM_AVAILABLE_WARN_PCT: f64 = 10.0;
pub const MEM_AVAILABLE_CRIT_PCT: f64 = 5.0;
/// Swap used, percent of swap total.
pub const SWAP_USED_WARN_PCT: f64 = 80.0;
pub const SWAP_USED_CRIT_PCT: f64 = 95.0;
/// Memory pressure: share of the last minute all tasks stalled on memory (PSI `full avg60`).
pub const MEM_PSI_FULL_WARN: f64 = 5.0;
pub const MEM_PSI_FULL_CRIT: f64 = 20.0;
/// One-minute load average per online CPU: *above* these.
pub const LOAD_PER_CPU_WARN: f64 = 1.5;
pub const LOAD_PER_CPU_CRIT: f64 = 3.0;
/// Total CPU use over the sample, percent (busy is not broken: warning only).
pub const CPU_BUSY_WARN_PCT: f64 = 90.0;
/// CPU time waiting for I/O over the sample, percent.
pub const IOWAIT_WARN_PCT: f64 = 20.0;
pub const IOWAIT_CRIT_PCT: f64 = 50.0;
/// CPU time stolen by the hypervisor, percent.
pub const STEAL_WARN_PCT: f64 = 10.0;
/// Block device %util over the sample, and average wait per I/O.
pub const DISK_UTIL_WARN_PCT: f64 = 90.0;
pub const DISK_AWAIT_WARN_MS: f64 = 100.0;
/// Processes in uninterruptible sleep (D) and zombies: Info from one, Warning from these.
pub const D_STATE_WARN: usize = 5;
pub const ZOMBIES_WARN: usize = 50;
/// Open file descriptors of a process against its soft limit, percent.
pub const FDS_WARN_PCT: f64 = 80.0;
pub const FDS_CRIT_PCT: f64 = 95.0;
/// TCP sockets in CLOSE_WAIT (a program not closing connections) and TIME_WAIT.
pub const CLOSE_WAIT_WARN: usize = 100;
pub const TIME_WAIT_WARN: usize = 20_000;
/// systemd units restarted this many times.
pub const UNIT_RESTARTS_WARN: u64 = 3;
/// Probe latencies: slower than these is a Warning.
pub const DNS_SLOW_MS: f64 = 1000.0;
pub const TCP_SLOW_MS: f64 = 1000.0;
pub const HTTP_SLOW_MS: f64 = 2000.0;
/// Kernel messages that are Critical (storage or file-system errors, OOM kills) and Warning
/// (hung tasks, crashes), matched case-insensitively.
pub const KERNEL_CRITICAL_PATTERNS: &[&str] = &[
    "out of memory",
    "oom-kill",
    "i/o error",
    "blk_update_request",
    "ext4-fs error",
    "xfs_corruption",
    "corruption detected",
    "remounting filesystem read-only",
    "hardware error",
    "machine check",
];
pub const KERNEL_WARNING_PATTERNS: &[&str] = &[
    "blocked for more than",
    "segfault",
    "general protection",
    "soft lockup",
    "call trace",
    "nf_conntrack: table full",
    "link is down",
];

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// One tool call of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedCall {
    pub tool: String,
    pub args: Value,
}

impl PlannedCall {
    fn new(tool: &str, args: Value) -> Self {
        PlannedCall {
            tool: tool.to_owned(),
            args,
        }
    }
}

/// How much a finding matters. Orders most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Critical,
    /// The inspection could not read what it was asked about (its target does not exist or
    /// gave no reading): nothing can be said about it, in either direction.
    Unknown,
    Warning,
    Info,
    Ok,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "CRITICAL",
            Severity::Unknown => "UNKNOWN",
            Severity::Warning => "WARNING",
            Severity::Info => "INFO",
            Severity::Ok => "OK",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub title: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InspectReport {
    pub markdown: String,
    /// Most severe first.
    pub findings: Vec<Finding>,
}

// ---------------------------------------------------------------------------------------------
// Plugins and plans
// ---------------------------------------------------------------------------------------------

const PLUGINS: &[&str] = &[
    "system", "cpu", "load", "mem", "disk", "net", "process", "service", "kernel", "log", "http",
    "dns", "tcp",
];

/// The inspect plugins (see the module documentation for what each looks at).
pub fn plugins() -> &'static [&'static str] {
    PLUGINS
}

/// The canonical name of a plugin or alias.
pub fn canonical(plugin: &str) -> Option<&'static str> {
    let p = plugin.trim().to_ascii_lowercase();
    let name = match p.as_str() {
        "memory" => "mem",
        "procnum" | "proc" | "processes" => "process",
        "systemd" | "unit" => "service",
        "dmesg" => "kernel",
        "logs" | "logfile" => "log",
        "network" | "netif" | "sockets" => "net",
        "diskio" | "disks" => "disk",
        "port" | "net_port" => "tcp",
        other => other,
    };
    PLUGINS.iter().find(|k| **k == name).copied()
}

/// Splits `host:port` or `[v6]:port`.
pub fn parse_host_port(target: &str) -> Option<(String, u16)> {
    let t = target.trim();
    if let Some(rest) = t.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host.to_owned(), port.parse().ok().filter(|p| *p > 0)?));
    }
    let (host, port) = t.rsplit_once(':')?;
    if host.is_empty() || host.contains(':') {
        return None;
    }
    Some((host.to_owned(), port.parse().ok().filter(|p| *p > 0)?))
}

fn is_url(t: &str) -> bool {
    t.starts_with("http://") || t.starts_with("https://")
}

/// The tool calls that inspect `plugin` (with `target`, when it takes one).
pub fn plan(plugin: &str, target: Option<&str>) -> Result<Vec<PlannedCall>, String> {
    let Some(name) = canonical(plugin) else {
        return Err(format!(
            "unknown inspect plugin `{plugin}`; known plugins: {}",
            PLUGINS.join(", ")
        ));
    };
    let target = target.map(str::trim).filter(|t| !t.is_empty());
    let need = |what: &str| format!("plugin `{name}` needs a target: {what}");
    let top_cpu = || PlannedCall::new("top_processes", json!({"sort_by": "cpu", "limit": 10}));
    let calls = match name {
        "system" => vec![
            PlannedCall::new("cpu_load", json!({"per_cpu": false})),
            PlannedCall::new("memory", json!({})),
            PlannedCall::new("disks", json!({})),
            PlannedCall::new("top_processes", json!({"sort_by": "cpu", "limit": 5})),
            PlannedCall::new("systemd_unit", json!({})),
            PlannedCall::new("kernel_log", json!({"level": "err", "lines": 50})),
        ],
        "cpu" => vec![PlannedCall::new("cpu_load", json!({})), top_cpu()],
        "load" => vec![
            PlannedCall::new("cpu_load", json!({})),
            top_cpu(),
            PlannedCall::new("disk_io", json!({})),
        ],
        "mem" => vec![
            PlannedCall::new("memory", json!({})),
            PlannedCall::new("top_processes", json!({"sort_by": "memory", "limit": 10})),
        ],
        "disk" => match target {
            Some(t) if t.starts_with('/') && !t.starts_with("/dev/") => vec![
                PlannedCall::new("disks", json!({"mount": t})),
                PlannedCall::new("disk_io", json!({})),
            ],
            Some(t) => {
                let device = t.strip_prefix("/dev/").unwrap_or(t);
                vec![
                    PlannedCall::new("disks", json!({})),
                    PlannedCall::new("disk_io", json!({"device": device})),
                ]
            }
            None => vec![
                PlannedCall::new("disks", json!({})),
                PlannedCall::new("disk_io", json!({})),
            ],
        },
        "net" => {
            let mut calls = vec![
                PlannedCall::new("net_interfaces", json!({})),
                PlannedCall::new("sockets", json!({})),
            ];
            match target {
                Some(t) if is_url(t) => {
                    calls.push(PlannedCall::new("http_check", json!({"url": t})))
                }
                Some(t) => match parse_host_port(t) {
                    Some((host, port)) => calls.push(PlannedCall::new(
                        "tcp_check",
                        json!({"host": host, "port": port}),
                    )),
                    None => calls.push(PlannedCall::new("dns_resolve", json!({"name": t}))),
                },
                None => {}
            }
            calls
        }
        "process" => match target {
            Some(t) => {
                let detail = match t.parse::<u32>() {
                    Ok(pid) if pid > 0 => json!({"pid": pid}),
                    _ => json!({"name": t}),
                };
                vec![PlannedCall::new("process_detail", detail), top_cpu()]
            }
            None => vec![
                top_cpu(),
                PlannedCall::new("top_processes", json!({"sort_by": "memory", "limit": 10})),
            ],
        },
        "service" => match target {
            Some(t) => vec![PlannedCall::new(
                "systemd_unit",
                json!({"unit": t, "lines": 30}),
            )],
            None => vec![PlannedCall::new("systemd_unit", json!({}))],
        },
        "kernel" => vec![PlannedCall::new(
            "kernel_log",
            json!({"level": "warning", "lines": 100}),
        )],
        "log" => {
            let Some(t) = target else {
                return Err(need("a log file or directory, e.g. /var/log/syslog"));
            };
            vec![
                PlannedCall::new("log_tail", json!({"path": t, "lines": 50})),
                PlannedCall::new(
                    "log_grep",
                    json!({"path": t, "pattern": "error", "ignore_case": true, "max_matches": 20}),
                ),
            ]
        }
        "http" => match target {
            Some(t) if is_url(t) => vec![PlannedCall::new("http_check", json!({"url": t}))],
            Some(t) => return Err(need(&format!("a http:// or https:// URL, not `{t}`"))),
            None => return Err(need("a URL, e.g. http://localhost:8080/health")),
        },
        "dns" => match target {
            Some(t) => vec![PlannedCall::new("dns_resolve", json!({"name": t}))],
            None => return Err(need("a host name, e.g. example.com")),
        },
        "tcp" => match target.and_then(parse_host_port) {
            Some((host, port)) => vec![PlannedCall::new(
                "tcp_check",
                json!({"host": host, "port": port}),
            )],
            None => return Err(need("HOST:PORT, e.g. db.internal:5432")),
        },
        _ => {
            return Err(format!(
                "unknown inspect plugin `{plugin}`; known plugins: {}",
                PLUGINS.join(", ")
            ));
        }
    };
    Ok(calls)
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// Plans, runs each call through `tools` (arguments validated against the tool's schema
/// first) and reports. Used by `tether inspect`, in-process and without an agent: the
/// operator named the plugin and target on the command line, which stands for approval, so
/// calls that would need permission in a session (a probe of another host) run too.
pub async fn run(
    plugin: &str,
    target: Option<&str>,
    tools: &ToolRegistry,
    cancel: &CancellationToken,
) -> Result<InspectReport, String> {
    let calls = plan(plugin, target)?;
    let mut results = Vec::with_capacity(calls.len());
    for call in calls {
        if cancel.is_cancelled() {
            return Err("cancelled".into());
        }
        let out = match tools.get(&call.tool) {
            None => ToolOutput::error(format!(
                "the `{}` tool is not available to this inspection",
                call.tool
            )),
            Some(tool) => match schema::validate(&tool.spec().parameters, &call.args) {
                Err(e) => ToolOutput::error(format!("invalid arguments for `{}`: {e}", call.tool)),
                Ok(()) => {
                    let ctx = ToolContext {
                        session_id: SessionId::from("inspect"),
                        turn_id: TurnId::from("inspect"),
                        cancel: cancel.clone(),
                    };
                    tool.call(call.args.clone(), ctx).await
                }
            },
        };
        if cancel.is_cancelled() {
            return Err("cancelled".into());
        }
        results.push((call, out));
    }
    Ok(report(plugin, target, &results))
}

// ---------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------

/// Escapes text for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", headers.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(headers.len()));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

/// Lines in a fenced block (fences inside are defused).
fn code_block(out: &mut String, lines: &[String]) {
    out.push_str("```text\n");
    for l in lines {
        out.push_str(&l.replace("```", "'''"));
        out.push('\n');
    }
    out.push_str("```\n\n");
}

/// `n` and the noun, singular or plural: `1 file system`, `3 file systems`.
fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn pct(v: f64) -> String {
    format!("{v:.1} %")
}

fn bytes(n: u64) -> String {
    host::human_bytes(n)
}

/// A report section under construction.
struct Section {
    heading: String,
    body: String,
}

struct Builder {
    findings: Vec<Finding>,
    sections: Vec<Section>,
    /// The target and the calls of the plan that read it (absent from the plan without it).
    target: Option<String>,
    target_calls: Vec<PlannedCall>,
}

impl Builder {
    fn find(&mut self, severity: Severity, title: impl Into<String>, detail: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            title: title.into(),
            detail: detail.into(),
        });
    }

    fn section(&mut self, heading: impl Into<String>, body: String) {
        self.sections.push(Section {
            heading: heading.into(),
            body,
        });
    }

    /// A tool that failed without a readable report.
    fn failed(&mut self, call: &PlannedCall, out: &ToolOutput, heading: &str) {
        let text = clip(out.output.trim(), 400);
        if let Some(target) = self
            .target
            .clone()
            .filter(|_| self.target_calls.contains(call))
        {
            // What the inspection was asked about could not be read (e.g. a path that does not
            // exist): the result is unknown, not a warning about the host.
            self.find(
                Severity::Unknown,
                format!(
                    "{heading}: cannot read the target `{}`",
                    target.replace('`', "'")
                ),
                text.clone(),
            );
        } else if text.starts_with("not available") || text.starts_with("systemd is not available")
        {
            // A facility the host does not have is a fact about the host, not a failure.
            self.find(
                Severity::Info,
                format!("{heading} not available"),
                text.clone(),
            );
        } else {
            self.find(
                Severity::Warning,
                format!("{heading}: `{}` gave no reading", call.tool),
                text.clone(),
            );
        }
        self.section(
            heading,
            format!("`{}` failed: {}\n\n", call.tool, cell(&text)),
        );
    }
}

fn parse<T: DeserializeOwned>(out: &ToolOutput) -> Option<T> {
    serde_json::from_str(&out.output).ok()
}

/// Turns the results of a plan into findings and Markdown.
pub fn report(
    plugin: &str,
    target: Option<&str>,
    results: &[(PlannedCall, ToolOutput)],
) -> InspectReport {
    let target = target.map(str::trim).filter(|t| !t.is_empty());
    // The calls that read the target: those the plan without a target does not have (all of
    // them for plugins that need a target).
    let target_calls = match target.and_then(|t| plan(plugin, Some(t)).ok()) {
        Some(with) => {
            let without = plan(plugin, None).unwrap_or_default();
            with.into_iter().filter(|c| !without.contains(c)).collect()
        }
        None => Vec::new(),
    };
    let mut b = Builder {
        findings: Vec::new(),
        sections: Vec::new(),
        target: target.map(str::to_owned),
        target_calls,
    };
    for (call, out) in results {
        match call.tool.as_str() {
            "cpu_load" => match parse::<CpuLoadReport>(out) {
                Some(r) => cpu_section(&mut b, &r),
                None => b.failed(call, out, "CPU"),
            },
            "memory" => match parse::<MemoryReport>(out) {
                Some(r) => memory_section(&mut b, &r),
                None => b.failed(call, out, "Memory"),
            },
            "disks" => match parse::<DisksReport>(out) {
                Some(r) => disks_section(&mut b, &r),
                None => b.failed(call, out, "Disks"),
            },
            "disk_io" => match parse::<DiskIoReport>(out) {
                Some(r) => disk_io_section(&mut b, &r),
                None => b.failed(call, out, "Disk I/O"),
            },
            "top_processes" => match parse::<TopProcessesReport>(out) {
                Some(r) => top_section(&mut b, &r),
                None => b.failed(call, out, "Processes"),
            },
            "process_detail" => match parse::<ProcessDetailReport>(out) {
                Some(r) => process_section(&mut b, &r),
                None => b.failed(call, out, "Process"),
            },
            "sockets" => match parse::<SocketsReport>(out) {
                Some(r) => sockets_section(&mut b, &r),
                None => b.failed(call, out, "Sockets"),
            },
            "net_interfaces" => match parse::<NetInterfacesReport>(out) {
                Some(r) => interfaces_section(&mut b, &r),
                None => b.failed(call, out, "Network interfaces"),
            },
            "kernel_log" => match parse::<KernelLogReport>(out) {
                Some(r) => kernel_section(&mut b, &r),
                None => b.failed(call, out, "Kernel log"),
            },
            "systemd_unit" => match parse::<SystemdReport>(out) {
                Some(r) => systemd_section(&mut b, &r),
                None => b.failed(call, out, "systemd"),
            },
            "log_tail" => {
                if let Some(r) = parse::<LogTailReport>(out) {
                    log_tail_section(&mut b, &r);
                } else if let Some(r) = parse::<LogDirReport>(out) {
                    log_dir_section(&mut b, &r);
                } else {
                    b.failed(call, out, "Log");
                }
            }
            "log_grep" => match parse::<LogGrepReport>(out) {
                Some(r) => log_grep_section(&mut b, &r),
                None => b.failed(call, out, "Log search"),
            },
            "dns_resolve" => match parse::<DnsReport>(out) {
                Some(r) => dns_section(&mut b, &r),
                None => b.failed(call, out, "DNS"),
            },
            "tcp_check" => match parse::<TcpCheckReport>(out) {
                Some(r) => tcp_section(&mut b, &r),
                None => b.failed(call, out, "TCP check"),
            },
            "http_check" => match parse::<HttpCheckReport>(out) {
                Some(r) => http_section(&mut b, &r),
                None => b.failed(call, out, "HTTP check"),
            },
            other => {
                let heading = format!("`{other}`");
                if out.ok {
                    b.section(
                        heading,
                        format!("```text\n{}\n```\n\n", clip(&out.output, 4000)),
                    );
                } else {
                    b.failed(call, out, &heading);
                }
            }
        }
    }

    // Stable: findings of one severity keep the order of the areas.
    b.findings.sort_by_key(|f| f.severity);

    let hostname = host::hostname();
    let shown_plugin = canonical(plugin).unwrap_or(plugin);
    let mut md = String::new();
    let _ = writeln!(md, "# Inspection: {shown_plugin} on {hostname}\n");
    let mut meta = format!(
        "Host `{hostname}` · {} · plugin `{shown_plugin}`",
        crate::tools::diag::now_rfc3339()
    );
    if let Some(t) = target {
        let _ = write!(meta, " · target `{}`", t.replace('`', "'"));
    }
    let _ = writeln!(md, "{meta}\n");

    let count = |s: Severity| b.findings.iter().filter(|f| f.severity == s).count();
    // "unknown" only when there is one: most reports never have it.
    let unknown = match count(Severity::Unknown) {
        0 => String::new(),
        n => format!("{n} unknown, "),
    };
    let _ = writeln!(
        md,
        "## Findings\n\n{} critical, {unknown}{} warning, {} info, {} ok.\n",
        count(Severity::Critical),
        count(Severity::Warning),
        count(Severity::Info),
        count(Severity::Ok)
    );
    if b.findings.is_empty() {
        md.push_str("No findings: no tool gave a reading.\n\n");
    } else {
        let rows: Vec<Vec<String>> = b
            .findings
            .iter()
            .map(|f| vec![f.severity.to_string(), f.title.clone(), f.detail.clone()])
            .collect();
        table(&mut md, &["Severity", "Finding", "Detail"], &rows);
    }
    for s in &b.sections {
        let _ = writeln!(md, "## {}\n", s.heading);
        md.push_str(&s.body);
    }
    let tools: Vec<String> = results
        .iter()
        .map(|(c, _)| format!("`{}`", c.tool))
        .collect();
    let _ = writeln!(
        md,
        "---\n_How this was gathered: tether inspect ran {} on {hostname} (readings from /proc, \
         /sys and system commands; CPU and disk figures sampled over about half a second), \
         without a model; findings use the thresholds built into tether._",
        if tools.is_empty() {
            "no tools".to_owned()
        } else {
            tools.join(", ")
        }
    );
    InspectReport {
        markdown: md,
        findings: b.findings,
    }
}

fn cpu_section(b: &mut Builder, r: &CpuLoadReport) {
    let t = &r.total;
    let mut body = String::new();
    let load = r.load.as_ref().map_or("n/a".to_owned(), |l| {
        format!("{:.2} / {:.2} / {:.2}", l.one, l.five, l.fifteen)
    });
    let load_per_cpu = r
        .load_per_cpu
        .map_or("n/a".to_owned(), |v| format!("{v:.2}"));
    table(
        &mut body,
        &[
            "CPUs",
            "Usage",
            "User",
            "System",
            "I/O wait",
            "Steal",
            "Load 1/5/15 min",
            "Load per CPU",
        ],
        &[vec![
            r.cpus.to_string(),
            pct(t.usage_pct),
            pct(t.user_pct),
            pct(t.system_pct),
            pct(t.iowait_pct),
            pct(t.steal_pct),
            load,
            load_per_cpu.clone(),
        ]],
    );
    if !r.per_cpu.is_empty() && r.per_cpu.len() <= 16 {
        let rows: Vec<Vec<String>> = r
            .per_cpu
            .iter()
            .map(|c| {
                vec![
                    c.cpu.clone(),
                    pct(c.usage_pct),
                    pct(c.iowait_pct),
                    pct(c.steal_pct),
                ]
            })
            .collect();
        table(&mut body, &["CPU", "Usage", "I/O wait", "Steal"], &rows);
    }
    if let Some(p) = r.pressure.as_ref().and_then(|p| p.some.as_ref()) {
        let _ = writeln!(
            body,
            "CPU pressure (some tasks stalled): {:.2} % over 10 s, {:.2} % over 60 s.\n",
            p.avg10, p.avg60
        );
    }
    b.section(format!("CPU (sampled over {} ms)", r.sample_ms), body);

    let before = b.findings.len();
    if let Some(v) = r.load_per_cpu {
        let detail = format!("1-minute load {load_per_cpu} per CPU over {} CPUs", r.cpus);
        if v > LOAD_PER_CPU_CRIT {
            b.find(Severity::Critical, format!("Load {v:.2} per CPU"), detail);
        } else if v > LOAD_PER_CPU_WARN {
            b.find(Severity::Warning, format!("Load {v:.2} per CPU"), detail);
        }
    }
    if t.usage_pct >= CPU_BUSY_WARN_PCT {
        b.find(
            Severity::Warning,
            format!("CPU {} busy", pct(t.usage_pct)),
            format!("user {}, system {}", pct(t.user_pct), pct(t.system_pct)),
        );
    }
    if t.iowait_pct >= IOWAIT_CRIT_PCT {
        b.find(
            Severity::Critical,
            format!("I/O wait {}", pct(t.iowait_pct)),
            "CPUs mostly wait for storage",
        );
    } else if t.iowait_pct >= IOWAIT_WARN_PCT {
        b.find(
            Severity::Warning,
            format!("I/O wait {}", pct(t.iowait_pct)),
            "CPUs often wait for storage",
        );
    }
    if t.steal_pct >= STEAL_WARN_PCT {
        b.find(
            Severity::Warning,
            format!("CPU steal {}", pct(t.steal_pct)),
            "the hypervisor gives this VM less CPU than it asks for",
        );
    }
    if b.findings.len() == before {
        b.find(
            Severity::Ok,
            format!("CPU {} used", pct(t.usage_pct)),
            format!(
                "load {load_per_cpu} per CPU, I/O wait {}",
                pct(t.iowait_pct)
            ),
        );
    }
}

fn memory_section(b: &mut Builder, r: &MemoryReport) {
    let mut body = String::new();
    let mut rows = vec![
        vec!["Total".into(), bytes(r.total_bytes)],
        vec![
            "Available".into(),
            format!("{} ({})", bytes(r.available_bytes), pct(r.available_pct)),
        ],
        vec![
            "Used".into(),
            format!("{} ({})", bytes(r.used_bytes), pct(r.used_pct)),
        ],
        vec!["Free".into(), bytes(r.free_bytes)],
        vec!["Buffers".into(), bytes(r.buffers_bytes)],
        vec!["Page cache".into(), bytes(r.cached_bytes)],
        vec!["Swap total".into(), bytes(r.swap_total_bytes)],
        vec![
            "Swap used".into(),
            format!("{} ({})", bytes(r.swap_used_bytes), pct(r.swap_used_pct)),
        ],
    ];
    if let Some(p) = &r.pressure {
        if let Some(s) = &p.some {
            rows.push(vec![
                "Pressure (some, 60 s)".into(),
                format!("{:.2} %", s.avg60),
            ]);
        }
        if let Some(f) = &p.full {
            rows.push(vec![
                "Pressure (full, 60 s)".into(),
                format!("{:.2} %", f.avg60),
            ]);
        }
    }
    table(&mut body, &["Memory", "Value"], &rows);
    b.section("Memory", body);

    let detail = format!(
        "{} available of {} total",
        bytes(r.available_bytes),
        bytes(r.total_bytes)
    );
    let title = format!("Memory available {}", pct(r.available_pct));
    if r.available_pct < MEM_AVAILABLE_CRIT_PCT {
        b.find(Severity::Critical, title, detail);
    } else if r.available_pct < MEM_AVAILABLE_WARN_PCT {
        b.find(Severity::Warning, title, detail);
    } else {
        b.find(Severity::Ok, title, detail);
    }
    if r.swap_total_bytes > 0 {
        let title = format!("Swap {} used", pct(r.swap_used_pct));
        let detail = format!(
            "{} of {}",
            bytes(r.swap_used_bytes),
            bytes(r.swap_total_bytes)
        );
        if r.swap_used_pct >= SWAP_USED_CRIT_PCT {
            b.find(Severity::Critical, title, detail);
        } else if r.swap_used_pct >= SWAP_USED_WARN_PCT {
            b.find(Severity::Warning, title, detail);
        }
    }
    if let Some(full) = r.pressure.as_ref().and_then(|p| p.full.as_ref()) {
        let title = format!("Memory pressure {:.2} %", full.avg60);
        let detail = "share of the last minute all tasks stalled waiting for memory";
        if full.avg60 >= MEM_PSI_FULL_CRIT {
            b.find(Severity::Critical, title, detail);
        } else if full.avg60 >= MEM_PSI_FULL_WARN {
            b.find(Severity::Warning, title, detail);
        }
    }
}

fn disks_section(b: &mut Builder, r: &DisksReport) {
    let mut body = String::new();
    let rows: Vec<Vec<String>> = r
        .filesystems
        .iter()
        .map(|f| {
            vec![
                f.mount_point.clone(),
                f.device.clone(),
                f.fs_type.clone(),
                bytes(f.total_bytes),
                bytes(f.used_bytes),
                bytes(f.available_bytes),
                pct(f.used_pct),
                f.inodes_used_pct.map_or("n/a".into(), pct),
            ]
        })
        .collect();
    table(
        &mut body,
        &[
            "Mount",
            "Device",
            "Type",
            "Size",
            "Used",
            "Available",
            "Use",
            "Inodes used",
        ],
        &rows,
    );
    for e in &r.errors {
        let _ = writeln!(body, "- `{}`: {}", e.mount_point, cell(&e.error));
    }
    if !r.errors.is_empty() {
        body.push('\n');
    }
    b.section("Disks", body);

    let before = b.findings.len();
    for f in r.filesystems.iter().filter(|f| !f.read_only) {
        let detail = format!(
            "{} used of {}, {} available ({} on {})",
            bytes(f.used_bytes),
            bytes(f.total_bytes),
            bytes(f.available_bytes),
            f.fs_type,
            f.device
        );
        let title = format!("Disk {} {} used", f.mount_point, pct(f.used_pct));
        if f.used_pct >= DISK_USED_CRIT_PCT {
            b.find(Severity::Critical, title, detail);
        } else if f.used_pct >= DISK_USED_WARN_PCT {
            b.find(Severity::Warning, title, detail);
        }
        if let Some(ip) = f.inodes_used_pct {
            let title = format!("Inodes on {} {} used", f.mount_point, pct(ip));
            let detail = format!("{} of {} inodes used", f.inodes_used, f.inodes_total);
            if ip >= INODES_USED_CRIT_PCT {
                b.find(Severity::Critical, title, detail);
            } else if ip >= INODES_USED_WARN_PCT {
                b.find(Severity::Warning, title, detail);
            }
        }
    }
    for e in &r.errors {
        b.find(
            Severity::Warning,
            format!("File system {} not measured", e.mount_point),
            e.error.clone(),
        );
    }
    if b.findings.len() == before {
        let fullest = r
            .filesystems
            .iter()
            .max_by(|a, b| a.used_pct.total_cmp(&b.used_pct));
        let detail = match fullest {
            Some(f) => format!("fullest: {} at {}", f.mount_point, pct(f.used_pct)),
            None => "no file systems measured".into(),
        };
        b.find(
            Severity::Ok,
            format!(
                "Disk space fine on {}",
                count(r.filesystems.len(), "file system", "file systems")
            ),
            detail,
        );
    }
}

fn disk_io_section(b: &mut Builder, r: &DiskIoReport) {
    let mut body = String::new();
    let rows: Vec<Vec<String>> = r
        .devices
        .iter()
        .map(|d| {
            vec![
                d.device.clone(),
                format!("{:.1}", d.reads_per_sec),
                format!("{:.1}", d.writes_per_sec),
                format!("{}/s", bytes(d.read_bytes_per_sec)),
                format!("{}/s", bytes(d.write_bytes_per_sec)),
                pct(d.util_pct),
                d.await_ms.map_or("-".into(), |a| format!("{a:.2}")),
            ]
        })
        .collect();
    if rows.is_empty() {
        body.push_str("No block devices with I/O.\n\n");
    } else {
        table(
            &mut body,
            &[
                "Device", "Reads/s", "Writes/s", "Read", "Write", "Util", "Await ms",
            ],
            &rows,
        );
    }
    b.section(format!("Disk I/O (sampled over {} ms)", r.sample_ms), body);
    let before = b.findings.len();
    for d in &r.devices {
        if d.util_pct >= DISK_UTIL_WARN_PCT {
            b.find(
                Severity::Warning,
                format!("Disk {} {} busy", d.device, pct(d.util_pct)),
                format!(
                    "{:.1} reads/s, {:.1} writes/s during the sample",
                    d.reads_per_sec, d.writes_per_sec
                ),
            );
        }
        if let Some(a) = d.await_ms.filter(|a| *a >= DISK_AWAIT_WARN_MS) {
            b.find(
                Severity::Warning,
                format!("Disk {} slow: {a:.1} ms per I/O", d.device),
                "average time an I/O took (queue and service) during the sample",
            );
        }
    }
    if b.findings.len() == before {
        let busiest = r
            .devices
            .iter()
            .max_by(|a, b| a.util_pct.total_cmp(&b.util_pct));
        b.find(
            Severity::Ok,
            "Disk I/O normal",
            busiest.map_or("no device had I/O".into(), |d| {
                format!("busiest: {} at {} util", d.device, pct(d.util_pct))
            }),
        );
    }
}

fn top_section(b: &mut Builder, r: &TopProcessesReport) {
    let mut body = String::new();
    let rows: Vec<Vec<String>> = r
        .processes
        .iter()
        .map(|p| {
            vec![
                p.pid.to_string(),
                p.user.clone(),
                p.command.clone(),
                p.state.clone(),
                pct(p.cpu_pct),
                bytes(p.rss_bytes),
                pct(p.mem_pct),
            ]
        })
        .collect();
    table(
        &mut body,
        &["PID", "User", "Command", "State", "CPU", "RSS", "Memory"],
        &rows,
    );
    let states: Vec<String> = r.states.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        body,
        "{} processes: {}.\n",
        r.processes_total,
        states.join(", ")
    );
    let by = if r.sort_by == "memory" {
        "memory"
    } else {
        "CPU"
    };
    let heading = format!("Top processes by {by}");
    // Two top-process sections (cpu and memory) may appear; only count states once.
    let first = !b
        .sections
        .iter()
        .any(|s| s.heading.starts_with("Top processes"));
    b.section(heading, body);
    if first {
        let d = r.states.get("disk_sleep").copied().unwrap_or(0);
        if d >= D_STATE_WARN {
            b.find(
                Severity::Warning,
                format!(
                    "{} in uninterruptible sleep",
                    count(d, "process", "processes")
                ),
                "D state, usually waiting for storage or NFS",
            );
        } else if d > 0 {
            b.find(
                Severity::Info,
                format!(
                    "{} in uninterruptible sleep",
                    count(d, "process", "processes")
                ),
                "D state, usually waiting for storage or NFS",
            );
        }
        let z = r.states.get("zombie").copied().unwrap_or(0);
        if z >= ZOMBIES_WARN {
            b.find(
                Severity::Warning,
                format!("{z} zombie processes"),
                "their parents do not reap them",
            );
        } else if z > 0 {
            b.find(
                Severity::Info,
                count(z, "zombie process", "zombie processes"),
                "their parents do not reap them",
            );
        }
    }
    if let Some(p) = r.processes.first() {
        let detail = format!(
            "pid {} ({}), {} CPU, {} RSS: {}",
            p.pid,
            p.user,
            pct(p.cpu_pct),
            bytes(p.rss_bytes),
            clip(&p.cmdline, 120)
        );
        if r.sort_by == "memory" {
            b.find(
                Severity::Info,
                format!("Largest process: {} ({})", p.command, pct(p.mem_pct)),
                detail,
            );
        } else {
            b.find(
                Severity::Info,
                format!("Busiest process: {} ({})", p.command, pct(p.cpu_pct)),
                detail,
            );
        }
    }
}

fn process_section(b: &mut Builder, r: &ProcessDetailReport) {
    let mut body = String::new();
    if r.processes.is_empty() {
        body.push_str(&format!("No process matches {}.\n\n", r.query));
        b.section("Process", body);
        b.find(
            Severity::Critical,
            format!("No process matches {}", r.query),
            "the process is not running (or is not visible to tether)",
        );
        return;
    }
    let rows: Vec<Vec<String>> = r
        .processes
        .iter()
        .map(|p| {
            vec![
                p.pid.to_string(),
                p.name.clone(),
                p.state.clone(),
                p.user.clone(),
                p.threads.to_string(),
                match (p.fds_open, p.fd_soft_limit) {
                    (Some(o), Some(l)) => format!("{o} / {l}"),
                    (Some(o), None) => o.to_string(),
                    _ => "n/a".into(),
                },
                bytes(p.rss_bytes),
                format!("{:.1} s", p.cpu_time_sec),
                p.age_sec.map_or("n/a".into(), |a| {
                    humantime::format_duration(std::time::Duration::from_secs(a)).to_string()
                }),
            ]
        })
        .collect();
    table(
        &mut body,
        &[
            "PID",
            "Name",
            "State",
            "User",
            "Threads",
            "FDs / limit",
            "RSS",
            "CPU time",
            "Age",
        ],
        &rows,
    );
    for p in r.processes.iter().take(3) {
        let _ = writeln!(body, "- `{}`: {}", p.pid, cell(&clip(&p.cmdline, 300)));
    }
    if r.truncated {
        let _ = writeln!(
            body,
            "- … {} processes matched, {} shown",
            r.matched,
            r.processes.len()
        );
    }
    body.push('\n');
    b.section(format!("Process ({})", r.query), body);

    let before = b.findings.len();
    for p in &r.processes {
        if let (Some(open), Some(limit)) = (p.fds_open, p.fd_soft_limit)
            && limit > 0
        {
            let used = host::pct(open, limit);
            let title = format!(
                "{} (pid {}) uses {} of its file descriptors",
                p.name,
                p.pid,
                pct(used)
            );
            let detail = format!("{open} open, soft limit {limit}");
            if used >= FDS_CRIT_PCT {
                b.find(Severity::Critical, title, detail);
            } else if used >= FDS_WARN_PCT {
                b.find(Severity::Warning, title, detail);
            }
        }
        if p.state.starts_with('Z') {
            b.find(
                Severity::Warning,
                format!("{} (pid {}) is a zombie", p.name, p.pid),
                "it exited and its parent has not reaped it",
            );
        } else if p.state.starts_with('D') {
            b.find(
                Severity::Info,
                format!("{} (pid {}) in uninterruptible sleep", p.name, p.pid),
                "usually waiting for storage",
            );
        }
    }
    if b.findings.len() == before {
        b.find(
            Severity::Ok,
            format!("{} running", r.query),
            format!("{} matching", count(r.matched, "process", "processes")),
        );
    }
}

fn sockets_section(b: &mut Builder, r: &SocketsReport) {
    let mut body = String::new();
    let rows: Vec<Vec<String>> = r
        .listening
        .iter()
        .take(40)
        .map(|s| {
            vec![
                s.protocol.clone(),
                s.address.clone(),
                s.port.to_string(),
                match (&s.process, s.pid) {
                    (Some(name), Some(pid)) => format!("{name} ({pid})"),
                    _ => "?".into(),
                },
                s.user.clone(),
            ]
        })
        .collect();
    table(
        &mut body,
        &["Protocol", "Address", "Port", "Process", "User"],
        &rows,
    );
    if r.listening.len() > 40 || r.truncated {
        let _ = writeln!(
            body,
            "… {} listening sockets in all.\n",
            r.listening_tcp + r.listening_udp
        );
    }
    let states: Vec<Vec<String>> = r
        .tcp_states
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    if !states.is_empty() {
        table(&mut body, &["TCP state", "Sockets"], &states);
    }
    b.section("Listening sockets", body);

    b.find(
        Severity::Info,
        format!(
            "{}, {} UDP",
            count(
                r.listening_tcp,
                "listening TCP socket",
                "listening TCP sockets"
            ),
            r.listening_udp
        ),
        {
            let mut ports: Vec<u16> = r.listening.iter().map(|s| s.port).collect();
            ports.sort_unstable();
            ports.dedup();
            let shown: Vec<String> = ports.iter().take(20).map(u16::to_string).collect();
            format!("ports: {}", shown.join(", "))
        },
    );
    let close_wait = r.tcp_states.get("CLOSE_WAIT").copied().unwrap_or(0);
    if close_wait >= CLOSE_WAIT_WARN {
        b.find(
            Severity::Warning,
            format!("{close_wait} TCP sockets in CLOSE_WAIT"),
            "a program is not closing connections its peers closed",
        );
    }
    let time_wait = r.tcp_states.get("TIME_WAIT").copied().unwrap_or(0);
    if time_wait >= TIME_WAIT_WARN {
        b.find(
            Severity::Warning,
            format!("{time_wait} TCP sockets in TIME_WAIT"),
            "many short-lived connections; ephemeral ports may run out",
        );
    }
}

fn interfaces_section(b: &mut Builder, r: &NetInterfacesReport) {
    let mut body = String::new();
    let rows: Vec<Vec<String>> = r
        .interfaces
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.operstate.clone().unwrap_or_else(|| "?".into()),
                if i.addresses.is_empty() {
                    "-".into()
                } else {
                    i.addresses.join(", ")
                },
                bytes(i.rx_bytes),
                bytes(i.tx_bytes),
                format!("{} / {}", i.rx_errors, i.tx_errors),
                format!("{} / {}", i.rx_dropped, i.tx_dropped),
            ]
        })
        .collect();
    table(
        &mut body,
        &[
            "Interface",
            "State",
            "Addresses",
            "RX",
            "TX",
            "Errors rx/tx",
            "Drops rx/tx",
        ],
        &rows,
    );
    b.section("Network interfaces", body);
    let before = b.findings.len();
    for i in &r.interfaces {
        if i.operstate.as_deref() == Some("down") && !i.addresses.is_empty() {
            b.find(
                Severity::Warning,
                format!("Interface {} is down", i.name),
                format!("it has addresses {}", i.addresses.join(", ")),
            );
        }
        let errors = i.rx_errors + i.tx_errors;
        let drops = i.rx_dropped + i.tx_dropped;
        if errors > 0 || drops > 0 {
            b.find(
                Severity::Info,
                format!("Interface {}: {errors} errors, {drops} drops", i.name),
                format!(
                    "since boot, of {} packets received and {} sent",
                    i.rx_packets, i.tx_packets
                ),
            );
        }
    }
    if b.findings.len() == before {
        let up = r
            .interfaces
            .iter()
            .filter(|i| matches!(i.operstate.as_deref(), Some("up" | "unknown")))
            .count();
        b.find(
            Severity::Ok,
            format!("{up} of {} interfaces up", r.interfaces.len()),
            "no errors or drops",
        );
    }
}

fn kernel_section(b: &mut Builder, r: &KernelLogReport) {
    let mut body = String::new();
    let shown: Vec<String> = r
        .lines
        .iter()
        .rev()
        .take(15)
        .rev()
        .map(|l| {
            format!(
                "{} {:<7} {}",
                l.time.as_deref().unwrap_or("-"),
                l.level.as_deref().unwrap_or("-"),
                clip(&l.message, 300)
            )
        })
        .collect();
    let level = r.level.as_deref().unwrap_or("any");
    let _ = writeln!(
        body,
        "{} at level {level} or worse in {} ({} shown).\n",
        count(r.matched, "message", "messages"),
        r.source,
        shown.len()
    );
    if !shown.is_empty() {
        code_block(&mut body, &shown);
    }
    b.section("Kernel log", body);

    let has = |msg: &str, pats: &[&str]| {
        let m = msg.to_lowercase();
        pats.iter().any(|p| m.contains(p))
    };
    let critical: Vec<&str> = r
        .lines
        .iter()
        .filter(|l| has(&l.message, KERNEL_CRITICAL_PATTERNS))
        .map(|l| l.message.as_str())
        .collect();
    let warning: Vec<&str> = r
        .lines
        .iter()
        .filter(|l| {
            !has(&l.message, KERNEL_CRITICAL_PATTERNS) && has(&l.message, KERNEL_WARNING_PATTERNS)
        })
        .map(|l| l.message.as_str())
        .collect();
    if let Some(last) = critical.last() {
        b.find(
            Severity::Critical,
            format!(
                "{} about storage errors or OOM kills",
                count(critical.len(), "kernel message", "kernel messages")
            ),
            format!("latest: {}", clip(last, 200)),
        );
    }
    if let Some(last) = warning.last() {
        b.find(
            Severity::Warning,
            format!(
                "{} about hangs, crashes or links",
                count(warning.len(), "kernel message", "kernel messages")
            ),
            format!("latest: {}", clip(last, 200)),
        );
    }
    if critical.is_empty() && warning.is_empty() {
        if r.matched > 0 {
            b.find(
                Severity::Info,
                format!(
                    "{} at level {level} or worse",
                    count(r.matched, "kernel message", "kernel messages")
                ),
                r.lines.last().map_or(String::new(), |l| {
                    format!("latest: {}", clip(&l.message, 200))
                }),
            );
        } else {
            b.find(
                Severity::Ok,
                format!("No kernel messages at level {level} or worse"),
                r.source.clone(),
            );
        }
    }
}

fn systemd_section(b: &mut Builder, r: &SystemdReport) {
    let mut body = String::new();
    if let Some(failed) = &r.failed_units {
        if failed.is_empty() {
            body.push_str("No failed units.\n\n");
            b.find(
                Severity::Ok,
                "No failed systemd units",
                "systemctl list-units --state=failed",
            );
        } else {
            let rows: Vec<Vec<String>> = failed
                .iter()
                .map(|u| {
                    vec![
                        u.unit.clone(),
                        u.active.clone(),
                        u.sub.clone(),
                        u.description.clone(),
                    ]
                })
                .collect();
            table(&mut body, &["Unit", "Active", "Sub", "Description"], &rows);
            let names: Vec<&str> = failed.iter().take(10).map(|u| u.unit.as_str()).collect();
            b.find(
                Severity::Critical,
                count(failed.len(), "failed systemd unit", "failed systemd units"),
                names.join(", "),
            );
        }
        b.section("systemd", body);
        return;
    }
    let unit = r.unit.clone().unwrap_or_default();
    let prop = |k: &str| r.properties.get(k).map(String::as_str).unwrap_or("");
    let rows: Vec<Vec<String>> = r
        .properties
        .iter()
        .map(|(k, v)| vec![k.clone(), v.clone()])
        .collect();
    table(&mut body, &["Property", "Value"], &rows);
    if !r.journal.is_empty() {
        let lines: Vec<String> = r.journal.iter().rev().take(20).rev().cloned().collect();
        code_block(&mut body, &lines);
    } else if let Some(e) = &r.journal_error {
        let _ = writeln!(body, "Journal not readable: {}\n", cell(e));
    }
    b.section(format!("systemd unit {unit}"), body);

    let state = format!("{} ({})", prop("ActiveState"), prop("SubState"));
    let result = prop("Result");
    let status = prop("ExecMainStatus");
    if prop("LoadState") == "not-found" {
        b.find(
            Severity::Critical,
            format!("Unit {unit} not found"),
            prop("LoadError").to_owned(),
        );
    } else {
        match prop("ActiveState") {
            "failed" => b.find(
                Severity::Critical,
                format!("Unit {unit} failed"),
                format!("result {result}, exit status {status}"),
            ),
            "inactive" => b.find(
                Severity::Warning,
                format!("Unit {unit} is inactive"),
                format!("result {result}, exit status {status}"),
            ),
            "active" => b.find(
                Severity::Ok,
                format!("Unit {unit} {state}"),
                format!("main pid {}", prop("MainPID")),
            ),
            other => b.find(
                Severity::Info,
                format!("Unit {unit} {other}"),
                state.clone(),
            ),
        }
    }
    if let Some(n) = r
        .properties
        .get("NRestarts")
        .and_then(|v| v.parse::<u64>().ok())
        && n >= UNIT_RESTARTS_WARN
    {
        b.find(
            Severity::Warning,
            format!("Unit {unit} restarted {n} times"),
            "NRestarts since it was last started by hand",
        );
    }
}

fn log_tail_section(b: &mut Builder, r: &LogTailReport) {
    let mut body = String::new();
    let lines: Vec<String> = r
        .lines
        .iter()
        .rev()
        .take(30)
        .rev()
        .map(|l| clip(l, 300))
        .collect();
    let _ = writeln!(
        body,
        "`{}`: {}, modified {}. Last {}:\n",
        r.path,
        bytes(r.size_bytes),
        r.modified.as_deref().unwrap_or("?"),
        count(lines.len(), "line", "lines")
    );
    code_block(&mut body, &lines);
    b.section("Log tail", body);
}

fn log_dir_section(b: &mut Builder, r: &LogDirReport) {
    let mut entries = r.entries.clone();
    entries.sort_by(|a, b| b.modified.cmp(&a.modified));
    let rows: Vec<Vec<String>> = entries
        .iter()
        .take(30)
        .map(|e| {
            vec![
                e.name.clone(),
                e.kind.clone(),
                bytes(e.size_bytes),
                e.modified.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut body = format!(
        "`{}` ({} entries, newest first):\n\n",
        r.directory,
        r.entries.len()
    );
    table(&mut body, &["Name", "Kind", "Size", "Modified"], &rows);
    b.section("Log directory", body);
}

fn log_grep_section(b: &mut Builder, r: &LogGrepReport) {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "{} matching `{}` in {} ({} scanned){}.\n",
        count(r.matches.len(), "line", "lines"),
        r.pattern.replace('`', "'"),
        count(r.files_searched.len(), "file", "files"),
        bytes(r.bytes_scanned),
        if r.truncated { ", more not shown" } else { "" }
    );
    let lines: Vec<String> = r
        .matches
        .iter()
        .rev()
        .take(20)
        .rev()
        .map(|m| {
            let file = m.file.rsplit('/').next().unwrap_or(&m.file);
            format!("{file}:{}: {}", m.line_number, clip(&m.line, 300))
        })
        .collect();
    if !lines.is_empty() {
        code_block(&mut body, &lines);
    }
    b.section("Log search", body);
    if r.matches.is_empty() {
        b.find(
            Severity::Ok,
            format!("No lines matching \"{}\"", r.pattern),
            r.files_searched.join(", "),
        );
    } else {
        b.find(
            Severity::Info,
            format!(
                "{}{} {} matching \"{}\"",
                r.matches.len(),
                if r.truncated { "+" } else { "" },
                if r.matches.len() == 1 && !r.truncated {
                    "line"
                } else {
                    "lines"
                },
                r.pattern
            ),
            r.matches.last().map_or(String::new(), |m| {
                format!("last shown: {}", clip(&m.line, 200))
            }),
        );
    }
}

fn dns_section(b: &mut Builder, r: &DnsReport) {
    let mut body = String::new();
    table(
        &mut body,
        &["Name", "Addresses", "Time"],
        &[vec![
            r.name.clone(),
            if r.addresses.is_empty() {
                "-".into()
            } else {
                r.addresses.join(", ")
            },
            format!("{:.1} ms", r.elapsed_ms),
        ]],
    );
    b.section("DNS", body);
    match &r.error {
        Some(e) => b.find(
            Severity::Critical,
            format!("Cannot resolve {}", r.name),
            e.clone(),
        ),
        None if r.elapsed_ms > DNS_SLOW_MS => b.find(
            Severity::Warning,
            format!("Resolving {} took {:.0} ms", r.name, r.elapsed_ms),
            r.addresses.join(", "),
        ),
        None => b.find(
            Severity::Ok,
            format!("{} resolves", r.name),
            format!("{} in {:.1} ms", r.addresses.join(", "), r.elapsed_ms),
        ),
    }
}

fn tcp_section(b: &mut Builder, r: &TcpCheckReport) {
    let mut body = String::new();
    let target = format!("{}:{}", r.host, r.port);
    table(
        &mut body,
        &["Target", "Connected", "Address", "Connect time", "Error"],
        &[vec![
            target.clone(),
            if r.connected { "yes" } else { "no" }.into(),
            r.address.clone().unwrap_or_else(|| "-".into()),
            r.connect_ms.map_or("-".into(), |m| format!("{m:.1} ms")),
            r.error.clone().unwrap_or_else(|| "-".into()),
        ]],
    );
    b.section(format!("TCP {target}"), body);
    match (r.connected, r.connect_ms) {
        (false, _) => b.find(
            Severity::Critical,
            format!("Cannot connect to {target}"),
            r.error.clone().unwrap_or_default(),
        ),
        (true, Some(m)) if m > TCP_SLOW_MS => b.find(
            Severity::Warning,
            format!("Connecting to {target} took {m:.0} ms"),
            r.address.clone().unwrap_or_default(),
        ),
        (true, m) => b.find(
            Severity::Ok,
            format!("{target} accepts connections"),
            format!(
                "{} in {}",
                r.address.clone().unwrap_or_default(),
                m.map_or("?".into(), |m| format!("{m:.1} ms"))
            ),
        ),
    }
}

fn http_section(b: &mut Builder, r: &HttpCheckReport) {
    let mut body = String::new();
    table(
        &mut body,
        &["URL", "Status", "Latency", "Version", "Error"],
        &[vec![
            r.url.clone(),
            r.status.map_or("-".into(), |s| {
                format!("{s} {}", r.reason.as_deref().unwrap_or(""))
                    .trim_end()
                    .to_owned()
            }),
            r.latency_ms.map_or("-".into(), |m| format!("{m:.1} ms")),
            r.http_version.clone().unwrap_or_else(|| "-".into()),
            r.error.clone().unwrap_or_else(|| "-".into()),
        ]],
    );
    if !r.headers.is_empty() {
        let rows: Vec<Vec<String>> = r
            .headers
            .iter()
            .map(|(k, v)| vec![k.clone(), v.clone()])
            .collect();
        table(&mut body, &["Header", "Value"], &rows);
    }
    if let Some(snippet) = r.body_snippet.as_ref().filter(|s| !s.trim().is_empty()) {
        let lines: Vec<String> = snippet.lines().take(15).map(|l| clip(l, 200)).collect();
        code_block(&mut body, &lines);
    }
    b.section("HTTP check", body);
    let latency = r.latency_ms.unwrap_or(0.0);
    match r.status {
        None => b.find(
            Severity::Critical,
            format!("{} did not answer", r.url),
            r.error.clone().unwrap_or_default(),
        ),
        Some(s) if s >= 500 => b.find(
            Severity::Critical,
            format!("{} answered {s}", r.url),
            format!("in {latency:.1} ms"),
        ),
        Some(s) if s >= 400 => b.find(
            Severity::Warning,
            format!("{} answered {s}", r.url),
            format!("in {latency:.1} ms"),
        ),
        Some(s) if s >= 300 => b.find(
            Severity::Info,
            format!("{} redirects ({s})", r.url),
            format!(
                "to {}",
                r.headers.get("location").map_or("?", String::as_str)
            ),
        ),
        Some(s) if latency > HTTP_SLOW_MS => b.find(
            Severity::Warning,
            format!("{} answered {s} slowly", r.url),
            format!("{latency:.0} ms until the headers"),
        ),
        Some(s) => b.find(
            Severity::Ok,
            format!("{} answered {s}", r.url),
            format!("in {latency:.1} ms"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_plugins_are_refused_with_the_list() {
        let err = plan("bogus", None).expect_err("unknown");
        assert!(err.contains("unknown inspect plugin `bogus`"), "{err}");
        for p in plugins() {
            assert!(err.contains(p), "{err} lacks {p}");
        }
    }

    #[test]
    fn every_plugin_plans_and_aliases_resolve() {
        for p in plugins() {
            let target = match *p {
                "log" => Some("/var/log/syslog"),
                "http" => Some("http://localhost:8080/"),
                "dns" => Some("example.com"),
                "tcp" => Some("localhost:22"),
                _ => None,
            };
            let calls = plan(p, target).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert!(!calls.is_empty(), "{p}");
        }
        assert_eq!(canonical("memory"), Some("mem"));
        assert_eq!(canonical("procnum"), Some("process"));
        assert_eq!(canonical("SYSTEMD"), Some("service"));
        assert!(plan("http", None).is_err_and(|e| e.contains("needs a target")));
        assert!(plan("http", Some("localhost")).is_err());
        assert!(plan("tcp", Some("nope")).is_err());
    }

    #[test]
    fn targets_shape_the_plan() {
        let calls = plan("disk", Some("/var/lib/mysql")).expect("plan");
        assert_eq!(
            calls[0],
            PlannedCall::new("disks", json!({"mount": "/var/lib/mysql"}))
        );
        let calls = plan("disk", Some("/dev/sda")).expect("plan");
        assert_eq!(
            calls[1],
            PlannedCall::new("disk_io", json!({"device": "sda"}))
        );
        let calls = plan("process", Some("nginx")).expect("plan");
        assert_eq!(
            calls[0],
            PlannedCall::new("process_detail", json!({"name": "nginx"}))
        );
        assert_eq!(calls[1].tool, "top_processes");
        let calls = plan("process", Some("42")).expect("plan");
        assert_eq!(calls[0].args, json!({"pid": 42}));
        let calls = plan("net", Some("db.internal:5432")).expect("plan");
        let tools: Vec<&str> = calls.iter().map(|c| c.tool.as_str()).collect();
        assert_eq!(tools, ["net_interfaces", "sockets", "tcp_check"]);
        assert_eq!(calls[2].args, json!({"host": "db.internal", "port": 5432}));
        let calls = plan("net", Some("[::1]:80")).expect("plan");
        assert_eq!(calls[2].args, json!({"host": "::1", "port": 80}));
        let calls = plan("net", Some("https://example.com/")).expect("plan");
        assert_eq!(calls[2].tool, "http_check");
        let calls = plan("net", Some("example.com")).expect("plan");
        assert_eq!(calls[2].tool, "dns_resolve");
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(parse_host_port("a:1"), Some(("a".into(), 1)));
        assert_eq!(
            parse_host_port("[fe80::1]:443"),
            Some(("fe80::1".into(), 443))
        );
        assert_eq!(parse_host_port("::1"), None);
        assert_eq!(parse_host_port("a:0"), None);
        assert_eq!(parse_host_port("a:99999"), None);
        assert_eq!(parse_host_port(":80"), None);
    }

    fn fs(
        mount: &str,
        used_pct: f64,
        inodes_pct: Option<f64>,
    ) -> crate::tools::diag::disks::Filesystem {
        crate::tools::diag::disks::Filesystem {
            mount_point: mount.into(),
            device: "/dev/x".into(),
            fs_type: "ext4".into(),
            read_only: false,
            total_bytes: 1000,
            used_bytes: (used_pct * 10.0) as u64,
            available_bytes: 1000 - (used_pct * 10.0) as u64,
            used_pct,
            inodes_total: 100,
            inodes_used: 1,
            inodes_free: 99,
            inodes_used_pct: inodes_pct,
        }
    }

    fn out<T: serde::Serialize>(v: &T) -> ToolOutput {
        ToolOutput::ok(serde_json::to_string(v).expect("json"))
    }

    #[test]
    fn disk_thresholds_and_ordering() {
        let disks = DisksReport {
            filesystems: vec![
                fs("/", 45.0, Some(10.0)),
                fs("/data", 85.0, Some(10.0)),
                fs("/logs", 95.0, Some(92.0)),
            ],
            errors: Vec::new(),
            truncated: false,
        };
        let r = report(
            "disk",
            None,
            &[(PlannedCall::new("disks", json!({})), out(&disks))],
        );
        let sev: Vec<(Severity, &str)> = r
            .findings
            .iter()
            .map(|f| (f.severity, f.title.as_str()))
            .collect();
        assert_eq!(
            sev,
            [
                (Severity::Critical, "Disk /logs 95.0 % used"),
                (Severity::Critical, "Inodes on /logs 92.0 % used"),
                (Severity::Warning, "Disk /data 85.0 % used"),
            ]
        );
        let crit = r.markdown.find("| CRITICAL |").expect("critical row");
        let warn = r.markdown.find("| WARNING |").expect("warning row");
        assert!(crit < warn);
        assert!(r.markdown.contains("## Disks"));
        assert!(r.markdown.contains("| /data | /dev/x | ext4 |"));

        let calm = DisksReport {
            filesystems: vec![fs("/", 45.0, None)],
            errors: Vec::new(),
            truncated: false,
        };
        let r = report(
            "disk",
            None,
            &[(PlannedCall::new("disks", json!({})), out(&calm))],
        );
        assert_eq!(r.findings.len(), 1);
        assert_eq!(r.findings[0].severity, Severity::Ok);
    }

    #[test]
    fn failures_become_findings_not_panics() {
        let r = report(
            "system",
            None,
            &[
                (
                    PlannedCall::new("systemd_unit", json!({})),
                    ToolOutput::error(crate::tools::diag::systemd::NOT_AVAILABLE),
                ),
                (
                    PlannedCall::new("memory", json!({})),
                    ToolOutput::error("permission denied by the operator"),
                ),
                (
                    PlannedCall::new("tcp_check", json!({})),
                    ToolOutput::ok("not json"),
                ),
            ],
        );
        let sev: Vec<Severity> = r.findings.iter().map(|f| f.severity).collect();
        assert_eq!(sev, [Severity::Warning, Severity::Warning, Severity::Info]);
        assert!(r.markdown.contains("systemd is not available"));
    }

    #[test]
    fn table_cells_are_escaped() {
        let mut s = String::new();
        table(&mut s, &["a"], &[vec!["x|y\nz".into()]]);
        assert!(s.contains("| x\\|y z |"), "{s}");
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;

    /// Issue 10: a target the tools cannot read makes the report UNKNOWN (the CLI exits 3),
    /// while a failed reading of something else stays a warning about the host.
    #[test]
    fn an_unreadable_target_is_unknown_and_other_failures_stay_warnings() {
        let calls = plan("disk", Some("/nonexistent")).expect("plan");
        let results: Vec<(PlannedCall, ToolOutput)> = calls
            .into_iter()
            .map(|c| {
                let out = ToolOutput::error(format!("{} failed", c.tool));
                (c, out)
            })
            .collect();
        let with_target = report("disk", Some("/nonexistent"), &results);
        let disks = with_target
            .findings
            .iter()
            .find(|f| f.title.starts_with("Disks"))
            .expect("disks finding");
        assert_eq!(
            disks.severity,
            Severity::Unknown,
            "{:?}",
            with_target.findings
        );
        assert!(disks.title.contains("`/nonexistent`"), "{}", disks.title);
        let io = with_target
            .findings
            .iter()
            .find(|f| f.title.starts_with("Disk I/O"))
            .expect("disk_io finding");
        assert_eq!(io.severity, Severity::Warning, "{:?}", with_target.findings);
        assert!(
            with_target
                .markdown
                .contains("0 critical, 1 unknown, 1 warning, 0 info, 0 ok."),
            "{}",
            with_target.markdown
        );
        assert!(
            with_target
                .markdown
                .contains("| UNKNOWN | Disks: cannot read")
        );

        // Without a target the same failure is a warning, and the summary has no "unknown".
        let calls = plan("disk", None).expect("plan");
        let results: Vec<(PlannedCall, ToolOutput)> = calls
            .into_iter()
            .map(|c| (c, ToolOutput::error("failed")))
            .collect();
        let without = report("disk", None, &results);
        assert!(
            without
                .findings
                .iter()
                .all(|f| f.severity == Severity::Warning)
        );
        assert!(
            without
                .markdown
                .contains("0 critical, 2 warning, 0 info, 0 ok.")
        );
    }
}
